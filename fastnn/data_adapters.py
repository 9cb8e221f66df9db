"""Data given as batches: Python generators, iterators and other iterables yielding `(x, y)`,
`(x, y, sample_weight)` or `x`, and fastnn.utils.PyDataset (Keras 3's keras.utils.PyDataset,
with its `workers` prefetching in order into a bounded queue). The trainer (fit / evaluate /
predict) hands such data to the loops here; arrays keep the trainer's own loops.

Each batch goes through the model's own checks (`_prepare_xy`) and then the same step as an
array batch: the fused C Dense stack where the model matches it (several equal batches in one
call when no callback reads single batches), else the general step. So a fit on the batches
of arrays, in order, gives the weights a fit on the arrays gives with shuffle=False.

Keras 3's rules (keras/src/trainers/epoch_iterator.py and data_adapters/): batch_size,
y, sample_weight and validation_split are refused with such data; steps_per_epoch reads on
from where the last epoch stopped; a source that runs out before steps_per_epoch warns "Your
input ran out of data; interrupting training". Where fastnn differs: any iterable is accepted
(Keras takes generators only), class_weight works with generators too, and a single-pass
generator that is exhausted stops the fit with that warning (Keras replays its first batches).
"""
import collections
import itertools
import math
import multiprocessing
import os
import sys
import types
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np

from . import callbacks as callbacks_module
from .rng import get_rng
from .stack import DenseRunner

RAN_OUT = ("Your input ran out of data; interrupting training. Make sure that your dataset or "
           "generator can generate at least `steps_per_epoch * epochs` batches.")

# Equal batches gathered into one fused call when no callback reads single batches: the C
# stack then runs them back to back (the Python work per call is paid once per chunk).
_CHUNK_BATCHES = 64


def _should_validate(epoch, freq):
    if isinstance(freq, int):
        return (epoch + 1) % freq == 0
    return (epoch + 1) in freq


