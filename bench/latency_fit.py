"""Fitting a latency model to measured times, and judging one on specs it never saw.

Stage 1 (the designed set): every measured graph is a sum of its ops plus a per-call cost,
``t = sum_op coef[key] . features(op) + call . (1, in bytes, out bytes)``, linear in the
coefficients; they are found by non-negative least squares on the relative error (a
0.05 ms graph weighs as much as a 50 ms one; negative costs are not physical). Stage 2
(small whole networks): ``t - call = scale * sum(op ms) + per_op * ops``, two numbers that
carry what single ops do not show (a whole network's cache traffic, dispatch between many
ops), fitted the same way.
"""
from __future__ import annotations

import datetime

import numpy as np

from edetgraph.graph.latency_model import (
    CALL_FEATURES,
    LatencyModel,
    call_features,
    call_ms,
    op_ms,
    predict_ops,
)

# Candidate sizes beyond which bytes count as spilled to DRAM (the fit keeps the best).
CACHE_SIZES = tuple(2 ** k * 2 ** 20 for k in range(0, 7))      # 1 MB .. 64 MB


def nnls(a: np.ndarray, b: np.ndarray, max_iter: int = 500) -> np.ndarray:
    """Lawson-Hanson non-negative least squares: argmin ||a x - b|| with x >= 0."""
    m, n = a.shape
    x, active = np.zeros(n), np.zeros(n, bool)
    tol = 10 * np.finfo(float).eps * np.abs(a).sum(0).max() * max(m, n)
    w = a.T @ (b - a @ x)
    for _ in range(max_iter):
        free = ~active
        if not free.any() or w[free].max() <= tol:
            break
        active[np.argmax(np.where(free, w, -np.inf))] = True
        while True:
            z = np.zeros(n)
            z[active] = np.linalg.lstsq(a[:, active], b, rcond=None)[0]
            if (z[active] > tol).all():
                x = z
                break
            neg = active & (z <= tol)
            alpha = np.min(x[neg] / np.maximum(x[neg] - z[neg], 1e-300))
            x = x + alpha * (z - x)
            active &= x > tol
            x[~active] = 0.0
        w = a.T @ (b - a @ x)
    return x


def _rows(subjects, cache_bytes: int) -> tuple[list, np.ndarray]:
    """Column names and the summed features of every subject."""
    sums = []
    for s in subjects:
        acc = {("call", f): v for f, v in
               call_features(s.in_bytes, s.out_bytes, cache_bytes).items()}
        for op in s.ops:
            for f, v in op.features(cache_bytes).items():
                if v:
                    acc[(op.key, f)] = acc.get((op.key, f), 0.0) + v
        sums.append(acc)
    cols = sorted({c for acc in sums for c in acc})
    return cols, np.array([[acc.get(c, 0.0) for c in cols] for acc in sums])


def fit_kinds(subjects, times_ms, cache_bytes: int) -> tuple[dict, dict, float]:
    """``(kinds, call, rms relative error)`` from the designed graphs' times (stage 1)."""
    cols, x = _rows(subjects, cache_bytes)
    t = np.asarray(times_ms, float)
    a = x / t[:, None]                          # relative error: each row divided by its time
    norm = np.linalg.norm(a, axis=0)
    norm[norm == 0] = 1.0
    coef = nnls(a / norm, np.ones(len(t))) / norm
    rms = float(np.sqrt(np.mean((a @ coef - 1.0) ** 2)))
    kinds: dict = {}
    call = {f: 0.0 for f in CALL_FEATURES}
    for (key, f), c in zip(cols, coef):
        if key == "call":
            call[f] = float(c)
        else:
            kinds.setdefault(key, {})[f] = float(c)
    return kinds, call, rms


def fit_graph_terms(subjects, times_ms, model: LatencyModel) -> tuple[float, float]:
    """``(scale, per_op)`` from whole networks (stage 2); ``(1, 0)`` with fewer than two."""
    if len(subjects) < 2:
        return 1.0, 0.0
    t = np.asarray(times_ms, float)
    ops_ms = np.array([sum(op_ms(o, model) for o in s.ops) for s in subjects])
    n = np.array([len(s.ops) for s in subjects], float)
    rest = t - np.array([call_ms(model, s.in_bytes, s.out_bytes) for s in subjects])
    a = np.stack([ops_ms, n], 1) / t[:, None]
    norm = np.linalg.norm(a, axis=0)
    scale, per_op = nnls(a / norm, rest / t) / norm
    return (float(scale), float(per_op)) if scale > 0 else (1.0, 0.0)


def errors(subjects, times_ms, model: LatencyModel) -> list[dict]:
    """Predicted against measured for each subject, error in % of the measured time."""
    out = []
    for s, t in zip(subjects, times_ms):
        p = predict_ops(s.ops, model, s.in_bytes, s.out_bytes)["total_ms"]
        out.append({"name": s.name, "measured_ms": float(t), "predicted_ms": p,
                    "error_pct": 100.0 * (p - t) / t, **s.info})
    return out


def summary(rows: list[dict]) -> dict:
    e = np.abs([r["error_pct"] for r in rows]) if rows else np.zeros(0)
    return {"count": len(rows), "median_abs_error_pct": float(np.median(e)) if len(e) else None,
            "p90_abs_error_pct": float(np.percentile(e, 90)) if len(e) else None,
            "worst_abs_error_pct": float(e.max()) if len(e) else None}


def fit_model(backend: str, threads: int, machine: str, fuses: dict, designs, d_times,
              wholes, w_times, designed_set: dict, info: dict, cpu: dict | None = None
              ) -> LatencyModel:
    """Both stages, and the fit's own statistics in ``info["fit"]``. The cache size is the
    one of ``CACHE_SIZES`` that fits the designed set best. ``cpu``: the measuring CPU
    (``this_cpu()`` for a fit on this machine; None for a device's results)."""
    fits = {c: fit_kinds(designs, d_times, c) for c in CACHE_SIZES}
    cache = min(fits, key=lambda c: fits[c][2])
    kinds, call, _ = fits[cache]
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    cpu = cpu or {}
    model = LatencyModel(backend, threads, machine, stamp, kinds, call, fuses, cache,
                         designed_set=designed_set, info=info, cpu=cpu)
    stage1 = errors(designs, d_times, model)
    scale, per_op = fit_graph_terms(wholes, w_times, model)
    whole_before = errors(wholes, w_times, model)
    model = LatencyModel(backend, threads, machine, stamp, kinds, call, fuses, cache, scale,
                         per_op, designed_set, info, cpu=cpu)
    whole = errors(wholes, w_times, model)
    model.info["fit"] = {
        "cache_rms_by_size": {str(c): round(f[2], 4) for c, f in fits.items()},
        "designs": summary(stage1), "whole_networks_stage1_only": summary(whole_before),
        "whole_networks": summary(whole), "whole_network_rows": whole,
        "worst_designs": sorted(stage1, key=lambda r: -abs(r["error_pct"]))[:10]}
    return model


def op_kinds_used(subjects) -> dict:
    counts: dict = {}
    for s in subjects:
        for op in s.ops:
            counts[op.key] = counts.get(op.key, 0) + 1
    return counts

