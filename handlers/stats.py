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

from .sequential import optimal_r_two_sided, p_value_two_sided


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


def srm_pvalue(n_control: int, n_canary: int, canary_fraction: float) -> float:
    """Sample-ratio mismatch: Pearson chi-square (1 df) of the arm counts
    against the configured canary share. Equal to
    ``scipy.stats.chisquare([n_control, n_canary], f_exp=...)``'s p-value."""
    total = n_control + n_canary
    if total <= 0 or not 0.0 < canary_fraction < 1.0:
        return 1.0
    e_b = total * canary_fraction
    e_a = total - e_b
    x = (n_canary - e_b) ** 2 / e_b + (n_control - e_a) ** 2 / e_a
    return math.erfc(math.sqrt(x / 2.0))


def srm_pvalue_anytime(n_control: int, n_canary: int, canary_fraction: float, *,
                       elapsed_fraction: float = 1.0, alpha: float = 0.001) -> float:
    """Anytime-valid sample-ratio-mismatch p-value: the chi-square statistic
    (``z^2`` of the canary count against its binomial expectation) fed to a
    two-sided normal-mixture SPRT whose mixture is tuned for the end of the
    window at ``alpha``. Checking it at every look keeps the false-alarm rate
    at ``alpha`` over the whole canary; the classic :func:`srm_pvalue` checked
    at 60 looks raises about 1 % false alarms at 0.001."""
    total = n_control + n_canary
    if total <= 0 or not 0.0 < canary_fraction < 1.0:
        return 1.0
    e_b = total * canary_fraction
    z = (n_canary - e_b) / math.sqrt(e_b * (1.0 - canary_fraction))
    r = optimal_r_two_sided(alpha) * max(elapsed_fraction, 1e-3)
    return p_value_two_sided(z, r)
