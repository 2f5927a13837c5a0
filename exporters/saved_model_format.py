"""SavedModel as an export format: the whole detector (pre-processing, network, NMS) as a
TensorFlow SavedModel that needs no edetgraph to run.

Signatures (all take a batch; every image of one call shares one size, any size, resized
inside as the official model does):

- ``serving_default``: ``images`` uint8 ``[B, H, W, 3]`` RGB -> ``boxes`` ``[B, K, 4]``
  (ymin, xmin, ymax, xmax in original pixels), ``scores``, ``classes`` (float32, 1-based),
  ``num_detections`` ``[B]`` int32; K = max detections, padding zeroed;
- ``raw``: same input -> ``input`` (the network input), ``scale`` ``[B]`` and the head
  outputs ``cls_l3`` ... ``box_l7``;
- ``network``: ``input`` float32 ``[B, S, S, 3]`` (already pre-processed) -> head outputs.

Through the export flow like every format: its ``network`` signature, reloaded from the
staged folder, passes the fp32 parity gate against TF, and then its own check reloads
``serving_default`` and compares its detections on street.jpg with the in-process
detector's.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from edetgraph.checkpoints.checkpoint import load_checkpoint
from edetgraph.nn.model import build_model
from edetgraph.resources import path as resource
from edetgraph.task.detector import Detector
from edetgraph.task.preprocess import read_image
from exporters.options import ExportFailed, ExportOptions
from exporters.pipeline import Format

SIGNATURES = ("serving_default", "raw", "network")
DETECTION_KEYS = ("boxes", "scores", "classes", "num_detections")


class SavedModelFormat(Format):
    name, prog, runner = "saved_model", "to_saved_model", "tf"
    runner_options = {"signature": "network"}
    versions = ("tensorflow-cpu", "tensorflow")
    writes_folder = True   # a SavedModel is a folder; its CLI checks that one at --out is one

    def __init__(self, nms: str = "soft", score_thresh: float | None = None,
                 max_dets: int = 100, ckpt_mode: str = "strict"):
        self.nms, self.score_thresh, self.max_dets = nms, score_thresh, max_dets
        self.ckpt_mode = ckpt_mode
        self.load_report = None

    def build(self, spec, opts: ExportOptions):
        """Checkpoint weights loaded in ``ckpt_mode``, else the seeded random weights every
        exporter uses (exporting random weights only tests the export)."""
        if opts.ckpt is None:
            return super().build(spec, opts)
        model = build_model(spec, seed=opts.seed)
        self.load_report = load_checkpoint(opts.ckpt, model.variables_by_name(),
                                           mode=self.ckpt_mode)
        report = self.load_report
        return model, {"source": str(opts.ckpt), "format": report.format,
                       "ema": bool(report.used_ema), "variables": len(report.loaded)}

    def describe(self, opts: ExportOptions) -> str:
        return (f"saving a SavedModel ({', '.join(SIGNATURES)}; {self.nms}-NMS, "
                f"batch {opts.batch or 'any'})")

    def convert(self, serve, model, spec, opts: ExportOptions, say):
        """The Detector whose pipeline the signatures trace."""
        return Detector(spec, model, method=self.nms, score_thresh=self.score_thresh,
                        max_dets=self.max_dets), opts.batch

    def write(self, converted, path: str) -> None:
        detector, batch = converted
        save(detector, path, batch)

    def options(self, opts: ExportOptions, converted) -> dict:
        return {"nms": self.nms, "score_thresh": self.score_thresh, "max_dets": self.max_dets,
                "batch": opts.batch or "dynamic", "ckpt_mode": self.ckpt_mode,
                "signatures": list(SIGNATURES)}

    def check(self, converted, path: str) -> dict:
        detector, batch = converted
        r = check_saved_model(detector, path, read_image(resource("street.jpg")).numpy(), batch)
        if not (r["classes_equal"] and r["max_box_diff"] <= 0.01
                and r["max_score_diff"] <= 1e-4
                and r["num_detections"][0] == r["num_detections"][1]):
            raise ExportFailed(f"the reloaded SavedModel disagrees with the detector on "
                               f"street.jpg ({r}); nothing written")
        return {"street.jpg": r}


def save(detector, out_dir, batch_size: int | None = None) -> str:
    """Write ``detector`` (an ``edetgraph.task.detector.Detector``) as a SavedModel."""
    spec = detector.spec
    h, w = spec.image_size
    images = tf.TensorSpec([batch_size, None, None, 3], tf.uint8, name="images")
    net_in = tf.TensorSpec([batch_size, h, w, 3], tf.float32, name="input")

    module = tf.Module()
    module.model = detector.model  # tracks the variables the functions capture

    @tf.function(input_signature=[images], autograph=False)
    def serve(images):
        out = detector.pipeline(images)
        return {k: out[k] for k in DETECTION_KEYS}

    @tf.function(input_signature=[images], autograph=False)
    def raw(images):
        out = detector.pipeline(images)
        return {k: v for k, v in out.items() if k not in DETECTION_KEYS}

    @tf.function(input_signature=[net_in], autograph=False)
    def network(input):  # noqa: A002 - the signature's input name
        return detector.model.raw_outputs(input)

    module.serve, module.raw, module.network = serve, raw, network
    signatures = {"serving_default": serve.get_concrete_function(),
                  "raw": raw.get_concrete_function(), "network": network.get_concrete_function()}
    tf.saved_model.save(module, str(out_dir), signatures=signatures)
    return str(out_dir)


def check_saved_model(detector, out_dir, image, batch_size: int | None = None) -> dict:
    """Reload ``out_dir`` and compare its detections on ``image`` (uint8 HxWx3, repeated to
    ``batch_size``) with the detector's; returns ``{"num_detections": [ours, saved],
    "max_box_diff", "max_score_diff", "classes_equal"}``."""
    loaded = tf.saved_model.load(str(out_dir))
    batch = np.repeat(image[None], batch_size or 1, axis=0)
    got = {k: v.numpy() for k, v in loaded.signatures["serving_default"](
        images=tf.constant(batch)).items()}
    want = detector.raw([image])[0]
    return {"num_detections": [int(want["num_detections"][0]), int(got["num_detections"].min())],
            "max_box_diff": float(np.abs(got["boxes"] - want["boxes"]).max()),
            "max_score_diff": float(np.abs(got["scores"] - want["scores"]).max()),
            "classes_equal": bool((got["classes"] == want["classes"]).all())}
