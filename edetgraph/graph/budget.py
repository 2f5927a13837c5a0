"""What a model would cost before anything is allocated: parameters and activation memory
from the cost model, checked against the limits of ``edetgraph.limits``.

``--set fpn.channels=10000000`` is a valid spec (2e15 parameters), and so is
``image_size=100000``; building either would exhaust the machine long before it failed.
:func:`check_budget` refuses them with one line that says how big the model is and which
environment variable raises the limit. No TensorFlow: it costs a millisecond or two.
"""
from __future__ import annotations

from edetgraph.graph.cost import Cost, model_cost
from edetgraph.graph.spec import SpecError
from edetgraph.limits import human_bytes, limit, override_hint


def check_budget(spec, g=None) -> Cost:
    """The spec's total cost; SpecError when its parameters or its activation memory (one
    image, float32) pass the limits. ``g``: its IR when already built."""
    total = model_cost(spec, g).total
    where = spec.source or spec.name
    params = limit("params")
    if total.params_total > params:
        raise SpecError(f"{where}: {total.params_total:.3g} parameters, more than the "
                        f"{params:.3g} allowed ({override_hint('params')})")
    memory = limit("activation_bytes")
    if total.activation_bytes > memory:
        h, w = spec.image_size
        raise SpecError(f"{where}: {human_bytes(total.activation_bytes)} of activations per "
                        f"{h}x{w} image, more than the {human_bytes(memory)} allowed "
                        f"({override_hint('activation_bytes')})")
    return total
