"""Every layer fastnn exports, both ways with real Keras 3: a small model of it, built with
arguments other than the defaults, saved by fastnn as .keras and .h5 loads in Keras with the
same predictions; the same model built and saved by Keras loads in fastnn with the same
weights and predictions.

The layers are enumerated from fastnn.layers, so a new layer fails test_every_layer_has_a_case
until it has a case here."""
import inspect

import numpy as np
import pytest

import fastnn
from fastnn import layers as L

pytest.importorskip("h5py")

# Layers that cannot be a standalone model's layer: the abstract base (it computes nothing),
# and the input layer (every model here starts with one, so every case covers it).
SKIP = {"Layer": "the abstract base class: it defines no computation",
        "InputLayer": "the input of every model below (fastnn.Input / keras.Input)"}


class PerSystem:
    """A keyword argument made with the system under test, fastnn or keras (the layer a
    wrapper such as Bidirectional wraps)."""

    def __init__(self, make):
        self.make = make


# class name -> (input shapes (without the batch axis), keyword arguments). Non-default
# arguments throughout; where fastnn's layer takes none beyond Keras's defaults (Flatten,
# Identity, the merging layers) the case is the layer itself.
CASES = {
    "Dense": ([(4,)], dict(units=3, activation="tanh", use_bias=True,
                          kernel_initializer="he_normal", bias_initializer="ones")),
    "Activation": ([(5,)], dict(activation="softplus")),
    "ReLU": ([(5,)], dict(max_value=1.5, negative_slope=0.2, threshold=0.1)),
    "Softmax": ([(3, 4)], dict(axis=1)),       # not the last axis
    "LeakyReLU": ([(5,)], dict(negative_slope=0.1)),
    "Flatten": ([(3, 4, 2)], {}),
    "Dropout": ([(5,)], dict(rate=0.3, seed=5, noise_shape=None)),
    "Conv2D": ([(8, 7, 3)], dict(filters=4, kernel_size=(3, 2), strides=(2, 1),
                                 padding="same", activation="relu", use_bias=True)),
    "DepthwiseConv2D": ([(8, 7, 3)], dict(kernel_size=(3, 2), depth_multiplier=2,
                                          dilation_rate=(2, 1), padding="same",
                                          activation="tanh", use_bias=True,
                                          depthwise_initializer="he_normal",
                                          bias_initializer="ones")),
    "SeparableConv2D": ([(8, 7, 3)], dict(filters=4, kernel_size=3, strides=(2, 1),
                                          depth_multiplier=2, padding="same",
                                          activation="relu",
                                          pointwise_initializer="he_normal",
                                          bias_initializer="ones")),
    "Conv2DTranspose": ([(5, 4, 3)], dict(filters=4, kernel_size=(3, 2), strides=(2, 3),
                                          padding="same", output_padding=(1, 0),
                                          activation="elu", bias_initializer="ones")),
    "MaxPooling2D": ([(7, 6, 2)], dict(pool_size=(3, 2), strides=(1, 2), padding="same")),
    # padding="valid": with "same", Keras 3.15 on torch averages the right edge over the
    # padding too (TF and fastnn do not; see test_average_pooling_same_padding_is_tfs)
    "AveragePooling2D": ([(7, 6, 2)], dict(pool_size=(2, 3), strides=(2, 1),
                                           padding="valid")),
    "GlobalAveragePooling2D": ([(4, 5, 3)], dict(keepdims=True)),
    "GlobalMaxPooling2D": ([(4, 5, 3)], dict(keepdims=True)),
    "BatchNormalization": ([(4, 4, 3)], dict(momentum=0.9, epsilon=1e-2, center=False,
                                             gamma_initializer="he_normal")),
    "Add": ([(4,), (4,)], {}),
    "Subtract": ([(4,), (4,)], {}),
    "Multiply": ([(4,), (4,)], {}),
    "Maximum": ([(4,), (4,)], {}),
    "Minimum": ([(4,), (4,)], {}),
    "Average": ([(4,), (4,)], {}),
    "Concatenate": ([(2, 3), (4, 3)], dict(axis=1)),
    "Dot": ([(3, 4), (5, 4)], dict(axes=(2, 2), normalize=True)),
    "Identity": ([(4,)], {}),
    "Reshape": ([(3, 4)], dict(target_shape=(2, -1))),
    "Permute": ([(3, 4, 2)], dict(dims=(3, 1, 2))),
    "RepeatVector": ([(4,)], dict(n=3)),
    "ZeroPadding2D": ([(4, 4, 2)], dict(padding=((1, 2), (0, 1)))),
    "Cropping2D": ([(5, 6, 2)], dict(cropping=((1, 0), (1, 2)))),
    "UpSampling2D": ([(3, 3, 2)], dict(size=(2, 3))),
    # a lambda (bytecode, with arguments and output_shape) and a named function: see
    # test_keras_files.py for more; here the file round trip of each
    "Lambda": ([(4,)], dict(function=lambda t, k: t * k - 1.0, arguments={"k": 2.5},
                            output_shape=(4,))),
    # preprocessing: the random ones are the identity at inference (predict), their
    # arguments still make the round trip
    "Rescaling": ([(4, 4, 3)], dict(scale=[0.5, 2.0, -1.0], offset=0.25)),
    "Normalization": ([(4, 3)], dict(axis=-1, invert=True)),
    "Resizing": ([(6, 4, 2)], dict(height=3, width=5, interpolation="nearest",
                                   crop_to_aspect_ratio=True)),
    "CenterCrop": ([(6, 5, 2)], dict(height=4, width=3)),
    "RandomFlip": ([(4, 4, 2)], dict(mode="vertical", seed=3)),
    "RandomRotation": ([(5, 5, 2)], dict(factor=(-0.2, 0.3), fill_mode="constant",
                                         interpolation="nearest", seed=4, fill_value=1.5)),
    "RandomZoom": ([(5, 5, 2)], dict(height_factor=(-0.2, 0.1), width_factor=0.3,
                                     fill_mode="wrap", seed=5)),
    "RandomTranslation": ([(5, 5, 2)], dict(height_factor=0.2, width_factor=(-0.1, 0.3),
                                            fill_mode="nearest", seed=6)),
    "RandomContrast": ([(5, 5, 2)], dict(factor=0.4, seed=7)),
    # normalization, noise and activation layers (the noise layers are the identity at
    # inference; their arguments still make the round trip)
    "LayerNormalization": ([(3, 4)], dict(axis=[1, 2], epsilon=1e-2,
                                          gamma_initializer="he_normal")),
    "GroupNormalization": ([(4, 6)], dict(groups=3, epsilon=1e-2, center=False)),
    "SpatialDropout1D": ([(4, 3)], dict(rate=0.3, seed=2)),
    "SpatialDropout2D": ([(4, 4, 3)], dict(rate=0.3, data_format="channels_first", seed=2)),
    "GaussianNoise": ([(5,)], dict(stddev=0.4, seed=3)),
    "GaussianDropout": ([(5,)], dict(rate=0.4, seed=3)),
    "ELU": ([(5,)], dict(alpha=0.7)),
    "PReLU": ([(3, 4)], dict(alpha_initializer="ones", shared_axes=[1])),
    # sequence and text layers (Embedding reads integer inputs: INTEGER_INPUTS)
    "Embedding": ([(5,)], dict(input_dim=7, output_dim=3, mask_zero=True,
                               embeddings_initializer="he_normal")),
    "Masking": ([(4, 3)], dict(mask_value=0.5)),
    "Conv1D": ([(7, 3)], dict(filters=4, kernel_size=3, strides=1, padding="causal",
                              dilation_rate=2, activation="relu", bias_initializer="ones")),
    "MaxPooling1D": ([(7, 2)], dict(pool_size=3, strides=2, padding="same")),
    "AveragePooling1D": ([(7, 2)], dict(pool_size=2, strides=1, padding="valid")),
    "GlobalAveragePooling1D": ([(5, 3)], dict(keepdims=True)),
    "GlobalMaxPooling1D": ([(5, 3)], dict(keepdims=True)),
    # the wrapped layer is made by each library (K: fastnn or keras)
    "TimeDistributed": ([(4, 3)], lambda K: dict(layer=K.layers.Dense(
        2, activation="tanh", bias_initializer="ones"))),
    # recurrent layers (weights under the cell in Keras's files)
    "SimpleRNN": ([(5, 3)], dict(units=4, activation="relu", return_sequences=True,
                                 go_backwards=True, bias_initializer="ones")),
    "LSTM": ([(5, 3)], dict(units=4, recurrent_activation="tanh", unit_forget_bias=False,
                            bias_initializer="random_normal", go_backwards=True)),
    "GRU": ([(5, 3)], dict(units=4, reset_after=False, return_sequences=True,
                           bias_initializer="random_uniform")),
    "Bidirectional": ([(5, 3)], dict(
        layer=PerSystem(lambda K: K.layers.GRU(4, return_sequences=True, name="gru")),
        backward_layer=PerSystem(lambda K: K.layers.GRU(
            4, return_sequences=True, go_backwards=True, reset_after=False, name="gru_back")),
        merge_mode="mul")),
}
INTEGER_INPUTS = {"Embedding": 7}       # class name -> the indices' bound (input_dim)


