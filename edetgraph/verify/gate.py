"""Running the parity gate: the TF function and the exported file on the same inputs
(``edetgraph.verify.images.parity_images``), their outputs compared by a
:class:`~edetgraph.verify.parity.ParityGate`, with the float64 reference when the
tolerance asks for it."""
from __future__ import annotations

import tensorflow as tf

from edetgraph.verify.exact import ExactReference
from edetgraph.verify.images import batches, parity_images


def run_gate(gate, serve, run_file, spec, input_kind: str, batch, num_random: int,
             detections: bool, probe=None, model=None) -> dict:
    """Feed every parity batch to the TF function and the file, compare, return the result.

    ``probe(x) -> (ref, got)`` adds the detection op's inputs, compared like raw outputs.
    With ``model`` (the served detector) and a tolerance that asks for it, the compared
    tensors (raw outputs, or the probe's when there are detections) are also computed in
    float64 (:class:`~edetgraph.verify.exact.ExactReference`).
    """
    exact = None
    if model is not None and gate.tol.exact_factor and (probe is not None or not detections):
        exact = ExactReference(model, spec, input_kind, probe=detections)
    for labels, x, real in batches(parity_images(spec, input_kind, num_random), batch):
        ref = {k: v.numpy() for k, v in serve(tf.constant(x)).items()}
        got = run_file(x)
        wide = exact(x) if exact is not None else None
        if detections:
            gate.add_detections(labels, ref, got)
        else:
            gate.add_outputs(labels, ref, got, real, wide)
        if probe is not None:
            gate.add_outputs(labels, *probe(x), real, wide if detections else None)
    return gate.result()
