"""`fastnn.ops`: Keras 3's `keras.ops` names for the array operations custom layers and
subclassed models are written with. Each takes arrays or `fastnn.autodiff.Tensor`s: on plain
arrays it returns an array (computed where the backend computes: NumPy, or CuPy on a GPU); on
tensors that need gradients it also records its backward, written here beside its forward, for
`fastnn.autodiff.gradients`. Floats stay float32 as in Keras; Python scalars take the other
operand's dtype."""
import functools
import types

import numpy as np

from . import activations as A
from . import autodiff, graph
from . import images as _images
from .autodiff import Tensor, record, unbroadcast, value_of
from .backend import get_ops


def _xp():
    return get_ops().xp


def _array(x, dtype=None):
    """x's value as a backend array (Python scalars stay scalars, so they take the other
    operand's dtype)."""
    x = value_of(x)
    if isinstance(x, (int, float, bool)) and dtype is None:
        return x
    xp = _xp()
    if isinstance(x, xp.ndarray):
        return x if dtype is None or x.dtype == dtype else x.astype(dtype)
    if isinstance(x, np.ndarray):
        return get_ops().asarray(x, x.dtype if dtype is None else dtype)
    a = np.asarray(x)
    if dtype is None and a.dtype == np.float64:
        a = a.astype(np.float32)        # Keras's floatx for Python and NumPy float literals
    return get_ops().asarray(a, a.dtype if dtype is None else dtype)


def _on_kernels(a):
    """Whether `a` goes through the backend's kernels (the GEMM and activation kernels the
    built-in layers run): a float32 array of at least one axis, their one dtype. Other dtypes
    take the array library's general path."""
    return getattr(a, "dtype", None) == np.float32 and a.ndim >= 1


def _shape(x):
    return np.shape(value_of(x)) if not isinstance(value_of(x), (int, float, bool)) else ()


# ---- conversion ----------------------------------------------------------------------------
def convert_to_tensor(x, dtype=None):
    """x as a backend array (a Tensor is returned as it is, cast when dtype differs).

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        dtype: Data type to cast to; `None`: keep it.

    Returns:
        A backend array, or the `Tensor`.
    """
    if isinstance(x, Tensor):
        return x if dtype is None or x.dtype == dtype else cast(x, dtype)
    value = _array(x, dtype)
    return value if not isinstance(value, (int, float, bool)) else _array(np.asarray(value),
                                                                          dtype)


def convert_to_numpy(x):
    """x's value as a NumPy array (detached: no gradient flows through it).

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.

    Returns:
        A NumPy array.
    """
    return np.asarray(get_ops().to_numpy(value_of(x)))


def stop_gradient(x):
    """`x` cut from the autodiff tape: no gradient flows back through the result.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.

    Returns:
        A tensor.
    """
    return Tensor(value_of(x)) if isinstance(x, Tensor) else x


def cast(x, dtype):
    """`x` converted to `dtype`; the gradient flows back only for float types.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        dtype: Data type of the result.

    Returns:
        A tensor.
    """
    a = _array(x)
    out = a.astype(dtype)
    floating = np.dtype(dtype).kind == "f"
    return record(out, (x,), lambda g: (g.astype(a.dtype) if floating else None,))


def shape(x):
    """The shape of `x`.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.

    Returns:
        A tuple of ints.
    """
    return tuple(_shape(x))


# ---- elementwise arithmetic ------------------------------------------------------------------
def add(x1, x2):
    """Element-wise `x1 + x2`.

    Args:
        x1: First operand.
        x2: Second operand (broadcast against `x1`).

    Returns:
        A tensor.
    """
    a, b = _array(x1), _array(x2)
    return record(a + b, (x1, x2), lambda g: (g, g))


def subtract(x1, x2):
    """Element-wise `x1 - x2`.

    Args:
        x1: First operand.
        x2: Second operand (broadcast against `x1`).

    Returns:
        A tensor.
    """
    a, b = _array(x1), _array(x2)
    return record(a - b, (x1, x2), lambda g: (g, -g))


def multiply(x1, x2):
    """Element-wise `x1 * x2`.

    Args:
        x1: First operand.
        x2: Second operand (broadcast against `x1`).

    Returns:
        A tensor.
    """
    a, b = _array(x1), _array(x2)
    return record(a * b, (x1, x2), lambda g: (g * b, g * a))


def divide(x1, x2):
    """Element-wise `x1 / x2`.

    Args:
        x1: First operand.
        x2: Second operand (broadcast against `x1`).

    Returns:
        A tensor.
    """
    a, b = _array(x1), _array(x2)
    out = a / b
    return record(out, (x1, x2), lambda g: (g / b, -g * out / b))


