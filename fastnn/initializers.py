"""Weight initializers with Keras 3's names, defaults and formulas
(keras/src/initializers/random_initializers.py). Random draws come from fastnn's one global
Generator (fastnn.utils.get_rng), unless a seed is given."""
import math

import numpy as np

from ._config import (
    check_kwargs,
    expect_int,
    expect_str,
    fail_value,
    object_spec,
    prefixed,
    short,
    without_defaults,
)
from .rng import get_rng


def _rng(seed):
    if seed is not None:
        return np.random.default_rng(seed)
    return get_rng()


def compute_fans(shape):
    """Keras's rule: 2-D (in, out); conv kernels (..., in, out) multiply in the receptive field.

    Args:
        shape: The weight's shape.

    Returns:
        A pair `(fan_in, fan_out)`.
    """
    shape = tuple(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


class Initializer:
    """The base class of initializers: called with a shape, it returns the initial weights.

    A subclass defines `__call__(shape, dtype)` (and `get_config` when it has arguments).

    Example:

    ```python
    class Halves(fastnn.initializers.Initializer):
        def __call__(self, shape, dtype="float32"):
            return np.full(shape, 0.5, dtype)
    ```
    """
    def __call__(self, shape, dtype="float32"):
        raise TypeError(f"{type(self).__name__} does not define __call__")

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class Constant(Initializer):
    """Fills the weights with a constant.

    Args:
        value: The constant. Defaults to `0.0`.
    """
    def __init__(self, value=0.0):
        self.value = value

    def __call__(self, shape, dtype="float32"):
        return np.full(shape, self.value, dtype=dtype)

    def get_config(self):
        return {"value": self.value}


class Zeros(Constant):
    """Fills the weights with zeros."""
    def __init__(self):
        super().__init__(0.0)

    def get_config(self):
        return {}


class Ones(Constant):
    """Fills the weights with ones."""
    def __init__(self):
        super().__init__(1.0)

    def get_config(self):
        return {}


class RandomNormal(Initializer):
    """Draws the weights from a normal distribution.

    Args:
        mean: Mean of the distribution. Defaults to `0.0`.
        stddev: Its standard deviation. Defaults to `0.05`.
        seed: An int for reproducible draws, or `None` for the global generator (see
            `fastnn.utils.set_random_seed`).
    """
    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        self.mean, self.stddev, self.seed = mean, stddev, seed

    def __call__(self, shape, dtype="float32"):
        return _rng(self.seed).normal(self.mean, self.stddev, shape).astype(dtype)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


class RandomUniform(Initializer):
    """Draws the weights from a uniform distribution in `[minval, maxval)`.

    Args:
        minval: Lower bound. Defaults to `-0.05`.
        maxval: Upper bound. Defaults to `0.05`.
        seed: An int for reproducible draws, or `None` for the global generator (see
            `fastnn.utils.set_random_seed`).
    """
    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        self.minval, self.maxval, self.seed = minval, maxval, seed

    def __call__(self, shape, dtype="float32"):
        return _rng(self.seed).uniform(self.minval, self.maxval, shape).astype(dtype)

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval, "seed": self.seed}


def _truncated_normal(rng, mean, stddev, shape):
    """Normal draws re-drawn until within two standard deviations, as TF/Keras do."""
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2
    return mean + stddev * out


class TruncatedNormal(Initializer):
    """Draws the weights from a normal distribution, redrawing values more than two standard
    deviations from the mean.

    Args:
        mean: Mean of the distribution. Defaults to `0.0`.
        stddev: Standard deviation before truncation. Defaults to `0.05`.
        seed: An int for reproducible draws, or `None` for the global generator (see
            `fastnn.utils.set_random_seed`).
    """
    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        self.mean, self.stddev, self.seed = mean, stddev, seed

    def __call__(self, shape, dtype="float32"):
        return _truncated_normal(_rng(self.seed), self.mean, self.stddev, shape).astype(dtype)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


