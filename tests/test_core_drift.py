"""The drift monitor and the incident triage as the core runs them: a pause after
consecutive rollbacks, and the triage on its weekly timer and on request.
"""

from __future__ import annotations

from core_driver import at, publishes, schedules, booted
from vvtv_autopilot.schemas.messages import parse_time


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
    token = d.ap.state.monitor.next_triage
    assert token == "2026-11-29T02:00:00Z"  # the first Sunday 02:00 after the boot
    cid, _ = d.to_canary(start=1)
    d.command("abort", at(5))
    s = d.command("triage", at(6))
    assert s.reply["ok"] and s.reply["failure_counts"].get("CanaryRollbacks") == 1
    assert publishes(s, "autopilot.evt.triage")[0]["reason"] == "requested by tester"
    stale = d.timer("triage", at(7), token="2026-11-22T02:00:00Z")
    assert not stale.triage_rows and stale.counters.get("stale_timers") == 1
    s = d.timer("triage", token, token=token)
    assert len(s.triage_rows) == 1 and d.ap.state.monitor.next_triage == "2026-12-06T02:00:00Z"
    assert schedules(s, "triage")[0]["event"] == {"kind": "triage", "token": "2026-12-06T02:00:00Z"}
