"""Moving test data to and from the active backend, so one test runs on the CPU and on a GPU
(or tests/fake_cupy.py): put() before calling a layer's or an op's forward/backward directly,
get() before comparing its results with NumPy."""
import numpy as np

from fastnn.backend import get_ops


def put(a, dtype=None):
    """A copy of a on the backend, as a device copy would be (backward may overwrite it)."""
    a = np.array(a, dtype=dtype)
    return get_ops().asarray(a, a.dtype)


def get(a):
    return None if a is None else np.asarray(get_ops().to_numpy(a))
