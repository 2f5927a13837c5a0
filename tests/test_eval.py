"""COCO evaluation: metrics identical to pycocotools run directly, results-format conversion,
and the eval CLI end to end on a tiny checkpoint (EMA weights, files written, errors)."""
import contextlib
import io
import json

import numpy as np
import pytest
import tensorflow as tf

from edetgraph.task.coco import METRIC_NAMES, coco_metrics, format_table, to_coco_results


def _gt(num_images=6, seed=0):
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(1, num_images + 1):
        images.append({"id": i, "file_name": f"{i}.jpg", "height": 100, "width": 120})
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.uniform(0, 60, 2)
            w, h = rng.uniform(5, 50, 2)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.integers(1, 4)),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    cats = [{"id": c, "name": n} for c, n in ((1, "circle"), (2, "square"), (3, "star"))]
    return {"images": images, "annotations": anns, "categories": cats}


def _noisy_detections(gt, seed=1):
    rng = np.random.default_rng(seed)
    dets = []
    for a in gt["annotations"]:
        if rng.random() < 0.8:
            x, y, w, h = a["bbox"]
            jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
            dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                         "bbox": list(np.array([x, y, w, h]) + jitter), "score": rng.uniform(0.3, 1)})
    for img in gt["images"]:                   # false positives
        dets.append({"image_id": img["id"], "category_id": int(rng.integers(1, 4)),
                     "bbox": [10.0, 10.0, 30.0, 20.0], "score": float(rng.uniform(0, 0.6))})
    return dets


def _pycocotools_direct(gt, dets, image_ids=None):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(json.loads(json.dumps(dets))), "bbox")
        if image_ids is not None:
            ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def test_metrics_are_identical_to_pycocotools(tmp_path):
    gt = _gt()
    dets = _noisy_detections(gt)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(gt))
    ours = coco_metrics(path, dets, per_class=True)
    ev = _pycocotools_direct(gt, dets)
    assert [ours[k] for k in METRIC_NAMES] == [float(v) for v in ev.stats]
    assert 0.2 < ours["AP50"] < 1.0             # a non-trivial case
    p = ev.eval["precision"][:, :, 1, 0, -1]
    assert ours["per_class"]["square"] == float(p[p > -1].mean())
    # restricted to some images, as when --data holds only part of the annotations
    subset = coco_metrics(gt, dets, image_ids=[1, 2, 3])
    ev = _pycocotools_direct(gt, dets, image_ids=[1, 2, 3])
    assert [subset[k] for k in METRIC_NAMES] == [float(v) for v in ev.stats]
    assert "AP50" in format_table(ours) and "AP[square]" in format_table(ours)


def test_no_detections_and_unknown_images():
    from edetgraph.task.coco import EvalError
    gt = _gt()
    assert coco_metrics(gt, [])["AP"] == 0.0
    with pytest.raises(EvalError, match="not in the annotations"):
        coco_metrics(gt, [], image_ids=[1, 999])


def test_results_format_xywh_and_padding_dropped():
    result = {"boxes": np.array([[[10, 20, 50, 80], [1, 2, 3, 4]], [[0, 0, 5, 5], [0, 0, 0, 0]]],
                                np.float32),
              "scores": np.array([[0.9, 0.1], [0.5, 0.0]], np.float32),
              "classes": np.array([[3, 1], [2, 0]], np.float32),
              "num_detections": np.array([2, 1], np.int32)}
    out = to_coco_results(result, [7, 8])
    assert out[0] == {"image_id": 7, "category_id": 3, "bbox": [20.0, 10.0, 60.0, 40.0],
                      "score": pytest.approx(0.9)}
    assert len(out) == 3 and out[2]["image_id"] == 8 and out[2]["bbox"] == [0.0, 0.0, 5.0, 5.0]


@pytest.fixture(scope="module")
def tiny_val(tmp_path_factory):
    from edetgraph.data.synthetic import generate, write_tfrecords
    out = tmp_path_factory.mktemp("shapes")
    summary = generate(out, 10, 64, seed=5, val_fraction=0.5, num_classes=3)
    write_tfrecords(summary)
    return str(out / "tfrecord" / "val-*.tfrecord"), str(out / "val" / "instances.json")


def test_eval_cli_end_to_end_matches_pycocotools_on_its_own_detections(tmp_path, tiny_val,
                                                                       capsys):
    from edetgraph.checkpoints.checkpoint import save_checkpoint
    from edetgraph.eval import main
    from edetgraph.graph.spec import load_spec
    from edetgraph.nn.model import build_model
    sets = ["image_size=64", "num_classes=3", "backbone.width=0.25", "backbone.depth=0.1",
            "fpn.channels=8", "fpn.repeats=1", "head.repeats=1", "anchors.max_level=5"]
    model = build_model(load_spec("d0", sets), seed=3)
    variables = model.variables_by_name()
    ema = {n: tf.Variable(v * 0.5) for n, v in variables.items()}
    save_checkpoint(variables, tmp_path / "ckpt" / "ckpt-1", step=1, ema=ema)
    data, annotations = tiny_val
    args = ["--spec", "d0", *[x for s in sets for x in ("--set", s)], "--ckpt",
            str(tmp_path / "ckpt" / "ckpt-1"), "--data", data, "--annotations", annotations,
            "--out", str(tmp_path / "m" / "metrics.json"), "--per-class", "--batch-size", "3"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "(EMA weights)" in err and "AP50" in out
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    dets = json.loads((tmp_path / "m" / "detections.json").read_text())
    assert metrics["images"] == 5 and metrics["detections"] == len(dets) > 0
    gt = json.loads(open(annotations).read())
    ev = _pycocotools_direct(gt, dets, image_ids=[im["id"] for im in gt["images"]])
    assert [metrics[k] for k in METRIC_NAMES] == [float(v) for v in ev.stats]
    assert set(metrics["per_class"]) == {"circle", "square", "triangle"}


def test_eval_cli_errors_are_one_line(tmp_path, tiny_val, capsys):
    from edetgraph.eval import main
    data, _ = tiny_val
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    code = main(["--spec", "demo", "--ckpt", str(tmp_path), "--data", data,
                 "--annotations", str(bad)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "not a COCO instances file" in err
    assert "\n" not in err
