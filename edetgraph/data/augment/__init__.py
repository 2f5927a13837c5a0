"""The official EfficientDet training augmentations beyond flip and scale jitter.

    options = Augmentation(autoaugment_policy="v0", grid_mask=True)
    image, boxes = augment(image_uint8, boxes_normalised_yxyx, options, seed)

As the official dataloader: on the decoded uint8 image and its normalised boxes, after
the crowd boxes are dropped and before normalisation, flip and scale jitter; GridMask
first, then the AutoAugment policy. Training only. Randomness is stateless, drawn from
the example's seed, so a seeded pipeline gives the same pictures on every run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import tensorflow as tf

from edetgraph.data.augment.gridmask import grid_mask as _grid_mask
from edetgraph.data.augment.policies import POLICIES, autoaugment, randaugment
from edetgraph.data.augment.rng import Rng

# "randaug" is the official's spelling (its dataloader tests for it); both mean RandAugment.
AUTOAUGMENT_POLICIES = tuple(POLICIES) + ("randaugment", "randaug")


@dataclass(frozen=True)
class Augmentation:
    """The augmentation settings, named as the official hparams name them."""
    autoaugment_policy: Optional[str] = None   # v0, v1, v2, v3, randaugment (or randaug)
    grid_mask: bool = False

    def __post_init__(self):
        if self.autoaugment_policy not in AUTOAUGMENT_POLICIES + (None,):
            raise ValueError(f"autoaugment_policy: {self.autoaugment_policy!r} not one of "
                             f"{', '.join(AUTOAUGMENT_POLICIES)}")

    @property
    def active(self) -> bool:
        return self.autoaugment_policy is not None or self.grid_mask


# Written with explicit tf.cond / tf.while_loop: autograph (which tf.data would run over
# every op of every policy) only costs tracing time here.
@tf.autograph.experimental.do_not_convert
def augment(image, boxes, options: Augmentation, seed):
    """GridMask and the AutoAugment policy of `options` on one example.

    image: uint8 [h, w, 3]; boxes: float32 [n, 4] normalised yxyx (as many boxes come out,
    in the same order, so their classes still apply); seed: a stateless seed [2]."""
    rng = Rng(seed)
    image = tf.convert_to_tensor(image)
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
    if options.grid_mask:
        image, boxes = _grid_mask(image, boxes, rng.fold(1))
    policy = options.autoaugment_policy
    if policy in ("randaugment", "randaug"):
        image, boxes = randaugment(image, boxes, rng.fold(2))
    elif policy is not None:
        image, boxes = autoaugment(image, boxes, policy, rng.fold(2))
    return image, boxes
