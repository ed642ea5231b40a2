"""bayesopt: kernels, GP posterior and evidence, profiled hyperparameter fit, expected improvement, search loops."""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nemo_rl_theory.training.bayesopt import (
    GPConfig,
    SearchResult,
    bayesian_optimization,
    expected_improvement,
    expected_improvement_grad,
    fit_gp,
    gp_log_marginal_likelihood,
    gp_posterior,
    kernel_matrix,
    matern52_kernel,
    random_search,
    rbf_kernel,
)

F64 = torch.float64
lengthscales = st.floats(0.05, 3.0)
variances = st.floats(0.1, 5.0)
kernels = st.sampled_from(["rbf", "matern52"])


def _random_points(seed: int, n: int, d: int) -> torch.Tensor:
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _direct_kernel(kind: str, a: list[float], b: list[float], ell: float, var: float) -> float:
    r = math.sqrt(math.fsum((u - v) ** 2 for u, v in zip(a, b, strict=True)))
    if kind == "rbf":
        return var * math.exp(-0.5 * r * r / ell**2)
    s = math.sqrt(5.0) * r / ell
    return var * (1 + s + s * s / 3) * math.exp(-s)


# ----------------------------------------------------------------------------- kernels


@given(seed=st.integers(0, 10_000), ell=lengthscales, var=variances, kind=kernels, d=st.integers(1, 3))
def test_kernels_match_the_pointwise_formula(seed, ell, var, kind, d):
    a, b = _random_points(seed, 5, d), _random_points(seed + 1, 4, d)
    fn = rbf_kernel if kind == "rbf" else matern52_kernel
    got = fn(a, b, lengthscale=ell, variance=var)
    expected = torch.tensor(
        [[_direct_kernel(kind, a[i].tolist(), b[j].tolist(), ell, var) for j in range(4)] for i in range(5)], dtype=F64
    )
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("r_over_ell", [0.0, 0.1, 0.7, 2.5, 6.0])
def test_matern52_is_the_bessel_matern_at_nu_five_halves(r_over_ell):
    # General Matern: 2^(1-nu)/Gamma(nu) (sqrt(2 nu) r/l)^nu K_nu(sqrt(2 nu) r/l), limit 1 at r = 0.
    nu = mpmath.mpf(5) / 2
    if r_over_ell == 0.0:
        reference = 1.0
    else:
        u = mpmath.sqrt(2 * nu) * r_over_ell
        reference = float(2 ** (1 - nu) / mpmath.gamma(nu) * u**nu * mpmath.besselk(nu, u))
    got = matern52_kernel(torch.tensor([[0.0]], dtype=F64), torch.tensor([[r_over_ell]], dtype=F64))
    assert got.item() == pytest.approx(reference, rel=1e-13, abs=1e-300)


@given(seed=st.integers(0, 10_000), ell=lengthscales, kind=kernels)
def test_kernel_matrices_are_symmetric_positive_semidefinite(seed, ell, kind):
    x = _random_points(seed, 12, 2)
    k = kernel_matrix(x, x, GPConfig(kind, lengthscale=ell, variance=1.3))
    torch.testing.assert_close(k, k.T, rtol=0, atol=0)
    assert torch.diagonal(k).sub(1.3).abs().max() <= 1e-14
    assert torch.linalg.eigvalsh(k).min() >= -1e-10


def test_matern_gradient_at_coincident_points_is_zero_not_nan():
    x = torch.tensor([[0.3, 0.4]], dtype=F64, requires_grad=True)
    k = matern52_kernel(x, torch.tensor([[0.3, 0.4]], dtype=F64))
    (g,) = torch.autograd.grad(k.sum(), x)
    assert torch.equal(g, torch.zeros_like(g))


def test_one_dimensional_inputs_are_read_as_columns():
    a = torch.linspace(0, 1, 4, dtype=F64)
    torch.testing.assert_close(rbf_kernel(a, a), rbf_kernel(a[:, None], a[:, None]))


# ----------------------------------------------------------------------------- posterior and evidence


def _direct_posterior(x, y, xs, config):
    k = kernel_matrix(x, x, config) + config.noise * torch.eye(len(x), dtype=F64)
    inv = torch.linalg.inv(k)
    ks = kernel_matrix(x, xs, config)
    mean = config.mean + ks.T @ inv @ (y - config.mean)
    var = torch.diagonal(kernel_matrix(xs, xs, config)) - torch.einsum("nm,nk,km->m", ks, inv, ks)
    return mean, var


