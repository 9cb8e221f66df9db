"""Callbacks (docs/keras-semantics.md §8-§9): the hook order in fit, History, EarlyStopping,
ModelCheckpoint, CSVLogger, LambdaCallback, TerminateOnNaN, LearningRateScheduler and
ReduceLROnPlateau, compared with Keras's own callbacks where it is installed."""
import csv
import math
import os

import numpy as np
import pytest

import fastnn as keras
from fastnn import callbacks
from fastnn.layers import Dense
from fastnn.models import Sequential, load_model


def blobs(rng, n=120, d=4, classes=3):
    centers = rng.standard_normal((classes, d)) * 3
    y = rng.integers(0, classes, n)
    return (centers[y] + rng.standard_normal((n, d))).astype(np.float32), y


def model(lr=0.02, **kw):
    m = Sequential([Dense(8, activation="relu", input_shape=(4,)),
                    Dense(3, activation="softmax")])
    m.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"], **kw)
    return m


class Recorder(callbacks.Callback):
    """Records every hook call as (hook name, epoch or batch index if any)."""

    def __init__(self):
        super().__init__()
        self.calls = []


def _recording_hook(name):
    def hook(self, *args, logs=None):
        self.calls.append((name,) + tuple(a for a in args if isinstance(a, int)))
    return hook


for _name in [n for n in vars(callbacks.Callback) if n.startswith("on_")
              and n not in ("on_batch_begin", "on_batch_end")]:
    setattr(Recorder, _name, _recording_hook(_name))


def test_fit_hook_order_and_params(rng):
    x, y = blobs(rng, n=40)
    rec = Recorder()
    m = model()
    m.fit(x, y, batch_size=16, epochs=2, validation_split=0.25, verbose=0, callbacks=[rec])
    # 30 training samples -> 2 steps per epoch; validation (10 samples, one batch) calls the
    # test hooks before each epoch ends, as Keras does.
    expected = [("on_train_begin",)]
    for epoch in range(2):
        expected += [("on_epoch_begin", epoch)]
        for step in range(2):
            expected += [("on_train_batch_begin", step), ("on_train_batch_end", step)]
        expected += [("on_test_begin",), ("on_test_batch_begin", 0), ("on_test_batch_end", 0),
                     ("on_test_end",)]
        expected += [("on_epoch_end", epoch)]
    expected += [("on_train_end",)]
    assert rec.calls == expected
    assert rec.params == {"verbose": 0, "epochs": 2, "steps": 2}
    assert rec.model is m


def test_batch_logs_are_running_epoch_means(rng):
    x, y = blobs(rng, n=40)
    seen = []
    cb = callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(dict(logs)),
                                  on_epoch_end=lambda e, logs: seen.append(dict(logs)))
    m, twin = model(), model()
    twin.set_weights(m.get_weights())
    m.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[cb])
    assert sorted(seen[0]) == ["accuracy", "loss"] and len(seen) == 4
    assert seen[-2] == seen[-1]           # the last batch's running means are the epoch logs
    # The same steps one at a time: each batch's loss before its update, then running means.
    total = count = 0.0
    for step, start in enumerate(range(0, 40, 16)):
        xb, yb = x[start:start + 16], y[start:start + 16]
        total += twin.test_on_batch(xb, yb)[0] * len(xb)
        count += len(xb)
        twin.train_on_batch(xb, yb)
        assert seen[step]["loss"] == pytest.approx(total / count, rel=1e-5)


def test_history_is_fresh_per_fit_and_set_on_model(rng):
    x, y = blobs(rng)
    m = model()
    h1 = m.fit(x, y, epochs=2, verbose=0)
    h2 = m.fit(x, y, epochs=3, initial_epoch=1, verbose=0)
    assert h1 is not h2 and m.history is h2
    assert h1.epoch == [0, 1] and h2.epoch == [1, 2]
    assert len(h2.history["loss"]) == 2 and h2.params["epochs"] == 3


@pytest.mark.parametrize("kw,values", [
    (dict(patience=0), [1.0, 0.9, 0.95, 0.8]),
    (dict(patience=2), [1.0, 0.9, 0.95, 0.92, 0.91, 0.5]),
    (dict(patience=1, min_delta=0.2), [1.0, 0.85, 0.7, 0.65, 0.6]),
    (dict(patience=1, baseline=0.5), [1.0, 0.9, 0.8, 0.7]),
    (dict(patience=1, start_from_epoch=2), [1.0, 2.0, 3.0, 4.0, 5.0]),
    (dict(patience=1, mode="max", monitor="val_accuracy"), [0.5, 0.6, 0.55, 0.54, 0.7]),
])
def test_early_stopping_decisions_match_keras(kw, values):
    kcb = pytest.importorskip("keras").callbacks
    monitor = kw.get("monitor", "val_loss")

    class Holder:
        stop_training = False
        metrics = []

        def get_weights(self):
            return []

    def run(cb):
        holder = Holder()
        cb.set_model(holder)
        cb.on_train_begin()
        stopped = None
        for epoch, v in enumerate(values):
            cb.on_epoch_end(epoch, {monitor: v})
            if holder.stop_training:
                stopped = epoch
                break
        return stopped, cb.best, cb.wait

    assert run(callbacks.EarlyStopping(**kw)) == run(kcb.EarlyStopping(**kw))


