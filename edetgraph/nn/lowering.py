"""Lowering: the feature-network IR becomes a ``tf.Module`` of raw TF ops.

One function per op kind, registered in a table; each builds the module for one IR node.
An op with no lowering is an error naming the op and the node. The execution order is
fixed once, at build time, from a topological sort of the IR.
"""
from __future__ import annotations

from typing import Callable

import networkx as nx
import tensorflow as tf

from edetgraph.graph import ir
from edetgraph.nn.layers import BatchNorm, Conv, SeparableConv, activation, conv_bn, max_pool, \
    upsample_nearest, variable

_LOWERINGS: dict[str, Callable] = {}


def lowering(op: str):
    """Register ``fn(g, node, ctx) -> tf.Module | None`` as the lowering of ``op``."""
    def deco(fn):
        _LOWERINGS[op] = fn
        return fn
    return deco


class Resample(tf.Module):
    """1x1 conv + BN where channels change, then max-pool down or nearest up."""

    def __init__(self, d: dict, cin: int, bn_kw: dict, seed: int):
        super().__init__(name=None)
        self.in_hw, self.out_hw = d["in_size"], d["size"]
        self.down = self.in_hw[0] > self.out_hw[0] and self.in_hw[1] > self.out_hw[1]
        self.up = self.in_hw[0] < self.out_hw[0] or self.in_hw[1] < self.out_hw[1]
        if self.down and self.up:
            raise ir.GraphError(f"resample {d['scope']}: {self.in_hw} -> {self.out_hw} shrinks"
                                " one axis and grows the other")
        self.conv_after = d["conv_after"] and self.down
        self.conv = self.bn = None
        if d["conv"]:
            self.conv = Conv(f"{d['scope']}/conv2d", cin, d["channels"], 1, bias=True, seed=seed)
            if d["bn"]:
                self.bn = BatchNorm(f"{d['scope']}/bn", d["channels"], **bn_kw)

    def _project(self, x, training):
        return x if self.conv is None else conv_bn(self.conv, self.bn, x, training)

    def __call__(self, x, training=False):
        if not self.conv_after:
            x = self._project(x, training)
        if self.down:
            x = max_pool(x, self.in_hw, self.out_hw)
        elif self.up:
            x = upsample_nearest(x, self.in_hw, self.out_hw)
        if self.conv_after:
            x = self._project(x, training)
        return x


class Fuse(tf.Module):
    """Weighted fusion of same-shaped inputs, then act -> (separable) 3x3 conv -> BN."""

    def __init__(self, d: dict, n_inputs: int, bn_kw: dict, seed: int):
        super().__init__(name=None)
        self.method, self.act, self.pattern = d["weight_method"], d["act"], d["conv_bn_act"]
        ch, scope = d["channels"], d["scope"]
        shape = () if self.method in ("attn", "fastattn") else (ch,)
        self.weights = []
        if self.method != "sum":
            self.weights = [variable(f"{scope}/WSM" + (f"_{i}" if i else ""), shape, "ones")
                            for i in range(n_inputs)]
        cscope = f"{scope}/{d['combine_scope']}/conv"
        self.conv = (SeparableConv(cscope, ch, ch, 3, bias=not self.pattern, seed=seed)
                     if d["separable"] else Conv(cscope, ch, ch, 3, bias=not self.pattern,
                                                 seed=seed))
        self.bn = BatchNorm(f"{scope}/{d['combine_scope']}/bn", ch, **bn_kw)

    def fuse(self, xs):
        if self.method == "sum":
            return tf.add_n(xs)
        if self.method in ("fastattn", "channel_fastattn"):
            # Fast normalised fusion (paper eq. 2): ReLU keeps weights >= 0, eps = 1e-4.
            w = [tf.nn.relu(v) for v in self.weights]
            total = tf.add_n(w) + 1e-4
            return tf.add_n([x * (wi / total) for x, wi in zip(xs, w)])
        w = tf.nn.softmax(tf.stack(self.weights, -1), axis=-1)   # attn, channel_attn
        return tf.reduce_sum(tf.stack(xs, -1) * w, -1)

    def __call__(self, xs, training=False):
        x = self.fuse(xs)
        if not self.pattern:
            x = activation(x, self.act)
        x = conv_bn(self.conv, self.bn, x, training)
        return activation(x, self.act) if self.pattern else x


@lowering("input")
def _lower_input(g, n, ctx):
    return None      # fed from the backbone


@lowering("output")
def _lower_output(g, n, ctx):
    return None      # identity: handed to the heads


@lowering("resample")
def _lower_resample(g, n, ctx):
    (src,) = ir.ordered_inputs(g, n)
    return Resample(g.nodes[n], g.nodes[src]["channels"], ctx["bn_kw"], ctx["seed"])


@lowering("fuse")
def _lower_fuse(g, n, ctx):
    return Fuse(g.nodes[n], len(ir.ordered_inputs(g, n)), ctx["bn_kw"], ctx["seed"])


class FeatureNetwork(tf.Module):
    """Runs the lowered IR: backbone features in, ``{level: feature}`` for the heads out."""

    def __init__(self, g: nx.DiGraph, bn_kw: dict, seed: int = 0):
        super().__init__(name=None)
        ctx = {"bn_kw": bn_kw, "seed": seed}
        self.order = list(nx.lexicographical_topological_sort(g))
        self.inputs = {n: ir.ordered_inputs(g, n) for n in self.order}
        self.ops = {n: g.nodes[n]["op"] for n in self.order}
        self.levels = {n: g.nodes[n]["level"] for n in self.order}
        self.outputs = ir.ordered_outputs(g)
        self.nodes = {}
        for n in self.order:
            fn = _LOWERINGS.get(self.ops[n])
            if fn is None:
                raise ir.GraphError(f"IR node {n!r}: no lowering for op {self.ops[n]!r}"
                                    f" (known: {', '.join(sorted(_LOWERINGS))})")
            mod = fn(g, n, ctx)
            if mod is not None:
                self.nodes[n] = mod

    def __call__(self, feats: dict[int, tf.Tensor], training=False) -> dict[int, tf.Tensor]:
        vals = {}
        for n in self.order:
            op, ins = self.ops[n], self.inputs[n]
            if op == "input":
                vals[n] = feats[self.levels[n]]
            elif op == "output":
                vals[n] = vals[ins[0]]
            elif op == "fuse":
                vals[n] = self.nodes[n]([vals[i] for i in ins], training)
            else:
                vals[n] = self.nodes[n](vals[ins[0]], training)
        return {self.levels[n]: vals[n] for n in self.outputs}
