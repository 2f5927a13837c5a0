"""The search of the int8 triage (:class:`Triage`): the full int8 file, then the class/box
heads float as one group, then the fewest more float layers, lowest SQNR first, that bring
the AP loss within the bound."""
from __future__ import annotations

import os
import tempfile

from edetgraph.cli import quiet_native
from edetgraph.verify.accuracy import measure
from edetgraph.verify.runners import make_runner
from exporters.float_heads import convert_keeping_float
from exporters.options import ExportFailed
from exporters.triage.stats import _head_why, _why, layer_statistics

MAX_TRIALS = 12      # conversions the search may spend after the full int8 one


class Triage:
    """Runs the search for one export; ``result`` holds the report for the summary.
    Subclasses search other files (``exporters.onnx_quant.OnnxTriage``): they supply the
    per-layer statistics, the conversion keeping layers float, and the runner kind."""

    runner_kind, suffix = "tflite", ".tflite"

    def __init__(self, make_converter, calibration, spec, serve, eval_opts, input_kind,
                 batch, bound: float, say, box_scale=None, always_float=(), heads=()):
        self.make_converter, self.calibration = make_converter, calibration
        self.always_float = list(always_float)  # e.g. what follows the in-graph NMS
        self._heads = heads    # tried float as one group first (a list, or a callable
        #                        giving it: asked only when the full int8 file loses too much)
        self.base: list = []                    # float in every candidate of the search
        self.box_scale = box_scale     # in-graph detections whose boxes are fractions
        self.spec, self.serve, self.ev = spec, serve, eval_opts
        self.input_kind, self.batch, self.bound, self.say = input_kind, batch, bound, say
        self.trials: list = []

    @property
    def heads(self) -> list:
        if callable(self._heads):
            self._heads = self._heads()
        return list(self._heads)

    def _ap_drop(self, flatbuffer: bytes, k: int, label: str | None = None) -> float:
        """The file's AP loss on the evaluation data, recorded as a trial; ``label`` names
        the candidate in the progress line (default: its ``k`` float layers)."""
        with tempfile.TemporaryDirectory(prefix="edetgraph-triage-") as tmp:
            path = os.path.join(tmp, "candidate" + self.suffix)
            with open(path, "wb") as f:
                f.write(flatbuffer)
            runner = make_runner(self.runner_kind, path, None)
            annotations = self.ev.annotations or os.path.join(self.ev.data, "instances.json")
            r = measure(self.spec, self.serve, runner.run, self.ev.data, annotations,
                        self.input_kind, self.batch, "int8", self.ev.images, self.ev.nms,
                        self.bound, box_scale=self.box_scale)
        drop = r["ap_drop_points"]
        self.trials.append({"float_layers": k, "ap_drop_points": round(drop, 3),
                            "ap": r["file"]["AP"], "tf_ap": r["tf"]["AP"]})
        if label is not None:
            self.trials[-1]["variant"] = label
        self.say(f"  triage: {label or f'{k} layer(s) in float'} -> AP loss {drop:+.2f} "
                 f"points (bound {self.bound:g})")
        return drop

    def run(self) -> tuple[bytes, dict]:
        """``(flatbuffer, report)``: the fewest float layers within the bound found."""
        self.say("triage: measuring every quantised layer's error on the calibration images")
        stats = self.statistics()
        stats = {n: s for n, s in stats.items() if n not in self.always_float}
        ranked = sorted(stats, key=lambda n: stats[n]["sqnr_db"])
        full = self._convert([])
        best, best_k = full, 0
        if self._ap_drop(full, 0) > self.bound:
            best, best_k = self._beyond_full(ranked)
        searched = [n for n in ranked if n not in self.base]
        report = {"bound_points": self.bound, "layers_measured": len(stats),
                  "heads_float": bool(self.base),
                  "float_layers": [_why(n, stats[n]) if n in stats else _head_why(n)
                                   for n in self.base + searched[:best_k]],
                  "most_sensitive": [_why(n, stats[n]) for n in ranked[:10]],
                  "trials": self.trials}
        return best, report

    def statistics(self) -> dict:
        """``{layer: metrics}`` of the full int8 file (see :data:`METRICS`)."""
        return layer_statistics(self.make_converter(), self.calibration)

    def _beyond_full(self, ranked: list):
        """The full int8 file lost too much: the heads as a group, then single layers."""
        if self.heads:
            self.say(f"triage: the class/box heads ({len(self.heads)} ops) in float first")
            with_heads = self._convert(self.heads)
            self.base = list(self.heads)
            if self._ap_drop(with_heads, len(self.heads)) <= self.bound:
                return with_heads, 0
            ranked = [n for n in ranked if n not in self.heads]
        return self._search(ranked)

    def _convert(self, float_layers: list) -> bytes:
        nodes = list(dict.fromkeys(self.base + list(float_layers) + self.always_float))
        if not nodes:
            with quiet_native():    # the quantizer's settings line
                return self.make_converter().convert()
        return convert_keeping_float(self.make_converter(), self.calibration, nodes)

    def _search(self, ranked: list):
        models = {}

        def accurate(k):
            models[k] = self._convert(ranked[:k])
            return self._ap_drop(models[k], len(self.base) + k) <= self.bound

        k = fewest(accurate, len(ranked), lambda: len(self.trials) <= MAX_TRIALS)
        if k is None:
            heads = "the heads and " if self.base else ""
            raise ExportFailed(f"int8 triage: even {heads}{max(models, default=0)} float "
                               f"layer(s) leave the AP loss above {self.bound:g} points; use "
                               "fp16, or --max-ap-drop")
        return models[k], k


def fewest(accurate, n: int, may_try) -> int | None:
    """The fewest ``k`` in ``1..n`` for which ``accurate(k)`` holds, taking more to be never
    worse: ``k`` doubles from 1 until it holds, then the gap is bisected. ``accurate(k)``
    may answer None to end the search (a candidate that could not be chosen anyway), and
    ``may_try()`` false ends it too; None when no ``k`` held."""
    lo, hi, k = 0, None, 1
    while hi is None and may_try():
        k = min(k, n)
        ok = accurate(k)
        if ok is None:
            return None
        if ok:
            hi = k
        elif k == n:
            break
        else:
            lo, k = k, k * 2
    while hi is not None and hi - lo > 1 and may_try():
        mid = (lo + hi) // 2
        ok = accurate(mid)
        if ok is None:
            break
        if ok:
            hi = mid
        else:
            lo = mid
    return hi
