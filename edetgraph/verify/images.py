"""The pictures checks run on: the parity gate's inputs, and annotated evaluation images.

Parity inputs are random pixels (outside any calibration range: they stress the arithmetic),
then two real pictures, the official street.jpg and one synthetic scene. Evaluation images
come from a folder with a COCO ``instances.json`` (the built-in dataset's layout: images in
``DIR/images`` or ``DIR``) or from TFRecords with the official keys; either way they are
decoded with TensorFlow's decoders and prepared exactly as the exported file's input
(``edetgraph.task.preprocess.prepare_image``), so TF and the file see the same tensors.
"""
from __future__ import annotations

import glob
import os

import numpy as np
import tensorflow as tf

from edetgraph.data.labels import without_sidecars
from edetgraph.resources import path as resource
from edetgraph.task.coco import load_coco
from edetgraph.task.preprocess import norm_constants, prepare_image, read_image, scaled_size
from edetgraph.task.weights import synthetic_images
from edetgraph.verify.datasets import images_folder


def parity_images(spec, kind: str, num_random: int = 2, seed: int = 0) -> list:
    """``[(label, image, real)]`` in the exported input format: random pixels, then the
    official street.jpg and one synthetic scene (``real`` marks the last two)."""
    rng = np.random.default_rng(seed + 1000)
    h, w = spec.image_size
    out = []
    for i in range(num_random):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if kind == "uint8":
            out.append((f"random-{i}", pixels, False))
        else:
            mean, inv_std = norm_constants(spec)
            out.append((f"random-{i}", (pixels.astype(np.float32) - mean) * inv_std, False))
    out.append(("street.jpg", prepare_image(read_image(resource("street.jpg")), spec, kind), True))
    out.append(("synthetic-0", prepare_image(synthetic_images(spec, 1, seed + 99)[0], spec, kind),
                True))
    return out


def batches(images: list, batch) -> list:
    """Group ``[(label, image, real)]`` into ``[(labels, array [B, H, W, 3], real)]``.

    A static batch cycles through the images; a dynamic one (None) runs each image alone and
    then all of them together, which exercises two batch sizes.
    """
    if batch is None:
        together = [(f"{lab} (in a batch of {len(images)})", im, real) for lab, im, real in images]
        groups = [[item] for item in images] + ([together] if len(images) > 1 else [])
    else:
        n = -(-len(images) // batch) * batch
        cycled = [images[i % len(images)] for i in range(n)]
        groups = [cycled[i:i + batch] for i in range(0, n, batch)]
    return [([g[0] for g in group], np.stack([g[1] for g in group]), all(g[2] for g in group))
            for group in groups]


def parity_batches(spec, kind: str, batch: int, num_random: int = 2, seed: int = 0) -> list:
    """:func:`parity_images` grouped by :func:`batches`, random and real pictures never in
    one batch, so that a batch's ``real`` flag holds for all of it."""
    images = parity_images(spec, kind, num_random, seed)
    random = [im for im in images if not im[2]]
    real = [im for im in images if im[2]]
    return (batches(random, batch) if random else []) + batches(real, batch)


# ------------------------------------------------------------------ evaluation images

def eval_images(data: str, annotations: str, limit: int | None = None):
    """``(image id, uint8 [H, W, 3])`` for the annotated images of a folder, in the order of
    the annotations, or of TFRecords (``image/source_id`` as the id), in file order."""
    if os.path.isdir(data):
        folder = images_folder(data)
        for im in load_coco(annotations).dataset["images"][:limit]:
            yield int(im["id"]), read_image(os.path.join(folder, im["file_name"])).numpy()
        return
    feature = {"image/encoded": tf.io.FixedLenFeature((), tf.string),
               "image/source_id": tf.io.FixedLenFeature((), tf.string)}
    ds = tf.data.TFRecordDataset(sorted(without_sidecars(glob.glob(data))))
    for count, record in enumerate(ds):
        if limit is not None and count >= limit:
            return
        ex = tf.io.parse_single_example(record, feature)
        image = tf.io.decode_image(ex["image/encoded"], channels=3, expand_animations=False)
        yield int(ex["image/source_id"].numpy()), image.numpy()


def eval_batches(data: str, annotations: str, spec, kind: str, batch: int,
                 limit: int | None = None):
    """``(image ids, x [batch, H, W, 3], scale_to_original [batch])`` over the evaluation
    images, each prepared as the file's input (``kind`` float or uint8); the last batch is
    padded with zero images (``ids`` lists only the real ones)."""
    ids, xs, scales = [], [], []

    def flush():
        fill = batch - len(ids)
        x = np.stack(xs + [np.zeros_like(xs[0])] * fill)
        return ids, x, np.asarray(scales + [1.0] * fill, np.float32)

    for image_id, image in eval_images(data, annotations, limit):
        ids.append(image_id)
        xs.append(prepare_image(image, spec, kind))
        scale = scaled_size(image.shape[0], image.shape[1], spec.image_size)[0]
        scales.append(1.0 / float(scale))
        if len(ids) == batch:
            yield flush()
            ids, xs, scales = [], [], []
    if ids:
        yield flush()
