"""Stateless random numbers for the augmentations: one seed per example, one stream per draw.

The pipeline gives every record its own stateless seed, so an example's augmentation does
not depend on which thread decodes it. `Rng` turns that seed into as many independent
draws as the ops need: each call folds a new counter into the seed (at trace time, so the
graph is fixed), and `fold` gives a child stream for per-box draws inside a loop.
"""
from __future__ import annotations

import tensorflow as tf


class Rng:
    """Draws from a stateless seed [2] (int64 or int32); every call uses a fresh sub-seed."""

    def __init__(self, seed):
        self.seed = tf.cast(seed, tf.int64)
        self._count = 0

    def _next(self):
        self._count += 1
        return tf.random.experimental.stateless_fold_in(self.seed, self._count)

    def fold(self, value) -> "Rng":
        """A child stream keyed by `value` (e.g. a loop index)."""
        return Rng(tf.random.experimental.stateless_fold_in(self._next(), value))

    def uniform(self, shape=(), minval=0.0, maxval=1.0, dtype=tf.float32):
        """Uniform in [minval, maxval) (integers: maxval excluded, as tf.random.uniform)."""
        return tf.random.stateless_uniform(list(shape), self._next(), minval, maxval, dtype)

    def normal(self, shape=(), mean=0.0, stddev=1.0):
        return tf.random.stateless_normal(list(shape), self._next(), mean, stddev)

    def chance(self, prob) -> tf.Tensor:
        """True with probability `prob` (a scalar bool tensor)."""
        return self.uniform() < prob

    def sign(self) -> tf.Tensor:
        """+1.0 or -1.0 with equal odds: the official magnitudes are negated half the time."""
        return tf.where(self.chance(0.5), 1.0, -1.0)

    def shuffle(self, values):
        return tf.random.experimental.stateless_shuffle(values, self._next())
