"""Lowering: the feature-network IR becomes a ``tf.Module`` of raw TF ops.

One function per op kind, registered in a table; each returns what runs one IR node (its
step), so running the network is a single loop over the steps, with no second dispatch on
op names. An op with no lowering is an error naming the op and the node. The execution
order is fixed once, at build time, from a topological sort of the IR.
"""
from __future__ import annotations

from typing import Callable

import networkx as nx
import tensorflow as tf

from edetgraph.graph import fusion, ir
from edetgraph.nn.compute import recompute as checkpointed
from edetgraph.nn.layers import (
    BatchNorm,
    Conv,
    SeparableConv,
    activation,
    conv_bn,
    max_pool,
    variable,
)
from edetgraph.nn.targets import DEFAULT, Target

_LOWERINGS: dict[str, Callable] = {}


def lowering(op: str):
    """Register ``fn(g, node, ctx) -> step`` as the lowering of ``op``: the step is what runs
    the node, ``step(inputs, training, target) -> tensor`` (a tf.Module or a function;
    ``target`` is the ``edetgraph.nn.targets.Target`` whose op forms to emit)."""
    def deco(fn):
        _LOWERINGS[op] = fn
        return fn
    return deco


class Resample(tf.Module):
    """1x1 conv + BN where channels change, then max-pool down or nearest up (of its one
    input, ``xs[0]``)."""

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

    def __call__(self, xs, training=False, target: Target = DEFAULT):
        x = xs[0]
        if not self.conv_after:
            x = self._project(x, training)
        if self.down:
            x = max_pool(x, self.in_hw, self.out_hw)
        elif self.up:
            x = target.upsample(x, self.in_hw, self.out_hw)
        if self.conv_after:
            x = self._project(x, training)
        return x


class Fuse(tf.Module):
    """Weighted fusion of same-shaped inputs (``edetgraph.graph.fusion``), then
    act -> (separable) 3x3 conv -> BN."""

    def __init__(self, d: dict, n_inputs: int, bn_kw: dict, seed: int):
        super().__init__(name=None)
        self.method = fusion.get(d["weight_method"])
        self.act, self.pattern = d["act"], d["conv_bn_act"]
        ch, scope = d["channels"], d["scope"]
        shape = self.method.weight_shape(ch)
        self.weights = [] if shape is None else [
            variable(f"{scope}/WSM" + (f"_{i}" if i else ""), shape, "ones")
            for i in range(n_inputs)]
        cscope = f"{scope}/{d['combine_scope']}/conv"
        self.conv = (SeparableConv(cscope, ch, ch, 3, bias=not self.pattern, seed=seed)
                     if d["separable"] else Conv(cscope, ch, ch, 3, bias=not self.pattern,
                                                 seed=seed))
        self.bn = BatchNorm(f"{scope}/{d['combine_scope']}/bn", ch, **bn_kw)

    def fuse(self, xs, target: Target = DEFAULT):
        return self.method.combine(target.ops, xs, self.weights)

    def __call__(self, xs, training=False, target: Target = DEFAULT):
        x = self.fuse(xs, target)
        if not self.pattern:
            x = activation(x, self.act, training)
        x = conv_bn(self.conv, self.bn, x, training)
        return activation(x, self.act, training) if self.pattern else x


def _identity(xs, training=False, target=None):
    return xs[0]


@lowering("input")
def _lower_input(g, n, ctx):
    return _identity      # the backbone feature of its level, as it is


@lowering("output")
def _lower_output(g, n, ctx):
    return _identity      # handed to the heads as it is


@lowering("resample")
def _lower_resample(g, n, ctx):
    (src,) = ir.ordered_inputs(g, n)
    return Resample(g.nodes[n], g.nodes[src]["channels"], ctx["bn_kw"], ctx["seed"])


@lowering("fuse")
def _lower_fuse(g, n, ctx):
    return Fuse(g.nodes[n], len(ir.ordered_inputs(g, n)), ctx["bn_kw"], ctx["seed"])


class FeatureNetwork(tf.Module):
    """Runs the lowered IR: backbone features in, ``{level: feature}`` for the heads out.

    Every node is one step ``fn(inputs, training)``, made by its op's lowering and run in
    the topological order fixed at build time; an input node reads the backbone feature of
    its level (keyed ``("feature", level)``).
    """

    def __init__(self, g: nx.DiGraph, bn_kw: dict, seed: int = 0):
        super().__init__(name=None)
        ctx = {"bn_kw": bn_kw, "seed": seed}
        self.steps = []
        for n in nx.lexicographical_topological_sort(g):
            op = g.nodes[n]["op"]
            fn = _LOWERINGS.get(op)
            if fn is None:
                raise ir.GraphError(f"IR node {n!r}: no lowering for op {op!r}"
                                    f" (known: {', '.join(sorted(_LOWERINGS))})")
            srcs = ([("feature", g.nodes[n]["level"])] if op == "input"
                    else ir.ordered_inputs(g, n))
            self.steps.append((n, srcs, fn(g, n, ctx)))
        # tf.Module finds variables through attributes: the steps that hold weights.
        self.nodes = {n: step for n, _, step in self.steps if isinstance(step, tf.Module)}
        self.outputs = {g.nodes[n]["level"]: n for n in ir.ordered_outputs(g)}

    def __call__(self, feats: dict[int, tf.Tensor], training=False, target: Target = DEFAULT,
                 recompute: bool = False) -> dict[int, tf.Tensor]:
        """``recompute``: gradient checkpointing, each node's activations (fusion, conv,
        BN) recomputed in the backward pass (training only)."""
        vals = {("feature", level): x for level, x in feats.items()}
        for name, srcs, step in self.steps:
            xs = [vals[s] for s in srcs]
            if recompute and training and isinstance(step, tf.Module):
                vals[name] = checkpointed(lambda xs, step=step: [step(xs, True, target)])(xs)[0]
            else:
                vals[name] = step(xs, training, target)
        return {level: vals[n] for level, n in self.outputs.items()}
