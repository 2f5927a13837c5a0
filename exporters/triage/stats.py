"""The per-layer statistics of the int8 triage: each quantised layer's own error, measured
by TFLite's QuantizationDebugger on the calibration images, and the text that says why a
layer is kept float."""
from __future__ import annotations

import warnings

import numpy as np
import tensorflow as tf

from edetgraph.cli import quiet_native

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
