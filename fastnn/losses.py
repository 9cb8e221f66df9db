"""Losses with Keras 3's names, aliases and defaults (keras/src/losses/losses.py).

A loss turns model outputs and targets into a value and a gradient in one backend call. When the
model's last activation is the loss's natural partner (softmax for the categorical
cross-entropies, sigmoid for binary cross-entropy) the gradient is taken with respect to the
logits (p - y): exact and stable, as Keras's TF backend does through `_keras_logits`. The value is
computed Keras's way: from probabilities clipped to [1e-7, 1 - 1e-7], or with from_logits=True
exactly from the logits (log-sum-exp), never clipped."""
import inspect
import re

import numpy as np

from . import activations as A
from . import ops, registry
from ._config import check_kwargs, expect_int, fail_value, object_spec, prefixed
from .autodiff import Tensor, gradients, tape, value_of
from .backend import get_ops
from .backend.base import EPSILON
from .registry import get_registered_name

_REDUCTIONS = ("sum_over_batch_size", "sum")


def _float_targets(y, name="y"):
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":      # complex too: its imaginary part would be dropped
        raise TypeError(f"{name} must be real numbers (bool, int or float), got dtype "
                        f"{y.dtype}")
    y = np.ascontiguousarray(y, dtype=np.float32)
    if not np.isfinite(y).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return y


