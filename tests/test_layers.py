"""Layers and initializers: Keras names, shapes, weight order, configs, formulas, gradients."""
import math

import numpy as np
import pytest
from onbackend import get, put

from fastnn import initializers, layers
from fastnn.backend import clear_session


def test_auto_names_follow_keras():
    clear_session()
    names = [layers.Dense(2).name, layers.Dense(2).name, layers.Flatten().name,
             layers.Dropout(0.1).name, layers.Activation("relu").name,
             layers.InputLayer(shape=(3,)).name, layers.LeakyReLU().name]
    assert names == ["dense", "dense_1", "flatten", "dropout", "activation", "input_layer",
                     "leaky_re_lu"]
    assert layers.Dense(2, name="out").name == "out"
    clear_session()
    assert layers.Dense(2).name == "dense"


def test_dense_weights_shapes_order_and_call(rng):
    d = layers.Dense(4, activation="relu")
    x = rng.standard_normal((5, 3)).astype(np.float32)
    y = d(x)
    kernel, bias = d.get_weights()
    assert kernel.shape == (3, 4) and bias.shape == (4,)
    assert kernel.dtype == np.float32
    np.testing.assert_allclose(y, np.maximum(x @ kernel + bias, 0), rtol=1e-5, atol=1e-6)
    assert d.count_params() == 16
    assert d.output_shape == (None, 4)


def test_dense_contracts_last_axis_for_rank3(rng):
    d = layers.Dense(2)
    x = rng.standard_normal((4, 5, 3)).astype(np.float32)
    y = d(x)
    k, b = d.get_weights()
    assert y.shape == (4, 5, 2)
    np.testing.assert_allclose(y, x @ k + b, rtol=1e-5, atol=1e-6)


def test_dense_backward_matches_finite_differences(rng):
    from fastnn.backend import use_backend
    with use_backend("numpy"):
        d = layers.Dense(3, activation="gelu")
        x = rng.standard_normal((4, 5)).astype(np.float32)
        d.build((None, 5))
        y = d.forward(x, training=True).copy()
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx = d.backward(dy.copy()).copy()
        dk = d.grads["kernel"].copy()

        def f(xx, kk):
            z = xx.astype(np.float64) @ kk + d.bias
            from scipy.special import erf
            return (0.5 * z * (1 + erf(z / math.sqrt(2))) * dy).sum()

        eps = 1e-3
        k = d.kernel.astype(np.float64)
        num_dx = np.zeros_like(x, dtype=np.float64)
        for idx in np.ndindex(x.shape):
            xp, xm = x.astype(np.float64), x.astype(np.float64)
            xp[idx] += eps
            xm[idx] -= eps
            num_dx[idx] = (f(xp, k) - f(xm, k)) / (2 * eps)
        num_dk = np.zeros_like(k)
        for idx in np.ndindex(k.shape):
            kp, km = k.copy(), k.copy()
            kp[idx] += eps
            km[idx] -= eps
            num_dk[idx] = (f(x, kp) - f(x, km)) / (2 * eps)
        np.testing.assert_allclose(dx, num_dx, rtol=2e-3, atol=1e-4)
        np.testing.assert_allclose(dk, num_dk, rtol=2e-3, atol=1e-4)


def test_set_weights_validates_count_and_shape():
    d = layers.Dense(2)
    d.build((None, 3))
    with pytest.raises(ValueError, match="expects 2 weights.*received 1"):
        d.set_weights([np.zeros((3, 2))])
    with pytest.raises(ValueError, match=r"'kernel': expected shape \(3, 2\), received \(2, 2\)"):
        d.set_weights([np.zeros((2, 2)), np.zeros(2)])
    d.set_weights([np.ones((3, 2)), np.full(2, 5.0)])
    kernel, bias = d.get_weights()
    assert kernel.sum() == 6 and bias.tolist() == [5.0, 5.0]


def test_unknown_activation_and_bad_units():
    with pytest.raises(ValueError, match="Unknown activation 'rellu'.*relu"):
        layers.Dense(3, activation="rellu")
    with pytest.raises(ValueError, match="units"):
        layers.Dense(0)
    with pytest.raises(TypeError, match="bogus"):
        layers.Dense(3, bogus=True)


