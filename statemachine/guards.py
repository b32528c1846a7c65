"""The anti-drift monitor and the weekly incident triage, as the autopilot runs them.

After every cycle (and every critical alert) the drift monitor scores what
happened; its actions are carried out at once: a pause (escalating), a
contraction of the bounds of the parameters involved, an incident triage.
The weekly triage runs on its own scheduled timer. Pure, like the core.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import msgspec

from ..handlers import bounds as B
from ..handlers.drift import CycleSummary, DriftEvent, DriftState, check_for_drift
from ..handlers.triage import TriageReport, next_weekly_at, run_weekly_triage
from ..schemas.messages import parse_time, rfc3339
from . import tuning
from .commands import stop_running_cycle
from .step import Step

if TYPE_CHECKING:
    from .autopilot import Autopilot
    from .cycle import Cycle

MAX_SUMMARIES = 400
MAX_DRIFT_EVENTS = 200


def summarize(cycle: "Cycle") -> CycleSummary:
    d = cycle.data
    verdicts = ((d.gate or {}).get("kpis")) or []
    realized, realized_se, harmed = {}, {}, []
    for v in verdicts:
        if v.get("verdict") == "harm":
            harmed.append(v["kpi"])
        if v.get("lift") is not None and v.get("mode", "relative") == "relative":
            realized[v["kpi"]] = float(v["lift"])
            if v.get("se"):
                realized_se[v["kpi"]] = float(v["se"])
    predicted, predicted_sd, directions = {}, {}, {}
    for kpi, impact in ((d.prediction or {}).get("kpis") or {}).items():
        if impact.get("delta") is not None:
            predicted[kpi] = float(impact["delta"])
            predicted_sd[kpi] = float(impact.get("uncertainty") or 0.0)
    for kpi, spec in cycle.config.kpis.items():
        directions[kpi] = spec.direction
    outcome = cycle.state
    if outcome == "RolledBack" and (d.gate or {}).get("recommendation") == "inconclusive":
        # No evidence either way is not a failure: it must not feed the
        # rollback-rate and failure-run rules (it paused a healthy autopilot
        # on most days of the 30-day simulation).
        outcome = "Inconclusive"
    return CycleSummary(
        cycle_id=d.cycle_id, ended_at=d.completed_at or d.state_entered_at, outcome=outcome, error=d.error,
        gate_rule=(d.gate or {}).get("rule"), harmed_kpis=harmed, parameters=sorted(d.proposal or {}),
        predicted=predicted, predicted_sd=predicted_sd, realized=realized, realized_se=realized_se,
        directions=directions,
    )


def after_cycle(ap: "Autopilot", step: Step, cycle: "Cycle") -> None:
    # Only what the monitor's and the triage's windows can see is kept: the
    # state is written with every transaction, so it must stay small.
    cfg = ap.config.autopilot
    days = max(cfg.drift_monitoring.monitoring_window_days, cfg.incident_triage.analysis_window_days) + 1
    horizon = rfc3339(step.now - timedelta(days=days))
    ap.state.summaries = [c for c in ap.state.summaries if c.ended_at >= horizon][-(MAX_SUMMARIES - 1):] + [summarize(cycle)]
    ap.state.drift_events = [e for e in ap.state.drift_events if e.detected_at >= horizon]
    ap.state_dirty = True
    check(ap, step)


def on_critical_alert(ap: "Autopilot", step: Step, fired_at: str) -> None:
    horizon = rfc3339(step.now - timedelta(days=7))
    ap.state.critical_alerts = [a for a in ap.state.critical_alerts if a >= horizon][-100:] + [fired_at]
    ap.state_dirty = True
    check(ap, step)


def check(ap: "Autopilot", step: Step) -> None:
    cfg = ap.config.autopilot.drift_monitoring
    state, events = check_for_drift(ap.state.summaries, ap.state.drift, cfg, now=step.now,
                                    critical_alerts=ap.state.critical_alerts)
    ap.state.drift = state
    ap.state_dirty = True
    for event in events:
        _act(ap, step, event)


def _act(ap: "Autopilot", step: Step, event: DriftEvent) -> None:
    ap.state.drift_events = (ap.state.drift_events + [event])[-MAX_DRIFT_EVENTS:]
    step.drift_rows.append(event)
    step.publish("autopilot.evt.drift", msgspec.to_builtins(event))
    for action in event.actions or [event.action_taken]:
        kind = action.get("kind")
        if kind == "PauseAutopilot":
            hours = float(action["duration_hours"])
            until = step.now + timedelta(hours=hours)
            s = ap.state
            current = None if s.paused_until is None else parse_time(s.paused_until)
            if not s.paused_forever and (current is None or current < until):
                ap.set_pause(rfc3339(until), forever=False, actor="drift-monitor",
                             reason=f"{event.event_type}: paused {hours:g} h")
                step.schedule("pause", until, {"kind": "pause_expiry", "token": rfc3339(until)})
                step.publish("autopilot.evt.alert", {"kind": "paused", "at": step.at, "until": rfc3339(until),
                                                     "actor": "drift-monitor", "message": s.pause_reason})
                stop_running_cycle(ap, step, f"drift monitor: {event.event_type}")
        elif kind == "ContractBounds":
            cfg = ap.config.autopilot.sliding_bounds
            for name in action.get("parameters") or []:
                bounds = ap.state.bounds.get(name)
                if bounds is not None:
                    tuning.emit(ap, step, name, B.contract_after_rollback(
                        bounds, cfg, at=step.now, reason=f"drift monitor: {event.event_type}"))
        elif kind == "TriggerIncidentTriage":
            triage(ap, step, reason=f"triggered by {event.event_type}")


def triage(ap: "Autopilot", step: Step, *, reason: str) -> TriageReport:
    ap.state.triage_counter += 1
    report_id = f"triage-{step.now:%Y%m%dT%H%M%SZ}-{ap.state.triage_counter:04d}"
    report = run_weekly_triage(ap.state.summaries, ap.state.drift_events, ap.state.bounds,
                               ap.config.autopilot.incident_triage, now=step.now, report_id=report_id)
    ap.state_dirty = True
    step.triage_rows.append(report)
    step.publish("autopilot.evt.triage", msgspec.to_builtins(report) | {"reason": reason})
    # --- GitHub issues (#13): with github_integration_enabled, one "github_issues" outbox effect ---
    from ..handlers.triage import github_issues_effect
    step.effects.extend(github_issues_effect(report, ap.config.autopilot.incident_triage, new_id=step.next_id))
    # --- end GitHub issues ---
    return report


def arm_weekly(ap: "Autopilot", step: Step, *, keep: bool = False) -> None:
    s = ap.state
    if not (keep and s.next_triage and parse_time(s.next_triage) > step.now):
        s.next_triage = rfc3339(next_weekly_at(step.now, ap.config.autopilot.incident_triage.weekly_schedule_utc))
        ap.state_dirty = True
    step.schedule("triage", parse_time(s.next_triage), {"kind": "triage", "token": s.next_triage})


def on_weekly_timer(ap: "Autopilot", step: Step, token: str | None) -> None:
    if token != ap.state.next_triage:
        step.count("stale_timers")
        return
    arm_weekly(ap, step)
    triage(ap, step, reason="weekly schedule")


__all__ = ["after_cycle", "on_critical_alert", "check", "triage", "arm_weekly", "on_weekly_timer", "summarize",
           "DriftState"]
