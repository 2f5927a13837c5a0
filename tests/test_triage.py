"""int8 triage: per-layer statistics on a tiny model, the search for the fewest float layers
(with a planted AP response), and the report."""
import numpy as np
import pytest
import tensorflow as tf

from exporters import triage
from exporters.options import ExportFailed


def _tiny_converter():
    """A conv net whose second layer has one channel 40x wider than the rest: the kind of
    layer int8 hurts."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.3, (3, 3, 3, 8)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (1, 1, 8, 8)).astype(np.float32)
    w2[:, :, :, 0] *= 40.0

    @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 3], tf.float32)])
    def fn(x):
        h = tf.nn.relu(tf.nn.conv2d(x, w1, 1, "SAME"))
        return {"out": tf.nn.conv2d(h, w2, 1, "SAME")}

    def data():
        for i in range(8):
            yield [np.random.default_rng(i).uniform(0, 1, (1, 16, 16, 3)).astype(np.float32)]

    def make():
        conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = data
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        return conv
    return make, data


def test_layer_statistics_and_keeping_layers_float():
    make, data = _tiny_converter()
    stats = triage.layer_statistics(make(), data)
    assert len(stats) >= 2
    for s in stats.values():
        assert set(triage.METRICS) <= set(s) and s["float_min"] <= s["float_max"]
        assert s["p999_abs"] <= max(abs(s["float_min"]), abs(s["float_max"])) + 1e-6
    worst = min(stats, key=lambda n: stats[n]["sqnr_db"])
    why = triage._why(worst, stats[worst])
    assert "SQNR" in why["why"] and why["layer"] == worst
    from edetgraph.verify.runners import tflite_interpreter
    from exporters.float_heads import Calibrated, convert_keeping_float
    full = make().convert()
    kept = convert_keeping_float(make(), data, [worst])
    ops = lambda fb: [o["op_name"] for o in tflite_interpreter(  # noqa: E731
        None, model_content=fb, no_delegates=True)._get_ops_details()]
    assert "DEQUANTIZE" in ops(kept) and ops(kept) != ops(full)
    # the choosing triage calibrates once and quantises again per candidate: the same file
    assert Calibrated(make()).keeping_float([worst]) == kept


class _Planted(triage.Triage):
    """The search with AP losses given by a table instead of real conversions."""

    def __init__(self, losses, bound, heads=()):
        super().__init__(lambda: None, None, None, None, None, "float", 1, bound, lambda m: None,
                         heads=heads)
        self.losses = losses

    def _ap_drop(self, flatbuffer, k):
        self.trials.append({"float_layers": k, "ap_drop_points": self.losses(k)})
        return self.losses(k)


@pytest.mark.parametrize("needed", [1, 2, 5, 13, 40])
def test_search_finds_the_fewest_float_layers(monkeypatch, needed):
    monkeypatch.setattr(triage.search, "convert_keeping_float",
                        lambda conv, cal, nodes: f"model-{len(nodes)}")
    t = _Planted(lambda k: 0.5 if k >= needed else 4.0, bound=1.0)
    model, k = t._search([f"layer{i}" for i in range(50)])
    assert (model, k) == (f"model-{needed}", needed)
    assert len(t.trials) <= triage.MAX_TRIALS + 1


def test_search_gives_up_in_one_line(monkeypatch):
    monkeypatch.setattr(triage.search, "convert_keeping_float",
                        lambda conv, cal, nodes: f"model-{len(nodes)}")
    t = _Planted(lambda k: 4.0, bound=1.0)
    with pytest.raises(ExportFailed, match="leave the AP loss above 1 points"):
        t._search([f"layer{i}" for i in range(6)])


@pytest.mark.parametrize("heads_enough", [True, False])
def test_the_heads_are_tried_float_as_one_group_first(monkeypatch, heads_enough):
    """A loss that lives in the heads: the heads alone, or the heads and the fewest more."""
    made = []

    def convert(conv, cal, nodes):
        made.append(list(nodes))
        return f"model-{len(nodes)}"
    monkeypatch.setattr(triage.search, "convert_keeping_float", convert)
    monkeypatch.setattr(triage.search, "layer_statistics", lambda conv, cal: {
        f"layer{i}": {"sqnr_db": float(i), "channel_spread": 1.0, "float_min": -1.0,
                      "float_max": 1.0, "p999_abs": 1.0, "scale": 0.01} for i in range(30)})
    heads = ["head0", "head1", "head2"]
    t = _Planted(lambda k: 0.5 if k >= (3 if heads_enough else 3 + 5) else 4.0, bound=1.0,
                 heads=heads)
    t.make_converter = lambda: type("C", (), {"convert": lambda self: "model-0"})()
    model, report = t.run()
    kept = [entry["layer"] for entry in report["float_layers"]]
    assert report["heads_float"] and kept[:3] == heads and made[0] == heads
    if heads_enough:
        assert model == "model-3" and kept == heads
        assert [x["float_layers"] for x in t.trials] == [0, 3]
    else:   # every later candidate keeps the heads float, and the search finds 5 more
        assert model == "model-8" and kept == heads + [f"layer{i}" for i in range(5)]
        assert all(nodes[:3] == heads for nodes in made)
