"""The built-in synthetic shapes dataset: deterministic, valid COCO, tight boxes in the image."""
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import tree_digest
from pycocotools.coco import COCO

from edetgraph.data import synthetic


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    summary = synthetic.generate(root, num_images=60, image_size=128, seed=7, val_fraction=0.25)
    return root, summary


def test_same_seed_same_bytes_other_seed_differs(dataset, tmp_path):
    root, summary = dataset
    again = synthetic.generate(tmp_path / "a", 60, 128, seed=7, val_fraction=0.25)
    other = synthetic.generate(tmp_path / "b", 60, 128, seed=8, val_fraction=0.25)
    assert tree_digest(root) == tree_digest(tmp_path / "a")
    assert tree_digest(root) != tree_digest(tmp_path / "b")
    counts = lambda s: {k: (v["images"], v["boxes"], v["empty_images"]) for k, v in s.items()}
    assert counts(again["splits"]) == counts(summary["splits"])
    assert other["splits"]["train"]["images"] == 45


def test_coco_json_is_valid_and_boxes_inside(dataset):
    root, summary = dataset
    assert summary["splits"]["train"]["images"] == 45 and summary["splits"]["val"]["images"] == 15
    ids = set()
    for split in ("train", "val"):
        coco = COCO(str(root / split / "instances.json"))
        cats = coco.loadCats(coco.getCatIds())
        assert [(c["id"], c["name"]) for c in cats] == list(enumerate(synthetic.SHAPES[:6], 1))
        for img in coco.loadImgs(coco.getImgIds()):
            assert (root / split / "images" / img["file_name"]).is_file()
            assert (img["height"], img["width"]) == (128, 128)
            ids.add(img["id"])
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            assert len(anns) <= 6
            for a in anns:
                x, y, w, h = a["bbox"]
                assert x >= 0 and y >= 0 and w > 0 and h > 0
                assert x + w <= 128 and y + h <= 128
                assert 0 < a["area"] <= w * h and a["iscrowd"] == 0
                assert 1 <= a["category_id"] <= 6
                assert max(w, h) >= 6
    assert len(ids) == 60          # ids unique across the splits
    total = summary["splits"]["train"]["boxes"] + summary["splits"]["val"]["boxes"]
    empty = summary["splits"]["train"]["empty_images"] + summary["splits"]["val"]["empty_images"]
    assert 0 < empty < 60 and total >= 2 * (60 - empty) * 0.8


@pytest.mark.parametrize("shape", synthetic.SHAPES)
def test_shape_masks_fill_their_box(shape):
    mask = synthetic.shape_mask(shape, 37, 23)
    assert mask.shape == (23, 37)
    assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()
    assert 0.15 < mask.mean() < 1.0 or shape == "square"


def test_boxes_and_areas_are_of_visible_pixels():
    ids = np.full((10, 12), -1, np.int32)
    ids[2:6, 3:9] = 0          # object 0: 4 x 6 ...
    ids[4:8, 5:11] = 1         # ... partly hidden by object 1 drawn later
    objs = synthetic._visible_objects(ids, [2, 4])
    assert objs[0] == {"category_id": 3, "bbox": [3, 2, 6, 4], "area": 24 - 2 * 4}
    assert objs[1] == {"category_id": 5, "bbox": [5, 4, 6, 4], "area": 24}
    image, objects = synthetic.render_image(np.random.default_rng(3), 96, 6)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8


def test_cli_writes_tfrecords_and_rejects_bad_args(tmp_path):
    out = tmp_path / "cli"
    run = subprocess.run([sys.executable, "-m", "edetgraph.data.synthetic", "--out", str(out),
                          "--num-images", "12", "--image-size", "64", "--seed", "1",
                          "--num-classes", "8", "--tfrecord", "--shards", "2"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["num_classes"] == 8
    assert summary["tfrecords"]["train"]["images"] == 10
    assert len(list((out / "tfrecord").glob("train-*-of-00002.tfrecord"))) == 2
    bad = subprocess.run([sys.executable, "-m", "edetgraph.data.synthetic", "--out", str(out),
                          "--num-classes", "9"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: num_classes must be in 1..8")
    assert "Traceback" not in bad.stderr


def test_generation_needs_no_tensorflow(tmp_path):
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'tensorflow':\n"
            "            raise ImportError('tensorflow blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "from edetgraph.data.synthetic import generate\n"
            f"s = generate({str(tmp_path)!r}, 4, 64, seed=0)\n"
            "print(s['splits']['train']['images'], 'tensorflow' in sys.modules)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["3", "False"]


def test_a_failed_run_keeps_the_old_split_and_leaves_no_half_split(tmp_path):
    root = tmp_path / "shapes"
    synthetic.generate(root, 8, 64, seed=1, val_fraction=0.25)
    before = tree_digest(root)

    def crash(split, done, total):
        if split == "train" and done == 3:
            raise OSError("disk full (simulated)")
    with pytest.raises(OSError, match="simulated"):
        synthetic.generate(root, 8, 64, seed=2, val_fraction=0.25, progress=crash)
    assert tree_digest(root) == before                      # the old dataset, whole
    assert sorted(p.name for p in root.iterdir()) == ["train", "val"]   # no temporary left

    again = synthetic.generate(root, 8, 64, seed=2, val_fraction=0.25)   # replaces it whole
    assert tree_digest(root) != before
    assert len(list((root / "train" / "images").iterdir())) == again["splits"]["train"]["images"]


def test_a_killed_run_never_shows_images_without_instances_json(tmp_path):
    code = ("import os, signal\n"
            "from edetgraph.data.synthetic import generate\n"
            "def kill(split, done, total):\n"
            "    if done == 2:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            f"generate({str(tmp_path / 'shapes')!r}, 6, 64, seed=0, progress=kill)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == -9, run.stderr
    visible = [p for p in (tmp_path / "shapes").iterdir() if not p.name.startswith(".")]
    assert visible == []                 # only a hidden .train.*.partial folder is left
