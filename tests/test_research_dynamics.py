"""Tests for nemo_rl_theory.research.dynamics against closed forms, scipy and simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize

from nemo_rl_theory.research.dynamics import (
    NoiseScale,
    SaturatingFit,
    fit_saturating_curve,
    gradient_noise_scale,
    noise_scale_from_samples,
    normalized_auc,
    saturating_curve,
    steps_to_fraction,
)

asymptotes = st.floats(0.3, 2.0)
initials = st.floats(-0.5, 0.25)
taus = st.floats(2.0, 30.0)


# ------------------------------------------------------------------ saturating_curve


@given(asymptotes, initials, taus)
def test_saturating_curve_closed_form_points(a, r0, tau):
    assert math.isclose(float(saturating_curve(0.0, a, r0, tau)), r0, abs_tol=1e-12)
    at_tau = float(saturating_curve(tau, a, r0, tau))
    assert math.isclose(at_tau, r0 + (a - r0) * (1 - math.exp(-1)), rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(float(saturating_curve(1e4 * tau, a, r0, tau)), a, rel_tol=1e-12)


def test_saturating_curve_shapes_and_ode():
    t = np.linspace(0, 50, 201)
    r = saturating_curve(t, 0.8, 0.1, 7.0)
    assert r.shape == t.shape and np.ndim(saturating_curve(3.0, 0.8, 0.1, 7.0)) == 0
    # r solves dr/dt = (a - r) / tau: check with a central difference
    h = 1e-5
    deriv = (saturating_curve(t + h, 0.8, 0.1, 7.0) - saturating_curve(t - h, 0.8, 0.1, 7.0)) / (2 * h)
    np.testing.assert_allclose(deriv, (0.8 - r) / 7.0, rtol=1e-6, atol=1e-9)
    assert saturating_curve(torch.tensor([0.0, 1.0]), 1.0, 0.0, 1.0).shape == (2,)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        (dict(steps="a"), TypeError, "steps"),
        (dict(steps=[0.0, np.nan]), ValueError, "finite"),
        (dict(tau=0.0), ValueError, "tau"),
        (dict(tau=-1.0), ValueError, "tau"),
        (dict(asymptote=math.inf), ValueError, "asymptote"),
        (dict(initial="x"), TypeError, "initial"),
    ],
)
def test_saturating_curve_bad_input(kwargs, err, match):
    args = dict(steps=[0.0, 1.0], asymptote=1.0, initial=0.0, tau=1.0) | kwargs
    with pytest.raises(err, match=match):
        saturating_curve(**args)


# ------------------------------------------------------------------ fit_saturating_curve


@settings(max_examples=30, deadline=None)
@given(asymptotes, initials, taus)
def test_fit_recovers_noiseless_parameters(a, r0, tau):
    t = np.arange(0, 81, dtype=float)
    fit = fit_saturating_curve(t, saturating_curve(t, a, r0, tau))
    assert isinstance(fit, SaturatingFit)
    assert math.isclose(fit.asymptote, a, rel_tol=1e-5, abs_tol=1e-6)
    assert math.isclose(fit.initial, r0, rel_tol=1e-5, abs_tol=1e-6)
    assert math.isclose(fit.tau, tau, rel_tol=1e-4)
    assert fit.dof == 78 and fit.residual_std < 1e-6


def test_analytic_jacobian_matches_central_differences():
    """The Jacobian the fit passes to curve_fit, against finite differences of the model."""
    from nemo_rl_theory.research.dynamics import _jacobian

    t = np.linspace(0.0, 60.0, 31)
    theta = np.array([0.85, 0.1, 9.0])
    h = 1e-6
    numeric = np.stack(
        [(saturating_curve(t, *(theta + h * e)) - saturating_curve(t, *(theta - h * e))) / (2 * h) for e in np.eye(3)],
        axis=-1,
    )
    np.testing.assert_allclose(_jacobian(t, *theta), numeric, rtol=1e-6, atol=1e-9)


def test_fit_matches_scipy_curve_fit_directly():
    rng = np.random.default_rng(0)
    t = np.arange(30.0)
    y = saturating_curve(t, 0.9, 0.2, 8.0) + rng.normal(0, 0.02, t.size)
    fit = fit_saturating_curve(t, y, p0=(0.9, 0.2, 8.0))
    popt, pcov = optimize.curve_fit(lambda x, a, r0, tau: a - (a - r0) * np.exp(-x / tau), t, y, p0=(0.9, 0.2, 8.0))
    np.testing.assert_allclose([fit.asymptote, fit.initial, fit.tau], popt, rtol=1e-5)
    np.testing.assert_allclose(fit.covariance, pcov, rtol=1e-3)
    resid = y - fit.predict(t)
    assert math.isclose(fit.residual_std, math.sqrt(resid @ resid / 27), rel_tol=1e-9)


def test_fit_interval_coverage_by_simulation():
    """400 noisy curves with known parameters: each 95% interval covers within 3 MC SEs of 0.95."""
    rng = np.random.default_rng(123)
    t = np.arange(41.0)
    truth = {"asymptote": 0.8, "initial": 0.2, "tau": 12.0}
    reps = 400
    covered = np.zeros(3)
    estimates = []
    for _ in range(reps):
        fit = fit_saturating_curve(t, saturating_curve(t, **truth) + rng.normal(0, 0.03, t.size))
        estimates.append([fit.asymptote, fit.initial, fit.tau])
        covered += [lo <= truth[p] <= hi for p in truth for lo, hi in [fit.interval(p)]]
    tol = 3 * math.sqrt(0.95 * 0.05 / reps)
    assert np.all(np.abs(covered / reps - 0.95) < tol), covered / reps
    est = np.array(estimates)
    assert np.all(np.abs(est.mean(0) - list(truth.values())) < 0.03 * np.array(list(truth.values())))


def test_fit_sigma_weights_and_absolute_sigma():
    t = np.arange(20.0)
    y = saturating_curve(t, 1.0, 0.0, 5.0) + 0.01 * np.sin(t)
    unweighted = fit_saturating_curve(t, y)
    weighted = fit_saturating_curve(t, y, sigma=np.full(20, 0.5))  # constant sigma: same optimum
    assert math.isclose(unweighted.tau, weighted.tau, rel_tol=1e-6)
    absolute = fit_saturating_curve(t, y, sigma=np.full(20, 0.5), absolute_sigma=True)
    assert absolute.standard_errors["tau"] > weighted.standard_errors["tau"]  # sigma 0.5 >> residuals


def test_fit_linear_curve_hits_tau_bound():
    t = np.arange(20.0)
    fit = fit_saturating_curve(t, 0.1 + 0.01 * t, max_tau=500.0)
    assert fit.tau == pytest.approx(500.0, rel=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        (dict(steps=[0.0, 1.0, 2.0]), ValueError, "at least 4"),
        (dict(steps=[0.0, 2.0, 1.0, 3.0, 4.0]), ValueError, "increasing"),
        (dict(values=[0.0, 1.0]), ValueError, "one value per step"),
        (dict(values=[0.0, 1.0, np.inf, 0.0, 1.0]), ValueError, "finite"),
        (dict(values=[[0.0] * 5]), ValueError, "1-D"),
        (dict(sigma=[1.0, 1.0, 0.0, 1.0, 1.0]), ValueError, "positive"),
        (dict(sigma=[1.0]), ValueError, "sigma"),
        (dict(absolute_sigma=1), TypeError, "absolute_sigma"),
        (dict(p0=(1.0, 0.0)), ValueError, "p0"),
        (dict(p0=(1.0, 0.0, -1.0)), ValueError, "tau"),
        (dict(max_tau=0.0), ValueError, "max_tau"),
        (dict(values=["a"] * 5), TypeError, "values"),
    ],
)
def test_fit_bad_input(kwargs, err, match):
    args = dict(steps=np.arange(5.0), values=[0.1, 0.4, 0.6, 0.7, 0.75]) | kwargs
    with pytest.raises(err, match=match):
        fit_saturating_curve(**args)


def test_fit_interval_bad_parameter():
    t = np.arange(10.0)
    fit = fit_saturating_curve(t, saturating_curve(t, 1.0, 0.0, 3.0) + 0.01 * np.cos(t))
    with pytest.raises(ValueError, match="parameter"):
        fit.interval("slope")
    with pytest.raises(ValueError, match="confidence"):
        fit.interval("tau", 1.0)


# ------------------------------------------------------------------ steps_to_fraction


@given(asymptotes, initials, taus, st.floats(0.5, 0.99))
def test_steps_to_fraction_inverts_the_curve(a, r0, tau, f):
    t_f = steps_to_fraction(a, r0, tau, f)
    if r0 >= f * a:
        assert t_f == 0.0
        return
    assert math.isclose(float(saturating_curve(t_f, a, r0, tau)), f * a, rel_tol=1e-9, abs_tol=1e-12)
    root = optimize.brentq(lambda t: float(saturating_curve(t, a, r0, tau)) - f * a, 0.0, 1e4 * tau, xtol=1e-12)
    assert math.isclose(t_f, root, rel_tol=1e-8, abs_tol=1e-9)


def test_steps_to_fraction_zero_when_started_above():
    assert steps_to_fraction(1.0, 0.95, 5.0, 0.9) == 0.0


@pytest.mark.parametrize(
    ("args", "err", "match"),
    [
        ((1.0, 0.0, 1.0, 1.0), ValueError, "fraction"),
        ((1.0, 0.0, 1.0, 0.0), ValueError, "fraction"),
        ((0.0, -1.0, 1.0, 0.5), ValueError, "asymptote"),
        ((1.0, 0.0, 0.0, 0.5), ValueError, "tau"),
        ((1.0, 2.0, 1.0, 0.5), ValueError, "falls"),
        ((1.0, None, 1.0, 0.5), TypeError, "initial"),
    ],
)
def test_steps_to_fraction_bad_input(args, err, match):
    with pytest.raises(err, match=match):
        steps_to_fraction(*args)


# ------------------------------------------------------------------ normalized_auc


@given(asymptotes, initials, taus)
def test_normalized_auc_closed_form_of_the_saturating_curve(a, r0, tau):
    span = 40.0
    t = np.linspace(0.0, span, 8001)
    closed = (a * span - (a - r0) * tau * (1 - math.exp(-span / tau))) / span
    assert math.isclose(normalized_auc(t, saturating_curve(t, a, r0, tau)), closed, rel_tol=1e-5, abs_tol=1e-7)


def test_normalized_auc_bounds_scipy_and_batches():
    t = np.array([0.0, 1.0, 3.0, 7.0])
    assert normalized_auc(t, np.ones(4)) == pytest.approx(1.0)
    assert normalized_auc(t, np.zeros(4)) == pytest.approx(0.0)
    assert normalized_auc(t, np.full(4, 5.0), low=5.0, high=6.0) == pytest.approx(0.0)
    y = np.random.default_rng(0).uniform(size=(3, 2, 4))
    out = normalized_auc(t, y, low=-1.0, high=2.0)
    assert out.shape == (3, 2)
    ref = (integrate.trapezoid(y + 1.0, t, axis=-1)) / (7.0 * 3.0)
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    assert normalized_auc(torch.arange(4.0), torch.ones(4)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        (dict(values=[1.0]), ValueError, "at least 2"),
        (dict(steps=[0.0, 1.0, 1.0]), ValueError, "increasing"),
        (dict(steps=[0.0, 1.0]), ValueError, "one step per value"),
        (dict(low=1.0, high=1.0), ValueError, "high must be > low"),
        (dict(values=[0.0, np.nan, 1.0]), ValueError, "finite"),
        (dict(values=[True, False, True]), TypeError, "values"),
        (dict(high="1"), TypeError, "high"),
    ],
)
def test_normalized_auc_bad_input(kwargs, err, match):
    args = dict(steps=[0.0, 1.0, 2.0], values=[0.0, 0.5, 1.0]) | kwargs
    with pytest.raises(err, match=match):
        normalized_auc(**args)


# ------------------------------------------------------------------ gradient noise scale


@given(st.floats(0.01, 10.0), st.floats(0.01, 100.0), st.integers(1, 16), st.integers(2, 64))
def test_two_batch_estimators_invert_the_expectations(g2, trace, b, extra):
    """Fed the exact expectations E|G_B|^2 = |G|^2 + tr(Sigma)/B, the estimators return |G|^2 and tr(Sigma)."""
    big = b + extra
    est = gradient_noise_scale(g2 + trace / b, g2 + trace / big, b, big)
    assert isinstance(est, NoiseScale)
    assert math.isclose(est.grad_sq_norm, g2, rel_tol=1e-8, abs_tol=1e-9)
    assert math.isclose(est.trace_cov, trace, rel_tol=1e-8)
    assert math.isclose(est.b_simple, trace / g2, rel_tol=1e-7)


def _gaussian_batches(rng, n_batches, batch, g, scales):
    draws = g + scales * rng.standard_normal((n_batches, batch, g.size))
    return draws


def test_two_batch_estimators_unbiased_by_simulation():
    rng = np.random.default_rng(5)
    g = rng.normal(0, 0.3, 10)
    scales = rng.uniform(0.5, 2.0, 10)
    g2, trace = float(g @ g), float((scales**2).sum())
    draws = _gaussian_batches(rng, 20_000, 16, g, scales)
    small = (draws[:, :2].mean(1) ** 2).sum(1)
    big = (draws.mean(1) ** 2).sum(1)
    # E|G_B|^2 = |G|^2 + tr / B, within 4 Monte Carlo SEs
    for sq, b in ((small, 2), (big, 16)):
        assert abs(sq.mean() - (g2 + trace / b)) < 4 * sq.std(ddof=1) / math.sqrt(sq.size)
    est = gradient_noise_scale(small, big, 2, 16)
    per = np.array(
        [[e.grad_sq_norm, e.trace_cov] for e in map(gradient_noise_scale, small, big, [2] * 2000, [16] * 2000)]
    )
    se = per.std(0, ddof=1) / math.sqrt(small.size)
    assert abs(est.grad_sq_norm - g2) < 4 * se[0]
    assert abs(est.trace_cov - trace) < 4 * se[1]


def test_noise_scale_from_samples_equals_b1_two_batch_and_is_unbiased():
    rng = np.random.default_rng(9)
    g = rng.normal(0, 0.5, 6)
    scales = rng.uniform(0.2, 1.0, 6)
    samples = _gaussian_batches(rng, 3000, 12, g, scales)
    direct = [noise_scale_from_samples(torch.from_numpy(s)) for s in samples]
    s0 = samples[0]
    two = gradient_noise_scale((s0**2).sum(1), float((s0.mean(0) ** 2).sum()), 1, 12)
    assert math.isclose(direct[0].grad_sq_norm, two.grad_sq_norm, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(direct[0].trace_cov, two.trace_cov, rel_tol=1e-9)
    # independent route: numpy's unbiased variance per coordinate
    assert math.isclose(direct[0].trace_cov, float(s0.var(axis=0, ddof=1).sum()), rel_tol=1e-12)
    vals = np.array([[d.grad_sq_norm, d.trace_cov] for d in direct])
    se = vals.std(0, ddof=1) / math.sqrt(len(vals))
    assert abs(vals[:, 0].mean() - g @ g) < 4 * se[0]
    assert abs(vals[:, 1].mean() - (scales**2).sum()) < 4 * se[1]


def test_noise_scale_nonpositive_signal_is_reported_not_hidden():
    est = gradient_noise_scale(1.0, 0.5, 1, 2)  # |G|^2 estimate = (2*0.5 - 1) / 1 = 0
    assert est.grad_sq_norm == 0.0 and est.b_simple == math.inf
    est = gradient_noise_scale(1.0, 0.4, 1, 2)
    assert est.grad_sq_norm < 0 and est.b_simple < 0


def test_noise_scale_accepts_tensors_and_float32():
    est = gradient_noise_scale(
        torch.tensor([2.0, 3.0], dtype=torch.float64), torch.tensor([1.0, 1.2], dtype=torch.float64), 1, 8
    )
    ref = gradient_noise_scale([2.0, 3.0], [1.0, 1.2], 1, 8)
    assert est == ref
    out = noise_scale_from_samples(torch.ones(4, 3, dtype=torch.float32) + torch.eye(4, 3))
    assert math.isfinite(out.trace_cov)


@pytest.mark.parametrize(
    ("args", "err", "match"),
    [
        ((1.0, 0.5, 2, 2), ValueError, "b_big must be > b_small"),
        ((1.0, 0.5, 0, 2), ValueError, "b_small"),
        ((1.0, 0.5, 1, True), TypeError, "b_big"),
        ((-1.0, 0.5, 1, 2), ValueError, "non-negative"),
        (([[1.0]], 0.5, 1, 2), ValueError, "1-D"),
        ((np.nan, 0.5, 1, 2), ValueError, "finite"),
        (("1", 0.5, 1, 2), TypeError, "squared norms"),
        ((None, 0.5, 1, 2), TypeError, "squared norms"),
        (([], 0.5, 1, 2), ValueError, "at least 1"),
    ],
)
def test_gradient_noise_scale_bad_input(args, err, match):
    with pytest.raises(err, match=match):
        gradient_noise_scale(*args)


@pytest.mark.parametrize(
    ("value", "err", "match"),
    [
        (np.ones((3, 2)), TypeError, "torch.Tensor"),
        (torch.ones(3, 2, dtype=torch.long), TypeError, "floating"),
        (torch.ones(3), ValueError, r"\[N, P\]"),
        (torch.ones(1, 3), ValueError, "N >= 2"),
        (torch.tensor([[1.0, math.nan], [0.0, 1.0]]), ValueError, "finite"),
    ],
)
def test_noise_scale_from_samples_bad_input(value, err, match):
    with pytest.raises(err, match=match):
        noise_scale_from_samples(value)
