"""The exporters' AP check (--eval-data): COCO AP of the file against TF on annotated images.

The scoring itself is checked with detections built from the ground truth (a perfect model,
AP 1, against one whose boxes are off by a few pixels), so a mistake in the frame of the
boxes or in the image order cannot hide behind two models that are both near AP 0.
"""
import json
from pathlib import Path

import numpy as np
import pytest

SMALL = ["image_size=128", "backbone.depth=0.1", "backbone.width=0.25", "fpn.channels=16",
         "fpn.repeats=1", "head.repeats=1", "num_classes=4"]
# Smaller still (levels 3-5 at 64 px, fewer nodes to convert) where what is checked is the
# flow (the AP check run on the file's own detections, a failed check writing nothing),
# not the size of the detector.
TINY = ["image_size=64", "backbone.depth=0.1", "backbone.width=0.25", "fpn.channels=8",
        "fpn.repeats=1", "head.repeats=1", "num_classes=4", "anchors.max_level=5"]


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory):
    """Six annotated 96x96 pictures (the network works at 128: scale 4/3 both ways)."""
    from edetgraph.data.synthetic import generate
    root = tmp_path_factory.mktemp("apdata")
    generate(root, 6, 96, seed=3, val_fraction=0.5, num_classes=4)
    return root / "val"


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def _from_ground_truth(val_dir, spec, shift_px=0.0):
    """A stand-in model: for the k-th call, the k-th image's boxes in network pixels."""
    import tensorflow as tf
    gt = json.loads((val_dir / "instances.json").read_text())
    by_image = {im["id"]: [] for im in gt["images"]}
    for a in gt["annotations"]:
        by_image[a["image_id"]].append(a)
    order = [im["id"] for im in gt["images"]]
    scale = spec.image_size[0] / 96.0
    calls = iter(range(len(order)))

    def run(x):
        anns = by_image[order[next(calls)]]
        boxes = np.zeros((1, 10, 4), np.float32)
        scores, classes = np.zeros((1, 10), np.float32), np.zeros((1, 10), np.float32)
        for k, a in enumerate(anns[:10]):
            x0, y0, w, h = a["bbox"]
            boxes[0, k] = np.array([y0, x0 + shift_px, y0 + h, x0 + w + shift_px]) * scale
            scores[0, k], classes[0, k] = 0.9, a["category_id"]
        return {"boxes": boxes, "scores": scores, "classes": classes,
                "num_detections": np.array([min(len(anns), 10)], np.float32)}
    return run, (lambda x: {k: tf.constant(v) for k, v in run(x).items()})


def test_measure_scores_detections_in_the_original_frame_and_catches_a_loss(val_dir):
    from edetgraph.graph.spec import load_spec
    from edetgraph.verify.accuracy import measure
    spec = load_spec("d0", SMALL)
    annotations = str(val_dir / "instances.json")
    _, serve = _from_ground_truth(val_dir, spec)
    same, _ = _from_ground_truth(val_dir, spec)
    r = measure(spec, serve, same, str(val_dir), annotations, "float", 1, "int8")
    assert r["images"] == 3 and r["nms"] == "in-graph"
    assert r["tf"]["AP"] == pytest.approx(1.0) and r["ap_drop_points"] == pytest.approx(0.0)
    assert r["passed"] and r["max_ap_drop_points"] == 3.0
    _, serve = _from_ground_truth(val_dir, spec)
    shifted, _ = _from_ground_truth(val_dir, spec, shift_px=3.0)
    r = measure(spec, serve, shifted, str(val_dir), annotations, "float", 1, "int8")
    assert r["tf"]["AP"] == pytest.approx(1.0) and r["file"]["AP"] < 0.9
    assert r["ap_drop_points"] > 10 and not r["passed"]


def test_tflite_export_with_eval_data_records_both_aps(val_dir, tmp_path):
    from exporters import to_tflite
    out = tmp_path / "small.tflite"
    assert to_tflite.main(["--spec", "d0", *_sets(SMALL), "--quant", "fp32", "--out", str(out),
                           "--eval-data", str(val_dir)]) == 0
    acc = json.loads(Path(str(out) + ".json").read_text())["accuracy"]
    assert acc["images"] == 3 and acc["nms"] == "soft" and acc["passed"]
    assert acc["annotations"] == str(val_dir / "instances.json")
    assert abs(acc["ap_drop_points"]) <= 0.1 and acc["max_ap_drop_points"] == 0.1
    assert acc["tf"]["detections"] == acc["file"]["detections"] > 0


def test_onnx_hard_nms_export_checks_its_own_detections(val_dir, tmp_path):
    from exporters import to_onnx
    out = tmp_path / "small.onnx"
    assert to_onnx.main(["--spec", "d0", *_sets(TINY), "--postprocess", "hard-nms",
                         "--out", str(out), "--eval-data", str(val_dir), "--eval-images",
                         "2"]) == 0
    acc = json.loads(Path(str(out) + ".json").read_text())["accuracy"]
    assert acc["images"] == 2 and acc["nms"] == "in-graph" and acc["passed"]


def test_an_ap_loss_beyond_the_bound_exits_1_and_writes_nothing(val_dir, tmp_path, monkeypatch,
                                                                  capsys):
    from edetgraph.verify import accuracy as ap_check
    from exporters import to_tflite
    from exporters.cli import run_cli
    real = ap_check.measure

    def worse(*args, **kwargs):
        r = real(*args, **kwargs)
        return {**r, "file": {**r["file"], "AP": r["tf"]["AP"] - 0.05}, "ap_drop_points": 5.0,
                "passed": False}
    monkeypatch.setattr(ap_check, "measure", worse)
    out = tmp_path / "out" / "small.tflite"
    out.parent.mkdir()
    argv = ["--spec", "d0", *_sets(TINY), "--quant", "fp16", "--out", str(out),
            "--eval-data", str(val_dir)]
    assert run_cli("to_tflite", to_tflite.main, argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("to_tflite: error: AP check failed") and "not written" in err
    assert "drop +5.00 points, allowed 1" in err
    assert list(out.parent.iterdir()) == []
