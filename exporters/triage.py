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
"""
from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np
import tensorflow as tf

from edetgraph.cli import quiet_native
from edetgraph.verify.accuracy import measure
from edetgraph.verify.runners import make_runner
from exporters.float_heads import convert_keeping_float
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

    def _ap_drop(self, flatbuffer: bytes, k: int) -> float:
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
        self.say(f"  triage: {k} layer(s) in float -> AP loss {drop:+.2f} points "
                 f"(bound {self.bound:g})")
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
        lo, hi, found = 0, None, None
        k = 1
        while hi is None and len(self.trials) <= MAX_TRIALS:
            k = min(k, len(ranked))
            model = self._convert(ranked[:k])
            if self._ap_drop(model, len(self.base) + k) <= self.bound:
                hi, found = k, model
            elif k == len(ranked):
                break
            else:
                lo, k = k, k * 2
        if found is None:
            heads = "the heads and " if self.base else ""
            raise ExportFailed(f"int8 triage: even {heads}{k} float layer(s) leave the AP loss "
                               f"above {self.bound:g} points; use fp16, or --max-ap-drop")
        while hi - lo > 1 and len(self.trials) <= MAX_TRIALS:
            mid = (lo + hi) // 2
            model = self._convert(ranked[:mid])
            if self._ap_drop(model, len(self.base) + mid) <= self.bound:
                hi, found = mid, model
            else:
                lo = mid
        return found, hi
