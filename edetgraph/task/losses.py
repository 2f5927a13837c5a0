"""Detection losses: focal classification loss, Huber box loss, optional IoU-family box loss,
and L2 weight decay, with the official EfficientDet conventions.

Targets come from :class:`edetgraph.task.labeler.AnchorLabeler` (batched by the input pipeline):
``cls_targets_l{L}`` int [B, H, W, A] holds the 0-based class of a matched anchor, -1 for
background and -2 for "ignore" (no loss at all); ``box_targets_l{L}`` [B, H, W, A*4] holds
(ty, tx, th, tw), zero where nothing matched.

Normalisation: both terms are divided by ``normalizer = positives + 1`` where *positives*
is the count over the whole global batch, so an image (or a batch) without any box gives a
finite loss. Under a distribution strategy each replica divides its local sum by the
*global* normalizer, so summing the replicas' losses and gradients gives exactly the
single-device values (see `global_normalizer`).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Mapping, Sequence

import tensorflow as tf

from edetgraph.graph import outputs
from edetgraph.task.postprocess import decode_boxes

IOU_KINDS = ("iou", "giou", "diou", "ciou")
# Official: decay every variable whose name ends in "kernel" (conv, depthwise, pointwise);
# biases, BN gamma/beta and the BiFPN fusion weights (WSM) are not decayed.
DECAY_PATTERN = re.compile(r".*kernel$")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Loss hyper-parameters (official defaults)."""
    num_classes: int
    alpha: float = 0.25
    gamma: float = 1.5
    label_smoothing: float = 0.0
    huber_delta: float = 0.1
    box_loss_weight: float = 50.0
    iou_loss: str | None = None          # None or one of IOU_KINDS, added to the Huber term
    iou_loss_weight: float = 1.0


def focal_loss(logits, targets, alpha: float = 0.25, gamma: float = 1.5,
               label_smoothing: float = 0.0):
    """Element-wise sigmoid focal loss ``-alpha_t (1 - p_t)^gamma log(p_t)``.

    `targets` are 0/1 (same shape as `logits`). The modulating factor is computed from the
    unsmoothed targets and only the cross-entropy sees the smoothed ones, as the official
    code does, so smoothing cannot blow the loss up.
    """
    logits = tf.convert_to_tensor(logits)
    targets = tf.cast(targets, logits.dtype)
    prob = tf.sigmoid(logits)
    p_t = targets * prob + (1.0 - targets) * (1.0 - prob)
    alpha_t = targets * alpha + (1.0 - targets) * (1.0 - alpha)
    modulating = tf.pow(1.0 - p_t, gamma)
    smoothed = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=smoothed, logits=logits)
    return alpha_t * modulating * ce


def focal_loss_sum(logits, target, num_classes: int, alpha: float = 0.25, gamma: float = 1.5):
    """``sum(focal_loss)`` over one level for unsmoothed one-hot targets, with ignored
    anchors left out: the training loss's fast path, in few passes over the logits (D0 at
    512 has 4.4 M per picture: this is the largest elementwise work of a step) and with its
    gradient written out.

    `logits` [B, H, W, A*C] float32; `target` [B, H, W, A] (0-based class, -1 background, -2
    ignored). Every logit is first taken as a background one, whose loss is ``(1 - alpha)
    p^gamma softplus(z)`` (``p = sigmoid(z)``, ``softplus(z) = -log(1 - p)``) with
    derivative ``(1 - alpha) p^gamma (gamma (1 - p) softplus(z) + p)``; the one target logit
    of each matched anchor (at most one in C) is then put right at the anchor level:
    its background term taken out, ``alpha (1 - p)^gamma softplus(-z)`` put in, and its
    gradient ``alpha (1 - p)^gamma (gamma p log(p) - (1 - p))`` selected in place of the
    background one. The gradient is computed with the loss (the loss is a sum, so the
    backward pass only scales it): about 16 passes over the logits where autodiff of the
    formula takes ~30. Same values as :func:`focal_loss` up to float rounding."""
    x = tf.convert_to_tensor(logits)
    target = tf.cast(target, tf.int32)
    shape5 = tf.concat([tf.shape(target), [num_classes]], 0)
    keep = tf.cast(tf.not_equal(target, -2), x.dtype)
    positive = tf.cast(target >= 0, x.dtype)

    def background(z):
        """(p^gamma softplus(z), its derivative)"""
        sp = tf.nn.softplus(z)
        mod = tf.exp(gamma * (z - sp))         # p^gamma, log p = z - softplus(z)
        p = tf.sigmoid(z)
        return mod * sp, mod * (gamma * (1.0 - p) * sp + p)

    def foreground(z):
        """((1 - p)^gamma softplus(-z), its derivative)"""
        sp = tf.nn.softplus(-z)                # -log p
        mod = tf.exp(-gamma * tf.nn.softplus(z))   # (1 - p)^gamma
        p = tf.sigmoid(z)
        return mod * sp, mod * (-gamma * p * sp - tf.sigmoid(-z))

    @tf.custom_gradient
    def fused(x):
        x5 = tf.reshape(x, shape5)
        bg, d_bg = background(x5)
        # the target logit of each anchor (class 0 where there is none: masked below)
        zt = tf.gather(x5, tf.maximum(target, 0), batch_dims=4)
        bg_t, _ = background(zt)
        fg_t, d_fg_t = foreground(zt)
        per_anchor = ((1.0 - alpha) * (tf.reduce_sum(bg, -1) - positive * bg_t)
                      + alpha * positive * fg_t)
        total = tf.reduce_sum(keep * per_anchor)
        is_target = tf.equal(tf.range(num_classes), target[..., None])
        grad = tf.where(is_target, (alpha * d_fg_t)[..., None],
                        ((1.0 - alpha) * keep)[..., None] * d_bg)
        grad = tf.reshape(grad, tf.shape(x))
        return total, lambda dy: dy * grad

    return fused(x)


