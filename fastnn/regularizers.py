"""Weight regularizers as keras.regularizers: a penalty on a weight, added to the loss the
model reports and trains on (Keras's model.losses). Keras's formulas, written with fastnn.ops;
the penalty's gradient comes from fastnn's autodiff (penalty_and_gradient)."""
import math

import numpy as np

from . import ops, registry
from ._config import check_kwargs, fail_value, object_spec, prefixed
from .autodiff import Tensor, gradients, tape, value_of
from .backend import get_ops


def _factor(value, name):
    if isinstance(value, bool) or not isinstance(value, (float, int)) or \
            math.isinf(value) or math.isnan(value) or value < 0:
        raise ValueError(f"Invalid value for argument {name}: expected a non-negative float."
                         f"Received: {name}={value}")
    return float(value)


class Regularizer:
    """The base class: a subclass defines __call__(x) (with fastnn.ops) and get_config()."""

    def __call__(self, x):
        return 0.0

    def get_config(self):
        raise NotImplementedError(f"{type(self).__name__} does not implement get_config()")

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class L1L2(Regularizer):
    """l1 * sum(|x|) + l2 * sum(x^2).

    Args:
        l1: The L1 factor. Defaults to `0.0`.
        l2: The L2 factor. Defaults to `0.0`.

    Example:

    ```python
    layer = fastnn.layers.Dense(64, kernel_regularizer=fastnn.regularizers.L1L2(l1=1e-5, l2=1e-4))
    ```
    """

    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = _factor(0.0 if l1 is None else l1, "l1")
        self.l2 = _factor(0.0 if l2 is None else l2, "l2")

    def __call__(self, x):
        value = 0.0
        if self.l1:
            value = value + self.l1 * ops.sum(ops.abs(x))
        if self.l2:
            value = value + self.l2 * ops.sum(ops.square(x))
        return value

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(Regularizer):
    """l1 * sum(|x|).

    Args:
        l1: The L1 factor. Defaults to `0.01`.
    """

    def __init__(self, l1=0.01):
        # (Keras keeps this factor as a float32 tensor: its config holds the float32 value)
        self.l1 = float(np.float32(_factor(0.01 if l1 is None else l1, "l1")))

    def __call__(self, x):
        return self.l1 * ops.sum(ops.abs(x))

    def get_config(self):
        return {"l1": self.l1}


class L2(Regularizer):
    """l2 * sum(x^2).

    Args:
        l2: The L2 factor. Defaults to `0.01`.
    """

    def __init__(self, l2=0.01):
        self.l2 = _factor(0.01 if l2 is None else l2, "l2")

    def __call__(self, x):
        return self.l2 * ops.sum(ops.square(x))

    def get_config(self):
        return {"l2": self.l2}


class OrthogonalRegularizer(Regularizer):
    """factor * mean |cosine| between distinct rows (or columns) of a rank-2 weight.

    Args:
        factor: The factor of the penalty. Defaults to `0.01`.
        mode: `"rows"` or `"columns"`: which vectors should be orthogonal. Defaults to `"rows"`.
    """

    def __init__(self, factor=0.01, mode="rows"):
        self.factor = float(np.float32(_factor(factor, "factor")))     # (as L1's)
        if mode not in ("rows", "columns"):
            raise ValueError('Invalid value for argument `mode`. Expected one of {"rows", '
                             f'"columns"}}. Received: mode={mode}')
        self.mode = mode

    def __call__(self, x):
        if len(x.shape) != 2:
            raise ValueError("Inputs to OrthogonalRegularizer must have rank 2. Received: "
                             f"inputs.shape={tuple(x.shape)}")
        if self.mode == "rows":
            unit = ops.normalize(x, axis=1)
            product, size = ops.matmul(unit, ops.transpose(unit)), x.shape[0]
        else:
            unit = ops.normalize(x, axis=0)
            product, size = ops.matmul(ops.transpose(unit), unit), x.shape[1]
        off_diagonal = product * (1.0 - np.eye(size, dtype=np.float32))
        return self.factor * 0.5 * ops.sum(ops.abs(off_diagonal)) / (size * (size - 1.0) / 2.0)

    def get_config(self):
        return {"factor": self.factor, "mode": self.mode}


