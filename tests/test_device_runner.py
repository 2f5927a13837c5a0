"""bench/device_runner.py without TensorFlow, and bench.device merging its JSON."""
import json
import shutil
import sys
from pathlib import Path

import _tiny_models as tiny
import numpy as np
import pytest

from bench import device_runner
from bench.device import DeviceResultError, load_device_results, validate_device_result
from bench.latency import STAT_KEYS

RUNNER = Path(__file__).parents[1] / "bench" / "device_runner.py"
# Everything a device lacks: TensorFlow and its converters, and this repository's code.
BLOCKED = ["tensorflow", "tf2onnx", "keras", "tf_keras", "bench", "edetgraph"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny.write_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def device_dir(tmp_path_factory):
    """A copy of the runner alone in a folder, as it would sit on a phone."""
    folder = tmp_path_factory.mktemp("device")
    shutil.copy(RUNNER, folder / "device_runner.py")
    return folder


def test_blocking_bootstrap_really_blocks(device_dir, tmp_path):
    script = tmp_path / "imports_tf.py"
    script.write_text("import tensorflow\n")
    proc, log = tiny.run_blocked(script, [], BLOCKED, tmp_path / "log.json", cwd=device_dir)
    assert proc.returncode != 0 and "import of tensorflow is blocked" in proc.stderr
    assert log["attempts"] == ["tensorflow"]


# fp32 files match the TF function to float rounding; int8 to 3 output steps (the
# tolerance is explained in test_bench_runners.py).
HAVE_MNN = __import__("importlib.util").util.find_spec("MNN") is not None


def _mnn_file(models, folder):
    """The tiny ONNX model converted by MNN's converter (as exporters/to_mnn.py does)."""
    import onnx

    from exporters.mnn_format import mnnconvert
    path = folder / "tiny.mnn"
    path.write_bytes(mnnconvert(onnx.load(str(models["onnx"])), "{}"))
    return path


HAVE_NCNN = all(__import__("importlib.util").util.find_spec(m) for m in ("ncnn", "pnnx"))


def _ncnn_file(models, folder):
    """The tiny ONNX model converted by pnnx (as exporters/to_ncnn.py does), its metadata
    beside it as the exporter writes it."""
    import onnx

    from exporters.ncnn_format import pnnx_convert
    param, weights = pnnx_convert(onnx.load(str(models["onnx"])))
    path = folder / "tiny.param"
    path.write_text(param)
    (folder / "tiny.bin").write_bytes(weights)
    (folder / "tiny.json").write_text(json.dumps({"model": "tiny", "num_classes": 2}))
    return path


@pytest.mark.parametrize("variant", ["onnx", "tflite", "tflite_int8", pytest.param(
    "mnn", marks=pytest.mark.skipif(not HAVE_MNN, reason="MNN is not installed (pip install mnn)")),
    pytest.param("ncnn", marks=pytest.mark.skipif(
        not HAVE_NCNN, reason="ncnn or pnnx is not installed (pip install ncnn; pip install "
        "--no-deps pnnx)"))])
def test_device_runner_without_tensorflow(models, device_dir, tmp_path, variant):
    if variant == "mnn":
        models = dict(models, mnn=_mnn_file(models, tmp_path))
    if variant == "ncnn":
        models = dict(models, ncnn=_ncnn_file(models, tmp_path))
    x = tiny.sample_input(11)
    np.save(tmp_path / "x.npy", x)
    out_json, out_npz = tmp_path / f"{variant}.json", tmp_path / "outputs.npz"
    args = [models[variant], "--runs", 4, "--warmup", 1, "--threads", 1, "--input",
            tmp_path / "x.npy", "--label", "ci-box", "--out", out_json, "--save-outputs", out_npz]
    proc, log = tiny.run_blocked(device_dir / "device_runner.py", args, BLOCKED,
                                 tmp_path / "log.json", cwd=device_dir)
    assert proc.returncode == 0, proc.stderr
    assert log == {"attempts": [], "loaded": []}  # never even tried to import them
    result = json.loads(proc.stdout)
    assert result == json.loads(out_json.read_text())
    validate_device_result(result)
    assert result["latency"]["runs"] == 4 and result["runtime"]["threads"] == 1
    assert result["runtime"]["name"] == {"onnx": "onnxruntime", "mnn": "mnn",
                                         "ncnn": "ncnn"}.get(variant, "ai_edge_litert")
    assert result["model"]["bytes"] == models[variant].stat().st_size
    assert [s["shape"] for s in result["inputs"]] == [list(tiny.INPUT_SHAPE)]
    assert result["environment"]["numpy"] == np.__version__

    ref = tiny.reference_outputs(x)
    saved = np.load(out_npz)
    for (name, quant), want in zip(((o["name"], o["quantization"]) for o in result["outputs"]),
                                   ref.values()):
        tol = 3 * quant[0] if quant else 1e-5
        np.testing.assert_allclose(saved[name], want, rtol=0, atol=tol)

    [row] = load_device_results([out_json])
    assert row["label"] == "ci-box" and row["host"] is False
    assert row["backend"] == {"onnx": "onnxruntime", "mnn": "mnn", "ncnn": "ncnn"}.get(
        variant, "tflite")
    if variant == "ncnn":   # the metadata beside the .param is read as the file's own
        assert result["file_says"]["model"] == "tiny" and result["file_says"]["num_classes"] == 2
    assert row["runtime"].startswith(result["runtime"]["name"] + " ")
    assert all(row[k] == result["latency"][k] for k in STAT_KEYS)


def _error_line(capsys, argv):
    assert device_runner.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and "Traceback" not in "\n".join(err)
    return err[-1]


def test_device_runner_clear_errors(models, tmp_path, capsys):
    np.save(tmp_path / "small.npy", np.zeros((1, 8, 8, 3), np.float32))
    (tmp_path / "junk.tflite").write_bytes(b"junk")
    cases = [
        ([tmp_path / "missing.tflite"], "missing.tflite: no such file"),
        ([tmp_path / "model.pb"],
         "model.pb: expected a .tflite, .onnx, .mnn, NCNN .param or OpenVINO .xml file"),
        ([tmp_path / "junk.tflite"], "junk.tflite: ai_edge_litert cannot load it"),
        ([models["tflite"], "--input", tmp_path / "small.npy"],
         "small.npy: shape [1, 8, 8, 3] does not fit input 'images' [1, 16, 16, 3]"),
        ([models["onnx"], "--input", tmp_path / "none.npy"], "none.npy: no such input file"),
        ([models["onnx"], "--delegate", "x.so"], "--delegate is for .tflite models"),
        ([models["tflite"], "--provider", "CUDAExecutionProvider"], "--provider is for .onnx"),
    ]
    for argv, message in cases:
        line = _error_line(capsys, argv)
        assert line.startswith("device_runner: error: ") and message in line, line


def test_device_runner_missing_runtime(models, capsys, monkeypatch):
    for name in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime",
                 "tflite_runtime.interpreter", "onnxruntime", "MNN", "ncnn"):
        monkeypatch.setitem(sys.modules, name, None)
    assert "no TFLite runtime installed" in _error_line(capsys, [models["tflite"]])
    assert "onnxruntime is not installed" in _error_line(capsys, [models["onnx"]])
    fake = Path(models["onnx"]).with_suffix(".mnn")
    fake.write_bytes(b"x")
    assert "MNN is not installed: pip install mnn" in _error_line(capsys, [fake])
    fake = Path(models["onnx"]).with_suffix(".param")
    fake.write_text("7767517\n")
    assert "ncnn is not installed: pip install ncnn" in _error_line(capsys, [fake])


