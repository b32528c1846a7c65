"""The sliding-bounds rules (documented in :mod:`vvtv_autopilot.handlers.bounds`): construction,
time passing (override expiry, stable days, anti-windup, expansion, thaw) and events
(deployment, rollback contraction and freeze, operator overrides).

Private to :mod:`vvtv_autopilot.handlers.bounds`, which re-exports the public functions.
"""

from __future__ import annotations

import math
from datetime import datetime

import msgspec

from ..schemas.config import ParameterSpec, SlidingBoundsConfig
from ..schemas.messages import rfc3339
from ._bounds_range import _adj, _commit, _eps, _fmt, _rng, _shift_inside, _ts, effective_range, override_active
from ._bounds_types import AdjustmentKind, BoundsAdjustment, BoundsError, BoundsOverride, ParameterBounds, Update

__all__ = [
    "initial_bounds",
    "reconcile_spec",
    "refresh",
    "expansion_amount",
    "record_stable_day",
    "mark_deployed",
    "contract_after_rollback",
    "bounds_override",
    "clear_bounds_override",
    "unfreeze",
]


# --- construction -----------------------------------------------------------------------


def initial_bounds(name: str, spec: ParameterSpec, current_value: float, *, at: datetime,
                   half_width_fraction: float = 0.1) -> Update:
    """Bounds for a parameter seen for the first time: a band of half-width
    ``half_width_fraction * hard_span`` around ``current_value``, shifted inside the hard limits."""
    if not math.isfinite(current_value):
        raise BoundsError(f"{name}: current value {current_value!r} is not a finite number")
    if not (spec.min <= current_value <= spec.max):
        raise BoundsError(f"{name}: current value {_fmt(current_value)} is outside the configured "
                          f"hard limits {_rng(spec.min, spec.max)}; fix the card or the configuration")
    if not (0 <= half_width_fraction <= 0.5):
        raise ValueError("half_width_fraction must be in [0, 0.5]")
    span = spec.max - spec.min
    h = half_width_fraction * span
    lo, hi = _shift_inside(current_value - h, current_value + h, spec.min, spec.max)
    b = ParameterBounds(name, lo, hi, float(current_value), float(spec.min), float(spec.max),
                        float(current_value), _ts(at))
    adj = _adj(b, "init", (spec.min, spec.max), (lo, hi),
               f"start band of ±{half_width_fraction:g} of the hard span around {_fmt(current_value)}",
               f"initial half_width_fraction={half_width_fraction:g}", at)
    return _commit(b, [adj], at)


def reconcile_spec(b: ParameterBounds, spec: ParameterSpec, *, at: datetime) -> Update:
    """Apply changed hard limits from the configuration: clip the ranges into them."""
    if (b.hard_min, b.hard_max) == (spec.min, spec.max):
        return b, []
    if not (spec.min <= b.current_value <= spec.max):
        raise BoundsError(f"{b.parameter_name}: current value {_fmt(b.current_value)} is outside the new "
                          f"hard limits {_rng(spec.min, spec.max)}")
    old = b.range
    lo = min(max(b.min_value, spec.min), b.current_value)
    hi = max(min(b.max_value, spec.max), b.current_value)
    override = b.override
    if override is not None:
        olo, ohi = max(override.min_value, spec.min), min(override.max_value, spec.max)
        override = (msgspec.structs.replace(override, min_value=olo, max_value=ohi)
                    if olo <= b.current_value <= ohi else None)
    lkg = min(max(b.last_known_good, spec.min), spec.max)
    nb = msgspec.structs.replace(b, hard_min=float(spec.min), hard_max=float(spec.max), override=override,
                                 last_known_good=lkg)
    adj = _adj(nb, "spec_change", old, (lo, hi),
               f"hard limits changed from {_rng(b.hard_min, b.hard_max)} to {_rng(spec.min, spec.max)}",
               "range within hard limits", at)
    return _commit(nb, [adj], at, min_value=lo, max_value=hi)


