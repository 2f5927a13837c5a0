"""The exporters' command-line side: the options every exporter shares, and every refusal
that needs no TensorFlow, so that an impossible request is refused in a fraction of a
second, before TensorFlow starts. Each ``to_*.py`` is a thin front over this and
``exporters.pipeline``.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

from edetgraph.checkpoints.archive import CheckpointError, resolve_checkpoint
from edetgraph.cli import first_line
from edetgraph.files import OutputRefused, is_real_folder
from edetgraph.graph.budget import check_budget
from edetgraph.graph.spec import SpecError, load_spec
from edetgraph.verify.datasets import EvalDataError, check_eval_data, default_annotations
from edetgraph.data.labels import resolve_labels, without_sidecars
from exporters.options import (EvalOptions, ExportError, ExportFailed, ExportOptions, GateOptions,
                               ModelCard)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
NORMALISED_HELP = ("float: float32 images already normalised as edetgraph.task.preprocess does "
                   "(mean/std of the spec, resized keeping the aspect ratio, zero-padded to the "
                   "spec's size). uint8: RGB pixels [B, H, W, 3] of the spec's size, ALREADY "
                   "resized (aspect kept) and padded bottom/right (pad with the spec's mean colour "
                   "to match edetgraph.task.preprocess); the graph only normalises. Resizing stays "
                   "outside because the official pipeline resizes the normalised float image, "
                   "which a uint8 input cannot reproduce")


def add_model_args(p: argparse.ArgumentParser, suffix: str) -> None:
    """--spec/--set/--ckpt/--seed/--out and the parity-gate options both exporters share."""
    p.add_argument("--spec", required=True, help="spec file, or a built-in name such as d0, lite0")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value before validation (repeatable), e.g. image_size=384")
    p.add_argument("--ckpt", metavar="PATH",
                   help="weights: released efficientdet-dN.tar.gz, its folder or prefix, or an "
                   "edetgraph checkpoint (strict load, EMA shadows used when present). Without it "
                   "the weights are random (--seed), with batch-norm statistics set from synthetic "
                   "images so that outputs have a realistic spread (the raw initialisation gives "
                   "near-constant outputs, which would make the parity gate vacuous)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--out", required=True, metavar=f"FILE{suffix}",
                   help=f"output file; the summary goes to FILE{suffix}.json beside it. The file "
                   "is written under a temporary name and renamed only after the parity gate "
                   "passed")
    p.add_argument("--max-detections", type=int, default=100, metavar="K",
                   help="in-graph post-processing: detections per image (default 100)")
    p.add_argument("--score-threshold", type=float, default=float("-inf"), metavar="T",
                   help="in-graph post-processing: drop boxes scoring below T (default -inf: keep "
                   "all, as the official hard/fast NMS)")
    p.add_argument("--iou-threshold", type=float, default=0.5, metavar="T",
                   help="in-graph post-processing: NMS IoU threshold (default 0.5)")
    p.add_argument("--random-inputs", type=int, default=2, metavar="N",
                   help="parity gate: random images besides the real ones (default 2)")
    p.add_argument("--threads", type=int, metavar="N", help="runtime threads for the parity run")
    p.add_argument("--float64-factor", type=float, default=None, metavar="F",
                   help="fp32 parity gate: an output beyond --atol still passes if the file is "
                   "no further from the same network run in float64 than F times TF float32 "
                   "itself (default 2); 0: the flat --atol alone, no float64 run")
    add_card_args(p)


def add_card_args(p) -> None:
    """What the file's metadata says about it (TFLite Model Metadata, ONNX metadata_props)."""
    p.add_argument("--labels", metavar="FILE.json",
                   help="class names to write into the file: a COCO instances.json or an "
                   "{id: name} object (default: the names training kept beside --ckpt or in "
                   "it, else COCO's for 90-class specs)")
    p.add_argument("--model-name", metavar="NAME", help="metadata: the model's name (default: "
                   "the spec's)")
    p.add_argument("--description", metavar="TEXT", help="metadata: a description (default: "
                   "written from the spec and the export options)")
    p.add_argument("--model-version", metavar="V", help="metadata: the model's version "
                   "(default: edetgraph's version)")
    p.add_argument("--author", default="edetgraph", help="metadata: author (default edetgraph)")
    p.add_argument("--license", default="unspecified",
                   help="metadata: licence of the model and its weights (default unspecified)")


