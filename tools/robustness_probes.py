#!/usr/bin/env python3
"""Issue 21's probes, tried against the real commands as a careless or hostile user would.

    python tools/robustness_probes.py [--fast] [--only WORD]

Each probe runs a CLI in a subprocess inside a temporary folder and prints one line,
``held`` or ``FAILED`` (or ``skipped`` when the runtime it needs is not installed) with what
it checked; then a count. Exit status 1 if any probe failed. ``--fast`` leaves out the
probes that export, train or evaluate a model (marked ``slow`` in the table).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ["--spec", "demo", "--set", "image_size=128"]
ESC = "\x1b"


class Probe:
    """A temporary folder and the commands run in it."""

    def __init__(self, folder: Path):
        self.dir = folder

    def run(self, *args, timeout=900):
        env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
        return subprocess.run([sys.executable, *map(str, args)], capture_output=True,
                              cwd=self.dir, env=env, timeout=timeout, text=True,
                              errors="backslashreplace")

    def users_folder(self, name: str) -> Path:
        """A folder of the user's own files at ``name`` (it must survive byte for byte)."""
        path = self.dir / name
        (path / "sub").mkdir(parents=True)
        (path / "notes.txt").write_text("the user's own notes\n")
        (path / "sub" / "data.bin").write_bytes(os.urandom(64))
        return path

    def victim(self) -> Path:
        path = self.dir / "victim.txt"
        path.write_text("precious")
        return path


def tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(r, *words) -> str | None:
    """None when ``r`` is a one-line refusal (exit 2, no traceback, the last line naming
    ``words``), else what is wrong."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    if r.returncode != 2 or "Traceback" in r.stderr:
        return f"exit {r.returncode}: {(lines or ['(no stderr)'])[-1][:200]}"
    if not lines or not all(w in lines[-1] for w in words):
        return f"last line {lines[-1:]!r} does not name {words}"
    return None


def folder_probe(*args, name, words=("existing folder",)):
    """An existing folder at ``name`` (an output of the command ``args``) is refused in one
    line and survives byte for byte."""
    def check(p: Probe):
        folder = p.users_folder(name)
        before = tree(folder)
        why = refused(p.run(*args), *words)
        return why or (None if tree(folder) == before else "the folder's files changed")
    return check


def coco_set(p: Probe, n: int = 2) -> tuple[Path, Path]:
    """``n`` small pictures and their COCO instances.json, one box each."""
    from PIL import Image  # deferred: only the probes that need pictures load it
    images = p.dir / "images"
    images.mkdir(exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for i in range(n):
        Image.new("RGB", (64, 48), (40 * i, 90, 30)).save(images / f"{i}.png")
        coco["images"].append({"id": i + 1, "file_name": f"{i}.png", "width": 64, "height": 48})
        coco["annotations"].append({"id": i + 1, "image_id": i + 1, "category_id": 1,
                                    "bbox": [8, 8, 20, 16], "area": 320, "iscrowd": 0})
    (p.dir / "instances.json").write_text(json.dumps(coco))
    return images, p.dir / "instances.json"


def plant_links(p: Probe, final: Path) -> Path:
    """Links to a victim at ``final`` and the fixed temporary names writers once used."""
    victim = p.victim()
    for form in ("{}", "{}.partial", ".{}.tmp"):
        (final.parent / form.format(final.name)).symlink_to(victim)
    return victim


def not_followed(victim: Path, *finals: Path) -> str | None:
    if victim.read_text() != "precious":
        return "the link's target was overwritten"
    bad = [f.name for f in finals if f.is_symlink() or not f.is_file()]
    return f"not a file of its own: {bad}" if bad else None


def coco_links(p: Probe):
    images, ann = coco_set(p)
    finals = [p.dir / "train-00000-of-00001.tfrecord", p.dir / "train.labels.json"]
    victim = plant_links(p, finals[0])
    (finals[1]).symlink_to(victim)
    r = p.run("-m", "edetgraph.data.coco_to_tfrecord", "--images", images, "--annotations", ann,
              "--out", p.dir / "train", "--shards", "1")
    return f"exit {r.returncode}: {r.stderr[-200:]}" if r.returncode else \
        not_followed(victim, *finals)


TINY_TFLITE = """import sys, numpy as np, tensorflow as tf
w = np.random.default_rng(0).normal(0, .4, (3, 3, 3, 4)).astype(np.float32)
f = tf.function(lambda x: {"y": tf.nn.conv2d(x, w, 2, "SAME")},
                input_signature=[tf.TensorSpec([1, 16, 16, 3], tf.float32, name="images")])
c = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
open(sys.argv[1], "wb").write(c.convert())
"""


def tiny_tflite(p: Probe) -> Path:
    path = p.dir / "tiny.tflite"
    r = p.run("-c", TINY_TFLITE, path)
    if r.returncode:
        raise RuntimeError(f"could not make a tiny .tflite: {r.stderr[-200:]}")
    return path


def device_runner_links(p: Probe):
    out = p.dir / "result.json"
    victim = plant_links(p, out)
    r = p.run(ROOT / "bench" / "device_runner.py", tiny_tflite(p), "--runs", "1", "--warmup",
              "0", "--out", out)
    return f"exit {r.returncode}: {r.stderr[-200:]}" if r.returncode else \
        not_followed(victim, out)


CHECKPOINT = """import sys
from edetgraph.graph.spec import load_spec
from edetgraph.task.weights import model_with_weights
from edetgraph.checkpoints.checkpoint import save_checkpoint
model = model_with_weights(load_spec("demo", ["image_size=128"]), None, 0)[0]
save_checkpoint(model.variables_by_name(), sys.argv[1])
"""


def eval_links(p: Probe):
    images, ann = coco_set(p)
    r = p.run("-m", "edetgraph.data.coco_to_tfrecord", "--images", images, "--annotations",
              ann, "--out", p.dir / "val", "--shards", "1")
    r = r if r.returncode else p.run("-c", CHECKPOINT, p.dir / "ckpt" / "demo")
    if r.returncode:
        return f"setting up: exit {r.returncode}: {r.stderr[-200:]}"
    out = p.dir / "metrics.json"
    victim = plant_links(p, out)
    r = p.run("-m", "edetgraph.eval", *DEMO, "--ckpt", p.dir / "ckpt" / "demo", "--data",
              p.dir / "val-*.tfrecord", "--annotations", ann, "--out", out)
    return f"exit {r.returncode}: {r.stderr[-200:]}" if r.returncode else \
        not_followed(victim, out)


def search_out_file(p: Probe):
    (p.dir / "f").write_text("mine")
    why = refused(p.run("-m", "edetgraph.search", "--latency", "m.json", "--budget-ms", "10",
                        "--out", "f"), "is a file")
    return why or (None if (p.dir / "f").read_text() == "mine" else "the file changed")


HOLDER = ("import sys, time; from edetgraph.files import lock_folder; "
          "lock_folder(sys.argv[1], 'train'); print('locked', flush=True); time.sleep(600)")


def busy_model_dir(p: Probe):
    folder = p.dir / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, folder], stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        if holder.stdout.readline().strip() != "locked":
            return "the holder could not take the lock"
        why = refused(p.run("-m", "edetgraph.train", "--spec", "demo", "--train-config", "demo",
                            "--model-dir", folder, "--train-set", "steps=1"),
                      "another train", f"pid {holder.pid}")
        if why:
            return why
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    r = p.run("-c", "import sys; from edetgraph.files import lock_folder; "
              "lock_folder(sys.argv[1], 'train')", folder)
    return None if r.returncode == 0 else f"after kill -9 the lock is still held: {r.stderr}"


def latency_escapes(p: Probe):
    from edetgraph.graph.latency_model import SCHEMA  # deferred: this probe's alone
    model = p.dir / "latency.json"
    model.write_text(json.dumps({"schema": SCHEMA, "backend": "onnxruntime", "threads": 2,
                                 "machine": "box\x1b[2J\x1b[Hfake line", "fitted": "2026",
                                 "kinds": {}, "call": {}}))
    r = p.run("-m", "edetgraph.inspect", "--spec", "demo", "--latency", model)
    if ESC in r.stdout + r.stderr:
        return "an ESC byte reached the terminal"
    return refused(r, "control characters")


def train_nan(p: Probe):
    folder = p.dir / "run"
    why = refused(p.run("-m", "edetgraph.train", "--spec", "demo", "--train-config", "demo",
                        "--model-dir", folder, "--train-set", "learning_rate=.nan"),
                  "learning_rate")
    leftovers = [f.name for f in folder.iterdir()] if folder.exists() else []
    return why or (f"it wrote {leftovers}" if leftovers else None)


def own_lines_only(r, prefix: str) -> str | None:
    """None when ``r`` succeeded with nothing on stderr but lines starting with ``prefix``."""
    stray = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith(prefix)]
    if r.returncode:
        return f"exit {r.returncode}: {r.stderr[-200:]}"
    return f"stray stderr lines: {stray[:3]}" if stray else None


def exporter(tool, out, name, *extra):
    return folder_probe(ROOT / "exporters" / f"{tool}.py", *DEMO, "--out", out, *extra,
                        name=name)


# (class, what it checks, check, needs: a module that must be importable, or None, slow)
PROBES = [
    ("folder", "to_onnx --out X.onnx, an existing folder", exporter("to_onnx", "m.onnx", "m.onnx"),
     None, False),
    ("folder", "to_onnx: X.onnx.json beside --out, an existing folder",
     exporter("to_onnx", "m.onnx", "m.onnx.json"), None, False),
    ("folder", "to_tflite --out X.tflite, an existing folder",
     exporter("to_tflite", "m.tflite", "m.tflite", "--quant", "fp32"), None, False),
    ("folder", "to_tflite: X.tflite.json beside --out, an existing folder",
     exporter("to_tflite", "m.tflite", "m.tflite.json", "--quant", "fp32"), None, False),
    ("folder", "to_openvino --out X.xml, an existing folder",
     exporter("to_openvino", "m.xml", "m.xml", "--quant", "fp32"), "openvino", False),
    ("folder", "to_mnn --out X.mnn, an existing folder", exporter("to_mnn", "m.mnn", "m.mnn"),
     "MNN", False),
    ("folder", "to_ncnn --out X.param, an existing folder",
     exporter("to_ncnn", "m.param", "m.param"), "ncnn", False),
    ("folder", "to_ncnn: X.bin beside --out, an existing folder",
     exporter("to_ncnn", "m.param", "m.bin"), "ncnn", False),
    ("folder", "infer: OUT/detections.json, an existing folder",
     folder_probe("-m", "edetgraph.infer", *DEMO, "--image", ROOT / "edetgraph" / "resources" /
                  "street.jpg", "--out", "out", name="out/detections.json"), None, False),
    ("folder", "bench.run: OUT/results.json, an existing folder",
     folder_probe("-m", "bench.run", "--spec", "demo", "--backends", "tf", "--out", "b",
                  name="b/results.json", words=("results.json there is a folder",)), None, False),
    ("folder", "search --out naming an existing file",
     search_out_file, None, False),
    ("folder", "coco_to_tfrecord: PREFIX.labels.json, an existing folder",
     folder_probe("-m", "edetgraph.data.coco_to_tfrecord", "--images", ".", "--annotations",
                  "none.json", "--out", "train", "--shards", "1", name="train.labels.json",
                  words=("existing folder", "train.labels.json")), None, False),
    ("symlink", "coco_to_tfrecord: links at its shard, labels and old .partial names",
     coco_links, None, False),
    ("symlink", "device_runner --out: links at F, F.partial and .F.tmp", device_runner_links,
     "ai_edge_litert", True),
    ("symlink", "eval --out: links at F, F.partial and .F.tmp", eval_links, None, True),
    ("lock", "second train on a busy model dir exits 2 naming the first; free after kill -9",
     busy_model_dir, None, False),
    ("escapes", "inspect --latency: a model file with terminal escapes refused, no ESC shown",
     latency_escapes, None, False),
    ("nan", "inspect --set anchors.scale=.nan refused naming the key",
     lambda p: refused(p.run("-m", "edetgraph.inspect", "--spec", "demo", "--set",
                             "anchors.scale=.nan"), "anchors.scale", "finite"), None, False),
    ("nan", "train --train-set learning_rate=.nan refused before training", train_nan, None,
     False),
    ("nan", "search --budget-ms nan refused",
     lambda p: refused(p.run("-m", "edetgraph.search", "--latency", "m.json", "--budget-ms",
                             "nan", "--out", "s"), "--budget-ms"), None, False),
    ("noise", "to_onnx: a successful export prints only its own [to_onnx] lines on stderr",
     lambda p: own_lines_only(p.run(ROOT / "exporters" / "to_onnx.py", *DEMO, "--out", "m.onnx"),
                              "[to_onnx] "), None, True),
    ("noise", "device_runner.py: only its own [device_runner] lines on stderr",
     lambda p: own_lines_only(p.run(ROOT / "bench" / "device_runner.py", tiny_tflite(p), "--runs",
                                    "1", "--warmup", "0"), "[device_runner] "),
     "ai_edge_litert", True),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true", help="leave out the probes marked slow")
    ap.add_argument("--only", metavar="WORD", help="only the probes whose class or text has WORD")
    args = ap.parse_args(argv)
    counts = {"held": 0, "FAILED": 0, "skipped": 0}
    for kind, what, check, needs, slow in PROBES:
        if (args.fast and slow) or (args.only and args.only not in f"{kind} {what}"):
            continue
        if needs and importlib.util.find_spec(needs) is None:
            verdict, detail = "skipped", f"{needs} is not installed"
        else:
            with tempfile.TemporaryDirectory(prefix="probe-") as folder:
                try:
                    detail = check(Probe(Path(folder)))
                except Exception as e:     # a probe that cannot run has not held
                    detail = f"{type(e).__name__}: {e}"
            verdict = "FAILED" if detail else "held"
        counts[verdict] += 1
        print(f"{verdict:7s} {kind:8s} {what}" + (f"  -- {detail}" if detail else ""),
              flush=True)
    print(f"{sum(counts.values())} probes: {counts['held']} held, {counts['FAILED']} failed, "
          f"{counts['skipped']} skipped")
    return 1 if counts["FAILED"] else 0


if __name__ == "__main__":
    sys.exit(main())
