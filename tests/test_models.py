"""Sequential API behaviours from docs/keras-semantics.md §1, §8, §10, §11 and bad-input
handling."""
import os

import numpy as np
import pytest

import fastnn as keras
from fastnn.layers import Dense, Dropout, Flatten, Input
from fastnn.models import Sequential, load_model


def blobs(rng, n=200, d=4, classes=3):
    centers = rng.standard_normal((classes, d)) * 3
    y = rng.integers(0, classes, n)
    x = (centers[y] + rng.standard_normal((n, d))).astype(np.float32)
    return x, y


def small_model(d=4, classes=3, **compile_kw):
    m = Sequential([Dense(8, activation="relu", input_shape=(d,)),
                    Dense(classes, activation="softmax")])
    m.compile(**{"optimizer": "adam", "loss": "sparse_categorical_crossentropy",
                 "metrics": ["accuracy"], **compile_kw})
    return m


def test_build_modes_and_names():
    a = Sequential([Input(shape=(5,)), Dense(3)])
    assert a.built and a.name == "sequential" and a.output_shape == (None, 3)
    b = Sequential()
    b.add(Dense(4, input_dim=5))
    assert b.built and b.layers[0].name == "dense_1"
    c = Sequential([Dense(2)])
    assert not c.built
    c.build((None, 7))
    assert c.count_params() == 16
    d = Sequential([Dense(2)], name="mine")
    assert d.name == "mine" and not d.built
    d(np.zeros((1, 3)))                       # lazily built on first call
    assert d.built and d.layers[0].kernel.shape == (3, 2)
    assert b.pop().name == "dense_1" and b.layers == []


def test_fit_history_keys_and_learning(rng):
    x, y = blobs(rng)
    m = small_model(optimizer=keras.optimizers.Adam(0.02))
    hist = m.fit(x, y, epochs=5, batch_size=16, validation_split=0.25, verbose=0)
    assert list(hist.history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert hist.epoch == [0, 1, 2, 3, 4]
    assert m.history is hist
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert hist.history["accuracy"][-1] > 0.8


def test_validation_split_takes_last_fraction_unshuffled(rng):
    x, y = blobs(rng, n=10)
    m = small_model()
    seen = []
    orig = m._evaluate_arrays

    def spy(xv, yv, *args, **kwargs):
        seen.append((xv.copy(), yv.copy()))
        return orig(xv, yv, *args, **kwargs)

    m._evaluate_arrays = spy
    m.fit(x, y, epochs=1, validation_split=0.3, verbose=0)
    np.testing.assert_array_equal(seen[0][0], x[7:])
    np.testing.assert_array_equal(seen[0][1], y[7:])
    with pytest.raises(ValueError, match="validation_split"):
        m.fit(x, y, validation_split=1.0, verbose=0)
    with pytest.raises(ValueError, match="empty"):
        m.fit(x[:1], y[:1], validation_split=0.5, verbose=0)


def test_epoch_loss_is_batch_size_weighted_running_mean(rng):
    x, y = blobs(rng, n=50)
    m = small_model(optimizer=keras.optimizers.SGD(learning_rate=0.0))  # weights never move
    h = m.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    # With lr=0 every batch sees the same weights, so the epoch mean equals evaluate's loss.
    assert h.history["loss"][0] == pytest.approx(m.evaluate(x, y, verbose=0)[0], rel=1e-6)


def test_evaluate_and_predict_return_types(rng):
    x, y = blobs(rng, n=70)
    m = small_model()
    m.fit(x, y, epochs=1, verbose=0)
    res = m.evaluate(x, y, verbose=0)
    assert isinstance(res, list) and len(res) == 2
    assert set(m.evaluate(x, y, verbose=0, return_dict=True)) == {"accuracy", "loss"}
    m2 = small_model(metrics=None)
    assert isinstance(m2.evaluate(x, y, verbose=0), float)
    p = m.predict(x, verbose=0, batch_size=32)        # 70 = 2 full batches + 6: last kept
    assert p.shape == (70, 3) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)
    np.testing.assert_allclose(m(x[:5]), p[:5], rtol=1e-6)
    np.testing.assert_allclose(m.predict_on_batch(x[:5]), p[:5], rtol=1e-6)


def test_direct_call_returns_independent_arrays(rng):
    m = small_model()
    a = m(np.ones((2, 4)))
    b = m(np.zeros((2, 4)))
    assert not np.allclose(a, b)


def test_train_and_test_on_batch(rng):
    x, y = blobs(rng, n=32)
    m = small_model()
    loss, acc = m.train_on_batch(x, y)
    assert loss > 0 and 0 <= acc <= 1
    logs = m.test_on_batch(x, y, return_dict=True)
    assert set(logs) == {"loss", "accuracy"}


