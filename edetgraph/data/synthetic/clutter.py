"""What the "hard" level adds to a scene: background texture, distractor shapes that are not
objects, and placement against an earlier object so that objects overlap."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from edetgraph.data.synthetic.shapes import shape_mask


def smooth_field(rng: np.random.Generator, size: int, cells: int, lo: float, hi: float,
                 channels: int = 3) -> np.ndarray:
    """A [size, size, channels] field: a cells x cells uniform grid, bicubically enlarged."""
    grid = rng.uniform(lo, hi, (cells, cells, channels)).astype(np.float32)
    return np.stack([np.asarray(Image.fromarray(grid[..., c], mode="F").resize(
        (size, size), Image.BICUBIC)) for c in range(channels)], axis=-1)


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Stripes of random period, angle and tint in some regions, and a medium grain: edges a
    detector must learn to ignore, where a smooth background made every edge an object's."""
    t = np.arange(size, dtype=np.float32) / size
    out = smooth_field(rng, size, 12, -35.0, 35.0)
    for _ in range(2):
        angle, periods, phase = rng.uniform(0, np.pi), rng.uniform(4, 20), rng.uniform(0, 6.3)
        # sin(a x + b y + phase) as two outer products: a row and a column of sines, not a
        # full image of them (the texture was most of a hard scene's time)
        ax = (2 * np.pi * periods * np.cos(angle) * t).astype(np.float32)
        by = (2 * np.pi * periods * np.sin(angle) * t + phase).astype(np.float32)
        wave = np.outer(np.cos(by), np.sin(ax)) + np.outer(np.sin(by), np.cos(ax))
        # The stripes show where a coarse field is positive: patches, not the whole picture.
        where = np.clip(2.0 * smooth_field(rng, size, 3, -1.0, 1.0, 1)[..., 0], 0.0, 1.0)
        out += (wave * where)[..., None] * rng.uniform(-50.0, 50.0, 3).astype(np.float32)
    return out


def distractor_mask(rng: np.random.Generator, width: int, height: int,
                    decoys: tuple[str, ...]) -> np.ndarray:
    """Boolean [height, width] mask of a shape that is no object: a bent stroke, a lumpy
    blob, an open arc (a ring's piece), or one of the shapes whose class is not in use."""
    kind = int(rng.integers(0, 4 if decoys else 3))
    if kind == 3:
        return shape_mask(decoys[int(rng.integers(len(decoys)))], width, height)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    thick = max(2, round(0.22 * min(width, height)))
    if kind == 0:
        points = rng.uniform(0, 1, (int(rng.integers(2, 5)), 2)) * (width - 1, height - 1)
        draw.line([tuple(p) for p in points.tolist()], fill=1, width=max(1, thick // 2))
    elif kind == 1:
        angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
        radius = rng.uniform(0.35, 1.0, 9)
        xs = (0.5 + 0.5 * radius * np.cos(angles)) * (width - 1)
        ys = (0.5 + 0.5 * radius * np.sin(angles)) * (height - 1)
        draw.polygon(list(zip(xs.tolist(), ys.tolist())), fill=1)
    else:
        start = float(rng.uniform(0, 360))
        draw.arc((0, 0, width - 1, height - 1), start, start + float(rng.uniform(60, 240)),
                 fill=1, width=thick)
    return np.asarray(canvas, dtype=bool)


def near_box(rng: np.random.Generator, size: int, other: tuple[int, int, int, int],
             box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """`box` (x0, y0, w, h) moved so that its centre lies inside `other`, within the image."""
    ox, oy, ow, oh = other
    _, _, w, h = box
    x0 = int(np.clip(round(rng.uniform(ox, ox + ow) - w / 2), 0, size - w))
    y0 = int(np.clip(round(rng.uniform(oy, oy + oh) - h / 2), 0, size - h))
    return x0, y0, w, h
