"""The search's successive halving, seeds, collapse retries and statistics, with a stand-in
trainer that returns chosen APs (no TensorFlow, no subprocess): promotion per budget, the
family at every rung, seeds at the last rung only, a kill at every point resumed without
training anything twice, a collapsed training retried once and marked, Kendall's tau-b, and
the verdict (a clear winner, one within the noise, one the family beats)."""
import math
import random
import statistics

import pytest

from edetgraph.nas import rungs
from edetgraph.nas.rungs import Schedule, climb, collapsed, promoted, rank_agreement
from edetgraph.nas.stats import kendall_tau_b, mean_std, pooled_std, verdict


class Killed(Exception):
    """The search killed mid-run (a stand-in for SIGKILL: nothing after it runs)."""


class FakeTrainer:
    """Trains nothing: ``ap(key, steps, seed)`` is the AP a training would reach (None: the
    training fails). ``store`` plays the candidates' result.json files (a finished training
    is returned, never redone); ``calls`` lists what was trained; after ``kill_after``
    trainings the next one raises Killed."""

    def __init__(self, ap, store=None, kill_after=None):
        self.ap, self.kill_after, self.calls = ap, kill_after, []
        self.store = {} if store is None else store

    def train(self, key, label, steps, seed=None):
        if (key, steps, seed) in self.store:
            return self.store[key, steps, seed]
        if self.kill_after is not None and len(self.calls) >= self.kill_after:
            raise Killed
        self.calls.append((key, steps, seed))
        ap = self.ap(key, steps, seed)
        rec = {"ok": False, "reason": "training exited 1"} if ap is None else \
            {"ok": True, "AP": ap, "AP50": min(1.0, 2 * ap)}
        self.store[key, steps, seed] = rec
        return rec


# The cheap rung ranks a > b > c > d, the middle one c > a > b: promotion follows each rung's
# own AP. "bad" fails at every rung; the family learns slowly but steadily.
BASE = {"a": 0.50, "b": 0.45, "c": 0.40, "d": 0.30, "e": 0.20, "bad": None,
        "family-phi0": 0.35, "family-phi1": 0.42}


def _ap(key, steps, seed):
    if BASE[key] is None:
        return None
    flip = 0.2 if (key == "c" and steps >= 20) else 0.0
    return BASE[key] + flip + steps / 1000 + (seed or 0) / 10000


def _trained_at(trainer, steps):
    return sorted({k for k, s, _ in trainer.calls if s == steps})


def test_each_budget_promotes_its_best_fraction_and_the_family_climbs_every_rung():
    t = FakeTrainer(_ap)
    budgets = {"15": ["a", "b", "c", "d", "bad"], "30": ["c", "d", "e"]}
    family = ["family-phi0", "family-phi1"]
    ladder = climb(t, Schedule((10, 20, 40), promote=0.5), budgets, family)
    p = ladder["promoted"]
    assert p["15"] == {10: ["a", "b", "c", "d", "bad"], 20: ["a", "b"], 40: ["a"]}
    # c is third at 10 steps: promoted for budget 30 (3 -> 2), not for budget 15 (4 ok -> 2)
    assert p["30"] == {10: ["c", "d", "e"], 20: ["c", "d"], 40: ["c"]}
    assert _trained_at(t, 10) == sorted(["a", "b", "bad", "c", "d", "e", *family])
    assert _trained_at(t, 20) == sorted(["a", "b", "c", "d", *family])
    assert _trained_at(t, 40) == sorted(["a", "c", *family])
    assert len(t.calls) == len(set(t.calls)) == ladder["trainings"]
    a = ladder["models"]["a"]
    assert sorted(a) == [10, 20, 40] and a[40]["AP"] == pytest.approx(0.54)
    assert ladder["models"]["bad"][10] == {"ok": False, "runs": [
        {"ok": False, "seed": 0, "reason": "training exited 1"}]}
    assert rungs.reached(a) == 40 and rungs.reached(ladder["models"]["d"]) == 20
    assert rungs.reached(ladder["models"]["bad"]) is None


def test_the_rank_at_the_middle_rung_decides_the_next_promotion():
    t = FakeTrainer(_ap)
    ladder = climb(t, Schedule((10, 20, 40), promote=0.5), {"b": ["a", "b", "c", "d"]}, [])
    # at 10 steps a, b go on; at 20 c is not there to flip anything: a stays first
    assert ladder["promoted"]["b"][20] == ["a", "b"]
    t = FakeTrainer(_ap)
    ladder = climb(t, Schedule((10, 20, 40), promote=0.75), {"b": ["a", "b", "c", "d"]}, [])
    assert ladder["promoted"]["b"] == {10: ["a", "b", "c", "d"], 20: ["a", "b", "c"],
                                       40: ["c", "a", "b"]}   # c passes a at 20 steps


