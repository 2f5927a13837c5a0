"""Pictures of the feature-network IR: levels as rows, data flowing left to right.

``.dot`` and ``.svg`` are written by hand (no graphviz binary needed); ``.png`` uses
matplotlib when it is installed. Fusion inputs are labelled with their weight (``w0``, ``w1``
... or, when given, the learned normalised weight), resampling with its direction.
"""
from __future__ import annotations

from html import escape
from pathlib import Path

import networkx as nx

from edetgraph.files import atomic_path, write_text
from edetgraph.graph import ir

_COLOURS = {"input": "#cfe2ff", "resample": "#fff3cd", "fuse": "#d1e7dd", "output": "#f8d7da"}
_COL_W, _ROW_H, _BOX_W, _BOX_H = 120, 70, 96, 30


def layout(g: nx.DiGraph, collapse_resample: bool = True) -> tuple[nx.DiGraph, dict]:
    """Positions (column, row) for the nodes to draw. Per-edge resample nodes are folded
    into their edge (labelled ``up``/``down``/``1x1``) unless ``collapse_resample`` is off."""
    h = g.copy()
    if collapse_resample:
        for n in [n for n, d in g.nodes(data=True)
                  if d["op"] == "resample" and d.get("component") == "fpn_cells"]:
            (src,) = ir.ordered_inputs(h, n)
            d = g.nodes[n]
            tag = "down" if d["in_level"] < d["level"] else "up" if d["in_level"] > d["level"] else ""
            tag = "+".join(t for t in ("1x1" if d["conv"] else "", tag) if t)
            for dst in list(h.successors(n)):     # several after share_resample
                h.add_edge(src, dst, port=h.edges[n, dst]["port"], tag=tag)
            h.remove_node(n)
    col = {}
    for n in nx.topological_sort(h):
        preds = list(h.predecessors(n))
        col[n] = 1 + max((col[p] for p in preds), default=-1)
    hi = g.graph["max_level"]
    return h, {n: (col[n], hi - h.nodes[n]["level"]) for n in h}


def _label(n: str, d: dict) -> str:
    if d["op"] == "fuse":
        return n.split("_", 1)[1] if n.startswith("c") and "_" in n else n
    return n.replace("backbone_", "").replace("resample_", "").replace("fpn_", "out ")


def _edge_label(e: dict, weights: dict | None, dst: str) -> str:
    parts = []
    if weights and dst in weights:
        parts.append(f"{weights[dst][e['port']]:.2f}")
    elif e.get("fused"):
        parts.append(f"w{e['port']}")
    if e.get("tag"):
        parts.append(e["tag"])
    return " ".join(parts)


