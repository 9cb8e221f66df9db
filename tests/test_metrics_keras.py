"""Keras 3's metric classes that fastnn/metrics.py added for issue 19 (item 2): results equal
Keras's (on the torch backend) over several update_state calls, with and without
sample_weight and with each non-default argument; their state adds up (one update with every
batch's rows equals one update per batch: the fused path and MPI data parallelism rely on it);
configs load both ways; string names in compile; History keys and evaluate values equal
Keras's; .keras files with these metrics load both ways."""
import os

import numpy as np
import pytest

import fastnn
from fastnn import metrics as M

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

ROWS, BATCHES = 12, 3


def _data(kind, rng):
    """(y_true, y_pred) of one batch for a kind of metric input."""
    n = ROWS
    if kind == "binary":            # multi-label 0/1 targets and probabilities
        return rng.integers(0, 2, (n, 3)).astype(np.float32), \
            rng.random((n, 3)).astype(np.float32)
    if kind == "logits":
        return rng.integers(0, 2, (n, 3)).astype(np.float32), \
            rng.standard_normal((n, 3)).astype(np.float32) * 3
    if kind == "onehot":
        p = rng.random((n, 5)).astype(np.float32) + 0.05
        return np.eye(5, dtype=np.float32)[rng.integers(0, 5, n)], p / p.sum(-1, keepdims=True)
    if kind == "onehot_logits":
        return np.eye(5, dtype=np.float32)[rng.integers(0, 5, n)], \
            rng.standard_normal((n, 5)).astype(np.float32) * 2
    if kind == "sparse":
        p = rng.random((n, 5)).astype(np.float32) + 0.05
        return rng.integers(0, 5, n), p / p.sum(-1, keepdims=True)
    if kind == "sparse_seg":        # a label per pixel
        p = rng.random((n, 4, 5)).astype(np.float32) + 0.05
        return rng.integers(0, 5, (n, 4)), p / p.sum(-1, keepdims=True)
    if kind == "sparse_logits":
        return rng.integers(0, 5, n), rng.standard_normal((n, 5)).astype(np.float32)
    if kind == "regression":        # positive values (poisson, msle, ...)
        return rng.random((n, 4)).astype(np.float32) * 3 + 0.1, \
            rng.random((n, 4)).astype(np.float32) * 3 + 0.1
    if kind == "signed":
        return rng.standard_normal((n, 4)).astype(np.float32), \
            rng.standard_normal((n, 4)).astype(np.float32)
    if kind == "equal":             # integer values that sometimes agree
        return rng.integers(0, 3, (n, 2)).astype(np.float32), \
            rng.integers(0, 3, (n, 2)).astype(np.float32)
    if kind == "labels":            # class ids, sparse
        return rng.integers(0, 4, n), rng.integers(0, 4, n)
    if kind == "labels_onehot":     # one-hot targets, scores
        return np.eye(4, dtype=np.float32)[rng.integers(0, 4, n)], \
            rng.random((n, 4)).astype(np.float32)
    if kind == "onehot_sparse_pred":
        return np.eye(4, dtype=np.float32)[rng.integers(0, 4, n)], rng.integers(0, 4, n)
    raise AssertionError(kind)


