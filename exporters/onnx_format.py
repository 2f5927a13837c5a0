"""ONNX as an export format: tf2onnx conversion of the serving function, optionally with
decoding and ONNX NonMaxSuppression in the graph (``--postprocess hard-nms``), in float32,
float16 or int8 QDQ (``exporters.onnx_quant``).

tf2onnx does not always raise when an op handler fails (it may leave the TF op in the graph,
which ONNX Runtime then refuses to load), so a conversion is accepted only when every node
is a standard ONNX op at the opset and ``onnx.checker`` passes the model.
"""
from __future__ import annotations

import json
import logging
from collections import Counter

import onnx
import tf2onnx

from edetgraph.graph import outputs
from edetgraph.task.anchors import spec_anchors
from edetgraph.task.postprocess import postprocess
from edetgraph.verify import coverage
from edetgraph.verify.ties import NmsRule
from edetgraph.verify.parity import AP_DROP
from exporters.calibration import calibration_batches, representative_images
from exporters.model_facts import description, model_facts, strict_json
from edetgraph.verify.gate import Probe
from exporters.onnx_quant import HeadProbe, OnnxTriage, tail_nodes, to_fp16, to_int8
from exporters.options import ExportFailed, ExportOptions, OnnxOptions
from exporters.pipeline import Format


class OnnxFormat(Format):
    name, prog, runner, target = "onnx", "to_onnx", "onnxruntime", "onnx"
    versions = ("tensorflow-cpu", "tensorflow", "tf2onnx", "onnx", "onnxruntime")

    def __init__(self, options: OnnxOptions = OnnxOptions()):
        self.onnx = options
        self.triage = None     # the int8 triage's report, once it ran

    def kind(self) -> str:
        return self.onnx.quant

    def head(self, spec, opts: ExportOptions):
        if opts.postprocess != "hard-nms":
            return None
        anchors = spec_anchors(spec)

        def hard_nms(raw):
            return postprocess(*outputs.split(raw, spec.levels), anchors, None, spec.image_size,
                               method="hard", score_thresh=opts.score_threshold,
                               iou_thresh=opts.iou_threshold, max_dets=opts.max_detections)
        return hard_nms

    def nms_rule(self, spec, opts: ExportOptions) -> NmsRule | None:
        if opts.postprocess != "hard-nms":
            return None
        return NmsRule("hard", opts.iou_threshold, opts.score_threshold, opts.max_detections,
                       tuple(spec.image_size))

    def probe(self, model, spec, serve, path: str, opts: ExportOptions):
        # A quantised file with in-graph NMS is also compared at its raw head maps: its
        # detections alone are only reported (its kind does not make them identical).
        if opts.postprocess != "hard-nms" or self.onnx.quant == "fp32":
            return None
        return Probe(dict, HeadProbe(path, spec, opts.gate.threads))

    def describe(self, opts: ExportOptions) -> str:
        text = (f"converting with tf2onnx (opset {self.onnx.opset}, {self.onnx.quant}, batch "
                f"{opts.batch or 'dynamic'}, postprocess {opts.postprocess}, input {opts.input})")
        if self.onnx.quant == "int8":
            text += (f", calibrating on up to {self.onnx.calibration_images} images of "
                     f"{self.onnx.representative}")
        return text

    def convert(self, serve, model, spec, opts: ExportOptions, say):
        converted = convert(serve, self.onnx.opset)
        if self.onnx.quant == "fp16":
            converted = checked(to_fp16(converted), "the float16 pass")
        elif self.onnx.quant == "int8":
            converted = checked(self._int8(converted, serve, spec, opts, say), "int8 quantisation")
        facts = model_facts(spec, opts, "onnx", dict(opts.card.labels), opts.card.labels_source,
                            "pixels" if opts.postprocess == "hard-nms" else None)
        write_metadata(converted, facts, spec, opts)
        return converted

    def _int8(self, model, serve, spec, opts: ExportOptions, say):
        """The QDQ int8 model: full, or triaged on ``opts.eval`` until the AP bound holds."""
        o = self.onnx
        next(representative_images(o.representative, 1), None)   # a bad source fails here

        def calibration():
            return calibration_batches(o.representative, o.calibration_images, spec,
                                       opts.input, opts.batch or 1, say)
        tail = tail_nodes(model)        # the in-graph decoding and NMS stay float
        if opts.eval is None or not o.triage:
            return to_int8(model, calibration(), tail)
        bound = AP_DROP["int8"] if opts.eval.max_ap_drop is None else opts.eval.max_ap_drop
        data, self.triage = OnnxTriage(model, calibration, spec, serve, opts.eval, opts.input,
                                       opts.batch or 1, bound, say, None, tail).run()
        return onnx.load_model_from_string(data)

    def finish(self, path: str, summary: dict) -> None:
        # The parity summary is known once the gate ran the file; props change no arithmetic.
        model = onnx.load(path)
        parity = summary["parity"]
        set_props(model, {"parity": json.dumps(strict_json(
            {"passed": parity["passed"], "tolerance": parity["tolerance"]["name"],
             "inputs": parity.get("inputs"), "heads": {
                 h: {k: v for k, v in f.items() if k in ("max_abs", "nrmse")}
                 for h, f in (parity.get("heads") or {}).items()},
             "detections": parity.get("detections")}), allow_nan=False)})
        onnx.save(model, path)

    def write(self, converted, path: str) -> None:
        onnx.save(converted, path)

    def options(self, opts: ExportOptions, converted) -> dict:
        o = self.onnx
        return {"opset": o.opset, "quant": o.quant, "postprocess": opts.postprocess,
                "batch": opts.batch or "dynamic", "input": opts.input,
                "representative_data": o.representative,
                "calibration_images": o.calibration_images if o.quant == "int8" else None,
                "triage": self.triage,
                "max_detections": opts.max_detections, "score_threshold": opts.score_threshold,
                "iou_threshold": opts.iou_threshold}

    def facts(self, converted, path: str, runner) -> dict:
        return {"ops": op_histogram(converted),
                "metadata": {"producer_name": converted.producer_name,
                             "model_version": converted.model_version,
                             "props": sorted(p.key for p in converted.metadata_props)}}

    def coverage(self, path: str, opts: ExportOptions) -> dict:
        return {"onnxruntime": coverage.onnxruntime(path, threads=opts.gate.threads)}


