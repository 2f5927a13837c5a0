"""TensorFlow's start-up notices (absl's "before InitializeLog" line, oneDNN being on) stay
off the commands' stderr; anything else written while TensorFlow loads still shows."""
import os
import subprocess
import sys

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


def test_real_tensorflow_loads_without_the_notices():
    code = ("from edetgraph.cli import quiet_tensorflow\n"
            "quiet_tensorflow()\n"
            "import tensorflow as tf\n"
            "print(int(tf.constant(2) * 3))\n")
    r = _run(code, {"TF_CPP_MIN_LOG_LEVEL": ""})
    assert r.returncode == 0 and r.stdout.strip() == "6", r.stderr
    assert "InitializeLog" not in r.stderr and "oneDNN" not in r.stderr, r.stderr