def add_eval_args(p) -> None:
    """--eval-data and its companions: the optional AP check of both exporters."""
    p.add_argument("--eval-data", metavar="DIR|TFRECORD",
                   help="annotated images (a folder, or one holding images/, or a TFRecord "
                   "glob): also measure COCO AP of the file and of TF; the export fails when "
                   "the file loses more than --max-ap-drop points")
    p.add_argument("--eval-annotations", metavar="JSON",
                   help="COCO instances file of --eval-data (default DIR/instances.json)")
    p.add_argument("--eval-images", type=int, metavar="N",
                   help="AP on the first N images only (default all)")
    p.add_argument("--max-ap-drop", type=float, metavar="POINTS",
                   help="largest AP loss allowed, in points (default by kind: fp32 0.1, fp16 "
                   "1, dynamic 3, int8 3)")
    p.add_argument("--eval-nms", default="soft", choices=("soft", "hard"),
                   help="post-processing of raw-head files for the AP check (default soft)")


def check_common(args, suffix: str):
    """Checks that need no TensorFlow; returns the validated ModelSpec."""
    if "://" in args.out:
        raise ExportError(f"--out {args.out}: exporters write local files only; export to a "
                          "local path and copy it (e.g. gsutil cp)")
    out = os.path.abspath(args.out)
    if not out.endswith(suffix):
        raise ExportError(f"--out {args.out}: the file name must end in {suffix}")
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise ExportError(f"--out {args.out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ExportError(f"--out {args.out}: directory {parent} is not writable")
    beside = [out + ".json"] + ([out[:-len(".xml")] + ".bin"] if suffix == ".xml" else [])
    for target in [out] + beside:    # the file and what is written beside it
        if is_real_folder(target):
            raise ExportError(f"--out {args.out}: {target} is an existing folder; refusing to "
                              "replace it (move it away or choose another name)")
    if args.max_detections < 1:
        raise ExportError(f"--max-detections {args.max_detections}: must be at least 1")
    if not 0.0 <= args.iou_threshold <= 1.0:
        raise ExportError(f"--iou-threshold {args.iou_threshold}: must be in [0, 1]")
    if args.random_inputs < 0:
        raise ExportError(f"--random-inputs {args.random_inputs}: must be >= 0")
    if args.threads is not None and args.threads < 1:
        raise ExportError(f"--threads {args.threads}: must be >= 1")
    if args.float64_factor is not None and not args.float64_factor >= 0:
        raise ExportError(f"--float64-factor {args.float64_factor}: must be >= 0 (0: no "
                          "float64 reference)")
    check_eval_request(args)
    prefix = None
    if args.ckpt is not None:
        try:
            prefix = resolve_checkpoint(args.ckpt)
        except CheckpointError as e:
            raise ExportError(f"--ckpt: {first_line(e)}") from None
    try:
        spec = load_spec(args.spec, args.set)
        check_budget(spec)
    except (SpecError, ValueError) as e:   # ValueError: a limit's variable that is no number
        raise ExportError(f"--spec {args.spec}: {first_line(e)}") from None
    try:
        args.resolved_labels = resolve_labels(getattr(args, "labels", None), prefix,
                                              spec.num_classes)
    except ValueError as e:
        raise ExportError(f"--labels: {first_line(e)}") from None
    return spec


def check_eval_request(args) -> None:
    """Refuse --eval-* arguments that cannot work, before anything slow (and without
    TensorFlow): a missing folder or glob, an unreadable or image-less instances file,
    images it lists that are not in the folder."""
    data, annotations = getattr(args, "eval_data", None), getattr(args, "eval_annotations", None)
    if data is None:
        for flag, value in (("--eval-annotations", annotations),
                            ("--eval-images", getattr(args, "eval_images", None)),
                            ("--max-ap-drop", getattr(args, "max_ap_drop", None))):
            if value is not None:
                raise ExportError(f"{flag} needs --eval-data (the annotated images)")
        return
    if args.eval_images is not None and args.eval_images < 1:
        raise ExportError(f"--eval-images {args.eval_images}: must be at least 1")
    if args.max_ap_drop is not None and not args.max_ap_drop >= 0:
        raise ExportError(f"--max-ap-drop {args.max_ap_drop}: must be >= 0 (AP points)")
    if not os.path.isdir(data) and not glob.glob(data):
        raise ExportError(f"--eval-data {data}: no such folder or TFRecord file")
    if annotations is None:
        annotations = default_annotations(data)
        if annotations is None:
            raise ExportError(f"--eval-data {data}: give --eval-annotations (the COCO instances "
                              f"file of these images); there is no "
                              f"{os.path.join(data, 'instances.json')}")
        args.eval_annotations = annotations
    try:
        check_eval_data(data, annotations)
    except EvalDataError as e:
        flag = "--eval-annotations" if str(e).startswith(annotations) else "--eval-data"
        raise ExportError(f"{flag} {e}") from None


def export_options(args, batch) -> ExportOptions:
    """The options of a checked command line (``check_common`` first)."""
    ev = None
    if args.eval_data:
        ev = EvalOptions(args.eval_data, args.eval_annotations, args.eval_images, args.eval_nms,
                         args.max_ap_drop)
    labels, source = getattr(args, "resolved_labels", ({}, ""))
    card = ModelCard(getattr(args, "model_name", None), getattr(args, "description", None),
                     getattr(args, "model_version", None), getattr(args, "author", "edetgraph"),
                     getattr(args, "license", "unspecified"), tuple(sorted(labels.items())),
                     source)
    return ExportOptions(
        ckpt=args.ckpt, seed=args.seed, batch=batch, input=args.input,
        postprocess=args.postprocess, max_detections=args.max_detections,
        score_threshold=args.score_threshold, iou_threshold=args.iou_threshold,
        gate=GateOptions(args.random_inputs, args.threads, args.atol, args.float64_factor),
        eval=ev, card=card)


def parse_batch(text: str, allow_dynamic: bool):
    """``'4'`` -> 4, ``'dynamic'`` -> None (when allowed); anything else is refused."""
    if text == "dynamic":
        if not allow_dynamic:
            raise ExportError("--batch dynamic: TFLite files have a static batch here; "
                              "give a number (a TFLite interpreter can still resize the input)")
        return None
    try:
        batch = int(text)
    except ValueError:
        raise ExportError(f"--batch {text!r}: expected a number or 'dynamic'") from None
    if batch < 1:
        raise ExportError(f"--batch {batch}: must be at least 1")
    return batch


def add_calibration_args(p) -> None:
    """--representative-data and --calibration-images: the int8 exporters' calibration."""
    p.add_argument("--representative-data", metavar="TFRECORD|DIR",
                   help="int8 calibration images: a folder of .jpg/.jpeg/.png/.bmp files, or "
                   "TFRecord file(s) (a glob is fine) of tf.Examples with image/encoded")
    p.add_argument("--calibration-images", type=int, default=100, metavar="N",
                   help="how many representative images to calibrate on (default 100)")


def check_calibration(args) -> None:
    """The refusals every quantising exporter shares: int8 without calibration images,
    calibration images for a float file, a count below 1, a bad --atol, and (read now, so a
    typo fails before TensorFlow starts) a source with no images."""
    if args.quant == "int8" and not args.representative_data:
        raise ExportError("--quant int8 needs --representative-data (a folder of images or a "
                          "TFRecord) to calibrate activation ranges")
    if args.representative_data and args.quant != "int8":
        raise ExportError(f"--representative-data is only used by --quant int8, not {args.quant}")
    if args.calibration_images < 1:
        raise ExportError(f"--calibration-images {args.calibration_images}: must be >= 1")
    if args.atol is not None and not args.atol > 0:
        raise ExportError(f"--atol {args.atol}: must be > 0")
    if args.representative_data:
        representative_files(args.representative_data)


def representative_files(source: str) -> tuple:
    """``('dir', [images])`` or ``('tfrecord', [files])``; refuses what holds no images."""
    if os.path.isdir(source):
        files = sorted(os.path.join(source, f) for f in os.listdir(source)
                       if f.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise ExportError(f"--representative-data {source}: no {'/'.join(IMAGE_SUFFIXES)} "
                              "images in this folder")
        return "dir", files
    files = sorted(without_sidecars(glob.glob(source)))
    if not files:
        raise ExportError(f"--representative-data {source}: no such folder or TFRecord file")
    return "tfrecord", files


def log(prog: str, message: str) -> None:
    """Progress goes to stderr, the summary to stdout."""
    print(f"[{prog}] {message}", file=sys.stderr, flush=True)


def run_cli(prog: str, main, argv=None) -> int:
    """Run ``main(argv)``; any refusal or failure becomes one ``prog: error: ...`` line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return main(argv)
    except (ExportError, SpecError, CheckpointError) as e:
        print(f"{prog}: error: {first_line(e)}", file=sys.stderr)
        return 1 if isinstance(e, ExportFailed) else 2
    except OutputRefused as e:   # a folder appeared at an output name while it ran
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: error: interrupted; no file written", file=sys.stderr)
        return 130
