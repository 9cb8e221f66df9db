"""A user's Layer subclass (build / add_weight / call written with fastnn.ops) runs for real in
a Sequential: forward through call(), gradients from fastnn.autodiff, trained by the same
optimizer step as fastnn's own layers. One that cannot run raises, naming the layer."""
import numpy as np
import pytest

import fastnn
from fastnn import ops
from fastnn.layers import Dense, Flatten, Input, Layer


class MyDense(Layer):
    def __init__(self, units, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.units, self.activation = units, activation

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform",
                                 name="kernel")
        self.b = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def call(self, inputs):
        z = ops.matmul(inputs, self.w) + self.b
        return ops.relu(z) if self.activation == "relu" else z


def _data(n=64, d=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, classes, n)


def _pair(custom_first=True, optimizer="sgd"):
    """The same network with a user's dense layer and with fastnn's Dense, equal weights."""
    fastnn.utils.set_random_seed(1)
    builtin = fastnn.Sequential([Input(shape=(6,)), Dense(8, activation="relu"),
                                 Dense(3, activation="softmax")])
    custom = fastnn.Sequential([Input(shape=(6,)), MyDense(8, activation="relu"),
                                Dense(3, activation="softmax")])
    custom.set_weights(builtin.get_weights())
    for m in (builtin, custom):
        m.compile(fastnn.optimizers.get(optimizer), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return builtin, custom


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_custom_dense_trains_like_the_builtin_one(optimizer):
    builtin, custom = _pair(optimizer=optimizer)
    x, y = _data()
    h1 = builtin.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False).history
    h2 = custom.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False).history
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-5)
    for a, b in zip(builtin.get_weights(), custom.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(builtin.predict(x, verbose=0), custom.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-6)


def test_a_layer_that_is_not_the_identity_changes_the_output():
    class Twice(Layer):
        def call(self, inputs):
            return inputs * 2.0

    fastnn.utils.set_random_seed(0)
    plain = fastnn.Sequential([Input(shape=(6,)), Dense(3)])
    doubled = fastnn.Sequential([Input(shape=(6,)), Dense(3), Twice()])
    doubled.set_weights(plain.get_weights())
    x, _ = _data()
    np.testing.assert_allclose(doubled.predict(x, verbose=0), 2 * plain.predict(x, verbose=0),
                               rtol=1e-6)


def test_a_layer_without_call_raises_naming_it():
    class Nothing(Layer):
        pass

    model = fastnn.Sequential([Input(shape=(6,)), Dense(3), Nothing(name="nothing_here")])
    x, y = _data()
    with pytest.raises(NotImplementedError, match="'nothing_here'.*call"):
        model.predict(x, verbose=0)
    model.compile("sgd", "mse")
    with pytest.raises(NotImplementedError, match="nothing_here"):
        model.fit(x, np.zeros((64, 3)), verbose=0)


def test_output_shape_inferred_from_call_and_weights_made_in_init():
    class Pairs(Layer):
        """Concatenates x and x * scale, the scale made in __init__ (no build)."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.scale = self.add_weight(shape=(6,), initializer="ones", name="scale")

        def call(self, inputs):
            return ops.concatenate([inputs, inputs * self.scale], axis=-1)

    model = fastnn.Sequential([Input(shape=(6,)), Pairs(), Dense(2)])
    assert model.layers[0].compute_output_shape((None, 6)) == (None, 12)
    assert model.layers[1].kernel.shape == (12, 2)
    assert model.count_params() == 6 + 12 * 2 + 2
    model.compile(fastnn.optimizers.SGD(0.1), "mse")
    x, _ = _data()
    before = model.layers[0].scale.numpy().copy()
    model.fit(x, np.ones((64, 2)), epochs=2, verbose=0)
    assert not np.array_equal(before, model.layers[0].scale.numpy())   # it trained


def test_custom_layer_gradient_against_finite_differences():
    """The weight gradient one SGD step applies equals central differences of the loss."""
    class Scaled(Layer):
        def build(self, input_shape):
            self.add_weight(shape=(input_shape[-1],), initializer="ones", name="kernel")

        def call(self, inputs):
            # self.kernel: the weight by its name, a Variable like add_weight's return value
            return ops.tanh(inputs * self.kernel) + ops.sin(inputs)

    fastnn.utils.set_random_seed(0)
    model = fastnn.Sequential([Input(shape=(4,)), Scaled(), Dense(2)])
    lr = 1e-3
    model.compile(fastnn.optimizers.SGD(lr), "mse")
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    y = np.random.default_rng(1).standard_normal((8, 2)).astype(np.float32)
    w0 = model.get_weights()

    def loss(kernel):
        model.set_weights([kernel.astype(np.float32)] + w0[1:])
        return float(np.mean((model.predict(x, verbose=0).astype(np.float64) - y) ** 2))

    eps = 1e-2
    numeric = np.array([(loss(w0[0] + eps * e) - loss(w0[0] - eps * e)) / (2 * eps)
                        for e in np.eye(4)])
    model.set_weights(w0)
    model.train_on_batch(x, y)
    applied = (w0[0] - model.get_weights()[0]) / lr
    np.testing.assert_allclose(applied, numeric, rtol=2e-2, atol=1e-4)


def test_training_flag_reaches_call():
    seen = []

    class Spy(Layer):
        def call(self, inputs, training=None):
            seen.append(training)
            return inputs

    model = fastnn.Sequential([Input(shape=(6,)), Spy(), Dense(3)])
    model.compile("sgd", "mse")
    x, _ = _data()
    seen.clear()
    model.fit(x, np.zeros((64, 3)), batch_size=64, epochs=1, verbose=0)
    model.predict(x, batch_size=64, verbose=0)
    assert seen == [True, False]


def test_numpy_inside_call_is_routed_or_refused():
    class NumpyDense(MyDense):
        def call(self, inputs):
            return np.maximum(np.dot(inputs, self.w) + self.b, 0)     # np.* -> fastnn.ops

    class Opaque(MyDense):
        def call(self, inputs):
            return np.fft.fft(inputs).real                            # no op: refused

    builtin, _ = _pair()
    model = fastnn.Sequential([Input(shape=(6,)), NumpyDense(8), Dense(3, activation="softmax")])
    model.set_weights(builtin.get_weights())
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = _data()
    h1 = builtin.fit(x, y, epochs=1, verbose=0, shuffle=False).history
    h2 = model.fit(x, y, epochs=1, verbose=0, shuffle=False).history
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-5)
    bad = fastnn.Sequential([Input(shape=(6,)), Opaque(8), Dense(3)])
    bad.compile("sgd", "mse")
    with pytest.raises(TypeError, match="numpy.fft"):
        bad.fit(x, np.zeros((64, 3)), verbose=0)


def test_add_weight_keras_signature_and_errors():
    layer = Layer(name="holder")
    v = layer.add_weight(shape=(2, 3))
    assert v.shape == (2, 3) and v.trainable and v.path == "holder/variable"
    assert layer.add_weight(shape=(1,), trainable=False).path == "holder/variable_1"
    assert [w.shape for w in layer.weights] == [(2, 3), (1,)]
    v.assign(np.ones((2, 3)))
    np.testing.assert_array_equal(v.numpy(), np.ones((2, 3)))
    with pytest.raises(ValueError, match="cannot assign shape"):
        v.assign(np.ones(3))
    with pytest.raises(ValueError, match="already has a weight named 'variable'"):
        layer.add_weight(shape=(1,), name="variable")
    with pytest.raises(ValueError, match="regularizer identifier: 'l7'"):
        layer.add_weight(shape=(1,), regularizer="l7")
    with pytest.raises(ValueError, match="float32"):
        layer.add_weight(shape=(1,), dtype="float64")


def test_custom_layer_after_flatten_on_images():
    class Gate(Layer):
        def build(self, input_shape):
            self.g = self.add_weight(shape=(input_shape[-1],), initializer="zeros")

        def call(self, inputs):
            return inputs * ops.sigmoid(self.g)

    model = fastnn.Sequential([Input(shape=(4, 4)), Flatten(), Gate(), Dense(2)])
    model.compile("adam", "mse")
    x = np.random.default_rng(0).standard_normal((10, 4, 4)).astype(np.float32)
    history = model.fit(x, np.zeros((10, 2)), epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def _penalized(K, layers, ops_module):
    class Penalty(layers.Layer):
        """The identity, adding 0.01 * mean(x^2) to the model's loss."""

        def call(self, inputs):
            self.add_loss(0.01 * ops_module.mean(ops_module.square(inputs)))
            return inputs

    inputs = K.Input(shape=(6,))
    h = Penalty()(layers.Dense(8, activation="tanh")(inputs))
    return K.Model(inputs, layers.Dense(3, activation="softmax")(h))


def test_add_loss_counts_in_the_loss_and_its_gradient():
    keras = pytest.importorskip("keras")
    x, y = _data(n=32)
    theirs = _penalized(keras, keras.layers, keras.ops)
    ours = _penalized(fastnn, fastnn.layers, ops)
    ours.set_weights([np.asarray(w) for w in theirs.get_weights()])
    for model, K in ((theirs, keras), (ours, fastnn)):
        model.compile(K.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
    assert ours.evaluate(x, y, verbose=0) == pytest.approx(
        float(theirs.evaluate(x, y, verbose=0)), rel=1e-5)
    h_theirs = theirs.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False).history
    h_ours = ours.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False).history
    np.testing.assert_allclose(h_ours["loss"], h_theirs["loss"], rtol=1e-4)
    for p, q in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(p, np.asarray(q), rtol=1e-4, atol=1e-5)
    assert len(ours.losses) == 1 and ours.losses[0] > 0