def _warn(message):
    """Warn at the user's line: the first frame outside fastnn."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(here):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


class PyDataset:
    """A dataset that yields batches by index, as Keras 3's `keras.utils.PyDataset`.

    Subclass it with `__len__` (the number of batches; or the `num_batches` property, `None` for
    an infinite dataset) and `__getitem__(index)` returning a batch `(x, y)`,
    `(x, y, sample_weight)` or `x`, and call `super().__init__(**kwargs)`. `fit`, `evaluate` and
    `predict` take it in place of arrays. With processes, the dataset is inherited by forked
    workers (Linux/macOS "fork"), and `on_epoch_end`'s changes reach them at the next epoch.

    Args:
        workers: How many threads (or processes) fetch batches ahead of the training step, in order.
            Defaults to `1`.
        use_multiprocessing: Whether the workers are processes instead of threads. Defaults to
            `False`.
        max_queue_size: How many batches may be fetched ahead at most. Defaults to `10`.

    Example:

    ```python
    class Batches(fastnn.utils.PyDataset):
        def __init__(self, x, y, batch_size, **kwargs):
            super().__init__(**kwargs)
            self.x, self.y, self.batch_size = x, y, batch_size

        def __len__(self):
            return -(-len(self.x) // self.batch_size)

        def __getitem__(self, i):
            s = slice(i * self.batch_size, (i + 1) * self.batch_size)
            return self.x[s], self.y[s]
    ```
    """

    def __init__(self, workers=1, use_multiprocessing=False, max_queue_size=10):
        self._workers, self._use_multiprocessing = workers, use_multiprocessing
        self._max_queue_size = max_queue_size

    def _setting(self, name, default):
        if not hasattr(self, "_" + name):
            _warn("Your `PyDataset` class should call `super().__init__(**kwargs)` in "
                  "its constructor. `**kwargs` can include `workers`, "
                  "`use_multiprocessing`, `max_queue_size`. Do not pass these "
                  "arguments to `fit()`, as they will be ignored.")
            setattr(self, "_" + name, default)
        return getattr(self, "_" + name)

    workers = property(lambda self: self._setting("workers", 1),
                       lambda self, value: setattr(self, "_workers", value))
    use_multiprocessing = property(lambda self: self._setting("use_multiprocessing", False),
                                   lambda self, v: setattr(self, "_use_multiprocessing", v))
    max_queue_size = property(lambda self: self._setting("max_queue_size", 10),
                              lambda self, value: setattr(self, "_max_queue_size", value))

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must implement __getitem__(index) "
                                  "returning batch `index`")

    @property
    def num_batches(self):
        """Number of batches, or None for an infinite dataset (default: len(self))."""
        if hasattr(self, "__len__"):
            return len(self)
        raise NotImplementedError("You need to implement the `num_batches` property:\n\n"
                                  "@property\ndef num_batches(self):\n  return ...")

    def on_epoch_begin(self):
        """Called at the start of every epoch."""

    def on_epoch_end(self):
        """Called at the end of every epoch (e.g. to reshuffle the samples)."""

    def __iter__(self):
        n = self.num_batches
        for index in (range(n) if n is not None else itertools.count()):
            yield self[index]


# ---- what counts as batched data ----------------------------------------------------------
def is_batched(x):
    """Whether x is data given as batches (not arrays, lists or dicts of arrays)."""
    if x is None or isinstance(x, (np.ndarray, list, tuple, dict, str, bytes, np.generic)):
        return False
    if isinstance(x, (PyDataset, types.GeneratorType)):
        return True
    if hasattr(x, "__array__") or hasattr(x, "__cuda_array_interface__") or \
            hasattr(x, "__array_interface__"):
        return False        # an array of another library (torch, cupy, pandas)
    return hasattr(x, "__next__") or hasattr(x, "__iter__")


def _refuse(arg, description, kind):
    raise ValueError(f"When providing `x` as a {kind}, `{arg}` should not be passed. Instead, "
                     f"{description} should be included as part of the {kind}.")


def _kind(x):
    return "PyDataset" if isinstance(x, PyDataset) else \
        "generator" if isinstance(x, types.GeneratorType) else "Python iterable"


def check_unused(x, y=None, sample_weight=None, batch_size=None, validation_split=0.0,
                 batch_arg="batch_size"):
    """Keras's refusals for arguments that batched data carries itself."""
    kind = _kind(x)
    if y is not None:
        _refuse("y", "the targets", kind)
    if sample_weight is not None:
        _refuse("sample_weight", "the sample weights", kind)
    if batch_size is not None:
        raise ValueError(f"Do not specify `{batch_arg}` when `x` is a {kind}: it yields whole "
                         f"batches (got {batch_arg}={batch_size!r})")
    if validation_split:
        raise ValueError(f"`validation_split` is only supported for NumPy arrays, not for a "
                         f"{kind}; pass validation_data instead")


