"""Two-level factorial and OFAT designs, checked against least squares, scipy's t tests and simulation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from nemo_rl_theory.research.factorial import (
    MAX_FACTORS,
    factorial_effects,
    model_matrix,
    ofat_design,
    ofat_effects,
    term_names,
    two_level_design,
)


def _surface(coefficients: dict[tuple[int, ...], float], x: np.ndarray) -> np.ndarray:
    """y(x) = sum_S beta_S prod_{j in S} x_j, evaluated directly (rows of x are points)."""
    x = np.atleast_2d(x)
    return np.array([sum(b * np.prod(row[list(s)]) for s, b in coefficients.items()) for row in x])


def _ols(x_runs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Least squares by np.linalg.lstsq: coefficients, their standard errors, s^2 and df."""
    beta, *_ = np.linalg.lstsq(x_runs, y, rcond=None)
    resid = y - x_runs @ beta
    df = x_runs.shape[0] - np.linalg.matrix_rank(x_runs)
    s2 = float(resid @ resid / df)
    cov = s2 * np.linalg.pinv(x_runs.T @ x_runs)
    return beta, np.sqrt(np.diag(cov)), s2, int(df)


# ----------------------------------------------------------------------------- designs


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_two_level_design_is_the_full_factorial_in_standard_order(k):
    d = two_level_design(k)
    assert d.shape == (2**k, k) and d.dtype == np.int64
    # Standard order: row i is the binary expansion of i, first factor fastest.
    expected = [tuple(reversed(row)) for row in itertools.product((-1, 1), repeat=k)]
    assert [tuple(r) for r in d] == expected
    x = model_matrix(d)
    assert np.array_equal(x.T @ x, 2**k * np.eye(2**k))  # orthogonal columns


def test_two_level_design_k3_rows_and_terms():
    assert two_level_design(3)[:4].tolist() == [[-1, -1, -1], [1, -1, -1], [-1, 1, -1], [1, 1, -1]]
    assert term_names(3) == ("A", "B", "C", "AB", "AC", "BC", "ABC")
    assert term_names(2, ["loo", "norm"]) == ("loo", "norm", "loo:norm")
    x = model_matrix(two_level_design(3))
    d = two_level_design(3)
    assert np.array_equal(x[:, 4], d[:, 0] * d[:, 1])  # AB
    assert np.array_equal(x[:, 7], d.prod(axis=1))  # ABC


def test_ofat_design_rows():
    assert ofat_design(3).tolist() == [[-1, -1, -1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]
    assert ofat_design(2, 1).tolist() == [[1, 1], [-1, 1], [1, -1]]
    assert ofat_design(3, [1, -1, 1]).tolist() == [[1, -1, 1], [-1, -1, 1], [1, 1, 1], [1, -1, -1]]
    assert ofat_design(2, torch.tensor([1, 1])).tolist() == [[1, 1], [-1, 1], [1, -1]]


# ----------------------------------------------------------------------------- effects


def test_noise_free_surface_recovered_exactly():
    beta = {(): 10.0, (0,): 2.0, (1,): 1.0, (2,): 0.5, (0, 1): 1.5, (1, 2): -0.5, (0, 1, 2): 0.25}
    d = two_level_design(3)
    fx = factorial_effects(d, _surface(beta, d))
    expected = [2 * beta.get(s, 0.0) for s in [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]]
    assert fx.effects.tolist() == expected  # exact: dyadic numbers
    assert fx.grand_mean == 10.0 and fx.standard_error is None and fx.t is None
    assert fx.coefficients.tolist() == [e / 2 for e in expected]
    assert fx.effect("AB") == 3.0
    with pytest.raises(KeyError, match="unknown term"):
        fx.effect("D")


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 4),
    r=st.integers(2, 4),
    seed=st.integers(0, 2**31 - 1),
    blocked=st.booleans(),
)
def test_effects_and_standard_errors_equal_least_squares(k, r, seed, blocked):
    rng = np.random.default_rng(seed)
    order = rng.permutation(2**k)
    d = two_level_design(k)[order]  # any row order
    y = rng.normal(size=(2**k, r)) + rng.normal(size=r) * 3.0  # with a block (seed) shift
    x = model_matrix(d)
    x_runs = np.repeat(x, r, axis=0)  # row-major: cell i, replicate s
    if blocked:
        blocks = np.tile(np.eye(r)[:, 1:], (2**k, 1))  # r - 1 block indicators
        x_runs = np.hstack([x_runs, blocks])
    beta, se, s2, df = _ols(x_runs, y.ravel())
    fx = factorial_effects(d, y, blocked=blocked)
    np.testing.assert_allclose(fx.effects, 2 * beta[1 : 2**k], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fx.standard_error, 2 * se[1 : 2**k], rtol=1e-9)
    assert fx.dof == df and fx.residual_variance == pytest.approx(s2, rel=1e-9)
    np.testing.assert_allclose(fx.p_values, 2 * stats.t.sf(np.abs(2 * beta[1 : 2**k] / (2 * se[1 : 2**k])), df))
    half = stats.t.ppf(0.975, df) * fx.standard_error
    np.testing.assert_allclose(fx.high - fx.low, 2 * half)


