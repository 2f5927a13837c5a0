"""Pre-processing: documented scale factors and content sizes, a step-by-step TF
transcription of the official order, and an independent numpy bilinear resize."""
import numpy as np
import pytest
import tensorflow as tf

from edetgraph.resources import path
from edetgraph.task.preprocess import (
    IMAGENET_MEAN_RGB,
    IMAGENET_STDDEV_RGB,
    LITE_MEAN_RGB,
    LITE_STDDEV_RGB,
    make_preprocess_fn,
    preprocess,
    preprocess_batch,
    read_image,
)

MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)


@pytest.fixture(scope="module")
def street():
    return read_image(path("street.jpg"))


def random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def step_by_step(image_u8, size):
    """The official order spelled out with raw ops and numpy float32 scalars. The division by
    std is written as TF graph mode runs it: grappler's constant folding turns x / const into
    x * (1 / const), so that is what the official (graph-mode) model computes."""
    x = tf.cast(image_u8, tf.float32)
    x = (x - MEAN.reshape(1, 1, 3)) * (np.float32(1) / STD).reshape(1, 1, 3)
    h, w = np.float32(image_u8.shape[0]), np.float32(image_u8.shape[1])
    scale = min(np.float32(size) / h, np.float32(size) / w)
    sh, sw = int(h * scale), int(w * scale)
    x = tf.raw_ops.ResizeBilinear(images=x[None], size=[sh, sw], align_corners=False,
                                  half_pixel_centers=True)[0].numpy()
    out = np.zeros((size, size, 3), np.float32)
    out[:sh, :sw] = x
    return out, np.float32(1.0) / scale, (sh, sw)