# ---- one source of batches, epoch after epoch ---------------------------------------------
class Batches:
    """x's batches, epoch after epoch, by Keras's EpochIterator rules. steps: steps_per_epoch
    (or evaluate/predict's steps), None for one whole pass."""

    def __init__(self, x, steps=None, shuffle=False, class_weight=None, arg="x"):
        self.x, self.steps, self.arg = x, steps, arg
        self.class_weight = class_weight
        self.pydataset = isinstance(x, PyDataset)
        # an iterator (a generator) is read once; an iterable (a DataLoader) gives a new
        # pass per epoch (not iter(x) is x: that would start a DataLoader's workers)
        self.single_pass = not self.pydataset and hasattr(x, "__next__")
        if self.pydataset:
            self.num_batches = x.num_batches
            if self.num_batches is not None and (isinstance(self.num_batches, bool) or
                                                 not isinstance(self.num_batches,
                                                                (int, np.integer)) or
                                                 self.num_batches < 0):
                raise ValueError(f"{type(x).__name__}.num_batches (its __len__) must be a "
                                 f"non-negative int or None, got {self.num_batches!r}")
            if self.num_batches is None and shuffle:
                _warn("`shuffle=True` was passed, but will be ignored since the data "
                      "`x` was provided as an infinite PyDataset. The PyDataset is "
                      "expected to already be shuffled.")
                shuffle = False
            workers, procs = x.workers, x.use_multiprocessing
            if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or \
                    workers < 0:
                raise ValueError(f"PyDataset workers must be a non-negative int, got "
                                 f"{workers!r}")
            self.workers = int(workers) if workers > 1 or (workers > 0 and procs) else 0
            if self.workers and procs and \
                    "fork" not in multiprocessing.get_all_start_methods():
                raise ValueError("PyDataset(use_multiprocessing=True) needs the 'fork' start "
                                 "method (Linux, macOS), which this platform lacks; use "
                                 "threads (use_multiprocessing=False)")
        else:
            if shuffle:
                _warn(f"`shuffle=True` was passed, but will be ignored since the data "
                      f"`x` was provided as a {_kind(x)}. The {_kind(x)} is expected "
                      f"to yield already-shuffled data.")
            shuffle = False
            self.num_batches = len(x) if not self.single_pass and hasattr(x, "__len__") \
                else None
        self.shuffle = bool(shuffle)
        self._it = None             # the pass in progress
        self._seen = 0              # batches taken from it
        self._yielded = False       # any batch yet
        self.exhausted = False      # a single-pass source ran out
        self.interrupted = False    # ran out before `steps`: stop the fit after this epoch

    @property
    def epoch_steps(self):
        """Steps in one epoch when known (the progress bar's target), else None."""
        if self.steps is not None:
            return self.steps
        return self.num_batches

    def _new_pass(self):
        self._seen = 0
        if self.pydataset:
            return self._pydataset_pass()
        if self.single_pass:
            if self.exhausted:
                return iter(())
            return self.x
        return iter(self.x)

    def _pydataset_pass(self):
        ds, n = self.x, self.num_batches
        indices = range(n) if n is not None else itertools.count()
        if self.shuffle:
            indices = get_rng().permutation(n)      # the order of the batches, as Keras
        if not self.workers:
            return (ds[int(i)] for i in indices)
        return _prefetched(ds, indices, self.workers, ds.use_multiprocessing,
                           max(1, int(ds.max_queue_size or 1)))

    def epoch(self):
        """This epoch's batches, each as (x, y, sample_weight) (y, w None when absent)."""
        if self.pydataset:
            self.x.on_epoch_begin()
        try:
            if self.steps is None or self._it is None or \
                    (self.num_batches is not None and self._seen >= self.num_batches):
                self._close()
                self._it = self._new_pass()
            step = 0
            while self.steps is None or step < self.steps:
                if self.num_batches is not None and self._seen >= self.num_batches:
                    if self.steps is not None:
                        _warn(RAN_OUT)
                    break
                try:
                    batch = next(self._it)
                except StopIteration:
                    self._it = None
                    if self.single_pass:
                        self.exhausted = True
                        if self.num_batches is None:
                            self.num_batches = self._seen
                    if (self.steps is not None or step == 0) and self._yielded:
                        _warn(RAN_OUT)    # (empty: run_epoch raises)
                        self.interrupted = self.single_pass
                    break
                self._seen += 1
                self._yielded = True
                step += 1
                yield self._standardize(batch)
        finally:
            if self.pydataset:
                if self.steps is None:
                    self._close()
                self.x.on_epoch_end()

    def reset(self):
        """The next epoch starts a new pass (evaluate's rule in Keras: each validation reads
        from the first batch). A single-pass iterator reads on."""
        if not self.single_pass:
            self._close()

    def close(self):
        """Stop a pass left open (steps_per_epoch reads on across epochs)."""
        self._close()

    def _close(self):
        if self._it is not None and hasattr(self._it, "close") and self.pydataset:
            self._it.close()        # stops a prefetching pass's workers
        self._it = None

    def _standardize(self, batch):
        if isinstance(batch, list):
            batch = tuple(batch)
        if not isinstance(batch, tuple):
            return batch, None, None        # x alone (predict), an array or a dict of them
        if len(batch) not in (1, 2, 3):
            raise ValueError(f"A batch from a {_kind(self.x)} must be a tuple (input,), "
                             f"(inputs, targets) or (inputs, targets, sample_weights); got "
                             f"a tuple of {len(batch)}")
        return batch + (None,) * (3 - len(batch))


