"""Comparing detections: of an exported file against TF, one to one (the fp32 gate's rule)
or as agreement (what the benchmark reports for every backend).

Both need the IoU of one box against many, computed here once. Boxes are ``[ymin, xmin,
ymax, xmax]``; a box clipped flat against the image border has no area, and two equal flat
boxes still count as the same box.
"""
from __future__ import annotations

import numpy as np

AGREE_SCORE = 0.3  # TF detections this confident must be reproduced
AGREE_IOU = 0.9    # ... by a detection of the same class overlapping this much


def iou(a, b) -> np.ndarray:
    """IoU of one box ``a`` against boxes ``b`` ([ymin, xmin, ymax, xmax])."""
    ih = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    iw = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = ih * iw
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    union = area(a) + area(b) - inter
    # Boxes clipped flat against the image border have no area: equal ones still agree.
    same = np.all(np.abs(b - a) <= 1e-3 * np.maximum(1.0, np.abs(a)), axis=1)
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), same.astype(float))


def compare_detections(ref: dict, got: dict, b: int, score_tol: float | None = None,
                       box_tol: float | None = None) -> dict:
    """Image ``b``: one-to-one matching (order-free among equal scores) and IoU agreement.

    With tolerances, a TF detection matches an unused file detection of the same class whose
    score is within ``score_tol`` and every box coordinate within ``box_tol``; ``mismatch``
    names the first that has none (or a count difference). Always reported: the share of
    the top-20 TF detections that the file has with the same class at IoU >= 0.5.
    """
    r = {k: np.asarray(ref[k][b], np.float64) for k in ("boxes", "scores", "classes")}
    g = {k: np.asarray(got[k][b], np.float64) for k in ("boxes", "scores", "classes")}
    nr, ng = int(np.asarray(ref["num_detections"])[b]), int(np.asarray(got["num_detections"])[b])
    top = min(nr, 20)
    agree = sum(bool(ng and np.any((g["classes"][:ng] == r["classes"][i]) &
                                   (iou(r["boxes"][i], g["boxes"][:ng]) >= 0.5)))
                for i in range(top))
    res = {"tf": nr, "file": ng, "top20_agreement": agree / top if top else None,
           "tf_top_score": float(r["scores"][:nr].max(initial=0.0)),
           "tf_classes": int(len(np.unique(r["classes"][:nr]))),
           "max_score_diff": None, "max_box_diff": None, "mismatch": None}
    if score_tol is None:
        return res
    if nr != ng:
        res["mismatch"] = f"TF found {nr} detections, the file {ng}"
        return res
    used, score_d, box_d = np.zeros(ng, bool), 0.0, 0.0
    for i in range(nr):
        ok = (~used & (g["classes"][:ng] == r["classes"][i])
              & (np.abs(g["scores"][:ng] - r["scores"][i]) <= score_tol)
              & np.all(np.abs(g["boxes"][:ng] - r["boxes"][i]) <= box_tol, axis=1))
        if not ok.any():
            res["mismatch"] = (f"TF detection {i} (class {int(r['classes'][i])}, score "
                               f"{r['scores'][i]:.6f}, box {np.round(r['boxes'][i], 3).tolist()}) "
                               f"has no counterpart in the file (its #{i}: class "
                               f"{int(g['classes'][i])}, score {g['scores'][i]:.6f})")
            break
        j = int(np.argmax(ok))
        used[j] = True
        score_d = max(score_d, abs(g["scores"][j] - r["scores"][i]))
        box_d = max(box_d, float(np.abs(g["boxes"][j] - r["boxes"][i]).max()))
    res.update(max_score_diff=score_d, max_box_diff=box_d)
    return res


def match_detections(ref: dict, got: dict, min_score: float = AGREE_SCORE,
                     min_iou: float = AGREE_IOU) -> tuple:
    """``(TF detections considered, matched, [|score diff| of each match])`` over a batch.

    Every TF detection scoring >= ``min_score`` is matched greedily, best score first, to an
    unused backend detection of the same class with IoU >= ``min_iou`` (the best-overlapping
    one); the backend's own scores are not thresholded, so a score just below the cut on
    one side does not count as a miss.
    """
    considered = matched = 0
    diffs = []
    for b in range(len(ref["num_detections"])):
        nr, ng = int(ref["num_detections"][b]), int(got["num_detections"][b])
        used = np.zeros(ng, bool)
        for i in np.argsort(-ref["scores"][b, :nr], kind="stable"):
            if ref["scores"][b, i] < min_score:
                continue
            considered += 1
            ious = iou(ref["boxes"][b, i], got["boxes"][b, :ng]) if ng else np.zeros(0)
            ok = (~used) & (got["classes"][b, :ng] == ref["classes"][b, i]) & (ious >= min_iou)
            if ok.any():
                j = int(np.argmax(np.where(ok, ious, -1.0)))
                used[j] = True
                matched += 1
                diffs.append(abs(float(got["scores"][b, j]) - float(ref["scores"][b, i])))
    return considered, matched, diffs


def agreement(matches: list) -> dict:
    """Pool :func:`match_detections` results into the table's figures."""
    considered = sum(m[0] for m in matches)
    matched = sum(m[1] for m in matches)
    diffs = [d for m in matches for d in m[2]]
    return {"tf_detections": considered, "matched": matched,
            "fraction": matched / considered if considered else None,
            "mean_score_diff": float(np.mean(diffs)) if diffs else None,
            "rule": f"TF detections with score >= {AGREE_SCORE} matched by a detection of the "
                    f"same class with IoU >= {AGREE_IOU}"}


def in_pixels(out: dict, box_scale=None) -> dict:
    """Detections with their boxes in network pixels: ``box_scale`` (``[h, w, h, w]``)
    multiplies boxes a file gives as fractions of its input (None: already pixels)."""
    if box_scale is None:
        return out
    return {**out, "boxes": np.asarray(out["boxes"], np.float32)
            * np.asarray(box_scale, np.float32)}
