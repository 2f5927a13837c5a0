"""Benchmark one model across backends: parity with TF, detection agreement, AP, latency.

    python -m bench.run --spec d0 --backends tf,onnxruntime,tflite-fp32,tflite-int8 --out bench_out

Exports what is missing into --out (reused while spec, weights and options are unchanged),
prints a table and writes results.json, results.csv and results.png there.
"""
import argparse
import sys
from dataclasses import replace

from bench.config import BACKENDS, DEFAULT_BACKENDS, BenchConfig, Progress
from bench.device import DeviceResultError
from bench.peers import parse_peers
from bench.report import format_report, write_report
from edetgraph.checkpoints.archive import CheckpointError, resolve_checkpoint
from edetgraph.cli import OneLineParser, quiet_tensorflow
from edetgraph.graph.spec import SpecError, load_spec
from edetgraph.task.coco import EvalError
from edetgraph.verify.datasets import EvalDataError, default_annotations


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0],
                      epilog="Exit status: 0 all backends ran (or were skipped for a runtime "
                      "missing here, with the reason) within their parity tolerance; 1 a "
                      "backend failed or missed its tolerance (the report is written); 2 bad "
                      "request (an unknown backend name included).")
    add = p.add_argument
    add("--spec", required=True, help="spec file or built-in name (d0, lite0, demo, ...)")
    add("--set", action="append", default=[], metavar="KEY=VALUE", help="spec override")
    add("--ckpt", metavar="PATH", help="weights (default: the exporters' seeded random weights)")
    add("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    add("--labels", metavar="FILE.json", help="class names (a COCO instances.json or an {id: "
        "name} object; default: those training kept beside --ckpt or in it, else COCO's for "
        "90 classes): in the report and in the exported files' metadata")
    add("--backends", default=",".join(DEFAULT_BACKENDS),
        help=f"comma-separated, from {','.join(BACKENDS)} (default: %(default)s)")
    add("--threads", type=int, default=2, help="threads per backend (default 2)")
    add("--runs", type=int, default=50, help="timed runs per backend (default 50)")
    add("--warmup", type=int, default=10, help="untimed runs per backend first (default 10)")
    add("--batch", type=int, default=1, help="batch size (default 1)")
    add("--data", metavar="DIR|TFRECORD", help="images for COCO AP: a folder (or one holding "
        "images/) or a TFRecord glob")
    add("--annotations", metavar="JSON", help="the COCO instances file of --data (default "
        "DIR/instances.json when --data is a folder holding one)")
    add("--max-images", type=int, metavar="N", help="AP on the first N images only")
    add("--representative-data", metavar="DIR|TFRECORD", help="int8 calibration images "
        "(default: the --data images, else synthetic scenes)")
    add("--calibration-images", type=int, default=100, metavar="N",
        help="int8 calibration image count (default 100)")
    add("--triage-data", metavar="DIR|TFRECORD", help="int8 rows: annotated images, other than "
        "--data, on which each int8 export keeps in float32 the fewest layers that hold its AP "
        "loss within --max-ap-drop (the exporters' per-layer triage; OpenVINO: NNCF's "
        "accuracy control); the rows then time and score the triaged files")
    add("--triage-annotations", metavar="JSON", help="the COCO instances file of --triage-data "
        "(default DIR/instances.json)")
    add("--triage-images", type=int, metavar="N", help="triage AP on the first N of them only")
    add("--max-ap-drop", type=float, metavar="POINTS", help="the triage's bound on the AP loss "
        "(default: the int8 bound, 3 points)")
    add("--nms", default="soft", choices=("soft", "hard", "fast"),
        help="post-processing for detection agreement and AP (default soft)")
    add("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    add("--peer", action="append", default=[], metavar="NAME=FILE",
        help="a foreign .onnx or .tflite model timed beside ours (latency and memory; no "
        "parity), e.g. effdet=peers/tf_efficientdet_d0_net.onnx (repeatable)")
    add("--device-results", nargs="+", default=[], metavar="FILE.json",
        help="bench/device_runner.py results (files or folders) to report beside the host's")
    add("--out", default="bench_out", metavar="DIR", help="exports and results (%(default)s)")
    add("--quiet", action="store_true", help="no progress line")
    return p


def config(args, spec) -> BenchConfig:
    if args.data and not args.annotations:   # as the exporters' --eval-data does
        args.annotations = default_annotations(args.data)
    if args.triage_data and not args.triage_annotations:
        args.triage_annotations = default_annotations(args.triage_data)
    return BenchConfig(
        spec=spec, out=args.out, backends=tuple(b.strip() for b in args.backends.split(",")
                                                if b.strip()),
        ckpt=args.ckpt, seed=args.seed, threads=args.threads, runs=args.runs, warmup=args.warmup,
        batch=args.batch, data=args.data, annotations=args.annotations, max_images=args.max_images,
        representative=args.representative_data, calibration_images=args.calibration_images,
        triage_data=args.triage_data, triage_annotations=args.triage_annotations,
        triage_images=args.triage_images, max_ap_drop=args.max_ap_drop,
        nms=args.nms, memory=not args.no_memory, device_results=tuple(args.device_results),
        peers=parse_peers(args.peer) if spec is not None else {},
        spec_args={"spec": args.spec, "set": args.set})


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    problem = config(args, None).problem()
    try:
        parse_peers(args.peer)
    except ValueError as e:
        problem = problem or str(e)
    if problem:
        p.error(problem)
    quiet_tensorflow()
    from bench.harness import run_benchmark  # deferred: TensorFlow starts once a request is valid
    from edetgraph.task.pictures import find_labels  # deferred: reads TF checkpoints
    try:
        cfg = config(args, load_spec(args.spec, args.set))
        if args.ckpt:
            resolve_checkpoint(args.ckpt)
        labels, source = find_labels(args.labels, args.ckpt, cfg.spec.num_classes)
        cfg = replace(cfg, labels=tuple(sorted(labels.items())), labels_source=source)
        results = run_benchmark(cfg, Progress(enabled=not args.quiet))
    except (SpecError, DeviceResultError, EvalError, EvalDataError, CheckpointError,
            OSError, ValueError) as e:   # ValueError: a --labels file that names no classes
        print(f"{p.prog}: error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    print(format_report(results))
    paths = write_report(results, args.out)
    print(f"wrote {paths['json']}, {paths['csv']}, {paths['png']}")
    bad = [r for r in results["rows"] if r["status"] == "failed"
           or (r.get("parity") or {}).get("passed") is False]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
