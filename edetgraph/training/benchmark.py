"""Train-step throughput: images/s of the real training step (forward, focal + Huber loss,
backward, clipping, SGD, EMA) on one fixed labelled batch, with no input pipeline.

    from edetgraph.training.benchmark import benchmark_train_step
    benchmark_train_step("d0", batch_size=8)     # {'images_per_sec': ..., ...}
"""
from __future__ import annotations

import os
import time

import numpy as np
import tensorflow as tf

from edetgraph.graph.spec import load_spec
from edetgraph.task.labeler import labeler_for
from edetgraph.training.config import from_dict
from edetgraph.training.step import build_state, make_train_function


def _fixed_batch(spec, batch_size: int, seed: int = 0) -> dict:
    """Random images and the labeler's targets for 1-4 random boxes per image."""
    rng = np.random.default_rng(seed)
    labeler = labeler_for(spec)
    h, w = spec.image_size
    examples = []
    for _ in range(batch_size):
        n = int(rng.integers(1, 5))
        y0, x0 = rng.uniform(0, h * 0.6, n), rng.uniform(0, w * 0.6, n)
        size = rng.uniform(0.1, 0.4, (n, 2)) * [h, w]
        boxes = np.stack([y0, x0, y0 + size[:, 0], x0 + size[:, 1]], 1).astype(np.float32)
        classes = rng.integers(1, spec.num_classes + 1, n)
        examples.append(labeler.label(boxes, classes))
    batch = {k: tf.stack([e[k] for e in examples]) for k in examples[0]}
    batch["image"] = tf.constant(rng.normal(size=(batch_size, h, w, 3)).astype(np.float32))
    return batch


def benchmark_train_step(spec="d0", batch_size: int = 8, steps: int = 10, warmup: int = 2,
                         jit_compile: bool = False, overrides=()) -> dict:
    """Images/s of the training step for `spec` (a name, path or ModelSpec) on this host.

    Returns images_per_sec, seconds_per_step, cpu_seconds_per_image (process CPU time,
    a fairer figure on a shared machine), and the settings used.
    """
    if isinstance(spec, (str, os.PathLike)):
        spec = load_spec(spec, overrides)
    config = from_dict({"batch_size": batch_size, "steps": warmup + steps, "warmup_steps": 1,
                        "learning_rate": 1e-3})
    state = build_state(spec, config, warmup + steps, 1)
    strategy = tf.distribute.get_strategy()
    train_fn = make_train_function(strategy, state, config, jit_compile)
    iterator = iter(tf.data.Dataset.from_tensors(_fixed_batch(spec, batch_size)).repeat())
    for _ in range(warmup):
        train_fn(iterator, tf.constant(1))[0]["loss"].numpy()
    wall, cpu = time.perf_counter(), time.process_time()
    out = train_fn(iterator, tf.constant(steps))
    loss = float(out[0]["loss"].numpy())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"spec": spec.name, "image_size": list(spec.image_size), "batch_size": batch_size,
            "jit_compile": jit_compile, "steps": steps, "images_per_sec": steps * batch_size / wall,
            "seconds_per_step": wall / steps, "cpu_seconds_per_image": cpu / (steps * batch_size),
            "final_loss": loss}
