"""Losses against Keras 3's values (clipping, reductions, label smoothing), gradients against
finite differences for every mode, and metric resolution by shape."""
import os

import numpy as np
import pytest
from gradcheck import numeric_grad
from onbackend import get, put

from fastnn import activations as A
from fastnn import losses, metrics


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras")


def _probs(rng, n=6, c=4):
    z = rng.standard_normal((n, c)).astype(np.float32) * 2
    e = np.exp(z - z.max(1, keepdims=True))
    return z, (e / e.sum(1, keepdims=True)).astype(np.float32)


def test_values_match_keras(rng, keras):
    z, p = _probs(rng)
    p[0] = [1.0, 0.0, 0.0, 0.0]   # exercises the 1e-7 clipping
    labels = rng.integers(0, 4, 6)
    labels[0] = 2
    onehot = np.eye(4, dtype=np.float32)[labels]
    w = rng.random(6).astype(np.float32)
    K = keras.losses
    cases = [
        (losses.SparseCategoricalCrossentropy(), K.SparseCategoricalCrossentropy(), labels, p),
        (losses.CategoricalCrossentropy(), K.CategoricalCrossentropy(), onehot, p),
        (losses.CategoricalCrossentropy(label_smoothing=0.1),
         K.CategoricalCrossentropy(label_smoothing=0.1), onehot, p),
        (losses.CategoricalCrossentropy(from_logits=True),
         K.CategoricalCrossentropy(from_logits=True), onehot, z),
        (losses.SparseCategoricalCrossentropy(from_logits=True),
         K.SparseCategoricalCrossentropy(from_logits=True), labels, z),
        (losses.MeanSquaredError(), K.MeanSquaredError(), onehot, p),
        (losses.MeanAbsoluteError(), K.MeanAbsoluteError(), onehot, p),
        (losses.MeanSquaredError(reduction="sum"), K.MeanSquaredError(reduction="sum"),
         onehot, p),
    ]
    binary = (rng.random((6, 1)) > 0.5).astype(np.float32)
    q = 1 / (1 + np.exp(-z[:, :1]))
    cases += [(losses.BinaryCrossentropy(), K.BinaryCrossentropy(), binary, q),
              (losses.BinaryCrossentropy(label_smoothing=0.2),
               K.BinaryCrossentropy(label_smoothing=0.2), binary, q),
              (losses.BinaryCrossentropy(from_logits=True),
               K.BinaryCrossentropy(from_logits=True), binary, z[:, :1])]
    for ours, theirs, y, pred in cases:
        want = float(keras.ops.convert_to_numpy(theirs(y, pred)))
        assert ours(y, pred) == pytest.approx(want, rel=2e-5, abs=1e-6), type(ours).__name__
        want_w = float(keras.ops.convert_to_numpy(theirs(y, pred, sample_weight=w)))
        assert ours(y, pred, sample_weight=w) == pytest.approx(want_w, rel=2e-5, abs=1e-6)


def _fd(f, x, eps=1e-3):
    return numeric_grad(f, x.astype(np.float64), eps)


@pytest.mark.parametrize("loss_cls,partner", [
    (losses.CategoricalCrossentropy, A.SOFTMAX),
    (losses.SparseCategoricalCrossentropy, A.SOFTMAX),
    (losses.BinaryCrossentropy, A.SIGMOID)])
def test_fused_and_logits_gradients_are_logit_gradients(rng, loss_cls, partner):
    from fastnn.backend.base import Ops
    z = rng.standard_normal((5, 3))
    if loss_cls is losses.SparseCategoricalCrossentropy:
        y = rng.integers(0, 3, 5).astype(np.int32)
    else:
        y = (rng.random((5, 3)) > 0.5).astype(np.float32)
        if partner == A.SOFTMAX:
            y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 5)]
    ref = Ops()
    loss = loss_cls()

    def value(zz):
        p = ref.act_forward(partner, 0, zz, out=np.empty_like(zz))
        return float(loss.value_and_grad(put(p, np.float32), put(y), None, 1.0, None,
                                         "fused")) / 5

    p = ref.act_forward(partner, 0, z.astype(np.float32))
    for mode, inp in (("fused", p), ("logits", z.astype(np.float32))):
        obj = loss_cls(from_logits=(mode == "logits"))
        g = put(np.empty((5, 3), np.float32))
        obj.value_and_grad(put(inp), put(y), None, 1 / 5, g, mode)
        np.testing.assert_allclose(get(g), _fd(value, z), rtol=2e-3, atol=2e-5)


@pytest.mark.parametrize("loss_cls", [losses.CategoricalCrossentropy,
                                      losses.BinaryCrossentropy,
                                      losses.MeanSquaredError, losses.MeanAbsoluteError])
