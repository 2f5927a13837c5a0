"""Anchor labelling: per-anchor class and box targets for one image, as the official code does.

Official behaviour (tf2/anchors.py AnchorLabeler with object_detection's ArgMaxMatcher,
TargetAssigner and FasterRcnnBoxCoder):

- similarity = IoU of every ground-truth box with every anchor (0 where they do not touch);
- each anchor takes its best ground truth; IoU >= match_threshold -> matched,
  IoU < unmatched_threshold -> background, in between -> ignored;
- force match: every ground-truth box claims its best anchor whatever the IoU (when two
  boxes claim the same anchor the first one wins);
- class target = class id - 1 (0-based) when matched, -1 otherwise (background and
  ignored alike: the official assigner gives both the same "unmatched" target);
- box target = (ty, tx, th, tw) = ((yc - yca) / ha, (xc - xca) / wa, log(h / ha), log(w / wa))
  WITHOUT the Faster R-CNN scale factors (the official EfficientDet passes none), zero for
  anchors that are not matched.

Padding is allowed: rows whose class is < 0 or whose box has no area take no part (they
neither match nor force-match), so boxes padded with -1 to a fixed count label the same as
the unpadded list. Everything is TF ops on static anchor shapes, usable inside tf.data.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from edetgraph.graph import outputs
from edetgraph.graph.sizes import feature_sizes
from edetgraph.task.anchors import spec_anchors

_EPS = 1e-8     # the official coder's floor on sizes before dividing / taking logs


def pairwise_iou(boxes: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
    """IoU [M, N] of yxyx boxes [M, 4] against anchors [N, 4]; exactly 0 without overlap."""
    b = tf.expand_dims(boxes, 1)
    a = tf.expand_dims(anchors, 0)
    ih = tf.maximum(0.0, tf.minimum(b[..., 2], a[..., 2]) - tf.maximum(b[..., 0], a[..., 0]))
    iw = tf.maximum(0.0, tf.minimum(b[..., 3], a[..., 3]) - tf.maximum(b[..., 1], a[..., 1]))
    inter = ih * iw
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    union = area_b + area_a - inter
    return tf.where(inter > 0.0, inter / tf.where(inter > 0.0, union, 1.0), 0.0)


def encode_boxes(boxes: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
    """(ty, tx, th, tw) of yxyx boxes relative to same-shaped yxyx anchors, no scale factors."""
    def centre_size(b):
        h = tf.maximum(_EPS, b[..., 2] - b[..., 0])
        w = tf.maximum(_EPS, b[..., 3] - b[..., 1])
        return (b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2, h, w
    yc, xc, h, w = centre_size(boxes)
    yca, xca, ha, wa = centre_size(anchors)
    return tf.stack([(yc - yca) / ha, (xc - xca) / wa,
                     tf.math.log(h / ha), tf.math.log(w / wa)], axis=-1)


def argmax_match(similarity: tf.Tensor, valid: tf.Tensor, match_threshold: float,
                 unmatched_threshold: float) -> tf.Tensor:
    """Per anchor: index of its ground truth, -1 background, -2 ignored ([M, N] -> [N]).

    `valid` [M] marks real ground-truth rows; there must be at least one row (valid or not).
    """
    sim = tf.where(valid[:, None], similarity, -1.0)   # invalid rows never win an anchor
    matches = tf.argmax(sim, axis=0, output_type=tf.int32)
    best = tf.reduce_max(sim, axis=0)
    matches = tf.where(best < unmatched_threshold, -1, matches)
    between = (best >= unmatched_threshold) & (best < match_threshold)
    matches = tf.where(between, -2, matches)
    # Force match: each valid row takes its best column; first row wins a shared column.
    best_col = tf.argmax(sim, axis=1, output_type=tf.int32)
    claims = tf.one_hot(best_col, tf.shape(sim)[1], dtype=tf.int32)
    claims *= tf.cast(valid, tf.int32)[:, None]
    claimed = tf.reduce_max(claims, axis=0) > 0
    return tf.where(claimed, tf.argmax(claims, axis=0, output_type=tf.int32), matches)


class AnchorLabeler:
    """Per-level class / box targets for one image against a fixed anchor set.

    anchors: [N, 4] yxyx network-input pixels in the official order (level, y, x, anchor);
    feature_sizes: (h, w) per level from min_level to max_level; the anchors must number
    sum(h * w) * num_anchors_per_location.
    """

    def __init__(self, anchors: np.ndarray, feature_sizes: Sequence[tuple[int, int]],
                 num_anchors_per_location: int, num_classes: int,
                 match_threshold: float = 0.5, unmatched_threshold: float = 0.5,
                 min_level: int = 3):
        anchors = np.asarray(anchors, np.float32)
        self.feature_sizes = [tuple(int(v) for v in s) for s in feature_sizes]
        expected = sum(h * w for h, w in self.feature_sizes) * num_anchors_per_location
        if anchors.ndim != 2 or anchors.shape[1] != 4 or anchors.shape[0] != expected:
            raise ValueError(f"anchors must be [{expected}, 4] for feature sizes "
                             f"{self.feature_sizes} x {num_anchors_per_location} anchors, "
                             f"got {list(anchors.shape)}")
        if unmatched_threshold > match_threshold:
            raise ValueError(f"unmatched_threshold {unmatched_threshold} > match_threshold "
                             f"{match_threshold}")
        self.anchors = anchors
        self.num_anchors_per_location = num_anchors_per_location
        self.num_classes = num_classes
        self.match_threshold = match_threshold
        self.unmatched_threshold = unmatched_threshold
        self.min_level = min_level

    @property
    def levels(self) -> list[int]:
        return list(range(self.min_level, self.min_level + len(self.feature_sizes)))

    def label(self, boxes, classes) -> dict:
        """Targets for ground truth boxes [M, 4] yxyx pixels and classes [M] (1-based ids).

        Returns ``cls_targets_l{L}`` int32 [h, w, A], ``box_targets_l{L}`` float32
        [h, w, A*4] (channel a*4+k, as the box head) and ``num_positives`` float32.
        """
        boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
        classes = tf.reshape(tf.cast(classes, tf.int32), [-1])
        # One always-invalid row keeps argmax defined when there are no boxes at all.
        boxes = tf.concat([boxes, -tf.ones([1, 4])], axis=0)
        classes = tf.concat([classes, [-1]], axis=0)
        valid = (classes >= 0) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        anchors = tf.constant(self.anchors)
        matches = argmax_match(pairwise_iou(boxes, anchors), valid,
                               self.match_threshold, self.unmatched_threshold)
        positive = matches >= 0
        index = tf.maximum(matches, 0)
        cls = tf.where(positive, tf.gather(classes, index) - 1, -1)
        box = tf.where(positive[:, None], encode_boxes(tf.gather(boxes, index), anchors), 0.0)
        out = {"num_positives": tf.reduce_sum(tf.cast(positive, tf.float32))}
        start = 0
        for level, (h, w) in zip(self.levels, self.feature_sizes):
            n = h * w * self.num_anchors_per_location
            out[outputs.cls_target_name(level)] = tf.reshape(cls[start:start + n], [h, w, -1])
            out[outputs.box_target_name(level)] = tf.reshape(box[start:start + n], [h, w, -1])
            start += n
        return out


def labeler_for(spec, match_threshold: float = 0.5,
                unmatched_threshold: float = 0.5) -> AnchorLabeler:
    """The labeler of a ModelSpec: its anchors, level sizes and class count."""
    a = spec.anchors
    sizes = feature_sizes(spec.image_size, a.min_level, a.max_level)
    return AnchorLabeler(spec_anchors(spec), list(sizes.values()), spec.num_anchors,
                         spec.num_classes, match_threshold, unmatched_threshold,
                         min_level=a.min_level)