def test_add_loss_outside_a_graph_model_raises():
    class Penalty(Layer):
        def call(self, inputs):
            self.add_loss(ops.sum(inputs))
            return inputs

    model = fastnn.Sequential([Input(shape=(6,)), Penalty(), Dense(2)])
    model.compile("sgd", "mse")
    x, _ = _data()
    with pytest.raises(RuntimeError, match="add_loss"):
        model.fit(x, np.zeros((64, 2)), verbose=0)


def test_layers_after_a_gradient_free_layer_still_train():
    """A user's layer whose output carries no gradient (one_hot of its input, or an array it
    made itself) must not stop the layers after it from training: they were silently frozen
    (their calls ran outside the tape)."""
    class OneHot(Layer):
        def call(self, x):
            return ops.reshape(ops.one_hot(ops.cast(x, "int32"), 5), (-1, 15))

        def compute_output_shape(self, input_shape):
            return (input_shape[0], 15)

    class Detached(Layer):
        def call(self, x):
            return ops.convert_to_numpy(x) * 1.0

    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, (32, 3)).astype(np.float32)
    y = (x[:, 0] > 2).astype(np.int64)
    for first in (OneHot, Detached):
        fastnn.utils.set_random_seed(0)
        inputs = Input(shape=(3,))
        model = fastnn.Model(inputs, Dense(2, activation="softmax")(first()(inputs)))
        model.compile(fastnn.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
        before = model.get_weights()[0].copy()
        losses = model.fit(x, y, epochs=10, batch_size=8, verbose=0).history["loss"]
        assert not np.allclose(model.get_weights()[0], before), first.__name__
        assert losses[-1] < 0.7 * losses[0], first.__name__
