"""Learning-rate schedules (fastnn.optimizers.schedules): each schedule's rate step by step
against Keras 3's, training with a schedule (the general and the fused C path) against Keras's
steps, and schedules saved in the optimizer's config both ways."""
import numpy as np
import pytest

import fastnn
from fastnn import layers as L
from fastnn.optimizers import schedules as S

CASES = [
    ("ExponentialDecay", dict(initial_learning_rate=0.1, decay_steps=7, decay_rate=0.8)),
    ("ExponentialDecay", dict(initial_learning_rate=0.1, decay_steps=7, decay_rate=0.8,
                              staircase=True)),
    ("PiecewiseConstantDecay", dict(boundaries=[5, 12, 30], values=[0.3, 0.1, 0.05, 0.01])),
    ("PolynomialDecay", dict(initial_learning_rate=0.2, decay_steps=20)),
    ("PolynomialDecay", dict(initial_learning_rate=0.2, decay_steps=9,
                             end_learning_rate=0.01, power=2.0, cycle=True)),
    ("InverseTimeDecay", dict(initial_learning_rate=0.1, decay_steps=4, decay_rate=0.5)),
    ("InverseTimeDecay", dict(initial_learning_rate=0.1, decay_steps=4, decay_rate=0.5,
                              staircase=True)),
    ("CosineDecay", dict(initial_learning_rate=0.1, decay_steps=25, alpha=0.1)),
    ("CosineDecay", dict(initial_learning_rate=0.0, decay_steps=20, warmup_target=0.2,
                         warmup_steps=6)),
    ("CosineDecayRestarts", dict(initial_learning_rate=0.1, first_decay_steps=6)),
    ("CosineDecayRestarts", dict(initial_learning_rate=0.1, first_decay_steps=5, t_mul=1.0,
                                 m_mul=0.7, alpha=0.05)),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CASES)]


@pytest.mark.parametrize("name, kwargs", CASES, ids=IDS)
def test_rates_and_configs_equal_keras(name, kwargs):
    keras = pytest.importorskip("keras")
    theirs, ours = getattr(keras.optimizers.schedules, name)(**kwargs), getattr(S, name)(**kwargs)
    assert ours.get_config() == theirs.get_config()
    steps = list(range(0, 70))
    got = [float(ours(step)) for step in steps]
    want = [float(keras.ops.convert_to_numpy(theirs(step))) for step in steps]
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-9)
    assert len(set(np.round(got, 7))) > 3        # the schedule moves
    again = S.deserialize(S.serialize(ours))
    assert type(again) is type(ours) and again.get_config() == ours.get_config()


def test_formulas_on_known_values():
    """A few values by hand, so the formulas are pinned without Keras too."""
    assert float(S.ExponentialDecay(1.0, 10, 0.5)(10)) == pytest.approx(0.5)
    assert float(S.ExponentialDecay(1.0, 10, 0.5, staircase=True)(19)) == pytest.approx(0.5)
    pw = S.PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1])
    assert [float(pw(s)) for s in (0, 10, 11, 20, 21)] == pytest.approx([1, 1, .5, .5, .1])
    assert float(S.PolynomialDecay(1.0, 10, end_learning_rate=0.0)(5)) == pytest.approx(0.5)
    assert float(S.InverseTimeDecay(1.0, 1, 1.0)(3)) == pytest.approx(0.25)
    cos = S.CosineDecay(1.0, 10)
    assert [float(cos(s)) for s in (0, 5, 10, 99)] == pytest.approx([1, .5, 0, 0], abs=1e-6)
    warm = S.CosineDecay(0.0, 10, warmup_target=1.0, warmup_steps=4)
    assert [float(warm(s)) for s in (0, 2, 4, 9)] == pytest.approx([0, .5, 1, .5], abs=1e-6)
    sgdr = S.CosineDecayRestarts(1.0, 4, t_mul=2.0)
    assert [float(sgdr(s)) for s in (0, 2, 4, 8, 12)] == pytest.approx([1, .5, 1, .5, 1],
                                                                       abs=1e-6)


def test_argument_errors_are_keras_s():
    with pytest.raises(ValueError, match=r"`decay_steps` must be > 0. Received: decay_steps=0"):
        S.ExponentialDecay(0.1, 0, 0.9)
    with pytest.raises(ValueError, match="`first_decay_steps` must be > 0"):
        S.CosineDecayRestarts(0.1, -1)
    with pytest.raises(ValueError, match="boundaries should be 1 less than the length"):
        S.PiecewiseConstantDecay([1, 2], [0.1, 0.2])
    opt = fastnn.optimizers.SGD(S.ExponentialDecay(0.1, 5, 0.9))
    with pytest.raises(TypeError, match="learning rate is not settable"):
        opt.learning_rate = 0.01
    from fastnn.optimizers.schedules import CosineDecay
    assert CosineDecay is S.CosineDecay


def _mlp(K, layers, optimizer):
    model = K.Sequential([K.Input(shape=(6,)), layers.Dense(8, activation="relu"),
                          layers.Dense(3, activation="softmax")])
    model.compile(optimizer, "sparse_categorical_crossentropy")
    return model


def _data():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((48, 6)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)


