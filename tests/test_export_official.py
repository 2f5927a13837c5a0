"""D0 and Lite0 at full size through both exporters (TFLite fp32 with its fast-NMS op, ONNX
with hard NMS): the proof that the official models export exactly.

Both exporters' checks live in this one file so that each official model is built once
(seeded random weights with their data-dependent init, the exporters' own `build` step) and
handed to the four exports through the CLIs: the TF model the two files are judged against is
the very same object, and the D0/Lite0 build is not paid twice. Everything else (conversion,
the parity gate with its TF reference and float64 run) is each exporter's own.
"""
import json
from pathlib import Path

import pytest

def _not_json(name):
    raise AssertionError(f"{name} in the summary: not strict JSON")


@pytest.fixture(scope="module")
def shared_build():
    """The exporters' `Format.build` with one model per spec (random weights, seed 0): the
    first export of a spec builds it (model_with_weights, exactly as the exporters do), the
    next reuses it. A checkpoint or another seed builds as usual."""
    from exporters.pipeline import Format
    from edetgraph.task.weights import model_with_weights
    built, calls = [], []
    original = Format.build

    def build(self, spec, opts):
        if opts.ckpt is not None or opts.seed != 0:
            return original(self, spec, opts)
        for seen, made in built:
            if seen == spec:
                calls.append((spec.name, "reused"))
                return made
        calls.append((spec.name, "built"))
        built.append((spec, model_with_weights(spec, None, 0)))
        return built[-1][1]

    Format.build = build
    yield calls
    Format.build = original


def _export(tool, tmp_path, name, *args, spec):
    import importlib
    main = importlib.import_module(f"exporters.to_{tool}").main
    out = Path(tmp_path) / name
    assert main(["--spec", spec, "--out", str(out), *args]) == 0
    return json.loads(Path(str(out) + ".json").read_text(), parse_constant=_not_json)


def _check_raw_and_detections(spec, s):
    """Raw outputs (or the detection op's inputs) within 1e-4 of TF, or (Lite0, whose TF
    float32 result is itself ~1e-4 from float64) as close to float64 as TF is; detections
    identical one to one and meaningful (confident)."""
    assert s["parity"]["passed"]
    for name, f in s["parity"]["outputs"].items():
        wide = f["float64"]
        assert f["max_abs"] <= 1e-4 or wide["file_max_abs"] <= 2 * wide["tf_max_abs"], name
        if spec == "d0":  # the two-stage SE mean keeps D0 within 1e-4 flat
            assert f["max_abs"] <= 1e-4, name
    for d in s["parity"]["detections"]:
        assert d["mismatch"] is None and d["tf"] > 0 and d["tf_top_score"] > 0.2, d
    assert s["parity"]["detections"]


@pytest.mark.slow
@pytest.mark.parametrize("spec,post", [("d0", "fast"), ("lite0", "fast")])
def test_official_specs_tflite_fp32(spec, post, tmp_path, shared_build):
    """D0 / Lite0 at full size through the TFLite fp32 gate: the fast-NMS op's inputs (the
    raw heads, the same network as a file without post-processing, which the gate also checks
    for every small spec) within 1e-4 of TF, or as close to the float64 result as TF float32
    is (Lite0), detections identical one to one."""
    s = _export("tflite", tmp_path, f"{spec}_{post}.tflite", "--quant", "fp32",
                "--postprocess", post, spec=spec)
    assert s["weights"] == {"source": "random", "seed": 0}
    assert set(s["parity"]["outputs"]) == {"box_encodings", "class_scores"}
    _check_raw_and_detections(spec, s)
    assert s["coverage"]["xnnpack"]["partitions"] == 2     # the NMS op and its casts apart
    print(f"{spec} {post}: convert {s['timings']['convert_s']:.1f} s, max |diff| "
          f"{max(f['max_abs'] for f in s['parity']['outputs'].values()):.3g}")


@pytest.mark.slow
@pytest.mark.parametrize("spec,post", [("d0", "hard-nms"), ("lite0", "hard-nms")])
def test_official_specs_onnx(spec, post, tmp_path, shared_build):
    """D0 / Lite0 at full size through the ONNX fp32 gate: hard-NMS detections identical one
    to one (and meaningful: confident, several classes), raw outputs as above when the gate
    compares them."""
    s = _export("onnx", tmp_path, f"{spec}_{post}.onnx", "--postprocess", post, spec=spec)
    assert s["weights"] == {"source": "random", "seed": 0}
    _check_raw_and_detections(spec, s)
    print(f"{spec} {post}: convert {s['timings']['convert_s']:.1f} s, total "
          f"{s['timings']['total_s']:.1f} s, {s['file']['bytes'] / 2**20:.1f} MB")

