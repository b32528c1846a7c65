"""What-if replay and portable recordings (incident review).

A recorded cycle (state before it, configuration, golden set, inbox, transitions) is
exported as JSON lines and replays identically from the file; a tampered record is caught
at the step it changes; a stricter configuration turns a recorded proceed into a rollback
exactly where the recorded numbers say so; and the recorded configuration reproduces the
recorded decisions.
"""

from __future__ import annotations

import msgspec
import pytest

from sim_harness import SimWorld, sim_config
from vvtv_autopilot.schemas.errors import RecordingError
from vvtv_autopilot.schemas.messages import parse_time
from vvtv_autopilot.schemas.events import (MetricStats, RecordedCycle, decode_recorded_cycle,
                                           encode_recorded_cycle)
from vvtv_autopilot.statemachine.replay import compare, replay_recorded, summarize_what_ifs, what_if


@pytest.fixture(scope="module")
def world() -> SimWorld:
    # the optimizer's small steps (no canary-MDE sizing) give a record with many canaries,
    # some proceeding on thin evidence: what a what-if is for
    w = SimWorld(seed=11, config=sim_config(autopilot={"optimizer_step_sizing": "none"}))
    w.run_days(12)
    return w


def record(w: SimWorld, c) -> RecordedCycle:
    last = parse_time(c.transitions[-1].at)   # RFC 3339 texts with and without fractions do not sort as text
    end = next((i for i in range(c.fed_index, len(w.fed)) if parse_time(w.fed[i].at) > last), len(w.fed))
    return RecordedCycle(cycle_id=c.cycle_id, config=w.config.model_dump_json(), state_before=c.state_before.decode(),
                         golden=msgspec.json.encode(w.golden).decode() if w.golden is not None else None,
                         inbounds=list(w.fed[c.fed_index:end + 1]), transitions=list(c.transitions))


def deployed_and_rolled_back(w: SimWorld):
    cycles = [c for c in w.cycles.values() if c.outcome in ("Deployed", "RolledBack")]
    assert {c.outcome for c in cycles} == {"Deployed", "RolledBack"}
    return cycles


def test_an_export_replays_identically_from_its_file(world: SimWorld, tmp_path):
    for c in deployed_and_rolled_back(world)[:4]:
        path = tmp_path / f"{c.cycle_id}.jsonl"
        path.write_bytes(encode_recorded_cycle(record(world, c)))
        loaded = decode_recorded_cycle(path.read_bytes())
        assert loaded.cycle_id == c.cycle_id and len(loaded.transitions) == len(c.transitions)
        assert compare(loaded.transitions, replay_recorded(loaded)) == [], c.cycle_id


def test_a_tampered_record_is_caught_at_the_step_it_changes(world: SimWorld):
    c = next(c for c in world.cycles.values() if c.outcome == "Deployed")
    rec = record(world, c)
    # make every canary batch of the candidate look 30 % worse: the gate's step differs, nothing before it
    tampered = [msgspec.structs.replace(ib, event=msgspec.structs.replace(ib.event, mean=ib.event.mean * 0.7))
                if isinstance(ib.event, MetricStats) and ib.event.arm == "canary" and ib.event.kpi == "selection_entropy"
                else ib for ib in rec.inbounds]
    problems = compare(rec.transitions, replay_recorded(msgspec.structs.replace(rec, inbounds=tampered)))
    judge = next(t.seq for t in c.transitions if t.trigger == "judge")
    assert problems and problems[0].startswith(f"seq {judge}:"), problems


def test_a_malformed_export_is_refused_naming_the_line(world: SimWorld):
    c = deployed_and_rolled_back(world)[0]
    lines = encode_recorded_cycle(record(world, c)).splitlines()
    with pytest.raises(RecordingError, match="line 3 is not a valid Inbound"):
        decode_recorded_cycle(b"\n".join(lines[:2] + [b'{"key": 1}'] + lines[3:]))
    with pytest.raises(RecordingError, match="the header announces"):
        decode_recorded_cycle(b"\n".join(lines[:-1]))


def test_the_recorded_configuration_reproduces_the_recorded_decisions(world: SimWorld):
    results = [what_if(record(world, c), world.config) for c in deployed_and_rolled_back(world)]
    assert all(r.same and r.outcome == r.recorded_outcome for r in results), [
        (r.cycle_id, r.recorded_outcome, r.outcome, r.differences[:1]) for r in results if not r.same]
    assert summarize_what_ifs(results)["changed"] == {}


def test_a_stricter_confidence_turns_a_recorded_proceed_into_a_rollback_where_the_numbers_say_so(world: SimWorld):
    strict = world.config.model_copy(update={"autopilot": world.config.autopilot.model_copy(
        update={"statistical_confidence_threshold": 0.9999})})
    deployed = [c for c in world.cycles.values() if c.outcome == "Deployed"]
    results = [what_if(record(world, c), strict) for c in deployed]
    flipped = [r for r in results if r.outcome == "RolledBack"]
    assert flipped, [(r.cycle_id, r.outcome) for r in results]
    for r in results:
        judged = [t for t in r.transitions if t.trigger == "judge"][-1].detail
        numbers = judged["decision"]
        evidence = max([numbers["p_improvement"]] + [k["p_noninferior"] for k in numbers["kpis"]])
        if r.outcome == "Deployed":   # every test passed the stricter bar
            assert judged["recommendation"] == "proceed" and evidence <= 1e-4, (r.cycle_id, numbers)
        else:                         # the stricter bar is what stopped it: the recorded decision was proceed
            assert r.outcome == "RolledBack" and judged["recommendation"] != "proceed" and evidence > 1e-4
            first = next(d for d in r.differences if d.recorded and d.recorded["trigger"] == "judge")
            assert first.recorded["recommendation"] == "proceed" and first.what_if["recommendation"] != "proceed"
    summary = summarize_what_ifs(results)
    assert summary["changed"] == {"Deployed -> RolledBack": len(flipped)}
    assert f"{len(flipped)} of {len(deployed)} Deployed cycles would have ended RolledBack" in summary["summary"]


def test_replay_reproduces_every_look_and_the_deciding_one_is_the_recorded_decision(world: SimWorld):
    from vvtv_autopilot.statemachine.replay import gate_looks

    for c in deployed_and_rolled_back(world)[:4]:
        looks = gate_looks(record(world, c))
        judge = next(t for t in c.transitions if t.trigger == "judge")
        assert looks and all(look.action == "continue" for look in looks[:-1]), c.cycle_id
        assert looks[-1].at == judge.at
        plain = lambda v: msgspec.json.decode(msgspec.json.encode(v))  # noqa: E731 (tuples read back as lists)
        assert plain(looks[-1].decision) == plain(judge.detail["decision"])