def test_output_gradients_match_finite_differences(rng, loss_cls):
    p = rng.uniform(0.1, 0.9, (4, 3)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[[0, 2, 1, 1]]
    loss = loss_cls()
    g = put(np.empty_like(p))
    loss.value_and_grad(put(p), put(y), None, 0.25, g, "outputs")

    def value(pp):
        return float(loss.value_and_grad(put(pp, np.float32), put(y), None, 1.0, None,
                                         "outputs")) / 4

    np.testing.assert_allclose(get(g), _fd(value, p, 1e-3), rtol=5e-3, atol=1e-4)


def test_sparse_output_loss_is_the_categorical_one_on_one_hot_rows(rng):
    """Ops.categorical_xent_outputs(sparse=True), with sample weights: the value and gradient
    of the one-hot rows' loss, and that gradient the finite differences'."""
    p = rng.uniform(0.1, 0.9, (5, 3)).astype(np.float32)
    labels = np.array([0, 2, 1, 1, 0], np.int32)
    w = rng.uniform(0.5, 2.0, 5).astype(np.float32)
    dense, sparse = losses.CategoricalCrossentropy(), losses.SparseCategoricalCrossentropy()
    g_dense, g_sparse = put(np.empty_like(p)), put(np.empty_like(p))
    v_dense = dense.value_and_grad(put(p), put(np.eye(3, dtype=np.float32)[labels]), put(w),
                                   0.2, g_dense, "outputs")
    v_sparse = sparse.value_and_grad(put(p), put(labels), put(w), 0.2, g_sparse, "outputs")
    np.testing.assert_allclose(float(v_sparse), float(v_dense), rtol=1e-6)
    np.testing.assert_allclose(get(g_sparse), get(g_dense), rtol=1e-6, atol=1e-7)

    def value(pp):
        return float(sparse.value_and_grad(put(pp, np.float32), put(labels), put(w), 1.0,
                                           None, "outputs")) / 5

    np.testing.assert_allclose(get(g_sparse), _fd(value, p, 1e-3), rtol=5e-3, atol=1e-4)


def test_get_names_aliases_and_errors():
    assert isinstance(losses.get("mse"), losses.MeanSquaredError)
    assert isinstance(losses.get("mae"), losses.MeanAbsoluteError)
    assert isinstance(losses.get("bce"), losses.BinaryCrossentropy)
    assert isinstance(losses.get(losses.categorical_crossentropy),
                      losses.CategoricalCrossentropy)
    assert losses.get("sparse_categorical_crossentropy").name == \
        "sparse_categorical_crossentropy"
    with pytest.raises(ValueError, match="Unknown loss 'msee'.*mean_squared_error"):
        losses.get("msee")


def test_sparse_targets_validation():
    loss = losses.SparseCategoricalCrossentropy()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\).*got label 10"):
        loss.prepare_targets(np.array([1, 10]), (None, 10))
    with pytest.raises(ValueError, match="must be integers"):
        loss.prepare_targets(np.array([1.5, 2.0]), (None, 10))
    with pytest.raises(ValueError, match="one-hot.*categorical_crossentropy"):
        loss.prepare_targets(np.eye(10)[[1, 2]], (None, 10))
    assert loss.prepare_targets(np.array([[3], [4]]), (None, 10)).tolist() == [3, 4]
    cce = losses.CategoricalCrossentropy()
    with pytest.raises(ValueError, match=r"shape \(n, 10\).*\(2, 9\)"):
        cce.prepare_targets(np.zeros((2, 9)), (None, 10))
    with pytest.raises(ValueError, match="NaN"):
        cce.prepare_targets(np.full((2, 10), np.nan), (None, 10))


def test_accuracy_resolution_follows_keras_rule():
    assert isinstance(metrics.get("accuracy", (5,), (None, 10)),
                      metrics.SparseCategoricalAccuracy)
    assert isinstance(metrics.get("acc", (5, 1), (None, 10)), metrics.SparseCategoricalAccuracy)
    assert isinstance(metrics.get("accuracy", (5, 10), (None, 10)), metrics.CategoricalAccuracy)
    assert isinstance(metrics.get("accuracy", (5, 1), (None, 1)), metrics.BinaryAccuracy)
    assert isinstance(metrics.get("accuracy", (5,), (None, 1)), metrics.BinaryAccuracy)
    assert metrics.get("acc", (5,), (None, 10)).name == "acc"
    with pytest.raises(ValueError, match="Unknown metric"):
        metrics.get("accuracyy")


def test_metrics_are_running_means():
    m = metrics.SparseCategoricalAccuracy()
    m.update_state(np.array([0, 1]), np.array([[0.9, 0.1], [0.8, 0.2]]))
    m.update_state(np.array([1]), np.array([[0.1, 0.9]]))
    assert m.result() == pytest.approx(2 / 3)
    b = metrics.BinaryAccuracy()
    b.update_state(np.array([[1], [0], [1]]), np.array([[0.7], [0.6], [0.2]]))
    assert b.result() == pytest.approx(1 / 3)
    mse = metrics.get("mse")
    mse.update_state(np.array([[1.0, 2.0]]), np.array([[0.0, 0.0]]))
    assert mse.result() == pytest.approx(2.5)
    m.reset_state()
    assert m.result() == 0.0
