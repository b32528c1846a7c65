"""Which range is in force, and the small arithmetic every bounds rule shares.

Private to :mod:`vvtv_autopilot.handlers.bounds`: :func:`override_active` and
:func:`effective_range` are public there; the underscore helpers (tolerance,
formatting, adjustment records, committing an update) serve the sibling modules.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from ..schemas.messages import parse_time, rfc3339
from ._bounds_types import HISTORY_LIMIT, AdjustmentKind, BoundsAdjustment, ParameterBounds, Update

__all__ = ["effective_range", "override_active"]

_REL_EPS = 1e-9


# --- helpers ---------------------------------------------------------------------------


def _ts(at: datetime) -> str:
    if at.tzinfo is None:
        raise ValueError("`at` must be timezone-aware (UTC)")
    return rfc3339(at)


def _eps(b: ParameterBounds) -> float:
    return _REL_EPS * (b.hard_max - b.hard_min)


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _rng(lo: float, hi: float) -> str:
    return f"[{_fmt(lo)}, {_fmt(hi)}]"


def _adj(b: ParameterBounds, kind: AdjustmentKind, old: tuple[float, float], new: tuple[float, float],
         reason: str, rule: str, at: datetime) -> BoundsAdjustment:
    return BoundsAdjustment(b.parameter_name, kind, (float(old[0]), float(old[1])),
                            (float(new[0]), float(new[1])), reason, rule, _ts(at))


def _commit(b: ParameterBounds, adjs: list[BoundsAdjustment], at: datetime, **changes) -> Update:
    # Rounding (e.g. 1.0 - (1.0 - 3e-214) == 0.0) must never carry a range past the hard limits.
    if "min_value" in changes:
        changes["min_value"] = min(max(changes["min_value"], b.hard_min), b.hard_max)
    if "max_value" in changes:
        changes["max_value"] = min(max(changes["max_value"], b.hard_min), b.hard_max)
    history = b.history
    if adjs:
        history = (list(history) + adjs)[-HISTORY_LIMIT:]
    return msgspec.structs.replace(b, last_updated=_ts(at), history=history, **changes), adjs


def _shift_inside(lo: float, hi: float, hard_min: float, hard_max: float) -> tuple[float, float]:
    """Shift [lo, hi] inside the hard limits keeping its width (width <= hard span)."""
    if lo < hard_min:
        hi += hard_min - lo
        lo = hard_min
    if hi > hard_max:
        lo -= hi - hard_max
        hi = hard_max
    return max(lo, hard_min), min(hi, hard_max)


def override_active(b: ParameterBounds, at: datetime | None = None) -> bool:
    """Whether a bounds override is in force at ``at`` (None: ignore expiry)."""
    if b.override is None:
        return False
    return at is None or parse_time(b.override.until) > at


def effective_range(b: ParameterBounds, at: datetime | None = None) -> tuple[float, float]:
    """The range proposals must respect: the override's when active, else the sliding range."""
    if override_active(b, at):
        assert b.override is not None
        return (b.override.min_value, b.override.max_value)
    return (b.min_value, b.max_value)
