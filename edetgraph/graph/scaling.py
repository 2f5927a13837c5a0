"""Compound scaling (EfficientDet paper, section 4.2, equations 1-3), resolved in specs.

One coefficient phi scales the BiFPN width and depth, the head depth, the input resolution
and the backbone together. A spec gives its base (a topology, a family) and a coefficient,

    scaling: {phi: 2}                       # family: efficientdet (the default) or lite

and :func:`resolve` fills in what the spec leaves out, on load and before validation:

- ``fpn.channels``  = 64 * 1.35^phi, to the nearest multiple of 8;
- ``fpn.repeats``   = 3 + phi (rounded up, as EfficientNet rounds depth);
- ``head.repeats``  = 3 + floor(phi / 3);
- ``image_size``    = 512 + 128 phi (Lite: 320 + 64 phi), a fraction to the nearest step;
- ``backbone``      = the family's backbone for phi (B0 ... B6, B6 again for D7; Lite0 ...
  Lite4); between two integers, a backbone whose width and depth multipliers are
  interpolated between its neighbours'.

Explicit values in the spec override the formula: that is how the official Table 1 departs
from it (widths rounded by hand, D5-D7 stopping in depth, D5 and D7 a step higher in
resolution, D7x on B7), and :func:`departures` lists where. No TensorFlow here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from edetgraph.graph import blocks


@dataclass(frozen=True)
class Family:
    name: str
    backbones: tuple[str, ...]        # by integer phi
    resolution_base: int
    resolution_step: int
    lite: bool = False


FAMILIES = {
    "efficientdet": Family("efficientdet", tuple(f"efficientnet-b{i}" for i in range(7))
                           + ("efficientnet-b6",), 512, 128),
    "lite": Family("lite", tuple(f"efficientnet-lite{i}" for i in range(5)), 320, 64,
                   lite=True),
}
BACKBONE_FOR_PHI = dict(enumerate(FAMILIES["efficientdet"].backbones))
SCALED = ("image_size", "fpn.channels", "fpn.repeats", "head.repeats", "backbone")


@dataclass(frozen=True)
class Scaled:
    phi: float
    fpn_channels: int
    fpn_repeats: int
    head_repeats: int
    image_size: int
    backbone: str


def bifpn_width(phi: float, divisor: int = 8) -> int:
    """W_bifpn = 64 * 1.35^phi, rounded to the nearest multiple of ``divisor``."""
    raw = 64 * 1.35 ** phi
    return int(max(divisor, round(raw / divisor) * divisor))


def bifpn_depth(phi: float) -> int:
    """D_bifpn = 3 + phi (a fraction rounds up, as EfficientNet's depth rounding does)."""
    return 3 + math.ceil(phi - 1e-9)


def head_depth(phi: float) -> int:
    """D_box = D_class = 3 + floor(phi / 3)."""
    return 3 + int(phi // 3)


def resolution(phi: float, family: str = "efficientdet") -> int:
    """R_input = 512 + 128 phi (Lite: 320 + 64 phi); a fractional phi rounds to the nearest
    step (128, Lite 64) above the base."""
    f = FAMILIES[family]
    return f.resolution_base + f.resolution_step * int(math.floor(phi + 0.5))


def backbone(phi: float, family: str = "efficientdet") -> dict:
    """The backbone entry of a spec for ``phi``: the family's named backbone at an integer,
    else width and depth multipliers interpolated between the two around it."""
    f = FAMILIES[family]
    if phi > len(f.backbones) - 1:
        raise ValueError(f"phi {phi:g} is beyond the {family} family (at most "
                         f"{len(f.backbones) - 1})")
    if float(phi).is_integer():
        return {"name": f.backbones[int(phi)]}
    lo, hi = f.backbones[int(phi)], f.backbones[int(phi) + 1]
    t = phi - int(phi)
    (w0, d0, *_), (w1, d1, *_) = blocks.table_entry(lo), blocks.table_entry(hi)
    out = {"name": f"{'efficientnet-lite' if f.lite else 'efficientnet'}-phi{phi:g}",
           "width": round(w0 + t * (w1 - w0), 4), "depth": round(d0 + t * (d1 - d0), 4)}
    if f.lite:       # what the named Lite backbones imply, said explicitly for a custom one
        out.update(se=False, act="relu6", fix_head_stem=True)
    return out


def compound(phi: float, family: str = "efficientdet") -> Scaled:
    """Every scaled dimension for a compound coefficient, by the formulas alone."""
    if phi < 0:
        raise ValueError(f"phi must be >= 0, got {phi}")
    if family not in FAMILIES:
        raise ValueError(f"family {family!r} is not one of {', '.join(FAMILIES)}")
    return Scaled(phi, bifpn_width(phi), bifpn_depth(phi), head_depth(phi),
                  resolution(phi, family), backbone(phi, family)["name"])


def formula_values(phi: float, family: str) -> dict:
    """What the formulas give, keyed by spec path (``fpn.channels`` ...)."""
    s = compound(phi, family)
    return {"image_size": s.image_size, "fpn.channels": s.fpn_channels,
            "fpn.repeats": s.fpn_repeats, "head.repeats": s.head_repeats,
            "backbone": backbone(phi, family)}


def resolve(data: dict) -> dict:
    """Raw spec data with its ``scaling`` block applied: every scaled value the data leaves
    out filled in by the formulas (a copy; data without ``scaling`` comes back as it is).
    Malformed ``scaling`` values are left for the validator to name."""
    block = data.get("scaling")
    if not isinstance(block, dict):
        return data
    phi, family = block.get("phi"), block.get("family", "efficientdet")
    if (not isinstance(phi, (int, float)) or isinstance(phi, bool) or phi < 0
            or family not in FAMILIES):
        return data
    formula = formula_values(float(phi), family)
    out = dict(data)
    for section in ("fpn", "head"):
        out[section] = dict(out.get(section) or {})
    if "image_size" not in out:
        out["image_size"] = formula["image_size"]
    for path in ("fpn.channels", "fpn.repeats", "head.repeats"):
        section, key = path.split(".")
        out[section].setdefault(key, formula[path])
    if "backbone" not in out:
        out["backbone"] = formula["backbone"]
    return out


def relative(data: dict, phi: float, family: str = "efficientdet", multiple: int = 32) -> dict:
    """Raw spec data scaled by ``phi`` from its own values as the phi = 0 member: the same
    formulas, relative to a base that is not D0 (a small model, a custom topology).

    Width x 1.35^phi (to a multiple of 8), cells + ceil(phi), head layers + floor(phi / 3),
    input x (1 + phi/4) (512 -> 640 per step, as the family grows; to a multiple of
    ``multiple``), backbone width and depth multipliers x the family's B0 -> B(phi) ratios.
    """
    f = FAMILIES[family]
    fpn, head = dict(data.get("fpn") or {}), dict(data.get("head") or {})
    size = data["image_size"]
    size = size if isinstance(size, int) else max(size)
    out = {k: v for k, v in data.items() if k != "scaling"}
    out.update(fpn=fpn, head=head)
    fpn["channels"] = max(8, round(fpn.get("channels", 64) * 1.35 ** phi / 8) * 8)
    fpn["repeats"] = fpn.get("repeats", 3) + bifpn_depth(phi) - 3
    head["repeats"] = head.get("repeats", 3) + head_depth(phi) - 3
    step = size * f.resolution_step / f.resolution_base
    out["image_size"] = int(round((size + step * phi) / multiple) * multiple)
    bb = dict(data.get("backbone") or {})
    w0, d0, *_ = blocks.table_entry(f.backbones[0])
    scaled = backbone(phi, family)
    w1, d1 = ((scaled["width"], scaled["depth"]) if "width" in scaled
              else blocks.table_entry(scaled["name"])[:2])
    base_w = bb.get("width") or blocks.table_entry(bb.get("name", f.backbones[0]))[0]
    base_d = bb.get("depth") or blocks.table_entry(bb.get("name", f.backbones[0]))[1]
    bb.update(width=round(base_w * w1 / w0, 4), depth=round(base_d * d1 / d0, 4))
    out["backbone"] = bb
    return out


def resolved(spec) -> dict:
    """The scaled values of a loaded spec, keyed by spec path (``fpn.channels`` ...)."""
    size = spec.image_size
    return {"image_size": size[0] if size[0] == size[1] else list(size),
            "fpn.channels": spec.fpn.channels, "fpn.repeats": spec.fpn.repeats,
            "head.repeats": spec.head.repeats, "backbone": spec.backbone.name}


def departures(spec, phi: float | None = None, family: str | None = None) -> dict[str, tuple]:
    """Where ``spec`` differs from the formulas: spec path -> (spec value, formula value);
    by default for the spec's own ``scaling`` (``{}`` for a spec without one)."""
    if phi is None:
        if spec.scaling is None:
            return {}
        phi, family = spec.scaling.phi, spec.scaling.family
    formula = formula_values(phi, family or "efficientdet")
    formula["backbone"] = formula["backbone"]["name"]
    have = resolved(spec)
    have["image_size"] = max(spec.image_size)
    return {k: (v, formula[k]) for k, v in have.items() if v != formula[k]}


def report(spec) -> dict | None:
    """``inspect``'s view of a spec's scaling: phi, family, the resolved values and each
    departure from the formulas (None for a spec without ``scaling``)."""
    if spec.scaling is None:
        return None
    return {"phi": spec.scaling.phi, "family": spec.scaling.family,
            "resolved": resolved(spec),
            "departures": {k: {"spec": v, "formula": f}
                           for k, (v, f) in departures(spec).items()}}
