"""Training settings: a YAML file (``specs/train/*.yaml``) loaded into a frozen dataclass.

Like model specs, loading checks every key against the dataclass: an unknown key, a wrong
type or an impossible value is a :class:`TrainConfigError` naming the file, the key path
and the value. ``key=value`` overrides (``--train-set steps=100``) are applied before
validation; overriding ``steps`` drops the file's ``epochs`` (and the other way round,
likewise ``warmup_steps`` / ``warmup_epochs`` and the stepwise drops). No TensorFlow here.

Keys are named as the official ``hparams_config.py`` names them, so a recipe translates key by
key; the departures: ``clip_norm`` (official ``clip_gradients_norm``), ``ema_decay``
(``moving_average_decay``), ``warmup_epochs`` (``lr_warmup_epoch``), ``epochs``
(``num_epochs``), ``focal_alpha``/``focal_gamma``/``huber_delta`` (``alpha``/``gamma``/
``delta``), ``iou_loss`` (``iou_loss_type``), ``max_instances`` (``max_instances_per_image``);
and lengths in steps are accepted wherever the official takes epochs (``steps``,
``warmup_steps``, ``first_lr_drop_step``, ``second_lr_drop_step``: the official's own derived
names). ``optimizer: adamw`` is not in the official (see `edetgraph.training.optim.Adam`).
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from edetgraph.data.synthetic.levels import DIFFICULTIES
from edetgraph.graph import schema
from edetgraph.graph.spec import SPEC_DIR

TRAIN_DIR = SPEC_DIR / "train"
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
NAN_POLICIES = ("stop", "skip")
IOU_LOSSES = ("iou", "giou", "diou", "ciou")
NMS_METHODS = ("soft", "hard", "fast")
OPTIMIZERS = ("sgd", "adam", "adamw")
LR_DECAY_METHODS = ("cosine", "stepwise", "polynomial", "constant")
# edetgraph.data.augment.AUTOAUGMENT_POLICIES (kept equal by tests/test_augment.py; that
# module imports TensorFlow). "randaug" is the official's spelling of "randaugment".
AUTOAUGMENT_POLICIES = ("v0", "v1", "v2", "v3", "randaugment", "randaug")
# Official stepwise defaults (hparams_config.py), in epochs.
FIRST_LR_DROP_EPOCH, SECOND_LR_DROP_EPOCH = 200.0, 250.0
REPLICA_REDUCTIONS = ("global", "per_replica", "per_replica_sum")


class TrainConfigError(ValueError):
    """A training-settings file that cannot be used; the message names file, key and value."""


@dataclass(frozen=True)
class SyntheticData:
    """The built-in dataset used when no --data is given (generated once, then reused)."""
    num_images: int = 1000
    seed: int = 0
    val_fraction: float = 0.2
    difficulty: str = "easy"   # easy | hard (edetgraph.data.synthetic.levels)


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
    weight_decay: float = 4e-5             # L2 loss term; adamw: var -= lr * wd * var
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
    # The official recipe's options (hparams_config.py names; see the module docstring).
    optimizer: str = "sgd"                 # sgd | adam | adamw; adam's beta_1 is `momentum`
    lr_decay_method: str = "cosine"        # cosine | stepwise | polynomial | constant
    first_lr_drop_epoch: Optional[float] = None   # stepwise: lr x0.1 from here (one of the
    first_lr_drop_step: Optional[int] = None      # two; neither: 200 epochs, official)
    second_lr_drop_epoch: Optional[float] = None  # stepwise: lr x0.01 from here (neither:
    second_lr_drop_step: Optional[int] = None     # 250 epochs, official)
    poly_lr_power: float = 0.9             # polynomial: lr = peak * (1 - progress)^power
    var_freeze_expr: Optional[str] = None  # regex, re.match'ed on variable names: not trained
    positives_momentum: Optional[float] = None  # >0: normalise the loss by a moving
    #   average of the positive count (debiased: edetgraph/training/normalizer.py)
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
    # How N replicas combine their losses and gradients (no official hparams key: the
    # official trainers hard-code their rule; see edetgraph/training/step.py):
    #   global           N replicas take exactly one device's step on the global batch
    #                    (positives counted over all replicas, gradients summed, then
    #                    clipped once);
    #   per_replica      the official TPUEstimator trainer (det_model_fn.py, which trained
    #                    the released checkpoints): each core normalises by its own
    #                    positives, its loss (weight decay included) is divided by the
    #                    number of cores, its gradient clipped alone, then summed;
    #   per_replica_sum  the official Keras trainer (tf2/train_lib.py): each core
    #                    normalises by the global batch's positives / cores, no division,
    #                    its gradient clipped alone, then summed.
    replica_reduction: str = "global"
    synthetic: SyntheticData = field(default_factory=SyntheticData)
    source: Optional[str] = None           # file it came from (set by the loader)
    # augmentation (applied in edetgraph/data)
    autoaugment_policy: Optional[str] = None   # v0 | v1 | v2 | v3 | randaug (official names)
    grid_mask: bool = False

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

    def lr_drop_steps(self, examples_per_epoch: int | None = None) -> tuple[int, int]:
        """The steps of the stepwise schedule's two drops (x0.1, then x0.01)."""
        drops = []
        for step, epoch, default in ((self.first_lr_drop_step, self.first_lr_drop_epoch,
                                      FIRST_LR_DROP_EPOCH),
                                     (self.second_lr_drop_step, self.second_lr_drop_epoch,
                                      SECOND_LR_DROP_EPOCH)):
            if step is None:   # int() as the official turns epochs into steps
                epochs = default if epoch is None else epoch
                step = int(epochs * self.steps_per_epoch(examples_per_epoch))
            drops.append(step)
        if drops[0] > drops[1]:
            raise TrainConfigError(f"{self.source or '<train config>'}: first_lr_drop_*: the "
                                   f"first drop (step {drops[0]}) comes after the second "
                                   f"(step {drops[1]})")
        return drops[0], drops[1]

    def needs_epoch_size(self) -> bool:
        """True when turning epochs into steps needs a count of the training records."""
        stepwise = self.lr_decay_method == "stepwise" and (
            self.first_lr_drop_step is None or self.second_lr_drop_step is None)
        return self.examples_per_epoch is None and (
            self.steps is None or (self.warmup_steps is None and self.warmup_epochs != 0)
            or stepwise)


