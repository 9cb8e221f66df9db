"""Shape layers (Reshape, Permute, RepeatVector, ZeroPadding2D, Cropping2D, UpSampling2D,
Identity): outputs against NumPy (and Keras 3 where installed), output shapes, gradients
through a model against finite differences, argument errors."""
import numpy as np
import pytest
from test_subclassing import _fd_check

import fastnn
from fastnn import layers as L

RNG = np.random.default_rng(0)
IMAGES = RNG.standard_normal((2, 4, 5, 3)).astype(np.float32)
VECTORS = RNG.standard_normal((2, 6)).astype(np.float32)

CASES = [
    ("Reshape", dict(target_shape=(3, -1)), VECTORS, lambda x: x.reshape(2, 3, 2)),
    ("Reshape", dict(target_shape=(5, 12)), IMAGES, lambda x: x.reshape(2, 5, 12)),
    ("Permute", dict(dims=(3, 1, 2)), IMAGES, lambda x: x.transpose(0, 3, 1, 2)),
    ("RepeatVector", dict(n=3), VECTORS, lambda x: np.repeat(x[:, None], 3, axis=1)),
    ("ZeroPadding2D", dict(padding=((1, 2), (0, 3))), IMAGES,
     lambda x: np.pad(x, [(0, 0), (1, 2), (0, 3), (0, 0)])),
    ("ZeroPadding2D", dict(padding=2), IMAGES,
     lambda x: np.pad(x, [(0, 0), (2, 2), (2, 2), (0, 0)])),
    ("Cropping2D", dict(cropping=((1, 0), (2, 1))), IMAGES, lambda x: x[:, 1:, 2:4]),
    ("Cropping2D", dict(cropping=1), IMAGES, lambda x: x[:, 1:3, 1:4]),
    ("UpSampling2D", dict(size=(2, 3)), IMAGES,
     lambda x: np.repeat(np.repeat(x, 2, axis=1), 3, axis=2)),
    ("Identity", dict(), IMAGES, lambda x: x),
]


