"""Successive halving over training length: every trained candidate starts at the first
rung (the fewest steps), the best fraction of each budget's is trained again, longer, at the
next, and the last rung trains its candidates and the family with several seeds.

Each rung trains from scratch (its own folder per rung and seed, docs/search.md says why), so
a training's result depends on its candidate, steps and seed only. Nothing here is stored
but those results: a rerun after a kill asks the trainer again for every training, gets the
finished ones back at once, and so takes the same decisions (collapses, retries, promotions)
from the same numbers. The trainer is anything with ``train(key, label, steps, seed) ->
{"ok", "AP", "AP50", ...}`` (``seed`` None: the training settings' own), returning a
finished result without training again: tests give a stand-in with chosen APs.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from edetgraph.nas.common import say
from edetgraph.nas.stats import kendall_tau_b, mean_std

# A training collapsed when its AP is below COLLAPSE_RATIO x the median AP of the other
# trainings at its rung while that median is at least COLLAPSE_FLOOR (the others learnt:
# without a floor, a rung where nothing has learnt yet would retry at random).
COLLAPSE_RATIO = 0.1
COLLAPSE_FLOOR = 0.05
# A retry's seed is the collapsed training's plus this (the seeds proper are base .. base +
# seeds - 1, and --seeds is at most MAX_SEEDS, so the two never meet).
RETRY_SEED_OFFSET = 1000
MAX_SEEDS = 100


@dataclass(frozen=True)
class Schedule:
    """The rungs' steps (increasing), the fraction of each budget's candidates promoted from
    one rung to the next, the seeds at the last rung and the training settings' own seed."""
    rungs: tuple[int, ...]
    promote: float = 0.5
    seeds: int = 1
    base_seed: int = 0

    def seeds_at(self, rung: int) -> list[int | None]:
        """Seeds trained at rung index ``rung``: the settings' own (None) everywhere, and at
        the last rung base + 1 .. base + seeds - 1 besides."""
        extra = self.seeds - 1 if rung == len(self.rungs) - 1 else 0
        return [None] + [self.base_seed + i for i in range(1, extra + 1)]

    def retry_seed(self, seed: int | None) -> int:
        return (self.base_seed if seed is None else seed) + RETRY_SEED_OFFSET

    def seed_number(self, seed: int | None) -> int:
        return self.base_seed if seed is None else seed


def promoted(keys: list[str], ap: dict[str, float], fraction: float) -> list[str]:
    """The ceil(fraction x n) best of ``keys`` by ``ap`` (those without an AP are out), at
    least one when any has an AP; ties broken by key so a rerun promotes the same."""
    ranked = sorted((k for k in dict.fromkeys(keys) if k in ap), key=lambda k: (-ap[k], k))
    # 1e-9: 0.1 x 30 is 3.0000000000000004 in floats, which must not round up to 4
    return ranked[:max(1, math.ceil(fraction * len(ranked) - 1e-9))] if ranked else []


def collapsed(ap: float, siblings: list[float]) -> bool:
    """Whether an AP is a collapse next to the other trainings' APs at the same rung."""
    if not siblings:
        return False
    median = statistics.median(siblings)
    return median >= COLLAPSE_FLOOR and ap < COLLAPSE_RATIO * median


def climb(trainer, schedule: Schedule, budgets: dict[str, list[str]],
          family: list[str]) -> dict:
    """Train ``budgets`` (label -> keys trained at the first rung) and the ``family`` up the
    rungs. Returns ``{"models": {key: {steps: rung record}}, "promoted": {label: {steps:
    keys}}, "retried": [...], "trainings": n}``; a rung record is ``ok`` (some seed
    trained), ``AP``/``AP50`` (means), ``AP_std`` (None with one seed), ``runs`` (per seed,
    a retried one marked with what it replaced)."""
    at = {label: list(keys) for label, keys in budgets.items()}
    ladder = {"models": {}, "promoted": {label: {} for label in budgets}, "retried": [],
              "trainings": 0}
    for i, steps in enumerate(schedule.rungs):
        keys = list(dict.fromkeys([k for ks in at.values() for k in ks] + list(family)))
        for label, ks in at.items():
            ladder["promoted"][label][steps] = list(ks)
        runs = _train_rung(trainer, schedule, i, keys, ladder)
        for key in keys:
            ladder["models"].setdefault(key, {})[steps] = _rung_record(runs[key])
        if i + 1 < len(schedule.rungs):
            ap = {k: r[steps]["AP"] for k, r in ladder["models"].items()
                  if steps in r and r[steps]["ok"]}
            at = {label: promoted(ks, ap, schedule.promote) for label, ks in at.items()}
    return ladder


