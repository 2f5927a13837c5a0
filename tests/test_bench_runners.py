"""edetgraph.verify.runners and bench.latency: parity with the TF function, interleaving, clear errors."""
import os
import sys
import time
from pathlib import Path

import _tiny_models as tiny
import numpy as np
import pytest

from bench import device, device_runner, latency
from edetgraph.verify.runners import RunnerError, make_runner

FP32_TOL = 1e-5
# Full-integer files round the input (step 1/255), the hidden relu6 activations and the
# weights (per channel) before the int8 heads, then the result to the output's own step.
# Output rounding alone costs up to half an output step; the two earlier roundings,
# carried through one 1x1 conv, come to about one more step (measured: 1.0-1.4 steps).
# Three steps (~0.07, about 1% of the outputs' range) leaves room for kernel differences
# while still failing on a wrong scale or zero point, which is off by many steps.
INT8_STEPS = 3


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny.write_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def x_and_ref():
    x = tiny.sample_input(7)
    return x, tiny.reference_outputs(x)


def _check_order_and_values(out, ref, tol):
    """Outputs come back in file order: boxes (4 channels) before scores (5)."""
    assert len(out) == len(tiny.OUTPUT_NAMES)
    for got, name in zip(out.values(), tiny.OUTPUT_NAMES):
        assert got.shape == ref[name].shape and got.dtype == np.float32
        np.testing.assert_allclose(got, ref[name], rtol=0, atol=tol(name) if callable(tol) else tol)


def test_onnxruntime_matches_tf(models, x_and_ref):
    x, ref = x_and_ref
    runner = make_runner("onnxruntime", models["onnx"], threads=1)
    out = runner.run(x)
    assert list(out) == list(tiny.OUTPUT_NAMES)
    _check_order_and_values(out, ref, FP32_TOL)
    assert runner.input_details[0].name == tiny.INPUT_NAME
    assert runner.input_details[0].shape == tiny.INPUT_SHAPE


def test_tflite_fp32_matches_tf(models, x_and_ref):
    x, ref = x_and_ref
    runner = make_runner("tflite", models["tflite"], threads=1)
    _check_order_and_values(runner.run(x), ref, FP32_TOL)
    assert runner.info()["runtime"] == "ai_edge_litert"


def test_tflite_shared_outputs_are_the_interpreters_own_and_run_copies(models, x_and_ref):
    """Timed calls take the outputs as the interpreter holds them (as ONNX Runtime's run()
    hands over its own arrays): LiteRT refuses to run again while such a view is alive, so
    none is ever overwritten unseen. run() copies: results kept across calls stay intact."""
    x, ref = x_and_ref
    runner = make_runner("tflite", models["tflite"], threads=1)
    shared = runner.run_shared(x)
    _check_order_and_values(shared, ref, FP32_TOL)
    with pytest.raises(RuntimeError, match="reference to internal data"):
        runner.run_shared(x)
    del shared
    kept = runner.run(x)
    runner.run(x * 0.5)
    _check_order_and_values(kept, ref, FP32_TOL)
    assert latency._as_call(runner) == runner.run_shared


@pytest.mark.parametrize("variant,dtype", [("tflite_int8", np.int8), ("tflite_uint8", np.uint8)])
def test_tflite_quantized_float_in_float_out(models, x_and_ref, variant, dtype):
    x, ref = x_and_ref
    runner = make_runner("tflite", models[variant])
    assert runner.input_details[0].dtype == np.dtype(dtype).name
    assert runner.input_details[0].quantization is not None
    scales = {info.name: info.quantization[0] for info in runner.output_details}
    steps = dict(zip(tiny.OUTPUT_NAMES, scales.values()))
    _check_order_and_values(runner.run(x), ref, lambda name: INT8_STEPS * steps[name])

    raw = make_runner("tflite", models[variant], raw=True)
    d = raw.input_details[0]
    q = np.clip(np.round(x / d.quantization[0]) + d.quantization[1],
                np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)
    raw_out = raw.run(q)
    for (name, got), info, deq in zip(raw_out.items(), raw.output_details, runner.run(x).values()):
        assert got.dtype == dtype
        scale, zero = info.quantization
        np.testing.assert_array_equal((got.astype(np.float32) - zero) * np.float32(scale), deq)


