"""Weight penalties (l1, l2, l1_l2) and gradient clipping (clipnorm, clipvalue, global_clipnorm)
inside the fused Dense stack: training gives the layer-by-layer path's losses (History) and
weights (FASTNN_FUSED=0), the reported loss includes the penalty as Keras reports it, and a
clipped step equals Keras 3's."""
import os

import numpy as np
import pytest

import fastnn
from fastnn import layers, optimizers, regularizers
from fastnn.backend import get_ops
from fastnn.stack import DenseRunner


def _on_cpu():
    return get_ops().name == "cpu"      # the fused stack runs on the CPU backend only


def _data(n=384, d=96, classes=10, seed=1):
    rng = np.random.default_rng(seed)
    return rng.random((n, d)).astype(np.float32), rng.integers(0, classes, n)


def _mlp(kernel_reg=None, bias_reg=None, d=96, hidden=(256, 64), classes=10):
    """Hidden layers wide enough that the stack updates each kernel block by block during the
    backward pass (fnn_gemm_row_blocks > 1 at batch 64), where the penalties are added."""
    fastnn.utils.set_random_seed(0)
    return fastnn.Sequential(
        [fastnn.Input((d,))] +
        [layers.Dense(h, activation="relu", kernel_regularizer=kernel_reg,
                      bias_regularizer=bias_reg) for h in hidden] +
        [layers.Dense(classes, activation="softmax", kernel_regularizer=kernel_reg)])


def _train(monkeypatch, fused, build, optimizer, x, y, epochs=2, **fit_kw):
    monkeypatch.setenv("FASTNN_FUSED", "1" if fused else "0")
    model = build()
    model.compile(optimizer(), "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=64, epochs=epochs, verbose=0, shuffle=True,
                        validation_data=(x[:100], y[:100]), **fit_kw).history
    runner = DenseRunner.for_model(model, training=True)
    return model, history, runner


def _same(monkeypatch, build, optimizer, x, y, **fit_kw):
    a, ha, runner = _train(monkeypatch, True, build, optimizer, x, y, **fit_kw)
    b, hb, none = _train(monkeypatch, False, build, optimizer, x, y, **fit_kw)
    if _on_cpu():
        assert runner is not None, "the model should take the fused path"
    assert none is None
    assert sorted(ha) == sorted(hb)
    for key in ha:
        np.testing.assert_allclose(ha[key], hb[key], rtol=1e-6, atol=1e-7, err_msg=key)
    for p, q in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6)
    return a, ha


REGULARIZERS = {"l1": lambda: regularizers.L1(1e-3), "l2": lambda: regularizers.L2(1e-2),
                "l1_l2": lambda: regularizers.L1L2(l1=1e-3, l2=1e-2)}


@pytest.mark.parametrize("where", ["kernel", "bias", "both"])
@pytest.mark.parametrize("reg", sorted(REGULARIZERS))
def test_penalties_fused_equal_the_general_path(monkeypatch, reg, where):
    x, y = _data()
    make = REGULARIZERS[reg]

    def build():
        return _mlp(kernel_reg=make() if where != "bias" else None,
                    bias_reg=make() if where != "kernel" else None)
    model, _ = _same(monkeypatch, build, lambda: optimizers.Adam(1e-3), x, y)
    if _on_cpu():      # (the path that adds each block's penalty just before its update)
        stack = next(iter(model._dense_runner._stacks.values()))
        assert stack.updates_in_backward


@pytest.mark.parametrize("opt", ["sgd", "sgd_momentum", "rmsprop", "nadam", "ftrl", "lion"])
def test_penalties_with_other_optimizers(monkeypatch, opt):
    make = {"sgd": lambda: optimizers.SGD(0.05),
            "sgd_momentum": lambda: optimizers.SGD(0.05, momentum=0.9, nesterov=True),
            "rmsprop": lambda: optimizers.RMSprop(1e-3, momentum=0.5, centered=True),
            "nadam": lambda: optimizers.Nadam(1e-3),
            "ftrl": lambda: optimizers.Ftrl(0.05, l1_regularization_strength=1e-3),
            "lion": lambda: optimizers.Lion(1e-4, weight_decay=0.01)}[opt]
    x, y = _data(n=256)
    _same(monkeypatch, lambda: _mlp(regularizers.L2(1e-2), regularizers.L1(1e-3)), make, x, y)


