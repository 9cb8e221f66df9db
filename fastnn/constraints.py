"""Weight constraints as keras.constraints: a projection applied to a weight after every
optimizer step (Keras's formulas; epsilon 1e-7)."""
from . import registry
from ._config import check_kwargs, expect_ints, fail_value, object_spec, prefixed
from .backend import get_ops

_EPS = 1e-7


def _on_backend(w):
    """w where the backend computes (a host array given on a GPU backend is moved there)."""
    ops = get_ops()
    return w if isinstance(w, ops.xp.ndarray) else ops.asarray(w)


def _norms(w, axis):
    xp = get_ops().xp
    axis = tuple(axis) if isinstance(axis, (list, tuple)) else axis    # (Keras takes lists)
    return xp.sqrt(xp.sum(w * w, axis=axis, keepdims=True))


class Constraint:
    """The base class: __call__(w) returns the projected weight."""

    def __call__(self, w):
        return w

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class MaxNorm(Constraint):
    """Each slice along `axis` rescaled to a norm of at most max_value.

    Args:
        max_value: The largest norm allowed. Defaults to `2`.
        axis: The axis along which norms are taken (0 for a Dense kernel's columns, `[0, 1, 2]` for
            a Conv2D kernel's filters). Defaults to `0`.

    Example:

    ```python
    layer = fastnn.layers.Dense(64, kernel_constraint=fastnn.constraints.MaxNorm(3))
    ```
    """

    def __init__(self, max_value=2, axis=0):
        self.max_value, self.axis = max_value, axis

    def __call__(self, w):
        w = _on_backend(w)
        norms = _norms(w, self.axis)
        return w * (get_ops().xp.clip(norms, 0, self.max_value) / (_EPS + norms))

    def get_config(self):
        return {"max_value": self.max_value, "axis": self.axis}


class NonNeg(Constraint):
    """Negative entries set to zero."""

    def __call__(self, w):
        return get_ops().xp.maximum(_on_backend(w), 0)


class UnitNorm(Constraint):
    """Each slice along `axis` rescaled to unit norm.

    Args:
        axis: The axis along which norms are taken (0 for a Dense kernel's columns, `[0, 1, 2]` for
            a Conv2D kernel's filters). Defaults to `0`.
    """

    def __init__(self, axis=0):
        self.axis = axis

    def __call__(self, w):
        w = _on_backend(w)
        return w / (_EPS + _norms(w, self.axis))

    def get_config(self):
        return {"axis": self.axis}


class MinMaxNorm(Constraint):
    """Each slice's norm moved (by `rate`) into [min_value, max_value].

    Args:
        min_value: The smallest norm allowed. Defaults to `0.0`.
        max_value: The largest norm allowed. Defaults to `1.0`.
        rate: How far each norm moves into the range at each step (1: all the way). Defaults to
            `1.0`.
        axis: The axis along which norms are taken (0 for a Dense kernel's columns, `[0, 1, 2]` for
            a Conv2D kernel's filters). Defaults to `0`.
    """

    def __init__(self, min_value=0.0, max_value=1.0, rate=1.0, axis=0):
        self.min_value, self.max_value, self.rate, self.axis = min_value, max_value, rate, axis

    def __call__(self, w):
        w = _on_backend(w)
        norms = _norms(w, self.axis)
        desired = self.rate * get_ops().xp.clip(norms, self.min_value, self.max_value) + \
            (1 - self.rate) * norms
        return w * (desired / (_EPS + norms))

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value, "rate": self.rate,
                "axis": self.axis}


max_norm, non_neg, unit_norm, min_max_norm = MaxNorm, NonNeg, UnitNorm, MinMaxNorm
_CLASSES = {cls.__name__: cls for cls in (MaxNorm, NonNeg, UnitNorm, MinMaxNorm)}
_BY_NAME = {**_CLASSES, "max_norm": MaxNorm, "non_neg": NonNeg, "unit_norm": UnitNorm,
            "min_max_norm": MinMaxNorm}


def get(identifier):
    """The constraint an identifier names.

    Args:
        identifier: A constraint, its name or config dict, a callable, or `None`.

    Returns:
        A constraint, or `None`.
    """
    if identifier is None or isinstance(identifier, Constraint):
        return identifier
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier)
        if cls is None:
            raise ValueError(f"Could not interpret constraint identifier: {identifier!r}; "
                             f"expected one of {', '.join(sorted(_BY_NAME))}")
        return cls()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if callable(identifier):
        return identifier
    raise ValueError(f"Could not interpret constraint identifier: {identifier!r}")


def serialize(constraint):
    """A constraint's config as Keras writes it.

    Args:
        constraint: The constraint.

    Returns:
        A dict.
    """
    if constraint is None:
        return None
    builtin = type(constraint).__name__ in _CLASSES and type(constraint).__module__ == __name__
    return {"module": "keras.constraints" if builtin else type(constraint).__module__,
            "class_name": type(constraint).__name__, "config": constraint.get_config(),
            "registered_name": None if builtin else registry.get_registered_name(constraint)}


def deserialize(config, path="constraint"):
    """The constraint a name or config dict describes.

    Args:
        config: A name or a config dict.
        path: Where the config is, for error messages. Defaults to `"constraint"`.

    Returns:
        A constraint.
    """
    class_name, cfg = object_spec(config, path, "constraint")
    cls = registry.lookup(class_name, config.get("registered_name")) or _BY_NAME.get(class_name)
    if cls is None:
        fail_value(f"{path}.class_name", f"one of the constraints {', '.join(sorted(_CLASSES))}"
                   " or a registered Constraint subclass", class_name)
    if cls in _CLASSES.values():
        check_kwargs(cls, cfg, f"{path}.config", {"axis": expect_ints})  # (axis: int or list)
    try:
        return cls.from_config(cfg)
    except (TypeError, ValueError) as exc:
        raise prefixed(exc, f"{path}.config") from None
