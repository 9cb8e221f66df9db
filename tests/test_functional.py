"""The functional API: fastnn.Input, layers called on symbolic tensors, Model(inputs, outputs).
Checked against the same chain as a Sequential, and against finite differences for residual
(fan-out) and shared-layer graphs."""
import numpy as np
import pytest
from test_subclassing import _fd_check

import fastnn
from fastnn import layers as L
from fastnn.layers import Dense, Input


def _data(n=48, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, 3, n)


def test_symbolic_tensors_and_model_attributes():
    inputs = Input(shape=(6,), name="features")
    assert inputs.shape == (None, 6) and inputs.dtype == "float32" and inputs.name == "features"
    h = Dense(8, activation="relu", name="hidden")(inputs)
    assert h.shape == (None, 8)
    outputs = Dense(3, activation="softmax", name="probs")(h)
    model = fastnn.Model(inputs=inputs, outputs=outputs, name="net")
    assert isinstance(model, fastnn.Model) and model.name == "net"
    assert model.input is inputs and model.output is outputs
    assert [type(layer).__name__ for layer in model.layers] == ["InputLayer", "Dense", "Dense"]
    assert model.get_layer("hidden").output is h
    assert model.count_params() == 6 * 8 + 8 + 8 * 3 + 3
    with pytest.raises(TypeError, match="no values"):
        np.asarray(inputs)


def test_functional_chain_matches_sequential():
    x, y = _data()
    fastnn.utils.set_random_seed(2)
    seq = fastnn.Sequential([Input(shape=(6,)), Dense(8, activation="relu"),
                             Dense(3, activation="softmax")])
    inputs = Input(shape=(6,))
    outputs = Dense(3, activation="softmax")(Dense(8, activation="relu")(inputs))
    model = fastnn.Model(inputs, outputs)
    model.set_weights(seq.get_weights())
    np.testing.assert_array_equal(model.predict(x, verbose=0), seq.predict(x, verbose=0))
    for m in (seq, model):
        m.compile(fastnn.optimizers.SGD(0.1), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    h1 = seq.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False).history
    h2 = model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False).history
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-4)
    for a, b in zip(seq.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    assert model.evaluate(x, y, verbose=0)[0] == pytest.approx(
        seq.evaluate(x, y, verbose=0)[0], rel=1e-3)


def test_residual_block_gradients():
    """x -> h -> Dense -> Add([.., h]) -> out: h feeds two layers (fan-out)."""
    fastnn.utils.set_random_seed(4)
    inputs = Input(shape=(4,))
    h = Dense(3, activation="tanh")(inputs)
    r = Dense(3, activation="sigmoid")(h)
    joined = L.add([h, r])
    both = L.concatenate([joined, L.multiply([h, r])])
    model = fastnn.Model(inputs, Dense(2)(both))
    assert both.shape == (None, 6)
    rng = np.random.default_rng(4)
    _fd_check(model, rng.standard_normal((5, 4)).astype(np.float32),
              rng.standard_normal((5, 2)).astype(np.float32))


def test_shared_layer_gradients_and_average():
    fastnn.utils.set_random_seed(5)
    inputs = Input(shape=(3,))
    shared = Dense(3, activation="tanh")
    a = shared(inputs)
    b = shared(Dense(3)(a))                   # the same layer, a second time
    model = fastnn.Model(inputs, Dense(1)(L.average([a, b, L.subtract([a, b])])))
    assert model.count_params() == 12 + 12 + 4
    rng = np.random.default_rng(5)
    _fd_check(model, rng.standard_normal((6, 3)).astype(np.float32),
              rng.standard_normal((6, 1)).astype(np.float32))


def test_feature_extraction_from_a_trained_model():
    x, y = _data()
    inputs = Input(shape=(6,))
    h = Dense(5, activation="relu", name="features")(inputs)
    model = fastnn.Model(inputs, Dense(3, activation="softmax")(h))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, verbose=0)
    extractor = fastnn.Model(model.input, model.get_layer("features").output)
    kernel, bias = model.get_layer("features").get_weights()
    np.testing.assert_allclose(extractor.predict(x, verbose=0),
                               np.maximum(x @ kernel + bias, 0), rtol=1e-5, atol=1e-6)


