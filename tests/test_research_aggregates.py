"""Tests for nemo_rl_theory.research.aggregates (Agarwal et al. 2021 aggregates), against
independent computations: hand sort-and-slice, brute-force pair counting, scipy's Mann–Whitney U,
scipy's own bootstrap for one task, a hand-written stratified bootstrap, and Monte Carlo coverage."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from nemo_rl_theory.research.aggregates import (
    BootstrapInterval,
    iqm,
    optimality_gap,
    performance_profile,
    probability_of_improvement,
    probability_of_improvement_interval,
    stratified_bootstrap_interval,
)

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
small_ints = st.integers(-3, 3)  # many ties


def score_arrays(min_runs: int = 1, max_runs: int = 8, max_tasks: int = 5, elements=finite):
    return hnp.arrays(
        np.float64,
        st.tuples(st.integers(min_runs, max_runs), st.integers(1, max_tasks)),
        elements=elements,
    )


# ----------------------------------------------------------------------------- IQM


def hand_iqm(values: np.ndarray) -> float:
    """Sort all values, drop floor(N/4) from each end, average the rest."""
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    g = len(x) // 4
    kept = x[g : len(x) - g]
    return math.fsum(kept) / len(kept)


@given(score_arrays(max_runs=12, max_tasks=6))
def test_iqm_is_the_sorted_middle_half_of_all_runs_and_tasks(scores: np.ndarray) -> None:
    assert iqm(scores) == pytest.approx(hand_iqm(scores), rel=1e-9, abs=1e-6)


def test_iqm_trimming_convention_cuts_whole_values() -> None:
    # N = 10: int(2.5) = 2 values cut from each end, the middle 6 kept (no fractional weights).
    scores = np.array([[100.0, 1, 2, 3, 4], [5, 6, 7, 8, -100]])
    assert iqm(scores) == pytest.approx(np.mean([2, 3, 4, 5, 6, 7]))
    # N = 3 < 4: nothing cut, the plain mean.
    assert iqm([[1.0, 2.0, 30.0]]) == pytest.approx(11.0)
    # N = 8: two cut each end, middle four.
    assert iqm(np.arange(8.0).reshape(2, 4)) == pytest.approx(3.5)


def test_iqm_pools_runs_and_tasks_not_per_task() -> None:
    # Per-task IQMs averaged would differ from the pooled IQM.
    scores = np.array([[0.0, 10.0], [1.0, 11.0], [2.0, 30.0], [3.0, 13.0]])
    per_task = np.mean([hand_iqm(scores[:, t]) for t in range(2)])
    assert iqm(scores) == pytest.approx(hand_iqm(scores))
    assert iqm(scores) != pytest.approx(per_task)


@given(score_arrays(min_runs=1, max_runs=6, max_tasks=4), st.integers(1, 3))
def test_iqm_axis_reduces_only_the_named_axes(scores: np.ndarray, batch: int) -> None:
    stacked = np.stack([scores + i for i in range(batch)])  # [batch, runs, tasks]
    out = iqm(stacked, axis=(-2, -1))
    assert out.shape == (batch,)
    for i in range(batch):
        assert out[i] == pytest.approx(hand_iqm(stacked[i]), rel=1e-9, abs=1e-6)
    per_task = iqm(scores, axis=0)
    for t in range(scores.shape[1]):
        assert per_task[t] == pytest.approx(hand_iqm(scores[:, t]), rel=1e-9, abs=1e-6)


@given(score_arrays(max_runs=8), st.floats(-100, 100), st.floats(0.01, 100))
def test_iqm_is_affine_equivariant_and_order_free(scores: np.ndarray, shift: float, scale: float) -> None:
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(scores.ravel()).reshape(scores.shape)
    assert iqm(shuffled) == pytest.approx(iqm(scores), rel=1e-9, abs=1e-6)
    assert iqm(shift + scale * scores) == pytest.approx(shift + scale * iqm(scores), rel=1e-9, abs=1e-4)


def test_iqm_accepts_lists_ints_and_tensors() -> None:
    expected = hand_iqm(np.arange(12.0))
    assert iqm(list(range(12))) == pytest.approx(expected)
    assert iqm(torch.arange(12.0).reshape(3, 4)) == pytest.approx(expected)
    assert isinstance(iqm(np.arange(12)), float)


# ----------------------------------------------------------------------------- optimality gap, profiles


@given(score_arrays(max_runs=6, elements=st.floats(-3, 3)), st.floats(-2, 2))
def test_optimality_gap_matches_a_loop(scores: np.ndarray, gamma: float) -> None:
    loop = math.fsum(gamma - min(v, gamma) for v in scores.ravel()) / scores.size
    assert optimality_gap(scores, gamma) == pytest.approx(loop, abs=1e-12)
    assert optimality_gap(scores, gamma) >= 0.0
    assert np.allclose(optimality_gap(scores[None], gamma, axis=(-2, -1)), [loop])


@given(score_arrays(max_runs=6, elements=small_ints.map(float)), st.booleans())
def test_performance_profile_matches_a_loop(scores: np.ndarray, task_means: bool) -> None:
    taus = np.linspace(-4, 4, 17)
    prof = performance_profile(scores, taus, task_means=task_means)
    values = scores.mean(axis=0) if task_means else scores.ravel()
    for k, tau in enumerate(taus):
        assert prof[k] == sum(1 for v in values if v > tau) / len(values)
    assert np.all(np.diff(prof) <= 0)


# ----------------------------------------------------------------------------- probability of improvement


def brute_force_poi(x: np.ndarray, y: np.ndarray) -> float:
    per_task = []
    for t in range(x.shape[1]):
        wins = 0.0
        for a in x[:, t]:
            for b in y[:, t]:
                wins += 1.0 if a > b else 0.5 if a == b else 0.0
        per_task.append(wins / (x.shape[0] * y.shape[0]))
    return float(np.mean(per_task))


pair_of_scores = st.integers(1, 5).flatmap(
    lambda tasks: st.tuples(
        hnp.arrays(np.float64, st.tuples(st.integers(1, 7), st.just(tasks)), elements=small_ints.map(float)),
        hnp.arrays(np.float64, st.tuples(st.integers(1, 7), st.just(tasks)), elements=small_ints.map(float)),
    )
)


@given(pair_of_scores)
def test_poi_equals_brute_force_pair_counting_with_ties(pair: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = pair
    assert probability_of_improvement(x, y) == pytest.approx(brute_force_poi(x, y), abs=1e-12)


@given(pair_of_scores)
def test_poi_is_mann_whitney_u_over_nm_and_antisymmetric(pair: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = pair
    n, m = x.shape[0], y.shape[0]
    u = [stats.mannwhitneyu(x[:, t], y[:, t], alternative="greater").statistic for t in range(x.shape[1])]
    p = probability_of_improvement(x, y)
    assert p == pytest.approx(np.mean(u) / (n * m), abs=1e-12)
    assert p + probability_of_improvement(y, x) == pytest.approx(1.0, abs=1e-12)
    assert probability_of_improvement(x, x) == pytest.approx(0.5, abs=1e-12)


def test_poi_of_separated_algorithms_is_one() -> None:
    x = np.full((3, 4), 2.0)
    y = np.zeros((5, 4))
    assert probability_of_improvement(x, y) == 1.0
    assert probability_of_improvement(y, x) == 0.0


# ----------------------------------------------------------------------------- stratified bootstrap


def test_single_task_agrees_with_scipy_bootstrap() -> None:
    rng = np.random.default_rng(3)
    runs = rng.gamma(2.0, 1.0, size=15)

    def trimmed(x, axis=-1):
        return stats.trim_mean(x, 0.25, axis=axis)

    for method in ("percentile", "basic"):
        ours = stratified_bootstrap_interval(runs[:, None], iqm, n_resamples=2000, method=method, rng=7)
        ref = stats.bootstrap((runs,), trimmed, n_resamples=2000, method=method, rng=np.random.default_rng(7))
        assert ours.low == pytest.approx(ref.confidence_interval.low, rel=1e-12)
        assert ours.high == pytest.approx(ref.confidence_interval.high, rel=1e-12)
        assert ours.standard_error == pytest.approx(ref.standard_error, rel=1e-12)
        assert ours.estimate == pytest.approx(trimmed(runs))


def hand_stratified_bootstrap(scores: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """IQM of B resamples; each task's runs drawn with replacement independently (a loop per task)."""
    rng = np.random.default_rng(seed)
    runs, tasks = scores.shape
    out = np.empty(n_resamples)
    for b in range(n_resamples):
        resample = np.empty_like(scores)
        for t in range(tasks):
            resample[:, t] = scores[rng.integers(0, runs, runs), t]
        out[b] = hand_iqm(resample)
    return out


