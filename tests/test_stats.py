"""Streaming statistics, Welch, effect and SRM against numpy / scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from vvtv_autopilot.handlers.effect import estimate_effect
from vvtv_autopilot.handlers.stats import RunningStats, srm_pvalue, srm_pvalue_anytime, welch


def test_welford_matches_numpy():
    rng = np.random.default_rng(11)
    x = rng.normal(3.0, 2.0, 1001)
    s = RunningStats.of(x)
    assert s.n == x.size
    assert s.mean == pytest.approx(x.mean(), rel=1e-12)
    assert s.variance == pytest.approx(x.var(ddof=1), rel=1e-12)
    assert RunningStats.of([]).n == 0 and RunningStats.of([5.0]).variance == 0.0


def test_chan_merge_matches_numpy_whatever_the_split():
    rng = np.random.default_rng(12)
    x = rng.lognormal(0.0, 1.0, 5000) + 1e6   # large offset: catastrophic cancellation would show
    cuts = np.sort(rng.choice(np.arange(1, x.size), 40, replace=False))
    acc = RunningStats()
    for part in np.split(x, cuts):
        acc = acc.merge(RunningStats.of(part))
    assert acc.n == x.size
    assert acc.mean == pytest.approx(x.mean(), rel=1e-13)
    assert acc.variance == pytest.approx(x.var(ddof=1), rel=1e-8)
    # merging is associative up to rounding, and the empty arm is the identity
    a, b, c = (RunningStats.of(p) for p in np.split(x, [100, 2000]))
    left, right = a.merge(b).merge(c), a.merge(b.merge(c))
    assert left.m2 == pytest.approx(right.m2, rel=1e-10)
    assert a.merge(RunningStats()) == a and RunningStats().merge(a) == a


@pytest.mark.parametrize("seed", range(6))
def test_welch_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    xa = rng.normal(10.0, 1.0 + seed, 50 + 37 * seed)
    xb = rng.normal(10.3, 2.0, 20 + 11 * seed)
    a, b = RunningStats.of(xa), RunningStats.of(xb)
    w = welch(a, b)
    ref = sps.ttest_ind_from_stats(b.mean, b.std, b.n, a.mean, a.std, a.n, equal_var=False)
    assert abs(w.p_value - ref.pvalue) < 1e-9
    assert w.t == pytest.approx(ref.statistic, rel=1e-10)
    assert abs(w.p_value - sps.ttest_ind(xb, xa, equal_var=False).pvalue) < 1e-9


def test_welch_needs_two_samples():
    with pytest.raises(ValueError):
        welch(RunningStats.of([1.0]), RunningStats.of([1.0, 2.0]))


def test_effect_delta_method_matches_simulation():
    # sampling distribution of the relative lift vs its delta-method standard error
    rng = np.random.default_rng(5)
    na, nb, mu_a, mu_b, sd = 800, 200, 2.0, 2.2, 1.5
    a = RunningStats(na, mu_a, sd * sd * (na - 1))
    b = RunningStats(nb, mu_b, sd * sd * (nb - 1))
    eff = estimate_effect(a, b)
    assert eff.mode == "relative" and eff.lift == pytest.approx(0.1)
    assert eff.estimate == pytest.approx(math.log(1.1))      # the test runs on the log ratio
    ma = rng.normal(mu_a, sd / math.sqrt(na), 200_000)
    mb = rng.normal(mu_b, sd / math.sqrt(nb), 200_000)
    assert eff.se == pytest.approx(np.log(mb / ma).std(), rel=0.01)
    # Welch-Satterthwaite df lies between the smaller arm's and the pooled df
    assert nb - 1 <= eff.df <= na + nb - 2


def test_effect_absolute_when_baseline_near_zero():
    a = RunningStats.of([0.0] * 100)
    b = RunningStats.of([0.0] * 95 + [1.0] * 5)
    eff = estimate_effect(a, b)
    assert eff.mode == "absolute" and eff.lift is None
    assert eff.estimate == pytest.approx(0.05)
    w = welch(a, b)
    assert eff.se == pytest.approx(w.se) and eff.df == pytest.approx(w.df)


@pytest.mark.parametrize("na,nb,f", [(800, 200, 0.2), (830, 170, 0.2), (500, 480, 0.5), (7, 3, 0.1)])
def test_srm_matches_scipy_chisquare(na, nb, f):
    total = na + nb
    ref = sps.chisquare([na, nb], f_exp=[total * (1 - f), total * f]).pvalue
    assert srm_pvalue(na, nb, f) == pytest.approx(ref, rel=1e-9, abs=1e-15)


def test_srm_anytime_is_more_conservative_than_one_look():
    assert srm_pvalue_anytime(800, 200, 0.2) == 1.0
    for na, nb in [(4900, 1100), (5000, 1000), (5100, 900)]:
        assert srm_pvalue_anytime(na, nb, 0.2) >= srm_pvalue(na, nb, 0.2)
    assert srm_pvalue_anytime(5040, 960, 0.2) < 1e-3   # 0.16 instead of 0.2 of 6,000


def test_log_ratio_effect_against_scipy_on_the_same_data():
    # a 2 % Bernoulli rate raised by 30 %: the delta-method SE of the log ratio equals
    # sqrt(CV_a^2/n_a + CV_b^2/n_b) with scipy's coefficient of variation, and agrees with
    # scipy's bootstrap of log(mean_b / mean_a) on the same samples
    rng = np.random.default_rng(21)
    xa = (rng.random(40_000) < 0.02).astype(float)
    xb = (rng.random(10_000) < 0.026).astype(float)
    a, b = RunningStats.of(xa), RunningStats.of(xb)
    eff = estimate_effect(a, b)
    assert eff.mode == "relative" and eff.estimate == pytest.approx(math.log(xb.mean() / xa.mean()), rel=1e-12)
    cv2 = sps.variation(xa, ddof=1) ** 2 / xa.size + sps.variation(xb, ddof=1) ** 2 / xb.size
    assert eff.se == pytest.approx(math.sqrt(cv2), rel=1e-9)
    boot = sps.bootstrap((xa, xb), lambda u, v, axis=-1: np.log(v.mean(axis=axis) / u.mean(axis=axis)),
                         n_resamples=1000, batch=50, random_state=np.random.default_rng(22), vectorized=True)
    assert eff.se == pytest.approx(boot.standard_error, rel=0.06)
    # the absolute mode (margin_abs) is Welch's difference, as scipy computes it
    ab = estimate_effect(a, b, absolute=True)
    ref = sps.ttest_ind(xb, xa, equal_var=False)
    assert ab.mode == "absolute" and ab.estimate / ab.se == pytest.approx(ref.statistic, rel=1e-9)
    assert ab.df == pytest.approx(ref.df, rel=1e-9)
