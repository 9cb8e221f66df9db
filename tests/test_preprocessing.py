"""Preprocessing layers (Rescaling, Normalization, Resizing, CenterCrop, RandomFlip,
RandomRotation, RandomZoom, RandomTranslation, RandomContrast): outputs against Keras 3 on the
same input, configs, weights and files both ways, adapt against NumPy, the random layers'
training/inference behaviour, seeds and invariants, gradients, argument errors."""
import numpy as np
import pytest
from test_subclassing import _fd_check

import fastnn
from fastnn import layers as L
from fastnn import ops
from fastnn.autodiff import Tensor, gradients, tape

RNG = np.random.default_rng(7)
IMAGES = RNG.uniform(0, 255, (3, 7, 9, 2)).astype(np.float32)


def _keras():
    return pytest.importorskip("keras")


def _same_config(ours, theirs):
    """Our config has Keras's keys and values (Keras's dtype is a policy object; names
    count layers per session)."""
    theirs = {k: v for k, v in theirs.items() if k not in ("dtype", "name")}
    ours = {k: v for k, v in ours.items() if k not in ("dtype", "name")}
    norm = lambda c: {k: list(v) if isinstance(v, tuple) else v for k, v in c.items()}  # noqa
    assert norm(ours) == norm(theirs)


DETERMINISTIC = [
    ("Rescaling", dict(scale=1 / 255.0)),
    ("Rescaling", dict(scale=1 / 127.5, offset=-1)),
    ("Rescaling", dict(scale=[1.0, 0.5], offset=[0.0, 2.0])),
    ("Resizing", dict(height=4, width=5)),
    ("Resizing", dict(height=11, width=6, interpolation="nearest")),
    ("Resizing", dict(height=5, width=5, crop_to_aspect_ratio=True)),
    ("Resizing", dict(height=5, width=5, pad_to_aspect_ratio=True, fill_value=2.0)),
    ("Resizing", dict(height=3, width=4, antialias=True)),
    ("CenterCrop", dict(height=4, width=5)),
    ("CenterCrop", dict(height=7, width=9)),
    ("CenterCrop", dict(height=8, width=5)),        # taller than the image: crop + resize
    ("CenterCrop", dict(height=10, width=12)),
]


@pytest.mark.parametrize("name, kwargs", DETERMINISTIC,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(DETERMINISTIC)])
def test_deterministic_layers_match_keras(name, kwargs):
    keras = _keras()
    layer = getattr(L, name)(**kwargs)
    out = layer(IMAGES)
    theirs_layer = getattr(keras.layers, name)(**kwargs)
    theirs = keras.ops.convert_to_numpy(theirs_layer(IMAGES))
    assert out.shape == theirs.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, theirs, rtol=1e-6, atol=1e-4)
    assert layer.compute_output_shape((None,) + IMAGES.shape[1:]) == (None,) + out.shape[1:]
    assert layer(L.Input(shape=IMAGES.shape[1:])).shape == (None,) + out.shape[1:]
    _same_config(layer.get_config(), theirs_layer.get_config())
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    np.testing.assert_array_equal(clone(IMAGES), out)


def test_integer_images_are_read_as_keras_reads_them():
    """A uint8 Input reaches the layers as integers: Resizing rounds its result, as Keras."""
    keras = _keras()
    pixels = IMAGES.astype(np.uint8)
    for make in (lambda m: m.layers.Rescaling(1 / 255.0), lambda m: m.layers.Resizing(5, 4),
                 lambda m: m.layers.CenterCrop(5, 5), lambda m: m.layers.CenterCrop(9, 5)):
        ours = fastnn.Sequential([L.Input(shape=(7, 9, 2), dtype="uint8"), make(fastnn)])
        theirs = keras.Sequential([keras.Input(shape=(7, 9, 2), dtype="uint8"), make(keras)])
        expected = keras.ops.convert_to_numpy(theirs.predict(pixels, verbose=0))
        np.testing.assert_allclose(ours.predict(pixels, verbose=0), expected, atol=1e-4)
    # called on directly, Resizing returns integer images in their dtype, as Keras
    for image in (pixels, pixels[0]):
        ours, theirs = L.Resizing(5, 4)(image), keras.layers.Resizing(5, 4)(image)
        assert ours.dtype == np.uint8
        np.testing.assert_array_equal(ours, keras.ops.convert_to_numpy(theirs))


