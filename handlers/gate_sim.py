"""Simulated canaries for the gate's Monte Carlo tests and benchmark.

Pure given a seeded ``numpy.random.Generator``. A canary is simulated directly
on sufficient statistics: per look, each arm receives a batch whose size is
binomial (the traffic split), whose mean is normal and whose M2 is
``sigma^2 chi2(m - 1)`` -- the exact joint law of a normal sample's mean and
M2 -- so no raw sample is drawn. The batches are then merged cumulatively
(Chan et al.), giving the arm's statistics at every look.
"""

from __future__ import annotations

from typing import Callable, Mapping

from dataclasses import dataclass

import numpy as np

from ..schemas.config import KpiSpec
from .gate import GateDecision, evaluate_gate
from .stats import RunningStats

Z_975, Z_80 = 1.959963984540054, 0.8416212335729143


@dataclass(frozen=True)
class ArmPaths:
    """Cumulative statistics of one arm: arrays of shape (paths, looks)."""
    n: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    def at(self, path: int, look: int) -> RunningStats:
        return RunningStats(int(self.n[path, look]), float(self.mean[path, look]), float(self.m2[path, look]))


def fixed_horizon_mde(total: float, traffic_fraction: float, cv: float) -> float:
    """Minimum detectable relative effect of a two-sided alpha=0.05 test with
    power 0.8 on ``total`` units split ``traffic_fraction`` to the canary."""
    return (Z_975 + Z_80) * cv * float(np.sqrt(1.0 / (total * (1 - traffic_fraction)) + 1.0 / (total * traffic_fraction)))


def _cumulate(m: np.ndarray, bmean: np.ndarray, bm2: np.ndarray) -> ArmPaths:
    n = np.cumsum(m, axis=1)
    s1 = np.cumsum(m * bmean, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, s1 / np.maximum(n, 1), 0.0)
    # Chan's merge, unrolled over looks: M2 = sum M2_i + sum m_i (mean_i - mean)^2
    s2 = np.cumsum(bm2 + m * bmean * bmean, axis=1)
    m2 = np.maximum(s2 - n * mean * mean, 0.0)
    return ArmPaths(n.astype(np.int64), mean, m2)


