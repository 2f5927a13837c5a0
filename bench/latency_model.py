"""Latency models per backend: fit one on this machine, judge it on specs it never saw, and
tabulate latency against FLOPs from D0 to D7x.

    python -m bench.latency_model fit --backend tflite-fp32            # -> out/latency/tflite-fp32.json
    python -m bench.latency_model fit --backend onnxruntime --threads 2 --out ort.json
    python -m bench.latency_model evaluate --model out/latency/tflite-fp32.json out/latency/onnxruntime.json \\
        --specs d0 d1 d2 d3 lite0 lite1 lite2 --out out/latency/heldout.md
    python -m bench.latency_model table --model out/latency/*.json --measured out/latency/heldout.json
    python -m edetgraph.inspect --spec d0 --latency out/latency/tflite-fp32.json   # predict

fit times a designed set (about 230 small graphs made of the network's own parts: MBConv
blocks, fusion nodes, resampling, heads, chains of 1x1 / depthwise convs, activations and
adds, at shapes from the early large-map layers to the late wide ones) and 8 small whole
networks on the backend, each as a file made by the exporters' converters, and fits per op
kind a linear cost in FLOPs (multiply-adds), bytes in / out / of weights, plus a per-call
cost; then a scale and a per-op term from the small networks. Measurements go to a cache
(--work/measurements.jsonl) as they are made, so a killed fit resumes; the model file is
written atomically. For a device: fit --export-designed DIR writes the files, a manifest
and run_on_device.sh (bench/device_runner.py on each); bring its results/ back and run
fit --from-device DIR/results.

evaluate measures each spec on every model's backend, interleaved, in one session, and
prints predicted against measured ms with the error; specs used in fitting are marked and
left out of the median and worst. table prints D0..D7x (or --specs) with FLOPs and
latency: measured where a report (--measured) or --measure has it, else predicted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from edetgraph.cli import OneLineParser, first_line
from edetgraph.graph import latency_model
from edetgraph.files import write_text
from edetgraph.graph.spec import SpecError, load_spec

HOST_BACKENDS = ("tf", "onnxruntime", "openvino-fp32", "tflite-fp32", "tflite-fp16",
                 "tflite-int8")
PHI_SPECS = ("d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7", "d7x")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m bench.latency_model", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    f = sub.add_parser("fit", help="measure the designed set and write a model file")
    f.add_argument("--backend", choices=HOST_BACKENDS, help="host backend to fit")
    f.add_argument("--out", metavar="FILE.json", help="model file (default WORK/BACKEND.json)")
    f.add_argument("--threads", type=int, default=2, help="threads (default 2, as bench.run)")
    f.add_argument("--passes", type=int, default=2,
                   help="times each graph is timed, at different moments (default 2)")
    f.add_argument("--seed", type=int, default=0, help="seed of the designed set (default 0)")
    f.add_argument("--quick", action="store_true",
                   help="a handful of tiny graphs and one small network (a smoke test)")
    f.add_argument("--export-designed", metavar="DIR",
                   help="write the designed files for a device instead of measuring here")
    f.add_argument("--from-device", nargs="+", metavar="RESULTS",
                   help="fit from bench/device_runner.py results (files or folders) of the "
                   "files --export-designed wrote")
    f.add_argument("--designed", metavar="DIR", help="with --from-device: the folder "
                   "--export-designed wrote (default: found beside the results)")
    e = sub.add_parser("evaluate", help="predicted against measured on held-out specs")
    e.add_argument("--model", nargs="+", required=True, metavar="FILE")
    e.add_argument("--specs", nargs="+", required=True, metavar="SPEC")
    e.add_argument("--out", metavar="REPORT.json|.md",
                   help="write the report (a .md also gets its .json beside it)")
    e.add_argument("--passes", type=int, default=2, help="passes over the specs (default 2)")
    e.add_argument("--runs", type=int, default=7, help="interleaved runs per pass (default 7)")
    t = sub.add_parser("table", help="latency against FLOPs, D0..D7x")
    t.add_argument("--model", nargs="+", required=True, metavar="FILE")
    t.add_argument("--specs", nargs="+", default=list(PHI_SPECS), metavar="SPEC")
    t.add_argument("--measured", nargs="+", default=[], metavar="REPORT.json",
                   help="evaluate reports whose measurements fill the measured column")
    t.add_argument("--measure", nargs="+", default=[], metavar="SPEC",
                   help="measure these specs now (e.g. d4) besides --measured")
    t.add_argument("--out", metavar="TABLE.md", help="write the table (and a .json beside)")
    for s in (f, e, t):
        s.add_argument("--work", default="out/latency", metavar="DIR",
                       help="exports, designed files and the measurement cache (%(default)s)")
    return p


def _problem(args) -> str | None:
    if args.command == "fit":
        if bool(args.backend) == bool(args.from_device):
            return "fit needs exactly one of --backend or --from-device"
        if args.threads < 1 or args.passes < 1:
            return "--threads and --passes must be at least 1"
        if args.export_designed and args.backend == "tf":
            return "--export-designed: the tf backend has no files to export"
        for path in args.from_device or []:
            if not os.path.exists(path):
                return f"{path}: no such file or folder"
        return None
    if getattr(args, "passes", 1) < 1 or getattr(args, "runs", 1) < 1:
        return "--passes and --runs must be at least 1"
    for path in args.model + getattr(args, "measured", []):
        if not os.path.isfile(path):
            return f"{path}: no such file"
    return None


def _load_models(paths):
    models = [latency_model.load(p) for p in paths]
    backends = [m.backend for m in models]
    if len(set(backends)) < len(backends):
        raise ValueError(f"two models for the same backend: {', '.join(backends)}")
    return models


def _write(out: str, text: str, data: dict) -> list:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    stem = out[:-3] if out.endswith(".md") else out[:-5] if out.endswith(".json") else out
    write_text(stem + ".json", json.dumps(data, indent=1))
    written = [stem + ".json"]
    if out.endswith(".md"):
        write_text(out, text)
        written.append(out)
    return written


def _fit(args) -> int:
    from bench import latency_tasks as tasks  # deferred: TensorFlow starts once a request is valid
    if args.from_device:
        out = args.out or os.path.join(args.work, "device.json")
        model = tasks.fit_from_device(args.from_device, args.designed, out)
    else:
        req = tasks.FitRequest(args.backend, args.out or os.path.join(
            args.work, f"{args.backend}.json"), args.threads, args.work, args.passes, args.seed,
            args.quick)
        if args.export_designed:
            script = tasks.export_designed(req, args.export_designed)
            print(f"wrote the designed files, manifest.json and {script}; on the device: "
                  f"sh {os.path.basename(script)} device_runner.py {args.threads}, then "
                  f"fit --from-device {os.path.join(args.export_designed, 'results')}")
            return 0
        model, out = tasks.fit_here(req), req.out
    s = model.info["fit"]
    print(f"wrote {out}: {model.backend}, {model.threads} threads, {len(model.kinds)} op kinds; "
          f"designed set median |error| {s['designs']['median_abs_error_pct']:.1f} % (worst "
          f"{s['designs']['worst_abs_error_pct']:.1f} %); small networks scale "
          f"{model.scale:.3f}, per op {model.per_op * 1e3:.1f} us, median |error| "
          f"{s['whole_networks']['median_abs_error_pct'] or 0:.1f} %"
          + (f"; {model.info['fit_wall_s']:.0f} s" if "fit_wall_s" in model.info else ""))
    return 0


def _evaluate(args) -> int:
    models = _load_models(args.model)
    for name in args.specs:
        load_spec(name)
    from bench import latency_tasks as tasks  # deferred: TensorFlow starts once a request is valid
    rep = tasks.evaluate(models, args.specs, args.work, args.passes, args.runs)
    print(tasks.format_evaluation(rep))
    if args.out:
        print("wrote " + ", ".join(_write(args.out, tasks.markdown_evaluation(rep), rep)))
    return 0


def _table(args) -> int:
    models = _load_models(args.model)
    for name in args.specs + args.measure:
        load_spec(name)
    measured = {}
    for path in args.measured:
        with open(path) as f:
            rep = json.load(f)
        measured.update({(r["backend"], r["spec"]): r["measured_ms"] for r in rep.get("rows", [])})
    from bench import latency_tasks as tasks  # deferred: TensorFlow starts once a request is valid
    if args.measure:
        got = tasks.measure_specs(models, args.measure, args.work, 1, 3)
        measured.update({k: v["ms"] for k, v in got.items()})
    rows = tasks.phi_table(models, measured, args.specs)
    text = tasks.markdown_phi_table(rows, models)
    print(text)
    if args.out:
        print("wrote " + ", ".join(_write(args.out, text, {"rows": rows})))
    return 0


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    problem = _problem(args)
    if problem:
        p.error(problem)
    try:
        return {"fit": _fit, "evaluate": _evaluate, "table": _table}[args.command](args)
    except (latency_model.LatencyModelError, SpecError, ValueError, OSError) as e:
        print(f"{p.prog}: error: {first_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
