"""The detection AutoAugment policies (Zoph et al. 2019, "Learning Data Augmentation
Strategies for Object Detection") and RandAugment, as the official EfficientDet applies them.

A policy is a list of sub-policies; each image gets one sub-policy drawn uniformly, whose
ops run in turn, each with its probability. A magnitude (0..10) maps to an op's argument
as `OPS` says (e.g. rotation 30 degrees at 10, negated half the time). `*_BBox` ops move
the boxes with the pixels; `*_Only_BBoxes` ops change the pixels inside each box (each box
with a third of the op's probability) and leave the boxes alone. RandAugment, as the
official dataloader calls it: one layer, magnitude 15, picks one of ten ops and applies it.
"""
from __future__ import annotations

import tensorflow as tf

from edetgraph.data.augment import geometry as geo
from edetgraph.data.augment import pixels as px

MAX_LEVEL = 10.0
TRANSLATE = 250.0          # pixels at magnitude 10, whole image
TRANSLATE_IN_BOX = 120.0   # pixels at magnitude 10, inside boxes
CUTOUT = 100               # half side at magnitude 10, whole image
CUTOUT_IN_BOX = 50         # half side at magnitude 10, inside boxes
BOX_CUTOUT = 0.75          # share of the box at magnitude 10
RANDAUGMENT = dict(num_layers=1, magnitude=15)
RANDAUGMENT_OPS = ("Equalize", "Solarize", "Color", "Cutout", "SolarizeAdd",
                   "TranslateX_BBox", "TranslateY_BBox", "ShearX_BBox", "ShearY_BBox",
                   "Rotate_BBox")

POLICIES = {
    "v0": [[("TranslateX_BBox", 0.6, 4), ("Equalize", 0.8, 10)],
           [("TranslateY_Only_BBoxes", 0.2, 2), ("Cutout", 0.8, 8)],
           [("Sharpness", 0.0, 8), ("ShearX_BBox", 0.4, 0)],
           [("ShearY_BBox", 1.0, 2), ("TranslateY_Only_BBoxes", 0.6, 6)],
           [("Rotate_BBox", 0.6, 10), ("Color", 1.0, 6)]],
}
POLICIES["v1"] = POLICIES["v0"] + [
    [("Color", 0.0, 0), ("ShearX_Only_BBoxes", 0.8, 4)],
    [("ShearY_Only_BBoxes", 0.8, 2), ("Flip_Only_BBoxes", 0.0, 10)],
    [("Equalize", 0.6, 10), ("TranslateX_BBox", 0.2, 2)],
    [("Color", 1.0, 10), ("TranslateY_Only_BBoxes", 0.4, 6)],
    [("Rotate_BBox", 0.8, 10), ("Contrast", 0.0, 10)],
    [("Cutout", 0.2, 2), ("Brightness", 0.8, 10)],
    [("Color", 1.0, 6), ("Equalize", 1.0, 2)],
    [("Cutout_Only_BBoxes", 0.4, 6), ("TranslateY_Only_BBoxes", 0.8, 2)],
    [("Color", 0.2, 8), ("Rotate_BBox", 0.8, 10)],
    [("Sharpness", 0.4, 4), ("TranslateY_Only_BBoxes", 0.0, 4)],
    [("Sharpness", 1.0, 4), ("SolarizeAdd", 0.4, 4)],
    [("Rotate_BBox", 1.0, 8), ("Sharpness", 0.2, 8)],
    [("ShearY_BBox", 0.6, 10), ("Equalize_Only_BBoxes", 0.6, 8)],
    [("ShearX_BBox", 0.2, 6), ("TranslateY_Only_BBoxes", 0.2, 10)],
    [("SolarizeAdd", 0.6, 8), ("Brightness", 0.8, 10)]]