def test_penalty_beside_a_kernel_stepped_in_place(monkeypatch):
    """Plain SGD steps a kernel of >= 65,536 weights inside its GEMM; a penalized kernel takes
    the usual step (its gradient gets the penalty's), on both paths."""
    x, y = _data(n=192, d=300)

    def build():
        fastnn.utils.set_random_seed(0)
        return fastnn.Sequential([
            fastnn.Input((300,)), layers.Dense(256, activation="relu"),
            layers.Dense(64, activation="relu", kernel_regularizer="l2"),
            layers.Dense(10, activation="softmax", bias_regularizer=regularizers.L1(0.01))])
    model, _ = _same(monkeypatch, build, lambda: optimizers.SGD(0.05), x, y)
    if _on_cpu():
        stack = next(iter(model._dense_runner._stacks.values()))
        assert stack.in_place_layers == (0,)


def test_reported_loss_includes_the_penalty(monkeypatch):
    """With a zero learning rate the weights stay put: each epoch's loss (and val_loss, and
    evaluate's) is the cross-entropy plus the penalty of those weights, as Keras reports it."""
    monkeypatch.setenv("FASTNN_FUSED", "1")
    x, y = _data(n=256)
    k_reg, b_reg = regularizers.L1L2(l1=1e-3, l2=1e-2), regularizers.L2(0.05)
    model = _mlp(k_reg, b_reg)
    model.compile(optimizers.SGD(0.0), "sparse_categorical_crossentropy")
    plain = _mlp()
    plain.compile(optimizers.SGD(0.0), "sparse_categorical_crossentropy")
    plain.set_weights(model.get_weights())
    penalty = 0.0
    for layer in model.layers:
        k, b = (w.astype(np.float64) for w in layer.get_weights())
        penalty += 1e-3 * np.abs(k).sum() + np.float32(1e-2) * (k ** 2).sum()
        if layer is not model.layers[-1]:
            penalty += np.float32(0.05) * (b ** 2).sum()
    assert penalty > 0.1
    history = model.fit(x, y, batch_size=64, epochs=1, verbose=0,
                        validation_data=(x[:64], y[:64])).history
    if _on_cpu():
        assert DenseRunner.for_model(model, training=True) is not None
    want = plain.evaluate(x, y, batch_size=64, verbose=0) + penalty
    assert history["loss"][0] == pytest.approx(want, rel=1e-5)
    assert history["val_loss"][0] == pytest.approx(
        plain.evaluate(x[:64], y[:64], verbose=0) + penalty, rel=1e-5)
    assert model.evaluate(x, y, batch_size=64, verbose=0) == pytest.approx(want, rel=1e-5)
    assert sum(model.losses) == pytest.approx(penalty, rel=1e-5)


