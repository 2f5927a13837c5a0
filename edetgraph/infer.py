"""Detect objects in pictures with a spec and (optionally) a checkpoint.

    python -m edetgraph.infer --spec d0 --ckpt efficientdet-d0.tar.gz --image street.jpg --out out/

Writes one annotated picture per image (``DIR/<stem>.jpg``, ``.png`` for PNG input) and
``DIR/detections.json`` (per image: file, boxes [ymin, xmin, ymax, xmax] in original pixels,
scores, 1-based class ids, class names). ``--dump-raw`` adds ``DIR/<stem>.npz`` with the
network input, the scale factor, the raw head outputs ``cls_l*``/``box_l*`` and the padded
detections. Without ``--ckpt`` the weights are random and the detections meaningless.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
import uuid
from pathlib import Path

METHODS = ("soft", "hard", "fast")  # edetgraph.task.postprocess.METHODS, without importing TF for --help


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m edetgraph.infer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", required=True, help="spec file or built-in name (d0, lite0, ...)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="spec override before validation, e.g. image_size=640 (repeatable)")
    ap.add_argument("--ckpt", help="released .tar.gz, checkpoint folder or prefix; "
                                   "omit to run with random weights")
    ap.add_argument("--ckpt-mode", default="strict", choices=("strict", "finetune", "lenient"),
                    help="strict: fail on any missing/mismatched variable (default); finetune: "
                         "skip mismatched heads; lenient: report only")
    ap.add_argument("--ema", default="auto", choices=("auto", "yes", "no"),
                    help="use ExponentialMovingAverage shadows: auto = when present (default)")
    ap.add_argument("--image", nargs="+", required=True, metavar="FILE", help="input pictures")
    ap.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    ap.add_argument("--nms", default="soft", choices=METHODS,
                    help="soft (official default, gaussian), hard (ONNX-expressible) or fast "
                         "(TFLite detection op semantics)")
    ap.add_argument("--score-thresh", type=float, default=None, metavar="T",
                    help="NMS score threshold (default: 0.001 for soft, none for hard/fast)")
    ap.add_argument("--max-dets", type=int, default=100, metavar="N",
                    help="detections kept per image (default 100)")
    ap.add_argument("--draw-thresh", type=float, default=0.4, metavar="T",
                    help="only detections scoring at least T are drawn (default 0.4); the JSON "
                         "has all of them")
    ap.add_argument("--labels", metavar="FILE.json",
                    help="class names: a COCO instances.json or an {id: name} object "
                         "(default: COCO names for 90-class specs)")
    ap.add_argument("--dump-raw", action="store_true",
                    help="also write DIR/<stem>.npz with the input and raw head outputs")
    return ap


def _read_inputs(paths: list) -> list:
    """Decode every image before any model is built, so a bad file fails in a second."""
    from edetgraph.task.preprocess import read_image
    return [read_image(p).numpy() for p in paths]


def _output_stems(paths: list) -> list[str]:
    """``<stem>`` per image, ``<stem>_2`` ... when two inputs share a stem."""
    seen, out = {}, []
    for p in paths:
        stem = Path(p).stem
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return out


def _load_detector(args):
    from edetgraph.task.detector import Detector, load_labels
    from edetgraph.graph.spec import load_spec
    spec = load_spec(args.spec, args.set)
    labels = load_labels(args.labels) if args.labels else None
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
            flat.append(json.dumps(o))
            return f"{mark}{len(flat) - 1}"
        return o

    text = json.dumps(walk(obj), indent=1)
    return re.sub(f'"{mark}(\\d+)"', lambda m: flat[int(m.group(1))], text) + "\n"


def _outputs(paths: list, out: Path) -> list[tuple[str, Path]]:
    """``(stem, picture path)`` per input; refuses to overwrite an input picture."""
    res = []
    for path, stem in zip(paths, _output_stems(paths)):
        pic = out / (stem + (".png" if Path(path).suffix.lower() == ".png" else ".jpg"))
        if pic.resolve() == Path(path).resolve():
            raise ValueError(f"{path}: --out would overwrite this input picture; pick another folder")
        res.append((stem, pic))
    return res


def _one_image(det, args, path, image, stem: str, pic: Path) -> dict:
    """Detect, draw, optionally dump; returns the image's detections.json entry."""
    import numpy as np
    from edetgraph.task.postprocess import to_detections_json
    from edetgraph.task.visualize import draw_detections, save_picture
    t0 = time.perf_counter()
    raw = det.raw([image])[0]
    ms = (time.perf_counter() - t0) * 1000
    d = to_detections_json(raw, 0, det.labels)
    save_picture(draw_detections(image, d["boxes"], d["scores"], d["classes"],
                                 class_names=d["class_names"], min_score=args.draw_thresh), pic)
    entry = {"file": str(path), "height": int(image.shape[0]), "width": int(image.shape[1]),
             **d, "picture": pic.name}
    if args.dump_raw:
        np.savez(pic.parent / f"{stem}.npz", **raw)
        entry["raw"] = f"{stem}.npz"
    drawn = sum(s >= args.draw_thresh for s in d["scores"])
    print(f"{path}: {len(d['scores'])} detections ({drawn} drawn) -> {pic} [{ms:.0f} ms]",
          file=sys.stderr)
    return entry


def run(args) -> dict:
    """Read, detect, draw and write everything; returns the detections.json content."""
    images = _read_inputs(args.image)
    out = Path(args.out)
    targets = _outputs(args.image, out)
    det = _load_detector(args)
    out.mkdir(parents=True, exist_ok=True)
    report = det.load_report
    result = {"spec": det.spec.name, "checkpoint": report.prefix if report else None,
              "used_ema": report.used_ema if report else None, "random_weights": report is None,
              "nms": det.method, "score_thresh": args.score_thresh, "images": []}
    for path, image, (stem, pic) in zip(args.image, images, targets):
        result["images"].append(_one_image(det, args, path, image, stem, pic))
    (out / "detections.json").write_text(_json_text(result))
    print(f"wrote {out / 'detections.json'}", file=sys.stderr)
    return result


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.max_dets < 1:
        print(f"error: --max-dets must be >= 1, got {args.max_dets}", file=sys.stderr)
        return 2
    from edetgraph.checkpoints.checkpoint import CheckpointError
    from edetgraph.graph.spec import SpecError
    try:
        run(args)
    except (SpecError, CheckpointError, FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
