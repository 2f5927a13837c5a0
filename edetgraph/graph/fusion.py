"""Feature fusion methods: how a BiFPN node combines its same-shaped inputs, each method
defined once, its arithmetic (the TF form) beside what it costs.

A method has learned weights (one scalar per input, or one per input and channel) or none,
and a ``combine(tf, inputs, weights)`` that is the lowered computation: it receives the
TensorFlow module as an argument, so this module stays free of TensorFlow (the graph layer
costs specs without it) while the lowering (``edetgraph.nn.lowering``) runs exactly this
code. ``ops(k, weight_size, elements)`` counts what the combination adds to the official
FLOP figures (TF profiler op types, as ``edetgraph.graph.cost`` counts them).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

# Fast normalised fusion's epsilon (paper eq. 2), as the official code writes it.
FAST_EPS = 1e-4


@dataclass(frozen=True)
class Fusion:
    name: str
    weights: str                      # "none" | "scalar" (one per input) | "channel"
    combine: Callable                 # (tf, inputs, weights) -> tensor
    ops: Callable                     # (k inputs, weight size, elements) -> Counter
    doc: str

    def weight_shape(self, channels: int) -> tuple[int, ...] | None:
        """Shape of one input's weight variable; None when the method has none."""
        return {"none": None, "scalar": (), "channel": (channels,)}[self.weights]

    def weight_size(self, channels: int) -> int:
        return {"none": 0, "scalar": 1, "channel": channels}[self.weights]


def _sum(tf, xs, weights):
    return tf.add_n(xs)


def _sum_ops(k, w, elems):
    return Counter(AddN=(k - 1) * elems)


def _fast_normalised(tf, xs, weights):
    # ReLU keeps each weight >= 0; dividing by their sum (plus eps) is the paper's cheap
    # stand-in for a softmax, with the same sum-to-one effect. The weights are normalised in
    # float32 and only then cast to the activations' dtype (no cast at all in float32).
    w = [tf.nn.relu(v) for v in weights]
    total = tf.add_n(w) + FAST_EPS
    return tf.add_n([x * tf.cast(wi / total, x.dtype) for x, wi in zip(xs, w)])


def _fast_ops(k, w, elems):
    return Counter(Mul=k * elems, RealDiv=k * elems, AddN=(k - 1) * elems + (k - 1) * w,
                   AddV2=w)


def _softmax(tf, xs, weights):
    w = tf.nn.softmax(tf.stack(weights, -1), axis=-1)
    return tf.reduce_sum(tf.stack(xs, -1) * tf.cast(w, xs[0].dtype), -1)


def _softmax_ops(k, w, elems):
    return Counter(Mul=k * elems, Sum=(k - 1) * elems)


METHODS: dict[str, Fusion] = {f.name: f for f in (
    Fusion("fastattn", "scalar", _fast_normalised, _fast_ops,
           "fast normalised fusion: relu(w_i) / (sum relu(w) + 1e-4), the EfficientDet default"),
    Fusion("attn", "scalar", _softmax, _softmax_ops,
           "softmax over one scalar weight per input"),
    Fusion("sum", "none", _sum, _sum_ops, "plain sum, no weights"),
    Fusion("channel_attn", "channel", _softmax, _softmax_ops,
           "softmax over one weight per input and channel"),
    Fusion("channel_fastattn", "channel", _fast_normalised, _fast_ops,
           "fast normalised fusion with one weight per input and channel"),
)}


def get(name: str) -> Fusion:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"{name!r} is not a fusion method (known: {', '.join(METHODS)})") \
            from None
