"""Feature-network topologies: generators registered by name that emit named nodes.

A topology describes ONE cell. Its inputs are called ``p3`` ... ``p7`` (one per level, from
the backbone for the first cell, from the previous cell after that); every node names its
inputs, never integer offsets. By default the last node at each level is the cell's output
for that level (the official rule); a node may instead be marked ``output: true``.
An explicit ``fpn.nodes`` list in a spec is exactly as valid as a generator.
"""
from __future__ import annotations

from typing import Callable

from edetgraph.graph.spec import FPNSpec, NodeSpec, SpecError
from edetgraph.limits import short

_REGISTRY: dict[str, Callable[[int, int], list[NodeSpec]]] = {}


def topology(name: str):
    """Register ``fn(min_level, max_level) -> list[NodeSpec]`` under ``name``."""
    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"topology {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn
    return deco


def registered() -> list[str]:
    return sorted(_REGISTRY)


def input_name(level: int) -> str:
    return f"p{level}"


def cell_nodes(fpn: FPNSpec, min_level: int, max_level: int) -> list[NodeSpec]:
    """The node list of one cell: the explicit one, or the named generator's."""
    if fpn.nodes is not None:
        return list(fpn.nodes)
    try:
        gen = _REGISTRY[fpn.topology]
    except KeyError:
        raise SpecError(f"fpn.topology: {short(fpn.topology)} is not registered"
                        f" (known: {', '.join(registered())})") from None
    return gen(min_level, max_level)


@topology("bifpn")
def bifpn(min_level: int, max_level: int) -> list[NodeSpec]:
    """BiFPN: a top-down path, then a bottom-up path that also takes the level's input.

        P7 ─────────────────────────▶ out_p7
        P6 ───▶ td_p6 ──────────────▶ out_p6
        P5 ───▶ td_p5 ──────────────▶ out_p5
        P4 ───▶ td_p4 ──────────────▶ out_p4
        P3 ─────────────▶ out_p3 ──┘(up)
    top-down: td_pL = fuse(pL, up(prev)); bottom-up: out_pL = fuse(pL, td_pL, down(out_pL-1)).
    Node order (and so checkpoint fnode numbers) follows the official code.
    """
    nodes: list[NodeSpec] = []
    last = {lvl: input_name(lvl) for lvl in range(min_level, max_level + 1)}
    every = {lvl: [input_name(lvl)] for lvl in range(min_level, max_level + 1)}
    for lvl in range(max_level - 1, min_level - 1, -1):
        name = f"td_p{lvl}" if lvl > min_level else f"out_p{lvl}"
        nodes.append(NodeSpec(name, lvl, (last[lvl], last[lvl + 1])))
        last[lvl] = name
        every[lvl].append(name)
    for lvl in range(min_level + 1, max_level + 1):
        name = f"out_p{lvl}"
        nodes.append(NodeSpec(name, lvl, tuple(every[lvl]) + (last[lvl - 1],)))
        last[lvl] = name
        every[lvl].append(name)
    return nodes


def _levels_down(min_level: int, max_level: int) -> range:
    return range(max_level, min_level - 1, -1)


def _top_down(min_level: int, max_level: int, prefix: str = "td") -> list[NodeSpec]:
    """A top-down path with a node at every level: the top one sees only its input."""
    nodes = [NodeSpec(f"{prefix}_p{max_level}", max_level, (input_name(max_level),))]
    for lvl in _levels_down(min_level, max_level - 1):
        nodes.append(NodeSpec(f"{prefix}_p{lvl}", lvl, (input_name(lvl), nodes[-1].name)))
    return nodes


@topology("fpn")
def fpn(min_level: int, max_level: int) -> list[NodeSpec]:
    """Top-down FPN (Lin et al. 2017), one pass per cell; repeat the cell for depth.

        P7 ─▶ td_p7
                │(up)
        P6 ─▶ td_p6
                │(up)
        P5 ─▶ td_p5      td_pL = fuse(pL, up(td_pL+1)); td_pmax = conv of pmax alone
                ...
        P3 ─▶ td_p3
    Every level gets a node (its 3x3 conv), as in the paper's Figure 2(a).
    """
    return _top_down(min_level, max_level)


@topology("panet")
def panet(min_level: int, max_level: int) -> list[NodeSpec]:
    """PANet (Liu et al. 2018): the FPN top-down path, then a bottom-up path.

        P7 ─▶ td_p7 ──────────▶ out_p7
                │(up)             ▲(down)
        P6 ─▶ td_p6 ──────────▶ out_p6
                ...               ...
        P3 ─▶ td_p3 ──────────▶ out_p3
    out_pL = fuse(td_pL, down(out_pL-1)); out_pmin sees td_pmin alone. The two
    single-input nodes (td_pmax, out_pmin) are the ones BiFPN removes.
    """
    nodes = _top_down(min_level, max_level)
    nodes.append(NodeSpec(f"out_p{min_level}", min_level, (f"td_p{min_level}",)))
    for lvl in range(min_level + 1, max_level + 1):
        nodes.append(NodeSpec(f"out_p{lvl}", lvl, (f"td_p{lvl}", nodes[-1].name)))
    return nodes


