"""The parameter optimizer: propose the next change, safely (SafeOpt-style).

Pure and deterministic given ``seed``: inputs are the metrics analysis, the
outcomes of past cycles, the bounds, the KPI specs and the pinned set; the
output is a :class:`Proposal` (``ParameterChange`` list + the prediction).

Two modes:

* **exploration** (fewer than ``min_history`` usable outcomes): one free
  parameter per cycle (round-robin over the sorted names) moves by
  ``explore_step_fraction`` of its effective range, away from the bound it is
  closer to when the step would not fit, and never onto a bound.
* **gp**: one Gaussian process per KPI over the parameters (normalized by the
  hard limits) with an RBF kernel, fitted to the *realized lifts* of past
  canaries. A canary's lift compares the canary's parameters with the
  control's, so each observation is a difference ``g(canary) - g(control)`` of
  the latent KPI surface; the GP conditions on those differences exactly
  (linear functionals of a GP). Hyperparameters (length-scale, signal scale,
  noise when the outcome gives no standard error) are chosen by maximum
  marginal likelihood on a small fixed grid. Candidates are a scrambled Sobol
  sequence over the effective range (global) plus one around the current point
  (local), pinned parameters held fixed. A candidate is *safe* when, for every
  critical KPI, the lower confidence bound (mean - ``beta`` sd) of its lift in
  the good direction is ``>= -margin`` against the current point and against
  ``reference`` (when given). Among safe candidates the one with the highest
  upper confidence bound (mean + ``kappa`` sd) of the weighted objective wins;
  if none is safe there is no change. When no safe candidate's *mean* exceeds
  ``min_expected_gain`` (the UCB winner would be a likely loss), a goal-directed
  expansion step measures instead where the measurement grows the safe set (against
  the current point and ``reference``) to a candidate whose bound beats the best safe
  one: the guardrails' sds after one more canary need no value, so the look-ahead is
  exact in the variance with the means kept (without it the optimizer stalls where a
  noisy, pessimistic estimate of a guardrail against ``reference`` fences it in). When
  no safe candidate's bound exceeds ``min_expected_gain`` and no measurement expands
  the safe set so, SafeOpt's *expander* step proposes the safe candidate
  whose outcome is least known (objective sd plus each guardrail's sd over its
  margin), so the safe set keeps growing instead of stalling
  (``expander=False``: no change). The local box is a TuRBO trust region
  replayed from the history: it doubles after ``tr_success_tolerance``
  deployed gains in a row, halves after ``tr_failure_tolerance`` rollbacks or
  losses in a row, and restarts at ``local_fraction`` below
  ``tr_min_fraction``.

The objective is the sum over non-critical KPIs of ``weight * sign * lift``
(sign +1 for ``increase``, -1 for ``decrease``); when every KPI is critical,
all weighted KPIs form the objective.
"""

from __future__ import annotations

import hashlib

from ._optimizer_proposal import kpi_sign, objective_weights, propose
from ._optimizer_types import CycleOutcome, OptimizerSettings, Proposal
from .changes import ParameterChange

__all__ = [
    "CycleOutcome",
    "OptimizerSettings",
    "Proposal",
    "seed_from_cycle_id",
    "propose",
    "propose_changes",
    "objective_weights",
    "kpi_sign",
    "predicted_score_gain",
]


def seed_from_cycle_id(cycle_id: str) -> int:
    """A 63-bit seed derived from the cycle id (stable across processes and versions)."""
    return int.from_bytes(hashlib.sha256(cycle_id.encode("utf-8")).digest()[:8], "big") >> 1


def predicted_score_gain(proposal: Proposal, kpis) -> float | None:
    """The improvement score the proposal predicts (the gate's weighted mean of the success
    metrics' relative lifts, good direction), or None when it predicts none (exploration,
    no model). The canary is planned for it (:func:`..power.plan_canary`)."""
    impact = proposal.expected_impact
    if proposal.method != "gp" or impact is None:
        return None
    wsum = sum(objective_weights(kpis).values())
    return float(impact.objective_delta) / wsum if wsum > 0 else None


def propose_changes(**kwargs) -> list[ParameterChange]:
    """:func:`propose`, returning only the list of changes."""
    return propose(**kwargs).changes
