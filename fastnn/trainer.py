"""The trainer: compile, fit, evaluate, predict and their steps, for every kind of model
(Model, Functional, Sequential inherit it). One loop runs them all; the fused paths (the C
Dense stack, the Conv2D + MaxPooling2D step, plain SGD inside the GEMM) are chosen where a model
matches them (stack.DenseRunner.for_model, Model._plan_steps, _plan_in_place).

All trainable weights live in one flat float32 buffer (the parameter arena) and their gradients
in another; layers hold views into them. The optimizer therefore updates the whole model in one
fused kernel call per step, and a steady-state step allocates nothing large: batches are gathered
into reused buffers and layers keep their activations in per-shape workspaces."""
import functools
import math
import warnings

import numpy as np

from . import activations, data_adapters, regularizers
from . import callbacks as callbacks_module
from . import distribution as distribution_module
from . import losses as losses_module
from . import metrics as metrics_module
from . import optimizers as optimizers_module
from .autodiff import Tensor, gradients, no_grad, tape, value_of
from .backend import get_ops
from .data_adapters import _should_validate
from .graph import is_symbolic
from .layers.core import (
    Dense,
    _accepts_training,
    _thread_state,
    activity_penalties,
    added_losses,
    forward_pass,
    masked_forward,
    record_activity,
    with_activity_gradient,
)
from .rng import get_rng
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


_FLOAT32_MAX = float(np.finfo(np.float32).max)


