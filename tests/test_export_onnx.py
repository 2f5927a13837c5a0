"""exporters/to_onnx.py: files that compute what the TF model computes, or no file at all.

A small D0-shaped spec (converts in ~10 s) is exported here; D0 and Lite0 themselves (`slow`)
are in tests/test_export_official.py, with the other exporter's, one model build each. Random
weights go through the exporter's data-dependent init, so heads have a real spread and
detections real scores; the checks here recompute everything from the files
with onnxruntime, independently of the exporter's own gate.
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
    from exporters import to_onnx
    out = Path(tmp_dir) / name
    assert to_onnx.main(["--spec", spec, *_sets(overrides), "--out", str(out), *args]) == 0
    return out, json.loads(Path(str(out) + ".json").read_text(), parse_constant=_not_json)


def _not_json(name):
    raise AssertionError(f"{name} in the summary: not strict JSON")


@pytest.fixture(scope="module")
def small_tf():
    """The TF model the exporter builds for the small spec (same seed, same init)."""
    from edetgraph.graph.spec import load_spec
    from edetgraph.task.weights import model_with_weights
    spec = load_spec("d0", SMALL)
    return spec, model_with_weights(spec, None, 0)[0]


@pytest.fixture(scope="module")
def raw_file(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("onnx_raw"), "small.onnx")


@pytest.fixture(scope="module")
def nms_file(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("onnx_nms"), "small_nms.onnx", "--postprocess",
                   "hard-nms", "--batch", "dynamic", "--input", "uint8")


def _images(spec, kind):
    from edetgraph.resources import path
    from edetgraph.task.preprocess import prepare_image, read_image
    from edetgraph.task.weights import synthetic_images
    street = read_image(path("street.jpg")).numpy()
    return np.stack([prepare_image(im, spec, kind)
                     for im in [street, *synthetic_images(spec, 2, 5)]])


def _session(path):
    import onnxruntime as ort
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: dict(zip([o.name for o in s.get_outputs()], s.run(None, {"images": x})))


def test_raw_heads_match_tf_within_1e4(raw_file, small_tf):
    import onnx
    path, summary = raw_file
    spec, model = small_tf
    x = _images(spec, "float")
    run = _session(path)
    for i in range(len(x)):
        got = run(x[i:i + 1])
        want = {k: v.numpy() for k, v in model.raw_outputs(x[i:i + 1]).items()}
        assert set(got) == set(want) == set(model.output_shapes(1))
        for k in want:
            assert got[k].shape == want[k].shape == model.output_shapes(1)[k]
            np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-4, err_msg=k)
        assert want["cls_l3"].std() > 0.3 and want["box_l3"].std() > 0.1  # not a vacuous test
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert summary["file"]["bytes"] == path.stat().st_size
    assert summary["ops"]["Conv"] > 50 and sum(summary["ops"].values()) == len(proto.graph.node)
    assert summary["parity"]["passed"] and summary["parity"]["tolerance"]["atol"] == 1e-4
    assert {"street.jpg", "synthetic-0", "random-0"} <= set(summary["parity"]["inputs"])
    assert max(f["max_abs"] for f in summary["parity"]["outputs"].values()) <= 1e-4
    for name, f in summary["parity"]["outputs"].items():  # TF and the file against float64
        assert 0 < f["float64"]["tf_max_abs"] < 1e-4 and 0 < f["float64"]["file_max_abs"] < 1e-4
    assert summary["inputs"] == [{"name": "images", "shape": [1, 128, 128, 3],
                                  "dtype": "float32", "quantization": None}]
    assert summary["weights"] == {"source": "random", "seed": 0}


# Smaller still (levels 3-5 at 64 px): what is checked, that the flag leaves the float64
# run out of the gate, does not depend on the model.
TINY = ["image_size=64", "backbone.depth=0.1", "backbone.width=0.25", "fpn.channels=8",
        "fpn.repeats=1", "head.repeats=1", "num_classes=4", "anchors.max_level=5"]


def test_float64_factor_zero_skips_the_float64_run(tmp_path):
    _, summary = _export(tmp_path, "flat.onnx", "--float64-factor", "0", "--random-inputs", "0",
                         overrides=TINY)
    p = summary["parity"]
    assert p["passed"] and p["tolerance"]["float64_factor"] is None
    assert all(f["float64"] is None for f in p["outputs"].values())
    assert "no float64 arbitration" in p["tolerance"]["why"]


def test_hard_nms_detections_identical_to_tf_dynamic_batch_uint8(nms_file, small_tf):
    from edetgraph.graph import outputs
    from edetgraph.task.anchors import spec_anchors
    from edetgraph.task.postprocess import postprocess
    from edetgraph.task.preprocess import normalize_in_graph
    from edetgraph.verify.detections import compare_detections
    path, summary = nms_file
    spec, model = small_tf
    assert "NonMaxSuppression" in summary["ops"] and summary["inputs"][0]["dtype"] == "uint8"
    assert summary["inputs"][0]["shape"][0] is None  # dynamic batch
    x = _images(spec, "uint8")
    run = _session(path)
    for batch in (x[:1], x):  # batch sizes 1 and 3 through the same file
        got = run(batch)
        cls, box = outputs.split(model.raw_outputs(normalize_in_graph(batch, spec)), spec.levels)
        want = postprocess(cls, box, spec_anchors(spec), None, spec.image_size, method="hard")
        want = {k: v.numpy() for k, v in want.items()}
        assert got["boxes"].shape == (len(batch), 100, 4)
        assert got["num_detections"].dtype == np.int32
        for b in range(len(batch)):
            cmp = compare_detections(want, got, b, score_tol=1e-4, box_tol=1e-3 * 128)
            assert cmp["mismatch"] is None, cmp
            # scores that mean something: confident boxes of several classes
            assert cmp["tf"] > 0 and cmp["tf_top_score"] > 0.2 and cmp["tf_classes"] >= 2, cmp
    assert all(d["mismatch"] is None for d in summary["parity"]["detections"])


def test_runs_with_numpy_and_onnxruntime_only(raw_file, small_tf, tmp_path):
    path, _ = raw_file
    spec, model = small_tf
    x = _images(spec, "float")[:1]
    np.save(tmp_path / "x.npy", x)
    proc, log = tiny.run_blocked(ROOT / "bench" / "device_runner.py",
                                 [path, "--runs", 1, "--warmup", 0, "--input", tmp_path / "x.npy",
                                  "--save-outputs", tmp_path / "out.npz"],
                                 DEVICE_BLOCKED, tmp_path / "log.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert log == {"attempts": [], "loaded": []}
    got = np.load(tmp_path / "out.npz")
    for k, v in model.raw_outputs(x).items():
        np.testing.assert_allclose(got[k], v.numpy(), rtol=0, atol=1e-4, err_msg=k)


def test_foreign_ops_are_found_even_inside_subgraphs():
    from onnx import TensorProto, helper

    from exporters.onnx_format import foreign_ops
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    body = helper.make_graph([helper.make_node("NonMaxSuppressionV5", ["x"], ["y"], name="tf_nms")],
                             "body", [x], [y])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="ok"),
             helper.make_node("If", ["c"], ["y"], name="branch", then_branch=body,
                              else_branch=body),
             helper.make_node("Softmax", ["r"], ["s"], name="contrib", domain="com.microsoft")]
    graph = helper.make_graph(nodes, "g", [x], [y])
    bad = foreign_ops(helper.make_model(graph), 17)
    assert [b[0] for b in bad] == ["tf_nms", "tf_nms", "contrib"]
    assert foreign_ops(helper.make_model(helper.make_graph(nodes[:1], "g", [x], [y])), 17) == []


def test_parity_failure_exits_1_and_leaves_no_file(raw_file, tmp_path, monkeypatch, capsys):
    """The seed-0 file offered as the conversion of a seed-1 model must be refused."""
    import onnx

    from exporters import to_onnx
    from exporters.cli import run_cli
    seed0 = onnx.load(str(raw_file[0]))
    from exporters import onnx_format
    monkeypatch.setattr(onnx_format, "convert", lambda serve, opset: seed0)
    out = tmp_path / "bad.onnx"
    argv = ["--spec", "d0", *_sets(SMALL), "--seed", "1", "--out", str(out)]
    assert run_cli("to_onnx", to_onnx.main, argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("to_onnx: error: parity gate failed") and "not written" in err
    assert "max |diff|" in err and "on input" in err and "(TF " in err  # which output, where
    assert list(tmp_path.iterdir()) == []  # no file, no summary, no temporary folder


def _dets(rows, k=5):
    """Padded detections of one image from (class, score, box) rows."""
    out = {"boxes": np.zeros((1, k, 4), np.float32), "scores": np.zeros((1, k), np.float32),
           "classes": np.zeros((1, k), np.float32), "num_detections": np.array([len(rows)])}
    for i, (c, s, b) in enumerate(rows):
        out["classes"][0, i], out["scores"][0, i], out["boxes"][0, i] = c, s, b
    return out


def test_detection_matching_is_order_free_among_ties_but_strict():
    from edetgraph.verify.detections import compare_detections
    a, b = (3, 0.9, [10, 10, 50, 50]), (5, 0.9, [60, 60, 90, 99])
    tie_swapped = compare_detections(_dets([a, b]), _dets([b, a]), 0, 1e-4, 0.1)
    assert tie_swapped["mismatch"] is None and tie_swapped["top20_agreement"] == 1.0
    moved = compare_detections(_dets([a, b]), _dets([a, (5, 0.9, [60, 60, 90, 99.5])]), 0,
                               1e-4, 0.1)
    assert "TF detection 1 (class 5" in moved["mismatch"]
    fewer = compare_detections(_dets([a, b]), _dets([a]), 0, 1e-4, 0.1)
    assert fewer["mismatch"] == "TF found 2 detections, the file 1"
    assert compare_detections(_dets([a, b]), _dets([a]), 0)["mismatch"] is None  # report only


def test_gate_names_the_output_the_input_and_the_anchor():
    from edetgraph.verify.parity import ParityGate, tolerance_for
    ref = {"cls_l3": np.zeros((1, 4, 4, 9 * 4), np.float32), "box_l3": np.ones((1, 4, 4, 36))}
    got = {k: v.copy() for k, v in ref.items()}
    got["cls_l3"][0, 2, 1, 4 * 5 + 3] = 2e-4  # anchor 5, class 3
    gate = ParityGate(tolerance_for("fp32"), num_classes=4, image_side=32)
    gate.add_outputs(["street.jpg"], ref, got, real=True)
    result = gate.result()
    assert not result["passed"] and len(result["failures"]) == 1
    assert result["failures"][0].startswith("cls_l3: max |diff| 0.0002 > 0.0001; largest diff "
                                            "on input 'street.jpg' at image 0 y=2 x=1 anchor 5 "
                                            "class 3")


def test_fp32_gate_beyond_1e4_asks_float64_who_is_off():
    """TF float32 1.2e-4 above the float64 value and the file 1e-4 below it differ by 2.2e-4:
    rounding on both sides, accepted; a file 5e-4 off is not, though TF is off as much."""
    from edetgraph.verify.parity import ParityGate, format_parity, tolerance_for
    rng = np.random.default_rng(0)
    exact = {"cls_l3": rng.normal(0, 5, (1, 4, 4, 36)), "box_l3": rng.normal(0, 2, (1, 4, 4, 36))}
    tf32 = {k: v + 1.2e-4 * rng.choice([-1, 1], v.shape) for k, v in exact.items()}

    def gate_of(file, wide):
        gate = ParityGate(tolerance_for("fp32"), num_classes=4, image_side=32)
        gate.add_outputs(["street.jpg"], tf32, file, real=True, exact=wide)
        return gate.result()

    rounded = {k: v - 1e-4 * np.sign(tf32[k] - v) for k, v in exact.items()}
    ok = gate_of(rounded, exact)
    assert ok["passed"] and ok["outputs"]["cls_l3"]["max_abs"] > 2e-4
    assert ok["outputs"]["cls_l3"]["float64"] == pytest.approx(
        {"tf_max_abs": 1.2e-4, "file_max_abs": 1e-4})
    assert "TF-f64" in format_parity(ok) and "float64" in format_parity(ok)
    assert not gate_of(rounded, None)["passed"]  # without float64, 1e-4 is all there is
    strict = ParityGate(tolerance_for("fp32", float64_factor=0), num_classes=4, image_side=32)
    strict.add_outputs(["street.jpg"], tf32, rounded, real=True, exact=exact)
    assert not strict.result()["passed"]  # --float64-factor 0: the flat bound alone
    assert tolerance_for("fp32", float64_factor=0).exact_factor is None
    assert "3x" in tolerance_for("fp32", float64_factor=3).why
    off = {k: v + 5e-4 for k, v in exact.items()}
    bad = gate_of(off, exact)
    assert not bad["passed"] and len(bad["failures"]) == 2
    assert "the file is 0.0005 from the float64 result, more than 2 x TF float32's own " \
           "0.00012" in bad["failures"][0]


def test_int8_gate_pools_heads_on_real_images_only():
    from edetgraph.verify.parity import ParityGate, tolerance_for
    rng = np.random.default_rng(0)
    ref = {"cls_l3": rng.normal(size=(1, 4, 4, 36)), "cls_l4": rng.normal(size=(1, 2, 2, 36))}
    noisy = {k: v + rng.normal(scale=0.3, size=v.shape) for k, v in ref.items()}
    garbage = {k: rng.normal(size=v.shape) for k, v in ref.items()}
    gate = ParityGate(tolerance_for("int8"), num_classes=4, image_side=32)
    gate.add_outputs(["random-0"], ref, garbage, real=False)  # saturated noise input: not gated
    gate.add_outputs(["street.jpg"], ref, noisy, real=True)
    result = gate.result()
    assert result["passed"] and 0.2 < result["heads"]["cls"]["nrmse"] < 0.4
    broken = ParityGate(tolerance_for("int8"), num_classes=4, image_side=32)
    broken.add_outputs(["street.jpg"], ref, garbage, real=True)  # unrelated output: RMSE ~1.4 std
    failed = broken.result()
    assert not failed["passed"] and failed["failures"][0].startswith("cls (all levels)")
