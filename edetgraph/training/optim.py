"""SGD with momentum, gradient clipping and an exponential moving average of the weights,
written with raw TF ops so that they work the same under every tf.distribute strategy.

Updates go through ``strategy.extended.update`` from a ``merge_call`` (cross-replica
context), the way distributed optimizers apply them: every replica holds identical
all-reduced gradients, and each device copy of a mirrored variable is updated with its
local copy of the gradient. A ``ok`` flag turns a step into a no-op (non-finite loss).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import tensorflow as tf

EMA_SUFFIX = "/ExponentialMovingAverage"


def clip_gradients(grads: Sequence, clip_norm: float):
    """Official clipping: each gradient to norm `clip_norm`, then all to global norm
    `clip_norm`. Returns (clipped, global norm before clipping).

    Both clips are folded into one scale per tensor, computed from a single vector of
    norms: the same result as clip_by_norm then clip_by_global_norm, with a fraction of the
    ops (it matters for tracing time with hundreds of variables).
    """
    sq = tf.stack([tf.reduce_sum(tf.square(g)) for g in grads])
    norm = tf.sqrt(tf.reduce_sum(sq))
    if not clip_norm:
        return list(grads), norm
    norms = tf.sqrt(sq)
    per_tensor = clip_norm / tf.maximum(norms, clip_norm)           # min(1, c / n_i)
    after = tf.sqrt(tf.reduce_sum(tf.square(norms * per_tensor)))  # global norm after step 1
    scale = per_tensor * (clip_norm / tf.maximum(after, clip_norm))
    return [g * scale[i] for i, g in enumerate(grads)], norm


class SGDMomentum:
    """``accum = momentum * accum + grad; var -= lr * accum`` (TF's MomentumOptimizer).

    Create it inside ``strategy.scope()`` so its slots are mirrored like the variables.
    """

    def __init__(self, variables: Mapping[str, tf.Variable], momentum: float = 0.9):
        self.momentum = float(momentum)
        self.names = sorted(n for n, v in variables.items() if v.trainable)
        self.vars = [variables[n] for n in self.names]
        self.slots = {n: tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False,
                                     name=f"{n}/Momentum")
                      for n, v in zip(self.names, self.vars)}

    @staticmethod
    def _update(var, slot, grad, lr, momentum, ok):
        grad = tf.where(ok, grad, tf.zeros_like(grad))
        return tf.raw_ops.ResourceApplyMomentum(var=var.handle, accum=slot.handle, lr=lr,
                                                grad=grad, momentum=momentum)

    def gates(self, lr, ok):
        """(lr, momentum) to apply: a skipped step (ok false) is lr 0 and momentum 1, so
        nothing moves. Compute them in replica context."""
        return tf.where(ok, lr, 0.0), tf.where(ok, self.momentum, 1.0)

    def apply(self, strategy, grads: Sequence, lr, momentum, ok):
        """Apply `grads` (ordered as `self.vars`) with gated lr/momentum from `gates`;
        call in cross-replica context."""
        ops = [strategy.extended.update(v, self._update,
                                        args=(self.slots[n], g, lr, momentum, ok))
               for n, v, g in zip(self.names, self.vars, grads)]
        return tf.group(ops)


class EMA:
    """Shadow copies ``<name>/ExponentialMovingAverage`` of every model variable (weights
    and BN moving statistics, like the released checkpoints).

    decay at step s is ``min(decay, (1 + s) / (10 + s))`` (the official dynamic decay), so
    the average follows the weights closely early in training.
    """

    def __init__(self, variables: Mapping[str, tf.Variable], decay: float):
        self.decay = float(decay)
        self.names = sorted(variables)
        self.vars = [variables[n] for n in self.names]
        self.shadows = {n: tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False,
                                       name=n + EMA_SUFFIX)
                        for n, v in zip(self.names, self.vars)}

    def reset(self):
        """Shadows := current values (cross-replica context; after init or a weight load)."""
        for n, v in zip(self.names, self.vars):
            self.shadows[n].assign(v.read_value())

    @staticmethod
    def _update(shadow, var, rate):
        return shadow.assign_sub(rate * (shadow - tf.convert_to_tensor(var)))

    def rate(self, step, ok):
        """``1 - decay`` at `step` (0 when the step is skipped); replica context."""
        step = tf.cast(step, tf.float32)
        decay = tf.minimum(self.decay, (1.0 + step) / (10.0 + step))
        return tf.where(ok, 1.0 - decay, 0.0)

    def apply(self, strategy, rate):
        """``shadow -= rate * (shadow - var)`` for every variable; cross-replica context."""
        ops = [strategy.extended.update(self.shadows[n], self._update, args=(v, rate))
               for n, v in zip(self.names, self.vars)]
        return tf.group(ops)

    def values(self) -> dict:
        """{name: shadow variable} (what evaluation and export use)."""
        return dict(self.shadows)