def _batches(rng: np.random.Generator, m: np.ndarray, mu: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    safe = np.maximum(m, 1)
    bmean = np.where(m > 0, rng.normal(mu, sigma / np.sqrt(safe)), 0.0)
    bm2 = np.where(m > 1, sigma * sigma * rng.chisquare(np.maximum(m - 1, 1)), 0.0)
    return bmean, bm2


def simulate_arms(
    rng: np.random.Generator, *, paths: int, looks: int, per_look: int, traffic_fraction: float,
    mu: float = 1.0, sigma: float = 1.0, lift: float = 0.0, canary_share: float | None = None,
) -> tuple[ArmPaths, ArmPaths]:
    """Control and canary arms of one KPI; the canary's mean is ``mu * (1 + lift)``.
    ``canary_share`` (default ``traffic_fraction``) is the real split: set it
    differently to inject a sample-ratio mismatch."""
    share = traffic_fraction if canary_share is None else canary_share
    mb = rng.binomial(per_look, share, size=(paths, looks))
    ma = per_look - mb
    a = _cumulate(ma, *_batches(rng, ma, mu, sigma))
    b = _cumulate(mb, *_batches(rng, mb, mu * (1.0 + lift), sigma))
    return a, b


Judge = Callable[..., GateDecision]


def run_paths(
    kpis: Mapping[str, KpiSpec], arms: Mapping[str, tuple[ArmPaths, ArmPaths]], *,
    confidence: float = 0.95, min_samples: int = 30, traffic_fraction: float = 0.2,
    judge: Judge = evaluate_gate, **kw,
) -> tuple[list[str], np.ndarray, list[str]]:
    """Run the gate at every look of every path until it decides (the last look is
    ``final``; ``kw`` goes to the judge, e.g. ``sequential_alpha_share``).
    Returns the recommendations, the stopping look (1-based) and the reasons."""
    first = next(iter(arms.values()))[0]
    paths, looks = first.n.shape
    recs: list[str] = []
    stops = np.zeros(paths, dtype=np.int64)
    reasons: list[str] = []
    extra = {"traffic_fraction": traffic_fraction} if judge is evaluate_gate else {}
    for p in range(paths):
        for t in range(looks):
            final = t == looks - 1
            if judge is evaluate_gate:
                extra["elapsed_fraction"] = (t + 1) / looks
            elif not final:
                continue
            ctl = {k: a.at(p, t) for k, (a, _) in arms.items()}
            can = {k: b.at(p, t) for k, (_, b) in arms.items()}
            d = judge(kpis, ctl, can, confidence=confidence, min_samples=min_samples, final=final, **extra, **kw)
            if d.recommendation != "continue":
                recs.append(d.recommendation)
                reasons.append(d.reason)
                stops[p] = t + 1
                break
    return recs, stops, reasons


def _cumulate_counts(m: np.ndarray, k: np.ndarray) -> ArmPaths:
    """Cumulative statistics of 0/1 samples from per-look unit and event counts."""
    n = np.cumsum(m, axis=1)
    s = np.cumsum(k, axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, s / np.maximum(n, 1), 0.0)
    return ArmPaths(n.astype(np.int64), mean, np.maximum(s - n * mean * mean, 0.0))


def simulate_bernoulli_arms(
    rng: np.random.Generator, *, paths: int, looks: int, per_look: int, traffic_fraction: float,
    p: float, lift: float = 0.0,
) -> tuple[ArmPaths, ArmPaths]:
    """A per-unit Bernoulli KPI (e.g. ``error_rate``): the control's rate is ``p``,
    the canary's ``p * (1 + lift)``; exact sufficient statistics from counts."""
    mb = rng.binomial(per_look, traffic_fraction, size=(paths, looks))
    ma = per_look - mb
    a = _cumulate_counts(ma, rng.binomial(ma, p))
    b = _cumulate_counts(mb, rng.binomial(mb, min(max(p * (1.0 + lift), 0.0), 1.0)))
    return a, b


def simulate_lognormal_arms(
    rng: np.random.Generator, *, paths: int, looks: int, per_look: int, traffic_fraction: float,
    sigma: float = 0.8, lift: float = 0.0,
) -> tuple[ArmPaths, ArmPaths]:
    """A per-unit lognormal KPI (e.g. ``selection_entropy``) with log-sd ``sigma``
    and mean 1; the canary's values are multiplied by ``1 + lift`` (its mean and
    sd move together). Raw samples are drawn one look at a time."""
    shape = (paths, looks)
    out = {arm: (np.zeros(shape, np.int64), np.zeros(shape), np.zeros(shape)) for arm in ("a", "b")}
    for t in range(looks):
        x = rng.lognormal(-sigma * sigma / 2.0, sigma, (paths, per_look))
        can = rng.random((paths, per_look)) < traffic_fraction
        x = np.where(can, x * (1.0 + lift), x)
        for arm, mask in (("a", ~can), ("b", can)):
            m = mask.sum(axis=1)
            mean = np.where(m > 0, np.where(mask, x, 0.0).sum(axis=1) / np.maximum(m, 1), 0.0)
            dev = np.where(mask, x - mean[:, None], 0.0)
            out[arm][0][:, t], out[arm][1][:, t], out[arm][2][:, t] = m, mean, (dev * dev).sum(axis=1)
    return _cumulate(*out["a"]), _cumulate(*out["b"])


def noninferiority_shown(
    kpis: Mapping[str, KpiSpec], arms: Mapping[str, tuple[ArmPaths, ArmPaths]], kpi: str, *,
    confidence: float = 0.95, min_samples: int = 30, traffic_fraction: float = 0.2, **kw,
) -> np.ndarray:
    """Per path: whether the gate's non-inferiority test of ``kpi`` rejected at some
    look (its hybrid p <= alpha), the deadline being the last look."""
    first = next(iter(arms.values()))[0]
    paths, looks = first.n.shape
    alpha = 1.0 - confidence
    shown = np.zeros(paths, dtype=bool)
    for p in range(paths):
        for t in range(looks):
            ctl = {k: a.at(p, t) for k, (a, _) in arms.items()}
            can = {k: b.at(p, t) for k, (_, b) in arms.items()}
            d = evaluate_gate(kpis, ctl, can, confidence=confidence, min_samples=min_samples, final=t == looks - 1,
                              traffic_fraction=traffic_fraction, elapsed_fraction=(t + 1) / looks, **kw)
            v = next(v for v in d.kpis if v.kpi == kpi)
            if v.p_noninferior is not None and v.p_noninferior <= alpha:
                shown[p] = True
                break
    return shown
