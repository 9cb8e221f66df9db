"""Layers with Keras 3's names, arguments, weight shapes and weight order.

Contract (see shared/design/ARCHITECTURE.md): __init__ stores the config; build(input_shape)
creates the weights; forward(x, training) returns the output and keeps what backward needs;
backward(dy, need_dx) writes the weight gradients into self.grads and returns dx. backward may
overwrite dy in place (it is the next layer's scratch buffer). Shapes exclude nothing: the batch
axis is None in shapes given to build()."""
import re

import numpy as np

from . import activations, initializers
from .backend import get_ops, unique_name


def _snake_case(name):
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _shape_tuple(shape, arg="input_shape"):
    if isinstance(shape, int):
        shape = (shape,)
    try:
        shape = tuple(None if d is None else int(d) for d in shape)
    except (TypeError, ValueError):
        raise TypeError(f"{arg} must be a tuple of ints, got {shape!r}") from None
    if any(d is not None and d < 1 for d in shape):
        raise ValueError(f"{arg} dimensions must be positive, got {shape}")
    return shape


class Layer:
    def __init__(self, trainable=True, name=None, dtype=None, input_shape=None,
                 input_dim=None, batch_input_shape=None, batch_size=None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unexpected keyword argument(s) "
                            f"{sorted(kwargs)}")
        if dtype not in (None, "float32", np.float32):
            raise ValueError(f"{type(self).__name__}: only dtype='float32' is supported, "
                             f"got {dtype!r}")
        self.name = name or unique_name(_snake_case(type(self).__name__))
        self.trainable = trainable
        self.built = False
        self.input_shape_arg = None  # the legacy input_shape/input_dim, a shape without batch
        if batch_input_shape is not None:
            self.input_shape_arg = _shape_tuple(batch_input_shape, "batch_input_shape")[1:]
        elif input_shape is not None:
            self.input_shape_arg = _shape_tuple(input_shape)
        elif input_dim is not None:
            self.input_shape_arg = _shape_tuple((input_dim,), "input_dim")
        self._vars = {}
        self._trainable_names = []
        self._non_trainable_names = []
        self.grads = {}
        self._build_shape = None
        self._workspace = {}

    # ---- weights --------------------------------------------------------------------------
    def __getattr__(self, name):
        vars_ = self.__dict__.get("_vars")
        if vars_ is not None and name in vars_:
            return vars_[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def add_weight(self, name, shape, initializer="zeros", trainable=True):
        value = np.ascontiguousarray(initializers.get(initializer)(tuple(shape)),
                                     dtype=np.float32)
        if value.shape != tuple(shape):
            raise ValueError(f"{self.name}: initializer returned shape {value.shape} for "
                             f"weight {name!r}, expected {tuple(shape)}")
        self._vars[name] = value
        (self._trainable_names if trainable else self._non_trainable_names).append(name)
        if trainable:
            self.grads[name] = np.zeros(shape, np.float32)
        return value

    def _rebind(self, name, array, grad=None):
        """Move a weight (and its gradient) into caller-owned storage, e.g. a flat arena."""
        array[...] = self._vars[name]
        self._vars[name] = array
        if grad is not None:
            self.grads[name] = grad

    @property
    def weights(self):
        return [self._vars[n] for n in self._trainable_names + self._non_trainable_names]

    @property
    def trainable_weights(self):
        return [self._vars[n] for n in self._trainable_names] if self.trainable else []

    @property
    def non_trainable_weights(self):
        names = self._non_trainable_names if self.trainable else \
            self._trainable_names + self._non_trainable_names
        return [self._vars[n] for n in names]

    @property
    def weight_names(self):
        return self._trainable_names + self._non_trainable_names

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        weights = list(weights)
        current = self.weights
        if len(weights) != len(current):
            raise ValueError(f"Layer {self.name!r} expects {len(current)} weights, but "
                             f"set_weights received {len(weights)}")
        arrays = []
        for name, new, old in zip(self.weight_names, weights, current):
            new = np.asarray(new)
            if new.shape != old.shape:
                raise ValueError(f"Layer {self.name!r} weight {name!r}: expected shape "
                                 f"{old.shape}, received {new.shape}")
            arrays.append(new)
        for new, old in zip(arrays, current):
            old[...] = new

    def count_params(self):
        return int(sum(w.size for w in self.weights))

    # ---- shapes and building -------------------------------------------------------------
    def build(self, input_shape):
        self._build_shape = tuple(input_shape)
        self.built = True

    def _maybe_build(self, input_shape):
        if not self.built:
            self.build(tuple(input_shape))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    @property
    def input_shape(self):
        if self._build_shape is None:
            raise AttributeError(f"Layer {self.name!r} has not been built yet")
        return self._build_shape

    @property
    def output_shape(self):
        return self.compute_output_shape(self.input_shape)

    def _buffer(self, key, shape):
        """A scratch array reused across steps of the same shape (kernels never allocate)."""
        buf = self._workspace.get(key)
        if buf is None or buf.shape != shape:
            buf = self._workspace[key] = get_ops().empty(shape)
        return buf

    # ---- computation ---------------------------------------------------------------------
    def forward(self, x, training=False):
        return x

    def backward(self, dy, need_dx=True):
        return dy

    def __call__(self, x, training=False):
        x = get_ops().asarray(x)
        self._maybe_build((None,) + x.shape[1:])
        return np.array(self.forward(x, training))

    # ---- config ----------------------------------------------------------------------------
    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable, "dtype": "float32"}
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("dtype", None)
        if "batch_shape" in config and cls is not InputLayer:
            config["batch_input_shape"] = config.pop("batch_shape")
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name}, built={self.built}>"


