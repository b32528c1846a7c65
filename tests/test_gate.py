"""The anytime-valid canary gate: decision rules, data problems, explanation."""

from __future__ import annotations

import math

import msgspec
import pytest
from scipy.stats import t as student_t

from vvtv_autopilot.handlers import sequential as seq
from vvtv_autopilot.handlers.gate import DEFAULT_MIXTURE_TUNING, GateDecision, evaluate_gate
from vvtv_autopilot.handlers.gate_fixed import evaluate_gate_fixed
from vvtv_autopilot.handlers.stats import RunningStats
from vvtv_autopilot.schemas.config import KpiSpec

UP = KpiSpec(direction="increase")
DOWN = KpiSpec(direction="decrease")
GUARD = KpiSpec(direction="increase", critical=True, margin=UP.margin)   # weight 0: harm and non-inferiority only
CRIT_DOWN = KpiSpec(direction="decrease", critical=True)


def arm(n: int, mean: float, sd: float = 1.0) -> RunningStats:
    return RunningStats(n, mean, sd * sd * (n - 1))


def gate(kpis, control, canary, **kw) -> GateDecision:
    kw.setdefault("confidence", 0.95)
    kw.setdefault("min_samples", 30)
    kw.setdefault("final", False)
    d = evaluate_gate(kpis, control, canary, **kw)
    # every decision is a JSON transition detail: encodable, finite, round-trips
    raw = msgspec.json.encode(d)
    assert b"Infinity" not in raw and b"NaN" not in raw
    assert msgspec.json.decode(raw, type=GateDecision) == d
    if d.recommendation == "continue":
        assert not d.final and d.action == "continue"
    assert d.extend == (d.action == "extend")
    return d


def test_clear_harm_rolls_back_early_with_explanation():
    d = gate({"conv": UP}, {"conv": arm(2000, 1.0)}, {"conv": arm(500, 0.8)}, elapsed_fraction=0.3)
    assert d.recommendation == "rollback" and d.action == "rollback"
    v = d.kpis[0]
    assert v.verdict == "harm" and "Holm" in v.rule
    assert v.lift == pytest.approx(-0.2) and v.interval[0] < -0.2 < v.interval[1] < 0
    assert v.n_control == 2000 and v.n_canary == 500 and v.p_harm < 0.05
    assert d.statistical_significance == v.p_harm
    assert d.degradation_pct == pytest.approx(20.0)
    assert "conv" in d.reason


def test_harm_respects_direction():
    d = gate({"latency": DOWN}, {"latency": arm(2000, 1.0)}, {"latency": arm(500, 1.2)}, elapsed_fraction=0.5)
    assert d.recommendation == "rollback" and d.kpis[0].verdict == "harm"
    d = gate({"latency": DOWN}, {"latency": arm(2000, 1.0)}, {"latency": arm(500, 0.8)}, elapsed_fraction=0.5)
    assert d.recommendation == "proceed" and d.improvement_pct == pytest.approx(20.0)


def test_clear_improvement_proceeds_early():
    d = gate({"conv": UP, "errors": CRIT_DOWN},
             {"conv": arm(4000, 1.0), "errors": arm(4000, 1.0, 0.01)},
             {"conv": arm(1000, 1.25), "errors": arm(1000, 1.0, 0.01)}, elapsed_fraction=0.4)
    assert d.recommendation == "proceed" and d.action == "proceed"
    assert {v.verdict for v in d.kpis} == {"improvement", "non_inferior"}
    # the critical KPI is a guardrail: weight 0 by default, so the score is conv's lift alone
    assert d.p_improvement <= 0.05 and d.score == pytest.approx(0.25)
    assert CRIT_DOWN.weight == 0.0 and UP.weight == 1.0
    assert d.statistical_significance == max(d.p_improvement, *(v.p_noninferior for v in d.kpis))


