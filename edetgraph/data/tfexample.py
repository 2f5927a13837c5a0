"""tf.Example layout for detection records, identical to the official COCO converter's.

Keys (official `create_coco_tfrecord.py` / `tf_example_decoder.py`): ``image/encoded``,
``image/format``, ``image/height``, ``image/width``, ``image/source_id``, ``image/filename``,
``image/key/sha256``, ``image/object/bbox/{xmin,ymin,xmax,ymax}`` (normalised to [0, 1]),
``image/object/class/label`` (1-based), ``image/object/class/text``,
``image/object/is_crowd``, ``image/object/area`` (pixels). Records written by either
converter read the same way here.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import tensorflow as tf

FEATURES = {
    "image/encoded": tf.io.FixedLenFeature((), tf.string),
    "image/source_id": tf.io.FixedLenFeature((), tf.string, ""),
    "image/height": tf.io.FixedLenFeature((), tf.int64, -1),
    "image/width": tf.io.FixedLenFeature((), tf.int64, -1),
    "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
    "image/object/class/label": tf.io.VarLenFeature(tf.int64),
    "image/object/area": tf.io.VarLenFeature(tf.float32),
    "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
}


def _bytes(values: Sequence[bytes]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(values: Sequence[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _floats(values: Sequence[float]) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def encode_example(encoded: bytes, height: int, width: int, source_id: str, filename: str,
                   boxes: Sequence[Sequence[float]] = (), classes: Sequence[int] = (),
                   class_names: Sequence[str] = (), is_crowd: Sequence[int] = (),
                   areas: Sequence[float] = (), image_format: str = "jpeg") -> tf.train.Example:
    """A tf.Example for one image; `boxes` are normalised [ymin, xmin, ymax, xmax] rows."""
    cols = list(zip(*boxes)) if len(boxes) else [(), (), (), ()]
    feature = {
        "image/height": _ints([height]),
        "image/width": _ints([width]),
        "image/filename": _bytes([filename.encode()]),
        "image/source_id": _bytes([str(source_id).encode()]),
        "image/key/sha256": _bytes([hashlib.sha256(encoded).hexdigest().encode()]),
        "image/encoded": _bytes([encoded]),
        "image/format": _bytes([image_format.encode()]),
        "image/object/bbox/ymin": _floats(cols[0]),
        "image/object/bbox/xmin": _floats(cols[1]),
        "image/object/bbox/ymax": _floats(cols[2]),
        "image/object/bbox/xmax": _floats(cols[3]),
        "image/object/class/label": _ints(classes),
        "image/object/class/text": _bytes([n.encode() for n in class_names]),
        "image/object/is_crowd": _ints(is_crowd),
        "image/object/area": _floats(areas),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def parse_example(serialized: tf.Tensor) -> dict:
    """Decode one serialized record into tensors (pure TF ops, for tf.data).

    Returns ``image`` uint8 [h, w, 3], ``source_id`` string (a hash of the image when the
    record has none), ``boxes`` float32 [n, 4]
    normalised yxyx, ``classes`` int64 [n], ``is_crowd`` bool [n], ``areas`` float32 [n].
    Missing is_crowd / area lists default to zeros / normalised box areas, as the official
    decoder does. Raises (inside the graph) on an undecodable image or mismatched lists.
    """
    parsed = tf.io.parse_single_example(serialized, FEATURES)
    dense = {k: tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v
             for k, v in parsed.items()}
    image = tf.io.decode_image(dense["image/encoded"], channels=3, expand_animations=False)
    coords = [dense[f"image/object/bbox/{k}"] for k in ("ymin", "xmin", "ymax", "xmax")]
    classes = dense["image/object/class/label"]
    n = tf.size(classes)
    checks = [tf.debugging.assert_equal(tf.size(c), n, message="bbox / label list lengths differ")
              for c in coords]
    with tf.control_dependencies(checks):
        boxes = tf.stack(coords, axis=-1)
    crowd, areas = dense["image/object/is_crowd"], dense["image/object/area"]
    crowd = tf.cond(tf.size(crowd) > 0, lambda: crowd, lambda: tf.zeros_like(classes))
    box_areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    areas = tf.cond(tf.size(areas) > 0, lambda: areas, lambda: box_areas)
    # As the official decoder: a record without a source id is named by a hash of its image.
    source_id = dense["image/source_id"]
    image_hash = tf.strings.as_string(
        tf.strings.to_hash_bucket_fast(dense["image/encoded"], 2**63 - 1))
    source_id = tf.where(tf.strings.length(source_id) > 0, source_id, image_hash)
    return {"image": image, "source_id": source_id, "boxes": boxes, "classes": classes,
            "is_crowd": tf.cast(crowd, tf.bool), "areas": areas}


def source_id_to_int(source_id: tf.Tensor) -> tf.Tensor:
    """int64 image id: the number itself for numeric ids (COCO), else a hash of the string."""
    numeric = tf.strings.regex_full_match(source_id, r"-?[0-9]{1,18}")
    as_number = tf.strings.to_number(tf.where(numeric, source_id, "0"), tf.int64)
    return tf.where(numeric, as_number, tf.strings.to_hash_bucket_fast(source_id, 2**62))
