"""A ready-to-run detector: spec + network + anchors + pre- and post-processing.

``Detector`` owns one traced ``tf.function`` per batch size that runs the whole official
inference pipeline (normalise, aspect-preserving resize, pad; network; decode; NMS; boxes
back to original pixels) in one graph. Image height and width are dynamic in the signature,
but everything after the resize has static shapes, so the network and the NMS trace once.

    det = Detector.from_spec(load_spec("d0"), ckpt="efficientdet-d0.tar.gz")
    print(det.load_report.summary())
    dets = det.detect([read_image("street.jpg")])   # [{"boxes": ..., "class_names": ...}]
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf

from edetgraph.checkpoints.checkpoint import load_checkpoint
from edetgraph.graph import outputs
from edetgraph.nn.model import DetectionModel, build_model
from edetgraph.task.anchors import spec_anchors
from edetgraph.task.labels import COCO_LABELS, COCO_NUM_CLASSES
from edetgraph.task.postprocess import METHODS, postprocess, to_detections_json
from edetgraph.task.preprocess import preprocess_batch

DETECTION_KEYS = ("boxes", "scores", "classes", "num_detections")


class Detector:
    """Runs uint8 RGB images through pre-processing, the network and NMS.

    Args:
      spec: the ModelSpec the model was built from.
      model: a DetectionModel (weights already loaded).
      method: NMS method, ``soft`` (official default), ``hard`` or ``fast``.
      score_thresh: None = the method's official default (0.001 for soft).
      max_dets: detections kept per image (output padding size).
      labels: ``{class id: name}``; None = COCO names for 90-class specs, else none.
      load_report: the checkpoint LoadReport, kept for callers to print.
    """

    def __init__(self, spec, model: DetectionModel, method: str = "soft",
                 score_thresh: float | None = None, max_dets: int = 100,
                 labels: Mapping[int, str] | None = None, load_report=None):
        if method not in METHODS:
            raise ValueError(f"unknown NMS method {method!r}; choose one of {', '.join(METHODS)}")
        if max_dets < 1:
            raise ValueError(f"max_dets must be >= 1, got {max_dets}")
        self.spec, self.model, self.load_report = spec, model, load_report
        self.method, self.score_thresh, self.max_dets = method, score_thresh, int(max_dets)
        if labels is None:
            labels = COCO_LABELS if spec.num_classes == COCO_NUM_CLASSES else {}
        self.labels = dict(labels)
        self.anchors = spec_anchors(spec)
        self._fns: dict = {}

    @classmethod
    def from_spec(cls, spec, ckpt=None, mode: str = "strict", use_ema="auto", seed: int = 0,
                  **options) -> "Detector":
        """Build the model; load ``ckpt`` (archive, folder or prefix) if given, else keep the
        random initial weights (``load_report`` is then None). ``options`` go to __init__."""
        model = build_model(spec, seed=seed)
        report = None
        if ckpt is not None:
            report = load_checkpoint(ckpt, model.variables_by_name(), mode=mode, use_ema=use_ema)
        return cls(spec, model, load_report=report, **options)

    def pipeline(self, images: tf.Tensor) -> dict:
        """uint8 ``[B, H, W, 3]`` -> dict of ``input``, ``scale``, ``cls_l*``/``box_l*`` and the
        detections (``boxes``, ``scores``, ``classes``, ``num_detections``). Traceable."""
        pre = self.spec.preprocess
        x, scales = preprocess_batch(images, self.spec.image_size, pre.mean_rgb, pre.stddev_rgb)
        raw = self.model.raw_outputs(x)
        dets = postprocess(*outputs.split(raw, self.spec.levels), self.anchors, scales,
                           self.spec.image_size, method=self.method,
                           score_thresh=self.score_thresh, max_dets=self.max_dets)
        return {"input": x, "scale": scales, **raw, **dets}

    def function(self, batch_size: int | None = 1):
        """The traced pipeline for uint8 ``[batch_size, H, W, 3]`` (any H, W); cached.

        A fixed batch size runs NMS in a Python loop over images as the official model does;
        ``None`` accepts any batch through ``tf.map_fn`` (what the SavedModel exports).
        """
        if batch_size not in self._fns:
            sig = tf.TensorSpec([batch_size, None, None, 3], tf.uint8, name="images")
            self._fns[batch_size] = tf.function(self.pipeline, input_signature=[sig],
                                                autograph=False)
        return self._fns[batch_size]

    def _run(self, images) -> list[dict]:
        """One result dict of tensors per call: a 4-D array is one call, a list one per image."""
        if isinstance(images, (list, tuple)):
            return [self._run_batch(np.asarray(im)[None]) for im in images]
        return [self._run_batch(np.asarray(images))]

    def _run_batch(self, batch: np.ndarray) -> dict:
        if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [H, W, 3] (or a [B, H, W, 3] batch), got "
                             f"{batch.dtype} {list(batch.shape)}")
        return self.function(batch.shape[0])(tf.constant(batch))

    def detect(self, images) -> list[dict]:
        """Detections per image: ``{"boxes", "scores", "classes", "class_names"}`` as plain lists,
        padding dropped; boxes ``[ymin, xmin, ymax, xmax]`` in original-image pixels.

        ``images``: a list of uint8 ``[H, W, 3]`` arrays (any sizes), or one ``[B, H, W, 3]``.
        """
        out = []
        for res in self._run(images):
            dets = {k: res[k].numpy() for k in DETECTION_KEYS}
            out += [to_detections_json(dets, i, self.labels) for i in range(len(dets["scores"]))]
        return out

    def raw(self, images) -> list[dict]:
        """Everything per image as numpy, batch axis kept (``[1, ...]``): ``input``, ``scale``,
        ``cls_l*``, ``box_l*`` (NHWC as emitted), ``boxes``, ``scores``, ``classes``,
        ``num_detections``."""
        out = []
        for res in self._run(images):
            res = {k: v.numpy() for k, v in res.items()}
            for i in range(len(res["scale"])):
                out.append({k: v[i:i + 1] for k, v in res.items()})
        return out
