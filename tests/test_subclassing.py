"""class M(fastnn.Model) with layers made in __init__ and a call(): it runs on the autodiff
tape, fastnn's layers one node each with their fused backward. Checked against the same
network as a Sequential, and against finite differences for shared layers and fan-out."""
import numpy as np
import pytest

import fastnn
from fastnn import ops
from fastnn.layers import Dense, Dropout, Layer


class MLP(fastnn.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = Dense(16, activation="relu")
        self.out = Dense(3, activation="softmax")

    def call(self, inputs):
        return self.out(self.hidden(inputs))


def _data(n=64, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, 3, n)


def test_subclassed_mlp_trains_like_the_sequential_one():
    x, y = _data()
    fastnn.utils.set_random_seed(3)
    seq = fastnn.Sequential([fastnn.Input(shape=(6,)), Dense(16, activation="relu"),
                             Dense(3, activation="softmax")])
    model = MLP()
    model.build((None, 6))
    assert [w.shape for w in model.get_weights()] == [w.shape for w in seq.get_weights()]
    model.set_weights(seq.get_weights())
    for m in (seq, model):
        m.compile(fastnn.optimizers.Adam(1e-2), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    h1 = seq.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False).history
    h2 = model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False).history
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-4)
    assert h1["accuracy"] == h2["accuracy"]
    for a, b in zip(seq.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(model.predict(x, verbose=0), seq.predict(x, verbose=0),
                               rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(model(x[:5]), seq(x[:5]), rtol=1e-3, atol=1e-5)
    assert isinstance(seq, fastnn.Model) and model.layers == [model.hidden, model.out]


def _fd_check(model, x, y, lr=1e-3, eps=1e-2, rtol=3e-2):
    """One plain SGD step moves every weight by -lr * gradient: compare that gradient with
    central differences of the mean squared error."""
    model.compile(fastnn.optimizers.SGD(lr), "mse")
    w0 = model.get_weights()

    def loss(weights):
        model.set_weights(weights)
        return float(np.mean((model.predict(x, verbose=0).astype(np.float64) - y) ** 2))

    numeric = []
    for i, w in enumerate(w0):
        g = np.zeros(w.shape)
        for idx in np.ndindex(w.shape):
            plus = [v.copy() for v in w0]
            minus = [v.copy() for v in w0]
            plus[i][idx] += eps
            minus[i][idx] -= eps
            g[idx] = (loss(plus) - loss(minus)) / (2 * eps)
        numeric.append(g)
    model.set_weights(w0)
    model.train_on_batch(x, y)
    for w, after, g in zip(w0, model.get_weights(), numeric):
        np.testing.assert_allclose((w - after) / lr, g, rtol=rtol, atol=2e-4)


def test_shared_layer_and_fan_out_gradients():
    class Siamese(fastnn.Model):
        """One Dense on both halves of the input (shared), its output feeding two heads
        (fan-out) that are added back together."""

        def __init__(self):
            super().__init__()
            self.encode = Dense(3, activation="tanh")
            self.head_a = Dense(2)
            self.head_b = Dense(2, activation="sigmoid")

        def call(self, inputs):
            left = self.encode(inputs[:, :4])
            right = self.encode(inputs[:, 4:])
            joined = ops.concatenate([left, right * 0.5], axis=-1)
            return self.head_a(joined) + self.head_b(joined) * 2.0

    fastnn.utils.set_random_seed(0)
    model = Siamese()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 8)).astype(np.float32)
    y = rng.standard_normal((6, 2)).astype(np.float32)
    model.build((None, 8))
    assert model.count_params() == (4 * 3 + 3) + 2 * (6 * 2 + 2)
    _fd_check(model, x, y)


def test_composite_user_layer_holding_dense_layers():
    class Block(Layer):
        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.a = Dense(units, activation="relu")
            self.b = Dense(units)

        def call(self, inputs):
            return inputs + self.b(self.a(inputs))      # a residual block

    class Net(fastnn.Model):
        def __init__(self):
            super().__init__()
            self.block = Block(4)
            self.out = Dense(2)

        def call(self, inputs):
            return self.out(self.block(inputs))

    fastnn.utils.set_random_seed(1)
    model = Net()
    model.build((None, 4))
    assert model.count_params() == 2 * (4 * 4 + 4) + (4 * 2 + 2)
    rng = np.random.default_rng(1)
    _fd_check(model, rng.standard_normal((5, 4)).astype(np.float32),
              rng.standard_normal((5, 2)).astype(np.float32))


def test_layer_made_inside_call_raises():
    class Sloppy(fastnn.Model):
        def call(self, inputs):
            return Dense(2)(inputs)

    with pytest.raises(ValueError, match="not one of its layers"):
        Sloppy().predict(np.ones((3, 4), np.float32), verbose=0)


def test_training_flag_reaches_dropout_in_call():
    class Net(fastnn.Model):
        def __init__(self):
            super().__init__()
            self.drop = Dropout(0.5)
            self.out = Dense(1, kernel_initializer="ones", use_bias=False)

        def call(self, inputs, training=None):
            return self.out(self.drop(inputs, training=training))

    model = Net()
    x = np.ones((200, 10), np.float32)
    np.testing.assert_allclose(model.predict(x, verbose=0), 10.0)
    model.compile(fastnn.optimizers.SGD(0.0), "mse")
    history = model.fit(x, np.full((200, 1), 10.0), batch_size=200, epochs=1, verbose=0)
    assert history.history["loss"][0] > 1.0     # dropout was on while training


def test_model_api_errors_and_weights_files(tmp_path):
    with pytest.raises(TypeError, match="symbolic tensors"):
        fastnn.Model(inputs=None, outputs=None)
    with pytest.raises(TypeError, match="subclassing"):
        fastnn.Model()
    model = MLP(name="mlp")
    model.build((None, 6))
    with pytest.raises(NotImplementedError, match="get_config"):
        model.get_config()
    model.summary(print_fn=lambda line, **kw: None)
    pytest.importorskip("h5py")
    path = str(tmp_path / "mlp.weights.h5")
    model.save_weights(path)
    other = MLP()
    other.build((None, 6))
    other.load_weights(path)
    for a, b in zip(model.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)
