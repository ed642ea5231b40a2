"""Tests for nemo_rl_theory.research.effects against independent references.

References: the ``statistics`` module (pure Python) for d; ``math.gamma`` and the series
1 - 3/(4 nu - 1) for J; ``scipy.stats.nct.mean`` (the closed-form mean of the noncentral t)
for the unbiasedness of g; ``scipy.optimize.brentq`` on the survival function for the interval
bounds; seeded simulations (coverage within 4 binomial SEs); the Hedges-Olkin large-sample SE.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

from nemo_rl_theory.research.effects import (
    EffectSize,
    cohens_d,
    hedges_correction,
    hedges_g,
    hedges_g_interval,
    noncentral_t_interval,
)

finite = st.floats(min_value=-100, max_value=100, allow_nan=False, allow_infinity=False)
samples = st.lists(finite, min_size=3, max_size=12).filter(lambda v: statistics.stdev(v) > 1e-3)


# ----------------------------------------------------------------------------- point estimates


def test_cohens_d_matches_pure_python_formula():
    x = [3.1, 2.4, 5.0, 4.2, 3.3]
    y = [1.0, 2.2, 0.4, 1.9]
    nx, ny = len(x), len(y)
    pooled = ((nx - 1) * statistics.variance(x) + (ny - 1) * statistics.variance(y)) / (nx + ny - 2)
    expected = (statistics.fmean(x) - statistics.fmean(y)) / math.sqrt(pooled)
    assert cohens_d(x, y) == pytest.approx(expected, rel=1e-13)
    assert hedges_g(x, y) == pytest.approx(expected * hedges_correction(nx + ny - 2), rel=1e-13)


def test_paired_d_is_mean_over_sd_of_differences():
    x = [3.1, 2.4, 5.0, 4.2, 3.3]
    y = [2.0, 2.2, 4.1, 3.0, 3.4]
    diff = [a - b for a, b in zip(x, y, strict=True)]
    expected = statistics.fmean(diff) / statistics.stdev(diff)
    assert cohens_d(x, y, paired=True) == pytest.approx(expected, rel=1e-13)
    assert hedges_g(x, y, paired=True) == pytest.approx(expected * hedges_correction(4), rel=1e-13)
    # the paired t statistic is scipy's ttest_rel
    res = hedges_g_interval(x, y, paired=True)
    assert res.t_statistic == pytest.approx(stats.ttest_rel(x, y).statistic, rel=1e-12)
    assert res.df == 4


def test_two_sample_t_is_students_t():
    rng = np.random.default_rng(1)
    x, y = rng.normal(0.3, 1, 6), rng.normal(0, 1, 9)
    res = hedges_g_interval(x, y)
    assert res.t_statistic == pytest.approx(stats.ttest_ind(x, y).statistic, rel=1e-12)
    assert res.df == 13


@pytest.mark.parametrize("nu", [2, 3, 4, 7, 10, 30, 100, 1000])
def test_hedges_correction_against_gamma_and_series(nu):
    if nu <= 100:
        exact = math.gamma(nu / 2) / (math.sqrt(nu / 2) * math.gamma((nu - 1) / 2))
        assert hedges_correction(nu) == pytest.approx(exact, rel=1e-12)
    # Hedges' approximation 1 - 3/(4 nu - 1): error O(nu^-2), 2.1e-3 at nu = 4, 3.3e-4 at nu = 10
    if nu >= 4:
        assert abs(hedges_correction(nu) - (1 - 3 / (4 * nu - 1))) < 2.5e-3
    if nu >= 10:
        assert abs(hedges_correction(nu) - (1 - 3 / (4 * nu - 1))) < 4e-4
    if nu >= 8:  # the docstring's bias of d: 1/J - 1 ~ 3/(4 nu - 4), 6.4e-4 off at nu = 8
        assert abs(1 / hedges_correction(nu) - 1 - 3 / (4 * nu - 4)) < 1e-3
    assert 0 < hedges_correction(nu) < 1
    assert hedges_correction(1e12) == pytest.approx(1.0, abs=1e-11)


@pytest.mark.parametrize("nx,ny,delta", [(2, 2, 0.5), (3, 5, -1.2), (5, 5, 0.8), (10, 4, 2.0)])
def test_g_is_exactly_unbiased_by_nct_mean(nx, ny, delta):
    # E[d] = E[T] / sqrt(n~) with T ~ nct(nu, delta sqrt(n~)); scipy's nct.mean is its closed form
    nu = nx + ny - 2
    scale = math.sqrt(nx * ny / (nx + ny))
    mean_d = stats.nct.mean(nu, delta * scale) / scale
    assert hedges_correction(nu) * mean_d == pytest.approx(delta, rel=1e-10)
    assert abs(mean_d) > abs(delta)  # d itself is biased away from 0


def test_g_unbiased_and_d_biased_by_simulation():
    rng = np.random.default_rng(7)
    reps, n, delta = 200_000, 4, 1.0
    x = rng.normal(delta, 1, (reps, n))
    y = rng.normal(0, 1, (reps, n))
    d = (x.mean(1) - y.mean(1)) / np.sqrt((x.var(1, ddof=1) + y.var(1, ddof=1)) / 2)
    g = hedges_correction(2 * n - 2) * d
    se = g.std() / math.sqrt(reps)
    assert abs(g.mean() - delta) < 4 * se
    assert d.mean() - delta > 10 * se  # bias of d about 0.14 here
    # the library's scalar path equals the vectorised formula
    assert hedges_g(x[0], y[0]) == pytest.approx(g[0], rel=1e-12)


# ----------------------------------------------------------------------------- intervals


@pytest.mark.parametrize(
    "t,df,conf", [(1.7, 8, 0.95), (-3.0, 3, 0.9), (0.0, 20, 0.99), (12.0, 2, 0.95), (0.4, 1.5, 0.5)]
)
def test_interval_bounds_by_brentq_on_survival_function(t, df, conf):
    low, high = noncentral_t_interval(t, df, conf)
    alpha = 1 - conf
    # independent route: P(T > t | lambda) = alpha/2 at the lower bound, 1 - alpha/2 at the upper
    ref_low = optimize.brentq(lambda nc: stats.nct.sf(t, df, nc) - alpha / 2, t - 200, t + 200, xtol=1e-13)
    ref_high = optimize.brentq(lambda nc: stats.nct.sf(t, df, nc) - (1 - alpha / 2), t - 200, t + 200, xtol=1e-13)
    assert low == pytest.approx(ref_low, abs=1e-8)
    assert high == pytest.approx(ref_high, abs=1e-8)
    assert low < high


def test_interval_for_central_t_is_the_normal_shift_at_large_df():
    # at df -> inf, T ~ N(lambda, 1): the interval is t -/+ z
    low, high = noncentral_t_interval(0.7, 1e7, 0.95)
    z = stats.norm.isf(0.025)
    assert low == pytest.approx(0.7 - z, abs=1e-4)
    assert high == pytest.approx(0.7 + z, abs=1e-4)


def test_vectorised_matches_scalar_and_broadcasts():
    t = np.array([-2.0, 0.0, 0.5, 4.0])
    low, high = noncentral_t_interval(t, 6, 0.9)
    assert low.shape == (4,)
    for i, ti in enumerate(t):
        lo_i, hi_i = noncentral_t_interval(float(ti), 6, 0.9)
        assert lo_i == pytest.approx(low[i], abs=1e-10)
        assert hi_i == pytest.approx(high[i], abs=1e-10)
    low2, _ = noncentral_t_interval(torch.tensor([0.5]), np.array([[3.0], [9.0]]), 0.9)
    assert low2.shape == (2, 1)


def test_extreme_t_does_not_return_nan():
    low, high = noncentral_t_interval(np.array([60.0, -60.0]), 2, 0.95)
    assert np.isfinite(low).all() and np.isfinite(high).all()
    assert low[0] == pytest.approx(-high[1]) and high[0] == pytest.approx(-low[1])


@pytest.mark.parametrize("nx,ny,delta,conf", [(3, 3, 0.0, 0.95), (5, 5, 0.8, 0.95), (4, 9, -1.5, 0.8)])
def test_two_sample_coverage_by_simulation(nx, ny, delta, conf):
    rng = np.random.default_rng(11)
    reps = 4000
    x = rng.normal(2.0 * delta, 2.0, (reps, nx))  # delta in SD units
    y = rng.normal(0, 2.0, (reps, ny))
    sp = np.sqrt(((nx - 1) * x.var(1, ddof=1) + (ny - 1) * y.var(1, ddof=1)) / (nx + ny - 2))
    scale = math.sqrt(nx * ny / (nx + ny))
    t = (x.mean(1) - y.mean(1)) / sp * scale
    low, high = noncentral_t_interval(t, nx + ny - 2, conf)
    cover = np.mean((low / scale <= delta) & (delta <= high / scale))
    assert abs(cover - conf) < 4 * math.sqrt(conf * (1 - conf) / reps)
    # the public function gives the same interval on the first replicates
    for r in range(3):
        res = hedges_g_interval(x[r], y[r], conf)
        assert res.low == pytest.approx(low[r] / scale, abs=1e-9)
        assert res.high == pytest.approx(high[r] / scale, abs=1e-9)


def test_paired_coverage_by_simulation():
    rng = np.random.default_rng(12)
    reps, n, rho, delta = 4000, 5, 0.7, 0.5  # delta in units of one arm's SD
    cov = np.array([[1, rho], [rho, 1]])
    xy = rng.multivariate_normal([delta, 0], cov, size=(reps, n))
    delta_z = delta / math.sqrt(2 * (1 - rho))
    diff = xy[..., 0] - xy[..., 1]
    t = diff.mean(1) / diff.std(1, ddof=1) * math.sqrt(n)
    low, high = noncentral_t_interval(t, n - 1)
    cover = np.mean((low / math.sqrt(n) <= delta_z) & (delta_z <= high / math.sqrt(n)))
    assert abs(cover - 0.95) < 4 * math.sqrt(0.95 * 0.05 / reps)
    res = hedges_g_interval(xy[0, :, 0], xy[0, :, 1], paired=True)
    assert res.low == pytest.approx(low[0] / math.sqrt(n), abs=1e-9)


def test_large_sample_interval_matches_hedges_olkin_normal_approximation():
    rng = np.random.default_rng(3)
    nx = ny = 4000
    x, y = rng.normal(0.5, 1, nx), rng.normal(0, 1, ny)
    res = hedges_g_interval(x, y)
    g = res.estimate
    se = math.sqrt((nx + ny) / (nx * ny) + g**2 / (2 * (nx + ny)))  # Hedges & Olkin 1985, eq. 5.15
    z = stats.norm.isf(0.025)
    assert res.low == pytest.approx(g - z * se, abs=5e-3)
    assert res.high == pytest.approx(g + z * se, abs=5e-3)


# ----------------------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None)
@given(samples, samples)
def test_antisymmetry(x, y):
    a, b = hedges_g_interval(x, y), hedges_g_interval(y, x)
    assert a.estimate == pytest.approx(-b.estimate, rel=1e-9, abs=1e-12)
    assert a.low == pytest.approx(-b.high, rel=1e-7, abs=1e-9)
    assert a.high == pytest.approx(-b.low, rel=1e-7, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(samples, samples, st.floats(0.1, 50), st.floats(-100, 100))
def test_affine_invariance(x, y, scale, shift):
    u = [scale * v + shift for v in x]
    w = [scale * v + shift for v in y]
    assert hedges_g(u, w) == pytest.approx(hedges_g(x, y), rel=1e-7, abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(samples, samples, st.floats(0.5, 0.98), st.floats(0.01, 0.019))
def test_intervals_nest_in_confidence(x, y, conf, extra):
    narrow = hedges_g_interval(x, y, conf)
    wide = hedges_g_interval(x, y, conf + extra)
    assert wide.low <= narrow.low + 1e-9 and narrow.high <= wide.high + 1e-9


def test_returns_effect_size_record():
    res = hedges_g_interval([1.0, 2.0, 3.5], [0.0, 0.5, 1.0, 0.2], 0.9)
    assert isinstance(res, EffectSize)
    assert res.confidence == 0.9 and res.paired is False
    assert res.cohens_d == pytest.approx(cohens_d([1.0, 2.0, 3.5], [0.0, 0.5, 1.0, 0.2]))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "x,y,kwargs,error,match",
    [
        ([], [1.0, 2.0], {}, ValueError, "x is empty"),
        ([1.0], [1.0, 2.0], {}, ValueError, "at least 2"),
        ([1.0, 2.0], [1.0, float("nan")], {}, ValueError, "y must be finite"),
        ([1.0, 1.0], [2.0, 2.0], {}, ValueError, "zero pooled variance"),
        ([[1.0, 2.0]], [1.0, 2.0], {}, ValueError, "1-D"),
        ("abc", [1.0, 2.0], {}, TypeError, "x must be"),
        (1.0, [1.0, 2.0], {}, TypeError, "x must be"),
        (["a", "b"], [1.0, 2.0], {}, TypeError, "real numbers"),
        ([1.0, 2.0], [1.0, 2.0], {"paired": True}, ValueError, "at least 3"),
        ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0], {"paired": True}, ValueError, "same length"),
        ([1.0, 2.0, 3.0], [0.0, 1.0, 2.0], {"paired": True}, ValueError, "zero variance"),
        ([1.0, 2.0, 3.0], [0.0, 1.0, 2.0], {"paired": 1}, TypeError, "paired must be a bool"),
        ([True, False, True], [1.0, 2.0], {}, TypeError, "x must hold real numbers, got dtype bool"),
        ([1.0, 2.0], np.array([1 + 2j, 3j]), {}, TypeError, "y must hold real numbers, got dtype complex"),
        (np.array(["1", "2"]), [1.0, 2.0], {}, TypeError, "x must hold real numbers"),
    ],
)
def test_bad_samples(x, y, kwargs, error, match):
    for fn in (cohens_d, hedges_g, hedges_g_interval):
        with pytest.raises(error, match=match):
            fn(x, y, **kwargs)


@pytest.mark.parametrize("conf", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_confidence(conf):
    with pytest.raises(ValueError, match="confidence"):
        hedges_g_interval([1.0, 2.0], [0.0, 0.5], conf)
    with pytest.raises(ValueError, match="confidence"):
        noncentral_t_interval(1.0, 5, conf)


def test_bad_interval_arguments():
    with pytest.raises(ValueError, match="df must be > 0"):
        noncentral_t_interval(1.0, 0)
    with pytest.raises(ValueError, match="t must be finite"):
        noncentral_t_interval(float("inf"), 3)
    with pytest.raises(TypeError, match="t must be"):
        noncentral_t_interval("1", 3)
    with pytest.raises(TypeError, match="df must be"):
        noncentral_t_interval(1.0, True)
    with pytest.raises(TypeError, match="t must hold real numbers, got dtype bool"):
        noncentral_t_interval(np.array([True, False]), 3)
    with pytest.raises(TypeError, match="df must hold real numbers, got dtype complex"):
        noncentral_t_interval(1.0, np.array([3 + 1j]))
    with pytest.raises(ValueError, match="broadcast"):
        noncentral_t_interval(np.ones(3), np.ones(2) * 4)


@pytest.mark.parametrize("df", [1, 0.5, -3, float("nan"), float("inf")])
def test_bad_correction_df(df):
    with pytest.raises(ValueError, match="df"):
        hedges_correction(df)
    with pytest.raises(TypeError):
        hedges_correction("4")
