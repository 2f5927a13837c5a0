import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
OFFICIAL = [p.stem for p in sorted(SPECS.glob("*.yaml")) if p.stem != "demo"]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Unpacked archives and the built-in dataset go to a cache of the test session's own,
    never the user's ~/.cache (a test that needs another sets EDETGRAPH_CACHE itself)."""
    if "EDETGRAPH_CACHE" not in os.environ:
        os.environ["EDETGRAPH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    return os.environ["EDETGRAPH_CACHE"]


@pytest.fixture(scope="session")
def official_models():
    import json

    from edetgraph.resources import path
    return json.loads(path("official_models.json").read_text())["models"]


def tree_digest(root) -> str:
    """sha256 over every file under ``root``: its relative path and its bytes, in path order."""
    import hashlib
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def run_py(code: str, *args, env=None, timeout=300):
    """Run python code in a fresh interpreter (for import-blocking and CLI tests)."""
    import subprocess
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=e, timeout=timeout, cwd=ROOT)


def pytest_configure(config):
    if getattr(config.option, "numprocesses", None) and "PYTEST_XDIST_WORKER" not in os.environ:
        return      # the xdist controller runs no test: no TensorFlow to set up
    # TensorFlow loads as the commands load it (without Keras's optional extras: see
    # edetgraph.cli.quiet_tensorflow), before any test module imports it
    from edetgraph.cli import quiet_tensorflow
    quiet_tensorflow()
    # Two logical CPUs let the sync-BN test run a real 2-replica MirroredStrategy.
    try:
        import tensorflow as tf
        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    except Exception:       # TF absent, or already initialised: the test skips itself
        pass


# The files that take longest (a fresh-clone run on 2 cores, 2026-12-07), longest first.
# scripts/test hands whole files to 2 workers in collection order (pytest-xdist --dist
# loadfile --no-loadscope-reorder: xdist's default would reorder them by their number of
# tests, and a one-test 90-second file would start last); starting the long ones first
# keeps one worker from finishing a long file alone at the end.
LONGEST_FIRST = ["test_train.py", "test_search.py", "test_bench_run.py", "test_replicas.py",
                 "test_every_spec.py", "test_export_tflite.py", "test_export_official.py",
                 "test_deployable.py", "test_robustness_training.py", "test_robustness_noise.py",
                 "test_export_mnn.py", "test_export_ncnn.py", "test_export_onnx_quant.py",
                 "test_export_onnx.py", "test_infer.py", "test_augment.py", "test_saved_model.py",
                 "test_export_ap.py", "test_checkpoint.py", "test_targets.py",
                 "test_robustness_gates.py", "test_robustness_probes.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: keeps order within a file
