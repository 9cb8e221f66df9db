"""Keras's callbacks (keras/src/callbacks/): the hook protocol, History, the progress-bar
logger and the common training-control callbacks, with Keras's defaults and messages."""
import csv
import json
import math
import os
import shutil
import warnings

import numpy as np

from . import distribution
from .progbar import Progbar

_HOOKS = ("train", "test", "predict")


class Callback:
    """The base class of callbacks: hooks called during `fit`, `evaluate` and `predict`.

    Override any of `on_train_begin/end`, `on_epoch_begin/end(epoch, logs)`,
    `on_train_batch_begin/end(batch, logs)`, and their `test`/`predict` counterparts;
    `self.model` is the model being run and `logs` a dict of the current metric values.

    Example:

    ```python
    class PrintLoss(fastnn.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            print(epoch, logs["loss"])
    ```
    """
    def __init__(self):
        self.params = {}
        self._model = None

    def set_params(self, params):
        self.params = params

    def set_model(self, model):
        self._model = model

    @property
    def model(self):
        return self._model

    # Keras 3 still routes on_train_batch_* through the old on_batch_* names.
    def on_batch_begin(self, batch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs=logs)

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs=logs)

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_test_begin(self, logs=None):
        pass

    def on_test_end(self, logs=None):
        pass

    def on_predict_begin(self, logs=None):
        pass

    def on_predict_end(self, logs=None):
        pass

    def on_test_batch_begin(self, batch, logs=None):
        pass

    def on_test_batch_end(self, batch, logs=None):
        pass

    def on_predict_batch_begin(self, batch, logs=None):
        pass

    def on_predict_batch_end(self, batch, logs=None):
        pass


def _overrides(cb, hook):
    if hook in vars(cb):    # set on the instance, as LambdaCallback does
        return True
    own = getattr(type(cb), hook)
    if own is not getattr(Callback, hook):
        return True
    # on_train_batch_* fall back to on_batch_*.
    legacy = {"on_train_batch_begin": "on_batch_begin",
              "on_train_batch_end": "on_batch_end"}.get(hook)
    return legacy is not None and (legacy in vars(cb) or
                                   getattr(type(cb), legacy) is not getattr(Callback, legacy))


