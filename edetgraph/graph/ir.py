"""The feature-network IR: one ``networkx.DiGraph`` from backbone features to the head inputs.

Nodes are feature maps, each produced by an op:

- ``input``    a backbone feature (``level``, ``channels``);
- ``resample`` a 1x1 conv (+BN) if channels change, then max-pool down or nearest up
               (``in_level`` -> ``level``); extra pyramid levels and per-edge resampling;
- ``fuse``     a weighted fusion of its inputs, then act -> (separable) conv -> BN;
- ``output``   a feature handed to the heads, one per level.

Edges carry ``port`` (the input position): fusion weights and checkpoint names depend on it,
never on networkx iteration order. Nodes also carry ``scope`` (the checkpoint variable scope)
and ``component`` (backbone / resample / fpn_cells) for the cost model. Graph attributes hold
``min_level``, ``max_level`` and ``image_size``. No TensorFlow here.
"""
from __future__ import annotations

import networkx as nx

from edetgraph.graph.spec import NodeSpec, SpecError
from edetgraph.limits import short

OPS = ("input", "resample", "fuse", "output")


class GraphError(SpecError):
    """A topology the IR cannot accept; the message names the node."""


def ordered_inputs(g: nx.DiGraph, node: str) -> list[str]:
    """Predecessors of ``node`` sorted by edge port (the order fusion weights use)."""
    preds = sorted(g.in_edges(node, data="port"), key=lambda e: e[2])
    return [u for u, _, _ in preds]


def ordered_outputs(g: nx.DiGraph) -> list[str]:
    """The ``output`` nodes from min to max level."""
    outs = [n for n, d in g.nodes(data=True) if d["op"] == "output"]
    return sorted(outs, key=lambda n: g.nodes[n]["level"])


def cell_graph(nodes: list[NodeSpec], min_level: int, max_level: int,
               default_weight_method: str, allow_dead: bool = False) -> nx.DiGraph:
    """One cell as a DAG with inputs ``p{L}``, after every check a user's spec needs.

    Checks, each failing with the node's name: duplicate names, inputs naming no node, cycles,
    inputs listed after their consumer, levels out of range, a fuse with no inputs, an output
    level missing or produced twice, nodes that reach no output. A dead node is most often a
    typo, so it is an error unless ``allow_dead`` (the caller then runs the prune pass);
    the dead names are kept in ``g.graph["dead"]`` either way.
    """
    g = nx.DiGraph(min_level=min_level, max_level=max_level)
    for lvl in range(min_level, max_level + 1):
        g.add_node(f"p{lvl}", op="input", level=lvl)
    for n in nodes:
        if n.name in g:
            raise GraphError(f"fpn node {short(n.name)}: name used twice")
        if not min_level <= n.level <= max_level:
            raise GraphError(f"fpn node {short(n.name)}: level {n.level} outside"
                             f" [{min_level}, {max_level}]")
        if not n.inputs:
            raise GraphError(f"fpn node {short(n.name)}: has no inputs")
        if len(set(n.inputs)) != len(n.inputs):
            raise GraphError(f"fpn node {short(n.name)}: an input is listed twice {list(n.inputs)}")
        g.add_node(n.name, op="fuse", level=n.level, output=n.output,
                   weight_method=n.weight_method or default_weight_method)
    names = {n.name for n in nodes} | {f"p{lvl}" for lvl in range(min_level, max_level + 1)}
    for n in nodes:
        for port, src in enumerate(n.inputs):
            if src not in names:
                raise GraphError(f"fpn node {short(n.name)}: input {short(src)} names no node"
                                 f" (inputs are p{min_level}..p{max_level} or earlier nodes)")
            g.add_edge(src, n.name, port=port)
    try:
        cycle = nx.find_cycle(g)
        path = " -> ".join([cycle[0][0]] + [v for _, v in cycle])
        raise GraphError(f"fpn node {cycle[0][0]!r}: cycle {path}")
    except nx.NetworkXNoCycle:
        pass
    seen = set(f"p{lvl}" for lvl in range(min_level, max_level + 1))
    for n in nodes:
        for src in n.inputs:
            if src not in seen:
                raise GraphError(f"fpn node {short(n.name)}: input {short(src)} is defined after it;"
                                 " list nodes so that inputs come first")
        seen.add(n.name)
    g.graph["outputs"] = _cell_outputs(g, nodes, min_level, max_level)
    g.graph["dead"] = _dead(g, set(g.graph["outputs"].values()))
    if g.graph["dead"] and not allow_dead:
        raise GraphError(f"fpn node {g.graph['dead'][0]!r}: reaches no output"
                         " (remove it, or run the prune pass: inspect --prune,"
                         " build_ir(spec, prune=True))")
    return g


def _cell_outputs(g, nodes, min_level, max_level) -> dict[int, str]:
    flagged = [n for n in nodes if n.output]
    outs: dict[int, str] = {}
    if flagged:
        for n in flagged:
            if n.level in outs:
                raise GraphError(f"fpn node {short(n.name)}: level {n.level} output produced twice"
                                 f" (also by {outs[n.level]!r})")
            outs[n.level] = n.name
    else:
        for n in nodes:          # official rule: the last node at each level
            outs[n.level] = n.name
    missing = [lvl for lvl in range(min_level, max_level + 1) if lvl not in outs]
    if missing:
        raise GraphError(f"fpn: no node produces output level(s) {missing}"
                         " (add a node at that level or mark one output: true)")
    return outs


def _dead(g: nx.DiGraph, outputs: set[str]) -> list[str]:
    """Fuse nodes (in spec order) from which no cell output can be reached."""
    alive = set(outputs)
    for o in outputs:
        alive |= nx.ancestors(g, o)
    return [n for n, d in g.nodes(data=True) if d["op"] == "fuse" and n not in alive]


def check(g: nx.DiGraph) -> None:
    """Invariants every full IR keeps (passes call it on what they return)."""
    if not nx.is_directed_acyclic_graph(g):
        raise GraphError(f"IR has a cycle: {nx.find_cycle(g)}")
    lo, hi = g.graph["min_level"], g.graph["max_level"]
    levels = []
    for n, d in g.nodes(data=True):
        if d.get("op") not in OPS:
            raise GraphError(f"IR node {n!r}: unknown op {d.get('op')!r}")
        if not lo <= d["level"] <= hi:
            raise GraphError(f"IR node {n!r}: level {d['level']} outside [{lo}, {hi}]")
        ports = sorted(p for _, _, p in g.in_edges(n, data="port"))
        if ports != list(range(len(ports))):
            raise GraphError(f"IR node {n!r}: input ports {ports} are not 0..{len(ports) - 1}")
        if d["op"] == "output":
            levels.append(d["level"])
    if sorted(levels) != list(range(lo, hi + 1)):
        raise GraphError(f"IR outputs cover levels {sorted(levels)}, need {lo}..{hi} once each")