POLICIES["v2"] = [
    [("Color", 0.0, 6), ("Cutout", 0.6, 8), ("Sharpness", 0.4, 8)],
    [("Rotate_BBox", 0.4, 8), ("Sharpness", 0.4, 2), ("Rotate_BBox", 0.8, 10)],
    [("TranslateY_BBox", 1.0, 8), ("AutoContrast", 0.8, 2)],
    [("AutoContrast", 0.4, 6), ("ShearX_BBox", 0.8, 8), ("Brightness", 0.0, 10)],
    [("SolarizeAdd", 0.2, 6), ("Contrast", 0.0, 10), ("AutoContrast", 0.6, 0)],
    [("Cutout", 0.2, 0), ("Solarize", 0.8, 8), ("Color", 1.0, 4)],
    [("TranslateY_BBox", 0.0, 4), ("Equalize", 0.6, 8), ("Solarize", 0.0, 10)],
    [("TranslateY_BBox", 0.2, 2), ("ShearY_BBox", 0.8, 8), ("Rotate_BBox", 0.8, 8)],
    [("Cutout", 0.8, 8), ("Brightness", 0.8, 8), ("Cutout", 0.2, 2)],
    [("Color", 0.8, 4), ("TranslateY_BBox", 1.0, 6), ("Rotate_BBox", 0.6, 6)],
    [("Rotate_BBox", 0.6, 10), ("BBox_Cutout", 1.0, 4), ("Cutout", 0.2, 8)],
    [("Rotate_BBox", 0.0, 0), ("Equalize", 0.6, 6), ("ShearY_BBox", 0.6, 8)],
    [("Brightness", 0.8, 8), ("AutoContrast", 0.4, 2), ("Brightness", 0.2, 2)],
    [("TranslateY_BBox", 0.4, 8), ("Solarize", 0.4, 6), ("SolarizeAdd", 0.2, 10)],
    [("Contrast", 1.0, 10), ("SolarizeAdd", 0.2, 8), ("Equalize", 0.2, 4)]]
POLICIES["v3"] = [
    [("Posterize", 0.8, 2), ("TranslateX_BBox", 1.0, 8)],
    [("BBox_Cutout", 0.2, 10), ("Sharpness", 1.0, 8)],
    [("Rotate_BBox", 0.6, 8), ("Rotate_BBox", 0.8, 10)],
    [("Equalize", 0.8, 10), ("AutoContrast", 0.2, 10)],
    [("SolarizeAdd", 0.2, 2), ("TranslateY_BBox", 0.2, 8)],
    [("Sharpness", 0.0, 2), ("Color", 0.4, 8)],
    [("Equalize", 1.0, 8), ("TranslateY_BBox", 1.0, 8)],
    [("Posterize", 0.6, 2), ("Rotate_BBox", 0.0, 10)],
    [("AutoContrast", 0.6, 0), ("Rotate_BBox", 1.0, 6)],
    [("Equalize", 0.0, 4), ("Cutout", 0.8, 10)],
    [("Brightness", 1.0, 2), ("TranslateY_BBox", 1.0, 6)],
    [("Contrast", 0.0, 2), ("ShearY_BBox", 0.8, 0)],
    [("AutoContrast", 0.8, 10), ("Contrast", 0.2, 10)],
    [("Rotate_BBox", 1.0, 10), ("Cutout", 1.0, 10)],
    [("SolarizeAdd", 0.8, 6), ("Equalize", 0.8, 8)]]


def _scale(level, top):
    return level / MAX_LEVEL * top


def _enhance(level):
    return _scale(level, 1.8) + 0.1


