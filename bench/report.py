"""The benchmark's report: a text table (host backends, then device results), results.json,
results.csv and a PNG plot (latency against AP, or latency bars when no data was given)."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import textwrap

import numpy as np

from edetgraph.verify.coverage import summary_line
from edetgraph.files import atomic_path, write_text
from edetgraph.verify.detections import AGREE_IOU, AGREE_SCORE

# What the figures mean, printed under the table and kept in results.json.
NOTES = {
    "parity": "Raw head outputs of each backend against TF on the same inputs (random pixels "
              "and real pictures): max |diff| over every element, max rel = that difference / "
              "the largest |TF| value of its output (worst output). Tolerance by kind (the "
              "exporters' parity gate): fp32 every output within 1e-4, or, beyond, the "
              "backend no further from the model run in float64 than 2x TF float32 itself "
              "(results.json: parity.float64); fp16 and int8 RMSE/std per head (int8 on "
              "real pictures only); a '!' after the kind marks a miss. 'ref' is TF itself.",
    "detections": "The same post-processing (edetgraph.task.postprocess, TF) applied to each "
                  "backend's raw outputs on the real pictures; agree = share of TF detections "
                  f"with score >= {AGREE_SCORE} that the backend has with the same "
                  f"class at IoU >= {AGREE_IOU}; dscore = mean |score difference| of "
                  "those matches.",
    "load": "load_s: file backends, creating the session / interpreter (allocation "
            "included); tf and tf-xla, the first call of the tf.function (tracing, and XLA "
            "compilation for tf-xla) with the variables already built.",
    "memory": "Peak resident memory (VmHWM) of a fresh subprocess that loads the model and "
              "runs it a few times; model_mb = peak minus the baseline after the runtime "
              "library (and for TF its runtime) is imported, i.e. what the model adds: "
              "weights, arena, compiled code, buffers. Totals count shared-library pages, "
              "so they are upper bounds.",
    "scope": "Latency is the network alone (image already normalised, raw head outputs "
             "back as numpy); post-processing is the same TF code for every backend and is "
             "not timed.",
}

CSV_COLUMNS = ("name", "host", "status", "reason", "device", "runtime", "threads", "file",
               "file_mb", "max_abs", "max_rel", "parity_tolerance", "parity_passed",
               "det_agreement", "det_tf_count", "det_mean_score_diff", "AP", "AP50",
               "p50_ms", "p90_ms", "mean_ms", "min_ms", "max_ms", "std_ms", "runs",
               "throughput_ips", "speedup_vs_tf_p50", "load_s", "peak_mb", "model_mb",
               "export_reused", "coverage", "ap_drop_points", "accuracy_verified",
               "triage_float_layers")


def _get(row, *keys):
    for k in keys:
        row = row.get(k) if isinstance(row, dict) else None
    return row


def _fmt(value, spec: str) -> str:
    """``format(value, spec)``, or a dash as wide as the spec asks."""
    width = re.match(r"[<>^]?(\d*)", spec).group(1)
    return format(value, spec) if value is not None else "-".rjust(int(width or 0))


def speedups(rows: list) -> dict:
    """p50 of tf divided by each backend's p50 (how many times faster than TF)."""
    ref = next((_get(r, "latency", "p50_ms") for r in rows if r["name"] == "tf"), None)
    return {r["name"]: ref / _get(r, "latency", "p50_ms") for r in rows
            if ref and _get(r, "latency", "p50_ms")}


def flat_row(row: dict, speedup=None) -> dict:
    """One host or device row as the flat record of results.csv."""
    if not row.get("host", True):  # device rows are flat already
        out = {k: row.get(k) for k in CSV_COLUMNS}
        out.update(status="ok", file_mb=(row.get("file_bytes") or 0) / 2 ** 20,
                   load_s=row.get("init_ms", 0) / 1e3, file=row.get("source"))
        return out
    lat, mem = row.get("latency") or {}, row.get("memory") or {}
    out = {"name": row["name"], "host": True, "status": row["status"], "reason": row["reason"],
           "device": "host", "threads": row.get("threads"), "file": row.get("file"),
           "runtime": " ".join(x for x in (row.get("runtime"), row.get("runtime_version")) if x),
           "file_mb": row["file_bytes"] / 2 ** 20 if row.get("file_bytes") else None,
           "max_abs": _get(row, "parity", "max_abs"), "max_rel": _get(row, "parity", "max_rel"),
           "parity_tolerance": _get(row, "parity", "tolerance"),
           "parity_passed": _get(row, "parity", "passed"),
           "det_agreement": _get(row, "detections", "fraction"),
           "det_tf_count": _get(row, "detections", "tf_detections"),
           "det_mean_score_diff": _get(row, "detections", "mean_score_diff"),
           "AP": _get(row, "ap", "AP"), "AP50": _get(row, "ap", "AP50"),
           "speedup_vs_tf_p50": speedup, "load_s": row.get("load_s"),
           "peak_mb": mem.get("peak_mb"), "model_mb": mem.get("model_mb"),
           "export_reused": _get(row, "export", "reused"),
           "coverage": short_coverage(row.get("coverage")),
           "ap_drop_points": _get(row, "accuracy", "ap_drop_points"),
           "accuracy_verified": (None if row.get("accuracy") is None
                                 else row["accuracy"].get("verified", True)),
           "triage_float_layers": (len(row["triage"]["float_layers"]) if row.get("triage")
                                   else None)}
    out.update({k: lat.get(k) for k in ("p50_ms", "p90_ms", "mean_ms", "min_ms", "max_ms",
                                         "std_ms", "runs", "throughput_ips")})
    return out


