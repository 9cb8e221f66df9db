"""Learning-rate schedules, as keras.optimizers.schedules (fastnn.optimizers.schedules): an
optimizer given one as its learning_rate calls it with the step (its iteration count before
the update) on every step, in the general and in the fused C path alike. Keras's formulas,
computed in float32 as Keras computes them; Keras's names, arguments, errors and configs
(saved inside the optimizer's config)."""
import math

import numpy as np

from . import registry
from ._config import (
    check_kwargs,
    expect_bool,
    expect_list,
    expect_number,
    expect_str,
    fail_value,
    object_spec,
    prefixed,
)

_F = np.float32


class LearningRateSchedule:
    """The base class: a subclass defines __call__(step) and get_config()."""

    def __call__(self, step):
        raise NotImplementedError(f"Learning rate schedule '{type(self).__name__}' must "
                                  "override `__call__(self, step)`.")

    def get_config(self):
        raise NotImplementedError(f"Learning rate schedule '{type(self).__name__}' must "
                                  "override `get_config()` in order to be serializable.")

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _positive_steps(value, arg):
    if not value > 0:
        raise ValueError(f"Argument `{arg}` must be > 0. Received: {arg}={value}")


class ExponentialDecay(LearningRateSchedule):
    """initial_learning_rate * decay_rate ** (step / decay_steps) (the exponent floored with
    staircase=True).

    Args:
        initial_learning_rate: The learning rate at step 0.
        decay_steps: Number of steps the decay spans (> 0).
        decay_rate: The decay factor.
        staircase: Whether to floor `step / decay_steps` (the rate then changes in steps). Defaults
            to `False`.
        name: Name of the schedule. Defaults to `"ExponentialDecay"`.

    Example:

    ```python
    lr = fastnn.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1000, decay_rate=0.9)
    optimizer = fastnn.optimizers.SGD(learning_rate=lr)
    ```
    """

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name="ExponentialDecay"):
        _positive_steps(decay_steps, "decay_steps")
        self.initial_learning_rate, self.decay_steps = initial_learning_rate, decay_steps
        self.decay_rate, self.staircase, self.name = decay_rate, staircase, name

    def __call__(self, step):
        p = _F(step) / _F(self.decay_steps)
        if self.staircase:
            p = np.floor(p)
        return _F(self.initial_learning_rate) * _F(self.decay_rate) ** p

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase, "name": self.name}


class PiecewiseConstantDecay(LearningRateSchedule):
    """values[0] up to boundaries[0] (inclusive), values[i] up to boundaries[i], values[-1]
    after the last boundary.

    Args:
        boundaries: Increasing step numbers where the rate changes.
        values: The rates: one more than `boundaries`.
        name: Name of the schedule. Defaults to `"PiecewiseConstant"`.
    """

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        if len(boundaries) != len(values) - 1:
            raise ValueError(
                "The length of boundaries should be 1 less than the length of values. "
                f"Received: boundaries={boundaries} of length {len(boundaries)}, and "
                f"values={values} of length {len(values)}.")
        self.boundaries, self.values, self.name = boundaries, values, name

    def __call__(self, step):
        for boundary, value in zip(self.boundaries, self.values):
            if step <= boundary:
                return _F(value)
        return _F(self.values[-1])

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}


