"""Learning rate: linear warm-up from ``warmup_init`` to the peak, then one of the official
decays (``lr_decay_method``): cosine (the default), stepwise, polynomial or constant.

Each schedule is ``value(step)`` (a Python reference, for logging and tests) and
``__call__(step)`` (a float32 tensor), built from the settings by :func:`make_schedule`.

Departures from the official TF2 schedules, each for the same reason:
- cosine and polynomial run over the steps *after* warm-up, so the rate is continuous at the
  end of warm-up. (The official evaluates them at the raw step, which drops the rate right
  after warm-up; negligible with 1 warm-up epoch out of 300, not in a short run.) The
  polynomial's progress is also clamped at 1, where the official's ``1 - step/total`` would
  go negative past the end (a NaN for a fractional power).
- constant warms up like the others (the official TF1 one, the only official constant, has
  no warm-up: set ``warmup_steps: 0`` for that).
Stepwise is the official one: the peak until the first drop, then x0.1, then x0.01.
"""
from __future__ import annotations

import math

import tensorflow as tf


class WarmupSchedule:
    """Linear warm-up over ``warmup_steps``, then the subclass's decay (``_after_value`` /
    ``_after``, given the step)."""

    def __init__(self, peak: float, warmup_init: float, warmup_steps: int, total_steps: int):
        if total_steps <= 0 or warmup_steps < 0:
            raise ValueError(f"need total_steps > 0 and warmup_steps >= 0, got "
                             f"{total_steps}, {warmup_steps}")
        self.peak, self.warmup_init = float(peak), float(warmup_init)
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)

    def value(self, step: float) -> float:
        """Python reference (for logging and tests)."""
        if step < self.warmup_steps:
            return self.warmup_init + (self.peak - self.warmup_init) * step / self.warmup_steps
        return self._after_value(step)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = max(1, self.warmup_steps)
        linear = self.warmup_init + (self.peak - self.warmup_init) * step / warm
        return tf.where(step < self.warmup_steps, linear, self._after(step))

    def _progress_value(self, step: float) -> float:
        """Fraction of the post-warm-up steps done, in [0, 1]."""
        span = max(1, self.total_steps - self.warmup_steps)
        return min(1.0, (step - self.warmup_steps) / span)

    def _progress(self, step):
        span = float(max(1, self.total_steps - self.warmup_steps))
        return tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)

    def _after_value(self, step: float) -> float:
        raise NotImplementedError

    def _after(self, step):
        raise NotImplementedError


class WarmupCosine(WarmupSchedule):
    """``lr(step)`` for a float or a tensor step; tensors give a float32 tensor."""

    def _after_value(self, step):
        return 0.5 * self.peak * (1.0 + math.cos(math.pi * self._progress_value(step)))

    def _after(self, step):
        return 0.5 * self.peak * (1.0 + tf.cos(math.pi * self._progress(step)))


class WarmupStepwise(WarmupSchedule):
    """The peak after warm-up, x0.1 from step ``first_drop``, x0.01 from ``second_drop``
    (a drop inside the warm-up takes effect when the warm-up ends)."""

    def __init__(self, peak, warmup_init, warmup_steps, total_steps, first_drop: int,
                 second_drop: int):
        super().__init__(peak, warmup_init, warmup_steps, total_steps)
        if not 0 <= first_drop <= second_drop:
            raise ValueError(f"need 0 <= first_drop <= second_drop, got {first_drop}, "
                             f"{second_drop}")
        self.first_drop, self.second_drop = int(first_drop), int(second_drop)

    def _after_value(self, step):
        mult = 1.0 if step < self.first_drop else 0.1 if step < self.second_drop else 0.01
        return self.peak * mult

    def _after(self, step):
        lr = tf.where(step < self.first_drop, self.peak, self.peak * 0.1)
        return tf.where(step < self.second_drop, lr, self.peak * 0.01)


class WarmupPolynomial(WarmupSchedule):
    """``peak * (1 - progress)^power`` after warm-up (progress 0 -> 1 at the last step)."""

    def __init__(self, peak, warmup_init, warmup_steps, total_steps, power: float):
        super().__init__(peak, warmup_init, warmup_steps, total_steps)
        if not power > 0:
            raise ValueError(f"need power > 0, got {power}")
        self.power = float(power)

    def _after_value(self, step):
        return self.peak * (1.0 - self._progress_value(step)) ** self.power

    def _after(self, step):
        return self.peak * tf.pow(1.0 - self._progress(step), self.power)


class WarmupConstant(WarmupSchedule):
    """The peak after warm-up."""

    def _after_value(self, step):
        return self.peak

    def _after(self, step):
        return tf.fill(tf.shape(step), self.peak)


def make_schedule(config, warmup_steps: int, total_steps: int,
                  examples_per_epoch: int | None = None) -> WarmupSchedule:
    """The schedule ``config.lr_decay_method`` names, peaking at the batch-scaled rate.
    `examples_per_epoch` turns the stepwise drops given in epochs into steps."""
    args = (config.scaled_learning_rate(), config.lr_warmup_init, warmup_steps, total_steps)
    method = config.lr_decay_method
    if method == "cosine":
        return WarmupCosine(*args)
    if method == "stepwise":
        return WarmupStepwise(*args, *config.lr_drop_steps(examples_per_epoch))
    if method == "polynomial":
        return WarmupPolynomial(*args, config.poly_lr_power)
    if method == "constant":
        return WarmupConstant(*args)
    raise ValueError(f"unknown lr_decay_method {method!r}")
