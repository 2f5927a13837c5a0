"""Model specs: YAML files loaded once into frozen dataclasses.

A spec is architecture only (training settings live in ``specs/train/``). Loading walks the
YAML against the dataclass fields below, so an unknown key, a wrong type or an impossible
value fails with a :class:`SpecError` that names the file, the key path and the value.
``--set key.path=value`` overrides are applied to the raw mapping *before* validation, so
they get exactly the same checks.

No TensorFlow here (a test enforces it): a spec can be read, checked and costed in a blink.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from edetgraph.graph import blocks, fusion, scaling, schema
from edetgraph.limits import limit, override_hint, short

WEIGHT_METHODS = tuple(fusion.METHODS)       # fastattn, attn, sum, channel_(fast)attn
ACTIVATIONS = ("swish", "relu6", "relu", "silu", "hswish")

SPEC_DIR = Path(__file__).resolve().parents[2] / "specs"


class SpecError(ValueError):
    """A spec that cannot be loaded; the message names file, key path and value."""


def _fail(path: str, msg: str) -> None:
    raise SpecError(f"{path or '<root>'}: {msg}")


@dataclass(frozen=True)
class NodeSpec:
    """One fusion node of an explicit feature-network topology."""
    name: str
    level: int
    inputs: tuple[str, ...]
    weight_method: Optional[str] = None   # None: the fpn's weight_method
    output: bool = False                  # mark as the cell's output for its level


@dataclass(frozen=True)
class BackboneSpec:
    name: str = "efficientnet-b0"
    width: Optional[float] = None         # None: from the named backbone's table
    depth: Optional[float] = None
    blocks: Optional[tuple[str, ...]] = None
    act: Optional[str] = None             # None: the model's act
    se: Optional[bool] = None
    fix_head_stem: Optional[bool] = None
    drop_connect: Optional[float] = None  # rate, training only


@dataclass(frozen=True)
class FPNSpec:
    topology: Optional[str] = "bifpn"     # a registered generator ...
    nodes: Optional[tuple[NodeSpec, ...]] = None  # ... or an explicit node list
    channels: int = 64
    repeats: int = 3
    weight_method: str = "fastattn"
    separable: bool = True
    resample_bn: bool = True              # BN after the 1x1 lateral convs
    conv_after_downsample: bool = False
    conv_bn_act: bool = False             # official order is act -> conv -> bn
    prune: bool = False                   # remove nodes that reach no output (else an error)
    share_resample: bool = False          # share identical conv-free resampling between nodes


@dataclass(frozen=True)
class HeadSpec:
    repeats: int = 3
    separable: bool = True
    drop_connect: Optional[float] = None


@dataclass(frozen=True)
class AnchorSpec:
    min_level: int = 3
    max_level: int = 7
    num_scales: int = 3
    aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5)
    scale: float = 4.0


@dataclass(frozen=True)
class PreprocessSpec:
    mean_rgb: tuple[float, ...] = (123.675, 116.28, 103.53)
    stddev_rgb: tuple[float, ...] = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class BatchNormSpec:
    momentum: float = 0.99
    epsilon: float = 1e-3


@dataclass(frozen=True)
class ScalingSpec:
    """Compound scaling: the values the spec leaves out come from the formulas at ``phi``
    (``edetgraph.graph.scaling``); ``family`` efficientdet (B0-B6 backbones, 512 + 128 phi)
    or lite (Lite0-4, 320 + 64 phi)."""
    phi: float
    family: str = "efficientdet"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    image_size: tuple[int, int]
    num_classes: int = 90
    act: str = "swish"
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    fpn: FPNSpec = field(default_factory=FPNSpec)
    head: HeadSpec = field(default_factory=HeadSpec)
    anchors: AnchorSpec = field(default_factory=AnchorSpec)
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    bn: BatchNormSpec = field(default_factory=BatchNormSpec)
    scaling: Optional[ScalingSpec] = None  # resolved on load; kept to show departures
    source: Optional[str] = None          # file it came from (set by the loader)

    @property
    def min_level(self) -> int:
        return self.anchors.min_level

    @property
    def max_level(self) -> int:
        return self.anchors.max_level

    @property
    def levels(self) -> range:
        return range(self.anchors.min_level, self.anchors.max_level + 1)

    @property
    def num_anchors(self) -> int:
        return self.anchors.num_scales * len(self.anchors.aspect_ratios)

    def backbone_config(self) -> blocks.BackboneConfig:
        """The backbone with table values filled in and every override applied."""
        return blocks.resolve_backbone(self.backbone, default_act=self.act)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


# ---------------------------------------------------------------- semantic checks

def _check(spec: ModelSpec) -> None:
    h, w = spec.image_size
    a, fpn = spec.anchors, spec.fpn
    if h <= 0 or w <= 0:
        _fail("image_size", f"must be positive, got {list(spec.image_size)}")
    if spec.num_classes <= 0:
        _fail("num_classes", f"must be positive, got {spec.num_classes}")
    if not 1 <= a.min_level <= a.max_level:
        _fail("anchors", f"need 1 <= min_level <= max_level, got {a.min_level} > {a.max_level}"
              if a.min_level > a.max_level else f"min_level must be >= 1, got {a.min_level}")
    if a.max_level > 10:
        _fail("anchors.max_level", f"at most 10 supported, got {a.max_level}")
    if a.num_scales <= 0 or not a.aspect_ratios or min(a.aspect_ratios) <= 0 or a.scale <= 0:
        _fail("anchors", "num_scales, aspect_ratios and scale must be positive")
    stride = 2 ** a.max_level
    if h % stride or w % stride:
        # Odd sizes do work (official Lite0 at 320 has a 3x3 P7), but only when the levels
        # still shrink; below one pixel the feature pyramid cannot exist.
        if min(h, w) < stride:
            _fail("image_size", f"{list(spec.image_size)} too small for level {a.max_level}"
                  f" (needs at least {stride} pixels)")
    if fpn.channels <= 0:
        _fail("fpn.channels", f"must be positive, got {fpn.channels}")
    if fpn.repeats <= 0:
        _fail("fpn.repeats", f"must be positive, got {fpn.repeats}")
    if fpn.weight_method not in WEIGHT_METHODS:
        _fail("fpn.weight_method", f"{short(fpn.weight_method)} not one of {', '.join(WEIGHT_METHODS)}")
    if (fpn.topology is None) == (fpn.nodes is None):
        _fail("fpn", "give exactly one of 'topology' (a registered generator) or 'nodes'")
    for i, n in enumerate(fpn.nodes or ()):
        if n.weight_method is not None and n.weight_method not in WEIGHT_METHODS:
            _fail(f"fpn.nodes[{i}].weight_method", f"{short(n.weight_method)} not one of"
                  f" {', '.join(WEIGHT_METHODS)}")
    if spec.head.repeats < 0:
        _fail("head.repeats", f"must be >= 0, got {spec.head.repeats}")
    if spec.head.repeats > limit("graph_nodes"):
        _fail("head.repeats", f"{spec.head.repeats:,} is more than {limit('graph_nodes'):,} "
              f"({override_hint('graph_nodes')})")
    if spec.act not in ACTIVATIONS:
        _fail("act", f"{short(spec.act)} not one of {', '.join(ACTIVATIONS)}")
    if len(spec.preprocess.mean_rgb) != 3 or len(spec.preprocess.stddev_rgb) != 3:
        _fail("preprocess", "mean_rgb and stddev_rgb need 3 values each")
    if min(spec.preprocess.stddev_rgb) <= 0:
        _fail("preprocess.stddev_rgb", "must be positive")
    if not 0.0 < spec.bn.momentum < 1.0 or spec.bn.epsilon <= 0:
        _fail("bn", "momentum must be in (0, 1) and epsilon > 0")
    try:
        spec.backbone_config()
    except ValueError as e:
        _fail("backbone", str(e))


# ---------------------------------------------------------------- overrides and loading

def apply_overrides(data: dict, overrides) -> dict:
    """A copy of raw spec data with ``key.path=value`` overrides applied (parsed as YAML:
    ``fpn.channels=96``, ``image_size=[384,640]``), before validation."""
    return schema.apply_overrides(data, overrides, SpecError)


def _normalise(data: dict) -> dict:
    data = dict(data)
    size = data.get("image_size")
    if isinstance(size, int) and not isinstance(size, bool):
        data["image_size"] = [size, size]
    fpn = data.get("fpn")
    if isinstance(fpn, dict) and "nodes" in fpn and "topology" not in fpn:
        data["fpn"] = dict(fpn, topology=None)
    return data


def _scaled(data: dict) -> dict:
    """``data`` with its ``scaling`` block checked and applied (before the rest is validated:
    the block supplies values the validator requires)."""
    if data.get("scaling") is None:
        return data
    s = schema.build(ScalingSpec, data["scaling"], "scaling", SpecError)
    if s.family not in scaling.FAMILIES:
        _fail("scaling.family", f"{s.family!r} is not one of {', '.join(scaling.FAMILIES)}")
    top = len(scaling.FAMILIES[s.family].backbones) - 1
    if not 0 <= s.phi <= top:
        _fail("scaling.phi", f"must be in [0, {top}] for the {s.family} family, got {s.phi:g}")
    return scaling.resolve(data)


def from_dict(data: Any, source: str | None = None, overrides=()) -> ModelSpec:
    """Validate raw spec data (a mapping as YAML gives it) into a :class:`ModelSpec`."""
    where = source or "<spec>"
    try:
        if not isinstance(data, dict):
            raise SpecError(f"<root>: expected a mapping, got {type(data).__name__}")
        data = _normalise(_scaled(apply_overrides(data, overrides)))
        spec = schema.build(ModelSpec, data, "", SpecError)
        _check(spec)
    except SpecError as e:
        raise SpecError(f"{where}: {e}") from None
    return dataclasses.replace(spec, source=source)


def resolve_spec_path(name_or_path: str | Path) -> Path:
    """A spec file path, or a bare name looked up in ``specs/`` (``d0`` -> ``specs/d0.yaml``)."""
    p = Path(name_or_path)
    if p.exists():
        return p
    for cand in (SPEC_DIR / f"{name_or_path}.yaml", SPEC_DIR / f"{name_or_path}",
                 SPEC_DIR / f"{str(name_or_path).replace('efficientdet-', '')}.yaml"):
        if cand.is_file():
            return cand
    raise SpecError(f"{name_or_path}: no such spec file (built-in specs: {', '.join(list_specs())})")


def load_spec(name_or_path: str | Path, overrides=()) -> ModelSpec:
    """Load and validate a spec file (or a built-in spec by name), overrides applied first."""
    path = resolve_spec_path(name_or_path)
    data = schema.read_yaml(path, SpecError)
    return from_dict(data, source=str(path), overrides=overrides)


def list_specs(directory: Path = SPEC_DIR) -> list[str]:
    """The model registry: names of the spec files under ``specs/`` (topologies included)."""
    out = []
    for p in sorted(directory.rglob("*.yaml")):
        rel = p.relative_to(directory)
        if rel.parts[0] == "train":
            continue
        out.append(str(rel.with_suffix("")))
    return out
