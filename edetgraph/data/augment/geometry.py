"""Geometric ops of the detection AutoAugment: rotate, translate and shear an image with its
boxes, ops applied only inside boxes, and the cutout that aims at a box.

Images are uint8 [h, w, 3]; boxes float32 [n, 4] normalised (ymin, xmin, ymax, xmax), as
the records hold them. Pixels are resampled by nearest neighbour with TF's projective
transform kernel (the kernel the official's image library calls), and pixels that come
from outside the picture are grey (128). Boxes are moved as the official moves them: the
corners, as whole pixels (truncated), transformed, then the enclosing box, clipped to the
picture; a box left with no height or width is given 0.05 of the picture (the official's
`delta`) so it never vanishes. Given boxes=None, the ops move the pixels only.
"""
from __future__ import annotations

import math

import tensorflow as tf

from edetgraph.data.augment.pixels import GREY, fill_window

_MIN_SIDE = 0.05      # the official's delta for boxes squashed to a line


def project(image, transform, interpolation="NEAREST", fill=GREY):
    """Resample image [h, w, c] through `transform` (8 numbers: output (x, y) reads input
    (a0 x + a1 y + a2, b0 x + b1 y + b2)); pixels read from outside become `fill`.

    Outside pixels are found with an extra all-ones channel that the kernel fills with 0,
    so a real black pixel is never mistaken for an empty one."""
    hw = tf.shape(image)[:2]
    alpha = tf.ones_like(image[:, :, :1])
    wrapped = tf.concat([image, alpha], axis=2)[None]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=wrapped, transforms=tf.cast(tf.reshape(transform, [1, 8]), tf.float32),
        output_shape=hw, fill_value=0.0, interpolation=interpolation, fill_mode="CONSTANT")[0]
    empty = tf.equal(out[:, :, -1:], 0)
    return tf.where(empty, tf.cast(fill, image.dtype), out[:, :, :-1])


def rotation(degrees, height, width):
    """The transform that turns the picture `degrees` counter-clockwise about its centre."""
    radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(radians), tf.sin(radians)
    h, w = tf.cast(height - 1, tf.float32), tf.cast(width - 1, tf.float32)
    dx = (w - (cos * w - sin * h)) / 2.0
    dy = (h - (sin * w + cos * h)) / 2.0
    return tf.stack([cos, -sin, dx, sin, cos, dy, 0.0, 0.0])


def _pixels(boxes, hw):
    """Normalised boxes -> int32 pixel corners (truncated), as the official counts them."""
    size = tf.cast(tf.tile(hw, [2]), tf.float32)
    return tf.cast(size * boxes, tf.int32)


def _to_boxes(ymin, xmin, ymax, xmax, hw):
    """Pixel extents (floats) -> normalised boxes, clipped, never of zero height/width."""
    h, w = tf.cast(hw[0], tf.float32), tf.cast(hw[1], tf.float32)
    ymin, ymax = tf.clip_by_value(ymin / h, 0., 1.), tf.clip_by_value(ymax / h, 0., 1.)
    xmin, xmax = tf.clip_by_value(xmin / w, 0., 1.), tf.clip_by_value(xmax / w, 0., 1.)

    def widen(lo, hi):
        flat = tf.equal(hi - lo, 0.0)
        return (tf.where(flat, tf.minimum(lo, 1.0 - _MIN_SIDE), lo),
                tf.where(flat, tf.maximum(hi, _MIN_SIDE), hi))
    ymin, ymax = widen(ymin, ymax)
    xmin, xmax = widen(xmin, xmax)
    return tf.stack([ymin, xmin, ymax, xmax], axis=1)


def rotate(image, boxes, degrees):
    """Rotate image and boxes `degrees` counter-clockwise; boxes enclose the turned corners."""
    hw = tf.shape(image)[:2]
    image = project(image, rotation(degrees, hw[0], hw[1]))
    if boxes is None:        # pixels only (inside a box)
        return image, None
    # Corners relative to the centre, y pointing up, in whole pixels (the official's ints).
    half = tf.cast(tf.tile(hw, [2]), tf.float32) * (tf.reshape(boxes, [-1, 4]) - 0.5)
    c = tf.cast(half, tf.int32) * tf.constant([-1, 1, -1, 1])
    ys = tf.cast(tf.stack([c[:, 0], c[:, 0], c[:, 2], c[:, 2]], 1), tf.float32)
    xs = tf.cast(tf.stack([c[:, 1], c[:, 3], c[:, 1], c[:, 3]], 1), tf.float32)
    radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(radians), tf.sin(radians)
    new_y = tf.cast(tf.cast(cos * ys + sin * xs, tf.int32), tf.float32)
    new_x = tf.cast(tf.cast(cos * xs - sin * ys, tf.int32), tf.float32)
    h, w = tf.cast(hw[0], tf.float32), tf.cast(hw[1], tf.float32)
    return image, _to_boxes(h / 2 - tf.reduce_max(new_y, 1), tf.reduce_min(new_x, 1) + w / 2,
                            h / 2 - tf.reduce_min(new_y, 1), tf.reduce_max(new_x, 1) + w / 2, hw)


