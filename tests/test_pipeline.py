"""tf.data input: static shapes, eval geometry, truncation, corrupt input skipped and counted,
determinism, and augmentation that keeps boxes on the objects they belong to."""
import numpy as np
import pytest
import tensorflow as tf

from edetgraph.data.pipeline import (
    MEAN_RGB,
    STDDEV_RGB,
    benchmark_pipeline,
    make_dataset,
    transform,
)
from edetgraph.data.tfexample import encode_example
from edetgraph.task.labeler import AnchorLabeler

DARK, BRIGHT = 20, 240


def _png(pixels):
    return tf.io.encode_png(tf.constant(pixels, tf.uint8)).numpy()


def square_record(h=128, w=128, box=(30, 10, 70, 40), source_id="1", cls=2):
    """A dark image with one bright rectangle box=(y0, x0, y1, x1) pixels, labelled as such."""
    pixels = np.full((h, w, 3), DARK, np.uint8)
    y0, x0, y1, x1 = box
    pixels[y0:y1, x0:x1] = BRIGHT
    norm = [[y0 / h, x0 / w, y1 / h, x1 / w]]
    return encode_example(_png(pixels), h, w, source_id, "sq.png", norm, [cls],
                          image_format="png").SerializeToString()


def many_boxes_record(n=7, source_id="3"):
    boxes = [[0.1 * i, 0.05, 0.1 * i + 0.08, 0.5] for i in range(n)]
    return encode_example(_png(np.zeros((64, 64, 3))), 64, 64, source_id, "many.png", boxes,
                          list(range(1, n + 1)), image_format="png").SerializeToString()


def empty_record(source_id="2"):
    return encode_example(_png(np.zeros((96, 64, 3))), 96, 64, source_id, "empty.png",
                          image_format="png").SerializeToString()


def garbage_image_record():
    return encode_example(b"\x00not an image" * 10, 8, 8, "98", "junk.jpg",
                          [[0, 0, 1, 1]], [1]).SerializeToString()


def bad_feature_record():
    ex = tf.train.Example.FromString(square_record(source_id="99"))
    ex.features.feature["image/object/bbox/xmin"].Clear()
    ex.features.feature["image/object/bbox/xmin"].int64_list.value.append(3)
    return ex.SerializeToString()


def write(path, records):
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r)
    return str(path)


def grid_labeler(size, stride, num_classes=3):
    """One level of square anchors (1 per cell), enough to exercise the pipeline plumbing."""
    n = size // stride
    c = (np.arange(n) + 0.5) * stride
    yc, xc = np.meshgrid(c, c, indexing="ij")
    anchors = np.stack([yc - stride, xc - stride, yc + stride, xc + stride], -1).reshape(-1, 4)
    return AnchorLabeler(anchors, [(n, n)], 1, num_classes, min_level=4)


def examples(ds):
    """Unbatch a dataset into a list of numpy dicts."""
    return [{k: v.numpy() for k, v in ex.items()} for ex in ds.unbatch()]


def test_eval_geometry_static_shapes_truncation(tmp_path):
    wide = square_record(100, 200, box=(20, 50, 60, 150), source_id="abc")
    path = write(tmp_path / "a.tfrecord", [square_record(), empty_record(), many_boxes_record(), wide])
    ds = make_dataset(path, (128, 128), 2, training=False, max_instances=5, drop_remainder=True)
    for key, spec in ds.element_spec.items():
        assert spec.shape.is_fully_defined(), key
    assert ds.element_spec["boxes"].shape == (2, 5, 4)
    sq, empty, many, wide = examples(ds)
    np.testing.assert_allclose(sq["boxes"][0], [30, 10, 70, 40], atol=1e-4)
    assert sq["num_boxes"] == 1 and sq["classes"].tolist() == [2, -1, -1, -1, -1]
    assert sq["image_scale"] == 1.0 and sq["source_id"] == 1
    assert empty["num_boxes"] == 0 and (empty["boxes"] == -1).all() and (empty["classes"] == -1).all()
    assert many["num_boxes"] == 5 and many["classes"].tolist() == [1, 2, 3, 4, 5]
    # 100x200 -> scale 0.64: content 64x128 at the top-left, zeros (the mean) below
    np.testing.assert_allclose(wide["image_scale"], 1 / 0.64, rtol=1e-6)
    np.testing.assert_allclose(wide["boxes"][0], [12.8, 32, 38.4, 96], atol=1e-4)
    assert (wide["image"][64:] == 0).all() and (wide["image"][:64] != 0).any()
    assert wide["source_id"] == tf.strings.to_hash_bucket_fast("abc", 2**62).numpy()
    assert ds.stats.as_dict() == {"records_skipped": 0, "damaged_files": 0,
                                  "images_truncated": 1, "boxes_truncated": 2}


def test_corrupt_records_and_truncated_file_are_skipped_and_counted(tmp_path):
    bad = write(tmp_path / "bad.tfrecord", [square_record(source_id="1"), garbage_image_record(),
                                            bad_feature_record(), square_record(source_id="2"),
                                            garbage_image_record()])   # last one: seen too
    whole = write(tmp_path / "whole.tfrecord", [square_record(source_id=str(i)) for i in (3, 4, 5)])
    data = open(whole, "rb").read()
    (tmp_path / "cut.tfrecord").write_bytes(data[:-10])
    ds = make_dataset([bad, str(tmp_path / "cut.tfrecord")], 64, 3, training=False)
    got = sorted(int(e["source_id"]) for e in examples(ds))
    assert got == [1, 2, 3, 4]
    assert ds.stats.as_dict() == {"records_skipped": 3, "damaged_files": 1,
                                  "images_truncated": 0, "boxes_truncated": 0}
    # training mode too: infinite stream keeps going, same counters move
    train = make_dataset([bad, str(tmp_path / "cut.tfrecord")], 64, 2, training=True, seed=1)
    for _ in zip(range(6), train):
        pass
    assert train.stats.as_dict()["records_skipped"] >= 3
    assert train.stats.as_dict()["damaged_files"] >= 1


