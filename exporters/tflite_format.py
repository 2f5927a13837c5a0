"""TFLite as an export format: the converter at fp32, fp16, dynamic-range or full-integer
int8 (calibrated on representative images), optionally with TFLite's own
``TFLite_Detection_PostProcess`` op in the graph (``--postprocess fast``), optionally with
the class/box heads kept float32 in an int8 file (``exporters.float_heads``).

A file with the detection op is also compared at the op's inputs (box encodings and class
scores of every anchor, read from the interpreter), so a file with in-graph NMS still gets
a raw-level check besides its detections.
"""
from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import tensorflow as tf

from edetgraph.cli import quiet_native
from edetgraph.graph import outputs
from edetgraph.nn import targets
from edetgraph.task.anchors import spec_anchors
from edetgraph.task.postprocess import make_tflite_detection_postprocess
from edetgraph.task.serving import detection_op_inputs, make_serving_fn
from edetgraph.verify import coverage
from edetgraph.verify.file_metadata import read_metadata
from edetgraph.verify.gate import Probe
from edetgraph.verify.parity import AP_DROP
from edetgraph.verify.runners import tflite_interpreter
from edetgraph.verify.ties import NmsRule
from exporters.calibration import calibration_batches, representative_images
from exporters.cli import log
from exporters.float_heads import (convert_keeping_chosen_float, convert_w8a16,
                                   convert_with_float_heads, detection_tail_nodes, float_graph,
                                   head_nodes)
from exporters.model_facts import description, edetgraph_version, model_facts
from exporters.options import ExportFailed, ExportOptions, TFLiteOptions
from exporters.pipeline import Format
from exporters.tflite_metadata import populate
from exporters.triage import Choice, NotApplicable, TFLiteTriage

QUANTS = ("fp32", "fp16", "dynamic", "int8")


