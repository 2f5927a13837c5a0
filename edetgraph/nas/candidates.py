"""Stage 1: candidates checked and costed on the graph and their latency predicted by a
fitted latency model, before any training; and the spread-out choice of which to train."""
from __future__ import annotations

import random
import time

from edetgraph.cli import first_line
from edetgraph.graph import latency_model
from edetgraph.graph import search_space as space_mod
from edetgraph.graph.build import build_ir
from edetgraph.graph.cost import model_cost
from edetgraph.graph.spec import SpecError, from_dict
from edetgraph.nas.common import SearchError, say


class Predictor:
    """A fitted latency model (bench.latency_model) predicting a spec's milliseconds."""

    def __init__(self, path):
        try:
            self.model = latency_model.load(path)
        except (OSError, ValueError) as e:      # LatencyModelError names the file
            raise SearchError(f"--latency: {first_line(e)}") from None
        self.backend = self.model.backend
        self.threads = self.model.threads
        self.warning = latency_model.cpu_mismatch(self.model)
        if self.warning:
            say(f"warning: {self.warning}")

    def __call__(self, spec) -> float:
        return float(latency_model.predict(spec, self.model)["total_ms"])


def check_and_cost(data: dict, predict) -> dict:
    """Check a candidate's spec data on the graph, cost it and predict its latency."""
    try:
        spec = from_dict(data, source=data["name"])
        build_ir(spec)
    except (SpecError, ValueError) as e:
        return {"ok": False, "reason": first_line(e, 200)}
    total = model_cost(spec).total
    return {"ok": True, "predicted_ms": round(predict(spec), 4), "flops": total.flops,
            "params": total.params_trainable}


def screen(space, predict, count: int, seed: int) -> dict:
    """``count`` samples of the space (and the base's own BiFPN), checked and predicted."""
    rng = random.Random(seed)
    out: dict[str, dict] = {}
    pool = [space_mod.bifpn_candidate(space)]
    tries = 0
    while len(pool) < count + 1 and tries < 20 * count:
        tries += 1
        c = space_mod.sample(space, rng)
        if c.key not in {p.key for p in pool}:
            pool.append(c)
    t0 = time.perf_counter()
    for i, c in enumerate(pool):
        rec = check_and_cost(c.spec_data(space), predict)
        out[c.key] = dict(rec, genes=c.as_dict())
        if (i + 1) % 100 == 0 or i + 1 == len(pool):
            say(f"screened {i + 1}/{len(pool)} candidates ({time.perf_counter() - t0:.1f} s)")
    bad = [k for k, r in out.items() if not r["ok"]]
    if bad:
        say(f"{len(bad)} candidates refused by the graph checks, e.g. {out[bad[0]]['reason']}")
    return out


def spread(rows: list[dict], space, k: int) -> list[dict]:
    """Up to ``k`` rows: the one with most FLOPs first, then each the farthest (in the
    scalars, each scaled to its range, and the edges) from those already picked."""
    if not rows:
        return []
    scal = ("repeats", "channels", "image_size", "head_repeats")
    span = {s: (max(getattr(space, s)) - min(getattr(space, s))) or 1 for s in scal}

    def dist(a, b):
        ga, gb = a["genes"], b["genes"]
        d = sum(abs(ga[s] - gb[s]) / span[s] for s in scal)
        ea = {(n, i) for n, ins in ga["edges"].items() for i in ins}
        eb = {(n, i) for n, ins in gb["edges"].items() for i in ins}
        return d + len(ea ^ eb) / max(1, len(ea | eb))

    rows = sorted(rows, key=lambda r: -r["flops"])
    picked = [rows[0]]
    while len(picked) < k and len(picked) < len(rows):
        best = max((r for r in rows if r not in picked),
                   key=lambda r: min(dist(r, p) for p in picked))
        picked.append(best)
    return picked