def _fail(path: str, msg: str):
    raise TrainConfigError(f"{path or '<root>'}: {msg}")


def _check_finite(obj, prefix: str = "") -> None:
    """Every number a setting takes is finite (NaN passes any ``x <= 0`` test)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_finite(value, f"{prefix}{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            _fail(prefix + f.name, f"must be a finite number, got {value}")


def _check_recipe(c: TrainConfig) -> None:
    """The official recipe's options: choices, ranges, one length unit per drop."""
    for name, value, choices in (("optimizer", c.optimizer, OPTIMIZERS),
                                 ("lr_decay_method", c.lr_decay_method, LR_DECAY_METHODS),
                                 ("autoaugment_policy", c.autoaugment_policy,
                                  AUTOAUGMENT_POLICIES + (None,))):
        if value not in choices:
            _fail(name, f"{value!r} not one of {', '.join(str(x) for x in choices)}")
    for which in ("first", "second"):
        epoch, step = getattr(c, f"{which}_lr_drop_epoch"), getattr(c, f"{which}_lr_drop_step")
        if epoch is not None and step is not None:
            _fail(f"{which}_lr_drop_epoch", f"give at most one of '{which}_lr_drop_epoch' "
                  f"and '{which}_lr_drop_step'")
        for name, value in ((f"{which}_lr_drop_epoch", epoch), (f"{which}_lr_drop_step", step)):
            if value is not None and value < 0:
                _fail(name, f"must be >= 0, got {value}")
    for unit in ("epoch", "step"):
        first, second = getattr(c, f"first_lr_drop_{unit}"), getattr(c, f"second_lr_drop_{unit}")
        if first is not None and second is not None and first > second:
            _fail(f"first_lr_drop_{unit}", f"must be <= second_lr_drop_{unit}, got {first} > "
                  f"{second}")
    if not c.poly_lr_power > 0:
        _fail("poly_lr_power", f"must be positive, got {c.poly_lr_power}")
    if c.positives_momentum is not None and not 0.0 <= c.positives_momentum < 1.0:
        _fail("positives_momentum", f"must be in [0, 1) (0 or null: off), got "
              f"{c.positives_momentum}; the official's negative values (a cross-replica mean "
              "of per-replica counts) are not offered: the count is the global batch's")
    if c.var_freeze_expr is not None:
        try:
            re.compile(c.var_freeze_expr)
        except re.error as e:
            _fail("var_freeze_expr", f"{c.var_freeze_expr!r} is not a regular expression ({e})")
        if not c.var_freeze_expr:
            _fail("var_freeze_expr", "empty; use null to train every variable")


def _check(c: TrainConfig) -> None:
    _check_finite(c)
    _check_recipe(c)
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
                                 ("iou_loss", c.iou_loss, IOU_LOSSES + (None,)),
                                 ("replica_reduction", c.replica_reduction,
                                  REPLICA_REDUCTIONS)):
        if value not in choices:
            _fail(name, f"{value!r} not one of {', '.join(str(x) for x in choices)}")
    if c.positives_momentum and c.replica_reduction != "global":
        # the moving count is one variable of the global batch; per-core rules count per core
        _fail("positives_momentum", f"works with replica_reduction: global only, got "
              f"{c.replica_reduction!r}")
    if c.bn_recalibration_batches < 0:
        _fail("bn_recalibration_batches", f"must be >= 0, got {c.bn_recalibration_batches}")
    if min(c.weight_decay, c.clip_norm, c.label_smoothing, c.lr_warmup_init) < 0:
        _fail("weight_decay", "weight_decay, clip_norm, label_smoothing, lr_warmup_init must be >= 0")
    s = c.synthetic
    if s.num_images < 2 or not 0.0 < s.val_fraction < 1.0:
        _fail("synthetic", f"need num_images >= 2 and 0 < val_fraction < 1, got {s}")
    if s.difficulty not in DIFFICULTIES:
        _fail("synthetic.difficulty", f"{s.difficulty!r} not one of {', '.join(DIFFICULTIES)}")


_ALTERNATIVES = {"steps": "epochs", "epochs": "steps", "warmup_steps": "warmup_epochs",
                 "warmup_epochs": "warmup_steps",
                 "first_lr_drop_step": "first_lr_drop_epoch",
                 "first_lr_drop_epoch": "first_lr_drop_step",
                 "second_lr_drop_step": "second_lr_drop_epoch",
                 "second_lr_drop_epoch": "second_lr_drop_step"}


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
