"""The benchmark harness: export what is missing, then run every backend on the same inputs
and measure parity with TF, detection agreement, AP, latency, load time and memory.

    results = run_benchmark(BenchConfig(spec=load_spec("d0"), out="bench_out"))

Backends (``bench.config.TABLE``): ``tf`` (the model's ``tf.function``), ``tf-xla`` (the
same, ``jit_compile=True``), ``onnxruntime``, OpenVINO ``openvino-fp32``, ``openvino-bf16``
(the ONNX file) and ``openvino-int8`` (NNCF), on LiteRT ``tflite-fp32``, ``tflite-fp16``,
``tflite-int8`` and ``tflite-int8-fh`` (int8 with the class/box heads kept float32), and the
end-to-end rows (``bench.e2e``); foreign models with ``--peer``. Every requested backend ends
with a row whose status is ``ok``, ``skipped`` or ``failed``, with the reason; a quantised
row whose measured AP loss exceeds its kind's bound is ``failed``.
The TF model is built once here with the exporters' weights (checkpoint, or the seeded
random weights of ``edetgraph.task.weights.model_with_weights``), so TF is the reference for
every file. Latency is measured interleaved (``bench.latency``); see ``describe_method``.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import tensorflow as tf

from bench import e2e, exports, probes, quality
from bench.config import (BACKENDS, FILE_BACKENDS, TABLE, TOLERANCE, BenchConfig, Progress,
                          runtime_missing)
from bench.device import load_device_results
from bench.latency import describe_method, measure_interleaved, measure_peak_memory
from bench.report import NOTES
from edetgraph.task.coco import to_coco_results
from edetgraph.task.serving import make_serving_fn
from edetgraph.task.weights import model_with_weights
from edetgraph.verify.accuracy import Postprocessor, coco_ap
from edetgraph.verify.datasets import check_eval_data
from edetgraph.verify.detections import agreement, in_pixels, match_detections
from edetgraph.verify import coverage
from edetgraph.verify.exact import ExactReference
from edetgraph.verify.images import eval_batches, parity_batches
from edetgraph.verify.parity import AP_DROP
from edetgraph.verify.runners import make_runner

SCHEMA = "edetgraph.bench/1"


def plan_rows(backends, peers=None) -> dict:
    """One row per requested backend (unknown names are skipped with the reason), then one
    per peer file."""
    rows = {}
    for name in backends:
        row = {"name": name, "backend": name, "host": True, "status": "pending", "reason": None}
        if name not in BACKENDS:
            row.update(status="skipped", reason=f"unknown backend '{name}' (known: "
                                                f"{', '.join(BACKENDS)})")
        elif name != "tf" and name != "tf-xla":
            missing = runtime_missing(name)
            if missing:
                row.update(status="skipped", reason=missing)
        rows[name] = row
    for name, path in (peers or {}).items():
        rows[name] = {"name": name, "backend": "peer", "host": True, "status": "pending",
                      "reason": None, "file": os.path.abspath(path), "peer": True}
    return rows


def _fail(row: dict, step: str, exc: BaseException) -> None:
    text = str(exc).strip().splitlines()
    row.update(status="failed", reason=f"{step}: {(text[0] if text else type(exc).__name__)[:300]}")


def _pending(rows: dict) -> list:
    return [n for n, r in rows.items() if r["status"] == "pending"]


def set_tf_threads(threads: int) -> str:
    """Intra-op threads = ``threads``, inter-op 1 (ops run one after another, as the other
    runtimes do); only possible before TensorFlow's runtime starts. Returns what applies."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(1)
        return str(threads)
    except RuntimeError:
        return f"{threads} (not applied: TensorFlow was already initialised in this process)"


