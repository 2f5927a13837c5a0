"""Shared plumbing of the exporters: command-line checks, the model to export, the images the
parity gate feeds it, staged output files and the export summary.

TensorFlow is imported inside the functions that need it, never at module level, so an
impossible request is refused in a fraction of a second, before TensorFlow starts.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile

import numpy as np

from edetgraph.graph.spec import SpecError, load_spec

NORMALISED_HELP = ("float: float32 images already normalised as edetgraph.task.preprocess does "
                   "(mean/std of the spec, resized keeping the aspect ratio, zero-padded to the "
                   "spec's size). uint8: RGB pixels [B, H, W, 3] of the spec's size, ALREADY "
                   "resized (aspect kept) and padded bottom/right (pad with the spec's mean colour "
                   "to match edetgraph.task.preprocess); the graph only normalises. Resizing stays "
                   "outside because the official pipeline resizes the normalised float image, "
                   "which a uint8 input cannot reproduce")


class ExportError(Exception):
    """A request the exporter refuses (exit status 2); the message is one line for the user."""


class ExportFailed(ExportError):
    """A conversion or parity gate that failed (exit status 1); no file was left behind."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), like every other refusal."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


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


def check_common(args, suffix: str):
    """Checks that need no TensorFlow; returns the validated ModelSpec."""
    out = os.path.abspath(args.out)
    if not out.endswith(suffix):
        raise ExportError(f"--out {args.out}: the file name must end in {suffix}")
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise ExportError(f"--out {args.out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ExportError(f"--out {args.out}: directory {parent} is not writable")
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
    from exporters.ap_check import check_request as check_eval
    check_eval(args)
    if args.ckpt is not None:
        from edetgraph.checkpoints.archive import CheckpointError, resolve_checkpoint
        try:
            resolve_checkpoint(args.ckpt)
        except CheckpointError as e:
            raise ExportError(f"--ckpt: {_first_line(e)}") from None
    try:
        return load_spec(args.spec, args.set)
    except SpecError as e:
        raise ExportError(f"--spec {args.spec}: {_first_line(e)}") from None


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


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def log(prog: str, message: str) -> None:
    """Progress goes to stderr, the summary to stdout."""
    print(f"[{prog}] {message}", file=sys.stderr, flush=True)


def run_cli(prog: str, main, argv=None) -> int:
    """Run ``main(argv)``; any refusal or failure becomes one ``prog: error: ...`` line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from edetgraph.checkpoints.archive import CheckpointError
    try:
        return main(argv)
    except (ExportError, SpecError, CheckpointError) as e:
        print(f"{prog}: error: {_first_line(e)}", file=sys.stderr)
        return 1 if isinstance(e, ExportFailed) else 2
    except KeyboardInterrupt:
        print(f"{prog}: error: interrupted; no file written", file=sys.stderr)
        return 130


# ----------------------------------------------------------------------- model and images

def build_export_model(spec, ckpt=None, seed: int = 0):
    """``(model, weights)``: the detector with checkpoint or random weights, and which."""
    from edetgraph.checkpoints.checkpoint import load_checkpoint
    from edetgraph.nn.model import build_model
    model = build_model(spec, seed=seed)
    if ckpt is None:
        randomize_weights(model, spec, seed)
        return model, {"source": "random", "seed": seed}
    report = load_checkpoint(ckpt, model.variables_by_name(), mode="strict", use_ema="auto")
    return model, {"source": os.path.abspath(ckpt), "format": report.format,
                   "ema": bool(report.used_ema), "variables": len(report.loaded)}


RANDOMIZE_PIXELS = 8 * 512 * 512  # images per pass in randomize_weights: 8 at D0's 512 px


def randomize_weights(model, spec, seed: int = 0, num_images: int = 8,
                      max_pixels: int = RANDOMIZE_PIXELS) -> None:
    """Give random weights realistic output ranges: batch-norm statistics from synthetic images,
    prediction layers scaled so logits span about the prior +-6 and box codes about +-3.

    Near-constant channels would get a tiny variance and magnify any rounding downstream
    (weights in fp16 then moved the outputs by >10 %), so variances are floored at their
    layer's median. The images go through in passes of at most ``max_pixels`` pixels (all 8
    at once up to 512 px; one at a time at D7x's 1536 px, where a single 8-image pass peaked
    at 20 GB), each BN layer keeping the image-weighted mean of the passes' statistics.
    Relies on BatchNorm.momentum and the blocks' ``survival`` attribute.
    """
    import tensorflow as tf
    from edetgraph.nn.layers import BatchNorm
    images = np.stack([prepare_image(im, spec, "float")
                       for im in synthetic_images(spec, num_images, seed + 7)])
    per_pass = max(1, max_pixels // int(np.prod(images.shape[1:3])))
    passes = [tf.constant(images[i:i + per_pass]) for i in range(0, len(images), per_pass)]
    saved, bns = [], [m for m in model.submodules if isinstance(m, BatchNorm)]
    for m in model.submodules:
        if isinstance(m, BatchNorm):
            saved.append((m, "momentum", m.momentum))
        if isinstance(getattr(m, "survival", None), float) and m.survival < 1.0:
            saved.append((m, "survival", m.survival))  # no stochastic depth: deterministic
            m.survival = 1.0
    try:
        seen = 0
        for x in passes:  # momentum seen/(seen+n): a running mean; 0 on the first pass
            for bn in bns:
                bn.momentum = seen / (seen + len(x))
            model(x, training=True)
            seen += len(x)
    finally:
        for m, attr, value in saved:
            setattr(m, attr, value)
    for bn in bns:
        var = bn.moving_variance.numpy()
        bn.moving_variance.assign(np.maximum(var, np.median(var)))
    _scale_predictions(model, passes)


def _scale_predictions(model, passes) -> None:
    """Scale the predict kernels so each head's largest |output - bias| over ``passes`` is
    its target: 6 for class logits, 3 for box codes."""
    variables = model.variables_by_name()
    targets = {"class": 6.0, "box": 3.0}
    bias = {head: next(v for n, v in variables.items() if n.endswith(f"{head}-predict/bias"))
            .numpy() for head in targets}
    spread = dict.fromkeys(targets, 0.0)
    for x in passes:
        for k, t in model.raw_outputs(x).items():
            head = "class" if k.startswith("cls_") else "box"
            spread[head] = max(spread[head], float(np.abs(t.numpy() - bias[head]).max()))
    for head, target in targets.items():
        for name, v in variables.items():
            if name.endswith((f"{head}-predict/pointwise_kernel", f"{head}-predict/kernel")):
                v.assign(v * (target / max(spread[head], 1e-12)))


def norm_constants(spec):
    """``(mean, 1/std)`` float32 RGB: the arithmetic edetgraph.task.preprocess uses."""
    mean = np.asarray(spec.preprocess.mean_rgb, np.float32)
    return mean, np.float32(1) / np.asarray(spec.preprocess.stddev_rgb, np.float32)


def normalize_in_graph(images, spec):
    """uint8 ``[B, H, W, 3]`` -> normalised float32, inside an exported graph."""
    import tensorflow as tf
    mean, inv_std = norm_constants(spec)
    return (tf.cast(images, tf.float32) - mean) * inv_std


def letterbox_uint8(image, spec) -> np.ndarray:
    """uint8 ``[h, w, 3]`` -> uint8 network-size image: bilinear resize keeping the aspect
    ratio (the sizes edetgraph.task.preprocess uses), padded bottom/right with the mean colour."""
    import tensorflow as tf
    from edetgraph.task.preprocess import scaled_size
    out_h, out_w = spec.image_size
    _, sh, sw = scaled_size(image.shape[0], image.shape[1], spec.image_size)
    resized = tf.image.resize(tf.cast(image, tf.float32)[None], tf.stack([sh, sw]))[0].numpy()
    canvas = np.empty((out_h, out_w, 3), np.uint8)
    canvas[:] = np.round(np.asarray(spec.preprocess.mean_rgb)).astype(np.uint8)
    canvas[:resized.shape[0], :resized.shape[1]] = np.clip(np.round(resized), 0, 255)
    return canvas


def prepare_image(image, spec, kind: str) -> np.ndarray:
    """One uint8 image of any size -> the exported model's input ``[H, W, 3]`` (``kind``
    ``float``: edetgraph.task.preprocess; ``uint8``: :func:`letterbox_uint8`)."""
    if kind == "uint8":
        return letterbox_uint8(np.asarray(image), spec)
    from edetgraph.task.preprocess import preprocess
    return preprocess(image, spec.image_size, spec.preprocess.mean_rgb,
                      spec.preprocess.stddev_rgb)[0].numpy()


def synthetic_images(spec, count: int, seed: int) -> list:
    """uint8 images of the built-in shapes dataset at the spec's (larger) side."""
    from edetgraph.data.synthetic import render_image
    rng = np.random.default_rng(seed)
    return [render_image(rng, max(spec.image_size), 8)[0] for _ in range(count)]