def exported_layers():
    return sorted(name for name, obj in vars(L).items()
                  if inspect.isclass(obj) and issubclass(obj, L.Layer)
                  and not name.startswith("_") and obj.__name__ == name)


def test_every_layer_has_a_case():
    missing = [name for name in exported_layers() if name not in CASES and name not in SKIP]
    assert not missing, f"add a case for {missing} to CASES (or a justified SKIP entry)"
    assert not set(CASES) & set(SKIP)
    assert set(CASES) | set(SKIP) == set(exported_layers())


def build(K, name):
    shapes, kwargs = CASES[name]
    kwargs = kwargs(K) if callable(kwargs) else kwargs
    dtype = "int32" if name in INTEGER_INPUTS else "float32"
    inputs = [K.Input(shape=s, name=f"in{i}", dtype=dtype) for i, s in enumerate(shapes)]
    kwargs = {k: v.make(K) if isinstance(v, PerSystem) else v for k, v in kwargs.items()}
    layer = getattr(K.layers, name)(name="layer", **kwargs)
    out = layer(inputs if len(inputs) > 1 else inputs[0])
    return K.Model(inputs if len(inputs) > 1 else inputs[0], out, name=f"case_{name}")


def data(name):
    rng = np.random.default_rng(sum(map(ord, name)))
    if name in INTEGER_INPUTS:
        return rng.integers(0, INTEGER_INPUTS[name], (3,) + CASES[name][0][0]).astype(np.int32)
    xs = [rng.standard_normal((3,) + s).astype(np.float32) for s in CASES[name][0]]
    return xs if len(xs) > 1 else xs[0]


