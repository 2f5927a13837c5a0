"""The functions that exported files are converted from: a static-shape ``tf.function``
from images to raw head outputs (or to in-graph post-processing), and the inputs of
TFLite's detection op. Exporters convert them; the benchmark and the parity gate run them
as the TF reference of a file.
"""
from __future__ import annotations

import tensorflow as tf

from edetgraph.graph import outputs
from edetgraph.task.postprocess import flatten_outputs
from edetgraph.task.preprocess import normalize_in_graph


def detection_op_inputs(raw: dict, spec) -> dict:
    """Raw outputs -> what TFLite_Detection_PostProcess takes: ``box_encodings`` (flattened
    box codes) and ``class_scores`` (sigmoid of the flattened logits)."""
    cls, box = flatten_outputs(*outputs.split(raw, spec.levels), spec.num_classes)
    return {"box_encodings": box, "class_scores": tf.sigmoid(cls)}


def make_serving_fn(model, spec, batch, input_kind: str, head=None, target: str | None = None,
                    extras=None):
    """The function that is converted: ``images -> dict``, a static-shape ``tf.function``.

    ``batch`` None makes the batch dimension dynamic; ``input_kind`` uint8 normalises inside;
    ``head(raw_outputs) -> dict`` adds in-graph post-processing (None: raw head outputs);
    ``target`` writes the network in the op forms of that runtime (``edetgraph.nn.targets``;
    None: TensorFlow's, the reference every file is compared with). ``extras(raw_outputs)``
    makes it return ``(outputs, extras)``: more tensors from the same network run (the
    parity gate's NMS candidates and probes, so that it runs the network once per input).
    """
    h, w = spec.image_size
    dtype = tf.uint8 if input_kind == "uint8" else tf.float32
    signature = [tf.TensorSpec([batch, h, w, 3], dtype, name="images")]

    @tf.function(input_signature=signature, autograph=False)
    def serve(images):
        x = normalize_in_graph(images, spec) if input_kind == "uint8" else images
        raw = model.raw_outputs(x, target=target)
        out = head(raw) if head is not None else raw
        return out if extras is None else (out, extras(raw))

    return serve
