"""Parity and side-by-side latency of edetgraph against the official google/automl EfficientDet.

    python tools/official_parity.py --official /tmp/official --tf-keras /tmp/tfk --specs d0 d1

For each spec: our model gets random weights (BN statistics, fusion weights and biases
included), which are written as a checkpoint in the released layout (D0 with
``/ExponentialMovingAverage`` shadows that differ from the raw values, D1 without, as the
released files come). The official TF2 Keras ``EfficientDetModel`` loads that file with its
own loader (``util_keras.restore_ckpt``, EMA decay 0.9998 when shadows exist, else 0), and a
fresh edetgraph ``Detector`` loads it with ``load_checkpoint``. Both then run street.jpg
(decoded once with TF) inside ``tf.function``, and the script prints the max abs difference
of the pre-processed input, of every raw head output (limit 1e-3), of the decoded pre-NMS
boxes and scores, and of the soft-NMS detections (same classes, boxes within 0.01 px,
scores within 1e-4). ``--latency`` then times, interleaved in this one process, the
official Keras D0 forward against ours and the official end-to-end ``EfficientDetModel``
(pre-process + network + soft-NMS) against our ``Detector``. ``--deployable`` adds, in the
same interleaved loop, the files a user ships: the same weights exported end to end (uint8
picture at the network size in, detections out; ONNX with hard NMS, TFLite with the fast
op), each through its exporter's parity gate, then run in ONNX Runtime, OpenVINO (fp32,
bf16) or LiteRT, so their ratio to the official end-to-end time comes from one run.

Not part of the test suite (CI has no official code). Needs: the official ``efficientdet``
source folder (``--official`` is that folder or its parent), and Keras 2 as the ``tf_keras``
package (the official Keras layers do not run on Keras 3); ``--tf-keras`` adds a folder to
``sys.path`` for it (e.g. ``pip install --target DIR tf-keras==<your TF version>``).
Nothing of the official code is copied here: it is imported from the given path.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

# The official code needs tf.keras to be Keras 2; TensorFlow reads this when it loads, so it
# is set before anything below imports TensorFlow (edetgraph itself uses no Keras).
os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np  # noqa: E402 (this block after the environment above)
import tensorflow as tf  # noqa: E402
from tensorflow.python.framework.convert_to_constants import (  # noqa: E402
    convert_variables_to_constants_v2,
)

from edetgraph.checkpoints.checkpoint import write_released
from edetgraph.graph import outputs
from edetgraph.graph.spec import load_spec
from edetgraph.nn.model import build_model
from edetgraph.resources import path
from edetgraph.task.detector import Detector
from edetgraph.task.postprocess import decode_boxes, flatten_outputs
from edetgraph.task.preprocess import read_image

LIMITS = {"raw": 1e-3, "box_px": 0.01, "score": 1e-4}


def import_official(path: str, tf_keras: str | None) -> SimpleNamespace:
    """Import the official modules from `path`, with tf.keras = Keras 2 (set before TF loads)."""
    if tf_keras:
        sys.path.insert(0, tf_keras)
    root = Path(path)
    root = root / "efficientdet" if (root / "efficientdet" / "hparams_config.py").is_file() else root
    if not (root / "hparams_config.py").is_file():
        sys.exit(f"error: {path}: not the official efficientdet folder (no hparams_config.py)")
    sys.path.insert(0, str(root))
    import hparams_config  # deferred: found only once the official folder is on sys.path
    from tf2 import efficientdet_keras, postprocess, util_keras  # deferred, as above
    return SimpleNamespace(hparams_config=hparams_config, keras=efficientdet_keras,
                           postprocess=postprocess, util_keras=util_keras)


def random_weights(model, seed: int):
    """``(raw, ema)`` numpy dicts by checkpoint name: the model's initial kernels, plus BN
    statistics, gammas, betas, biases and fusion weights drawn so that every one matters;
    EMA values are the raw ones perturbed by a few percent."""
    rng = np.random.default_rng(seed)
    raw, ema = {}, {}
    for name, var in sorted(model.variables_by_name().items()):
        v = var.numpy().astype(np.float64)
        leaf = name.rsplit("/", 1)[-1]
        if leaf in ("gamma", "moving_variance"):
            v = rng.uniform(0.6, 1.4, v.shape)
        elif leaf in ("beta", "moving_mean", "bias"):
            v = v + rng.normal(0.0, 0.2, v.shape)
        elif leaf.startswith("WSM"):
            v = rng.uniform(0.2, 1.5, v.shape)
        raw[name] = v.astype(np.float32)
        ema[name] = (v * rng.uniform(0.97, 1.03, v.shape)).astype(np.float32)
    return raw, ema


def official_model(off, name: str, prefix: str, use_ema: bool):
    tf.keras.backend.clear_session()  # else a second model's Keras names get _1 suffixes
    cfg = off.hparams_config.get_efficientdet_config(name)
    cfg.is_training_bn = False
    model = off.keras.EfficientDetModel(config=cfg)
    model.build((1, *cfg.image_size, 3) if isinstance(cfg.image_size, tuple)
                else (1, cfg.image_size, cfg.image_size, 3))
    # The official KerasDriver passes config.moving_average_decay (0.9998), which raises
    # KeyError on files without shadows; released D1-style files need decay 0.
    off.util_keras.restore_ckpt(model, prefix, cfg.moving_average_decay if use_ema else 0,
                                skip_mismatch=False)
    return model, cfg


def _maxdiff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def compare(off, cfg, o_model, det, image) -> dict:
    """Every comparison for one image; returns the figures (and pass flags)."""
    sig = [tf.TensorSpec([1, None, None, 3], tf.uint8)]
    o_pre = tf.function(lambda x: o_model._preprocessing(
        x, cfg.image_size, cfg.mean_rgb, cfg.stddev_rgb, "infer"), input_signature=sig)
    o_raw = tf.function(lambda x: o_model(x, training=False, post_mode=None), input_signature=sig)
    o_e2e = tf.function(lambda x: o_model(x, training=False), input_signature=sig)
    x = tf.constant(image[None])
    ours = {k: v.numpy() for k, v in det.function(1)(x).items()}
    o_in, o_scale = o_pre(x)
    o_cls, o_box = o_raw(x)
    fig = {"input": _maxdiff(o_in, ours["input"]),
           "scale": [float(o_scale[0]), float(ours["scale"][0])], "raw": {}}
    for i, lvl in enumerate(det.spec.levels):
        fig["raw"][f"cls_l{lvl}"] = _maxdiff(o_cls[i], ours[f"cls_l{lvl}"])
        fig["raw"][f"box_l{lvl}"] = _maxdiff(o_box[i], ours[f"box_l{lvl}"])
    fig["raw_max"] = max(fig["raw"].values())
    fig["raw_abs_max"] = float(max(np.abs(v).max() for k, v in ours.items() if k[:4] in ("cls_", "box_")))
    # Pre-NMS: the official decoder on its own outputs vs ours on ours (every anchor).
    params = cfg.as_dict()
    ob, osc, ocl = tf.function(lambda c, b: off.postprocess.pre_nms(params, c, b))(o_cls, o_box)
    levels = list(det.spec.levels)
    cls, box = flatten_outputs(*outputs.split(ours, levels), det.spec.num_classes)
    mb = decode_boxes(box, det.anchors).numpy()
    fig["pre_nms_boxes_px"] = _maxdiff(ob, mb)
    fig["pre_nms_scores"] = _maxdiff(osc, tf.sigmoid(tf.reduce_max(cls, -1)))
    fig["pre_nms_class_mismatch"] = int(np.sum(ocl.numpy() != np.argmax(cls.numpy(), -1)))
    fig["dets"] = _compare_dets(o_e2e(x), ours)
    fig["ok"] = (fig["raw_max"] <= LIMITS["raw"] and fig["dets"]["ok"])
    return fig


def _compare_dets(official, ours) -> dict:
    ob, os_, oc, on = (t.numpy() for t in official)
    n = int(on[0])
    out = {"official_n": n, "ours_n": int(ours["num_detections"][0])}
    if out["ours_n"] != n:
        return {**out, "ok": False}
    out["classes_equal"] = bool(np.array_equal(oc[0, :n], ours["classes"][0, :n]))
    out["boxes_px"] = _maxdiff(ob[0, :n], ours["boxes"][0, :n]) if n else 0.0
    out["scores"] = _maxdiff(os_[0, :n], ours["scores"][0, :n]) if n else 0.0
    out["ok"] = (out["classes_equal"] and out["boxes_px"] <= LIMITS["box_px"]
                 and out["scores"] <= LIMITS["score"])
    return out


def parity(off, spec_name: str, image, workdir: Path, seed: int) -> dict:
    spec = load_spec(spec_name)
    raw, ema = random_weights(build_model(spec, seed=seed), seed)
    with_ema = spec_name == "d0"  # as released: D0 files carry shadows, D1 files do not
    prefix = write_released(raw, workdir / spec.name, ema=ema if with_ema else None)
    det = Detector.from_spec(spec, prefix, seed=seed + 1)  # another seed: values must come from the file
    o_model, cfg = official_model(off, spec.name, prefix, with_ema)
    fig = compare(off, cfg, o_model, det, image)
    if with_ema:
        # Control: the same file read raw must NOT match, or the EMA comparison proves nothing.
        raw_det = Detector.from_spec(spec, prefix, use_ema=False, seed=seed + 2)
        theirs = raw_det.function(1)(image[None])
        fig["control_raw_weights_vs_ema_max"] = max(
            _maxdiff(theirs[k], det.function(1)(image[None])[k]) for k in fig["raw"])
    return {"spec": spec.name, "used_ema": det.load_report.used_ema,
            "loaded": f"{len(det.load_report.loaded)}/{det.load_report.requested}", **fig}


def _timed(fn, x) -> float:
    t0 = time.perf_counter()
    tf.nest.map_structure(np.asarray, fn(x))
    return (time.perf_counter() - t0) * 1000


DEPLOYABLE = {  # name: (exported format, runner, runner options)
    "onnxruntime-e2e": ("onnx", "onnxruntime", {}),
    "openvino-fp32-e2e": ("onnx", "openvino", {"precision": "f32"}),
    "openvino-bf16-e2e": ("onnx", "openvino", {"precision": "bf16"}),
    "tflite-fp32-e2e": ("tflite", "tflite", {}),
}


def deployable(names, spec, prefix: str, workdir: Path, threads: int) -> dict:
    """``{name: run(uint8 picture batch) -> outputs}``: the end-to-end files of ``names``
    exported from ``prefix`` (each through its parity gate) and loaded in their runtimes."""
    from edetgraph.verify.runners import make_runner  # deferred: only with --deployable
    from exporters.onnx_format import OnnxFormat  # deferred: only with --deployable
    from exporters.options import ExportOptions, GateOptions, OnnxOptions, TFLiteOptions  # deferred: only with --deployable
    from exporters.pipeline import export  # deferred: only with --deployable
    from exporters.tflite_format import TFLiteFormat  # deferred: only with --deployable
    made, fns = {}, {}
    for name in names:
        fmt, runner, opts = DEPLOYABLE[name]
        if fmt not in made:
            out = str(workdir / f"d0_e2e.{fmt}")
            export(spec, out, OnnxFormat(OnnxOptions()) if fmt == "onnx" else
                   TFLiteFormat(TFLiteOptions("fp32")),
                   ExportOptions(ckpt=prefix, input="uint8",
                                 postprocess="hard-nms" if fmt == "onnx" else "fast",
                                 gate=GateOptions(threads=threads), verbose=False))
            made[fmt] = out
        fns[name] = make_runner(runner, made[fmt], threads, **opts).run
    return fns


def interleaved(fns: dict, x, runs: int, warmup: int) -> dict:
    """Median / min ms per function, calls interleaved so load changes hit all alike."""
    for f in fns.values():
        for _ in range(warmup):
            _timed(f, x)
    times = {k: [] for k in fns}
    for _ in range(runs):
        for k, f in fns.items():
            times[k].append(_timed(f, x))
    return {k: {"median_ms": round(float(np.median(t)), 2), "min_ms": round(float(np.min(t)), 2)}
            for k, t in times.items()}


def latency(off, image, workdir: Path, runs: int, warmup: int,
            profile_threads: int | None = None, files=(), threads: int = 2) -> dict:
    """D0 forward and end-to-end medians, official vs ours, with the same weights in both
    (NMS time depends on how many scores pass the threshold, so the weights must agree)."""
    spec = load_spec("d0")
    raw, _ = random_weights(build_model(spec), seed=0)
    prefix = write_released(raw, workdir / "latency-d0")
    o_model, _ = official_model(off, "efficientdet-d0", prefix, False)
    det = Detector.from_spec(spec, prefix)
    ours_net = det.model
    net_sig = [tf.TensorSpec([1, 512, 512, 3], tf.float32)]
    nets = {"official_net": tf.function(lambda x: o_model(x, training=False, pre_mode=None,
                                                          post_mode=None), input_signature=net_sig),
            "ours_net": tf.function(ours_net.raw_outputs, input_signature=net_sig)}
    x = tf.random.normal([1, 512, 512, 3], seed=1)
    res = interleaved(nets, x, runs, warmup)
    print(json.dumps(res), flush=True)
    if profile_threads:
        res["profile"] = {k: op_profile(f, x, profile_threads) for k, f in nets.items()}
        print(json.dumps(res["profile"]), flush=True)
    img_sig = [tf.TensorSpec([1, None, None, 3], tf.uint8)]
    e2e = {"official_e2e": tf.function(lambda x: o_model(x, training=False), input_signature=img_sig),
           "ours_e2e": det.function(1)}
    picture = tf.constant(image[None])
    if files:
        from edetgraph.task.preprocess import prepare_image  # deferred: only with --deployable
        for name, run in deployable(files, spec, prefix, workdir, threads).items():
            # the file takes the picture at the network size: the resize is timed with it
            e2e[name] = (lambda run: lambda x: run(prepare_image(x[0].numpy(), spec,
                                                                   "uint8")[None]))(run)
        res["deployable_input"] = [1, *spec.image_size, 3]
    res.update(interleaved(e2e, picture, runs, warmup))
    for name in files:
        res[f"{name}_ratio_over_official_e2e"] = round(
            res[name]["median_ms"] / res["official_e2e"]["median_ms"], 3)
    res["net_ratio_ours_over_official"] = round(res["ours_net"]["median_ms"] / res["official_net"]["median_ms"], 3)
    res["e2e_ratio_ours_over_official"] = round(res["ours_e2e"]["median_ms"] / res["official_e2e"]["median_ms"], 3)
    return res


def op_profile(fn, x, threads: int, runs: int = 10) -> dict:
    """Per-op-type milliseconds per run of a traced ``fn`` (batch input ``x``): the function is
    frozen, run in a v1 Session (Grappler on, as in tf.function) with FULL_TRACE, and every
    node's wall time in the step stats is summed by op type (mean over ``runs``)."""
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function())
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(frozen.graph.as_graph_def(), name="")
    cfg = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads,
                                   inter_op_parallelism_threads=1)
    feeds = {frozen.inputs[0].name: x.numpy()}
    fetches = [t.name for t in frozen.outputs]
    totals, wall = collections.Counter(), []
    with tf.compat.v1.Session(graph=graph, config=cfg) as sess:
        for _ in range(3):
            sess.run(fetches, feeds)
        opts = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
        for _ in range(runs):
            meta = tf.compat.v1.RunMetadata()
            t0 = time.perf_counter()
            sess.run(fetches, feeds, options=opts, run_metadata=meta)
            wall.append((time.perf_counter() - t0) * 1000)
            for dev in meta.step_stats.dev_stats:
                for node in dev.node_stats:
                    op = node.timeline_label.split(" = ")[-1].split("(")[0] or node.node_name
                    totals[op] += node.all_end_rel_micros / 1000 / runs  # relative to its own start
    ranked = dict(sorted(((k, round(v, 2)) for k, v in totals.items()), key=lambda kv: -kv[1]))
    return {"traced_run_median_ms": round(sorted(wall)[len(wall) // 2], 2),
            "sum_of_ops_ms": round(sum(totals.values()), 2), "by_op": ranked}


def add_official_args(ap: argparse.ArgumentParser) -> None:
    """--official and --tf-keras, which every script that runs the official code takes."""
    ap.add_argument("--official", required=True, help="official efficientdet folder (or its parent)")
    ap.add_argument("--tf-keras", help="folder holding the tf_keras package (Keras 2)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_official_args(ap)
    ap.add_argument("--specs", nargs="*", default=["d0", "d1"],
                    help="specs to compare (default d0 d1; none: latency only)")
    ap.add_argument("--image", help="picture (default: edetgraph's street.jpg)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency", action="store_true", help="also time D0 side by side")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--profile", action="store_true",
                    help="with --latency: per-op-type time of both D0 forwards (frozen graphs)")
    ap.add_argument("--deployable", nargs="*", choices=sorted(DEPLOYABLE), metavar="NAME",
                    help="with --latency: also time these end-to-end files beside the official "
                         f"end-to-end D0 (no name: all of {', '.join(DEPLOYABLE)})")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads (inter-op: 1)")
    ap.add_argument("--json", help="write all figures to this file")
    args = ap.parse_args(argv)
    if args.deployable is not None and not args.latency:
        ap.error("--deployable times files beside the official end-to-end D0: add --latency")
    off = import_official(args.official, args.tf_keras)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    image = read_image(args.image or path("street.jpg")).numpy()
    out = {"parity": [], "limits": LIMITS}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.specs:
            r = parity(off, name, image, Path(tmp), args.seed)
            print(json.dumps(r), flush=True)
            out["parity"].append(r)
        if args.latency:
            files = list(DEPLOYABLE) if args.deployable == [] else (args.deployable or [])
            out["latency"] = latency(off, image, Path(tmp), args.runs, args.warmup,
                                     args.threads if args.profile else None, files,
                                     args.threads)
            print(json.dumps(out["latency"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0 if all(r["ok"] for r in out["parity"]) else 1


if __name__ == "__main__":
    sys.exit(main())
