"""``python -m edetgraph.search`` with --rungs / --promote / --seeds, without training:
bad values refused in one line, an --out written before these flags resumed with its old
flags, each training's folder and command, the report's verdict on hand-made rows, and the
whole command run through stand-ins for the trainer, the exporter and the stopwatch, killed
and resumed (a real search end to end is tests/test_search.py)."""
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from test_search import SPACE, _latency_file
from test_search_rungs import FakeTrainer, Killed

from edetgraph import search
from edetgraph.graph import search_space as space_mod
from edetgraph.graph.spec import from_dict
from edetgraph.nas import jobs
from edetgraph.nas.report import write_report


@pytest.mark.parametrize("argv, words", [
    (["--rungs", "400", "400"], "--rungs 400 400: training steps per rung"),
    (["--rungs", "500", "400"], "more than the one before"),
    (["--rungs", "0", "10"], "--rungs 0 10:"),
    (["--steps", "100", "--rungs", "100", "200"], "--steps and --rungs: give one"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--promote", "0"], "--promote must be a fraction in (0, 1]"),
    (["--promote", "1.5"], "--promote must be"),
    (["--promote", "nan"], "--promote must be"),
    (["--promote", "inf"], "--promote must be"),
    (["--seeds", "0"], "--seeds must be from 1 to 100"),
    (["--seeds", "101"], "--seeds must be from 1 to 100"),
    (["--train-config", "no-such-settings", "--seeds", "3"], "--train-config no-such-settings"),
])
def test_bad_schedules_are_refused_in_one_line(tmp_path, capsys, argv, words):
    code = search.main(["--latency", str(tmp_path / "m.json"), "--out", str(tmp_path / "o"),
                        "--budget-ms", "10", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "o").exists()


def test_a_rung_that_is_not_a_number_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        search.main(["--latency", "m.json", "--out", str(tmp_path / "o"), "--budget-ms", "10",
                     "--rungs", "400", "lots"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "--rungs" in err[0]


def test_each_training_has_its_folder_and_its_seed(tmp_path, monkeypatch):
    """The last rung's first seed trains where a search has always kept a candidate's one
    training (so an older --out resumes); the others in steps<N>[-seed<S>] below it. The
    seed goes after the user's --train-set items, so it decides."""
    ran = []

    def run(cmd, **kw):
        ran.append(cmd)
        sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--train-set"]
        steps = int(sets[0].split("=")[1])
        seed = int(sets[-1].split("=")[1]) if sets[-1].startswith("seed=") else 0
        model = Path(cmd[cmd.index("--model-dir") + 1])
        (model / "eval").mkdir(parents=True)
        (model / "eval" / "metrics.json").write_text(json.dumps(
            {"AP": steps / 1000 + seed / 100, "AP50": 0.9, "step": steps}))
        return SimpleNamespace(returncode=0)

    monkeypatch.setattr(jobs, "subprocess", SimpleNamespace(run=run, STDOUT=-2))
    args = SimpleNamespace(train_config="demo", train_set=["seed=4", "batch_size=2"])
    data = {"data": "t*.tfrecord", "val_data": "v*.tfrecord", "val_json": "v.json"}
    t = jobs.Trainer(tmp_path, args, data, last_steps=40)
    jobs.write_spec(tmp_path, "k", {"name": "k"})
    home = tmp_path / "candidates" / "k"
    assert t.train("k", "k", 40)["AP"] == pytest.approx(0.04)
    assert (home / "result.json").exists() and (home / "model").is_dir()
    assert t.train("k", "k", 10)["AP"] == pytest.approx(0.01)
    assert (home / "steps10" / "result.json").exists()
    assert t.train("k", "k", 40, seed=5)["AP"] == pytest.approx(0.09)
    assert (home / "steps40-seed5" / "result.json").exists()
    assert len(ran) == 3 and t.train("k", "k", 40, seed=5)["AP"] == pytest.approx(0.09)
    assert len(ran) == 3                                     # finished: not trained again
    cmd = ran[2]
    assert cmd[cmd.index("--spec") + 1] == str(home / "spec.yaml")
    assert cmd[-8:-6] == ["--train-set", "seed=5"] and "seed=4" in cmd     # after the user's
    sets = [ran[0][i + 1] for i, a in enumerate(ran[0]) if a == "--train-set"]
    assert sets == ["steps=40", "seed=4", "batch_size=2"]      # the settings' seed: no override
    # a finished training of an older search (its folder, its result.json) is kept as it is
    old = tmp_path / "candidates" / "old"
    old.mkdir(parents=True)
    (old / "result.json").write_text(json.dumps({"ok": True, "AP": 0.3, "AP50": 0.6}))
    assert t.train("old", "old", 40) == {"ok": True, "AP": 0.3, "AP50": 0.6} and len(ran) == 3


def _row(key, ms, ap, std, kind="candidate", phi=None):
    return {"key": key, "name": key, "kind": kind, "phi": phi, "budgets": [],
            "predicted_ms": ms, "measured_ms": ms, "AP": ap, "AP50": ap, "flops": 1,
            "params": 1, "export": "gate passed", "coverage": "", "winner_for_ms": None,
            "pareto": True, "steps": 4000, "seeds": 3, "AP_std": std,
            "AP_runs": [ap - std, ap, ap + std], "AP_by_rung": f"400:0.1;4000:{ap}",
            "retried": ""}


def test_the_report_calls_a_clear_winner_better_and_a_close_one_no_winner(tmp_path, capsys):
    for key in ("clear", "close", "fast"):
        (tmp_path / "candidates" / key).mkdir(parents=True)
        (tmp_path / "candidates" / key / "spec.yaml").write_text(yaml.safe_dump({"name": key}))
    rows = [_row("fast", 8.0, 0.40, 0.01), _row("close", 11.0, 0.42, 0.02),
            _row("clear", 15.0, 0.56, 0.01), _row("phi0", 10.0, 0.40, 0.01, "family", 0),
            _row("phi1", 20.0, 0.50, 0.01, "family", 1)]
    budgets = [{"label": f"{b:g}", "predicted_ms": b, "ms": b} for b in (9.0, 12.0, 25.0)]
    summary = write_report(tmp_path, rows, budgets, SimpleNamespace(source="space.yaml"))
    w = summary["winners"]
    clear, close, fast = w["25"], w["12"], w["9"]
    # the family at 15 ms: 0.45 ± 0.01; 0.56 - 0.45 > 2 x 0.01
    assert clear["key"] == "clear" and clear["verdict"]["verdict"] == "better"
    assert clear["vs_family"]["family_AP_at_same_ms"] == pytest.approx(0.45)
    assert clear["AP_std"] == 0.01 and clear["seeds"] == 3 and clear["steps"] == 4000
    # at 11 ms: 0.41 ± 0.01 against 0.42 ± 0.02: pooled 0.0158, 0.01 is within the noise
    assert close["key"] == "close" and close["verdict"]["verdict"] == "no winner"
    assert close["verdict"]["pooled_std"] == pytest.approx(0.0158, abs=1e-4)
    assert fast["verdict"]["verdict"] == "not judged"          # 8 ms: below the family
    for key in ("key", "spec", "AP", "AP50", "measured_ms", "predicted_ms",
                "measured_limit_ms", "vs_family"):                 # what scripts read
        assert key in clear
    assert summary["family"][0]["AP_std"] == 0.01 and summary["family"][0]["seeds"] == 3
    header = Path(clear["spec"]).read_text().splitlines()
    assert "mean ± std 0.0100 of 3 seeds, 4000 steps" in header[1]
    assert header[2].startswith("# verdict against the family: better (gain +0.1100")
    table = (tmp_path / "pareto.csv").read_text().splitlines()
    assert table[0].endswith(",steps,seeds,AP_std,AP_runs,AP_by_rung,retried")
    search.tell(summary, tmp_path)
    said = capsys.readouterr().out
    assert "budget 25 ms: verdict: better" in said and "budget 12 ms: verdict: no winner" in said
    assert "AP 0.5600 ± 0.0100 over 3 seeds at 4000 steps" in said


# ---------------------------------------------------------------- the command, stood in for
def _ap(key, steps, seed):
    """A fixed AP per model that grows with steps; candidates spread over 0.30-0.58."""
    if key.startswith("family"):
        return {"family-phi0": 0.40, "family-phi1": 0.50}[key] + steps / 1e4
    h = int(hashlib.sha256(key.encode()).hexdigest(), 16)
    return 0.30 + (h % 29) / 100 + steps / 1e4 + (seed or 0) / 1e4


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    """The command with its trainer, exporter and stopwatch stood in for; ``store`` keeps
    the finished trainings across runs, ``kill`` kills the next run after that many."""
    (tmp_path / "space.yaml").write_text(SPACE.replace("family_phi: [0]", "family_phi: [0, 1]"))
    space = space_mod.load_space(str(tmp_path / "space.yaml"))
    _latency_file(tmp_path / "ort.json", from_dict(space_mod.family_member(space, 0)), 500.0)
    for name in ("train-0.tfrecord", "val-0.tfrecord", "val.json"):
        (tmp_path / name).write_text("")
    state = SimpleNamespace(store={}, kill=None, trainers=[], exported=[])

    def trainer(out, args, data, last_steps):
        t = FakeTrainer(_ap, state.store, kill_after=state.kill)
        t.out = out
        state.trainers.append(t)
        return t

    def export(out, key, backend, threads):
        done = out / "candidates" / key / "export.json"
        if not done.exists():
            state.exported.append(key)
            done.write_text(json.dumps({"ok": True, "file": f"{key}.onnx"}))
        return json.loads(done.read_text())

    def measure(files, kind, threads):
        return {k: {"family-phi0": 10.0, "family-phi1": 20.0}.get(k, 15.0) for k in files}

    monkeypatch.setattr(search, "Trainer", trainer)
    monkeypatch.setattr(search, "export", export)
    monkeypatch.setattr(search, "measure", measure)
    return state


def _argv(tmp_path, *extra):
    return ["--space", str(tmp_path / "space.yaml"), "--latency", str(tmp_path / "ort.json"),
            "--budget-ms", "500", "--out", str(tmp_path / "out"), "--candidates", "12",
            "--train", "4", "--rounds", "1", "--parents", "2", "--children", "1",
            "--measure", "1", "--data", str(tmp_path / "train-*.tfrecord"),
            "--val-data", str(tmp_path / "val-*.tfrecord"), "--val-json",
            str(tmp_path / "val.json"), *extra]


def test_the_command_climbs_the_rungs_killed_and_resumed(tmp_path, stand_ins, capsys):
    argv = _argv(tmp_path, "--rungs", "10", "20", "40", "--seeds", "3")
    stand_ins.kill = 9                              # in the middle rung
    with pytest.raises(Killed):
        search.main(argv)
    first = stand_ins.trainers[-1].calls
    assert {s for _, s, _ in first} == {10, 20} and not (tmp_path / "out" / "summary.json").exists()
    stand_ins.kill = None
    assert search.main(argv) == 0
    again = stand_ins.trainers[-1].calls
    assert not set(first) & set(again)                       # nothing finished redone
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    ladder = json.loads((out / "rungs.json").read_text())
    at = {s: {k for k, m in ladder["models"].items() if str(s) in m} for s in (10, 20, 40)}
    assert {"family-phi0", "family-phi1"} <= at[40] and len(at[10]) == 8  # 6 trained + family
    assert len(at[20]) == 3 + 2 and len(at[40]) == 2 + 2     # 6 -> 3 -> 2, and the family
    assert summary["rungs"] == [10, 20, 40] and summary["seeds"] == 3
    assert [r["rungs"] for r in summary["rank_correlation"]] == [[10, 20], [10, 40], [20, 40]]
    assert [r["n"] for r in summary["rank_correlation"]] == [3, 2, 2]
    w = summary["winners"]["500"]
    assert w["steps"] == 40 and w["seeds"] == 3 and len(w["AP_runs"]) == 3
    assert w["verdict"]["verdict"] in ("better", "no winner")
    assert all(f["seeds"] == 3 and f["steps"] == 40 for f in summary["family"])
    said = capsys.readouterr().out
    assert "rank agreement of AP, 10 -> 20 steps: Kendall tau-b" in said
    assert f"budget 500 ms: verdict: {w['verdict']['verdict']}" in said
    # the same command once more trains nothing; other rungs into the folder are refused
    assert search.main(argv) == 0 and stand_ins.trainers[-1].calls == []
    assert search.main(_argv(tmp_path, "--rungs", "10", "40", "--seeds", "3")) == 2
    assert "rungs [10, 20, 40] there, [10, 40] here" in capsys.readouterr().err


def test_an_out_folder_from_before_the_rungs_resumes_with_its_old_flags(tmp_path, stand_ins,
                                                                        capsys):
    """settings.json as the search wrote it before --rungs / --promote / --seeds existed:
    the same old command continues there, one rung, one seed, as it did."""
    argv = _argv(tmp_path, "--steps", "30")
    out = tmp_path / "out"
    out.mkdir()
    old = {"space": search.digest(tmp_path / "space.yaml"),
           "latency": search.digest(tmp_path / "ort.json"), "seed": 0, "candidates": 12,
           "steps": 30, "train_config": "demo", "train_set": [],
           "data": [str(tmp_path / "train-*.tfrecord"), str(tmp_path / "val-*.tfrecord"),
                    str(tmp_path / "val.json")], "num_images": None}
    (out / "settings.json").write_text(json.dumps(old))
    assert search.main(argv) == 0, capsys.readouterr().err
    calls = stand_ins.trainers[-1].calls
    assert {(s, seed) for _, s, seed in calls} == {(30, None)} and len(calls) == 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rank_correlation"] == [] and summary["retried"] == []
    assert summary["winners"]["500"]["verdict"]["verdict"] == "not judged"
    assert json.loads((out / "settings.json").read_text()) == old      # left as it was
    assert search.main(_argv(tmp_path, "--steps", "30", "--seeds", "2")) == 2
    assert "seeds 1 there, 2 here" in capsys.readouterr().err
