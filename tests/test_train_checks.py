"""The verdicts of tools/official_train_parity.py in mixed precision (tools/train_checks.py),
on made-up tensors: the tool itself needs the official code and is not run here."""
import sys
import types

import numpy as np
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
from train_checks import judge_by_noise, step_noise  # noqa: E402
from train_measures import relative_errors  # noqa: E402

SPEC = types.SimpleNamespace(bn=types.SimpleNamespace(momentum=0.99), image_size=(64, 64),
                             anchors=types.SimpleNamespace(max_level=3))
LIMITS = {"loss": 2e-2, "grad": 1e-1, "step": 1e-1}


def _sides(rng, bias_off=1.0, mean_off=1.0):
    """(before, official (grads, after), ours (grads, after), the official's noise run's
    (grads, statistics)): every value a separate 30 % sample around one truth."""
    def noisy(v):
        return v * (1 + 0.3 * rng.standard_normal(np.shape(v)))
    names = [f"l{i}/{kind}" for i in range(40) for kind in ("kernel", "bias", "WSM")]
    stats = [f"l{i}/bn/moving_{kind}" for i in range(40) for kind in ("mean", "variance")]
    shape = {"kernel": (3, 3, 4), "bias": (4,), "WSM": ()}
    grads = {k: rng.standard_normal(shape[k.rsplit("/", 1)[1]]) for k in names}
    before = {**{k: rng.standard_normal(np.shape(g)) for k, g in grads.items()},
              **{k: np.abs(rng.standard_normal(4)) + 0.5 for k in stats}}
    batch = {k: np.abs(rng.standard_normal(4)) + 0.5 for k in stats}

    def side(grad_x=1.0, mean_x=1.0):
        g = {k: noisy(v) * (grad_x if k.endswith("bias") else 1) for k, v in grads.items()}
        after = {k: before[k] - 0.5 * g[k] for k in g}
        for k in stats:   # variances: the same biased batch variance on both sides
            after[k] = 0.99 * before[k] + 0.01 * noisy(batch[k]) * (
                mean_x if k.endswith("mean") else 1)
        return g, after
    official, ours, again = side(), side(bias_off, mean_off), side()
    return before, official, ours, again


def _judge(before, official, ours, again):
    stats = {k: v for k, v in official[1].items() if "moving_" in k}
    run = {"moved": (None, again[0], {k: again[1][k] for k in stats})}
    fig = {p: {} for p in ("gradients", "step", "moving_mean", "moving_variance")}
    noise = relative_errors(again[0], official[0])
    judge_by_noise(fig, before, (*official, stats), ours, run, noise, LIMITS, SPEC, 2)
    return fig


def test_mixed_precision_parts_pass_when_ours_is_another_sample_of_the_noise():
    for seed in range(3):
        fig = _judge(*_sides(np.random.default_rng(seed)))
        assert all(fig[p]["ok"] for p in fig), {p: fig[p]["noise_verdict"]["kinds"] for p in fig}
        assert fig["gradients"]["noise_verdict"]["kinds"]["WSM"]["ok"] is None   # named


def test_a_wrong_bias_gradient_or_moving_mean_fails_its_parts_only():
    fig = _judge(*_sides(np.random.default_rng(0), bias_off=50.0))
    assert not fig["gradients"]["ok"] and not fig["step"]["ok"]
    assert fig["moving_mean"]["ok"] and fig["moving_variance"]["ok"]
    assert not fig["gradients"]["noise_verdict"]["kinds"]["bias"]["ok"]
    fig = _judge(*_sides(np.random.default_rng(0), mean_off=1.5))
    assert fig["gradients"]["ok"] and not fig["moving_mean"]["ok"]


def test_step_noise_is_measured_on_the_updates_scale():
    """A large gradient clipped hard and a near-zero one (a bias before batch norm) that is
    not: on the gradients' scale the small one's noise is under the floor, on the updates'
    it is not, and ours, as noisy, passes the step only when judged on the updates' scale."""
    rng = np.random.default_rng(0)
    grads = {"big/kernel": rng.standard_normal(50) * 1e4, "small/bias": rng.standard_normal(8)}
    moved = {"big/kernel": grads["big/kernel"], "small/bias": rng.standard_normal(8)}
    factor = {"big/kernel": 1e-6, "small/bias": 0.5}
    update = {k: factor[k] * g for k, g in grads.items()}
    noise = step_noise(update, grads, {"moved": (None, moved, None)})
    assert noise["small/bias"] > 0.5 and noise["big/kernel"] < 1e-9
