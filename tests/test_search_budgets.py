"""edetgraph.search --budget-x SPEC=X: budgets as a ratio to a reference model, predicted
against the reference's prediction and judged against its latency measured in the same
session, so a search's result travels between machines. No training here: the parsing, the
budgets' arithmetic and the report on hand-made rows (the search's run end to end is in
tests/test_search.py)."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from edetgraph import search
from edetgraph.nas.common import SearchError
from edetgraph.nas.report import write_report


def test_ratio_budgets_are_parsed_and_bad_ones_refused():
    [ref] = search.parse_budget_x(["lite0=0.7"])
    assert (ref["label"], ref["ratio"], ref["key"], ref["spec"].name) == \
        ("lite0x0.7", 0.7, "reference-lite0", "efficientdet-lite0")
    for bad, words in [("lite0", "give SPEC=X"), ("=0.7", "give SPEC=X"),
                       ("lite0=0", "a ratio in (0, 100]"), ("lite0=nan", "a ratio"),
                       ("lite0=inf", "a ratio"), ("lite0=x", "a ratio"),
                       ("nosuchspec=0.5", "the reference")]:
        with pytest.raises(SearchError) as e:
            search.parse_budget_x([bad])
        assert str(e.value).startswith(f"--budget-x {bad}: ") and words in str(e.value)
    with pytest.raises(SearchError, match="given twice"):
        search.parse_budget_x(["lite0=0.7", "lite0=0.70"])


def test_predicted_and_measured_limits_follow_the_reference():
    refs = search.parse_budget_x(["lite0=0.5", "d0=2"])
    args = SimpleNamespace(budget_ms=[20.0], references=refs)
    predicted = {"efficientdet-lite0": 30.0, "efficientdet-d0": 40.0}
    budgets = search.budgets_of_run(args, lambda spec: predicted[spec.name])
    assert [(b["label"], b["predicted_ms"]) for b in budgets] == \
        [("20", 20.0), ("lite0x0.5", 15.0), ("d0x2", 80.0)]
    # measured beside the candidates on this machine, 1.5x slower than predicted for lite0;
    # d0's export failed: no measured limit, said in the report
    search.judge_budgets(budgets, {"reference-lite0": 45.0})
    assert [b["ms"] for b in budgets] == [20.0, 22.5, None]
    assert budgets[1]["reference"]["measured_ms"] == 45.0


def _row(key, ms, ap, kind="candidate"):
    return {"key": key, "name": key, "kind": kind, "phi": 0 if kind == "family" else None,
            "budgets": [], "predicted_ms": ms, "measured_ms": ms, "AP": ap, "AP50": ap,
            "flops": 1, "params": 1, "export": "gate passed", "coverage": "",
            "winner_for_ms": None, "pareto": True}


def test_the_report_judges_a_ratio_budget_by_the_measured_reference(tmp_path):
    for key in ("fast", "mid", "slow"):
        folder = tmp_path / "candidates" / key
        folder.mkdir(parents=True)
        (folder / "spec.yaml").write_text(yaml.safe_dump({"name": key, "image_size": 64}))
    rows = [_row("fast", 10.0, 0.30), _row("mid", 20.0, 0.40), _row("slow", 30.0, 0.50)]
    budgets = [{"label": "25", "predicted_ms": 25.0, "ms": 25.0},
               {"label": "lite0x0.5", "predicted_ms": 15.0, "ms": 22.5,
                "reference": {"spec": "lite0", "key": "reference-lite0", "ratio": 0.5,
                              "predicted_ms": 30.0, "measured_ms": 45.0}},
               {"label": "d0x2", "predicted_ms": 80.0, "ms": None,
                "reference": {"spec": "d0", "key": "reference-d0", "ratio": 2.0,
                              "predicted_ms": 40.0, "measured_ms": None}}]
    space = SimpleNamespace(source="space.yaml")
    summary = write_report(tmp_path, rows, budgets, space)
    w = summary["winners"]
    assert w["25"]["key"] == "mid" and w["25"]["spec"].endswith("budget-25ms.yaml")
    x = w["lite0x0.5"]
    assert x["key"] == "mid" and x["measured_limit_ms"] == 22.5      # 30 ms is over 0.5 x 45
    assert x["spec"].endswith("budget-lite0x0.5.yaml") and x["reference"]["measured_ms"] == 45
    header = Path(x["spec"]).read_text().splitlines()[0]
    assert "within 0.5 x lite0's measured 45.00 ms = 22.50 ms" in header
    assert yaml.safe_load(Path(x["spec"]).read_text())["name"] == "search-lite0x0.5-mid"
    assert "the reference d0 was not measured" in w["d0x2"]["note"]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert [b["label"] for b in saved["budgets"]] == ["25", "lite0x0.5", "d0x2"]


@pytest.mark.parametrize("argv, words", [
    ([], "give a budget"),
    (["--budget-x", "lite0=-1"], "--budget-x lite0=-1: give SPEC=X"),
    (["--budget-ms", "10", "--budget-x", "nosuchspec=0.5"], "the reference"),
])
def test_the_command_refuses_a_missing_or_bad_budget_in_one_line(tmp_path, capsys, argv, words):
    code = search.main(["--latency", str(tmp_path / "m.json"), "--out", str(tmp_path / "o"),
                        *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "o").exists()


def test_the_reference_is_exported_by_the_candidates_exporter_and_timed(tmp_path, monkeypatch):
    """The reference's file is made by the command the candidates' files are (here a stand-in
    that writes a tiny ONNX model: the exporters are tested on their own), with random
    weights (no --ckpt), and timed by the same stopwatch; a second call reuses it, and a
    failed export is a record with its reason, not an exception."""
    import _tiny_models as tiny

    from edetgraph.nas import jobs
    model = tiny.write_tiny_models(tmp_path / "tiny")["onnx"]
    fake = tmp_path / "fake_exporter.py"
    fake.write_text("import shutil, sys\n"
                    "a = sys.argv[1:]\n"
                    "assert '--ckpt' not in a and a[a.index('--spec') + 1] == 'lite0'\n"
                    "if a[a.index('--threads') + 1] != '1': sys.exit('error: no such luck')\n"
                    f"shutil.copy({str(model)!r}, a[a.index('--out') + 1])\n")
    monkeypatch.setitem(jobs.EXPORTS, "onnxruntime", (str(fake), [], ".onnx", "onnxruntime"))
    rec = jobs.export_reference(tmp_path, "reference-lite0", "lite0", "onnxruntime", 1)
    assert rec["ok"], rec
    assert Path(rec["file"]) == tmp_path / "references" / "reference-lite0" / "model.onnx"
    assert jobs.export_reference(tmp_path, "reference-lite0", "lite0", "onnxruntime", 1) == rec
    ms = jobs.measure({"reference-lite0": rec["file"]}, "onnxruntime", 1, rounds=1, runs=2)
    assert ms["reference-lite0"] > 0
    bad = jobs.export_reference(tmp_path, "reference-bad", "lite0", "onnxruntime", 2)
    assert not bad["ok"] and bad["reason"] == "error: no such luck"
