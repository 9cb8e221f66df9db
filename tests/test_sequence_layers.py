"""Sequence and text layers (fastnn/layers/sequence.py): outputs and gradients against real
Keras 3 with the same weights, gradients against finite differences (Embedding's sparse
gradient and masked pooling included), configs both ways, shapes, errors, masks carried
through models, integer inputs through fit/evaluate/predict, and a text model that learns.
Runs on the active test backend (FASTNN_TEST_BACKEND)."""

import numpy as np
import pytest
from gradcheck import numeric_grad
from onbackend import get, put

import fastnn
from fastnn import layers as L
from fastnn.backend import get_ops

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

# (class name, keyword arguments, input shape without the batch axis): float-input layers
CASES = [
    ("Conv1D", dict(filters=4, kernel_size=3), (9, 3)),
    ("Conv1D", dict(filters=4, kernel_size=3, strides=2, padding="same",
                    activation="relu"), (9, 2)),
    ("Conv1D", dict(filters=3, kernel_size=3, padding="causal", dilation_rate=2), (8, 2)),
    ("Conv1D", dict(filters=4, kernel_size=2, padding="causal", strides=2), (7, 3)),
    ("Conv1D", dict(filters=4, kernel_size=3, groups=2, padding="same", use_bias=False),
     (6, 4)),
    ("MaxPooling1D", dict(pool_size=3, strides=2, padding="same"), (9, 3)),
    ("MaxPooling1D", dict(), (8, 2)),
    ("AveragePooling1D", dict(pool_size=3, strides=1), (7, 2)),
    ("GlobalAveragePooling1D", dict(keepdims=True), (6, 3)),
    ("GlobalAveragePooling1D", dict(), (6, 3)),
    ("GlobalMaxPooling1D", dict(), (6, 3)),
    ("GlobalMaxPooling1D", dict(keepdims=True), (5, 2)),
]
IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(CASES)]


def pair(name, kwargs, shape, seed=0):
    ours = getattr(L, name)(**kwargs)
    theirs = getattr(keras.layers, name)(**kwargs)
    ours.build((None,) + shape)
    theirs.build((None,) + shape)
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal(w.shape).astype(np.float32) for w in theirs.get_weights()]
    assert [w.shape for w in ours.get_weights()] == [w.shape for w in weights]
    assert [v.path.split("/")[-1] for v in theirs.weights] == ours.weight_names
    ours.set_weights(weights)
    theirs.set_weights(weights)
    return ours, theirs


def keras_forward_backward(layer, x, dy, **kwargs):
    xt = torch.tensor(x, requires_grad=x.dtype.kind == "f")
    y = layer(xt, **kwargs)
    (y * torch.tensor(dy)).sum().backward()
    return (y.detach().numpy(), None if xt.grad is None else xt.grad.numpy(),
            [v.value.grad.numpy() for v in layer.trainable_weights])


@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=IDS)
def test_forward_and_gradients_equal_keras(name, kwargs, shape):
    ours, theirs = pair(name, kwargs, shape)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2,) + shape).astype(np.float32)
    out_shape = tuple(theirs.compute_output_shape((2,) + shape))
    assert ours.compute_output_shape((2,) + shape) == out_shape
    assert ours.compute_output_shape((None,) + shape) == \
        tuple(theirs.compute_output_shape((None,) + shape))
    dy = rng.standard_normal(out_shape).astype(np.float32)
    y_k, dx_k, dw_k = keras_forward_backward(theirs, x, dy)
    y = get(ours.forward(put(x), training=True))
    assert y.shape == out_shape
    np.testing.assert_allclose(y, y_k, rtol=1e-4, atol=1e-4)
    dx = get(ours.backward(put(dy)))
    np.testing.assert_allclose(dx, dx_k, rtol=1e-4, atol=1e-4)
    for wname, want in zip(ours.weight_names, dw_k):
        np.testing.assert_allclose(get(ours.grads[wname]), want, rtol=1e-4, atol=1e-3,
                                   err_msg=wname)


