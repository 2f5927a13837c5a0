"""Export a detector to an OpenVINO IR (.xml + .bin): int8 by NNCF's post-training
quantisation, or fp32; the file is kept only if it computes what TF computes, within the
tolerance of its kind.

    python exporters/to_openvino.py --spec d0 --ckpt runs/d0 --out d0_int8.xml \\
        --representative-data train/images [--eval-data val --max-ap-drop 1]

OpenVINO is an optional extra (pip install openvino nncf). The fp32 and bf16 OpenVINO rows
of the benchmark need no IR: OpenVINO reads the ONNX file of exporters/to_onnx.py. With
--eval-data an int8 export goes through NNCF's accuracy control: the layers the AP bound
needs are kept in float and listed in the summary (--no-triage: refuse instead).
"""
from __future__ import annotations

import importlib.util
import os
import sys

if __package__ in (None, ""):  # run as a file from a checkout: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edetgraph.cli import OneLineParser  # noqa: E402 (after the path set-up above)
from edetgraph.verify.parity import AP_DROP_WHY  # noqa: E402
from exporters.cli import (NORMALISED_HELP, add_calibration_args, add_eval_args,  # noqa: E402
                           add_model_args, check_calibration, check_common, export_options,
                           parse_batch, run_cli)
from exporters.options import ExportError, OpenVinoOptions  # noqa: E402

PROG = "to_openvino"


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                      epilog="Exit status: 0 written and proven, 1 conversion or a gate failed "
                      "(nothing written), 2 request refused. With --eval-data the file's COCO "
                      f"AP is also compared with TF's: {AP_DROP_WHY}.")
    add_model_args(p, ".xml")
    add_eval_args(p)
    p.add_argument("--quant", default="int8", choices=("int8", "fp32"),
                   help="int8 (NNCF, needs --representative-data; default) or fp32")
    add_calibration_args(p)
    p.add_argument("--no-triage", dest="triage", action="store_false",
                   help="int8 with --eval-data: refuse a file beyond the AP bound instead of "
                   "letting NNCF's accuracy control keep the layers it needs in float")
    p.add_argument("--postprocess", default="none", metavar="none|hard-nms",
                   help="none: raw head outputs (default); hard-nms: decoding and NMS in the "
                   "graph (as exporters/to_onnx.py)")
    p.add_argument("--batch", default="1", metavar="N", help="static batch size (default 1)")
    p.add_argument("--input", default="float", choices=("float", "uint8"), help=NORMALISED_HELP)
    p.add_argument("--atol", type=float, default=None, metavar="X",
                   help="fp32 parity gate: every raw output element within X of TF (default "
                   "1e-4), else no further from float64 than 2x TF float32")
    return p


def check_request(args):
    """Every refusal that needs no TensorFlow; returns (spec, batch)."""
    for module in ("openvino", "nncf") if args.quant == "int8" else ("openvino",):
        if importlib.util.find_spec(module) is None:
            raise ExportError(f"{module} is not installed (pip install openvino nncf)")
    if args.postprocess not in ("none", "hard-nms"):
        raise ExportError(f"--postprocess {args.postprocess}: choose none or hard-nms")
    check_calibration(args)
    return check_common(args, ".xml"), parse_batch(args.batch, allow_dynamic=False)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    spec, batch = check_request(args)
    from exporters import openvino_format, pipeline  # deferred: TensorFlow starts after checks
    fmt = openvino_format.OpenVinoFormat(OpenVinoOptions(
        quant=args.quant, representative=args.representative_data,
        calibration_images=args.calibration_images, triage=args.triage))
    return pipeline.run(spec, args.out, fmt, export_options(args, batch))


if __name__ == "__main__":
    sys.exit(run_cli(PROG, main))
