"""exporters/to_tflite.py: fp32 / fp16 / int8 files checked against TF, or no file at all.

A small D0-shaped spec is exported here; D0 and Lite0 themselves (`slow`) are in
tests/test_export_official.py, with the other exporter's, one model build each. The checks
recompute everything from the files with LiteRT, independently of the exporter's own gate.
"""
import json
from pathlib import Path

import _tiny_models as tiny
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["image_size=128", "backbone.depth=0.1", "backbone.width=0.25", "fpn.channels=16",
         "fpn.repeats=1", "head.repeats=1", "num_classes=4"]
DEVICE_BLOCKED = ["tensorflow", "tf2onnx", "keras", "tf_keras", "edetgraph", "exporters", "bench"]


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def _export(tmp_dir, name, *args, spec="d0", overrides=SMALL):
    from exporters import to_tflite
    out = Path(tmp_dir) / name
    assert to_tflite.main(["--spec", spec, *_sets(overrides), "--out", str(out), *args]) == 0
    return out, json.loads(Path(str(out) + ".json").read_text(), parse_constant=_not_json)


def _not_json(name):
    raise AssertionError(f"{name} in the summary: not strict JSON")


@pytest.fixture(scope="module")
def small_tf():
    from edetgraph.graph.spec import load_spec
    from edetgraph.task.weights import model_with_weights
    spec = load_spec("d0", SMALL)
    return spec, model_with_weights(spec, None, 0)[0]


@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory, small_tf):
    """Exported from a checkpoint of the reference weights, with another --seed: the file
    matches TF only if the weights really came from --ckpt."""
    from edetgraph.checkpoints.checkpoint import save_checkpoint
    folder = tmp_path_factory.mktemp("tfl_fp32")
    ckpt = save_checkpoint(small_tf[1].variables_by_name(), folder / "ckpt" / "small")
    return _export(folder, "small.tflite", "--quant", "fp32", "--ckpt", ckpt, "--seed", "7")


@pytest.fixture(scope="module")
def fast_file(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("tfl_fast"), "small_fast.tflite", "--quant", "fp32",
                   "--postprocess", "fast")


def _images(spec, kind, count=2):
    from edetgraph.resources import path
    from edetgraph.task.preprocess import prepare_image, read_image
    from edetgraph.task.weights import synthetic_images
    street = read_image(path("street.jpg")).numpy()
    return np.stack([prepare_image(im, spec, kind)
                     for im in [street, *synthetic_images(spec, count - 1, 5)]])


def _run(path, x):
    from edetgraph.verify.runners import make_runner
    return make_runner("tflite", path).run(x)


def _nrmse(got, want):
    return float(np.sqrt(np.mean((got - want) ** 2)) / want.std())


def test_fp32_raw_heads_match_tf_within_1e4(fp32_file, small_tf):
    path, summary = fp32_file
    spec, model = small_tf
    for x in _images(spec, "float"):
        got = _run(path, x[None])
        want = {k: v.numpy() for k, v in model.raw_outputs(x[None]).items()}
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-4, err_msg=k)
        assert want["cls_l3"].std() > 0.3  # heads with a real spread: not a vacuous check
    assert summary["format"] == "tflite" and summary["file"]["bytes"] == path.stat().st_size
    assert summary["ops"]["CONV_2D"] > 50 and "DELEGATE" not in summary["ops"]
    assert summary["parity"]["passed"] and summary["parity"]["tolerance"]["name"] == "fp32"
    assert summary["weights"]["format"] == "object" and summary["weights"]["variables"] > 100
    for name, f in summary["parity"]["outputs"].items():  # TF and the file against float64
        assert 0 < f["float64"]["tf_max_abs"] < 1e-4 and 0 < f["float64"]["file_max_abs"] < 1e-4


def test_fast_nms_detections_identical_to_tf_fast(fast_file, small_tf):
    from edetgraph.graph import outputs
    from edetgraph.task.anchors import spec_anchors
    from edetgraph.task.postprocess import postprocess
    from edetgraph.verify.detections import compare_detections, in_pixels
    path, summary = fast_file
    spec, model = small_tf
    assert summary["ops"].get("TFLite_Detection_PostProcess") == 1
    assert not any("NON_MAX" in op for op in summary["ops"])
    assert {o["name"] for o in summary["outputs"]} == {"boxes", "scores", "classes",
                                                       "num_detections"}
    for x in _images(spec, "float", 3):
        got = _run(path, x[None])       # boxes as fractions of the input (MediaPipe's way)
        assert 0 <= got["boxes"].min() and got["boxes"].max() <= 1
        got = in_pixels(got, list(spec.image_size) * 2)
        cls, box = outputs.split(model.raw_outputs(x[None]), spec.levels)
        want = {k: v.numpy() for k, v in postprocess(cls, box, spec_anchors(spec), None,
                                                     spec.image_size, method="fast").items()}
        cmp = compare_detections(want, got, 0, score_tol=1e-4, box_tol=1e-3 * 128)
        assert cmp["mismatch"] is None, cmp
        assert cmp["tf"] > 0 and cmp["tf_top_score"] > 0.2 and cmp["tf_classes"] >= 2, cmp
    # the raw-level probe on the op's inputs was part of the gate
    assert set(summary["parity"]["outputs"]) == {"box_encodings", "class_scores"}
    assert all(f["float64"]["file_max_abs"] < 1e-4 for f in summary["parity"]["outputs"].values())


