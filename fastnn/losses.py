"""Losses with Keras 3's names, aliases and defaults (keras/src/losses/losses.py).

A loss turns model outputs and targets into a value and a gradient in one backend call. When the
model's last activation is the loss's natural partner (softmax for the categorical
cross-entropies, sigmoid for binary cross-entropy) the gradient is taken with respect to the
logits (p - y): exact and stable, as Keras's TF backend does through `_keras_logits`. The value is
computed Keras's way: from probabilities clipped to [1e-7, 1 - 1e-7], or with from_logits=True
exactly from the logits (log-sum-exp), never clipped."""
import numpy as np

from . import activations as A
from ._config import check_kwargs, expect_int, fail_value, object_spec, prefixed
from .backend import get_ops
from .backend.base import EPSILON

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
    partner = None  # the activation id this loss fuses with

    def __init__(self, name=None, reduction="sum_over_batch_size", from_logits=False):
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.name = name or self.default_name
        self.reduction = reduction
        self.from_logits = from_logits

    # -- targets ------------------------------------------------------------------------------
    def prepare_targets(self, y, output_shape):
        """Validate and convert all targets once (before training): float32, shape of outputs."""
        y = _float_targets(y)
        width = output_shape[-1]
        if y.ndim == len(output_shape) - 1 and width == 1:
            y = y.reshape(y.shape + (1,))
        if y.shape[1:] != tuple(output_shape[1:]):
            raise ValueError(f"{self.name}: targets y must have shape (n, "
                             f"{', '.join(str(d) for d in output_shape[1:])}) to match the "
                             f"model output, got {y.shape}")
        return y

    # -- value and gradient ----------------------------------------------------------------
    def mode(self, last_activation):
        """How value_and_grad reads y_pred: 'fused' (probabilities from the partner activation,
        gradient taken w.r.t. its logits), 'logits' (raw scores), or 'outputs'."""
        if self.partner is not None and self.from_logits:
            return "logits"
        if self.partner is not None and last_activation == self.partner:
            return "fused"
        return "outputs"

    def value_and_grad(self, y_pred, y_true, weights, scale, grad, mode):
        """Sum over rows of weight * per-sample loss; writes scale * d(sum)/d(input) into grad
        (when given), where input is the logits in 'fused'/'logits' mode, else y_pred."""
        ops = get_ops()
        if mode == "logits":
            if grad is not None:    # (p - y) from the fused kernel; its clipped value unused
                self._kernel(ops, ops.act_forward(self.partner, 0.0, y_pred), y_true, weights,
                             scale, grad)
            return self._logits_total(ops, y_pred, y_true, weights)
        if mode == "fused" or self.partner is None:
            return self._kernel(ops, y_pred, y_true, weights, scale, grad)
        return self._outputs_value_and_grad(ops, y_pred, y_true, weights, scale, grad)

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
        # Outputs are probabilities that did not come from softmax: differentiate the clipped
        # normalized log directly.
        xp = ops.xp
        s = y_pred.sum(axis=-1, keepdims=True)
        p = y_pred / s
        inside = (p > EPSILON) & (p < 1 - EPSILON)
        pc = xp.clip(p, EPSILON, 1 - EPSILON)
        per_row = -(y_true * xp.log(pc)).sum(axis=-1)
        w = 1.0 if weights is None else weights
        if grad is not None:
            dp = -y_true / pc * inside
            # d p_j / d y_k = (delta_jk - p_j) / s
            grad[...] = (dp - (dp * p).sum(axis=-1, keepdims=True)) / s * \
                (scale * (w if weights is None else w[:, None]))
        return ops._total(per_row * w)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing, "axis": -1}


class SparseCategoricalCrossentropy(Loss):
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
        xp = ops.xp
        onehot = xp.zeros(y_pred.shape, np.float32)
        onehot[xp.arange(len(y_true)), y_true.reshape(-1)] = 1
        return CategoricalCrossentropy._outputs_value_and_grad(
            self, ops, y_pred, onehot, weights, scale, grad)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits, "ignore_class": None}


class BinaryCrossentropy(Loss):
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
        xp = ops.xp
        q = xp.clip(y_pred, EPSILON, 1 - EPSILON)
        inside = (y_pred > EPSILON) & (y_pred < 1 - EPSILON)
        per_row = -(y_true * xp.log(q) + (1 - y_true) * xp.log(1 - q)).mean(axis=-1)
        w = 1.0 if weights is None else weights
        if grad is not None:
            k = scale / y_pred.shape[-1] * (w if weights is None else w[:, None])
            grad[...] = k * inside * (q - y_true) / (q * (1 - q))
        return ops._total(per_row * w)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing, "axis": -1}


class MeanSquaredError(Loss):
    default_name = "mean_squared_error"

    def _kernel(self, ops, p, t, w, scale, grad):
        return ops.squared_error(p, t, w, scale, grad)


class MeanAbsoluteError(Loss):
    default_name = "mean_absolute_error"

    def _kernel(self, ops, p, t, w, scale, grad):
        return ops.absolute_error(p, t, w, scale, grad)


_BY_NAME = {
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy, "bce": BinaryCrossentropy,
    "mean_squared_error": MeanSquaredError, "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError, "mae": MeanAbsoluteError,
}
_CLASSES = {c.__name__: c for c in set(_BY_NAME.values())}


def _function(cls):
    def loss_fn(y_true, y_pred):
        return cls()(y_true, y_pred)
    loss_fn.__name__ = cls.default_name
    loss_fn.loss_class = cls
    return loss_fn


categorical_crossentropy = _function(CategoricalCrossentropy)
sparse_categorical_crossentropy = _function(SparseCategoricalCrossentropy)
binary_crossentropy = _function(BinaryCrossentropy)
mean_squared_error = mse = _function(MeanSquaredError)
mean_absolute_error = mae = _function(MeanAbsoluteError)


def get(identifier):
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
    if isinstance(identifier, dict):
        return deserialize(identifier)
    raise ValueError(f"Unsupported loss {identifier!r}: pass one of "
                     f"{', '.join(sorted(_BY_NAME))} or a fastnn.losses class")


def deserialize(config, custom_objects=None, path="loss"):
    """A loss from its serialized form (a name, or {"class_name": ..., "config": {...}}):
    every malformed entry raises naming its path under `path` and the value."""
    if isinstance(config, str):
        try:
            return get(config)
        except ValueError as exc:
            raise prefixed(exc, path) from None
    class_name, cfg = object_spec(config, path, "loss")
    cls = _CLASSES.get(class_name) or _BY_NAME.get(class_name.lower())
    if cls is None:
        fail_value(f"{path}.class_name", f"one of the losses {', '.join(sorted(_CLASSES))}",
                   class_name)
    check_kwargs(cls, cfg, f"{path}.config",
                 checks={"ignore_class": lambda v, p: expect_int(v, p, none_ok=True),
                         "axis": expect_int})
    try:
        return cls.from_config(cfg)
    except (TypeError, ValueError) as exc:
        raise prefixed(exc, f"{path}.config") from None


def serialize(loss):
    return {"module": "keras.losses", "class_name": type(loss).__name__,
            "config": loss.get_config(), "registered_name": None}
