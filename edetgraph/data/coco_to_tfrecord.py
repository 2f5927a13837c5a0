"""Convert a COCO-format detection set (images + instances.json) to sharded TFRecords.

    python -m edetgraph.data.coco_to_tfrecord --images DIR --annotations instances.json \\
        --out /data/train --shards 8

writes /data/train-00000-of-00008.tfrecord ... with the official feature keys (see
`edetgraph.data.tfexample`), image i going to shard i % N as the official converter does.
Boxes with no area, boxes reaching outside the image and boxes of unknown categories or
images are skipped and counted; a summary is printed at the end. A malformed file (a wrong
type, a NaN or infinite box, a size of 0, two images with one id, a name that cannot be
written) is one error line, before anything is written. The shards appear only once all
are complete, replacing any earlier set of the prefix as a whole (another --shards
included), so `PREFIX-*` never matches two sets or a half-written one. The categories' id ->
name map is written beside them, to PREFIX.labels.json, for training to keep. Paths may be
gs://.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections import Counter, defaultdict

from edetgraph.cli import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow loads below: its start-up notices are not warnings

import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from edetgraph.data.coco_checks import CocoError, check_coco  # noqa: E402
from edetgraph.data.labels import labels_json, records_labels_path  # noqa: E402
from edetgraph.data.picture import PictureError, check_pixels  # noqa: E402
from edetgraph.data.shards import SHARD, ShardSet  # noqa: E402
from edetgraph.data.tfexample import encode_example  # noqa: E402
from edetgraph.files import (disk_full_message, is_disk_full, is_real_folder,  # noqa: E402
                             refuse_folder, remove, write_text)

__all__ = ["CocoError", "load_coco", "convert", "main"]


def load_coco(path: str) -> dict:
    """Read and check a COCO instances JSON (``coco_checks``); raises CocoError naming `path`."""
    if not tf.io.gfile.exists(path):
        raise CocoError(f"{path}: no such annotation file")
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            coco = json.load(f)
    except json.JSONDecodeError as e:
        raise CocoError(f"{path}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})")
    except UnicodeDecodeError as e:
        raise CocoError(f"{path}: not a text file ({e.reason})")
    return check_coco(coco, path)


def _read_image(images_dir: str, record: dict, ann_path: str) -> tuple[bytes, int, int, str]:
    """Bytes, height, width and format of one image; JSON sizes win, as in the official tool."""
    path = f"{images_dir.rstrip('/')}/{record['file_name']}"
    if not tf.io.gfile.exists(path):
        raise CocoError(f"{path}: no such image file (listed in {ann_path})")
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h) = (im.format or "jpeg").lower(), im.size
    except Exception as e:    # PIL raises several types for unreadable files
        raise CocoError(f"{path}: not a readable image ({e})")
    try:   # training decodes every record: a decompression bomb stops here
        check_pixels(path, w, h)
    except PictureError as e:
        raise CocoError(str(e)) from None
    return data, int(record.get("height", h)), int(record.get("width", w)), fmt


def _box_problem(bbox, height: int, width: int) -> str | None:
    """Why a COCO [x, y, w, h] box cannot be written, or None if it can."""
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return "no_area"
    if x < 0 or y < 0 or x + w > width or y + h > height:
        return "outside_image"
    return None


def _example(record: dict, anns: list, names: dict, images_dir: str, ann_path: str,
             skipped: Counter) -> tuple[tf.train.Example, int]:
    """The tf.Example of one image and how many of its boxes it holds."""
    data, height, width, fmt = _read_image(images_dir, record, ann_path)
    boxes, classes, crowd, areas = [], [], [], []
    for ann in anns:
        problem = ("unknown_category" if ann["category_id"] not in names
                   else _box_problem(ann["bbox"], height, width))
        if problem:
            skipped[problem] += 1
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        boxes.append((y / height, x / width, (y + h) / height, (x + w) / width))
        classes.append(int(ann["category_id"]))
        crowd.append(int(ann.get("iscrowd", 0)))
        areas.append(float(ann.get("area", w * h)))
    example = encode_example(data, height, width, str(record["id"]), record["file_name"],
                             boxes, classes, [names[c] for c in classes], crowd, areas, fmt)
    return example, len(boxes)


def convert(images_dir: str, annotations: str, out_prefix: str, num_shards: int = 1,
            log=print) -> dict:
    """Write PREFIX-0000i-of-0000N.tfrecord shards; returns a summary of what was written.

    The shards are written under temporary names and renamed only once every one is
    complete; then any other shard set of PREFIX (another --shards) is removed, so the set
    is replaced as a whole and a failed or killed run leaves the old set as it was.
    Summary keys: images, images_without_boxes, boxes_written, boxes_skipped (by reason:
    no_area, outside_image, unknown_category, unknown_image), files, labels (the
    category id -> name map, written to PREFIX.labels.json beside the shards). `log` receives
    progress lines (None for silence).
    """
    if num_shards < 1:
        raise CocoError(f"--shards must be >= 1, got {num_shards}")
    coco = load_coco(annotations)
    names = {c["id"]: c["name"] for c in coco.get("categories", [])}
    image_ids = {rec["id"] for rec in coco["images"]}
    by_image, skipped = defaultdict(list), Counter()
    for ann in coco["annotations"]:
        if ann["image_id"] in image_ids:
            by_image[ann["image_id"]].append(ann)
        else:
            skipped["unknown_image"] += 1
    written, empty, total = 0, 0, len(coco["images"])
    with ShardSet(out_prefix, num_shards) as shards:
        for i, record in enumerate(coco["images"]):
            example, n = _example(record, by_image[record["id"]], names, images_dir,
                                  annotations, skipped)
            shards.write(i % num_shards, example.SerializeToString())
            written, empty = written + n, empty + (n == 0)
            if log and (i + 1 == total or (i + 1) % max(1, total // 10) == 0):
                log(f"[coco_to_tfrecord] {i + 1}/{total} images")
        shards.commit()
    labels = records_labels_path(out_prefix)
    if names:   # the class names travel with the records: training keeps them
        if labels.startswith("gs://"):
            with tf.io.gfile.GFile(labels, "w") as f:
                f.write(labels_json(names))
        else:
            write_text(labels, labels_json(names))
    elif not labels.startswith("gs://") and not is_real_folder(labels):
        remove(labels)   # an older run's names; a folder of that name is the user's
    reasons = ("no_area", "outside_image", "unknown_category", "unknown_image")
    return {"images": total, "images_without_boxes": empty, "boxes_written": written,
            "boxes_skipped": {r: skipped[r] for r in reasons}, "files": shards.files,
            "labels": labels if names else None}


def _refuse_folders(prefix: str) -> None:
    """A folder named like one of PREFIX's shards or its labels file is the user's, not an
    output to replace: refused (OutputRefused) before anything is written."""
    folder, stem = os.path.split(os.path.abspath(prefix))
    refuse_folder(records_labels_path(prefix), "a labels file")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    for name in names:
        m = SHARD.match(name)
        if m and m["stem"] == stem:
            refuse_folder(os.path.join(folder, name), "a TFRecord shard")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edetgraph.data.coco_to_tfrecord",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="directory holding the image files")
    p.add_argument("--annotations", required=True, help="COCO instances JSON")
    p.add_argument("--out", required=True, help="output prefix, e.g. /data/coco/train")
    p.add_argument("--shards", type=int, default=1, help="number of output files (default 1)")
    args = p.parse_args(argv)
    try:
        if not args.out.startswith("gs://"):   # checked before any work: the user's folders stay
            _refuse_folders(args.out)
        summary = convert(args.images, args.annotations, args.out, args.shards,
                          log=lambda msg: print(msg, file=sys.stderr))
    except (CocoError, OSError, tf.errors.OpError) as e:
        msg = e.message if isinstance(e, tf.errors.OpError) else str(e)
        if is_disk_full(e):
            msg = disk_full_message(os.path.dirname(os.path.abspath(args.out)))
        print(f"error: {msg.splitlines()[0] if msg else type(e).__name__}", file=sys.stderr)
        return 2
    skipped = ", ".join(f"{k} {v}" for k, v in summary["boxes_skipped"].items())
    print(f"{summary['images']} images ({summary['images_without_boxes']} without boxes), "
          f"{summary['boxes_written']} boxes written, skipped: {skipped}")
    print(f"wrote {len(summary['files'])} file(s): {summary['files'][0]} ...")
    if summary["labels"]:
        print(f"class names: {summary['labels']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