def test_other_regularizers_and_constraints_take_the_general_path(monkeypatch):
    monkeypatch.setenv("FASTNN_FUSED", "1")
    for kw in ({"kernel_regularizer": regularizers.OrthogonalRegularizer()},
               {"kernel_regularizer": lambda w: 0.01 * fastnn.ops.sum(w)},
               {"kernel_constraint": "max_norm"}, {"activity_regularizer": "l2"}):
        model = fastnn.Sequential([fastnn.Input((8,)), layers.Dense(4, **kw),
                                   layers.Dense(2, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy")
        assert DenseRunner.for_model(model, training=True) is None, kw
    # a subclass of L2 may compute another penalty: not taken for Keras's l2
    class Half(regularizers.L2):
        def __call__(self, x):
            return 0.5 * super().__call__(x)
    model = fastnn.Sequential([fastnn.Input((8,)), layers.Dense(4, kernel_regularizer=Half()),
                               layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    assert DenseRunner.for_model(model, training=True) is None


CLIPS = [{"clipnorm": 0.05}, {"clipvalue": 1e-3}, {"global_clipnorm": 0.05}]
CLIP_OPTIMIZERS = {"sgd": lambda **kw: optimizers.SGD(0.1, **kw),
                   "sgd_momentum": lambda **kw: optimizers.SGD(0.05, momentum=0.9, **kw),
                   "adam": lambda **kw: optimizers.Adam(1e-3, **kw),
                   "adamw": lambda **kw: optimizers.AdamW(1e-3, **kw),
                   "rmsprop": lambda **kw: optimizers.RMSprop(1e-3, **kw),
                   "adagrad": lambda **kw: optimizers.Adagrad(0.01, **kw),
                   "adadelta": lambda **kw: optimizers.Adadelta(1.0, **kw),
                   "adamax": lambda **kw: optimizers.Adamax(1e-3, **kw),
                   "nadam": lambda **kw: optimizers.Nadam(1e-3, **kw),
                   "ftrl": lambda **kw: optimizers.Ftrl(0.05, **kw),
                   "lion": lambda **kw: optimizers.Lion(1e-4, **kw)}


@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: next(iter(c)))
@pytest.mark.parametrize("opt", sorted(CLIP_OPTIMIZERS))
def test_clipping_fused_equals_the_general_path(monkeypatch, opt, clip):
    x, y = _data(n=256)
    make = CLIP_OPTIMIZERS[opt]
    _same(monkeypatch, _mlp, lambda: make(**clip), x, y)


@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: next(iter(c)))
def test_clipping_with_penalties_and_in_place_candidates(monkeypatch, clip):
    """Clipping turns off plain SGD's in-place step (it is no longer w -= lr g) and reads the
    penalized gradient, on both paths."""
    x, y = _data(n=192, d=300)

    def build():
        fastnn.utils.set_random_seed(0)
        return fastnn.Sequential([
            fastnn.Input((300,)), layers.Dense(256, activation="relu"),
            layers.Dense(10, activation="softmax", kernel_regularizer="l2")])
    _same(monkeypatch, build, lambda: optimizers.SGD(0.1, **clip), x, y)


@pytest.mark.parametrize("clip", CLIPS + [{"clipnorm": 100.0}], ids=lambda c: str(c))
def test_clipped_fused_training_equals_keras(monkeypatch, clip):
    """A few fused SGD steps with clipping and an l2 penalty, from the same weights, on the
    same batches: Keras 3's weights and losses."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("reference runs on Keras's torch backend")
    monkeypatch.setenv("FASTNN_FUSED", "1")
    x, y = _data(n=128, d=20, classes=4)
    ours = fastnn.Sequential([fastnn.Input((20,)),
                              layers.Dense(16, activation="relu", kernel_regularizer="l2"),
                              layers.Dense(4, activation="softmax")])
    theirs = keras.Sequential([keras.Input((20,)),
                               keras.layers.Dense(16, activation="relu",
                                                  kernel_regularizer="l2"),
                               keras.layers.Dense(4, activation="softmax")])
    theirs.set_weights(ours.get_weights())
    ours.compile(optimizers.SGD(0.1, momentum=0.5, **clip), "sparse_categorical_crossentropy")
    theirs.compile(keras.optimizers.SGD(0.1, momentum=0.5, **clip),
                   "sparse_categorical_crossentropy")
    h1 = ours.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0).history
    h2 = theirs.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0).history
    if _on_cpu():
        assert DenseRunner.for_model(ours, training=True) is not None
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=2e-5)
    for p, q in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(p, q, rtol=2e-4, atol=2e-6)
