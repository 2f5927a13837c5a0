"""The arithmetic of the official-trainer comparisons (``official_train_parity.py``,
``official_train_speed.py``): how two sets of tensors are said to agree, how interleaved
timings become images/s, and whether this CPU can run bfloat16. numpy only, so the tests
can check it without TensorFlow or the official code.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

# A gradient that is zero on both sides up to float noise (a bias right before batch norm:
# the batch mean removes it) has no scale of its own to be relative to; its differences are
# measured against this fraction of the largest scale among all the tensors compared.
SCALE_FLOOR = 1e-4


def relative_errors(ours: Mapping, theirs: Mapping, floor: float = SCALE_FLOOR) -> dict:
    """``{name: max|ours - theirs| / scale}`` where ``scale = max|theirs|`` of that tensor,
    but at least ``floor`` times the largest such scale of all. Names must match."""
    if set(ours) != set(theirs):
        only = sorted(set(ours) ^ set(theirs))
        raise ValueError(f"the two sides name different tensors: {only[:5]} ...")
    if not theirs:
        return {}
    theirs = {k: np.asarray(v, np.float64) for k, v in theirs.items()}
    scales = {k: float(np.max(np.abs(v))) if v.size else 0.0 for k, v in theirs.items()}
    least = floor * max(scales.values())
    out = {}
    for k, ref in theirs.items():
        diff = np.abs(np.asarray(ours[k], np.float64) - ref)
        worst = float(np.max(diff)) if diff.size else 0.0
        scale = max(scales[k], least)
        out[k] = worst / scale if scale > 0 else (0.0 if worst == 0 else float("inf"))
    return out


# The verdict for comparisons that rounding noise dominates (bfloat16 / float16 through a
# random-weight network: each side's gradients are tens of percent from its own float32
# ones). If ours is just another sample of the noise, then per tensor ours is as likely to be
# farther from the official than the official is from itself (rounded another way) as it is
# to be nearer: a kind of variable where "farther" wins more often than chance allows at
# NOISE_P (one-sided sign test) is systematically off. One wrong tensor stands out instead
# by its size (bfloat16 bias gradients summed in bfloat16 were 100-3000x the noise):
# NOISE_WORST_X. One noise sample per tensor is itself noisy (for a scalar, the ratio of two
# such samples is Cauchy-like, 1 in 16 beyond 10x), so the worst tensor is judged against
# at least the kind's median noise.
NOISE_P = 1e-3
NOISE_WORST_X = 10.0


def kind_of(name: str) -> str:
    """A variable's kind: the last part of its name without a numeric suffix
    (``.../fnode6/WSM_2`` -> ``WSM``, ``.../bn/gamma`` -> ``gamma``)."""
    last = name.rsplit("/", 1)[-1]
    stem, _, tail = last.rpartition("_")
    return stem if stem and tail.isdigit() else last


def sign_test_p(wins: int, n: int) -> float:
    """P(at least ``wins`` of ``n`` fair coin flips come up heads)."""
    return sum(math.comb(n, i) for i in range(wins, n + 1)) / 2.0 ** n if n else 1.0


def noise_verdict(err: Mapping, noise: Mapping, floor: float, named: Mapping | None = None,
                  p: float = NOISE_P, worst_x: float = NOISE_WORST_X) -> dict:
    """Ours against the official judged per kind of variable (``kind_of``). ``err``: ours'
    relative error to the official per tensor; ``noise``: the official's to itself;
    ``floor``: the plain limit (an error or noise below it counts as ``floor``). A kind fails
    when more of its tensors have ``err > noise`` than a fair coin gives at ``p``, or when a
    tensor's error is beyond ``worst_x`` times its noise or the kind's median noise,
    whichever is larger. ``named``: ``{kind: reason}`` for known, documented differences,
    reported with their figures and left out of ``ok``. Also counts the tensors beyond twice
    the noise and, mirrored, the official's noise beyond twice ours."""
    named = named or {}
    kinds: dict = {}
    for k in sorted(err):
        kinds.setdefault(kind_of(k), []).append(k)
    rows = {}
    for kind, names in kinds.items():
        e = {k: max(err[k], floor) for k in names}
        n = {k: max(noise.get(k, 0.0), floor) for k in names}
        typical = float(np.median(list(n.values())))
        farther = sum(1 for k in names if e[k] > n[k])
        chance = sign_test_p(farther, len(names))
        far = {k: e[k] / max(n[k], typical) for k in names}
        top = max(names, key=far.get)
        ok = chance >= p and far[top] <= worst_x
        rows[kind] = {"n": len(names), "farther": farther, "p": float(f"{chance:.3g}"),
                      "median_ratio": round(float(np.median(list(e.values()))) / typical, 3),
                      "worst": [top, round(float(far[top]), 3)],
                      "ok": bool(ok) if kind not in named else None}
        if kind in named:
            rows[kind]["named"] = named[kind]
    beyond = sum(1 for k in err if err[k] > floor and err[k] > 2 * noise.get(k, 0.0))
    mirror = sum(1 for k in err if noise.get(k, 0.0) > floor and noise[k] > 2 * err[k])
    return {"kinds": rows, "beyond_twice_noise": beyond, "noise_beyond_twice_ours": mirror,
            "p": p, "worst_x": worst_x, "floor": floor,
            "ok": bool(rows) and all(r["ok"] for r in rows.values() if r["ok"] is not None)}


def worst(errors: Mapping, n: int = 3) -> list:
    """The ``n`` largest ``(name, error)`` pairs, largest first."""
    return sorted(errors.items(), key=lambda kv: -kv[1])[:n]


def scalar_relative(ours: float, theirs: float) -> float:
    """``|ours - theirs| / |theirs|`` (absolute difference when ``theirs`` is 0)."""
    d = abs(float(ours) - float(theirs))
    return d / abs(float(theirs)) if theirs else d


def rates(times: Mapping, batch_size: int) -> dict:
    """Per name, from seconds per call (warm-up already excluded): median and min seconds
    and images/s at the median."""
    out = {}
    for k, t in times.items():
        t = np.asarray(t, np.float64)
        med = float(np.median(t))
        out[k] = {"median_s": round(med, 4), "min_s": round(float(t.min()), 4),
                  "runs": int(t.size), "images_per_s": round(batch_size / med, 3)}
    return out


def ratio(ours: dict, theirs: dict) -> float:
    """ours' images/s over theirs' (> 1: ours is faster)."""
    return round(ours["images_per_s"] / theirs["images_per_s"], 3)


def cpu_bf16(cpuinfo: str) -> tuple[bool, str]:
    """(has bf16 arithmetic, the flags that say so) from /proc/cpuinfo's text: AVX512_BF16
    or AMX-BF16 (oneDNN runs bfloat16 convolutions natively only with one of them;
    elsewhere it emulates them, slower than float32)."""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    found = sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16"))
    if found:
        return True, " ".join(found)
    vector = "avx512f" if "avx512f" in flags else ("avx2" if "avx2" in flags else "no avx2")
    return False, vector