def test_fp16_within_its_tolerance(tmp_path, small_tf, fp32_file):
    path, summary = _export(tmp_path, "small_fp16.tflite", "--quant", "fp16")
    spec, model = small_tf
    x = _images(spec, "float")
    got = [_run(path, x[i:i + 1]) for i in range(len(x))]
    want = [{k: v.numpy() for k, v in model.raw_outputs(x[i:i + 1]).items()} for i in range(len(x))]
    for head in ("cls", "box"):
        keys = [k for k in want[0] if k.startswith(head)]
        g = np.concatenate([o[k].ravel() for o in got for k in keys])
        w = np.concatenate([o[k].ravel() for o in want for k in keys])
        assert 0 < _nrmse(g, w) < 0.05, head  # rounded weights do change something
    assert summary["parity"]["tolerance"]["nrmse"] == 0.05 and summary["parity"]["passed"]
    assert summary["file"]["bytes"] < 0.7 * fp32_file[1]["file"]["bytes"]  # half-size weights


def _write_tfrecord(path, images):
    import tensorflow as tf
    with tf.io.TFRecordWriter(str(path)) as w:
        for im in images:
            encoded = tf.io.encode_jpeg(im).numpy()
            w.write(tf.train.Example(features=tf.train.Features(feature={
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))
            })).SerializeToString())


def test_int8_uint8_io_from_tfrecord(tmp_path, small_tf):
    from edetgraph.task.weights import synthetic_images
    spec, model = small_tf
    _write_tfrecord(tmp_path / "cal.tfrecord", synthetic_images(spec, 8, 123))
    path, summary = _export(tmp_path, "small_int8.tflite", "--quant", "int8", "--input", "uint8",
                            "--io", "uint8", "--representative-data",
                            str(tmp_path / "cal.tfrecord"),
                            "--calibration-images", "8")
    assert summary["inputs"][0]["dtype"] == "uint8" and summary["inputs"][0]["quantization"] is None
    assert all(o["dtype"] == "uint8" and o["quantization"] for o in summary["outputs"])
    assert summary["ops"]["CONV_2D"] > 50 and summary["options"]["calibration_images"] == 8
    x = _images(spec, "uint8")
    from edetgraph.task.preprocess import normalize_in_graph
    for i in range(len(x)):
        got = _run(path, x[i:i + 1])  # the runner dequantises the uint8 outputs
        want = model.raw_outputs(normalize_in_graph(x[i:i + 1], spec))
        for head in ("cls", "box"):
            keys = [k for k in want if k.startswith(head)]
            g = np.concatenate([got[k].ravel() for k in keys])
            w = np.concatenate([want[k].numpy().ravel() for k in keys])
            assert _nrmse(g, w) < 1.0, head  # the documented int8 bound: carries the signal
    heads = summary["parity"]["heads"]
    assert summary["parity"]["passed"] and all(h["nrmse"] < 1.0 for h in heads.values())
    print("int8 small heads RMSE/std:", {h: round(v["nrmse"], 3) for h, v in heads.items()})
    # No --eval-data: the summary says the accuracy is not measured, with the SQNR per head
    unverified = summary["accuracy_unverified"]
    assert unverified["verified"] is False and "accuracy" not in summary
    for head, f in heads.items():
        assert unverified["sqnr_db"][head] == pytest.approx(-20 * np.log10(f["nrmse"]), abs=0.01)
    # ... and of each level on its own, which the gate judged too (each above 0 dB)
    levels = summary["parity"]["levels"]
    assert unverified["sqnr_db_levels"] == {h: {lvl: f["sqnr_db"] for lvl, f in by.items()}
                                            for h, by in levels.items()}
    assert all(f["sqnr_db"] > 0 for by in levels.values() for f in by.values())
    print("int8 small SQNR per level (dB):", unverified["sqnr_db_levels"])
    # One XNNPACK partition; XNNPACK has no uint8<->int8 conversion, so with uint8 at both
    # ends the only nodes left on the reference kernels are the ones at the file's edges
    xnnpack = summary["coverage"]["xnnpack"]
    assert xnnpack["partitions"] == 1 and not xnnpack["fully_delegated"]
    assert set(xnnpack["not_delegated"]) <= {"QUANTIZE", "CAST"}
    assert sum(xnnpack["not_delegated"].values()) <= len(summary["outputs"]) + 1


