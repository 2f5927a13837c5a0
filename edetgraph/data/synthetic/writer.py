"""The built-in dataset on disk: COCO folders per split, and TFRecords when asked."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from edetgraph.data.synthetic.levels import EASY, Difficulty, difficulty as level_named
from edetgraph.data.synthetic.scene import render_image
from edetgraph.data.synthetic.shapes import SHAPES
from edetgraph.files import atomic_dir

DEFAULT_NUM_CLASSES = 6


def categories(num_classes: int) -> list[dict]:
    """COCO category records, ids 1..num_classes."""
    return [{"id": i + 1, "name": SHAPES[i], "supercategory": "shape"} for i in range(num_classes)]


def _write_split(root: Path, name: str, ids: range, size: int, seed: int, num_classes: int,
                 progress, level: Difficulty = EASY) -> dict:
    """Render images `ids` into root/name and write its instances.json; returns counts.

    The split is written in a hidden folder beside root/name and renamed into place only
    when whole: a failed or killed run never leaves images without their instances.json, and
    a split written before stays as it was until the new one is complete."""
    split_dir = root / name
    root.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    with atomic_dir(split_dir) as tmp:
        img_dir = Path(tmp) / "images"
        img_dir.mkdir(parents=True)
        for k, image_id in enumerate(ids):
            rng = np.random.default_rng([seed, image_id])   # per image: same pixels, any split
            pixels, objects = render_image(rng, size, num_classes, level)
            file_name = f"{image_id:06d}.jpg"
            Image.fromarray(pixels).save(img_dir / file_name, quality=90)
            images.append({"id": image_id, "file_name": file_name, "height": size,
                           "width": size})
            for obj in objects:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "iscrowd": 0, **obj})
            progress(name, k + 1, len(ids))
        info = {"description": "edetgraph synthetic shapes", "seed": seed}
        if level != EASY:   # easy's file stays byte for byte what it always was
            info["difficulty"] = level.name
        coco = {"info": info, "licenses": [], "images": images, "annotations": annotations,
                "categories": categories(num_classes)}
        (Path(tmp) / "instances.json").write_text(json.dumps(coco))
    return {"images": len(images), "boxes": len(annotations),
            "annotations": str(split_dir / "instances.json"),
            "images_dir": str(split_dir / "images"),
            "empty_images": len(images) - len({a["image_id"] for a in annotations})}


def generate(out_dir, num_images: int, image_size: int, seed: int, val_fraction: float = 0.2,
             num_classes: int = DEFAULT_NUM_CLASSES, progress=None,
             difficulty: str = "easy") -> dict:
    """Write the dataset under out_dir and return a summary (counts and paths per split).

    The last round(num_images * val_fraction) image ids form the val split. The same
    arguments always give byte-identical files. `progress(split, done, total)` is called
    after each image when given. `difficulty` names a level of
    :data:`edetgraph.data.synthetic.DIFFICULTIES` ("easy": the original scenes).
    """
    level = level_named(difficulty)
    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be in 1..{len(SHAPES)}, got {num_classes}")
    if num_images < 1 or image_size < 32 or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"need num_images >= 1, image_size >= 32, 0 <= val_fraction < 1; got "
                         f"{num_images}, {image_size}, {val_fraction}")
    start = time.perf_counter()
    root = Path(out_dir)
    n_val = int(round(num_images * val_fraction))
    progress = progress or (lambda *_: None)
    splits = {"train": range(1, num_images - n_val + 1),
              "val": range(num_images - n_val + 1, num_images + 1)}
    written = {name: _write_split(root, name, ids, image_size, seed, num_classes, progress,
                                  level)
               for name, ids in splits.items()}
    summary = {"out_dir": str(root), "image_size": image_size, "seed": seed,
               "num_classes": num_classes, "difficulty": level.name, "splits": written,
               "categories": [c["name"] for c in categories(num_classes)]}
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary


def write_tfrecords(summary: dict, num_shards: int = 1) -> dict:
    """Convert each split of a generate() summary to DIR/tfrecord/<split>-*-of-N.tfrecord."""
    from edetgraph.data import coco_to_tfrecord  # deferred: only --tfrecord needs TensorFlow
    out = Path(summary["out_dir"]) / "tfrecord"
    out.mkdir(parents=True, exist_ok=True)
    result = {}
    for name, split in summary["splits"].items():
        if split["images"]:
            result[name] = coco_to_tfrecord.convert(split["images_dir"], split["annotations"],
                                                    str(out / name), num_shards, log=None)
    return result
