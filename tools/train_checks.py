"""How each part of a training comparison against the official trainer passes or fails
(``official_train_parity.py``): losses, gradients, one optimizer step and the batch-norm
statistics after it, each against a limit and against the official's own noise. numpy
only, so the tests can check the verdicts on made-up tensors without TensorFlow or the
official code.
"""
from __future__ import annotations

import numpy as np

from train_measures import noise_verdict, relative_errors, scalar_relative, worst


def compare(theirs: dict, ours: dict, limit: float, noise: dict | None = None,
            slack: dict | None = None) -> dict:
    """Figures of ``relative_errors`` over the names both have. A tensor beyond ``limit``
    still passes when it is within twice ``noise[name]`` (the official's disagreement with
    itself, same measure) or its largest difference is within ``slack[name]`` (an absolute
    allowance: float32 rounding, noise carried over from the gradients)."""
    common = sorted(set(theirs) & set(ours))
    err = relative_errors({k: ours[k] for k in common}, {k: theirs[k] for k in common})
    noise, slack = noise or {}, slack or {}
    over = {k: v for k, v in err.items() if v > limit}
    bad = {k: v for k, v in over.items() if v > 2 * noise.get(k, 0.0)
           and abs_diff(ours[k], theirs[k]) > slack.get(k, 0.0)}
    top = worst(err, 3)
    # The mirror image, for a comparison that noise dominates (bfloat16 on random weights):
    # how often the official's noise is beyond twice our difference. A count of
    # ``unexplained`` near this one is what two samples of the same noise give.
    mirror = sum(1 for k in common if noise.get(k, 0.0) > limit and noise[k] > 2 * err[k])
    return {"compared": len(common), "only_official": len(set(theirs) - set(ours)),
            "noise_beyond_twice_ours": mirror,
            "only_ours": len(set(ours) - set(theirs)), "max_rel": top[0][1] if top else 0.0,
            "worst": [[k, float(f"{v:.3g}"), float(f"{noise.get(k, 0):.3g}")] for k, v in top],
            "over_limit": len(over), "unexplained": sorted(bad), "limit": limit,
            "ok": bool(top) and not bad and len(common) == len(theirs) == len(ours)}


def abs_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def bessel_check(before: dict, theirs: dict, ours: dict, spec, batch_size: int, limit: float,
                 rounding: dict) -> dict:
    """Moving variances: Keras' fused batch norm (the official) updates them with the batch
    variance times Bessel's n/(n-1), ours with the batch variance. Per variable, the n whose
    factor is nearest to the ratio of the two sides' batch variances (n = batch x h x w of a
    pyramid level) is applied to ours, and the updates must then agree within ``limit``."""
    corrected, used = bessel_corrected(before, theirs, ours, spec, batch_size)
    fig = compare({k: theirs[k] - before[k] for k in before}, corrected, limit, slack=rounding)
    fig["n"] = sorted(used)
    return fig


