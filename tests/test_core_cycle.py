"""The cycle's path through the pure core: the happy path to Deployed, the card
changing in one step only, and restoring a cycle from its snapshot (mid-canary,
awaiting an apply) with a Boot that re-arms timers and re-runs nothing.
"""

from __future__ import annotations

import msgspec
import pytest

from core_driver import HAPPY_PATH, P, at, Driver, effects, effect, publishes, schedules, moves, booted
from vvtv_autopilot.handlers.card import get_path, version_id
from vvtv_autopilot.statemachine import MACHINE_HASH, Autopilot, AutopilotState, CycleData
from vvtv_autopilot.statemachine.replay import compare


# --- the happy path ----------------------------------------------------------------------------------


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
    assert [t.to for t in records] == HAPPY_PATH
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


# --- restore from a snapshot -------------------------------------------------------------------------


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


def test_boot_with_a_card_changed_outside_alerts_and_adopts_it():
    d = booted()
    other = {"selection": {"diversity_weight": 0.4}}
    s = d.boot(at(5), other)
    assert publishes(s, "autopilot.evt.alert")[0]["kind"] == "card_changed_outside"
    assert d.ap.state.card_version == version_id(other)
