"""What every runner shares: the error type, tensor descriptions, input checks and
``info()``. The runners themselves are in ``edetgraph.verify.runners`` (ONNX Runtime, LiteRT,
TensorFlow) and ``edetgraph.verify.ov_runner`` (OpenVINO). No runtime imported here."""
import importlib
import importlib.metadata
import os
from dataclasses import dataclass

import numpy as np

SUFFIX = {"onnxruntime": (".onnx",), "tflite": (".tflite",), "openvino": (".onnx", ".xml"),
          "mnn": (".mnn",), "ncnn": (".param",)}
_DISTRIBUTION = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime",
                 "tensorflow": "tensorflow", "onnxruntime": "onnxruntime", "openvino": "openvino"}


class RunnerError(RuntimeError):
    """A one-line, user-facing failure naming the file and the backend."""


@dataclass(frozen=True)
class TensorInfo:
    """One input or output: ``shape`` uses None for a dynamic dimension;
    ``quantization`` is (scale, zero_point) for a quantized tensor, else None."""
    name: str
    shape: tuple
    dtype: str
    quantization: tuple = None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def version(module_name: str) -> str:
    top = module_name.split(".")[0]
    try:
        return importlib.metadata.version(_DISTRIBUTION.get(top, top))
    except importlib.metadata.PackageNotFoundError:
        return getattr(importlib.import_module(top), "__version__", "unknown")


def check_file(path, kind: str) -> str:
    path = os.fspath(path)
    if not path.endswith(SUFFIX[kind]):
        raise RunnerError(f"{path}: the {kind} backend expects a {' or '.join(SUFFIX[kind])} "
                          "file")
    if not os.path.isfile(path):
        raise RunnerError(f"{path}: no such file (backend {kind})")
    return path


def check_precision(path: str, runtime: str, precision: str, allowed) -> str:
    """``precision`` when it is one of ``allowed`` (the runtime's own names), else a one-line
    RunnerError naming the file and the runtime."""
    if precision not in allowed:
        raise RunnerError(f"{path}: {runtime} precision {precision!r} is not one of "
                          f"{', '.join(allowed)}")
    return precision


class Runner:
    """Shared bookkeeping: input checks, load time, info()."""
    kind = ""

    def __init__(self, path, threads):
        self.path, self.threads = path, threads
        self.input_details: list[TensorInfo] = []
        self.output_details: list[TensorInfo] = []
        self.load_seconds = 0.0
        self.runtime, self.runtime_version, self.accelerator = "", "", None

    def _feeds(self, x) -> dict:
        """Map ``x`` (array, or {name: array} for multi-input models) to checked inputs."""
        if not isinstance(x, dict):
            if len(self.input_details) != 1:
                names = [d.name for d in self.input_details]
                raise RunnerError(f"{self.path} ({self.kind}): model has inputs {names}; "
                                  "pass a dict {name: array}")
            x = {self.input_details[0].name: x}
        for d in self.input_details:
            if d.name not in x:
                raise RunnerError(f"{self.path} ({self.kind}): missing input '{d.name}'")
            got = np.shape(x[d.name])
            fits = len(got) == len(d.shape) and all(
                want is None or want == g for want, g in zip(d.shape, got))
            if not fits:
                raise RunnerError(f"{self.path} ({self.kind}): input '{d.name}' has shape "
                                  f"{tuple(got)}, model expects {d.shape}")
        return x

    def info(self) -> dict:
        """Runtime name and version, file size, provider/delegate, threads, load time."""
        size = os.path.getsize(self.path) if self.path and os.path.isfile(self.path) else None
        return {"kind": self.kind, "runtime": self.runtime,
                "runtime_version": self.runtime_version, "path": self.path,
                "file_bytes": size, "threads": self.threads, "accelerator": self.accelerator,
                "load_seconds": self.load_seconds,
                "inputs": [vars(d) for d in self.input_details],
                "outputs": [vars(d) for d in self.output_details]}

    def run_shared(self, x) -> dict:
        """:meth:`run`, with the outputs as the runtime holds them where its API hands them
        over without a copy: they may be overwritten by the next call. What latency tables
        time, so that no runtime pays for a copy another one is spared (ONNX Runtime's
        ``run`` returns its own arrays; LiteRT's and OpenVINO's ``run`` copy them out)."""
        return self.run(x)

    def __call__(self, x):
        return self.run(x)