def to_dot(g: nx.DiGraph, weights: dict | None = None) -> str:
    h, pos = layout(g)
    lines = ["digraph fpn {", "  rankdir=LR; node [shape=box, style=filled, fontsize=10];"]
    for n, d in h.nodes(data=True):
        lines.append(f'  "{n}" [label="{_label(n, d)}\\nP{d["level"]}",'
                     f' fillcolor="{_COLOURS[d["op"]]}", pos="{pos[n][0]},{-pos[n][1]}!"];')
    for u, v, e in h.edges(data=True):
        e = dict(e, fused=h.nodes[v]["op"] == "fuse" and h.nodes[v].get("weight_method") != "sum")
        lines.append(f'  "{u}" -> "{v}" [label="{_edge_label(e, weights, v)}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_svg(g: nx.DiGraph, title: str = "", weights: dict | None = None) -> str:
    h, pos = layout(g)
    ncol = 1 + max(c for c, _ in pos.values())
    nrow = 1 + max(r for _, r in pos.values())
    width, height = 90 + ncol * _COL_W, 60 + nrow * _ROW_H
    xy = {n: (80 + c * _COL_W + _BOX_W / 2, 50 + r * _ROW_H + _BOX_H / 2) for n, (c, r) in pos.items()}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
           f' font-family="sans-serif" font-size="10">',
           '<defs><marker id="a" markerWidth="8" markerHeight="8" refX="7" refY="3" orient="auto">'
           '<path d="M0,0 L7,3 L0,6 z" fill="#555"/></marker></defs>',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="8" y="18" font-size="13" font-weight="bold">{escape(title)}</text>']
    hi = g.graph["max_level"]
    for r in range(nrow):
        y = 50 + r * _ROW_H + _BOX_H / 2
        out.append(f'<text x="8" y="{y + 4}" font-weight="bold">P{hi - r}</text>')
        out.append(f'<line x1="40" y1="{y}" x2="{width - 10}" y2="{y}" stroke="#eee"/>')
    for u, v, e in h.edges(data=True):
        (x1, y1), (x2, y2) = xy[u], xy[v]
        x1, x2 = x1 + _BOX_W / 2, x2 - _BOX_W / 2
        out.append(f'<path d="M{x1},{y1} C{(x1 + x2) / 2},{y1} {(x1 + x2) / 2},{y2} {x2},{y2}"'
                   ' fill="none" stroke="#555" marker-end="url(#a)"/>')
        e = dict(e, fused=h.nodes[v]["op"] == "fuse" and h.nodes[v].get("weight_method") != "sum")
        lab = _edge_label(e, weights, v)
        if lab:
            out.append(f'<text x="{x2 - 34}" y="{y2 - 4 + (y1 > y2) * 12 - (y1 < y2) * 4}"'
                       f' fill="#a33" font-size="9">{escape(lab)}</text>')
    for n, d in h.nodes(data=True):
        x, y = xy[n]
        out.append(f'<rect x="{x - _BOX_W / 2}" y="{y - _BOX_H / 2}" width="{_BOX_W}"'
                   f' height="{_BOX_H}" rx="5" fill="{_COLOURS[d["op"]]}" stroke="#333"/>')
        out.append(f'<text x="{x}" y="{y - 2}" text-anchor="middle">{escape(_label(n, d))}</text>')
        sub = f'{d.get("channels", "")}ch {d.get("size", ("", ""))[0]}x{d.get("size", ("", ""))[1]}'
        out.append(f'<text x="{x}" y="{y + 10}" text-anchor="middle" fill="#555"'
                   f' font-size="8">{escape(sub)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def to_png(g: nx.DiGraph, path: Path, title: str = "", weights: dict | None = None) -> None:
    import matplotlib  # deferred: only .png needs matplotlib (an optional extra)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred, as above

    h, pos = layout(g)
    ncol = 1 + max(c for c, _ in pos.values())
    nrow = 1 + max(r for _, r in pos.values())
    fig, ax = plt.subplots(figsize=(max(6, ncol * 1.3), max(3, nrow * 0.9)), dpi=110)
    for u, v, e in h.edges(data=True):
        (x1, y1), (x2, y2) = pos[u], pos[v]
        ax.annotate("", (x2 - 0.38, -y2), (x1 + 0.38, -y1),
                    arrowprops=dict(arrowstyle="->", color="#555", lw=0.8,
                                    connectionstyle="arc3,rad=0.0"))
        e = dict(e, fused=h.nodes[v]["op"] == "fuse" and h.nodes[v].get("weight_method") != "sum")
        lab = _edge_label(e, weights, v)
        if lab:
            ax.text(x2 - 0.45, -y2 + 0.12 * (1 if y1 <= y2 else -1), lab, fontsize=6,
                    color="#a33", ha="right")
    for n, d in h.nodes(data=True):
        x, y = pos[n]
        ax.text(x, -y, _label(n, d), ha="center", va="center", fontsize=7,
                bbox=dict(boxstyle="round", fc=_COLOURS[d["op"]], ec="#333"))
    hi = g.graph["max_level"]
    ax.set_yticks([-r for r in range(nrow)], [f"P{hi - r}" for r in range(nrow)])
    ax.set_xticks([])
    ax.set_xlim(-0.7, ncol - 0.3)
    ax.set_ylim(-nrow + 0.4, 0.6)
    for s in ("top", "right", "bottom"):
        ax.spines[s].set_visible(False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def draw(g: nx.DiGraph, path: str | Path, title: str = "", weights: dict | None = None) -> Path:
    """Write the IR picture; the format follows the suffix (.svg, .png or .dot)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".dot":
        write_text(path, to_dot(g, weights))
    elif suffix == ".svg":
        write_text(path, to_svg(g, title, weights))
    elif suffix == ".png":
        with atomic_path(path) as tmp:
            to_png(g, Path(tmp), title, weights)
    else:
        raise ValueError(f"{path}: --draw writes .svg, .png or .dot, not {suffix or 'no suffix'!r}")
    return path
