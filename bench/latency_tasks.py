"""What ``python -m bench.latency_model`` does, one function per subcommand: fit a model on
this machine (or from a device's timings of the designed files), evaluate models on
held-out specs, and tabulate latency against FLOPs from D0 to D7x.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass

import numpy as np

from bench import exports, latency_designs
from bench import latency_fit as fit
from bench import latency_measure as lm
from bench.device import load_device_results
from bench.harness import set_tf_threads
from edetgraph.graph import latency, latency_model
from edetgraph.graph.spec import from_dict, load_spec

MANIFEST = "edetgraph.latency_designed/1"
REPORT = "edetgraph.latency_eval/1"
PHI_SPECS = ("d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7", "d7x")


@dataclass(frozen=True)
class FitRequest:
    backend: str
    out: str
    threads: int = 2
    work: str = "out/latency"
    passes: int = 2
    seed: int = 0
    quick: bool = False


def _sets(req: FitRequest):
    designs = latency_designs.quick_set() if req.quick else latency_designs.designed_set(req.seed)
    tiny = latency_designs.quick_specs() if req.quick else latency_designs.tiny_specs()
    return designs, tiny


def designed_record(designs, tiny, seed: int, quick: bool) -> dict:
    """What a model was fitted on, in the model file (enough to rebuild every graph)."""
    return {"version": latency_designs.VERSION, "seed": seed, "quick": quick,
            "designs": [d.as_dict() for d in designs],
            "tiny_specs": [{"name": n, "spec": s.to_dict(), "digest": exports.spec_digest(s)}
                           for n, s in tiny]}


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def load_warning(loads, cpus: int | None = None) -> str | None:
    """A warning when the machine was busier than it has CPUs while timing: every figure is
    then inflated by the other work, and a model fitted so over-predicts a quiet machine (a
    fit at load 7 on 2 CPUs predicted 1.7x to 2.9x what a quiet one measured)."""
    cpus = cpus or usable_cpus()
    median = float(np.median(loads)) if len(loads) else 0.0
    if median <= cpus:
        return None
    return (f"the 1-minute load average was {median:.1f} (median) on {cpus} CPUs while timing:"
            f" other work inflated these figures; measure again on a quiet machine")


def fit_here(req: FitRequest) -> latency_model.LatencyModel:
    """Measure the designed set and the small networks on ``req.backend`` here, then fit."""
    start = time.perf_counter()
    set_tf_threads(req.threads)
    designs, tiny = _sets(req)
    lm.say(f"{req.backend}: {len(designs)} designed graphs and {len(tiny)} small networks, "
           f"{req.threads} threads, {req.passes} pass(es); cache "
           f"{os.path.join(req.work, 'measurements.jsonl')}")
    cache = lm.Cache(os.path.join(req.work, "measurements.jsonl"), {"cpu": lm.machine()})
    subs = lm.design_subjects(designs, req.backend, req.threads, req.work)
    wholes = [lm.spec_subject(n, s, req.backend, req.threads, req.work) for n, s in tiny]
    plan = lm.Plan(passes=req.passes)
    d_rec = lm.measure(subs, cache, plan, f"{req.backend} designed set")
    w_rec = lm.measure(wholes, cache, lm.Plan(passes=req.passes, group=4, budget_s=4.0),
                       f"{req.backend} small networks")
    loads = [r["load1"] for recs in (*d_rec.values(), *w_rec.values()) for r in recs]
    warning = load_warning(loads)
    if warning:
        lm.say(f"WARNING: {warning}")
    info = {"runtime": lm.runtime_version(req.backend),
            "measurement": {"passes": req.passes, "statistic": f"{lm.QUANTILE}th percentile of "
                            "interleaved calls, passes pooled", "load1_min": min(loads),
                            "load1_median": float(np.median(loads)), "load1_max": max(loads),
                            "cpus": usable_cpus(), "warning": warning},
            "op_kinds": fit.op_kinds_used(subs)}
    model = fit.fit_model(req.backend, req.threads, lm.machine(), lm.FUSES[req.backend],
                          subs, [lm.best(d_rec[s.name]) for s in subs],
                          wholes, [lm.best(w_rec[w.name]) for w in wholes],
                          designed_record(designs, tiny, req.seed, req.quick), info,
                          cpu=latency_model.this_cpu())
    model.info["fit_wall_s"] = round(time.perf_counter() - start, 1)
    latency_model.save(model, req.out)
    return model


def export_designed(req: FitRequest, out_dir: str, runs: int = 30, warmup: int = 5) -> str:
    """The designed set's files (and the small networks') for a device, a manifest naming
    each by its SHA-256, and a script running bench/device_runner.py on all of them."""
    designs, tiny = _sets(req)
    subs = lm.design_subjects(designs, req.backend, req.threads, req.work)
    subs += [lm.spec_subject(n, s, req.backend, req.threads, req.work) for n, s in tiny]
    files = []
    os.makedirs(out_dir, exist_ok=True)
    for i, s in enumerate(subs):
        src = s.make_file()
        name = f"{s.name}{os.path.splitext(src)[1]}"
        shutil.copyfile(src, os.path.join(out_dir, name))
        files.append({"file": name, "name": s.name, "kind": "spec" if "spec" in s.key
                      else "design", "sha256": exports.file_facts(src)["sha256"]})
        if (i + 1) % 20 == 0:
            lm.say(f"exported {i + 1}/{len(subs)} files to {out_dir}")
    manifest = {"schema": MANIFEST, "backend": req.backend, "threads": req.threads,
                "fuses": {a: list(p) for a, p in lm.FUSES[req.backend].items()},
                "designed_set": designed_record(designs, tiny, req.seed, req.quick),
                "files": files}
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    script = os.path.join(out_dir, "run_on_device.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\n# Time every designed file on this device (needs python3, numpy "
                "and one runtime), then bring results/ back:\n#   python -m "
                "bench.latency_model fit --from-device results/ --designed THIS_FOLDER\n"
                f"# usage: sh run_on_device.sh [path/to/device_runner.py] [threads]\n"
                f'RUNNER="${{1:-device_runner.py}}"; THREADS="${{2:-{req.threads}}}"\n'
                'cd "$(dirname "$0")"; mkdir -p results\n'
                f"for f in {' '.join(x['file'] for x in files)}; do\n"
                f'  python3 "$RUNNER" "$f" --threads "$THREADS" --runs {runs} --warmup '
                f'{warmup} --out "results/$f.json" > /dev/null || exit 1\ndone\n')
    return script


def _find_manifest(results, designed: str | None) -> str:
    cands = [designed] if designed else []
    for r in results:
        r = os.path.abspath(r)
        base = r if os.path.isdir(r) else os.path.dirname(r)
        cands += [base, os.path.dirname(base)]
    for c in cands:
        if c and os.path.isfile(os.path.join(c, "manifest.json")):
            return os.path.join(c, "manifest.json")
    raise ValueError("no manifest.json of the designed files found (give --designed DIR, the "
                     "folder --export-designed wrote)")


def fit_from_device(results, designed: str | None, out: str) -> latency_model.LatencyModel:
    """A model from device_runner results of the files ``export_designed`` wrote."""
    path = _find_manifest(results, designed)
    with open(path) as f:
        man = json.load(f)
    if man.get("schema") != MANIFEST:
        raise ValueError(f"{path}: not a designed-set manifest (schema {man.get('schema')!r})")
    rows = load_device_results(list(results))
    by_sha = {r["sha256"]: r for r in rows}
    backend, fuses = man["backend"], {a: tuple(p) for a, p in man["fuses"].items()}
    rec = man["designed_set"]
    designs = [latency_designs.Design(d["name"], d["motif"], tuple(sorted(
        (k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()
        if k not in ("name", "motif")))) for d in rec["designs"]]
    tiny = [(t["name"], from_dict(t["spec"])) for t in rec["tiny_specs"]]
    subs = lm.design_subjects(designs, backend, man["threads"], "", fuses)
    wholes = [lm.spec_subject(n, s, backend, man["threads"], "", fuses) for n, s in tiny]
    sha = {f["name"]: f["sha256"] for f in man["files"]}
    missing = [s.name for s in subs + wholes if sha.get(s.name) not in by_sha]
    if len(missing) > len(subs) // 2:
        raise ValueError(f"results cover too few designed files ({len(missing)} of "
                         f"{len(subs) + len(wholes)} missing, e.g. {missing[0]})")
    subs = [s for s in subs if s.name not in missing]
    wholes = [w for w in wholes if w.name not in missing]
    first = by_sha[sha[subs[0].name]]
    label = f"{backend}@{first['label']}"
    info = {"runtime": first["runtime"], "device_results": sorted({r["source"] for r in rows}),
            "missing": missing, "measurement": {"statistic": "device_runner's median"},
            "op_kinds": fit.op_kinds_used(subs)}
    model = fit.fit_model(label, int(first["threads"] or man["threads"]), first["device"], fuses,
                          subs, [by_sha[sha[s.name]]["p50_ms"] for s in subs],
                          wholes, [by_sha[sha[w.name]]["p50_ms"] for w in wholes], rec, info)
    latency_model.save(model, out)
    return model


# ---------------------------------------------------------------- evaluation

def _by_spec(todo, measure_pass, size):
    """Evaluation groups: one spec, all its backends interleaved; specs in a new order."""
    groups: dict = {}
    for s in todo:
        groups.setdefault(s.info["spec"], []).append(s)
    order = list(groups)
    np.random.default_rng(measure_pass).shuffle(order)
    return [groups[k] for k in order]


def measure_specs(models, names, work: str, passes: int, runs: int) -> dict:
    """(backend, spec name) -> measured ms, every spec's backends timed interleaved."""
    cache = lm.Cache(os.path.join(work, "measurements.jsonl"), {"cpu": lm.machine()})
    subjects = [lm.spec_subject(n, load_spec(n), m.backend, m.threads, work, m.fuses)
                for n in names for m in models]
    for s in subjects:
        s.name = f"{s.info['backend']}:{s.info['spec']}"
    plan = lm.Plan(passes=passes, warmup=2, min_runs=runs, max_runs=runs, budget_s=0.0)
    rec = lm.measure(subjects, cache, plan, "evaluation", grouping=_by_spec)
    return {(s.info["backend"], s.info["spec"]): {"ms": lm.best(rec[s.name]),
                                                  "load1": [r["load1"] for r in rec[s.name]],
                                                  "flops": s.info["flops"]}
            for s in subjects}


