"""Inference end to end: the Detector, the `python -m edetgraph.infer` CLI, drawing, and
checkpoints of a real model (own format and released layout) round-tripping exactly."""
import json

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_py
from PIL import Image

from edetgraph import infer
from edetgraph.checkpoints.checkpoint import load_checkpoint, save_checkpoint, write_released
from edetgraph.graph.spec import load_spec
from edetgraph.nn.model import build_model
from edetgraph.resources import path
from edetgraph.task.detector import Detector
from edetgraph.task.labels import COCO_LABELS, load_labels
from edetgraph.task.preprocess import preprocess, read_image
from edetgraph.task.visualize import draw_detections

STREET = path("street.jpg")
SMALL = ["image_size=128"]


def randomised(model, seed):
    """{name: array}: the initial kernels with BN statistics, gammas, betas, biases and fusion
    weights drawn at random, so that every variable changes the outputs."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, v in model.variables_by_name().items():
        x, leaf = v.numpy(), name.rsplit("/", 1)[-1]
        if leaf in ("gamma", "moving_variance") or leaf.startswith("WSM"):
            x = rng.uniform(0.6, 1.4, x.shape)
        elif leaf in ("beta", "moving_mean", "bias"):
            x = x + rng.normal(0.0, 0.2, x.shape)
        out[name] = x.astype(np.float32)
    return out


def jittered(values, seed, rel=0.03):
    """Every value scaled by a random factor within +-rel (like EMA shadows vs raw weights)."""
    rng = np.random.default_rng(seed)
    return {k: (v * rng.uniform(1 - rel, 1 + rel, v.shape)).astype(np.float32)
            for k, v in values.items()}


def assign(model, values):
    for name, v in model.variables_by_name().items():
        v.assign(values[name])


@pytest.fixture(scope="module")
def small():
    spec = load_spec("d0", SMALL)
    model = build_model(spec, seed=1)
    assign(model, randomised(model, 1))
    return spec, model


def run_cli(capsys, *argv):
    code = infer.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.err


def test_street_d0_gives_picture_json_and_raw_npz(small, tmp_path, capsys):
    """D0 at 128 px (the files' contents and their agreement do not depend on the size)."""
    code, err = run_cli(capsys, "--spec", "d0", "--set", SMALL[0], "--image", STREET, "--out",
                        tmp_path, "--dump-raw")
    assert code == 0, err
    assert "RANDOM weights" in err
    with Image.open(tmp_path / "street.jpg") as pic:
        assert pic.size == (1024, 636)
    result = json.loads((tmp_path / "detections.json").read_text())
    assert result["random_weights"] and result["checkpoint"] is None and result["nms"] == "soft"
    (entry,) = result["images"]
    assert entry["file"] == str(STREET) and (entry["height"], entry["width"]) == (636, 1024)
    n = len(entry["scores"])
    assert 0 < n <= 100 and len(entry["boxes"]) == len(entry["classes"]) == n
    assert entry["class_names"] == [COCO_LABELS.get(c, f"class_{c}") for c in entry["classes"]]
    raw = np.load(tmp_path / "street.npz")
    shapes = small[1].output_shapes()       # the same spec's model: its shapes
    assert set(raw.files) == {"input", "scale", "boxes", "scores", "classes",
                              "num_detections", *shapes}
    for key, shape in shapes.items():
        assert raw[key].shape == shape, key
    assert raw["input"].shape == (1, 128, 128, 3) and raw["scale"].tolist() == [8.0]
    want_input, _ = preprocess(read_image(STREET), 128)
    np.testing.assert_array_equal(raw["input"][0], want_input.numpy())
    assert raw["boxes"].shape == (1, 100, 4) and int(raw["num_detections"][0]) == n
    np.testing.assert_array_equal(raw["boxes"][0, :n], np.float32(entry["boxes"]))
    np.testing.assert_array_equal(raw["scores"][0, :n], np.float32(entry["scores"]))


def test_checkpoint_ema_values_are_the_ones_used(small, tmp_path, capsys):
    spec, model = small
    raw_vals = {k: v.numpy() for k, v in model.variables_by_name().items()}
    ema_vals = jittered(raw_vals, 2)
    write_released(raw_vals, tmp_path / "ck", ema=ema_vals, tar_gz=str(tmp_path / "ck.tar.gz"))
    code, err = run_cli(capsys, "--spec", "d0", "--set", SMALL[0], "--ckpt", tmp_path / "ck.tar.gz",
                        "--image", STREET, "--out", tmp_path / "out", "--nms", "hard",
                        "--max-dets", 20)
    assert code == 0, err
    assert "EMA shadows" in err and "loaded 709/709" in err and "RANDOM" not in err
    got = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert got["used_ema"] is True and got["checkpoint"].endswith("model")
    image = read_image(STREET).numpy()
    det, expect = Detector(spec, model, method="hard", max_dets=20), {}
    for name, values in (("ema", ema_vals), ("raw", raw_vals)):
        assign(model, values)  # the traced function reads the variables: no retrace needed
        expect[name] = det.detect([image])[0]
    (entry,) = got["images"]
    assert entry["scores"] == expect["ema"]["scores"] != expect["raw"]["scores"]
    assert entry["boxes"] == expect["ema"]["boxes"] != expect["raw"]["boxes"]
    assert max(entry["scores"]) < 0.999  # not saturated, so the comparison means something


def test_labels_file_names_the_classes(tmp_path, capsys):
    names = ["circle", "square", "triangle", "star", "cross", "ring"]
    coco = {"images": [], "annotations": [],
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    (tmp_path / "map.json").write_text(json.dumps({str(i + 1): n for i, n in enumerate(names)}))
    assert load_labels(tmp_path / "instances.json") == load_labels(tmp_path / "map.json")
    code, err = run_cli(capsys, "--spec", "demo", "--set", SMALL[0], "--image", STREET,
                        "--labels", tmp_path / "instances.json", "--out", tmp_path / "o",
                        "--max-dets", 5)
    assert code == 0, err
    (entry,) = json.loads((tmp_path / "o" / "detections.json").read_text())["images"]
    assert entry["classes"] and all(1 <= c <= 6 for c in entry["classes"])
    assert entry["class_names"] == [names[c - 1] for c in entry["classes"]]


def _bad_files(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not a picture\n")
    (tmp_path / "junk.tar.gz").write_bytes(b"\x1f\x8b" + bytes(range(200)))
    (tmp_path / "labels.json").write_text('{"1": 5}')
    return tmp_path


@pytest.mark.parametrize("extra, named", [
    (["--image", "{t}/missing.jpg"], "missing.jpg"),
    (["--image", "{t}/notes.jpg"], "notes.jpg"),
    (["--image", "{s}", "--ckpt", "{t}/junk.tar.gz"], "junk.tar.gz"),
    (["--image", "{s}", "--ckpt", "{t}/nowhere/model"], "nowhere"),
    (["--image", "{s}", "--labels", "{t}/labels.json"], "labels.json"),
    (["--image", "{s}", "--set", "fpn.chanels=3"], "chanels"),
])
def test_bad_input_gives_one_clear_line(tmp_path, capsys, extra, named):
    t = _bad_files(tmp_path)
    argv = [a.format(t=t, s=STREET) for a in extra]
    code, err = run_cli(capsys, "--spec", "d0", "--set", SMALL[0], *argv,
                        "--out", tmp_path / "out")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and named in errors[0], err
    assert not (tmp_path / "out" / "detections.json").exists()


def test_cli_process_exits_non_zero_without_traceback(tmp_path):
    r = run_py("import sys; from edetgraph.infer import main; sys.exit(main())", "--spec", "d0",
               "--image", str(tmp_path / "absent.png"), "--out", str(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'absent.png'}: no such image file"


def _same_detections(a: dict, b: dict):
    """Equal up to float noise: a batch of 2 runs other conv kernels than a batch of 1."""
    assert a["classes"] == b["classes"] and a["class_names"] == b["class_names"]
    np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-3)
    np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-6)


def test_detector_batch_list_and_single_agree(small):
    spec, model = small
    det = Detector(spec, model, max_dets=10)
    image = read_image(STREET).numpy()
    other = image[100:400, 200:900]
    single = det.detect([image])[0]
    assert single == det.detect(image[None])[0]  # a list of one and a batch of one: same call
    for got in det.detect(np.stack([image, image])):
        _same_detections(got, single)
    as_list = det.detect([image, other])
    assert as_list[0] == single and as_list[1] == det.detect([other])[0]
    assert as_list[1]["boxes"] != single["boxes"]
    with pytest.raises(ValueError, match="uint8"):
        det.detect([image.astype(np.float32)])


def test_own_checkpoint_of_a_model_round_trips_exactly(small, tmp_path):
    spec, model = small
    prefix = save_checkpoint(model.variables_by_name(), tmp_path / "own" / "ckpt", step=5)
    fresh = build_model(spec, seed=7)
    x = tf.random.uniform([1, 128, 128, 3], seed=3)
    # eager: two traces of D0 would cost more than the four runs they serve
    run_fresh, run_model = fresh.raw_outputs, model.raw_outputs
    assert not np.array_equal(run_fresh(x)["cls_l3"], run_model(x)["cls_l3"])
    report = load_checkpoint(prefix, fresh.variables_by_name())
    assert report.format == "object" and len(report.loaded) == report.requested == 709
    loaded = fresh.variables_by_name()
    for name, v in model.variables_by_name().items():
        np.testing.assert_array_equal(loaded[name].numpy(), v.numpy(), name)
    want = run_model(x)
    for key, value in run_fresh(x).items():
        np.testing.assert_array_equal(value.numpy(), want[key].numpy(), key)


def test_released_layout_of_a_model_loads_back(small, tmp_path):
    spec, model = small
    ema = jittered({k: v.numpy() for k, v in model.variables_by_name().items()}, 3)
    prefix = write_released(model.variables_by_name(), tmp_path / "efficientdet-d0", ema=ema)
    names = dict(tf.train.list_variables(prefix))
    assert len(names) == 2 * 709 + 1 and names["global_step"] == []
    for use_ema, want in ((True, ema), (False, {k: v.numpy() for k, v in model.variables_by_name().items()})):
        fresh = build_model(spec, seed=9)
        report = load_checkpoint(tmp_path / "efficientdet-d0", fresh.variables_by_name(), use_ema=use_ema)
        assert report.used_ema is use_ema and report.format == "name"
        for name, v in fresh.variables_by_name().items():
            np.testing.assert_array_equal(v.numpy(), want[name], name)


def test_draw_detections_draws_only_what_passes_the_threshold():
    image = np.full((200, 300, 3), 255, np.uint8)
    pic = draw_detections(image, [[20, 30, 120, 150], [50, 60, 90, 100]], [0.9, 0.1], [1, 3],
                          labels=COCO_LABELS, min_score=0.5)
    arr = np.asarray(pic)
    assert pic.size == (300, 200) and (arr != 255).any()
    assert (arr[70, 80] == 255).all()       # inside box 1, away from its edges: untouched
    assert (arr[20:24, 100] != 255).any()   # box 1's top edge is drawn
    plain = np.asarray(draw_detections(image, [[50, 60, 90, 100]], [0.1], [3], min_score=0.5))
    assert (plain == 255).all()             # nothing above the threshold, nothing drawn
