"""The fused path: a Sequential of Dense layers trained, evaluated and run batch after batch in C
(csrc/stack.c through _core.DenseStack), with Python called once per chunk of batches instead of
several times per layer per batch.

It runs the same kernels in the same order as the layer-by-layer path, so results are
bit-identical; `DenseRunner.for_model` returns None (and fit/evaluate/predict take the general
path) for anything it does not cover: other layers, frozen layers, the GPU backend, weight
regularizers other than l1/l2, constraints, losses or metrics without a C kernel. Set
FASTNN_FUSED=0 to turn it off."""
import os
import threading
import time

import numpy as np

from . import losses as L
from . import metrics as M
from . import optimizers as O
from . import regularizers as R
from .backend import get_ops
from .layers.core import _EPSILON, Dense, Flatten, Normalization, Rescaling

# How long one chunk of batches runs before Python gets control back (progress bar, Ctrl-C).
CHUNK_SECONDS = 0.05

_LOSS_KINDS = {L.SparseCategoricalCrossentropy: 0, L.CategoricalCrossentropy: 1,
               L.BinaryCrossentropy: 2, L.MeanSquaredError: 3, L.MeanAbsoluteError: 4}
_OPTIMIZER_KINDS = {cls: cls.kind for cls in (O.SGD, O.Adam, O.AdamW, O.RMSprop, O.Adagrad,
                                               O.Adadelta, O.Adamax, O.Nadam, O.Ftrl, O.Lion)}
_CACHE_SIZE = 4
# Steps of one run while a callback reads every batch (it is called from inside the run, after
# each step): the optimizer's scalars are computed for them at once, and again after a
# callback changed the learning rate. Runs start at STEPS_AHEAD steps, grow 4x after each run
# of all its steps up to MAX_STEPS_AHEAD (without metrics that read the outputs, which are
# kept for a whole run), and after a callback changed the learning rate take as many as
# that run did (a rate changed every step: one step a run, no scalars computed in vain).
# Each run costs ~10 us of argument checks and Python around it: 64 steps a run added
# ~1.4 us a step of the seed MLP (one thread).
STEPS_AHEAD = 64
MAX_STEPS_AHEAD = 1024


class NonFiniteInput(ValueError):
    """A batch held NaN or inf (found as it was gathered, before it was used)."""


def enabled():
    return os.environ.get("FASTNN_FUSED", "1") != "0"


def _dense_layers(model):
    """(the preprocessing layer or None, the Dense layers) when the model is Dense, Dense, ...
    (all trainable) after Flatten and at most one Rescaling or Normalization, whose arithmetic
    the C gather applies to each row (_Preprocessing); else (None, None)."""
    layers, pre = model._layers, None
    at = 0
    while at < len(layers) and type(layers[at]) is not Dense:
        layer = layers[at]
        if layer.activity_regularizer is not None:
            return None, None
        if pre is None and _Preprocessing.covers(layer):
            pre = layer
        elif type(layer) is not Flatten:
            return None, None
        at += 1
    layers = layers[at:]
    if not layers or not all(type(layer) is Dense and layer.trainable for layer in layers):
        return None, None
    return pre, layers


class _Preprocessing:
    """A Rescaling or Normalization layer before the Dense stack, as the C gather's per-value
    arithmetic (fnn_stack_data.pre): x * a + b or (x - a) / b, with a and b the layer's own
    float32 values broadcast to its input and flattened, so the results are the layer's."""

    @staticmethod
    def covers(layer):
        return type(layer) in (Rescaling, Normalization)

    @staticmethod
    def arguments(layer):
        from . import _core
        shape = tuple(layer.input_shape[1:])
        if type(layer) is Rescaling:
            kind = _core.PRE_AFFINE
            a, b = np.asarray(layer.scale, np.float32), np.asarray(layer.offset, np.float32)
        else:
            if layer._constants is not None:
                mean, variance = layer._constants
            else:
                mean = layer._vars["mean"].reshape(layer._broadcast)
                variance = layer._vars["variance"].reshape(layer._broadcast)
            std = np.maximum(np.sqrt(variance), np.float32(_EPSILON))
            kind, a, b = (_core.PRE_AFFINE, std, mean) if layer.invert else \
                (_core.PRE_STANDARDIZE, mean, std)
        return kind, *(np.ascontiguousarray(np.broadcast_to(v, (1,) + shape), np.float32).ravel()
                       for v in (a, b))