@pytest.mark.parametrize("fraction, n, want", [(0.5, 6, 3), (0.5, 5, 3), (0.5, 1, 1),
                                               (0.1, 30, 3), (0.01, 4, 1), (1.0, 4, 4)])
def test_how_many_are_promoted(fraction, n, want):
    keys = [f"k{i}" for i in range(n)]
    got = promoted(keys, {k: i / 100 for i, k in enumerate(keys)}, fraction)
    assert got == keys[::-1][:want]


def test_promotion_ties_are_broken_by_key_and_without_an_ap_none_goes_on():
    assert promoted(["z", "y", "x"], {"z": 0.5, "y": 0.5, "x": 0.4}, 0.5) == ["y", "z"]
    assert promoted(["a", "b"], {}, 0.5) == []


def test_seeds_at_the_last_rung_only_for_finalists_and_family():
    t = FakeTrainer(_ap)
    s = Schedule((10, 40), promote=0.5, seeds=3, base_seed=5)
    ladder = climb(t, s, {"15": ["a", "b", "c", "d"]}, ["family-phi0"])
    assert {seed for _, steps, seed in t.calls if steps == 10} == {None}
    last = [(k, seed) for k, steps, seed in t.calls if steps == 40]
    assert last == [(k, seed) for k in ("a", "b", "family-phi0") for seed in (None, 6, 7)]
    rec = ladder["models"]["a"][40]
    aps = [_ap("a", 40, seed) for seed in (None, 6, 7)]
    assert rec["n"] == 3 and [r["seed"] for r in rec["runs"]] == [5, 6, 7]
    assert rec["AP"] == pytest.approx(statistics.mean(aps), abs=1e-6)      # kept to 6 places
    assert rec["AP_std"] == pytest.approx(statistics.stdev(aps), abs=1e-6)
    assert ladder["models"]["a"][10]["AP_std"] is None        # one seed below the last rung


def _collapsing(key, steps, seed):
    """b collapses at 20 steps with the settings' seed; its retry learns."""
    if key == "b" and steps == 20 and seed is None:
        return 0.001
    return _ap(key, steps, seed)


@pytest.mark.parametrize("kill_after", range(23))
def test_a_kill_anywhere_then_the_same_call_trains_only_what_was_not_finished(kill_after):
    s = Schedule((10, 20, 40), promote=0.5, seeds=2)
    budgets, family = {"15": ["a", "b", "c", "d", "bad"], "30": ["c", "d", "e"]}, \
        ["family-phi0", "family-phi1"]
    whole = FakeTrainer(_collapsing)
    expected = climb(whole, s, budgets, family)
    assert len(whole.calls) == 23 and len(expected["retried"]) == 1   # 8 + 6 + retry + 8
    store = {}
    first = FakeTrainer(_collapsing, store, kill_after=kill_after)
    with pytest.raises(Killed):
        climb(first, s, budgets, family)
    again = FakeTrainer(_collapsing, store)
    assert climb(again, s, budgets, family) == expected
    assert not set(first.calls) & set(again.calls)
    assert first.calls + again.calls == whole.calls


def test_a_collapsed_training_is_retried_once_with_another_seed_and_marked():
    t = FakeTrainer(_collapsing)
    s = Schedule((10, 20), promote=1.0, base_seed=3)
    ladder = climb(t, s, {"15": ["a", "b", "c"]}, ["family-phi0"])
    [note] = ladder["retried"]
    assert note["key"] == "b" and note["steps"] == 20 and note["seed"] == 3
    assert note["retry_seed"] == 3 + rungs.RETRY_SEED_OFFSET and note["retry_ok"]
    assert ("b", 20, 1003) in t.calls
    rec = ladder["models"]["b"][20]
    assert rec["AP"] == pytest.approx(_ap("b", 20, 1003))       # the retry stands in, marked
    assert rec["runs"][0]["retried"] == {"seed": 3, "AP": 0.001} and rec["runs"][0]["seed"] == 1003


