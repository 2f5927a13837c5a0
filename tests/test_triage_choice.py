"""The TFLite int8 triage that chooses among the files it tries (exporters.triage.TFLiteTriage):
the fastest within the bound, single layers before groups, w8a16 as a step, a candidate that
fails reported and not fatal. Conversions, times and AP losses are stand-ins here (timing never
decides a test); one real w8a16 conversion of the small D0 checks the 16x8 path itself."""
import shutil

import pytest
from test_export_tflite import SMALL

from exporters import triage
from exporters.options import ExportFailed
from exporters.triage import Choice, NotApplicable

W8A16 = ("w8a16",)      # the stand-in file of the w8a16 candidate


class _Planted(triage.TFLiteTriage):
    """The choosing triage over stand-in files: a candidate is the tuple of its float layers
    (or :data:`W8A16`), its time (x the fp32 file's) and AP loss come from ``times`` and
    ``losses``. 30 layers, ``layer0`` the worst SQNR; two head ops."""

    def __init__(self, times, losses, bound=1.0, choice=Choice(), w8a16=lambda: W8A16,
                 heads=("head0", "head1")):
        self.lines = []
        super().__init__(lambda: None, None, None, None, None, "float", 1, bound,
                         self.lines.append, heads=list(heads), choice=choice, w8a16=w8a16)
        self.times, self.losses, self.converted = times, losses, []

    def statistics(self):
        return {f"layer{i}": {"sqnr_db": float(i), "channel_spread": 1.0, "float_min": -1.0,
                              "float_max": 1.0, "p999_abs": 1.0, "scale": 0.01}
                for i in range(30)}

    def _convert(self, float_layers):
        self.converted.append(tuple(float_layers))
        return tuple(float_layers)

    def _cost(self, file):
        ratio = self.times(file)
        return {"ops": 100, "float_ops": 0 if file == W8A16 else len(file), "int16_ops":
                90 if file == W8A16 else 0, "reference_kernel_ops": 0, "ms": 10 * ratio,
                "fp32_ms": 10.0, "time_vs_fp32": ratio, "timed_calls": 5, "float_names": []}

    def _ap_drop(self, file, k, label=None):
        drop = self.losses(file)
        self.trials.append({"float_layers": k, "ap_drop_points": drop, "variant": label})
        return drop


def _int8_time(file):
    """int8 at half the fp32 file's time, each float op a little slower."""
    return 0.5 + 0.01 * len(file)


def _by_name(t):
    return {v["name"]: v for v in t.variants}


# ------------------------------------------------------------------------ the choice itself

def _v(name, ratio, drop, bound=1.0):
    return {"name": name, "time_vs_fp32": ratio, "ap_drop_points": drop,
            "within_bound": drop <= bound}


def test_choose_the_fastest_within_the_bound_and_refuse_a_fast_inaccurate_one():
    slow_ok, fast_ok, fastest_bad = _v("slow", 0.8, 0.2), _v("fast", 0.6, 0.9), _v("bad", 0.4, 2)
    variants = [slow_ok, fast_ok, fastest_bad]
    assert triage.choose(variants, "speed") is fast_ok
    assert triage.choose(variants, "accuracy") is slow_ok
    assert triage.choose([fastest_bad], "speed") is None
    with pytest.raises(ValueError, match="one of speed, accuracy"):
        triage.choose(variants, "size")
    with pytest.raises(ValueError, match="'size': one of speed, accuracy"):
        Choice(goal="size")


def test_times_within_the_tie_margin_go_to_the_smaller_ap_loss():
    fast, tie = _v("fast", 0.60, 0.9), _v("tie", 0.60 * (1 + triage.SAME_SPEED / 2), 0.1)
    assert triage.choose([fast, tie], "speed") is tie
    beyond_tie = _v("slower", 0.60 * (1 + 2 * triage.SAME_SPEED), 0.1)
    assert triage.choose([fast, beyond_tie], "speed") is fast


