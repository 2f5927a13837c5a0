"""int8 TFLite files whose class and box heads stay float32 (``to_tflite --float-heads``).

Why: in swish models a few channels of the heads' activations span +-30 while most span
+-1, and one int8 scale per tensor leaves the narrow channels two or three levels (measured
on a swish demo model: full int8 lost 5.6 AP points, float heads 0.6). Bounded activations
(relu6, the Lite models) do not need this.

How: edetgraph.nn.heads traces its ops under the name scopes ``class_net/`` and ``box_net/``;
the converter's selective quantisation (the calibrated model quantised with those nodes
denylisted) keeps those ops float and quantises everything else.

The int8 triage (``exporters.triage``) tries its candidates with the same conversions, and
with :func:`convert_w8a16` (int8 weights, 16-bit activations); :func:`precisions` counts
what a file computes in which precision.
"""
from __future__ import annotations

import copy
import warnings
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from edetgraph.cli import quiet_native
from edetgraph.verify.runners import tflite_interpreter
from exporters.options import ExportFailed

HEAD_SCOPES = ("class_net/", "box_net/")  # the name scopes of edetgraph.nn.heads
BIASED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


class FloatGraph(NamedTuple):
    """A float conversion's ops in execution order, ``(op name, input tensor names, output
    tensor names)``, and the names of the file's outputs: the names the converter's
    selective quantisation (``denylisted_nodes``) knows the same ops by in an int8
    conversion."""
    ops: list
    outputs: set


def float_graph(serve, model) -> FloatGraph:
    flat = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()],
                                                          model).convert()
    return graph_of(flat)


def graph_of(flat: bytes) -> FloatGraph:
    """The :class:`FloatGraph` of a float flatbuffer (a float conversion, or an int8
    conversion's calibrated model before quantisation: the same ops under the same names)."""
    interp = tflite_interpreter(None, model_content=flat, no_delegates=True)

    def names(indices):
        return [interp._get_tensor_details(int(i), 0)["name"] for i in indices if i >= 0]

    return FloatGraph([(op["op_name"], names(op["inputs"]), names(op["outputs"]))
                       for op in interp._get_ops_details()],
                      {d["name"] for d in interp.get_output_details()})


def head_nodes(graph: FloatGraph) -> list:
    """Names of the heads' ops and of the raw outputs they produce."""
    # The predict convs' outputs are the file's outputs and carry the output names, not
    # the scope: they are the output-producing convs.
    return [out for op, _, outs in graph.ops for out in outs
            if out.startswith(HEAD_SCOPES) or (out in graph.outputs and op == "CONV_2D")]


def detection_tail_nodes(graph: FloatGraph) -> list:
    """Names of the ops that consume TFLite_Detection_PostProcess's outputs (class offset,
    padding masks, clipping, boxes as fractions of the input). They must stay float: one
    int8 scale over pixel boxes rounds them by several pixels, and classes by a third of a
    class."""
    tainted, names = set(), []
    for op, ins, outs in graph.ops:
        if op == "TFLite_Detection_PostProcess":
            tainted.update(outs)
        elif tainted.intersection(ins):
            tainted.update(outs)
            names.extend(outs)
    return names


def convert_keeping_float(converter, calibration, nodes) -> bytes:
    """The int8 conversion with ``nodes`` (float op output names) kept in float32."""
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                           tf.lite.OpsSet.TFLITE_BUILTINS]
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(nodes))
    with warnings.catch_warnings(), quiet_native():   # the quantizer's settings line
        warnings.simplefilter("ignore")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=calibration, debug_options=options)
        return debugger.get_nondebug_quantized_model()


def convert_keeping_chosen_float(converter, choose) -> tuple[bytes | None, list]:
    """The int8 conversion with the nodes ``choose(graph)`` picks kept float32, where
    ``graph`` is the :class:`FloatGraph` of the conversion's own calibrated model:
    ``(flatbuffer, nodes)``, or ``(None, [])`` when it picks none.

    What :func:`convert_keeping_float` gives for the same nodes, byte for byte (the
    calibration, then the quantizer with those nodes denylisted), without the two
    conversions that path costs besides: a float conversion only to learn the op names,
    and the QuantizationDebugger's numeric-verify model, which nothing here reads."""
    calibrated = Calibrated(converter)
    nodes = list(choose(graph_of(calibrated.model)))
    if not nodes:
        return None, []
    return calibrated.keeping_float(nodes), nodes