def finite_difference_check(ours, x, r, mask=None, check_dx=True):
    """The layer's gradients (input and weights) for the loss sum(y * r) vs central
    differences."""
    names = ours.weight_names
    base = [w.copy() for w in ours.get_weights()]
    kw = {} if mask is None else {"mask": put(mask)}

    def loss(xx=x, which=None, value=None):
        ws = list(base)
        if which is not None:
            ws[which] = value.astype(np.float32)
        ours.set_weights(ws)
        return float((get(ours.forward(put(xx.astype(x.dtype)), **kw)) * r).sum())

    loss()
    dx = ours.backward(put(r.astype(np.float32)))
    grads = {n: get(ours.grads[n]).copy() for n in names}
    if check_dx:
        np.testing.assert_allclose(get(dx), numeric_grad(lambda v: loss(xx=v), x, 0.25),
                                   rtol=1e-3, atol=1e-3)
    for i, n in enumerate(names):
        np.testing.assert_allclose(grads[n], numeric_grad(lambda v, i=i: loss(which=i, value=v),
                                                          base[i], 0.25),
                                   rtol=1e-3, atol=1e-3, err_msg=n)
    return grads


GRAD_CASES = [c for c in CASES if "activation" not in c[1] and "Max" not in c[0]]


@pytest.mark.parametrize("name,kwargs,shape", GRAD_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(GRAD_CASES)])
def test_gradients_match_finite_differences(name, kwargs, shape):
    ours = getattr(L, name)(**kwargs)
    ours.build((None,) + shape)
    rng = np.random.default_rng(2)
    ours.set_weights([rng.standard_normal(w.shape).astype(np.float32)
                      for w in ours.get_weights()])
    x = rng.standard_normal((2,) + shape).astype(np.float32)
    r = rng.standard_normal(ours.compute_output_shape((2,) + shape)).astype(np.float64)
    finite_difference_check(ours, x, r)


def test_max_pooling_gradients_match_finite_differences():
    """Distinct, well-separated inputs: the maximum does not switch under the step."""
    for layer in (L.MaxPooling1D(pool_size=2, strides=1), L.GlobalMaxPooling1D()):
        layer.build((None, 6, 2))
        x = np.random.default_rng(3).permutation(24).reshape(2, 6, 2).astype(np.float32)
        r = np.random.default_rng(4).standard_normal(
            layer.compute_output_shape((2, 6, 2))).astype(np.float64)
        finite_difference_check(layer, x, r)


# ---- Embedding --------------------------------------------------------------------------------
def embedding_pair(mask_zero=False, seed=0):
    ours = L.Embedding(7, 3, mask_zero=mask_zero)
    theirs = keras.layers.Embedding(7, 3, mask_zero=mask_zero)
    ours.build((None, 4))
    theirs.build((None, 4))
    w = np.random.default_rng(seed).standard_normal((7, 3)).astype(np.float32)
    ours.set_weights([w])
    theirs.set_weights([w])
    return ours, theirs


@pytest.mark.parametrize("dtype", ["int32", "int64", "float32"])
def test_embedding_forward_gradient_and_mask_equal_keras(dtype):
    ours, theirs = embedding_pair(mask_zero=True)
    x = np.array([[1, 2, 0, 2], [6, 2, 2, 0], [0, 0, 5, 1]], dtype)
    dy = np.random.default_rng(1).standard_normal((3, 4, 3)).astype(np.float32)
    y_k, _, (dw_k,) = keras_forward_backward(theirs, x, dy)
    y = get(ours.forward(put(x, dtype), training=True))
    np.testing.assert_array_equal(y, y_k)
    assert ours.backward(put(dy), need_dx=False) is None
    np.testing.assert_allclose(get(ours.grads["embeddings"]), dw_k, rtol=1e-6, atol=1e-6)
    mask_k = keras.ops.convert_to_numpy(theirs.compute_mask(torch.tensor(x), None))
    np.testing.assert_array_equal(get(ours.compute_mask(put(x, dtype), None)), mask_k)
    assert ours.supports_masking and not L.Embedding(7, 3).supports_masking
    assert L.Embedding(7, 3).compute_mask(x, None) is None


def test_embedding_sparse_gradient_matches_finite_differences_and_clears_old_rows():
    ours, _ = embedding_pair()
    rng = np.random.default_rng(5)
    x = np.array([[1, 1, 3, 6], [3, 2, 1, 1]], np.int32)
    r = rng.standard_normal((2, 4, 3))
    grads = finite_difference_check(ours, x, r, check_dx=False)
    assert not grads["embeddings"][[0, 4, 5]].any()
    # a second step on other rows: the rows of the first are zero again (only they were
    # zeroed, the gradient stays the dense gradient Keras's optimizer reads)
    ours.forward(put(np.array([[0, 5, 5, 5]], np.int32)), training=True)
    ours.backward(put(np.ones((1, 4, 3), np.float32)), need_dx=False)
    g = get(ours.grads["embeddings"])
    expected = np.zeros((7, 3), np.float32)
    expected[0], expected[5] = 1, 3
    np.testing.assert_array_equal(g, expected)