def short_coverage(report: dict | None) -> str | None:
    """A table cell: ``1 part`` (one XNNPACK partition), ``37p 36ref`` (partitions, nodes on
    reference kernels), ``CPU`` / ``3 fb`` (ONNX Runtime fallbacks), ``bf16 98%`` (OpenVINO
    layers in the requested precision)."""
    if not report:
        return None
    if "partitions" in report:
        left = sum(report["not_delegated"].values())
        return "1 part" if report["fully_delegated"] else f"{report['partitions']}p {left}ref"
    if "providers" in report:
        n = sum(report["fallback"].values())
        return report["providers"][0].replace("ExecutionProvider", "") if not n else f"{n} fb"
    if "layers" in report:
        total = sum(report["layers"].values())
        other = sum(report["other_precision"].values())
        return f"{report['requested']} {100 * (total - other) / max(total, 1):.0f}%"
    return None


HOST_HEADER = (f"{'backend':17s} {'status':7s} {'MB':>6s} {'max|diff|':>9s} {'max rel':>8s} "
               f"{'tol':>4s} {'agree/n':>8s} {'dscore':>7s} {'AP':>6s} {'AP50':>6s} {'p50 ms':>8s} "
               f"{'p90 ms':>8s} {'mean ms':>8s} {'min ms':>8s} {'img/s':>6s} {'x TF':>5s} "
               f"{'load s':>7s} {'mem MB':>7s} {'coverage':>10s}")


def _agree(f: dict) -> str:
    """'96%/25': share of the TF detections considered, and how many there were."""
    if f["det_agreement"] is None:
        return "-" if f["det_tf_count"] is None else f"-/{f['det_tf_count']}"
    return f"{f['det_agreement']:.0%}/{f['det_tf_count']}"


def _host_line(f: dict) -> str:
    tol = f["parity_tolerance"] or "-"
    if f["parity_passed"] is False:
        tol += "!"
    return (f"{f['name'][:17]:17s} {f['status']:7s} {_fmt(f['file_mb'], '6.1f')} "
            f"{_fmt(f['max_abs'], '9.2e')} {_fmt(f['max_rel'], '8.1e')} {tol:>4s} "
            f"{_agree(f):>8s} {_fmt(f['det_mean_score_diff'], '7.4f')} "
            f"{_fmt(f['AP'], '6.3f')} {_fmt(f['AP50'], '6.3f')} {_fmt(f['p50_ms'], '8.1f')} "
            f"{_fmt(f['p90_ms'], '8.1f')} {_fmt(f['mean_ms'], '8.1f')} {_fmt(f['min_ms'], '8.1f')} "
            f"{_fmt(f['throughput_ips'], '6.2f')} {_fmt(f['speedup_vs_tf_p50'], '5.2f')} "
            f"{_fmt(f['load_s'], '7.2f')} {_fmt(f['model_mb'], '7.0f')} "
            f"{_fmt(f['coverage'], '>10s')}")


def _device_lines(device_rows: list) -> list:
    if not device_rows:
        return []
    lines = ["", "Device results (bench/device_runner.py; their own warm-up and timed loop, "
             "not interleaved with the host's):",
             f"{'name':34s} {'runtime':22s} {'thr':>3s} {'MB':>6s} {'p50 ms':>8s} {'p90 ms':>8s} "
             f"{'mean ms':>8s} {'min ms':>8s} {'img/s':>6s} {'init ms':>8s}  device"]
    for r in device_rows:
        lines.append(f"{r['name'][:34]:34s} {r['runtime'][:22]:22s} {_fmt(r.get('threads'), '>3')} "
                     f"{r['file_bytes'] / 2 ** 20:6.1f} {r['p50_ms']:8.1f} {r['p90_ms']:8.1f} "
                     f"{r['mean_ms']:8.1f} {r['min_ms']:8.1f} "
                     f"{_fmt(r.get('throughput_ips'), '6.2f')} {r['init_ms']:8.1f}  {r['device']}")
    return lines


