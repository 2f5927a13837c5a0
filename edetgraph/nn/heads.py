"""Class and box heads: convs shared across levels, batch norm per level (official layout).

``class_net/class-{r}`` holds the r-th conv (shared by every level), ``class-{r}-bn-{L}``
its batch norm at level L; ``class-predict`` emits anchors x classes logits per location.
"""
from __future__ import annotations

import math

import tensorflow as tf

from edetgraph.nn.layers import (
    BatchNorm,
    Conv,
    SeparableConv,
    activation,
    conv_bn,
    drop_connect,
)


class Head(tf.Module):
    def __init__(self, scope: str, prefix: str, ch: int, outputs: int, repeats: int,
                 levels: range, act: str, separable: bool, bn_kw: dict, bias_value: float = 0.0,
                 survival: float | None = None, seed: int = 0):
        super().__init__(name=None)
        self.scope, self.act, self.levels, self.survival = scope, act, list(levels), survival

        def make(name, cout, bias_value=0.0):
            if separable:
                return SeparableConv(f"{scope}/{name}", ch, cout, 3, bias_value=bias_value,
                                     seed=seed)
            conv = Conv(f"{scope}/{name}", ch, cout, 3, bias=True, init="vs", seed=seed)
            conv.bias.assign(tf.fill([cout], float(bias_value)))
            return conv

        self.convs = [make(f"{prefix}-{r}", ch) for r in range(repeats)]
        self.bns = [[BatchNorm(f"{scope}/{prefix}-{r}-bn-{lvl}", ch, **bn_kw) for lvl in levels]
                    for r in range(repeats)]
        self.predict = make(f"{prefix}-predict", outputs, bias_value)

    def __call__(self, feats: dict[int, tf.Tensor], training=False) -> list[tf.Tensor]:
        # Traced ops are named class_net/... and box_net/...: exporters find the heads'
        # ops by these names (e.g. to keep them in float in an int8 file).
        with tf.name_scope(self.scope):
            return self._levels(feats, training)

    def _levels(self, feats, training):
        outs = []
        for li, lvl in enumerate(self.levels):
            x = feats[lvl]
            for r, conv in enumerate(self.convs):
                y = activation(conv_bn(conv, self.bns[r][li], x, training), self.act, training)
                if r > 0 and self.survival:
                    y = drop_connect(y, self.survival, training) + x
                x = y
            outs.append(self.predict(x, training))
        return outs


def class_head(spec, bn_kw, seed=0) -> Head:
    # Prior 0.01 on every class so the focal loss starts from a sane value (RetinaNet init).
    prior = -math.log((1 - 0.01) / 0.01)
    return Head("class_net", "class", spec.fpn.channels, spec.num_anchors * spec.num_classes,
                spec.head.repeats, spec.levels, spec.act, spec.head.separable, bn_kw,
                bias_value=prior, survival=_survival(spec), seed=seed)


def box_head(spec, bn_kw, seed=0) -> Head:
    return Head("box_net", "box", spec.fpn.channels, spec.num_anchors * 4, spec.head.repeats,
                spec.levels, spec.act, spec.head.separable, bn_kw, survival=_survival(spec),
                seed=seed)


def _survival(spec):
    rate = spec.head.drop_connect
    return None if not rate else 1.0 - rate