class CallbackList:
    """The callbacks of one fit/evaluate/predict call. Batch hooks are dispatched only to the
    callbacks that define them, and `wants(hook)` tells the training loop whether it needs to
    build batch logs at all.

    Args:
        callbacks: A list of `Callback` objects, or `None`.
        add_history: Whether to add a `History` callback when there is none. Defaults to `False`.
        add_progbar: Whether to add a progress bar. Defaults to `False`.
        model: The model the callbacks run on. Defaults to `None`.
        **params: Run parameters given to each callback (`epochs`, `steps`, `verbose`).
    """

    def __init__(self, callbacks=None, add_history=False, add_progbar=False, model=None,
                 **params):
        if callbacks is not None and not isinstance(callbacks, (list, tuple)):
            callbacks = [callbacks]
        self.callbacks = list(callbacks or [])
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be fastnn.callbacks.Callback instances, got "
                                f"{type(cb).__name__}")
        if add_history and not any(isinstance(cb, History) for cb in self.callbacks):
            self.callbacks.append(History())
        if add_progbar and not any(isinstance(cb, ProgbarLogger) for cb in self.callbacks):
            self.callbacks.append(ProgbarLogger())
        if not distribution.is_chief():
            # data-parallel ranks other than 0 print nothing and write no files (rank 0's
            # weights, optimizer state and epoch are broadcast after on_train_begin)
            self.callbacks = [cb for cb in self.callbacks if not isinstance(
                cb, (ProgbarLogger, ModelCheckpoint, BackupAndRestore, CSVLogger))]
            for cb in self.callbacks:
                if getattr(cb, "verbose", 0):
                    cb.verbose = 0
        for cb in self.callbacks:
            cb.set_model(model)
            cb.set_params(dict(params))
        self._batch_hooks = {}
        for kind in _HOOKS:
            for when in ("begin", "end"):
                hook = f"on_{kind}_batch_{when}"
                self._batch_hooks[hook] = [getattr(cb, hook) for cb in self.callbacks
                                           if _overrides(cb, hook)]

    @property
    def history(self):
        """This run's History callback (fit returns it), or None."""
        return next((cb for cb in self.callbacks if isinstance(cb, History)), None)

    def wants(self, hook):
        return bool(self._batch_hooks[hook])

    def per_batch(self, kind):
        """Whether a callback must see every batch of kind train/test/predict. The progress bar
        redraws on a clock, so it does with one call per run of batches."""
        return any(not getattr(getattr(fn, "__self__", None), "coarse_batches", False)
                   for when in ("begin", "end")
                   for fn in self._batch_hooks[f"on_{kind}_batch_{when}"])

    def batch_hooks(self, hook):
        """The callbacks' methods for a batch hook, each called as fn(batch, logs)."""
        return self._batch_hooks[hook]

    def _batch(self, hook, batch, logs):
        for fn in self._batch_hooks[hook]:
            fn(batch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._batch("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._batch("on_train_batch_end", batch, logs)

    def on_test_batch_begin(self, batch, logs=None):
        self._batch("on_test_batch_begin", batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        self._batch("on_test_batch_end", batch, logs)

    def on_predict_batch_begin(self, batch, logs=None):
        self._batch("on_predict_batch_begin", batch, logs)

    def on_predict_batch_end(self, batch, logs=None):
        self._batch("on_predict_batch_end", batch, logs)

    def on_epoch_begin(self, epoch, logs=None):
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, logs)

    def on_train_begin(self, logs=None):
        for cb in self.callbacks:
            cb.on_train_begin(logs)

    def on_train_end(self, logs=None):
        for cb in self.callbacks:
            cb.on_train_end(logs)

    def on_test_begin(self, logs=None):
        for cb in self.callbacks:
            cb.on_test_begin(logs)

    def on_test_end(self, logs=None):
        for cb in self.callbacks:
            cb.on_test_end(logs)

    def on_predict_begin(self, logs=None):
        for cb in self.callbacks:
            cb.on_predict_begin(logs)

    def on_predict_end(self, logs=None):
        for cb in self.callbacks:
            cb.on_predict_end(logs)


class History(Callback):
    """Records the epoch logs: history.history[key] is a list with one value per epoch."""

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.epoch = []
        if self.model is not None:      # fit(epochs=0) returns this fit's (empty) History
            self.model.history = self

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)
        self.model.history = self


class ProgbarLogger(Callback):
    """Prints Keras's progress bar; added automatically when verbose != 0."""
    coarse_batches = True    # see CallbackList.per_batch

    def __init__(self):
        super().__init__()
        self.progbar = None
        self._in_fit = False

    def set_params(self, params):
        super().set_params(params)
        self.verbose = 1 if params.get("verbose", 1) == "auto" else params.get("verbose", 1)
        self.epochs = params.get("epochs", 1)
        self.target = params.get("steps")

    def _reset(self):
        self.progbar = Progbar(self.target, verbose=self.verbose)
        self._seen = 0

    def _finalize(self, logs=None):
        """The last update. With data of unknown length (a generator), the steps seen make
        the target, known from the second epoch on (as Keras's)."""
        if self.target is None:
            self.target = self.progbar.target = self._seen
        self.progbar.update(self.target, logs, finalize=True)

    def on_train_begin(self, logs=None):
        self._in_fit = True

    def on_epoch_begin(self, epoch, logs=None):
        self._reset()
        if self.verbose and self.epochs > 1:
            print(f"Epoch {epoch + 1}/{self.epochs}", flush=True)

    def on_train_batch_end(self, batch, logs=None):
        self._seen = batch + 1
        if self.verbose == 1:
            self.progbar.update(batch + 1, list((logs or {}).items()), finalize=False)

    def on_epoch_end(self, epoch, logs=None):
        self._finalize(list((logs or {}).items()))

    def on_test_begin(self, logs=None):
        if not self._in_fit:
            self._reset()

    def on_test_batch_end(self, batch, logs=None):
        if not self._in_fit:
            self._seen = batch + 1
            if self.verbose == 1:
                self.progbar.update(batch + 1, list((logs or {}).items()), finalize=False)

    def on_test_end(self, logs=None):
        if not self._in_fit:
            self._finalize(list((logs or {}).items()))

    def on_predict_begin(self, logs=None):
        self._reset()

    def on_predict_batch_end(self, batch, logs=None):
        self._seen = batch + 1
        if self.verbose == 1:
            self.progbar.update(batch + 1, finalize=False)

    def on_predict_end(self, logs=None):
        self._finalize()


class MonitorCallback(Callback):
    """Shared by EarlyStopping, ModelCheckpoint and ReduceLROnPlateau: which way is better.

    Args:
        monitor: The quantity watched, a key of the epoch logs (e.g. `"val_loss"`,
            `"val_accuracy"`). Defaults to `"val_loss"`.
        mode: `"min"` (lower is better), `"max"`, or `"auto"` (from the name: max for accuracy-like
            metrics, else min). Defaults to `"auto"`.
        baseline: A value the monitored quantity must improve on, or `None`.
        min_delta: The smallest change of the monitored value that counts as an improvement.
            Defaults to `0`.
    """

    def __init__(self, monitor="val_loss", mode="auto", baseline=None, min_delta=0):
        super().__init__()
        if mode not in ("auto", "min", "max"):
            warnings.warn(f"{type(self).__name__} mode '{mode}' is unknown, fallback to auto "
                          "mode.", stacklevel=3)
            mode = "auto"
        self.monitor, self.mode = monitor, mode
        self.best = baseline
        self.min_delta = abs(min_delta)
        self._better = None

    def _direction(self):
        if self.mode != "auto":
            return self.mode
        name = self.monitor[4:] if self.monitor.startswith("val_") else self.monitor
        if name == "loss" or name.endswith("loss"):
            return "min"
        for metric in getattr(self.model, "_metrics", None) or []:
            if metric.name == name:
                return "max" if metric.direction == "up" else "min"
        raise ValueError(f"{type(self).__name__} callback received monitor={self.monitor}, "
                         "but fastnn cannot tell whether that metric should be maximized or "
                         "minimized. Pass mode='max' or mode='min'.")

    def _is_improvement(self, value, reference):
        if self._better is None:
            self._better = self._direction()
        if reference is None:
            return True
        if self._better == "min":
            return value + self.min_delta < reference
        return value - self.min_delta > reference


class EarlyStopping(MonitorCallback):
    """Stop training when a monitored quantity has stopped improving.

    Args:
        monitor: The quantity watched, a key of the epoch logs (e.g. `"val_loss"`,
            `"val_accuracy"`). Defaults to `"val_loss"`.
        min_delta: The smallest change of the monitored value that counts as an improvement.
            Defaults to `0`.
        patience: Number of epochs without improvement before acting. Defaults to `0`.
        verbose: 0: silent; 1: print a message when training stops. Defaults to `0`.
        mode: `"min"` (lower is better), `"max"`, or `"auto"` (from the name: max for accuracy-like
            metrics, else min). Defaults to `"auto"`.
        baseline: A value the monitored quantity must improve on, or `None`.
        restore_best_weights: Whether to restore the weights of the best epoch when training stops.
            Defaults to `False`.
        start_from_epoch: Number of epochs before improvements are watched. Defaults to `0`.

    Example:

    ```python
    stop = fastnn.callbacks.EarlyStopping(monitor="val_loss", patience=3)
    model.fit(x, y, validation_split=0.1, epochs=100, callbacks=[stop])
    ```
    """
    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__(monitor, mode, min_delta=min_delta)
        self.patience, self.verbose, self.baseline = patience, verbose, baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.wait = self.stopped_epoch = self.best_epoch = 0
        self.best_weights = None

    def on_train_begin(self, logs=None):
        self.wait = self.stopped_epoch = self.best_epoch = 0
        self.best = None
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None:
            warnings.warn(f"Early stopping conditioned on metric `{self.monitor}` which is not "
                          f"available. Available metrics are: {','.join(logs or {})}",
                          stacklevel=2)
            return
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights, self.best_epoch = self.model.get_weights(), epoch
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            # Only a value that also beats the baseline restarts the wait.
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print("Restoring model weights from the end of the best epoch: "
                      f"{self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(MonitorCallback):
    """Save the model (or its weights) during training, at each epoch end or every `save_freq`
    batches.

    Args:
        filepath: Where to save: a path ending in `.keras` (or `.weights.h5` with
            `save_weights_only`); it may hold format fields such as `{epoch:02d}` or
            `{val_loss:.2f}` filled from the logs.
        monitor: The quantity watched, a key of the epoch logs (e.g. `"val_loss"`,
            `"val_accuracy"`). Defaults to `"val_loss"`.
        verbose: 0: silent; 1: print a message when the callback acts. Defaults to `0`.
        save_best_only: Whether to save only when the monitored quantity improves. Defaults to
            `False`.
        save_weights_only: Whether to save only the weights (`model.save_weights`) instead of the
            whole model. Defaults to `False`.
        mode: `"min"` (lower is better), `"max"`, or `"auto"` (from the name: max for accuracy-like
            metrics, else min). Defaults to `"auto"`.
        save_freq: `"epoch"` (at each epoch end), or an int: every that many batches. Defaults to
            `"epoch"`.
        initial_value_threshold: With `save_best_only`, the value the first save must improve on, or
            `None`.
    """
    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 save_weights_only=False, mode="auto", save_freq="epoch",
                 initial_value_threshold=None):
        super().__init__(monitor, mode, initial_value_threshold)
        self.filepath = os.fspath(filepath)
        self.verbose, self.save_best_only = verbose, save_best_only
        self.save_weights_only, self.save_freq = save_weights_only, save_freq
        if save_freq != "epoch" and (isinstance(save_freq, bool) or
                                     not isinstance(save_freq, int) or save_freq < 1):
            raise ValueError(f"Unrecognized save_freq: {save_freq}. Expected save_freq are "
                             "'epoch' or a positive int")
        if save_weights_only and not self.filepath.endswith(".weights.h5"):
            raise ValueError("When using save_weights_only=True in ModelCheckpoint, the "
                             "filepath provided must end in `.weights.h5` (Keras weights "
                             f"format). Received: filepath={self.filepath}")
        if not save_weights_only and not self.filepath.endswith((".keras", ".h5")):
            raise ValueError("The filepath provided must end in `.keras` (Keras model format). "
                             f"Received: filepath={self.filepath}")
        self._batches_since_save = 0
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._batches_since_save += 1
        if self._batches_since_save >= self.save_freq:
            self._batches_since_save = 0
            self._save(self._epoch, batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, None, logs)

    def _path(self, epoch, batch, logs):
        fields = dict(logs or {})
        if batch is not None:
            fields.setdefault("batch", batch + 1)
        try:
            return self.filepath.format(epoch=epoch + 1, **fields)
        except KeyError as exc:
            raise KeyError(f'Failed to format this callback filepath: "{self.filepath}". '
                           f"Reason: {exc}") from None

    def _should_save(self, epoch, logs, path):
        if not self.save_best_only:
            if self.verbose > 0:
                print(f"\nEpoch {epoch + 1}: saving model to {path}")
            return True
        current = (logs or {}).get(self.monitor)
        if current is None:
            warnings.warn(f"Can save best model only with {self.monitor} available.",
                          stacklevel=3)
            return True
        best = "None" if self.best is None else f"{self.best:.5f}"
        if self._is_improvement(current, self.best):
            if self.verbose > 0:
                print(f"\nEpoch {epoch + 1}: {self.monitor} improved from {best} to "
                      f"{current:.5f}, saving model to {path}")
            self.best = current
            return True
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {best}")
        return False

    def _save(self, epoch, batch, logs):
        path = self._path(epoch, batch, logs)
        if os.path.isdir(path):
            raise IsADirectoryError("Please specify a non-directory filepath for "
                                    f"ModelCheckpoint. Filepath used is an existing directory: "
                                    f"{path}")
        if not self._should_save(epoch, logs, path):
            return
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        if self.save_weights_only:
            self.model.save_weights(path, overwrite=True)
        else:
            self.model.save(path, overwrite=True)


class BackupAndRestore(Callback):
    """Keras's BackupAndRestore: the model's weights with the optimizer state
    (`latest.weights.h5`) and the epoch reached (`training_metadata.json`) saved in
    backup_dir at every epoch end (or every save_freq batches); a fit that starts and finds
    them restores them and resumes at that epoch, so an interrupted run continues where it
    stopped. The backup is deleted when training ends (delete_checkpoint); double_checkpoint
    keeps the previous one too (`.bkp`), used when the latest cannot be read.

    Args:
        backup_dir: The directory holding the backup.
        save_freq: `"epoch"` (at each epoch end), or an int: every that many batches. Defaults to
            `"epoch"`.
        double_checkpoint: Whether to keep the previous backup too. Defaults to `False`.
        delete_checkpoint: Whether to delete the backup when training ends. Defaults to `True`.
    """

    def __init__(self, backup_dir, save_freq="epoch", double_checkpoint=False,
                 delete_checkpoint=True):
        super().__init__()
        if not backup_dir:
            raise ValueError("Empty `backup_dir` argument passed")
        if save_freq != "epoch" and (isinstance(save_freq, bool) or
                                     not isinstance(save_freq, int)):
            raise ValueError(f"Invalid value for argument `save_freq`. Received: "
                             f"save_freq={save_freq}. Expected either 'epoch' or an integer "
                             "value.")
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq, self.double_checkpoint = save_freq, double_checkpoint
        self.delete_checkpoint = delete_checkpoint
        self._weights_path = os.path.join(self.backup_dir, "latest.weights.h5")
        self._metadata_path = os.path.join(self.backup_dir, "training_metadata.json")
        self._batches_since_save = self._last_batch = self._current_epoch = 0

    def on_train_begin(self, logs=None):
        try:
            self._load()
        except (OSError, ValueError):
            previous = self._weights_path + ".bkp"
            if not os.path.exists(previous):
                raise
            shutil.copyfile(previous, self._weights_path)
            if os.path.exists(self._metadata_path + ".bkp"):
                shutil.copyfile(self._metadata_path + ".bkp", self._metadata_path)
            elif os.path.exists(self._metadata_path):
                os.remove(self._metadata_path)
            self._load()

    def _load(self):
        if os.path.exists(self._weights_path):
            self.model.load_weights(self._weights_path)
        if os.path.exists(self._metadata_path):
            with open(self._metadata_path) as f:
                metadata = json.load(f)
            epoch = metadata.get("epoch") if isinstance(metadata, dict) else None
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
                raise ValueError(f"{self._metadata_path}: expected {{\"epoch\": <int >= 0>, "
                                 f"...}}, got {metadata!r}")
            self.model._initial_epoch = epoch
            self._current_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        self._current_epoch, self._last_batch = epoch + 1, 0
        if self.save_freq == "epoch":
            self._save()

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._batches_since_save += batch + 1 if batch <= self._last_batch else \
            batch - self._last_batch
        self._last_batch = batch
        if self._batches_since_save >= self.save_freq:
            self._batches_since_save = 0
            self._save()

    def _save(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        if self.double_checkpoint:
            for path in (self._weights_path, self._metadata_path):
                if os.path.exists(path):
                    shutil.copyfile(path, path + ".bkp")
        self.model.save_weights(self._weights_path, overwrite=True)     # atomic
        tmp = self._metadata_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"epoch": self._current_epoch, "batch": self._last_batch}, f)
        os.replace(tmp, self._metadata_path)

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and os.path.exists(self.backup_dir):
            shutil.rmtree(self.backup_dir)