# ---- the random layers with a fixed factor: one transform, Keras's ------------------------
FIXED = [
    ("RandomRotation", dict(factor=(0.25, 0.25))),
    ("RandomRotation", dict(factor=(-0.1, -0.1), fill_mode="constant", fill_value=3.0)),
    ("RandomRotation", dict(factor=(0.3, 0.3), fill_mode="wrap", interpolation="nearest")),
    ("RandomRotation", dict(factor=(0.05, 0.05), fill_mode="nearest")),
    ("RandomZoom", dict(height_factor=(0.5, 0.5))),
    ("RandomZoom", dict(height_factor=(-0.3, -0.3), width_factor=(0.2, 0.2),
                        fill_mode="constant", interpolation="nearest")),
    ("RandomZoom", dict(height_factor=(0.4, 0.4), width_factor=(0.4, 0.4), fill_mode="wrap")),
    ("RandomTranslation", dict(height_factor=(0.25, 0.25), width_factor=(-0.3, -0.3))),
    ("RandomTranslation", dict(height_factor=(-0.5, -0.5), width_factor=(0.1, 0.1),
                               fill_mode="constant", fill_value=-1.0)),
    ("RandomTranslation", dict(height_factor=(0.2, 0.2), width_factor=(0.7, 0.7),
                               fill_mode="nearest", interpolation="nearest")),
    ("RandomContrast", dict(factor=(0.0, 0.0))),
]


@pytest.mark.parametrize("name, kwargs", FIXED, ids=[f"{c[0]}-{i}" for i, c in enumerate(FIXED)])
def test_fixed_random_transforms_match_keras(name, kwargs):
    keras = _keras()
    layer = getattr(L, name)(**kwargs)
    theirs_layer = getattr(keras.layers, name)(**kwargs)
    ours = layer(IMAGES, training=True)
    theirs = keras.ops.convert_to_numpy(theirs_layer(IMAGES, training=True))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-3)
    assert not np.array_equal(ours, IMAGES) or name == "RandomContrast"
    # a direct call trains, as in Keras; inference is the identity
    np.testing.assert_array_equal(layer(IMAGES), ours)
    np.testing.assert_array_equal(layer(IMAGES, training=False), IMAGES)
    _same_config(layer.get_config(), theirs_layer.get_config())
    assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()


def test_rotation_by_a_quarter_turn_moves_every_pixel_exactly():
    square = RNG.uniform(0, 1, (2, 5, 5, 1)).astype(np.float32)
    out = L.RandomRotation((0.25, 0.25), interpolation="nearest")(square)
    np.testing.assert_array_equal(out, np.rot90(square, k=1, axes=(1, 2)))  # anticlockwise
    half = L.RandomRotation((0.5, 0.5), interpolation="nearest")(square)
    np.testing.assert_array_equal(half, square[:, ::-1, ::-1])


def test_fill_modes_extend_the_image_as_keras_defines_them():
    row = np.arange(4, dtype=np.float32).reshape(1, 1, 4, 1)      # a b c d = 0 1 2 3
    expected = {"reflect": [1, 0, 0, 1, 2, 3, 3, 2], "wrap": [2, 3, 0, 1, 2, 3, 0, 1],
                "nearest": [0, 0, 0, 1, 2, 3, 3, 3], "constant": [9, 9, 0, 1, 2, 3, 9, 9]}
    for mode, values in expected.items():
        shift = np.array([[1, 0, -2, 0, 1, 0, 0, 0]], np.float32)       # x_in = x - 2
        out = ops.image.affine_transform(row, shift, "nearest", mode, fill_value=9)
        np.testing.assert_array_equal(out[0, 0, :, 0], values[:4], err_msg=mode)
        shift_right = np.array([[1, 0, 2, 0, 1, 0, 0, 0]], np.float32)   # x_in = x + 2
        out = ops.image.affine_transform(row, shift_right, "nearest", mode, fill_value=9)
        np.testing.assert_array_equal(out[0, 0, :, 0], values[4:], err_msg=mode)