def test_several_inputs_and_outputs_run_when_called():
    a_in, b_in = Input(shape=(4,), name="a"), Input(shape=(2,), name="b")
    shared = Dense(3)
    joined = L.concatenate([shared(a_in), Dense(3)(b_in)])
    model = fastnn.Model([a_in, b_in], [Dense(1)(joined), joined])
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 4)), rng.standard_normal((5, 2))
    out, features = model([a, b])
    assert out.shape == (5, 1) and features.shape == (5, 6)
    k, bias = shared.get_weights()
    np.testing.assert_allclose(features[:, :3], a @ k + bias, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="2 outputs"):
        model.compile("sgd", "mse")
        model.fit([a, b], np.zeros((5, 1)), verbose=0)


def test_graph_errors():
    a, b = Input(shape=(4,)), Input(shape=(4,))
    out = Dense(2)(L.add([a, b]))
    with pytest.raises(ValueError, match="Graph disconnected"):
        fastnn.Model(a, out)
    h = Dense(4)(a)
    with pytest.raises(ValueError, match="must come from fastnn.Input"):
        fastnn.Model(h, Dense(2)(h))
    with pytest.raises(ValueError, match="one shape"):
        L.add([a, Input(shape=(3,))])
    with pytest.raises(ValueError, match="at least 2"):
        L.Add()([a])
    with pytest.raises(ValueError, match="match except along axis"):
        L.concatenate([Input(shape=(2, 3)), Input(shape=(3, 3))], axis=-1)


def test_merge_layers_on_arrays():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.ones((2, 3), np.float32) * 2
    np.testing.assert_array_equal(L.Add()([a, b]), a + b)
    np.testing.assert_array_equal(L.Subtract()([a, b]), a - b)
    np.testing.assert_array_equal(L.Multiply()([a, b]), a * b)
    np.testing.assert_array_equal(L.Maximum()([a, b]), np.maximum(a, b))
    np.testing.assert_array_equal(L.Minimum()([a, b]), np.minimum(a, b))
    np.testing.assert_allclose(L.Average()([a, b]), (a + b) / 2)
    np.testing.assert_array_equal(L.Concatenate(axis=1)([a, b]), np.concatenate([a, b], 1))


def _residual(K, L):
    inputs = K.Input(shape=(6,))
    h = L.Dense(8, activation="relu")(inputs)
    r = L.Dense(8, activation="tanh")(h)
    joined = L.concatenate([L.add([h, r]), L.multiply([h, r])])
    return K.Model(inputs, L.Dense(3, activation="softmax")(joined))


