"""Anytime-valid one-sided tests: a normal-mixture sequential probability ratio
test (mSPRT, Robbins 1970; Johari et al. 2017; the confidence sequences of
Howard et al. 2021 that GrowthBook's sequential test uses).

The statistic is a standardized effect ``z = (estimate - null) / se``. For a
Brownian motion observed in information time ``t`` (the fraction of the planned
information, here the canary window's elapsed fraction), mixing the likelihood
ratio ``exp(d*S_t - d^2 t/2)`` over a half-normal prior on the drift ``d > 0``
with variance ``rho`` gives, with ``r = rho * t``,

    Lambda(z, r) = 2 (1 + r)^(-1/2) exp(z^2 r / (2 (1 + r))) Phi(z sqrt(r / (1 + r)))

a nonnegative (super)martingale under the null ``d <= 0``. By Ville's
inequality ``P(sup_t Lambda >= 1/alpha) <= alpha``: rejecting whenever
``Lambda >= 1/alpha`` (p-value ``1/Lambda``) keeps the error at ``alpha``
however often one looks, and needs no state between looks.

``rho`` is tuned once per alpha so that the rejection boundary is as low as it
can be at the end of the window (``t = 1``): :func:`optimal_r`.

Small samples: the studentized statistic is t-distributed with Welch-
Satterthwaite degrees of freedom, so it is first mapped to the normal quantile
with the same tail probability (:func:`t_to_z`); bounds map back with
:func:`z_to_t`.

Everything here is pure and deterministic.
"""

from __future__ import annotations

import math
from functools import lru_cache

from scipy.optimize import brentq, minimize_scalar
from scipy.special import log_ndtr, ndtr, ndtri, stdtr, stdtrit

_LOG2 = math.log(2.0)
_DF_NORMAL = 1e7  # beyond this many degrees of freedom, t is normal


def log_mixture(z: float, r: float) -> float:
    """log Lambda(z, r) of the one-sided (alternative: z > 0) normal-mixture SPRT."""
    if r <= 0.0:
        return 0.0
    return (_LOG2 - 0.5 * math.log1p(r) + z * z * r / (2.0 * (1.0 + r))
            + float(log_ndtr(z * math.sqrt(r / (1.0 + r)))))


def p_value(z: float, r: float) -> float:
    """Anytime-valid one-sided p-value ``min(1, 1/Lambda)`` for the alternative z > 0."""
    if math.isinf(z):
        return 0.0 if z > 0 else 1.0
    lg = log_mixture(z, r)
    return 1.0 if lg <= 0.0 else math.exp(-lg)


@lru_cache(maxsize=4096)
def boundary(r: float, alpha: float) -> float:
    """The z at which Lambda(z, r) = 1/alpha: the one-sided rejection boundary."""
    target = -math.log(alpha)
    return float(brentq(lambda z: log_mixture(z, r) - target, 0.0, 100.0, xtol=1e-12))


@lru_cache(maxsize=256)
def optimal_r(alpha: float) -> float:
    """The mixture variance (in units of the end-of-window variance of the
    estimate) that minimizes the boundary at the end of the window.
    About 6.69 for alpha = 0.05 (boundary 2.77 vs 1.645 fixed-horizon)."""
    res = minimize_scalar(lambda lr: boundary(math.exp(lr), alpha), bounds=(-6.0, 10.0),
                          method="bounded", options={"xatol": 1e-8})
    return float(math.exp(res.x))


def t_to_z(t: float, df: float) -> float:
    """The standard-normal quantile with the same tail probability as ``t`` on ``df``."""
    if df >= _DF_NORMAL or math.isinf(t) or df <= 0:
        return t
    if t > 0:
        return -float(ndtri(stdtr(df, -t)))
    return float(ndtri(stdtr(df, t)))


def z_to_t(z: float, df: float) -> float:
    """Inverse of :func:`t_to_z` for z >= 0: the t quantile with the tail of ``z``."""
    if df >= _DF_NORMAL or df <= 0:
        return z
    return -float(stdtrit(df, ndtr(-z)))


def log_mixture_two_sided(z: float, r: float) -> float:
    """log Lambda of the two-sided normal-mixture SPRT (prior N(0, rho) on the drift)."""
    if r <= 0.0:
        return 0.0
    return -0.5 * math.log1p(r) + z * z * r / (2.0 * (1.0 + r))


def p_value_two_sided(z: float, r: float) -> float:
    """Anytime-valid two-sided p-value ``min(1, 1/Lambda)``."""
    if math.isinf(z):
        return 0.0
    lg = log_mixture_two_sided(z, r)
    return 1.0 if lg <= 0.0 else math.exp(-lg)


@lru_cache(maxsize=256)
def optimal_r_two_sided(alpha: float) -> float:
    """The r minimizing the two-sided boundary at t = 1: the root of
    ``r = 2 log(1/alpha) + log(1 + r)`` (about 16.6 for alpha = 0.001)."""
    big_l = -2.0 * math.log(alpha)
    return float(brentq(lambda r: r - big_l - math.log1p(r), 1e-9, 1e6))


def t_sf(t: float, df: float) -> float:
    """One-sided tail ``P(T > t)`` of Student's t on ``df`` (normal for huge df)."""
    if df >= _DF_NORMAL or df <= 0:
        return float(ndtr(-t))
    return float(stdtr(df, -t))


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t on ``df`` (normal for huge df)."""
    if df >= _DF_NORMAL or df <= 0:
        return float(ndtri(q))
    return float(stdtrit(df, q))