# (class name, constructor arguments, input kind)
CASES = [
    ("Accuracy", {}, "equal"),
    ("BinaryCrossentropy", {}, "binary"),
    ("BinaryCrossentropy", {"label_smoothing": 0.2}, "binary"),
    ("BinaryCrossentropy", {"from_logits": True}, "logits"),
    ("CategoricalCrossentropy", {}, "onehot"),
    ("CategoricalCrossentropy", {"label_smoothing": 0.1}, "onehot"),
    ("CategoricalCrossentropy", {"from_logits": True}, "onehot_logits"),
    ("CategoricalCrossentropy", {"axis": 0}, "onehot"),
    ("SparseCategoricalCrossentropy", {}, "sparse"),
    ("SparseCategoricalCrossentropy", {"from_logits": True}, "sparse_logits"),
    ("SparseCategoricalCrossentropy", {"ignore_class": 1}, "sparse"),
    ("SparseCategoricalCrossentropy", {"ignore_class": 3}, "sparse_seg"),
    ("KLDivergence", {}, "onehot"),
    ("Poisson", {}, "regression"),
    ("Hinge", {}, "binary"),
    ("Hinge", {}, "signed"),
    ("SquaredHinge", {}, "binary"),
    ("CategoricalHinge", {}, "onehot"),
    ("LogCoshError", {}, "signed"),
    ("MeanAbsolutePercentageError", {}, "regression"),
    ("MeanSquaredLogarithmicError", {}, "regression"),
    ("CosineSimilarity", {}, "signed"),
    ("CosineSimilarity", {"axis": 0}, "signed"),
    ("PearsonCorrelation", {}, "signed"),
    ("PearsonCorrelation", {"axis": 0}, "signed"),
    ("ConcordanceCorrelation", {}, "signed"),
    ("ConcordanceCorrelation", {"axis": 0}, "signed"),
    ("TruePositives", {}, "binary"),
    ("FalsePositives", {"thresholds": 0.3}, "binary"),
    ("TrueNegatives", {"thresholds": [0.2, 0.5, 0.8]}, "binary"),
    ("FalseNegatives", {"thresholds": [0.7]}, "binary"),
    ("PrecisionAtRecall", {"recall": 0.6}, "binary"),
    ("PrecisionAtRecall", {"recall": 0.4, "num_thresholds": 7, "class_id": 1}, "binary"),
    ("RecallAtPrecision", {"precision": 0.5}, "binary"),
    ("RecallAtPrecision", {"precision": 0.7, "num_thresholds": 1, "class_id": 2}, "binary"),
    ("SensitivityAtSpecificity", {"specificity": 0.5}, "binary"),
    ("SensitivityAtSpecificity", {"specificity": 0.8, "num_thresholds": 13, "class_id": 0},
     "binary"),
    ("SpecificityAtSensitivity", {"sensitivity": 0.5}, "binary"),
    ("SpecificityAtSensitivity", {"sensitivity": 0.3, "num_thresholds": 9, "class_id": 2},
     "binary"),
    ("IoU", {"num_classes": 4, "target_class_ids": [0, 2]}, "labels"),
    ("IoU", {"num_classes": 4, "target_class_ids": [1, 3], "ignore_class": 0}, "labels"),
    ("IoU", {"num_classes": 4, "target_class_ids": [0, 1], "sparse_y_true": False,
             "sparse_y_pred": False}, "labels_onehot"),
    ("BinaryIoU", {}, "binary"),
    ("BinaryIoU", {"target_class_ids": [1], "threshold": 0.3}, "binary"),
    ("MeanIoU", {"num_classes": 4}, "labels"),
    ("MeanIoU", {"num_classes": 4, "ignore_class": 2}, "labels"),
    ("OneHotIoU", {"num_classes": 4, "target_class_ids": [0, 3]}, "labels_onehot"),
    ("OneHotIoU", {"num_classes": 4, "target_class_ids": [2], "sparse_y_pred": True},
     "onehot_sparse_pred"),
    ("OneHotMeanIoU", {"num_classes": 4}, "labels_onehot"),
    ("OneHotMeanIoU", {"num_classes": 4, "ignore_class": 1, "sparse_y_pred": True},
     "onehot_sparse_pred"),
]
IOU = ("IoU", "BinaryIoU", "MeanIoU", "OneHotIoU", "OneHotMeanIoU")


def _result(value):
    return np.asarray(keras.ops.convert_to_numpy(value), np.float64)