def negative(x):
    """Element-wise `-x`.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.

    Returns:
        A tensor.
    """
    a = _array(x)
    return record(-a, (x,), lambda g: (-g,))


def power(x1, x2):
    """Element-wise `x1 ** x2`.

    Args:
        x1: First operand.
        x2: Second operand (broadcast against `x1`).

    Returns:
        A tensor.
    """
    a, b = _array(x1), _array(x2)
    xp = _xp()
    out = a ** b
    return record(out, (x1, x2), lambda g: (
        g * b * a ** (b - 1),
        g * out * xp.log(xp.where(a > 0, a, 1)) if isinstance(x2, Tensor) else None))


def square(x):
    """Element-wise `x ** 2`.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.

    Returns:
        A tensor.
    """
    a = _array(x)
    return record(a * a, (x,), lambda g: (2 * g * a,))


def sqrt(x):
    """Element-wise square root.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.

    Returns:
        A tensor.
    """
    out = _xp().sqrt(_array(x))
    return record(out, (x,), lambda g: (g / (2 * out),))


def exp(x):
    """Element-wise `e ** x`.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.

    Returns:
        A tensor.
    """
    out = _xp().exp(_array(x))
    return record(out, (x,), lambda g: (g * out,))


def expm1(x):
    """Element-wise `exp(x) - 1`, accurate near 0.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.

    Returns:
        A tensor.
    """
    a = _array(x)
    out = _xp().expm1(a)
    return record(out, (x,), lambda g: (g * (out + 1),))


def log(x):
    """Element-wise natural logarithm.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.

    Returns:
        A tensor.
    """
    a = _array(x)
    return record(_xp().log(a), (x,), lambda g: (g / a,))


def log1p(x):
    """Element-wise `log(1 + x)`, accurate near 0.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.

    Returns:
        A tensor.
    """
    a = _array(x)
    return record(_xp().log1p(a), (x,), lambda g: (g / (1 + a),))


def abs(x):
    """Element-wise absolute value (also `absolute`).

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.

    Returns:
        A tensor.
    """
    a = _array(x)
    return record(_xp().abs(a), (x,), lambda g: (g * _xp().sign(a),))


absolute = abs


def sin(x):
    """Element-wise sine.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.

    Returns:
        A tensor.
    """
    a = _array(x)
    return record(_xp().sin(a), (x,), lambda g: (g * _xp().cos(a),))


def cos(x):
    """Element-wise cosine.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.

    Returns:
        A tensor.
    """
    a = _array(x)
    return record(_xp().cos(a), (x,), lambda g: (-g * _xp().sin(a),))


def _select(x1, x2, take_first, out):
    """The gradient of an elementwise choice: to x1 where take_first, else to x2 (ties go to
    x1, as in the first argument of NumPy's maximum)."""
    return record(out, (x1, x2), lambda g: (g * take_first, g * ~take_first))


def maximum(x1, x2):
    """Element-wise maximum of `x1` and `x2`.

    Args:
        x1: First operand.
        x2: Second operand (broadcast against `x1`).

    Returns:
        A tensor.
    """
    a, b = _array(x1), _array(x2)
    return _select(x1, x2, _xp().asarray(a >= b), _xp().maximum(a, b))


def minimum(x1, x2):
    """Element-wise minimum of `x1` and `x2`.

    Args:
        x1: First operand.
        x2: Second operand (broadcast against `x1`).

    Returns:
        A tensor.
    """
    a, b = _array(x1), _array(x2)
    return _select(x1, x2, _xp().asarray(a <= b), _xp().minimum(a, b))


def clip(x, x_min, x_max):
    """`x` with its values limited to `[x_min, x_max]`; the gradient passes only inside the range.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        x_min: The lower bound.
        x_max: The upper bound.

    Returns:
        A tensor.
    """
    a = _array(x)
    inside = (a >= value_of(x_min)) & (a <= value_of(x_max))
    return record(_xp().clip(a, value_of(x_min), value_of(x_max)), (x,),
                  lambda g: (g * inside,))


def where(condition, x1=None, x2=None):
    """Element-wise `x1` where `condition` is true, else `x2`; with `x1` and `x2` both `None`, the
    indices where `condition` is true.

    Args:
        condition: A boolean tensor.
        x1: The values where it is true. Defaults to `None`.
        x2: The values where it is false. Defaults to `None`.

    Returns:
        A tensor, or a tuple of index arrays.
    """
    c = _array(condition)
    xp = _xp()
    if x1 is None and x2 is None:
        return xp.nonzero(c)
    a, b = _array(x1), _array(x2)
    c = xp.asarray(c).astype(bool)
    out = xp.where(c, a, b)
    return record(out, (condition, x1, x2), lambda g: (None, g * c, g * ~c))


