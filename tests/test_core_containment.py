"""The core never stops silently: a bug while stepping an event is contained.

The state goes back to what it was before the event; the daily timer and the
weekly triage stay armed; a running cycle is failed safely (precautionary
rollback); an ``evt.alert`` names the event and the error; ``status`` shows it;
a command gets ``ok: false`` naming the internal error.
"""

from __future__ import annotations

import pytest

from core_driver import at, booted, effects, publishes, schedules
from vvtv_autopilot.schemas.messages import parse_time
from vvtv_autopilot.statemachine import cycle as cycle_module
from vvtv_autopilot.statemachine.bounds_keeper import BoundsKeeper


def _explode(*args, **kwargs):
    raise TypeError("unsupported operand type(s) for -: 'NoneType' and 'float'")


def test_a_failing_daily_cycle_start_keeps_the_next_daily_timer_and_says_so(monkeypatch: pytest.MonkeyPatch):
    d = booted()
    token = d.ap.state.next_daily
    counter = d.ap.state.cycle_counter
    monkeypatch.setattr(BoundsKeeper, "propose", _explode)
    s = d.timer("daily", token, token=token)
    assert d.ap.running() is None and d.ap.state.cycle_counter == counter   # the state as before the event
    daily = schedules(s, "daily")
    assert len(daily) == 1 and daily[0]["at"] > token, daily                 # tomorrow's run is armed
    assert schedules(s, "triage"), "the weekly triage stays armed"
    alert = publishes(s, "autopilot.evt.alert")
    assert len(alert) == 1 and alert[0]["kind"] == "core_error"
    assert "timer.daily" in alert[0]["message"] and "NoneType" in alert[0]["error"]
    status = d.ap.status(parse_time(token))
    assert status["last_error"]["subject"] == "timer.daily" and "TypeError" in status["last_error"]["error"]

    monkeypatch.undo()   # the bug is fixed (a restart with new code): the next day runs a cycle
    nxt = d.ap.state.next_daily
    s = d.timer("daily", nxt, token=nxt)
    assert d.ap.running() is not None and s.transitions and s.transitions[0].to == "Analyzing"


def test_a_failing_check_fails_the_running_canary_safely(monkeypatch: pytest.MonkeyPatch):
    d = booted()
    cid, _ = d.to_canary()
    monkeypatch.setattr(cycle_module, "evaluate_gate", _explode)
    s = d.timer("check", at(15), cid)
    assert d.ap.running() is None and d.ap.cycle.state == "Failed"
    assert "internal error while handling timer.check" in (d.ap.cycle.data.error or "")
    assert [e.body["request"]["arm"] for e in effects(s, "apply", "canary_rollback")] == ["canary"]
    assert [a["kind"] for a in publishes(s, "autopilot.evt.alert")][:1] == ["core_error"]
    assert schedules(s, "daily")


def test_a_failing_command_is_answered_with_the_error_not_silence(monkeypatch: pytest.MonkeyPatch):
    d = booted()
    monkeypatch.setattr(BoundsKeeper, "propose", _explode)
    s = d.command("run-now", at(1))
    assert s.reply is not None and s.reply["ok"] is False and "internal error: TypeError" in s.reply["error"]
    assert d.ap.running() is None