def test_early_stopping_restores_best_weights_in_fit(rng):
    x, y = blobs(rng)
    m = model()
    snapshots = []
    losses = iter([0.5, 0.4, 0.45, 0.6, 0.7, 0.8])
    # Feed a scripted val_loss through the logs, so the best epoch is known (epoch index 1).
    scripted = callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: (logs.__setitem__("val_loss", next(losses)),
                                      snapshots.append(m.get_weights())))
    stop = callbacks.EarlyStopping(patience=2, restore_best_weights=True)
    hist = m.fit(x, y, epochs=6, verbose=0, callbacks=[scripted, stop])
    assert hist.epoch == [0, 1, 2, 3]
    assert stop.stopped_epoch == 3 and stop.best_epoch == 1
    for a, b in zip(m.get_weights(), snapshots[1]):
        np.testing.assert_array_equal(a, b)


def test_early_stopping_missing_metric_warns_and_trains_on(rng):
    x, y = blobs(rng)
    m = model()
    with pytest.warns(UserWarning, match="val_loss"):
        hist = m.fit(x, y, epochs=3, verbose=0, callbacks=[callbacks.EarlyStopping()])
    assert hist.epoch == [0, 1, 2]


def test_model_checkpoint_best_only_and_formatting(tmp_path, rng):
    x, y = blobs(rng)
    m = model()
    vals = iter([0.9, 0.8, 0.85, 0.7])
    scripted = callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: logs.__setitem__("val_loss", next(vals)))
    pattern = str(tmp_path / "ck" / "m-{epoch:02d}-{val_loss:.2f}.keras")
    ck = callbacks.ModelCheckpoint(pattern, save_best_only=True)
    m.fit(x, y, epochs=4, verbose=0, callbacks=[scripted, ck])
    assert sorted(os.listdir(tmp_path / "ck")) == ["m-01-0.90.keras", "m-02-0.80.keras",
                                                  "m-04-0.70.keras"]
    last = load_model(tmp_path / "ck" / "m-04-0.70.keras")
    for a, b in zip(last.get_weights(), m.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode, monitor, threshold, saved", [
    ("max", "val_loss", None, [1, 3]),           # max of a loss when told so
    ("auto", "val_accuracy", None, [1, 3]),      # auto: an accuracy goes up
    ("min", "val_accuracy", None, [1, 2, 4]),
    ("auto", "val_accuracy", 0.85, [3]),         # initial_value_threshold: beat it first
])
def test_model_checkpoint_modes(tmp_path, rng, capsys, mode, monitor, threshold, saved):
    """Keras's modes: which epochs save with save_best_only, and its verbose lines."""
    x, y = blobs(rng)
    m = model()
    vals = iter([0.8, 0.7, 0.9, 0.6])
    scripted = callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: logs.__setitem__(monitor, next(vals)))
    ck = callbacks.ModelCheckpoint(str(tmp_path / "m-{epoch}.keras"), monitor=monitor,
                                   save_best_only=True, mode=mode, verbose=1,
                                   initial_value_threshold=threshold)
    m.fit(x, y, epochs=4, verbose=0, callbacks=[scripted, ck])
    assert sorted(os.listdir(tmp_path)) == [f"m-{e}.keras" for e in saved]
    out = capsys.readouterr().out
    assert f"Epoch {saved[-1]}: {monitor} improved from" in out
    assert f"{monitor} did not improve from" in out


def test_model_checkpoint_weights_only_every_n_batches(tmp_path, rng):
    x, y = blobs(rng, n=64)
    m = model()
    path = tmp_path / "w-{epoch}-{batch}.weights.h5"
    m.fit(x, y, batch_size=16, epochs=1, verbose=0,
          callbacks=[callbacks.ModelCheckpoint(path, save_weights_only=True, save_freq=2)])
    assert sorted(os.listdir(tmp_path)) == ["w-1-2.weights.h5", "w-1-4.weights.h5"]


def test_model_checkpoint_rejects_bad_paths(tmp_path):
    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        callbacks.ModelCheckpoint(tmp_path / "w.keras", save_weights_only=True)
    with pytest.raises(ValueError, match=r"\.keras"):
        callbacks.ModelCheckpoint(tmp_path / "m.bin")
    with pytest.raises(ValueError, match="save_freq"):
        callbacks.ModelCheckpoint(tmp_path / "m.keras", save_freq="batch")