@pytest.mark.parametrize("regularized", [False, True])
def test_shared_or_regularized_embedding_trains_as_keras(regularized):
    """One Embedding called on two inputs (its calls' gradients add up), or with a
    regularizer (a dense gradient): every step's gradient is still the whole one."""
    def build(K):
        a, b = K.Input(shape=(4,), dtype="int32"), K.Input(shape=(4,), dtype="int32")
        embed = K.layers.Embedding(40, 3, embeddings_regularizer="l2" if regularized else None)
        h = K.layers.Add()([embed(a), embed(b)])
        return K.Model([a, b], K.layers.Dense(1)(K.layers.GlobalAveragePooling1D()(h)))
    ours, theirs = build(fastnn), build(keras)
    theirs.set_weights(ours.get_weights())
    rng = np.random.default_rng(4)
    for m in (ours, theirs):
        m.compile(optimizer=keras.optimizers.Adam(0.05) if m is theirs else
                  fastnn.optimizers.Adam(0.05), loss="mse")
    for _step in range(4):
        # few rows per step, the two calls on different rows: a row one call wrote last
        # step and no call writes this step must read zero
        xa = rng.integers(0, 20, (2, 4)).astype(np.int32)
        xb = rng.integers(20, 40, (2, 4)).astype(np.int32)
        y = rng.standard_normal((2, 1)).astype(np.float32)
        ours.train_on_batch([xa, xb], y)
        theirs.train_on_batch([xa, xb], y)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, keras.ops.convert_to_numpy(b), rtol=1e-4, atol=1e-5)


def test_embedding_out_of_range_index_names_the_layer():
    layer = L.Embedding(5, 2, name="words")
    layer.build((None, 3))
    for bad in (5, -1, 1000):
        with pytest.raises(ValueError, match=rf"Embedding 'words'.*index {bad}.*input_dim=5"):
            layer.forward(put(np.array([[0, 1, bad]], np.int64), "int64"))
    layer.forward(put(np.array([[0, 1, 4]], np.int32), "int32"), training=True)
    with pytest.raises(ValueError, match="index 9"):
        get_ops().embedding_backward(put(np.array([9], np.int32), "int32"),
                                     put(np.ones((1, 2), np.float32)),
                                     layer.grads["embeddings"], where="Embedding 'words'")


@pytest.mark.parametrize("rows", [50, 700])
def test_embedding_kernel_is_deterministic_across_thread_counts(rows):
    """The gradient rows go to the threads in blocks (64 rows of 64 floats): 700 rows are 11
    blocks dealt to 2, 3 or 4 threads; a second call zeroes only the rows the first wrote."""
    if get_ops().name != "cpu":
        pytest.skip("the C kernel's thread counts")
    from fastnn import _core
    rng = np.random.default_rng(0)
    ids = rng.integers(0, rows, 5000).astype(np.int64)
    ids2 = rng.integers(0, rows, 300).astype(np.int32)
    dy = rng.standard_normal((5000, 64)).astype(np.float32)
    results = []
    for threads in (1, 2, 3, 4):
        fastnn.set_num_threads(threads)
        try:
            d = np.full((rows, 64), 7.0, np.float32)
            _core.embedding_backward(ids, dy, d)
            first = d.copy()
            _core.embedding_backward(ids2, dy[:300], d, ids)
            results.append((first, d))
        finally:
            fastnn.set_num_threads(1)
    for first, d in results[1:]:
        np.testing.assert_array_equal(first, results[0][0])
        np.testing.assert_array_equal(d, results[0][1])
    for got, i, g in ((results[0][0], ids, dy), (results[0][1], ids2, dy[:300])):
        want = np.zeros((rows, 64))
        np.add.at(want, i, g.astype(np.float64))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_embedding_arguments_and_config():
    with pytest.raises(ValueError, match="`input_dim` must be a positive integer"):
        L.Embedding(0, 3)
    with pytest.raises(ValueError, match="`output_dim` must be a positive integer"):
        L.Embedding(3, 2.5)
    with pytest.raises(ValueError, match="LoRA"):
        L.Embedding(3, 2, lora_rank=2)
    with pytest.warns(UserWarning, match="`input_length` is deprecated"):
        assert L.Embedding(3, 2, input_length=10).get_config()["input_dim"] == 3
    w = np.arange(6, dtype=np.float32).reshape(3, 2)
    layer = L.Embedding(3, 2, weights=w, mask_zero=True, embeddings_regularizer="l2")
    np.testing.assert_array_equal(layer.get_weights()[0], w)
    config = layer.get_config()
    theirs = keras.layers.Embedding(3, 2, mask_zero=True,
                                    embeddings_regularizer="l2").get_config()
    assert set(config) <= set(theirs)
    for key in ("input_dim", "output_dim", "mask_zero", "embeddings_regularizer"):
        assert config[key] == theirs[key], key
    again = L.Embedding.from_config(theirs)
    assert again.get_config() == {**config, "name": again.name}
    keras.layers.Embedding.from_config(config)


