"""Lowered TF model: official variable names/shapes, full-size forward, every fusion method,
rectangular inputs, BN in training and folded at inference (every spec built and costed:
test_every_spec.py; sync BN over replicas: test_replicas.py; XLA: test_train.py)."""
import csv

import numpy as np
import pytest
import tensorflow as tf

from edetgraph.graph.cost import model_cost
from edetgraph.graph.spec import load_spec
from edetgraph.nn.model import build_model
from edetgraph.resources import path


def _reference_variables(name):
    out = {}
    with open(path(f"efficientdet-{name}_ckpt_variables.tsv")) as f:
        for row in csv.DictReader(f, delimiter="\t"):
            n = row["name"]
            if n.endswith("/ExponentialMovingAverage") or n == "global_step":
                continue
            out[n] = () if row["shape"] == "scalar" else tuple(int(x) for x in row["shape"].split("x"))
    return out


@pytest.mark.parametrize("name", ["d0", "d1"])
def test_variables_have_the_released_names_and_shapes(name):
    model = build_model(load_spec(name))
    mine = {k: tuple(v.shape) for k, v in model.variables_by_name().items()}
    ref = _reference_variables(name)
    assert sorted(set(ref) - set(mine)) == []
    assert sorted(set(mine) - set(ref)) == []
    assert {k: v for k, v in mine.items() if ref[k] != v} == {}
    non_trainable = {k for k, v in model.variables_by_name().items() if not v.trainable}
    assert non_trainable == {k for k in ref if k.endswith(("moving_mean", "moving_variance"))}


@pytest.mark.parametrize("name,size", [("d0", 512), pytest.param("d1", 640, marks=pytest.mark.slow)])
def test_full_size_forward(name, size):
    spec = load_spec(name)
    model = build_model(spec)
    # Eagerly: the full-size shapes and values are the claim, and one eager call costs a
    # third of the CPU of tracing the graph and running it once (graph mode at full size:
    # the exporters' tests, tests/test_export_official.py).
    out = model.raw_outputs(tf.random.normal([1, size, size, 3]))
    s = size // 8
    assert tuple(out["cls_l3"].shape) == (1, s, s, 810)
    assert tuple(out["box_l7"].shape) == (1, -(-size // 128), -(-size // 128), 36)
    assert all(np.isfinite(v.numpy()).all() for v in out.values())


@pytest.mark.parametrize("method", ["fastattn", "attn", "sum", "channel_attn", "channel_fastattn"])
def test_every_fusion_method(method):
    spec = load_spec("d0", ["image_size=128", f"fpn.weight_method={method}", "fpn.channels=16",
                            "fpn.repeats=2", "head.repeats=1"])
    model = build_model(spec)
    wsm = [v for k, v in model.variables_by_name().items() if "/WSM" in k]
    if method == "sum":
        assert wsm == []
    else:
        assert {tuple(v.shape) for v in wsm} == ({()} if method in ("attn", "fastattn") else {(16,)})
    out = model.raw_outputs(tf.random.normal([1, 128, 128, 3]))
    assert tuple(out["cls_l3"].shape) == (1, 16, 16, 810)
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == model_cost(spec).total.params_trainable


def test_rectangular_and_odd_sizes():
    spec = load_spec("lite0", ["image_size=[192, 320]"])
    model = build_model(spec)
    out = model.raw_outputs(tf.zeros([1, 192, 320, 3]))
    assert [tuple(out[f"box_l{l}"].shape[1:3]) for l in range(3, 8)] == [(24, 40), (12, 20), (6, 10), (3, 5), (2, 3)]


def test_fast_fusion_is_the_papers_formula():
    spec = load_spec("d0", ["image_size=128", "fpn.channels=8", "fpn.repeats=1", "head.repeats=1"])
    model = build_model(spec)
    fuse = model.fpn.nodes["c0_out_p4"]
    for v, val in zip(fuse.weights, [2.0, -1.0, 0.5]):
        v.assign(val)
    xs = [tf.random.normal([1, 4, 4, 8]) for _ in range(3)]
    want = (2.0 * xs[0] + 0.0 * xs[1] + 0.5 * xs[2]) / (2.5 + 1e-4)
    np.testing.assert_allclose(fuse.fuse(xs).numpy(), want.numpy(), atol=1e-6)


def test_training_mode_updates_bn_and_uses_batch_statistics():
    spec = load_spec("d0", ["image_size=128", "fpn.channels=16", "fpn.repeats=1", "head.repeats=1"])
    model = build_model(spec)
    bn = model.backbone.stem_bn
    before = bn.moving_mean.numpy().copy()
    x = tf.random.normal([2, 128, 128, 3]) + 3.0
    a = model.raw_outputs(x, training=True)["cls_l3"]
    assert not np.allclose(before, bn.moving_mean.numpy())
    b = model.raw_outputs(x, training=False)["cls_l3"]
    assert not np.allclose(a.numpy(), b.numpy())


def _randomise_bn(model, seed=0):
    rng = np.random.RandomState(seed)
    for name, v in model.variables_by_name().items():
        if name.endswith(("gamma", "moving_variance")):
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32))
        elif name.endswith(("beta", "moving_mean", "bias")):
            v.assign(rng.normal(0, 0.2, v.shape).astype(np.float32))


def test_inference_bn_folding_equals_conv_then_bn(monkeypatch):
    """At inference BN is folded into the preceding conv; the result must be what the
    unfolded conv -> bias -> batch norm computes (float rounding aside)."""
    from edetgraph.nn import backbone, heads, lowering
    spec = load_spec("d0", ["image_size=128", "fpn.channels=16", "fpn.repeats=2", "head.repeats=2"])
    model = build_model(spec)
    _randomise_bn(model)
    x = tf.random.normal([1, 128, 128, 3])
    folded = model.raw_outputs(x)

    def unfolded(conv, bn, y, training):
        return conv(y) if bn is None else bn(conv(y), training)

    for mod in (backbone, heads, lowering):
        monkeypatch.setattr(mod, "conv_bn", unfolded)
    plain = model.raw_outputs(x)
    for k in folded:
        ref = plain[k].numpy()
        np.testing.assert_allclose(folded[k].numpy(), ref, atol=1e-4 * max(1.0, np.abs(ref).max()))
    assert not np.allclose(folded["cls_l3"].numpy(), model.raw_outputs(x, training=True)["cls_l3"].numpy())