def test_same_functional_model_as_keras():
    keras = pytest.importorskip("keras")
    x, y = _data(n=32)
    theirs = _residual(keras, keras.layers)
    ours = _residual(fastnn, L)
    ours.set_weights([np.asarray(w) for w in theirs.get_weights()])
    np.testing.assert_allclose(ours.predict(x, verbose=0),
                               np.asarray(theirs.predict(x, verbose=0)), rtol=1e-5, atol=1e-6)
    for m, K in ((theirs, keras), (ours, fastnn)):
        m.compile(K.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
    theirs.train_on_batch(x, y)
    ours.train_on_batch(x, y)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.cpu_backend
def test_which_models_run_fused():
    """Fused paths are chosen in one place (the chain plan): Sequential chains and functional
    chains get them; graphs with fan-out or shared layers and subclassed models run on the
    tape."""
    from fastnn.layers import ConvPool
    from fastnn.stack import DenseRunner

    def compiled(model):
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    def dense_chain(K):
        inputs = K.Input(shape=(6,))
        return compiled(K.Model(inputs, Dense(3, activation="softmax")(
            Dense(8, activation="relu")(inputs))))

    seq = compiled(fastnn.Sequential([Input(shape=(6,)), Dense(8, activation="relu"),
                                      Dense(3, activation="softmax")]))
    chain = dense_chain(fastnn)
    inputs = Input(shape=(6,))
    h = Dense(8)(inputs)
    residual = compiled(fastnn.Model(inputs, Dense(3, activation="softmax")(L.add([h, h]))))
    for model, fused in ((seq, True), (chain, True), (residual, False)):
        assert (DenseRunner.for_model(model, training=True) is not None) == fused
    image = Input(shape=(8, 8, 1))
    conv = fastnn.Model(image, Dense(3)(L.Flatten()(L.MaxPooling2D()(
        L.Conv2D(4, 3, activation="relu")(image)))))
    assert any(isinstance(step, ConvPool) for _, _, step in conv._steps)


def _graph(K, L, kind):
    """The same graph in fastnn and in Keras, with explicit names (each framework counts
    automatic names on its own)."""
    if kind == "chain":
        inputs = K.Input(shape=(6,), name="x")
        return K.Model(inputs, L.Dense(3, name="out")(L.Dense(8, name="h")(inputs)),
                       name="chain")
    if kind == "nested":
        return _nested(K, L)[1]
    if kind == "residual":
        inputs = K.Input(shape=(6,), name="x")
        h = L.Dense(8, activation="relu", name="h")(inputs)
        r = L.Dense(8, activation="tanh", name="a_rather_long_layer_name")(h)
        joined = L.Concatenate(name="joined")([L.Add(name="sum")([h, r]),
                                               L.Multiply(name="product")([h, r])])
        return K.Model(inputs, L.Dense(3, name="out")(joined), name="residual")
    a, b = K.Input(shape=(4,), name="a"), K.Input(shape=(4,), name="b")
    shared = L.Dense(3, name="shared")
    out = L.Subtract(name="diff")([shared(a), shared(b)])
    return K.Model([a, b], [L.Dense(1, name="score")(out), out], name="siamese")


@pytest.mark.parametrize("kind", ["chain", "residual", "siamese", "nested"])
@pytest.mark.parametrize("show_trainable", [False, True])
def test_summary_matches_keras(monkeypatch, kind, show_trainable):
    keras = pytest.importorskip("keras")
    monkeypatch.setenv("COLUMNS", "200")

    def text(model):
        lines = []
        model.summary(print_fn=lambda line, **kw: lines.append(line),
                      show_trainable=show_trainable)
        return "\n".join(lines)
    fastnn.backend.clear_session()      # automatic names count from zero, as in Keras
    keras.backend.clear_session()
    assert text(_graph(fastnn, L, kind)) == text(_graph(keras, keras.layers, kind))


def _with_ops(K, layers, ops):
    inputs = K.Input(shape=(4,), name="x")
    h = layers.Dense(3, activation="tanh", name="h")(inputs)
    out = ops.relu(h) * 2.0 + ops.sum(h * h, axis=-1, keepdims=True) - h[:, :1]
    return K.Model(inputs, layers.Dense(2, name="out")(out), name="with_ops")


def test_ops_on_symbolic_tensors_become_nodes(monkeypatch):
    fastnn.utils.set_random_seed(6)
    model = _with_ops(fastnn, L, fastnn.ops)
    x = np.random.default_rng(6).standard_normal((5, 4)).astype(np.float32)
    (k1, b1), (k2, b2) = model.get_layer("h").get_weights(), model.get_layer("out").get_weights()
    h = np.tanh(x @ k1 + b1)
    expected = (np.maximum(h, 0) * 2 + (h * h).sum(-1, keepdims=True) - h[:, :1]) @ k2 + b2
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    _fd_check(model, x, np.random.default_rng(7).standard_normal((5, 2)).astype(np.float32))
    keras = pytest.importorskip("keras")
    monkeypatch.setenv("COLUMNS", "200")
    texts = []
    fastnn.backend.clear_session()      # automatic op names count from zero, as in Keras
    keras.backend.clear_session()
    for m in (_with_ops(fastnn, L, fastnn.ops), _with_ops(keras, keras.layers, keras.ops)):
        lines = []
        m.summary(print_fn=lambda line, lines=lines, **kw: lines.append(line))
        texts.append("\n".join(lines))
    assert texts[0] == texts[1]


@pytest.mark.parametrize("kind", ["sequential", "graph"])
@pytest.mark.parametrize("activation, from_logits", [("softmax", False), ("linear", True),
                                                     ("softmax", True), ("tanh", True)])
def test_one_step_equals_keras_for_every_loss_mode(kind, activation, from_logits):
    """The loss's gradient enters the output layer before or after its activation as the
    loss and that activation require (softmax with from_logits=True is differentiated
    through the softmax, as Keras does)."""
    keras = pytest.importorskip("keras")
    x, y = _data(n=16)

    def build(K, layers):
        inputs = K.Input(shape=(6,))
        h = layers.Dense(5, activation="relu")(inputs)
        if kind == "graph":
            h = layers.add([h, layers.Dense(5)(h)])
        model = K.Model(inputs, layers.Dense(3, activation=activation)(h))
        model.compile(K.optimizers.SGD(0.5),
                      K.losses.SparseCategoricalCrossentropy(from_logits=from_logits))
        return model

    theirs, ours = build(keras, keras.layers), build(fastnn, L)
    ours.set_weights([np.asarray(w) for w in theirs.get_weights()])
    theirs.train_on_batch(x, y)
    ours.train_on_batch(x, y)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-5)