class PolynomialDecay(LearningRateSchedule):
    """From initial_learning_rate to end_learning_rate over decay_steps along (1 - p) ** power;
    cycle=True starts again with decay_steps stretched to the next multiple.

    Args:
        initial_learning_rate: The learning rate at step 0.
        decay_steps: Number of steps the decay spans (> 0).
        end_learning_rate: The rate reached at `decay_steps`. Defaults to `0.0001`.
        power: The exponent of the polynomial. Defaults to `1.0`.
        cycle: Whether to start again after `decay_steps`. Defaults to `False`.
        name: Name of the schedule. Defaults to `"PolynomialDecay"`.
    """

    def __init__(self, initial_learning_rate, decay_steps, end_learning_rate=0.0001, power=1.0,
                 cycle=False, name="PolynomialDecay"):
        _positive_steps(decay_steps, "decay_steps")
        self.initial_learning_rate, self.decay_steps = initial_learning_rate, decay_steps
        self.end_learning_rate, self.power, self.cycle = end_learning_rate, power, cycle
        self.name = name

    def __call__(self, step):
        start, end = _F(self.initial_learning_rate), _F(self.end_learning_rate)
        step, steps = _F(step), _F(self.decay_steps)
        if self.cycle:
            steps = steps * (_F(1) if step == 0 else np.ceil(step / _F(self.decay_steps)))
        else:
            step = min(step, steps)
        return (start - end) * (_F(1) - step / steps) ** _F(self.power) + end

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "end_learning_rate": self.end_learning_rate,
                "power": self.power, "cycle": self.cycle, "name": self.name}


class InverseTimeDecay(LearningRateSchedule):
    """initial_learning_rate / (1 + decay_rate * step / decay_steps) (floored with
    staircase=True).

    Args:
        initial_learning_rate: The learning rate at step 0.
        decay_steps: Number of steps the decay spans (> 0).
        decay_rate: The decay factor.
        staircase: Whether to floor `step / decay_steps` (the rate then changes in steps). Defaults
            to `False`.
        name: Name of the schedule. Defaults to `"InverseTimeDecay"`.
    """

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name="InverseTimeDecay"):
        _positive_steps(decay_steps, "decay_steps")
        self.initial_learning_rate, self.decay_steps = initial_learning_rate, decay_steps
        self.decay_rate, self.staircase, self.name = decay_rate, staircase, name

    def __call__(self, step):
        p = _F(step) / _F(self.decay_steps)
        if self.staircase:
            p = np.floor(p)
        return _F(self.initial_learning_rate) / (_F(1) + _F(self.decay_rate) * p)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase, "name": self.name}


def _cosine(fraction, alpha):
    decayed = _F(0.5) * (_F(1) + np.cos(_F(math.pi) * fraction))
    return (_F(1) - _F(alpha)) * decayed + _F(alpha)


class CosineDecay(LearningRateSchedule):
    """Half a cosine from the rate down to alpha times it over decay_steps; with
    warmup_target, first a linear warmup from initial_learning_rate to it over warmup_steps,
    then the cosine from warmup_target.

    Args:
        initial_learning_rate: The learning rate at step 0.
        decay_steps: Number of steps the decay spans (> 0).
        alpha: The final rate as a fraction of the initial one. Defaults to `0.0`.
        name: Name of the schedule. Defaults to `"CosineDecay"`.
        warmup_target: The rate reached at the end of the warmup, or `None` for no warmup.
        warmup_steps: Number of warmup steps. Defaults to `0`.
    """

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay",
                 warmup_target=None, warmup_steps=0):
        _positive_steps(decay_steps, "decay_steps")
        self.initial_learning_rate, self.decay_steps = initial_learning_rate, decay_steps
        self.alpha, self.name = alpha, name
        self.warmup_target, self.warmup_steps = warmup_target, warmup_steps

    def __call__(self, step):
        start, steps, step = _F(self.initial_learning_rate), _F(self.decay_steps), _F(step)
        if self.warmup_target is None:
            return start * _cosine(min(step, steps) / steps, self.alpha)
        target, warmup = _F(self.warmup_target), _F(self.warmup_steps)
        step = min(step, steps + warmup)
        if step < warmup:
            return (target - start) * (step / warmup) + start
        return target * _cosine((step - warmup) / steps, self.alpha)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "alpha": self.alpha, "name": self.name,
                "warmup_target": self.warmup_target, "warmup_steps": self.warmup_steps}


