"""How much the demo recipe's AP depends on the seed and on the CPU's float rounding.

    python tools/demo_spread.py --out runs/spread                  # seeds 0 1 2 x oneDNN on/off
    python tools/demo_spread.py --out runs/spread --seeds 0 --onednn on --set precision=mixed_bfloat16

Trains ``specs/demo.yaml`` with ``specs/train/demo.yaml`` (the README's main job, stage 3)
once per seed and per ``TF_ENABLE_ONEDNN_OPTS`` setting, each in its own process (the
variable is read when TensorFlow loads), and reads the COCO evaluation every run writes at
its end (``MODEL_DIR/eval/metrics.json``). oneDNN off runs TensorFlow's Eigen kernels,
whose summation order, and so rounding, differs from oneDNN's: the way another CPU kind
moves a run. A run already finished in ``--out`` is read back, not redone; a killed run
resumes from its checkpoint. Prints one row per run (AP, AP50, training CPU time and wall
time, the CPU's kind), then the spread, and writes them all to ``OUT/spread.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_kind() -> str:
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("flags")), "")
    except OSError:
        return platform.machine()
    has = [f for f in ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f" {f}" in flags]
    return ", ".join(has) if has else "AVX2 only" if " avx2" in flags else "no AVX2"


def run_one(out: Path, seed: int, onednn: bool, extra: list[str]) -> dict:
    """Train (or resume) one run in a child process; its metrics, CPU and wall seconds."""
    name = f"seed{seed}-onednn{'on' if onednn else 'off'}"
    model_dir = out / name
    record = model_dir / "spread_run.json"
    if record.is_file():
        return json.loads(record.read_text())
    argv = [sys.executable, "-m", "edetgraph.train", "--spec", "demo", "--train-config", "demo",
            "--model-dir", str(model_dir), "--train-set", f"seed={seed}"]
    for s in extra:
        argv += ["--train-set", s]
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1" if onednn else "0",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    print(f"[spread] {name}: {' '.join(argv[1:])}", flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    code = subprocess.run(argv, cwd=ROOT, env=env).returncode
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        raise SystemExit(f"[spread] {name}: train exited {code}; rerun to resume it")
    metrics = json.loads((model_dir / "eval" / "metrics.json").read_text())
    row = {"run": name, "seed": seed, "onednn": onednn, "AP": metrics["AP"],
           "AP50": metrics["AP50"], "step": metrics.get("step"),
           "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
           "wall_s": round(wall, 1), "cpu": cpu_kind(), "settings": extra}
    record.write_text(json.dumps(row, indent=1))
    return row


def summary(rows: list[dict]) -> dict:
    aps = [r["AP"] for r in rows]
    return {"runs": len(rows), "AP_min": min(aps), "AP_max": max(aps),
            "AP_spread": max(aps) - min(aps), "AP50_min": min(r["AP50"] for r in rows),
            "cpu_s_max": max(r["cpu_s"] for r in rows)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python tools/demo_spread.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for the runs' model dirs and spread.json")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--onednn", nargs="+", choices=["on", "off"], default=["on", "off"])
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="a training setting for every run (repeatable), e.g. precision=mixed_bfloat16")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [run_one(out, s, o == "on", args.extra) for s in args.seeds for o in args.onednn]
    print(f"{'run':22} {'AP':>6} {'AP50':>6} {'cpu min':>8} {'wall min':>9}  cpu")
    for r in rows:
        print(f"{r['run']:22} {r['AP']:6.3f} {r['AP50']:6.3f} {r['cpu_s'] / 60:8.1f} "
              f"{r['wall_s'] / 60:9.1f}  {r['cpu']}")
    s = summary(rows)
    print(f"AP {s['AP_min']:.3f} .. {s['AP_max']:.3f} (spread {s['AP_spread']:.3f}), "
          f"lowest AP50 {s['AP50_min']:.3f}, most CPU time {s['cpu_s_max'] / 60:.1f} min "
          f"(~{s['cpu_s_max'] / 120:.1f} min of wall on 2 idle cores)")
    (out / "spread.json").write_text(json.dumps({"rows": rows, "summary": s}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
