"""Facts the benchmark records besides timings: TensorFlow's peak memory (in a fresh
subprocess, like ``bench.latency.measure_peak_memory`` does for files) and the machine."""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys

_TF_MEMORY_PROBE = r"""
import json, sys
import numpy as np
import tensorflow as tf
from bench import latency
spec_data, threads, batch, xla, runs = json.loads(sys.argv[1])
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(1)
from edetgraph.nn.model import build_model
from edetgraph.graph.spec import from_dict
spec = from_dict(spec_data)
tf.constant(0.0) + 1.0  # start TF's runtime before the baseline
base = latency.peak_rss_mb()
model = build_model(spec)
h, w = spec.image_size
sig = [tf.TensorSpec([batch, h, w, 3], tf.float32)]
fn = tf.function(model.raw_outputs, input_signature=sig, jit_compile=xla, autograph=False)
x = np.zeros((batch, h, w, 3), np.float32)
fn(x)
loaded = latency.peak_rss_mb()
for _ in range(runs):
    {k: v.numpy() for k, v in fn(x).items()}
print(json.dumps({"baseline_mb": base, "after_load_mb": loaded, "peak_mb": latency.peak_rss_mb()}))
"""


def tf_peak_memory(spec, threads: int, batch: int, xla: bool = False, runs: int = 3,
                   timeout: float = 900) -> dict:
    """Peak RSS of building the model and running its ``tf.function`` (XLA when ``xla``)
    in a fresh Python: baseline_mb after importing TensorFlow and starting its runtime,
    after_load_mb after building the variables and the first (tracing/compiling) call,
    peak_mb after ``runs`` more calls; model_mb = peak_mb - baseline_mb. Weights are the
    seeded initialisation (memory does not depend on their values)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    arg = json.dumps([spec.to_dict(), threads, batch, xla, runs], default=list)
    proc = subprocess.run([sys.executable, "-c", _TF_MEMORY_PROBE, arg], capture_output=True,
                          text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["no output"]
        raise RuntimeError(f"memory probe for tf{'-xla' if xla else ''} failed: {lines[-1]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["model_mb"] = result["peak_mb"] - result["baseline_mb"]
    return result


def _version(name: str):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_record(load_before, load_after) -> dict:
    """CPU, OS, Python and library versions, and the 1/5/15-minute load averages at the
    start and end of the run (the machine may be shared: read the figures with them)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f
                        if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"node": platform.node(), "system": f"{platform.system()} {platform.release()}",
            "machine": platform.machine(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "cpus_usable": usable, "python": platform.python_version(),
            "load_average_start": [round(v, 2) for v in load_before],
            "load_average_end": [round(v, 2) for v in load_after],
            "versions": {n: _version(n) for n in ("tensorflow-cpu", "tensorflow", "onnxruntime",
                                                  "ai-edge-litert", "tf2onnx", "numpy")}}
