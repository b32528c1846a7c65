"""End to end on a real nats-server and real SQLite: the operator's control
verbs (README, "The bus": ``ctl.<verb>`` request/reply, ``cmd.<verb>`` durable),
a few of their refusals on the bus (each refusal, one by one, is checked on the
pure core in test_core_commands.py), their effect on a running cycle, expiry of
pauses and overrides, the manual rollback, and the audit trail of every command."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from conftest import ctl, wait_for
from vvtv_autopilot.handlers.card import with_values
from vvtv_autopilot.schemas.messages import parse_time

P = "selection.diversity_weight"       # the one tunable parameter of the test config, bounds [0.1, 0.6]
HOURS_2S = 0.0005                      # 1.8 s


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _state(service) -> str | None:
    cycle = service.core.running()
    return cycle.state if cycle is not None else None


async def _finished(service, events, cycle_id):
    await wait_for(lambda: events.cycle_end(cycle_id), what=f"evt.cycle of {cycle_id}")
    return await service.store.transitions(cycle_id)


async def _canary(service, client, value: float, actor: str = "test") -> str:
    reply = await ctl(client, "propose", {"actor": actor, "changes": {P: value}})
    assert reply["ok"], reply
    await wait_for(lambda: _state(service) == "Canary", what="the canary to start")
    return reply["cycle_id"]


async def _hang_golden(client) -> None:
    """A golden-set service that never answers: a cycle waits in Bounded."""
    async def never_answer(msg):
        pass

    await client.subscribe("vvtv.golden.validate", cb=never_answer)


def _card_value(service) -> float:
    return json.loads(service.card.history.card_path.read_text())["selection"]["diversity_weight"]


def _command_events(events, verb: str, via: str | None = None) -> list[dict]:
    return [e for e in events.of("evt.command") if e.get("verb") == verb and (via is None or e.get("via") == via)]


def _refused(reply: dict, *needles: str) -> None:
    assert reply["ok"] is False, reply
    assert isinstance(reply["error"], str) and reply["error"], reply
    for needle in needles:
        assert needle in reply["error"], (needle, reply["error"])
    assert isinstance(reply["state"], str) and "cycle_id" in reply


# --- the bus path of answers and refusals ----------------------------------------------------------------
#
# Each refusal, one by one, is checked on the pure core in tests/test_core_commands.py
# (and malformed bodies against the validation the service runs); here a few go
# over the bus, where a reply, a stored command and an evt.command must come back.


async def test_every_verb_answers_on_the_bus_and_a_refusal_says_what_to_fix(service_factory, client, events):
    service = await service_factory(manual_override_hours=2)
    status = await ctl(client, "status", {})
    assert status["ok"] and status["state"] == "Idle" and status["paused"] is False
    assert (await ctl(client, "status", b""))["ok"], "status needs no body and no actor"

    # malformed bodies never reach the core
    _refused(await ctl(client, "pause", b"{not json"), "not valid JSON")
    _refused(await ctl(client, "frobnicate", {"actor": "ops"}), "unknown verb 'frobnicate'", "pause", "rollback")
    assert service.core.state.paused_until is None

    # a refusal of the core names what to do instead
    _refused(await ctl(client, "resume", {"actor": "ops"}), "not paused")

    # override: default duration is autopilot.manual_override_hours (2 h here); it shows in status; it clears.
    # (The live value, 0.35 at mid-range: pinned at once. A new value waits for VVTV: test_console.py.)
    before = _now()
    reply = await ctl(client, "override", {"actor": "alice", "reason": "holiday traffic", "parameter": P, "value": 0.35})
    assert reply["ok"] and reply["parameter"] == P, reply
    assert timedelta(minutes=119) < parse_time(reply["until"]) - before < timedelta(minutes=121)
    status = await ctl(client, "status", {})
    assert status["overrides"][P]["value"] == 0.35 and status["overrides"][P]["actor"] == "alice"
    _refused(await ctl(client, "propose", {"actor": "bob", "changes": {P: 0.4}}), "pinned", "clear it first")
    assert (await ctl(client, "clear-override", {"actor": "alice", "parameter": P}))["ok"]
    assert (await ctl(client, "status", {}))["overrides"] == {}

    # bounds-override answers, shows in status, clears
    reply = await ctl(client, "bounds-override", {"actor": "alice", "parameter": P, "min": 0.2, "max": 0.4})
    assert reply["ok"], reply
    assert timedelta(minutes=119) < parse_time(reply["until"]) - _now() < timedelta(minutes=121)
    assert (await ctl(client, "status", {}))["bounds_overrides"][P]["max_value"] == 0.4
    _refused(await ctl(client, "propose", {"actor": "ops", "changes": {P: 0.45}}), "0.45")
    assert (await ctl(client, "clear-override", {"actor": "alice", "parameter": P}))["ok"]
    assert (await ctl(client, "status", {}))["bounds_overrides"] == {}

    # pause and resume; emergency pause has no end until resume
    before = _now()
    reply = await ctl(client, "pause", {"actor": "ops", "reason": "incident 42", "hours": 1})
    assert reply["ok"] and reply["state"] == "Paused", reply
    assert timedelta(minutes=59) < parse_time(reply["paused_until"]) - before < timedelta(minutes=61)
    _refused(await ctl(client, "run-now", {"actor": "ops"}), "paused until", "resume it first")
    reply = await ctl(client, "resume", {"actor": "ops"})
    assert reply["ok"] and reply["state"] == "Idle", reply

    reply = await ctl(client, "emergency-pause", {"actor": "ops", "reason": "runaway"})
    assert reply["ok"] and reply["state"] == "Paused" and reply["paused_until"] is None, reply
    status = await ctl(client, "status", {})
    assert status["paused"] and status["emergency_pause"] and status["paused_until"] is None and status["paused_by"] == "ops"
    assert (await ctl(client, "resume", {"actor": "ops"}))["ok"]
    assert (await ctl(client, "status", {}))["paused"] is False

    # run-now answers (the optimizer proposes; nobody answers golden.validate here, so the cycle fails safe)
    reply = await ctl(client, "run-now", {"actor": "ops"})
    assert reply["ok"] and reply["cycle_id"], reply
    records = await _finished(service, events, reply["cycle_id"])
    assert records[0].to == "Analyzing" and records[0].detail["origin"] == "run-now"

    # every command the core saw is stored, with actor, reason and result
    log = await service.store.commands_log(limit=200)
    assert all(row["via"] == "ctl" and row["at"] for row in log)
    by_verb = {}
    for row in log:
        by_verb.setdefault(row["verb"], []).append(row)
    override_ok = next(r for r in by_verb["override"] if r["ok"])
    assert override_ok["actor"] == "alice" and override_ok["reason"] == "holiday traffic" and override_ok["error"] is None
    resume_refused = next(r for r in by_verb["resume"] if not r["ok"])
    assert resume_refused["actor"] == "ops" and "not paused" in resume_refused["error"]
    pause_ok = next(r for r in by_verb["pause"] if r["reason"] == "incident 42")
    assert pause_ok["ok"] and pause_ok["actor"] == "ops"
    assert any(r["verb"] == "emergency-pause" and r["reason"] == "runaway" and r["ok"] for r in log)
    assert any(r["verb"] == "propose" and not r["ok"] and "pinned" in r["error"] for r in log)
    # each stored command was also published on evt.command with its reply
    await wait_for(lambda: len(events.of("evt.command")) >= len(log), what="evt.command for every command")
    refused = next(e for e in _command_events(events, "resume") if not e["ok"])
    assert refused["actor"] == "ops" and refused["result"]["ok"] is False and "not paused" in refused["error"]
    counters = (await ctl(client, "status", {}))["counters"]
    assert counters.get("refused_requests", 0) == 2          # the two malformed requests, never the core's refusals


async def test_a_malformed_rollback_id_never_touches_the_file_system(service_factory, client, monkeypatch):
    service = await service_factory()
    touched: list[str] = []
    real_rollback = service.card.rollback_to
    monkeypatch.setattr(service.card, "rollback_to", lambda vid, **kw: touched.append(vid) or real_rollback(vid, **kw))
    listing = sorted(p.name for p in service.card.history.history_dir.iterdir())
    card_bytes = service.card.history.card_path.read_bytes()
    for bad in ["abc", "../../../etc/passwd", "A" * 64, "g" * 64, "0" * 63, "0" * 65, "../" + "0" * 61, None, 7]:
        _refused(await ctl(client, "rollback", {"actor": "ops", "version_id": bad}), "version_id")
    assert touched == []
    unknown_vid = "0" * 64
    _refused(await ctl(client, "rollback", {"actor": "ops", "version_id": unknown_vid}), unknown_vid)
    assert touched == []  # the target is verified first; the card is rolled back only once VVTV applied it
    assert sorted(p.name for p in service.card.history.history_dir.iterdir()) == listing
    assert service.card.history.card_path.read_bytes() == card_bytes
    assert (await ctl(client, "status", {}))["counters"].get("refused_requests", 0) == 9


async def test_a_running_cycle_refuses_a_second_start_and_an_emergency_pause_cancels_it(service_factory, client, events):
    service = await service_factory()
    await _hang_golden(client)
    first = await ctl(client, "propose", {"actor": "test", "changes": {P: 0.4}})
    assert first["ok"], first
    await wait_for(lambda: _state(service) == "Bounded", what="Bounded (waiting for golden)")
    _refused(await ctl(client, "propose", {"actor": "test", "changes": {P: 0.3}}), first["cycle_id"], "is running", "abort")
    status = await ctl(client, "status", {})
    assert status["state"] == "Bounded" and status["cycle_id"] == first["cycle_id"]
    # an emergency pause before the canary cancels the cycle
    reply = await ctl(client, "emergency-pause", {"actor": "ops"})
    assert reply["ok"] and reply["state"] == "Paused" and reply["cycle_id"] == first["cycle_id"], reply
    records = await _finished(service, events, first["cycle_id"])
    assert records[-1].to == "Aborted" and records[-1].cause["subject"] == "vvtv.autopilot.ctl.emergency-pause"
    assert "emergency pause by ops" in records[-1].detail["reason"]


# --- commands on a running canary ------------------------------------------------------------------------


async def test_pause_during_a_canary_rolls_it_back_and_resume_lets_run_now_work(service_factory, vvtv, client, events):
    service = await service_factory(canary_duration_minutes=5)
    sim = await vvtv(service)
    card_before = service.card.history.card_path.read_bytes()
    cycle_id = await _canary(service, client, 0.45)
    await wait_for(lambda: sim.canary is not None, what="VVTV to run the canary arm")

    reply = await ctl(client, "pause", {"actor": "ops", "reason": "incident 7", "hours": 2})
    assert reply["ok"] and reply["state"] == "Paused" and reply["cycle_id"] == cycle_id, reply
    records = await _finished(service, events, cycle_id)
    assert [r.to for r in records][-2:] == ["Gated", "RolledBack"]
    gated = records[-2]
    assert gated.cause["subject"] == "vvtv.autopilot.ctl.pause"
    assert gated.detail["recommendation"] == "rollback" and gated.detail["rule"] == "operator"
    assert "paused by ops" in gated.detail["decision"]["reason"]
    assert records[-1].cause == gated.cause
    assert events.cycle_end(cycle_id)["outcome"] == "RolledBack"
    await wait_for(lambda: sim.canary is None, what="the canary arm put back")
    assert service.card.history.card_path.read_bytes() == card_before
    await wait_for(lambda: any(a["kind"] == "paused" and a["actor"] == "ops" for a in events.of("evt.alert")),
                   what="evt.alert paused")

    _refused(await ctl(client, "run-now", {"actor": "ops"}), "paused", "resume it first")
    assert (await ctl(client, "resume", {"actor": "ops"}))["ok"]
    reply = await ctl(client, "run-now", {"actor": "ops"})
    assert reply["ok"] and reply["cycle_id"] and reply["cycle_id"] != cycle_id, reply
    assert reply["state"] not in ("Paused", "Idle")


async def test_promote_ends_a_running_canary_deployed(service_factory, vvtv, client, events):
    service = await service_factory(canary_duration_minutes=5)
    sim = await vvtv(service)
    cycle_id = await _canary(service, client, 0.45)
    reply = await ctl(client, "promote", {"actor": "alice", "reason": "looks good"})
    assert reply["ok"] and reply["cycle_id"] == cycle_id, reply
    records = await _finished(service, events, cycle_id)
    assert [r.to for r in records][-2:] == ["Gated", "Deployed"]
    gated = records[-2]
    assert gated.cause["subject"] == "vvtv.autopilot.ctl.promote"
    assert gated.detail["recommendation"] == "proceed" and gated.detail["rule"] == "operator promote"
    assert gated.detail["decision"]["actor"] == "alice" and "looks good" in gated.detail["decision"]["reason"]
    await wait_for(lambda: _card_value(service) == 0.45, what="the card written")
    assert sim.live == {P: 0.45}
    _refused(await ctl(client, "promote", {"actor": "alice"}), "nothing to promote")


async def test_abort_ends_a_running_canary_rolled_back(service_factory, vvtv, client, events):
    service = await service_factory(canary_duration_minutes=5)
    sim = await vvtv(service)
    card_before = service.card.history.card_path.read_bytes()
    cycle_id = await _canary(service, client, 0.45)
    reply = await ctl(client, "abort", {"actor": "bob"})
    assert reply["ok"] and reply["cycle_id"] == cycle_id and reply["state"] == "Idle", reply
    records = await _finished(service, events, cycle_id)
    assert [r.to for r in records][-2:] == ["Gated", "RolledBack"]
    gated = records[-2]
    assert gated.cause["subject"] == "vvtv.autopilot.ctl.abort"
    assert gated.detail["recommendation"] == "rollback" and gated.detail["rule"] == "operator abort"
    assert gated.detail["decision"]["actor"] == "bob"
    await wait_for(lambda: sim.canary is None, what="the canary arm put back")
    assert service.card.history.card_path.read_bytes() == card_before
    log = await service.store.commands_log()
    assert log[0]["verb"] == "abort" and log[0]["actor"] == "bob" and log[0]["ok"] and log[0]["reason"] is None


# --- expiry ----------------------------------------------------------------------------------------------------


async def test_override_pins_a_parameter_and_pause_and_override_expire_by_themselves(service_factory, vvtv, client, events):
    service = await service_factory()
    await vvtv(service)
    reply = await ctl(client, "override", {"actor": "alice", "parameter": P, "value": 0.3, "hours": HOURS_2S})
    assert reply["ok"], reply
    _refused(await ctl(client, "propose", {"actor": "bob", "changes": {P: 0.4}}), f"{P} is pinned", "clear it first")
    reply = await ctl(client, "pause", {"actor": "ops", "hours": HOURS_2S})
    assert reply["ok"] and reply["state"] == "Paused"

    expired = await wait_for(lambda: _command_events(events, "override-expired"), what="evt.command override-expired")
    assert expired[0]["parameter"] == P and expired[0]["ok"] is True
    await wait_for(lambda: _command_events(events, "pause-expired"), what="evt.command pause-expired")
    status = await ctl(client, "status", {})
    assert status["overrides"] == {} and status["paused"] is False and status["state"] == "Idle"

    reply = await ctl(client, "propose", {"actor": "bob", "changes": {P: 0.4}})
    assert reply["ok"] and reply["cycle_id"], reply


async def test_a_bounds_override_does_not_cancel_the_expiry_of_an_override(service_factory, vvtv, client, events):
    service = await service_factory()
    await vvtv(service)
    assert (await ctl(client, "override", {"actor": "alice", "parameter": P, "value": 0.3, "hours": HOURS_2S}))["ok"]
    assert (await ctl(client, "bounds-override", {"actor": "alice", "parameter": P, "min": 0.2, "max": 0.6, "hours": 1}))["ok"]
    await wait_for(lambda: _command_events(events, "override-expired"), timeout=20, what="the override to expire")
    status = await ctl(client, "status", {})
    assert status["overrides"] == {} and P in status["bounds_overrides"]


async def test_the_emergency_pause_setting_pauses_from_the_start_until_resume(service_factory, client):
    service = await service_factory(emergency_pause=True)
    status = await ctl(client, "status", {})
    assert status["state"] == "Paused" and status["emergency_pause"] and status["paused_until"] is None
    assert status["paused_by"] == "configuration"
    _refused(await ctl(client, "run-now", {"actor": "ops"}), "until resume")
    assert (await ctl(client, "resume", {"actor": "ops"}))["ok"]
    assert (await ctl(client, "run-now", {"actor": "ops"}))["ok"]


async def test_a_bounds_override_widens_a_narrow_sliding_range_for_a_proposal(service_factory, client, events):
    service = await service_factory(sliding_bounds={"initial_half_width_fraction": 0.1})
    await _hang_golden(client)
    _refused(await ctl(client, "propose", {"actor": "alice", "changes": {P: 0.55}}), "sliding maximum")
    reply = await ctl(client, "bounds-override", {"actor": "alice", "parameter": P, "min": 0.2, "max": 0.6, "hours": 1})
    assert reply["ok"], reply
    reply = await ctl(client, "propose", {"actor": "alice", "changes": {P: 0.55}})
    assert reply["ok"], reply
    records = await service.store.transitions(reply["cycle_id"])
    assert [r.to for r in records] == ["Analyzing", "Bounded"], [(r.to, r.detail.get("reason")) for r in records]
    (check,) = records[-1].detail["checks"]
    assert check["action"] == "accepted" and check["value"] == 0.55


# --- manual rollback ----------------------------------------------------------------------------------------------


async def test_rollback_restores_the_previous_card_and_tells_vvtv(service_factory, vvtv, client, events):
    service = await service_factory()
    sim = await vvtv(service)
    history = service.card.history
    old_vid, old_bytes = history.current_version_id(), history.card_path.read_bytes()
    reply = await ctl(client, "propose", {"actor": "test", "changes": {P: 0.45}})
    records = await _finished(service, events, reply["cycle_id"])
    assert records[-1].to == "Deployed" and records[-1].detail["previous_version"] == old_vid
    await wait_for(lambda: history.current_version_id() == records[-1].detail["version_id"], what="the card written")
    assert old_vid in [v.version_id for v in history.get_version_history()]

    reply = await ctl(client, "rollback", {"actor": "ops", "reason": "regression seen by editors", "version_id": old_vid})
    assert reply["ok"] and reply["version_id"] == old_vid, reply
    assert history.card_path.read_bytes() == old_bytes
    assert history.current_version_id() == old_vid
    assert (await ctl(client, "status", {}))["card_version"] == old_vid
    applied = await wait_for(lambda: [r for r in sim.apply_log if r["arm"] == "live" and r["version_id"] == old_vid],
                             what="the rollback applied on VVTV")
    assert applied[-1]["cycle_id"] is None and applied[-1]["traffic_percentage"] == 1.0
    assert applied[-1]["parameters"] == {P: json.loads(old_bytes)["selection"]["diversity_weight"]}
    await wait_for(lambda: sim.live == applied[-1]["parameters"], what="VVTV live on the old version")
    log = await service.store.commands_log()
    assert log[0]["verb"] == "apply-result" and log[0]["ok"] and log[0]["actor"] == "ops"  # VVTV's answer
    assert log[1]["verb"] == "rollback" and log[1]["ok"] and log[1]["actor"] == "ops"
    assert log[1]["reason"] == "regression seen by editors"


async def test_a_refused_rollback_leaves_the_card_on_disk_alone(service_factory, client, events):
    service = await service_factory()
    history = service.card.history
    other = history.store_version(with_values(history.current_card(), {P: 0.2}), [], "an older card", _now())
    card_bytes = history.card_path.read_bytes()
    await _hang_golden(client)
    first = await ctl(client, "propose", {"actor": "test", "changes": {P: 0.4}})
    await wait_for(lambda: _state(service) == "Bounded", what="Bounded (waiting for golden)")
    reply = await ctl(client, "rollback", {"actor": "ops", "version_id": other.version_id})
    _refused(reply, first["cycle_id"], "abort it first")
    assert history.card_path.read_bytes() == card_bytes


async def test_a_rollback_refused_for_an_unknown_version_is_stored(service_factory, client, events):
    service = await service_factory()
    reply = await ctl(client, "rollback", {"actor": "ops", "reason": "bad deploy", "version_id": "f" * 64})
    _refused(reply, "f" * 64)
    log = await service.store.commands_log()
    assert log and log[0]["verb"] == "rollback" and log[0]["actor"] == "ops" and log[0]["reason"] == "bad deploy"
    assert log[0]["ok"] is False and "f" * 64 in log[0]["error"]


# --- durable commands ------------------------------------------------------------------------------------------------


async def test_durable_commands_publish_their_result_and_bad_ones_go_to_the_dlq(service_factory, client, events):
    service = await service_factory()
    js = client.jetstream()
    await js.publish("vvtv.autopilot.cmd.pause", json.dumps({"actor": "alert-engine", "reason": "error budget", "hours": 1}).encode())
    result = (await wait_for(lambda: _command_events(events, "pause", "cmd"), what="evt.command of cmd.pause"))[0]
    assert result["ok"] is True and result["actor"] == "alert-engine" and result["result"]["state"] == "Paused"
    assert (await ctl(client, "status", {}))["paused"] is True

    await js.publish("vvtv.autopilot.cmd.resume", json.dumps({"actor": "alert-engine"}).encode())
    await wait_for(lambda: _command_events(events, "resume", "cmd"), what="evt.command of cmd.resume")
    await js.publish("vvtv.autopilot.cmd.resume", json.dumps({"actor": "alert-engine"}).encode())
    await wait_for(lambda: len(_command_events(events, "resume", "cmd")) == 2, what="the second cmd.resume")
    first, second = _command_events(events, "resume", "cmd")
    assert first["ok"] is True and second["ok"] is False and "not paused" in second["error"]

    await js.publish("vvtv.autopilot.cmd.pause", b"{oops")
    await js.publish("vvtv.autopilot.cmd.pause", json.dumps({"actor": "x", "hour": 1}).encode())
    await js.publish("vvtv.autopilot.cmd.frobnicate", json.dumps({"actor": "x"}).encode())
    await js.publish("vvtv.autopilot.cmd.status", b"{}")
    letters = await wait_for(lambda: len(events.of("dlq")) >= 4 and events.of("dlq"), what="four dead letters")
    assert [d["subject"] for d in letters] == ["vvtv.autopilot.cmd.pause", "vvtv.autopilot.cmd.pause",
                                               "vvtv.autopilot.cmd.frobnicate", "vvtv.autopilot.cmd.status"]
    assert "not valid JSON" in letters[0]["reason"] and letters[0]["payload_excerpt"] == "{oops"
    assert "hour" in letters[1]["reason"]
    assert "unknown verb" in letters[2]["reason"]
    assert "ctl.status" in letters[3]["reason"]
    assert all(d["received_at"] for d in letters)

    # the autopilot keeps going after the bad ones
    await js.publish("vvtv.autopilot.cmd.emergency-pause", json.dumps({"actor": "alert-engine"}).encode())
    result = (await wait_for(lambda: _command_events(events, "emergency-pause", "cmd"), what="cmd.emergency-pause"))[0]
    assert result["ok"] and result["result"]["paused_until"] is None
    log = await service.store.commands_log()
    assert [(r["verb"], r["via"], r["ok"]) for r in log] == [
        ("emergency-pause", "cmd", True), ("resume", "cmd", False), ("resume", "cmd", True), ("pause", "cmd", True)]
    assert log[-1]["actor"] == "alert-engine" and log[-1]["reason"] == "error budget"
    assert (await ctl(client, "status", {}))["counters"]["dead_letters"] == 4


async def test_a_durable_rollback_is_carried_out(service_factory, client, events):
    service = await service_factory()
    vid = service.card.history.current_version_id()
    await client.jetstream().publish("vvtv.autopilot.cmd.rollback",
                                     json.dumps({"actor": "deployer", "version_id": vid}).encode())
    result = (await wait_for(lambda: _command_events(events, "rollback", "cmd"), what="evt.command of cmd.rollback"))[0]
    assert result["ok"] is True, result