def test_time_beside_alternates_the_two_files_and_takes_medians(monkeypatch):
    """A stand-in clock: each call advances it by its file's own time."""
    clock, calls = [0.0], []

    def call(name, seconds):
        def run(x):
            calls.append(name)
            clock[0] += seconds * (2 if len(calls) % 6 < 2 else 1)   # load slows some rounds
        return run
    monkeypatch.setattr(triage.choice.time, "perf_counter", lambda: clock[0])
    t = triage.time_beside(call("fp32", 0.010), call("file", 0.004), None, rounds=5)
    assert t == {"ms": 4.0, "fp32_ms": 10.0, "time_vs_fp32": 0.4, "timed_calls": 5}
    assert calls == ["fp32", "file"] * 6        # one untimed call each, then 5 rounds in turn
    calls.clear()
    t = triage.time_beside(call("fp32", 0.1), call("file", 2.0), None, rounds=5, budget_s=3.0)
    assert calls == ["fp32", "file"] * 3 and t["timed_calls"] == 2   # no round after the budget


# ------------------------------------------------------------------- the search, planted

def test_single_layers_are_tried_before_the_heads_group():
    """Two worst layers float are enough: the heads group and w8a16 are timed, found slower
    than that file, and not measured on the evaluation data."""
    losses = {(): 2.0, ("layer0",): 1.5, ("layer0", "layer1"): 0.8}
    t = _Planted(lambda f: 20.0 if f == W8A16 else _int8_time(f) + 0.4 * (f[:1] == ("head0",)),
                 lambda f: losses.get(f, 0.2))
    model, report = t.run()
    assert model == ("layer0", "layer1")
    assert t.converted == [(), ("layer0",), ("layer0", "layer1"), ("head0", "head1")]
    v = _by_name(t)
    assert list(v) == ["int8", "int8, 1 layer(s) float", "int8, 2 layer(s) float",
                       "int8, heads float", "w8a16"]
    assert v["int8, heads float"]["status"] == v["w8a16"]["status"] == "not measured"
    assert "slower than int8, 2 layer(s) float" in v["w8a16"]["why"]
    assert [x["variant"] for x in t.trials] == list(v)[:3]       # AP measured only where useful
    assert report["chosen"] == "int8, 2 layer(s) float" and v[report["chosen"]]["chosen"]
    assert [f["layer"] for f in report["float_layers"]] == ["layer0", "layer1"]
    assert not report["heads_float"] and "the only file tried within" in report["why"]
    assert sum(x["chosen"] for x in t.variants if "chosen" in x) == 1
    # one progress line per variant tried, saying its time and its AP
    for name in v:
        assert any(line.startswith(f"triage: {name}: ") and "fp32 file's time" in line
                   for line in t.lines), name


@pytest.mark.parametrize("w8a16_ratio", [0.55, 3.0])
def test_a_faster_file_within_the_bound_beats_the_first_one_found(w8a16_ratio):
    """The heads group is within the bound first; w8a16 is within too: it is kept when it
    is the faster (as on a device that runs 16-bit activations natively), else not even
    measured."""
    t = _Planted(lambda f: w8a16_ratio if f == W8A16 else 0.9 if f[:1] == ("head0",)
                 else _int8_time(f), lambda f: 0.1 if f == W8A16 else 0.5 if f[:1] == ("head0",)
                 else 2.0)
    model, report = t.run()
    v = _by_name(t)
    assert v["int8, heads float"]["status"] == "within the bound"
    if w8a16_ratio < 0.9:
        assert model == W8A16 and report["chosen"] == "w8a16"
        assert report["why"].startswith("the fastest of the 2 files within the bound (0.55x")
        assert v["w8a16"]["ap_drop_points"] == 0.1 and not v["int8, heads float"]["chosen"]
    else:
        assert model == ("head0", "head1") and report["chosen"] == "int8, heads float"
        assert report["heads_float"] and v["w8a16"]["status"] == "not measured"
        assert [f["layer"] for f in report["float_layers"]] == ["head0", "head1"]


def test_an_inaccurate_fast_file_is_refused():
    t = _Planted(lambda f: 0.3 if f == W8A16 else 0.9 if f[:1] == ("head0",) else 0.5,
                 lambda f: 0.5 if f[:1] == ("head0",) else 2.0)
    model, report = t.run()
    v = _by_name(t)
    assert v["w8a16"]["status"] == "beyond the bound" and v["w8a16"]["ap_drop_points"] == 2.0
    assert model == ("head0", "head1") and report["chosen"] == "int8, heads float"


