"""Operator commands and timers as steps of the pure core: pause and its expiry,
the daily timer, promote and abort, and every refusal of a verb with the reply
that says what to fix; and, just before the core, the validation that refuses a
malformed command body.
"""

from __future__ import annotations

import json

import msgspec
import pytest

from core_driver import P, CARD, at, Driver, effect, publishes, schedules, moves, booted
from vvtv_autopilot.handlers.card import version_id
from vvtv_autopilot.infra.inbound import command_event
from vvtv_autopilot.schemas.errors import MessageError
from vvtv_autopilot.schemas.messages import parse_time
from vvtv_autopilot.statemachine import Step


# --- pause, daily timer, promote and abort -----------------------------------------------------------


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


# --- every refusal of a verb, one by one ---------------------------------------------------------
#
# Each case sets the autopilot up, sends one well-formed command (validated as the
# service validates it, so the refusal is the core's) and checks that the reply
# refuses it, says what to fix, and changes nothing. The bus path of a refusal is
# covered once end to end in tests/test_commands.py.


def _pause(d: Driver) -> None:
    assert _send(d, "pause", at(0.5), {"hours": 1}).reply["ok"]


def _emergency_pause(d: Driver) -> None:
    assert _send(d, "emergency-pause", at(0.5), {}).reply["ok"]


def _pin(d: Driver) -> None:
    asked = _send(d, "override", at(0.5), {"parameter": P, "value": 0.3})
    assert asked.reply["ok"] and asked.reply["pending_apply"]
    assert d.apply(asked, "override", at(0.6)).reply["applied"] is True  # pinned once VVTV applied it


def _override_bounds(d: Driver) -> None:
    assert _send(d, "bounds-override", at(0.5), {"parameter": P, "min": 0.2, "max": 0.4}).reply["ok"]


def _start(d: Driver) -> None:
    """A cycle waiting in Bounded for its golden-set reply."""
    assert _send(d, "propose", at(0.5), {"changes": {P: 0.4}}).reply["ok"]
    assert d.ap.running().state == "Bounded"


def _send(d: Driver, verb: str, when: str, body: dict, extra: dict | None = None) -> Step:
    """A command as the service hands it to the core: the body validated by the
    schema (``command_event``), plus what infra adds (a rollback's outcome)."""
    event = command_event(verb, json.dumps({"actor": "ops", **body}).encode(), "ctl")
    if extra:
        event = msgspec.structs.replace(event, body={**event.body, **extra})
    return d.feed(event, when, f"ctl.{verb}")


NARROW = {"sliding_bounds": {"initial_half_width_fraction": 0.1}}
NOPE = "selection.nope"
VID = "f" * 64

