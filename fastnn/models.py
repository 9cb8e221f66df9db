"""Sequential: Keras's model API (compile / fit / evaluate / predict / summary / save) over a
stack of fastnn layers.

All trainable weights live in one flat float32 buffer (the parameter arena) and their gradients
in another; layers hold views into them. The optimizer therefore updates the whole model in one
fused kernel call per step, and a steady-state step allocates nothing large: batches are gathered
into reused buffers and layers keep their activations in per-shape workspaces."""
import functools
import math
import threading

import numpy as np

from . import activations
from . import callbacks as callbacks_module
from . import losses as losses_module
from . import metrics as metrics_module
from . import optimizers as optimizers_module
from .backend import get_ops, unique_name
from .autodiff import Tensor, gradients, no_grad, tape, value_of
from .graph import KerasTensor, Node, flatten, is_symbolic, nodes_between
from .layers import (ConvPool, Dense, InputLayer, Layer, _accepts_training, _snake_case,
                     _thread_state, forward_pass)
from .stack import DenseRunner, NonFiniteInput


# A Dense kernel of at least this many weights takes a plain SGD step inside its weight-gradient
# GEMM (Optimizer.plain_step_lr): no gradient written, no second pass of the optimizer over a
# kernel that no longer fits in cache (10816x200: GEMM + step 0.93 -> 0.49 ms). The fused C
# stack uses the same threshold (csrc/fastnn.h), so both paths give identical weights.
try:
    from ._core import IN_PLACE_MIN_WEIGHTS
except ImportError:     # no compiled core (the NumPy / CuPy backends still run)
    IN_PLACE_MIN_WEIGHTS = 1 << 16


def _resolve_verbose(verbose):
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}")
    return int(verbose)


def _check_batch_size(batch_size, arg="batch_size"):
    if batch_size is None:
        return 32
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"{arg} must be a positive int, got {batch_size!r}")
    return int(batch_size)


def _training(method):
    """fit / train_on_batch: one at a time per model. A second thread's call raises at once
    (waiting would train on weights the first one is still changing)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        if not self._train_lock.acquire(blocking=False):
            raise RuntimeError(f"Model {self.name!r} is already being trained (fit or "
                               f"train_on_batch) by another call: a model trains in one "
                               f"thread at a time")
        try:
            with self._metrics_lock:
                return method(self, *args, **kwargs)
        finally:
            self._train_lock.release()
    return run


def _metered(method):
    """evaluate / test_on_batch accumulate into the model's compiled metrics: calls from
    several threads take turns (predict and __call__ run in parallel)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._metrics_lock:
            return method(self, *args, **kwargs)
    return run


def _width(shape):
    """The number of values of one sample of a (batch, ...) shape."""
    return int(np.prod(shape[1:], dtype=np.int64))


