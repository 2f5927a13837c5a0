"""MediaPipe Tasks' ObjectDetector (what Android, iOS and web apps run) loads the files
exported with ``--postprocess fast`` and returns what ``edetgraph.infer --model`` returns:
same classes and names, MediaPipe's integer boxes within 1 px, scores within 0.01.

Low-resolution Lite0 (128 px, random weights) in fp32 and int8 with float input, and a
uint8-input file of a spec that normalises per channel (as the demo model does, which
MediaPipe can only take that way). Pictures of the input's own size, where neither side
resizes (``tools/mediapipe_check.py`` says how each side resizes otherwise).
"""
import subprocess
import sys

import pytest
from conftest import ROOT

pytest.importorskip("mediapipe", reason="mediapipe is an optional extra (pip install "
                    "'edetgraph[mediapipe]'); without it these files are not checked in MediaPipe")
pytestmark = pytest.mark.slow
sys.path.insert(0, str(ROOT / "tools"))

LITE = ["--spec", "lite0", "--set", "image_size=128"]
PER_CHANNEL = ["--spec", "d0", *[x for kv in (
    "image_size=128", "num_classes=5", "backbone.width=0.25", "backbone.depth=0.1",
    "fpn.channels=8", "fpn.repeats=1", "head.repeats=1") for x in ("--set", kv)]]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from edetgraph.data.synthetic import generate
    root = tmp_path_factory.mktemp("mediapipe")
    summary = generate(root / "shapes", 12, 128, seed=7, val_fraction=0.34, num_classes=5)
    pictures = sorted(str(p) for p in (root / "shapes" / "val" / "images").glob("*.jpg"))
    out = {"pictures": pictures}
    for name, spec, extra in (
            ("lite0_fp32", LITE, ["--quant", "fp32"]),
            ("lite0_int8", LITE, ["--quant", "int8", "--calibration-images", "8",
                                  "--representative-data",
                                  summary["splits"]["train"]["images_dir"]]),
            ("uint8_input", PER_CHANNEL, ["--quant", "fp32", "--input", "uint8"])):
        path = root / f"{name}.tflite"
        r = subprocess.run([sys.executable, "exporters/to_tflite.py", *spec, *extra,
                            "--postprocess", "fast", "--random-inputs", "1", "--out", str(path)],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        out[name] = str(path)
    return out


@pytest.mark.parametrize("name", ["lite0_fp32", "lite0_int8", "uint8_input"])
def test_mediapipe_returns_what_infer_returns(files, name):
    from mediapipe_check import check
    result = check(files[name], files["pictures"], min_score=0.0, score_tol=0.01, px_tol=1.0)
    assert result["of"] == len(files["pictures"]) >= 4
    for picture, r in result["pictures"].items():
        assert not r["resized"] and r["edetgraph"] == 100, (picture, r)
        # MediaPipe keeps the first detection of each box: boxes clipped onto a better one's
        assert r["mediapipe"] == 100 - r["repeated_boxes"], (picture, r)
        assert r["agree"], (picture, r)
        assert r["max_box_diff_px"] < 1.0 and r["max_score_diff"] <= 0.01, (picture, r)


def test_mediapipe_names_the_classes_from_the_file(files):
    from mediapipe_check import mediapipe_detections

    from edetgraph.task.preprocess import read_image
    dets = mediapipe_detections(files["lite0_fp32"], [read_image(files["pictures"][0]).numpy()])
    from edetgraph.data.labels import COCO_LABELS
    names = {n for n, _, _ in dets[0]}
    assert names and names <= set(COCO_LABELS.values()) | {f"class_{i}" for i in range(91)}
    assert names & set(COCO_LABELS.values())


def test_a_file_without_metadata_is_refused_by_mediapipe(files, tmp_path):
    """What the issue started from: the op alone is not enough for MediaPipe."""
    from mediapipe_check import mediapipe_detections

    from edetgraph.task.preprocess import read_image
    data = open(files["lite0_fp32"], "rb").read()
    stripped = tmp_path / "stripped.tflite"
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(data, 0))
    model.metadata = [m for m in model.metadata if m.name != b"TFLITE_METADATA"]
    b = flatbuffers.Builder(0)
    b.Finish(model.Pack(b), b"TFL3")
    stripped.write_bytes(bytes(b.Output()))
    with pytest.raises(Exception, match="require TFLite Model Metadata"):
        mediapipe_detections(str(stripped), [read_image(files["pictures"][0]).numpy()])
