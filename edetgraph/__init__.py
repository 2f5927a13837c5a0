"""edetgraph: EfficientDet-family detectors built from YAML specs, as a compiler builds a
program: spec -> networkx graph (checked, costed) -> TensorFlow ops -> checked exports.

    import edetgraph
    spec = edetgraph.load_spec("d0")               # validated spec (no TensorFlow)
    g = edetgraph.build_ir(spec)                   # its feature network, a networkx DAG
    cost = edetgraph.model_cost(spec)              # params and FLOPs per component
    model = edetgraph.build_model(spec)            # raw TF ops, variables named as released
    edetgraph.load_checkpoint("efficientdet-d0.tar.gz", model.variables_by_name())
    det = edetgraph.Detector.from_spec(spec, ckpt="efficientdet-d0.tar.gz")
    det.detect([edetgraph.read_image("street.jpg").numpy()])

The names of the graph layer import without TensorFlow; the others load it on first use.
docs/architecture.md maps the package.
"""
from __future__ import annotations

import importlib

# public name -> the module that defines it
_API = {
    "ModelSpec": "edetgraph.graph.spec",
    "SpecError": "edetgraph.graph.spec",
    "load_spec": "edetgraph.graph.spec",
    "list_specs": "edetgraph.graph.spec",
    "build_ir": "edetgraph.graph.build",
    "model_cost": "edetgraph.graph.cost",
    "compound": "edetgraph.graph.scaling",
    "DetectionModel": "edetgraph.nn.model",
    "build_model": "edetgraph.nn.model",
    "CheckpointError": "edetgraph.checkpoints.archive",
    "load_checkpoint": "edetgraph.checkpoints.checkpoint",
    "Detector": "edetgraph.task.detector",
    "read_image": "edetgraph.task.preprocess",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'edetgraph' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value        # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