def test_neutral_continues_then_is_inconclusive_at_deadline():
    kpis, c, k = {"conv": UP}, {"conv": arm(4800, 1.0)}, {"conv": arm(1200, 1.0)}
    assert gate(kpis, c, k, elapsed_fraction=0.5).recommendation == "continue"
    d = gate(kpis, c, k, final=True)
    assert d.recommendation == "inconclusive" and d.action == "rollback" and not d.extend
    assert "not significant" in d.reason
    d = gate(kpis, c, k, final=True, inconclusive_action="extend")
    assert d.recommendation == "inconclusive" and d.action == "extend" and d.extend
    # after the extension the look continues in information time (> 1)
    d = gate(kpis, {"conv": arm(9600, 1.0)}, {"conv": arm(2400, 1.1)}, elapsed_fraction=2.0)
    assert d.recommendation == "proceed" and not d.fixed_look   # the fixed look was spent at the deadline
    assert d.mixture_r == pytest.approx(2 * seq.optimal_r(d.alpha_sequential) / DEFAULT_MIXTURE_TUNING)


def test_small_harm_within_margin_is_no_harm_but_is_shown_worse():
    # canary 0.5 % worse, margin 1 %: non-inferior (no harm), but shown worse than the control
    # on the score, which is a conclusive rollback (rule 2b), not an inconclusive canary
    c, k = {"conv": arm(4800, 1.0, 0.03)}, {"conv": arm(1200, 0.995, 0.03)}
    d = gate({"conv": UP}, c, k, final=True)
    assert d.kpis[0].verdict == "non_inferior" and d.recommendation == "rollback"
    assert d.reason.startswith("shown worse") and d.p_worse <= 0.05
    assert d.degradation_pct == pytest.approx(0.5)
    # ... decided at an early look too (anytime-valid), before the deadline
    early = gate({"conv": UP}, c, k, final=False, elapsed_fraction=0.5)
    assert early.recommendation == "rollback" and early.action == "rollback"
    # a drop the data cannot tell from noise stays inconclusive
    c2, k2 = {"conv": arm(4800, 1.0, 0.3)}, {"conv": arm(1200, 0.995, 0.3)}
    d = gate({"conv": UP}, c2, k2, final=True)
    assert d.recommendation == "inconclusive" and d.p_worse > 0.05
    # with a 0.1 % margin the same data is harm
    d = gate({"conv": KpiSpec(direction="increase", margin=0.001)}, c, k, final=True)
    assert d.recommendation == "rollback" and d.kpis[0].margin == 0.001


def test_non_inferior_guardrail_with_improving_primary_proceeds():
    kpis = {"conv": UP, "latency": KpiSpec(direction="decrease", weight=0.0)}
    d = gate(kpis, {"conv": arm(4800, 1.0, 0.3), "latency": arm(4800, 1.0, 0.02)},
             {"conv": arm(1200, 1.1, 0.3), "latency": arm(1200, 1.003, 0.02)}, final=True)
    assert d.recommendation == "proceed"
    lat = d.kpis[1]
    assert lat.verdict == "non_inferior" and lat.margin == pytest.approx(0.02) and lat.p_noninferior <= 0.05
    assert d.score == pytest.approx(0.1)   # latency has no weight


def test_zero_error_rate_in_both_arms_is_non_inferior():
    kpis = {"conv": UP, "error_rate": CRIT_DOWN}
    zero_c, zero_k = RunningStats.of([0.0] * 4800), RunningStats.of([0.0] * 1200)
    d = gate(kpis, {"conv": arm(4800, 1.0, 0.3), "error_rate": zero_c},
             {"conv": arm(1200, 1.1, 0.3), "error_rate": zero_k}, final=True)
    er = d.kpis[1]
    assert er.mode == "absolute" and er.verdict == "non_inferior"
    assert d.recommendation == "proceed"


def test_min_samples_per_arm_before_any_look():
    d = gate({"conv": UP}, {"conv": arm(29, 1.0, 0.01)}, {"conv": arm(29, 0.5, 0.01)}, min_samples=30)
    assert d.recommendation == "continue" and d.kpis[0].verdict == "no_data"
    assert "waiting for data on conv" in d.reason


def test_no_data_at_deadline_is_inconclusive_naming_the_kpi():
    kpis = {"conv": UP, "watch_time": UP}
    d = gate(kpis, {"conv": arm(4800, 1.0), "watch_time": arm(4800, 1.0)},
             {"conv": arm(1200, 1.3)}, final=True, inconclusive_action="extend")
    assert d.recommendation == "inconclusive" and "watch_time" in d.reason and "conv" not in d.reason
    assert d.action == "extend"
    assert [v.verdict for v in d.kpis] == ["improvement", "no_data"]
    # nothing at all
    d = gate(kpis, {}, {}, final=True)
    assert d.recommendation == "inconclusive" and "conv" in d.reason and "watch_time" in d.reason
    # before the deadline the gate waits
    assert gate(kpis, {}, {}, elapsed_fraction=0.5).recommendation == "continue"


