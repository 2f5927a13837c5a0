"""Detection post-processing: flatten head outputs, decode boxes, NMS, back to image pixels.

Three NMS methods, all class-agnostic over one (max) class per anchor, as the official
``postprocess_global`` does:

- ``soft``: the official default. Gaussian soft-NMS through ``NonMaxSuppressionV5``
  (sigma 0.5, passed as 0.25 because TF's kernel uses ``exp(-iou^2 / (2 sigma))`` where the
  soft-NMS paper uses ``exp(-iou^2 / sigma)``), score threshold 0.001. TF's kernel ignores
  the IoU threshold in soft mode. Not for export: tf2onnx silently turns it into HARD NMS,
  and TFLite's builtin NON_MAX_SUPPRESSION_V5 runs but decays scores differently (measured
  with TF 2.21 / LiteRT 2.3: same top boxes, then lower scores and other picks).
- ``hard``: the official ``method='hard'``: the same V5 op with sigma 0, which tf2onnx
  converts to ONNX ``NonMaxSuppression`` and TFLite to its builtin NMS (both measured equal).
  Default score threshold -inf, as the official.
- ``fast``: what TFLite's ``TFLite_Detection_PostProcess`` op computes with
  ``use_regular_nms=false, max_classes_per_detection=1`` (its box decoding arithmetic, its
  ``score >= threshold``); :func:`make_tflite_detection_postprocess` emits that op itself.

Outputs are padded to ``max_dets``; padding slots are all zeros (the official repeats anchor
0 there). Boxes are clipped to the network frame ``[0, S]`` THEN multiplied by the scale
factor, so they may reach past the original image's height or width, as the official's do.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from edetgraph.graph.sizes import ImageSize, feature_sizes, parse_image_size
from edetgraph.task.anchors import anchors_to_center_size, generate_anchors
from edetgraph.task.labels import COCO_LABELS, label_name

CLASS_OFFSET = 1  # network class c is COCO category id c + 1
METHODS = ("soft", "hard", "fast")
SOFT_SCORE_THRESH = 0.001  # official fallback when the config's score_thresh is 0


def _levels(outputs) -> list:
    if isinstance(outputs, Mapping):  # {level: tensor}, levels in increasing order
        return [outputs[k] for k in sorted(outputs)]
    return list(outputs)


def _level_pair(cls_outputs, box_outputs):
    cls_list, box_list = _levels(cls_outputs), _levels(box_outputs)
    if len(cls_list) != len(box_list) or not cls_list:
        raise ValueError("need the same non-zero number of class and box levels, "
                         f"got {len(cls_list)} and {len(box_list)}")
    return cls_list, box_list


def _flatten(levels, depth: int):
    """Per-level ``[B, H, W, A*depth]`` -> ``[B, sum(H*W*A), depth]``, row-major, in level order."""
    batch = levels[0].shape[0]
    batch = batch if batch is not None else tf.shape(levels[0])[0]
    return tf.concat([tf.reshape(t, [batch, -1, depth]) for t in levels], axis=1)


def flatten_outputs(cls_outputs, box_outputs, num_classes: int):
    """Per-level ``[B, H, W, A*C]`` / ``[B, H, W, A*4]`` -> ``cls [B, N, C]``, ``box [B, N, 4]``.

    Row-major over (y, x, a) within a level, levels concatenated in increasing order: the
    order of :func:`edetgraph.task.anchors.generate_anchors`. Accepts lists or ``{level: t}`` dicts.
    """
    cls_list, box_list = _level_pair(cls_outputs, box_outputs)
    return _flatten(cls_list, num_classes), _flatten(box_list, 4)


def decode_boxes(box_enc, anchors):
    """``(ty, tx, th, tw)`` relative to ``[ymin, xmin, ymax, xmax]`` anchors -> boxes (same frame).

    ``yc = ty * ha + yca``, ``h = exp(th) * ha`` (likewise x, w); no scale factors and no
    clamping of th/tw, like the official decoder. ``box_enc [..., N, 4]``, ``anchors [N, 4]``.
    """
    box_enc = tf.convert_to_tensor(box_enc)
    anchors = tf.cast(anchors, box_enc.dtype)
    ya = (anchors[..., 0] + anchors[..., 2]) / 2
    xa = (anchors[..., 1] + anchors[..., 3]) / 2
    ha = anchors[..., 2] - anchors[..., 0]
    wa = anchors[..., 3] - anchors[..., 1]
    ty, tx, th, tw = tf.unstack(box_enc, num=4, axis=-1)
    w = tf.exp(tw) * wa
    h = tf.exp(th) * ha
    yc = ty * ha + ya
    xc = tx * wa + xa
    return tf.stack([yc - h / 2.0, xc - w / 2.0, yc + h / 2.0, xc + w / 2.0], axis=-1)


def _decode_center_size(box_enc, anchors_cs):
    """TFLite's decoder: float64 arithmetic on centre-size anchors, float32 corners."""
    e, a = tf.cast(box_enc, tf.float64), tf.cast(anchors_cs, tf.float64)
    f32 = lambda t: tf.cast(t, tf.float32)  # noqa: E731
    yc = f32(e[..., 0] * a[..., 2] + a[..., 0])
    xc = f32(e[..., 1] * a[..., 3] + a[..., 1])
    hh = f32(0.5 * tf.exp(e[..., 2]) * a[..., 2])
    hw = f32(0.5 * tf.exp(e[..., 3]) * a[..., 3])
    return tf.stack([yc - hh, xc - hw, yc + hh, xc + hw], axis=-1)


