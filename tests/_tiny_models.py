"""Tiny .onnx / .tflite models for the bench tests, built from one tf.function.

The net is a 3x3 stride-2 conv + bias + relu6 feeding two 1x1 conv heads, so it
has two named outputs of different widths (``boxes``: 4 channels, ``scores``: 5)
like a detector head, static shapes, and converts in well under a second.
Weights are fixed numbers from a seeded generator, so every file written here
computes exactly the function returned by :func:`tiny_function`.

This module imports TensorFlow and tf2onnx; only tests that make models use it.
"""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf2onnx

INPUT_NAME = "images"
INPUT_SHAPE = (1, 16, 16, 3)
OUTPUT_NAMES = ("boxes", "scores")  # the order every runner must return


def sample_input(seed: int = 0) -> np.ndarray:
    """An input drawn like the representative data the int8 files were calibrated on."""
    return np.random.default_rng(seed).uniform(0.0, 1.0, INPUT_SHAPE).astype(np.float32)


def tiny_function() -> tf.types.experimental.PolymorphicFunction:
    """The reference tf.function: images [1,16,16,3] -> {'boxes', 'scores'}."""
    rng = np.random.default_rng(1234)
    # numpy arrays, not eager tensors: used inside the function they become Const
    # ops, whereas captured eager tensors would turn into extra graph inputs in ONNX.
    w1 = rng.normal(0.0, 0.4, (3, 3, 3, 8)).astype(np.float32)
    b1 = rng.normal(0.0, 0.1, (8,)).astype(np.float32)
    w_box = rng.normal(0.0, 0.4, (1, 1, 8, 4)).astype(np.float32)
    w_cls = rng.normal(0.0, 0.4, (1, 1, 8, 5)).astype(np.float32)
    spec = tf.TensorSpec(INPUT_SHAPE, tf.float32, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def tiny(images):
        h = tf.nn.relu6(tf.nn.conv2d(images, w1, 2, "SAME") + b1)
        return {"boxes": tf.nn.conv2d(h, w_box, 1, "SAME"),
                "scores": tf.nn.conv2d(h, w_cls, 1, "SAME")}

    return tiny


def _representative(n: int = 32):
    for i in range(n):
        yield [sample_input(1000 + i)]


def _to_tflite(fn, quant_dtype=None) -> bytes:
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    if quant_dtype is not None:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = _representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = quant_dtype
        conv.inference_output_type = quant_dtype
    with warnings.catch_warnings():  # "statistics for quantized inputs were expected": they
        warnings.simplefilter("ignore")  # come from the representative dataset instead
        return conv.convert()


def write_tiny_models(directory) -> dict:
    """Write the tiny model in every tested format; returns {variant: Path}.

    Variants: ``onnx`` (tf2onnx, opset 17), ``tflite`` (fp32), ``tflite_int8`` and
    ``tflite_uint8`` (full-integer, int8/uint8 inputs and outputs).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fn = tiny_function()
    paths = {"onnx": directory / "tiny.onnx"}
    tf2onnx.convert.from_function(
        fn, input_signature=fn.input_signature, opset=17, output_path=str(paths["onnx"]))
    for variant, stem, qtype in (("tflite", "tiny_fp32", None),
                                 ("tflite_int8", "tiny_int8", tf.int8),
                                 ("tflite_uint8", "tiny_uint8", tf.uint8)):
        paths[variant] = directory / f"{stem}.tflite"
        paths[variant].write_bytes(_to_tflite(fn, qtype))
    return paths


def reference_outputs(x: np.ndarray) -> dict:
    """The tf.function's outputs for ``x`` as numpy, in OUTPUT_NAMES order."""
    out = tiny_function()(tf.constant(x))
    return {name: out[name].numpy() for name in OUTPUT_NAMES}


# Run as `python -c BLOCKING_BOOTSTRAP SCRIPT ARGS...`: makes importing any top-level
# package named in $BLOCK_MODULES (comma-separated) fail with ImportError, runs SCRIPT
# as __main__, and at exit writes to $BLOCK_LOG which blocked imports were attempted and
# which blocked modules ended up loaded anyway (a test expects both lists empty).
BLOCKING_BOOTSTRAP = r'''
import atexit, json, os, runpy, sys
blocked = tuple(os.environ["BLOCK_MODULES"].split(","))
attempts = []
class BlockImports:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            attempts.append(name)
            raise ImportError(f"import of {name} is blocked in this test")
        return None
sys.meta_path.insert(0, BlockImports())
def report():
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in blocked)
    with open(os.environ["BLOCK_LOG"], "w") as f:
        json.dump({"attempts": attempts, "loaded": loaded}, f)
atexit.register(report)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def run_blocked(script, args, blocked, log_path, cwd=None, timeout=120):
    """Run ``script`` with ``blocked`` packages unimportable; returns (CompletedProcess, log)."""
    env = dict(os.environ, BLOCK_MODULES=",".join(blocked), BLOCK_LOG=str(log_path))
    proc = subprocess.run([sys.executable, "-c", BLOCKING_BOOTSTRAP, str(script), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    log = json.loads(Path(log_path).read_text()) if Path(log_path).exists() else None
    return proc, log
