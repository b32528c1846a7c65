"""The autopilot between and around cycles: the pure step ``event -> Step``.

It owns the pause, the overrides, the live-metric windows and at most one
running :class:`Cycle`; it routes each core event to the cycle it concerns
and starts cycles on the daily timer, ``run-now`` and ``propose``.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec

from ..handlers.bounds import ParameterBounds
from ..handlers.drift import CycleSummary, DriftEvent, DriftState
from ..handlers.golden import GoldenSet
from ..handlers.optimizer import CycleOutcome
from ..handlers.stats import RunningStats
from ..schemas.config import Config
from ..schemas.events import (AlertEvent, ApplyResult, Boot, CommandEvent, GoldenResult, Inbound,
                              MetricStats, TimerEvent)
from ..schemas.messages import parse_time, rfc3339
from .commands import handle_command, stop_running_cycle
from . import guards, tuning
from .cycle import Cycle, CycleData
from .step import Step


class AutopilotState(msgspec.Struct, kw_only=True):
    card: dict[str, Any] = {}
    card_version: str = ""
    paused_until: str | None = None
    paused_forever: bool = False
    paused_by: str | None = None
    pause_reason: str | None = None
    overrides: dict[str, dict[str, Any]] = {}
    cycle_counter: int = 0
    active_cycle_id: str | None = None
    last_cycle: dict[str, Any] | None = None
    next_daily: str | None = None
    live: dict[str, dict[str, RunningStats]] = {}   # kpi -> hour bucket (RFC 3339) -> stats
    bounds: dict[str, ParameterBounds] = {}
    outcomes: list[CycleOutcome] = []                # what past canaries measured (optimizer input)
    validation_failures: int = 0                     # consecutive golden-set failures
    summaries: list[CycleSummary] = []               # ended cycles, for the drift monitor and triage
    drift: DriftState = DriftState()
    drift_events: list[DriftEvent] = []
    critical_alerts: list[str] = []                  # fired_at of recent critical alerts
    next_triage: str | None = None
    triage_counter: int = 0


def next_daily_at(now: datetime, hhmm: str) -> datetime:
    hour, minute = (int(x) for x in hhmm.split(":"))
    candidate = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return candidate if candidate > now else candidate + timedelta(days=1)


class Autopilot:
    def __init__(self, config: Config, state: AutopilotState | None = None, cycle: CycleData | None = None,
                 *, golden: GoldenSet | None = None):
        self.config = config
        self.golden = golden   # the built-in golden set (golden.mode: builtin), else None
        self.state = state or AutopilotState()
        self.cycle: Cycle | None = Cycle(cycle, config) if cycle is not None else None
        self.state_dirty = False

    # --- queries -----------------------------------------------------------------------

    def paused(self, now: datetime) -> bool:
        s = self.state
        return s.paused_forever or (s.paused_until is not None and parse_time(s.paused_until) > now)

    def mode(self, now: datetime) -> str:
        if self.cycle is not None and not self.cycle.done:
            return self.cycle.state
        if self.paused(now):
            return "Paused"
        return "Idle" if self.config.autopilot.enabled else "Disabled"

    def status(self, now: datetime) -> dict[str, Any]:
        s = self.state
        running = self.cycle if self.cycle is not None and not self.cycle.done else None
        return {
            "ok": True, "error": None, "state": self.mode(now),
            "cycle_id": running.data.cycle_id if running else None,
            "paused": self.paused(now), "paused_until": None if s.paused_forever else s.paused_until,
            "emergency_pause": s.paused_forever, "paused_by": s.paused_by,
            "card_version": s.card_version, "overrides": s.overrides,
            "bounds_overrides": {n: msgspec.to_builtins(b.override) for n, b in s.bounds.items()
                                 if b.override is not None and tuning.B.override_active(b, now)},
            "next_daily": s.next_daily, "last_cycle": s.last_cycle,
            "cycle": None if running is None else {
                "cycle_id": running.data.cycle_id, "state": running.state, "origin": running.data.origin,
                "started_at": running.data.started_at, "deadline": running.data.deadline,
                "proposal": running.data.proposal,
                "samples": {"control": {k: v.n for k, v in running.data.control.items()},
                            "canary": {k: v.n for k, v in running.data.canary.items()}},
            },
        }

    def running(self) -> Cycle | None:
        return self.cycle if self.cycle is not None and not self.cycle.done else None

    # --- the step ------------------------------------------------------------------------

    def handle(self, inbound: Inbound) -> Step:
        step = Step(inbound)
        event = inbound.event
        cycle_before = self.running()
        if isinstance(event, MetricStats):
            self._metric(step, event)
        elif isinstance(event, TimerEvent):
            self._timer(step, event)
        elif isinstance(event, (ApplyResult, GoldenResult)):
            self._reply(step, event)
        elif isinstance(event, AlertEvent):
            self._alert(step, event)
        elif isinstance(event, CommandEvent):
            handle_command(self, step, event)
        elif isinstance(event, Boot):
            self._boot(step, event)
        touched = cycle_before or self.cycle
        if touched is not None and (step.transitions or isinstance(event, MetricStats) and step.counters.get("canary_samples")):
            step.record_cycle(touched)
        if self.cycle is not None and self.cycle.done and self.state.active_cycle_id == self.cycle.data.cycle_id:
            self._cycle_ended(step, self.cycle)
        return step

    # --- events ------------------------------------------------------------------------------

    def _metric(self, step: Step, ev: MetricStats) -> None:
        if ev.kpi not in self.config.kpis:
            step.count("ignored_kpi")
            return
        stats = RunningStats(ev.n, ev.mean, ev.m2)
        if ev.arm == "live":
            # window_end is canonical RFC 3339 UTC ("YYYY-MM-DDTHH:MM:SS[.ffffff]Z"):
            # its hour is its first 13 characters, and such keys sort as times.
            bucket = ev.window_end[:13] + ":00:00Z"
            buckets = self.state.live.setdefault(ev.kpi, {})
            buckets[bucket] = buckets.get(bucket, RunningStats()).merge(stats)
            if len(buckets) > self.config.autopilot.analysis_window_hours + 2:
                end = parse_time(ev.window_end)
                horizon = rfc3339((end - timedelta(hours=self.config.autopilot.analysis_window_hours + 1))
                                  .replace(minute=0, second=0, microsecond=0))
                for old in [b for b in buckets if b < horizon]:
                    del buckets[old]
            self.state_dirty = True
            step.count("live_samples", ev.n)
            return
        cycle = self.running()
        if cycle is not None and cycle.add_metric(ev.arm, ev.kpi, ev.version_id, stats):
            step.count("canary_samples", ev.n)
        else:
            step.count("ignored_arm_samples", ev.n)

    def live_window(self, now: datetime) -> dict[str, RunningStats]:
        since = now - timedelta(hours=self.config.autopilot.analysis_window_hours)
        out = {}
        for kpi, buckets in self.state.live.items():
            total = RunningStats()
            for bucket, stats in sorted(buckets.items()):
                if parse_time(bucket) + timedelta(hours=1) > since and parse_time(bucket) <= now:
                    total = total.merge(stats)
            out[kpi] = total
        return out

    def _alert(self, step: Step, ev: AlertEvent) -> None:
        cycle = self.running()
        if ev.severity == "critical" and cycle is not None and cycle.state == "Canary":
            cycle.judge(step, "rollback", {
                "reason": f"critical alert {ev.alert_id} from {ev.source}: {ev.message[:200]}",
                "alert_id": ev.alert_id, "kpi": ev.kpi,
            }, rule="critical alert")
        if ev.severity == "critical":
            guards.on_critical_alert(self, step, ev.fired_at)

    def _timer(self, step: Step, ev: TimerEvent) -> None:
        s = self.state
        if ev.kind == "daily":
            if ev.token != s.next_daily:
                step.count("stale_timers")
                return
            self._arm_daily(step)
            tuning.daily(self, step)
            if self.config.autopilot.enabled and not self.paused(step.now) and self.running() is None:
                self.start_cycle(step, origin="daily", actor="scheduler", proposal=None)
            return
        if ev.kind == "triage":
            guards.on_weekly_timer(self, step, ev.token)
            return
        if ev.kind == "pause_expiry":
            if s.paused_until is not None and ev.token == s.paused_until and not s.paused_forever:
                self.set_pause(None, forever=False, actor=None, reason=None)
                step.publish("autopilot.evt.command", {"verb": "pause-expired", "at": step.at, "ok": True})
            return
        if ev.kind == "override_expiry":
            for name, bounds in sorted(s.bounds.items()):
                if bounds.override is not None:
                    tuning.emit(self, step, name, tuning.B.refresh(bounds, at=step.now))
            for name, entry in list(s.overrides.items()):
                if entry.get("until") == ev.token and parse_time(ev.token) <= step.now:
                    del s.overrides[name]
                    self.state_dirty = True
                    step.publish("autopilot.evt.command", {"verb": "override-expired", "parameter": name, "at": step.at, "ok": True})
            return
        cycle = self.running()
        if cycle is None or ev.cycle_id != cycle.data.cycle_id:
            step.count("stale_timers")
            return
        if ev.kind == "timeout":
            if ev.token is not None and ev.token == cycle.data.timer_token:
                limit = self.config.autopilot.max_execution_time_minutes
                cycle.fail(step, f"timeout: active work exceeded max_execution_time_minutes={limit} in {cycle.state}")
        elif ev.kind == "check":
            cycle.evaluate(step, final=False)
        elif ev.kind == "deadline":
            if ev.token is not None and ev.token == cycle.data.deadline:  # an extension moves the deadline
                cycle.evaluate(step, final=True)
            else:
                step.count("stale_timers")

    def _reply(self, step: Step, ev: ApplyResult | GoldenResult) -> None:
        cycle = self.running()
        if cycle is None or ev.effect_id != cycle.data.awaiting:
            if isinstance(ev, ApplyResult) and not ev.applied:
                step.publish("autopilot.evt.alert", {
                    "kind": "apply_failed", "cycle_id": ev.cycle_id, "purpose": ev.purpose, "at": step.at,
                    "message": f"VVTV did not apply {ev.purpose}: {ev.error}"})
            return
        if isinstance(ev, GoldenResult):
            cycle.golden_result(step, ev.passed, {"cases_run": ev.cases_run, "failures": ev.failures, "error": ev.error})
        elif ev.purpose == "canary":
            cycle.canary_apply_result(step, ev.applied, ev.error)
        elif ev.purpose == "live":
            cycle.live_apply_result(step, ev.applied, ev.error)

    def _boot(self, step: Step, ev: Boot) -> None:
        s = self.state
        if ev.card_version != s.card_version:
            if s.card_version:
                step.publish("autopilot.evt.alert", {"kind": "card_changed_outside", "at": step.at,
                                                     "message": f"card on disk is {ev.card_version}, expected {s.card_version}"})
            s.card, s.card_version = ev.card, ev.card_version
        tuning.ensure_bounds(self, step)
        if self.config.autopilot.emergency_pause and not s.paused_forever:
            self.set_pause(None, forever=True, actor="configuration", reason="autopilot.emergency_pause is true")
            stop_running_cycle(self, step, "emergency pause by configuration (autopilot.emergency_pause: true)")
        self.state_dirty = True
        self._arm_daily(step, keep=True)
        guards.arm_weekly(self, step, keep=True)
        if s.paused_until and not s.paused_forever:
            step.schedule("pause", parse_time(s.paused_until), {"kind": "pause_expiry", "token": s.paused_until})
        cycle = self.running()
        if cycle is not None:  # re-arm the open cycle's timers (idempotent: same schedule subjects)
            d = cycle.data
            if cycle.state == "Canary" and d.deadline:
                step.schedule(f"{d.cycle_id}.deadline", parse_time(d.deadline), {"kind": "deadline", "cycle_id": d.cycle_id, "token": d.deadline})
                cycle._arm_check(step)
            elif d.timer_token:
                budget = self.config.autopilot.max_execution_time_minutes * 60.0 - d.active_seconds
                entered = parse_time(d.state_entered_at)
                step.schedule(f"{d.cycle_id}.timeout", entered + timedelta(seconds=max(budget, 0.0)),
                              {"kind": "timeout", "cycle_id": d.cycle_id, "token": d.timer_token})

    # --- helpers used by commands -------------------------------------------------------------

    def _arm_daily(self, step: Step, keep: bool = False) -> None:
        s = self.state
        if not (keep and s.next_daily and parse_time(s.next_daily) > step.now):
            s.next_daily = rfc3339(next_daily_at(step.now, self.config.autopilot.daily_schedule_utc))
            self.state_dirty = True
        step.schedule("daily", parse_time(s.next_daily), {"kind": "daily", "token": s.next_daily})

    def set_pause(self, until: str | None, *, forever: bool, actor: str | None, reason: str | None) -> None:
        s = self.state
        s.paused_until, s.paused_forever, s.paused_by, s.pause_reason = until, forever, actor, reason
        self.state_dirty = True

    def start_cycle(self, step: Step, *, origin: str, actor: str | None, proposal: dict[str, float] | None) -> Cycle:
        s = self.state
        s.cycle_counter += 1
        cycle_id = f"{step.now.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{s.cycle_counter:06d}"
        seed = int.from_bytes(hashlib.sha256(cycle_id.encode()).digest()[:8], "big")
        data = CycleData(cycle_id=cycle_id, origin=origin, actor=actor, started_at=step.at, seed=seed,
                         proposal=proposal, base_card=s.card, base_version=s.card_version)
        cycle = Cycle(data, self.config)
        self.cycle = cycle
        s.active_cycle_id = cycle_id
        self.state_dirty = True
        cycle.start(step, self.live_window(step.now),
                    proposer=lambda c: tuning.optimizer_proposal(self, step, c),
                    checker=lambda name, value, mode: tuning.check(self, step, name, value, mode),
                    golden=self.golden)
        return cycle

    def _cycle_ended(self, step: Step, cycle: Cycle) -> None:
        s = self.state
        d = cycle.data
        if cycle.state == "Deployed" and d.candidate_card is not None:
            s.card, s.card_version = d.candidate_card, d.candidate_version or ""
        s.active_cycle_id = None
        tuning.after_cycle(self, step, cycle)
        if cycle.state == "Failed" and d.error == "golden-set validation failed":
            s.validation_failures += 1
            limit = self.config.autopilot.validation_failures_before_pause
            if s.validation_failures >= limit and not self.paused(step.now):
                hours = self.config.autopilot.drift_monitoring.pause_duration_hours
                until = rfc3339(step.now + timedelta(hours=hours))
                self.set_pause(until, forever=False, actor="fail-safe",
                               reason=f"{s.validation_failures} consecutive golden-set validation failures")
                s.validation_failures = 0  # the pause is the consequence; counting starts afresh after it
                step.schedule("pause", parse_time(until), {"kind": "pause_expiry", "token": until})
                step.publish("autopilot.evt.alert", {"kind": "paused", "at": step.at, "until": until, "actor": "fail-safe",
                                                     "message": s.pause_reason})
        elif cycle.state in ("Deployed", "RolledBack", "NoChange"):
            s.validation_failures = 0
        guards.after_cycle(self, step, cycle)
        s.last_cycle = {"cycle_id": d.cycle_id, "outcome": cycle.state, "completed_at": d.completed_at, "error": d.error}
        self.state_dirty = True
