"""Training settings: a YAML file (``specs/train/*.yaml``) loaded into a frozen dataclass.

Like model specs, loading checks every key against the dataclass: an unknown key, a wrong
type or an impossible value is a :class:`TrainConfigError` naming the file, the key path
and the value. ``key=value`` overrides (``--train-set steps=100``) are applied before
validation; overriding ``steps`` drops the file's ``epochs`` (and the other way round,
likewise ``warmup_steps`` / ``warmup_epochs``). No TensorFlow here.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from edetgraph.graph import schema
from edetgraph.graph.spec import SPEC_DIR

TRAIN_DIR = SPEC_DIR / "train"
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
NAN_POLICIES = ("stop", "skip")
IOU_LOSSES = ("iou", "giou", "diou", "ciou")
NMS_METHODS = ("soft", "hard", "fast")


class TrainConfigError(ValueError):
    """A training-settings file that cannot be used; the message names file, key and value."""


@dataclass(frozen=True)
class SyntheticData:
    """The built-in dataset used when no --data is given (generated once, then reused)."""
    num_images: int = 1000
    seed: int = 0
    val_fraction: float = 0.2


@dataclass(frozen=True)
class TrainConfig:
    """Every training setting; defaults are the official EfficientDet values."""
    batch_size: int = 64                   # global, over all replicas
    learning_rate: float = 0.08            # for 64 images; scaled linearly with batch_size
    lr_warmup_init: float = 0.008
    warmup_epochs: Optional[float] = None  # give at most one of the two warm-up lengths;
    warmup_steps: Optional[int] = None     # neither: 1 epoch (official)
    epochs: Optional[float] = None         # give exactly one of epochs / steps
    steps: Optional[int] = None
    examples_per_epoch: Optional[int] = None   # None: count the training records
    momentum: float = 0.9
    weight_decay: float = 4e-5
    clip_norm: float = 10.0                # 0 disables clipping
    ema_decay: float = 0.9998              # 0 disables the moving average
    jitter_min: float = 0.1
    jitter_max: float = 2.0
    max_instances: int = 100
    shuffle_buffer: int = 64
    label_smoothing: float = 0.0
    focal_alpha: float = 0.25
    focal_gamma: float = 1.5
    huber_delta: float = 0.1
    box_loss_weight: float = 50.0
    iou_loss: Optional[str] = None         # iou | giou | diou | ciou: added to the Huber term
    iou_loss_weight: float = 1.0
    checkpoint_every_steps: Optional[int] = None
    checkpoint_every_minutes: Optional[float] = 10.0
    keep_checkpoints: int = 5
    checkpoint_input: bool = True          # save the input iterator's position too
    eval_every_steps: Optional[int] = None  # None: evaluate once at the end (if val data)
    eval_batch_size: int = 8
    eval_nms: str = "soft"
    log_every_steps: int = 100
    steps_per_call: int = 1                # train steps per host call (TPU: 100 or more)
    nan_policy: str = "stop"
    seed: Optional[int] = None
    precision: str = "float32"            # float32 | mixed_bfloat16 | mixed_float16
    grad_checkpoint: bool = False          # recompute backbone/BiFPN activations in backward
    jit_compile: Optional[bool] = None     # None: on for TPU, off on CPU/GPU
    bn_recalibration_batches: int = 0      # >0: precise BN over that many training batches
    synthetic: SyntheticData = field(default_factory=SyntheticData)
    source: Optional[str] = None           # file it came from (set by the loader)

    def scaled_learning_rate(self) -> float:
        """The peak learning rate for this batch size (linear scaling from 64 images)."""
        return self.learning_rate * self.batch_size / 64.0

    def steps_per_epoch(self, examples_per_epoch: int | None) -> float:
        n = self.examples_per_epoch or examples_per_epoch
        if not n:
            raise TrainConfigError(f"{self.source or '<train config>'}: epochs need "
                                   "examples_per_epoch (or countable training data)")
        return n / self.batch_size

    def total_steps(self, examples_per_epoch: int | None = None) -> int:
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * self.steps_per_epoch(examples_per_epoch)))

    def warmup(self, examples_per_epoch: int | None = None) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        epochs = 1.0 if self.warmup_epochs is None else self.warmup_epochs
        return int(epochs * self.steps_per_epoch(examples_per_epoch)) if epochs else 0

    def needs_epoch_size(self) -> bool:
        """True when turning epochs into steps needs a count of the training records."""
        return self.examples_per_epoch is None and (
            self.steps is None or (self.warmup_steps is None and self.warmup_epochs != 0))


def _fail(path: str, msg: str):
    raise TrainConfigError(f"{path or '<root>'}: {msg}")


def _check(c: TrainConfig) -> None:
    positive = ("batch_size", "learning_rate", "keep_checkpoints", "log_every_steps",
                "steps_per_call", "max_instances", "eval_batch_size", "shuffle_buffer")
    for name in positive:
        if getattr(c, name) <= 0:
            _fail(name, f"must be positive, got {getattr(c, name)}")
    for name in ("steps", "warmup_steps", "checkpoint_every_steps", "eval_every_steps",
                 "examples_per_epoch", "epochs", "checkpoint_every_minutes"):
        value = getattr(c, name)
        if value is not None and value < (0 if name.startswith("warmup") else 1e-12):
            _fail(name, f"must be positive, got {value}")
    if (c.epochs is None) == (c.steps is None):
        _fail("epochs", "give exactly one of 'epochs' and 'steps'")
    if c.warmup_epochs is not None and c.warmup_steps is not None:
        _fail("warmup_epochs", "give at most one of 'warmup_epochs' and 'warmup_steps'")
    if c.warmup_epochs is not None and c.warmup_epochs < 0:
        _fail("warmup_epochs", f"must be >= 0, got {c.warmup_epochs}")
    if not 0.0 <= c.ema_decay < 1.0:
        _fail("ema_decay", f"must be in [0, 1), got {c.ema_decay}")
    if not 0.0 <= c.momentum < 1.0:
        _fail("momentum", f"must be in [0, 1), got {c.momentum}")
    if not 0.0 < c.jitter_min <= c.jitter_max:
        _fail("jitter_min", f"need 0 < jitter_min <= jitter_max, got {c.jitter_min}, {c.jitter_max}")
    for name, value, choices in (("nan_policy", c.nan_policy, NAN_POLICIES),
                                 ("precision", c.precision, PRECISIONS),
                                 ("eval_nms", c.eval_nms, NMS_METHODS),
                                 ("iou_loss", c.iou_loss, IOU_LOSSES + (None,))):
        if value not in choices:
            _fail(name, f"{value!r} not one of {', '.join(str(x) for x in choices)}")
    if c.bn_recalibration_batches < 0:
        _fail("bn_recalibration_batches", f"must be >= 0, got {c.bn_recalibration_batches}")
    if min(c.weight_decay, c.clip_norm, c.label_smoothing, c.lr_warmup_init) < 0:
        _fail("weight_decay", "weight_decay, clip_norm, label_smoothing, lr_warmup_init must be >= 0")
    s = c.synthetic
    if s.num_images < 2 or not 0.0 < s.val_fraction < 1.0:
        _fail("synthetic", f"need num_images >= 2 and 0 < val_fraction < 1, got {s}")


_ALTERNATIVES = {"steps": "epochs", "epochs": "steps", "warmup_steps": "warmup_epochs",
                 "warmup_epochs": "warmup_steps"}


def _drop_alternatives(data: dict, overrides) -> dict:
    """An override of steps (epochs, warmup_*) replaces the file's other length setting."""
    keys = {o.partition("=")[0].strip() for o in overrides}
    return {k: v for k, v in data.items()
            if not (k in _ALTERNATIVES and _ALTERNATIVES[k] in keys and k not in keys)}