@topology("fc_fpn")
def fc_fpn(min_level: int, max_level: int) -> list[NodeSpec]:
    """Fully-connected FPN (EfficientDet paper, Table 5 / first-version Figure 2(d)): PANet
    plus a connection from every cell input to every output node.

        P7 ─▶ td_p7 ─────────▶ out_p7 ◀── P3..P7 (all inputs, resampled)
        ...     │(up)            ▲(down)
        P3 ─▶ td_p3 ─────────▶ out_p3 ◀── P3..P7
    out_pL = fuse(td_pL, down(out_pL-1), p_min, ..., p_max). The cost is in the extra
    edges: in the first cell each one from a backbone feature is its own 1x1 conv.
    """
    every = tuple(input_name(lvl) for lvl in range(min_level, max_level + 1))
    nodes = _top_down(min_level, max_level)
    prev: tuple[str, ...] = ()
    for lvl in range(min_level, max_level + 1):
        nodes.append(NodeSpec(f"out_p{lvl}", lvl, (f"td_p{lvl}",) + prev + every))
        prev = (nodes[-1].name,)
    return nodes


# The published NAS-FPN cell (Ghiasi et al. 2019, 7 merge cells found by search), with levels
# relative to the lowest: (name, level - min_level, inputs, merge). The inputs named
# in the paper's rule "a level's input not used by any earlier merge is summed into the
# output merge at that level" are written out (p5 into n9, p7 into n10).
_NASFPN_CELL = (
    ("n5", 1, ("p+1", "p+3"), "gp"),
    ("n6", 1, ("p+1", "n5"), "sum"),
    ("n7", 0, ("p+0", "n6"), "sum"),
    ("n8", 1, ("n6", "n7"), "sum"),
    ("n9", 2, ("n7", "n8", "p+2"), "gp"),
    ("n10", 4, ("n6", "n9", "p+4"), "gp"),
    ("n11", 3, ("n9", "n10"), "gp"),
)
NASFPN_OUTPUTS = ("n7", "n8", "n9", "n10", "n11")


@topology("nasfpn")
def nasfpn(min_level: int, max_level: int) -> list[NodeSpec]:
    """NAS-FPN's published cell on five consecutive levels (P3-P7 in the paper).

        P7 ─────────────────────────────────────▶ n10
        P6 ──┐                                         n11
        P5 ──┼───────────────────────────▶ n9
        P4 ──┴▶ n5 ─▶ n6 ────────▶ n8
        P3 ────────────────▶ n7
    n5 = gp(P4, P6)   n6 = sum(P4, n5)   n7 = sum(P3, n6)   n8 = sum(n6, n7)
    n9 = gp(n7, n8) + P5   n10 = gp(n6, n9) + P7   n11 = gp(n9, n10); outputs n7..n11.
    Each merge is one fusion node (act -> 3x3 conv -> BN), inputs resampled to its level.
    Approximation: the "gp" merge (a + b * sigmoid(global max-pool(a))) becomes the spec's
    fusion (``sum`` in specs/topologies/nasfpn.yaml), like the published "sum" merges.
    Other level ranges: the cell is shifted (P2-P6, P4-P8); it has no rule for 6+ levels.
    """
    if max_level - min_level != 4:
        raise SpecError(f"fpn.topology: 'nasfpn' is the published cell on 5 levels; got"
                        f" P{min_level}-P{max_level} (write an explicit fpn.nodes list instead)")

    def ref(x: str) -> str:
        return input_name(min_level + int(x[2:])) if x.startswith("p+") else x
    return [NodeSpec(name, min_level + rel, tuple(ref(i) for i in ins),
                     output=name in NASFPN_OUTPUTS)
            for name, rel, ins, _ in _NASFPN_CELL]


@topology("qufpn")
def qufpn(min_level: int, max_level: int) -> list[NodeSpec]:
    """QuFPN (official ``qufpn_config``): BiFPN's top-down + bottom-up paths, a second pair
    running the other way (bottom-up from the inputs, then top-down), and a final
    "quad" fusion of the two pairs at every level.

        path 1 td_pL = fuse(pL, up(td_pL+1))               L = max-1 .. min
        path 2 bu_pL = fuse(pL, td_pL, down(bu_pL-1))       L = min+1 .. max (max: no td)
        path 3 b3_pL = fuse(pL, down(b3_pL-1 or p_min))     L = min+1 .. max
        path 4 t4_pL = fuse(pL, b3_pL, up(t4_pL+1))         L = max-1 .. min (min: no b3)
        quad   q_pL  = fuse(bu_pL | td_pmin, t4_pL | b3_pmax)   L = max .. min
    Quad nodes always use fastattn, as the official config does; the rest follow the spec.
    """
    lo, hi = min_level, max_level
    p = input_name
    nodes: list[NodeSpec] = []
    for lvl in range(hi - 1, lo - 1, -1):
        nodes.append(NodeSpec(f"td_p{lvl}", lvl, (p(lvl), nodes[-1].name if nodes else p(hi))))
    prev = f"td_p{lo}"
    for lvl in range(lo + 1, hi + 1):
        ins = (p(lvl), f"td_p{lvl}", prev) if lvl < hi else (p(lvl), prev)
        nodes.append(NodeSpec(f"bu_p{lvl}", lvl, ins))
        prev = nodes[-1].name
    prev = p(lo)
    for lvl in range(lo + 1, hi + 1):
        nodes.append(NodeSpec(f"b3_p{lvl}", lvl, (p(lvl), prev)))
        prev = nodes[-1].name
    for lvl in range(hi - 1, lo - 1, -1):
        ins = (p(lvl), f"b3_p{lvl}", prev) if lvl > lo else (p(lvl), prev)
        nodes.append(NodeSpec(f"t4_p{lvl}", lvl, ins))
        prev = nodes[-1].name
    for lvl in range(hi, lo - 1, -1):
        a = f"td_p{lo}" if lvl == lo else f"bu_p{lvl}"
        b = f"b3_p{hi}" if lvl == hi else f"t4_p{lvl}"
        nodes.append(NodeSpec(f"q_p{lvl}", lvl, (a, b), weight_method="fastattn"))
    return nodes
