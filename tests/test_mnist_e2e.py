"""End-to-end accuracy on real MNIST, written the way a Keras user writes it (only the imports
differ). Needs the full data set: FASTNN_DATA_DIR (CI points it at ../shared/data/mnist)."""
import math

import numpy as np
import pytest

import fastnn as keras
from fastnn.datasets import mnist
from fastnn.layers import Dense, Flatten
from fastnn.models import Sequential
from fastnn.utils import set_random_seed, to_categorical

pytestmark = [pytest.mark.slow, pytest.mark.mnist]


@pytest.fixture(scope="module")
def data():
    (x_train, y_train), (x_test, y_test) = mnist.load_data()
    return x_train / 255.0, y_train, x_test / 255.0, y_test


def test_mlp_784_128_64_10_adam(data):
    x_train, y_train, x_test, y_test = data
    set_random_seed(1)
    x_train, x_test = x_train.reshape(-1, 784), x_test.reshape(-1, 784)
    model = Sequential([
        Dense(128, activation="relu", input_shape=(784,)),
        Dense(64, activation="relu"),
        Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x_train, to_categorical(y_train), batch_size=32, epochs=10,
                        validation_split=0.2, verbose=0)
    assert len(history.history["val_accuracy"]) == 10
    loss, acc = model.evaluate(x_test, to_categorical(y_test), verbose=0)
    assert acc >= 0.97, acc


def test_flatten_dense256_rmsprop_sparse(data):
    x_train, y_train, x_test, y_test = data
    set_random_seed(2)
    model = Sequential([Flatten(input_shape=(28, 28)), Dense(256, activation="relu"),
                        Dense(10, activation="softmax")])
    model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=128, epochs=8, verbose=0)
    _, acc = model.evaluate(x_test, y_test, verbose=0)
    assert acc >= 0.975, acc


def test_tiny_sigmoid_mlp_plain_sgd(data):
    x_train, y_train, x_test, y_test = data
    set_random_seed(3)
    model = Sequential([Dense(10, activation="sigmoid", input_shape=(784,)),
                        Dense(10, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_train.reshape(-1, 784), y_train, epochs=10, verbose=0)
    _, acc = model.evaluate(x_test.reshape(-1, 784), y_test, verbose=0)
    assert acc >= 0.88, acc


def make_circles(n, noise, factor, rng):
    t = rng.uniform(0, 2 * math.pi, n)
    y = rng.integers(0, 2, n)
    r = np.where(y == 1, factor, 1.0)
    x = np.stack([r * np.cos(t), r * np.sin(t)], axis=1) + rng.normal(0, noise, (n, 2))
    return x, y


def test_two_circles_tanh_classifier():
    rng = np.random.default_rng(0)
    x, y = make_circles(1000, 0.1, 0.5, rng)
    set_random_seed(4)
    model = Sequential([Dense(4, activation="tanh", input_shape=(2,)),
                        Dense(2, activation="tanh"),
                        Dense(1, activation="sigmoid")])
    model.compile(optimizer="sgd", loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(x[:800], y[:800], batch_size=5, epochs=30, verbose=0)
    _, acc = model.evaluate(x[800:], y[800:], verbose=0)
    assert acc >= 0.85, acc


def _tutorial_bn_stack():
    from fastnn.layers import BatchNormalization
    return [BatchNormalization(),
            Dense(200, activation="selu", kernel_initializer="lecun_normal"),
            BatchNormalization(),
            Dense(100, activation="selu", kernel_initializer="lecun_normal"),
            BatchNormalization(),
            Dense(10, activation="softmax")]


def test_tutorial_cnn_two_epochs(data):
    from fastnn.layers import Conv2D, MaxPooling2D
    x_train, y_train, x_test, y_test = data
    set_random_seed(5)
    model = Sequential([Conv2D(64, 3, activation="relu", input_shape=(28, 28, 1)),
                        MaxPooling2D(), Flatten()] + _tutorial_bn_stack())
    assert model.count_params() == 2_229_614
    model.compile(optimizer=keras.optimizers.SGD(lr=0.05),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train.reshape(-1, 28, 28, 1), y_train, epochs=2, verbose=0)
    _, acc = model.evaluate(x_test.reshape(-1, 28, 28, 1), y_test, verbose=0)
    assert acc >= 0.98, acc


def test_tutorial_bn_selu_mlp(data):
    x_train, y_train, x_test, y_test = data
    set_random_seed(6)
    model = Sequential([Flatten(input_shape=(28, 28))] + _tutorial_bn_stack())
    assert model.count_params() == 182_446
    model.compile(optimizer=keras.optimizers.SGD(lr=0.05),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    # Keras itself lands at 0.958-0.965 after two epochs of this model (same init, same
    # data order: tests/test_keras_parity.py checks the two train alike); four clear 0.965.
    model.fit(x_train, y_train, epochs=4, verbose=0)
    _, acc = model.evaluate(x_test, y_test, verbose=0)
    assert acc >= 0.965, acc