class Trainer:
    """compile / fit / evaluate / predict / train_on_batch / test_on_batch / model(x) and the
    steps under them. A model provides _forward, _backward (through its layers, its graph
    or its call()) and the structure methods of fastnn.models.Model."""

    # ---- compile ---------------------------------------------------------------------------
    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None,
                weighted_metrics=None, run_eagerly=False, steps_per_execution=1,
                jit_compile="auto", auto_scale_loss=True):
        """Configure the model for training: the optimizer, the loss and the metrics.

        Args:
            optimizer: An optimizer name such as `"adam"` or a `fastnn.optimizers.Optimizer`.
                Defaults to `"rmsprop"`.
            loss: A loss name such as `"mse"`, a `fastnn.losses.Loss`, or a function `loss(y_true,
                y_pred)`; for a model with several outputs, a list or a dict by output name.
                Defaults to `None`.
            loss_weights: Factors of the losses of several outputs (a list or dict), or of the
                single loss. Defaults to `None`.
            metrics: A list of metric names (e.g. `"accuracy"`) or `fastnn.metrics.Metric` objects;
                for several outputs, a dict by output name or a list of lists. Defaults to `None`.
            weighted_metrics: Only `None` (weighted metrics are not supported yet). Defaults to
                `None`.
            run_eagerly: Accepted for Keras compatibility; fastnn computes the same either way.
                Defaults to `False`.
            steps_per_execution: Only 1 is supported (batch callbacks see every step). Defaults to
                `1`.
            jit_compile: Accepted for Keras compatibility; fastnn computes the same either way.
                Defaults to `"auto"`.
            auto_scale_loss: Accepted for Keras compatibility (float32 only: no loss scaling).
                Defaults to `True`.

        Example:

        ```python
        model.compile(optimizer="adam", loss="mse", metrics=["mae"])
        ```
        """
        serialized = isinstance(loss, dict) and "class_name" in loss     # from a saved file
        if isinstance(loss, list) or (isinstance(loss, dict) and not serialized) or \
                isinstance(metrics, dict):
            raise ValueError("Sequential models have one output: pass a single loss and a list "
                             "of metrics")
        self.optimizer = optimizers_module.get(optimizer)
        self.loss = None if loss is None else losses_module.get(loss)
        self._loss_weights_spec = loss_weights      # (saved as given, as Keras saves it)
        self._loss_weight = _single_loss_weight(loss_weights)
        if metrics is not None and not isinstance(metrics, (list, tuple)):
            metrics = [metrics]
        if weighted_metrics:
            raise ValueError("weighted_metrics are not supported by fastnn yet")
        # run_eagerly, jit_compile and auto_scale_loss (float16 loss scaling) choose how
        # Keras executes; fastnn's kernels give the same results either way. Several steps per
        # execution would change when batch callbacks run: not yet.
        if isinstance(steps_per_execution, bool) or \
                not isinstance(steps_per_execution, (int, np.integer)) or steps_per_execution < 1:
            raise ValueError(f"steps_per_execution must be a positive int, got "
                             f"{steps_per_execution!r}")
        if steps_per_execution != 1:
            raise ValueError(f"steps_per_execution={steps_per_execution}: fastnn runs one step "
                             "per execution (batch callbacks see every step); only 1 is "
                             "supported")
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
        """Reset the state of the model's metrics (and its loss tracker)."""
        for m in self._trackers():
            m.reset_state()

    def _logs(self, prefix="", wait=True):
        """The running loss and metrics: floats, or with wait=False values that float() reads
        later (0-d device arrays on a GPU), for a progress bar that redraws on a clock."""
        read = (lambda m: m.result()) if wait else (lambda m: m.peek())
        return dict(sorted((prefix + m.name, read(m)) for m in self._trackers()))

    def _logs_reader(self):
        """A function giving _logs() for the trackers as they are now, their order fixed once
        (a callback reading every batch calls it after each step)."""
        named = sorted(((m.name, m.result) for m in self._trackers()), key=lambda pair: pair[0])
        return lambda: {name: result() for name, result in named}

    def _global_logs(self):
        """The logs of a whole epoch or evaluation: under a DataParallel distribution, of
        every rank's batches (their accumulators summed)."""
        dist = distribution_module.active()
        if dist is None:
            return self._logs()
        with dist.global_metrics(self._trackers()):
            return self._logs()

    def _results(self, logs):
        """evaluate()'s list (or the loss alone), in Keras's order."""
        names = [m.name for m in self._trackers()]
        if self.__dict__.get("_output_losses") is not None:
            # several outputs: Keras lists the losses, then the metrics (named after their
            # outputs, so not among its compiled metrics' own names) sorted by name
            losses = 1 + len(self._output_loss_trackers)
            names = names[:losses] + sorted(names[losses:])
        return logs["loss"] if len(names) == 1 else [logs[name] for name in names]

    def _one(self, data, names, what, arg):
        """Data for a model's one input (output): an array, or as Keras also takes it, a list
        of one array or a dict by the input's (output's) name."""
        if isinstance(data, dict):
            if not names:
                raise ValueError(f"{arg}: model {self.name!r} has no named {what}s; pass an "
                                 f"array, not a dict")
            if set(data) != {names[0]}:
                raise ValueError(f"{arg}: model {self.name!r} has one {what} {names[0]!r}; "
                                 f"got a dict with keys {sorted(map(str, data))}")
            return data[names[0]]
        if isinstance(data, (list, tuple)) and len(data) == 1 and \
                len(getattr(data[0], "shape", ())) > 0:
            return data[0]          # [array] (a list of lists stays one array's rows)
        return data

    def _prepare_targets(self, y, n, arg, y_arg):
        """(targets as the loss reads them, y's shape for the metrics)."""
        y = self._one(y, getattr(self, "output_names", None), "output", y_arg)
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
        x = np.asarray(self._one(x, getattr(self, "input_names", None), "input", arg))
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
        if not fits(x.shape, expected):
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
        if isinstance(x, np.ndarray) and self._batch_dtype != "float32":
            batch_dtype[id(x)] = np.dtype(self._batch_dtype)     # an integer Input
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
        if key in ("x", "call") and self._batch_dtype != "float32":
            dtype = np.dtype(self._batch_dtype)         # an integer Input: no float cast
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
    _schedule = None        # a functional graph of fastnn's layers runs on it (Functional)

    @property
    def _batch_dtype(self):
        """The dtype of the batches of x (Model overrides: integer inputs stay integers)."""
        return self._input_dtype

    def _forward(self, x, training):
        state = _thread_state(self._thread)
        state.output_mask = None        # the mask the output carries (Keras's output mask)
        if self._schedule is not None:
            return self._run_schedule(x, training)
        if self._subclassed:
            return self._run_call(x, training)
        if self.__dict__.get("_masking"):
            out, state.output_mask = masked_forward(self._steps, x, training)
            return out
        for _, _, step in self._steps:
            x = step.forward(x, training)
            record_activity(step, x, training)
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
                with tape() as recorded:
                    out = state.output = self.call(Tensor(x), **kwargs)
                state.tape_nodes = recorded.nodes
            else:
                with no_grad():
                    out = self.call(Tensor(x), **kwargs)
            state.added_losses = added_losses()
        state.output_mask = [getattr(o, "keras_mask", None) for o in out] \
            if isinstance(out, (list, tuple)) else getattr(out, "keras_mask", None)
        return self._output_rows(out, x)

    def _run_schedule(self, x, training):
        """A functional graph of fastnn's own layers, on its schedule (no tape)."""
        state = _thread_state(self._thread)
        state.added_losses = ()
        outs = self._schedule.forward(self._input_arrays(x), bool(training))
        masks = self._schedule.output_masks()
        state.output_mask = masks if len(outs) > 1 else masks[0]
        return self._output_rows(outs if len(outs) > 1 else outs[0], x)

    def _output_rows(self, out, x):
        """A forward pass's output (a list for several: side by side, row by row) as one
        contiguous float32 array of the batch's rows."""
        ops = get_ops()
        if isinstance(out, (list, tuple)):
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
        # (an activity penalty on the output layer needs the gradient of its output, not of
        # its pre-activation: no loss fused with its activation then)
        layer = self._output_layer()
        if getattr(layer, "activity_regularizer", None) is not None:
            return self.loss.mode(None)
        return self.loss.mode(getattr(layer, "act_id", None))

    def _gradient_is_preactivation(self):
        """Whether the loss's gradient is already that of the output layer's pre-activation:
        softmax/sigmoid fused with their cross-entropy, or logits from a linear layer (from
        a non-linear one, backward still takes the activation's derivative, as Keras does)."""
        act = getattr(self._output_layer(), "act_id", None)
        return self._mode == "fused" or (self._mode == "logits" and act == activations.LINEAR)

    def _backward(self, grad, mode, kernel_step=None):
        """kernel_step: the plain SGD step's learning rate, which the layers in
        _in_place_layers then take in place."""
        if self._schedule is not None:
            self._schedule.backward(grad if isinstance(grad, (list, tuple)) else [grad],
                                    self._output_layer() if self._preactivation_grad
                                    else None)
            return
        if self._subclassed:
            state = _thread_state(self._thread)
            out, state.output = state.output, None
            outs, grads = (out, grad) if isinstance(out, (list, tuple)) else ([out], [grad])
            pairs = [(o, g.reshape(o.shape)) for o, g in zip(outs, grads)
                     if g is not None and isinstance(o, Tensor) and o.requires_grad]
            nodes, state.tape_nodes = state.__dict__.get("tape_nodes"), None
            ones = get_ops().xp.ones((), np.float32)
            pairs += [(loss, ones) for loss in state.__dict__.get("added_losses") or ()
                      if isinstance(loss, Tensor) and loss.requires_grad]
            if pairs:
                gradients([o for o, _ in pairs], seed=[g for _, g in pairs], order=nodes)
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
            dy = step.backward(with_activity_gradient(step, dy), need_dx=first > stop, **kwargs)

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
        mask = _thread_state(self._thread).__dict__.get("output_mask")
        if mask is not None:
            w = self._masked_weights(mask, w, out)
        weight = self.__dict__.get("_loss_weight", 1.0)     # loss_weights of one output
        total = self.loss.value_and_grad(out2, y2, w, scale * weight, grad, self._mode)
        if weight != 1.0:
            total = total * weight
        return _scaled(total, scale_back(self.loss, n)), \
            None if grad is None else grad.reshape(out.shape), n

    def _masked_weights(self, mask, w, out):
        """The output's mask as weights of the loss's rows, as Keras applies it: masked
        timesteps weigh 0, the others rows / kept (a mean over the kept timesteps only),
        times the sample's weight."""
        if out.ndim != 3 or tuple(mask.shape) != tuple(out.shape[:2]):
            raise NotImplementedError(
                f"Model {self.name!r}: its output (shape {tuple(out.shape)}) carries a mask of "
                f"shape {tuple(mask.shape)}; fastnn applies an output mask to the loss only "
                "for (batch, timesteps, features) outputs")
        xp = get_ops().xp
        keep = mask.astype(np.float32)
        kept = float(keep.sum())
        rows = keep.size
        keep *= np.float32(rows / (kept + 1e-7))
        if w is not None:
            keep *= xp.asarray(w, np.float32).reshape(-1, 1)
        return xp.ascontiguousarray(keep.reshape(-1))

    def _track(self, total, n, y, out):
        """Add a batch's loss (as the tracker counts it) and, given y, its metrics."""
        self._loss_tracker.update_with_sum(total, n)
        if y is None:       # a skipped step (non-finite loss)
            return
        mask = _thread_state(self._thread).__dict__.get("output_mask")
        if mask is not None:    # each timestep a row, the masked ones weighing 0 (as Keras)
            rows = mask.size
            y = y.reshape(rows, -1) if y.dtype != np.int32 else y.reshape(-1)
            weights = mask.reshape(-1).astype(np.float32)
            for m in self._metrics:
                m.update_state(y, out.reshape(rows, -1), sample_weight=weights)
            return
        for m in self._metrics:
            m.update_state(y, out)

    def _added_loss(self, n):
        """What add_loss() and the activity regularizers added in this thread's last forward
        pass, as the loss tracker counts it (a batch's value, n times)."""
        state = _thread_state(self._thread).__dict__
        losses = state.get("added_losses") or ()
        activity = sum(state.get("activity_losses") or ())
        if not losses:
            return n * activity
        return n * (activity + sum(float(get_ops().to_numpy(value_of(loss)).reshape(()))
                                   for loss in losses))

    def _forward_recording(self, x, training):
        """_forward in a train or test step: the layers' activity penalties are computed and
        kept (_added_loss, losses)."""
        with activity_penalties() as activity:
            out = self._forward(x, training)
        _thread_state(self._thread).activity_losses = activity
        return out

    @property
    def losses(self):
        """The activity penalties and add_loss() losses of this thread's last train or test
        step, then the weights' regularization penalties now (floats), as Keras's
        model.losses orders them."""
        state = _thread_state(self._thread).__dict__
        return list(state.get("activity_losses") or ()) + \
            [float(get_ops().to_numpy(value_of(loss)).reshape(()))
             for loss in state.get("added_losses") or ()] + \
            [regularizers.penalty(reg, layer._vars[name])
             for layer, name, reg in self._penalized()]

    def _penalized(self):
        """(layer, weight name, regularizer) of every weight with a regularizer."""
        return [(layer, name, reg) for layer in self._layers
                for name, reg in layer.__dict__.get("_penalties", {}).items()]

    def _regularization(self, n, want_grad):
        """The weights' regularization penalties, as the loss tracker counts them (a batch's
        value, n times); with want_grad, each penalty's gradient is added to its weight's
        (after backward wrote them). Keras adds them to the loss it trains on and reports."""
        total = 0.0
        for layer, name, reg in self._penalized():
            train = want_grad and layer.trainable and name in layer.grads
            total += regularizers.penalty(reg, layer._vars[name],
                                          layer.grads[name] if train else None)
        return n * total

    def _constrain(self):
        """Each constraint projects its weight after the optimizer's step, as in Keras."""
        for layer in self._layers:
            if layer.trainable:
                for name, constraint in layer.__dict__.get("_constraints", {}).items():
                    if name in layer._trainable_names:
                        layer._vars[name][...] = constraint(layer._vars[name])

    def _train_step(self, x, y, w, share=None):
        """One step on the batch x, y, w. Under a DataParallel distribution (fastnn.
        distribution), the batch is this rank's part of the global batch, `share` its fraction
        of the global batch's rows (0: no rows here this step)."""
        dist = distribution_module.active()
        if dist is not None:
            dist.begin_step(share if self._mean_loss() else 1.0)
        if share == 0.0:            # no rows on this rank: its part of the sum is zero
            return self._rankless_step(dist)
        out = self._forward_recording(x, training=True)
        total, grad, n = self._loss_and_grad(out, y, w, True)
        total = total + self._added_loss(n)
        # A non-finite loss skips the update (on every rank when one rank's is: the flag rides
        # in the gradients' allreduce). A device backend returns the total as a device scalar
        # and is not checked here: reading it would stall every step on the GPU.
        bad = isinstance(total, float) and not math.isfinite(total)
        if bad and dist is None:
            self._track(total, n, None, None)
            return out
        lr = self.optimizer.plain_step_lr() if self._in_place_layers and not bad else None
        if not bad or dist is not None:
            # (under DataParallel every rank runs its backward pass: BatchNormalization
            # layers sum over the ranks there; the flag then skips the update everywhere)
            self._backward(grad, self._mode, lr)
        if not bad and self.__dict__.get("_penalties"):
            total = total + self._regularization(n, True)
        if dist is not None and dist.reduce_gradients(
                self._grads_and_flag, share if self._mean_loss() else 1.0, bad):
            self._track(total, n, None, None)
            return out
        if dist is None or not dist.apply_shard(self):
            self.optimizer.apply(self._params, self._grads, self._apply_ranges if lr else None)
        if self.__dict__.get("_constrained"):
            self._constrain()
        self._track(total, n, y, out)
        return out

    def _rankless_step(self, dist):
        """A rank without rows in this global batch adds zero to the gradient sum and takes
        the step the others take."""
        dist.rankless_layers(False, self)
        dist.rankless_layers(True, self)
        self._grads[...] = 0
        if dist.reduce_gradients(self._grads_and_flag, 1.0):
            return None
        if not dist.apply_shard(self):
            self.optimizer.apply(self._params, self._grads)
        if self.__dict__.get("_constrained"):
            self._constrain()
        return None

    def _mean_loss(self):
        """Whether the loss is a mean over the batch (its gradient scales with a rank's
        share of the global batch) rather than a sum."""
        losses = self.__dict__.get("_output_losses") or [self.loss]
        return all(getattr(loss, "reduction", "sum_over_batch_size") == "sum_over_batch_size"
                   for loss in losses)

    def _test_step(self, x, y, w):
        out = self._forward_recording(x, training=False)
        total, _, n = self._loss_and_grad(out, y, w, False)
        total = total + self._added_loss(n)
        if self._penalized():
            total = total + self._regularization(n, False)
        self._track(total, n, y, out)

    def _prepare_training(self):
        self._pack_parameters()
        self.optimizer.build(self._sizes)
        self._penalties = self._penalized()
        self._constrained = any(layer.__dict__.get("_constraints") for layer in self._layers)
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
        # (not a kernel with a regularizer: its penalty's gradient comes after backward)
        layers = [layer for layer in self._layers if type(layer) is Dense and layer.trainable
                  and layer.kernel.size >= IN_PLACE_MIN_WEIGHTS and not self._subclassed
                  and "kernel" not in layer.__dict__.get("_penalties", {})]
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
        """Train the model for a number of epochs.

        Args:
            x: Input data: a NumPy array (a list of arrays, or a dict by input name, for several
                inputs), or a Python generator/iterable or `fastnn.utils.PyDataset` yielding batches
                `(x, y)` or `(x, y, sample_weight)` (then `y`, `batch_size` and `sample_weight` must
                not be given). Defaults to `None`.
            y: Target data, arrays matching `x` (a list or dict for several outputs); `None` when
                `x` yields batches. Defaults to `None`.
            batch_size: Number of samples per batch; `None`: 32. Not allowed when `x` yields
                batches.
            epochs: Number of epochs to train for (up to `epochs`, counting from `initial_epoch`).
                Defaults to `1`.
            verbose: `"auto"` (the same as 1), 0 (silent), 1 (a progress bar) or 2 (one line per
                epoch). Defaults to `"auto"`.
            callbacks: A list of `fastnn.callbacks.Callback` objects called during the run. Defaults
                to `None`.
            validation_split: Fraction in [0, 1) of the data (the last samples, before shuffling)
                held out for validation. Defaults to `0.0`.
            validation_data: Data to validate on at the end of each epoch: `(x_val, y_val)`,
                `(x_val, y_val, sample_weight)`, or batches as for `x`. Defaults to `None`.
            shuffle: Whether to shuffle the samples before each epoch (`"batch"`: shuffle in batch-
                sized chunks). Defaults to `True`.
            class_weight: A dict `{class index: weight}` that weights each sample's loss by its
                class. Defaults to `None`.
            sample_weight: Per-sample weights of the loss, a 1-D array with one entry per sample, or
                `None`. Defaults to `None`.
            initial_epoch: The epoch to start at (to resume a previous training). Defaults to `0`.
            steps_per_epoch: Number of batches per epoch; `None`: the whole data. Defaults to
                `None`.
            validation_steps: Number of validation batches per validation; `None`: all. Defaults to
                `None`.
            validation_batch_size: Batch size of the validation; `None`: `batch_size`. Defaults to
                `None`.
            validation_freq: Validate every `validation_freq` epochs (an int), or at the epochs
                listed. Defaults to `1`.

        Returns:
            A `fastnn.callbacks.History` whose `history` dict holds each metric's value per epoch.

        Example:

        ```python
        history = model.fit(x_train, y_train, batch_size=32, epochs=5, validation_split=0.1)
        ```
        """
        self._check_compiled("fit")
        verbose = _resolve_verbose(verbose)
        batched = data_adapters.is_batched(x)     # generators, iterables, PyDataset
        if batched:
            data_adapters.check_unused(x, y, sample_weight, batch_size, validation_split)
        if batched or data_adapters.is_batched(validation_data):
            _arrays_across_ranks("fit")
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
        if batched:
            val = self._prepare_validation(validation_data, validation_steps,
                                           validation_batch_size)
            return data_adapters.fit(self, x, epochs, verbose, callbacks, val, shuffle,
                                     class_weight, initial_epoch, steps_per_epoch,
                                     validation_steps, validation_freq, val_batch_size)
        x, y, w, y_shape = self._prepare_xy(x, y, sample_weight, class_weight)
        val = self._prepare_validation(validation_data, validation_steps,
                                       validation_batch_size)
        if val is None and validation_split:
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
        dist = distribution_module.active()
        if dist is not None:
            self._in_place_layers = frozenset()     # (each step waits for the allreduce)
        cbs = callbacks_module.CallbackList(callbacks, add_history=True,
                                            add_progbar=verbose != 0 and
                                            distribution_module.is_chief(), model=self,
                                            verbose=verbose, epochs=epochs, steps=steps)
        rng = get_rng()
        batch_logs = cbs.wants("on_train_batch_end")     # build per-step logs only if read
        self.stop_training = False
        self._initial_epoch = None
        # before the fused path takes the weights: a callback may change them here, or resume
        # an interrupted run (BackupAndRestore: weights, optimizer state, the epoch reached)
        cbs.on_train_begin()
        initial_epoch = self.__dict__.pop("_initial_epoch", None) or initial_epoch
        if dist is not None:        # rank 0's weights, optimizer state and epoch everywhere
            initial_epoch = dist.broadcast(initial_epoch)
            dist.broadcast_model(self)
            dist.share_arena(self)      # (one machine: each rank then updates its shard)
        runner = DenseRunner.for_model(self, training=True)
        if runner is not None and (not runner.accepts(x) or
                                   dist is not None and batch_size < dist.size):
            runner = None       # (under DataParallel each rank needs rows in a full batch)
        if dist is not None and runner is None:
            dist.defer_weight_gradients(self, batch_size)
        per_step = cbs.per_batch("train")
        ops = get_ops()
        # Every input is checked before anything changes. The fused path checks each batch as
        # it gathers it; when its first epoch reads every row, a bad value is found there and
        # the fit rolls the model back to this state instead (a separate scan would cost as
        # much as a small model's epoch). Callbacks that see single batches have then seen
        # the batches before the bad one, as they would have seen them in Keras.
        rollback = None
        if runner is None:
            x, y, w = self._to_device(x, y, w)
        elif steps * batch_size < n:
            runner.check_finite(x)
        else:
            rollback = self._training_state(rng)
        if isinstance(val, tuple):
            val = self._to_device(*val, arg="x_val")
        on_device = ops.is_device and isinstance(x, ops.xp.ndarray)
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
            if dist is not None:
                order = dist.shared_order(order)
            if runner is not None:
                try:
                    runner.run_epoch(x, y, w, order, steps, batch_size, True, cbs, per_step,
                                     self._logs_reader(), dist=dist)
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
                share = None
                if dist is not None:        # this rank's part of the global batch
                    first, last = dist.local_rows(start, stop)
                    share, start, stop = (last - first) / (stop - start), first, last
                idx = slice(start, stop) if order is None else order[start:stop]
                self._train_step(self._gather("x", x, idx), self._gather("y", y, idx),
                                 None if w is None else self._gather("w", w, idx), share)
                cbs.on_train_batch_end(step, self._logs(wait=per_step) if batch_logs else None)
                if self.stop_training:
                    break
            logs = self._global_logs()
            if val is not None and _should_validate(epoch, validation_freq):
                cbs.on_test_begin()         # validation calls the test hooks, as in Keras
                val_logs = data_adapters.validate(self, val, val_batch_size, validation_steps,
                                                  cbs)
                cbs.on_test_end(val_logs)
                logs.update({"val_" + k: v for k, v in val_logs.items()})
                logs = dict(sorted(logs.items()))
            cbs.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        if epochs > 0:      # as Keras: with use_ema the weights become their average
            self.optimizer.finalize_variable_values(self._params)
        cbs.on_train_end(logs)
        if dist is not None:
            dist.undefer_weight_gradients(self)
        return cbs.history

    def _prepare_validation(self, validation_data, validation_steps, validation_batch_size):
        """validation_data as the trainer's arrays (x, y, w), as batches (a data_adapters
        source), or None."""
        if validation_data is None:
            return None
        val = data_adapters.validation_source(validation_data, validation_steps,
                                              validation_batch_size)
        if val is not None:
            return val
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError("validation_data must be a tuple (x_val, y_val) or "
                             "(x_val, y_val, sample_weight_val)")
        vw = validation_data[2] if len(validation_data) == 3 else None
        return self._prepare_xy(validation_data[0], validation_data[1], vw, arg="x_val")[:3]

    def _evaluate_arrays(self, x, y, w, batch_size, steps, cbs, arg="x"):
        """Run the test loop and return its logs. Training metrics are saved and restored so a
        validation pass inside fit does not disturb them."""
        saved = [m.snapshot() for m in self._trackers()]
        self.reset_metrics()
        n = x.shape[0]
        batch_size = min(batch_size, n)
        total_steps = math.ceil(n / batch_size)
        if steps is not None:
            total_steps = min(total_steps, int(steps))
        batch_logs = cbs is not None and cbs.wants("on_test_batch_end")
        dist = distribution_module.active()
        runner = DenseRunner.for_model(self, training=False) if dist is None else None
        if runner is not None and runner.accepts(x):
            runner.run_epoch(x, y, w, None, total_steps, batch_size, False, cbs,
                             cbs is not None and cbs.per_batch("test"), self._logs_reader(),
                             arg)
            total_steps = 0         # the loop below is the general path
        else:
            x, y, w = self._to_device(x, y, w, arg)
        wait = cbs is not None and cbs.per_batch("test")
        for step in range(total_steps):
            if cbs:
                cbs.on_test_batch_begin(step)
            start, stop = step * batch_size, min(n, (step + 1) * batch_size)
            if dist is not None:        # this rank's part of the global batch
                start, stop = dist.local_rows(start, stop)
            sl = slice(start, stop)
            if stop > start:
                self._test_step(self._gather("x", x, sl), self._gather("y", y, sl),
                                None if w is None else self._gather("w", w, sl))
            if batch_logs:
                cbs.on_test_batch_end(step, self._logs(wait=wait))
        logs = self._global_logs()
        for m, state in zip(self._trackers(), saved):
            m.restore(state)
        return logs

    @_metered
    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 steps=None, callbacks=None, return_dict=False):
        """The loss and metrics of the model on test data.

        Args:
            x: Input data: a NumPy array (a list of arrays, or a dict by input name, for several
                inputs), or a Python generator/iterable or `fastnn.utils.PyDataset` yielding batches
                `(x, y)` or `(x, y, sample_weight)` (then `y`, `batch_size` and `sample_weight` must
                not be given). Defaults to `None`.
            y: Target data, arrays matching `x` (a list or dict for several outputs); `None` when
                `x` yields batches. Defaults to `None`.
            batch_size: Number of samples per batch; `None`: 32. Not allowed when `x` yields
                batches.
            verbose: `"auto"` (the same as 1), 0 (silent), 1 (a progress bar) or 2 (one line per
                epoch). Defaults to `"auto"`.
            sample_weight: Per-sample weights of the loss, a 1-D array with one entry per sample, or
                `None`. Defaults to `None`.
            steps: Number of batches to evaluate; `None`: all.
            callbacks: A list of `fastnn.callbacks.Callback` objects called during the run. Defaults
                to `None`.
            return_dict: Whether to return a dict `{name: value}` instead of a list (or a scalar
                when there is only the loss). Defaults to `False`.

        Returns:
            The loss (a float) when there are no metrics, else a list `[loss, metric, ...]`, or a
            dict with `return_dict=True`.
        """
        self._check_compiled("evaluate")
        verbose = _resolve_verbose(verbose)
        steps = _check_steps(steps, "steps")
        if data_adapters.is_batched(x):
            data_adapters.check_unused(x, y, sample_weight, batch_size)
            _arrays_across_ranks("evaluate")
            logs = data_adapters.evaluate(self, x, verbose, steps, callbacks)
            return logs if return_dict else self._results(logs)
        batch_size = _check_batch_size(batch_size)
        x, y, w, y_shape = self._prepare_xy(x, y, sample_weight)
        batch_size = min(batch_size, x.shape[0])
        self._build_metrics(y_shape)
        self._pack_parameters()
        self._mode = self._loss_mode()
        n_steps = math.ceil(x.shape[0] / batch_size)
        if steps is not None:
            n_steps = min(n_steps, steps)
        cbs = callbacks_module.CallbackList(callbacks, add_progbar=verbose != 0 and
                                            distribution_module.is_chief(), model=self,
                                            verbose=verbose, epochs=1, steps=n_steps)
        cbs.on_test_begin()
        logs = self._evaluate_arrays(x, y, w, batch_size, steps, cbs)
        cbs.on_test_end(logs)
        if return_dict:
            return logs
        return self._results(logs)

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """The model's outputs for input samples, computed batch by batch.

        Args:
            x: Input data: arrays as for `fit`, or batches (a generator or `PyDataset`).
            batch_size: Number of samples per batch; `None`: 32. Not allowed when `x` yields
                batches.
            verbose: `"auto"` (the same as 1), 0 (silent), 1 (a progress bar) or 2 (one line per
                epoch). Defaults to `"auto"`.
            steps: Number of batches to predict; `None`: all.
            callbacks: A list of `fastnn.callbacks.Callback` objects called during the run. Defaults
                to `None`.

        Returns:
            A NumPy array (a list of arrays for several outputs).
        """
        verbose = _resolve_verbose(verbose)
        steps = _check_steps(steps, "steps")
        if data_adapters.is_batched(x):
            data_adapters.check_unused(x, batch_size=batch_size)
            _arrays_across_ranks("predict")
            return data_adapters.predict(self, x, verbose, steps, callbacks)
        batch_size = _check_batch_size(batch_size)
        x = self._prepare_x(x)
        dist = distribution_module.active()
        if dist is None:
            return self._predict_rows(x, batch_size, verbose, steps, callbacks)
        # each rank predicts its block of the rows; every rank gets them all, in order
        n = x.shape[0] if steps is None else min(x.shape[0], steps * min(batch_size, len(x)))
        first, last = dist.local_rows(0, n)
        part = self._predict_rows(x[first:last], batch_size,
                                  verbose if distribution_module.is_chief() else 0, None,
                                  callbacks) if last > first else \
            np.empty((0,) + tuple(self._output_shape_for(x.shape)[1:]), np.float32)
        return dist.gather_rows(part)

    def _predict_rows(self, x, batch_size, verbose, steps, callbacks):
        n = x.shape[0]
        batch_size = min(batch_size, n)
        n_steps = math.ceil(n / batch_size)
        if steps is not None:
            n_steps = min(n_steps, steps)
            n = min(n, n_steps * batch_size)
        out = np.empty((n,) + tuple(self._output_shape_for(x.shape)[1:]), np.float32)
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
        """One training step (a gradient update) on one batch.

        Args:
            x: Input data of the batch.
            y: Its targets. Defaults to `None`.
            sample_weight: Per-sample weights of the loss, a 1-D array with one entry per sample, or
                `None`. Defaults to `None`.
            class_weight: A dict `{class index: weight}`, or `None`. Defaults to `None`.
            return_dict: Whether to return a dict `{name: value}` instead of a list (or a scalar
                when there is only the loss). Defaults to `False`.

        Returns:
            The loss and metrics after the step, as `evaluate` returns them.
        """
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
        """The loss and metrics on one batch (no update).

        Args:
            x: Input data of the batch.
            y: Its targets. Defaults to `None`.
            sample_weight: Per-sample weights of the loss, a 1-D array with one entry per sample, or
                `None`. Defaults to `None`.
            return_dict: Whether to return a dict `{name: value}` instead of a list (or a scalar
                when there is only the loss). Defaults to `False`.

        Returns:
            The loss and metrics, as `evaluate` returns them.
        """
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
        """The model's outputs for one batch.

        Args:
            x: Input data of one batch.

        Returns:
            A NumPy array (a list for several outputs).
        """
        return self(x)

    def _batch_result(self, return_dict):
        logs = self._logs()
        if return_dict:
            return logs
        return self._results(logs)