def test_the_heads_then_the_fewest_more_layers_when_the_heads_alone_are_not_enough():
    t = _Planted(lambda f: 20.0 if f == W8A16 else _int8_time(f),
                 lambda f: 0.5 if f[:1] == ("head0",) and len(f) >= 5 else 3.0, w8a16=None)
    model, report = t.run()
    assert model == ("head0", "head1", "layer0", "layer1", "layer2")
    assert report["chosen"] == "int8, heads + 3 layer(s) float" and report["heads_float"]
    kept = report["float_layers"]
    assert [f["layer"] for f in kept] == list(model)
    assert "heads" in kept[0]["why"] and "SQNR" in kept[2]["why"]
    assert _by_name(t)["w8a16"]["why"] == "not offered by this export"


@pytest.mark.parametrize("failure", [RuntimeError("Quantization to 16x8-bit not yet supported "
                                                  "for op: 'X'"),
                                     NotApplicable("--io int8: int16 I/O only")])
def test_a_candidate_that_fails_is_reported_not_fatal(failure):
    def w8a16():
        raise failure
    t = _Planted(_int8_time, lambda f: 0.5 if f[:1] == ("head0",) else 2.0, w8a16=w8a16)
    model, report = t.run()
    v = _by_name(t)["w8a16"]
    assert v["status"] == ("not tried" if isinstance(failure, NotApplicable) else "failed")
    assert v["why"] == str(failure) and "ap_drop_points" not in v
    assert any(line.startswith("triage: w8a16: ") and str(failure) in line for line in t.lines)
    assert model == ("head0", "head1")


def test_a_file_the_runtime_cannot_run_is_reported_not_fatal():
    class Broken(_Planted):
        def _cost(self, file):
            if file == ("layer0",):
                raise RuntimeError("Didn't find op for builtin opcode 'CONV_2D' version '9'")
            return super()._cost(file)
    t = Broken(_int8_time, lambda f: 0.5 if f[:1] == ("head0",) else 2.0)
    model, report = t.run()
    assert _by_name(t)["int8, 1 layer(s) float"]["status"] == "failed"
    assert model == ("head0", "head1")    # that ladder ended; the heads group was still tried


def test_full_int8_within_the_bound_ends_the_speed_search():
    t = _Planted(_int8_time, lambda f: 0.4)
    model, report = t.run()
    assert model == () and t.converted == [()] and len(t.trials) == 1
    assert report["chosen"] == "int8" and report["float_layers"] == [] and not report["heads_float"]
    assert {v["name"]: v["status"] for v in t.variants} == {
        "int8": "within the bound", "int8, worst layers float": "not tried",
        "int8, heads float": "not tried", "w8a16": "not tried"}
    for key in ("bound_points", "layers_measured", "heads_float", "float_layers",
                "most_sensitive", "trials", "goal", "chosen", "why", "variants", "fp32_ms",
                "timing", "w8a16_per_layer"):
        assert key in report, key


@pytest.mark.parametrize("w8a16", [True, False])
def test_the_accuracy_goal_measures_every_candidate_and_keeps_the_smallest_loss(w8a16):
    t = _Planted(lambda f: 20.0 if f == W8A16 else 0.9 if f[:1] == ("head0",) else _int8_time(f),
                 lambda f: 0.05 if f == W8A16 else 0.2 if f[:1] == ("head0",) else 0.7,
                 choice=Choice(goal="accuracy", w8a16=w8a16))
    model, report = t.run()
    v = _by_name(t)
    assert all(x["status"] in ("within the bound", "not tried") for x in t.variants)
    assert "int8, 1 layer(s) float" in v and report["goal"] == "accuracy"
    if w8a16:
        assert model == W8A16 and "SLOWER than the fp32 file" in report["why"]
        assert report["float_layers"] == []     # the stand-in file has no float op
    else:
        assert model == ("head0", "head1") and v["w8a16"]["why"] == "--no-w8a16"


def test_nothing_within_the_bound_fails_in_one_line_naming_every_try():
    t = _Planted(_int8_time, lambda f: 4.0)
    with pytest.raises(ExportFailed, match="no file tried leaves the AP loss within 1 points") \
            as e:
        t.run()
    assert "int8 +4.00" in str(e.value) and "w8a16 +4.00" in str(e.value)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------- the CLI

