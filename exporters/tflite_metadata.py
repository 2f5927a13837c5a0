"""TFLite Model Metadata for an exported detector, written with the maintained schema
(``edetgraph.resources.tflite_metadata``: flatc's generated Python) and ``flatbuffers``,
populated as the metadata libraries populate it: the packed ``ModelMetadata`` goes into a
new model buffer named ``TFLITE_METADATA``, and the associated files (``labels.txt``,
``edetgraph.json``) are zipped, uncompressed, after the flatbuffer.

What it says: name, description, version, author and licence; the input (RGB image, its
normalisation for float inputs, its value range); for ``--postprocess fast`` files the four
outputs in MediaPipe's ObjectDetector layout (``location`` boxes as fractions in ymin, xmin,
ymax, xmax order, ``category`` with the label file, ``score`` with the default score
threshold, ``number of detections``); for raw-head files each head output, and the anchor
settings as custom metadata ``EDETGRAPH_ANCHORS`` (JSON) so a decoder can rebuild them.
"""
from __future__ import annotations

import io
import json
import math
import zipfile

import flatbuffers
import numpy as np
from tensorflow.lite.python import schema_py_generated as model_fb

from edetgraph.data.labels import label_lines
from edetgraph.resources.tflite_metadata import FILE_IDENTIFIER
from edetgraph.resources.tflite_metadata import schema as fb
from edetgraph.verify.file_metadata import FACTS_FILE, LABELS_FILE

METADATA_NAME = "TFLITE_METADATA"
DETECTION_NAMES = {"boxes": "location", "classes": "category", "scores": "score",
                   "num_detections": "number of detections"}


def _range(lo: int, hi: int):
    r = fb.ValueRangeT()
    r.min, r.max = lo, hi
    return r


def _content(kind: str, props=None, value_range=None):
    c = fb.ContentT()
    c.contentPropertiesType = getattr(fb.ContentProperties, kind)
    c.contentProperties = props if props is not None else fb.FeaturePropertiesT()
    c.range = value_range
    return c


def _file(name: str, description: str, kind: int):
    f = fb.AssociatedFileT()
    f.name, f.description, f.type = name, description, kind
    return f


def _tensor(name: str, description: str, content=None, units=(), files=()):
    t = fb.TensorMetadataT()
    t.name, t.description = name, description
    t.content = content or _content("FeatureProperties")
    t.processUnits = list(units) or None
    t.associatedFiles = list(files) or None
    return t


def _input(facts: dict):
    inp, norm = facts["input"], facts["input"]["normalisation"]
    image = fb.ImagePropertiesT()
    image.colorSpace = fb.ColorSpaceType.RGB
    stats = fb.StatsT()
    units = []
    if inp["kind"] == "float":   # the caller normalises: say how
        unit = fb.ProcessUnitT()
        unit.optionsType = fb.ProcessUnitOptions.NormalizationOptions
        unit.options = fb.NormalizationOptionsT()
        unit.options.mean, unit.options.std = list(norm["mean"]), list(norm["std"])
        units.append(unit)
        stats.min = [float((0 - m) / s) for m, s in zip(norm["mean"], norm["std"])]
        stats.max = [float((255 - m) / s) for m, s in zip(norm["mean"], norm["std"])]
    else:
        stats.min, stats.max = [0.0], [255.0]
    text = (f"RGB image {inp['height']}x{inp['width']}, "
            + ("normalised (pixel - mean) / std by the caller" if inp["kind"] == "float"
               else "uint8 pixels (the file normalises)") + "; resize: " + inp["resize"])
    t = _tensor("image", text, _content("ImageProperties", image), units)
    t.stats = stats
    return t


