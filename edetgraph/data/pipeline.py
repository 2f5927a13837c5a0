"""tf.data input for detection training and evaluation, with the official augmentation.

    ds = make_dataset("/data/train-*.tfrecord", (512, 512), batch_size=8, training=True,
                      seed=1, labeler=AnchorLabeler(...))
    batch = next(iter(ds))       # dict of static-shaped tensors
    ds.stats.as_dict()           # records skipped, damaged files, truncated images

Per image, as the official dataloader (efficientdet/dataloader.py): normalise with the
mean/std, then when training drop crowd boxes, flip left-right with p=0.5, pick a random
scale s in [jitter_min, jitter_max] of the output size and a random crop offset; resize
(bilinear), crop, pad bottom/right to the output size; boxes follow, are clipped to
[0, size-1] and dropped when nothing is left of them. Eval: aspect-preserving resize + pad.
With `augmentation` (training only), GridMask and an AutoAugment policy first change the
decoded uint8 image and its boxes (edetgraph.data.augment), as the official does.

Bad input never stops the stream: a record that fails to decode is skipped, a truncated or
corrupt file yields the records before the damage, an image with more than max_instances
boxes keeps the first max_instances (all boxes still go to the labeler). Each case is
counted in `PipelineStats` (tf.Variables, so the counts are exact even with parallel
decoding) and announced once on stderr.
"""
from __future__ import annotations

import functools
import re
import sys
import time
from typing import Sequence

import tensorflow as tf

from edetgraph.data.augment import Augmentation, augment
from edetgraph.data.labels import without_sidecars
from edetgraph.data.shards import check_shard_sets
from edetgraph.data.tfexample import encode_example, parse_example, source_id_to_int

MEAN_RGB = (123.675, 116.28, 103.53)
STDDEV_RGB = (58.395, 57.12, 57.375)
_RECORD_OVERHEAD = 16    # TFRecord framing: length (8) + its CRC (4) + data CRC (4)
_AUGMENT_STREAM = 0x0A06  # folded into an example's seed: the augmentations' own draws


class UndecodableData(ValueError):
    """The first records of the first input files do not decode: not detection TFRecords."""


class PipelineStats:
    """Counters of one dataset, summed over all its iterations.

    records_skipped: records that could not be parsed or decoded; damaged_files: files whose
    reading stopped early (truncated / corrupt: their later records are lost);
    images_truncated / boxes_truncated: images with more than max_instances boxes and the
    boxes dropped from their `boxes` output.
    """

    NAMES = ("records_skipped", "damaged_files", "images_truncated", "boxes_truncated")

    def __init__(self):
        with tf.init_scope():
            self.counters = {n: tf.Variable(0, dtype=tf.int64, trainable=False, name=n)
                             for n in self.NAMES}

    def as_dict(self) -> dict[str, int]:
        return {n: int(v.numpy()) for n, v in self.counters.items()}

    def add(self, name: str, amount: tf.Tensor, warning: Sequence | None = None) -> tf.Tensor:
        """Add to a counter; print `warning` (strings / tensors) the first time it moves."""
        amount = tf.cast(amount, tf.int64)
        before = self.counters[name].read_value()
        with tf.control_dependencies([before]):
            after = self.counters[name].assign_add(amount)
        if warning is None:
            return after
        first = tf.logical_and(tf.equal(before, 0), amount > 0)
        return tf.cond(first, lambda: _warn(warning, name, after), lambda: after)


def _warn(message: Sequence, name: str, total: tf.Tensor) -> tf.Tensor:
    printed = tf.print("edetgraph.data warning:", *message,
                       f"(warned once; stats.{name} counts all, now", total, ")",
                       output_stream=sys.stderr)
    with tf.control_dependencies([printed]):
        return tf.identity(total)


def list_files(file_pattern: str | Sequence[str]) -> list[str]:
    """Sorted files matching one or more glob patterns (local or gs://); ValueError when
    they hold two shard sets of one prefix (``train-*`` over ``-of-00002`` and
    ``-of-00003`` files)."""
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = sorted(without_sidecars({f for p in patterns for f in tf.io.gfile.glob(p)}))
    if not files:
        raise FileNotFoundError(f"no input files match {', '.join(patterns)}")
    check_shard_sets(files, ", ".join(patterns))
    return files


