"""The optimizer's proposal: exploration, or the safe GP step (described in
:mod:`vvtv_autopilot.handlers.optimizer`), and the expected impact it reports.

Private to :mod:`vvtv_autopilot.handlers.optimizer`, which re-exports :func:`propose`.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Collection, Mapping, Sequence

import msgspec
import numpy as np
from scipy.special import ndtr
from scipy.stats import qmc

from ..schemas.config import KpiSpec
from ._gp import DiffGP
from ._optimizer_types import CycleOutcome, OptimizerSettings, Proposal
from .bounds import ParameterBounds, effective_range
from .changes import ChangeType, ExpectedImpact, KpiImpact, ParameterChange

__all__ = ["propose", "complete_history", "kpi_sign", "objective_weights"]


def kpi_sign(spec: KpiSpec) -> float:
    return 1.0 if spec.direction == "increase" else -1.0


def objective_weights(kpis: Mapping[str, KpiSpec]) -> dict[str, float]:
    weights = {k: s.weight for k, s in kpis.items() if not s.critical and s.weight > 0}
    if not weights:
        weights = {k: s.weight for k, s in kpis.items() if s.weight > 0}
    if not weights:
        weights = {k: 1.0 for k in kpis}
    return weights


def _quantize(value: float, lo: float, hi: float, span: float) -> float:
    q = 10.0 ** math.floor(math.log10(span * 1e-5))
    v = round(round(value / q) * q, 12)
    return float(min(max(v, lo), hi))


def _baseline(analysis: Mapping[str, Mapping[str, float]], kpi: str) -> float | None:
    entry = analysis.get(kpi) if analysis else None
    if not entry or not entry.get("n"):
        return None
    mean = entry.get("mean")
    return float(mean) if mean is not None and math.isfinite(mean) else None


def _impact(kpis: Mapping[str, KpiSpec], analysis, means: Mapping[str, float], sds: Mapping[str, float],
            beta: float, model: str) -> ExpectedImpact:
    weights = objective_weights(kpis)
    out: dict[str, KpiImpact] = {}
    for name, spec in kpis.items():
        m, sd = float(means.get(name, 0.0)), float(sds.get(name, 0.0))
        base = _baseline(analysis, name)
        out[name] = KpiImpact(delta=m, uncertainty=sd, direction=spec.direction, critical=spec.critical,
                              lower=kpi_sign(spec) * m - beta * sd, baseline=base,
                              absolute_delta=None if base is None else m * abs(base))
    obj = sum(w * kpi_sign(kpis[k]) * float(means.get(k, 0.0)) for k, w in weights.items())
    obj_sd = math.sqrt(sum((w * float(sds.get(k, 0.0))) ** 2 for k, w in weights.items()))
    conf = float(ndtr(obj / obj_sd)) if obj_sd > 0 else (0.5 if obj == 0 else float(obj > 0))
    return ExpectedImpact(kpis=out, overall_confidence=conf, objective_delta=obj,
                          objective_uncertainty=obj_sd, model=model)


def propose(
    *,
    analysis: Mapping[str, Mapping[str, float]],
    history: Sequence[CycleOutcome],
    bounds: Mapping[str, ParameterBounds],
    kpis: Mapping[str, KpiSpec],
    seed: int,
    pinned: Collection[str] = (),
    current: Mapping[str, float] | None = None,
    reference: Mapping[str, float] | None = None,
    at: datetime | None = None,
    settings: OptimizerSettings = OptimizerSettings(),
    min_detectable_gain: float | None = None,
    idle_cycles: int = 0,
    canary_may_lengthen: bool = False,
) -> Proposal:
    """Propose the next change. ``bounds`` names the tunable parameters (their effective range
    at ``at`` is respected, hard limits normalize the inputs); ``current`` defaults to each
    bound's ``current_value``; ``reference`` (optional) is a second point the guardrails must
    stay non-inferior to (e.g. the last known-good card), besides the current point.
    ``min_detectable_gain``: the canary's MDE for the improvement score (relative, in the good
    direction; see :func:`vvtv_autopilot.handlers.power.canary_power`). Given, the step is sized
    so the canary can see it: exploration goes most of the way to the range's edge, and the GP
    proposes only a safe candidate whose predicted score reaches the MDE, else no change (with
    the figures in the reason). None: no sizing (the step as before).
    ``canary_may_lengthen``: the MDE is the longest canary's the policy allows (the canary will
    be lengthened for the step): idle tries below it wait ``settings.lengthened_idle_patience``
    cycles, and each guardrail keeps ``settings.lengthened_guardrail_buffer`` of its margin in
    reserve."""
    if canary_may_lengthen:
        # measured on the realistic world (README, "Sliding bounds and the optimizer")
        settings = msgspec.structs.replace(settings, guardrail_buffer=settings.lengthened_guardrail_buffer,
                                           idle_patience=settings.lengthened_idle_patience)
    mde = None if min_detectable_gain is None or not math.isfinite(min_detectable_gain) \
        or min_detectable_gain <= 0 else float(min_detectable_gain)
    rng = np.random.default_rng(seed)
    names = sorted(bounds)
    cur = {n: float((current or {}).get(n, bounds[n].current_value)) for n in names}
    ranges = {n: effective_range(bounds[n], at) for n in names}
    free = [n for n in names if n not in set(pinned) and ranges[n][1] - ranges[n][0] > 0]
    if not free:
        return Proposal([], cur, None, "none", "no free parameter (all pinned or with an empty range)", seed)
    history = complete_history(history, names, cur)
    usable = [h for h in history if any(k in kpis for k in h.lifts)][-settings.max_history:]
    critical = [k for k, s in kpis.items() if s.critical]
    observed = {k: sum(1 for h in usable if k in h.lifts) for k in kpis}
    min_history = settings.min_history if mde is None else settings.visible_min_history
    if len(usable) < min_history or any(observed[k] == 0 for k in critical):
        return _explore(analysis, usable, bounds, kpis, seed, rng, free, cur, ranges, reference, settings, mde)
    return _gp_proposal(analysis, usable, bounds, kpis, seed, rng, names, free, cur, ranges, reference, settings, mde,
                        idle_cycles)


def complete_history(history: Sequence[CycleOutcome], names: Sequence[str],
                     current: Mapping[str, float]) -> list[CycleOutcome]:
    """Every outcome with a value for every tuned parameter, in both its points.

    A cycle records only the parameters it changed (the core's proposal holds the changes),
    so with two or more parameters an outcome lacks the others. They were not moved by that
    canary: both arms ran them at the value live at the time. That value is known exactly
    (barring changes outside the cycles, e.g. an override): walking back from the current
    point, a parameter is live at the baseline of the latest later outcome that records it,
    or at its current value when none does. The outcome becomes a difference observation
    with the unchanged coordinates at that live value in both its points, which is where the
    GP must place it (reading the current value instead misplaces it once that parameter has
    moved; reading it as missing crashed). Outcomes that are already complete are returned
    as they are, so with one parameter nothing changes. Pure and deterministic."""
    known = {n: float(current[n]) for n in names}
    out: list[CycleOutcome] = []
    for h in reversed(history):
        if all(n in h.parameters and n in h.baseline for n in names):
            done = h
        else:
            base = dict(h.baseline)
            params = dict(h.parameters)
            for n in names:
                if base.get(n) is None:
                    base[n] = known[n]
                if params.get(n) is None:
                    params[n] = base[n]
            done = msgspec.structs.replace(h, parameters=params, baseline=base)
        for n in names:
            known[n] = float(done.baseline[n])   # live just before this cycle
        out.append(done)
    out.reverse()
    return out


def _explore(analysis, usable, bounds, kpis, seed, rng, free, cur, ranges, reference, s: OptimizerSettings,
             mde: float | None = None) -> Proposal:
    if mde is not None:
        return _explore_visible(analysis, usable, bounds, kpis, seed, rng, free, cur, ranges, s, mde)
    name = free[len(usable) % len(free)]
    lo, hi = ranges[name]
    x = min(max(cur[name], lo), hi)
    step = s.explore_step_fraction * (hi - lo)
    direction = 1.0 if rng.random() < 0.5 else -1.0
    # learn from the last outcome that moved this parameter: go the other way after a loss
    weights = objective_weights(kpis)
    for h in reversed(usable):
        moved = h.parameters.get(name, h.baseline.get(name)) - h.baseline.get(name, cur[name])
        if abs(moved) > 0:
            gain = sum(w * kpi_sign(kpis[k]) * h.lifts[k] for k, w in weights.items() if k in h.lifts)
            direction = math.copysign(1.0, moved) * (1.0 if gain > 0 and h.outcome == "deployed" else -1.0)
            break
    # never drift more than one step from the reference (or start of the history) per coordinate
    anchor = (reference or {}).get(name)
    if anchor is None and usable:
        anchor = usable[0].baseline.get(name)
    if anchor is not None and abs(x + direction * step - anchor) > step * (1 + 1e-9):
        direction = -direction
    room = {1.0: hi - x, -1.0: x - lo}
    if room[direction] < step:
        direction = -direction if room[-direction] >= step else max(room, key=lambda d: room[d])
        step = min(step, 0.5 * room[direction])
    span = bounds[name].hard_max - bounds[name].hard_min
    new = _quantize(x + direction * step, lo, hi, span)
    point = dict(cur)
    point[name] = new
    if abs(new - cur[name]) < s.min_step_fraction * span:
        return Proposal([], cur, None, "none", f"exploration step on {name} is too small (range {lo:.6g}..{hi:.6g})", seed)
    sds = {}
    for k in kpis:
        vals = [h.lifts[k] for h in usable if k in h.lifts]
        sds[k] = float(np.sqrt(np.mean(np.square(vals)))) if vals else s.default_noise_sd
        sds[k] = max(sds[k], s.default_noise_sd)
    impact = _impact(kpis, analysis, {}, sds, s.beta, "exploration")
    change = ParameterChange(name, cur[name], new, ChangeType.EXPLORATION, 0.5, impact)
    return Proposal([change], point, impact, "exploration",
                    f"exploration ({len(usable)} of {s.min_history} outcomes needed for the model): "
                    f"{name} {cur[name]:.6g} -> {new:.6g} ({'+' if direction > 0 else '-'}{step:.6g})",
                    seed, 1, 1)


def _prior_sds(usable, kpis, s: OptimizerSettings) -> dict[str, float]:
    sds = {}
    for k in kpis:
        vals = [h.lifts[k] for h in usable if k in h.lifts]
        sds[k] = float(np.sqrt(np.mean(np.square(vals)))) if vals else s.default_noise_sd
        sds[k] = max(sds[k], s.default_noise_sd)
    return sds


def _explore_visible(analysis, usable, bounds, kpis, seed, rng, free, cur, ranges, s: OptimizerSettings,
                     mde: float) -> Proposal:
    """Exploration sized for the canary: with no model yet the effect of a step is unknown, and a
    step whose effect is below the canary's MDE teaches nothing, so one parameter (round robin)
    moves ``visible_explore_fraction`` of the way to its range's edge, but at most
    ``max_explore_fraction`` of the hard span (a wide range is no licence for a leap past a
    cliff): the way its last move paid off (the other way after a loss), else towards the side
    with more room. Never onto the edge (a value on its bound holds the bound's stable days),
    never beyond it."""
    weights = objective_weights(kpis)
    start = len(usable) % len(free)
    tried = []
    for name in free[start:] + free[:start]:
        lo, hi = ranges[name]
        x = min(max(cur[name], lo), hi)
        room = {1.0: hi - x, -1.0: x - lo}
        base = s.explore_step_fraction * (hi - lo)
        learned = None
        for h in reversed(usable):
            moved = h.parameters.get(name, h.baseline.get(name)) - h.baseline.get(name, cur[name])
            if abs(moved) > 0:
                gain = sum(w * kpi_sign(kpis[k]) * h.lifts[k] for k, w in weights.items() if k in h.lifts)
                learned = math.copysign(1.0, moved) * (1.0 if gain > 0 and h.outcome == "deployed" else -1.0)
                break
        if learned is not None:
            # the way the last move paid off, unless that way has no room for a step
            direction = learned if s.visible_explore_fraction * room[learned] >= base else -learned
        elif abs(room[1.0] - room[-1.0]) > 1e-9 * (hi - lo):
            direction = max(room, key=lambda d: room[d])
        else:
            direction = 1.0 if rng.random() < 0.5 else -1.0
        span = bounds[name].hard_max - bounds[name].hard_min
        step = min(s.visible_explore_fraction * room[direction], s.max_explore_fraction * span)
        new = _quantize(x + direction * step, lo, hi, span)
        if step < base or abs(new - cur[name]) < s.min_step_fraction * span:
            tried.append(f"{name} ({'+' if direction > 0 else '-'}: {room[direction]:.4g} of room)")
            continue
        point = dict(cur)
        point[name] = new
        impact = _impact(kpis, analysis, {}, _prior_sds(usable, kpis, s), s.beta, "exploration")
        change = ParameterChange(name, cur[name], new, ChangeType.EXPLORATION, 0.5, impact)
        return Proposal([change], point, impact, "exploration",
                        f"exploration sized for the canary's MDE of {100 * mde:.2g} % ({len(usable)} of "
                        f"{s.visible_min_history} outcomes needed for the model): {name} {cur[name]:.6g} -> {new:.6g} "
                        f"({'+' if direction > 0 else '-'}{abs(new - cur[name]):.6g}: "
                        f"{100 * s.visible_explore_fraction:.0f} % of the way to the range's edge, "
                        f"at most {100 * s.max_explore_fraction:.0f} % of the hard span)",
                        seed, 1, 1)
    return Proposal([], cur, None, "none",
                    "no parameter has room for an exploration step the canary could see: " + ", ".join(tried), seed)


def _gp_proposal(analysis, usable, bounds, kpis, seed, rng, names, free, cur, ranges, reference,
                 s: OptimizerSettings, mde: float | None = None, idle_cycles: int = 0) -> Proposal:
    lo_h = np.array([bounds[n].hard_min for n in names])
    span = np.array([bounds[n].hard_max - bounds[n].hard_min for n in names])

    def norm(values: Mapping[str, float], fallback: Mapping[str, float]) -> np.ndarray:
        return (np.array([float(values.get(n, fallback[n])) for n in names]) - lo_h) / span

    c = norm(cur, cur)
    ref = norm(reference, cur) if reference else None
    gps: dict[str, DiffGP] = {}
    for k in kpis:
        obs = [h for h in usable if k in h.lifts and math.isfinite(h.lifts[k])]
        if not obs:
            continue
        a = np.array([norm(h.parameters, {**cur, **h.baseline}) for h in obs])
        b = np.array([norm(h.baseline, cur) for h in obs])
        y = np.array([float(h.lifts[k]) for h in obs])
        have_se = all(k in h.lift_se and h.lift_se[k] > 0 for h in obs)
        nv = np.array([float(h.lift_se[k]) ** 2 for h in obs]) if have_se else None
        spec = kpis[k]
        # a guardrail's prior: it may move by its margin within a short length-scale (SafeOpt's
        # regularity assumption), so a flat history never makes far jumps look safe
        gps[k] = DiffGP(a, b, y, nv, s, min_scale=spec.margin if spec.critical else 0.0,
                         max_lengthscale=s.guardrail_max_lengthscale if spec.critical else math.inf)

    # candidates: global Sobol over the effective box, and local Sobol around the current point
    free_idx = [names.index(n) for n in free]
    box_lo = np.array([(ranges[n][0] - bounds[n].hard_min) / (bounds[n].hard_max - bounds[n].hard_min) for n in free])
    box_hi = np.array([(ranges[n][1] - bounds[n].hard_min) / (bounds[n].hard_max - bounds[n].hard_min) for n in free])
    m = max(1, int(round(math.log2(max(2, s.n_candidates)))))
    # (never so small that no candidate could be a change)
    half = np.maximum(_trust_region(usable, kpis, s) * (box_hi - box_lo), 2.0 * s.min_step_fraction)
    cf = c[free_idx]
    llo, lhi = np.maximum(cf - half, box_lo), np.minimum(cf + half, box_hi)
    loc = llo + qmc.Sobol(len(free), scramble=True, seed=rng).random_base2(m) * (lhi - llo)
    if mde is not None:
        # a visible step may lie beyond the trust region: the whole effective box as well
        loc = np.vstack([loc, box_lo + qmc.Sobol(len(free), scramble=True, seed=rng).random_base2(m) * (box_hi - box_lo)])
    X = np.repeat(c[None, :], len(loc), axis=0)
    X[:, free_idx] = loc
    # quantize in parameter units, then back to normalized
    for j, n in zip(free_idx, free):
        lo, hi = ranges[n]
        X[:, j] = [(_quantize(lo_h[j] + v * span[j], lo, hi, span[j]) - lo_h[j]) / span[j] for v in X[:, j]]
    moved = np.abs(X - c[None, :]).max(1) >= s.min_step_fraction
    X = X[moved]
    if len(X) == 0:
        return Proposal([], cur, None, "none", "no candidate differs from the current point", seed)

    means, sds, ref_post = {}, {}, {}
    safe = np.ones(len(X), dtype=bool)
    for k, spec in kpis.items():
        if k not in gps:
            means[k], sds[k] = np.zeros(len(X)), np.full(len(X), np.inf)
            continue
        mu, sd = gps[k].diff(X, c)
        means[k], sds[k] = mu, sd
        if spec.critical:
            sg = kpi_sign(spec)
            allowed = -spec.margin * (1.0 - s.guardrail_buffer)
            safe &= sg * mu - s.beta * sd >= allowed
            if ref is not None:
                mr, sr = gps[k].diff(X, ref)
                ref_post[k] = (mr, sr)
                safe &= sg * mr - s.beta * sr >= allowed
    weights = objective_weights(kpis)
    obj = np.broadcast_to(sum(w * kpi_sign(kpis[k]) * means[k] for k, w in weights.items() if k in gps), (len(X),))
    obj_sd = np.broadcast_to(np.sqrt(sum((w * sds[k]) ** 2 for k, w in weights.items() if k in gps)), (len(X),))
    n_safe = int(safe.sum())
    if n_safe == 0:
        return Proposal([], cur, None, "none",
                        f"no safe candidate: every one of {len(X)} candidates has a guardrail lower bound below its margin",
                        seed, len(X), 0)
    # is the current point itself outside the safe set (against the reference)? then correct
    correcting = False
    if ref is not None:
        for k, spec in kpis.items():
            if spec.critical and k in gps:
                mr, sr = gps[k].diff(c[None, :], ref)
                if kpi_sign(spec) * mr[0] < -spec.margin:
                    correcting = True
    visible_note = ""
    if correcting:
        ucb = np.where(safe, obj, -np.inf)
    elif mde is not None:
        # only what the canary can see: a safe candidate whose predicted score (the gate's
        # weighted mean of the success metrics' lifts) reaches the MDE, in the mean
        wsum = sum(w for k, w in weights.items() if k in gps) or 1.0
        score = obj / wsum
        need = s.mde_fraction * mde
        visible = safe & (score >= need)
        if not visible.any() and idle_cycles >= s.idle_patience:
            # learning must not stall: after ``idle_patience`` cycles without a canary, the safe
            # candidate with the best mean among those a canary *could* see (upper bound >= MDE)
            could = safe & (score > 0) & (score + s.kappa * obj_sd / wsum >= need)
            if could.any():
                i = int(np.argmax(np.where(could, obj, -np.inf)))
                visible_note = (f"none reaches the canary's MDE of {100 * mde:.2g} % in the mean; after "
                                f"{idle_cycles} cycles without a canary, the best mean whose upper bound does; ")
                ucb = np.where(could, obj, -np.inf)
        if not visible_note and not visible.any():
            j = int(np.argmax(np.where(safe, obj, -np.inf)))
            return Proposal([], cur, None, "none",
                            f"the best safe candidate predicts {100 * score[j]:+.2g} % "
                            f"(± {100 * obj_sd[j] / wsum:.2g} %), below the canary's MDE of {100 * mde:.2g} %: "
                            f"no canary could confirm it (gp over {len(usable)} outcomes, {n_safe} of {len(X)} "
                            f"candidates safe)", seed, len(X), n_safe)
        if not visible_note:
            ucb = np.where(visible, obj + s.kappa * obj_sd, -np.inf)
            visible_note = f"{int(visible.sum())} reach the canary's MDE of {100 * mde:.2g} %; "
    else:
        ucb = np.where(safe, obj + s.kappa * obj_sd, -np.inf)
    i = int(np.argmax(ucb))
    expanding = expanded = False
    if not correcting and mde is None and s.expander and not obj[i] > s.min_expected_gain:
        # no safe candidate is expected (in the mean) to improve: the UCB winner would be a likely
        # loss. Measure where the measurement grows the safe set towards a better bound instead.
        j = _expansion(X, c, ref, safe, gps, means, sds, ref_post, obj, obj + s.kappa * obj_sd, float(ucb[i]), kpis, s)
        if j is not None:
            best_bound, i, expanding, expanded = float(ucb[i]), j, True, True
    if not correcting and mde is None and not expanded and not ucb[i] > s.min_expected_gain:
        j = _expander(X, c, safe, obj_sd, {k: sds[k] for k, sp in kpis.items() if sp.critical and k in gps},
                      kpis, s) if s.expander else None
        if j is None:
            return Proposal([], cur, None, "none",
                            f"no safe candidate is expected to improve the objective (best bound {ucb[i]:.4g})",
                            seed, len(X), n_safe)
        best_bound, i, expanding = float(ucb[i]), j, True
    impact = _impact(kpis, analysis, {k: float(means[k][i]) for k in gps}, {k: float(sds[k][i]) for k in gps},
                     s.beta, "gp")
    conf = impact.overall_confidence
    if correcting:
        ctype = ChangeType.CORRECTION
    elif expanding:
        ctype = ChangeType.EXPLORATION
    elif impact.objective_delta > 0 and conf >= s.optimization_confidence:
        ctype = ChangeType.OPTIMIZATION
    else:
        ctype = ChangeType.EXPLORATION
    point = dict(cur)
    changes = []
    for j, n in zip(free_idx, free):
        value = float(lo_h[j] + X[i, j] * span[j])
        value = _quantize(value, ranges[n][0], ranges[n][1], span[j])
        if abs(value - cur[n]) >= s.min_step_fraction * span[j]:
            point[n] = value
            changes.append(ParameterChange(n, cur[n], value, ctype, conf, impact))
    what = ("best objective" if not expanding else
            f"safe-set expansion (no safe candidate improves in the mean, best bound {best_bound:.4g}): the "
            f"measurement that makes a better bound safe" if expanded else
            f"safe-set expander (no safe candidate improves, best bound {best_bound:.4g}): most uncertain safe point")
    return Proposal(changes, point, impact, "gp",
                    f"gp over {len(usable)} outcomes: {n_safe} of {len(X)} candidates safe; {visible_note}{what} "
                    f"{impact.objective_delta:+.4g} ± {impact.objective_uncertainty:.3g} (P>0 = {conf:.2f})",
                    seed, len(X), n_safe)


def _expander(X, c, safe, obj_sd, guard_sds, kpis, s: OptimizerSettings) -> int | None:
    """SafeOpt's expander step, when no safe candidate improves the objective's upper bound: the
    safe candidate whose outcome is least known (objective sd plus each guardrail's sd over its
    margin), i.e. the one near the edge of the safe set whose measurement teaches the most."""
    if not safe.any():
        return None
    width = obj_sd / max(float(obj_sd[safe].max()), 1e-12)
    for k, sd in guard_sds.items():
        width = width + sd / max(kpis[k].margin, 1e-12)
    width = np.where(safe, width, -np.inf)
    j = int(np.argmax(width))
    return j if math.isfinite(width[j]) and width[j] > 0 else None


def _expansion(X, c, ref, safe, gps, means, sds, ref_post, obj_mean, obj_ucb, best_bound, kpis,
               s: OptimizerSettings) -> int | None:
    """SafeOpt's expander, goal-directed: for each safe candidate x, the guardrails' posterior sds
    once a canary at x is measured against the current point (the variance update needs no
    value; the means are kept), hence the safe set that measurement would give (against the
    current point and the reference); x is worth it when that set holds a candidate whose
    objective bound beats ``best_bound``. The best such x wins (the highest reachable bound,
    then the highest objective mean). None when no measurement expands the safe set so."""
    idx = np.flatnonzero(safe)
    if len(idx) == 0:
        return None
    Xs = X[idx]
    grows = np.ones((len(idx), len(X)), dtype=bool)
    for k, spec in kpis.items():
        if not spec.critical or k not in gps:
            continue
        sg, allowed = kpi_sign(spec), -spec.margin * (1.0 - s.guardrail_buffer)
        grows &= sg * means[k][None, :] - s.beta * gps[k].shrunk_sd(Xs, c, X, c, sds[k]) >= allowed
        if k in ref_post:
            mr, sr = ref_post[k]
            grows &= sg * mr[None, :] - s.beta * gps[k].shrunk_sd(Xs, c, X, ref, sr) >= allowed
    reach = np.where(grows & ~safe[None, :], obj_ucb[None, :], -np.inf).max(1)
    top = float(reach.max())
    if not math.isfinite(top) or not top > best_bound:
        return None
    tied = reach >= top - 1e-12 * max(1.0, abs(top))
    return int(idx[np.argmax(np.where(tied, obj_mean[idx], -np.inf))])


def _trust_region(usable, kpis, s: OptimizerSettings) -> float:
    """TuRBO's trust region, replayed from the history (so it stays a pure function of it): the
    half-width starts at ``local_fraction``, doubles after ``tr_success_tolerance`` deployed gains
    in a row, halves after ``tr_failure_tolerance`` rollbacks or losses in a row, and restarts at
    ``local_fraction`` when it would fall below ``tr_min_fraction``."""
    weights = objective_weights(kpis)
    length, wins, losses = s.local_fraction, 0, 0
    for h in usable[s.min_history:]:
        gain = sum(w * kpi_sign(kpis[k]) * h.lifts[k] for k, w in weights.items() if k in h.lifts)
        if h.outcome == "deployed" and gain > 0:
            wins, losses = wins + 1, 0
        else:
            wins, losses = 0, losses + 1
        if wins >= s.tr_success_tolerance:
            length, wins = min(2.0 * length, s.tr_max_fraction), 0
        elif losses >= s.tr_failure_tolerance:
            length, losses = length / 2.0, 0
            if length < s.tr_min_fraction:
                length = s.local_fraction
    return length
