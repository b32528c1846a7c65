"""Fast unit tests of the pure core (statemachine/ + handlers/): no bus, no store.

Every test builds an ``Autopilot`` from a parsed configuration, feeds it
``Inbound`` envelopes (Boot first) and asserts on the returned ``Step``s and
on the autopilot's state. Replies (golden, apply), metric batches (numpy draws
from a seeded generator) and timers are driven by hand, so every decision is
reproducible and the whole file runs in a couple of seconds.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
import numpy as np
import pytest

from vvtv_autopilot.handlers.card import get_path, version_id
from vvtv_autopilot.handlers.stats import RunningStats
from vvtv_autopilot.schemas.config import parse_config
from vvtv_autopilot.schemas.events import (AlertEvent, ApplyResult, Boot, CommandEvent, Effect, GoldenResult, Inbound,
                                           MetricStats, TimerEvent, TransitionRecord)
from vvtv_autopilot.schemas.messages import parse_time, rfc3339
from vvtv_autopilot.statemachine import MACHINE_HASH, Autopilot, AutopilotState, CycleData, Step
from vvtv_autopilot.statemachine.replay import compare, replay_cycle

P = "selection.diversity_weight"
CARD = {"selection": {"diversity_weight": 0.35}}
T0 = datetime(2026, 11, 26, tzinfo=timezone.utc)
KPIS = {"selection_entropy": {"direction": "increase", "weight": 1.0},
        "error_rate": {"direction": "decrease", "critical": True, "margin": 0.1}}
DESIGN_PATH = ["Analyzing", "Bounded", "Validated", "Canary", "Gated", "Deployed"]


def make_config(**autopilot: Any):
    tree = {"canary_duration_minutes": 60, "check_interval_minutes": 10, "min_samples_per_arm": 30,
            "max_execution_time_minutes": 10, "sliding_bounds": {"initial_half_width_fraction": 0.5}}
    tree.update(autopilot)
    return parse_config({"autopilot": tree, "kpis": KPIS})


def at(minutes: float) -> str:
    return rfc3339(T0 + timedelta(minutes=minutes))


class Driver:
    """Feeds the core one Inbound at a time and keeps everything it produced."""

    def __init__(self, config=None, ap: Autopilot | None = None, *, seed: int = 7, counter: int = 0):
        self.config = config or make_config()
        self.ap = ap or Autopilot(self.config)
        self.rng = np.random.default_rng(seed)
        self.inbounds: list[Inbound] = []
        self.steps: list[Step] = []
        self.n = counter

    # --- plumbing ---------------------------------------------------------------------

    def feed(self, event: Any, when: str, subject: str) -> Step:
        self.n += 1
        inbound = Inbound(key=f"k{self.n}", subject=subject, at=when, event=event, stream_seq=self.n)
        self.inbounds.append(inbound)
        step = self.ap.handle(inbound)
        self.steps.append(step)
        return step

    @property
    def transitions(self) -> list[TransitionRecord]:
        return [t for s in self.steps for t in s.transitions]

    def boot(self, when: str = at(0), card: dict | None = None) -> Step:
        card = card or CARD
        return self.feed(Boot(card, version_id(card)), when, "boot")

    def command(self, verb: str, when: str, **body: Any) -> Step:
        body.setdefault("actor", "tester")
        return self.feed(CommandEvent(verb, body), when, f"ctl.{verb}")

    def timer(self, kind: str, when: str, cycle_id: str | None = None, token: str | None = None) -> Step:
        running = self.ap.running()
        if kind == "deadline" and token is None and running is not None and running.data.cycle_id == cycle_id:
            token = running.data.deadline  # as the scheduled deadline message carries it
        return self.feed(TimerEvent(kind, cycle_id, token), when, f"timer.{kind}")

    def golden(self, step: Step, when: str, passed: bool = True) -> Step:
        e = effect(step, "golden")
        cid = e.body["request"]["cycle_id"]
        return self.feed(GoldenResult(e.effect_id, cid, passed, cases_run=3,
                                      failures=[] if passed else [{"case": "x", "why": "bad"}]), when, "reply.golden")

    def apply(self, step: Step, purpose: str, when: str, applied: bool = True, error: str | None = None) -> Step:
        e = effect(step, "apply", purpose)
        return self.feed(ApplyResult(e.effect_id, e.body["request"]["cycle_id"], purpose, applied, error),
                         when, "reply.apply")

    def metric(self, kpi: str, arm: str, version: str | None, values, when: str) -> Step:
        s = RunningStats.of(values)
        return self.feed(MetricStats(kpi, arm, version, s.n, s.mean, s.m2, when), when, f"metrics.{arm}")

    def arms(self, when: str, version: str | None, *, lift: float = 0.1, n_control: int = 800,
             n_canary: int = 200) -> list[Step]:
        """One batch per KPI and arm: selection_entropy lifted by ``lift`` on the canary,
        error_rate the same on both arms. 4:1 matches the 20 % canary share (no SRM)."""
        r = self.rng
        return [
            self.metric("selection_entropy", "control", None, r.normal(1.0, 0.1, n_control), when),
            self.metric("selection_entropy", "canary", version, r.normal(1.0 + lift, 0.1, n_canary), when),
            self.metric("error_rate", "control", None, r.normal(0.02, 0.004, n_control), when),
            self.metric("error_rate", "canary", version, r.normal(0.02, 0.004, n_canary), when),
        ]

    def answer_live(self, when: str, applied: bool = True) -> Step | None:
        """Answer the live apply the running cycle awaits, from whichever step asked for it."""
        cycle = self.ap.running()
        if cycle is None or cycle.state != "Gated":
            return None
        asked = next(st for st in reversed(self.steps)
                     if any(e.effect_id == cycle.data.awaiting for e in st.effects))
        return self.apply(asked, "live", when, applied)

    # --- reaching a stage -------------------------------------------------------------

    def to_canary(self, start: float = 1.0) -> tuple[str, Step]:
        """run-now at ``start`` minutes, golden passes 1 min later, the canary applies 1 min after."""
        s = self.command("run-now", at(start))
        assert s.reply["ok"], s.reply
        cid = s.reply["cycle_id"]
        s = self.golden(s, at(start + 1))
        s = self.apply(s, "canary", at(start + 2))
        assert self.ap.running().state == "Canary"
        return cid, s

    @property
    def candidate(self) -> str:
        return self.ap.running().data.candidate_version


def effects(step: Step, kind: str, purpose: str | None = None) -> list[Effect]:
    return [e for e in step.effects if e.kind == kind and (purpose is None or e.body.get("purpose") == purpose)]


def effect(step: Step, kind: str, purpose: str | None = None) -> Effect:
    found = effects(step, kind, purpose)
    assert len(found) == 1, (kind, purpose, [(e.kind, e.body.get("purpose")) for e in step.effects])
    return found[0]


def publishes(step: Step, tail: str) -> list[dict]:
    return [e.body for e in step.effects if e.kind == "publish" and e.subject == tail]


def schedules(step: Step, name: str | None = None) -> list[dict]:
    return [e.body for e in step.effects if e.kind == "schedule" and (name is None or e.body["name"] == name)]


def moves(records: list[TransitionRecord]) -> list[tuple[str, str, str]]:
    return [(t.from_, t.to, t.trigger) for t in records]


def booted(**autopilot: Any) -> Driver:
    d = Driver(make_config(**autopilot) if autopilot else None)
    d.boot()
    return d


# --- 1. happy path ------------------------------------------------------------------------


def test_happy_path_through_every_design_state_to_deployed():
    d = booted()
    card_before = msgspec.json.encode(d.ap.state.card)
    version_before = d.ap.state.card_version

    s = d.command("run-now", at(1))
    cid = s.reply["cycle_id"]
    assert s.reply["ok"] and s.reply["state"] == "Bounded"
    golden = effect(s, "golden")
    params = golden.body["request"]["parameters"]
    assert 0.1 <= params[P] <= 0.6 and params[P] != 0.35
    assert d.ap.running().data.awaiting == golden.effect_id

    s = d.golden(s, at(2))
    canary_apply = effect(s, "apply", "canary")
    assert canary_apply.body["request"]["arm"] == "canary"
    assert canary_apply.body["request"]["traffic_percentage"] == pytest.approx(0.2)
    s = d.apply(s, "canary", at(3))
    assert [x["name"] for x in schedules(s)] == [f"{cid}.deadline", f"{cid}.check"]
    assert schedules(s, f"{cid}.deadline")[0]["at"] == at(63)
    cand = d.candidate
    d.arms(at(10), cand)
    assert d.ap.running().data.canary["selection_entropy"].n == 200
    # the card is untouched until the very end
    assert msgspec.json.encode(d.ap.state.card) == card_before

    s = d.timer("deadline", at(63), cid)
    live_apply = effect(s, "apply", "live")
    assert live_apply.body["request"]["traffic_percentage"] == 1.0
    assert d.ap.running().state == "Gated"
    assert d.ap.state.card_version == version_before
    s = d.apply(s, "live", at(64))

    write = effect(s, "write_card")
    assert write.body["version_id"] == cand
    assert d.ap.running() is None and d.ap.cycle.state == "Deployed"
    assert d.ap.state.card_version == cand and version_id(d.ap.state.card) == cand
    assert get_path(d.ap.state.card, P) == params[P]
    assert d.ap.state.last_cycle["outcome"] == "Deployed" and d.ap.state.active_cycle_id is None
    assert publishes(s, "autopilot.evt.cycle")[0]["outcome"] == "Deployed"

    records = d.transitions
    assert [t.to for t in records] == DESIGN_PATH
    assert [t.seq for t in records] == list(range(1, len(records) + 1))
    assert {t.cycle_id for t in records} == {cid}
    for t in records:
        assert t.machine == MACHINE_HASH
    # each record's cause is the inbound that caused it, its time that inbound's
    by_key = {i.key: i for i in d.inbounds}
    for step in d.steps:
        for t in step.transitions:
            assert t.cause["key"] == step.inbound.key and t.at == step.inbound.at
            assert by_key[t.cause["key"]].subject == t.cause["subject"]
    assert [t.at for t in records] == [at(1), at(1), at(2), at(3), at(63), at(64)]
    gated = records[4]
    assert gated.detail["rule"] == "deadline" and gated.detail["recommendation"] == "proceed"
    assert "Proceed" in gated.detail["canary_result"]["recommendation"]
    # each transition was also published, with the record's id
    published = [e for st in d.steps for e in st.effects if e.subject == "autopilot.evt.transition"]
    assert [e.effect_id for e in published] == [f"tr:{cid}:{i}" for i in range(1, 7)]
    # the card changed in exactly one step: the Deployed one
    assert d.steps[-1].transitions[-1].to == "Deployed"


def test_card_changes_only_in_the_deployed_step():
    d = booted()
    versions = [d.ap.state.card_version]
    s = d.command("run-now", at(1))
    versions.append(d.ap.state.card_version)
    s = d.golden(s, at(2))
    versions.append(d.ap.state.card_version)
    s = d.apply(s, "canary", at(3))
    versions.append(d.ap.state.card_version)
    d.arms(at(10), d.candidate)
    versions.append(d.ap.state.card_version)
    s = d.timer("deadline", at(63), d.ap.running().data.cycle_id)
    versions.append(d.ap.state.card_version)
    s = d.apply(s, "live", at(64))
    versions.append(d.ap.state.card_version)
    assert len(set(versions[:-1])) == 1 and versions[-1] != versions[0]


# --- 2. restore mid-canary ----------------------------------------------------------------


def _run_to_end(d: Driver, cid: str) -> None:
    d.arms(at(30), d.candidate)
    s = d.timer("deadline", at(63), cid)
    d.apply(s, "live", at(64))


def test_restore_mid_canary_continues_without_rerunning_entry_actions():
    # the reference: one uninterrupted run
    ref = booted()
    cid, _ = ref.to_canary()
    ref.arms(at(10), ref.candidate)
    _run_to_end(ref, cid)

    d = booted()
    cid2, _ = d.to_canary()
    d.arms(at(10), d.candidate)
    assert cid2 == cid
    state_bytes = msgspec.json.encode(d.ap.state)
    cycle_bytes = msgspec.json.encode(d.ap.running().data)
    seq_before = d.ap.running().data.seq

    state = msgspec.json.decode(state_bytes, type=AutopilotState)
    cycle = msgspec.json.decode(cycle_bytes, type=CycleData)
    assert cycle.state == "Canary" and cycle.seq == 4
    restored = Driver(d.config, Autopilot(d.config, state, cycle), seed=99, counter=d.n)
    restored.rng = d.rng                       # the same draws as the reference from here on
    assert restored.ap.running().state == "Canary"
    assert restored.ap.running().data.canary["selection_entropy"].n == 200

    # a restart: Boot re-arms the canary's timers, runs nothing else
    s = restored.boot(at(20))
    assert not s.transitions
    assert {x["name"] for x in schedules(s)} >= {f"{cid}.deadline", f"{cid}.check"}
    assert schedules(s, f"{cid}.deadline")[0]["at"] == at(63)
    assert not effects(s, "golden") and not effects(s, "apply")
    restored.n = d.n  # keep inbound keys aligned with the reference run (boot took one)
    restored.inbounds.clear()

    _run_to_end(restored, cid)
    after = restored.transitions
    assert [t.seq for t in after] == [seq_before + 1, seq_before + 2]
    assert [t.to for t in after] == ["Gated", "Deployed"]
    all_effects = [e for st in restored.steps for e in st.effects]
    assert not [e for e in all_effects if e.kind == "golden"]
    assert [e.body["purpose"] for e in all_effects if e.kind == "apply"] == ["live"]
    assert restored.ap.state.card_version == cycle.candidate_version
    # and the same decisions as without the restart
    ref_tail = ref.transitions[-2:]
    assert compare(ref_tail, after) == []


# --- 3. timeout fail-safe -----------------------------------------------------------------


def test_timeout_with_current_token_fails_an_active_cycle_and_alerts():
    d = booted()
    s = d.command("run-now", at(1))
    cid = s.reply["cycle_id"]
    token = d.ap.running().data.timer_token
    assert token == "timeout:2"
    sched = schedules(s, f"{cid}.timeout")
    assert sched[-1]["event"] == {"kind": "timeout", "cycle_id": cid, "token": token}
    assert sched[-1]["at"] == at(11)

    # a stale token (armed on entering Analyzing) is ignored
    s = d.timer("timeout", at(11), cid, "timeout:1")
    assert not s.transitions and d.ap.running().state == "Bounded"
    # a timer for another cycle is ignored
    s = d.timer("timeout", at(11), "some-other-cycle", token)
    assert not s.transitions and s.counters.get("stale_timers") == 1

    s = d.timer("timeout", at(11), cid, token)
    assert moves(s.transitions) == [("Bounded", "Failed", "fail")]
    assert "timeout" in s.transitions[0].detail["reason"]
    alerts = publishes(s, "autopilot.evt.alert")
    assert alerts and alerts[0]["kind"] == "cycle_failed" and alerts[0]["cycle_id"] == cid
    assert not effects(s, "apply")            # nothing was applied before Validated
    assert d.ap.running() is None and d.ap.state.last_cycle["outcome"] == "Failed"
    # the late golden reply is ignored
    s = d.feed(GoldenResult(f"{cid}:2:golden", cid, True), at(12), "reply.golden")
    assert not s.transitions


def test_timeout_after_validated_rolls_the_canary_arm_back_as_a_precaution():
    d = booted()
    s = d.command("run-now", at(1))
    cid = s.reply["cycle_id"]
    s = d.golden(s, at(2))                    # Validated, canary apply in flight
    token = d.ap.running().data.timer_token
    assert token == "timeout:3"
    # the budget counts active time already spent: 1 min in Bounded, so 9 remain
    assert schedules(s, f"{cid}.timeout")[-1]["at"] == at(11)

    s = d.timer("timeout", at(11), cid, "timeout:2")    # from Bounded: stale
    assert not s.transitions
    s = d.timer("timeout", at(11), cid, token)
    assert moves(s.transitions) == [("Validated", "Failed", "fail")]
    rollback = effect(s, "apply", "canary_rollback")
    assert rollback.body["request"]["version_id"] == version_id(CARD)
    assert rollback.body["request"]["parameters"] == {P: 0.35}
    assert publishes(s, "autopilot.evt.alert")[0]["kind"] == "cycle_failed"
    assert d.ap.state.card_version == version_id(CARD)


def test_time_in_canary_does_not_count_against_the_active_budget():
    d = booted(max_execution_time_minutes=1, canary_duration_minutes=600)
    s = d.command("run-now", at(0))
    cid = s.reply["cycle_id"]
    s = d.golden(s, at(0.25))
    validated_token = d.ap.running().data.timer_token
    s = d.apply(s, "canary", at(0.5))
    assert d.ap.running().data.active_seconds == pytest.approx(30.0)
    assert d.ap.running().data.timer_token is None
    # the timeout armed in Validated falls due during the canary: stale
    s = d.timer("timeout", at(1), cid, validated_token)
    assert not s.transitions and d.ap.running().state == "Canary"
    d.arms(at(300), d.candidate)
    s = d.timer("deadline", at(600.5), cid)
    assert moves(s.transitions) == [("Canary", "Gated", "judge")]
    # the Gated timeout gets only what is left of the budget: 60 s - 30 s
    assert schedules(s, f"{cid}.timeout")[-1]["at"] == rfc3339(parse_time(at(600.5)) + timedelta(seconds=30))
    s = d.apply(s, "live", at(600.6))
    assert s.transitions[-1].to == "Deployed"
    assert d.ap.cycle.data.active_seconds == pytest.approx(36.0)


def test_a_timeout_timer_without_token_does_not_fail_a_canary():
    """No timeout is armed in Canary (its token is None): a timeout message
    carrying no token must not match that None and fail the canary."""
    d = booted()
    cid, _ = d.to_canary()
    s = d.timer("timeout", at(30), cid, None)
    assert not s.transitions and d.ap.running().state == "Canary"


def test_timeout_in_gated_rolls_back_both_arms():
    d = booted()
    cid, _ = d.to_canary()
    d.arms(at(10), d.candidate)
    s = d.timer("deadline", at(63), cid)
    token = d.ap.running().data.timer_token
    assert d.ap.running().state == "Gated" and token
    s = d.timer("timeout", at(80), cid, token)
    assert moves(s.transitions) == [("Gated", "Failed", "fail")]
    assert {e.body["purpose"] for e in effects(s, "apply")} == {"canary_rollback", "live_rollback"}
    assert d.ap.state.card_version == version_id(CARD)


# --- 4. alerts ------------------------------------------------------------------------------


def test_critical_alert_in_canary_rolls_back_and_warning_does_nothing():
    d = booted()
    cid, _ = d.to_canary()
    s = d.feed(AlertEvent("a1", "warning", "vvtv", "latency a bit high", at(5)), at(5), "alerts")
    assert not s.transitions and not s.effects and d.ap.running().state == "Canary"

    s = d.feed(AlertEvent("a2", "critical", "vvtv", "error budget burning", at(6), kpi="error_rate"), at(6), "alerts")
    assert moves(s.transitions) == [("Canary", "Gated", "judge"), ("Gated", "RolledBack", "rolled_back")]
    gated = s.transitions[0]
    assert gated.detail["rule"] == "critical alert" and gated.detail["recommendation"] == "rollback"
    assert "a2" in gated.detail["decision"]["reason"]
    assert effect(s, "apply", "canary_rollback").body["request"]["version_id"] == version_id(CARD)
    assert publishes(s, "autopilot.evt.alert")[0]["kind"] == "cycle_rolledback"
    assert d.ap.running() is None and d.ap.state.card_version == version_id(CARD)


def test_critical_alert_outside_a_canary_does_nothing():
    d = booted()
    s = d.feed(AlertEvent("a1", "critical", "vvtv", "boom", at(1)), at(1), "alerts")
    assert not s.transitions and not s.effects
    s = d.command("run-now", at(2))
    s = d.feed(AlertEvent("a2", "critical", "vvtv", "boom", at(2.5)), at(2.5), "alerts")
    assert not s.transitions and d.ap.running().state == "Bounded"


# --- 5. inconclusive -> extend once ---------------------------------------------------------


# A canary 0.5 % worse than control: non-inferior (margin 2 %) but no improvement to show. (With
# lift 0 the seeded draw is a +2.15 sigma fluke that now proceeds: the critical error_rate no longer
# dilutes the score, its weight defaults to 0.)
NULL_LIFT = -0.005


def test_inconclusive_deadline_extends_once_then_rolls_back():
    d = booted(inconclusive_action="extend")
    cid, _ = d.to_canary(start=0)              # canary from minute 2, deadline at 62
    d.arms(at(20), d.candidate, lift=NULL_LIFT)
    s = d.timer("check", at(12), cid)
    assert not s.transitions and schedules(s, f"{cid}.check")
    s = d.timer("deadline", at(62), cid)
    assert moves(s.transitions) == [("Canary", "Canary", "extend")]
    ext = s.transitions[0]
    assert ext.detail["deadline"] == at(122)
    assert ext.detail["decision"]["recommendation"] == "inconclusive"
    assert schedules(s, f"{cid}.deadline")[0]["at"] == at(122)
    assert d.ap.running().data.extended and d.ap.running().data.deadline == at(122)

    d.arms(at(90), d.candidate, lift=NULL_LIFT)
    s = d.timer("deadline", at(122), cid)
    assert moves(s.transitions) == [("Canary", "Gated", "judge"), ("Gated", "RolledBack", "rolled_back")]
    assert s.transitions[0].detail["recommendation"] == "inconclusive"
    assert s.transitions[0].detail["decision"]["elapsed_fraction"] == pytest.approx(2.0)
    assert [t.seq for t in d.transitions] == list(range(1, 8))


def test_inconclusive_without_extend_rolls_back_at_the_first_deadline():
    d = booted()
    cid, _ = d.to_canary(start=0)
    d.arms(at(20), d.candidate, lift=NULL_LIFT)
    s = d.timer("deadline", at(62), cid)
    assert moves(s.transitions) == [("Canary", "Gated", "judge"), ("Gated", "RolledBack", "rolled_back")]


# --- 6. metrics -------------------------------------------------------------------------------


def test_canary_batches_of_another_version_are_not_counted():
    d = booted()
    cid, _ = d.to_canary()
    vals = d.rng.normal(1.0, 0.1, 50)
    s = d.metric("selection_entropy", "canary", "not-the-candidate", vals, at(5))
    assert s.counters == {"ignored_arm_samples": 50} and not s.cycle_rows
    assert "selection_entropy" not in d.ap.running().data.canary
    s = d.metric("selection_entropy", "canary", d.candidate, vals, at(5))
    assert s.counters == {"canary_samples": 50} and s.cycle_rows
    s = d.metric("selection_entropy", "canary", None, vals, at(6))   # unlabelled: counted
    assert s.counters == {"canary_samples": 50}
    s = d.metric("selection_entropy", "control", None, vals, at(6))
    assert s.counters == {"canary_samples": 50}
    s = d.metric("selection_entropy", "shadow", None, vals, at(6))
    assert s.counters == {"ignored_arm_samples": 50}
    data = d.ap.running().data
    assert data.canary["selection_entropy"].n == 100 and data.control["selection_entropy"].n == 50


def test_arm_batches_without_a_canary_are_ignored():
    d = booted()
    s = d.metric("selection_entropy", "canary", None, [1.0, 2.0], at(1))
    assert s.counters == {"ignored_arm_samples": 2}


def test_unconfigured_kpi_is_counted_as_ignored():
    d = booted()
    cid, _ = d.to_canary()
    s = d.metric("watch_time", "canary", d.candidate, [1.0, 2.0, 3.0], at(5))
    assert s.counters == {"ignored_kpi": 1}
    s = d.metric("watch_time", "live", None, [1.0, 2.0, 3.0], at(5))
    assert s.counters == {"ignored_kpi": 1}
    assert "watch_time" not in d.ap.running().data.canary and "watch_time" not in d.ap.state.live


def test_live_batches_feed_the_next_cycles_analysis_window():
    d = booted()
    rng = np.random.default_rng(3)
    old = rng.normal(5.0, 1.0, 40)            # 30 hours before the cycle: outside the 24 h window
    recent = [rng.normal(1.0, 0.1, 100), rng.normal(1.2, 0.1, 60)]
    d.metric("selection_entropy", "live", None, old, rfc3339(T0 - timedelta(hours=30)))
    d.metric("selection_entropy", "live", None, recent[0], rfc3339(T0 - timedelta(hours=3, minutes=10)))
    s = d.metric("selection_entropy", "live", None, recent[1], rfc3339(T0 - timedelta(minutes=20)))
    assert s.counters == {"live_samples": 60}
    buckets = d.ap.state.live["selection_entropy"]
    assert sorted(buckets) == [rfc3339(T0 - timedelta(hours=30)), rfc3339(T0 - timedelta(hours=4)),
                               rfc3339(T0 - timedelta(hours=1))]
    # live batches do not touch a canary
    s = d.command("run-now", at(1))
    analysis = d.ap.running().data.analysis
    assert analysis["window_hours"] == 24
    se = analysis["kpis"]["selection_entropy"]
    both = np.concatenate(recent)
    assert se["n"] == 160
    assert se["mean"] == pytest.approx(both.mean(), rel=1e-12)
    assert se["variance"] == pytest.approx(both.var(ddof=1), rel=1e-9)
    assert analysis["kpis"]["error_rate"]["n"] == 0
    assert s.transitions[0].detail["analysis"] == analysis


def test_live_buckets_are_pruned_beyond_the_window():
    d = booted(analysis_window_hours=2)
    for h in range(10):
        d.metric("error_rate", "live", None, [0.01, 0.02], rfc3339(T0 + timedelta(hours=h, minutes=30)))
    buckets = d.ap.state.live["error_rate"]
    assert len(buckets) <= 2 + 2
    assert max(buckets) == rfc3339(T0 + timedelta(hours=9))


# --- 7. commands ------------------------------------------------------------------------------


def test_pause_during_canary_rolls_back_and_expiry_unpauses():
    d = booted()
    cid, _ = d.to_canary()
    s = d.command("pause", at(10), hours=2, reason="holiday")
    assert s.reply["ok"] and s.reply["cycle_id"] == cid and s.reply["state"] == "Paused"
    until = s.reply["paused_until"]
    assert until == at(130)
    assert moves(s.transitions) == [("Canary", "Gated", "judge"), ("Gated", "RolledBack", "rolled_back")]
    assert s.transitions[0].detail["rule"] == "operator"
    assert effect(s, "apply", "canary_rollback")
    assert schedules(s, "pause")[0]["event"] == {"kind": "pause_expiry", "token": until}
    assert any(a["kind"] == "paused" for a in publishes(s, "autopilot.evt.alert"))
    assert s.command["verb"] == "pause" and s.command["ok"]

    s = d.command("run-now", at(20))
    assert not s.reply["ok"] and "paused" in s.reply["error"] and not s.transitions
    assert d.ap.state.cycle_counter == 1

    s = d.timer("pause_expiry", at(130), token=at(60))      # not this pause's token
    assert d.ap.paused(parse_time(at(129))) and not publishes(s, "autopilot.evt.command")
    s = d.timer("pause_expiry", at(130), token=until)
    assert d.ap.state.paused_until is None and not d.ap.paused(parse_time(at(130)))
    assert publishes(s, "autopilot.evt.command")[0]["verb"] == "pause-expired"
    s = d.command("run-now", at(131))
    assert s.reply["ok"]


def test_daily_timer_stale_token_ignored_current_token_starts_a_cycle_and_rearms():
    d = Driver()
    s = d.boot(at(0))
    token = d.ap.state.next_daily
    assert token == "2026-11-26T03:00:00Z"
    assert schedules(s, "daily")[0]["event"] == {"kind": "daily", "token": token}

    s = d.timer("daily", at(180), token="2026-11-25T03:00:00Z")
    assert s.counters.get("stale_timers") == 1 and d.ap.running() is None and not s.effects
    assert d.ap.state.next_daily == token

    s = d.timer("daily", token, token=token)
    cycle = d.ap.running()
    assert cycle is not None and cycle.data.origin == "daily" and cycle.data.actor == "scheduler"
    assert s.transitions[0].trigger == "start"
    nxt = "2026-11-27T03:00:00Z"
    assert d.ap.state.next_daily == nxt
    assert schedules(s, "daily") == [{"name": "daily", "at": nxt, "event": {"kind": "daily", "token": nxt}}]

    # the same (now stale) daily timer delivered again starts nothing
    s = d.timer("daily", token, token=token)
    assert s.counters.get("stale_timers") == 1 and not s.transitions


def test_daily_timer_while_paused_rearms_but_starts_nothing():
    d = booted()
    d.command("pause", at(1), hours=10)
    token = d.ap.state.next_daily
    s = d.timer("daily", token, token=token)
    assert d.ap.running() is None and not s.transitions
    assert schedules(s, "daily")[0]["at"] == "2026-11-27T03:00:00Z"


def test_promote_and_abort_a_canary():
    d = booted()
    cid, _ = d.to_canary()
    s = d.command("promote", at(5), reason="looks fine")
    assert s.reply["ok"] and s.reply["cycle_id"] == cid
    assert moves(s.transitions) == [("Canary", "Gated", "judge")]
    assert s.transitions[0].detail["rule"] == "operator promote"
    s = d.apply(s, "live", at(6))
    assert s.transitions[-1].to == "Deployed" and d.ap.state.card_version != version_id(CARD)

    cid2, _ = d.to_canary(start=10)
    assert cid2 != cid
    s = d.command("abort", at(15))
    assert s.reply["ok"] and s.reply["cycle_id"] == cid2
    assert moves(s.transitions) == [("Canary", "Gated", "judge"), ("Gated", "RolledBack", "rolled_back")]
    assert s.transitions[0].detail["rule"] == "operator abort"

    s = d.command("promote", at(20))
    assert not s.reply["ok"] and "no canary is running" in s.reply["error"]
    s = d.command("abort", at(20))
    assert not s.reply["ok"]


def test_promote_refused_before_the_canary_and_abort_via_pause_before_it():
    d = booted()
    s = d.command("run-now", at(1))
    s = d.command("promote", at(1.5))
    assert not s.reply["ok"] and "Bounded" in s.reply["error"] and not s.transitions
    s = d.command("run-now", at(1.6))
    assert not s.reply["ok"] and "running" in s.reply["error"]
    s = d.command("emergency-pause", at(2))
    assert moves(s.transitions) == [("Bounded", "Aborted", "cancel")]
    assert s.reply["emergency_pause"] and d.ap.state.paused_forever
    s = d.command("pause", at(3))
    assert not s.reply["ok"] and "emergency" in s.reply["error"]
    s = d.command("resume", at(4))
    assert s.reply["ok"] and not d.ap.paused(parse_time(at(4)))
    s = d.command("resume", at(5))
    assert not s.reply["ok"]


def test_unknown_verb_refused():
    d = booted()
    s = d.command("launch-rockets", at(1))
    assert not s.reply["ok"] and "unknown verb" in s.reply["error"]


def test_propose_out_of_range_is_refused_and_in_range_runs_with_the_value():
    d = booted()
    s = d.command("propose", at(1), changes={P: 0.9})
    assert not s.reply["ok"] and "hard limits" in s.reply["error"]
    s = d.command("propose", at(2), changes={P: 0.5})
    assert s.reply["ok"]
    assert effect(s, "golden").body["request"]["parameters"] == {P: 0.5}
    assert d.ap.running().data.origin == "propose"


# --- 8. replay --------------------------------------------------------------------------------


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
    # a different configuration: the canary lasts 30 minutes, so "Canary" detail differs
    other = make_config(canary_duration_minutes=30)
    replayed = replay_cycle(other, state_before, d.inbounds[first:], cid)
    problems = compare(recorded, replayed)
    assert problems and "detail" in problems[0] and problems[0].startswith("seq 4")


# --- 9. validation failures -------------------------------------------------------------------


def test_consecutive_golden_failures_pause_the_autopilot():
    d = booted(validation_failures_before_pause=2)
    s = d.command("run-now", at(1))
    s = d.golden(s, at(2), passed=False)
    assert moves(s.transitions) == [("Bounded", "Failed", "golden_failed")]
    assert publishes(s, "autopilot.evt.alert")[0]["kind"] == "cycle_failed"
    assert d.ap.state.validation_failures == 1 and not d.ap.paused(parse_time(at(2)))
    assert not effects(s, "apply")

    s = d.command("run-now", at(3))
    assert s.reply["ok"]
    s = d.golden(s, at(4), passed=False)
    assert d.ap.state.validation_failures == 0  # the pause is the consequence; counting starts afresh
    assert d.ap.paused(parse_time(at(4))) and d.ap.state.paused_by == "fail-safe"
    until = rfc3339(parse_time(at(4)) + timedelta(hours=48))
    assert d.ap.state.paused_until == until
    kinds = [a["kind"] for a in publishes(s, "autopilot.evt.alert")]
    assert kinds == ["cycle_failed", "paused"]
    assert schedules(s, "pause")[0]["event"] == {"kind": "pause_expiry", "token": until}
    s = d.command("run-now", at(5))
    assert not s.reply["ok"] and "paused" in s.reply["error"]
    # the daily timer starts nothing while paused
    tok = d.ap.state.next_daily
    s = d.timer("daily", tok, token=tok)
    assert d.ap.running() is None


def test_a_good_cycle_resets_the_validation_failure_count():
    d = booted(validation_failures_before_pause=2)
    s = d.command("run-now", at(1))
    d.golden(s, at(2), passed=False)
    assert d.ap.state.validation_failures == 1
    cid, _ = d.to_canary(start=3)
    s = d.command("promote", at(10))            # a canary verdict: Deployed
    d.apply(s, "live", at(10.5))
    assert d.ap.state.validation_failures == 0
    s = d.command("run-now", at(11))
    d.golden(s, at(12), passed=False)
    assert d.ap.state.validation_failures == 1 and not d.ap.paused(parse_time(at(12)))


# --- misc: the step is pure -------------------------------------------------------------------


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


# --- more fail-safes ----------------------------------------------------------------------------


def test_restore_while_awaiting_the_canary_apply_and_boot_rearms_the_timeout():
    d = booted()
    s = d.command("run-now", at(1))
    cid = s.reply["cycle_id"]
    s = d.golden(s, at(3))                           # 2 active minutes spent in Bounded
    apply_effect = effect(s, "apply", "canary")
    state = msgspec.json.decode(msgspec.json.encode(d.ap.state), type=AutopilotState)
    cycle = msgspec.json.decode(msgspec.json.encode(d.ap.running().data), type=CycleData)
    assert cycle.state == "Validated" and cycle.awaiting == apply_effect.effect_id

    r = Driver(d.config, Autopilot(d.config, state, cycle), counter=d.n)
    s = r.boot(at(5))
    assert not s.transitions and not effects(s, "apply") and not effects(s, "golden")
    timeout = schedules(s, f"{cid}.timeout")
    # entered Validated at minute 3 with 8 of 10 minutes left: due at minute 11, not 5 + 8
    assert timeout == [{"name": f"{cid}.timeout", "at": at(11),
                        "event": {"kind": "timeout", "cycle_id": cid, "token": "timeout:3"}}]
    s = r.apply(d.steps[-1], "canary", at(6))
    assert moves(s.transitions) == [("Validated", "Canary", "canary_started")]
    assert s.transitions[0].seq == 4


def test_canary_apply_failure_fails_the_cycle_with_a_precautionary_rollback():
    d = booted()
    s = d.command("run-now", at(1))
    s = d.golden(s, at(2))
    s = d.apply(s, "canary", at(3), applied=False, error="timed out")
    assert moves(s.transitions) == [("Validated", "Failed", "canary_apply_failed")]
    assert effect(s, "apply", "canary_rollback").body["request"]["parameters"] == {P: 0.35}
    assert publishes(s, "autopilot.evt.alert")[0]["kind"] == "cycle_failed"
    assert d.ap.state.validation_failures == 0 and d.ap.state.card_version == version_id(CARD)


def test_live_apply_failure_restores_the_previous_version_on_both_arms():
    d = booted()
    cid, _ = d.to_canary()
    d.command("promote", at(5))
    s = d.answer_live(at(6), applied=False)
    assert moves(s.transitions) == [("Gated", "RolledBack", "rolled_back")]
    assert {e.body["purpose"] for e in effects(s, "apply")} == {"live_rollback", "canary_rollback"}
    assert not effects(s, "write_card")
    assert d.ap.state.card_version == version_id(CARD)


def test_unsolicited_failed_apply_reply_raises_an_alert():
    d = booted()
    s = d.feed(ApplyResult("nobody:1:apply", None, "manual_rollback", False, "disk full"), at(1), "reply.apply")
    assert not s.transitions
    assert publishes(s, "autopilot.evt.alert")[0]["kind"] == "apply_failed"


def test_boot_with_a_card_changed_outside_alerts_and_adopts_it():
    d = booted()
    other = {"selection": {"diversity_weight": 0.4}}
    s = d.boot(at(5), other)
    assert publishes(s, "autopilot.evt.alert")[0]["kind"] == "card_changed_outside"
    assert d.ap.state.card_version == version_id(other)


def test_emergency_pause_in_configuration_stops_an_open_canary_at_boot():
    d = booted()
    cid, _ = d.to_canary()
    d.arms(at(10), d.candidate)
    state = msgspec.json.decode(msgspec.json.encode(d.ap.state), type=AutopilotState)
    cycle = msgspec.json.decode(msgspec.json.encode(d.ap.running().data), type=CycleData)
    cfg = make_config(emergency_pause=True)
    r = Driver(cfg, Autopilot(cfg, state, cycle), counter=d.n)
    r.boot(at(20))
    assert r.ap.state.paused_forever
    if r.ap.running() is not None and r.ap.running().state == "Canary":
        r.timer("deadline", at(63), cid)
        r.answer_live(at(64))
    assert r.ap.cycle.state != "Deployed"
    assert r.ap.state.card_version == version_id(CARD)


def test_replay_of_a_daily_cycle_after_a_deployed_one():
    d = booted()
    cid1, _ = d.to_canary()
    d.arms(at(10), d.candidate)
    if d.ap.running().state == "Canary":
        d.timer("deadline", at(63), cid1)
    d.answer_live(at(64))
    assert d.ap.cycle.state == "Deployed" and d.ap.state.outcomes
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


def test_a_deadline_from_before_an_extension_is_stale():
    d = booted(inconclusive_action="extend")
    cid, _ = d.to_canary()
    running = d.ap.running()
    first = running.data.deadline
    s = d.timer("deadline", at(100), cid, token=at(30))
    assert s.transitions == [] and s.counters.get("stale_timers") == 1 and running.data.deadline == first


# --- drift monitor and triage in the core ---------------------------------------------------------


def test_three_rolled_back_canaries_in_a_row_pause_the_autopilot_through_the_drift_monitor():
    d = booted()
    for i in range(3):
        cid, _ = d.to_canary(start=10 * i + 1)
        s = d.command("abort", at(10 * i + 5))
    drift = publishes(s, "autopilot.evt.drift")
    assert [e["event_type"] for e in drift] == ["ConsecutiveFailures"]
    assert drift[0]["action_taken"] == {"kind": "PauseAutopilot", "duration_hours": 48.0}
    assert d.ap.paused(parse_time(at(26))) and d.ap.state.paused_by == "drift-monitor"
    assert [a["kind"] for a in publishes(s, "autopilot.evt.alert") if a["kind"] == "paused"] == ["paused"]
    assert s.drift_rows and s.drift_rows[0].event_type == "ConsecutiveFailures"


def test_triage_runs_on_its_weekly_timer_and_on_request():
    d = booted()
    token = d.ap.state.next_triage
    assert token == "2026-11-29T02:00:00Z"  # the first Sunday 02:00 after the boot
    cid, _ = d.to_canary(start=1)
    d.command("abort", at(5))
    s = d.command("triage", at(6))
    assert s.reply["ok"] and s.reply["failure_counts"].get("CanaryRollbacks") == 1
    assert publishes(s, "autopilot.evt.triage")[0]["reason"] == "requested by tester"
    stale = d.timer("triage", at(7), token="2026-11-22T02:00:00Z")
    assert not stale.triage_rows and stale.counters.get("stale_timers") == 1
    s = d.timer("triage", token, token=token)
    assert len(s.triage_rows) == 1 and d.ap.state.next_triage == "2026-12-06T02:00:00Z"
    assert schedules(s, "triage")[0]["event"] == {"kind": "triage", "token": "2026-12-06T02:00:00Z"}
