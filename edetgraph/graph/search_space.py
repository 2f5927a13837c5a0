"""The feature-network search space: what ``edetgraph.search`` may change, as typed data, and
the candidates it draws from it. No TensorFlow here.

A candidate keeps the BiFPN's skeleton of fusion nodes (a top-down node per level, then a
bottom-up one, the last at each level its output) and changes:

- which inputs each node takes beyond the path that makes it a pyramid (the top-down chain
  ``td_pL <- td_p(L+1)`` and the bottom-up chain ``out_pL <- out_p(L-1)`` always stay):
  any cell input or earlier node at most ``max_level_gap`` levels away, resampled to the
  node's level as the IR does for any edge;
- the fusion method of each node;
- cell repeats, BiFPN width, input resolution and head depth, each from a list.

A space file (YAML, every key optional but ``base``)::

    base: demo                 # the spec everything not searched comes from
    set: [num_classes=6]       # overrides of the base, as --set takes them
    max_level_gap: 1           # how far across levels an optional edge may reach
    edge_probability: 0.5      # chance of each optional edge when sampling
    fusion: [fastattn, sum, channel_fastattn]
    repeats: [1, 2, 3]
    channels: [24, 32, 40, 48, 64]
    image_size: [192, 224, 256, 288, 320]
    head_repeats: [1, 2, 3]
    family_phi: [0, 0.5, 1, 1.5, 2]   # the base's compound-scaled BiFPN family, for comparison

``edetgraph/resources/search/bifpn_space.yaml`` is the default (documented in docs/search.md).
"""
from __future__ import annotations

import copy
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from edetgraph.graph import fusion, scaling, schema
from edetgraph.graph.spec import SpecError, apply_overrides, load_spec
from edetgraph.graph.topology import bifpn, input_name


class SpaceError(ValueError):
    """A search-space file that cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class SearchSpace:
    base: str
    set: tuple[str, ...] = ()
    max_level_gap: int = 1
    edge_probability: float = 0.5
    fusion: tuple[str, ...] = ("fastattn", "sum", "channel_fastattn")
    repeats: tuple[int, ...] = (1, 2, 3)
    channels: tuple[int, ...] = (24, 32, 40, 48, 64)
    image_size: tuple[int, ...] = (192, 224, 256, 288, 320)
    head_repeats: tuple[int, ...] = (1, 2, 3)
    family_phi: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)
    source: str | None = None
    _base_data: dict = field(default=None, compare=False, repr=False)

    # -------------------------------------------------------------- the fixed skeleton
    @property
    def base_data(self) -> dict:
        return copy.deepcopy(self._base_data)

    @property
    def levels(self) -> tuple[int, int]:
        a = self._base_data["anchors"]
        return a.get("min_level", 3), a.get("max_level", 7)

    def skeleton(self) -> list[tuple[str, int, tuple[str, ...], tuple[str, ...]]]:
        """Every node as (name, level, required inputs, optional inputs), in BiFPN's order."""
        lo, hi = self.levels
        nodes, seen = [], [(input_name(lvl), lvl) for lvl in range(lo, hi + 1)]
        for node in bifpn(lo, hi):
            chain = node.inputs[-1]          # the previous node on the top-down / bottom-up path
            optional = tuple(name for name, lvl in seen
                             if abs(lvl - node.level) <= self.max_level_gap and name != chain)
            nodes.append((node.name, node.level, (chain,), optional))
            seen.append((node.name, node.level))
        return nodes

    def bifpn_edges(self) -> dict[str, tuple[str, ...]]:
        """The optional edges BiFPN itself has (the family's topology)."""
        lo, hi = self.levels
        return {n.name: tuple(n.inputs[:-1]) for n in bifpn(lo, hi)}


def _tuple(v):
    return tuple(v) if isinstance(v, list) else v


def load_space(path) -> SearchSpace:
    """A checked :class:`SearchSpace` from a YAML file; SpaceError names file and key."""
    data = schema.read_yaml(Path(path), SpaceError)
    if not isinstance(data, dict):
        raise SpaceError(f"{path}: expected a mapping of search settings")
    try:
        space = schema.build(SearchSpace, {k: _tuple(v) for k, v in data.items()}, "", SpaceError)
    except SpaceError as e:
        raise SpaceError(f"{path}: {e}") from None
    try:
        base = load_spec(space.base, space.set)
        base_data = apply_overrides(schema.read_yaml(Path(base.source), SpaceError), space.set)
    except SpecError as e:
        raise SpaceError(f"{path}: base: {e}") from None
    base_data = {k: v for k, v in base_data.items() if k != "scaling"}
    base_data.update(image_size=list(base.image_size),
                     backbone=dict(base_data.get("backbone") or {"name": base.backbone.name}))
    base_data.setdefault("anchors", {}).update(min_level=base.min_level, max_level=base.max_level)
    base_data["fpn"] = dict(base_data.get("fpn") or {}, channels=base.fpn.channels,
                            repeats=base.fpn.repeats)
    base_data["head"] = dict(base_data.get("head") or {}, repeats=base.head.repeats)
    _check(space, path)
    return _with_base(space, base_data, str(path))


def _with_base(space: SearchSpace, base_data: dict, source: str) -> SearchSpace:
    object.__setattr__(space, "_base_data", base_data)
    object.__setattr__(space, "source", source)
    return space