def _file_records(path, size, stats: PipelineStats) -> tf.data.Dataset:
    """Records of one file; a damaged file yields its good prefix and is counted.

    The reader stops at the first damaged record, so a file is damaged exactly when the
    records read do not add up to its size.
    """
    records = tf.data.TFRecordDataset(path).ignore_errors().map(lambda r: (r, False))
    records = records.concatenate(tf.data.Dataset.from_tensors((tf.constant(""), True)))

    def step(consumed, item):
        record, is_end = item
        length = tf.cast(tf.strings.length(record), tf.int64) + _RECORD_OVERHEAD
        consumed += tf.where(is_end, tf.constant(0, tf.int64), length)
        damaged = tf.logical_and(is_end, tf.not_equal(consumed, size))
        counted = stats.add("damaged_files", tf.cast(damaged, tf.int64),
                            ["TFRecord file", path, "is truncated or corrupt; the records "
                             "after the damage are lost"])
        with tf.control_dependencies([counted]):
            return consumed, (tf.identity(record), is_end)

    return (records.scan(tf.constant(0, tf.int64), step)
            .filter(lambda record, is_end: tf.logical_not(is_end))
            .map(lambda record, is_end: record))


def _scale_and_offset(image_hw, out_hw, training: bool, jitter, seed):
    """Official scale factor (input -> output pixels), scaled size and crop offset."""
    h, w = tf.cast(image_hw[0], tf.float32), tf.cast(image_hw[1], tf.float32)
    out = tf.constant(out_hw, tf.float32)
    target = out
    if training:
        factor = tf.random.stateless_uniform([], seed[0], jitter[0], jitter[1])
        target = tf.floor(factor * out)           # the official int() of a positive value
    scale = tf.minimum(target[0] / h, target[1] / w)
    scaled = tf.cast(tf.stack([h * scale, w * scale]), tf.int32)
    offset = tf.zeros([2], tf.int32)
    if training:
        room = tf.cast(tf.maximum(0, scaled - tf.constant(out_hw, tf.int32)), tf.float32)
        offset = tf.cast(room * tf.random.stateless_uniform([2], seed[1]), tf.int32)
    return scale, scaled, offset


def transform(image, boxes, classes, out_hw, training: bool, jitter=(0.1, 2.0), seed=None,
              mean_rgb=MEAN_RGB, stddev_rgb=STDDEV_RGB):
    """Normalise, (flip, jitter,) resize, crop and pad one image and its normalised boxes.

    Returns image [H, W, 3] float32, boxes [n', 4] yxyx output pixels, classes [n'], and the
    scale factor output -> original pixels. `seed` is a stateless seed [2] (training only).
    """
    image = (tf.cast(image, tf.float32) - mean_rgb) / stddev_rgb
    seeds = tf.random.experimental.stateless_split(seed, 3) if training else None
    if training:
        flip = tf.random.stateless_uniform([], seeds[2]) < 0.5
        image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
        flipped = tf.stack([boxes[:, 0], 1.0 - boxes[:, 3], boxes[:, 2], 1.0 - boxes[:, 1]], 1)
        boxes = tf.where(flip, flipped, boxes)
    scale, scaled, offset = _scale_and_offset(tf.shape(image)[:2], out_hw, training, jitter, seeds)
    image = tf.image.resize(image, scaled, method="bilinear")
    image = image[offset[0]:offset[0] + out_hw[0], offset[1]:offset[1] + out_hw[1]]
    image = tf.image.pad_to_bounding_box(image, 0, 0, out_hw[0], out_hw[1])
    image.set_shape([out_hw[0], out_hw[1], 3])
    size = tf.cast(tf.tile(scaled, [2]), tf.float32)
    boxes = boxes * size - tf.cast(tf.tile(offset, [2]), tf.float32)
    limit = tf.constant([out_hw[0] - 1, out_hw[1] - 1] * 2, tf.float32)
    boxes = tf.clip_by_value(boxes, 0.0, limit)
    keep = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0
    return image, tf.boolean_mask(boxes, keep), tf.boolean_mask(classes, keep), 1.0 / scale


def _pad(values, length: int, fill):
    """First `length` rows of values, padded with `fill` to exactly `length` rows."""
    values = values[:length]
    pad = [[0, length - tf.shape(values)[0]]] + [[0, 0]] * (len(values.shape) - 1)
    out = tf.pad(values, pad, constant_values=fill)
    out.set_shape([length] + values.shape[1:].as_list())
    return out


