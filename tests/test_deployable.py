"""Deployable files (issue 15): class names from a custom COCO file travel through the
records, training, eval, infer, the exports' metadata and the benchmark report; exported
files carry TFLite Model Metadata / ONNX metadata that reads back (ONNX with TensorFlow
blocked); ``infer --model`` runs them and finds what the TF path finds; bad files are
refused in one line.

One tiny model (64 px, three classes named cat, cup and rocket) is trained for a few steps
and exported once for the whole module. The commands run in-process through their
``main(argv)`` (their stderr noise in a process of their own is tests/test_robustness_noise.py's
subject); only the ONNX reader with TensorFlow blocked needs a fresh interpreter.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_py
from test_no_tf import BLOCK_TF

pytestmark = pytest.mark.slow

NAMES = {1: "cat", 2: "cup", 3: "rocket"}
TINY = ["image_size=64", "num_classes=3", "backbone.width=0.25", "backbone.depth=0.1",
        "fpn.channels=8", "fpn.repeats=1", "head.repeats=1", "anchors.max_level=5"]
SETS = [x for kv in TINY for x in ("--set", kv)]


class _Run:
    """What a command run in-process left: its exit code, stdout and stderr."""

    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _device_runner():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import device_runner
    finally:
        sys.path.pop(0)
    return device_runner


def _main(command: str):
    """The ``main(argv)`` behind ``python -m <command>`` / ``python <script>``."""
    if command == "exporters/to_tflite.py":
        from exporters import to_tflite
        from exporters.cli import run_cli
        return lambda argv: run_cli(to_tflite.PROG, to_tflite.main, argv)
    if command == "exporters/to_onnx.py":
        from exporters import to_onnx
        from exporters.cli import run_cli
        return lambda argv: run_cli(to_onnx.PROG, to_onnx.main, argv)
    if command == "bench/device_runner.py":
        return _device_runner().main
    import importlib
    return importlib.import_module(command).main


def _cli(capsys, command, *args):
    """Run a command's ``main`` in this process, like ``python [-m] command args``: exit code
    (SystemExit caught) and what it printed."""
    capsys.readouterr()
    try:
        code = _main(command)([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return _Run(code, out.out, out.err)


def _custom_coco(root: Path) -> dict:
    """The synthetic shapes renamed: a custom COCO file whose categories carry names."""
    from edetgraph.data.synthetic import generate
    summary = generate(root, 16, 64, seed=3, val_fraction=0.25, num_classes=3)
    for split in summary["splits"].values():
        path = Path(split["annotations"])
        coco = json.loads(path.read_text())
        coco["categories"] = [{"id": k, "name": v, "supercategory": "thing"}
                              for k, v in NAMES.items()]
        path.write_text(json.dumps(coco))
    return summary


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Records, a trained model dir and its exports."""
    from edetgraph.data.coco_to_tfrecord import convert
    from edetgraph.graph.spec import load_spec
    from edetgraph.training.config import from_dict
    from edetgraph.training.trainer import train
    root = tmp_path_factory.mktemp("deployable")
    summary = _custom_coco(root / "coco")
    out = {"root": root}
    for split in ("train", "val"):
        s = summary["splits"][split]
        out[split] = convert(s["images_dir"], s["annotations"], str(root / "rec" / split), 1,
                             log=None)
        out[f"{split}_images"], out[f"{split}_json"] = s["images_dir"], s["annotations"]
    cfg = from_dict({"batch_size": 4, "steps": 3, "warmup_steps": 1, "learning_rate": 0.4,
                     "log_every_steps": 1, "max_instances": 10, "seed": 1,
                     "checkpoint_every_minutes": None, "bn_recalibration_batches": 1})
    result = train(load_spec("d0", TINY), cfg, root / "run", data=str(root / "rec" / "train-*"),
                   log=lambda m: None)
    out["ckpt"], out["model_dir"] = result.checkpoint, root / "run"
    # a tiny model after 3 steps at a high rate has wide box codes: the gate's float32
    # rounding bound, not this module's subject, is loosened; and it is the flat bound
    # alone (no float64 model to arbitrate: --float64-factor 0), which is stricter and
    # skips building and running the model in float64 for each export
    common = ["--spec", "d0", *SETS, "--ckpt", str(root / "run"), "--random-inputs", "1",
              "--atol", "1e-3", "--float64-factor", "0"]
    for name, script, extra in (("fast", "to_tflite.py", ["--quant", "fp32", "--postprocess",
                                                          "fast", "--author", "QA team",
                                                          "--license", "CC-BY-4.0"]),
                                ("raw_tflite", "to_tflite.py", ["--quant", "fp32"]),
                                ("onnx", "to_onnx.py", ["--model-version", "7"])):
        path = root / f"tiny_{name}.{'onnx' if name == 'onnx' else 'tflite'}"
        code = _main(f"exporters/{script}")([*common, "--out", str(path), *extra])
        assert code == 0, name
        out[name] = path
    return out


