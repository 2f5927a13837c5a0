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
from exporters.cli import (NORMALISED_HELP, add_eval_args, add_model_args,  # noqa: E402
                           check_common, export_options, parse_batch, run_cli)
from exporters.options import ExportError, OnnxOptions  # noqa: E402
from exporters.to_onnx import (add_converted_args, check_converted_args,  # noqa: E402
                                converted_epilog)

PROG = "to_mnn"


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                      epilog=converted_epilog())
    add_model_args(p, ".mnn")
    add_eval_args(p)
    add_converted_args(p, "MNN")
    p.add_argument("--batch", default="1", metavar="N", help="static batch size (default 1)")
    p.add_argument("--input", default="float", choices=("float", "uint8"), help=NORMALISED_HELP)
    return p


def check_request(args):
    """Every refusal that needs no TensorFlow; returns (spec, batch)."""
    if importlib.util.find_spec("MNN") is None:
        raise ExportError("MNN is not installed (pip install mnn, or edetgraph's [mnn] extra)")
    check_converted_args(args)
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
