"""exporters/to_ncnn.py: NCNN files (.param + .bin) that compute what the TF model computes,
or no file.

NCNN is an optional extra (pip install ncnn; its converter: pip install --no-deps pnnx);
without either, these tests skip with that reason, except the refusals, which need neither.
The small D0-shaped spec of tests/test_export_onnx.py, random weights; the checks run the
files with ncnn's own API, independently of the exporter's gate.
"""
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from test_export_onnx import SMALL, _images, _sets
from test_export_onnx_quant import _negate_outputs
from test_robustness_noise import _stray

HAVE_NCNN = importlib.util.find_spec("ncnn") is not None
HAVE_PNNX = importlib.util.find_spec("pnnx") is not None
needs_ncnn = pytest.mark.skipif(not (HAVE_NCNN and HAVE_PNNX),
                                reason="ncnn or pnnx is not installed (pip install ncnn; "
                                "pip install --no-deps pnnx)")
FILES = ("small.ncnn.param", "small.ncnn.bin", "small.ncnn.json")
# smaller still, for the exports that only need to run (the refusal, the bench row)
TINY = [*SMALL, "image_size=64", "anchors.max_level=5"]


@pytest.fixture(scope="module")
def ncnn_files(tmp_path_factory):
    """One export, with a link planted at each output name (pointing at a file the export
    must not touch) and the command's native stderr captured."""
    from exporters import to_ncnn
    from exporters.cli import run_cli
    folder = tmp_path_factory.mktemp("ncnn")
    victim = folder / "victim.txt"
    victim.write_text("the user's file\n")
    for name in FILES + ("small.ncnn.param.json",):
        (folder / name).symlink_to(victim)
    out = folder / FILES[0]
    err = folder / "stderr.txt"
    saved = os.dup(2)
    with open(err, "wb") as f:
        os.dup2(f.fileno(), 2)
        try:
            code = run_cli("to_ncnn", to_ncnn.main, ["--spec", "d0", *_sets(SMALL), "--out",
                                                     str(out), "--float64-factor", "0"])
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    assert code == 0, err.read_text()
    return out, json.loads(Path(str(out) + ".json").read_text()), err.read_text()


@needs_ncnn
def test_ncnn_files_match_tf_and_carry_their_metadata(ncnn_files):
    import ncnn

    from edetgraph.graph.spec import load_spec
    from edetgraph.task.weights import model_with_weights
    path, summary, _ = ncnn_files
    spec = load_spec("d0", SMALL)
    model = model_with_weights(spec, None, 0)[0]
    net = ncnn.Net()
    for option in ("use_fp16_storage", "use_fp16_arithmetic", "use_fp16_packed",
                   "use_bf16_storage", "use_bf16_packed"):
        setattr(net.opt, option, False)
    assert net.load_param(str(path)) == 0
    assert net.load_model(str(path.with_suffix(".bin"))) == 0
    assert list(net.input_names()) == ["images"]
    for x in _images(spec, "float"):
        want = {k: v.numpy() for k, v in model.raw_outputs(x[None]).items()}
        assert sorted(net.output_names()) == sorted(want)
        with net.create_extractor() as ex:
            ex.input("images", ncnn.Mat(np.ascontiguousarray(x, np.float32)))  # NHWC, no batch
            for name, value in want.items():
                status, mat = ex.extract(name)
                got = np.array(mat)[None]
                assert status == 0 and got.shape == value.shape, name
                np.testing.assert_allclose(got, value, rtol=0, atol=1e-4, err_msg=name)
    meta = json.loads((path.parent / "small.ncnn.json").read_text())   # beside the files
    assert meta == summary["metadata"]
    assert meta["format"] == "ncnn" and meta["num_classes"] == 4 and "labels" in meta
    assert meta["anchors"]["image_size"] == [128, 128]
    assert (meta["input"]["height"], meta["input"]["layout"]) == (128, "NHWC")
    assert meta["input"]["normalisation"]["mean"] == list(spec.preprocess.mean_rgb)
    assert {o["name"]: o["shape"] for o in summary["outputs"]}["cls_l3"] == [1, 16, 16, 36]
    assert summary["format"] == "ncnn" and summary["parity"]["passed"]
    assert summary["parity"]["tolerance"]["name"] == "fp32"
    assert summary["options"]["precision"] == "fp32" and summary["ops"]["Convolution"] > 0


@needs_ncnn
def test_the_planted_links_were_replaced_not_followed_and_nothing_else_is_left(ncnn_files):
    path, _, _ = ncnn_files
    folder = path.parent
    assert (folder / "victim.txt").read_text() == "the user's file\n"
    for name in FILES + ("small.ncnn.param.json",):
        assert not (folder / name).is_symlink() and (folder / name).stat().st_size > 0, name
    # pnnx's side files (its own .param/.bin, .py, .onnx) stayed in its temporary folder
    assert sorted(os.listdir(folder)) == sorted(FILES + ("small.ncnn.param.json", "stderr.txt",
                                                         "victim.txt"))


@needs_ncnn
def test_the_export_prints_only_its_own_lines(ncnn_files):
    """pnnx's tables and ncnn's notices stay out of the user's stderr."""
    assert not _stray(ncnn_files[2], "[to_ncnn] "), ncnn_files[2]


@needs_ncnn
def test_the_runner_reads_the_files_as_the_gate_does(ncnn_files, monkeypatch):
    from edetgraph.verify.runners import kind_for_path, make_runner
    path = ncnn_files[0]
    assert kind_for_path(path) == "ncnn"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")      # a user's choice is kept
    make_runner("ncnn", str(path), threads=1)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")                # else ncnn's threads wait passively
    r = make_runner("ncnn", str(path), threads=1)
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert [(d.name, d.shape) for d in r.input_details] == [("images", (1, 128, 128, 3))]
    assert [d.name for d in r.output_details][:2] == ["box_l3", "box_l4"]
    assert r.info()["accelerator"] == "CPU (fp32)"