@pytest.mark.parametrize("name, kwargs, x, ref", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_shape_layer_outputs(name, kwargs, x, ref):
    layer = getattr(L, name)(**kwargs)
    out = layer(x)
    np.testing.assert_array_equal(out, ref(x))
    assert layer.compute_output_shape((None,) + x.shape[1:]) == (None,) + out.shape[1:]
    keras = pytest.importorskip("keras")
    theirs = getattr(keras.layers, name)(**kwargs)
    np.testing.assert_array_equal(out, np.asarray(theirs(x)))
    symbolic = layer(L.Input(shape=x.shape[1:]))
    assert symbolic.shape == (None,) + out.shape[1:]
    assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()


def test_gradients_through_shape_layers():
    fastnn.utils.set_random_seed(0)
    inputs = L.Input(shape=(3, 4, 2))
    h = L.Conv2D(2, 2, activation="tanh")(L.ZeroPadding2D(((1, 0), (0, 1)))(inputs))
    h = L.UpSampling2D((1, 2))(L.Cropping2D(((0, 1), (1, 0)))(h))
    h = L.Permute((2, 1, 3))(h)
    h = L.Reshape((-1,))(h)
    model = fastnn.Model(inputs, L.Dense(2)(L.Flatten()(L.RepeatVector(2)(h))))
    rng = np.random.default_rng(1)
    _fd_check(model, rng.standard_normal((3, 3, 4, 2)).astype(np.float32),
              rng.standard_normal((3, 2)).astype(np.float32))


def test_shape_layers_in_a_sequential():
    model = fastnn.Sequential([L.Input(shape=(6,)), L.Reshape((2, 3)), L.Permute((2, 1)),
                               L.Flatten(), L.Dense(2)])
    model.compile("sgd", "mse")
    history = model.fit(VECTORS, np.zeros((2, 2)), epochs=3, verbose=0)
    assert history.history["loss"][2] < history.history["loss"][0]


@pytest.mark.parametrize("make, arg", [
    (lambda: L.Reshape((2, -1, -1)), "target_shape"),
    (lambda: L.Permute((1, 1)), "dims"),
    (lambda: L.RepeatVector(0), "n"),
    (lambda: L.ZeroPadding2D(-1), "padding"),
    (lambda: L.Cropping2D((1, 2, 3)), "cropping"),
    (lambda: L.UpSampling2D(interpolation="bilinear"), "interpolation"),
])
def test_shape_layer_arguments(make, arg):
    with pytest.raises(ValueError, match=arg):
        make()


def test_shape_layer_shape_errors():
    with pytest.raises(ValueError, match="total size"):
        L.Reshape((4, 4))(L.Input(shape=(6,)))
    with pytest.raises(ValueError, match="leaves nothing"):
        L.Cropping2D(2)(L.Input(shape=(4, 4, 1)))
    with pytest.raises(ValueError, match="rank 4"):
        L.ZeroPadding2D()(L.Input(shape=(4, 4)))


@pytest.mark.parametrize("shapes, axes, normalize", [
    (((2, 5), (2, 5)), 1, False), (((2, 5), (2, 5)), -1, True),
    (((2, 3, 4), (2, 4, 5)), (2, 1), False), (((2, 3, 4), (2, 3, 6)), (1, 1), False),
    (((2, 3, 4), (2, 5, 4)), (2, 2), True)])
def test_dot_matches_numpy_and_keras(shapes, axes, normalize):
    a = RNG.standard_normal(shapes[0]).astype(np.float32)
    b = RNG.standard_normal(shapes[1]).astype(np.float32)
    a1, a2 = (axes, axes) if isinstance(axes, int) else axes
    a1, a2 = a1 % a.ndim, a2 % b.ndim
    na, nb = a, b
    if normalize:
        na = a / np.sqrt((a * a).sum(a1, keepdims=True))
        nb = b / np.sqrt((b * b).sum(a2, keepdims=True))
    expected = np.stack([np.tensordot(na[i], nb[i], axes=(a1 - 1, a2 - 1))
                         for i in range(len(a))]).reshape(len(a), -1)
    out = L.Dot(axes=axes, normalize=normalize)([a, b])
    np.testing.assert_allclose(out.reshape(len(a), -1), expected, rtol=1e-5, atol=1e-6)
    symbolic = L.dot([L.Input(shape=shapes[0][1:]), L.Input(shape=shapes[1][1:])], axes=axes,
                     normalize=normalize)
    assert symbolic.shape == (None,) + out.shape[1:]
    keras = pytest.importorskip("keras")
    theirs = np.asarray(keras.layers.Dot(axes=axes, normalize=normalize)([a, b]))
    np.testing.assert_allclose(out, theirs, rtol=1e-5, atol=1e-6)


def test_dot_gradients():
    fastnn.utils.set_random_seed(3)
    inputs = L.Input(shape=(4,))
    left = L.Reshape((2, 3))(L.Dense(6)(inputs))
    right = L.Reshape((3, 2))(L.Dense(6, activation="tanh")(inputs))
    product = L.Dot(axes=(2, 1))([left, right])
    cosine = L.Dot(axes=1, normalize=True)([L.Dense(3)(inputs), L.Dense(3)(inputs)])
    model = fastnn.Model(inputs, L.concatenate([L.Flatten()(product), cosine]))
    rng = np.random.default_rng(3)
    _fd_check(model, rng.standard_normal((4, 4)).astype(np.float32),
              rng.standard_normal((4, 5)).astype(np.float32))


def test_zero_padding_inside_a_graph_keeps_zero_borders_and_gradients():
    """On the schedule ZeroPadding2D pads into a buffer kept across batches (its border
    zeroed once): batches of another size, and the gradient through it to a layer before."""
    fastnn.utils.set_random_seed(3)
    inputs = L.Input(shape=(None, None, 2))
    h = L.ZeroPadding2D(((2, 1), (0, 1)))(L.Conv2D(3, 1, activation="tanh")(inputs))
    model = fastnn.Model(inputs, L.Dense(2)(L.GlobalMaxPooling2D()(L.Conv2D(2, 2)(h))))
    assert model._schedule is not None
    rng = np.random.default_rng(3)
    schedule = model._schedule
    for size in ((3, 4), (5, 2), (3, 4)):
        x = rng.standard_normal((2,) + size + (2,)).astype(np.float32)
        y = model.predict(x, verbose=0)                 # pooled buffers, dirty from others
        model._schedule = None
        np.testing.assert_allclose(y, model.predict(x, verbose=0), rtol=1e-6)   # the tape
        model._schedule = schedule
    pad = model.layers[2]
    for size in ((3, 4), (5, 2), (3, 4)):             # training: the layer's own buffer
        x = rng.standard_normal((2,) + size + (2,)).astype(np.float32)
        model._forward(x, training=True)
        y = pad._state().workspace["y"]
        assert not y[:, :2].any() and not y[:, -1:].any() and not y[:, :, -1:].any()
    fixed_inputs = L.Input(shape=(3, 4, 2))
    h = L.ZeroPadding2D(((2, 1), (0, 1)))(L.Conv2D(3, 1, activation="tanh")(fixed_inputs))
    fixed = fastnn.Model(fixed_inputs, L.Dense(2)(L.Flatten()(L.Conv2D(2, 2)(h))))
    _fd_check(fixed, rng.standard_normal((3, 3, 4, 2)).astype(np.float32),
              rng.standard_normal((3, 2)).astype(np.float32))