def _nms_v5(boxes, scores, max_dets, iou_thresh, score_thresh, sigma):
    """Padded ``(indices [K], scores [K], valid count)`` for one image."""
    return tf.raw_ops.NonMaxSuppressionV5(
        boxes=boxes, scores=scores, max_output_size=max_dets, iou_threshold=iou_thresh,
        score_threshold=score_thresh, soft_nms_sigma=sigma, pad_to_max_output_size=True)


def _top_class(cls_levels, num_classes: int):
    """Best value and its class per anchor, ``[B, N]`` each, from per-level class maps.

    Reduced per level and concatenated afterwards: concatenating the [B, N, C] maps first
    costs more than the reduction itself. top_k(1) yields value and index in one pass and,
    like argmax, gives the lower class index on ties.
    """
    vals, idxs = [], []
    for c in cls_levels:
        batch = c.shape[0] if c.shape[0] is not None else tf.shape(c)[0]
        v, i = tf.math.top_k(tf.reshape(c, [batch, -1, num_classes]), k=1)
        vals.append(v[..., 0])
        idxs.append(i[..., 0])
    return tf.concat(vals, axis=1), tf.concat(idxs, axis=1)


def _fast_nms_single(box_enc, scores, classes, anchors_cs, max_dets, score_thresh, iou_thresh):
    """One image, TFLite fast-NMS semantics on its max class score: ``boxes [K, 4],
    classes0 [K], scores [K], n``; padding zeroed (the TFLite kernel leaves it unset)."""
    boxes = _decode_center_size(box_enc, anchors_cs)
    # V5 keeps score > t where TFLite keeps score >= t: the next float32 below t bridges it.
    below = float(np.nextafter(np.float32(score_thresh), np.float32(-np.inf)))
    idx, sel_scores, n = _nms_v5(boxes, scores, max_dets, iou_thresh, below, 0.0)
    valid = tf.range(max_dets) < n
    out_boxes = tf.where(valid[:, None], tf.gather(boxes, idx), 0.0)
    out_classes = tf.where(valid, tf.cast(tf.gather(classes, idx), tf.float32), 0.0)
    return out_boxes, out_classes, tf.where(valid, sel_scores, 0.0), n


def _per_image(fn, tensors, signature):
    """``fn`` per image: a Python loop for a static batch (as the official), else map_fn."""
    batch = tensors[0].shape[0]
    if batch is not None:
        outs = [fn(*[t[i] for t in tensors]) for i in range(batch)]
        return [tf.stack(o) for o in zip(*outs)]
    return tf.map_fn(lambda ts: fn(*ts), tuple(tensors), fn_output_signature=signature)