class Loss:
    """A loss. fastnn's own compute value and gradient in one backend call (_kernel). A
    subclass that defines call(y_true, y_pred), as a Keras user writes one, returning the loss
    per sample with fastnn.ops, is differentiated by fastnn's autodiff.

    Args:
        name: Name of the loss; `None`: made from the class name.
        reduction: How the per-sample losses are reduced: `"sum_over_batch_size"` (their mean over
            the batch) or `"sum"`. Defaults to `"sum_over_batch_size"`.
        from_logits: Whether predictions are logits (for subclasses that read it). Defaults to
            `False`.
        dtype: Only `None` or `"float32"` (losses are computed in float32).

    Example:

    ```python
    class MyMSE(fastnn.losses.Loss):
        def call(self, y_true, y_pred):
            return fastnn.ops.mean(fastnn.ops.square(y_pred - y_true), axis=-1)
    ```
    """
    partner = None  # the activation id this loss fuses with

    def __init__(self, name=None, reduction="sum_over_batch_size", from_logits=False,
                 dtype=None):
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if dtype not in (None, "float32", np.float32):
            raise ValueError(f"{type(self).__name__}: dtype={dtype!r}: fastnn computes losses "
                             "in float32")
        self.name = name or getattr(self, "default_name", None) or \
            re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__).lower()
        self.reduction = reduction
        self.from_logits = from_logits

    # -- targets ------------------------------------------------------------------------------
    def prepare_targets(self, y, output_shape):
        """Validate and convert all targets once (before training): float32, shape of outputs
        (a loss with call() decides what its targets mean: any shape, a row per sample)."""
        y = _float_targets(y)
        width = output_shape[-1]
        if y.ndim == len(output_shape) - 1 and width == 1:
            y = y.reshape(y.shape + (1,))
        if hasattr(self, "call"):
            return y
        if y.shape[1:] != tuple(output_shape[1:]):
            raise ValueError(f"{self.name}: targets y must have shape (n, "
                             f"{', '.join(str(d) for d in output_shape[1:])}) to match the "
                             f"model output, got {y.shape}")
        return y

    # -- value and gradient ----------------------------------------------------------------
    def mode(self, last_activation):
        """How value_and_grad reads y_pred: 'fused' (probabilities from the partner activation,
        gradient taken w.r.t. its logits), 'logits' (raw scores), or 'outputs'."""
        if hasattr(self, "call"):
            return "outputs"
        if self.partner is not None and self.from_logits:
            return "logits"
        if self.partner is not None and last_activation == self.partner:
            return "fused"
        return "outputs"

    def value_and_grad(self, y_pred, y_true, weights, scale, grad, mode):
        """Sum over rows of weight * per-sample loss; writes scale * d(sum)/d(input) into grad
        (when given), where input is the logits in 'fused'/'logits' mode, else y_pred."""
        if hasattr(self, "call"):
            return self._autodiff_value_and_grad(y_pred, y_true, weights, scale, grad)
        ops = get_ops()
        if mode == "logits":
            if grad is not None:    # (p - y) from the fused kernel; its clipped value unused
                self._kernel(ops, ops.act_forward(self.partner, 0.0, y_pred), y_true, weights,
                             scale, grad)
            return self._logits_total(ops, y_pred, y_true, weights)
        if mode == "fused" or self.partner is None:
            return self._kernel(ops, y_pred, y_true, weights, scale, grad)
        return self._outputs_value_and_grad(ops, y_pred, y_true, weights, scale, grad)

    def _autodiff_value_and_grad(self, y_pred, y_true, weights, scale, grad):
        """value_and_grad of a loss with call(): its per-sample values reduced as Keras
        reduces them, the gradient from fastnn's autodiff."""
        rows = y_pred.shape[0]
        if y_true.ndim == 2 and y_true.shape[1] == 1 and y_pred.shape[-1] != 1:
            y_true = y_true[:, 0]       # a label per row, as the user's targets had it
        out = Tensor(y_pred, requires_grad=grad is not None)
        with tape():
            per = self.call(Tensor(y_true), out)
            if not isinstance(per, Tensor):
                per = Tensor(get_ops().xp.asarray(per, dtype=np.float32))
            if per.ndim == 0 or per.shape[0] != rows:
                if weights is not None:
                    raise ValueError(
                        f"Loss {self.name!r} returned shape {tuple(per.shape)} for "
                        f"{rows} samples: with sample_weight or class_weight it must return "
                        "one value per sample (reduce only the last axis)")
                # Keras reduces whatever comes back: its mean over elements, times the rows
                # the trainer divides by again.
            elif weights is not None:
                per = per * ops.reshape(Tensor(weights), (rows,) + (1,) * (per.ndim - 1))
            total = ops.sum(per)
            if self.reduction == "sum_over_batch_size":
                total = total * (rows / max(per.size, 1))
        if grad is not None:
            found = gradients(total, [out])[0] if total.requires_grad else None
            if found is None:
                grad[...] = 0
            else:
                grad[...] = found * scale
        return float(value_of(total))

    def __call__(self, y_true, y_pred, sample_weight=None):
        y_pred = _float_targets(y_pred, "y_pred")
        if y_pred.ndim == 1:
            y_pred = y_pred[:, None]
        y_true = self.prepare_targets(y_true, y_pred.shape)
        y_pred2 = y_pred.reshape(-1, y_pred.shape[-1])
        y_true2 = y_true.reshape(y_pred2.shape[0], -1) if y_true.ndim > 1 else y_true
        w = None if sample_weight is None else \
            np.ascontiguousarray(np.broadcast_to(sample_weight, y_pred2.shape[:1]), np.float32)
        mode = "logits" if (self.from_logits and self.partner is not None) else "fused"
        ops = get_ops()      # where the backend computes (one crossing each on a GPU)
        y_pred2, y_true2 = ops.asarray(y_pred2), ops.asarray(y_true2, y_true2.dtype)
        w = None if w is None else ops.asarray(w)
        total = float(self.value_and_grad(y_pred2, y_true2, w, 1.0, None, mode))
        return total / y_pred2.shape[0] if self.reduction == "sum_over_batch_size" else total

    def _outputs_value_and_grad(self, ops, y_pred, y_true, weights, scale, grad):
        return self._kernel(ops, y_pred, y_true, weights, scale, grad)

    def get_config(self):
        return {"name": self.name, "reduction": self.reduction}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class CategoricalCrossentropy(Loss):
    """Cross-entropy between one-hot (or probability) targets and predicted class probabilities.

    Per sample: `-sum(y_true * log(y_pred))` over the classes, the predictions normalized to sum 1
    and clipped to `[1e-7, 1 - 1e-7]` (computed from the logits with `from_logits=True`).

    Args:
        from_logits: Whether `y_pred` holds logits (raw scores) instead of probabilities. Defaults
            to `False`.
        label_smoothing: In [0, 1]: the targets are moved that fraction of the way towards the
            uniform distribution (0.5 for binary targets). Defaults to `0.0`.
        axis: Only -1 (the classes on the last axis) is supported. Defaults to `-1`.
        reduction: How the per-sample losses are reduced: `"sum_over_batch_size"` (their mean over
            the batch) or `"sum"`. Defaults to `"sum_over_batch_size"`.
        name: Name of the loss (shown in logs); `None`: the loss's default name.

    Example:

    ```python
    model.compile(optimizer="adam", loss=fastnn.losses.CategoricalCrossentropy())
    ```
    """
    default_name = "categorical_crossentropy"
    partner = A.SOFTMAX

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name=None):
        super().__init__(name, reduction, from_logits)
        if axis != -1:
            raise ValueError(f"{self.name}: only axis=-1 is supported, got {axis}")
        if not 0 <= label_smoothing <= 1:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def prepare_targets(self, y, output_shape):
        y = super().prepare_targets(y, output_shape)
        if self.label_smoothing:
            y = y * (1 - self.label_smoothing) + self.label_smoothing / output_shape[-1]
        return y

    def _kernel(self, ops, p, t, w, scale, grad):
        return ops.softmax_xent_dense(p, t, w, scale, grad)

    def _logits_total(self, ops, z, t, w):
        return ops.softmax_xent_logits_total(z, t, w, sparse=False)

    def _outputs_value_and_grad(self, ops, y_pred, y_true, weights, scale, grad):
        # Outputs are probabilities that did not come from softmax.
        return ops.categorical_xent_outputs(y_pred, y_true, weights, scale, grad)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing, "axis": -1}


