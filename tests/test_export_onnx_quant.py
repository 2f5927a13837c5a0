"""exporters/to_onnx.py --quant fp16|int8: half-precision and int8 (QDQ) ONNX files, gated
like the other quantised files, and their bench.run rows.

The small D0-shaped spec of tests/test_export_onnx.py with random weights (the exporter's
data-dependent init gives the heads a real spread); the checks recompute the files with
onnxruntime, independently of the exporter's own gate.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from test_export_onnx import SMALL, _images, _session, _sets  # noqa: F401 (helpers shared)


def _export(out, *args, overrides=SMALL):
    from exporters import to_onnx
    assert to_onnx.main(["--spec", "d0", *_sets(overrides), "--out", str(out), *args]) == 0
    return out, json.loads(Path(str(out) + ".json").read_text())


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    """A few synthetic scenes as calibration images (a folder of JPEGs)."""
    from edetgraph.data.synthetic import generate
    folder = tmp_path_factory.mktemp("calib")
    generate(str(folder), 8, 128, seed=3, val_fraction=0.0)
    return folder / "train" / "images"


@pytest.fixture(scope="module")
def files(tmp_path_factory, calibration):
    tmp = tmp_path_factory.mktemp("onnx_quant")
    return {"fp16": _export(tmp / "f16.onnx", "--quant", "fp16"),
            "int8": _export(tmp / "i8.onnx", "--quant", "int8", "--representative-data",
                            str(calibration), "--calibration-images", "8")}


@pytest.fixture(scope="module")
def small_tf():
    from edetgraph.graph.spec import load_spec
    from edetgraph.task.weights import model_with_weights
    spec = load_spec("d0", SMALL)
    return spec, model_with_weights(spec, None, 0)[0]


def _nrmse(files, kind, small_tf):
    """RMSE / std per output against the TF model's raw outputs."""
    spec, model = small_tf
    images, run = _images(spec, "float"), _session(files[kind][0])
    pairs = [(run(x[None]), {k: v.numpy() for k, v in model.raw_outputs(x[None]).items()})
             for x in images]
    got, ref = ({k: np.concatenate([p[i][k] for p in pairs]) for k in pairs[0][i]}
                for i in (0, 1))
    return {k: float(np.sqrt(np.mean((got[k] - ref[k]) ** 2)) / ref[k].std()) for k in ref}


def test_fp16_file_halves_the_weights_keeps_float_io_and_the_signal(files, small_tf):
    import onnx
    path, summary = files["fp16"]
    model = onnx.load(str(path))
    assert {i.type.tensor_type.elem_type for i in list(model.graph.input)
            + list(model.graph.output)} == {onnx.TensorProto.FLOAT}
    big = [t for t in model.graph.initializer if np.prod(t.dims) >= 64]
    assert big and all(t.data_type == onnx.TensorProto.FLOAT16 for t in big)
    floats = sum(np.prod(t.dims) for t in big)
    assert path.stat().st_size < 4 * floats          # less than the weights in float32
    assert summary["options"]["quant"] == "fp16" and summary["parity"]["passed"]
    assert summary["parity"]["tolerance"]["name"] == "fp16"
    errs = _nrmse(files, "fp16", small_tf)
    assert max(errs.values()) < 0.05, errs        # the fp16 kind's bound, recomputed here
    assert min(errs.values()) > 1e-5              # it is not the float32 arithmetic


def test_int8_file_is_qdq_per_channel_and_carries_the_signal(files, small_tf):
    import onnx
    path, summary = files["int8"]
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 50 and ops.count("DequantizeLinear") > 50
    init = {t.name: t for t in model.graph.initializer}
    weights = [init[n.input[0]] for n in model.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in init
               and init[n.input[0]].data_type == onnx.TensorProto.INT8
               and len(init[n.input[0]].dims) == 4]
    assert weights                                # int8 conv weights ...
    scales = [init[n.input[1]] for n in model.graph.node if n.op_type == "DequantizeLinear"
              and n.input[0] in {w.name for w in weights}]
    assert any(np.prod(s.dims) > 1 for s in scales)   # ... one scale per output channel
    o = summary["options"]
    assert (o["quant"], o["calibration_images"]) == ("int8", 8) and o["triage"] is None
    assert summary["parity"]["tolerance"]["name"] == "int8" and summary["parity"]["passed"]
    assert not summary["accuracy_unverified"]["verified"]
    errs = _nrmse(files, "int8", small_tf)
    assert max(errs.values()) < 1.0 and min(errs.values()) > 1e-3, errs


def test_int8_with_hard_nms_keeps_decoding_float_and_checks_the_raw_heads(tmp_path,
                                                                         calibration):
    import onnx
    path, summary = _export(tmp_path / "i8_nms.onnx", "--quant", "int8", "--postprocess",
                            "hard-nms", "--input", "uint8", "--representative-data",
                            str(calibration), "--calibration-images", "4")
    model = onnx.load(str(path))
    made_by = {o: n for n in model.graph.node for o in n.output}
    nms = next(n for n in model.graph.node if n.op_type == "NonMaxSuppression")
    # what feeds the NMS, back to the heads, is float arithmetic: no DequantizeLinear there
    seen, todo = set(), [i for i in nms.input if i in made_by]
    while todo:
        node = made_by[todo.pop()]
        if node.name in seen or node.name.startswith(("class_net/", "box_net/")):
            continue
        seen.add(node.name)
        assert node.op_type not in ("QuantizeLinear", "DequantizeLinear"), node.name
        todo.extend(i for i in node.input if i in made_by)
    assert len(seen) > 10
    heads = summary["parity"]["heads"]             # the probe compared the raw head maps
    assert set(heads) == {"cls", "box"} and all(h["nrmse"] < 1 for h in heads.values())


