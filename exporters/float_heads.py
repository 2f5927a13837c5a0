"""int8 TFLite files whose class and box heads stay float32 (``to_tflite --float-heads``).

Why: in swish models a few channels of the heads' activations span +-30 while most span
+-1, and one int8 scale per tensor leaves the narrow channels two or three levels (measured
on a swish demo model: full int8 lost 5.6 AP points, float heads 0.6). Bounded activations
(relu6, the Lite models) do not need this.

How: edetgraph.nn.heads traces its ops under the name scopes ``class_net/`` and ``box_net/``;
the converter's selective quantisation (tf.lite's QuantizationDebugger with denylisted
nodes) keeps those ops float and quantises everything else.
"""
from __future__ import annotations

import warnings

import tensorflow as tf

from edetgraph.verify.runners import tflite_interpreter
from exporters.options import ExportFailed

HEAD_SCOPES = ("class_net/", "box_net/")  # the name scopes of edetgraph.nn.heads


def head_nodes(serve, model) -> list:
    """Names of the heads' ops in the converted graph (and of the raw outputs they produce),
    read from a float conversion of the same function."""
    flat = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()],
                                                          model).convert()
    interp = tflite_interpreter(None, model_content=flat, no_delegates=True)
    outputs = {d["name"] for d in interp.get_output_details()}
    ops = interp._get_ops_details()
    names = []
    for op in ops:
        # The predict convs' outputs are the file's outputs and carry the output names,
        # not the scope: they are the output-producing convs.
        for index in op["outputs"]:
            name = interp._get_tensor_details(index, 0)["name"]
            if name.startswith(HEAD_SCOPES) or (name in outputs and op["op_name"] == "CONV_2D"):
                names.append(name)
    return names


def convert_with_float_heads(conv, serve, model, calibration) -> tuple[bytes, int]:
    """Full-integer conversion except the class/box heads, which stay float32 (the
    converter's selective quantisation, via tf.lite's QuantizationDebugger)."""
    nodes = head_nodes(serve, model)
    if not nodes:
        raise ExportFailed("--float-heads: found no class_net/ or box_net/ ops in the graph")
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                      tf.lite.OpsSet.TFLITE_BUILTINS]
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=nodes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=conv, debug_dataset=calibration, debug_options=options)
        return debugger.get_nondebug_quantized_model(), len(nodes)
