"""End-to-end rows and peer rows of the benchmark.

End to end (``*-e2e``): the deployable files, with post-processing in the graph (ONNX
hard-NMS, TFLite's fast-NMS op) and uint8 pictures in, beside the TF ``Detector`` end to end
(pre-processing, network, soft-NMS, the official default). Every row gets the same uint8
picture already letterboxed to the network size (the resize stays outside the files, see
``exporters.cli.NORMALISED_HELP``), so each row times picture -> detections. A file's
detections are compared with TF's under the same NMS (``reference``), and its AP bound
is judged against TF with that NMS too.

Peers (``--peer NAME=FILE``): a foreign model timed beside ours, with its own input shape;
nothing is compared (parity does not apply).
"""
from __future__ import annotations


import numpy as np
import tensorflow as tf

from bench.config import TABLE
from edetgraph.graph import outputs
from edetgraph.task.anchors import spec_anchors
from edetgraph.task.detector import DETECTION_KEYS, Detector
from edetgraph.task.postprocess import make_tflite_detection_postprocess, postprocess
from edetgraph.task.serving import make_serving_fn
from edetgraph.verify.runners import kind_for_path, make_runner


def nms_of(name: str) -> str:
    """The NMS a row's detections come from: hard (ONNX files), fast (TFLite), soft (TF)."""
    export = TABLE[name].export
    return {"onnx": "hard", "tflite": "fast"}.get(export, "soft")


def reference(model, spec, nms: str, batch: int):
    """TF's end-to-end function for uint8 network-size pictures with ``nms``: the Detector
    for soft (what users run), else the exporters' in-graph post-processing in TF."""
    h, w = spec.image_size
    if nms == "soft":
        det = Detector(spec, model, method="soft")
        sig = [tf.TensorSpec([batch, h, w, 3], tf.uint8, name="images")]

        @tf.function(input_signature=sig, autograph=False)
        def detector(images):
            out = det.pipeline(images)
            return {k: out[k] for k in DETECTION_KEYS}
        return detector
    anchors = spec_anchors(spec)
    if nms == "fast":
        detect = make_tflite_detection_postprocess(anchors, spec.num_classes,
                                                   image_size=spec.image_size, ssd_layout=True)
        head = lambda raw: detect(*outputs.split(raw, spec.levels))   # noqa: E731
    else:
        def head(raw):
            return postprocess(*outputs.split(raw, spec.levels), anchors, None,
                               spec.image_size, method="hard")
    return make_serving_fn(model, spec, batch, "uint8", head)


def box_scale(nms: str, spec):
    """``[h, w, h, w]`` for TFLite's fast-NMS files, whose boxes are fractions of the
    input (MediaPipe's convention), None for boxes in pixels."""
    return np.asarray(spec.image_size * 2, np.float32) if nms == "fast" else None


def runner(fn):
    """A TF function as a runner."""
    return make_runner("tf", None, None, fn=fn)


def peer_runner(path: str, threads: int):
    return make_runner(kind_for_path(path), path, threads)


def peer_input(runner, seed: int = 0) -> np.ndarray:
    """Random input of the peer's own shape and type (dynamic dimensions as 1)."""
    d = runner.input_details[0]
    shape = [s or 1 for s in d.shape]
    rng = np.random.default_rng(seed)
    if np.dtype(d.dtype).kind == "u":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.normal(size=shape).astype(d.dtype if d.quantization is None else np.float32)