def test_row_order_and_input_types_do_not_matter():
    rng = np.random.default_rng(1)
    d = two_level_design(3)
    y = rng.normal(size=(8, 3))
    base = factorial_effects(d, y)
    perm = rng.permutation(8)
    again = factorial_effects(d[perm], y[perm])
    np.testing.assert_allclose(again.effects, base.effects, rtol=1e-12, atol=1e-15)
    assert again.standard_error == pytest.approx(base.standard_error)
    as_tensor = factorial_effects(torch.tensor(d), torch.tensor(y), factor_names=["x", "y", "z"])
    np.testing.assert_allclose(as_tensor.effects, base.effects)
    assert as_tensor.terms[3] == "xy"
    assert factorial_effects(d, y, factor_names=["loo", "norm", "kl"]).terms[-1] == "loo:norm:kl"


def test_one_factor_matches_scipy_t_tests():
    rng = np.random.default_rng(2)
    y = rng.normal(size=(2, 6)) + np.array([[0.0], [0.8]]) + rng.normal(size=6)
    d = two_level_design(1)  # rows: -1, +1
    unpaired = factorial_effects(d, y)
    paired = factorial_effects(d, y, blocked=True)
    t_ind = stats.ttest_ind(y[1], y[0])  # Student, pooled variance
    t_rel = stats.ttest_rel(y[1], y[0])
    assert unpaired.t[0] == pytest.approx(t_ind.statistic) and unpaired.p_values[0] == pytest.approx(t_ind.pvalue)
    assert paired.t[0] == pytest.approx(t_rel.statistic) and paired.p_values[0] == pytest.approx(t_rel.pvalue)
    ci = t_rel.confidence_interval(0.9)
    paired90 = factorial_effects(d, y, blocked=True, confidence=0.9)
    assert (paired90.low[0], paired90.high[0]) == pytest.approx((ci.low, ci.high))
    # OFAT with one factor is the same comparison.
    o = ofat_effects(y, -1, blocked=True)
    assert o.t[0] == pytest.approx(t_rel.statistic) and o.dof == 5
    assert ofat_effects(y).p_values[0] == pytest.approx(t_ind.pvalue)


def test_blocking_removes_block_shifts_exactly():
    rng = np.random.default_rng(3)
    d = two_level_design(3)
    y = rng.normal(size=(8, 4))
    shifted = y + np.array([5.0, -3.0, 0.5, 10.0])  # one shift per block (seed)
    a, b = factorial_effects(d, y, blocked=True), factorial_effects(d, shifted, blocked=True)
    np.testing.assert_allclose(b.effects, a.effects, atol=1e-12)
    assert b.standard_error == pytest.approx(a.standard_error, rel=1e-9)
    assert factorial_effects(d, shifted).standard_error > 3 * a.standard_error  # unblocked absorbs the shifts


def test_interval_coverage_by_simulation():
    """95 % intervals cover the true effects ~95 % of the time, blocked and not (1500 experiments)."""
    rng = np.random.default_rng(5)
    d = two_level_design(3)
    true = np.array([1.0, 0.0, -0.5, 0.25, 0.0, 0.0, 0.5])
    mean = 2.0 + model_matrix(d)[:, 1:] @ (true / 2)
    hits = {False: 0, True: 0}
    n_exp = 1500
    for _ in range(n_exp):
        y = mean[:, None] + rng.normal(size=(8, 3)) + 2.0 * rng.normal(size=3)  # block variance 4
        for blocked in (False, True):
            fx = factorial_effects(d, y, blocked=blocked)
            hits[blocked] += int(((fx.low <= true) & (true <= fx.high)).sum())
    covered = {b: h / (7 * n_exp) for b, h in hits.items()}
    # Blocked: exact t intervals, 95 % (MC sd ~0.5 %, effects of one experiment correlated through s).
    assert 0.93 < covered[True] < 0.97, covered
    # Unblocked: the block variance inflates s, so the intervals over-cover.
    assert covered[False] > 0.985, covered


# ----------------------------------------------------------------------------- OFAT


@pytest.mark.parametrize("baseline", [-1, 1, [1, -1, 1]])
def test_ofat_estimates_the_conditional_effect_at_the_baseline(baseline):
    beta = {(): 1.0, (0,): 2.0, (1,): -1.0, (2,): 0.5, (0, 1): 1.5, (0, 2): -0.75, (0, 1, 2): 0.25}
    d = ofat_design(3, baseline)
    b = d[0]
    o = ofat_effects(_surface(beta, d), baseline)
    for j in range(3):
        # Direct: flip factor j at the baseline, high minus low.
        hi, lo = b.copy(), b.copy()
        hi[j], lo[j] = 1, -1
        direct = _surface(beta, hi)[0] - _surface(beta, lo)[0]
        formula = 2 * sum(v * np.prod(b[[i for i in s if i != j]]) for s, v in beta.items() if j in s)
        assert o.effects[j] == pytest.approx(direct) == pytest.approx(formula)
    assert o.standard_error is None and tuple(o.baseline) == tuple(b)


