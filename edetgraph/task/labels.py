"""COCO class names keyed by the 1-based COCO category ids the detectors output.

COCO 2017 annotates 80 categories but numbers them 1..90 (ids 12, 26, 29, 30, 45, 66, 68,
69, 71 and 83 were dropped from the original list); the released EfficientDet models have
90 class outputs so that output ``c`` is category id ``c + 1`` with no re-mapping.
"""
from __future__ import annotations

import json
import os
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