def _batches(kind, weighted, integer_weights, seed=0, elementwise=False):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(BATCHES):
        y_true, y_pred = _data(kind, rng)
        w = None
        if weighted:    # Keras's IoU counts in int32: integer weights give equal counts
            shape = _data(kind, rng)[0].shape if elementwise else (ROWS,)
            w = rng.integers(0, 4, shape).astype(np.float32) if integer_weights else \
                rng.random(shape).astype(np.float32) * 2
        out.append((y_true, y_pred, w))
    return out


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("name,kwargs,kind", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_equals_keras_over_batches(name, kwargs, kind, weighted):
    if weighted and kwargs.get("axis") == 0:
        pytest.skip("axis=0 gives a value per column: weights per row do not apply (Keras "
                    "raises too)")
    # BinaryIoU, and ignore_class with a label per pixel: Keras takes only weights of
    # y_true's shape (fastnn also one per row)
    batches = _batches(kind, weighted, name in IOU,
                       elementwise=name == "BinaryIoU" or kind == "sparse_seg")
    ours, theirs = getattr(M, name)(**kwargs), getattr(keras.metrics, name)(**kwargs)
    for y_true, y_pred, w in batches:
        ours.update_state(y_true, y_pred, sample_weight=w)
        theirs.update_state(y_true, y_pred, sample_weight=w)
        np.testing.assert_allclose(ours.result(), _result(theirs.result()), rtol=2e-5,
                                   atol=2e-5)
    # state adds up: one update with every batch's rows equals the updates per batch (axis=0
    # metrics reduce over rows, so their values depend on how the rows are split)
    if kwargs.get("axis") != 0:
        whole = getattr(M, name)(**kwargs)
        cat = [np.concatenate([b[i] for b in batches]) for i in (0, 1)]
        whole.update_state(*cat, sample_weight=None if not weighted else
                           np.concatenate([b[2] for b in batches]))
        np.testing.assert_allclose(whole.result(), ours.result(), rtol=1e-9, atol=1e-9)
    ours.reset_state()
    theirs.reset_state()
    y_true, y_pred, w = batches[0]
    ours.update_state(y_true, y_pred, sample_weight=w)
    theirs.update_state(y_true, y_pred, sample_weight=w)
    np.testing.assert_allclose(ours.result(), _result(theirs.result()), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("weighted", [False, True])
def test_sum_equals_keras(weighted):
    rng = np.random.default_rng(1)
    ours, theirs = M.Sum(), keras.metrics.Sum()
    for shape in [(5,), (4, 3), (6, 2)]:
        values = rng.standard_normal(shape).astype(np.float32)
        w = rng.random(shape[0]).astype(np.float32) if weighted else None
        ours.update_state(values, sample_weight=w)
        theirs.update_state(values, sample_weight=w)
        np.testing.assert_allclose(ours.result(), _result(theirs.result()), rtol=1e-5)
    assert vars(ours).keys() >= {"total"}
    ours.reset_state()
    assert ours.result() == 0.0


@pytest.mark.parametrize("name,kwargs,kind", CASES + [("Sum", {}, None)],
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES + [("Sum",)])])
def test_config_round_trip_both_ways(name, kwargs, kind):
    ours = getattr(M, name)(name="m", **kwargs)
    theirs = getattr(keras.metrics, name)(name="m", **kwargs)
    mine = ours.get_config()
    # Keras's config loads in fastnn, and fastnn's in Keras, to the same config
    again = M.deserialize({"module": "keras.metrics", "class_name": name,
                           "config": theirs.get_config()})
    if name == "CosineSimilarity":      # Keras leaves its axis out of its config
        again.axis = again._arguments["axis"] = mine["axis"]
    assert type(again) is type(ours) and again.get_config() == mine
    loaded = keras.metrics.deserialize(M.serialize(ours))
    assert type(loaded).__name__ == name
    expected = theirs.get_config()
    if name == "CosineSimilarity":      # Keras leaves its axis out of its config
        expected["axis"] = kwargs.get("axis", -1)
    got = {**loaded.get_config(), **({"axis": mine["axis"]} if name == "CosineSimilarity"
                                     else {})}
    assert got == expected
    assert mine.keys() == expected.keys()
    assert type(M.Metric.from_config.__func__(type(ours), mine)) is type(ours)


def test_default_names_and_directions_are_keras():
    for name, kwargs, _ in CASES + [("Sum", {}, None)]:
        ours, theirs = getattr(M, name)(**kwargs), getattr(keras.metrics, name)(**kwargs)
        assert ours.name == theirs.name.split("_1")[0].rstrip("_0123456789") or \
            ours.name == theirs.name, name
        assert ours.direction == getattr(theirs, "_direction", "up"), name