class InputLayer(Layer):
    def __init__(self, shape=None, batch_size=None, dtype=None, name=None, batch_shape=None,
                 input_shape=None, **kwargs):
        if shape is None and batch_shape is None and input_shape is None:
            raise ValueError("InputLayer needs shape=(...), e.g. shape=(784,)")
        if batch_shape is not None:
            shape = tuple(batch_shape)[1:]
        elif shape is None:
            shape = input_shape
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.input_shape_arg = _shape_tuple(shape, "shape")
        self.batch_size = batch_size

    def get_config(self):
        return {"batch_shape": [None, *self.input_shape_arg], "dtype": "float32",
                "sparse": False, "name": self.name}


def Input(shape=None, batch_size=None, dtype=None, name=None, batch_shape=None):
    """A symbolic input for Sequential([Input(shape=...), ...]); holds only the shape."""
    return InputLayer(shape=shape, batch_size=batch_size, dtype=dtype, name=name,
                      batch_shape=batch_shape)


class Dense(Layer):
    def __init__(self, units, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(units, (int, np.integer)) or isinstance(units, bool) or units < 1:
            raise ValueError(f"Dense: units must be a positive int, got {units!r}")
        for arg, val in (("kernel_regularizer", kernel_regularizer),
                         ("bias_regularizer", bias_regularizer),
                         ("activity_regularizer", activity_regularizer),
                         ("kernel_constraint", kernel_constraint),
                         ("bias_constraint", bias_constraint)):
            if val is not None:
                raise ValueError(f"Dense: {arg} is not supported by fastnn yet (got {val!r})")
        self.units = int(units)
        self.activation = activations.get(activation)
        self.act_id, self.act_alpha = activations.kernel_id(self.activation)
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    def build(self, input_shape):
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(f"Dense layer {self.name!r} needs a known last input dimension, "
                             f"got input shape {tuple(input_shape)}")
        self.add_weight("kernel", (input_shape[-1], self.units), self.kernel_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.units,), self.bias_initializer)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def forward(self, x, training=False):
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        rows = x2.shape[0]
        z = self._buffer("z", (rows, self.units))
        # Keep the pre-activation only when the activation's derivative needs it.
        y = self._buffer("y", (rows, self.units)) if self.act_id in activations.NEEDS_INPUT \
            else z
        get_ops().dense_forward(x2, self.kernel, self._vars.get("bias"), self.act_id,
                                self.act_alpha, z=z, y=y)
        self._x, self._z, self._y = x2, z, y
        return y.reshape(lead + (self.units,))

    def backward(self, dy, need_dx=True, preactivation=False):
        """preactivation=True: dy is already dL/dz (a loss fused with this activation)."""
        dy2 = dy.reshape(-1, self.units)
        act = activations.LINEAR if preactivation else self.act_id
        dx = self._buffer("dx", self._x.shape) if need_dx else False
        dx = get_ops().dense_backward(self._x, self.kernel, self._z, self._y, dy2, act,
                                      self.act_alpha, self.grads["kernel"],
                                      self.grads.get("bias"), dx=dx, dz=dy2)
        return None if dx is None else dx.reshape(dy.shape[:-1] + (self._x.shape[1],))

    def get_config(self):
        config = super().get_config()
        config.update({
            "units": self.units, "activation": activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "kernel_regularizer": None, "bias_regularizer": None,
            "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None,
        })
        return config


