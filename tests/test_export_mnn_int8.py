"""exporters/to_mnn.py --quant int8: MNN's quantiser on the float32 file, gated as int8.

The small D0-shaped spec of tests/test_export_onnx.py, random weights, calibrated on a few
synthetic scenes; without MNN these tests skip with that reason, except the refusals, which
need no MNN.
"""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from test_export_onnx import SMALL, _sets

HAVE_MNN = __import__("importlib.util").util.find_spec("MNN") is not None
needs_mnn = pytest.mark.skipif(not HAVE_MNN, reason="MNN is not installed (pip install mnn)")


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    from edetgraph.data.synthetic import generate
    folder = tmp_path_factory.mktemp("calib")
    generate(str(folder), 8, 128, seed=3, val_fraction=0.0)
    return folder / "train" / "images"


def _argv(out, calib, *more):
    return ["--spec", "d0", *_sets(SMALL), "--out", str(out), "--quant", "int8",
            "--representative-data", str(calib), "--calibration-images", "8", *more]


@pytest.fixture(scope="module")
def int8_file(tmp_path_factory, calib):
    from exporters import to_mnn
    out = tmp_path_factory.mktemp("mnn8") / "small_int8.mnn"
    assert to_mnn.main(_argv(out, calib)) == 0
    return out, json.loads(Path(str(out) + ".json").read_text())


@needs_mnn
@pytest.mark.slow
def test_int8_file_passes_the_int8_gate_and_is_int8(int8_file):
    import MNN
    path, summary = int8_file
    assert summary["parity"]["passed"] and summary["parity"]["tolerance"]["name"] == "int8"
    levels = summary["accuracy_unverified"]["sqnr_db_levels"]
    assert set(levels) == {"box", "cls"} and all(len(v) == 5 for v in levels.values())
    assert summary["options"]["quant"] == "int8"
    assert summary["options"]["calibration_images"] == 8
    meta = json.loads(MNN.nn.load_module_from_file(str(path), [], []).get_info()["bizCode"])
    assert meta == summary["metadata"] and meta["quantisation"]["kind"] == "int8"
    # int8 weights: the file is 0.52x the float32 bytes of the model's weights (the float32
    # file is 1.1x: its graph and metadata; the rest of the int8 file is float biases and
    # scales), and not float32's arithmetic: the outputs move by int8 rounding (SQNR 19-37
    # dB per level on street.jpg, measured; a float32 file is above 100 dB)
    fp32_bytes = 4 * sum(int(np.prod(w.shape)) for w in _model().trainable_variables)
    assert path.stat().st_size < 0.6 * fp32_bytes
    assert all(db < 60 for by_level in levels.values() for db in by_level.values())


def _model():
    from edetgraph.graph.spec import load_spec
    from edetgraph.task.weights import model_with_weights
    return model_with_weights(load_spec("d0", SMALL), None, 0)[0]


@needs_mnn
@pytest.mark.slow
def test_a_wrongly_normalised_calibration_is_refused_by_the_gate(tmp_path, calib, monkeypatch,
                                                                 capsys):
    """Calibration samples as raw 0..255 pixels for a file that takes normalised input:
    every activation's int8 range is ~100x too wide, the outputs are noise (SQNR -13 to -27
    dB per level on street.jpg, measured), and the int8 gate names the head and the worst
    level."""
    from exporters import mnn_format, to_mnn
    from exporters.cli import run_cli
    real = mnn_format.calibration_batches
    monkeypatch.setattr(mnn_format, "calibration_batches",
                        lambda src, n, spec, kind, batch, say: (
                            b.astype(np.float32) for b in real(src, n, spec, "uint8", batch, say)))
    assert run_cli("to_mnn", to_mnn.main, _argv(tmp_path / "bad.mnn", calib)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("to_mnn: error: parity gate failed") and "not written" in err
    assert re.search(r"(box|cls) \(all levels\)|level P\d", err), err   # the head ...
    assert re.search(r"worst output (box|cls)_l\d", err), err              # ... and the level
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("more, says", [
    ([], "--quant int8 needs --representative-data"),
    (["--representative-data", "EMPTY"], "no .jpg/.jpeg/.png/.bmp images in this folder"),
    (["--representative-data", "CALIB", "--input", "uint8"], "crashes on a uint8-input model"),
])
def test_int8_requests_refused_in_one_line(tmp_path, calib, capsys, more, says):
    from exporters import to_mnn
    from exporters.cli import run_cli
    (tmp_path / "empty").mkdir()
    more = [{"EMPTY": str(tmp_path / "empty"), "CALIB": str(calib)}.get(a, a) for a in more]
    argv = ["--spec", "d0", "--out", str(tmp_path / "x.mnn"), "--quant", "int8", *more]
    status = run_cli("to_mnn", to_mnn.main, argv)
    err = capsys.readouterr().err.strip()
    if not HAVE_MNN:
        assert status == 2 and "MNN is not installed" in err
        return
    assert status == 2 and err.startswith("to_mnn: error: ") and says in err, err
    assert "\n" not in err and list(tmp_path.iterdir()) == [tmp_path / "empty"]


@needs_mnn
def test_a_quantiser_that_skips_its_calibration_passes_is_refused(tmp_path, monkeypatch):
    """MNN's quantiser reports a failed calibration pass and still writes a file (with zero
    scales): that is a failed export, in one line."""
    from exporters import mnn_quant
    from exporters.options import ExportFailed
    monkeypatch.setattr(mnn_quant, "_MNNQUANT", "import sys\nprint('Compute Shape Error for "
                        "BiasAdd:0')\nopen(sys.argv[2], 'wb').write(b'x')\n")
    q = mnn_quant.MnnQuantOptions(str(tmp_path))
    with pytest.raises(ExportFailed) as e:
        mnn_quant.quantise(b"fp32", [np.zeros((1, 2, 2, 3), np.float32)], "images", q)
    assert str(e.value) == ("MNN's quantiser could not run the model on the calibration "
                            "samples: Compute Shape Error for BiasAdd:0")


def test_samples_hold_the_prepared_input_in_the_files_layout(tmp_path):
    from exporters.mnn_quant import write_samples
    x = np.arange(2 * 3 * 4 * 3, dtype=np.float32).reshape(2, 3, 4, 3) / 7 - 1
    assert write_samples([x], str(tmp_path), "images") == 1
    got = np.loadtxt(tmp_path / "00001" / "images.txt", dtype=np.float32)
    np.testing.assert_allclose(got, x.ravel(), atol=1e-4)   # NHWC order, as fed
    shape = json.loads((tmp_path / "00001" / "input.json").read_text())
    assert shape == {"inputs": [{"name": "images", "shape": [2, 3, 4, 3]}]}
