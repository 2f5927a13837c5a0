"""COCO evaluation of a model: run the detector over a TFRecord split, write the detections
in COCO results format and score them with pycocotools (``edetgraph.task.coco``).

    ev = Evaluator(spec, "val-*.tfrecord", "val/instances.json")
    metrics = ev(model.variables_by_name())      # or ev() for the weights the model has

The numbers are pycocotools' own (``COCOeval.evaluate/accumulate/summarize`` on the
detections), restricted to the images present in the data; boxes go back to original
pixels through the pipeline's scale factor, then yxyx -> COCO ``[x, y, w, h]``. The model's
classes are 1-based and used as COCO category ids unchanged (COCO's 90 ids; the synthetic
dataset's 1..C).
"""
from __future__ import annotations

import json
import os
import time
from typing import Mapping

import tensorflow as tf

from edetgraph.checkpoints.checkpoint import load_checkpoint
from edetgraph.data.pipeline import make_dataset
from edetgraph.files import write_text
from edetgraph.nn.model import build_model
from edetgraph.task.anchors import spec_anchors
from edetgraph.task.coco import EvalError, coco_metrics, load_coco, to_coco_results
from edetgraph.task.postprocess import postprocess


class Evaluator:
    """Runs a model over a TFRecord split and scores it; reusable during training.

    Builds its own (single-device) model of `spec` unless `model` is given; calling it with
    ``{name: value}`` first copies those values into the model (e.g. the EMA weights).
    """

    def __init__(self, spec, data, annotations, batch_size: int = 8, nms: str = "soft",
                 model=None, max_dets: int = 100):
        self.spec, self.data, self.batch_size, self.nms = spec, data, batch_size, nms
        self.gt = load_coco(annotations)
        self.model = model if model is not None else build_model(spec)
        self.anchors = spec_anchors(spec)
        h, w = spec.image_size
        sig = [tf.TensorSpec([None, h, w, 3], tf.float32), tf.TensorSpec([None], tf.float32)]
        # Straight-line TF code (the model and postprocess): autograph would only spend
        # seconds converting the model each time an Evaluator is made.
        self._detect = tf.function(self._detect_batch, input_signature=sig, autograph=False)
        self.max_dets = max_dets

    def load(self, ckpt, use_ema="auto"):
        """Load a checkpoint (strict) into the evaluated model; returns the LoadReport."""
        return load_checkpoint(ckpt, self.model.variables_by_name(), mode="strict",
                               use_ema=use_ema)

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
            if "://" in out:            # a bucket: an object appears whole anyway
                with tf.io.gfile.GFile(out, "w") as f:
                    f.write(json.dumps(results))
            else:
                write_text(out, json.dumps(results))
        metrics = coco_metrics(self.gt, results, ids, per_class)
        metrics.update(images=len(ids), detections=len(results),
                       seconds=round(time.perf_counter() - start, 2))
        return metrics
