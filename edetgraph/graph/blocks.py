"""EfficientNet backbones as data: block strings, the named B0-B7 / Lite0-4 table, and the
width/depth rounding that compound scaling applies to them. Pure Python (no TensorFlow).

A block string such as ``r2_k3_s22_e6_i16_o24_se0.25`` is one stage: 2 repeats of an MBConv
with a 3x3 depthwise kernel, stride 2, expansion 6, 16 -> 24 channels, squeeze-excite 0.25.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

from edetgraph.limits import limit, override_hint, short

# The seven stages every EfficientNet (and EfficientNet-Lite) shares before scaling.
BASE_BLOCKS = (
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
)

# name: (width, depth, drop_connect rate, lite). Lite models drop squeeze-excite, use relu6
# and keep the stem and the first/last stage unscaled (quantisation friendliness).
_TABLE = {
    "efficientnet-b0": (1.0, 1.0, 0.2, False),
    "efficientnet-b1": (1.0, 1.1, 0.2, False),
    "efficientnet-b2": (1.1, 1.2, 0.2, False),
    "efficientnet-b3": (1.2, 1.4, 0.2, False),
    "efficientnet-b4": (1.4, 1.8, 0.2, False),
    "efficientnet-b5": (1.6, 2.2, 0.2, False),
    "efficientnet-b6": (1.8, 2.6, 0.2, False),
    "efficientnet-b7": (2.0, 3.1, 0.2, False),
    "efficientnet-lite0": (1.0, 1.0, 0.2, True),
    "efficientnet-lite1": (1.0, 1.1, 0.2, True),
    "efficientnet-lite2": (1.1, 1.2, 0.2, True),
    "efficientnet-lite3": (1.2, 1.4, 0.2, True),
    "efficientnet-lite4": (1.4, 1.8, 0.2, True),
}
# The official EfficientDet turns drop-connect off for B0 only.
_NO_DROP_CONNECT = {"efficientnet-b0"}

DEPTH_DIVISOR = 8
_BLOCK_RE = re.compile(r"^r(\d+)_k(\d+)_s(\d)(\d)_e(\d+(?:\.\d+)?)_i(\d+)_o(\d+)(?:_se(0?\.\d+|1(?:\.0)?))?(_noskip)?$")


@dataclass(frozen=True)
class Stage:
    repeats: int
    kernel: int
    stride: int
    expand: float
    in_ch: int
    out_ch: int
    se_ratio: Optional[float]
    id_skip: bool = True


@dataclass(frozen=True)
class Block:
    """One MBConv block after scaling; ``index`` is its checkpoint number (``blocks_{index}``)."""
    index: int
    kernel: int
    stride: int
    expand: float
    in_ch: int
    out_ch: int
    se_ch: Optional[int]        # squeeze channels, None without squeeze-excite
    id_skip: bool

    @property
    def mid_ch(self) -> int:
        return int(self.in_ch * self.expand)

    @property
    def residual(self) -> bool:
        return self.id_skip and self.stride == 1 and self.in_ch == self.out_ch


@dataclass(frozen=True)
class BackboneConfig:
    name: str
    width: float
    depth: float
    stages: tuple[Stage, ...]
    act: str
    se: bool
    fix_head_stem: bool
    drop_connect: float

    @property
    def stem_ch(self) -> int:
        return round_filters(self.stages[0].in_ch, self.width, skip=self.fix_head_stem)

    def blocks(self) -> list[Block]:
        return expand_blocks(self)


def table_entry(name: str) -> tuple:
    """``(width, depth, drop_connect, lite)`` of a named backbone of the B0-B7 / Lite0-4
    table; ValueError for another name."""
    if name not in _TABLE:
        raise ValueError(f"{name!r} is not a named backbone ({', '.join(_TABLE)})")
    return _TABLE[name]


def decode_block(s: str) -> Stage:
    """Parse one block string; raises ValueError naming it when malformed."""
    m = _BLOCK_RE.match(s)
    if not m:
        raise ValueError(f"block string {short(s)} is not of the form r1_k3_s11_e1_i32_o16_se0.25")
    r, k, s1, s2, e, i, o, se, noskip = m.groups()
    if s1 != s2:
        raise ValueError(f"block string {short(s)}: only square strides are supported")
    if int(r) < 1 or int(k) % 2 == 0 or int(s1) not in (1, 2):
        raise ValueError(f"block string {short(s)}: need repeats >= 1, an odd kernel and stride 1 or 2")
    return Stage(int(r), int(k), int(s1), float(e), int(i), int(o),
                 float(se) if se else None, id_skip=not noskip)


def round_filters(filters: int, width: float, divisor: int = DEPTH_DIVISOR, skip=False) -> int:
    """EfficientNet channel rounding: scale, round to the divisor, never drop more than 10%."""
    if skip or not width:
        return filters
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float, skip=False) -> int:
    return repeats if skip or not depth else int(math.ceil(depth * repeats))


def resolve_backbone(spec, default_act: str) -> BackboneConfig:
    """Fill a BackboneSpec from the named table; explicit spec fields win."""
    if spec.name in _TABLE:
        width, depth, rate, lite = _TABLE[spec.name]
    elif spec.width is not None and spec.depth is not None:
        width, depth, rate, lite = spec.width, spec.depth, 0.2, False
    else:
        known = ", ".join(_TABLE)
        raise ValueError(f"name {short(spec.name)} is not a known backbone ({known});"
                         " a custom one needs width, depth (and blocks)")
    if spec.name in _NO_DROP_CONNECT:
        rate = 0.0
    stages = tuple(decode_block(b) for b in (spec.blocks or BASE_BLOCKS))
    width = spec.width if spec.width is not None else width
    depth = spec.depth if spec.depth is not None else depth
    if width <= 0 or depth <= 0:
        raise ValueError(f"width and depth must be positive, got {width}, {depth}")
    rate = spec.drop_connect if spec.drop_connect is not None else rate
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_connect must be in [0, 1), got {rate}")
    fix = spec.fix_head_stem if spec.fix_head_stem is not None else lite
    # Counted before any block exists: depth 1e9 would otherwise list a billion blocks.
    count = sum(round_repeats(st.repeats, depth, skip=fix and i in (0, len(stages) - 1))
                for i, st in enumerate(stages))
    if count > limit("graph_nodes"):
        raise ValueError(f"{count:,} blocks (depth {depth:g}), more than {limit('graph_nodes'):,}"
                         f" ({override_hint('graph_nodes')})")
    return BackboneConfig(
        name=spec.name, width=width, depth=depth, stages=stages,
        act=spec.act or ("relu6" if lite else default_act),
        se=spec.se if spec.se is not None else not lite,
        fix_head_stem=fix,
        drop_connect=rate)


def expand_blocks(cfg: BackboneConfig) -> list[Block]:
    """Every MBConv block of the scaled backbone, in order, with its actual channel counts."""
    out: list[Block] = []
    prev_out = cfg.stem_ch
    last = len(cfg.stages) - 1
    for i, st in enumerate(cfg.stages):
        in_ch = round_filters(st.in_ch, cfg.width)
        out_ch = round_filters(st.out_ch, cfg.width)
        reps = round_repeats(st.repeats, cfg.depth, skip=cfg.fix_head_stem and i in (0, last))
        for r in range(reps):
            # The first block of a stage takes the stride and the channel change; the rest
            # repeat it at stride 1. Expansion and SE size follow the *declared* input
            # channels (what the official builder uses), the convs the actual tensor.
            declared_in = in_ch if r == 0 else out_ch
            actual_in = prev_out
            se_ch = None
            if cfg.se and st.se_ratio and 0 < st.se_ratio <= 1:
                se_ch = max(1, int(declared_in * st.se_ratio))
            out.append(Block(len(out), st.kernel, st.stride if r == 0 else 1, st.expand,
                             actual_in, out_ch, se_ch, st.id_skip))
            prev_out = out_ch
    return out


def feature_blocks(blocks: list[Block], levels: range) -> dict[int, int]:
    """Index of the block whose output is the backbone feature at each level (stride 2^L).

    Level L is the output of the last block before the reduction to stride 2^(L+1) (or of the
    last block): the official ``reduction_L`` endpoints. The stem is stride 2.
    """
    found: dict[int, int] = {}
    stride_level = 1
    for b in blocks:
        if b.stride == 2:
            stride_level += 1
        found[stride_level] = b.index
    missing = [lvl for lvl in levels if lvl not in found]
    if missing:
        raise ValueError(f"backbone has no feature at level(s) {missing}"
                         f" (deepest is level {max(found)})")
    return {lvl: found[lvl] for lvl in levels}