class SparseCategoricalCrossentropy(Loss):
    """Cross-entropy between integer class labels and predicted class probabilities.

    Per sample: `-log(y_pred[label])`; targets are class indices, shape `(batch,)` or `(batch, 1)`.

    Args:
        from_logits: Whether `y_pred` holds logits (raw scores) instead of probabilities. Defaults
            to `False`.
        ignore_class: Only `None` (ignoring a class is not supported yet).
        reduction: How the per-sample losses are reduced: `"sum_over_batch_size"` (their mean over
            the batch) or `"sum"`. Defaults to `"sum_over_batch_size"`.
        name: Name of the loss (shown in logs); `None`: the loss's default name.

    Example:

    ```python
    model.compile(optimizer="adam", loss=fastnn.losses.SparseCategoricalCrossentropy())
    ```
    """
    default_name = "sparse_categorical_crossentropy"
    partner = A.SOFTMAX

    def __init__(self, from_logits=False, ignore_class=None, reduction="sum_over_batch_size",
                 name=None):
        super().__init__(name, reduction, from_logits)
        if ignore_class is not None:
            raise ValueError(f"{self.name}: ignore_class is not supported by fastnn yet")
        self.ignore_class = None

    def prepare_targets(self, y, output_shape):
        y = np.asarray(y)
        classes = output_shape[-1]
        if y.ndim == len(output_shape) and y.shape[-1] == 1:
            y = y.reshape(y.shape[:-1])
        if y.ndim != len(output_shape) - 1 or y.shape[1:] != tuple(output_shape[1:-1]):
            hint = " (these look like one-hot targets: use categorical_crossentropy)" \
                if y.ndim == len(output_shape) and y.shape[-1] == classes else ""
            raise ValueError(f"{self.name}: y must hold one integer class label per sample, "
                             f"shape (n,), got shape {y.shape}{hint}")
        if y.dtype.kind == "f":
            if not np.isfinite(y).all():
                raise ValueError(f"{self.name}: y contains NaN or inf values")
            if not (np.round(y) == y).all():
                raise ValueError(f"{self.name}: labels y must be integers, got non-integer "
                                 f"values such as {y[np.round(y) != y][0].item()!r}")
        elif y.dtype.kind not in "iub":
            raise TypeError(f"{self.name}: labels y must be integers, got dtype {y.dtype}")
        if y.size and (y.min() < 0 or y.max() >= classes):
            bad = y[(y < 0) | (y >= classes)][0].item()
            raise ValueError(f"{self.name}: labels must be in [0, {classes}) for a model with "
                             f"{classes} outputs, got label {bad!r}")
        return np.ascontiguousarray(y, dtype=np.int32)

    def _kernel(self, ops, p, t, w, scale, grad):
        return ops.softmax_xent_sparse(p, t.reshape(-1), w, scale, grad)

    def _logits_total(self, ops, z, t, w):
        return ops.softmax_xent_logits_total(z, t, w, sparse=True)

    def _outputs_value_and_grad(self, ops, y_pred, y_true, weights, scale, grad):
        return ops.categorical_xent_outputs(y_pred, y_true, weights, scale, grad, sparse=True)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits, "ignore_class": None}


class BinaryCrossentropy(Loss):
    """Binary cross-entropy between 0/1 targets and predicted probabilities.

    Per sample: the mean over the last axis of `-(y log(p) + (1 - y) log(1 - p))`, with `p` clipped
    to `[1e-7, 1 - 1e-7]` (computed exactly from logits with `from_logits=True`).

    Args:
        from_logits: Whether `y_pred` holds logits (raw scores) instead of probabilities. Defaults
            to `False`.
        label_smoothing: In [0, 1]: the targets are moved that fraction of the way towards the
            uniform distribution (0.5 for binary targets). Defaults to `0.0`.
        axis: The axis the values are averaged over (the last). Defaults to `-1`.
        reduction: How the per-sample losses are reduced: `"sum_over_batch_size"` (their mean over
            the batch) or `"sum"`. Defaults to `"sum_over_batch_size"`.
        name: Name of the loss (shown in logs); `None`: the loss's default name.
    """
    default_name = "binary_crossentropy"
    partner = A.SIGMOID

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name=None):
        super().__init__(name, reduction, from_logits)
        if not 0 <= label_smoothing <= 1:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def prepare_targets(self, y, output_shape):
        y = super().prepare_targets(y, output_shape)
        if ((y < 0) | (y > 1)).any():
            raise ValueError(f"{self.name}: targets y must lie in [0, 1], got values in "
                             f"[{y.min()}, {y.max()}]")
        if self.label_smoothing:
            y = y * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        return y

    def _kernel(self, ops, p, t, w, scale, grad):
        return ops.sigmoid_bxent(p, t, w, scale, grad)

    def _logits_total(self, ops, z, t, w):
        return ops.sigmoid_bxent_logits_total(z, t, w)

    def _outputs_value_and_grad(self, ops, y_pred, y_true, weights, scale, grad):
        # Outputs are probabilities that did not come from sigmoid.
        return ops.binary_xent_outputs(y_pred, y_true, weights, scale, grad)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing, "axis": -1}


class MeanSquaredError(Loss):
    """Mean of the squared errors: `mean((y_true - y_pred) ** 2)` over the last axis, per sample.

    Args:
        name: Name of the loss; `None`: `"mean_squared_error"`.
        reduction: How the per-sample losses are reduced: `"sum_over_batch_size"` (their mean over
            the batch) or `"sum"`. Defaults to `"sum_over_batch_size"`.
        from_logits: Not used by this loss. Defaults to `False`.
        dtype: Only `None` or `"float32"` (losses are computed in float32).
    """
    default_name = "mean_squared_error"

    def _kernel(self, ops, p, t, w, scale, grad):
        return ops.squared_error(p, t, w, scale, grad)


class MeanAbsoluteError(Loss):
    """Mean of the absolute errors: `mean(abs(y_true - y_pred))` over the last axis, per sample.

    Args:
        name: Name of the loss; `None`: `"mean_absolute_error"`.
        reduction: How the per-sample losses are reduced: `"sum_over_batch_size"` (their mean over
            the batch) or `"sum"`. Defaults to `"sum_over_batch_size"`.
        from_logits: Not used by this loss. Defaults to `False`.
        dtype: Only `None` or `"float32"` (losses are computed in float32).
    """
    default_name = "mean_absolute_error"

    def _kernel(self, ops, p, t, w, scale, grad):
        return ops.absolute_error(p, t, w, scale, grad)


