"""Stateful metrics (Precision, Recall, AUC, top-k accuracies, RootMeanSquaredError, F1/FBeta,
R2Score, MeanIoU, a function as a metric): results after several batches against Keras 3 and
against NumPy formulas, and in fit/evaluate with Keras's History keys and values."""
import re

import numpy as np
import pytest

import fastnn
from fastnn import layers as L
from fastnn import metrics as FM

N, C = 64, 4


def _data(seed=0):
    rng = np.random.default_rng(seed)
    yb = (rng.random((N, C)) > 0.6).astype(np.float32)
    p = rng.random((N, C)).astype(np.float32)       # no ties (top-k order is then unique)
    onehot = np.eye(C, dtype=np.float32)[rng.integers(0, C, N)]
    yr = rng.standard_normal((N, 3)).astype(np.float32)
    pr = (yr + 0.5 * rng.standard_normal((N, 3))).astype(np.float32)
    w = rng.uniform(0.2, 2, N).astype(np.float32)
    return dict(yb=yb, p=p, onehot=onehot, labels=onehot.argmax(1), yr=yr, pr=pr,
                logits=(p - 0.5) * 6, ids=p.argmax(1), w=w)


CASES = [
    ("Precision", {}, "yb", "p"), ("Precision", {"thresholds": 0.3, "class_id": 2}, "yb", "p"),
    ("Precision", {"top_k": 2}, "yb", "p"), ("Recall", {}, "yb", "p"),
    ("Recall", {"thresholds": [0.2, 0.7]}, "yb", "p"), ("AUC", {}, "yb", "p"),
    ("AUC", {"curve": "PR"}, "yb", "p"),
    ("AUC", {"curve": "PR", "summation_method": "minoring", "num_thresholds": 50}, "yb", "p"),
    ("AUC", {"curve": "ROC", "summation_method": "majoring"}, "yb", "p"),
    ("AUC", {"multi_label": True, "num_labels": 4}, "yb", "p"),
    ("AUC", {"multi_label": True, "label_weights": [1, 2, 0.5, 1]}, "yb", "p"),
    ("AUC", {"curve": "PRGAIN"}, "yb", "p"),
    ("AUC", {"from_logits": True, "thresholds": [0.1, 0.5, 0.9]}, "yb", "logits"),
    ("TopKCategoricalAccuracy", {"k": 2}, "onehot", "p"),
    ("SparseTopKCategoricalAccuracy", {"k": 2}, "labels", "p"),
    ("RootMeanSquaredError", {}, "yr", "pr"), ("F1Score", {}, "onehot", "p"),
    ("F1Score", {"average": "macro", "threshold": 0.4}, "onehot", "p"),
    ("F1Score", {"average": "weighted"}, "onehot", "p"),
    ("F1Score", {"average": "micro"}, "onehot", "p"),
    ("FBetaScore", {"beta": 2.0, "average": "macro"}, "onehot", "p"),
    ("R2Score", {}, "yr", "pr"),
    ("R2Score", {"class_aggregation": "variance_weighted_average", "num_regressors": 2},
     "yr", "pr"),
    ("R2Score", {"class_aggregation": None}, "yr", "pr"),
    ("MeanIoU", {"num_classes": 4}, "labels", "ids"),
    ("MeanIoU", {"num_classes": 4, "sparse_y_pred": False, "ignore_class": 1}, "labels", "p"),
]
IDS = [f"{name}{kwargs or ''}" for name, kwargs, _, _ in CASES]


@pytest.mark.parametrize("name, kwargs, yk, pk", CASES, ids=IDS)
def test_results_and_configs_equal_keras(name, kwargs, yk, pk):
    keras = pytest.importorskip("keras")
    d = _data()
    y, p = d[yk], d[pk]
    # Keras 3.15 keeps MeanIoU's confusion matrix in int32, truncating fractional sample
    # weights; fastnn adds them as given (compared with NumPy below)
    weights = (None,) if name == "MeanIoU" else (None, d["w"])
    for w in weights:
        theirs, ours = getattr(keras.metrics, name)(**kwargs), getattr(FM, name)(**kwargs)
        for part in (slice(0, 20), slice(20, N)):
            sw = None if w is None else w[part]
            theirs.update_state(y[part], p[part], sample_weight=sw)
            ours.update_state(y[part], p[part], sample_weight=sw)
        np.testing.assert_allclose(np.asarray(ours.result()),
                                   keras.ops.convert_to_numpy(theirs.result()),
                                   rtol=1e-5, atol=1e-6)
        ours.reset_state()
        assert np.all(np.asarray(ours.result()) == 0)
    mine, keras_config = ours.get_config(), theirs.get_config()
    for key in set(mine) | set(keras_config):
        if key not in ("name", "dtype", "label_weights"):     # Keras numbers its names
            assert mine.get(key) == keras_config.get(key), key


def _exact_roc_auc(y, p, w):
    """P(a positive scores above a negative), ties half: the area under the exact ROC."""
    y, p, w = y.reshape(-1), p.reshape(-1), np.broadcast_to(w[:, None], (N, C)).reshape(-1)
    pos, neg = y > 0, y == 0
    above = (p[pos][:, None] > p[neg][None, :]) + 0.5 * (p[pos][:, None] == p[neg][None, :])
    return (above * w[pos][:, None] * w[neg][None, :]).sum() / (w[pos].sum() * w[neg].sum())


