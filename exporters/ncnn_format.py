"""NCNN as an export format: the ONNX conversion (``exporters.onnx_format``, tf2onnx) handed to
pnnx (the converter ncnn's authors maintain; its native binary, not its Python package,
which imports PyTorch), run by ncnn's own Python runtime in the parity gate.

An NCNN model is two files, ``NAME.param`` (the layers, text) and ``NAME.bin`` (the
weights); the text format has no room for free metadata, so the facts the other formats
carry inside (labels, input normalisation, anchors, outputs) are written beside them as
``NAME.json``. ``--out model.ncnn.param`` writes model.ncnn.param, model.ncnn.bin,
model.ncnn.json, and the export summary model.ncnn.param.json.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import tempfile
from collections import Counter

import onnx

from edetgraph.verify.ncnn_runner import companions
from exporters.model_facts import model_facts
from exporters.onnx_format import convert as onnx_convert
from exporters.options import ExportFailed, ExportOptions, OnnxOptions
from exporters.pipeline import Format

CONVERT_TIMEOUT_S = 1800
PARAM_MAGIC = "7767517"


def pnnx_binary() -> str | None:
    """The pnnx executable shipped inside the ``pnnx`` wheel (None: not installed). Found
    without importing the package: its ``__init__`` imports torch, which the converter
    itself does not need for an ONNX file."""
    spec = importlib.util.find_spec("pnnx")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "pnnx")
    return path if os.access(path, os.X_OK) else None


class NcnnFormat(Format):
    name, prog, runner, target = "ncnn", "to_ncnn", "ncnn", "onnx"
    versions = ("tensorflow-cpu", "tensorflow", "tf2onnx", "onnx", "pnnx", "ncnn")

    def __init__(self, options: OnnxOptions = OnnxOptions()):
        self.onnx = options

    def describe(self, opts: ExportOptions) -> str:
        return f"converting with tf2onnx (opset {self.onnx.opset}) then pnnx (float32 weights)"

    def convert(self, serve, model, spec, opts: ExportOptions, say):
        """``(param text, bin bytes, facts)``."""
        if opts.batch != 1:
            raise ExportFailed(f"batch {opts.batch}: an NCNN model has no batch dimension "
                               "(ncnn runs one image per call); export it with batch 1")
        facts = model_facts(spec, opts, "ncnn", dict(opts.card.labels), opts.card.labels_source,
                            None)
        param, weights = pnnx_convert(onnx_convert(serve, self.onnx.opset))
        return param, weights, facts

    def write(self, converted, path: str) -> None:
        param, weights, facts = converted
        bin_path, meta_path = companions(path)
        with open(path, "w") as f:
            f.write(param)
        with open(bin_path, "wb") as f:
            f.write(weights)
        with open(meta_path, "w", encoding="utf-8") as f:
            json.dump(facts, f, indent=2, allow_nan=False, ensure_ascii=False)
            f.write("\n")

    def companions(self, path: str) -> list:
        return companions(path)

    def options(self, opts: ExportOptions, converted) -> dict:
        return {"opset": self.onnx.opset, "batch": opts.batch, "input": opts.input,
                "postprocess": opts.postprocess, "precision": "fp32"}

    def facts(self, converted, path: str, runner) -> dict:
        with open(companions(path)[1], encoding="utf-8") as f:
            stored = json.load(f)
        if stored != converted[2]:
            raise ExportFailed("the NCNN metadata file does not hold what it was written with")
        return {"ops": layer_counts(converted[0]), "runtime": runner.info()["runtime"],
                "metadata": stored}


def pnnx_convert(model: onnx.ModelProto) -> tuple[str, bytes]:
    """``(param text, bin bytes)`` of an ONNX model with one static image input
    [1, H, W, C]: pnnx in a child process inside a private temporary folder (it writes half
    a dozen side files next to its input), float32 weights (pnnx's default stores float16),
    and the blobs named as the ONNX model names its input and outputs (pnnx numbers them
    in0.., out0.. in the graph's order)."""
    binary = pnnx_binary()
    if binary is None:
        raise ExportFailed("pnnx is not installed (pip install --no-deps pnnx)")
    (source,) = [i for i in model.graph.input
                 if i.name not in {t.name for t in model.graph.initializer}]
    shape = [d.dim_value for d in source.type.tensor_type.shape.dim]
    if len(shape) != 4 or shape[0] != 1 or not all(shape):
        raise ExportFailed(f"NCNN takes one image of static shape [1, H, W, C]; the model's "
                           f"input is {shape}")
    with tempfile.TemporaryDirectory(prefix="edetgraph-ncnn-") as tmp:
        src = os.path.join(tmp, "model.onnx")
        onnx.save(model, src)
        text, data = _run_pnnx(binary, src, shape, tmp)
    return name_blobs(text, source.name, shape, [o.name for o in model.graph.output]), data


def _run_pnnx(binary: str, src: str, shape: list, tmp: str) -> tuple[str, bytes]:
    """pnnx's NCNN files for ``src``, every file it writes kept inside ``tmp``."""
    out = {k: os.path.join(tmp, v) for k, v in (
        ("ncnnparam", "model.ncnn.param"), ("ncnnbin", "model.ncnn.bin"),
        ("ncnnpy", "model_ncnn.py"), ("pnnxparam", "model.pnnx.param"),
        ("pnnxbin", "model.pnnx.bin"), ("pnnxpy", "model_pnnx.py"),
        ("pnnxonnx", "model.pnnx.onnx"))}
    argv = [binary, src, f"inputshape=[{','.join(map(str, shape))}]f32", "fp16=0",
            "device=cpu", *(f"{k}={v}" for k, v in out.items())]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                              timeout=CONVERT_TIMEOUT_S, cwd=tmp)
    except subprocess.TimeoutExpired:
        raise ExportFailed(f"pnnx did not finish in {CONVERT_TIMEOUT_S} s") from None
    said = [ln.strip() for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    param, weights = out["ncnnparam"], out["ncnnbin"]
    # a model without weights has an empty .bin, never an empty .param
    if done.returncode != 0 or not os.path.isfile(weights) or not (
            os.path.isfile(param) and os.path.getsize(param)):
        last = next((ln for ln in reversed(said) if "rror" in ln or "fail" in ln),
                    said[-1] if said else "")
        raise ExportFailed(f"pnnx failed (exit {done.returncode}): {last[:300]}")
    with open(param) as f, open(weights, "rb") as g:
        return f.read(), g.read()


def name_blobs(param: str, input_name: str, input_shape: list, outputs: list) -> str:
    """The ``.param`` text with pnnx's ``in0`` / ``out<i>`` blobs renamed to the ONNX names
    and the input's shape written into its Input layer (``0=w 1=h 2=c``: NHWC without the
    batch is ncnn's c=H, h=W, w=C), so that the file itself says what goes in and out."""
    rename = {"in0": input_name, **{f"out{i}": n for i, n in enumerate(outputs)}}
    lines = param.splitlines()
    if len(lines) < 3 or lines[0].strip() != PARAM_MAGIC:
        raise ExportFailed("pnnx wrote no NCNN param text (magic line missing)")
    used = {b for line in lines[2:] for b in _blobs(line.split())}
    clash = sorted((used - set(rename)) & set(rename.values()))
    if clash or not set(rename) <= used:
        raise ExportFailed(f"pnnx's blobs cannot be named as the ONNX model's: "
                           f"{clash or sorted(set(rename) - used)}")
    out = lines[:2]
    for line in lines[2:]:
        f = line.split()
        nb, nt = int(f[2]), int(f[3])
        f[4:4 + nb + nt] = [rename.get(b, b) for b in f[4:4 + nb + nt]]
        if f[0] == "Input":
            c, h, w = input_shape[1:]
            f += [f"0={w}", f"1={h}", f"2={c}"]
        out.append(" ".join(f))
    return "\n".join(out) + "\n"


def _blobs(fields: list) -> list:
    nb, nt = int(fields[2]), int(fields[3])
    return fields[4:4 + nb + nt]


def layer_counts(param: str) -> dict:
    """Layers of a ``.param`` text by type."""
    return dict(Counter(line.split()[0] for line in param.splitlines()[2:] if line.strip()))
