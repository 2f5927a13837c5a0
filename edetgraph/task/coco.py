"""COCO metrics without TensorFlow: reading instances files, converting detections to COCO
results and scoring them with pycocotools (``edetgraph.task.evaluation`` runs a model over
a split and uses these).

The numbers are pycocotools' own (``COCOeval.evaluate/accumulate/summarize``), restricted
to the images evaluated. Classes are 1-based and used as COCO category ids unchanged
(COCO's 90 ids; the synthetic dataset's 1..C).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


class EvalError(RuntimeError):
    """Evaluation cannot run (bad annotations, no images); the message says why."""


def _quiet():
    """pycocotools prints progress on stdout; keep it off the CLI's output."""
    return contextlib.redirect_stdout(io.StringIO())


def load_coco(annotations):
    """A pycocotools COCO object from a path, a dict, or a COCO object."""
    if isinstance(annotations, COCO):
        return annotations
    try:
        if isinstance(annotations, Mapping):
            data = annotations
        else:
            data = json.loads(_read_text(os.fspath(annotations)))
    except (OSError, ValueError) as e:
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


def _read_text(path: str) -> str:
    """A local file, or a remote one (gs://...) through TensorFlow's file system."""
    if "://" not in path:
        with open(path, encoding="utf-8") as f:
            return f.read()
    import tensorflow as tf  # deferred: only remote paths need TensorFlow's file system
    try:
        with tf.io.gfile.GFile(path) as f:
            return f.read()
    except tf.errors.OpError as e:
        raise OSError(e.message) from None