@needs_ncnn
def test_a_wrong_ncnn_file_is_refused_and_nothing_written(tmp_path, monkeypatch, capsys):
    from exporters import ncnn_format, to_ncnn
    from exporters.cli import run_cli
    real = ncnn_format.onnx_convert
    monkeypatch.setattr(ncnn_format, "onnx_convert",
                        lambda *a, **k: _negate_outputs(real(*a, **k)))
    argv = ["--spec", "d0", *_sets(TINY), "--out", str(tmp_path / "bad.ncnn.param"),
            "--float64-factor", "0"]
    assert run_cli("to_ncnn", to_ncnn.main, argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("to_ncnn: error: parity gate failed") and "not written" in err
    assert list(tmp_path.iterdir()) == []


def _relu_model():
    import onnx
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 3])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])],
                                                "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8          # what tf2onnx writes; pnnx's own ONNX Runtime reads up to 11
    onnx.checker.check_model(model)
    return model


@needs_ncnn
def test_a_failing_pnnx_is_one_line(tmp_path, monkeypatch):
    from exporters import ncnn_format
    from exporters.options import ExportFailed
    param, weights = ncnn_format.pnnx_convert(_relu_model())     # the real pnnx takes it
    lines = param.splitlines()
    assert lines[0] == "7767517" and "Input" in param and " y" in param
    assert any(ln.split()[0] == "Input" and ln.split()[-3:] == ["0=3", "1=5", "2=4"]
               for ln in lines[2:])
    fake = tmp_path / "pnnx"
    fake.write_text("#!/bin/sh\necho 'pass_level0 ...'\necho 'Error: unsupported op Foo' >&2\n"
                    "exit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(ncnn_format, "pnnx_binary", lambda: str(fake))
    with pytest.raises(ExportFailed) as e:
        ncnn_format.pnnx_convert(_relu_model())
    assert str(e.value) == "pnnx failed (exit 3): Error: unsupported op Foo"
    monkeypatch.setattr(ncnn_format, "pnnx_binary", lambda: None)
    with pytest.raises(ExportFailed, match=r"^pnnx is not installed \(pip install --no-deps"):
        ncnn_format.pnnx_convert(_relu_model())


@pytest.mark.parametrize("module,message", [
    ("ncnn", "ncnn is not installed (pip install ncnn, or edetgraph's [ncnn] extra)"),
    pytest.param("pnnx", "pnnx (the converter) is not installed (pip install --no-deps pnnx)",
                 marks=pytest.mark.skipif(not HAVE_NCNN, reason="ncnn is not installed "
                                          "(asked for first)"))])
def test_without_ncnn_or_pnnx_the_request_is_refused_before_tensorflow(tmp_path, monkeypatch,
                                                                       capsys, module, message):
    from exporters import to_ncnn
    from exporters.cli import run_cli
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == module else real(name, *a))
    argv = ["--spec", "d0", "--out", str(tmp_path / "x.param")]
    assert run_cli("to_ncnn", to_ncnn.main, argv) == 2
    assert capsys.readouterr().err.strip() == f"to_ncnn: error: {message}"
    assert list(tmp_path.iterdir()) == []


@needs_ncnn
@pytest.mark.parametrize("name", ["m.ncnn.param", "m.ncnn.bin", "m.ncnn.json",
                                  "m.ncnn.param.json"])
def test_a_folder_at_any_output_name_survives_a_one_line_refusal(tmp_path, capsys, name):
    from exporters import to_ncnn
    from exporters.cli import run_cli
    (tmp_path / name).mkdir()
    (tmp_path / name / "keep.txt").write_text("mine")
    argv = ["--spec", "demo", "--out", str(tmp_path / "m.ncnn.param")]
    assert run_cli("to_ncnn", to_ncnn.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "existing folder" in err[0] and "refusing" in err[0], err
    assert sorted(os.listdir(tmp_path)) == [name]
    assert (tmp_path / name / "keep.txt").read_text() == "mine"


@needs_ncnn
def test_ncnn_runner_names_a_bad_file_in_one_line(tmp_path):
    from edetgraph.verify.runners import RunnerError, make_runner
    bad = tmp_path / "bad.param"
    bad.write_text("not an ncnn model\n")
    (tmp_path / "bad.bin").write_bytes(b"\0" * 16)
    with pytest.raises(RunnerError) as e:
        make_runner("ncnn", str(bad))
    assert str(e.value).startswith(f"{bad}: ncnn cannot load it (with bad.bin): ")
    assert "\n" not in str(e.value)


@needs_ncnn
def test_bench_row_runs_the_ncnn_file(tmp_path):
    """One benchmark over the ncnn-fp32 row."""
    from bench import run
    out = tmp_path / "bench"
    argv = ["--spec", "d0", *_sets(TINY), "--backends", "ncnn-fp32", "--out",
            str(out), "--runs", "3", "--warmup", "1", "--no-memory"]
    assert run.main(argv) == 0
    rows = {r["name"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    r = rows["ncnn-fp32"]
    assert r["status"] == "ok", r
    assert r["parity"]["passed"] and r["parity"]["tolerance"] == "fp32"
    assert r["parity"]["max_abs"] < 1e-4 and r["latency"]["p50_ms"] > 0
    stem = out / "efficientdet-d0_64x64_b1.ncnn"
    assert all(Path(f"{stem}{s}").is_file() for s in (".param", ".bin", ".json", ".param.json"))
    assert r["file_bytes"] == sum(Path(f"{stem}{s}").stat().st_size for s in (".param", ".bin"))