def _parse_and_augment(record, seed, out_hw, training, max_instances, labeler, norm, jitter,
                       augmentation: Augmentation | None = None):
    """One record -> the output dict plus the count of boxes beyond max_instances."""
    data = parse_example(record)
    image, boxes, classes = data["image"], data["boxes"], tf.cast(data["classes"], tf.int32)
    if training:   # the official default skip_crowd_during_training
        keep = tf.logical_not(data["is_crowd"])
        boxes, classes = tf.boolean_mask(boxes, keep), tf.boolean_mask(classes, keep)
    if training and augmentation is not None and augmentation.active:
        # A stream of its own: flip and jitter draw what they draw without augmentation.
        own = tf.random.experimental.stateless_fold_in(seed, _AUGMENT_STREAM)
        image, boxes = augment(image, boxes, augmentation, own)
    image, boxes, classes, image_scale = transform(image, boxes, classes, out_hw,
                                                   training, jitter, seed, *norm)
    num = tf.shape(boxes)[0]
    out = {"image": image, "boxes": _pad(boxes, max_instances, -1.0),
           "classes": _pad(classes, max_instances, -1),
           "num_boxes": tf.minimum(num, max_instances), "image_scale": image_scale,
           "source_id": source_id_to_int(data["source_id"])}
    if labeler is not None:
        out.update(labeler.label(boxes, classes))
    return out, tf.maximum(num - max_instances, 0)


@functools.lru_cache(maxsize=1)
def _sentinel_record() -> bytes:
    """A valid 1x1 record appended to finite streams, so failures at the very end are seen."""
    with tf.init_scope():
        png = tf.io.encode_png(tf.zeros([1, 1, 3], tf.uint8)).numpy()
    return encode_example(png, 1, 1, "0", "sentinel", image_format="png").SerializeToString()


def _count_skips(stats: PipelineStats):
    """scan fn: gaps in the record index are records that failed; also counts truncation."""
    def step(last, item):
        index, is_sentinel, (example, dropped) = item
        skipped = stats.add("records_skipped", index - last - 1,
                            ["a record could not be parsed or its image decoded; skipped"])
        images = stats.add("images_truncated", tf.cast(dropped > 0, tf.int64),
                           ["image", example["source_id"], "has", dropped, "boxes more than "
                            "max_instances; they are left out of `boxes`"])
        boxes = stats.add("boxes_truncated", dropped)
        with tf.control_dependencies([skipped, images, boxes]):
            return tf.identity(index), (is_sentinel, example)
    return step


def _read_records(files: list[str], stats: PipelineStats, training: bool, seed, shuffle_buffer,
                  repeat: bool, parallel, input_context) -> tf.data.Dataset:
    """Serialized records, shuffled (training) and repeated as asked, then a sentinel."""
    sizes = tf.constant([tf.io.gfile.stat(f).length for f in files], tf.int64)
    ds = tf.data.Dataset.from_tensor_slices((files, sizes))
    if input_context is not None:     # one pipeline per host: each reads its own files
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if training:
        ds = ds.shuffle(len(files), seed=seed)
    cycle = min(len(files), 8)
    readers = parallel if parallel in (None, tf.data.AUTOTUNE) else min(parallel, cycle)
    ds = ds.interleave(lambda f, s: _file_records(f, s, stats), cycle_length=cycle,
                       num_parallel_calls=readers,
                       deterministic=seed is not None or not training)
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed)
    if repeat:
        ds = ds.repeat()
    sentinel = tf.data.Dataset.from_tensors((tf.constant(_sentinel_record()), True))
    return ds.map(lambda r: (r, False)).concatenate(sentinel)


