"""The exact reference of the fp32 parity gate: the TF model run in float64.

TF's float32 result is itself rounded: every conv sums hundreds of products in some order,
and a deep network carries and amplifies that rounding. Measured on random weights, TF
float32 is up to 1e-4 away from the same network computed in float64 on Lite0, 4e-4 on
Lite1 and 7e-4 on Lite2 (3e-5 on D0). A float32 file summing in another order lands as far
away on the other side, so "file within 1e-4 of TF" can fail for a file that is exactly as
accurate as TF. The float64 copy settles it: it says how far TF and the file each are from
the value both approximate (``edetgraph.verify.parity`` uses it when the flat bound is exceeded).

The copy has the same weights, cast exactly to float64, and sees the same input as the TF
float32 function (uint8 images are normalised in float32 first, as in the exported graph),
so its difference from TF float32 is the float32 network arithmetic alone.
"""
from __future__ import annotations

import copy

import numpy as np
import tensorflow as tf

from edetgraph.task.preprocess import normalize_in_graph
from edetgraph.task.serving import detection_op_inputs


def float64_copy(model):
    """A deep copy of ``model`` whose every variable is a float64 copy of the original's.

    The original is left untouched. Variables shared between modules stay shared. Raises
    RuntimeError if a float32 variable is left (a container this walk does not know).
    """
    twin = copy.deepcopy(model)
    done = {}

    def widen(value):
        if isinstance(value, tf.Variable):
            if id(value) not in done:
                done[id(value)] = tf.Variable(tf.cast(value, tf.float64), trainable=False,
                                              name=value.name.split(":")[0])
            return done[id(value)]
        if isinstance(value, list):
            return [widen(v) for v in value]
        if isinstance(value, tuple):
            return tuple(widen(v) for v in value)
        if isinstance(value, dict):
            return {k: widen(v) for k, v in value.items()}
        return value

    for module in [twin, *twin.submodules]:
        for attr, value in list(vars(module).items()):
            if not isinstance(value, tf.Module):
                object.__setattr__(module, attr, widen(value))
    left = [v.name for v in twin.variables if v.dtype != tf.float64]
    if left:
        raise RuntimeError(f"float64 copy: {len(left)} variable(s) still {left[0]}")
    return twin


class ExactReference:
    """``ref(x) -> {name: float64 array}``: the raw head outputs (``probe=False``) or the
    detection op's inputs ``box_encodings`` / ``class_scores`` (``probe=True``), computed in
    float64 by a :func:`float64_copy` of ``model`` on the input the exported function gets
    (``input_kind`` float: normalised images; uint8: pixels, normalised in float32 first)."""

    def __init__(self, model, spec, input_kind: str = "float", probe: bool = False):
        twin = float64_copy(model)
        h, w = spec.image_size
        dtype = tf.uint8 if input_kind == "uint8" else tf.float32

        @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], dtype)], autograph=False)
        def run(images):
            x = normalize_in_graph(images, spec) if input_kind == "uint8" else images
            raw = twin.raw_outputs(tf.cast(x, tf.float64))
            return detection_op_inputs(raw, spec) if probe else raw

        self._run, self._dtype = run, dtype.as_numpy_dtype

    def __call__(self, x) -> dict:
        return {k: v.numpy() for k, v in self._run(np.asarray(x, self._dtype)).items()}