def sign(x):
    """Element-wise sign (-1, 0 or 1); no gradient.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.

    Returns:
        A tensor.
    """
    return record(_xp().sign(_array(x)), (x,), lambda g: (None,))


def floor(x):
    """Element-wise floor; no gradient.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.

    Returns:
        A tensor.
    """
    return record(_xp().floor(_array(x)), (x,), lambda g: (None,))


def round(x, decimals=0):
    """Element-wise rounding to `decimals` decimals; no gradient.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        decimals: Number of decimals. Defaults to `0`.

    Returns:
        A tensor.
    """
    return record(_xp().round(_array(x), decimals), (x,), lambda g: (None,))


# ---- comparisons and logic (no gradient) ----------------------------------------------------
def _compare(fn):
    def op(x1, x2):
        out = fn(_array(x1), _array(x2))
        return Tensor(out) if isinstance(x1, Tensor) or isinstance(x2, Tensor) else out
    op.__name__ = fn.__name__
    return op


equal = _compare(lambda a, b: a == b)
not_equal = _compare(lambda a, b: a != b)
less = _compare(lambda a, b: a < b)
less_equal = _compare(lambda a, b: a <= b)
greater = _compare(lambda a, b: a > b)
greater_equal = _compare(lambda a, b: a >= b)
for _op, _name, _sign in ((equal, "equal", "=="), (not_equal, "not_equal", "!="),
                          (less, "less", "<"), (less_equal, "less_equal", "<="),
                          (greater, "greater", ">"), (greater_equal, "greater_equal", ">=")):
    _op.__name__ = _name
    _op.__doc__ = (f"Element-wise `x1 {_sign} x2` (broadcast together); no gradient.\n\n"
                   "Args:\n    x1: First operand.\n    x2: Second operand.\n\n"
                   "Returns:\n    A boolean tensor.")


def logical_and(x1, x2):
    """Element-wise logical AND.

    Args:
        x1: First operand.
        x2: Second operand (broadcast against `x1`).

    Returns:
        A boolean array.
    """
    return _xp().logical_and(_array(x1), _array(x2))


def logical_or(x1, x2):
    """Element-wise logical OR.

    Args:
        x1: First operand.
        x2: Second operand (broadcast against `x1`).

    Returns:
        A boolean array.
    """
    return _xp().logical_or(_array(x1), _array(x2))


def logical_not(x):
    """Element-wise logical NOT.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.

    Returns:
        A boolean array.
    """
    return _xp().logical_not(_array(x))


# ---- reductions ----------------------------------------------------------------------------
def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axis = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    return tuple(int(a) % ndim for a in axis)


def _expand(g, axes, keepdims):
    """A reduced gradient with the reduced axes put back (length 1), to broadcast."""
    if keepdims:
        return g
    for a in sorted(axes):
        g = _xp().expand_dims(g, a)
    return g


def sum(x, axis=None, keepdims=False):
    """Sum of the elements along `axis`.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        axis: The axis (or tuple of axes) to act on; `None`: all.
        keepdims: Whether to keep the reduced axes with size 1. Defaults to `False`.

    Returns:
        A tensor.
    """
    a = _array(x)
    axes = _axes(axis, a.ndim)
    return record(a.sum(axis=axes, keepdims=keepdims), (x,),
                  lambda g: (_xp().broadcast_to(_expand(g, axes, keepdims), a.shape),))


def mean(x, axis=None, keepdims=False):
    """Mean of the elements along `axis`.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        axis: The axis (or tuple of axes) to act on; `None`: all.
        keepdims: Whether to keep the reduced axes with size 1. Defaults to `False`.

    Returns:
        A tensor.
    """
    a = _array(x)
    axes = _axes(axis, a.ndim)
    count = int(np.prod([a.shape[i] for i in axes], dtype=np.int64))
    out = a.mean(axis=axes, keepdims=keepdims)
    if a.dtype.kind != "f":
        out = out.astype(np.float32)
    return record(out, (x,), lambda g: (
        _xp().broadcast_to(_expand(g, axes, keepdims) / count, a.shape),))