# ---- random streams ---------------------------------------------------------------------
RANDOM = [
    (L.RandomFlip, dict()),
    (L.RandomRotation, dict(factor=0.2)),
    (L.RandomZoom, dict(height_factor=0.3, width_factor=(-0.2, 0.1))),
    (L.RandomTranslation, dict(height_factor=0.2, width_factor=0.3)),
    (L.RandomContrast, dict(factor=0.5)),
]


@pytest.mark.parametrize("cls, kwargs", RANDOM, ids=[c[0].__name__ for c in RANDOM])
def test_seeds_repeat_and_draws_differ(cls, kwargs):
    batch = np.repeat(IMAGES[:1], 8, axis=0)
    a = cls(seed=3, **kwargs)(batch, training=True)
    b = cls(seed=3, **kwargs)(batch, training=True)
    np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a[0], a[i]) for i in range(1, 8))   # one draw per image
    layer = cls(seed=3, **kwargs)
    layer(batch)
    assert not np.array_equal(layer(batch), a)        # the stream moves on
    fastnn.utils.set_random_seed(11)
    c = cls(**kwargs)(batch, training=True)
    fastnn.utils.set_random_seed(11)
    np.testing.assert_array_equal(cls(**kwargs)(batch, training=True), c)


def test_flip_gives_the_image_or_its_mirror_half_the_time():
    batch = np.repeat(IMAGES[:1], 400, axis=0)
    for mode, flip in (("horizontal", lambda x: x[:, ::-1]), ("vertical", lambda x: x[::-1]),
                       ("horizontal_and_vertical", lambda x: x[::-1, ::-1])):
        out = L.RandomFlip(mode, seed=1)(batch)
        flipped = np.array([np.array_equal(o, flip(IMAGES[0])) for o in out])
        kept = np.array([np.array_equal(o, IMAGES[0]) for o in out])
        assert np.all(flipped ^ kept), mode
        assert 0.42 < flipped.mean() < 0.58, mode


def test_contrast_keeps_each_mean_and_scales_within_the_factor():
    layer = L.RandomContrast((0.2, 0.5), value_range=(-1e6, 1e6), seed=5)
    out = layer(IMAGES.astype(np.float64).astype(np.float32))
    mean = IMAGES.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(out.mean(axis=(1, 2), keepdims=True), mean, rtol=1e-5)
    scale = (out - mean) / (IMAGES - mean)
    per_image = scale.reshape(len(IMAGES), -1)
    np.testing.assert_allclose(per_image, per_image[:, :1] * np.ones_like(per_image),
                               rtol=1e-3)
    assert np.all((per_image[:, 0] >= 0.8) & (per_image[:, 0] <= 1.5))
    clipped = L.RandomContrast(0.9, value_range=(50, 200), seed=5)(IMAGES)
    assert clipped.min() >= 50 and clipped.max() <= 200
    # a number f draws from [1, 1 + f] (Keras 3.15's bounds (0, 1) for this layer)
    assert L.RandomContrast(0.3).factor == (0, 0.3)


def test_random_rotation_angles_cover_the_factor():
    layer = L.RandomRotation((-0.1, 0.2), seed=0)
    angles = []
    for _ in range(50):
        m = layer._matrices(4, 7, 9)
        angles.extend(np.degrees(np.arctan2(m[:, 3], m[:, 0])))
    angles = np.array(angles)
    assert angles.min() >= -36.01 and angles.max() <= 72.01
    assert angles.min() < -30 and angles.max() > 65


