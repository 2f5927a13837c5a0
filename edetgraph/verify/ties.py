"""Judging in-graph NMS where scores tie: is a file's list of detections one that the same
NMS, on the same candidates, gives when ties are broken another way?

A trained model on random pixels saturates many class scores at exactly 1.0. Greedy NMS
then picks among equal scores in whatever order its implementation sorts them (TF's
kernel, ONNX Runtime's and TFLite's detection op each have their own), and a box picked
first suppresses its neighbours: the lists differ, all of them correct. Matching them one
to one refuses correct files. :func:`replay` instead walks the file's list through greedy
NMS over TF's candidates (every anchor's decoded box and class scores): each detection must
be a candidate the NMS could pick next (its score within tolerance of the best one left,
its class one of the anchor's best, its box that anchor's box), suppressing what that pick
suppresses; and the list may stop short only when nothing is left. A swapped class, a
shifted box, a skipped detection or an extra one still fails. Pure numpy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edetgraph.verify.detections import iou


@dataclass(frozen=True)
class NmsRule:
    """The in-graph post-processing of a file, as the replay needs it."""
    method: str                  # "hard" (ONNX NonMaxSuppression) or "fast" (TFLite's op)
    iou_threshold: float
    score_threshold: float
    max_detections: int
    image_size: tuple            # (height, width): output boxes are clipped to it


def replay(boxes, scores, by_class, dets: dict, rule: NmsRule, score_tol: float,
           box_tol: float) -> str | None:
    """Why ``dets`` (one image: ``boxes [K, 4]``, ``scores [K]``, 1-based ``classes [K]``,
    ``num_detections``) is not an outcome of ``rule``'s NMS over the candidates ``boxes
    [N, 4]``, ``scores [N]``, ``by_class [N, C]`` under any order of tied scores; None when
    it is one."""
    boxes, scores = np.asarray(boxes, np.float64), np.asarray(scores, np.float64)
    by_class = np.asarray(by_class, np.float64)
    h, w = rule.image_size
    clipped = np.clip(boxes, 0.0, [h, w, h, w])
    alive = scores > rule.score_threshold - score_tol
    n = int(dets["num_detections"])
    for k in range(n):
        box = np.asarray(dets["boxes"][k], np.float64)
        score, cls = float(dets["scores"][k]), int(dets["classes"][k]) - 1
        if not alive.any():
            return f"file detection {k} is one more than NMS can give"
        top = scores[alive].max()
        ok = (alive & (scores >= top - score_tol) & (np.abs(scores - score) <= score_tol)
              & np.all(np.abs(clipped - box) <= box_tol, axis=1))
        if 0 <= cls < by_class.shape[1]:
            ok &= by_class[:, cls] >= by_class.max(axis=1) - score_tol
        else:
            ok[:] = False
        if not ok.any():
            return (f"file detection {k} (class {cls + 1}, score {score:.6f}, box "
                    f"{np.round(box, 3).tolist()}) is not one NMS could pick next (best score "
                    f"left {top:.6f}, even with ties broken otherwise)")
        picked = np.flatnonzero(ok)
        a = picked[np.argmin(np.abs(clipped[picked] - box).max(axis=1))]
        alive &= iou(boxes[a], boxes) <= rule.iou_threshold
        alive[a] = False
    if n < rule.max_detections and (scores[alive] > rule.score_threshold + score_tol).any():
        return (f"the file stops at {n} detections where NMS goes on (next score "
                f"{scores[alive].max():.6f})")
    return None


def judge_ties(candidates: tuple, ref: dict, got: dict, b: int, rule: NmsRule,
               score_tol: float, box_tol: float) -> tuple[bool, str]:
    """``(accepted, note)`` for image ``b`` whose detections did not match one to one:
    accepted when the file's list is an NMS outcome of TF's candidates; the replay must
    accept TF's own list first, else it cannot arbitrate and the file is not accepted."""
    boxes, scores, by_class = (np.asarray(c)[b] for c in candidates)
    one = lambda d: {k: np.asarray(d[k])[b] for k in ("boxes", "scores", "classes",  # noqa: E731
                                                      "num_detections")}
    own = replay(boxes, scores, by_class, one(ref), rule, score_tol, box_tol)
    if own is not None:
        return False, f"ties not judged: the replay does not reproduce TF's own list ({own})"
    why = replay(boxes, scores, by_class, one(got), rule, score_tol, box_tol)
    if why is not None:
        return False, why
    return True, ("not one to one, but the same NMS on TF's candidates gives the file's list "
                  "when tied scores are taken in another order")
