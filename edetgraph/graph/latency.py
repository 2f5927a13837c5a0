"""A spec's ops as the exported network runs them, each with the features a latency model
reads; and the arithmetic that turns a fitted model into milliseconds. No TensorFlow.

The op list follows the lowering (``edetgraph.nn``) op by op at inference: batch norms are
folded into their convs, so a conv is one op; an activation is its own op unless the
backend runs it inside the op before it (``fuses``: activation -> producer kinds, e.g.
LiteRT's fused RELU6 after a conv or an ADD); swish is one op of kind ``act_swish``;
squeeze-excite is a mean, two 1x1 convs on one pixel, a sigmoid and a broadcast multiply;
a fusion node is one ``scale`` per weighted input, one ``sum`` of its inputs, its
activation and its (separable) conv; the heads run their convs once per level.

Every op carries the cost model's float ops (``edetgraph.graph.cost``'s convention, so the
list's FLOPs equal ``model_cost(spec).total.flops``: tests check it for every spec) beside
the features latency is fitted on: multiply-accumulates, bytes read, written and of
weights (float32). A latency model (``edetgraph.graph.latency_model``) gives each op key a
linear cost in those features.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from edetgraph.graph import cost, fusion, ir
from edetgraph.graph.build import build_ir
from edetgraph.graph.sizes import feature_sizes

BYTES = 4        # float32 activations and weights
ACT_KEYS = {"swish": "swish", "silu": "swish", "relu6": "relu", "relu": "relu",
            "hswish": "hswish", "sigmoid": "sigmoid"}
# Which producer an activation can fuse into: the op kind, as in ``Fuses`` tables.
PRODUCERS = {"conv": "conv", "pw": "conv", "dw": "dw", "add": "add", "sum": "sum"}


@dataclass(frozen=True)
class Op:
    """One op of the network as a runtime executes it."""
    kind: str            # conv | pw | dw | act | mean | mul | add | scale | sum | maxpool | upsample
    component: str       # the cost model's component
    name: str
    hw: tuple            # output height, width
    cin: int
    cout: int
    k: int = 1
    stride: int = 1
    macs: int = 0        # multiply-accumulates
    in_bytes: int = 0    # activations read
    out_bytes: int = 0   # activations written
    w_bytes: int = 0     # weights read
    float_ops: int = 0   # cost-model float ops (AddV2 left out, as the cost model does)
    act: str | None = None      # kind "act": which activation
    fused: bool = False         # kind "act": runs inside the op before it

    @property
    def key(self) -> str:
        """The latency model's name for what this op costs."""
        if self.kind == "act":
            return "act_fused" if self.fused else f"act_{ACT_KEYS[self.act]}"
        if self.kind == "dw":
            return f"dw_k{self.k}_s{self.stride}"
        return self.kind

    @property
    def flops(self) -> float:
        return self.float_ops / 2

    def features(self, cache_bytes: int) -> dict:
        """What its time is linear in: 1, multiply-accumulates, bytes read, written and of
        weights, and the bytes beyond ``cache_bytes`` (those go to DRAM and back)."""
        moved = self.in_bytes + self.out_bytes + self.w_bytes
        return {"const": 1.0, "macs": float(self.macs), "in_bytes": float(self.in_bytes),
                "out_bytes": float(self.out_bytes), "w_bytes": float(self.w_bytes),
                "spill_bytes": float(max(0, moved - cache_bytes))}


FEATURES = ("const", "macs", "in_bytes", "out_bytes", "w_bytes", "spill_bytes")


def _float_ops(c: cost.Cost) -> int:
    return sum(c.ops.values()) - c.ops.get("AddV2", 0)


def _n(hw, ch) -> int:
    return hw[0] * hw[1] * ch


