"""Stages 2 and 3 as jobs: a candidate trained by ``python -m edetgraph.train`` in a
subprocess (resumed from its checkpoint after a kill), exported by the project's exporter
(its fp32 parity gate decides), and timed beside the others on one runtime."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from edetgraph.nas.common import say, write_atomic, write_json

REPO = Path(__file__).resolve().parent.parent.parent
# backend of a latency model -> (exporter script, its extra flags, file suffix, runner kind)
EXPORTS = {
    "onnxruntime": ("exporters/to_onnx.py", [], ".onnx", "onnxruntime"),
    "tflite-fp32": ("exporters/to_tflite.py", ["--quant", "fp32"], ".tflite", "tflite"),
    "openvino-fp32": ("exporters/to_onnx.py", [], ".onnx", "openvino"),
}


def _child_dies_with_parent():
    """Linux: the training subprocess is killed when the search is (no orphan trainer)."""
    try:
        import ctypes  # deferred: only in the forked child, Linux only

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Trainer:
    """Trains one candidate in a subprocess (``python -m edetgraph.train``) and reads its AP.

    One training is a candidate, a number of steps and a seed (None: the training settings'
    own). Its folder is the candidate's own for the last rung's first seed (where a search
    without --rungs and --seeds has always kept its one training, so an older --out resumes)
    and ``steps<N>[-seed<S>]`` inside it for the others; each holds ``model/``,
    ``train.log`` and ``result.json``. The spec is the candidate's ``spec.yaml``."""

    def __init__(self, out: Path, args, data: dict, last_steps: int):
        self.out, self.args, self.data, self.last_steps = out, args, data, last_steps

    def folder(self, key: str, steps: int, seed: int | None = None) -> Path:
        home = self.out / "candidates" / key
        if steps == self.last_steps and seed is None:
            return home
        return home / (f"steps{steps}" + ("" if seed is None else f"-seed{seed}"))

    def result(self, key: str, steps: int, seed: int | None = None) -> dict | None:
        p = self.folder(key, steps, seed) / "result.json"
        return json.loads(p.read_text()) if p.exists() else None

    def train(self, key: str, label: str, steps: int, seed: int | None = None) -> dict:
        done = self.result(key, steps, seed)
        if done is not None:
            return done
        folder = self.folder(key, steps, seed)
        folder.mkdir(parents=True, exist_ok=True)
        spec_file = self.out / "candidates" / key / "spec.yaml"
        cmd = [sys.executable, "-m", "edetgraph.train", "--spec", str(spec_file),
               "--train-config", self.args.train_config, "--model-dir", str(folder / "model"),
               "--train-set", f"steps={steps}"]
        for item in self.args.train_set:
            cmd += ["--train-set", item]
        if seed is not None:        # after the user's items: this one decides
            cmd += ["--train-set", f"seed={seed}"]
        for flag in ("data", "val_data", "val_json"):
            if self.data.get(flag):
                cmd += [f"--{flag.replace('_', '-')}", str(self.data[flag])]
        t0 = time.perf_counter()
        say(f"train {label} ({steps} steps) -> {folder}/train.log")
        with open(folder / "train.log", "ab") as log:
            code = subprocess.run(cmd, check=False, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                  preexec_fn=_child_dies_with_parent).returncode
        metrics = folder / "model" / "eval" / "metrics.json"
        if code != 0 or not metrics.exists():
            tail = (folder / "train.log").read_text(errors="replace").strip().splitlines()[-1:]
            rec = {"ok": False, "reason": f"training exited {code}: {' '.join(tail)[:200]}"}
        else:
            m = json.loads(metrics.read_text())
            rec = {"ok": True, "AP": m["AP"], "AP50": m["AP50"], "step": m.get("step"),
                   "train_seconds": round(time.perf_counter() - t0, 1)}
        write_json(folder / "result.json", rec)
        say(f"  {label}: " + (f"AP {rec['AP']:.4f} AP50 {rec['AP50']:.4f} "
                               f"({rec['train_seconds']:.0f} s)" if rec["ok"] else rec["reason"]))
        return rec


