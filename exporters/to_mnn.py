"""Export a detector to MNN (.mnn, float32 or int8); the file is kept only if MNN computes
what TF computes, within the tolerance of its kind.

    python exporters/to_mnn.py --spec demo --ckpt out/demo/train --out demo.mnn
    python exporters/to_mnn.py --spec lite0 --out lite0.mnn --input uint8 --eval-data val/
    python exporters/to_mnn.py --spec demo --ckpt out/demo/train --out demo_int8.mnn \
        --quant int8 --representative-data train/images

MNN is an optional extra (pip install mnn: its runtime and its converter). The model is
converted to ONNX by tf2onnx (as exporters/to_onnx.py does), then by MNN's own converter;
the parity gate runs the .mnn file with MNN's CPU backend in high precision. --quant int8
then runs MNN's post-training quantiser on that file, calibrated on --representative-data
(training images, never the --eval-data ones), and gates it as int8. Outputs: the
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
from exporters.cli import (NORMALISED_HELP, add_calibration_args, add_eval_args,  # noqa: E402
                           add_model_args, check_calibration, check_common, export_options,
                           parse_batch, run_cli)
from exporters.mnn_quant import FEATURE_METHODS, MnnQuantOptions  # noqa: E402
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
    p.add_argument("--quant", default="fp32", choices=("fp32", "int8"),
                   help="fp32 (default) or int8 (MNN's quantiser, needs --representative-data)")
    add_calibration_args(p)
    p.add_argument("--feature-quant", default="ADMM", choices=FEATURE_METHODS,
                   help="int8: how MNN sets each activation's scale, ADMM (default) or KL "
                   "(MNN's own default; it lost 14 AP points where ADMM lost 0.14 on the demo "
                   "model)")
    return p


def check_request(args):
    """Every refusal that needs no TensorFlow; returns (spec, batch)."""
    if importlib.util.find_spec("MNN") is None:
        raise ExportError("MNN is not installed (pip install mnn, or edetgraph's [mnn] extra)")
    check_converted_args(args)
    check_calibration(args)
    if args.quant == "int8" and args.input == "uint8":
        raise ExportError("--quant int8 --input uint8: MNN's quantiser (mnn 3.6.1) crashes on "
                          "a uint8-input model; export --input float")
    args.postprocess = "none"     # raw head maps only (what export_options reads)
    return check_common(args, ".mnn"), parse_batch(args.batch, allow_dynamic=False)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    spec, batch = check_request(args)
    quiet_tensorflow()
    from exporters import mnn_format, pipeline  # deferred: TensorFlow starts after the checks
    quant = None if args.quant == "fp32" else MnnQuantOptions(
        args.representative_data, args.calibration_images, args.feature_quant)
    return pipeline.run(spec, args.out, mnn_format.MnnFormat(OnnxOptions(args.opset), quant),
                        export_options(args, batch))


if __name__ == "__main__":
    sys.exit(run_cli(PROG, main))
