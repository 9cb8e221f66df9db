"""Losses written with fastnn.ops and differentiated by fastnn's autodiff (fastnn.losses: Huber,
LogCosh, KLDivergence, Poisson, the hinges, MAPE, MSLE, CosineSimilarity, the focal
cross-entropies), a Python function passed as the loss, and a Loss subclass with call():
values and gradients against finite differences and against Keras 3, training steps against
Keras's."""
import numpy as np
import pytest
from gradcheck import numeric_grad

import fastnn
from fastnn import layers as L
from fastnn import losses as FL
from fastnn import ops

N, C = 12, 5


def _case_data(kind, rng):
    """(y_true, y_pred) of the kind a loss expects."""
    yb = (rng.random((N, C)) > 0.5).astype(np.float32)
    p = rng.uniform(0.05, 0.95, (N, C)).astype(np.float32)
    z = rng.standard_normal((N, C)).astype(np.float32)
    yr = rng.standard_normal((N, C)).astype(np.float32)
    onehot = np.eye(C, dtype=np.float32)[rng.integers(0, C, N)]
    return {"regression": (yr, z), "probabilities": (onehot, p / p.sum(1, keepdims=True)),
            "counts": (np.abs(yr), p), "binary": (yb, z), "binary_p": (yb, p),
            "onehot_logits": (onehot, z)}[kind]


CASES = [
    ("Huber", {}, "regression"), ("Huber", {"delta": 0.3}, "regression"),
    ("LogCosh", {}, "regression"), ("KLDivergence", {}, "probabilities"),
    ("Poisson", {}, "counts"), ("Hinge", {}, "binary"), ("SquaredHinge", {}, "binary"),
    ("CategoricalHinge", {}, "onehot_logits"),
    ("MeanAbsolutePercentageError", {}, "regression"),
    ("MeanSquaredLogarithmicError", {}, "counts"), ("CosineSimilarity", {}, "regression"),
    ("BinaryFocalCrossentropy", {}, "binary_p"),
    ("BinaryFocalCrossentropy", {"apply_class_balancing": True, "from_logits": True,
                                 "label_smoothing": 0.1, "gamma": 1.5}, "binary"),
    ("CategoricalFocalCrossentropy", {}, "probabilities"),
    ("CategoricalFocalCrossentropy", {"from_logits": True, "label_smoothing": 0.2,
                                      "alpha": 0.5}, "onehot_logits"),
]
IDS = [f"{name}{kwargs or ''}" for name, kwargs, _ in CASES]


@pytest.mark.parametrize("name, kwargs, kind", CASES, ids=IDS)
def test_gradient_matches_finite_differences(name, kwargs, kind):
    rng = np.random.default_rng(0)
    y, p = _case_data(kind, rng)
    w = rng.uniform(0.5, 2.0, N).astype(np.float32)
    loss = getattr(FL, name)(**kwargs)
    grad = np.empty_like(p)
    value = loss.value_and_grad(p, y, w, 1.0, grad, loss.mode(None))

    def total(q):
        return loss.value_and_grad(q.astype(np.float32), y, w, 1.0, None, "outputs")

    assert np.isfinite(value) and value != 0
    numeric = numeric_grad(total, p.astype(np.float64), 1e-3)
    # (the loss is evaluated in float32: its rounding scales with the gradients' size)
    np.testing.assert_allclose(grad, numeric, rtol=2e-2,
                               atol=5e-3 * max(1.0, np.abs(numeric).max()))