# --- time passing ------------------------------------------------------------------------


def refresh(b: ParameterBounds, *, at: datetime) -> Update:
    """Expire a bounds override whose ``until`` has passed; the sliding range is widened just
    enough to contain the current value. Every other function calls this first."""
    if b.override is None or override_active(b, at):
        return b, []
    return _drop_override(b, at, "override_expired", f"bounds override until {b.override.until} expired")


def _drop_override(b: ParameterBounds, at: datetime, kind: AdjustmentKind, reason: str) -> Update:
    assert b.override is not None
    old = (b.override.min_value, b.override.max_value)
    lo, hi = min(b.min_value, b.current_value), max(b.max_value, b.current_value)
    adj = _adj(b, kind, old, (lo, hi), reason + "; back to the sliding range (widened to contain the current value)"
               if (lo, hi) != b.range else reason + "; back to the sliding range",
               "range contains the current value", at)
    return _commit(b, [adj], at, override=None, min_value=lo, max_value=hi)


def _hold_reason(b: ParameterBounds, cfg: SlidingBoundsConfig, at: datetime, paused: bool, pinned: bool) -> str | None:
    if not cfg.anti_windup_enabled:
        return None
    if paused:
        return "autopilot paused"
    if pinned:
        return "parameter pinned by an override"
    if override_active(b, at):
        return "bounds override active"
    eps = _eps(b)
    if abs(b.current_value - b.min_value) <= eps:
        return f"current value sits on the minimum {_fmt(b.min_value)}"
    if abs(b.current_value - b.max_value) <= eps:
        return f"current value sits on the maximum {_fmt(b.max_value)}"
    return None


def expansion_amount(b: ParameterBounds, cfg: SlidingBoundsConfig) -> float:
    """How much one expansion adds to the width (before the hard-span cap)."""
    return cfg.expansion_rate_per_week * cfg.stability_threshold_days / 7.0 * (b.hard_max - b.hard_min)


def record_stable_day(b: ParameterBounds, cfg: SlidingBoundsConfig, *, at: datetime,
                      paused: bool = False, pinned: bool = False) -> Update:
    """One stable day passed (call once per day per parameter without a rollback).
    Accrues a stable day unless anti-windup holds it; expands or thaws when due."""
    b, adjs = refresh(b, at=at)
    hold = _hold_reason(b, cfg, at, paused, pinned)
    if hold is not None:
        new: list[BoundsAdjustment] = []
        if hold != b.hold:
            new = [_adj(b, "anti_windup", b.range, b.range, f"stable days held at {b.stability_days}: {hold}",
                        "anti_windup_enabled=true", at)]
        nb, _ = _commit(b, new, at, hold=hold)
        return nb, adjs + new
    days = b.stability_days + 1
    if b.frozen_expansion:
        thaw_after = cfg.stability_threshold_days * cfg.rollback_threshold
        if days >= thaw_after:
            adj = _adj(b, "thaw", b.range, b.range,
                       f"{days} stable days while frozen: expansion resumes",
                       f"thaw after stability_threshold_days*rollback_threshold={thaw_after} days", at)
            nb, _ = _commit(b, [adj], at, hold=None, stability_days=0, rollback_count=0, frozen_expansion=False)
            return nb, adjs + [adj]
        nb, _ = _commit(b, [], at, hold=None, stability_days=days)
        return nb, adjs
    if days < cfg.stability_threshold_days:
        nb, _ = _commit(b, [], at, hold=None, stability_days=days)
        return nb, adjs
    delta = expansion_amount(b, cfg)
    lo, hi = b.min_value, b.max_value
    if delta <= 0 or (lo <= b.hard_min and hi >= b.hard_max):
        nb, _ = _commit(b, [], at, hold=None, stability_days=0, rollback_count=0)
        return nb, adjs
    nlo, nhi = _shift_inside(lo - delta / 2, hi + delta / 2, b.hard_min, b.hard_max)
    adj = _adj(b, "expansion", (lo, hi), (nlo, nhi),
               f"{days} stable days: widened by {_fmt(delta)} ({cfg.expansion_rate_per_week:g}/week of the hard span)",
               f"expansion_rate_per_week={cfg.expansion_rate_per_week:g}, stability_threshold_days={cfg.stability_threshold_days}",
               at)
    nb, _ = _commit(b, [adj], at, hold=None, stability_days=0, rollback_count=0, min_value=nlo, max_value=nhi)
    return nb, adjs + [adj]