class OpList:
    """Collects ops for one component; ``fuses`` says which activations the backend folds
    into which producer kind (``{"relu6": ("conv", "dw", "add", "sum")}``)."""

    def __init__(self, fuses: dict | None = None):
        self.ops: list[Op] = []
        self.fuses = {a: tuple(p) for a, p in (fuses or {}).items()}
        self.component = ""

    def _add(self, op: Op) -> Op:
        self.ops.append(op)
        return op

    def conv(self, name, cin, cout, k, stride, in_hw, out_hw, bias=False, shared=False) -> Op:
        """A (folded) convolution; ``shared``: its weights were counted at an earlier level."""
        c = cost.conv(cin, cout, k, out_hw, bias=bias)
        c = c.shared() if shared else c
        kind = "pw" if k == 1 and stride == 1 else "conv"
        return self._add(Op(kind, self.component, name, tuple(out_hw), cin, cout, k, stride,
                            macs=k * k * cin * _n(out_hw, cout), in_bytes=BYTES * _n(in_hw, cin),
                            out_bytes=BYTES * _n(out_hw, cout),
                            w_bytes=BYTES * (k * k * cin * cout + cout), float_ops=_float_ops(c)))

    def dw(self, name, ch, k, stride, in_hw, out_hw, shared=False) -> Op:
        c = cost.depthwise(ch, k, out_hw)
        c = c.shared() if shared else c
        return self._add(Op("dw", self.component, name, tuple(out_hw), ch, ch, k, stride,
                            macs=k * k * _n(out_hw, ch), in_bytes=BYTES * _n(in_hw, ch),
                            out_bytes=BYTES * _n(out_hw, ch), w_bytes=BYTES * (k * k + 1) * ch,
                            float_ops=_float_ops(c)))

    def separable(self, name, cin, cout, hw, bias=True, shared=False) -> Op:
        self.dw(f"{name}/depthwise", cin, 3, 1, hw, hw, shared)
        return self.conv(f"{name}/pointwise", cin, cout, 1, 1, hw, hw, bias, shared)

    def act(self, name, kind, hw, ch, after: Op | None) -> Op | None:
        """``kind`` on the output of ``after`` (None: nothing, e.g. a linear layer)."""
        if kind is None:
            return None
        producer = PRODUCERS.get(after.kind) if after is not None else None
        fused = producer is not None and producer in self.fuses.get(ACT_KEYS[kind], ())
        nbytes = BYTES * _n(hw, ch)
        return self._add(Op("act", self.component, name, tuple(hw), ch, ch,
                            in_bytes=0 if fused else nbytes, out_bytes=0 if fused else nbytes,
                            float_ops=_float_ops(cost.act(kind, _n(hw, ch))), act=kind,
                            fused=fused))

    def eltwise(self, kind, name, hw, ch, inputs=2, in_bytes=None, float_ops=0) -> Op:
        """add (residual), mul (squeeze-excite gate), scale (a fusion weight), sum (k inputs)."""
        n = BYTES * _n(hw, ch)
        return self._add(Op(kind, self.component, name, tuple(hw), ch, ch,
                            in_bytes=inputs * n if in_bytes is None else in_bytes, out_bytes=n,
                            float_ops=float_ops))

    def mean(self, name, hw, ch) -> Op:
        return self._add(Op("mean", self.component, name, (1, 1), ch, ch,
                            in_bytes=BYTES * _n(hw, ch), out_bytes=BYTES * ch,
                            float_ops=_n(hw, ch)))

    def maxpool(self, name, ch, in_hw, out_hw) -> Op:
        kh = (in_hw[0] - 1) // out_hw[0] + 2
        kw = (in_hw[1] - 1) // out_hw[1] + 2
        return self._add(Op("maxpool", self.component, name, tuple(out_hw), ch, ch, kh,
                            kh - 1, in_bytes=BYTES * _n(in_hw, ch),
                            out_bytes=BYTES * _n(out_hw, ch), float_ops=kh * kw * _n(out_hw, ch)))

    def upsample(self, name, ch, in_hw, out_hw) -> Op:
        return self._add(Op("upsample", self.component, name, tuple(out_hw), ch, ch,
                            stride=-(-out_hw[0] // in_hw[0]), in_bytes=BYTES * _n(in_hw, ch),
                            out_bytes=BYTES * _n(out_hw, ch)))


# ---------------------------------------------------------------- the network, part by part

def mbconv(ops: OpList, name: str, b, act: str, hw_in, hw) -> None:
    """One MBConv block (``edetgraph.nn.backbone.MBConv``): [expand] dw [se] project [+x]."""
    mid = b.mid_ch
    x = None
    if b.expand != 1:
        x = ops.conv(f"{name}/expand", b.in_ch, mid, 1, 1, hw_in, hw_in)
        ops.act(f"{name}/expand_act", act, hw_in, mid, x)
    x = ops.dw(f"{name}/depthwise", mid, b.kernel, b.stride, hw_in, hw)
    ops.act(f"{name}/depthwise_act", act, hw, mid, x)
    if b.se_ch:
        ops.mean(f"{name}/se_mean", hw, mid)
        x = ops.conv(f"{name}/se_reduce", mid, b.se_ch, 1, 1, (1, 1), (1, 1), bias=True)
        ops.act(f"{name}/se_act", act, (1, 1), b.se_ch, x)
        x = ops.conv(f"{name}/se_expand", b.se_ch, mid, 1, 1, (1, 1), (1, 1), bias=True)
        ops.act(f"{name}/se_sigmoid", "sigmoid", (1, 1), mid, x)
        ops.eltwise("mul", f"{name}/se_mul", hw, mid, in_bytes=BYTES * (_n(hw, mid) + mid),
                    float_ops=_n(hw, mid))
    ops.conv(f"{name}/project", mid, b.out_ch, 1, 1, hw, hw)
    if b.residual:
        ops.eltwise("add", f"{name}/residual", hw, b.out_ch)


def backbone_ops(spec, ops: OpList) -> None:
    cfg = spec.backbone_config()
    sizes = feature_sizes(spec.image_size, 0, 10)
    ops.component = "backbone"
    x = ops.conv("stem", 3, cfg.stem_ch, 3, 2, sizes[0], sizes[1])
    ops.act("stem_act", cfg.act, sizes[1], cfg.stem_ch, x)
    level = 1
    last = max(cost.ir_feature_levels(spec).values())
    for b in cfg.blocks()[: last + 1]:
        hw_in = sizes[level]
        level += b.stride == 2
        mbconv(ops, f"blocks_{b.index}", b, cfg.act, hw_in, sizes[level])


def resample_ops(g: nx.DiGraph, n: str, ops: OpList) -> None:
    """``edetgraph.nn.lowering.Resample``: [1x1 conv] then max-pool or nearest upsample
    (the conv after the pool with ``conv_after``)."""
    d = g.nodes[n]
    (src,) = ir.ordered_inputs(g, n)
    cin, cout = g.nodes[src]["channels"], d["channels"]
    in_hw, out_hw = d["in_size"], d["size"]
    down = in_hw[0] > out_hw[0] and in_hw[1] > out_hw[1]
    up = in_hw[0] < out_hw[0] or in_hw[1] < out_hw[1]
    after = down and d["conv_after"]
    ch = cin
    if d["conv"] and not after:
        ops.conv(f"{n}/conv", cin, cout, 1, 1, in_hw, in_hw, bias=True)
        ch = cout
    if down:
        ops.maxpool(f"{n}/maxpool", ch, in_hw, out_hw)
    elif up:
        ops.upsample(f"{n}/upsample", ch, in_hw, out_hw)
    if d["conv"] and after:
        ops.conv(f"{n}/conv", cin, cout, 1, 1, out_hw, out_hw, bias=True)


def fuse_ops(g: nx.DiGraph, n: str, ops: OpList) -> None:
    """``edetgraph.nn.lowering.Fuse``: weighted inputs summed, act, (separable) conv; the
    fusion's float ops (as the cost model counts them) sit on its sum."""
    d = g.nodes[n]
    k = len(ir.ordered_inputs(g, n))
    ch, hw = d["channels"], d["size"]
    method = fusion.get(d["weight_method"])
    if method.weights != "none":
        for i in range(k):
            ops.eltwise("scale", f"{n}/scale{i}", hw, ch, inputs=1)
    elems = _n(hw, ch)
    total = method.ops(k, method.weight_size(ch), elems)
    x = ops.eltwise("sum", f"{n}/sum", hw, ch, inputs=k,
                    float_ops=sum(total.values()) - total.get("AddV2", 0))
    if not d["conv_bn_act"]:
        ops.act(f"{n}/act", d["act"], hw, ch, x)
    if d["separable"]:
        x = ops.separable(f"{n}/conv", ch, ch, hw, bias=not d["conv_bn_act"])
    else:
        x = ops.conv(f"{n}/conv", ch, ch, 3, 1, hw, hw, bias=not d["conv_bn_act"])
    if d["conv_bn_act"]:
        ops.act(f"{n}/act", d["act"], hw, ch, x)


def feature_network_ops(g: nx.DiGraph, ops: OpList) -> None:
    for n in nx.lexicographical_topological_sort(g):   # the lowering's order
        d = g.nodes[n]
        if d["op"] in ("input", "output"):
            continue
        ops.component = d["component"]
        {"resample": resample_ops, "fuse": fuse_ops}[d["op"]](g, n, ops)


def head_ops(ops: OpList, component: str, ch: int, outputs: int, repeats: int,
             separable: bool, act: str, sizes: dict, residual: bool = False) -> None:
    """``edetgraph.nn.heads.Head`` over the levels of ``sizes`` (level -> h, w): the same
    convs at every level (weights counted once); ``residual``: the survival adds of a head
    with drop-connect."""
    ops.component = component
    for i, (lvl, hw) in enumerate(sizes.items()):
        for r in range(repeats + 1):
            cout = ch if r < repeats else outputs
            name = f"{component}/{'predict' if r == repeats else r}/l{lvl}"
            if separable:
                x = ops.separable(name, ch, cout, hw, shared=i > 0)
            else:
                x = ops.conv(name, ch, cout, 3, 1, hw, hw, bias=True, shared=i > 0)
            if r < repeats:
                ops.act(f"{name}/act", act, hw, ch, x)
                if r > 0 and residual:
                    ops.eltwise("add", f"{name}/residual", hw, ch)


def spec_ops(spec, fuses: dict | None = None, g: nx.DiGraph | None = None) -> list[Op]:
    """Every op of ``spec``'s network at inference, in the order the lowering runs them."""
    ops = OpList(fuses)
    backbone_ops(spec, ops)
    feature_network_ops(g if g is not None else build_ir(spec), ops)
    sizes = feature_sizes(spec.image_size, spec.min_level, spec.max_level)
    h = spec.head
    for component, outputs in (("class_net", spec.num_anchors * spec.num_classes),
                               ("box_net", spec.num_anchors * 4)):
        head_ops(ops, component, spec.fpn.channels, outputs, h.repeats, h.separable, spec.act,
                 sizes, residual=bool(h.drop_connect))
    return ops.ops


def io_bytes(spec) -> tuple[int, int]:
    """Bytes of the network's input (one image) and of all its raw outputs."""
    h, w = spec.image_size
    sizes = feature_sizes(spec.image_size, spec.min_level, spec.max_level)
    per_pixel = spec.num_anchors * (spec.num_classes + 4)
    return BYTES * h * w * 3, BYTES * sum(_n(sizes[lvl], per_pixel) for lvl in spec.levels)
