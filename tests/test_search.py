"""The search end to end on a tiny space: screening with a latency model, two trainings of
a few steps, export through the gate, timing, the report, and a kill-and-resume that keeps
what was finished. The latency model is written by hand (one coefficient per
multiply-accumulate and per op, for ONNX Runtime) so the test does not fit one."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT

from edetgraph.graph import latency_model
from edetgraph.graph import search_space as space_mod
from edetgraph.graph.spec import from_dict, load_spec

pytestmark = pytest.mark.slow

KINDS = ("pw", "conv", "dw_k3_s1", "dw_k3_s2", "dw_k5_s1", "dw_k5_s2", "act_swish",
         "act_fused", "act_relu", "act_sigmoid", "mean", "mul", "add", "scale", "sum",
         "maxpool", "upsample")

# Three pyramid levels at 64 px and one cell: each training, export and measurement is
# of a small graph (the search's steps, not the model's size, are what is tested).
SPACE = """\
base: demo
set: [image_size=64, anchors.max_level=5, fpn.channels=16, fpn.repeats=1, head.repeats=1,
      "backbone.width=0.25", "backbone.depth=0.2"]
fusion: [fastattn, sum]
repeats: [1]
channels: [16, 24]
image_size: [64]
head_repeats: [1]
family_phi: [0]
"""


def _latency_file(path, family, budget):
    """A model whose prediction for the family member is about 0.8 x the budget (the screening's
    band), far above what the tiny files measure, so the winner is within the budget."""
    model = latency_model.LatencyModel(
        backend="onnxruntime", threads=1, machine="test", fitted="2026-01-01T00:00:00+00:00",
        kinds={k: {"const": 0.002, "macs": 2e-7} for k in KINDS}, call={"const": 0.05},
        fuses={"relu": ("conv", "dw", "add", "sum")})
    def at(scale):   # the prediction is linear in the scale (plus per-op and call terms)
        return latency_model.predict(family, dataclasses.replace(model, scale=scale))["total_ms"]

    scale = 1.0 + (0.8 * budget - at(1.0)) / (at(2.0) - at(1.0))
    latency_model.save(dataclasses.replace(model, scale=scale), path)
    return latency_model.load(path)


def _command(tmp_path, out, budget, *extra):
    return [sys.executable, "-m", "edetgraph.search", "--space", str(tmp_path / "space.yaml"),
            "--latency", str(tmp_path / "ort.json"), "--budget-ms", f"{budget:g}",
            "--out", str(out), "--num-images", "24", "--steps", "3", "--candidates", "12",
            "--train", "1", "--rounds", "0",
            "--measure", "1", "--train-set", "bn_recalibration_batches=0", *extra]


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))


def test_a_tiny_search_killed_and_resumed(tmp_path, capsys):
    (tmp_path / "space.yaml").write_text(SPACE)
    space = space_mod.load_space(str(tmp_path / "space.yaml"))
    family = from_dict(space_mod.family_member(space, 0))
    budget = 500.0
    model = _latency_file(tmp_path / "ort.json", family, budget)
    assert latency_model.predict(family, model)["total_ms"] == pytest.approx(0.8 * budget, rel=0.05)
    out = tmp_path / "search"

    # First run: killed as soon as the first candidate's training has its result
    proc = subprocess.Popen(_command(tmp_path, out, budget), cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 900
    first = None
    while time.monotonic() < deadline and proc.poll() is None:
        done = sorted(out.glob("candidates/*/result.json"))
        if done:
            first = done[0]
            break
        time.sleep(0.5)
    assert first is not None, proc.communicate()[0].decode()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = first.read_text(), first.stat().st_mtime_ns
    assert not (out / "summary.json").exists()

    # The same command continues: the finished training is not redone, the rest completes
    r = subprocess.run(_command(tmp_path, out, budget), cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert (first.read_text(), first.stat().st_mtime_ns) == kept
    assert not (out / ".lock").exists()
    summary = json.loads((out / "summary.json").read_text())
    screened = json.loads((out / "screen.json").read_text())
    assert len(screened) >= 1 and all("predicted_ms" in r for r in screened.values() if r["ok"])
    trained = sorted(p.parent.name for p in out.glob("candidates/*/result.json"))
    # 1 first and the family: mutation rounds are covered by tests/test_search_command.py
    # with stand-in trainings (a real one here costs ~15 s of the suite)
    assert "family-phi0" in trained and len(trained) >= 2
    rows = (out / "pareto.csv").read_text().splitlines()
    assert len(rows) == len(trained) + 1
    measured = json.loads((out / "measure.json").read_text())
    assert measured["backend"] == "onnxruntime" and "family-phi0" in measured["ms"]
    assert all(ms > 0 for ms in measured["ms"].values())
    winner = summary["winners"]["500"]     # an ordinary spec file, measured within budget
    spec = load_spec(winner["spec"])
    assert winner["spec"].endswith("budget-500ms.yaml") and spec.image_size == (64, 64)
    assert winner["predicted_ms"] <= budget and 0 < winner["measured_ms"] <= budget
    assert winner["key"] in trained and winner["AP"] >= 0
    assert (out / "pareto.png").exists() == bool(summary.get("plot"))

    # Other settings into the same folder: refused in one line, nothing changed. (The
    # command's main in this process: only the killed run needs one of its own.)
    from edetgraph.search import main
    capsys.readouterr()
    code = main(_command(tmp_path, out, budget, "--seed", "1")[3:])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "other settings" in err and "seed" in err
    assert json.loads((out / "summary.json").read_text()) == summary