def test_names_travel_from_the_coco_file_to_the_model_dir_and_checkpoint(made):
    from edetgraph.checkpoints.checkpoint import checkpoint_labels
    from edetgraph.data.labels import load_labels
    from edetgraph.data.pipeline import list_files
    rec = made["root"] / "rec"
    assert made["train"]["labels"] == str(rec / "train.labels.json")
    assert load_labels(rec / "train.labels.json") == NAMES
    assert all(f.endswith(".tfrecord") for f in list_files(str(rec / "train-*")))
    assert load_labels(made["model_dir"] / "labels.json") == NAMES
    assert checkpoint_labels(made["ckpt"]) == NAMES


def test_eval_and_infer_give_names_not_numbers(made, tmp_path, capsys):
    r = _cli(capsys, "edetgraph.eval", "--spec", "d0", *SETS, "--ckpt", str(made["model_dir"]),
             "--data", str(made["root"] / "rec" / "val-*"), "--annotations", made["val_json"],
             "--per-class", "--out", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["labels"] == {str(k): v for k, v in NAMES.items()} or \
        metrics["labels"] == NAMES
    assert set(metrics["per_class"]) == set(NAMES.values()) and "AP[rocket]" in r.stdout
    pictures = sorted(Path(made["val_images"]).glob("*.jpg"))[:2]
    r = _cli(capsys, "edetgraph.infer", "--spec", "d0", *SETS, "--ckpt", str(made["model_dir"]),
             "--image", *map(str, pictures), "--out", str(tmp_path / "inf"),
             "--draw-thresh", "0")
    assert r.returncode == 0, r.stderr
    assert f"class names: {made['model_dir'] / 'labels.json'}" in r.stderr
    dets = json.loads((tmp_path / "inf" / "detections.json").read_text())
    names = {n for im in dets["images"] for n in im["class_names"]}
    assert names and names <= set(NAMES.values())
    # the drawn picture: written, and it differs from the input (boxes and names drawn)
    assert (tmp_path / "inf" / pictures[0].name).stat().st_size > 0


def test_tflite_metadata_says_what_the_file_is(made):
    from edetgraph.verify.file_metadata import read_metadata
    fast = read_metadata(made["fast"])
    f, facts = fast["fields"], fast["facts"]
    assert (f["author"], f["license"]) == ("QA team", "CC-BY-4.0")
    assert f["name"] == "efficientdet-d0" and f["version"] and "detections" in f["description"]
    assert f["outputs"] and set(f["outputs"]) == {"location", "category", "score",
                                                  "number of detections"}
    assert f["min_parser_version"] == "1.0.0" and fast["files"] == ["edetgraph.json",
                                                                    "labels.txt"]
    meta = f["metadata"]
    norm = meta.subgraphMetadata[0].inputTensorMetadata[0].processUnits[0].options
    assert list(norm.mean) == pytest.approx([123.675, 116.28, 103.53])
    assert list(norm.std) == pytest.approx([58.395, 57.12, 57.375])
    outputs = {t.name.decode(): t for t in meta.subgraphMetadata[0].outputTensorMetadata}
    box = outputs["location"].content.contentProperties
    assert list(box.index) == [1, 0, 3, 2] and box.coordinateType == 0   # RATIO
    assert outputs["score"].processUnits[0].options.globalScoreThreshold == 0.0
    assert outputs["category"].associatedFiles[0].name.decode() == "labels.txt"
    assert facts["labels"] == {"1": "cat", "2": "cup", "3": "rocket"}
    assert facts["outputs"]["boxes"] == "ratio" and facts["input"]["kind"] == "float"
    import zipfile
    with zipfile.ZipFile(made["fast"]) as zf:
        assert zf.read("labels.txt").decode().split("\n")[:4] == ["background", "cat", "cup",
                                                                   "rocket"]
    raw = read_metadata(made["raw_tflite"])
    custom = raw["fields"]["metadata"].subgraphMetadata[0].customMetadata[0]
    anchors = json.loads(bytes(custom.data).decode())
    assert custom.name.decode() == "EDETGRAPH_ANCHORS" and raw["fields"]["min_parser_version"] \
        == "1.5.0"
    assert (anchors["min_level"], anchors["max_level"], anchors["scale"]) == (3, 5, 4.0)
    from edetgraph.graph.spec import load_spec
    from edetgraph.task.anchors import generate_anchors, spec_anchors
    rebuilt = generate_anchors(anchors["image_size"], anchors["min_level"],
                               anchors["max_level"], anchors["num_scales"],
                               anchors["aspect_ratios"], anchors["scale"])
    assert np.array_equal(rebuilt, spec_anchors(load_spec("d0", TINY)))
    assert anchors["count"] == len(rebuilt)


def test_onnx_metadata_reads_back_with_onnxruntime_and_tensorflow_blocked(made):
    code = BLOCK_TF + f"""
import json, onnxruntime as ort
meta = ort.InferenceSession({str(made['onnx'])!r}, providers=['CPUExecutionProvider']).get_modelmeta()
props = meta.custom_metadata_map
from edetgraph.verify.file_metadata import read_metadata, summary_lines
m = read_metadata({str(made['onnx'])!r})
print(json.dumps({{"producer": meta.producer_name, "version": meta.version,
                  "doc": meta.description, "keys": sorted(props),
                  "labels": json.loads(props["labels"]), "spec": props["spec"],
                  "input": json.loads(props["input"]), "parity": json.loads(props["parity"]),
                  "anchors": json.loads(props["anchors"]), "ev": props["edetgraph_version"],
                  "facts_labels": m["facts"]["labels"], "lines": summary_lines(m),
                  "tf": 'tensorflow' in sys.modules}}))
"""
    r = run_py(code)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["tf"] is False and got["producer"] == "edetgraph" and got["version"] == 7
    assert got["labels"] == got["facts_labels"] == {"1": "cat", "2": "cup", "3": "rocket"}
    assert "num_classes: 3" in got["spec"] and "image_size:" in got["spec"]
    assert got["input"]["layout"] == "NHWC" and got["input"]["normalisation"]["std"] == \
        pytest.approx([58.395, 57.12, 57.375])
    assert got["parity"]["passed"] is True and got["anchors"]["max_level"] == 5
    assert got["ev"] and "3 classes" in got["lines"][0] and "rocket" in got["doc"] + \
        " ".join(got["lines"])


@pytest.mark.parametrize("kind", ["fast", "onnx"])
def test_infer_model_finds_what_the_tf_path_finds(made, tmp_path, kind, capsys):
    """On the val pictures: the file's detections match the TF path's one to one (the fp32
    gate's rule: classes equal, scores within 1e-4, boxes within 1e-3 of the image side)."""
    from edetgraph.verify.detections import compare_detections
    pictures = [str(p) for p in sorted(Path(made["val_images"]).glob("*.jpg"))]
    nms = "fast" if kind == "fast" else "soft"
    runs = {}
    for who, args in (("tf", ["--spec", "d0", *SETS, "--ckpt", str(made["model_dir"]),
                              "--nms", nms]),
                      ("file", ["--model", str(made[kind]), "--nms", nms])):
        r = _cli(capsys, "edetgraph.infer", *args, "--image", *pictures, "--out",
                 str(tmp_path / who))
        assert r.returncode == 0, r.stderr
        runs[who] = json.loads((tmp_path / who / "detections.json").read_text())
        assert (tmp_path / who / Path(pictures[0]).name).is_file()
    assert runs["file"]["model"] == str(made[kind]) and runs["file"]["spec"] == "efficientdet-d0"
    for a, b in zip(runs["tf"]["images"], runs["file"]["images"]):
        assert a["class_names"] == b["class_names"] or sorted(a["class_names"]) == \
            sorted(b["class_names"])
        as_batch = lambda d: {"boxes": np.asarray(d["boxes"]).reshape(1, -1, 4),  # noqa: E731
                              "scores": np.asarray(d["scores"])[None],
                              "classes": np.asarray(d["classes"])[None],
                              "num_detections": np.asarray([len(d["scores"])])}
        res = compare_detections(as_batch(a), as_batch(b), 0, 1e-4, 1e-3 * 64)
        assert res["mismatch"] is None, (a["file"], res)


def _foreign_models(folder: Path) -> dict:
    """tests/_tiny_models.py's net as .onnx and fp32 .tflite: files made by something else
    (its int8 variants, not needed here, are not made)."""
    import tf2onnx
    from _tiny_models import _to_tflite, tiny_function
    folder.mkdir()
    fn = tiny_function()
    paths = {"onnx": folder / "tiny.onnx", "tflite": folder / "tiny_fp32.tflite"}
    tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=17,
                                  output_path=str(paths["onnx"]))
    paths["tflite"].write_bytes(_to_tflite(fn))
    return paths