def var(x, axis=None, keepdims=False):
    """Variance of the elements along `axis`.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        axis: The axis (or tuple of axes) to act on; `None`: all.
        keepdims: Whether to keep the reduced axes with size 1. Defaults to `False`.

    Returns:
        A tensor.
    """
    centered = subtract(x, mean(x, axis=axis, keepdims=True))
    return mean(square(centered), axis=axis, keepdims=keepdims)


def std(x, axis=None, keepdims=False):
    """Standard deviation of the elements along `axis`.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        axis: The axis (or tuple of axes) to act on; `None`: all.
        keepdims: Whether to keep the reduced axes with size 1. Defaults to `False`.

    Returns:
        A tensor.
    """
    return sqrt(var(x, axis=axis, keepdims=keepdims))


def _extreme(reduce):
    def op(x, axis=None, keepdims=False, initial=None):
        a = _array(x)
        axes = _axes(axis, a.ndim)
        out = reduce(a, axis=axes, keepdims=True)
        if initial is not None:
            out = _xp().maximum(out, initial) if reduce is _xp().max else \
                _xp().minimum(out, initial)

        def backward(g):
            # Ties share the gradient equally, as TensorFlow and JAX do.
            hit = (a == out)
            return (_expand(g, axes, keepdims) * hit / hit.sum(axis=axes, keepdims=True),)
        return record(out if keepdims else out.squeeze(axis=axes), (x,), backward)
    return op


def max(x, axis=None, keepdims=False, initial=None):
    """Maximum along `axis` (tied maxima share the gradient equally).

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        axis: The axis (or tuple of axes) to act on; `None`: all.
        keepdims: Whether to keep the reduced axes with size 1. Defaults to `False`.
        initial: A lower bound of the result, or `None`.

    Returns:
        A tensor.
    """
    return _extreme(_xp().max)(x, axis, keepdims, initial)


def min(x, axis=None, keepdims=False, initial=None):
    """Minimum along `axis` (tied minima share the gradient equally).

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        axis: The axis (or tuple of axes) to act on; `None`: all.
        keepdims: Whether to keep the reduced axes with size 1. Defaults to `False`.
        initial: An upper bound of the result, or `None`.

    Returns:
        A tensor.
    """
    return _extreme(_xp().min)(x, axis, keepdims, initial)


def argmax(x, axis=None, keepdims=False):
    """Indices of the maxima along `axis`; no gradient.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        axis: The axis; `None`: the flattened array.
        keepdims: Whether to keep the reduced axes with size 1. Defaults to `False`.

    Returns:
        An integer tensor.
    """
    out = _xp().argmax(_array(x), axis=axis, keepdims=keepdims)
    return Tensor(out) if isinstance(x, Tensor) else out


def argmin(x, axis=None, keepdims=False):
    """Indices of the minima along `axis`; no gradient.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        axis: The axis; `None`: the flattened array.
        keepdims: Whether to keep the reduced axes with size 1. Defaults to `False`.

    Returns:
        An integer tensor.
    """
    out = _xp().argmin(_array(x), axis=axis, keepdims=keepdims)
    return Tensor(out) if isinstance(x, Tensor) else out


# ---- linear algebra -----------------------------------------------------------------------
def matmul(x1, x2):
    """Matrix product of `x1` and `x2` (batched over the leading axes, as `numpy.matmul`).

    Args:
        x1: First operand.
        x2: Second operand (broadcast against `x1`).

    Returns:
        A tensor.
    """
    a, b = _array(x1), _array(x2)
    if _on_kernels(a) and _on_kernels(b) and b.ndim == 2 and a.ndim >= 2 and \
            a.shape[-1] == b.shape[0]:
        return _gemm_matmul(x1, x2, a, b)
    xp = _xp()
    out = xp.matmul(a, b)

    def backward(g):
        # 1-D operands act as a row (left) or a column (right) vector.
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        # the gradient in the shape of a2 @ b2 (same elements as the output's)
        g2 = g.reshape(np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]) +
                       (a2.shape[-2], b2.shape[-1]))
        ga = gb = None
        if _wants_grad(x1):
            ga = xp.matmul(g2, xp.swapaxes(b2, -1, -2))
            ga = unbroadcast(ga.squeeze(-2) if a.ndim == 1 else ga, a.shape)
        if _wants_grad(x2):
            gb = xp.matmul(xp.swapaxes(a2, -1, -2), g2)
            gb = unbroadcast(gb.squeeze(-1) if b.ndim == 1 else gb, b.shape)
        return ga, gb
    return record(out, (x1, x2), backward)


def _wants_grad(x):
    """Whether backward must compute x's gradient (asked when backward runs: a layer that
    needs no gradient for its input turns it off after the forward pass). For the costly
    gradients only; the others are cheaper to compute than to test."""
    return isinstance(x, Tensor) and x.requires_grad


