"""Export a detector to TFLite (fp32, fp16, dynamic-range or full-integer int8); the file is
kept only if it computes what TF computes, within the tolerance of its kind.

    python exporters/to_tflite.py --spec lite0 --ckpt ckpt/ --out lite0.tflite --quant fp32
    python exporters/to_tflite.py --spec lite0 --ckpt ckpt/ --out lite0_int8.tflite --quant int8 \\
        --representative-data images/ --input uint8 --io uint8 --postprocess fast

Outputs: raw head maps ``cls_l3..`` (logits) and ``box_l3..`` (ty, tx, th, tw), or with
``--postprocess fast`` the TFLite_Detection_PostProcess op (fast NMS, the form mobile
detection libraries expect), batch 1: ``boxes [1, K, 4]`` (ymin, xmin, ymax, xmax as
fractions of the network input, clipped: multiply by its height/width for pixels),
``scores``, ``classes`` (float, 1-based), ``num_detections`` (float32); these stay float
even in int8 files (quantising them would make classes and counts lossy). Every file
carries TFLite Model Metadata (MediaPipe's ObjectDetector loads the fast ones).
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a file from a checkout: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edetgraph.cli import OneLineParser, quiet_tensorflow  # noqa: E402 (after the path set-up above)
from edetgraph.verify.parity import AP_DROP_WHY, TOLERANCES  # noqa: E402
from exporters.cli import (  # noqa: E402
    NORMALISED_HELP,
    add_calibration_args,
    add_eval_args,
    add_model_args,
    check_calibration,
    check_common,
    export_options,
    parse_batch,
    run_cli,
)
from exporters.options import ExportError, TFLiteOptions  # noqa: E402

PROG = "to_tflite"
QUANTS = ("fp32", "fp16", "dynamic", "int8")
TRIAGE_GOALS = ("speed", "accuracy")


def build_parser() -> OneLineParser:
    tol = "; ".join(f"{k}: {t.why}" for k, t in TOLERANCES.items())
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                      epilog=f"Parity tolerances -- {tol}. Exit status: 0 written and proven, 1 "
                      "conversion or parity gate failed (nothing written), 2 request refused. "
                      f"With --eval-data the file's COCO AP is also compared with TF's: "
                      f"{AP_DROP_WHY}.")
    add_model_args(p, ".tflite")
    add_eval_args(p)
    p.add_argument("--quant", required=True, choices=QUANTS,
                   help="fp32; fp16 (weights in half precision); dynamic (int8 weights, float "
                   "activations); int8 (full integer, needs --representative-data)")
    add_calibration_args(p)
    p.add_argument("--no-triage", dest="triage", action="store_false",
                   help="int8 with --eval-data: refuse a file beyond the AP bound as it is, "
                   "instead of searching for one within it (by default candidates keeping its "
                   "most sensitive layers in float32, or with 16-bit activations, are tried on "
                   "the evaluation data and the one --triage-goal asks for is kept; the float "
                   "layers are reported in the summary with the range statistics that made "
                   "them sensitive)")
    p.add_argument("--triage-goal", default="speed", choices=TRIAGE_GOALS,
                   help="int8 triage: which file within the AP bound to keep. speed (default): "
                   "the fastest, each candidate timed beside the fp32 file on this machine "
                   "(--threads); a candidate slower than one already within the bound is not "
                   "measured on the evaluation data. accuracy: the one losing the least AP, "
                   "every candidate measured (slower). Candidates: full int8, the 1/2/4 "
                   "worst-SQNR layers float, the class/box heads float (then with the fewest "
                   "more layers), w8a16; all are listed side by side in the summary's "
                   "options.triage.variants")
    p.add_argument("--no-w8a16", dest="w8a16", action="store_false",
                   help="int8 triage: do not try w8a16 (int8 weights, 16-bit activations, "
                   "the converter's 16x8 mode, whole model; ops without a 16-bit kernel stay "
                   "float32; float I/O and no in-graph NMS only). It is tried by default "
                   "when full int8 is beyond the bound (always with --triage-goal accuracy); "
                   "XNNPACK runs none of its 16-bit ops, so on a CPU it is usually many "
                   "times slower than the fp32 file, and its AP check slow too")
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
    check_calibration(args)
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
    batch = parse_batch(args.batch, allow_dynamic=False)
    if args.postprocess == "fast" and batch != 1:
        raise ExportError(f"--batch {batch}: TFLite_Detection_PostProcess takes batch 1")
    return check_common(args, ".tflite"), batch


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    spec, batch = check_request(args)
    quiet_tensorflow()
    from exporters import pipeline, tflite_format, triage  # deferred: TF after the checks
    fmt = tflite_format.TFLiteFormat(TFLiteOptions(
        quant=args.quant, io=args.io, representative=args.representative_data,
        calibration_images=args.calibration_images, float_heads=args.float_heads,
        triage=args.triage), triage.Choice(goal=args.triage_goal, w8a16=args.w8a16))
    return pipeline.run(spec, args.out, fmt, export_options(args, batch))


if __name__ == "__main__":
    sys.exit(run_cli(PROG, main))
