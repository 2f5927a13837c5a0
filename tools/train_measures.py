"""The arithmetic of the official-trainer comparisons (``official_train_parity.py``,
``official_train_speed.py``): how two sets of tensors are said to agree, how interleaved
timings become images/s, and whether this CPU can run bfloat16. numpy only, so the tests
can check it without TensorFlow or the official code.
"""
from __future__ import annotations

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
