"""Replicas: two replicas of a MirroredStrategy take the step one device takes on the global
batch (loss, applied gradients, weights, every replica's copy of the BN moving statistics,
EMA shadows), and ``replica_reduction: per_replica`` / ``per_replica_sum`` apply what the
official trainers' rule says in closed form.

The steps run in a subprocess (tests/_replica_runs.py): two logical CPUs must be set up
before TensorFlow starts, and one process holds only one MirroredStrategy's collectives.
That one subprocess also runs the suite's other 2-replica comparisons, asserted here: one
synchronised BN layer, and three steps through the real input pipeline with the recipe's
options.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edetgraph.training.config import TrainConfigError, from_dict

ROOT = Path(__file__).resolve().parent.parent
RTOL = 1e-5
CLIP = 1.0                      # _replica_runs.CLIP
KINDS = ("metric", "grad", "weight", "bn_stat", "ema")


def _load(path: Path) -> dict:
    data = np.load(path)
    runs = {"positives": data["positives"]} if "positives" in data.files else {}
    for key in data.files:
        if "|" in key:
            run, name = key.split("|", 1)
            runs.setdefault(run, {})[name] = data[key]
    return runs


@pytest.fixture(scope="module")
def all_runs(tmp_path_factory):
    """Every replica comparison of the suite, computed in one fresh interpreter
    (tests/_replica_runs.py): {"hand": runs, "spec": runs, "options": runs}."""
    out = tmp_path_factory.mktemp("replicas")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "_replica_runs.py"), str(out)],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    return {name: _load(out / f"{name}.npz") for name in ("hand", "spec", "options")}


@pytest.fixture(scope="module")
def hand(all_runs):
    """Runs on a stem conv + BN + heads model built from the real layers (seconds)."""
    return all_runs["hand"]


def mismatches(reference: dict, other: dict, rtol: float = RTOL, grad_rtol: float = RTOL) -> dict:
    """{quantity: relative error} of every quantity of `other` (each replica's copy) that is
    not within `rtol` (gradients: `grad_rtol`) of the one-device `reference`.

    The error of a tensor is its largest absolute difference over its largest absolute value,
    or over a hundredth of the largest value of its kind when that is larger: a conv bias or
    a beta followed (through linear ops) by batch norm has a true gradient of zero, which
    float32 computes as rounding noise (so do the moving means of such outputs).
    """
    scale = {kind: max(np.abs(v).max() for k, v in reference.items() if k.startswith(kind))
             for kind in KINDS if any(k.startswith(kind) for k in reference)}
    bad = {}
    for key, ref in reference.items():
        kind = key.split("/", 1)[0]
        # arrays are [replica copies, ...]; the reference has one copy, metrics none
        copies = [other[key]] if kind == "metric" else list(other[key])
        ref = np.asarray(ref if kind == "metric" else ref[0], np.float64)
        denominator = max(np.abs(ref).max(), 1e-2 * scale[kind], 1e-30)
        err = max(float(np.abs(c - ref).max()) / denominator for c in copies)
        if not err <= (grad_rtol if kind == "grad" else rtol):
            bad[key] = err
    return bad


def _kinds(runs: dict) -> dict:
    return {kind: sum(k.startswith(kind + "/") for k in runs) for kind in KINDS}


def test_the_replicas_hold_different_positive_counts(hand):
    p = hand["positives"]
    assert p[:2].sum() > 4 * p[2:].sum() > 0      # the per-core rules must differ from global


def test_two_replicas_take_the_step_of_one_device(hand):
    one, two = hand["one_global"], hand["two_global"]
    counts = _kinds(one)
    assert min(counts.values()) > 0 and counts["bn_stat"] == 4, counts
    assert two["grad/stem/conv2d/kernel"].shape[0] == 2      # both replicas' copies compared
    assert one["metric/ok"] == 1.0 and one["metric/grad_norm"] > 5 * CLIP   # clipping acted
    assert mismatches(one, two) == {}


def test_unsynchronised_batch_norm_fails_the_check(hand):
    bad = mismatches(hand["one_global"], hand["two_local_bn"])
    assert "metric/loss" in bad
    assert {k for k in bad if k.startswith("bn_stat/")} == {
        k for k in hand["one_global"] if k.startswith("bn_stat/")}


def test_per_replica_normalisation_fails_the_check(hand):
    # The loss is that of the weights before the step: clipping does not enter it.
    bad = mismatches(hand["one_global"], hand["two_per_replica_noclip"])
    assert bad["metric/loss"] > 0.1


def test_per_replica_is_the_official_rule_in_closed_form(hand):
    """With nothing clipped the official TPU trainer applies the gradient of
    ``mean_r D_r / (P_r + 1) + L2`` (batch norm over the global batch)."""
    closed, run = hand["closed_per_replica"], hand["two_per_replica_noclip"]
    assert mismatches(closed, run) == {}
    # ... and it is not the global step: another loss, other gradients
    glob = hand["one_global"]["metric/loss"]
    assert abs(closed["metric/loss"] - glob) > 0.1 * glob


def test_per_replica_sum_is_the_keras_rule(hand):
    """The Keras trainer normalises each core by the global batch's positives per core and
    sums the cores' gradients: about R times the step of one device."""
    closed, run = hand["closed_per_replica_sum"], hand["two_per_replica_sum_noclip"]
    assert mismatches(closed, run) == {}
    doubled = {k: 2 * v for k, v in hand["closed_per_replica"].items()}
    assert mismatches(doubled, run)          # not twice the TPUEstimator step: P/R, not P_r


def test_per_replica_on_one_replica_is_the_global_step(hand):
    assert mismatches(hand["one_global"], hand["one_per_replica"], rtol=1e-7) == {}


def _clip_numpy(parts, c):
    parts = [p * min(1.0, c / np.linalg.norm(p)) for p in parts]
    total = np.sqrt(sum(np.sum(p * p) for p in parts))
    return [p * min(1.0, c / total) for p in parts]


def test_each_replica_clips_alone_then_the_replicas_sum(hand):
    local, summed = hand["clip"]["clip/local"], hand["clip"]["clip/summed"]
    want = sum(np.concatenate(_clip_numpy([g[:6], g[6:]], CLIP)) for g in local)
    np.testing.assert_allclose(summed, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    clip_once = np.concatenate(_clip_numpy([local.sum(0)[:6], local.sum(0)[6:]], CLIP))
    assert not np.allclose(summed, clip_once, rtol=1e-3)     # the order matters here


def test_sync_batch_norm_equals_global_batch_statistics(hand):
    """Two replicas of a MirroredStrategy, each with half the batch, normalise with the
    statistics of the whole batch (and both move their mean by them). (Before:
    tests/test_model.py, in an interpreter of its own.)"""
    run = hand["sync_bn"]
    x, y = run["sync_bn/x"], run["sync_bn/y"]
    want = (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-3)
    assert float(np.abs(y - want).max()) < 1e-4
    moving = run["sync_bn/moving_mean"]
    assert moving.shape[0] == 2 and float(np.abs(moving - 0.5 * x.mean((0, 1, 2))).max()) < 1e-5


def test_replica_reduction_setting_is_checked():
    base = {"steps": 1}
    assert from_dict(base).replica_reduction == "global"
    assert from_dict({**base, "replica_reduction": "per_replica"}).replica_reduction == "per_replica"
    with pytest.raises(TrainConfigError, match="replica_reduction.*'mean'.*global"):
        from_dict({**base, "replica_reduction": "mean"})


@pytest.mark.slow          # about a minute of tracing per 2-replica run of the real model
def test_real_model_two_replicas_match_one_device(all_runs):
    """The smallest EfficientDet: loss, weights, BN statistics and EMA within 1e-5; its
    gradients within 5e-4, the float32 noise of this network's gradients (on one device,
    computing the BN variance in one pass instead of two moves them by up to 1e-3 of the
    tensor on the near-zero ones, 2e-6 overall). (The per-replica rule against its closed
    form: on the hand model, test_per_replica_is_the_official_rule_in_closed_form.)"""
    runs = all_runs["spec"]
    assert _kinds(runs["one_global"])["bn_stat"] > 20
    assert runs["two_global"]["grad/class_net/class-predict/bias"].shape[0] == 2
    assert mismatches(runs["one_global"], runs["two_global"], grad_rtol=5e-4) == {}


# Three steps of the smallest EfficientDet (3 classes) on one device and on two replicas,
# through the input pipeline with the recipe's options: one pair of runs for both claims.
# (Before: tests/test_train.py and tests/test_train_recipe.py, each in a fresh interpreter;
# then two pairs of runs here, one through the pipeline with plain SGD and one on a fixed
# batch with the options.)

@pytest.mark.slow
def test_two_replicas_through_the_input_pipeline_with_the_recipe_options_match_one_device(
        all_runs):
    """``distributed_input`` on synthetic TFRecords (global batch 4, jitter): each replica
    takes its slice of the same seeded global batch, so sync BN + summed gradients give the
    one-device steps; and so they do with AdamW, the moving positives normaliser and a
    frozen backbone on."""
    one, two = all_runs["options"]["options_one"], all_runs["options"]["options_two"]
    np.testing.assert_allclose(one["loss"], two["loss"], rtol=1e-4)
    weights = [k for k in one if k.startswith("var/")]
    assert len(weights) > 50 and set(weights) == {k for k in two if k.startswith("var/")}
    one = {("normalizer" if k == "normalizer" else k[4:]): v for k, v in one.items() if k != "loss"}
    two = {("normalizer" if k == "normalizer" else k[4:]): v for k, v in two.items() if k != "loss"}
    assert "normalizer" in one and set(one) == set(two)
    # A conv bias followed by batch norm has a zero gradient up to rounding, which Adam
    # scales up to +-lr whatever its sign: such biases (all but the heads' predict convs,
    # which have no BN after them), and the BN moving means they shift, differ by design.
    noise = {k for k in one if k.endswith(("/bias", "moving_mean"))
             and not k.endswith("-predict/bias")}
    assert len(noise) < len(one) / 3
    for k in sorted(set(one) - noise):   # one meaning of a step: the global batch
        np.testing.assert_allclose(one[k], two[k], rtol=1e-4, atol=1e-5, err_msg=k)
