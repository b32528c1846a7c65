"""Operator commands (contract §2.1 and §1.3) as steps of the core.

Bodies arrive already validated (schemas.messages); here each verb is
either applied (its effect on the autopilot and on a running cycle, which
records it as a trigger in the cycle's log) or refused with an error a person
can act on. The reply is set on the step; infra sends it after commit.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from ..handlers.card import get_path, parameter_values, version_id, with_values
from ..handlers.changes import manual_change
from ..schemas.events import CommandEvent, Effect
from ..schemas.messages import parse_time, rfc3339
from . import tuning
from ..handlers import bounds as B
from .step import Step

if TYPE_CHECKING:
    from .autopilot import Autopilot


class _Refused(Exception):
    pass


def handle_command(ap: "Autopilot", step: Step, ev: CommandEvent) -> None:
    body = ev.body
    actor = body.get("actor")
    try:
        handler = _VERBS.get(ev.verb)
        if handler is None:
            raise _Refused(f"unknown verb {ev.verb!r}; known: {', '.join(sorted(_VERBS))}")
        extra = handler(ap, step, body) or {}
        ok, error = True, None
    except _Refused as exc:
        ok, error, extra = False, str(exc), {}
    running = ap.running()
    reply: dict[str, Any] = {"ok": ok, "error": error, "state": ap.mode(step.now),
                             "cycle_id": running.data.cycle_id if running else extra.pop("cycle_id", None), **extra}
    step.reply = reply
    step.command = {"verb": ev.verb, "via": ev.via, "actor": actor, "reason": body.get("reason"),
                    "at": step.at, "body": body, "ok": ok, "error": error}
    step.publish("autopilot.evt.command", {**step.command, "result": reply})


def _hours_until(step: Step, hours: float) -> str:
    return rfc3339(step.now + timedelta(hours=hours))


def stop_running_cycle(ap: "Autopilot", step: Step, why: str) -> dict[str, Any]:
    """Stop the running cycle, if any; the reply names it (``cycle_id``)."""
    cycle = ap.running()
    if cycle is None:
        return {}
    stopped = {"cycle_id": cycle.data.cycle_id}
    if cycle.state == "Canary":
        cycle.judge(step, "rollback", {"reason": why}, rule="operator")
    elif cycle.state in ("Analyzing", "Bounded", "Validated"):
        cycle.cancel(step, why)
    # In Gated a live deployment is already in flight; it finishes on its reply.
    return stopped


def _pause(ap: "Autopilot", step: Step, body: dict[str, Any]) -> dict[str, Any]:
    hours = float(body.get("hours") or 48.0)
    until = _hours_until(step, hours)
    if ap.state.paused_forever:
        raise _Refused("already in emergency pause; send resume first")
    ap.set_pause(until, forever=False, actor=body["actor"], reason=body.get("reason"))
    step.schedule("pause", parse_time(until), {"kind": "pause_expiry", "token": until})
    stopped = stop_running_cycle(ap, step, f"paused by {body['actor']}")
    step.publish("autopilot.evt.alert", {"kind": "paused", "at": step.at, "until": until, "actor": body["actor"],
                                         "message": body.get("reason") or "autopilot paused"})
    return {"paused_until": until, **stopped}


def _emergency_pause(ap: "Autopilot", step: Step, body: dict[str, Any]) -> dict[str, Any]:
    ap.set_pause(None, forever=True, actor=body["actor"], reason=body.get("reason"))
    stopped = stop_running_cycle(ap, step, f"emergency pause by {body['actor']}")
    step.publish("autopilot.evt.alert", {"kind": "emergency_pause", "at": step.at, "actor": body["actor"],
                                         "message": body.get("reason") or "autopilot in emergency pause"})
    return {"paused_until": None, "emergency_pause": True, **stopped}


def _resume(ap: "Autopilot", step: Step, body: dict[str, Any]) -> None:
    if not ap.paused(step.now):
        raise _Refused("the autopilot is not paused")
    ap.set_pause(None, forever=False, actor=None, reason=None)


def _can_start(ap: "Autopilot", step: Step) -> None:
    running = ap.running()
    if running is not None:
        raise _Refused(f"cycle {running.data.cycle_id} is running ({running.state}); wait for it or abort it")
    if ap.paused(step.now):
        until = "until resume" if ap.state.paused_forever else f"until {ap.state.paused_until}"
        raise _Refused(f"the autopilot is paused {until}; resume it first")
    if not ap.config.autopilot.enabled:
        raise _Refused("the autopilot is disabled in its configuration (autopilot.enabled: false)")


def _run_now(ap: "Autopilot", step: Step, body: dict[str, Any]) -> dict[str, Any]:
    _can_start(ap, step)
    cycle = ap.start_cycle(step, origin="run-now", actor=body["actor"], proposal=None)
    return {"cycle_id": cycle.data.cycle_id}


def _check_parameter(ap: "Autopilot", step: Step, name: str, value: float | None = None) -> None:
    spec = ap.config.parameters.get(name)
    if spec is None:
        raise _Refused(f"unknown parameter {name!r}; tunable: {', '.join(sorted(ap.config.parameters)) or 'none'}")
    if value is None:
        return
    if not spec.min <= value <= spec.max:
        raise _Refused(f"{name}={value} is outside its hard limits [{spec.min}, {spec.max}]")


def _propose(ap: "Autopilot", step: Step, body: dict[str, Any]) -> dict[str, Any]:
    _can_start(ap, step)
    changes = {str(k): float(v) for k, v in body["changes"].items()}
    for name, value in sorted(changes.items()):
        _check_parameter(ap, step, name, value)
        if name in ap.state.overrides:
            raise _Refused(f"{name} is pinned by an override until {ap.state.overrides[name].get('until')}; clear it first")
        check = tuning.check(ap, step, name, value, "reject")
        if check.action == "rejected":  # refused with the bound, never silently changed
            raise _Refused(check.reason)
    cycle = ap.start_cycle(step, origin="propose", actor=body["actor"], proposal=changes)
    return {"cycle_id": cycle.data.cycle_id}


def _override(ap: "Autopilot", step: Step, body: dict[str, Any]) -> dict[str, Any]:
    name, value = body["parameter"], float(body["value"])
    _check_parameter(ap, step, name, value)
    hours = float(body.get("hours") or ap.config.autopilot.manual_override_hours)
    until = _hours_until(step, hours)
    current = get_path(ap.state.card, name, None)
    deployed = None
    if current is None or float(current) != value:
        # The operator's value goes live at once (card written atomically,
        # VVTV told), then it is held there: that is what pinning it means.
        running = ap.running()
        if running is not None:
            raise _Refused(f"cycle {running.data.cycle_id} is running ({running.state}); abort it before "
                           f"overriding {name} to a new value")
        card = with_values(ap.state.card, {name: value})
        deployed = version_id(card)
        change = msgspec.to_builtins(manual_change(name, current, value))
        step.effects.append(Effect(step.next_id("card"), "write_card", {
            "card": card, "version_id": deployed, "changes": [change],
            "rationale": f"override by {body['actor']}: {body.get('reason') or 'no reason given'}"}))
        _apply_live(ap, step, card, deployed, "override")
        ap.state.card, ap.state.card_version = card, deployed
        bounds = ap.state.bounds.get(name)
        if bounds is not None:
            tuning.emit(ap, step, name, B.mark_deployed(bounds, value, at=step.now, known_good=False))
    ap.state.overrides[name] = {"value": value, "until": until, "actor": body["actor"], "reason": body.get("reason")}
    ap.state_dirty = True
    step.schedule(f"override.{name}", parse_time(until), {"kind": "override_expiry", "token": until})
    return {"parameter": name, "until": until, "version_id": deployed or ap.state.card_version}


def _clear_override(ap: "Autopilot", step: Step, body: dict[str, Any]) -> None:
    name = body["parameter"]
    bounds = ap.state.bounds.get(name)
    had_bounds_override = bounds is not None and B.override_active(bounds, step.now)
    if ap.state.overrides.pop(name, None) is None and not had_bounds_override:
        raise _Refused(f"{name} has no override to clear")
    if had_bounds_override:
        tuning.emit(ap, step, name, B.clear_bounds_override(bounds, at=step.now, actor=body["actor"]))
    ap.state_dirty = True


def _bounds_override(ap: "Autopilot", step: Step, body: dict[str, Any]) -> dict[str, Any]:
    name = body["parameter"]
    _check_parameter(ap, step, name)
    hours = float(body.get("hours") or ap.config.autopilot.manual_override_hours)
    until = step.now + timedelta(hours=hours)
    try:
        update = B.bounds_override(ap.state.bounds[name], min_value=float(body["min"]), max_value=float(body["max"]),
                                   until=until, at=step.now, actor=body["actor"], reason=body.get("reason"))
    except B.BoundsError as exc:
        raise _Refused(str(exc)) from None
    tuning.emit(ap, step, name, update)
    # Its own timer name: a newer schedule of a name replaces the older one, so
    # sharing `override.<name>` with the pin would cancel the pin's expiry.
    step.schedule(f"bounds.{name}", until, {"kind": "override_expiry", "token": rfc3339(until)})
    return {"parameter": name, "until": rfc3339(until), "min": float(body["min"]), "max": float(body["max"])}


def _canary_end(ap: "Autopilot", step: Step, body: dict[str, Any], recommendation: str) -> dict[str, Any]:
    cycle = ap.running()
    verb = "promote" if recommendation == "proceed" else "abort"
    if cycle is None or cycle.state != "Canary":
        where = "no cycle is running" if cycle is None else f"cycle {cycle.data.cycle_id} is in {cycle.state}"
        raise _Refused(f"nothing to {verb}: no canary is running ({where})")
    cycle_id = cycle.data.cycle_id
    cycle.judge(step, recommendation, {"reason": f"{verb} by {body['actor']}: {body.get('reason') or 'no reason given'}",
                                       "actor": body["actor"]}, rule=f"operator {verb}")
    return {"cycle_id": cycle_id}


def _rollback(ap: "Autopilot", step: Step, body: dict[str, Any]) -> dict[str, Any]:
    """Infra has already verified and written the target version (``verified``);
    the core adopts it and tells VVTV."""
    running = ap.running()
    if running is not None:
        raise _Refused(f"cycle {running.data.cycle_id} is running ({running.state}); abort it first")
    verified = body.get("verified")
    if not verified:
        raise _Refused(body.get("rollback_error") or f"version {body['version_id']} could not be restored")
    ap.state.card, ap.state.card_version = verified["card"], verified["version_id"]
    ap.state_dirty = True
    _apply_live(ap, step, verified["card"], verified["version_id"], "manual_rollback")
    return {"version_id": verified["version_id"]}


def _apply_live(ap: "Autopilot", step: Step, card: dict[str, Any], vid: str, purpose: str) -> None:
    """Tell VVTV to run ``card`` on all traffic (outside any cycle)."""
    effect_id = step.next_id("apply")
    step.effects.append(Effect(effect_id, "apply", {"purpose": purpose, "request": {
        "effect_id": effect_id, "cycle_id": None, "version_id": vid, "arm": "live",
        "traffic_percentage": 1.0, "parameters": parameter_values(card, list(ap.config.parameters))}}))


def _triage(ap: "Autopilot", step: Step, body: dict[str, Any]) -> dict[str, Any]:
    from .guards import triage  # guards stops running cycles through this module: import late

    report = triage(ap, step, reason=f"requested by {body['actor']}")
    return {"report_id": report.report_id, "failure_counts": report.failure_counts,
            "patch_suggestions": len(report.patch_suggestions)}


_VERBS = {
    "pause": _pause,
    "emergency-pause": _emergency_pause,
    "resume": _resume,
    "run-now": _run_now,
    "propose": _propose,
    "override": _override,
    "clear-override": _clear_override,
    "bounds-override": _bounds_override,
    "promote": lambda ap, step, body: _canary_end(ap, step, body, "proceed"),
    "abort": lambda ap, step, body: _canary_end(ap, step, body, "rollback"),
    "rollback": _rollback,
    "triage": _triage,
}