def _two_by_two(K, layers):
    a, b = K.Input(shape=(4,), name="a"), K.Input(shape=(3,), name="b")
    shared = layers.Dense(5, activation="tanh", name="shared")
    h = layers.concatenate([shared(layers.Dense(5, name="pa")(a)), shared(layers.Dense(5,
                                                                              name="pb")(b))])
    return K.Model([a, b], [layers.Dense(3, activation="softmax", name="cls")(h),
                            layers.Dense(2, name="reg")(h)], name="two_by_two")


def _two_by_two_data(n=24):
    rng = np.random.default_rng(8)
    return ([rng.standard_normal((n, 4)).astype(np.float32),
             rng.standard_normal((n, 3)).astype(np.float32)],
            [rng.integers(0, 3, n), rng.standard_normal((n, 2)).astype(np.float32)])


def test_several_inputs_and_outputs_train_as_in_keras():
    keras = pytest.importorskip("keras")
    x, y = _two_by_two_data()
    models = []
    for K, layers in ((keras, keras.layers), (fastnn, L)):
        model = _two_by_two(K, layers)
        model.compile(K.optimizers.SGD(0.1),
                      loss=["sparse_categorical_crossentropy", "mse"], loss_weights=[1.0, 0.5],
                      metrics=[["accuracy"], ["mae"]])
        models.append(model)
    theirs, ours = models
    ours.set_weights([np.asarray(w) for w in theirs.get_weights()])
    kw = dict(batch_size=8, epochs=2, verbose=0, shuffle=False, validation_split=0.25)
    h_theirs, h_ours = theirs.fit(x, y, **kw).history, ours.fit(x, y, **kw).history
    assert sorted(h_ours) == sorted(h_theirs)
    for key in h_theirs:
        np.testing.assert_allclose(h_ours[key], h_theirs[key], rtol=1e-4, atol=1e-6,
                                   err_msg=key)
    for p, q in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(p, np.asarray(q), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.evaluate(x, y, verbose=0),
                               theirs.evaluate(x, y, verbose=0), rtol=1e-4)
    by_name = ({"a": x[0], "b": x[1]}, {"cls": y[0], "reg": y[1]})
    ours_dict = ours.evaluate(*by_name, verbose=0, return_dict=True)
    theirs_dict = theirs.evaluate(*by_name, verbose=0, return_dict=True)
    assert sorted(ours_dict) == sorted(theirs_dict)
    for key in theirs_dict:
        assert ours_dict[key] == pytest.approx(float(theirs_dict[key]), rel=1e-4)
    predicted = ours.predict(x, verbose=0)
    for p, q in zip(predicted, theirs.predict(x, verbose=0)):
        np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-6)
    for p, q in zip(predicted, ours(x)):
        np.testing.assert_allclose(p, q, rtol=1e-6)


def test_several_outputs_loss_by_name_and_errors():
    x, y = _two_by_two_data()
    model = _two_by_two(fastnn, L)
    model.compile("adam", loss={"cls": "sparse_categorical_crossentropy"},
                  metrics={"cls": "accuracy"})
    history = model.fit(x, {"cls": y[0]}, epochs=2, verbose=0).history
    assert sorted(history) == ["cls_accuracy", "cls_loss", "loss"]
    assert history["loss"] == history["cls_loss"]
    with pytest.raises(ValueError, match="unknown output"):
        model.fit(x, {"nope": y[0]}, verbose=0)
    with pytest.raises(ValueError, match=r"x\['a'\] has shape"):
        model.fit([x[0][:, :2], x[1]], y[:1], verbose=0)
    with pytest.raises(ValueError, match="different numbers of samples"):
        model.predict([x[0][:5], x[1]], verbose=0)
    with pytest.raises(ValueError, match="Invalid metrics"):
        model.compile("sgd", loss="mse", metrics=["mae"])
    with pytest.raises(ValueError, match="class_weight"):
        model.compile("sgd", loss=["sparse_categorical_crossentropy", "mse"])
        model.fit(x, y, class_weight={0: 1.0}, verbose=0)


