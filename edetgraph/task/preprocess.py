"""Image reading and the official EfficientDet inference pre-processing.

Order (official ``DetectionInputProcessor`` in inference mode): cast to float32, subtract
the per-channel mean and divide by the std, THEN resize the normalised image keeping its
aspect ratio (bilinear, half-pixel centres), THEN pad bottom/right with zeros to the
network size. Zero padding after normalisation means the padding is the mean colour.
The returned scale factor maps network-frame boxes back to original-image pixels.
"""
from __future__ import annotations

import os
import re
from typing import Sequence, Union

import numpy as np
import tensorflow as tf

from edetgraph.data.picture import check_picture
from edetgraph.graph.sizes import ImageSize, parse_image_size

# ImageNet statistics on 0..255 input, written as the official config writes them.
IMAGENET_MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# EfficientDet-Lite (EfficientNet-Lite backbones) maps 0..255 to about [-1, 1].
LITE_MEAN_RGB = (127.0, 127.0, 127.0)
LITE_STDDEV_RGB = (128.0, 128.0, 128.0)


def read_image(path: Union[str, os.PathLike], max_pixels: int | None = None) -> tf.Tensor:
    """Decode an image file to uint8 ``[H, W, 3]`` RGB with TensorFlow's decoders.

    TF's decoder, not PIL's, because JPEG decoders differ by a few levels per pixel and
    parity with the official pipeline needs the same pixels. Grayscale is replicated to
    three channels, alpha is dropped, an animated GIF gives its first frame. Formats are
    JPEG, PNG, GIF, BMP and WebP. The size in the header is checked against ``max_pixels``
    (default ``EDETGRAPH_MAX_IMAGE_PIXELS``) before anything is decoded.
    Raises FileNotFoundError / ValueError naming the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such image file")
    check_picture(path, max_pixels)
    data = tf.io.read_file(path)
    try:
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
        raise ValueError(f"{path}: not a readable image: {_tf_error_text(e)}") from None
    return image


def _tf_error_text(error: tf.errors.OpError) -> str:
    """The human part of a TF op error, without the node and op decorations."""
    text = re.sub(r"\{\{.*?\}\}\s*", "", error.message.splitlines()[0] if error.message else "")
    return text.split(" [Op:")[0].strip() or type(error).__name__


def scaled_size(height, width, image_size: ImageSize):
    """Aspect-preserving ``(scale, scaled_height, scaled_width)`` as the official computes it.

    float32 ``scale = min(S_h / H, S_w / W)``; the scaled size truncates ``H * scale``.
    Works on Python ints or scalar tensors (dynamic shapes); returns tensors.
    """
    out_h, out_w = parse_image_size(image_size)
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    scale = tf.minimum(tf.constant(out_h, tf.float32) / h, tf.constant(out_w, tf.float32) / w)
    # At least one pixel: the official code would fail outright on a degenerate 1-pixel-thin
    # image; everywhere else this max is a no-op.
    sh = tf.maximum(tf.cast(h * scale, tf.int32), 1)
    sw = tf.maximum(tf.cast(w * scale, tf.int32), 1)
    return scale, sh, sw


def _normalize(images: tf.Tensor, mean_rgb, stddev_rgb) -> tf.Tensor:
    images = tf.cast(images, tf.float32) - tf.constant(mean_rgb, shape=(1, 1, 3), dtype=tf.float32)
    # Multiply by the float32 reciprocal instead of dividing: in graph mode TF's constant
    # folding rewrites x / const into exactly this, so the official (graph-mode) model
    # computes it, and eager, tf.function and exports then agree to the bit.
    inv_std = np.float32(1) / np.asarray(stddev_rgb, np.float32).reshape(1, 1, 3)
    return images * tf.constant(inv_std, dtype=tf.float32)


def _resize_and_pad(images: tf.Tensor, image_size: ImageSize):
    """Normalised ``[B, H, W, 3]`` (one shared H, W) -> ``([B, h, w, 3], scale_to_original)``."""
    out_h, out_w = parse_image_size(image_size)
    shape = tf.shape(images)
    scale, sh, sw = scaled_size(shape[1], shape[2], image_size)
    # TF2 bilinear = half-pixel centres, no antialiasing: the official model's convention.
    resized = tf.image.resize(images, tf.stack([sh, sw]), method="bilinear")
    padded = tf.image.pad_to_bounding_box(resized, 0, 0, out_h, out_w)
    return tf.ensure_shape(padded, [images.shape[0], out_h, out_w, 3]), 1.0 / scale


def preprocess(image: tf.Tensor, image_size: ImageSize,
               mean_rgb: Sequence[float] = IMAGENET_MEAN_RGB,
               stddev_rgb: Sequence[float] = IMAGENET_STDDEV_RGB):
    """One uint8 ``[H, W, 3]`` image -> ``(float32 [h, w, 3], scale_to_original float32 [])``.

    ``image_size`` is the network input ``S`` or ``(h, w)``; the content keeps its aspect
    ratio at the top-left, the rest is zero. Multiply network-frame boxes by the returned
    factor to get original-image pixels (street.jpg 636x1024 at 512: factor 2.0).
    Graph-friendly: works inside ``tf.function`` with unknown H, W; the output shape is static.
    """
    image = tf.convert_to_tensor(image)
    if image.shape.rank != 3:
        raise ValueError(f"preprocess wants one [H, W, 3] image, got shape {image.shape}")
    out, factor = _resize_and_pad(_normalize(image[None], mean_rgb, stddev_rgb), image_size)
    return out[0], factor


def preprocess_batch(images, image_size: ImageSize,
                     mean_rgb: Sequence[float] = IMAGENET_MEAN_RGB,
                     stddev_rgb: Sequence[float] = IMAGENET_STDDEV_RGB):
    """uint8 ``[B, H, W, 3]`` or a list of ``[H_i, W_i, 3]`` -> ``([B, h, w, 3], scales [B])``.

    A 4-D batch shares one size, so it is resized in one op (same numbers as per image);
    a list of differently sized images is processed one by one and stacked.
    """
    if isinstance(images, (list, tuple)):
        outs = [preprocess(im, image_size, mean_rgb, stddev_rgb) for im in images]
        return tf.stack([o[0] for o in outs]), tf.stack([o[1] for o in outs])
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4:
        raise ValueError(f"preprocess_batch wants [B, H, W, 3] or a list, got shape {images.shape}")
    out, factor = _resize_and_pad(_normalize(images, mean_rgb, stddev_rgb), image_size)
    return out, tf.fill(tf.shape(out)[:1], factor)


def make_preprocess_fn(image_size: ImageSize,
                       mean_rgb: Sequence[float] = IMAGENET_MEAN_RGB,
                       stddev_rgb: Sequence[float] = IMAGENET_STDDEV_RGB,
                       batch_size: int | None = None,
                       input_hw: tuple[int, int] | None = None):
    """A ``tf.function`` ``uint8 [B, H, W, 3] -> (float32 [B, h, w, 3], scales [B])`` for export.

    ``input_hw=None`` accepts any image size (dynamic H, W); the output shape is static
    either way, so the network after it traces with fixed shapes.
    """
    h, w = input_hw if input_hw is not None else (None, None)
    spec = tf.TensorSpec([batch_size, h, w, 3], tf.uint8, name="images")

    @tf.function(input_signature=[spec], autograph=False)
    def preprocess_fn(images):
        return preprocess_batch(images, image_size, mean_rgb, stddev_rgb)

    return preprocess_fn


# ------------------------------------------------------- the input of an exported network
# An exported file takes either normalised float images (what preprocess() makes) or uint8
# pixels of the network size, which the graph normalises itself.

def norm_constants(spec):
    """``(mean, 1/std)`` float32 RGB: the arithmetic :func:`preprocess` uses."""
    mean = np.asarray(spec.preprocess.mean_rgb, np.float32)
    return mean, np.float32(1) / np.asarray(spec.preprocess.stddev_rgb, np.float32)


def normalize_in_graph(images, spec):
    """uint8 ``[B, H, W, 3]`` -> normalised float32, inside an exported graph."""
    return _normalize(images, spec.preprocess.mean_rgb, spec.preprocess.stddev_rgb)


def letterbox_uint8(image, spec) -> np.ndarray:
    """uint8 ``[h, w, 3]`` -> uint8 network-size image: bilinear resize keeping the aspect
    ratio (the sizes :func:`preprocess` uses), padded bottom/right with the mean colour."""
    out_h, out_w = spec.image_size
    _, sh, sw = scaled_size(image.shape[0], image.shape[1], spec.image_size)
    resized = tf.image.resize(tf.cast(image, tf.float32)[None], tf.stack([sh, sw]))[0].numpy()
    canvas = np.empty((out_h, out_w, 3), np.uint8)
    canvas[:] = np.round(np.asarray(spec.preprocess.mean_rgb)).astype(np.uint8)
    canvas[:resized.shape[0], :resized.shape[1]] = np.clip(np.round(resized), 0, 255)
    return canvas


def prepare_image(image, spec, kind: str) -> np.ndarray:
    """One uint8 image of any size -> the exported model's input ``[H, W, 3]`` (``kind``
    ``float``: :func:`preprocess`; ``uint8``: :func:`letterbox_uint8`)."""
    if kind == "uint8":
        return letterbox_uint8(np.asarray(image), spec)
    return preprocess(image, spec.image_size, spec.preprocess.mean_rgb,
                      spec.preprocess.stddev_rgb)[0].numpy()
