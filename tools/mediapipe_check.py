"""Does MediaPipe's ObjectDetector return what ``edetgraph.infer --model`` returns?

    python tools/mediapipe_check.py --model demo_fast.tflite --image val/images/*.jpg --json r.json

Both sides get the same decoded pixels (TensorFlow's decoder, as ``infer`` uses): MediaPipe
through ``mp.Image`` from the array, edetgraph through ``edetgraph.verify.deployed`` (the
code ``infer --model`` runs). Per picture, every edetgraph detection scoring at least
``--min-score`` must have its own MediaPipe detection with the same class and name, the
score within ``--score-tol`` and each of MediaPipe's integer ``origin_x, origin_y, width,
height`` within ``--px-tol`` of edetgraph's ``xmin, ymin, xmax - xmin, ymax - ymin``, and
MediaPipe must return nothing else. One exception, counted apart (``repeated_boxes``):
MediaPipe keeps only the first detection of each box in its integer pixels (origin and size
truncated, as it reports them); the fast NMS clips boxes after suppressing, so a few
low-scoring boxes pushed flat against a border or onto the whole picture repeat a better
one's pixels (exactly, or within the same whole pixels), and MediaPipe drops them.

How each side resizes: edetgraph keeps the aspect ratio (bilinear, half-pixel centres) and
pads bottom/right; MediaPipe's ImageToTensorCalculator stretches the whole picture to the
input size (OpenCV warpPerspective, bilinear) and pads nothing. On pictures of the input's
own size neither resizes, so both run the same tensor; elsewhere they run different inputs
and are only expected to agree roughly (square pictures) or not at all (other shapes).
Needs ``mediapipe`` (pip install edetgraph[mediapipe]).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edetgraph.data.labels import label_name  # noqa: E402 (after the path set-up above)
from edetgraph.task.preprocess import read_image  # noqa: E402
from edetgraph.verify.deployed import DeployedDetector  # noqa: E402
from edetgraph.verify.file_metadata import read_metadata  # noqa: E402


def mediapipe_detections(path: str, images: list, max_results: int = 100) -> list:
    """Per picture: ``[(name, score, (origin_x, origin_y, width, height)), ...]``."""
    import mediapipe as mp  # deferred: an optional extra
    from mediapipe.tasks.python import BaseOptions, vision  # deferred: with mediapipe
    opts = vision.ObjectDetectorOptions(base_options=BaseOptions(model_asset_path=path),
                                        score_threshold=0.0, max_results=max_results)
    out = []
    with vision.ObjectDetector.create_from_options(opts) as detector:
        for image in images:
            res = detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB,
                                           data=np.ascontiguousarray(image)))
            out.append([(d.categories[0].category_name, float(d.categories[0].score),
                         (d.bounding_box.origin_x, d.bounding_box.origin_y,
                          d.bounding_box.width, d.bounding_box.height))
                        for d in res.detections])
    return out


def edetgraph_detections(path: str, images: list) -> list:
    """Per picture, what ``infer --model`` finds: ``[(name, score, [ymin, xmin, ymax, xmax])]``."""
    det = DeployedDetector(path)
    out = []
    for raw in det.raw(images):
        n = int(raw["num_detections"][0])
        out.append([(label_name(int(c), det.labels), float(s), [float(v) for v in b])
                    for b, s, c in zip(raw["boxes"][0][:n], raw["scores"][0][:n],
                                       raw["classes"][0][:n])])
    return out


def compare(ours: list, theirs: list, min_score: float, score_tol: float, px_tol: float) -> dict:
    """One picture: one-to-one matching of our detections (>= min_score) to MediaPipe's."""
    used = [False] * len(theirs)
    matched, box_d, score_d, missing, exact, dup = 0, 0.0, 0.0, [], 0, 0
    wanted = [d for d in ours if d[1] >= min_score]
    seen = set()
    for name, score, (y0, x0, y1, x1) in wanted:
        # A box in the same integer pixels as a better detection's (they come from
        # clipping after NMS: flat against a border, or the whole picture) is one MediaPipe
        # drops: it keeps the first detection of each integer box. Counted apart.
        ours_mp = np.array([x0, y0, x1 - x0, y1 - y0])
        pixels = tuple(int(v) for v in ours_mp.astype(np.float32))
        if pixels in seen:
            dup += 1
            continue
        seen.add(pixels)
        best = None
        for j, (n2, s2, box) in enumerate(theirs):
            if used[j] or n2 != name or abs(s2 - score) > score_tol:
                continue
            d = float(np.abs(np.asarray(box, float) - ours_mp).max())
            if d <= px_tol and (best is None or d < best[1]):
                best = (j, d)
        if best is None:
            missing.append(f"{name} {score:.4f} at xywh {np.round(ours_mp, 2).tolist()}")
            continue
        j, d = best
        used[j] = True
        matched += 1
        exact += theirs[j][1] == np.float32(score)
        box_d, score_d = max(box_d, d), max(score_d, abs(theirs[j][1] - score))
    return {"edetgraph": len(wanted), "mediapipe": sum(s >= min_score for _, s, _ in theirs),
            "matched": matched, "repeated_boxes": dup, "scores_bitwise_equal": int(exact),
            "max_box_diff_px": box_d, "max_score_diff": score_d, "missing": missing[:3],
            "agree": not missing and matched == len(wanted) - dup
            == sum(s >= min_score for _, s, _ in theirs)}


def check(path: str, paths: list, min_score: float = 0.0, score_tol: float = 0.01,
          px_tol: float = 1.0) -> dict:
    """Both sides on the pictures ``paths``; a dict per picture and the totals."""
    facts = read_metadata(path)["facts"]
    size = (facts["input"]["height"], facts["input"]["width"])
    images = [read_image(p).numpy() for p in paths]
    ours, theirs = edetgraph_detections(path, images), mediapipe_detections(path, images)
    pictures = {}
    for p, image, a, b in zip(paths, images, ours, theirs):
        r = compare(a, b, min_score, score_tol, px_tol)
        r["size"], r["resized"] = list(image.shape[:2]), tuple(image.shape[:2]) != size
        pictures[os.path.basename(p)] = r
    return {"model": path, "input_size": list(size), "min_score": min_score,
            "score_tol": score_tol, "px_tol": px_tol, "pictures": pictures,
            "agree": sum(r["agree"] for r in pictures.values()), "of": len(pictures)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--image", nargs="+", required=True)
    ap.add_argument("--min-score", type=float, default=0.0)
    ap.add_argument("--score-tol", type=float, default=0.01)
    ap.add_argument("--px-tol", type=float, default=1.0)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    result = check(args.model, args.image, args.min_score, args.score_tol, args.px_tol)
    for name, r in result["pictures"].items():
        print(f"{name} {r['size'][0]}x{r['size'][1]}{' (resized)' if r['resized'] else ''}: "
              f"{r['matched']}/{r['edetgraph']} matched (MediaPipe {r['mediapipe']}), max box "
              f"diff {r['max_box_diff_px']:.3f} px, max score diff {r['max_score_diff']:.2e}, "
              f"{r['scores_bitwise_equal']} scores bitwise equal"
              + (f"; missing e.g. {r['missing'][0]}" if r["missing"] else ""))
    print(f"{result['agree']}/{result['of']} pictures agree")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if result["agree"] == result["of"] else 1


if __name__ == "__main__":
    sys.exit(main())