def test_bad_arguments_raise_clearly():
    with pytest.raises(ValueError, match="recall"):
        M.PrecisionAtRecall(1.5)
    with pytest.raises(ValueError, match="num_thresholds"):
        M.SensitivityAtSpecificity(0.5, num_thresholds=0)
    with pytest.raises(ValueError, match="Threshold"):
        M.TruePositives(thresholds=[0.5, 2.0])
    with pytest.raises(ValueError, match="out of range"):
        M.IoU(3, [0, 3])
    with pytest.raises(ValueError, match="label_smoothing"):
        M.BinaryCrossentropy(label_smoothing=2)
    with pytest.raises(ValueError, match="axis"):
        M.CosineSimilarity(axis=1.5)
    with pytest.raises(ValueError, match="dtype"):
        M.KLDivergence(dtype="float16")
    with pytest.raises(TypeError):
        M.KLDivergence(axis=0)          # Keras's KLDivergence takes no axis
    with pytest.raises(ValueError, match="class ids"):
        M.MeanIoU(3).update_state([0, 5], [0, 1])
    with pytest.raises((TypeError, ValueError), match=r"metric\.config"):
        M.deserialize({"class_name": "PrecisionAtRecall", "config": {"recall": "high"}})
    with pytest.raises(ValueError, match="missing key"):
        M.deserialize({"class_name": "IoU", "config": {"num_classes": 3}})


NAMES = ["binary_crossentropy", "bce", "kl_divergence", "poisson", "hinge", "squared_hinge",
         "categorical_hinge", "log_cosh_error", "mape", "msle",
         "mean_absolute_percentage_error", "mean_squared_logarithmic_error",
         "cosine_similarity", "pearson_correlation", "concordance_correlation",
         "true_positives", "false_positives", "true_negatives", "false_negatives",
         "binary_io_u", "categorical_crossentropy"]


def test_names_resolve_as_keras_compile_resolves_them():
    from keras.src.trainers.compile_utils import get_metric
    yt, yp = np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32)
    for name in NAMES + ["sparse_categorical_crossentropy", "Sum", "BCE", "MSLE"]:
        ours, theirs = M.get(name, yt.shape, yp.shape), get_metric(name, yt, yp)
        assert type(ours).__name__ == type(theirs).__name__, name
        assert ours.name == theirs.name == name
    spec = {"class_name": "BinaryCrossentropy", "config": {"from_logits": True}}
    assert M.get(spec).from_logits and keras.metrics.get(spec).from_logits
    for name in ("io_u", "mean_io_u", "precision_at_recall"):   # need arguments, as in Keras
        with pytest.raises(TypeError):
            M.get(name)
        with pytest.raises(TypeError):
            get_metric(name, yt, yp)


def _models():
    fastnn.utils.set_random_seed(4)
    ours = fastnn.models.Sequential([fastnn.layers.Input((5,)),
                                     fastnn.layers.Dense(8, activation="relu"),
                                     fastnn.layers.Dense(3, activation="sigmoid")])
    theirs = keras.models.Sequential([keras.layers.Input((5,)),
                                      keras.layers.Dense(8, activation="relu"),
                                      keras.layers.Dense(3, activation="sigmoid")])
    theirs.set_weights(ours.get_weights())
    return ours, theirs


def _objects(mod):
    # named: Keras numbers the default names of the objects it made before (true_positives_3)
    return [mod.metrics.PrecisionAtRecall(0.5, name="p_at_r"),
            mod.metrics.BinaryIoU(threshold=0.4, name="biou"),
            mod.metrics.TruePositives(thresholds=0.6, name="tp"),
            mod.metrics.SpecificityAtSensitivity(0.5, num_thresholds=50, name="s_at_s")]


def test_compiled_metrics_fit_history_and_evaluate_equal_keras():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 5)).astype(np.float32)
    y = rng.integers(0, 2, (64, 3)).astype(np.float32)
    ours, theirs = _models()
    ours.compile(fastnn.optimizers.SGD(0.05), "binary_crossentropy",
                 metrics=NAMES + _objects(fastnn))
    theirs.compile(keras.optimizers.SGD(0.05), "binary_crossentropy",
                   metrics=NAMES + _objects(keras))
    # evaluate with equal weights: every metric's value equals Keras's
    got = ours.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    want = theirs.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], _result(want[key]), rtol=1e-4, atol=1e-4,
                                   err_msg=key)
    h_ours = ours.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False,
                      validation_split=0.25)
    h_theirs = theirs.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False,
                          validation_split=0.25)
    assert list(h_ours.history) == list(h_theirs.history)
    # Keras on torch: a confusion count's training value in History is a view of its
    # accumulator, which the validation pass then overwrites (their logs show the validation
    # counts); evaluate above compares those counts
    aliased = ("true_positives", "false_positives", "true_negatives", "false_negatives", "tp")
    for key in h_theirs.history:
        if key in aliased:
            continue
        np.testing.assert_allclose(np.asarray(h_ours.history[key], np.float64),
                                   np.asarray(h_theirs.history[key], np.float64),
                                   rtol=2e-3, atol=2e-3, err_msg=key)


