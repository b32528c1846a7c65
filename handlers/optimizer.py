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
  if none is safe, or the best one's bound does not exceed
  ``min_expected_gain``, there is no change.

The objective is the sum over non-critical KPIs of ``weight * sign * lift``
(sign +1 for ``increase``, -1 for ``decrease``); when every KPI is critical,
all weighted KPIs form the objective.
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime
from typing import Callable, Collection, Literal, Mapping, Sequence

import msgspec
import numpy as np
from scipy import linalg as _la
from scipy.special import ndtr
from scipy.stats import qmc

from ..schemas.config import KpiSpec
from .bounds import ParameterBounds, effective_range
from .changes import ChangeType, ExpectedImpact, KpiImpact, ParameterChange


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
    guardrail_max_lengthscale: float = 0.2  # longest length-scale a guardrail GP may fit (normalized units)
    beta: float = 2.0                     # guardrail LCB width (standard deviations)
    guardrail_buffer: float = 0.2         # fraction of each guardrail's margin the optimizer keeps in reserve
    kappa: float = 2.0                    # objective UCB width
    min_expected_gain: float = 0.0        # the winner's UCB must exceed this
    optimization_confidence: float = 0.6  # P(gain > 0) from which a change is "optimization"
    default_noise_sd: float = 0.01        # lift noise when an outcome carries no standard error
    lengthscales: tuple[float, ...] = (0.1, 0.2, 0.35, 0.6, 1.0)
    min_step_fraction: float = 1e-3       # smaller moves (of the hard span) are not changes


class Proposal(msgspec.Struct, frozen=True):
    changes: list[ParameterChange]
    parameters: dict[str, float]          # the full proposed point (all tuned parameters)
    expected_impact: ExpectedImpact | None
    method: Literal["exploration", "gp", "none"]
    reason: str
    seed: int
    candidates: int = 0
    safe_candidates: int = 0


def seed_from_cycle_id(cycle_id: str) -> int:
    """A 63-bit seed derived from the cycle id (stable across processes and versions)."""
    return int.from_bytes(hashlib.sha256(cycle_id.encode("utf-8")).digest()[:8], "big") >> 1


# --- the Gaussian process over lift observations -------------------------------------------


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