def test_device_runner_help_and_bad_counts(capsys):
    with pytest.raises(SystemExit) as done:
        device_runner.main(["--help"])
    text = capsys.readouterr().out
    assert done.value.code == 0 and "--delegate" in text and "ai-edge-litert" in text
    with pytest.raises(SystemExit) as done:
        device_runner.main(["m.tflite", "--runs", "0"])
    assert done.value.code == 2


def _valid_result():
    stats = {k: v for k, v in zip(STAT_KEYS, (2.0, 3.0, 2.2, 1.5, 4.0, 0.5))}
    return {"schema": device_runner.SCHEMA, "label": "pi4",
            "timestamp": "2025-01-01T00:00:00+00:00",
            "model": {"name": "d0.tflite", "bytes": 10, "sha256": "ab", "format": "tflite"},
            "runtime": {"name": "tflite_runtime", "version": "2.14.0", "threads": 4,
                        "delegate": None},
            "latency": {**stats, "runs": 50, "batch": 1, "throughput_ips": 454.5},
            "environment": {"device": "Raspberry Pi 4 Model B", "machine": "aarch64",
                            "system": "Linux", "cpu_count": 4},
            "init_ms": 12.0}


def test_load_device_results_validates(tmp_path):
    good = _valid_result()
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "pi4.json").write_text(json.dumps(good))
    [row] = load_device_results([tmp_path / "dir"])
    assert row["name"] == "tflite@pi4"
    assert row["device"] == "Raspberry Pi 4 Model B (Linux aarch64, 4 CPUs)"
    assert row["runtime"] == "tflite_runtime 2.14.0" and row["p50_ms"] == 2.0

    bad_cases = {
        "schema": ({**good, "schema": "other/2"}, "not a device_runner result"),
        "missing": ({**good, "model": {"name": "d0.tflite"}}, "missing key 'model.bytes'"),
        "order": ({**good, "latency": {**good["latency"], "p50_ms": 9.0}}, "out of order"),
        "type": ({**good, "latency": {**good["latency"], "mean_ms": "fast"}},
                 "'latency.mean_ms' should be"),
        "format": ({**good, "model": {**good["model"], "format": "pt"}}, "'model.format' is 'pt'"),
    }
    for name, (data, message) in bad_cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(DeviceResultError, match=f"{name}.json: .*{message}"):
            load_device_results([path])
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DeviceResultError, match="broken.json: not valid JSON"):
        load_device_results([tmp_path / "broken.json"])