class VarianceScaling(Initializer):
    """Draws the weights with a variance scaled to the kernel's size: `scale / n`, where `n` is the
    number of input units (`"fan_in"`), output units (`"fan_out"`) or their mean (`"fan_avg"`),
    counted over the receptive field for convolution kernels.

    Args:
        scale: The scale factor (> 0). Defaults to `1.0`.
        mode: `"fan_in"`, `"fan_out"` or `"fan_avg"`. Defaults to `"fan_in"`.
        distribution: `"truncated_normal"`, `"untruncated_normal"` or `"uniform"`. Defaults to
            `"truncated_normal"`.
        seed: An int for reproducible draws, or `None` for the global generator (see
            `fastnn.utils.set_random_seed`).
    """
    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None):
        if not scale > 0:   # NaN too
            raise ValueError(f"scale must be positive, got {scale}")
        if mode not in ("fan_in", "fan_out", "fan_avg"):
            raise ValueError(f"mode must be 'fan_in', 'fan_out' or 'fan_avg', got {mode!r}")
        if distribution not in ("truncated_normal", "untruncated_normal", "uniform"):
            raise ValueError("distribution must be 'truncated_normal', 'untruncated_normal' or "
                             f"'uniform', got {distribution!r}")
        self.scale, self.mode, self.distribution, self.seed = scale, mode, distribution, seed

    def __call__(self, shape, dtype="float32"):
        fan_in, fan_out = compute_fans(shape)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        scale = self.scale / max(1.0, fan)
        rng = _rng(self.seed)
        if self.distribution == "uniform":
            limit = math.sqrt(3.0 * scale)
            w = rng.uniform(-limit, limit, shape)
        elif self.distribution == "truncated_normal":
            # Std of a unit normal truncated to [-2, 2] is 0.8796...; divide it out.
            w = _truncated_normal(rng, 0.0, math.sqrt(scale) / 0.87962566103423978, shape)
        else:
            w = rng.normal(0.0, math.sqrt(scale), shape)
        return w.astype(dtype)

    def get_config(self):
        return {"scale": self.scale, "mode": self.mode, "distribution": self.distribution,
                "seed": self.seed}


class Orthogonal(Initializer):
    """Keras's OrthogonalInitializer: the Q of a normal matrix's QR, signs fixed by R's
    diagonal, times gain (a recurrent kernel's default).

    Args:
        gain: Factor the orthogonal matrix is multiplied by. Defaults to `1.0`.
        seed: An int for reproducible draws, or `None` for the global generator (see
            `fastnn.utils.set_random_seed`).
    """

    def __init__(self, gain=1.0, seed=None):
        self.gain, self.seed = gain, seed

    def __call__(self, shape, dtype="float32"):
        if len(shape) < 2:
            raise ValueError(f"The tensor to initialize must be at least two-dimensional. "
                             f"Received: shape={tuple(shape)} of rank {len(shape)}.")
        rows, cols = math.prod(shape[:-1]), shape[-1]
        a = _rng(self.seed).normal(0.0, 1.0, (max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return (self.gain * q.reshape(shape)).astype(dtype)

    def get_config(self):
        return {"gain": self.gain, "seed": self.seed}


def _variance_scaling(name, scale, mode, distribution):
    def __init__(self, seed=None):
        VarianceScaling.__init__(self, scale, mode, distribution, seed)

    def get_config(self):
        return {"seed": self.seed}

    draw = {"uniform": "a uniform distribution in [-limit, limit], limit = sqrt(3 * v)",
            "truncated_normal": "a normal distribution truncated to two standard deviations, "
                                "with variance v"}[distribution]
    fan = {"fan_in": "fan_in (the input units)", "fan_avg": "((fan_in + fan_out) / 2)"}[mode]
    doc = (f"Draws weights from {draw},\nwhere v = {scale:g} / {fan}.\n\n"
           f'The same as `VarianceScaling(scale={scale:g}, mode="{mode}", '
           f'distribution="{distribution}")`.\n\n'
           "Args:\n    seed: An int for reproducible draws, or `None` for the global generator "
           "(see\n        `fastnn.utils.set_random_seed`). Defaults to `None`.")
    return type(name, (VarianceScaling,), {"__init__": __init__, "get_config": get_config,
                                           "__doc__": doc})


GlorotUniform = _variance_scaling("GlorotUniform", 1.0, "fan_avg", "uniform")
GlorotNormal = _variance_scaling("GlorotNormal", 1.0, "fan_avg", "truncated_normal")
HeNormal = _variance_scaling("HeNormal", 2.0, "fan_in", "truncated_normal")
HeUniform = _variance_scaling("HeUniform", 2.0, "fan_in", "uniform")
LecunNormal = _variance_scaling("LecunNormal", 1.0, "fan_in", "truncated_normal")
LecunUniform = _variance_scaling("LecunUniform", 1.0, "fan_in", "uniform")

_BY_NAME = {
    "zeros": Zeros, "ones": Ones, "constant": Constant, "random_normal": RandomNormal,
    "random_uniform": RandomUniform, "truncated_normal": TruncatedNormal,
    "variance_scaling": VarianceScaling, "glorot_uniform": GlorotUniform,
    "glorot_normal": GlorotNormal, "he_normal": HeNormal, "he_uniform": HeUniform,
    "lecun_normal": LecunNormal, "lecun_uniform": LecunUniform, "uniform": RandomUniform,
    "normal": RandomNormal, "orthogonal": Orthogonal,
}
_CLASSES = {c.__name__: c for c in set(_BY_NAME.values())}
_CLASSES["OrthogonalInitializer"] = Orthogonal      # Keras's class name


def get(identifier):
    """The initializer an identifier names.

    Args:
        identifier: A name such as `"glorot_uniform"`, an `Initializer`, a config dict, or a
            callable `f(shape, dtype)`.

    Returns:
        An initializer.
    """
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier.lower()) or _CLASSES.get(identifier)
        if cls is None:
            raise ValueError(f"Unknown initializer {identifier!r}. Valid names: "
                             f"{', '.join(sorted(_BY_NAME))}")
        return cls()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, type) and issubclass(identifier, Initializer):
        return identifier()
    if callable(identifier):
        return identifier
    raise ValueError(f"Could not interpret initializer {short(identifier)}")


