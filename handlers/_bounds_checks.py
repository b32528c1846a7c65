"""Checks against the bounds: invariants, and whether (or how) a proposed value may be used.

Private to :mod:`vvtv_autopilot.handlers.bounds`, which re-exports every name here.
"""

from __future__ import annotations

import math
from datetime import datetime

from ._bounds_range import _eps, _fmt, _rng, effective_range, override_active
from ._bounds_rules import refresh
from ._bounds_types import BoundsCheck, ClampMode, ParameterBounds

__all__ = ["check_invariants", "validate_change", "clamp_or_reject"]


def check_invariants(b: ParameterBounds, at: datetime | None = None) -> list[str]:
    """Every broken invariant, as text (empty when all hold). An override that has
    run out by ``at`` is expired first: stored bounds expire it lazily."""
    if at is not None:
        b = refresh(b, at=at)[0]
    eps = _eps(b)
    problems = []
    if not (b.hard_min < b.hard_max):
        problems.append("hard limits inverted")
    if not (b.min_value <= b.max_value):
        problems.append(f"sliding range inverted {_rng(b.min_value, b.max_value)}")
    if b.min_value < b.hard_min - eps or b.max_value > b.hard_max + eps:
        problems.append(f"sliding range {_rng(*b.range)} leaves hard limits {_rng(b.hard_min, b.hard_max)}")
    lo, hi = effective_range(b, at)
    if lo > hi or lo < b.hard_min - eps or hi > b.hard_max + eps:
        problems.append(f"effective range {_rng(lo, hi)} invalid for hard limits {_rng(b.hard_min, b.hard_max)}")
    if not (lo - eps <= b.current_value <= hi + eps):
        problems.append(f"current value {_fmt(b.current_value)} outside effective range {_rng(lo, hi)}")
    if not override_active(b, at) and not (b.min_value - eps <= b.current_value <= b.max_value + eps):
        problems.append(f"current value {_fmt(b.current_value)} outside sliding range {_rng(*b.range)}")
    return problems


def validate_change(b: ParameterBounds, value: float, *, at: datetime | None = None) -> tuple[bool, str]:
    """The seed's ``validate_change``: is ``value`` inside the effective range (and hard limits)?
    The reason names the bound that was broken."""
    name = b.parameter_name
    try:
        value = float(value)
    except (TypeError, ValueError):
        return False, f"{name}: value {value!r} is not a number"
    if not math.isfinite(value):
        return False, f"{name}: value {value!r} is not a finite number"
    eps = _eps(b)
    lo, hi = effective_range(b, at)
    which = "override" if override_active(b, at) else "sliding"
    hard = _rng(b.hard_min, b.hard_max)
    if value < b.hard_min - eps:
        return False, f"{name}={_fmt(value)} is below the hard minimum {_fmt(b.hard_min)} (hard {hard})"
    if value > b.hard_max + eps:
        return False, f"{name}={_fmt(value)} is above the hard maximum {_fmt(b.hard_max)} (hard {hard})"
    if value < lo - eps:
        return False, f"{name}={_fmt(value)} is below the {which} minimum {_fmt(lo)} (range {_rng(lo, hi)}, hard {hard})"
    if value > hi + eps:
        return False, f"{name}={_fmt(value)} is above the {which} maximum {_fmt(hi)} (range {_rng(lo, hi)}, hard {hard})"
    return True, f"{name}={_fmt(value)} is within the {which} range {_rng(lo, hi)}"


def clamp_or_reject(b: ParameterBounds, proposed: float, mode: ClampMode, *,
                    at: datetime | None = None) -> BoundsCheck:
    """What the Bounded step does with one proposed value: accept it when in range, else clamp
    it to the nearest bound (``mode="clamp"``, for optimizer proposals) or reject it
    (``mode="reject"``, for ``ctl.propose``). Non-finite values are always rejected."""
    lo, hi = effective_range(b, at)
    hard = (b.hard_min, b.hard_max)
    ok, reason = validate_change(b, proposed, at=at)
    if ok:
        return BoundsCheck(b.parameter_name, float(proposed), float(min(max(proposed, lo), hi)), "accepted",
                           reason, (lo, hi), hard)
    try:
        finite = math.isfinite(float(proposed))
    except (TypeError, ValueError):
        finite = False
    if mode == "reject" or not finite:
        return BoundsCheck(b.parameter_name, float(proposed) if finite else math.nan, None, "rejected",
                           reason, (lo, hi), hard)
    value = min(max(float(proposed), lo), hi)
    return BoundsCheck(b.parameter_name, float(proposed), value, "clamped",
                       f"{reason}; clamped to {_fmt(value)}", (lo, hi), hard)
