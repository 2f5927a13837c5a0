"""edetgraph/verify/exact.py: the float64 copy of a model that arbitrates the fp32 parity gate."""
import numpy as np
import pytest

SMALL = ["image_size=128", "backbone.depth=0.1", "backbone.width=0.25", "fpn.channels=16",
         "fpn.repeats=1", "head.repeats=1", "num_classes=4"]


@pytest.fixture(scope="module")
def small():
    from edetgraph.graph.spec import load_spec
    from edetgraph.task.weights import model_with_weights
    from edetgraph.verify.images import parity_images
    spec = load_spec("d0", SMALL)  # fastattn fusion: its weights are a list of variables
    model = model_with_weights(spec, None, 0)[0]
    x = np.stack([im for _, im, _ in parity_images(spec, "float")])
    return spec, model, x


@pytest.fixture(scope="module")
def exact_float(small):
    """The float-input reference of the small model (one float64 copy, traced once)."""
    from edetgraph.verify.exact import ExactReference
    spec, model, _ = small
    return ExactReference(model, spec)


def test_copy_is_float64_everywhere_and_leaves_the_model_alone(small):
    import tensorflow as tf

    from edetgraph.verify.exact import float64_copy
    spec, model, x = small
    before = {n: v.numpy().copy() for n, v in model.variables_by_name().items()}
    twin = float64_copy(model)
    wide = twin.variables_by_name()
    assert set(wide) == set(before) and any("WSM" in n for n in wide)
    assert {v.dtype for v in wide.values()} == {tf.float64}
    for name, v in model.variables_by_name().items():
        assert v.dtype == tf.float32 and np.array_equal(v.numpy(), before[name]), name
        assert np.array_equal(wide[name].numpy(), before[name].astype(np.float64)), name


def test_reference_is_float64_arithmetic_near_float32(small, exact_float):
    spec, model, x = small
    exact = exact_float
    wide = exact(x)
    f32 = {k: v.numpy() for k, v in model.raw_outputs(x).items()}
    assert set(wide) == set(f32)
    for k in f32:
        assert wide[k].dtype == np.float64
        diff = np.abs(wide[k] - f32[k]).max()
        assert 0 < diff < 1e-4, (k, diff)  # another computation, the same values
    # float64 carries ~16 digits: one image alone and in a batch agree far below float32's
    # rounding, which moves these outputs by ~1e-6
    alone = exact(x[:1])
    assert max(np.abs(alone[k] - wide[k][:1]).max() for k in wide) < 1e-11


def test_uint8_and_probe_references(small, exact_float):
    from edetgraph.task.preprocess import normalize_in_graph
    from edetgraph.verify.exact import ExactReference
    from edetgraph.verify.images import parity_images
    spec, model, _ = small
    pixels = np.stack([im for _, im, _ in parity_images(spec, "uint8")])
    from_pixels = ExactReference(model, spec, "uint8")(pixels)
    normalised = normalize_in_graph(pixels, spec).numpy()  # the exported graph's arithmetic
    from_floats = exact_float(normalised)
    assert all(np.array_equal(v, from_floats[k]) for k, v in from_pixels.items())
    probe = ExactReference(model, spec, probe=True)(normalised)
    assert set(probe) == {"box_encodings", "class_scores"}
    assert probe["class_scores"].shape[-1] == spec.num_classes
    assert 0 < probe["class_scores"].min() and probe["class_scores"].max() < 1
