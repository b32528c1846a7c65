"""One daily cycle: its data, its `transitions` machine and its stage logic.

Pure and synchronous: every method takes a :class:`Step` (the event's time
and cause, and the lists that collect records and effects) and reads nothing
else from the world. A cycle restored from its snapshot gets its machine with
``initial=<state>``, so no entry action runs twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import msgspec
from transitions import Machine, MachineError

from ..handlers import card as cards
from ..handlers.bounds import BoundsCheck, ClampMode
from ..handlers.changes import manual_change
from ..handlers.gate import GateDecision, evaluate_gate
from ..handlers.golden import GoldenSet, evaluate_golden
from ..handlers.optimizer import Proposal
from ..handlers.stats import RunningStats
from ..schemas.config import Config
from ..schemas.events import Effect, TransitionRecord
from ..schemas.messages import parse_time, rfc3339
from .definition import ACTIVE, MACHINE_HASH, OUTCOME_STATUS, STATES, TERMINAL, TRANSITIONS
from .step import Step


class CycleData(msgspec.Struct, kw_only=True):
    """Everything a cycle knows; persisted as one JSON snapshot per step."""

    cycle_id: str
    origin: str                       # daily | run-now | propose
    actor: str | None = None
    started_at: str
    seed: int
    state: str = "Pending"
    seq: int = 0
    state_entered_at: str = ""
    active_seconds: float = 0.0
    timer_token: str | None = None
    awaiting: str | None = None       # effect id whose reply the cycle waits for
    proposal: dict[str, float] | None = None
    changes: list[dict[str, Any]] = []
    prediction: dict[str, Any] | None = None   # the optimizer's ExpectedImpact (drift monitor input)
    analysis: dict[str, Any] = {}
    base_card: dict[str, Any] = {}
    base_version: str = ""
    candidate_card: dict[str, Any] | None = None
    candidate_version: str | None = None
    control: dict[str, RunningStats] = {}
    canary: dict[str, RunningStats] = {}
    canary_plan: dict[str, Any] | None = None  # the canary's power and duration, planned before it starts
    canary_started_at: str | None = None
    deadline: str | None = None
    extended: bool = False
    canary_result: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    completed_at: str | None = None
    error: str | None = None


def underpowered_message(plan: dict[str, Any]) -> str:
    """What an operator needs when a guardrail cannot be shown non-inferior: its power, and the
    margin or the duration that would reach the target power."""
    power = plan.get("power") or {}
    target = 100 * float(power.get("target_power") or 0.8)
    parts = []
    for g in power.get("guardrails", []):
        if g.get("powered") or g.get("power") is None:
            continue
        what = f"{100 * g['power']:.0f} %"
        fixes = []
        if g.get("margin_for_power") is not None:
            unit = "" if g.get("margin_kind") == "absolute" else " (relative)"
            fixes.append(f"margin {g['margin_for_power']:.3g}{unit} instead of {g.get('margin')}")
        if g.get("duration_for_power_minutes") is not None:
            fixes.append(f"a {g['duration_for_power_minutes']:.3g}-minute canary")
        parts.append(f"{g['kpi']}: power {what} < {target:.0f} % in {power.get('duration_minutes', 0):.3g} min"
                     + (f"; would need {' or '.join(fixes)}" if fixes else ""))
    return (f"guardrail non-inferiority underpowered ({plan.get('action')}): " + "; ".join(parts)
            + f". {plan.get('reason', '')}").strip()


class _Fsm:
    """The model object `transitions` drives; kept apart from CycleData so the
    machine's trigger methods never collide with our own names."""

    state: str


