"""A synthetic world for the optimizer alone (no gate, no cycle), for tests and
``bench/bench_optimizer.py``: a known surface, canaries whose lifts are the surface's
differences plus noise, and the optimizer proposing against them."""

from __future__ import annotations

import math
from typing import Callable, Mapping

import msgspec
import numpy as np

from vvtv_autopilot.handlers.bounds import ParameterBounds, effective_range
from vvtv_autopilot.handlers.optimizer import CycleOutcome, OptimizerSettings, kpi_sign, objective_weights, propose
from vvtv_autopilot.schemas.config import KpiSpec

__all__ = ["SimulationResult", "smooth_surface", "simulate"]


class SimulationResult(msgspec.Struct, frozen=True):
    cycles_to_within: int | None          # first cycle after which the live gain is within tolerance
    violations: int                        # proposals whose true guardrail value broke the threshold
    optimum_gain: float
    final_gain: float
    gains: list[float]                     # live objective gain after each cycle
    proposals: list[dict[str, float]]
    deployed: int
    rolled_back: int
    no_change: int


def smooth_surface(u: np.ndarray) -> dict[str, float]:
    """A smooth 2-D world over normalized parameters ``u`` in [0, 1]^2 (absolute KPI levels):
    ``engagement`` (increase) peaks at u = (0.5, 0.7), +20 % over its floor; ``error_rate``
    (decrease, the guardrail) rises along u[0] as a logistic step of +50 % centred at 0.8, so it
    is +1 % at the optimum, +5 % at u[0] = 0.62 and +25 % at 0.8: an unsafe region beside the
    optimum that the optimizer must not step into."""
    d2 = (u[0] - 0.5) ** 2 + (u[1] - 0.7) ** 2
    return {"engagement": 1.0 + 0.2 * math.exp(-d2 / (2 * 0.3 ** 2)),
            "error_rate": 0.02 * (1.0 + 0.5 / (1.0 + math.exp(-(u[0] - 0.8) / 0.08)))}


def simulate(
    *,
    surface: Callable[[np.ndarray], dict[str, float]],
    bounds: Mapping[str, ParameterBounds],
    kpis: Mapping[str, KpiSpec],
    start: Mapping[str, float],
    cycles: int = 30,
    seed: int = 0,
    noise_sd: float = 0.01,
    guardrail_tolerance: float | None = None,
    within: float = 0.1,
    settings: OptimizerSettings = OptimizerSettings(),
    grid: int = 201,
) -> SimulationResult:
    """Run ``cycles`` daily cycles against ``surface`` (normalized by the hard limits): propose,
    measure the canary's relative lift per KPI with Gaussian noise ``noise_sd`` (also reported
    as the lift's standard error), deploy when the measured objective lift is positive and no
    guardrail is worse than its margin, else roll back. A proposal *violates* when its true
    guardrail value is worse than the start's by more than ``guardrail_tolerance`` (relative;
    default: the KPI's margin). The optimum is the best objective gain over a grid of the
    ranges among points that do not violate. Parameters other than two are not supported by
    the grid search (the benchmark surface is 2-D)."""
    names = sorted(bounds)
    assert len(names) == 2, "simulate() grids a 2-D surface"
    world = np.random.default_rng(seed + 1_000_003)
    lo_h = np.array([bounds[n].hard_min for n in names])
    span = np.array([bounds[n].hard_max - bounds[n].hard_min for n in names])
    weights = objective_weights(kpis)

    def levels(point: Mapping[str, float]) -> dict[str, float]:
        return surface((np.array([point[n] for n in names]) - lo_h) / span)

    def objective(lv: dict[str, float], base: dict[str, float]) -> float:
        return sum(w * kpi_sign(kpis[k]) * (lv[k] - base[k]) / abs(base[k]) for k, w in weights.items())

    start = {n: float(start[n]) for n in names}
    base0 = levels(start)

    def violates(lv: dict[str, float]) -> bool:
        for k, spec in kpis.items():
            if spec.critical:
                tol = spec.margin if guardrail_tolerance is None else guardrail_tolerance
                if kpi_sign(spec) * (lv[k] - base0[k]) / abs(base0[k]) < -tol:
                    return True
        return False

    r = [effective_range(bounds[n]) for n in names]
    g0, g1 = np.linspace(r[0][0], r[0][1], grid), np.linspace(r[1][0], r[1][1], grid)
    best = 0.0
    for x0 in g0:
        for x1 in g1:
            lv = levels({names[0]: x0, names[1]: x1})
            if not violates(lv):
                best = max(best, objective(lv, base0))

    live = dict(start)
    history: list[CycleOutcome] = []
    gains, proposals = [], []
    reached = None
    violations = deployed = rolled = none = 0
    for cycle in range(1, cycles + 1):
        prop = propose(analysis={}, history=history, bounds=bounds, kpis=kpis, seed=seed * 100_003 + cycle,
                       current=live, reference=start, settings=settings)
        if not prop.changes:
            none += 1
        else:
            point = {n: prop.parameters[n] for n in names}
            proposals.append(point)
            lv, lb = levels(point), levels(live)
            if violates(lv):
                violations += 1
            lifts = {k: (lv[k] - lb[k]) / abs(lb[k]) + float(world.normal(0, noise_sd)) for k in kpis}
            gain = sum(w * kpi_sign(kpis[k]) * lifts[k] for k, w in weights.items())
            harmed = any(kpi_sign(spec) * lifts[k] < -spec.margin for k, spec in kpis.items() if spec.critical)
            ok = gain > 0 and not harmed
            history.append(CycleOutcome(point, dict(live), lifts, {k: noise_sd for k in kpis},
                                        "deployed" if ok else "rolled_back", f"sim-{cycle}"))
            if ok:
                live = point
                deployed += 1
            else:
                rolled += 1
        g = objective(levels(live), base0)
        gains.append(g)
        if reached is None and best > 0 and g >= (1.0 - within) * best:
            reached = cycle
    return SimulationResult(reached, violations, best, gains[-1], gains, proposals, deployed, rolled, none)
