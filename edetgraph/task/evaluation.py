"""COCO evaluation: run the detector over a TFRecord split, write the detections in COCO
results format and score them with pycocotools.

    ev = Evaluator(spec, "val-*.tfrecord", "val/instances.json")
    metrics = ev(model.variables_by_name())      # or ev() for the weights the model has

The numbers are pycocotools' own (``COCOeval.evaluate/accumulate/summarize`` on the
detections), restricted to the images present in the data; boxes go back to original
pixels through the pipeline's scale factor, then yxyx -> COCO ``[x, y, w, h]``. The model's
classes are 1-based and used as COCO category ids unchanged (COCO's 90 ids; the synthetic
dataset's 1..C).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import time
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from edetgraph.task.anchors import generate_anchors
from edetgraph.data.pipeline import make_dataset
from edetgraph.task.postprocess import postprocess

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


class EvalError(RuntimeError):
    """Evaluation cannot run (bad annotations, no images); the message says why."""


def _quiet():
    """pycocotools prints progress on stdout; keep it off the CLI's output."""
    return contextlib.redirect_stdout(io.StringIO())


def load_coco(annotations):
    """A pycocotools COCO object from a path, a dict, or a COCO object."""
    from pycocotools.coco import COCO
    if isinstance(annotations, COCO):
        return annotations
    try:
        if isinstance(annotations, Mapping):
            data = annotations
        else:
            with tf.io.gfile.GFile(os.fspath(annotations)) as f:
                data = json.loads(f.read())
    except (OSError, ValueError, tf.errors.OpError) as e:
        raise EvalError(f"{annotations}: cannot read COCO annotations ({e})") from None
    if not isinstance(data, Mapping) or "images" not in data or "annotations" not in data:
        raise EvalError(f"{annotations}: not a COCO instances file (needs 'images' and "
                        "'annotations')")
    coco = COCO()
    coco.dataset = dict(data)
    coco.dataset.setdefault("categories", [])
    with _quiet():
        coco.createIndex()
    return coco


