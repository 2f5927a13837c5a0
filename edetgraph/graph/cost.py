"""Cost model: parameters and FLOPs of a spec, computed on data before any TensorFlow exists.

FLOPs are multiply-adds counted the way the official EfficientDet reports them: the TF
profiler's float-op count over its TF1 graph (a multiply-add is 2 ops; element-wise ops count
one per output element: squeeze-excite's Mean and Mul, BiasAdd, MaxPool window reads, fusion
Mul/RealDiv/AddN; ``tf.nn.swish`` is ``x * sigmoid(beta * x)``, two Muls), minus AddV2
(residual adds, left out of the published figures), halved. That graph also holds the
kernel initialisers (``normal * stddev + mean``), so every conv kernel weight adds one Mul:
we count it separately as ``MulInit`` to match the official figures to the op, and
:meth:`Cost.by_op_type` folds it back into ``Mul``.

Components are split as the official variable scopes split them: backbone, resample (extra
levels), fpn_cells, class_net, box_net.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import networkx as nx

from edetgraph.graph import blocks, fusion, ir
from edetgraph.graph.build import build_ir
from edetgraph.graph.sizes import feature_sizes

COMPONENTS = ("backbone", "resample", "fpn_cells", "class_net", "box_net")


@dataclass
class Cost:
    params_trainable: int = 0
    params_total: int = 0
    ops: Counter = field(default_factory=Counter)   # tfprof float ops per op type
    activations: int = 0   # output elements of the convolutions (per image, batch 1)

    @property
    def activation_bytes(self) -> int:
        """float32 bytes of the convolution outputs: what a training step keeps at least
        (each with its batch norm and activation beside it), per image."""
        return 4 * self.activations

    @property
    def flops(self) -> int:
        """Multiply-adds: (float ops - AddV2) / 2, as the official figures are counted."""
        return (sum(self.ops.values()) - self.ops.get("AddV2", 0)) // 2

    def __iadd__(self, other: "Cost") -> "Cost":
        self.params_trainable += other.params_trainable
        self.params_total += other.params_total
        self.ops.update(other.ops)
        self.activations += other.activations
        return self

    def by_op_type(self) -> dict[str, int]:
        """Float ops per TF op type, as the TF profiler names them."""
        ops = Counter(self.ops)
        ops["Mul"] += ops.pop("MulInit", 0)
        return {k: v for k, v in ops.items() if v}

    def shared(self) -> "Cost":
        """The same op again with weights already counted (a conv shared across levels)."""
        ops = Counter(self.ops)
        ops.pop("MulInit", None)
        return Cost(0, 0, ops, self.activations)

    def as_dict(self) -> dict:
        return {"params_trainable": self.params_trainable, "params_total": self.params_total,
                "flops": self.flops}


# ---------------------------------------------------------------- primitive costs

def conv(cin: int, cout: int, k: int, out_hw: tuple[int, int], bias: bool = False,
         batch: int = 1) -> Cost:
    n_out = batch * out_hw[0] * out_hw[1] * cout
    w = k * k * cin * cout
    c = Cost(w, w, Counter(Conv2D=2 * k * k * cin * n_out, MulInit=w), n_out)
    if bias:
        c += Cost(cout, cout, Counter(BiasAdd=n_out))
    return c


def depthwise(ch: int, k: int, out_hw: tuple[int, int], batch: int = 1) -> Cost:
    n_out = batch * out_hw[0] * out_hw[1] * ch
    w = k * k * ch
    return Cost(w, w, Counter(DepthwiseConv2dNative=2 * k * k * n_out, MulInit=w), n_out)


def separable(cin: int, cout: int, k: int, out_hw, bias: bool = True) -> Cost:
    c = depthwise(cin, k, out_hw)
    c += conv(cin, cout, 1, out_hw, bias=bias)
    return c


def bn(ch: int) -> Cost:
    """gamma, beta trainable; moving mean/variance not. Inference BN is a fused op (0 FLOPs)."""
    return Cost(2 * ch, 4 * ch)


def act(kind: str, n: int) -> Cost:
    """swish = x * sigmoid(1.0 * x): two Muls per element (Sigmoid, ReLU6 count nothing)."""
    return Cost(ops=Counter(Mul=2 * n)) if kind in ("swish", "silu") else Cost()


def _n(hw, ch) -> int:
    return hw[0] * hw[1] * ch


# ---------------------------------------------------------------- backbone

def backbone_cost(spec) -> Cost:
    cfg = spec.backbone_config()
    sizes = feature_sizes(spec.image_size, 0, 10)
    total = Cost()
    stem = cfg.stem_ch
    total += conv(3, stem, 3, sizes[1])
    total += bn(stem)
    total += act(cfg.act, _n(sizes[1], stem))
    level = 1
    blist = cfg.blocks()
    last = max(ir_feature_levels(spec).values())
    for b in blist[: last + 1]:
        hw_in = sizes[level]
        level += b.stride == 2
        hw = sizes[level]
        mid = b.mid_ch
        if b.expand != 1:
            total += conv(b.in_ch, mid, 1, hw_in)
            total += bn(mid)
            total += act(cfg.act, _n(hw_in, mid))
        total += depthwise(mid, b.kernel, hw)
        total += bn(mid)
        total += act(cfg.act, _n(hw, mid))
        if b.se_ch:
            total += Cost(ops=Counter(Mean=_n(hw, mid)))
            total += conv(mid, b.se_ch, 1, (1, 1), bias=True)
            total += act(cfg.act, b.se_ch)
            total += conv(b.se_ch, mid, 1, (1, 1), bias=True)
            total += Cost(ops=Counter(Mul=_n(hw, mid)))
        total += conv(mid, b.out_ch, 1, hw)
        total += bn(b.out_ch)
        if b.residual:
            total += Cost(ops=Counter(AddV2=_n(hw, b.out_ch)))
    return total


def ir_feature_levels(spec) -> dict[int, int]:
    """Level -> index of the backbone block feeding it (only blocks up to the deepest used)."""
    cfg = spec.backbone_config()
    blist = cfg.blocks()
    deepest = 1 + sum(b.stride == 2 for b in blist)
    return blocks.feature_blocks(blist, range(spec.min_level, min(spec.max_level, deepest) + 1))


# ---------------------------------------------------------------- feature network nodes

def node_cost(g: nx.DiGraph, n: str) -> Cost:
    """Cost of producing IR node ``n`` from its (already computed) inputs."""
    d = g.nodes[n]
    op = d["op"]
    if op in ("input", "output"):
        return Cost()
    if op == "resample":
        return _resample_cost(g, n, d)
    if op == "fuse":
        return _fuse_cost(g, n, d)
    raise ir.GraphError(f"IR node {n!r}: no cost rule for op {op!r}")


def _resample_cost(g, n, d) -> Cost:
    (src,) = ir.ordered_inputs(g, n)
    cin, cout = g.nodes[src]["channels"], d["channels"]
    in_hw, out_hw = d["in_size"], d["size"]
    c = Cost()
    down = in_hw[0] > out_hw[0] and in_hw[1] > out_hw[1]
    conv_hw = out_hw if (down and d["conv_after"]) else in_hw
    if d["conv"]:
        c += conv(cin, cout, 1, conv_hw, bias=True)
        if d["bn"]:
            c += bn(cout)
    if down:
        kh = (in_hw[0] - 1) // out_hw[0] + 2
        kw = (in_hw[1] - 1) // out_hw[1] + 2
        ch = cin if (d["conv_after"] and d["conv"]) else cout
        c += Cost(ops=Counter(MaxPool=kh * kw * _n(out_hw, ch)))
    return c


def _fuse_cost(g, n, d) -> Cost:
    k = len(ir.ordered_inputs(g, n))
    ch, hw = d["channels"], d["size"]
    elems = _n(hw, ch)
    method = fusion.get(d["weight_method"])
    w = method.weight_size(ch)
    c = Cost(k * w, k * w, method.ops(k, w, elems))
    c += act(d["act"], elems)
    if d["separable"]:
        c += separable(ch, ch, 3, hw, bias=not d["conv_bn_act"])
    else:
        c += conv(ch, ch, 3, hw, bias=not d["conv_bn_act"])
    c += bn(ch)
    return c


# ---------------------------------------------------------------- heads

def head_cost(spec, outputs: int) -> Cost:
    """One head (class: outputs = anchors*classes; box: anchors*4) over every level."""
    ch, h = spec.fpn.channels, spec.head
    sizes = feature_sizes(spec.image_size, spec.min_level, spec.max_level)
    conv_fn = (lambda ci, co, hw: separable(ci, co, 3, hw)) if h.separable else \
        (lambda ci, co, hw: conv(ci, co, 3, hw, bias=True))
    total = Cost()
    for i, lvl in enumerate(spec.levels):
        hw = sizes[lvl]
        for _ in range(h.repeats):
            c = conv_fn(ch, ch, hw)
            total += c if i == 0 else c.shared()   # conv weights are shared across levels

            total += bn(ch)   # but every level has its own BN
            total += act(spec.act, _n(hw, ch))
        c = conv_fn(ch, outputs, hw)
        total += c if i == 0 else c.shared()
    return total


# ---------------------------------------------------------------- the whole model

@dataclass
class ModelCost:
    by_component: dict[str, Cost]
    by_node: dict[str, Cost]
    graph: nx.DiGraph

    @property
    def total(self) -> Cost:
        t = Cost()
        for c in self.by_component.values():
            t += c
        return t


def model_cost(spec, g: nx.DiGraph | None = None) -> ModelCost:
    """Params and FLOPs per component and per feature-network node."""
    g = g if g is not None else build_ir(spec)
    by_node = {n: node_cost(g, n) for n in nx.topological_sort(g)}
    comps = {k: Cost() for k in COMPONENTS}
    comps["backbone"] = backbone_cost(spec)
    for n, c in by_node.items():
        comp = g.nodes[n].get("component")
        if comp in ("resample", "fpn_cells"):
            comps[comp] += c
    comps["class_net"] = head_cost(spec, spec.num_anchors * spec.num_classes)
    comps["box_net"] = head_cost(spec, spec.num_anchors * 4)
    return ModelCost(comps, by_node, g)