def format_report(results: dict) -> str:
    """The printed report: table, reasons, device rows, method, machine and load."""
    rows, cfg, m = results["rows"], results["config"], results["machine"]
    up = speedups(rows)
    lines = [f"{results['spec']} {results['image_size'][0]}x{results['image_size'][1]}, batch "
             f"{cfg['batch']}, {cfg['threads']} threads, weights: "
             f"{results['weights'].get('source')}"]
    if results.get("labels"):
        names = ", ".join(f"{k} {v}" for k, v in list(results["labels"].items())[:12])
        more = len(results["labels"]) - 12
        lines.append(f"classes ({results.get('labels_source')}): {names}"
                     + (f" ... (+{more})" if more > 0 else ""))
    lines.append(HOST_HEADER)
    lines += [_host_line(flat_row(r, up.get(r["name"]))) for r in rows]
    for r in rows:
        if r["reason"]:
            lines.append(f"  {r['name']}: {r['status']}: {r['reason']}")
        for failure in _get(r, "parity", "failures") or []:
            lines.append(f"  {r['name']}: parity outside its tolerance: {failure}")
        if _get(r, "memory", "error"):
            lines.append(f"  {r['name']}: memory not measured: {r['memory']['error']}")
        off_path = summary_line(r["coverage"]) if r.get("coverage") else None
        if off_path:
            lines.append(f"  {r['name']}: {off_path}")
        triage = r.get("triage")
        if triage:
            kept = triage["float_layers"]
            lines.append(f"  {r['name']}: triage on --triage-data kept {len(kept)} layer(s) in "
                         f"float32 for an AP loss within {triage['bound_points']:g} points"
                         + (f": {', '.join(kept[:4])}" + (" ..." if len(kept) > 4 else "")
                            if kept else ""))
        acc = r.get("accuracy") or {}
        if acc.get("verified") is False:
            sqnr = ", ".join(f"{h} {v:.1f} dB" for h, v in acc["sqnr_db"].items()
                             if v is not None)
            lines.append(f"  {r['name']}: accuracy UNVERIFIED ({acc['why']}); SQNR per head: "
                         f"{sqnr or 'not measured'}")
        elif "ap_drop_points" in acc:
            lines.append(f"  {r['name']}: AP {acc['ap_drop_points']:+.2f} points from TF "
                         f"(allowed {acc['max_ap_drop_points']:g})")
    lines += _device_lines(results.get("device_rows") or [])
    wrap = lambda t: textwrap.fill(t, 100, subsequent_indent="  ")  # noqa: E731
    lines += ["", wrap(results["method"])]
    lines += [wrap(f"{k.capitalize()}: {v}") for k, v in results["notes"].items()]
    lines.append(f"Machine: {m['cpu']}, {m['cpus_usable']} usable of {m['cpu_count']} CPUs, "
                 f"{m['system']}; load average (1/5/15 min) {m['load_average_start']} at start, "
                 f"{m['load_average_end']} at end (shared machine: compare rows of one table, "
                 "not absolute figures across runs).")
    return "\n".join(lines)


def write_report(results: dict, out: str) -> dict:
    """Write results.json, results.csv and results.png into ``out``; returns their paths."""
    os.makedirs(out, exist_ok=True)
    paths = {k: os.path.join(out, f"results.{k}") for k in ("json", "csv", "png")}
    # Each under a temporary name, renamed when whole: a killed or disk-full run leaves
    # the previous report, never a truncated one.
    write_text(paths["json"], json.dumps(results, indent=2, default=_json_default) + "\n")
    up = speedups(results["rows"])
    flat = [flat_row(r, up.get(r["name"])) for r in results["rows"]]
    flat += [flat_row(r) for r in results.get("device_rows") or []]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(flat)
    write_text(paths["csv"], table.getvalue())
    with atomic_path(paths["png"]) as tmp:
        plot(results, flat, tmp)
    return paths


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def plot(results: dict, flat: list, path: str) -> None:
    """Latency (p50, whisker to p90) against AP when AP was measured, else latency bars."""
    import matplotlib  # deferred: the plot is optional, the table and JSON are not
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred, as above
    timed = [f for f in flat if f["p50_ms"] is not None]
    cfg, load = results["config"], results["machine"]["load_average_start"]
    fig, ax = plt.subplots(figsize=(8, 0.5 * max(len(timed), 4) + 1.5))
    with_ap = [f for f in timed if f["AP"] is not None]
    if with_ap:
        markers = "osD^vP*Xhp"
        for i, f in enumerate(with_ap):
            ax.errorbar(f["p50_ms"], f["AP"], xerr=[[0], [max(0.0, f["p90_ms"] - f["p50_ms"])]],
                        fmt=markers[i % len(markers)], capsize=3, label=f["name"])
        ax.legend(fontsize=8)
        ax.set_xlabel("latency p50 (ms), whisker to p90")
        ax.set_ylabel("COCO AP")
        if max(f["p50_ms"] for f in with_ap) > 10 * min(f["p50_ms"] for f in with_ap):
            ax.set_xscale("log")
    else:
        names = [f["name"] for f in timed]
        p50 = np.array([f["p50_ms"] for f in timed])
        p90 = np.array([f["p90_ms"] for f in timed])
        colors = ["tab:blue" if f["host"] else "tab:orange" for f in timed]
        ax.barh(names, p50, xerr=[np.zeros_like(p50), np.maximum(p90 - p50, 0)], color=colors,
                capsize=3)
        ax.invert_yaxis()
        ax.set_xlabel("latency p50 (ms), whisker to p90; orange: device results")
    ax.set_title(f"{results['spec']} {results['image_size'][0]}x{results['image_size'][1]}, "
                 f"batch {cfg['batch']}, {cfg['threads']} threads (load avg {load[0]:.1f})",
                 fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
