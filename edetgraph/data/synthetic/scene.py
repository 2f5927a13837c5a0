"""A built-in detection dataset that needs no download: coloured shapes on noisy backgrounds.

Each image has 0 or 2..6 objects of up to eight shape classes (circle, square, triangle,
cross, ring, star, diamond, hourglass). Shapes differ by outline, not by colour, so a
detector has to learn form; colour, size (12-50 % of the image side) and aspect ratio vary,
and later objects may partly hide earlier ones. Boxes are the tight boxes of the *visible*
pixels and `area` is the visible pixel count, as in COCO. Only numpy and PIL are needed
(TensorFlow only for ``--tfrecord``).

    python -m edetgraph.data.synthetic --out /tmp/shapes --num-images 1000 --image-size 256 --seed 0

writes ``DIR/{train,val}/images/*.jpg`` and ``DIR/{train,val}/instances.json``; with
``--tfrecord`` also ``DIR/tfrecord/{train,val}-00000-of-0000N.tfrecord`` (N = ``--shards``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from edetgraph.files import atomic_dir

SHAPES = ("circle", "square", "triangle", "cross", "ring", "star", "diamond", "hourglass")
DEFAULT_NUM_CLASSES = 6
_SIZE_RANGE = (0.12, 0.50)      # longer box side as a fraction of the image side
_ASPECT_RANGE = (0.67, 1.5)     # width / height
_EMPTY_FRACTION = 0.1           # images without objects
_MAX_HIDDEN = 0.35              # an object may lose at most this share of its pixels
_PLACEMENT_TRIES = 30


def _star(points: int = 5, inner: float = 0.42) -> list[tuple[float, float]]:
    """Unit-box vertices of a star, stretched so its extremes touch the box edges."""
    ang = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    rad = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    x, y = rad * np.cos(ang), rad * np.sin(ang)
    x = (x - x.min()) / (x.max() - x.min())
    y = (y - y.min()) / (y.max() - y.min())
    return list(zip(x.tolist(), y.tolist()))


_POLYGONS = {
    "triangle": [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)],
    "cross": [(1 / 3, 0), (2 / 3, 0), (2 / 3, 1 / 3), (1, 1 / 3), (1, 2 / 3), (2 / 3, 2 / 3),
              (2 / 3, 1), (1 / 3, 1), (1 / 3, 2 / 3), (0, 2 / 3), (0, 1 / 3), (1 / 3, 1 / 3)],
    "star": _star(),
    "diamond": [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)],
    "hourglass": [(0, 0), (1, 0), (0.5, 0.5), (1, 1), (0, 1), (0.5, 0.5)],
}


def shape_mask(shape: str, width: int, height: int) -> np.ndarray:
    """Boolean [height, width] mask of `shape` filling a width x height box."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    box = (0, 0, width - 1, height - 1)
    if shape == "circle":
        draw.ellipse(box, fill=1)
    elif shape == "square":
        draw.rectangle(box, fill=1)
    elif shape == "ring":
        draw.ellipse(box, fill=1)
        t = max(2, round(0.22 * min(width, height)))
        draw.ellipse((t, t, width - 1 - t, height - 1 - t), fill=0)
    elif shape in _POLYGONS:
        draw.polygon([(x * (width - 1), y * (height - 1)) for x, y in _POLYGONS[shape]], fill=1)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return np.asarray(canvas, dtype=bool)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour field plus a finer texture: no flat colour a detector could key on."""
    def field(cells: int, lo: float, hi: float) -> np.ndarray:
        grid = rng.uniform(lo, hi, (cells, cells, 3)).astype(np.float32)
        channels = [np.asarray(Image.fromarray(grid[..., c], mode="F").resize(
            (size, size), Image.BICUBIC)) for c in range(3)]
        return np.stack(channels, axis=-1)
    return field(4, 40.0, 215.0) + field(24, -25.0, 25.0)


def _object_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A colour clearly different from the background it is drawn on."""
    ref = under.reshape(-1, 3).mean(axis=0)
    colour = rng.uniform(0, 255, 3)
    for _ in range(20):
        if np.linalg.norm(colour - ref) >= 110:
            break
        colour = rng.uniform(0, 255, 3)
    return colour.astype(np.float32)


def _sample_box(rng: np.random.Generator, size: int) -> tuple[int, int, int, int]:
    """Random (x0, y0, w, h) of an object box fully inside a size x size image."""
    side = size * np.exp(rng.uniform(*np.log(_SIZE_RANGE)))
    aspect = np.exp(rng.uniform(*np.log(_ASPECT_RANGE)))
    w = int(np.clip(round(side * min(1.0, np.sqrt(aspect))), 6, size))
    h = int(np.clip(round(side * min(1.0, 1.0 / np.sqrt(aspect))), 6, size))
    return int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1)), w, h


