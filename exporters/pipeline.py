"""The one export flow every format goes through: build -> convert -> parity gate -> AP
check -> stage and rename.

    summary = export(spec, "d0.onnx", OnnxFormat(OnnxOptions(opset=17)), ExportOptions())

A format (``exporters.onnx_format``, ``exporters.tflite_format``,
``exporters.saved_model_format``) supplies what differs: its in-graph post-processing, its
conversion, how its file is written and run, the tolerance kind it is judged by, and the
format-specific parts of the summary; it may also replace the gate with its own check. The
flow owns the rest, identically for all: the model with its weights, the serving function,
the parity gate against TF (raw outputs, float64 reference, in-graph detections), the
optional AP check, and the staged output that only becomes the user's file, with its
summary JSON beside it, once every check passed.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace

from edetgraph.task.serving import make_serving_fn
from edetgraph.task.weights import model_with_weights
from edetgraph.verify import accuracy
from edetgraph.verify.accuracy import format_ap
from edetgraph.verify.coverage import summary_line as coverage_line
from edetgraph.verify.gate import run_gate
from edetgraph.verify.parity import (ParityError, ParityGate, format_parity, sqnr_db,
                                      tolerance_for)
from edetgraph.verify.runners import RunnerError, make_runner
from edetgraph.verify.ties import NmsRule
from edetgraph.files import disk_full_message, is_disk_full, is_real_folder, refuse_folder
from exporters.cli import log
from exporters.model_facts import labels_of, strict_json
from exporters.options import ExportFailed, ExportOptions

SCHEMA = "edetgraph.export/1"


class Format:
    """What one export format supplies to :func:`export`; subclasses fill in the rest."""
    name = ""              # summary "format"
    prog = ""              # the command's name in progress lines
    runner = ""            # verify.runners kind that runs the written file
    runner_options: dict = {}  # ... and its options (e.g. a SavedModel signature)
    target = "tf"          # the op forms the network is lowered to (edetgraph.nn.targets)
    writes_folder = False  # the file is a folder (a SavedModel): it may replace one
    versions: tuple = ()   # distributions recorded in the summary

    def build(self, spec, opts: ExportOptions):
        """``(model, weights record)``: checkpoint or seeded random weights."""
        return model_with_weights(spec, opts.ckpt, opts.seed)

    def lowering(self, opts: ExportOptions):
        """The lowering target (a name or an ``edetgraph.nn.targets.Target``) for ``opts``."""
        return self.target

    def kind(self) -> str:
        """The numeric kind whose parity tolerance and AP bound judge the file."""
        return "fp32"

    def head(self, spec, opts: ExportOptions):
        """In-graph post-processing ``raw outputs -> dict``, or None for raw head outputs."""
        return None

    def nms_rule(self, spec, opts: ExportOptions) -> NmsRule | None:
        """The NMS of :meth:`head`, for the gate to judge tied scores by (None: none)."""
        return None

    def box_scale(self, spec, opts: ExportOptions):
        """``[h, w, h, w]`` when :meth:`head`'s boxes are fractions of the input (None:
        network pixels)."""
        return None

    def describe(self, opts: ExportOptions) -> str:
        """The progress line printed before converting."""
        raise NotImplementedError

    def convert(self, serve, model, spec, opts: ExportOptions, say):
        """The converted model (whatever :meth:`write` takes)."""
        raise NotImplementedError

    def write(self, converted, path: str) -> None:
        raise NotImplementedError

    def probe(self, model, spec, serve, path: str, opts: ExportOptions):
        """Extra tensors the gate compares, a ``edetgraph.verify.gate.Probe`` (None: nothing)."""
        return None

    def options(self, opts: ExportOptions, converted) -> dict:
        """The summary's ``options`` section."""
        raise NotImplementedError

    def facts(self, converted, path: str, runner) -> dict:
        """Format-specific summary sections after ``outputs`` (``ops``, ``runtime``...)."""
        return {}

    def check(self, converted, path: str) -> dict | None:
        """A check of the format's own after the gate (None: none); raises ExportFailed."""
        return None

    def coverage(self, path: str, opts: ExportOptions) -> dict:
        """Which runtime paths run the file (``edetgraph.verify.coverage`` reports by name)."""
        return {}

    def companions(self, path: str) -> list:
        """Files written beside ``path`` that belong to it (an OpenVINO IR's .bin)."""
        return []

    def finish(self, path: str, summary: dict) -> None:
        """After the gate passed: metadata that only then is known (the ONNX file's parity
        summary); it must not change what the file computes."""