def _seed(value, path):
    expect_int(value, path, minimum=0, none_ok=True)


def deserialize(config, custom_objects=None, path="initializer"):
    """Keras's serialized initializer {"class_name": "GlorotUniform", "config": {"seed": null},
    ...} -> the initializer. Every key of its config must be an argument of that class, of the
    right type; errors name the key (as `path`.config.key) and the value. Only fastnn's own
    classes resolve; nothing named in `config` is imported.

    Args:
        config: A name or a config dict.
        custom_objects: A dict `{name: class}` for custom initializers. Defaults to `None`.
        path: Where the config is, for error messages. Defaults to `"initializer"`.

    Returns:
        An initializer.
    """
    if isinstance(config, str):
        try:
            return get(config)
        except ValueError as exc:
            raise prefixed(exc, path) from None
    class_name, cfg = object_spec(config, path, "initializer")
    cls = _CLASSES.get(class_name) or _BY_NAME.get(class_name.lower())
    if cls is None:
        fail_value(f"{path}.class_name", "one of the initializers "
                   f"{', '.join(sorted(_CLASSES))}", class_name)
    if issubclass(cls, VarianceScaling):     # Keras 3.15's fan axes: None is the usual fan
        cfg = without_defaults(cfg, {"input_axes": None, "output_axes": None},
                               f"{path}.config ({class_name})")
    check_kwargs(cls, cfg, f"{path}.config",
                 checks={"seed": _seed, "mode": expect_str, "distribution": expect_str})
    try:
        return cls.from_config(cfg)
    except (TypeError, ValueError) as exc:
        raise prefixed(exc, f"{path}.config") from None


def serialize(init):
    """An initializer's config as Keras writes it.

    Args:
        init: The initializer.

    Returns:
        A dict.
    """
    cfg = init.get_config() if isinstance(init, Initializer) else {}
    name = "OrthogonalInitializer" if type(init) is Orthogonal else type(init).__name__
    return {"module": "keras.initializers", "class_name": name, "config": cfg,
            "registered_name": None}
