"""Export a detector to TFLite (fp32, fp16, dynamic-range or full-integer int8); the file is
kept only if it computes what TF computes, within the tolerance of its kind.

    python exporters/to_tflite.py --spec lite0 --ckpt ckpt/ --out lite0.tflite --quant fp32
    python exporters/to_tflite.py --spec lite0 --ckpt ckpt/ --out lite0_int8.tflite --quant int8 \\
        --representative-data images/ --input uint8 --io uint8 --postprocess fast

Outputs: raw head maps ``cls_l3..`` (logits) and ``box_l3..`` (ty, tx, th, tw), or with
``--postprocess fast`` the TFLite_Detection_PostProcess op (fast NMS, the form mobile
detection libraries expect), batch 1: ``boxes [1, K, 4]`` (ymin, xmin, ymax, xmax in
network-input pixels, clipped), ``scores``, ``classes`` (float, 1-based), ``num_detections``;
these stay float even in int8 files (quantising them would make classes and counts lossy).
"""
from __future__ import annotations

import glob
import os
import sys
import time
import warnings
from collections import Counter

import numpy as np

if __package__ in (None, ""):  # run as a file from a checkout: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from exporters import ap_check
from exporters.common import (NORMALISED_HELP, ExportError, ExportFailed, OneLineParser,
                              StagedOutput, add_model_args, build_export_model, check_common,
                              file_facts, format_summary, head_lists, keep_if_passed, log,
                              make_serving_fn, parse_batch, prepare_image, run_cli, spec_anchors,
                              versions)

PROG = "to_tflite"
QUANTS = ("fp32", "fp16", "dynamic", "int8")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def build_parser() -> OneLineParser:
    from exporters.parity import TOLERANCES
    tol = "; ".join(f"{k}: {t.why}" for k, t in TOLERANCES.items())
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                      epilog=f"Parity tolerances -- {tol}. Exit status: 0 written and proven, 1 "
                      "conversion or parity gate failed (nothing written), 2 request refused. "
                      f"With --eval-data the file's COCO AP is also compared with TF's: "
                      f"{ap_check.AP_DROP_WHY}.")
    add_model_args(p, ".tflite")
    ap_check.add_args(p)
    p.add_argument("--quant", required=True, choices=QUANTS,
                   help="fp32; fp16 (weights in half precision); dynamic (int8 weights, float "
                   "activations); int8 (full integer, needs --representative-data)")
    p.add_argument("--representative-data", metavar="TFRECORD|DIR",
                   help="int8 calibration images: a folder of .jpg/.jpeg/.png/.bmp files, or "
                   "TFRecord file(s) (a glob is fine) of tf.Examples with image/encoded")
    p.add_argument("--calibration-images", type=int, default=100, metavar="N",
                   help="how many representative images to calibrate on (default 100)")
    p.add_argument("--float-heads", action="store_true",
                   help="int8 only: keep the class and box heads in float32 and quantise the "
                   "rest: for swish models, whose head activations have a few channels far "
                   "wider than the rest (measured on a swish demo model: full int8 lost 5.6 AP "
                   "points, this 0.6); the file is larger and slower than full int8")
    p.add_argument("--postprocess", default="none", metavar="none|fast",
                   help="none: raw head outputs (default); fast: TFLite_Detection_PostProcess "
                   "in the graph (batch 1)")
    p.add_argument("--io", default="float", choices=("float", "int8", "uint8"),
                   help="int8 files only: type of the float input and of raw-head outputs "
                   "(default float: the file quantises/dequantises itself)")
    p.add_argument("--input", default="float", choices=("float", "uint8"), help=NORMALISED_HELP)
    p.add_argument("--batch", default="1", metavar="N", help="static batch size (default 1)")
    p.add_argument("--atol", type=float, default=None, metavar="X",
                   help="fp32 parity gate: every raw output element within X of TF (default "
                   "1e-4); an output beyond X passes only if the file is no further from the "
                   "same network run in float64 than 2x TF float32 itself")
    return p


