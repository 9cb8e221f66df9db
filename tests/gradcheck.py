"""Central finite differences, the yardstick of every gradient test."""
import numpy as np


def numeric_grad(f, x, eps):
    """d f / d x by central differences, one element of x at a time (f returns a scalar)."""
    num = np.zeros(x.shape)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        num[idx] = (f(xp) - f(xm)) / (2 * eps)
    return num
