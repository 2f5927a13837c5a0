"""Export a detector to ONNX with tf2onnx (float32, float16 or int8 QDQ); the file is kept
only if it computes what TF computes, within the tolerance of its kind.

    python exporters/to_onnx.py --spec d0 --ckpt efficientdet-d0.tar.gz --out d0.onnx
    python exporters/to_onnx.py --spec lite0 --out lite0.onnx --postprocess hard-nms --input uint8
    python exporters/to_onnx.py --spec d0 --ckpt ckpt/ --out d0_fp16.onnx --quant fp16
    python exporters/to_onnx.py --spec d0 --ckpt ckpt/ --out d0_int8.onnx --quant int8 \
        --representative-data train_images/ --eval-data val/

Outputs: raw head maps ``cls_l3..`` ``[B, H, W, A*C]`` logits and ``box_l3..`` ``[B, H, W, A*4]``
(ty, tx, th, tw), or with ``--postprocess hard-nms`` decoding + ONNX NonMaxSuppression in the
graph: ``boxes [B, K, 4]`` (ymin, xmin, ymax, xmax in network-input pixels, clipped to the
input; multiply by your resize factor), ``scores [B, K]``, ``classes [B, K]`` (float, 1-based),
``num_detections [B]`` int32, padding zeroed.
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
from exporters.options import ExportError, OnnxOptions  # noqa: E402

PROG = "to_onnx"
MAX_OPSET = 18      # tf2onnx 1.17 raises "Opset 19 is not supported yet"
MIN_OPSET = 9       # raw heads convert and match from opset 9 (measured 9-18)
NMS_MIN_OPSET = 11  # at opset 10 tf2onnx's NonMaxSuppressionV5 handler fails
QUANTS = ("fp32", "fp16", "int8")
QUANT_MIN_OPSET = 13  # per-channel QDQ (DequantizeLinear's axis) needs opset 13


# ------------------------------------------------ shared by the exporters that convert our ONNX

def converted_epilog() -> str:
    """The --help epilog of an exporter whose float32 file is converted from our ONNX."""
    return (f"Parity tolerance -- {TOLERANCES['fp32'].why}. Exit status: 0 written and "
            "proven, 1 conversion or parity gate failed (nothing written), 2 request "
            f"refused. With --eval-data the file's COCO AP is also compared with TF's: "
            f"{AP_DROP_WHY}.")


def add_converted_args(p, converter: str) -> None:
    """--opset (of the ONNX model ``converter`` converts) and the fp32 gate's --atol."""
    p.add_argument("--opset", type=int, default=17,
                   help=f"opset of the ONNX model {converter} converts, {MIN_OPSET}-{MAX_OPSET}; "
                   "default 17")
    p.add_argument("--atol", type=float, default=None, metavar="X",
                   help="parity gate: every raw output element within X of TF (default 1e-4), "
                   "else no further from float64 than 2x TF float32")


def check_converted_args(args) -> None:
    """The refusals of ``add_converted_args``'s flags."""
    if not MIN_OPSET <= args.opset <= MAX_OPSET:
        raise ExportError(f"--opset {args.opset}: tf2onnx converts this model at opsets "
                          f"{MIN_OPSET}-{MAX_OPSET} only")
    if args.atol is not None and not args.atol > 0:
        raise ExportError(f"--atol {args.atol}: must be > 0")


def build_parser() -> OneLineParser:
    tol = "; ".join(f"{k}: {TOLERANCES[k].why}" for k in QUANTS)
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                      epilog=f"Parity tolerances -- {tol}. Exit status: 0 written and proven, 1 "
                      "conversion or parity gate failed (nothing written), 2 request refused. "
                      "Soft-NMS is refused: tf2onnx turns TF's soft-NMS into hard NMS without a "
                      "word. With --eval-data the file's COCO AP is also compared with TF's: "
                      f"{AP_DROP_WHY}.")
    add_model_args(p, ".onnx")
    add_eval_args(p)
    p.add_argument("--quant", default="fp32", choices=QUANTS,
                   help="fp32 (default); fp16 (weights and activations in float16, float32 "
                   "inputs and outputs; ops without a float16 kernel stay float32); int8 "
                   "(static QDQ: int8 activations, one scale per tensor, int8 weights, one "
                   "scale per output channel; needs --representative-data; with --postprocess "
                   "hard-nms the decoding and NMS stay float32)")
    add_calibration_args(p)
    p.add_argument("--no-triage", dest="triage", action="store_false",
                   help="int8 with --eval-data: refuse a file beyond the AP bound as it is, "
                   "instead of keeping the heads, then the tensors whose int8 rounding loses "
                   "most, in float32 (fewest first, each candidate measured on the evaluation "
                   "data, reported in the summary)")
    p.add_argument("--opset", type=int, default=17,
                   help=f"ONNX opset, {MIN_OPSET}-{MAX_OPSET} ({NMS_MIN_OPSET}+ with hard-nms); "
                   "default 17")
    p.add_argument("--postprocess", default="none", metavar="none|hard-nms",
                   help="none: raw head outputs (default); hard-nms: decode + NonMaxSuppression "
                   "in the graph (class-agnostic over each anchor's best class, as the official)")
    p.add_argument("--batch", default="1", metavar="N|dynamic",
                   help="batch dimension: a number (default 1) or 'dynamic'")
    p.add_argument("--input", default="float", choices=("float", "uint8"), help=NORMALISED_HELP)
    p.add_argument("--atol", type=float, default=None, metavar="X",
                   help="parity gate: every raw output element within X of TF (default 1e-4); "
                   "an output beyond X passes only if the file is no further from the same "
                   "network run in float64 than 2x TF float32 itself (rounding, not error). "
                   "Detections must match one to one (scores within 1e-4, boxes within 1e-3 "
                   "of the image side)")
    return p


def check_request(args):
    """Every refusal that needs no TensorFlow; returns (spec, batch)."""
    if args.postprocess in ("soft-nms", "soft"):
        raise ExportError("--postprocess soft-nms: refused, tf2onnx converts TF's soft-NMS "
                          "into hard NMS silently (other boxes and scores); use hard-nms, or "
                          "export raw heads and run soft-NMS outside the graph")
    if args.postprocess not in ("none", "hard-nms"):
        raise ExportError(f"--postprocess {args.postprocess}: choose none or hard-nms")
    low = NMS_MIN_OPSET if args.postprocess == "hard-nms" else MIN_OPSET
    if not low <= args.opset <= MAX_OPSET:
        what = " with hard-nms" if args.postprocess == "hard-nms" else ""
        raise ExportError(f"--opset {args.opset}: tf2onnx 1.17 converts this model{what} at "
                          f"opsets {low}-{MAX_OPSET} only")
    if args.quant == "int8" and args.opset < QUANT_MIN_OPSET:
        raise ExportError(f"--opset {args.opset}: --quant int8 needs opset "
                          f"{QUANT_MIN_OPSET}-{MAX_OPSET}")
    check_calibration(args)
    batch = parse_batch(args.batch, allow_dynamic=True)
    return check_common(args, ".onnx"), batch


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    spec, batch = check_request(args)
    quiet_tensorflow()
    from exporters import onnx_format, pipeline  # deferred: TensorFlow starts after the checks
    return pipeline.run(spec, args.out, onnx_format.OnnxFormat(OnnxOptions(
        args.opset, args.quant, args.representative_data, args.calibration_images, args.triage)),
                        export_options(args, batch))


if __name__ == "__main__":
    sys.exit(run_cli(PROG, main))