def test_inputs_of_any_dtype_and_layout_are_accepted(rng):
    x, y = blobs(rng, n=40)
    m = small_model()
    m.fit(np.asfortranarray(x.astype(np.float64)), y.astype(np.int64), epochs=1, verbose=0)
    m.fit(x[::1, ::1].T.copy().T, y.astype(np.uint8), epochs=1, verbose=0)
    m.fit((np.abs(x) * 10).astype(np.uint8), y, epochs=1, verbose=0)
    m.fit(x.astype(np.int32), y.astype(np.float32), epochs=1, verbose=0)


def _assert_unchanged(m, before):
    for a, b in zip(m.get_weights(), before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad,match", [
    (dict(x=np.zeros((10, 5))), r"x has shape \(10, 5\).*expects input shape \(None, 4\)"),
    (dict(x=np.zeros((10, 4, 1))), r"x has shape \(10, 4, 1\)"),
    (dict(y=np.zeros(9, int)), "same number of samples"),
    (dict(y=np.full(10, 3)), r"labels must be in \[0, 3\)"),
    (dict(y=np.full(10, 0.5)), "integers"),
    (dict(x=np.full((10, 4), np.nan)), "NaN"),
    (dict(x=np.zeros((0, 4)), y=np.zeros(0, int)), "empty"),
    (dict(batch_size=0), "batch_size"),
    (dict(validation_split=-0.1), "validation_split"),
])
def test_bad_fit_input_raises_and_leaves_model_unchanged(rng, bad, match):
    m = small_model()
    before = m.get_weights()
    args = dict(x=rng.standard_normal((10, 4)), y=np.zeros(10, int), verbose=0)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        m.fit(**args)
    _assert_unchanged(m, before)


def test_one_hot_targets_with_wrong_width():
    m = Sequential([Dense(3, activation="softmax", input_shape=(4,))])
    m.compile(loss="categorical_crossentropy")
    with pytest.raises(ValueError, match=r"shape \(n, 3\).*\(10, 4\)"):
        m.fit(np.zeros((10, 4)), np.eye(4)[np.zeros(10, int)], verbose=0)


def test_fit_before_compile_and_unknown_names():
    m = Sequential([Dense(3, input_shape=(4,))])
    with pytest.raises(ValueError, match="compile"):
        m.fit(np.zeros((2, 4)), np.zeros(2), verbose=0)
    with pytest.raises(ValueError, match="compile"):
        m.evaluate(np.zeros((2, 4)), np.zeros(2), verbose=0)
    with pytest.raises(ValueError, match="Unknown loss"):
        m.compile(loss="nope")
    with pytest.raises(ValueError, match="Unknown optimizer"):
        m.compile(optimizer="nope", loss="mse")
    with pytest.raises(ValueError, match="Unknown metric"):
        m.compile(loss="mse", metrics=["nope"])


def test_model_set_weights_validation_is_atomic():
    m = small_model()
    w = m.get_weights()
    assert [a.shape for a in w] == [(4, 8), (8,), (8, 3), (3,)]
    with pytest.raises(ValueError, match="expects 4 weight arrays"):
        m.set_weights(w[:3])
    bad = [np.ones_like(w[0]), np.ones_like(w[1]), np.ones((3, 3)), w[3]]
    with pytest.raises(ValueError, match=r"dense_1.*expected shape \(8, 3\)"):
        m.set_weights(bad)
    _assert_unchanged(m, w)


def test_weights_properties_and_get_layer():
    m = small_model()
    assert len(m.trainable_weights) == 4 and m.non_trainable_weights == []
    assert m.get_layer("dense_1") is m.layers[1]
    assert m.get_layer(index=0) is m.layers[0]
    with pytest.raises(ValueError, match="No such layer"):
        m.get_layer("zzz")
    m.layers[0].trainable = False
    assert len(m.trainable_weights) == 2 and len(m.non_trainable_weights) == 2


def test_frozen_layer_does_not_change(rng):
    x, y = blobs(rng, n=64)
    m = small_model()
    m.layers[0].trainable = False
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    frozen = m.layers[0].get_weights()
    m.fit(x, y, epochs=2, verbose=0)
    for a, b in zip(m.layers[0].get_weights(), frozen):
        np.testing.assert_array_equal(a, b)


def test_summary_matches_keras_format():
    m = Sequential([Dense(64, activation="relu", input_shape=(20,)), Dense(1)])
    lines = []
    m.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert 'Model: "sequential"' in text
    assert "dense (Dense)" in text and "(None, 64)" in text and "1,344" in text
    assert "Total params: 1,409 (5.50 KB)" in text
    assert "Non-trainable params: 0 (0.00 B)" in text


