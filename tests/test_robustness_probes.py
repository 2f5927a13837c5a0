"""tools/robustness_probes.py: issue 21's probes against the real commands all hold (the fast
ones: the exports, the training and the evaluation are tested on their own elsewhere)."""
import os
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow   # some twenty commands in subprocesses, a few of them start TensorFlow
def test_the_fast_probes_all_hold():
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, "tools/robustness_probes.py", "--fast"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=900)
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0 and " 0 failed" in lines[-1], r.stdout + r.stderr[-2000:]
    probes = lines[:-1]
    assert len(probes) >= 14 and all(ln.startswith(("held ", "skipped ")) for ln in probes), \
        r.stdout
    assert {ln.split()[1] for ln in probes} >= {"folder", "symlink", "lock", "escapes", "nan"}