def _tf_runners(model, serve, cfg, rows, tf_threads, say) -> dict:
    """The TF reference runner (always made), and tf-xla when asked; times the first call."""
    h, w = cfg.spec.image_size
    fns = {"tf": serve}
    if "tf-xla" in _pending(rows):
        sig = [tf.TensorSpec([cfg.batch, h, w, 3], tf.float32, name="images")]
        fns["tf-xla"] = tf.function(model.raw_outputs, input_signature=sig, jit_compile=True,
                                    autograph=False)
    if "tf-e2e" in _pending(rows):
        fns["tf-e2e"] = e2e.reference(model, cfg.spec, "soft", cfg.batch)
    runners = {}
    for name, fn in fns.items():
        say(f"{name}: tracing" + (" and XLA-compiling" if name == "tf-xla" else ""))
        x = np.zeros((cfg.batch, h, w, 3), np.uint8 if TABLE[name].e2e else np.float32)
        try:
            runner = make_runner("tf", None, None, fn=fn)
            start = time.perf_counter()
            runner.run(x)
            runner.load_seconds = time.perf_counter() - start
        except Exception as exc:  # a TF/XLA error of any type: reported in the row
            if name not in rows:
                raise
            _fail(rows[name], "tracing", exc)
            continue
        runners[name] = runner
        if name in rows:
            rows[name].update(runtime="tensorflow", runtime_version=tf.__version__,
                              threads=tf_threads, load_s=runner.load_seconds, file=None,
                              file_bytes=None)
    return runners


def _file_runners(cfg, rows, say) -> dict:
    """Export (or reuse) and load each file backend still pending."""
    runners = {}
    for name in _pending(rows):
        if name not in FILE_BACKENDS:
            continue
        try:
            path = exports.ensure_export(cfg, name, rows[name], say)
        except Exception as exc:  # ExportFailed, or a converter crash: reported in the row
            _fail(rows[name], "export", exc)
            continue
        b = TABLE[name]
        try:
            runner = make_runner(b.runner, path, cfg.threads,
                                 **({"precision": b.precision} if b.precision else {}))
        except Exception as exc:
            _fail(rows[name], "load", exc)
            continue
        rows[name]["coverage"] = _coverage(b, path, runner)
        if b.quant == "int8" and cfg.triage_data:
            rows[name]["triage"] = exports.triage_of(path)
        info = runner.info()
        rows[name].update(file=path, file_bytes=info["file_bytes"], runtime=info["runtime"],
                          runtime_version=info["runtime_version"], threads=cfg.threads,
                          load_s=runner.load_seconds, accelerator=info["accelerator"])
        runners[name] = runner
    return runners


def _coverage(b, path: str, runner) -> dict | None:
    """The row's runtime coverage: the export summary's report for the runtime it runs on,
    or (OpenVINO reading the ONNX file) the compiled model's."""
    if b.runner == "openvino":
        return coverage.openvino(runner.compiled, b.quant or b.precision or "f32")
    try:
        with open(path + ".json") as f:
            reports = json.load(f).get("coverage") or {}
    except (OSError, ValueError):
        return None
    return reports.get({"tflite": "xnnpack", "onnxruntime": "onnxruntime"}.get(b.runner, ""))


def _peer_runners(cfg, rows, say) -> dict:
    """Load each foreign model of --peer (its rows have no parity: nothing to compare)."""
    runners = {}
    for name in [n for n in _pending(rows) if rows[n].get("peer")]:
        try:
            runner = e2e.peer_runner(rows[name]["file"], cfg.threads)
        except Exception as exc:
            _fail(rows[name], "load", exc)
            continue
        info = runner.info()
        rows[name].update(file_bytes=info["file_bytes"], runtime=info["runtime"],
                          runtime_version=info["runtime_version"], threads=cfg.threads,
                          load_s=runner.load_seconds, accelerator=info["accelerator"],
                          parity={"tolerance": "n/a", "passed": None,
                                  "why": "a foreign model: parity does not apply"})
        runners[name] = runner
        say(f"{name}: peer {rows[name]['file']} ({info['runtime']})")
    return runners


