"""Weight regularizers and constraints (fastnn.regularizers, fastnn.constraints): penalties and
projections against Keras 3, penalty gradients against finite differences, training with them
against Keras's steps (the penalty in the reported loss, model.losses), and configs both ways."""
import numpy as np
import pytest
from gradcheck import numeric_grad

import fastnn
from fastnn import constraints as FC
from fastnn import layers as L
from fastnn import regularizers as FR

REGULARIZERS = [("L1", {}), ("L2", {"l2": 0.3}), ("L1L2", {"l1": 0.02, "l2": 0.05}),
                ("OrthogonalRegularizer", {"factor": 0.2}),
                ("OrthogonalRegularizer", {"factor": 0.1, "mode": "columns"})]
CONSTRAINTS = [("MaxNorm", {"max_value": 0.7}), ("MaxNorm", {"max_value": 1.2, "axis": 1}),
               ("NonNeg", {}), ("UnitNorm", {}), ("UnitNorm", {"axis": 1}),
               ("MinMaxNorm", {"min_value": 0.5, "max_value": 0.9, "rate": 0.7})]


def _weight(seed=0):
    return np.random.default_rng(seed).standard_normal((6, 4)).astype(np.float32)


@pytest.mark.parametrize("name, kwargs", REGULARIZERS, ids=[f"{n}{k}" for n, k in REGULARIZERS])
def test_penalty_gradient_matches_finite_differences(name, kwargs):
    w = _weight(1)
    reg = getattr(FR, name)(**kwargs)
    value, grad = FR.penalty_and_gradient(reg, w)
    assert value > 0
    numeric = numeric_grad(lambda v: FR.penalty_and_gradient(reg, v.astype(np.float32),
                                                             False)[0], w.astype(np.float64),
                           1e-3)
    np.testing.assert_allclose(grad, numeric, rtol=2e-2, atol=2e-4)


@pytest.mark.parametrize("name, kwargs", REGULARIZERS, ids=[f"{n}{k}" for n, k in REGULARIZERS])
def test_penalties_and_configs_equal_keras(name, kwargs):
    keras = pytest.importorskip("keras")
    w = _weight(2)
    theirs, ours = getattr(keras.regularizers, name)(**kwargs), getattr(FR, name)(**kwargs)
    assert ours.get_config() == theirs.get_config()
    np.testing.assert_allclose(FR.penalty_and_gradient(ours, w, False)[0],
                               float(keras.ops.convert_to_numpy(
                                   theirs(keras.ops.convert_to_tensor(w)))), rtol=1e-5)


@pytest.mark.parametrize("name, kwargs", CONSTRAINTS, ids=[f"{n}{k}" for n, k in CONSTRAINTS])
def test_constraints_and_configs_equal_keras(name, kwargs):
    keras = pytest.importorskip("keras")
    w = _weight(3)
    theirs, ours = getattr(keras.constraints, name)(**kwargs), getattr(FC, name)(**kwargs)
    assert ours.get_config() == theirs.get_config()
    from fastnn.backend import get_ops
    np.testing.assert_allclose(get_ops().to_numpy(ours(w)),
                               keras.ops.convert_to_numpy(theirs(w)), rtol=1e-6, atol=1e-7)