def bessel_corrected(before: dict, theirs: dict, ours: dict, spec, batch_size: int):
    """(ours' moving-variance updates with n/(n-1) applied, the n used); see bessel_check."""
    m = spec.bn.momentum
    sizes = [batch_size * -(-spec.image_size[0] // 2 ** lvl) * -(-spec.image_size[1] // 2 ** lvl)
             for lvl in range(1, spec.anchors.max_level + 1)]
    corrected, used = {}, set()
    for k in before:
        vo = (theirs[k] - before[k]) / (1 - m) + before[k]    # the batch variances
        vm = (ours[k] - before[k]) / (1 - m) + before[k]
        f = float(np.sum(vo, dtype=np.float64) / np.sum(vm, dtype=np.float64))
        n = min(sizes, key=lambda s: abs(s / (s - 1) - f))
        used.add(n)
        corrected[k] = (1 - m) * (vm * n / (n - 1) - before[k])
    return corrected, used


def loss_figures(theirs: dict, ours: dict, limit: float, again: dict) -> dict:
    """Relative difference per loss; beyond ``limit`` a loss passes only within twice the
    official's disagreement with itself (``again``: its losses in the noise run)."""
    names = ["cls_loss", "box_loss", "box_iou_loss", "reg_l2_loss", "loss"]
    rows = {}
    for k in names:
        if k == "box_iou_loss" and k not in theirs:
            continue
        rel, noise = scalar_relative(ours[k], theirs[k]), scalar_relative(again[k], theirs[k])
        rows[k] = {"official": theirs[k], "ours": ours[k], "rel": rel, "official_noise": noise,
                   "ok": rel <= limit or rel <= 2 * noise}
    return {"rows": rows, "limit": limit, "ok": all(r["ok"] for r in rows.values())}


def largest_noise(o_losses: dict, o_grads: dict, again: dict) -> tuple[dict, dict, dict]:
    """Over the noise runs ``{name: (losses, grads)}``: per loss, the run's loss farthest
    from ``o_losses``; per gradient, the largest relative error (``relative_errors``) and the
    largest absolute difference from ``o_grads``."""
    losses = {k: max((r[0][k] for r in again.values()),
                     key=lambda v: scalar_relative(v, o_losses[k])) for k in o_losses}
    errors = [relative_errors(r[1], o_grads) for r in again.values()]
    rel = {k: max(e[k] for e in errors) for k in o_grads}
    absolute = {k: max(abs_diff(r[1][k], o_grads[k]) for r in again.values()) for k in o_grads}
    return losses, rel, absolute


# Known differences in mixed precision, by kind of variable (``train_measures.kind_of``):
# reported with their figures, not judged (the float32 comparison judges them).
NAMED_DIFFERENCES = {
    "WSM": "BiFPN fusion weights: the official normalises them in the compute dtype, "
           "edetgraph in float32 (stable in low precision, by design)"}


def statistics_noise(before: dict, stats: dict, again: dict) -> dict:
    """Per moving statistic, the largest relative error of its update in the official's
    noise runs (``again``: name -> official_grads' triple) against its update in ``stats``."""
    mine = {k: stats[k] - before[k] for k in stats}
    errors = [relative_errors({k: r[2][k] - before[k] for k in stats}, mine)
              for r in again.values()]
    return {k: max(e[k] for e in errors) for k in stats}


def step_noise(update: dict, grads: dict, again: dict) -> dict:
    """Per weight, the largest relative error of the official's update had its gradient been
    a noise run's (``again``: name -> official_grads' triple): each update is its gradient
    times a factor of that weight's (the first step of SGD with momentum and clipping), fitted
    here, so the noise is measured on the updates' own scale (a near-zero gradient, a bias
    before batch norm, sits at the gradients' floor but well above the updates')."""
    factor = {}
    for k, g in grads.items():
        g = np.asarray(g, np.float64).ravel()
        factor[k] = float(np.dot(np.ravel(update[k]), g) / np.dot(g, g)) if np.any(g) else 0.0
    errors = [relative_errors({k: factor[k] * np.asarray(r[1][k], np.float64) for k in grads},
                              update) for r in again.values()]
    return {k: max(e[k] for e in errors) for k in grads}


def judge_by_noise(fig, before, theirs, ours, again, grad_noise, limits, spec,
                   batch_size) -> None:
    """Mixed precision: rounding noise dominates every tensor (a random-weight D0 in bfloat16
    moves its own gradients by tens of percent when its inputs round the other way), so each
    part of ``fig`` is judged by ``train_measures.noise_verdict`` instead of the per-tensor
    limit: per kind of variable, ours no farther from the official than the official is from
    itself more often than chance, and no tensor far beyond it. ``theirs`` / ``ours``:
    (gradients, weights after the step, and for theirs the batch-norm statistics of
    ``official_grads``); ``again``: the official's noise runs (name -> official_grads'
    triple); ``grad_noise``: their gradients' relative noise (``largest_noise``)."""
    (o_grads, o_after, o_stats), (m_grads, m_after) = theirs, ours
    def update(after, names):
        return {k: after[k] - before[k] for k in names}
    grads = sorted(set(o_grads) & set(m_grads))
    var = sorted(k for k in before if k.endswith("moving_variance"))
    mean = sorted(k for k in before if k.endswith("moving_mean"))
    corrected, _ = bessel_corrected({k: before[k] for k in var}, o_after, m_after, spec,
                                    batch_size)
    official_update = update(o_after, grads)
    stats = statistics_noise(before, o_stats, again)
    parts = {
        "gradients": ({k: m_grads[k] for k in grads}, {k: o_grads[k] for k in grads},
                      grad_noise, limits["grad"]),
        "step": (update(m_after, grads), official_update,
                 step_noise(official_update, {k: o_grads[k] for k in grads}, again),
                 limits["step"]),
        "moving_mean": (update(m_after, mean), update(o_after, mean), stats, limits["step"]),
        "moving_variance": (corrected, update(o_after, var), stats, limits["step"])}
    for part, (mine, official, noise, floor) in parts.items():
        verdict = noise_verdict(relative_errors(mine, official), noise, floor,
                                NAMED_DIFFERENCES)
        fig[part]["noise_verdict"] = verdict
        fig[part]["ok"] = verdict["ok"]


def step_figures(before, theirs, ours, limit, spec, batch_size, update_noise):
    """(weights, moving means, moving variances) after one step, compared by update.
    ``update_noise``: per weight, the absolute noise its update inherits from the gradient."""
    def group(names):
        return ({k: theirs[k] - before[k] for k in names}, {k: ours[k] - before[k] for k in names})
    var = [k for k in before if k.endswith("moving_variance")]
    mean = [k for k in before if k.endswith("moving_mean")]
    weights = sorted(set(before) - set(var) - set(mean))
    # Each side rounds w + update to float32: two float32 steps of the weight's largest
    # value are the most that rounding alone can make them differ.
    rounding = {k: 2 * float(np.spacing(np.float32(np.max(np.abs(before[k]))))) for k in before}
    slack = {k: rounding[k] + 2 * update_noise.get(k, 0.0) for k in before}
    fw = compare(*group(weights), limit, slack=slack)
    fm = compare(*group(mean), limit, slack=rounding)
    fv = compare(*group(var), limit, slack=rounding)
    fv["bessel"] = bessel_check({k: before[k] for k in var}, theirs, ours, spec, batch_size,
                                limit, rounding)
    # differences beyond the limit must all be Bessel's (checked), not other ones
    fv["unexplained"], fv["ok"] = fv["bessel"]["unexplained"], fv["bessel"]["ok"]
    fw["weights_max_abs"] = max(abs_diff(theirs[k], ours[k]) for k in weights)
    return fw, fm, fv


def update_noise(grads: dict, noise_abs: dict, lr: float, clip_norm: float) -> dict:
    """Per variable, ``lr x clip scale x noise_abs``, ``noise_abs`` the largest absolute
    difference of the official's gradient in its noise runs: the noise of the gradient as it
    reaches the first update (momentum is empty on the first step)."""
    norms = {k: float(np.linalg.norm(g)) for k, g in grads.items()}
    per = {k: min(1.0, clip_norm / n) if clip_norm and n else 1.0 for k, n in norms.items()}
    after = float(np.sqrt(sum((norms[k] * per[k]) ** 2 for k in grads)))
    overall = min(1.0, clip_norm / after) if clip_norm and after else 1.0
    return {k: lr * per[k] * overall * noise_abs[k] for k in grads}