def _check_quality(cfg, model, runners, rows, say) -> Postprocessor:
    """Parity and detection agreement of every runner against the TF reference (and, for
    float32 backends, of both against the model run in float64: edetgraph.verify.exact)."""
    inputs = parity_batches(cfg.spec, "float", cfg.batch, cfg.random_inputs, cfg.seed)
    ref = [runners["tf"].run(x) for _, x, _ in inputs]
    exact = None
    if any(n != "tf" and TOLERANCE.get(n, "fp32") == "fp32"
           for n in _pending(rows) if n in runners):
        reference = ExactReference(model, cfg.spec)
        exact = [reference(x) for _, x, _ in inputs]
    detector = Postprocessor(cfg.spec, {k: v.shape for k, v in ref[0].items()}, cfg.nms)
    real = [i for i, item in enumerate(inputs) if item[2]]
    ref_dets = {i: detector(ref[i]) for i in real}
    say(f"parity and detection agreement on {len(inputs)} batch(es) "
        f"({', '.join(lab for labels, _, _ in inputs for lab in labels)})")
    for name in [n for n in _raw_rows(rows) if n in runners]:
        try:
            if name == "tf":  # the reference itself
                got, rows[name]["parity"] = ref, quality.REFERENCE
            else:
                got = [runners[name].run(x) for _, x, _ in inputs]
                wide = exact if TOLERANCE.get(name, "fp32") == "fp32" else None
                rows[name]["parity"] = quality.raw_parity(name, ref, got, inputs, wide,
                                                          num_classes=cfg.spec.num_classes)
            rows[name]["detections"] = agreement(
                [match_detections(ref_dets[i], detector(got[i])) for i in real])
        except Exception as exc:
            _fail(rows[name], "parity", exc)
    return detector


def _raw_rows(rows) -> list:
    """Pending rows whose backends give raw head outputs (not e2e rows, not peers)."""
    return [n for n in _pending(rows) if n in TABLE and not TABLE[n].e2e]


def _e2e_rows(rows) -> list:
    return [n for n in _pending(rows) if n in TABLE and TABLE[n].e2e]


def _check_e2e(cfg, model, runners, rows, say) -> dict:
    """End-to-end rows: detection agreement with TF under the same NMS on the real
    pictures; their parity is the exporters' gate, read from the export summary."""
    names = [n for n in _e2e_rows(rows) if n in runners]
    refs = {nms: e2e.runner(e2e.reference(model, cfg.spec, nms, cfg.batch))
            for nms in sorted({e2e.nms_of(n) for n in names})}
    real = [x for _, x, real in parity_batches(cfg.spec, "uint8", cfg.batch, 0, cfg.seed) if real]
    for name in names:
        try:
            ref = refs[e2e.nms_of(name)]
            rows[name]["detections"] = agreement(
                [match_detections(ref.run(x), runners[name].run(x)) for x in real])
            rows[name]["parity"] = (quality.REFERENCE if name == "tf-e2e"
                                    else _export_parity(rows[name]))
            rows[name]["nms"] = e2e.nms_of(name)
        except Exception as exc:
            _fail(rows[name], "parity", exc)
    return refs


def _export_parity(row: dict) -> dict:
    """An end-to-end file's parity: what its exporter's gate found (detections one to one
    for fp32 files, the detection op's inputs for TFLite)."""
    with open(row["file"] + ".json") as f:
        gate = json.load(f)["parity"]
    worst = max(gate["outputs"].values(), key=lambda o: o["max_abs"], default=None)
    return {"max_abs": worst["max_abs"] if worst else None,
            "max_rel": worst["max_rel"] if worst else None,
            "tolerance": gate["tolerance"]["name"], "passed": gate["passed"],
            "failures": gate["failures"][:3], "why": "the exporter's gate (export summary)"}


def _evaluate_ap(cfg, runners, rows, detector, say) -> dict | None:
    """COCO AP of every raw-output runner on --data, one pass over the images shared by
    all; returns TF's AP, the reference the rows are judged against (measured even when
    ``tf`` is not a row of the table)."""
    names = [n for n in _raw_rows(rows) if n in runners]
    reference = ["tf"] if names and "tf" not in names and "tf" in runners else []
    dets, ids = {n: [] for n in names + reference}, []
    for batch_ids, x, scales in eval_batches(cfg.data, cfg.annotations, cfg.spec, "float",
                                             cfg.batch, cfg.max_images):
        for name in [n for n in names if rows[n]["status"] == "pending"] + reference:
            try:
                dets[name] += to_coco_results(detector(runners[name].run(x), scales), batch_ids)
            except Exception as exc:
                if name not in rows:
                    raise
                _fail(rows[name], "AP", exc)
        ids += batch_ids
        if len(ids) % 50 < cfg.batch:
            say(f"AP: {len(ids)} image(s) detected by {len(names)} backend(s)")
    say(f"AP: {len(ids)} image(s) detected by {len(names)} backend(s), scoring")
    for name in [n for n in names if rows[n]["status"] == "pending"]:
        rows[name]["ap"] = coco_ap(cfg.annotations, dets[name], ids)
    if reference:
        return coco_ap(cfg.annotations, dets["tf"], ids)
    return (rows.get("tf") or {}).get("ap")


