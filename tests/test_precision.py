"""Mixed precision and gradient checkpointing: a bfloat16 / float16 train step against the
float32 one from the same weights on the same batch, float32 state throughout, the float16
loss scale (growth, halving on an injected overflow, skipped step), the CPU check and its
notice, recomputed gradients equal to stored ones, and a checkpoint trained in bfloat16
exported through the float32 gate."""
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from edetgraph.graph.spec import load_spec
from edetgraph.nn.compute import Compute, recompute
from edetgraph.nn.layers import drop_connect
from edetgraph.training import precision as prec
from edetgraph.training.config import TrainConfigError, from_dict

# A D0-shaped model cut to 3 MBConv blocks, with BNs everywhere (backbone, BiFPN, heads) and
# no drop-connect (its masks are random): the fewest ops to trace.
SMALL = ["image_size=64", "num_classes=2", "backbone.name=efficientnet-mini",
         "backbone.width=1.0", "backbone.depth=1.0", "backbone.drop_connect=0.0",
         "backbone.blocks=[r1_k3_s22_e1_i8_o8_se0.25, r1_k3_s22_e2_i8_o8_se0.25, "
         "r1_k3_s22_e2_i8_o16_se0.25]", "fpn.channels=4", "fpn.repeats=1", "head.repeats=1",
         "anchors.min_level=3", "anchors.max_level=4"]
AVX2_ONLY = not prec.cpu_has_bf16()


def small_spec(*extra):
    return load_spec("d0", SMALL + list(extra))


def config(**kw):
    base = {"batch_size": 2, "steps": 5, "warmup_steps": 1, "learning_rate": 0.08,
            "ema_decay": 0.99}
    return from_dict({**base, **kw})


def _step(precision: str, batch):
    """(state, run): run(n) -> host metrics of n steps on the fixed batch."""
    from edetgraph.training.step import build_state, make_train_function
    cfg = config(precision=precision)
    state = build_state(small_spec(), cfg, cfg.steps, 1)
    fn = make_train_function(tf.distribute.get_strategy(), state, cfg)
    it = iter(tf.data.Dataset.from_tensors(batch).repeat())
    return state, lambda n=1: {k: float(v) for k, v in fn(it, tf.constant(n))[0].items()}


@pytest.fixture(scope="module")
def batch():
    from edetgraph.training.benchmark import _fixed_batch
    return _fixed_batch(small_spec(), 2)


@pytest.fixture(scope="module")
def float32_step(batch):
    """(weights, loss, weights after) of the float32 step's forward, run eagerly (the same
    loss as the train step reports: detection loss + weight decay, before the update)."""
    from edetgraph.nn.model import build_model
    from edetgraph.task.losses import (
        LossConfig,
        decayed_variables,
        detection_loss,
        weight_decay_loss,
    )
    spec, cfg = small_spec(), config()
    model = build_model(spec)         # the train state's seed: the same initial weights
    variables = model.variables_by_name()
    before = {k: v.numpy() for k, v in variables.items()}
    cls, box = model(batch["image"], training=True)
    loss = detection_loss(cls, box, batch, LossConfig(spec.num_classes), spec.levels)["det_loss"]
    loss += weight_decay_loss(decayed_variables(variables), cfg.weight_decay)
    return before, {"loss": float(loss)}, {k: v.numpy() for k, v in variables.items()}


def _assert_float32_state(state):
    dtypes = {v.dtype for v in state.variables.values()}
    dtypes |= {v.dtype for v in state.optimizer.slots.values()}
    dtypes |= {v.dtype for v in state.ema.shadows.values()}
    assert dtypes == {tf.float32}


# ---------------------------------------------------------------- no model

def test_settings_accept_precisions_and_grad_checkpoint_and_refuse_bad_values():
    c = config(precision="mixed_bfloat16", grad_checkpoint=True)
    assert prec.compute_for(c) == Compute("bfloat16", True)
    assert prec.compute_for(config()) == Compute("float32", False)
    assert prec.compute_for(config(precision="mixed_float16")).dtype == "float16"
    with pytest.raises(TrainConfigError, match="grad_checkpoint"):
        config(grad_checkpoint="yes")
    with pytest.raises(TrainConfigError, match="precision: 'bfloat16' not one of"):
        config(precision="bfloat16")
    with pytest.raises(ValueError, match="compute dtype 'int8'"):
        Compute("int8")


