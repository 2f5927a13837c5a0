"""COCO -> TFRecord at the door and on the way out: malformed instances files are one line
before anything is written; shards appear only as a complete set that replaces the
prefix's old set as a whole; a failed, killed or disk-full run leaves nothing a `train-*`
glob would read; training refuses a glob over two shard sets and data that does not
decode (exit 2, one line)."""
import copy
import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT
from PIL import Image

from edetgraph.data import coco_to_tfrecord, shards
from edetgraph.data.coco_checks import CocoError
from edetgraph.data.pipeline import list_files


@pytest.fixture()
def coco(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray(np.full((32, 48, 3), 40 * i, np.uint8)).save(images / f"{i}.jpg")
    data = {"images": [{"id": i, "file_name": f"{i}.jpg", "height": 32, "width": 48}
                       for i in range(4)],
            "annotations": [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [1, 2, 10, 12],
                             "area": 120, "iscrowd": 0}],
            "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "instances.json").write_text(json.dumps(data))
    return images, data, tmp_path


def _write(tmp_path, data, name="bad.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def _outputs(folder, stem="out"):
    return sorted(n for n in os.listdir(folder) if n.startswith((stem, f".{stem}")))


BAD = {   # what is changed -> the one line that must name it
    "nan_bbox": (lambda d: d["annotations"][0].update(bbox=[float("nan"), 1, 5, 5]),
                 "annotations[0].bbox must be 4 finite numbers, got [nan, 1, 5, 5]"),
    "inf_bbox": (lambda d: d["annotations"][0].update(bbox=[1, 1, float("inf"), 5]),
                 "annotations[0].bbox must be 4 finite numbers, got [1, 1, inf, 5]"),
    "height_0": (lambda d: d["images"][1].update(height=0),
                 "images[1].height must be a positive integer, got 0"),
    "string_height": (lambda d: d["images"][1].update(height="tall"),
                      "images[1].height must be a positive integer, got 'tall'"),
    "list_category": (lambda d: d["annotations"][0].update(category_id=[1]),
                      "annotations[0].category_id must be an integer, got [1]"),
    "duplicate_id": (lambda d: d["images"][2].update(id=0),
                     "images[2].id 0 is also the id of images[0]; image ids must be unique"),
    "unwritable_name": (lambda d: d["images"][3].update(file_name="bad\udce9.jpg"),
                        "images[3].file_name must be a file name UTF-8 can encode"),
    "nan_area": (lambda d: d["annotations"][0].update(area=float("nan")),
                 "annotations[0].area must be a finite number >= 0, got nan"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_malformed_instances_file_is_one_line_and_writes_nothing(coco, kind, capsys):
    images, data, tmp = coco
    bad = copy.deepcopy(data)
    BAD[kind][0](bad)
    ann = tmp / "bad.json"
    ann.write_text(json.dumps(bad))           # json writes NaN/Infinity, as the files
    code = coco_to_tfrecord.main(["--images", str(images), "--annotations", str(ann),
                                  "--out", str(tmp / "out"), "--shards", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {ann}: {BAD[kind][1]}")
    assert _outputs(tmp) == []


def test_a_correct_file_still_converts(coco):
    images, data, tmp = coco
    summary = coco_to_tfrecord.convert(str(images), _write(tmp, data, "ok.json"),
                                       str(tmp / "out"), 2, log=None)
    assert summary["images"] == 4 and summary["boxes_written"] == 1
    assert _outputs(tmp) == ["out-00000-of-00002.tfrecord", "out-00001-of-00002.tfrecord",
                             "out.labels.json"]      # the class names beside the set


def test_a_missing_image_leaves_nothing_and_keeps_the_old_set(coco):
    images, data, tmp = coco
    coco_to_tfrecord.convert(str(images), _write(tmp, data, "ok.json"), str(tmp / "out"), 2,
                             log=None)
    old = {n: (tmp / n).read_bytes() for n in _outputs(tmp)}
    data["images"].append({"id": 9, "file_name": "gone.jpg"})    # the last image is missing
    with pytest.raises(CocoError, match="gone.jpg: no such image file"):
        coco_to_tfrecord.convert(str(images), _write(tmp, data), str(tmp / "out"), 3, log=None)
    assert {n: (tmp / n).read_bytes() for n in _outputs(tmp)} == old


def test_a_rerun_with_other_shards_replaces_the_set_as_a_whole(coco):
    images, data, tmp = coco
    ann = _write(tmp, data, "ok.json")
    coco_to_tfrecord.convert(str(images), ann, str(tmp / "out"), 2, log=None)
    (tmp / "other-00000-of-00005.tfrecord").write_bytes(b"another prefix: kept")
    coco_to_tfrecord.convert(str(images), ann, str(tmp / "out"), 3, log=None)
    assert _outputs(tmp) == [f"out-0000{i}-of-00003.tfrecord" for i in range(3)] + \
        ["out.labels.json"]
    assert (tmp / "other-00000-of-00005.tfrecord").exists()
    files = list_files(str(tmp / "out-*"))        # the README's glob takes one set
    assert len(files) == 3
    n = sum(1 for _ in tf.data.TFRecordDataset(files))
    assert n == 4


def test_a_glob_over_two_shard_sets_is_refused_and_a_subset_is_not(coco):
    images, data, tmp = coco
    ann = _write(tmp, data, "ok.json")
    coco_to_tfrecord.convert(str(images), ann, str(tmp / "out"), 3, log=None)
    (tmp / "out-00000-of-00002.tfrecord").write_bytes(b"")      # a set left by an old version
    with pytest.raises(ValueError, match=r"out-\* matches 2 shard sets of .*out "
                                         r"\(-of-00002 and -of-00003\)"):
        list_files(str(tmp / "out-*"))
    assert len(list_files(str(tmp / "out-0000[01]-of-00003.tfrecord"))) == 2   # a subset


def test_a_full_disk_leaves_nothing_and_is_one_line(coco, capsys, monkeypatch):
    images, data, tmp = coco
    real = shards.ShardSet.write

    def full(self, index, record):
        if index == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, index, record)

    monkeypatch.setattr(shards.ShardSet, "write", full)
    code = coco_to_tfrecord.main(["--images", str(images), "--annotations",
                                  _write(tmp, data, "ok.json"), "--out", str(tmp / "out"),
                                  "--shards", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith(f"error: {tmp}: no space left on the device (")
    assert _outputs(tmp) == []


@pytest.mark.slow   # a subprocess that starts TensorFlow
def test_a_killed_run_leaves_only_hidden_temporaries_that_the_next_run_removes(coco):
    images, data, tmp = coco
    data["images"] = [dict(im, id=i) for i, im in enumerate(data["images"] * 3000)]
    ann = _write(tmp, data, "big.json")
    proc = subprocess.Popen([sys.executable, "-m", "edetgraph.data.coco_to_tfrecord",
                             "--images", str(images), "--annotations", ann,
                             "--out", str(tmp / "out"), "--shards", "2"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:            # killed while it writes
        if "images" in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    left = _outputs(tmp)
    assert left and all(n.startswith(".out-") and n.endswith(".partial") for n in left), left
    with pytest.raises(FileNotFoundError):
        list_files(str(tmp / "out-*"))
    data["images"] = data["images"][:4]
    coco_to_tfrecord.convert(str(images), _write(tmp, data, "ok.json"), str(tmp / "out"), 2,
                             log=None)
    assert _outputs(tmp) == ["out-00000-of-00002.tfrecord", "out-00001-of-00002.tfrecord",
                             "out.labels.json"]      # the class names beside the set


def test_a_picture_past_the_pixel_limit_is_refused(coco, monkeypatch):
    images, data, tmp = coco
    monkeypatch.setenv("EDETGRAPH_MAX_IMAGE_PIXELS", "1000")     # 48 x 32 = 1536
    with pytest.raises(CocoError, match=r"0.jpg: 48x32 pixels .*EDETGRAPH_MAX_IMAGE_PIXELS"):
        coco_to_tfrecord.convert(str(images), _write(tmp, data, "ok.json"), str(tmp / "out"), 1,
                                 log=None)
    assert _outputs(tmp) == []


@pytest.mark.slow   # starts TensorFlow and builds a model
def test_train_on_random_bytes_is_exit_2_and_one_line(tmp_path, capfd):
    """The train command's main in this process; capfd takes file descriptor 2 itself, so
    whatever TensorFlow's C++ side would print while reading the junk counts too."""
    from edetgraph.train import main
    junk = tmp_path / "junk.tfrecord"
    junk.write_bytes(np.random.default_rng(0).bytes(50_000))
    start = time.perf_counter()
    code = main(["--spec", "d0",
                 "--set", "image_size=64", "--set", "num_classes=3",
                 "--set", "backbone.width=0.25", "--set", "backbone.depth=0.1",
                 "--set", "fpn.channels=8", "--set", "fpn.repeats=1",
                 "--set", "head.repeats=1", "--set", "anchors.max_level=5",
                 "--train-set", "steps=2", "--train-set", "batch_size=2",
                 "--model-dir", str(tmp_path / "run"), "--data", str(junk)])
    err = capfd.readouterr().err
    assert code == 2, err
    assert err.strip().splitlines() == [
        f"error: --data {junk}: cannot decode the first record of any of the first 1 input "
        f"files; first error: {junk}: corrupted record at 0 (Is this even a TFRecord file?)"]
    assert time.perf_counter() - start < 120
