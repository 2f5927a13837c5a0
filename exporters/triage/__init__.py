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

The parts: :mod:`.stats` measures each layer's error, :mod:`.search` is the search for the
fewest float layers (:class:`Triage`), :mod:`.choice` how the TFLite triage chooses and times
its candidates, :mod:`.tflite` the TFLite triage that chooses (:class:`TFLiteTriage`).
"""
from exporters.triage.choice import (GOALS, SAME_SPEED, TIME_BUDGET_S, TIMED_ROUNDS, Choice,
                                     NotApplicable, choose, time_beside)
from exporters.triage.search import MAX_TRIALS, Triage, fewest
from exporters.triage.stats import METRICS, STAT_IMAGES, _why, layer_statistics, node_name
from exporters.triage.tflite import FEW_LAYERS, W8A16_PER_LAYER, TFLiteTriage

__all__ = ["GOALS", "SAME_SPEED", "TIME_BUDGET_S", "TIMED_ROUNDS", "Choice", "NotApplicable",
           "choose", "time_beside", "MAX_TRIALS", "Triage", "fewest", "METRICS", "STAT_IMAGES",
           "_why", "layer_statistics", "node_name", "FEW_LAYERS", "W8A16_PER_LAYER",
           "TFLiteTriage"]
