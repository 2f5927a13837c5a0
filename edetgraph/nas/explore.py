"""Stage 2's first rung: which candidates a budget trains (the most promising within it,
spread over the space, then mutations of the most accurate) and the compound-scaled family
trained beside them. Every training here is at the first rung's steps; the rungs above are
:mod:`edetgraph.nas.rungs`'."""
from __future__ import annotations

import random

from edetgraph.graph import search_space as space_mod
from edetgraph.nas.candidates import check_and_cost, spread
from edetgraph.nas.common import say, write_json
from edetgraph.nas.jobs import write_spec


def train_for_budget(space, screened: dict, budget: float, trainer, args, predict,
                     steps: int) -> list[str]:
    """Train the most promising candidates within ``budget``, then mutate the best: the keys
    trained for this budget."""
    under = [dict(r, key=k) for k, r in screened.items()
             if r["ok"] and r["predicted_ms"] <= budget]
    if not under:
        say(f"budget {budget:g} ms: no candidate is predicted within it "
            f"(fastest {min(r['predicted_ms'] for r in screened.values() if r['ok']):.2f} ms)")
        return []
    near = [r for r in under if r["predicted_ms"] >= args.band * budget] or under
    keys = [r["key"] for r in spread(near, space, args.train)]
    known = dict(screened)
    ap = {}
    for i, key in enumerate(keys):
        ap[key] = _train_candidate(space, key, known[key], trainer, steps,
                                   f"{key} [{budget:g} ms, {i + 1}/{len(keys)}, predicted "
                                   f"{known[key]['predicted_ms']:.2f} ms]").get("AP", -1)
    for rnd in range(args.rounds):
        rng = random.Random(f"{args.seed}-{budget}-{rnd}")
        scored = [ap[k] for k in keys]
        parents = [k for _, k in sorted(zip(scored, keys), reverse=True)[:args.parents]]
        for parent in parents:
            for _ in range(args.children):
                child = _child(space, known[parent], rng, budget, known, predict)
                if child is None:
                    continue
                known[child.key] = check_and_cost(child.spec_data(space), predict)
                known[child.key]["genes"] = child.as_dict()
                keys.append(child.key)
                ap[child.key] = _train_candidate(
                    space, child.key, known[child.key], trainer, steps,
                    f"{child.key} [{budget:g} ms, round {rnd + 1}, child of {parent}, "
                    f"predicted {known[child.key]['predicted_ms']:.2f} ms]").get("AP", -1)
    return keys


def _child(space, parent: dict, rng, budget, known: dict, predict):
    """A mutation of ``parent`` that passes the checks, is predicted within the budget and
    has not been tried (None after 50 tries)."""
    genes = space_mod.Candidate.from_dict(parent["genes"])
    for _ in range(50):
        c = space_mod.mutate(space, genes, rng)
        if c.key in known:
            continue
        rec = check_and_cost(c.spec_data(space), predict)
        if rec["ok"] and rec["predicted_ms"] <= budget:
            return c
        known[c.key] = dict(rec, genes=c.as_dict())
    return None


def _train_candidate(space, key: str, rec: dict, trainer, steps: int, label: str) -> dict:
    folder = trainer.out / "candidates" / key
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "candidate.json").exists():
        write_json(folder / "candidate.json", rec)
    write_spec(trainer.out, key, space_mod.Candidate.from_dict(rec["genes"]).spec_data(space))
    return trainer.train(key, label, steps)


def train_family(space, trainer, predict, steps: int) -> dict[str, dict]:
    """The base's compound-scaled BiFPN family, trained as the candidates are."""
    out = {}
    for phi in space.family_phi:
        data = space_mod.family_member(space, phi)
        key = f"family-phi{phi:g}"
        rec = check_and_cost(data, predict)
        rec.update(phi=phi, family=True)
        folder = trainer.out / "candidates" / key
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "candidate.json", rec)
        write_spec(trainer.out, key, data)
        trainer.train(key, f"{key} [family, predicted {rec.get('predicted_ms', 0):.2f} ms]",
                      steps)
        out[key] = rec
    return out