def test_csv_logger_writes_and_appends(tmp_path, rng):
    x, y = blobs(rng)
    m = model()
    path = tmp_path / "log.csv"
    hist = m.fit(x, y, epochs=2, validation_split=0.25, verbose=0,
                 callbacks=[callbacks.CSVLogger(path)])
    m.fit(x, y, epochs=1, verbose=0, callbacks=[callbacks.CSVLogger(path, append=True)])
    rows = list(csv.reader(open(path)))
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert len(rows) == 4 and [r[0] for r in rows[1:]] == ["0", "1", "0"]
    assert float(rows[2][2]) == pytest.approx(hist.history["loss"][1], rel=1e-12)


def test_terminate_on_nan_stops_the_epoch(rng):
    x, y = blobs(rng)
    m = Sequential([Dense(1, input_shape=(4,))])
    m.compile(optimizer=keras.optimizers.SGD(1e30), loss="mse")
    hist = m.fit(x * 1e20, y.astype(np.float32), batch_size=4, epochs=3, verbose=0,
                 callbacks=[callbacks.TerminateOnNaN()])
    assert len(hist.epoch) == 1 and not math.isfinite(hist.history["loss"][0])


def test_learning_rate_scheduler_sets_and_logs_rate(rng):
    x, y = blobs(rng)
    m = model(lr=0.01)
    sched = callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5 if epoch else lr)
    hist = m.fit(x, y, epochs=3, verbose=0, callbacks=[sched])
    assert hist.history["learning_rate"] == pytest.approx([0.01, 0.005, 0.0025])
    one_arg = callbacks.LearningRateScheduler(lambda epoch: 0.1 / (epoch + 1))
    m.fit(x, y, epochs=2, verbose=0, callbacks=[one_arg])
    assert m.optimizer.learning_rate == pytest.approx(0.05)
    with pytest.raises(ValueError, match="float"):
        m.fit(x, y, epochs=1, verbose=0,
              callbacks=[callbacks.LearningRateScheduler(lambda e, lr: "fast")])


def test_reduce_lr_on_plateau_matches_keras():
    kcb = pytest.importorskip("keras").callbacks
    values = [1.0, 0.99995, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0, 0.5, 0.6, 0.7]

    class Opt:
        learning_rate = 0.1

    class Holder:
        stop_training = False
        metrics = []

        def __init__(self):
            self.optimizer = Opt()

    def run(cb):
        holder = Holder()
        cb.set_model(holder)
        cb.on_train_begin()
        rates = []
        for epoch, v in enumerate(values):
            logs = {"val_loss": v}
            cb.on_epoch_end(epoch, logs)
            rates.append(float(holder.optimizer.learning_rate))
        return rates

    kw = dict(factor=0.5, patience=2, cooldown=1, min_lr=0.02)
    ours, theirs = run(callbacks.ReduceLROnPlateau(**kw)), run(kcb.ReduceLROnPlateau(**kw))
    assert ours == pytest.approx(theirs)
    assert min(ours) == pytest.approx(0.02) and ours[0] == 0.1


def test_reduce_lr_on_plateau_in_fit_changes_the_optimizer(rng):
    x, y = blobs(rng)
    m = model(lr=0.01)
    frozen = callbacks.LambdaCallback(on_epoch_end=lambda e, logs: logs.__setitem__("val_loss",
                                                                                   1.0))
    hist = m.fit(x, y, epochs=4, verbose=0,
                 callbacks=[frozen, callbacks.ReduceLROnPlateau(patience=1, factor=0.5)])
    assert hist.history["learning_rate"] == pytest.approx([0.01, 0.01, 0.005, 0.0025])
    assert m.optimizer.learning_rate == pytest.approx(0.00125)


def test_lambda_callback_and_legacy_batch_hooks(rng):
    x, y = blobs(rng, n=32)
    counts = {"begin": 0, "batch": 0, "legacy": 0}

    class Legacy(callbacks.Callback):
        def on_batch_end(self, batch, logs=None):
            counts["legacy"] += 1

    cb = callbacks.LambdaCallback(on_train_begin=lambda logs: counts.__setitem__("begin", 1),
                                  on_train_batch_end=lambda b, logs: counts.__setitem__(
                                      "batch", counts["batch"] + 1))
    model().fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[cb, Legacy()])
    assert counts == {"begin": 1, "batch": 8, "legacy": 8}
    with pytest.raises(TypeError, match="callable"):
        callbacks.LambdaCallback(on_epoch_end=3)
    with pytest.raises(TypeError, match="Callback"):
        model().fit(x, y, verbose=0, callbacks=[lambda: None])


