"""Operator commands and timers as steps of the pure core: pause and its expiry,
the daily timer, promote and abort, and every refusal of a verb with the reply
that says what to fix.
"""

from __future__ import annotations

from core_driver import P, CARD, at, Driver, effect, publishes, schedules, moves, booted
from vvtv_autopilot.handlers.card import version_id
from vvtv_autopilot.schemas.messages import parse_time


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