# ---- losses written with fastnn.ops, differentiated by fastnn's autodiff --------------------
# Keras 3's formulas (keras/src/losses/losses.py), each returning one value per sample (the last
# axis reduced). The built-in ones below and any function a user passes share one path.
def _same_rank(y_true, y_pred):
    """Keras's squeeze_or_expand_to_same_rank: a trailing axis of 1 on one side only goes."""
    if y_true.ndim == y_pred.ndim + 1 and y_true.shape[-1] == 1:
        return ops.squeeze(y_true, -1), y_pred
    if y_pred.ndim == y_true.ndim + 1 and y_pred.shape[-1] == 1:
        return y_true, ops.squeeze(y_pred, -1)
    return y_true, y_pred


def huber(y_true, y_pred, delta=1.0):
    """Huber loss per sample: the mean over the last axis of `0.5 * e**2` where `|e| <= delta`, else
    `delta * |e| - 0.5 * delta**2` (`e = y_pred - y_true`).

    Args:
        y_true: Targets, a tensor or array.
        y_pred: Predictions, of the shape of `y_true`.
        delta: Where the loss changes from quadratic to linear. Defaults to `1.0`.

    Returns:
        The loss of each sample, a tensor with the last axis reduced.
    """
    y_true, y_pred = _same_rank(y_true, y_pred)
    error = y_pred - y_true
    abs_error = ops.abs(error)
    return ops.mean(ops.where(abs_error <= delta, 0.5 * ops.square(error),
                              delta * abs_error - 0.5 * delta * delta), axis=-1)


def log_cosh(y_true, y_pred):
    """Log-cosh loss per sample: the mean over the last axis of `log(cosh(y_pred - y_true))`.

    Args:
        y_true: Targets, a tensor or array.
        y_pred: Predictions, of the shape of `y_true`.

    Returns:
        The loss of each sample, a tensor with the last axis reduced.
    """
    y_true, y_pred = _same_rank(y_true, y_pred)
    x = y_pred - y_true
    return ops.mean(x + ops.softplus(x * -2.0) - float(np.log(2.0)), axis=-1)


def kl_divergence(y_true, y_pred):
    """Kullback-Leibler divergence per sample: `sum(y_true * log(y_true / y_pred))` over the last
    axis, both clipped to `[1e-7, 1]`.

    Args:
        y_true: Targets, a tensor or array.
        y_pred: Predictions, of the shape of `y_true`.

    Returns:
        The loss of each sample, a tensor with the last axis reduced.
    """
    y_true = ops.clip(y_true, EPSILON, 1.0)
    y_pred = ops.clip(y_pred, EPSILON, 1.0)
    return ops.sum(y_true * ops.log(y_true / y_pred), axis=-1)


def poisson(y_true, y_pred):
    """Poisson loss per sample: the mean over the last axis of `y_pred - y_true * log(y_pred +
    1e-7)`.

    Args:
        y_true: Targets, a tensor or array.
        y_pred: Predictions, of the shape of `y_true`.

    Returns:
        The loss of each sample, a tensor with the last axis reduced.
    """
    return ops.mean(y_pred - y_true * ops.log(y_pred + EPSILON), axis=-1)


def _hinge_labels(y_true):
    """Binary 0/1 labels (the whole batch) as -1/1, as Keras converts them; others as they are."""
    values = value_of(y_true)
    binary = bool(((values == 0) | (values == 1)).all())
    return 2.0 * y_true - 1.0 if binary else y_true


def hinge(y_true, y_pred):
    """Hinge loss per sample: the mean over the last axis of `max(1 - y_true * y_pred, 0)`; 0/1
    targets are read as -1/1.

    Args:
        y_true: Targets, a tensor or array.
        y_pred: Predictions, of the shape of `y_true`.

    Returns:
        The loss of each sample, a tensor with the last axis reduced.
    """
    return ops.mean(ops.maximum(1.0 - _hinge_labels(y_true) * y_pred, 0.0), axis=-1)


def squared_hinge(y_true, y_pred):
    """Squared hinge loss per sample: the mean over the last axis of `max(1 - y_true * y_pred, 0) **
    2`; 0/1 targets are read as -1/1.

    Args:
        y_true: Targets, a tensor or array.
        y_pred: Predictions, of the shape of `y_true`.

    Returns:
        The loss of each sample, a tensor with the last axis reduced.
    """
    return ops.mean(ops.square(ops.maximum(1.0 - _hinge_labels(y_true) * y_pred, 0.0)), axis=-1)


def categorical_hinge(y_true, y_pred):
    """Categorical hinge loss per sample: `max(neg - pos + 1, 0)`, `pos = sum(y_true * y_pred)`,
    `neg = max((1 - y_true) * y_pred)`.

    Args:
        y_true: Targets, a tensor or array.
        y_pred: Predictions, of the shape of `y_true`.

    Returns:
        The loss of each sample, a tensor with the last axis reduced.
    """
    pos = ops.sum(y_true * y_pred, axis=-1)
    neg = ops.max((1.0 - y_true) * y_pred, axis=-1)
    return ops.maximum(neg - pos + 1.0, 0.0)


