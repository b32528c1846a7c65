"""The canary's power, planned at Validated from the live window (issue 9).

A Bernoulli error rate of 2 % at ~33 units a minute cannot be shown non-inferior within a
1 % margin in an hour: the plan says so with the numbers an operator needs (``evt.alert``
``canary_underpowered``, the Validated detail, ``status``), and ``autopilot.underpowered_action``
decides: run anyway, lengthen the canary (up to ``max_canary_duration_minutes``), or skip the
cycle as NoChange.
"""

from __future__ import annotations

import numpy as np

from core_driver import CARD, Driver, at, moves, publishes, schedules
from vvtv_autopilot.schemas.config import parse_config
from vvtv_autopilot.schemas.messages import parse_time

KPIS = {"selection_entropy": {"direction": "increase"},
        "error_rate": {"direction": "decrease", "critical": True, "margin": 0.01}}


def driver(**autopilot) -> Driver:
    tree = {"canary_duration_minutes": 60, "check_interval_minutes": 10, "min_samples_per_arm": 30,
            "sliding_bounds": {"initial_half_width_fraction": 0.5}} | autopilot
    d = Driver(parse_config({"autopilot": tree, "kpis": KPIS}))
    d.boot(at(0), CARD)
    rng = np.random.default_rng(3)
    for hour in range(24):   # yesterday's live traffic: 2,000 units an hour
        when = at(-1440 + 60 * hour + 59)
        d.metric("error_rate", "live", None, (rng.random(2000) < 0.02).astype(float), when)
        d.metric("selection_entropy", "live", None, rng.lognormal(0.0, 0.8, 2000), when)
    return d


def start(d: Driver):
    s = d.command("run-now", at(1))
    assert s.reply["ok"], s.reply
    return s.reply["cycle_id"], d.golden(s, at(2))


def test_an_underpowered_guardrail_skips_the_cycle_as_no_change_with_the_numbers():
    d = driver(underpowered_action="skip")
    cid, s = start(d)
    assert moves(s.transitions) == [("Bounded", "Validated", "golden_passed"), ("Validated", "NoChange", "underpowered")]
    plan = s.transitions[0].detail["canary_plan"]
    guard = next(g for g in plan["power"]["guardrails"] if g["kpi"] == "error_rate")
    assert guard["powered"] is False and guard["power"] < 0.8 and guard["margin_for_power"] > 0.01
    assert guard["duration_for_power_minutes"] > 60
    assert abs(guard["n_control"] - 2000 * 0.8) < 1      # yesterday's traffic at this hour, 80 % on control
    alert = publishes(s, "autopilot.evt.alert")
    assert [a["kind"] for a in alert] == ["canary_underpowered"]
    assert "error_rate: power" in alert[0]["message"] and "would need margin" in alert[0]["message"]
    assert not [e for e in s.effects if e.kind == "apply"], "no canary is applied"
    assert d.ap.cycle.state == "NoChange" and "underpowered guardrail" in s.transitions[1].detail["reason"]


def test_lengthen_runs_a_longer_canary_up_to_the_configured_maximum():
    d = driver(underpowered_action="lengthen", max_canary_duration_minutes=240)
    cid, s = start(d)
    plan = s.transitions[0].detail["canary_plan"]
    assert plan["action"] == "lengthen" and 60 < plan["duration_minutes"] <= 240
    s = d.apply(s, "canary", at(3))
    deadline = schedules(s, f"{cid}.deadline")[0]["at"]
    assert deadline == at(3 + plan["duration_minutes"])
    assert d.ap.status(parse_time(at(4)))["cycle"]["canary_plan"]["duration_minutes"] == plan["duration_minutes"]


def test_run_anyway_keeps_the_configured_window_and_still_warns():
    d = driver()   # underpowered_action: run (the default)
    cid, s = start(d)
    assert [a["kind"] for a in publishes(s, "autopilot.evt.alert")] == ["canary_underpowered"]
    s = d.apply(s, "canary", at(3))
    assert schedules(s, f"{cid}.deadline")[0]["at"] == at(63)


def test_the_plans_mde_reaches_the_optimizer(monkeypatch):
    """The canary is planned before the proposal; the optimizer gets the score's MDE."""
    import vvtv_autopilot.statemachine.bounds_keeper as bk
    seen = []
    real = bk.propose

    def spy(**kw):
        seen.append(kw.get("min_detectable_gain"))
        return real(**kw)

    monkeypatch.setattr(bk, "propose", spy)
    d = driver()
    start(d)
    plan = d.ap.cycle.data.canary_plan
    assert len(seen) == 1 and plan is not None
    assert seen[0] is not None and seen[0] == plan["power"]["score_mde"]
    assert 0.0 < seen[0] < 0.5
    seen.clear()
    d2 = driver(optimizer_step_sizing="none")   # the step as before: no MDE
    start(d2)
    assert seen == [None]


def test_without_live_data_the_plan_says_the_power_cannot_be_predicted_and_runs():
    d = Driver(parse_config({"autopilot": {"underpowered_action": "skip"}, "kpis": KPIS}))
    d.boot(at(0), CARD)
    cid, s = start(d)
    plan = s.transitions[0].detail["canary_plan"]
    assert plan["run"] is True and "error_rate cannot be predicted yet (no live data)" in plan["reason"]
    assert not publishes(s, "autopilot.evt.alert"), "no alert for what nobody can know yet"


def test_a_canary_that_may_be_lengthened_gets_steps_sized_for_its_longest_window(monkeypatch):
    """With ``underpowered_action: lengthen`` and a maximum, the optimizer sizes its step for the
    longest canary allowed, never tries a candidate only its upper bound puts within reach (the
    idle fallback), and an exploration step (gain unknown) runs the longest canary."""
    import vvtv_autopilot.statemachine.bounds_keeper as bk
    seen = []
    real = bk.propose

    def spy(**kw):
        seen.append((kw.get("min_detectable_gain"), kw.get("canary_may_lengthen")))
        return real(**kw)

    monkeypatch.setattr(bk, "propose", spy)
    d = driver()
    start(d)
    mde60, lengthens = seen[-1]
    assert lengthens is False                          # no lengthening: the idle fallback stays
    d = driver(underpowered_action="lengthen", max_canary_duration_minutes=240)
    cid, s = start(d)
    mde240, lengthens = seen[-1]
    assert lengthens is True and mde240 < mde60 * 0.6  # ~ 1/2: four times the data
    plan = s.transitions[0].detail["canary_plan"]
    assert plan["action"] == "lengthen" and plan["duration_minutes"] == 240
    assert "unknown (exploration)" in plan["reason"]
    assert abs(plan["power"]["score_mde"] - mde240) < 1e-12
