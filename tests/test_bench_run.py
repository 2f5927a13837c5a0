"""python -m bench.run: the benchmark harness end to end on a tiny spec, and its parts."""
import contextlib
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import config, exports, harness, quality, report
from bench.run import main
from edetgraph.verify.detections import agreement, match_detections

ROOT = Path(__file__).resolve().parents[1]
# A very small detector: conversion time is mostly per node, so fewer cells (and three
# pyramid levels) convert faster.
TINY = ["image_size=128", "fpn.repeats=1", "head.repeats=1", "fpn.channels=16",
        "backbone.depth=0.2", "anchors.max_level=5"]
BACKENDS = "tf,onnxruntime,tflite-fp32,tflite-int8"


def _cli(argv):
    """main(argv) in this process: (exit status, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main([str(a) for a in argv])
    return status, out.getvalue()


def _args(out, data, extra=()):
    sets = [x for s in TINY for x in ("--set", s)]
    return ["--spec", "demo", *sets, "--backends", BACKENDS, "--runs", 5, "--warmup", 1,
            "--data", data / "val", "--annotations", data / "val" / "instances.json",
            "--calibration-images", 4, "--out", out, "--quiet", *extra]


@pytest.fixture(scope="module")
def bench_runs(tmp_path_factory):
    """Run 1 exports and measures everything; run 2 reuses the files and merges a
    device_runner result made from run 1's fp32 TFLite file."""
    from edetgraph.data.synthetic import generate
    data, out = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("bench")
    generate(data, 6, 128, seed=3, val_fraction=0.5)
    first = _cli(_args(out, data))
    results1 = json.loads((out / "results.json").read_text())
    csv1 = (out / "results.csv").read_text()
    rows1 = {r["name"]: r for r in results1["rows"]}
    mtimes = {n: os.path.getmtime(r["file"]) for n, r in rows1.items() if r.get("file")}
    device_json = out / "device_pi.json"
    proc = subprocess.run([sys.executable, ROOT / "bench" / "device_runner.py",
                           rows1["tflite-fp32"]["file"], "--runs", "3", "--warmup", "1",
                           "--label", "ci-pi", "--out", device_json],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    second = _cli(_args(out, data, ["--no-memory", "--device-results", device_json]))
    results2 = json.loads((out / "results.json").read_text())
    return {"out": out, "data": data, "first": first, "csv1": csv1, "second": second,
            "mtimes": mtimes, "rows1": rows1, "results1": results1, "results2": results2}


@pytest.mark.slow
def test_every_backend_has_status_and_figures(bench_runs):
    status, printed = bench_runs["first"]
    out, rows = bench_runs["out"], bench_runs["rows1"]
    assert status == 0, printed
    assert all((out / f"results.{k}").stat().st_size > 0 for k in ("json", "csv", "png"))
    assert list(rows) == BACKENDS.split(",")
    for name in ("tf", "onnxruntime", "tflite-fp32", "tflite-int8"):
        row = rows[name]
        assert row["status"] == "ok", (name, row["reason"])
        lat = row["latency"]
        assert lat["runs"] == 5 and 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"]
        assert lat["throughput_ips"] > 0 and row["load_s"] > 0
        assert row["memory"]["peak_mb"] > row["memory"]["baseline_mb"] > 0
        assert 0.0 <= row["ap"]["AP"] <= 1.0 and row["ap"]["images"] == 3
        assert row["export"]["reused"] is False if row.get("file") else "export" not in row
    assert rows["tflite-int8"]["file_bytes"] < rows["tflite-fp32"]["file_bytes"] / 2
    assert "interleaved" in printed and "load average" in printed
    csv_rows = {r["name"]: r for r in csv.DictReader(io.StringIO(bench_runs["csv1"]))}
    assert float(csv_rows["onnxruntime"]["p50_ms"]) == rows["onnxruntime"]["latency"]["p50_ms"]


@pytest.mark.slow
def test_parity_fp32_within_1e4_and_int8_on_its_own_tolerance(bench_runs):
    rows = bench_runs["rows1"]
    for name in ("onnxruntime", "tflite-fp32"):
        p = rows[name]["parity"]
        assert p["tolerance"] == "fp32" and p["passed"] and p["max_abs"] <= 1e-4, (name, p)
        assert 0 < p["float64"]["tf_max_abs"] < 1e-4 and 0 < p["float64"]["file_max_abs"] < 1e-4
        assert "street.jpg" in p["inputs"] and "random-0" in p["inputs"]
        det = rows[name]["detections"]
        assert det["tf_detections"] > 0 and det["fraction"] == 1.0, det
    assert rows["tf"]["parity"]["tolerance"] == "ref"
    assert rows["tf"]["detections"]["fraction"] == 1.0
    int8 = rows["tflite-int8"]["parity"]
    assert int8["tolerance"] == "int8" and "RMSE/std" in int8["limit"]
    assert int8["max_abs"] > 1e-4  # it would fail the fp32 rule: flagged by kind, not hidden
    assert int8["passed"] and all(0 < v < 1 for v in int8["nrmse"].values())


@pytest.mark.slow
def test_rerun_reuses_exports_and_merges_device_results(bench_runs):
    status, printed = bench_runs["second"]
    assert status == 0, printed
    rows = {r["name"]: r for r in bench_runs["results2"]["rows"]}
    for name, mtime in bench_runs["mtimes"].items():
        assert rows[name]["export"]["reused"] is True
        assert os.path.getmtime(rows[name]["file"]) == mtime
    [device] = bench_runs["results2"]["device_rows"]
    assert device["label"] == "ci-pi" and device["backend"] == "tflite" and not device["host"]
    assert "Device results" in printed and "tflite@ci-pi" in printed
    with open(bench_runs["out"] / "results.csv") as f:
        names = [r["name"] for r in csv.DictReader(f)]
    assert "tflite@ci-pi" in names


@pytest.mark.slow
def test_changed_spec_or_options_are_not_reused(bench_runs):
    from edetgraph.graph.spec import load_spec
    path = bench_runs["rows1"]["tflite-int8"]["file"]
    rep = str(bench_runs["data"] / "val" / "images")
    cfg = config.BenchConfig(spec=load_spec("demo", TINY), out=str(bench_runs["out"]),
                              calibration_images=4, data=str(bench_runs["data"] / "val"))
    assert exports.stale_reason(path, exports._wanted(cfg, "tflite-int8", rep)) is None
    cfg.spec = load_spec("demo", TINY + ["fpn.weight_method=sum"])
    assert "spec" in exports.stale_reason(path, exports._wanted(cfg, "tflite-int8", rep))
    cfg.spec, cfg.calibration_images = load_spec("demo", TINY), 5
    assert "options" in exports.stale_reason(path, exports._wanted(cfg, "tflite-int8", rep))
    cfg.calibration_images, cfg.seed = 4, 1
    assert "weights" in exports.stale_reason(path, exports._wanted(cfg, "tflite-int8", rep))
    cfg.seed = 0   # the same request from other exporter code: made again
    wanted = exports._wanted(cfg, "tflite-int8", rep)
    wanted["key"]["code_sha256"] = "0" * 64
    assert "code" in exports.stale_reason(path, wanted)


@pytest.mark.slow
def test_triage_data_exports_the_int8_row_through_the_triage(bench_runs):
    out, data = bench_runs["out"], bench_runs["data"]
    assert (data / "train" / "instances.json").is_file()
    argv = _args(out, data, ["--no-memory", "--triage-data", data / "train",
                             "--max-ap-drop", 100])
    argv[argv.index("--backends") + 1] = "tflite-int8"
    status, printed = _cli(argv)
    assert status == 0, printed
    row = json.loads((out / "results.json").read_text())["rows"][0]
    assert row["name"] == "tflite-int8" and row["status"] == "ok"
    assert row["export"]["reused"] is False and "triage" in row["export"]["why"]
    # no tf row in this table, yet the int8 row is judged against TF's AP on --data
    assert row["accuracy"]["passed"] and "ap_drop_points" in row["accuracy"]
    triage = row["triage"]   # the bound is wide: the full int8 file is measured and kept
    assert triage["bound_points"] == 100 and triage["float_layers"] == []
    assert len(triage["trials"]) == 1 and triage["trials"][0]["float_layers"] == 0
    assert "triage on --triage-data kept 0 layer(s)" in printed


# ------------------------------------------------------------------------- fast tests

def test_triage_options_without_triage_data_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--spec", "demo", "--max-ap-drop", "1", "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 or "usage" in err[0]
    assert "--max-ap-drop need --triage-data" in err[-1] or "need --triage-data" in err[-1]
    assert not list(tmp_path.iterdir())


def test_unavailable_runtime_is_skipped_with_the_reason(monkeypatch):
    real = config.importlib.util.find_spec
    monkeypatch.setattr(config.importlib.util, "find_spec",
                        lambda name: None if name == "onnxruntime" else real(name))
    rows = harness.plan_rows(["tf", "onnxruntime", "tflite-fp32", "tpu"])
    assert rows["onnxruntime"] == dict(rows["onnxruntime"], status="skipped",
                                       reason="onnxruntime is not installed here")
    assert rows["tpu"]["status"] == "skipped" and "known: tf, tf-xla" in rows["tpu"]["reason"]
    assert rows["tf"]["status"] == rows["tflite-fp32"]["status"] == "pending"


def test_a_failed_export_is_a_failed_row_with_the_reason(monkeypatch):
    from exporters.options import ExportFailed

    def fail(cfg, backend, row, say):
        raise ExportFailed("parity gate failed, x.onnx not written: cls_l3: max |diff| 0.2")
    monkeypatch.setattr(exports, "ensure_export", fail)
    rows = harness.plan_rows(["onnxruntime"])
    assert harness._file_runners(config.BenchConfig(spec=None), rows, lambda m: None) == {}
    assert rows["onnxruntime"]["status"] == "failed"
    assert rows["onnxruntime"]["reason"] == ("export: parity gate failed, x.onnx not written: "
                                             "cls_l3: max |diff| 0.2")


def test_config_problems_are_named():
    cfg = config.BenchConfig(spec=None)
    assert cfg.problem() is None
    cfg.runs = 0
    assert cfg.problem() == "--runs 0: must be at least 1"
    cfg.runs, cfg.data = 5, "val/"
    assert "--annotations" in cfg.problem()
    cfg.data, cfg.backends = None, ("tf", "bogus")
    assert cfg.problem() == ("--backends: unknown backend 'bogus' (known: "
                             f"{', '.join(config.BACKENDS)})")


def _dets(boxes, scores, classes):
    n = len(scores)
    return {"boxes": np.asarray([boxes], np.float32).reshape(1, n, 4),
            "scores": np.asarray([scores], np.float32), "classes": np.asarray([classes], float),
            "num_detections": np.asarray([n])}


def test_detection_matching_needs_class_and_overlap():
    ref = _dets([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60], [0, 128, 10, 128]],
                [0.9, 0.8, 0.2, 0.5], [1, 2, 3, 4])
    assert match_detections(ref, ref)[:2] == (3, 3)  # 0.2 is below the cut
    moved = _dets([[0, 0, 10, 10], [22, 22, 42, 42], [50, 50, 60, 60], [0, 128, 10, 128]],
                  [0.85, 0.8, 0.2, 0.1], [1, 2, 3, 5])
    considered, matched, diffs = match_detections(ref, moved)
    # box 2 moved to IoU 0.68 (< 0.9); box 4 (clipped flat at the border) has another class
    assert (considered, matched) == (3, 1) and diffs == pytest.approx([0.05])
    summary = agreement([(considered, matched, diffs)])
    assert summary["fraction"] == pytest.approx(1 / 3)
    assert agreement([(0, 0, [])])["fraction"] is None