def test_critical_kpi_without_data_rolls_back():
    kpis = {"conv": UP, "error_rate": CRIT_DOWN}
    d = gate(kpis, {"conv": arm(4800, 1.0), "error_rate": arm(4800, 0.1)},
             {"conv": arm(1200, 1.3), "error_rate": arm(3, 0.1)}, final=True)
    assert d.recommendation == "rollback" and "critical" in d.reason and "error_rate" in d.reason


def test_sample_ratio_mismatch_is_inconclusive_and_never_extended():
    kpis = {"conv": UP}
    # 16 % of traffic instead of 20 %, with a harmful effect: the data cannot be trusted
    d = gate(kpis, {"conv": arm(5040, 1.0)}, {"conv": arm(960, 0.5)}, elapsed_fraction=0.6,
             inconclusive_action="extend")
    assert d.recommendation == "inconclusive" and "sample ratio mismatch" in d.reason
    assert d.action == "rollback" and d.srm_p < 0.001 and d.kpis[0].srm_chi2_p < d.srm_p
    # the configured split is honoured
    d = gate(kpis, {"conv": arm(5040, 1.0)}, {"conv": arm(960, 1.0)}, final=True, traffic_fraction=0.16)
    assert "sample ratio" not in d.reason


def test_holm_across_kpis():
    # harm at alpha alone, not at alpha/3 (Holm's first step), yes at alpha/2 (its second)
    n_c, n_k = 4800, 1200

    def harm_at(p_target):
        lo, hi = 0.0, 0.5
        for _ in range(80):
            mid = (lo + hi) / 2
            d = gate({"k": UP}, {"k": arm(n_c, 1.0)}, {"k": arm(n_k, 1.0 - mid)}, final=True)
            lo, hi = (lo, mid) if d.kpis[0].p_harm < p_target else (mid, hi)
        return hi

    drop = harm_at(0.02)   # p_harm ~ 0.02: between alpha/3 and alpha/2
    kpis = {f"k{i}": UP for i in range(3)}
    c = {k: arm(n_c, 1.0) for k in kpis}
    one = gate({"k0": UP}, {"k0": c["k0"]}, {"k0": arm(n_k, 1.0 - drop)}, final=True)
    assert one.recommendation == "rollback"
    three = gate(kpis, c, {"k0": arm(n_k, 1.0 - drop), "k1": arm(n_k, 1.0), "k2": arm(n_k, 1.0)}, final=True)
    assert three.recommendation != "rollback" and three.kpis[0].verdict != "harm"
    # a strong harm elsewhere lets Holm step down to the weaker one
    both = gate(kpis, c, {"k0": arm(n_k, 1.0 - drop), "k1": arm(n_k, 0.7), "k2": arm(n_k, 1.0)}, final=True)
    assert both.recommendation == "rollback"
    assert [v.verdict for v in both.kpis][:2] == ["harm", "harm"]


def test_arguments_are_checked():
    with pytest.raises(ValueError):
        evaluate_gate({"k": UP}, {}, {}, confidence=1.0, min_samples=30, final=True)
    with pytest.raises(ValueError):
        evaluate_gate({"k": UP}, {}, {}, confidence=0.95, min_samples=30, final=True, inconclusive_action="wait")


def test_mixture_boundary_and_tuning():
    r = seq.optimal_r(0.05)
    assert 6.0 < r < 7.5
    b = seq.boundary(r, 0.05)
    assert seq.p_value(b, r) == pytest.approx(0.05, rel=1e-9)
    # tuned for the end of the window: any other mixture has a higher boundary there
    assert all(seq.boundary(r * s, 0.05) > b for s in (0.5, 0.8, 1.25, 2.0))
    # the boundary falls with information, and costs about 1.68x the fixed-horizon z at the end
    assert seq.boundary(r * 0.1, 0.05) > seq.boundary(r * 0.5, 0.05) > b
    assert 2.6 < b < 2.9
    # t <-> z maps are inverse and widen for few degrees of freedom
    for df in (3.0, 29.0, 1e4):
        t = seq.z_to_t(2.5, df)
        assert t >= 2.5 and seq.t_to_z(t, df) == pytest.approx(2.5, rel=1e-9)
    assert seq.t_to_z(-2.0, 10.0) == pytest.approx(-seq.t_to_z(2.0, 10.0))


