"""Half-precision and int8 ONNX files, made from the float32 file tf2onnx converts.

- **fp16**: ONNX Runtime's float16 pass over the float32 model, inputs and outputs kept
  float32 (the file casts at its edges); ops that have no float16 kernel in ONNX Runtime
  (NonMaxSuppression, TopK, Resize ...: its default block list) stay float32. Half the file,
  for GPU providers; the CPU provider runs many float16 ops by casting.
- **int8**: static quantisation in the QDQ form (QuantizeLinear / DequantizeLinear pairs
  around each quantised op), the common input of ONNX Runtime's int8 kernels, TensorRT, QNN
  and the NCNN/MNN quantisers: signed int8 activations with one scale per tensor (min/max
  over the calibration images), int8 weights with one scale per output channel. With
  ``--postprocess hard-nms`` the decoding and NMS after the heads stay float (one int8 scale
  over pixel boxes rounds them by pixels).

The int8 triage (:class:`OnnxTriage`) is the TFLite one (``exporters.triage``) over ONNX
nodes: the heads as one group first, then the tensors whose own int8 rounding loses the
most (median channel SQNR of the tensor against its quantised self, on the calibration
images, with the scale the calibration chose), fewest first, each candidate a real
quantisation measured on the evaluation data.
"""
from __future__ import annotations

import logging
import os
import tempfile

import numpy as np
import onnx

from edetgraph.graph.outputs import box_name, cls_name
from exporters.float_heads import HEAD_SCOPES
from exporters.options import ExportFailed
from exporters.triage import STAT_IMAGES, Triage

PERCENTILE_SAMPLE = 100_000   # values per tensor kept for the 99.9th percentile
RENAMED = "_QuantizeLinear_Input"   # ONNX Runtime's name for a quantised graph output


def topological(graph) -> None:
    """Sort ``graph``'s nodes so every input is made before it is read (the float16 pass
    appends its casts at the end, which onnx.checker refuses)."""
    have = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in have for i in node.input):
                ordered.append(node)
                have.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportFailed(f"the ONNX graph has a cycle or a missing input at node "
                               f"'{rest[0].name}' ({rest[0].op_type})")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def to_fp16(model):
    """The float16 file: weights and activations in half precision, float32 inputs/outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16  # deferred: fp16 only
    half = convert_float_to_float16(model, keep_io_types=True)
    topological(half.graph)
    return half


def head_nodes(model) -> list:
    """Names of the nodes of the class/box heads (edetgraph.nn.heads' name scopes)."""
    return [n.name for n in model.graph.node if n.name.startswith(HEAD_SCOPES)]


def tail_nodes(model) -> list:
    """Names of the nodes fed, directly or not, by the heads that are not in the heads: the
    in-graph decoding and NMS, which stay float in an int8 file."""
    heads = set(head_nodes(model))
    tainted, names = set(), []
    for node in model.graph.node:
        if node.name in heads:
            tainted.update(node.output)
        elif tainted.intersection(node.input):
            tainted.update(node.output)
            names.append(node.name)
    return names


class _Batches:
    """ONNX Runtime's calibration reader over ``[B, H, W, 3]`` arrays."""

    def __init__(self, name: str, batches):
        self.name, self.batches = name, iter(batches)

    def get_next(self):
        x = next(self.batches, None)
        return None if x is None else {self.name: np.asarray(x)}

    def rewind(self):   # not needed by min/max calibration
        raise NotImplementedError


def to_int8(model, batches, exclude=()) -> onnx.ModelProto:
    """Static QDQ int8 of ``model`` calibrated on ``batches`` (an iterable of input
    arrays); the nodes named in ``exclude`` run in float."""
    # deferred: only int8 exports load ONNX Runtime's quantiser
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,  # noqa: I001
                                          quantize_static)
    from onnxruntime.quantization.calibrate import CalibrationDataReader  # deferred: as above

    class Reader(_Batches, CalibrationDataReader):
        pass

    name = model.graph.input[0].name
    quiet = logging.getLogger().level
    with tempfile.TemporaryDirectory(prefix="edetgraph-onnx-int8-") as tmp:
        src, dst = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(model, src)
        logging.getLogger().setLevel(max(quiet, logging.ERROR))   # its per-op info lines
        try:
            quantize_static(src, dst, Reader(name, batches), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            per_channel=True, calibrate_method=CalibrationMethod.MinMax,
                            nodes_to_exclude=list(exclude))
        except Exception as e:   # the quantizer raises ValueError, RuntimeError, ...
            raise ExportFailed(f"ONNX Runtime int8 quantisation failed: "
                               f"{str(e).strip().splitlines()[0][:300]}") from None
        finally:
            logging.getLogger().setLevel(quiet)
        return onnx.load(dst)


