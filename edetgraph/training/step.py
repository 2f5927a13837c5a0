"""The training state (model, optimizer, EMA, step) and the compiled multi-step function.

One host call runs ``num_steps`` steps in a ``tf.range`` loop over the distributed iterator
(what TPUs need to stay busy). Each replica computes its loss with the *global* positive
count, gradients are summed over replicas, clipped, checked for NaN/Inf, then applied in
cross-replica context together with the EMA and the step counter. A non-finite step is
never applied: with ``nan_policy: stop`` the loop ends there and reports it, with ``skip``
it goes on and counts it.

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
from edetgraph.training.optim import EMA, SGDMomentum, clip_gradients
from edetgraph.training.precision import LossScale, compute_for
from edetgraph.training.schedule import WarmupCosine

SUMMED = ("loss", "cls_loss", "box_loss", "box_iou_loss", "reg_l2_loss")
SAME = ("lr", "grad_norm", "ok")


@dataclass
class TrainState:
    spec: object
    model: object
    variables: dict          # name -> variable (official checkpoint names)
    optimizer: SGDMomentum
    ema: EMA | None
    step: tf.Variable        # int64, steps taken (skipped ones included)
    schedule: WarmupCosine
    loss_config: LossConfig
    anchors: np.ndarray
    loss_scale: LossScale | None = None    # mixed_float16 only


def build_state(spec, config, total_steps: int, warmup_steps: int, seed: int = 0) -> TrainState:
    """Create model, optimizer slots, EMA and step; call inside ``strategy.scope()``."""
    compute = compute_for(config)
    model = build_model(spec, seed=seed, compute=compute)
    variables = model.variables_by_name()
    optimizer = SGDMomentum(variables, config.momentum)
    ema = EMA(variables, config.ema_decay) if config.ema_decay > 0 else None
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    schedule = WarmupCosine(config.scaled_learning_rate(), config.lr_warmup_init, warmup_steps,
                            total_steps)
    loss_config = LossConfig(spec.num_classes, config.focal_alpha, config.focal_gamma,
                             config.label_smoothing, config.huber_delta, config.box_loss_weight,
                             config.iou_loss, config.iou_loss_weight)
    anchors = spec_anchors(spec)
    loss_scale = LossScale() if compute.dtype == "float16" else None
    return TrainState(spec, model, variables, optimizer, ema, step, schedule, loss_config, anchors,
                      loss_scale)


def _make_compute(state: TrainState, config, replicas: int, jit_compile: bool):
    """Forward, loss and gradients of one replica's batch (the part XLA compiles)."""
    decayed = decayed_variables(state.variables)
    levels = list(state.spec.levels)
    anchors = state.anchors if state.loss_config.iou_loss else None

    def compute(images, labels, normalizer):
        with tf.GradientTape() as tape:
            cls, box = state.model(images, training=True)
            parts = detection_loss(cls, box, labels, state.loss_config, levels, normalizer,
                                   anchors)
            # Each replica adds its share, so the replicas' sum is the decay term once.
            parts["reg_l2_loss"] = weight_decay_loss(decayed, config.weight_decay) / replicas
            loss = parts["det_loss"] + parts["reg_l2_loss"]
            if state.loss_scale is not None:   # float16: small gradients kept from underflow
                parts["loss_scale"] = scale = tf.convert_to_tensor(state.loss_scale.scale)
                grads = tape.gradient(loss * scale, state.optimizer.vars)
                return loss, parts, [g / scale for g in grads]
        return loss, parts, tape.gradient(loss, state.optimizer.vars)

    return tf.function(compute, jit_compile=True) if jit_compile else compute


def _make_apply(state: TrainState, skip_bad: bool):
    @tf.autograph.experimental.do_not_convert
    def apply(strategy, grads, lr, momentum, ema_rate, ok, overflow):
        update = state.optimizer.apply(strategy, grads, lr, momentum, ok)
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

    # Straight-line TF code: autograph would only spend seconds converting the model.
    @tf.autograph.experimental.do_not_convert
    def replica_step(batch):
        ctx = tf.distribute.get_replica_context()
        normalizer = global_normalizer(batch["num_positives"])
        loss, parts, grads = compute(batch["image"], batch, normalizer)
        if inject_nan_at is not None:   # fault injection for tests: a NaN loss from that step
            bad = state.step + 1 >= inject_nan_at
            loss += tf.where(bad, float("nan"), 0.0)
        total = loss
        if replicas > 1:
            grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, loss)
        grads, norm = clip_gradients(grads, config.clip_norm)
        ok = tf.math.is_finite(total) & tf.math.is_finite(norm)
        overflow = _overflow(parts, total, ok)
        lr = state.schedule(state.step)
        gated_lr, momentum = state.optimizer.gates(lr, ok)
        ema_rate = state.ema.rate(state.step, ok) if state.ema else 0.0
        ctx.merge_call(apply, args=(grads, gated_lr, momentum, ema_rate, ok, overflow))
        summed = {"loss": loss, **{k: parts[k] for k in SUMMED if k != "loss"}}
        counts = ok if overflow is None else ok | overflow   # for the NaN/Inf policy
        same = {"lr": lr, "grad_norm": norm, "ok": tf.cast(counts, tf.float32)}
        if overflow is not None:
            same["loss_scale"] = parts["loss_scale"]
        return summed, same

    return replica_step


def _overflow(parts: dict, total, ok):
    """Whether a float16 step's gradients overflowed: finite loss, non-finite gradients,
    loss scale above 1 (None without loss scaling). Skipped (the scale halves) without
    counting as a NaN/Inf step; at scale 1 there is nothing left to lower, and it is one."""
    if "loss_scale" not in parts:
        return None
    return ~ok & tf.math.is_finite(total) & (parts["loss_scale"] > 1.0)


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