def _gemm_matmul(x1, x2, a, b):
    """(..., k) @ (k, n) in float32 (a layer's inputs times its kernel) on the backend's GEMM,
    the one Dense runs: leading axes become rows, and the backward multiplies by the
    transposes in place of copying them. Keeps NumPy's own BLAS threads from competing with
    fastnn's."""
    run = get_ops()
    rows = a.reshape(-1, a.shape[-1])
    out = run.gemm(rows, b).reshape(a.shape[:-1] + (b.shape[1],))

    def backward(g):
        g2 = g.reshape(-1, b.shape[1])
        ga = run.gemm(g2, b, trans_b=True).reshape(a.shape) if _wants_grad(x1) else None
        gb, sink = None, autodiff.grad_sink(x2)
        if sink is not None and sink.dtype == np.float32:
            run.gemm(rows, g2, out=sink, trans_a=True, beta=1.0)    # a weight's: added in place
        elif _wants_grad(x2):
            gb = run.gemm(rows, g2, trans_a=True)
        return ga, gb
    return record(out, (x1, x2), backward)


def dot(x1, x2):
    """Dot product of two 1-D or 2-D tensors (use `matmul` for batches).

    Args:
        x1: First operand.
        x2: Second operand (broadcast against `x1`).

    Returns:
        A tensor.
    """
    if _array(x1).ndim <= 2 and _array(x2).ndim <= 2:
        return matmul(x1, x2)
    raise ValueError("dot: fastnn supports 1-D and 2-D operands; use matmul for batches")


# ---- shapes ----------------------------------------------------------------------------------
def reshape(x, newshape):
    """`x` with a new shape.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        newshape: The new shape; one entry may be -1.

    Returns:
        A tensor.
    """
    a = _array(x)
    return record(a.reshape(newshape), (x,), lambda g: (g.reshape(a.shape),))


def transpose(x, axes=None):
    """`x` with its axes permuted.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        axes: The new order of the axes; `None`: reversed.

    Returns:
        A tensor.
    """
    a = _array(x)
    out = a.transpose(axes)
    inverse = None if axes is None else tuple(np.argsort(axes))
    return record(out, (x,), lambda g: (g.transpose(inverse),))


def expand_dims(x, axis):
    """`x` with a new axis of size 1 at `axis`.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        axis: Where the new axis goes.

    Returns:
        A tensor.
    """
    a = _array(x)
    return record(_xp().expand_dims(a, axis), (x,), lambda g: (g.reshape(a.shape),))


def squeeze(x, axis=None):
    """`x` without its axes of size 1.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        axis: The axis (or axes) to remove; `None`: every axis of size 1.

    Returns:
        A tensor.
    """
    a = _array(x)
    return record(a.squeeze(axis=axis), (x,), lambda g: (g.reshape(a.shape),))


def concatenate(xs, axis=0):
    """The tensors joined along an existing axis.

    Args:
        xs: A list of tensors.
        axis: The axis to join along. Defaults to `0`.

    Returns:
        A tensor.
    """
    arrays = [_array(x) for x in xs]
    out = _xp().concatenate(arrays, axis=axis)
    ax = axis % out.ndim
    edges = np.concatenate([[0], np.cumsum([a.shape[ax] for a in arrays])])
    return record(out, tuple(xs), lambda g: tuple(
        g[(slice(None),) * ax + (slice(int(lo), int(hi)),)]
        for lo, hi in zip(edges[:-1], edges[1:])))


def stack(xs, axis=0):
    """The tensors stacked along a new axis.

    Args:
        xs: A list of tensors.
        axis: Where the new axis goes. Defaults to `0`.

    Returns:
        A tensor.
    """
    arrays = [_array(x) for x in xs]
    out = _xp().stack(arrays, axis=axis)
    ax = axis % out.ndim
    return record(out, tuple(xs), lambda g: tuple(
        g[(slice(None),) * ax + (i,)] for i in range(len(arrays))))


def pad(x, pad_width, mode="constant", constant_values=0):
    """`x` padded with a constant.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        pad_width: `(before, after)` for every axis, or one pair for all.
        mode: Only `"constant"` is supported. Defaults to `"constant"`.
        constant_values: The padding value. Defaults to `0`.

    Returns:
        A tensor.
    """
    a = _array(x)
    if mode != "constant":
        raise ValueError(f"pad: only mode='constant' is supported, got {mode!r}")
    widths = np.broadcast_to(np.asarray(pad_width, dtype=np.int64), (a.ndim, 2))
    if (widths < 0).any():
        raise ValueError(f"pad: pad_width must be non-negative, got {pad_width!r}")
    out = _xp().pad(a, [tuple(int(v) for v in w) for w in widths],
                    constant_values=constant_values)
    inner = tuple(slice(int(lo), int(lo) + n) for (lo, _), n in zip(widths, a.shape))
    return record(out, (x,), lambda g: (g[inner],))


