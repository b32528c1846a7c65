"""Sliding bounds and the optimizer, as the autopilot uses them.

Keeps the per-parameter :class:`ParameterBounds` in the autopilot's state,
turns every adjustment into an ``evt.bounds`` event and a
``parameter_bounds`` row, and feeds the optimizer the outcomes of past
cycles. Pure, like the rest of the core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from ..handlers import bounds as B
from ..handlers.card import get_path
from ..handlers.optimizer import CycleOutcome, Proposal, propose
from .step import Step

if TYPE_CHECKING:
    from .autopilot import Autopilot
    from .cycle import Cycle

MAX_OUTCOMES = 60


def emit(ap: "Autopilot", step: Step, name: str, update: tuple[B.ParameterBounds, list[B.BoundsAdjustment]]) -> None:
    bounds, adjustments = update
    ap.state.bounds[name] = bounds
    ap.state_dirty = True
    for adj in adjustments:
        step.publish("autopilot.evt.bounds", msgspec.to_builtins(adj))
    step.bounds_rows[name] = bounds


def ensure_bounds(ap: "Autopilot", step: Step) -> None:
    """At boot: bounds for every configured parameter, reconciled with the
    configured hard limits and the card's current value."""
    for name, spec in ap.config.parameters.items():
        current = get_path(ap.state.card, name, None)
        if current is None:
            current = (spec.min + spec.max) / 2
        current = min(max(float(current), spec.min), spec.max)
        existing = ap.state.bounds.get(name)
        if existing is None:
            emit(ap, step, name, B.initial_bounds(
                name, spec, current, at=step.now,
                half_width_fraction=ap.config.autopilot.sliding_bounds.initial_half_width_fraction))
        elif (existing.hard_min, existing.hard_max) != (spec.min, spec.max):
            emit(ap, step, name, B.reconcile_spec(existing, spec, at=step.now))


def check(ap: "Autopilot", step: Step, name: str, value: float, mode: str) -> B.BoundsCheck:
    bounds = ap.state.bounds.get(name)
    if bounds is None:
        spec = ap.config.parameters[name]
        bounds, _ = B.initial_bounds(name, spec, min(max(value, spec.min), spec.max), at=step.now)
    return B.clamp_or_reject(bounds, value, mode, at=step.now)  # type: ignore[arg-type]


def optimizer_proposal(ap: "Autopilot", step: Step, cycle: "Cycle") -> Proposal:
    d = cycle.data
    analysis = d.analysis.get("kpis", {})
    current = {n: float(get_path(ap.state.card, n, b.current_value)) for n, b in ap.state.bounds.items()}
    return propose(analysis=analysis, history=list(ap.state.outcomes), bounds=ap.state.bounds, kpis=ap.config.kpis,
                   seed=d.seed, pinned=sorted(ap.state.overrides), current=current, at=step.now)


def daily(ap: "Autopilot", step: Step) -> None:
    """A day passed: stable days accrue (anti-windup decides where they do not)."""
    cfg = ap.config.autopilot.sliding_bounds
    paused = ap.paused(step.now)
    for name, bounds in sorted(ap.state.bounds.items()):
        emit(ap, step, name, B.record_stable_day(bounds, cfg, at=step.now, paused=paused, pinned=name in ap.state.overrides))


def after_cycle(ap: "Autopilot", step: Step, cycle: "Cycle") -> None:
    """Bounds follow the outcome; the outcome joins the optimizer's history."""
    d = cycle.data
    if not d.proposal:
        return
    cfg = ap.config.autopilot.sliding_bounds
    for name, value in sorted(d.proposal.items()):
        bounds = ap.state.bounds.get(name)
        if bounds is None:
            continue
        if cycle.state == "Deployed":
            emit(ap, step, name, B.mark_deployed(bounds, float(value), at=step.now))
        elif cycle.state == "RolledBack" and (d.gate or {}).get("recommendation") == "rollback":
            base = get_path(d.base_card, name, bounds.last_known_good)
            emit(ap, step, name, B.contract_after_rollback(bounds, cfg, at=step.now, restored_value=float(base),
                                                           reason=f"cycle {d.cycle_id} rolled back"))
    outcome = realized_outcome(cycle)
    if outcome is not None:
        ap.state.outcomes = (ap.state.outcomes + [outcome])[-MAX_OUTCOMES:]
        ap.state_dirty = True


def realized_outcome(cycle: "Cycle") -> CycleOutcome | None:
    d = cycle.data
    verdicts = ((d.gate or {}).get("kpis")) or []
    lifts, ses = {}, {}
    for v in verdicts:
        if v.get("lift") is not None and v.get("n_control") and v.get("n_canary"):
            lifts[v["kpi"]] = float(v["lift"])
            if v.get("mode") == "relative" and v.get("se"):
                ses[v["kpi"]] = float(v["se"])
    if not lifts or not d.proposal:
        return None
    names = sorted(d.proposal)
    baseline = {n: float(get_path(d.base_card, n, 0.0)) for n in names}
    parameters = {n: float(get_path(d.candidate_card or d.base_card, n, 0.0)) for n in names}
    outcome = {"Deployed": "deployed", "RolledBack": "rolled_back"}.get(cycle.state, cycle.state.lower())
    return CycleOutcome(parameters, baseline, lifts, ses, outcome, d.cycle_id)


def bounds_report(ap: "Autopilot") -> dict[str, Any]:
    out = {}
    for name, b in sorted(ap.state.bounds.items()):
        out[name] = msgspec.to_builtins(b) | {"pinned": name in ap.state.overrides}
    return out