def _finish(boxes, scores, classes0, n, image_size, scales):
    """Zero the padding, 1-based classes, clip in the network frame, then scale."""
    max_dets = boxes.shape[1]
    valid = tf.range(max_dets)[None, :] < tf.cast(n, tf.int32)[:, None]
    classes = tf.where(valid, tf.cast(classes0, tf.float32) + CLASS_OFFSET, 0.0)
    boxes = tf.where(valid[..., None], boxes, 0.0)
    if image_size is not None:
        h, w = parse_image_size(image_size)
        boxes = tf.clip_by_value(boxes, 0.0, tf.constant([h, w, h, w], tf.float32))
    if scales is not None:
        scales = tf.reshape(tf.cast(scales, tf.float32), [-1, 1, 1])
        boxes = boxes * scales
    return {"boxes": boxes, "scores": tf.where(valid, scores, 0.0), "classes": classes,
            "num_detections": tf.cast(n, tf.int32)}


def default_score_thresh(method: str) -> float:
    """The official default per method: 0.001 for soft, -inf (keep all) for hard and fast."""
    _check_method(method)
    return SOFT_SCORE_THRESH if method == "soft" else float("-inf")


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"unknown NMS method {method!r}; choose one of {', '.join(METHODS)}")


def _detect(cls_levels, box, anchors, scales, image_size, method, score_thresh, iou_thresh,
            max_dets, soft_nms_sigma, num_classes):
    _check_method(method)
    score_thresh = default_score_thresh(method) if score_thresh is None else float(score_thresh)
    sig = (tf.TensorSpec([max_dets, 4]), tf.TensorSpec([max_dets]), tf.TensorSpec([max_dets]),
           tf.TensorSpec([], tf.int32))
    if method == "fast":
        # The TFLite op sees sigmoid scores of every class, so take the max after the sigmoid.
        scores, classes = _top_class([tf.sigmoid(c) for c in cls_levels], num_classes)
        anchors_cs = tf.constant(anchors_to_center_size(np.asarray(anchors)))

        def one_fast(e, s, c):
            return _fast_nms_single(e, s, c, anchors_cs, max_dets, score_thresh, iou_thresh)

        boxes, classes0, sel_scores, n = _per_image(one_fast, [box, scores, classes], sig)
        return _finish(boxes, sel_scores, classes0, n, image_size, scales)
    sigma = soft_nms_sigma / 2.0 if method == "soft" else 0.0
    logits, classes = _top_class(cls_levels, num_classes)
    decoded = decode_boxes(box, anchors)

    def one(b, s, c):
        idx, sel, n = _nms_v5(b, s, max_dets, iou_thresh, score_thresh, sigma)
        return tf.gather(b, idx), tf.cast(tf.gather(c, idx), tf.float32), sel, n

    boxes, classes0, sel_scores, n = _per_image(one, [decoded, tf.sigmoid(logits), classes], sig)
    return _finish(boxes, sel_scores, classes0, n, image_size, scales)


def postprocess_flat(cls, box, anchors, scales=None, image_size: ImageSize | None = None,
                     method: str = "soft", score_thresh: float | None = None,
                     iou_thresh: float = 0.5, max_dets: int = 100, soft_nms_sigma: float = 0.5):
    """:func:`postprocess` on already flattened ``cls [B, N, C]`` logits and ``box [B, N, 4]``."""
    cls, box = tf.convert_to_tensor(cls, tf.float32), tf.convert_to_tensor(box, tf.float32)
    return _detect([cls], box, anchors, scales, image_size, method, score_thresh, iou_thresh,
                   max_dets, soft_nms_sigma, cls.shape[-1])


def postprocess(cls_outputs, box_outputs, anchors, scales=None,
                image_size: ImageSize | None = None, method: str = "soft",
                score_thresh: float | None = None, iou_thresh: float = 0.5, max_dets: int = 100,
                soft_nms_sigma: float = 0.5) -> dict:
    """Raw per-level head outputs -> padded detections in original-image pixels.

    Args:
      cls_outputs, box_outputs: per-level ``[B, H, W, A*C]`` logits / ``[B, H, W, A*4]``
        (lists, or dicts keyed by level).
      anchors: ``[N, 4]`` from :func:`edetgraph.task.anchors.generate_anchors`.
      scales: ``[B]`` scale-to-original factors from preprocessing (None: network frame).
      image_size: network input size; boxes are clipped to it (None: no clipping).
      method: ``soft`` (official default), ``hard`` (ONNX-exportable) or ``fast`` (TFLite op).
      score_thresh: None = official default (0.001 soft, -inf hard/fast).
      iou_thresh: hard/fast suppression threshold (TF's soft-NMS kernel does not use it).
      soft_nms_sigma: paper sigma; the kernel receives half of it, as in the official code.
    Returns:
      dict ``boxes [B, K, 4]`` (ymin, xmin, ymax, xmax), ``scores [B, K]``, ``classes [B, K]``
      float32 1-based, ``num_detections [B]`` int32; K = max_dets, padding zeroed.
    """
    cls_levels, box_levels = _level_pair(cls_outputs, box_outputs)
    cls_levels = [tf.convert_to_tensor(c, tf.float32) for c in cls_levels]
    box_levels = [tf.convert_to_tensor(b, tf.float32) for b in box_levels]
    num_classes = cls_levels[0].shape[-1] // (box_levels[0].shape[-1] // 4)
    # Only the small box maps are concatenated; class maps are reduced per level first.
    return _detect(cls_levels, _flatten(box_levels, 4), anchors, scales, image_size, method,
                   score_thresh, iou_thresh, max_dets, soft_nms_sigma, num_classes)