def test_int8_with_float_heads_keeps_only_the_heads_float(tmp_path, small_tf):
    from edetgraph.task.weights import synthetic_images
    from edetgraph.verify.runners import tflite_interpreter
    spec, model = small_tf
    _write_tfrecord(tmp_path / "cal.tfrecord", synthetic_images(spec, 8, 123))
    path, summary = _export(tmp_path, "small_int8fh.tflite", "--quant", "int8", "--float-heads",
                            "--representative-data", str(tmp_path / "cal.tfrecord"),
                            "--calibration-images", "8")
    assert summary["options"]["float_heads"] and summary["options"]["float_head_ops"] > 0
    assert summary["parity"]["passed"]
    interp = tflite_interpreter(str(path), no_delegates=True)
    float_convs = {True: 0, False: 0}
    for op in interp._get_ops_details():
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            out = interp._get_tensor_details(op["outputs"][0], 0)
            head = out["name"].startswith(("class_net/", "box_net/")) or \
                out["name"] in {d["name"] for d in interp.get_output_details()}
            assert (out["dtype"] == np.float32) == head, out["name"]
            float_convs[head] += 1
    assert float_convs[True] > 0 and float_convs[False] > 20  # heads float, the rest int8


def test_fast_file_runs_with_numpy_and_litert_only(fast_file, small_tf, tmp_path):
    path, _ = fast_file
    spec, model = small_tf
    x = _images(spec, "float")[:1]
    np.save(tmp_path / "x.npy", x)
    proc, log = tiny.run_blocked(ROOT / "bench" / "device_runner.py",
                                 [path, "--runs", 1, "--warmup", 0, "--input", tmp_path / "x.npy",
                                  "--save-outputs", tmp_path / "out.npz"],
                                 DEVICE_BLOCKED, tmp_path / "log.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert log == {"attempts": [], "loaded": []}
    got = dict(np.load(tmp_path / "out.npz"))
    want = _run(path, x)  # the same file through bench's runner, TensorFlow loaded
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert int(got["num_detections"][0]) > 0


def test_parity_failure_exits_1_and_leaves_no_file(fp32_file, tmp_path, monkeypatch, capsys):
    """The seed-0 file offered as the conversion of a seed-1 model must be refused."""
    from exporters import to_tflite
    from exporters.cli import run_cli
    seed0 = fp32_file[0].read_bytes()

    class Converter:
        def convert(self):
            return seed0
    from exporters import tflite_format
    monkeypatch.setattr(tflite_format, "make_converter", lambda *a, **k: Converter())
    out = tmp_path / "bad.tflite"
    argv = ["--spec", "d0", *_sets(SMALL), "--seed", "1", "--quant", "fp32", "--out", str(out)]
    assert run_cli("to_tflite", to_tflite.main, argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("to_tflite: error: parity gate failed") and "not written" in err
    assert "max |diff|" in err and "on input" in err
    assert list(tmp_path.iterdir()) == []


def test_int8_with_in_graph_nms_keeps_what_follows_the_nms_float(tmp_path, small_tf):
    """Boxes in pixels under one int8 scale move by several pixels and classes by a third of
    a class: what follows TFLite_Detection_PostProcess must stay float, exactly the op's
    own outputs clipped and brought to fractions of the input."""
    import warnings

    from edetgraph.task.weights import synthetic_images
    from edetgraph.verify.runners import tflite_interpreter
    spec, _ = small_tf
    _write_tfrecord(tmp_path / "cal.tfrecord", synthetic_images(spec, 8, 123))
    path, summary = _export(tmp_path, "small_int8_fast.tflite", "--quant", "int8", "--input",
                            "uint8", "--postprocess", "fast", "--representative-data",
                            str(tmp_path / "cal.tfrecord"), "--calibration-images", "8")
    assert summary["parity"]["passed"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interp = tflite_interpreter(str(path), no_delegates=True,
                                    experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    ops = interp._get_ops_details()
    at = [i for i, op in enumerate(ops) if op["op_name"] == "TFLite_Detection_PostProcess"]
    assert len(at) == 1
    quantised = [interp._get_tensor_details(i, 0) for op in ops[at[0] + 1:]
                 for i in op["outputs"]]
    assert not [d["name"] for d in quantised if d["dtype"] in (np.int8, np.uint8)]
    h, w = spec.image_size
    for x in _images(spec, "uint8", 3):
        inp = interp.get_input_details()[0]
        interp.set_tensor(inp["index"], x[None].astype(inp["dtype"]))
        interp.invoke()
        op_boxes, op_classes, op_scores, op_n = (interp.get_tensor(i)
                                                 for i in ops[at[0]]["outputs"])
        named = interp._get_full_signature_list()["serving_default"]["outputs"]
        got = {name: interp.get_tensor(index) for name, index in named.items()}
        n = int(op_n[0])
        assert n > 0 and int(got["num_detections"][0]) == n
        want = np.clip(op_boxes[0, :n], 0, [h, w, h, w]) / np.float32([h, w, h, w])
        np.testing.assert_allclose(got["boxes"][0, :n], want, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(got["scores"][0, :n], op_scores[0, :n])
        offset = got["classes"][0, :n] - op_classes[0, :n]   # 0- or 1-based: one integer
        assert np.all(offset == offset[0]) and offset[0] in (0, 1)
