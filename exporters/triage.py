"""int8 that keeps its accuracy: a per-layer sensitivity triage for TFLite.

Full-integer int8 gives every tensor one scale. Where a layer's activations have a few
channels far wider than the rest (swish + squeeze-excite models: a head channel spanning
+-30 beside hundreds spanning +-1), the narrow ones are left two or three int8 steps and the
model loses its accuracy. Which layers those are is measured, not guessed:

1. quantise fully, and measure every quantised layer's own error on the calibration images
   with TFLite's QuantizationDebugger (each layer is fed its float input, so errors do not
   accumulate): the median over its output channels of each channel's SQNR (10 log10 of
   the channel's variance over its mean squared int8 error: one scale per tensor fails the
   narrow channels beside a few wide ones), and the range statistics that explain it (float
   min and max, the widest channel's range over the typical one's, the 99.9th percentile of
   |value|, the int8 step);
2. measure the AP loss of the full int8 file on the evaluation data; within the bound, done;
3. otherwise keep the class/box heads in float as one group (their outputs are the boxes and
   scores themselves: an error there is not attenuated by any later layer, and a box code
   off by one int8 step moves a large anchor's box by pixels, which the AP at IoU up to 0.95
   sees, while the layer's own SQNR looks ordinary); within the bound, done;
4. otherwise, with the heads float, keep more layers in float, lowest SQNR first, searching
   the fewest that bring the loss within the bound (doubling, then bisecting; each
   candidate is a real conversion measured on the evaluation data);
5. report the float layers and why.

That is :class:`Triage`, the first file within the bound (the ONNX triage's rule). A file
within the bound can still be no faster than the float one (on a swish + SE model the heads
kept float ran at 0.95x the fp32 file's time), so TFLite's :class:`TFLiteTriage` chooses
instead: it times every candidate beside the fp32 file, tries the few worst layers on their
own before the heads group, and w8a16 (16-bit activations) as one more step, and keeps the
fastest file within the bound (or the most accurate, ``--triage-goal accuracy``), listing
every candidate with its time, float ops and AP loss.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
import warnings
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from edetgraph.cli import quiet_native
from edetgraph.verify import coverage
from edetgraph.verify.accuracy import measure
from edetgraph.verify.runners import make_runner
from exporters.float_heads import Calibrated, convert_keeping_float, precisions
from exporters.options import ExportFailed

MAX_TRIALS = 12      # conversions the search may spend after the full int8 one
STAT_IMAGES = 16     # calibration batches the per-layer statistics are measured on


def _channels(values) -> np.ndarray:
    a = np.asarray(values, np.float64)
    return a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a.reshape(-1, 1)


def _sqnr_db(float_values, quant_values, scale, zero_point) -> float:
    """The median over output channels of each channel's SQNR: one scale per tensor fails
    the narrow channels beside a few wide ones, which a whole-tensor SQNR (dominated by
    the wide channels) would hide."""
    f = _channels(float_values)
    q = (_channels(quant_values) - zero_point) * scale
    var, mse = f.var(axis=0), ((q - f) ** 2).mean(axis=0)
    ok = (var > 0) & (mse > 0)
    if not ok.any():
        return float("inf")
    return float(np.median(10.0 * np.log10(var[ok] / mse[ok])))


def _channel_spread(float_values, quant_values, scale, zero_point) -> float:
    """Widest channel's range over the median channel's range."""
    peak = np.abs(_channels(float_values)).max(axis=0)
    typical = float(np.median(peak))
    return float(peak.max() / typical) if typical > 0 else float("inf")


METRICS = {
    "sqnr_db": _sqnr_db,
    "channel_spread": _channel_spread,
    "float_min": lambda f, q, s, z: float(np.min(f)),
    "float_max": lambda f, q, s, z: float(np.max(f)),
    "p999_abs": lambda f, q, s, z: float(np.percentile(np.abs(f), 99.9)),
    "scale": lambda f, q, s, z: float(s),
}


def node_name(verify_name: str) -> str:
    """The float model's op output name of a debugger layer: the debugger names a layer
    ``NumericVerify/<op output name><digit>:<index>`` (TF 2.21's own parsing, mirrored)."""
    name = verify_name.rsplit(":", 1)[0].split("/", 1)[1]
    return name[:-1] if name[-1:].isdigit() else name


def layer_statistics(converter, calibration, limit: int = STAT_IMAGES) -> dict:
    """``{layer: {sqnr_db, channel_spread, float_min, float_max, p999_abs, scale}}`` of a
    full int8 conversion (calibrated on all the data), measured on its first ``limit``
    batches and keyed by the float op output names that ``convert_keeping_float`` takes."""
    def first_batches():
        for i, batch in enumerate(calibration()):
            if i >= limit:
                return
            yield batch

    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_direct_compare_metrics=METRICS)
    with warnings.catch_warnings(), quiet_native():   # the quantizer's settings line
        warnings.simplefilter("ignore")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=first_batches, debug_options=options)
        debugger.run()
    return {node_name(name): dict(stats) for name, stats in debugger.layer_statistics.items()}


