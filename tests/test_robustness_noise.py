"""No line on stderr from a successful command that the user did not ask for.

TensorFlow's start-up notices (absl's "before InitializeLog" line, oneDNN being on), LiteRT's
"Created ... XNNPACK delegate" notice and the int8 quantizer's settings line are written by
native code straight to file descriptor 2; they are filtered there, and anything else
(a real error) still shows. The commands (to_onnx, to_tflite, infer --model,
device_runner.py) are run and their stderr held to the lines they print on purpose."""
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

NOISE = ("WARNING: All log messages before absl::InitializeLog() is called are written to "
         "STDERR\n"
         "I0000 00:00:1795990721.752269   30760 port.cc:153] oneDNN custom operations are on. "
         "You may see slightly different numerical results due to floating-point round-off.\n")


def _run(code: str, env: dict, path: str | None = None):
    e = dict(os.environ, **env)
    e["PYTHONPATH"] = os.pathsep.join(p for p in (path, str(ROOT)) if p)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=e, cwd=ROOT, timeout=120)


def test_the_filter_drops_the_notices_and_keeps_real_lines(tmp_path):
    """A stand-in 'tensorflow' writes the notices and a real error to fd 2 as it loads."""
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import os\n"
        f"os.write(2, {NOISE!r}.encode())\n"
        "os.write(2, b'E0000 real_op.cc:1] something is really wrong\\n')\n"
        "os.write(2, " + repr(NOISE) + ".encode())\n")
    code = ("from edetgraph.cli import quiet_tensorflow\n"
            "quiet_tensorflow()\n"
            "import sys; print('after', file=sys.stderr)\n")
    r = _run(code, {"TF_CPP_MIN_LOG_LEVEL": ""}, str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stderr == "E0000 real_op.cc:1] something is really wrong\nafter\n"
    # Asked for TensorFlow's own lines (level 0): nothing is filtered.
    r = _run(code + "import tensorflow\n", {"TF_CPP_MIN_LOG_LEVEL": "0"}, str(tmp_path))
    assert "oneDNN custom operations are on" in r.stderr and "really wrong" in r.stderr


# ------------------------------------------- native notices around calls (not only at import)

XNNPACK = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
QUANTIZER = ("fully_quantize: 0, inference_type: 6, input_inference_type: INT8, "
             "output_inference_type: INT8\n")
TINY = ["image_size=64", "fpn.repeats=1", "head.repeats=1", "fpn.channels=8",
        "backbone.depth=0.1", "backbone.width=0.25", "anchors.max_level=5"]   # the demo spec,
# smaller still than the bench tests make it: the noise is the commands', not the model's


def _cli(*args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def _stray(stderr: str, *ours) -> list:
    """The stderr lines that start with none of the prefixes the command prints on purpose."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(ours)]


def test_quiet_native_drops_the_notices_and_keeps_real_lines_and_live_progress():
    code = ("import os, sys\n"
            "from edetgraph.cli import quiet_native\n"
            "with quiet_native():\n"
            f"    os.write(2, {XNNPACK + QUANTIZER!r}.encode())\n"
            "    os.write(2, b'E0000 xnnpack.cc:1] a real failure\\n')\n"
            "    print('progress', file=sys.stderr, flush=True)\n"
            "print('after', file=sys.stderr)\n")
    r = _run(code, {"TF_CPP_MIN_LOG_LEVEL": "2"})
    assert r.returncode == 0, r.stderr
    # Python's line shows as written; the native real line after the block; notices never
    assert r.stderr == "progress\nE0000 xnnpack.cc:1] a real failure\nafter\n"
    r = _run(code, {"TF_CPP_MIN_LOG_LEVEL": "0"})     # asked for everything: all shows
    assert XNNPACK in r.stderr and QUANTIZER in r.stderr and "a real failure" in r.stderr


@pytest.fixture(scope="module")
def real_tensorflow():
    """One fresh interpreter for the two checks on the real TensorFlow: it loads TensorFlow
    through quiet_tensorflow (and computes with it), then converts the tiny net to int8
    twice, plainly and under quiet_native, with a marker line on stderr between the three."""
    code = ("import sys; sys.path.insert(0, 'tests')\n"
            "from edetgraph.cli import quiet_native, quiet_tensorflow\n"
            "quiet_tensorflow()\n"
            "import tensorflow as tf\n"
            "print(int(tf.constant(2) * 3))\n"
            "extras = [m for m in ('sklearn', 'matplotlib') if m in sys.modules]\n"
            "import matplotlib.pyplot\n"
            "print('extras', extras, 'keras' in sys.modules, 'matplotlib.pyplot' in sys.modules)\n"
            "print('==', file=sys.stderr, flush=True)\n"
            "import _tiny_models as t\n"
            "fn = t.tiny_function()\n"
            "t._to_tflite(fn, tf.int8)\n"
            "print('--', file=sys.stderr, flush=True)\n"
            "with quiet_native():\n"
            "    t._to_tflite(fn, tf.int8)\n")
    return _run(code, {"TF_CPP_MIN_LOG_LEVEL": ""})


def test_real_tensorflow_loads_without_the_notices(real_tensorflow):
    r = real_tensorflow
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "6", r.stderr[-2000:]
    assert "InitializeLog" not in r.stderr and "oneDNN" not in r.stderr, r.stderr


def test_tensorflow_loads_keras_without_its_optional_extras(real_tensorflow):
    """Keras (loaded by TensorFlow) did not pull in scikit-learn or matplotlib, and matplotlib
    still imports afterwards, as the plots need it."""
    r = real_tensorflow
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines()[1] == "extras [] True True", r.stdout


def test_the_int8_quantizer_line_is_real_and_kept_off_by_quiet_native(real_tensorflow):
    """The control (a plain conversion prints the line) keeps this test able to fail."""
    r = real_tensorflow
    assert r.returncode == 0, r.stderr[-2000:]
    plain, quiet = r.stderr.split("==\n")[1].split("--\n")
    assert "fully_quantize: " in plain and quiet == "", r.stderr


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory):
    """tests/_tiny_models.py's net as an fp32 .tflite (its other variants are not needed)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from _tiny_models import _to_tflite, tiny_function
    path = tmp_path_factory.mktemp("tiny") / "tiny_fp32.tflite"
    path.write_bytes(_to_tflite(tiny_function()))
    return path


def test_device_runner_prints_no_delegate_notice_and_still_shows_a_real_error(tiny_tflite,
                                                                               tmp_path):
    r = _cli("bench/device_runner.py", tiny_tflite, "--runs", "2", "--warmup", "1")
    assert r.returncode == 0 and json.loads(r.stdout)["model"], r.stderr
    assert not _stray(r.stderr, "[device_runner] "), r.stderr
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(tiny_tflite.read_bytes()[:300])
    r = _cli("bench/device_runner.py", bad, "--runs", "1", "--warmup", "0")
    assert r.returncode == 2 and "cannot load it" in r.stderr.splitlines()[-1], r.stderr


def test_the_tflite_runner_prints_no_delegate_notice(tiny_tflite):
    code = ("import sys\n"
            "from edetgraph.verify.runners import make_runner, tflite_interpreter\n"
            f"r = make_runner('tflite', {str(tiny_tflite)!r}, 1)\n"
            f"tflite_interpreter({str(tiny_tflite)!r}, num_threads=1)\n"
            "from ai_edge_litert.interpreter import Interpreter\n"
            f"i = Interpreter(model_path={str(tiny_tflite)!r}); i.allocate_tensors()\n")
    r = _run(code, {"TF_CPP_MIN_LOG_LEVEL": "2"})
    # the runner's and the helper's interpreters are quiet; LiteRT prints its notice once per
    # process, so the plain interpreter made last shows it only if those two were not quiet
    assert r.returncode == 0 and r.stderr == "", r.stderr


# ------------------------------------------------- the commands, end to end (they export)

@pytest.fixture(scope="module")
def exported_tflite(tmp_path_factory):
    out = tmp_path_factory.mktemp("noise") / "tiny.tflite"
    sets = [x for s in TINY for x in ("--set", s)]
    r = _cli("exporters/to_tflite.py", "--spec", "demo", *sets, "--quant", "fp32",
             "--out", out)
    return out, r


@pytest.mark.slow
def test_to_tflite_stderr_has_only_its_own_lines(exported_tflite):
    out, r = exported_tflite
    assert r.returncode == 0, r.stderr[-3000:]
    assert not _stray(r.stderr, "[to_tflite] "), r.stderr


@pytest.mark.slow
def test_infer_on_a_tflite_file_has_only_its_own_lines(exported_tflite, tmp_path):
    from edetgraph.resources import path
    out, r = exported_tflite
    assert r.returncode == 0, r.stderr[-3000:]
    street = path("street.jpg")
    r = _cli("-m", "edetgraph.infer", "--model", out, "--image", street, "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr[-3000:]
    assert not _stray(r.stderr, "running ", f"{street}: ", "wrote "), r.stderr


@pytest.mark.slow
def test_to_onnx_stderr_has_only_its_own_lines(tmp_path):
    sets = [x for s in TINY for x in ("--set", s)]
    r = _cli("exporters/to_onnx.py", "--spec", "demo", *sets, "--out", tmp_path / "m.onnx")
    assert r.returncode == 0, r.stderr[-3000:]
    assert not _stray(r.stderr, "[to_onnx] "), r.stderr


# ------------------------------- "accuracy UNVERIFIED" only when nothing measures the AP

def test_bench_exports_warn_unverified_only_without_data(monkeypatch, tmp_path):
    """bench.run with --data (the demo's stage 4) measures every row's AP a minute after its
    exports: they say so instead of warning; without --data the warning stays."""
    from bench import exports
    from bench.config import BenchConfig
    from edetgraph.graph.spec import load_spec
    from exporters.pipeline import unverified
    seen = []
    monkeypatch.setattr(exports, "export", lambda spec, path, fmt, opts: seen.append(opts) or {})
    monkeypatch.setattr(exports, "write_text", lambda *a: None)
    for data in (None, str(tmp_path)):
        cfg = BenchConfig(spec=load_spec("demo"), out=str(tmp_path / "b"), data=data,
                          backends=("tflite-fp16",))
        exports.ensure_export(cfg, "tflite-fp16", {}, lambda m: None)
    assert [o.ap_measured_by for o in seen] == [None, "bench.run on --data"]
    parity = {"heads": {"cls": {"nrmse": 0.01}, "box": {"nrmse": 0.02}}}
    assert unverified(parity)["why"].startswith("accuracy UNVERIFIED")
    measured = unverified(parity, "bench.run on --data")
    assert "UNVERIFIED" not in measured["why"] and measured["verified"] is False
    assert measured["measured_by"] == "bench.run on --data" and measured["sqnr_db"]["cls"] == 40