def check_request(args):
    """Every refusal that needs no TensorFlow; returns (spec, batch)."""
    if args.postprocess in ("hard-nms", "soft-nms", "hard", "soft"):
        raise ExportError(f"--postprocess {args.postprocess}: TFLite's in-graph NMS is 'fast' "
                          "(TFLite_Detection_PostProcess); choose none or fast")
    if args.postprocess not in ("none", "fast"):
        raise ExportError(f"--postprocess {args.postprocess}: choose none or fast")
    if args.quant == "int8" and not args.representative_data:
        raise ExportError("--quant int8 needs --representative-data (a folder of images or a "
                          "TFRecord) to calibrate activation ranges")
    if args.representative_data and args.quant != "int8":
        raise ExportError(f"--representative-data is only used by --quant int8, not {args.quant}")
    if args.io != "float" and args.quant != "int8":
        raise ExportError(f"--io {args.io} needs --quant int8 (a {args.quant} file has float I/O)")
    if args.io != "float" and args.input == "uint8" and args.postprocess == "fast":
        raise ExportError(f"--io {args.io} has nothing to apply to: with --input uint8 the input "
                          "is uint8 pixels and --postprocess fast keeps its outputs float")
    if args.float_heads and args.quant != "int8":
        raise ExportError(f"--float-heads needs --quant int8 (a {args.quant} file is float "
                          "throughout or has no activation quantisation to undo)")
    if args.float_heads and args.io != "float":
        raise ExportError(f"--float-heads with --io {args.io}: the heads' float outputs cannot "
                          "be int8; use --io float")
    if args.calibration_images < 1:
        raise ExportError(f"--calibration-images {args.calibration_images}: must be >= 1")
    if args.atol is not None and not args.atol > 0:
        raise ExportError(f"--atol {args.atol}: must be > 0")
    batch = parse_batch(args.batch, allow_dynamic=False)
    if args.postprocess == "fast" and batch != 1:
        raise ExportError(f"--batch {batch}: TFLite_Detection_PostProcess takes batch 1")
    if args.representative_data:
        representative_files(args.representative_data)
    return check_common(args, ".tflite"), batch


def representative_files(source: str) -> tuple:
    """``('dir', [images])`` or ``('tfrecord', [files])``; refuses what holds no images."""
    if os.path.isdir(source):
        files = sorted(os.path.join(source, f) for f in os.listdir(source)
                       if f.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise ExportError(f"--representative-data {source}: no {'/'.join(IMAGE_SUFFIXES)} "
                              "images in this folder")
        return "dir", files
    files = sorted(glob.glob(source))
    if not files:
        raise ExportError(f"--representative-data {source}: no such folder or TFRecord file")
    return "tfrecord", files


def representative_images(source: str, limit: int):
    """Yield up to ``limit`` uint8 RGB images, decoded with TensorFlow's decoders."""
    import tensorflow as tf
    from edetgraph.task.preprocess import read_image
    kind, files = representative_files(source)
    if kind == "dir":
        for f in files[:limit]:
            try:
                yield read_image(f).numpy()
            except ValueError as e:
                raise ExportError(f"--representative-data: {e}") from None
        return
    feature = {"image/encoded": tf.io.FixedLenFeature((), tf.string)}
    try:
        for record in tf.data.TFRecordDataset(files).take(limit):
            encoded = tf.io.parse_single_example(record, feature)["image/encoded"]
            yield tf.io.decode_image(encoded, channels=3, expand_animations=False).numpy()
    except tf.errors.OpError as e:
        raise ExportError(f"--representative-data {source}: not a TFRecord of tf.Examples with "
                          f"image/encoded ({e.message.splitlines()[0][:200]})") from None


def _converter(serve, model, quant, io, input_kind, postprocess, representative):
    import tensorflow as tf
    conv = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], model)
    if quant != "fp32":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if quant == "fp16":
        conv.target_spec.supported_types = [tf.float16]
    if quant == "int8":
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = {"int8": tf.int8, "uint8": tf.uint8}.get(io)
        if io_type is not None and input_kind == "float":
            conv.inference_input_type = io_type
        if io_type is not None and postprocess == "none":
            conv.inference_output_type = io_type
    return conv


def _interpreter(path, **kw):
    try:
        from ai_edge_litert import interpreter as lite
    except ImportError:
        import tensorflow.lite as lite
    if kw.pop("no_delegates", False):
        kw["experimental_op_resolver_type"] = lite.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if path is None:
        return lite.Interpreter(**kw)
    return lite.Interpreter(model_path=path, **kw)


def op_histogram(path) -> dict:
    """Op counts of the file itself (default delegates off, so no DELEGATE pseudo-ops)."""
    interp = _interpreter(path, no_delegates=True)
    return dict(Counter(op["op_name"] for op in interp._get_ops_details()))


