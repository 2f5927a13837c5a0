"""Write tests/data/augment_golden.npz: the official AutoAugment ops' outputs on one picture.

    python tools/make_augment_golden.py --official /path/to/automl/efficientdet \\
        --addons DIR [--tf-keras DIR] [--out tests/data/augment_golden.npz]

tests/test_augment.py compares edetgraph.data.augment's ops with these pixels (and boxes),
so CI checks the parity without the official code. Run once; run again only to widen the
cases. Nothing of the official code is copied: it is imported from --official.

The official aug/autoaugment.py imports ``tensorflow_addons.image`` (rotate, translate,
transform), which no longer installs beside current TF; its 0.23 wheel still imports
under TF 2.21 when put on the path by itself (``pip install --target DIR --no-deps
tensorflow-addons==0.23.0 "typeguard<3"``) and when the name ``keras`` points to Keras 2
(tf_keras, from --tf-keras or the environment), which this script arranges. Written with
TF 2.21 on an AVX2 CPU; the ops are integer / float32 arithmetic, not CPU-dependent.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

os.environ["TF_USE_LEGACY_KERAS"] = "1"   # before TF is imported: tf_keras for the addons

import numpy as np  # noqa: E402

SIZE = 32
BOXES = [[0.15, 0.2, 0.55, 0.7], [0.5, 0.05, 0.95, 0.45]]
# (name, argument): the ops with no randomness, at arguments their policies use.
PIXEL_CASES = [("autocontrast", None), ("equalize", None), ("posterize", 2),
               ("posterize", 0), ("solarize", 128), ("solarize_add", 44),
               ("color", 1.18), ("color", 0.1), ("contrast", 1.9), ("contrast", 0.46),
               ("brightness", 1.9), ("sharpness", 1.54), ("sharpness", 0.46)]
GRID = (14, 8, (3, 5), -17.0)      # period, line width, row/column offsets, degrees
BOX_CASES = [("rotate", 24.0), ("rotate", -30.0), ("translate_x", 20.0),
             ("translate_y", -13.5), ("shear_x", 0.18), ("shear_y", -0.3)]


def picture(size: int = SIZE) -> np.ndarray:
    """Gradients, a dark and a bright block and some noise: every op changes something."""
    rng = np.random.RandomState(22)
    y, x = np.mgrid[0:size, 0:size]
    img = np.stack([x * 255 // (size - 1), y * 200 // (size - 1) + 20,
                    (x + y) * 90 // (2 * size - 2) + 60], -1).astype(np.int32)
    img[4:12, 6:20] = [10, 30, 200]
    img[18:28, 3:14] = [240, 250, 35]
    img += rng.randint(-12, 13, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def import_official(root: str, addons: str, tf_keras: str | None):
    """The official aug.autoaugment module, with `keras` aliased to tf_keras for the addons.

    TensorFlow is imported here, after the paths: it binds tf.keras to tf_keras only when
    tf_keras can be found at its import."""
    sys.path[:0] = [p for p in (addons, tf_keras, root) if p]
    import tensorflow  # noqa: F401 (deferred on purpose, see above)
    for suffix in ("", ".src", ".src.engine", ".src.engine.keras_tensor"):
        sys.modules["keras" + suffix] = importlib.import_module("tf_keras" + suffix)
    from aug import autoaugment  # deferred: found only once the paths above are set
    return autoaugment


def official_grid(aa, h, w, period, length, starts, degrees):
    """The official GridMask's mask for given draws (its class draws them itself)."""
    import tensorflow as tf  # deferred: the official code must be set up (import_official) first
    side = int(1.5 * max(h, w))
    grid = np.zeros((side, side), np.int32)
    for axis, start in enumerate(starts):      # rows, then columns (its two passes)
        for i in range(side // period):
            lo = period * i + start
            index = slice(lo, min(lo + length, side))
            if axis == 0:
                grid[index, :] = 1
            else:
                grid[:, index] = 1
    radians = np.pi * tf.constant(degrees, tf.float32) / 180     # float32, as it computes it
    turned = aa.image_ops.rotate(tf.constant(grid), radians, interpolation="BILINEAR").numpy()
    top, left = (side - h) // 2, (side - w) // 2
    return turned[top:top + h, left:left + w].astype(np.uint8)


def golden(aa) -> dict:
    import tensorflow as tf  # already imported by import_official
    image = tf.constant(picture())
    boxes = tf.constant(BOXES, tf.float32)
    grey = [128, 128, 128]
    out = {"image": image.numpy(), "boxes": np.array(BOXES, np.float32)}
    for i, (name, arg) in enumerate(PIXEL_CASES):
        fn = getattr(aa, name)
        out[f"pixel_{i}"] = (fn(image) if arg is None else fn(image, arg)).numpy()
    for i, (name, arg) in enumerate(BOX_CASES):
        value = tf.constant(arg, tf.float32)    # a float32 tensor, as the policies pass it
        if name == "rotate":
            img, bxs = aa.rotate_with_bboxes(image, boxes, value, grey)
        elif name.startswith("translate"):
            img, bxs = aa.translate_bbox(image, boxes, value, grey, name.endswith("x"))
        else:
            img, bxs = aa.shear_with_bboxes(image, boxes, value, grey, name.endswith("x"))
        out[f"geo_{i}"], out[f"geo_boxes_{i}"] = img.numpy(), bxs.numpy()
    # GridMask's grid for fixed draws: lines as the official's loop sets them (numpy below),
    # turned by the official's image library (bilinear) and cropped as the official crops.
    out["grid_mask"] = official_grid(aa, SIZE, SIZE, *GRID)
    # Equalize inside the first box only (the in-box ops' paste-back).
    out["in_box_equalize"] = aa._apply_bbox_augmentation(image, boxes[0], aa.equalize).numpy()
    out["cases"] = np.array(json.dumps({"pixel": PIXEL_CASES, "geo": BOX_CASES, "grid": GRID}))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", required=True, help="the automl efficientdet folder")
    ap.add_argument("--addons", required=True, help="folder holding tensorflow_addons 0.23")
    ap.add_argument("--tf-keras", help="folder holding tf_keras, if not installed")
    ap.add_argument("--out", default="tests/data/augment_golden.npz")
    args = ap.parse_args(argv)
    arrays = golden(import_official(args.official, args.addons, args.tf_keras))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"{args.out}: {len(arrays)} arrays, {Path(args.out).stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
