"""The raw outputs of a detector and their names: the one place that names them.

The network returns one class map and one box map per pyramid level; everywhere they travel
as a dict (exported signatures, parity reports, ``infer --dump-raw``) they are called
``cls_l{L}`` (``[B, H, W, anchors * classes]`` logits) and ``box_l{L}`` (``[B, H, W,
anchors * 4]``, ty tx th tw), L from min_level to max_level. The training targets the
labeler makes are ``cls_targets_l{L}`` and ``box_targets_l{L}``. No TensorFlow.
"""
from __future__ import annotations

from typing import Mapping

from edetgraph.graph.sizes import feature_sizes

HEADS = ("cls", "box")


def cls_name(level: int) -> str:
    return f"cls_l{level}"


def box_name(level: int) -> str:
    return f"box_l{level}"


def names(levels) -> list[str]:
    """Every output name, level by level: ``cls_l3, box_l3, cls_l4, ...``."""
    return [n for lvl in levels for n in (cls_name(lvl), box_name(lvl))]


def as_dict(levels, cls_maps, box_maps) -> dict:
    """Per-level lists of class and box maps -> ``{cls_l3: ..., box_l3: ..., ...}``."""
    out = {}
    for lvl, c, b in zip(levels, cls_maps, box_maps):
        out[cls_name(lvl)] = c
        out[box_name(lvl)] = b
    return out


def split(raw: Mapping, levels) -> tuple[list, list]:
    """``{cls_l3: ..., box_l3: ...}`` -> (class maps, box maps), lists over ``levels``."""
    return [raw[cls_name(lvl)] for lvl in levels], [raw[box_name(lvl)] for lvl in levels]


def head_of(name: str) -> str:
    """The head an output belongs to (``cls_l3`` -> ``cls``); other names are their own."""
    head, sep, level = name.partition("_l")
    return head if head in HEADS and sep and level.isdigit() else name


def shapes(spec, batch: int = 1) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of every raw output of ``spec``'s network for a batch."""
    a, c = spec.num_anchors, spec.num_classes
    out = {}
    for lvl, (h, w) in feature_sizes(spec.image_size, spec.min_level, spec.max_level).items():
        out[cls_name(lvl)] = (batch, h, w, a * c)
        out[box_name(lvl)] = (batch, h, w, a * 4)
    return out


def cls_target_name(level: int) -> str:
    return f"cls_targets_l{level}"


def box_target_name(level: int) -> str:
    return f"box_targets_l{level}"


def target_names(levels) -> list[str]:
    """The labeler's per-level training targets: ``cls_targets_l{L}``, ``box_targets_l{L}``."""
    return [n for lvl in levels for n in (cls_target_name(lvl), box_target_name(lvl))]
