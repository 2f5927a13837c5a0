"""How the lowered model computes, as opposed to what it is: the compute dtype (mixed
precision) and gradient checkpointing. Neither is recorded in a checkpoint.

Compute dtype: variables stay float32; every op casts the weights it reads to the dtype of
its input (:func:`weight`), so the dtype given to the images at the model's entry flows
through the whole network. Batch-norm statistics, the fusion weights' normalisation and the
head outputs stay float32. In float32 no cast is emitted at all (``tf.cast`` to a tensor's
own dtype returns it unchanged), so float32 graphs, and every exported file, are op for op
what they were before mixed precision existed.

Gradient checkpointing (:func:`recompute`): a segment of the network (a backbone block, a
BiFPN node) keeps only its inputs for the backward pass and runs its forward again when the
gradient reaches it. The re-run must compute exactly what the first run did, and must not
change state twice, so while a segment runs the first time the random drop-connect masks it
draws are recorded, and while it re-runs they are replayed and batch norm leaves its moving
statistics alone (:func:`replaying`, :func:`random_mask`).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import tensorflow as tf

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Compute:
    """How to run the model: ``dtype`` of the activations (weights are cast to it on read)
    and ``recompute`` (gradient checkpointing of backbone blocks and BiFPN nodes)."""
    dtype: str = "float32"
    recompute: bool = False

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"compute dtype {self.dtype!r} not one of {', '.join(DTYPES)}")

    @property
    def tf_dtype(self) -> tf.DType:
        return tf.as_dtype(self.dtype)


FLOAT32 = Compute()


def weight(v, like):
    """Variable (or tensor) ``v`` in the dtype of the activation ``like``; in float32 ``v``
    itself (no Cast op)."""
    return tf.cast(v, like.dtype)


class _Segment(threading.local):
    """The checkpointed segment being traced on this thread: masks drawn in its first run
    (``record``), or masks to hand back while it re-runs (``replay``)."""
    record: list | None = None
    replay: list | None = None


_SEGMENT = _Segment()


def replaying() -> bool:
    """True while a checkpointed segment re-runs its forward for the backward pass: state
    updates (batch-norm moving statistics) were made by the first run and are skipped."""
    return _SEGMENT.replay is not None


def random_mask(draw):
    """``draw()``, a random tensor, recorded in a segment's first run and handed back in
    its re-run (the recomputed forward then matches the one whose gradient it gives)."""
    if _SEGMENT.replay is not None:
        return _SEGMENT.replay.pop(0)
    mask = draw()
    if _SEGMENT.record is not None:
        _SEGMENT.record.append(mask)
    return mask


def _after(xs, dys):
    """``xs`` made to depend on the first upstream gradient: the re-run then waits until the
    backward pass reaches the segment instead of running right after the forward (a data
    dependency, since XLA ignores control dependencies). Adds an exact zero."""
    e = tf.reshape(dys[0], [-1])[:1]
    zero = tf.reduce_sum(tf.cast(tf.math.is_nan(e), tf.float32)) * 0.0
    return [x + tf.cast(zero, x.dtype) for x in xs]


def recompute(fn):
    """``fn(list of tensors) -> list of tensors`` run with gradient checkpointing: only the
    inputs are kept for the backward pass, where ``fn`` runs again under a tape. Variables
    ``fn`` reads get their gradients as usual. For use inside ``tf.function`` (eager
    execution would still keep the first run's activations on the tape)."""

    @tf.custom_gradient
    def segment(*xs):
        masks = []
        outer = _SEGMENT.record
        _SEGMENT.record = masks
        try:
            ys = fn(list(xs))
        finally:
            _SEGMENT.record = outer

        def grad(*dys, variables=None):
            variables = list(variables or [])
            again = _after(xs, dys)
            with tf.GradientTape() as tape:
                tape.watch(again)
                tape.watch(variables)
                previous, _SEGMENT.replay = _SEGMENT.replay, list(masks)
                try:
                    ys2 = fn(again)
                finally:
                    _SEGMENT.replay = previous
            grads = tape.gradient(ys2, again + variables, output_gradients=list(dys),
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return grads[:len(xs)], grads[len(xs):]

        return list(ys), grad

    return lambda xs: segment(*xs)