class TerminateOnNaN(Callback):
    """Stop training as soon as a batch's loss is NaN or infinite."""
    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(f"Batch {batch}: Invalid loss, terminating training")
            self.model.stop_training = True


class LambdaCallback(Callback):
    """Callback from plain functions: LambdaCallback(on_epoch_end=lambda epoch, logs: ...).

    Args:
        on_epoch_begin: `f(epoch, logs)`, or `None`.
        on_epoch_end: `f(epoch, logs)`, or `None`.
        on_train_begin: `f(logs)`, or `None`.
        on_train_end: `f(logs)`, or `None`.
        on_train_batch_begin: `f(batch, logs)`, or `None`.
        on_train_batch_end: `f(batch, logs)`, or `None`.
        **kwargs: Other hooks by name, such as `on_test_end=f`.
    """

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None,
                 on_train_end=None, on_train_batch_begin=None, on_train_batch_end=None,
                 **kwargs):
        super().__init__()
        given = dict(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end,
                     on_train_begin=on_train_begin, on_train_end=on_train_end,
                     on_train_batch_begin=on_train_batch_begin,
                     on_train_batch_end=on_train_batch_end, **kwargs)
        for name, fn in given.items():
            if fn is None:
                continue
            if not callable(getattr(Callback, name, None)) or not name.startswith("on_"):
                raise TypeError(f"LambdaCallback: unknown hook {name!r}")
            if not callable(fn):
                raise TypeError(f"LambdaCallback: {name} must be callable")
            setattr(self, name, fn)


