"""edetgraph.task.weights.randomize_weights: big images go through in several passes whose batch-norm
statistics are averaged (D7x in one 8-image pass peaked at 20 GB, in passes of one at 3.7 GB)."""
import numpy as np

SMALL = ["image_size=128", "backbone.depth=0.1", "backbone.width=0.25", "fpn.channels=16",
         "fpn.repeats=1", "head.repeats=1", "num_classes=4"]


def _batch_stats(spec, images):
    """BN moving statistics after one deterministic training pass with momentum 0."""
    import tensorflow as tf

    from edetgraph.nn.layers import BatchNorm
    from edetgraph.nn.model import build_model
    model = build_model(spec, seed=0)
    for m in model.submodules:
        if isinstance(m, BatchNorm):
            m.momentum = 0.0
        if isinstance(getattr(m, "survival", None), float):
            m.survival = 1.0
    model(tf.constant(images), training=True)
    return {n: v.numpy() for n, v in model.variables_by_name().items()
            if n.endswith(("moving_mean", "moving_variance"))}


def test_passes_keep_the_image_weighted_mean_of_their_statistics():
    from edetgraph.graph.spec import load_spec
    from edetgraph.nn.model import build_model
    from edetgraph.task.preprocess import prepare_image
    from edetgraph.task.weights import randomize_weights, synthetic_images
    spec = load_spec("d0", SMALL)
    images = np.stack([prepare_image(im, spec, "float") for im in synthetic_images(spec, 3, 7)])
    first, second = _batch_stats(spec, images[:2]), _batch_stats(spec, images[2:])
    model = build_model(spec, seed=0)
    randomize_weights(model, spec, seed=0, num_images=3, max_pixels=2 * 128 * 128)  # 2, then 1
    got = model.variables_by_name()
    means = [n for n in first if n.endswith("moving_mean")]
    assert len(means) > 40  # every BN layer of the small model
    for name in means:
        want = (2 * first[name] + second[name]) / 3
        np.testing.assert_allclose(got[name].numpy(), want, rtol=1e-5, atol=1e-6, err_msg=name)
    assert any(np.abs(first[n] - second[n]).max() > 1e-2 for n in means)  # passes differ
    one_pass = build_model(spec, seed=0)
    randomize_weights(one_pass, spec, seed=0, num_images=3)  # all three at once at this size
    whole = _batch_stats(spec, images)
    for name in means:
        np.testing.assert_allclose(one_pass.variables_by_name()[name].numpy(), whole[name],
                                   rtol=1e-5, atol=1e-6, err_msg=name)
