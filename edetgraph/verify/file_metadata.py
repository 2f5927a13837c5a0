"""What an exported file says it is, read back without TensorFlow.

A TFLite file carries TFLite Model Metadata (the ``TFLITE_METADATA`` buffer, in the schema
of ``edetgraph.resources.tflite_metadata``) and its associated files zipped after the
flatbuffer: ``labels.txt`` and ``edetgraph.json``, the facts ``exporters.model_facts``
writes. An ONNX file carries the same facts in ``metadata_props`` (key ``edetgraph``, and
the main ones under their own keys), read here with ONNX Runtime's ``get_modelmeta()``.

    meta = read_metadata("lite0.tflite")      # raises MetadataError naming the file
    meta["facts"]["input"]["normalisation"]    # mean, std, who applies them
"""
from __future__ import annotations

import importlib
import io
import json
import os
import zipfile

from edetgraph.cli import printable

FACTS_SCHEMA = "edetgraph.model/1"
FACTS_FILE = "edetgraph.json"
LABELS_FILE = "labels.txt"
RESIZE = ("keep the aspect ratio: scale = min(H / h, W / w), bilinear with half-pixel centres "
          "(TensorFlow's), content at the top-left, padded bottom and right with the mean "
          "colour (0 after normalisation); boxes times 1 / scale are original pixels")
_MODEL_SCHEMAS = ("ai_edge_litert.schema_py_generated",
                  "tensorflow.lite.python.schema_py_generated")


class MetadataError(ValueError):
    """A file without edetgraph's metadata (none at all, or a foreign model's): one line."""


def read_metadata(path) -> dict:
    """``{"format", "fields" (name, description, version, author, license ...), "facts"
    (exporters.model_facts), "files" (associated files, TFLite)}`` of an exported file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MetadataError(f"{path}: no such file")
    if path.endswith(".tflite"):
        return _tflite(path)
    if path.endswith(".onnx"):
        return _onnx(path)
    raise MetadataError(f"{path}: not a .tflite or .onnx file")


def _facts(path: str, text: str | None) -> dict:
    if text is None:
        raise MetadataError(f"{path}: the file carries no edetgraph metadata (exported by "
                            "something else, or by an edetgraph before metadata); export it "
                            "again with exporters/to_tflite.py or to_onnx.py")
    try:
        facts = json.loads(text)
    except json.JSONDecodeError as e:
        raise MetadataError(f"{path}: its edetgraph metadata is not JSON ({e.msg})") from None
    except RecursionError:   # valid JSON nested thousands deep
        raise MetadataError(f"{path}: its edetgraph metadata is nested too deeply") from None
    if not isinstance(facts, dict) or facts.get("schema") != FACTS_SCHEMA:
        raise MetadataError(f"{path}: its edetgraph metadata has schema "
                            f"{facts.get('schema') if isinstance(facts, dict) else None!r}, "
                            f"not {FACTS_SCHEMA}")
    return facts


MAX_MEMBERS, MAX_MEMBER_BYTES = 64, 16 << 20   # ours: 2 small text files (facts, labels)


def _zipped(path: str, data: bytes) -> dict:
    """The associated files packed after a TFLite flatbuffer (name -> bytes). They are
    someone else's bytes: the member count and each member's size are bounded before
    anything is inflated (a zip bomb names a small file that inflates to gigabytes), and a
    member that cannot be read is one line."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = zf.infolist()
            if len(members) > MAX_MEMBERS:
                raise MetadataError(f"{path}: {len(members)} associated files (at most "
                                    f"{MAX_MEMBERS} are read); not an edetgraph export")
            big = [m for m in members if m.file_size > MAX_MEMBER_BYTES]
            if big:
                raise MetadataError(f"{path}: associated file {printable(big[0].filename)[:80]}"
                                    f" claims {big[0].file_size} bytes (at most "
                                    f"{MAX_MEMBER_BYTES} are read)")
            return {m.filename: zf.read(m)[:MAX_MEMBER_BYTES] for m in members}
    except zipfile.BadZipFile:
        return {}
    except MetadataError:
        raise
    except Exception as e:   # zlib.error, NotImplementedError (a method), RuntimeError (a password)
        raise MetadataError(f"{path}: its associated files cannot be read "
                            f"({type(e).__name__}: {printable(str(e))[:100]})") from None


