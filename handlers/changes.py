"""Proposed parameter changes and their expected impact (seed: ``ParameterChange``,
``ChangeType``, ``ExpectedImpact``), as frozen, JSON-encodable msgspec types.

The seed's ``ExpectedImpact`` names three KPIs as fixed fields; here the impact
is a mapping keyed by the configured KPI names, each a predicted relative lift
(``delta``, the same unit as the canary gate's lift) with its standard
deviation (``uncertainty``), plus ``overall_confidence`` as in the seed.
The drift monitor compares these predictions with the realized lifts.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec


class ChangeType(str, enum.Enum):
    """Why a parameter changes (encoded as its lowercase value)."""

    OPTIMIZATION = "optimization"   # the model expects an improvement
    CORRECTION = "correction"       # moving back toward a guardrail / known-good value
    EXPLORATION = "exploration"     # learning: small step, or high-uncertainty candidate
    ROLLBACK = "rollback"           # restoring a previous version


class KpiImpact(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Predicted relative lift of one KPI (proposal vs the current live value)."""

    delta: float                    # predicted relative lift, e.g. 0.02 = +2 %
    uncertainty: float              # standard deviation of that prediction (>= 0)
    direction: str = "increase"     # the KPI's good direction (from its KpiSpec)
    critical: bool = False          # a guardrail KPI
    lower: float | None = None      # lower confidence bound of the lift in the good direction
    baseline: float | None = None   # current mean of the KPI from the analysis, when known
    absolute_delta: float | None = None  # delta * |baseline|, when the baseline is known


class ExpectedImpact(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Predicted effect of a proposal on every configured KPI."""

    kpis: dict[str, KpiImpact]
    overall_confidence: float       # P(weighted objective lift > 0) under the model, in [0, 1]
    objective_delta: float = 0.0    # predicted weighted, direction-signed objective lift
    objective_uncertainty: float = 0.0
    model: str = "none"             # "gp", "exploration", "manual"


class ParameterChange(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One parameter's change, as the seed defines it."""

    parameter_name: str
    old_value: Any
    new_value: Any
    change_type: ChangeType
    confidence: float               # in [0, 1]
    expected_impact: ExpectedImpact


def no_impact(model: str = "none") -> ExpectedImpact:
    """An impact with no prediction (e.g. an operator's ``ctl.propose``)."""
    return ExpectedImpact(kpis={}, overall_confidence=0.0, model=model)


def manual_change(parameter_name: str, old_value: Any, new_value: Any,
                  change_type: ChangeType = ChangeType.CORRECTION) -> ParameterChange:
    """A change given by an operator (``ctl.propose``) or a rollback, with no model prediction."""
    return ParameterChange(parameter_name, old_value, new_value, change_type, 0.0, no_impact("manual"))
