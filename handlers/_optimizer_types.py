"""The optimizer's inputs and output: :class:`CycleOutcome`, :class:`OptimizerSettings`, :class:`Proposal`.

Private to :mod:`vvtv_autopilot.handlers.optimizer`, which re-exports every name here.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from .changes import ExpectedImpact, ParameterChange

__all__ = ["CycleOutcome", "OptimizerSettings", "Proposal"]


class CycleOutcome(msgspec.Struct, frozen=True):
    """What a past cycle tried and what its canary measured."""

    parameters: dict[str, float]          # the canary's values of the tuned parameters
    baseline: dict[str, float]            # the control's (live) values at the time
    lifts: dict[str, float]               # realized relative lift per KPI (canary vs control)
    lift_se: dict[str, float] = {}        # standard error of each lift, when known
    outcome: str = "deployed"             # deployed | rolled_back | inconclusive | ...
    cycle_id: str | None = None


class OptimizerSettings(msgspec.Struct, frozen=True):
    min_history: int = 4                  # usable outcomes before the GP is used
    max_history: int = 60                 # only the most recent outcomes are modelled
    explore_step_fraction: float = 0.1    # exploration step, as a fraction of the effective range
    n_candidates: int = 256               # Sobol points in the trust region (a power of 2)
    local_fraction: float = 0.35          # trust region half-width, fraction of the effective range
    tr_min_fraction: float = 0.05         # trust region restarts when it would shrink below this
    tr_max_fraction: float = 0.7          # ... and never grows beyond this
    tr_success_tolerance: int = 2         # deployed gains in a row that double it
    tr_failure_tolerance: int = 3         # rollbacks/losses in a row that halve it
    guardrail_max_lengthscale: float = 0.2  # longest length-scale a guardrail GP may fit (normalized units)
    beta: float = 2.0                     # guardrail LCB width (standard deviations)
    guardrail_buffer: float = 0.2         # fraction of each guardrail's margin the optimizer keeps in reserve
    kappa: float = 2.0                    # objective UCB width
    min_expected_gain: float = 0.0        # the winner's UCB must exceed this
    optimization_confidence: float = 0.6  # P(gain > 0) from which a change is "optimization"
    default_noise_sd: float = 0.01        # lift noise when an outcome carries no standard error
    lengthscales: tuple[float, ...] = (0.1, 0.2, 0.35, 0.6, 1.0)
    min_step_fraction: float = 1e-3       # smaller moves (of the hard span) are not changes
    expander: bool = True                 # nothing safe improves: try the most uncertain safe point (SafeOpt)
    # When the canary's MDE is known (``propose(min_detectable_gain=...)``):
    mde_fraction: float = 1.0             # the predicted score must reach this share of the MDE
    visible_explore_fraction: float = 0.9  # exploration steps go this share of the way to the range's edge
    max_explore_fraction: float = 0.1     # ... but never more than this share of the hard span (a wide range is no licence for a leap)
    visible_min_history: int = 3          # outcomes before the GP is used (instead of min_history)
    idle_patience: int = 2                # after this many cycles in a row without a canary, a candidate
                                          # whose upper bound (not mean) reaches the MDE may be tried
    # When the canary may be lengthened for the step (``propose(canary_may_lengthen=True)``):
    # the MDE is already the longest canary's, so idle tries below it wait longer (a week: they
    # mostly end inconclusive, but without them one lost canary can stall learning for good), and
    # the optimizer keeps more of each guardrail's margin in reserve, since a long canary has the
    # power to show a candidate near the margin non-inferior (the gate's margin is the last line
    # of defence).
    lengthened_idle_patience: int = 7
    lengthened_guardrail_buffer: float = 0.5


class Proposal(msgspec.Struct, frozen=True):
    changes: list[ParameterChange]
    parameters: dict[str, float]          # the full proposed point (all tuned parameters)
    expected_impact: ExpectedImpact | None
    method: Literal["exploration", "gp", "none"]
    reason: str
    seed: int
    candidates: int = 0
    safe_candidates: int = 0
