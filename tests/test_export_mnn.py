"""exporters/to_mnn.py: an MNN file that computes what the TF model computes, or no file.

MNN is an optional extra (pip install mnn); without it these tests skip with that reason,
except the refusal, which needs no MNN. The small D0-shaped spec of
tests/test_export_onnx.py, random weights; the checks run the file with MNN's own API,
independently of the exporter's gate.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from test_export_onnx import SMALL, _images, _sets
from test_export_onnx_quant import _negate_outputs

HAVE_MNN = __import__("importlib.util").util.find_spec("MNN") is not None
needs_mnn = pytest.mark.skipif(not HAVE_MNN, reason="MNN is not installed (pip install mnn)")


@pytest.fixture(scope="module")
def mnn_file(tmp_path_factory):
    from exporters import to_mnn
    out = tmp_path_factory.mktemp("mnn") / "small.mnn"
    assert to_mnn.main(["--spec", "d0", *_sets(SMALL), "--out", str(out),
                        "--float64-factor", "0"]) == 0
    return out, json.loads(Path(str(out) + ".json").read_text())


@needs_mnn
def test_mnn_file_matches_tf_and_carries_its_metadata(mnn_file):
    import MNN

    from edetgraph.graph.spec import load_spec
    from edetgraph.task.weights import model_with_weights
    path, summary = mnn_file
    spec = load_spec("d0", SMALL)
    model = model_with_weights(spec, None, 0)[0]
    net = MNN.nn.load_module_from_file(str(path), [], [])
    info = net.get_info()
    net = MNN.nn.load_module_from_file(str(path), info["inputNames"], info["outputNames"])
    for x in _images(spec, "float"):
        x = np.ascontiguousarray(x[None], np.float32)
        got = net.forward([MNN.expr.const(x, list(x.shape), MNN.expr.NCHW)])
        want = {k: v.numpy() for k, v in model.raw_outputs(x).items()}
        for name, value in zip(info["outputNames"], got):
            value = np.array(MNN.expr.convert(value, MNN.expr.NCHW).read())
            assert value.shape == want[name].shape, name
            np.testing.assert_allclose(value, want[name], rtol=0, atol=1e-4, err_msg=name)
    meta = json.loads(info["bizCode"])            # the metadata travels inside the file
    assert meta == summary["metadata"]
    assert meta["format"] == "mnn" and meta["num_classes"] == 4 and "labels" in meta
    assert meta["anchors"]["image_size"] == [128, 128]
    assert (meta["input"]["height"], meta["input"]["layout"]) == (128, "NHWC")
    assert meta["input"]["normalisation"]["mean"] == list(spec.preprocess.mean_rgb)
    assert {o["name"]: o["shape"] for o in summary["outputs"]}["cls_l3"] == [1, 16, 16, 36]
    assert summary["format"] == "mnn" and summary["parity"]["passed"]
    assert summary["parity"]["tolerance"]["name"] == "fp32"
    assert summary["options"]["precision"] == "high"


@needs_mnn
def test_a_wrong_mnn_file_is_refused_and_nothing_written(tmp_path, monkeypatch, capsys):
    from exporters import mnn_format, to_mnn
    from exporters.cli import run_cli
    real = mnn_format.onnx_convert
    monkeypatch.setattr(mnn_format, "onnx_convert",
                        lambda *a, **k: _negate_outputs(real(*a, **k)))
    argv = ["--spec", "d0", *_sets(SMALL), "--out", str(tmp_path / "bad.mnn"),
            "--float64-factor", "0"]
    assert run_cli("to_mnn", to_mnn.main, argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("to_mnn: error: parity gate failed") and "not written" in err
    assert list(tmp_path.iterdir()) == []


@needs_mnn
def test_a_failing_converter_is_one_line(monkeypatch):
    import onnx
    from onnx import TensorProto, helper

    from exporters import mnn_format
    from exporters.options import ExportFailed
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])],
                                                "g", [x], [y]))
    onnx.checker.check_model(model)
    assert len(mnn_format.mnnconvert(model, "{}")) > 0       # the real converter takes it
    monkeypatch.setattr(mnn_format, "_MNNCONVERT",
                        "import sys\nprint('Error: no such op Foo')\nsys.exit(3)\n")
    with pytest.raises(ExportFailed) as e:
        mnn_format.mnnconvert(model, "{}")
    assert str(e.value) == "mnnconvert failed (exit 3): Error: no such op Foo"


@needs_mnn
def test_the_converter_neither_installs_packages_nor_reports_home(tmp_path, monkeypatch):
    """The mnn wheel's mnnconvert entry point loads a usage logger that pip-installs its
    client when missing (which downgraded protobuf under TensorFlow) and posts the model's and
    the machine's ids: the exporter runs the native converter alone. A stand-in ``aliyun``
    package and ``pip`` command leave a mark if either is reached."""
    import onnx
    from onnx import helper

    from exporters import mnn_format
    marks = tmp_path / "marks"
    marks.mkdir()
    fake = tmp_path / "fake"
    (fake / "aliyun").mkdir(parents=True)
    (fake / "aliyun" / "__init__.py").write_text(
        f"open({str(marks / 'aliyun')!r}, 'w').close()\n")
    (fake / "aliyun" / "log.py").write_text("LogClient = PutLogsRequest = object\n")
    (fake / "pip").write_text(f"#!/bin/sh\ntouch {marks / 'pip'}\n")
    (fake / "pip").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(fake))
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])],
                                                "g", [x], [y]))
    assert len(mnn_format.mnnconvert(model, "{}")) > 0
    assert list(marks.iterdir()) == []
    # the stand-ins work (without running the logger itself, which would post to its server)
    import subprocess
    import sys
    subprocess.run([sys.executable, "-c", "import aliyun.log"], check=True)
    subprocess.run(["pip"], check=True)
    assert sorted(p.name for p in marks.iterdir()) == ["aliyun", "pip"]


def test_without_mnn_the_request_is_refused_before_tensorflow(tmp_path, monkeypatch, capsys):
    import importlib.util

    from exporters import to_mnn
    from exporters.cli import run_cli
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "MNN" else real(name, *a))
    assert run_cli("to_mnn", to_mnn.main, ["--spec", "d0", "--out", str(tmp_path / "x.mnn")]) == 2
    assert capsys.readouterr().err.strip() == \
        "to_mnn: error: MNN is not installed (pip install mnn, or edetgraph's [mnn] extra)"


@needs_mnn
def test_mnn_runner_names_a_bad_file_in_one_line(tmp_path):
    from edetgraph.verify.runners import RunnerError, kind_for_path, make_runner
    bad = tmp_path / "bad.mnn"
    bad.write_bytes(b"\0not an mnn model" * 10)
    assert kind_for_path(bad) == "mnn"
    with pytest.raises(RunnerError) as e:
        make_runner("mnn", str(bad))
    assert str(e.value).startswith(f"{bad}: MNN cannot load it") and "\n" not in str(e.value)


def test_bench_rows_run_the_mnn_and_int8_onnx_files(tmp_path):
    """One benchmark over three rows: the MNN files, float32 and int8 (skipped with their
    reason where MNN is missing), and the int8 ONNX file (calibrated on synthetic scenes)."""
    from bench import run
    from edetgraph.data.synthetic import generate
    generate(str(tmp_path / "calib"), 4, 128, seed=3, val_fraction=0.0)
    out = tmp_path / "bench"
    argv = ["--spec", "d0", *_sets(SMALL), "--backends", "mnn-fp32,mnn-int8,onnxruntime-int8",
            "--out",
            str(out), "--runs", "3", "--warmup", "1", "--no-memory", "--representative-data",
            str(tmp_path / "calib" / "train" / "images"), "--calibration-images", "4"]
    assert run.main(argv) == 0
    rows = {r["name"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    r = rows["onnxruntime-int8"]
    assert r["status"] == "ok", r
    assert r["parity"]["passed"] and r["parity"]["tolerance"] == "int8", r["parity"]
    assert (out / "efficientdet-d0_128x128_b1_int8.onnx").is_file()
    if not HAVE_MNN:
        for name in ("mnn-fp32", "mnn-int8"):
            assert rows[name]["status"] == "skipped", rows[name]
            assert "MNN is not installed" in rows[name]["reason"]
        return
    r = rows["mnn-fp32"]
    assert r["status"] == "ok", r
    assert r["parity"]["passed"] and r["parity"]["tolerance"] == "fp32"
    assert r["parity"]["max_abs"] < 1e-4
    assert (out / "efficientdet-d0_128x128_b1.mnn").is_file()
    r = rows["mnn-int8"]
    assert r["status"] == "ok", r
    assert r["parity"]["passed"] and r["parity"]["tolerance"] == "int8", r["parity"]
    assert (out / "efficientdet-d0_128x128_b1_int8.mnn").is_file()