# ---- masks ------------------------------------------------------------------------------------
def test_global_average_pooling_with_mask_equals_keras_and_finite_differences():
    ours, theirs = pair("GlobalAveragePooling1D", {}, (5, 3))
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 5, 3)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
    dy = rng.standard_normal((3, 3)).astype(np.float32)
    y_k, dx_k, _ = keras_forward_backward(theirs, x, dy, mask=torch.tensor(mask))
    y = get(ours.forward(put(x), training=True, mask=put(mask, bool)))
    np.testing.assert_allclose(y, y_k, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(get(ours.backward(put(dy))), dx_k, rtol=1e-5, atol=1e-6)
    finite_difference_check(ours, x, dy.astype(np.float64), mask=mask)


def test_masking_layer_equals_keras():
    ours, theirs = L.Masking(mask_value=1.5), keras.layers.Masking(mask_value=1.5)
    x = np.random.default_rng(7).standard_normal((2, 4, 3)).astype(np.float32)
    x[0, 1] = 1.5
    x[1, 3] = 1.5
    x[1, 0, 0] = 1.5        # one feature only: kept
    y_k = keras.ops.convert_to_numpy(theirs(x))
    ours.build((None, 4, 3))
    np.testing.assert_array_equal(get(ours.forward(put(x), training=True)), y_k)
    np.testing.assert_array_equal(get(ours.compute_mask(put(x), None)),
                                  [[True, False, True, True], [True, True, True, False]])
    dx = get(ours.backward(put(np.ones((2, 4, 3), np.float32))))
    assert dx[0, 1].sum() == 0 and dx[0, 0].sum() == 3
    assert L.Masking.from_config(ours.get_config()).mask_value == 1.5


def masked_model(K, functional):
    if functional:
        i = K.Input(shape=(6,), dtype="int32")
        h = K.layers.Embedding(9, 4, mask_zero=True)(i)
        h = K.layers.Dense(5, activation="tanh")(h)
        h = K.layers.Dropout(0.0)(h)
        h = K.layers.GlobalAveragePooling1D()(h)
        return K.Model(i, K.layers.Dense(2, activation="softmax")(h))
    return K.Sequential([K.Input(shape=(6,), dtype="int32"),
                         K.layers.Embedding(9, 4, mask_zero=True),
                         K.layers.Dense(5, activation="tanh"), K.layers.Dropout(0.0),
                         K.layers.GlobalAveragePooling1D(),
                         K.layers.Dense(2, activation="softmax")])


@pytest.mark.parametrize("functional", [False, True])
def test_mask_flows_through_models_as_in_keras(functional):
    ours, theirs = masked_model(fastnn, functional), masked_model(keras, functional)
    theirs.set_weights(ours.get_weights())
    x = np.array([[1, 2, 0, 0, 0, 0], [3, 4, 5, 6, 7, 8], [8, 0, 0, 0, 0, 0]], np.int32)
    want = keras.ops.convert_to_numpy(theirs.predict(x, verbose=0))
    np.testing.assert_allclose(ours.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)
    # the padding changes nothing: it is masked
    np.testing.assert_allclose(ours.predict(x[:, :3], verbose=0) if False else
                               ours.predict(x, verbose=0)[0],
                               ours.predict(np.array([[1, 2, 0, 0, 0, 0]]), verbose=0)[0])
    y = np.array([0, 1, 1])
    for m in (ours, theirs):
        m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    for _ in range(3):
        ours.train_on_batch(x, y)
        theirs.train_on_batch(x, y)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, keras.ops.convert_to_numpy(b), rtol=1e-4, atol=1e-6)


