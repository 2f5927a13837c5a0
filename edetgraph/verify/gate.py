"""Running the parity gate: the TF function and the exported file on the same inputs
(``edetgraph.verify.images.parity_images``), their outputs compared by a
:class:`~edetgraph.verify.parity.ParityGate`, with the float64 reference when the
tolerance asks for it, and NMS candidates when the gate has a rule to judge tied scores by."""
from __future__ import annotations

import tensorflow as tf

from edetgraph.graph import outputs
from edetgraph.task.anchors import spec_anchors
from edetgraph.task.postprocess import nms_candidates
from edetgraph.task.serving import make_serving_fn
from edetgraph.verify.detections import in_pixels
from edetgraph.verify.exact import ExactReference
from edetgraph.verify.images import batches, parity_images


class Probe:
    """More tensors the gate compares like raw outputs (e.g. the inputs of a detection op in
    the file): ``reference(raw outputs) -> dict`` computes TF's side from the raw head outputs
    (inside the gate's TF function, from the same network run), ``run_file(x) -> dict`` reads
    the file's side."""

    def __init__(self, reference, run_file):
        self.reference, self.run_file = reference, run_file


def run_gate(gate, serve, run_file, spec, input_kind: str, batch, num_random: int,
             detections: bool, probe: Probe | None = None, model=None, box_scale=None,
             head=None) -> dict:
    """Feed every parity batch to the TF function and the file, compare, return the result.

    ``serve`` is the TF function the file was converted from, ``model`` its network and
    ``head`` its post-processing. A ``probe`` adds tensors computed from the raw outputs
    (the detection op's inputs), compared like raw outputs. With ``model`` and a gate that has
    an NMS rule, the NMS candidates go with the detections, so tied scores are judged as ties.
    With either, TF's side of a batch is one call of ``serve``'s equal (the same model, head
    and input, :func:`~edetgraph.task.serving.make_serving_fn`) that also returns these, so
    the network runs once per batch. With ``model`` and a tolerance that asks for it, the
    compared tensors (raw outputs, or the probe's when there are detections) are also
    computed in float64 (:class:`~edetgraph.verify.exact.ExactReference`). ``box_scale``
    (``[h, w, h, w]``) brings boxes given as fractions of the input back to pixels, on both
    sides, before they are compared.
    """
    exact = None
    if model is not None and gate.tol.exact_factor and (probe is not None or not detections):
        exact = ExactReference(model, spec, input_kind, probe=detections)
    extras = {}
    if detections and model is not None and gate.nms is not None:
        anchors, method = spec_anchors(spec), gate.nms.method
        extras["candidates"] = lambda raw: nms_candidates(
            *outputs.split(raw, spec.levels), anchors, method)
    if probe is not None:
        extras["probe"] = probe.reference
    reference = serve
    if extras:
        if model is None:
            raise ValueError("run_gate: NMS candidates and probes need the model")
        reference = make_serving_fn(model, spec, batch, input_kind, head,
                                    extras=lambda raw: {k: f(raw) for k, f in extras.items()})
    for labels, x, real in batches(parity_images(spec, input_kind, num_random), batch):
        out = reference(tf.constant(x))
        ref, more = out if extras else (out, {})
        ref = {k: v.numpy() for k, v in ref.items()}
        got = run_file(x)
        wide = exact(x) if exact is not None else None
        if detections:
            candidates = more.get("candidates")
            if candidates is not None:
                candidates = tuple(t.numpy() for t in candidates)
            gate.add_detections(labels, in_pixels(ref, box_scale), in_pixels(got, box_scale),
                                candidates)
        else:
            gate.add_outputs(labels, ref, got, real, wide)
        if probe is not None:
            gate.add_outputs(labels, {k: v.numpy() for k, v in more["probe"].items()},
                             probe.run_file(x), real, wide if detections else None)
    return gate.result()
