"""The official detection augmentations: pixels equal to the official ops', boxes that move
with the pixels, GridMask's masked share, every policy through the training pipeline, and
the settings that turn them on."""
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from edetgraph.data import augment as aug
from edetgraph.data.augment import geometry as geo
from edetgraph.data.augment import gridmask as gm
from edetgraph.data.augment import pixels as px
from edetgraph.data.augment.policies import OP_NAMES, POLICIES, apply_op
from edetgraph.data.augment.rng import Rng
from edetgraph.data.pipeline import make_dataset
from edetgraph.training.config import AUTOAUGMENT_POLICIES, TrainConfigError, from_dict
from tests.test_pipeline import BRIGHT, DARK, square_record, write

GOLDEN = Path(__file__).parent / "data" / "augment_golden.npz"   # tools/make_augment_golden.py


@pytest.fixture(scope="module")
def golden():
    data = np.load(GOLDEN)
    return data, json.loads(str(data["cases"]))


def _smoothing_ties(image) -> np.ndarray:
    """Where sharpness' 3x3 smoothing lands exactly on an integer: its sum of pixels times
    [[1,1,1],[1,5,1],[1,1,1]] is a multiple of 13. There float32 with weights of 1/13 comes
    out a hair above or below the integer, by the CPU's summation order (oneDNN's AVX-512
    and AVX2 kernels differ), and the truncation to uint8 goes either way: on the official's
    side as on ours."""
    x = image.astype(np.int64)
    h, w = x.shape[:2]
    n = sum(x[1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx] * (5 if dy == dx == 0 else 1)
            for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    return np.pad(n % 13 == 0, [[1, 1], [1, 1], [0, 0]])


def test_colour_ops_give_the_official_pixels(golden):
    # Exact, not within a level: the same float32 formulas truncated the same way give the
    # same bytes, and a 1-level tolerance would hide rounding where the official truncates.
    # The one exception is sharpness at exact smoothing ties (see _smoothing_ties), whose
    # truncation hangs on the CPU's summation order, the golden file's as this machine's.
    data, cases = golden
    image = tf.constant(data["image"])
    for i, (name, arg) in enumerate(cases["pixel"]):
        fn = getattr(px, name)
        out = (fn(image) if arg is None else fn(image, arg)).numpy()
        expected = data[f"pixel_{i}"]
        assert not np.array_equal(expected, data["image"]), (name, arg)   # the op does act
        if name == "sharpness":
            ties = _smoothing_ties(data["image"])
            assert 0 < ties.mean() < 0.2                      # a few pixels, not a loophole
            diff = np.abs(out.astype(int) - expected.astype(int))
            assert diff[ties].max(initial=0) <= np.ceil(arg), f"{name}({arg}) at a tie"
            out, expected = out[~ties], expected[~ties]
        np.testing.assert_array_equal(out, expected, err_msg=f"{name}({arg})")
    np.testing.assert_array_equal(
        geo.inside_boxes(image, data["boxes"][:1], 1.0, lambda c, r: px.equalize(c),
                         Rng([0, 0])).numpy(), data["in_box_equalize"])


def test_geometric_ops_give_the_official_pixels_and_boxes(golden):
    data, cases = golden
    image, boxes = tf.constant(data["image"]), tf.constant(data["boxes"])
    for i, (name, arg) in enumerate(cases["geo"]):
        value = tf.constant(arg, tf.float32)
        if name == "rotate":
            out, moved = geo.rotate(image, boxes, value)
        elif name.startswith("translate"):
            out, moved = geo.translate(image, boxes, value, name.endswith("x"))
        else:
            out, moved = geo.shear(image, boxes, value, name.endswith("x"))
        assert not np.allclose(data[f"geo_boxes_{i}"], data["boxes"]), name
        np.testing.assert_array_equal(out.numpy(), data[f"geo_{i}"], err_msg=f"{name}({arg})")
        np.testing.assert_allclose(moved.numpy(), data[f"geo_boxes_{i}"], atol=1e-6)
    # and a wrong argument is caught: the comparison is not vacuous
    assert not np.array_equal(geo.rotate(image, boxes, 23.0)[0].numpy(), data["geo_0"])


def _bright_box(image):
    """(ymin, xmin, ymax, xmax) pixels, max exclusive, around the bright pixels."""
    rows, cols = np.nonzero(image[:, :, 0] > (BRIGHT + 128) // 2)
    return np.array([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1], np.float32)


@pytest.mark.parametrize("op, arg", [("translate_x", 9.0), ("translate_y", -7.0),
                                     ("shear_x", 0.25), ("shear_y", -0.2),
                                     ("rotate", 20.0), ("rotate", -35.0)])
def test_geometric_ops_move_the_boxes_with_the_pixels(op, arg):
    size, rect = 64, (18, 14, 40, 44)
    picture = np.full((size, size, 3), DARK, np.uint8)
    picture[rect[0]:rect[2], rect[1]:rect[3]] = BRIGHT
    boxes = tf.constant([rect], tf.float32) / size
    if op == "rotate":
        out, moved = geo.rotate(picture, boxes, arg)
    elif op.startswith("translate"):
        out, moved = geo.translate(picture, boxes, arg, op.endswith("x"))
    else:
        out, moved = geo.shear(picture, boxes, arg, op.endswith("x"))
    found = _bright_box(out.numpy())
    assert np.abs(found - np.array(rect)).max() >= 5          # the pixels did move
    np.testing.assert_allclose(moved.numpy()[0] * size, found, atol=2.0)


def test_ops_inside_boxes_leave_the_rest_alone():
    picture = np.random.RandomState(1).randint(0, 256, (48, 48, 3)).astype(np.uint8)
    boxes = tf.constant([[0.25, 0.25, 0.5, 0.75]])
    for name in ("Equalize_Only_BBoxes", "Flip_Only_BBoxes", "TranslateY_Only_BBoxes"):
        # an op's probability is shared out at a third per box: 3.0 applies it to every box
        out, kept = apply_op(name, 3.0, 10, tf.constant(picture), boxes, Rng([4, 2]))
        out = out.numpy()
        inside = np.zeros((48, 48), bool)
        inside[12:25, 12:37] = True           # rows int(48*0.25)..int(48*0.5) inclusive
        assert not np.array_equal(out[inside], picture[inside]), name
        np.testing.assert_array_equal(out[~inside], picture[~inside], err_msg=name)
        np.testing.assert_array_equal(kept.numpy(), boxes.numpy())
    untouched, _ = apply_op("Equalize_Only_BBoxes", 0.0, 10, tf.constant(picture), boxes,
                            Rng([4, 2]))
    np.testing.assert_array_equal(untouched.numpy(), picture)


def test_every_op_of_every_policy_runs_on_boxes_at_the_edge():
    picture = tf.constant(np.random.RandomState(2).randint(0, 256, (40, 56, 3)), tf.uint8)
    boxes = tf.constant([[0.0, 0.0, 1.0, 1.0], [0.9, 0.5, 1.0, 0.52], [0.2, 0.3, 0.6, 0.9]])
    used = {name for policy in POLICIES.values() for sub in policy for name, _, _ in sub}
    assert used <= set(OP_NAMES)
    for name in sorted(set(OP_NAMES)):
        out, moved = apply_op(name, 1.0, 10, picture, boxes, Rng([5, 5]), always=True)
        assert out.dtype == tf.uint8 and out.shape == picture.shape, name
        moved = moved.numpy()
        assert moved.shape == (3, 4) and (moved >= 0).all() and (moved <= 1).all(), name
        assert (moved[:, 2:] > moved[:, :2]).all(), name


def test_solarize_above_255_inverts_nothing():
    # RandAugment's magnitude 15 asks for threshold 384: no value reaches it.
    picture = tf.constant(np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, 2))
    np.testing.assert_array_equal(px.solarize(picture, 384).numpy(), picture.numpy())
    assert (px.solarize(picture, 128).numpy()[8:] < 128).all()


def _stripes(size, period, length, start):
    k = np.arange(size) - start
    return (k >= 0) & (k % period < length) & (k // period < size // period)


def test_grid_pattern_masks_the_squares_between_the_lines():
    h, w, period, length, starts = 48, 64, 20, 12, (3, 7)
    mask = gm.grid_pattern(h, w, period, length, tf.constant(starts), 0.0).numpy()
    side = int(1.5 * 64)
    lines = _stripes(side, period, length, starts[0])[:, None] | \
        _stripes(side, period, length, starts[1])[None, :]
    top, left = (side - h) // 2, (side - w) // 2
    np.testing.assert_array_equal(mask, lines[top:top + h, left:left + w])
    assert abs((1 - mask.mean()) - gm.expected_masked_fraction(period, length)) < 0.05


def test_grid_pattern_is_the_official_mask(golden):
    data, cases = golden
    period, length, starts, degrees = cases["grid"]
    mask = gm.grid_pattern(32, 32, period, length, tf.constant(starts), degrees).numpy()
    assert 0.05 < 1 - data["grid_mask"].mean() < 0.5          # a turned grid, not all kept
    np.testing.assert_array_equal(mask, data["grid_mask"])


def test_grid_mask_blacks_out_the_expected_share_and_keeps_the_boxes():
    picture = tf.fill([64, 64, 3], tf.constant(200, tf.uint8))
    boxes = tf.constant([[0.1, 0.2, 0.5, 0.6]])
    run = tf.function(lambda seed: gm.grid_mask(picture, boxes, Rng(seed)))
    masked = []
    for i in range(60):
        out, kept = run(tf.constant([i, 9], tf.int64))
        np.testing.assert_array_equal(kept.numpy(), boxes.numpy())
        out = out.numpy()
        assert set(np.unique(out)) <= {0, 200}        # masked pixels black, the rest as was
        if (out == 0).any():
            masked.append((out[:, :, 0] == 0).mean())
    # applied when a standard normal draw is < 0.5: 69% of the pictures
    assert 0.5 < len(masked) / 60 < 0.87
    # 64 x 64: period d drawn in 19..32, lines round(0.6 d) wide
    periods = np.arange(19, 33)
    lengths = np.minimum(np.maximum((periods * 0.6 + 0.5).astype(int), 1), periods - 1)
    plain = np.mean([gm.expected_masked_fraction(d, n) for d, n in zip(periods, lengths)])
    # Turned with bilinear weights and truncated to integers (the official's int mask), a
    # line loses up to one pixel on each side: at most that much more is masked.
    thinner = np.mean([gm.expected_masked_fraction(d, n - 2) for d, n in zip(periods, lengths)])
    assert plain < np.mean(masked) < thinner, (np.mean(masked), plain, thinner)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    path = tmp_path_factory.mktemp("aug") / "train.tfrecord"
    recs = [square_record(64, 64, (8 + 3 * i, 6 + 2 * i, 40 + i, 50), str(i)) for i in range(4)]
    return write(path, recs)


def _batches(files, augmentation, training=True, n=1):
    ds = make_dataset(files, 64, 4, training, seed=11, max_instances=4,
                      augmentation=augmentation, repeat=False, drop_remainder=False)
    return [b for _, b in zip(range(n), ds)]


_FIRST_BATCH = {}     # policy -> its first training batch (a pipeline costs seconds to trace)


def _first_batch(records, policy):
    if policy not in _FIRST_BATCH:
        options = policy and aug.Augmentation(policy, grid_mask=policy == "v0")
        _FIRST_BATCH[policy] = _batches(records, options)[0]
    return _FIRST_BATCH[policy]


@pytest.mark.parametrize("policy", ["v0", "v1", "v2", "v3", "randaugment"])
def test_every_policy_through_the_training_pipeline(records, policy):
    batch = _first_batch(records, policy)
    image, boxes, num = batch["image"].numpy(), batch["boxes"].numpy(), batch["num_boxes"]
    assert batch["image"].dtype == tf.float32 and image.shape == (4, 64, 64, 3)
    assert np.isfinite(image).all()
    for b, n in zip(boxes, num.numpy()):
        # one box per record; the scale jitter's crop may leave it out
        assert n <= 1 and (b[:n] >= 0).all() and (b[:n] <= 63).all()
        assert (b[:n, 2:] > b[:n, :2]).all()
        assert (b[n:] == -1).all()
    # Flip and jitter draw the same numbers with or without augmentation, so any change
    # is the augmentation's.
    assert not np.array_equal(image, _first_batch(records, None)["image"].numpy())


def test_augmentation_is_seeded_and_never_applied_in_eval(records):
    options = aug.Augmentation("v0", grid_mask=True)
    # RandAugment's graph is the quickest to build; the seeding is the same for all.
    again = _batches(records, aug.Augmentation("randaugment"))[0]
    np.testing.assert_array_equal(_first_batch(records, "randaugment")["image"].numpy(),
                                  again["image"].numpy())
    for augmented, plain in zip(_batches(records, options, training=False, n=2),
                                _batches(records, None, training=False, n=2)):
        for key in plain:
            np.testing.assert_array_equal(augmented[key].numpy(), plain[key].numpy())
    inactive = _batches(records, aug.Augmentation())[0]
    for key, value in _first_batch(records, None).items():
        np.testing.assert_array_equal(inactive[key].numpy(), value.numpy())


def test_settings_accept_the_policies_and_refuse_others_in_one_line():
    assert set(AUTOAUGMENT_POLICIES) == set(aug.AUTOAUGMENT_POLICIES)
    for policy in AUTOAUGMENT_POLICIES:
        config = from_dict({"steps": 1, "autoaugment_policy": policy, "grid_mask": True})
        assert (config.autoaugment_policy, config.grid_mask) == (policy, True)
    assert from_dict({"steps": 1}).autoaugment_policy is None
    with pytest.raises(TrainConfigError) as e:
        from_dict({"steps": 1, "autoaugment_policy": "v9"}, source="mine.yaml")
    message = str(e.value)
    assert "\n" not in message and "mine.yaml" in message and "autoaugment_policy" in message
    assert "'v9'" in message and "v0, v1, v2, v3, randaugment" in message
    with pytest.raises(TrainConfigError, match="grid_mask"):
        from_dict({"steps": 1, "grid_mask": "yes"})
    with pytest.raises(ValueError, match="autoaugment_policy"):
        aug.Augmentation("v9")


def test_training_input_passes_the_settings_to_the_pipeline(records, monkeypatch):
    from edetgraph.training import inputs
    from tests.test_train import tiny_config, tiny_spec

    class Built(Exception):
        pass

    def capture(*args, **kwargs):
        raise Built(kwargs.get("augmentation"))
    monkeypatch.setattr(inputs, "make_dataset", capture)
    config = tiny_config(autoaugment_policy="v2", grid_mask=True)
    with pytest.raises(Built) as e:
        inputs.distributed_input(tf.distribute.get_strategy(), records, tiny_spec(), config, 1)
    assert e.value.args[0] == aug.Augmentation("v2", grid_mask=True)