def to_coco_results(result: Mapping, image_ids: Sequence[int]) -> list[dict]:
    """A postprocess() batch -> COCO result dicts (padding dropped, boxes as [x, y, w, h])."""
    boxes, scores = np.asarray(result["boxes"]), np.asarray(result["scores"])
    classes, counts = np.asarray(result["classes"]), np.asarray(result["num_detections"])
    out = []
    for b, image_id in enumerate(image_ids):
        for k in range(int(counts[b])):
            y0, x0, y1, x1 = (float(v) for v in boxes[b, k])
            out.append({"image_id": int(image_id), "category_id": int(classes[b, k]),
                        "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(scores[b, k])})
    return out


def coco_metrics(annotations, detections: list, image_ids=None, per_class: bool = False) -> dict:
    """pycocotools bbox metrics of `detections` (COCO results list) against `annotations`.

    image_ids: the images evaluated (default: every image of the annotations). Returns
    METRIC_NAMES -> float, plus ``per_class`` {category name: AP} when asked (-1 for a class
    without ground truth, as pycocotools reports it). No detections at all gives zeros.
    """
    from pycocotools.cocoeval import COCOeval
    gt = load_coco(annotations)
    ids = sorted(int(i) for i in (image_ids if image_ids is not None else gt.getImgIds()))
    unknown = sorted(set(ids) - set(gt.getImgIds()))
    if unknown:
        raise EvalError(f"{len(unknown)} evaluated image id(s) are not in the annotations, "
                        f"e.g. {unknown[:5]}: do --data and --annotations belong together?")
    if not detections:
        metrics = {name: 0.0 for name in METRIC_NAMES}
        if per_class:
            metrics["per_class"] = {c["name"]: 0.0 for c in gt.loadCats(gt.getCatIds())}
        return metrics
    with _quiet():
        dt = gt.loadRes(list(detections))
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    metrics = {name: float(v) for name, v in zip(METRIC_NAMES, ev.stats)}
    if per_class:
        metrics["per_class"] = _per_class_ap(gt, ev)
    return metrics


def _per_class_ap(gt, ev) -> dict:
    """AP@[.5:.95], all areas, 100 detections, for each category (pycocotools' arrays)."""
    precision = ev.eval["precision"]          # [iou, recall, class, area, max_dets]
    out = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[gt.cats[int(cat_id)]["name"]] = float(p.mean()) if p.size else -1.0
    return out


def format_table(metrics: Mapping) -> str:
    """The COCO metrics as a small two-column table (per-class APs after it)."""
    lines = [f"{'metric':<8}{'value':>8}"]
    lines += [f"{name:<8}{metrics[name]:>8.4f}" for name in METRIC_NAMES if name in metrics]
    for name, ap in (metrics.get("per_class") or {}).items():
        lines.append(f"  AP[{name}] {ap:.4f}")
    return "\n".join(lines)


class Evaluator:
    """Runs a model over a TFRecord split and scores it; reusable during training.

    Builds its own (single-device) model of `spec` unless `model` is given; calling it with
    ``{name: value}`` first copies those values into the model (e.g. the EMA weights).
    """

    def __init__(self, spec, data, annotations, batch_size: int = 8, nms: str = "soft",
                 model=None, max_dets: int = 100):
        from edetgraph.nn.model import build_model
        self.spec, self.data, self.batch_size, self.nms = spec, data, batch_size, nms
        self.gt = load_coco(annotations)
        self.model = model if model is not None else build_model(spec)
        self.anchors = generate_anchors(spec.image_size, spec.min_level, spec.max_level,
                                        spec.anchors.num_scales, spec.anchors.aspect_ratios,
                                        spec.anchors.scale)
        h, w = spec.image_size
        sig = [tf.TensorSpec([None, h, w, 3], tf.float32), tf.TensorSpec([None], tf.float32)]
        self._detect = tf.function(self._detect_batch, input_signature=sig)
        self.max_dets = max_dets

    def _detect_batch(self, images, scales):
        cls, box = self.model(images, training=False)
        return postprocess(cls, box, self.anchors, scales, self.spec.image_size,
                           method=self.nms, max_dets=self.max_dets)

    def detections(self, progress=None) -> tuple[list, list]:
        """(COCO results list, image ids seen) over the whole split."""
        ds = make_dataset(self.data, self.spec.image_size, self.batch_size, training=False,
                          mean_rgb=self.spec.preprocess.mean_rgb,
                          stddev_rgb=self.spec.preprocess.stddev_rgb)
        results, ids = [], []
        for batch in ds:
            out = self._detect(batch["image"], tf.cast(batch["image_scale"], tf.float32))
            batch_ids = batch["source_id"].numpy().tolist()
            results += to_coco_results({k: v.numpy() for k, v in out.items()}, batch_ids)
            ids += batch_ids
            if progress:
                progress(len(ids))
        if not ids:
            raise EvalError(f"{self.data}: no images to evaluate")
        return results, ids

    def __call__(self, values: Mapping | None = None, per_class: bool = False,
                 detections_out=None, progress=None) -> dict:
        """Metrics dict (METRIC_NAMES, optional per_class, plus images / detections / seconds)."""
        start = time.perf_counter()
        if values is not None:
            own = self.model.variables_by_name()
            for name, var in own.items():
                var.assign(tf.convert_to_tensor(values[name]))
        results, ids = self.detections(progress)
        if detections_out:
            out = os.fspath(detections_out)
            tf.io.gfile.makedirs(os.path.dirname(out) or ".")
            with tf.io.gfile.GFile(out, "w") as f:
                f.write(json.dumps(results))
        metrics = coco_metrics(self.gt, results, ids, per_class)
        metrics.update(images=len(ids), detections=len(results),
                       seconds=round(time.perf_counter() - start, 2))
        return metrics