def from_dict(data: Any, source: str | None = None, overrides=()) -> TrainConfig:
    """Validate raw settings (a mapping as YAML gives it), overrides applied first."""
    where = source or "<train config>"
    try:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise TrainConfigError(f"<root>: expected a mapping, got {type(data).__name__}")
        data = schema.apply_overrides(_drop_alternatives(data, overrides), overrides,
                                      TrainConfigError)
        config = schema.build(TrainConfig, data, "", TrainConfigError)
        _check(config)
    except TrainConfigError as e:
        raise TrainConfigError(f"{where}: {e}") from None
    return dataclasses.replace(config, source=source)


def resolve_path(name_or_path) -> Path:
    """A settings file path, or a bare name in ``specs/train/`` (``demo`` -> ``demo.yaml``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    cand = TRAIN_DIR / f"{name_or_path}.yaml"
    if cand.is_file():
        return cand
    known = ", ".join(sorted(q.stem for q in TRAIN_DIR.glob("*.yaml")))
    raise TrainConfigError(f"{name_or_path}: no such training-settings file (built-in: {known})")


def load_train_config(name_or_path="default", overrides=()) -> TrainConfig:
    """Load and validate a training-settings file (or a built-in one by name)."""
    path = resolve_path(name_or_path)
    data = schema.read_yaml(path, TrainConfigError)
    return from_dict(data, source=str(path), overrides=overrides)
