"""Weights for a model that has no checkpoint yet, and the model an export or a benchmark
starts from.

Freshly initialised weights give near-constant outputs (every BN is the identity), which
would make any parity check vacuous: :func:`randomize_weights` sets batch-norm statistics
from synthetic pictures and scales the prediction layers so that outputs spread as a
trained model's do. :func:`model_with_weights` is the one entry point: a checkpoint if
given (strict, EMA shadows when present), else these seeded random weights.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from edetgraph.checkpoints.checkpoint import load_checkpoint
from edetgraph.data.synthetic import render_image
from edetgraph.graph import outputs
from edetgraph.nn.layers import BatchNorm
from edetgraph.nn.model import build_model
from edetgraph.task.preprocess import prepare_image


def model_with_weights(spec, ckpt=None, seed: int = 0):
    """``(model, weights)``: the detector with checkpoint or random weights, and a record of
    which (``{"source": "random", "seed": 0}`` or the checkpoint's path, format and EMA use)."""
    model = build_model(spec, seed=seed)
    if ckpt is None:
        randomize_weights(model, spec, seed)
        return model, {"source": "random", "seed": seed}
    report = load_checkpoint(ckpt, model.variables_by_name(), mode="strict", use_ema="auto")
    return model, {"source": os.path.abspath(ckpt), "format": report.format,
                   "ema": bool(report.used_ema), "variables": len(report.loaded)}


RANDOMIZE_PIXELS = 8 * 512 * 512  # images per pass in randomize_weights: 8 at D0's 512 px


def randomize_weights(model, spec, seed: int = 0, num_images: int = 8,
                      max_pixels: int = RANDOMIZE_PIXELS) -> None:
    """Give random weights realistic output ranges: batch-norm statistics from synthetic images,
    prediction layers scaled so logits span about the prior +-6 and box codes about +-3.

    Near-constant channels would get a tiny variance and magnify any rounding downstream
    (weights in fp16 then moved the outputs by >10 %), so variances are floored at their
    layer's median. The images go through in passes of at most ``max_pixels`` pixels (all 8
    at once up to 512 px; one at a time at D7x's 1536 px, where a single 8-image pass peaked
    at 20 GB), each BN layer keeping the image-weighted mean of the passes' statistics.
    Relies on BatchNorm.momentum and the blocks' ``survival`` attribute.
    """
    images = np.stack([prepare_image(im, spec, "float")
                       for im in synthetic_images(spec, num_images, seed + 7)])
    per_pass = max(1, max_pixels // int(np.prod(images.shape[1:3])))
    passes = [tf.constant(images[i:i + per_pass]) for i in range(0, len(images), per_pass)]
    saved, bns = [], [m for m in model.submodules if isinstance(m, BatchNorm)]
    for m in model.submodules:
        if isinstance(m, BatchNorm):
            saved.append((m, "momentum", m.momentum))
        if isinstance(getattr(m, "survival", None), float) and m.survival < 1.0:
            saved.append((m, "survival", m.survival))  # no stochastic depth: deterministic
            m.survival = 1.0
    try:
        seen = 0
        for x in passes:  # momentum seen/(seen+n): a running mean; 0 on the first pass
            for bn in bns:
                bn.momentum = seen / (seen + len(x))
            model(x, training=True)
            seen += len(x)
    finally:
        for m, attr, value in saved:
            setattr(m, attr, value)
    for bn in bns:
        var = bn.moving_variance.numpy()
        bn.moving_variance.assign(np.maximum(var, np.median(var)))
    _scale_predictions(model, passes)


def _scale_predictions(model, passes) -> None:
    """Scale the predict kernels so each head's largest |output - bias| over ``passes`` is
    its target: 6 for class logits, 3 for box codes."""
    variables = model.variables_by_name()
    targets = {"class": 6.0, "box": 3.0}
    bias = {head: next(v for n, v in variables.items() if n.endswith(f"{head}-predict/bias"))
            .numpy() for head in targets}
    spread = dict.fromkeys(targets, 0.0)
    for x in passes:
        for k, t in model.raw_outputs(x).items():
            head = "class" if outputs.head_of(k) == "cls" else "box"
            spread[head] = max(spread[head], float(np.abs(t.numpy() - bias[head]).max()))
    for head, target in targets.items():
        for name, v in variables.items():
            if name.endswith((f"{head}-predict/pointwise_kernel", f"{head}-predict/kernel")):
                v.assign(v * (target / max(spread[head], 1e-12)))


def synthetic_images(spec, count: int, seed: int) -> list:
    """uint8 images of the built-in shapes dataset at the spec's (larger) side."""
    rng = np.random.default_rng(seed)
    return [render_image(rng, max(spec.image_size), 8)[0] for _ in range(count)]