def test_cpu_flags_decide_the_emulation_notice(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n\nflags\t: other\n")
    avx2 = prec.cpu_flags(str(info))
    assert avx2 == {"fpu", "sse2", "avx2", "fma"}
    assert prec.cpu_flags(str(tmp_path / "absent")) == set()
    assert not prec.cpu_has_bf16(avx2) and prec.cpu_has_bf16(avx2 | {"avx512_bf16"})
    assert prec.cpu_has_bf16({"amx_bf16"}) and prec.cpu_has_fp16({"avx512_fp16"})
    line = prec.precision_notice("mixed_bfloat16", False, avx2)
    assert "no avx512_bf16/amx_bf16" in line and "emulates bfloat16" in line
    assert "still computes in bfloat16" in line and "\n" not in line
    assert "emulates float16" in prec.precision_notice("mixed_float16", False, avx2)
    assert prec.precision_notice("float32", False, avx2) is None
    assert prec.precision_notice("mixed_bfloat16", True, avx2) is None          # GPU / TPU
    assert prec.precision_notice("mixed_bfloat16", False, {"avx512_bf16"}) is None


def test_loss_scale_doubles_after_growth_steps_and_halves_down_to_one():
    ls = prec.LossScale(initial=8.0, growth_steps=3)
    strategy = tf.distribute.get_strategy()

    def after(*finite):
        for f in finite:
            ls.update(strategy, tf.constant(f))
        return float(ls.scale.numpy()), int(ls.good_steps.numpy())

    assert after(True, True) == (8.0, 2)
    assert after(True) == (16.0, 0)            # the 3rd finite step in a row doubles it
    assert after(True, False) == (8.0, 0)      # an overflow halves it and restarts the count
    assert after(False, False, False, False) == (1.0, 0)    # never below 1
    assert after(True, True, True) == (2.0, 0)


def test_recompute_replays_drop_connect_masks_and_gives_their_gradient():
    x = tf.random.normal([64, 2, 2, 3]) + 3.0     # never 0: y != 0 exactly where kept
    w = tf.Variable(tf.random.normal([3]))

    def f(xs):
        return [drop_connect(xs[0] * w, 0.5, True)]

    @tf.function
    def grads():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = recompute(f)([x])[0]
        gx, gw = tape.gradient(y, [x, w])
        return y, gx, gw

    y, gx, gw = grads()
    kept = tf.cast(tf.not_equal(y, 0.0), tf.float32)
    assert 0 < float(tf.reduce_mean(kept)) < 1
    np.testing.assert_allclose(gx, kept * w / 0.5, rtol=1e-6)   # the forward's own mask
    np.testing.assert_allclose(gw, tf.reduce_sum(kept * x / 0.5, [0, 1, 2]), rtol=1e-5)


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16])
def test_a_16_bit_conv_bias_gradient_is_summed_in_float32(dtype):
    """A conv bias before a batch norm has a zero true gradient. Its gradient, the output
    gradient summed over batch and space, must be that sum in float32 (TensorFlow's CPU
    BiasAddGrad sums bfloat16 in bfloat16: 16.5 for a float32 sum of 0.24 here)."""
    from edetgraph.nn.layers import BatchNorm, Conv
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, 64, 64, 32)), dtype)
    r = tf.constant(rng.normal(size=(2, 64, 64, 48)), tf.float32)
    conv, bn = Conv("c", 32, 48, 1, bias=True), BatchNorm("c/bn", 48)

    @tf.function
    def grads():
        with tf.GradientTape() as tape:
            y = conv(x, True)
            tape.watch(y)
            loss = tf.reduce_sum(tf.cast(tf.nn.swish(bn(y, True)), tf.float32) * r)
        return tape.gradient(loss, [conv.bias, y])

    bias_grad, dy = grads()
    assert bias_grad.dtype == tf.float32
    dy = tf.cast(dy, tf.float64)
    want = tf.reduce_sum(dy, [0, 1, 2])
    # float32 summation: within 1e-5 of each channel's sum of magnitudes (about 4000 here)
    np.testing.assert_allclose(bias_grad, want,
                               atol=1e-5 * float(tf.reduce_max(tf.reduce_sum(tf.abs(dy), [0, 1, 2]))))
    assert float(tf.reduce_max(tf.abs(bias_grad))) < 1.0      # not the 16-bit sum's ~16


# ---------------------------------------------------------------- one train step

def test_bfloat16_step_matches_float32_and_keeps_float32_state(batch, float32_step):
    # Runs on any CPU: without avx512_bf16/amx_bf16 TensorFlow emulates bfloat16 (slower).
    before32, out32, after32 = float32_step
    state, run = _step("mixed_bfloat16", batch)
    for k, v in state.variables.items():
        np.testing.assert_array_equal(v.numpy(), before32[k], err_msg=k)   # same weights
    out = run()
    assert out["ok"] == 1.0 and out["loss"] == pytest.approx(out32["loss"], rel=1e-2)
    _assert_float32_state(state)
    moving = [k for k in state.variables if k.endswith("moving_mean")]
    assert moving and all(not np.array_equal(state.variables[k].numpy(), before32[k])
                          for k in moving)         # updated in float32 by the bf16 step
    for k in moving:
        np.testing.assert_allclose(state.variables[k].numpy(), after32[k], rtol=0.05, atol=2e-3)
    # Really computed in bfloat16 (not silently float32), outputs handed back in float32.
    feats = state.model.backbone(tf.cast(batch["image"], tf.bfloat16), True)
    assert {f.dtype for f in feats.values()} == {tf.bfloat16}
    cls, box = state.model(batch["image"], training=True)
    assert {t.dtype for t in cls + box} == {tf.float32}