def _why(name: str, s: dict) -> dict:
    spread = max(abs(s["float_min"]), abs(s["float_max"]))
    return {"layer": name, "sqnr_db": round(s["sqnr_db"], 2),
            "channel_spread": round(s["channel_spread"], 2),
            "range": [round(s["float_min"], 4), round(s["float_max"], 4)],
            "p999_abs": round(s["p999_abs"], 4), "int8_step": s["scale"],
            "why": (f"median channel SQNR {s['sqnr_db']:.1f} dB: values span +-{spread:.3g}, "
                    f"the widest channel {s['channel_spread']:.1f}x the typical one's range, "
                    f"99.9 % within +-{s['p999_abs']:.3g}; one int8 step is {s['scale']:.3g}")}


def _head_why(name: str) -> dict:
    return {"layer": name, "why": "in the class/box heads, kept float as one group: their "
            "outputs are the boxes and scores, which no later layer averages out"}


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


# ---------------------------------------------------- the TFLite triage that chooses by speed

GOALS = ("speed", "accuracy")   # to_tflite --triage-goal
FEW_LAYERS = 4       # the worst-SQNR layers tried float on their own before the heads group
SAME_SPEED = 0.05    # times this close (relative) are a tie on a shared machine: the
#                      smaller AP loss breaks it
TIMED_ROUNDS = 30    # timed calls of a candidate at most (each beside one of the fp32 file),
TIME_BUDGET_S = 1.5  # no new one after this many seconds: a few ms files get many calls (5
#                      calls of a 5 ms file on a shared 2-core machine gave medians 30 % off)
W8A16_PER_LAYER = (
    "not tried per layer: the converter's 16x8 mode (its older quantizer) takes no per-layer "
    "selection, and its MLIR quantizer, which does, fails on these models in 16 bits (a "
    "multiply of a 16-bit activation by an int8 constant: 'binary op operands have same "
    "element type'); ai-edge-quantizer's regex recipes could mix int8 and w8a16 layers")


class NotApplicable(Exception):
    """A candidate the conversion cannot make for this request (the message says why):
    reported as not tried."""


@dataclass(frozen=True)
class Choice:
    """How the TFLite triage chooses among the files it tries (``to_tflite --triage-goal``,
    ``--no-w8a16``)."""
    goal: str = "speed"     # speed: the fastest file within the bound; accuracy: the one
    #                         losing the least AP (every candidate's AP measured)
    w8a16: bool = True      # also try int8 weights with 16-bit activations (whole model)

    def __post_init__(self):
        if self.goal not in GOALS:      # before the search, not after it
            raise ValueError(f"triage goal {self.goal!r}: one of {', '.join(GOALS)}")


def choose(variants: list, goal: str) -> dict | None:
    """The variant to keep, of those within the bound (None: none is). ``speed``: the
    fastest; times within :data:`SAME_SPEED` of it count as ties, which the smaller AP loss
    breaks. ``accuracy``: the smallest AP loss, the faster of equal ones."""
    if goal not in GOALS:
        raise ValueError(f"triage goal {goal!r}: one of {', '.join(GOALS)}")
    within = [v for v in variants if v.get("within_bound")]
    if not within:
        return None
    if goal == "speed":
        fastest = min(v["time_vs_fp32"] for v in within)
        within = [v for v in within if v["time_vs_fp32"] <= fastest * (1 + SAME_SPEED)]
    return min(within, key=lambda v: (v["ap_drop_points"], v["time_vs_fp32"]))


def time_beside(reference, run, x, rounds: int = TIMED_ROUNDS,
                budget_s: float = TIME_BUDGET_S) -> dict:
    """``run(x)`` timed beside ``reference(x)``: the two called in turn, round by round, after
    one untimed call each; at least one round, and no new one after ``budget_s`` seconds.
    ``time_vs_fp32`` is the median over rounds of each round's ratio: the two calls of a
    round meet the same load of a shared machine (full int8 of a swish demo model, 1 thread,
    a loaded 2-core machine: a spread of 0.012 over six repeats, 0.062 for the ratio of the
    two medians)."""
    reference(x)
    run(x)
    own, ref = [], []
    start = time.perf_counter()
    for _ in range(rounds):
        for call, into in ((reference, ref), (run, own)):
            t0 = time.perf_counter()
            call(x)
            into.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    own, ref = np.asarray(own), np.asarray(ref)
    return {"ms": round(1e3 * float(np.median(own)), 3),
            "fp32_ms": round(1e3 * float(np.median(ref)), 3),
            "time_vs_fp32": round(float(np.median(own / ref)), 3), "timed_calls": len(own)}


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
