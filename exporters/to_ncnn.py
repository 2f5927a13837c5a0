"""Export a detector to NCNN (.param + .bin, float32); the files are kept only if ncnn
computes what TF computes.

    python exporters/to_ncnn.py --spec demo --ckpt out/demo/train --out demo.ncnn.param
    python exporters/to_ncnn.py --spec lite0 --out lite0.ncnn.param --eval-data val/

NCNN is an optional extra: its runtime (pip install ncnn, or edetgraph's [ncnn] extra) and
its converter pnnx, installed without its declared PyTorch dependency, which converting an
ONNX file does not use (pip install --no-deps pnnx). The model is converted to ONNX by
tf2onnx (as exporters/to_onnx.py does), then by pnnx; the parity gate runs the files with
ncnn's CPU runtime, float16/bfloat16 off. ``--out NAME.param`` writes NAME.param (layers),
NAME.bin (weights), NAME.json (the metadata: labels, input normalisation, anchors,
outputs) and the export summary NAME.param.json. Input: one float32 image [1, H, W, 3],
normalised (ncnn's Mat holds one image: a batch runs image by image); outputs: the raw head
maps ``cls_l3..`` and ``box_l3..``, named so in the .param, [H, W, C] per image.
"""
from __future__ import annotations

import importlib.util
import os
import sys

if __package__ in (None, ""):  # run as a file from a checkout: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edetgraph.cli import OneLineParser, quiet_tensorflow  # noqa: E402 (after the path set-up above)
from edetgraph.files import is_real_folder  # noqa: E402
from edetgraph.verify.ncnn_runner import companions  # noqa: E402
from exporters.cli import (add_eval_args, add_model_args,  # noqa: E402
                           check_common, export_options, run_cli)
from exporters.options import ExportError, OnnxOptions  # noqa: E402
from exporters.to_onnx import (add_converted_args, check_converted_args,  # noqa: E402
                                converted_epilog)

PROG = "to_ncnn"


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                      epilog=converted_epilog())
    add_model_args(p, ".param")
    add_eval_args(p)
    add_converted_args(p, "pnnx")
    return p


def check_request(args):
    """Every refusal that needs no TensorFlow; returns the spec."""
    if importlib.util.find_spec("ncnn") is None:
        raise ExportError("ncnn is not installed (pip install ncnn, or edetgraph's [ncnn] "
                          "extra)")
    if importlib.util.find_spec("pnnx") is None:
        raise ExportError("pnnx (the converter) is not installed (pip install --no-deps pnnx)")
    check_converted_args(args)
    args.postprocess, args.input = "none", "float"   # raw head maps, normalised float input
    spec = check_common(args, ".param")
    for target in companions(os.path.abspath(args.out)):   # what is written beside it
        if is_real_folder(target):
            raise ExportError(f"--out {args.out}: {target} is an existing folder; refusing to "
                              "replace it (move it away or choose another name)")
    return spec


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    spec = check_request(args)
    quiet_tensorflow()
    from exporters import ncnn_format, pipeline  # deferred: TensorFlow starts after the checks
    return pipeline.run(spec, args.out, ncnn_format.NcnnFormat(OnnxOptions(args.opset)),
                        export_options(args, 1))


if __name__ == "__main__":
    sys.exit(run_cli(PROG, main))