def _detection_outputs(names: list, facts: dict) -> list:
    out = facts["outputs"]
    box = fb.BoundingBoxPropertiesT()
    box.index = [1, 0, 3, 2]     # the file's (ymin, xmin, ymax, xmax) as (left, top, right, bottom)
    box.type, box.coordinateType = fb.BoundingBoxType.BOUNDARIES, fb.CoordinateType.RATIO
    labels = _file(LABELS_FILE, "class names: line i names class value i (1-based ids; line 0 "
                   "is background)", fb.AssociatedFileType.TENSOR_VALUE_LABELS)
    threshold = float(out["score_threshold"])    # "-inf" in JSON
    unit = fb.ProcessUnitT()
    unit.optionsType = fb.ProcessUnitOptions.ScoreThresholdingOptions
    unit.options = fb.ScoreThresholdingOptionsT()
    unit.options.globalScoreThreshold = float(threshold) if math.isfinite(threshold) else 0.0
    made = {"boxes": _tensor("location", "boxes [1, K, 4]: ymin, xmin, ymax, xmax as fractions "
                             "of the input", _content("BoundingBoxProperties", box, _range(2, 2))),
            "classes": _tensor("category", "1-based class ids [1, K]",
                               _content("FeatureProperties", None, _range(2, 2)), files=[labels]),
            "scores": _tensor("score", "scores [1, K]",
                              _content("FeatureProperties", None, _range(2, 2)), [unit]),
            "num_detections": _tensor("number of detections", "valid detections [1]")}
    return [made[n] for n in names]


def build_metadata(facts: dict, fields: dict, output_names: list):
    """The ``ModelMetadataT`` of a file whose subgraph outputs are ``output_names``, in order."""
    m = fb.ModelMetadataT()
    m.name, m.description, m.version = fields["name"], fields["description"], fields["version"]
    m.author, m.license = fields["author"], fields["license"]
    sub = fb.SubGraphMetadataT()
    sub.name = "detector"
    sub.inputTensorMetadata = [_input(facts)]
    if facts["outputs"]["kind"] == "detections":
        sub.outputTensorMetadata = _detection_outputs(output_names, facts)
        m.minParserVersion = "1.0.0"
    else:
        sub.outputTensorMetadata = [_tensor(n, ("class logits" if n.startswith("cls") else
                                               "box codes (ty, tx, th, tw)") + f" of level {n[-1]}")
                                    for n in output_names]
        anchors = fb.CustomMetadataT()
        anchors.name = "EDETGRAPH_ANCHORS"
        anchors.data = list(json.dumps(facts["anchors"]).encode("utf-8"))
        sub.customMetadata = [anchors]
        m.minParserVersion = "1.5.0"      # custom metadata came with schema 1.5.0
    m.subgraphMetadata = [sub]
    m.associatedFiles = [_file(FACTS_FILE, "edetgraph's facts of this file (JSON): input, "
                               "normalisation, resize, outputs, anchors, labels, spec",
                               fb.AssociatedFileType.DESCRIPTIONS)]
    if facts["outputs"]["kind"] != "detections":
        m.associatedFiles.append(_file(LABELS_FILE, "class names: line i names class i "
                                       "(1-based ids)", fb.AssociatedFileType.TENSOR_VALUE_LABELS))
    return m


def output_names(model) -> list:
    """Signature output names of the main subgraph's outputs, in the subgraph's order."""
    sub = model.subgraphs[0]
    by_index = {}
    for sig in model.signatureDefs or []:
        for t in sig.outputs or []:
            by_index[t.tensorIndex] = t.name.decode() if isinstance(t.name, bytes) else t.name
    return [by_index.get(i) or sub.tensors[i].name.decode() for i in sub.outputs]


def populate(flatbuffer: bytes, facts: dict, fields: dict) -> bytes:
    """The file with its metadata and associated files (the parity gate then runs it)."""
    model = model_fb.ModelT.InitFromObj(model_fb.Model.GetRootAs(flatbuffer, 0))
    meta = build_metadata(facts, fields, output_names(model))
    b = flatbuffers.Builder(0)
    b.Finish(meta.Pack(b), FILE_IDENTIFIER)
    buffer = model_fb.BufferT()
    buffer.data = np.frombuffer(bytes(b.Output()), np.uint8)
    model.buffers = list(model.buffers or []) + [buffer]
    entry = model_fb.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [e for e in (model.metadata or []) if e.name not in
                      (METADATA_NAME, METADATA_NAME.encode())] + [entry]
    b = flatbuffers.Builder(len(flatbuffer) + (1 << 16))
    b.Finish(model.Pack(b), b"TFL3")
    data = io.BytesIO(bytes(b.Output()))
    data.seek(0, io.SEEK_END)
    with zipfile.ZipFile(data, "a", zipfile.ZIP_STORED) as zf:
        zf.writestr(FACTS_FILE, json.dumps(facts, indent=1, allow_nan=False))
        labels = {int(k): v for k, v in facts["labels"].items()}
        zf.writestr(LABELS_FILE, "\n".join(label_lines(labels, facts["num_classes"])) + "\n")
    return data.getvalue()