def _fetch(ds, index):
    return ds[int(index)]


_WORKER_DATASET = None


def _set_worker_dataset(ds):
    global _WORKER_DATASET
    _WORKER_DATASET = ds


def _fetch_in_worker(index):
    return _WORKER_DATASET[int(index)]


def _prefetched(ds, indices, workers, processes, queue_size):
    """ds[i] for i in indices, in order, fetched by `workers` threads (or forked processes) at
    most queue_size batches ahead. Closing the generator stops the workers."""
    if processes:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_set_worker_dataset, initargs=(ds,))
        submit = lambda i: pool.submit(_fetch_in_worker, i)       # noqa: E731
    else:
        pool = ThreadPoolExecutor(workers, thread_name_prefix="fastnn-pydataset")
        submit = lambda i: pool.submit(_fetch, ds, i)             # noqa: E731
    pending = collections.deque()
    indices = iter(indices)
    try:
        for index in itertools.islice(indices, queue_size):
            pending.append(submit(index))
        while pending:
            batch = pending.popleft().result()
            for index in itertools.islice(indices, 1):
                pending.append(submit(index))
            yield batch
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)


def source(data, steps, shuffle=False, class_weight=None, arg="x"):
    return data if isinstance(data, Batches) else Batches(data, steps, shuffle, class_weight,
                                                          arg)


# ---- the loops ----------------------------------------------------------------------------
def _prepared(model, batch, class_weight, arg):
    """A batch as the trainer's arrays: (x, targets, weights, y_shape)."""
    x, y, w = batch
    if y is None:
        raise ValueError(f"{arg}: a batch to train or evaluate on must be a tuple (inputs, "
                         f"targets) or (inputs, targets, sample_weights); got inputs alone")
    if class_weight is not None and w is not None:
        raise ValueError("You cannot specify `class_weight` and `sample_weight` at the same "
                         "time.")
    return model._prepare_xy(x, y, w, class_weight, arg=arg)


def _root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _joined(parts):
    """The arrays of parts one after another: a view when they are consecutive slices of one
    array (a PyDataset slicing arrays in memory: no copy of the data), else a copy."""
    from . import _core  # (the fused path calls this)
    first, last = parts[0], parts[-1]
    root = _root(first)
    try:
        together = _core.consecutive(parts)
    except (BufferError, TypeError, ValueError):    # (no C-contiguous buffer)
        together = False
    if together and _root(last) is root and root.flags.c_contiguous:
        start = root.ctypes.data
        # the parts lie end to end from first to last, so inside root's memory
        if start <= first.ctypes.data and last.ctypes.data + last.nbytes <= start + root.nbytes:
            rows, row_bytes = sum(len(p) for p in parts), first.itemsize * \
                math.prod(first.shape[1:])
            return np.lib.stride_tricks.as_strided(first, (rows,) + first.shape[1:],
                                                   (row_bytes,) + first.strides[1:],
                                                   writeable=False)
    return np.concatenate(parts)


def _raw(batch, runner, class_weight):
    """Whether a batch can join a chunk as it is: arrays the fused stack reads, checked
    (model._prepare_xy) once per chunk rather than once per batch."""
    x, y, w = batch
    if class_weight is not None and w is not None:
        raise ValueError("You cannot specify `class_weight` and `sample_weight` at the same "
                         "time.")
    return isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.ndim > 1 and \
        y.ndim > 0 and len(x) == len(y) and (w is None or isinstance(w, np.ndarray)) and \
        runner.accepts(x)


