"""The effect of the canary over the control on one KPI, from sufficient statistics.

Relative mode (the default when both means are clearly positive): the effect is
the **log of the ratio of means** ``log(canary mean / control mean)``, with the
delta-method variance ``var_b / mean_b^2 + var_a / mean_a^2`` (each arm's squared
coefficient of variation over its count) and Welch-Satterthwaite degrees of
freedom. A ratio is symmetric on this scale (x2 and x0.5 are equally far from 1),
and for a multiplicative effect its standard error does not grow with the
effect; the relative lift ``ratio - 1`` is reported alongside.

Why not the relative lift ``(mb - ma) / ma`` as the test statistic: its
delta-method variance ``var_b / ma^2 + mb^2 var_a / ma^4`` grows with ``mb``, so
harm that RAISES the mean (an error rate going up) inflates its own standard
error (x1.7 for a 2 % Bernoulli rate doubling) and is decided much later than
harm that lowers it (bench/GATE.md, "Direction symmetry").

Absolute mode: the difference of means (plain Welch), when asked for
(``absolute=True``: a KPI with an absolute margin) or when either mean is not
clearly positive, i.e. not above ``near_zero_se`` standard errors of zero (a ratio
to a mean that may be zero has no usable delta-method variance).
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from .stats import RunningStats

NEAR_ZERO_SE = 3.0


class Effect(msgspec.Struct, frozen=True):
    mode: Literal["relative", "absolute"]
    estimate: float      # log ratio of means (relative mode), or the absolute difference
    se: float            # standard error of ``estimate``
    df: float            # Welch-Satterthwaite degrees of freedom
    diff: float          # canary mean - control mean
    lift: float | None   # relative lift canary / control - 1 (None when the control mean is ~0)


def _satterthwaite(ca: float, na: int, cb: float, nb: int) -> float:
    den = ca * ca / (na - 1) + cb * cb / (nb - 1)
    if den <= 0.0:
        return float(na + nb - 2)
    return (ca + cb) ** 2 / den


def estimate_effect(control: RunningStats, canary: RunningStats, *,
                    near_zero_se: float = NEAR_ZERO_SE, absolute: bool = False) -> Effect:
    """Effect estimate; both arms need at least two samples."""
    na, nb = control.n, canary.n
    if na < 2 or nb < 2:
        raise ValueError("an effect needs at least two samples per arm")
    ma, mb = control.mean, canary.mean
    va = max(control.variance, 0.0) / na   # variances of the means (rounding can make m2 -0)
    vb = max(canary.variance, 0.0) / nb
    diff = mb - ma
    lift = diff / abs(ma) if ma != 0.0 and abs(ma) > near_zero_se * math.sqrt(va) else None
    positive = (ma > 0.0 and mb > 0.0 and ma > near_zero_se * math.sqrt(va)
                and mb > near_zero_se * math.sqrt(vb))
    if absolute or not positive:
        return Effect("absolute", diff, math.sqrt(va + vb), _satterthwaite(va, na, vb, nb), diff, lift)
    ca, cb = va / (ma * ma), vb / (mb * mb)
    return Effect("relative", math.log(mb / ma), math.sqrt(ca + cb), _satterthwaite(ca, na, cb, nb), diff, lift)
