"""Compound scaling (EfficientDet paper, section 4.2, equations 1-3).

One coefficient phi scales the BiFPN width and depth, the head depth, the input resolution
and the backbone together. The official Table 1 (and so the official configs and our spec
files) departs from these formulas in places: widths are rounded by hand, D5-D7 stop growing
in depth, D5 and D7 keep the previous resolution. The spec files pin the table values; this
module is the formula, and :func:`departures` lists where a spec differs from it.
"""
from __future__ import annotations

from dataclasses import dataclass

BACKBONE_FOR_PHI = {0: "efficientnet-b0", 1: "efficientnet-b1", 2: "efficientnet-b2",
                    3: "efficientnet-b3", 4: "efficientnet-b4", 5: "efficientnet-b5",
                    6: "efficientnet-b6", 7: "efficientnet-b6"}


@dataclass(frozen=True)
class Scaled:
    phi: int
    fpn_channels: int
    fpn_repeats: int
    head_repeats: int
    image_size: int
    backbone: str


def bifpn_width(phi: float, divisor: int = 8) -> int:
    """W_bifpn = 64 * 1.35^phi, rounded to the nearest multiple of ``divisor``."""
    raw = 64 * 1.35 ** phi
    return int(max(divisor, round(raw / divisor) * divisor))


def bifpn_depth(phi: int) -> int:
    """D_bifpn = 3 + phi."""
    return 3 + phi


def head_depth(phi: int) -> int:
    """D_box = D_class = 3 + floor(phi / 3)."""
    return 3 + phi // 3


def resolution(phi: int) -> int:
    """R_input = 512 + 128 * phi."""
    return 512 + 128 * phi


def compound(phi: int) -> Scaled:
    """Every scaled dimension for a compound coefficient, by the formulas alone."""
    if phi < 0:
        raise ValueError(f"phi must be >= 0, got {phi}")
    return Scaled(phi, bifpn_width(phi), bifpn_depth(phi), head_depth(phi), resolution(phi),
                  BACKBONE_FOR_PHI.get(phi, f"efficientnet-b{phi}"))


def departures(spec, phi: int) -> dict[str, tuple]:
    """Fields where ``spec`` differs from :func:`compound` (field -> (spec value, formula))."""
    f = compound(phi)
    have = {
        "fpn_channels": spec.fpn.channels,
        "fpn_repeats": spec.fpn.repeats,
        "head_repeats": spec.head.repeats,
        "image_size": max(spec.image_size),
        "backbone": spec.backbone.name,
    }
    return {k: (v, getattr(f, k)) for k, v in have.items() if v != getattr(f, k)}