def _check_decodable(files: list[str], process, tries: int = 3) -> None:
    """Fail now, naming the file, when no first record of the first files decodes.

    Skipping bad records is for the odd damaged one; if records are systematically
    unreadable (not TFRecords of tf.Examples, wrong feature types, a labeler bug), an
    endlessly repeated stream would otherwise skip forever without yielding anything.
    """
    errors = []
    for path in files[:tries]:
        try:
            for record in tf.data.TFRecordDataset(path).take(1):
                process(record)
                return
        except (tf.errors.OpError, ValueError) as e:
            msg = (e.message if isinstance(e, tf.errors.OpError) else str(e)).strip()
            # TF's decorations ({{function_node ...}}, [Op:...]) say nothing to a user.
            msg = re.sub(r"\{\{.*?\}\}\s*", "", msg.splitlines()[0] if msg else "")
            errors.append(f"{path}: {msg.split(' [Op:')[0].strip() or type(e).__name__}")
    if errors and len(errors) == min(tries, len(files)):
        raise UndecodableData(f"cannot decode the first record of any of the first "
                              f"{len(errors)} input files; first error: {errors[0][:300]}")


def make_dataset(file_pattern, image_size, batch_size: int, training: bool,
                 max_instances: int = 100, jitter=(0.1, 2.0), seed: int | None = None,
                 mean_rgb=MEAN_RGB, stddev_rgb=STDDEV_RGB, shuffle_buffer: int = 64,
                 labeler=None, num_parallel_calls=tf.data.AUTOTUNE, repeat: bool | None = None,
                 drop_remainder: bool | None = None, stats: PipelineStats | None = None,
                 input_context: tf.distribute.InputContext | None = None,
                 augmentation: Augmentation | None = None) -> tf.data.Dataset:
    """Batched dicts: image [B,H,W,3] float32, boxes [B,max,4] yxyx output pixels (-1 pads),
    classes [B,max] int32 (-1 pads), num_boxes, image_scale (output -> original pixels),
    source_id int64, plus the labeler's targets when given.

    training: shuffle files and records, augment, repeat (unless repeat=False) and drop the
    last partial batch (unless drop_remainder=False). With `seed`, the batches are the same
    on every run. `input_context` (from distribute_datasets_from_function) shards the files
    between hosts. `augmentation` (training only) adds GridMask / AutoAugment. The returned
    dataset has a `.stats` PipelineStats (or the one passed in).
    """
    out_hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    repeat = training if repeat is None else repeat
    drop_remainder = training if drop_remainder is None else drop_remainder
    stats = stats or PipelineStats()
    files = list_files(file_pattern)
    records = _read_records(files, stats, training, seed, shuffle_buffer, repeat,
                            num_parallel_calls, input_context)
    # Per-record stateless seeds: the augmentation of record i does not depend on which
    # thread decodes it, and a new iteration draws new random numbers.
    randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

    # Straight-line TF code (tf.cond / tf.switch_case where it branches): autograph would
    # only spend seconds converting the decoding and augmentation code in every process.
    @tf.autograph.experimental.do_not_convert
    def process(indexed, rand):
        index, (record, is_sentinel) = indexed
        result = _parse_and_augment(record, tf.stack([rand, index]), out_hw, training,
                                    max_instances, labeler, (mean_rgb, stddev_rgb), jitter,
                                    augmentation)
        return index, is_sentinel, result

    _check_decodable(files, lambda r: process((tf.constant(0, tf.int64), (r, False)),
                                              tf.constant(0, tf.int64)))
    # Decoding keeps record order, so the index gaps left by ignore_errors are exact counts.
    ds = tf.data.Dataset.zip(records.enumerate(), randoms)
    ds = ds.map(process, num_parallel_calls=num_parallel_calls, deterministic=True)
    ds = ds.ignore_errors().scan(tf.constant(-1, tf.int64), _count_skips(stats))
    ds = ds.filter(lambda is_sentinel, ex: tf.logical_not(is_sentinel)).map(lambda s, ex: ex)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = seed is not None or not training
    # The counters are variables outside the dataset; iterator checkpoints skip them (WARN)
    # instead of refusing to save (FAIL).
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.WARN
    ds = ds.with_options(options)
    ds.stats = stats
    return ds


def benchmark_pipeline(file_pattern, image_size=512, batch_size: int = 8, training: bool = True,
                       num_batches: int = 50, warmup: int = 5, **kwargs) -> float:
    """Images per second the pipeline delivers (after `warmup` batches), with nothing else
    running; kwargs go to make_dataset (e.g. labeler=...)."""
    ds = make_dataset(file_pattern, image_size, batch_size, training, repeat=True, **kwargs)
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(it)
    return num_batches * batch_size / (time.perf_counter() - start)
