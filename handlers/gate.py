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

- effect: the log of the ratio of means with delta-method variance and
  Welch-Satterthwaite df (the absolute difference when a mean is near zero, or
  when the KPI has an absolute margin ``margin_abs``), signed so that positive is
  good (``direction``). A relative ``margin`` m is a bound on the ratio: the
  canary may be down to ``(1 - m)`` x the control ("increase") or up to
  ``(1 + m)`` x ("decrease"), i.e. ``-log(1 - m)`` or ``log(1 + m)`` on the
  log scale (``m * |control mean|`` if the effect fell back to absolute mode);
  ``margin_abs`` is in the KPI's units;
- harm: one-sided test of "good effect < -margin";
- non-inferiority: one-sided test of "good effect > -margin";
- reported: the relative lift (ratio - 1) as ``estimate`` with its interval
  (the two one-sided hybrid bounds, each at ``confidence``, mapped from the log
  scale) and the relative ``margin``; ``log_ratio``, ``se`` and ``df`` are the
  test's own scale. In absolute mode everything is in the KPI's units.

Guardrails and success metrics: a critical KPI is a guardrail (harm and
non-inferiority); it enters the improvement score only with an explicit weight
(``KpiSpec.weight`` defaults to 0 for critical KPIs). The score is the weighted
mean of the good-signed log ratios of the weighted KPIs in relative mode,
reported as a relative change in the good direction (for one KPI: its lift, or
its drop for a "decrease" KPI); its standard error is ``sum w_i se_i / sum w_i``,
the exact bound on ``sd(sum w_i x_i) / sum w_i`` whatever the (unknown)
correlation between the KPIs (equal to it when they are perfectly correlated;
the arms' statistics carry no cross-KPI covariance to do better).

Decision, in this order:

1. sample-ratio mismatch in a KPI with data (the chi-square statistic of its
   arm counts against ``traffic_fraction``, as an anytime-valid p-value,
   p < ``srm_threshold``) -> ``inconclusive`` (``action="rollback"``: results
   that cannot be trusted are never extended);
2. harm in any KPI -> ``rollback``; else shown worse: the weighted improvement
   score significantly below zero (the improvement's test mirrored) -> ``rollback``.
   Both are one Holm step-down family at alpha (each KPI's harm, and the score's
   "below zero"), so a false rollback of either kind stays <= alpha. A candidate
   the canary has shown to be worse is a conclusive "no", even when no KPI is past
   its harm margin (a success metric's margin tolerates noise; it is no licence
   to deploy a loss), and the anytime-valid test lets it stop the canary early;
3. at the deadline, a critical KPI with fewer than ``min_samples`` in an arm ->
   ``rollback``; any other such KPI -> ``inconclusive`` naming it;
4. every KPI has data and is non-inferior, and the weighted improvement score is
   significant (one-sided at alpha) -> ``proceed``;
5. at the deadline -> ``inconclusive``; before it -> ``continue``.

``inconclusive`` carries ``action``: ``inconclusive_action`` ("rollback" or
"extend"; ``extend=True`` with the latter). The mixture is tuned in information
time (``elapsed_fraction``), so an extension keeps its guarantees: keep calling
with ``elapsed_fraction`` measured against the original window (it then exceeds
1), and pass ``inconclusive_action="rollback"`` after the one extension.

The extension gets its own share of alpha: the fixed-horizon share
``1 - sequential_alpha_share`` is split between the original deadline look and
the extension's deadline look, ``(1 - e)`` and ``e`` with ``e =
extension_alpha_share`` (default 1/3), when an extension is planned
(``planned_extension``; None: inferred, True when ``inconclusive_action="extend"``
or at an elapsed fraction >= 1.5, the extension's own looks). Without a planned
extension the deadline look spends the whole fixed share, as before. Each look
is a one-sided Welch test on the cumulative data; with the mixture's share the
three add up to alpha (union bound), so the family-wise error over window and
extension stays <= alpha. A canary lengthened before it started (power) is not
an extension: measure ``elapsed_fraction`` against its lengthened window.
"""

from __future__ import annotations

import math
from typing import Mapping

from ..schemas.config import KpiSpec
from ._gate_hybrid import (DEFAULT_EXTENSION_SHARE, DEFAULT_MIXTURE_TUNING, DEFAULT_SEQUENTIAL_SHARE,
                           FIXED_LOOK_BEFORE, OneSided, Split, exact, fixed_weight, greater, make_split)
from ._gate_types import METHOD, METHOD_SEQUENTIAL, Action, GateDecision, KpiVerdict, Recommendation
from .effect import estimate_effect
from .stats import RunningStats, srm_pvalue, srm_pvalue_anytime

__all__ = ["evaluate_gate", "GateDecision", "KpiVerdict", "Recommendation", "Action", "METHOD",
           "METHOD_SEQUENTIAL", "SRM_THRESHOLD", "DEFAULT_SEQUENTIAL_SHARE", "DEFAULT_MIXTURE_TUNING",
           "DEFAULT_EXTENSION_SHARE", "kpi_margin"]

SRM_THRESHOLD = 0.001
_MIN_FRACTION = 1e-3
_NONE = OneSided(1.0, None, 1.0)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


class _Kpi:
    """Working values for one KPI (not exported)."""

    __slots__ = ("name", "spec", "a", "b", "eff", "rel", "g", "m", "harm", "ni", "lo", "hi", "srm", "srm_chi2")

    def __init__(self, name: str, spec: KpiSpec, a: RunningStats, b: RunningStats) -> None:
        self.name, self.spec, self.a, self.b = name, spec, a, b
        self.eff = None
        self.rel = None     # the relative (log-ratio) effect for the score, when there is one
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
    extension_alpha_share: float = DEFAULT_EXTENSION_SHARE,
    planned_extension: bool | None = None,
) -> GateDecision:
    """Judge the canary at one look (see the module docstring for the rule).

    ``sequential_alpha_share`` (0, 1]: the share of alpha the every-look
    mixture test spends (1: the pure mixture test, no fixed look);
    ``mixture_tuning_fraction`` > 0: the elapsed fraction at which the
    mixture's boundary is lowest; ``fixed_look``: run the fixed-horizon tests at
    this look (None: at ``final``). ``extension_alpha_share`` [0, 1): the part of
    the fixed-horizon alpha reserved for the deadline of an extension (0: the
    extension is judged by the mixture alone); ``planned_extension``: whether this
    canary may be extended once (None: ``inconclusive_action == "extend"`` or an
    elapsed fraction >= 1.5). Spend each fixed look once per canary."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if inconclusive_action not in ("rollback", "extend"):
        raise ValueError(f"inconclusive_action must be 'rollback' or 'extend', got {inconclusive_action!r}")
    if not 0.0 < sequential_alpha_share <= 1.0:
        raise ValueError(f"sequential_alpha_share must be in (0, 1], got {sequential_alpha_share}")
    if not mixture_tuning_fraction > 0.0 or math.isinf(mixture_tuning_fraction):
        raise ValueError(f"mixture_tuning_fraction must be positive, got {mixture_tuning_fraction}")
    if not 0.0 <= extension_alpha_share < 1.0:
        raise ValueError(f"extension_alpha_share must be in [0, 1), got {extension_alpha_share}")
    alpha = 1.0 - confidence
    frac = max(float(elapsed_fraction), _MIN_FRACTION) if math.isfinite(elapsed_fraction) else 1.0
    extension_look = frac >= FIXED_LOOK_BEFORE
    if planned_extension is None:
        planned_extension = inconclusive_action == "extend" or extension_look
    fix_w = fixed_weight(float(extension_alpha_share), bool(planned_extension), extension_look)
    if fixed_look is None:
        fixed_look = bool(final) and fix_w > 0.0
    sp = make_split(alpha, float(sequential_alpha_share), float(mixture_tuning_fraction), frac, bool(fixed_look),
                    fix_w)
    min_n = max(int(min_samples), 2)

    work: list[_Kpi] = []
    for name, spec in kpis.items():
        k = _Kpi(name, spec, control.get(name) or RunningStats(), canary.get(name) or RunningStats())
        work.append(k)
        if k.a.n < min_n or k.b.n < min_n:
            continue
        eff = estimate_effect(k.a, k.b, absolute=spec.margin_abs is not None)
        k.eff = eff
        k.rel = eff if spec.margin_abs is None else estimate_effect(k.a, k.b)
        k.m = kpi_margin(spec, eff.mode, k.a.mean)
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

    # Weighted improvement score over the KPIs with weight > 0 and a relative
    # (log-ratio) effect (a KPI whose mean is ~0 stays a guardrail only): the
    # weighted mean of good-signed log ratios. Its standard error is the bound
    # sd(sum w_i x_i) <= sum w_i sd(x_i) (Cauchy-Schwarz on the covariance),
    # exact for perfectly correlated KPIs and valid whatever their correlation.
    scored = [k for k in work if k.rel is not None and k.rel.mode == "relative" and k.spec.weight > 0]
    score = score_lo = score_hi = None
    imp = worse = _NONE
    if scored:
        wsum = sum(k.spec.weight for k in scored)
        s_log = sum(k.spec.weight * k.g * k.rel.estimate for k in scored) / wsum
        se = score_se([(k.spec.weight, k.rel.se) for k in scored])
        df = min(k.rel.df for k in scored)
        # shown as a relative change of the means in the good direction: the lift of an
        # "increase" KPI (ratio - 1), the drop of a "decrease" one (1 - ratio)
        up = sum(k.spec.weight for k in scored if k.g > 0) >= wsum / 2

        def shown(x: float) -> float:
            return math.expm1(x) if up else -math.expm1(-x)
        score = shown(s_log)
        if se > 0.0:
            imp, worse = greater(sp, s_log / se, df), greater(sp, -s_log / se, df)
            score_lo = shown(s_log - sp.half_width(se, df))
            score_hi = shown(s_log + sp.half_width(se, df))
        else:
            imp, worse = exact(sp, s_log <= 0), exact(sp, s_log >= 0)
            score_lo = score_hi = score
    p_imp = imp.p if scored else None
    p_worse = worse.p if scored else None

    # Holm step-down over every "the canary is worse" hypothesis: each configured KPI's harm
    # (a KPI without data never rejects) and, with a score, the score below zero (rule 2b),
    # so that a false rollback of either kind stays <= alpha family-wise.
    family: list[tuple[float, str | None]] = [(k.p_harm, k.name) for k in work if k.eff is not None]
    if p_worse is not None:
        family.append((p_worse, None))          # None: the score
    n_hyp = len(work) + (1 if scored else 0)
    rejected: set[str | None] = set()
    for i, (p, name) in enumerate(sorted(family, key=lambda e: e[0])):
        if p <= alpha / (n_hyp - i):
            rejected.add(name)
        else:
            break
    harmed = {name for name in rejected if name is not None}
    worse_shown = None in rejected

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
            alpha_sequential=sp.alpha_seq, alpha_fixed=sp.alpha_fix, fixed_look=sp.uses_fixed,
            p_improvement_sequential=imp.p_seq if scored else None,
            p_improvement_fixed=imp.p_fix if scored else None, p_worse=p_worse, **kw)

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
        rel = [-100.0 * k.g * k.eff.lift for k in hk if k.eff.lift is not None]
        names = ", ".join(f"{k.name} (p={k.p_harm:.2g})" for k in hk)
        return decision("rollback", f"harm beyond the margin in {names} (Holm at alpha={_fmt(alpha)}; {judged})",
                        min(k.p_harm for k in hk), "rollback",
                        degradation_pct=max(rel) if rel else None, improvement_pct=None)

    # 2b. Shown worse: the weighted improvement score is significantly below zero. The
    # candidate cannot be the improvement it was proposed as, even if no KPI is past its
    # harm margin: a conclusive "no" (the same anytime-valid hybrid test as the improvement,
    # mirrored, so it may stop the canary early), not an inconclusive canary.
    if worse_shown:
        return decision("rollback",
                        f"shown worse: weighted improvement {100 * score:+.3g}% "
                        f"(interval up to {100 * score_hi:+.3g}%) is below zero (p={p_worse:.2g}, Holm at "
                        f"alpha={_fmt(alpha)}; {judged}); no KPI past its harm margin",
                        p_worse, "rollback", improvement_pct=None,
                        degradation_pct=-100.0 * score if score < 0 else None)

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


def kpi_margin(spec: KpiSpec, mode: str, control_mean: float) -> float:
    """The KPI's non-inferiority margin on the scale its effect is tested on: the
    log-ratio scale in relative mode (``-log(1 - m)`` for an "increase" KPI,
    ``log(1 + m)`` for a "decrease" one), ``margin_abs``, or ``m * |control
    mean|`` when a relative margin meets an absolute-mode effect (mean ~ 0)."""
    if spec.margin_abs is not None:
        return float(spec.margin_abs)
    m = float(spec.margin)
    if mode == "relative":
        return math.log1p(m) if spec.direction == "decrease" else -math.log1p(-min(m, 1.0 - 1e-12))
    return m * abs(control_mean)


def score_se(parts: list[tuple[float, float]]) -> float:
    """Standard error of the weighted mean ``sum w_i x_i / sum w_i`` from ``(w_i, se_i)``:
    ``sum w_i se_i / sum w_i``, the largest it can be over all correlations."""
    wsum = sum(w for w, _ in parts)
    return sum(w * s for w, s in parts) / wsum if wsum > 0 else 0.0


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
    shown_m = spec.margin if eff.mode == "relative" else k.m
    # good-direction lower bound of the effect
    good_lo = k.lo if k.g > 0 else -k.hi
    if k.name in harmed:
        verdict, p = "harm", k.p_harm
        rule = f"harm beyond margin {_fmt(shown_m)}{unit}: p={k.p_harm:.3g}, rejected by Holm at {_fmt(alpha)}"
    elif k.p_ni <= alpha and good_lo > 0.0:
        verdict, p = "improvement", k.p_ni
        rule = f"better than control: bound excludes 0, non-inferior (p={k.p_ni:.3g})"
    elif k.p_ni <= alpha:
        verdict, p = "non_inferior", k.p_ni
        rule = f"non-inferior within margin {_fmt(shown_m)}{unit} (p={k.p_ni:.3g} <= {_fmt(alpha)})"
    else:
        verdict, p = "neutral", min(k.p_ni, k.p_harm)
        rule = f"undecided: p(non-inferior)={k.p_ni:.3g}, p(harm)={k.p_harm:.3g}"
    if eff.mode == "relative":   # report the relative lift; the test ran on the log ratio
        est, interval, log_ratio = math.expm1(eff.estimate), (math.expm1(k.lo), math.expm1(k.hi)), eff.estimate
    else:
        est, interval, log_ratio = eff.estimate, (k.lo, k.hi), None
    return KpiVerdict(
        k.name, spec.direction, spec.critical, a.n, b.n, a.mean, b.mean, eff.lift, eff.diff, p, verdict,
        f"{rule} [{_how(sp)}]",
        mode=eff.mode, estimate=est, interval=interval, se=eff.se, df=eff.df, margin=shown_m, log_ratio=log_ratio,
        p_harm=k.p_harm, p_noninferior=k.p_ni, srm_p=k.srm, srm_chi2_p=k.srm_chi2,
        p_harm_sequential=k.harm.p_seq, p_harm_fixed=k.harm.p_fix,
        p_noninferior_sequential=k.ni.p_seq, p_noninferior_fixed=k.ni.p_fix)
