"""Tests for nemo_rl_theory.research.tuning: winner's curse, expected best score vs budget, halving."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from nemo_rl_theory.research.tuning import (
    MAX_NORMALS,
    HalvingSchedule,
    expected_max_of_normals,
    expected_max_score,
    max_score_std,
    order_statistic_weights,
    successive_halving_schedule,
    winners_curse_bias,
)

# ----------------------------------------------------------------------------- expected max of normals


def test_expected_max_of_normals_closed_forms() -> None:
    """e_1 = 0, e_2 = 1/sqrt(pi), e_3 = 3/(2 sqrt(pi)), e_4 and e_5 with arcsin(1/3) (David & Nagaraja)."""
    rp = math.sqrt(math.pi)
    a = math.asin(1 / 3)
    known = {
        1: 0.0,
        2: 1 / rp,
        3: 3 / (2 * rp),
        4: 3 / rp * (1 / 2 + a / math.pi),
        5: 5 / (4 * rp) * (1 + 6 * a / math.pi),
    }
    for n, want in known.items():
        assert expected_max_of_normals(n) == pytest.approx(want, abs=1e-12), n


@pytest.mark.parametrize("n", [2, 7, 30, 1000, 10**5])
def test_expected_max_of_normals_against_density_integral(n: int) -> None:
    """The other textbook route: integrate z times the density n phi(z) Phi(z)^(n-1)."""

    def density(z: float) -> float:
        return z * n * stats.norm.pdf(z) * math.exp((n - 1) * stats.norm.logcdf(z))

    mode = math.sqrt(2 * math.log(n))
    want = integrate.quad(density, -15, 15, points=[mode], limit=400, epsabs=1e-13)[0]
    assert expected_max_of_normals(n) == pytest.approx(want, abs=1e-9)


def test_expected_max_of_normals_monte_carlo_and_growth() -> None:
    rng = np.random.default_rng(0)
    draws = rng.standard_normal((200_000, 12)).max(axis=1)
    se = draws.std() / math.sqrt(draws.size)
    assert abs(draws.mean() - expected_max_of_normals(12)) < 5 * se
    values = [expected_max_of_normals(n) for n in (1, 2, 5, 50, 10**4, MAX_NORMALS)]
    assert all(b > a for a, b in itertools.pairwise(values))
    assert values[-1] < math.sqrt(2 * math.log(MAX_NORMALS))  # e_n < sqrt(2 ln n) for n >= 2


def test_winners_curse_bias_simulated_and_bound() -> None:
    rng = np.random.default_rng(1)
    sigma, n = 0.3, 8
    # Tied true values: the bias equals sigma * e_n.
    y = sigma * rng.standard_normal((100_000, n))
    bias = y.max(axis=1)
    assert abs(bias.mean() - winners_curse_bias(n, sigma)) < 5 * bias.std() / math.sqrt(bias.size)
    # Spread true values: smaller but positive bias, and fresh re-evaluation removes it.
    mu = np.linspace(0, 0.5, n)
    y = mu + sigma * rng.standard_normal((100_000, n))
    win = y.argmax(axis=1)
    err = y[np.arange(y.shape[0]), win] - mu[win]
    fresh = sigma * rng.standard_normal(y.shape[0])
    assert 0 < err.mean() < winners_curse_bias(n, sigma)
    assert abs(fresh.mean()) < 5 * sigma / math.sqrt(fresh.size)
    assert winners_curse_bias(n, 0.0) == 0.0


# ----------------------------------------------------------------------------- expected best vs budget


def brute_force(scores: list[float], n: int, replace: bool) -> Fraction:
    """Average of the max over every n-tuple (with replacement) or every n-subset (without)."""
    vals = [Fraction(s) for s in scores]
    draws = itertools.product(vals, repeat=n) if replace else itertools.combinations(vals, n)
    maxima = [max(d) for d in draws]
    return sum(maxima, Fraction(0)) / len(maxima)


def brute_force_second_moment(scores: list[float], n: int, replace: bool) -> Fraction:
    vals = [Fraction(s) for s in scores]
    draws = itertools.product(vals, repeat=n) if replace else itertools.combinations(vals, n)
    maxima = [max(d) ** 2 for d in draws]
    return sum(maxima, Fraction(0)) / len(maxima)


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.integers(-5, 5), min_size=1, max_size=6),  # small integers: ties are common
    replace=st.booleans(),
)
def test_expected_max_score_equals_enumeration(scores: list[int], replace: bool) -> None:
    N = len(scores)
    budgets = list(range(1, (4 if replace else N) + 1))
    got = expected_max_score(scores, budgets, replace=replace)
    sd = max_score_std(scores, budgets, replace=replace)
    for n, g, s in zip(budgets, got, sd, strict=True):
        m1 = brute_force(scores, n, replace)
        m2 = brute_force_second_moment(scores, n, replace)
        assert g == pytest.approx(float(m1), abs=1e-12)
        assert s == pytest.approx(math.sqrt(float(m2 - m1 * m1)), abs=1e-6)


def test_expected_max_score_monte_carlo_large() -> None:
    rng = np.random.default_rng(2)
    scores = rng.normal(size=200)
    for replace in (True, False):
        idx = np.stack([rng.choice(200, size=15, replace=replace) for _ in range(20_000)])
        maxima = scores[idx].max(axis=1)
        want = expected_max_score(scores, 15, replace=replace)
        assert isinstance(want, float)
        assert abs(maxima.mean() - want) < 5 * maxima.std() / math.sqrt(maxima.size)
        assert max_score_std(scores, 15, replace=replace) == pytest.approx(maxima.std(), rel=0.05)


@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=40), st.booleans())
def test_expected_max_score_properties(scores: list[float], replace: bool) -> None:
    N = len(scores)
    budgets = np.arange(1, N + 1)
    w = order_statistic_weights(N, budgets, replace=replace)
    assert w.shape == (N, N)
    assert np.all(w >= 0) and np.allclose(w.sum(axis=1), 1.0)
    e = expected_max_score(scores, budgets, replace=replace)
    tol = 1e-9 * (1 + max(abs(s) for s in scores))
    assert e[0] == pytest.approx(np.mean(scores), abs=tol)  # one draw: the mean
    assert np.all(np.diff(e) >= -tol)  # more budget never hurts
    assert np.all(e <= max(scores) + tol)
    if not replace:
        assert e[-1] == pytest.approx(max(scores), abs=tol)  # all N without replacement: the max


def test_expected_max_score_large_budget_and_inputs() -> None:
    scores = torch.tensor([0.1, 0.5, 0.3])
    assert expected_max_score(scores, 10**6) == pytest.approx(0.5, abs=1e-12)
    assert expected_max_score(np.array([2.0]), [1, 5]).tolist() == [2.0, 2.0]
    w = order_statistic_weights(5000, [1, 2500, 5000], replace=False)
    assert np.allclose(w.sum(axis=1), 1.0) and w[2, -1] == pytest.approx(1.0)
    assert isinstance(expected_max_score([1.0, 2.0], np.array([1, 2])), np.ndarray)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"scores": [], "budgets": 1}, ValueError, "scores"),
        ({"scores": [[1.0, 2.0]], "budgets": 1}, ValueError, "scores"),
        ({"scores": [1.0, float("nan")], "budgets": 1}, ValueError, "finite"),
        ({"scores": "abc", "budgets": 1}, TypeError, "scores"),
        ({"scores": None, "budgets": 1}, TypeError, "scores"),
        ({"scores": [1 + 2j], "budgets": 1}, TypeError, "scores"),
        ({"scores": [1.0], "budgets": 0}, ValueError, "budgets"),
        ({"scores": [1.0], "budgets": 1.0}, TypeError, "budgets"),
        ({"scores": [1.0], "budgets": True}, TypeError, "budgets"),
        ({"scores": [1.0], "budgets": []}, ValueError, "budgets"),
        ({"scores": [1.0], "budgets": [1.5]}, TypeError, "budgets"),
        ({"scores": [1.0, 2.0], "budgets": 3, "replace": False}, ValueError, "without replacement"),
        ({"scores": [1.0], "budgets": 1, "replace": 1}, TypeError, "replace"),
    ],
)
def test_expected_max_score_bad_input(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        expected_max_score(**kwargs)
    with pytest.raises(error, match=match):
        max_score_std(**kwargs)


def test_order_statistic_weights_bad_input() -> None:
    with pytest.raises(ValueError, match="num_scores"):
        order_statistic_weights(0, 1)
    with pytest.raises(TypeError, match="num_scores"):
        order_statistic_weights(2.0, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="replace"):
        order_statistic_weights(2, 1, replace=None)  # type: ignore[arg-type]


def test_expected_max_of_normals_bad_input() -> None:
    with pytest.raises(ValueError, match="n must be"):
        expected_max_of_normals(0)
    with pytest.raises(ValueError, match="n must be"):
        expected_max_of_normals(MAX_NORMALS + 1)
    with pytest.raises(TypeError, match="n must be"):
        expected_max_of_normals(2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="noise_std"):
        winners_curse_bias(3, -1.0)
    with pytest.raises(TypeError, match="n must be"):
        winners_curse_bias(True, 1.0)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- successive halving


def simulate_halving(n: int, r: int, eta: int, max_resource: int | None, resume: bool) -> tuple[list, list, int]:
    """Run synchronous successive halving literally on random scores, counting every unit trained."""
    rng = np.random.default_rng(n * 100 + eta)
    alive = list(range(n))
    trained = dict.fromkeys(alive, 0)
    counts, resources, spent = [], [], 0
    target = r
    while True:
        for t in alive:
            start = trained[t] if resume else 0
            spent += target - start
            trained[t] = target
        counts.append(len(alive))
        resources.append(target)
        keep = len(alive) // eta
        if len(alive) == 1 or keep < 1 or (max_resource is not None and target * eta > max_resource):
            break
        scores = rng.normal(size=len(alive))
        alive = [alive[i] for i in np.argsort(-scores)[:keep]]
        target *= eta
    return counts, resources, spent


@given(
    n=st.integers(1, 300),
    r=st.integers(1, 5),
    eta=st.integers(2, 5),
    cap=st.one_of(st.none(), st.integers(1, 400)),
    resume=st.booleans(),
)
def test_successive_halving_schedule_matches_a_literal_run(
    n: int, r: int, eta: int, cap: int | None, resume: bool
) -> None:
    if cap is not None and cap < r:
        with pytest.raises(ValueError, match="max_resource"):
            successive_halving_schedule(n, r, eta, max_resource=cap, resume=resume)
        return
    s = successive_halving_schedule(n, r, eta, max_resource=cap, resume=resume)
    counts, resources, spent = simulate_halving(n, r, eta, cap, resume)
    # Keeping floor(n_i / eta) of the survivors each rung gives floor(n / eta^(i+1)) (nested floors).
    assert list(s.trials) == counts
    assert list(s.resources) == resources
    assert s.total == spent == sum(s.steps)
    assert s.full_sweep == n * resources[-1]
    assert s.fraction == s.total / s.full_sweep <= 1.0 + 1e-12 or not resume


def test_successive_halving_schedule_hyperband_bracket() -> None:
    """Li et al. (2018), Table 1 (R = 81, eta = 3), bracket s = 4: 81/27/9/3/1 trials at 1/3/9/27/81."""
    s = successive_halving_schedule(81, 1, 3, max_resource=81, resume=False)
    assert s.trials == (81, 27, 9, 3, 1)
    assert s.resources == (1, 3, 9, 27, 81)
    assert s.steps == (81, 81, 81, 81, 81) and s.total == 405
    s = successive_halving_schedule(81, 1, 3, max_resource=81)
    assert s.steps == (81, 54, 54, 54, 54) and s.full_sweep == 81 * 81
    assert isinstance(s, HalvingSchedule)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((0, 1, 3), {}, ValueError, "n_trials"),
        ((9, 0, 3), {}, ValueError, "min_resource"),
        ((9, 1, 1), {}, ValueError, "reduction_factor"),
        ((9, 1, 3.0), {}, TypeError, "reduction_factor"),
        ((9, 2, 3), {"max_resource": 1}, ValueError, "max_resource"),
        ((9, 2, 3), {"max_resource": 2.0}, TypeError, "max_resource"),
        ((9, 2, 3), {"resume": "yes"}, TypeError, "resume"),
    ],
)
def test_successive_halving_schedule_bad_input(args: tuple, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        successive_halving_schedule(*args, **kwargs)