def test_ofat_standard_error_matches_least_squares():
    rng = np.random.default_rng(6)
    y = rng.normal(size=(4, 5))
    x_runs = np.repeat(np.eye(4), 5, axis=0)  # cell-means model
    _, se, s2, df = _ols(x_runs, y.ravel())
    o = ofat_effects(y)
    assert o.dof == df == 16 and o.residual_variance == pytest.approx(s2)
    assert o.standard_error == pytest.approx(np.sqrt(se[0] ** 2 + se[1] ** 2))
    np.testing.assert_allclose(o.effects, y[1:].mean(axis=1) - y[0].mean())
    np.testing.assert_allclose(ofat_effects(y, 1).effects, y[0].mean() - y[1:].mean(axis=1))


def test_variance_per_run_factorial_versus_ofat():
    """Var(effect) = 4 sigma^2 / N (factorial) and 2 (k + 1) sigma^2 / N (OFAT), by linearity."""
    for k in (2, 3, 4):
        n_fact, r_ofat = 2**k * 2, 2
        d = two_level_design(k)
        w_fact = np.array([factorial_effects(d, e.reshape(2**k, 2)).effects[0] for e in np.eye(n_fact)])
        w_ofat = np.array([ofat_effects(e.reshape(k + 1, r_ofat)).effects[0] for e in np.eye((k + 1) * r_ofat)])
        assert (w_fact**2).sum() == pytest.approx(4 / n_fact)
        assert (w_ofat**2).sum() == pytest.approx(2 * (k + 1) / ((k + 1) * r_ofat))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: two_level_design(0), ValueError, "k must be an int >= 1"),
        (lambda: two_level_design(MAX_FACTORS + 1), ValueError, "MAX_FACTORS"),
        (lambda: two_level_design(2.0), TypeError, "k must be an int"),
        (lambda: two_level_design(True), TypeError, "k must be an int"),
        (lambda: term_names(2, ["a"]), ValueError, "factor_names must be 2"),
        (lambda: term_names(2, ["a", "a"]), ValueError, "distinct"),
        (lambda: term_names(2, "ab"), TypeError, "factor_names"),
        (lambda: model_matrix([[1, 0], [1, 1]]), ValueError, "only -1 and \\+1"),
        (lambda: model_matrix([1, -1]), ValueError, "2-D"),
        (lambda: model_matrix([[1, 1], [-1, 1], [1, -1]]), ValueError, "need 4 rows"),
        (lambda: model_matrix([[1, 1], [-1, 1], [1, -1], [1, 1]]), ValueError, "repeated row"),
        (lambda: model_matrix("design"), TypeError, "design must be"),
        (lambda: model_matrix([[True, False]]), TypeError, "real"),
        (lambda: factorial_effects(two_level_design(2), np.ones(3)), ValueError, "4 cells"),
        (lambda: factorial_effects(two_level_design(2), np.ones((4, 2, 2))), ValueError, "4 cells"),
        (lambda: factorial_effects(two_level_design(2), [1.0, 2.0, np.nan, 0.0]), ValueError, "finite"),
        (lambda: factorial_effects(two_level_design(2), np.ones(4), blocked=True), ValueError, "2 replicates"),
        (lambda: factorial_effects(two_level_design(2), np.ones((4, 2))), ValueError, "zero replicate variance"),
        (
            lambda: factorial_effects(two_level_design(1), [[0.0, 1.0], [1.0, 2.0]], blocked=True),
            ValueError,
            "after removing block means",
        ),
        (lambda: factorial_effects(two_level_design(2), np.eye(4)[:, :2], blocked=1), TypeError, "blocked must be"),
        (
            lambda: factorial_effects(two_level_design(2), np.eye(4)[:, :2], confidence=1.0),
            ValueError,
            "confidence",
        ),
        (lambda: ofat_effects([1.0]), ValueError, "k \\+ 1"),
        (lambda: ofat_effects(np.ones((3, 2, 2))), ValueError, "k \\+ 1"),
        (lambda: ofat_effects(np.ones(3), [1, 1, 1]), ValueError, "length-2"),
        (lambda: ofat_effects(np.ones(3), 0), ValueError, "only -1 and \\+1"),
        (lambda: ofat_effects(np.ones(3), blocked=True), ValueError, "2 replicates"),
        (lambda: ofat_effects(np.eye(3)[:, :2], blocked="yes"), TypeError, "blocked must be"),
        (lambda: ofat_design(2, [1, -1, 1]), ValueError, "length-2"),
        (lambda: ofat_design(2, "+"), TypeError, "baseline"),
    ],
)
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
