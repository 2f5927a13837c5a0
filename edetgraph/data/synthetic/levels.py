"""Difficulty levels of the built-in dataset: named, frozen sets of the generator's knobs.

"easy" is the generator as the demo and the search were tuned on (its images are pinned
byte for byte by tests/test_synthetic_difficulty.py). "hard" keeps every rule of "easy" and
takes away its easy cues: a smooth background any edge stands out on (textured and
cluttered here, with distractor shapes that carry no label), objects far from the
background's colour (half the gap here), few and large objects (more, down to half the
smallest size, often placed against an earlier one so they overlap), nothing in front of
the objects (distractors may hide parts of them, under the same visibility rule).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Difficulty:
    """The generator's knobs; the defaults are "easy"."""
    name: str = "easy"
    size_range: tuple[float, float] = (0.12, 0.50)  # longer box side / image side, log-uniform
    max_objects: int = 6          # an image holds 0 (10 % of images) or 2..max_objects objects
    colour_gap: float = 110.0     # RGB distance of an object's colour from what it covers
    noise: float = 8.0            # std of the pixel noise added last
    near: float = 0.0             # chance an object is placed against an earlier one
    texture: bool = False         # patches of stripes and grain over the smooth background
    clutter: tuple[int, int] = (0, 0)    # distractors under the objects, min..max per image
    occluders: tuple[int, int] = (0, 0)  # distractors over them, min..max per image


EASY = Difficulty()
DIFFICULTIES = {
    "easy": EASY,
    "hard": Difficulty(name="hard", size_range=(0.06, 0.50), max_objects=10, colour_gap=55.0,
                       noise=12.0, near=0.5, texture=True, clutter=(4, 12), occluders=(1, 4)),
}


def difficulty(name: str) -> Difficulty:
    """The level called `name`; an unknown name is a ValueError naming the choices."""
    if name not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {name!r}")
    return DIFFICULTIES[name]
