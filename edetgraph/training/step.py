"""The training state (model, optimizer, EMA, step) and the compiled multi-step function.

One host call runs ``num_steps`` steps in a ``tf.range`` loop over the distributed iterator
(what TPUs need to stay busy). Each replica computes its loss with the *global* positive
count, gradients are summed over replicas, clipped, checked for NaN/Inf, then applied in
cross-replica context together with the EMA and the step counter. A non-finite step is
never applied: with ``nan_policy: stop`` the loop ends there and reports it, with ``skip``
it goes on and counts it. With batch norm synchronised across replicas (nn/layers.py),
N replicas thus take the step one device takes on the global batch.

``replica_reduction`` (settings) selects the official trainers' rule instead. What they do,
for R cores, core r holding P_r positives and D_r its images' summed detection loss:

- TPUEstimator (det_model_fn.py, the released checkpoints): the core's loss is
  ``D_r / (P_r + 1) + L2`` (its own positives; the whole weight decay on every core);
  CrossShardOptimizer multiplies it by 1/R before the gradient; the core clips that
  gradient alone (each tensor to norm c, then all to global norm c); the optimizer sums
  the cores' clipped gradients. Applied: ``sum_r clip_c(grad(loss_r) / R)``. (Edetgraph's
  ``per_replica``.)
- Keras (tf2/train.py, train_lib.py): its input pipeline counts the positives of the
  global batch before Keras splits it, so each core normalises by ``P / R + 1`` (P over
  all cores): ``loss_r = D_r / (P / R + 1) + L2``; per-core clipping as above, no 1/R,
  and the Keras optimizer all-reduces with SUM. Applied: ``sum_r clip_c(grad(loss_r))``,
  about R times the step of one device, with R weight decays. (``per_replica_sum``.)

Both keep batch norm synchronised across cores (their TPU batch norm), as here.

Mixed precision (``edetgraph.training.precision``): the model computes in the settings'
dtype, everything here stays float32; ``mixed_float16`` scales the loss and unscales the
gradients, and a step whose gradients overflowed (with a finite loss, scale above 1) is
skipped and halves the scale, without counting as a NaN/Inf step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from edetgraph.nn.model import build_model
from edetgraph.task.anchors import spec_anchors
from edetgraph.task.losses import (
    LossConfig,
    decayed_variables,
    detection_loss,
    global_normalizer,
    weight_decay_loss,
)
from edetgraph.training.normalizer import MovingNormalizer
from edetgraph.training.optim import (
    EMA,
    Adam,
    SGDMomentum,
    clip_gradients,
    frozen_names,
    make_optimizer,
)
from edetgraph.training.precision import LossScale, compute_for
from edetgraph.training.schedule import WarmupSchedule, make_schedule

SUMMED = ("loss", "cls_loss", "box_loss", "box_iou_loss", "reg_l2_loss")
SAME = ("lr", "grad_norm", "ok")


@dataclass
class TrainState:
    spec: object
    model: object
    variables: dict          # name -> variable (official checkpoint names)
    optimizer: SGDMomentum | Adam
    ema: EMA | None
    step: tf.Variable        # int64, steps taken (skipped ones included)
    schedule: WarmupSchedule
    loss_config: LossConfig
    anchors: np.ndarray
    decayed: list = None     # variables in the L2 loss term (not frozen; none for AdamW)
    normalizer: MovingNormalizer | None = None   # positives_momentum's average, when set
    loss_scale: LossScale | None = None    # mixed_float16 only


def build_state(spec, config, total_steps: int, warmup_steps: int, seed: int = 0,
                examples_per_epoch: int | None = None) -> TrainState:
    """Create model, optimizer slots, EMA and step; call inside ``strategy.scope()``.
    `examples_per_epoch` turns stepwise lr drops given in epochs into steps."""
    compute = compute_for(config)
    model = build_model(spec, seed=seed, compute=compute)
    variables = model.variables_by_name()
    # var_freeze_expr: frozen variables get no update, no decay and no EMA change.
    frozen = frozen_names(variables, config.var_freeze_expr, config.source)
    trained = {n: v for n, v in variables.items() if n not in frozen}
    optimizer = make_optimizer(config, trained)
    ema = EMA(variables, config.ema_decay, frozen) if config.ema_decay > 0 else None
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    schedule = make_schedule(config, warmup_steps, total_steps, examples_per_epoch)
    decayed = [] if config.optimizer == "adamw" else decayed_variables(trained)
    normalizer = (MovingNormalizer(config.positives_momentum) if config.positives_momentum
                  else None)
    loss_config = LossConfig(spec.num_classes, config.focal_alpha, config.focal_gamma,
                             config.label_smoothing, config.huber_delta, config.box_loss_weight,
                             config.iou_loss, config.iou_loss_weight)
    anchors = spec_anchors(spec)
    loss_scale = LossScale() if compute.dtype == "float16" else None
    return TrainState(spec, model, variables, optimizer, ema, step, schedule, loss_config, anchors,
                      decayed, normalizer, loss_scale)


def replica_scales(reduction: str, replicas: int) -> tuple[float, float]:
    """(detection-loss factor, weight-decay factor) of one replica's loss under
    `reduction` (see the module docstring)."""
    if reduction == "global":
        # Each replica adds its share, so the replicas' sum is the decay term once.
        return 1.0, 1.0 / replicas
    if reduction == "per_replica":
        return 1.0 / replicas, 1.0 / replicas
    if reduction == "per_replica_sum":
        return 1.0, 1.0
    raise ValueError(f"unknown replica_reduction {reduction!r}")


def _make_compute(state: TrainState, config, replicas: int, jit_compile: bool):
    """Forward, loss and gradients of one replica's batch (the part XLA compiles)."""
    decayed = state.decayed
    levels = list(state.spec.levels)
    anchors = state.anchors if state.loss_config.iou_loss else None
    det_scale, decay_scale = replica_scales(config.replica_reduction, replicas)

    def compute(images, labels, normalizer):
        with tf.GradientTape() as tape:
            cls, box = state.model(images, training=True)
            parts = detection_loss(cls, box, labels, state.loss_config, levels, normalizer,
                                   anchors)
            if det_scale != 1.0:   # per_replica: the parts are reported as the cores' mean
                parts = {k: v * det_scale for k, v in parts.items()}
            parts["reg_l2_loss"] = weight_decay_loss(decayed, config.weight_decay) * decay_scale
            loss = parts["det_loss"] + parts["reg_l2_loss"]
            if state.loss_scale is not None:   # float16: small gradients kept from underflow
                parts["loss_scale"] = scale = tf.convert_to_tensor(state.loss_scale.scale)
                grads = tape.gradient(loss * scale, state.optimizer.vars)
                return loss, parts, [g / scale for g in grads]
        return loss, parts, tape.gradient(loss, state.optimizer.vars)

    # no autograph: straight-line TF code (converting it only costs time, and autograph once
    # resolved a call in it to another converted function of the losses module)
    return tf.function(compute, jit_compile=True, autograph=False) if jit_compile else compute


