"""The anti-drift monitor and the incident triage, with the state they keep.

After every cycle (and every critical alert) the monitor scores what happened
and returns the actions its findings call for: pause the autopilot, contract
the bounds of the parameters involved, run an incident triage. The
:class:`~.autopilot.Autopilot` carries them out; the monitor changes nothing
but its own :class:`MonitorState`. The weekly triage runs on its own
scheduled timer. Pure, like the core.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Mapping

import msgspec

from ..handlers.bounds import ParameterBounds
from ..handlers.drift import CycleSummary, DriftEvent, DriftState, check_for_drift
from ..handlers.triage import TriageReport, github_issues_effect, next_weekly_at, run_weekly_triage
from ..schemas.config import Config
from ..schemas.messages import parse_time, rfc3339
from .cycle import Cycle
from .step import Step

MAX_SUMMARIES = 400
MAX_DRIFT_EVENTS = 200


class MonitorState(msgspec.Struct, kw_only=True):
    summaries: list[CycleSummary] = []               # ended cycles, for the drift monitor and triage
    drift: DriftState = DriftState()
    drift_events: list[DriftEvent] = []
    critical_alerts: list[str] = []                  # fired_at of recent critical alerts
    next_triage: str | None = None
    triage_counter: int = 0


# --- what the monitor asks the autopilot to do -------------------------------------------------


class PauseAutopilot(msgspec.Struct, frozen=True):
    """Pause for ``hours`` (never shortening a longer pause) and stop the running cycle."""

    hours: float
    reason: str
    stop_why: str


class ContractBounds(msgspec.Struct, frozen=True):
    parameters: list[str]
    reason: str


class RunTriage(msgspec.Struct, frozen=True):
    reason: str


DriftAction = PauseAutopilot | ContractBounds | RunTriage


def summarize(cycle: Cycle) -> CycleSummary:
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


class DriftMonitor:
    def __init__(self, config: Config, state: MonitorState):
        self.config = config
        self.state = state

    def after_cycle(self, step: Step, cycle: Cycle) -> list[DriftAction]:
        # Only what the monitor's and the triage's windows can see is kept: the
        # state is written with every transaction, so it must stay small.
        cfg = self.config.autopilot
        days = max(cfg.drift_monitoring.monitoring_window_days, cfg.incident_triage.analysis_window_days) + 1
        horizon = rfc3339(step.now - timedelta(days=days))
        s = self.state
        s.summaries = [c for c in s.summaries if c.ended_at >= horizon][-(MAX_SUMMARIES - 1):] + [summarize(cycle)]
        s.drift_events = [e for e in s.drift_events if e.detected_at >= horizon]
        return self._check(step)

    def on_critical_alert(self, step: Step, fired_at: str) -> list[DriftAction]:
        horizon = rfc3339(step.now - timedelta(days=7))
        self.state.critical_alerts = [a for a in self.state.critical_alerts if a >= horizon][-100:] + [fired_at]
        return self._check(step)

    def _check(self, step: Step) -> list[DriftAction]:
        s = self.state
        s.drift, events = check_for_drift(s.summaries, s.drift, self.config.autopilot.drift_monitoring, now=step.now,
                                          critical_alerts=s.critical_alerts)
        actions: list[DriftAction] = []
        for event in events:
            s.drift_events = (s.drift_events + [event])[-MAX_DRIFT_EVENTS:]
            step.drift_rows.append(event)
            step.publish("autopilot.evt.drift", msgspec.to_builtins(event))
            actions.extend(_actions(event))
        return actions

    # --- triage ------------------------------------------------------------------------------

    def triage(self, step: Step, bounds: Mapping[str, ParameterBounds], *, reason: str) -> TriageReport:
        s = self.state
        s.triage_counter += 1
        report_id = f"triage-{step.now:%Y%m%dT%H%M%SZ}-{s.triage_counter:04d}"
        report = run_weekly_triage(s.summaries, s.drift_events, bounds, self.config.autopilot.incident_triage,
                                   now=step.now, report_id=report_id)
        step.triage_rows.append(report)
        step.publish("autopilot.evt.triage", msgspec.to_builtins(report) | {"reason": reason})
        # With github_integration_enabled, one outbox effect files the report's issues (infra sends it).
        step.effects.extend(github_issues_effect(report, self.config.autopilot.incident_triage, new_id=step.next_id))
        return report

    def arm_weekly(self, step: Step, *, keep: bool = False) -> None:
        s = self.state
        if not (keep and s.next_triage and parse_time(s.next_triage) > step.now):
            s.next_triage = rfc3339(next_weekly_at(step.now, self.config.autopilot.incident_triage.weekly_schedule_utc))
        step.schedule("triage", parse_time(s.next_triage), {"kind": "triage", "token": s.next_triage})

    def weekly_triage_due(self, step: Step, token: str | None) -> bool:
        """The weekly timer fired: True (and the next one armed) when it is the current one."""
        if token != self.state.next_triage:
            step.count("stale_timers")
            return False
        self.arm_weekly(step)
        return True


def _actions(event: DriftEvent) -> list[DriftAction]:
    out: list[DriftAction] = []
    for action in event.actions or [event.action_taken]:
        kind = action.get("kind")
        if kind == "PauseAutopilot":
            hours = float(action["duration_hours"])
            out.append(PauseAutopilot(hours, f"{event.event_type}: paused {hours:g} h",
                                      f"drift monitor: {event.event_type}"))
        elif kind == "ContractBounds":
            out.append(ContractBounds(list(action.get("parameters") or []), f"drift monitor: {event.event_type}"))
        elif kind == "TriggerIncidentTriage":
            out.append(RunTriage(f"triggered by {event.event_type}"))
    return out
