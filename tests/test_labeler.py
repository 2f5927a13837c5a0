"""Anchor labelling: a hand-checked case, padding, empty input, and a numpy reference of the
official matcher / assigner / coder on random boxes."""
import numpy as np
import pytest
import tensorflow as tf

from edetgraph.task.labeler import AnchorLabeler

try:
    from edetgraph.graph.sizes import feature_sizes
    from edetgraph.task.anchors import generate_anchors
except ImportError:     # anchors.py is written separately; keep these tests independent of it
    generate_anchors = feature_sizes = None


def official_anchors(size, min_level, max_level, num_scales=3, aspects=(1.0, 2.0, 0.5), scale=4.0):
    """Anchors and feature sizes in the official layout (uses edetgraph.task.anchors when present)."""
    if generate_anchors is not None:
        return (generate_anchors(size, min_level, max_level, num_scales, aspects, scale),
                list(feature_sizes(size, min_level, max_level).values()))
    feats, levels = [], []
    for level in range(min_level, max_level + 1):
        n = -(-size // 2 ** level)
        stride = size / n
        centres = np.arange(stride / 2, size, stride)
        half = np.array([[scale * stride * 2 ** (o / num_scales) / np.sqrt(a) / 2,
                          scale * stride * 2 ** (o / num_scales) * np.sqrt(a) / 2]
                         for o in range(num_scales) for a in aspects])
        yc, xc = np.meshgrid(centres, centres, indexing="ij")
        c = np.stack([yc, xc], -1)[:, :, None, :]
        levels.append(np.concatenate([c - half, c + half], -1).reshape(-1, 4))
        feats.append((n, n))
    return np.concatenate(levels).astype(np.float32), feats


def reference_label(anchors, boxes, classes, match_thr, unmatched_thr):
    """Flat (cls [N], box [N, 4], num_positives) computed the official way, in numpy."""
    anchors, boxes = anchors.astype(np.float64), np.asarray(boxes, np.float64).reshape(-1, 4)
    n = len(anchors)
    valid = (np.asarray(classes) >= 0) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, classes = boxes[valid], np.asarray(classes)[valid]
    if len(boxes) == 0:
        return np.full(n, -1), np.zeros((n, 4)), 0
    ih = np.clip(np.minimum(boxes[:, None, 2], anchors[None, :, 2])
                 - np.maximum(boxes[:, None, 0], anchors[None, :, 0]), 0, None)
    iw = np.clip(np.minimum(boxes[:, None, 3], anchors[None, :, 3])
                 - np.maximum(boxes[:, None, 1], anchors[None, :, 1]), 0, None)
    inter = ih * iw
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    iou = np.where(inter > 0, inter / (area(boxes)[:, None] + area(anchors)[None] - inter), 0)
    match = iou.argmax(0)
    best = iou.max(0)
    match[best < unmatched_thr] = -1
    match[(best >= unmatched_thr) & (best < match_thr)] = -2
    for row in reversed(range(len(boxes))):          # earlier rows win shared anchors
        match[iou[row].argmax()] = row
    pos = match >= 0
    cls = np.where(pos, classes[np.maximum(match, 0)] - 1, -1)
    g = boxes[np.maximum(match, 0)]
    cs = lambda b: ((b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2,
                    b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    yc, xc, h, w = cs(g)
    ya, xa, ha, wa = cs(anchors)
    box = np.stack([(yc - ya) / ha, (xc - xa) / wa, np.log(h / ha), np.log(w / wa)], -1)
    return cls, np.where(pos[:, None], box, 0.0), int(pos.sum())


def flatten(out, levels):
    cls = np.concatenate([out[f"cls_targets_l{l}"].numpy().reshape(-1) for l in levels])
    box = np.concatenate([out[f"box_targets_l{l}"].numpy().reshape(-1, 4) for l in levels])
    return cls, box


# One level, 2x2 cells of 8 px, one anchor each: [0,0,8,8] [0,8,8,16] [8,0,16,8] [8,8,16,16].
GRID = np.array([[0, 0, 8, 8], [0, 8, 8, 16], [8, 0, 16, 8], [8, 8, 16, 16]], np.float32)


def test_hand_checked_case():
    lab = AnchorLabeler(GRID, [(2, 2)], 1, num_classes=5)
    boxes = [[0, 0, 8, 8],        # anchor 0 exactly: IoU 1
             [8, 8, 16, 12]]      # left half of anchor 3: IoU 0.5, matched (>= threshold)
    out = lab.label(tf.constant(boxes, tf.float32), tf.constant([3, 1]))
    assert out["cls_targets_l3"].shape == (2, 2, 1)
    assert out["box_targets_l3"].shape == (2, 2, 4)
    np.testing.assert_array_equal(out["cls_targets_l3"].numpy().ravel(), [2, -1, -1, 0])
    box = out["box_targets_l3"].numpy().reshape(4, 4)
    np.testing.assert_allclose(box[0], 0.0, atol=1e-7)
    np.testing.assert_allclose(box[3], [0.0, -0.25, 0.0, np.log(0.5)], atol=1e-6)
    np.testing.assert_array_equal(box[1:3], 0.0)
    assert out["num_positives"].numpy() == 2.0


def test_force_match_padding_and_empty():
    lab = AnchorLabeler(GRID, [(2, 2)], 1, num_classes=5)
    tiny = [[9, 0, 11, 2]]         # IoU 4/64 with anchor 2 only: kept by the force match
    out = lab.label(tf.constant(tiny, tf.float32), tf.constant([4]))
    np.testing.assert_array_equal(out["cls_targets_l3"].numpy().ravel(), [-1, -1, 3, -1])
    padded = lab.label(tf.constant(tiny + [[-1, -1, -1, -1]] * 3, tf.float32),
                       tf.constant([4, -1, -1, -1]))
    for k in out:
        np.testing.assert_array_equal(padded[k].numpy(), out[k].numpy())
    empty = lab.label(tf.zeros([0, 4]), tf.zeros([0], tf.int32))
    np.testing.assert_array_equal(empty["cls_targets_l3"].numpy(), -1)
    np.testing.assert_array_equal(empty["box_targets_l3"].numpy(), 0.0)
    assert empty["num_positives"].numpy() == 0.0
    all_pad = lab.label(-tf.ones([5, 4]), -tf.ones([5], tf.int32))
    np.testing.assert_array_equal(all_pad["cls_targets_l3"].numpy(), -1)


@pytest.mark.parametrize("thresholds", [(0.5, 0.5), (0.5, 0.4)])
def test_matches_numpy_reference_on_random_boxes(thresholds):
    anchors, feats = official_anchors(128, 3, 5)
    lab = AnchorLabeler(anchors, feats, 9, num_classes=7, match_threshold=thresholds[0],
                        unmatched_threshold=thresholds[1])
    rng = np.random.default_rng(0)
    levels = lab.levels
    assert levels == [3, 4, 5]
    for trial in range(4):
        m = int(rng.integers(1, 12))
        yx = rng.uniform(0, 110, (m, 2))
        hw = rng.uniform(4, 70, (m, 2))
        boxes = np.concatenate([yx, np.minimum(yx + hw, 128)], 1).astype(np.float32)
        classes = rng.integers(1, 8, m)
        out = lab.label(boxes, classes)
        for l, (h, w) in zip(levels, feats):
            assert out[f"cls_targets_l{l}"].shape == (h, w, 9)
            assert out[f"box_targets_l{l}"].shape == (h, w, 36)
            assert out[f"cls_targets_l{l}"].dtype == tf.int32
        cls, box = flatten(out, levels)
        ref_cls, ref_box, ref_pos = reference_label(anchors, boxes, classes, *thresholds)
        np.testing.assert_array_equal(cls, ref_cls)
        np.testing.assert_allclose(box, ref_box, atol=1e-4)
        assert out["num_positives"].numpy() == ref_pos > 0


def test_label_inside_tf_data_and_bad_anchors():
    anchors, feats = official_anchors(64, 3, 4)
    lab = AnchorLabeler(anchors, feats, 9, num_classes=3)
    ds = tf.data.Dataset.from_tensors((tf.constant([[8., 8., 40., 40.]]), tf.constant([2])))
    out = next(iter(ds.map(lab.label)))
    cls, _ = flatten(out, lab.levels)
    assert (cls == 1).sum() == out["num_positives"].numpy() > 0
    with pytest.raises(ValueError, match="anchors must be"):
        AnchorLabeler(anchors[:-1], feats, 9, num_classes=3)
