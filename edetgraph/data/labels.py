"""Class names: COCO's, keyed by the 1-based category ids the detectors output, and the
names a data set, a model directory or a checkpoint carries (no TensorFlow).

COCO 2017 annotates 80 categories but numbers them 1..90 (ids 12, 26, 29, 30, 45, 66, 68,
69, 71 and 83 were dropped from the original list); the released EfficientDet models have
90 class outputs so that output ``c`` is category id ``c + 1`` with no re-mapping.
"""
from __future__ import annotations

import json
import os
import re
from typing import Mapping, Sequence

COCO_LABELS: dict[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus",
    7: "train", 8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant",
    13: "stop sign", 14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog",
    19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear", 24: "zebra",
    25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie",
    33: "suitcase", 34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball",
    38: "kite", 39: "baseball bat", 40: "baseball glove", 41: "skateboard",
    42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass", 47: "cup",
    48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog",
    59: "pizza", 60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant",
    65: "bed", 67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse",
    75: "remote", 76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven",
    80: "toaster", 81: "sink", 82: "refrigerator", 84: "book", 85: "clock", 86: "vase",
    87: "scissors", 88: "teddy bear", 89: "hair drier", 90: "toothbrush",
}

COCO_NUM_CLASSES = 90


def label_name(class_id: int, labels: Mapping[int, str] = COCO_LABELS) -> str:
    """Name of a 1-based class id; ``"class_<id>"`` for ids without a name (e.g. COCO's gaps)."""
    class_id = int(class_id)
    return labels.get(class_id, f"class_{class_id}")


def load_labels(path) -> dict[int, str]:
    """Class names from a COCO ``instances*.json`` (its ``categories``) or a ``{id: name}``
    JSON object. Raises ValueError naming the file on anything else."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ValueError(f"{path}: cannot read labels ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None
    if isinstance(data, dict) and isinstance(data.get("categories"), list):
        items = [(c.get("id"), c.get("name")) if isinstance(c, dict) else (None, None)
                 for c in data["categories"]]
        where = "categories"
    elif isinstance(data, dict):
        items, where = list(data.items()), "top-level object"
    else:
        raise ValueError(f"{path}: expected a COCO instances file or an {{id: name}} object")
    return _checked_labels(path, where, items)


def _checked_labels(path: str, where: str, items: Sequence) -> dict[int, str]:
    labels = {}
    for key, name in items:
        try:
            cid = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: {where}: class id {key!r} is not an integer") from None
        if not isinstance(name, str):
            raise ValueError(f"{path}: {where}: class {cid} has no string name ({name!r})")
        labels[cid] = name
    if not labels:
        raise ValueError(f"{path}: {where}: no class names")
    return labels


# ------------------------------------------------------------- labels that travel with data

LABELS_FILE = "labels.json"           # in a model directory, beside its checkpoints
RECORDS_SUFFIX = ".labels.json"       # beside a TFRecord set: PREFIX.labels.json
_SHARD = re.compile(r"-\d{5}-of-\d{5}(\.tfrecord)?$")


def without_sidecars(files) -> list:
    """``files`` less the project's own files a data glob can match: the class names kept
    beside a record set (``PREFIX.labels.json``; ``coco/train*`` takes it) and hidden
    temporaries (``.NAME.*.partial``), which are no records and would read as corrupt."""
    return [f for f in files if not str(f).endswith(RECORDS_SUFFIX)
            and not str(f).rstrip("/").rsplit("/", 1)[-1].startswith(".")]


def records_labels_path(prefix: str) -> str:
    """Where ``coco_to_tfrecord`` keeps the class names of the set ``PREFIX-*``: beside it,
    named so that the ``PREFIX-*`` glob of the records never takes it."""
    return f"{prefix}{RECORDS_SUFFIX}"


def labels_json(labels: Mapping[int, str]) -> str:
    """The ``{id: name}`` JSON object :func:`load_labels` reads, ids in order."""
    return json.dumps({str(k): labels[k] for k in sorted(labels)}, indent=1,
                      ensure_ascii=False) + "\n"


def labels_beside_records(files: Sequence[str]) -> dict[int, str] | None:
    """The names kept beside a TFRecord set (``PREFIX.labels.json`` of each shard's prefix),
    None when there are none; two sets in one glob must agree."""
    found: dict = {}
    for f in files:
        prefix = _SHARD.sub("", os.fspath(f))
        path = records_labels_path(prefix)
        if prefix != os.fspath(f) and path not in found and os.path.isfile(path):
            found[path] = load_labels(path)
    values = list(found.values())
    if any(v != values[0] for v in values[1:]):
        raise ValueError(f"{', '.join(found)}: the record sets name their classes differently")
    return values[0] if values else None


def check_labels(labels: Mapping[int, str], num_classes: int, where: str) -> dict[int, str]:
    """``labels`` when every id is one of the model's 1-based classes, else ValueError."""
    bad = [k for k in labels if not 1 <= int(k) <= num_classes]
    if bad:
        raise ValueError(f"{where}: class id {bad[0]} is outside 1..{num_classes} (the "
                         f"spec's num_classes)")
    return {int(k): v for k, v in labels.items()}


def labels_beside_checkpoint(prefix: str | None) -> tuple[dict[int, str] | None, str | None]:
    """``(labels, file)`` from the ``labels.json`` training wrote beside a checkpoint."""
    if not prefix:
        return None, None
    path = os.path.join(os.path.dirname(os.fspath(prefix)), LABELS_FILE)
    return (load_labels(path), path) if os.path.isfile(path) else (None, None)


def resolve_labels(explicit, prefix: str | None, num_classes: int,
                   embedded: Mapping[int, str] | None = None) -> tuple[dict[int, str], str]:
    """The class names a command uses and where they came from, first found of: ``explicit``
    (``--labels FILE``), the ``labels.json`` beside the checkpoint ``prefix``, the names the
    checkpoint itself holds (``embedded``), COCO's for a 90-class model; else none."""
    if explicit:
        return check_labels(load_labels(explicit), num_classes, explicit), explicit
    found, path = labels_beside_checkpoint(prefix)
    if found is not None:
        return check_labels(found, num_classes, path), path
    if embedded:
        return check_labels(embedded, num_classes, f"{prefix} (its labels)"), f"{prefix}"
    if num_classes == COCO_NUM_CLASSES:
        return dict(COCO_LABELS), "COCO (default for 90-class models)"
    return {}, "none (class ids)"


def label_lines(labels: Mapping[int, str], num_classes: int) -> list[str]:
    """One name per 1-based class value, line ``i`` naming class ``i`` (line 0, which no
    detection has, ``background``): the label file of an exported detector, whose class
    output is the 1-based id; ids without a name get :func:`label_name`'s ``class_<id>``."""
    return ["background"] + [" ".join(label_name(i, labels).split()) or f"class_{i}"
                             for i in range(1, num_classes + 1)]


def label_mismatches(labels: Mapping[int, str], annotations) -> list[str]:
    """Where the model's names and an instances file's categories disagree (a line each)."""
    try:
        theirs = load_labels(annotations)
    except ValueError:
        return []
    return [f"class {k} is {labels[k]!r} in the model, {theirs[k]!r} in {annotations}"
            for k in sorted(set(labels) & set(theirs)) if labels[k] != theirs[k]]