def test_subclassed_model_and_user_layer_get_the_mask():
    seen = []

    class Probe(L.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.supports_masking = True      # passes the mask on (as Keras asks)

        def call(self, inputs, mask=None):
            seen.append(None if mask is None else get(mask).copy())
            return inputs

    class Net(fastnn.Model):
        def __init__(self):
            super().__init__()
            self.embed = L.Embedding(5, 2, mask_zero=True)
            self.probe = Probe()
            self.pool = L.GlobalAveragePooling1D()

        def call(self, inputs):
            return self.pool(self.probe(self.embed(inputs)))

    net = Net()
    x = np.array([[1, 0, 2], [0, 0, 3]], np.int64)
    out = net.predict(x, verbose=0)
    np.testing.assert_array_equal(seen[-1], x != 0)
    table = net.embed.get_weights()[0]
    np.testing.assert_allclose(out[1], table[3], rtol=1e-6)
    np.testing.assert_allclose(out[0], (table[1] + table[2]) / 2, rtol=1e-6)


@pytest.mark.parametrize("merge", ["Add", "Concatenate"])
def test_merge_layers_combine_masks_as_keras(merge):
    def build(K):
        a = K.Input(shape=(5,), dtype="int32")
        b = K.Input(shape=(5,), dtype="int32")
        ea = K.layers.Embedding(6, 3, mask_zero=True)(a)
        eb = K.layers.Embedding(6, 3, mask_zero=merge == "Add")(b)
        h = getattr(K.layers, merge)()([ea, eb])
        return K.Model([a, b], K.layers.GlobalAveragePooling1D()(h))
    ours, theirs = build(fastnn), build(keras)
    theirs.set_weights(ours.get_weights())
    xa = np.array([[1, 2, 0, 0, 0], [3, 0, 0, 0, 0]], np.int32)
    xb = np.array([[1, 0, 0, 0, 4], [2, 2, 2, 0, 0]], np.int32)
    np.testing.assert_allclose(ours.predict([xa, xb], verbose=0),
                               keras.ops.convert_to_numpy(theirs.predict([xa, xb], verbose=0)),
                               rtol=1e-5, atol=1e-6)
    assert ours._schedule is not None and ours._schedule.masking   # masks on the schedule


def test_residual_graph_without_masks_keeps_the_fused_schedule():
    i = fastnn.Input(shape=(4,))
    h = L.Dense(4)(i)
    model = fastnn.Model(i, L.Add()([h, L.Dense(4)(h)]))
    assert model._schedule is not None and not model._schedule.masking


def test_masked_graph_trains_on_the_schedule_as_keras():
    """A graph (not a chain) with a mask: the schedule carries it, forward and loss."""
    def build(K):
        i = K.Input(shape=(5,), dtype="int32")
        e = K.layers.Embedding(7, 3, mask_zero=True)(i)
        h = K.layers.Add()([e, K.layers.Dense(3)(e)])
        return K.Model(i, K.layers.Dense(2)(h))
    ours, theirs = build(fastnn), build(keras)
    assert ours._schedule is not None and ours._schedule.masking
    theirs.set_weights(ours.get_weights())
    x = np.array([[1, 2, 0, 0, 0], [3, 4, 5, 6, 0], [1, 0, 0, 0, 0]], np.int32)
    y = np.random.default_rng(2).standard_normal((3, 5, 2)).astype(np.float32)
    for m in (ours, theirs):
        m.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    np.testing.assert_allclose(ours.predict(x, verbose=0),
                               keras.ops.convert_to_numpy(theirs.predict(x, verbose=0)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.evaluate(x, y, verbose=0),
                               theirs.evaluate(x, y, verbose=0), rtol=1e-5)
    ours.fit(x, y, epochs=2, batch_size=3, verbose=0)
    theirs.fit(x, y, epochs=2, batch_size=3, verbose=0)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, keras.ops.convert_to_numpy(b), rtol=1e-4, atol=1e-6)


def test_a_layer_without_masking_drops_the_mask_with_keras_warning():
    model = fastnn.Sequential([fastnn.Input(shape=(4,), dtype="int32"),
                               L.Embedding(6, 3, mask_zero=True), L.Flatten(), L.Dense(1)])
    with pytest.warns(UserWarning, match="does not support masking"):
        model.predict(np.array([[1, 2, 0, 0]]), verbose=0)


def test_output_mask_weighs_the_loss_as_keras():
    def build(K):
        return K.Sequential([K.Input(shape=(5,), dtype="int32"),
                             K.layers.Embedding(6, 3, mask_zero=True),
                             K.layers.TimeDistributed(K.layers.Dense(2))])
    ours, theirs = build(fastnn), build(keras)
    theirs.set_weights(ours.get_weights())
    x = np.array([[1, 2, 0, 0, 0], [3, 4, 5, 1, 0]], np.int32)
    y = np.random.default_rng(0).standard_normal((2, 5, 2)).astype(np.float32)
    for m in (ours, theirs):
        m.compile(optimizer="sgd", loss="mse")
    np.testing.assert_allclose(ours.evaluate(x, y, verbose=0),
                               theirs.evaluate(x, y, verbose=0), rtol=1e-5)
    ours.train_on_batch(x, y)
    theirs.train_on_batch(x, y)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, keras.ops.convert_to_numpy(b), rtol=1e-4, atol=1e-6)