@pytest.mark.parametrize("name, kwargs, kind", CASES, ids=IDS)
def test_values_gradients_and_configs_equal_keras(name, kwargs, kind):
    keras = pytest.importorskip("keras")
    torch = pytest.importorskip("torch")
    if keras.backend.backend() != "torch":
        pytest.skip("compares gradients through Keras on torch (KERAS_BACKEND=torch)")
    rng = np.random.default_rng(1)
    y, p = _case_data(kind, rng)
    theirs, ours = getattr(keras.losses, name)(**kwargs), getattr(FL, name)(**kwargs)
    assert ours.get_config() == theirs.get_config()
    for w in (None, rng.uniform(0.5, 2.0, N).astype(np.float32)):
        np.testing.assert_allclose(ours(y, p, sample_weight=w),
                                   float(theirs(y, p, sample_weight=w)), rtol=1e-6, atol=1e-7)
        t = torch.tensor(p, requires_grad=True)
        theirs(torch.tensor(y), t, sample_weight=None if w is None else torch.tensor(w)).backward()
        grad = np.empty_like(p)
        ours.value_and_grad(p, y, w, 1.0 / N, grad, "outputs")
        np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_names_aliases_and_arguments():
    for name, cls in [("huber", FL.Huber), ("log_cosh", FL.LogCosh), ("kld", FL.KLDivergence),
                      ("kl_divergence", FL.KLDivergence), ("poisson", FL.Poisson),
                      ("hinge", FL.Hinge), ("squared_hinge", FL.SquaredHinge),
                      ("categorical_hinge", FL.CategoricalHinge),
                      ("mape", FL.MeanAbsolutePercentageError),
                      ("msle", FL.MeanSquaredLogarithmicError),
                      ("cosine_similarity", FL.CosineSimilarity),
                      ("binary_focal_crossentropy", FL.BinaryFocalCrossentropy),
                      ("categorical_focal_crossentropy", FL.CategoricalFocalCrossentropy)]:
        assert type(FL.get(name)) is cls and type(FL.get(cls.__name__)) is cls
    assert FL.Huber().name == "huber_loss" and FL.Huber(0.5).delta == 0.5
    assert FL.get(FL.serialize(FL.BinaryFocalCrossentropy(gamma=3.0))).gamma == 3.0
    with pytest.raises(ValueError, match="label_smoothing"):
        FL.CategoricalFocalCrossentropy(label_smoothing=1.5)
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['delt'\\]"):
        FL.Huber(delt=1.0)
    with pytest.raises(ValueError, match="reduction"):
        FL.Huber(reduction="mean")


def test_hinge_converts_binary_labels_as_keras():
    """0/1 labels become -1/1 (the batch being all binary); -1/1 labels stay."""
    p = np.array([[0.3, -2.0], [1.5, 0.2]], np.float32)
    y01 = np.array([[1, 0], [0, 1]], np.float32)
    np.testing.assert_allclose(FL.Hinge()(y01, p), FL.Hinge()(2 * y01 - 1, p), rtol=1e-7)
    expected = np.mean(np.maximum(1 - (2 * y01 - 1) * p, 0), axis=-1).mean()
    np.testing.assert_allclose(FL.Hinge()(y01, p), expected, rtol=1e-6)


def _regression(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    y = (x @ rng.standard_normal((4, 2)) + 0.1).astype(np.float32)
    return x, y


def _mlp(K, layers, loss):
    model = K.Sequential([K.Input(shape=(4,)), layers.Dense(6, activation="tanh"),
                          layers.Dense(2)])
    model.compile(K.optimizers.SGD(0.1), loss)
    return model


def test_a_python_function_trains_as_its_built_in_twin():
    """loss=<a function of fastnn.ops> takes the same steps as the built-in class with the
    same formula, with sample weights too; the History key is 'loss'."""
    x, y = _regression()
    w = np.linspace(0.5, 2.0, len(x)).astype(np.float32)

    def my_huber(y_true, y_pred):
        error = y_pred - y_true
        small = ops.abs(error) <= 1.0
        return ops.mean(ops.where(small, 0.5 * error * error, ops.abs(error) - 0.5), axis=-1)

    runs = []
    for loss in (my_huber, "huber"):
        fastnn.utils.set_random_seed(3)
        model = _mlp(fastnn, L, loss)
        history = model.fit(x, y, sample_weight=w, batch_size=8, epochs=3, shuffle=False,
                            verbose=0)
        runs.append((history.history, model.get_weights()))
    assert list(runs[0][0]) == ["loss"]
    np.testing.assert_allclose(runs[0][0]["loss"], runs[1][0]["loss"], rtol=1e-5)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert runs[0][0]["loss"][-1] < runs[0][0]["loss"][0]


@pytest.mark.parametrize("loss", ["huber", "log_cosh", "cosine_similarity", "function",
                                  "subclass", "unreduced"])
def test_fit_steps_equal_keras(loss):
    """Two epochs of SGD from the same weights: the same weights and History as Keras, for a
    built-in loss, a function, a Loss subclass with call(), and a function returning every
    element (Keras averages what comes back)."""
    keras = pytest.importorskip("keras")
    x, y = _regression(24, seed=4)

    def make(K):
        if loss == "function":
            def fn(y_true, y_pred):
                return K.ops.mean(K.ops.square(y_pred - y_true) * 0.5 + y_pred, axis=-1)
            return fn
        if loss == "unreduced":
            return lambda y_true, y_pred: K.ops.abs(y_pred - y_true) ** 1.5
        if loss == "subclass":
            class Scaled(K.losses.Loss):
                def call(self, y_true, y_pred):
                    return K.ops.sum(K.ops.square(y_true - y_pred), axis=-1) * 0.25
            return Scaled()
        return loss

    theirs, ours = _mlp(keras, keras.layers, make(keras)), _mlp(fastnn, L, make(fastnn))
    ours.set_weights([np.asarray(v) for v in theirs.get_weights()])
    kw = dict(batch_size=8, epochs=2, shuffle=False, verbose=0)
    h_theirs, h_ours = theirs.fit(x, y, **kw).history, ours.fit(x, y, **kw).history
    np.testing.assert_allclose(h_ours["loss"], h_theirs["loss"], rtol=1e-5)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours.evaluate(x, y, verbose=0),
                               theirs.evaluate(x, y, verbose=0), rtol=1e-5)