class DetectionInputProbe:
    """Reads the two float inputs of TFLite_Detection_PostProcess (box encodings and class
    scores, all anchors), so a file with in-graph NMS still gets a raw-level comparison."""

    def __init__(self, path, threads=None):
        with warnings.catch_warnings():  # "for debugging purposes only": that is the use
            warnings.simplefilter("ignore")
            self.interp = _interpreter(path, num_threads=threads,
                                       experimental_preserve_all_tensors=True)
        self.interp.allocate_tensors()
        ops = [op for op in self.interp._get_ops_details()
               if op["op_name"] == "TFLite_Detection_PostProcess"]
        if len(ops) != 1:
            raise ExportFailed("the converter did not emit TFLite_Detection_PostProcess "
                               f"(found {len(ops)}); the in-graph NMS would be something else")
        self.boxes, self.scores = int(ops[0]["inputs"][0]), int(ops[0]["inputs"][1])
        self.input = self.interp.get_input_details()[0]
        self.details = {d["index"]: d for d in self.interp.get_tensor_details()}

    def __call__(self, x) -> dict:
        d = self.input
        scale, zero = d["quantization"]
        if scale and np.dtype(d["dtype"]).kind in "iu" and x.dtype.kind == "f":
            lim = np.iinfo(d["dtype"])
            x = np.clip(np.round(x / scale) + zero, lim.min, lim.max)
        self.interp.set_tensor(d["index"], np.asarray(x, d["dtype"]))
        self.interp.invoke()
        return {"box_encodings": self._read(self.boxes), "class_scores": self._read(self.scores)}

    def _read(self, index):
        value = self.interp.get_tensor(index)
        scale, zero = self.details[index]["quantization"]
        return (value.astype(np.float32) - zero) * scale if value.dtype.kind in "iu" else value


def _probe_reference(model, spec, serve):
    """TF side of the probe: the flattened box codes and sigmoid class scores."""
    import tensorflow as tf
    from exporters.common import detection_op_inputs, normalize_in_graph

    @tf.function(input_signature=serve.input_signature, autograph=False)
    def reference(images):
        x = normalize_in_graph(images, spec) if images.dtype == tf.uint8 else images
        return detection_op_inputs(model.raw_outputs(x), spec)

    return reference


def _fast_probe(model, spec, serve, path, threads):
    """``probe(x) -> (TF, file)`` figures for the inputs of the detection op."""
    reference, in_file = _probe_reference(model, spec, serve), DetectionInputProbe(path, threads)
    return lambda x: ({k: v.numpy() for k, v in reference(x).items()}, in_file(x))


