"""The eight object outlines of the built-in dataset, as boolean masks filling a box."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross", "ring", "star", "diamond", "hourglass")


def _star(points: int = 5, inner: float = 0.42) -> list[tuple[float, float]]:
    """Unit-box vertices of a star, stretched so its extremes touch the box edges."""
    ang = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    rad = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    x, y = rad * np.cos(ang), rad * np.sin(ang)
    x = (x - x.min()) / (x.max() - x.min())
    y = (y - y.min()) / (y.max() - y.min())
    return list(zip(x.tolist(), y.tolist()))


_POLYGONS = {
    "triangle": [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)],
    "cross": [(1 / 3, 0), (2 / 3, 0), (2 / 3, 1 / 3), (1, 1 / 3), (1, 2 / 3), (2 / 3, 2 / 3),
              (2 / 3, 1), (1 / 3, 1), (1 / 3, 2 / 3), (0, 2 / 3), (0, 1 / 3), (1 / 3, 1 / 3)],
    "star": _star(),
    "diamond": [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)],
    "hourglass": [(0, 0), (1, 0), (0.5, 0.5), (1, 1), (0, 1), (0.5, 0.5)],
}


def shape_mask(shape: str, width: int, height: int) -> np.ndarray:
    """Boolean [height, width] mask of `shape` filling a width x height box."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    box = (0, 0, width - 1, height - 1)
    if shape == "circle":
        draw.ellipse(box, fill=1)
    elif shape == "square":
        draw.rectangle(box, fill=1)
    elif shape == "ring":
        draw.ellipse(box, fill=1)
        t = max(2, round(0.22 * min(width, height)))
        draw.ellipse((t, t, width - 1 - t, height - 1 - t), fill=0)
    elif shape in _POLYGONS:
        draw.polygon([(x * (width - 1), y * (height - 1)) for x, y in _POLYGONS[shape]], fill=1)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return np.asarray(canvas, dtype=bool)