def translate(image, boxes, pixels, horizontal: bool):
    """Move the content `pixels` left (horizontal) or up (vertical), with the boxes."""
    hw = tf.shape(image)[:2]
    p = tf.cast(pixels, tf.float32)
    move = [1., 0., p, 0., 1., 0., 0., 0.] if horizontal else [1., 0., 0., 0., 1., p, 0., 0.]
    image = project(image, tf.stack(move))
    if boxes is None:        # pixels only (inside a box)
        return image, None
    c = tf.unstack(_pixels(tf.reshape(boxes, [-1, 4]), hw), num=4, axis=1)
    shift = tf.cast(p, tf.int32)
    axis = 1 if horizontal else 0
    c[axis] = tf.maximum(0, c[axis] - shift)
    c[axis + 2] = tf.minimum(hw[axis], c[axis + 2] - shift)
    return image, _to_boxes(*[tf.cast(v, tf.float32) for v in c], hw)


def shear(image, boxes, level, horizontal: bool):
    """Shear by `level`: x -= level * y (horizontal) or y -= level * x, with the boxes."""
    hw = tf.shape(image)[:2]
    level = tf.cast(level, tf.float32)
    matrix = ([1., level, 0., 0., 1., 0., 0., 0.] if horizontal
              else [1., 0., 0., level, 1., 0., 0., 0.])
    image = project(image, tf.stack(matrix))
    if boxes is None:        # pixels only (inside a box)
        return image, None
    c = tf.cast(_pixels(tf.reshape(boxes, [-1, 4]), hw), tf.float32)
    ys = tf.stack([c[:, 0], c[:, 0], c[:, 2], c[:, 2]], 1)
    xs = tf.stack([c[:, 1], c[:, 3], c[:, 1], c[:, 3]], 1)
    if horizontal:
        xs = tf.cast(tf.cast(xs - level * ys, tf.int32), tf.float32)
    else:
        ys = tf.cast(tf.cast(ys - level * xs, tf.int32), tf.float32)
    return image, _to_boxes(tf.reduce_min(ys, 1), tf.reduce_min(xs, 1),
                            tf.reduce_max(ys, 1), tf.reduce_max(xs, 1), hw)


def inside_boxes(image, boxes, prob, op, rng):
    """Apply `op` (image -> image of the same size) to the pixels of each box, each with
    probability `prob`, one box after the other in a random order; boxes are unchanged."""
    hw = tf.shape(image)[:2]
    corners = _pixels(rng.shuffle(tf.reshape(boxes, [-1, 4])), hw)
    corners = tf.concat([corners[:, :2], tf.minimum(corners[:, 2:], hw - 1)], 1)

    def body(i, img):
        y0, x0, y1, x1 = tf.unstack(corners[i])
        picked = rng.fold(i)
        apply = picked.chance(prob) & (y1 >= y0) & (x1 >= x0)
        # Worked out for every box and kept or not (no tf.cond): crops are small, and a
        # graph without a branch per box op traces in half the time.
        y1, x1 = tf.maximum(y0, y1), tf.maximum(x0, x1)
        crop = op(img[y0:y1 + 1, x0:x1 + 1], picked)
        pad = [[y0, hw[0] - 1 - y1], [x0, hw[1] - 1 - x1], [0, 0]]
        inside = tf.pad(tf.fill(tf.shape(crop), apply), pad, constant_values=False)
        return i + 1, tf.where(inside, tf.pad(crop, pad), img)

    _, image = tf.while_loop(lambda i, _: i < tf.shape(corners)[0], body,
                             [tf.constant(0), image])
    return image


def box_cutout(image, boxes, pad_fraction: float, rng):
    """Grey out a window centred in one randomly chosen box, of pad_fraction of its size."""
    def cut():
        hw = tf.shape(image)[:2]
        index = rng.uniform((), 0, tf.shape(boxes)[0], tf.int32)
        corners = _pixels(boxes[index], hw)
        side = corners[2:] - corners[:2] + 1
        half = tf.cast(pad_fraction * tf.cast(side, tf.float32) / 2.0, tf.int32)
        center = tf.stack([rng.uniform((), corners[0], corners[2] + 1, tf.int32),
                           rng.uniform((), corners[1], corners[3] + 1, tf.int32)])
        return fill_window(image, center, half)
    return tf.cond(tf.shape(boxes)[0] > 0, cut, lambda: image)
