"""End-to-end detection latency: pre-process + network + NMS in one traced function.

    python -m bench.e2e_latency --spec d0 --threads 2 --runs 30          # street.jpg, soft-NMS

Times ``Detector.function(1)`` (uint8 image in, detections in original pixels out) on one
picture, batch 1, after warm-up; prints the median (p90, min, mean) in milliseconds.
``--breakdown`` also times the three stages alone (each its own ``tf.function``), which
shows where the time goes. Weights are random unless ``--ckpt`` is given (latency does not
depend on them, except NMS a little through the number of boxes above the threshold).
The official implementation's figure on the same machine comes from
``tools/official_parity.py --latency`` (measured side by side, interleaved).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from edetgraph.cli import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow loads below: its start-up notices are not warnings

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from edetgraph.checkpoints.checkpoint import CheckpointError  # noqa: E402
from edetgraph.graph import outputs  # noqa: E402
from edetgraph.graph.spec import SpecError, load_spec  # noqa: E402
from edetgraph.resources import path  # noqa: E402
from edetgraph.task.detector import Detector  # noqa: E402
from edetgraph.task.postprocess import postprocess  # noqa: E402
from edetgraph.task.preprocess import preprocess_batch, read_image  # noqa: E402


def _times(fn, arg, runs: int, warmup: int) -> dict:

    def once():
        t0 = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), fn(*arg))
        return (time.perf_counter() - t0) * 1000

    for _ in range(warmup):
        once()
    t = np.asarray([once() for _ in range(runs)])
    return {"median_ms": round(float(np.median(t)), 2), "p90_ms": round(float(np.percentile(t, 90)), 2),
            "min_ms": round(float(t.min()), 2), "mean_ms": round(float(t.mean()), 2)}


def _stages(det, image) -> dict:
    """Pre-processing, network and post-processing as separate traced functions + inputs."""
    spec, pre = det.spec, det.spec.preprocess
    x = tf.constant(image[None])
    pre_fn = tf.function(lambda im: preprocess_batch(im, spec.image_size, pre.mean_rgb, pre.stddev_rgb))
    net_in, scales = pre_fn(x)
    net_fn = tf.function(det.model.raw_outputs)
    raw = net_fn(net_in)
    cls, box = outputs.split(raw, spec.levels)
    post_fn = tf.function(lambda c, b, s: postprocess(
        c, b, det.anchors, s, spec.image_size, method=det.method, score_thresh=det.score_thresh,
        max_dets=det.max_dets))
    return {"preprocess": (pre_fn, (x,)), "network": (net_fn, (net_in,)),
            "postprocess": (post_fn, (cls, box, scales))}


def measure(spec, image, ckpt=None, method: str = "soft", threads: int = 2, runs: int = 30,
            warmup: int = 5, breakdown: bool = False) -> dict:
    """Latency figures (ms) of the end-to-end detector on ``image`` (uint8 HxWx3).

    ``threads`` is only recorded: call :func:`set_threads` before TensorFlow runs anything."""
    det = Detector.from_spec(spec, ckpt, method=method)
    fn = det.function(1)
    t0 = time.perf_counter()
    fn(tf.constant(image[None]))
    out = {"spec": spec.name, "image_hw": list(image.shape[:2]), "nms": method, "threads": threads,
           "runs": runs, "first_call_s": round(time.perf_counter() - t0, 2),
           "end_to_end": _times(fn, (tf.constant(image[None]),), runs, warmup)}
    if breakdown:
        out["stages"] = {k: _times(f, a, runs, warmup) for k, (f, a) in _stages(det, image).items()}
    return out


def set_threads(threads: int) -> None:
    """``threads`` intra-op threads, one inter-op thread (ops run one after another)."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.e2e_latency", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="d0", help="spec file or built-in name (default d0)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--ckpt", help="checkpoint to load (default: random weights)")
    ap.add_argument("--image", help="picture (default: street.jpg)")
    ap.add_argument("--nms", default="soft", choices=("soft", "hard", "fast"))
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads (inter-op: 1)")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--breakdown", action="store_true", help="also time each stage alone")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    try:
        spec = load_spec(args.spec, args.set)
        image = read_image(args.image or path("street.jpg")).numpy()
        r = measure(spec, image, args.ckpt, args.nms, args.threads, args.runs, args.warmup,
                    args.breakdown)
    except (SpecError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(r))
        return 0
    e = r["end_to_end"]
    print(f"{r['spec']} on {r['image_hw'][0]}x{r['image_hw'][1]}, batch 1, {r['threads']} threads, "
          f"{r['nms']}-NMS: end-to-end median {e['median_ms']} ms (p90 {e['p90_ms']}, min "
          f"{e['min_ms']}) over {r['runs']} runs")
    for k, s in r.get("stages", {}).items():
        print(f"  {k:12s} median {s['median_ms']} ms (min {s['min_ms']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