def _penalty_factors(layers):
    """float32 (layers, 4): each Dense's kernel l1, l2 and bias l1, l2 factors (Keras's L1, L2
    and L1L2, whose penalty the stack adds in C; 0 without), or None when a layer has another
    regularizer (the general path computes it by autodiff)."""
    factors = np.zeros((len(layers), 4), np.float32)
    for i, layer in enumerate(layers):
        for name, reg in layer.__dict__.get("_penalties", {}).items():
            pair = R.l1l2_factors(reg)
            if pair is None or name not in ("kernel", "bias"):
                return None
            at = 0 if name == "kernel" else 2
            factors[i, at:at + 2] = pair
    return factors


def _metric_kind(model, sparse_targets):
    """(C metric kind, threshold, the metric it computes or None, the other metrics): the
    stack counts the first compiled accuracy it has a kernel for itself; the others update
    from the outputs it keeps, once per chunk of batches (their state adds up over batches, so
    one update with the chunk's rows is the per-batch updates' sum)."""
    width = model._output_shape[-1]
    ms = list(model._metrics or [])
    for i, m in enumerate(ms):
        if type(m) is M.SparseCategoricalAccuracy and sparse_targets:
            kind, threshold = 1, 0.5
        elif type(m) is M.CategoricalAccuracy and not sparse_targets:
            kind, threshold = 2, 0.5
        elif type(m) is M.BinaryAccuracy and width == 1 and not sparse_targets:
            kind, threshold = 3, float(m.threshold)
        else:
            continue
        return kind, threshold, m, ms[:i] + ms[i + 1:]
    return 0, 0.5, None, ms


def _rank_rows(dist, order, n, steps, batch):
    """(this rank's rows of each of the `steps` global batches of `batch` rows of the order,
    back to back, as int64; its rows of a full global batch): its order and batch size for
    the fused stack, whose step k then runs its part of global batch k. Its part of the last
    batch may be smaller, or empty."""
    first, last = dist.local_rows(0, batch)
    full = steps if steps * batch <= n else steps - 1
    at = (np.arange(full, dtype=np.int64)[:, None] * batch + first +
          np.arange(last - first, dtype=np.int64)).ravel()
    if full < steps:
        lo, hi = dist.local_rows(full * batch, n)
        at = np.concatenate([at, np.arange(lo, hi, dtype=np.int64)])
    return (at if order is None else np.ascontiguousarray(order[at], np.int64)), last - first