def test_unbuilt_summary():
    m = Sequential([Dense(3)])
    lines = []
    m.summary(print_fn=lines.append)
    assert "0 (unbuilt)" in "\n".join(lines)


def test_predict_on_unbuilt_model_builds_it(rng):
    m = Sequential([Flatten(), Dense(2)])
    p = m.predict(np.ones((3, 2, 2)), verbose=0)
    assert p.shape == (3, 2) and m.built


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_save_load_round_trip_is_bit_exact(tmp_path, rng, suffix):
    x, y = blobs(rng, n=64)
    m = small_model()
    m.fit(x, y, epochs=2, verbose=0)
    path = tmp_path / f"model{suffix}"
    m.save(path)
    m2 = load_model(path)
    for a, b in zip(m.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(m.optimizer.variables(), m2.optimizer.variables()):
        np.testing.assert_array_equal(a, b)
    assert [layer.name for layer in m2.layers] == [layer.name for layer in m.layers]
    np.testing.assert_array_equal(m.predict(x, verbose=0), m2.predict(x, verbose=0))
    # Continued training from the loaded state is identical to continuing the original.
    from fastnn.utils import set_random_seed
    set_random_seed(5)
    m.fit(x, y, epochs=1, verbose=0)
    set_random_seed(5)
    m2.fit(x, y, epochs=1, verbose=0)
    for a, b in zip(m.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_save_is_atomic(tmp_path, rng, monkeypatch):
    m = small_model()
    path = tmp_path / "m.keras"
    m.save(path)
    good = path.read_bytes()
    import fastnn.model_files as model_files

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(model_files, "_model_config", boom)
    with pytest.raises(RuntimeError):
        m.save(path)
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["m.keras"]


def test_save_weights_requires_suffix(tmp_path):
    m = small_model()
    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        m.save_weights(tmp_path / "w.h5")
    with pytest.raises(ValueError, match="extension"):
        m.save(tmp_path / "model.bin")
    m.save_weights(tmp_path / "w.weights.h5")
    m2 = small_model()
    m2.load_weights(tmp_path / "w.weights.h5")
    for a, b in zip(m.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_seeded_training_is_reproducible(rng):
    from fastnn.utils import set_random_seed
    x, y = blobs(rng, n=100)
    results = []
    for _ in range(2):
        set_random_seed(42)
        m = Sequential([Dense(8, activation="relu", input_shape=(4,)), Dropout(0.3),
                        Dense(3, activation="softmax")])
        m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        m.fit(x, y, epochs=2, batch_size=10, verbose=0)
        results.append(m.get_weights())
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_clear_session_resets_names():
    Sequential([Dense(1)])
    keras.backend.clear_session()
    assert Sequential([Dense(1)]).name == "sequential"



def test_training_is_bit_identical_for_any_thread_count():
    """Every parallel kernel (GEMM blocks, im2col, pooling, BN, column sums, optimizer) splits
    work by shape only and reduces in a fixed order, so threads never change a result."""
    from fastnn import _core
    from fastnn.layers import BatchNormalization, Conv2D, MaxPooling2D
    from fastnn.utils import set_random_seed
    if not _core.OPENMP:
        pytest.skip("built without OpenMP")
    rng = np.random.default_rng(0)
    x = rng.random((96, 16, 16, 3), dtype=np.float32)
    y = rng.integers(0, 10, 96)
    results = []
    before = keras.get_num_threads()
    try:
        for threads in (1, 2, 3):
            keras.set_num_threads(threads)
            set_random_seed(3)
            m = Sequential([Conv2D(32, 3, activation="relu", input_shape=(16, 16, 3)),
                            MaxPooling2D(), Flatten(), BatchNormalization(),
                            Dense(256, activation="selu"), Dense(10, activation="softmax")])
            m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
            m.fit(x, y, batch_size=32, epochs=2, verbose=0)
            results.append(m.get_weights() + [m.predict(x, verbose=0)])
    finally:
        keras.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_compile_arguments_fastnn_cannot_honour_raise():
    model = Sequential([Input((3,)), Dense(2)])
    with pytest.raises(ValueError, match="steps_per_execution=4"):
        model.compile("sgd", "mse", steps_per_execution=4)
    with pytest.raises(ValueError, match="steps_per_execution must be a positive int"):
        model.compile("sgd", "mse", steps_per_execution=0)
    with pytest.raises(ValueError, match="weighted_metrics"):
        model.compile("sgd", "mse", weighted_metrics=["mae"])
    with pytest.raises(ValueError, match="loss_weights: the model has one output"):
        model.compile("sgd", "mse", loss_weights=[1.0, 2.0])
    # execution modes only: the results are fastnn's either way
    model.compile("sgd", "mse", run_eagerly=True, jit_compile=False, auto_scale_loss=False)