@dataclass
class _Job:
    """What the steps of one export share."""
    spec: object
    fmt: Format
    opts: ExportOptions
    say: object
    model: object = None
    weights: dict = None
    serve: object = None       # the reference: TF's op forms
    converted: object = None   # what is converted: the target's op forms
    head: object = None


def export(spec, out: str, fmt: Format, opts: ExportOptions) -> dict:
    """Build, convert, gate, and keep ``out`` only if every check passes; returns the summary.

    Raises ExportFailed (nothing written) when conversion or the parity gate fails, or, with
    ``opts.eval``, when the file loses more AP than its kind allows.
    """
    start = time.perf_counter()
    job = _build(_Job(spec, fmt, opts, (lambda m: log(fmt.prog, m)) if opts.verbose
                      else (lambda m: None)))
    job.say(fmt.describe(opts))
    t0 = time.perf_counter()
    converted = fmt.convert(job.converted, job.model, spec, opts, job.say)
    timings = {"convert_s": time.perf_counter() - t0}
    try:
        return _stage_gate_keep(job, out, converted, timings, start)
    except Exception as e:   # OSError, or TF's own error for a SavedModel
        if is_disk_full(e):
            raise ExportFailed(f"{disk_full_message(os.path.dirname(os.path.abspath(out)))}; "
                               f"{out} not written") from None
        raise


def _stage_gate_keep(job: _Job, out: str, converted, timings: dict, start: float) -> dict:
    """Write the file under a temporary name, gate it, and keep it only if it passed."""
    spec, fmt, opts = job.spec, job.fmt, job.opts
    with StagedOutput(out, replace_folder=fmt.writes_folder) as staged:
        fmt.write(converted, staged.path)
        try:
            runner = make_runner(fmt.runner, staged.path, opts.gate.threads,
                                 **fmt.runner_options)
        except RunnerError as e:
            raise ExportFailed(str(e).replace(staged.path, out)) from None
        t0 = time.perf_counter()
        parity = _parity(job, staged.path, runner)
        timings.update(parity_s=time.perf_counter() - t0, total_s=time.perf_counter() - start)
        summary = _summary(job, staged, converted, runner, parity, timings)
        summary["coverage"] = fmt.coverage(staged.path, opts)
        for report in summary["coverage"].values():
            line = coverage_line(report)
            if line:
                log(fmt.prog, f"WARNING: {line}")
        if parity["passed"]:
            own = fmt.check(converted, staged.path)
            if own is not None:
                summary["check"] = own
        check_accuracy(summary, spec, job.serve, runner.run, fmt.kind(), opts, job.say,
                       fmt.box_scale(spec, opts))
        if fmt.kind() != "fp32" and opts.eval is None:
            summary["accuracy_unverified"] = unverified(parity, opts.ap_measured_by)
            if not opts.ap_measured_by:
                log(fmt.prog, f"WARNING: {summary['accuracy_unverified']['why']}")
        staged.companions = fmt.companions(staged.path)
        if summary["parity"]["passed"]:
            fmt.finish(staged.path, summary)
            summary["file"].update(file_facts(staged.path, staged.companions))
        keep_if_passed(staged, summary, out)
    return summary


def _build(job: _Job) -> _Job:
    """The model with its weights and the serving function to convert."""
    opts = job.opts
    labels, source = labels_of(job.spec, opts)   # the names the file will carry
    job.opts = opts = replace(opts, card=replace(opts.card, labels=tuple(sorted(labels.items())),
                                                 labels_source=source))
    job.say(f"building {job.spec.name} ("
            f"{f'random weights, seed {opts.seed}' if opts.ckpt is None else opts.ckpt})")
    job.model, job.weights = job.fmt.build(job.spec, opts)
    job.head = job.fmt.head(job.spec, opts)
    job.serve = make_serving_fn(job.model, job.spec, opts.batch, opts.input, job.head)
    job.converted = make_serving_fn(job.model, job.spec, opts.batch, opts.input, job.head,
                                    target=job.fmt.lowering(opts))
    return job


def _parity(job: _Job, path: str, runner) -> dict:
    """The parity gate: the file against TF on the gate's inputs (raw outputs, or the
    in-graph detections plus the format's probe), float64 where the tolerance asks."""
    job.say("parity gate: running the file and TF on the same inputs")
    spec, opts = job.spec, job.opts
    gate = ParityGate(tolerance_for(job.fmt.kind(), opts.gate.atol, opts.gate.float64_factor),
                      spec.num_classes, max(spec.image_size), job.fmt.nms_rule(spec, opts))
    try:
        return run_gate(gate, job.serve, runner.run, spec, opts.input, opts.batch,
                        opts.gate.random_inputs, detections=job.head is not None,
                        probe=job.fmt.probe(job.model, spec, job.serve, path, opts),
                        model=job.model, box_scale=job.fmt.box_scale(spec, opts),
                        head=job.head)
    except ParityError as e:
        raise ExportFailed(str(e)) from None


