"""Post-processing against independent references: a numpy transcription of the official
decoding + global soft-NMS (NonMaxSuppressionV5 semantics), tf.image.non_max_suppression for
hard NMS, and TFLite's own TFLite_Detection_PostProcess op for the fast path."""
import time

import numpy as np
import pytest
import tensorflow as tf

from edetgraph.graph.sizes import feature_sizes as _sizes
from edetgraph.task.anchors import generate_anchors
from edetgraph.task.labels import COCO_LABELS, label_name
from edetgraph.task.postprocess import (
    decode_boxes,
    flatten_outputs,
    make_postprocess_fn,
    make_tflite_detection_postprocess,
    postprocess,
    postprocess_flat,
    tflite_implements_signature,
    to_detections_json,
)


def feature_sizes(size, lo, hi):
    return list(_sizes(size, lo, hi).values())


A, C = 9, 90


# ---------------------------------------------------------------- realistic head outputs
def np_iou(a, b):
    """IoU between boxes a [N, 4] and b [M, 4] (ymin, xmin, ymax, xmax)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ih = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iw = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ih * iw
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def fake_head_outputs(rng, image_size, batch, n_objects=8):
    """Flat logits [B, N, C] and encodings [B, N, 4] that look like a trained detector's:
    background logits around -6.5, and around each planted object a cluster of anchors
    with a confident class and encodings pointing (noisily) at the object."""
    anchors = generate_anchors(image_size).astype(np.float64)
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    n = len(anchors)
    cls = rng.normal(-6.5, 1.0, (batch, n, C))
    box = rng.normal(0.0, 0.3, (batch, n, 4))
    ya, xa = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    ha, wa = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    for b in range(batch):
        bh, bw = rng.uniform(0.05, 0.6, n_objects) * h, rng.uniform(0.05, 0.6, n_objects) * w
        y0, x0 = rng.uniform(0, 1, n_objects) * (h - bh), rng.uniform(0, 1, n_objects) * (w - bw)
        gt = np.stack([y0, x0, y0 + bh, x0 + bw], 1)
        overlap = np_iou(anchors, gt)
        for g, c in enumerate(rng.choice(list(COCO_LABELS), n_objects, replace=False) - 1):
            near = overlap[:, g] > 0.35
            k = int(near.sum())
            cls[b, near, c] = 1.0 + 8.0 * (overlap[near, g] - 0.35) + rng.normal(0, 0.7, k)
            cls[b, near, (c + 7) % C] = cls[b, near, c] - rng.uniform(0.5, 3.0, k)  # a runner-up class
            gy, gx = (gt[g, 0] + gt[g, 2]) / 2, (gt[g, 1] + gt[g, 3]) / 2
            enc = np.stack([(gy - ya[near]) / ha[near], (gx - xa[near]) / wa[near],
                            np.log(bh[g] / ha[near]), np.log(bw[g] / wa[near])], 1)
            box[b, near] = enc + rng.normal(0, 0.05, (k, 4))
    return cls.astype(np.float32), box.astype(np.float32)


def to_levels(flat, image_size, depth):
    """Flat [B, N, depth] -> per-level [B, H, W, A*depth] (channel = a * depth + k)."""
    out, start = [], 0
    for fh, fw in feature_sizes(image_size, 3, 7):
        n = fh * fw * A
        out.append(tf.constant(flat[:, start:start + n].reshape(flat.shape[0], fh, fw, A * depth)))
        start += n
    assert start == flat.shape[1]
    return out


# ---------------------------------------------------------------- numpy references
def ref_decode(enc, anchors):
    enc, a = np.asarray(enc, np.float64), np.asarray(anchors, np.float64)
    ya, xa = (a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2
    ha, wa = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    yc, xc = enc[..., 0] * ha + ya, enc[..., 1] * wa + xa
    h, w = np.exp(enc[..., 2]) * ha, np.exp(enc[..., 3]) * wa
    return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], -1)


def ref_soft_nms(boxes, scores, max_out, score_thresh, kernel_sigma):
    """Greedy gaussian soft-NMS: take the best live box, decay every other live score by
    exp(-0.5 iou^2 / kernel_sigma) (TF's kernel formula), drop scores <= threshold."""
    s = scores.astype(np.float64).copy()
    live = s > score_thresh
    sel, sel_scores = [], []
    while len(sel) < max_out and live.any():
        cand = np.flatnonzero(live)
        i = cand[np.argmax(s[cand])]
        sel.append(i)
        sel_scores.append(s[i])
        live[i] = False
        cand = np.flatnonzero(live)
        iou = np_iou(boxes[i:i + 1], boxes[cand])[0]
        s[cand] *= np.exp(-0.5 * iou ** 2 / kernel_sigma)
        live[cand] = s[cand] > score_thresh
    return np.array(sel, int), np.array(sel_scores)


def ref_global_soft(cls, box, anchors, image_size, scales, max_out=100, thresh=0.001, sigma=0.5):
    """The official postprocess_global default, per image, in numpy float64."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    results = []
    for b in range(cls.shape[0]):
        classes = np.argmax(cls[b], -1) + 1
        scores = 1 / (1 + np.exp(-cls[b].max(-1).astype(np.float64)))
        boxes = ref_decode(box[b], anchors)
        idx, sel = ref_soft_nms(boxes, scores, max_out, thresh, sigma / 2)
        out = np.clip(boxes[idx], 0, [h, w, h, w]) * scales[b]
        results.append((out, sel, classes[idx]))
    return results


def check_against(result, refs, box_tol=0.01, score_tol=1e-4):
    for b, (boxes, scores, classes) in enumerate(refs):
        n = len(scores)
        assert int(result["num_detections"][b]) == n
        np.testing.assert_array_equal(result["classes"][b, :n].numpy(), classes)
        np.testing.assert_allclose(result["boxes"][b, :n].numpy(), boxes, atol=box_tol)
        np.testing.assert_allclose(result["scores"][b, :n].numpy(), scores, atol=score_tol)
        for key in ("boxes", "scores", "classes"):  # padding is zeroed
            assert np.all(result[key][b, n:].numpy() == 0)


# ---------------------------------------------------------------- tests
def test_flatten_order_matches_anchor_order():
    rng = np.random.default_rng(0)
    feats = feature_sizes(128, 3, 7)
    cls = [rng.normal(size=(2, fh, fw, A * 5)).astype(np.float32) for fh, fw in feats]
    box = [rng.normal(size=(2, fh, fw, A * 4)).astype(np.float32) for fh, fw in feats]
    fc, fb = flatten_outputs(cls, box, 5)
    assert fc.shape == (2, sum(fh * fw for fh, fw in feats) * A, 5) and fb.shape[-1] == 4
    offsets = np.cumsum([0] + [fh * fw * A for fh, fw in feats])
    for _ in range(50):
        lvl = rng.integers(5)
        fh, fw = feats[lvl]
        b, y, x, a = rng.integers(2), rng.integers(fh), rng.integers(fw), rng.integers(A)
        i = offsets[lvl] + (y * fw + x) * A + a  # the anchor index of (level, y, x, a)
        np.testing.assert_array_equal(fc[b, i].numpy(), cls[lvl][b, y, x, a * 5:(a + 1) * 5])
        np.testing.assert_array_equal(fb[b, i].numpy(), box[lvl][b, y, x, a * 4:(a + 1) * 4])
    fc2, _ = flatten_outputs({3 + i: c for i, c in enumerate(cls)}, box, 5)  # dict keyed by level
    np.testing.assert_array_equal(fc2.numpy(), fc.numpy())


def test_decode_boxes():
    anchors = generate_anchors(512)
    enc = np.random.default_rng(1).normal(0, 0.5, (2, len(anchors), 4)).astype(np.float32)
    got = decode_boxes(enc, anchors).numpy()
    np.testing.assert_allclose(got, ref_decode(enc, anchors), atol=0.01)
    zero = decode_boxes(np.zeros((len(anchors), 4), np.float32), anchors).numpy()
    np.testing.assert_allclose(zero, anchors, atol=1e-4)  # centre +- half size: rounding only
    # no scale factors: ty = 1 moves the centre by one anchor height
    one = decode_boxes(np.array([[1.0, 0, 0, 0]], np.float32), anchors[:1]).numpy()
    np.testing.assert_allclose(one, [[20, -12, 52, 20]])


@pytest.mark.parametrize("image_size", [512, (384, 640)])
def test_soft_nms_matches_official_reference(image_size):
    rng = np.random.default_rng(7)
    cls, box = fake_head_outputs(rng, image_size, batch=2)
    anchors = generate_anchors(image_size)
    scales = np.array([2.0, 1.6], np.float32)
    got = postprocess(to_levels(cls, image_size, C), to_levels(box, image_size, 4), anchors,
                      scales, image_size)
    assert got["boxes"].shape == (2, 100, 4) and got["num_detections"].dtype == tf.int32
    assert got["classes"].dtype == tf.float32
    check_against(got, ref_global_soft(cls, box, anchors, image_size, scales))
    # boxes were clipped in the network frame, then scaled: they stay inside S * scale
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    boxes = got["boxes"].numpy()
    assert boxes[0, :, 0::2].max() <= h * 2.0 and boxes[1, :, 1::2].max() <= w * 1.6


def test_soft_nms_with_threshold_sigma_and_flat_input():
    rng = np.random.default_rng(3)
    cls, box = fake_head_outputs(rng, 256, batch=1, n_objects=4)
    anchors = generate_anchors(256)
    got = postprocess_flat(cls, box, anchors, [1.0], 256, score_thresh=0.2, soft_nms_sigma=0.8, max_dets=30)
    check_against(got, ref_global_soft(cls, box, anchors, 256, [1.0], 30, 0.2, 0.8))
    assert 0 < int(got["num_detections"][0]) < 30


def test_hard_nms_equals_tf_image_nms():
    rng = np.random.default_rng(11)
    cls, box = fake_head_outputs(rng, 512, batch=2)
    anchors = generate_anchors(512)
    for thresh, iou in ((None, 0.5), (0.3, 0.6)):
        got = postprocess(to_levels(cls, 512, C), to_levels(box, 512, 4), anchors, [1.5, 1.0], 512,
                          method="hard", score_thresh=thresh, iou_thresh=iou)
        refs = []
        for b, scale in enumerate((1.5, 1.0)):
            boxes = ref_decode(box[b], anchors).astype(np.float32)
            scores = (1 / (1 + np.exp(-cls[b].max(-1).astype(np.float64)))).astype(np.float32)
            floor = -np.inf if thresh is None else thresh
            idx = tf.image.non_max_suppression(boxes, scores, 100, iou, floor).numpy()
            refs.append((np.clip(boxes[idx], 0, 512) * scale, scores[idx], np.argmax(cls[b], -1)[idx] + 1))
        check_against(got, refs, score_tol=1e-6)
    assert int(got["num_detections"][0]) < 100  # the 0.3 threshold did cut the list


def test_fast_is_hard_with_tflite_threshold_semantics():
    rng = np.random.default_rng(5)
    cls, box = fake_head_outputs(rng, 256, batch=1, n_objects=5)
    anchors = generate_anchors(256)
    hard = postprocess_flat(cls, box, anchors, None, 256, method="hard")
    fast = postprocess_flat(cls, box, anchors, None, 256, method="fast")
    np.testing.assert_array_equal(fast["classes"].numpy(), hard["classes"].numpy())
    np.testing.assert_allclose(fast["boxes"].numpy(), hard["boxes"].numpy(), atol=1e-3)
    # TFLite keeps score >= threshold, TF's NMS keeps score > threshold
    t = float(fast["scores"][0, 4])
    count = lambda m: int(postprocess_flat(cls, box, anchors, None, 256, method=m,  # noqa: E731
                                           score_thresh=t)["num_detections"][0])
    n_fast, n_hard = count("fast"), count("hard")
    assert (n_fast, n_hard) == (5, 4)


def test_dynamic_batch_equals_static():
    rng = np.random.default_rng(2)
    cls, box = fake_head_outputs(rng, 128, batch=2, n_objects=3)
    anchors = generate_anchors(128)
    for method in ("soft", "fast"):
        want = postprocess_flat(cls, box, anchors, [1.0, 2.0], 128, method=method)
        fn = tf.function(lambda c, b, s: postprocess_flat(c, b, anchors, s, 128, method=method),
                         input_signature=[tf.TensorSpec([None, None, C]), tf.TensorSpec([None, None, 4]),
                                          tf.TensorSpec([None])])
        got = fn(cls, box, tf.constant([1.0, 2.0]))
        for k in want:
            np.testing.assert_array_equal(got[k].numpy(), want[k].numpy())


def test_bad_method_and_json():
    rng = np.random.default_rng(4)
    cls, box = fake_head_outputs(rng, 128, batch=1, n_objects=2)
    anchors = generate_anchors(128)
    with pytest.raises(ValueError, match="unknown NMS method 'nms'"):
        postprocess_flat(cls, box, anchors, method="nms")
    res = postprocess_flat(cls, box, anchors, [2.0], 128, score_thresh=0.5)
    js = to_detections_json(res)
    n = int(res["num_detections"][0])
    assert 0 < n < 100 and len(js["boxes"]) == len(js["scores"]) == len(js["class_names"]) == n
    assert js["class_names"] == [COCO_LABELS[c] for c in js["classes"]]
    assert js["boxes"][0] == pytest.approx(res["boxes"][0, 0].numpy().tolist())


def test_labels():
    assert len(COCO_LABELS) == 80 and min(COCO_LABELS) == 1 and max(COCO_LABELS) == 90
    assert (COCO_LABELS[1], COCO_LABELS[18], COCO_LABELS[90]) == ("person", "dog", "toothbrush")
    assert set(range(1, 91)) - set(COCO_LABELS) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    assert label_name(12) == "class_12" and label_name(3.0) == "car"


@pytest.mark.serial   # a wall-clock bound: runs alone (scripts/test)
def test_postprocess_is_fast():
    rng = np.random.default_rng(9)
    cls, box = fake_head_outputs(rng, 512, batch=1)
    fn = make_postprocess_fn(512)  # soft, the official default
    args = (to_levels(cls, 512, C), to_levels(box, 512, 4), tf.constant([2.0]))
    fn(*args)  # trace
    times = []
    for _ in range(10):
        t = time.perf_counter()
        fn(*args)["num_detections"].numpy()
        times.append(time.perf_counter() - t)
    median_ms = 1000 * float(np.median(times))
    print(f"soft postprocess, 49104 anchors x 90 classes: {median_ms:.1f} ms")
    assert median_ms < 100, median_ms  # measured ~10 ms on 2 shared cores; loops would be seconds


def test_tflite_signature_text():
    text = tflite_implements_signature(90, 100, float("-inf"), 0.5)
    assert text.startswith('name: "TFLite_Detection_PostProcess"')
    for part in ('key: "nms_score_threshold" value { f: -inf }',
                 'key: "max_classes_per_detection" value { i: 1 }',
                 'key: "num_classes" value { i: 90 }', 'key: "use_regular_nms" value { b: false }'):
        assert part in text


def test_tflite_op_equals_tf_fast_path():
    from ai_edge_litert.interpreter import Interpreter

    size, max_dets = 256, 40
    rng = np.random.default_rng(21)
    cls, box = fake_head_outputs(rng, size, batch=1, n_objects=6)
    anchors = generate_anchors(size)
    detect = make_tflite_detection_postprocess(anchors, C, max_dets, image_size=size)
    feats = feature_sizes(size, 3, 7)
    specs = ([tf.TensorSpec([1, h, w, A * C], name=f"cls_p{i + 3}") for i, (h, w) in enumerate(feats)]
             + [tf.TensorSpec([1, h, w, A * 4], name=f"box_p{i + 3}") for i, (h, w) in enumerate(feats)])

    @tf.function(input_signature=specs)
    def serve(*maps):
        return detect(list(maps[:5]), list(maps[5:]), tf.constant([2.0]))

    module = tf.Module()
    module.serve = serve
    model = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], module).convert()
    interpreter = Interpreter(model_content=model)
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "TFLite_Detection_PostProcess" in ops and not any("NON_MAX" in op for op in ops), ops
    inputs = {f"cls_p{i + 3}": t.numpy() for i, t in enumerate(to_levels(cls, size, C))}
    inputs.update({f"box_p{i + 3}": t.numpy() for i, t in enumerate(to_levels(box, size, 4))})
    got = interpreter.get_signature_runner()(**inputs)
    assert set(got) == {"boxes", "scores", "classes", "num_detections"}
    want = postprocess_flat(cls, box, anchors, [2.0], size, method="fast", max_dets=max_dets)
    assert int(got["num_detections"][0]) == int(want["num_detections"][0]) == max_dets
    np.testing.assert_array_equal(got["classes"], want["classes"].numpy())
    np.testing.assert_allclose(got["scores"], want["scores"].numpy(), atol=1e-6)
    np.testing.assert_allclose(got["boxes"], want["boxes"].numpy(), atol=1e-3)
    # and the TF function itself (the op's stand-in body) gives the same
    tf_side = serve(*[tf.constant(inputs[s.name]) for s in specs])
    np.testing.assert_array_equal(tf_side["classes"].numpy(), want["classes"].numpy())


def test_hard_converts_to_onnx_and_matches():
    import onnxruntime as ort
    import tf2onnx

    size = 128
    rng = np.random.default_rng(8)
    cls, box = fake_head_outputs(rng, size, batch=1, n_objects=3)
    anchors = generate_anchors(size)
    spec = [tf.TensorSpec(cls.shape, name="cls"), tf.TensorSpec(box.shape, name="box"),
            tf.TensorSpec([1], name="scales")]
    fn = tf.function(lambda c, b, s: postprocess_flat(c, b, anchors, s, size, method="hard"),
                     input_signature=spec)
    model, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=17)
    assert "NonMaxSuppression" in {node.op_type for node in model.graph.node}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    scales = np.array([2.0], np.float32)
    got = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {"cls": cls, "box": box, "scales": scales})))
    want = fn(cls, box, scales)
    assert int(got["num_detections"][0]) == int(want["num_detections"][0]) == 100
    np.testing.assert_array_equal(got["classes"], want["classes"].numpy())
    np.testing.assert_allclose(got["scores"], want["scores"].numpy(), atol=1e-6)
    np.testing.assert_allclose(got["boxes"], want["boxes"].numpy(), atol=1e-3)
