"""The parity gate: an exported file is good only if it computes what the TF model computes.

Each exporter runs its file and the TF function it was converted from on the same inputs and
feeds both results here. Raw outputs are compared element by element (largest absolute
difference, where it is, and that difference relative to the output's largest magnitude) and
as a normalised RMSE (RMSE / standard deviation of the TF values), pooled per head over all
levels and per level on its own. For fp32 files the same outputs are also computed in float64
(:mod:`edetgraph.verify.exact`), which says how far TF float32 and the file each are from the value
both approximate. Detections from in-graph NMS are matched one to one against the TF path
with the same NMS. The tolerances below say what each kind of file must meet, and why.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from edetgraph.graph.outputs import head_of
from edetgraph.verify.detections import compare_detections
# format_parity was defined here first: still importable from here
from edetgraph.verify.parity_report import format_parity, nrmse_text  # noqa: F401
from edetgraph.verify.ties import NmsRule, judge_ties


class ParityError(RuntimeError):
    """The file cannot be compared at all (other outputs than TF's)."""


@dataclass(frozen=True)
class Tolerance:
    """What a file of one numeric kind must meet.

    ``atol``: every raw output element within ``atol`` of TF. Beyond that, with a float64
    reference and ``exact_factor``, an output still passes if the file's largest distance
    from the float64 result is at most ``exact_factor`` times TF float32's own: the file is
    then as accurate as TF and the difference is float32 rounding on both sides.
    ``nrmse``: per head (all levels pooled) RMSE / std(TF) below this. ``level_nrmse``: the
    same of every level's output on its own (its RMSE over its own TF spread): a head whose
    levels share a conv, quantised with one level's scale, can leave a small level (P7)
    garbage while the pooled figure, which the large P3 dominates, looks fine. ``identical``:
    detections must match one to one (same count and classes, scores within
    ``DETECTION_SCORE_TOL``, box coordinates within ``DETECTION_BOX_TOL`` of the image side);
    otherwise detection agreement is reported only. ``random_gated``: random-pixel inputs
    count for nrmse (int8 excludes them: they lie outside the calibration range, where
    saturation is the expected int8 behaviour, not a conversion error).
    """
    name: str
    atol: float | None
    nrmse: float | None
    identical: bool
    random_gated: bool
    why: str
    exact_factor: float | None = None
    level_nrmse: float | None = None


TOLERANCES = {
    "fp32": Tolerance("fp32", 1e-4, None, True, True,
                      "float32 end to end, only the order of summation differs: every raw "
                      "output element within 1e-4 of TF, and detections identical. An output "
                      "beyond 1e-4 passes only if the file is no further from the float64 "
                      "result than 2x TF float32's own distance from it (TF float32 itself "
                      "is 1e-4 from float64 on Lite0 with random weights, 7e-4 on Lite2): "
                      "then the file is as accurate as TF and both differ by rounding alone",
                      exact_factor=2.0),
    "fp16": Tolerance("fp16", None, 0.05, False, True,
                      "weights stored as float16 (relative rounding <= 2^-11); the error "
                      "compounds through ~100 layers, so each head's RMSE must stay below 5 % "
                      "of its spread (SQNR >= 26 dB), and each level's below its own spread "
                      "(SQNR > 0 dB per level: no level is garbage)", level_nrmse=1.0),
    "bf16": Tolerance("bf16", None, 0.05, False, True,
                      "activations and weights in bfloat16 (8 mantissa bits, relative rounding "
                      "<= 2^-8) where the CPU has it, judged like fp16: each head's RMSE below "
                      "5 % of its spread, and each level's below its own spread", level_nrmse=1.0),
    "dynamic": Tolerance("dynamic", None, 1.0, False, True,
                         "int8 weights, activations quantised on the fly: each head's RMSE must "
                         "stay below the spread of the TF values (SQNR > 0 dB), i.e. the file "
                         "carries the TF signal, and so must each level's on its own. This "
                         "catches broken files, not accuracy loss, which depends on the weights: "
                         "judge that by AP", level_nrmse=1.0),
    "int8": Tolerance("int8", None, 1.0, False, False,
                      "8-bit activations, one scale per tensor: on real images each head's RMSE "
                      "must stay below the spread of the TF values (SQNR > 0 dB), i.e. the file "
                      "carries the TF signal, and so must each level's on its own (a level "
                      "quantised with another level's scale is garbage the pooled figure "
                      "hides). This catches broken files (wrong scales, garbage), not accuracy "
                      "loss, which depends on the weights: judge that by AP", level_nrmse=1.0),
}


# The largest AP loss (points, 0-100) each kind of file may show against the float TF model.
AP_DROP = {"fp32": 0.1, "fp16": 1.0, "bf16": 1.0, "dynamic": 3.0, "int8": 3.0}
AP_DROP_WHY = ("AP (IoU 0.50:0.95) of the file may be at most this many points below the TF "
               "model's on --eval-data: fp32 0.1 (ties in NMS only), fp16 and bf16 1, dynamic "
               "and int8 3")

DETECTION_SCORE_TOL = 1e-4  # scores are in [0, 1]: the raw tolerance, absolute
DETECTION_BOX_TOL = 1e-3    # of the image side (0.5 px at 512): far below what AP resolves,
                            # above the decoding noise (anchors reach 2.3x the image side)


def tolerance_for(kind: str, atol: float | None = None,
                  float64_factor: float | None = None) -> Tolerance:
    """The tolerance of ``kind`` (fp32/fp16/dynamic/int8); ``atol`` overrides fp32's 1e-4,
    ``float64_factor`` its 2 (0: no float64 arbitration, the flat ``atol`` alone)."""
    tol = TOLERANCES[kind]
    if tol.atol is None:
        return tol
    why, factor = tol.why, tol.exact_factor
    if atol is not None:
        why = why.replace("within 1e-4", f"within {atol:g}").replace("beyond 1e-4",
                                                                     f"beyond {atol:g}")
    if float64_factor is not None:
        factor = float(float64_factor) or None
        why = (why.replace("than 2x", f"than {float64_factor:g}x") if factor else
               why.split(". An output beyond")[0] + " (no float64 arbitration asked)")
    return replace(tol, atol=tol.atol if atol is None else float(atol), why=why,
                   exact_factor=factor)


def atol_failure(name: str, max_abs: float, exact: dict | None, tol: Tolerance) -> str | None:
    """Why output ``name`` fails ``tol.atol`` (None: it passes). ``max_abs`` is its largest
    |file - TF|; ``exact`` holds ``tf_max_abs`` and ``file_max_abs``, the largest distances
    of TF float32 and of the file from the float64 result (None: no float64 reference)."""
    if tol.atol is None or max_abs <= tol.atol:
        return None
    why = f"{name}: max |diff| {max_abs:.3g} > {tol.atol:g}"
    if exact is None or tol.exact_factor is None:
        return why
    allowed = tol.exact_factor * exact["tf_max_abs"]
    if exact["file_max_abs"] <= allowed:
        return None
    return (f"{why}, and the file is {exact['file_max_abs']:.3g} from the float64 result, more "
            f"than {tol.exact_factor:g} x TF float32's own {exact['tf_max_abs']:.3g}")


def describe_index(name: str, index, num_classes: int) -> str:
    """Readable position of an element: image, cell and anchor/class or box coordinate."""
    index = tuple(int(i) for i in index)
    if name.startswith(("cls_l", "box_l")) and len(index) == 4:
        b, y, x, ch = index
        what = (f"anchor {ch // num_classes} class {ch % num_classes}" if name.startswith("cls")
                else f"anchor {ch // 4} {('ty', 'tx', 'th', 'tw')[ch % 4]}")
        return f"image {b} y={y} x={x} {what}"
    return "index " + str(list(index))


class _Output:
    """Running figures of one output over all inputs."""

    def __init__(self):
        self.max_abs, self.max_ref, self.where = 0.0, 0.0, None
        self.sq_err = self.ref_sum = self.ref_sq = 0.0
        self.count = 0
        self.exact = None  # {"tf_max_abs", "file_max_abs"} once a float64 result is given

    def add(self, label, ref, got, pooled: bool, describe, exact=None):
        ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
        diff = np.abs(got - ref)
        if exact is not None:
            exact = np.asarray(exact, np.float64)
            e = self.exact or {"tf_max_abs": 0.0, "file_max_abs": 0.0}
            self.exact = {"tf_max_abs": max(e["tf_max_abs"], float(np.abs(ref - exact).max())),
                          "file_max_abs": max(e["file_max_abs"], float(np.abs(got - exact).max()))}
        self.max_ref = max(self.max_ref, float(np.abs(ref).max(initial=0.0)))
        if diff.size and (self.where is None or float(diff.max()) > self.max_abs):
            i = np.unravel_index(int(np.argmax(diff)), diff.shape)
            self.max_abs = float(diff[i])
            self.where = {"input": label[i[0]] if i else label[0], "index": [int(k) for k in i],
                          "at": describe(i), "tf": float(ref[i]),
                          "file": float(np.asarray(got)[i])}
        if pooled:
            self.sq_err += float((diff ** 2).sum())
            self.ref_sum += float(ref.sum())
            self.ref_sq += float((ref ** 2).sum())
            self.count += diff.size

    def figures(self) -> dict:
        return {"max_abs": self.max_abs, "max_ref": self.max_ref,
                "max_rel": self.max_abs / self.max_ref if self.max_ref else 0.0,
                "where": self.where, "float64": self.exact, **_pooled([self])}


def sqnr_db(nrmse: float | None) -> float | None:
    """The SQNR (dB) of a normalised RMSE: -20 log10(RMSE/std); None when not measured or
    exact."""
    return None if not nrmse else round(float(-20 * np.log10(nrmse)), 2)


def _levels(outputs: dict) -> dict:
    """``{head: {"P3": {output, rmse, nrmse, sqnr_db}, ...}}``: each level on its own."""
    out = {}
    for name, f in outputs.items():
        head = head_of(name)
        if head != name:     # cls_l7 -> cls, P7
            out.setdefault(head, {})[f"P{name.rpartition('_l')[2]}"] = {
                "output": name, "rmse": f["rmse"], "nrmse": f["nrmse"],
                "sqnr_db": sqnr_db(f["nrmse"])}
    return out


def _pooled(items) -> dict:
    n = sum(o.count for o in items)
    if not n:
        return {"rmse": None, "nrmse": None}
    rmse = np.sqrt(sum(o.sq_err for o in items) / n)
    mean = sum(o.ref_sum for o in items) / n
    std = np.sqrt(max(sum(o.ref_sq for o in items) / n - mean ** 2, 0.0))
    return {"rmse": float(rmse), "nrmse": float(rmse / std) if std > 0 else None}


class ParityGate:
    """Collects the comparisons of one export and decides pass/fail against a Tolerance."""

    def __init__(self, tolerance: Tolerance, num_classes: int, image_side: int,
                 nms: NmsRule | None = None):
        self.tol, self.num_classes, self.image_side = tolerance, num_classes, image_side
        self.nms = nms   # the file's in-graph NMS: with candidates, ties are judged as ties
        self.inputs, self._outputs, self._detections = [], {}, []

    def add_outputs(self, labels, ref: dict, got: dict, real: bool,
                    exact: dict | None = None) -> None:
        """Raw outputs of one batch (``labels`` names its images); ``exact``: the same
        outputs computed in float64 (edetgraph.verify.exact), or None."""
        self._check_names(ref, got)
        self.inputs.extend(lab for lab in labels if lab not in self.inputs)
        pooled = real or self.tol.random_gated
        for name in ref:
            self._outputs.setdefault(name, _Output()).add(
                labels, ref[name], got[name], pooled,
                lambda i, n=name: describe_index(n, i, self.num_classes),
                None if exact is None else exact[name])

    def add_detections(self, labels, ref: dict, got: dict, candidates=None) -> None:
        """Padded detections of one batch (``boxes, scores, classes, num_detections``).

        ``candidates``: ``(boxes, scores, by_class)`` TF's NMS chose from (batch-first, see
        :func:`~edetgraph.task.postprocess.nms_candidates`); with them and the gate's NMS
        rule, a list that is not one to one passes when it is an NMS outcome of the same
        candidates with tied scores taken in another order (:mod:`edetgraph.verify.ties`).
        """
        self._check_names(ref, got)
        self.inputs.extend(lab for lab in labels if lab not in self.inputs)
        for b, label in enumerate(labels):
            tols = ((DETECTION_SCORE_TOL, DETECTION_BOX_TOL * self.image_side)
                    if self.tol.identical else (None, None))
            d = dict(input=label, **compare_detections(ref, got, b, *tols), ties=None)
            if d["mismatch"] and candidates is not None and self.nms is not None:
                accepted, note = judge_ties(candidates, ref, got, b, self.nms, *tols)
                d["ties"] = note
                if accepted:
                    d["mismatch"] = None
                else:
                    d["mismatch"] += f"; {note}"
            self._detections.append(d)

    @staticmethod
    def _check_names(ref, got):
        if set(ref) != set(got):
            raise ParityError(f"the file's outputs {sorted(got)} are not the TF outputs "
                              f"{sorted(ref)}")

    def result(self) -> dict:
        """JSON-able figures, the list of failures and ``passed``."""
        outputs = {k: o.figures() for k, o in sorted(self._outputs.items())}
        heads = {}
        for name, o in self._outputs.items():
            heads.setdefault(head_of(name), []).append(o)
        heads = {h: _pooled(items) for h, items in sorted(heads.items())}
        levels = _levels(outputs)
        failures = self._failures(outputs, heads, levels)
        t = self.tol
        return {"tolerance": {"name": t.name, "atol": t.atol, "nrmse": t.nrmse,
                              "float64_factor": t.exact_factor, "level_nrmse": t.level_nrmse,
                              "detections": "identical" if t.identical else "reported",
                              "random_inputs_gated": t.random_gated, "why": t.why},
                "inputs": list(self.inputs), "outputs": outputs, "heads": heads,
                "levels": levels, "detections": self._detections, "failures": failures,
                "passed": not failures}

    def _failures(self, outputs, heads, levels) -> list:
        t, out = self.tol, []
        for name, f in outputs.items():
            why = atol_failure(name, f["max_abs"], f["float64"], t)
            if why:
                w = f["where"]
                out.append(f"{why}; largest diff on input '{w['input']}' at {w['at']} "
                           f"(TF {w['tf']:.6g}, file {w['file']:.6g})")
        for head, f in heads.items():
            if t.nrmse is not None and (f["nrmse"] is None or f["nrmse"] >= t.nrmse):
                worst = max((n for n in outputs if head_of(n) == head),
                            key=lambda n: outputs[n]["nrmse"] or 0.0)
                w = outputs[worst]["where"]
                out.append(f"{head} (all levels): RMSE/std {f['nrmse']} not below {t.nrmse:g}; "
                           f"worst output {worst} "
                           f"(RMSE/std {nrmse_text(outputs[worst]['nrmse'])}), "
                           f"largest diff {outputs[worst]['max_abs']:.3g} on "
                           f"input '{w['input']}' at {w['at']}")
            out.extend(self._level_failures(head, f, levels.get(head, {}), outputs))
        if t.identical:
            out.extend(f"detections on input '{d['input']}': {d['mismatch']}"
                       for d in self._detections if d["mismatch"])
        return out

    def _level_failures(self, head: str, pooled: dict, levels: dict, outputs: dict) -> list:
        """Each level of ``head`` whose own RMSE/std is not below ``level_nrmse``. A level
        whose TF values do not vary has no figure: the head's pooled one judges it."""
        bound, out = self.tol.level_nrmse, []
        for level, f in levels.items():
            if bound is None or f["nrmse"] is None or f["nrmse"] < bound:
                continue
            o = outputs[f["output"]]
            w = o["where"]
            out.append(f"{head} level {level} ({f['output']}): RMSE/std {f['nrmse']:.3g} "
                       f"(SQNR {f['sqnr_db']:.1f} dB) not below {bound:g}, the head's levels "
                       f"pooled {nrmse_text(pooled['nrmse'])}; largest diff {o['max_abs']:.3g} "
                       f"on input '{w['input']}' at {w['at']}")
        return out
