"""Anchors against an independent transcription of the official rule (google/automl
efficientdet tf2/anchors.py + utils.get_feat_sizes), hand-computed values and known counts."""
import math
import subprocess
import sys

import numpy as np
import pytest

from edetgraph.graph.sizes import feature_sizes as _sizes
from edetgraph.graph.sizes import parse_image_size
from edetgraph.task.anchors import (
    anchors_to_center_size,
    generate_anchors,
    num_anchors,
    num_anchors_per_location,
)


def feature_sizes(size, lo, hi):
    return list(_sizes(size, lo, hi).values())


def reference_anchors(image_size, min_level=3, max_level=7, num_scales=3,
                      aspect_ratios=(1.0, 2.0, 0.5), anchor_scale=4.0):
    """Loop-per-configuration transcription: for each level and each (octave, aspect)
    config, all grid cells via meshgrid; configs are then interleaved per cell."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    sizes = [(h, w)]
    for _ in range(max_level):
        ph, pw = sizes[-1]
        sizes.append((math.ceil(ph / 2), math.ceil(pw / 2)))
    out = []
    for level in range(min_level, max_level + 1):
        sy, sx = h / float(sizes[level][0]), w / float(sizes[level][1])
        per_config = []
        for octave in range(num_scales):
            for aspect in aspect_ratios:
                ax = np.sqrt(aspect)
                ay = 1.0 / ax
                half_x = anchor_scale * sx * 2 ** (octave / float(num_scales)) * ax / 2.0
                half_y = anchor_scale * sy * 2 ** (octave / float(num_scales)) * ay / 2.0
                xv, yv = np.meshgrid(np.arange(sx / 2, w, sx), np.arange(sy / 2, h, sy))
                xv, yv = xv.ravel(), yv.ravel()
                per_config.append(np.stack([yv - half_y, xv - half_x, yv + half_y, xv + half_x], 1))
        out.append(np.stack(per_config, axis=1).reshape(-1, 4))  # [cells, A, 4] -> (cell, a)
    return np.concatenate(out).astype(np.float32)


@pytest.mark.parametrize("size,expected", [
    (512, [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]),
    (640, [(80, 80), (40, 40), (20, 20), (10, 10), (5, 5)]),
    (320, [(40, 40), (20, 20), (10, 10), (5, 5), (3, 3)]),  # odd: P7 is 3x3, not 2.5
    ((384, 640), [(48, 80), (24, 40), (12, 20), (6, 10), (3, 5)]),
    ((333, 517), [(42, 65), (21, 33), (11, 17), (6, 9), (3, 5)]),
])
def test_feature_sizes_known(size, expected):
    assert feature_sizes(size, 3, 7) == expected


def test_feature_sizes_is_repeated_ceil_halving():
    for s in range(1, 700, 7):
        sizes = feature_sizes((s, s + 3), 0, 8)
        assert sizes[0] == (s, s + 3)
        for (h0, w0), (h1, w1) in zip(sizes, sizes[1:]):
            assert (h1, w1) == (math.ceil(h0 / 2), math.ceil(w0 / 2))
    assert feature_sizes(1536, 3, 8)[-1] == (6, 6)  # D7x has a P8


def test_counts_and_first_anchor():
    a512 = generate_anchors(512)
    assert a512.dtype == np.float32 and a512.shape == (49104, 4)
    np.testing.assert_array_equal(a512[0], [-12, -12, 20, 20])
    assert generate_anchors(640).shape == (76725, 4)
    assert num_anchors(512) == 49104 and num_anchors(640) == 76725
    assert num_anchors_per_location(3, (1.0, 2.0, 0.5)) == 9
    assert num_anchors_per_location(2, (1.0,)) == 2


@pytest.mark.parametrize("size", [512, 640, 320, 256, (384, 640), (640, 384), (333, 517), 1280])
def test_equal_to_reference_transcription(size):
    np.testing.assert_array_equal(generate_anchors(size), reference_anchors(size))


def test_equal_to_reference_other_configs():
    np.testing.assert_array_equal(generate_anchors(1536, 3, 8), reference_anchors(1536, 3, 8))
    np.testing.assert_array_equal(generate_anchors(256, 2, 6, 2, (1.0, 3.0), 3.0),
                                  reference_anchors(256, 2, 6, 2, (1.0, 3.0), 3.0))


def test_order_level_y_x_octave_aspect():
    a = generate_anchors(512)
    # level 4 (32x32 cells, stride 16), row y=2, column x=3, anchor 5 = octave 1, aspect 0.5
    idx = 64 * 64 * 9 + (2 * 32 + 3) * 9 + 5
    cy, cx = 8 + 2 * 16, 8 + 3 * 16
    base = 4.0 * 16 * 2 ** (1 / 3)
    hh, hw = base / math.sqrt(0.5) / 2, base * math.sqrt(0.5) / 2
    np.testing.assert_allclose(a[idx], [cy - hh, cx - hw, cy + hh, cx + hw], rtol=1e-6)
    # the last anchor: P7 cell (3, 3), octave 2, aspect 0.5 (w/h = 0.5: twice as tall as wide)
    cy = cx = 64 + 3 * 128
    base = 4.0 * 128 * 2 ** (2 / 3)
    hh, hw = base / math.sqrt(0.5) / 2, base * math.sqrt(0.5) / 2
    np.testing.assert_allclose(a[-1], [cy - hh, cx - hw, cy + hh, cx + hw], rtol=1e-6)


def test_rectangular_strides_per_axis():
    h, w = 333, 517
    a = generate_anchors((h, w)).astype(np.float64)
    start = 0
    for fh, fw in feature_sizes((h, w), 3, 7):
        lvl = a[start:start + fh * fw * 9].reshape(fh, fw, 9, 4)
        start += fh * fw * 9
        cy, cx = (lvl[..., 0] + lvl[..., 2]) / 2, (lvl[..., 1] + lvl[..., 3]) / 2
        sy, sx = h / fh, w / fw
        # centres span the whole image symmetrically: first at stride/2, last at size - stride/2
        np.testing.assert_allclose(cy[:, 0, 0], sy / 2 + sy * np.arange(fh), atol=1e-3)
        np.testing.assert_allclose(cx[0, :, 0], sx / 2 + sx * np.arange(fw), atol=1e-3)
        assert abs(cy[-1, 0, 0] - (h - sy / 2)) < 1e-3 and abs(cx[0, -1, 0] - (w - sx / 2)) < 1e-3
        # anchor 0 (octave 0, aspect 1) is 4 strides on each axis: not square when strides differ
        np.testing.assert_allclose(lvl[0, 0, 0, 2] - lvl[0, 0, 0, 0], 4 * sy, rtol=1e-6)
        np.testing.assert_allclose(lvl[0, 0, 0, 3] - lvl[0, 0, 0, 1], 4 * sx, rtol=1e-6)
    assert start == len(a)


def test_per_level_scale_and_explicit_aspect_pairs():
    a = generate_anchors(128, 3, 4, 1, ((1.0, 1.0), (1.4, 0.7)), anchor_scale=[2.0, 3.0])
    # level 3, cell (0,0): stride 8, scale 2 -> 16x16 and 22.4 wide x 11.2 high around (4,4)
    np.testing.assert_allclose(a[0], [-4, -4, 12, 12])
    np.testing.assert_allclose(a[1], [4 - 5.6, 4 - 11.2, 4 + 5.6, 4 + 11.2], rtol=1e-6)
    first_p4 = 16 * 16 * 2
    np.testing.assert_allclose(a[first_p4], [8 - 24, 8 - 24, 8 + 24, 8 + 24])  # stride 16, scale 3
    with pytest.raises(ValueError, match="anchor_scale"):
        generate_anchors(128, 3, 7, anchor_scale=[4.0, 4.0])


def test_center_size_and_bad_sizes():
    a = generate_anchors(512)
    cs = anchors_to_center_size(a)
    np.testing.assert_array_equal(cs[0], [4, 4, 32, 32])
    np.testing.assert_allclose(cs[:, 0] - cs[:, 2] / 2, a[:, 0], atol=1e-4)
    assert parse_image_size(512) == (512, 512) and parse_image_size([300, 400]) == (300, 400)
    for bad in (0, (10,), (-3, 4)):
        with pytest.raises(ValueError):
            parse_image_size(bad)


def test_no_tensorflow_import():
    code = "import sys, edetgraph.task.anchors, edetgraph.task.labels; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