class TFLiteFormat(Format):
    name, prog, runner, target = "tflite", "to_tflite", "tflite", "tflite"
    versions = ("tensorflow-cpu", "tensorflow", "ai-edge-litert")

    def __init__(self, options: TFLiteOptions = TFLiteOptions(), choice: Choice = Choice()):
        self.tfl, self.choice = options, choice

    def kind(self) -> str:
        return self.tfl.quant

    def lowering(self, opts: ExportOptions):
        if self.target != "tflite":          # other forms chosen by the caller
            return self.target
        # int8 maps are a quarter of the float ones: no chain is split for cache, and the
        # int8 graph (with the layer names its triage reports) stays as it was
        return targets.TFLiteTarget(element_bytes=1 if self.tfl.quant == "int8" else 4)

    def head(self, spec, opts: ExportOptions):
        if opts.postprocess != "fast":
            return None
        detect = make_tflite_detection_postprocess(
            spec_anchors(spec), spec.num_classes, opts.max_detections, opts.score_threshold,
            opts.iou_threshold, image_size=spec.image_size, ssd_layout=True)
        return lambda raw: detect(*outputs.split(raw, spec.levels))

    def nms_rule(self, spec, opts: ExportOptions) -> NmsRule | None:
        if opts.postprocess != "fast":
            return None
        return NmsRule("fast", opts.iou_threshold, opts.score_threshold, opts.max_detections,
                       tuple(spec.image_size))

    def box_scale(self, spec, opts: ExportOptions):
        # Fractions of the input: the only boxes MediaPipe's ObjectDetector accepts.
        return None if opts.postprocess != "fast" else np.asarray(spec.image_size * 2, np.float32)

    def describe(self, opts: ExportOptions) -> str:
        t = self.tfl
        text = (f"converting to TFLite ({t.quant}, batch {opts.batch}, postprocess "
                f"{opts.postprocess}, input {opts.input}, io {t.io})")
        if t.quant == "int8":
            text += (f", calibrating on up to {t.calibration_images} images of "
                     f"{t.representative}")
        return text

    def convert(self, serve, model, spec, opts: ExportOptions, say):
        """``(flatbuffer bytes with its metadata, number of head ops kept float or None,
        triage report or None)``."""
        flatbuffer, head_ops, triage = self._convert(serve, model, spec, opts, say)
        if opts.postprocess == "fast" and opts.input == "float" and (
                len(set(spec.preprocess.mean_rgb)) > 1 or len(set(spec.preprocess.stddev_rgb)) > 1):
            log(self.prog, "WARNING: MediaPipe's ObjectDetector takes one mean/std for all "
                "channels; this spec normalises per channel, so MediaPipe will refuse this "
                "float-input file (export with --input uint8: the file then normalises)")
        facts = model_facts(spec, opts, "tflite", dict(opts.card.labels),
                            opts.card.labels_source,
                            "ratio" if opts.postprocess == "fast" else None)
        fields = {"name": opts.card.name or spec.name,
                  "description": description(spec, opts, "TFLite"),
                  "version": opts.card.version or edetgraph_version(),
                  "author": opts.card.author, "license": opts.card.license}
        try:
            flatbuffer = populate(flatbuffer, facts, fields)
        except Exception as e:   # the schema's own errors: a bug, said in one line
            raise ExportFailed(f"writing the TFLite metadata failed: {str(e)[:300]}") from None
        return flatbuffer, head_ops, triage

    def _convert(self, serve, model, spec, opts: ExportOptions, say):
        t = self.tfl

        def calibration():
            for x in calibration_batches(t.representative, t.calibration_images, spec,
                                         opts.input, opts.batch, say):
                yield [x]

        if t.quant == "int8":  # a bad TFRecord fails here, not deep inside the converter
            next(representative_images(t.representative, 1), None)
        if t.float_heads:
            say("the class/box heads stay float32 (--float-heads); the rest is int8")
        def converter():
            return make_converter(serve, model, t.quant, t.io, opts.input, opts.postprocess,
                              calibration)

        try:
            triage = t.quant == "int8" and opts.eval is not None and t.triage
            # The in-graph NMS's outputs and what follows it stay float in an int8 file. The
            # op names come from the conversion's own calibrated model (no float conversion
            # for them).
            tail_of = detection_tail_nodes if opts.postprocess == "fast" else None
            if t.quant == "int8" and t.float_heads:
                return (*convert_with_float_heads(converter(), tail_of), None)
            if t.quant == "int8" and tail_of is not None and not triage:
                flatbuffer, _ = convert_keeping_chosen_float(converter(), tail_of)
                if flatbuffer is None:   # nothing follows the NMS op: a plain conversion
                    with quiet_native():
                        flatbuffer = converter().convert()
                return flatbuffer, None, None
            if triage:
                # A float conversion names the NMS's tail at once, and the heads' ops only
                # when they are asked for (the full int8 file lost too much).
                graph = float_graph(serve, model) if tail_of is not None else None
                bound = (AP_DROP["int8"] if opts.eval.max_ap_drop is None
                         else opts.eval.max_ap_drop)
                flatbuffer, report = TFLiteTriage(
                    converter, calibration, spec, serve, opts.eval, opts.input, opts.batch,
                    bound, say, self.box_scale(spec, opts), tail_of(graph) if graph else [],
                    lambda: head_nodes(graph or float_graph(serve, model)), choice=self.choice,
                    reference=lambda: self._fp32_file(model, spec, opts),
                    w8a16=lambda: _w8a16(serve, model, t.io, opts, calibration),
                    threads=opts.gate.threads).run()
                return flatbuffer, None, report
            with quiet_native():    # the int8 quantizer's settings line
                return converter().convert(), None, None
        except ExportFailed:
            raise
        except Exception as e:  # ConverterError and friends
            raise ExportFailed(f"TFLite converter failed ({t.quant}): "
                               f"{str(e).strip().splitlines()[0][:300]}") from None

    def _fp32_file(self, model, spec, opts: ExportOptions) -> bytes:
        """What ``--quant fp32`` would write (its own lowering), without metadata: the file
        the triage times every candidate beside."""
        serve = make_serving_fn(model, spec, opts.batch, opts.input, self.head(spec, opts),
                                target=targets.TFLiteTarget(element_bytes=4))
        return _quiet_convert(make_converter(serve, model, "fp32", "float", opts.input,
                                         opts.postprocess, None))

    def write(self, converted, path: str) -> None:
        with open(path, "wb") as f:
            f.write(converted[0])

    def probe(self, model, spec, serve, path: str, opts: ExportOptions):
        if opts.postprocess != "fast":
            return None
        return Probe(lambda raw: detection_op_inputs(raw, spec),
                     DetectionInputProbe(path, opts.gate.threads))

    def options(self, opts: ExportOptions, converted) -> dict:
        t = self.tfl
        return {"quant": t.quant, "io": t.io, "input": opts.input,
                "postprocess": opts.postprocess, "batch": opts.batch,
                "representative_data": t.representative,
                "calibration_images": t.calibration_images if t.quant == "int8" else None,
                "float_heads": t.float_heads, "float_head_ops": converted[1],
                "triage": converted[2],
                "max_detections": opts.max_detections, "score_threshold": opts.score_threshold,
                "iou_threshold": opts.iou_threshold}

    def facts(self, converted, path: str, runner) -> dict:
        meta = read_metadata(path)["fields"]
        return {"runtime": runner.info()["runtime"], "ops": op_histogram(path),
                "metadata": {k: meta.get(k) for k in ("name", "version", "author", "license",
                                                       "min_parser_version", "outputs")}}

    def coverage(self, path: str, opts: ExportOptions) -> dict:
        return {"xnnpack": coverage.tflite(path), "gpu_delegate": coverage.tflite_gpu(path)}