def repeat(x, repeats, axis=None):
    """Each element of `x` repeated `repeats` times along `axis`.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        repeats: The number of repetitions (one count for every element).
        axis: The axis; `None`: the flattened array.

    Returns:
        A tensor.
    """
    a = _array(x)
    if not isinstance(repeats, (int, np.integer)):
        raise ValueError("repeat: fastnn supports one repeat count for every element")
    if axis is None:
        a_flat, ax = a.reshape(-1), 0
    else:
        a_flat, ax = a, axis % a.ndim
    out = _xp().repeat(a_flat, repeats, axis=ax)

    def backward(g):
        shape = a_flat.shape[:ax] + (a_flat.shape[ax], int(repeats)) + a_flat.shape[ax + 1:]
        return (g.reshape(shape).sum(axis=ax + 1).reshape(a.shape),)
    return record(out, (x,), backward)


def tile(x, repeats):
    """`x` repeated as a whole along each axis.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        repeats: Repetitions per axis (an int or a tuple).

    Returns:
        A tensor.
    """
    a = _array(x)
    reps = (repeats,) if isinstance(repeats, (int, np.integer)) else tuple(repeats)
    reps = (1,) * (a.ndim - len(reps)) + reps
    if len(reps) != a.ndim:
        raise ValueError(f"tile: {len(reps)} repeats for an array of rank {a.ndim}")
    out = _xp().tile(a, reps)

    def backward(g):
        split = [d for r, n in zip(reps, a.shape) for d in (r, n)]
        return (g.reshape(split).sum(axis=tuple(range(0, 2 * a.ndim, 2))),)
    return record(out, (x,), backward)


def broadcast_to(x, shape):
    """`x` broadcast to `shape`.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        shape: The shape, a tuple of ints.

    Returns:
        A tensor.
    """
    a = _array(x)
    return record(_xp().broadcast_to(a, shape), (x,), lambda g: (unbroadcast(g, a.shape),))


def _index(i):
    i = value_of(i)
    return get_ops().asarray(i, i.dtype) if isinstance(i, np.ndarray) else i


def get_item(x, index):
    """`x[index]`; repeated indices add up in the gradient.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        index: An index: an int, a slice, an array or a tuple of them.

    Returns:
        A tensor.
    """
    a = _array(x)
    # index arrays go where the data is (a GPU array takes device indices)
    index = tuple(map(_index, index)) if isinstance(index, tuple) else _index(index)

    def backward(g):
        out = _xp().zeros_like(a)
        _xp().add.at(out, index, g)       # repeated indices add up
        return (out,)
    return record(a[index], (x,), backward)


# ---- construction (no gradient) ---------------------------------------------------------------
def zeros(shape, dtype="float32"):
    """A tensor of zeros.

    Args:
        shape: The shape, a tuple of ints.
        dtype: Data type of the result. Defaults to `"float32"`.

    Returns:
        A tensor.
    """
    return _xp().zeros(shape, dtype)


def ones(shape, dtype="float32"):
    """A tensor of ones.

    Args:
        shape: The shape, a tuple of ints.
        dtype: Data type of the result. Defaults to `"float32"`.

    Returns:
        A tensor.
    """
    return _xp().ones(shape, dtype)


def zeros_like(x, dtype=None):
    """Zeros of the shape of `x`.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        dtype: Data type; `None`: `x`'s.

    Returns:
        A tensor.
    """
    return _xp().zeros_like(_array(x), dtype=dtype)


def ones_like(x, dtype=None):
    """Ones of the shape of `x`.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        dtype: Data type; `None`: `x`'s.

    Returns:
        A tensor.
    """
    return _xp().ones_like(_array(x), dtype=dtype)


def arange(start, stop=None, step=1, dtype=None):
    """Evenly spaced values in `[start, stop)`.

    Args:
        start: The first value (or the end, when `stop` is `None`).
        stop: The end (excluded). Defaults to `None`.
        step: The spacing. Defaults to `1`.
        dtype: Data type; `None`: inferred.

    Returns:
        A tensor.
    """
    return _xp().arange(start, stop, step, dtype=dtype)


