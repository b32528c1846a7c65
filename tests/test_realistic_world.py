"""The realistic world end to end (issue 9): structural properties only, not the quality goals.

A few fixed seeds, a few days, the seed's defaults with two parameters. Checks: a cycle every
unpaused day and every cycle ends; no exception; metric batches are sufficient statistics of
per-unit data (Bernoulli means are counts over n); the canary records match the core's cycles;
harmful deploys are counted from the world's truth; the judges and the gate-reason reader work
on the real decision and degrade clearly when its shape changes.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from realistic_world import (D, ERROR, HARM_ERROR, N, CanaryRecord, RealisticSurface, RealisticWorld,
                             _mw_binary, gate_reason, kayenta_judge, realistic_config)
from sim_harness import T0
from vvtv_autopilot.schemas.events import MetricStats
from vvtv_autopilot.statemachine.definition import TERMINAL

DAYS = 4


@pytest.fixture(scope="module", params=[2, 7])
def world(request) -> RealisticWorld:
    w = RealisticWorld(seed=request.param)
    w.run_days(DAYS)
    return w


def test_a_cycle_every_unpaused_day_and_each_ends(world):
    started = sorted(c.day for c in world.cycles.values())
    for day in range(DAYS):
        trigger = T0 + timedelta(days=day, hours=3)
        assert day in started or any(a <= trigger < u for a, u, _ in world.pauses), (day, started)
    assert len(started) == len(set(started))      # one daily cycle a day
    assert all(c.outcome in TERMINAL for c in world.cycles.values())
    assert world.violations == []
    assert all(d["bounds_problems"] == [] for d in world.daily_live)
    assert len(world.daily_live) == DAYS


def test_metrics_are_per_unit_sufficient_statistics(world):
    batches = [ib.event for ib in world.fed if isinstance(ib.event, MetricStats)]
    errors = [b for b in batches if b.kpi == ERROR]
    assert errors and all(abs(b.mean * b.n - round(b.mean * b.n)) < 1e-6 for b in errors)   # k / n
    assert all(abs(b.m2 - b.n * b.mean * (1 - b.mean)) < 1e-6 * max(1.0, b.n) for b in errors)
    live = [b for b in batches if b.arm == "live" and b.kpi == ERROR]
    # ~2,000 units a minute with a +-40 % daily swing, hourly live batches
    per_minute = [b.n / 60.0 for b in live]
    assert 1000 < min(per_minute) < 1400 and 2600 < max(per_minute) < 3000
    can = [b for b in batches if b.arm == "canary"]
    ctl = [b for b in batches if b.arm == "control"]
    share = sum(b.n for b in can) / (sum(b.n for b in can) + sum(b.n for b in ctl))
    assert abs(share - world.config.autopilot.canary_traffic_percentage) < 0.01


def test_canary_records_match_the_cores_cycles_and_truth(world):
    canary_cycles = {c.cycle_id for c in world.cycles.values() if any(t.to == "Canary" for t in c.transitions)}
    assert {r.cycle_id for r in world.canaries} == canary_cycles
    for r in world.canaries:
        c = world.cycles[r.cycle_id]
        assert r.outcome == c.outcome
        assert r.control == c.base_w and r.candidate == c.candidate_w
        assert r.gate in ("proceed", "rollback", "inconclusive")
        assert r.kayenta in ("deploy", "rollback") and r.welch in ("deploy", "rollback", "inconclusive")
        assert r.true_lift[ERROR] == pytest.approx(world.true_error_lift(c), abs=1e-9)
    deployed = [c for c in world.cycles.values() if c.outcome == "Deployed"]
    harmful = sum(1 for c in deployed if world.true_error_lift(c) > HARM_ERROR
                  or world.surface.entropy(c.candidate_w, c.canary_started)
                  < (1 - 0.01) * world.surface.entropy(c.base_w, c.canary_started))
    assert world.summary()["harmful_deploys"] == harmful
    assert world.summary()["deploys"] == len(deployed)


def test_two_parameters_are_explored(world):
    moved = set()
    for r in world.canaries:
        moved |= {n for n in (D, N) if r.candidate.get(n) != r.control.get(n)}
    assert moved == {D, N}


def test_harm_is_counted_from_the_truth_past_the_cliff():
    s = RealisticSurface()
    t = T0 + timedelta(hours=3)
    base = {D: 0.35, N: 0.2}
    cliff = {D: s.knee(t) + 0.01, N: 0.0}     # past the knee on d + 0.5 n: about +25 %
    lift = s.error(cliff, t) / s.error(base, t) - 1
    assert lift > HARM_ERROR
    rec = CanaryRecord("c", "v", t, base, cliff, False, {ERROR: lift, "selection_entropy": 0.02})
    assert rec.harmful
    assert not CanaryRecord("c", "v", t, base, base, True, {ERROR: 0.0, "selection_entropy": 0.0}).harmful
    opt = s.safe_optimum(t, {D: (0.1, 0.6), N: (0.0, 0.5)})
    assert s.error(opt, t) <= s.flat_error(t) * 1.02 and s.entropy(opt, t) > s.entropy(base, t)


def test_judges_and_the_gate_reader():
    from scipy.stats import mannwhitneyu
    rng = np.random.default_rng(0)
    x, y = (rng.random(3000) < 0.03).astype(float), (rng.random(9000) < 0.02).astype(float)
    p, _ = _mw_binary(int(x.sum()), len(x), int(y.sum()), len(y))
    assert p == pytest.approx(mannwhitneyu(x, y, alternative="two-sided", method="asymptotic").pvalue, rel=1e-9)
    kpis = realistic_config().kpis
    raw = {ERROR: {"kind": "bernoulli", "n_canary": 3000, "k_canary": 120, "n_control": 9000, "k_control": 180}}
    assert kayenta_judge(kpis, raw) == ("rollback", [ERROR])          # 4 % vs 2 %: worse
    raw[ERROR]["k_canary"] = 30
    assert kayenta_judge(kpis, raw)[0] == "deploy"                    # better passes
    # the reader: today's shape, a changed shape, nothing
    detail = {"recommendation": "inconclusive", "rule": "deadline", "decision": {
        "reason": "non-inferiority not shown for error_rate (p=0.3)", "p_improvement": 0.2,
        "kpis": [{"kpi": ERROR, "verdict": "neutral"}, {"kpi": "selection_entropy", "verdict": "non_inferior"}]}}
    assert gate_reason(detail) == ("inconclusive", "non-inferiority not shown: error_rate + improvement not significant")
    assert gate_reason({"recommendation": "inconclusive", "decision": {"why": 3}})[1].startswith("unparsed")
    assert gate_reason({"recommendation": "rollback", "rule": "critical alert", "decision": {"reason": "x"}})[1] == "critical alert"
    assert gate_reason(None) == ("unknown", "unparsed (keys )")


def test_aa_mode_runs_the_control_truth_on_the_canary():
    w = RealisticWorld(seed=4, aa=True)
    w.run_days(2)
    assert w.canaries and all(r.aa and all(abs(v) < 1e-12 for v in r.true_lift.values()) for r in w.canaries)


def test_deterministic():
    a, b = RealisticWorld(seed=9), RealisticWorld(seed=9)
    a.run_days(2)
    b.run_days(2)
    assert [t for s in a.steps for t in s.transitions] == [t for s in b.steps for t in s.transitions]
    assert a.summary() == b.summary()