class DenseRunner:
    """Drives DenseStacks for one model: picks chunk sizes, keeps the Python-side state (loss
    tracker, metric, optimizer iterations) exactly where the per-step loop would leave it."""

    def __init__(self, model, layers, pre=None):
        self.model, self.layers, self.pre = model, layers, pre
        self._thread = threading.local()    # each thread runs its own DenseStacks (workspaces)
        self._chunk = {}

    @property
    def _stacks(self):
        stacks = getattr(self._thread, "stacks", None)
        if stacks is None:
            stacks = self._thread.stacks = {}
        return stacks

    @classmethod
    def for_model(cls, model, training):
        """The model's runner, or None when the fused path does not cover it. training also
        requires the loss, metric and optimizer to have C kernels."""
        if not enabled() or get_ops().name != "cpu" or not model.trainable or \
                model._subclassed or model._input_dtype != "float32":
            return None
        pre, layers = _dense_layers(model)
        if layers is None or _penalty_factors(layers) is None or \
                any(layer.__dict__.get("_constraints") or
                    layer.activity_regularizer is not None for layer in layers):
            return None         # (other regularizers and constraints: the general path)
        if training is not None:
            loss = model.loss
            if type(loss) not in _LOSS_KINDS or loss.from_logits or \
                    model.__dict__.get("_loss_weight", 1.0) != 1.0 or \
                    model._loss_mode() not in ("fused", "outputs") or \
                    (model._loss_mode() == "outputs" and loss.partner is not None):
                return None
            opt = model.optimizer
            if training and (type(opt) not in _OPTIMIZER_KINDS or opt.use_ema):
                return None
        runner = getattr(model, "_dense_runner", None)
        if runner is None or runner.layers != layers or runner.pre is not pre:
            runner = model._dense_runner = cls(model, layers, pre)
        return runner

    # ---- stacks ------------------------------------------------------------------------------
    def _stack(self, batch, training):
        """A DenseStack for `batch` rows: inference only (training None), evaluation (False)
        or training (True). Cached while the weights, optimizer state and loss stay the same."""
        from . import _core
        model = self.model
        key = [batch, training] + [(id(layer.kernel), id(layer._vars.get("bias")), layer.act_id,
                                    layer.act_alpha) for layer in self.layers]
        kwargs = {}
        if training is not None:
            loss = model.loss
            sparse = type(loss) is L.SparseCategoricalCrossentropy
            metric, threshold, _, _ = _metric_kind(model, sparse)
            reg = _penalty_factors(self.layers)
            kwargs = dict(loss=_LOSS_KINDS[type(loss)], fused=model._loss_mode() == "fused",
                          mean_reduction=loss.reduction == "sum_over_batch_size",
                          metric=metric, threshold=threshold, params=model._params,
                          grads=model._grads, reg=reg if reg.any() else None)
            if training:
                opt = model.optimizer
                clip_mode, clip_limit = opt.clipping()
                kwargs.update(opt=_OPTIMIZER_KINDS[type(opt)], slots=opt.fused_slots(),
                              clip_mode=clip_mode, clip_limit=clip_limit,
                              var_sizes=opt._sizes)
            key += [id(loss), metric, threshold, id(model._params), kwargs.get("opt"),
                    tuple(map(id, kwargs.get("slots", ()))), reg.tobytes(),
                    kwargs.get("clip_mode"), kwargs.get("clip_limit")]
        key = tuple(key)
        stack = self._stacks.get(key)
        if stack is None:
            layers = [(layer.kernel, layer._vars.get("bias"),
                       layer.grads.get("kernel") if training is not None else None,
                       layer.grads.get("bias") if training is not None else None,
                       layer.act_id, layer.act_alpha) for layer in self.layers]
            stack = _core.DenseStack(layers, batch, training is not None, **kwargs)
            if len(self._stacks) >= _CACHE_SIZE:
                self._stacks.pop(next(iter(self._stacks)))
            self._stacks[key] = stack
        return stack

    def _x2d(self, x):
        """x as (rows, features) without a copy, or None when the C gather cannot read it."""
        x2 = x.reshape(x.shape[0], -1) if x.ndim != 2 else x
        if x2.shape[1] != self.layers[0].kernel.shape[0] or not x2.flags.c_contiguous or \
                x2.dtype not in (np.float32, np.float64, np.uint8):
            return None
        return x2

    def accepts(self, x):
        return self._x2d(x) is not None

    def check_finite(self, x, arg="x"):
        """Model._check_finite of an array this runner accepts, in one parallel C pass for
        float32 (x.min() and x.max() are two passes on one thread: ~10 % of the seed MLP's
        epoch)."""
        from . import _core
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            return self.model._check_finite(x, arg)
        if not _core.all_finite(x):
            raise ValueError(f"{arg} contains NaN or inf values")

    # ---- chunks ------------------------------------------------------------------------------
    def _next_chunk(self, kind, remaining, per_step):
        """Steps for the next chunk: with a callback reading every batch (called after each
        step from inside the run) as many as the last run's (see STEPS_AHEAD), else as many
        as fit in CHUNK_SECONDS at the last measured speed, growing from one."""
        if per_step:
            return min(remaining, self._chunk.get(("ahead", kind), STEPS_AHEAD))
        n = self._chunk.get(kind, 1)
        return max(1, min(n, remaining))

    def _ran_ahead(self, kind, steps, done, changed, grow):
        """After a run of `steps` steps with a callback reading every batch: `done` of them
        ran, and `changed` whether it ended for new optimizer scalars."""
        key = ("ahead", kind)
        n = self._chunk.get(key, STEPS_AHEAD)
        if changed:
            self._chunk[key] = max(1, done)
        elif done == steps == n:
            self._chunk[key] = min(4 * n, MAX_STEPS_AHEAD if grow else STEPS_AHEAD)

    def _measured(self, kind, steps, seconds):
        n = self._chunk.get(kind, 1)
        if steps >= n:      # a full chunk: resize towards the target time
            n = max(1, min(4 * n, int(n * CHUNK_SECONDS / max(seconds, 1e-6))))
        self._chunk[kind] = n

    # ---- training and evaluation -----------------------------------------------------------
    def run_epoch(self, x, y, w, order, steps, batch, training, cbs, per_step, logs_fn,
                  arg="x", dist=None):
        """Steps 0 .. steps-1 of one epoch (training) or one evaluation pass, calling the
        batch-end hook after each chunk, or (per_step) the batch hooks around each step from
        inside the run. Returns False when a callback stopped training.
        dist (a DataParallel of several ranks, training): this rank runs its rows of each
        global batch, and the stack sums the gradients over the ranks before each update."""
        from . import _core
        model = self.model
        reduce = None
        if dist is not None:
            buffer = model._grads_and_flag
            reduce = (dist.step_reducer(buffer, model.optimizer), buffer,
                      min(len(x), steps * batch), batch)
            order, local = _rank_rows(dist, order, len(x), steps, batch)
            stack = self._stack(local, bool(training))
            if stack.kernels_tile_arena:    # (collective: the same answer on every rank)
                reduce += (dist.exchange_buffer(buffer, reduce[0],
                                                stack.exchange_floats(batch, dist.size)),)
            batch = local
        stack = self._stack(batch, bool(training))
        x2 = self._x2d(x)
        pre = None if self.pre is None else _Preprocessing.arguments(self.pre)
        _, _, counted, others = _metric_kind(
            model, type(model.loss) is L.SparseCategoricalCrossentropy)
        loss_tracker = model._loss_tracker
        outputs = None
        kind = "train" if training else "test"
        per_step = per_step and cbs is not None
        ends = cbs.batch_hooks(f"on_{kind}_batch_end") if cbs is not None else ()
        begins = cbs.batch_hooks(f"on_{kind}_batch_begin") if per_step else ()
        opt = model.optimizer
        rows_in = len(x2) if order is None else len(order)
        step, begun = 0, False
        sets_state = training and type(opt)._set_step_state is not O.Optimizer._set_step_state
        log_names = self._log_names(counted, others) if per_step and ends else None

        def track(sums, lo, hi, at):
            """The loss tracker and metrics as the run's sums leave them, the other metrics
            updated with rows [lo, hi) of the order (the batches that ran to their update,
            as _track counts them), whose outputs start at row `at` of the buffer."""
            loss_tracker.total, loss_tracker.count, total, count = sums.tolist()
            if counted is not None:
                counted.total, counted.count = total, count
            if others and hi > lo:      # (not: a rank's empty batch, a skipped step)
                rows = slice(lo, hi) if order is None else order[lo:hi]
                for m in others:
                    m.update_state(y[rows], outputs[at:at + hi - lo])

        while step < steps:
            n = self._next_chunk(training, steps - step, per_step)
            if not begun:
                for fn in begins:
                    fn(step, None)
            sums = np.array([loss_tracker.total, loss_tracker.count] +
                            ([counted.total, counted.count] if counted is not None
                             else [0.0, 0.0]))
            scalars = states = None
            if training:
                scalars, states = opt.fused_scalars(n)
            if others:
                outputs = self._outputs(outputs, n * batch)
            step_end = None
            if per_step:
                extra = None
                if others or sets_state:
                    def extra(k, j, states=states, sums=sums):
                        if others:
                            track(sums, k * batch, min(rows_in, (k + 1) * batch), j * batch)
                        if sets_state:
                            opt._set_step_state(states[j])     # as fused_commit
                step_end = _core.StepHooks(sums, loss_tracker, counted,
                                           opt if training else None, model, ends, begins,
                                           step, n, logs_fn, log_names, extra)
            start = time.perf_counter()
            done, status = stack.run(x2, y, w, order, step, n, bool(training), scalars, sums,
                                     outputs, pre, reduce, step_end)
            if per_step:
                begun = step_end.begun
                self._ran_ahead(training, n, done, step_end.changed, not others)
            else:
                self._measured(training, done, time.perf_counter() - start)
                track(sums, step * batch, min(rows_in, (step + done - (status == -1)) * batch),
                      0)
                if training:
                    opt.fused_commit(states, done - (status == -1))
            step += done
            if status == -3:
                raise NonFiniteInput(f"{arg} contains NaN or inf values (in batch {step + 1} "
                                     f"of {steps})")
            if ends and not per_step:
                logs = logs_fn()
                for fn in ends:
                    fn(step - 1, logs)
            if training and model.stop_training:
                return False
        return True

    def _log_names(self, counted, others):
        """The logs as StepHooks builds them from the run's sums, ((name, 0: the mean loss /
        1: the counted metric), ...) in the order the model's logs reader gives them, when
        the sums hold every tracker: the loss and the accuracy the stack counts
        (Metric.result of total / count, 0 for no count), no other metric or output loss.
        Else None (the reader then calls each tracker's result). A hook after every step
        otherwise calls result() and peek() of each tracker, objects the step's pass over the
        weights has evicted from the caches (~2 us a step, seed MLP)."""
        trackers = self.model._trackers()
        if others or trackers[1:] != ([counted] if counted is not None else []) or \
                any(type(m).result is not M.Metric.result or type(m).peek is not M.Metric.peek
                    for m in trackers):
            return None
        if counted is None:
            return ((trackers[0].name, 0),)
        if trackers[0].name == counted.name:
            return None
        return tuple(sorted(((trackers[0].name, 0), (counted.name, 1))))

    def _outputs(self, buffer, rows):
        """A buffer for `rows` rows of outputs (reused while large enough)."""
        if buffer is None or len(buffer) < rows:
            buffer = np.empty((rows, self.layers[-1].units), np.float32)
        return buffer

    def predict(self, x, out, batch, cbs=None, per_step=False):
        """Outputs for every row of x into out (rows, units), chunk by chunk."""
        stack = self._stack(batch, None)
        x2, out2 = self._x2d(x), out.reshape(out.shape[0], -1)
        pre = None if self.pre is None else _Preprocessing.arguments(self.pre)
        n = x2.shape[0]
        steps = -(-n // batch)
        wants_end = cbs is not None and cbs.wants("on_predict_batch_end")
        step = 0
        while step < steps:
            k = 1 if per_step else self._next_chunk("predict", steps - step, False)
            if per_step and cbs is not None:
                cbs.on_predict_batch_begin(step)
            lo, hi = step * batch, min(n, (step + k) * batch)
            start = time.perf_counter()
            stack.predict(x2, out2[lo:hi], lo, pre)
            self._measured("predict", k, time.perf_counter() - start)
            step += k
            if wants_end:
                cbs.on_predict_batch_end(step - 1, {"outputs": out[lo:hi]})
        return out

