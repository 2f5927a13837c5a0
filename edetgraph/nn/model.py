"""The detection network: backbone -> feature network (lowered IR) -> class and box heads.

The network returns raw per-level head outputs only; anchors, losses, decoding and NMS live
beside it (``anchors``, ``losses``, ``postprocess``), never inside it.
"""
from __future__ import annotations

import networkx as nx
import tensorflow as tf

from edetgraph.graph import outputs
from edetgraph.graph.budget import check_budget
from edetgraph.graph.build import build_ir
from edetgraph.nn import targets
from edetgraph.nn.backbone import EfficientNet
from edetgraph.nn.compute import FLOAT32, Compute
from edetgraph.nn.heads import box_head, class_head
from edetgraph.nn.lowering import FeatureNetwork


class DetectionModel(tf.Module):
    """EfficientDet-style detector built from a ModelSpec; variables named as the official
    checkpoints name them.

    ``model(images)`` takes normalised NHWC float images of the spec's size and returns
    ``(class_outputs, box_outputs)``: lists over levels min..max of ``[B, H, W, A*C]`` and
    ``[B, H, W, A*4]``. A spec whose parameters or activation memory pass the limits
    (``edetgraph.graph.budget``) is a SpecError before any variable exists.

    ``compute`` (``edetgraph.nn.compute``) is how it runs, not what it is: the activations'
    dtype (the images are cast to it, the head outputs come back float32) and gradient
    checkpointing in training. Variables are float32 whatever it says.
    """

    def __init__(self, spec, graph: nx.DiGraph | None = None, seed: int = 0,
                 compute: Compute = FLOAT32):
        super().__init__(name=None)
        self.spec = spec
        self.compute = compute
        self.graph = graph if graph is not None else build_ir(spec)
        check_budget(spec, self.graph)  # SpecError before the first variable is allocated
        bn_kw = {"momentum": spec.bn.momentum, "epsilon": spec.bn.epsilon}
        cfg = spec.backbone_config()
        backbone_levels = sorted(d["level"] for _, d in self.graph.nodes(data=True)
                                 if d["op"] == "input")
        self.backbone = EfficientNet(cfg, range(backbone_levels[0], backbone_levels[-1] + 1),
                                     bn_kw, seed=seed)
        self.fpn = FeatureNetwork(self.graph, bn_kw, seed=seed)
        self.class_net = class_head(spec, bn_kw, seed=seed)
        self.box_net = box_head(spec, bn_kw, seed=seed)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        h, w = self.spec.image_size
        return (h, w, 3)

    def output_shapes(self, batch: int = 1) -> dict[str, tuple[int, ...]]:
        """Documented shapes of every raw output, keyed ``cls_l3`` ... ``box_l7``."""
        return outputs.shapes(self.spec, batch)

    def __call__(self, images, training: bool = False, target: str | None = None):
        forms = targets.get(target)
        recompute = self.compute.recompute and training
        mixed = self.compute.dtype != "float32"     # float32: the graph exactly as it was
        if mixed:
            images = tf.cast(images, self.compute.tf_dtype)
        feats = self.backbone(images, training, forms, recompute)
        feats = self.fpn(feats, training, forms, recompute)
        cls, box = self.class_net(feats, training), self.box_net(feats, training)
        if mixed:   # the losses (and any caller) get float32 outputs
            cls, box = [tf.cast(c, tf.float32) for c in cls], [tf.cast(b, tf.float32) for b in box]
        return cls, box

    def raw_outputs(self, images, training: bool = False,
                    target: str | None = None) -> dict[str, tf.Tensor]:
        """The head outputs as a dict ``cls_l{L}`` / ``box_l{L}`` (the export signature);
        ``target`` picks the op forms of a runtime (``edetgraph.nn.targets``)."""
        cls, box = self(images, training, target)
        return outputs.as_dict(self.spec.levels, cls, box)

    def variables_by_name(self) -> dict[str, tf.Variable]:
        """Every variable keyed by its checkpoint name (no ``:0``)."""
        out = {}
        for v in self.variables:
            name = v.name[:-2] if v.name.endswith(":0") else v.name
            if name in out:
                raise RuntimeError(f"two variables are named {name!r}")
            out[name] = v
        return out


def build_model(spec, seed: int = 0, compute: Compute = FLOAT32) -> DetectionModel:
    """Build (and create every variable of) the detector described by ``spec``; ``compute``
    is how it runs (``edetgraph.nn.compute``)."""
    return DetectionModel(spec, seed=seed, compute=compute)
