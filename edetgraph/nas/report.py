"""Stage 4: the Pareto table (CSV), the winners as ordinary spec files, the summary and the
plot; each winner compared with the compound-scaled family at the same measured latency."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import yaml

from edetgraph.files import atomic_path
from edetgraph.nas.common import say, write_atomic, write_json
from edetgraph.nas.rungs import reached
from edetgraph.nas.stats import verdict


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """For (latency, accuracy) points: True where no other point is as fast and as accurate
    with one of the two strictly better."""
    return [not any(l2 <= l1 and a2 >= a1 and (l2 < l1 or a2 > a1) for l2, a2 in points)
            for l1, a1 in points]


def interpolate(xs: list[float], ys: list[float], x: float) -> float | None:
    """Linear interpolation of y at x over the sorted xs (None outside their range)."""
    pts = sorted(zip(xs, ys))
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[0][1] if len(pts) == 1 and pts[0][0] == x else None


def family_comparison(row: dict, family: list[dict]) -> dict:
    """The winner against the family: the family's AP at the winner's measured latency, and
    the family's latency at the winner's AP (both interpolated between measured members)."""
    fam = [f for f in family if f.get("measured_ms") and f.get("AP") is not None]
    if len(fam) < 2:
        return {"note": "fewer than two family members measured"}
    ms, ap = [f["measured_ms"] for f in fam], [f["AP"] for f in fam]
    at_ms = interpolate(ms, ap, row["measured_ms"])
    best = max(range(len(fam)), key=lambda i: ap[i])
    rising = sorted(zip(ap[:best + 1], ms[:best + 1]))
    at_ap = interpolate([a for a, _ in rising], [m for _, m in rising], row["AP"])
    out = {"family_AP_at_same_ms": None if at_ms is None else round(at_ms, 4),
           "family_ms_at_same_AP": None if at_ap is None else round(at_ap, 4)}
    if at_ms is not None:
        out["AP_gain"] = round(row["AP"] - at_ms, 4)
    if at_ap is not None:
        out["speedup"] = round(at_ap / row["measured_ms"], 3)
    if at_ms is None and at_ap is None:
        out["note"] = (f"outside the measured family ({min(ms):.2f}-{max(ms):.2f} ms, "
                       f"AP {min(ap):.3f}-{max(ap):.3f})")
    return out


CSV_FIELDS = ("key", "name", "kind", "phi", "budgets", "predicted_ms", "measured_ms", "AP",
              "AP50", "flops", "params", "pareto", "winner_for_ms", "export", "coverage",
              "repeats", "channels", "image_size", "head_repeats", "edges", "fusion",
              # since --rungs / --seeds: the AP above is the mean over `seeds` trainings
              # of `steps` steps (the last rung the model reached)
              "steps", "seeds", "AP_std", "AP_runs", "AP_by_rung", "retried")


def rows_of(out: Path, budgets_of: dict[str, list], ladder: dict) -> list[dict]:
    """One row per candidate and family member trained ok at some rung (``ladder``:
    :func:`edetgraph.nas.rungs.climb`'s), with its AP at the last rung it reached."""
    measured = {}
    if (out / "measure.json").exists():
        measured = json.loads((out / "measure.json").read_text())["ms"]
    rows = []
    for folder in sorted((out / "candidates").iterdir()):
        model = ladder["models"].get(folder.name)
        steps = reached(model) if model else None
        if steps is None or not (folder / "candidate.json").exists():
            continue
        c, r = json.loads((folder / "candidate.json").read_text()), model[steps]
        exp = json.loads((folder / "export.json").read_text()) \
            if (folder / "export.json").exists() else {}
        g = c.get("genes") or {}
        row = {"key": folder.name, "name": folder.name, "kind": "family" if c.get("family")
               else "candidate", "phi": c.get("phi"), "budgets": budgets_of.get(folder.name, []),
               "predicted_ms": c.get("predicted_ms"), "measured_ms": measured.get(folder.name),
               "AP": r["AP"], "AP50": r["AP50"], "flops": c.get("flops"),
               "params": c.get("params"), "export": ("gate passed" if exp.get("ok") else
                                                     exp.get("reason", "")) if exp else "",
               "coverage": exp.get("coverage") or "", "winner_for_ms": None,
               "steps": steps, "seeds": r["n"], "AP_std": r["AP_std"],
               "AP_runs": [run["AP"] for run in r["runs"] if run["ok"]],
               "AP_by_rung": ";".join(f"{s}:{model[s]['AP']:.4f}" for s in sorted(model)
                                      if model[s]["ok"]),
               "retried": ";".join(f"{s} steps seed {run['retried']['seed']} (AP "
                                   f"{run['retried']['AP']:.4f}) -> seed {run['seed']}"
                                   for s in sorted(model) for run in model[s]["runs"]
                                   if "retried" in run)}
        if g:
            row.update(repeats=g["repeats"], channels=g["channels"], image_size=g["image_size"],
                       head_repeats=g["head_repeats"],
                       edges=";".join(f"{n}<-{'+'.join(i) or '-'}" for n, i in g["edges"].items()),
                       fusion=";".join(f"{n}:{m}" for n, m in g["fusion"].items()))
        rows.append(row)
    pts = [(r["measured_ms"], r["AP"]) for r in rows if r["measured_ms"]]
    flags = iter(pareto(pts))
    for r in rows:
        r["pareto"] = next(flags) if r["measured_ms"] else ""
    return rows


def judge(row: dict, family: list[dict], cmp: dict) -> dict:
    """The verdict on a winner (:func:`edetgraph.nas.stats.verdict`) against the family's mean
    and spread interpolated at its measured latency (``cmp``: :func:`family_comparison`'s)."""
    at_ms = cmp.get("family_AP_at_same_ms")
    if at_ms is None:
        return {"verdict": "not judged", "reason": cmp.get("note") or
                "the winner's latency is outside the measured family's"}
    fam = [f for f in family if f.get("measured_ms") and f.get("AP") is not None]
    stds = [f.get("AP_std") for f in fam]
    std = None if None in stds else interpolate([f["measured_ms"] for f in fam], stds,
                                                row["measured_ms"])
    theirs = {"AP": at_ms, "AP_std": std, "n": min(f.get("seeds") or 1 for f in fam)}
    out = verdict({"AP": row["AP"], "AP_std": row.get("AP_std"), "n": row.get("seeds") or 1},
                  theirs)
    out["family_AP_std_at_same_ms"] = None if std is None else round(std, 4)
    return out


def write_report(out: Path, rows: list[dict], budgets: list, space) -> dict:
    """pareto.csv, winners/*.yaml, summary.json and pareto.png; returns the summary.
    ``budgets``: milliseconds, or dicts with ``label``, ``predicted_ms`` and ``ms`` (the
    measured limit; None when a ratio budget's reference could not be measured)."""
    budgets = [b if isinstance(b, dict) else {"label": f"{b:g}", "predicted_ms": b, "ms": b}
               for b in budgets]
    family = sorted((r for r in rows if r["kind"] == "family"), key=lambda r: r["phi"])
    winners = {}
    (out / "winners").mkdir(exist_ok=True)
    for budget in budgets:
        label, b = budget["label"], budget["ms"]
        ref = budget.get("reference")
        if b is None:
            winners[label] = {"note": f"the reference {ref['spec']} was not measured (its "
                                      "export failed): no measured limit for this budget"}
            continue
        ok = [r for r in rows if r["kind"] == "candidate" and r["measured_ms"]
              and r["measured_ms"] <= b and r["export"] == "gate passed"]
        if not ok:
            winners[label] = {"note": "no measured candidate within this budget passed "
                                      "the gate", "measured_limit_ms": round(b, 4)}
            continue
        w = max(ok, key=lambda r: r["AP"])
        w["winner_for_ms"] = b if w["winner_for_ms"] is None else w["winner_for_ms"]
        cmp = family_comparison(w, family)
        judged = judge(w, family, cmp)
        data = yaml.safe_load((out / "candidates" / w["key"] / "spec.yaml").read_text())
        within = (f"{label} ms" if ref is None else
                  f"{ref['ratio']:g} x {ref['spec']}'s measured {ref['measured_ms']:.2f} ms "
                  f"= {b:.2f} ms")
        data["name"] = f"search-{label}{'ms' if ref is None else ''}-{w['key']}"
        header = (f"# Found by edetgraph.search within {within} (measured {w['measured_ms']:.2f} ms"
                  f" on the latency model's backend, predicted {w['predicted_ms']:.2f} ms)\n"
                  f"# AP {w['AP']:.4f} / AP50 {w['AP50']:.4f} after the search's training"
                  f"{_spread(w)}; family comparison: {json.dumps(cmp)}\n"
                  f"# verdict against the family: {judged['verdict']} ({judged['reason']})\n")
        path = out / "winners" / f"budget-{label}{'ms' if ref is None else ''}.yaml"
        write_atomic(path, header + yaml.safe_dump(data, sort_keys=False))
        winners[label] = {"key": w["key"], "spec": str(path), "AP": w["AP"],
                          "AP50": w["AP50"], "measured_ms": w["measured_ms"],
                          "predicted_ms": w["predicted_ms"], "measured_limit_ms": round(b, 4),
                          "vs_family": cmp, "AP_std": w.get("AP_std"),
                          "AP_runs": w.get("AP_runs"), "seeds": w.get("seeds"),
                          "steps": w.get("steps"), "verdict": judged}
        if ref is not None:
            winners[label]["reference"] = ref
    with atomic_path(out / "pareto.csv") as tmp, open(tmp, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        wr.writeheader()
        for r in sorted(rows, key=lambda r: (r["measured_ms"] or math.inf, -r["AP"])):
            wr.writerow({k: ("|".join(map(str, v)) if isinstance(v, list) else v)
                         for k, v in r.items()})
    summary = {"winners": winners, "family": [{k: r.get(k) for k in (
               "key", "phi", "AP", "measured_ms", "predicted_ms", "AP_std", "AP_runs", "seeds",
               "steps")} for r in family],
               "budgets": budgets, "trained": len(rows), "space": space.source}
    write_json(out / "summary.json", summary)
    plot = _plot(out / "pareto.png", rows, family, [b["ms"] for b in budgets if b["ms"]])
    if plot:
        summary["plot"] = plot
    return summary


def _spread(row: dict) -> str:
    """`` (mean ± std of 3 seeds, 4000 steps)``, or nothing for one seed."""
    if row.get("AP_std") is None:
        return ""
    return f" (mean ± std {row['AP_std']:.4f} of {row['seeds']} seeds, {row['steps']} steps)"


def _plot(path: Path, rows, family, budgets) -> str | None:
    try:
        import matplotlib  # deferred: the plot is optional (the plot extra)
    except ImportError:
        say("matplotlib not installed (pip install .[plot]): no pareto.png")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred, as above

    fig, ax = plt.subplots(figsize=(7.5, 5))
    cand = [r for r in rows if r["kind"] == "candidate"]
    pred = [r for r in cand if not r["measured_ms"]]
    meas = [r for r in cand if r["measured_ms"]]
    ax.scatter([r["predicted_ms"] for r in pred], [r["AP"] for r in pred], facecolors="none",
               edgecolors="grey", label="candidates (predicted latency)")
    ax.scatter([r["measured_ms"] for r in meas], [r["AP"] for r in meas], color="tab:blue",
               label="candidates (measured)")
    fam = [r for r in family if r["measured_ms"]]
    if fam:
        ax.plot([r["measured_ms"] for r in fam], [r["AP"] for r in fam], "-o",
                color="tab:orange", label="compound-scaled BiFPN (measured)")
        for r in fam:
            ax.annotate(f"φ={r['phi']:g}", (r["measured_ms"], r["AP"]), fontsize=8,
                        textcoords="offset points", xytext=(4, -10))
    win = [r for r in cand if r["winner_for_ms"] is not None]
    ax.scatter([r["measured_ms"] for r in win], [r["AP"] for r in win], marker="*", s=220,
               color="tab:red", label="winners", zorder=5)
    for b in budgets:
        ax.axvline(b, ls="--", color="grey", lw=0.8)
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("COCO AP (val)")
    ax.set_title("edetgraph.search: accuracy vs latency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return str(path)