def make_converter(serve, model, quant, io, input_kind, postprocess, representative):
    """The TFLite converter of ``serve`` set up for ``quant`` (fp32 | fp16 | int8): the one
    place the exporter's converter settings live (``bench.latency_measure`` converts its
    designed graphs with it too). ``io``: int8 | uint8 | float for an int8 file's ends."""
    conv = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], model)
    if quant != "fp32":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if quant == "fp16":
        conv.target_spec.supported_types = [tf.float16]
    if quant == "int8":
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = {"int8": tf.int8, "uint8": tf.uint8}.get(io)
        if io_type is not None and input_kind == "float":
            conv.inference_input_type = io_type
        if io_type is not None and postprocess == "none":
            conv.inference_output_type = io_type
    return conv


def _w8a16(serve, model, io, opts: ExportOptions, calibration) -> bytes:
    """The triage's w8a16 candidate, where the converter can make one for this request."""
    if io != "float":
        raise NotApplicable(f"--io {io}: a 16x8 file's integer inputs and outputs are int16")
    if opts.postprocess == "fast":    # measured with TF 2.21
        raise NotApplicable("--postprocess fast: the 16x8 quantizer cannot quantise what "
                            "follows the NMS op ('Max and min for dynamic tensors should be "
                            "recorded during calibration') and has no way to keep it float")
    return convert_w8a16(make_converter(serve, model, "fp32", io, opts.input, opts.postprocess,
                                    None), calibration)


def _quiet_convert(converter) -> bytes:
    with warnings.catch_warnings(), quiet_native():   # the quantizer's settings line
        warnings.simplefilter("ignore")
        return converter.convert()


def op_histogram(path) -> dict:
    """Op counts of the file itself (default delegates off, so no DELEGATE pseudo-ops)."""
    interp = tflite_interpreter(path, no_delegates=True)
    return dict(Counter(op["op_name"] for op in interp._get_ops_details()))


class DetectionInputProbe:
    """Reads the two float inputs of TFLite_Detection_PostProcess (box encodings and class
    scores, all anchors), so a file with in-graph NMS still gets a raw-level comparison."""

    def __init__(self, path, threads=None):
        with warnings.catch_warnings():  # "for debugging purposes only": that is the use
            warnings.simplefilter("ignore")
            self.interp = tflite_interpreter(path, num_threads=threads,
                                             experimental_preserve_all_tensors=True)
        self.interp.allocate_tensors()
        ops = [op for op in self.interp._get_ops_details()
               if op["op_name"] == "TFLite_Detection_PostProcess"]
        if len(ops) != 1:
            raise ExportFailed("the converter did not emit TFLite_Detection_PostProcess "
                               f"(found {len(ops)}); the in-graph NMS would be something else")
        self.boxes, self.scores = int(ops[0]["inputs"][0]), int(ops[0]["inputs"][1])
        self.input = self.interp.get_input_details()[0]
        self.details = {d["index"]: d for d in self.interp.get_tensor_details()}

    def __call__(self, x) -> dict:
        d = self.input
        scale, zero = d["quantization"]
        if scale and np.dtype(d["dtype"]).kind in "iu" and x.dtype.kind == "f":
            lim = np.iinfo(d["dtype"])
            x = np.clip(np.round(x / scale) + zero, lim.min, lim.max)
        self.interp.set_tensor(d["index"], np.asarray(x, d["dtype"]))
        self.interp.invoke()
        return {"box_encodings": self._read(self.boxes), "class_scores": self._read(self.scores)}

    def _read(self, index):
        value = self.interp.get_tensor(index)
        scale, zero = self.details[index]["quantization"]
        return (value.astype(np.float32) - zero) * scale if value.dtype.kind in "iu" else value