def test_each_outputs_mask_weighs_its_loss_and_metrics_as_keras():
    """Two outputs: a tagger's per-word softmax carrying the Embedding's mask, and a masked
    LSTM's sentence output (no mask): the losses, the per-output losses and the metrics as
    Keras 3 computes them, and one step of training to the same weights."""
    def build(K):
        inputs = K.Input(shape=(6,), dtype="int32")
        h = K.layers.Embedding(8, 4, mask_zero=True)(inputs)
        tags = K.layers.Dense(3, activation="softmax", name="tags")(h)
        sentence = K.layers.Dense(1, name="sentence")(K.layers.LSTM(5)(h))
        return K.Model(inputs, [tags, sentence])
    ours, theirs = build(fastnn), build(keras)
    theirs.set_weights(ours.get_weights())
    rng = np.random.default_rng(5)
    x = rng.integers(1, 8, (5, 6)).astype(np.int32)
    x[0, 2:] = x[3, 4:] = 0
    y = [rng.integers(0, 3, (5, 6)), rng.standard_normal((5, 1)).astype(np.float32)]
    for m in (ours, theirs):
        m.compile(optimizer="sgd", loss=["sparse_categorical_crossentropy", "mse"],
                  metrics=[["accuracy"], ["mae"]])
    np.testing.assert_allclose(ours.evaluate(x, y, verbose=0),
                               theirs.evaluate(x, y, verbose=0), rtol=1e-5)
    ours.fit(x, y, epochs=1, batch_size=5, verbose=0)
    theirs.fit(x, y, epochs=1, batch_size=5, verbose=0)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, keras.ops.convert_to_numpy(b), rtol=1e-4, atol=1e-6)


def test_output_mask_weighs_loss_and_metrics_of_a_tagger_as_keras():
    def build(K):
        return K.Sequential([K.Input(shape=(6,), dtype="int32"),
                             K.layers.Embedding(8, 4, mask_zero=True),
                             K.layers.Dense(3, activation="softmax")])
    ours, theirs = build(fastnn), build(keras)
    theirs.set_weights(ours.get_weights())
    rng = np.random.default_rng(3)
    x = rng.integers(1, 8, (5, 6)).astype(np.int32)
    x[0, 2:] = x[3, 4:] = 0
    y = rng.integers(0, 3, (5, 6))
    for m in (ours, theirs):
        m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    np.testing.assert_allclose(ours.evaluate(x, y, verbose=0),
                               theirs.evaluate(x, y, verbose=0), rtol=1e-5)
    ours.fit(x, y, epochs=2, batch_size=5, verbose=0)
    theirs.fit(x, y, epochs=2, batch_size=5, verbose=0)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, keras.ops.convert_to_numpy(b), rtol=1e-4, atol=1e-6)