def test_infer_model_refuses_files_without_metadata_in_one_line(made, tmp_path, capsys):
    import shutil

    foreign = _foreign_models(tmp_path / "foreign")       # models made by something else
    stripped = tmp_path / "stripped.tflite"                # ours, its zip of facts cut off
    data = Path(made["fast"]).read_bytes()
    stripped.write_bytes(data[:data.rfind(b"PK\x03\x04")])
    shutil.copy(ROOT / "edetgraph" / "resources" / "street.jpg", tmp_path / "street.jpg")
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    for path, says in ((foreign["tflite"], "carries no edetgraph metadata"),
                       (foreign["onnx"], "carries no edetgraph metadata"),
                       (stripped, "carries no edetgraph metadata"),
                       (text, "onnxruntime cannot load it"),
                       (tmp_path / "missing.tflite", "no such file")):
        r = _cli(capsys, "edetgraph.infer", "--model", str(path), "--image",
                 str(tmp_path / "street.jpg"), "--out", str(tmp_path / "o"))
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().count("\n") == 0 and says in r.stderr, r.stderr
        assert not (tmp_path / "o").exists()


def test_device_runner_prints_what_the_file_says(made, capsys):
    r = _cli(capsys, "bench/device_runner.py", str(made["fast"]), "--runs", "1", "--warmup", "0")
    assert r.returncode == 0, r.stderr
    assert "the file says: efficientdet-d0, 3 classes (1 cat, 2 cup, 3 rocket)" in r.stderr
    assert "fast NMS, boxes in ratio" in r.stderr
    assert json.loads(r.stdout)["file_says"]["labels"] == {"1": "cat", "2": "cup",
                                                           "3": "rocket"}


