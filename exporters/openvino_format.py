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

import numpy as np
import onnx

from edetgraph.task.coco import to_coco_results
from edetgraph.verify import coverage
from edetgraph.verify.accuracy import Postprocessor, coco_ap
from edetgraph.verify.images import eval_batches
from edetgraph.verify.parity import AP_DROP
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
        self.triage = None

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
        size = len(batches) * (opts.batch or 1)
        try:
            if opts.eval is None or not self.ov.triage:
                return nncf.quantize(ov_model, nncf.Dataset(batches), subset_size=size)
            bound = AP_DROP["int8"] if opts.eval.max_ap_drop is None else opts.eval.max_ap_drop
            say(f"triage: NNCF's accuracy control, AP loss within {bound:g} points on "
                f"{opts.eval.data}")
            metric = ApMetric(spec, opts, say)
            quantized = nncf.quantize_with_accuracy_control(
                ov_model, nncf.Dataset(batches), nncf.Dataset([None]), metric,
                max_drop=bound / 100.0, drop_type=nncf.DropType.ABSOLUTE, subset_size=size)
        except ExportFailed:
            raise
        except Exception as e:  # NNCF raises many types for a model it cannot handle
            raise ExportFailed(f"NNCF quantisation failed: {str(e).splitlines()[0][:300]}") \
                from None
        self.triage = {"bound_points": bound, "float_layers": float_layers(quantized),
                       "trials": metric.trials, "by": "NNCF quantize_with_accuracy_control"}
        return quantized

    def write(self, converted, path: str) -> None:
        import openvino as ov  # deferred: an optional runtime
        ov.save_model(converted, path, compress_to_fp16=False)

    def companions(self, path: str) -> list:
        return [path[:-4] + ".bin"]

    def finish(self, path: str, summary: dict) -> None:
        """Nothing to add afterwards: the IR is not an ONNX file (the ONNX parent writes the
        parity summary into ``metadata_props``); what the file is and how it passed the gate
        stay in the summary JSON beside it."""

    def options(self, opts: ExportOptions, converted) -> dict:
        return {"quant": self.ov.quant, "opset": self.ov.opset, "postprocess": opts.postprocess,
                "batch": opts.batch, "input": opts.input,
                "representative_data": self.ov.representative,
                "calibration_images": (self.ov.calibration_images if self.ov.quant == "int8"
                                       else None),
                "max_detections": opts.max_detections, "score_threshold": opts.score_threshold,
                "iou_threshold": opts.iou_threshold, "triage": self.triage}

    def facts(self, converted, path: str, runner) -> dict:
        return {"ops": dict(Counter(op.get_type_name() for op in converted.get_ordered_ops()
                                    if op.get_type_name() not in ("Constant",)))}

    def coverage(self, path: str, opts: ExportOptions) -> dict:
        import openvino as ov  # deferred: an optional runtime
        compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return {"openvino": coverage.openvino(compiled, self.ov.quant)}


class ApMetric:
    """NNCF's validation function: COCO AP of a compiled model on the evaluation images,
    through the same post-processing as the AP check (``edetgraph.verify.accuracy``)."""

    def __init__(self, spec, opts: ExportOptions, say):
        self.spec, self.opts, self.say, self.trials = spec, opts, say, []

    def __call__(self, compiled, _data):
        ev, post = self.opts.eval, None
        annotations = ev.annotations or os.path.join(ev.data, "instances.json")
        request, dets, ids = compiled.create_infer_request(), [], []
        for batch_ids, x, scales in eval_batches(ev.data, annotations, self.spec,
                                                 self.opts.input, self.opts.batch or 1,
                                                 ev.images):
            result = request.infer([x])
            out = {p.any_name: np.array(result[p]) for p in compiled.outputs}
            if "num_detections" in out:          # NMS in the graph: boxes in network pixels
                out["boxes"] = out["boxes"] * scales[:, None, None]
                det = out
            else:
                post = post or Postprocessor(self.spec, {k: v.shape for k, v in out.items()},
                                             ev.nms)
                det = post(out, scales)
            dets += to_coco_results(det, batch_ids)
            ids += batch_ids
        ap = coco_ap(annotations, dets, ids)["AP"]
        self.trials.append(round(ap, 4))
        self.say(f"  triage: AP {ap:.4f}")
        return ap, None


def float_layers(model) -> list:
    """Convolutions of an int8 model whose data input is not quantised (left in float)."""
    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul"):
            source = op.input_value(0).get_node()
            if source.get_type_name() != "FakeQuantize":
                out.append({"layer": op.get_friendly_name(), "type": op.get_type_name(),
                            "why": "reverted to float by NNCF's accuracy control (its ranking "
                                   "of the layers by their effect on the outputs)"})
    return out