def _model_schema():
    for name in _MODEL_SCHEMAS:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def _tflite(path: str) -> dict:
    with open(path, "rb") as f:
        data = f.read()
    if data[4:8] != b"TFL3":
        raise MetadataError(f"{path}: not a TFLite flatbuffer")
    files = _zipped(path, data)
    try:
        fields = _tflite_fields(data)
    except Exception as e:   # flatbuffers reads offsets the file gives: struct.error, ...
        raise MetadataError(f"{path}: its TFLite model or metadata is truncated or damaged "
                            f"({type(e).__name__})") from None
    text = files.get(FACTS_FILE)
    try:
        text = text.decode("utf-8") if text is not None else None
    except UnicodeDecodeError:
        raise MetadataError(f"{path}: its edetgraph metadata is not UTF-8 text") from None
    facts = _facts(path, text)
    return {"format": "tflite", "fields": fields, "facts": facts,
            "files": sorted(files)}


def _tflite_fields(data: bytes) -> dict:
    """The standard Model Metadata fields (empty when the file has none, or no model schema
    is installed to find the buffer: ai-edge-litert or TensorFlow ships it)."""
    from edetgraph.resources import tflite_metadata  # deferred: it needs flatbuffers
    meta_fb = tflite_metadata.schema
    model_fb = _model_schema()
    if model_fb is None:
        return {}
    model = model_fb.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        if model.Metadata(i).Name() == b"TFLITE_METADATA":
            buf = model.Buffers(model.Metadata(i).Buffer()).DataAsNumpy().tobytes()
            m = meta_fb.ModelMetadataT.InitFromObj(meta_fb.ModelMetadata.GetRootAs(buf, 0))
            sub = m.subgraphMetadata[0] if m.subgraphMetadata else None
            text = lambda v: v.decode("utf-8") if isinstance(v, bytes) else v  # noqa: E731
            return {"name": text(m.name), "description": text(m.description),
                    "version": text(m.version), "author": text(m.author),
                    "license": text(m.license),
                    "min_parser_version": text(m.minParserVersion),
                    "inputs": [text(t.name) for t in (sub.inputTensorMetadata or [])] if sub
                    else [],
                    "outputs": [text(t.name) for t in (sub.outputTensorMetadata or [])] if sub
                    else [], "metadata": m}
    return {}


def _onnx(path: str) -> dict:
    try:
        import onnxruntime as ort  # deferred: only ONNX files need it
    except ImportError as e:
        raise MetadataError(f"{path}: onnxruntime is needed to read its metadata ({e})") from None
    try:
        meta = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).get_modelmeta()
    except Exception as e:  # ORT raises several unrelated types for a bad file
        raise MetadataError(f"{path}: onnxruntime cannot load it: "
                            f"{str(e).strip().splitlines()[0][:200]}") from None
    props = dict(meta.custom_metadata_map)
    fields = {"name": meta.graph_name, "description": meta.description,
              "producer": meta.producer_name, "version": meta.version, "domain": meta.domain,
              "props": sorted(props)}
    return {"format": "onnx", "fields": fields, "facts": _facts(path, props.get("edetgraph")),
            "props": props, "files": []}


def labels_of(meta: dict) -> dict[int, str]:
    """``{1-based id: name}`` a file carries."""
    return {int(k): v for k, v in meta["facts"].get("labels", {}).items()}


def summary_lines(meta: dict) -> list[str]:
    """What a file says it is, a few lines for people (device_runner prints the same)."""
    f, fields = meta["facts"], meta["fields"]
    inp, out = f["input"], f["outputs"]
    norm = inp["normalisation"]
    names = ", ".join(f"{k} {v}" for k, v in list(f["labels"].items())[:8])
    more = len(f["labels"]) - 8
    lines = [f"{fields.get('name') or f['model']} ({meta['format']}): {f['spec_name']}, "
             f"{f['num_classes']} classes, edetgraph {f['edetgraph_version']}",
             f"  input {inp['dtype']} [{inp['batch']}, {inp['height']}, {inp['width']}, 3] "
             f"RGB, normalised (pixel - {norm['mean']}) / {norm['std']} by {norm['done_by']}",
             f"  outputs: {out['kind']}" + (f", {out['nms']} NMS, boxes in {out['boxes']}"
                                             if out["kind"] == "detections" else ""),
             f"  labels ({f.get('labels_source', '?')}): {names or 'none'}"
             + (f" ... (+{more})" if more > 0 else "")]
    if fields.get("author") or fields.get("license"):
        lines.append(f"  author {fields.get('author')}, licence {fields.get('license')}, "
                     f"version {fields.get('version')}")
    return [printable(line) for line in lines]
