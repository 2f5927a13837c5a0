"""The README's main job: the whole tool on its built-in defaults, nothing to download.

    python -m edetgraph.demo [--out out/demo] [--quick]

Stages (each prints what it runs and where its output goes):
  1. inspect EfficientDet-D0: params/FLOPs per component, and its BiFPN drawn to SVG/PNG;
  2. D0 with random weights on the official test image street.jpg (the whole inference path);
  3. the built-in synthetic dataset, the demo model (specs/demo.yaml) trained on it from
     scratch, and its COCO evaluation on the held-out split;
  4. the trained model exported to ONNX and TFLite (fp32, fp16, int8) and benchmarked against
     TF: parity, detection agreement, AP, latency (bench.run's table, JSON, CSV and plot).
Rerunning resumes training from its last checkpoint and reuses the exports.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edetgraph.cli import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow loads below: its start-up notices are not warnings

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench import run as bench_run  # noqa: E402
from edetgraph import train  # noqa: E402
from edetgraph.files import atomic_path, write_text  # noqa: E402
from edetgraph.graph import outputs  # noqa: E402
from edetgraph.graph.build import build_ir  # noqa: E402
from edetgraph.graph.draw import draw  # noqa: E402
from edetgraph.graph.spec import load_spec  # noqa: E402
from edetgraph.inspect import format_report, report  # noqa: E402
from edetgraph.nn.model import build_model  # noqa: E402
from edetgraph.resources import path  # noqa: E402
from edetgraph.task import anchors, postprocess, preprocess  # noqa: E402
from edetgraph.training.config import load_train_config  # noqa: E402
from edetgraph.training.inputs import synthetic_data  # noqa: E402


def _stage(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    print(f"    ({time.perf_counter() - t0:.1f} s)", flush=True)


def inspect_d0(out: Path) -> None:

    t0 = _stage("1. inspect EfficientDet-D0 (no TensorFlow needed)")
    spec = load_spec("d0")
    g = build_ir(spec)
    r = report(spec, g)
    print(format_report(r))
    for suffix in (".svg", ".png"):
        print(f"    BiFPN drawn to {draw(g, out / f'd0_bifpn{suffix}', title='EfficientDet-D0 BiFPN')}")
    write_text(out / "d0_inspect.json", json.dumps(r, indent=1))
    _done(t0)


def d0_on_street(out: Path) -> None:


    t0 = _stage("2. D0 on street.jpg (random weights: released checkpoints cannot be fetched here)")
    spec = load_spec("d0")
    model = build_model(spec)
    image = preprocess.read_image(path("street.jpg"))
    x, scale = preprocess.preprocess(image, spec.image_size, spec.preprocess.mean_rgb,
                                     spec.preprocess.stddev_rgb)
    anc = anchors.spec_anchors(spec)
    net = tf.function(lambda t: model(t))
    cls, box = net(x[None])
    det = postprocess.postprocess(cls, box, anc, scales=tf.reshape(scale, [1]),
                                  image_size=spec.image_size, method="soft")
    n = int(det["num_detections"][0])
    print(f"    input {tuple(image.shape)} -> network {tuple(x.shape)}, scale to original {float(scale):.2f}")
    print("    raw outputs: " + ", ".join(f"L{l} {tuple(c.shape)}" for l, c in zip(spec.levels, cls)))
    print(f"    soft-NMS kept {n} detections (random weights: boxes are meaningless, shapes are not)")
    with atomic_path(out / "d0_street_raw.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **{k: v.numpy() for k, v in outputs.as_dict(spec.levels, cls, box).items()})
    _done(t0)


def train_demo(out: Path, steps: int | None) -> tuple[str, Path, Path]:
    """Generate the built-in dataset, train specs/demo.yaml from scratch, evaluate it."""

    t0 = _stage("3. built-in dataset + train specs/demo.yaml from scratch + COCO evaluation")
    config = load_train_config("demo")
    data = synthetic_data(load_spec("demo"), config.synthetic, log=lambda m: print("    " + m))
    model_dir = out / "train"
    argv = ["--spec", "demo", "--train-config", "demo", "--model-dir", str(model_dir)]
    if steps:
        argv += ["--train-set", f"steps={steps}"]
    print("    python -m edetgraph.train " + " ".join(argv), flush=True)
    if train.main(argv) != 0:
        raise SystemExit("training failed (see above); rerun to resume from its last checkpoint")
    _done(t0)
    val_dir = Path(data.val_json).parent
    return str(model_dir), val_dir, val_dir.parent / "train"


def bench_demo(out: Path, ckpt: str, val_dir: Path, train_dir: Path) -> None:

    t0 = _stage("4. export the trained demo model and benchmark every backend on the val split")
    argv = ["--spec", "demo", "--ckpt", ckpt, "--backends",
            "tf,onnxruntime,tflite-fp32,tflite-fp16,tflite-int8,tflite-int8-fh",
            "--data", str(val_dir),
            "--annotations", str(val_dir / "instances.json"),
            "--representative-data", str(train_dir / "images"),  # never calibrate on val
            "--runs", "30", "--warmup", "5", "--out", str(out / "bench")]
    print("    python -m bench.run " + " ".join(argv), flush=True)
    code = bench_run.main(argv)
    if code not in (0, 1):
        raise SystemExit(f"bench.run failed with status {code}")
    _done(t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edetgraph.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    ap.add_argument("--steps", type=int, help="training steps (default: specs/train/demo.yaml's)")
    ap.add_argument("--skip-train", action="store_true",
                    help="only stages 1-2 (inspect, D0 on street.jpg)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    inspect_d0(out)
    d0_on_street(out)
    if not args.skip_train:
        ckpt, val_dir, train_dir = train_demo(out, args.steps)
        bench_demo(out, ckpt, val_dir, train_dir)
    print(f"\nall stages done in {time.perf_counter() - t0:.0f} s; outputs in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
