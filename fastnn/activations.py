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
    return _apply(LINEAR, x)


def relu(x):
    return _apply(RELU, x)


def sigmoid(x):
    return _apply(SIGMOID, x)


def tanh(x):
    return _apply(TANH, x)


def softmax(x, axis=-1):
    if axis not in (-1, np.ndim(x) - 1):
        return np.moveaxis(softmax(np.moveaxis(np.asarray(x), axis, -1)), -1, axis)
    return _apply(SOFTMAX, x)


def softplus(x):
    return _apply(SOFTPLUS, x)


def softsign(x):
    return _apply(SOFTSIGN, x)


def selu(x):
    return _apply(SELU, x)


def elu(x, alpha=1.0):
    return _apply(ELU, x, alpha)


def exponential(x):
    return _apply(EXPONENTIAL, x)


def leaky_relu(x, negative_slope=0.2):
    return _apply(LEAKY_RELU, x, negative_slope)


def gelu(x, approximate=False):
    if approximate:
        raise ValueError("gelu(approximate=True) is not supported; use approximate=False")
    return _apply(GELU, x)


def silu(x):
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
    "config": "relu", ...}) or one of the functions above -> that function."""
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
    fastnn's own activations resolve; nothing named in `config` is imported."""
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
    return fn.__name__


def kernel_id(fn):
    """(activation id, alpha) for the backend kernels."""
    act = _IDS[fn]
    return act, _DEFAULT_ALPHA.get(act, 0.0)