def _evaluate_ap_e2e(cfg, runners, rows, refs, say) -> None:
    """COCO AP of the end-to-end rows and of TF under each of their NMS, on the uint8
    pictures the files take (boxes back to original pixels with the letterbox scale)."""
    names = [n for n in _e2e_rows(rows) if n in runners]
    if not names:
        return
    who = {**{n: runners[n] for n in names}, **{f"tf/{k}": r for k, r in refs.items()}}
    dets, ids = {n: [] for n in who}, []
    for batch_ids, x, scales in eval_batches(cfg.data, cfg.annotations, cfg.spec, "uint8",
                                             cfg.batch, cfg.max_images):
        for n, r in who.items():
            nms = n[3:] if n.startswith("tf/") else e2e.nms_of(n)
            out = in_pixels({k: np.asarray(v) for k, v in r.run(x).items()},
                            e2e.box_scale(nms, cfg.spec))
            out["boxes"] = out["boxes"] * scales[:, None, None]
            dets[n] += to_coco_results(out, batch_ids)
        ids += batch_ids
    say(f"AP end to end: {len(ids)} image(s), scoring")
    aps = {n: coco_ap(cfg.annotations, d, ids) for n, d in dets.items()}
    for name in names:
        rows[name]["ap"] = aps[name]
        rows[name]["ap_reference"] = {"nms": e2e.nms_of(name), **aps[f"tf/{e2e.nms_of(name)}"]}


def _judge_accuracy(cfg, rows, tf_ap) -> None:
    """AP loss against TF (``tf_ap``; end-to-end rows: TF under the same NMS) within the
    kind's bound, else the row fails; without --data, quantised rows say their accuracy is
    unverified and give their SQNR per head."""
    for name in _pending(rows):
        b = TABLE.get(name)
        if b is None or name in ("tf", "tf-e2e"):
            continue
        ref = rows[name].get("ap_reference") or tf_ap
        ap = rows[name].get("ap")
        if ap is not None and ref is not None:
            drop, bound = 100.0 * (ref["AP"] - ap["AP"]), AP_DROP.get(b.kind, 0.1)
            rows[name]["accuracy"] = {"ap_drop_points": drop, "max_ap_drop_points": bound,
                                      "passed": drop <= bound}
            if drop > bound:
                rows[name].update(status="failed", reason=f"AP {ap['AP']:.4f} is {drop:.2f} "
                                  f"points below TF's {ref['AP']:.4f}; a {b.kind} file may "
                                  f"lose at most {bound:g}")
        elif b.kind != "fp32":
            nrmse = (rows[name].get("parity") or {}).get("nrmse") or {}
            rows[name]["accuracy"] = {"verified": False, "why": "no --data to measure AP on",
                                      "sqnr_db": {h: _sqnr(v) for h, v in nrmse.items()}}


def _sqnr(nrmse) -> float | None:
    """Signal-to-quantisation-noise ratio in dB from RMSE / std."""
    return None if not nrmse else float(-20.0 * np.log10(nrmse))


def _measure_latency(cfg, runners, rows, progress) -> None:
    timed = {n: runners[n] for n in _pending(rows) if n in runners}
    if not timed:
        return
    progress(f"latency: {cfg.warmup} warm-up + {cfg.runs} interleaved runs of "
             f"{', '.join(timed)}")
    x = parity_batches(cfg.spec, "float", cfg.batch, 0, cfg.seed)[0][1]  # street.jpg
    pixels = parity_batches(cfg.spec, "uint8", cfg.batch, 0, cfg.seed)[0][1]

    def make_input(name):
        if rows[name].get("peer"):
            return e2e.peer_input(timed[name], cfg.seed)
        return pixels if TABLE[name].e2e else x

    stats = measure_interleaved(timed, make_input, warmup=cfg.warmup, runs=cfg.runs,
                                progress=progress.rounds)
    for name, s in stats.items():
        rows[name]["latency"] = s


