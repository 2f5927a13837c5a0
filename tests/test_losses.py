"""Losses against numpy references: focal (with ignore and smoothing), Huber, normalisation
by positives + 1 (zero positives safe), IoU family, weight decay that leaves BN alone."""
import numpy as np
import pytest
import tensorflow as tf

from edetgraph.graph.spec import load_spec
from edetgraph.nn.model import build_model
from edetgraph.task import losses


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_focal(logits, targets, alpha=0.25, gamma=1.5, smoothing=0.0):
    p = np_sigmoid(logits)
    p_t = np.where(targets == 1, p, 1 - p)
    alpha_t = np.where(targets == 1, alpha, 1 - alpha)
    t = targets * (1 - smoothing) + 0.5 * smoothing
    ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    return alpha_t * (1 - p_t) ** gamma * ce


def np_huber(x, delta):
    a = np.abs(x)
    return np.where(a <= delta, 0.5 * x * x, delta * (a - 0.5 * delta))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_focal_loss_matches_numpy(smoothing):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4, 7)).astype(np.float32)
    targets = (rng.random((4, 7)) < 0.3).astype(np.float32)
    got = losses.focal_loss(logits, targets, 0.25, 1.5, smoothing).numpy()
    np.testing.assert_allclose(got, np_focal(logits, targets, 0.25, 1.5, smoothing), rtol=1e-5,
                               atol=1e-6)


def test_class_loss_one_hot_layout_ignore_and_background():
    rng = np.random.default_rng(1)
    b, h, w, a, c = 2, 3, 3, 2, 4
    logits = rng.normal(0, 2, (b, h, w, a * c)).astype(np.float32)
    target = rng.integers(-2, c, (b, h, w, a)).astype(np.int32)   # -2 ignore, -1 background
    got = losses.class_loss([logits], [target], c, normalizer=7.0).numpy()
    onehot = np.zeros((b, h, w, a, c), np.float32)
    for idx in np.ndindex(b, h, w, a):
        if target[idx] >= 0:
            onehot[idx + (target[idx],)] = 1.0
    per = np_focal(logits.reshape(b, h, w, a, c), onehot)
    per[target == -2] = 0.0
    np.testing.assert_allclose(got, per.sum() / 7.0, rtol=1e-5)


def test_huber_and_box_loss_on_matched_coordinates_only():
    x = np.linspace(-0.5, 0.5, 21).astype(np.float32)
    np.testing.assert_allclose(losses.huber(x, 0.1).numpy(), np_huber(x, 0.1), atol=1e-7)
    rng = np.random.default_rng(2)
    pred = rng.normal(0, 0.3, (2, 4, 4, 8)).astype(np.float32)
    target = rng.normal(0, 0.3, (2, 4, 4, 8)).astype(np.float32)
    target[rng.random(target.shape) < 0.7] = 0.0                    # unmatched: no loss
    got = losses.box_loss([pred], [target], normalizer=5.0, delta=0.1).numpy()
    want = (np_huber(target - pred, 0.1) * (target != 0)).sum() / (4 * 5.0)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def _labels(levels, sizes, a, positives):
    out = {"num_positives": tf.constant(positives, tf.float32)}
    for lvl, s in zip(levels, sizes):
        out[f"cls_targets_l{lvl}"] = -tf.ones([len(positives), s, s, a], tf.int32)
        out[f"box_targets_l{lvl}"] = tf.zeros([len(positives), s, s, a * 4])
    return out


def test_zero_positives_normalise_by_one_and_stay_finite():
    levels, sizes, a, c = [3, 4], [4, 2], 3, 5
    labels = _labels(levels, sizes, a, [0.0, 0.0])
    cls = [tf.fill([2, s, s, a * c], -4.0) for s in sizes]
    box = [tf.random.normal([2, s, s, a * 4]) for s in sizes]
    out = losses.detection_loss(cls, box, labels, losses.LossConfig(c), levels)
    assert out["box_loss"].numpy() == 0.0
    n_elem = 2 * a * c * sum(s * s for s in sizes)
    want = np_focal(np.float32(-4.0), np.float32(0.0)) * n_elem / 1.0    # normaliser 0 + 1
    np.testing.assert_allclose(out["cls_loss"].numpy(), want, rtol=1e-5)
    assert np.isfinite(out["det_loss"].numpy())


