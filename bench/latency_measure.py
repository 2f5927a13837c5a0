"""Timing what a latency model is fitted and judged on: designed graphs and whole specs,
as files of a backend (converted by the exporters' converters, kept on disk) or as TF
functions, timed in small interleaved groups (``bench.latency.measure_interleaved``).

Every result goes to a measurement cache (JSON lines, one per timing, appended as soon as
its group is done), keyed by backend, threads, runtime version, CPU and what was timed, so
a fit that is killed resumes where it stopped. Each subject is timed in
several passes, each grouping the graphs differently, at another moment; its figure is the
20th percentile of all its timed calls: background load only ever adds time, and the
calls that met none are the ones a quiet machine would see.
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from bench import exports, latency_designs, probes
from bench.config import TABLE, BenchConfig
from bench.latency import measure_interleaved
from edetgraph.cli import quiet_native
from edetgraph.files import write_bytes
from edetgraph.graph import latency
from edetgraph.task.serving import make_serving_fn
from edetgraph.task.weights import model_with_weights
from edetgraph.verify.runners import make_runner
from exporters.onnx_format import convert as onnx_convert
from exporters.options import ExportOptions, TFLiteOptions
from exporters.tflite_format import TFLiteFormat, make_converter

# Backends a model can be fitted for: their file format (None: TF in process).
FORMATS = {"tf": None, "onnxruntime": "onnx", "openvino-fp32": "onnx", "tflite-fp32": "tflite",
           "tflite-fp16": "tflite", "tflite-int8": "tflite"}
TARGET = {None: "tf", "onnx": "onnx", "tflite": "tflite"}
# Activations each runtime runs inside the op before them (edetgraph.graph.latency.Op.key):
# LiteRT fuses RELU/RELU6 into CONV_2D, DEPTHWISE_CONV_2D and ADD; ONNX Runtime fuses
# Relu/Clip and Sigmoid into Conv (a swish becomes one QuickGelu op, not fused); TF's
# grappler fuses Relu/Relu6 into Conv2D/DepthwiseConv2dNative with their BiasAdd;
# OpenVINO fuses activations, swish included, into its convolutions. LiteRT's int8 files
# (read back from converted designs) fuse RELU6 as its float files do, into CONV_2D,
# DEPTHWISE_CONV_2D and a fusion node's ADD; swish stays LOGISTIC and MUL, all int8.
FUSES = {"tf": {"relu": ("conv", "dw")},
         "onnxruntime": {"relu": ("conv", "dw"), "sigmoid": ("conv",)},
         "openvino-fp32": {"relu": ("conv", "dw", "add", "sum"), "swish": ("conv", "dw"),
                           "sigmoid": ("conv",)},
         "tflite-fp32": {"relu": ("conv", "dw", "add", "sum")},
         "tflite-fp16": {"relu": ("conv", "dw", "add", "sum")},
         "tflite-int8": {"relu": ("conv", "dw", "add", "sum")}}
RUNTIME_DIST = {"tf": ("tensorflow-cpu", "tensorflow"), "onnxruntime": ("onnxruntime",),
                "openvino-fp32": ("openvino",), "tflite-fp32": ("ai-edge-litert",),
                "tflite-fp16": ("ai-edge-litert",), "tflite-int8": ("ai-edge-litert",)}
OPSET = exports.OPSET
# The figure of a timing: a low percentile of the interleaved calls. On a shared machine the
# median moves with whatever else runs (up to 2x here); the calls that met no competition
# do not, and on a quiet machine the 20th percentile is within a few % of the median.
QUANTILE = 20
MEASURE_VERSION = 2         # in every cache key: older measurements are not reused


def say(message: str) -> None:
    print(f"[latency_model] {message}", file=sys.stderr, flush=True)


def machine() -> str:
    m = probes.machine_record(os.getloadavg(), os.getloadavg())
    return f"{m['cpu']} ({m['cpus_usable'] or m['cpu_count']} CPUs usable, {m['node']})"


def runtime_version(backend: str) -> str:
    for dist in RUNTIME_DIST[backend]:
        v = probes._version(dist)
        if v:
            return f"{dist} {v}"
    return "unknown"


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _drop_cut_line(path: str) -> None:
    """A run killed mid-write leaves its last line without its newline: cut it off, so the
    next append starts on a line of its own."""
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


class Cache:
    """Measurements as JSON lines: appended one group at a time, read back on the next run."""

    def __init__(self, path: str, context: dict):
        self.path, self.context = path, context
        self.entries: dict = {}
        if os.path.exists(path):
            _drop_cut_line(path)
            with open(path) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        self.entries[rec["key"]] = rec
                    except (ValueError, KeyError):
                        continue        # a line cut short when a run was killed
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def key(self, subject: dict, measure_pass: int) -> str:
        return _digest({**self.context, "subject": subject, "pass": measure_pass})

    def get(self, subject: dict, measure_pass: int) -> dict | None:
        return self.entries.get(self.key(subject, measure_pass))

    def put(self, records: list) -> None:
        with open(self.path, "a") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
                self.entries[rec["key"]] = rec
            f.flush()
            os.fsync(f.fileno())


@dataclass
class Subject:
    """Something timed: a designed graph or a whole spec, its op list and call bytes."""
    name: str
    key: dict                       # what identifies it in the cache
    ops: list
    in_bytes: int
    out_bytes: int
    make_runner: Callable           # () -> runner (converting or exporting first if needed)
    make_file: Callable | None = None   # () -> its file (None: TF in process)
    info: dict = field(default_factory=dict)

    @property
    def weight(self) -> float:
        """A rough size, to group subjects of similar cost."""
        return sum(o.macs + 4 * (o.in_bytes + o.out_bytes) for o in self.ops) + 1e5


def subject_key(backend: str, threads: int, what: dict) -> dict:
    """What a measurement depends on besides the machine (the cache's own context)."""
    return {"backend": backend, "threads": threads, "runtime": runtime_version(backend),
            "m": MEASURE_VERSION, **what}


def _write_atomic(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_bytes(path, data)


def design_file(built, design, backend: str, workdir: str) -> str:
    """The design converted to ``backend``'s format, made once and kept under ``workdir``."""
    fmt = FORMATS[backend]
    quant = TABLE[backend].quant or "fp32"
    tag = _digest([latency_designs.VERSION, design.as_dict(), fmt, quant, OPSET])[:12]
    ext = "onnx" if fmt == "onnx" else f"{quant}.tflite"
    path = os.path.join(workdir, "files", fmt, f"{design.name}-{tag}.{ext}")
    if not os.path.exists(path):
        if fmt == "onnx":
            data = onnx_convert(built.serve, OPSET).SerializeToString()
        elif quant == "int8":
            data = _int8_design(built)
        else:
            data = TFLiteFormat(TFLiteOptions(quant=quant)).convert(
                built.serve, built.module, None, ExportOptions(verbose=False), say)[0]
        _write_atomic(path, data)
    return path


def _int8_design(built, samples: int = 8) -> bytes:
    """A designed graph as full-int8 TFLite, by the exporter's own converter settings. It is
    calibrated on random normal inputs of the graph's shapes: a design has feature maps (not
    pictures) for inputs, and int8 kernels take as long whatever the scales are, so random
    data times like real data."""
    rng = np.random.default_rng(0)

    def representative():
        for _ in range(samples):
            yield [rng.normal(0.0, 1.0, (1, *shape)).astype(np.float32)
                   for shape in built.inputs]
    with quiet_native():      # the quantizer's settings line, once per graph
        return make_converter(built.serve, built.module, "int8", "float", "float", "none",
                              representative).convert()


def runner_for(backend: str, path: str | None, threads: int, fn=None):
    b = TABLE[backend]
    if FORMATS[backend] is None:
        return make_runner("tf", None, threads, fn=fn)
    return make_runner(b.runner, path, threads, **({"precision": b.precision} if b.precision
                                                   else {}))


def design_subjects(designs, backend: str, threads: int, workdir: str,
                    fuses: dict | None = None) -> list[Subject]:
    """The designed graphs as subjects (built in TF now; converted when first needed)."""
    fuses = FUSES[backend] if fuses is None else fuses
    out = []
    for d in designs:
        built = latency_designs.build(d, TARGET[FORMATS[backend]], fuses)
        in_b, out_b = latency_designs.design_io(built)
        make_file = None if FORMATS[backend] is None else \
            (lambda built=built, d=d: design_file(built, d, backend, workdir))

        def make_runner(built=built, make_file=make_file):
            return runner_for(backend, make_file and make_file(), threads, fn=built.serve)
        key = subject_key(backend, threads, {"design": d.as_dict(),
                                             "v": latency_designs.VERSION})
        out.append(Subject(d.name, key, built.ops, in_b, out_b, make_runner, make_file,
                           {"motif": d.motif}))
    return out


def spec_subject(name: str, spec, backend: str, threads: int, workdir: str,
                 fuses: dict | None = None) -> Subject:
    """A whole spec: its op list, and (when timed) its exported file or its TF function."""
    fuses = FUSES[backend] if fuses is None else fuses

    # Once per run, not once per pass: an int8 file's reuse depends on its calibration
    # images, which exports.reusable cannot see, so for int8 every call would start a child.
    @functools.cache
    def make_file():
        cfg = BenchConfig(spec=spec, out=os.path.join(workdir, "specs"), threads=threads)
        os.makedirs(cfg.out, exist_ok=True)
        if exports.reusable(cfg, backend):
            return exports.reusable(cfg, backend)
        # A whole network is exported in a child process: the TF model, its traces and the
        # converter's memory go when it ends (a D3 is gigabytes), not into the timing process.
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(_export, (cfg, backend))

    def make_runner():
        if FORMATS[backend] is not None:
            return runner_for(backend, make_file(), threads)
        model, _ = model_with_weights(spec, None, 0)
        return runner_for(backend, None, threads, fn=make_serving_fn(model, spec, 1, "float"))
    in_b, out_b = latency.io_bytes(spec)
    ops = latency.spec_ops(spec, fuses)
    return Subject(name, subject_key(backend, threads, {"spec": exports.spec_digest(spec)}),
                   ops, in_b, out_b, make_runner,
                   None if FORMATS[backend] is None else make_file,
                   {"spec": name, "backend": backend,
                    "flops": sum(o.float_ops for o in ops) // 2})


def _export(cfg, backend: str) -> str:
    return exports.ensure_export(cfg, backend, {}, say)


def _inputs(runner, seed: int = 0):
    rng = np.random.default_rng(seed)
    feeds = {d.name: rng.normal(0.0, 1.0, [s or 1 for s in d.shape]).astype(np.float32)
             for d in runner.input_details}
    return next(iter(feeds.values())) if len(feeds) == 1 else feeds


@dataclass(frozen=True)
class Plan:
    """How hard to time: groups of ``group`` subjects, ``warmup`` calls each, then enough
    interleaved runs (``min_runs``..``max_runs``) to fill about ``budget_s`` per group."""
    passes: int = 2
    group: int = 8
    warmup: int = 3
    min_runs: int = 7
    max_runs: int = 60
    budget_s: float = 2.0


def _time_group(subjects, plan: Plan) -> dict:
    """Interleaved calls of every subject's runner; returns name -> the timed calls' ms."""
    runners, inputs, first, times = {}, {}, {}, {}
    for s in subjects:
        runner = s.make_runner()
        inputs[s.name] = _inputs(runner)
        runner.run(inputs[s.name])      # the first call may trace or plan
        t0 = time.perf_counter()
        runner.run(inputs[s.name])
        first[s.name] = time.perf_counter() - t0
        times[s.name] = []

        def timed(x, run=runner.run, out=times[s.name]):
            t0 = time.perf_counter()
            run(x)
            out.append(1e3 * (time.perf_counter() - t0))
        runners[s.name] = timed
    per_round = sum(first.values())
    runs = int(min(plan.max_runs, max(plan.min_runs, plan.budget_s / max(per_round, 1e-4))))
    measure_interleaved(runners, lambda n: inputs[n], warmup=plan.warmup, runs=runs)
    return {n: t[plan.warmup:] for n, t in times.items()}


def by_weight(todo: list, measure_pass: int, size: int) -> list:
    """Groups of subjects of similar cost, grouped differently in each pass."""
    rng = np.random.default_rng(measure_pass)
    todo = sorted(todo, key=lambda s: np.log(s.weight) + rng.uniform(0, 1.5))
    return [todo[i:i + size] for i in range(0, len(todo), size)]


def measure(subjects: list[Subject], cache: Cache, plan: Plan, what: str,
            grouping: Callable = by_weight) -> dict:
    """Time every subject ``plan.passes`` times (cached); returns name -> list of records.
    ``grouping(todo, pass, plan.group)`` says which subjects are timed interleaved."""
    for p in range(plan.passes):
        todo = [s for s in subjects if cache.get(s.key, p) is None]
        done = len(subjects) - len(todo)
        for chunk in (grouping(todo, p, plan.group) if todo else []):
            times = _time_group(chunk, plan)
            load = round(os.getloadavg()[0], 2)
            stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            cache.put([{"key": cache.key(s.key, p), "name": s.name, "pass": p,
                        "p50_ms": float(np.median(times[s.name])),
                        "times_ms": [round(t, 4) for t in times[s.name]], "load1": load,
                        "time": stamp} for s in chunk])
            done += len(chunk)
            say(f"{what}: pass {p + 1}/{plan.passes}, {done}/{len(subjects)} timed"
                f" (load {load})")
    return {s.name: [cache.get(s.key, p) for p in range(plan.passes)] for s in subjects}


def best(records: list) -> float:
    """The figure kept for a subject: the QUANTILE-th percentile of its timed calls, all
    passes pooled."""
    return float(np.percentile([t for r in records if r for t in r["times_ms"]], QUANTILE))
