"""``python -m edetgraph.inspect``: a spec's graph, parameters and FLOPs, without TensorFlow.

    python -m edetgraph.inspect --spec specs/d0.yaml
    python -m edetgraph.inspect --spec d3 --set fpn.channels=96 --json
    python -m edetgraph.inspect --spec d0 --draw bifpn.svg
    python -m edetgraph.inspect --spec d0 --verify     # builds the TF model and cross-checks
    python -m edetgraph.inspect --spec my.yaml --prune --share-resample   # optional passes
    python -m edetgraph.inspect --compare topologies/fpn topologies/panet topologies/bifpn
    python -m edetgraph.inspect --spec d0 --latency out/latency/tflite-fp32.json

``--compare`` prints params, FLOPs and node/edge counts side by side with ratios to the
first spec, beside the paper's Table 5 ratios where a spec has a Table 5 row.
``--latency MODEL`` adds the milliseconds a fitted latency model (``python -m
bench.latency_model fit``) predicts per component and in total on its backend.
Only ``--verify`` imports TensorFlow; everything else answers from the spec and the IR.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from edetgraph.cli import printable, quiet_tensorflow
from edetgraph.files import refuse_remote
from edetgraph.graph import latency_model, scaling
from edetgraph.graph.budget import check_budget
from edetgraph.graph.build import build_ir
from edetgraph.graph.compare import compare, format_table
from edetgraph.graph.cost import COMPONENTS, model_cost
from edetgraph.graph.draw import draw
from edetgraph.graph.spec import SpecError, load_spec


def report(spec, g=None, diffs=None) -> dict:
    """Everything ``inspect --json`` prints, as a plain dict (``diffs``: the PassDiffs of the
    build that made ``g``; without ``g`` the spec is built here with the default passes)."""
    if g is None:
        diffs = []
        g = build_ir(spec, diffs=diffs)
    mc = model_cost(spec, g)
    total = mc.total
    ops = Counter(d["op"] for _, d in g.nodes(data=True))
    fuse = [d for _, d in g.nodes(data=True) if d["op"] == "fuse"]
    return {
        "name": spec.name,
        "source": spec.source,
        "image_size": list(spec.image_size),
        "params_trainable": total.params_trainable,
        "params_total": total.params_total,
        "flops": total.flops,
        "activation_bytes": total.activation_bytes,
        "by_component": {k: mc.by_component[k].as_dict() for k in COMPONENTS},
        "flops_by_op_type": total.by_op_type(),
        "scaling": scaling.report(spec),
        "graph": {
            "nodes": g.number_of_nodes(),
            "edges": g.number_of_edges(),
            "by_op": dict(sorted(ops.items())),
            "cells": spec.fpn.repeats,
            "fusion_nodes_per_cell": len(fuse) // max(1, spec.fpn.repeats),
            "weight_methods": sorted({d["weight_method"] for d in fuse}),
            "levels": [spec.min_level, spec.max_level],
            "feature_sizes": {f"P{d['level']}": list(d["size"])
                              for _, d in g.nodes(data=True) if d["op"] == "output"},
            "passes": [d.as_dict() for d in diffs or []],
        },
    }


def _fmt(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3f}{unit}"
    return str(n)


def format_report(r: dict) -> str:
    lines = [f"{r['name']}  ({r['source']})  input {r['image_size'][0]}x{r['image_size'][1]}",
             "", f"{'component':<12}{'params':>12}{'params (all)':>14}{'FLOPs':>12}{'FLOPs %':>9}"]
    for k, c in r["by_component"].items():
        share = 100 * c["flops"] / max(1, r["flops"])
        lines.append(f"{k:<12}{_fmt(c['params_trainable']):>12}{_fmt(c['params_total']):>14}"
                     f"{_fmt(c['flops']):>12}{share:>8.1f}%")
    lines.append(f"{'total':<12}{_fmt(r['params_trainable']):>12}{_fmt(r['params_total']):>14}"
                 f"{_fmt(r['flops']):>12}{100.0:>8.1f}%")
    lines.append(f"exact: params {r['params_trainable']:,} trainable / {r['params_total']:,} total,"
                 f" FLOPs {r['flops']:,} multiply-adds")
    sc = r.get("scaling")
    if sc:
        v = sc["resolved"]
        lines += ["", f"scaling: phi {sc['phi']:g} ({sc['family']}): input {v['image_size']},"
                  f" BiFPN {v['fpn.channels']} channels x {v['fpn.repeats']} cells, head"
                  f" {v['head.repeats']} layers, {v['backbone']}"]
        deps = sc["departures"]
        lines.append("  departs from the formulas: " + "; ".join(
            f"{k} {d['spec']} (formula {d['formula']})" for k, d in deps.items())
            if deps else "  every scaled value is the formulas'")
    gr = r["graph"]
    lines += ["", f"feature network: {gr['nodes']} nodes, {gr['edges']} edges "
              f"({', '.join(f'{v} {k}' for k, v in gr['by_op'].items())}); {gr['cells']} cells x "
              f"{gr['fusion_nodes_per_cell']} fusion nodes; fusion {', '.join(gr['weight_methods'])}",
              "levels " + ", ".join(f"{k} {v[0]}x{v[1]}" for k, v in gr["feature_sizes"].items())]
    if gr["passes"]:
        lines.append("passes: " + " -> ".join(f"{p['pass']} ({p['nodes']} nodes)"
                                              for p in gr["passes"]))
        for p in gr["passes"]:
            lines.append(f"  {p['pass']:<18} {_pass_change(p):<26} -> {p['nodes']} nodes,"
                         f" {p['edges']} edges")
            if p.get("removed"):
                more = len(p["removed"]) - 8
                lines.append("      removed: " + ", ".join(p["removed"][:8])
                             + (f" (+{more} more)" if more > 0 else ""))
    return "\n".join(lines)


def format_latency(lat: dict) -> str:
    """The ``--latency`` block: predicted ms per component, the per-call part, the total."""
    lines = [f"latency predicted on {lat['backend']} ({lat['threads']} threads, {lat['machine']};"
             f" model {lat['model']}, fitted {lat['fitted'][:10]})",
             f"{'component':<14}{'ms':>10}{'share':>8}"]
    total = lat["total_ms"] or 1.0
    rows = [*lat["by_component"].items(), ("call", lat["call_ms"])]
    lines += [f"{k:<14}{v:>10.2f}{100 * v / total:>7.1f}%" for k, v in rows]
    lines.append(f"{'total':<14}{lat['total_ms']:>10.2f}{100.0:>7.1f}%   ({lat['ops']} ops;"
                 " call = input, output and invocation)")
    return "\n".join(lines)


def _pass_change(p: dict) -> str:
    keys = ("nodes_added", "nodes_removed", "edges_added", "edges_removed")
    if "nodes_added" not in p or not any(p[k] for k in keys):
        return "no change" if "nodes_added" in p else ""
    return (f"+{p['nodes_added']}/-{p['nodes_removed']} nodes,"
            f" +{p['edges_added']}/-{p['edges_removed']} edges")


def verify(spec, r: dict, g=None) -> list[str]:
    """Build the TF model (from IR ``g`` if given, e.g. after --prune) and compare its
    variables with the cost model; returns problems."""
    quiet_tensorflow()
    from edetgraph.nn.model import DetectionModel  # deferred: only --verify needs TensorFlow

    model = DetectionModel(spec, graph=g)
    scopes = {"backbone": spec.backbone_config().name + "/", "resample": "resample_p",
              "fpn_cells": "fpn_cells/", "class_net": "class_net/", "box_net": "box_net/"}
    problems = []
    for comp, prefix in scopes.items():
        vs = [v for v in model.variables if v.name.startswith(prefix)]
        got_t = sum(int(np.prod(v.shape)) for v in vs if v.trainable)
        got = sum(int(np.prod(v.shape)) for v in vs)
        want = r["by_component"][comp]
        if (got_t, got) != (want["params_trainable"], want["params_total"]):
            problems.append(f"{comp}: model has {got_t:,}/{got:,} params, cost model says "
                            f"{want['params_trainable']:,}/{want['params_total']:,}")
    return problems


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m edetgraph.inspect", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--spec", help="spec file, or a built-in name such as d0, lite2")
    what.add_argument("--compare", nargs="+", metavar="SPEC",
                      help="several specs side by side, ratios to the first (paper Table 5 form)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a spec field before validation, e.g. fpn.channels=96"
                         " (repeatable; with --compare, applied to every spec)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    ap.add_argument("--draw", metavar="FILE",
                    help="write the feature-network DAG (.svg, .png or .dot); with --compare one"
                         " file per spec: FILE gets -NAME before its suffix, or, with no suffix,"
                         " is a directory that receives NAME.svg")
    ap.add_argument("--prune", action="store_true",
                    help="accept fpn nodes that reach no output and remove them (prune_dead)")
    ap.add_argument("--share-resample", action="store_true",
                    help="merge identical conv-free resampling between consumers (share_resample)")
    ap.add_argument("--verify", action="store_true",
                    help="build the TensorFlow model and check its variables against the cost model")
    ap.add_argument("--latency", metavar="MODEL.json",
                    help="predict milliseconds per component with a latency model file"
                         " (python -m bench.latency_model fit writes one per backend)")
    return ap


def _build(spec, args):
    """The IR and its pass diffs; SpecError for a topology error or a model past the limits
    (inspect answers for what could be built)."""
    diffs: list = []
    try:
        g = build_ir(spec, prune=args.prune, share=args.share_resample, diffs=diffs)
    except SpecError as e:       # a topology error: say which file it is in
        raise SpecError(f"{spec.source or spec.name}: {e}") from None
    check_budget(spec, g)
    return g, diffs


def _main_compare(args) -> int:
    try:
        specs = [load_spec(name, args.set) for name in args.compare]
        built = [_build(spec, args) for spec in specs]
        rows = compare(specs, [g for g, _ in built])
        for row, (_, diffs) in zip(rows, built):
            row["passes"] = [d.as_dict() for d in diffs]
        if args.draw:
            for row, spec, (g, _) in zip(rows, specs, built):
                out = _draw_path(args.draw, spec, len(specs))
                row["drawing"] = str(draw(g, out, title=f"{spec.name}: feature network"))
    except (SpecError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    if args.draw and not args.json:
        print("drawings written: " + ", ".join(r["drawing"] for r in rows))
    return 0


def _draw_path(draw_arg: str, spec, count: int):
    stem = Path(spec.source or spec.name).stem
    refuse_remote(draw_arg, "--draw")   # Path("gs://b/x") would be a local folder 'gs:'
    path = Path(draw_arg)
    if not path.suffix:
        path.mkdir(parents=True, exist_ok=True)
        return path / f"{stem}.svg"
    return path.with_name(f"{path.stem}-{stem}{path.suffix}") if count > 1 else path


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.compare:
        if args.verify or args.latency:
            print(f"error: {'--verify' if args.verify else '--latency'} works with --spec only",
                  file=sys.stderr)
            return 2
        return _main_compare(args)
    try:
        spec = load_spec(args.spec, args.set)
        g, diffs = _build(spec, args)
        r = report(spec, g, diffs)
        if args.latency:
            fitted = latency_model.load(args.latency)
            r["latency"] = latency_model.predict(spec, fitted, g)
            why = latency_model.cpu_mismatch(fitted)
            if why:
                r["latency"]["warning"] = why
                print(f"warning: {printable(why)}", file=sys.stderr)
        if args.draw:
            refuse_remote(args.draw, "--draw")
            r["drawing"] = str(draw(g, args.draw, title=f"{spec.name}: feature network"))
    except (SpecError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.verify:
        problems = verify(spec, r, g)
        r["verify"] = {"ok": not problems, "problems": problems}
    print(json.dumps(r, indent=1) if args.json else format_report(r))
    if args.latency and not args.json:
        print("\n" + format_latency(r["latency"]))
    if args.draw and not args.json:
        print(f"drawing written to {r['drawing']}")
    if args.verify and not args.json:
        print("verify: TF model variables agree with the cost model" if r["verify"]["ok"]
              else "verify FAILED:\n  " + "\n  ".join(r["verify"]["problems"]))
    return 1 if args.verify and not r["verify"]["ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