def test_interval_agrees_with_a_hand_written_stratified_bootstrap() -> None:
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(6, 4)) * np.array([1.0, 3.0, 0.5, 2.0]) + np.array([0.0, 1.0, 5.0, 2.0])
    b = 20000
    ours = stratified_bootstrap_interval(scores, iqm, n_resamples=b, rng=1)
    hand = hand_stratified_bootstrap(scores, b, seed=2)
    low, high = np.quantile(hand, [0.025, 0.975])
    # Independent draws: each endpoint's Monte Carlo s.e. is about 0.02 bootstrap s.d.;
    # allow 0.15 (> 5 s.e. of the difference).
    se = hand.std(ddof=1)
    assert abs(ours.low - low) < 0.15 * se
    assert abs(ours.high - high) < 0.15 * se
    assert ours.standard_error == pytest.approx(se, rel=0.03)


def test_resamples_keep_strata_and_draw_with_replacement_per_task() -> None:
    runs, tasks = 5, 4
    # Column t holds 100 t + r: a value tells which task and run it came from.
    scores = 100.0 * np.arange(tasks)[None, :] + np.arange(runs)[:, None]
    seen: list[np.ndarray] = []

    def recorder(x: np.ndarray, axis=(-2, -1)) -> np.ndarray:
        assert axis == (-2, -1)
        assert x.shape[-2:] == (runs, tasks)  # every resample: the same runs per task
        seen.append(x.reshape(-1, runs, tasks).copy())
        return x.mean(axis=(-2, -1))

    stratified_bootstrap_interval(scores, recorder, n_resamples=500, rng=0)
    resamples = np.concatenate([s for s in seen if s.shape[0] > 1])
    assert resamples.shape == (500, runs, tasks)
    task_of = resamples // 100
    assert np.all(task_of == np.arange(tasks))  # no value leaves its task
    run_of = resamples % 100
    # with replacement: some resample repeats a run within a task
    assert any(len(set(run_of[b, :, 0])) < runs for b in range(500))
    # independently per task: the run indices are not the same row pattern across tasks
    assert np.mean(np.all(run_of == run_of[:, :, :1], axis=(1, 2))) < 0.01


