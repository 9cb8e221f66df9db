"""Sequence and text layers with Keras 3's names, arguments, shapes and weights (issue 18,
items 1-2): Embedding (a row gather; backward a sparse gradient into the rows used), Masking,
Conv1D, MaxPooling1D, AveragePooling1D, GlobalAveragePooling1D, GlobalMaxPooling1D and
TimeDistributed. Re-exported from fastnn.layers.

The 1-D convolution and pooling layers are the 2-D ones on a (batch, 1, steps, channels) view
of their (batch, steps, channels) input: the same kernels, no second implementation.

Masks (Keras's convention): a boolean backend array (batch, timesteps), True = keep. A layer
that consumes one takes forward(x, training=False, mask=None); compute_mask(inputs,
previous_mask) gives the mask its output carries (fastnn.layers.Layer)."""
import warnings

import numpy as np

from .. import initializers
from ..backend import get_ops
from .core import (
    _CLASSES,
    AveragePooling2D,
    Conv2D,
    GlobalMaxPooling2D,
    Layer,
    MaxPooling2D,
    _is_int,
    _takes_mask,
    _weight_options,
    _weight_options_config,
    get_class,
)


def _positive_int(value, arg, layer):
    if not _is_int(value) or value <= 0:
        raise ValueError(f"`{arg}` must be a positive integer. Received: {arg}={value!r} "
                         f"(of type {type(value).__name__}).")
    return int(value)


def _single(value, arg, layer):
    """An int or a 1-tuple of ints (Keras's 1-D arguments) -> the int."""
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if not _is_int(value) or value < 1:
        raise ValueError(f"{layer}: The `{arg}` argument must be a tuple of 1 integers. "
                         f"Received {arg}={value!r}")
    return int(value)


def _rank3(layer, input_shape):
    if len(input_shape) != 3:
        raise ValueError(f"{type(layer).__name__} layer {layer.name!r} expects 3-D input "
                         f"(batch, steps, channels), got shape {tuple(input_shape)}")


def _as_image(x):
    """(batch, steps, channels) viewed as the 2-D layers' (batch, 1, steps, channels)."""
    return x.reshape(x.shape[0], 1, x.shape[1], x.shape[2])


