"""Whole training runs against Keras 3: the same model, the same initial weights and the same
batch order (shuffle=False) must give the same per-epoch losses, metrics and final weights.
Uses the MNIST sample bundled with fastnn, so it runs everywhere Keras is installed."""
import numpy as np
import pytest

import fastnn
from fastnn.datasets import mnist

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def digits():
    (x, y), _ = mnist.load_sample()
    return (x[:1024] / 255.0).astype(np.float32), y[:1024]


def mlp(K, L):
    return [L.Flatten(), L.Dense(64, activation="relu"), L.Dropout(0.0),
            L.Dense(10, activation="softmax")]


def bn_selu(K, L):
    return [L.Flatten(), L.BatchNormalization(),
            L.Dense(64, activation="selu", kernel_initializer="lecun_normal"),
            L.BatchNormalization(), L.Dense(10, activation="softmax")]


def cnn(K, L):
    return [L.Conv2D(8, 3, activation="relu"), L.MaxPooling2D(), L.BatchNormalization(),
            L.Conv2D(8, 3, strides=2, padding="same", activation="tanh"),
            L.GlobalAveragePooling2D(), L.Dense(10, activation="softmax")]


CASES = {
    "mlp-adam-onehot": (mlp, lambda K: K.optimizers.Adam(), "categorical_crossentropy"),
    "bn-selu-sgd": (bn_selu, lambda K: K.optimizers.SGD(learning_rate=0.05),
                    "sparse_categorical_crossentropy"),
    "mlp-rmsprop-momentum": (mlp, lambda K: K.optimizers.RMSprop(momentum=0.5),
                             "sparse_categorical_crossentropy"),
    "cnn-nadam": (cnn, lambda K: K.optimizers.Nadam(), "sparse_categorical_crossentropy"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_matches_keras(digits, case):
    layers_fn, opt_fn, loss = CASES[case]
    x, y = digits
    if case.startswith("cnn"):
        x = x[:256, :, :, None]
        y = y[:256]
    targets = fastnn.utils.to_categorical(y, 10) if loss == "categorical_crossentropy" else y
    ours = fastnn.Sequential([fastnn.layers.Input(shape=x.shape[1:])] +
                             layers_fn(fastnn, fastnn.layers))
    theirs = keras.Sequential([keras.Input(x.shape[1:])] + layers_fn(keras, keras.layers))
    theirs.set_weights(ours.get_weights())
    results = []
    for model, K in ((ours, fastnn), (theirs, keras)):
        model.compile(optimizer=opt_fn(K), loss=loss, metrics=["accuracy"])
        hist = model.fit(x, targets, batch_size=32, epochs=3, shuffle=False,
                         validation_split=0.25, verbose=0)
        results.append((hist.history, model.get_weights(),
                        model.evaluate(x, targets, verbose=0)))
    (h1, w1, e1), (h2, w2, e2) = results
    assert sorted(h1) == sorted(h2)
    for key in h2:
        np.testing.assert_allclose(h1[key], h2[key], rtol=2e-4, atol=2e-5, err_msg=key)
    np.testing.assert_allclose(e1, e2, rtol=2e-4, atol=2e-5)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-4)
