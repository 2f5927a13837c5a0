"""The TFLite int8 triage that chooses among the files it tries (:class:`TFLiteTriage`):
each candidate converted, timed beside the fp32 file and, when it could still be chosen,
measured on the evaluation data."""
from __future__ import annotations

import contextlib
import os
import tempfile

import numpy as np

from edetgraph.verify import coverage
from edetgraph.verify.runners import make_runner
from exporters.float_heads import Calibrated, precisions
from exporters.options import ExportFailed
from exporters.triage.choice import (SAME_SPEED, TIME_BUDGET_S, TIMED_ROUNDS, Choice,
                                     NotApplicable, choose, time_beside)
from exporters.triage.search import MAX_TRIALS, Triage, fewest
from exporters.triage.stats import _head_why, _why

FEW_LAYERS = 4       # the worst-SQNR layers tried float on their own before the heads group
W8A16_PER_LAYER = (
    "not tried per layer: the converter's 16x8 mode (its older quantizer) takes no per-layer "
    "selection, and its MLIR quantizer, which does, fails on these models in 16 bits (a "
    "multiply of a 16-bit activation by an int8 constant: 'binary op operands have same "
    "element type'); ai-edge-quantizer's regex recipes could mix int8 and w8a16 layers")


class TFLiteTriage(Triage):
    """The TFLite int8 triage that chooses among the files it tries: each candidate is
    converted, timed beside the fp32 file and, when it could still be chosen, measured on
    the evaluation data; the fastest within the bound is kept (``Choice.goal`` speed), or
    the one losing the least AP (accuracy). Candidates, in the order tried:

    1. full int8; under the speed goal a full int8 file within the bound ends the search
       (every other candidate computes more in float or in 16 bits: none is expected to
       be faster);
    2. the few worst-SQNR layers float (1, 2, 4 of them: the fewest that hold), single
       layers before any group;
    3. the class/box heads float as one group; beyond the bound, the heads and the fewest
       more layers (the search of :class:`Triage`);
    4. w8a16: int8 weights, 16-bit activations for the whole model (the converter's 16x8
       mode; ops it has no 16-bit kernel for stay float32). A conversion or a file that
       fails is reported with its reason, not fatal.

    Under the speed goal a candidate timed slower than a file already within the bound
    (beyond :data:`SAME_SPEED`) is not measured on the evaluation data: it could not be
    chosen, and its ladder ends there (more float layers would be slower still).
    """

    def __init__(self, *args, choice: Choice = Choice(), reference=None, w8a16=None,
                 threads=None, **kw):
        super().__init__(*args, **kw)
        self.choice, self.threads = choice, threads
        self.reference = reference      # () -> the fp32 file's bytes (None: not timed)
        self.make_w8a16 = w8a16         # () -> the w8a16 file's bytes (None: not offered)
        self.variants: list = []
        self._kept: dict = {}           # within the bound: name -> (flatbuffer, layers
        #                                 asked float, names of its float ops)
        self._fp32 = self._x = self._calibrated = None
        self._fp32_ms: list = []

    def run(self) -> tuple[bytes, dict]:
        """``(flatbuffer, report)`` of the file chosen; ExportFailed when none is within."""
        self.say("triage: measuring every quantised layer's error on the calibration images")
        stats = {n: s for n, s in self.statistics().items() if n not in self.always_float}
        ranked = sorted(stats, key=lambda n: stats[n]["sqnr_db"])
        with self._clock():
            full = self._try("int8", "int8", [])
            if full and self.choice.goal == "speed":
                self._not_tried("the full int8 file is within the bound: every other "
                                "candidate computes more in float or 16 bits")
            else:
                self._ladders(ranked)
                self._w8a16()
        chosen = choose(self.variants, self.choice.goal)
        if chosen is None:
            raise ExportFailed(self._nothing_within())
        return self._kept[chosen["name"]][0], self._report(chosen, stats, ranked)

    def _ladders(self, ranked: list) -> None:
        """Single sensitive layers first, then the heads as a group, then heads + layers."""
        few = ranked[:FEW_LAYERS]
        if few:
            self.say(f"triage: the {len(few)} worst-SQNR layers in float, fewest first")
            fewest(lambda k: self._try(f"int8, {k} layer(s) float", "layers", few[:k]),
                   len(few), self._budget())
        heads = self.heads
        if not heads:
            return
        self.say(f"triage: the class/box heads ({len(heads)} ops) in float as one group")
        if self._try("int8, heads float", "heads", heads) is not False:
            return      # within the bound, or it could not be chosen: no more float layers
        rest = [n for n in ranked if n not in heads]
        fewest(lambda k: self._try(f"int8, heads + {k} layer(s) float", "heads+layers",
                                   heads + rest[:k]), len(rest), self._budget())

    def _convert(self, float_layers: list) -> bytes:
        """As :meth:`Triage._convert`, calibrated once for all the candidates (each
        :class:`Triage` conversion calibrates again on every calibration image)."""
        nodes = list(dict.fromkeys(self.base + list(float_layers) + self.always_float))
        if not nodes:
            return super()._convert([])
        if self._calibrated is None:
            self._calibrated = Calibrated(self.make_converter())
        return self._calibrated.keeping_float(nodes)

    def _budget(self):
        start = len(self.trials)
        return lambda: len(self.trials) - start < MAX_TRIALS

    def _w8a16(self) -> None:
        if not self.choice.w8a16:
            self._not_tried("--no-w8a16", ["w8a16"])
        elif self.make_w8a16 is None:
            self._not_tried("not offered by this export", ["w8a16"])
        else:
            self.say("triage: w8a16 (int8 weights, 16-bit activations) for the whole model")
            self._try("w8a16", "w8a16", [], self.make_w8a16)

    def _not_tried(self, why: str, kinds=("layers", "heads", "w8a16")) -> None:
        names = {"layers": "int8, worst layers float", "heads": "int8, heads float"}
        for kind in kinds:
            self.variants.append({"name": names.get(kind, kind), "kind": kind,
                                  "status": "not tried", "why": why})

    def _try(self, name: str, kind: str, layers: list, convert=None) -> bool | None:
        """Convert, cost and (if it could be chosen) measure one candidate: True within the
        bound, False beyond it, None not measured (it failed, or could not be chosen)."""
        v = {"name": name, "kind": kind, "float_layers": len(layers)}
        self.variants.append(v)
        try:
            flatbuffer = convert() if convert is not None else self._convert(layers)
            v.update(self._cost(flatbuffer))
            float_names = v.pop("float_names")
        except NotApplicable as e:
            v.update(status="not tried", why=str(e))
            self.say(f"triage: {name}: not tried: {e}")
            return None
        except Exception as e:  # a converter or runtime that cannot do it: said, not fatal
            v.update(status="failed", why=str(e).strip().splitlines()[0][:300] if str(e).strip()
                     else type(e).__name__)
            self.say(f"triage: {name}: failed: {v['why']}")
            return None
        self.say(f"triage: {name}: {v['time_vs_fp32']:.2f}x the fp32 file's time "
                 f"({v['ms']:.1f} vs {v['fp32_ms']:.1f} ms), {v['float_ops']} of {v['ops']} "
                 f"ops float" + (f", {v['int16_ops']} int16" if v.get("int16_ops") else "") +
                 (f", {v['reference_kernel_ops']} on the reference kernels"
                  if v.get("reference_kernel_ops") else ""))
        rival = self._faster_within(v)
        if rival is not None:
            v.update(status="not measured",
                     why=f"slower than {rival['name']} ({rival['time_vs_fp32']:.2f}x), which "
                         "is within the bound: it could not be chosen")
            self.say(f"  triage: {name}: AP not measured: {v['why']}")
            return None
        drop = self._ap_drop(flatbuffer, len(layers), name)
        within = drop <= self.bound
        v.update(ap_drop_points=round(drop, 3), within_bound=within,
                 status="within the bound" if within else "beyond the bound")
        if within:
            self._kept[name] = (flatbuffer, list(layers), float_names)
        return within

    def _faster_within(self, v: dict) -> dict | None:
        """Under the speed goal, a file within the bound that ``v`` is slower than."""
        if self.choice.goal != "speed":
            return None
        within = [u for u in self.variants if u.get("within_bound")]
        best = min(within, key=lambda u: u["time_vs_fp32"], default=None)
        if best is not None and v["time_vs_fp32"] > best["time_vs_fp32"] * (1 + SAME_SPEED):
            return best
        return None

    @contextlib.contextmanager
    def _clock(self):
        """The fp32 file, loaded once, that every candidate is timed beside."""
        if self.reference is None:
            yield
            return
        threads = f"{self.threads} thread(s)" if self.threads else "default threads"
        self.say(f"triage: converting the fp32 file every candidate is timed beside "
                 f"({threads}, the median of up to {TIMED_ROUNDS} calls each, "
                 f"{TIME_BUDGET_S:g} s at most)")
        with tempfile.TemporaryDirectory(prefix="edetgraph-triage-") as tmp:
            path = os.path.join(tmp, "fp32" + self.suffix)
            with open(path, "wb") as f:
                f.write(self.reference())
            self._fp32 = make_runner(self.runner_kind, path, self.threads)
            self._x = next(iter(self.calibration()))[0]
            try:
                yield
            finally:
                self._fp32 = None

    def _cost(self, flatbuffer: bytes) -> dict:
        """The file's op precisions (:func:`~exporters.float_heads.precisions`), XNNPACK
        coverage and time beside the fp32 file."""
        facts = precisions(flatbuffer)
        with tempfile.TemporaryDirectory(prefix="edetgraph-triage-") as tmp:
            path = os.path.join(tmp, "candidate" + self.suffix)
            with open(path, "wb") as f:
                f.write(flatbuffer)
            facts["reference_kernel_ops"] = sum(coverage.tflite(path)["not_delegated"].values())
            runner = make_runner(self.runner_kind, path, self.threads)
            timing = time_beside(self._fp32.run_shared, runner.run_shared, self._x)
        self._fp32_ms.append(timing["fp32_ms"])
        return {**facts, **timing}

    def _nothing_within(self) -> str:
        tried = "; ".join(f"{v['name']} " + (f"{v['ap_drop_points']:+.2f}"
                                             if "ap_drop_points" in v else v["status"])
                          for v in self.variants if v["status"] != "not tried")
        return (f"int8 triage: no file tried leaves the AP loss within {self.bound:g} points "
                f"({tried}); use fp16, or --max-ap-drop")

    def _report(self, chosen: dict, stats: dict, ranked: list) -> dict:
        within = [v for v in self.variants if v.get("within_bound")]
        if len(within) == 1:
            why = (f"the only file tried within the bound ({chosen['time_vs_fp32']:.2f}x the "
                   "fp32 file's time)")
        elif self.choice.goal == "speed":
            why = (f"the fastest of the {len(within)} files within the bound "
                   f"({chosen['time_vs_fp32']:.2f}x the fp32 file's time; times within "
                   f"{SAME_SPEED:.0%} are ties, the smaller AP loss wins)")
        else:
            why = (f"the smallest AP loss of the {len(within)} files within the bound "
                   f"({chosen['ap_drop_points']:+.2f} points)")
        if chosen["time_vs_fp32"] >= 1:
            why += ("; SLOWER than the fp32 file: no file within the bound is faster here, "
                    "so the fp32 file is the better choice on this machine")
        for v in self.variants:
            v["chosen"] = v is chosen
        chosen["why"] = why
        self.say(f"triage: chose {chosen['name']}: {why}")
        _, layers, float_names = self._kept[chosen["name"]]
        heads = set(self.heads) if chosen["kind"] in ("heads", "heads+layers") else set()
        if chosen["kind"] == "w8a16":
            float_layers = [{"layer": n, "why": "no 16-bit kernel in the converter's 16x8 "
                             "mode: computed in float32"} for n in float_names]
        else:
            float_layers = [_head_why(n) if n in heads or n not in stats else _why(n, stats[n])
                            for n in layers]
        return {"bound_points": self.bound, "layers_measured": len(stats),
                "heads_float": bool(heads), "float_layers": float_layers,
                "most_sensitive": [_why(n, stats[n]) for n in ranked[:10]],
                "trials": self.trials, "goal": self.choice.goal, "chosen": chosen["name"],
                "why": why, "variants": self.variants,
                "fp32_ms": round(float(np.median(self._fp32_ms)), 3) if self._fp32_ms else None,
                "timing": {"threads": self.threads, "rounds": TIMED_ROUNDS,
                           "budget_s": TIME_BUDGET_S, "ties_within": SAME_SPEED,
                           "how": "each candidate's call beside one of the fp32 file, round by "
                                  "round after one untimed call of each, no new round after "
                                  "budget_s; time_vs_fp32 is the median of the rounds' "
                                  "ratios, ms and fp32_ms the medians of the calls"},
                "w8a16_per_layer": W8A16_PER_LAYER}