def test_a_retry_that_collapses_again_is_kept_and_not_retried_twice():
    def twice(key, steps, seed):
        return 0.002 if key == "b" else _ap(key, steps, seed)
    t = FakeTrainer(twice)
    ladder = climb(t, Schedule((10,)), {"15": ["a", "b", "c"]}, [])
    assert [c for c in t.calls if c[0] == "b"] == [("b", 10, None), ("b", 10, 1000)]
    assert len(ladder["retried"]) == 1 and ladder["models"]["b"][10]["AP"] == 0.002


def test_nothing_is_retried_where_the_rung_has_not_learnt_yet():
    t = FakeTrainer(lambda key, steps, seed: {"a": 0.03, "b": 0.0, "c": 0.04}[key])
    ladder = climb(t, Schedule((10,)), {"15": ["a", "b", "c"]}, [])
    assert ladder["retried"] == [] and len(t.calls) == 3


@pytest.mark.parametrize("ap, siblings, want", [
    (0.049, [0.5, 0.5], True), (0.05, [0.5, 0.5], False),     # 0.1 x the median
    (0.0, [0.04, 0.049], False),                              # the median under the floor
    (0.0, [0.0, 0.05, 0.06], True), (0.0, [], False), (0.3, [0.5, 0.4, 0.6], False)])
def test_what_counts_as_collapsed(ap, siblings, want):
    assert collapsed(ap, siblings) is want


def test_kendall_tau_b_on_hand_computed_values():
    assert kendall_tau_b([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # one pair tied in y, five concordant: 5 / sqrt(6 x 5)
    assert kendall_tau_b([1, 2, 3, 4], [1, 1, 2, 3]) == pytest.approx(5 / math.sqrt(30))
    # 4 concordant, 1 discordant, one pair tied in x: (4 - 1) / sqrt(5 x 6)
    assert kendall_tau_b([1, 1, 2, 3], [2, 1, 4, 3]) == pytest.approx(3 / math.sqrt(30))
    assert kendall_tau_b([1, 2, 3], [5, 5, 5]) is None and kendall_tau_b([1], [2]) is None
    with pytest.raises(ValueError):
        kendall_tau_b([1, 2], [1])


def test_kendall_tau_b_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    for trial in range(200):
        n = rng.randint(2, 12)
        x = [rng.randint(0, 4) for _ in range(n)]
        y = [rng.choice([0.1, 0.2, 0.25, 0.5]) for _ in range(n)]
        ours, theirs = kendall_tau_b(x, y), stats.kendalltau(x, y).statistic
        assert (ours is None and math.isnan(theirs)) or ours == pytest.approx(theirs), (x, y)


def test_rank_agreement_is_over_candidates_at_both_rungs():
    t = FakeTrainer(_ap)
    ladder = climb(t, Schedule((10, 20, 40), promote=0.75), {"b": ["a", "b", "c", "d"]},
                   ["family-phi0", "family-phi1"])
    got = rank_agreement(ladder, ["a", "b", "c", "d"], (10, 20, 40))
    assert [g["rungs"] for g in got] == [[10, 20], [10, 40], [20, 40]]
    # 10 -> 20 over a, b, c: a > b > c then c > a > b: one concordant pair of three
    assert got[0] == {"rungs": [10, 20], "n": 3, "tau_b": round(-1 / 3, 4)}
    assert got[2] == {"rungs": [20, 40], "n": 3, "tau_b": 1.0}


def test_mean_std_and_pooled_std():
    assert mean_std([0.5]) == (0.5, None)
    m, s = mean_std([0.4, 0.5, 0.6])
    assert m == pytest.approx(0.5) and s == pytest.approx(0.1)
    assert pooled_std(0.1, 3, 0.1, 3) == pytest.approx(0.1)
    assert pooled_std(0.1, 3, 0.0, 3) == pytest.approx(math.sqrt(0.005))


@pytest.mark.parametrize("mine, want, words", [
    (0.56, "better", "gain +0.0600 > 2 x pooled std 0.0200"),          # win
    (0.52, "no winner", "within the noise"),                            # tie
    (0.44, "no winner", "the family is better"),                        # loss
])
def test_the_verdict_win_tie_loss(mine, want, words):
    got = verdict({"AP": mine, "AP_std": 0.02, "n": 3}, {"AP": 0.50, "AP_std": 0.02, "n": 3})
    assert got["verdict"] == want and words in got["reason"]
    assert got["pooled_std"] == pytest.approx(0.02)


def test_one_seed_is_not_judged():
    got = verdict({"AP": 0.9, "AP_std": None, "n": 1}, {"AP": 0.1, "AP_std": None, "n": 1})
    assert got["verdict"] == "not judged" and "--seeds" in got["reason"]