# ---- Embedding ------------------------------------------------------------------------------
class Embedding(Layer):
    """Keras's Embedding: integer indices (batch, ...) -> rows of `embeddings` (input_dim,
    output_dim). Indices of another dtype are cast to int32 first, as Keras does; every index is
    checked against input_dim before any memory is read. Backward adds each output row's
    gradient into its index's row only (ops.embedding_backward): the rows used last step are
    zeroed, not the whole table, and the optimizer then updates the whole table as Keras's
    dense update does (Adam's moments decay on unused rows too).

    Args:
        input_dim: Size of the vocabulary: indices are in `[0, input_dim)`.
        output_dim: Size of each embedding vector.
        embeddings_initializer: Initializer for the embedding table (a name such as `"zeros"`, a
            config dict, or an initializer object). Defaults to `"uniform"`.
        embeddings_regularizer: Regularizer for the embedding table: its penalty is added to the
            model's loss. `None`: none.
        embeddings_constraint: Constraint applied to the embedding table after each optimizer step.
            `None`: none.
        mask_zero: Whether index 0 is padding: it is masked out for the layers after (then
            `input_dim` should count it). Defaults to `False`.
        weights: Initial embedding table, a list holding one `(input_dim, output_dim)` array, or
            `None`. Defaults to `None`.
        lora_rank: Only `None` (LoRA is not supported).
        lora_alpha: Accepted for Keras compatibility (LoRA is not supported). Defaults to `None`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...

    Example:

    ```python
    model = fastnn.Sequential([fastnn.Input(shape=(100,), dtype="int32"),
                               fastnn.layers.Embedding(20000, 128),
                               fastnn.layers.LSTM(64),
                               fastnn.layers.Dense(1, activation="sigmoid")])
    ```
    """
    _KERAS_DEFAULTS = {"quantization_config": None, "activity_regularizer": None,
                       "lora_alpha": None, "input_length": None}
    integer_input = True        # a Sequential starting with it batches its data as integers

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform",
                 embeddings_regularizer=None, embeddings_constraint=None, mask_zero=False,
                 weights=None, lora_rank=None, lora_alpha=None, **kwargs):
        self.input_dim = _positive_int(input_dim, "input_dim", "Embedding")
        self.output_dim = _positive_int(output_dim, "output_dim", "Embedding")
        if kwargs.pop("input_length", None) is not None:       # as Keras 3 does
            warnings.warn("Argument `input_length` is deprecated. Just remove it.", stacklevel=2)
        super().__init__(**kwargs)
        if lora_rank is not None:
            raise ValueError(f"{self.name}: lora_rank={lora_rank!r}: LoRA is not supported by "
                             "fastnn yet")
        self.embeddings_initializer = initializers.get(embeddings_initializer)
        _weight_options(self, embeddings_regularizer=embeddings_regularizer,
                        embeddings_constraint=embeddings_constraint)
        self.mask_zero = bool(mask_zero)
        self.supports_masking = self.mask_source = self.mask_zero
        self._dirty = None      # (the gradient array, the rows backward wrote into it last)
        if weights is not None:
            self.build(None)
            self.set_weights(weights if isinstance(weights, list) and len(weights) == 1
                             else [weights])

    def build(self, input_shape):
        if not self.built:
            self.add_weight(name="embeddings", shape=(self.input_dim, self.output_dim),
                            initializer=self.embeddings_initializer)
        super().build(input_shape if input_shape is not None else (None, None))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def forward(self, x, training=False):
        ids = x if x.dtype in (np.int32, np.int64) else x.astype(np.int32)   # as Keras casts
        out = self._buffer("y", (ids.size, self.output_dim))
        get_ops().embedding_forward(self._vars["embeddings"], ids, out,
                                    where=f"Embedding {self.name!r}")
        st = self._state()
        st._ids, st._x = ids, x
        return out.reshape(tuple(x.shape) + (self.output_dim,))

    def backward(self, dy, need_dx=True):
        st = self._state()
        grad = self.grads.get("embeddings")
        if grad is not None:
            # Zero only the rows written last time, when this layer alone wrote into this
            # gradient since: not after a regularizer's dense gradient, nor when the layer is
            # called several times in a pass (the caller then adds the calls' gradients up,
            # into rows this layer did not write last): then all of it.
            dirty = self._dirty
            shared = len(getattr(self._thread, "states", ())) > 1
            clear = dirty[1] if dirty is not None and dirty[0] is grad and not shared and \
                "embeddings" not in self.__dict__.get("_penalties", {}) else None
            get_ops().embedding_backward(st._ids, dy.reshape(-1, self.output_dim), grad,
                                         clear, where=f"Embedding {self.name!r}")
            self._dirty = (grad, st._ids.reshape(-1).copy())
        if not need_dx:
            return None
        return get_ops().xp.zeros(st._x.shape, np.float32)      # indices have no gradient

    def compute_mask(self, inputs, previous_mask=None):
        if not self.mask_zero:
            return None
        return inputs != 0

    def get_config(self):
        return {**super().get_config(), "input_dim": self.input_dim,
                "output_dim": self.output_dim,
                "embeddings_initializer": initializers.serialize(self.embeddings_initializer),
                **_weight_options_config(self), "activity_regularizer": None,
                "mask_zero": self.mask_zero}