def write_spec(out: Path, key: str, data: dict) -> None:
    """A candidate's spec, once, as every training of it and its export read it."""
    path = out / "candidates" / key / "spec.yaml"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, yaml.safe_dump(data, sort_keys=False))


def export(out: Path, key: str, backend: str, threads: int) -> dict:
    """Export a trained candidate through the fp32 parity gate (the exporter's own)."""
    folder = out / "candidates" / key
    done = folder / "export.json"
    if done.exists():
        return json.loads(done.read_text())
    script, flags, suffix, _ = EXPORTS[backend]
    (folder / "export").mkdir(exist_ok=True)
    target = folder / "export" / f"model{suffix}"
    cmd = [sys.executable, script, "--spec", str(folder / "spec.yaml"), "--ckpt",
           str(folder / "model"), "--out", str(target), "--threads", str(threads), *flags]
    say(f"export {key} ({backend}, fp32 parity gate) -> {target}")
    rec = _run_exporter(folder, cmd, target)
    summary = Path(f"{target}.json")
    if rec["ok"] and summary.exists():
        s = json.loads(summary.read_text())
        rec["gate"] = s.get("parity", {}).get("ok", True) if isinstance(s.get("parity"), dict) \
            else True
        cov = s.get("coverage") or {}
        rec["coverage"] = cov.get("summary") if isinstance(cov, dict) else cov
    return _keep(done, key, rec)


def _run_exporter(folder: Path, cmd: list, target: Path) -> dict:
    """Run one exporter command (its output to FOLDER/export.log): ``ok``, ``file``, ``exit``
    and, when it failed, its last line as ``reason``."""
    with open(folder / "export.log", "ab") as log:
        code = subprocess.run(cmd, check=False, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                              preexec_fn=_child_dies_with_parent).returncode
    rec = {"ok": code == 0 and target.exists(), "file": str(target), "exit": code}
    if not rec["ok"]:
        lines = (folder / "export.log").read_text(errors="replace").strip().splitlines()
        rec["reason"] = (lines[-1] if lines else f"exit {code}")[:200]
    return rec


def _keep(done: Path, key: str, rec: dict) -> dict:
    """Write an export's record (a rerun reads it back) and say how it ended."""
    write_json(done, rec)
    say(f"  {key}: " + ("passed the gate" if rec["ok"] else f"FAILED: {rec['reason']}"))
    return rec


def export_reference(out: Path, key: str, spec: str, backend: str, threads: int) -> dict:
    """Export a ratio budget's reference spec (random weights: latency does not depend on
    them) through the same exporter and gate as the candidates, into OUT/references/KEY."""
    folder = out / "references" / key
    done = folder / "export.json"
    if done.exists():
        return json.loads(done.read_text())
    script, flags, suffix, _ = EXPORTS[backend]
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"model{suffix}"
    cmd = [sys.executable, script, "--spec", spec, "--out", str(target), "--threads",
           str(threads), *flags]
    say(f"export the reference {spec} ({backend}, random weights) -> {target}")
    return _keep(done, key, {**_run_exporter(folder, cmd, target), "spec": spec})


def measure(files: dict[str, str], kind: str, threads: int, rounds: int = 5,
            runs: int = 10) -> dict[str, float]:
    """Median milliseconds of each file, timed side by side: ``rounds`` rounds, each running
    every file ``runs`` times in turn, so load on a shared machine falls on all alike."""
    import numpy as np  # deferred: only measuring needs it

    from edetgraph.verify.runners import make_runner  # deferred: loads a runtime

    runners = {k: make_runner(kind, p, threads=threads) for k, p in files.items()}
    feeds = {}
    for k, r in runners.items():
        info = r.input_details[0]
        shape = [d or 1 for d in info.shape]
        feeds[k] = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
    times: dict[str, list] = {k: [] for k in runners}
    for k, r in runners.items():       # warm-up
        for _ in range(3):
            r.run(feeds[k])
    for _ in range(rounds):
        for k, r in runners.items():
            for _ in range(runs):
                t0 = time.perf_counter()
                r.run(feeds[k])
                times[k].append(time.perf_counter() - t0)
    return {k: round(1000 * float(np.median(v)), 4) for k, v in times.items()}