class Cycle:
    def __init__(self, data: CycleData, config: Config):
        self.data = data
        self.config = config
        self._fsm = _Fsm()
        Machine(
            model=self._fsm,
            states=STATES,
            transitions=TRANSITIONS,
            initial=data.state,
            auto_transitions=False,
        )

    # --- bookkeeping -------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._fsm.state

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    def _fire(self, step: Step, trigger: str, detail: dict[str, Any]) -> None:
        d = self.data
        before = self.state
        try:
            self._fsm.trigger(trigger)
        except MachineError as exc:  # a designed-out move is a bug, never silently ignored
            raise RuntimeError(f"cycle {d.cycle_id}: {trigger!r} is not allowed from {before}") from exc
        if before in ACTIVE and d.state_entered_at:
            d.active_seconds += max(0.0, (step.now - parse_time(d.state_entered_at)).total_seconds())
        d.seq += 1
        d.state = self.state
        d.state_entered_at = step.at
        record = TransitionRecord(
            cycle_id=d.cycle_id, seq=d.seq, from_=before, to=self.state, trigger=trigger,
            at=step.at, cause=step.cause, detail=detail, machine=MACHINE_HASH,
        )
        step.transitions.append(record)
        step.publish("autopilot.evt.transition", msgspec.to_builtins(record), effect_id=f"tr:{d.cycle_id}:{d.seq}")
        if self.state in ACTIVE:
            d.timer_token = f"timeout:{d.seq}"
            self._schedule_timeout(step)
        if self.done:
            self._finish(step)

    def _effect_id(self, purpose: str) -> str:
        return f"{self.data.cycle_id}:{self.data.seq}:{purpose}"

    # --- timers: each scheduled in one place, re-armed after a restart by arm_timers --------

    def arm_timers(self, step: Step) -> None:
        """Schedule again whatever timer the cycle waits on (after a restart; idempotent,
        since a newer schedule of the same name replaces the older one)."""
        d = self.data
        if self.state == "Canary" and d.deadline:
            self._schedule_deadline(step)
            self._arm_check(step)
        elif d.timer_token:
            self._schedule_timeout(step)

    def _schedule_timeout(self, step: Step) -> None:
        """The active-work budget left, counted from when the current state was entered."""
        d = self.data
        budget = self.config.autopilot.max_execution_time_minutes * 60.0 - d.active_seconds
        step.schedule(f"{d.cycle_id}.timeout", parse_time(d.state_entered_at) + timedelta(seconds=max(budget, 0.0)),
                      {"kind": "timeout", "cycle_id": d.cycle_id, "token": d.timer_token})

    def _schedule_deadline(self, step: Step) -> None:
        d = self.data
        step.schedule(f"{d.cycle_id}.deadline", parse_time(d.deadline or step.at),
                      {"kind": "deadline", "cycle_id": d.cycle_id, "token": d.deadline})

    def _arm_check(self, step: Step) -> None:
        d = self.data
        at = step.now + timedelta(minutes=self.config.autopilot.check_interval_minutes)
        if d.deadline and at < parse_time(d.deadline):
            step.schedule(f"{d.cycle_id}.check", at, {"kind": "check", "cycle_id": d.cycle_id})

    def _params(self, card: dict[str, Any]) -> dict[str, Any]:
        return cards.parameter_values(card, list(self.config.parameters))

    def _apply(self, step: Step, purpose: str, arm: str, card: dict[str, Any], version: str, *, await_reply: bool) -> str:
        effect_id = self._effect_id(purpose)
        traffic = self.config.autopilot.canary_traffic_percentage if arm == "canary" else 1.0
        step.effects.append(Effect(effect_id, "apply", {
            "purpose": purpose,
            "request": {
                "effect_id": effect_id, "cycle_id": self.data.cycle_id, "version_id": version,
                "arm": arm, "traffic_percentage": traffic, "parameters": self._params(card),
            },
        }))
        if await_reply:
            self.data.awaiting = effect_id
        return effect_id

    # --- the stages ----------------------------------------------------------------

    def analyze(self, step: Step, live: dict[str, RunningStats]) -> None:
        """Pending -> Analyzing: the live window's statistics per configured KPI."""
        d = self.data
        analysis = {
            kpi: live.get(kpi, RunningStats()).summary() | {"variance": live.get(kpi, RunningStats()).variance}
            for kpi in self.config.kpis
        }
        d.analysis = {"window_hours": self.config.autopilot.analysis_window_hours, "kpis": analysis}
        self._fire(step, "start", {"origin": d.origin, "actor": d.actor, "analysis": d.analysis})

    def adopt(self, step: Step, suggestion: Proposal | None) -> bool:
        """The change this cycle tries: the optimizer's ``suggestion``, or (None) the
        operator's proposal it was started with. False: Analyzing -> NoChange."""
        d = self.data
        if suggestion is None:
            d.changes = [msgspec.to_builtins(manual_change(name, cards.get_path(d.base_card, name, None), value))
                         for name, value in sorted((d.proposal or {}).items())]
            return True
        if not suggestion.changes:
            self._fire(step, "no_change", {"reason": f"optimizer proposes no change: {suggestion.reason}",
                                           "proposal": self._proposal_detail(suggestion)})
            return False
        d.proposal = {c.parameter_name: float(c.new_value) for c in suggestion.changes}
        d.changes = [msgspec.to_builtins(c) for c in suggestion.changes]
        d.prediction = msgspec.to_builtins(suggestion.expected_impact) if suggestion.expected_impact is not None else None
        return True

    def bound(self, step: Step, suggestion: Proposal | None, checks: list[BoundsCheck], *,
              golden: GoldenSet | None = None) -> None:
        """Analyzing -> (Bounded | NoChange) on the bounds' ``checks`` of the proposal;
        with the built-in golden set, Bounded -> (Validated | Failed) in the same step."""
        d = self.data
        proposal_detail = self._proposal_detail(suggestion)
        detail_checks = [msgspec.to_builtins(c) for c in checks]
        rejected = [c for c in checks if c.action == "rejected"]
        if rejected:
            self._fire(step, "no_change", {"reason": "proposal rejected by bounds: " + "; ".join(c.reason for c in rejected),
                                           "checks": detail_checks, "proposal": proposal_detail})
            return
        proposal = d.proposal or {}
        for c in checks:
            if c.action == "clamped":
                proposal[c.parameter] = float(c.value)
                for change in d.changes:
                    if change["parameter_name"] == c.parameter:
                        change["new_value"] = float(c.value)
        d.candidate_card = cards.with_values(d.base_card, proposal)
        d.candidate_version = cards.version_id(d.candidate_card)
        self._fire(step, "bounds_ok", {"rule": f"sliding bounds ({self.bounds_mode})", "checks": detail_checks,
                                       "changes": d.changes, "proposal": proposal_detail,
                                       "candidate_version": d.candidate_version})
        if golden is not None:
            reply = evaluate_golden(golden, self._params(d.candidate_card))
            self.golden_result(step, reply.passed, {"evaluator": "builtin", "cases_run": reply.cases_run,
                                                    "failures": msgspec.to_builtins(reply.failures)})
            return
        effect_id = self._effect_id("golden")
        step.effects.append(Effect(effect_id, "golden", {"request": {
            "cycle_id": d.cycle_id, "version_id": d.candidate_version, "parameters": self._params(d.candidate_card),
        }}))
        d.awaiting = effect_id

    @property
    def bounds_mode(self) -> ClampMode:
        """Operators' values are refused when out of range, never changed; the
        optimizer's are clamped into the sliding range."""
        return "reject" if self.data.origin == "propose" else "clamp"

    def _proposal_detail(self, suggestion: Proposal | None) -> dict[str, Any]:
        if suggestion is None:
            return {"source": "ctl.propose", "actor": self.data.actor}
        return {"source": "optimizer", "method": suggestion.method, "reason": suggestion.reason, "seed": suggestion.seed,
                "candidates": suggestion.candidates, "safe_candidates": suggestion.safe_candidates}

    def golden_result(self, step: Step, passed: bool, detail: dict[str, Any]) -> None:
        """Bounded -> Validated (or Failed); at Validated the canary's plan decides whether it
        runs (``autopilot.underpowered_action``: a skipped canary ends the cycle as NoChange)."""
        d = self.data
        d.awaiting = None
        if not passed:
            d.error = "golden-set validation failed"
            self._fire(step, "golden_failed", detail)
            return
        plan = d.canary_plan or {}
        self._fire(step, "golden_passed", detail | {"canary_plan": plan})
        if any(g.get("power") is not None and not g.get("powered") for g in plan.get("power", {}).get("guardrails", [])):
            step.publish("autopilot.evt.alert", {
                "kind": "canary_underpowered", "cycle_id": d.cycle_id, "at": step.at, "action": plan.get("action"),
                "guardrails": [g for g in plan["power"]["guardrails"] if g.get("power") is not None and not g.get("powered")],
                "message": underpowered_message(plan)}, effect_id=f"alert:{d.cycle_id}:power")
        if plan and not plan.get("run", True):
            self._fire(step, "underpowered", {"reason": plan.get("reason"), "canary_plan": plan})
            return
        self._apply(step, "canary", "canary", d.candidate_card or {}, d.candidate_version or "", await_reply=True)

    @property
    def canary_minutes(self) -> float:
        """The canary's window: as planned at Validated (lengthened for power), else as configured."""
        plan = self.data.canary_plan or {}
        return float(plan.get("duration_minutes") or self.config.autopilot.canary_duration_minutes)

    def canary_apply_result(self, step: Step, applied: bool, error: str | None) -> None:
        d = self.data
        d.awaiting = None
        if not applied:
            d.error = f"canary apply failed: {error}"
            # A timed-out apply may still have landed: put the canary arm back, to be safe.
            self._restore_canary_arm(step)
            self._fire(step, "canary_apply_failed", {"error": error, "precautionary_rollback": True})
            return
        duration = timedelta(minutes=self.canary_minutes)
        d.canary_started_at = step.at
        d.deadline = rfc3339(step.now + duration)
        d.control, d.canary = {}, {}
        self._fire(step, "canary_started", {
            "canary_id": f"{d.cycle_id}-canary", "version_id": d.candidate_version, "deadline": d.deadline,
            "traffic_percentage": self.config.autopilot.canary_traffic_percentage,
        })
        d.timer_token = None
        self._schedule_deadline(step)
        self._arm_check(step)
        self.record_canary(step)

    def add_metric(self, arm: str, kpi: str, version_id: str | None, stats: RunningStats) -> bool:
        """Count a metric batch for the running canary; False when it does not belong."""
        d = self.data
        if self.state != "Canary" or kpi not in self.config.kpis:
            return False
        if arm == "canary":
            if version_id is not None and version_id != d.candidate_version:
                return False
            d.canary[kpi] = d.canary.get(kpi, RunningStats()).merge(stats)
        elif arm == "control":
            d.control[kpi] = d.control.get(kpi, RunningStats()).merge(stats)
        else:
            return False
        return True

    def evaluate(self, step: Step, *, final: bool) -> None:
        """A check (final=False) or the deadline (final=True)."""
        if self.state != "Canary":
            return
        d = self.data
        window = self.canary_minutes * 60.0
        decision = self.gate_decision(step.now, final=final)
        if decision.action == "continue":
            self._arm_check(step)
            return
        explanation = msgspec.to_builtins(decision)
        if decision.action == "extend":
            d.extended = True
            d.deadline = rfc3339(step.now + timedelta(seconds=window))
            self._fire(step, "extend", {"rule": "inconclusive at the deadline: one extension (autopilot.inconclusive_action)",
                                        "deadline": d.deadline, "decision": explanation})
            self._schedule_deadline(step)
            self._arm_check(step)
            return
        recommendation = "proceed" if decision.action == "proceed" else decision.recommendation
        if decision.action == "rollback" and recommendation == "proceed":  # never deploy on a rollback action
            recommendation = "rollback"
        self.judge(step, recommendation, explanation, rule="deadline" if final else "early stop")

    def gate_decision(self, now: datetime, *, final: bool) -> GateDecision:
        """The gate's decision on the canary's data at ``now`` (a look), without acting on it:
        what :meth:`evaluate` decides, and what incident review shows look by look."""
        d = self.data
        cfg = self.config.autopilot
        # Information time against the original window: > 1 after an extension,
        # which keeps the mixture test's guarantee (bench/GATE.md).
        elapsed = (now - parse_time(d.canary_started_at or rfc3339(now))).total_seconds() / (self.canary_minutes * 60.0)
        return evaluate_gate(
            self.config.kpis, d.control, d.canary,
            confidence=cfg.statistical_confidence_threshold, min_samples=cfg.min_samples_per_arm, final=final,
            traffic_fraction=cfg.canary_traffic_percentage, elapsed_fraction=max(elapsed, 1e-6),
            inconclusive_action="rollback" if d.extended else cfg.inconclusive_action,
        )

    def judge(self, step: Step, recommendation: str, explanation: dict[str, Any], *, rule: str) -> None:
        """Canary -> Gated, then the decision's consequence."""
        d = self.data
        d.gate = {"recommendation": recommendation, "rule": rule, **explanation}
        d.canary_result = self._canary_result(step, recommendation, explanation)
        self._fire(step, "judge", {"recommendation": recommendation, "rule": rule,
                                   "control": {k: v.summary() for k, v in d.control.items()},
                                   "canary": {k: v.summary() for k, v in d.canary.items()},
                                   "canary_result": d.canary_result, "decision": explanation})
        self.record_canary(step)
        if recommendation == "proceed":
            self._apply(step, "live", "live", d.candidate_card or {}, d.candidate_version or "", await_reply=True)
        else:
            self._rollback_canary(step, f"gate said {recommendation}: {explanation.get('reason', rule)}")

    def _canary_result(self, step: Step, recommendation: str, explanation: dict[str, Any]) -> dict[str, Any]:
        """The seed's CanaryResult, as stored with the cycle and in the Gated detail."""
        d = self.data
        if recommendation == "proceed":
            rec: dict[str, Any] = {"Proceed": {"improvement_pct": explanation.get("improvement_pct")}}
        elif recommendation == "rollback":
            rec = {"Rollback": {"degradation_pct": explanation.get("degradation_pct")}}
        else:
            rec = {"Inconclusive": {"reason": explanation.get("reason", "")}}
        started = parse_time(d.canary_started_at) if d.canary_started_at else step.now
        return {
            "canary_id": f"{d.cycle_id}-canary",
            "control_metrics": {k: v.summary() for k, v in d.control.items()},
            "canary_metrics": {k: v.summary() for k, v in d.canary.items()},
            "statistical_significance": explanation.get("statistical_significance"),
            "confidence_level": self.config.autopilot.statistical_confidence_threshold,
            "recommendation": rec,
            "execution_time_seconds": (step.now - started).total_seconds(),
        }

    def _restore_canary_arm(self, step: Step) -> str:
        """Put the base card back on the canary arm (fire and forget); the effect id."""
        d = self.data
        return self._apply(step, "canary_rollback", "canary", d.base_card, d.base_version, await_reply=False)

    def _rollback_canary(self, step: Step, why: str) -> None:
        effect_id = self._restore_canary_arm(step)
        self._fire(step, "rolled_back", {"reason": why, "restored_version": self.data.base_version, "effect_id": effect_id})

    def live_apply_result(self, step: Step, applied: bool, error: str | None) -> None:
        d = self.data
        d.awaiting = None
        if not applied:
            d.error = f"live apply failed: {error}"
            self._apply(step, "live_rollback", "live", d.base_card, d.base_version, await_reply=False)
            self._rollback_canary(step, f"live deployment failed ({error}); previous version restored")
            return
        step.effects.append(Effect(self._effect_id("card"), "write_card", {
            "card": d.candidate_card, "version_id": d.candidate_version, "changes": d.changes,
            "rationale": f"cycle {d.cycle_id} ({d.origin}): {(d.gate or {}).get('reason', '')}",
        }))
        self._fire(step, "deployed", {"version_id": d.candidate_version, "previous_version": d.base_version})

    def fail(self, step: Step, why: str) -> None:
        """Fail-safe: anything that might be deployed is put back."""
        d = self.data
        d.error = why
        if self.state in ("Validated", "Canary", "Gated"):
            self._restore_canary_arm(step)
        if self.state == "Gated":
            self._apply(step, "live_rollback", "live", d.base_card, d.base_version, await_reply=False)
        self._fire(step, "fail", {"reason": why})

    def cancel(self, step: Step, why: str) -> None:
        if self.state == "Validated":
            self._restore_canary_arm(step)
        self._fire(step, "cancel", {"reason": why})

    # --- the rows infra stores with the step ------------------------------------------------

    def record(self, step: Step) -> None:
        """The cycle's ``autopilot_cycles`` row (and its snapshot), as of this step."""
        d = self.data
        step.cycle_rows.append({
            "cycle_id": d.cycle_id, "started_at": d.started_at, "completed_at": d.completed_at,
            "status": OUTCOME_STATUS.get(self.state, "running"),
            "metrics_analysis": d.analysis, "proposed_changes": d.changes,
            "deployment_result": {"state": self.state, "version_id": d.candidate_version, "gate": d.gate,
                                  "canary_result": d.canary_result},
            "error_message": d.error, "snapshot": msgspec.to_builtins(d),
        })

    def record_canary(self, step: Step) -> None:
        """The cycle's ``canary_deployments`` row, as of this step."""
        d = self.data
        step.canary_rows.append({
            "canary_id": f"{d.cycle_id}-canary", "cycle_id": d.cycle_id, "started_at": d.canary_started_at,
            "completed_at": d.state_entered_at if d.gate else None,
            "traffic_percentage": self.config.autopilot.canary_traffic_percentage,
            "control_metrics": {k: v.summary() for k, v in d.control.items()},
            "canary_metrics": {k: v.summary() for k, v in d.canary.items()},
            "statistical_significance": (d.gate or {}).get("statistical_significance"),
            "recommendation": (d.gate or {}).get("recommendation"),
            "result": d.gate,
        })

    def _finish(self, step: Step) -> None:
        d = self.data
        d.completed_at = step.at
        d.awaiting = None
        d.timer_token = None
        outcome = {"cycle_id": d.cycle_id, "outcome": self.state, "status": OUTCOME_STATUS[self.state],
                   "started_at": d.started_at, "completed_at": d.completed_at, "origin": d.origin,
                   "changes": d.changes, "version_id": d.candidate_version if self.state == "Deployed" else d.base_version,
                   "error": d.error, "gate": (d.gate or {}).get("recommendation")}
        step.publish("autopilot.evt.cycle", outcome, effect_id=f"cycle:{d.cycle_id}")
        if self.state in ("RolledBack", "Failed"):
            step.publish("autopilot.evt.alert", {
                "kind": "cycle_" + self.state.lower(), "cycle_id": d.cycle_id, "at": step.at,
                "message": d.error or (d.gate or {}).get("reason") or self.state,
            }, effect_id=f"alert:{d.cycle_id}")
