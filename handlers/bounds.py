"""Sliding bounds: a per-parameter trust region inside the configured hard limits.

Pure: every function takes the current :class:`ParameterBounds` (a frozen
struct) and the time ``at`` as an argument, and returns a *new* value plus the
list of :class:`BoundsAdjustment` records it made (each one is an
``evt.bounds`` and part of the cycle's record). Nothing here reads the clock.

The rules (seed §2, DESIGN §6), exactly:

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

from ._bounds_checks import check_invariants, clamp_or_reject, validate_change
from ._bounds_range import effective_range, override_active
from ._bounds_rules import (
    _hold_reason,  # noqa: F401  (tests check the anti-windup reasons directly)
    bounds_override,
    clear_bounds_override,
    contract_after_rollback,
    expansion_amount,
    initial_bounds,
    mark_deployed,
    reconcile_spec,
    record_stable_day,
    refresh,
    unfreeze,
)
from ._bounds_types import (
    HISTORY_LIMIT,
    AdjustmentKind,
    BoundsAdjustment,
    BoundsCheck,
    BoundsError,
    BoundsOverride,
    ClampMode,
    ParameterBounds,
    Update,
)

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