def _check(space: SearchSpace, path) -> None:
    def bad(key, msg):
        raise SpaceError(f"{path}: {key}: {msg}")
    for key in ("repeats", "channels", "image_size", "head_repeats", "fusion"):
        if not getattr(space, key):
            bad(key, "needs at least one value")
    for key in ("repeats", "channels", "image_size", "head_repeats"):
        for v in getattr(space, key):
            if not isinstance(v, int) or v <= 0:
                bad(key, f"values must be positive integers, got {v!r}")
    for v in space.channels:
        if v % 8:
            bad("channels", f"{v} is not a multiple of 8")
    for m in space.fusion:
        if m not in fusion.METHODS:
            bad("fusion", f"{m!r} is not a fusion method (known: {', '.join(fusion.METHODS)})")
    if not 0 <= space.edge_probability <= 1:
        bad("edge_probability", f"must be in [0, 1], got {space.edge_probability}")
    if not 0 <= space.max_level_gap <= 4:
        bad("max_level_gap", f"must be in [0, 4], got {space.max_level_gap}")
    for phi in space.family_phi:
        if not 0 <= phi <= 6:
            bad("family_phi", f"values must be in [0, 6], got {phi}")


# ------------------------------------------------------------------------ candidates
@dataclass(frozen=True)
class Candidate:
    """One point of the space: its genes, JSON-able and hashable."""
    edges: tuple[tuple[str, tuple[str, ...]], ...]     # node -> optional inputs taken
    fusion: tuple[tuple[str, str], ...]                # node -> method
    repeats: int
    channels: int
    image_size: int
    head_repeats: int

    @property
    def key(self) -> str:
        """A short stable name: the hash of the genes."""
        text = json.dumps(self.as_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def as_dict(self) -> dict:
        return {"edges": {n: list(i) for n, i in self.edges},
                "fusion": dict(self.fusion), "repeats": self.repeats,
                "channels": self.channels, "image_size": self.image_size,
                "head_repeats": self.head_repeats}

    @classmethod
    def from_dict(cls, d: dict) -> Candidate:
        return cls(tuple((n, tuple(i)) for n, i in d["edges"].items()),
                   tuple(d["fusion"].items()), d["repeats"], d["channels"],
                   d["image_size"], d["head_repeats"])

    def spec_data(self, space: SearchSpace, name: str | None = None) -> dict:
        """Ordinary spec data (an explicit node list): what train and the exporters take."""
        data = space.base_data
        edges, methods = dict(self.edges), dict(self.fusion)
        nodes = []
        for node, level, required, optional in space.skeleton():
            taken = [i for i in optional if i in edges.get(node, ())]
            nodes.append({"name": node, "level": level, "inputs": taken + list(required),
                          "weight_method": methods[node]})
        data["name"] = name or f"search-{self.key}"
        data["image_size"] = self.image_size
        data["fpn"] = {k: v for k, v in data["fpn"].items() if k not in ("topology", "nodes")}
        data["fpn"].update(channels=self.channels, repeats=self.repeats, nodes=nodes)
        data["head"] = dict(data["head"], repeats=self.head_repeats)
        return data


def bifpn_candidate(space: SearchSpace, method: str | None = None) -> Candidate:
    """The base's own BiFPN as a candidate (every BiFPN edge, one fusion method)."""
    base = space.base_data
    m = method or base["fpn"].get("weight_method", "fastattn")
    nodes = [n for n, *_ in space.skeleton()]
    size = base["image_size"]
    return Candidate(tuple(space.bifpn_edges().items()), tuple((n, m) for n in nodes),
                     base["fpn"]["repeats"], base["fpn"]["channels"],
                     size if isinstance(size, int) else max(size), base["head"]["repeats"])


def sample(space: SearchSpace, rng: random.Random) -> Candidate:
    """A random candidate: each optional edge with ``edge_probability``, the rest uniform."""
    edges, methods = [], []
    for node, _, _, optional in space.skeleton():
        edges.append((node, tuple(i for i in optional if rng.random() < space.edge_probability)))
        methods.append((node, rng.choice(space.fusion)))
    return Candidate(tuple(edges), tuple(methods), rng.choice(space.repeats),
                     rng.choice(space.channels), rng.choice(space.image_size),
                     rng.choice(space.head_repeats))


def mutate(space: SearchSpace, parent: Candidate, rng: random.Random) -> Candidate:
    """``parent`` with one gene changed: an edge added or dropped, one node's fusion method,
    or one of the scalars moved to a neighbouring value of its list."""
    d = parent.as_dict()
    skeleton = space.skeleton()
    what = rng.choice(["edge", "edge", "fusion", "repeats", "channels", "image_size",
                       "head_repeats"])
    if what == "edge":
        node, _, _, optional = rng.choice([s for s in skeleton if s[3]])
        edge = rng.choice(optional)
        taken = d["edges"][node]
        d["edges"][node] = ([i for i in taken if i != edge] if edge in taken
                            else [i for i in optional if i in taken or i == edge])
    elif what == "fusion":
        node = rng.choice(skeleton)[0]
        others = [m for m in space.fusion if m != d["fusion"][node]]
        if others:
            d["fusion"][node] = rng.choice(others)
    else:
        values = sorted(getattr(space, what))
        i = values.index(d[what]) if d[what] in values else 0
        j = min(len(values) - 1, max(0, i + rng.choice((-1, 1))))
        d[what] = values[j]
    return Candidate.from_dict(d)


def family_member(space: SearchSpace, phi: float) -> dict:
    """Spec data of the base's BiFPN compound-scaled to ``phi`` (graph.scaling.relative)."""
    data = scaling.relative(space.base_data, phi)
    data["name"] = f"family-phi{phi:g}"
    data["fpn"] = {k: v for k, v in data["fpn"].items() if k != "nodes"}
    data["fpn"]["topology"] = "bifpn"
    return data