def test_float16_loss_scale_skips_an_overflowed_step_then_grows(batch, float32_step):
    _, out32, _ = float32_step
    state, run = _step("mixed_float16", batch)
    ls = state.loss_scale
    name = "class_net/class-predict/bias"
    ls.scale.assign(2.0 ** 100)          # inject an overflow: the float16 backward gives inf
    w0 = state.variables[name].numpy()
    out = run()
    assert out["loss"] == pytest.approx(out32["loss"], rel=1e-2)
    assert out["ok"] == 1.0 and not np.isfinite(out["grad_norm"])   # not a NaN/Inf stop
    assert float(ls.scale.numpy()) == 2.0 ** 99 and int(state.step.numpy()) == 1
    np.testing.assert_array_equal(state.variables[name].numpy(), w0)   # the step skipped
    ls.scale.assign(4.0)
    ls.good_steps.assign(prec.GROWTH_STEPS - 1)
    out = run()
    assert out["ok"] == 1.0 and np.isfinite(out["grad_norm"]) and out["loss_scale"] == 4.0
    assert float(ls.scale.numpy()) == 8.0 and int(ls.good_steps.numpy()) == 0    # grown
    assert not np.array_equal(state.variables[name].numpy(), w0)
    _assert_float32_state(state)
    assert ls.scale.dtype == tf.float32


# ---------------------------------------------------------------- gradient checkpointing

def test_grad_checkpoint_gives_the_same_gradients_and_bn_updates(batch):
    from edetgraph.nn.model import build_model
    from edetgraph.task.losses import LossConfig, detection_loss
    spec = small_spec()
    results = []
    for flag in (False, True):
        model = build_model(spec, seed=3, compute=Compute(recompute=flag))
        names = sorted(k for k, v in model.variables_by_name().items() if v.trainable)
        tvars = [model.variables_by_name()[k] for k in names]

        # Eager (a fraction of the tracing time); graph mode is what the drop-connect
        # test above and tools/train_memory.py exercise.
        def grads():
            with tf.GradientTape() as tape:
                cls, box = model(batch["image"], training=True)
                loss = detection_loss(cls, box, batch, LossConfig(2), spec.levels)["det_loss"]
            return loss, tape.gradient(loss, tvars)

        loss, g = grads()
        stats = {k: v.numpy() for k, v in model.variables_by_name().items() if "moving" in k}
        results.append((float(loss), dict(zip(names, g)), stats))
    (l0, g0, s0), (l1, g1, s1) = results
    assert l0 == pytest.approx(l1, rel=1e-6)
    assert len(g0) > 50 and all(g is not None for g in g1.values())
    for k in g0:
        np.testing.assert_allclose(g1[k], g0[k], rtol=1e-4, atol=1e-6, err_msg=k)
    for k in s0:          # updated once, not again by the recomputation
        np.testing.assert_allclose(s1[k], s0[k], rtol=1e-6, atol=1e-7, err_msg=k)


# ---------------------------------------------------------------- checkpoint and export

@pytest.mark.slow
def test_checkpoint_trained_in_bfloat16_exports_through_the_float32_gate(tmp_path):
    from edetgraph.data.synthetic import generate, write_tfrecords
    from edetgraph.training.trainer import train
    from exporters import to_onnx
    summary = generate(tmp_path / "data", 4, 64, seed=3, val_fraction=0.25, num_classes=2)
    write_tfrecords(summary)
    lines = []
    cfg = config(steps=1, checkpoint_every_minutes=None, max_instances=10, jitter_min=0.8,
                 jitter_max=1.2)
    result = train(small_spec(), cfg, tmp_path / "run", data=str(
        tmp_path / "data" / "tfrecord" / "train-*.tfrecord"), precision="mixed_bfloat16",
        log=lines.append)
    assert result.step == 1
    if AVX2_ONLY:
        assert any("emulates bfloat16" in line for line in lines)
    saved = (tmp_path / "run" / "train_config.yaml").read_text()
    assert "precision: mixed_bfloat16" in saved
    reader = tf.train.load_checkpoint(result.checkpoint)
    kinds = {reader.get_variable_to_dtype_map()[k] for k in reader.get_variable_to_shape_map()
             if k.startswith(("variables/", "ema/"))}
    assert kinds == {tf.float32}           # nothing in the file says bfloat16
    out = tmp_path / "bf16.onnx"
    args = ["--spec", "d0", *[a for o in SMALL for a in ("--set", o)], "--ckpt",
            result.checkpoint, "--out", str(out), "--float64-factor", "0",
            "--random-inputs", "0"]
    assert to_onnx.main(args) == 0
    report = json.loads(Path(str(out) + ".json").read_text())
    assert report["parity"]["passed"] and out.exists()
