"""The OpenVINO runner: an exported ONNX file (or an OpenVINO IR ``.xml``, e.g. an int8 file
from NNCF) compiled for the CPU, in f32 or, where the CPU has it, bf16.

OpenVINO is an optional runtime: it is imported when a runner is made, and a machine
without it gets a one-line RunnerError. ``bf16`` is refused where the CPU lacks the
instructions (OpenVINO would silently run f32 and the figures would lie).
"""
from __future__ import annotations

import os
import time

import numpy as np

from edetgraph.verify.runner_base import (Runner, RunnerError, TensorInfo, check_file,
                                          check_precision, first_line)

PRECISIONS = ("f32", "bf16")


def cpu_has_bf16() -> tuple[bool, str]:
    """``(True, "")`` when OpenVINO's CPU plugin can run bf16 here, else ``(False, why)``."""
    try:
        import openvino as ov  # deferred: OpenVINO is optional
    except ImportError as exc:
        return False, f"openvino is not installed (pip install openvino): {first_line(exc)}"
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in caps:
        return False, f"this CPU has no bf16 support (OpenVINO CPU capabilities: {', '.join(caps)})"
    return True, ""


class OpenVinoRunner(Runner):
    """OpenVINO CPU plugin; ``precision`` f32 or bf16 (the inference precision hint), one
    stream, the latency hint, ``threads`` inference threads."""
    kind = "openvino"

    def __init__(self, path, threads=None, precision: str = "f32"):
        super().__init__(check_file(path, self.kind), threads)
        check_precision(self.path, "OpenVINO", precision, PRECISIONS)
        if precision == "bf16":
            ok, why = cpu_has_bf16()
            if not ok:
                raise RunnerError(f"{self.path}: bf16 refused: {why}")
        try:
            import openvino as ov  # deferred: each runner needs only its own runtime
        except ImportError as exc:
            raise RunnerError(f"{self.path}: openvino is not installed (pip install "
                              f"openvino): {first_line(exc)}") from None
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                  "NUM_STREAMS": 1}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        start = time.perf_counter()
        try:
            self.compiled = ov.Core().compile_model(ov.Core().read_model(self.path), "CPU",
                                                    config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses for bad files
            raise RunnerError(f"{self.path}: openvino cannot load it: {first_line(exc)}") \
                from None
        self.request = self.compiled.create_infer_request()
        self.load_seconds = time.perf_counter() - start
        self.runtime, self.runtime_version = "openvino", ov.__version__.split("-")[0]
        self.accelerator, self.precision = f"CPU {precision}", precision
        self.input_details = [self._info(p) for p in self.compiled.inputs]
        self.output_details = [self._info(p) for p in self.compiled.outputs]

    def info(self) -> dict:
        out = super().info()
        out["file_bytes"] = file_size(self.path)      # the .bin of an IR counts too
        return out

    @staticmethod
    def _info(port) -> TensorInfo:
        shape = port.get_partial_shape()
        dims = tuple(None if d.is_dynamic else d.get_length() for d in shape)
        return TensorInfo(port.any_name, dims, np.dtype(port.get_element_type().to_dtype()).name)

    def run(self, x) -> dict:
        return {k: np.array(v) for k, v in self.run_shared(x).items()}

    def run_shared(self, x) -> dict:
        feeds = self._feeds(x)
        arrays = [np.ascontiguousarray(feeds[d.name], d.dtype) for d in self.input_details]
        result = self.request.infer(arrays, share_outputs=True)   # views of its own buffers
        return {d.name: result[port] for d, port in zip(self.output_details,
                                                        self.compiled.outputs)}


def file_size(path) -> int:
    """Bytes of an OpenVINO model: the .xml and its .bin, or the .onnx."""
    path = os.fspath(path)
    extra = path[:-4] + ".bin" if path.endswith(".xml") else None
    return os.path.getsize(path) + (os.path.getsize(extra) if extra and os.path.isfile(extra)
                                    else 0)