def test_layers_shared_by_two_models_keep_training():
    """A feature extractor built from a model's layers packs them into its own parameter
    buffer; training the first model afterwards still trains them (both see one set of
    weights)."""
    x, y = _data()
    inputs = Input(shape=(6,))
    h = Dense(5, activation="relu", name="features")(inputs)
    model = fastnn.Model(inputs, Dense(3, activation="softmax")(h))
    model.compile(fastnn.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    extractor = fastnn.Model(model.input, model.get_layer("features").output)
    extractor.compile(fastnn.optimizers.SGD(0.5), "mse")
    extractor.fit(x, np.zeros((len(x), 5)), epochs=1, verbose=0)
    before = model.get_layer("features").get_weights()[0].copy()
    model.fit(x, y, epochs=1, verbose=0)
    after = model.get_layer("features").get_weights()[0]
    assert not np.array_equal(before, after)
    kernel, bias = model.get_layer("features").get_weights()
    np.testing.assert_allclose(extractor.predict(x, verbose=0), np.maximum(x @ kernel + bias, 0),
                               rtol=1e-5, atol=1e-6)


def _nested(K, layers):
    base = K.Sequential([K.Input(shape=(6,)), layers.Dense(8, activation="relu", name="b1"),
                         layers.Dense(4, activation="tanh", name="b2")], name="base")
    inputs = K.Input(shape=(6,), name="x")
    features = base(inputs)
    out = layers.Dense(3, activation="softmax", name="head")(layers.add([features, features]))
    return base, K.Model(inputs, out, name="outer")


def test_a_model_as_a_layer_trains_and_freezes():
    keras = pytest.importorskip("keras")
    x, y = _data(n=32)
    (kbase, theirs), (base, ours) = _nested(keras, keras.layers), _nested(fastnn, L)
    assert [type(layer).__name__ for layer in ours.layers] == \
        [type(layer).__name__ for layer in theirs.layers]
    ours.set_weights([np.asarray(w) for w in theirs.get_weights()])
    for model, K in ((theirs, keras), (ours, fastnn)):
        model.compile(K.optimizers.SGD(0.3), "sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    for p, q in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(p, np.asarray(q), rtol=1e-4, atol=1e-5)
    # Frozen base (transfer learning): only the head trains.
    for b in (kbase, base):
        b.trainable = False
    for model, K in ((theirs, keras), (ours, fastnn)):
        model.compile(K.optimizers.SGD(0.3), "sparse_categorical_crossentropy")
    frozen = base.get_weights()
    for model in (theirs, ours):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for p, q in zip(base.get_weights(), frozen):
        np.testing.assert_array_equal(p, q)
    for p, q in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(p, np.asarray(q), rtol=1e-4, atol=1e-5)
    assert len(ours.trainable_weights) == len(theirs.trainable_weights) == 2
    np.testing.assert_allclose(base.predict(x, verbose=0),
                               np.asarray(kbase.predict(x, verbose=0)), rtol=1e-4, atol=1e-5)


def _scheduled_graphs():
    """Graphs of fastnn's own layers: fan-out, a shared layer, a three-way Add, a frozen
    layer, batch norm, several inputs and outputs, a softmax output (its loss fused)."""
    inputs = Input(shape=(6,))
    h = Dense(8, activation="relu")(inputs)
    shared = Dense(8, activation="tanh")
    a, b = shared(h), None
    b = shared(Dense(8)(a))
    frozen = Dense(8, activation="sigmoid", trainable=False)
    s = L.add([h, a, b])
    n = L.BatchNormalization()(frozen(s))
    joined = L.concatenate([n, L.multiply([h, b])])
    yield fastnn.Model(inputs, Dense(3, activation="softmax")(joined)), \
        "sparse_categorical_crossentropy"
    left, right = Input(shape=(4,)), Input(shape=(6,))
    t = Dense(5, activation="relu")(right)
    merged = L.concatenate([left, t])
    yield fastnn.Model([left, right], [Dense(3, activation="softmax")(merged),
                                       Dense(2)(L.subtract([t, t]) + t[:, :5] * 0.5)[:, :2]]), \
        ["sparse_categorical_crossentropy", "mse"]


def test_graphs_of_fastnn_layers_run_on_a_schedule_as_on_the_tape():
    """A functional graph of fastnn's own layers runs on its Schedule (no tape); the tape
    gives the same training, step by step."""
    rng = np.random.default_rng(7)
    for i, (model, loss) in enumerate(_scheduled_graphs()):
        assert model._schedule is not None
        multi = len(model.inputs) > 1
        x = [rng.standard_normal((40, 4)).astype(np.float32),
             rng.standard_normal((40, 6)).astype(np.float32)] if multi else \
            rng.standard_normal((40, 6)).astype(np.float32)
        y = [rng.integers(0, 3, 40), rng.standard_normal((40, 2)).astype(np.float32)] \
            if multi else rng.integers(0, 3, 40)
        w0, runs = model.get_weights(), []
        for schedule in (model._schedule, None):
            model._schedule = schedule
            model.set_weights(w0)
            model.compile(fastnn.optimizers.Adam(0.01), loss)
            history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
            runs.append((history.history, model.get_weights(), model.predict(x, verbose=0)))
        (h1, w1, p1), (h2, w2, p2) = runs
        for key in h1:
            np.testing.assert_allclose(h1[key], h2[key], rtol=1e-5, err_msg=f"graph {i} {key}")
        for a, b in zip(w1, w2):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=f"graph {i}")
        for a, b in zip(p1 if multi else [p1], p2 if multi else [p2]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_which_graphs_run_on_a_schedule():
    """Chains take the Sequential plan; other graphs of fastnn's layers a Schedule; a graph
    with a user's layer or a nested model keeps the tape (a user's call() may add losses or
    call layers)."""
    class Scale(L.Layer):
        def call(self, x):
            return x * 2.0

    inputs = Input(shape=(6,))
    chain = fastnn.Model(inputs, Dense(3)(Dense(4)(inputs)))
    h = Dense(4)(inputs)
    graph = fastnn.Model(inputs, L.add([h, Dense(4)(h)]))
    user = fastnn.Model(inputs, L.add([h, Scale()(h)]))
    base = fastnn.Sequential([Input(shape=(4,)), Dense(4)])
    nested = fastnn.Model(inputs, L.add([h, base(h)]))
    assert chain._schedule is None and chain._chain is not None
    assert graph._schedule is not None
    assert user._schedule is None and nested._schedule is None


def test_an_open_image_size_trains_and_predicts_at_any_size():
    """Input(shape=(None, None, 3)): convolutions and pooling take each batch's size; the
    summary shows None as Keras does; a Flatten needs the size and says so."""
    for build in ("sequential", "functional"):
        fastnn.utils.set_random_seed(8)
        layers = [L.Conv2D(4, 3, padding="same", activation="relu"), L.MaxPooling2D(),
                  L.Conv2D(3, 3, strides=2), L.GlobalAveragePooling2D(), Dense(2)]
        if build == "sequential":
            model = fastnn.Sequential([Input(shape=(None, None, 3))] + layers)
        else:
            inputs = h = Input(shape=(None, None, 3))
            for layer in layers:
                h = layer(h)
            model = fastnn.Model(inputs, L.add([h, Dense(2)(h)]))
        assert layers[0].compute_output_shape((None, None, None, 3)) == (None, None, None, 4)
        model.compile(fastnn.optimizers.SGD(0.02), "mse")
        rng = np.random.default_rng(8)
        for size in ((12, 10), (9, 16)):
            x = rng.standard_normal((4,) + size + (3,)).astype(np.float32)
            y = rng.standard_normal((4, 2)).astype(np.float32)
            loss0 = model.evaluate(x, y, verbose=0)
            model.fit(x, y, epochs=5, batch_size=4, verbose=0)
            assert model.evaluate(x, y, verbose=0) < loss0
            assert model.predict(x, verbose=0).shape == (4, 2)
    with pytest.raises(ValueError, match="known last input dimension"):
        Dense(2)(L.Flatten()(Input(shape=(None, None, 3))))


def test_inference_on_a_schedule_lends_buffers_from_one_pool():
    """predict on a schedule lends layers their buffers from a pool, each back once no later
    step reads it: the same outputs as the tape, batch after batch (views of a live buffer,
    a Flatten's or a Dropout's, keep it lent), with far less memory than every layer's own."""
    fastnn.utils.set_random_seed(9)
    inputs = Input(shape=(6, 6, 2))
    a = L.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    b = L.Dropout(0.5)(L.Conv2D(4, 1)(a))
    c = L.add([a, b, L.Conv2D(4, 3, padding="same")(b)])
    flat = L.Flatten()(L.MaxPooling2D()(c))
    d = Dense(8, activation="tanh")(flat)
    out = L.concatenate([d, Dense(3)(flat)])
    model = fastnn.Model(inputs, [Dense(2)(out), L.Reshape((11, 1))(out)])
    rng = np.random.default_rng(9)
    batches = [rng.standard_normal((5, 6, 6, 2)).astype(np.float32) for _ in range(3)]
    pooled = [model.predict(x, verbose=0) for x in batches + batches[:1]]
    schedule, model._schedule = model._schedule, None
    taped = [model.predict(x, verbose=0) for x in batches + batches[:1]]
    model._schedule = schedule
    for p, t in zip(pooled, taped):
        for a_, b_ in zip(p, t):
            np.testing.assert_allclose(a_, b_, rtol=1e-6, atol=1e-7)
    for a_, b_ in zip(pooled[0], pooled[3]):        # the same batch again: the same answer
        np.testing.assert_array_equal(a_, b_)


def test_inference_fuses_normalization_residual_and_activation_into_the_gemm():
    """At inference, a linear Conv2D/Dense and the BatchNormalization, residual Add and
    activation after it run as one step (their math in the GEMM's epilogue), wherever the
    tensors between them have no other reader; the outputs equal the tape's layer by layer.
    Training keeps every layer's own step."""
    from fastnn.schedule import _Fused
    fastnn.utils.set_random_seed(10)
    inputs = Input(shape=(6, 6, 3))
    a = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(4, 3, padding="same")(inputs)))
    b = L.BatchNormalization()(L.Conv2D(4, 1, use_bias=False)(a))
    c = L.ReLU()(L.add([b, a]))                                 # conv+bn+add+relu
    # pad+conv: the padding read as im2col's zeros, except where a window would lie wholly
    # in it (left 2 + 1 of "same" on a 3-wide window): then the padded image is made
    d = L.Conv2D(4, 3, padding="same")(L.ZeroPadding2D(((1, 0), (2, 1)))(c))
    e = L.BatchNormalization(center=False, scale=False)(d)      # d also an output: no fusion
    f = L.LeakyReLU(negative_slope=0.1)(L.Conv2D(4, 3, strides=2)(L.ZeroPadding2D(1)(e)))
    flat = L.Flatten()(f)
    g = L.Activation("tanh")(L.BatchNormalization()(Dense(5)(flat)))   # dense+bn+tanh
    h = L.Activation("softmax")(Dense(3)(g))                    # softmax: not in the epilogue
    model = fastnn.Model(inputs, [h, d, L.add([Dense(5)(flat), g])])
    rng = np.random.default_rng(10)
    for layer in model.layers:      # statistics far from 0 and 1
        if isinstance(layer, L.BatchNormalization):
            c = layer.get_weights()[0].shape
            layer.set_weights(([rng.uniform(0.5, 2.0, c), rng.standard_normal(c)]
                               if layer.scale else []) +
                              [rng.standard_normal(c), rng.uniform(0.2, 3.0, c)])
    schedule = model._schedule
    fused = [step[0] for step in schedule.inference_steps if isinstance(step[0], _Fused)]
    parts = sorted((type(f.layer).__name__, f.norm is not None, f.residual, f.act[0],
                    f.pad and f.pad.padding) for f in fused)
    from fastnn import activations as A
    assert parts == sorted([("Conv2D", True, False, A.RELU, None),
                            ("Conv2D", True, True, A.RELU, None),
                            ("Conv2D", False, False, A.LINEAR, ((1, 0), (2, 1))),
                            ("Conv2D", False, False, A.LEAKY_RELU, ((1, 1), (1, 1))),
                            ("Dense", True, False, A.TANH, None),
                            ("Dense", False, True, A.LINEAR, None)]), parts
    assert len(schedule.steps) - len(schedule.inference_steps) == 2 + 3 + 1 + 2 + 2 + 1
    x = rng.standard_normal((7, 6, 6, 3)).astype(np.float32)
    fast = model.predict(x, verbose=0)
    model._schedule = None
    taped = model.predict(x, verbose=0)
    model._schedule = schedule
    for p, t in zip(fast, taped):
        np.testing.assert_allclose(p, t, rtol=1e-5, atol=1e-5)
    assert fast[2].std() > 0.1 and (fast[1] != 0).mean() > 0.5
    # A BatchNormalization whose statistics change (one fit step) is read anew each call.
    model.compile(fastnn.optimizers.SGD(0.1), ["sparse_categorical_crossentropy", "mse", "mse"])
    model.fit(x, [np.arange(7) % 3, fast[1], fast[2]], batch_size=7, epochs=1, verbose=0)
    fast = model.predict(x, verbose=0)
    model._schedule = None
    taped = model.predict(x, verbose=0)
    model._schedule = schedule
    for p, t in zip(fast, taped):
        np.testing.assert_allclose(p, t, rtol=1e-5, atol=1e-5)