# --- events -------------------------------------------------------------------------------


def _contain(b: ParameterBounds, value: float, at: datetime, why: str) -> Update:
    """Widen the effective range minimally so it contains ``value`` (within hard limits)."""
    if override_active(b, at):
        assert b.override is not None
        o = b.override
        if o.min_value <= value <= o.max_value:
            return b, []
        nlo, nhi = min(o.min_value, value), max(o.max_value, value)
        adj = _adj(b, "contain", (o.min_value, o.max_value), (nlo, nhi), f"override range widened to contain {why}",
                   "range contains the current value", at)
        return _commit(b, [adj], at, override=msgspec.structs.replace(o, min_value=nlo, max_value=nhi))
    if b.min_value <= value <= b.max_value:
        return b, []
    nlo, nhi = min(b.min_value, value), max(b.max_value, value)
    adj = _adj(b, "contain", b.range, (nlo, nhi), f"sliding range widened to contain {why}",
               "range contains the current value", at)
    return _commit(b, [adj], at, min_value=nlo, max_value=nhi)


def _require_hard(b: ParameterBounds, value: float, what: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and b.hard_min <= value <= b.hard_max):
        raise BoundsError(f"{b.parameter_name}: {what} {_fmt(value)} is outside the hard limits "
                          f"{_rng(b.hard_min, b.hard_max)}")
    return value


def mark_deployed(b: ParameterBounds, value: float, *, at: datetime, known_good: bool = True) -> Update:
    """``value`` is now live (full deployment, or an operator's pin). With ``known_good`` it also
    becomes the last known-good value. A value outside the effective range (an operator's choice)
    widens that range minimally; a value outside the hard limits raises :class:`BoundsError`."""
    value = _require_hard(b, value, "deployed value")
    b, adjs = refresh(b, at=at)
    b = msgspec.structs.replace(b, current_value=value,
                                last_known_good=value if known_good else b.last_known_good)
    b, more = _contain(b, value, at, f"the deployed value {_fmt(value)}")
    nb, _ = _commit(b, [], at)
    return nb, adjs + more


def contract_after_rollback(b: ParameterBounds, cfg: SlidingBoundsConfig, *, at: datetime,
                            restored_value: float | None = None, reason: str = "rollback") -> Update:
    """A rollback involving this parameter: contract around the anchor (``restored_value``, by
    default the last known-good value), which becomes current and known-good; after
    ``rollback_threshold`` rollbacks, freeze expansion and re-centre on the anchor."""
    b, adjs = refresh(b, at=at)
    anchor = _require_hard(b, b.last_known_good if restored_value is None else restored_value, "restored value")
    b = msgspec.structs.replace(b, current_value=anchor, last_known_good=anchor)
    # the anchor must lie in the sliding range before contracting around it
    if not (b.min_value <= anchor <= b.max_value):
        old = b.range
        lo, hi = min(b.min_value, anchor), max(b.max_value, anchor)
        adj = _adj(b, "contain", old, (lo, hi), f"sliding range widened to contain the restored value {_fmt(anchor)}",
                   "range contains the current value", at)
        b, _ = _commit(b, [adj], at, min_value=lo, max_value=hi)
        adjs = adjs + [adj]
    c = cfg.contraction_rate_after_rollback
    lo, hi = b.min_value, b.max_value
    nlo = anchor - (1.0 - c) * (anchor - lo)
    nhi = anchor + (1.0 - c) * (hi - anchor)
    nlo, nhi = min(nlo, anchor), max(nhi, anchor)
    count = b.rollback_count + 1
    contraction = _adj(b, "contraction", (lo, hi), (nlo, nhi),
                       f"{reason}: contracted by {c:g} around {_fmt(anchor)} (rollback {count} of {cfg.rollback_threshold})",
                       f"contraction_rate_after_rollback={c:g}", at)
    new_adjs = [contraction]
    frozen = b.frozen_expansion
    if count >= cfg.rollback_threshold:
        width = nhi - nlo
        rlo, rhi = _shift_inside(anchor - width / 2, anchor + width / 2, b.hard_min, b.hard_max)
        rlo, rhi = min(rlo, anchor), max(rhi, anchor)
        new_adjs.append(_adj(b, "recentre", (nlo, nhi), (rlo, rhi),
                             f"{count} rollbacks: expansion frozen, range re-centred on the last known-good value {_fmt(anchor)}",
                             f"rollback_threshold={cfg.rollback_threshold}", at))
        nlo, nhi, frozen = rlo, rhi, True
    b, _ = _commit(b, new_adjs, at, min_value=nlo, max_value=nhi, stability_days=0, rollback_count=count,
                   total_rollbacks=b.total_rollbacks + 1, frozen_expansion=frozen)
    # an active override must still contain the (restored) current value
    b, more = _contain(b, anchor, at, f"the restored value {_fmt(anchor)}")
    return b, adjs + new_adjs + more