def test_names_and_errors():
    assert type(FR.get("l2")) is FR.L2 and type(FR.get("L1L2")) is FR.L1L2
    assert FR.l1_l2 is FR.L1L2 and FC.max_norm is FC.MaxNorm
    assert type(FC.get("non_neg")) is FC.NonNeg
    with pytest.raises(ValueError, match="Invalid value for argument l2"):
        FR.L2(-1.0)
    with pytest.raises(ValueError, match="Inputs to OrthogonalRegularizer must have rank 2"):
        FR.penalty_and_gradient(FR.OrthogonalRegularizer(), np.ones((2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="activity_regularizer.*regularizer identifier"):
        L.Dense(3, activity_regularizer="l3")
    with pytest.raises(ValueError, match="os.system"):
        FR.deserialize({"class_name": "os.system", "config": {}})


def _cnn(K, layers):
    inputs = K.Input(shape=(6, 6, 2))
    h = layers.Conv2D(3, 3, padding="same", kernel_regularizer=K.regularizers.L1L2(0.01, 0.02),
                      bias_constraint=K.constraints.NonNeg())(inputs)
    h = layers.Activation("relu")(h)
    # (after the ReLU: a bias just before a BatchNormalization gets only rounding noise as its
    # gradient, which Adam would magnify differently in each framework)
    h = layers.BatchNormalization(gamma_regularizer="l2",
                                  beta_constraint=K.constraints.MaxNorm(0.5, axis=0))(h)
    h = layers.Flatten()(h)
    out = layers.Dense(2, activation="softmax",
                       kernel_regularizer=K.regularizers.OrthogonalRegularizer(0.1),
                       kernel_constraint=K.constraints.UnitNorm(axis=0))(h)
    model = K.Model(inputs, out)
    model.compile(K.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    return model


def _mlp(K, layers):
    model = K.Sequential([
        K.Input(shape=(6,)),
        layers.Dense(8, activation="relu", kernel_regularizer=K.regularizers.l2(0.01),
                     bias_regularizer="l1", kernel_constraint=K.constraints.MaxNorm(0.8)),
        layers.Dense(3, activation="softmax", kernel_regularizer=K.regularizers.L1(0.005),
                     bias_constraint=K.constraints.MinMaxNorm(0.1, 0.5, rate=0.5))])
    model.compile(K.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    return model


def _activity_mlp(K, layers):
    """Activity penalties off the tape (a Sequential's steps), the output layer's included
    (its loss then is not fused with its softmax)."""
    model = K.Sequential([
        K.Input(shape=(6,)),
        layers.Dense(8, activation="relu", activity_regularizer=K.regularizers.L2(0.05)),
        layers.Dropout(0.0, activity_regularizer="l1"),
        layers.Dense(3, activation="softmax", activity_regularizer=K.regularizers.L1(0.02))])
    model.compile(K.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    return model


def _activity_cnn(K, layers):
    """Activity penalties on a functional graph (the schedule), on layers that inference would
    otherwise fuse (Conv2D -> BatchNormalization -> Add -> ReLU), and on the conv family."""
    inputs = K.Input(shape=(6, 6, 2))
    h = layers.Conv2D(2, 3, padding="same", activity_regularizer=K.regularizers.L2(0.01))(inputs)
    h = layers.BatchNormalization(activity_regularizer="l1")(h)
    h = layers.Add()([h, inputs])
    h = layers.Activation("relu", activity_regularizer=K.regularizers.L2(0.02))(h)
    h = layers.DepthwiseConv2D(3, depthwise_regularizer=K.regularizers.L2(0.03),
                               bias_constraint=K.constraints.NonNeg())(h)
    h = layers.SeparableConv2D(3, 2, depthwise_regularizer="l1",
                               pointwise_regularizer=K.regularizers.L2(0.02),
                               pointwise_constraint=K.constraints.MaxNorm(0.7, axis=[0, 1, 2]),
                               activity_regularizer=K.regularizers.L1(0.01))(h)
    h = layers.Conv2DTranspose(2, 2, kernel_regularizer=K.regularizers.L1L2(0.01, 0.01),
                               kernel_constraint=K.constraints.UnitNorm(axis=[0, 1, 2]))(h)
    h = layers.LayerNormalization(gamma_regularizer="l2",
                                  beta_constraint=K.constraints.MaxNorm(0.3, axis=0))(h)
    h = layers.PReLU(alpha_regularizer=K.regularizers.L2(0.1),
                     alpha_constraint=K.constraints.NonNeg())(h)
    h = layers.GroupNormalization(groups=2, beta_regularizer="l1")(h)
    h = layers.Flatten()(h)
    out = layers.Dense(2, activation="softmax")(h)
    model = K.Model(inputs, out)
    model.compile(K.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    return model


def _activity_subclass(K, layers):
    """On the tape: a model with a user's layer runs its layers there; their penalties join
    the add_loss() losses."""
    class Double(K.layers.Layer):
        def call(self, x):
            return x * 2.0

    inputs = K.Input(shape=(6,))
    h = layers.Dense(5, activation="tanh", activity_regularizer=K.regularizers.L2(0.05))(inputs)
    h = Double(activity_regularizer=K.regularizers.L1(0.01))(h)
    out = layers.Dense(1, activity_regularizer="l2")(h)
    model = K.Model(inputs, out)
    model.compile(K.optimizers.SGD(0.05), "mse")
    return model


@pytest.mark.parametrize("build", [_mlp, _cnn, _activity_mlp, _activity_cnn, _activity_subclass],
                         ids=["mlp", "cnn", "activity-mlp", "activity-cnn", "activity-tape"])
def test_training_with_penalties_and_constraints_takes_keras_s_steps(build):
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(4)
    shape = (6, 6, 2) if build in (_cnn, _activity_cnn) else (6,)
    x = rng.standard_normal((48,) + shape).astype(np.float32)
    y = (x.reshape(48, -1)[:, 0] > 0).astype(np.int64)
    if build is _activity_subclass:
        y = x[:, :1] * 0.5
    theirs, ours = build(keras, keras.layers), build(fastnn, L)
    ours.set_weights([np.asarray(w) for w in theirs.get_weights()])
    if "activity" not in build.__name__:        # (activity penalties exist after a call)
        np.testing.assert_allclose(ours.losses, [float(v) for v in theirs.losses], rtol=1e-5)
    kw = dict(batch_size=8, epochs=2, shuffle=False, verbose=0)
    h_theirs, h_ours = theirs.fit(x, y, **kw).history, ours.fit(x, y, **kw).history
    np.testing.assert_allclose(h_ours["loss"], h_theirs["loss"], rtol=1e-5)
    # (Adam turns float32 rounding in tiny gradients into differences of a few 1e-6)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.evaluate(x, y, verbose=0),
                               theirs.evaluate(x, y, verbose=0), rtol=1e-5)


@pytest.mark.parametrize("build", [_cnn, _activity_cnn], ids=["cnn", "activity-cnn"])
@pytest.mark.parametrize("fmt", [".keras", ".h5"])
def test_penalties_and_constraints_are_saved_both_ways(tmp_path, fmt, build):
    keras = pytest.importorskip("keras")
    x = np.random.default_rng(2).standard_normal((4, 6, 6, 2)).astype(np.float32)
    y = np.array([0, 1, 1, 0])
    for writer in (fastnn, keras):
        model = build(writer, writer.layers)
        path = str(tmp_path / f"{writer.__name__}{fmt}")
        model.save(path)
        reader = keras if writer is fastnn else fastnn
        loaded = reader.models.load_model(path)
        for a, b in zip(model.layers, loaded.layers):
            config_a, config_b = a.get_config(), b.get_config()
            for key in config_a:
                if key.endswith(("_regularizer", "_constraint")):
                    assert config_a[key] == config_b.get(key), (a.name, key)
        np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0),
                                   model.evaluate(x, y, verbose=0), rtol=1e-5)
        np.testing.assert_allclose([float(v) for v in loaded.losses],
                                   [float(v) for v in model.losses], rtol=1e-5)


def test_a_custom_layer_s_regularized_weight_trains_as_in_keras():
    """add_weight(regularizer=, constraint=) in a user's layer: the penalty joins the loss and
    its gradient the weight's; the constraint holds after every step."""
    keras = pytest.importorskip("keras")

    def build(K):
        class Scale(K.layers.Layer):
            def build(self, input_shape):
                self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones",
                                         regularizer=K.regularizers.L2(0.05),
                                         constraint=K.constraints.NonNeg(), name="w")

            def call(self, x):
                return x * self.w

        inputs = K.Input(shape=(5,))
        model = K.Model(inputs, K.layers.Dense(1)(Scale()(inputs)))
        model.compile(K.optimizers.SGD(0.2), "mse")
        return model

    rng = np.random.default_rng(5)
    x = rng.standard_normal((32, 5)).astype(np.float32)
    y = (x[:, :1] * -2.0).astype(np.float32)
    theirs, ours = build(keras), build(fastnn)
    ours.set_weights([np.asarray(w) for w in theirs.get_weights()])
    kw = dict(batch_size=8, epochs=3, shuffle=False, verbose=0)
    h_theirs, h_ours = theirs.fit(x, y, **kw).history, ours.fit(x, y, **kw).history
    np.testing.assert_allclose(h_ours["loss"], h_theirs["loss"], rtol=1e-5)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-6)
    assert (ours.get_weights()[0] >= 0).all()