def mean_absolute_percentage_error(y_true, y_pred):
    """Mean absolute percentage error per sample: `100 * mean(abs((y_true - y_pred) /
    max(abs(y_true), 1e-7)))` over the last axis.

    Args:
        y_true: Targets, a tensor or array.
        y_pred: Predictions, of the shape of `y_true`.

    Returns:
        The loss of each sample, a tensor with the last axis reduced.
    """
    y_true, y_pred = _same_rank(y_true, y_pred)
    diff = ops.abs((y_true - y_pred) / ops.maximum(ops.abs(y_true), EPSILON))
    return 100.0 * ops.mean(diff, axis=-1)


def mean_squared_logarithmic_error(y_true, y_pred):
    """Mean squared logarithmic error per sample: the mean over the last axis of `(log(max(y_pred,
    1e-7) + 1) - log(max(y_true, 1e-7) + 1)) ** 2`.

    Args:
        y_true: Targets, a tensor or array.
        y_pred: Predictions, of the shape of `y_true`.

    Returns:
        The loss of each sample, a tensor with the last axis reduced.
    """
    y_true, y_pred = _same_rank(y_true, y_pred)
    first = ops.log(ops.maximum(y_pred, EPSILON) + 1.0)
    second = ops.log(ops.maximum(y_true, EPSILON) + 1.0)
    return ops.mean(ops.square(first - second), axis=-1)


def cosine_similarity(y_true, y_pred, axis=-1):
    """Negative cosine similarity per sample: `-sum(l2_normalize(y_true) * l2_normalize(y_pred))`
    along `axis` (-1 for identical directions).

    Args:
        y_true: Targets, a tensor or array.
        y_pred: Predictions, of the shape of `y_true`.
        axis: The axis the vectors lie along. Defaults to `-1`.

    Returns:
        The loss of each sample, a tensor with the last axis reduced.
    """
    y_true, y_pred = _same_rank(y_true, y_pred)
    return -ops.sum(ops.normalize(y_true, axis=axis) * ops.normalize(y_pred, axis=axis),
                    axis=axis)


def _bce(y_true, y_pred):
    y_pred = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
    return -(y_true * ops.log(y_pred) + (1.0 - y_true) * ops.log(1.0 - y_pred))


def binary_crossentropy_values(y_true, y_pred, from_logits=False, label_smoothing=0.0,
                               axis=-1):
    """Keras's binary_crossentropy per sample (the mean over `axis`): the losses' C kernels
    compute the batch total; the metrics need the values.

    Args:
        y_true: Targets, a tensor or array.
        y_pred: Predictions, of the shape of `y_true`.
        from_logits: Whether `y_pred` holds logits (raw scores) instead of probabilities. Defaults
            to `False`.
        label_smoothing: In [0, 1]: the targets are moved that fraction of the way towards the
            uniform distribution (0.5 for binary targets). Defaults to `0.0`.
        axis: The axis averaged over. Defaults to `-1`.

    Returns:
        The loss of each sample, a tensor with the last axis reduced.
    """
    y_true, y_pred = _same_rank(y_true, y_pred)
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if from_logits:     # exact from the logits: max(z, 0) - z y + log(1 + e^-|z|)
        values = ops.maximum(y_pred, 0.0) - y_pred * y_true + \
            ops.log1p(ops.exp(-ops.abs(y_pred)))
    else:
        values = _bce(y_true, y_pred)
    return ops.mean(values, axis=axis)


def categorical_crossentropy_values(y_true, y_pred, from_logits=False, label_smoothing=0.0,
                                    axis=-1):
    """Keras's categorical_crossentropy per sample: from logits by log-softmax, else from the
    outputs normalized to sum 1 and clipped to [1e-7, 1 - 1e-7].

    Args:
        y_true: Targets, a tensor or array.
        y_pred: Predictions, of the shape of `y_true`.
        from_logits: Whether `y_pred` holds logits (raw scores) instead of probabilities. Defaults
            to `False`.
        label_smoothing: In [0, 1]: the targets are moved that fraction of the way towards the
            uniform distribution (0.5 for binary targets). Defaults to `0.0`.
        axis: The axis of the classes. Defaults to `-1`.

    Returns:
        The loss of each sample, a tensor with the last axis reduced.
    """
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + label_smoothing / y_true.shape[-1]
    if from_logits:
        log_p = ops.log_softmax(y_pred, axis=axis)
    else:
        log_p = ops.log(ops.clip(y_pred / ops.sum(y_pred, axis=axis, keepdims=True), EPSILON,
                                 1.0 - EPSILON))
    return -ops.sum(y_true * log_p, axis=axis)


def binary_focal_crossentropy(y_true, y_pred, apply_class_balancing=False, alpha=0.25,
                              gamma=2.0, from_logits=False, label_smoothing=0.0, axis=-1):
    """Binary focal cross-entropy per sample: the binary cross-entropy weighted by `(1 - p_t) **
    gamma` (`p_t`: the probability given to the true label), averaged along `axis`.

    Args:
        y_true: Targets, a tensor or array.
        y_pred: Predictions, of the shape of `y_true`.
        apply_class_balancing: Whether to weight positives by `alpha` and negatives by `1 - alpha`.
            Defaults to `False`.
        alpha: The class-balancing weight of the positives. Defaults to `0.25`.
        gamma: The focusing exponent (0: plain binary cross-entropy). Defaults to `2.0`.
        from_logits: Whether `y_pred` holds logits (raw scores) instead of probabilities. Defaults
            to `False`.
        label_smoothing: In [0, 1]: the targets are moved that fraction of the way towards the
            uniform distribution (0.5 for binary targets). Defaults to `0.0`.
        axis: The axis averaged over. Defaults to `-1`.

    Returns:
        The loss of each sample, a tensor with the last axis reduced.
    """
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if from_logits:
        y_pred = ops.sigmoid(y_pred)
    p_t = y_true * y_pred + (1.0 - y_true) * (1.0 - y_pred)
    focal = ops.power(1.0 - p_t, gamma) * _bce(y_true, y_pred)
    if apply_class_balancing:
        focal = (y_true * alpha + (1.0 - y_true) * (1.0 - alpha)) * focal
    return ops.mean(focal, axis=axis)


