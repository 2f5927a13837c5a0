"""Training input: the built-in synthetic dataset when no --data is given, and the
distributed tf.data input (global batch split over workers and replicas).

Splitting: with at least as many files as input pipelines (workers), each worker reads its
own files. Otherwise every worker builds the same seeded global batch and keeps its slice,
so N workers see exactly the batches one process would (what makes multi-worker training
reproducible against a single process), at the cost of decoding the whole batch each.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from edetgraph.data import synthetic as synth
from edetgraph.data.augment import Augmentation
from edetgraph.data.labels import check_labels, labels_beside_records
from edetgraph.data.pipeline import list_files, make_dataset
from edetgraph.files import cache_dir
from edetgraph.graph import outputs
from edetgraph.task.labeler import labeler_for

TRAIN_KEYS = ("image", "num_positives")


class DataError(RuntimeError):
    """Training data cannot be found or made; the message says which and why."""


@dataclass(frozen=True)
class DataPaths:
    train: str                       # TFRecord pattern
    val: str | None = None           # TFRecord pattern
    val_json: str | None = None      # COCO instances of the val split
    num_train: int | None = None     # records in the training split, when known
    labels: dict | None = None       # class names kept beside the records, when there are


def synthetic_data(spec, synthetic, log=None) -> DataPaths:
    """The built-in dataset at the spec's size and class count; generated once, then reused.

    Generation writes into a temporary folder renamed into place at the end, so a killed
    run never leaves a half-written dataset that a later run would trust.
    """
    size = max(spec.image_size)
    if spec.num_classes > len(synth.SHAPES):
        raise DataError(f"the built-in dataset has at most {len(synth.SHAPES)} classes, the spec "
                        f"has {spec.num_classes}: give --data, or --set num_classes=6")
    name = (f"shapes-s{size}-c{spec.num_classes}-n{synthetic.num_images}-"
            f"v{synthetic.val_fraction:g}-seed{synthetic.seed}")
    if synthetic.difficulty != "easy":   # easy keeps the folder name it always had
        name += f"-{synthetic.difficulty}"
    final = cache_dir() / "synthetic" / name
    if not (final / "summary.json").is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=name + ".", dir=final.parent))
        if log:
            log(f"generating the built-in dataset ({synthetic.num_images} images, {size} px) "
                f"in {final}")
        summary = synth.generate(tmp, synthetic.num_images, size, synthetic.seed,
                                 synthetic.val_fraction, spec.num_classes,
                                 difficulty=synthetic.difficulty)
        synth.write_tfrecords(summary)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
        try:
            tmp.rename(final)
        except OSError:                  # another process finished first: use its copy
            shutil.rmtree(tmp, ignore_errors=True)
    summary = json.loads((final / "summary.json").read_text())
    return DataPaths(train=str(final / "tfrecord" / "train-*.tfrecord"),
                     val=str(final / "tfrecord" / "val-*.tfrecord"),
                     val_json=str(final / "val" / "instances.json"),
                     num_train=summary["splits"]["train"]["images"],
                     labels={c["id"]: c["name"] for c in synth.categories(spec.num_classes)})


def count_records(pattern: str, log=None) -> int:
    """Number of records in the files of `pattern` (reads them all: set
    examples_per_epoch in the settings to skip this for big datasets)."""
    files = list_files(pattern)
    if log:
        log(f"counting the training records in {len(files)} file(s) (set examples_per_epoch "
            "to skip)")
    ds = tf.data.TFRecordDataset(files).ignore_errors()
    return int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def _train_keys(spec) -> list[str]:
    return list(TRAIN_KEYS) + outputs.target_names(spec.levels)


def distributed_input(strategy, pattern: str, spec, config, seed: int | None):
    """A distributed dataset of per-replica batches for `strategy` (global batch = settings)."""
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise DataError(f"batch_size {config.batch_size} is not divisible by the "
                        f"{replicas} replicas")
    files = list_files(pattern)
    labeler, keys = labeler_for(spec), _train_keys(spec)

    def build(files_, batch, seed_):
        ds = make_dataset(files_, spec.image_size, batch, training=True,
                          max_instances=config.max_instances,
                          jitter=(config.jitter_min, config.jitter_max), seed=seed_,
                          mean_rgb=spec.preprocess.mean_rgb, stddev_rgb=spec.preprocess.stddev_rgb,
                          shuffle_buffer=config.shuffle_buffer, labeler=labeler,
                          augmentation=Augmentation(config.autoaugment_policy,
                                                    config.grid_mask))
        return ds.map(lambda b: {k: b[k] for k in keys})

    def dataset_fn(ctx: tf.distribute.InputContext):
        per_replica = ctx.get_per_replica_batch_size(config.batch_size)
        pipes, pid = ctx.num_input_pipelines, ctx.input_pipeline_id
        if pipes > 1 and len(files) >= pipes:
            return build(files[pid::pipes], per_replica, seed)
        # Same seeded global batch everywhere; each pipeline keeps its slice.
        local = config.batch_size // pipes
        ds = build(files, config.batch_size, seed if pipes == 1 or seed is not None else 0)
        if pipes > 1:
            ds = ds.map(lambda b: {k: v[pid * local:(pid + 1) * local] for k, v in b.items()})
        return ds.rebatch(per_replica) if per_replica != local else ds

    return strategy.distribute_datasets_from_function(dataset_fn)


def resolve_data(spec, config, data=None, val_data=None, val_json=None, log=None) -> DataPaths:
    """Training and validation inputs from the command line, or the built-in dataset."""
    if data is None:
        paths = synthetic_data(spec, config.synthetic, log)
        if val_data is not None or val_json is not None:
            paths = DataPaths(paths.train, val_data, val_json, paths.num_train, paths.labels)
        return paths
    if (val_data is None) != (val_json is None):
        raise DataError("--val-data and --val-json go together (TFRecords and their COCO json)")
    try:
        labels = labels_beside_records(list_files(data))   # what coco_to_tfrecord kept
        if labels is not None:
            check_labels(labels, spec.num_classes, f"--data {data}")
        if val_data:
            list_files(val_data)
    except (FileNotFoundError, ValueError) as e:   # no files, two shard sets in one glob,
        raise DataError(str(e)) from None          # or names the records cannot have
    if val_json and not tf.io.gfile.exists(val_json):
        raise DataError(f"{val_json}: no such file")
    return DataPaths(data, val_data, val_json, labels=labels)


def log_to_stderr(msg: str) -> None:
    print(f"[train] {msg}", file=sys.stderr, flush=True)
