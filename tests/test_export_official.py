"""The official models at full size through both exporters: Lite0 through the TFLite fp32
gate with its fast-NMS op, D0 through the ONNX gate with hard NMS. The proof that the
official models export exactly.

One full-size export per exporter and per family: each exporter's path (conversion, probe,
float64 arbitration, NMS candidates) is exercised for the D0 ops at small size in
tests/test_export_tflite.py and tests/test_export_onnx.py; here the depth and size of the
real models. Lite0 goes through TFLite, whose gate compares the detection op's inputs raw:
Lite0 is the model whose TF float32 result is itself ~1e-4 from float64, so its float64
arbitration is exercised at full size; D0 goes through ONNX, its hard-NMS detections on
49k anchors identical one to one. Each model is built once by the exporters' own `build`
step (seeded random weights with their data-dependent init) and handed to its export
through the CLI.
"""
import json
from pathlib import Path

import pytest


def _not_json(name):
    raise AssertionError(f"{name} in the summary: not strict JSON")


def _export(tool, tmp_path, name, *args, spec):
    import importlib
    main = importlib.import_module(f"exporters.to_{tool}").main
    out = Path(tmp_path) / name
    assert main(["--spec", spec, "--out", str(out), *args]) == 0
    return json.loads(Path(str(out) + ".json").read_text(), parse_constant=_not_json)


def _check_raw_and_detections(s):
    """Raw outputs (or the detection op's inputs) within 1e-4 of TF, or (Lite0, whose TF
    float32 result is itself ~1e-4 from float64) as close to float64 as TF is; detections
    identical one to one and meaningful (confident)."""
    assert s["parity"]["passed"]
    for name, f in s["parity"]["outputs"].items():
        wide = f["float64"]
        assert f["max_abs"] <= 1e-4 or wide["file_max_abs"] <= 2 * wide["tf_max_abs"], name
    for d in s["parity"]["detections"]:
        assert d["mismatch"] is None and d["tf"] > 0 and d["tf_top_score"] > 0.2, d
    assert s["parity"]["detections"]


@pytest.mark.slow
@pytest.mark.parametrize("spec,post", [("lite0", "fast")])
def test_official_specs_tflite_fp32(spec, post, tmp_path):
    """Lite0 at full size through the TFLite fp32 gate: the fast-NMS op's inputs (the raw
    heads, the same network as a file without post-processing, which the gate also checks
    for every small spec) within 1e-4 of TF, or as close to the float64 result as TF float32
    is, detections identical one to one."""
    s = _export("tflite", tmp_path, f"{spec}_{post}.tflite", "--quant", "fp32",
                "--postprocess", post, spec=spec)
    assert s["weights"] == {"source": "random", "seed": 0}
    assert set(s["parity"]["outputs"]) == {"box_encodings", "class_scores"}
    _check_raw_and_detections(s)
    assert s["coverage"]["xnnpack"]["partitions"] == 2     # the NMS op and its casts apart
    print(f"{spec} {post}: convert {s['timings']['convert_s']:.1f} s, max |diff| "
          f"{max(f['max_abs'] for f in s['parity']['outputs'].values()):.3g}")


@pytest.mark.slow
@pytest.mark.parametrize("spec,post", [("d0", "hard-nms")])
def test_official_specs_onnx(spec, post, tmp_path):
    """D0 at full size through the ONNX fp32 gate: hard-NMS detections identical one to one
    (and meaningful: confident), raw outputs as above when the gate compares them."""
    s = _export("onnx", tmp_path, f"{spec}_{post}.onnx", "--postprocess", post, spec=spec)
    assert s["weights"] == {"source": "random", "seed": 0}
    _check_raw_and_detections(s)
    print(f"{spec} {post}: convert {s['timings']['convert_s']:.1f} s, total "
          f"{s['timings']['total_s']:.1f} s, {s['file']['bytes'] / 2**20:.1f} MB")