def test_interval_of_the_mean_covers_the_truth_at_the_nominal_rate() -> None:
    # Fixed tasks with known means; runs i.i.d. normal. The estimand is the mean of the task
    # means (the tasks are fixed, only runs vary). The percentile interval uses the plug-in
    # variance (R - 1)/R, so its coverage is about 2 Phi(1.96 sqrt(29/30)) - 1 = 0.946.
    rng = np.random.default_rng(5)
    mu = np.array([0.0, 2.0, 5.0, 10.0, 20.0])
    runs, reps = 30, 2000
    hits = 0
    for _ in range(reps):
        scores = mu + rng.standard_normal((runs, mu.size))
        hits += stratified_bootstrap_interval(scores, np.mean, n_resamples=999, rng=rng).covers(mu.mean())
    coverage = hits / reps
    se = math.sqrt(0.95 * 0.05 / reps)  # 0.0049
    assert abs(coverage - 0.946) < 4 * se, coverage


def test_poi_interval_covers_the_true_probability() -> None:
    # X ~ N(d_t, 1), Y ~ N(0, 1) on task t: P_t = Phi(d_t / sqrt 2) exactly.
    rng = np.random.default_rng(6)
    d = np.array([0.3, 0.0, -0.5])
    truth = float(stats.norm.cdf(d / math.sqrt(2)).mean())
    reps, hits = 400, 0
    for _ in range(reps):
        x = d + rng.standard_normal((10, d.size))
        y = rng.standard_normal((12, d.size))
        hits += probability_of_improvement_interval(x, y, n_resamples=999, rng=rng).covers(truth)
    se = math.sqrt(0.95 * 0.05 / reps)  # 0.011
    assert abs(hits / reps - 0.95) < 4 * se


def test_poi_interval_estimate_and_independent_strata() -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(0.5, 1.0, size=(6, 3))
    y = rng.normal(0.0, 1.0, size=(9, 3))
    ci = probability_of_improvement_interval(x, y, n_resamples=2000, rng=0)
    assert ci.estimate == pytest.approx(brute_force_poi(x, y))
    assert 0.0 <= ci.low <= ci.estimate <= ci.high <= 1.0
    assert isinstance(ci, BootstrapInterval) and ci.method == "percentile" and ci.n_resamples == 2000


