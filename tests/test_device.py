"""Models on a device backend: weights, gradients, optimizer state, batches and metrics stay on
the device; data crosses once per fit, never per batch; results match the CPU backend; files
saved from the device load on the CPU.

Without a GPU, CupyOps runs over tests/fake_cupy.py, whose arrays NumPy cannot read and which
counts every host/device crossing, two ways: "fake-logic" (CupyOps computing through the
reference) and "fake-kernels" (its CUDA kernels, kernels.cu compiled for the CPU). "cuda" is
CuPy on a real GPU (marked gpu; skipped without one)."""
import fake_cupy
import numpy as np
import pytest
from host_kernels import HostKernelOps

import fastnn as keras
import fastnn.backend as backend
from fastnn import layers
from fastnn.backend.cpu import CpuOps
from fastnn.backend.cupy import CupyOps

DEVICES = ["fake-logic", "fake-kernels", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(params=DEVICES)
def device(request, monkeypatch):
    """Installs the device backend for the test; yields it."""
    if request.param == "fake-logic":
        ops = CupyOps(xp=fake_cupy, kernels=False)
    elif request.param == "fake-kernels":
        ops = HostKernelOps(request.getfixturevalue("host_kernels"), xp=fake_cupy)
    else:
        ops = CupyOps()
    monkeypatch.setattr(backend, "_ops", ops)
    fake_cupy.reset_counts()
    return ops


def _counted(ops):
    if ops.xp is not fake_cupy:
        pytest.skip("crossings are counted on the fake device only")


def _mlp(dropout=True):
    return keras.Sequential([
        layers.Input(shape=(12,)),
        layers.Dense(16, activation="relu"),
        layers.BatchNormalization(),
        *([layers.Dropout(0.25)] if dropout else []),
        layers.Dense(3, activation="softmax")])


def _cnn():
    return keras.Sequential([
        layers.Input(shape=(8, 8, 1)),
        layers.Conv2D(4, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.BatchNormalization(),
        layers.Flatten(),
        layers.Dense(3, activation="softmax")])


def _data(rng, shape, n=96):
    x = rng.standard_normal((n,) + shape).astype(np.float32)
    y = (x.reshape(n, -1)[:, :3].argmax(axis=1)).astype(np.int64)    # a learnable rule
    return x, y


def _crossings(model, x, y, **fit_kw):
    fake_cupy.reset_counts()
    model.fit(x, y, verbose=0, **fit_kw)
    return dict(fake_cupy.counts)


def test_fit_crosses_once_per_epoch_whatever_the_batch_count(device, rng):
    _counted(device)
    x, y = _data(rng, (12,))
    model = _mlp()
    model.compile(optimizer=keras.optimizers.Adam(clipnorm=1.0),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    few = _crossings(model, x, y, batch_size=48, epochs=1)       # 2 steps
    many = _crossings(model, x, y, batch_size=8, epochs=1)       # 12 steps
    assert few == many, (few, many)
    # x and y cross once, the epoch's shuffled order once; the epoch's logs read loss and
    # accuracy once each; nothing comes back.
    assert many == {"uploads": 3, "downloads": 0, "syncs": 2}
    two_epochs = _crossings(model, x, y, batch_size=8, epochs=2)
    assert two_epochs == {"uploads": 4, "downloads": 0, "syncs": 4}
    # Everything the step touches lives on the device.
    xp = device.xp
    assert isinstance(model._params, xp.ndarray) and isinstance(model._grads, xp.ndarray)
    assert all(isinstance(w, xp.ndarray) for w in model.weights)
    assert all(isinstance(s, xp.ndarray) for s in model.optimizer.slots.values())
    history = model.history.history
    assert all(type(v) is float for values in history.values() for v in values)


def test_progress_bar_reads_the_device_on_its_clock_not_per_batch(device, rng, capsys):
    _counted(device)
    x, y = _data(rng, (12,))
    model = _mlp(dropout=False)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    fake_cupy.reset_counts()
    model.fit(x, y, batch_size=4, epochs=1, verbose=1)      # 24 steps
    # Piped output redraws at the end only: the epoch's logs (2) and the final bar (2).
    assert fake_cupy.counts["syncs"] <= 4
    assert "loss:" in capsys.readouterr().out


def test_a_callback_reading_every_batch_gets_floats(device, rng):
    x, y = _data(rng, (12,))
    seen = []
    model = _mlp(dropout=False)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    cb = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(logs))
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[cb])
    assert len(seen) == 3 and all(type(logs["loss"]) is float for logs in seen)


def test_evaluate_and_predict_cross_once(device, rng):
    _counted(device)
    x, y = _data(rng, (8, 8, 1))
    model = _cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    fake_cupy.reset_counts()
    loss, acc = model.evaluate(x, y, batch_size=16, verbose=0)
    assert fake_cupy.counts == {"uploads": 2, "downloads": 0, "syncs": 2}
    assert type(loss) is float and 0 <= acc <= 1
    fake_cupy.reset_counts()
    out = model.predict(x, batch_size=16, verbose=0)
    assert type(out) is np.ndarray and out.shape == (96, 3) and out.dtype == np.float32
    assert fake_cupy.counts == {"uploads": 1, "downloads": 1, "syncs": 0}
    np.testing.assert_allclose(out.sum(axis=1), 1, rtol=1e-5)
    one = model(x[:1])
    assert type(one) is np.ndarray
    np.testing.assert_allclose(one, out[:1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("build,shape", [(lambda: _mlp(dropout=False), (12,)), (_cnn, (8, 8, 1))],
                         ids=["mlp", "cnn"])
def test_training_on_the_device_matches_the_cpu(device, rng, monkeypatch, build, shape):
    """Same seed, same host initializers: the device run follows the CPU run step by step."""
    x, y = _data(rng, shape)
    x_val, y_val = _data(rng, shape, 32)

    def train(ops):
        monkeypatch.setattr(backend, "_ops", ops)
        keras.utils.set_random_seed(7)
        model = build()
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        history = model.fit(x, y, batch_size=16, epochs=3, verbose=0,
                            validation_data=(x_val, y_val)).history
        return history, model.get_weights(), model.predict(x_val, verbose=0)

    dev_history, dev_weights, dev_pred = train(device)
    cpu_history, cpu_weights, cpu_pred = train(CpuOps())
    assert dev_history.keys() == cpu_history.keys()
    for key in cpu_history:
        np.testing.assert_allclose(dev_history[key], cpu_history[key], rtol=1e-4, atol=1e-5,
                                   err_msg=key)
    for dw, cw in zip(dev_weights, cpu_weights):
        assert type(dw) is np.ndarray
        np.testing.assert_allclose(dw, cw, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(dev_pred, cpu_pred, rtol=1e-3, atol=1e-5)
    assert dev_history["loss"][-1] < dev_history["loss"][0]


def test_saved_on_the_device_loads_on_the_cpu(device, rng, monkeypatch, tmp_path):
    x, y = _data(rng, (8, 8, 1))
    model = _cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    want = model.predict(x, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    monkeypatch.setattr(backend, "_ops", CpuOps())
    loaded = keras.models.load_model(path)
    assert all(type(w) is np.ndarray for w in loaded.weights)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), want, rtol=1e-4, atol=1e-6)
    # ... and the optimizer state came along: one more step agrees on both backends.
    monkeypatch.setattr(backend, "_ops", device)
    again = keras.models.load_model(path)
    assert all(isinstance(w, device.xp.ndarray) for w in again.weights)
    np.testing.assert_allclose(again.predict(x, verbose=0), want, rtol=1e-4, atol=1e-6)


def test_weights_in_and_out_are_numpy(device):
    dense = layers.Dense(2)
    dense.build((None, 3))
    assert isinstance(dense.kernel, device.xp.ndarray)
    dense.set_weights([np.ones((3, 2)), np.arange(2.0)])
    kernel, bias = dense.get_weights()
    assert type(kernel) is np.ndarray and kernel.dtype == np.float32
    np.testing.assert_array_equal(bias, [0, 1])
    dense.set_weights([dense.kernel * 2, dense.bias])      # device arrays are taken as they are
    np.testing.assert_array_equal(dense.get_weights()[0], 2)
    np.testing.assert_allclose(dense(np.ones((1, 3), np.float32)), [[6, 7]])


def test_dropout_is_seeded_on_the_device(device):
    x = np.ones((64, 50), np.float32)

    def masks():
        keras.utils.set_random_seed(3)
        d = layers.Dropout(0.5)
        d.build((None, 50))
        xd = device.asarray(x)
        return [device.to_numpy(d.forward(xd, training=True)) != 0 for _ in range(2)]

    first, second = masks(), masks()
    np.testing.assert_array_equal(first[0], second[0])      # reproducible under the seed
    assert (first[0] != first[1]).any()                      # a new mask every step
    assert abs(first[0].mean() - 0.5) < 0.05


def test_a_device_label_out_of_range_makes_the_loss_nan(device):
    probs = device.asarray(np.full((3, 4), 0.25, np.float32))
    labels = device.asarray(np.array([0, 4, 1], np.int32), np.int32)
    total = device.softmax_xent_sparse(probs, labels, None, 1.0)
    assert np.isnan(float(total))
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, 4\)"):
        device.softmax_xent_sparse(probs, np.array([0, 4, 1], np.int32), None, 1.0)


def test_data_too_big_for_the_device_crosses_batch_by_batch(device, rng, monkeypatch):
    """When x, y do not fit in half the free device memory they stay on the host: each batch
    is gathered there and crosses once, and training gives the same result."""
    _counted(device)
    x, y = _data(rng, (12,))

    def train(free):
        monkeypatch.setattr(device, "free_memory", lambda: free)
        keras.utils.set_random_seed(5)
        model = _mlp(dropout=False)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        fake_cupy.reset_counts()
        history = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
        return history["loss"], dict(fake_cupy.counts)

    resident, counts = train(None)
    assert counts["uploads"] == 3
    streamed, counts = train(2 * (x.nbytes + y.size * 4) - 1)
    assert counts == {"uploads": 2 * 6, "downloads": 0, "syncs": 1}     # x and y, 6 batches
    np.testing.assert_allclose(streamed, resident, rtol=1e-6)


def test_large_host_arrays_cross_in_slices(device, rng, monkeypatch):
    _counted(device)
    import fastnn.backend.cupy as cupy_backend
    monkeypatch.setattr(cupy_backend, "_STAGING_BYTES", 1000)
    x = rng.standard_normal((50, 12))              # float64, 4.8 kB: slices of 10 rows
    fake_cupy.reset_counts()
    on_device = device.asarray(x)
    assert fake_cupy.counts["uploads"] == 5 and on_device.dtype == np.float32
    np.testing.assert_array_equal(device.to_numpy(on_device), x.astype(np.float32))


def test_a_callback_reading_every_predict_batch_gets_numpy(device, rng):
    x, _ = _data(rng, (12,))
    model = _mlp(dropout=False)
    seen = []
    cb = keras.callbacks.LambdaCallback(
        on_predict_batch_end=lambda b, logs: seen.append(logs["outputs"]))
    out = model.predict(x, batch_size=32, verbose=0, callbacks=[cb])
    assert len(seen) == 3 and all(type(o) is np.ndarray for o in seen)
    np.testing.assert_array_equal(np.concatenate(seen), out)


def test_host_and_device_batches_never_share_a_buffer(device, rng, monkeypatch):
    """A fit streaming from the host, then one from the device, on one model."""
    x, y = _data(rng, (12,))
    model = _mlp(dropout=False)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    monkeypatch.setattr(device, "free_memory", lambda: 0)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    monkeypatch.setattr(device, "free_memory", lambda: None)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    monkeypatch.setattr(device, "free_memory", lambda: 0)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(model.history.history["loss"]).all()