def test_raw_parity_uses_the_kind_tolerance():
    rng = np.random.default_rng(0)
    inputs = [(["random-0"], None, False), (["street.jpg"], None, True)]
    ref = [{"cls_l3": rng.normal(size=(1, 4, 4, 9)), "box_l3": rng.normal(size=(1, 4, 4, 36))}
           for _ in inputs]
    close = [{k: v + 5e-5 for k, v in r.items()} for r in ref]
    p = quality.raw_parity("onnxruntime", ref, close, inputs, num_classes=1)
    assert p["passed"] and p["max_abs"] == pytest.approx(5e-5) and p["tolerance"] == "fp32"
    off = [dict(r, box_l3=r["box_l3"] + 1e-3) for r in ref]
    p = quality.raw_parity("tflite-fp32", ref, off, inputs, num_classes=1)
    assert not p["passed"] and p["failures"][0].startswith("box_l3: max |diff|")
    # beyond 1e-4, float64 decides: TF 1.5e-4 above it, the backend 1e-4 below: rounding
    exact = [{k: v - 1.5e-4 for k, v in r.items()} for r in ref]
    below = [{k: v - 2.5e-4 for k, v in r.items()} for r in ref]
    assert not quality.raw_parity("onnxruntime", ref, below, inputs, num_classes=1)["passed"]
    p = quality.raw_parity("onnxruntime", ref, below, inputs, exact, num_classes=1)
    assert p["passed"] and p["float64"] == pytest.approx({"tf_max_abs": 1.5e-4,
                                                          "file_max_abs": 1e-4})
    p = quality.raw_parity("onnxruntime", ref, off, inputs, exact,  # 1e-3 off: 7x TF's own
                           num_classes=1)
    assert not p["passed"] and "from the float64 result" in p["failures"][0]
    # int8: garbage on random pixels is outside its gate, garbage on real pictures is not
    noisy = [dict(ref[0], cls_l3=ref[0]["cls_l3"] + 10.0), ref[1]]
    assert quality.raw_parity("tflite-int8", ref, noisy, inputs, num_classes=1)["passed"]
    assert not quality.raw_parity("tflite-int8", ref, noisy[::-1], inputs,
                                  num_classes=1)["passed"]


