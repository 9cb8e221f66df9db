"""AUC (ROC and PR) against Keras 3's AUC exactly and against scikit-learn's exact
roc_auc_score / average_precision_score within Keras's interpolation error: Keras counts
predictions in num_thresholds - 1 buckets, so pairs whose scores share a bucket are tied (ROC:
at most the share of such pairs, about 1 / (num_thresholds - 1) for spread scores), and its PR
area interpolates between thresholds where average precision steps."""
import os

import numpy as np
import pytest

import fastnn


def _scores(seed, n=2000, weighted=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.0, 1.0).astype(np.float32)
    w = rng.random(n).astype(np.float32) if weighted else None
    return y, p, w


def _auc(curve, num_thresholds, y, p, w, batches=4):
    metric = fastnn.metrics.AUC(num_thresholds=num_thresholds, curve=curve)
    for part in np.array_split(np.arange(len(y)), batches):     # state adds up over batches
        metric.update_state(y[part], p[part], sample_weight=None if w is None else w[part])
    return float(metric.result())


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("num_thresholds", [50, 200, 1000])
@pytest.mark.parametrize("curve", ["ROC", "PR"])
def test_auc_within_interpolation_error_of_sklearn(curve, num_thresholds, weighted):
    metrics = pytest.importorskip("sklearn.metrics")
    exact = metrics.roc_auc_score if curve == "ROC" else metrics.average_precision_score
    tol = 1.0 / (num_thresholds - 1) + (0.0 if curve == "ROC" else 2e-3)
    for seed in range(5):
        y, p, w = _scores(seed, weighted=weighted)
        want = exact(y, p, sample_weight=w)
        got = _auc(curve, num_thresholds, y, p, w)
        assert abs(got - want) <= tol, (seed, got, want, tol)
    # a perfect ranking whose classes never share a bucket is exact
    y = np.repeat([0, 1], 50)
    p = np.concatenate([np.linspace(0.0, 0.4, 50), np.linspace(0.6, 1.0, 50)]).astype(np.float32)
    assert _auc(curve, num_thresholds, y, p, None) == pytest.approx(exact(y, p), abs=1e-6)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("num_thresholds", [50, 200, 1000])
@pytest.mark.parametrize("curve", ["ROC", "PR"])
def test_auc_equals_keras(curve, num_thresholds, weighted):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    y, p, w = _scores(7, n=500, weighted=weighted)
    theirs = keras.metrics.AUC(num_thresholds=num_thresholds, curve=curve)
    for part in np.array_split(np.arange(len(y)), 4):
        theirs.update_state(y[part], p[part], sample_weight=None if w is None else w[part])
    want = float(keras.ops.convert_to_numpy(theirs.result()))
    assert _auc(curve, num_thresholds, y, p, w) == pytest.approx(want, rel=1e-5, abs=1e-6)