def test_dense_get_config_round_trip():
    d = layers.Dense(7, activation="tanh", use_bias=False, kernel_initializer="he_normal",
                     name="d7")
    cfg = d.get_config()
    assert cfg["units"] == 7 and cfg["activation"] == "tanh" and cfg["use_bias"] is False
    assert cfg["kernel_initializer"]["class_name"] == "HeNormal"
    d2 = layers.Dense.from_config(cfg)
    assert (d2.units, d2.name, d2.use_bias) == (7, "d7", False)
    assert isinstance(d2.kernel_initializer, initializers.HeNormal)


def test_legacy_input_shape_and_input_dim():
    assert layers.Dense(2, input_shape=[4]).input_shape_arg == (4,)
    assert layers.Dense(2, input_dim=6).input_shape_arg == (6,)
    assert layers.Flatten(input_shape=(28, 28)).input_shape_arg == (28, 28)


def test_flatten_and_dropout(rng):
    f = layers.Flatten()
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    y = f(x)
    assert y.shape == (2, 12)
    np.testing.assert_array_equal(y, x.reshape(2, 12))   # NHWC (row-major) order
    assert f.compute_output_shape((None, 3, 4)) == (None, 12)
    d = layers.Dropout(0.25)
    x = np.ones((200, 100), np.float32)
    np.testing.assert_array_equal(d(x), x)               # inference: identity
    d.build((None, 100))
    y = get(d.forward(put(x), training=True))
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    dx = get(d.backward(put(np.ones_like(x))))
    np.testing.assert_array_equal(dx != 0, kept)
    with pytest.raises(ValueError, match="rate"):
        layers.Dropout(1.0)


def test_leaky_relu_layer_default_slope_is_0_3(rng):
    x = np.array([[-1.0, 2.0]], np.float32)
    np.testing.assert_allclose(layers.LeakyReLU()(x), [[-0.3, 2.0]], rtol=1e-6)
    from fastnn import activations
    np.testing.assert_allclose(activations.leaky_relu(x), [[-0.2, 2.0]], rtol=1e-6)


@pytest.mark.parametrize("name,scale,mode,uniform", [
    ("glorot_uniform", 1.0, "avg", True), ("glorot_normal", 1.0, "avg", False),
    ("he_normal", 2.0, "in", False), ("he_uniform", 2.0, "in", True),
    ("lecun_normal", 1.0, "in", False), ("lecun_uniform", 1.0, "in", True)])
def test_variance_scaling_formulas(name, scale, mode, uniform):
    shape = (400, 300)
    w = initializers.get(name)(shape)
    fan = {"in": 400, "avg": 350}[mode]
    std = math.sqrt(scale / fan)
    assert w.dtype == np.float32 and w.shape == shape
    assert abs(w.std() - std) / std < 0.02
    if uniform:
        assert np.abs(w).max() <= math.sqrt(3 * scale / fan) + 1e-7
    else:   # truncated at two (pre-correction) standard deviations
        assert np.abs(w).max() <= 2 * std / 0.87962566103423978 + 1e-6


def test_conv_fans_include_receptive_field():
    assert initializers.compute_fans((3, 3, 8, 16)) == (72, 144)
    assert initializers.compute_fans((784, 10)) == (784, 10)


def test_simple_initializers_defaults():
    assert initializers.get("zeros")((2,)).tolist() == [0, 0]
    assert initializers.get("ones")((2,)).tolist() == [1, 1]
    rn = initializers.get("random_normal")((100000,))
    assert abs(rn.std() - 0.05) < 1e-3
    ru = initializers.get("random_uniform")((100000,))
    assert -0.05 <= ru.min() and ru.max() <= 0.05
    tn = initializers.get("truncated_normal")((100000,))
    assert np.abs(tn).max() <= 0.1 + 1e-7
    with pytest.raises(ValueError, match="Unknown initializer"):
        initializers.get("glorot")


def test_seeded_initialization_is_reproducible():
    from fastnn.utils import set_random_seed
    set_random_seed(7)
    a = layers.Dense(5)
    a.build((None, 4))
    set_random_seed(7)
    b = layers.Dense(5)
    b.build((None, 4))
    np.testing.assert_array_equal(a.kernel, b.kernel)