def numpy_bilinear(x, out_h, out_w):
    """Bilinear resize with half-pixel centres (sample at (i + 0.5) * in/out - 0.5, edge-clamped)."""
    in_h, in_w = x.shape[:2]

    def taps(n_out, n_in):
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        src = np.clip(src, 0, None)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    y0, y1, fy = taps(out_h, in_h)
    x0, x1, fx = taps(out_w, in_w)
    x = x.astype(np.float64)
    top = x[y0][:, x0] * (1 - fx)[None, :, None] + x[y0][:, x1] * fx[None, :, None]
    bot = x[y1][:, x0] * (1 - fx)[None, :, None] + x[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bot * fy[:, None, None]


def content_size(img):
    """Rows/cols that are not all-zero padding (the content is at the top-left)."""
    nz = np.any(img != 0, axis=2)
    return int(nz.any(axis=1).nonzero()[0].max()) + 1, int(nz.any(axis=0).nonzero()[0].max()) + 1


def test_read_street(street):
    assert street.dtype == tf.uint8 and tuple(street.shape) == (636, 1024, 3)


@pytest.mark.parametrize("size,factor,content", [(512, 2.0, (318, 512)), (640, 1.6, (397, 640))])
def test_street_documented_sizes(street, size, factor, content):
    img, scale = preprocess(street, size)
    assert img.shape == (size, size, 3) and img.dtype == tf.float32
    assert scale.dtype == tf.float32 and scale.shape == ()
    np.testing.assert_allclose(float(scale), factor, rtol=1e-6)
    img = img.numpy()
    assert content_size(img) == content
    assert np.all(img[content[0]:] == 0) and np.all(img[:, content[1]:] == 0)


@pytest.mark.parametrize("size,factor,content", [(512, 1.25, (384, 512)), (640, 1.0, (480, 640))])
def test_480x640_documented_sizes(size, factor, content):
    raw = random_image(480, 640)
    img, scale = preprocess(raw, size)
    assert float(scale) == pytest.approx(factor, rel=1e-6)
    assert content_size(img.numpy()) == content
    if factor == 1.0:  # no resize needed: the content is the normalised image itself
        np.testing.assert_allclose(img.numpy()[:480], (raw - MEAN) / STD, atol=1e-6)


@pytest.mark.parametrize("size", [512, 640, 320])
def test_street_equals_step_by_step(street, size):
    img, scale = preprocess(street, size)
    want, want_scale, _ = step_by_step(street.numpy(), size)
    np.testing.assert_array_equal(img.numpy(), want)
    assert float(scale) == float(want_scale)


@pytest.mark.parametrize("hw,size", [((636, 1024), 512), ((480, 640), 512), ((300, 200), 512),
                                     ((97, 131), 64)])
def test_resize_matches_independent_bilinear(hw, size):
    raw = random_image(*hw, seed=hw[0])
    img, _ = preprocess(raw, size)
    _, _, (sh, sw) = step_by_step(raw, size)
    want = numpy_bilinear((raw.astype(np.float64) - MEAN) / STD, sh, sw)
    np.testing.assert_allclose(img.numpy()[:sh, :sw], want, atol=1e-4)


def test_padding_is_zero_after_normalising():
    # Padding is added after normalisation, so it is 0 (the mean colour), not -mean/std.
    raw = np.zeros((100, 300, 3), np.uint8)
    img, _ = preprocess(raw, 128)
    img = img.numpy()
    np.testing.assert_allclose(img[:42], np.broadcast_to(-MEAN / STD, (42, 128, 3)), rtol=1e-6)
    assert np.all(img[42:] == 0)
    np.testing.assert_array_equal(img, step_by_step(raw, 128)[0])


def test_rectangular_network_size():
    raw = random_image(636, 1024)
    img, scale = preprocess(raw, (384, 640))
    assert img.shape == (384, 640, 3)
    assert float(scale) == pytest.approx(636 / 384) and content_size(img.numpy()) == (384, 618)
    img, scale = preprocess(raw, (640, 384))
    assert float(scale) == pytest.approx(1024 / 384) and content_size(img.numpy()) == (238, 384)


def test_batch_equals_single_and_lists():
    a, b = random_image(480, 640, 1), random_image(480, 640, 2)
    imgs, scales = preprocess_batch(np.stack([a, b]), 512)
    assert imgs.shape == (2, 512, 512, 3) and scales.shape == (2,)
    for i, raw in enumerate((a, b)):
        one, s = preprocess(raw, 512)
        np.testing.assert_array_equal(imgs[i].numpy(), one.numpy())
        assert float(scales[i]) == float(s)
    c = random_image(300, 700, 3)
    imgs, scales = preprocess_batch([a, c], 512)
    np.testing.assert_array_equal(imgs[1].numpy(), preprocess(c, 512)[0].numpy())
    np.testing.assert_allclose(scales.numpy(), [1.25, 700 / 512], rtol=1e-6)


def test_lite_statistics():
    raw = random_image(64, 64)
    img, _ = preprocess(raw, 64, LITE_MEAN_RGB, LITE_STDDEV_RGB)
    np.testing.assert_allclose(img.numpy(), (raw.astype(np.float32) - 127) / 128, atol=1e-6)
    assert IMAGENET_MEAN_RGB[0] == pytest.approx(123.675) and IMAGENET_STDDEV_RGB[2] == pytest.approx(57.375)


def test_same_numbers_eager_and_graph_as_official_division_in_graph(street):
    official = tf.function(lambda x: (tf.cast(x, tf.float32) - MEAN.reshape(1, 1, 3)) / STD.reshape(1, 1, 3))
    raw = street[:64, :64]
    want = official(raw).numpy()
    eager_div = ((tf.cast(raw, tf.float32) - MEAN.reshape(1, 1, 3)) / STD.reshape(1, 1, 3)).numpy()
    assert not np.array_equal(want, eager_div)  # why a reciprocal: eager division differs by an ulp
    img, _ = preprocess(raw, 64)
    np.testing.assert_array_equal(img.numpy(), want)
    img_graph, _ = tf.function(lambda x: preprocess(x, 64))(raw)
    np.testing.assert_array_equal(img_graph.numpy(), want)


def test_tf_function_static_shapes(street):
    fn = make_preprocess_fn(512)
    cf = fn.get_concrete_function()
    assert cf.structured_outputs[0].shape.as_list() == [None, 512, 512, 3]
    imgs, scales = fn(street[None])
    np.testing.assert_array_equal(imgs[0].numpy(), preprocess(street, 512)[0].numpy())
    assert float(scales[0]) == 2.0
    fixed = make_preprocess_fn(640, batch_size=1, input_hw=(636, 1024))
    assert fixed.get_concrete_function().structured_outputs[0].shape.as_list() == [1, 640, 640, 3]


def test_read_image_conversions_and_errors(tmp_path):
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10, 1)
    (tmp_path / "g.png").write_bytes(tf.io.encode_png(gray).numpy())
    img = read_image(tmp_path / "g.png").numpy()
    assert img.shape == (12, 10, 3) and np.all(img == gray)
    rgba = np.concatenate([random_image(5, 7), np.full((5, 7, 1), 9, np.uint8)], axis=2)
    (tmp_path / "a.png").write_bytes(tf.io.encode_png(rgba).numpy())
    np.testing.assert_array_equal(read_image(tmp_path / "a.png").numpy(), rgba[..., :3])
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="notes.jpg"):
        read_image(tmp_path / "notes.jpg")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        read_image(tmp_path / "missing.jpg")


@pytest.mark.serial   # a wall-clock bound: runs alone (scripts/test)
def test_preprocess_is_fast(street):
    import time

    fn = make_preprocess_fn(512)
    batch = street[None]
    fn(batch)  # trace
    times = []
    for _ in range(10):
        t = time.perf_counter()
        fn(batch)[0].numpy()
        times.append(time.perf_counter() - t)
    median_ms = 1000 * float(np.median(times))
    print(f"preprocess street.jpg (636x1024) to 512: {median_ms:.1f} ms")
    assert median_ms < 150, median_ms  # measured ~10 ms on 2 shared cores