class Activation(Layer):
    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = activations.get(activation)
        self.act_id, self.act_alpha = activations.kernel_id(self.activation)

    def forward(self, x, training=False):
        ops = get_ops()
        y = ops.act_forward(self.act_id, self.act_alpha, x, out=self._buffer("y", x.shape))
        self._x, self._y = x, y
        return y

    def backward(self, dy, need_dx=True, preactivation=False):
        if preactivation:
            return dy
        return get_ops().act_backward(self.act_id, self.act_alpha, self._x, self._y, dy,
                                      out=dy)

    def get_config(self):
        config = super().get_config()
        config["activation"] = activations.serialize(self.activation)
        return config


class ReLU(Activation):
    def __init__(self, **kwargs):
        super().__init__("relu", **kwargs)

    def get_config(self):
        return Layer.get_config(self)


class Softmax(Activation):
    def __init__(self, axis=-1, **kwargs):
        if axis != -1:
            raise ValueError(f"Softmax: only axis=-1 is supported, got {axis}")
        super().__init__("softmax", **kwargs)

    def get_config(self):
        return {**Layer.get_config(self), "axis": -1}


class LeakyReLU(Activation):
    def __init__(self, negative_slope=0.3, **kwargs):
        super().__init__("leaky_relu", **kwargs)
        self.negative_slope = self.act_alpha = float(negative_slope)

    def get_config(self):
        return {**Layer.get_config(self), "negative_slope": self.negative_slope}


class Flatten(Layer):
    def __init__(self, data_format=None, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"Flatten: only data_format='channels_last' is supported, "
                             f"got {data_format!r}")
        self.data_format = data_format

    def compute_output_shape(self, input_shape):
        rest = input_shape[1:]
        size = None if any(d is None for d in rest) else int(np.prod(rest, dtype=np.int64))
        return (input_shape[0], size)

    def forward(self, x, training=False):
        self._in_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, need_dx=True):
        return dy.reshape(self._in_shape)

    def get_config(self):
        return {**super().get_config(), "data_format": "channels_last"}


class Dropout(Layer):
    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= rate < 1:
            raise ValueError(f"Dropout: rate must be in [0, 1), got {rate!r}")
        if noise_shape is not None:
            raise ValueError("Dropout: noise_shape is not supported by fastnn yet")
        self.rate, self.noise_shape, self.seed = float(rate), noise_shape, seed
        self._rng = np.random.default_rng(seed) if seed is not None else None

    def forward(self, x, training=False):
        self._mask = None
        if not training or self.rate == 0:
            return x
        from .utils import get_rng
        rng = self._rng or get_rng()
        u = self._buffer("u", x.shape)
        rng.random(out=u, dtype=np.float32)
        # Inverted dropout: the mask holds 0 or 1/(1-rate).
        mask = self._mask = np.greater_equal(u, self.rate, out=self._buffer_bool(x.shape))
        y = self._buffer("y", x.shape)
        np.multiply(x, mask, out=y)
        y *= np.float32(1.0 / (1.0 - self.rate))
        return y

    def _buffer_bool(self, shape):
        buf = self._workspace.get("mask")
        if buf is None or buf.shape != shape:
            buf = self._workspace["mask"] = np.empty(shape, bool)
        return buf

    def backward(self, dy, need_dx=True):
        if self._mask is None:
            return dy
        np.multiply(dy, self._mask, out=dy)
        dy *= np.float32(1.0 / (1.0 - self.rate))
        return dy

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed,
                "noise_shape": None}


_CLASSES = {c.__name__: c for c in (InputLayer, Dense, Activation, ReLU, Softmax, LeakyReLU,
                                     Flatten, Dropout)}


def get_class(name):
    try:
        return _CLASSES[name]
    except KeyError:
        raise ValueError(f"Unknown layer class {name!r}; known: {', '.join(sorted(_CLASSES))}") \
            from None