def huber(errors, delta: float = 0.1):
    """Element-wise Huber: ``0.5 x^2`` for ``|x| <= delta``, else ``delta (|x| - 0.5 delta)``."""
    a = tf.abs(errors)
    quad = tf.minimum(a, delta)
    return 0.5 * quad * quad + delta * (a - quad)


def class_loss(cls_outputs: Sequence, cls_targets: Sequence, num_classes: int, normalizer,
               alpha=0.25, gamma=1.5, label_smoothing=0.0):
    """Focal loss summed over levels, anchors and classes, divided by `normalizer`.

    cls_outputs[i]: [B, H, W, A*C] logits; cls_targets[i]: [B, H, W, A] ints (0-based class,
    -1 background, -2 ignored). Channel a*C + c is class c of anchor a, as in the head.
    """
    total = 0.0
    for logits, target in zip(cls_outputs, cls_targets):
        logits = tf.cast(logits, tf.float32)
        target = tf.cast(target, tf.int32)
        if not label_smoothing:
            total += focal_loss_sum(logits, target, num_classes, alpha, gamma)
            continue
        onehot = tf.one_hot(target, num_classes, dtype=tf.float32)   # -1 and -2: all zeros
        onehot = tf.reshape(onehot, tf.shape(logits))
        loss = focal_loss(logits, onehot, alpha, gamma, label_smoothing)
        keep = tf.cast(tf.not_equal(target, -2), tf.float32)
        loss = tf.reshape(loss, tf.concat([tf.shape(target), [num_classes]], 0)) * keep[..., None]
        total += tf.reduce_sum(loss)
    return total / normalizer


def box_loss(box_outputs: Sequence, box_targets: Sequence, normalizer, delta: float = 0.1):
    """Huber loss over the coordinates whose target is non-zero (matched anchors), divided by
    ``4 * normalizer`` (the official per-coordinate normalisation)."""
    total = 0.0
    for pred, target in zip(box_outputs, box_targets):
        pred, target = tf.cast(pred, tf.float32), tf.cast(target, tf.float32)
        mask = tf.cast(tf.not_equal(target, 0.0), tf.float32)
        total += tf.reduce_sum(huber(target - pred, delta) * mask)
    return total / (4.0 * normalizer)