def spec_anchors(spec) -> np.ndarray:
    """The spec's anchors ``[N, 4]`` in network pixels, in head-output order."""
    from edetgraph.task.anchors import generate_anchors
    a = spec.anchors
    return generate_anchors(spec.image_size, a.min_level, a.max_level, a.num_scales,
                            a.aspect_ratios, a.scale)


def head_lists(raw: dict, spec):
    """Raw output dict -> (class maps, box maps) as lists over levels."""
    return [raw[f"cls_l{lvl}"] for lvl in spec.levels], [raw[f"box_l{lvl}"] for lvl in spec.levels]


def detection_op_inputs(raw: dict, spec) -> dict:
    """Raw outputs -> what TFLite_Detection_PostProcess takes: ``box_encodings`` (flattened
    box codes) and ``class_scores`` (sigmoid of the flattened logits)."""
    import tensorflow as tf
    from edetgraph.task.postprocess import flatten_outputs
    cls, box = flatten_outputs(*head_lists(raw, spec), spec.num_classes)
    return {"box_encodings": box, "class_scores": tf.sigmoid(cls)}


def make_serving_fn(model, spec, batch, input_kind: str, head=None):
    """The function that is converted: ``images -> dict``, a static-shape ``tf.function``.

    ``batch`` None makes the batch dimension dynamic; ``input_kind`` uint8 normalises inside;
    ``head(raw_outputs) -> dict`` adds in-graph post-processing (None: raw head outputs).
    """
    import tensorflow as tf
    h, w = spec.image_size
    dtype = tf.uint8 if input_kind == "uint8" else tf.float32
    signature = [tf.TensorSpec([batch, h, w, 3], dtype, name="images")]

    @tf.function(input_signature=signature, autograph=False)
    def serve(images):
        x = normalize_in_graph(images, spec) if input_kind == "uint8" else images
        raw = model.raw_outputs(x)
        return head(raw) if head is not None else raw

    return serve


