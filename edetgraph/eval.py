"""``python -m edetgraph.eval``: COCO metrics of a checkpoint on a TFRecord split.

    python -m edetgraph.eval --spec demo --ckpt runs/demo --data 'val-*.tfrecord' \\
        --annotations val/instances.json --out metrics.json --per-class

Uses the EMA weights when the checkpoint has them (training checkpoints and released
ones do), soft-NMS by default (the official), and prints AP, AP50, AP75, APs/m/l and
AR1/10/100 (pycocotools), with --per-class the AP of each class by name. The detections are
written in COCO results format; the metrics JSON also holds the model's class names (those
training kept beside the checkpoint, --labels, or COCO's) and says where they came from.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edetgraph.checkpoints.archive import CheckpointError, resolve_checkpoint
from edetgraph.cli import quiet_tensorflow
from edetgraph.data.labels import label_mismatches, resolve_labels
from edetgraph.files import OutputRefused, json_text, refuse_remote, write_text
from edetgraph.graph.budget import check_budget
from edetgraph.graph.spec import SpecError, load_spec
from edetgraph.task.coco import EvalError, format_table
from edetgraph.verify.datasets import check_eval_data


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edetgraph.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, help="model spec: a name in specs/ or a YAML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value (repeatable)")
    p.add_argument("--ckpt", required=True, help="checkpoint: training dir, prefix, released "
                   "folder or archive")
    p.add_argument("--data", required=True, help="TFRecords to evaluate (glob)")
    p.add_argument("--annotations", required=True, help="COCO instances JSON of those images")
    p.add_argument("--out", help="write the metrics here as JSON")
    p.add_argument("--detections", help="COCO results JSON to write (default: beside --out, "
                   "else ./detections.json)")
    p.add_argument("--per-class", action="store_true", help="also report AP per class")
    p.add_argument("--nms", default="soft", choices=("soft", "hard", "fast"),
                   help="post-processing (default soft, the official)")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    p.add_argument("--labels", metavar="FILE.json",
                   help="class names: a COCO instances.json or an {id: name} object (default: "
                   "the names training kept beside --ckpt or in it, else COCO's for 90 classes)")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        spec = load_spec(args.spec, args.set)
        check_budget(spec)   # a model past the limits is refused before TensorFlow starts
        for flag in ("out", "detections"):
            if getattr(args, flag):
                refuse_remote(getattr(args, flag), f"--{flag}")
        check_eval_data(args.data, args.annotations)   # the data, then the weights
        resolve_labels(args.labels, resolve_checkpoint(args.ckpt), spec.num_classes)
    except (SpecError, ValueError, CheckpointError, OutputRefused) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    quiet_tensorflow()
    from edetgraph.task.evaluation import Evaluator  # deferred: --help skips TensorFlow
    from edetgraph.task.pictures import find_labels  # deferred: reads TF checkpoints
    detections = args.detections or str(Path(args.out).parent / "detections.json"
                                        if args.out else "detections.json")
    try:
        evaluator = Evaluator(spec, args.data, args.annotations, args.batch_size, args.nms)
        report = evaluator.load(args.ckpt, use_ema=False if args.no_ema else "auto")
        print(f"loaded {len(report.loaded)} variables from {report.prefix} "
              f"({'EMA' if report.used_ema else 'raw'} weights)", file=sys.stderr)
        labels, source = find_labels(args.labels, args.ckpt, spec.num_classes)
        metrics = evaluator(per_class=args.per_class, detections_out=detections,
                            progress=_progress)
        _progress(None)
        metrics["labels"], metrics["labels_source"] = labels, source
        print(f"class names: {source}", file=sys.stderr)
        for line in label_mismatches(labels, args.annotations):
            print(f"WARNING: {line}", file=sys.stderr)
    except (EvalError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"{metrics['images']} images, {metrics['detections']} detections -> {detections}",
          file=sys.stderr)
    print(format_table(metrics))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, json_text(metrics, indent=1))
    return 0


def _progress(done: int | None) -> None:
    """An in-place image count on a terminal; None ends the line."""
    if sys.stderr.isatty():
        print("" if done is None else f"\r[eval] {done} images", end="\n" if done is None
              else "", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
