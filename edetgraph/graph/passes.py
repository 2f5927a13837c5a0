"""Optional IR passes (prune dead nodes, share conv-free resampling) and pass diffs.

Each pass is a ``g -> g`` function that checks what it relies on, returns a new graph and
leaves its input untouched; :func:`diff` says what a pass changed, node by node and edge by
edge, for ``inspect``. Neither pass is in the default pipeline: on the official specs both
are no-ops (tested), and ``build_ir(spec, prune=True, share=True)`` asks for them.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from edetgraph.graph import ir
from edetgraph.graph.ir import GraphError

# Ops a pass may delete. Backbone features stay even when unused: the backbone computes
# them anyway, and the lowered model takes its feature levels from the input nodes.
_REMOVABLE = ("fuse", "resample")


@dataclass(frozen=True)
class PassDiff:
    """What one pass changed: nodes and edges (``(u, v)``) added and removed."""
    name: str
    nodes: int                                  # node count after the pass
    edges: int
    nodes_added: tuple[str, ...] = ()
    nodes_removed: tuple[str, ...] = ()
    edges_added: tuple[tuple[str, str], ...] = ()
    edges_removed: tuple[tuple[str, str], ...] = ()

    def summary(self) -> str:
        """``+3/-1 nodes, +4/-2 edges`` (``no change`` when nothing moved)."""
        if not (self.nodes_added or self.nodes_removed or self.edges_added or self.edges_removed):
            return "no change"
        return (f"+{len(self.nodes_added)}/-{len(self.nodes_removed)} nodes,"
                f" +{len(self.edges_added)}/-{len(self.edges_removed)} edges")

    def as_dict(self) -> dict:
        """JSON form: counts, plus the names of removed nodes (short for these passes)."""
        return {"pass": self.name, "nodes": self.nodes, "edges": self.edges,
                "nodes_added": len(self.nodes_added), "nodes_removed": len(self.nodes_removed),
                "edges_added": len(self.edges_added), "edges_removed": len(self.edges_removed),
                "removed": list(self.nodes_removed)}


def diff(name: str, before: nx.DiGraph, after: nx.DiGraph) -> PassDiff:
    """The nodes and edges ``after`` has that ``before`` lacks, and the other way round."""
    nb, na = set(before.nodes), set(after.nodes)
    eb, ea = set(before.edges), set(after.edges)
    return PassDiff(name, after.number_of_nodes(), after.number_of_edges(),
                    tuple(sorted(na - nb)), tuple(sorted(nb - na)),
                    tuple(sorted(ea - eb)), tuple(sorted(eb - ea)))


def dead_nodes(g: nx.DiGraph) -> list[str]:
    """Fuse and resample nodes from which no ``output`` node can be reached, sorted."""
    outputs = [n for n, d in g.nodes(data=True) if d["op"] == "output"]
    if not outputs:
        raise GraphError("prune_dead: the IR has no output nodes yet (run it after repeat_cells)")
    alive = set(outputs)
    for o in outputs:
        alive |= nx.ancestors(g, o)
    return sorted(n for n, d in g.nodes(data=True) if d["op"] in _REMOVABLE and n not in alive)


def prune_dead(g: nx.DiGraph) -> nx.DiGraph:
    """Remove every fuse/resample node that reaches no output.

    A live node's inputs are live too, so no survivor loses an input and ports stay
    contiguous. Dead nodes arise from a spec's dead node (with ``allow_dead``) and from a
    cell input level no node reads: the previous cell's output at that level is then unused.
    Survivors keep their names and checkpoint scopes (scopes number the spec's nodes).
    """
    dead = dead_nodes(g)
    g = g.copy()
    g.remove_nodes_from(dead)
    ir.check(g)
    return g


def _spec_order(g: nx.DiGraph, n: str) -> tuple:
    """Sort key: a resample sorts with its first consumer, so the kept copy of a shared
    resample is the one the spec's node order reaches first."""
    d = g.nodes[n]
    if d["op"] == "resample" and g.out_degree(n):
        return min(_spec_order(g, v) for v in g.successors(n))[:2] + (n,)
    return (d.get("cell", -1), d.get("index", -1), n)


def _share_key(g: nx.DiGraph, n: str) -> tuple:
    d = g.nodes[n]
    (src,) = ir.ordered_inputs(g, n)
    return (src, d["in_level"], d["level"], d["channels"], d["conv"], d["bn"], d["conv_after"])


def share_resample(g: nx.DiGraph, with_conv: bool = False) -> nx.DiGraph:
    """Merge resample nodes that compute the same thing: same source, same target level and
    channels. Chains merge too: once two first steps are one node, their next steps share a
    source. The kept node (the one whose consumer comes first in the spec) lists the merged
    names in ``shared``.

    Only conv-free resamples (pool/upsample) by default: they have no weights, so merging
    changes no number the model computes, only how often it is computed. A resample with a
    1x1 conv is a distinct set of weights in the official models; ``with_conv=True`` merges
    those as well, which makes a *different* (smaller) model.
    """
    if not nx.is_directed_acyclic_graph(g):
        raise GraphError("share_resample: the IR has a cycle")
    g = g.copy()
    kept: dict[tuple, str] = {}
    order = {n: _spec_order(g, n) for n in g}
    for n in list(nx.lexicographical_topological_sort(g, key=order.__getitem__)):
        d = g.nodes[n]
        if d["op"] != "resample" or (d["conv"] and not with_conv):
            continue
        key = _share_key(g, n)
        first = kept.setdefault(key, n)
        if first == n:
            continue
        consumers = list(g.out_edges(n, data=True))
        if any(g.has_edge(first, v) for _, v, _ in consumers):
            continue         # a node reading the same resample twice: keep both ports apart
        for _, v, e in consumers:
            g.add_edge(first, v, **e)
        g.nodes[first]["shared"] = g.nodes[first].get("shared", []) + [n]
        g.remove_node(n)
    ir.check(g)
    return g