# ---- TimeDistributed --------------------------------------------------------------------------
def test_time_distributed_equals_keras_and_finite_differences():
    ours = L.TimeDistributed(L.Dense(3, activation="tanh"))
    theirs = keras.layers.TimeDistributed(keras.layers.Dense(3, activation="tanh"))
    ours.build((None, 4, 2))
    theirs.build((None, 4, 2))
    rng = np.random.default_rng(8)
    weights = [rng.standard_normal(w.shape).astype(np.float32) for w in theirs.get_weights()]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    x = rng.standard_normal((3, 4, 2)).astype(np.float32)
    dy = rng.standard_normal((3, 4, 3)).astype(np.float32)
    y_k, dx_k, dw_k = keras_forward_backward(theirs, x, dy)
    np.testing.assert_allclose(get(ours.forward(put(x), training=True)), y_k, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(get(ours.backward(put(dy))), dx_k, rtol=1e-4, atol=1e-5)
    for name, want in zip(ours.weight_names, dw_k):
        np.testing.assert_allclose(get(ours.grads[name]), want, rtol=1e-4, atol=1e-5)
    linear = L.TimeDistributed(L.Conv1D(2, 2))
    linear.build((None, 3, 5, 2))
    finite_difference_check(linear, rng.standard_normal((2, 3, 5, 2)).astype(np.float32),
                            rng.standard_normal((2, 3, 4, 2)))
    config = ours.get_config()
    again = L.TimeDistributed.from_config(config)
    assert type(again.layer) is L.Dense and again.layer.units == 3
    assert keras.layers.TimeDistributed.from_config(config).layer.units == 3
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        L.TimeDistributed(L.Dense(2)).build((None, 4))
    with pytest.raises(ValueError, match="Layer` instance"):
        L.TimeDistributed("dense")


def test_time_distributed_gives_the_inner_layer_each_steps_mask():
    """Sentences of words: Embedding(mask_zero) makes a (batch, sentences, words) mask, and
    TimeDistributed(LSTM) hands each sentence's word mask to the LSTM (Keras: mask[:, i] to
    step i's call), so padded words change nothing; outputs equal Keras's, in a model that
    trains (the backward pass through the masked steps)."""
    ids = np.array([[[3, 5, 0, 0], [7, 0, 0, 0], [2, 4, 6, 1]],
                    [[1, 1, 1, 1], [9, 8, 0, 0], [0, 0, 0, 0]]], np.int32)

    def build(lib, mask_zero=True):
        inputs = lib.Input((3, 4), dtype="int32")
        h = lib.layers.Embedding(10, 5, mask_zero=mask_zero)(inputs)
        h = lib.layers.TimeDistributed(lib.layers.LSTM(6))(h)
        return lib.Model(inputs, lib.layers.Dense(2)(lib.layers.Flatten()(h)))

    theirs, ours, unmasked = build(keras), build(fastnn), build(fastnn, mask_zero=False)
    ours.set_weights(theirs.get_weights())
    unmasked.set_weights(theirs.get_weights())
    want = keras.ops.convert_to_numpy(theirs(ids))
    np.testing.assert_allclose(ours.predict(ids, verbose=0), want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(unmasked.predict(ids, verbose=0), want, atol=1e-3)  # mask used
    inner = L.TimeDistributed(L.LSTM(3))
    inner.build((None, 2, 4, 5))
    x = np.ones((1, 2, 4, 5), np.float32)
    with pytest.raises(ValueError, match="first two dimensions"):
        inner.forward(put(x), mask=put(np.ones((1, 3, 4), bool)))
    ours.compile("adam", "mse")
    history = ours.fit(ids, np.ones((2, 2), np.float32), epochs=3, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]


# ---- configs and errors -------------------------------------------------------------------------
@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=IDS)
def test_config_round_trips_and_keras_reads_it(name, kwargs, shape):
    layer = getattr(L, name)(**kwargs)
    config = layer.get_config()
    theirs = getattr(keras.layers, name)(**kwargs).get_config()
    assert set(config) <= set(theirs)
    for key in config:
        if key not in ("name", "dtype") and not key.endswith("_initializer"):
            assert config[key] == (tuple(theirs[key]) if isinstance(theirs[key], list)
                                   else theirs[key]), key
    assert getattr(L, name).from_config(config).get_config() == config
    assert getattr(L, name).from_config(theirs).get_config() == \
        {**config, "name": theirs["name"]}
    getattr(keras.layers, name).from_config(config)


BAD = [
    ("Conv1D", dict(filters=0, kernel_size=3), "filters"),
    ("Conv1D", dict(filters=2, kernel_size=(3, 3)), "kernel_size"),
    ("Conv1D", dict(filters=2, kernel_size=3, strides=2, dilation_rate=2),
     "not supported in conjunction with"),
    ("Conv1D", dict(filters=3, kernel_size=3, groups=2), "evenly divisible"),
    ("MaxPooling1D", dict(pool_size=0), "pool_size"),
]


@pytest.mark.parametrize("name,kwargs,message", BAD, ids=[f"{b[0]}-{i}" for i, b in
                                                          enumerate(BAD)])
def test_bad_arguments_raise_keras_errors(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        getattr(keras.layers, name)(**kwargs)
    with pytest.raises(ValueError, match=message):
        getattr(L, name)(**kwargs)


def test_shapes_and_rank_errors():
    assert L.Embedding(10, 4).compute_output_shape((None, 7)) == (None, 7, 4)
    assert L.Embedding(10, 4)(np.array([[1, 9, 0]])).shape == (1, 3, 4)   # an eager call
    assert L.Conv1D(5, 3, padding="causal").compute_output_shape((None, None, 2)) == \
        (None, None, 5)
    with pytest.raises(ValueError, match="expects 3-D input"):
        L.Conv1D(2, 2).build((None, 4))
    with pytest.raises(ValueError, match="expects 3-D input"):
        L.GlobalAveragePooling1D().build((None, 4, 3, 2))


# ---- integer inputs end to end -------------------------------------------------------------
def text_data(n=1200, steps=24, vocab=60, seed=0):
    """Sequences of varying length padded with 0; the label says whether "good" words
    (1..10) outnumber "bad" ones (11..20): a task an average of embeddings can learn."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, vocab, (n, steps))
    lengths = rng.integers(4, steps + 1, n)
    x[np.arange(steps)[None, :] >= lengths[:, None]] = 0
    good = ((x >= 1) & (x <= 10)).sum(1)
    bad = ((x >= 11) & (x <= 20)).sum(1)
    keep = good != bad
    return x[keep], (good > bad)[keep].astype(np.float32)


def test_masked_text_model_learns():
    fastnn.utils.set_random_seed(0)
    x, y = text_data()
    model = fastnn.Sequential([L.Embedding(60, 16, mask_zero=True),
                               L.GlobalAveragePooling1D(), L.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(x[:900], y[:900], epochs=12, batch_size=32, verbose=0)
    loss, accuracy = model.evaluate(x[900:], y[900:], verbose=0)
    assert accuracy > 0.85, accuracy
    assert model.predict(x[900:], verbose=0).shape == (len(x) - 900, 1)


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_inputs_fit_evaluate_predict_without_a_float_cast(dtype):
    seen = []

    class Probe(L.Layer):
        def call(self, inputs):
            seen.append(inputs.dtype)
            return fastnn.ops.cast(inputs, "float32")

    x, y = text_data(n=200)
    x = x.astype(dtype)
    i = fastnn.Input(shape=(x.shape[1],), dtype=dtype)
    out = L.Dense(1, activation="sigmoid")(L.GlobalAveragePooling1D()(
        L.Embedding(60, 4)(i)))
    model = fastnn.Model(i, out)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    model.evaluate(x, y, verbose=0)
    assert model.predict(x, verbose=0).shape == (len(x), 1)
    probe = fastnn.Sequential([fastnn.Input(shape=(x.shape[1],), dtype=dtype), Probe()])
    probe.predict(x[:4], verbose=0)
    assert np.dtype(seen[-1]) == np.dtype(dtype)


def test_several_inputs_keep_their_dtypes():
    seen = {}

    class Probe(L.Layer):
        def call(self, inputs):
            seen[self.name] = (inputs.dtype, get(fastnn.ops.convert_to_numpy(inputs)
                                                 if hasattr(fastnn.ops, "convert_to_numpy")
                                                 else inputs.value).copy())
            return fastnn.ops.cast(inputs, "float32")

    big = 2 ** 31 - 5          # exact only as an integer (float32 would round it)
    ids = fastnn.Input(shape=(3,), dtype="int64")
    values = fastnn.Input(shape=(2,))
    a = Probe(name="ids_probe")(ids)
    b = Probe(name="values_probe")(values)
    model = fastnn.Model([ids, values], L.Concatenate()([a, b]))
    x_ids = np.array([[1, big, 3], [4, 5, 6]], np.int64)
    x_values = np.array([[0.1, 0.2], [0.3, 0.4]], np.float32)
    out = model.predict([x_ids, x_values], verbose=0)
    assert np.dtype(seen["ids_probe"][0]) == np.int64
    assert np.dtype(seen["values_probe"][0]) == np.float32
    np.testing.assert_array_equal(seen["ids_probe"][1], x_ids)
    np.testing.assert_array_equal(seen["values_probe"][1], x_values)
    np.testing.assert_allclose(out[:, 3:], x_values)


def test_integer_and_float_inputs_train_together():
    fastnn.utils.set_random_seed(0)
    x, y = text_data()
    ids = fastnn.Input(shape=(x.shape[1],), dtype="int32")
    extra = fastnn.Input(shape=(2,))
    h = L.GlobalAveragePooling1D()(L.Embedding(60, 8, mask_zero=True)(ids))
    model = fastnn.Model([ids, extra], L.Dense(1, activation="sigmoid")(
        L.Concatenate()([h, L.Dense(2)(extra)])))
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    noise = np.random.default_rng(0).standard_normal((len(x), 2)).astype(np.float32)
    history = model.fit([x.astype(np.int32), noise], y, epochs=12, batch_size=32, verbose=0)
    assert history.history["accuracy"][-1] > 0.8
    loss, accuracy = model.evaluate({model.input_names[0]: x, model.input_names[1]: noise}, y,
                                    verbose=0)
    assert accuracy > 0.8
    with pytest.raises(ValueError, match="index 60 is out of range for input_dim=60"):
        model.predict([np.full_like(x, 60), noise], verbose=0)