def export_tflite(spec, out: str, *, quant: str = "fp32", representative: str | None = None,
                  calibration_images: int = 100, postprocess: str = "none", io: str = "float",
                  input_kind: str = "float", batch: int = 1, ckpt=None, seed: int = 0,
                  max_detections: int = 100, score_threshold: float = float("-inf"),
                  iou_threshold: float = 0.5, random_inputs: int = 2, threads=None, atol=None,
                  float64_factor=None,
                  eval_data: str | None = None, eval_annotations: str | None = None,
                  eval_images: int | None = None, eval_nms: str = "soft",
                  max_ap_drop: float | None = None, float_heads: bool = False,
                  verbose: bool = True) -> dict:
    """Build, convert, gate, and keep ``out`` only if the gate passes; returns the summary.

    Raises ExportFailed (nothing written) when conversion or the parity gate fails, or, with
    ``eval_data``, when the file loses more AP than its kind allows (exporters.ap_check).
    """
    from bench.runners import RunnerError, make_runner
    from edetgraph.task.postprocess import make_tflite_detection_postprocess
    from exporters.parity import ParityGate, run_gate, tolerance_for
    say = (lambda m: log(PROG, m)) if verbose else (lambda m: None)
    start = time.perf_counter()
    say(f"building {spec.name} ({'random weights, seed %d' % seed if ckpt is None else ckpt})")
    model, weights = build_export_model(spec, ckpt, seed)
    head = None
    if postprocess == "fast":
        detect = make_tflite_detection_postprocess(
            spec_anchors(spec), spec.num_classes, max_detections, score_threshold,
            iou_threshold, image_size=spec.image_size)
        head = lambda raw: detect(*head_lists(raw, spec))  # noqa: E731
    serve = make_serving_fn(model, spec, batch, input_kind, head)

    def calibration():
        group = []
        for i, image in enumerate(representative_images(representative, calibration_images)):
            group.append(prepare_image(image, spec, input_kind))
            if len(group) == batch:
                yield [np.stack(group)]
                group = []
            if (i + 1) % 20 == 0:
                say(f"  calibrated on {i + 1} images")

    if quant == "int8":  # a bad TFRecord fails here, not deep inside the converter
        next(representative_images(representative, 1), None)
    if float_heads:
        say("the class/box heads stay float32 (--float-heads); the rest is int8")
    say(f"converting to TFLite ({quant}, batch {batch}, postprocess {postprocess}, input "
        f"{input_kind}, io {io})" + (f", calibrating on up to {calibration_images} images of "
                                    f"{representative}" if quant == "int8" else ""))
    t0 = time.perf_counter()
    float_nodes = None
    try:
        conv = _converter(serve, model, quant, io, input_kind, postprocess, calibration)
        if float_heads:
            from exporters.float_heads import convert_with_float_heads
            flatbuffer, float_nodes = convert_with_float_heads(conv, serve, model, calibration)
        else:
            flatbuffer = conv.convert()
    except ExportFailed:
        raise
    except Exception as e:  # ConverterError and friends
        raise ExportFailed(f"TFLite converter failed ({quant}): "
                           f"{str(e).strip().splitlines()[0][:300]}") from None
    convert_s = time.perf_counter() - t0
    with StagedOutput(out) as staged:
        with open(staged.path, "wb") as f:
            f.write(flatbuffer)
        try:
            runner = make_runner("tflite", staged.path, threads)
        except RunnerError as e:
            raise ExportFailed(str(e).replace(staged.path, out)) from None
        probe = (_fast_probe(model, spec, serve, staged.path, threads)
                 if postprocess == "fast" else None)
        say("parity gate: running the file and TF on the same inputs")
        t0 = time.perf_counter()
        gate = ParityGate(tolerance_for(quant, atol, float64_factor), spec.num_classes,
                          max(spec.image_size))
        parity = run_gate(gate, serve, runner.run, spec, input_kind, batch, random_inputs,
                          detections=head is not None, probe=probe, model=model)
        info = runner.info()
        summary = {
            "schema": "edetgraph.export/1", "format": "tflite",
            "file": {"path": staged.out, **file_facts(staged.path)},
            "spec": spec.name, "spec_source": spec.source, "weights": weights,
            "options": {"quant": quant, "io": io, "input": input_kind, "postprocess": postprocess,
                        "batch": batch, "representative_data": representative,
                        "calibration_images": calibration_images if quant == "int8" else None,
                        "float_heads": float_heads, "float_head_ops": float_nodes,
                        "max_detections": max_detections, "score_threshold": score_threshold,
                        "iou_threshold": iou_threshold},
            "inputs": info["inputs"], "outputs": info["outputs"], "runtime": info["runtime"],
            "ops": op_histogram(staged.path), "parity": parity,
            "timings": {"convert_s": convert_s, "parity_s": time.perf_counter() - t0,
                        "total_s": time.perf_counter() - start},
            "versions": versions("tensorflow-cpu", "tensorflow", "ai-edge-litert")}
        ap_check.attach(summary, spec, serve, runner.run, quant, input_kind, batch, eval_data,
                        eval_annotations, eval_images, eval_nms, max_ap_drop, say)
        keep_if_passed(staged, summary, out)
    return summary


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    spec, batch = check_request(args)
    summary = export_tflite(
        spec, args.out, quant=args.quant, representative=args.representative_data,
        calibration_images=args.calibration_images, postprocess=args.postprocess, io=args.io,
        input_kind=args.input, batch=batch, ckpt=args.ckpt, seed=args.seed,
        max_detections=args.max_detections, score_threshold=args.score_threshold,
        iou_threshold=args.iou_threshold, random_inputs=args.random_inputs,
        threads=args.threads, atol=args.atol, float64_factor=args.float64_factor,
        eval_data=args.eval_data, eval_annotations=args.eval_annotations,
        eval_images=args.eval_images, eval_nms=args.eval_nms, max_ap_drop=args.max_ap_drop,
        float_heads=args.float_heads)
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(PROG, main))
