"""The README's main job: the whole tool on its built-in defaults, nothing to download.

    python -m edetgraph.demo [--out out/demo] [--quick]

Stages (each prints what it runs and where its output goes):
  1. inspect EfficientDet-D0: params/FLOPs per component, and its BiFPN drawn to SVG/PNG;
  2. D0 with random weights on the official test image street.jpg (the whole inference path);
  3. the built-in synthetic dataset, the demo model trained on it from scratch, its COCO
     evaluation, exports and benchmark table (when those parts of the tool are present).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path


def _stage(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    print(f"    ({time.perf_counter() - t0:.1f} s)", flush=True)


def inspect_d0(out: Path) -> None:
    from edetgraph.draw import draw
    from edetgraph.inspect import format_report, report
    from edetgraph.passes import build_ir
    from edetgraph.spec import load_spec

    t0 = _stage("1. inspect EfficientDet-D0 (no TensorFlow needed)")
    spec = load_spec("d0")
    g = build_ir(spec)
    r = report(spec, g)
    print(format_report(r))
    for suffix in (".svg", ".png"):
        print(f"    BiFPN drawn to {draw(g, out / f'd0_bifpn{suffix}', title='EfficientDet-D0 BiFPN')}")
    (out / "d0_inspect.json").write_text(json.dumps(r, indent=1))
    _done(t0)


def d0_on_street(out: Path) -> None:
    import numpy as np
    import tensorflow as tf

    from edetgraph import anchors, postprocess, preprocess
    from edetgraph.model import build_model
    from edetgraph.resources import path
    from edetgraph.spec import load_spec

    t0 = _stage("2. D0 on street.jpg (random weights: released checkpoints cannot be fetched here)")
    spec = load_spec("d0")
    model = build_model(spec)
    image = preprocess.read_image(path("street.jpg"))
    x, scale = preprocess.preprocess(image, spec.image_size, spec.preprocess.mean_rgb,
                                     spec.preprocess.stddev_rgb)
    a = spec.anchors
    anc = anchors.generate_anchors(spec.image_size, a.min_level, a.max_level, a.num_scales,
                                   a.aspect_ratios, a.scale)
    net = tf.function(lambda t: model(t))
    cls, box = net(x[None])
    det = postprocess.postprocess(cls, box, anc, scales=tf.reshape(scale, [1]),
                                  image_size=spec.image_size, method="soft")
    n = int(det["num_detections"][0])
    print(f"    input {tuple(image.shape)} -> network {tuple(x.shape)}, scale to original {float(scale):.2f}")
    print("    raw outputs: " + ", ".join(f"L{l} {tuple(c.shape)}" for l, c in zip(spec.levels, cls)))
    print(f"    soft-NMS kept {n} detections (random weights: boxes are meaningless, shapes are not)")
    np.savez(out / "d0_street_raw.npz", **{f"cls_l{l}": c.numpy() for l, c in zip(spec.levels, cls)},
             **{f"box_l{l}": b.numpy() for l, b in zip(spec.levels, box)})
    _done(t0)


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edetgraph.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    inspect_d0(out)
    d0_on_street(out)
    print(f"\nall stages done in {time.perf_counter() - t0:.0f} s; outputs in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
