"""Activation functions by Keras name. Each function works on arrays (like keras.activations.*);
layers run them through the backend's fused kernels using the integer ids below."""
import types

import numpy as np

from ._config import expect_str, fail_type, fail_value, object_spec, short
from .backend import get_ops

# Ids shared with csrc/fastnn.h (keep in sync).
LINEAR, RELU, SIGMOID, TANH, SOFTMAX, SOFTPLUS, SOFTSIGN, SELU, ELU, EXPONENTIAL, \
    LEAKY_RELU, GELU, SILU = range(13)
NEEDS_INPUT = frozenset({SOFTPLUS, GELU, SILU})
# Non-decreasing (for alpha >= 0): max pooling commutes with these.
MONOTONE = frozenset({LINEAR, RELU, SIGMOID, TANH, SOFTPLUS, SOFTSIGN, SELU, ELU, EXPONENTIAL,
                      LEAKY_RELU})


def _apply(act, x, alpha=0.0):
    ops = get_ops()
    return ops.act_forward(act, alpha, ops.asarray(x))


def linear(x):
    """The identity: returns `x` unchanged.

    Args:
        x: Input tensor or array.

    Returns:
        An array of the shape of `x`.
    """
    return _apply(LINEAR, x)


def relu(x):
    """Rectified linear unit: `max(x, 0)`.

    Args:
        x: Input tensor or array.

    Returns:
        An array of the shape of `x`.
    """
    return _apply(RELU, x)


def sigmoid(x):
    """Sigmoid: `1 / (1 + exp(-x))`.

    Args:
        x: Input tensor or array.

    Returns:
        An array of the shape of `x`.
    """
    return _apply(SIGMOID, x)


def tanh(x):
    """Hyperbolic tangent.

    Args:
        x: Input tensor or array.

    Returns:
        An array of the shape of `x`.
    """
    return _apply(TANH, x)


def softmax(x, axis=-1):
    """Softmax: `exp(x) / sum(exp(x))` along `axis`, so the values are positive and sum to 1.

    Args:
        x: Input tensor or array.
        axis: The axis the values are normalized over. Defaults to `-1`.

    Returns:
        An array of the shape of `x`.
    """
    if axis not in (-1, np.ndim(x) - 1):
        return np.moveaxis(softmax(np.moveaxis(np.asarray(x), axis, -1)), -1, axis)
    return _apply(SOFTMAX, x)


def softplus(x):
    """Softplus: `log(exp(x) + 1)`.

    Args:
        x: Input tensor or array.

    Returns:
        An array of the shape of `x`.
    """
    return _apply(SOFTPLUS, x)


def softsign(x):
    """Softsign: `x / (abs(x) + 1)`.

    Args:
        x: Input tensor or array.

    Returns:
        An array of the shape of `x`.
    """
    return _apply(SOFTSIGN, x)


def selu(x):
    """Scaled exponential linear unit: `scale * x` for `x > 0`, else `scale * alpha * (exp(x) - 1)`,
    with Keras's constants `alpha = 1.67326...` and `scale = 1.05070...`.

    Args:
        x: Input tensor or array.

    Returns:
        An array of the shape of `x`.
    """
    return _apply(SELU, x)


def elu(x, alpha=1.0):
    """Exponential linear unit: `x` for `x > 0`, else `alpha * (exp(x) - 1)`.

    Args:
        x: Input tensor or array.
        alpha: Scale of the negative part. Defaults to `1.0`.

    Returns:
        An array of the shape of `x`.
    """
    return _apply(ELU, x, alpha)


def exponential(x):
    """Exponential: `exp(x)`.

    Args:
        x: Input tensor or array.

    Returns:
        An array of the shape of `x`.
    """
    return _apply(EXPONENTIAL, x)


def leaky_relu(x, negative_slope=0.2):
    """Leaky ReLU: `x` for `x >= 0`, else `negative_slope * x`.

    Args:
        x: Input tensor or array.
        negative_slope: Slope of the negative part. Defaults to `0.2`.

    Returns:
        An array of the shape of `x`.
    """
    return _apply(LEAKY_RELU, x, negative_slope)


