"""The NCNN runner: a ``.param`` / ``.bin`` pair (converted from our ONNX file by
``exporters/to_ncnn.py``) run by ncnn's own Python runtime on the CPU, in float32.

ncnn (Tencent's on-device engine, what Raspberry Pi and many Android detectors run) is an
optional runtime: it is imported when a runner is made, and a machine without it gets a
one-line RunnerError. ncnn has no batch dimension: a Mat is one image, here our NHWC image
without its batch (ncnn's c=H, h=W, w=C), so a batch runs image by image, as ncnn users run
it. By default ncnn stores and computes in float16 or bfloat16 where the CPU has them;
``precision="fp32"`` (the default) turns every such option off, as the fp32 gate needs.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from edetgraph.cli import captured_fd
from edetgraph.verify.runner_base import (Runner, RunnerError, TensorInfo, check_file,
                                          check_precision, first_line)

PRECISIONS = ("fp32", "fp16")
_LOW_PRECISION = ("use_fp16_storage", "use_fp16_arithmetic", "use_fp16_packed",
                  "use_bf16_storage", "use_bf16_packed")


def companions(param_path: str) -> list:
    """The files an NCNN model's ``.param`` brings with it: ``NAME.bin`` (its weights) and
    ``NAME.json`` (edetgraph's metadata, written by ``exporters/to_ncnn.py``)."""
    stem = os.fspath(param_path)[:-len(".param")]
    return [stem + ".bin", stem + ".json"]


def input_shape(param_path: str) -> dict:
    """``{input name: (c, h, w)}`` from the Input layers of a ``.param`` file (``to_ncnn``
    writes each input's shape there; 0 where a file leaves one unset)."""
    shapes = {}
    with open(param_path, errors="replace") as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] == "Input" and len(fields) >= 5:
                params = dict(p.split("=", 1) for p in fields[5:] if "=" in p)
                values = [params.get(k, "0") for k in ("2", "1", "0")]
                shapes[fields[4]] = tuple(int(v) if v.isdigit() else 0 for v in values)
    return shapes


class NcnnRunner(Runner):
    """ncnn's Net on the CPU; ``precision`` fp32 (default: every float16/bfloat16 option off)
    or fp16 (ncnn's defaults, which use them where the CPU has them)."""
    kind = "ncnn"

    def __init__(self, path, threads=None, precision: str = "fp32"):
        super().__init__(check_file(path, self.kind), threads)
        check_precision(self.path, "ncnn", precision, PRECISIONS)
        # ncnn's threads are OpenMP's (the wheel's own libgomp, which reads this when ncnn is
        # first imported): passive waiting, as the ONNX Runtime runner turns spinning off. On
        # this shared 2-core AVX-512 machine (load 6), D0 512 on 2 threads took 5.4 s a call
        # with libgomp's default spinning, 0.14 s passive (ONNX Runtime: 0.09 s). A user's
        # own OMP_WAIT_POLICY is kept.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import ncnn  # deferred: ncnn is optional
        except ImportError as exc:
            raise RunnerError(f"{self.path}: ncnn is not installed (pip install ncnn): "
                              f"{first_line(exc)}") from None
        self._ncnn = ncnn
        weights = companions(self.path)[0]
        start = time.perf_counter()
        self.net = ncnn.Net()
        self.net.opt.num_threads = int(threads or 1)
        if precision == "fp32":
            for option in _LOW_PRECISION:
                setattr(self.net.opt, option, False)
        said: list = []   # ncnn prints why a file does not load on fd 2 ("parse magic failed")
        with captured_fd(2, said):
            failed = self.net.load_param(self.path) or self.net.load_model(weights)
        if failed:
            why = said[0] if said else "not an NCNN model"
            raise RunnerError(f"{self.path}: ncnn cannot load it (with {os.path.basename(weights)})"
                              f": {why[:200]}")
        if said:          # a file that loads has nothing to say; if it does, it is shown
            print("\n".join(said), file=sys.stderr, flush=True)
        self.load_seconds = time.perf_counter() - start
        self.runtime, self.runtime_version = "ncnn", ncnn.__version__
        self.accelerator = f"CPU ({precision})"
        shapes = input_shape(self.path)
        names = list(self.net.input_names())
        if len(names) != 1 or not all(shapes.get(names[0], ())):
            raise RunnerError(f"{self.path}: ncnn runs one input of known shape here; the "
                              f"file has inputs {names} with shapes {shapes}")
        self.input_details = [TensorInfo(names[0], (1, *shapes[names[0]]), "float32")]
        self._names = sorted(self.net.output_names())   # a .param records no output order
        # ncnn states no output shapes before a run: one run on zeros tells them
        first = self.run(np.zeros(self.input_details[0].shape, np.float32))
        self.output_details = [TensorInfo(n, tuple(first[n].shape), "float32")
                               for n in self._names]

    def info(self) -> dict:
        """:meth:`Runner.info`, the file's size counting its weights (.param + .bin)."""
        info = super().info()
        info["file_bytes"] = sum(os.path.getsize(p) for p in (self.path, companions(self.path)[0]))
        return info

    def run(self, x) -> dict:
        (name,) = [d.name for d in self.input_details]
        images = np.ascontiguousarray(self._feeds(x)[name], np.float32)
        per_image = [self._one(image) for image in images]
        return {n: np.stack([o[n] for o in per_image]) for n in self._names}

    def _one(self, image) -> dict:
        with self.net.create_extractor() as ex:
            ex.input(self.input_details[0].name, self._ncnn.Mat(image))
            out = {}
            for n in self._names:
                status, mat = ex.extract(n)
                if status != 0:
                    raise RunnerError(f"{self.path}: ncnn could not compute {n} "
                                      f"(status {status})")
                out[n] = np.array(mat, copy=True)
            return out