def test_the_cli_passes_the_goal_and_the_w8a16_switch(tmp_path, monkeypatch, capsys):
    from edetgraph.resources import path
    from exporters import pipeline, to_tflite
    (tmp_path / "cal").mkdir()
    shutil.copy(path("street.jpg"), tmp_path / "cal" / "a.jpg")
    seen = []
    monkeypatch.setattr(pipeline, "run", lambda spec, out, fmt, opts: seen.append(fmt) or 0)
    base = ["--spec", "d0", "--out", str(tmp_path / "m.tflite"), "--quant", "int8",
            "--representative-data", str(tmp_path / "cal")]
    assert to_tflite.main(base) == 0
    assert to_tflite.main(base + ["--triage-goal", "accuracy", "--no-w8a16"]) == 0
    assert [f.choice for f in seen] == [Choice("speed", True), Choice("accuracy", False)]
    assert to_tflite.TRIAGE_GOALS == triage.GOALS
    with pytest.raises(SystemExit):
        to_tflite.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--triage-goal {speed,accuracy}" in text and "--no-w8a16" in text
    assert "the fastest" in text and "16-bit activations" in text


# ------------------------------------------------------------- the real 16x8 conversion

@pytest.fixture(scope="module")
def small_tf():
    """The small D0 of tests/test_export_tflite.py (same overrides, seed 0)."""
    from edetgraph.graph.spec import load_spec
    from edetgraph.task.weights import model_with_weights
    spec = load_spec("d0", SMALL)
    return spec, model_with_weights(spec, None, 0)[0]


def test_w8a16_of_the_small_model_runs_and_passes_the_gate(small_tf, tmp_path):
    """The triage's w8a16 candidate, converted as the exporter does: int16 activations,
    within the int8 gate the export applies, and as close to TF as an fp16 file must be
    (with the converter's own 16x8 path the shared class-head bias shifts the logits of
    every level but one: RMSE/std 0.7-12 here)."""
    from edetgraph.task.preprocess import prepare_image
    from edetgraph.task.serving import make_serving_fn
    from edetgraph.task.weights import synthetic_images
    from edetgraph.verify.gate import run_gate
    from edetgraph.verify.parity import ParityGate, tolerance_for
    from edetgraph.verify.runners import make_runner
    from exporters import tflite_format
    from exporters.float_heads import precisions
    from exporters.options import ExportOptions, TFLiteOptions
    spec, model = small_tf
    opts = ExportOptions()
    fmt = tflite_format.TFLiteFormat(TFLiteOptions(quant="int8"))
    serve = make_serving_fn(model, spec, 1, "float", None, target=fmt.lowering(opts))

    def calibration():
        for image in synthetic_images(spec, 4, 123):
            yield [prepare_image(image, spec, "float")[None]]
    flatbuffer = tflite_format._w8a16(serve, model, "float", opts, calibration)
    facts = precisions(flatbuffer)
    assert facts["int16_ops"] > facts["float_ops"] and facts["int16_ops"] > 100
    path = tmp_path / "small_w8a16.tflite"
    path.write_bytes(flatbuffer)
    runner = make_runner("tflite", path)
    gate = ParityGate(tolerance_for("int8"), spec.num_classes, max(spec.image_size))
    parity = run_gate(gate, make_serving_fn(model, spec, 1, "float", None), runner.run, spec,
                      "float", 1, 1, detections=False)
    assert parity["passed"]
    assert all(h["nrmse"] < tolerance_for("fp16").nrmse for h in parity["heads"].values()), \
        parity["heads"]
    # its cost as the triage measures it (the file timed beside itself: only the facts and
    # the shape of the record are checked, never a time)
    t = triage.TFLiteTriage(None, calibration, spec, serve, None, "float", 1, 1.0,
                            lambda m: None, reference=lambda: flatbuffer)
    with t._clock():
        cost = t._cost(flatbuffer)
    assert cost["int16_ops"] == facts["int16_ops"] and cost["ms"] > 0 and cost["fp32_ms"] > 0
    assert 1 <= cost["timed_calls"] <= triage.TIMED_ROUNDS
    assert 0 <= cost["reference_kernel_ops"] <= cost["ops"]
    print("small D0 w8a16:", {k: v for k, v in cost.items() if k != "float_names"},
          {h: round(f["nrmse"], 4) for h, f in parity["heads"].items()})
    # what it cannot be made for is said, not attempted
    with pytest.raises(NotApplicable, match="--io int8"):
        tflite_format._w8a16(serve, model, "int8", opts, calibration)
    with pytest.raises(NotApplicable, match="--postprocess fast"):
        tflite_format._w8a16(serve, model, "float", ExportOptions(postprocess="fast"),
                             calibration)
