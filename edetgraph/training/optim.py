"""SGD with momentum, Adam / AdamW, gradient clipping, variable freezing and an exponential
moving average of the weights, written with raw TF ops so that they work the same under
every tf.distribute strategy.

Updates go through ``strategy.extended.update`` from a ``merge_call`` (cross-replica
context), the way distributed optimizers apply them: every replica holds identical
all-reduced gradients, and each device copy of a mirrored variable is updated with its
local copy of the gradient. A ``ok`` flag turns a step into a no-op (non-finite loss).
"""
from __future__ import annotations

import functools
import re
from typing import Mapping, Sequence

import tensorflow as tf

from edetgraph.task.losses import DECAY_PATTERN
from edetgraph.training.config import TrainConfigError

EMA_SUFFIX = "/ExponentialMovingAverage"
# The official TF2 Adam is Keras' with beta_1 = momentum: beta_2 and epsilon are Keras'
# defaults (the TF1 trainer's tf.train.AdamOptimizer would use epsilon 1e-8, beta_1 0.9).
ADAM_BETA_2, ADAM_EPSILON = 0.999, 1e-7


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
    checkpoint_key = "momentum"    # the name its slots have in a training checkpoint

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


class Adam:
    """Adam as the official TF2 trainer builds it (Keras' Adam, ``beta_1`` = the settings'
    momentum, ``beta_2`` 0.999, ``epsilon`` 1e-7, bias-corrected by the count of applied
    steps); with ``weight_decay`` > 0 it is AdamW (Loshchilov & Hutter's decoupled decay, in
    the convention of PyTorch's and Keras 3's AdamW): before the Adam step each variable in
    `decayed` does ``var -= lr * weight_decay * var``, and the L2 loss term is left out.

    Same interface as :class:`SGDMomentum`; create it inside ``strategy.scope()``.
    """
    checkpoint_key = "adam"

    def __init__(self, variables: Mapping[str, tf.Variable], beta_1: float = 0.9,
                 beta_2: float = ADAM_BETA_2, epsilon: float = ADAM_EPSILON,
                 weight_decay: float = 0.0, decayed: Sequence[str] = ()):
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self.weight_decay, self.decayed = float(weight_decay), set(decayed)
        self.names = sorted(n for n, v in variables.items() if v.trainable)
        self.vars = [variables[n] for n in self.names]
        # TF1's slot names: <var>/Adam holds the first moment, <var>/Adam_1 the second.
        self.m = {n: tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name=f"{n}/Adam")
                  for n, v in zip(self.names, self.vars)}
        self.v = {n: tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False,
                                 name=f"{n}/Adam_1") for n, v in zip(self.names, self.vars)}
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="Adam/iterations")
        self.slots = {**{f"{n}/Adam": s for n, s in self.m.items()},
                      **{f"{n}/Adam_1": s for n, s in self.v.items()},
                      "iterations": self.iterations}

    @staticmethod
    def _update(var, m, v, grad, lr, betas, ok, epsilon, decay):
        grad = tf.where(ok, grad, tf.zeros_like(grad))
        beta_1, beta_2, beta_1_power, beta_2_power = betas
        decayed = [var.assign_sub(var * (lr * decay))] if decay else []
        with tf.control_dependencies(decayed):
            return tf.raw_ops.ResourceApplyAdam(
                var=var.handle, m=m.handle, v=v.handle, beta1_power=beta_1_power,
                beta2_power=beta_2_power, lr=lr, beta1=beta_1, beta2=beta_2, epsilon=epsilon,
                grad=grad)

    def gates(self, lr, ok):
        """(lr, betas) to apply; replica context. A skipped step (ok false) is lr 0 and
        betas 1 with a zero gradient, so neither the weights nor the moments move."""
        t = tf.cast(self.iterations + 1, tf.float32)    # this step, counting applied ones
        powers = (tf.pow(self.beta_1, t), tf.pow(self.beta_2, t))
        betas = (tf.where(ok, self.beta_1, 1.0), tf.where(ok, self.beta_2, 1.0))
        return tf.where(ok, lr, 0.0), betas + powers

    def apply(self, strategy, grads: Sequence, lr, betas, ok):
        """Apply `grads` (ordered as `self.vars`) with the gated lr/betas from `gates`;
        call in cross-replica context."""
        ops = []
        for n, var, g in zip(self.names, self.vars, grads):
            fn = functools.partial(self._update, epsilon=self.epsilon,
                                   decay=self.weight_decay if n in self.decayed else 0.0)
            ops.append(strategy.extended.update(var, fn, args=(self.m[n], self.v[n], g, lr,
                                                               betas, ok)))
        with tf.control_dependencies(ops):
            count = strategy.extended.update(
                self.iterations, lambda it, ok: it.assign_add(tf.cast(ok, tf.int64)), args=(ok,))
        return tf.group(ops + [count])


def frozen_names(variables: Mapping[str, tf.Variable], expr: str | None,
                 where: str | None = None) -> set:
    """The trainable variables `expr` (``var_freeze_expr``) freezes: ``re.match`` on the
    name, from its start, as the official does (names are the checkpoint names, without
    the official's ``:0`` suffix). BN moving statistics are not trainable, so they keep
    following the batches, as in the official trainer. Matching nothing, or everything,
    is a TrainConfigError."""
    if not expr:
        return set()
    trainable = sorted(n for n, v in variables.items() if v.trainable)
    frozen = {n for n in trainable if re.match(expr, n)}
    if not frozen or len(frozen) == len(trainable):
        what = "no" if not frozen else "every"
        raise TrainConfigError(
            f"{where or '<train config>'}: var_freeze_expr: {expr!r} matches {what} trainable "
            f"variable (of {len(trainable)}; matched from the start of names such as "
            f"{trainable[0]!r}, no ':0' suffix)")
    return frozen


def make_optimizer(config, variables: Mapping[str, tf.Variable]):
    """The optimizer ``config.optimizer`` names, over `variables` (the ones trained)."""
    if config.optimizer == "sgd":
        return SGDMomentum(variables, config.momentum)
    if config.optimizer not in ("adam", "adamw"):
        raise ValueError(f"unknown optimizer {config.optimizer!r}")
    decay = config.weight_decay if config.optimizer == "adamw" else 0.0
    # The variables the L2 term would decay (trainable kernels), as in decayed_variables.
    decayed = [n for n, v in variables.items() if v.trainable and DECAY_PATTERN.match(n)]
    return Adam(variables, beta_1=config.momentum, weight_decay=decay, decayed=decayed)


class EMA:
    """Shadow copies ``<name>/ExponentialMovingAverage`` of every model variable (weights
    and BN moving statistics, like the released checkpoints).

    decay at step s is ``min(decay, (1 + s) / (10 + s))`` (the official dynamic decay), so
    the average follows the weights closely early in training. Variables in `frozen` keep
    a shadow (exports need every weight) that `apply` leaves alone: it stays equal to them.
    """

    def __init__(self, variables: Mapping[str, tf.Variable], decay: float, frozen=()):
        self.decay = float(decay)
        self.names = sorted(variables)
        self.vars = [variables[n] for n in self.names]
        self.shadows = {n: tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False,
                                       name=n + EMA_SUFFIX)
                        for n, v in zip(self.names, self.vars)}
        self.updated = [(n, v) for n, v in zip(self.names, self.vars) if n not in frozen]

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
               for n, v in self.updated]
        return tf.group(ops)

    def values(self) -> dict:
        """{name: shadow variable} (what evaluation and export use)."""
        return dict(self.shadows)