def test_a_function_loss_with_sparse_labels():
    """A function gets the targets as the user gave them: integer labels per row."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)

    def sparse_xent(y_true, y_pred):
        assert y_true.shape == (y_pred.shape[0],)
        picked = ops.sum(ops.one_hot(ops.cast(y_true, "int32"), 3) * y_pred, axis=-1)
        return -ops.log(picked + 1e-7)

    fastnn.utils.set_random_seed(5)
    model = fastnn.Sequential([fastnn.Input(shape=(4,)), L.Dense(3, activation="softmax")])
    model.compile(fastnn.optimizers.Adam(0.05), sparse_xent)
    twin = fastnn.models.clone_model(model)
    twin.set_weights(model.get_weights())
    twin.compile(fastnn.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    h1 = model.fit(x, labels, batch_size=10, epochs=3, shuffle=False, verbose=0).history
    h2 = twin.fit(x, labels, batch_size=10, epochs=3, shuffle=False, verbose=0).history
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-4)


def test_a_scalar_loss_with_sample_weights_is_refused():
    x, y = _regression(8)
    model = _mlp(fastnn, L, lambda y_true, y_pred: ops.mean(ops.square(y_true - y_pred)))
    model.fit(x, y, verbose=0)      # a scalar alone is fine (Keras reduces it as it is)
    with pytest.raises(ValueError, match="one value per sample"):
        model.fit(x, y, sample_weight=np.ones(8), verbose=0)


@fastnn.saving.register_keras_serializable(package="loss_tests")
def _scaled_mse(y_true, y_pred):
    return ops.mean(ops.square(y_true - y_pred), axis=-1) * 0.5


@fastnn.saving.register_keras_serializable(package="loss_tests")
class _Absolute(FL.Loss):
    def call(self, y_true, y_pred):
        return ops.mean(ops.abs(y_true - y_pred), axis=-1)


def test_function_and_subclass_losses_are_saved_as_keras_saves_them(tmp_path):
    """A registered function, a registered Loss subclass and one of fastnn's loss functions
    survive a save and load (compiled again with them); Keras reads fastnn's form of its own
    function (huber); an unregistered function is named with how to register it."""
    x, y = _regression(16)
    for loss, check in ((_scaled_mse, lambda lo: lo.fn is _scaled_mse),
                        (_Absolute(), lambda lo: type(lo) is _Absolute),
                        (FL.huber, lambda lo: lo.fn is FL.huber)):
        model = _mlp(fastnn, L, loss)
        model.fit(x, y, verbose=0)
        path = str(tmp_path / "m.keras")
        model.save(path)
        loaded = fastnn.models.load_model(path)
        assert check(loaded.loss)
        np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0),
                                   model.evaluate(x, y, verbose=0), rtol=1e-6)
    keras = pytest.importorskip("keras")
    assert keras.models.load_model(path).loss is keras.losses.huber

    def local(y_true, y_pred):
        return ops.mean(ops.abs(y_true - y_pred), axis=-1)
    model = _mlp(fastnn, L, local)
    model.save(str(tmp_path / "local.keras"))
    with pytest.raises(ValueError, match="Could not locate function 'local'.*"
                                         "register_keras_serializable"):
        fastnn.models.load_model(str(tmp_path / "local.keras"))
    assert fastnn.models.load_model(str(tmp_path / "local.keras"),
                                    custom_objects={"local": local}).loss.fn is local
