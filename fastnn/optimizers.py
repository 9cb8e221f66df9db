"""Optimizers with Keras 3's names, defaults and update rules (keras/src/optimizers/).

An optimizer updates ONE flat float32 buffer holding every trainable weight of the model (the
model's parameter arena), so a training step costs one fused kernel call whatever the number of
layers. Its slot variables (moments, accumulators) are flat buffers of the same length; for
saving they are sliced per weight and interleaved in Keras's order (m_0, v_0, m_1, v_1, ...)."""
import math
import re
import sys

import numpy as np

from . import lr_schedules as schedules
from ._config import (
    check_kwargs,
    expect_int,
    expect_number,
    fail_value,
    object_spec,
    prefixed,
    short,
)
from .backend import get_ops

# `from fastnn.optimizers.schedules import ExponentialDecay`, as from keras.optimizers.schedules
sys.modules[__name__ + ".schedules"] = schedules


class Optimizer:
    """The base class of optimizers: the learning rate, weight decay, gradient clipping and the
    weights' moving average.

    Each subclass applies its update rule to every trainable weight after each batch.

    Args:
        learning_rate: The learning rate: a float, or a
            `fastnn.optimizers.schedules.LearningRateSchedule` (or callable) of the step count.
            Defaults to `0.001`.
        weight_decay: If set, each weight is also decayed by `learning_rate * weight_decay * weight`
            each step (decoupled weight decay). Defaults to `None`.
        clipnorm: If set, each weight's gradient is rescaled so that its L2 norm is at most this.
            Defaults to `None`.
        clipvalue: If set, gradients are clipped to `[-clipvalue, clipvalue]`. Defaults to `None`.
        global_clipnorm: If set, all gradients are rescaled together so that their joint L2 norm is
            at most this (only one of the three clipping options may be set). Defaults to `None`.
        use_ema: Whether to keep an exponential moving average of the weights and write it into them
            every `ema_overwrite_frequency` steps and at the end of `fit`. Defaults to `False`.
        ema_momentum: Momentum of that moving average, in [0, 1]. Defaults to `0.99`.
        ema_overwrite_frequency: Steps between writes of the average into the weights; `None`: only
            at the end of training.
        loss_scale_factor: Only `None` (loss scaling is not supported yet).
        gradient_accumulation_steps: Only `None` (gradient accumulation is not supported yet).
        name: Name of the optimizer; `None`: made from the class name.
        lr: Legacy name of `learning_rate` (overrides it when given). Defaults to `None`.
        **kwargs: No other argument is accepted (an error names it).
    """
    # Slot variables as Keras creates them: each group is one add_optimizer_variables call,
    # whose variables Keras interleaves per weight (m_0, v_0, m_1, v_1); groups follow in turn.
    slot_groups = ()
    kind = None     # each optimizer's id of its update kernel (csrc/fastnn.h FNN_OPT_*)

    def __init__(self, learning_rate=0.001, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, lr=None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unexpected keyword argument(s) "
                            f"{sorted(kwargs)}")
        if lr is not None:
            learning_rate = lr
        if sum(v is not None for v in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError("Only one of clipnorm, clipvalue and global_clipnorm can be set")
        for arg, val in (("loss_scale_factor", loss_scale_factor),
                         ("gradient_accumulation_steps", gradient_accumulation_steps)):
            if val:
                raise ValueError(f"{type(self).__name__}: {arg} is not supported by fastnn yet")
        if use_ema and not 0 <= ema_momentum <= 1:
            raise ValueError(f"`ema_momentum` must be in the range [0, 1]. Received: "
                             f"ema_momentum={ema_momentum}")
        if ema_overwrite_frequency is not None and (
                isinstance(ema_overwrite_frequency, bool) or
                not isinstance(ema_overwrite_frequency, int) or ema_overwrite_frequency < 1):
            raise ValueError("`ema_overwrite_frequency` must be an integer >= 1 or None. "
                             f"Received: ema_overwrite_frequency={ema_overwrite_frequency}")
        # Keras's EMA of the weights: kept as the first slot group, written into the weights
        # every ema_overwrite_frequency steps and when fit ends (finalize_variable_values)
        self.use_ema, self.ema_momentum = bool(use_ema), ema_momentum
        self.ema_overwrite_frequency = ema_overwrite_frequency
        self.name = name or _snake(type(self).__name__)
        self.learning_rate = learning_rate
        self.weight_decay, self.clipnorm, self.clipvalue = weight_decay, clipnorm, clipvalue
        self.global_clipnorm = global_clipnorm
        self.iterations = 0
        self.slots = {}
        self._sizes = None

    # learning_rate: a float, or a schedule called with the iteration count.
    @property
    def learning_rate(self):
        lr = self._learning_rate
        return float(lr(self.iterations)) if callable(lr) else lr

    @learning_rate.setter
    def learning_rate(self, value):
        if isinstance(getattr(self, "_learning_rate", None), schedules.LearningRateSchedule):
            raise TypeError("This optimizer was created with a `LearningRateSchedule` object "
                            "as its `learning_rate` constructor argument, hence its learning "
                            "rate is not settable. If you need the learning rate to be "
                            "settable, you should instantiate the optimizer with a float "
                            "`learning_rate` argument.")
        if not callable(value):
            value = float(value)
            if not value > 0 and value != 0:
                raise ValueError(f"learning_rate must be a non-negative float, got {value!r}")
        self._learning_rate = value

    lr = learning_rate

    @property
    def built(self):
        return self._sizes is not None

    def build(self, sizes):
        """Create the slots for weights of the given sizes (laid out back to back)."""
        sizes = [int(s) for s in sizes]
        if sizes == self._sizes:
            return
        n = sum(sizes)
        ops = get_ops()
        self.slots = {name: ops.arena(n, self._slot_init(name))
                      for group in self.all_slot_groups() for name in group}
        self._sizes = sizes
        self.iterations = 0

    def active_slot_groups(self):
        return self.slot_groups

    def all_slot_groups(self):
        """The slot groups in Keras's order: the weights' moving average (use_ema) first, as
        the base optimizer's build makes it, then the update rule's."""
        return ((("average",),) if self.use_ema else ()) + tuple(self.active_slot_groups())

    def _slot_init(self, name):
        return 0.0

    def apply(self, params, grads, ranges=None):
        """One step on the flat parameter buffer, given the flat gradient buffer; with ranges,
        only on those (start, stop) spans of it: the rest took this step's plain_step_lr()
        step in place, as its layers computed their gradients."""
        ops = get_ops()
        lr = self.learning_rate
        scalars = self._scalars(lr, self.iterations + 1)
        if ranges is None:
            # clipping, weight decay and the update: one C call (csrc/optim.c)
            decay = np.float32(lr * self.weight_decay) if self.weight_decay else 0.0
            ops.optimizer_update(self.kind, params, grads, self.fused_slots(),
                                 np.array((decay,) + tuple(scalars), np.float32),
                                 *self.clipping(), self._sizes or [params.size])
        else:
            if self.plain_step_lr() is None:
                raise RuntimeError(f"{type(self).__name__}: a step by ranges needs a plain SGD "
                                   "step (plain_step_lr)")
            for start, stop in ranges:
                self._update(ops, params[start:stop], grads[start:stop], scalars)
        if self.use_ema:
            average = self.slots["average"]
            momentum = np.float32(self.ema_momentum if self.iterations else 0.0)
            average *= momentum
            average += (np.float32(1) - momentum) * params
            if self.ema_overwrite_frequency and \
                    (self.iterations + 1) % self.ema_overwrite_frequency == 0:
                params[...] = average
        self.iterations += 1

    def finalize_variable_values(self, params):
        """At the end of fit, as Keras: with use_ema, the weights become their average."""
        if self.use_ema and "average" in self.slots:
            params[...] = self.slots["average"]

    def snapshot(self):
        """A copy of the whole state (slots, iterations, step state), for restore()."""
        return ({name: slot.copy() for name, slot in self.slots.items()}, self.iterations,
                self._step_state())

    def restore(self, state):
        slots, self.iterations, step_state = state
        for name, slot in slots.items():
            self.slots[name][...] = slot
        self._set_step_state(step_state)

    def plain_step_lr(self):
        """The learning rate when this step is exactly w -= lr * g for every weight, with no
        state, decay or clipping (plain SGD), so that a layer can take it in place as it
        computes its gradient (Dense: inside the weight-gradient GEMM); else None."""
        return None

    # -- the fused path (fastnn/stack.py): the same scalars, precomputed for a run of steps -----
    scalars_vary = False    # whether _scalars depends on the step (not only on lr)

    def _scalars(self, lr, t):
        """The update kernel's per-step scalars at step t (1-based) with learning rate lr, in
        the kernel's argument order. Called exactly once per step (Nadam advances state)."""
        raise NotImplementedError

    def _step_state(self):
        return ()

    def _set_step_state(self, state):
        pass

    def fused_slots(self):
        """Slot buffers in the C kernel's order (csrc/optim.c), None for unused ones."""
        return ()

    def fused_scalars(self, n_steps):
        """(float32 array (n_steps, 1 + k): weight decay factor then _scalars per step, the
        state after each step). Leaves the optimizer unchanged; see fused_commit."""
        saved, base = self._step_state(), self.iterations
        rows, states = [], []
        if not self.scalars_vary and not callable(self._learning_rate):
            n_steps, repeat = 1, n_steps       # one row serves every step
        else:
            repeat = 1
        for j in range(n_steps):
            lr = self._learning_rate
            lr = float(lr(base + j)) if callable(lr) else lr
            decay = np.float32(lr * self.weight_decay) if self.weight_decay else 0.0
            rows.append((decay,) + tuple(self._scalars(lr, base + j + 1)))
            states.append(self._step_state())
        self._set_step_state(saved)
        scalars = np.array(rows, np.float32).reshape(n_steps, -1)
        return (np.repeat(scalars, repeat, axis=0), states * repeat)

    def fused_commit(self, states, updates):
        """Advance as if `updates` steps had run through apply()."""
        if updates > 0:
            self._set_step_state(states[updates - 1])
            self.iterations += updates

    def clipping(self):
        """(clip mode, limit) for the update kernels (Ops.CLIP_*): Keras clips only by a
        limit > 0 (base_optimizer._clip_gradients), clipnorm before global_clipnorm before
        clipvalue (at most one is set)."""
        for mode, limit in ((2, self.clipnorm), (3, self.global_clipnorm),
                            (1, self.clipvalue)):
            if limit is not None and limit > 0:
                return mode, float(limit)
        return 0, 0.0

    # -- state, in Keras's variable order ------------------------------------------------------
    def head_variables(self):
        """How many variables come before the slots: iterations and, unless a schedule gives
        it, the learning rate (Keras makes no variable of a schedule)."""
        return 1 if callable(self._learning_rate) else 2

    def variables(self):
        """[iterations, learning_rate (not with a schedule), then per weight its slots
        interleaved], as NumPy arrays."""
        out = [np.array(self.iterations, np.int64)]
        if self.head_variables() == 2:
            out.append(np.array(self.learning_rate, np.float32))
        for name, start, size in self._slot_order():
            out.append(get_ops().to_numpy(self.slots[name][start:start + size]).copy())
        return out

    def _slot_order(self):
        """(slot name, offset, size) in Keras's variable order."""
        order = []
        for group in self.all_slot_groups():
            start = 0
            for size in self._sizes or []:
                order.extend((name, start, size) for name in group)
                start += size
        return order

    def set_variables(self, values):
        order, head = self._slot_order(), self.head_variables()
        if len(values) != head + len(order):
            raise ValueError(f"{self.name}: expected {head + len(order)} optimizer variables, "
                             f"got {len(values)}")
        for (name, _start, size), value in zip(order, values[head:]):
            if np.size(value) != size:
                raise ValueError(f"{self.name}: slot {name!r} has {np.size(value)} values, "
                                 f"expected {size}")
        self.iterations = int(values[0])
        # The variable is float32; the exact rate comes from the config. Take the variable's only
        # where it disagrees (a rate changed during training and saved without a config).
        if head == 2 and np.float32(self._learning_rate) != np.float32(values[1]):
            self.learning_rate = float(values[1])
        ops = get_ops()
        for (name, start, size), value in zip(order, values[head:]):
            self.slots[name][start:start + size] = ops.asarray(np.asarray(value).reshape(-1))

    def count_params(self):
        return self.head_variables() + sum(s.size for s in self.slots.values())

    def get_config(self):
        lr = self._learning_rate
        if isinstance(lr, schedules.LearningRateSchedule):
            lr = schedules.serialize(lr)
        elif callable(lr):
            raise ValueError(f"{type(self).__name__}: learning_rate {lr!r} is a plain "
                             "callable, which cannot be saved: use a "
                             "fastnn.optimizers.schedules.LearningRateSchedule subclass")
        return {"name": self.name, "learning_rate": lr,
                "weight_decay": self.weight_decay, "clipnorm": self.clipnorm,
                "global_clipnorm": self.global_clipnorm, "clipvalue": self.clipvalue,
                "use_ema": self.use_ema, "ema_momentum": self.ema_momentum,
                "ema_overwrite_frequency": self.ema_overwrite_frequency,
                "loss_scale_factor": None, "gradient_accumulation_steps": None}

    @classmethod
    def from_config(cls, config):
        # Keras writes these keys in every optimizer config; drop them only where they are at
        # a value that changes nothing, so that one fastnn does not implement still raises.
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = schedules.deserialize(config["learning_rate"])
        if not config.get("use_ema"):
            for key in ("use_ema", "ema_momentum", "ema_overwrite_frequency"):
                config.pop(key, None)
        for key in ("loss_scale_factor", "gradient_accumulation_steps"):
            if key in config and config[key] is None:
                del config[key]
        return cls(**config)


def _snake(name):
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


class SGD(Optimizer):
    """Stochastic gradient descent, with optional momentum and Nesterov momentum.

    Without momentum: `w -= learning_rate * g`. With it: `v = momentum * v - learning_rate * g`,
    then `w += v` (Nesterov: `w += momentum * v - learning_rate * g`).

    Args:
        learning_rate: The learning rate: a float, or a
            `fastnn.optimizers.schedules.LearningRateSchedule` (or callable) of the step count.
            Defaults to `0.01`.
        momentum: Momentum in [0, 1] (0: plain gradient descent). Defaults to `0.0`.
        nesterov: Whether to apply Nesterov momentum. Defaults to `False`.
        **kwargs: Base optimizer arguments: `weight_decay`, `clipnorm`, `clipvalue`,
            `global_clipnorm`, `use_ema`, `ema_momentum`, `ema_overwrite_frequency`, `name`.

    Example:

    ```python
    model.compile(optimizer=fastnn.optimizers.SGD(learning_rate=0.1, momentum=0.9), loss="mse")
    ```
    """

    kind = 0

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be a float in [0, 1], got {momentum!r}")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def active_slot_groups(self):
        return (("momentum",),) if self.momentum != 0 else ()

    def _scalars(self, lr, t):
        return lr, self.momentum, float(self.nesterov)

    def fused_slots(self):
        return (self.slots.get("momentum"),)

    def _update(self, ops, w, g, s):
        ops.sgd_update(w, g, self.slots.get("momentum"), s[0], s[1], bool(s[2]))

    def plain_step_lr(self):
        if self.momentum or self.weight_decay or self.clipping()[0]:
            return None
        return self.learning_rate

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam: gradient steps scaled by running estimates of the gradients' first and second moments.

    Args:
        learning_rate: The learning rate: a float, or a
            `fastnn.optimizers.schedules.LearningRateSchedule` (or callable) of the step count.
            Defaults to `0.001`.
        beta_1: Decay rate of the first moment (the running mean of the gradients). Defaults to
            `0.9`.
        beta_2: Decay rate of the second moment (the running mean of the squared gradients).
            Defaults to `0.999`.
        epsilon: Small constant added to the denominator for numerical stability. Defaults to
            `1e-07`.
        amsgrad: Whether to use the AMSGrad variant (the maximum of the past second moments).
            Defaults to `False`.
        **kwargs: Base optimizer arguments: `weight_decay`, `clipnorm`, `clipvalue`,
            `global_clipnorm`, `use_ema`, `ema_momentum`, `ema_overwrite_frequency`, `name`.

    Example:

    ```python
    model.compile(optimizer=fastnn.optimizers.Adam(learning_rate=1e-3), loss="mse")
    ```
    """

    kind = 1
    scalars_vary = True

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1, self.beta_2, self.epsilon, self.amsgrad = beta_1, beta_2, epsilon, amsgrad

    def active_slot_groups(self):
        return (("momentum", "velocity"),) + ((("velocity_hat",),) if self.amsgrad else ())

    def _scalars(self, lr, t):
        alpha = lr * math.sqrt(1 - self.beta_2 ** t) / (1 - self.beta_1 ** t)
        return alpha, self.beta_1, self.beta_2, self.epsilon

    def fused_slots(self):
        return self.slots["momentum"], self.slots["velocity"], self.slots.get("velocity_hat")

    def _update(self, ops, w, g, s):
        ops.adam_update(w, g, *self.fused_slots(), *s)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "amsgrad": self.amsgrad}


class AdamW(Adam):
    """Adam with decoupled weight decay: each step also subtracts `learning_rate * weight_decay *
    w`.

    Args:
        learning_rate: The learning rate: a float, or a
            `fastnn.optimizers.schedules.LearningRateSchedule` (or callable) of the step count.
            Defaults to `0.001`.
        weight_decay: The decay rate of the weights. Defaults to `0.004`.
        beta_1: Decay rate of the first moment (the running mean of the gradients). Defaults to
            `0.9`.
        beta_2: Decay rate of the second moment (the running mean of the squared gradients).
            Defaults to `0.999`.
        epsilon: Small constant added to the denominator for numerical stability. Defaults to
            `1e-07`.
        amsgrad: Whether to use the AMSGrad variant (the maximum of the past second moments).
            Defaults to `False`.
        **kwargs: Base optimizer arguments: `weight_decay`, `clipnorm`, `clipvalue`,
            `global_clipnorm`, `use_ema`, `ema_momentum`, `ema_overwrite_frequency`, `name`.
    """
    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, amsgrad=False, **kwargs):
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, amsgrad=amsgrad, weight_decay=weight_decay, **kwargs)


class RMSprop(Optimizer):
    """RMSprop: gradient steps divided by the root of a running average of the squared gradients.

    Args:
        learning_rate: The learning rate: a float, or a
            `fastnn.optimizers.schedules.LearningRateSchedule` (or callable) of the step count.
            Defaults to `0.001`.
        rho: Decay rate of the running average of the squared gradients. Defaults to `0.9`.
        momentum: Momentum of the steps (0: none). Defaults to `0.0`.
        epsilon: Small constant added to the denominator for numerical stability. Defaults to
            `1e-07`.
        centered: Whether to divide by the estimated variance (subtracting the running mean of the
            gradients) instead of the raw second moment. Defaults to `False`.
        **kwargs: Base optimizer arguments: `weight_decay`, `clipnorm`, `clipvalue`,
            `global_clipnorm`, `use_ema`, `ema_momentum`, `ema_overwrite_frequency`, `name`.
    """

    kind = 2

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7,
                 centered=False, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.rho, self.momentum, self.epsilon, self.centered = rho, momentum, epsilon, centered

    def active_slot_groups(self):
        return (("velocity",),) + ((("momentum",),) if self.momentum > 0 else ()) + \
            ((("average_gradient",),) if self.centered else ())

    def _scalars(self, lr, t):
        return lr, self.rho, self.momentum, self.epsilon

    def fused_slots(self):
        s = self.slots
        return s["velocity"], s.get("momentum"), s.get("average_gradient")

    def _update(self, ops, w, g, s):
        ops.rmsprop_update(w, g, *self.fused_slots(), *s)

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum,
                "epsilon": self.epsilon, "centered": self.centered}


class Adagrad(Optimizer):
    """Adagrad: per-weight learning rates that shrink with the sum of that weight's squared
    gradients.

    Args:
        learning_rate: The learning rate: a float, or a
            `fastnn.optimizers.schedules.LearningRateSchedule` (or callable) of the step count.
            Defaults to `0.001`.
        initial_accumulator_value: Starting value of the accumulated squared gradients. Defaults to
            `0.1`.
        epsilon: Small constant added to the denominator for numerical stability. Defaults to
            `1e-07`.
        **kwargs: Base optimizer arguments: `weight_decay`, `clipnorm`, `clipvalue`,
            `global_clipnorm`, `use_ema`, `ema_momentum`, `ema_overwrite_frequency`, `name`.
    """

    kind = 3
    slot_groups = (("accumulator",),)

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7,
                 **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.initial_accumulator_value, self.epsilon = initial_accumulator_value, epsilon

    def _slot_init(self, name):
        return self.initial_accumulator_value

    def _scalars(self, lr, t):
        return lr, self.epsilon

    def fused_slots(self):
        return (self.slots["accumulator"],)

    def _update(self, ops, w, g, s):
        ops.adagrad_update(w, g, *self.fused_slots(), *s)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon,
                "initial_accumulator_value": self.initial_accumulator_value}


class Adadelta(Optimizer):
    """Adadelta: steps scaled by the ratio of running averages of past updates and of squared
    gradients.

    Args:
        learning_rate: The learning rate: a float, or a
            `fastnn.optimizers.schedules.LearningRateSchedule` (or callable) of the step count.
            Defaults to `0.001`.
        rho: Decay rate of the running averages. Defaults to `0.95`.
        epsilon: Small constant added to the denominator for numerical stability. Defaults to
            `1e-07`.
        **kwargs: Base optimizer arguments: `weight_decay`, `clipnorm`, `clipvalue`,
            `global_clipnorm`, `use_ema`, `ema_momentum`, `ema_overwrite_frequency`, `name`.
    """

    kind = 4
    slot_groups = (("accumulated_grad", "accumulated_delta_var"),)

    def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-7, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.rho, self.epsilon = rho, epsilon

    def _scalars(self, lr, t):
        return lr, self.rho, self.epsilon

    def fused_slots(self):
        return self.slots["accumulated_grad"], self.slots["accumulated_delta_var"]

    def _update(self, ops, w, g, s):
        ops.adadelta_update(w, g, *self.fused_slots(), *s)

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "epsilon": self.epsilon}


class Adamax(Optimizer):
    """Adamax: Adam with the infinity norm (a running maximum of the gradients' magnitudes) instead
    of the second moment.

    Args:
        learning_rate: The learning rate: a float, or a
            `fastnn.optimizers.schedules.LearningRateSchedule` (or callable) of the step count.
            Defaults to `0.001`.
        beta_1: Decay rate of the first moment (the running mean of the gradients). Defaults to
            `0.9`.
        beta_2: Decay rate of the running maximum. Defaults to `0.999`.
        epsilon: Small constant added to the denominator for numerical stability. Defaults to
            `1e-07`.
        **kwargs: Base optimizer arguments: `weight_decay`, `clipnorm`, `clipvalue`,
            `global_clipnorm`, `use_ema`, `ema_momentum`, `ema_overwrite_frequency`, `name`.
    """

    kind = 5
    scalars_vary = True

    slot_groups = (("momentum", "norm"),)

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def _scalars(self, lr, t):
        return lr / (1 - self.beta_1 ** t), self.beta_1, self.beta_2, self.epsilon

    def fused_slots(self):
        return self.slots["momentum"], self.slots["norm"]

    def _update(self, ops, w, g, s):
        ops.adamax_update(w, g, *self.fused_slots(), *s)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon}


class Lion(Optimizer):
    """Keras's Lion (Chen et al., 2023): the step is lr times the sign of an interpolation
    of momentum and gradient, so every weight moves by exactly lr (or 0).

    Args:
        learning_rate: The learning rate: a float, or a
            `fastnn.optimizers.schedules.LearningRateSchedule` (or callable) of the step count.
            Defaults to `0.001`.
        beta_1: Interpolation factor between the momentum and the gradient for the step's sign.
            Defaults to `0.9`.
        beta_2: Decay rate of the momentum. Defaults to `0.99`.
        **kwargs: Base optimizer arguments: `weight_decay`, `clipnorm`, `clipvalue`,
            `global_clipnorm`, `use_ema`, `ema_momentum`, `ema_overwrite_frequency`, `name`.
    """

    kind = 8
    slot_groups = (("momentum",),)

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.99, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        if beta_1 <= 0 or beta_1 > 1:
            raise ValueError("Argument `beta_1` must be in the [0, 1] range. Otherwise, the "
                             f"optimizer degenerates to SignSGD. Received: beta_1={beta_1}.")
        self.beta_1, self.beta_2 = beta_1, beta_2

    def _scalars(self, lr, t):
        return lr, self.beta_1, self.beta_2

    def fused_slots(self):
        return (self.slots["momentum"],)

    def _update(self, ops, w, g, s):
        ops.lion_update(w, g, *self.fused_slots(), *s)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2}


class Nadam(Optimizer):
    """Nadam: Adam with Nesterov momentum.

    Args:
        learning_rate: The learning rate: a float, or a
            `fastnn.optimizers.schedules.LearningRateSchedule` (or callable) of the step count.
            Defaults to `0.001`.
        beta_1: Decay rate of the first moment (the running mean of the gradients). Defaults to
            `0.9`.
        beta_2: Decay rate of the second moment (the running mean of the squared gradients).
            Defaults to `0.999`.
        epsilon: Small constant added to the denominator for numerical stability. Defaults to
            `1e-07`.
        **kwargs: Base optimizer arguments: `weight_decay`, `clipnorm`, `clipvalue`,
            `global_clipnorm`, `use_ema`, `ema_momentum`, `ema_overwrite_frequency`, `name`.
    """

    kind = 6
    scalars_vary = True

    slot_groups = (("momentum", "velocity"),)

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self._u_product = 1.0

    def build(self, sizes):
        was = self._sizes
        super().build(sizes)
        if was != self._sizes:
            self._u_product = 1.0

    def _mu(self, t):
        return self.beta_1 * (1.0 - 0.5 * 0.96 ** t)

    def _scalars(self, lr, t):
        mu_t, mu_t1 = self._mu(t), self._mu(t + 1)
        self._u_product *= mu_t
        return (lr, self.beta_1, self.beta_2, self.epsilon, mu_t, mu_t1, self._u_product,
                self._u_product * mu_t1, self.beta_2 ** t)

    def _step_state(self):
        return self._u_product

    def _set_step_state(self, state):
        self._u_product = state

    def fused_slots(self):
        return self.slots["momentum"], self.slots["velocity"]

    def _update(self, ops, w, g, s):
        ops.nadam_update(w, g, *self.fused_slots(), *s)

    def variables(self):
        # Keras creates u_product after the slots, so it comes last.
        return super().variables() + [np.array(self._u_product, np.float32)]

    def set_variables(self, values):
        values = list(values)
        self._u_product = float(values.pop())
        super().set_variables(values)

    def count_params(self):
        return super().count_params() + 1

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon}


class Ftrl(Optimizer):
    """FTRL-Proximal (Follow The Regularized Leader), with L1, L2 and L2-shrinkage regularization.

    Args:
        learning_rate: The learning rate: a float, or a
            `fastnn.optimizers.schedules.LearningRateSchedule` (or callable) of the step count.
            Defaults to `0.001`.
        learning_rate_power: Exponent of the learning rate's decay (<= 0; 0: a fixed rate). Defaults
            to `-0.5`.
        initial_accumulator_value: Starting value of the accumulators (>= 0). Defaults to `0.1`.
        l1_regularization_strength: L1 regularization strength (>= 0). Defaults to `0.0`.
        l2_regularization_strength: L2 regularization strength (>= 0). Defaults to `0.0`.
        l2_shrinkage_regularization_strength: L2 shrinkage strength (>= 0): an L2 penalty on the
            weights applied to the gradient, unlike the stabilization penalty above. Defaults to
            `0.0`.
        beta: The `beta` of FTRL's learning-rate denominator. Defaults to `0.0`.
        **kwargs: Base optimizer arguments: `weight_decay`, `clipnorm`, `clipvalue`,
            `global_clipnorm`, `use_ema`, `ema_momentum`, `ema_overwrite_frequency`, `name`.
    """

    kind = 7
    slot_groups = (("accumulator", "linear"),)

    def __init__(self, learning_rate=0.001, learning_rate_power=-0.5,
                 initial_accumulator_value=0.1, l1_regularization_strength=0.0,
                 l2_regularization_strength=0.0, l2_shrinkage_regularization_strength=0.0,
                 beta=0.0, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        for arg, val in (("initial_accumulator_value", initial_accumulator_value),
                         ("l1_regularization_strength", l1_regularization_strength),
                         ("l2_regularization_strength", l2_regularization_strength),
                         ("l2_shrinkage_regularization_strength",
                          l2_shrinkage_regularization_strength)):
            if val < 0:
                raise ValueError(f"`{arg}` needs to be positive or zero. Received: {arg}={val}.")
        if learning_rate_power > 0:
            raise ValueError("`learning_rate_power` needs to be negative or zero. Received: "
                             f"learning_rate_power={learning_rate_power}.")
        self.learning_rate_power = learning_rate_power
        self.initial_accumulator_value = initial_accumulator_value
        self.l1_regularization_strength = l1_regularization_strength
        self.l2_regularization_strength = l2_regularization_strength
        self.l2_shrinkage_regularization_strength = l2_shrinkage_regularization_strength
        self.beta = beta

    def _slot_init(self, name):
        return self.initial_accumulator_value if name == "accumulator" else 0.0

    def _scalars(self, lr, t):
        return (lr, self.learning_rate_power, self.l1_regularization_strength,
                self.l2_regularization_strength, self.l2_shrinkage_regularization_strength,
                self.beta)

    def fused_slots(self):
        return self.slots["accumulator"], self.slots["linear"]

    def _update(self, ops, w, g, s):
        ops.ftrl_update(w, g, *self.fused_slots(), *s)

    def get_config(self):
        return {**super().get_config(), "learning_rate_power": self.learning_rate_power,
                "initial_accumulator_value": self.initial_accumulator_value,
                "l1_regularization_strength": self.l1_regularization_strength,
                "l2_regularization_strength": self.l2_regularization_strength,
                "l2_shrinkage_regularization_strength":
                    self.l2_shrinkage_regularization_strength,
                "beta": self.beta}


_BY_NAME = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad,
            "adadelta": Adadelta, "adamax": Adamax, "nadam": Nadam, "ftrl": Ftrl,
            "lion": Lion}
_CLASSES = {c.__name__: c for c in _BY_NAME.values()}


def get(identifier):
    """The optimizer an identifier names.

    Args:
        identifier: A name such as `"adam"`, an `Optimizer`, or a config dict.

    Returns:
        An `Optimizer` (a new one, with default arguments, for a name).
    """
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier.lower()) or _CLASSES.get(identifier)
        if cls is None:
            raise ValueError(f"Unknown optimizer {identifier!r}. Valid names: "
                             f"{', '.join(sorted(_BY_NAME))}")
        return cls()
    if isinstance(identifier, type) and issubclass(identifier, Optimizer):
        return identifier()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    raise ValueError(f"Could not interpret optimizer {short(identifier)}")


def _learning_rate(value, path):
    if isinstance(value, dict):
        schedules.deserialize(value, path)      # checks it (names the key that is wrong)
        return
    expect_number(value, path)


def deserialize(config, custom_objects=None, path="optimizer"):
    """Keras's serialized optimizer {"class_name": "Adam", "config": {...}, ...} (or a name)
    -> the optimizer. Every key of its config must be an argument of that class, of the right
    type; errors name the key (as `path`.config.key) and the value. Only fastnn's own classes
    resolve; nothing named in `config` is imported.

    Args:
        config: A name or a config dict.
        custom_objects: A dict `{name: class}` for custom optimizers or schedules. Defaults to
            `None`.
        path: Where the config is, for error messages. Defaults to `"optimizer"`.

    Returns:
        An `Optimizer`.
    """
    if isinstance(config, str):
        try:
            return get(config)
        except ValueError as exc:
            raise prefixed(exc, path) from None
    class_name, cfg = object_spec(config, path, "optimizer")
    cls = _CLASSES.get(class_name) or _BY_NAME.get(class_name.lower())
    if cls is None:
        fail_value(f"{path}.class_name", f"one of the optimizers {', '.join(sorted(_CLASSES))}",
                   class_name)
    check_kwargs(cls, cfg, f"{path}.config", checks={
        "learning_rate": _learning_rate,
        "lr": lambda v, p: None if v is None else _learning_rate(v, p),
        "ema_overwrite_frequency": lambda v, p: expect_int(v, p, 1, none_ok=True),
        "gradient_accumulation_steps": lambda v, p: expect_int(v, p, 1, none_ok=True)})
    try:
        return cls.from_config(cfg)
    except (TypeError, ValueError) as exc:
        raise prefixed(exc, f"{path}.config") from None


def serialize(opt):
    """An optimizer's config as Keras writes it: `{"module", "class_name", "config",
    "registered_name"}`.

    Args:
        opt: The optimizer.

    Returns:
        A dict.
    """
    return {"module": "keras.optimizers", "class_name": type(opt).__name__,
            "config": opt.get_config(), "registered_name": None}
