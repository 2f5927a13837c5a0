"""Where annotated evaluation images are, checked before anything slow runs. No TensorFlow,
so a command refuses a wrong folder or annotations file in a fraction of a second.

Layout: a folder with a COCO ``instances.json`` and its pictures in ``DIR/images`` (the
built-in dataset's layout) or in ``DIR`` itself; or TFRecords with the official keys
(a glob) and their instances file.
"""
from __future__ import annotations

import glob
import json
import os

from edetgraph.data.labels import without_sidecars


class EvalDataError(ValueError):
    """Evaluation images or annotations that cannot be used; the message names the file."""


def images_folder(data: str) -> str:
    """DATA/images when it exists (the built-in dataset's layout), else DATA."""
    sub = os.path.join(data, "images")
    return sub if os.path.isdir(sub) else data


def default_annotations(data: str) -> str | None:
    """DATA/instances.json when DATA is a folder holding one (the built-in layout)."""
    guess = os.path.join(data, "instances.json")
    return guess if os.path.isdir(data) and os.path.isfile(guess) else None


def listed_images(annotations: str) -> list:
    """File names a COCO instances file lists; EvalDataError when it is not one or lists
    nothing."""
    try:
        with open(annotations) as f:
            names = [im["file_name"] for im in json.load(f)["images"]]
    except OSError as e:
        raise EvalDataError(f"{annotations}: cannot read it ({e.strerror})") from None
    except (ValueError, KeyError, TypeError) as e:
        raise EvalDataError(f"{annotations}: not a COCO instances file "
                            f"({type(e).__name__}: {e})") from None
    if not names:
        raise EvalDataError(f"{annotations}: lists no images")
    return names


def check_eval_data(data: str, annotations: str) -> None:
    """Refuse a missing folder or glob, an unreadable or empty instances file, or listed
    images missing from the folder (EvalDataError naming the first)."""
    if not os.path.isdir(data):
        if not without_sidecars(glob.glob(data)):
            raise EvalDataError(f"{data}: no such folder or TFRecord file")
        listed_images(annotations)
        return
    folder = images_folder(data)
    missing = [f for f in listed_images(annotations)
               if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise EvalDataError(f"{data}: {len(missing)} image(s) of {annotations} are not in "
                            f"{folder}, e.g. {missing[0]}")