def in_fitting(model, spec) -> bool:
    digest = exports.spec_digest(spec)
    return any(t.get("digest") == digest for t in model.designed_set.get("tiny_specs", []))


def evaluate(models, names, work: str, passes: int = 2, runs: int = 7) -> dict:
    """Predicted against measured for each model and spec, in one session."""
    start, load0 = time.perf_counter(), os.getloadavg()
    for m in models:
        if m.backend not in lm.FORMATS:
            raise ValueError(f"{m.source}: backend {m.backend!r} cannot be measured here "
                             f"(host backends: {', '.join(lm.FORMATS)})")
    set_tf_threads(models[0].threads)
    measured = measure_specs(models, names, work, passes, runs)
    rows = []
    for m in models:
        for n in names:
            spec = load_spec(n)
            p = latency_model.predict(spec, m)
            got = measured[(m.backend, n)]
            rows.append({"backend": m.backend, "spec": n, "gflops": got["flops"] / 1e9,
                         "predicted_ms": p["total_ms"], "measured_ms": got["ms"],
                         "error_pct": 100 * (p["total_ms"] - got["ms"]) / got["ms"],
                         "load1": got["load1"], "in_fitting": in_fitting(m, spec),
                         "by_component_ms": p["by_component"]})
    summ = {m.backend: fit.summary([r for r in rows if r["backend"] == m.backend
                                    and not r["in_fitting"]]) for m in models}
    warning = load_warning([x for r in rows for x in r["load1"]])
    if warning:
        lm.say(f"WARNING: {warning}")
    fitted_busy = [f"{m.source}: {m.info['measurement']['warning']}" for m in models
                   if (m.info.get("measurement") or {}).get("warning")]
    for w in fitted_busy:
        lm.say(f"WARNING: fitted busy, {w}")
    return {"warning": warning, "fitted_busy": fitted_busy, "schema": REPORT, "machine": lm.machine(), "models": [
        {"file": m.source, "backend": m.backend, "threads": m.threads, "fitted": m.fitted,
         "machine": m.machine} for m in models], "passes": passes, "runs": runs,
        "statistic": f"{lm.QUANTILE}th percentile of interleaved calls, passes pooled",
        "load_average_start": list(load0), "load_average_end": list(os.getloadavg()),
        "wall_s": round(time.perf_counter() - start, 1), "rows": rows, "summary": summ}


