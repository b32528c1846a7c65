"""The sliding-bounds data: :class:`ParameterBounds`, its adjustment records and check results.

Private to :mod:`vvtv_autopilot.handlers.bounds`, which re-exports every name here.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from ..schemas.errors import CommandRefused

__all__ = [
    "HISTORY_LIMIT",
    "AdjustmentKind",
    "ClampMode",
    "BoundsError",
    "BoundsAdjustment",
    "BoundsOverride",
    "ParameterBounds",
    "Update",
    "BoundsCheck",
]

HISTORY_LIMIT = 100
"""How many adjustments a ParameterBounds keeps in its own ``history``."""

AdjustmentKind = Literal[
    "init", "expansion", "contraction", "anti_windup", "recentre", "thaw",
    "override", "override_expired", "override_cleared", "contain", "spec_change",
]
ClampMode = Literal["clamp", "reject"]


class BoundsError(CommandRefused):
    """A bounds operation that would break an invariant; the message names the bound."""


class BoundsAdjustment(msgspec.Struct, frozen=True):
    parameter: str
    kind: AdjustmentKind
    old_range: tuple[float, float]
    new_range: tuple[float, float]
    reason: str
    rule: str            # which configured rule applied, e.g. "expansion_rate_per_week=0.05"
    at: str              # RFC 3339


class BoundsOverride(msgspec.Struct, frozen=True):
    min_value: float
    max_value: float
    until: str           # RFC 3339; the override ends when at >= until
    set_at: str
    actor: str
    reason: str | None = None


class ParameterBounds(msgspec.Struct, frozen=True):
    """The seed's ParameterBounds plus what the rules need (one row of ``parameter_bounds``)."""

    parameter_name: str
    min_value: float            # sliding range
    max_value: float
    current_value: float        # the live value
    hard_min: float             # configured ParameterSpec limits
    hard_max: float
    last_known_good: float
    last_updated: str           # RFC 3339
    stability_days: int = 0     # accrued stable days since the last expansion / rollback
    rollback_count: int = 0     # rollbacks since the last expansion or thaw (drives the freeze)
    total_rollbacks: int = 0    # lifetime count, for display
    frozen_expansion: bool = False
    hold: str | None = None     # why stable days are not accruing now (anti-windup), else None
    override: BoundsOverride | None = None
    history: list[BoundsAdjustment] = []

    @property
    def range(self) -> tuple[float, float]:
        return (self.min_value, self.max_value)

    @property
    def hard_span(self) -> float:
        return self.hard_max - self.hard_min


Update = tuple[ParameterBounds, list[BoundsAdjustment]]


class BoundsCheck(msgspec.Struct, frozen=True):
    """Result of :func:`clamp_or_reject`: what the Bounded step does with one proposed value."""

    parameter: str
    proposed: float
    value: float | None                     # the value to use (None when rejected)
    action: Literal["accepted", "clamped", "rejected"]
    reason: str
    range: tuple[float, float]              # the effective range used
    hard_range: tuple[float, float]
