"""EfficientNet (B0-B7) and EfficientNet-Lite (0-4) backbones in raw TF ops.

Features only (no head conv, no classifier), returned keyed by pyramid level. Variables are
named as in the released EfficientDet checkpoints: ``efficientnet-b0/blocks_3/conv2d/kernel``;
batch norms are ``tpu_batch_normalization``, ``_1``, ``_2`` in creation order, as the
official Keras layers numbered them.
"""
from __future__ import annotations

import tensorflow as tf

from edetgraph.graph import blocks as bk
from edetgraph.nn.compute import recompute as checkpointed
from edetgraph.nn.layers import (
    BatchNorm,
    Conv,
    DepthwiseConv,
    activation,
    conv_bn,
    drop_connect,
)
from edetgraph.nn.targets import DEFAULT, Target


class MBConv(tf.Module):
    """Inverted residual: [expand 1x1] -> depthwise kxk -> [squeeze-excite] -> project 1x1."""

    def __init__(self, scope: str, b: bk.Block, act: str, bn_kw: dict, survival: float,
                 seed: int = 0):
        super().__init__(name=None)
        self.b, self.act, self.survival = b, act, survival
        mid = b.mid_ch
        names = iter(["tpu_batch_normalization", "tpu_batch_normalization_1",
                      "tpu_batch_normalization_2"])
        convs = iter(["conv2d", "conv2d_1"])
        self.expand = self.bn0 = None
        if b.expand != 1:
            self.expand = Conv(f"{scope}/{next(convs)}", b.in_ch, mid, 1, seed=seed)
            self.bn0 = BatchNorm(f"{scope}/{next(names)}", mid, **bn_kw)
        self.dw = DepthwiseConv(f"{scope}/depthwise_conv2d", mid, b.kernel, b.stride, seed=seed)
        self.bn1 = BatchNorm(f"{scope}/{next(names)}", mid, **bn_kw)
        self.se_reduce = self.se_expand = None
        if b.se_ch:
            self.se_reduce = Conv(f"{scope}/se/conv2d", mid, b.se_ch, 1, bias=True, seed=seed)
            self.se_expand = Conv(f"{scope}/se/conv2d_1", b.se_ch, mid, 1, bias=True, seed=seed)
        self.project = Conv(f"{scope}/{next(convs)}", mid, b.out_ch, 1, seed=seed)
        self.bn2 = BatchNorm(f"{scope}/{next(names)}", b.out_ch, **bn_kw)

    def __call__(self, x, training: bool = False, target: Target = DEFAULT):
        groups = 1
        if not training and self.expand is not None and None not in x.shape[1:3]:
            groups = target.channel_groups(x.shape[1], x.shape[2], self.b.mid_ch)
        if groups > 1:
            y = self._chain_by_groups(x, groups)
        else:
            y = x
            if self.expand is not None:
                y = activation(conv_bn(self.expand, self.bn0, y, training), self.act, training)
            y = activation(conv_bn(self.dw, self.bn1, y, training), self.act, training)
        if self.se_reduce is not None:
            # Never one sum over the whole map (see nn.targets): exported runtimes sum in
            # their own order, and over 256x256 values that moved D0's logits by 4.8e-4.
            s = target.spatial_mean(y)
            s = self.se_expand(activation(self.se_reduce(s, training), self.act, training), training)
            y = tf.sigmoid(s) * y
        y = conv_bn(self.project, self.bn2, y, training)
        if self.b.residual:
            y = drop_connect(y, self.survival, training) + x
        return y

    def _chain_by_groups(self, x, groups: int):
        """expand -> act -> depthwise -> act for each of ``groups`` slices of the expanded
        channels in turn, concatenated: the same arithmetic for every channel, in maps small
        enough to stay in cache (``nn.targets``)."""
        (s0, o0), (s1, o1), mid = self.bn0.fold(), self.bn1.fold(), self.b.mid_ch
        parts = []
        for g in range(groups):
            c = slice(g * mid // groups, (g + 1) * mid // groups)
            y = activation(self.expand.folded(x, s0, o0, c), self.act)
            parts.append(activation(self.dw.folded(y, s1, o1, c), self.act))
        return tf.concat(parts, axis=-1)


class EfficientNet(tf.Module):
    """Stem + MBConv blocks; ``__call__`` returns ``{level: feature}`` for ``levels``."""

    def __init__(self, cfg: bk.BackboneConfig, levels: range, bn_kw: dict, seed: int = 0):
        super().__init__(name=None)
        self.cfg = cfg
        scope = cfg.name
        blist = cfg.blocks()
        self.feature_at = bk.feature_blocks(blist, levels)      # level -> block index
        last = max(self.feature_at.values())
        self.stem = Conv(f"{scope}/stem/conv2d", 3, cfg.stem_ch, 3, stride=2, seed=seed)
        self.stem_bn = BatchNorm(f"{scope}/stem/tpu_batch_normalization", cfg.stem_ch, **bn_kw)
        n = len(blist)
        # Official stochastic depth: survival falls linearly with depth to 1 - rate.
        self.blocks = [MBConv(f"{scope}/blocks_{b.index}", b, cfg.act, bn_kw,
                              1.0 - cfg.drop_connect * b.index / n, seed=seed)
                       for b in blist[: last + 1]]

    def __call__(self, images, training: bool = False, target: Target = DEFAULT,
                 recompute: bool = False) -> dict[int, tf.Tensor]:
        """``recompute``: gradient checkpointing, each block's activations recomputed in
        the backward pass (training only)."""
        x = activation(conv_bn(self.stem, self.stem_bn, images, training), self.cfg.act,
                       training)
        feats = {}
        wanted = {i: lvl for lvl, i in self.feature_at.items()}
        for blk in self.blocks:
            if recompute and training:
                x = checkpointed(lambda xs, blk=blk: [blk(xs[0], True, target)])([x])[0]
            else:
                x = blk(x, training, target)
            if blk.b.index in wanted:
                feats[wanted[blk.b.index]] = x
        return feats
