"""Keras 3's metrics, with Keras's names, arguments and configs; `accuracy` is resolved by
shapes exactly as keras/src/trainers/compile_utils.py does.

A metric's state is the attributes its reset_state() sets: sums and counts that add up over
batches (one update with many batches' rows equals one update per batch: the fused Dense path
relies on it) and over ranks (fastnn.distribution sums them at epoch end).

On a GPU the running total stays on the device (no sync per batch); result() reads it."""
import numpy as np

from . import losses, ops, registry
from ._config import check_kwargs, expect_str, fail_value, object_spec, prefixed
from .autodiff import value_of
from .backend import get_ops


def _together(*arrays):
    """The arrays as they are when all live where the backend computes, else all on the host
    (user code may pass lists or NumPy arrays)."""
    ops = get_ops()
    if all(isinstance(a, ops.xp.ndarray) for a in arrays):
        return arrays
    return tuple(np.asarray(ops.to_numpy(a) if isinstance(a, ops.xp.ndarray) else a)
                 for a in arrays)


class Metric:
    """The base class of metrics: a state updated batch by batch and a result.

    `update_state(y_true, y_pred, sample_weight=None)` adds a batch, `result()` reads the value,
    `reset_state()` starts again. A subclass of the running-mean kind defines
    `per_sample(y_true, y_pred)` returning one value per sample.

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).

    Example:

    ```python
    m = fastnn.metrics.MeanSquaredError()
    m.update_state([[1.0], [2.0]], [[1.0], [3.0]])
    m.result()   # 0.5
    ```
    """
    direction = "up"

    def __init__(self, name=None, dtype=None):
        if dtype not in (None, "float32", np.float32):
            raise ValueError(f"{type(self).__name__}: dtype={dtype!r}: fastnn's metrics "
                             "compute in float32 (and float64 sums)")
        self.name = name or self.default_name
        self.reset_state()

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def reset_state(self):
        """Forget every batch seen so far."""
        self.total = 0.0
        self.count = 0.0

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add a batch to the metric's state.

        Args:
            y_true: Targets.
            y_pred: Predictions.
            sample_weight: Per-sample weights, or `None` for 1 each.
        """
        if sample_weight is None:
            y_true, y_pred = _together(y_true, y_pred)
            values = self.per_sample(y_true, y_pred)
            self.total += values.astype(np.float64, copy=False).sum()
            self.count += values.shape[0]
        else:
            y_true, y_pred, w = _together(y_true, y_pred, sample_weight)
            values = self.per_sample(y_true, y_pred)
            w = w.astype(np.float64).reshape(-1)
            self.total += (values.astype(np.float64, copy=False) * w).sum()
            self.count += w.sum()

    def result(self):
        """The running mean as a float (on a GPU this waits for the device)."""
        return float(self.peek())

    def peek(self):
        """The running mean without waiting: a 0-d device array on a GPU, which float()
        reads later (the progress bar does, when it redraws)."""
        if isinstance(self.count, (int, float)) and not self.count:     # host count: no wait
            return 0.0
        return self.total / (self.count + (self.count == 0))   # a device count of 0 gives 0

    def snapshot(self):
        """The accumulated state, for restore() (a validation pass inside fit keeps the
        training metrics' state)."""
        return self.total, self.count

    def restore(self, state):
        self.total, self.count = state

    def get_config(self):
        return {"name": self.name}


class Mean(Metric):
    """Running mean of given values (the loss tracker).

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).

    Example:

    ```python
    m = fastnn.metrics.Mean()
    m.update_state([1.0, 2.0, 3.0])
    m.result()   # 2.0
    ```
    """
    default_name = "mean"
    direction = "down"

    def update_with_sum(self, total, count):
        self.total += total
        self.count += count

    def update_state(self, values, sample_weight=None):
        """Keras's Mean.update_state: add the values (any shape), weighted by sample_weight
        (broadcast to their shape) when given."""
        if sample_weight is None:
            (values,) = _host(values)
            values = np.asarray(values, np.float64)
            self.total += values.sum()
            self.count += values.size
            return
        values, w = _host(values, sample_weight)
        values = np.asarray(values, np.float64)
        w = np.broadcast_to(np.asarray(w, np.float64).reshape(
            np.shape(w) + (1,) * (values.ndim - np.ndim(w))), values.shape)
        self.total += (values * w).sum()
        self.count += w.sum()


class SparseCategoricalAccuracy(Metric):
    """The running mean of `argmax(y_pred) == y_true` (integer class labels) over the samples seen
    (weighted by `sample_weight` when given).

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name = "sparse_categorical_accuracy"

    def per_sample(self, y_true, y_pred):
        return (y_pred.reshape(-1, y_pred.shape[-1]).argmax(axis=-1)
                == y_true.reshape(-1)).astype(np.float64)


class CategoricalAccuracy(Metric):
    """The running mean of `argmax(y_pred) == argmax(y_true)` (one-hot targets) over the samples
    seen (weighted by `sample_weight` when given).

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name = "categorical_accuracy"

    def per_sample(self, y_true, y_pred):
        return (y_pred.reshape(-1, y_pred.shape[-1]).argmax(axis=-1)
                == y_true.reshape(-1, y_true.shape[-1]).argmax(axis=-1)).astype(np.float64)


class BinaryAccuracy(Metric):
    """The running mean of `(y_pred > threshold) == (y_true > 0.5)`, averaged over the last axis per
    sample.

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        threshold: Predictions above it count as 1. Defaults to `0.5`.
    """
    default_name = "binary_accuracy"

    def __init__(self, name=None, threshold=0.5):
        self.threshold = threshold
        super().__init__(name)

    def per_sample(self, y_true, y_pred):
        y_pred = y_pred.reshape(y_pred.shape[0], -1)
        y_true = y_true.reshape(y_pred.shape)
        return ((y_pred > self.threshold) == (y_true > 0.5)).mean(axis=-1)


class MeanSquaredError(Metric):
    """The running mean of the squared error `(y_true - y_pred) ** 2` (averaged over the last axis
    per sample) over the samples seen (weighted by `sample_weight` when given).

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name = "mean_squared_error"
    direction = "down"

    def per_sample(self, y_true, y_pred):
        y_pred = y_pred.reshape(y_pred.shape[0], -1)
        return ((y_pred - y_true.reshape(y_pred.shape)) ** 2).mean(axis=-1)


class MeanAbsoluteError(Metric):
    """The running mean of the absolute error `abs(y_true - y_pred)` (averaged over the last axis
    per sample) over the samples seen (weighted by `sample_weight` when given).

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name = "mean_absolute_error"
    direction = "down"

    def per_sample(self, y_true, y_pred):
        y_pred = y_pred.reshape(y_pred.shape[0], -1)
        return abs(y_pred - y_true.reshape(y_pred.shape)).mean(axis=-1)


# ---- stateful metrics over the whole epoch (Keras's keras/src/metrics), on the host --------
_EPS = 1e-7     # keras.backend.epsilon()


def _host(*arrays):
    """float64 host arrays (these metrics keep float64 state on the host)."""
    to_numpy = get_ops().to_numpy
    return tuple(None if a is None else np.asarray(to_numpy(a), np.float64) for a in arrays)


def _same_rank(y_true, y_pred):
    """Keras's squeeze_or_expand_to_same_rank for metric inputs."""
    if y_true.ndim == y_pred.ndim + 1 and y_true.shape[-1] == 1:
        y_true = y_true[..., 0]
    elif y_pred.ndim == y_true.ndim + 1 and y_pred.shape[-1] == 1:
        y_pred = y_pred[..., 0]
    return y_true, y_pred


def _divide_no_nan(a, b):
    b = np.asarray(b, np.float64)
    return np.where(b == 0, 0.0, np.asarray(a, np.float64) / np.where(b == 0, 1.0, b))


def _thresholds(value, default):
    values = [default] if value is None else \
        [value] if np.ndim(value) == 0 else list(value)
    for t in values:
        if not (isinstance(t, (int, float, np.floating, np.integer)) and
                not isinstance(t, bool) and (0 <= t <= 1 or t == default)):
            raise ValueError(f"Threshold values must be in [0, 1]. Received: {value}")
    return np.asarray(values, np.float64), np.ndim(value) == 0 or value is None


class _StateMetric(Metric):
    """A metric whose result is computed from accumulated state (not a mean per sample)."""

    def peek(self):
        return self.result()

    def snapshot(self):
        return {k: v.copy() if isinstance(v, np.ndarray) else v
                for k, v in vars(self).items()}

    def restore(self, state):
        vars(self).update(state)

    def get_config(self):
        return {"name": self.name, "dtype": "float32"}


class _Confusion(_StateMetric):
    """True/false positives/negatives above each threshold, accumulated over the batches as
    keras.metrics's update_confusion_matrix_variables counts them: y_true nonzero is a
    positive; y_pred > threshold a predicted positive; sample weights broadcast over y_pred."""
    multi_label = False

    def _counts(self, y_true, y_pred, sample_weight, thresholds, top_k=None, class_id=None):
        y_true, y_pred, w = _host(y_true, y_pred, sample_weight)
        y_pred, y_true = _same_rank(y_pred, y_true)
        if w is not None:
            w = np.broadcast_to(w.reshape(w.shape + (1,) * (y_pred.ndim - w.ndim)),
                                y_pred.shape)
        if top_k is not None:       # the others as -inf
            keep = np.zeros(y_pred.shape, bool)
            np.put_along_axis(keep, np.argsort(-y_pred, axis=-1, kind="stable")[..., :top_k],
                              True, axis=-1)
            y_pred = np.where(keep, y_pred, -np.inf)
        if class_id is not None:
            if y_pred.ndim == 1:
                raise ValueError("When class_id is provided, y_pred must be a 2D array with "
                                 "shape (num_samples, num_classes), found shape: "
                                 f"{y_pred.shape}")
            y_true, y_pred = y_true[..., class_id], y_pred[..., class_id]
            w = None if w is None else w[..., class_id]
        if self.multi_label:        # per label: the last axis
            labels = y_pred.shape[-1] if y_pred.ndim > 1 else 1
            y_true, y_pred = y_true.reshape(-1, labels), y_pred.reshape(-1, labels)
            w = None if w is None else w.reshape(-1, labels)
        else:
            y_true, y_pred = y_true.reshape(-1, 1), y_pred.reshape(-1, 1)
            w = None if w is None else w.reshape(-1, 1)
        w = np.ones(y_pred.shape) if w is None else w
        if self.label_weights is not None and not self.multi_label:
            w = w * np.broadcast_to(self.label_weights, y_pred.shape)
        positive = y_true != 0
        # above[t, l]: weight of the predictions above threshold t, per label (sorting the
        # thresholds once: each prediction counts for the thresholds below it)
        order = np.argsort(thresholds)
        rank = np.searchsorted(thresholds[order], y_pred, side="left")   # thresholds < pred
        counts = {}
        for key, mask in (("pos", positive), ("neg", ~positive)):
            per = np.zeros((len(thresholds) + 1, y_pred.shape[1]))
            np.add.at(per, (rank, np.broadcast_to(np.arange(y_pred.shape[1]), rank.shape)),
                      np.where(mask, w, 0.0))
            above_sorted = per[::-1].cumsum(axis=0)[::-1][1:]   # pred > thresholds[order[i]]
            above = np.empty_like(above_sorted)
            above[order] = above_sorted
            counts[key] = (above, per.sum(axis=0))
        (tp, pos), (fp, neg) = counts["pos"], counts["neg"]
        tp, fp = tp, fp
        fn, tn = pos - tp, neg - fp
        if not self.multi_label:
            tp, fp, fn, tn = tp[:, 0], fp[:, 0], fn[:, 0], tn[:, 0]
        return tp, fp, fn, tn


class Precision(_Confusion):
    """tp / (tp + fp) at `thresholds` (default 0.5; with top_k, the top k predictions per
    row count as positive), optionally of one class (class_id).

    Args:
        thresholds: A float threshold in [0, 1] or a list of them: a prediction above it counts as
            positive; `None`: 0.5.
        top_k: With it, the `top_k` highest predictions of each row count as positive (instead of
            thresholds). Defaults to `None`.
        class_id: Compute the metric for this class (a column of `y_pred`) only; `None`: over all.
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name = "precision"
    label_weights = None

    def __init__(self, thresholds=None, top_k=None, class_id=None, name=None, dtype=None):
        self.init_thresholds, self.top_k, self.class_id = thresholds, top_k, class_id
        self.thresholds, self._scalar = _thresholds(
            thresholds, 0.5 if top_k is None else -np.inf)
        super().__init__(name)

    def reset_state(self):
        n = len(self.thresholds)
        self.true_positives, self.false_positives = np.zeros(n), np.zeros(n)
        self.false_negatives = np.zeros(n)

    def update_state(self, y_true, y_pred, sample_weight=None):
        tp, fp, fn, _ = self._counts(y_true, y_pred, sample_weight, self.thresholds,
                                     self.top_k, self.class_id)
        self.true_positives += tp
        self.false_positives += fp
        self.false_negatives += fn

    def result(self):
        value = _divide_no_nan(self.true_positives, self.true_positives + self.false_positives)
        return float(value[0]) if self._scalar else value

    def get_config(self):
        return {**super().get_config(), "thresholds": self.init_thresholds,
                "top_k": self.top_k, "class_id": self.class_id}


class Recall(Precision):
    """tp / (tp + fn), with Precision's arguments.

    Args:
        thresholds: A float threshold in [0, 1] or a list of them: a prediction above it counts as
            positive; `None`: 0.5.
        top_k: With it, the `top_k` highest predictions of each row count as positive (instead of
            thresholds). Defaults to `None`.
        class_id: Compute the metric for this class (a column of `y_pred`) only; `None`: over all.
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name = "recall"

    def result(self):
        value = _divide_no_nan(self.true_positives, self.true_positives + self.false_negatives)
        return float(value[0]) if self._scalar else value


class AUC(_Confusion):
    """Area under the ROC or PR curve (or PRGAIN) from confusion counts at num_thresholds
    evenly spaced thresholds (or the given ones), summed by trapezoids ("interpolation"; for
    PR, Davis & Goadrich's interpolation), "minoring" or "majoring", as Keras computes it.

    Args:
        num_thresholds: Number of evenly spaced thresholds in [0, 1] the counts are taken at.
            Defaults to `200`.
        curve: `"ROC"`, `"PR"` (precision-recall) or `"PRGAIN"`. Defaults to `"ROC"`.
        summation_method: `"interpolation"`, `"minoring"` or `"majoring"`. Defaults to
            `"interpolation"`.
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
        thresholds: Explicit thresholds (instead of `num_thresholds` evenly spaced ones), or `None`.
        multi_label: Whether each column of `y_pred` is a separate label with its own curve (then
            averaged). Defaults to `False`.
        num_labels: Number of labels with `multi_label=True`, or `None` to infer it.
        label_weights: Weights of the labels in the average (with `multi_label`), or `None`.
        from_logits: Whether `y_pred` holds logits instead of probabilities. Defaults to `False`.
    """
    default_name = "auc"

    def __init__(self, num_thresholds=200, curve="ROC", summation_method="interpolation",
                 name=None, dtype=None, thresholds=None, multi_label=False, num_labels=None,
                 label_weights=None, from_logits=False):
        curve, summation_method = str(curve).upper(), str(summation_method).lower()
        if curve not in ("ROC", "PR", "PRGAIN"):
            raise ValueError(f'Invalid AUCCurve value: "{curve}". Expected values are '
                             '["PR", "ROC", "PRGAIN"]')
        if summation_method not in ("interpolation", "minoring", "majoring"):
            raise ValueError(f'Invalid AUC summation method value: "{summation_method}". '
                             'Expected values are ["interpolation", "majoring", "minoring"]')
        if thresholds is not None:
            inner = sorted(float(t) for t in thresholds)
            self.num_thresholds = len(inner) + 2
        else:
            if num_thresholds <= 1:
                raise ValueError("Argument `num_thresholds` must be an integer > 1. "
                                 f"Received: num_thresholds={num_thresholds}")
            self.num_thresholds = num_thresholds
            inner = [(i + 1) * 1.0 / (num_thresholds - 1) for i in range(num_thresholds - 2)]
        if not multi_label and num_labels:
            raise ValueError("`num_labels` is needed only when `multi_label` is True.")
        self._init_thresholds = None if thresholds is None else list(thresholds)
        self.thresholds = np.array([0.0 - _EPS] + inner + [1.0 + _EPS])
        self.curve, self.summation_method = curve, summation_method
        self.multi_label, self.num_labels = bool(multi_label), num_labels
        self.label_weights = None if label_weights is None else \
            np.asarray(label_weights, np.float64)
        self._from_logits = from_logits
        super().__init__(name)

    def reset_state(self):
        self.true_positives = self.false_positives = self.true_negatives = \
            self.false_negatives = None

    def update_state(self, y_true, y_pred, sample_weight=None):
        if self._from_logits:
            (y_pred,) = _host(y_pred)
            y_pred = 1.0 / (1.0 + np.exp(-y_pred))
        tp, fp, fn, tn = self._counts(y_true, y_pred, sample_weight, self.thresholds)
        if self.true_positives is None:
            self.true_positives, self.false_positives = tp, fp
            self.false_negatives, self.true_negatives = fn, tn
        else:
            if tp.shape != self.true_positives.shape:
                raise ValueError(f"{self.name}: the number of labels changed from "
                                 f"{self.true_positives.shape[1:]} to {tp.shape[1:]}")
            self.true_positives = self.true_positives + tp
            self.false_positives = self.false_positives + fp
            self.false_negatives = self.false_negatives + fn
            self.true_negatives = self.true_negatives + tn

    def _by_label(self, terms):
        if not self.multi_label:
            return float(terms.sum())
        by_label = terms.sum(axis=0)
        if self.label_weights is None:
            return float(by_label.mean())
        return float(_divide_no_nan((by_label * self.label_weights).sum(),
                                    self.label_weights.sum()))

    def result(self):
        tp, fp, fn, tn = self.true_positives, self.false_positives, self.false_negatives, \
            self.true_negatives
        if tp is None:
            return 0.0
        if self.curve == "PR" and self.summation_method == "interpolation":
            dtp = tp[:-1] - tp[1:]
            p = tp + fp
            dp = p[:-1] - p[1:]
            slope = _divide_no_nan(dtp, np.maximum(dp, 0))
            intercept = tp[1:] - slope * p[1:]
            ratio = np.where((p[:-1] > 0) & (p[1:] > 0),
                             _divide_no_nan(p[:-1], np.maximum(p[1:], 0)), 1.0)
            return self._by_label(_divide_no_nan(slope * (dtp + intercept * np.log(ratio)),
                                                 np.maximum(tp[1:] + fn[1:], 0)))
        recall = _divide_no_nan(tp, tp + fn)
        if self.curve == "ROC":
            x, y = _divide_no_nan(fp, fp + tn), recall
        elif self.curve == "PR":
            x, y = recall, _divide_no_nan(tp, tp + fp)
        else:
            scale = _divide_no_nan(tp + fn, tn + fp)
            x = np.maximum(np.where(tp == 0, 0.0, 1.0 - scale * _divide_no_nan(fn, tp)), 0.0)
            y = np.where(tp == 0, 1.0, 1.0 - scale * _divide_no_nan(fp, tp))
        heights = (y[:-1] + y[1:]) / 2.0 if self.summation_method == "interpolation" else \
            np.minimum(y[:-1], y[1:]) if self.summation_method == "minoring" else \
            np.maximum(y[:-1], y[1:])
        return self._by_label((x[:-1] - x[1:]) * heights)

    def get_config(self):
        return {**super().get_config(), "num_thresholds": self.num_thresholds,
                "curve": self.curve, "summation_method": self.summation_method,
                "multi_label": self.multi_label, "num_labels": self.num_labels,
                "label_weights": None if self.label_weights is None else
                self.label_weights.tolist(), "from_logits": self._from_logits,
                **({"thresholds": self.thresholds[1:-1].tolist()}
                   if self._init_thresholds is not None else {})}


class TopKCategoricalAccuracy(Metric):
    """Whether the true class (one-hot) is among the k highest predictions; ties at the k-th
    place count as in the top k, as in_top_k has it.

    Args:
        k: How many of the highest predictions count. Defaults to `5`.
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name = "top_k_categorical_accuracy"

    def __init__(self, k=5, name=None, dtype=None):
        self.k = int(k)
        super().__init__(name)

    def _true_class(self, y_true):
        return y_true.reshape(-1, y_true.shape[-1]).argmax(axis=-1)

    def per_sample(self, y_true, y_pred):
        y_pred = y_pred.reshape(-1, y_pred.shape[-1])
        truth = self._true_class(y_true).astype(np.int64)
        picked = np.take_along_axis(y_pred, truth[:, None], axis=-1)
        return ((y_pred > picked).sum(axis=-1) < self.k).astype(np.float64)

    def get_config(self):
        return {"name": self.name, "dtype": "float32", "k": self.k}


class SparseTopKCategoricalAccuracy(TopKCategoricalAccuracy):
    """TopKCategoricalAccuracy with integer labels (from_sorted_ids: y_pred holds the top
    class ids, best first).

    Args:
        k: How many of the highest predictions count. Defaults to `5`.
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
        from_sorted_ids: Whether `y_pred` holds the top class ids, best first, instead of scores.
            Defaults to `False`.
    """
    default_name = "sparse_top_k_categorical_accuracy"

    def __init__(self, k=5, name=None, dtype=None, from_sorted_ids=False):
        self.from_sorted_ids = bool(from_sorted_ids)
        super().__init__(k, name)

    def _true_class(self, y_true):
        return y_true.reshape(-1)

    def per_sample(self, y_true, y_pred):
        if self.from_sorted_ids:
            ids = y_pred.reshape(-1, y_pred.shape[-1])[:, :self.k]
            return (ids == y_true.reshape(-1, 1)).any(axis=-1).astype(np.float64)
        return super().per_sample(y_true, y_pred)

class RootMeanSquaredError(_StateMetric):
    """sqrt of the (sample-weighted) mean squared error over every element.

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name = "root_mean_squared_error"
    direction = "down"

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true, y_pred, w = _host(y_true, y_pred, sample_weight)
        y_true, y_pred = _same_rank(y_true.reshape(y_true.shape[0], -1)
                                    if y_true.ndim > 1 else y_true, y_pred)
        err = (y_pred - y_true.reshape(y_pred.shape)) ** 2
        w = np.ones(err.shape) if w is None else \
            np.broadcast_to(w.reshape(w.shape + (1,) * (err.ndim - w.ndim)), err.shape)
        self.total += float((err * w).sum())
        self.count += float(w.sum())

    def result(self):
        return float(np.sqrt(_divide_no_nan(self.total, self.count)))


class FBetaScore(_StateMetric):
    """F-beta per class from thresholded predictions (threshold None: each row's top
    prediction), averaged as `average` says (None: one score per class).

    Args:
        average: `None` (one score per class), `"micro"`, `"macro"` or `"weighted"`.
        beta: Weight of recall against precision (> 0). Defaults to `1.0`.
        threshold: Predictions above it are positive; `None`: each row's highest prediction.
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name = "fbeta_score"

    def __init__(self, average=None, beta=1.0, threshold=None, name=None, dtype=None):
        if average not in (None, "micro", "macro", "weighted"):
            raise ValueError("Invalid `average` argument value. Expected one of: {None, "
                             f"'micro', 'macro', 'weighted'}}. Received: average={average}")
        if not isinstance(beta, float):
            raise ValueError("Invalid `beta` argument value. It should be a Python float. "
                             f"Received: beta={beta} of type '{type(beta)}'")
        if beta <= 0.0:
            raise ValueError(f"Invalid `beta` argument value. It should be > 0. Received: "
                             f"beta={beta}")
        if threshold is not None:
            if not isinstance(threshold, float):
                raise ValueError("Invalid `threshold` argument value. It should be a Python "
                                 f"float. Received: threshold={threshold} of type "
                                 f"'{type(threshold)}'")
            if threshold > 1.0 or threshold <= 0.0:
                raise ValueError("Invalid `threshold` argument value. It should verify 0 < "
                                 f"threshold <= 1. Received: threshold={threshold}")
        self.average, self.beta, self.threshold = average, beta, threshold
        super().__init__(name)

    def reset_state(self):
        self.true_positives = self.false_positives = self.false_negatives = 0.0
        self.intermediate_weights = 0.0

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true, y_pred, w = _host(y_true, y_pred, sample_weight)
        if y_pred.ndim != 2 or y_true.shape != y_pred.shape:
            raise ValueError(f"{self.name}: y_true and y_pred must both have shape "
                             f"(batch, classes); got {y_true.shape} and {y_pred.shape}")
        if self.threshold is None:
            pred = (y_pred >= y_pred.max(axis=-1, keepdims=True)) & (np.abs(y_pred) > 1e-9)
        else:
            pred = y_pred > self.threshold
        pred = pred.astype(np.float64)
        axis = None if self.average == "micro" else 0
        w = 1.0 if w is None else w.reshape(-1, 1)
        self.true_positives = self.true_positives + (pred * y_true * w).sum(axis=axis)
        self.false_positives = self.false_positives + (pred * (1 - y_true) * w).sum(axis=axis)
        self.false_negatives = self.false_negatives + ((1 - pred) * y_true * w).sum(axis=axis)
        self.intermediate_weights = self.intermediate_weights + (y_true * w).sum(axis=axis)

    def result(self):
        tp, fp, fn = (np.asarray(v, np.float32) for v in
                      (self.true_positives, self.false_positives, self.false_negatives))
        eps, b2 = np.float32(_EPS), np.float32(self.beta ** 2)
        precision, recall = tp / (tp + fp + eps), tp / (tp + fn + eps)
        score = precision * recall / (b2 * precision + recall + eps) * (1 + b2)
        if self.average == "weighted":
            weights = np.asarray(self.intermediate_weights, np.float32)
            score = (score * weights / (weights.sum() + eps)).sum()
        elif self.average is not None:
            score = score.mean()
        return float(score) if np.ndim(score) == 0 else score

    def get_config(self):
        return {**super().get_config(), "average": self.average, "beta": self.beta,
                "threshold": self.threshold}


class F1Score(FBetaScore):
    """The F1 score per class (`FBetaScore` with `beta=1`): `2 * precision * recall / (precision +
    recall)`.

    Args:
        average: `None` (one score per class), `"micro"`, `"macro"` or `"weighted"`.
        threshold: Predictions above it are positive; `None`: each row's highest prediction.
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name = "f1_score"

    def __init__(self, average=None, threshold=None, name=None, dtype=None):
        super().__init__(average=average, beta=1.0, threshold=threshold, name=name)

    def get_config(self):
        config = super().get_config()
        del config["beta"]
        return config


class R2Score(_StateMetric):
    """The coefficient of determination per output column, aggregated as class_aggregation
    says; num_regressors > 0: the adjusted R^2.

    Args:
        class_aggregation: `"uniform_average"`, `"variance_weighted_average"`, or `None` (one score
            per column). Defaults to `"uniform_average"`.
        num_regressors: Number of regressors, for the adjusted R^2 (0: plain R^2). Defaults to `0`.
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name = "r2_score"

    def __init__(self, class_aggregation="uniform_average", num_regressors=0, name=None,
                 dtype=None):
        valid = (None, "uniform_average", "variance_weighted_average")
        if class_aggregation not in valid:
            raise ValueError("Invalid value for argument `class_aggregation`. Expected one of "
                             f"{valid}. Received: class_aggregation={class_aggregation}")
        if num_regressors < 0:
            raise ValueError("Invalid value for argument `num_regressors`. Expected a value "
                             f">= 0. Received: num_regressors={num_regressors}")
        self.class_aggregation, self.num_regressors = class_aggregation, num_regressors
        super().__init__(name)

    def reset_state(self):
        self.sum = self.squared_sum = self.total_mse = self.count = 0.0
        self.num_samples = 0

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true, y_pred, w = _host(y_true, y_pred, sample_weight)
        y_true, y_pred = _same_rank(y_true, y_pred)
        if y_true.ndim == 1:
            y_true, y_pred = y_true[:, None], y_pred[:, None]
        w = np.ones(y_true.shape) if w is None else \
            np.broadcast_to(w.reshape(-1, 1) if w.ndim == 1 else w, y_true.shape)
        self.sum = self.sum + (y_true * w).sum(axis=0)
        self.squared_sum = self.squared_sum + (y_true * y_true * w).sum(axis=0)
        self.total_mse = self.total_mse + ((y_true - y_pred) ** 2 * w).sum(axis=0)
        self.count = self.count + w.sum(axis=0)
        self.num_samples += y_true.size

    def result(self):
        if not np.any(self.count):
            return 0.0
        mean = self.sum / self.count
        total = self.squared_sum - self.sum * mean
        with np.errstate(divide="ignore", invalid="ignore"):
            raw = 1 - self.total_mse / total
        raw = np.where(np.isinf(raw), 0.0, raw)
        if self.class_aggregation == "uniform_average":
            score = raw.mean()
        elif self.class_aggregation == "variance_weighted_average":
            score = (total * raw).sum() / total.sum()
        else:
            score = raw
        n, p = self.num_samples, self.num_regressors
        if p and p < n - 1:
            score = 1 - (1 - score) * (n - 1) / (n - p - 1)
        return float(score) if np.ndim(score) == 0 else score

    def get_config(self):
        return {**super().get_config(), "class_aggregation": self.class_aggregation,
                "num_regressors": self.num_regressors}


class IoU(_StateMetric):
    """Intersection over union of the classes `target_class_ids`, averaged over those present
    (a nonzero union), from a confusion matrix of class ids (sparse labels, or argmax along
    `axis` when not sparse), as Keras computes it (its epsilon included). Unlike Keras, sample
    weights are not truncated to integers (Keras's default int dtype does) and class ids out
    of [0, num_classes) raise instead of being dropped.

    Args:
        num_classes: Number of classes (the size of the confusion matrix).
        target_class_ids: The class ids whose IoU is averaged.
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: `None`, `"float32"`, `"int"` or `"int32"` (counts are kept in float64).
        ignore_class: A class id whose samples are left out, or `None`.
        sparse_y_true: Whether `y_true` holds class ids (else one-hot/scores, reduced by argmax
            along `axis`). Defaults to `True`.
        sparse_y_pred: Whether `y_pred` holds class ids (else scores, reduced by argmax along
            `axis`). Defaults to `True`.
        axis: The axis the values are computed along. Defaults to `-1`.
    """
    default_name = "io_u"

    def __init__(self, num_classes, target_class_ids, name=None, dtype=None, ignore_class=None,
                 sparse_y_true=True, sparse_y_pred=True, axis=-1):
        if dtype not in (None, "int", "int32", "float32"):
            raise ValueError(f"{type(self).__name__}: dtype={dtype!r}: fastnn counts in "
                             "float64 (Keras's int32 or float32 give the same counts for "
                             "integer weights)")
        self.num_classes, self.ignore_class = int(num_classes), ignore_class
        if max(target_class_ids) >= num_classes:
            raise ValueError(f"Target class id {max(target_class_ids)} is out of range, which "
                             f"is [0, {num_classes}).")
        self.target_class_ids = [int(c) for c in target_class_ids]
        self.sparse_y_true, self.sparse_y_pred, self.axis = sparse_y_true, sparse_y_pred, axis
        super().__init__(name)

    def reset_state(self):
        self.total_cm = np.zeros((self.num_classes, self.num_classes))

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true, y_pred, w = _host(y_true, y_pred, sample_weight)
        if not self.sparse_y_true:
            y_true = y_true.argmax(axis=self.axis)
        if not self.sparse_y_pred:
            y_pred = y_pred.argmax(axis=self.axis)
        # weights of y_true's shape, or one per row for all its entries
        w = np.ones(y_true.shape) if w is None else \
            np.broadcast_to(w.reshape(w.shape + (1,) * (y_true.ndim - w.ndim)), y_true.shape)
        y_true, y_pred, w = y_true.reshape(-1), y_pred.reshape(-1), w.reshape(-1)
        if self.ignore_class is not None:
            keep = y_true != self.ignore_class
            y_true, y_pred, w = y_true[keep], y_pred[keep], w[keep]
        t, p = y_true.astype(np.int64), y_pred.astype(np.int64)
        if ((t < 0) | (t >= self.num_classes) | (p < 0) | (p >= self.num_classes)).any():
            raise ValueError(f"{self.name}: class ids must lie in [0, {self.num_classes}); got "
                             f"y_true in [{t.min()}, {t.max()}], y_pred in [{p.min()}, "
                             f"{p.max()}]")
        np.add.at(self.total_cm, (t, p), w)

    def result(self):
        cm = self.total_cm
        diag = np.diag(cm)
        union = (cm.sum(axis=0) + cm.sum(axis=1) - diag)[self.target_class_ids]
        valid = union > 1e-9
        iou = np.where(valid, diag[self.target_class_ids] / (union + _EPS), 0.0)
        return float(iou.sum() / (valid.sum() + _EPS))

    def get_config(self):
        return {"name": self.name, "dtype": "int32", "num_classes": self.num_classes,
                "target_class_ids": self.target_class_ids, "ignore_class": self.ignore_class,
                "sparse_y_true": self.sparse_y_true, "sparse_y_pred": self.sparse_y_pred,
                "axis": self.axis}


class BinaryIoU(IoU):
    """IoU of the classes 0 and 1 (as target_class_ids picks) with y_pred >= threshold as
    class 1; y_true's values truncated to integers, as Keras's int cast does.

    Args:
        target_class_ids: Which of the classes 0 and 1 are averaged. Defaults to `(0, 1)`.
        threshold: Predictions at or above it are class 1. Defaults to `0.5`.
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name = "binary_io_u"

    def __init__(self, target_class_ids=(0, 1), threshold=0.5, name=None, dtype=None):
        self.threshold = threshold
        super().__init__(2, target_class_ids, name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true, y_pred = _host(y_true, y_pred)
        super().update_state(np.trunc(y_true), (y_pred >= self.threshold).astype(np.float64),
                             sample_weight)

    def get_config(self):
        return {"target_class_ids": self.target_class_ids, "threshold": self.threshold,
                "name": self.name, "dtype": "int32"}


class MeanIoU(IoU):
    """IoU averaged over every class present.

    Args:
        num_classes: Number of classes (the size of the confusion matrix).
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: `None`, `"float32"`, `"int"` or `"int32"`.
        ignore_class: A class id whose samples are left out, or `None`.
        sparse_y_true: Whether `y_true` holds class ids (else one-hot/scores, reduced by argmax
            along `axis`). Defaults to `True`.
        sparse_y_pred: Whether `y_pred` holds class ids (else scores, reduced by argmax along
            `axis`). Defaults to `True`.
        axis: The axis the values are computed along. Defaults to `-1`.
    """
    default_name = "mean_io_u"

    def __init__(self, num_classes, name=None, dtype=None, ignore_class=None,
                 sparse_y_true=True, sparse_y_pred=True, axis=-1):
        super().__init__(num_classes, list(range(int(num_classes))), name, dtype,
                         ignore_class, sparse_y_true, sparse_y_pred, axis)

    def get_config(self):
        config = super().get_config()
        del config["target_class_ids"]
        return config


class OneHotIoU(IoU):
    """IoU with one-hot y_true (and y_pred scores unless sparse_y_pred).

    Args:
        num_classes: Number of classes (the size of the confusion matrix).
        target_class_ids: The class ids whose IoU is averaged.
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: `None`, `"float32"`, `"int"` or `"int32"`.
        ignore_class: A class id whose samples are left out, or `None`.
        sparse_y_pred: Whether `y_pred` holds class ids (else scores, reduced by argmax along
            `axis`). Defaults to `False`.
        axis: The axis the values are computed along. Defaults to `-1`.
    """
    default_name = "one_hot_io_u"

    def __init__(self, num_classes, target_class_ids, name=None, dtype=None, ignore_class=None,
                 sparse_y_pred=False, axis=-1):
        super().__init__(num_classes, target_class_ids, name, dtype, ignore_class,
                         sparse_y_true=False, sparse_y_pred=sparse_y_pred, axis=axis)

    def get_config(self):
        config = super().get_config()
        del config["sparse_y_true"]
        return config


class OneHotMeanIoU(MeanIoU):
    """MeanIoU with one-hot y_true (and y_pred scores unless sparse_y_pred).

    Args:
        num_classes: Number of classes (the size of the confusion matrix).
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: `None`, `"float32"`, `"int"` or `"int32"`.
        ignore_class: A class id whose samples are left out, or `None`.
        sparse_y_pred: Whether `y_pred` holds class ids (else scores, reduced by argmax along
            `axis`). Defaults to `False`.
        axis: The axis the values are computed along. Defaults to `-1`.
    """
    default_name = "one_hot_mean_io_u"

    def __init__(self, num_classes, name=None, dtype=None, ignore_class=None,
                 sparse_y_pred=False, axis=-1):
        super().__init__(num_classes, name, dtype, ignore_class, sparse_y_true=False,
                         sparse_y_pred=sparse_y_pred, axis=axis)

    def get_config(self):
        config = super().get_config()
        del config["sparse_y_true"]
        return config


# ---- Keras's MeanMetricWrapper metrics: the running mean of a function's values per sample.
# The loss-like ones reuse fastnn/losses.py's per-sample functions (one formula each).
def accuracy(y_true, y_pred):
    """1 where y_pred equals y_true (Keras's accuracy), element by element.

    Args:
        y_true: Targets.
        y_pred: Predictions.

    Returns:
        A float array of 0s and 1s.
    """
    y_true, y_pred = losses._same_rank(y_true, y_pred)
    return ops.cast(ops.equal(y_true, y_pred), "float32")


def cosine_similarity(y_true, y_pred, axis=-1):
    """The cosine of the angle along `axis` (the loss is its negative).

    Args:
        y_true: Targets.
        y_pred: Predictions.
        axis: The axis the values are computed along. Defaults to `-1`.

    Returns:
        One value per sample, a tensor (the last axis reduced).
    """
    return -losses.cosine_similarity(y_true, y_pred, axis=axis)


def pearson_correlation(y_true, y_pred, axis=-1):
    """The Pearson correlation coefficient of `y_true` and `y_pred` along `axis`, per sample.

    Args:
        y_true: Targets.
        y_pred: Predictions.
        axis: The axis the values are computed along. Defaults to `-1`.

    Returns:
        One value per sample, a tensor (the last axis reduced).
    """
    y_true, y_pred = losses._same_rank(y_true, y_pred)
    t = y_true - ops.mean(y_true, axis=axis, keepdims=True)
    p = y_pred - ops.mean(y_pred, axis=axis, keepdims=True)
    t = t / ops.std(t, axis=axis, keepdims=True)
    p = p / ops.std(p, axis=axis, keepdims=True)
    return ops.mean(t * p, axis=axis)


def concordance_correlation(y_true, y_pred, axis=-1):
    """The concordance correlation coefficient of `y_true` and `y_pred` along `axis`, per sample: `2
    cov / (var_true + var_pred + (mean_true - mean_pred) ** 2)`.

    Args:
        y_true: Targets.
        y_pred: Predictions.
        axis: The axis the values are computed along. Defaults to `-1`.

    Returns:
        One value per sample, a tensor (the last axis reduced).
    """
    y_true, y_pred = losses._same_rank(y_true, y_pred)
    t_mean = ops.mean(y_true, axis=axis, keepdims=True)
    p_mean = ops.mean(y_pred, axis=axis, keepdims=True)
    t_var = ops.var(y_true - t_mean, axis=axis, keepdims=True)
    p_var = ops.var(y_pred - p_mean, axis=axis, keepdims=True)
    # y_true - p_mean (not t_mean) is Keras 3's formula, kept for equal results
    covar = (y_true - p_mean) * (y_pred - p_mean)
    norm = t_var + p_var + ops.square(t_mean - p_mean)
    return ops.mean(2.0 * covar / (norm + _EPS), axis=axis)


class _FunctionMetric(Metric):
    """A Keras metric class over a function's values (its `function`, called with the
    arguments the constructor takes): their running mean per sample, weighted by
    sample_weight. The values are computed where the backend computes."""
    function = None

    def __init__(self, name=None, dtype=None):
        self._init(name, dtype)

    def _init(self, name, dtype, **arguments):
        """The subclasses' constructors: `arguments` go to the function."""
        self._arguments = arguments
        for key, value in arguments.items():
            setattr(self, key, value)
        Metric.__init__(self, name, dtype)

    def values(self, y_true, y_pred):
        """The function's values (one per sample, or per pixel, ...) where the backend
        computes."""
        ops_ = get_ops()
        y_true = ops_.asarray(np.asarray(y_true, np.float32) if isinstance(y_true, np.ndarray)
                              else y_true.astype(np.float32))
        y_pred = ops_.asarray(np.asarray(y_pred, np.float32) if isinstance(y_pred, np.ndarray)
                              else y_pred.astype(np.float32))
        with np.errstate(divide="ignore", invalid="ignore"):   # NaN as Keras gives, quietly
            values = value_of(type(self).function(y_true, y_pred, **self._arguments))
        return values.reshape(1).repeat(y_pred.shape[0]) if values.ndim == 0 else values

    def mask(self, y_true):
        """Which values count when weighted (Keras's mask on the values); None: all."""
        return None

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Keras's Mean over the values: unweighted, one count per entry of their first axis
        (a row; a column with axis=0); weighted (weights per row, or per value), the values
        are averaged down to the weights' rank, weighted, and the weights averaged likewise
        for the count, as keras's reduce_to_samplewise_values does."""
        if sample_weight is None:
            y_true, y_pred = _together(y_true, y_pred)
            values = self.values(y_true, y_pred).astype(np.float64)
            self.total += values.reshape(len(values), -1).mean(axis=-1).sum()
            self.count += len(values)
            return
        y_true, y_pred, w = _together(y_true, y_pred, sample_weight)
        values = self.values(y_true, y_pred).astype(np.float64)
        xp = np if isinstance(values, np.ndarray) else get_ops().xp
        w = xp.asarray(w).astype(np.float64)
        if w.ndim == values.ndim + 1 and w.shape[-1] == 1:
            w = w[..., 0]
        if w.ndim > values.ndim:
            raise ValueError(f"{self.name}: sample_weight of shape {tuple(w.shape)} has more "
                             f"axes than the metric's values {tuple(values.shape)}")
        mask = self.mask(y_true)
        if mask is not None:    # weights per row spread over the row's values
            w = w.reshape(w.shape + (1,) * (mask.ndim - w.ndim)) * xp.asarray(mask)
        if values.ndim > w.ndim:
            values = values.mean(axis=tuple(range(w.ndim, values.ndim)))
        w = xp.broadcast_to(w.reshape(w.shape + (1,) * (values.ndim - w.ndim)), values.shape)
        self.total += (values * w).reshape(len(values), -1).mean(axis=-1).sum()
        self.count += w.reshape(len(w), -1).mean(axis=-1).sum()

    def get_config(self):
        return {"name": self.name, "dtype": "float32", **self._arguments}


def _check_axis(axis):
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise ValueError(f"`axis` must be of type `int`. Received: axis={axis}")
    return int(axis)


def _check_smoothing(label_smoothing):
    if not 0 <= label_smoothing <= 1:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    return label_smoothing


class Accuracy(_FunctionMetric):
    """How often y_pred equals y_true exactly.

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name = "accuracy"
    function = staticmethod(accuracy)


class BinaryCrossentropy(_FunctionMetric):
    """The running mean of the binary cross-entropy per sample (see
    `fastnn.losses.BinaryCrossentropy`).

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
        from_logits: Whether `y_pred` holds logits instead of probabilities. Defaults to `False`.
        label_smoothing: In [0, 1]: how far the targets are moved towards the uniform distribution.
            Defaults to `0`.
    """
    default_name = "binary_crossentropy"
    direction = "down"
    function = staticmethod(losses.binary_crossentropy_values)

    def __init__(self, name=None, dtype=None, from_logits=False, label_smoothing=0):
        self._init(name, dtype, from_logits=bool(from_logits),
                         label_smoothing=_check_smoothing(label_smoothing))


class CategoricalCrossentropy(_FunctionMetric):
    """The running mean of the categorical cross-entropy per sample (see
    `fastnn.losses.CategoricalCrossentropy`).

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
        from_logits: Whether `y_pred` holds logits instead of probabilities. Defaults to `False`.
        label_smoothing: In [0, 1]: how far the targets are moved towards the uniform distribution.
            Defaults to `0`.
        axis: The axis the values are computed along. Defaults to `-1`.
    """
    default_name = "categorical_crossentropy"
    direction = "down"
    function = staticmethod(losses.categorical_crossentropy_values)

    def __init__(self, name=None, dtype=None, from_logits=False, label_smoothing=0, axis=-1):
        self._init(name, dtype, from_logits=bool(from_logits),
                         label_smoothing=_check_smoothing(label_smoothing),
                         axis=_check_axis(axis))


def _sparse_crossentropy(y_true, y_pred, from_logits=False, ignore_class=None, axis=-1):
    """Keras's sparse_categorical_crossentropy per sample: the categorical one of the one-hot
    labels (ignore_class's positions give 0)."""
    labels = y_true
    if labels.ndim == y_pred.ndim:
        labels = labels.squeeze(axis)
    labels = labels.astype(np.int64)
    if ignore_class is not None:
        valid = labels != ignore_class
        labels = labels * valid
    values = losses.categorical_crossentropy_values(
        ops.one_hot(labels, y_pred.shape[axis], axis=axis), y_pred, from_logits, axis=axis)
    return values if ignore_class is None else values * valid


class SparseCategoricalCrossentropy(_FunctionMetric):
    """Cross-entropy of integer labels; with ignore_class, those labels give 0 and (when
    sample_weight is given) weigh nothing, as in Keras.

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
        from_logits: Whether `y_pred` holds logits instead of probabilities. Defaults to `False`.
        ignore_class: A class id whose samples are left out, or `None`.
        axis: The axis the values are computed along. Defaults to `-1`.
    """
    default_name = "sparse_categorical_crossentropy"
    direction = "down"
    function = staticmethod(_sparse_crossentropy)

    def __init__(self, name=None, dtype=None, from_logits=False, ignore_class=None, axis=-1):
        self._init(name, dtype, from_logits=bool(from_logits),
                         ignore_class=ignore_class, axis=_check_axis(axis))

    def mask(self, y_true):
        if self.ignore_class is None:
            return None
        labels = y_true[..., 0] if y_true.ndim > 1 and y_true.shape[-1] == 1 else y_true
        return labels != self.ignore_class


class KLDivergence(_FunctionMetric):
    """The running mean of the Kullback-Leibler divergence `sum(y_true * log(y_true / y_pred))` per
    sample over the samples seen (weighted by `sample_weight` when given).

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name = "kl_divergence"
    direction = "down"
    function = staticmethod(losses.kl_divergence)


class Poisson(_FunctionMetric):
    """The running mean of the Poisson loss `mean(y_pred - y_true * log(y_pred + 1e-7))` per sample
    over the samples seen (weighted by `sample_weight` when given).

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name = "poisson"
    direction = "down"
    function = staticmethod(losses.poisson)


class Hinge(_FunctionMetric):
    """Keras's hinge: 0/1 labels become -1/1 when a whole update_state call holds only 0s
    and 1s (so a fused update of many batches converts as one batch would).

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name = "hinge"
    direction = "down"
    function = staticmethod(losses.hinge)


class SquaredHinge(Hinge):
    """The running mean of the squared hinge loss `mean(max(1 - y_true * y_pred, 0) ** 2)` per
    sample (0/1 labels read as -1/1) over the samples seen (weighted by `sample_weight` when given).

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name = "squared_hinge"
    function = staticmethod(losses.squared_hinge)


class CategoricalHinge(_FunctionMetric):
    """The running mean of the categorical hinge loss `max(neg - pos + 1, 0)` per sample (see
    `fastnn.losses.categorical_hinge`) over the samples seen (weighted by `sample_weight` when
    given).

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name = "categorical_hinge"
    direction = "down"
    function = staticmethod(losses.categorical_hinge)


class LogCoshError(_FunctionMetric):
    """The running mean of `log(cosh(y_pred - y_true))` (averaged over the last axis per sample)
    over the samples seen (weighted by `sample_weight` when given).

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name = "logcosh"
    direction = "down"
    function = staticmethod(losses.log_cosh)


class MeanAbsolutePercentageError(_FunctionMetric):
    """The running mean of `100 * abs((y_true - y_pred) / y_true)` (averaged over the last axis per
    sample) over the samples seen (weighted by `sample_weight` when given).

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name = "mean_absolute_percentage_error"
    direction = "down"
    function = staticmethod(losses.mean_absolute_percentage_error)


class MeanSquaredLogarithmicError(_FunctionMetric):
    """The running mean of `(log(y_pred + 1) - log(y_true + 1)) ** 2` (averaged over the last axis
    per sample) over the samples seen (weighted by `sample_weight` when given).

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name = "mean_squared_logarithmic_error"
    direction = "down"
    function = staticmethod(losses.mean_squared_logarithmic_error)


class CosineSimilarity(_FunctionMetric):
    """The running mean of the cosine similarity of `y_true` and `y_pred` along `axis` over the
    samples seen (weighted by `sample_weight` when given).

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
        axis: The axis the values are computed along. Defaults to `-1`.
    """
    default_name = "cosine_similarity"
    function = staticmethod(cosine_similarity)

    def __init__(self, name=None, dtype=None, axis=-1):
        self._init(name, dtype, axis=_check_axis(axis))


class PearsonCorrelation(CosineSimilarity):
    """The running mean of the Pearson correlation of `y_true` and `y_pred` along `axis` over the
    samples seen (weighted by `sample_weight` when given).

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
        axis: The axis the values are computed along. Defaults to `-1`.
    """
    default_name = "pearson_correlation"
    function = staticmethod(pearson_correlation)


class ConcordanceCorrelation(CosineSimilarity):
    """The running mean of the concordance correlation coefficient of `y_true` and `y_pred` along
    `axis` over the samples seen (weighted by `sample_weight` when given).

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
        axis: The axis the values are computed along. Defaults to `-1`.
    """
    default_name = "concordance_correlation"
    function = staticmethod(concordance_correlation)


class Sum(_StateMetric):
    """The (sample-weighted) sum of the values given.

    Args:
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name = "sum"

    def reset_state(self):
        self.total = 0.0

    def update_state(self, values, sample_weight=None):
        values, w = _host(values, sample_weight)
        if w is not None:
            w = np.broadcast_to(w.reshape(w.shape + (1,) * (values.ndim - w.ndim)),
                                values.shape)
            values = values * w
        self.total += float(values.sum())

    def result(self):
        return float(self.total)


# ---- confusion counts -------------------------------------------------------------------
class _ConfusionCount(_Confusion):
    """The weighted count of one confusion-matrix cell at each threshold (default 0.5): one
    value for one threshold, an array for several."""
    label_weights = None
    cell = None         # 0..3: tp, fp, fn, tn (the order _counts returns them)

    def __init__(self, thresholds=None, name=None, dtype=None):
        self.init_thresholds = thresholds
        self.thresholds, _ = _thresholds(thresholds, 0.5)
        super().__init__(name)

    def reset_state(self):
        self.accumulator = np.zeros(len(self.thresholds))

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.accumulator = self.accumulator + \
            self._counts(y_true, y_pred, sample_weight, self.thresholds)[self.cell]

    def result(self):
        return float(self.accumulator[0]) if len(self.thresholds) == 1 else \
            self.accumulator.copy()

    def get_config(self):
        return {**super().get_config(), "thresholds": self.init_thresholds}


class TruePositives(_ConfusionCount):
    """The number of true positives: predictions above the threshold whose target is 1 (one count
    per threshold when several).

    Args:
        thresholds: A float threshold in [0, 1] or a list of them: a prediction above it counts as
            positive; `None`: 0.5.
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name, cell = "true_positives", 0


class FalsePositives(_ConfusionCount):
    """The number of false positives: predictions above the threshold whose target is 0 (one count
    per threshold when several).

    Args:
        thresholds: A float threshold in [0, 1] or a list of them: a prediction above it counts as
            positive; `None`: 0.5.
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name, cell = "false_positives", 1


class FalseNegatives(_ConfusionCount):
    """The number of false negatives: predictions at or below the threshold whose target is 1 (one
    count per threshold when several).

    Args:
        thresholds: A float threshold in [0, 1] or a list of them: a prediction above it counts as
            positive; `None`: 0.5.
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name, cell = "false_negatives", 2


class TrueNegatives(_ConfusionCount):
    """The number of true negatives: predictions at or below the threshold whose target is 0 (one
    count per threshold when several).

    Args:
        thresholds: A float threshold in [0, 1] or a list of them: a prediction above it counts as
            positive; `None`: 0.5.
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name, cell = "true_negatives", 3


class _AtConstraint(_Confusion):
    """Keras's SensitivitySpecificityBase: confusion counts at num_thresholds evenly spaced
    thresholds in [0, 1]; the result is the largest `dependent` rate among the thresholds
    whose `constrained` rate is >= the given value (0 when none is)."""
    label_weights = None
    value_name = None

    def __init__(self, value, num_thresholds=200, class_id=None, name=None, dtype=None):
        if value < 0 or value > 1:
            raise ValueError(f"Argument `{self.value_name}` must be in the range [0, 1]. "
                             f"Received: {self.value_name}={value}")
        if num_thresholds <= 0:
            raise ValueError("Argument `num_thresholds` must be an integer > 0. "
                             f"Received: num_thresholds={num_thresholds}")
        setattr(self, self.value_name, value)
        self.value, self.num_thresholds, self.class_id = value, num_thresholds, class_id
        self.thresholds = np.array([0.5] if num_thresholds == 1 else
                                   [0.0] + [(i + 1) * 1.0 / (num_thresholds - 1)
                                            for i in range(num_thresholds - 2)] + [1.0])
        super().__init__(name)

    def reset_state(self):
        n = len(self.thresholds)
        self.true_positives, self.false_positives = np.zeros(n), np.zeros(n)
        self.true_negatives, self.false_negatives = np.zeros(n), np.zeros(n)

    def update_state(self, y_true, y_pred, sample_weight=None):
        tp, fp, fn, tn = self._counts(y_true, y_pred, sample_weight, self.thresholds,
                                      class_id=self.class_id)
        self.true_positives = self.true_positives + tp
        self.false_positives = self.false_positives + fp
        self.false_negatives = self.false_negatives + fn
        self.true_negatives = self.true_negatives + tn

    def _rates(self):
        tp, fp, fn, tn = self.true_positives, self.false_positives, self.false_negatives, \
            self.true_negatives
        return {"sensitivity": _divide_no_nan(tp, tp + fn),
                "specificity": _divide_no_nan(tn, tn + fp),
                "precision": _divide_no_nan(tp, tp + fp)}

    def result(self):
        rates = self._rates()
        constrained, dependent = rates[self.constrained], rates[self.dependent]
        return float(np.max(np.where(constrained >= self.value, dependent, 0.0), initial=0.0))

    def get_config(self):
        return {**super().get_config(), "class_id": self.class_id,
                "num_thresholds": self.num_thresholds, self.value_name: self.value}


class SensitivityAtSpecificity(_AtConstraint):
    """The best sensitivity (recall) among the thresholds whose specificity is at least
    `specificity`.

    Args:
        specificity: The required specificity, in [0, 1].
        num_thresholds: Number of evenly spaced thresholds in [0, 1] the counts are taken at.
            Defaults to `200`.
        class_id: Compute the metric for this class (a column of `y_pred`) only; `None`: over all.
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name, value_name = "sensitivity_at_specificity", "specificity"
    constrained, dependent = "specificity", "sensitivity"

    def __init__(self, specificity, num_thresholds=200, class_id=None, name=None,
                 dtype=None):
        super().__init__(specificity, num_thresholds, class_id, name, dtype)


class SpecificityAtSensitivity(_AtConstraint):
    """The best specificity among the thresholds whose sensitivity (recall) is at least
    `sensitivity`.

    Args:
        sensitivity: The required sensitivity, in [0, 1].
        num_thresholds: Number of evenly spaced thresholds in [0, 1] the counts are taken at.
            Defaults to `200`.
        class_id: Compute the metric for this class (a column of `y_pred`) only; `None`: over all.
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name, value_name = "specificity_at_sensitivity", "sensitivity"
    constrained, dependent = "sensitivity", "specificity"

    def __init__(self, sensitivity, num_thresholds=200, class_id=None, name=None,
                 dtype=None):
        super().__init__(sensitivity, num_thresholds, class_id, name, dtype)


class PrecisionAtRecall(_AtConstraint):
    """The best precision among the thresholds whose recall is at least `recall`.

    Args:
        recall: The required recall, in [0, 1].
        num_thresholds: Number of evenly spaced thresholds in [0, 1] the counts are taken at.
            Defaults to `200`.
        class_id: Compute the metric for this class (a column of `y_pred`) only; `None`: over all.
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name, value_name = "precision_at_recall", "recall"
    constrained, dependent = "sensitivity", "precision"     # recall is sensitivity

    def __init__(self, recall, num_thresholds=200, class_id=None, name=None, dtype=None):
        super().__init__(recall, num_thresholds, class_id, name, dtype)


class RecallAtPrecision(_AtConstraint):
    """The best recall among the thresholds whose precision is at least `precision`.

    Args:
        precision: The required precision, in [0, 1].
        num_thresholds: Number of evenly spaced thresholds in [0, 1] the counts are taken at.
            Defaults to `200`.
        class_id: Compute the metric for this class (a column of `y_pred`) only; `None`: over all.
        name: Name of the metric (shown in logs); `None`: its default name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
    """
    default_name, value_name = "recall_at_precision", "precision"
    constrained, dependent = "precision", "sensitivity"

    def __init__(self, precision, num_thresholds=200, class_id=None, name=None, dtype=None):
        super().__init__(precision, num_thresholds, class_id, name, dtype)


class MeanMetricWrapper(Metric):
    """A metric function fn(y_true, y_pred) -> one value per sample, as a running mean (a
    Python function passed in metrics=, written with NumPy or fastnn.ops).

    Args:
        fn: The function `fn(y_true, y_pred, **kwargs)` returning one value per sample.
        name: Name of the metric; `None`: the function's name.
        dtype: Only `None` or `"float32"` (metrics accumulate in float64).
        **kwargs: Extra keyword arguments passed to `fn`.
    """

    def __init__(self, fn, name=None, dtype=None, **kwargs):
        if not callable(fn):
            raise TypeError(f"MeanMetricWrapper: fn must be callable, got {fn!r}")
        self.fn, self._fn_kwargs = fn, kwargs
        super().__init__(name or getattr(fn, "__name__", None) or "metric")

    def per_sample(self, y_true, y_pred):
        values = np.asarray(get_ops().to_numpy(value_of(
            self.fn(y_true, y_pred, **self._fn_kwargs))), np.float64)
        rows = y_pred.shape[0]
        if values.ndim == 0:
            return np.full(rows, float(values))
        return values.reshape(rows, -1).mean(axis=-1)


_BY_NAME = {
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "categorical_accuracy": CategoricalAccuracy, "binary_accuracy": BinaryAccuracy,
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
    "precision": Precision, "recall": Recall, "auc": AUC,
    "top_k_categorical_accuracy": TopKCategoricalAccuracy,
    "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy,
    "root_mean_squared_error": RootMeanSquaredError, "f1_score": F1Score,
    "fbeta_score": FBetaScore, "f_beta_score": FBetaScore, "r2_score": R2Score,
    # the rest of keras/src/metrics/__init__.py's names (the class names in snake case and
    # its aliases); "accuracy"/"acc" are resolved by shapes in get()
    "binary_crossentropy": BinaryCrossentropy, "bce": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "kl_divergence": KLDivergence, "poisson": Poisson, "hinge": Hinge,
    "squared_hinge": SquaredHinge, "categorical_hinge": CategoricalHinge,
    "log_cosh_error": LogCoshError,
    "mean_absolute_percentage_error": MeanAbsolutePercentageError,
    "mape": MeanAbsolutePercentageError,
    "mean_squared_logarithmic_error": MeanSquaredLogarithmicError,
    "msle": MeanSquaredLogarithmicError, "cosine_similarity": CosineSimilarity,
    "pearson_correlation": PearsonCorrelation,
    "concordance_correlation": ConcordanceCorrelation, "sum": Sum,
    "true_positives": TruePositives, "false_positives": FalsePositives,
    "true_negatives": TrueNegatives, "false_negatives": FalseNegatives,
    "precision_at_recall": PrecisionAtRecall, "recall_at_precision": RecallAtPrecision,
    "sensitivity_at_specificity": SensitivityAtSpecificity,
    "specificity_at_sensitivity": SpecificityAtSensitivity,
    "io_u": IoU, "binary_io_u": BinaryIoU, "mean_io_u": MeanIoU,
    "one_hot_io_u": OneHotIoU, "one_hot_mean_io_u": OneHotMeanIoU,
}
_CLASSES = {c.__name__: c for c in set(_BY_NAME.values()) | {Accuracy}}
_IOU = (IoU, BinaryIoU, MeanIoU, OneHotIoU, OneHotMeanIoU)


def _number_list(value, path):
    """thresholds / target_class_ids: a number, a list of numbers or null."""
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            fail_value(path, "a number, a list of numbers or null", value)


def serialize(metric):
    """Keras's form in a compile config: a name stays a name; a metric object is
    {"module": "keras.metrics", "class_name": ..., "config": ...}; a function by its name.

    Args:
        metric: A metric name, object or function.

    Returns:
        A name or a config dict.
    """
    if isinstance(metric, str):
        return metric
    if isinstance(metric, MeanMetricWrapper) or callable(metric) and \
            not isinstance(metric, (Metric, type)):
        fn = getattr(metric, "fn", metric)
        return {"module": getattr(fn, "__module__", None), "class_name": "function",
                "config": getattr(fn, "__name__", "metric"),
                "registered_name": getattr(fn, "_registered_name", None)}
    builtin = type(metric).__name__ in _CLASSES and type(metric).__module__ == __name__
    return {"module": "keras.metrics" if builtin else type(metric).__module__,
            "class_name": type(metric).__name__, "config": metric.get_config(),
            "registered_name": None if builtin else
            getattr(type(metric), "_registered_name", type(metric).__name__)}


def deserialize(spec, path="metric"):
    """A metric from a compile config entry: a name (resolved at compile) or one of fastnn's
    metric classes with its config; errors name `path`.

    Args:
        spec: A name or a config dict.
        path: Where it is, for error messages. Defaults to `"metric"`.

    Returns:
        A `Metric` object, or the name.
    """
    if isinstance(spec, str):
        return spec
    class_name, cfg = object_spec(spec, path, "metric")
    cls = registry.lookup(class_name, spec.get("registered_name")) or _CLASSES.get(class_name)
    if cls is None:
        fail_value(f"{path}.class_name", f"a metric name or one of the metric classes "
                   f"{', '.join(sorted(_CLASSES))} (or a registered one)", class_name)
    if cls in _CLASSES.values():
        # float32, or the IoU metrics' int32 (Keras's counts): what fastnn computes in
        cfg = {k: v for k, v in cfg.items()
               if k != "dtype" or v not in (None, "float32", "int32" if cls in _IOU else 0)}
        check_kwargs(cls, cfg, f"{path}.config",
                     checks={k: _number_list for k in ("thresholds", "target_class_ids",
                                                       "label_weights")})
        expect_str(cfg.get("name", ""), f"{path}.config.name")
    try:
        return cls.from_config(cfg)
    except (TypeError, ValueError) as exc:
        raise prefixed(exc, f"{path}.config") from None


def get(identifier, y_true_shape=None, y_pred_shape=None):
    """Resolve a metric; 'accuracy'/'acc' need the target and output shapes (Keras's rule).

    Args:
        identifier: A metric name (e.g. `"accuracy"`), a `Metric` object or class, or a function.
        y_true_shape: Shape of the targets (decides which accuracy `"accuracy"` means). Defaults to
            `None`.
        y_pred_shape: Shape of the model's output. Defaults to `None`.

    Returns:
        A `Metric` object.
    """
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Metric):
        return identifier()
    if callable(identifier) and not isinstance(identifier, type):
        return MeanMetricWrapper(identifier)
    if isinstance(identifier, dict):        # a config, as keras.metrics.get takes one
        return deserialize(identifier)
    if not isinstance(identifier, str):
        raise ValueError(f"Unsupported metric {identifier!r}")
    if identifier.lower() in ("accuracy", "acc"):
        if y_pred_shape is None:
            raise ValueError("accuracy needs the data shapes to be resolved")
        binary = y_pred_shape[-1] == 1
        sparse = len(y_true_shape) < len(y_pred_shape) or \
            (y_true_shape[-1] == 1 and y_pred_shape[-1] > 1)
        cls = BinaryAccuracy if binary else \
            SparseCategoricalAccuracy if sparse else CategoricalAccuracy
        return cls(name=identifier)
    cls = _BY_NAME.get(identifier.lower()) or _CLASSES.get(identifier)
    if cls is None:
        raise ValueError(f"Unknown metric {identifier!r}. Valid names: accuracy, acc, "
                         f"{', '.join(sorted(_BY_NAME))}")
    return cls(name=identifier)
