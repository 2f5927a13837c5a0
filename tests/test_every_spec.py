"""Every spec the registry lists (the official models, the demo, the topology zoo, any file
added under specs/) is built and run: its IR checks out, the TF model it lowers to has
exactly the parameters the cost model counts, and a forward pass gives the documented
outputs. There is no list to edit: a new spec file is tested by being there."""
import numpy as np
import pytest

import edetgraph
from edetgraph.graph import ir, outputs
from edetgraph.graph.spec import list_specs

# Backbones of B4 and up, and Lite3/4: seconds to build each, so only in the full run.
BIG = {"d4", "d5", "d6", "d7", "d7x", "lite3", "lite3x", "lite4"}
SPECS = list_specs()


def test_the_registry_lists_every_kind_of_spec():
    assert {"d0", "d7x", "lite0", "lite3x", "demo", "topologies/bifpn",
            "topologies/example_custom"} <= set(SPECS)
    assert not any(name.startswith("train/") for name in SPECS)


def _small(name):
    """The spec at the smallest size its top level allows (a 2x2 P_max), or its own if
    smaller."""
    spec = edetgraph.load_spec(name)
    size = 2 ** spec.max_level * 2
    if max(spec.image_size) <= size:
        return spec
    return edetgraph.load_spec(name, [f"image_size={size}"])


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n
                                  for n in SPECS])
def test_every_spec_builds_runs_and_agrees_with_the_cost_model(name):
    import tensorflow as tf
    spec = _small(name)
    g = edetgraph.build_ir(spec)
    ir.check(g)
    model = edetgraph.build_model(spec)
    cost = edetgraph.model_cost(spec, g).total
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == cost.params_trainable
    assert sum(int(np.prod(v.shape)) for v in model.variables) == cost.params_total
    # Two pictures, so that a batch size baked into some node shows; one where the smallest
    # size is 512 px (D7x, whose nodes D7 runs at batch 2): a second would double its forward.
    batch = 2 if max(spec.image_size) < 512 else 1
    x = tf.random.stateless_normal([batch, *spec.image_size, 3], [0, 1])
    out = model.raw_outputs(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == outputs.shapes(spec, batch=batch)
    assert all(np.isfinite(v.numpy()).all() for v in out.values())
