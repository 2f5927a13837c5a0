"""Latency models: the op list agrees with the cost model for every spec, model files
round-trip and are refused when bad, prediction is the documented arithmetic, inspect
shows it, and a tiny real fit on ONNX Runtime writes a model (and resumes from its cache)."""
import json
import os

import pytest
from conftest import ROOT, run_py

from edetgraph.graph import latency, latency_model
from edetgraph.graph.cost import COMPONENTS, model_cost
from edetgraph.graph.spec import list_specs, load_spec
from edetgraph.inspect import main as inspect_main


@pytest.mark.parametrize("name", list_specs())
def test_op_list_flops_equal_the_cost_model(name):
    """Every spec, every component: the ops as the network runs them carry exactly the
    cost model's FLOPs (so no conv, activation or fusion is missing or counted twice)."""
    spec = load_spec(name)
    ops = latency.spec_ops(spec, {"relu": ("conv", "dw", "add", "sum")})
    mc = model_cost(spec)
    assert sum(o.float_ops for o in ops) // 2 == mc.total.flops
    for comp in COMPONENTS:
        c = mc.by_component[comp]
        want = sum(c.ops.values()) - c.ops.get("AddV2", 0)
        assert sum(o.float_ops for o in ops if o.component == comp) == want, comp


def test_op_list_follows_the_lowering():
    """D0 as LiteRT runs it: 214 convolutions (80 depthwise) like the exported file, swish
    unfused, relu6 of Lite0 fused into the convs and the fusion sums."""
    ops = latency.spec_ops(load_spec("d0"), {"relu": ("conv", "dw", "add", "sum")})
    kinds = [o.kind for o in ops]
    assert kinds.count("pw") + kinds.count("conv") + kinds.count("dw") == 214
    assert kinds.count("dw") == 80
    assert {o.key for o in ops if o.kind == "act"} == {"act_swish", "act_sigmoid"}
    lite = latency.spec_ops(load_spec("lite0"), {"relu": ("conv", "dw", "add", "sum")})
    assert {o.key for o in lite if o.kind == "act"} == {"act_fused"}
    assert {o.key for o in latency.spec_ops(load_spec("lite0")) if o.kind == "act"} == \
        {"act_relu"}


def _model(**kw) -> latency_model.LatencyModel:
    base = dict(backend="test", threads=2, machine="cpu", fitted="2026-01-01T00:00:00+00:00",
                kinds={k: {"const": 1.0} for k in ("pw", "conv", "dw_k3_s1", "dw_k3_s2",
                                                   "dw_k5_s1", "dw_k5_s2", "act_swish",
                                                   "act_fused", "act_relu", "act_sigmoid",
                                                   "mean", "mul", "add", "scale", "sum",
                                                   "maxpool", "upsample")},
                call={"const": 2.0}, fuses={"relu": ("conv",)})
    base.update(kw)
    return latency_model.LatencyModel(**base)


def test_model_file_round_trip(tmp_path):
    m = _model(scale=1.5, per_op=0.25, designed_set={"version": 1, "designs": []},
               info={"runtime": "x 1.0"})
    path = tmp_path / "sub" / "m.json"
    latency_model.save(m, path)
    assert sorted(os.listdir(path.parent)) == ["m.json"]     # no temporary file left
    back = latency_model.load(path)
    assert back.to_dict() == m.to_dict() and back.source == str(path)