def make_postprocess_fn(image_size: ImageSize, num_classes: int = 90, batch_size: int = 1,
                        min_level: int = 3, max_level: int = 7, num_scales: int = 3,
                        aspect_ratios: Sequence = (1.0, 2.0, 0.5), anchor_scale: float = 4.0,
                        **nms_kwargs):
    """A traced-once ``tf.function(cls_outputs, box_outputs, scales) -> dict`` for fixed shapes.

    For benchmarks and exports: anchors are a constant, inputs have static shapes
    ``[batch, H_L, W_L, A*C]`` per level. ``nms_kwargs`` go to :func:`postprocess`.
    """
    anchors = generate_anchors(image_size, min_level, max_level, num_scales, aspect_ratios,
                               anchor_scale)
    a = num_scales * len(aspect_ratios)
    feats = feature_sizes(image_size, min_level, max_level).values()
    cls_spec = [tf.TensorSpec([batch_size, h, w, a * num_classes]) for h, w in feats]
    box_spec = [tf.TensorSpec([batch_size, h, w, a * 4]) for h, w in feats]

    spec = [cls_spec, box_spec, tf.TensorSpec([batch_size])]

    @tf.function(input_signature=spec, autograph=False)
    def postprocess_fn(cls_outputs, box_outputs, scales):
        return postprocess(cls_outputs, box_outputs, anchors, scales, image_size, **nms_kwargs)

    return postprocess_fn


def nms_candidates(cls_outputs, box_outputs, anchors, method: str):
    """What the hard or fast NMS chooses from, per image: every anchor's decoded box
    ``[B, N, 4]`` (network pixels, before clipping), its NMS score ``[B, N]`` (the sigmoid of
    its best class) and the values its class is chosen by ``[B, N, C]`` (the logits for
    ``hard``, which takes the arg-max logit; the sigmoid scores for ``fast``, as TFLite's op
    sees them). The parity gate replays NMS on these to judge tied scores.
    """
    if method not in ("hard", "fast"):
        raise ValueError(f"nms_candidates: {method!r} is not hard or fast")
    cls_list, box_list = _level_pair(cls_outputs, box_outputs)
    num_classes = cls_list[0].shape[-1] // (box_list[0].shape[-1] // 4)
    cls, box = flatten_outputs(cls_list, box_list, num_classes)
    if method == "fast":
        boxes = _decode_center_size(box, anchors_to_center_size(np.asarray(anchors)))
        by_class = tf.sigmoid(cls)
        return boxes, tf.reduce_max(by_class, axis=-1), by_class
    return decode_boxes(box, anchors), tf.sigmoid(tf.reduce_max(cls, axis=-1)), cls


def _fmt_float(x: float) -> str:
    return format(float(np.float32(x)), ".9g")  # exact float32, and 'inf'/'-inf' parse


def tflite_implements_signature(num_classes: int, max_dets: int = 100,
                                score_thresh: float = float("-inf"),
                                iou_thresh: float = 0.5) -> str:
    """``experimental_implements`` text that makes the TFLite converter emit its
    ``TFLite_Detection_PostProcess`` custom op (fast NMS, one class per box, no box scaling)."""
    attrs = [("max_detections", f"i: {int(max_dets)}"), ("max_classes_per_detection", "i: 1"),
             ("use_regular_nms", "b: false"),
             ("nms_score_threshold", f"f: {_fmt_float(score_thresh)}"),
             ("nms_iou_threshold", f"f: {_fmt_float(iou_thresh)}"),
             ("y_scale", "f: 1.0"), ("x_scale", "f: 1.0"), ("h_scale", "f: 1.0"),
             ("w_scale", "f: 1.0"), ("num_classes", f"i: {int(num_classes)}")]
    body = " ".join(f'attr {{ key: "{k}" value {{ {v} }} }}' for k, v in attrs)
    return f'name: "TFLite_Detection_PostProcess" {body}'