def bounds_override(b: ParameterBounds, *, min_value: float, max_value: float, until: datetime,
                    at: datetime, actor: str, reason: str | None = None) -> Update:
    """``ctl.bounds-override``: temporary emergency bounds until ``until``. They may lie beyond
    the sliding range but must lie within the hard limits and contain the current value;
    otherwise :class:`BoundsError` says which rule is broken."""
    name = b.parameter_name
    b, adjs = refresh(b, at=at)
    if not (math.isfinite(min_value) and math.isfinite(max_value)) or min_value >= max_value:
        raise BoundsError(f"{name}: override min ({min_value}) must be a number below max ({max_value})")
    if min_value < b.hard_min or max_value > b.hard_max:
        raise BoundsError(f"{name}: override {_rng(min_value, max_value)} must lie within the hard limits "
                          f"{_rng(b.hard_min, b.hard_max)}")
    if not (min_value <= b.current_value <= max_value):
        raise BoundsError(f"{name}: override {_rng(min_value, max_value)} must contain the current value "
                          f"{_fmt(b.current_value)} (use `override` or `propose` to move the value first)")
    if until <= at:
        raise BoundsError(f"{name}: override must end in the future (until {rfc3339(until)})")
    old = effective_range(b, at)
    ov = BoundsOverride(float(min_value), float(max_value), _ts(until), _ts(at), actor, reason)
    adj = _adj(b, "override", old, (min_value, max_value),
               f"bounds override by {actor} until {ov.until}" + (f": {reason}" if reason else ""),
               "operator bounds-override (within hard limits, contains the current value)", at)
    nb, _ = _commit(b, [adj], at, override=ov)
    return nb, adjs + [adj]


def clear_bounds_override(b: ParameterBounds, *, at: datetime, actor: str) -> Update:
    """End a bounds override early (no-op when none is active)."""
    b, adjs = refresh(b, at=at)
    if b.override is None:
        return b, adjs
    nb, more = _drop_override(b, at, "override_cleared", f"bounds override cleared by {actor}")
    return nb, adjs + more


def unfreeze(b: ParameterBounds, *, at: datetime, actor: str) -> Update:
    """An operator thaws a frozen parameter: expansion resumes, the rollback counter restarts."""
    b, adjs = refresh(b, at=at)
    if not b.frozen_expansion:
        return b, adjs
    adj = _adj(b, "thaw", b.range, b.range, f"expansion unfrozen by {actor}", "operator unfreeze", at)
    nb, _ = _commit(b, [adj], at, frozen_expansion=False, rollback_count=0, stability_days=0)
    return nb, adjs + [adj]