def run_epoch(model, batches, training, cbs, class_weight=None, arg="x"):
    """One epoch (training) or one evaluation pass over `batches`; returns the steps run.
    Where the fused C stack runs the model and no callback reads single batches, equal
    batches go to it in chunks (one call, one check of the joined arrays)."""
    kind = "train" if training else "test"
    begin, end = getattr(cbs, f"on_{kind}_batch_begin"), getattr(cbs, f"on_{kind}_batch_end")
    per_step = cbs.per_batch(kind)
    wants_end = cbs.wants(f"on_{kind}_batch_end")
    step_fn = model._train_step if training else model._test_step
    runner, chunk, step = False, [], 0

    def fused(x, y, w, batch, steps):
        """steps batches of `batch` rows (the last may be shorter), checked, in one call."""
        nonlocal step
        runner.run_epoch(x, y, w, None, steps, batch, training, None, False, model._logs, arg)
        step += steps
        if wants_end:
            end(step - 1, model._logs(wait=per_step))

    def flush():
        if chunk:
            x, y, w = (None if chunk[0][i] is None else _joined([c[i] for c in chunk])
                       for i in range(3))
            x, y, w, _ = model._prepare_xy(x, y, w, class_weight, arg=arg)
            fused(x, y, w, len(chunk[0][0]), len(chunk))
            chunk.clear()

    for batch in batches.epoch():
        if runner is not False and runner is not None and not per_step and \
                _raw(batch, runner, class_weight):
            # a chunk holds batches of one size; a shorter one ends it (the last batch)
            if chunk and len(batch[0]) > len(chunk[0][0]):
                flush()
            chunk.append(batch)
            if len(chunk) >= _CHUNK_BATCHES or len(batch[0]) < len(chunk[0][0]):
                flush()
                if training and model.stop_training:
                    break
            continue
        flush()
        x, y, w, y_shape = _prepared(model, batch, class_weight, arg)
        if runner is False:      # the first batch: the metrics and the path
            model._build_metrics(y_shape)
            if training:
                model._prepare_training()
            else:
                model._pack_parameters()
                model._mode = model._loss_mode()
            runner = DenseRunner.for_model(model, training=training)
        if per_step:
            begin(step)
        if runner is not None and runner.accepts(x):
            fused(x, y, w, len(x), 1)
        else:
            dx, dy, dw = model._to_device(x, y, w, arg)
            step_fn(model._gather("x", dx, slice(None)), model._gather("y", dy, slice(None)),
                    None if dw is None else model._gather("w", dw, slice(None)))
            step += 1
            if wants_end:
                end(step - 1, model._logs(wait=per_step))
        if training and model.stop_training:
            break
    flush()
    if runner is False and model._metrics is None:
        raise ValueError(f"{arg}: the {_kind(batches.x)} yielded no batches")
    return step


def evaluate_batches(model, batches, cbs, arg="x"):
    """evaluate's pass (or fit's validation) over batches; the training metrics are kept."""
    saved = [m.snapshot() for m in model._trackers()]
    model.reset_metrics()
    run_epoch(model, batches, False, cbs, arg=arg)
    logs = model._logs()
    for m, state in zip(model._trackers(), saved):
        m.restore(state)
    return logs


def fit(model, x, epochs, verbose, callbacks, validation_data, shuffle, class_weight,
        initial_epoch, steps_per_epoch, validation_steps, validation_freq, val_batch_size):
    """fit() on batched x. validation_data: arrays (x, y[, w]) already prepared by the trainer
    as a tuple, or a Batches source."""
    train = source(x, steps_per_epoch, shuffle, class_weight)
    cbs = callbacks_module.CallbackList(callbacks, add_history=True, add_progbar=verbose != 0,
                                        model=model, verbose=verbose, epochs=epochs,
                                        steps=train.epoch_steps)
    model.stop_training = False
    model._initial_epoch = None
    cbs.on_train_begin()
    initial_epoch = model.__dict__.pop("_initial_epoch", None) or initial_epoch
    try:
        logs = _fit_epochs(model, train, cbs, epochs, initial_epoch, class_weight,
                           validation_data, validation_steps, validation_freq, val_batch_size)
    finally:
        train.close()
        if isinstance(validation_data, Batches):
            validation_data.close()
    if epochs > 0 and model._metrics is not None:
        model.optimizer.finalize_variable_values(model._params)
    cbs.on_train_end(logs)
    return cbs.history


