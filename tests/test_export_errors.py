"""Impossible export requests: one clear line on stderr, exit status 2, nothing written.

Every request here is refused before TensorFlow would start: the CLIs run with TensorFlow,
the converters and the runtimes made unimportable, so a refusal that needed any of them
would crash instead of printing its line.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import _tiny_models as tiny
import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCKED = ["tensorflow", "tf2onnx", "keras", "tf_keras", "onnx", "onnxruntime", "ai_edge_litert"]


def _folders(tmp_path):
    """An output folder, an empty image folder and one with a (not even decodable) jpg."""
    out, empty, images = tmp_path / "out", tmp_path / "empty", tmp_path / "images"
    for d in (out, empty, images):
        d.mkdir()
    (images / "a.jpg").write_bytes(b"not decoded before TF starts")
    (empty / "notes.txt").write_text("no images here")
    coco = tmp_path / "coco.json"
    coco.write_text('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [], '
                    '"categories": [{"id": 1, "name": "x"}]}')
    return {"out": out, "empty": empty, "images": images, "tmp": tmp_path, "coco": coco,
            "jpg": images / "a.jpg"}


# Every request in ONE interpreter with the packages blocked (an interpreter per request
# cost ~1 s each): each runs the CLI script as __main__, as `python to_X.py ARGS` does, its
# exit status from SystemExit, its stdout/stderr captured, and the blocked imports it
# attempted / the blocked modules loaded after it recorded per request.
_ALL_REQUESTS = r'''
import contextlib, io, json, runpy, sys
requests = json.loads(sys.argv[1])
results = []
for script, args in requests:
    before = len(attempts)
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [script, *args]
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    results.append({"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
                    "attempts": attempts[before:],
                    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in blocked)})
print(json.dumps(results))
'''


def _argv(case, folders):
    _, tool, args, _ = case
    subst = {"IMAGES": folders["images"], "EMPTY": folders["empty"], "COCO": folders["coco"],
             "JPG": folders["jpg"],
             "NOWHERE": folders["tmp"] / "nowhere", "OUTDIR": folders["out"]}
    args = [str(subst.get(a, a)).replace("OUTDIR", str(folders["out"])) for a in args]
    spec = [] if "--spec" in args else ["--spec", "d0"]
    out = [] if "--out" in args else ["--out", str(folders["out"] / f"model.{tool}")]
    return [*spec, *out, *args]


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    """{case id: (result, folders)}: every case of CASES, each with folders of its own."""
    folders = {c[0]: _folders(tmp_path_factory.mktemp(c[0])) for c in CASES}
    requests = [(str(ROOT / "exporters" / f"to_{c[1]}.py"), _argv(c, folders[c[0]]))
                for c in CASES]
    bootstrap = tiny.BLOCKING_BOOTSTRAP.replace(
        'sys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name="__main__")\n',
        _ALL_REQUESTS)
    assert _ALL_REQUESTS in bootstrap  # the bootstrap's blocker, then the loop above
    env = dict(os.environ, BLOCK_MODULES=",".join(BLOCKED),
               BLOCK_LOG=str(tmp_path_factory.mktemp("block") / "block.json"))
    proc = subprocess.run([sys.executable, "-c", bootstrap, json.dumps(requests)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return {c[0]: (r, folders[c[0]]) for c, r in zip(CASES, results)}


ONNX = "onnx"
TFLITE = "tflite"
CASES = [  # (id, tool, extra args with OUT for the output file, words the line must contain)
    ("int8-without-data", TFLITE, ["--quant", "int8"], ["--quant int8", "--representative-data"]),
    ("opset-too-new", ONNX, ["--opset", "19"], ["--opset 19", "9-18"]),
    ("opset-too-old", ONNX, ["--opset", "8"], ["--opset 8", "9-18"]),
    ("nms-opset-10", ONNX, ["--opset", "10", "--postprocess", "hard-nms"], ["hard-nms", "11-18"]),
    ("soft-nms-in-onnx", ONNX, ["--postprocess", "soft-nms"], ["soft-NMS", "hard NMS"]),
    ("unknown-postprocess", ONNX, ["--postprocess", "fast"], ["--postprocess fast", "hard-nms"]),
    ("hard-nms-in-tflite", TFLITE, ["--quant", "fp32", "--postprocess", "hard-nms"], ["'fast'"]),
    ("dynamic-batch-tflite", TFLITE, ["--quant", "fp32", "--batch", "dynamic"],
     ["--batch dynamic"]),
    ("fast-nms-batch-2", TFLITE, ["--quant", "fp32", "--postprocess", "fast", "--batch", "2"],
     ["--batch 2", "batch 1"]),
    ("batch-zero", ONNX, ["--batch", "0"], ["--batch 0"]),
    ("io-without-int8", TFLITE, ["--quant", "fp16", "--io", "int8"], ["--io int8", "--quant int8"]),
    ("io-with-nothing-to-do", TFLITE, ["--quant", "int8", "--representative-data", "IMAGES",
                                       "--input", "uint8", "--postprocess", "fast", "--io", "int8"],
     ["--io int8", "nothing"]),
    ("data-without-int8", TFLITE, ["--quant", "fp32", "--representative-data", "IMAGES"],
     ["only used by --quant int8"]),
    ("data-folder-without-images", TFLITE, ["--quant", "int8", "--representative-data", "EMPTY"],
     ["no .jpg"]),
    ("data-missing", TFLITE, ["--quant", "int8", "--representative-data", "NOWHERE"],
     ["no such folder or TFRecord"]),
    ("missing-quant", TFLITE, [], ["--quant"]),
    ("bad-quant", TFLITE, ["--quant", "int4"], ["int4"]),
    ("unknown-spec", ONNX, ["--spec", "d99"], ["d99"]),
    ("unknown-spec-key", ONNX, ["--set", "fpn.colour=blue"], ["fpn.colour"]),
    ("missing-checkpoint", ONNX, ["--ckpt", "NOWHERE"], ["--ckpt", "no such checkpoint"]),
    ("eval-annotations-alone", ONNX, ["--eval-annotations", "NOWHERE"],
     ["--eval-annotations needs --eval-data"]),
    ("eval-data-missing", TFLITE, ["--quant", "fp32", "--eval-data", "NOWHERE"],
     ["--eval-data", "no such folder or TFRecord"]),
    ("eval-data-without-annotations", ONNX, ["--eval-data", "IMAGES"],
     ["--eval-annotations", "instances.json"]),
    ("eval-annotations-not-json", ONNX, ["--eval-data", "IMAGES", "--eval-annotations", "JPG"],
     ["--eval-annotations", "not a COCO instances file"]),
    ("eval-image-not-in-folder", TFLITE, ["--quant", "fp16", "--eval-data", "EMPTY",
                                          "--eval-annotations", "COCO"],
     ["--eval-data", "1 image(s)", "a.jpg"]),
    ("eval-images-zero", ONNX, ["--eval-data", "IMAGES", "--eval-annotations", "COCO",
                                "--eval-images", "0"], ["--eval-images 0"]),
    ("float-heads-without-int8", TFLITE, ["--quant", "fp16", "--float-heads"],
     ["--float-heads needs --quant int8"]),
    ("float-heads-with-int8-io", TFLITE, ["--quant", "int8", "--representative-data", "IMAGES",
                                          "--float-heads", "--io", "int8"],
     ["--float-heads", "--io int8"]),
    ("float64-factor-negative", ONNX, ["--float64-factor", "-1"], ["--float64-factor -1",
                                                                    ">= 0"]),
    ("wrong-suffix", ONNX, ["--out", "OUTDIR/model.tflite"], [".onnx"]),
    ("missing-out-folder", TFLITE, ["--quant", "fp32", "--out", "OUTDIR/no/such/m.tflite"],
     ["does not exist"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request_is_one_line_and_leaves_nothing(refusals, case):
    _, tool, _, words = case
    proc, folders = refusals[case[0]]
    lines = proc["stderr"].strip().splitlines()
    assert proc["returncode"] == 2, proc["stderr"]
    assert len(lines) == 1, proc["stderr"]
    assert lines[0].startswith(f"to_{tool}: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert proc["stdout"] == ""
    assert proc["attempts"] == [] and proc["loaded"] == [], proc  # refused before TF was needed
    assert list(folders["out"].iterdir()) == []


def test_help_documents_inputs_tolerances_and_the_ap_check(monkeypatch, capsys):
    """`--help` of each CLI, in-process (the parser's own text, 80 columns as in a pipe)."""
    import importlib
    monkeypatch.setenv("COLUMNS", "80")
    for tool in (ONNX, TFLITE):
        cli = importlib.import_module(f"exporters.to_{tool}")
        with pytest.raises(SystemExit) as e:
            cli.main(["--help"])
        assert e.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "ALREADY resized" in text and "--eval-data" in text
        assert "--max-ap-drop" in text
    assert "SQNR" in text and "1e-4" in text  # the TFLite help lists every tolerance
    assert "int8 3" in text                    # ... and the AP bounds