def test_systematically_unreadable_input_fails_at_once_naming_the_file(tmp_path):
    junk = write(tmp_path / "junk.tfrecord", [garbage_image_record()] * 3)
    with pytest.raises(ValueError, match="junk.tfrecord: .*"):
        make_dataset(junk, 64, 2, training=True)
    (tmp_path / "photo.tfrecord").write_bytes(_png(np.zeros((8, 8, 3))))
    with pytest.raises(ValueError, match="photo.tfrecord"):
        make_dataset(str(tmp_path / "photo.tfrecord"), 64, 2, training=True)


def _two_files(tmp_path):
    recs = [square_record(box=(10 + 5 * i, 10, 50 + 5 * i, 60), source_id=str(i)) for i in range(8)]
    return [write(tmp_path / "x0.tfrecord", recs[:4]), write(tmp_path / "x1.tfrecord", recs[4:])]


def test_same_seed_same_batches(tmp_path):
    files = _two_files(tmp_path)

    def batches(seed):
        ds = make_dataset(files, 96, 3, training=True, seed=seed, repeat=False,
                          num_parallel_calls=4)
        return [{k: v.numpy() for k, v in b.items()} for b in ds]

    a, b, c = batches(5), batches(5), batches(6)
    assert len(a) == 2                         # 8 records, drop_remainder in training
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert any(not np.array_equal(x["image"], z["image"]) for x, z in zip(a, c))


def _bright_box(image, size):
    """[ymin, xmin, ymax, xmax] of the bright pixels of a normalised image, or None."""
    pixels = image * np.array(STDDEV_RGB) + np.array(MEAN_RGB)
    ys, xs = np.nonzero(pixels.mean(-1) > (DARK + BRIGHT) / 2)
    if ys.size == 0:
        return None
    return np.minimum([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], size - 1)


@pytest.mark.parametrize("jitter", [(1.0, 1.0), (0.4, 1.8)])
def test_flip_and_jitter_keep_boxes_on_the_bright_square(tmp_path, jitter):
    path = write(tmp_path / "sq.tfrecord", [square_record()])
    ds = make_dataset(path, 128, 1, training=True, seed=3, jitter=jitter)
    flipped = 0
    for batch in ds.take(24):
        ex = {k: v.numpy()[0] for k, v in batch.items()}
        bright = _bright_box(ex["image"], 128)
        if ex["num_boxes"] == 0:        # cropped away entirely: nothing bright may remain
            assert bright is None or np.prod(bright[2:] - bright[:2]) <= 2
            continue
        assert bright is not None
        np.testing.assert_allclose(ex["boxes"][0], bright, atol=1.5)
        flipped += ex["boxes"][0][1] > 64
    if jitter == (1.0, 1.0):            # no scaling / cropping: the square is at x 10..40 or 88..118
        assert 0 < flipped < 24


def test_transform_matches_official_eval_scaling():
    image = tf.zeros([300, 400, 3], tf.uint8)
    boxes = tf.constant([[0.0, 0.0, 1.0, 1.0]])
    out, b, c, scale = transform(image, boxes, tf.constant([1]), (256, 256), training=False)
    assert out.shape == (256, 256, 3)
    np.testing.assert_allclose(scale.numpy(), 400 / 256, rtol=1e-6)
    np.testing.assert_allclose(b.numpy(), [[0, 0, 192, 255]])   # 192 rows of content; clip 255


def test_iterator_checkpoint_resumes_and_input_context_shards(tmp_path):
    files = _two_files(tmp_path)
    make = lambda: make_dataset(files, 64, 2, training=True, seed=2)
    it = iter(make())
    for _ in range(3):
        next(it)
    path = tf.train.Checkpoint(iterator=it).save(str(tmp_path / "ckpt" / "it"))
    want = next(it)
    it2 = iter(make())
    tf.train.Checkpoint(iterator=it2).restore(path)
    got = next(it2)
    for k in want:
        np.testing.assert_array_equal(want[k].numpy(), got[k].numpy())
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1)
    second = make_dataset(files, 64, 1, training=False, input_context=ctx)
    assert sorted(int(e["source_id"]) for e in examples(second)) == [4, 5, 6, 7]


def test_labeler_targets_and_benchmark(tmp_path):
    files = _two_files(tmp_path)
    ds = make_dataset(files, 64, 2, training=True, seed=0, labeler=grid_labeler(64, 16),
                      jitter=(0.8, 1.2))
    batch = next(iter(ds))
    assert batch["cls_targets_l4"].shape == (2, 4, 4, 1)
    assert batch["box_targets_l4"].shape == (2, 4, 4, 4)
    assert batch["cls_targets_l4"].dtype == tf.int32
    assert (batch["num_positives"].numpy() >= batch["num_boxes"].numpy()).all()
    assert set(np.unique(batch["cls_targets_l4"].numpy())) <= {-1, 1}
    assert benchmark_pipeline(files, 64, 2, num_batches=2, warmup=1) > 0
    with pytest.raises(FileNotFoundError, match="no input files match"):
        make_dataset(str(tmp_path / "nothing-*"), 64, 2, training=False)
