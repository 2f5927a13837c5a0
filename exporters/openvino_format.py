"""OpenVINO as an export format: the ONNX conversion of the serving function (OpenVINO's
own op forms, ``edetgraph.nn.targets``) read by OpenVINO and written as an IR (``.xml`` with
its ``.bin``), full-integer int8 by NNCF's post-training quantisation on representative
images. The fp32 and bf16 rows of the benchmark run the ONNX file itself; this format makes
the file int8 needs.

Quantisation keeps what NNCF's defaults keep in float (its "performance" preset, per-tensor
activations, per-channel weights); the parity gate judges the file as int8 and, with
``--eval-data``, its AP.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter

import onnx

from edetgraph.verify import coverage
from exporters.calibration import calibration_batches, representative_images
from exporters.onnx_format import OnnxFormat
from exporters.onnx_format import convert as onnx_convert
from exporters.options import ExportFailed, ExportOptions, OpenVinoOptions


class OpenVinoFormat(OnnxFormat):
    name, prog, runner, target = "openvino", "to_openvino", "openvino", "openvino"
    runner_options = {"precision": "f32"}   # int8 layers run int8 whatever the hint
    versions = ("tensorflow-cpu", "tensorflow", "tf2onnx", "onnx", "openvino", "nncf")

    def __init__(self, options: OpenVinoOptions = OpenVinoOptions()):
        super().__init__()
        self.ov = options

    def kind(self) -> str:
        return self.ov.quant

    def describe(self, opts: ExportOptions) -> str:
        text = (f"converting with tf2onnx (opset {self.ov.opset}) and OpenVINO "
                f"({self.ov.quant}, batch {opts.batch}, postprocess {opts.postprocess}, input "
                f"{opts.input})")
        if self.ov.quant == "int8":
            text += (f", quantising with NNCF on up to {self.ov.calibration_images} images of "
                     f"{self.ov.representative}")
        return text

    def convert(self, serve, model, spec, opts: ExportOptions, say):
        import nncf  # deferred: NNCF takes seconds to import and only int8 needs it
        import openvino as ov  # deferred: an optional runtime
        proto = onnx_convert(serve, self.ov.opset)
        tmp = tempfile.mkdtemp(prefix="edetgraph-ov-")
        try:
            onnx.save(proto, os.path.join(tmp, "model.onnx"))
            ov_model = ov.convert_model(os.path.join(tmp, "model.onnx"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if self.ov.quant != "int8":
            return ov_model
        next(representative_images(self.ov.representative, 1), None)   # a bad source fails now
        batches = list(calibration_batches(self.ov.representative, self.ov.calibration_images,
                                           spec, opts.input, opts.batch or 1, say))
        try:
            return nncf.quantize(ov_model, nncf.Dataset(batches), subset_size=len(batches) *
                                 (opts.batch or 1))
        except Exception as e:  # NNCF raises many types for a model it cannot handle
            raise ExportFailed(f"NNCF quantisation failed: {str(e).splitlines()[0][:300]}") \
                from None

    def write(self, converted, path: str) -> None:
        import openvino as ov  # deferred: an optional runtime
        ov.save_model(converted, path, compress_to_fp16=False)

    def companions(self, path: str) -> list:
        return [path[:-4] + ".bin"]

    def options(self, opts: ExportOptions, converted) -> dict:
        return {"quant": self.ov.quant, "opset": self.ov.opset, "postprocess": opts.postprocess,
                "batch": opts.batch, "input": opts.input,
                "representative_data": self.ov.representative,
                "calibration_images": (self.ov.calibration_images if self.ov.quant == "int8"
                                       else None),
                "max_detections": opts.max_detections, "score_threshold": opts.score_threshold,
                "iou_threshold": opts.iou_threshold}

    def facts(self, converted, path: str, runner) -> dict:
        return {"ops": dict(Counter(op.get_type_name() for op in converted.get_ordered_ops()
                                    if op.get_type_name() not in ("Constant",)))}

    def coverage(self, path: str, opts: ExportOptions) -> dict:
        import openvino as ov  # deferred: an optional runtime
        compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return {"openvino": coverage.openvino(compiled, self.ov.quant)}
