"""What a COCO instances file must hold before anything is converted: the keys, their
types, finite positive sizes and boxes, unique image ids, and names that can be written.

JSON admits ``NaN`` and ``Infinity``, strings where numbers belong, a list as a category id
and file names with lone surrogates; each would otherwise reach the records (NaN
coordinates, two records with one source id) or fail deep inside with a bare
``TypeError``. Here each is one :class:`CocoError` naming the file, the entry and the
value, cut short. Pure Python.
"""
from __future__ import annotations

import math

from edetgraph.limits import short


class CocoError(ValueError):
    """Bad input: the message is one line naming the file (and key) at fault."""


_KEYS = (("images", ("id", "file_name")),
         ("annotations", ("image_id", "category_id", "bbox")),
         ("categories", ("id", "name")))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _writable(v) -> bool:
    """A non-empty string that UTF-8 can encode (records and file systems need bytes)."""
    if not isinstance(v, str) or not v or "\0" in v:
        return False
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_coco(coco, path: str) -> dict:
    """``coco`` (parsed JSON) checked as an instances file; returns it with an empty
    ``annotations`` list when it had none. Raises CocoError naming ``path``."""
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise CocoError(f"{path}: expected a JSON object with an 'images' list")
    coco.setdefault("annotations", [])
    if not isinstance(coco["annotations"], list):
        raise CocoError(f"{path}: 'annotations' must be a list")
    if coco["annotations"] and not isinstance(coco.get("categories"), list):
        raise CocoError(f"{path}: has annotations but no 'categories' list")
    for section, keys in _KEYS:
        for i, rec in enumerate(coco.get(section) or []):
            missing = [k for k in keys if not isinstance(rec, dict) or k not in rec]
            if missing:
                raise CocoError(f"{path}: {section}[{i}] has no {missing[0]!r}")
    _check_images(coco["images"], path)
    _check_annotations(coco["annotations"], path)
    for i, cat in enumerate(coco.get("categories") or []):
        _expect(_is_int(cat["id"]), path, f"categories[{i}].id", "an integer", cat["id"])
        _expect(_writable(cat["name"]), path, f"categories[{i}].name", "a UTF-8 string",
                cat["name"])
    return coco


def _expect(ok: bool, path: str, where: str, what: str, value) -> None:
    if not ok:
        raise CocoError(f"{path}: {where} must be {what}, got {short(value, 80)}")


def _check_images(images: list, path: str) -> None:
    seen: dict = {}
    for i, im in enumerate(images):
        _expect(_is_int(im["id"]), path, f"images[{i}].id", "an integer", im["id"])
        if im["id"] in seen:
            raise CocoError(f"{path}: images[{i}].id {im['id']} is also the id of "
                            f"images[{seen[im['id']]}]; image ids must be unique")
        seen[im["id"]] = i
        _expect(_writable(im["file_name"]), path, f"images[{i}].file_name",
                "a file name UTF-8 can encode", im["file_name"])
        for key in ("height", "width"):
            if key in im:
                _expect(_is_int(im[key]) and im[key] > 0, path, f"images[{i}].{key}",
                        "a positive integer", im[key])


def _check_annotations(annotations: list, path: str) -> None:
    for i, ann in enumerate(annotations):
        bbox = ann["bbox"]
        _expect(isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox)),
                path, f"annotations[{i}].bbox", "4 finite numbers", bbox)
        for key in ("image_id", "category_id"):
            _expect(_is_int(ann[key]), path, f"annotations[{i}].{key}", "an integer", ann[key])
        if "iscrowd" in ann:
            _expect(_is_number(ann["iscrowd"]) and ann["iscrowd"] in (0, 1), path,
                    f"annotations[{i}].iscrowd", "0 or 1", ann["iscrowd"])
        if "area" in ann:
            _expect(_is_number(ann["area"]) and ann["area"] >= 0, path,
                    f"annotations[{i}].area", "a finite number >= 0", ann["area"])