def _make_apply(state: TrainState, skip_bad: bool):
    @tf.autograph.experimental.do_not_convert
    def apply(strategy, grads, lr, momentum, ema_rate, ok, overflow, biased=None):
        update = state.optimizer.apply(strategy, grads, lr, momentum, ok)
        if state.normalizer is not None:
            update = tf.group(update, state.normalizer.apply(strategy, biased, ok))
        with tf.control_dependencies([update]):
            ema = state.ema.apply(strategy, ema_rate) if state.ema else tf.no_op()
            if state.loss_scale is not None:
                ema = tf.group(ema, state.loss_scale.update(strategy, ok))
        with tf.control_dependencies([ema]):
            local_ok = strategy.experimental_local_results(ok)[0]
            if overflow is not None:    # an overflowed float16 step counts, as in Keras
                local_ok |= strategy.experimental_local_results(overflow)[0]
            counted = tf.logical_or(local_ok, skip_bad)
            return state.step.assign_add(tf.cast(counted, tf.int64))
    return apply


def make_replica_step(state: TrainState, config, replicas: int, jit_compile: bool = False,
                      inject_nan_at: int | None = None):
    """The per-replica step: returns ({SUMMED: local share}, {SAME: value})."""
    compute = _make_compute(state, config, replicas, jit_compile)
    apply = _make_apply(state, config.nan_policy == "skip")
    per_core = config.replica_reduction != "global"

    # Straight-line TF code: autograph would only spend seconds converting the model.
    @tf.autograph.experimental.do_not_convert
    def replica_step(batch):
        ctx = tf.distribute.get_replica_context()
        normalizer = _normalizer(config.replica_reduction, batch["num_positives"], replicas)
        extra = {}
        if state.normalizer is not None:    # positives_momentum (global reduction only)
            normalizer, extra["biased"] = state.normalizer.average(normalizer)
        loss, parts, grads = compute(batch["image"], batch, normalizer)
        if inject_nan_at is not None:   # fault injection for tests: a NaN loss from that step
            bad = state.step + 1 >= inject_nan_at
            loss += tf.where(bad, float("nan"), 0.0)
        reduce = _clip_then_sum if per_core else _sum_then_clip
        grads, norm, ok, loss_ok = reduce(ctx, grads, loss, config.clip_norm, replicas)
        overflow = _overflow(parts, loss_ok, ok)
        lr = state.schedule(state.step)
        gated_lr, momentum = state.optimizer.gates(lr, ok)
        ema_rate = state.ema.rate(state.step, ok) if state.ema else 0.0
        ctx.merge_call(apply, args=(grads, gated_lr, momentum, ema_rate, ok, overflow),
                       kwargs=extra)
        summed = {"loss": loss, **{k: parts[k] for k in SUMMED if k != "loss"}}
        counts = ok if overflow is None else ok | overflow   # for the NaN/Inf policy
        same = {"lr": lr, "grad_norm": norm, "ok": tf.cast(counts, tf.float32)}
        if overflow is not None:
            same["loss_scale"] = parts["loss_scale"]
        return summed, same

    return replica_step


