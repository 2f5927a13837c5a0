"""Detect objects in pictures with a spec and (optionally) a checkpoint.

    python -m edetgraph.infer --spec d0 --ckpt efficientdet-d0.tar.gz --image street.jpg --out out/
    python -m edetgraph.infer --model lite0.tflite --image street.jpg --out out/   # an exported file

Writes one annotated picture per image (``DIR/<stem>.jpg``, ``.png`` for PNG input) and
``DIR/detections.json`` (per image: file, boxes [ymin, xmin, ymax, xmax] in original pixels,
scores, 1-based class ids, class names). ``--dump-raw`` adds ``DIR/<stem>.npz`` with the
network input, the scale factor, the raw head outputs ``cls_l*``/``box_l*`` and the padded
detections. Without ``--ckpt`` the weights are random and the detections meaningless.

``--model FILE.tflite|.onnx`` runs an exported file instead, as its metadata says (input
size, normalisation, resizing, outputs, anchors, class names): NMS in the file's graph,
or for raw-head files the same post-processing as the TF path (``--nms``). A file without
edetgraph's metadata is refused.

Every picture's size is read from its header and checked against ``--max-pixels`` before
anything is decoded or TensorFlow starts; each output is written under a temporary name
and renamed when complete.
"""
from __future__ import annotations

import argparse
import os
import sys

from edetgraph.checkpoints.archive import CheckpointError, resolve_checkpoint
from edetgraph.cli import first_line, printable, quiet_tensorflow
from edetgraph.data.labels import check_labels, load_labels, resolve_labels
from edetgraph.data.picture import check_picture
from edetgraph.files import disk_full_message, is_disk_full, refuse_remote
from edetgraph.graph.budget import check_budget
from edetgraph.graph.spec import SpecError, load_spec
from edetgraph.limits import LIMITS
from edetgraph.verify.file_metadata import read_metadata

METHODS = ("soft", "hard", "fast")  # edetgraph.task.postprocess.METHODS, without importing TF for --help


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m edetgraph.infer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", help="spec file or built-in name (d0, lite0, ...); not with --model")
    ap.add_argument("--model", metavar="FILE.tflite|.onnx",
                    help="run this exported file (its metadata says how) instead of a spec")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="spec override before validation, e.g. image_size=640 (repeatable)")
    ap.add_argument("--ckpt", help="released .tar.gz, checkpoint folder or prefix; "
                                   "omit to run with random weights")
    ap.add_argument("--ckpt-mode", default="strict", choices=("strict", "finetune", "lenient"),
                    help="strict: fail on any missing/mismatched variable (default); finetune: "
                         "skip mismatched heads; lenient: report only")
    ap.add_argument("--ema", default="auto", choices=("auto", "yes", "no"),
                    help="use ExponentialMovingAverage shadows: auto = when present (default)")
    ap.add_argument("--image", nargs="+", required=True, metavar="FILE", help="input pictures")
    ap.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    ap.add_argument("--nms", default="soft", choices=METHODS,
                    help="soft (official default, gaussian), hard (ONNX-expressible) or fast "
                         "(TFLite detection op semantics)")
    ap.add_argument("--score-thresh", type=float, default=None, metavar="T",
                    help="NMS score threshold (default: 0.001 for soft, none for hard/fast)")
    ap.add_argument("--max-dets", type=int, default=100, metavar="N",
                    help="detections kept per image (default 100)")
    ap.add_argument("--draw-thresh", type=float, default=0.4, metavar="T",
                    help="only detections scoring at least T are drawn (default 0.4); the JSON "
                         "has all of them")
    ap.add_argument("--labels", metavar="FILE.json",
                    help="class names: a COCO instances.json or an {id: name} object "
                         "(default: the names training kept beside --ckpt or in it, else COCO's "
                         "for 90-class specs)")
    ap.add_argument("--dump-raw", action="store_true",
                    help="also write DIR/<stem>.npz with the input and raw head outputs")
    ap.add_argument("--max-pixels", type=int, metavar="N",
                    help="refuse a picture of more than N pixels, read from its header before "
                         f"decoding (default {LIMITS['image_pixels'].default:,}, or "
                         f"${LIMITS['image_pixels'].env})")
    return ap


def _refusal(args) -> str | None:
    """What makes the request impossible, found without TensorFlow (None: nothing)."""
    if args.max_dets < 1:
        return f"--max-dets must be >= 1, got {args.max_dets}"
    if args.max_pixels is not None and args.max_pixels < 1:
        return f"--max-pixels must be >= 1, got {args.max_pixels}"
    refuse_remote(args.out, "--out")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        return f"--out {args.out}: is a file, not a folder"
    if (args.spec is None) == (args.model is None):
        return "give --spec (and --ckpt) for the TF model, or --model FILE for an exported file"
    if args.model is not None:
        if args.set or args.ckpt:
            return "--set and --ckpt apply to --spec; --model runs the file as it is"
        meta = read_metadata(args.model)   # no metadata, a foreign model: one line, before TF
        if args.labels:
            check_labels(load_labels(args.labels), meta["facts"]["num_classes"], args.labels)
        return _check_pictures(args)
    spec = load_spec(args.spec, args.set)
    check_budget(spec)   # a SpecError before TensorFlow starts
    problem = _check_pictures(args)
    if problem:
        return problem
    prefix = None
    if args.ckpt is not None:
        prefix = resolve_checkpoint(args.ckpt)   # an archive is vetted and unpacked here
    resolve_labels(args.labels, prefix, spec.num_classes)   # a bad --labels file, before TF
    return None


def _check_pictures(args) -> str | None:
    for path in args.image:
        if not os.path.isfile(path):
            return f"{path}: no such image file"
        check_picture(path, args.max_pixels)
    return None


def _file_detector(args):
    """The exported file as a detector, with the names it carries unless --labels."""
    from edetgraph.verify.deployed import DeployedDetector  # deferred: it starts TensorFlow
    labels = load_labels(args.labels) if args.labels else None
    det = DeployedDetector(args.model, labels=labels, method=args.nms, max_dets=args.max_dets)
    source = args.labels or det.meta["facts"].get("labels_source", "the file")
    print(printable(f"running {args.model} as its metadata says; class names: {source}"),
          file=sys.stderr)
    return det


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        problem = _refusal(args)
    except (ValueError, OSError, CheckpointError) as e:   # SpecError is a ValueError
        problem = first_line(e)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    quiet_tensorflow()
    from edetgraph.task import pictures  # deferred: --help and refusals skip TensorFlow
    try:
        pictures.run(args, _file_detector(args) if args.model else None)
    except OSError as e:
        print(f"error: {disk_full_message(args.out) if is_disk_full(e) else e}", file=sys.stderr)
        return 2
    except (SpecError, CheckpointError, ValueError) as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