class _DiffGP:
    """GP on a latent g with observations y_i = g(a_i) - g(b_i) + noise."""

    def __init__(self, a: np.ndarray, b: np.ndarray, y: np.ndarray, noise_var: np.ndarray | None,
                 s: OptimizerSettings, min_scale: float = 0.0, max_lengthscale: float = math.inf):
        self.a, self.b, self.y = a, b, y
        n = len(y)
        scale = max(float(np.sqrt(np.mean(y * y))) if n else 0.0, 3.0 * s.default_noise_sd, min_scale, 1e-6)
        sf_grid = [scale * m for m in (1.0, 2.0, 4.0)]
        ells = [ell for ell in s.lengthscales if ell <= max_lengthscale] or [min(s.lengthscales)]
        noise_grid = [noise_var] if noise_var is not None else [
            np.full(n, (s.default_noise_sd * r) ** 2) for r in (0.3, 1.0, 3.0)]
        best = None
        for ell in ells:
            base = self._cov(ell)
            for sf in sf_grid:
                kyy = sf * sf * base
                for nv in noise_grid:
                    K = kyy + np.diag(nv + 1e-10 * sf * sf)
                    try:
                        L = _la.cholesky(K, lower=True)
                    except _la.LinAlgError:
                        continue
                    alpha = _la.cho_solve((L, True), y)
                    ll = -0.5 * float(y @ alpha) - float(np.log(np.diag(L)).sum())
                    if best is None or ll > best[0] + 1e-12:
                        best = (ll, ell, sf, L, alpha)
        assert best is not None
        _, self.ell, self.sf, self.L, self.alpha = best

    def _k(self, u: np.ndarray, v: np.ndarray, ell: float) -> np.ndarray:
        return np.exp(-_sqdist(u, v) / (2.0 * ell * ell))

    def _cov(self, ell: float) -> np.ndarray:
        a, b = self.a, self.b
        return self._k(a, a, ell) - self._k(a, b, ell) - self._k(b, a, ell) + self._k(b, b, ell)

    def _cross(self, x: np.ndarray) -> np.ndarray:
        """cov(g(x), y) for each row of x: (m, n)."""
        return self.sf ** 2 * (self._k(x, self.a, self.ell) - self._k(x, self.b, self.ell))

    def diff(self, x: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and sd of g(x) - g(ref) for each row of x."""
        r = self._cross(x) - self._cross(ref[None, :])
        mean = r @ self.alpha
        prior = 2.0 * self.sf ** 2 * (1.0 - np.exp(-_sqdist(x, ref[None, :])[:, 0] / (2.0 * self.ell ** 2)))
        v = _la.solve_triangular(self.L, r.T, lower=True)
        var = np.maximum(prior - (v * v).sum(0), 0.0)
        return mean, np.sqrt(var)


# --- proposal ---------------------------------------------------------------------------------


def _sign(spec: KpiSpec) -> float:
    return 1.0 if spec.direction == "increase" else -1.0


def _objective_weights(kpis: Mapping[str, KpiSpec]) -> dict[str, float]:
    weights = {k: s.weight for k, s in kpis.items() if not s.critical and s.weight > 0}
    if not weights:
        weights = {k: s.weight for k, s in kpis.items() if s.weight > 0}
    if not weights:
        weights = {k: 1.0 for k in kpis}
    return weights


def _quantize(value: float, lo: float, hi: float, span: float) -> float:
    q = 10.0 ** math.floor(math.log10(span * 1e-5))
    v = round(round(value / q) * q, 12)
    return float(min(max(v, lo), hi))


def _baseline(analysis: Mapping[str, Mapping[str, float]], kpi: str) -> float | None:
    entry = analysis.get(kpi) if analysis else None
    if not entry or not entry.get("n"):
        return None
    mean = entry.get("mean")
    return float(mean) if mean is not None and math.isfinite(mean) else None


def _impact(kpis: Mapping[str, KpiSpec], analysis, means: Mapping[str, float], sds: Mapping[str, float],
            beta: float, model: str) -> ExpectedImpact:
    weights = _objective_weights(kpis)
    out: dict[str, KpiImpact] = {}
    for name, spec in kpis.items():
        m, sd = float(means.get(name, 0.0)), float(sds.get(name, 0.0))
        base = _baseline(analysis, name)
        out[name] = KpiImpact(delta=m, uncertainty=sd, direction=spec.direction, critical=spec.critical,
                              lower=_sign(spec) * m - beta * sd, baseline=base,
                              absolute_delta=None if base is None else m * abs(base))
    obj = sum(w * _sign(kpis[k]) * float(means.get(k, 0.0)) for k, w in weights.items())
    obj_sd = math.sqrt(sum((w * float(sds.get(k, 0.0))) ** 2 for k, w in weights.items()))
    conf = float(ndtr(obj / obj_sd)) if obj_sd > 0 else (0.5 if obj == 0 else float(obj > 0))
    return ExpectedImpact(kpis=out, overall_confidence=conf, objective_delta=obj,
                          objective_uncertainty=obj_sd, model=model)


def propose(
    *,
    analysis: Mapping[str, Mapping[str, float]],
    history: Sequence[CycleOutcome],
    bounds: Mapping[str, ParameterBounds],
    kpis: Mapping[str, KpiSpec],
    seed: int,
    pinned: Collection[str] = (),
    current: Mapping[str, float] | None = None,
    reference: Mapping[str, float] | None = None,
    at: datetime | None = None,
    settings: OptimizerSettings = OptimizerSettings(),
) -> Proposal:
    """Propose the next change. ``bounds`` names the tunable parameters (their effective range
    at ``at`` is respected, hard limits normalize the inputs); ``current`` defaults to each
    bound's ``current_value``; ``reference`` (optional) is a second point the guardrails must
    stay non-inferior to (e.g. the last known-good card), besides the current point."""
    rng = np.random.default_rng(seed)
    names = sorted(bounds)
    cur = {n: float((current or {}).get(n, bounds[n].current_value)) for n in names}
    ranges = {n: effective_range(bounds[n], at) for n in names}
    free = [n for n in names if n not in set(pinned) and ranges[n][1] - ranges[n][0] > 0]
    if not free:
        return Proposal([], cur, None, "none", "no free parameter (all pinned or with an empty range)", seed)
    usable = [h for h in history if any(k in kpis for k in h.lifts)][-settings.max_history:]
    critical = [k for k, s in kpis.items() if s.critical]
    observed = {k: sum(1 for h in usable if k in h.lifts) for k in kpis}
    if len(usable) < settings.min_history or any(observed[k] == 0 for k in critical):
        return _explore(analysis, usable, bounds, kpis, seed, rng, free, cur, ranges, reference, settings)
    return _gp_proposal(analysis, usable, bounds, kpis, seed, rng, names, free, cur, ranges, reference, settings)


def _explore(analysis, usable, bounds, kpis, seed, rng, free, cur, ranges, reference, s: OptimizerSettings) -> Proposal:
    name = free[len(usable) % len(free)]
    lo, hi = ranges[name]
    x = min(max(cur[name], lo), hi)
    step = s.explore_step_fraction * (hi - lo)
    direction = 1.0 if rng.random() < 0.5 else -1.0
    # learn from the last outcome that moved this parameter: go the other way after a loss
    weights = _objective_weights(kpis)
    for h in reversed(usable):
        moved = h.parameters.get(name, h.baseline.get(name)) - h.baseline.get(name, cur[name])
        if abs(moved) > 0:
            gain = sum(w * _sign(kpis[k]) * h.lifts[k] for k, w in weights.items() if k in h.lifts)
            direction = math.copysign(1.0, moved) * (1.0 if gain > 0 and h.outcome == "deployed" else -1.0)
            break
    # never drift more than one step from the reference (or start of the history) per coordinate
    anchor = (reference or {}).get(name)
    if anchor is None and usable:
        anchor = usable[0].baseline.get(name)
    if anchor is not None and abs(x + direction * step - anchor) > step * (1 + 1e-9):
        direction = -direction
    room = {1.0: hi - x, -1.0: x - lo}
    if room[direction] < step:
        direction = -direction if room[-direction] >= step else max(room, key=lambda d: room[d])
        step = min(step, 0.5 * room[direction])
    span = bounds[name].hard_max - bounds[name].hard_min
    new = _quantize(x + direction * step, lo, hi, span)
    point = dict(cur)
    point[name] = new
    if abs(new - cur[name]) < s.min_step_fraction * span:
        return Proposal([], cur, None, "none", f"exploration step on {name} is too small (range {lo:.6g}..{hi:.6g})", seed)
    sds = {}
    for k in kpis:
        vals = [h.lifts[k] for h in usable if k in h.lifts]
        sds[k] = float(np.sqrt(np.mean(np.square(vals)))) if vals else s.default_noise_sd
        sds[k] = max(sds[k], s.default_noise_sd)
    impact = _impact(kpis, analysis, {}, sds, s.beta, "exploration")
    change = ParameterChange(name, cur[name], new, ChangeType.EXPLORATION, 0.5, impact)
    return Proposal([change], point, impact, "exploration",
                    f"exploration ({len(usable)} of {s.min_history} outcomes needed for the model): "
                    f"{name} {cur[name]:.6g} -> {new:.6g} ({'+' if direction > 0 else '-'}{step:.6g})",
                    seed, 1, 1)


def _gp_proposal(analysis, usable, bounds, kpis, seed, rng, names, free, cur, ranges, reference,
                 s: OptimizerSettings) -> Proposal:
    lo_h = np.array([bounds[n].hard_min for n in names])
    span = np.array([bounds[n].hard_max - bounds[n].hard_min for n in names])

    def norm(values: Mapping[str, float], fallback: Mapping[str, float]) -> np.ndarray:
        return (np.array([float(values.get(n, fallback[n])) for n in names]) - lo_h) / span

    c = norm(cur, cur)
    ref = norm(reference, cur) if reference else None
    gps: dict[str, _DiffGP] = {}
    for k in kpis:
        obs = [h for h in usable if k in h.lifts and math.isfinite(h.lifts[k])]
        if not obs:
            continue
        a = np.array([norm(h.parameters, {**cur, **h.baseline}) for h in obs])
        b = np.array([norm(h.baseline, cur) for h in obs])
        y = np.array([float(h.lifts[k]) for h in obs])
        have_se = all(k in h.lift_se and h.lift_se[k] > 0 for h in obs)
        nv = np.array([float(h.lift_se[k]) ** 2 for h in obs]) if have_se else None
        spec = kpis[k]
        # a guardrail's prior: it may move by its margin within a short length-scale (SafeOpt's
        # regularity assumption), so a flat history never makes far jumps look safe
        gps[k] = _DiffGP(a, b, y, nv, s, min_scale=spec.margin if spec.critical else 0.0,
                         max_lengthscale=s.guardrail_max_lengthscale if spec.critical else math.inf)

    # candidates: global Sobol over the effective box, and local Sobol around the current point
    free_idx = [names.index(n) for n in free]
    box_lo = np.array([(ranges[n][0] - bounds[n].hard_min) / (bounds[n].hard_max - bounds[n].hard_min) for n in free])
    box_hi = np.array([(ranges[n][1] - bounds[n].hard_min) / (bounds[n].hard_max - bounds[n].hard_min) for n in free])
    m = max(1, int(round(math.log2(max(2, s.n_candidates)))))
    half = s.local_fraction * (box_hi - box_lo)
    cf = c[free_idx]
    llo, lhi = np.maximum(cf - half, box_lo), np.minimum(cf + half, box_hi)
    loc = llo + qmc.Sobol(len(free), scramble=True, seed=rng).random_base2(m) * (lhi - llo)
    X = np.repeat(c[None, :], 1 << m, axis=0)
    X[:, free_idx] = loc
    # quantize in parameter units, then back to normalized
    for j, n in zip(free_idx, free):
        lo, hi = ranges[n]
        X[:, j] = [(_quantize(lo_h[j] + v * span[j], lo, hi, span[j]) - lo_h[j]) / span[j] for v in X[:, j]]
    moved = np.abs(X - c[None, :]).max(1) >= s.min_step_fraction
    X = X[moved]
    if len(X) == 0:
        return Proposal([], cur, None, "none", "no candidate differs from the current point", seed)

    means, sds = {}, {}
    safe = np.ones(len(X), dtype=bool)
    for k, spec in kpis.items():
        if k not in gps:
            means[k], sds[k] = np.zeros(len(X)), np.full(len(X), np.inf)
            continue
        mu, sd = gps[k].diff(X, c)
        means[k], sds[k] = mu, sd
        if spec.critical:
            sg = _sign(spec)
            allowed = -spec.margin * (1.0 - s.guardrail_buffer)
            safe &= sg * mu - s.beta * sd >= allowed
            if ref is not None:
                mr, sr = gps[k].diff(X, ref)
                safe &= sg * mr - s.beta * sr >= allowed
    weights = _objective_weights(kpis)
    obj = sum(w * _sign(kpis[k]) * means[k] for k, w in weights.items() if k in gps)
    obj_sd = np.sqrt(sum((w * sds[k]) ** 2 for k, w in weights.items() if k in gps))
    n_safe = int(safe.sum())
    if n_safe == 0:
        return Proposal([], cur, None, "none",
                        f"no safe candidate: every one of {len(X)} candidates has a guardrail lower bound below its margin",
                        seed, len(X), 0)
    # is the current point itself outside the safe set (against the reference)? then correct
    correcting = False
    if ref is not None:
        for k, spec in kpis.items():
            if spec.critical and k in gps:
                mr, sr = gps[k].diff(c[None, :], ref)
                if _sign(spec) * mr[0] < -spec.margin:
                    correcting = True
    if correcting:
        ucb = np.where(safe, obj, -np.inf)
    else:
        ucb = np.where(safe, obj + s.kappa * obj_sd, -np.inf)
    i = int(np.argmax(ucb))
    if not correcting and not ucb[i] > s.min_expected_gain:
        return Proposal([], cur, None, "none",
                        f"no safe candidate is expected to improve the objective (best bound {ucb[i]:.4g})",
                        seed, len(X), n_safe)
    impact = _impact(kpis, analysis, {k: float(means[k][i]) for k in gps}, {k: float(sds[k][i]) for k in gps},
                     s.beta, "gp")
    conf = impact.overall_confidence
    if correcting:
        ctype = ChangeType.CORRECTION
    elif impact.objective_delta > 0 and conf >= s.optimization_confidence:
        ctype = ChangeType.OPTIMIZATION
    else:
        ctype = ChangeType.EXPLORATION
    point = dict(cur)
    changes = []
    for j, n in zip(free_idx, free):
        value = float(lo_h[j] + X[i, j] * span[j])
        value = _quantize(value, ranges[n][0], ranges[n][1], span[j])
        if abs(value - cur[n]) >= s.min_step_fraction * span[j]:
            point[n] = value
            changes.append(ParameterChange(n, cur[n], value, ctype, conf, impact))
    return Proposal(changes, point, impact, "gp",
                    f"gp over {len(usable)} outcomes: {n_safe} of {len(X)} candidates safe; best objective "
                    f"{impact.objective_delta:+.4g} ± {impact.objective_uncertainty:.3g} (P>0 = {conf:.2f})",
                    seed, len(X), n_safe)


def propose_changes(**kwargs) -> list[ParameterChange]:
    """:func:`propose`, returning only the list of changes."""
    return propose(**kwargs).changes


# --- a synthetic world, for tests and the benchmark ------------------------------------------


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
    weights = _objective_weights(kpis)

    def levels(point: Mapping[str, float]) -> dict[str, float]:
        return surface((np.array([point[n] for n in names]) - lo_h) / span)

    def objective(lv: dict[str, float], base: dict[str, float]) -> float:
        return sum(w * _sign(kpis[k]) * (lv[k] - base[k]) / abs(base[k]) for k, w in weights.items())

    start = {n: float(start[n]) for n in names}
    base0 = levels(start)

    def violates(lv: dict[str, float]) -> bool:
        for k, spec in kpis.items():
            if spec.critical:
                tol = spec.margin if guardrail_tolerance is None else guardrail_tolerance
                if _sign(spec) * (lv[k] - base0[k]) / abs(base0[k]) < -tol:
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
            gain = sum(w * _sign(kpis[k]) * lifts[k] for k, w in weights.items())
            harmed = any(_sign(spec) * lifts[k] < -spec.margin for k, spec in kpis.items() if spec.critical)
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