# (id, configuration, setup, verb, body, what infra adds, what the error must name; {cid} = the running cycle)
REFUSALS = [
    ("resume-not-paused", {}, None, "resume", {}, None, ["not paused"]),
    ("promote-idle", {}, None, "promote", {}, None, ["nothing to promote", "no cycle is running"]),
    ("abort-idle", {}, None, "abort", {}, None, ["nothing to abort", "no cycle is running"]),
    ("clear-override-none", {}, None, "clear-override", {"parameter": P}, None, [P, "no override to clear"]),
    ("override-unknown-parameter", {}, None, "override", {"parameter": NOPE, "value": 0.3}, None,
     [f"unknown parameter '{NOPE}'", P]),
    ("propose-unknown-parameter", {}, None, "propose", {"changes": {NOPE: 0.3}}, None,
     [f"unknown parameter '{NOPE}'", P]),
    ("bounds-override-unknown-parameter", {}, None, "bounds-override",
     {"parameter": NOPE, "min": 0.1, "max": 0.2}, None,
     [f"unknown parameter '{NOPE}'", P]),
    ("override-outside-hard-limits", {}, None, "override", {"parameter": P, "value": 0.9}, None,
     ["outside its hard limits [0.1, 0.6]"]),
    ("propose-outside-hard-limits", {}, None, "propose", {"changes": {P: 0.05}}, None,
     ["outside its hard limits [0.1, 0.6]"]),
    ("bounds-override-outside-hard-limits", {}, None, "bounds-override",
     {"parameter": P, "min": 0.05, "max": 0.5}, None,
     ["hard limits"]),
    ("bounds-override-without-the-current-value", {}, None, "bounds-override", {"parameter": P, "min": 0.4, "max": 0.5},
     None, ["contain the current value"]),
    ("rollback-not-restored", {}, None, "rollback", {"version_id": VID}, None, [VID, "could not be restored"]),
    ("rollback-history-error", {}, None, "rollback", {"version_id": VID},
     {"rollback_error": f"version {VID} is unknown"},
     [f"version {VID} is unknown"]),
    ("run-now-disabled", {"enabled": False}, None, "run-now", {}, None, ["disabled", "autopilot.enabled: false"]),
    ("run-now-paused", {}, _pause, "run-now", {}, None, ["paused until", "resume it first"]),
    ("propose-paused", {}, _pause, "propose", {"changes": {P: 0.4}}, None, ["paused", "resume it first"]),
    ("pause-in-emergency-pause", {}, _emergency_pause, "pause", {"hours": 1}, None, ["emergency pause", "resume"]),
    ("run-now-in-emergency-pause", {}, _emergency_pause, "run-now", {}, None, ["until resume"]),
    ("propose-pinned", {}, _pin, "propose", {"changes": {P: 0.4}}, None, [f"{P} is pinned", "clear it first"]),
    ("propose-outside-a-bounds-override", {}, _override_bounds, "propose", {"changes": {P: 0.45}}, None, ["0.45"]),
    ("propose-beyond-the-sliding-range", NARROW, None, "propose", {"changes": {P: 0.55}}, None, ["sliding maximum"]),
    ("propose-while-running", {}, _start, "propose", {"changes": {P: 0.3}}, None, ["{cid}", "is running", "abort"]),
    ("run-now-while-running", {}, _start, "run-now", {}, None, ["{cid}", "is running"]),
    ("promote-before-the-canary", {}, _start, "promote", {}, None, ["nothing to promote", "is in Bounded"]),
    ("abort-before-the-canary", {}, _start, "abort", {}, None, ["nothing to abort", "is in Bounded"]),
    ("override-to-a-new-value-while-running", {}, _start, "override", {"parameter": P, "value": 0.3}, None,
     ["{cid}", "abort it before overriding"]),
    ("rollback-while-running", {}, _start, "rollback", {"version_id": VID}, None, ["{cid}", "abort it first"]),
]


@pytest.mark.parametrize("config, setup, verb, body, extra, needles", [case[1:] for case in REFUSALS],
                         ids=[case[0] for case in REFUSALS])
def test_every_refusal_says_what_to_fix(config, setup, verb, body, extra, needles):
    d = booted(**config)
    if setup is not None:
        setup(d)
    running = d.ap.running()
    cid = running.data.cycle_id if running else None
    state_before = msgspec.json.encode(d.ap.state)
    cycle_before = msgspec.json.encode(running.data) if running else None

    s = _send(d, verb, at(1), body, extra)
    reply = s.reply
    assert reply["ok"] is False, reply
    assert isinstance(reply["error"], str) and reply["error"], reply
    for needle in needles:
        needle = needle.format(cid=cid)
        assert needle in reply["error"], (needle, reply["error"])
    assert reply["state"] == d.ap.mode(parse_time(at(1))) and reply["cycle_id"] == cid
    # a refusal changes nothing, and is stored and published like any command
    assert not s.transitions and msgspec.json.encode(d.ap.state) == state_before
    assert (msgspec.json.encode(d.ap.running().data) if running else None) == cycle_before
    assert s.command["verb"] == verb and s.command["actor"] == "ops"
    assert s.command["ok"] is False and s.command["error"] == reply["error"]
    (published,) = publishes(s, "autopilot.evt.command")
    assert published["result"] == reply