def _check_steps(steps, arg):
    """None (the whole data) or a positive int: a run of zero steps would report numbers
    computed from nothing."""
    if steps is None:
        return None
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"{arg} must be None or a positive int, got {steps!r}")
    return int(steps)


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _shape_str(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + \
        ("," if len(shape) == 1 else "") + ")"


class Model:
    """Keras's Model. Subclass it with layers made in __init__ and a call(self, inputs,
    training=None) written with them and fastnn.ops: the call runs on the autodiff tape
    (fastnn's layers are one node each, with their fused backward). Sequential is the chain
    of layers built on the same trainer. Model(inputs, outputs) makes a functional model
    (Functional) from symbolic tensors."""

    def __new__(cls, *args, **kwargs):
        if cls is Model and (args or "inputs" in kwargs or "outputs" in kwargs):
            return object.__new__(Functional)
        return object.__new__(cls)

    def __init__(self, *args, name=None, trainable=True, **kwargs):
        if kwargs:
            raise TypeError(f"Model: unexpected keyword argument(s) {sorted(kwargs)}")
        if not self._subclassed:
            raise TypeError("fastnn.Model is used by subclassing it: define call(self, "
                            "inputs, training=None) (or use Sequential)")
        self._setup(name or unique_name(_snake_case(type(self).__name__)), trainable)

    @property
    def _subclassed(self):
        return type(self).call is not Model.call

    def call(self, inputs, training=None):
        raise NotImplementedError(f"Model {self.name!r} ({type(self).__name__}) defines no "
                                  "call(self, inputs)")

    def __setattr__(self, name, value):
        # Layers a subclass assigns become its layers (in order), as Keras tracks them.
        if not name.startswith("_") and type(self).call is not Model.call:
            items = value if isinstance(value, (list, tuple)) else [value]
            tracked = self.__dict__.setdefault("_tracked", [])
            for item in items:
                if isinstance(item, Layer) and item not in tracked:
                    tracked.append(item)
        object.__setattr__(self, name, value)

    def _setup(self, name, trainable):
        self.name = name
        self.trainable = trainable
        self._layers = []
        self._input_shape = None        # the model's input shape without the batch axis
        self._input_name = None
        self._output_shape = None
        self.built = False
        self.optimizer = None
        self.loss = None
        self.compiled = False
        self._metric_specs = []
        self._metrics = None
        self.stop_training = False
        self.history = None
        self._arena_key = None
        self._params = self._grads = None
        self._thread = threading.local()         # per-thread batch buffers (_batch_buffers)
        self._train_lock = threading.Lock()      # one fit / train_on_batch at a time
        self._metrics_lock = threading.RLock()   # the compiled metrics: one run at a time
        self._build_lock = threading.RLock()

    # ---- structure -------------------------------------------------------------------------
    @property
    def layers(self):
        """The model's layers: a Sequential's in order; a subclass's as it assigned them."""
        return list(self.__dict__.get("_tracked", [])) if self._subclassed else \
            list(self._layers)

    def _all_layers(self):
        """A subclass's layers and the layers inside them (and inside models used as layers),
        each once: whose weights train."""
        found = []
        for layer in self.__dict__.get("_tracked", []):
            for item in [layer] + layer._sublayers():
                if isinstance(item, Layer) and item not in found:
                    found.append(item)
        return found

    def _sublayers(self):
        """The layers of this model used as a layer of another."""
        return self._all_layers() if self._subclassed else list(self._layers)

    @property
    def trainable(self):
        return self.__dict__.get("_trainable", True)

    @trainable.setter
    def trainable(self, value):
        """Freezing a model freezes its layers, as in Keras (transfer learning: a base model
        frozen inside a new one)."""
        self.__dict__["_trainable"] = bool(value)
        for layer in self.__dict__.get("_layers", []) + self.__dict__.get("_tracked", []):
            if isinstance(layer, (Layer, Model)) and layer is not self:
                layer.trainable = bool(value)

    # ---- a model used as a layer of another ---------------------------------------------------
    @property
    def _inbound_nodes(self):
        return self.__dict__.setdefault("_nodes_as_layer", [])

    def _call_as_layer(self, x, training):
        """This model inside another's graph: symbolic tensors make a node; a tensor (the
        outer model running on its tape) runs this model's layers there, one node each."""
        if is_symbolic(x):
            if isinstance(x, (list, tuple)) or len(getattr(self, "outputs", [None])) > 1:
                raise NotImplementedError(f"Model {self.name!r}: a model with several inputs "
                                          "or outputs used as a layer is not supported yet")
            if not self.built:
                self.build(x.shape)
            elif tuple(x.shape[1:]) != tuple(self._input_shape):
                raise ValueError(f"Model {self.name!r} expects input shape "
                                 f"{_shape_str(self.input_shape)}, got {_shape_str(x.shape)}")
            node = Node(self, [x], [self._output_shape])
            node.several = False
            self._inbound_nodes.append(node)
            return node.outputs[0]
        if self._subclassed:
            kwargs = {"training": training} if _accepts_training(type(self).call) else {}
            return self.call(x, **kwargs)
        for layer in self._layers:
            x = layer(x, training=training)
        return x

    def build(self, input_shape=None):
        with self._build_lock:      # concurrent first calls build once, in turn
            self._build(input_shape)

    def _build(self, input_shape):
        if input_shape is not None:
            self._input_shape = tuple(input_shape)[1:]
        if self._input_shape is None:
            raise ValueError(f"Model {self.name!r} cannot be built: give the first layer "
                             "input_shape=..., start with Input(shape=...), or call "
                             "build((None, ...)) or fit() first")
        if self._subclassed:    # built by calling it once, as Keras does
            self._layers = self._all_layers()
            out = self._run_call(get_ops().alloc((1,) + tuple(self._input_shape)), False)
            self._layers = self._all_layers()       # call() may have built inner layers
            self._output_shape = (None,) + tuple(out.shape[1:])
            self._steps = []
            self.built = True
            self._pack_parameters()
            return
        shape = (None,) + tuple(self._input_shape)
        for layer in self._layers:
            if layer.built and layer.input_shape[1:] != shape[1:]:
                raise ValueError(f"Layer {layer.name!r} was built for input shape "
                                 f"{layer.input_shape}, but receives {shape}")
            layer._maybe_build(shape)
            shape = layer.compute_output_shape(shape)
        self._output_shape = shape
        self.built = True
        self._steps = self._plan_steps()
        self._pack_parameters()

    def _plan_steps(self):
        """(first, last, runner) per step of the forward pass: a layer, or a Conv2D and the
        MaxPooling2D after it run as one (layers.ConvPool)."""
        steps, layers, i = [], self._layers, 0
        while i < len(layers):
            if i + 1 < len(layers) and ConvPool.fuses(layers[i], layers[i + 1]):
                steps.append((i, i + 1, ConvPool(layers[i], layers[i + 1])))
                i += 2
            else:
                steps.append((i, i, layers[i]))
                i += 1
        return steps

    def _pack_parameters(self):
        """Move every trainable weight into one flat buffer (and gradients into another)."""
        entries = [(layer, name) for layer in self._layers if layer.trainable
                   for name in layer._trainable_names]
        # The arrays themselves: a layer shared with another model lives in whichever model
        # packed it last, and this model then packs it again (its values carried over).
        key = tuple((id(layer), name, id(layer._vars[name])) for layer, name in entries)
        if key == self._arena_key:
            return
        ops = get_ops()
        sizes = [layer._vars[name].size for layer, name in entries]
        params, grads = ops.empty((sum(sizes),)), ops.alloc((sum(sizes),))
        start, self._spans = 0, {}
        for (layer, name), size in zip(entries, sizes):
            shape = layer._vars[name].shape
            layer._rebind(name, params[start:start + size].reshape(shape),
                          grads[start:start + size].reshape(shape))
            self._spans[id(layer), name] = (start, start + size)
            start += size
        self._params, self._grads, self._sizes = params, grads, sizes
        self._arena_key = key
        self._first_trainable = next((i for i, layer in enumerate(self._layers)
                                      if layer.trainable and layer._trainable_names),
                                     len(self._layers))

    def _ensure_built(self, x_shape):
        if not self.built:
            self.build((None,) + tuple(x_shape[1:]))

    @property
    def input_shape(self):
        return None if self._input_shape is None else (None,) + tuple(self._input_shape)

    @property
    def output_shape(self):
        if not self.built:
            raise AttributeError(f"Model {self.name!r} has not been built yet")
        return self._output_shape

    def get_layer(self, name=None, index=None):
        if index is not None:
            if name is not None:
                raise ValueError("Provide only a layer name or a layer index, not both")
            if not -len(self._layers) <= index < len(self._layers):
                raise ValueError(f"Was asked to retrieve layer at index {index} but model "
                                 f"only has {len(self._layers)} layers")
            return self._layers[index]
        for layer in self._layers:
            if layer.name == name:
                return layer
        raise ValueError(f"No such layer: {name}. Existing layers are: "
                         f"{[layer.name for layer in self._layers]}")

    # ---- weights ---------------------------------------------------------------------------
    @property
    def weights(self):
        return [w for layer in self._layers for w in layer.weights]

    @property
    def trainable_weights(self):
        if not self.trainable:
            return []
        return [w for layer in self._layers for w in layer.trainable_weights]

    @property
    def non_trainable_weights(self):
        if not self.trainable:
            return self.weights
        return [w for layer in self._layers for w in layer.non_trainable_weights]

    def get_weights(self):
        return [w for layer in self._layers for w in layer.get_weights()]

    def set_weights(self, weights):
        weights = list(weights)
        expected = sum(len(layer.weights) for layer in self._layers)
        if len(weights) != expected:
            raise ValueError(f"Model {self.name!r} expects {expected} weight arrays, "
                             f"but set_weights received {len(weights)}")
        # Check every shape before writing anything, so a bad list leaves the model unchanged.
        start = 0
        for layer in self._layers:
            n = len(layer.weights)
            for name, old, new in zip(layer.weight_names, layer.weights, weights[start:start + n]):
                if np.shape(new) != old.shape:
                    raise ValueError(f"Layer {layer.name!r} weight {name!r}: expected shape "
                                     f"{old.shape}, received {np.shape(new)}")
            start += n
        start = 0
        for layer in self._layers:
            n = len(layer.weights)
            layer.set_weights(weights[start:start + n])
            start += n

    def count_params(self):
        if not self.built:
            raise ValueError(f"You tried to call count_params on model {self.name!r}, but the "
                             "model has not been built yet")
        return int(sum(layer.count_params() for layer in self._layers))

    # ---- compile ---------------------------------------------------------------------------
    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None,
                weighted_metrics=None, run_eagerly=False, steps_per_execution=1,
                jit_compile="auto", auto_scale_loss=True):
        serialized = isinstance(loss, dict) and "class_name" in loss     # from a saved file
        if isinstance(loss, list) or (isinstance(loss, dict) and not serialized) or \
                isinstance(metrics, dict):
            raise ValueError("Sequential models have one output: pass a single loss and a list "
                             "of metrics")
        self.optimizer = optimizers_module.get(optimizer)
        self.loss = None if loss is None else losses_module.get(loss)
        if metrics is not None and not isinstance(metrics, (list, tuple)):
            metrics = [metrics]
        if weighted_metrics:
            raise ValueError("weighted_metrics are not supported by fastnn yet")
        self._metric_specs = list(metrics or [])
        for spec in self._metric_specs:   # fail now on unknown names, not after an epoch
            if not (isinstance(spec, str) and spec.lower() in ("accuracy", "acc")):
                metrics_module.get(spec)
        self._metrics = None
        self.compiled = True
        self.stop_training = False

    def _check_compiled(self, method):
        if not self.compiled or self.loss is None:
            raise ValueError(f"You must call compile() with a loss before using {method}() "
                             f"on model {self.name!r}")

    def _build_metrics(self, y_shape):
        if self._metrics is None:
            self._metrics = [metrics_module.get(spec, y_shape, self._output_shape)
                             for spec in self._metric_specs]
            self._loss_tracker = metrics_module.Mean("loss")
        return self._metrics

    def _trackers(self):
        """What a run reports, in Keras's order: the loss, then (several outputs) each
        output's loss, then the metrics."""
        if self._metrics is None:
            return []
        return [self._loss_tracker] + self.__dict__.get("_output_loss_trackers", []) + \
            list(self._metrics)

    @property
    def metrics_names(self):
        return [m.name for m in self._trackers()] or ["loss"]

    def reset_metrics(self):
        for m in self._trackers():
            m.reset_state()

    def _logs(self, prefix="", wait=True):
        """The running loss and metrics: floats, or with wait=False values that float() reads
        later (0-d device arrays on a GPU), for a progress bar that redraws on a clock."""
        read = (lambda m: m.result()) if wait else (lambda m: m.peek())
        return dict(sorted((prefix + m.name, read(m)) for m in self._trackers()))

    def _results(self, logs):
        """evaluate()'s list (or the loss alone), in Keras's order."""
        names = [m.name for m in self._trackers()]
        return logs["loss"] if len(names) == 1 else [logs[name] for name in names]

    def _prepare_targets(self, y, n, arg, y_arg):
        """(targets as the loss reads them, y's shape for the metrics)."""
        if np.shape(y)[:1] != (n,):
            raise ValueError(f"{arg} and {y_arg} must have the same number of samples, got "
                             f"{n} and {np.shape(y)[0] if np.ndim(y) else 'a scalar'}")
        return self.loss.prepare_targets(y, self._output_shape), np.shape(y)

    @property
    def _batch_buffers(self):
        """This thread's batch buffers, reused from step to step."""
        return _thread_state(self._thread).workspace

    # ---- data ------------------------------------------------------------------------------
    def _prepare_x(self, x, arg="x"):
        if x is None:
            raise ValueError(f"{arg} is required")
        x = np.asarray(x)
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{arg} must be a real numeric array (bool, int or float), got "
                            f"dtype {x.dtype}")
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"{arg} is empty (shape {x.shape}): need at least one sample")
        if 0 in x.shape[1:]:
            raise ValueError(f"{arg} has shape {x.shape}: every axis after the batch axis must "
                             f"be at least 1 long")
        if not self._layers and not self._subclassed:
            raise ValueError(f"Model {self.name!r} has no layers: add some before calling it")
        if not self.built and self._input_shape is None:
            self.build((None,) + x.shape[1:])
        expected = (None,) + tuple(self._input_shape)
        if x.shape[1:] != expected[1:]:
            first = self._layers[0].name if self._layers else self.name
            hint = ""
            if x.ndim == len(expected) - 1 and x.shape[1:] == expected[1:-1] and \
                    expected[-1] == 1:
                hint = f" (add the channel axis: {arg}.reshape({arg}.shape + (1,)))"
            raise ValueError(f"{arg} has shape {x.shape}, but model {self.name!r} (first layer "
                             f"{first!r}) expects input shape {_shape_str(expected)}{hint}")
        if not self.built:
            self.build()
        return x

    @staticmethod
    def _check_finite(x, arg="x"):
        """The general path's NaN/inf check, one scan of the whole array before its first batch
        (min/max propagate NaN). The fused path checks each batch as it gathers it instead.
        Arrays on a device were checked on the host before they crossed (_to_device)."""
        if isinstance(x, np.ndarray) and x.dtype.kind == "f":
            lo, hi = x.min(), x.max()
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise ValueError(f"{arg} contains NaN or inf values")
            if x.dtype.itemsize > 4 and max(-lo, hi) > _FLOAT32_MAX:
                raise ValueError(f"{arg} holds values beyond float32's range (largest "
                                 f"magnitude {max(-lo, hi):.4g} > {_FLOAT32_MAX:.4g}): they "
                                 f"would become inf")

    def _to_device(self, x, y=None, w=None, arg="x"):
        """Check x, then put x, y, w where the backend computes. On a device backend (GPU) each
        array crosses once, whole, as the dtype of its batches, when together they fit in half
        the free device memory; otherwise they stay on the host and each batch crosses once."""
        self._check_finite(x, arg)
        ops = get_ops()
        arrays = [a for a in (x, y, w) if isinstance(a, np.ndarray)]
        if not ops.is_device or not arrays:
            return x, y, w
        batch_dtype = {id(a): np.int32 if a.dtype == np.int32 else np.float32 for a in arrays}
        size = sum(a.size * 4 for a in arrays)
        free = ops.free_memory()
        if free is not None and size > free // 2:
            return x, y, w
        return tuple(None if a is None else
                     ops.asarray(a, batch_dtype[id(a)]) if isinstance(a, np.ndarray) else a
                     for a in (x, y, w))

    def _prepare_xy(self, x, y, sample_weight=None, class_weight=None, arg="x"):
        x = self._prepare_x(x, arg)
        if y is None:
            raise ValueError("y is required to train or evaluate")
        y_arg = "y" if arg == "x" else arg.replace("x", "y")
        targets, y_shape = self._prepare_targets(y, x.shape[0], arg, y_arg)
        weights = None
        if sample_weight is not None:
            weights = np.ascontiguousarray(sample_weight, dtype=np.float32).reshape(-1)
            if weights.shape != (x.shape[0],) or not np.isfinite(weights).all():
                raise ValueError(f"sample_weight must hold one finite weight per sample, shape "
                                 f"({x.shape[0]},), got {np.shape(sample_weight)}")
        if class_weight is not None:
            _check_class_weight(class_weight)
            if self.__dict__.get("_output_losses") is not None:
                raise ValueError("class_weight is not supported for models with several "
                                 "outputs (as in Keras); pass sample_weight")
            labels = targets.reshape(len(targets), -1)
            labels = labels[:, 0] if labels.shape[1] == 1 and targets.dtype != np.int32 \
                else (labels.argmax(axis=1) if targets.dtype != np.int32 else labels[:, 0])
            cw = np.array([class_weight.get(int(c), 1.0) for c in labels], np.float32)
            weights = cw if weights is None else weights * cw
        return x, targets, weights, y_shape

    def _buffer(self, key, shape, dtype=np.float32):
        buf = self._batch_buffers.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._batch_buffers[key] = np.empty(shape, dtype)
        return buf

    def _gather(self, key, source, idx):
        """Rows idx (a slice or an index array) of source as a C-contiguous float32 array
        (int32 for sparse labels), in a buffer reused from step to step, where the backend
        computes. Data on the device is gathered there (idx then is a device array)."""
        ops = get_ops()
        if ops.is_device and isinstance(source, ops.xp.ndarray):
            if isinstance(idx, slice):
                return source[idx]      # whole rows of a C-contiguous array: contiguous
            key = "device_" + key       # never a host buffer of the same name
            buf = self._batch_buffers.get(key)
            shape = (len(idx),) + source.shape[1:]
            if buf is None or buf.shape != shape or buf.dtype != source.dtype:
                buf = self._batch_buffers[key] = ops.empty(shape, source.dtype)
            return ops.xp.take(source, idx, axis=0, out=buf)
        batch = self._gather_host(key, source, idx)
        return ops.asarray(batch, batch.dtype) if ops.is_device else batch

    def _gather_host(self, key, source, idx):
        dtype = np.int32 if source.dtype == np.int32 else np.float32
        if isinstance(idx, slice):
            rows = source[idx]
            if rows.dtype == dtype and rows.flags.c_contiguous:
                return rows
            buf = self._buffer(key, rows.shape, dtype)
            np.copyto(buf, rows, casting="unsafe")
            return buf
        shape = (len(idx),) + source.shape[1:]
        buf = self._buffer(key, shape, dtype)
        # mode="clip": with the default "raise", numpy gathers into a temporary and copies it
        # into `out`, a batch-sized allocation per step. The indices are a permutation of
        # range(n), so clipping never changes them.
        if source.dtype == dtype and source.flags.c_contiguous:
            return np.take(source, idx, axis=0, out=buf, mode="clip")
        raw = self._buffer(key + "_raw", shape, source.dtype)
        np.take(source, idx, axis=0, out=raw, mode="clip")
        np.copyto(buf, raw, casting="unsafe")
        return buf

    # ---- steps -----------------------------------------------------------------------------
    def _forward(self, x, training):
        if self._subclassed:
            return self._run_call(x, training)
        for _, _, step in self._steps:
            x = step.forward(x, training)
        return x

    def _run_call(self, x, training):
        """A subclass's call() on a batch: when training, on the tape (its gradients start
        from zero; _backward reads the output this thread recorded)."""
        state = _thread_state(self._thread)
        state.output = None
        kwargs = {"training": bool(training)} if _accepts_training(type(self).call) else {}
        preactivation = self._output_layer() \
            if training and getattr(self, "_preactivation_grad", False) else None
        with forward_pass(self._layers, bool(training), preactivation):
            if training:
                self._grads[...] = 0
                with tape():
                    out = state.output = self.call(Tensor(x), **kwargs)
            else:
                with no_grad():
                    out = self.call(Tensor(x), **kwargs)
        ops = get_ops()
        if isinstance(out, (list, tuple)):      # several outputs: side by side, row by row
            y = ops.xp.concatenate([ops.asarray(value_of(o), np.float32).reshape(
                len(value_of(o)), -1) for o in out], axis=1)
        else:
            y = value_of(out)
        if not isinstance(y, ops.xp.ndarray) or y.dtype != np.float32 or \
                not y.flags.c_contiguous:
            y = ops.xp.ascontiguousarray(ops.asarray(y, np.float32))
        if y.ndim == 0 or y.shape[0] != x.shape[0]:
            raise ValueError(f"Model {self.name!r}: call() returned shape {y.shape} for a batch "
                             f"of {x.shape[0]}; the batch axis must be kept")
        return y

    def _output_layer(self):
        """The layer whose activation makes the output (None when unknown: a subclass)."""
        return self._layers[-1] if self._layers and not self._subclassed else None

    def _loss_mode(self):
        return self.loss.mode(getattr(self._output_layer(), "act_id", None))

    def _gradient_is_preactivation(self):
        """Whether the loss's gradient is already that of the output layer's pre-activation:
        softmax/sigmoid fused with their cross-entropy, or logits from a linear layer (from
        a non-linear one, backward still takes the activation's derivative, as Keras does)."""
        act = getattr(self._output_layer(), "act_id", None)
        return self._mode == "fused" or (self._mode == "logits" and act == activations.LINEAR)

    def _backward(self, grad, mode, kernel_step=None):
        """kernel_step: the plain SGD step's learning rate, which the layers in
        _in_place_layers then take in place."""
        if self._subclassed:
            state = _thread_state(self._thread)
            out, state.output = state.output, None
            outs, grads = (out, grad) if isinstance(out, (list, tuple)) else ([out], [grad])
            pairs = [(o, g.reshape(o.shape)) for o, g in zip(outs, grads)
                     if g is not None and isinstance(o, Tensor) and o.requires_grad]
            if pairs:
                gradients([o for o, _ in pairs], seed=[g for _, g in pairs])
            return
        stop, last = self._first_trainable, len(self._layers) - 1
        dy = grad
        for first, end, step in reversed(self._steps):
            if end < stop:
                break
            kwargs = {"kernel_step": kernel_step} \
                if kernel_step and step in self._in_place_layers else {}
            if end == last and self._preactivation_grad:
                kwargs["preactivation"] = True
            dy = step.backward(dy, need_dx=first > stop, **kwargs)

    def _loss_and_grad(self, out, y, w, want_grad):
        out2 = out.reshape(-1, out.shape[-1])
        n = out2.shape[0]
        scale = 1.0 / n if self.loss.reduction == "sum_over_batch_size" else 1.0
        grad = None
        if want_grad:
            grad = self._batch_buffers.get("grad")
            if grad is None or grad.shape != out2.shape:
                grad = self._batch_buffers["grad"] = get_ops().empty(out2.shape)
        y2 = y.reshape(n, -1) if y.dtype != np.int32 else y.reshape(-1)
        total = self.loss.value_and_grad(out2, y2, w, scale, grad, self._mode)
        return _scaled(total, scale_back(self.loss, n)), \
            None if grad is None else grad.reshape(out.shape), n

    def _track(self, total, n, y, out):
        """Add a batch's loss (as the tracker counts it) and, given y, its metrics."""
        self._loss_tracker.update_with_sum(total, n)
        if y is None:       # a skipped step (non-finite loss)
            return
        for m in self._metrics:
            m.update_state(y, out)

    def _train_step(self, x, y, w):
        out = self._forward(x, training=True)
        total, grad, n = self._loss_and_grad(out, y, w, True)
        # A non-finite loss skips the update. A device backend returns the total as a device
        # scalar and is not checked here: reading it would stall every step on the GPU.
        if isinstance(total, float) and not math.isfinite(total):
            self._track(total, n, None, None)
            return out
        lr = self.optimizer.plain_step_lr() if self._in_place_layers else None
        self._backward(grad, self._mode, lr)
        self.optimizer.apply(self._params, self._grads, self._apply_ranges if lr else None)
        self._track(total, n, y, out)
        return out

    def _test_step(self, x, y, w):
        out = self._forward(x, training=False)
        total, _, n = self._loss_and_grad(out, y, w, False)
        self._track(total, n, y, out)

    def _prepare_training(self):
        self._pack_parameters()
        self.optimizer.build(self._sizes)
        self._mode = self._loss_mode()
        self._preactivation_grad = self._gradient_is_preactivation()
        self._plan_in_place()

    def _training_state(self, rng):
        """A copy of all that a fit changes before its first epoch ends: weights, optimizer
        state, the random generator (restored if the fused path finds a bad input)."""
        return (self._params.copy(), self.optimizer.snapshot(), rng,
                rng.bit_generator.state)

    def _restore_training_state(self, state):
        params, optimizer, rng, rng_state = state
        self._params[...] = params
        self.optimizer.restore(optimizer)
        rng.bit_generator.state = rng_state

    def _plan_in_place(self):
        """The Dense layers whose kernel takes a plain SGD step in place, and the spans of the
        parameter buffer the optimizer then updates itself: all the rest."""
        layers = [layer for layer in self._layers if type(layer) is Dense and layer.trainable
                  and layer.kernel.size >= IN_PLACE_MIN_WEIGHTS and not self._subclassed]
        ranges, at = [], 0
        for start, stop in sorted(self._spans[id(layer), "kernel"] for layer in layers):
            if start > at:
                ranges.append((at, start))
            at = stop
        if at < self._params.size:
            ranges.append((at, self._params.size))
        self._in_place_layers, self._apply_ranges = frozenset(layers), ranges

    # ---- fit / evaluate / predict ------------------------------------------------------------
    @_training
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
            validation_batch_size=None, validation_freq=1):
        self._check_compiled("fit")
        verbose = _resolve_verbose(verbose)
        batch_size = _check_batch_size(batch_size)
        val_batch_size = _check_batch_size(validation_batch_size or batch_size,
                                           "validation_batch_size")
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or \
                epochs < 0:
            raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
        if isinstance(initial_epoch, bool) or \
                not isinstance(initial_epoch, (int, np.integer)) or initial_epoch < 0:
            raise ValueError(f"initial_epoch must be a non-negative int, got {initial_epoch!r}")
        steps_per_epoch = _check_steps(steps_per_epoch, "steps_per_epoch")
        validation_steps = _check_steps(validation_steps, "validation_steps")
        if not 0 <= validation_split < 1:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
        if shuffle not in (True, False, "batch"):
            raise ValueError(f"shuffle must be True, False or 'batch', got {shuffle!r}")
        x, y, w, y_shape = self._prepare_xy(x, y, sample_weight, class_weight)
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or \
                    len(validation_data) not in (2, 3):
                raise ValueError("validation_data must be a tuple (x_val, y_val) or "
                                 "(x_val, y_val, sample_weight_val)")
            vw = validation_data[2] if len(validation_data) == 3 else None
            val = self._prepare_xy(validation_data[0], validation_data[1], vw, arg="x_val")[:3]
        elif validation_split:
            n = x.shape[0]
            split_at = int(math.floor(n * (1.0 - validation_split)))
            if split_at == 0 or split_at == n:
                raise ValueError(f"validation_split={validation_split} leaves an empty "
                                 f"{'training' if split_at == 0 else 'validation'} set for "
                                 f"{n} samples")
            val = (x[split_at:], y[split_at:], None if w is None else w[split_at:])
            x, y = x[:split_at], y[:split_at]
            w = None if w is None else w[:split_at]
            if self.__dict__.get("_output_losses") is None:    # one output
                _warn_single_class(val[1])
        n = x.shape[0]
        batch_size = min(batch_size, n)       # one batch of everything: the same steps
        steps = math.ceil(n / batch_size)
        if steps_per_epoch is not None:
            steps = min(steps, steps_per_epoch)
        self._build_metrics(y_shape)
        self._prepare_training()
        cbs = callbacks_module.CallbackList(callbacks, add_history=True,
                                            add_progbar=verbose != 0, model=self,
                                            verbose=verbose, epochs=epochs, steps=steps)
        from .utils import get_rng
        rng = get_rng()
        batch_logs = cbs.wants("on_train_batch_end")     # build per-step logs only if read
        runner = DenseRunner.for_model(self, training=True)
        if runner is not None and not runner.accepts(x):
            runner = None
        per_step = cbs.per_batch("train")
        ops = get_ops()
        # Every input is checked before anything changes. The fused path checks each batch as
        # it gathers it; when its first epoch reads every row and no callback sees single
        # batches, a bad value is found there and the fit rolls back to this state instead
        # (a separate scan would cost as much as a small model's epoch).
        rollback = None
        if runner is None:
            x, y, w = self._to_device(x, y, w)
        elif per_step or steps * batch_size < n:
            self._check_finite(x)
        else:
            rollback = self._training_state(rng)
        if val is not None:
            val = self._to_device(*val, arg="x_val")
        on_device = ops.is_device and isinstance(x, ops.xp.ndarray)
        self.stop_training = False
        cbs.on_train_begin()
        logs = {}
        for epoch in range(initial_epoch, epochs):
            self.reset_metrics()
            cbs.on_epoch_begin(epoch)
            order = None
            if shuffle is True:
                order = rng.permutation(n)
            elif shuffle == "batch":
                order = np.arange(n)
                for s in range(0, n, batch_size):
                    rng.shuffle(order[s:s + batch_size])
            if runner is not None:
                try:
                    runner.run_epoch(x, y, w, order, steps, batch_size, True, cbs, per_step,
                                     self._logs)
                except NonFiniteInput as exc:
                    if rollback is None:
                        raise
                    self._restore_training_state(rollback)
                    raise NonFiniteInput(f"{exc}; the model is unchanged") from None
                rollback = None     # every row has been read
                steps_run = 0       # the loop below is the general path
            else:
                steps_run = steps
                if order is not None and on_device:
                    order = ops.asarray(order, np.int64)      # crosses once per epoch
            for step in range(steps_run):
                cbs.on_train_batch_begin(step)
                start, stop = step * batch_size, min(n, (step + 1) * batch_size)
                idx = slice(start, stop) if order is None else order[start:stop]
                self._train_step(self._gather("x", x, idx), self._gather("y", y, idx),
                                 None if w is None else self._gather("w", w, idx))
                cbs.on_train_batch_end(step, self._logs(wait=per_step) if batch_logs else None)
                if self.stop_training:
                    break
            logs = self._logs()
            if val is not None and _should_validate(epoch, validation_freq):
                val_logs = self._evaluate_arrays(*val, val_batch_size, validation_steps, None,
                                                 arg="x_val")
                logs.update({"val_" + k: v for k, v in val_logs.items()})
                logs = dict(sorted(logs.items()))
            cbs.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        cbs.on_train_end(logs)
        return cbs.history

    def _evaluate_arrays(self, x, y, w, batch_size, steps, cbs, arg="x"):
        """Run the test loop and return its logs. Training metrics are saved and restored so a
        validation pass inside fit does not disturb them."""
        saved = [(m.total, m.count) for m in self._trackers()]
        self.reset_metrics()
        n = x.shape[0]
        batch_size = min(batch_size, n)
        total_steps = math.ceil(n / batch_size)
        if steps is not None:
            total_steps = min(total_steps, int(steps))
        batch_logs = cbs is not None and cbs.wants("on_test_batch_end")
        runner = DenseRunner.for_model(self, training=False)
        if runner is not None and runner.accepts(x):
            runner.run_epoch(x, y, w, None, total_steps, batch_size, False, cbs,
                             cbs is not None and cbs.per_batch("test"), self._logs, arg)
            total_steps = 0         # the loop below is the general path
        else:
            x, y, w = self._to_device(x, y, w, arg)
        wait = cbs is not None and cbs.per_batch("test")
        for step in range(total_steps):
            if cbs:
                cbs.on_test_batch_begin(step)
            sl = slice(step * batch_size, min(n, (step + 1) * batch_size))
            self._test_step(self._gather("x", x, sl), self._gather("y", y, sl),
                            None if w is None else self._gather("w", w, sl))
            if batch_logs:
                cbs.on_test_batch_end(step, self._logs(wait=wait))
        logs = self._logs()
        for m, (total, count) in zip(self._trackers(), saved):
            m.total, m.count = total, count
        return logs

    @_metered
    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 steps=None, callbacks=None, return_dict=False):
        self._check_compiled("evaluate")
        verbose = _resolve_verbose(verbose)
        batch_size = _check_batch_size(batch_size)
        steps = _check_steps(steps, "steps")
        x, y, w, y_shape = self._prepare_xy(x, y, sample_weight)
        batch_size = min(batch_size, x.shape[0])
        self._build_metrics(y_shape)
        self._pack_parameters()
        self._mode = self._loss_mode()
        n_steps = math.ceil(x.shape[0] / batch_size)
        if steps is not None:
            n_steps = min(n_steps, steps)
        cbs = callbacks_module.CallbackList(callbacks, add_progbar=verbose != 0, model=self,
                                            verbose=verbose, epochs=1, steps=n_steps)
        cbs.on_test_begin()
        logs = self._evaluate_arrays(x, y, w, batch_size, steps, cbs)
        cbs.on_test_end(logs)
        if return_dict:
            return logs
        return self._results(logs)

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        verbose = _resolve_verbose(verbose)
        batch_size = _check_batch_size(batch_size)
        steps = _check_steps(steps, "steps")
        x = self._prepare_x(x)
        n = x.shape[0]
        batch_size = min(batch_size, n)
        n_steps = math.ceil(n / batch_size)
        if steps is not None:
            n_steps = min(n_steps, steps)
            n = min(n, n_steps * batch_size)
        out = np.empty((n,) + tuple(self._output_shape[1:]), np.float32)
        cbs = callbacks_module.CallbackList(callbacks, add_progbar=verbose != 0, model=self,
                                            verbose=verbose, epochs=1, steps=n_steps)
        cbs.on_predict_begin()
        ops = get_ops()
        runner = DenseRunner.for_model(self, training=None)
        if runner is not None and runner.accepts(x):
            runner.predict(x[:n], out, batch_size, cbs, cbs.per_batch("predict"))
            n_steps = 0             # the loop below is the general path
        else:
            x = self._to_device(x[:n])[0]
        # On a device the outputs collect there and cross once, at the end, unless a callback
        # reads every batch's outputs (it gets them as NumPy arrays).
        device_out = ops.empty(out.shape) if ops.is_device and n_steps and \
            isinstance(x, ops.xp.ndarray) and not cbs.per_batch("predict") else out
        for step in range(n_steps):
            cbs.on_predict_batch_begin(step)
            sl = slice(step * batch_size, min(n, (step + 1) * batch_size))
            y = self._forward(self._gather("x", x, sl), training=False)
            if device_out is out:
                out[sl] = ops.to_numpy(y)
            else:
                device_out[sl] = y
            cbs.on_predict_batch_end(step, {"outputs": device_out[sl]})
        if device_out is not out:
            out[...] = ops.to_numpy(device_out)
        cbs.on_predict_end()
        return out

    def __call__(self, x, training=False):
        if is_symbolic(x) or isinstance(x, Tensor):
            return self._call_as_layer(x, training)
        x = self._prepare_x(x)
        runner = None if training else DenseRunner.for_model(self, training=None)
        if runner is not None and runner.accepts(x):
            return runner.predict(x, np.empty((x.shape[0],) + tuple(self._output_shape[1:]),
                                              np.float32), x.shape[0])
        x = self._gather("call", self._to_device(x)[0], slice(None))
        return np.array(get_ops().to_numpy(self._forward(x, training=bool(training))))

    @_training
    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None,
                       return_dict=False):
        self._check_compiled("train_on_batch")
        x, y, w, y_shape = self._prepare_xy(x, y, sample_weight, class_weight)
        self._build_metrics(y_shape)
        self._prepare_training()
        x, y, w = self._to_device(x, y, w)
        self._train_step(self._gather("x", x, slice(None)), self._gather("y", y, slice(None)),
                         None if w is None else self._gather("w", w, slice(None)))
        return self._batch_result(return_dict)

    @_metered
    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        self._check_compiled("test_on_batch")
        x, y, w, y_shape = self._prepare_xy(x, y, sample_weight)
        self._build_metrics(y_shape)
        self._mode = self._loss_mode()
        self.reset_metrics()
        x, y, w = self._to_device(x, y, w)
        self._test_step(self._gather("x", x, slice(None)), self._gather("y", y, slice(None)),
                        None if w is None else self._gather("w", w, slice(None)))
        return self._batch_result(return_dict)

    def predict_on_batch(self, x):
        return self(x)

    def _batch_result(self, return_dict):
        logs = self._logs()
        if return_dict:
            return logs
        return self._results(logs)

    # ---- summary, config, saving -------------------------------------------------------------
    def summary(self, line_length=None, positions=None, print_fn=None, expand_nested=False,
                show_trainable=False, layer_range=None):
        from .summary import print_summary
        rows, connected = self._summary_rows()
        if layer_range is not None:
            names = [layer.name for layer in self.layers]
            if len(layer_range) != 2 or any(n not in names for n in layer_range):
                raise ValueError(f"layer_range must be two layer names of {names}, got "
                                 f"{layer_range!r}")
            rows = rows[names.index(layer_range[0]):names.index(layer_range[1]) + 1]
        trainable = sum(w.size for w in self.trainable_weights)
        non_trainable = sum(w.size for w in self.non_trainable_weights)
        optimizer_params = self.optimizer.count_params() if self.optimizer is not None and \
            self.optimizer.built else None
        print_summary(self.name, rows, trainable, non_trainable, optimizer_params,
                      line_length=line_length, positions=positions, print_fn=print_fn,
                      show_trainable=show_trainable, connected=connected)

    def _summary_rows(self):
        """summary()'s rows, and whether they have a "Connected to" column."""
        rows, shape = [], self.input_shape
        if self._subclassed:    # no chain to follow: shapes unknown, as Keras prints them
            shape = None
        for layer in self.layers:
            label = f"{layer.name} ({type(layer).__name__})"
            flag = layer.trainable if layer.weights else None
            if self._subclassed:
                rows.append((label, "?", layer.count_params() if layer.built else
                             "0 (unbuilt)", flag))
                continue
            if layer.built and shape is not None:
                shape = layer.compute_output_shape(shape)
                rows.append((label, _shape_str(shape), layer.count_params(), flag))
            else:
                rows.append((label, "?", "0 (unbuilt)", flag))
        return rows, False

    def get_config(self):
        if self._subclassed:
            raise NotImplementedError(
                f"Model {self.name!r} ({type(self).__name__}) is a subclass without "
                "get_config(): it cannot be saved as a whole model; save_weights() and "
                "load_weights() keep its weights")
        layers = []
        if self._input_shape is not None:
            layers.append({"module": "keras.layers", "class_name": "InputLayer",
                           "config": {"batch_shape": [None, *self._input_shape],
                                      "dtype": "float32", "sparse": False,
                                      "name": self._input_name or "input_layer"},
                           "registered_name": None})
        for layer in self._layers:
            entry = {"module": "keras.layers", "class_name": type(layer).__name__,
                     "config": layer.get_config(), "registered_name": None}
            if layer.built:
                entry["build_config"] = {"input_shape": list(layer.input_shape)}
            layers.append(entry)
        config = {"name": self.name, "trainable": self.trainable, "dtype": "float32",
                  "layers": layers}
        if self._input_shape is not None:
            config["build_input_shape"] = [None, *self._input_shape]
        return config

    @classmethod
    def from_config(cls, config):
        from .layers import get_class
        from .saving import check_sequential_config
        check_sequential_config(config)     # a malformed entry raises naming its key
        model = cls(name=config.get("name"), trainable=config.get("trainable", True))
        for entry in config["layers"]:
            layer_cls = get_class(entry["class_name"])
            model.add(layer_cls.from_config(entry["config"]))
        if not model.built and config.get("build_input_shape"):
            model.build(tuple(config["build_input_shape"]))
        return model

    def to_json(self, **kwargs):
        import json
        return json.dumps({"module": "keras", "class_name": "Sequential",
                           "config": self.get_config(), "registered_name": None}, **kwargs)

    def save(self, filepath, overwrite=True, **kwargs):
        from .saving import save_model
        save_model(self, filepath, overwrite=overwrite, **kwargs)

    def save_weights(self, filepath, overwrite=True):
        from .saving import save_weights
        save_weights(self, filepath, overwrite=overwrite)

    def load_weights(self, filepath):
        from .saving import load_weights
        load_weights(self, filepath)