class CSVLogger(Callback):
    """Streams the epoch logs to a CSV file: a header `epoch,<keys>` then one row per epoch.

    Args:
        filename: Path of the CSV file.
        separator: The column separator. Defaults to `","`.
        append: Whether to append to an existing file (else it is overwritten). Defaults to `False`.
    """

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename, self.sep, self.append = os.fspath(filename), separator, append
        self._file = self._writer = self._keys = None

    def on_train_begin(self, logs=None):
        has_rows = self.append and os.path.exists(self.filename) and \
            os.path.getsize(self.filename) > 0
        self._file = open(self.filename, "a" if self.append else "w", newline="")
        self._writer, self._keys = None, None
        self._append_header = not has_rows

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self._keys is None:
            self._keys = sorted(logs)
            self._writer = csv.DictWriter(self._file, fieldnames=["epoch"] + self._keys,
                                          delimiter=self.sep)
            if self._append_header:
                self._writer.writeheader()
        row = {"epoch": epoch}
        row.update({k: _csv_value(logs.get(k, "NA")) for k in self._keys})
        self._writer.writerow(row)
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
            self._file = None


def _csv_value(v):
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return v.item()
    return v


class LearningRateScheduler(Callback):
    """Sets the optimizer's learning rate at each epoch start to schedule(epoch, lr).

    Args:
        schedule: A function `schedule(epoch, lr)` returning the new learning rate (a float).
        verbose: 0: silent; 1: print the rate when it is set. Defaults to `0`.
    """

    def __init__(self, schedule, verbose=0):
        super().__init__()
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch, logs=None):
        lr = float(self.model.optimizer.learning_rate)
        try:
            lr = self.schedule(epoch, lr)
        except TypeError:   # the old one-argument form schedule(epoch)
            lr = self.schedule(epoch)
        if isinstance(lr, bool) or not isinstance(lr, (float, int, np.floating, np.integer)):
            raise ValueError(f'The output of the "schedule" function should be a float. Got: '
                             f"{lr!r}")
        self.model.optimizer.learning_rate = float(lr)
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to "
                  f"{float(lr)}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)