def test_the_cpu_a_model_was_fitted_on_is_checked(tmp_path, capsys):
    """A fit records the CPU's model and instruction sets; a prediction on another kind of
    CPU (or from a file that does not say) is warned about, the same kind is not."""
    avx512 = {"model": "AMD EPYC (test)", "isa": ["avx2", "fma", "avx512f", "avx512_bf16"]}
    avx2 = {"model": "AMD EPYC (test)", "isa": ["avx2", "fma"]}
    assert latency_model.cpu_mismatch(_model(cpu=avx512), here=avx512) is None
    why = latency_model.cpu_mismatch(_model(cpu=avx512), here=avx2)
    assert "fitted on AMD EPYC (test) (avx2, fma, avx512f, avx512_bf16)" in why
    assert "this is AMD EPYC (test) (avx2, fma)" in why and "refit" in why
    assert "does not record the CPU" in latency_model.cpu_mismatch(_model(), here=avx2)
    assert latency_model.cpu_mismatch(_model(backend="tflite-fp32@pi5"), here=avx2) is None
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\n"
                       "flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni\n")
    assert latency_model.this_cpu(str(cpuinfo)) == {
        "model": "Test CPU 9000", "isa": ["avx2", "fma", "avx512f", "avx512_vnni"]}
    path = tmp_path / "m.json"                      # the record survives the file
    latency_model.save(_model(cpu=avx2), path)
    assert latency_model.load(path).cpu == avx2
    other = dict(avx2, isa=["asimd"]) if latency_model.this_cpu()["isa"] != ["asimd"] else avx2
    latency_model.save(_model(cpu=other), path)
    assert inspect_main(["--spec", "lite0", "--latency", str(path)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "its predictions may not hold here" in err
    latency_model.save(_model(cpu=latency_model.this_cpu()), path)
    assert inspect_main(["--spec", "lite0", "--latency", str(path)]) == 0
    assert capsys.readouterr().err == ""


def test_prediction_is_the_documented_arithmetic():
    spec = load_spec("lite0")
    ops = latency.spec_ops(spec, {"relu": ("conv",)})
    m = _model(scale=2.0, per_op=0.5)
    p = latency_model.predict(spec, m)
    assert p["ops"] == len(ops)
    assert p["total_ms"] == pytest.approx(2.0 * len(ops) + 0.5 * len(ops) + 2.0)
    for comp in COMPONENTS:
        n = sum(o.component == comp for o in ops)
        assert p["by_component"][comp] == pytest.approx(2.5 * n)
    # one feature: 1 ms per million multiply-accumulates of the 1x1 convs, the rest free
    kinds = {k: {} for k in m.kinds}
    kinds["pw"] = {"macs": 1e-6}
    in_b, out_b = latency.io_bytes(spec)
    m2 = _model(kinds=kinds, call={"in_bytes": 1e-6, "out_bytes": 2e-6})
    want = sum(o.macs for o in ops if o.kind == "pw") * 1e-6 + in_b * 1e-6 + out_b * 2e-6
    assert latency_model.predict(spec, m2)["total_ms"] == pytest.approx(want)
    assert in_b == 4 * 320 * 320 * 3


def test_a_missing_op_kind_is_named_and_close_kernels_stand_in():
    m = _model(kinds={"pw": {"const": 1.0}})
    with pytest.raises(latency_model.LatencyModelError, match="no coefficients for op kind"):
        latency_model.predict(load_spec("d0"), m)
    m = _model(kinds={"dw_k3_s2": {"const": 7.0}})
    assert latency_model.coefficients(m, "dw_k5_s2") == {"const": 7.0}


@pytest.mark.parametrize("content, words", [
    ("not json", "not valid JSON"),
    ('{"schema": "other"}', "not a latency model"),
    ('{"schema": "edetgraph.latency_model/1", "backend": "b"}', "missing key"),
    (None, "unknown feature 'watts'"),
    (None, "'threads' should be an integer"),
    (None, "'cpu' should be"),
])
def test_a_bad_model_file_is_one_line_naming_it(tmp_path, capsys, content, words):
    d = _model().to_dict()
    if "watts" in words:
        d["kinds"]["pw"]["watts"] = 1.0
    if "threads" in words:
        d["threads"] = "two"
    if "cpu" in words:
        d["cpu"] = {"model": "x", "isa": [1]}
    path = tmp_path / "bad.json"
    path.write_text(content if content is not None else json.dumps(d))
    with pytest.raises(latency_model.LatencyModelError, match=words):
        latency_model.load(path)
    assert inspect_main(["--spec", "d0", "--latency", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and words.split("'")[0] in err[0]


def test_inspect_shows_predicted_ms_per_component(tmp_path, capsys):
    path = tmp_path / "m.json"
    latency_model.save(_model(), path)
    assert inspect_main(["--spec", "lite0", "--latency", str(path)]) == 0
    out = capsys.readouterr().out
    block = out[out.index("latency predicted on test"):].splitlines()
    assert [ln.split()[0] for ln in block[2:9]] == [*COMPONENTS, "call", "total"]
    assert inspect_main(["--spec", "lite0", "--latency", str(path), "--json"]) == 0
    lat = json.loads(capsys.readouterr().out)["latency"]
    n = len(latency.spec_ops(load_spec("lite0"), {"relu": ("conv",)}))
    assert lat["total_ms"] == pytest.approx(n + 2.0) and lat["backend"] == "test"


def test_nnls_finds_the_non_negative_solution():
    import numpy as np

    from bench.latency_fit import nnls
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (40, 5))
    x = np.array([0.5, 0.0, 2.0, 0.0, 1.0])
    assert np.allclose(nnls(a, a @ x), x, atol=1e-9)
    got = nnls(a, a @ np.array([1.0, -1.0, 1.0, 0.0, 0.0]))   # the best has a zero
    assert (got >= 0).all() and got[1] == 0


def test_the_command_refuses_before_tensorflow(tmp_path):
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'tensorflow':\n"
            "            raise ImportError('blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "from bench.latency_model import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    r = run_py(code, "fit", "--threads", "2")
    assert r.returncode == 2 and "exactly one of --backend or --from-device" in r.stderr
    r = run_py(code, "evaluate", "--model", str(tmp_path / "none.json"), "--specs", "d0")
    assert r.returncode == 2 and "none.json: no such file" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    r = run_py(code, "evaluate", "--model", str(bad), "--specs", "d0")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "bad.json" in r.stderr
    r = run_py(code, "--help")
    assert r.returncode == 0 and "designed set" in r.stdout


def _fit_here(*argv):
    """``python -m bench.latency_model fit ...`` in this process (TensorFlow is started
    already): (exit status, stdout, stderr) as a namespace like a finished subprocess."""
    import contextlib
    import io
    import types

    from bench.latency_model import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["fit", *argv])
        except SystemExit as e:
            code = e.code
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


@pytest.fixture(scope="module")
def quick_fit(tmp_path_factory):
    """One real fit on ONNX Runtime: twelve tiny graphs and a 128-pixel network."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    work = tmp_path_factory.mktemp("latency")
    r = _fit_here("--backend", "onnxruntime", "--quick", "--passes", "1", "--work", str(work))
    return work, r


def test_a_quick_fit_writes_a_model_that_predicts(quick_fit):
    work, r = quick_fit
    assert r.returncode == 0, r.stderr[-2000:]
    model = latency_model.load(work / "onnxruntime.json")
    assert model.backend == "onnxruntime" and model.threads == 2
    assert model.designed_set["quick"] and len(model.designed_set["designs"]) == 12
    assert model.info["fit"]["whole_networks"]["count"] == 1
    p = latency_model.predict(load_spec("demo", ["image_size=128"]), model)
    assert p["total_ms"] > 0
    assert model.cpu == latency_model.this_cpu() and model.cpu["model"]   # where it was fitted
    assert latency_model.cpu_mismatch(model) is None
    lines = (work / "measurements.jsonl").read_text().splitlines()
    assert len(lines) == 13 and all(json.loads(ln)["p50_ms"] > 0 for ln in lines)


def test_a_killed_fit_resumes_from_its_cache(quick_fit):
    """Drop the last three measurements and cut one line short, as a kill would: the next
    fit times exactly the three missing graphs and reuses the rest."""
    work, r = quick_fit
    assert r.returncode == 0, r.stderr[-2000:]
    cache = work / "measurements.jsonl"
    lines = cache.read_text().splitlines()
    designs = [ln for ln in lines if "quick-demo" not in ln]
    kept = [ln for ln in lines if ln not in designs[-3:]]
    cache.write_text("\n".join(kept) + "\n" + designs[-3][:40])
    os.remove(work / "onnxruntime.json")
    r2 = _fit_here("--backend", "onnxruntime", "--quick", "--passes", "1", "--work", str(work))
    assert r2.returncode == 0, r2.stderr[-2000:]
    timed = [ln for ln in r2.stderr.splitlines() if " timed " in ln]
    assert timed == [timed[0]] and "12/12 timed" in timed[0]      # one group: the 3 missing
    assert "exporting" not in r2.stderr                          # the network's file reused
    assert (work / "onnxruntime.json").exists()
    lines = cache.read_text().splitlines()
    assert all(json.loads(ln) for ln in lines)                  # the cut line is gone
    new = [json.loads(ln) for ln in lines[len(kept):]]
    assert sorted(x["name"] for x in new) == sorted(json.loads(ln)["name"] for ln in designs[-3:])


def test_the_quick_designs_ops_are_the_files_ops(quick_fit):
    """What is fitted is what is timed: the convolutions the op list of each design counts
    are the Conv nodes of its ONNX file."""
    onnx = pytest.importorskip("onnx")
    from bench import latency_designs
    work, r = quick_fit
    assert r.returncode == 0, r.stderr[-2000:]
    files = {p.name.rsplit("-", 1)[0]: p for p in (work / "files" / "onnx").iterdir()}
    for d in latency_designs.quick_set():
        built = latency_designs.build(d, "onnx", {})
        convs = sum(o.kind in ("pw", "conv", "dw") for o in built.ops)
        nodes = [n.op_type for n in onnx.load(files[d.name]).graph.node]
        assert nodes.count("Conv") == convs, d.name


def test_layers_place_the_new_modules():
    text = (ROOT / "docs" / "architecture.md").read_text()
    for name in ("latency", "latency_model", "latency_designs", "latency_measure",
                 "latency_fit", "latency_tasks"):
        assert f"`{name}`" in text, name


def test_a_busy_machine_is_called_out():
    """Figures timed while the load exceeds the CPUs are inflated: fit and evaluate say so."""
    from bench.latency_tasks import load_warning
    assert load_warning([0.5, 1.2, 1.9], cpus=2) is None
    w = load_warning([6.8, 7.1, 7.5], cpus=2)
    assert w and "7.1" in w and "2 CPUs" in w and "quiet machine" in w
