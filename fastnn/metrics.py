"""Metrics as running (sample-weighted) means over an epoch, with Keras's names; `accuracy` is
resolved by shapes exactly as keras/src/trainers/compile_utils.py does.

On a GPU the running total stays on the device (no sync per batch); result() reads it."""
import numpy as np

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
    direction = "up"

    def __init__(self, name=None):
        self.name = name or self.default_name
        self.reset_state()

    def reset_state(self):
        self.total = 0.0
        self.count = 0.0

    def update_state(self, y_true, y_pred, sample_weight=None):
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

    def get_config(self):
        return {"name": self.name}


class Mean(Metric):
    """Running mean of given values (the loss tracker)."""
    default_name = "mean"
    direction = "down"

    def update_with_sum(self, total, count):
        self.total += total
        self.count += count


class SparseCategoricalAccuracy(Metric):
    default_name = "sparse_categorical_accuracy"

    def per_sample(self, y_true, y_pred):
        return (y_pred.reshape(-1, y_pred.shape[-1]).argmax(axis=-1)
                == y_true.reshape(-1)).astype(np.float64)


class CategoricalAccuracy(Metric):
    default_name = "categorical_accuracy"

    def per_sample(self, y_true, y_pred):
        return (y_pred.reshape(-1, y_pred.shape[-1]).argmax(axis=-1)
                == y_true.reshape(-1, y_true.shape[-1]).argmax(axis=-1)).astype(np.float64)


class BinaryAccuracy(Metric):
    default_name = "binary_accuracy"

    def __init__(self, name=None, threshold=0.5):
        self.threshold = threshold
        super().__init__(name)

    def per_sample(self, y_true, y_pred):
        y_pred = y_pred.reshape(y_pred.shape[0], -1)
        y_true = y_true.reshape(y_pred.shape)
        return ((y_pred > self.threshold) == (y_true > 0.5)).mean(axis=-1)


class MeanSquaredError(Metric):
    default_name = "mean_squared_error"
    direction = "down"

    def per_sample(self, y_true, y_pred):
        y_pred = y_pred.reshape(y_pred.shape[0], -1)
        return ((y_pred - y_true.reshape(y_pred.shape)) ** 2).mean(axis=-1)


class MeanAbsoluteError(Metric):
    default_name = "mean_absolute_error"
    direction = "down"

    def per_sample(self, y_true, y_pred):
        y_pred = y_pred.reshape(y_pred.shape[0], -1)
        return abs(y_pred - y_true.reshape(y_pred.shape)).mean(axis=-1)


_BY_NAME = {
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "categorical_accuracy": CategoricalAccuracy, "binary_accuracy": BinaryAccuracy,
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
}
_CLASSES = {c.__name__: c for c in set(_BY_NAME.values())}


def get(identifier, y_true_shape=None, y_pred_shape=None):
    """Resolve a metric; 'accuracy'/'acc' need the target and output shapes (Keras's rule)."""
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Metric):
        return identifier()
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
