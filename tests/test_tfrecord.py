"""COCO -> TFRecord: what is written parses back (official keys, normalised boxes), bad
boxes are skipped and counted, bad inputs give one-line errors naming the file."""
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from edetgraph.data import coco_to_tfrecord
from edetgraph.data.tfexample import encode_example, parse_example


def _image(path, w, h, fmt="JPEG"):
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path, fmt)


@pytest.fixture()
def coco(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _image(images / "a.jpg", 100, 50)
    _image(images / "b.png", 40, 80, "PNG")
    _image(images / "c.jpg", 64, 64)
    ann = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 5, 20, 30], "area": 500, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 50], "area": 5000, "iscrowd": 1},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [10, 5, 0, 30], "area": 0, "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [10, 30, 20, 10], "area": 200, "iscrowd": 0},
        {"id": 5, "image_id": 2, "category_id": 9, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0},
        {"id": 6, "image_id": 77, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0},
        {"id": 7, "image_id": 2, "category_id": 3, "bbox": [2, 4, 6, -1], "area": 0, "iscrowd": 0},
        {"id": 8, "image_id": 2, "category_id": 3, "bbox": [35, 70, 10, 5], "area": 50, "iscrowd": 0},
    ]
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": 50, "width": 100},
                       {"id": 2, "file_name": "b.png", "height": 80, "width": 40},
                       {"id": 3, "file_name": "c.jpg"}],
            "annotations": ann,
            "categories": [{"id": 1, "name": "one"}, {"id": 3, "name": "three"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return images, path, tmp_path


def _records(files):
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files)]


def _feature(ex, key):
    f = ex.features.feature[key]
    return list(getattr(f, f.WhichOneof("kind")).value) if f.WhichOneof("kind") else []


def test_round_trip_and_skip_counts(coco):
    images, ann, tmp = coco
    summary = coco_to_tfrecord.convert(str(images), str(ann), str(tmp / "out" / "rec"), 2, log=None)
    assert summary["files"] == [str(tmp / "out" / f"rec-0000{i}-of-00002.tfrecord") for i in (0, 1)]
    assert summary["images"] == 3 and summary["images_without_boxes"] == 1
    assert summary["boxes_written"] == 3
    # the full-image box [0,0,100,50] ends exactly on the border and is kept
    assert summary["boxes_skipped"] == {"no_area": 2, "outside_image": 1, "unknown_category": 1,
                                        "unknown_image": 1}
    recs = _records(summary["files"][:1]) + _records(summary["files"][1:])
    a, c, b = recs                     # image i goes to shard i % 2
    assert _feature(a, "image/source_id") == [b"1"] and _feature(a, "image/format") == [b"jpeg"]
    assert _feature(a, "image/height") == [50] and _feature(a, "image/width") == [100]
    np.testing.assert_allclose(_feature(a, "image/object/bbox/xmin"), [0.1, 0.0])
    np.testing.assert_allclose(_feature(a, "image/object/bbox/ymin"), [0.1, 0.0])
    np.testing.assert_allclose(_feature(a, "image/object/bbox/xmax"), [0.3, 1.0])
    np.testing.assert_allclose(_feature(a, "image/object/bbox/ymax"), [0.7, 1.0])
    assert _feature(a, "image/object/class/label") == [3, 1]
    assert _feature(a, "image/object/class/text") == [b"three", b"one"]
    assert _feature(a, "image/object/is_crowd") == [0, 1]
    assert _feature(a, "image/object/area") == [500.0, 5000.0]
    assert _feature(a, "image/encoded") == [(images / "a.jpg").read_bytes()]
    assert _feature(b, "image/format") == [b"png"] and _feature(b, "image/object/class/label") == [1]
    np.testing.assert_allclose(_feature(b, "image/object/bbox/xmax"), [0.75])
    np.testing.assert_allclose(_feature(b, "image/object/bbox/ymax"), [0.5])
    # height/width missing from the JSON: read from the image itself
    assert _feature(c, "image/height") == [64] and _feature(c, "image/object/class/label") == []
    parsed = parse_example(tf.constant(a.SerializeToString()))
    assert parsed["image"].shape == (50, 100, 3)
    np.testing.assert_allclose(parsed["boxes"].numpy(), [[0.1, 0.1, 0.7, 0.3], [0, 0, 1, 1]], atol=1e-6)
    assert parsed["is_crowd"].numpy().tolist() == [False, True]


def test_parse_official_style_records_without_optional_lists():
    """The official converter omits all object keys for an image without annotations, and
    older records may lack is_crowd / area / source_id."""
    png = tf.io.encode_png(tf.zeros([4, 6, 3], tf.uint8)).numpy()
    feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png]))}
    bare = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
    parsed = parse_example(tf.constant(bare))
    assert parsed["image"].shape == (4, 6, 3) and parsed["boxes"].shape == (0, 4)
    assert parsed["source_id"].numpy() != b""     # named by a hash of the image, as official
    ex = encode_example(png, 4, 6, "", "x.png", [[0.0, 0.0, 0.5, 0.5]], [2], image_format="png")
    parsed = parse_example(tf.constant(ex.SerializeToString()))
    assert parsed["is_crowd"].numpy().tolist() == [False]
    np.testing.assert_allclose(parsed["areas"].numpy(), [0.25])


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "edetgraph.data.coco_to_tfrecord", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_summary_and_one_line_errors(coco, capsys):
    images, ann, tmp = coco
    ok = _cli("--images", str(images), "--annotations", str(ann), "--out", str(tmp / "r"),
              "--shards", "1")
    assert ok.returncode == 0, ok.stderr
    assert "3 boxes written" in ok.stdout and "outside_image 1" in ok.stdout
    assert (tmp / "r-00000-of-00001.tfrecord").is_file()

    def fails(annotations, expect, images_dir=images):   # in-process: no TF start-up per case
        code = coco_to_tfrecord.main(["--images", str(images_dir), "--annotations",
                                      str(annotations), "--out", str(tmp / "bad")])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2
        assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], lines

    fails(tmp / "missing.json", f"{tmp / 'missing.json'}: no such annotation file")
    (tmp / "broken.json").write_text('{"images": [')
    fails(tmp / "broken.json", f"{tmp / 'broken.json'}: malformed JSON")
    data = json.loads(ann.read_text())
    del data["annotations"][3]["bbox"]
    (tmp / "nobbox.json").write_text(json.dumps(data))
    fails(tmp / "nobbox.json", "nobbox.json: annotations[3] has no 'bbox'")
    fails(ann, "no_such_dir/a.jpg: no such image file", images_dir=tmp / "no_such_dir")