def test_pause_extends_resume_ends_it_and_the_emergency_pause_lasts_until_resume():
    d = booted()
    s = _send(d, "pause", at(1), {"reason": "incident 42", "hours": 1})
    assert s.reply["ok"] and s.reply["state"] == "Paused" and s.reply["paused_until"] == at(61)
    s = _send(d, "pause", at(2), {})                                     # default 48 h, extends
    assert s.reply["ok"] and s.reply["paused_until"] == at(2 + 48 * 60)
    s = _send(d, "resume", at(3), {})
    assert s.reply["ok"] and s.reply["state"] == "Idle"

    s = _send(d, "emergency-pause", at(4), {"reason": "runaway"})
    assert s.reply["ok"] and s.reply["state"] == "Paused" and s.reply["paused_until"] is None
    status = d.ap.status(parse_time(at(5)))
    assert status["paused"] and status["emergency_pause"] and status["paused_until"] is None
    assert status["paused_by"] == "ops"
    assert _send(d, "resume", at(6), {}).reply["ok"]
    assert d.ap.status(parse_time(at(7)))["paused"] is False


# --- before the core: malformed bodies ------------------------------------------------------------
#
# The service validates every control body (infra.inbound.command_event, i.e. the
# schemas.messages command structs) and refuses a malformed one before the core sees
# it; tests/test_commands.py sends one such body over the bus.


MALFORMED = [
    ("not-json", "pause", b"{not json", ["not valid JSON"]),
    ("hour-for-hours", "pause", {"actor": "ops", "hour": 2}, ["hour"]),
    ("no-actor", "pause", {"hours": 2}, ["actor"]),
    ("empty-actor", "pause", {"actor": "", "hours": 2}, ["actor"]),
    ("pause-zero-hours", "pause", {"actor": "ops", "hours": 0}, ["hours"]),
    ("pause-over-a-week", "pause", {"actor": "ops", "hours": 168.5}, ["hours"]),
    ("override-zero-hours", "override", {"actor": "ops", "parameter": P, "value": 0.3, "hours": 0}, ["hours"]),
    ("override-over-a-week", "override", {"actor": "ops", "parameter": P, "value": 0.3, "hours": 169}, ["hours"]),
    ("long-reason", "pause", {"actor": "ops", "reason": "x" * 1025}, ["reason"]),
    ("no-changes", "propose", {"actor": "ops", "changes": {}}, ["changes"]),
    ("empty-bounds", "bounds-override", {"actor": "ops", "parameter": P, "min": 0.5, "max": 0.5},
     ["`min` (0.5) must be below `max` (0.5)"]),
    ("inverted-bounds", "bounds-override", {"actor": "ops", "parameter": P, "min": 0.7, "max": 0.2}, ["below"]),
    ("unknown-verb", "frobnicate", {"actor": "ops"}, ["unknown verb 'frobnicate'", "pause", "rollback"]),
] + [(f"rollback-id-{i}", "rollback", {"actor": "ops", "version_id": bad}, ["version_id"])
     for i, bad in enumerate(["abc", "../../../etc/passwd", "A" * 64, "g" * 64, "0" * 63, "0" * 65, "../" + "0" * 61,
                              None, 7])]


@pytest.mark.parametrize("verb, body, needles", [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_a_malformed_body_is_refused_before_the_core(verb, body, needles):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(MessageError) as refused:
        command_event(verb, data, "ctl")
    for needle in needles:
        assert needle in str(refused.value), (needle, str(refused.value))


def test_status_needs_no_body_and_no_actor():
    assert command_event("status", b"", "ctl").body["actor"] is None
    assert command_event("status", b"{}", "ctl").verb == "status"