# ---- Normalization -------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [-1, None, (1, 2), 1])
def test_normalization_adapt_matches_numpy_and_keras(axis):
    data = RNG.normal(3, 2, (40, 4, 3)).astype(np.float32)
    layer = L.Normalization(axis=axis)
    layer.adapt(data)
    keep = () if axis is None else tuple(a % 3 for a in ((axis,) if isinstance(axis, int)
                                                         else axis))
    reduce = tuple(d for d in range(3) if d not in keep)
    mean, var, count = layer.get_weights()
    np.testing.assert_allclose(mean, data.mean(axis=reduce), rtol=1e-6)
    np.testing.assert_allclose(var, data.var(axis=reduce), rtol=1e-5)
    assert count.dtype == np.int32 and count == 0        # Keras's adapt leaves it at 0
    expected = (data - data.mean(axis=reduce, keepdims=True)) / \
        np.sqrt(data.var(axis=reduce, keepdims=True))
    np.testing.assert_allclose(layer(data), expected, rtol=1e-4, atol=1e-5)
    # streamed over batches (and (x, y) batches): the same statistics
    streamed = L.Normalization(axis=axis)
    streamed.adapt((data[i:i + 16], None) for i in range(0, 40, 16))
    for ours, full in zip(streamed.get_weights(), (mean, var)):
        np.testing.assert_allclose(ours, full, rtol=1e-5)
    keras = _keras()
    theirs = keras.layers.Normalization(axis=axis)
    theirs.adapt(data)      # (Keras's adapt of an iterable needs TensorFlow installed)
    for ours, k in zip(layer.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(ours, k, rtol=1e-6)
        assert ours.dtype == k.dtype and ours.shape == k.shape
    np.testing.assert_allclose(layer(data), keras.ops.convert_to_numpy(theirs(data)),
                               rtol=1e-5, atol=1e-6)
    _same_config(layer.get_config(), theirs.get_config())


def test_normalization_given_values_and_invert_match_keras():
    keras = _keras()
    x = RNG.normal(0, 3, (5, 3)).astype(np.float32)
    for kwargs in (dict(mean=[1.0, 2.0, 3.0], variance=[1.0, 4.0, 0.0]),
                   dict(mean=2.0, variance=9.0), dict(mean=2.0, variance=9.0, invert=True),
                   dict(axis=None, mean=1.5, variance=2.0)):
        layer = L.Normalization(**kwargs)
        theirs = keras.layers.Normalization(**kwargs)
        np.testing.assert_allclose(layer(x), keras.ops.convert_to_numpy(theirs(x)), rtol=1e-6)
        assert layer.weights == [] and theirs.weights == []
        _same_config(layer.get_config(), theirs.get_config())
        assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()
    adapted = L.Normalization(invert=True)
    adapted.adapt(x)
    forward = L.Normalization()
    forward.adapt(x)
    np.testing.assert_allclose(adapted(forward(x)), x, rtol=1e-5, atol=1e-5)


def test_normalization_errors_are_keras_errors():
    with pytest.raises(ValueError, match="both `mean` and `variance` must be set"):
        L.Normalization(mean=1.0)
    with pytest.raises(ValueError, match="must have the same shape"):
        L.Normalization(mean=[1.0, 2.0], variance=1.0)
    with pytest.raises(ValueError, match="The rank of `mean` must be less than"):
        L.Normalization(mean=[[1.0]], variance=[[1.0]])
    with pytest.raises(ValueError, match=r"range \[-ndim, ndim\)"):
        L.Normalization(axis=3)(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="do not broadcast to the kept axes"):
        L.Normalization(mean=[1.0, 2.0], variance=[1.0, 1.0])(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="empty iterable"):
        L.Normalization().adapt([])
    with pytest.raises(TypeError, match="`.shape` attribute"):
        L.Normalization().adapt([[1.0, 2.0]])
    layer = L.Normalization()
    layer.adapt(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="incompatible shape"):
        layer.adapt(np.zeros((4, 2), np.float32))


# ---- models, training, files ------------------------------------------------------------------
def _pipeline():
    return [L.Input(shape=(8, 10, 3)), L.Rescaling(1 / 255.0), L.Normalization(),
            L.Resizing(6, 8), L.CenterCrop(5, 6), L.RandomFlip("horizontal"),
            L.RandomRotation(0.1), L.RandomZoom(0.2), L.RandomTranslation(0.1, 0.1),
            L.RandomContrast(0.2, value_range=(-10, 10)), L.Flatten(), L.Dense(2)]


def _data():
    x = RNG.uniform(0, 255, (12, 8, 10, 3)).astype(np.float32)
    return x, RNG.normal(size=(12, 2)).astype(np.float32)


def test_pipeline_trains_and_predicts_in_sequential_and_functional():
    x, y = _data()
    layers = _pipeline()
    layers[2].adapt(x / 255.0)
    model = fastnn.Sequential(layers)
    inputs = L.Input(shape=(8, 10, 3))
    h = inputs
    for layer in _pipeline()[1:]:
        if isinstance(layer, L.Normalization):
            layer.adapt(x / 255.0)
        h = layer(h)
    functional = fastnn.Model(inputs, h)
    for m in (model, functional):
        m.compile(fastnn.optimizers.Adam(1e-2), "mse")
        first = m.layers[-1].get_weights()[0].copy()
        before = m.evaluate(x, y, verbose=0)
        m.fit(x, y, epochs=5, batch_size=4, verbose=0)
        assert m.evaluate(x, y, verbose=0) < before
        assert not np.allclose(first, m.layers[-1].get_weights()[0])
        np.testing.assert_array_equal(m.predict(x, verbose=0), m.predict(x, verbose=0))


def test_gradients_flow_through_the_deterministic_layers():
    fastnn.utils.set_random_seed(0)
    inputs = L.Input(shape=(12,))
    h = L.Dense(24, activation="tanh")(inputs)
    h = L.Reshape((4, 3, 2))(h)
    h = L.Rescaling(2.0, offset=0.5)(h)
    h = L.Normalization(mean=[0.1, -0.2], variance=[2.0, 0.5])(h)
    h = L.Resizing(5, 4)(h)
    h = L.CenterCrop(3, 3)(h)
    h = L.Resizing(4, 5, interpolation="nearest", pad_to_aspect_ratio=True)(h)
    model = fastnn.Model(inputs, L.Dense(2)(L.Flatten()(h)))
    rng = np.random.default_rng(2)
    _fd_check(model, rng.standard_normal((3, 12)).astype(np.float32),
              rng.standard_normal((3, 2)).astype(np.float32))


@pytest.mark.parametrize("op, kwargs", [
    ("affine_transform", dict(transform=np.array([[0.9, -0.3, 1.5, 0.4, 1.1, -0.7, 0, 0],
                                                  [1.2, 0.2, -2.0, -0.1, 0.8, 1.0, 0, 0]],
                                                 np.float32), fill_mode="constant")),
    ("affine_transform", dict(transform=np.array([0.7, 0.5, 0.3, -0.5, 0.7, 2.2, 0, 0],
                                                 np.float32), fill_mode="reflect")),
    ("affine_transform", dict(transform=np.array([1, 0, 2.5, 0, 1, -1.25, 0, 0], np.float32),
                              fill_mode="wrap")),
    ("resize", dict(size=(5, 3))),
    ("resize", dict(size=(4, 4), crop_to_aspect_ratio=True, antialias=True)),
    ("resize", dict(size=(9, 4), pad_to_aspect_ratio=True, interpolation="nearest")),
])
def test_image_op_gradients_against_finite_differences(op, kwargs):
    x = RNG.standard_normal((2, 4, 6, 2))
    w = RNG.standard_normal(np.shape(getattr(ops.image, op)(x, **kwargs)))
    t = Tensor(x.astype(np.float32), requires_grad=True)
    with tape() as recorded:
        out = ops.sum(ops.multiply(getattr(ops.image, op)(t, **kwargs), w.astype(np.float32)))
    grad, = gradients(out, [t], order=recorded.nodes)

    def f(v):
        return float(np.sum(getattr(ops.image, op)(v, **kwargs) * w))
    from gradcheck import numeric_grad
    np.testing.assert_allclose(np.asarray(fastnn.ops.convert_to_numpy(grad)),
                               numeric_grad(f, x, 1e-4), rtol=1e-4, atol=1e-4)


def test_summary_and_parameter_counts_are_keras_s(capsys):
    keras = _keras()
    keras.backend.clear_session()       # Keras's layer names count from 0 again, as ours do
    x, _ = _data()

    def build(m):
        model = m.Sequential([m.Input(shape=(8, 10, 3)), m.layers.Rescaling(1 / 255.0),
                              m.layers.Normalization(), m.layers.RandomFlip(),
                              m.layers.Resizing(4, 4), m.layers.Flatten(), m.layers.Dense(2)])
        model.layers[1].adapt(x)
        model.summary()
        return model
    ours, theirs = build(fastnn), build(keras)
    assert ours.count_params() == theirs.count_params() == 98 + 7
    printed = capsys.readouterr().out.split("Model: ")
    assert printed[1] == printed[2]


def test_any_image_size_resized_in_a_functional_model():
    inputs = L.Input(shape=(None, None, 3))
    h = L.CenterCrop(4, 4)(L.Resizing(6, 5)(L.Rescaling(1 / 255.0)(inputs)))
    model = fastnn.Model(inputs, L.Dense(2)(L.Flatten()(h)))
    model.compile("sgd", "mse")
    for shape in ((2, 9, 7, 3), (3, 5, 5, 3), (1, 20, 3, 3)):
        x = RNG.uniform(0, 255, shape).astype(np.float32)
        assert model.predict(x, verbose=0).shape == (shape[0], 2)
        model.fit(x, np.zeros((shape[0], 2), np.float32), verbose=0)


def test_random_layers_draw_in_fit_only():
    x, y = _data()
    flip = L.RandomTranslation(0.2, 0.2, seed=4)
    model = fastnn.Sequential([L.Input(shape=(8, 10, 3)), flip, L.Flatten(), L.Dense(2)])
    model.compile("sgd", "mse")
    state = dict(flip._rng.bit_generator.state["state"])
    model.predict(x, verbose=0)
    model.evaluate(x, y, verbose=0)
    assert flip._rng.bit_generator.state["state"] == state
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert flip._rng.bit_generator.state["state"] != state


def test_training_gradients_reach_a_layer_before_a_random_transform():
    x, y = _data()
    model = fastnn.Sequential([L.Input(shape=(8, 10, 3)), L.Conv2D(2, 3, padding="same"),
                               L.RandomRotation((0.05, 0.05)), L.RandomFlip(seed=1),
                               L.RandomContrast(0.3, value_range=(-1e9, 1e9)),
                               L.Flatten(), L.Dense(2)])
    model.compile(fastnn.optimizers.SGD(1e-6), "mse")
    kernel = model.layers[0].get_weights()[0].copy()
    model.train_on_batch(x, y)
    assert np.abs(model.layers[0].get_weights()[0] - kernel).max() > 0


@pytest.mark.parametrize("fmt", [".keras", ".h5"])
def test_saved_with_the_model_and_loaded_by_keras(tmp_path, fmt):
    pytest.importorskip("h5py")
    x, y = _data()
    layers = _pipeline()
    layers[2].adapt(x / 255.0)
    model = fastnn.Sequential(layers)
    model.compile("adam", "mse")
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    expected = model.predict(x, verbose=0)
    path = str(tmp_path / f"model{fmt}")
    model.save(path)
    again = fastnn.models.load_model(path)
    np.testing.assert_allclose(again.predict(x, verbose=0), expected, rtol=1e-6)
    # (build_config may differ: adapt() builds the layer for its data's shape, as in Keras)
    assert [e["config"] for e in again.get_config()["layers"]] == \
        [e["config"] for e in model.get_config()["layers"]]
    keras = _keras()
    theirs = keras.models.load_model(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(theirs.predict(x, verbose=0)),
                               expected, rtol=1e-5, atol=1e-5)
    norm = [layer for layer in theirs.layers if type(layer).__name__ == "Normalization"][0]
    for ours, k in zip(model.layers[1].get_weights(), norm.get_weights()):
        np.testing.assert_allclose(ours, k)
    # and a file Keras writes comes back to fastnn (.keras: Keras 3.15 cannot write a
    # RandomContrast whose value_range came from a config (a list) to .h5 at all)
    back = str(tmp_path / "keras.keras")
    theirs.save(back)
    np.testing.assert_allclose(fastnn.models.load_model(back, compile=False).predict(x, verbose=0),
                               expected,
                               rtol=1e-5, atol=1e-5)


# ---- arguments ----------------------------------------------------------------------------
@pytest.mark.parametrize("make, error, match", [
    (lambda: L.RandomRotation(1.5), ValueError, r"`factor` argument .* \[-1, 1\]"),
    (lambda: L.RandomRotation((0.1, 0.2, 0.3)), ValueError, "Received: factor"),
    (lambda: L.RandomRotation(0.1, fill_mode="mirror"), NotImplementedError,
     "Unknown `fill_mode` mirror"),
    (lambda: L.RandomRotation(0.1, interpolation="bicubic"), NotImplementedError,
     "Unknown `interpolation` bicubic"),
    (lambda: L.RandomZoom(-1.0), ValueError, r"range \(-1.0, 1.0\]"),
    (lambda: L.RandomZoom(0.1, width_factor="a"), ValueError, "Received: width_factor=a"),
    (lambda: L.RandomTranslation(0.1, 1.5), ValueError, "Received: input_number=1.5"),
    (lambda: L.RandomContrast(-0.2), ValueError, r"in the range \[0, 1\]"),
    (lambda: L.RandomContrast(0.2, value_range=(1, 0)), ValueError, "value_range"),
    (lambda: L.RandomFlip("diagonal"), ValueError, "mode"),
    (lambda: L.RandomFlip(seed=-1), ValueError, "seed"),
    (lambda: L.Resizing(0, 4), ValueError, "height"),
    (lambda: L.Resizing(4, 4, interpolation="bicubic"), ValueError, "interpolation=bicubic"),
    (lambda: L.Resizing(4, 4, crop_to_aspect_ratio=True, pad_to_aspect_ratio=True),
     ValueError, "Only one of"),
    (lambda: L.CenterCrop(4, 2.5), ValueError, "width"),
    (lambda: L.Rescaling("a"), ValueError, "scale"),
    (lambda: L.Resizing(4, 4, data_format="nchw"), ValueError, "data_format"),
])
def test_bad_arguments_raise(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("name, args, kwargs", [
    ("RandomRotation", (1.5,), {}), ("RandomRotation", ((0.1, 0.2, 0.3),), {}),
    ("RandomRotation", (0.1,), dict(fill_mode="mirror")),
    ("RandomRotation", (0.1,), dict(interpolation="bicubic")),
    ("RandomZoom", (-1.0,), {}), ("RandomZoom", (0.1,), dict(width_factor="a")),
    ("RandomZoom", (0.1,), dict(fill_mode="mirror")),
    ("RandomTranslation", (0.1, 1.5), {}), ("RandomTranslation", ((0.1,), 0.5), {}),
    ("RandomTranslation", (0.1, 0.1), dict(interpolation="area")),
    ("RandomContrast", (-0.2,), {}), ("RandomContrast", (1.2,), {}),
    ("Normalization", (), dict(mean=1.0)),
    ("Normalization", (), dict(mean=[1.0, 2.0], variance=1.0)),
    ("Normalization", (), dict(mean=[[1.0]], variance=[[1.0]])),
])
def test_keras_raises_the_same_errors(name, args, kwargs):
    keras = _keras()
    with pytest.raises(Exception) as theirs:
        getattr(keras.layers, name)(*args, **kwargs)
    with pytest.raises(type(theirs.value)) as ours:
        getattr(L, name)(*args, **kwargs)
    assert str(ours.value) == str(theirs.value)


def test_one_image_is_taken_as_keras_takes_it():
    keras = _keras()
    for name, kwargs in (("Resizing", dict(height=4, width=5)),
                         ("CenterCrop", dict(height=8, width=5)),
                         ("RandomRotation", dict(factor=(0.1, 0.1))),
                         ("RandomZoom", dict(height_factor=(0.2, 0.2)))):
        ours = getattr(L, name)(**kwargs)(IMAGES[0])
        theirs = keras.ops.convert_to_numpy(getattr(keras.layers, name)(**kwargs)(IMAGES[0]))
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-4)


def test_image_layers_need_images():
    with pytest.raises(ValueError, match="rank-4"):
        L.RandomFlip()(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="rank-4"):
        L.RandomFlip()(np.zeros((2, 4, 4, 1, 1), np.float32))
    with pytest.raises(ValueError, match="rank-4"):
        L.Resizing(2, 2)(L.Input(shape=(4, 4)))


def test_channels_first_matches_channels_last():
    first = np.ascontiguousarray(IMAGES.transpose(0, 3, 1, 2))
    for make in (lambda f: L.Resizing(4, 6, data_format=f),
                 lambda f: L.CenterCrop(5, 4, data_format=f),
                 lambda f: L.CenterCrop(9, 4, data_format=f),
                 lambda f: L.RandomRotation((0.1, 0.1), data_format=f),
                 lambda f: L.RandomFlip(seed=2, data_format=f),
                 lambda f: L.RandomContrast(0.5, seed=2, data_format=f)):
        last = make("channels_last")(IMAGES)
        np.testing.assert_allclose(make("channels_first")(first).transpose(0, 2, 3, 1), last,
                                   rtol=1e-6, atol=1e-4)