def one_hot(x, num_classes, axis=-1, dtype="float32"):
    """One-hot encoding of integer labels: a new axis of size `num_classes` with 1 at each label.

    Args:
        x: Integer labels.
        num_classes: Number of classes.
        axis: Where the new axis goes. Defaults to `-1`.
        dtype: Data type of the result. Defaults to `"float32"`.

    Returns:
        A tensor.
    """
    labels = _array(x)
    xp = _xp()
    out = (xp.expand_dims(labels, -1) == xp.arange(num_classes)).astype(dtype)
    return out if axis == -1 else xp.moveaxis(out, -1, axis)


# ---- activations (Keras's definitions) ------------------------------------------------------
# On float32 arrays the activations run the backend's activation kernels (the ones the built-in
# layers fuse into Dense and Conv2D), forward and backward each one pass; other dtypes take the
# NumPy formulas below them.
def _kernel_activation(x, a, act, alpha=0.0):
    run = get_ops()
    out = run.act_forward(act, alpha, a)
    z = a if act in A.NEEDS_INPUT else None
    return record(out, (x,), lambda g: (run.act_backward(act, alpha, z, out, g),))


def relu(x):
    """Rectified linear unit: `max(x, 0)`.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.

    Returns:
        A tensor.
    """
    a = _array(x)
    if _on_kernels(a):
        return _kernel_activation(x, a, A.RELU)
    return record(_xp().maximum(a, 0), (x,), lambda g: (g * (a > 0),))


def leaky_relu(x, negative_slope=0.2):
    """Leaky ReLU: `x` for `x >= 0`, else `negative_slope * x`.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        negative_slope: Slope of the negative part. Defaults to `0.2`.

    Returns:
        A tensor.
    """
    a = _array(x)
    if _on_kernels(a):
        return _kernel_activation(x, a, A.LEAKY_RELU, negative_slope)
    slope = _xp().where(a > 0, 1, negative_slope).astype(a.dtype)
    return record(a * slope, (x,), lambda g: (g * slope,))


def sigmoid(x):
    """Sigmoid: `1 / (1 + exp(-x))`.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.

    Returns:
        A tensor.
    """
    a = _array(x)
    if _on_kernels(a):
        return _kernel_activation(x, a, A.SIGMOID)
    xp = _xp()
    # exp of a non-positive number only: no overflow for large |x|
    e = xp.exp(-xp.abs(a))
    out = xp.where(a >= 0, 1 / (1 + e), e / (1 + e)).astype(a.dtype)
    return record(out, (x,), lambda g: (g * out * (1 - out),))


def tanh(x):
    """Hyperbolic tangent.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.

    Returns:
        A tensor.
    """
    a = _array(x)
    if _on_kernels(a):
        return _kernel_activation(x, a, A.TANH)
    out = _xp().tanh(a)
    return record(out, (x,), lambda g: (g * (1 - out * out),))


def softplus(x):
    """Softplus: `log(1 + exp(x))`.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.

    Returns:
        A tensor.
    """
    a = _array(x)
    if _on_kernels(a):
        return _kernel_activation(x, a, A.SOFTPLUS)
    xp = _xp()
    out = xp.maximum(a, 0) + xp.log1p(xp.exp(-xp.abs(a)))
    return record(out, (x,), lambda g: (g / (1 + xp.exp(-a)),))


def silu(x):
    """SiLU (swish): `x * sigmoid(x)` (also `swish`).

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.

    Returns:
        A tensor.
    """
    a = _array(x)
    if _on_kernels(a):
        return _kernel_activation(x, a, A.SILU)
    return multiply(x, sigmoid(x))


swish = silu


def elu(x, alpha=1.0):
    """Exponential linear unit: `x` for `x > 0`, else `alpha * (exp(x) - 1)`.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        alpha: Scale of the negative part. Defaults to `1.0`.

    Returns:
        A tensor.
    """
    a = _array(x)
    if _on_kernels(a):
        return _kernel_activation(x, a, A.ELU, float(alpha))
    xp = _xp()
    neg = alpha * xp.expm1(xp.minimum(a, 0))
    out = xp.where(a > 0, a, neg)
    return record(out, (x,), lambda g: (g * xp.where(a > 0, 1, neg + alpha),))


def softmax(x, axis=-1):
    """Softmax along `axis`: `exp(x) / sum(exp(x))`.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        axis: The axis the values are normalized over. Defaults to `-1`.

    Returns:
        A tensor.
    """
    a = _array(x)
    if _on_kernels(a) and axis in (-1, a.ndim - 1):
        return _kernel_activation(x, a, A.SOFTMAX)
    xp = _xp()
    e = xp.exp(a - a.max(axis=axis, keepdims=True))
    out = e / e.sum(axis=axis, keepdims=True)
    return record(out, (x,), lambda g: (
        out * (g - (g * out).sum(axis=axis, keepdims=True)),))


