"""Replay for incident review: the same inbox gives the same steps, a recorded
cycle replays to the same transitions (also a daily cycle after a deployed one),
and a replay under another configuration reports where it diverges.
"""

from __future__ import annotations

from datetime import timedelta

import msgspec

from core_driver import make_config, at, booted
from vvtv_autopilot.schemas.events import AlertEvent, Inbound
from vvtv_autopilot.schemas.messages import parse_time, rfc3339
from vvtv_autopilot.statemachine.replay import compare, replay_cycle


def test_same_inbox_gives_the_same_steps():
    def run() -> list[bytes]:
        d = booted()
        cid, _ = d.to_canary()
        d.arms(at(10), d.candidate)
        d.timer("check", at(13), cid)
        if d.ap.running().state == "Canary":
            d.timer("deadline", at(63), cid)
        d.answer_live(at(64))
        assert d.ap.running() is None
        return [msgspec.json.encode([st.transitions, st.effects, st.reply]) for st in d.steps]

    assert run() == run()


def test_replay_reproduces_the_recorded_transitions():
    d = booted()
    d.metric("selection_entropy", "live", None, d.rng.normal(1.0, 0.1, 300), at(-30))
    d.metric("error_rate", "live", None, d.rng.normal(0.02, 0.004, 300), at(-30))
    state_before = msgspec.json.encode(d.ap.state)
    first = len(d.inbounds)

    cid, _ = d.to_canary()
    d.feed(AlertEvent("w", "warning", "vvtv", "meh", at(4)), at(4), "alerts")
    for minute in (10, 20, 30):
        if d.ap.running().state != "Canary":
            break
        d.arms(at(minute), d.candidate, n_control=200, n_canary=50)
        d.timer("check", at(minute + 3), cid)
    if d.ap.running().state == "Canary":
        d.timer("deadline", at(63), cid)
    d.answer_live(at(64))
    recorded = [t for t in d.transitions if t.cycle_id == cid]
    assert recorded[-1].to in ("Deployed", "RolledBack")

    # the inbox as the store would give it back
    inbox = [msgspec.json.decode(msgspec.json.encode(i), type=Inbound) for i in d.inbounds[first:]]
    replayed = replay_cycle(d.config, state_before, inbox, cid)
    assert compare(recorded, replayed) == []
    assert [t.seq for t in replayed] == list(range(1, len(recorded) + 1))


def test_replay_reports_a_divergence():
    d = booted()
    state_before = msgspec.json.encode(d.ap.state)
    first = len(d.inbounds)
    cid, _ = d.to_canary()
    d.command("abort", at(5))
    recorded = [t for t in d.transitions if t.cycle_id == cid]
    # a different configuration: the canary lasts 30 minutes, so the plan recorded at Validated
    # (seq 3) differs first, then the Canary's deadline (seq 4)
    other = make_config(canary_duration_minutes=30)
    replayed = replay_cycle(other, state_before, d.inbounds[first:], cid)
    problems = compare(recorded, replayed)
    assert problems[:2] == ["seq 3: differs in detail", "seq 4: differs in detail"]


def test_replay_of_a_daily_cycle_after_a_deployed_one():
    d = booted()
    cid1, _ = d.to_canary()
    d.arms(at(10), d.candidate)
    if d.ap.running().state == "Canary":
        d.timer("deadline", at(63), cid1)
    d.answer_live(at(64))
    assert d.ap.cycle.state == "Deployed" and d.ap.state.tuning.outcomes
    d.metric("selection_entropy", "live", None, d.rng.normal(1.1, 0.1, 500), at(120))

    state_before = msgspec.json.encode(d.ap.state)
    first = len(d.inbounds)
    token = d.ap.state.next_daily
    s = d.timer("daily", token, token=token)
    cid2 = d.ap.running().data.cycle_id
    assert cid2 != cid1 and d.ap.running().data.analysis["kpis"]["selection_entropy"]["n"] == 500
    start = parse_time(token)
    s = d.golden(s, rfc3339(start + timedelta(minutes=1)))
    s = d.apply(s, "canary", rfc3339(start + timedelta(minutes=2)))
    d.feed(AlertEvent("c", "critical", "vvtv", "boom", token), rfc3339(start + timedelta(minutes=7)), "alerts")
    recorded = [t for t in d.transitions if t.cycle_id == cid2]
    assert [t.to for t in recorded] == ["Analyzing", "Bounded", "Validated", "Canary", "Gated", "RolledBack"]
    replayed = replay_cycle(d.config, state_before, d.inbounds[first:], cid2)
    assert compare(recorded, replayed) == []


def test_replay_of_a_cycle_whose_failure_the_core_contained(monkeypatch):
    """Exact replay steps the core without containment's pre-images; when the core fails on an
    event (here the gate, at the first check), it replays the cycle again with containment, as
    the service ran it: the contained failure's transitions come out as recorded."""
    from vvtv_autopilot.statemachine import cycle as cycle_module

    def explode(*args, **kwargs):
        raise TypeError("unsupported operand type(s) for -: 'NoneType' and 'float'")

    d = booted()
    state_before = msgspec.json.encode(d.ap.state)
    first = len(d.inbounds)
    cid, _ = d.to_canary()
    monkeypatch.setattr(cycle_module, "evaluate_gate", explode)   # the bug, still there when replaying
    d.timer("check", at(15), cid)
    recorded = [t for t in d.transitions if t.cycle_id == cid]
    assert recorded[-1].to == "Failed" and "internal error while handling timer.check" in recorded[-1].detail["reason"]
    replayed = replay_cycle(d.config, state_before, iter(d.inbounds[first:]), cid)   # any iterable, read twice
    assert compare(recorded, replayed) == []
