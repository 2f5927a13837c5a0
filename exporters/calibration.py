"""Representative images for quantisation: a folder of pictures or TFRecords of
tf.Examples, decoded with TensorFlow's decoders and prepared exactly as the exported file's
input. Calibrate on training images, never on the images accuracy is measured on.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from edetgraph.task.preprocess import prepare_image, read_image
from exporters.cli import representative_files
from exporters.options import ExportError


def representative_images(source: str, limit: int):
    """Yield up to ``limit`` uint8 RGB images, decoded with TensorFlow's decoders."""
    kind, files = representative_files(source)
    if kind == "dir":
        for f in files[:limit]:
            try:
                yield read_image(f).numpy()
            except ValueError as e:
                raise ExportError(f"--representative-data: {e}") from None
        return
    feature = {"image/encoded": tf.io.FixedLenFeature((), tf.string)}
    try:
        for record in tf.data.TFRecordDataset(files).take(limit):
            encoded = tf.io.parse_single_example(record, feature)["image/encoded"]
            yield tf.io.decode_image(encoded, channels=3, expand_animations=False).numpy()
    except tf.errors.OpError as e:
        raise ExportError(f"--representative-data {source}: not a TFRecord of tf.Examples with "
                          f"image/encoded ({e.message.splitlines()[0][:200]})") from None


def calibration_batches(source: str, limit: int, spec, input_kind: str, batch: int, say):
    """Batches ``[batch, H, W, 3]`` of up to ``limit`` representative images, each prepared
    as the file's input (``input_kind``); progress every 20 images."""
    group = []
    for i, image in enumerate(representative_images(source, limit)):
        group.append(prepare_image(image, spec, input_kind))
        if len(group) == batch:
            yield np.stack(group)
            group = []
        if (i + 1) % 20 == 0:
            say(f"  calibrated on {i + 1} images")