def _normalizer(reduction: str, num_positives, replicas: int):
    """What one replica divides its detection loss by (see the module docstring)."""
    if reduction == "per_replica":      # this core's positives only
        return tf.reduce_sum(tf.cast(num_positives, tf.float32)) + 1.0
    normalizer = global_normalizer(num_positives)
    if reduction == "per_replica_sum":  # the global batch's positives per core
        return (normalizer - 1.0) / replicas + 1.0
    return normalizer


def _sum_then_clip(ctx, grads, loss, clip_norm: float, replicas: int):
    """One device's step: the replicas' gradients summed, then clipped once. Returns
    (grads, norm before clipping, ok, whether the loss is finite)."""
    total = loss
    if replicas > 1:
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, loss)
    grads, norm = clip_gradients(grads, clip_norm)
    loss_ok = tf.math.is_finite(total)
    return grads, norm, loss_ok & tf.math.is_finite(norm), loss_ok


def _clip_then_sum(ctx, grads, loss, clip_norm: float, replicas: int):
    """The official trainers' order: this replica's gradients clipped alone, then summed
    over replicas. Returns (grads, this replica's norm before clipping, ok, whether the
    loss is finite), the flags the same on every replica (so that all of them apply or skip
    the step together)."""
    grads, norm = clip_gradients(grads, clip_norm)
    health = tf.stack([loss, norm])
    if replicas > 1:
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        health = ctx.all_reduce(tf.distribute.ReduceOp.SUM, health)
    return (grads, norm, tf.reduce_all(tf.math.is_finite(health)),
            tf.math.is_finite(health[0]))


def _overflow(parts: dict, loss_ok, ok):
    """Whether a float16 step's gradients overflowed: finite loss, non-finite gradients,
    loss scale above 1 (None without loss scaling). Skipped (the scale halves) without
    counting as a NaN/Inf step; at scale 1 there is nothing left to lower, and it is one."""
    if "loss_scale" not in parts:
        return None
    return ~ok & loss_ok & (parts["loss_scale"] > 1.0)


def make_train_function(strategy, state: TrainState, config, jit_compile: bool = False,
                        inject_nan_at: int | None = None):
    """``fn(iterator, num_steps) -> (metrics dict, steps run, steps skipped)``; metrics are
    those of the last step run, reduced over replicas."""
    replicas = strategy.num_replicas_in_sync
    replica_step = make_replica_step(state, config, replicas, jit_compile, inject_nan_at)
    stop_on_bad = config.nan_policy == "stop"
    sum_op, mean_op = tf.distribute.ReduceOp.SUM, tf.distribute.ReduceOp.MEAN

    @tf.function
    def train_steps(iterator, num_steps):
        metrics = {k: tf.constant(0.0) for k in SUMMED + SAME}
        if state.loss_scale is not None:
            metrics["loss_scale"] = tf.constant(0.0)
        metrics["ok"] = tf.constant(1.0)
        done, skipped = tf.constant(0), tf.constant(0)
        for _ in tf.range(num_steps):
            summed, same = strategy.run(replica_step, args=(next(iterator),))
            metrics = {k: strategy.reduce(sum_op, v, axis=None) for k, v in summed.items()}
            metrics.update({k: strategy.reduce(mean_op, v, axis=None) for k, v in same.items()})
            done += 1
            bad = metrics["ok"] < 1.0
            skipped += tf.cast(bad, tf.int32)
            if stop_on_bad and bad:
                break
        return metrics, done, skipped

    return train_steps
