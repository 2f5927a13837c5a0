"""Accuracy of a file: COCO AP of an exported file and of the TF model it came from, on the
same annotated images, through the same post-processing.

The parity gate proves that a file carries the TF signal; for quantised files (fp16, int8)
that says little about accuracy, which depends on the weights. With annotated images the
loss users care about is measured: how many AP points the file gives up. ``AP_DROP``
(``edetgraph.verify.parity``) says how many each kind of file may lose (points = 100 x AP).

Raw-head files go through one post-processing for every backend (:class:`Postprocessor`:
the project's TF ``postprocess``, soft-NMS by default as the official evaluation), so a
difference is a difference in the network, never in the NMS; files with in-graph NMS are
judged by their own detections against TF's with the same NMS.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from edetgraph.graph import outputs
from edetgraph.task.anchors import spec_anchors
from edetgraph.task.coco import EvalError, coco_metrics, to_coco_results
from edetgraph.task.postprocess import postprocess
from edetgraph.verify.detections import in_pixels
from edetgraph.verify.images import eval_batches
from edetgraph.verify.parity import AP_DROP, AP_DROP_WHY


class Postprocessor:
    """The project's TF post-processing, traced once for the raw-output shapes of one batch.

    ``postprocessor(raw, scales=None)`` -> numpy ``boxes, scores, classes, num_detections``;
    ``scales`` maps network pixels back to the original image (None: network frame).
    """

    def __init__(self, spec, shapes: dict, method: str = "soft", max_dets: int = 100):
        anchors, levels = spec_anchors(spec), list(spec.levels)
        self.batch = int(next(iter(shapes.values()))[0])
        sig = [{k: tf.TensorSpec(s, tf.float32) for k, s in shapes.items()},
               tf.TensorSpec([self.batch], tf.float32)]

        @tf.function(input_signature=sig, autograph=False)
        def detect(raw, scales):
            return postprocess(*outputs.split(raw, levels), anchors, scales, spec.image_size,
                               method=method, max_dets=max_dets)

        self._detect, self._keys = detect, sorted(shapes)

    def __call__(self, raw: dict, scales=None) -> dict:
        scales = np.ones(self.batch, np.float32) if scales is None else scales
        out = self._detect({k: np.asarray(raw[k], np.float32) for k in self._keys},
                           np.asarray(scales, np.float32))
        return {k: v.numpy() for k, v in out.items()}


def coco_ap(annotations, detections: list, image_ids: list) -> dict:
    """AP, AP50 and AP75 (pycocotools) of COCO-format detections on ``image_ids``."""
    m = coco_metrics(annotations, detections, image_ids)
    return {"AP": m["AP"], "AP50": m["AP50"], "AP75": m["AP75"], "images": len(image_ids),
            "detections": len(detections)}


def measure(spec, serve, run_file, data: str, annotations: str, input_kind: str, batch: int,
            kind: str, limit: int | None = None, nms: str = "soft",
            max_drop: float | None = None, say=lambda m: None, box_scale=None) -> dict:
    """AP of TF (``serve``) and of the file (``run_file``) on the same images: a dict with
    both, the drop in points, the bound (``max_drop``, else ``AP_DROP[kind]``) and
    ``passed``. ``box_scale`` (``[h, w, h, w]``): in-graph detections whose boxes are
    fractions of the input (TFLite ``--postprocess fast``)."""
    post, dets, ids = None, {"tf": [], "file": []}, []
    for batch_ids, x, scales in eval_batches(data, annotations, spec, input_kind, batch, limit):
        outs = {"tf": {k: v.numpy() for k, v in serve(tf.constant(x)).items()},
                "file": run_file(x)}
        for who, out in outs.items():
            if "num_detections" in out:          # NMS in the graph
                det = in_pixels({k: np.asarray(v) for k, v in out.items()}, box_scale)
                det["boxes"] = det["boxes"] * scales[:, None, None]
            else:
                if post is None:
                    post = Postprocessor(spec, {k: v.shape for k, v in out.items()}, nms)
                det = post(out, scales)
            dets[who] += to_coco_results(det, batch_ids)
        ids += batch_ids
        if len(ids) % 50 < batch:
            say(f"  AP check: {len(ids)} image(s)")
    if not ids:
        raise EvalError(f"{data}: no images to evaluate")
    ref, got = coco_ap(annotations, dets["tf"], ids), coco_ap(annotations, dets["file"], ids)
    bound = AP_DROP[kind] if max_drop is None else max_drop
    drop = 100.0 * (ref["AP"] - got["AP"])
    return {"data": data, "annotations": annotations, "images": len(ids),
            "nms": "in-graph" if post is None else nms, "tf": ref, "file": got,
            "ap_drop_points": drop, "max_ap_drop_points": bound, "why": AP_DROP_WHY,
            "passed": drop <= bound}


def format_ap(r: dict) -> str:
    """One line: both APs, the drop, the bound and the verdict."""
    verdict = "ok" if r["passed"] else "FAIL"
    return (f"AP on {r['images']} image(s) of {r['data']} ({r['nms']} NMS): TF {r['tf']['AP']:.4f} "
            f"(AP50 {r['tf']['AP50']:.4f}), file {r['file']['AP']:.4f} "
            f"(AP50 {r['file']['AP50']:.4f}); drop {r['ap_drop_points']:+.2f} points, allowed "
            f"{r['max_ap_drop_points']:g}: {verdict}")