def test_fixed_horizon_baseline_only_judges_at_the_deadline():
    kpis = {"conv": UP}
    c, k = {"conv": arm(2000, 1.0)}, {"conv": arm(500, 0.8)}
    assert evaluate_gate_fixed(kpis, c, k, confidence=0.95, min_samples=30, final=False).recommendation == "continue"
    d = evaluate_gate_fixed(kpis, c, k, confidence=0.95, min_samples=30, final=True)
    assert d.recommendation == "rollback" and d.method == "welch-fixed-horizon"


def test_any_statistics_give_an_encodable_decision():
    # robustness: odd but possible inputs never raise and never produce inf/NaN in the detail
    rng = __import__("numpy").random.default_rng(99)
    specs = [UP, DOWN, CRIT_DOWN, KpiSpec(direction="increase", weight=0.0, margin=0.0)]
    for i in range(300):
        kpis, c, k = {}, {}, {}
        for j in range(int(rng.integers(1, 4))):
            name = f"k{j}"
            kpis[name] = specs[int(rng.integers(len(specs)))]
            for side in (c, k):
                n = int(rng.choice([0, 1, 2, 30, 1000]))
                mean = float(rng.choice([0.0, -1.0, 1e-9, 1.0, 1e6]))
                m2 = float(rng.choice([0.0, -1e-18, 1.0, 1e12])) if n > 1 else 0.0
                if n:
                    side[name] = RunningStats(n, mean, m2)
        gate(kpis, c, k, final=bool(i % 2), elapsed_fraction=float(rng.choice([0.0, 0.01, 0.5, 1.0, 1.7])),
             min_samples=2, traffic_fraction=float(rng.choice([0.05, 0.2, 0.5])))


def _harm_z(z: float, n_c: int = 4800, n_k: int = 1200):
    """Control and canary arms whose log ratio sits ``z`` standard errors below log(1 - margin)."""
    lo, hi = 0.0, 0.5
    for _ in range(80):
        drop = (lo + hi) / 2
        d = evaluate_gate({"k": UP}, {"k": arm(n_c, 1.0)}, {"k": arm(n_k, 1.0 - drop)},
                          confidence=0.95, min_samples=30, final=False)
        v = d.kpis[0]
        t = -(v.log_ratio - math.log1p(-v.margin)) / v.se
        lo, hi = (drop, hi) if t < z else (lo, drop)
    return {"k": arm(n_c, 1.0)}, {"k": arm(n_k, 1.0 - hi)}


def test_hybrid_p_value_is_the_union_of_the_mixture_and_the_deadline_welch_test():
    c, k = _harm_z(2.2)
    s = 0.3
    mid = gate({"k": UP}, c, k, elapsed_fraction=0.6, sequential_alpha_share=s)
    v = mid.kpis[0]
    assert not mid.fixed_look and v.p_harm_fixed is None and v.p_noninferior_fixed is None
    assert v.p_harm == pytest.approx(min(1.0, v.p_harm_sequential / s))
    assert mid.alpha_sequential == pytest.approx(0.015) and mid.alpha_fixed == pytest.approx(0.035)
    end = gate({"k": UP}, c, k, final=True, sequential_alpha_share=s)
    v = end.kpis[0]
    assert end.fixed_look and end.method == "hybrid-msprt+welch"
    assert v.p_harm_fixed == pytest.approx(float(student_t.sf(2.2, v.df)), rel=1e-6)
    assert v.p_harm == pytest.approx(min(1.0, v.p_harm_sequential / s, v.p_harm_fixed / (1 - s)))
    assert v.p_harm_fixed + v.p_noninferior_fixed == pytest.approx(1.0)
    # the reported bounds agree with the tests: harm is rejected exactly when the upper bound is below -margin
    assert (v.p_harm <= 0.05) == (v.interval[1] < -v.margin)
    # the deadline bound is the tighter Welch one (one-sided at alpha_fix), on the log-ratio scale
    assert math.log1p(v.interval[1]) - v.log_ratio == pytest.approx(v.se * float(student_t.isf(0.035, v.df)))
    assert v.estimate == pytest.approx(math.expm1(v.log_ratio)) == pytest.approx(v.lift)