# Pixel ops: name -> (level -> fn(image, rng)). Signed magnitudes draw their sign per image.
_PIXEL_OPS = {
    "AutoContrast": lambda level: lambda im, rng: px.autocontrast(im),
    "Equalize": lambda level: lambda im, rng: px.equalize(im),
    "Posterize": lambda level: lambda im, rng: px.posterize(im, int(_scale(level, 4))),
    "Solarize": lambda level: lambda im, rng: px.solarize(im, int(_scale(level, 256))),
    "SolarizeAdd": lambda level: lambda im, rng: px.solarize_add(im, int(_scale(level, 110))),
    "Color": lambda level: lambda im, rng: px.color(im, _enhance(level)),
    "Contrast": lambda level: lambda im, rng: px.contrast(im, _enhance(level)),
    "Brightness": lambda level: lambda im, rng: px.brightness(im, _enhance(level)),
    "Sharpness": lambda level: lambda im, rng: px.sharpness(im, _enhance(level)),
    "Cutout": lambda level: lambda im, rng: px.cutout(im, int(_scale(level, CUTOUT)), rng),
}
# Ops that see the boxes: name -> (level -> fn(image, boxes, rng) -> (image, boxes)).
_BOX_OPS = {
    "Rotate_BBox": lambda level: lambda im, b, rng: geo.rotate(
        im, b, _scale(level, 30.0) * rng.sign()),
    "TranslateX_BBox": lambda level: lambda im, b, rng: geo.translate(
        im, b, _scale(level, TRANSLATE) * rng.sign(), True),
    "TranslateY_BBox": lambda level: lambda im, b, rng: geo.translate(
        im, b, _scale(level, TRANSLATE) * rng.sign(), False),
    "ShearX_BBox": lambda level: lambda im, b, rng: geo.shear(
        im, b, _scale(level, 0.3) * rng.sign(), True),
    "ShearY_BBox": lambda level: lambda im, b, rng: geo.shear(
        im, b, _scale(level, 0.3) * rng.sign(), False),
    "BBox_Cutout": lambda level: lambda im, b, rng: (
        geo.box_cutout(im, b, _scale(level, BOX_CUTOUT), rng), b),
}
# Ops inside boxes: name -> (level, rng -> fn(crop, rng)); the sign is drawn once per image.
_IN_BOX_OPS = {
    "Rotate_Only_BBoxes": lambda level, rng: _image_only(
        geo.rotate, _scale(level, 30.0) * rng.sign()),
    "ShearX_Only_BBoxes": lambda level, rng: _image_only(
        geo.shear, _scale(level, 0.3) * rng.sign(), True),
    "ShearY_Only_BBoxes": lambda level, rng: _image_only(
        geo.shear, _scale(level, 0.3) * rng.sign(), False),
    "TranslateX_Only_BBoxes": lambda level, rng: _image_only(
        geo.translate, _scale(level, TRANSLATE_IN_BOX) * rng.sign(), True),
    "TranslateY_Only_BBoxes": lambda level, rng: _image_only(
        geo.translate, _scale(level, TRANSLATE_IN_BOX) * rng.sign(), False),
    "Flip_Only_BBoxes": lambda level, rng: lambda crop, r: tf.image.flip_left_right(crop),
    "Solarize_Only_BBoxes": lambda level, rng: lambda crop, r: px.solarize(
        crop, int(_scale(level, 256))),
    "Equalize_Only_BBoxes": lambda level, rng: lambda crop, r: px.equalize(crop),
    "Cutout_Only_BBoxes": lambda level, rng: lambda crop, r: px.cutout(
        crop, int(_scale(level, CUTOUT_IN_BOX)), r),
}
OP_NAMES = tuple(_PIXEL_OPS) + tuple(_BOX_OPS) + tuple(_IN_BOX_OPS)


def _image_only(box_op, *args):
    """A box op used on a crop: its pixels only (the crop has no boxes of its own)."""
    return lambda crop, rng: box_op(crop, None, *args)[0]


def apply_op(name: str, prob: float, level: float, image, boxes, rng, always=False):
    """One policy entry on (image uint8 [h, w, 3], boxes [n, 4] normalised yxyx).

    With `always`, the op runs whatever `prob` says (RandAugment; in-box ops still draw
    each box's chance)."""
    if prob <= 0.0 and not always:      # in the policies as searched, never applied
        return image, boxes
    if name in _IN_BOX_OPS:
        op = _IN_BOX_OPS[name](level, rng)
        return geo.inside_boxes(image, boxes, prob / 3.0, op, rng), boxes
    if name in _PIXEL_OPS:
        pixel_op = _PIXEL_OPS[name](level)
        op = lambda im, b, r: (pixel_op(im, r), b)  # noqa: E731 (a one-line adapter)
    elif name in _BOX_OPS:
        op = _BOX_OPS[name](level)
    else:
        raise ValueError(f"unknown augmentation op {name!r}")
    if always:
        return op(image, boxes, rng)
    # Worked out and then kept or not, rather than a tf.cond: only the drawn sub-policy runs
    # (2 or 3 ops), and a graph without a branch per op traces much faster (v1 has 40 ops).
    apply = rng.chance(prob)
    new_image, new_boxes = op(image, boxes, rng)
    return tf.where(apply, new_image, image), tf.where(apply, new_boxes, boxes)


def autoaugment(image, boxes, policy: str, rng):
    """One sub-policy of `policy` (v0..v3), drawn uniformly, applied to image and boxes."""
    subs = POLICIES[policy]

    def branch(sub):
        def run():
            im, b = image, boxes
            for name, prob, level in sub:
                im, b = apply_op(name, prob, level, im, b, rng)
            return im, b
        return run
    pick = rng.uniform((), 0, len(subs), tf.int32)
    return tf.switch_case(pick, [branch(s) for s in subs])


def randaugment(image, boxes, rng, num_layers=RANDAUGMENT["num_layers"],
                magnitude=RANDAUGMENT["magnitude"]):
    """RandAugment: per layer, one of RANDAUGMENT_OPS drawn uniformly and applied."""
    for _ in range(num_layers):
        pick = rng.uniform((), 0, len(RANDAUGMENT_OPS), tf.int32)
        branches = [lambda n=n: apply_op(n, 1.0, float(magnitude), image, boxes, rng, True)
                    for n in RANDAUGMENT_OPS]
        image, boxes = tf.switch_case(pick, branches)
    return image, boxes