def test_total_is_cls_plus_weighted_box_and_normaliser_counts_batch():
    levels, sizes, a, c = [3], [2], 1, 2
    labels = _labels(levels, sizes, a, [2.0, 1.0])
    labels["cls_targets_l3"] = tf.constant([[[[0], [1]], [[-1], [-1]]],
                                            [[[1], [-1]], [[-2], [-1]]]], tf.int32)
    labels["box_targets_l3"] = tf.fill([2, 2, 2, 4], 0.05)
    cls = [tf.zeros([2, 2, 2, 2])]
    box = [tf.zeros([2, 2, 2, 4])]
    out = losses.detection_loss(cls, box, labels, losses.LossConfig(c), levels)
    np.testing.assert_allclose(out["box_loss"].numpy(), np_huber(0.05, 0.1) * 32 / (4 * 4.0),
                               rtol=1e-6)
    np.testing.assert_allclose(out["det_loss"].numpy(),
                               out["cls_loss"].numpy() + 50.0 * out["box_loss"].numpy(), rtol=1e-6)


def np_iou_family(p, t):
    def area(b):
        return max(b[2] - b[0], 0) * max(b[3] - b[1], 0)
    ih = max(min(p[2], t[2]) - max(p[0], t[0]), 0)
    iw = max(min(p[3], t[3]) - max(p[1], t[1]), 0)
    inter = ih * iw
    union = area(p) + area(t) - inter
    iou = inter / union
    enc = [min(p[0], t[0]), min(p[1], t[1]), max(p[2], t[2]), max(p[3], t[3])]
    giou = iou - (area(enc) - union) / area(enc)
    d2 = ((p[0] + p[2] - t[0] - t[2]) / 2) ** 2 + ((p[1] + p[3] - t[1] - t[3]) / 2) ** 2
    c2 = (enc[2] - enc[0]) ** 2 + (enc[3] - enc[1]) ** 2
    diou = iou - d2 / c2
    v = 4 / np.pi ** 2 * (np.arctan((t[3] - t[1]) / (t[2] - t[0]))
                          - np.arctan((p[3] - p[1]) / (p[2] - p[0]))) ** 2
    alpha = v / (1 - iou + v) if v > 0 else 0.0    # 0/0 for identical boxes
    ciou = diou - alpha * v
    return {"iou": iou, "giou": giou, "diou": diou, "ciou": ciou}


@pytest.mark.parametrize("kind", losses.IOU_KINDS)
def test_iou_family_matches_numpy(kind):
    pairs = [([0, 0, 10, 10], [5, 5, 15, 20]), ([0, 0, 4, 4], [10, 10, 12, 16]),
             ([2, 3, 9, 7], [2, 3, 9, 7])]
    p = tf.constant([a for a, _ in pairs], tf.float32)
    t = tf.constant([b for _, b in pairs], tf.float32)
    got = losses.iou(p, t, kind).numpy()
    want = [np_iou_family(np.array(a, float), np.array(b, float))[kind] for a, b in pairs]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with tf.GradientTape() as tape:
        tape.watch(p)
        loss = tf.reduce_sum(1 - losses.iou(p, t, kind))
    assert np.isfinite(tape.gradient(loss, p).numpy()).all()


def test_weight_decay_only_on_kernels_not_batch_norm_or_biases():
    spec = load_spec("d0", ["image_size=64", "fpn.channels=8", "fpn.repeats=1", "head.repeats=1",
                            "anchors.max_level=6"])
    variables = build_model(spec).variables_by_name()
    decayed = losses.decayed_variables(variables)
    names = {v.name[:-2] for v in decayed}
    assert names and all(n.endswith("kernel") for n in names)
    assert not [n for n in names if "batch_normalization" in n or "/bn" in n]
    bn = [n for n in variables if n.endswith(("gamma", "beta", "moving_mean", "moving_variance"))]
    assert bn and not set(bn) & names
    assert not [n for n in names if n.endswith("bias") or "/WSM" in n]
    want = 4e-5 * sum(0.5 * float(np.sum(v.numpy() ** 2)) for v in decayed)
    np.testing.assert_allclose(losses.weight_decay_loss(decayed, 4e-5).numpy(), want, rtol=1e-5)


def test_global_normalizer_sums_positives_over_replicas():
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < 2:
        pytest.skip("needs two logical CPUs (configured in conftest before TF starts)")
    strategy = tf.distribute.MirroredStrategy([d.name for d in cpus[:2]])
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant([3.0, 4.0]) * (ctx.replica_id_in_sync_group + 1))
    out = strategy.run(tf.function(losses.global_normalizer), args=(values,))
    assert [float(v) for v in strategy.experimental_local_results(out)] == [22.0, 22.0]
    assert float(losses.global_normalizer(tf.constant([2.0, 0.0]))) == 3.0
