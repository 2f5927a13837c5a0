"""``positives_momentum``: the loss normaliser as a moving average over steps.

The detection loss is divided by the positive-anchor count of the global batch plus one
(`edetgraph.task.losses.global_normalizer`), which jumps from batch to batch. The official
trainers can divide by a moving average of it instead, for stability. This is TF1's
zero-debiased average (``assign_moving_average(..., zero_debias=True)`` in det_model_fn.py):

    biased_t = m * biased_{t-1} + (1 - m) * n_t        (biased_0 = 0)
    normaliser_t = biased_t / (1 - m^t)

The official TF2 trainer uses the biased average itself, started at 0, so its first steps
divide by a fraction of the count (10x the loss at step 1 with m = 0.9): the debiased form is
the same average without that start-up. It averages the global count (each replica sees the
same value), as everything in edetgraph's step; a skipped (non-finite) step leaves it alone.
"""
from __future__ import annotations

import tensorflow as tf


class MovingNormalizer:
    """The averaged normaliser's state (two variables, checkpointed with the run); create it
    inside ``strategy.scope()``."""

    def __init__(self, momentum: float):
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"need 0 < momentum < 1, got {momentum}")
        self.momentum = float(momentum)
        self.biased = tf.Variable(0.0, trainable=False, name="moving_normalizer")
        self.count = tf.Variable(0, dtype=tf.int64, trainable=False,
                                 name="moving_normalizer_count")
        self.variables = {"biased": self.biased, "count": self.count}

    def average(self, normalizer):
        """(normaliser to divide by, new biased average to `apply`) from this step's
        normaliser; replica context."""
        m = self.momentum
        biased = self.biased - (self.biased - normalizer) * (1.0 - m)
        t = tf.cast(self.count + 1, tf.float32)
        return biased / (1.0 - tf.pow(m, t)), biased

    def apply(self, strategy, biased, ok):
        """Store the new average when the step is applied; cross-replica context."""
        def store(var, value, ok):
            return var.assign(tf.where(ok, value, var))

        def count(var, ok):
            return var.assign_add(tf.cast(ok, tf.int64))

        return tf.group(strategy.extended.update(self.biased, store, args=(biased, ok)),
                        strategy.extended.update(self.count, count, args=(ok,)))
