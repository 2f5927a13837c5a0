"""The official recipe's training options: every settings file loads, bad values are one
line naming the key, the lr schedules and Adam/AdamW against their closed forms, frozen
variables, the moving loss normaliser, and the options plumbed through a short run."""
import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from edetgraph.training.config import (
    TRAIN_DIR,
    TrainConfigError,
    from_dict,
    load_train_config,
)
from edetgraph.training.normalizer import MovingNormalizer
from edetgraph.training.optim import Adam, frozen_names
from edetgraph.training.schedule import make_schedule

# The smallest EfficientDet the spec allows: backbone, BiFPN cells and heads all present,
# which is all the option tests need; every trace is cheaper.
TINY = ["image_size=64", "num_classes=3", "backbone.width=0.1", "backbone.depth=0.1",
        "fpn.channels=4", "fpn.repeats=1", "head.repeats=0", "anchors.min_level=3",
        "anchors.max_level=4"]


# ---------------------------------------------------------------- settings files and checks

@pytest.mark.parametrize("path", sorted(TRAIN_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_settings_file_loads(path):
    config = load_train_config(path)
    assert config.total_steps(1000) > 0 and config.warmup(1000) >= 0


def test_official_recipes():
    default, d0, d7 = (load_train_config(n) for n in ("default", "d0_coco", "d7_coco"))
    # d0_coco writes the stepwise drops out (the official 200/250 epochs); default leaves
    # them to the same defaults: otherwise the two files must say the same.
    assert d0.lr_drop_steps() == default.lr_drop_steps() == (375000, 468750)
    bare = dataclasses.replace(d0, first_lr_drop_epoch=None, second_lr_drop_epoch=None)
    assert dataclasses.replace(bare, source=None) == dataclasses.replace(default, source=None)
    assert d7.epochs == 600 and dataclasses.replace(d7, epochs=300, source=None) == \
        dataclasses.replace(d0, source=None)
    fine = load_train_config("finetune_custom")
    assert fine.var_freeze_expr and fine.epochs and fine.examples_per_epoch is None
    assert fine.needs_epoch_size()


BASE = {"batch_size": 8, "steps": 100}
BAD = [
    ("poly_lr_power", math.nan), ("poly_lr_power", 0.0), ("poly_lr_power", -1.0),
    ("positives_momentum", math.nan), ("positives_momentum", math.inf),
    ("positives_momentum", 1.0), ("positives_momentum", -1.0),
    ("first_lr_drop_epoch", math.nan), ("first_lr_drop_epoch", -1.0),
    ("second_lr_drop_epoch", math.inf), ("first_lr_drop_step", -5),
    ("learning_rate", math.nan), ("momentum", math.nan), ("weight_decay", math.inf),
    ("ema_decay", math.nan), ("clip_norm", -math.inf), ("jitter_max", math.inf),
    ("optimizer", "rmsprop"), ("lr_decay_method", "exponential"),
    ("autoaugment_policy", "v9"), ("var_freeze_expr", "(efficientnet"),
    ("var_freeze_expr", ""), ("grid_mask", 1),
]


@pytest.mark.parametrize("key,value", BAD, ids=[f"{k}={v!r}" for k, v in BAD])
def test_bad_values_are_one_line_naming_the_key(key, value):
    with pytest.raises(TrainConfigError) as err:
        from_dict({**BASE, key: value}, source="r.yaml")
    msg = str(err.value)
    assert msg.startswith(f"r.yaml: {key}:") and "\n" not in msg


def test_nested_nan_and_unit_clashes_are_refused():
    with pytest.raises(TrainConfigError, match=r"synthetic\.val_fraction: (must be|expected) a finite"):
        from_dict({**BASE, "synthetic": {"val_fraction": math.nan}})
    with pytest.raises(TrainConfigError, match="at most one of 'first_lr_drop_epoch'"):
        from_dict({**BASE, "first_lr_drop_epoch": 2.0, "first_lr_drop_step": 5})
    with pytest.raises(TrainConfigError, match="first_lr_drop_step: must be <= second"):
        from_dict({**BASE, "first_lr_drop_step": 50, "second_lr_drop_step": 40})
    mixed = from_dict({**BASE, "first_lr_drop_epoch": 2.0, "second_lr_drop_step": 10})
    with pytest.raises(TrainConfigError, match=r"first drop \(step 16\) comes after"):
        mixed.lr_drop_steps(64)          # 8 steps per epoch: 2 epochs = step 16 > 10


def test_accepted_values_and_overrides():
    c = from_dict({**BASE, "optimizer": "adamw", "lr_decay_method": "stepwise",
                   "first_lr_drop_epoch": 1.5, "second_lr_drop_epoch": 2.0,
                   "positives_momentum": 0.9, "var_freeze_expr": "efficientnet",
                   "autoaugment_policy": "randaug", "grid_mask": True})
    assert c.lr_drop_steps(80) == (15, 20) and c.needs_epoch_size()
    # overriding a drop in steps replaces the file's drop in epochs (as steps/epochs do)
    c = from_dict({"batch_size": 8, "steps": 100, "first_lr_drop_epoch": 1.0},
                  overrides=["first_lr_drop_step=7", "second_lr_drop_step=9"])
    assert c.first_lr_drop_epoch is None and c.lr_drop_steps() == (7, 9)
    assert not from_dict({**BASE, "warmup_steps": 1}).needs_epoch_size()   # default: cosine
    assert from_dict({**BASE, "positives_momentum": 0.0}).positives_momentum == 0.0


# ---------------------------------------------------------------- schedules

def _sched(**kw):
    c = from_dict({"batch_size": 64, "learning_rate": 0.08, "lr_warmup_init": 0.008,
                   "steps": 110, "warmup_steps": 10, **kw})
    return make_schedule(c, c.warmup(), c.total_steps())


def _check_values(schedule, want):
    for step, value in want.items():
        assert schedule.value(step) == pytest.approx(value, abs=1e-9), step
        assert float(schedule(tf.constant(step))) == pytest.approx(value, abs=1e-6), step


def test_schedules_against_closed_forms():
    warm = {0: 0.008, 5: 0.044}
    _check_values(_sched(), {**warm, 10: 0.08, 60: 0.04, 110: 0.0})
    _check_values(_sched(lr_decay_method="stepwise", first_lr_drop_step=50,
                         second_lr_drop_step=80),
                  {**warm, 10: 0.08, 49: 0.08, 50: 0.008, 79: 0.008, 80: 0.0008, 110: 0.0008})
    poly = _sched(lr_decay_method="polynomial", poly_lr_power=0.9)
    _check_values(poly, {**warm, 10: 0.08, 110: 0.0, 200: 0.0,
                         35: 0.08 * 0.75 ** 0.9, 85: 0.08 * 0.25 ** 0.9})
    _check_values(_sched(lr_decay_method="constant"), {**warm, 10: 0.08, 110: 0.08})
    # no warm-up: the decay from step 0 (the official constant: the peak throughout)
    _check_values(_sched(lr_decay_method="constant", warmup_steps=0), {0: 0.08, 50: 0.08})


def test_stepwise_drops_given_in_epochs():
    c = from_dict({"batch_size": 10, "learning_rate": 0.64, "epochs": 30, "warmup_epochs": 1,
                   "lr_decay_method": "stepwise", "first_lr_drop_epoch": 20,
                   "second_lr_drop_epoch": 25})
    s = make_schedule(c, c.warmup(100), c.total_steps(100), 100)   # 10 steps per epoch
    assert (s.first_drop, s.second_drop, s.total_steps) == (200, 250, 300)
    _check_values(s, {199: 0.1, 200: 0.01, 250: 0.001})


# ---------------------------------------------------------------- Adam / AdamW arithmetic

def _run_steps(opt, w, steps):
    strategy = tf.distribute.get_strategy()

    @tf.function
    def step(g, lr, ok):
        def replica(g):
            glr, betas = opt.gates(lr, ok)
            tf.distribute.get_replica_context().merge_call(
                lambda strat, g, glr, betas: opt.apply(strat, [g], glr, betas, ok),
                args=(g, glr, betas))
        strategy.run(replica, args=(g,))

    for g, lr, ok in steps:
        step(tf.constant(g, tf.float32), tf.constant(lr), tf.constant(ok))
    return w.numpy()


@pytest.mark.parametrize("decay", [0.0, 0.1], ids=["adam", "adamw"])
def test_adam_and_adamw_match_the_closed_form(decay):
    w0 = np.array([1.0, -2.0, 0.5])
    w = tf.Variable(w0, dtype=tf.float32)
    opt = Adam({"w": w}, beta_1=0.8, weight_decay=decay, decayed=["w"])
    steps = [([0.5, 1.0, -3.0], 0.1, True), ([-1.0, 2.0, 0.0], 0.05, True),
             ([np.nan, 1.0, 1.0], 0.2, False), ([3.0, 3.0, 1e-3], 0.2, True)]
    got = _run_steps(opt, w, steps)
    # the kernel takes the betas as float32: 1 - beta_2 is then 1.0e-3 * (1 - 1.3e-5)
    b1, b2, eps = (float(np.float32(x)) for x in (0.8, 0.999, 1e-7))
    ref, m, v, t = w0.copy(), np.zeros(3), np.zeros(3), 0
    for g, lr, ok in steps:
        if not ok:                     # a skipped step moves nothing, counts nothing
            continue
        t += 1
        g = np.array(g)
        ref = ref * (1 - lr * decay)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        ref = ref - lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    np.testing.assert_allclose(opt.m["w"].numpy(), m, rtol=1e-5)
    np.testing.assert_allclose(opt.v["w"].numpy(), v, rtol=1e-5)
    assert int(opt.iterations.numpy()) == 3 and set(opt.slots) == {"w/Adam", "w/Adam_1",
                                                                   "iterations"}


def test_moving_normalizer_is_the_debiased_average():
    norm = MovingNormalizer(0.9)
    strategy = tf.distribute.get_strategy()

    @tf.function
    def step(n, ok):
        def replica(n):
            value, biased = norm.average(n)
            tf.distribute.get_replica_context().merge_call(
                lambda strat, b: norm.apply(strat, b, ok), args=(biased,))
            return value
        return strategy.run(replica, args=(n,))

    biased, t = 0.0, 0
    for n, ok in [(11.0, True), (3.0, True), (1e9, False), (40.0, True), (1.0, True)]:
        got = float(step(tf.constant(n), tf.constant(ok)))
        new = 0.9 * biased + 0.1 * n
        assert got == pytest.approx(new / (1 - 0.9 ** (t + 1)), rel=1e-6)
        if ok:
            biased, t = new, t + 1
    assert float(norm.biased.numpy()) == pytest.approx(biased, rel=1e-6)
    assert int(norm.count.numpy()) == t == 4


def test_var_freeze_expr_matching_nothing_or_everything_is_one_line():
    variables = {"efficientnet-b0/stem/conv2d/kernel": tf.Variable([1.0]),
                 "box_net/box-predict/bias": tf.Variable([1.0]),
                 "box_net/bn/moving_mean": tf.Variable([1.0], trainable=False)}
    assert frozen_names(variables, "efficientnet") == {"efficientnet-b0/stem/conv2d/kernel"}
    assert frozen_names(variables, None) == set()
    for expr, what in (("stem", "no"), (".*kernel:0$", "no"), (".*", "every")):
        with pytest.raises(TrainConfigError) as err:
            frozen_names(variables, expr, "f.yaml")
        msg = str(err.value)
        assert msg.startswith(f"f.yaml: var_freeze_expr: {expr!r} matches {what} trainable")
        assert "\n" not in msg


# ---------------------------------------------------------------- the options in a train step

def _fixed_state(**settings):
    from edetgraph.graph.spec import load_spec
    from edetgraph.training.benchmark import _fixed_batch
    from edetgraph.training.step import build_state, make_train_function
    spec = load_spec("d0", TINY)
    config = from_dict({"batch_size": 2, "steps": 4, "warmup_steps": 1, "learning_rate": 0.4,
                        "seed": 1, **settings})
    state = build_state(spec, config, config.steps, 1)
    state.ema.reset()                    # as the trainer does after init / a weight load
    fn = make_train_function(tf.distribute.get_strategy(), state, config)
    batch = _fixed_batch(spec, 2)
    it = iter(tf.data.Dataset.from_tensors(batch).repeat())
    return state, batch, lambda: {k: float(v) for k, v in fn(it, tf.constant(1))[0].items()}


def test_frozen_variables_and_moving_normalizer_in_the_step():
    state, batch, run = _fixed_state(var_freeze_expr="(efficientnet|fpn_cells)",
                                     positives_momentum=0.8, weight_decay=1e-3)
    before = {k: v.numpy().copy() for k, v in state.variables.items()}
    frozen = {k for k, v in state.variables.items()
              if v.trainable and k.startswith(("efficientnet", "fpn_cells"))}
    kernels = [k for k in before if k.endswith("kernel") and k not in frozen]
    want_l2 = 1e-3 * sum(0.5 * float(np.sum(before[k].astype(np.float64) ** 2))
                         for k in kernels)
    out = run()
    assert out["ok"] == 1.0 and out["reg_l2_loss"] == pytest.approx(want_l2, rel=1e-5)
    out = run()
    after = {k: v.numpy() for k, v in state.variables.items()}
    assert frozen and all(np.array_equal(before[k], after[k]) for k in frozen)
    moved = [k for k in before if state.variables[k].trainable and k not in frozen]
    assert all(not np.array_equal(before[k], after[k]) for k in moved if k.endswith("kernel"))
    shadows = state.ema.values()
    assert all(np.array_equal(shadows[k].numpy(), before[k]) for k in frozen)
    assert not np.array_equal(shadows[kernels[0]].numpy(), before[kernels[0]])
    # BN statistics are not trainable: they follow the batches even in frozen layers
    assert not np.array_equal(before["efficientnet-b0/stem/tpu_batch_normalization/moving_mean"],
                              after["efficientnet-b0/stem/tpu_batch_normalization/moving_mean"])
    n = float(np.sum(batch["num_positives"])) + 1.0       # the same batch twice
    biased = 0.2 * n + 0.8 * (0.2 * n)
    assert float(state.normalizer.biased.numpy()) == pytest.approx(biased, rel=1e-6)
    assert int(state.normalizer.count.numpy()) == 2


def test_options_run_and_checkpoint_through_the_trainer(tmp_path):
    from edetgraph.data.synthetic import generate, write_tfrecords
    from edetgraph.graph.spec import load_spec
    from edetgraph.training.trainer import TrainError, train
    summary = generate(tmp_path / "data", 6, 64, seed=3, val_fraction=0.34, num_classes=3)
    write_tfrecords(summary)
    data = str(tmp_path / "data" / "tfrecord" / "train-*.tfrecord")
    spec = load_spec("d0", TINY)
    base = {"batch_size": 2, "warmup_steps": 1, "learning_rate": 0.1, "max_instances": 10,
            "checkpoint_every_minutes": None, "log_every_steps": 1, "seed": 1}
    with pytest.raises(TrainError) as err:
        train(spec, from_dict({**base, "steps": 2, "var_freeze_expr": "nothing_here"}),
              tmp_path / "bad", data=data, log=lambda m: None)
    assert "var_freeze_expr: 'nothing_here' matches no" in str(err.value)
    assert "\n" not in str(err.value)
    config = from_dict({**base, "epochs": 2, "optimizer": "adamw", "weight_decay": 0.01,
                        "lr_decay_method": "stepwise", "first_lr_drop_epoch": 1.0,
                        "second_lr_drop_epoch": 1.5, "positives_momentum": 0.9,
                        "var_freeze_expr": "efficientnet"})
    result = train(spec, config, tmp_path / "run", data=data, log=lambda m: None)
    assert result.step == result.total_steps == 4      # 4 records, batch 2, 2 epochs
    lr = {h["step"]: h["lr"] for h in result.history}   # logged after the step it drove
    peak = 0.1 * 2 / 64                                  # 2 steps per epoch: drops at 2, 3
    assert (lr[3], lr[4]) == (pytest.approx(peak * 0.1), pytest.approx(peak * 0.01))
    keys = tf.train.load_checkpoint(result.checkpoint).get_variable_to_shape_map()
    assert any(k.startswith("adam/") and "Adam_1" in k for k in keys)
    assert any(k.startswith("moving_normalizer/") for k in keys)
    assert not any(k.startswith("momentum/") for k in keys)


# Two replicas of a MirroredStrategy with these options against one device:
# tests/test_replicas.py::test_two_replicas_match_one_device_with_the_recipe_options (every
# 2-replica comparison of the suite runs there, in one fresh interpreter).
