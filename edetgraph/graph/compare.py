"""Side-by-side cost of several specs, in the form of the EfficientDet paper's Table 5.

The paper compares feature networks with the same backbone and heads, so the ratios that
match its table are those of the feature-network cost: the extra pyramid levels
(``resample``) plus the repeated cells with their per-edge resampling (``fpn_cells``).
Whole-model totals are given too. Each ratio is to the first spec. No TensorFlow here.
"""
from __future__ import annotations

import networkx as nx

from edetgraph.graph.build import build_ir
from edetgraph.graph.cost import Cost, model_cost

FEATURE_NETWORK = ("resample", "fpn_cells")

# Paper Table 5 (arXiv 1911.09070v7, p.7): AP and params/FLOPs relative to the repeated
# top-down FPN, all with the same backbone and heads and depthwise separable convs.
PAPER_TABLE5 = {
    "fpn": ("Repeated top-down FPN", 42.29, 1.0, 1.0),
    "panet": ("Repeated FPN+PANet", 44.08, 1.0, 1.0),
    "nasfpn": ("NAS-FPN", 43.16, 0.71, 0.72),
    "fc_fpn": ("Fully-connected FPN", 43.06, 1.24, 1.21),
    "bifpn_unweighted": ("BiFPN w/o weighting", 43.94, 0.88, 0.67),
    "bifpn": ("BiFPN (weighted)", 44.39, 0.88, 0.68),
}


def paper_key(spec) -> str | None:
    """The Table 5 row a spec corresponds to (by its generator and fusion), if any."""
    topo = spec.fpn.topology
    if topo == "bifpn" and spec.fpn.weight_method == "sum":
        return "bifpn_unweighted"
    return topo if topo in PAPER_TABLE5 else None


def feature_network_cost(mc) -> Cost:
    """Params and FLOPs of the feature network alone (see the module docstring)."""
    total = Cost()
    for comp in FEATURE_NETWORK:
        total += mc.by_component[comp]
    return total


def _row(spec, g: nx.DiGraph) -> dict:
    mc = model_cost(spec, g)
    fn, total = feature_network_cost(mc), mc.total
    fuse = sum(1 for _, d in g.nodes(data=True) if d["op"] == "fuse")
    return {
        "name": spec.name, "source": spec.source,
        "topology": spec.fpn.topology or f"explicit ({len(spec.fpn.nodes)} nodes)",
        "repeats": spec.fpn.repeats, "weight_method": spec.fpn.weight_method,
        "levels": [spec.min_level, spec.max_level],
        "nodes": g.number_of_nodes(), "edges": g.number_of_edges(), "fusion_nodes": fuse,
        "fpn_params": fn.params_trainable, "fpn_flops": fn.flops,
        "params": total.params_trainable, "flops": total.flops,
        "paper_key": paper_key(spec),
    }


def _ratios(row: dict, base: dict) -> dict:
    out = {k: row[k] / base[k] if base[k] else None
           for k in ("nodes", "edges", "fpn_params", "fpn_flops", "params", "flops")}
    mine, ref = PAPER_TABLE5.get(row["paper_key"]), PAPER_TABLE5.get(base["paper_key"])
    out["paper_params"] = mine[2] / ref[2] if mine and ref else None
    out["paper_flops"] = mine[3] / ref[3] if mine and ref else None
    return out


def compare(specs, graphs=None) -> list[dict]:
    """One row per spec: costs, node/edge counts, and ``ratio`` to the first spec (with the
    paper's Table 5 ratio beside it where both specs have a Table 5 row)."""
    graphs = graphs if graphs is not None else [build_ir(s) for s in specs]
    rows = [_row(s, g) for s, g in zip(specs, graphs)]
    for r in rows:
        r["ratio"] = _ratios(r, rows[0])
        key = r["paper_key"]
        r["paper"] = ({"row": PAPER_TABLE5[key][0], "ap": PAPER_TABLE5[key][1]}
                      if key else None)
    return rows


def _num(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def format_table(rows: list[dict]) -> str:
    """The comparison as a text table (ratios to the first row; ``paper`` = Table 5)."""
    head = (f"{'spec':<22}{'topology':<9}{'rep':>4} {'fusion':<9}{'nodes':>11}{'edges':>11}"
            f"{'FPN params':>11}{'ratio':>7}{'paper':>7}{'FPN FLOPs':>10}{'ratio':>7}"
            f"{'paper':>7}{'all params':>11}{'all FLOPs':>10}{'paper AP':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        q = r["ratio"]
        ap = f"{r['paper']['ap']:.2f}" if r["paper"] else "-"
        lines.append(
            f"{r['name'][:21]:<22}{r['topology'][:8]:<9}{r['repeats']:>4} "
            f"{r['weight_method'][:8]:<9}{_count(r['nodes'], q['nodes']):>11}"
            f"{_count(r['edges'], q['edges']):>11}"
            f"{_num(r['fpn_params']):>11}{_x(q['fpn_params']):>7}{_x(q['paper_params']):>7}"
            f"{_num(r['fpn_flops']):>10}{_x(q['fpn_flops']):>7}{_x(q['paper_flops']):>7}"
            f"{_num(r['params']):>11}{_num(r['flops']):>10}{ap:>9}")
    lines.append("FPN = feature network (extra levels + cells), the part Table 5 compares; ratios"
                 " are to the first row;\n'paper' = the paper's Table 5, rescaled to the same"
                 " first row; nodes/edges of the IR (ratio).")
    return "\n".join(lines)


def _count(n: int, ratio) -> str:
    return f"{n} ({ratio:.2f})" if ratio is not None else str(n)
