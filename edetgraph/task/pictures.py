"""Detection on picture files, what ``python -m edetgraph.infer`` does: decode every picture
first (a bad file fails in a second), build the detector, then per picture detect, draw
the detections and collect them; ``detections.json`` holds them all.

Outputs per picture ``<stem>.jpg`` (``.png`` for PNG input), with ``--dump-raw`` also
``<stem>.npz`` (network input, scale, raw head outputs, padded detections); each is written
under a temporary name and renamed once complete, ``detections.json`` last.
"""
from __future__ import annotations

import re
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from edetgraph.checkpoints.archive import resolve_checkpoint
from edetgraph.checkpoints.checkpoint import checkpoint_labels
from edetgraph.files import atomic_path, json_text, refuse_folder, write_text
from edetgraph.graph.spec import load_spec
from edetgraph.task.detector import Detector
from edetgraph.task.labels import resolve_labels
from edetgraph.task.postprocess import to_detections_json
from edetgraph.task.preprocess import read_image
from edetgraph.task.visualize import draw_detections, save_picture


def _read_inputs(paths: list, max_pixels: int | None = None) -> list:
    """Decode every image before any model is built, so a bad file fails in a second."""
    return [read_image(p, max_pixels).numpy() for p in paths]


def _output_stems(paths: list) -> list[str]:
    """``<stem>`` per image, ``<stem>_2`` ... when two inputs share a stem."""
    seen, out = {}, []
    for p in paths:
        stem = Path(p).stem
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return out


def find_labels(explicit, ckpt, num_classes: int) -> tuple[dict, str]:
    """The class names for a model and where they came from (``resolve_labels``'s order:
    ``--labels``, the model directory's labels.json, the checkpoint's own, COCO's for 90)."""
    prefix = resolve_checkpoint(ckpt) if ckpt is not None else None
    return resolve_labels(explicit, prefix, num_classes,
                          checkpoint_labels(prefix) if prefix else None)


def _load_detector(args):
    spec = load_spec(args.spec, args.set)
    labels, source = find_labels(args.labels, args.ckpt, spec.num_classes)
    print(f"class names: {source}", file=sys.stderr)
    use_ema = {"auto": "auto", "yes": True, "no": False}[args.ema]
    if args.ckpt is None:
        print("WARNING: no --ckpt given: the model has RANDOM weights, its detections are "
              "meaningless", file=sys.stderr)
    det = Detector.from_spec(spec, args.ckpt, mode=args.ckpt_mode, use_ema=use_ema,
                             method=args.nms, score_thresh=args.score_thresh,
                             max_dets=args.max_dets, labels=labels)
    if det.load_report is not None:
        print(det.load_report.summary(), file=sys.stderr)
    return det


def _json_text(obj) -> str:
    """Indented JSON with innermost lists (a box, the score list) kept on one line."""
    mark, flat = f"@{uuid.uuid4().hex}@", []

    def walk(o):
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, list) and any(isinstance(v, (list, dict)) for v in o):
            return [walk(v) for v in o]
        if isinstance(o, list):
            flat.append(json_text(o))
            return f"{mark}{len(flat) - 1}"
        return o

    text = json_text(walk(obj), indent=1)
    return re.sub(f'"{mark}(\\d+)"', lambda m: flat[int(m.group(1))], text) + "\n"


def _outputs(paths: list, out: Path) -> list[tuple[str, Path]]:
    """``(stem, picture path)`` per input; refuses to overwrite an input picture."""
    res = []
    for path, stem in zip(paths, _output_stems(paths)):
        pic = out / (stem + (".png" if Path(path).suffix.lower() == ".png" else ".jpg"))
        if pic.resolve() == Path(path).resolve():
            raise ValueError(f"{path}: --out would overwrite this input picture; pick another folder")
        res.append((stem, pic))
    for target in [pic for _, pic in res] + [out / f"{stem}.npz" for stem, _ in res] + [
            out / "detections.json"]:
        refuse_folder(target, "an output")   # before any work: the user's folders stay
    return res


def _one_image(det, args, path, image, stem: str, pic: Path) -> dict:
    """Detect, draw, optionally dump; returns the image's detections.json entry."""
    t0 = time.perf_counter()
    raw = det.raw([image])[0]
    ms = (time.perf_counter() - t0) * 1000
    d = to_detections_json(raw, 0, det.labels)
    save_picture(draw_detections(image, d["boxes"], d["scores"], d["classes"],
                                 class_names=d["class_names"], min_score=args.draw_thresh), pic)
    entry = {"file": str(path), "height": int(image.shape[0]), "width": int(image.shape[1]),
             **d, "picture": pic.name}
    if args.dump_raw:
        with atomic_path(pic.parent / f"{stem}.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, **raw)
        entry["raw"] = f"{stem}.npz"
    drawn = sum(s >= args.draw_thresh for s in d["scores"])
    print(f"{path}: {len(d['scores'])} detections ({drawn} drawn) -> {pic} [{ms:.0f} ms]",
          file=sys.stderr)
    return entry


def run(args, detector=None) -> dict:
    """Read, detect, draw and write everything ``python -m edetgraph.infer`` was asked for
    (its parsed arguments); returns the detections.json content. ``detector``: one made
    already (an exported file's, ``edetgraph.verify.deployed``), else the spec's."""
    images = _read_inputs(args.image, getattr(args, "max_pixels", None))
    out = Path(args.out)
    targets = _outputs(args.image, out)
    det = detector if detector is not None else _load_detector(args)
    out.mkdir(parents=True, exist_ok=True)
    report = det.load_report
    result = {"spec": det.spec.name, "checkpoint": report.prefix if report else None,
              "used_ema": report.used_ema if report else None, "random_weights": report is None,
              "nms": det.method, "score_thresh": args.score_thresh, "images": []}
    if getattr(args, "model", None):
        weights = det.meta["facts"].get("weights", "")
        result.update(model=str(args.model), checkpoint=None if weights.startswith("random")
                      else weights, random_weights=weights.startswith("random"))
    for path, image, (stem, pic) in zip(args.image, images, targets):
        result["images"].append(_one_image(det, args, path, image, stem, pic))
    write_text(out / "detections.json", _json_text(result))
    print(f"wrote {out / 'detections.json'}", file=sys.stderr)
    return result