def test_tf_runner_wraps_function_and_saved_model(tmp_path, x_and_ref):
    import tensorflow as tf
    x, ref = x_and_ref
    fn = tiny.tiny_function()
    runner = make_runner("tf", fn=fn)
    assert [d.name for d in runner.output_details] == list(tiny.OUTPUT_NAMES)
    _check_order_and_values(runner.run(x), ref, 0.0)

    module = tf.Module()
    module.f = fn
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures=fn)
    loaded = make_runner("tf", tmp_path / "sm")
    assert loaded.input_details[0].name == tiny.INPUT_NAME
    _check_order_and_values(loaded.run(x), ref, FP32_TOL)
    assert loaded.info()["runtime"] == "tensorflow" and loaded.load_seconds > 0


def test_info_reports_runtime_file_and_threads(models):
    for kind, path in (("onnxruntime", models["onnx"]), ("tflite", models["tflite_int8"])):
        info = make_runner(kind, path, threads=2).info()
        assert info["file_bytes"] == os.path.getsize(path) and info["threads"] == 2
        assert info["runtime_version"] and info["load_seconds"] >= 0
    ort_info = make_runner("onnxruntime", models["onnx"]).info()
    assert ort_info["accelerator"] == ["CPUExecutionProvider"]
    assert make_runner("auto", models["tflite"]).kind == "tflite"


def _hide(monkeypatch, *modules):
    for name in modules:  # a None entry makes `import name` raise ImportError
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_tflite_falls_back_to_tensorflow_lite(models, x_and_ref, monkeypatch):
    x, ref = x_and_ref
    _hide(monkeypatch, "ai_edge_litert", "ai_edge_litert.interpreter",
          "tflite_runtime", "tflite_runtime.interpreter")
    runner = make_runner("tflite", models["tflite"])
    assert runner.info()["runtime"] == "tensorflow"
    _check_order_and_values(runner.run(x), ref, FP32_TOL)


def test_missing_runtimes_are_one_line_errors(models, monkeypatch):
    _hide(monkeypatch, "ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime",
          "tflite_runtime.interpreter", "tensorflow", "onnxruntime")
    with pytest.raises(RunnerError, match=r"tiny_fp32\.tflite: no TFLite runtime installed"):
        make_runner("tflite", models["tflite"])
    with pytest.raises(RunnerError, match=r"tiny\.onnx: onnxruntime is not installed"):
        make_runner("onnxruntime", models["onnx"])


def test_bad_files_and_inputs_are_clear_errors(models, tmp_path):
    (tmp_path / "junk.onnx").write_text("not a model")
    (tmp_path / "junk.tflite").write_text("not a model")
    cases = [
        (lambda: make_runner("onnxruntime", tmp_path / "missing.onnx"),
         r"missing\.onnx: no such file"),
        (lambda: make_runner("onnxruntime", models["tflite"]), r"expects a \.onnx file"),
        (lambda: make_runner("tflite", models["onnx"]), r"expects a \.tflite file"),
        (lambda: make_runner("auto", tmp_path / "m.pt"), r"m\.pt: unknown model type"),
        (lambda: make_runner("tflite", models["tflite"], providers=["x"]),
         r"no option \['providers'\]"),
        (lambda: make_runner("tensorrt", models["onnx"]), r"unknown backend 'tensorrt'"),
        (lambda: make_runner("onnxruntime", tmp_path / "junk.onnx"),
         r"junk\.onnx: onnxruntime cannot load"),
        (lambda: make_runner("tflite", tmp_path / "junk.tflite"),
         r"junk\.tflite: ai_edge_litert cannot load"),
    ]
    for kind, key in (("onnxruntime", "onnx"), ("tflite", "tflite_int8")):
        runner = make_runner(kind, models[key])
        cases.append((lambda r=runner: r.run(np.zeros((1, 8, 16, 3), np.float32)),
                      r"input 'images' has shape \(1, 8, 16, 3\), model expects \(1, 16, 16, 3\)"))
    for call, pattern in cases:
        with pytest.raises(RunnerError, match=pattern) as err:
            call()
        assert "\n" not in str(err.value)