# ---- Masking --------------------------------------------------------------------------------
class Masking(Layer):
    """Keras's Masking: a timestep whose features all equal mask_value is masked (its mask
    False, its output zeros).

    Args:
        mask_value: Value of the features that marks a step as padding. Defaults to `0.0`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    supports_masking = mask_source = True

    def __init__(self, mask_value=0.0, **kwargs):
        super().__init__(**kwargs)
        try:
            self.mask_value = float(mask_value)
        except (TypeError, ValueError):
            raise TypeError(f"{self.name}: mask_value must be a number, got "
                            f"{mask_value!r}") from None

    def compute_mask(self, inputs, previous_mask=None):
        return (inputs != np.float32(self.mask_value)).any(axis=-1)

    def forward(self, x, training=False):
        keep = self.compute_mask(x)[..., None]
        st = self._state()
        st._keep = keep
        return get_ops().xp.where(keep, x, np.float32(0)).astype(np.float32, copy=False)

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        return get_ops().xp.where(self._state()._keep, dy, np.float32(0)).astype(
            np.float32, copy=False)

    def get_config(self):
        return {**super().get_config(), "mask_value": self.mask_value}


# ---- 1-D convolution and pooling --------------------------------------------------------------
class Conv1D(Conv2D):
    """Keras's Conv1D, kernel (kernel_size, in/groups, filters): Conv2D's kernels with height 1
    (its kernel (1, k, in/groups, filters) is this kernel's memory as it lies). padding="causal"
    pads (kernel_size - 1) * dilation_rate steps on the left only.

    Args:
        filters: Number of output channels (convolution filters).
        kernel_size: Size of the convolution window: an int or a tuple of one int per spatial axis.
        strides: Step of the window along each spatial axis: an int or a tuple. Defaults to `1`.
        padding: `"valid"`, `"same"` or `"causal"` (zero padding on the left only, so that output t
            sees inputs up to t). Defaults to `"valid"`.
        data_format: Only `"channels_last"` (inputs `(batch, ..., channels)`) or `None` (the same)
            is supported.
        dilation_rate: Spacing between the kernel's taps: an int or a tuple. Cannot be combined with
            strides > 1. Defaults to `1`.
        groups: Number of groups the input channels are split into, each convolved with `filters /
            groups` filters of its own; `filters` and the input channels must be divisible by it.
            Defaults to `1`.
        activation: Activation applied to the output: a name such as `"relu"`, a callable, or `None`
            for none (linear). Defaults to `None`.
        use_bias: Whether the layer adds a bias vector. Defaults to `True`.
        kernel_initializer: Initializer for the kernel weights (a name such as `"zeros"`, a config
            dict, or an initializer object). Defaults to `"glorot_uniform"`.
        bias_initializer: Initializer for the bias vector (a name such as `"zeros"`, a config dict,
            or an initializer object). Defaults to `"zeros"`.
        kernel_regularizer: Regularizer for the kernel: its penalty is added to the model's loss.
            `None`: none.
        bias_regularizer: Regularizer for the bias: its penalty is added to the model's loss.
            `None`: none.
        activity_regularizer: Regularizer applied to the layer's output; its penalty, divided by the
            batch size, is added to the loss. `None`: none.
        kernel_constraint: Constraint applied to the kernel after each optimizer step. `None`: none.
        bias_constraint: Constraint applied to the bias after each optimizer step. `None`: none.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None,
                 dilation_rate=1, groups=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, **kwargs):
        name = kwargs.get("name") or "Conv1D"
        k = _single(kernel_size, "kernel_size", name)
        s = _single(strides, "strides", name)
        d = _single(dilation_rate, "dilation_rate", name)
        causal = isinstance(padding, str) and padding.lower() == "causal"
        super().__init__(filters, (1, k), (1, s), "valid" if causal else padding, data_format,
                         (1, d), groups, activation, use_bias, kernel_initializer,
                         bias_initializer, kernel_regularizer, bias_regularizer,
                         activity_regularizer, kernel_constraint, bias_constraint, **kwargs)
        if causal:
            self.padding = "causal"

    def _kernel_and_grad(self):
        grad = self.grads.get("kernel")
        shape = (1,) + self.kernel.shape
        return self.kernel.reshape(shape), None if grad is None else grad.reshape(shape)

    def build(self, input_shape):
        _rank3(self, input_shape)
        self.window_at(_as_image_shape(input_shape))    # checks
        if input_shape[2] is None:
            raise ValueError(f"Layer {self.name!r} needs a known number of channels, got "
                             f"{tuple(input_shape)}")
        if input_shape[2] % self.groups:
            raise ValueError(f"{self.name}: The number of input channels must be evenly "
                             f"divisible by the number of groups. Received groups="
                             f"{self.groups}, but the input has {input_shape[2]} channels "
                             f"(full input shape is {tuple(input_shape)}).")
        self.add_weight(name="kernel", shape=(self.kernel_size[1],
                                              input_shape[2] // self.groups, self.filters),
                        initializer=self.kernel_initializer)
        if self.use_bias:
            self.add_weight(name="bias", shape=(self.filters,),
                            initializer=self.bias_initializer)
        Layer.build(self, input_shape)

    def window_at(self, x_shape):
        if self.padding != "causal":
            return super().window_at(x_shape)
        steps, k, s, d = x_shape[2], self.kernel_size[1], self.strides[1], \
            self.dilation_rate[1]
        out = None if steps is None else (steps - 1) // s + 1
        return (1, k, 1, s, 0, (k - 1) * d, 1, out) + ((1, d) if d != 1 else ())

    def compute_output_shape(self, input_shape):
        _rank3(self, input_shape)
        if input_shape[1] is None:
            return (input_shape[0], None, self.filters)
        return (input_shape[0], self.window_at(_as_image_shape(input_shape))[7], self.filters)

    def forward(self, x, training=False):
        y = super().forward(_as_image(x), training)
        return y.reshape(y.shape[0], y.shape[2], y.shape[3])

    def backward(self, dy, need_dx=True, preactivation=False):
        dx = super().backward(dy, need_dx, preactivation)
        return dx.reshape(dx.shape[0], dx.shape[2], dx.shape[3]) if need_dx else dx

    def get_config(self):
        config = super().get_config()
        config.update(kernel_size=(self.kernel_size[1],), strides=(self.strides[1],),
                      padding=self.padding, dilation_rate=(self.dilation_rate[1],))
        return config


def _as_image_shape(shape):
    return (shape[0], 1, shape[1], shape[2])


class _Pooling1D:
    """MaxPooling1D / AveragePooling1D: the 2-D pooling with a (1, pool_size) window."""

    def __init__(self, pool_size=2, strides=None, padding="valid", data_format=None,
                 **kwargs):
        name = kwargs.get("name") or type(self).__name__
        p = _single(pool_size, "pool_size", name)
        s = p if strides is None else _single(strides, "strides", name)
        super().__init__((1, p), (1, s), padding, data_format, **kwargs)

    def build(self, input_shape):
        _rank3(self, input_shape)
        super().build(_as_image_shape(input_shape))
        self._build_shape = tuple(input_shape)

    def compute_output_shape(self, input_shape):
        _rank3(self, input_shape)
        out = super().compute_output_shape(_as_image_shape(input_shape))
        return (out[0], out[2], out[3])

    def forward(self, x, training=False):
        y = super().forward(_as_image(x), training)
        return y.reshape(y.shape[0], y.shape[2], y.shape[3])

    def backward(self, dy, need_dx=True):
        dx = super().backward(dy.reshape(dy.shape[0], 1, dy.shape[1], dy.shape[2]), need_dx)
        return None if dx is None else dx.reshape(dx.shape[0], dx.shape[2], dx.shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=(self.pool_size[1],), strides=(self.strides[1],))
        return config


class MaxPooling1D(_Pooling1D, MaxPooling2D):
    """Max pooling over steps: the maximum of each window of `pool_size` steps, inputs `(batch,
    steps, channels)`.

    Args:
        pool_size: Length of the window. Defaults to `2`.
        strides: Step of the window; `None`: `pool_size`.
        padding: `"valid"` or `"same"`. Defaults to `"valid"`.
        data_format: Only `"channels_last"` (inputs `(batch, steps, channels)`) or `None` is
            supported. Defaults to `None`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    pass


class AveragePooling1D(_Pooling1D, AveragePooling2D):
    """Average pooling over steps: the mean of each window of `pool_size` steps, inputs `(batch,
    steps, channels)`.

    Args:
        pool_size: Length of the window. Defaults to `2`.
        strides: Step of the window; `None`: `pool_size`.
        padding: `"valid"` or `"same"`. Defaults to `"valid"`.
        data_format: Only `"channels_last"` (inputs `(batch, steps, channels)`) or `None` is
            supported. Defaults to `None`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    pass


class _GlobalPooling1D(Layer):
    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{self.name}: only data_format='channels_last' is supported")
        self.keepdims = bool(keepdims)

    def build(self, input_shape):
        _rank3(self, input_shape)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        _rank3(self, input_shape)
        return (input_shape[0], 1, input_shape[2]) if self.keepdims else \
            (input_shape[0], input_shape[2])

    def _finish(self, y):
        return y.reshape(y.shape[0], 1, -1) if self.keepdims else y.reshape(y.shape[0], -1)

    def get_config(self):
        return {**super().get_config(), "data_format": "channels_last",
                "keepdims": self.keepdims}


class GlobalAveragePooling1D(_GlobalPooling1D):
    """The mean over the steps; with a mask, over the kept steps only (Keras's formula:
    sum(x * mask) / sum(mask), so a row with every step masked gives nan, as in Keras).

    Args:
        data_format: Only `"channels_last"` (inputs `(batch, steps, channels)`) or `None` is
            supported. Defaults to `None`.
        keepdims: Whether to keep the steps axis with size 1. Defaults to `False`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    supports_masking = True

    def forward(self, x, training=False, mask=None):
        st = self._state()
        st._x_shape, xp = x.shape, get_ops().xp
        if mask is None:
            st._weights = None
            return self._finish(x.mean(axis=1, dtype=np.float32))
        if mask.shape != x.shape[:2]:
            raise ValueError(f"{self.name}: mask shape {tuple(mask.shape)} does not match the "
                             f"input's (batch, steps) {tuple(x.shape[:2])}")
        keep = mask.astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            st._weights = (keep / keep.sum(axis=1, keepdims=True))[..., None]   # (n, T, 1)
        total = xp.where(mask[..., None], x, np.float32(0)).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return self._finish((total / keep.sum(axis=1)[:, None]).astype(np.float32))

    def backward(self, dy, need_dx=True):
        st = self._state()
        if not need_dx:
            return None
        dy = dy.reshape(st._x_shape[0], 1, st._x_shape[2])
        if st._weights is None:
            dx = get_ops().xp.broadcast_to(dy / np.float32(st._x_shape[1]), st._x_shape)
        else:
            dx = dy * st._weights
        return get_ops().xp.ascontiguousarray(dx, dtype=np.float32)

    def compute_mask(self, inputs, previous_mask=None):
        return None


class GlobalMaxPooling1D(_GlobalPooling1D):
    """The maximum over the steps: GlobalMaxPooling2D's kernel on a 1-step-high image. As in
    Keras 3, it does not take a mask (a mask reaching it is dropped, with Keras's warning).

    Args:
        data_format: Only `"channels_last"` (inputs `(batch, steps, channels)`) or `None` is
            supported. Defaults to `None`.
        keepdims: Whether to keep the steps axis with size 1. Defaults to `False`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """

    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(data_format, keepdims, **kwargs)
        self._pool = GlobalMaxPooling2D(keepdims=True, name=self.name + "_2d")

    def _sublayers(self):
        return []       # _pool: this layer's kernel, not a layer of the model

    def forward(self, x, training=False):
        pool = self._pool
        self._lend_thread_state(pool)   # its state lives in this layer's per-thread slot
        return self._finish(pool.forward(_as_image(x), training))

    def backward(self, dy, need_dx=True):
        pool = self._pool
        self._lend_thread_state(pool)
        dx = pool.backward(dy.reshape(dy.shape[0], 1, 1, -1), need_dx)
        return None if dx is None else dx.reshape(dx.shape[0], dx.shape[2], dx.shape[3])


# ---- TimeDistributed --------------------------------------------------------------------------
class TimeDistributed(Layer):
    """Keras's TimeDistributed(layer): the inner layer on every step, run once on the
    (batch * steps, ...) rows. Its weights are the inner layer's (shared, one set for every
    step). The inner layer, where its forward takes a mask, gets each step's part of the mask
    (batch, steps, ...) as Keras gives it; the mask passes on unchanged, as in Keras.

    Args:
        layer: The layer applied to each step (input `(batch, steps, ...)`).
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    supports_masking = True
    weights_subpath = "/layer"      # where Keras's .keras files keep the inner layer's weights

    def __init__(self, layer, **kwargs):
        if not isinstance(layer, Layer):
            raise ValueError("Please initialize `TimeDistributed` layer with a "
                             f"`keras.layers.Layer` instance. Received: {layer}")
        super().__init__(**kwargs)
        self.layer = layer
        # one set of weights: the inner layer's, seen through this layer
        self._share_weights_of(layer)

    def _inner_shape(self, input_shape):
        if len(input_shape) < 3:
            raise ValueError("`TimeDistributed` Layer should be passed an `input_shape` with "
                             f"at least 3 dimensions, received: {tuple(input_shape)}")
        return (None,) + tuple(input_shape[2:])

    def build(self, input_shape):
        self._build_inner(self.layer, self._inner_shape(input_shape))
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        inner = self.layer.compute_output_shape(self._inner_shape(input_shape))
        return (input_shape[0], input_shape[1]) + tuple(inner[1:])

    def forward(self, x, training=False, mask=None):
        n, t = x.shape[:2]
        self._lend_thread_state(self.layer)
        rows = x.reshape((n * t,) + tuple(x.shape[2:]))
        if mask is not None and _takes_mask(type(self.layer).forward):
            # Keras gives step i's inner call mask[:, i]: here all steps' rows at once
            if mask.ndim < 2 or tuple(mask.shape[:2]) != (n, t):
                raise ValueError(f"The `mask` passed to the `TimeDistributed` layer {self.name!r} "
                                 f"has a shape {tuple(mask.shape)} that is incompatible with "
                                 f"the input shape {tuple(x.shape)}: its first two dimensions "
                                 f"(batch size and timesteps) must be ({n}, {t})")
            y = self.layer.forward(rows, training,
                                   mask=mask.reshape((n * t,) + tuple(mask.shape[2:])))
        else:
            y = self.layer.forward(rows, training)
        return y.reshape((n, t) + tuple(y.shape[1:]))

    def backward(self, dy, need_dx=True, **fused):
        n, t = dy.shape[:2]
        self._lend_thread_state(self.layer)
        dx = self.layer.backward(dy.reshape((n * t,) + tuple(dy.shape[2:])), need_dx, **fused)
        return None if dx is None else dx.reshape((n, t) + tuple(dx.shape[1:]))

    @property
    def act_id(self):
        return getattr(self.layer, "act_id", None)

    def _sublayers(self):
        return []       # its weights are its own (the inner layer's, shared)

    def get_config(self):
        return {**super().get_config(), "layer": self._inner_entry(self.layer)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        entry = config.pop("layer")
        inner = get_class(entry["class_name"], entry.get("registered_name")).from_config(
            entry["config"])
        return super().from_config({**config, "layer": inner})


# fastnn's own layers, exported from fastnn.layers: get_class finds them by name (loading).
_CLASSES.update({c.__name__: c for c in (
    Embedding, Masking, Conv1D, MaxPooling1D, AveragePooling1D, GlobalAveragePooling1D,
    GlobalMaxPooling1D, TimeDistributed)})
