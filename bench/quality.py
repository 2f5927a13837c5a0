"""What the benchmark checks besides speed: raw-output parity with TF, detection agreement
and COCO AP, all computed the same way for every backend.

Parity compares raw head outputs element by element on the same inputs (random pixels and
real pictures) with :class:`exporters.parity.ParityGate`, under the tolerance of the file's
numeric kind. Detections come from ONE post-processing for all backends, the project's TF
``edetgraph.task.postprocess`` applied to each backend's raw outputs, so a difference in the
table is a difference in the network, never in the NMS.
"""
from __future__ import annotations

import os

import numpy as np

AGREE_SCORE = 0.3  # TF detections this confident must be reproduced
AGREE_IOU = 0.9    # ... by a detection of the same class overlapping this much
REFERENCE = {"max_abs": 0.0, "max_rel": 0.0, "tolerance": "ref", "passed": True,
             "why": "TF is the reference every other backend is compared with"}
TOLERANCE = {"tf": "fp32", "tf-xla": "fp32", "onnxruntime": "fp32", "tflite-fp32": "fp32",
             "tflite-fp16": "fp16", "tflite-int8": "int8", "tflite-int8-fh": "int8"}


def parity_batches(spec, batch: int, num_random: int = 2, seed: int = 0) -> list:
    """``[(labels, float input [B, H, W, 3], real)]``: random-pixel batches, then batches of
    real pictures (street.jpg and a synthetic scene), never mixed, so that "real" holds."""
    from exporters.parity import batches, parity_images
    images = parity_images(spec, "float", num_random, seed)
    random = [im for im in images if not im[2]]
    real = [im for im in images if im[2]]
    return (batches(random, batch) if random else []) + batches(real, batch)


def raw_parity(backend: str, ref: list, got: list, inputs: list, exact: list | None = None,
               *, num_classes: int) -> dict:
    """Raw outputs of ``backend`` against TF's over ``inputs`` (three lists in step), judged
    by :class:`exporters.parity.ParityGate` under the tolerance of the file's kind; ``exact``:
    the same outputs in float64, in step with ``inputs``, for the fp32 kinds.

    max_abs: largest |backend - TF| over every element of every output and input; max_rel:
    per output, its largest difference / its largest |TF|, worst output; worst: the output
    with the largest difference and the inputs of its batch; nrmse: per head (``cls``/``box``,
    levels pooled) RMSE / std(TF); float64: the largest distances of TF and of the backend
    from the float64 result; failures: the gate's first three.
    """
    from exporters.parity import ParityGate, tolerance_for
    tol = tolerance_for(TOLERANCE.get(backend, "fp32"))
    gate = ParityGate(tol, num_classes, image_side=0)  # no detections: the side is unused
    for i, ((labels, _, real), r, g) in enumerate(zip(inputs, ref, got)):
        gate.add_outputs(labels, r, g, real, None if exact is None else exact[i])
    result = gate.result()
    outputs = result["outputs"]
    worst = max(outputs, key=lambda n: outputs[n]["max_abs"])
    image = outputs[worst]["where"]["input"]
    wide = [f["float64"] for f in outputs.values() if f["float64"]]
    return {"max_abs": outputs[worst]["max_abs"],
            "max_rel": max(f["max_rel"] for f in outputs.values()),
            "worst": {"output": worst,
                      "inputs": next(list(labels) for labels, _, _ in inputs if image in labels)},
            "nrmse": {h: f["nrmse"] for h, f in result["heads"].items()},
            "tolerance": tol.name,
            "limit": (f"max |diff| <= {tol.atol:g} per output, or within "
                      f"{tol.exact_factor:g} x TF float32's distance from float64"
                      if tol.atol is not None else f"RMSE/std < {tol.nrmse:g} per head"),
            "float64": ({"tf_max_abs": max(w["tf_max_abs"] for w in wide),
                         "file_max_abs": max(w["file_max_abs"] for w in wide)} if wide else None),
            "why": tol.why, "passed": result["passed"], "failures": result["failures"][:3],
            "inputs": [lab for labels, _, _ in inputs for lab in labels]}


class Detector:
    """The project's TF post-processing, traced once for the raw-output shapes of one batch.

    ``detector(raw, scales=None)`` -> numpy ``boxes, scores, classes, num_detections``;
    ``scales`` maps network pixels back to the original image (None: network frame).
    """

    def __init__(self, spec, shapes: dict, method: str = "soft", max_dets: int = 100):
        import tensorflow as tf
        from edetgraph.task.postprocess import postprocess
        from exporters.common import spec_anchors
        anchors, levels = spec_anchors(spec), list(spec.levels)
        self.batch = int(next(iter(shapes.values()))[0])
        sig = [{k: tf.TensorSpec(s, tf.float32) for k, s in shapes.items()},
               tf.TensorSpec([self.batch], tf.float32)]

        @tf.function(input_signature=sig, autograph=False)
        def detect(raw, scales):
            return postprocess([raw[f"cls_l{lv}"] for lv in levels],
                               [raw[f"box_l{lv}"] for lv in levels], anchors, scales,
                               spec.image_size, method=method, max_dets=max_dets)

        self._detect, self._keys = detect, sorted(shapes)

    def __call__(self, raw: dict, scales=None) -> dict:
        scales = np.ones(self.batch, np.float32) if scales is None else scales
        out = self._detect({k: np.asarray(raw[k], np.float32) for k in self._keys},
                           np.asarray(scales, np.float32))
        return {k: v.numpy() for k, v in out.items()}