# ----------------------------------------------------------------- staged files and summary

class StagedOutput:
    """A temporary path beside ``out``: renamed to ``out`` by :meth:`commit`, deleted otherwise.

    The temporary file sits in a hidden ``.NAME.*.partial`` folder in the output directory
    (same file system, so the rename is atomic), so a failed or interrupted export leaves
    nothing that looks like a model.
    """

    def __init__(self, out: str):
        self.out = os.path.abspath(out)
        name = os.path.basename(self.out)
        self._dir = tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial",
                                     dir=os.path.dirname(self.out))
        self.path = os.path.join(self._dir, name)

    def commit(self, summary: dict) -> None:
        """Move the file into place and write the summary JSON beside it."""
        staged_json = self.path + ".json"
        with open(staged_json, "w") as f:
            json.dump(_strict_json(summary), f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(self.path, self.out)
        os.replace(staged_json, self.out + ".json")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self._dir, ignore_errors=True)
        return False


def keep_if_passed(staged: "StagedOutput", summary: dict, out: str) -> None:
    """Commit the staged file and its summary, or print the figures and raise ExportFailed."""
    parity = summary["parity"]
    if not parity["passed"]:
        from exporters.parity import format_parity
        print(format_parity(parity))
        more = len(parity["failures"]) - 1
        raise ExportFailed(f"parity gate failed, {out} not written: {parity['failures'][0]}"
                           + (f" (+{more} more)" if more else ""))
    accuracy = summary.get("accuracy")
    if accuracy is not None and not accuracy["passed"]:
        from exporters.ap_check import format_ap
        raise ExportFailed(f"AP check failed, {out} not written: {format_ap(accuracy)}")
    staged.commit(summary)


def _strict_json(value):
    """Plain JSON: numpy scalars and arrays as Python values, -inf/nan as strings."""
    if isinstance(value, dict):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return _strict_json(value.tolist())
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def file_facts(path: str) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


def versions(*distributions: str) -> dict:
    out = {}
    for name in distributions:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def format_summary(s: dict) -> str:
    """The human-readable summary printed after a successful export."""
    mb = s["file"]["bytes"] / 2 ** 20
    lines = [f"wrote {s['file']['path']} ({mb:.2f} MB) in {s['timings']['total_s']:.1f} s "
             f"(conversion {s['timings']['convert_s']:.1f} s); parity gate passed "
             f"({s['parity']['tolerance']['name']})"]
    for kind in ("inputs", "outputs"):
        for t in s[kind]:
            q = f" quant(scale={t['quantization'][0]:.6g}, zero={t['quantization'][1]})" \
                if t.get("quantization") else ""
            lines.append(f"  {kind[:-1]:6s} {t['name']}: {t['dtype']} {list(t['shape'])}{q}")
    ops = ", ".join(f"{k} {v}" for k, v in sorted(s["ops"].items(), key=lambda kv: -kv[1]))
    lines.append(f"  ops ({sum(s['ops'].values())}): {ops}")
    from exporters.parity import format_parity
    lines.extend("  " + line for line in format_parity(s["parity"]).splitlines())
    if s.get("accuracy"):
        from exporters.ap_check import format_ap
        lines.append("  " + format_ap(s["accuracy"]))
    lines.append(f"  summary: {s['file']['path']}.json")
    return "\n".join(lines)