def categorical_focal_crossentropy(y_true, y_pred, alpha=0.25, gamma=2.0, from_logits=False,
                                   label_smoothing=0.0, axis=-1):
    """Categorical focal cross-entropy per sample: `sum(alpha * (1 - p) ** gamma * -y_true *
    log(p))` along `axis`, `p` the normalized, clipped predictions.

    Args:
        y_true: Targets, a tensor or array.
        y_pred: Predictions, of the shape of `y_true`.
        alpha: The weight of the loss. Defaults to `0.25`.
        gamma: The focusing exponent (0: plain categorical cross-entropy). Defaults to `2.0`.
        from_logits: Whether `y_pred` holds logits (raw scores) instead of probabilities. Defaults
            to `False`.
        label_smoothing: In [0, 1]: the targets are moved that fraction of the way towards the
            uniform distribution (0.5 for binary targets). Defaults to `0.0`.
        axis: The axis of the classes. Defaults to `-1`.

    Returns:
        The loss of each sample, a tensor with the last axis reduced.
    """
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + label_smoothing / y_true.shape[-1]
    if from_logits:
        y_pred = ops.softmax(y_pred, axis=axis)
    output = ops.clip(y_pred / ops.sum(y_pred, axis=axis, keepdims=True), EPSILON,
                      1.0 - EPSILON)
    focal = alpha * ops.power(1.0 - output, gamma) * (-y_true * ops.log(output))
    return ops.sum(focal, axis=axis)


class LossFunctionWrapper(Loss):
    """A loss given as a function fn(y_true, y_pred, **kwargs) of tensors, written with
    fastnn.ops, returning the loss per sample (Keras's LossFunctionWrapper): its value and
    gradient come from fastnn's autodiff. A Python function passed as `loss=` becomes one.

    Args:
        fn: The function `fn(y_true, y_pred, **kwargs)` returning the loss per sample.
        reduction: How the per-sample losses are reduced: `"sum_over_batch_size"` (their mean over
            the batch) or `"sum"`. Defaults to `"sum_over_batch_size"`.
        name: Name of the loss; `None`: the function's name.
        dtype: Only `None` or `"float32"` (losses are computed in float32).
        **kwargs: Extra keyword arguments passed to `fn`.
    """

    def __init__(self, fn, reduction="sum_over_batch_size", name=None, dtype=None, **kwargs):
        if not callable(fn):
            raise TypeError(f"LossFunctionWrapper: fn must be callable, got {fn!r}")
        super().__init__(name or getattr(fn, "__name__", None) or "loss", reduction,
                         dtype=dtype)
        self.fn, self._fn_kwargs = fn, kwargs

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred, **self._fn_kwargs)

    def get_config(self):
        return {**super().get_config(), **self._fn_kwargs}


def _wrapper(fn, default_name, keep=(), **defaults):
    """A Keras loss class over one of the functions above: its arguments, defaults and name;
    `keep`: the arguments Keras writes in get_config (Huber, CosineSimilarity write none)."""
    def __init__(self, *args, reduction="sum_over_batch_size", name=None, dtype=None,
                 **kwargs):
        names = list(defaults)
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__}() takes at most {len(names)} positional "
                            f"arguments, got {len(args)}")
        unknown = set(kwargs) - set(names)
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword arguments "
                            f"{sorted(unknown)}")
        values = {**defaults, **dict(zip(names, args)), **kwargs}
        if "label_smoothing" in values and not 0 <= values["label_smoothing"] <= 1:
            raise ValueError(f"label_smoothing must be in [0, 1], got "
                             f"{values['label_smoothing']}")
        if "axis" in values and (isinstance(values["axis"], bool) or
                                 not isinstance(values["axis"], (int, np.integer))):
            raise ValueError(f"`axis` must be of type `int`. Received: axis={values['axis']}")
        LossFunctionWrapper.__init__(self, fn, reduction=reduction, name=name or default_name,
                                     dtype=dtype, **values)
        for key, value in values.items():
            setattr(self, key, value)
        self.from_logits = values.get("from_logits", False)

    def get_config(self):
        return {**Loss.get_config(self), **{k: self._fn_kwargs[k] for k in keep}}

    P = inspect.Parameter
    __init__.__signature__ = inspect.Signature(
        [P("self", P.POSITIONAL_OR_KEYWORD)] +
        [P(k, P.POSITIONAL_OR_KEYWORD, default=v) for k, v in defaults.items()] +
        [P("reduction", P.KEYWORD_ONLY, default="sum_over_batch_size"),
         P("name", P.KEYWORD_ONLY, default=default_name),
         P("dtype", P.KEYWORD_ONLY, default=None)])
    return {"__init__": __init__, "get_config": get_config, "default_name": default_name}


