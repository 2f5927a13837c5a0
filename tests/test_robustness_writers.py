"""Writers never lose a user's files nor write through a planted link.

- An output name that is an existing folder (``model.onnx/`` holding the user's files) is
  refused in one line before any work, and the folder survives byte for byte: every
  exporter, ``infer``, ``bench.run``, the search, ``coco_to_tfrecord``.
- A symlink planted at a writer's final name is replaced, never followed (its target keeps
  its bytes); temporaries live in a private folder made exclusively, so no fixed or
  guessable temporary name exists to plant one at.
- A model dir has one writer: a second ``train`` on a busy dir is one line naming the first
  (pid, host), and once the first is killed with SIGKILL the next one starts.
- Names from files (a latency model's, a model file's metadata) reach the terminal with
  their control characters shown as codes, or are refused.
"""
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from edetgraph import files


def _tree(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes' digest (a folder 'survives byte for byte'
    when this does not change)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _users_folder(path: Path) -> dict:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("the user's own notes\n")
    (path / "sub").mkdir()
    (path / "sub" / "data.bin").write_bytes(os.urandom(64))
    return _tree(path)


class _Run:
    """What a command run in-process left: its exit code and stderr."""

    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


def _main(command: str):
    """The ``main(argv)`` behind ``python -m <command>`` / ``python exporters/<tool>.py``
    (an exporter's through run_cli, as its ``__main__`` does)."""
    import importlib
    if command.startswith("exporters/"):
        tool = importlib.import_module(command[:-3].replace("/", "."))
        if command.endswith("to_saved_model.py"):
            return tool.main
        from exporters.cli import run_cli
        return lambda argv: run_cli(tool.PROG, tool.main, argv)
    return importlib.import_module(command).main


