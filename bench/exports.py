"""The files the benchmark runs: exported on demand into the output folder, reused when the
exporter's summary and a small key beside it say they were made from the same spec,
weights and options.

The exporter summary (``FILE.json``) records spec name, weights and options; it does not
record the spec's content, so ``FILE.bench.json`` adds a digest of the resolved spec (a
``--set`` override changes it), the checkpoint's size and modification time, and a digest
of the code that makes and checks the files (the ``edetgraph`` and ``exporters`` sources):
a file written by an older exporter is made again, never timed as if it were current.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os

from bench.config import TABLE, Backend
from edetgraph.data.synthetic import generate
from edetgraph.files import write_text
from edetgraph.verify.ncnn_runner import companions as ncnn_companions
from exporters.mnn_format import MnnFormat
from exporters.mnn_quant import MnnQuantOptions
from exporters.ncnn_format import NcnnFormat
from exporters.onnx_format import OnnxFormat
from exporters.openvino_format import OpenVinoFormat
from exporters.options import (EvalOptions, ExportOptions, GateOptions, ModelCard, OnnxOptions,
                               OpenVinoOptions, TFLiteOptions)
from exporters.pipeline import export, file_facts
from exporters.tflite_format import TFLiteFormat

OPSET = 17
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def export_path(cfg, backend: str) -> str:
    """``OUT/<spec>_<H>x<W>_b<batch><suffix>``, e.g. efficientdet-d0_512x512_b1_int8.tflite."""
    h, w = cfg.spec.image_size
    suffix = TABLE[backend].suffix
    return os.path.join(os.path.abspath(cfg.out), f"{cfg.spec.name}_{h}x{w}_b{cfg.batch}{suffix}")


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over the Python sources of the packages that lower, export and gate a file
    (read once per process: every backend's reuse check asks for it)."""
    digest = hashlib.sha256()
    for package in ("edetgraph", "exporters"):
        root = os.path.join(ROOT, package)
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(f for f in files if f.endswith(".py")):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, ROOT).encode() + b"\0")
                with open(path, "rb") as f:
                    digest.update(f.read() + b"\0")
    return digest.hexdigest()


