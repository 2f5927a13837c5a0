"""Is the input pipeline fast enough to feed training? Images/s of the training input
pipeline and of the training step, for one spec on this machine.

    python -m bench.train_throughput --spec d0 [--batch-size 8] [--data 'train-*.tfrecord']

Measured one after the other, each with the whole machine to itself:
  pipeline    the training tf.data input as `edetgraph.train` builds it: read, decode, the
              official augmentation (flip, scale jitter 0.1-2.0, crop, pad), anchor labelling,
              batching. Without --data it reads the built-in synthetic dataset at the spec's
              size (generated once into the cache);
  train step  forward, focal + Huber loss, backward, clipping, SGD, EMA on one fixed labelled
              batch, no input at all.
The pipeline must deliver at least --min-ratio (default 2) times the step's images/s; the
exit status is 1 when it does not, so the script can gate a CI job or a new machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

from edetgraph.cli import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow loads below: its start-up notices are not warnings

from edetgraph.data.pipeline import benchmark_pipeline, list_files  # noqa: E402
from edetgraph.data.synthetic import SHAPES  # noqa: E402
from edetgraph.files import write_text  # noqa: E402
from edetgraph.graph.spec import SpecError, load_spec  # noqa: E402
from edetgraph.task.labeler import labeler_for  # noqa: E402
from edetgraph.training.benchmark import benchmark_train_step  # noqa: E402
from edetgraph.training.config import SyntheticData  # noqa: E402
from edetgraph.training.inputs import synthetic_data  # noqa: E402

DEFAULT_MIN_RATIO = 2.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.train_throughput", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default="d0", help="model spec name or file (default d0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key, e.g. --set image_size=384 (repeatable)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="images per step, pipeline and train step alike (default 8)")
    p.add_argument("--data", metavar="PATTERN",
                   help="training TFRecords (default: the built-in synthetic dataset)")
    p.add_argument("--synthetic-images", type=int, default=200, metavar="N",
                   help="size of the built-in dataset used without --data (default 200: the "
                   "pipeline repeats and re-augments them)")
    p.add_argument("--pipeline-batches", type=int, default=30, metavar="N",
                   help="timed pipeline batches, after 5 warm-up ones (default 30)")
    p.add_argument("--steps", type=int, default=5, metavar="N",
                   help="timed train steps, after 2 warm-up ones (default 5)")
    p.add_argument("--jit-compile", action="store_true", help="compile the train step with XLA")
    p.add_argument("--min-ratio", type=float, default=DEFAULT_MIN_RATIO, metavar="X",
                   help=f"required pipeline/step images/s ratio (default {DEFAULT_MIN_RATIO:g})")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    return p


def _check(args, p) -> None:
    for name in ("batch_size", "pipeline_batches", "steps", "synthetic_images"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.min_ratio <= 0:
        p.error(f"--min-ratio must be > 0, got {args.min_ratio}")


def _training_data(spec, pattern, images: int, log) -> str:
    if pattern:
        list_files(pattern)     # a clear error now rather than deep inside tf.data
        return pattern
    # The built-in dataset has a few shape classes; its labels are valid ids for any spec
    # (a 90-class D0 simply never sees classes 9-90), and the work per image is the same.

    shapes = replace(spec, num_classes=min(spec.num_classes, len(SHAPES)))
    return synthetic_data(shapes, SyntheticData(num_images=images, seed=0), log=log).train


def measure(spec, batch_size: int, data: str, pipeline_batches: int, steps: int,
            jit_compile: bool = False) -> dict:
    """Both rates and their ratio; pipeline first, then the step, never overlapping."""
    a = spec.preprocess
    pipe = benchmark_pipeline(data, spec.image_size, batch_size, training=True,
                              num_batches=pipeline_batches, warmup=5,
                              labeler=labeler_for(spec), mean_rgb=a.mean_rgb,
                              stddev_rgb=a.stddev_rgb)
    step = benchmark_train_step(spec, batch_size=batch_size, steps=steps, warmup=2,
                                jit_compile=jit_compile)
    return {"spec": spec.name, "image_size": list(spec.image_size), "batch_size": batch_size,
            "data": data, "pipeline_images_per_sec": pipe,
            "train_step_images_per_sec": step["images_per_sec"],
            "train_step_seconds": step["seconds_per_step"],
            "train_step_cpu_seconds_per_image": step["cpu_seconds_per_image"],
            "jit_compile": jit_compile, "ratio": pipe / step["images_per_sec"]}


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    _check(args, p)
    try:
        spec = load_spec(args.spec, args.set)
    except SpecError as e:
        print(f"bench.train_throughput: {e}", file=sys.stderr)
        return 2
    log = lambda m: print(f"[train_throughput] {m}", flush=True)   # noqa: E731
    try:
        data = _training_data(spec, args.data, args.synthetic_images, log)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"bench.train_throughput: --data {args.data}: {e}", file=sys.stderr)
        return 2
    h, w = spec.image_size
    log(f"{spec.name} at {h}x{w}, batch {args.batch_size}: timing the input pipeline "
        f"({args.pipeline_batches} batches), then the train step ({args.steps} steps)")
    start = time.perf_counter()
    r = measure(spec, args.batch_size, data, args.pipeline_batches, args.steps, args.jit_compile)
    r["min_ratio"] = args.min_ratio
    r["passed"] = r["ratio"] >= args.min_ratio
    print(f"input pipeline  {r['pipeline_images_per_sec']:8.1f} images/s  "
          f"(read, decode, augment, label, batch)")
    print(f"train step      {r['train_step_images_per_sec']:8.2f} images/s  "
          f"({r['train_step_seconds']:.2f} s per step of {args.batch_size})")
    verdict = "ok" if r["passed"] else "FAIL: the pipeline would starve the step"
    print(f"ratio           {r['ratio']:8.1f}x     (required >= {args.min_ratio:g}x: {verdict}); "
          f"{time.perf_counter() - start:.0f} s")
    if args.json:
        write_text(args.json, json.dumps(r, indent=1))
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