def _train_rung(trainer, schedule: Schedule, i: int, keys: list[str], ladder: dict) -> dict:
    """Every training of rung ``i``, then a second seed for each that collapsed: ``{key:
    [run per seed]}``, a run being the trainer's result plus ``seed``."""
    steps, n = schedule.rungs[i], len(schedule.rungs)
    runs = {}
    for key in keys:
        runs[key] = []
        for seed in schedule.seeds_at(i):
            label = f"{key} [rung {i + 1}/{n}, seed {schedule.seed_number(seed)}]"
            runs[key].append(dict(trainer.train(key, label, steps, seed),
                                  seed=schedule.seed_number(seed)))
            ladder["trainings"] += 1
    first = [(key, j, run) for key in keys for j, run in enumerate(runs[key])]
    for key, j, run in first:
        if not run["ok"]:
            continue
        siblings = [r["AP"] for k, jj, r in first if (k, jj) != (key, j) and r["ok"]]
        if not collapsed(run["AP"], siblings):
            continue
        seed = schedule.seeds_at(i)[j]
        again = trainer.train(key, f"{key} [rung {i + 1}/{n}, retry of a collapsed training]",
                              steps, schedule.retry_seed(seed))
        ladder["trainings"] += 1
        note = {"key": key, "steps": steps, "seed": run["seed"], "AP": run["AP"],
                "rung_median": round(statistics.median(siblings), 4),
                "retry_seed": schedule.retry_seed(seed), "retry_ok": again["ok"],
                "retry_AP": again.get("AP")}
        ladder["retried"].append(note)
        say(f"  {key} collapsed at {steps} steps (AP {run['AP']:.4f}, the rung's median "
            f"{note['rung_median']:.4f}); retried with seed {note['retry_seed']}: "
            + (f"AP {again['AP']:.4f}" if again["ok"] else "the retry failed"))
        if again["ok"]:     # the retry stands in for the collapsed run, marked
            runs[key][j] = dict(again, seed=note["retry_seed"],
                                retried={"seed": run["seed"], "AP": run["AP"]})
    return runs


def _rung_record(runs: list[dict]) -> dict:
    ok = [r for r in runs if r["ok"]]
    rec = {"ok": bool(ok), "runs": [_brief(r) for r in runs]}
    if ok:
        ap, std = mean_std([r["AP"] for r in ok])
        ap50 = mean_std([r["AP50"] for r in ok])[0]
        if len(ok) > 1:     # a mean's float dust off; one seed's AP stays as its eval wrote it
            ap, std, ap50 = round(ap, 6), round(std, 6), round(ap50, 6)
        rec.update(AP=ap, AP_std=std, AP50=ap50, n=len(ok))
    return rec


def _brief(run: dict) -> dict:
    keep = ("ok", "seed", "AP", "AP50", "reason", "retried", "train_seconds")
    return {k: run[k] for k in keep if k in run}


def reached(record: dict) -> int | None:
    """The most steps at which a model (``ladder["models"][key]``) trained ok."""
    done = [steps for steps, r in record.items() if r["ok"]]
    return max(done) if done else None


def rank_agreement(ladder: dict, candidates: list[str], rungs: tuple[int, ...]) -> list[dict]:
    """Kendall's tau-b of AP between each pair of rungs, over the ``candidates`` trained ok
    at both: how far a cheap rung's ranking can be trusted."""
    out = []
    for i, a in enumerate(rungs):
        for b in rungs[i + 1:]:
            both = [ladder["models"][k] for k in candidates if k in ladder["models"]]
            both = [m for m in both if m.get(a, {}).get("ok") and m.get(b, {}).get("ok")]
            tau = kendall_tau_b([m[a]["AP"] for m in both], [m[b]["AP"] for m in both])
            out.append({"rungs": [a, b], "n": len(both),
                        "tau_b": None if tau is None else round(tau, 4)})
    return out
