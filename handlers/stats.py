"""Streaming sufficient statistics and the fixed-horizon Welch test.

``RunningStats`` is Welford's count/mean/M2, mergeable by Chan et al.'s
parallel formula, so a KPI arm costs O(1) memory whatever the traffic.
"""

from __future__ import annotations

import math
from typing import Sequence

import msgspec
import numpy as np
from scipy import stats as _sps


class RunningStats(msgspec.Struct, frozen=True):
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray) -> "RunningStats":
        arr = np.asarray(values, dtype=np.float64)
        if arr.size == 0:
            return cls()
        mean = float(arr.mean())
        return cls(int(arr.size), mean, float(((arr - mean) ** 2).sum()))

    def merge(self, other: "RunningStats") -> "RunningStats":
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * other.n / n
        m2 = self.m2 + other.m2 + delta * delta * self.n * other.n / n
        return RunningStats(n, mean, m2)

    @property
    def variance(self) -> float:
        """Sample variance (ddof=1); 0 with fewer than two samples."""
        return self.m2 / (self.n - 1) if self.n > 1 else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.variance)

    def summary(self) -> dict[str, float]:
        return {"n": self.n, "mean": self.mean, "std": self.std}


class WelchResult(msgspec.Struct, frozen=True):
    diff: float          # canary mean - control mean
    se: float            # standard error of diff
    df: float            # Welch-Satterthwaite degrees of freedom
    t: float
    p_value: float       # two-sided
    lift: float | None   # diff / |control mean|, None when control mean ~ 0


def welch(control: RunningStats, canary: RunningStats) -> WelchResult:
    """Two-sided Welch t-test on sufficient statistics (equal to
    ``scipy.stats.ttest_ind_from_stats(equal_var=False)``)."""
    if control.n < 2 or canary.n < 2:
        raise ValueError("Welch's test needs at least two samples per arm")
    va, vb = control.variance / control.n, canary.variance / canary.n
    diff = canary.mean - control.mean
    se2 = va + vb
    lift = diff / abs(control.mean) if abs(control.mean) > 1e-12 else None
    if se2 <= 0.0:
        p = 1.0 if diff == 0 else 0.0
        return WelchResult(diff, 0.0, float(control.n + canary.n - 2), math.copysign(math.inf, diff) if diff else 0.0, p, lift)
    se = math.sqrt(se2)
    df = se2 * se2 / (va * va / (control.n - 1) + vb * vb / (canary.n - 1))
    t = diff / se
    p = float(2.0 * _sps.t.sf(abs(t), df))
    return WelchResult(diff, se, df, t, p, lift)
