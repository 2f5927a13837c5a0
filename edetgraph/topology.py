"""Feature-network topologies: generators registered by name that emit named nodes.

A topology describes ONE cell. Its inputs are called ``p3`` ... ``p7`` (one per level, from
the backbone for the first cell, from the previous cell after that); every node names its
inputs, never integer offsets. By default the last node at each level is the cell's output
for that level (the official rule); a node may instead be marked ``output: true``.
An explicit ``fpn.nodes`` list in a spec is exactly as valid as a generator.
"""
from __future__ import annotations

from typing import Callable

from edetgraph.spec import FPNSpec, NodeSpec, SpecError

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
        raise SpecError(f"fpn.topology: {fpn.topology!r} is not registered"
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