def test_resnet_inference_memory_is_the_live_set():
    from fastnn.applications import ResNet50
    model = ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3), pooling="avg")
    x = np.random.default_rng(0).random((4, 64, 64, 3), dtype=np.float32)
    model.predict(x, verbose=0)
    pool = model._schedule._pools.pool
    lent = sum(b.nbytes for b in pool.free + [e[0] for e in pool.busy.values()])
    # every node's output, batch 4, float32: what each layer keeping its own would hold
    every = sum(4 * int(np.prod(node.outputs[0].shape[1:])) * 4 for node in model._nodes)
    assert lent < every / 4, (lent, every)


def test_integer_inputs_reach_the_model_as_integers():
    """Input(dtype="int32"): a symbolic int32 tensor; batches stay integers (a user's layer
    sees them as such: here it one-hot encodes them), fastnn's layers read them as float32
    (Keras promotes int @ float); the dtype survives get_config and a .keras file."""
    seen = []

    class OneHot(L.Layer):
        def call(self, x):
            seen.append(str(x.dtype))
            return fastnn.ops.reshape(fastnn.ops.one_hot(x, 5), (-1, 15))

        def compute_output_shape(self, input_shape):
            return (input_shape[0], 15)

    tokens = Input(shape=(3,), dtype="int32", name="tokens")
    assert tokens.dtype == "int32"
    model = fastnn.Model(tokens, Dense(2, activation="softmax")(OneHot()(tokens)))
    plain = fastnn.Sequential([Input(shape=(3,), dtype="int64"), Dense(2)])
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, (32, 3))
    y = (x[:, 0] > 2).astype(np.int64)
    model.compile(fastnn.optimizers.Adam(0.05), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x, y, epochs=20, batch_size=8, verbose=0)
    assert set(seen) == {"int32"} and history.history["accuracy"][-1] == 1.0
    plain.compile("sgd", "mse")
    plain.fit(x, rng.standard_normal((32, 2)), verbose=0)
    np.testing.assert_allclose(plain.predict(x, verbose=0),
                               x.astype(np.float32) @ plain.layers[0].get_weights()[0] +
                               plain.layers[0].get_weights()[1], rtol=1e-5, atol=1e-5)
    assert plain.get_config()["layers"][0]["config"]["dtype"] == "int64"
    assert model.get_config()["layers"][0]["config"]["dtype"] == "int32"
    with pytest.raises(ValueError, match="dtype must be float32 or an integer"):
        Input(shape=(3,), dtype="float64")


