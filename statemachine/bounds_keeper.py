"""The bounds keeper: the sliding bounds of every tunable parameter and what past canaries measured.

It owns :class:`TuningState` (the per-parameter :class:`ParameterBounds` and the
optimizer's history of outcomes), turns every bounds adjustment into an
``evt.bounds`` event and a ``parameter_bounds`` row on the step, and asks the
optimizer for the next proposal. Pure, like the rest of the core: time comes
from the step, randomness from the cycle's seed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from ..handlers import bounds as B
from ..handlers.card import get_path
from ..handlers.optimizer import CycleOutcome, Proposal, propose
from ..schemas.config import Config
from .cycle import Cycle
from .step import Step

MAX_OUTCOMES = 60


class TuningState(msgspec.Struct, kw_only=True):
    bounds: dict[str, B.ParameterBounds] = {}
    outcomes: list[CycleOutcome] = []                # what past canaries measured (optimizer input)
    idle_cycles: int = 0                             # optimizer cycles in a row that proposed no change


class BoundsKeeper:
    def __init__(self, config: Config, state: TuningState):
        self.config = config
        self.state = state

    @property
    def bounds(self) -> dict[str, B.ParameterBounds]:
        return self.state.bounds

    # --- queries ---------------------------------------------------------------------------

    def check(self, step: Step, name: str, value: float, mode: B.ClampMode) -> B.BoundsCheck:
        """What the Bounded step does with one proposed value (nothing is changed)."""
        bounds = self.state.bounds.get(name)
        if bounds is None:
            spec = self.config.parameters[name]
            bounds, _ = B.initial_bounds(name, spec, min(max(value, spec.min), spec.max), at=step.now)
        return B.clamp_or_reject(bounds, value, mode, at=step.now)

    def propose(self, step: Step, analysis: dict[str, Any], *, card: dict[str, Any], pinned: list[str],
                seed: int, min_detectable_gain: float | None = None, canary_may_lengthen: bool = False) -> Proposal:
        """The optimizer's proposal; ``min_detectable_gain`` is the canary's MDE for the improvement
        score (relative, good direction; None: unknown), which the step must clear;
        ``canary_may_lengthen``: that MDE is the longest canary's, and the canary will be
        lengthened for the step (see :func:`..handlers.optimizer.propose`)."""
        current = {n: float(get_path(card, n, b.current_value)) for n, b in self.state.bounds.items()}
        return propose(analysis=analysis.get("kpis", {}), history=list(self.state.outcomes), bounds=self.state.bounds,
                       kpis=self.config.kpis, seed=seed, pinned=pinned, current=current, at=step.now,
                       min_detectable_gain=min_detectable_gain, idle_cycles=self.state.idle_cycles,
                       canary_may_lengthen=canary_may_lengthen)

    def override_active(self, name: str, now: datetime) -> bool:
        bounds = self.state.bounds.get(name)
        return bounds is not None and B.override_active(bounds, now)

    def active_overrides(self, now: datetime) -> dict[str, Any]:
        return {n: msgspec.to_builtins(b.override) for n, b in self.state.bounds.items()
                if b.override is not None and B.override_active(b, now)}

    # --- changes ---------------------------------------------------------------------------

    def ensure(self, step: Step, card: dict[str, Any]) -> None:
        """At boot: bounds for every configured parameter, reconciled with the
        configured hard limits and the card's current value."""
        for name, spec in self.config.parameters.items():
            current = get_path(card, name, None)
            if current is None:
                current = (spec.min + spec.max) / 2
            current = min(max(float(current), spec.min), spec.max)
            existing = self.state.bounds.get(name)
            if existing is None:
                self._emit(step, name, B.initial_bounds(
                    name, spec, current, at=step.now,
                    half_width_fraction=self.config.autopilot.sliding_bounds.initial_half_width_fraction))
            elif (existing.hard_min, existing.hard_max) != (spec.min, spec.max):
                self._emit(step, name, B.reconcile_spec(existing, spec, at=step.now))

    def day_passed(self, step: Step, *, paused: bool, pinned: set[str]) -> None:
        """Stable days accrue (anti-windup decides where they do not)."""
        cfg = self.config.autopilot.sliding_bounds
        for name, bounds in sorted(self.state.bounds.items()):
            self._emit(step, name, B.record_stable_day(bounds, cfg, at=step.now, paused=paused, pinned=name in pinned))

    def expire_overrides(self, step: Step) -> None:
        for name, bounds in sorted(self.state.bounds.items()):
            if bounds.override is not None:
                self._emit(step, name, B.refresh(bounds, at=step.now))

    def set_by_operator(self, step: Step, name: str, value: float) -> None:
        """An operator put ``value`` live (override): not a known-good value."""
        bounds = self.state.bounds.get(name)
        if bounds is not None:
            self._emit(step, name, B.mark_deployed(bounds, value, at=step.now, known_good=False))

    def bounds_override(self, step: Step, name: str, *, min_value: float, max_value: float, until: datetime,
                        actor: str, reason: str | None) -> None:
        """Raises :class:`BoundsError` when the override would break an invariant."""
        self._emit(step, name, B.bounds_override(self.state.bounds[name], min_value=min_value, max_value=max_value,
                                                 until=until, at=step.now, actor=actor, reason=reason))

    def clear_bounds_override(self, step: Step, name: str, actor: str) -> None:
        self._emit(step, name, B.clear_bounds_override(self.state.bounds[name], at=step.now, actor=actor))

    def contract(self, step: Step, names: list[str], reason: str) -> None:
        cfg = self.config.autopilot.sliding_bounds
        for name in names:
            bounds = self.state.bounds.get(name)
            if bounds is not None:
                self._emit(step, name, B.contract_after_rollback(bounds, cfg, at=step.now, reason=reason))

    def after_cycle(self, step: Step, cycle: Cycle) -> None:
        """Bounds follow the outcome; the outcome joins the optimizer's history."""
        d = cycle.data
        if not d.proposal:
            if cycle.state == "NoChange" and d.origin != "propose":
                self.state.idle_cycles += 1   # the optimizer proposed nothing
            return
        cfg = self.config.autopilot.sliding_bounds
        for name, value in sorted(d.proposal.items()):
            bounds = self.state.bounds.get(name)
            if bounds is None:
                continue
            if cycle.state == "Deployed":
                self._emit(step, name, B.mark_deployed(bounds, float(value), at=step.now))
            elif cycle.state == "RolledBack" and (d.gate or {}).get("recommendation") == "rollback":
                # The restored card may hold a value outside today's hard limits (the card was
                # changed by hand, or the limits were): the bounds anchor at the nearest limit.
                base = min(max(float(get_path(d.base_card, name, bounds.last_known_good)), bounds.hard_min),
                           bounds.hard_max)
                self._emit(step, name, B.contract_after_rollback(bounds, cfg, at=step.now, restored_value=base,
                                                                 reason=f"cycle {d.cycle_id} rolled back"))
        outcome = realized_outcome(cycle)
        if outcome is not None:
            self.state.outcomes = (self.state.outcomes + [outcome])[-MAX_OUTCOMES:]
            self.state.idle_cycles = 0

    def _emit(self, step: Step, name: str, update: B.Update) -> None:
        bounds, adjustments = update
        self.state.bounds[name] = bounds
        for adj in adjustments:
            step.publish("autopilot.evt.bounds", msgspec.to_builtins(adj))
        step.bounds_rows[name] = bounds


def realized_outcome(cycle: Cycle) -> CycleOutcome | None:
    """What the cycle's canary measured, as the optimizer learns from it (None: nothing measured)."""
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
