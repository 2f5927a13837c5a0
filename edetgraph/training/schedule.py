"""Learning rate: linear warm-up from ``warmup_init`` to the peak, then cosine decay to 0.

The cosine runs over the steps *after* warm-up, so the rate is continuous at the end of
warm-up. (The official TF2 code evaluates the cosine at the raw step, which drops the rate
slightly right after warm-up; negligible with 1 warm-up epoch out of 300, not in a short run.)
"""
from __future__ import annotations

import math

import tensorflow as tf


class WarmupCosine:
    """``lr(step)`` for a float or a tensor step; tensors give a float32 tensor."""

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
        span = max(1, self.total_steps - self.warmup_steps)
        frac = min(1.0, (step - self.warmup_steps) / span)
        return 0.5 * self.peak * (1.0 + math.cos(math.pi * frac))

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = max(1, self.warmup_steps)
        linear = self.warmup_init + (self.peak - self.warmup_init) * step / warm
        span = float(max(1, self.total_steps - self.warmup_steps))
        frac = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
        cosine = 0.5 * self.peak * (1.0 + tf.cos(math.pi * frac))
        return tf.where(step < self.warmup_steps, linear, cosine)
