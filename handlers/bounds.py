"""Sliding bounds: a per-parameter trust region inside the configured hard limits.

Pure: every function takes the current :class:`ParameterBounds` (a frozen
struct) and the time ``at`` as an argument, and returns a *new* value plus the
list of :class:`BoundsAdjustment` records it made (each one is an
``evt.bounds`` and part of the cycle's record). Nothing here reads the clock.

The rules (README, "Sliding bounds and the optimizer"), exactly:

* **Start.** :func:`initial_bounds` centres a band of width
  ``2 * half_width_fraction * hard_span`` (default ``0.2 * hard_span``) on the
  current value; when the band would cross a hard limit it is shifted inside,
  keeping its width.
* **Stable days.** :func:`record_stable_day` is called once per stable day (a
  day without a rollback of this parameter). With ``anti_windup_enabled`` the
  day does *not* accrue (the counter holds, it is not reset) while the
  autopilot is paused, the parameter is pinned by an override, a bounds
  override is active, or the current value sits on a sliding bound (within
  ``1e-9 * hard_span``). An ``anti_windup`` adjustment is emitted when such a
  hold starts or its reason changes.
* **Expansion.** When ``stability_days`` reaches ``stability_threshold_days``
  (and expansion is not frozen), the range widens by
  ``expansion_rate_per_week * stability_threshold_days / 7 * hard_span``
  (5 % of the hard span per 7 stable days by default), half on each side; the
  part that would cross a hard limit goes to the other side; the width is
  capped at the hard span. ``stability_days`` and ``rollback_count`` then
  restart at 0.
* **Contraction.** :func:`contract_after_rollback` shrinks the range by the
  factor ``1 - contraction_rate_after_rollback`` around the anchor (the
  restored value, by default the last known-good value):
  ``lo' = a - (1-c)(a - lo)``, ``hi' = a + (1-c)(hi - a)``. The current value
  and the last known-good value become the anchor; ``stability_days`` restarts.
* **Freeze and recentre.** When ``rollback_count`` (rollbacks since the last
  expansion or thaw) reaches ``rollback_threshold``, expansion freezes and the
  (contracted) range is re-centred on the anchor, keeping its width, shifted
  inside the hard limits. Every further rollback while frozen contracts and
  re-centres again.
* **Thaw** (this project's rule, the seed names none): a frozen parameter thaws
  after ``stability_threshold_days * rollback_threshold`` accrued stable days
  (21 by default), or when an operator calls :func:`unfreeze`.
* **Bounds override** (``ctl.bounds-override``): temporary emergency bounds
  that may lie beyond the sliding range but never beyond the hard limits and
  must contain the current value. While active they are the effective range.
  When they expire (any call with ``at >= until``) or are cleared, the sliding
  range is widened just enough to contain the current value.

Invariants, after every call: ``hard_min <= min_value <= max_value <= hard_max``;
the effective range lies within the hard limits and contains ``current_value``;
with no active override the sliding range contains ``current_value``.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Literal

import msgspec

from ..schemas.config import ParameterSpec, SlidingBoundsConfig
from ..schemas.errors import BoundsError
from ..schemas.messages import parse_time, rfc3339

__all__ = [
    # data
    "HISTORY_LIMIT",
    "AdjustmentKind",
    "ClampMode",
    "BoundsError",
    "BoundsAdjustment",
    "BoundsOverride",
    "ParameterBounds",
    "Update",
    "BoundsCheck",
    # which range is in force
    "override_active",
    "effective_range",
    # checks
    "check_invariants",
    "validate_change",
    "clamp_or_reject",
    # rules
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


# === the data: ParameterBounds, its adjustment records and check results =======================


HISTORY_LIMIT = 100
"""How many adjustments a ParameterBounds keeps in its own ``history``."""

AdjustmentKind = Literal[
    "init", "expansion", "contraction", "anti_windup", "recentre", "thaw",
    "override", "override_expired", "override_cleared", "contain", "spec_change",
]
ClampMode = Literal["clamp", "reject"]


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


# === which range is in force, and the small arithmetic every rule shares =======================


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


# === the rules: construction, time passing, events =============================================


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


def hold_reason(b: ParameterBounds, cfg: SlidingBoundsConfig, at: datetime, paused: bool, pinned: bool) -> str | None:
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
    hold = hold_reason(b, cfg, at, paused, pinned)
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


# === checks: invariants, and whether (or how) a proposed value may be used =====================


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
