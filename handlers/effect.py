"""The effect of the canary over the control on one KPI, from sufficient statistics.

Relative lift ``(canary mean - control mean) / |control mean|`` with its
delta-method variance and Welch-Satterthwaite degrees of freedom; the absolute
difference (plain Welch) when the control mean is near zero, i.e. when it is
exactly zero or within ``near_zero_se`` standard errors of zero (a ratio to a
mean that is not clearly away from zero has no usable delta-method variance).
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from .stats import RunningStats

NEAR_ZERO_SE = 3.0


class Effect(msgspec.Struct, frozen=True):
    mode: Literal["relative", "absolute"]
    estimate: float      # relative lift, or absolute difference in absolute mode
    se: float            # standard error of ``estimate``
    df: float            # Welch-Satterthwaite degrees of freedom
    diff: float          # canary mean - control mean
    lift: float | None   # relative lift (None in absolute mode)


def _satterthwaite(ca: float, na: int, cb: float, nb: int) -> float:
    den = ca * ca / (na - 1) + cb * cb / (nb - 1)
    if den <= 0.0:
        return float(na + nb - 2)
    return (ca + cb) ** 2 / den


def estimate_effect(control: RunningStats, canary: RunningStats, *,
                    near_zero_se: float = NEAR_ZERO_SE) -> Effect:
    """Effect estimate; both arms need at least two samples."""
    na, nb = control.n, canary.n
    if na < 2 or nb < 2:
        raise ValueError("an effect needs at least two samples per arm")
    ma, mb = control.mean, canary.mean
    va = max(control.variance, 0.0) / na   # variances of the means (rounding can make m2 -0)
    vb = max(canary.variance, 0.0) / nb
    diff = mb - ma
    if ma == 0.0 or abs(ma) <= near_zero_se * math.sqrt(va):
        se2 = va + vb
        return Effect("absolute", diff, math.sqrt(se2), _satterthwaite(va, na, vb, nb), diff, None)
    ma2 = ma * ma
    cb = vb / ma2                       # d lift / d mb = 1/|ma|
    ca = mb * mb * va / (ma2 * ma2)     # d lift / d ma = -sign(ma) mb / ma^2
    lift = diff / abs(ma)
    return Effect("relative", lift, math.sqrt(ca + cb), _satterthwaite(ca, na, cb, nb), diff, lift)
