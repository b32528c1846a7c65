"""The canary KPI gate: a hybrid judge of canary against control.

``evaluate_gate`` is pure: per-arm sufficient statistics in, a decision with
its full explanation out. It needs no state between looks: the state machine
calls it at every check (``final=False``) with the current statistics and the
elapsed fraction of the window, and once at the deadline (``final=True``).

alpha = 1 - confidence is split (:mod:`._gate_hybrid`): ``alpha_seq =
sequential_alpha_share * alpha`` for an anytime-valid one-sided normal-mixture
test at every look (:mod:`.sequential`), ``alpha_fix = alpha - alpha_seq`` for
ONE fixed-horizon one-sided Welch look at the deadline. Each test's hybrid
p-value ``min(p_seq / share, p_fix / (1 - share))`` is valid at any look (a
union bound), so every rule below compares it with alpha: before the deadline
that is the mixture at alpha_seq, at it also the Welch test at alpha_fix.
``sequential_alpha_share=1`` is the pure mixture test.

Per KPI (see :mod:`.effect`):

- effect: relative lift with delta-method variance and Welch-Satterthwaite df
  (absolute difference when the control mean is near zero), signed so that
  positive is good (``direction``); ``margin`` is the relative
  non-inferiority margin (times ``|control mean|`` in absolute mode);
- harm: one-sided test of "good effect < -margin";
- non-inferiority: one-sided test of "good effect > -margin";
- reported interval: the two one-sided hybrid bounds, each at ``confidence``.

Decision, in this order:

1. sample-ratio mismatch in a KPI with data (the chi-square statistic of its
   arm counts against ``traffic_fraction``, as an anytime-valid p-value,
   p < ``srm_threshold``) -> ``inconclusive`` (``action="rollback"``: results
   that cannot be trusted are never extended);
2. harm in any KPI, Holm step-down over the configured KPIs at alpha ->
   ``rollback``;
3. at the deadline, a critical KPI with fewer than ``min_samples`` in an arm ->
   ``rollback``; any other such KPI -> ``inconclusive`` naming it;
4. every KPI has data and is non-inferior, and the weighted improvement score is
   significant (one-sided at alpha) -> ``proceed``;
5. at the deadline -> ``inconclusive``; before it -> ``continue``.

``inconclusive`` carries ``action``: ``inconclusive_action`` ("rollback" or
"extend"; ``extend=True`` with the latter). The mixture is tuned in information
time (``elapsed_fraction``), so an extension keeps its guarantees: keep calling
with ``elapsed_fraction`` measured against the original window (it then exceeds
1), and pass ``inconclusive_action="rollback"`` after the one extension. The
fixed look is spent at the original deadline only (``fixed_look=None``: at
``final`` with an elapsed fraction below 1.5); the extension's deadline is
judged by the mixture alone.
"""

from __future__ import annotations

import math
from typing import Mapping

from ..schemas.config import KpiSpec
from ._gate_hybrid import (DEFAULT_MIXTURE_TUNING, DEFAULT_SEQUENTIAL_SHARE, FIXED_LOOK_BEFORE, OneSided, Split,
                           exact, greater, make_split)
from ._gate_types import METHOD, METHOD_SEQUENTIAL, Action, GateDecision, KpiVerdict, Recommendation
from .effect import estimate_effect
from .stats import RunningStats, srm_pvalue, srm_pvalue_anytime

__all__ = ["evaluate_gate", "GateDecision", "KpiVerdict", "Recommendation", "Action", "METHOD",
           "METHOD_SEQUENTIAL", "SRM_THRESHOLD", "DEFAULT_SEQUENTIAL_SHARE", "DEFAULT_MIXTURE_TUNING"]

SRM_THRESHOLD = 0.001
_MIN_FRACTION = 1e-3
_NONE = OneSided(1.0, None, 1.0)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


