"""Power of the canary gate before the canary starts (pure: statistics in, a report out).

Given each KPI's live-window statistics (per-unit count/mean/variance as
:class:`~.stats.RunningStats`), the units per minute expected during the canary,
the canary's traffic share, its duration and the confidence, predict what the
gate (:func:`.gate.evaluate_gate`) can show:

- the **MDE of the improvement score**: the smallest relative change of the
  weighted success metrics that the gate's improvement test detects with
  ``target_power`` (80 %);
- for each **guardrail** (critical KPI): the power of its non-inferiority test
  at its margin when the canary truly changes nothing, and when that is below
  ``target_power``, the margin that would reach it at the planned duration and
  the duration that would reach it at the configured margin.

It uses the gate's own test: the hybrid of the anytime-valid mixture at every
look (``check_interval_minutes``) at ``alpha_seq`` and the one-sided Welch look
at the deadline at ``alpha_fix`` (less when an extension is planned), on the
same effect scale (log ratio of means, or the difference with ``margin_abs`` or
a mean ~0) and the same margins (:func:`.gate.kpi_margin`). The probability that
the hybrid rejects at some look is computed exactly for the Gaussian limit (the
studentized effect as a Brownian motion in information time, observed at the
looks) by propagating its density across the looks on a grid, the way
group-sequential designs are computed (Armitage, McPherson and Rowe). Both arms
are assumed to have the live window's per-unit variance (the null of equal
distributions), and the traffic to be even over the canary.

:func:`plan_canary` applies the ``underpowered_action`` policy (run / lengthen /
skip) and returns the duration to run; :func:`plan_canary_for` reads every input
but the live statistics and the traffic from the configuration.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal, Mapping

import msgspec
import numpy as np
from scipy.optimize import brentq
from scipy.special import ndtr, ndtri

from ..schemas.config import Config, KpiSpec
from ._gate_hybrid import (DEFAULT_EXTENSION_SHARE, DEFAULT_MIXTURE_TUNING, DEFAULT_SEQUENTIAL_SHARE,
                           fixed_weight)
from .effect import NEAR_ZERO_SE
from .gate import kpi_margin
from .sequential import boundary, optimal_r
from .stats import RunningStats

__all__ = ["GuardrailPower", "PowerReport", "CanaryPlan", "canary_power", "plan_canary", "plan_canary_for", "sizing_mde",
           "score_may_lengthen",
           "hybrid_power", "drift_for_power", "TARGET_POWER"]

TARGET_POWER = 0.8
METHOD = "hybrid-msprt+welch, Gaussian limit, exact over the looks"
_GRID = 0.01        # grid step of the score process
_MAX_LOOKS = 2000   # beyond this many looks, group them (the answer changes by < 0.1 point)


class GuardrailPower(msgspec.Struct, frozen=True):
    kpi: str
    mode: Literal["relative", "absolute", "none"]   # scale of the test (as the gate will run it)
    margin: float | None          # as configured: relative (ratio) or, with margin_abs, in the KPI's units
    margin_kind: Literal["relative", "absolute"]
    live_n: int
    live_mean: float | None
    live_sd: float | None
    n_control: float              # expected units per arm at the deadline
    n_canary: float
    se: float | None              # standard error of the tested effect at the deadline
    power: float | None           # P(non-inferiority shown by the deadline | no true change)
    powered: bool
    margin_for_power: float | None = None            # the margin (same kind) reaching target power as planned
    duration_for_power_minutes: float | None = None  # the duration reaching target power at the margin
    note: str | None = None


class PowerReport(msgspec.Struct, frozen=True):
    confidence: float
    target_power: float
    duration_minutes: float
    traffic_fraction: float
    check_interval_minutes: float
    looks: int
    alpha_sequential: float
    alpha_fixed: float
    score_kpis: list[str]
    score_mde: float | None        # relative change of the score detectable with target power (good direction)
    score_se: float | None         # standard error of the score (log scale) at the deadline
    guardrails: list[GuardrailPower]
    underpowered: list[str]        # guardrails below target power
    duration_for_power_minutes: float | None   # the longest duration any underpowered guardrail needs
    method: str = METHOD
    note: str | None = None


class CanaryPlan(msgspec.Struct, frozen=True):
    run: bool                      # False: skip the canary this cycle
    duration_minutes: float        # the canary's window (elapsed_fraction is measured against it)
    planned_minutes: float
    action: Literal["run", "lengthen", "skip"]
    reason: str
    power: PowerReport             # at ``duration_minutes`` (or as planned, when skipped)


# --- the hybrid test's power on a Brownian motion -------------------------------------------


@lru_cache(maxsize=512)
def _design(looks: int, alpha: float, share: float, tuning: float, fix_share: float) -> tuple:
    """Rejection boundaries of the hybrid on the score scale S_t = Z_t sqrt(t) at each look."""
    a_seq = share * alpha
    r_star = optimal_r(round(a_seq, 12))
    ts = np.arange(1, looks + 1) / looks
    b = np.array([boundary(r_star * t / tuning, round(a_seq, 12)) * math.sqrt(t) for t in ts])
    if fix_share > 0.0:
        b[-1] = min(b[-1], float(-ndtri(fix_share * alpha)))
    return ts, b


def hybrid_power(drift: float, *, looks: int, alpha: float, share: float = DEFAULT_SEQUENTIAL_SHARE,
                 tuning: float = DEFAULT_MIXTURE_TUNING, fix_share: float | None = None) -> float:
    """P(the gate's one-sided hybrid test rejects at some look) when the studentized
    effect at the deadline has mean ``drift`` (a Brownian motion in information
    time looked at ``looks`` evenly spaced times; the mixture at every look at
    ``share * alpha``, the Welch look at the last one at ``fix_share * alpha``,
    default ``(1 - share) * alpha``)."""
    looks = max(1, min(int(looks), _MAX_LOOKS))
    fs = (1.0 - share) if fix_share is None else fix_share
    ts, b = _design(looks, float(alpha), float(share), float(tuning), float(fs))
    dt = 1.0 / looks
    sd = math.sqrt(dt)
    lo = min(0.0, drift) - 8.0
    hi = float(b.max())
    x = np.arange(lo, hi + _GRID, _GRID)
    # first look: S_{t1} ~ N(drift t1, t1)
    f = np.exp(-0.5 * ((x - drift * dt) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
    f[x >= b[0]] = 0.0
    if looks > 1:
        k = np.arange(-int(8 * sd / _GRID) - 1, int(8 * sd / _GRID) + 2) * _GRID
        kern = np.exp(-0.5 * ((k - drift * dt) / sd) ** 2) / (sd * math.sqrt(2 * math.pi)) * _GRID
        half = len(k) // 2
        for i in range(1, looks):
            f = np.convolve(f, kern)[half:half + len(x)]
            f[x >= b[i]] = 0.0
    # mass lost below the grid is negligible (8 sd); what remains did not reject
    stay = float(f.sum() * _GRID)
    return float(min(max(1.0 - stay, 0.0), 1.0))


@lru_cache(maxsize=1024)
def drift_for_power(power: float, *, looks: int, alpha: float, share: float = DEFAULT_SEQUENTIAL_SHARE,
                    tuning: float = DEFAULT_MIXTURE_TUNING, fix_share: float | None = None) -> float:
    """The drift (expected studentized effect at the deadline) at which the hybrid
    test has the given power."""
    def gap(d: float) -> float:
        return hybrid_power(d, looks=looks, alpha=alpha, share=share, tuning=tuning, fix_share=fix_share) - power
    return float(brentq(gap, 0.0, 15.0, xtol=1e-6))


# --- the report ---------------------------------------------------------------------------


def _per_minute(units_per_minute: float | Mapping[str, float], name: str) -> float:
    if isinstance(units_per_minute, Mapping):
        return float(units_per_minute.get(name, 0.0))
    return float(units_per_minute)


def _test_scale(spec: KpiSpec, live: RunningStats, na: float, nb: float) -> tuple[str, float, float]:
    """(mode, se of the tested effect, margin on the test scale) as the gate will test."""
    var = max(live.variance, 0.0)
    inv = 1.0 / na + 1.0 / nb
    mean = live.mean
    clearly_positive = mean > 0.0 and mean > NEAR_ZERO_SE * math.sqrt(var / max(nb, 1.0))
    if spec.margin_abs is None and clearly_positive:
        return "relative", math.sqrt(var / (mean * mean) * inv), kpi_margin(spec, "relative", mean)
    return "absolute", math.sqrt(var * inv), kpi_margin(spec, "absolute", mean)


def _margin_back(spec: KpiSpec, mode: str, m_test: float, mean: float) -> float:
    """A test-scale margin as the KPI configures it (relative on the ratio, or absolute)."""
    if spec.margin_abs is not None:
        return m_test
    if mode == "relative":
        return math.expm1(m_test) if spec.direction == "decrease" else -math.expm1(-m_test)
    return m_test / abs(mean) if mean else math.inf


def canary_power(
    kpis: Mapping[str, KpiSpec],
    live: Mapping[str, RunningStats],
    *,
    units_per_minute: float | Mapping[str, float],
    traffic_fraction: float,
    duration_minutes: float,
    confidence: float,
    check_interval_minutes: float = 1.0,
    target_power: float = TARGET_POWER,
    planned_extension: bool = False,
    sequential_alpha_share: float = DEFAULT_SEQUENTIAL_SHARE,
    mixture_tuning_fraction: float = DEFAULT_MIXTURE_TUNING,
    extension_alpha_share: float = DEFAULT_EXTENSION_SHARE,
) -> PowerReport:
    """What the gate can show with this canary (see the module docstring).
    ``units_per_minute``: all traffic (both arms) per minute, one number for every
    KPI or per KPI; ``planned_extension``: the canary may be extended once
    (``inconclusive_action="extend"``), so its deadline look has less alpha."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not 0.0 < traffic_fraction < 1.0:
        raise ValueError(f"traffic_fraction must be in (0, 1), got {traffic_fraction}")
    if not duration_minutes > 0.0 or not check_interval_minutes > 0.0:
        raise ValueError("duration_minutes and check_interval_minutes must be positive")
    if not 0.0 < target_power < 1.0:
        raise ValueError(f"target_power must be in (0, 1), got {target_power}")
    alpha = 1.0 - confidence
    fix_share = (1.0 - sequential_alpha_share) * fixed_weight(extension_alpha_share, planned_extension, False)
    design = {"alpha": alpha, "share": sequential_alpha_share, "tuning": mixture_tuning_fraction,
              "fix_share": fix_share}

    def looks_for(minutes: float) -> int:
        return max(1, math.ceil(minutes / check_interval_minutes - 1e-9))

    looks = looks_for(duration_minutes)
    d80 = drift_for_power(target_power, looks=looks, **design)

    guards: list[GuardrailPower] = []
    scored: list[tuple[str, float, float, float]] = []   # name, weight, se, good sign
    for name, spec in kpis.items():
        st = live.get(name) or RunningStats()
        upm = _per_minute(units_per_minute, name)
        na, nb = upm * (1.0 - traffic_fraction) * duration_minutes, upm * traffic_fraction * duration_minutes
        kind = "absolute" if spec.margin_abs is not None else "relative"
        margin_cfg = spec.margin_abs if spec.margin_abs is not None else spec.margin
        usable = st.n >= 2 and na >= 2 and nb >= 2
        mode, se, m_test = _test_scale(spec, st, na, nb) if usable else ("none", 0.0, 0.0)
        if spec.weight > 0 and usable and mode == "relative" and spec.margin_abs is None:
            scored.append((name, spec.weight, se, 1.0 if spec.direction == "increase" else -1.0))
        elif spec.weight > 0 and usable and spec.margin_abs is not None and st.mean > 0:
            # the gate scores this KPI on its log ratio even though its margin is absolute
            scored.append((name, spec.weight, _test_scale(KpiSpec(direction=spec.direction), st, na, nb)[1],
                           1.0 if spec.direction == "increase" else -1.0))
        if not spec.critical:
            continue
        common = dict(kpi=name, margin=margin_cfg, margin_kind=kind, live_n=st.n,
                      live_mean=st.mean if st.n else None, live_sd=st.std if st.n > 1 else None,
                      n_control=na, n_canary=nb)
        if not usable:
            why = ("fewer than 2 live samples" if st.n < 2 else "no expected traffic")
            guards.append(GuardrailPower(mode="none", se=None, power=None, powered=False,
                                         note=f"cannot predict: {why}", **common))
            continue
        if se <= 0.0:
            guards.append(GuardrailPower(mode=mode, se=0.0, power=1.0, powered=True,
                                         note="no variance in the live window", **common))
            continue
        power = hybrid_power(m_test / se, looks=looks, **design)
        powered = power >= target_power
        m80 = dur80 = None
        if not powered:
            m80 = _margin_back(spec, mode, d80 * se, st.mean)
            if m_test > 0.0:
                dur = duration_minutes * (d80 * se / m_test) ** 2
                for _ in range(3):   # the number of looks moves with the duration
                    d = drift_for_power(target_power, looks=looks_for(dur), **design)
                    dur = duration_minutes * (d * se / m_test) ** 2
                dur80 = math.ceil(dur / check_interval_minutes - 1e-9) * check_interval_minutes
        guards.append(GuardrailPower(mode=mode, se=se, power=power, powered=powered, margin_for_power=m80,
                                     duration_for_power_minutes=dur80, **common))

    score_mde = score_se = None
    if scored:
        wsum = sum(w for _, w, _, _ in scored)
        score_se = sum(w * s for _, w, s, _ in scored) / wsum      # the gate's bound (gate.score_se)
        up = sum(w for _, w, _, g in scored if g > 0) >= wsum / 2
        x = d80 * score_se
        score_mde = math.expm1(x) if up else -math.expm1(-x)
    under = [g.kpi for g in guards if not g.powered]
    needs = [g.duration_for_power_minutes for g in guards if g.duration_for_power_minutes is not None]
    note = None if scored else "no weighted KPI with live data: the improvement score cannot be predicted"
    return PowerReport(
        confidence=confidence, target_power=target_power, duration_minutes=float(duration_minutes),
        traffic_fraction=traffic_fraction, check_interval_minutes=float(check_interval_minutes), looks=looks,
        alpha_sequential=sequential_alpha_share * alpha, alpha_fixed=fix_share * alpha,
        score_kpis=[n for n, _, _, _ in scored], score_mde=score_mde, score_se=score_se,
        guardrails=guards, underpowered=under, duration_for_power_minutes=max(needs) if needs else None,
        note=note)


def plan_canary(
    kpis: Mapping[str, KpiSpec],
    live: Mapping[str, RunningStats],
    *,
    units_per_minute: float | Mapping[str, float],
    traffic_fraction: float,
    duration_minutes: float,
    confidence: float,
    underpowered_action: Literal["run", "lengthen", "skip"] = "run",
    max_duration_minutes: float | None = None,
    check_interval_minutes: float = 1.0,
    planned_extension: bool = False,
    lengthen_for_score: bool = False,
    expected_gain: float | None = None,
    **kw,
) -> CanaryPlan:
    """Apply the underpowered-guardrail policy to :func:`canary_power`'s report:

    - every guardrail powered (or no guardrail) -> run as planned;
    - ``"run"`` -> run as planned anyway (the report says which guardrail is weak);
    - ``"skip"`` -> do not run a canary this cycle;
    - ``"lengthen"`` -> run for the duration that powers every guardrail, at most
      ``max_duration_minutes`` (None: the planned duration, i.e. no lengthening);
      if even that is not enough, run for the maximum and say so. A guardrail
      that cannot be predicted (no live data) is never a reason to lengthen or skip.

    ``lengthen_for_score`` (with ``"lengthen"``): the improvement score is a reason to
    lengthen too. The canary runs for the shortest duration whose score MDE reaches
    ``expected_gain`` (the proposal's predicted improvement, relative, good direction), at
    most ``max_duration_minutes``; an unknown gain (None: an exploration step) runs for the
    maximum. The gate's anytime-valid test still stops a clear canary early, so a longer
    window costs time only on the canaries that need it.
    """
    if underpowered_action not in ("run", "lengthen", "skip"):
        raise ValueError(f"underpowered_action must be 'run', 'lengthen' or 'skip', got {underpowered_action!r}")
    cap = duration_minutes if max_duration_minutes is None else max(float(max_duration_minutes), duration_minutes)
    args = dict(units_per_minute=units_per_minute, traffic_fraction=traffic_fraction, confidence=confidence,
                check_interval_minutes=check_interval_minutes, planned_extension=planned_extension, **kw)
    rep = canary_power(kpis, live, duration_minutes=duration_minutes, **args)
    # A guardrail whose power cannot be predicted (no live data yet) is reported, but it is no
    # reason to skip or lengthen a canary: a new installation would otherwise never run one.
    weak = [g for g in rep.guardrails if not g.powered and g.power is not None]
    if underpowered_action == "lengthen" and lengthen_for_score and cap > duration_minutes \
            and rep.score_mde is not None and (expected_gain is None or rep.score_mde > expected_gain):
        return _lengthen_for_score(kpis, live, rep, weak, duration_minutes, cap, expected_gain, args)
    if not weak:
        unknown = [g.kpi for g in rep.guardrails if g.power is None]
        reason = (f"every guardrail's non-inferiority test has at least {100 * rep.target_power:.0f} % power"
                  if not unknown else
                  f"the power of {', '.join(unknown)} cannot be predicted yet (no live data); run as planned")
        return CanaryPlan(True, float(duration_minutes), float(duration_minutes), "run", reason, rep)
    desc = ", ".join(f"{g.kpi} ({'unknown' if g.power is None else f'{100 * g.power:.0f} %'})" for g in weak)
    if underpowered_action == "skip":
        return CanaryPlan(False, float(duration_minutes), float(duration_minutes), "skip",
                          f"underpowered guardrail(s) {desc}: no canary this cycle", rep)
    if underpowered_action == "lengthen":
        need = rep.duration_for_power_minutes
        if need is not None and need > duration_minutes and cap > duration_minutes:
            dur = min(need, cap)
            rep2 = canary_power(kpis, live, duration_minutes=dur, **args)
            still = [g.kpi for g in rep2.guardrails if not g.powered]
            tail = (f"; still underpowered at the cap: {', '.join(still)}" if still else "")
            return CanaryPlan(True, float(dur), float(duration_minutes), "lengthen",
                              f"underpowered guardrail(s) {desc} at {duration_minutes:g} min: lengthened to "
                              f"{dur:g} min (needed {need:g}, max {cap:g}){tail}", rep2)
        return CanaryPlan(True, float(duration_minutes), float(duration_minutes), "run",
                          f"underpowered guardrail(s) {desc}; cannot lengthen (needed "
                          f"{'unknown' if need is None else f'{need:g}'} min, max {cap:g} min): run as planned", rep)
    return CanaryPlan(True, float(duration_minutes), float(duration_minutes), "run",
                      f"underpowered guardrail(s) {desc}: run as planned (underpowered_action=run)", rep)


def _lengthen_for_score(kpis, live, rep: PowerReport, weak: list[GuardrailPower], duration: float, cap: float,
                        gain: float | None, args: dict) -> CanaryPlan:
    """The ``lengthen_for_score`` branch of :func:`plan_canary`: the score's MDE (and any
    underpowered guardrail) sets the duration, at most ``cap``."""
    step = float(args["check_interval_minutes"])
    if gain is None or not gain > 0.0:
        dur, why = cap, "the step's gain is unknown (exploration): the longest canary allowed"
    else:
        target = math.log1p(gain)
        dur = duration
        for _ in range(4):   # the score's se falls as 1/sqrt(duration); the looks move with it
            r = canary_power(kpis, live, duration_minutes=dur, **args)
            x = math.log1p(r.score_mde) if r.score_mde is not None else target
            dur = min(cap, max(duration, dur * (x / target) ** 2))
        dur = min(cap, math.ceil(dur / step - 1e-9) * step)
        why = f"the step's predicted gain {100 * gain:+.2g} % needs {dur:g} min for the score's MDE"
    need = rep.duration_for_power_minutes
    if weak and need is not None:
        dur = min(cap, max(dur, need))
        why += f"; underpowered guardrail(s) {', '.join(g.kpi for g in weak)} need {need:g} min"
    rep2 = canary_power(kpis, live, duration_minutes=dur, **args)
    mde = rep2.score_mde
    tail = f" (score MDE {100 * mde:.2g} % at {dur:g} min, max {cap:g})" if mde is not None else ""
    still = [g.kpi for g in rep2.guardrails if not g.powered and g.power is not None]
    if still:
        tail += f"; still underpowered: {', '.join(still)}"
    if dur <= duration:
        return CanaryPlan(True, float(duration), float(duration), "run", f"{why}{tail}: run as planned", rep2)
    return CanaryPlan(True, float(dur), float(duration), "lengthen", f"lengthened to {dur:g} min: {why}{tail}", rep2)


def sizing_mde(config: Config, live: Mapping[str, RunningStats],
               units_per_minute: float | Mapping[str, float]) -> float | None:
    """The score's MDE the optimizer sizes its step for: at the longest canary the policy
    allows (``max_canary_duration_minutes`` when the score may lengthen the canary, see
    :func:`plan_canary_for`), else at the planned duration."""
    ap = config.autopilot
    minutes = ap.max_canary_minutes if score_may_lengthen(config) else ap.canary_duration_minutes
    return canary_power(config.kpis, live, units_per_minute=units_per_minute,
                        traffic_fraction=ap.canary_traffic_percentage, duration_minutes=minutes,
                        confidence=ap.statistical_confidence_threshold,
                        check_interval_minutes=ap.check_interval_minutes,
                        planned_extension=ap.inconclusive_action == "extend").score_mde


def score_may_lengthen(config: Config) -> bool:
    """Whether the policy lets the step's predicted gain lengthen a canary
    (``underpowered_action: lengthen``, ``optimizer_step_sizing: canary_mde`` and a
    ``max_canary_duration_minutes`` above the planned duration)."""
    ap = config.autopilot
    return (ap.underpowered_action == "lengthen" and ap.optimizer_step_sizing == "canary_mde"
            and ap.max_canary_minutes > ap.canary_duration_minutes)


def plan_canary_for(config: Config, live: Mapping[str, RunningStats],
                    units_per_minute: float | Mapping[str, float], *, optimizer_step: bool = False,
                    expected_gain: float | None = None) -> CanaryPlan:
    """:func:`plan_canary` with every setting read from the configuration.
    ``optimizer_step``: the canary tries the optimizer's step (not an operator's proposal),
    predicted to gain ``expected_gain`` (None: unknown); with ``underpowered_action:
    lengthen`` and ``optimizer_step_sizing: canary_mde`` its gain may lengthen the canary."""
    ap = config.autopilot
    return plan_canary(config.kpis, live, units_per_minute=units_per_minute,
                       traffic_fraction=ap.canary_traffic_percentage, duration_minutes=ap.canary_duration_minutes,
                       confidence=ap.statistical_confidence_threshold, underpowered_action=ap.underpowered_action,
                       max_duration_minutes=ap.max_canary_minutes, check_interval_minutes=ap.check_interval_minutes,
                       planned_extension=ap.inconclusive_action == "extend",
                       lengthen_for_score=optimizer_step and score_may_lengthen(config), expected_gain=expected_gain)