def _measure_memory(cfg, rows, say) -> None:
    """Peak RSS of each ok backend in a fresh subprocess (see NOTES["memory"])."""
    for name in _pending(rows):
        say(f"memory: {name} in a subprocess")
        try:
            if rows[name].get("peer"):
                rows[name]["memory"] = measure_peak_memory(
                    e2e.kind_for_path(rows[name]["file"]), rows[name]["file"], cfg.threads,
                    runs=3)
            elif name in FILE_BACKENDS:
                b = TABLE[name]
                rows[name]["memory"] = measure_peak_memory(
                    b.runner, rows[name]["file"], cfg.threads, runs=3,
                    **({"precision": b.precision} if b.precision else {}))
            else:
                rows[name]["memory"] = probes.tf_peak_memory(cfg.spec, cfg.threads, cfg.batch,
                                                              xla=name == "tf-xla")
        except Exception as exc:  # memory is a figure, not a verdict: keep the row ok
            rows[name]["memory"] = {"error": str(exc).strip().splitlines()[0][:300]}


def config_record(cfg) -> dict:
    """The run's options as JSON-able values."""
    return {"backends": list(cfg.backends), "ckpt": cfg.ckpt, "seed": cfg.seed,
            "threads": cfg.threads, "runs": cfg.runs, "warmup": cfg.warmup, "batch": cfg.batch,
            "data": cfg.data, "annotations": cfg.annotations, "max_images": cfg.max_images,
            "representative": cfg.representative, "calibration_images": cfg.calibration_images,
            "nms": cfg.nms, "random_inputs": cfg.random_inputs, "out": os.path.abspath(cfg.out),
            "device_results": list(cfg.device_results)}


def run_benchmark(cfg: BenchConfig, progress: Progress | None = None) -> dict:
    """Run the whole benchmark and return the results (see bench.report for the files)."""
    progress = progress or Progress()
    start, load_before = time.perf_counter(), os.getloadavg()
    device_rows = load_device_results(list(cfg.device_results)) if cfg.device_results else []
    if cfg.data:
        check_eval_data(cfg.data, cfg.annotations)
    os.makedirs(cfg.out, exist_ok=True)
    rows = plan_rows(cfg.backends, cfg.peers)
    tf_threads = set_tf_threads(cfg.threads)
    progress(f"building {cfg.spec.name} at {cfg.spec.image_size[0]}x{cfg.spec.image_size[1]} "
             f"({'random weights, seed %d' % cfg.seed if cfg.ckpt is None else cfg.ckpt})")
    t0 = time.perf_counter()
    model, weights = model_with_weights(cfg.spec, cfg.ckpt, cfg.seed)
    build_s = time.perf_counter() - t0
    serve = make_serving_fn(model, cfg.spec, cfg.batch, "float")
    runners = _tf_runners(model, serve, cfg, rows, tf_threads, progress)
    runners.update(_file_runners(cfg, rows, progress))
    runners.update(_peer_runners(cfg, rows, progress))
    detector = _check_quality(cfg, model, runners, rows, progress)
    refs = _check_e2e(cfg, model, runners, rows, progress)
    tf_ap = None
    if cfg.data:
        tf_ap = _evaluate_ap(cfg, runners, rows, detector, progress)
        _evaluate_ap_e2e(cfg, runners, rows, refs, progress)
    _judge_accuracy(cfg, rows, tf_ap)
    _measure_latency(cfg, runners, rows, progress)
    if cfg.memory:
        _measure_memory(cfg, rows, progress)
    for row in rows.values():
        if row["status"] == "pending":
            row["status"] = "ok"
    return {"schema": SCHEMA, "spec": cfg.spec.name, "spec_source": cfg.spec.source,
            "spec_args": cfg.spec_args, "image_size": list(cfg.spec.image_size),
            "weights": weights, "config": config_record(cfg),
            "labels": {str(k): v for k, v in cfg.labels}, "labels_source": cfg.labels_source,
            "machine": probes.machine_record(load_before, os.getloadavg()),
            "model_build_s": build_s, "total_s": time.perf_counter() - start,
            "method": describe_method(cfg.warmup, cfg.runs), "notes": NOTES,
            "rows": list(rows.values()), "device_rows": device_rows}
