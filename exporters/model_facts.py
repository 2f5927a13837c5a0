"""What an exported file says it is: one dictionary of facts, written into every file's
metadata (TFLite Model Metadata by ``exporters.tflite_metadata``, ONNX ``metadata_props``
by ``exporters.onnx_format``) and read back by ``edetgraph.verify.file_metadata``, so that
``infer --model`` and ``bench/device_runner.py`` know the input, its normalisation and
resizing, the outputs, the anchors and the class names from the file alone.
"""
from __future__ import annotations

import importlib.metadata

import numpy as np
import yaml

from edetgraph.checkpoints.archive import resolve_checkpoint
from edetgraph.checkpoints.checkpoint import checkpoint_labels
from edetgraph.data.labels import check_labels
from edetgraph.graph.sizes import feature_sizes
from edetgraph.task.anchors import num_anchors
from edetgraph.verify.file_metadata import FACTS_SCHEMA, RESIZE
from exporters.options import ExportOptions

BOX_ORDER = ["ymin", "xmin", "ymax", "xmax"]


def strict_json(value):
    """Plain JSON: numpy scalars and arrays as Python values, -inf/nan as strings."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return strict_json(value.tolist())
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def edetgraph_version() -> str:
    try:
        return importlib.metadata.version("edetgraph")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def labels_of(spec, opts: ExportOptions) -> tuple[dict, str]:
    """The class names the file carries and where they came from: the command line's
    resolution, or the names the checkpoint itself holds when nothing beside it did."""
    labels, source = dict(opts.card.labels), opts.card.labels_source
    explicit_or_dir = source.endswith(".json")
    if opts.ckpt is not None and not explicit_or_dir:
        prefix = resolve_checkpoint(opts.ckpt)
        embedded = checkpoint_labels(prefix)
        if embedded:
            return check_labels(embedded, spec.num_classes, f"{prefix} (its labels)"), prefix
    return labels, source or "none (class ids)"


def anchor_facts(spec) -> dict:
    """Everything a decoder needs to rebuild the anchors (``task.anchors.generate_anchors``)."""
    a = spec.anchors
    h, w = spec.image_size
    return {"min_level": a.min_level, "max_level": a.max_level, "num_scales": a.num_scales,
            "aspect_ratios": [list(r) if isinstance(r, (list, tuple)) else r
                              for r in a.aspect_ratios],
            "scale": a.scale, "image_size": [h, w],
            "feature_sizes": {str(k): list(v) for k, v in
                              feature_sizes(spec.image_size, a.min_level, a.max_level).items()},
            "count": num_anchors(spec.image_size, a.min_level, a.max_level, a.num_scales,
                                 a.aspect_ratios),
            "order": "level, row, column, anchor (octave * len(aspect_ratios) + aspect)",
            "box": "[ymin, xmin, ymax, xmax] in network pixels; centre stride/2 + i*stride, "
                   "size scale * stride * 2^(octave/num_scales), width/height = aspect",
            "coding": "(ty, tx, th, tw): yc = ty*ha + yca, xc = tx*wa + xca, h = exp(th)*ha, "
                      "w = exp(tw)*wa (no scale factors)"}


def output_facts(spec, opts: ExportOptions, boxes: str | None) -> dict:
    if opts.postprocess == "none":
        return {"kind": "raw", "class_outputs": "cls_l<L> [B, H_L, W_L, A*C] logits, channel "
                "a*C + c is class c+1 of anchor a", "box_outputs": "box_l<L> [B, H_L, W_L, A*4] "
                "(ty, tx, th, tw), channel a*4 + k", "levels": list(spec.levels)}
    return {"kind": "detections", "nms": "fast" if opts.postprocess == "fast" else "hard",
            "boxes": boxes, "box_order": BOX_ORDER, "classes": "1-based class ids (float)",
            "scores": "sigmoid of the class logit", "max_detections": opts.max_detections,
            "score_threshold": opts.score_threshold, "iou_threshold": opts.iou_threshold}


def model_facts(spec, opts: ExportOptions, fmt: str, labels: dict, labels_source: str,
                boxes: str | None = None) -> dict:
    """The facts of one export (``boxes``: ``ratio`` or ``pixels`` for in-graph NMS)."""
    h, w = spec.image_size
    uint8 = opts.input == "uint8"
    return strict_json({
        "schema": FACTS_SCHEMA, "format": fmt, "model": opts.card.name or spec.name,
        "spec_name": spec.name, "edetgraph_version": edetgraph_version(),
        "num_classes": spec.num_classes,
        "labels": {str(k): labels[k] for k in sorted(labels)}, "labels_source": labels_source,
        "input": {"layout": "NHWC", "height": h, "width": w, "channels": "RGB",
                  "batch": opts.batch, "dtype": "uint8" if uint8 else "float32",
                  "kind": opts.input,
                  "normalisation": {"mean": list(spec.preprocess.mean_rgb),
                                    "std": list(spec.preprocess.stddev_rgb),
                                    "formula": "(pixel - mean) / std",
                                    "done_by": "the file" if uint8 else "the caller"},
                  "resize": RESIZE},
        "postprocess": opts.postprocess,
        "outputs": output_facts(spec, opts, boxes),
        "anchors": anchor_facts(spec),
        "weights": "random (seed %d)" % opts.seed if opts.ckpt is None else str(opts.ckpt),
        "spec": yaml.safe_dump(spec.to_dict(), sort_keys=False),
    })


def description(spec, opts: ExportOptions, fmt: str) -> str:
    """The metadata's description when the command line gave none."""
    if opts.card.description:
        return opts.card.description
    what = {"none": "raw head outputs (class logits and box codes per level; decode with "
                    "the anchors in the metadata)",
            "fast": "detections from TFLite_Detection_PostProcess (fast NMS): boxes as "
                    "fractions of the input, 1-based classes, scores, count",
            "hard-nms": "detections from ONNX NonMaxSuppression: boxes in input pixels, "
                        "1-based classes, scores, count"}[opts.postprocess]
    return (f"{spec.name}: an EfficientDet-family detector ({spec.num_classes} classes, "
            f"{spec.image_size[0]}x{spec.image_size[1]} RGB input) exported to {fmt} by "
            f"edetgraph; outputs {what}.")