def _cli(capsys, command, *args):
    """Run a command's ``main`` in this process, like ``python [-m] command args`` (the
    refusals are one printed line and an exit code; no separate process is needed to see
    them): exit code (SystemExit caught) and what it printed on stderr."""
    capsys.readouterr()
    try:
        code = _main(command)([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    return _Run(code, capsys.readouterr().err)


def _one_line_refusal(r, *words):
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert any(all(w in ln for w in words) for ln in lines[-1:]), r.stderr[-2000:]


# ------------------------------------------------------------ folders at output names

@pytest.mark.parametrize("tool,name", [("to_onnx", "model.onnx"), ("to_tflite", "model.tflite"),
                                       ("to_openvino", "model.xml"), ("to_mnn", "model.mnn"),
                                       ("to_ncnn", "model.param"),
                                       ("to_onnx", "model.onnx.json"),
                                       ("to_openvino", "model.bin")])
def test_an_exporter_refuses_a_folder_at_its_output_names(tmp_path, capsys, tool, name):
    folder = tmp_path / name
    before = _users_folder(folder)
    out = tmp_path / name.replace(".json", "").replace(".bin", ".xml")
    extra = ["--quant", "fp32"] if tool in ("to_tflite", "to_openvino") else []
    r = _cli(capsys, f"exporters/{tool}.py", "--spec", "demo", "--out", str(out), *extra)
    _one_line_refusal(r, "existing folder", "refusing")
    assert _tree(folder) == before and sorted(os.listdir(tmp_path)) == [name]


def test_the_saved_model_exporter_still_refuses_a_folder_that_is_no_saved_model(tmp_path, capsys):
    before = _users_folder(tmp_path / "sm")
    r = _cli(capsys, "exporters/to_saved_model.py", "--spec", "demo", "--out", str(tmp_path / "sm"))
    _one_line_refusal(r, "refusing")
    assert _tree(tmp_path / "sm") == before


def test_a_staged_export_never_removes_a_folder_that_appeared_at_its_name(tmp_path):
    """The race the CLI check cannot see: a folder made at --out while the export ran."""
    from exporters.pipeline import StagedOutput
    out = tmp_path / "model.onnx"
    with StagedOutput(str(out)) as staged:
        Path(staged.path).write_bytes(b"model")
        before = _users_folder(out)
        with pytest.raises(files.OutputRefused, match="existing folder"):
            staged.commit({"ok": True})
    assert _tree(out) == before and not (tmp_path / "model.onnx.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]        # no staging folder left


@pytest.mark.parametrize("what", ["labels", "shard"])
def test_coco_to_tfrecord_refuses_a_folder_named_as_its_outputs(tmp_path, capsys, what):
    name = "train.labels.json" if what == "labels" else "train-00000-of-00002.tfrecord"
    before = _users_folder(tmp_path / name)
    r = _cli(capsys, "edetgraph.data.coco_to_tfrecord", "--images", str(tmp_path),
             "--annotations", str(tmp_path / "none.json"), "--out", str(tmp_path / "train"),
             "--shards", "2")
    _one_line_refusal(r, "existing folder", name)
    assert _tree(tmp_path / name) == before


def test_infer_refuses_a_folder_at_detections_json(tmp_path, capsys):
    from PIL import Image
    Image.new("RGB", (40, 30), (90, 120, 30)).save(tmp_path / "pic.png")
    before = _users_folder(tmp_path / "out" / "detections.json")
    r = _cli(capsys, "edetgraph.infer", "--spec", "demo", "--set", "image_size=128",
             "--image", str(tmp_path / "pic.png"), "--out", str(tmp_path / "out"))
    _one_line_refusal(r, "existing folder", "detections.json")
    assert _tree(tmp_path / "out" / "detections.json") == before
    assert sorted(os.listdir(tmp_path / "out")) == ["detections.json"]


def test_bench_run_refuses_a_folder_at_its_report_names(tmp_path, capsys):
    before = _users_folder(tmp_path / "b" / "results.json")
    r = _cli(capsys, "bench.run", "--spec", "demo", "--backends", "tf", "--out",
             str(tmp_path / "b"))
    assert r.returncode == 2 and "results.json there is a folder" in r.stderr, r.stderr
    assert _tree(tmp_path / "b" / "results.json") == before


def test_the_search_refuses_a_file_at_out_and_a_folder_at_its_report_names(tmp_path):
    from edetgraph.nas.common import SearchError
    from edetgraph.search import _check_args, _parser
    (tmp_path / "file").write_text("mine")
    args = _parser().parse_args(["--latency", "m.json", "--budget-ms", "10",
                                 "--out", str(tmp_path / "file")])
    with pytest.raises(SearchError, match="is a file, not a folder"):
        _check_args(args)
    before = _users_folder(tmp_path / "s" / "summary.json")
    args.out = str(tmp_path / "s")
    with pytest.raises(SearchError, match="summary.json there is a folder"):
        _check_args(args)
    assert _tree(tmp_path / "s" / "summary.json") == before
    for bad in ("nan", "inf", "-1"):
        args = _parser().parse_args(["--latency", "m.json", "--budget-ms", bad,
                                     "--out", str(tmp_path / "t")])
        with pytest.raises(SearchError, match="budget-ms"):
            _check_args(args)


def test_atomic_writers_refuse_to_replace_a_folder(tmp_path):
    before = _users_folder(tmp_path / "x.json")
    with pytest.raises(files.OutputRefused, match="existing folder"):
        files.write_text(tmp_path / "x.json", "{}")
    assert _tree(tmp_path / "x.json") == before and sorted(os.listdir(tmp_path)) == ["x.json"]


# ------------------------------------------------------------------------- symlinks

def _device_runner():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import device_runner
    finally:
        sys.path.pop(0)
    return device_runner


def _writers():
    from bench import latency_measure
    from bench.latency_model import _write as write_latency_report
    from edetgraph.checkpoints.checkpoint import _pack
    runner = _device_runner()

    def pack(path):
        src = path.parent / "ckpt"
        src.mkdir(exist_ok=True)
        (src / "a").write_text("weights")
        _pack(src, path)

    return {"files.write_text": lambda p: files.write_text(p, "new"),
            "files.write_bytes": lambda p: files.write_bytes(p, b"new"),
            "device_runner.write_whole": lambda p: runner.write_whole(str(p), "new"),
            "latency_measure": lambda p: latency_measure._write_atomic(str(p), b"new"),
            "latency_model report": lambda p: write_latency_report(str(p), "", {"a": 1}),
            "checkpoint packer": pack}


@pytest.mark.parametrize("writer", sorted(_writers()))
def test_no_writer_follows_a_link_at_its_final_or_old_temporary_names(tmp_path, writer):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "out" / "result.json"
    out.parent.mkdir()
    # the fixed temporary names writers used to take, and the final name itself
    for name in ("result.json", "result.json.partial", f"result.json.partial{os.getpid()}",
                 ".result.json.tmp", ".result.json.partial"):
        (out.parent / name).symlink_to(victim)
    _writers()[writer](out)
    assert victim.read_bytes() == b"precious"
    assert out.is_file() and not out.is_symlink()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.endswith(".partial")
                 and p.is_dir()]
    assert not leftovers


def test_temporaries_are_in_a_private_folder_made_for_them(tmp_path):
    seen = []
    with files.atomic_path(tmp_path / "f.json") as tmp:
        stage = os.path.dirname(tmp)
        seen.append((stage, os.stat(stage).st_mode & 0o777))
        Path(tmp).write_text("x")
    (stage, mode), = seen
    assert os.path.dirname(stage) == str(tmp_path) and mode == 0o700
    assert not os.path.exists(stage) and (tmp_path / "f.json").read_text() == "x"


def test_no_source_writes_through_a_fixed_temporary_name():
    """The pattern the probes found (``open(f"{out}.partial", "w")``): none is left."""
    import re
    fixed = re.compile(r"""(\+ ?["']\.partial["']|\.partial\{|["']\.[a-z_]+\.tmp["']|\.tmp\.png)""")
    found = []
    for top in ("edetgraph", "bench", "exporters", "tools"):
        for p in (ROOT / top).rglob("*.py"):
            for i, line in enumerate(p.read_text().splitlines(), 1):
                if fixed.search(line):
                    found.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not found, "\n".join(found)


# ------------------------------------------------------------------ one writer per model dir

_HOLDER = ("import sys, time; from edetgraph.files import lock_folder; "
           "lock_folder(sys.argv[1], 'train'); print('locked', flush=True); time.sleep(600)")


def _hold(folder):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_naming_the_first_and_a_killed_one_frees_the_dir(tmp_path):
    folder = tmp_path / "run"
    first = _hold(folder)
    try:
        with pytest.raises(files.FolderBusy, match=rf"another train .*pid {first.pid} on "):
            files.lock_folder(folder, "train")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    files.lock_folder(folder, "train")      # the kernel dropped the dead holder's lock
    assert f"pid {os.getpid()} " in (folder / ".lock").read_text()
    files.release_folder(folder)
    assert not (folder / ".lock").exists()


def test_train_on_a_busy_model_dir_exits_2_naming_the_other_process(tmp_path, capsys):
    folder = tmp_path / "run"
    first = _hold(folder)
    try:
        t0 = time.time()
        r = _cli(capsys, "edetgraph.train", "--spec", "demo", "--train-config", "demo",
                 "--model-dir", str(folder), "--train-set", "steps=1")
        _one_line_refusal(r, "another train is writing there", f"pid {first.pid}")
        assert time.time() - t0 < 120
        assert sorted(os.listdir(folder)) == [".lock"]            # nothing of its own written
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_a_planted_link_at_the_lock_file_is_refused_not_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").symlink_to(victim)
    with pytest.raises(files.OutputRefused, match="lock file"):
        files.lock_folder(tmp_path / "run", "train")
    assert victim.read_bytes() == b"precious"


# ----------------------------------------------------------------- terminal escapes

def test_names_from_files_reach_the_terminal_as_codes():
    from edetgraph.cli import printable
    from edetgraph.verify.file_metadata import summary_lines
    assert printable("cat\x1b[2J\x1b[H\rfake\n") == "cat\\x1b[2J\\x1b[H\\rfake\\n"
    assert printable("café 猫") == "café 猫"
    facts = {"model": "m", "spec_name": "demo\x1b[2J", "num_classes": 1,
             "edetgraph_version": "0", "labels": {"1": "cat\x1b]0;owned\x07"},
             "input": {"dtype": "float32", "batch": 1, "height": 8, "width": 8,
                       "normalisation": {"mean": 0, "std": 1, "done_by": "caller"}},
             "outputs": {"kind": "raw"}}
    lines = summary_lines({"format": "onnx", "fields": {}, "facts": facts})
    assert lines and not any("\x1b" in ln or "\x07" in ln for ln in lines)
    runner = _device_runner()
    assert runner.printable("a\x1bb") == "a\\x1bb"


def test_a_latency_model_with_control_characters_is_refused_in_one_line(tmp_path):
    from edetgraph.graph import latency_model
    good = tmp_path / "m.json"
    r = subprocess.run([sys.executable, "-c", "import sys; print(1)"], capture_output=True)
    assert r.returncode == 0
    data = {"schema": latency_model.SCHEMA, "backend": "onnxruntime", "threads": 2,
            "machine": "box\x1b[2J\x1b[Hfake line", "fitted": "2026", "kinds": {},
            "call": {}}
    good.write_text(json.dumps(data))
    with pytest.raises(latency_model.LatencyModelError, match="control characters") as e:
        latency_model.load(good)
    assert "\x1b" not in str(e.value) and "\n" not in str(e.value)


def test_device_runner_saves_outputs_whole_and_through_no_link(tmp_path):
    import numpy as np
    runner = _device_runner()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "o.npz").symlink_to(victim)
    buffer = io.BytesIO()
    np.savez(buffer, a=np.arange(3))
    runner.write_whole(str(tmp_path / "o.npz"), buffer.getvalue())
    assert victim.read_bytes() == b"precious"
    assert list(np.load(tmp_path / "o.npz")["a"]) == [0, 1, 2]


# ------------------------------------------------------------- hostile model files

def _tflite_like(tail: bytes) -> bytes:
    return b"\x18\x00\x00\x00TFL3" + b"\x00" * 16 + tail


def test_a_truncated_or_hostile_tflite_is_one_line_for_the_metadata_reader(tmp_path):
    import zipfile

    from edetgraph.verify.file_metadata import MetadataError, read_metadata
    cases = {}
    cases["truncated"] = _tflite_like(os.urandom(40))
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("edetgraph.json", b"\0" * (20 << 20))            # 20 MB in ~20 KB
    cases["bomb"] = _tflite_like(bomb.getvalue())
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(100):
            zf.writestr(f"f{i}", b"x")
    cases["many"] = _tflite_like(many.getvalue())
    deep = io.BytesIO()
    with zipfile.ZipFile(deep, "w") as zf:
        zf.writestr("edetgraph.json", "[" * 100_000 + "]" * 100_000)
    cases["deep"] = _tflite_like(deep.getvalue())
    for name, data in cases.items():
        path = tmp_path / f"{name}.tflite"
        path.write_bytes(data)
        with pytest.raises(MetadataError) as e:
            read_metadata(path)
        assert "\n" not in str(e.value) and str(path) in str(e.value), (name, e.value)


def test_valid_but_pathological_json_is_one_line(tmp_path):
    from edetgraph.graph import latency_model
    path = tmp_path / "deep.json"
    path.write_text("[" * 200_000 + "]" * 200_000)          # valid JSON, 200k levels deep
    with pytest.raises(latency_model.LatencyModelError, match="nested too deeply"):
        latency_model.load(path)