def _summary(job: _Job, staged, converted, runner, parity: dict, timings: dict) -> dict:
    """The summary JSON written beside the file (keys are a contract: see the README)."""
    info = runner.info()
    return {"schema": SCHEMA, "format": job.fmt.name,
            "file": {"path": staged.out,
                     **file_facts(staged.path, job.fmt.companions(staged.path))},
            "spec": job.spec.name, "spec_source": job.spec.source, "weights": job.weights,
            "labels": {str(k): v for k, v in job.opts.card.labels},
            "labels_source": job.opts.card.labels_source,
            "options": job.fmt.options(job.opts, converted),
            "inputs": info["inputs"], "outputs": info["outputs"],
            **job.fmt.facts(converted, staged.path, runner), "parity": parity,
            "timings": timings, "versions": versions(*job.fmt.versions)}


def check_accuracy(summary: dict, spec, serve, run_file, kind: str, opts: ExportOptions,
                   say, box_scale=None) -> None:
    """With ``opts.eval``: COCO AP of the file and of TF under ``summary["accuracy"]``
    (:func:`keep_if_passed` then refuses a file that lost too much)."""
    ev = opts.eval
    if ev is None:
        return
    say("AP check: running the file and TF on the annotated images of " + ev.data)
    t0 = time.perf_counter()
    annotations = ev.annotations or os.path.join(ev.data, "instances.json")
    summary["accuracy"] = accuracy.measure(spec, serve, run_file, ev.data, annotations,
                                           opts.input, opts.batch or 1, kind, ev.images,
                                           ev.nms, ev.max_ap_drop, say, box_scale)
    summary["timings"]["ap_check_s"] = time.perf_counter() - t0


def unverified(parity: dict, measured_by: str | None = None) -> dict:
    """What a quantised file without --eval-data can say of its accuracy: nothing measured,
    and the SQNR of each head on the parity pictures (``sqnr_db``), and of each of its levels
    on its own (``sqnr_db_levels``); ``measured_by``: who measures its AP after the export
    (not a warning then)."""
    sqnr = {h: sqnr_db(f["nrmse"]) for h, f in parity["heads"].items()}
    levels = {h: {lvl: f["sqnr_db"] for lvl, f in by_level.items()}
              for h, by_level in (parity.get("levels") or {}).items()}
    text = ", ".join(f"{h} {v} dB" for h, v in sqnr.items() if v is not None)
    if measured_by:
        return {"verified": False, "sqnr_db": sqnr, "sqnr_db_levels": levels,
                "measured_by": measured_by,
                "why": f"AP not measured by the export: {measured_by} measures it (SQNR per "
                       f"head on the parity pictures: {text or 'n/a'})"}
    return {"verified": False, "sqnr_db": sqnr, "sqnr_db_levels": levels,
            "why": f"accuracy UNVERIFIED: no --eval-data, so the AP this file loses is not "
                   f"measured (SQNR per head on the parity pictures: {text or 'n/a'})"}


# ----------------------------------------------------------------- staged files and summary

class StagedOutput:
    """A temporary path beside ``out``: renamed to ``out`` by :meth:`commit`, deleted otherwise.

    The temporary file sits in a hidden ``.NAME.*.partial`` folder in the output directory
    (same file system, so the rename is atomic), so a failed or interrupted export leaves
    nothing that looks like a model. ``out`` may also be a folder (a SavedModel), which then
    replaces the folder there (the caller checks that it may).
    """

    def __init__(self, out: str, replace_folder: bool = False):
        self.out = os.path.abspath(out)
        self.replace_folder = replace_folder
        name = os.path.basename(self.out)
        self._dir = tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial",
                                     dir=os.path.dirname(self.out))
        self.path = os.path.join(self._dir, name)
        self.companions: list = []      # staged files moved beside ``out`` with it

    def commit(self, summary: dict) -> None:
        """Move the file into place and write the summary JSON beside it."""
        staged_json = self.path + ".json"
        with open(staged_json, "w") as f:
            json.dump(strict_json(summary), f, indent=2, allow_nan=False)
            f.write("\n")
        targets = [self.out + ".json"] + [os.path.join(os.path.dirname(self.out),
                                                       os.path.basename(e)) for e in self.companions]
        for target in targets + ([] if self.replace_folder else [self.out]):
            refuse_folder(target)           # a user's folder there is never removed
        if is_real_folder(self.out):   # a SavedModel folder (checked by its CLI): moved aside
            os.replace(self.out, self.path + ".old")
        for extra in self.companions:
            os.replace(extra, os.path.join(os.path.dirname(self.out), os.path.basename(extra)))
        os.replace(self.path, self.out)
        os.replace(staged_json, self.out + ".json")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self._dir, ignore_errors=True)
        return False


