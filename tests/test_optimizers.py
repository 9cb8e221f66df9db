"""Optimizers: Keras 3 defaults, and update rules checked step by step against Keras 3 itself
(torch backend) when it is installed, and against the written-out formulas always."""
import math
import os

import numpy as np
import pytest
from onbackend import get, put

from fastnn import optimizers
from fastnn.backend import use_backend

CASES = [
    ("SGD", {}), ("SGD", {"momentum": 0.9}), ("SGD", {"momentum": 0.9, "nesterov": True}),
    ("Adam", {}), ("Adam", {"amsgrad": True}), ("AdamW", {}),
    ("RMSprop", {}), ("RMSprop", {"momentum": 0.5, "centered": True}),
    ("Adagrad", {}), ("Adadelta", {"learning_rate": 1.0}), ("Adamax", {}), ("Nadam", {}),
    ("Ftrl", {"l1_regularization_strength": 0.01, "l2_regularization_strength": 0.01}),
    ("Adam", {"clipnorm": 0.5}), ("SGD", {"clipvalue": 0.1}), ("Adam", {"global_clipnorm": 1.0}),
    ("SGD", {"weight_decay": 0.1}),
    ("Lion", {}), ("Lion", {"learning_rate": 0.01, "beta_1": 0.5, "beta_2": 0.9,
                            "weight_decay": 0.05}),
]
# Every optimizer with each of Keras's clips, engaged (the test gradients' norms are ~2-4)
# and not (a limit above the norm; a limit of 0, which Keras ignores), and with weight decay.
CASES += [(name, {**kw, **clip}) for name, kw in (
    ("SGD", {"momentum": 0.9}), ("Adam", {}), ("AdamW", {}),
    ("RMSprop", {"momentum": 0.5, "centered": True}), ("Adagrad", {}),
    ("Adadelta", {"learning_rate": 1.0}), ("Adamax", {}), ("Nadam", {}),
    ("Ftrl", {"l1_regularization_strength": 0.01}), ("Lion", {}))
    for clip in ({"clipnorm": 0.5}, {"clipvalue": 0.1}, {"global_clipnorm": 1.0})]
CASES += [("SGD", {"clipnorm": 100.0}), ("Adam", {"global_clipnorm": 100.0}),
          ("Adam", {"clipvalue": 0.0}), ("SGD", {"clipnorm": 0.0}),
          ("Adam", {"clipnorm": 0.5, "weight_decay": 0.1})]
CASE_IDS = [f"{n}-{'-'.join(map(str, k.items()))}" for n, k in CASES]


def _steps(seed=0, n_steps=5, shapes=((3, 4), (4,))):
    rng = np.random.default_rng(seed)
    w0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(n_steps)]
    return w0, grads


def run_fastnn(name, kwargs, w0, grads, backend="cpu"):
    with use_backend(backend):
        opt = getattr(optimizers, name)(**kwargs)
        sizes = [w.size for w in w0]
        params = np.concatenate([w.ravel() for w in w0]).astype(np.float32)
        opt.build(sizes)
        for g in grads:
            opt.apply(params, np.concatenate([x.ravel() for x in g]).astype(np.float32))
        out, start = [], 0
        for w in w0:
            out.append(params[start:start + w.size].reshape(w.shape))
            start += w.size
        return out, opt


def run_keras(name, kwargs, w0, grads):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("reference runs on Keras's torch backend")
    opt = getattr(keras.optimizers, name)(**kwargs)
    variables = [keras.Variable(w.copy()) for w in w0]
    for g in grads:
        opt.apply_gradients(zip([keras.ops.convert_to_tensor(x) for x in g], variables))
    return [np.asarray(keras.ops.convert_to_numpy(v)) for v in variables], opt