def format_evaluation(rep: dict) -> str:
    lines = []
    for m in rep["models"]:
        b = m["backend"]
        lines += [f"{b} ({m['threads']} threads; model {m['file']})",
                  f"{'spec':<30}{'GFLOPs':>8}{'predicted':>11}{'measured':>10}{'error':>9}"]
        for r in [r for r in rep["rows"] if r["backend"] == b]:
            note = "  (in fitting set)" if r["in_fitting"] else ""
            lines.append(f"{r['spec']:<30}{r['gflops']:>8.2f}{r['predicted_ms']:>9.1f}ms"
                         f"{r['measured_ms']:>8.1f}ms{r['error_pct']:>+8.1f}%{note}")
        s = rep["summary"][b]
        if s["count"]:
            lines.append(f"held out: {s['count']} specs, median |error| "
                         f"{s['median_abs_error_pct']:.1f} %, worst {s['worst_abs_error_pct']:.1f} %")
        lines.append("")
    la, lb = rep["load_average_start"], rep["load_average_end"]
    lines.append(f"measured {rep['passes']} pass(es) x {rep['runs']} interleaved runs "
                 f"({rep['statistic']}) in {rep['wall_s']:.0f} s; load average "
                 f"{la[0]:.1f} -> {lb[0]:.1f}; {rep['machine']}")
    return "\n".join(lines)