def _negate_outputs(model):
    """The same model with every output negated: what a broken conversion could write."""
    import onnx
    for out in model.graph.output:
        for node in model.graph.node:
            node.output[:] = [o + "_pre" if o == out.name else o for o in node.output]
        model.graph.node.append(onnx.helper.make_node("Neg", [out.name + "_pre"], [out.name]))
    return model


def test_a_wrong_int8_file_is_refused_and_nothing_written(tmp_path, monkeypatch, calibration,
                                                         capsys):
    """int8's bound is the loosest (RMSE/std < 1): a file whose outputs are negated, what a
    broken conversion could write, must still be refused."""
    from exporters import onnx_format, to_onnx
    from exporters.cli import run_cli
    real = onnx_format.to_int8
    monkeypatch.setattr(onnx_format, "to_int8", lambda *a, **k: _negate_outputs(real(*a, **k)))
    out = tmp_path / "bad.onnx"
    argv = ["--spec", "d0", *_sets(SMALL), "--out", str(out), "--quant", "int8",
            "--representative-data", str(calibration), "--calibration-images", "2"]
    assert run_cli("to_onnx", to_onnx.main, argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("to_onnx: error: parity gate failed") and "RMSE/std" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, says", [
    (["--quant", "int8"], "--quant int8 needs --representative-data"),
    (["--quant", "fp16", "--representative-data", "x"], "only used by --quant int8"),
    (["--quant", "int8", "--representative-data", "{cal}", "--opset", "11"],
     "--quant int8 needs opset 13"),
    (["--quant", "bf16"], "invalid choice"),
])
def test_quant_requests_refused_in_one_line(args, says, tmp_path, calibration, capsys):
    from exporters import to_onnx
    from exporters.cli import run_cli
    argv = ["--spec", "d0", "--out", str(tmp_path / "x.onnx"),
            *[a.format(cal=calibration) for a in args]]
    try:
        code = run_cli("to_onnx", to_onnx.main, argv)
    except SystemExit as e:      # argparse's own refusals
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and says in err[-1]
    assert list(tmp_path.iterdir()) == []


def test_onnx_triage_keeps_chosen_tensors_float_and_ranks_by_own_error(calibration, small_tf):
    """The triage's two ONNX parts: per-tensor statistics of the full int8 file, and a
    candidate that keeps the worst tensor (its producer and readers) float."""
    import onnx

    from exporters.calibration import calibration_batches
    from exporters.onnx_quant import (RENAMED, OnnxTriage, quantised_tensors,
                                      tensor_statistics, to_int8)
    spec, _ = small_tf
    from exporters.onnx_format import OnnxFormat, convert
    from exporters.options import ExportOptions
    from exporters.pipeline import _build, _Job
    job = _build(_Job(spec, OnnxFormat(), ExportOptions(), lambda m: None))
    model = convert(job.converted, 17)

    def batches():
        return calibration_batches(str(calibration), 4, spec, "float", 1, lambda m: None)
    full = to_int8(model, batches())
    stats = tensor_statistics(model, full, batches())
    assert len(stats) > 50 and len(stats) >= len(quantised_tensors(full)) - 10
    s = next(iter(stats.values()))
    assert set(s) == {"sqnr_db", "channel_spread", "float_min", "float_max", "p999_abs", "scale"}
    # the statistic is the tensor's own rounding: ~6 dB per bit over its used range
    finite = [v["sqnr_db"] for v in stats.values() if np.isfinite(v["sqnr_db"])]
    assert 5 < np.median(finite) < 60
    worst = min(stats, key=lambda t: stats[t]["sqnr_db"])
    triage = OnnxTriage(model, batches, spec, None, None, "float", 1, 3.0, lambda m: None)
    kept = onnx.load_model_from_string(triage._convert([worst]))

    def quantised(m, t):   # a quantised graph output is renamed by the quantiser
        return any(n.op_type == "QuantizeLinear" and n.input[0] in (t, t + RENAMED)
                   for n in m.graph.node)
    assert quantised(full, worst) and not quantised(kept, worst)


def test_bench_rows_of_the_quantised_onnx_files():
    from bench.config import FILE_BACKENDS, TOLERANCE
    from bench.exports import _format
    assert FILE_BACKENDS["onnxruntime-fp16"] == ("onnxruntime", "_fp16.onnx", "fp16")
    assert FILE_BACKENDS["onnxruntime-int8"] == ("onnxruntime", "_int8.onnx", "int8")
    assert FILE_BACKENDS["onnxruntime"][1] == ".onnx"       # the float file keeps its name
    assert TOLERANCE["onnxruntime-fp16"] == "fp16" and TOLERANCE["onnxruntime-int8"] == "int8"
    from bench.config import TABLE
    fmt = _format(TABLE["onnxruntime-int8"], "calib/", 7)
    assert (fmt.kind(), fmt.onnx.representative, fmt.onnx.calibration_images) == \
        ("int8", "calib/", 7)
    assert _format(TABLE["onnxruntime"], None, 7).kind() == "fp32"
