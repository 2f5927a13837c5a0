"""The MNN runner: a ``.mnn`` file (converted from our ONNX file by ``exporters/to_mnn.py``)
run by MNN's Module API on the CPU backend, in high precision (float32) by default.

MNN (Alibaba's on-device engine, what many Android apps ship) is an optional runtime: it
is imported when a runner is made, and a machine without it gets a one-line RunnerError.
Its native code prints notices on standard output when it starts ("The device supports:
...", "MNN use high precision"); they are kept out of the user's output, other native
lines are passed on to stderr.
"""
from __future__ import annotations

import contextlib
import re
import sys
import time

import numpy as np

from edetgraph.cli import captured_fd
from edetgraph.verify.runner_base import (Runner, RunnerError, TensorInfo, check_file,
                                          check_precision, first_line)

PRECISIONS = ("high", "normal", "low")   # MNN's names: high = float32 end to end
_NOTICE = re.compile(r"The device supports: |MNN use (high|normal|low) precision$")


@contextlib.contextmanager
def quiet_stdout():
    """Run the block with what native code writes to file descriptor 1 captured; MNN's
    start-up notices are dropped, any other line goes to stderr when the block ends."""
    said: list = []
    try:
        with captured_fd(1, said):
            yield
    finally:
        rest = [ln for ln in said if not _NOTICE.search(ln)]
        if rest:
            print("\n".join(rest), file=sys.stderr)


class MnnRunner(Runner):
    """MNN Module API on the CPU backend; ``precision`` high (float32, default), normal or
    low (MNN may then run float16 or bfloat16 where the CPU has them)."""
    kind = "mnn"

    def __init__(self, path, threads=None, precision: str = "high"):
        super().__init__(check_file(path, self.kind), threads)
        check_precision(self.path, "MNN", precision, PRECISIONS)
        try:
            with quiet_stdout():
                import MNN  # deferred: MNN is optional; it prints its CPU notice on import
        except ImportError as exc:
            raise RunnerError(f"{self.path}: MNN is not installed (pip install mnn): "
                              f"{first_line(exc)}") from None
        self._mnn = MNN
        config = {"backend": "CPU", "precision": precision, "numThread": int(threads or 1)}
        start = time.perf_counter()
        try:
            with quiet_stdout():
                runtime = MNN.nn.create_runtime_manager((config,))
                probe = MNN.nn.load_module_from_file(self.path, [], [], runtime_manager=runtime)
                info = probe.get_info()
                self.net = MNN.nn.load_module_from_file(
                    self.path, info["inputNames"], info["outputNames"], runtime_manager=runtime)
        except Exception as exc:   # MNN raises RuntimeError / ValueError for bad files
            raise RunnerError(f"{self.path}: MNN cannot load it: {first_line(exc)}") from None
        if self.net is None or not info.get("inputNames"):
            raise RunnerError(f"{self.path}: MNN cannot load it (not an MNN model)")
        self.load_seconds = time.perf_counter() - start
        self.runtime, self.runtime_version = "mnn", info.get("version", "")
        self.accelerator = f"CPU ({precision} precision)"
        self.biz_code = info.get("bizCode", "")
        self.input_details = [TensorInfo(n, tuple(v.shape), _dtype(v.dtype))
                              for n, v in zip(info["inputNames"], info["inputs"])]
        self._names = list(info["outputNames"])
        # MNN states no output shapes before a run: one run on zeros tells them
        first = self.run({d.name: np.zeros([s or 1 for s in d.shape], d.dtype)
                          for d in self.input_details})
        self.output_details = [TensorInfo(n, tuple(first[n].shape), first[n].dtype.name)
                               for n in self._names]

    def run(self, x) -> dict:
        mnn = self._mnn
        feeds = self._feeds(x)
        inputs = []
        for d in self.input_details:
            value = np.ascontiguousarray(feeds[d.name], np.dtype(d.dtype))
            # NCHW in MNN's Python API means "as the model lays it out" (here NHWC); the
            # dtype is named, else const() refuses any array but float32 ("numpy type does
            # not match": a --input uint8 file could not be fed)
            inputs.append(mnn.expr.const(value, list(value.shape), mnn.expr.NCHW,
                                         getattr(mnn.expr, _MNN_DTYPE.get(d.dtype, "float"))))
        outputs = self.net.forward(inputs)
        return {n: np.array(mnn.expr.convert(o, mnn.expr.NCHW).read(), copy=True)
                for n, o in zip(self._names, outputs)}


_NUMPY_DTYPE = {"float": "float32", "double": "float64", "int": "int32", "int64": "int64",
                "uint8": "uint8", "int8": "int8"}
_MNN_DTYPE = {v: k for k, v in _NUMPY_DTYPE.items()}


def _dtype(mnn_dtype) -> str:
    name = str(mnn_dtype).rsplit(".", 1)[-1]
    return _NUMPY_DTYPE.get(name, name)