class Calibrated:
    """An int8 conversion's model calibrated on its representative data, before
    quantisation: quantised again with any nodes kept float32 without calibrating again."""

    def __init__(self, converter):
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                               tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.experimental_mlir_quantizer = True
        converter._experimental_calibrate_only = True   # as the QuantizationDebugger sets it
        self.per_channel_off = converter._experimental_disable_per_channel
        with warnings.catch_warnings(), quiet_native():   # the quantizer's settings line
            warnings.simplefilter("ignore")
            self.model = converter.convert()

    def keeping_float(self, nodes) -> bytes:
        """What :func:`convert_keeping_float` gives for ``nodes``, byte for byte."""
        from tensorflow.lite.python import convert as lite_convert  # private API: only here
        with warnings.catch_warnings(), quiet_native():   # the quantizer's settings line
            warnings.simplefilter("ignore")
            return lite_convert.mlir_quantize(
                self.model, disable_per_channel=self.per_channel_off, fully_quantize=False,
                enable_numeric_verify=False, denylisted_ops=None, denylisted_nodes=list(nodes))


def convert_with_float_heads(converter, also=None) -> tuple[bytes, int]:
    """Full-integer conversion except the class/box heads (and the nodes ``also(graph)``
    picks), which stay float32; ``(flatbuffer, number of head ops kept float)``."""
    heads: list = []

    def choose(graph):
        heads.extend(head_nodes(graph))
        if not heads:
            raise ExportFailed("--float-heads: found no class_net/ or box_net/ ops in the graph")
        return heads + (list(also(graph)) if also is not None else [])

    flatbuffer, _ = convert_keeping_chosen_float(converter, choose)
    return flatbuffer, len(heads)


def precisions(flatbuffer: bytes) -> dict:
    """What a quantised file computes in which precision: ``ops`` (all of its ops),
    ``float_ops`` (ops computing in float32: their outputs are float, QUANTIZE/DEQUANTIZE
    aside, which only convert), ``int16_ops`` (16-bit activations) and ``float_names`` (the
    float ops' output names, the names a float conversion gives the same ops)."""
    interp = tflite_interpreter(None, model_content=flatbuffer, no_delegates=True)
    ops = interp._get_ops_details()
    float_names, int16 = [], 0
    for op in ops:
        outs = [interp._get_tensor_details(int(i), 0) for i in op["outputs"] if i >= 0]
        if not outs or op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        if outs[0]["dtype"] == np.float32:
            float_names.append(outs[0]["name"])
        elif outs[0]["dtype"] == np.int16:
            int16 += 1
    return {"ops": len(ops), "float_ops": len(float_names), "int16_ops": int16,
            "float_names": float_names}


def convert_w8a16(float_converter, representative) -> bytes:
    """int8 weights and 16-bit activations for the whole model (the converter's 16x8 mode,
    its older quantizer); ops it has no 16-bit kernel for (DEPTH_TO_SPACE in TF 2.21) stay
    float32. ``float_converter`` converts the model in float32; ``representative`` yields
    calibration batches.

    Not the converter's own 16x8 path: that one quantises a bias shared by several convs
    (the class/box heads apply one conv to every level) with the scale of one of them, and
    the other levels' logits come out shifted by a constant (measured on a small D0: class
    outputs' RMSE/std up to 12, against 0.01 with the biases unshared). The same quantizer
    is run on the float model with each conv given its own copy of its bias."""
    from tensorflow.lite.python.optimize import calibrator  # private API: only here
    with warnings.catch_warnings(), quiet_native():   # the quantizer's settings lines
        warnings.simplefilter("ignore")
        flat = unshare_biases(float_converter.convert())
        return calibrator.Calibrator(flat).calibrate_and_quantize(
            representative, tf.float32, tf.float32, True, tf.int16, tf.int64)


def unshare_biases(flatbuffer: bytes) -> bytes:
    """The float model with every conv's bias a tensor (and buffer) of its own."""
    from tensorflow.lite.python import schema_py_generated as schema  # private module: only here
    from tensorflow.lite.tools import flatbuffer_utils  # TF tool module: only this rewrite
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    names = {getattr(schema.BuiltinOperator, n): n for n in BIASED_OPS}
    for graph in model.subgraphs:
        seen = set()
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            if max(code.builtinCode, code.deprecatedBuiltinCode) not in names or \
                    len(op.inputs) < 3 or op.inputs[2] < 0:
                continue
            bias = int(op.inputs[2])
            if bias in seen:
                tensor = copy.deepcopy(graph.tensors[bias])
                model.buffers.append(copy.deepcopy(model.buffers[tensor.buffer]))
                tensor.buffer = len(model.buffers) - 1
                tensor.name = (tensor.name.decode() if isinstance(tensor.name, bytes) else
                               tensor.name) + f"/unshared{len(graph.tensors)}"
                graph.tensors.append(tensor)
                op.inputs[2] = len(graph.tensors) - 1
            seen.add(bias)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
