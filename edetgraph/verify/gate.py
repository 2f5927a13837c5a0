"""Running the parity gate: the TF function and the exported file on the same inputs
(``edetgraph.verify.images.parity_images``), their outputs compared by a
:class:`~edetgraph.verify.parity.ParityGate`, with the float64 reference when the
tolerance asks for it, and NMS candidates when the gate has a rule to judge tied scores by."""
from __future__ import annotations

import tensorflow as tf

from edetgraph.graph import outputs
from edetgraph.task.anchors import spec_anchors
from edetgraph.task.postprocess import nms_candidates
from edetgraph.task.preprocess import normalize_in_graph
from edetgraph.verify.detections import in_pixels
from edetgraph.verify.exact import ExactReference
from edetgraph.verify.images import batches, parity_images


def candidates_fn(model, spec, input_kind: str, method: str):
    """``f(x) -> (boxes, scores, by_class)``: what TF's in-graph NMS (``method``) chooses
    from on the exported input ``x`` (:func:`~edetgraph.task.postprocess.nms_candidates`)."""
    h, w = spec.image_size
    dtype = tf.uint8 if input_kind == "uint8" else tf.float32
    anchors = spec_anchors(spec)

    @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], dtype)], autograph=False)
    def run(images):
        x = normalize_in_graph(images, spec) if input_kind == "uint8" else images
        cls, box = outputs.split(model.raw_outputs(x), spec.levels)
        return nms_candidates(cls, box, anchors, method)

    return lambda x: tuple(t.numpy() for t in run(tf.constant(x)))


def run_gate(gate, serve, run_file, spec, input_kind: str, batch, num_random: int,
             detections: bool, probe=None, model=None, box_scale=None) -> dict:
    """Feed every parity batch to the TF function and the file, compare, return the result.

    ``probe(x) -> (ref, got)`` adds the detection op's inputs, compared like raw outputs.
    With ``model`` (the served detector) and a tolerance that asks for it, the compared
    tensors (raw outputs, or the probe's when there are detections) are also computed in
    float64 (:class:`~edetgraph.verify.exact.ExactReference`); with ``model`` and a gate
    that has an NMS rule, the NMS candidates go with the detections, so tied scores are
    judged as ties. ``box_scale`` (``[h, w, h, w]``) brings boxes given as fractions of the
    input back to pixels, on both sides, before they are compared.
    """
    exact = None
    if model is not None and gate.tol.exact_factor and (probe is not None or not detections):
        exact = ExactReference(model, spec, input_kind, probe=detections)
    candidates = None
    if detections and model is not None and gate.nms is not None:
        candidates = candidates_fn(model, spec, input_kind, gate.nms.method)
    for labels, x, real in batches(parity_images(spec, input_kind, num_random), batch):
        ref = {k: v.numpy() for k, v in serve(tf.constant(x)).items()}
        got = run_file(x)
        wide = exact(x) if exact is not None else None
        if detections:
            gate.add_detections(labels, in_pixels(ref, box_scale), in_pixels(got, box_scale),
                                candidates(x) if candidates else None)
        else:
            gate.add_outputs(labels, ref, got, real, wide)
        if probe is not None:
            gate.add_outputs(labels, *probe(x), real, wide if detections else None)
    return gate.result()