def test_the_deadline_look_catches_a_moderate_harm_the_mixture_alone_misses():
    # a guardrail (out of the score), so that harm alone decides: a scored KPI this far down
    # would also be "shown worse" (rule 2b)
    c, k = _harm_z(2.2)   # one-sided Welch p ~ 0.014 < 0.035; far from the mixture's boundary
    for frac in (0.3, 0.6, 0.99):
        assert gate({"k": GUARD}, c, k, elapsed_fraction=frac).recommendation == "continue"
    d = gate({"k": GUARD}, c, k, final=True)
    assert d.recommendation == "rollback" and "fixed-horizon Welch at 0.035" in d.reason
    pure = gate({"k": GUARD}, c, k, final=True, sequential_alpha_share=1.0)
    assert pure.recommendation == "inconclusive" and pure.method == "msprt-normal-mixture"
    assert not pure.fixed_look and pure.kpis[0].p_harm_fixed is None
    assert pure.mixture_r == pytest.approx(seq.optimal_r(0.05) / 0.5)
    # and a z of 1.7 is not enough at alpha_fix = 0.035 (Welch one-sided would need 1.81)
    c, k = _harm_z(1.7)
    assert gate({"k": GUARD}, c, k, final=True).recommendation == "inconclusive"


def test_the_extension_gets_its_own_share_of_the_fixed_alpha():
    c, k = _harm_z(2.2, 9600, 2400)   # one-sided Welch p ~ 0.014
    # no extension planned: the deadline look spends the whole fixed share (0.035)
    d = gate({"k": GUARD}, c, k, final=True)
    assert d.fixed_look and d.alpha_fixed == pytest.approx(0.035) and d.recommendation == "rollback"
    # an extension planned (inconclusive_action="extend"): the deadline keeps 2/3 of it ...
    d = gate({"k": GUARD}, c, k, final=True, inconclusive_action="extend")
    assert d.alpha_fixed == pytest.approx(0.035 * 2 / 3) and d.recommendation == "rollback"
    # ... and the extension's deadline (elapsed ~ 2) gets 1/3: its own Welch look on all the data
    d = gate({"k": GUARD}, c, k, final=True, elapsed_fraction=2.0)
    assert d.fixed_look and d.alpha_fixed == pytest.approx(0.035 / 3)
    v = d.kpis[0]
    assert v.p_harm == pytest.approx(min(1.0, v.p_harm_sequential / 0.3, v.p_harm_fixed / (0.7 / 3)))
    assert d.recommendation == "inconclusive"     # p_fix ~ 0.014 > 0.0117
    c2, k2 = _harm_z(2.4, 9600, 2400)             # p_fix ~ 0.008 < 0.0117
    assert gate({"k": GUARD}, c2, k2, final=True, elapsed_fraction=2.0).recommendation == "rollback"
    # the three shares add up to alpha
    assert d.alpha_sequential + 0.035 * 2 / 3 + d.alpha_fixed == pytest.approx(0.05)
    # extension_alpha_share=0: the previous rule, the extension judged by the mixture alone
    d = gate({"k": GUARD}, c2, k2, final=True, elapsed_fraction=2.0, extension_alpha_share=0.0)
    assert not d.fixed_look and d.kpis[0].p_harm_fixed is None and d.recommendation == "inconclusive"
    assert "Welch" not in d.reason
    # a late first deadline is still the first deadline; the caller can force either way
    d = gate({"k": GUARD}, c, k, final=True, elapsed_fraction=1.2)
    assert d.fixed_look and d.alpha_fixed == pytest.approx(0.035)
    assert not gate({"k": GUARD}, c, k, final=True, fixed_look=False).fixed_look
    with pytest.raises(ValueError):
        evaluate_gate({"k": GUARD}, {}, {}, confidence=0.95, min_samples=30, final=True, extension_alpha_share=1.0)


def test_hybrid_arguments_are_checked():
    for kw in ({"sequential_alpha_share": 0.0}, {"sequential_alpha_share": 1.2},
               {"mixture_tuning_fraction": 0.0}, {"mixture_tuning_fraction": math.inf}):
        with pytest.raises(ValueError):
            evaluate_gate({"k": UP}, {}, {}, confidence=0.95, min_samples=30, final=True, **kw)