class Functional(Model):
    """Model(inputs, outputs): the layers called between fastnn.Input tensors and the
    outputs, run in graph order on the autodiff tape (shared layers and fan-out included)."""

    def __init__(self, inputs, outputs, name=None, trainable=True):
        self._setup(name or unique_name("functional"), trainable)
        ins, outs = flatten(inputs), flatten(outputs)
        for arg, tensors in (("inputs", ins), ("outputs", outs)):
            bad = [t for t in tensors if not isinstance(t, KerasTensor)]
            if bad or not tensors:
                raise TypeError(f"Model({arg}=...) takes symbolic tensors (fastnn.Input and "
                                f"layer calls on it), got {bad[0] if bad else tensors!r}")
        for t in ins:
            if not isinstance(t.node.layer, InputLayer):
                raise ValueError(f"Model inputs must come from fastnn.Input(); {t.name} is "
                                 f"the output of layer {t.node.layer.name!r}")
        self.inputs, self.outputs = ins, outs
        nodes, self._tracked = nodes_between(ins, outs)
        self._nodes = [node for node in nodes if node.inputs]     # not the inputs' own
        self._chain = self._as_chain()
        # a chain trains as a Sequential does (fused paths included)
        self._layers = list(self._chain) if self._chain is not None else self._all_layers()
        # Several inputs (outputs) reach the trainer side by side in one array of rows, each
        # flattened: the data path (shuffling, batches, checks, devices) stays the one path.
        self._input_widths = [_width(t.shape) for t in ins]
        self._output_widths = [_width(t.shape) for t in outs]
        self.output_names = [t.node.layer.name for t in outs]
        self.input_names = [t.name for t in ins]
        self.build((None,) + (tuple(ins[0].shape[1:]) if len(ins) == 1 else
                              (sum(self._input_widths),)))

    def _as_chain(self):
        """The layers in order when the graph is a chain (one input, one output, each node
        reading the previous one's output, each layer called once), else None."""
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            return None
        previous, chain = self.inputs[0], []
        for node in self._nodes:
            if node.several or node.inputs[0] is not previous or node.layer in chain or \
                    len(node.layer._inbound_nodes) != 1 or not isinstance(node.layer, Layer):
                return None
            chain.append(node.layer)
            previous = node.outputs[0]
        return chain if previous is self.outputs[0] else None

    @property
    def _subclassed(self):
        return self.__dict__.get("_chain") is None

    @property
    def layers(self):
        return list(self._tracked)

    def _output_layer(self):
        if self._chain is not None:
            return super()._output_layer()
        layer = self.outputs[0].node.layer if len(self.outputs) == 1 else None
        # fastnn's own layer, called once: its backward can start from the pre-activation
        if not isinstance(layer, Layer) or layer._user_call or len(layer._inbound_nodes) != 1:
            return None
        return layer

    def _summary_rows(self):
        """Keras's functional table: each layer's last output shape and, unless the graph is
        a chain, what each of its calls reads (layer[node][tensor])."""
        connected, rows = self._chain is None, []
        for layer in self.layers:
            nodes = layer._inbound_nodes
            row = (f"{layer.name} ({type(layer).__name__})",
                   _shape_str(nodes[-1].outputs[0].shape) if nodes else "?",
                   layer.count_params() if layer.built else "0 (unbuilt)",
                   layer.trainable if layer.weights else None)
            if connected:
                links = [f"{t.node.layer.name}[{t.node.layer._inbound_nodes.index(t.node)}]"
                         f"[{t.index}]" for node in nodes for t in node.inputs]
                row += (", ".join(links) or "-",)
            rows.append(row)
        return rows, connected

    def get_config(self):
        raise NotImplementedError(f"Model {self.name!r}: saving functional models (their "
                                  "config) is not implemented yet; save_weights() and "
                                  "load_weights() keep their weights")

    @property
    def input(self):
        return self.inputs[0] if len(self.inputs) == 1 else self.inputs

    @property
    def output(self):
        return self.outputs[0] if len(self.outputs) == 1 else self.outputs

    def call(self, inputs, training=None):
        if len(self.inputs) > 1 and not isinstance(inputs, (list, tuple)):
            inputs = self._split_inputs(inputs)         # the trainer's side-by-side batch
        given = inputs if len(self.inputs) > 1 else [inputs]
        if len(given) != len(self.inputs):
            raise ValueError(f"Model {self.name!r} takes {len(self.inputs)} inputs, got "
                             f"{len(given)}")
        values = {id(tensor): value for tensor, value in zip(self.inputs, given)}
        for node in self._nodes:
            args = [values[id(t)] for t in node.inputs]
            values[id(node.outputs[0])] = node.layer(args if node.several else args[0],
                                                     training=training)
        outs = [values[id(t)] for t in self.outputs]
        return outs[0] if len(outs) == 1 else outs

    # ---- several inputs and outputs ---------------------------------------------------------
    def _split_inputs(self, packed):
        """A side-by-side batch of the inputs (a tensor or an array) as one tensor each."""
        xp, values, at = get_ops().xp, value_of(packed), 0
        parts = []
        for tensor, width in zip(self.inputs, self._input_widths):
            part = xp.ascontiguousarray(values[:, at:at + width])
            parts.append(Tensor(part.reshape((len(part),) + tuple(tensor.shape[1:]))))
            at += width
        return parts

    def _split_outputs(self, packed):
        """The model's side-by-side output rows as one array per output."""
        xp, at, parts = get_ops().xp, 0, []
        for tensor, width in zip(self.outputs, self._output_widths):
            part = xp.ascontiguousarray(packed[:, at:at + width])
            parts.append(part.reshape((len(part),) + tuple(tensor.shape[1:])))
            at += width
        return parts

    def _structure(self, data, names, what, arg):
        """data given for several inputs/outputs (a list, tuple or dict by name) as a list."""
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(names))
            if unknown:
                raise ValueError(f"{arg}: unknown {what} {unknown}; model {self.name!r} has "
                                 f"{names}")
            return [data.get(name) for name in names]
        if len(names) == 1:
            return [data]
        if not isinstance(data, (list, tuple)) or len(data) != len(names):
            raise ValueError(f"{arg}: model {self.name!r} has {len(names)} {what}s {names}: "
                             f"pass a list of {len(names)} arrays or a dict by name")
        return list(data)

    def _prepare_x(self, x, arg="x"):
        if len(self.inputs) == 1 or x is None:
            return super()._prepare_x(x, arg)
        arrays = []
        for tensor, value in zip(self.inputs, self._structure(x, self.input_names, "input", arg)):
            name = f"{arg}[{tensor.name!r}]"
            if value is None:
                raise ValueError(f"{name} is required")
            value = np.asarray(value)
            if value.dtype.kind not in "biuf":
                raise TypeError(f"{name} must be a real numeric array, got dtype {value.dtype}")
            if value.ndim == 0 or value.shape[1:] != tuple(tensor.shape[1:]):
                raise ValueError(f"{name} has shape {value.shape}, but input {tensor.name!r} "
                                 f"expects {_shape_str(tensor.shape)}")
            if arrays and len(value) != len(arrays[0]):
                raise ValueError(f"{arg}: the inputs have different numbers of samples: "
                                 f"{[len(a) for a in arrays] + [len(value)]}")
            self._check_finite(value, name)
            arrays.append(value.reshape(len(value), -1))
        return super()._prepare_x(np.concatenate(arrays, axis=1).astype(np.float32), arg)

    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None,
                **kwargs):
        if len(self.outputs) == 1:
            self._output_losses = None
            return super().compile(optimizer, loss, loss_weights, metrics, **kwargs)
        names = self.output_names
        serialized = isinstance(loss, dict) and "class_name" in loss
        losses = [loss] * len(names) if loss is None or serialized or \
            not isinstance(loss, (list, tuple, dict)) else \
            self._structure(loss, names, "output", "loss")
        weights = [1.0] * len(names) if loss_weights is None else \
            self._structure(loss_weights, names, "output", "loss_weights")
        if metrics is None:
            specs = [[] for _ in names]
        elif isinstance(metrics, dict):
            specs = self._structure(metrics, names, "output", "metrics")
        elif isinstance(metrics, (list, tuple)) and len(metrics) == len(names) and \
                all(m is None or isinstance(m, (list, tuple)) for m in metrics):
            specs = list(metrics)
        else:
            raise ValueError(f"Invalid metrics for model {self.name!r}: with several outputs, "
                             f"pass a dict by output name or a list (one list per output) "
                             f"matching {names}")
        specs = [[] if m is None else list(m) if isinstance(m, (list, tuple)) else [m]
                 for m in specs]
        super().compile(optimizer, next((x for x in losses if x is not None), None), None,
                        [spec for group in specs for spec in group], **kwargs)
        self._output_losses = [None if x is None else losses_module.get(x) for x in losses]
        self._loss_weights = [float(w if w is not None else 1.0) for w in weights]
        self._output_metric_specs = specs

    def _build_metrics(self, y_shape):
        if self.__dict__.get("_output_losses") is None:
            return super()._build_metrics(y_shape)
        if self._metrics is None:
            self._loss_tracker = metrics_module.Mean("loss")
            self._output_loss_trackers = [metrics_module.Mean(f"{name}_loss")
                                          for name, loss in zip(self.output_names,
                                                                self._output_losses) if loss]
            self._metrics, self._metric_outputs = [], []
            for i, (name, specs) in enumerate(zip(self.output_names,
                                                  self._output_metric_specs)):
                for spec in specs:
                    metric = metrics_module.get(spec, y_shape[i], self.outputs[i].shape)
                    metric.name = f"{name}_{metric.name}"
                    self._metrics.append(metric)
                    self._metric_outputs.append(i)
        return self._metrics

    def _prepare_targets(self, y, n, arg, y_arg):
        if self.__dict__.get("_output_losses") is None:
            return super()._prepare_targets(y, n, arg, y_arg)
        columns, shapes = [], []
        self._target_widths = []
        for i, (name, value) in enumerate(zip(self.output_names, self._structure(
                y, self.output_names, "output", y_arg))):
            loss = self._output_losses[i]
            if value is None or loss is None:
                if loss is not None:
                    raise ValueError(f"{y_arg}[{name!r}] is required: output {name!r} has a "
                                     "loss")
                columns.append(np.zeros((n, 0), np.float32))
                shapes.append(None)
                self._target_widths.append(0)
                continue
            if np.shape(value)[:1] != (n,):
                raise ValueError(f"{arg} and {y_arg}[{name!r}] must have the same number of "
                                 f"samples, got {n} and {np.shape(value)[:1]}")
            shapes.append(np.shape(value))
            targets = loss.prepare_targets(value, self.outputs[i].shape)
            columns.append(targets.reshape(n, -1).astype(np.float32))
            self._target_widths.append(columns[-1].shape[1])
        return np.ascontiguousarray(np.concatenate(columns, axis=1)), shapes

    def _split_targets(self, y):
        at, parts = 0, []
        for i, width in enumerate(self._target_widths):
            part = y[:, at:at + width]
            at += width
            loss = self._output_losses[i]
            if loss is None:
                parts.append(None)
            elif type(loss) is losses_module.SparseCategoricalCrossentropy:
                parts.append(get_ops().xp.ascontiguousarray(part.reshape(-1)).astype(np.int32))
            else:
                parts.append(get_ops().xp.ascontiguousarray(part).reshape(
                    (len(part),) + tuple(self.outputs[i].shape[1:-1]) + (-1,)))
        return parts

    def _loss_and_grad(self, out, y, w, want_grad):
        if self.__dict__.get("_output_losses") is None:
            return super()._loss_and_grad(out, y, w, want_grad)
        n, total, grads, totals = out.shape[0], 0.0, [], []
        for i, (o, t) in enumerate(zip(self._split_outputs(out), self._split_targets(y))):
            loss, weight = self._output_losses[i], self._loss_weights[i]
            if loss is None:
                grads.append(None)
                continue
            o2 = o.reshape(-1, o.shape[-1])
            rows = o2.shape[0]
            if w is not None and rows != n:
                raise ValueError(f"sample_weight: output {self.output_names[i]!r} has "
                                 f"{rows // n} values per sample; weights apply to one")
            scale = (1.0 / rows if loss.reduction == "sum_over_batch_size" else 1.0) * weight
            grad = get_ops().empty(o2.shape) if want_grad else None
            t2 = t.reshape(-1) if t.dtype == np.int32 else t.reshape(rows, -1)
            value = _scaled(loss.value_and_grad(o2, t2, w, scale, grad, loss.mode(None)),
                            scale_back(loss, rows))
            totals.append(value)
            total = total + weight * value
            grads.append(None if grad is None else grad.reshape(o.shape))
        self._batch_output_totals = totals      # for _track, in this (locked) run
        return total, grads, n

    def _track(self, total, n, y, out):
        if self.__dict__.get("_output_losses") is None:
            return super()._track(total, n, y, out)
        self._loss_tracker.update_with_sum(total, n)
        for tracker, value in zip(self._output_loss_trackers, self._batch_output_totals):
            tracker.update_with_sum(value, n)
        if y is None:
            return
        outs, targets = self._split_outputs(out), self._split_targets(y)
        for metric, i in zip(self._metrics, self._metric_outputs):
            metric.update_state(targets[i], outs[i])

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        out = super().predict(x, batch_size, verbose, steps, callbacks)
        return out if len(self.outputs) == 1 else self._split_outputs(out)

    def __call__(self, x, training=False):
        if len(self.inputs) == 1 and len(self.outputs) == 1 or is_symbolic(x) or \
                isinstance(x, Tensor):
            return super().__call__(x, training)
        given = x if len(self.inputs) > 1 else [x]
        if not isinstance(given, (list, tuple)) or len(given) != len(self.inputs):
            raise ValueError(f"Model {self.name!r} takes a list of {len(self.inputs)} arrays")
        ops = get_ops()
        arrays = []
        for tensor, value in zip(self.inputs, given):
            value = np.asarray(value)
            if value.dtype.kind not in "biuf":
                raise TypeError(f"{tensor.name} must be a real numeric array, got dtype "
                                f"{value.dtype}")
            if value.shape[1:] != tuple(tensor.shape[1:]):
                raise ValueError(f"Input {tensor.name!r} expects shape {tensor.shape}, got "
                                 f"{value.shape}")
            self._check_finite(value, tensor.name)
            arrays.append(Tensor(ops.asarray(value, np.float32)))
        with forward_pass(self._layers, bool(training)), no_grad():
            out = self.call(arrays if len(arrays) > 1 else arrays[0], training=bool(training))
        outs = out if isinstance(out, list) else [out]
        results = [np.array(ops.to_numpy(value_of(o))) for o in outs]
        return results if isinstance(out, list) else results[0]