l1, l2, l1_l2, orthogonal_regularizer = L1, L2, L1L2, OrthogonalRegularizer
_CLASSES = {cls.__name__: cls for cls in (L1, L2, L1L2, OrthogonalRegularizer)}
_BY_NAME = {**_CLASSES, "l1": L1, "l2": L2, "l1_l2": L1L2,
            "orthogonal_regularizer": OrthogonalRegularizer}


def l1l2_factors(regularizer):
    """(l1, l2) of exactly Keras's L1, L2 or L1L2 (a subclass may redefine __call__), whose
    penalty and gradient one kernel computes (Ops.l1l2_penalty, also inside the fused Dense
    stack); None for any other regularizer.

    Args:
        regularizer: A regularizer (or None).

    Returns:
        `(l1, l2)` as floats, or `None`.
    """
    kind = type(regularizer)
    if kind is L1:
        return regularizer.l1, 0.0
    if kind is L2:
        return 0.0, regularizer.l2
    if kind is L1L2:
        return regularizer.l1, regularizer.l2
    return None


def penalty(regularizer, weight, grad=None):
    """The penalty on a weight as a float; with grad (the weight's gradient, written by
    backward), the penalty's gradient is added to it. L1, L2 and L1L2 by Ops.l1l2_penalty,
    any other through autodiff.

    Args:
        regularizer: The regularizer.
        weight: The weight array.
        grad: The weight's gradient array, or `None` for the value only.

    Returns:
        The penalty as a float.
    """
    factors = l1l2_factors(regularizer)
    if factors is not None:
        return get_ops().l1l2_penalty(weight, grad, *factors)
    value, g = penalty_and_gradient(regularizer, weight, grad is not None)
    if g is not None:
        grad += g
    return value


def penalty_and_gradient(regularizer, weight, want_gradient=True):
    """(the penalty as a float, its gradient with respect to the weight or None).

    Args:
        regularizer: The regularizer.
        weight: The weight array.
        want_gradient: Whether to compute the gradient. Defaults to `True`.

    Returns:
        A pair `(penalty, gradient)`; the gradient is `None` when not wanted.
    """
    w = Tensor(weight, requires_grad=want_gradient)
    with tape():
        value = regularizer(w)
    grad = None
    if want_gradient and isinstance(value, Tensor) and value.requires_grad:
        grad = gradients(value, [w])[0]
    return float(np.asarray(value_of(value), np.float64).reshape(())), grad


def get(identifier):
    """None, a Regularizer, a name ("l2", "L1L2", ...), a config dict, or a callable.

    Args:
        identifier: The regularizer, its name or config, a callable, or `None`.

    Returns:
        A regularizer, or `None`.
    """
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier)
        if cls is None:
            raise ValueError(f"Could not interpret regularizer identifier: {identifier!r}; "
                             f"expected one of {', '.join(sorted(_BY_NAME))}")
        return cls()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if callable(identifier):
        return identifier
    raise ValueError(f"Could not interpret regularizer identifier: {identifier!r}")


def serialize(regularizer):
    """A regularizer's config as Keras writes it.

    Args:
        regularizer: The regularizer.

    Returns:
        A dict.
    """
    if regularizer is None:
        return None
    builtin = type(regularizer).__name__ in _CLASSES and type(regularizer).__module__ == __name__
    return {"module": "keras.regularizers" if builtin else type(regularizer).__module__,
            "class_name": type(regularizer).__name__, "config": regularizer.get_config(),
            "registered_name": None if builtin else registry.get_registered_name(regularizer)}


def deserialize(config, path="regularizer"):
    """The regularizer a name or config dict describes.

    Args:
        config: A name or a config dict.
        path: Where the config is, for error messages. Defaults to `"regularizer"`.

    Returns:
        A regularizer.
    """
    class_name, cfg = object_spec(config, path, "regularizer")
    cls = registry.lookup(class_name, config.get("registered_name")) or _BY_NAME.get(class_name)
    if cls is None:
        fail_value(f"{path}.class_name", f"one of the regularizers {', '.join(sorted(_CLASSES))}"
                   " or a registered Regularizer subclass", class_name)
    if cls in _CLASSES.values():
        check_kwargs(cls, cfg, f"{path}.config")
    try:
        return cls.from_config(cfg)
    except (TypeError, ValueError) as exc:
        raise prefixed(exc, f"{path}.config") from None