class _Kpi:
    """Working values for one KPI (not exported)."""

    __slots__ = ("name", "spec", "a", "b", "eff", "g", "m", "harm", "ni", "lo", "hi", "srm", "srm_chi2")

    def __init__(self, name: str, spec: KpiSpec, a: RunningStats, b: RunningStats) -> None:
        self.name, self.spec, self.a, self.b = name, spec, a, b
        self.eff = None
        self.g = 1.0 if spec.direction == "increase" else -1.0
        self.m = 0.0
        self.harm = self.ni = _NONE
        self.lo = self.hi = 0.0
        self.srm: float | None = None
        self.srm_chi2: float | None = None

    @property
    def p_harm(self) -> float:
        return self.harm.p

    @property
    def p_ni(self) -> float:
        return self.ni.p


def evaluate_gate(
    kpis: Mapping[str, KpiSpec],
    control: Mapping[str, RunningStats],
    canary: Mapping[str, RunningStats],
    *,
    confidence: float,
    min_samples: int,
    final: bool,
    traffic_fraction: float = 0.2,
    elapsed_fraction: float = 1.0,
    inconclusive_action: str = "rollback",
    srm_threshold: float = SRM_THRESHOLD,
    sequential_alpha_share: float = DEFAULT_SEQUENTIAL_SHARE,
    mixture_tuning_fraction: float = DEFAULT_MIXTURE_TUNING,
    fixed_look: bool | None = None,
) -> GateDecision:
    """Judge the canary at one look (see the module docstring for the rule).

    ``sequential_alpha_share`` (0, 1]: the share of alpha the every-look
    mixture test spends (1: the pure mixture test, no fixed look);
    ``mixture_tuning_fraction`` > 0: the elapsed fraction at which the
    mixture's boundary is lowest; ``fixed_look``: run the fixed-horizon tests at
    this look (None: at ``final`` before an extension, i.e. elapsed < 1.5).
    Spend the fixed look once per canary."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if inconclusive_action not in ("rollback", "extend"):
        raise ValueError(f"inconclusive_action must be 'rollback' or 'extend', got {inconclusive_action!r}")
    if not 0.0 < sequential_alpha_share <= 1.0:
        raise ValueError(f"sequential_alpha_share must be in (0, 1], got {sequential_alpha_share}")
    if not mixture_tuning_fraction > 0.0 or math.isinf(mixture_tuning_fraction):
        raise ValueError(f"mixture_tuning_fraction must be positive, got {mixture_tuning_fraction}")
    alpha = 1.0 - confidence
    frac = max(float(elapsed_fraction), _MIN_FRACTION) if math.isfinite(elapsed_fraction) else 1.0
    if fixed_look is None:
        fixed_look = bool(final) and frac < FIXED_LOOK_BEFORE
    sp = make_split(alpha, float(sequential_alpha_share), float(mixture_tuning_fraction), frac, bool(fixed_look))
    min_n = max(int(min_samples), 2)

    work: list[_Kpi] = []
    for name, spec in kpis.items():
        k = _Kpi(name, spec, control.get(name) or RunningStats(), canary.get(name) or RunningStats())
        work.append(k)
        if k.a.n < min_n or k.b.n < min_n:
            continue
        eff = estimate_effect(k.a, k.b)
        k.eff = eff
        k.m = spec.margin if eff.mode == "relative" else spec.margin * abs(k.a.mean)
        k.srm = srm_pvalue_anytime(k.a.n, k.b.n, traffic_fraction, elapsed_fraction=frac, alpha=srm_threshold)
        k.srm_chi2 = srm_pvalue(k.a.n, k.b.n, traffic_fraction)
        good = k.g * eff.estimate + k.m       # > 0: within the margin
        if eff.se > 0.0:
            k.ni, k.harm = greater(sp, good / eff.se, eff.df), greater(sp, -good / eff.se, eff.df)
            half = sp.half_width(eff.se, eff.df)
            k.lo, k.hi = eff.estimate - half, eff.estimate + half
        else:  # both arms constant: the effect is known exactly
            k.ni, k.harm = exact(sp, good < 0.0), exact(sp, good >= 0.0)
            k.lo = k.hi = eff.estimate

    # Holm step-down over all configured KPIs (a KPI without data never rejects).
    n_kpis = len(work)
    harmed: set[str] = set()
    for i, k in enumerate(sorted((k for k in work if k.eff is not None), key=lambda k: k.p_harm)):
        if k.p_harm <= alpha / (n_kpis - i):
            harmed.add(k.name)
        else:
            break

    # Weighted improvement score over relative-mode KPIs with weight > 0 (a KPI
    # in absolute mode, baseline ~ 0, stays a guardrail only). Its
    # standard error assumes the worst case (perfectly correlated KPIs):
    # se <= sum w_i se_i / W, valid whatever the correlation between KPIs.
    scored = [k for k in work if k.eff is not None and k.eff.mode == "relative" and k.spec.weight > 0]
    score = score_lo = None
    imp = _NONE
    if scored:
        wsum = sum(k.spec.weight for k in scored)
        score = sum(k.spec.weight * k.g * k.eff.estimate for k in scored) / wsum
        se = sum(k.spec.weight * k.eff.se for k in scored) / wsum
        df = min(k.eff.df for k in scored)
        if se > 0.0:
            imp = greater(sp, score / se, df)
            score_lo = score - sp.half_width(se, df)
        else:
            imp = exact(sp, score <= 0)
            score_lo = score
    p_imp = imp.p if scored else None

    verdicts = [_verdict(k, harmed, sp, min_n) for k in work]
    srm_ps = [(k.srm, k.name) for k in work if k.srm is not None]
    srm_min = min(srm_ps) if srm_ps else None

    def decision(rec: Recommendation, reason: str, significance: float, action: Action, **kw) -> GateDecision:
        up = down = None
        if score is not None:
            up, down = (100.0 * score, None) if score >= 0 else (None, -100.0 * score)
        kw.setdefault("improvement_pct", up)
        kw.setdefault("degradation_pct", down)
        return GateDecision(
            rec, reason, verdicts, min(max(significance, 0.0), 1.0), confidence,
            method=METHOD if sp.share < 1.0 else METHOD_SEQUENTIAL,
            action=action, extend=action == "extend", final=final, elapsed_fraction=float(elapsed_fraction),
            score=score, score_lower=score_lo, p_improvement=p_imp,
            srm_p=srm_min[0] if srm_min else None, mixture_r=sp.r,
            alpha_sequential=sp.alpha_seq, alpha_fixed=alpha - sp.alpha_seq, fixed_look=sp.uses_fixed,
            p_improvement_sequential=imp.p_seq if scored else None,
            p_improvement_fixed=imp.p_fix if scored else None, **kw)

    inconclusive_act: Action = "extend" if inconclusive_action == "extend" else "rollback"
    judged = _how(sp)

    # 1. Sample-ratio mismatch: nothing else can be trusted.
    if srm_min is not None and srm_min[0] < srm_threshold:
        bad = [k for k in work if k.srm is not None and k.srm < srm_threshold]
        names = ", ".join(f"{k.name} (control {k.a.n}, canary {k.b.n}, p={k.srm:.2g})" for k in bad)
        return decision("inconclusive",
                        f"sample ratio mismatch against canary share {traffic_fraction:g}: {names}",
                        srm_min[0], "rollback")

    # 2. Harm, family-wise controlled (Holm).
    if harmed:
        hk = [k for k in work if k.name in harmed]
        rel = [-100.0 * k.g * k.eff.estimate for k in hk if k.eff.mode == "relative"]
        names = ", ".join(f"{k.name} (p={k.p_harm:.2g})" for k in hk)
        return decision("rollback", f"harm beyond the margin in {names} (Holm at alpha={_fmt(alpha)}; {judged})",
                        min(k.p_harm for k in hk), "rollback",
                        degradation_pct=max(rel) if rel else None, improvement_pct=None)

    missing = [k for k in work if k.eff is None]
    evidence = max([p_imp if p_imp is not None else 1.0] + [k.p_ni for k in work])

    # 3. Missing data at the deadline is never a pass.
    if final and missing:
        crit = [k for k in missing if k.spec.critical]
        if crit:
            return decision("rollback", "no data for critical KPI " + _names(crit, min_n), 1.0, "rollback")
        return decision("inconclusive", "no data for KPI " + _names(missing, min_n), 1.0, inconclusive_act)

    # 4. Proceed: all non-inferior and a significant weighted improvement.
    not_ni = [k for k in work if k.eff is None or k.p_ni > alpha]
    if not missing and not not_ni and p_imp is not None and p_imp <= alpha:
        return decision("proceed",
                        f"every KPI non-inferior within its margin and weighted improvement "
                        f"{100 * score:+.3g}% significant (p={p_imp:.2g} <= {_fmt(alpha)}; {judged})",
                        evidence, "proceed")

    # 5. Not yet, or never.
    why = []
    if missing:
        why.append("waiting for data on " + _names(missing, min_n))
    if not_ni and len(not_ni) > len(missing):
        why.append("non-inferiority not shown for " + ", ".join(
            f"{k.name} (p={k.p_ni:.2g})" for k in not_ni if k.eff is not None))
    if p_imp is None:
        if not missing:
            why.append("no weighted KPI with a relative lift to score the improvement")
    elif p_imp > alpha:
        why.append(f"weighted improvement {100 * score:+.3g}% not significant (p={p_imp:.2g})")
    reason = "; ".join(why) or "undecided"
    if final:
        return decision("inconclusive", f"{reason} ({judged})", evidence, inconclusive_act)
    return decision("continue", reason, evidence, "continue")


def _how(sp: Split) -> str:
    seq = f"anytime mixture at {_fmt(sp.alpha_seq)}"
    return f"{seq} + fixed-horizon Welch at {_fmt(sp.alpha_fix)}" if sp.uses_fixed else seq


def _names(ks: list[_Kpi], min_n: int) -> str:
    return ", ".join(f"{k.name} (control {k.a.n}, canary {k.b.n}, need {min_n} per arm)" for k in ks)


def _verdict(k: _Kpi, harmed: set[str], sp: Split, min_n: int) -> KpiVerdict:
    spec, a, b, eff, alpha = k.spec, k.a, k.b, k.eff, sp.alpha
    if eff is None:
        return KpiVerdict(
            k.name, spec.direction, spec.critical, a.n, b.n,
            a.mean if a.n else None, b.mean if b.n else None, None, None, None, "no_data",
            f"fewer than {min_n} samples in an arm (control {a.n}, canary {b.n})",
            srm_p=k.srm, srm_chi2_p=k.srm_chi2)
    unit = "" if eff.mode == "relative" else " (absolute)"
    # good-direction lower bound of the effect
    good_lo = k.lo if k.g > 0 else -k.hi
    if k.name in harmed:
        verdict, p = "harm", k.p_harm
        rule = f"harm beyond margin {_fmt(k.m)}{unit}: p={k.p_harm:.3g}, rejected by Holm at {_fmt(alpha)}"
    elif k.p_ni <= alpha and good_lo > 0.0:
        verdict, p = "improvement", k.p_ni
        rule = f"better than control: bound excludes 0, non-inferior (p={k.p_ni:.3g})"
    elif k.p_ni <= alpha:
        verdict, p = "non_inferior", k.p_ni
        rule = f"non-inferior within margin {_fmt(k.m)}{unit} (p={k.p_ni:.3g} <= {_fmt(alpha)})"
    else:
        verdict, p = "neutral", min(k.p_ni, k.p_harm)
        rule = f"undecided: p(non-inferior)={k.p_ni:.3g}, p(harm)={k.p_harm:.3g}"
    return KpiVerdict(
        k.name, spec.direction, spec.critical, a.n, b.n, a.mean, b.mean, eff.lift, eff.diff, p, verdict,
        f"{rule} [{_how(sp)}]",
        mode=eff.mode, estimate=eff.estimate, interval=(k.lo, k.hi), se=eff.se, df=eff.df, margin=k.m,
        p_harm=k.p_harm, p_noninferior=k.p_ni, srm_p=k.srm, srm_chi2_p=k.srm_chi2,
        p_harm_sequential=k.harm.p_seq, p_harm_fixed=k.harm.p_fix,
        p_noninferior_sequential=k.ni.p_seq, p_noninferior_fixed=k.ni.p_fix)