def quantised_tensors(qdq) -> dict:
    """``{float tensor name: (scale, zero point)}`` of every activation the QDQ model
    quantises (its QuantizeLinear inputs that are not weights)."""
    init = {t.name: onnx.numpy_helper.to_array(t) for t in qdq.graph.initializer}
    out = {}
    for node in qdq.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in init:
            scale, zero = init.get(node.input[1]), init.get(node.input[2])
            if scale is not None and scale.size == 1:
                out[node.input[0]] = (float(scale), int(zero) if zero is not None else 0)
    return out


class _Stream:
    """Per-channel sums of one tensor over batches: what METRICS need, in bounded memory."""

    def __init__(self, scale: float, zero: int):
        self.scale, self.zero = scale, zero
        self.n = 0
        self.s = self.s2 = self.e2 = self.peak = None
        self.lo, self.hi, self.sample = np.inf, -np.inf, []

    def add(self, f: np.ndarray) -> None:
        f = np.asarray(f, np.float64)
        f = f.reshape(-1, f.shape[-1]) if f.ndim > 1 else f.reshape(-1, 1)
        q = np.clip(np.round(f / self.scale) + self.zero, -128, 127)
        err = ((q - self.zero) * self.scale - f) ** 2
        sums = (f.sum(0), (f ** 2).sum(0), err.sum(0), np.abs(f).max(0))
        if self.s is None:
            self.s, self.s2, self.e2, self.peak = sums
        else:
            self.s, self.s2, self.e2 = self.s + sums[0], self.s2 + sums[1], self.e2 + sums[2]
            self.peak = np.maximum(self.peak, sums[3])
        self.n += f.shape[0]
        self.lo, self.hi = min(self.lo, float(f.min())), max(self.hi, float(f.max()))
        flat = np.abs(f).ravel()
        step = max(1, flat.size * STAT_IMAGES // PERCENTILE_SAMPLE)
        self.sample.append(flat[::step])

    def stats(self) -> dict:
        mean = self.s / self.n
        var, mse = self.s2 / self.n - mean ** 2, self.e2 / self.n
        ok = (var > 0) & (mse > 0)
        sqnr = float(np.median(10 * np.log10(var[ok] / mse[ok]))) if ok.any() else float("inf")
        typical = float(np.median(self.peak))
        return {"sqnr_db": sqnr,
                "channel_spread": float(self.peak.max() / typical) if typical > 0 else float("inf"),
                "float_min": self.lo, "float_max": self.hi,
                "p999_abs": float(np.percentile(np.concatenate(self.sample), 99.9)),
                "scale": self.scale}


def tensor_statistics(model, qdq, batches, limit: int = STAT_IMAGES) -> dict:
    """``{tensor: {sqnr_db, channel_spread, float_min, float_max, p999_abs, scale}}``: each
    quantised activation of the float ``model``, on its first ``limit`` batches, against
    itself rounded with the scale and zero point ``qdq``'s calibration chose (so each
    tensor's own error, not what earlier layers passed on)."""
    import onnxruntime as ort  # deferred: exports that quantise nothing never start it here
    made = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    wanted = {}
    for t, q in quantised_tensors(qdq).items():   # a quantised graph output is renamed
        base = t[:-len(RENAMED)] if t.endswith(RENAMED) else t
        if base in made:
            wanted[base] = q
    outputs = {o.name for o in model.graph.output}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in wanted if t not in outputs)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    streams = {t: _Stream(*wanted[t]) for t in wanted}
    feed = session.get_inputs()[0].name
    for i, x in enumerate(batches):
        if i >= limit:
            break
        for name, value in zip(names, session.run(names, {feed: np.asarray(x)})):
            if name in streams and np.issubdtype(value.dtype, np.floating):
                streams[name].add(value)
    return {t: s.stats() for t, s in streams.items() if s.n}


