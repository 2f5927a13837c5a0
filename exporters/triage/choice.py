"""How the TFLite int8 triage chooses among the files it tries: the goal (speed or
accuracy), the choice among the files within the bound, and each file's time beside the fp32
file's."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

GOALS = ("speed", "accuracy")   # to_tflite --triage-goal
SAME_SPEED = 0.05    # times this close (relative) are a tie on a shared machine: the
#                      smaller AP loss breaks it
TIMED_ROUNDS = 30    # timed calls of a candidate at most (each beside one of the fp32 file),
TIME_BUDGET_S = 1.5  # no new one after this many seconds: a few ms files get many calls (5
#                      calls of a 5 ms file on a shared 2-core machine gave medians 30 % off)


class NotApplicable(Exception):
    """A candidate the conversion cannot make for this request (the message says why):
    reported as not tried."""


@dataclass(frozen=True)
class Choice:
    """How the TFLite triage chooses among the files it tries (``to_tflite --triage-goal``,
    ``--no-w8a16``)."""
    goal: str = "speed"     # speed: the fastest file within the bound; accuracy: the one
    #                         losing the least AP (every candidate's AP measured)
    w8a16: bool = True      # also try int8 weights with 16-bit activations (whole model)

    def __post_init__(self):
        if self.goal not in GOALS:      # before the search, not after it
            raise ValueError(f"triage goal {self.goal!r}: one of {', '.join(GOALS)}")


def choose(variants: list, goal: str) -> dict | None:
    """The variant to keep, of those within the bound (None: none is). ``speed``: the
    fastest; times within :data:`SAME_SPEED` of it count as ties, which the smaller AP loss
    breaks. ``accuracy``: the smallest AP loss, the faster of equal ones."""
    if goal not in GOALS:
        raise ValueError(f"triage goal {goal!r}: one of {', '.join(GOALS)}")
    within = [v for v in variants if v.get("within_bound")]
    if not within:
        return None
    if goal == "speed":
        fastest = min(v["time_vs_fp32"] for v in within)
        within = [v for v in within if v["time_vs_fp32"] <= fastest * (1 + SAME_SPEED)]
    return min(within, key=lambda v: (v["ap_drop_points"], v["time_vs_fp32"]))


def time_beside(reference, run, x, rounds: int = TIMED_ROUNDS,
                budget_s: float = TIME_BUDGET_S) -> dict:
    """``run(x)`` timed beside ``reference(x)``: the two called in turn, round by round, after
    one untimed call each; at least one round, and no new one after ``budget_s`` seconds.
    ``time_vs_fp32`` is the median over rounds of each round's ratio: the two calls of a
    round meet the same load of a shared machine (full int8 of a swish demo model, 1 thread,
    a loaded 2-core machine: a spread of 0.012 over six repeats, 0.062 for the ratio of the
    two medians)."""
    reference(x)
    run(x)
    own, ref = [], []
    start = time.perf_counter()
    for _ in range(rounds):
        for call, into in ((reference, ref), (run, own)):
            t0 = time.perf_counter()
            call(x)
            into.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    own, ref = np.asarray(own), np.asarray(ref)
    return {"ms": round(1e3 * float(np.median(own)), 3),
            "fp32_ms": round(1e3 * float(np.median(ref)), 3),
            "time_vs_fp32": round(float(np.median(own / ref)), 3), "timed_calls": len(own)}
