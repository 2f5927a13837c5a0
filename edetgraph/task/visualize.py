"""Drawing detections on a picture with PIL: a box, a class name and a score per detection.

Colours come from a fixed palette indexed by class id, so one class keeps its colour
across pictures; the label sits on a filled tag in the box colour with black or white text,
whichever contrasts more, so it stays readable on any background. Line width and text
size follow the picture size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from edetgraph.files import atomic_path
from edetgraph.task.labels import label_name

# Kelly's colours of maximum contrast (minus white/black/greys), well apart from each other.
PALETTE = ("#F3C300", "#875692", "#F38400", "#A1CAF1", "#BE0032", "#C2B280", "#008856",
           "#E68FAC", "#0067A5", "#F99379", "#604E97", "#F6A600", "#B3446C", "#DCD300",
           "#882D17", "#8DB600", "#654522", "#E25822", "#2B3D26")
DEFAULT_MIN_SCORE = 0.4  # what the official model_inspect draws by default


def class_colour(class_id: int) -> str:
    """The palette colour of a class id (stable across calls and pictures)."""
    return PALETTE[int(class_id) % len(PALETTE)]


def _text_colour(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    luminance = 0.299 * r + 0.587 * g + 0.114 * b
    return "black" if luminance > 140 else "white"


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, ValueError, OSError):
        return ImageFont.load_default()


def _as_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an [H, W, 3] image, got shape {list(arr.shape)}")
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def draw_detections(image, boxes: Sequence, scores: Sequence, classes: Sequence,
                    labels: Mapping[int, str] | None = None, class_names: Sequence | None = None,
                    min_score: float = DEFAULT_MIN_SCORE, max_boxes: int = 100) -> Image.Image:
    """A copy of ``image`` (uint8 ``[H, W, 3]`` or PIL) with the detections drawn on it.

    ``boxes`` are ``[ymin, xmin, ymax, xmax]`` in the picture's pixels. Names come from
    ``class_names`` (one per detection) or else ``labels`` (``class_<id>`` when unknown).
    Only detections with ``score >= min_score`` are drawn, highest first, at most ``max_boxes``;
    lower-scoring boxes are drawn first so the best ones end up on top.
    """
    pic = _as_pil(image).copy()
    w, h = pic.size
    line = max(2, round(min(w, h) / 200))
    font = _font(max(11, round(min(w, h) / 40)))
    draw = ImageDraw.Draw(pic)
    order = [i for i in np.argsort(-np.asarray(scores, np.float64), kind="stable")
             if scores[i] >= min_score][:max_boxes]
    for i in reversed(order):
        cid = int(classes[i])
        name = class_names[i] if class_names is not None else label_name(cid, labels or {})
        _draw_one(draw, boxes[i], f"{name}: {float(scores[i]):.2f}", class_colour(cid), line,
                  font, (w, h))
    return pic


def _draw_one(draw: ImageDraw.ImageDraw, box, text: str, colour: str, line: int, font,
              size: tuple) -> None:
    ymin, xmin, ymax, xmax = (float(v) for v in box)
    draw.rectangle([xmin, ymin, xmax, ymax], outline=colour, width=line)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left + 2 * line, bottom - top + 2 * line
    # The tag goes above the box, or inside its top edge when the box touches the top.
    x0 = min(max(xmin, 0), max(size[0] - tw, 0))
    y0 = ymin - th if ymin - th >= 0 else max(ymin, 0)
    draw.rectangle([x0, y0, x0 + tw, y0 + th], fill=colour)
    draw.text((x0 + line - left, y0 + line - top), text, fill=_text_colour(colour), font=font)


def save_picture(picture: Image.Image, path) -> None:
    """Save as the extension says (JPEG at quality 95, so thin lines stay crisp), under a
    temporary name renamed once the file is complete."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: no picture format has this extension")
    kwargs = {"quality": 95} if fmt == "JPEG" else {}
    with atomic_path(path) as tmp:
        picture.save(tmp, format=fmt, **kwargs)