def _single_loss_weight(loss_weights):
    """The weight of a one-output model's loss: Keras takes a number, a list of one or a dict
    of one."""
    if loss_weights is None:
        return 1.0
    value = loss_weights
    if isinstance(loss_weights, (list, tuple, dict)):
        if len(loss_weights) != 1:
            raise ValueError(f"loss_weights: the model has one output, so give one weight (a "
                             f"number, a list of one or a dict of one); got {loss_weights!r}")
        value = next(iter(loss_weights.values() if isinstance(loss_weights, dict)
                          else loss_weights))
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value):
        raise ValueError(f"loss_weights: expected a finite number, got {value!r}")
    return float(value)


def _arrays_across_ranks(method):
    """Batches from a generator, an iterable or a PyDataset are not split across the ranks of
    a DataParallel job yet: refuse them there (each rank would train on every batch)."""
    if distribution_module.active() is not None:
        raise ValueError(f"{method}: under fastnn.distribution.DataParallel, pass NumPy arrays "
                         "(each rank takes its slice of every global batch); generators, "
                         "iterables and PyDataset are not split across ranks yet")


def scale_back(loss, n):
    """Factor from a batch's loss sum to its tracker contribution: Keras tracks the reduced batch
    loss weighted by the batch size (mean: sum/n * n; sum: sum * n).

    Args:
        loss: The loss object (its reduction decides the factor).
        n: The batch size.

    Returns:
        A float.
    """
    return 1.0 if loss.reduction == "sum_over_batch_size" else float(n)


def fits(shape, expected):
    """Whether an array shape matches a model's (batch, ...) shape, where None (the batch
    axis, an image size left open) matches any size.

    Args:
        shape: An array's shape.
        expected: A model's shape with `None` for any size.

    Returns:
        A bool.
    """
    return len(shape) == len(expected) and all(
        e is None or d == e for d, e in zip(shape[1:], expected[1:]))


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


def _warn_single_class(y_val):
    """validation_split takes the last fraction unshuffled; warn when that slice is one class."""
    labels = y_val.reshape(len(y_val), -1)
    labels = labels[:, 0] if labels.shape[1] == 1 else labels.argmax(axis=1)
    if len(y_val) > 1 and np.unique(labels).size == 1:
        warnings.warn("validation_split takes the LAST fraction of the data before shuffling, "
                      "and that slice holds a single class; shuffle x and y first",
                      stacklevel=3)