_FOCAL = ("from_logits", "label_smoothing", "axis", "alpha", "gamma")
Huber = type("Huber", (LossFunctionWrapper,), _wrapper(huber, "huber_loss", delta=1.0))
LogCosh = type("LogCosh", (LossFunctionWrapper,), _wrapper(log_cosh, "log_cosh"))
KLDivergence = type("KLDivergence", (LossFunctionWrapper,),
                    _wrapper(kl_divergence, "kl_divergence"))
Poisson = type("Poisson", (LossFunctionWrapper,), _wrapper(poisson, "poisson"))
Hinge = type("Hinge", (LossFunctionWrapper,), _wrapper(hinge, "hinge"))
SquaredHinge = type("SquaredHinge", (LossFunctionWrapper,),
                    _wrapper(squared_hinge, "squared_hinge"))
CategoricalHinge = type("CategoricalHinge", (LossFunctionWrapper,),
                        _wrapper(categorical_hinge, "categorical_hinge"))
MeanAbsolutePercentageError = type(
    "MeanAbsolutePercentageError", (LossFunctionWrapper,),
    _wrapper(mean_absolute_percentage_error, "mean_absolute_percentage_error"))
MeanSquaredLogarithmicError = type(
    "MeanSquaredLogarithmicError", (LossFunctionWrapper,),
    _wrapper(mean_squared_logarithmic_error, "mean_squared_logarithmic_error"))
CosineSimilarity = type("CosineSimilarity", (LossFunctionWrapper,),
                        _wrapper(cosine_similarity, "cosine_similarity", axis=-1))
BinaryFocalCrossentropy = type(
    "BinaryFocalCrossentropy", (LossFunctionWrapper,),
    _wrapper(binary_focal_crossentropy, "binary_focal_crossentropy",
             keep=_FOCAL + ("apply_class_balancing",), apply_class_balancing=False,
             alpha=0.25, gamma=2.0, from_logits=False, label_smoothing=0.0, axis=-1))
CategoricalFocalCrossentropy = type(
    "CategoricalFocalCrossentropy", (LossFunctionWrapper,),
    _wrapper(categorical_focal_crossentropy, "categorical_focal_crossentropy", keep=_FOCAL,
             alpha=0.25, gamma=2.0, from_logits=False, label_smoothing=0.0, axis=-1))


def _class_doc(cls, fn):
    """A wrapper class's docstring from its function's: the formula, then the function's own
    arguments (y_true and y_pred left out) and the class's."""
    summary, _, rest = inspect.getdoc(fn).partition("\n\nArgs:\n")
    own, skip = [], False
    for line in rest.split("\n\nReturns:")[0].split("\n"):
        if not line.startswith("        "):         # an argument's first line
            skip = line.split(":")[0].strip() in ("y_true", "y_pred")
        if not skip:
            own.append(line)
    return (f"{summary}\n\nKeras's {cls.__name__}: the loss function `{cls.default_name}` as a "
            "loss object.\n\nArgs:\n" + "".join(line + "\n" for line in own) +
            '    reduction: How the per-sample losses are reduced: `"sum_over_batch_size"` '
            '(their\n        mean over the batch) or `"sum"`. Defaults to '
            '`"sum_over_batch_size"`.\n'
            f'    name: Name of the loss. Defaults to `"{cls.default_name}"`.\n'
            '    dtype: Only `None` or `"float32"`. Defaults to `None`.')


for _cls, _fn in ((Huber, huber), (LogCosh, log_cosh), (KLDivergence, kl_divergence),
                  (Poisson, poisson), (Hinge, hinge), (SquaredHinge, squared_hinge),
                  (CategoricalHinge, categorical_hinge),
                  (MeanAbsolutePercentageError, mean_absolute_percentage_error),
                  (MeanSquaredLogarithmicError, mean_squared_logarithmic_error),
                  (CosineSimilarity, cosine_similarity),
                  (BinaryFocalCrossentropy, binary_focal_crossentropy),
                  (CategoricalFocalCrossentropy, categorical_focal_crossentropy)):
    _cls.__module__ = __name__
    _cls.__doc__ = _class_doc(_cls, _fn)


_BY_NAME = {
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy, "bce": BinaryCrossentropy,
    "mean_squared_error": MeanSquaredError, "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError, "mae": MeanAbsoluteError,
    "huber": Huber, "log_cosh": LogCosh, "kl_divergence": KLDivergence, "kld": KLDivergence,
    "poisson": Poisson, "hinge": Hinge, "squared_hinge": SquaredHinge,
    "categorical_hinge": CategoricalHinge,
    "mean_absolute_percentage_error": MeanAbsolutePercentageError,
    "mape": MeanAbsolutePercentageError,
    "mean_squared_logarithmic_error": MeanSquaredLogarithmicError,
    "msle": MeanSquaredLogarithmicError, "cosine_similarity": CosineSimilarity,
    "binary_focal_crossentropy": BinaryFocalCrossentropy,
    "categorical_focal_crossentropy": CategoricalFocalCrossentropy,
}
_CLASSES = {c.__name__: c for c in set(_BY_NAME.values())}


def _function(cls):
    def loss_fn(y_true, y_pred):
        return cls()(y_true, y_pred)
    loss_fn.__name__ = cls.default_name
    loss_fn.__doc__ = (f"The {cls.__name__} loss with its default arguments, reduced over the "
                       "batch.\n\nArgs:\n    y_true: Targets.\n    y_pred: Predictions.\n\n"
                       "Returns:\n    The loss, a float (Keras's function returns the loss per "
                       "sample).")
    loss_fn.loss_class = cls
    return loss_fn