class CosineDecayRestarts(LearningRateSchedule):
    """SGDR: cosine decays restarting after first_decay_steps, each period t_mul times the
    last and each start m_mul times the last.

    Args:
        initial_learning_rate: The learning rate at step 0.
        first_decay_steps: Number of steps of the first period.
        t_mul: Each period's length as a multiple of the previous one's. Defaults to `2.0`.
        m_mul: Each period's initial rate as a multiple of the previous one's. Defaults to `1.0`.
        alpha: The final rate as a fraction of the initial one. Defaults to `0.0`.
        name: Name of the schedule. Defaults to `"SGDRDecay"`.
    """

    def __init__(self, initial_learning_rate, first_decay_steps, t_mul=2.0, m_mul=1.0,
                 alpha=0.0, name="SGDRDecay"):
        _positive_steps(first_decay_steps, "first_decay_steps")
        self.initial_learning_rate, self.first_decay_steps = initial_learning_rate, \
            first_decay_steps
        self._t_mul, self._m_mul, self.alpha, self.name = t_mul, m_mul, alpha, name

    def __call__(self, step):
        t_mul, m_mul = _F(self._t_mul), _F(self._m_mul)
        fraction = _F(step) / _F(self.first_decay_steps)
        if t_mul == 1:
            restart = np.floor(fraction)
            fraction = fraction - restart
        else:
            restart = np.floor(np.log(_F(1) - fraction * (_F(1) - t_mul)) / np.log(t_mul))
            done = (_F(1) - t_mul ** restart) / (_F(1) - t_mul)
            fraction = (fraction - done) / t_mul ** restart
        decayed = _F(0.5) * m_mul ** restart * (_F(1) + np.cos(_F(math.pi) * fraction))
        return _F(self.initial_learning_rate) * ((_F(1) - _F(self.alpha)) * decayed +
                                                 _F(self.alpha))

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "first_decay_steps": self.first_decay_steps, "t_mul": self._t_mul,
                "m_mul": self._m_mul, "alpha": self.alpha, "name": self.name}


_CLASSES = {cls.__name__: cls for cls in (
    ExponentialDecay, PiecewiseConstantDecay, PolynomialDecay, InverseTimeDecay, CosineDecay,
    CosineDecayRestarts)}


def serialize(schedule):
    """Keras's form of a schedule inside an optimizer's config.

    Args:
        schedule: The schedule.

    Returns:
        A dict.
    """
    builtin = type(schedule).__module__ == __name__
    return {"module": "keras.optimizers.schedules" if builtin else type(schedule).__module__,
            "class_name": type(schedule).__name__, "config": schedule.get_config(),
            "registered_name": None if builtin else registry.get_registered_name(schedule)}


def deserialize(config, path="learning_rate"):
    """A schedule from Keras's form: fastnn's classes, or a registered / custom_objects one
    (nothing named in a file is imported). Errors name `path` and the value.

    Args:
        config: The config dict.
        path: Where it is, for error messages. Defaults to `"learning_rate"`.

    Returns:
        A `LearningRateSchedule`.
    """
    class_name, cfg = object_spec(config, path, "learning-rate schedule")
    cls = registry.lookup(class_name, config.get("registered_name")) or \
        _CLASSES.get(class_name)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, LearningRateSchedule)):
        fail_value(f"{path}.class_name", f"one of the schedules {', '.join(sorted(_CLASSES))} "
                   "or a registered LearningRateSchedule subclass (register it with "
                   "@fastnn.saving.register_keras_serializable())", class_name)
    if cls in _CLASSES.values():
        check_kwargs(cls, cfg, f"{path}.config")
        for key, value in cfg.items():
            where = f"{path}.config.{key}"
            if key == "name":
                expect_str(value, where)
            elif key in ("staircase", "cycle"):
                expect_bool(value, where)
            elif key in ("boundaries", "values"):
                for i, v in enumerate(expect_list(value, where)):
                    expect_number(v, f"{where}[{i}]")
            else:
                expect_number(value, where, none_ok=key == "warmup_target")
    try:
        return cls.from_config(cfg)
    except (TypeError, ValueError) as exc:
        raise prefixed(exc, f"{path}.config") from None
