"""The IR builder: ``build_ir(spec)`` turns a spec's feature network into a checked,
fully resolved ``networkx`` DAG (the second of the three files from spec to TensorFlow).

It is a pipeline of small ``g -> g`` passes, each checking what it relies on first:
backbone inputs and extra levels, the topology's cell (``topology.cell_nodes``, checked by
``ir.cell_graph``) repeated ``fpn.repeats`` times, the resampling that level and channel
differences imply, then feature-map sizes; on request, dead-node pruning and resample
sharing (``edetgraph.graph.passes``). ``run(g, passes)`` composes any list of passes.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Iterable

import networkx as nx

from edetgraph.graph import blocks, ir, topology
from edetgraph.graph.ir import GraphError
from edetgraph.graph.passes import dead_nodes, diff, prune_dead, share_resample
from edetgraph.graph.sizes import feature_sizes
from edetgraph.limits import limit, override_hint

Pass = Callable[[nx.DiGraph], nx.DiGraph]


def run(g: nx.DiGraph, passes: Iterable[Pass], trace: list | None = None,
        diffs: list | None = None) -> nx.DiGraph:
    """Apply passes in order; with ``trace``, append (pass name, nodes, edges) after each;
    with ``diffs``, append a :class:`~edetgraph.graph.passes.PassDiff` (what each changed)."""
    for p in passes:
        before, g = g, p(g)
        name = getattr(p, "__name__", None) or getattr(p.func, "__name__", str(p))
        if trace is not None:
            trace.append((name, g.number_of_nodes(), g.number_of_edges()))
        if diffs is not None:
            diffs.append(diff(name, before, g))
    return g


def backbone_inputs(spec) -> nx.DiGraph:
    """Backbone features up to stride 32 (or max_level), then max-pooled extra levels."""
    cfg = spec.backbone_config()
    blist = cfg.blocks()
    deepest = _deepest_level(blist)
    g = nx.DiGraph(min_level=spec.min_level, max_level=spec.max_level,
                   image_size=tuple(spec.image_size))
    top = min(spec.max_level, deepest)
    if spec.min_level > deepest:
        # Extra levels are pooled from the level just below; above the backbone's deepest
        # feature there is a gap nothing can be resampled from.
        raise GraphError(f"IR node 'resample_p{spec.min_level}': nothing to make it from;"
                         f" backbone {cfg.name!r} ends at level {deepest}, so"
                         f" anchors.min_level must be <= {deepest} (got {spec.min_level})")
    feats = blocks.feature_blocks(blist, range(spec.min_level, top + 1))
    prev = None
    for lvl in range(spec.min_level, top + 1):
        prev = f"backbone_p{lvl}"
        g.add_node(prev, op="input", level=lvl, channels=blist[feats[lvl]].out_ch,
                   block=feats[lvl], component="backbone")
    for lvl in range(top + 1, spec.max_level + 1):
        cin = g.nodes[prev]["channels"]
        name = f"resample_p{lvl}"
        g.add_node(name, op="resample", level=lvl, in_level=lvl - 1, channels=spec.fpn.channels,
                   conv=cin != spec.fpn.channels, bn=spec.fpn.resample_bn,
                   conv_after=spec.fpn.conv_after_downsample,
                   scope=name, component="resample")
        g.add_edge(prev, name, port=0)
        prev = name
    return g


def _deepest_level(blist) -> int:
    level = 1
    for b in blist:
        level += b.stride == 2
    return level


def repeat_cells(g: nx.DiGraph, cell: nx.DiGraph, nodes: list, repeats: int, channels: int,
                 separable: bool, conv_bn_act: bool, act: str) -> nx.DiGraph:
    """Chain ``repeats`` copies of ``cell`` after the level features, then add outputs.

    Node ``n`` of cell ``c`` becomes ``c{c}_{name}``, scoped like the official checkpoint
    (``fpn_cells/cell_{c}/fnode{n}``); its combine conv is ``op_after_combine{k}`` with k the
    number of feature maps existing when it is built (levels + n), as the official names it.
    """
    lo, hi = g.graph["min_level"], g.graph["max_level"]
    if cell.graph["min_level"] != lo or cell.graph["max_level"] != hi:
        raise GraphError("cell levels do not match the feature levels")
    g = g.copy()
    level_feat = {d["level"]: n for n, d in g.nodes(data=True)}  # one feature per level
    num_levels = hi - lo + 1
    for c in range(repeats):
        local = {f"p{lvl}": (level_feat[lvl], lvl - lo) for lvl in range(lo, hi + 1)}
        for i, spec_node in enumerate(nodes):
            name = f"c{c}_{spec_node.name}"
            d = cell.nodes[spec_node.name]
            g.add_node(name, op="fuse", level=d["level"], channels=channels,
                       weight_method=d["weight_method"], separable=separable,
                       conv_bn_act=conv_bn_act, act=act, cell=c, index=i,
                       scope=f"fpn_cells/cell_{c}/fnode{i}",
                       combine_scope=f"op_after_combine{num_levels + i}",
                       component="fpn_cells")
            for port, src in enumerate(spec_node.inputs):
                u, offset = local[src]
                g.add_edge(u, name, port=port, offset=offset)
            local[spec_node.name] = (name, num_levels + i)
        level_feat = {lvl: local[out][0] for lvl, out in cell.graph["outputs"].items()}
    for lvl in range(lo, hi + 1):
        g.add_node(f"fpn_p{lvl}", op="output", level=lvl, channels=channels)
        g.add_edge(level_feat[lvl], f"fpn_p{lvl}", port=0)
    ir.check(g)
    return g


def insert_resampling(g: nx.DiGraph, resample_bn: bool, conv_after_downsample: bool) -> nx.DiGraph:
    """Make every implied resampling explicit: an edge into a fuse node whose source has
    another level or channel count gets a ``resample`` node (1x1 conv+BN where channels
    differ, max-pool down or nearest up where levels differ), scoped like the official
    ``resample_{port}_{offset}_{k}`` layer of that fusion node."""
    g = g.copy()
    for v in [n for n, d in g.nodes(data=True) if d["op"] == "fuse"]:
        dv = g.nodes[v]
        k = int(dv["combine_scope"].removeprefix("op_after_combine"))
        for u, _, e in list(g.in_edges(v, data=True)):
            du = g.nodes[u]
            conv = du["channels"] != dv["channels"]
            if du["level"] == dv["level"] and not conv:
                continue
            port, off = e["port"], e.get("offset", 0)
            name = f"{v}.in{port}"
            g.add_node(name, op="resample", level=dv["level"], in_level=du["level"],
                       channels=dv["channels"], conv=conv, bn=resample_bn,
                       conv_after=conv_after_downsample,
                       scope=f"{dv['scope']}/resample_{port}_{off}_{k}", component=dv["component"])
            g.remove_edge(u, v)
            g.add_edge(u, name, port=0)
            g.add_edge(name, v, port=port, offset=off)
    ir.check(g)
    return g


def annotate_sizes(g: nx.DiGraph) -> nx.DiGraph:
    """Give every node its map size ``size`` = (h, w) from the image size and its level."""
    sizes = feature_sizes(g.graph["image_size"], 0, g.graph["max_level"])
    g = g.copy()
    for _, d in g.nodes(data=True):
        d["size"] = sizes[d["level"]]
        if d["op"] == "resample":
            d["in_size"] = sizes[d["in_level"]]
    return g


def build_ir(spec, trace: list | None = None, *, prune: bool = False, share: bool = False,
             diffs: list | None = None) -> nx.DiGraph:
    """The feature network of ``spec`` as a checked, fully resolved IR.

    ``prune``: accept nodes that reach no output and remove them (``prune_dead``), where the
    default is an error naming the node. ``share``: merge identical conv-free resampling
    (``share_resample``). Each is on when asked here or in the spec (``fpn.prune``,
    ``fpn.share_resample``), so ``build_model`` and training honour them. Both default off, so the official specs' IR is exactly the
    checkpoint layout. ``trace``/``diffs`` collect what each pass did (see :func:`run`).
    """
    fpn = spec.fpn
    prune, share = prune or fpn.prune, share or fpn.share_resample
    nodes = topology.cell_nodes(fpn, spec.min_level, spec.max_level)
    cell = ir.cell_graph(nodes, spec.min_level, spec.max_level, fpn.weight_method,
                         allow_dead=prune)
    if len(nodes) * fpn.repeats > limit("graph_nodes"):  # before the cells are repeated
        raise GraphError(f"fpn.repeats: {fpn.repeats:,} cells of {len(nodes)} nodes make "
                         f"{len(nodes) * fpn.repeats:,} fusion nodes, more than "
                         f"{limit('graph_nodes'):,} ({override_hint('graph_nodes')})")
    g = run(backbone_inputs(spec), [
        partial(repeat_cells, cell=cell, nodes=nodes, repeats=fpn.repeats,
                channels=fpn.channels, separable=fpn.separable, conv_bn_act=fpn.conv_bn_act,
                act=spec.act),
        *([prune_dead] if prune else []),
        partial(insert_resampling, resample_bn=fpn.resample_bn,
                conv_after_downsample=fpn.conv_after_downsample),
        *([share_resample] if share else []),
        annotate_sizes,
    ], trace=trace, diffs=diffs)
    return g if prune else _require_live(g, cell)


def _require_live(g: nx.DiGraph, cell: nx.DiGraph) -> nx.DiGraph:
    """Every cell node is live in the cell (cell_graph checked it), but a cell input level
    no node reads still leaves work unused (earlier cells' outputs at that level, or an extra
    level's resampling): an error, like a dead node, unless the prune pass is asked for."""
    dead = dead_nodes(g)
    if dead:
        first = min(dead, key=lambda n: g.nodes[n]["op"] != "fuse")   # a fuse node if any
        unread = [n for n, d in cell.nodes(data=True)
                  if d["op"] == "input" and cell.out_degree(n) == 0]
        d = g.nodes[first]
        what = (f"fpn node {first.split('_', 1)[1]!r} of cell {d['cell']} (IR node {first!r})"
                if "cell" in d else f"IR node {first!r}")
        raise GraphError(f"{what}: reaches no output, since no fpn node reads cell"
                         f" input(s) {', '.join(map(repr, unread))} (read them, or run the prune"
                         " pass: inspect --prune, build_ir(spec, prune=True))")
    return g
