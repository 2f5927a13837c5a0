"""Which runtime really runs a file: delegate and execution-provider coverage.

A file can pass every numerical check and still run slowly because part of it falls off
the fast path: an op XNNPACK does not delegate runs on TFLite's reference kernels and
splits the graph into several partitions; an ONNX node an execution provider lacks falls
back to another; an OpenVINO layer asked to run in bf16 may run in f32. These reports say
so, by op and count, for the export summary and the benchmark table.

- :func:`tflite`: XNNPACK partitions and the nodes left to the reference kernels (read
  from the interpreter: each DELEGATE node replaces the nodes between its inputs and
  outputs; the others stay on reference kernels);
- :func:`tflite_gpu`: GPU-delegate compatibility, from TFLite's own model analyzer;
- :func:`onnxruntime`: nodes per execution provider, from one profiled run;
- :func:`openvino`: layers per runtime precision, from the compiled model.

No TensorFlow at import: only the GPU analysis uses it.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
from collections import Counter

import numpy as np

from edetgraph.verify.runners import tflite_interpreter


def tflite(path) -> dict:
    """XNNPACK coverage of a .tflite file: ``partitions`` (DELEGATE nodes), ``nodes`` (of
    the file), ``not_delegated`` ``{op: count}`` and ``fully_delegated``."""
    interp = tflite_interpreter(path, num_threads=1)
    interp.allocate_tensors()
    ops = interp._get_ops_details()
    original = [o for o in ops if o["op_name"] != "DELEGATE"]
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    producer = {int(t): o["index"] for o in original for t in o["outputs"]}
    covered = set()
    for d in delegates:                    # walk back from its outputs to its inputs
        stop = {int(t) for t in d["inputs"]}
        stack, seen = [int(t) for t in d["outputs"]], set()
        while stack:
            t = stack.pop()
            if t in seen or t in stop or t not in producer:
                continue
            seen.add(t)
            covered.add(producer[t])
            stack.extend(int(x) for x in ops[producer[t]]["inputs"] if x >= 0)
    left = Counter(o["op_name"] for o in original if o["index"] not in covered)
    return {"delegate": "XNNPACK", "partitions": len(delegates), "nodes": len(original),
            "delegated": len(original) - sum(left.values()),
            "not_delegated": dict(left.most_common()),
            "fully_delegated": len(delegates) == 1 and not left}


def tflite_gpu(path) -> dict:
    """GPU-delegate compatibility of a .tflite file as TFLite's analyzer judges it:
    ``compatible`` and the ``warnings`` it names (an op per line)."""
    import tensorflow as tf  # deferred: only this analysis needs TensorFlow's analyzer
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        tf.lite.experimental.Analyzer.analyze(model_path=os.fspath(path),
                                              gpu_compatibility=True)
    lines = text.getvalue().splitlines()
    warnings = sorted({re.sub(r"\s+", " ", ln.split(":", 1)[1]).strip()
                       for ln in lines if "GPU COMPATIBILITY WARNING" in ln})
    compatible = any("looks compatible with GPU delegate" in ln for ln in lines)
    return {"compatible": compatible and not warnings, "warnings": warnings}


def onnxruntime(path, providers=None, threads: int | None = 1) -> dict:
    """Nodes per execution provider in ONNX Runtime, read from one profiled run on zeros:
    ``providers`` (requested), ``nodes`` ``{provider: count}``, ``fallback`` (nodes not on
    the first requested provider, by op)."""
    import onnxruntime as ort  # deferred: ONNX Runtime is an optional runtime here
    providers = list(providers or ["CPUExecutionProvider"])
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="edetgraph-ort-"), "p")
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(os.fspath(path), opts, providers=providers)
    feeds = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape],
                              _onnx_dtype(i.type)) for i in session.get_inputs()}
    session.run(None, feeds)
    trace = session.end_profiling()
    try:
        with open(trace) as f:
            events = json.load(f)
    finally:
        os.remove(trace)
        os.rmdir(os.path.dirname(trace))
    placed = {}
    for e in events:
        args = e.get("args") or {}
        if e.get("cat") == "Node" and "provider" in args:
            placed[e["name"].rsplit("_kernel_time", 1)[0]] = (args["provider"],
                                                              args.get("op_name", "?"))
    by_provider = Counter(p for p, _ in placed.values())
    fallback = Counter(op for p, op in placed.values() if p != providers[0])
    return {"providers": providers, "nodes": dict(by_provider),
            "fallback": dict(fallback.most_common())}


def _onnx_dtype(onnx_type: str):
    return {"tensor(float)": np.float32, "tensor(uint8)": np.uint8,
            "tensor(int64)": np.int64, "tensor(int32)": np.int32}.get(onnx_type, np.float32)


def openvino(compiled, requested: str) -> dict:
    """Layers of an OpenVINO compiled model by runtime precision: ``requested`` (f32, bf16
    or the int8 file's), ``layers`` ``{precision: count}`` over the computing layers, and
    ``other_precision`` ``{layer type: count}`` of those not in the requested precision
    (int8 files: those left in float)."""
    skip = {"Parameter", "Result", "Const", "Constant", "Reorder", "Input", "Output",
            "Reshape", "Squeeze", "Unsqueeze"}     # no arithmetic: precision is moot
    want = {"f32": {"f32"}, "fp32": {"f32"}, "bf16": {"bf16"}, "int8": {"i8", "u8"}}.get(
        requested.lower(), {requested.lower()})
    counts, other = Counter(), Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        precision = (info["runtimePrecision"].astype(str) if "runtimePrecision" in info
                     else "?").lower()
        if kind in skip or precision in ("i32", "i64"):     # shapes and indices, not data
            continue
        counts[precision] += 1
        if precision not in want:
            other[kind] += 1
    return {"requested": requested, "layers": dict(counts.most_common()),
            "other_precision": dict(other.most_common())}


def summary_line(report: dict) -> str | None:
    """One line when a file falls off its fast path (None when it does not)."""
    if report.get("delegate") == "XNNPACK" and not report["fully_delegated"]:
        ops = ", ".join(f"{op} {n}" for op, n in report["not_delegated"].items())
        return (f"XNNPACK runs it in {report['partitions']} partitions; "
                f"{sum(report['not_delegated'].values())} node(s) on TFLite's reference "
                f"kernels: {ops or 'none'}")
    if report.get("fallback"):
        ops = ", ".join(f"{op} {n}" for op, n in report["fallback"].items())
        return f"{sum(report['fallback'].values())} node(s) fell back from " \
               f"{report['providers'][0]}: {ops}"
    if report.get("other_precision"):
        ops = ", ".join(f"{op} {n}" for op, n in report["other_precision"].items())
        return f"{sum(report['other_precision'].values())} layer(s) not in " \
               f"{report['requested']}: {ops}"
    return None