class Sequential(Model):
    """A chain of layers: Keras's Sequential."""

    def __init__(self, layers=None, trainable=True, name=None):
        self._setup(name or unique_name("sequential"), trainable)
        for layer in layers or []:
            self.add(layer)

    def add(self, layer):
        if isinstance(layer, KerasTensor) and isinstance(layer.node.layer, InputLayer):
            layer = layer.node.layer            # Sequential([fastnn.Input(shape), ...])
        if isinstance(layer, InputLayer):
            if self._layers:
                raise ValueError("An Input/InputLayer can only be the first item of Sequential")
            self._input_shape = layer.input_shape_arg
            self._input_name = layer.name
        elif isinstance(layer, Layer):
            if layer in self._layers:
                raise ValueError(f"Layer {layer.name!r} is already in model {self.name!r}")
            if not self._layers and self._input_shape is None and \
                    layer.input_shape_arg is not None:
                self._input_shape = layer.input_shape_arg
            self._layers.append(layer)
        else:
            raise TypeError(f"Sequential.add expects a fastnn layer, got {type(layer).__name__}")
        self.built = False
        if self._input_shape is not None:
            self.build()

    def pop(self):
        if not self._layers:
            raise IndexError("There are no layers in the model to pop")
        layer = self._layers.pop()
        self.built = False
        if self._input_shape is not None and self._layers:
            self.build()
        return layer