@given(seed=st.integers(0, 10_000), kind=kernels, noise=st.floats(1e-4, 0.5), mean=st.floats(-2, 2))
def test_posterior_matches_the_matrix_inverse_formula(seed, kind, noise, mean):
    x, xs = _random_points(seed, 8, 2), _random_points(seed + 7, 6, 2)
    y = torch.randn(8, generator=torch.Generator().manual_seed(seed), dtype=F64)
    config = GPConfig(kind, lengthscale=0.4, variance=1.5, noise=noise, mean=mean)
    mu, var = gp_posterior(x, y, xs, config)
    mu_ref, var_ref = _direct_posterior(x, y, xs, config)
    torch.testing.assert_close(mu, mu_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(var, var_ref.clamp_min(0), rtol=1e-9, atol=1e-9)
    assert bool((var >= 0).all()) and bool((var <= config.variance + 1e-12).all())


@pytest.mark.parametrize("kind", ["rbf", "matern52"])
def test_posterior_interpolates_as_noise_vanishes(kind):
    x = torch.tensor([[0.1], [0.35], [0.6], [0.9]], dtype=F64)
    y = torch.tensor([0.5, -1.0, 2.0, 0.3], dtype=F64)
    mu, var = gp_posterior(x, y, x, GPConfig(kind, lengthscale=0.2, noise=1e-12))
    torch.testing.assert_close(mu, y, rtol=0, atol=1e-8)
    assert var.max() <= 1e-8


def test_posterior_far_from_data_reverts_to_the_prior():
    x = torch.tensor([[0.0], [0.1]], dtype=F64)
    config = GPConfig("rbf", lengthscale=0.05, variance=2.0, noise=1e-3, mean=0.7)
    mu, var = gp_posterior(x, torch.tensor([5.0, -5.0], dtype=F64), torch.tensor([[10.0]], dtype=F64), config)
    assert mu.item() == pytest.approx(0.7, abs=1e-12) and var.item() == pytest.approx(2.0, abs=1e-12)


@given(seed=st.integers(0, 10_000), kind=kernels, noise=st.floats(1e-4, 0.5), mean=st.floats(-2, 2))
def test_log_marginal_likelihood_is_the_multivariate_normal_log_density(seed, kind, noise, mean):
    x = _random_points(seed, 7, 3)
    y = torch.randn(7, generator=torch.Generator().manual_seed(seed), dtype=F64)
    config = GPConfig(kind, lengthscale=0.5, variance=0.8, noise=noise, mean=mean)
    cov = kernel_matrix(x, x, config) + noise * torch.eye(7, dtype=F64)
    reference = torch.distributions.MultivariateNormal(torch.full((7,), mean, dtype=F64), cov).log_prob(y)
    torch.testing.assert_close(gp_log_marginal_likelihood(x, y, config), reference, rtol=1e-11, atol=1e-11)


def test_posterior_is_differentiable_in_the_query_point():
    x = torch.tensor([[0.1], [0.5], [0.8]], dtype=F64)
    y = torch.tensor([0.0, 1.0, 0.2], dtype=F64)
    config = GPConfig("matern52", lengthscale=0.3, noise=1e-4)
    xq = torch.tensor([[0.37]], dtype=F64, requires_grad=True)
    mu, var = gp_posterior(x, y, xq, config)
    (g,) = torch.autograd.grad(mu.sum() + var.sum(), xq)
    h = 1e-6

    def value(q: float) -> float:
        m, v = gp_posterior(x, y, torch.tensor([[q]], dtype=F64), config)
        return float(m.sum() + v.sum())

    assert g.item() == pytest.approx((value(0.37 + h) - value(0.37 - h)) / (2 * h), rel=1e-6)


# ----------------------------------------------------------------------------- hyperparameter fit


@pytest.mark.parametrize("kind", ["rbf", "matern52"])
def test_fit_gp_is_the_grid_maximum_of_the_evidence_with_profiled_variance(kind):
    x = _random_points(3, 10, 1)
    y = torch.sin(6 * x[:, 0]) + 0.05 * torch.randn(10, generator=torch.Generator().manual_seed(4), dtype=F64)
    ells, ratios = [0.05, 0.1, 0.2, 0.4, 0.8], [1e-4, 1e-2, 1e-1]
    fitted = fit_gp(x, y, kernel=kind, lengthscales=ells, noise_ratios=ratios)
    best = gp_log_marginal_likelihood(x, y, fitted).item()
    # Brute force: every grid pair, and the signal variance on a fine multiplicative grid around the profile.
    for ell in ells:
        for ratio in ratios:
            for scale in torch.logspace(-1, 1, 41).tolist():
                var = fitted.variance * scale
                other = GPConfig(kind, lengthscale=ell, variance=var, noise=ratio * var, mean=fitted.mean)
                assert gp_log_marginal_likelihood(x, y, other).item() <= best + 1e-9
    assert fitted.mean == pytest.approx(float(y.mean()))
    assert fitted.lengthscale in ells
    assert any(abs(fitted.noise / fitted.variance - r) <= 1e-12 * r for r in ratios)


def test_profiled_variance_zeroes_the_evidence_derivative():
    x = _random_points(5, 9, 2)
    y = torch.randn(9, generator=torch.Generator().manual_seed(5), dtype=F64)
    fitted = fit_gp(x, y, lengthscales=[0.3], noise_ratios=[1e-2])

    def evidence(log_var: float) -> float:
        var = math.exp(log_var)
        return gp_log_marginal_likelihood(
            x, y, GPConfig("matern52", lengthscale=0.3, variance=var, noise=1e-2 * var, mean=fitted.mean)
        ).item()

    h, at = 1e-5, math.log(fitted.variance)
    assert abs((evidence(at + h) - evidence(at - h)) / (2 * h)) <= 1e-6


# ----------------------------------------------------------------------------- expected improvement


@given(mu=st.floats(-3, 3), sigma=st.floats(0.01, 3), best=st.floats(-3, 3), xi=st.floats(0, 0.5))
def test_expected_improvement_matches_quadrature(mu, sigma, best, xi):
    # E[max(f - best - xi, 0)] by the trapezoid rule over +-12 sigma (float64, 20001 nodes).
    f = torch.linspace(mu - 12 * sigma, mu + 12 * sigma, 20001, dtype=F64)
    density = torch.exp(-0.5 * ((f - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    reference = torch.trapezoid((f - best - xi).clamp_min(0) * density, f).item()
    got = expected_improvement(torch.tensor([mu], dtype=F64), torch.tensor([sigma], dtype=F64), best, xi=xi)
    assert got.item() == pytest.approx(reference, rel=1e-6, abs=1e-10)


def test_expected_improvement_is_accurate_deep_in_the_lower_tail():
    # Reference: z Phi(z) + phi(z) in 60-digit arithmetic; the naive sum loses everything near z = -9.
    z = torch.tensor([-37.0, -30.0, -20.0, -12.0, -9.0, -8.0, -6.0, -1.0, 0.0, 0.5, 3.0, 40.0], dtype=F64)
    with mpmath.workdps(60):
        exact = torch.tensor([float(mpmath.mpf(v) * mpmath.ncdf(v) + mpmath.npdf(v)) for v in z.tolist()], dtype=F64)
        cdf = torch.tensor([float(mpmath.ncdf(v)) for v in z.tolist()], dtype=F64)
    leaf = z.clone().requires_grad_(True)
    ei = expected_improvement(leaf, torch.ones_like(z), 0.0)
    (grad,) = torch.autograd.grad(ei.sum(), leaf)
    assert ((ei.detach() - exact).abs() / exact).max() <= 1e-12
    assert ((grad - cdf).abs() / cdf).max() <= 1e-12  # d EI / d mu = Phi(z), through autograd


@given(z=st.floats(-200, 200))
def test_expected_improvement_gradient_is_finite_everywhere(z):
    leaf = torch.tensor([z], dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(expected_improvement(leaf, torch.ones(1, dtype=F64), 0.0).sum(), leaf)
    assert torch.isfinite(grad).all() and 0.0 <= grad.item() <= 1.0


def test_expected_improvement_matches_monte_carlo():
    mu, sigma, best = torch.tensor([0.2, -1.0, 1.5], dtype=F64), torch.tensor([1.0, 0.5, 0.3], dtype=F64), 0.4
    g = torch.Generator().manual_seed(0)
    samples = mu + sigma * torch.randn(400_000, 3, generator=g, dtype=F64)
    gains = (samples - best).clamp_min(0)
    mc, stderr = gains.mean(0), gains.std(0) / math.sqrt(400_000)
    ei = expected_improvement(mu, sigma, best)
    assert bool(((ei - mc).abs() <= 5 * stderr + 1e-12).all()), (ei, mc, stderr)


@given(mu=st.floats(-3, 3), sigma=st.floats(0.01, 3), best=st.floats(-3, 3), xi=st.floats(0, 0.5))
def test_closed_form_gradient_matches_autograd(mu, sigma, best, xi):
    m = torch.tensor([mu], dtype=F64, requires_grad=True)
    s = torch.tensor([sigma], dtype=F64, requires_grad=True)
    dm, ds = torch.autograd.grad(expected_improvement(m, s, best, xi=xi).sum(), (m, s))
    cm, cs = expected_improvement_grad(m.detach(), s.detach(), best, xi=xi)
    torch.testing.assert_close(dm, cm, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ds, cs, rtol=1e-10, atol=1e-12)


def test_zero_std_gives_the_deterministic_improvement_and_its_gradient():
    mu = torch.tensor([1.0, 0.0, -1.0], dtype=F64)
    sigma = torch.zeros(3, dtype=F64)
    assert expected_improvement(mu, sigma, 0.0).tolist() == [1.0, 0.0, 0.0]
    dm, ds = expected_improvement_grad(mu, sigma, 0.0)
    assert dm.tolist() == [1.0, 0.0, 0.0]
    assert ds.tolist() == [0.0, pytest.approx(1 / math.sqrt(2 * math.pi)), 0.0]


@given(z=st.floats(-60, 60), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_expected_improvement_is_finite_non_negative_and_above_the_plug_in(z, dtype):
    ei = expected_improvement(torch.tensor([z], dtype=dtype), torch.tensor([1.0], dtype=dtype), 0.0)
    assert torch.isfinite(ei).all() and ei.item() >= 0.0
    assert ei.item() >= max(z, 0.0) * (1 - 1e-6)  # Jensen: E[max(f, 0)] >= max(E f, 0)


def test_expected_improvement_is_monotone_in_mean_and_std():
    grid = torch.linspace(-4, 4, 81, dtype=F64)
    along_mean = expected_improvement(grid, torch.full_like(grid, 0.7), 0.0)
    along_std = expected_improvement(torch.full_like(grid, -0.5), grid.abs() + 0.01, 0.0)
    assert bool((along_mean.diff() > 0).all())
    order = torch.argsort(grid.abs())
    assert bool((along_std[order].diff() >= 0).all())


# ----------------------------------------------------------------------------- search loops


def _bump(x: torch.Tensor) -> float:
    return -float(((x - 0.63) ** 2).sum())


def test_bayesian_optimization_finds_the_maximum_of_a_smooth_bump():
    grid = torch.linspace(0, 1, 101, dtype=F64)[:, None]
    result = bayesian_optimization(_bump, grid, n_initial=3, n_iterations=6, generator=torch.Generator().manual_seed(0))
    assert isinstance(result, SearchResult)
    assert len(set(result.indices.tolist())) == 9
    assert float(result.x[result.y.argmax(), 0]) == pytest.approx(0.63, abs=0.011)
    torch.testing.assert_close(result.best_so_far(), torch.cummax(result.y, 0).values)
    torch.testing.assert_close(result.y, torch.tensor([_bump(x) for x in result.x], dtype=F64))


def test_searches_are_deterministic_given_the_generator():
    grid = torch.linspace(0, 1, 51, dtype=F64)[:, None]
    for run in (
        lambda g: bayesian_optimization(_bump, grid, n_initial=2, n_iterations=3, generator=g),
        lambda g: random_search(_bump, grid, n_evaluations=5, generator=g),
    ):
        a, b = run(torch.Generator().manual_seed(7)), run(torch.Generator().manual_seed(7))
        assert torch.equal(a.indices, b.indices) and torch.equal(a.y, b.y)


def test_random_search_draws_distinct_candidates():
    grid = torch.linspace(0, 1, 20, dtype=F64)[:, None]
    result = random_search(_bump, grid, n_evaluations=20, generator=torch.Generator().manual_seed(1))
    assert sorted(result.indices.tolist()) == list(range(20))


def test_a_flat_start_is_explored_at_random_instead_of_fitting_a_constant():
    grid = torch.linspace(0, 1, 30, dtype=F64)[:, None]

    def step(x: torch.Tensor) -> float:
        return float(x[0] > 0.9)

    result = bayesian_optimization(step, grid, n_initial=2, n_iterations=10, generator=torch.Generator().manual_seed(2))
    assert len(set(result.indices.tolist())) == 12


# ----------------------------------------------------------------------------- failure paths


def test_bad_inputs_are_rejected_with_the_argument_named():
    x = torch.rand(4, 2, dtype=F64)
    y = torch.rand(4, dtype=F64)
    config = GPConfig()
    with pytest.raises(TypeError, match="x1 must be a floating-point tensor"):
        rbf_kernel(torch.ones(2, 2, dtype=torch.long), x)
    with pytest.raises(ValueError, match="x1 and x2 must have the same number of dimensions"):
        rbf_kernel(x, torch.rand(3, 3, dtype=F64))
    with pytest.raises(TypeError, match="same dtype"):
        rbf_kernel(x, x.float())
    with pytest.raises(ValueError, match=r"x_train must have shape \[N, D\]"):
        gp_posterior(torch.rand(2, 2, 2, dtype=F64), y, x, config)
    with pytest.raises(ValueError, match="lengthscale must be a finite number"):
        matern52_kernel(x, x, lengthscale=0.0)
    with pytest.raises(ValueError, match="x_test must be finite"):
        gp_posterior(x, y, torch.tensor([[math.nan, 0.0]], dtype=F64), config)
    with pytest.raises(ValueError, match=r"y_train must have shape \[N\] = \[4\]"):
        gp_posterior(x, y[:3], x, config)
    with pytest.raises(ValueError, match="y_train must be finite"):
        gp_log_marginal_likelihood(x, torch.tensor([0.0, math.inf, 0.0, 0.0], dtype=F64), config)
    with pytest.raises(ValueError, match="at least one point"):
        gp_posterior(x[:0], y[:0], x, config)
    with pytest.raises(ValueError, match="kernel must be one of"):
        GPConfig(kernel="periodic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="noise must be a finite number"):
        GPConfig(noise=-1e-3)
    with pytest.raises(TypeError, match="config must be a GPConfig"):
        kernel_matrix(x, x, {"kernel": "rbf"})  # type: ignore[arg-type]


def test_a_singular_kernel_matrix_is_an_error_not_a_nan():
    x = torch.tensor([[0.2], [0.2]], dtype=F64)
    with pytest.raises(ValueError, match="not positive definite"):
        gp_posterior(x, torch.tensor([0.0, 1.0], dtype=F64), x, GPConfig(noise=0.0))


def test_fit_gp_rejects_what_it_cannot_fit():
    x = torch.rand(5, 1, dtype=F64)
    with pytest.raises(ValueError, match="must not be constant"):
        fit_gp(x, torch.ones(5, dtype=F64))
    with pytest.raises(ValueError, match="at least two points"):
        fit_gp(x[:1], torch.ones(1, dtype=F64))
    with pytest.raises(ValueError, match="lengthscales must be finite and > 0"):
        fit_gp(x, torch.rand(5, dtype=F64), lengthscales=[0.1, -1.0])
    with pytest.raises(ValueError, match="noise_ratios must not be empty"):
        fit_gp(x, torch.rand(5, dtype=F64), noise_ratios=[])
    with pytest.raises(TypeError, match="lengthscales must be a sequence"):
        fit_gp(x, torch.rand(5, dtype=F64), lengthscales=0.1)  # type: ignore[arg-type]


def test_expected_improvement_rejects_bad_inputs():
    mu, sigma = torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)
    with pytest.raises(ValueError, match="std must be finite and >= 0"):
        expected_improvement(mu, -sigma, 0.0)
    with pytest.raises(ValueError, match="mean must be finite"):
        expected_improvement(torch.tensor([math.nan, 0, 0], dtype=F64), sigma, 0.0)
    with pytest.raises(ValueError, match="mean and std must have the same shape"):
        expected_improvement(mu, sigma[:2], 0.0)
    with pytest.raises(ValueError, match="best must be a finite number"):
        expected_improvement(mu, sigma, math.inf)
    with pytest.raises(ValueError, match="best must be a scalar"):
        expected_improvement(mu, sigma, torch.zeros(2))
    with pytest.raises(ValueError, match="xi must be a finite number"):
        expected_improvement_grad(mu, sigma, 0.0, xi=-0.1)
    with pytest.raises(TypeError, match="std must be a floating-point tensor"):
        expected_improvement(mu, torch.ones(3, dtype=torch.long), 0.0)


def test_search_loops_reject_bad_budgets_generators_and_objectives():
    grid = torch.linspace(0, 1, 5, dtype=F64)[:, None]
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="cannot evaluate 6 distinct points among 5"):
        random_search(_bump, grid, n_evaluations=6, generator=g)
    with pytest.raises(ValueError, match="n_initial must be an int >= 2"):
        bayesian_optimization(_bump, grid, n_initial=1, n_iterations=1, generator=g)
    with pytest.raises(ValueError, match="n_evaluations must be an int >= 1"):
        random_search(_bump, grid, n_evaluations=0, generator=g)
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator"):
        random_search(_bump, grid, n_evaluations=2, generator=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="objective must return a finite number"):
        random_search(lambda x: math.nan, grid, n_evaluations=2, generator=g)