def _iou(box, boxes) -> np.ndarray:
    """IoU of one ``[ymin, xmin, ymax, xmax]`` box against ``boxes [N, 4]``."""
    ih = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iw = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    union = area(box) + area(boxes) - ih * iw
    # A box clipped flat against the image border has no area: the same flat box agrees.
    same = np.all(np.abs(boxes - box) <= 1e-3 * np.maximum(1.0, np.abs(box)), axis=1)
    return np.where(union > 0, ih * iw / np.where(union > 0, union, 1.0), same.astype(float))


def match_detections(ref: dict, got: dict, min_score: float = AGREE_SCORE,
                     min_iou: float = AGREE_IOU) -> tuple:
    """``(TF detections considered, matched, [|score diff| of each match])`` over a batch.

    Every TF detection scoring >= ``min_score`` is matched greedily, best score first, to an
    unused backend detection of the same class with IoU >= ``min_iou`` (the best-overlapping
    one); the backend's own scores are not thresholded, so a score just below the cut on
    one side does not count as a miss.
    """
    considered = matched = 0
    diffs = []
    for b in range(len(ref["num_detections"])):
        nr, ng = int(ref["num_detections"][b]), int(got["num_detections"][b])
        used = np.zeros(ng, bool)
        for i in np.argsort(-ref["scores"][b, :nr], kind="stable"):
            if ref["scores"][b, i] < min_score:
                continue
            considered += 1
            ious = _iou(ref["boxes"][b, i], got["boxes"][b, :ng]) if ng else np.zeros(0)
            ok = (~used) & (got["classes"][b, :ng] == ref["classes"][b, i]) & (ious >= min_iou)
            if ok.any():
                j = int(np.argmax(np.where(ok, ious, -1.0)))
                used[j] = True
                matched += 1
                diffs.append(abs(float(got["scores"][b, j]) - float(ref["scores"][b, i])))
    return considered, matched, diffs


def agreement(matches: list) -> dict:
    """Pool :func:`match_detections` results into the table's figures."""
    considered = sum(m[0] for m in matches)
    matched = sum(m[1] for m in matches)
    diffs = [d for m in matches for d in m[2]]
    return {"tf_detections": considered, "matched": matched,
            "fraction": matched / considered if considered else None,
            "mean_score_diff": float(np.mean(diffs)) if diffs else None,
            "rule": f"TF detections with score >= {AGREE_SCORE} matched by a detection of the "
                    f"same class with IoU >= {AGREE_IOU}"}


# ------------------------------------------------------------------------------ COCO AP

def check_eval_data(data: str, annotations: str) -> None:
    """Refuse --data/--annotations that cannot work, before anything slow runs (EvalError)."""
    from edetgraph.task.evaluation import EvalError, load_coco
    gt = load_coco(annotations)
    if os.path.isdir(data):
        from exporters.ap_check import images_folder
        folder = images_folder(data)
        missing = [im["file_name"] for im in gt.dataset["images"]
                   if not os.path.isfile(os.path.join(folder, im["file_name"]))]
        if missing:
            raise EvalError(f"--data {data}: {len(missing)} image(s) of {annotations} are not "
                             f"in {folder}, e.g. {missing[0]}")
        if not gt.dataset["images"]:
            raise EvalError(f"--annotations {annotations}: lists no images")
        return
    import glob
    if not glob.glob(data):
        raise EvalError(f"--data {data}: no such folder or TFRecord file")


def eval_batches(data: str, annotations: str, spec, batch: int, limit: int | None = None):
    """Yield ``(image ids, x [batch, H, W, 3], scales [batch])`` over the data; the last
    batch is padded with zeros (ids lists only the real images)."""
    def pad(ids, xs, scales):
        fill = batch - len(ids)
        x = np.concatenate([np.stack(xs), np.zeros((fill,) + xs[0].shape, np.float32)])
        return ids, x, np.concatenate([np.asarray(scales, np.float32), np.ones(fill, np.float32)])

    ids, xs, scales = [], [], []
    for image_id, x, scale in _eval_images(data, annotations, spec, batch, limit):
        ids.append(image_id)
        xs.append(x)
        scales.append(scale)
        if len(ids) == batch:
            yield pad(ids, xs, scales)
            ids, xs, scales = [], [], []
    if ids:
        yield pad(ids, xs, scales)


def _eval_images(data, annotations, spec, batch, limit):
    """One ``(id, normalised image, scale)`` at a time: a folder through
    edetgraph.task.preprocess, a TFRecord through the project's evaluation pipeline."""
    pre = spec.preprocess
    count = 0
    if os.path.isdir(data):
        from edetgraph.task.evaluation import load_coco
        from edetgraph.task.preprocess import preprocess, read_image
        from exporters.ap_check import images_folder
        folder = images_folder(data)
        for im in load_coco(annotations).dataset["images"][:limit]:
            x, scale = preprocess(read_image(os.path.join(folder, im["file_name"])),
                                  spec.image_size, pre.mean_rgb, pre.stddev_rgb)
            yield int(im["id"]), x.numpy(), float(scale)
        return
    from edetgraph.data.pipeline import make_dataset
    ds = make_dataset(data, spec.image_size, batch, training=False, mean_rgb=pre.mean_rgb,
                      stddev_rgb=pre.stddev_rgb)
    for b in ds:
        for image_id, x, scale in zip(b["source_id"].numpy(), b["image"].numpy(),
                                      b["image_scale"].numpy()):
            if limit is not None and count >= limit:
                return
            count += 1
            yield int(image_id), x, float(scale)


def coco_ap(annotations, detections: list, image_ids: list) -> dict:
    """AP and AP50 (pycocotools, via edetgraph.task.evaluation) of COCO-format detections."""
    from edetgraph.task.evaluation import coco_metrics
    m = coco_metrics(annotations, detections, image_ids)
    return {"AP": m["AP"], "AP50": m["AP50"], "AP75": m["AP75"], "images": len(image_ids),
            "detections": len(detections)}