def _fake_results(tmp_path, with_ap: bool):
    lat = {"p50_ms": 10.0, "p90_ms": 12.0, "mean_ms": 10.5, "min_ms": 9.0, "max_ms": 13.0,
           "std_ms": 1.0, "runs": 5, "batch": 1, "throughput_ips": 95.0}
    rows = [{"name": n, "backend": n, "host": True, "status": "ok", "reason": None,
             "latency": dict(lat, p50_ms=p50, p90_ms=p50 + 2), "load_s": 0.1, "file_bytes": 2 ** 20,
             "ap": {"AP": 0.3, "AP50": 0.5} if with_ap else None}
            for n, p50 in (("tf", 20.0), ("onnxruntime", 8.0))]
    rows.append({"name": "tflite-fp16", "backend": "tflite-fp16", "host": True,
                 "status": "failed", "reason": "export: parity gate failed"})
    device = {"name": "tflite@pi", "host": False, "runtime": "ai_edge_litert 2.3.0",
              "threads": 4, "file_bytes": 2 ** 21, "init_ms": 12.0, "device": "pi (Linux)",
              **lat}
    return {"spec": "tiny", "image_size": [128, 128], "weights": {"source": "random"},
            "config": {"batch": 1, "threads": 2}, "method": "interleaved method text",
            "notes": {"memory": "what it means"}, "rows": rows, "device_rows": [device],
            "machine": {"cpu": "cpu", "cpus_usable": 2, "cpu_count": 2, "system": "Linux",
                        "load_average_start": [1.0, 1.0, 1.0],
                        "load_average_end": [2.0, 2.0, 2.0]}}