def set_props(model, props: dict) -> None:
    """Add or replace ``metadata_props`` entries (string values)."""
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)


def write_metadata(model, facts: dict, spec, opts: ExportOptions) -> None:
    """The facts as ``metadata_props`` (all under ``edetgraph``, the main ones also under
    their own keys), and ONNX's own fields: producer, version, doc string."""
    card = opts.card
    model.producer_name, model.producer_version = "edetgraph", facts["edetgraph_version"]
    model.domain = "edetgraph"
    version = card.version or facts["edetgraph_version"]
    model.model_version = int(version) if str(version).isdigit() else 1
    model.doc_string = description(spec, opts, "ONNX")
    props = {"edetgraph": json.dumps(facts, allow_nan=False), "spec": facts["spec"],
             "labels": json.dumps(facts["labels"], ensure_ascii=False),
             "input": json.dumps(facts["input"]), "outputs": json.dumps(facts["outputs"]),
             "anchors": json.dumps(facts["anchors"]),
             "edetgraph_version": facts["edetgraph_version"], "name": facts["model"],
             "version": str(version), "author": card.author, "license": card.license}
    set_props(model, props)


def _nodes(graph):
    """Every node of an ONNX graph, those of subgraphs (Loop and If bodies) included."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _nodes(g)


def foreign_ops(model, opset: int) -> list:
    """``[(node, op_type, domain)]`` not in the ONNX standard at ``opset``, subgraphs included.

    tf2onnx does not raise when an op handler fails: it keeps the TF op in the graph, which
    ONNX Runtime then refuses to load. This finds such leftovers before anything is written.
    """
    bad = []
    for node in _nodes(model.graph):
        try:
            if node.domain not in ("", "ai.onnx"):
                raise onnx.defs.SchemaError
            onnx.defs.get_schema(node.op_type, opset, "")
        except onnx.defs.SchemaError:
            bad.append((node.name, node.op_type, node.domain))
    return bad


def op_histogram(model) -> dict:
    """Node counts per op type, subgraphs (Loop bodies) included."""
    return dict(Counter(node.op_type for node in _nodes(model.graph)))


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage().strip().splitlines()[0][:300])


def checked(model, what: str):
    """``model`` if onnx.checker passes it, else ExportFailed naming ``what`` made it."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # ValidationError, InferenceError
        raise ExportFailed(f"onnx.checker rejects the model after {what}: "
                           f"{str(e).splitlines()[0]}") from None
    return model


def convert(serve, opset: int):
    """tf2onnx ``from_function`` on the static signature, then the leftover-op and checker tests."""
    logger, collect = logging.getLogger("tf2onnx"), _Collect()
    saved = (logger.handlers[:], logger.propagate, logger.level)
    logger.handlers, logger.propagate = [collect], False  # its tracebacks are ours to summarise
    logger.setLevel(logging.ERROR)
    try:
        model, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature,
                                                 opset=opset)
    except Exception as e:  # tf2onnx raises ValueError, KeyError, RuntimeError, ...
        raise ExportFailed(f"tf2onnx failed at opset {opset}: "
                           f"{str(e).splitlines()[0][:300]}") from None
    finally:
        logger.handlers, logger.propagate = saved[0], saved[1]
        logger.setLevel(saved[2])
    bad = foreign_ops(model, opset)
    if bad:
        hint = f" ({collect.messages[0]})" if collect.messages else ""
        raise ExportFailed(f"tf2onnx left {len(bad)} non-ONNX op(s) in the graph, e.g. node "
                           f"'{bad[0][0]}' ({bad[0][1]}){hint}")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # ValidationError, InferenceError
        raise ExportFailed("onnx.checker rejects the converted model: "
                           f"{str(e).splitlines()[0]}") from None
    return model
