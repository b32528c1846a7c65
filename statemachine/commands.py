"""Operator commands (``ctl.<verb>`` and the durable ``cmd.<verb>``) as steps of the core.

Bodies arrive already validated (:mod:`..schemas.messages`); here each verb is
either carried out through the autopilot's public methods (the :class:`Controls`
it offers) or refused with :class:`CommandRefused`, whose message a person can act
on. The reply is set on the step; infra sends it after the commit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Protocol

from ..handlers.bounds import BoundsCheck, ClampMode
from ..handlers.card import get_path
from ..schemas.config import Config
from ..schemas.errors import CommandRefused
from ..schemas.events import CommandEvent
from .cycle import Cycle
from .step import Step


class Controls(Protocol):
    """What an operator command may do to the autopilot (:class:`~.autopilot.Autopilot`)."""

    config: Config

    @property
    def card(self) -> dict[str, Any]: ...
    @property
    def card_version(self) -> str: ...
    @property
    def in_emergency_pause(self) -> bool: ...
    @property
    def overrides(self) -> dict[str, dict[str, Any]]: ...
    def mode(self, now: datetime) -> str: ...
    def running(self) -> Cycle | None: ...
    def paused(self, now: datetime) -> bool: ...
    def why_no_cycle_can_start(self, now: datetime) -> str | None: ...
    def start_cycle(self, step: Step, *, origin: str, actor: str | None, proposal: dict[str, float] | None) -> Cycle: ...
    def stop_running_cycle(self, step: Step, why: str) -> dict[str, Any]: ...
    def pause_for(self, step: Step, hours: float, *, actor: str, reason: str | None, stop_why: str) -> dict[str, Any]: ...
    def emergency_pause(self, step: Step, *, actor: str, reason: str | None) -> dict[str, Any]: ...
    def resume(self) -> None: ...
    def check_bounds(self, step: Step, name: str, value: float, mode: ClampMode) -> BoundsCheck: ...
    def put_live(self, step: Step, name: str, value: float, *, rationale: str, pin: dict[str, Any]) -> str: ...
    def pending_live_refusal(self) -> str: ...
    @property
    def pending_live(self) -> dict[str, Any] | None: ...
    def pin(self, step: Step, name: str, value: float, *, hours: float, actor: str, reason: str | None) -> str: ...
    def unpin(self, step: Step, name: str, *, actor: str) -> bool: ...
    def override_bounds(self, step: Step, name: str, *, min_value: float, max_value: float, hours: float,
                        actor: str, reason: str | None) -> str: ...
    def adopt_version(self, step: Step, card: dict[str, Any], version_id: str, *, reason: str = ...,
                      actor: str | None = None) -> None: ...
    def run_triage(self, step: Step, *, reason: str) -> Any: ...


def handle_command(ap: Controls, step: Step, ev: CommandEvent) -> None:
    body = ev.body
    try:
        verb = _VERBS.get(ev.verb)
        if verb is None:
            raise CommandRefused(f"unknown verb {ev.verb!r}; known: {', '.join(sorted(_VERBS))}")
        extra = verb(ap, step, body) or {}
        ok, error = True, None
    except CommandRefused as exc:
        ok, error, extra = False, str(exc), {}
    running = ap.running()
    reply: dict[str, Any] = {"ok": ok, "error": error, "state": ap.mode(step.now),
                             "cycle_id": running.data.cycle_id if running else extra.pop("cycle_id", None), **extra}
    step.reply = reply
    step.command = {"verb": ev.verb, "via": ev.via, "actor": body.get("actor"), "reason": body.get("reason"),
                    "at": step.at, "body": body, "ok": ok, "error": error}
    step.publish("autopilot.evt.command", {**step.command, "result": reply})


# --- the verbs -------------------------------------------------------------------------------


def _pause(ap: Controls, step: Step, body: dict[str, Any]) -> dict[str, Any]:
    if ap.in_emergency_pause:
        raise CommandRefused("already in emergency pause; send resume first")
    return ap.pause_for(step, float(body.get("hours") or 48.0), actor=body["actor"], reason=body.get("reason"),
                        stop_why=f"paused by {body['actor']}")


def _emergency_pause(ap: Controls, step: Step, body: dict[str, Any]) -> dict[str, Any]:
    return ap.emergency_pause(step, actor=body["actor"], reason=body.get("reason"))


def _resume(ap: Controls, step: Step, body: dict[str, Any]) -> None:
    if not ap.paused(step.now):
        raise CommandRefused("the autopilot is not paused")
    ap.resume()


def _run_now(ap: Controls, step: Step, body: dict[str, Any]) -> dict[str, Any]:
    _require_can_start(ap, step)
    cycle = ap.start_cycle(step, origin="run-now", actor=body["actor"], proposal=None)
    return {"cycle_id": cycle.data.cycle_id}


def _propose(ap: Controls, step: Step, body: dict[str, Any]) -> dict[str, Any]:
    _require_can_start(ap, step)
    changes = {str(k): float(v) for k, v in body["changes"].items()}
    for name, value in sorted(changes.items()):
        _require_parameter(ap, name, value)
        if name in ap.overrides:
            raise CommandRefused(f"{name} is pinned by an override until {ap.overrides[name].get('until')}; clear it first")
        check = ap.check_bounds(step, name, value, "reject")
        if check.action == "rejected":  # refused with the bound, never silently changed
            raise CommandRefused(check.reason)
    cycle = ap.start_cycle(step, origin="propose", actor=body["actor"], proposal=changes)
    return {"cycle_id": cycle.data.cycle_id}


def _override(ap: Controls, step: Step, body: dict[str, Any]) -> dict[str, Any]:
    """A value other than the live one is asked of VVTV first: the reply waits for its answer
    (``pending_apply``: infra holds the operator's reply until the apply's result step, whose
    reply says applied, refused or unanswered). Only an applied value is written and pinned."""
    name, value = body["parameter"], float(body["value"])
    _require_parameter(ap, name, value)
    current = get_path(ap.card, name, None)
    hours = float(body.get("hours") or ap.config.autopilot.manual_override_hours)
    if current is None or float(current) != value:
        running = ap.running()
        if running is not None:
            raise CommandRefused(f"cycle {running.data.cycle_id} is running ({running.state}); abort it before "
                                 f"overriding {name} to a new value")
        _require_no_pending_live(ap)
        deployed = ap.put_live(step, name, value,
                               rationale=f"override by {body['actor']}: {body.get('reason') or 'no reason given'}",
                               pin={"hours": hours, "actor": body["actor"], "reason": body.get("reason")})
        return {"parameter": name, "version_id": deployed, "pending_apply": (ap.pending_live or {}).get("effect_id")}
    until = ap.pin(step, name, value, hours=hours, actor=body["actor"], reason=body.get("reason"))
    return {"parameter": name, "until": until, "version_id": ap.card_version, "applied": None,
            "outcome": f"already live ({name}={value}): pinned, nothing sent to VVTV"}


def _clear_override(ap: Controls, step: Step, body: dict[str, Any]) -> None:
    name = body["parameter"]
    if not ap.unpin(step, name, actor=body["actor"]):
        raise CommandRefused(f"{name} has no override to clear")


def _bounds_override(ap: Controls, step: Step, body: dict[str, Any]) -> dict[str, Any]:
    name = body["parameter"]
    _require_parameter(ap, name)
    low, high = float(body["min"]), float(body["max"])
    until = ap.override_bounds(step, name, min_value=low, max_value=high,
                               hours=float(body.get("hours") or ap.config.autopilot.manual_override_hours),
                               actor=body["actor"], reason=body.get("reason"))
    return {"parameter": name, "until": until, "min": low, "max": high}


def _end_canary(recommendation: str) -> Callable[[Controls, Step, dict[str, Any]], dict[str, Any]]:
    verb = "promote" if recommendation == "proceed" else "abort"

    def end(ap: Controls, step: Step, body: dict[str, Any]) -> dict[str, Any]:
        cycle = ap.running()
        if cycle is None or cycle.state != "Canary":
            where = "no cycle is running" if cycle is None else f"cycle {cycle.data.cycle_id} is in {cycle.state}"
            raise CommandRefused(f"nothing to {verb}: no canary is running ({where})")
        cycle.judge(step, recommendation,
                    {"reason": f"{verb} by {body['actor']}: {body.get('reason') or 'no reason given'}",
                     "actor": body["actor"]}, rule=f"operator {verb}")
        return {"cycle_id": cycle.data.cycle_id}

    return end


def _rollback(ap: Controls, step: Step, body: dict[str, Any]) -> dict[str, Any]:
    """Infra has already found and verified the target version in the history (``verified``;
    a unique prefix is resolved there); the core asks VVTV to run it, and the card on disk is
    rolled back only once VVTV applied it (the reply waits for that, as an override's does)."""
    running = ap.running()
    if running is not None:
        raise CommandRefused(f"cycle {running.data.cycle_id} is running ({running.state}); abort it first")
    verified = body.get("verified")
    if not verified:
        raise CommandRefused(body.get("rollback_error") or f"version {body['version_id']} could not be restored")
    _require_no_pending_live(ap)
    if verified["version_id"] == ap.card_version:
        return {"version_id": verified["version_id"], "applied": None,
                "outcome": "already the live version: nothing sent to VVTV"}
    ap.adopt_version(step, verified["card"], verified["version_id"],
                     reason=f"rollback by {body['actor']}: {body.get('reason') or 'no reason given'}", actor=body["actor"])
    return {"version_id": verified["version_id"], "pending_apply": (ap.pending_live or {}).get("effect_id")}


def _triage(ap: Controls, step: Step, body: dict[str, Any]) -> dict[str, Any]:
    report = ap.run_triage(step, reason=f"requested by {body['actor']}")
    return {"report_id": report.report_id, "failure_counts": report.failure_counts,
            "patch_suggestions": len(report.patch_suggestions)}


# --- refusals shared by several verbs ---------------------------------------------------------


def _require_can_start(ap: Controls, step: Step) -> None:
    why = ap.why_no_cycle_can_start(step.now)
    if why is not None:
        raise CommandRefused(why)


def _require_no_pending_live(ap: Controls) -> None:
    if ap.pending_live is not None:
        raise CommandRefused(ap.pending_live_refusal())


def _require_parameter(ap: Controls, name: str, value: float | None = None) -> None:
    spec = ap.config.parameters.get(name)
    if spec is None:
        raise CommandRefused(f"unknown parameter {name!r}; tunable: {', '.join(sorted(ap.config.parameters)) or 'none'}")
    if value is not None and not spec.min <= value <= spec.max:
        raise CommandRefused(f"{name}={value} is outside its hard limits [{spec.min}, {spec.max}]")


_VERBS: dict[str, Callable[[Controls, Step, dict[str, Any]], dict[str, Any] | None]] = {
    "pause": _pause,
    "emergency-pause": _emergency_pause,
    "resume": _resume,
    "run-now": _run_now,
    "propose": _propose,
    "override": _override,
    "clear-override": _clear_override,
    "bounds-override": _bounds_override,
    "promote": _end_canary("proceed"),
    "abort": _end_canary("rollback"),
    "rollback": _rollback,
    "triage": _triage,
}
