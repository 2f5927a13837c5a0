"""Target-aware lowering and coverage: each target's op forms compute what TF's do, the
TFLite forms run in one XNNPACK partition, and the coverage report names a planted op that
XNNPACK does not delegate."""
import numpy as np
import pytest
import tensorflow as tf

from edetgraph.nn import targets
from edetgraph.verify import coverage

TINY = ["image_size=128", "fpn.repeats=1", "head.repeats=1", "fpn.channels=16",
        "backbone.depth=0.2", "num_classes=3"]


@pytest.mark.parametrize("name", targets.TARGETS)
@pytest.mark.parametrize("sizes", [((4, 4), (8, 8)), ((3, 3), (5, 5)), ((4, 7), (7, 13)),
                                   ((2, 2), (6, 6)), ((5, 3), (9, 5)), ((2, 2), (8, 8)),
                                   ((2, 3), (16, 24)), ((1, 1), (32, 32)), ((3, 3), (11, 11)),
                                   ((2, 2), (12, 12))])
def test_every_target_upsamples_to_the_same_pixels(name, sizes):
    (ih, iw), (oh, ow) = sizes
    x = tf.random.stateless_normal([2, ih, iw, 3], [1, 2])
    want = targets.get("tf").upsample(x, (ih, iw), (oh, ow))
    got = targets.get(name).upsample(x, (ih, iw), (oh, ow))
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    rows = targets.nearest_indices(ih, oh)
    np.testing.assert_array_equal(want.numpy()[:, :, 0], x.numpy()[:, rows, 0])


@pytest.mark.parametrize("name", targets.TARGETS)
def test_every_target_sums_and_averages_like_tf(name):
    xs = [tf.random.stateless_normal([1, 8, 8, 4], [i, 3]) for i in range(3)]
    t, ref = targets.get(name), targets.get("tf")
    np.testing.assert_allclose(t.add_n(xs).numpy(), ref.add_n(xs).numpy(), atol=1e-6)
    np.testing.assert_allclose(t.ops.add_n(xs).numpy(), ref.add_n(xs).numpy(), atol=1e-6)
    np.testing.assert_allclose(t.spatial_mean(xs[0]).numpy(),
                               tf.reduce_mean(xs[0], [1, 2], keepdims=True).numpy(), atol=1e-6)


def test_unknown_target_is_refused():
    with pytest.raises(ValueError, match="unknown lowering target 'gpu'"):
        targets.get("gpu")


def test_model_outputs_agree_across_targets():
    from edetgraph.graph.spec import load_spec
    from edetgraph.nn.model import build_model
    spec = load_spec("demo", ["image_size=160"])          # odd-sized P7: 2 -> 3 upsampling
    model = build_model(spec)
    x = tf.random.stateless_normal([1, 160, 160, 3], [0, 7])
    ref = model.raw_outputs(x)
    for name in ("tflite", "onnx", "openvino"):
        got = model.raw_outputs(x, target=name)
        for k in ref:
            np.testing.assert_allclose(got[k].numpy(), ref[k].numpy(), atol=2e-5, err_msg=k)


def _export_tflite(tmp_path, target, name):
    from edetgraph.graph.spec import load_spec
    from exporters.options import ExportOptions, GateOptions, TFLiteOptions
    from exporters.pipeline import export
    from exporters.tflite_format import TFLiteFormat
    fmt = TFLiteFormat(TFLiteOptions())
    fmt.target = target
    out = tmp_path / name
    return out, export(load_spec("demo", TINY), str(out), fmt,
                       ExportOptions(gate=GateOptions(random_inputs=0), verbose=False))


@pytest.mark.slow
def test_coverage_names_a_planted_op_that_xnnpack_leaves(tmp_path, capsys):
    """The TFLite forms run in one partition; the same model written in TF's forms (AddN,
    BroadcastTo) is reported with the ops left on the reference kernels, by name and count,
    and the exporter says so in one line."""
    _, good = _export_tflite(tmp_path, "tflite", "good.tflite")
    assert good["coverage"]["xnnpack"]["fully_delegated"]
    assert good["coverage"]["xnnpack"]["not_delegated"] == {}
    assert "ADD_N" not in good["ops"] and "DEPTH_TO_SPACE" in good["ops"]
    path, bad = _export_tflite(tmp_path, "tf", "planted.tflite")
    report = bad["coverage"]["xnnpack"]
    assert not report["fully_delegated"] and report["partitions"] > 1
    assert report["not_delegated"] == {"ADD_N": bad["ops"]["ADD_N"],
                                       "BROADCAST_TO": bad["ops"]["BROADCAST_TO"]}
    assert report == coverage.tflite(path)
    line = coverage.summary_line(report)
    assert "ADD_N" in line and "BROADCAST_TO" in line and "reference kernels" in line
    err = capsys.readouterr().err
    assert f"WARNING: {line}" in err
    assert good["coverage"]["gpu_delegate"]["compatible"] in (True, False)


def test_onnxruntime_coverage_counts_nodes_per_provider(tmp_path):
    pytest.importorskip("onnxruntime")
    import tf2onnx
    from _tiny_models import tiny_function
    fn = tiny_function()
    path = tmp_path / "tiny.onnx"
    tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=17,
                                  output_path=str(path))
    report = coverage.onnxruntime(path)
    assert report["providers"] == ["CPUExecutionProvider"]
    assert report["nodes"]["CPUExecutionProvider"] >= 3 and report["fallback"] == {}
    assert coverage.summary_line(report) is None


def test_upsampling_by_8_stays_in_one_xnnpack_partition(tmp_path):
    """A fully-connected FPN upsamples P7 to P3 (by 16): in the TFLite forms it is doublings,
    each a CONCATENATION of 4 inputs, which XNNPACK delegates (of 16 or 64 it does not)."""
    class Up(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 2, 2, 8], tf.float32)])
        def __call__(self, x):
            return {"y": targets.get("tflite").upsample(x, (2, 2), (16, 16)) * 2.0}

    m = Up()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([m.__call__.get_concrete_function()], m)
    path = tmp_path / "up.tflite"
    path.write_bytes(conv.convert())
    report = coverage.tflite(str(path))
    assert report["fully_delegated"], report