def make_tflite_detection_postprocess(anchors, num_classes: int, max_dets: int = 100,
                                      score_thresh: float | None = None, iou_thresh: float = 0.5,
                                      image_size: ImageSize | None = None,
                                      ssd_layout: bool = False):
    """``detect(cls_outputs, box_outputs, scales=None) -> dict`` for batch 1, built around a
    ``tf.function`` that the TFLite converter replaces by its ``TFLite_Detection_PostProcess``.

    In TensorFlow the function runs its body, the ``fast`` method, so the SavedModel and the
    TFLite model compute the same detections. Anchors go in as a centre-size constant in
    network pixels (scales 1.0), so the op's boxes are in network pixels too. The outputs
    are the :func:`postprocess` dict (1-based classes, zeroed padding, ``image_size``
    clipping, then ``scales``); return it from the exported function and the TFLite signature
    names them ``boxes``, ``scores``, ``classes``, ``num_detections``.
    ``score_thresh`` None = -inf (the official TFLite export keeps every box).
    ``ssd_layout`` (with ``image_size``) gives the outputs of TFLite's SSD detectors, which
    MediaPipe's and the Task Library's object detectors read: boxes divided by the network
    size after clipping (fractions of the input in [0, 1]) and the count as float32.
    """
    if ssd_layout and image_size is None:
        raise ValueError("the SSD layout's boxes need the image_size they are fractions of")
    score_thresh = default_score_thresh("fast") if score_thresh is None else float(score_thresh)
    anchors_cs = anchors_to_center_size(np.asarray(anchors))
    signature = tflite_implements_signature(num_classes, max_dets, score_thresh, iou_thresh)

    @tf.function(experimental_implements=signature, autograph=False)
    def detection_postprocess(box_encodings, class_predictions, anchor_boxes):
        # Output order (boxes, classes, scores, num_detections) is the custom op's order.
        best, classes = _top_class([class_predictions], num_classes)
        boxes, classes0, scores, n = _fast_nms_single(box_encodings[0], best[0], classes[0],
                                                      anchor_boxes, max_dets, score_thresh,
                                                      iou_thresh)
        return boxes[None], classes0[None], scores[None], tf.cast(n, tf.float32)[None]

    def detect(cls_outputs, box_outputs, scales=None):
        cls, box = flatten_outputs(cls_outputs, box_outputs, num_classes)
        if cls.shape[0] != 1:
            raise ValueError(f"TFLite_Detection_PostProcess takes batch 1, got {cls.shape[0]}")
        boxes, classes0, scores, n = detection_postprocess(box, tf.sigmoid(cls),
                                                           tf.constant(anchors_cs))
        out = _finish(boxes, scores, classes0, n, image_size, scales)
        if ssd_layout:
            h, w = parse_image_size(image_size)
            out["boxes"] = out["boxes"] / tf.constant([h, w, h, w], tf.float32)
            out["num_detections"] = tf.cast(out["num_detections"], tf.float32)
        return out

    return detect


def to_detections_json(result: Mapping, index: int = 0,
                       labels: Mapping[int, str] = COCO_LABELS) -> dict:
    """One image of a :func:`postprocess` result as plain JSON-able lists, padding dropped:
    ``{"boxes": [[ymin, xmin, ymax, xmax], ...], "scores", "classes" (int), "class_names"}``."""
    n = int(np.asarray(result["num_detections"])[index])
    boxes = np.asarray(result["boxes"])[index, :n]
    scores = np.asarray(result["scores"])[index, :n]
    classes = np.asarray(result["classes"])[index, :n].astype(np.int64)
    return {"boxes": [[float(v) for v in b] for b in boxes],
            "scores": [float(s) for s in scores],
            "classes": [int(c) for c in classes],
            "class_names": [label_name(c, labels) for c in classes]}