def scale_back(loss, n):
    """Factor from a batch's loss sum to its tracker contribution: Keras tracks the reduced batch
    loss weighted by the batch size (mean: sum/n * n; sum: sum * n)."""
    return 1.0 if loss.reduction == "sum_over_batch_size" else float(n)


def _scaled(total, factor):
    return total if factor == 1.0 else total * factor     # on a GPU, * 1.0 is a kernel launch


def _check_class_weight(class_weight):
    if not isinstance(class_weight, dict):
        raise TypeError(f"class_weight must be a dict {{class index: weight}}, got "
                        f"{type(class_weight).__name__}")
    for label, weight in class_weight.items():
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label < 0:
            raise ValueError(f"class_weight keys must be class indices (ints >= 0), got "
                             f"{label!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float, np.number)) or \
                not math.isfinite(weight):
            raise ValueError(f"class_weight[{label}] must be a finite number, got {weight!r}")


def _should_validate(epoch, freq):
    if isinstance(freq, int):
        return (epoch + 1) % freq == 0
    return (epoch + 1) in freq


def _warn_single_class(y_val):
    """validation_split takes the last fraction unshuffled; warn when that slice is one class."""
    import warnings
    labels = y_val.reshape(len(y_val), -1)
    labels = labels[:, 0] if labels.shape[1] == 1 else labels.argmax(axis=1)
    if len(y_val) > 1 and np.unique(labels).size == 1:
        warnings.warn("validation_split takes the LAST fraction of the data before shuffling, "
                      "and that slice holds a single class; shuffle x and y first",
                      stacklevel=3)


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """Load a model saved with Sequential.save (.keras or legacy .h5)."""
    from .saving import load_model as _load
    return _load(filepath, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)

