"""Export a detector as a TensorFlow SavedModel that needs no edetgraph to run.

    python exporters/to_saved_model.py --spec d0 --ckpt efficientdet-d0.tar.gz --out d0_saved/

Signatures (all take a batch; every image of one call shares one size, any size, resized
inside as the official model does; the content keeps its aspect ratio):

- ``serving_default``: ``images`` uint8 ``[B, H, W, 3]`` RGB -> ``boxes`` ``[B, K, 4]``
  (ymin, xmin, ymax, xmax in original pixels), ``scores`` ``[B, K]``, ``classes`` ``[B, K]``
  (float32, 1-based COCO-style ids), ``num_detections`` ``[B]`` int32; K = ``--max-dets``,
  padding zeroed. NMS as ``--nms`` (default soft, the official).
- ``raw``: same input -> ``input`` (the network input ``[B, S, S, 3]``), ``scale`` ``[B]``
  (multiply network-frame boxes by it) and the head outputs ``cls_l3`` ... ``box_l7`` (NHWC).
- ``network``: ``input`` float32 ``[B, S, S, 3]`` (already pre-processed) -> ``cls_l*``/``box_l*``.

``B`` is free unless ``--batch-size`` fixes it (a fixed batch runs NMS in an unrolled loop
instead of ``tf.map_fn``, slightly faster). Reload with ``tf.saved_model.load(DIR)`` and call
``.signatures["serving_default"](images=...)``. The SavedModel is written to a staging folder
beside DIR, reloaded, and its detections on street.jpg are compared with the in-process
detector; only then does it replace DIR (an existing DIR must be empty or a SavedModel).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

SIGNATURES = ("serving_default", "raw", "network")


def export_saved_model(detector, out_dir, batch_size: int | None = None) -> str:
    """Write ``detector`` (an ``edetgraph.task.detector.Detector``) as a SavedModel; returns the path."""
    import tensorflow as tf
    spec = detector.spec
    h, w = spec.image_size
    images = tf.TensorSpec([batch_size, None, None, 3], tf.uint8, name="images")
    net_in = tf.TensorSpec([batch_size, h, w, 3], tf.float32, name="input")
    keys = ("boxes", "scores", "classes", "num_detections")

    module = tf.Module()
    module.model = detector.model  # tracks the variables the functions capture

    @tf.function(input_signature=[images], autograph=False)
    def serve(images):
        out = detector.pipeline(images)
        return {k: out[k] for k in keys}

    @tf.function(input_signature=[images], autograph=False)
    def raw(images):
        out = detector.pipeline(images)
        return {k: v for k, v in out.items() if k not in keys}

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
    import numpy as np
    import tensorflow as tf
    loaded = tf.saved_model.load(str(out_dir))
    batch = np.repeat(image[None], batch_size or 1, axis=0)
    got = {k: v.numpy() for k, v in loaded.signatures["serving_default"](
        images=tf.constant(batch)).items()}
    want = detector.raw([image])[0]
    return {"num_detections": [int(want["num_detections"][0]), int(got["num_detections"].min())],
            "max_box_diff": float(np.abs(got["boxes"] - want["boxes"]).max()),
            "max_score_diff": float(np.abs(got["scores"] - want["scores"]).max()),
            "classes_equal": bool((got["classes"] == want["classes"]).all())}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="exporters/to_saved_model.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", required=True, help="spec file or built-in name (d0, lite0, ...)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="spec override, e.g. image_size=640 (repeatable)")
    ap.add_argument("--ckpt", help="released .tar.gz, checkpoint folder or prefix "
                                   "(omit: random weights, for testing the export only)")
    ap.add_argument("--ckpt-mode", default="strict", choices=("strict", "finetune", "lenient"))
    ap.add_argument("--out", required=True, metavar="DIR", help="SavedModel folder to write")
    ap.add_argument("--nms", default="soft", choices=("soft", "hard", "fast"))
    ap.add_argument("--score-thresh", type=float, default=None, metavar="T",
                    help="default: 0.001 for soft, none for hard/fast (the official)")
    ap.add_argument("--max-dets", type=int, default=100, metavar="N")
    ap.add_argument("--batch-size", type=int, default=None, metavar="B",
                    help="fix the batch size (default: any)")
    return ap


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from edetgraph.checkpoints.checkpoint import CheckpointError
    from edetgraph.graph.spec import SpecError
    try:
        return _export(args)
    except (SpecError, CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _staging(out: Path) -> Path:
    """A fresh folder beside ``out``; ``out`` itself may only be absent, empty or a SavedModel."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                               and not (out / "saved_model.pb").is_file())):
        raise ValueError(f"{out}: exists and is not a SavedModel folder; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))


def _export(args) -> int:
    from edetgraph.task.detector import Detector
    from edetgraph.task.preprocess import read_image
    from edetgraph.resources import path
    from edetgraph.graph.spec import load_spec
    spec = load_spec(args.spec, args.set)
    out = Path(args.out)
    staging = _staging(out)
    try:
        if args.ckpt is None:
            print("WARNING: no --ckpt given: exporting RANDOM weights", file=sys.stderr)
        det = Detector.from_spec(spec, args.ckpt, mode=args.ckpt_mode, method=args.nms,
                                 score_thresh=args.score_thresh, max_dets=args.max_dets)
        if det.load_report is not None:
            print(det.load_report.summary(), file=sys.stderr)
        print(f"exporting {spec.name} ...", file=sys.stderr)
        export_saved_model(det, staging, args.batch_size)
        r = check_saved_model(det, staging, read_image(path("street.jpg")).numpy(), args.batch_size)
        print(f"reloaded and ran it on street.jpg: {r}", file=sys.stderr)
        if not (r["classes_equal"] and r["max_box_diff"] <= 0.01 and r["max_score_diff"] <= 1e-4
                and r["num_detections"][0] == r["num_detections"][1]):
            print(f"error: {out}: the reloaded SavedModel disagrees with the detector; nothing "
                  "written", file=sys.stderr)
            return 1
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote {out} (signatures: {', '.join(SIGNATURES)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
