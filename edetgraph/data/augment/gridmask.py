"""GridMask (Chen et al. 2020, arXiv:2001.04086) with the official EfficientDet parameters.

A square grid of period d (drawn in [min(h/2, 0.3 w), max(h/2, 0.3 w)]) keeps the pixels
on its lines (rows and columns `length` = 0.6 d wide) and blacks out the squares between
them, about (1 - length/d)^2 of the picture; the grid is drawn on a square 1.5x the
picture's longer side, turned by a small random angle, and its centre cut out. Boxes are
unchanged. Applied to the decoded uint8 image, before normalisation (black is 0).

Two of the official draws are kept as the official makes them, though they look like
slips, so that a recipe masks as the official does: the angle is 10 degrees times a
normal draw of mean -1 and deviation 1, and the mask is applied when a standard normal
draw is below 0.5 (69% of the images, not 50%).
"""
from __future__ import annotations

import math

import tensorflow as tf

from edetgraph.data.augment.geometry import rotation

RATIO = 0.6           # line width / period
ROTATE = 10.0         # degrees, times the normal draw
SIZE_RATIO = 0.5      # the grid's square is (1 + SIZE_RATIO) x the longer side
PROB = 0.5            # threshold of the standard normal draw


def _stripes(size, period, length, start):
    """bool [size]: positions in the lines [start + k period, start + k period + length)
    for the size // period lines the official draws."""
    k = tf.range(size) - start
    return (k >= 0) & (k % period < length) & (k // period < size // period)


def grid_pattern(height, width, period, length, starts, degrees):
    """The uint8 {0, 1} mask [height, width]: 1 on the grid lines, turned by `degrees`."""
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    side = tf.cast((1.0 + SIZE_RATIO) * tf.maximum(h, w), tf.int32)
    rows = _stripes(side, period, length, starts[0])
    cols = _stripes(side, period, length, starts[1])
    grid = tf.cast(rows[:, None] | cols[None, :], tf.int32)[None, :, :, None]
    # Bilinear on the int mask, as the official turns it; what comes from outside is 0.
    grid = tf.raw_ops.ImageProjectiveTransformV3(
        images=grid, transforms=rotation(degrees, side, side)[None], output_shape=[side, side],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")[0, :, :, 0]
    top, left = (side - height) // 2, (side - width) // 2
    return tf.cast(grid[top:top + height, left:left + width], tf.uint8)


def draw_grid(height, width, rng):
    """Random period, line width, offsets and angle as the official draws them."""
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    low = tf.cast(tf.minimum(h * 0.5, w * 0.3), tf.int32)
    high = tf.cast(tf.maximum(h * 0.5, w * 0.3), tf.int32) + 1
    # At least 1: a picture under 4 pixels would otherwise draw a period of 0.
    period = tf.maximum(rng.uniform((), low, high, tf.int32), 1)
    length = tf.cast(tf.cast(period, tf.float32) * RATIO + 0.5, tf.int32)
    length = tf.minimum(tf.maximum(length, 1), period - 1)
    starts = rng.uniform((2,), 0, period + 1, tf.int32)
    degrees = ROTATE * rng.normal((), -1.0, 1.0)
    return period, length, starts, degrees


def grid_mask(image, boxes, rng):
    """GridMask on a uint8 image [h, w, 3], applied with the official odds; boxes pass."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]

    def masked():
        period, length, starts, degrees = draw_grid(height, width, rng)
        return image * grid_pattern(height, width, period, length, starts, degrees)[:, :, None]
    return tf.cond(rng.normal() < PROB, masked, lambda: image), boxes


def expected_masked_fraction(period, length) -> float:
    """The share of an unturned, unclipped grid that is blacked out."""
    return (1.0 - length / period) ** 2 if period > 0 else math.nan
