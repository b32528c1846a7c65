"""The autopilot between and around cycles: the one owner of the core's state.

:class:`Autopilot` routes every core event (``handle``) to a method of its own.
It owns the pause, the overrides, the card, the live-metric windows and at most
one running :class:`Cycle`; two collaborators own the rest and return what they
decided: the :class:`BoundsKeeper` (sliding bounds, the optimizer's history) and
the :class:`DriftMonitor` (cycle summaries, drift state, triage), whose actions
the autopilot carries out. Operator commands (:mod:`.commands`) act through its
public methods only.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec

from ..handlers.bounds import BoundsCheck, ClampMode
from ..handlers.card import get_path, parameter_values, version_id, with_values
from ..handlers.changes import manual_change
from ..handlers.golden import GoldenSet
from ..handlers.optimizer import predicted_score_gain, seed_from_cycle_id
from ..handlers.power import plan_canary_for, score_may_lengthen, sizing_mde
from ..handlers.stats import RunningStats
from ..handlers.triage import TriageReport
from ..schemas.config import Config
from ..schemas.events import (AlertEvent, ApplyResult, Boot, CommandEvent, Effect, GoldenResult, Inbound,
                              MetricStats, TimerEvent)
from ..schemas.messages import parse_time, rfc3339
from .bounds_keeper import BoundsKeeper, TuningState
from .commands import handle_command
from .cycle import Cycle, CycleData
from .drift_monitor import ContractBounds, DriftAction, DriftMonitor, MonitorState, PauseAutopilot, RunTriage
from .step import Step


class AutopilotState(msgspec.Struct, kw_only=True):
    """Everything the autopilot keeps between events (one JSON document in the store)."""

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
    validation_failures: int = 0                     # consecutive golden-set failures
    last_error: dict[str, Any] | None = None         # the last event the core failed on (status shows it)
    pending_live: dict[str, Any] | None = None       # an operator's live apply (override, rollback) awaiting VVTV
    tuning: TuningState = msgspec.field(default_factory=TuningState)     # owned by the BoundsKeeper
    monitor: MonitorState = msgspec.field(default_factory=MonitorState)  # owned by the DriftMonitor


_state_encoder = _cycle_encoder = msgspec.json.Encoder()
_state_decoder = msgspec.json.Decoder(AutopilotState)
_cycle_decoder = msgspec.json.Decoder(CycleData)


def next_daily_at(now: datetime, hhmm: str) -> datetime:
    hour, minute = (int(x) for x in hhmm.split(":"))
    candidate = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return candidate if candidate > now else candidate + timedelta(days=1)


class Autopilot:
    def __init__(self, config: Config, state: AutopilotState | None = None, cycle: CycleData | None = None,
                 *, golden: GoldenSet | None = None, contain: bool = True, rows: bool = True):
        """``contain=False``: no pre-image of the state per event, and a failure of the core
        propagates instead of being contained (:meth:`handle`); ``rows=False``: a metric batch
        does not build the cycle's domain row. Exact replay uses both (it needs neither, and
        replays again with containment should the core fail); the service never does."""
        self.config = config
        self.contain = contain
        self.rows = rows
        self.golden = golden   # the built-in golden set (golden.mode: builtin), else None
        self.state = state or AutopilotState()
        self.cycle: Cycle | None = Cycle(cycle, config) if cycle is not None else None
        self.tuning = BoundsKeeper(config, self.state.tuning)
        self.monitor = DriftMonitor(config, self.state.monitor)

    # --- queries -----------------------------------------------------------------------

    @property
    def card(self) -> dict[str, Any]:
        return self.state.card

    @property
    def card_version(self) -> str:
        return self.state.card_version

    @property
    def overrides(self) -> dict[str, dict[str, Any]]:
        return self.state.overrides

    @property
    def pending_live(self) -> dict[str, Any] | None:
        return self.state.pending_live

    @property
    def in_emergency_pause(self) -> bool:
        return self.state.paused_forever

    def paused(self, now: datetime) -> bool:
        s = self.state
        return s.paused_forever or (s.paused_until is not None and parse_time(s.paused_until) > now)

    def mode(self, now: datetime) -> str:
        if self.cycle is not None and not self.cycle.done:
            return self.cycle.state
        if self.paused(now):
            return "Paused"
        return "Idle" if self.config.autopilot.enabled else "Disabled"

    def running(self) -> Cycle | None:
        return self.cycle if self.cycle is not None and not self.cycle.done else None

    def why_no_cycle_can_start(self, now: datetime) -> str | None:
        running = self.running()
        if running is not None:
            return f"cycle {running.data.cycle_id} is running ({running.state}); wait for it or abort it"
        if self.paused(now):
            until = "until resume" if self.state.paused_forever else f"until {self.state.paused_until}"
            return f"the autopilot is paused {until}; resume it first"
        if not self.config.autopilot.enabled:
            return "the autopilot is disabled in its configuration (autopilot.enabled: false)"
        if self.state.pending_live is not None:
            return self.pending_live_refusal()
        return None

    def status(self, now: datetime) -> dict[str, Any]:
        s = self.state
        running = self.running()
        return {
            "ok": True, "error": None, "state": self.mode(now),
            "cycle_id": running.data.cycle_id if running else None,
            "paused": self.paused(now), "paused_until": None if s.paused_forever else s.paused_until,
            "emergency_pause": s.paused_forever, "paused_by": s.paused_by,
            "card_version": s.card_version, "overrides": s.overrides,
            "bounds_overrides": self.tuning.active_overrides(now),
            "next_daily": s.next_daily, "last_cycle": s.last_cycle, "last_error": s.last_error,
            "pending_live": None if s.pending_live is None else {
                k: s.pending_live.get(k) for k in ("kind", "parameter", "value", "version_id", "actor", "asked_at")},
            "cycle": None if running is None else {
                "cycle_id": running.data.cycle_id, "state": running.state, "origin": running.data.origin,
                "started_at": running.data.started_at, "deadline": running.data.deadline,
                "proposal": running.data.proposal, "canary_plan": running.data.canary_plan,
                "samples": {"control": {k: v.n for k, v in running.data.control.items()},
                            "canary": {k: v.n for k, v in running.data.canary.items()}},
            },
        }

    def units_per_minute(self, now: datetime) -> dict[str, float]:
        """Per KPI, the units a minute the canary can expect from now: the live traffic of the
        same hours yesterday (traffic swings through the day), else of the last hour, else the
        window's average."""
        minutes = self.config.autopilot.canary_duration_minutes
        hour = now.replace(minute=0, second=0, microsecond=0)
        yesterday = [rfc3339(hour - timedelta(days=1) + timedelta(hours=h))
                     for h in range(max(1, int(-(-(now - hour + timedelta(minutes=minutes)).total_seconds() // 3600))))]
        out = {}
        for kpi, buckets in self.state.live.items():
            same_hours = [buckets[b].n for b in yesterday if b in buckets]
            last = buckets.get(rfc3339(hour - timedelta(hours=1)))
            if same_hours:
                out[kpi] = sum(same_hours) / (60.0 * len(same_hours))
            elif last is not None:
                out[kpi] = last.n / 60.0
            elif buckets:
                out[kpi] = sum(b.n for b in buckets.values()) / (60.0 * len(buckets))
        return out

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

    # --- the step ------------------------------------------------------------------------

    def handle(self, inbound: Inbound) -> Step:
        """Step the core for one event. Should the core fail on it (a bug), the state is
        put back as it was before the event and the failure is contained (:meth:`_contain`):
        the autopilot never stops silently. Metric batches, the hot path, are not
        snapshotted; infra retries a failed batch one event at a time and dead-letters
        the offending one."""
        if isinstance(inbound.event, MetricStats) or not self.contain:
            return self._route(inbound)
        state = _state_encoder.encode(self.state)
        cycle = None if self.cycle is None else _cycle_encoder.encode(self.cycle.data)
        try:
            return self._route(inbound)
        except Exception as exc:  # noqa: BLE001 - the fail-safe boundary of the core: any bug lands here
            self._restore(state, cycle)
            return self._contain(inbound, exc)

    def _route(self, inbound: Inbound) -> Step:
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
        if touched is not None and (step.transitions or self.rows and isinstance(event, MetricStats)
                                    and step.counters.get("canary_samples")):
            touched.record(step)
        if self.cycle is not None and self.cycle.done and self.state.active_cycle_id == self.cycle.data.cycle_id:
            self._cycle_ended(step, self.cycle)
        return step

    def _restore(self, state: bytes, cycle: bytes | None) -> None:
        self.state = _state_decoder.decode(state)
        self.cycle = None if cycle is None else Cycle(_cycle_decoder.decode(cycle), self.config)
        self.tuning = BoundsKeeper(self.config, self.state.tuning)
        self.monitor = DriftMonitor(self.config, self.state.monitor)

    def _contain(self, inbound: Inbound, exc: Exception) -> Step:
        """The core failed on ``inbound`` (state as before it): keep every timer armed, fail
        the running cycle safely, record the error for ``status`` and tell the operators."""
        step = Step(inbound)
        error = f"{type(exc).__name__}: {exc}"[:1000]
        self.state.last_error = {"at": step.at, "subject": inbound.subject, "key": inbound.key, "error": error}
        step.count("core_errors")
        step.publish("autopilot.evt.alert", {
            "kind": "core_error", "at": step.at, "subject": inbound.subject, "key": inbound.key, "error": error,
            "message": f"internal error while handling {inbound.subject} ({inbound.key}): {error}; "
                       "the event was skipped, timers stay armed"})
        if isinstance(inbound.event, CommandEvent):
            step.reply = {"ok": False, "error": f"internal error: {error}", "state": self.mode(step.now),
                          "cycle_id": None}
        # The next daily run and weekly triage stay scheduled whatever event failed.
        self._arm_daily(step, keep=True)
        self.monitor.arm_weekly(step, keep=True)
        cycle = self.running()
        if cycle is not None:
            kept = _cycle_encoder.encode(cycle.data)
            try:  # a cycle whose event failed cannot be trusted: end it safely
                cycle.fail(step, f"internal error while handling {inbound.subject}: {error}")
            except Exception:  # noqa: BLE001 - it cannot even fail: keep it, and its timers, as they were
                self.cycle = cycle = Cycle(_cycle_decoder.decode(kept), self.config)
                cycle.arm_timers(step)
            else:
                cycle.record(step)
                self._cycle_ended(step, cycle)
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
            step.count("live_samples", ev.n)
            return
        cycle = self.running()
        if cycle is not None and cycle.add_metric(ev.arm, ev.kpi, ev.version_id, stats):
            step.count("canary_samples", ev.n)
        else:
            step.count("ignored_arm_samples", ev.n)

    def _alert(self, step: Step, ev: AlertEvent) -> None:
        if ev.severity != "critical":
            return
        cycle = self.running()
        if cycle is not None and cycle.state == "Canary":
            cycle.judge(step, "rollback", {
                "reason": f"critical alert {ev.alert_id} from {ev.source}: {ev.message[:200]}",
                "alert_id": ev.alert_id, "kpi": ev.kpi,
            }, rule="critical alert")
        self._carry_out(step, self.monitor.on_critical_alert(step, ev.fired_at))

    def _timer(self, step: Step, ev: TimerEvent) -> None:
        s = self.state
        if ev.kind == "daily":
            if ev.token != s.next_daily:
                step.count("stale_timers")
                return
            self._arm_daily(step)
            self.tuning.day_passed(step, paused=self.paused(step.now), pinned=set(s.overrides))
            if self.config.autopilot.enabled and not self.paused(step.now) and self.running() is None:
                if s.pending_live is not None:  # an operator's live apply awaits VVTV (seconds): not today
                    step.count("daily_skipped_pending_apply")
                    return
                self.start_cycle(step, origin="daily", actor="scheduler", proposal=None)
            return
        if ev.kind == "triage":
            if self.monitor.weekly_triage_due(step, ev.token):
                self.run_triage(step, reason="weekly schedule")
            return
        if ev.kind == "pause_expiry":
            if s.paused_until is not None and ev.token == s.paused_until and not s.paused_forever:
                self._set_pause(None, forever=False, actor=None, reason=None)
                step.publish("autopilot.evt.command", {"verb": "pause-expired", "at": step.at, "ok": True})
            return
        if ev.kind == "override_expiry":
            self.tuning.expire_overrides(step)
            for name, entry in list(s.overrides.items()):
                if entry.get("until") == ev.token and parse_time(ev.token) <= step.now:
                    del s.overrides[name]
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
        pending = self.state.pending_live
        if isinstance(ev, ApplyResult) and pending is not None and ev.effect_id == pending["effect_id"]:
            self._live_apply_answered(step, ev)
            return
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
        self.tuning.ensure(step, s.card)
        if self.config.autopilot.emergency_pause and not s.paused_forever:
            self.emergency_pause(step, actor="configuration", reason="autopilot.emergency_pause is true",
                                 stop_why="emergency pause by configuration (autopilot.emergency_pause: true)")
        self._arm_daily(step, keep=True)
        self.monitor.arm_weekly(step, keep=True)
        if s.paused_until and not s.paused_forever:
            step.schedule("pause", parse_time(s.paused_until), {"kind": "pause_expiry", "token": s.paused_until})
        cycle = self.running()
        if cycle is not None:
            cycle.arm_timers(step)

    def _cycle_ended(self, step: Step, cycle: Cycle) -> None:
        s = self.state
        d = cycle.data
        if cycle.state == "Deployed" and d.candidate_card is not None:
            s.card, s.card_version = d.candidate_card, d.candidate_version or ""
        s.active_cycle_id = None
        self.tuning.after_cycle(step, cycle)
        if cycle.state == "Failed" and d.error == "golden-set validation failed":
            s.validation_failures += 1
            limit = self.config.autopilot.validation_failures_before_pause
            if s.validation_failures >= limit and not self.paused(step.now):
                failures = s.validation_failures
                s.validation_failures = 0  # the pause is the consequence; counting starts afresh after it
                self.pause_for(step, self.config.autopilot.drift_monitoring.pause_duration_hours, actor="fail-safe",
                               reason=f"{failures} consecutive golden-set validation failures", stop_why="")
        elif cycle.state in ("Deployed", "RolledBack", "NoChange"):
            s.validation_failures = 0
        self._carry_out(step, self.monitor.after_cycle(step, cycle))
        s.last_cycle = {"cycle_id": d.cycle_id, "outcome": cycle.state, "completed_at": d.completed_at, "error": d.error}

    def _carry_out(self, step: Step, actions: list[DriftAction]) -> None:
        """What the drift monitor's findings call for."""
        for action in actions:
            if isinstance(action, PauseAutopilot):
                s = self.state
                current = None if s.paused_until is None else parse_time(s.paused_until)
                if not s.paused_forever and (current is None or current < step.now + timedelta(hours=action.hours)):
                    self.pause_for(step, action.hours, actor="drift-monitor", reason=action.reason,
                                   stop_why=action.stop_why)
            elif isinstance(action, ContractBounds):
                self.tuning.contract(step, action.parameters, action.reason)
            elif isinstance(action, RunTriage):
                self.run_triage(step, reason=action.reason)

    # --- what commands (and the autopilot itself) do -----------------------------------------------

    def start_cycle(self, step: Step, *, origin: str, actor: str | None, proposal: dict[str, float] | None) -> Cycle:
        s = self.state
        s.cycle_counter += 1
        cycle_id = f"{step.now.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{s.cycle_counter:06d}"
        data = CycleData(cycle_id=cycle_id, origin=origin, actor=actor, started_at=step.at,
                         seed=seed_from_cycle_id(cycle_id), proposal=proposal, base_card=s.card,
                         base_version=s.card_version)
        cycle = Cycle(data, self.config)
        self.cycle = cycle
        s.active_cycle_id = cycle_id
        live = self.live_window(step.now)
        cycle.analyze(step, live)
        # The canary's power is planned around the proposal: the optimizer sizes its step so that
        # the longest canary the policy allows can see it (the score's MDE), or proposes nothing;
        # then the canary is planned for the step's predicted gain (and its guardrails).
        upm = self.units_per_minute(step.now)
        suggestion = None
        if proposal is None:
            suggestion = self.tuning.propose(step, data.analysis, card=s.card, pinned=sorted(s.overrides), seed=data.seed,
                                             min_detectable_gain=sizing_mde(self.config, live, upm)
                                             if self.config.autopilot.optimizer_step_sizing == "canary_mde" else None,
                                             canary_may_lengthen=score_may_lengthen(self.config))
        if cycle.adopt(step, suggestion):
            plan = plan_canary_for(self.config, live, upm, optimizer_step=suggestion is not None,
                                   expected_gain=None if suggestion is None
                                   else predicted_score_gain(suggestion, self.config.kpis))
            data.canary_plan = msgspec.to_builtins(plan)
            checks = [self.check_bounds(step, name, value, cycle.bounds_mode)
                      for name, value in sorted((data.proposal or {}).items())]
            cycle.bound(step, suggestion, checks, golden=self.golden)
        return cycle

    def stop_running_cycle(self, step: Step, why: str) -> dict[str, Any]:
        """Stop the running cycle, if any; the reply names it (``cycle_id``)."""
        cycle = self.running()
        if cycle is None:
            return {}
        stopped = {"cycle_id": cycle.data.cycle_id}
        if cycle.state == "Canary":
            cycle.judge(step, "rollback", {"reason": why}, rule="operator")
        elif cycle.state in ("Analyzing", "Bounded", "Validated"):
            cycle.cancel(step, why)
        # In Gated a live deployment is already in flight; it finishes on its reply.
        return stopped

    def pause_for(self, step: Step, hours: float, *, actor: str, reason: str | None, stop_why: str) -> dict[str, Any]:
        """Pause (until now + ``hours``), arm its expiry, stop the running cycle, tell operators."""
        until = rfc3339(step.now + timedelta(hours=hours))
        self._set_pause(until, forever=False, actor=actor, reason=reason)
        step.schedule("pause", parse_time(until), {"kind": "pause_expiry", "token": until})
        stopped = self.stop_running_cycle(step, stop_why or f"paused by {actor}")
        step.publish("autopilot.evt.alert", {"kind": "paused", "at": step.at, "until": until, "actor": actor,
                                             "message": reason or "autopilot paused"})
        return {"paused_until": until, **stopped}

    def emergency_pause(self, step: Step, *, actor: str, reason: str | None, stop_why: str = "") -> dict[str, Any]:
        """Pause with no end until ``resume``; stop the running cycle; tell operators."""
        self._set_pause(None, forever=True, actor=actor, reason=reason)
        stopped = self.stop_running_cycle(step, stop_why or f"emergency pause by {actor}")
        step.publish("autopilot.evt.alert", {"kind": "emergency_pause", "at": step.at, "actor": actor,
                                             "message": reason or "autopilot in emergency pause"})
        return {"paused_until": None, "emergency_pause": True, **stopped}

    def resume(self) -> None:
        self._set_pause(None, forever=False, actor=None, reason=None)

    def check_bounds(self, step: Step, name: str, value: float, mode: ClampMode) -> BoundsCheck:
        return self.tuning.check(step, name, value, mode)

    def put_live(self, step: Step, name: str, value: float, *, rationale: str, pin: dict[str, Any]) -> str:
        """Ask VVTV to run the card with ``name = value`` on all traffic; its version id. Nothing
        else changes until VVTV answers (:meth:`_live_apply_answered`): then the card is written
        and ``name`` pinned (``pin``: hours, actor, reason), or, refused or unanswered, nothing is."""
        s = self.state
        card = with_values(s.card, {name: value})
        deployed = version_id(card)
        change = msgspec.to_builtins(manual_change(name, get_path(s.card, name, None), value))
        self._request_live(step, "override", card, deployed, parameter=name, value=value, change=change,
                           rationale=rationale, pin=pin)
        return deployed

    def pin(self, step: Step, name: str, value: float, *, hours: float, actor: str, reason: str | None) -> str:
        """Hold ``name`` at ``value`` for ``hours``: the optimizer proposes no change to it; the end time."""
        until = rfc3339(step.now + timedelta(hours=hours))
        self.state.overrides[name] = {"value": value, "until": until, "actor": actor, "reason": reason}
        step.schedule(f"override.{name}", parse_time(until), {"kind": "override_expiry", "token": until})
        return until

    def unpin(self, step: Step, name: str, *, actor: str) -> bool:
        """End the pin and the bounds override of ``name``; False when it had neither."""
        had_bounds_override = self.tuning.override_active(name, step.now)
        if self.state.overrides.pop(name, None) is None and not had_bounds_override:
            return False
        if had_bounds_override:
            self.tuning.clear_bounds_override(step, name, actor)
        return True

    def override_bounds(self, step: Step, name: str, *, min_value: float, max_value: float, hours: float,
                        actor: str, reason: str | None) -> str:
        """Temporary bounds for ``name`` (raises BoundsError when they break an invariant); the end time."""
        until = step.now + timedelta(hours=hours)
        self.tuning.bounds_override(step, name, min_value=min_value, max_value=max_value, until=until,
                                    actor=actor, reason=reason)
        # Its own timer name: a newer schedule of a name replaces the older one, so
        # sharing `override.<name>` with the pin would cancel the pin's expiry.
        step.schedule(f"bounds.{name}", until, {"kind": "override_expiry", "token": rfc3339(until)})
        return rfc3339(until)

    def adopt_version(self, step: Step, card: dict[str, Any], version: str, *, reason: str = "operator rollback",
                      actor: str | None = None) -> None:
        """Ask VVTV to run a version infra verified in the history (manual rollback); the card
        becomes that version once VVTV applied it (:meth:`_live_apply_answered`)."""
        self._request_live(step, "rollback", card, version, rationale=reason, actor=actor)

    # --- an operator's live apply: the card follows what VVTV really runs -------------------------

    def pending_live_refusal(self) -> str:
        p = self.state.pending_live or {}
        what = f"override of {p.get('parameter')}" if p.get("kind") == "override" else f"rollback to {str(p.get('version_id'))[:12]}"
        return f"the {what} asked by {p.get('actor')} at {p.get('asked_at')} is waiting for VVTV's answer; try again in a few seconds"

    def _request_live(self, step: Step, kind: str, card: dict[str, Any], vid: str, **about: Any) -> None:
        effect_id = self._apply_live(step, card, vid, "override" if kind == "override" else "manual_rollback")
        pin = about.get("pin") or {}
        self.state.pending_live = {"kind": kind, "effect_id": effect_id, "card": card, "version_id": vid,
                                   "previous_version": self.state.card_version, "asked_at": step.at,
                                   "actor": about.get("actor") or pin.get("actor"), **about}

    def _live_apply_answered(self, step: Step, ev: ApplyResult) -> None:
        """VVTV answered (or the timeout passed) an operator's live apply. Applied: the card is
        written (a history version) and becomes the autopilot's card; an override's parameter is
        pinned. Refused or unanswered: nothing changes (card, history, pins), and after a timeout
        the current card is sent again so that a late apply cannot leave VVTV on another value.
        The step's reply is the final answer to the operator who asked."""
        s = self.state
        p, s.pending_live = s.pending_live or {}, None
        kind, vid = p.get("kind"), p.get("version_id")
        extra: dict[str, Any] = {"version_id": vid, "previous_version": p.get("previous_version")}
        if ev.applied:
            if kind == "override":
                step.effects.append(Effect(step.next_id("card"), "write_card", {
                    "card": p["card"], "version_id": vid, "changes": [p["change"]], "rationale": p.get("rationale", "")}))
                self.tuning.set_by_operator(step, p["parameter"], p["value"])
                pin = p.get("pin") or {}
                extra |= {"parameter": p["parameter"],
                          "until": self.pin(step, p["parameter"], p["value"], hours=float(pin.get("hours") or 24),
                                            actor=pin.get("actor") or "operator", reason=pin.get("reason"))}
            else:
                step.effects.append(Effect(step.next_id("card"), "rollback_card", {
                    "version_id": vid, "reason": p.get("rationale") or "operator rollback"}))
            s.card, s.card_version = p["card"], vid
            ok, error, outcome = True, None, "applied"
        else:
            unanswered = (ev.error or "").startswith(("no reply", "no responder"))
            outcome = "no answer" if unanswered else "refused"
            why = f"no answer from VVTV ({ev.error})" if unanswered else f"refused by VVTV: {ev.error or 'no reason given'}"
            if unanswered:  # it may still land late: send the card the autopilot keeps again, after it
                self._apply_live(step, s.card, s.card_version, "live_restore")
            nothing = (f"nothing changed: the card stays at {s.card_version[:16]}"
                       + (f" and {p.get('parameter')} is not pinned" if kind == "override" else ""))
            ok, error = False, f"{why}; {nothing}"
            step.publish("autopilot.evt.alert", {
                "kind": "apply_failed", "cycle_id": None, "purpose": kind, "at": step.at, "version_id": vid,
                "message": f"VVTV did not apply the operator's {kind} ({why}); {nothing}"})
        step.reply = {"ok": ok, "error": error, "state": self.mode(step.now), "cycle_id": None,
                      "applied": ev.applied, "outcome": outcome, "verb": kind, **extra}
        step.command = {"verb": "apply-result", "via": "vvtv", "actor": p.get("actor"), "reason": p.get("rationale"),
                        "at": step.at, "body": {"for": kind, "effect_id": p.get("effect_id"), "version_id": vid},
                        "ok": ok, "error": error}
        step.publish("autopilot.evt.command", {**step.command, "result": step.reply})

    def run_triage(self, step: Step, *, reason: str) -> TriageReport:
        return self.monitor.triage(step, self.tuning.bounds, reason=reason)

    # --- helpers -------------------------------------------------------------------------------

    def _arm_daily(self, step: Step, keep: bool = False) -> None:
        s = self.state
        if not (keep and s.next_daily and parse_time(s.next_daily) > step.now):
            s.next_daily = rfc3339(next_daily_at(step.now, self.config.autopilot.daily_schedule_utc))
        step.schedule("daily", parse_time(s.next_daily), {"kind": "daily", "token": s.next_daily})

    def _set_pause(self, until: str | None, *, forever: bool, actor: str | None, reason: str | None) -> None:
        s = self.state
        s.paused_until, s.paused_forever, s.paused_by, s.pause_reason = until, forever, actor, reason

    def _apply_live(self, step: Step, card: dict[str, Any], vid: str, purpose: str) -> str:
        """Tell VVTV to run ``card`` on all traffic (outside any cycle); the effect id."""
        effect_id = step.next_id("apply")
        step.effects.append(Effect(effect_id, "apply", {"purpose": purpose, "request": {
            "effect_id": effect_id, "cycle_id": None, "version_id": vid, "arm": "live",
            "traffic_percentage": 1.0, "parameters": parameter_values(card, list(self.config.parameters))}}))
        return effect_id