def test_a_sequential_is_a_graph_for_feature_extraction(tmp_path):
    layers = L
    """Keras's Sequential has inputs/outputs and each layer an output: a functional model
    over them shares the layers (and their weights), and keeps working after training."""
    seq = fastnn.Sequential([fastnn.Input((8,)), layers.Dense(4, activation="relu", name="h"),
                             layers.Dense(2, activation="softmax", name="o")])
    features = fastnn.Model(inputs=seq.inputs, outputs=seq.get_layer("h").output)
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    seq.compile("sgd", "sparse_categorical_crossentropy")
    seq.fit(x, np.array([0, 1, 0, 1, 1]), epochs=2, verbose=0)      # changes the shared weights
    kernel, bias = seq.get_layer("h").get_weights()
    np.testing.assert_allclose(features.predict(x, verbose=0),
                               np.maximum(x @ kernel + bias, 0), rtol=1e-5, atol=1e-6)
    assert seq.output.shape == (None, 2) and seq.input.shape == (None, 8)
    whole = fastnn.Model(seq.input, seq.output)
    np.testing.assert_array_equal(whole.predict(x, verbose=0), seq.predict(x, verbose=0))
    seq.save(tmp_path / "seq.keras")        # still saved as a Sequential
    loaded = fastnn.models.load_model(tmp_path / "seq.keras")
    assert type(loaded).__name__ == "Sequential"
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), seq.predict(x, verbose=0))
    with pytest.raises(AttributeError, match="no defined input"):
        _ = fastnn.Sequential([layers.Dense(3)]).output
