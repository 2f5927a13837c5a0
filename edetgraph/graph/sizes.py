"""Image and feature-map sizes: the one place that says how big each pyramid level is.

Each level halves the previous one rounding up, ``(x - 1) // 2 + 1``, starting from the
image size: what a stride-2 'SAME' convolution or pooling produces. So 320 gives P7 = 3x3
(320, 160, 80, 40, 20, 10, 5, 3), not 320 / 128. The IR, the cost model, the lowered
model, anchors and the labeler all read their sizes here. No TensorFlow.
"""
from __future__ import annotations

import numbers
from typing import Sequence, Union

ImageSize = Union[int, Sequence[int]]


def parse_image_size(image_size: ImageSize) -> tuple[int, int]:
    """``512`` or ``(h, w)`` -> ``(h, w)`` as ints; rejects non-positive sizes."""
    if isinstance(image_size, numbers.Integral):        # int, numpy integers
        size = (int(image_size), int(image_size))
    else:
        size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"image_size must be a positive int or (height, width): {image_size!r}")
    return size


def feature_sizes(image_size: ImageSize, min_level: int,
                  max_level: int) -> dict[int, tuple[int, int]]:
    """``{level: (height, width)}`` for levels ``min_level..max_level``, in level order."""
    if not 0 <= min_level <= max_level:
        raise ValueError(f"need 0 <= min_level <= max_level, got {min_level}, {max_level}")
    h, w = parse_image_size(image_size)
    sizes = {}
    for level in range(max_level + 1):
        if level >= min_level:
            sizes[level] = (h, w)
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    return sizes