def iou(pred, target, kind: str = "giou"):
    """IoU-family similarity of yxyx boxes (last axis 4): iou, giou, diou or ciou."""
    if kind not in IOU_KINDS:
        raise ValueError(f"unknown IoU kind {kind!r}; choose one of {', '.join(IOU_KINDS)}")
    py0, px0, py1, px1 = tf.unstack(pred, axis=-1)
    ty0, tx0, ty1, tx1 = tf.unstack(target, axis=-1)
    ph, pw = tf.maximum(py1 - py0, 0.0), tf.maximum(px1 - px0, 0.0)
    th, tw = tf.maximum(ty1 - ty0, 0.0), tf.maximum(tx1 - tx0, 0.0)
    ih = tf.maximum(tf.minimum(py1, ty1) - tf.maximum(py0, ty0), 0.0)
    iw = tf.maximum(tf.minimum(px1, tx1) - tf.maximum(px0, tx0), 0.0)
    inter = ih * iw
    union = ph * pw + th * tw - inter
    value = tf.math.divide_no_nan(inter, union)
    if kind == "iou":
        return value
    eh = tf.maximum(py1, ty1) - tf.minimum(py0, ty0)
    ew = tf.maximum(px1, tx1) - tf.minimum(px0, tx0)
    if kind == "giou":
        enclose = eh * ew
        return value - tf.math.divide_no_nan(enclose - union, enclose)
    centre_dist = (((py0 + py1) - (ty0 + ty1)) / 2) ** 2 + (((px0 + px1) - (tx0 + tx1)) / 2) ** 2
    diou = value - tf.math.divide_no_nan(centre_dist, eh * eh + ew * ew)
    if kind == "diou":
        return diou
    v = (4 / math.pi ** 2) * (tf.atan(tf.math.divide_no_nan(tw, th))
                              - tf.atan(tf.math.divide_no_nan(pw, ph))) ** 2
    # The trade-off weight is a constant in the CIoU paper's gradient.
    alpha = tf.stop_gradient(tf.math.divide_no_nan(v, 1.0 - value + v))
    return diou - alpha * v


def box_iou_loss(box_outputs: Sequence, box_targets: Sequence, cls_targets: Sequence, anchors,
                 normalizer, kind: str = "giou"):
    """``sum(1 - IoU)`` over matched anchors of decoded predictions vs decoded targets,
    divided by ``4 * normalizer`` as the official does. `anchors` [N, 4] in level order."""
    def flat(levels, depth):
        return tf.concat([tf.reshape(tf.cast(t, tf.float32), [tf.shape(t)[0], -1, depth])
                          for t in levels], axis=1)
    pred = decode_boxes(flat(box_outputs, 4), anchors)
    target = decode_boxes(flat(box_targets, 4), anchors)
    positive = tf.cast(flat(cls_targets, 1)[..., 0] >= 0, tf.float32)
    return tf.reduce_sum((1.0 - iou(pred, target, kind)) * positive) / (4.0 * normalizer)


def decayed_variables(variables: Mapping[str, tf.Variable]) -> list:
    """The variables L2 weight decay applies to: trainable, name ending in ``kernel``."""
    return [v for name, v in sorted(variables.items())
            if v.trainable and DECAY_PATTERN.match(name)]


def weight_decay_loss(variables: Sequence, weight_decay: float):
    """``weight_decay * sum(||v||^2 / 2)`` (tf.nn.l2_loss, as the official)."""
    if not variables or not weight_decay:
        return tf.constant(0.0)
    return weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables])


def global_normalizer(num_positives):
    """Positives summed over the local batch and every replica, plus one.

    `num_positives` [B]: per-image counts from the labeler. Call in replica context (or
    outside any strategy, where it is the local sum + 1).
    """
    local = tf.reduce_sum(tf.cast(num_positives, tf.float32))
    ctx = tf.distribute.get_replica_context()
    if ctx is not None and ctx.num_replicas_in_sync > 1:
        local = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local)
    return local + 1.0


def detection_loss(cls_outputs, box_outputs, labels: Mapping, config: LossConfig, levels,
                   normalizer=None, anchors=None) -> dict:
    """Total detection loss and its parts.

    labels: ``cls_targets_l{L}``, ``box_targets_l{L}`` for L in `levels`, and
    ``num_positives`` [B]. `normalizer` defaults to `global_normalizer`. `anchors` is needed
    only for an IoU loss. Returns ``det_loss`` (= cls + box_weight * box [+ iou_weight * iou]),
    ``cls_loss``, ``box_loss``, ``box_iou_loss`` (scalars, float32).
    """
    if normalizer is None:
        normalizer = global_normalizer(labels["num_positives"])
    cls_t = [labels[outputs.cls_target_name(lvl)] for lvl in levels]
    box_t = [labels[outputs.box_target_name(lvl)] for lvl in levels]
    cls = class_loss(cls_outputs, cls_t, config.num_classes, normalizer, config.alpha,
                     config.gamma, config.label_smoothing)
    box = box_loss(box_outputs, box_t, normalizer, config.huber_delta)
    total = cls + config.box_loss_weight * box
    iou_term = tf.constant(0.0)
    if config.iou_loss:
        if anchors is None:
            raise ValueError("an IoU box loss needs the anchors")
        iou_term = box_iou_loss(box_outputs, box_t, cls_t, anchors, normalizer, config.iou_loss)
        total += config.iou_loss_weight * iou_term
    return {"det_loss": total, "cls_loss": cls, "box_loss": box, "box_iou_loss": iou_term}