def test_statistic_without_axis_gives_the_same_interval() -> None:
    rng = np.random.default_rng(9)
    scores = rng.normal(size=(5, 3))
    a = stratified_bootstrap_interval(scores, iqm, n_resamples=300, rng=11)
    b = stratified_bootstrap_interval(scores, lambda s: iqm(s), n_resamples=300, rng=11)
    assert (a.low, a.high, a.standard_error) == pytest.approx((b.low, b.high, b.standard_error), rel=1e-12)


def test_basic_interval_reflects_the_percentile_one() -> None:
    rng = np.random.default_rng(10)
    scores = rng.exponential(size=(8, 3))
    p = stratified_bootstrap_interval(scores, np.mean, n_resamples=1000, rng=3)
    b = stratified_bootstrap_interval(scores, np.mean, n_resamples=1000, method="basic", rng=3)
    assert b.low == pytest.approx(2 * p.estimate - p.high)
    assert b.high == pytest.approx(2 * p.estimate - p.low)


def test_constant_scores_give_a_point_interval_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ci = stratified_bootstrap_interval(np.ones((4, 3)), n_resamples=200, rng=0)
    assert (ci.low, ci.estimate, ci.high, ci.standard_error) == (1.0, 1.0, 1.0, 0.0)
    assert ci.covers(1.0) and not ci.covers(1.1)


def test_same_seed_same_interval_and_tensor_input() -> None:
    scores = torch.linspace(0, 1, 24).reshape(6, 4)
    a = stratified_bootstrap_interval(scores, n_resamples=200, rng=5)
    b = stratified_bootstrap_interval(scores.numpy().tolist(), n_resamples=200, rng=np.random.default_rng(5))
    assert a == b


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: iqm([]), ValueError, "scores is empty: scores must hold at least one"),
        (lambda: iqm([1.0, float("nan")]), ValueError, "scores must be finite"),
        (lambda: iqm([True, False]), TypeError, "real"),
        (lambda: iqm("abc"), TypeError, "scores must be an array"),
        (lambda: iqm([1.0, 2.0], axis=1), ValueError, "out of range"),
        (lambda: iqm(np.ones((2, 2)), axis=(0, 0)), ValueError, "repeat"),
        (lambda: iqm(np.ones((2, 2)), axis=True), TypeError, "axis"),
        (lambda: optimality_gap([1.0], threshold=float("inf")), ValueError, "threshold"),
        (lambda: performance_profile([1.0, 2.0], [0.0]), ValueError, r"scores must have shape \[runs, tasks\]"),
        (lambda: performance_profile([[1.0]], [0.0], task_means=1), TypeError, "task_means"),
        (lambda: probability_of_improvement(np.ones((3, 2)), np.ones((3, 4))), ValueError, "same tasks"),
        (lambda: probability_of_improvement(np.ones(3), np.ones((3, 1))), ValueError, "scores_x must have shape"),
        (lambda: stratified_bootstrap_interval(np.ones((1, 3))), ValueError, "at least 2 runs"),
        (lambda: stratified_bootstrap_interval(np.ones((3, 3)), 5), TypeError, "statistic must be callable"),
        (lambda: stratified_bootstrap_interval(np.ones((3, 3)), confidence=1.0), ValueError, "confidence"),
        (lambda: stratified_bootstrap_interval(np.ones((3, 3)), n_resamples=10), ValueError, "n_resamples"),
        (lambda: stratified_bootstrap_interval(np.ones((3, 3)), method="BCa"), ValueError, "method"),
        (lambda: stratified_bootstrap_interval(np.ones((3, 3)), rng="seed"), TypeError, "rng"),
        (
            lambda: stratified_bootstrap_interval(np.ones((3, 3)), lambda s: float("nan"), n_resamples=100),
            ValueError,
            "statistic returned nan",
        ),
        (
            lambda: probability_of_improvement_interval(np.ones((1, 2)), np.ones((3, 2))),
            ValueError,
            "scores_x must hold at least 2 runs",
        ),
        (
            lambda: probability_of_improvement_interval(np.ones((3, 2)), np.ones((3, 2)), confidence=0),
            ValueError,
            "confidence",
        ),
    ],
)
def test_bad_input_is_named(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()


def test_statistic_nan_on_a_resample_is_an_error() -> None:
    scores = np.arange(12.0).reshape(4, 3)

    def fragile(x, axis=(-2, -1)):
        m = np.mean(x, axis=axis)
        return np.where(m > 5.6, np.nan, m)  # finite on the data (mean 5.5), NaN on some resamples

    with pytest.raises(ValueError, match="on a bootstrap resample"):
        stratified_bootstrap_interval(scores, fragile, n_resamples=200, rng=0)
