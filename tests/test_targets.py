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


def test_tflite_splits_only_large_float_chains():
    """Float files split an MBConv chain whose expanded map passes 8 MiB into 2 or 4 channel
    groups; int8 files (a quarter of the bytes) and the other targets never do."""
    from exporters.options import ExportOptions, TFLiteOptions
    from exporters.tflite_format import TFLiteFormat
    t = targets.get("tflite")
    assert t.channel_groups(256, 256, 96) == 4          # D0 block 2a: 25 MB
    assert t.channel_groups(128, 128, 144) == 2         # D0 blocks 2b, 3a: 9.4 MB
    assert t.channel_groups(64, 64, 240) == 1           # 3.9 MB
    assert t.channel_groups(1024, 1024, 96) == 4        # never more than CONCATENATION takes
    assert all(targets.get(n).channel_groups(256, 256, 96) == 1 for n in ("tf", "onnx"))
    opts = ExportOptions()
    float_file = TFLiteFormat(TFLiteOptions(quant="fp32")).lowering(opts)
    int8_file = TFLiteFormat(TFLiteOptions(quant="int8")).lowering(opts)
    assert float_file.channel_groups(256, 256, 96) == 4
    assert int8_file.channel_groups(256, 256, 96) == 1


class _SplitEverything(targets.TFLiteTarget):
    GROUP_BYTES = 1                                     # every chain in 4 groups


def test_chains_split_by_channels_compute_what_one_chain_computes():
    from edetgraph.graph.spec import load_spec
    from edetgraph.nn.model import build_model
    model = build_model(load_spec("demo", TINY))
    x = tf.random.stateless_normal([1, 128, 128, 3], [0, 9])
    ref = model.raw_outputs(x, target="tflite")
    got = model.raw_outputs(x, target=_SplitEverything())
    for k in ref:
        np.testing.assert_allclose(got[k].numpy(), ref[k].numpy(), atol=2e-5, err_msg=k)

    def concats(target):
        fn = tf.function(lambda x: model.raw_outputs(x, target=target))
        graph = fn.get_concrete_function(tf.TensorSpec([1, 128, 128, 3])).graph
        return sum(op.type == "ConcatV2" for op in graph.get_operations())
    split_blocks = sum(b.expand is not None for b in model.backbone.blocks)
    assert split_blocks and concats(_SplitEverything()) == concats("tflite") + split_blocks


def _export_tflite(tmp_path, target, name):
    from edetgraph.graph.spec import load_spec
    from exporters.options import ExportOptions, GateOptions, TFLiteOptions
    from exporters.pipeline import export
    from exporters.tflite_format import TFLiteFormat
    fmt = TFLiteFormat(TFLiteOptions())
    fmt.target = target
    out = tmp_path / name
    return out, export(load_spec("demo", TINY), str(out), fmt,
                       ExportOptions(gate=GateOptions(random_inputs=0, float64_factor=0),
                                     verbose=False))


@pytest.mark.slow
def test_coverage_names_a_planted_op_that_xnnpack_leaves(tmp_path, capsys):
    """The TFLite forms (here with every MBConv chain split by channels, as large maps are)
    run in one partition and pass the fp32 gate (its flat 1e-4 alone, no float64 run); the
    same model written in TF's forms (AddN, BroadcastTo) is reported with the ops left on
    the reference kernels, by name and count, and the exporter says so in one line."""
    _, good = _export_tflite(tmp_path, _SplitEverything(), "good.tflite")
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