def random_weights(weights, seed):
    """Values far from the initial ones (BN's variance stays positive)."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.5, 1.5, np.shape(w)).astype(np.float32) for w in weights]


def as_numpy(keras, value):
    if isinstance(value, (list, tuple)):
        return [keras.ops.convert_to_numpy(v) for v in value]
    return keras.ops.convert_to_numpy(value)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("fmt", [".keras", ".h5"])
def test_fastnn_writes_keras_reads(tmp_path, name, fmt):
    keras = pytest.importorskip("keras")
    model = build(fastnn, name)
    model.set_weights(random_weights(model.get_weights(), 1))
    x = data(name)
    expected = model.predict(x, verbose=0)
    path = str(tmp_path / f"{name}{fmt}")
    model.save(path)
    theirs = keras.models.load_model(path, safe_mode=False)
    assert type(theirs.get_layer("layer")).__name__ == name
    for mine, their in zip(model.get_weights(), theirs.get_weights()):
        np.testing.assert_array_equal(mine, as_numpy(keras, their))
    np.testing.assert_allclose(as_numpy(keras, theirs.predict(x, verbose=0)), expected,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("fmt", [".keras", ".h5"])
def test_keras_writes_fastnn_reads(tmp_path, name, fmt):
    keras = pytest.importorskip("keras")
    theirs = build(keras, name)
    theirs.set_weights(random_weights(theirs.get_weights(), 2))
    x = data(name)
    expected = as_numpy(keras, theirs.predict(x, verbose=0))
    path = str(tmp_path / f"{name}{fmt}")
    theirs.save(path)
    model = fastnn.models.load_model(path, safe_mode=False)
    assert type(model.get_layer("layer")).__name__ == name
    assert len(model.get_weights()) == len(theirs.get_weights())
    for mine, their in zip(model.get_weights(), theirs.get_weights()):
        np.testing.assert_array_equal(mine, as_numpy(keras, their))
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5, rtol=1e-5)


def test_average_pooling_same_padding_is_tfs():
    """padding="same" pads at the bottom/right and averages over the values inside only (TF's
    rule, which Keras's fixtures, written on TensorFlow, follow)."""
    x = np.random.default_rng(0).standard_normal((2, 7, 6, 2)).astype(np.float32)
    model = fastnn.Sequential([fastnn.Input(shape=(7, 6, 2)),
                               L.AveragePooling2D((2, 3), (2, 2), padding="same")])
    expected = np.zeros((2, 4, 3, 2), np.float32)     # pads: 1 row below, 1 column right
    for i in range(4):
        for j in range(3):
            expected[:, i, j] = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 3].mean(axis=(1, 2))
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fmt", [".keras", ".h5"])
def test_keras_arguments_fastnn_cannot_compute_are_refused_by_name(tmp_path, fmt):
    """Keras arguments fastnn cannot compute (a noise_shape) raise, naming them and the file
    (not as a damaged file)."""
    keras = pytest.importorskip("keras")
    for layer, message in ((keras.layers.Dropout(0.5, noise_shape=(None, 1, 4)),
                            "noise_shape"),):
        inputs = keras.Input(shape=(3, 4))
        path = str(tmp_path / f"refused{fmt}")
        keras.Model(inputs, layer(inputs)).save(path)
        with pytest.raises(ValueError, match=message) as err:
            fastnn.models.load_model(path)
        assert str(err.value).startswith(path) and "corrupt" not in str(err.value)