def log_softmax(x, axis=-1):
    """Logarithm of the softmax along `axis`, computed stably.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        axis: The axis the values are normalized over. Defaults to `-1`.

    Returns:
        A tensor.
    """
    a = _array(x)
    xp = _xp()
    shifted = a - a.max(axis=axis, keepdims=True)
    out = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
    return record(out, (x,), lambda g: (
        g - xp.exp(out) * g.sum(axis=axis, keepdims=True),))


def normalize(x, axis=-1, order=2, epsilon=None):
    """Keras's ops.normalize: x over its `order`-norm along `axis` (order 2: x times the
    inverse norm, at most 1 / epsilon; epsilon defaults to 1e-7).

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        axis: The axis along which norms are taken. Defaults to `-1`.
        order: The order of the norm (2: Euclidean). Defaults to `2`.
        epsilon: Lower bound of the norm; `None`: 1e-7 (Keras's epsilon).

    Returns:
        A tensor.
    """
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"Argument `order` must be an int >= 1. Received: order={order}")
    epsilon = 1e-7 if epsilon is None else epsilon
    if order == 2:
        return x * minimum(1.0 / sqrt(sum(square(x), axis=axis, keepdims=True)), 1.0 / epsilon)
    norm = power(sum(power(abs(x), order), axis=axis, keepdims=True), 1.0 / order)
    return divide(x, maximum(norm, epsilon))


def logsumexp(x, axis=None, keepdims=False):
    """`log(sum(exp(x)))` along `axis`, computed stably.

    Args:
        x: Input tensor: an array, a `Tensor` (on the autodiff tape) or a symbolic tensor.
        axis: The axis (or tuple of axes) to act on; `None`: all.
        keepdims: Whether to keep the reduced axes with size 1. Defaults to `False`.

    Returns:
        A tensor.
    """
    a = _array(x)
    xp = _xp()
    axes = _axes(axis, a.ndim)
    top = a.max(axis=axes, keepdims=True)
    out = top + xp.log(xp.exp(a - top).sum(axis=axes, keepdims=True))
    return record(out if keepdims else out.squeeze(axis=axes), (x,), lambda g: (
        _expand(g, axes, keepdims) * xp.exp(a - out),))


__all__ = sorted(name for name, value in dict(globals()).items()
                 if callable(value) and not name.startswith("_") and
                 getattr(value, "__module__", None) == __name__ and
                 name not in ("record", "unbroadcast", "value_of"))


def _graph_aware(fn):
    """fn, which on symbolic tensors (a functional model being built) becomes a graph node,
    as keras.ops do."""
    @functools.wraps(fn)
    def op(*args, **kwargs):
        if graph.has_symbolic(args) or (kwargs and graph.has_symbolic(kwargs.values())):
            return graph.symbolic_op(fn, args, kwargs)
        out = fn(*args, **kwargs)
        # an op without a gradient (one_hot, argmax, comparisons) keeps its result a tensor
        # when it got one, so that the layers after it still run on the model's tape
        if not isinstance(out, Tensor) and isinstance(out, _xp().ndarray) and \
                fn.__name__ != "convert_to_numpy" and any(isinstance(a, Tensor) for a in args):
            return Tensor(out)
        return out
    return op


for _name in __all__:
    globals()[_name] = _graph_aware(globals()[_name])
autodiff.OPS.update((name, globals()[name]) for name in __all__)

# keras.ops.image: the image ops fastnn has, computed where the backend computes (a host NumPy
# array stays on the host), differentiable for their images (fastnn.images has both passes).
def _image_op(forward, backward):
    @functools.wraps(forward)
    def op(images, *args, **kwargs):
        if graph.has_symbolic((images,)):
            return graph.symbolic_op(op, (images,) + args, kwargs)
        a = value_of(images)
        out = forward(a, *args, **kwargs)
        if np.dtype(out.dtype).kind != "f":
            return record(out, (images,), lambda g: (None,))
        return record(out, (images,), lambda g: (
            backward(g, a.shape, *args, **kwargs).astype(a.dtype, copy=False),))
    return op


image = types.SimpleNamespace(
    resize=_image_op(_images.resize, _images.resize_backward),
    affine_transform=_image_op(_images.affine_transform, _images.affine_transform_backward))
