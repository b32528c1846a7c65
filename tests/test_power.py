"""Power before the canary: the prediction against the gate itself (Monte Carlo,
fixed seeds), its closed forms, the plan's policy and the configuration keys."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
from scipy import stats as sps

from vvtv_autopilot.handlers.gate_sim import (noninferiority_shown, run_paths, simulate_arms,
                                              simulate_bernoulli_arms, simulate_lognormal_arms)
from vvtv_autopilot.handlers.power import (CanaryPlan, PowerReport, canary_power, drift_for_power, hybrid_power,
                                           plan_canary, plan_canary_for, sizing_mde)
from vvtv_autopilot.handlers.stats import RunningStats
from vvtv_autopilot.schemas.config import ConfigError, KpiSpec, parse_config


def live_normal(mu: float, sd: float, n: int = 100_000) -> RunningStats:
    return RunningStats(n, mu, sd * sd * (n - 1))


def live_rate(p: float, n: int = 100_000) -> RunningStats:
    return RunningStats(n, p, p * (1 - p) * n)


def test_one_look_is_the_closed_form_and_power_grows_with_drift():
    # one look, no mixture share to speak of: the Welch look alone, P(Z > z_{1-alpha_fix} | drift)
    for d in (0.0, 1.0, 2.5):
        got = hybrid_power(d, looks=1, alpha=0.05, share=1e-9)
        assert got == pytest.approx(float(sps.norm.sf(sps.norm.isf(0.05) - d)), abs=2e-3)
    ps = [hybrid_power(d, looks=60, alpha=0.05) for d in (0.0, 1.0, 2.0, 3.0, 4.0)]
    assert all(b > a for a, b in zip(ps, ps[1:]))
    assert ps[0] <= 0.05                       # the null: the family error of the hybrid, <= alpha
    d80 = drift_for_power(0.8, looks=60, alpha=0.05)
    assert hybrid_power(d80, looks=60, alpha=0.05) == pytest.approx(0.8, abs=1e-4)
    # the mixture's early looks only add to the deadline Welch look at 0.035
    assert d80 <= float(sps.norm.isf(0.035) + sps.norm.isf(0.2))


@pytest.mark.parametrize("kind", ["normal", "rate"])
def test_predicted_guardrail_power_matches_the_simulated_gate(kind):
    looks, per_look, split, paths = 20, 600, 0.2, 600
    if kind == "normal":
        spec = KpiSpec(direction="decrease", critical=True, margin=0.05)
        live = live_normal(1.0, 1.0)
    else:   # a 2 % error rate, the canary as good as the control
        spec = KpiSpec(direction="decrease", critical=True, margin=0.3)
        live = live_rate(0.02)
    rep = canary_power({"g": spec}, {"g": live}, units_per_minute=per_look, traffic_fraction=split,
                       duration_minutes=looks, confidence=0.95)
    pred = rep.guardrails[0].power
    assert 0.3 < pred < 0.9          # a case where the power is informative
    rng = np.random.default_rng(4242 if kind == "normal" else 4243)
    if kind == "normal":
        arms = {"g": simulate_arms(rng, paths=paths, looks=looks, per_look=per_look, traffic_fraction=split)}
    else:
        arms = {"g": simulate_bernoulli_arms(rng, paths=paths, looks=looks, per_look=per_look,
                                             traffic_fraction=split, p=0.02)}
    sim = noninferiority_shown({"g": spec}, arms, "g")
    mc_se = math.sqrt(pred * (1 - pred) / paths)
    assert abs(sim.mean() - pred) <= max(0.04, 3 * mc_se), (sim.mean(), pred)


def test_predicted_score_mde_has_the_target_power_in_the_simulated_gate():
    looks, per_look, split, paths = 20, 300, 0.2, 600
    # lognormal engagement (sigma 0.8, mean 1), a multiplicative improvement of exactly the predicted MDE
    kpis = {"engagement": KpiSpec(direction="increase")}
    cv = math.sqrt(math.expm1(0.64))
    rep = canary_power(kpis, {"engagement": live_normal(1.0, cv)}, units_per_minute=per_look,
                       traffic_fraction=split, duration_minutes=looks, confidence=0.95)
    assert rep.score_kpis == ["engagement"] and rep.guardrails == []
    rng = np.random.default_rng(4244)
    arms = {"engagement": simulate_lognormal_arms(rng, paths=paths, looks=looks, per_look=per_look,
                                                  traffic_fraction=split, sigma=0.8, lift=rep.score_mde)}
    recs, _, _ = run_paths(kpis, arms)
    rate = sum(r == "proceed" for r in recs) / paths
    assert abs(rate - 0.8) <= 0.05, rate


def test_underpowered_guardrail_gets_the_margin_and_duration_that_reach_80_percent():
    kpis = {"engagement": KpiSpec(direction="increase"),
            "error_rate": KpiSpec(direction="decrease", critical=True, margin=0.05)}
    live = {"engagement": live_normal(1.0, 0.95), "error_rate": live_rate(0.02)}
    rep = canary_power(kpis, live, units_per_minute=2000, traffic_fraction=0.2, duration_minutes=60,
                       confidence=0.95)
    g = rep.guardrails[0]
    # a 2 % rate over 24,000 canary and 96,000 control units: log-ratio SE sqrt(0.98/0.02 (1/24000 + 1/96000))
    assert g.se == pytest.approx(math.sqrt(0.98 / 0.02 * (1 / 24000 + 1 / 96000)), rel=1e-3)
    assert not g.powered and g.power < 0.3 and rep.underpowered == ["error_rate"]
    # the margin that reaches 80 % does reach it, and so does the longer duration at the 5 % margin
    at_m = canary_power({"error_rate": KpiSpec(direction="decrease", critical=True, margin=g.margin_for_power)},
                        live, units_per_minute=2000, traffic_fraction=0.2, duration_minutes=60, confidence=0.95)
    assert at_m.guardrails[0].power == pytest.approx(0.8, abs=0.005)
    at_d = canary_power(kpis, live, units_per_minute=2000, traffic_fraction=0.2,
                        duration_minutes=g.duration_for_power_minutes, confidence=0.95)
    assert at_d.guardrails[0].power >= 0.8
    shorter = canary_power(kpis, live, units_per_minute=2000, traffic_fraction=0.2,
                           duration_minutes=g.duration_for_power_minutes - 1, confidence=0.95)
    assert shorter.guardrails[0].power < 0.8
    assert 0.12 < g.margin_for_power < 0.16        # what an hour can show on a 2 % rate
    # the success metric: the weighted score's MDE (guardrails are not in the score)
    assert rep.score_kpis == ["engagement"] and 0.015 < rep.score_mde < 0.022
    # an absolute margin is reported in the KPI's units
    ab = canary_power({"error_rate": KpiSpec(direction="decrease", critical=True, margin_abs=0.001)}, live,
                      units_per_minute=2000, traffic_fraction=0.2, duration_minutes=60, confidence=0.95)
    ga = ab.guardrails[0]
    assert ga.mode == "absolute" and ga.margin_kind == "absolute" and ga.margin == 0.001
    assert ga.se == pytest.approx(math.sqrt(0.0196 * (1 / 24000 + 1 / 96000)), rel=1e-3)
    assert 0.0025 < ga.margin_for_power < 0.0030
    # the report is a JSON transition detail
    raw = msgspec.json.encode(rep)
    assert msgspec.json.decode(raw, type=PowerReport) == rep and b"NaN" not in raw


def test_a_guardrail_without_live_data_is_reported_not_guessed():
    rep = canary_power({"error_rate": KpiSpec(direction="decrease", critical=True)}, {}, units_per_minute=2000,
                       traffic_fraction=0.2, duration_minutes=60, confidence=0.95)
    g = rep.guardrails[0]
    assert g.power is None and not g.powered and "cannot predict" in g.note
    assert rep.score_mde is None and rep.note


def test_plan_applies_the_underpowered_policy():
    kpis = {"engagement": KpiSpec(direction="increase"),
            "error_rate": KpiSpec(direction="decrease", critical=True, margin=0.1)}
    live = {"engagement": live_normal(1.0, 0.95), "error_rate": live_rate(0.02)}
    common = dict(units_per_minute=2000, traffic_fraction=0.2, duration_minutes=60, confidence=0.95)
    need = canary_power(kpis, live, **common).duration_for_power_minutes
    assert 60 < need < 240
    run = plan_canary(kpis, live, underpowered_action="run", **common)
    assert run.run and run.duration_minutes == 60 and "error_rate" in run.reason
    skip = plan_canary(kpis, live, underpowered_action="skip", **common)
    assert not skip.run and skip.action == "skip"
    long = plan_canary(kpis, live, underpowered_action="lengthen", max_duration_minutes=240, **common)
    assert long.run and long.action == "lengthen" and long.duration_minutes == need
    assert long.power.duration_minutes == need and long.power.underpowered == []
    capped = plan_canary(kpis, live, underpowered_action="lengthen", max_duration_minutes=90, **common)
    assert capped.duration_minutes == 90 and "still underpowered" in capped.reason
    fixed = plan_canary(kpis, live, underpowered_action="lengthen", **common)   # no cap given: no lengthening
    assert fixed.duration_minutes == 60 and fixed.action == "run"
    assert msgspec.json.decode(msgspec.json.encode(long), type=CanaryPlan) == long
    with pytest.raises(ValueError):
        plan_canary(kpis, live, underpowered_action="wait", **common)


def test_plan_from_config_and_the_default_margins_are_powered_at_vvtv_traffic():
    cfg = parse_config({})
    assert cfg.autopilot.underpowered_action == "run" and cfg.autopilot.max_canary_minutes == 60
    s = 0.8   # selection_entropy: lognormal, sigma 0.8
    live = {"error_rate": live_rate(0.02),
            "selection_entropy": live_normal(math.exp(s * s / 2), math.exp(s * s / 2) * math.sqrt(math.expm1(s * s)))}
    for upm in (2000, 1200):   # the daily mean and its -40 % trough
        plan = plan_canary_for(cfg, live, upm)
        assert plan.run and plan.power.underpowered == [], upm
    cfg = parse_config({"autopilot": {"underpowered_action": "lengthen", "max_canary_duration_minutes": 180},
                        "kpis": {"selection_entropy": {"direction": "increase"},
                                 "error_rate": {"direction": "decrease", "critical": True, "margin": 0.1}}})
    plan = plan_canary_for(cfg, live, 2000)
    assert plan.action == "lengthen" and 60 < plan.duration_minutes <= 180


def test_the_score_lengthens_the_canary_to_the_steps_predicted_gain():
    # "lengthen where the MDE is the limit": a step predicted to gain less than the planned
    # canary's MDE gets the shortest canary whose MDE reaches it, at most the maximum
    kpis = {"engagement": KpiSpec(direction="increase"),
            "error_rate": KpiSpec(direction="decrease", critical=True)}   # margin 20 %: powered in an hour
    live = {"engagement": live_normal(1.0, 0.95), "error_rate": live_rate(0.02)}
    common = dict(units_per_minute=2000, traffic_fraction=0.2, duration_minutes=60, confidence=0.95,
                  underpowered_action="lengthen", max_duration_minutes=180, lengthen_for_score=True)
    mde60 = canary_power(kpis, live, **{k: common[k] for k in ("units_per_minute", "traffic_fraction",
                                                                "duration_minutes", "confidence")}).score_mde
    assert 0.01 < mde60 < 0.03
    gain = 0.75 * mde60
    plan = plan_canary(kpis, live, expected_gain=gain, **common)
    assert plan.action == "lengthen" and 60 < plan.duration_minutes < 180
    assert plan.power.score_mde <= gain * 1.001 and plan.power.duration_minutes == plan.duration_minutes
    shorter = canary_power(kpis, live, units_per_minute=2000, traffic_fraction=0.2, confidence=0.95,
                           duration_minutes=plan.duration_minutes - 1)
    assert shorter.score_mde > gain                                   # the shortest such canary
    assert "predicted gain" in plan.reason and "score MDE" in plan.reason
    # a gain the planned canary already sees, or no score lengthening: as planned
    assert plan_canary(kpis, live, expected_gain=1.2 * mde60, **common).duration_minutes == 60
    assert plan_canary(kpis, live, expected_gain=gain, **(common | {"lengthen_for_score": False})).duration_minutes == 60
    # an unknown gain (exploration) runs the longest canary allowed; a gain out of reach stops at the cap
    explore = plan_canary(kpis, live, expected_gain=None, **common)
    assert explore.duration_minutes == 180 and "unknown" in explore.reason
    assert plan_canary(kpis, live, expected_gain=0.1 * mde60, **common).duration_minutes == 180
    # from the configuration: the optimizer sizes its step for the longest canary allowed
    cfg = parse_config({"autopilot": {"underpowered_action": "lengthen", "max_canary_duration_minutes": 180},
                        "kpis": {"engagement": {"direction": "increase"},
                                 "error_rate": {"direction": "decrease", "critical": True}}})
    assert sizing_mde(cfg, live, 2000) == pytest.approx(explore.power.score_mde)
    assert plan_canary_for(cfg, live, 2000).duration_minutes == 60          # an operator's proposal: as planned
    assert plan_canary_for(cfg, live, 2000, optimizer_step=True, expected_gain=gain).duration_minutes \
        == plan.duration_minutes
    plain = parse_config({"kpis": {"engagement": {"direction": "increase"}}})
    assert sizing_mde(plain, live, 2000) == pytest.approx(mde60, rel=0.05)


def test_config_keys_are_validated_with_key_value_and_rule():
    with pytest.raises(ConfigError) as e:
        parse_config({"autopilot": {"canary_duration_minutes": 60, "max_canary_duration_minutes": 30}})
    assert "max_canary_duration_minutes = 30" in str(e.value) and "at least canary_duration_minutes" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_config({"autopilot": {"underpowered_action": "wait"}})
    assert "underpowered_action" in str(e.value)


def test_kpi_spec_weights_and_margins():
    assert KpiSpec(direction="decrease", critical=True).weight == 0.0
    assert KpiSpec(direction="decrease", critical=True, weight=2.0).weight == 2.0
    assert KpiSpec(direction="increase").weight == 1.0
    assert KpiSpec(direction="decrease", critical=True).margin == 0.2
    assert KpiSpec(direction="increase").margin == 0.02
    assert KpiSpec(direction="decrease", margin=5).margin == 5.0     # tolerate up to 6x the control
    ab = KpiSpec(direction="decrease", margin_abs=0.005)
    assert ab.margin_abs == 0.005 and ab.margin == 0.02               # margin stays a float for other readers
    bad = [{"direction": "decrease", "margin": 0.1, "margin_abs": 0.01},   # both
           {"direction": "increase", "margin": 1.0},                       # would tolerate a drop to 0
           {"direction": "decrease", "margin": 11},                        # beyond the limit
           {"direction": "decrease", "margin_abs": 0},
           {"direction": "decrease", "margin": -0.1}]
    for tree in bad:
        with pytest.raises(ConfigError) as e:
            parse_config({"kpis": {"k": tree}})
        assert "kpis.k" in str(e.value)
    # the seed's YAML block parses as before
    cfg = parse_config({"kpis": {"selection_entropy": {"direction": "increase", "critical": False, "weight": 1.0,
                                                       "margin": 0.01},
                                 "error_rate": {"direction": "decrease", "critical": True}}})
    assert cfg.kpis["selection_entropy"].margin == 0.01 and cfg.kpis["error_rate"].weight == 0.0
