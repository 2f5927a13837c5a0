"""Peak memory and time of one training step, with and without gradient checkpointing, or in
each precision: every setting runs in its own fresh process, so each peak is its own.

    python tools/train_memory.py --spec d3 --batch 2                  # grad_checkpoint off/on
    python tools/train_memory.py --spec demo --batch 4 --speed        # float32 / bf16 / fp16

A child builds the training state, runs ``--steps`` steps of the real train function (the
first one traces it) on a fixed random batch, and reports its peak resident set size
(``resource.getrusage``), the resident size before the first step (TensorFlow, the model,
optimizer slots and EMA), and the wall and CPU seconds per step after the first. The
figures depend on the CPU (name it when quoting them) and on what else the machine runs
(CPU seconds suffer less from a busy machine). Where the spec has drop-connect (D1 up) the
children's losses differ: its masks are random.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(spec_name: str, batch: int, steps: int, precision: str, grad_checkpoint: bool) -> dict:
    """One setting, in this process: the figures as a dict."""
    import tensorflow as tf  # deferred: only the child processes load TensorFlow

    from edetgraph.graph.spec import load_spec  # deferred: as TensorFlow
    from edetgraph.training.benchmark import _fixed_batch  # deferred: as TensorFlow
    from edetgraph.training.config import from_dict  # deferred: as TensorFlow
    from edetgraph.training.step import build_state, make_train_function  # deferred: as TF

    spec = load_spec(spec_name)
    config = from_dict({"batch_size": batch, "steps": steps + 1, "warmup_steps": 1,
                        "learning_rate": 1e-3, "precision": precision,
                        "grad_checkpoint": grad_checkpoint})
    state = build_state(spec, config, steps + 1, 1)
    fn = make_train_function(tf.distribute.get_strategy(), state, config)
    it = iter(tf.data.Dataset.from_tensors(_fixed_batch(spec, batch)).repeat())
    before = _rss_mib()
    start = time.perf_counter()
    out = fn(it, tf.constant(1))
    first = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    if steps > 1:
        out = fn(it, tf.constant(steps - 1))
    rest = (time.perf_counter() - start) / max(steps - 1, 1)
    cpu = (time.process_time() - cpu) / max(steps - 1, 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # KiB on Linux
    return {"spec": spec.name, "batch": batch, "precision": precision,
            "grad_checkpoint": grad_checkpoint, "loss": float(out[0]["loss"]),
            "rss_before_step_mib": round(before), "peak_rss_mib": round(peak),
            "step_peak_mib": round(peak - before), "first_step_s": round(first, 1),
            "seconds_per_step": round(rest, 2) if steps > 1 else None,
            "cpu_seconds_per_step": round(cpu, 2) if steps > 1 else None}


def _run_child(args, precision: str, grad_checkpoint: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", "--spec", args.spec, "--batch", str(args.batch),
           "--steps", str(args.steps), "--precision", precision]
    if grad_checkpoint:
        cmd.append("--grad-checkpoint")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"child {precision} grad_checkpoint={grad_checkpoint} failed:\n"
                         + proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default="d3")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=1, help="steps per child (timing needs >= 2)")
    p.add_argument("--speed", action="store_true",
                   help="compare precisions (float32, mixed_bfloat16, mixed_float16) instead")
    p.add_argument("--precision", default="float32")
    p.add_argument("--grad-checkpoint", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.spec, args.batch, args.steps, args.precision,
                               args.grad_checkpoint)))
        return 0
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "unknown CPU")
    print(f"# {cpu}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    settings = ([(pr, args.grad_checkpoint) for pr in
                 ("float32", "mixed_bfloat16", "mixed_float16")] if args.speed
                else [(args.precision, False), (args.precision, True)])
    rows = []
    for precision, gc in settings:
        rows.append(_run_child(args, precision, gc))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    for r in rows[1:]:
        if args.speed:
            wall = r["seconds_per_step"] / base["seconds_per_step"]
            cpu = r["cpu_seconds_per_step"] / base["cpu_seconds_per_step"]
            print(f"{r['precision']}: {wall:.2f}x the float32 step time, {cpu:.2f}x its CPU time")
        else:
            print(f"grad_checkpoint: peak RSS {base['peak_rss_mib']} -> {r['peak_rss_mib']} MiB "
                  f"({1 - r['peak_rss_mib'] / base['peak_rss_mib']:.0%} less); step's own "
                  f"{base['step_peak_mib']} -> {r['step_peak_mib']} MiB "
                  f"({1 - r['step_peak_mib'] / base['step_peak_mib']:.0%} less)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
