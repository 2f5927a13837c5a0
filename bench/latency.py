"""Latency and peak memory, measured so that figures in one table can be compared.

On a shared, noisy machine a backend timed for a whole block and then the next backend
for the next block meet different background load; interleaving their calls round by
round (in a fresh random order each round) spreads that load over all of them alike.
No TensorFlow here: callables come from ``edetgraph.verify.runners`` or anywhere else.
"""
import gc
import inspect
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np

STAT_KEYS = ("p50_ms", "p90_ms", "mean_ms", "min_ms", "max_ms", "std_ms")


def latency_stats(seconds, batch: int = 1) -> dict:
    """p50/p90/mean/min/max/std in ms of per-call times, runs, batch, images/s (from the mean)."""
    ms = np.asarray(seconds, np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("latency_stats: no timings")
    stats = dict(zip(STAT_KEYS, (float(np.percentile(ms, 50)), float(np.percentile(ms, 90)),
                                 float(ms.mean()), float(ms.min()), float(ms.max()),
                                 float(ms.std()))))
    stats.update(runs=int(ms.size), batch=int(batch),
                 throughput_ips=float(batch * 1e3 / stats["mean_ms"]) if stats["mean_ms"] else None)
    return stats


def _as_call(runner):
    """What a timed call calls: a runner's ``run_shared`` (outputs handed back as the
    runtime holds them) or ``run``, or the callable itself."""
    for name in ("run_shared", "run"):
        if hasattr(runner, name):
            return getattr(runner, name)
    return runner


def _inputs(names, make_input) -> dict:
    """One input per backend, made before any timing (so making it is never timed)."""
    if isinstance(make_input, np.ndarray):
        return {n: make_input for n in names}
    takes_name = len(inspect.signature(make_input).parameters) >= 1
    return {n: make_input(n) if takes_name else make_input() for n in names}


def measure_interleaved(runners: dict, make_input, warmup: int = 10, runs: int = 50,
                        rounds: int = None, batch: int = None, seed: int = 0,
                        progress=None) -> dict:
    """Time ``runs`` calls of every runner, interleaved; returns {name: latency_stats}.

    runners: {name: callable or object with .run}; make_input: an array shared by all, or
    a callable (name) -> input / () -> input. Each runner gets ``warmup`` untimed calls,
    then ``rounds`` rounds (default ``runs``: one call per runner per round); each round
    visits the runners in a new shuffled order and calls each ceil(runs/rounds) times.
    batch defaults to the input's first dimension. progress(done_rounds, rounds) if given.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"measure_interleaved: runs={runs} must be >= 1, warmup={warmup} >= 0")
    names = list(runners)
    calls = {n: _as_call(runners[n]) for n in names}
    inputs = _inputs(names, make_input)
    for n in names:
        for _ in range(warmup):
            calls[n](inputs[n])
    rounds = max(1, min(rounds or runs, runs))
    per_round = math.ceil(runs / rounds)
    times = {n: [] for n in names}
    rng = np.random.default_rng(seed)
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()  # a collection landing inside one backend's call would bias that backend
    try:
        for r in range(rounds):
            for i in rng.permutation(len(names)):
                n = names[i]
                for _ in range(min(per_round, runs - len(times[n]))):
                    start = time.perf_counter()
                    calls[n](inputs[n])
                    times[n].append(time.perf_counter() - start)
            if progress:
                progress(r + 1, rounds)
    finally:
        if was_enabled:
            gc.enable()
    return {n: latency_stats(times[n], batch or _batch_of(inputs[n])) for n in names}


def _batch_of(x) -> int:
    if isinstance(x, dict):
        x = next(iter(x.values()))
    shape = np.shape(x)
    return int(shape[0]) if len(shape) else 1


def describe_method(warmup: int = 10, runs: int = 50, rounds: int = None) -> str:
    """One paragraph on how the latency table was measured, to print under it."""
    rounds = max(1, min(rounds or runs, runs))
    per = math.ceil(runs / rounds)
    return (
        f"Latency: each backend ran {warmup} untimed warm-up calls, then {runs} timed calls "
        f"interleaved with the other backends in {rounds} rounds ({per} call(s) per backend "
        "per round, backends in a fresh random order each round), so background load on the "
        "machine falls on all backends alike. One call is the runner's run_shared(): input "
        "conversion (and int8 quantization), inference, and the outputs handed back as the "
        "runtime holds them, without a copy where its API allows (LiteRT's tensor views, "
        "OpenVINO's shared outputs, ONNX Runtime's own arrays), timed with "
        "time.perf_counter; Python's garbage collector was paused while timing. p50/p90 "
        "are percentiles over the timed calls, std is their standard deviation, and "
        "throughput is batch size divided by the mean call time. Interleaving also means "
        "each call may start with caches another backend has just used, which is closer to "
        "a busy device than a hot loop is; figures from different tables or machines are "
        "not directly comparable.")


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark in MiB (VmHWM, else ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024.0 * 1024.0) if sys.platform == "darwin" else maxrss / 1024.0


_MEMORY_PROBE = r"""
import json, sys
import numpy as np
from bench import latency
from edetgraph.verify import runners
kind, path, threads, runs, opts = json.loads(sys.argv[1])
if kind == "onnxruntime":
    import onnxruntime
elif kind == "openvino":
    import openvino
elif kind == "mnn":
    from edetgraph.verify.mnn_runner import quiet_stdout
    with quiet_stdout():
        import MNN
elif kind == "ncnn":
    import ncnn
elif kind == "tflite":
    runners._load_tflite_module()
base = latency.peak_rss_mb()
r = runners.make_runner(kind, path, threads, **opts)
loaded = latency.peak_rss_mb()
feeds = {d.name: np.zeros([s or 1 for s in d.shape], "float32" if d.quantization else d.dtype)
         for d in r.input_details}
for _ in range(runs):
    r.run(feeds)
print(json.dumps({"baseline_mb": base, "after_load_mb": loaded, "peak_mb": latency.peak_rss_mb()}))
"""


def measure_peak_memory(kind: str, path, threads: int = None, runs: int = 5,
                        timeout: float = 300, **opts) -> dict:
    """Peak RSS of loading and running one model file, in a fresh subprocess.

    Returns baseline_mb (high-water mark after Python, numpy and the runtime library are
    imported, before the model), after_load_mb, peak_mb (after ``runs`` calls on zeros) and
    model_mb = peak_mb - baseline_mb: what the model adds (weights, arena, buffers). RSS
    counts resident shared-library pages too, so the totals are upper bounds; a subprocess
    is used because a high-water mark never goes down within one process. The ``tf`` kind
    (an in-process callable) is not supported here.
    """
    if kind not in ("onnxruntime", "tflite", "openvino", "mnn", "ncnn"):
        raise ValueError(f"measure_peak_memory: backend {kind} is not supported "
                         "(file runners only)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    arg = json.dumps([kind, os.fspath(path), threads, runs, opts])
    proc = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, arg], capture_output=True,
                          text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["no output"]
        raise RuntimeError(f"{path}: memory probe for {kind} failed: {lines[-1]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["model_mb"] = result["peak_mb"] - result["baseline_mb"]
    return result