def gelu(x, approximate=False):
    """Gaussian error linear unit, exact: `x * P(X <= x)` for a standard normal `X`, i.e. `0.5 * x *
    (1 + erf(x / sqrt(2)))`.

    Args:
        x: Input tensor or array.
        approximate: Only `False` (the tanh approximation is not supported). Defaults to `False`.

    Returns:
        An array of the shape of `x`.
    """
    if approximate:
        raise ValueError("gelu(approximate=True) is not supported; use approximate=False")
    return _apply(GELU, x)


def silu(x):
    """SiLU (swish): `x * sigmoid(x)`.

    Args:
        x: Input tensor or array.

    Returns:
        An array of the shape of `x`.
    """
    return _apply(SILU, x)


swish = silu

_BY_NAME = {
    "linear": linear, "relu": relu, "sigmoid": sigmoid, "tanh": tanh, "softmax": softmax,
    "softplus": softplus, "softsign": softsign, "selu": selu, "elu": elu,
    "exponential": exponential, "leaky_relu": leaky_relu, "gelu": gelu, "silu": silu,
    "swish": silu,
}
_IDS = {linear: LINEAR, relu: RELU, sigmoid: SIGMOID, tanh: TANH, softmax: SOFTMAX,
        softplus: SOFTPLUS, softsign: SOFTSIGN, selu: SELU, elu: ELU, exponential: EXPONENTIAL,
        leaky_relu: LEAKY_RELU, gelu: GELU, silu: SILU}
_DEFAULT_ALPHA = {ELU: 1.0, LEAKY_RELU: 0.2}


def get(identifier):
    """A name, None (linear), Keras's serialized form of one ({"class_name": "function",
    "config": "relu", ...}) or one of the functions above -> that function.

    Args:
        identifier: A name, `None`, a serialized dict, or an activation function.

    Returns:
        The activation function.
    """
    if identifier is None:
        return linear
    if isinstance(identifier, str):
        fn = _BY_NAME.get(identifier.lower())
        if fn is None:
            raise ValueError(f"Unknown activation {identifier!r}. Valid names: "
                             f"{', '.join(sorted(_BY_NAME))}")
        return fn
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, types.FunctionType) and identifier in _IDS:
        return identifier
    raise ValueError(f"Unsupported activation {short(identifier)}: pass one of the names "
                     f"{', '.join(sorted(_BY_NAME))} (custom callables have no fused kernel)")


def deserialize(config, custom_objects=None, path="activation"):
    """Keras's serialized activation: {"module": "keras.activations", "class_name": "function",
    "config": "relu", "registered_name": "relu"} (or just the name) -> the function. Only
    fastnn's own activations resolve; nothing named in `config` is imported.

    Args:
        config: A name or Keras's serialized dict.
        custom_objects: A dict `{name: function}` for custom activations. Defaults to `None`.
        path: Where the config is, for error messages. Defaults to `"activation"`.

    Returns:
        The activation function.
    """
    if isinstance(config, str):
        return get(config)
    if not isinstance(config, dict):
        fail_type(path, "an activation name or its serialized form", config)
    if "class_name" in config and config["class_name"] == "function":
        expect_str(config.get("config"), f"{path}.config")
        name = config["config"]
    else:
        name, inner = object_spec(config, path, "activation")
        if inner:
            fail_value(f"{path}.config", "no config for a built-in activation", inner)
    if name.lower() not in _BY_NAME:
        fail_value(path, f"one of the activations {', '.join(sorted(_BY_NAME))}", name)
    return _BY_NAME[name.lower()]


def serialize(fn):
    """An activation function's name, as Keras writes it in configs.

    Args:
        fn: The activation function.

    Returns:
        A string.
    """
    return fn.__name__


def kernel_id(fn):
    """(activation id, alpha) for the backend kernels.

    Args:
        fn: An activation function.

    Returns:
        A pair `(id, alpha)`.
    """
    act = _IDS[fn]
    return act, _DEFAULT_ALPHA.get(act, 0.0)
