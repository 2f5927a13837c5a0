"""One scene of the built-in dataset: objects (and, at "hard", distractors) on a background,
with the id of the object each pixel shows, from which the labels are read."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from edetgraph.data.synthetic.clutter import distractor_mask, near_box, smooth_field, texture
from edetgraph.data.synthetic.levels import EASY, Difficulty
from edetgraph.data.synthetic.shapes import SHAPES, shape_mask

_SIZE_RANGE = EASY.size_range   # longer box side as a fraction of the image side
_ASPECT_RANGE = (0.67, 1.5)     # width / height
_EMPTY_FRACTION = 0.1           # images without objects
_MAX_HIDDEN = 0.35              # a shape drawn later may hide at most this share of what is
#                                 still visible of each earlier object
_PLACEMENT_TRIES = 30


@dataclass(frozen=True)
class Scene:
    image: np.ndarray     # uint8 [size, size, 3]
    ids: np.ndarray       # int32 [size, size]: the object a pixel shows (index in classes), -1 none
    classes: list         # 0-based class of each object drawn
    clutter: np.ndarray   # bool [size, size]: pixels showing a distractor (no label)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour field plus a finer texture: no flat colour a detector could key on."""
    return smooth_field(rng, size, 4, 40.0, 215.0) + smooth_field(rng, size, 24, -25.0, 25.0)


def _object_colour(rng: np.random.Generator, under: np.ndarray, gap: float = 110.0
                   ) -> np.ndarray:
    """A colour at least `gap` away from the mean of what it is drawn on (20 tries)."""
    ref = under.reshape(-1, 3).mean(axis=0)
    colour = rng.uniform(0, 255, 3)
    for _ in range(20):
        if np.linalg.norm(colour - ref) >= gap:
            break
        colour = rng.uniform(0, 255, 3)
    return colour.astype(np.float32)


def _sample_box(rng: np.random.Generator, size: int, size_range=_SIZE_RANGE
                ) -> tuple[int, int, int, int]:
    """Random (x0, y0, w, h) of an object box fully inside a size x size image."""
    side = size * np.exp(rng.uniform(*np.log(size_range)))
    aspect = np.exp(rng.uniform(*np.log(_ASPECT_RANGE)))
    w = int(np.clip(round(side * min(1.0, np.sqrt(aspect))), 6, size))
    h = int(np.clip(round(side * min(1.0, 1.0 / np.sqrt(aspect))), 6, size))
    return int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1)), w, h


def _fits(ids: np.ndarray, region: tuple[slice, slice], mask: np.ndarray,
          visible: list[int]) -> bool:
    """True if drawing `mask` hides no more than _MAX_HIDDEN of any earlier object."""
    covered = ids[region][mask]
    covered = covered[covered >= 0]
    if covered.size == 0:
        return True
    hidden = np.bincount(covered, minlength=len(visible))
    return bool(np.all(hidden <= _MAX_HIDDEN * np.asarray(visible)))


def _hide(ids: np.ndarray, region, mask: np.ndarray, visible: list[int]) -> list[int]:
    """Each object's visible pixel count once `mask` is drawn over it."""
    covered = ids[region][mask]
    hidden = np.bincount(covered[covered >= 0], minlength=len(visible))
    return [v - int(n) for v, n in zip(visible, hidden)]


def _place(rng, ids, make_mask: Callable, visible: list[int], boxes: list, near: float,
           size_range) -> tuple | None:
    """(region, mask) of a shape that keeps every earlier object visible enough (_fits), or
    None after _PLACEMENT_TRIES; with chance `near` a try is centred inside one of `boxes`."""
    size = ids.shape[0]
    for _ in range(_PLACEMENT_TRIES):
        x0, y0, w, h = _sample_box(rng, size, size_range)
        if boxes and near and rng.random() < near:
            x0, y0, w, h = near_box(rng, size, boxes[int(rng.integers(len(boxes)))], (x0, y0, w, h))
        mask = make_mask(w, h)
        region = (slice(y0, y0 + h), slice(x0, x0 + w))
        if _fits(ids, region, mask, visible):
            return region, mask
    return None


def _distract(rng, image, ids, clutter, level: Difficulty, count_range, decoys, visible,
              boxes) -> list[int]:
    """Draw distractors (no label), each obeying _fits; returns the objects' visible counts.
    Over objects (`boxes` given) they are centred on one: occlusion is what they are for."""
    for _ in range(int(rng.integers(count_range[0], count_range[1] + 1))):
        placed = _place(rng, ids, lambda w, h: distractor_mask(rng, w, h, decoys), visible,
                        boxes, 1.0, level.size_range)
        if placed is None:
            continue
        region, mask = placed
        visible = _hide(ids, region, mask, visible)
        image[region][mask] = _object_colour(rng, image[region], level.colour_gap)
        ids[region][mask] = -1
        clutter[region][mask] = True
    return visible


def render_scene(rng: np.random.Generator, size: int, num_classes: int,
                 level: Difficulty = EASY) -> Scene:
    """One scene at `level`; at EASY exactly the draws (and so the pixels) of the original."""
    image = _background(rng, size)
    if level.texture:
        image += texture(rng, size)
    ids = np.full((size, size), -1, np.int32)
    clutter = np.zeros((size, size), bool)
    decoys = SHAPES[num_classes:]     # shapes of the classes not in use are distractors too
    if level.clutter[1]:
        _distract(rng, image, ids, clutter, level, level.clutter, decoys, [], [])
    count = 0 if rng.random() < _EMPTY_FRACTION else int(rng.integers(2, level.max_objects + 1))
    classes, visible, boxes = [], [], []
    for _ in range(count):
        cls = int(rng.integers(0, num_classes))
        placed = _place(rng, ids, lambda w, h: shape_mask(SHAPES[cls], w, h), visible, boxes,
                        level.near, level.size_range)
        if placed is None:
            continue    # no room left for this object: draw fewer
        region, mask = placed
        visible = _hide(ids, region, mask, visible)
        image[region][mask] = _object_colour(rng, image[region], level.colour_gap)
        ids[region][mask] = len(classes)
        clutter[region][mask] = False
        classes.append(cls)
        visible.append(int(mask.sum()))
        boxes.append((region[1].start, region[0].start, mask.shape[1], mask.shape[0]))
    if level.occluders[1] and classes:
        visible = _distract(rng, image, ids, clutter, level, level.occluders, decoys, visible,
                            boxes)
    image += rng.normal(0.0, level.noise, image.shape).astype(np.float32)
    return Scene(np.clip(image, 0, 255).astype(np.uint8), ids, classes, clutter)


def render_image(rng: np.random.Generator, size: int, num_classes: int,
                 level: Difficulty = EASY) -> tuple[np.ndarray, list[dict]]:
    """One uint8 [size, size, 3] image and its objects ({category_id, bbox xywh, area})."""
    scene = render_scene(rng, size, num_classes, level)
    return scene.image, _visible_objects(scene.ids, scene.classes)


def _visible_objects(ids: np.ndarray, classes: list[int]) -> list[dict]:
    """Tight COCO boxes [x, y, w, h] and pixel areas of what is left visible of each object."""
    objects = []
    for j, cls in enumerate(classes):
        ys, xs = np.nonzero(ids == j)
        if ys.size == 0:
            continue
        x0, y0 = int(xs.min()), int(ys.min())
        bbox = [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0]
        objects.append({"category_id": cls + 1, "bbox": bbox, "area": int(ys.size)})
    return objects