def keep_if_passed(staged: StagedOutput, summary: dict, out: str) -> None:
    """Commit the staged file and its summary, or print the figures and raise ExportFailed."""
    parity = summary["parity"]
    if not parity["passed"]:
        print(format_parity(parity))
        more = len(parity["failures"]) - 1
        raise ExportFailed(f"parity gate failed, {out} not written: {parity['failures'][0]}"
                           + (f" (+{more} more)" if more else ""))
    result = summary.get("accuracy")
    if result is not None and not result["passed"]:
        raise ExportFailed(f"AP check failed, {out} not written: {format_ap(result)}")
    staged.commit(summary)


def file_facts(path: str, companions=()) -> dict:
    """Size and SHA-256 of a file (and of the ``companions`` that belong to it, e.g. an
    OpenVINO IR's .bin); of a folder, the total size and a digest over its files' relative
    paths and contents."""
    digest = hashlib.sha256()
    files = [path, *companions] if os.path.isfile(path) else sorted(
        os.path.join(d, f) for d, _, names in os.walk(path) for f in names)
    for name in files:
        if name != path and not os.path.isfile(path):
            digest.update(os.path.relpath(name, path).encode() + b"\0")
        with open(name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return {"bytes": sum(os.path.getsize(f) for f in files), "sha256": digest.hexdigest()}


def versions(*distributions: str) -> dict:
    out = {}
    for name in distributions:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def format_summary(s: dict) -> str:
    """The human-readable summary printed after a successful export."""
    mb = s["file"]["bytes"] / 2 ** 20
    lines = [f"wrote {s['file']['path']} ({mb:.2f} MB) in {s['timings']['total_s']:.1f} s "
             f"(conversion {s['timings']['convert_s']:.1f} s); parity gate passed "
             f"({s['parity']['tolerance']['name']})"]
    for kind in ("inputs", "outputs"):
        for t in s[kind]:
            q = f" quant(scale={t['quantization'][0]:.6g}, zero={t['quantization'][1]})" \
                if t.get("quantization") else ""
            lines.append(f"  {kind[:-1]:6s} {t['name']}: {t['dtype']} {list(t['shape'])}{q}")
    if s.get("ops"):
        ops = ", ".join(f"{k} {v}" for k, v in sorted(s["ops"].items(), key=lambda kv: -kv[1]))
        lines.append(f"  ops ({sum(s['ops'].values())}): {ops}")
    for name, report in (s.get("coverage") or {}).items():
        lines.append(f"  coverage {name}: {format_coverage(report)}")
    lines.extend("  " + line for line in format_parity(s["parity"]).splitlines())
    if s.get("accuracy"):
        lines.append("  " + format_ap(s["accuracy"]))
    if s.get("accuracy_unverified"):
        lines.append("  " + s["accuracy_unverified"]["why"])
    triage = (s.get("options") or {}).get("triage")
    if triage:
        lines.append(f"  int8 triage: {len(triage['float_layers'])} of "
                     f"{triage['layers_measured']} layers kept float32 for an AP loss within "
                     f"{triage['bound_points']:g} points")
        lines.extend(f"    {f['layer']}: {f['why']}" for f in triage["float_layers"][:10])
    lines.append(f"  summary: {s['file']['path']}.json")
    return "\n".join(lines)


def format_coverage(report: dict) -> str:
    """One line of a coverage report (edetgraph.verify.coverage)."""
    line = coverage_line(report)
    if line:
        return line
    if "partitions" in report:
        return f"one {report['delegate']} partition, all {report['nodes']} nodes delegated"
    if "compatible" in report:
        return "compatible" if report["compatible"] else "; ".join(report["warnings"])
    if "nodes" in report:
        return ", ".join(f"{n} nodes on {p}" for p, n in report["nodes"].items())
    if "layers" in report:
        return ", ".join(f"{n} layers in {p}" for p, n in report["layers"].items())
    return str(report)


def run(spec, out: str, fmt: Format, opts: ExportOptions) -> int:
    """What a command does after its checks: export, print the summary, exit status 0."""
    summary = export(spec, out, fmt, opts)
    print(format_summary(summary))
    return 0