def test_evaluate_and_predict_callbacks(rng):
    x, y = blobs(rng, n=40)
    m = model()
    rec = Recorder()
    m.evaluate(x, y, batch_size=16, verbose=0, callbacks=[rec])
    assert rec.calls == [("on_test_begin",), ("on_test_batch_begin", 0),
                         ("on_test_batch_end", 0), ("on_test_batch_begin", 1),
                         ("on_test_batch_end", 1), ("on_test_batch_begin", 2),
                         ("on_test_batch_end", 2), ("on_test_end",)]
    rec.calls.clear()
    m.predict(x, batch_size=32, verbose=0, callbacks=[rec])
    assert rec.calls == [("on_predict_begin",), ("on_predict_batch_begin", 0),
                         ("on_predict_batch_end", 0), ("on_predict_batch_begin", 1),
                         ("on_predict_batch_end", 1), ("on_predict_end",)]


def _keras_recorder(K):
    class Hooks(K.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.calls = []
    for name in [n for n in dir(callbacks.Callback) if n.startswith("on_")
                 and n not in ("on_batch_begin", "on_batch_end")]:
        def hook(self, *args, _name=name, **kwargs):
            logs = kwargs.get("logs", next((a for a in args if isinstance(a, dict)), None))
            self.calls.append((_name,) + tuple(a for a in args if isinstance(a, int)) +
                              (tuple(sorted(logs or {})),))
        setattr(Hooks, name, hook)
    return Hooks()


def test_every_hook_in_keras_s_order_with_keras_s_logs():
    """fit with validation, evaluate and predict: the same hooks, in the same order, with
    the same log keys as Keras's."""
    real = pytest.importorskip("keras")
    rng = np.random.default_rng(8)
    x, y = rng.random((40, 4)).astype(np.float32), rng.integers(0, 3, 40)
    seen = {}
    for K in (real, keras):
        m = K.Sequential([K.Input(shape=(4,)), K.layers.Dense(3, activation="softmax")])
        m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        rec = _keras_recorder(K)
        m.fit(x, y, batch_size=16, epochs=2, validation_split=0.25, verbose=0, callbacks=[rec])
        m.evaluate(x, y, batch_size=32, verbose=0, callbacks=[rec])
        m.predict(x, batch_size=32, verbose=0, callbacks=[rec])
        seen[K] = rec.calls
    theirs, ours = seen[real], seen[keras]
    assert [c[:-1] for c in ours] == [c[:-1] for c in theirs]
    for mine, their in zip(ours, theirs):
        if their[-1]:       # (Keras passes some hooks no logs at all, fastnn an empty dict)
            assert mine[-1] == their[-1], mine


def test_backup_and_restore_resumes_an_interrupted_fit(tmp_path, rng):
    """A fit that dies in its third epoch and is run again with the same backup_dir resumes
    at the third epoch from the saved weights and optimizer state: the same weights as an
    uninterrupted fit; the backup is gone once training ends."""
    x, y = blobs(rng, n=64)
    backup = tmp_path / "backup"

    class Crash(callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("power cut")

    keras.utils.set_random_seed(3)
    reference = model()
    start = reference.get_weights()
    reference.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0)

    interrupted = model()
    interrupted.set_weights(start)
    with pytest.raises(RuntimeError, match="power cut"):
        interrupted.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
                        callbacks=[callbacks.BackupAndRestore(backup), Crash()])
    assert sorted(os.listdir(backup)) == ["latest.weights.h5", "training_metadata.json"]
    resumed = model()       # a new process would start from scratch
    history = resumed.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
                          callbacks=[callbacks.BackupAndRestore(backup)])
    assert history.epoch == [2, 3]
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert resumed.optimizer.iterations == reference.optimizer.iterations
    assert not backup.exists()


def test_backup_and_restore_every_n_batches_and_double_checkpoint(tmp_path, rng):
    x, y = blobs(rng, n=64)
    backup = tmp_path / "b"
    cb = callbacks.BackupAndRestore(backup, save_freq=3, double_checkpoint=True,
                                    delete_checkpoint=False)
    model().fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[cb])
    assert sorted(os.listdir(backup)) == ["latest.weights.h5", "latest.weights.h5.bkp",
                                          "training_metadata.json",
                                          "training_metadata.json.bkp"]
    import json
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 1
    (backup / "latest.weights.h5").write_bytes(b"truncated")     # falls back to the .bkp
    again = model()
    again.fit(x, y, batch_size=16, epochs=2, verbose=0,
              callbacks=[callbacks.BackupAndRestore(backup, delete_checkpoint=False)])
    with pytest.raises(ValueError, match="save_freq"):
        callbacks.BackupAndRestore(backup, save_freq="batch")
    with pytest.raises(ValueError, match="Empty `backup_dir`"):
        callbacks.BackupAndRestore("")