def float_set(model, tensors) -> list:
    """The nodes that keep ``tensors`` float32: each one's producer and its readers."""
    names = set(tensors)
    return [n.name for n in model.graph.node
            if names.intersection(n.output) or names.intersection(n.input)]


class OnnxTriage(Triage):
    """:class:`exporters.triage.Triage` over an ONNX model: candidates are QDQ
    quantisations with some tensors (their producers and readers) kept float."""

    runner_kind, suffix = "onnxruntime", ".onnx"

    def __init__(self, model, calibration, spec, serve, eval_opts, input_kind, batch,
                 bound: float, say, box_scale=None, always_float=()):
        super().__init__(None, calibration, spec, serve, eval_opts, input_kind, batch, bound,
                         say, box_scale, always_float, heads=lambda: head_nodes(model))
        self.model = model

    def statistics(self) -> dict:
        full = to_int8(self.model, self.calibration(), self.always_float)
        return tensor_statistics(self.model, full, self.calibration())

    def _convert(self, float_layers: list) -> bytes:
        heads = set(head_nodes(self.model))
        nodes = [n for n in self.base if n in heads]      # the heads group: node names
        tensors = [t for t in list(self.base) + list(float_layers) if t not in heads]
        nodes += float_set(self.model, tensors) + list(self.always_float)
        return to_int8(self.model, self.calibration(),
                       list(dict.fromkeys(nodes))).SerializeToString()


class HeadProbe:
    """Reads the raw head maps (``cls_l3`` .. ``box_l7``, NHWC) inside an ONNX file whose
    outputs are detections, so a quantised file with in-graph NMS still gets a raw-level
    check: the tensors where the heads end and the decoding begins, named by their head
    (edetgraph.nn.heads' scopes) and level (largest map first)."""

    def __init__(self, path: str, spec, threads=None):
        import onnxruntime as ort  # deferred: exports that quantise nothing never start it here
        model = onnx.load(path)
        heads = set(head_nodes(model))
        readers = {i for n in model.graph.node if n.name not in heads for i in n.input}
        ends = {"cls": [], "box": []}
        for node in model.graph.node:
            if node.name in heads:
                kind = "cls" if node.name.startswith(HEAD_SCOPES[0]) else "box"
                ends[kind].extend(o for o in node.output if o in readers)
        levels = list(spec.levels)
        if any(len(v) != len(levels) for v in ends.values()):
            raise ExportFailed(f"the ONNX file's heads end in {len(ends['cls'])} class and "
                               f"{len(ends['box'])} box tensors, not {len(levels)} each: "
                               "cannot check its raw outputs")
        outputs = {o.name for o in model.graph.output}
        model.graph.output.extend(onnx.ValueInfoProto(name=t) for v in ends.values()
                                  for t in v if t not in outputs)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(model.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
        self.feed = self.session.get_inputs()[0].name
        self.ends, self.levels = ends, levels
        self.channels = {"cls": spec.num_anchors * spec.num_classes, "box": spec.num_anchors * 4}

    def __call__(self, x) -> dict:
        names = [t for v in self.ends.values() for t in v]
        values = dict(zip(names, self.session.run(names, {self.feed: x})))
        out = {}
        for kind, tensors in self.ends.items():
            # tf2onnx ends some maps in NCHW (a 1x1 level needs no transpose to be read)
            maps = sorted((m if m.shape[-1] == self.channels[kind] else m.transpose(0, 2, 3, 1)
                           for m in (values[t] for t in tensors)), key=lambda a: -a.size)
            out.update({(cls_name if kind == "cls" else box_name)(lvl): m
                        for lvl, m in zip(self.levels, maps)})
        return out