def test_keras_files_with_these_metrics_load_both_ways(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 5)).astype(np.float32)
    y = rng.integers(0, 2, (32, 3)).astype(np.float32)
    ours, theirs = _models()
    metrics = ["kl_divergence", "hinge", "true_positives"]
    ours.compile("sgd", "binary_crossentropy", metrics=metrics + _objects(fastnn))
    theirs.compile("sgd", "binary_crossentropy", metrics=metrics + _objects(keras))
    ours.save(tmp_path / "ours.keras")
    theirs.save(tmp_path / "theirs.keras")
    from_ours = keras.models.load_model(tmp_path / "ours.keras")
    from_theirs = fastnn.models.load_model(tmp_path / "theirs.keras")
    want = theirs.evaluate(x, y, verbose=0, return_dict=True)
    for model in (from_ours, from_theirs):
        got = model.evaluate(x, y, verbose=0, return_dict=True)
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_allclose(_result(got[key]), _result(want[key]), rtol=1e-4,
                                       atol=1e-4, err_msg=key)


def test_weights_per_row_spread_over_a_rows_values():
    """A weight per row for per-pixel values (Keras needs one per pixel) equals that weight
    given for each of the row's pixels; labels of shape (n, 1) are labels."""
    rng = np.random.default_rng(5)
    ours, theirs = M.SparseCategoricalCrossentropy(ignore_class=2), \
        keras.metrics.SparseCategoricalCrossentropy(ignore_class=2)
    for _ in range(3):
        y_true, y_pred = _data("sparse_seg", rng)
        w = rng.random(ROWS).astype(np.float32)
        ours.update_state(y_true, y_pred, sample_weight=w)
        theirs.update_state(y_true, y_pred, sample_weight=np.repeat(w[:, None], 4, axis=1))
    np.testing.assert_allclose(ours.result(), _result(theirs.result()), rtol=2e-5)
    ours, theirs = M.SparseCategoricalCrossentropy(), keras.metrics.SparseCategoricalCrossentropy()
    y_true, y_pred = _data("sparse", rng)
    ours.update_state(y_true[:, None], y_pred)
    theirs.update_state(y_true[:, None], y_pred)
    np.testing.assert_allclose(ours.result(), _result(theirs.result()), rtol=2e-5)
    with pytest.raises(ValueError, match="sample_weight"):
        M.KLDivergence().update_state(y_pred, y_pred, sample_weight=np.ones((ROWS, 5, 2)))


@pytest.mark.parametrize("name,kwargs,kind", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_state_sums_over_ranks(name, kwargs, kind):
    """What DataParallel does at epoch end: each rank's accumulators (the attributes
    reset_state sets) summed give the result of one metric over every rank's rows."""
    if kwargs.get("axis") == 0:
        pytest.skip("axis=0: a value per column of each batch")
    from fastnn.distribution import _accumulators, _sum
    batches = _batches(kind, True, name in IOU,
                       elementwise=name == "BinaryIoU" or kind == "sparse_seg")
    ranks = [getattr(M, name)(**kwargs) for _ in batches]
    whole = getattr(M, name)(**kwargs)
    for metric, (y_true, y_pred, w) in zip(ranks, batches):
        metric.update_state(y_true, y_pred, sample_weight=w)
        whole.update_state(y_true, y_pred, sample_weight=w)
    states = [_accumulators(m) for m in ranks]
    assert states[0].keys() and all(v is not None for v in states[0].values())
    for key in states[0]:
        setattr(ranks[0], key, _sum([s[key] for s in states]))
    np.testing.assert_allclose(ranks[0].result(), whole.result(), rtol=1e-9, atol=1e-12)
