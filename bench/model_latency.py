"""Forward latency of a spec's network in TensorFlow (the core issue's benchmark).

    python -m bench.model_latency --spec d0 --threads 2 --runs 30

Builds the model, traces it once inside ``tf.function`` with a static input signature,
warms up, then times ``--runs`` forward passes of one random batch and prints the median
(and p90/min/mean) in milliseconds, plus build time. ``--json`` prints one JSON object.
Timings on a shared machine are noisy: compare figures measured side by side in one run.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

from edetgraph.cli import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow loads below: its start-up notices are not warnings

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from edetgraph.graph.spec import SpecError, load_spec  # noqa: E402
from edetgraph.nn.model import build_model  # noqa: E402


def measure(spec, threads: int, runs: int, warmup: int, batch: int = 1, seed: int = 0) -> dict:
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    t0 = time.perf_counter()
    model = build_model(spec, seed=seed)
    build_s = time.perf_counter() - t0
    h, w = spec.image_size
    fn = tf.function(model.raw_outputs,
                     input_signature=[tf.TensorSpec([batch, h, w, 3], tf.float32)])
    x = tf.random.normal([batch, h, w, 3], seed=seed)
    t0 = time.perf_counter()
    fn(x)
    trace_s = time.perf_counter() - t0
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn(x)
        for v in out.values():      # wait for every output, not just the first
            v.numpy()
        times.append((time.perf_counter() - t0) * 1000)
    t = np.asarray(times) if times else np.zeros(1)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_rss_mb": round(peak_mb),"spec": spec.name, "image_size": list(spec.image_size), "batch": batch,
            "threads": threads, "runs": runs, "warmup": warmup, "build_s": round(build_s, 3),
            "first_call_s": round(trace_s, 3), "median_ms": round(float(np.median(t)), 2),
            "p90_ms": round(float(np.percentile(t, 90)), 2), "min_ms": round(float(t.min()), 2),
            "mean_ms": round(float(t.mean()), 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.model_latency", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="d0", help="spec file or built-in name (default d0)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="spec override, e.g. image_size=640")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    ap.add_argument("--runs", type=int, default=30,
                    help="timed runs (default 30; 0 only builds and runs the first call, e.g. to "
                         "check that D7x at 1536 fits in memory)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.spec, args.set)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    r = measure(spec, args.threads, args.runs, args.warmup, args.batch)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['spec']} {r['image_size'][0]}x{r['image_size'][1]} batch {r['batch']}, "
              f"{r['threads']} threads, tf.function: median {r['median_ms']} ms "
              f"(p90 {r['p90_ms']}, min {r['min_ms']}, mean {r['mean_ms']}) over {r['runs']} runs "
              f"after {r['warmup']} warm-up; build {r['build_s']} s, first call {r['first_call_s']} s, "
              f"peak RSS {r['peak_rss_mb']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