@pytest.mark.parametrize("fused", ["1", "0"])
@pytest.mark.parametrize("make", [
    lambda K: K.optimizers.SGD(K.optimizers.schedules.ExponentialDecay(0.5, 3, 0.7),
                               momentum=0.5),
    lambda K: K.optimizers.Adam(K.optimizers.schedules.CosineDecay(
        0.0, 8, warmup_target=0.05, warmup_steps=4)),
    lambda K: K.optimizers.RMSprop(K.optimizers.schedules.PiecewiseConstantDecay(
        [3, 7], [0.01, 0.005, 0.001])),
], ids=["sgd-exponential", "adam-cosine-warmup", "rmsprop-piecewise"])
def test_training_with_a_schedule_takes_keras_s_steps(monkeypatch, make, fused):
    """Three epochs of six steps: the rate changes within and across epochs (the fused C path
    precomputes a run of steps' rates)."""
    keras = pytest.importorskip("keras")
    monkeypatch.setenv("FASTNN_FUSED", fused)
    x, y = _data()
    theirs, ours = _mlp(keras, keras.layers, make(keras)), _mlp(fastnn, L, make(fastnn))
    ours.set_weights([np.asarray(w) for w in theirs.get_weights()])
    kw = dict(batch_size=8, epochs=3, shuffle=False, verbose=0)
    h_theirs, h_ours = theirs.fit(x, y, **kw).history, ours.fit(x, y, **kw).history
    np.testing.assert_allclose(h_ours["loss"], h_theirs["loss"], rtol=1e-5)
    # (Adam's first steps from a rate of 0 amplify float32 rounding: atol 2e-5)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=2e-5)
    assert ours.optimizer.iterations == 18


@pytest.mark.parametrize("fmt", [".keras", ".h5"])
def test_a_schedule_is_saved_in_the_optimizer_both_ways(tmp_path, fmt):
    """fastnn's file opens in Keras with the schedule and the optimizer state (no learning-rate
    variable, as Keras has none with a schedule); Keras's file opens in fastnn, and both take
    the same next step."""
    keras = pytest.importorskip("keras")
    x, y = _data()
    for writer in (fastnn, keras):
        sched = writer.optimizers.schedules.InverseTimeDecay(0.05, 2, 0.3)
        model = _mlp(writer, writer.layers, writer.optimizers.Adam(sched))
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        path = str(tmp_path / f"{writer.__name__}{fmt}")
        model.save(path)
        reader = keras if writer is fastnn else fastnn
        loaded = reader.models.load_model(path)
        lr = loaded.optimizer._learning_rate
        assert type(lr).__name__ == "InverseTimeDecay"
        assert lr.get_config() == sched.get_config()
        assert int(np.asarray(loaded.optimizer.iterations)) == 3
        if not (reader is keras and fmt == ".h5"):
            # (Keras 3.15 on torch cannot train on after loading any legacy .h5, its own
            # included: "can only be called for the variables it was originally built with")
            for model_ in (model, loaded):
                model_.train_on_batch(x[:16], y[:16])
        for a, b in zip(model.get_weights(), loaded.get_weights()):     # (Adam: atol 1e-6)
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_an_unknown_schedule_in_a_file_is_named():
    opt = fastnn.optimizers.Adam(S.ExponentialDecay(0.1, 5, 0.9))
    config = fastnn.optimizers.serialize(opt) if hasattr(fastnn.optimizers, "serialize") \
        else {"class_name": "Adam", "config": opt.get_config()}
    config["config"]["learning_rate"]["class_name"] = "os.system"
    with pytest.raises(ValueError, match="learning_rate.class_name.*os.system"):
        fastnn.optimizers.deserialize(config)
    config["config"]["learning_rate"]["class_name"] = "ExponentialDecay"
    config["config"]["learning_rate"]["config"]["decay_rate"] = "fast"
    with pytest.raises((TypeError, ValueError), match="decay_rate"):
        fastnn.optimizers.deserialize(config)


@pytest.mark.parametrize("make", [
    lambda K: K.optimizers.Adam(0.01, use_ema=True, ema_momentum=0.9),
    lambda K: K.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.8,
                               ema_overwrite_frequency=5),
    lambda K: K.optimizers.RMSprop(K.optimizers.schedules.ExponentialDecay(0.01, 4, 0.5),
                                   use_ema=True),
], ids=["adam-ema", "sgd-ema-overwrite-5", "rmsprop-schedule-ema"])
def test_use_ema_takes_keras_s_steps(make):
    """use_ema: the weights' moving average (ema_momentum; the first step copies the weights),
    written into the weights every ema_overwrite_frequency steps and when fit ends, and saved
    as Keras saves it (the first slot group)."""
    keras = pytest.importorskip("keras")
    x, y = _data()
    theirs, ours = _mlp(keras, keras.layers, make(keras)), _mlp(fastnn, L, make(fastnn))
    ours.set_weights([np.asarray(w) for w in theirs.get_weights()])
    kw = dict(batch_size=8, epochs=2, shuffle=False, verbose=0)
    h_theirs, h_ours = theirs.fit(x, y, **kw).history, ours.fit(x, y, **kw).history
    np.testing.assert_allclose(h_ours["loss"], h_theirs["loss"], rtol=1e-5)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-6)
    theirs_vars = [np.asarray(keras.ops.convert_to_numpy(v)) for v in theirs.optimizer.variables]
    for a, b in zip(ours.optimizer.variables(), theirs_vars):
        np.testing.assert_allclose(np.asarray(a).reshape(-1), b.reshape(-1), rtol=1e-4,
                                   atol=1e-6)
    assert ours.optimizer.get_config()["use_ema"] is True
    again = fastnn.optimizers.deserialize(
        {"class_name": type(ours.optimizer).__name__, "config": ours.optimizer.get_config()})
    assert again.use_ema and again.ema_momentum == ours.optimizer.ema_momentum
    with pytest.raises(ValueError, match="ema_momentum"):
        fastnn.optimizers.Adam(use_ema=True, ema_momentum=1.5)