@pytest.mark.parametrize("with_ap", [False, True])
def test_report_files_and_table(tmp_path, with_ap):
    results = _fake_results(tmp_path, with_ap)
    text = report.format_report(results)
    assert "tflite-fp16: failed: export: parity gate failed" in text
    assert "tflite@pi" in text and "[1.0, 1.0, 1.0] at start" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("onnxruntime"))
    assert " 2.50 " in line  # x TF: 20 ms / 8 ms
    paths = report.write_report(results, str(tmp_path))
    assert Path(paths["png"]).read_bytes()[:4] == b"\x89PNG"
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["tf", "onnxruntime", "tflite-fp16", "tflite@pi"]
    assert rows[3]["host"] == "False" and rows[2]["reason"].startswith("export:")


def test_cli_refuses_bad_requests_in_one_line(tmp_path, capsys):
    assert main(["--spec", "no-such-spec", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-spec" in err[0]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "something else"}))
    assert main(["--spec", "demo", "--device-results", str(bad), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "not a device_runner result" in err[0]
    with pytest.raises(SystemExit) as exc:
        main(["--spec", "demo", "--data", str(tmp_path)])
    assert exc.value.code == 2 and "--annotations" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:   # a typo is a bad request, not a skipped row
        main(["--spec", "demo", "--backends", "tf,bogus", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1
    assert err[0].startswith("python -m bench.run: error: --backends: unknown backend 'bogus'")
    assert not (tmp_path / "o").exists()


def test_data_folder_defaults_its_annotations(tmp_path):
    from bench.run import build_parser, config as make_config
    (tmp_path / "instances.json").write_text("{}")
    args = build_parser().parse_args(["--spec", "demo", "--data", str(tmp_path)])
    cfg = make_config(args, None)
    assert cfg.annotations == str(tmp_path / "instances.json") and cfg.problem() is None
    args = build_parser().parse_args(["--spec", "demo", "--data", str(tmp_path),
                                      "--annotations", "mine.json"])
    assert make_config(args, None).annotations == "mine.json"


def test_the_report_files_appear_whole(tmp_path, monkeypatch):
    """Each report file appears whole or not at all: a failure while drawing the picture
    leaves no partial results.png (nor a temporary) beside the JSON and CSV."""
    results = {"rows": [], "device_rows": [], "spec": "demo", "image_size": [64, 64],
               "config": {"batch": 1, "threads": 1}, "machine": {"load_average_start": [0.0]}}
    (tmp_path / "results.json").write_text("old\n")

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "plot", broken)
    with pytest.raises(OSError):
        report.write_report(results, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["results.csv", "results.json"]
    assert json.loads((tmp_path / "results.json").read_text())["spec"] == "demo"


@pytest.mark.slow
def test_openvino_end_to_end_and_peer_rows(bench_runs, tmp_path):
    """OpenVINO rows, end-to-end rows beside the TF Detector, and a foreign model timed
    beside ours; without --data a quantised row says its accuracy is unverified. Run into
    the module's folder: openvino-fp32 runs the ONNX file the onnxruntime row exported."""
    pytest.importorskip("openvino", reason="openvino is not installed (pip install openvino)")
    import tf2onnx
    from _tiny_models import tiny_function
    fn = tiny_function()
    peer = tmp_path / "peer.onnx"
    tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=17,
                                  output_path=str(peer))
    sets = [x for s in TINY for x in ("--set", s)]
    backends = "tf,openvino-fp32,openvino-int8,tf-e2e,onnxruntime-e2e,tflite-fp32-e2e"
    status, printed = _cli(["--spec", "demo", *sets, "--backends", backends, "--runs", 3,
                            "--warmup", 1, "--calibration-images", 4, "--no-memory",
                            "--peer", f"tiny={peer}", "--out", bench_runs["out"], "--quiet"])
    assert status == 0, printed
    rows = {r["name"]: r for r in json.loads((bench_runs["out"] / "results.json").read_text())
            ["rows"]}
    assert rows["openvino-fp32"]["export"]["reused"] is True
    assert rows["openvino-fp32"]["file"] == bench_runs["rows1"]["onnxruntime"]["file"]
    assert list(rows) == backends.split(",") + ["tiny"]
    assert all(r["status"] == "ok" for r in rows.values()), {n: r["reason"] for n, r in
                                                             rows.items()}
    assert rows["openvino-fp32"]["parity"]["passed"] and rows["openvino-fp32"]["parity"][
        "max_abs"] < 1e-4
    assert rows["openvino-fp32"]["coverage"]["requested"] == "f32"
    assert rows["openvino-int8"]["file"].endswith("_ov_int8.xml")
    assert rows["openvino-int8"]["accuracy"]["verified"] is False
    assert "accuracy UNVERIFIED" in printed
    for name in ("onnxruntime-e2e", "tflite-fp32-e2e"):
        assert rows[name]["detections"]["fraction"] == 1.0, (name, rows[name]["detections"])
        assert rows[name]["parity"]["passed"] and rows[name]["latency"]["runs"] == 3
    assert rows["tflite-fp32-e2e"]["nms"] == "fast" and rows["onnxruntime-e2e"]["nms"] == "hard"
    assert rows["tiny"]["parity"]["tolerance"] == "n/a" and rows["tiny"]["latency"]["p50_ms"] > 0
    assert "tiny" in printed and "coverage" in printed


def test_peer_arguments_are_checked(tmp_path, capsys):
    from bench.peers import parse_peers
    (tmp_path / "m.onnx").write_bytes(b"x")
    assert parse_peers([f"a={tmp_path / 'm.onnx'}"]) == {"a": str(tmp_path / "m.onnx")}
    for bad, why in (("noequals", "expected NAME=FILE"), (f"tf={tmp_path / 'm.onnx'}", "taken"),
                     (f"b={tmp_path / 'none.onnx'}", "no such file")):
        with pytest.raises(ValueError, match=why):
            parse_peers([bad])
    with pytest.raises(SystemExit) as e:
        main(["--spec", "demo", "--peer", "broken", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--peer 'broken'" in capsys.readouterr().err
