"""The search's statistics, small and exact: mean and spread over seeds, Kendall's tau-b
between two rankings, and the verdict of a winner against the family (no numpy: a handful of
numbers per call, and the search's report must not need more than the standard library)."""
from __future__ import annotations

import math

# A winner is called better only when its mean AP beats the family's by more than this many
# pooled standard deviations (issue 24's rule).
VERDICT_STDS = 2.0


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); the deviation is None for one value."""
    if not values:
        raise ValueError("mean_std of no values")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def pooled_std(std_a: float, n_a: int, std_b: float, n_b: int) -> float:
    """The two groups' deviations pooled, each weighted by its degrees of freedom."""
    return math.sqrt(((n_a - 1) * std_a ** 2 + (n_b - 1) * std_b ** 2) / (n_a + n_b - 2))


def kendall_tau_b(x: list[float], y: list[float]) -> float | None:
    """Kendall's rank correlation of paired values, ties handled as tau-b:
    (concordant - discordant) / sqrt((n0 - ties in x) (n0 - ties in y)) over the n0 pairs.
    None when it is undefined (fewer than two pairs, or every x or every y tied)."""
    if len(x) != len(y):
        raise ValueError(f"kendall_tau_b: {len(x)} values against {len(y)}")
    n = len(x)
    concordant = discordant = tied_x = tied_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = _sign(x[i] - x[j]), _sign(y[i] - y[j])
            tied_x += dx == 0
            tied_y += dy == 0
            if dx * dy > 0:
                concordant += 1
            elif dx * dy < 0:
                discordant += 1
    pairs = n * (n - 1) // 2
    denominator = math.sqrt((pairs - tied_x) * (pairs - tied_y))
    return None if denominator == 0 else (concordant - discordant) / denominator


def _sign(v: float) -> int:
    return (v > 0) - (v < 0)


def verdict(winner: dict, family: dict) -> dict:
    """Whether ``winner`` beats the family at its latency by more than ``VERDICT_STDS`` pooled
    standard deviations. Both are ``{"AP": mean, "AP_std": std or None, "n": seeds}`` (the
    family's interpolated at the winner's measured latency). ``verdict`` is ``better``, ``no
    winner`` (within the noise, or the family better) or ``not judged`` (no spread known)."""
    gain = winner["AP"] - family["AP"]
    out = {"AP_gain": round(gain, 4)}
    if winner.get("AP_std") is None or family.get("AP_std") is None or \
            min(winner["n"], family["n"]) < 2:
        return dict(out, verdict="not judged",
                    reason="one seed per model: no spread to judge against (--seeds 3 or more)")
    pooled = pooled_std(winner["AP_std"], winner["n"], family["AP_std"], family["n"])
    limit = VERDICT_STDS * pooled
    out["pooled_std"] = round(pooled, 4)
    if gain > limit:
        return dict(out, verdict="better",
                    reason=f"gain {gain:+.4f} > {VERDICT_STDS:g} x pooled std {pooled:.4f}")
    if gain < -limit:
        return dict(out, verdict="no winner",
                    reason=f"the family is better: gain {gain:+.4f} < -{VERDICT_STDS:g} x "
                           f"pooled std {pooled:.4f}")
    return dict(out, verdict="no winner",
                reason=f"within the noise: |gain {gain:+.4f}| <= {VERDICT_STDS:g} x pooled "
                       f"std {pooled:.4f}")
