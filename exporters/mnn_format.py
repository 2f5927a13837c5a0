"""MNN as an export format: the ONNX conversion (``exporters.onnx_format``, tf2onnx) handed to
MNN's own converter (the native one shipped in the ``mnn`` wheel), run by MNN's CPU backend
in the parity gate; int8 by MNN's quantiser on that file (``exporters.mnn_quant``), judged by
the int8 tolerance.

The file carries its metadata inside: MNN keeps one free string per model (``bizCode``,
read back by ``Module.get_info()["bizCode"]``), which holds the same JSON facts the other
formats carry (labels, input normalisation, anchors, outputs).
"""
from __future__ import annotations

import json
import os
import tempfile

import onnx

from exporters.calibration import calibration_batches, representative_images
from exporters.mnn_quant import MnnQuantOptions, last_error, quantise, run_tool
from exporters.model_facts import model_facts
from exporters.onnx_format import convert as onnx_convert
from exporters.options import ExportFailed, ExportOptions, OnnxOptions
from exporters.pipeline import Format

# MNN's native converter (the ``_tools`` extension of the mnn wheel), called directly in a
# child process, so its console output and any native crash stay there. Not the wheel's
# ``mnnconvert`` entry point: after converting, that one loads MNN's usage logger, which
# runs ``pip install -U aliyun-log-python-sdk`` when the package is missing (measured: it
# downgraded protobuf to 5.29, below TensorFlow 2.21's 6.31, and TensorFlow's protos then
# fail to load) and sends the model's id, the arguments and the machine's id to a server.
_MNNCONVERT = ("import sys\nimport _tools\n"
               "sys.exit(0 if _tools.mnnconvert(['mnnconvert'] + sys.argv[1:]) else 1)\n")


class MnnFormat(Format):
    name, prog, runner, target = "mnn", "to_mnn", "mnn", "onnx"
    versions = ("tensorflow-cpu", "tensorflow", "tf2onnx", "onnx", "mnn")

    def __init__(self, options: OnnxOptions = OnnxOptions(),
                 quant: MnnQuantOptions | None = None):
        self.onnx, self.quant = options, quant   # quant None: float32

    def kind(self) -> str:
        return "fp32" if self.quant is None else "int8"

    def describe(self, opts: ExportOptions) -> str:
        text = (f"converting with tf2onnx (opset {self.onnx.opset}) then mnnconvert (batch "
                f"{opts.batch}, input {opts.input})")
        if self.quant is not None:
            text += (f", quantising with MNN's quantiser ({self.quant.feature_method}) on up "
                     f"to {self.quant.calibration_images} images of {self.quant.representative}")
        return text

    def convert(self, serve, model, spec, opts: ExportOptions, say):
        """``(MNN file bytes, facts)``."""
        facts = model_facts(spec, opts, "mnn", dict(opts.card.labels), opts.card.labels_source,
                            None)
        if self.quant is not None:
            facts["quantisation"] = self.quant.facts()
        source = onnx_convert(serve, self.onnx.opset)
        data = mnnconvert(source, json.dumps(facts, allow_nan=False, ensure_ascii=False))
        if self.quant is not None:   # the quantiser keeps the float file's bizCode
            q = self.quant
            next(representative_images(q.representative, 1), None)   # a bad source fails now
            batches = calibration_batches(q.representative, q.calibration_images, spec,
                                          opts.input, opts.batch, say)
            data = quantise(data, batches, source.graph.input[0].name, q)
        return data, facts

    def write(self, converted, path: str) -> None:
        with open(path, "wb") as f:
            f.write(converted[0])

    def options(self, opts: ExportOptions, converted) -> dict:
        q = self.quant
        return {"opset": self.onnx.opset, "batch": opts.batch, "input": opts.input,
                "postprocess": opts.postprocess, "precision": "high", "quant": self.kind(),
                "representative_data": q and q.representative,
                "calibration_images": q and q.calibration_images,
                "feature_quantize_method": q and q.feature_method,
                "weight_quantize_method": q and q.weight_method}

    def facts(self, converted, path: str, runner) -> dict:
        stored = json.loads(runner.biz_code) if runner.biz_code else None
        if stored != converted[1]:
            raise ExportFailed("the MNN file does not hold the metadata it was written with")
        return {"runtime": runner.info()["runtime"], "metadata": stored}


def mnnconvert(model: onnx.ModelProto, biz_code: str) -> bytes:
    """The MNN file of an ONNX model (MNN's converter in a child process), with
    ``biz_code`` as its free metadata string."""
    with tempfile.TemporaryDirectory(prefix="edetgraph-mnn-") as tmp:
        src, dst = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "model.mnn")
        onnx.save(model, src)
        status, said = run_tool(_MNNCONVERT, ["-f", "ONNX", "--modelFile", src, "--MNNModel",
                                              dst, "--bizCode", biz_code], "mnnconvert")
        if status != 0 or not os.path.isfile(dst) or os.path.getsize(dst) == 0:
            raise ExportFailed(f"mnnconvert failed (exit {status}): {last_error(said)}")
        with open(dst, "rb") as f:
            return f.read()