class ReduceLROnPlateau(MonitorCallback):
    """Reduce the learning rate when a monitored quantity has stopped improving.

    Args:
        monitor: The quantity watched, a key of the epoch logs (e.g. `"val_loss"`,
            `"val_accuracy"`). Defaults to `"val_loss"`.
        factor: The factor the learning rate is multiplied by (< 1). Defaults to `0.1`.
        patience: Number of epochs without improvement before acting. Defaults to `10`.
        verbose: 0: silent; 1: print a message when the callback acts. Defaults to `0`.
        mode: `"min"` (lower is better), `"max"`, or `"auto"` (from the name: max for accuracy-like
            metrics, else min). Defaults to `"auto"`.
        min_delta: The smallest change of the monitored value that counts as an improvement.
            Defaults to `0.0001`.
        cooldown: Number of epochs to wait after a reduction before watching again. Defaults to `0`.
        min_lr: The lower bound of the learning rate. Defaults to `0.0`.
        **kwargs: No other argument is accepted (an error names it).
    """
    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0, **kwargs):
        super().__init__(monitor, mode, min_delta=min_delta)
        if factor >= 1.0:
            raise ValueError("ReduceLROnPlateau does not support a factor >= 1.0. Received "
                             f"factor={factor}")
        if kwargs:
            raise TypeError(f"ReduceLROnPlateau: unexpected keyword argument(s) "
                            f"{sorted(kwargs)}")
        self.factor, self.patience, self.verbose = factor, patience, verbose
        self.cooldown, self.min_lr = cooldown, min_lr
        self.wait = self.cooldown_counter = 0

    def on_train_begin(self, logs=None):
        self.best, self.wait, self.cooldown_counter = None, 0, 0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        optimizer = self.model.optimizer
        logs["learning_rate"] = float(optimizer.learning_rate)
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn("Learning rate reduction is conditioned on metric "
                          f"`{self.monitor}` which is not available. Available metrics are: "
                          f"{','.join(logs)}.", stacklevel=2)
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current, self.best):
            self.best, self.wait = current, 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = float(optimizer.learning_rate)
                if old > np.float32(self.min_lr):
                    new = max(old * self.factor, self.min_lr)
                    optimizer.learning_rate = new
                    if self.verbose > 0:
                        print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate "
                              f"to {new}.")
                    self.cooldown_counter, self.wait = self.cooldown, 0