def test_file_runners_work_with_tensorflow_blocked(models, tmp_path):
    script = tmp_path / "use_runners.py"
    script.write_text(
        "import sys, numpy as np\n"
        "from bench import device, latency\n"
        "from edetgraph.verify import runners\n"
        "x = np.random.default_rng(0).uniform(size=(1, 16, 16, 3)).astype(np.float32)\n"
        "for kind, path in zip(sys.argv[1::2], sys.argv[2::2]):\n"
        "    r = runners.make_runner(kind, path, threads=1)\n"
        "    print(kind, r.info()['runtime'], [v.shape for v in r.run(x).values()])\n")
    args = ["onnxruntime", models["onnx"], "tflite", models["tflite_int8"]]
    proc, log = tiny.run_blocked(script, args, ["tensorflow", "tf2onnx", "keras"],
                                 tmp_path / "log.json", cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr
    assert "onnxruntime onnxruntime [(1, 8, 8, 4), (1, 8, 8, 5)]" in proc.stdout
    assert "tflite ai_edge_litert [(1, 8, 8, 4), (1, 8, 8, 5)]" in proc.stdout
    assert log == {"attempts": [], "loaded": []}


class _Recorder:
    """A fake runner that logs every call into a shared list."""

    def __init__(self, name, log, sleep=0.0):
        self.name, self.log, self.sleep = name, log, sleep

    def run(self, x):
        self.log.append(self.name)
        if self.sleep:
            time.sleep(self.sleep)
        return {"y": x}


def test_measure_interleaved_interleaves_in_shuffled_rounds():
    log = []
    runners = {n: _Recorder(n, log) for n in "abc"}
    stats = latency.measure_interleaved(runners, np.zeros((4, 2)), warmup=2, runs=20)
    assert log[:6] == list("aabbcc")  # warm-up first, each backend on its own
    rounds = [tuple(log[i:i + 3]) for i in range(6, len(log), 3)]
    assert len(rounds) == 20 and all(sorted(r) == list("abc") for r in rounds)
    assert len(set(rounds)) > 1  # the order changes between rounds
    assert set(stats) == set("abc")
    assert all(s["runs"] == 20 and s["batch"] == 4 for s in stats.values())


def test_measure_interleaved_blocks_per_round_and_inputs_per_backend():
    log, seen = [], {}
    runners = {n: _Recorder(n, log) for n in "ab"}

    def make_input(name):
        seen[name] = np.zeros((3, 1))
        return seen[name]
    stats = latency.measure_interleaved(runners, make_input, warmup=0, runs=6, rounds=2)
    assert set(seen) == {"a", "b"} and all(s["batch"] == 3 for s in stats.values())
    blocks = [log[i:i + 3] for i in range(0, 12, 3)]
    assert all(len(set(b)) == 1 for b in blocks) and sorted(b[0] for b in blocks) == list("aabb")


def test_measure_interleaved_times_each_backend():
    log = []
    runners = {"slow": _Recorder("slow", log, sleep=0.003), "fast": _Recorder("fast", log)}
    stats = latency.measure_interleaved(runners, lambda: np.zeros((1,)), warmup=1, runs=5)
    assert stats["slow"]["min_ms"] >= 3.0 and stats["fast"]["p50_ms"] < stats["slow"]["p50_ms"]
    assert stats["slow"]["throughput_ips"] < 1000 / 3.0
    assert "5 timed calls" in latency.describe_method(warmup=1, runs=5)


def test_latency_stats_values_and_device_copy_agree():
    seconds = [0.001, 0.002, 0.003, 0.004]
    stats = latency.latency_stats(seconds, batch=2)
    assert stats["p50_ms"] == pytest.approx(2.5) and stats["mean_ms"] == pytest.approx(2.5)
    assert stats["p90_ms"] == pytest.approx(3.7) and stats["std_ms"] == pytest.approx(1.118034)
    assert (stats["min_ms"], stats["max_ms"]) == pytest.approx((1.0, 4.0))
    assert stats["throughput_ips"] == pytest.approx(800.0)
    assert device_runner.latency_stats(seconds, batch=2) == stats  # the device copy agrees
    assert device.SCHEMA == device_runner.SCHEMA


def test_peak_memory_helpers(models):
    assert latency.peak_rss_mb() > 10
    mem = latency.measure_peak_memory("onnxruntime", models["onnx"], runs=2)
    assert 0 < mem["baseline_mb"] <= mem["after_load_mb"] <= mem["peak_mb"]
    assert mem["model_mb"] == pytest.approx(mem["peak_mb"] - mem["baseline_mb"])
    with pytest.raises(ValueError, match="not supported"):
        latency.measure_peak_memory("tf", "x")
