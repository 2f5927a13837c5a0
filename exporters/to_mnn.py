"""Export a detector to MNN (.mnn, float32); the file is kept only if MNN computes what TF
computes.

    python exporters/to_mnn.py --spec demo --ckpt out/demo/train --out demo.mnn
    python exporters/to_mnn.py --spec lite0 --out lite0.mnn --input uint8 --eval-data val/

MNN is an optional extra (pip install mnn: its runtime and its converter). The model is
converted to ONNX by tf2onnx (as exporters/to_onnx.py does), then by MNN's own converter;
the parity gate runs the .mnn file with MNN's CPU backend in high precision. Outputs: the
raw head maps ``cls_l3..`` (logits) and ``box_l3..`` (ty, tx, th, tw), NHWC, as in the ONNX
file. The file's metadata (labels, input normalisation, anchors) is JSON in its bizCode
string: ``MNN.nn.load_module_from_file(f, [], []).get_info()["bizCode"]``.
"""
from __future__ import annotations

import importlib.util
import os
import sys

if __package__ in (None, ""):  # run as a file from a checkout: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edetgraph.cli import OneLineParser, quiet_tensorflow  # noqa: E402 (after the path set-up above)
from edetgraph.verify.parity import AP_DROP_WHY, TOLERANCES  # noqa: E402
from exporters.cli import (NORMALISED_HELP, add_eval_args, add_model_args,  # noqa: E402
                           check_common, export_options, parse_batch, run_cli)
from exporters.options import ExportError, OnnxOptions  # noqa: E402
from exporters.to_onnx import MAX_OPSET, MIN_OPSET  # noqa: E402

PROG = "to_mnn"


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                      epilog=f"Parity tolerance -- {TOLERANCES['fp32'].why}. Exit status: 0 "
                      "written and proven, 1 conversion or parity gate failed (nothing "
                      "written), 2 request refused. With --eval-data the file's COCO AP is "
                      f"also compared with TF's: {AP_DROP_WHY}.")
    add_model_args(p, ".mnn")
    add_eval_args(p)
    p.add_argument("--opset", type=int, default=17,
                   help=f"opset of the ONNX model MNN converts, {MIN_OPSET}-{MAX_OPSET}; "
                   "default 17")
    p.add_argument("--batch", default="1", metavar="N", help="static batch size (default 1)")
    p.add_argument("--input", default="float", choices=("float", "uint8"), help=NORMALISED_HELP)
    p.add_argument("--atol", type=float, default=None, metavar="X",
                   help="parity gate: every raw output element within X of TF (default 1e-4), "
                   "else no further from float64 than 2x TF float32")
    return p


def check_request(args):
    """Every refusal that needs no TensorFlow; returns (spec, batch)."""
    if importlib.util.find_spec("MNN") is None:
        raise ExportError("MNN is not installed (pip install mnn, or edetgraph's [mnn] extra)")
    if not MIN_OPSET <= args.opset <= MAX_OPSET:
        raise ExportError(f"--opset {args.opset}: tf2onnx converts this model at opsets "
                          f"{MIN_OPSET}-{MAX_OPSET} only")
    if args.atol is not None and not args.atol > 0:
        raise ExportError(f"--atol {args.atol}: must be > 0")
    args.postprocess = "none"     # raw head maps only (what export_options reads)
    return check_common(args, ".mnn"), parse_batch(args.batch, allow_dynamic=False)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    spec, batch = check_request(args)
    quiet_tensorflow()
    from exporters import mnn_format, pipeline  # deferred: TensorFlow starts after the checks
    return pipeline.run(spec, args.out, mnn_format.MnnFormat(OnnxOptions(args.opset)),
                        export_options(args, batch))


if __name__ == "__main__":
    sys.exit(run_cli(PROG, main))