def test_auc_approaches_the_exact_area():
    d = _data(1)
    auc = FM.AUC(num_thresholds=2000)
    auc.update_state(d["yb"], d["p"], sample_weight=d["w"])
    assert abs(auc.result() - _exact_roc_auc(d["yb"], d["p"], d["w"])) < 2e-3
    perfect = FM.AUC()
    perfect.update_state([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert perfect.result() == pytest.approx(1.0, abs=1e-6)


def test_precision_recall_and_iou_by_hand():
    d = _data(2)
    y, p, w = d["yb"], d["p"], d["w"]
    pred = p > 0.5
    ww = np.broadcast_to(w[:, None], y.shape)
    tp, fp, fn = ((pred & (y > 0)) * ww).sum(), ((pred & (y == 0)) * ww).sum(), \
        ((~pred & (y > 0)) * ww).sum()
    prec, rec = FM.Precision(), FM.Recall()
    for m in (prec, rec):
        m.update_state(y, p, sample_weight=w)
    assert prec.result() == pytest.approx(tp / (tp + fp), rel=1e-6)
    assert rec.result() == pytest.approx(tp / (tp + fn), rel=1e-6)
    iou = FM.MeanIoU(num_classes=C)
    iou.update_state(d["labels"], d["ids"], sample_weight=w)
    cm = np.zeros((C, C))
    np.add.at(cm, (d["labels"], d["ids"]), w)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    assert iou.result() == pytest.approx(np.mean(np.diag(cm) / union), rel=1e-6)
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 4\)"):
        iou.update_state([5], [0])


def test_argument_errors_are_keras_s():
    with pytest.raises(ValueError, match="Invalid `average` argument value"):
        FM.F1Score(average="mean")
    with pytest.raises(ValueError, match="`num_thresholds` must be an integer > 1"):
        FM.AUC(num_thresholds=1)
    with pytest.raises(ValueError, match="Invalid AUCCurve value"):
        FM.AUC(curve="XY")
    with pytest.raises(ValueError, match="Threshold values must be in"):
        FM.Precision(thresholds=1.5)
    with pytest.raises(ValueError, match="Invalid value for argument `class_aggregation`"):
        FM.R2Score(class_aggregation="sum")


def _model(K, layers, metrics):
    model = K.Sequential([K.Input(shape=(6,)), layers.Dense(8, activation="relu"),
                          layers.Dense(1, activation="sigmoid")])
    model.compile(K.optimizers.SGD(0.2), "binary_crossentropy", metrics=metrics)
    return model


def test_fit_reports_keras_s_keys_and_values():
    """Strings, instances and a function in metrics=: the History keys Keras reports (with
    validation), and the same values after two epochs from the same weights."""
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((96, 6)).astype(np.float32)
    y = ((x[:, 0] + 0.5 * x[:, 1]) > 0).astype(np.float32)

    def make(K):
        def mean_pred(y_true, y_pred):
            return K.ops.mean(y_pred, axis=-1)
        return ["precision", "recall", "auc", K.metrics.AUC(curve="PR", name="pr_auc"),
                K.metrics.RootMeanSquaredError(), mean_pred]

    theirs, ours = _model(keras, keras.layers, make(keras)), _model(fastnn, L, make(fastnn))
    ours.set_weights([np.asarray(v) for v in theirs.get_weights()])
    kw = dict(batch_size=16, epochs=2, shuffle=False, verbose=0, validation_split=0.25)
    h_theirs, h_ours = theirs.fit(x, y, **kw).history, ours.fit(x, y, **kw).history
    assert list(h_ours) == list(h_theirs)
    for key in h_theirs:
        np.testing.assert_allclose(h_ours[key], h_theirs[key], rtol=1e-4, atol=1e-6,
                                   err_msg=key)
    np.testing.assert_allclose(ours.evaluate(x, y, verbose=0),
                               theirs.evaluate(x, y, verbose=0), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fmt", [".keras", ".h5"])
def test_metric_objects_are_saved_with_their_arguments_both_ways(tmp_path, fmt):
    """compile(metrics=[name, Precision(thresholds=...), AUC(curve="PR")]): saved as Keras
    saves them; Keras's file reloads in fastnn with the same metrics and arguments."""
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((32, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    for writer in (fastnn, keras):
        model = _model(writer, writer.layers, [
            "recall", writer.metrics.Precision(thresholds=0.3, name="p30"),
            writer.metrics.AUC(curve="PR", num_thresholds=50)])
        model.fit(x, y, verbose=0)
        path = str(tmp_path / f"{writer.__name__}{fmt}")
        model.save(path)
        reader = keras if writer is fastnn else fastnn
        loaded = reader.models.load_model(path)
        logs = loaded.evaluate(x, y, verbose=0, return_dict=True)
        # (Keras numbers a name it made before in this process: recall_7)
        def plain(keys):
            return sorted(re.sub(r"_\d+$", "", k) for k in keys)
        assert plain(logs) == plain(model.evaluate(x, y, verbose=0, return_dict=True))
        if reader is fastnn:
            specs = loaded._metric_specs
            assert specs[0] == "recall"
            assert specs[1].name == "p30" and list(specs[1].thresholds) == [0.3]
            assert specs[2].curve == "PR" and specs[2].num_thresholds == 50
    bad = {"module": "keras.metrics", "class_name": "os.system", "config": {},
           "registered_name": None}
    with pytest.raises(ValueError, match="os.system"):
        FM.deserialize(bad)