def _fits(ids: np.ndarray, region: tuple[slice, slice], mask: np.ndarray,
          visible: list[int]) -> bool:
    """True if drawing `mask` hides no more than _MAX_HIDDEN of any earlier object."""
    covered = ids[region][mask]
    covered = covered[covered >= 0]
    if covered.size == 0:
        return True
    hidden = np.bincount(covered, minlength=len(visible))
    return bool(np.all(hidden <= _MAX_HIDDEN * np.asarray(visible)))


def render_image(rng: np.random.Generator, size: int, num_classes: int
                 ) -> tuple[np.ndarray, list[dict]]:
    """One uint8 [size, size, 3] image and its objects ({category_id, bbox xywh, area})."""
    image = _background(rng, size)
    ids = np.full((size, size), -1, np.int32)
    count = 0 if rng.random() < _EMPTY_FRACTION else int(rng.integers(2, 7))
    classes, visible = [], []
    for _ in range(count):
        cls = int(rng.integers(0, num_classes))
        for _ in range(_PLACEMENT_TRIES):
            x0, y0, w, h = _sample_box(rng, size)
            mask = shape_mask(SHAPES[cls], w, h)
            region = (slice(y0, y0 + h), slice(x0, x0 + w))
            if _fits(ids, region, mask, visible):
                break
        else:
            continue    # no room left for this object: draw fewer
        covered = ids[region][mask]
        hidden = np.bincount(covered[covered >= 0], minlength=len(visible))
        visible = [v - int(n) for v, n in zip(visible, hidden)]
        image[region][mask] = _object_colour(rng, image[region])
        ids[region][mask] = len(classes)
        classes.append(cls)
        visible.append(int(mask.sum()))
    image += rng.normal(0.0, 8.0, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), _visible_objects(ids, classes)


def _visible_objects(ids: np.ndarray, classes: list[int]) -> list[dict]:
    """Tight COCO boxes [x, y, w, h] and pixel areas of what is left visible of each object."""
    objects = []
    for j, cls in enumerate(classes):
        ys, xs = np.nonzero(ids == j)
        if ys.size == 0:
            continue
        x0, y0 = int(xs.min()), int(ys.min())
        bbox = [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0]
        objects.append({"category_id": cls + 1, "bbox": bbox, "area": int(ys.size)})
    return objects


def categories(num_classes: int) -> list[dict]:
    """COCO category records, ids 1..num_classes."""
    return [{"id": i + 1, "name": SHAPES[i], "supercategory": "shape"} for i in range(num_classes)]


def _write_split(root: Path, name: str, ids: range, size: int, seed: int, num_classes: int,
                 progress) -> dict:
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
            pixels, objects = render_image(rng, size, num_classes)
            file_name = f"{image_id:06d}.jpg"
            Image.fromarray(pixels).save(img_dir / file_name, quality=90)
            images.append({"id": image_id, "file_name": file_name, "height": size,
                           "width": size})
            for obj in objects:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "iscrowd": 0, **obj})
            progress(name, k + 1, len(ids))
        coco = {"info": {"description": "edetgraph synthetic shapes", "seed": seed},
                "licenses": [], "images": images, "annotations": annotations,
                "categories": categories(num_classes)}
        (Path(tmp) / "instances.json").write_text(json.dumps(coco))
    return {"images": len(images), "boxes": len(annotations),
            "annotations": str(split_dir / "instances.json"),
            "images_dir": str(split_dir / "images"),
            "empty_images": len(images) - len({a["image_id"] for a in annotations})}


def generate(out_dir, num_images: int, image_size: int, seed: int, val_fraction: float = 0.2,
             num_classes: int = DEFAULT_NUM_CLASSES, progress=None) -> dict:
    """Write the dataset under out_dir and return a summary (counts and paths per split).

    The last round(num_images * val_fraction) image ids form the val split. The same
    arguments always give byte-identical files. `progress(split, done, total)` is called
    after each image when given.
    """
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
    written = {name: _write_split(root, name, ids, image_size, seed, num_classes, progress)
               for name, ids in splits.items()}
    summary = {"out_dir": str(root), "image_size": image_size, "seed": seed,
               "num_classes": num_classes, "splits": written,
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edetgraph.data.synthetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num-images", type=int, default=1000, help="images in total (default 1000)")
    p.add_argument("--image-size", type=int, default=256, help="square image side (default 256)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of val images (0.2)")
    p.add_argument("--num-classes", type=int, default=DEFAULT_NUM_CLASSES,
                   help=f"shape classes, 1..{len(SHAPES)} (default {DEFAULT_NUM_CLASSES})")
    p.add_argument("--tfrecord", action="store_true", help="also write TFRecords per split")
    p.add_argument("--shards", type=int, default=1, help="TFRecord shards per split (default 1)")
    args = p.parse_args(argv)

    def progress(split, done, total):
        if done == total or done % 200 == 0:
            print(f"[synthetic] {split}: {done}/{total} images", file=sys.stderr)
    try:
        summary = generate(args.out, args.num_images, args.image_size, args.seed,
                           args.val_fraction, args.num_classes, progress)
        if args.tfrecord:
            summary["tfrecords"] = write_tfrecords(summary, args.shards)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
