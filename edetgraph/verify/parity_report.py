"""The parity gate's result (:meth:`edetgraph.verify.parity.ParityGate.result`) as the text
table the exporters and ``bench.run`` print."""
from __future__ import annotations


def nrmse_text(nrmse) -> str:
    """An RMSE/std as the tables print it ('-' when not measured)."""
    return "-" if nrmse is None else f"{nrmse:.3g}"


def format_parity(p: dict) -> str:
    """Text table of a :meth:`ParityGate.result`."""
    t = p["tolerance"]
    limit = (f"|diff| <= {t['atol']:g}" if t["atol"] is not None
             else f"RMSE/std < {t['nrmse']:g} per head")
    if t.get("level_nrmse") is not None:
        limit += f", < {t['level_nrmse']:g} per level"
    if t["atol"] is not None and t.get("float64_factor"):
        limit += (f", or the file within {t['float64_factor']:g} x TF float32's distance from "
                  f"float64")
    lines = [f"parity ({t['name']}: {limit}; detections {t['detections']}) on "
             f"{len(p['inputs'])} inputs: {', '.join(p['inputs'])}"]
    if p["outputs"]:
        exact = any(f.get("float64") for f in p["outputs"].values())
        lines.append(f"  {'output':16s} {'max|diff|':>10s} {'rel':>10s} {'RMSE/std':>9s}  "
                     + (f"{'TF-f64':>9s} {'file-f64':>9s}  " if exact else "") + "where")
        for name, f in p["outputs"].items():
            w = f["where"] or {}
            nrmse = "-" if f["nrmse"] is None else f"{f['nrmse']:.3g}"
            e = f.get("float64")
            cols = ("" if not exact else f"{'-':>9s} {'-':>9s}  " if not e else
                    f"{e['tf_max_abs']:9.3g} {e['file_max_abs']:9.3g}  ")
            lines.append(f"  {name:16s} {f['max_abs']:10.3g} {f['max_rel']:10.3g} {nrmse:>9s}  "
                         f"{cols}{w.get('input', '')} {w.get('at', '')}")
        lines.append("  per head (levels pooled): " + ", ".join(
            f"{h} RMSE/std {nrmse_text(f['nrmse'])}" for h, f in p["heads"].items()))
        if p.get("levels") and t.get("level_nrmse") is not None:
            lines.append("  per level, RMSE/std: " + "; ".join(
                f"{h} " + ", ".join(f"{lvl} {nrmse_text(f['nrmse'])}" for lvl, f in levels.items())
                for h, levels in p["levels"].items()))
    for d in p["detections"]:
        same = "" if d["max_box_diff"] is None else (
            f"; matched one to one, max |score diff| {d['max_score_diff']:.3g}, "
            f"max |box diff| {d['max_box_diff']:.3g} px")
        if d.get("ties") and not d["mismatch"]:
            same = f"; {d['ties']}"
        agree = "-" if d["top20_agreement"] is None else f"{d['top20_agreement']:.0%}"
        lines.append(f"  detections {d['input']}: TF {d['tf']}, file {d['file']} (TF top score "
                     f"{d['tf_top_score']:.3f}, {d['tf_classes']} classes), top-20 agreement "
                     f"{agree}{same}")
    lines.extend(f"  FAILED: {f}" for f in p["failures"])
    return "\n".join(lines)