@pytest.mark.parametrize("name,kwargs", CASES, ids=CASE_IDS)
def test_matches_keras3_step_by_step(name, kwargs):
    w0, grads = _steps()
    ours, opt = run_fastnn(name, kwargs, w0, grads)
    ref, kopt = run_keras(name, kwargs, w0, grads)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    # Same variables in the same (interleaved) order, with the same values.
    kvars = [np.asarray(v.numpy() if hasattr(v, "numpy") else v) for v in kopt.variables]
    ovars = opt.variables()
    assert len(ovars) == len(kvars)
    for a, b in zip(ovars, kvars):
        np.testing.assert_allclose(np.asarray(a, np.float64).ravel(),
                                   np.asarray(b, np.float64).ravel(), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name,kwargs", CASES, ids=CASE_IDS)
def test_reference_and_cpu_backends_agree(name, kwargs):
    w0, grads = _steps(seed=3)
    cpu, _ = run_fastnn(name, kwargs, w0, grads, "cpu")
    ref, _ = run_fastnn(name, kwargs, w0, grads, "numpy")
    for a, b in zip(cpu, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_adam_formula_written_out():
    w0, grads = _steps(n_steps=3, shapes=((5,),))
    ours, _ = run_fastnn("Adam", {"learning_rate": 0.01}, w0, grads)
    w, m, v = w0[0].astype(np.float64), 0.0, 0.0
    for t, (g,) in enumerate(grads, start=1):
        alpha = 0.01 * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
        m = m + (g - m) * 0.1
        v = v + (g * g - v) * 0.001
        w = w - alpha * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(ours[0], w, rtol=1e-5)


def test_rmsprop_epsilon_inside_sqrt():
    w0, grads = _steps(n_steps=1, shapes=((4,),))
    ours, _ = run_fastnn("RMSprop", {}, w0, grads)
    g = grads[0][0].astype(np.float64)
    v = 0.1 * g * g
    np.testing.assert_allclose(ours[0], w0[0] - 0.001 * g / np.sqrt(v + 1e-7), rtol=1e-5)


def test_keras_defaults():
    assert optimizers.SGD().learning_rate == 0.01
    assert optimizers.get("rmsprop").get_config()["rho"] == 0.9
    adam = optimizers.get("adam").get_config()
    assert (adam["learning_rate"], adam["beta_1"], adam["beta_2"], adam["epsilon"]) == \
        (0.001, 0.9, 0.999, 1e-7)
    assert optimizers.Adagrad().initial_accumulator_value == 0.1
    assert optimizers.Adadelta().rho == 0.95
    assert optimizers.AdamW().weight_decay == 0.004
    for name in ("sgd", "rmsprop", "adam", "adagrad", "adadelta", "adamax", "nadam", "ftrl",
                 "lion"):
        assert optimizers.get(name).name == name
    lion = optimizers.Lion().get_config()
    assert (lion["learning_rate"], lion["beta_1"], lion["beta_2"]) == (0.001, 0.9, 0.99)


def test_lion_formula_written_out():
    """Every weight moves by exactly lr or 0: the sign of beta_1 m + (1 - beta_1) g, with m
    from before the step; then m = beta_2 m + (1 - beta_2) g."""
    w0, grads = _steps(n_steps=2, shapes=((6,),))
    grads[0][0][:2] = 0.0          # sign(0) = 0: no move on the first step
    ours, opt = run_fastnn("Lion", {"learning_rate": 0.1}, w0, grads)
    w, m = w0[0].astype(np.float64), np.zeros(6)
    for (g,) in grads:
        w -= 0.1 * np.sign(0.9 * m + 0.1 * g)
        m = 0.99 * m + 0.01 * g
    np.testing.assert_allclose(ours[0], w, rtol=1e-6)
    np.testing.assert_allclose(opt.slots["momentum"], m, rtol=1e-6)
    with pytest.raises(ValueError, match="beta_1.*SignSGD"):
        optimizers.Lion(beta_1=0.0)


def test_lr_alias_and_errors():
    assert optimizers.Adam(lr=0.5).learning_rate == 0.5
    with pytest.raises(ValueError, match="Unknown optimizer 'adamm'.*adam"):
        optimizers.get("adamm")
    with pytest.raises(ValueError, match="momentum"):
        optimizers.SGD(momentum=1.5)
    with pytest.raises(TypeError, match="bogus"):
        optimizers.Adam(bogus=1)


def test_learning_rate_schedule_callable():
    opt = optimizers.SGD(learning_rate=lambda step: 0.1 / (1 + step))
    opt.build([2])
    w = put(np.ones(2, np.float32))
    opt.apply(w, put(np.ones(2, np.float32)))
    opt.apply(w, put(np.ones(2, np.float32)))
    np.testing.assert_allclose(get(w), 1 - 0.1 - 0.05, rtol=1e-6)


# ---- the plain SGD step taken in place by big Dense kernels (Optimizer.plain_step_lr) --------
def test_plain_step_lr_only_for_stateless_unclipped_sgd():
    assert optimizers.SGD(0.05).plain_step_lr() == pytest.approx(0.05)
    assert optimizers.SGD(0.05, nesterov=True).plain_step_lr() == pytest.approx(0.05)
    for opt in (optimizers.SGD(0.05, momentum=0.9), optimizers.SGD(0.05, weight_decay=0.01),
                optimizers.SGD(0.05, clipnorm=1.0), optimizers.SGD(0.05, clipvalue=0.5),
                optimizers.SGD(0.05, global_clipnorm=1.0), optimizers.Adam(),
                optimizers.RMSprop()):
        assert opt.plain_step_lr() is None, opt.get_config()
    schedule = optimizers.SGD(lambda step: 0.1 / (1 + step))
    schedule.iterations = 3
    assert schedule.plain_step_lr() == pytest.approx(0.025)
    adam = optimizers.Adam()
    adam.build([4])
    with pytest.raises(RuntimeError, match="plain SGD"):
        adam.apply(np.zeros(4, np.float32), np.ones(4, np.float32), ranges=[(0, 2)])


@pytest.mark.parametrize("ops_name", ["reference", "cpu"])
def test_dense_backward_kernel_step_is_the_sgd_step(rng, ops_name):
    from fastnn import activations as A
    from fastnn.backend.base import Ops
    from fastnn.backend.cpu import CpuOps
    ops = Ops() if ops_name == "reference" else CpuOps()
    x = rng.standard_normal((32, 300)).astype(np.float32)
    kernel = rng.standard_normal((300, 250)).astype(np.float32)
    z = rng.standard_normal((32, 250)).astype(np.float32)
    y = np.maximum(z, 0)
    dy = rng.standard_normal((32, 250)).astype(np.float32)
    dk, db = np.empty_like(kernel), np.empty(250, np.float32)
    dx = ops.dense_backward(x, kernel, z, y, dy.copy(), A.RELU, 0.0, dk, db)
    stepped, untouched = kernel.copy(), np.full_like(kernel, 7.0)
    db2 = np.empty_like(db)
    dx2 = ops.dense_backward(x, stepped, z, y, dy.copy(), A.RELU, 0.0, untouched, db2,
                             kernel_step=0.05)
    np.testing.assert_array_equal(dx2, dx)          # from the kernel as it was
    np.testing.assert_array_equal(db2, db)
    assert (untouched == 7.0).all()
    np.testing.assert_allclose(stepped, kernel - np.float32(0.05) * dk, rtol=1e-6, atol=1e-6)


def _bn_mlp():
    from fastnn.layers import BatchNormalization, Dense
    from fastnn.models import Sequential
    return Sequential([Dense(300, activation="relu", input_shape=(256,)),  # 76,800 weights
                       BatchNormalization(), Dense(10, activation="softmax")])


@pytest.mark.parametrize("lr", [0.1, "schedule"])
def test_in_place_sgd_step_trains_like_the_optimizer_pass(rng, monkeypatch, lr):
    from fastnn import trainer
    from fastnn.utils import set_random_seed
    x = rng.standard_normal((96, 256)).astype(np.float32)
    y = rng.integers(0, 10, 96)
    results = []
    for in_place in (True, False):
        if not in_place:
            monkeypatch.setattr(trainer, "IN_PLACE_MIN_WEIGHTS", 10 ** 12)
        set_random_seed(5)
        model = _bn_mlp()
        rate = (lambda step: 0.2 / (1 + 0.1 * step)) if lr == "schedule" else lr
        model.compile(optimizer=optimizers.SGD(rate), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        hist = model.fit(x, y, batch_size=16, epochs=3, verbose=0).history
        assert len(model._in_place_layers) == in_place
        results.append((hist["loss"], model.get_weights(), model.optimizer.iterations))
    (l1, w1, it1), (l2, w2, it2) = results
    assert it1 == it2 == 18
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_in_place_step_is_not_taken_with_momentum_or_a_frozen_layer(rng):
    x = rng.standard_normal((32, 256)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    model = _bn_mlp()
    model.compile(optimizer=optimizers.SGD(0.1, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=16, verbose=0)
    assert model.optimizer.plain_step_lr() is None     # the optimizer pass does it all
    frozen = _bn_mlp()
    frozen.layers[0].trainable = False
    before = frozen.layers[0].get_weights()
    frozen.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    frozen.fit(x, y, batch_size=16, verbose=0)
    assert not frozen._in_place_layers
    for a, b in zip(before, frozen.layers[0].get_weights()):
        np.testing.assert_array_equal(a, b)
