"""The designed set a latency model is fitted on: small graphs made of the network's own
parts, each built twice from one description, as TensorFlow (the lowering's modules, in a
runtime's op forms, converted by the exporters' converters) and as the op list
``edetgraph.graph.latency`` predicts from, so what is timed and what is fitted are the same
ops.

Motifs, sampled (seeded) over the shapes EfficientDet-family networks have, from the
large-map narrow early backbone to the small-map wide late one, at image sizes 128-896:

- ``mbconv``: one EfficientNet block (a stage of the B/Lite table at a width of 0.5-1.6;
  swish with squeeze-excite, or relu6 without), first of its stage or a repeat;
- ``fpn``: one feature-network fusion node (2-3 inputs, fastattn / sum / channel_fastattn,
  then act and the separable conv);
- ``resample``: max-pool down or nearest up by 2, 4 or 8, with or without the 1x1 conv;
- ``head``: a class or box head on one level or on five;
- ``stem``; chains of 1-3 ``pw`` (1x1) convs, ``dw`` convs, activations, residual ``add``s,
  which pin down one op kind at a time and, at two lengths, separate an op's time from a
  call's fixed cost.

``TINY_SPECS`` are the small whole networks that fit the graph-level terms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx
import numpy as np
import tensorflow as tf

from edetgraph.graph import blocks, latency
from edetgraph.graph.sizes import feature_sizes
from edetgraph.graph.spec import load_spec
from edetgraph.nn import targets
from edetgraph.nn.backbone import MBConv
from edetgraph.nn.heads import Head
from edetgraph.nn.layers import BatchNorm, Conv, DepthwiseConv, activation, conv_bn
from edetgraph.nn.lowering import Fuse, Resample

VERSION = 1
IMAGE_SIZES = (128, 192, 256, 320, 384, 448, 512, 640, 768, 896)
MAX_ELEMENTS = 32 * 2 ** 20     # the largest map a design makes (D3's first blocks: 29M)
BN = {"momentum": 0.99, "epsilon": 1e-3}
COUNTS = {"mbconv": 64, "fpn": 32, "resample": 24, "head": 20, "pw": 32, "dw": 32,
          "act": 12, "add": 8, "stem": 8}

# Small whole networks (resolved from a built-in file plus overrides): the graph-level fit.
TINY_SPECS = (
    ("tiny-demo", "demo", ()),
    ("tiny-b0-bifpn", "topologies/bifpn", ("image_size=256", "backbone.name=efficientnet-b0",
                                           "fpn.channels=40", "fpn.repeats=2",
                                           "head.repeats=2")),
    ("tiny-lite0-bifpn", "topologies/bifpn_unweighted", (
        "image_size=256", "backbone.name=efficientnet-lite0", "act=relu6", "fpn.channels=48",
        "fpn.repeats=2", "head.repeats=2")),
    ("tiny-b1-panet", "topologies/panet", ("image_size=192", "backbone.name=efficientnet-b1",
                                           "fpn.channels=32", "fpn.repeats=1",
                                           "head.repeats=2")),
    ("tiny-b0-fpn", "topologies/fpn", ("image_size=256", "backbone.name=efficientnet-b0",
                                       "fpn.channels=24", "fpn.repeats=3", "head.repeats=1")),
    ("tiny-b0-nasfpn", "topologies/nasfpn", ("image_size=192", "backbone.name=efficientnet-b0",
                                             "fpn.channels=32", "fpn.repeats=1",
                                             "head.repeats=2")),
    ("tiny-b0-fcfpn", "topologies/fc_fpn", ("image_size=128", "backbone.name=efficientnet-b0",
                                            "fpn.channels=24", "fpn.repeats=1",
                                            "head.repeats=1")),
    ("tiny-custom", "topologies/example_custom", ("image_size=320", "fpn.channels=48",
                                                  "fpn.repeats=2", "head.repeats=2")),
)


# The tests' fit: one network small enough to export in seconds.
QUICK_SPECS = (("quick-demo", "demo", ("image_size=128", "fpn.channels=16", "fpn.repeats=1",
                                       "head.repeats=1")),)


@dataclass(frozen=True)
class Design:
    """One designed graph: a motif and its parameters (sorted pairs, hashable)."""
    name: str
    motif: str
    params: tuple

    @property
    def p(self) -> dict:
        return dict(self.params)

    def as_dict(self) -> dict:
        return {"name": self.name, "motif": self.motif, **self.p}


def tiny_specs(table=TINY_SPECS) -> list:
    """``[(name, ModelSpec)]`` of the small whole networks."""
    return [(name, load_spec(base, list(sets))) for name, base, sets in table]


def quick_specs() -> list:
    return tiny_specs(QUICK_SPECS)


# ---------------------------------------------------------------- sampling the set

def _ch(rng, lo, hi) -> int:
    """A channel count, log-uniform in [lo, hi], a multiple of 8."""
    return max(8, int(round(math.exp(rng.uniform(math.log(lo), math.log(hi))) / 8)) * 8)


def _hw(size, level) -> tuple:
    return feature_sizes(size, 0, level)[level]


def _fits(hw, ch) -> bool:
    return hw[0] * hw[1] * ch <= MAX_ELEMENTS


def _sample(motif: str, rng) -> dict | None:
    """Parameters of one design of ``motif`` (None: out of range, draw again)."""
    size = int(rng.choice(IMAGE_SIZES))
    act = str(rng.choice(["swish", "relu6"]))
    if motif == "mbconv":
        stage = int(rng.integers(0, 7))
        st = blocks.decode_block(blocks.BASE_BLOCKS[stage])
        width = float(rng.uniform(0.5, 1.6))
        first = bool(rng.integers(0, 2))
        cout = blocks.round_filters(st.out_ch, width)
        cin = blocks.round_filters(st.in_ch, width) if first else cout
        level = 1 + sum(blocks.decode_block(b).stride == 2 for b in blocks.BASE_BLOCKS[:stage])
        se = act == "swish"
        p = dict(size=size, level=level, cin=cin, cout=cout, k=st.kernel,
                 stride=st.stride if first else 1, expand=st.expand, se=se, act=act)
        return p if _fits(_hw(size, level), int(cin * st.expand)) else None
    if motif == "fpn":
        return dict(size=size, level=int(rng.integers(3, 8)), ch=_ch(rng, 24, 288),
                    inputs=int(rng.choice([2, 2, 3])), act=act,
                    method=str(rng.choice(["fastattn", "sum", "channel_fastattn"])),
                    separable=bool(rng.random() < 0.85))
    if motif == "resample":
        factor = int(rng.choice([2, 2, 2, 4, 8]))
        up = bool(rng.integers(0, 2))
        conv = bool(rng.random() < 0.5)
        level = int(rng.integers(3, 8 - int(math.log2(factor))))
        ch = _ch(rng, 24, 288)
        cin = _ch(rng, 24, 400) if conv else ch
        lo, hi = (level + int(math.log2(factor)), level) if up else \
            (level, level + int(math.log2(factor)))
        return dict(size=size, level_in=lo, level_out=hi, cin=cin, ch=ch, conv=conv)
    if motif == "head":
        levels = [int(rng.integers(3, 8))] if rng.random() < 0.6 else [3, 4, 5, 6, 7]
        return dict(size=size, levels=tuple(levels), ch=_ch(rng, 24, 288),
                    repeats=int(rng.integers(1, 5)), outputs=int(rng.choice([36, 810])),
                    act=act)
    if motif == "stem":
        return dict(size=size, ch=_ch(rng, 16, 64), act=act)
    level = int(rng.integers(1, 8))
    hw = _hw(size, level)
    reps = int(rng.choice([1, 3]))
    if motif == "pw":
        cin, cout = _ch(rng, 8, 1536), _ch(rng, 8, 1536)
        act = str(rng.choice(["none", "swish", "relu6"]))
        ok = _fits(hw, max(cin, cout)) and hw[0] * hw[1] * max(cin, cout) >= 2048
        return dict(size=size, level=level, cin=cin, cout=cout, act=act, reps=reps) if ok \
            else None
    if motif == "dw":
        stride = int(rng.choice([1, 2]))
        ch = _ch(rng, 8, 1536)
        ok = _fits(hw, ch) and hw[0] >= 4 * stride
        return dict(size=size, level=level, ch=ch, k=int(rng.choice([3, 5])), stride=stride,
                    act=act, reps=reps if stride == 1 else 1) if ok else None
    ch = _ch(rng, 8, 1536)
    if not _fits(hw, ch):
        return None
    if motif == "act":
        return dict(size=size, level=level, ch=ch, act=act, reps=reps)
    # residual adds join the narrow block outputs: at most 4M elements (D3's are 1.6M)
    return dict(size=size, level=level, ch=ch, reps=reps) if _fits(hw, 8 * ch) else None


def designed_set(seed: int = 0, counts: dict | None = None) -> list[Design]:
    """The designed graphs (``counts`` per motif, default ``COUNTS``), reproducible by seed."""
    rng = np.random.default_rng(seed)
    out = []
    for motif, n in (counts or COUNTS).items():
        made = 0
        while made < n:
            p = _sample(motif, rng)
            if p is not None:
                out.append(Design(f"{motif}-{made:03d}", motif, tuple(sorted(p.items()))))
                made += 1
    return out


def quick_set() -> list[Design]:
    """A handful of tiny designs (the tests' fit)."""
    def d(name, motif, **p):
        return Design(name, motif, tuple(sorted(p.items())))
    return [d("pw-a", "pw", size=128, level=3, cin=16, cout=32, act="relu6", reps=1),
            d("pw-b", "pw", size=128, level=3, cin=16, cout=32, act="relu6", reps=3),
            d("dw-a", "dw", size=128, level=3, ch=32, k=3, stride=1, act="relu6", reps=1),
            d("act-a", "act", size=128, level=3, ch=32, act="swish", reps=3),
            d("add-a", "add", size=128, level=3, ch=32, reps=1),
            d("mb-a", "mbconv", size=128, level=2, cin=16, cout=16, k=3, stride=1, expand=6,
              se=True, act="swish"),
            d("mb-b", "mbconv", size=128, level=1, cin=16, cout=24, k=3, stride=2, expand=6,
              se=False, act="relu6"),
            d("stem-a", "stem", size=128, ch=16, act="relu6"),
            d("fpn-a", "fpn", size=128, level=3, ch=16, inputs=2, act="relu6",
              method="fastattn", separable=True),
            d("rs-a", "resample", size=128, level_in=4, level_out=3, cin=16, ch=16, conv=False),
            d("rs-b", "resample", size=128, level_in=3, level_out=4, cin=24, ch=16, conv=True),
            d("head-a", "head", size=128, levels=(3, 4), ch=16, repeats=1, outputs=36,
              act="relu6")]


# ---------------------------------------------------------------- building a design

@dataclass
class Built:
    """A design as TF (``serve`` and the module holding its weights) and as ops."""
    serve: object
    module: tf.Module
    ops: list
    inputs: list            # (h, w, c) of each input


def _chain(module, ops, p, hw, step):
    """``reps`` times ``step(i, x) -> x``; the list of layers lives on ``module``."""
    def call(xs):
        x = xs[0]
        for i in range(p["reps"]):
            x = step(i, x)
        return [x]
    return call


def _pw(p, target, ops, m):
    hw = _hw(p["size"], p["level"])
    act = None if p["act"] == "none" else p["act"]
    chans = [p["cin"] if i % 2 == 0 else p["cout"] for i in range(p["reps"] + 1)]
    m.layers = [(Conv(f"pw{i}", chans[i], chans[i + 1], 1), BatchNorm(f"bn{i}", chans[i + 1], **BN))
                for i in range(p["reps"])]
    for i in range(p["reps"]):
        x = ops.conv(f"pw{i}", chans[i], chans[i + 1], 1, 1, hw, hw)
        ops.act(f"act{i}", act, hw, chans[i + 1], x)

    def step(i, x):
        y = conv_bn(*m.layers[i], x, False)
        return activation(y, act) if act else y
    return [(*hw, p["cin"])], _chain(m, ops, p, hw, step)


def _dw(p, target, ops, m):
    hw = _hw(p["size"], p["level"])
    k, s, ch = p["k"], p["stride"], p["ch"]
    m.layers = [(DepthwiseConv(f"dw{i}", ch, k, s), BatchNorm(f"bn{i}", ch, **BN))
                for i in range(p["reps"])]
    size = hw
    for i in range(p["reps"]):
        out = ((size[0] - 1) // s + 1, (size[1] - 1) // s + 1)
        x = ops.dw(f"dw{i}", ch, k, s, size, out)
        ops.act(f"act{i}", p["act"], out, ch, x)
        size = out
    return [(*hw, ch)], _chain(m, ops, p, hw,
                               lambda i, x: activation(conv_bn(*m.layers[i], x, False), p["act"]))


def _act(p, target, ops, m):
    hw = _hw(p["size"], p["level"])
    for i in range(p["reps"]):
        ops.act(f"act{i}", p["act"], hw, p["ch"], None)
    return [(*hw, p["ch"])], _chain(m, ops, p, hw, lambda i, x: activation(x, p["act"]))


def _add(p, target, ops, m):
    hw = _hw(p["size"], p["level"])
    for i in range(p["reps"]):
        ops.eltwise("add", f"add{i}", hw, p["ch"])

    def call(xs):
        x = xs[0]
        for i in range(p["reps"]):
            x = x + xs[1 + i % 2]
        return [x]
    return [(*hw, p["ch"])] * 3, call


def _stem(p, target, ops, m):
    hw_in, hw = _hw(p["size"], 0), _hw(p["size"], 1)
    m.layers = [(Conv("stem", 3, p["ch"], 3, stride=2), BatchNorm("bn", p["ch"], **BN))]
    x = ops.conv("stem", 3, p["ch"], 3, 2, hw_in, hw)
    ops.act("act", p["act"], hw, p["ch"], x)
    return [(*hw_in, 3)], lambda xs: [activation(conv_bn(*m.layers[0], xs[0], False), p["act"])]


def _mbconv(p, target, ops, m):
    hw_in = _hw(p["size"], p["level"])
    hw = _hw(p["size"], p["level"] + (p["stride"] == 2))
    se = max(1, int(p["cin"] * 0.25)) if p["se"] else None
    b = blocks.Block(1, p["k"], p["stride"], p["expand"], p["cin"], p["cout"], se, True)
    m.block = MBConv("block", b, p["act"], BN, 1.0)
    latency.mbconv(ops, "block", b, p["act"], hw_in, hw)
    return [(*hw_in, p["cin"])], lambda xs: [m.block(xs[0], False, target)]


def _fpn(p, target, ops, m):
    hw = _hw(p["size"], p["level"])
    d = dict(op="fuse", level=p["level"], channels=p["ch"], size=hw, weight_method=p["method"],
             separable=p["separable"], conv_bn_act=False, act=p["act"], scope="fnode",
             combine_scope="op_after_combine")
    g = nx.DiGraph()
    g.add_node("node", **d)
    for i in range(p["inputs"]):
        g.add_edge(f"in{i}", "node", port=i)
    latency.fuse_ops(g, "node", ops)
    m.node = Fuse(d, p["inputs"], BN, 0)
    return [(*hw, p["ch"])] * p["inputs"], lambda xs: [m.node(xs, False, target)]


def _resample(p, target, ops, m):
    hw_in, hw = _hw(p["size"], p["level_in"]), _hw(p["size"], p["level_out"])
    d = dict(op="resample", level=p["level_out"], in_level=p["level_in"], channels=p["ch"],
             conv=p["conv"], bn=True, conv_after=False, scope="resample", in_size=hw_in,
             size=hw)
    g = nx.DiGraph()
    g.add_node("src", channels=p["cin"])
    g.add_node("node", **d)
    g.add_edge("src", "node", port=0)
    latency.resample_ops(g, "node", ops)
    m.node = Resample(d, p["cin"], BN, 0)
    return [(*hw_in, p["cin"])], lambda xs: [m.node(xs, False, target)]


def _head(p, target, ops, m):
    sizes = {lvl: _hw(p["size"], lvl) for lvl in p["levels"]}
    latency.head_ops(ops, "head", p["ch"], p["outputs"], p["repeats"], True, p["act"], sizes)
    m.head = Head("head", "class", p["ch"], p["outputs"], p["repeats"], list(sizes), p["act"],
                  True, BN)
    return ([(*hw, p["ch"]) for hw in sizes.values()],
            lambda xs: m.head(dict(zip(sizes, xs)), False))


MOTIFS = {"pw": _pw, "dw": _dw, "act": _act, "add": _add, "stem": _stem, "mbconv": _mbconv,
          "fpn": _fpn, "resample": _resample, "head": _head}


def build(design: Design, target: str, fuses: dict) -> Built:
    """``design`` in ``target``'s op forms (``edetgraph.nn.targets``), with its op list
    (activations fused as ``fuses`` says)."""
    ops = latency.OpList(fuses)
    ops.component = "design"
    module = tf.Module()
    inputs, call = MOTIFS[design.motif](design.p, targets.get(target), ops, module)
    sig = [tf.TensorSpec([1, *shape], tf.float32, name=f"x{i}") for i, shape in enumerate(inputs)]

    @tf.function(input_signature=sig, autograph=False)
    def serve(*xs):
        return {f"y{i}": y for i, y in enumerate(call(list(xs)))}

    return Built(serve, module, ops.ops, inputs)


def design_io(built: Built) -> tuple:
    """Bytes in and out of one call of a built design."""
    cf = built.serve.get_concrete_function()
    out = sum(int(np.prod(t.shape)) for t in tf.nest.flatten(cf.structured_outputs))
    return latency.BYTES * sum(int(np.prod(s)) for s in built.inputs), latency.BYTES * out