def markdown_evaluation(rep: dict) -> str:
    out = ["| backend | spec | GFLOPs | predicted ms | measured ms | error |",
           "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rep["rows"]:
        note = " (fit)" if r["in_fitting"] else ""
        out.append(f"| {r['backend']} | {r['spec']}{note} | {r['gflops']:.2f} | "
                   f"{r['predicted_ms']:.1f} | {r['measured_ms']:.1f} | {r['error_pct']:+.1f} % |")
    out.append("")
    for b, s in rep["summary"].items():
        if s["count"]:
            out.append(f"- {b}: {s['count']} held-out specs, median |error| "
                       f"{s['median_abs_error_pct']:.1f} %, worst {s['worst_abs_error_pct']:.1f} %")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- D0 .. D7x

def phi_table(models, measured: dict, names=PHI_SPECS) -> list[dict]:
    """Rows of latency against FLOPs: predicted for every spec, measured where ``measured``
    ((backend, spec) -> ms) has it."""
    rows = []
    for n in names:
        spec = load_spec(n)
        row = {"spec": n, "image_size": list(spec.image_size)}
        for m in models:
            p = latency_model.predict(spec, m)
            row[m.backend] = {"predicted_ms": p["total_ms"],
                              "measured_ms": measured.get((m.backend, n))}
        row["gflops"] = sum(o.float_ops for o in latency.spec_ops(spec)) / 2e9
        rows.append(row)
    return rows


def markdown_phi_table(rows, models) -> str:
    head = "| spec | input | GFLOPs | FLOPs / D0 |"
    rule = "| --- | --- | ---: | ---: |"
    for m in models:
        head += f" {m.backend} ms | source | ms / D0 | ms per GFLOP |"
        rule += " ---: | --- | ---: | ---: |"
    out = [head, rule]
    base = rows[0]
    for r in rows:
        line = (f"| {r['spec']} | {r['image_size'][0]} | {r['gflops']:.1f} | "
                f"{r['gflops'] / base['gflops']:.1f} |")
        for m in models:
            v, v0 = r[m.backend], base[m.backend]
            ms = v["measured_ms"] if v["measured_ms"] is not None else v["predicted_ms"]
            ms0 = v0["measured_ms"] if v0["measured_ms"] is not None else v0["predicted_ms"]
            src = "measured" if v["measured_ms"] is not None else "predicted"
            extra = (f" (pred {v['predicted_ms']:.0f})" if v["measured_ms"] is not None else "")
            line += (f" {ms:.0f}{extra} | {src} | {ms / ms0:.1f} | {ms / r['gflops']:.1f} |")
        out.append(line)
    return "\n".join(out) + "\n"