def _fit_epochs(model, train, cbs, epochs, initial_epoch, class_weight, validation_data,
                validation_steps, validation_freq, val_batch_size):
    logs = {}
    for epoch in range(initial_epoch, epochs):
        if train.exhausted and train.steps is None:
            _warn(RAN_OUT)   # a used-up generator: nothing for this epoch
            break
        model.reset_metrics()
        cbs.on_epoch_begin(epoch)
        run_epoch(model, train, True, cbs, class_weight)
        logs = model._logs()
        if validation_data is not None and _should_validate(epoch, validation_freq):
            cbs.on_test_begin()
            val_logs = validate(model, validation_data, val_batch_size, validation_steps, cbs)
            cbs.on_test_end(val_logs)
            logs = dict(sorted({**logs, **{"val_" + k: v for k, v in val_logs.items()}}
                               .items()))
        cbs.on_epoch_end(epoch, logs)
        if model.stop_training or train.interrupted:
            break
    return logs


def validate(model, val, batch_size, steps, cbs):
    """One validation pass: over a Batches source, or the trainer's arrays (x, y, w)."""
    if isinstance(val, Batches):
        val.reset()
        return evaluate_batches(model, val, cbs, "x_val")
    return model._evaluate_arrays(*val, batch_size, steps, cbs, arg="x_val")


def validation_source(validation_data, validation_steps, validation_batch_size):
    """validation_data when it is batched (a Batches source), else None."""
    if not is_batched(validation_data):
        return None
    check_unused(validation_data, batch_size=validation_batch_size,
                 batch_arg="validation_batch_size")
    return Batches(validation_data, validation_steps, arg="x_val")


def evaluate(model, x, verbose, steps, callbacks):
    batches = source(x, steps)
    cbs = callbacks_module.CallbackList(callbacks, add_progbar=verbose != 0, model=model,
                                        verbose=verbose, epochs=1, steps=batches.epoch_steps)
    cbs.on_test_begin()
    try:
        logs = evaluate_batches(model, batches, cbs)
    finally:
        batches.close()
    cbs.on_test_end(logs)
    return logs


def _rows(x):
    """The number of samples in a batch's inputs (an array, a list or a dict of them)."""
    first = next(iter(x.values())) if isinstance(x, dict) else \
        x[0] if isinstance(x, (list, tuple)) and x and not np.isscalar(x[0]) else x
    return max(1, int(np.shape(first)[0])) if np.ndim(first) else 1


def predict(model, x, verbose, steps, callbacks):
    """predict() on batched x: the outputs of every batch, concatenated (as Keras)."""
    batches = source(x, steps)
    cbs = callbacks_module.CallbackList(callbacks, add_progbar=verbose != 0, model=model,
                                        verbose=verbose, epochs=1, steps=batches.epoch_steps)
    cbs.on_predict_begin()
    outs = []
    try:
        for step, (bx, _, _) in enumerate(batches.epoch()):
            cbs.on_predict_batch_begin(step)
            out = model.predict(bx, batch_size=_rows(bx), verbose=0)
            outs.append(out)
            cbs.on_predict_batch_end(step, {"outputs": out})
    finally:
        batches.close()
    cbs.on_predict_end()
    if not outs:
        raise ValueError("predict: x yielded no batches")
    if isinstance(outs[0], list):       # several outputs
        return [np.concatenate(parts) for parts in zip(*outs)]
    return np.concatenate(outs)