categorical_crossentropy = _function(CategoricalCrossentropy)
sparse_categorical_crossentropy = _function(SparseCategoricalCrossentropy)
binary_crossentropy = _function(BinaryCrossentropy)
mean_squared_error = mse = _function(MeanSquaredError)
mean_absolute_error = mae = _function(MeanAbsoluteError)


def get(identifier):
    """The loss object an identifier names.

    Args:
        identifier: A name such as `"mse"`, a `Loss` object or class, a config dict, or a function
            `fn(y_true, y_pred)` (wrapped in a `LossFunctionWrapper`).

    Returns:
        A `Loss` object.

    Example:

    ```python
    loss = fastnn.losses.get("categorical_crossentropy")
    ```
    """
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier.lower()) or _CLASSES.get(identifier)
        if cls is None:
            raise ValueError(f"Unknown loss {identifier!r}. Valid names: "
                             f"{', '.join(sorted(_BY_NAME))}")
        return cls()
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        return identifier()
    if callable(identifier) and hasattr(identifier, "loss_class"):
        return identifier.loss_class()
    if callable(identifier) and not isinstance(identifier, type):
        return LossFunctionWrapper(identifier)
    if isinstance(identifier, dict):
        return deserialize(identifier)
    raise ValueError(f"Unsupported loss {identifier!r}: pass one of "
                     f"{', '.join(sorted(_BY_NAME))} or a fastnn.losses class")


def deserialize(config, custom_objects=None, path="loss"):
    """A loss from its serialized form (a name, or {"class_name": ..., "config": {...}}):
    every malformed entry raises naming its path under `path` and the value.

    Args:
        config: A loss name or a config dict.
        custom_objects: A dict `{name: class or function}` for custom losses. Defaults to `None`.
        path: Where the config is, for error messages. Defaults to `"loss"`.

    Returns:
        A `Loss` object.
    """
    if isinstance(config, str):
        try:
            return get(config)
        except ValueError as exc:
            raise prefixed(exc, path) from None
    if isinstance(config, dict) and config.get("class_name") == "function":
        return LossFunctionWrapper(_function_named(config, path))
    class_name, cfg = object_spec(config, path, "loss")
    registered = config.get("registered_name")
    custom = registry.lookup(class_name, registered)
    if isinstance(custom, type) and issubclass(custom, Loss):
        try:
            return custom.from_config(cfg)
        except (TypeError, ValueError) as exc:
            raise prefixed(exc, f"{path}.config") from None
    cls = _CLASSES.get(class_name) or _BY_NAME.get(class_name.lower())
    if cls is None:
        fail_value(f"{path}.class_name", f"one of the losses {', '.join(sorted(_CLASSES))}, "
                   "or a Loss subclass registered with "
                   "@fastnn.saving.register_keras_serializable() (or in custom_objects)",
                   class_name)
    check_kwargs(cls, cfg, f"{path}.config",
                 checks={"ignore_class": lambda v, p: expect_int(v, p, none_ok=True),
                         "axis": expect_int})
    try:
        return cls.from_config(cfg)
    except (TypeError, ValueError) as exc:
        raise prefixed(exc, f"{path}.config") from None


_FUNCTIONS = {f.__name__: f for f in (
    huber, log_cosh, kl_divergence, poisson, hinge, squared_hinge, categorical_hinge,
    mean_absolute_percentage_error, mean_squared_logarithmic_error, cosine_similarity,
    binary_focal_crossentropy, categorical_focal_crossentropy)}


def _function_named(config, path):
    """The loss function a config names ({"class_name": "function", "config": name, ...}):
    a registered function or one in custom_objects, or one of fastnn's (Keras's names); never
    anything imported by name."""
    name = config.get("config")
    if not isinstance(name, str):
        fail_value(f"{path}.config", "the function's name (a string)", name)
    fn = registry.lookup(name, config.get("registered_name"))
    if fn is None and config.get("module") in ("builtins", "keras.losses",
                                               "keras.src.losses.losses", __name__):
        fn = _FUNCTIONS.get(name) or (lambda c: c and getattr(c, "loss_class", None))(
            globals().get(name))
    if fn is None or not callable(fn):
        raise ValueError(f"{path}: Could not locate function {name!r}. Make sure custom "
                         "functions are decorated with "
                         "`@fastnn.saving.register_keras_serializable()` (or passed in "
                         "custom_objects) before loading")
    return fn


def serialize(loss):
    """Keras's form: a fastnn loss as keras.losses' class; a function passed as the loss, or
    a user's Loss subclass, by its (registered) name, as Keras writes them (loading those
    needs them registered, as in Keras).

    Args:
        loss: A `Loss` object or a loss function.

    Returns:
        A config dict (or the function's name).
    """
    if type(loss) is LossFunctionWrapper:
        fn = loss.fn
        name = getattr(fn, "__name__", "loss")
        if _FUNCTIONS.get(name) is fn:      # one of Keras's: written as Keras writes it
            return {"module": "builtins", "class_name": "function", "config": name,
                    "registered_name": "function"}
        return {"module": getattr(fn, "__module__", None), "class_name": "function",
                "config": name, "registered_name": getattr(fn, "_registered_name", name)}
    if type(loss).__module__ != __name__:
        return {"module": type(loss).__module__, "class_name": type(loss).__name__,
                "config": loss.get_config(), "registered_name": get_registered_name(loss)}
    return {"module": "keras.losses", "class_name": type(loss).__name__,
            "config": loss.get_config(), "registered_name": None}