def spec_digest(spec) -> str:
    text = json.dumps(spec.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _wanted(cfg, backend: str, representative: str | None) -> dict:
    """What the exporter summary and the key must say for a file to be reused."""
    b = TABLE[backend]
    options = {"batch": cfg.batch, "input": "uint8" if b.e2e else "float",
               "postprocess": _postprocess(b)}
    options.update({"quant": b.quant} if b.export in ("tflite", "openvino") or b.quant else {})
    options.update({"opset": OPSET} if b.export in ("onnx", "openvino", "mnn", "ncnn") else {})
    if b.quant == "int8":
        options.update(representative_data=representative,
                       calibration_images=cfg.calibration_images)
    if b.export == "tflite" and b.quant == "int8":
        options.update(float_heads=b.float_heads)
    triage = _triage(cfg, b)
    weights = ({"source": "random", "seed": cfg.seed} if cfg.ckpt is None
               else {"source": os.path.abspath(cfg.ckpt)})
    ckpt_stat = None
    if cfg.ckpt is not None and os.path.exists(cfg.ckpt):
        st = os.stat(cfg.ckpt)
        ckpt_stat = [st.st_size, int(st.st_mtime)]
    return {"spec": cfg.spec.name, "options": options, "weights": weights,
            "key": {"spec_sha256": spec_digest(cfg.spec), "ckpt_stat": ckpt_stat,
                    "code_sha256": code_digest(),
                    "triage": None if triage is None else {
                        "data": os.path.abspath(triage.data),
                        "annotations": os.path.abspath(triage.annotations),
                        "images": triage.images, "nms": triage.nms,
                        "max_ap_drop": triage.max_ap_drop},
                    "labels": {str(k): v for k, v in cfg.labels}}}


def stale_reason(path: str, wanted: dict) -> str | None:
    """Why the file at ``path`` cannot be reused (None: it can)."""
    try:
        with open(path + ".json") as f:
            summary = json.load(f)
        with open(path + ".bench.json") as f:
            key = json.load(f)
    except (OSError, ValueError):
        return "no export yet"
    companions = _companions(path)
    if not all(os.path.isfile(p) for p in [path, *companions]) or \
            file_facts(path, companions)["sha256"] != summary.get("file", {}).get("sha256"):
        return "the file does not match its summary"
    if not summary.get("parity", {}).get("passed"):
        return "its parity gate did not pass"
    if key.get("code_sha256") != wanted["key"]["code_sha256"]:
        return "made by other edetgraph code"
    if key.get("triage") != wanted["key"]["triage"]:
        return "another int8 triage request"
    if summary.get("spec") != wanted["spec"] or key != wanted["key"]:
        return "the spec or checkpoint changed"
    if any(summary.get("weights", {}).get(k) != v for k, v in wanted["weights"].items()):
        return "other weights"
    opts = summary.get("options", {})
    if any(opts.get(k) != v for k, v in wanted["options"].items()):
        return "other export options"
    return None


def reusable(cfg, backend: str) -> str | None:
    """The path of an up-to-date float file for ``backend`` if there is one (None: it
    needs exporting), without starting TensorFlow."""
    path = export_path(cfg, backend)
    return path if stale_reason(path, _wanted(cfg, backend, None)) is None else None


def ensure_export(cfg, backend: str, row: dict, say) -> str:
    """Path of an up-to-date file for ``backend``, exporting it when needed.

    Raises whatever the exporter raises (ExportFailed when its parity gate fails).
    ``row`` gets ``export``: reused or not, why, and the export time.
    """
    path = export_path(cfg, backend)
    representative = representative_source(cfg, say) if TABLE[backend].quant == "int8" else None
    wanted = _wanted(cfg, backend, representative)
    why = stale_reason(path, wanted)
    if why is None:
        say(f"{backend}: reusing {path}")
        row["export"] = {"reused": True, "summary": path + ".json"}
        return path
    say(f"{backend}: exporting {os.path.basename(path)} ({why})")
    companions = _companions(path)
    for stale in (path, path + ".json", path + ".bench.json", *companions):
        if os.path.exists(stale):
            os.remove(stale)  # never run a file that no longer matches the request
    b = TABLE[backend]
    if cfg.triage_data and cfg.data and b.quant == "int8" and \
            os.path.abspath(cfg.triage_data) == os.path.abspath(cfg.data):
        say("warning: the int8 triage measures AP on the --data images the table reports, "
            "which flatters int8's AP; pass --triage-data with other annotated images")
    opts = ExportOptions(ckpt=cfg.ckpt, seed=cfg.seed, batch=cfg.batch,
                         input="uint8" if b.e2e else "float", postprocess=_postprocess(b),
                         gate=GateOptions(threads=cfg.threads), eval=_triage(cfg, b),
                         # the harness measures every row's AP on --data: no false warning
                         ap_measured_by="bench.run on --data" if cfg.data else None,
                         verbose=getattr(say, "enabled", True),
                         card=ModelCard(labels=cfg.labels, labels_source=cfg.labels_source))
    summary = export(cfg.spec, path, _format(b, representative, cfg.calibration_images), opts)
    write_text(path + ".bench.json", json.dumps(wanted["key"], indent=2))
    row["export"] = {"reused": False, "why": why, "summary": path + ".json",
                     "seconds": summary.get("timings", {}).get("total_s")}
    return path


def triage_of(path: str) -> dict | None:
    """What the triage of an exported int8 file kept float, from its summary (None: the
    file was not triaged)."""
    try:
        with open(path + ".json") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    report = (summary.get("options") or {}).get("triage")
    if not isinstance(report, dict):
        return None
    return {"float_layers": [layer.get("layer") for layer in report.get("float_layers", [])],
            "bound_points": report.get("bound_points"),
            "trials": report.get("trials"), "summary": path + ".json"}


def _triage(cfg, b: Backend) -> EvalOptions | None:
    """The AP check an int8 row's export runs with --triage-data: the exporters' triage
    (TFLite) or NNCF's accuracy control (OpenVINO) keeps the layers float that the bound
    needs (None: no triage data, or not an int8 row)."""
    if b.quant != "int8" or not cfg.triage_data:
        return None
    return EvalOptions(data=cfg.triage_data, annotations=cfg.triage_annotations,
                       images=cfg.triage_images, nms="hard" if cfg.nms == "hard" else "soft",
                       max_ap_drop=cfg.max_ap_drop)


def _postprocess(b: Backend) -> str:
    """The in-graph post-processing of an end-to-end row's file (none for the others)."""
    if not b.e2e:
        return "none"
    return "fast" if b.export == "tflite" else "hard-nms"


def _format(b: Backend, representative: str | None, calibration_images: int):
    """The exporter format that makes ``b``'s file."""
    if b.export == "onnx":
        return OnnxFormat(OnnxOptions(OPSET, b.quant or "fp32", representative,
                                      calibration_images))
    if b.export == "mnn":
        return MnnFormat(OnnxOptions(OPSET), None if b.quant != "int8" else
                         MnnQuantOptions(representative, calibration_images))
    if b.export == "ncnn":
        return NcnnFormat(OnnxOptions(OPSET))
    if b.export == "openvino":
        return OpenVinoFormat(OpenVinoOptions(quant=b.quant, representative=representative,
                                              calibration_images=calibration_images))
    return TFLiteFormat(TFLiteOptions(quant=b.quant, representative=representative,
                                      calibration_images=calibration_images,
                                      float_heads=b.float_heads))


def representative_source(cfg, say) -> str:
    """int8 calibration images: --representative-data, else the --data images, else
    synthetic scenes written once into OUT/calibration (their content barely matters for
    random weights; with a trained model pass real images)."""
    if cfg.representative:
        return os.path.abspath(cfg.representative)
    if cfg.data:
        images = os.path.join(cfg.data, "images")
        say("warning: int8 calibrates on the --data images that AP is measured on, which "
            "flatters int8's AP; pass --representative-data with training images")
        return os.path.abspath(images if os.path.isdir(images) else cfg.data)
    folder = os.path.join(os.path.abspath(cfg.out), "calibration")
    images = os.path.join(folder, "train", "images")
    have = [f for f in os.listdir(images)] if os.path.isdir(images) else []
    size = max(cfg.spec.image_size)
    marker = os.path.join(folder, "made_for.json")
    made_for = {"images": cfg.calibration_images, "size": size}
    if len(have) < cfg.calibration_images or not _same_json(marker, made_for):
        say(f"writing {cfg.calibration_images} synthetic calibration images to {images}")
        generate(folder, cfg.calibration_images, size, seed=cfg.seed, val_fraction=0.0)
        write_text(marker, json.dumps(made_for))
    return images


def _companions(path: str) -> list:
    """The files an export writes beside ``path`` that belong to it (an OpenVINO IR's .bin,
    an NCNN model's .bin and metadata)."""
    if path.endswith(".xml"):
        return [path[:-4] + ".bin"]
    return ncnn_companions(path) if path.endswith(".param") else []


def _same_json(path: str, value) -> bool:
    try:
        with open(path) as f:
            return json.load(f) == value
    except (OSError, ValueError):
        return False
