"""Colour and cutout ops of the detection AutoAugment, on uint8 images [h, w, 3].

Each op reproduces the PIL-like behaviour of the official TF implementation pixel for pixel
(tests/test_augment.py compares with its outputs): blends in float32 and truncates back to
uint8, the way `tf.cast` does, so the rounding is the same as well as the formula. Factors
are Python floats (they come from fixed policy magnitudes); an exact 0 or 1 returns one of
the two images untouched, as the official blend does.
"""
from __future__ import annotations

import tensorflow as tf

GREY = 128       # the official fill of emptied pixels (cutout, pixels moved in from outside)


def blend(image1, image2, factor: float):
    """image1 + factor * (image2 - image1) as uint8; 0 gives image1, 1 gives image2.

    Factors outside (0, 1) extrapolate, so only those results need clipping."""
    if factor == 0.0:
        return tf.convert_to_tensor(image1)
    if factor == 1.0:
        return tf.convert_to_tensor(image2)
    a, b = tf.cast(image1, tf.float32), tf.cast(image2, tf.float32)
    mixed = a + factor * (b - a)
    if not 0.0 < factor < 1.0:
        mixed = tf.clip_by_value(mixed, 0.0, 255.0)
    return tf.cast(mixed, tf.uint8)


def _grey(image):
    return tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))


def color(image, factor: float):
    """PIL Color: towards (0) or away from (>1) the image's own greyscale."""
    return blend(_grey(image), image, factor)


def contrast(image, factor: float):
    """PIL Contrast: towards the mean grey level of the whole image."""
    mean = tf.reduce_mean(tf.cast(tf.image.rgb_to_grayscale(image), tf.float32))
    flat = tf.cast(tf.clip_by_value(mean, 0.0, 255.0), tf.uint8) * tf.ones_like(image)
    return blend(flat, image, factor)


def brightness(image, factor: float):
    """PIL Brightness: towards black."""
    return blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor: float):
    """PIL Sharpness: towards the 3x3 SMOOTH-filtered image; the 1-pixel border is kept."""
    kernel = tf.constant([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(tf.cast(image, tf.float32)[None], kernel, [1, 1, 1, 1],
                                    "VALID")[0]
    smooth = tf.cast(tf.clip_by_value(smooth, 0.0, 255.0), tf.uint8)
    inner = tf.pad(tf.ones_like(smooth, tf.bool), [[1, 1], [1, 1], [0, 0]])
    smooth = tf.where(inner, tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]), image)
    return blend(smooth, image, factor)


def posterize(image, bits: int):
    """Keep the top `bits` bits of each value (bits 0 keeps the top bit: TF clamps shifts)."""
    shift = tf.constant(8 - bits, tf.uint8)
    return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def solarize(image, threshold: int = 128):
    """Invert the values at or above `threshold`.

    Compared in int32: a threshold above 255 (RandAugment's magnitude 15 asks for 384)
    inverts nothing. The official compares in uint8, where TF 2.21 wraps 384 to 128."""
    return tf.where(tf.cast(image, tf.int32) < threshold, image, 255 - image)


def solarize_add(image, addition: int = 0, threshold: int = 128):
    """Add `addition` (clipped to [0, 255]) to the values below `threshold`."""
    added = tf.clip_by_value(tf.cast(image, tf.int32) + addition, 0, 255)
    return tf.where(tf.cast(image, tf.int32) < threshold, tf.cast(added, tf.uint8), image)


def autocontrast(image):
    """Stretch each channel so its lowest value becomes 0 and its highest 255 (a flat
    channel stays as it is)."""
    lo = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.float32)
    hi = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.float32)
    flat = hi <= lo
    scale = 255.0 / tf.where(flat, 1.0, hi - lo)
    out = tf.cast(image, tf.float32) * scale - lo * scale
    out = tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)
    return tf.where(flat, image, out)


def equalize(image):
    """PIL Equalize: per channel, map the values through their cumulative histogram."""
    values = tf.cast(image, tf.int32)
    # One bincount for the three channels: channel c counts in bins [256 c, 256 c + 256).
    offsets = tf.reshape(values + tf.constant([0, 256, 512]), [-1])
    histogram = tf.reshape(tf.math.bincount(offsets, minlength=768, maxlength=768), [3, 256])
    # PIL's step: the pixels outside the last used level, spread over 255 levels.
    last_used = tf.reduce_max(tf.where(histogram > 0, tf.range(256), -1), axis=1)
    last_count = tf.gather(histogram, last_used, batch_dims=1)
    step = (tf.reduce_sum(histogram, axis=1) - last_count) // 255
    safe = tf.maximum(step, 1)[:, None]
    lut = (tf.cumsum(histogram, axis=1) + safe // 2) // safe
    lut = tf.clip_by_value(tf.concat([tf.zeros([3, 1], tf.int32), lut[:, :-1]], 1), 0, 255)
    mapped = tf.gather(lut, tf.transpose(values, [2, 0, 1]), batch_dims=1)
    mapped = tf.transpose(mapped, [1, 2, 0])
    return tf.cast(tf.where(step > 0, mapped, values), tf.uint8)


def fill_window(image, center, half, value=GREY):
    """Set the window [center - half, center + half) (clipped to the image) to `value`.

    center, half: int32 [2] (y, x)."""
    hw = tf.shape(image)[:2]
    lo, hi = tf.maximum(center - half, 0), tf.minimum(center + half, hw)
    rows, cols = tf.range(hw[0]), tf.range(hw[1])
    inside = ((rows >= lo[0]) & (rows < hi[0]))[:, None] & ((cols >= lo[1]) & (cols < hi[1]))
    return tf.where(inside[:, :, None], tf.cast(value, image.dtype), image)


def cutout(image, pad_size: int, rng, replace=GREY):
    """Grey out a (2 pad_size)^2 square centred on a uniformly drawn pixel."""
    hw = tf.shape(image)[:2]
    center = tf.stack([rng.uniform((), 0, hw[0], tf.int32), rng.uniform((), 0, hw[1], tf.int32)])
    return fill_window(image, center, tf.fill([2], tf.cast(pad_size, tf.int32)), replace)
