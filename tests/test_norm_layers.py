"""Normalization, noise and activation layers (LayerNormalization, GroupNormalization,
SpatialDropout1D/2D, GaussianNoise, GaussianDropout, PReLU, ELU, ReLU's max_value/threshold,
Softmax over other axes): outputs, configs and weights against Keras 3 on the same input and
weights, gradients against finite differences, the noise layers' statistics and seeds,
training in models against Keras's steps, argument errors as Keras's."""
import re
import warnings

import numpy as np
import pytest
from gradcheck import numeric_grad
from onbackend import get, put

import fastnn
from fastnn import activations
from fastnn import layers as L

# Keras 3 deprecates rms_scaling=True with a warning; fastnn warns as it does (tested below)
pytestmark = pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`:UserWarning")


def _keras():
    return pytest.importorskip("keras")


def _same_config(ours, theirs):
    """Our config has Keras's keys and values (Keras's dtype is a policy object; names
    count layers per session)."""
    drop = ("dtype", "name")
    norm = lambda c: {k: list(v) if isinstance(v, tuple) else v  # noqa: E731
                      for k, v in c.items() if k not in drop}
    assert norm(ours) == norm(theirs)


def _pair(name, kwargs, shape):
    """The fastnn layer and the Keras layer, built on `shape`, with the same random weights
    (alpha, gamma, beta far from their initial values)."""
    keras = _keras()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)        # rms_scaling's deprecation
        ours, theirs = getattr(L, name)(**kwargs), getattr(keras.layers, name)(**kwargs)
    ours.build((None,) + shape)
    theirs.build((None,) + shape)
    rng = np.random.default_rng(5)
    weights = [rng.uniform(-1.5, 1.5, np.shape(w)).astype(np.float32)
               for w in theirs.get_weights()]
    theirs.set_weights(weights)
    ours.set_weights(weights)
    return ours, theirs


# name, kwargs, input shape (without the batch axis); none of these is random
CASES = [
    ("LayerNormalization", {}, (5, 6)),
    ("LayerNormalization", dict(axis=[1, 2], epsilon=0.1), (3, 4)),
    ("LayerNormalization", dict(axis=(-2, -1), center=False), (2, 3, 4)),
    ("LayerNormalization", dict(scale=False, epsilon=1e-5), (7,)),
    ("LayerNormalization", dict(rms_scaling=True), (3, 4)),
    ("LayerNormalization", dict(axis=1, rms_scaling=True), (3, 4)),       # not the last
    ("GroupNormalization", dict(groups=2), (5, 6)),
    ("GroupNormalization", dict(groups=-1, epsilon=1e-2), (4, 4, 3)),     # instance norm
    ("GroupNormalization", dict(groups=3, axis=1, center=False), (6, 4)),
    ("GroupNormalization", dict(groups=1, scale=False), (3, 2, 4)),
    ("PReLU", {}, (3, 4)),
    ("PReLU", dict(shared_axes=[1, 2]), (3, 4, 5)),
    ("PReLU", dict(shared_axes=2, alpha_initializer="ones"), (3, 4)),
    ("ELU", {}, (6,)),
    ("ELU", dict(alpha=0.5), (3, 4)),
    ("ELU", dict(alpha=-0.7), (3, 4)),
    ("ReLU", dict(max_value=6.0), (3, 4)),
    ("ReLU", dict(max_value=0.8), (3, 4)),
    ("ReLU", dict(threshold=0.5), (3, 4)),
    ("ReLU", dict(negative_slope=0.1, max_value=1.0), (3, 4)),
    ("ReLU", dict(negative_slope=0.2, threshold=0.3, max_value=1.2), (3, 4)),
    ("ReLU", dict(negative_slope=0.2), (3, 4)),
    ("Softmax", dict(axis=1), (3, 4)),
    ("Softmax", dict(axis=[1, 2]), (3, 4)),
    ("Softmax", dict(axis=-2), (2, 3, 4)),
    ("Softmax", dict(axis=2), (3, 4)),              # the last axis, by its index
]
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


def _input(shape, seed=0):
    """Standard normal values at least 0.05 away from every kink the ReLU cases have (so
    finite differences of 1e-2 do not straddle one)."""
    x = np.random.default_rng(seed).standard_normal((3,) + shape).astype(np.float32) * 1.5
    for kink in (0.0, 0.3, 0.5, 0.8, 1.0, 1.2, 6.0):
        near = np.abs(x - kink) < 0.05
        x[near] = kink + 0.1
    return x


def _keras_layer_norm(x, gamma, beta, axes, eps, rms):
    """Keras's own formula (keras.ops.layer_normalization's general path), in float64: Keras
    on torch hands a non-trailing axis to torch's layer_norm, which only normalizes trailing
    axes and raises."""
    x = x.astype(np.float64)
    var = x.var(axis=axes, keepdims=True)
    shape = [1] * x.ndim
    for a in axes:
        shape[a] = x.shape[a]
    y = (x if rms else x - x.mean(axis=axes, keepdims=True)) / np.sqrt(var + eps)
    if gamma is not None:
        y = y * gamma.reshape(shape)
    return y if beta is None else y + beta.reshape(shape)


@pytest.mark.parametrize("name, kwargs, shape", CASES, ids=IDS)
def test_outputs_configs_and_weights_match_keras(name, kwargs, shape):
    keras = _keras()
    ours, theirs = _pair(name, kwargs, shape)
    x = _input(shape)
    out = ours(x)
    expected = keras.ops.convert_to_numpy(theirs(x))
    assert out.shape == expected.shape == x.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert [w.path.split("/")[-1] for w in theirs.weights] == ours.weight_names
    _same_config(ours.get_config(), theirs.get_config())
    assert ours.compute_output_shape((None,) + shape) == (None,) + shape
    clone = type(ours).from_config(ours.get_config())
    clone.build((None,) + shape)
    clone.set_weights(ours.get_weights())
    np.testing.assert_array_equal(clone(x), out)


@pytest.mark.parametrize("kwargs, axes", [(dict(axis=1), (1,)), (dict(axis=[1, 3]), (1, 3)),
                                          (dict(axis=[-3, 2], center=False), (1, 2))])
def test_layer_normalization_over_any_axes_is_keras_formula(kwargs, axes):
    layer = L.LayerNormalization(epsilon=1e-2, **kwargs)
    x = _input((3, 4, 5))
    layer.build((None, 3, 4, 5))
    weights = [np.random.default_rng(i).uniform(0.5, 1.5, w.shape).astype(np.float32)
               for i, w in enumerate(layer.get_weights())]
    layer.set_weights(weights)
    assert weights[0].shape == tuple(x.shape[a] for a in axes)
    expected = _keras_layer_norm(x, weights[0], weights[1] if len(weights) > 1 else None,
                                 axes, 1e-2, rms=False)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert np.abs(expected).max() > 0.5


def _loss_and_grads(layer, x, w):
    """sum(w * layer(x)) and its gradients for x and each weight, from the layer's backward."""
    y = layer.forward(put(x), training=True)
    value = float(np.sum(get(y).astype(np.float64) * w))
    dx = get(layer.backward(put(w, np.float32)))
    return value, dx, [get(layer.grads[n]).copy() for n in layer._trainable_names]


@pytest.mark.parametrize("name, kwargs, shape", CASES, ids=IDS)
def test_gradients_against_finite_differences(name, kwargs, shape):
    ours, _ = _pair(name, kwargs, shape)
    x = _input(shape, seed=1)
    w = np.random.default_rng(2).standard_normal(x.shape)
    _, dx, dweights = _loss_and_grads(ours, x, w)

    def f(v):
        return float(np.sum(ours(v.astype(np.float32)).astype(np.float64) * w))
    np.testing.assert_allclose(dx, numeric_grad(f, x.astype(np.float64), 1e-2),
                               rtol=1e-2, atol=2e-3)
    assert np.abs(dx).max() > 1e-2
    weights = ours.get_weights()
    for i, (name_, g) in enumerate(zip(ours._trainable_names, dweights)):
        def fw(v, i=i):
            ours.set_weights(weights[:i] + [v.astype(np.float32)] + weights[i + 1:])
            return float(np.sum(ours(x).astype(np.float64) * w))
        numeric = numeric_grad(fw, weights[i].astype(np.float64), 1e-2)
        ours.set_weights(weights)
        np.testing.assert_allclose(g, numeric, rtol=1e-2, atol=2e-3, err_msg=name_)
        assert np.abs(g).max() > 1e-2


# ---- activation layers in a graph: the schedule folds only exact kernels -----------------
def test_clipping_relu_and_other_axis_softmax_are_not_folded_into_a_dense():
    """At inference the schedule folds an activation layer after a linear Dense into its
    GEMM; a ReLU with max_value or threshold, and a softmax over another axis, must still
    compute what they say. (A second output makes these graphs, which run on a schedule,
    not chains, which run as a Sequential does.)"""
    x = _input((4, 6))
    for layer, reference in (
            (L.ReLU(max_value=0.5), lambda z: np.clip(z, 0, 0.5)),
            (L.ReLU(threshold=0.4), lambda z: np.where(z > 0.4, z, 0)),
            (L.ELU(alpha=-0.5), lambda z: np.where(z > 0, z, -0.5 * np.expm1(z))),
            (L.Softmax(axis=1), lambda z: np.exp(z) / np.exp(z).sum(axis=1, keepdims=True))):
        inputs = L.Input(shape=(4, 6))
        dense = L.Dense(5)
        model = fastnn.Model(inputs, [layer(dense(inputs)), L.Flatten()(inputs)])
        z = dense(x)
        np.testing.assert_allclose(model.predict(x, verbose=0)[0], reference(z), rtol=1e-5,
                                   atol=1e-6)
        assert layer in [s[0] for s in model._schedule.inference_steps]     # its own step
        assert np.ptp(reference(z)) > 0.1


def test_plain_relu_and_elu_still_fold_into_the_dense():
    from fastnn.schedule import _Fused
    inputs = L.Input(shape=(6,))
    model = fastnn.Model(inputs, [L.ELU(alpha=0.5)(L.Dense(5)(L.ReLU()(L.Dense(5)(inputs)))),
                                  L.Identity()(inputs)])
    x = _input((6,))
    out = model.predict(x, verbose=0)[0]
    fused = [s[0] for s in model._schedule.inference_steps if isinstance(s[0], _Fused)]
    assert [f.act[0] for f in fused] == [activations.RELU, activations.ELU]
    assert fused[1].act[1] == 0.5
    d1, d2 = model.layers[1], model.layers[3]
    h = np.maximum(d1(x), 0)
    z = d2(h)
    np.testing.assert_allclose(out, np.where(z > 0, z, 0.5 * np.expm1(z)), rtol=1e-5,
                               atol=1e-6)


# ---- noise layers ------------------------------------------------------------------------
NOISE = [("SpatialDropout1D", dict(rate=0.4), (6, 5)),
         ("SpatialDropout2D", dict(rate=0.4), (3, 4, 5)),
         ("SpatialDropout2D", dict(rate=0.4, data_format="channels_first"), (5, 3, 4)),
         ("GaussianNoise", dict(stddev=0.3), (7,)),
         ("GaussianDropout", dict(rate=0.3), (7,))]


@pytest.mark.parametrize("name, kwargs, shape", NOISE, ids=[n[0] for n in NOISE])
def test_noise_layers_are_the_identity_at_inference_and_seeded(name, kwargs, shape):
    x = _input(shape)
    layer = getattr(L, name)(seed=3, **kwargs)
    np.testing.assert_array_equal(layer(x), x)                      # a direct call: inference
    np.testing.assert_array_equal(layer(x, training=False), x)
    model = fastnn.Sequential([L.Input(shape=shape), layer])
    np.testing.assert_array_equal(model.predict(x, verbose=0), x)
    first = layer(x, training=True)
    assert not np.allclose(first, x)
    again = getattr(L, name)(seed=3, **kwargs)(x, training=True)     # the same seed repeats
    np.testing.assert_array_equal(again, first)
    other = getattr(L, name)(seed=4, **kwargs)(x, training=True)
    assert not np.array_equal(other, first)
    assert not np.array_equal(layer(x, training=True), first)       # the stream goes on
    fastnn.utils.set_random_seed(9)                                 # no seed: the global one
    unseeded = getattr(L, name)(**kwargs)(x, training=True)
    fastnn.utils.set_random_seed(9)
    np.testing.assert_array_equal(getattr(L, name)(**kwargs)(x, training=True), unseeded)


@pytest.mark.parametrize("name, kwargs, channel", [
    ("SpatialDropout1D", dict(rate=0.3), -1),
    ("SpatialDropout2D", dict(rate=0.6), -1),
    ("SpatialDropout2D", dict(rate=0.25, data_format="channels_first"), 1)])
def test_spatial_dropout_drops_whole_channels_at_the_rate(name, kwargs, channel):
    rate = kwargs["rate"]
    shape = (2000, 4, 6) if name.endswith("1D") else (2000, 3, 4, 5)
    x = np.ones(shape, np.float32)
    y = getattr(L, name)(seed=1, **kwargs)(x, training=True)
    values = np.unique(y)
    np.testing.assert_allclose(values, [0.0, 1 / (1 - rate)], rtol=1e-6)
    moved = np.moveaxis(y, channel, 1).reshape(shape[0], shape[channel], -1)
    assert (moved == moved[:, :, :1]).all()                 # one draw per sample and channel
    dropped = (moved[:, :, 0] == 0).mean()
    assert abs(dropped - rate) < 0.02
    assert abs(y.mean() - 1.0) < 0.05


def test_spatial_dropout_rate_one_drops_everything_and_zero_nothing():
    x = _input((4, 3))
    np.testing.assert_array_equal(L.SpatialDropout1D(1.0)(x, training=True), 0 * x)
    np.testing.assert_array_equal(L.SpatialDropout1D(0.0)(x, training=True), x)


def test_gaussian_dropout_mean_and_variance():
    rate = 0.3
    y = L.GaussianDropout(rate, seed=2)(np.ones((400, 500), np.float32), training=True)
    assert abs(y.mean() - 1.0) < 0.01
    assert abs(y.var() / (rate / (1 - rate)) - 1) < 0.02
    x = np.full((400, 500), -2.0, np.float32)       # multiplicative: scales with x
    y = L.GaussianDropout(rate, seed=2)(x, training=True)
    assert abs(y.mean() + 2.0) < 0.02 and abs(y.std() / (2 * np.sqrt(rate / (1 - rate))) - 1) < 0.02


def test_gaussian_noise_mean_and_stddev():
    x = np.full((400, 500), 3.0, np.float32)
    y = L.GaussianNoise(0.25, seed=2)(x, training=True)
    noise = y - 3.0
    assert abs(noise.mean()) < 0.005 and abs(noise.std() / 0.25 - 1) < 0.01
    # roughly normal: 68% within one standard deviation, 95% within two
    assert abs((np.abs(noise) < 0.25).mean() - 0.6827) < 0.01
    assert abs((np.abs(noise) < 0.5).mean() - 0.9545) < 0.01


@pytest.mark.parametrize("name, kwargs, shape", NOISE, ids=[n[0] for n in NOISE])
def test_noise_gradients_are_the_noise(name, kwargs, shape):
    """dy/dx is the multiplier drawn in this step (1 for additive noise)."""
    layer = getattr(L, name)(seed=3, **kwargs)
    x = _input(shape)
    layer.build((None,) + shape)
    w = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    y = get(layer.forward(put(x), training=True))
    dx = get(layer.backward(put(w)))
    multiplier = np.ones_like(x) if name == "GaussianNoise" else y / x
    np.testing.assert_allclose(dx, w * multiplier, rtol=1e-5, atol=1e-6)


def test_gaussian_dropout_rate_one_is_refused_when_it_would_run():
    layer = L.GaussianDropout(1.0)
    x = _input((3,))
    np.testing.assert_array_equal(layer(x), x)
    with pytest.raises(ValueError, match="rate=1.0"):
        layer(x, training=True)


# ---- training in models: fastnn's steps are Keras's ----------------------------------------
def _build(m, functional):
    layers = m.layers
    if not functional:
        return m.Sequential([
            m.Input(shape=(4, 6)), layers.Dense(8), layers.LayerNormalization(),
            layers.PReLU(alpha_initializer="ones", shared_axes=[1]), layers.Dense(6),
            layers.GroupNormalization(groups=3), layers.ELU(alpha=0.7),
            layers.ReLU(max_value=1.0, negative_slope=0.1), layers.Flatten(),
            layers.Dense(3, activation="softmax")])
    inputs = m.Input(shape=(4, 6))
    h = layers.Dense(6)(inputs)
    a = layers.LayerNormalization(axis=[1, 2], center=False)(h)
    b = layers.GroupNormalization(groups=2, axis=-1)(h)
    h = layers.Add()([a, b])
    h = layers.ReLU(threshold=0.1)(layers.Dense(5)(h))
    return m.Model(inputs, layers.Softmax(axis=1)(h))       # a softmax over the steps


@pytest.mark.parametrize("functional", [False, True], ids=["sequential", "functional"])
def test_fit_steps_and_predictions_equal_keras(functional):
    keras = _keras()
    ours, theirs = _build(fastnn, functional), _build(keras, functional)
    rng = np.random.default_rng(3)
    weights = [rng.uniform(-0.8, 0.8, np.shape(w)).astype(np.float32)
               for w in theirs.get_weights()]
    theirs.set_weights(weights)
    ours.set_weights(weights)
    x = rng.standard_normal((16, 4, 6)).astype(np.float32)
    out_shape = (16, 3) if not functional else (16, 4, 5)
    labels = rng.integers(0, out_shape[-1], out_shape[:-1])
    y = np.eye(out_shape[-1], dtype=np.float32)[labels]
    np.testing.assert_allclose(ours.predict(x, verbose=0),
                               keras.ops.convert_to_numpy(theirs.predict(x, verbose=0)),
                               rtol=1e-5, atol=1e-5)
    for m, model in ((fastnn, ours), (keras, theirs)):
        model.compile(optimizer=m.optimizers.SGD(0.5), loss="categorical_crossentropy")
        for _ in range(3):
            model.train_on_batch(x, y)
    for mine, their in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(mine, keras.ops.convert_to_numpy(their), rtol=1e-4,
                                   atol=1e-5)
    moved = [np.abs(a - b).max() for a, b in zip(ours.get_weights(), weights)]
    assert min(moved) > 1e-4                        # every weight trained
    np.testing.assert_allclose(ours.predict(x, verbose=0),
                               keras.ops.convert_to_numpy(theirs.predict(x, verbose=0)),
                               rtol=1e-4, atol=1e-5)


def test_fit_with_noise_layers_trains_and_predicts_without_noise():
    fastnn.utils.set_random_seed(4)
    model = fastnn.Sequential([
        L.Input(shape=(6, 4)), L.GaussianNoise(0.2), L.SpatialDropout1D(0.2),
        L.Dense(8), L.LayerNormalization(), L.GaussianDropout(0.2), L.PReLU(),
        L.Flatten(), L.Dense(2, activation="softmax")])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 6, 4)).astype(np.float32)
    y = (x[:, :, 0].sum(axis=1) > 0).astype(np.int64)
    model.compile(fastnn.optimizers.Adam(0.01), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x, y, epochs=15, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < 0.7 * history.history["loss"][0]
    p = model.predict(x, verbose=0)
    np.testing.assert_array_equal(model.predict(x, verbose=0), p)   # no noise at inference
    assert model.evaluate(x, y, verbose=0)[1] > 0.8


# ---- argument errors: Keras's ---------------------------------------------------------------
BAD = [
    ("LayerNormalization", dict(axis="last"), None, TypeError),
    ("GroupNormalization", dict(groups=0), None, ValueError),
    ("GroupNormalization", dict(groups=2.5), None, ValueError),
    ("GroupNormalization", dict(groups=4), (6,), ValueError),           # not a divisor
    ("GroupNormalization", dict(groups=8), (6,), ValueError),           # more than channels
    ("SpatialDropout1D", dict(rate=1.5), None, ValueError),
    ("SpatialDropout2D", dict(rate=-0.1), None, ValueError),
    ("GaussianNoise", dict(stddev=2.0), None, ValueError),
    ("GaussianDropout", dict(rate=-1), None, ValueError),
    ("ReLU", dict(max_value=-1.0), None, ValueError),
    ("ReLU", dict(negative_slope=-0.5), None, ValueError),
    ("ReLU", dict(threshold=-0.5), None, ValueError),
]


@pytest.mark.parametrize("name, kwargs, shape, error", BAD,
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_arguments_raise_keras_errors(name, kwargs, shape, error):
    keras = _keras()

    def make(module):
        layer = getattr(module.layers, name)(**kwargs)
        if shape is not None:
            layer.build((None,) + shape)
    with pytest.raises(error) as theirs:
        make(keras)
    with pytest.raises(error, match=re.escape(str(theirs.value))):
        make(fastnn)


@pytest.mark.parametrize("make, shape, message", [
    (lambda: L.SpatialDropout1D(0.5), (3, 4, 5), "expected ndim=3"),
    (lambda: L.SpatialDropout2D(0.5), (3, 4), "expected ndim=4"),
    (lambda: L.SpatialDropout2D(0.5, data_format="nhwc"), None, "data_format"),
    (lambda: L.LayerNormalization(axis=3), (3, 4), "axis=3 is out of bounds"),
    (lambda: L.LayerNormalization(axis=0), (3, 4), "axis=0 is out of bounds"),
    (lambda: L.LayerNormalization(axis=1), (None, 4), "must be known"),
    (lambda: L.LayerNormalization(axis=[2, -1]), (3, 4), "names an axis twice"),
    (lambda: L.GroupNormalization(groups=2, axis=-3), (3, 4), "out of bounds"),
    (lambda: L.LayerNormalization(gamma_regularizer="l9"), None, "gamma_regularizer"),
    (lambda: L.PReLU(alpha_constraint="non_negative"), None, "alpha_constraint"),
    (lambda: L.PReLU(), (None, 4), "shared_axes"),
    (lambda: L.PReLU(shared_axes=[3]), (3, 4), "shared_axes"),
    (lambda: L.Softmax(axis="x"), None, "axis"),
    (lambda: L.Softmax(axis=[1, 5]), (3, 4), "out of bounds"),
    (lambda: L.ELU(alpha=float("nan")), None, "alpha"),
    (lambda: L.GaussianNoise(0.1, seed=-1), None, "seed"),
])
def test_arguments_fastnn_cannot_take_raise_by_name(make, shape, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        layer = make()
        layer.build((None,) + shape)


def test_unbuilt_and_built_configs_round_trip():
    layer = L.LayerNormalization(axis=(2, 1), rms_scaling=False)
    assert layer.get_config()["axis"] == [2, 1]
    layer.build((None, 3, 4))
    assert layer.get_config()["axis"] == [1, 2]         # sorted once built, as Keras
    group = L.GroupNormalization(groups=-1)
    assert group.get_config()["groups"] == -1
    group.build((None, 5, 4))
    assert group.get_config()["groups"] == 4            # instance norm: one per channel
    assert L.SpatialDropout1D(0.2).get_config().keys() == {"name", "dtype", "rate", "seed"}
    with pytest.warns(UserWarning, match="rms_scaling=True"):
        L.LayerNormalization(rms_scaling=True)


@pytest.mark.parametrize("name, kwargs, shape", NOISE, ids=[n[0] for n in NOISE])
def test_noise_layer_configs_are_keras_s(name, kwargs, shape):
    keras = _keras()
    ours = getattr(L, name)(seed=5, **kwargs)
    theirs = getattr(keras.layers, name)(seed=5, **kwargs)
    _same_config(ours.get_config(), theirs.get_config())
    clone = type(ours).from_config(ours.get_config())
    assert clone.get_config() == ours.get_config()
    assert ours.compute_output_shape((None,) + shape) == (None,) + shape
    assert ours.weights == [] and theirs.weights == []


def test_a_shared_layer_normalization_and_prelu_train_as_keras_s():
    """One LayerNormalization and one PReLU called on two branches: their weights' gradients
    add up over both calls."""
    keras = _keras()

    def build(m):
        inputs = m.Input(shape=(5,))
        norm, act = m.layers.LayerNormalization(), m.layers.PReLU()
        a = act(norm(m.layers.Dense(4)(inputs)))
        b = act(norm(m.layers.Dense(4)(inputs)))
        return m.Model(inputs, m.layers.Dense(2)(m.layers.Concatenate()([a, b])))
    ours, theirs = build(fastnn), build(keras)
    rng = np.random.default_rng(8)
    weights = [rng.uniform(-1, 1, np.shape(w)).astype(np.float32) for w in theirs.get_weights()]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    x = rng.standard_normal((8, 5)).astype(np.float32)
    y = rng.standard_normal((8, 2)).astype(np.float32)
    for m, model in ((fastnn, ours), (keras, theirs)):
        model.compile(optimizer=m.optimizers.SGD(0.3), loss="mse")
        model.train_on_batch(x, y)
    for mine, their, before in zip(ours.get_weights(), theirs.get_weights(), weights):
        np.testing.assert_allclose(mine, keras.ops.convert_to_numpy(their), rtol=1e-4,
                                   atol=1e-5)
        assert np.abs(mine - before).max() > 1e-4