def test_bench_run_report_names_the_classes(made, tmp_path, capsys):
    r = _cli(capsys, "bench.run", "--spec", "d0", *SETS, "--ckpt", str(made["model_dir"]),
             "--backends", "tf,onnxruntime", "--runs", "2", "--warmup", "1", "--no-memory",
             "--quiet", "--out", str(tmp_path / "bench"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"classes ({made['model_dir'] / 'labels.json'}): 1 cat, 2 cup, 3 rocket" in r.stdout
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert results["labels"] == {"1": "cat", "2": "cup", "3": "rocket"}
    from edetgraph.verify.file_metadata import labels_of, read_metadata
    exported = list((tmp_path / "bench").glob("*.onnx"))
    assert exported and labels_of(read_metadata(exported[0])) == NAMES


def _with_facts(src: Path, dst: Path, change) -> Path:
    """A copy of the ONNX file ``src`` whose edetgraph metadata ``change(facts)`` edited."""
    import onnx
    model = onnx.load(str(src))
    for prop in model.metadata_props:
        if prop.key == "edetgraph":
            facts = json.loads(prop.value)
            change(facts)
            prop.value = json.dumps(facts)
    onnx.save(model, str(dst))
    return dst


def _spec_set(facts, key, value):
    import yaml
    spec = yaml.safe_load(facts["spec"])
    spec[key] = value
    facts["spec"] = yaml.safe_dump(spec)


@pytest.mark.parametrize("name,change,says", [
    ("uint8_on_float", lambda f: f["input"].update(kind="uint8", dtype="uint8"),
     "input dtype uint8 but the graph takes float32"),
    ("size", lambda f: (f["input"].update(height=96, width=96),
                        _spec_set(f, "image_size", 96)),
     "input 96x96x3 but the graph takes"),
    ("detections_on_raw", lambda f: f["outputs"].update(kind="detections", nms="fast",
                                                        boxes="ratio"),
     "detection outputs, but the graph has no boxes"),
    ("detections_without_nms", lambda f: f["outputs"].update(kind="detections"),
     "detections with NMS None"),
    ("classes", lambda f: (f.update(num_classes=5), _spec_set(f, "num_classes", 5)),
     "output cls_l3 of shape (8, 8, 45) per picture but the graph's is (1, 8, 8, 27)"),
    ("huge", lambda f: (f["input"].update(height=60000, width=60000),
                        _spec_set(f, "image_size", 60000)),
     "claims a model past the limits"),
    ("self_contradiction", lambda f: f["input"].update(height=128),
     "input 128x64 but its spec's image_size is 64x64"),
])
def test_infer_model_refuses_metadata_that_disagrees_with_the_graph(made, tmp_path, capsys, name,
                                                                     change, says):
    bad = _with_facts(made["onnx"], tmp_path / f"{name}.onnx", change)
    picture = sorted(Path(made["val_images"]).glob("*.jpg"))[0]
    r = _cli(capsys, "edetgraph.infer", "--model", str(bad), "--image", str(picture),
             "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert says in r.stderr and r.stderr.strip().count("\n") <= 1, r.stderr[-2000:]
    assert not (tmp_path / "o" / "detections.json").exists()


def test_infer_model_accepts_the_file_as_exported(made, tmp_path, capsys):
    """The other side: the unedited copy passes the same checks."""
    same = _with_facts(made["onnx"], tmp_path / "same.onnx", lambda f: None)
    picture = sorted(Path(made["val_images"]).glob("*.jpg"))[0]
    r = _cli(capsys, "edetgraph.infer", "--model", str(same), "--image", str(picture),
             "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr[-2000:]
