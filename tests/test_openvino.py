"""OpenVINO as a backend (an optional runtime: skipped with the reason where it is absent):
the runner on an ONNX file in f32 and bf16, bf16 refused where the CPU lacks it, the
int8 export through NNCF, and the device runner."""
import json
import subprocess
import sys

import numpy as np
import pytest

ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install openvino)")

from conftest import ROOT  # noqa: E402
from edetgraph.verify import ov_runner  # noqa: E402
from edetgraph.verify.runners import RunnerError, kind_for_path, make_runner  # noqa: E402


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    import tf2onnx
    from _tiny_models import sample_input, tiny_function
    fn = tiny_function()
    path = tmp_path_factory.mktemp("ov") / "tiny.onnx"
    tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=17,
                                  output_path=str(path))
    return path, sample_input(), {k: v.numpy() for k, v in fn(sample_input()).items()}


def test_openvino_f32_runs_the_onnx_file_like_tf(tiny_onnx):
    path, x, want = tiny_onnx
    r = make_runner("openvino", path, 1)
    got = r.run(x)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=1e-5, err_msg=k)
    info = r.info()
    assert info["runtime"] == "openvino" and info["accelerator"] == "CPU f32"
    assert info["file_bytes"] == path.stat().st_size


def test_openvino_shared_outputs_and_copied_outputs(tiny_onnx):
    path, x, want = tiny_onnx
    r = make_runner("openvino", path, 1)
    shared, kept = r.run_shared(x), r.run(x)
    again = r.run_shared(x * 0.5)
    k = next(iter(want))
    assert np.shares_memory(shared[k], again[k]) and not np.shares_memory(kept[k], again[k])
    for k in want:
        np.testing.assert_allclose(kept[k], want[k], atol=1e-5, err_msg=k)


def test_openvino_bf16_runs_where_the_cpu_has_it_else_is_refused(tiny_onnx, monkeypatch):
    path, x, want = tiny_onnx
    ok, why = ov_runner.cpu_has_bf16()
    if ok:
        got = make_runner("openvino", path, 1, precision="bf16").run(x)
        for k in want:
            scale = float(np.abs(want[k]).max())
            assert float(np.abs(got[k] - want[k]).max()) < 0.05 * scale, k
    monkeypatch.setattr(ov_runner, "cpu_has_bf16", lambda: (False, "this CPU has no bf16"))
    with pytest.raises(RunnerError) as err:
        make_runner("openvino", path, 1, precision="bf16")
    assert "bf16 refused: this CPU has no bf16" in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_precision_and_file_kind(tiny_onnx):
    with pytest.raises(RunnerError, match="precision 'fp8'"):
        make_runner("openvino", tiny_onnx[0], 1, precision="fp8")
    assert kind_for_path("m.xml") == "openvino" and kind_for_path("m.onnx") == "onnxruntime"


def test_device_runner_runs_an_onnx_file_in_openvino(tiny_onnx, tmp_path):
    path, _, _ = tiny_onnx
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "device_runner.py"), str(path),
                           "--openvino", "f32", "--runs", "3", "--warmup", "1", "--out",
                           str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["runtime"]["name"] == "openvino" and result["latency"]["runs"] == 3
    from bench.device import load_device_results
    [row] = load_device_results([str(out)])
    assert row["backend"] == "openvino" and row["name"].startswith("openvino@")


@pytest.mark.slow
def test_int8_export_through_nncf(tmp_path):
    pytest.importorskip("nncf", reason="nncf is not installed (pip install nncf)")
    from edetgraph.data.synthetic import generate
    from edetgraph.graph.spec import load_spec
    from exporters.openvino_format import OpenVinoFormat
    from exporters.options import ExportOptions, GateOptions, OpenVinoOptions
    from exporters.pipeline import export
    generate(tmp_path / "cal", 8, 128, seed=1, val_fraction=0.0)
    spec = load_spec("demo", ["image_size=128", "fpn.repeats=1", "head.repeats=1",
                              "fpn.channels=16", "backbone.depth=0.2"])
    fmt = OpenVinoFormat(OpenVinoOptions(representative=str(tmp_path / "cal/train/images"),
                                         calibration_images=8))
    out = tmp_path / "demo_int8.xml"
    s = export(spec, str(out), fmt, ExportOptions(gate=GateOptions(random_inputs=1),
                                                  verbose=False))
    assert out.is_file() and (tmp_path / "demo_int8.bin").is_file()
    assert s["parity"]["passed"] and s["parity"]["tolerance"]["name"] == "int8"
    assert s["ops"]["FakeQuantize"] > 0
    layers = s["coverage"]["openvino"]["layers"]
    assert layers.get("u8", 0) + layers.get("i8", 0) > sum(layers.values()) / 2
    assert s["file"]["bytes"] == out.stat().st_size + (tmp_path / "demo_int8.bin").stat().st_size
    assert s["accuracy_unverified"]["verified"] is False
    assert not list(tmp_path.glob(".demo_int8*partial"))
