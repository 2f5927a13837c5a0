"""Multi-level anchor boxes, laid out exactly as the official EfficientDet lays them out.

Numpy only (no TensorFlow), so anchors can be generated, counted and checked anywhere.

Layout of the flat ``[N, 4]`` array: level (min..max), then feature-map row y, then
column x, then anchor ``a = octave * len(aspect_ratios) + aspect_index``. This is the
order in which the head outputs ``[B, H, W, A*C]`` flatten row-major, so box ``i`` of
the flattened head output decodes against anchor ``i``.

Boxes are ``[ymin, xmin, ymax, xmax]`` in network-input pixels, neither clipped nor
normalised. They are computed in float64 and cast to float32 at the end, as the official
code does; the float64 arithmetic follows the official order of operations so that the
float32 result is bit-identical to it.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from edetgraph.graph.sizes import ImageSize, feature_sizes, parse_image_size


def num_anchors_per_location(num_scales: int, aspect_ratios: Sequence) -> int:
    """Anchors at each feature-map cell: one per (octave scale, aspect ratio) pair."""
    return int(num_scales) * len(aspect_ratios)


def num_anchors(image_size: ImageSize, min_level: int = 3, max_level: int = 7,
                num_scales: int = 3, aspect_ratios: Sequence = (1.0, 2.0, 0.5)) -> int:
    """Total anchor count N (49104 for 512x512 with the defaults, 76725 for 640x640)."""
    cells = sum(h * w for h, w in feature_sizes(image_size, min_level, max_level).values())
    return cells * num_anchors_per_location(num_scales, aspect_ratios)


def _half_sizes(stride_y: float, stride_x: float, num_scales: int, aspect_ratios: Sequence,
                anchor_scale: float) -> np.ndarray:
    """Half height and half width ``[A, 2]`` of the anchors at one level, in anchor order."""
    halves = []
    for octave in range(num_scales):
        octave_scale = octave / float(num_scales)
        for aspect in aspect_ratios:
            if isinstance(aspect, (list, tuple)):
                # An explicit (x, y) multiplier pair, as the official code also accepts.
                aspect_x, aspect_y = aspect
            else:
                aspect_x = np.sqrt(aspect)  # aspect = width / height
                aspect_y = 1.0 / aspect_x
            base_y = anchor_scale * stride_y * 2 ** octave_scale
            base_x = anchor_scale * stride_x * 2 ** octave_scale
            halves.append((base_y * aspect_y / 2.0, base_x * aspect_x / 2.0))
    return np.asarray(halves, dtype=np.float64)


def _level_anchors(image_hw, feat_hw, num_scales, aspect_ratios, anchor_scale) -> np.ndarray:
    """Anchors of one level as ``[fh * fw * A, 4]`` float64, ordered (y, x, a)."""
    (h, w), (fh, fw) = image_hw, feat_hw
    # Stride per axis is image / feature size, so it is fractional when the size does not
    # divide (e.g. 320 / 3 at P7) and anchors then spread evenly over the whole image.
    stride_y, stride_x = h / float(fh), w / float(fw)
    ys = np.arange(stride_y / 2, h, stride_y)
    xs = np.arange(stride_x / 2, w, stride_x)
    if (len(ys), len(xs)) != (fh, fw):  # cannot happen for (x-1)//2+1 sizes; guards misuse
        raise AssertionError(f"anchor grid {len(ys)}x{len(xs)} != feature map {fh}x{fw}")
    half = _half_sizes(stride_y, stride_x, num_scales, aspect_ratios, anchor_scale)
    yc = ys[:, None, None]  # [fh, 1, 1]
    xc = xs[None, :, None]  # [1, fw, 1]
    hy, hx = half[None, None, :, 0], half[None, None, :, 1]  # [1, 1, A]
    yc, xc = np.broadcast_arrays(yc, xc)
    boxes = np.stack([yc - hy, xc - hx, yc + hy, xc + hx], axis=-1)  # [fh, fw, A, 4]
    return boxes.reshape(-1, 4)


def generate_anchors(image_size: ImageSize, min_level: int = 3, max_level: int = 7,
                     num_scales: int = 3, aspect_ratios: Sequence = (1.0, 2.0, 0.5),
                     anchor_scale: Union[float, Sequence[float]] = 4.0) -> np.ndarray:
    """All anchors ``[N, 4]`` float32, ``[ymin, xmin, ymax, xmax]`` in network-input pixels.

    Args:
      image_size: network input size, ``S`` or ``(height, width)``.
      min_level, max_level: pyramid levels (stride ~ 2**level).
      num_scales: octave scales per level, ``2 ** (i / num_scales)`` for i < num_scales.
      aspect_ratios: width/height ratios, or explicit ``(x, y)`` multiplier pairs.
      anchor_scale: base anchor size in strides; one value or one per level.

    For 512x512 with the defaults the first anchor is ``[-12, -12, 20, 20]`` and N = 49104.
    """
    image_hw = parse_image_size(image_size)
    n_levels = max_level - min_level + 1
    if isinstance(anchor_scale, (list, tuple)):
        if len(anchor_scale) != n_levels:
            raise ValueError(f"anchor_scale has {len(anchor_scale)} values for {n_levels} levels")
        scales = [float(s) for s in anchor_scale]
    else:
        scales = [float(anchor_scale)] * n_levels
    if num_scales < 1 or not aspect_ratios:
        raise ValueError("need num_scales >= 1 and at least one aspect ratio")
    feats = feature_sizes(image_hw, min_level, max_level).values()
    levels = [_level_anchors(image_hw, f, num_scales, aspect_ratios, s)
              for f, s in zip(feats, scales)]
    return np.concatenate(levels, axis=0).astype(np.float32)


def spec_anchors(spec) -> np.ndarray:
    """The anchors of a ModelSpec ``[N, 4]`` in network pixels, in head-output order."""
    a = spec.anchors
    return generate_anchors(spec.image_size, a.min_level, a.max_level, a.num_scales,
                            a.aspect_ratios, a.scale)


def anchors_to_center_size(anchors: np.ndarray) -> np.ndarray:
    """``[ymin, xmin, ymax, xmax]`` -> ``[ycenter, xcenter, height, width]`` (float32).

    Computed in float32 from the float32 anchors, as the official TFLite export does, because
    TFLite's detection post-processing op takes anchors in this centre-size form.
    """
    a = np.asarray(anchors, dtype=np.float32)
    two = np.float32(2)
    yc = (a[:, 0] + a[:, 2]) / two
    xc = (a[:, 1] + a[:, 3]) / two
    return np.stack([yc, xc, a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]], axis=-1)
