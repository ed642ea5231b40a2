"""Tests for nemo_rl_theory.research.evaluation: pass@k, eval-set standard errors, McNemar's test."""

from __future__ import annotations

import collections
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from nemo_rl_theory.research.evaluation import (
    MAX_ENUMERATED,
    MCNEMAR_METHODS,
    McNemarResult,
    MeanEstimate,
    PairedDifference,
    clustered_standard_error,
    majority_at_k,
    majority_vote_probability,
    mcnemar_test,
    mean_and_standard_error,
    paired_difference,
    pass_at_k,
)


def exact_pass(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


# ----------------------------------------------------------------------------- pass@k


def test_pass_at_k_equals_brute_force_over_all_k_subsets() -> None:
    """The estimator is the share of k-subsets of the n samples that hold a correct one."""
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                share = Fraction(sum(any(s) for s in subsets), len(subsets))
                assert pass_at_k(n, c, k) == pytest.approx(float(share), abs=1e-15), (n, c, k)


@given(
    n=st.integers(1, 400),
    c_frac=st.floats(0, 1),
    k_frac=st.floats(0, 1),
)
def test_pass_at_k_matches_exact_rational_arithmetic(n: int, c_frac: float, k_frac: float) -> None:
    c = round(c_frac * n)
    k = max(1, round(k_frac * n))
    got = pass_at_k(n, c, k)
    want = exact_pass(n, c, k)
    assert isinstance(got, float)
    assert got == pytest.approx(float(want), rel=1e-13, abs=0)
    if n - c < k:
        assert got == 1.0
    if c == 0:
        assert got == 0.0


@pytest.mark.parametrize(
    ("n", "c", "k"),
    [
        (10**4, 1, 1),
        (10**4, 3, 100),
        (10**5, 7, 1000),
        (10**6, 1, 1),
        (10**6, 1, 10),
        (10**6, 2, 5),
        (10**6, 1000, 3),
        (10**6, 5 * 10**5, 20),
        (10**6, 10, 10**4),
    ],
)
def test_pass_at_k_is_accurate_for_large_n(n: int, c: int, k: int) -> None:
    """Full relative precision where a tiny pass@k sits next to huge binomial coefficients."""
    got = pass_at_k(n, c, k)
    want = float(exact_pass(n, c, k))
    assert got == pytest.approx(want, rel=1e-12, abs=0)
    # The log-gamma route (the obvious "stable" alternative) loses precision here: n*eps
    # of cancellation in lgamma(n+1) - lgamma(n-k+1) - ... is not small next to a pass@k of 1e-6.
    lg = math.lgamma
    via_lgamma = -math.expm1(lg(n - c + 1) + lg(n - k + 1) - lg(n - c - k + 1) - lg(n + 1))
    if (n, c, k) == (10**6, 1, 1):
        assert abs(via_lgamma - want) / want > 1e-11


def test_pass_at_k_broadcasts_over_arrays_and_accepts_tensors() -> None:
    n = np.array([[10], [20]])
    c = np.array([0, 3, 10])
    out = pass_at_k(n, c, 2)
    assert out.shape == (2, 3)
    for i, j in itertools.product(range(2), range(3)):
        assert out[i, j] == pytest.approx(float(exact_pass(int(n[i, 0]), int(c[j]), 2)), rel=1e-14)
    t = pass_at_k(torch.tensor([10, 20]), torch.tensor([3, 3]), torch.tensor([1, 5]))
    assert t == pytest.approx([0.3, float(exact_pass(20, 3, 5))], rel=1e-14)
    assert pass_at_k(10.0, 3.0, 1) == pytest.approx(0.3, rel=1e-15)
    assert pass_at_k([10, 10], [3, 4], [1, 1]).tolist() == pytest.approx([0.3, 0.4], rel=1e-15)


@pytest.mark.parametrize("n", [1, 5, 20, 60])
@pytest.mark.parametrize("p", [0.01, 0.2, 0.5, 0.93])
def test_pass_at_k_is_unbiased_and_plug_in_is_biased_low(n: int, p: float) -> None:
    """E[pass_at_k(n, C, k)] = 1 - (1-p)^k exactly for C ~ Binomial(n, p); the plug-in is below."""
    c = np.arange(n + 1)
    pmf = stats.binom.pmf(c, n, p)
    for k in range(1, n + 1):
        truth = 1 - (1 - p) ** k
        expected = float(np.sum(pmf * pass_at_k(n, c, k)))
        assert expected == pytest.approx(truth, rel=1e-11, abs=1e-14), (n, p, k)
        plug_in = float(np.sum(pmf * (1 - (1 - c / n) ** k)))
        # Jensen: (1 - x)^k is convex, so the plug-in is never above the truth ...
        assert plug_in <= truth + 1e-14
        if k == 1:
            assert plug_in == pytest.approx(truth, rel=1e-12)  # pass@1 plug-in is the sample mean
        if k == 2:
            # ... and at k = 2 it is low by exactly Var(C/n) = p(1 - p)/n.
            assert truth - plug_in == pytest.approx(p * (1 - p) / n, rel=1e-9)


def test_plug_in_bias_is_large_for_k_near_n() -> None:
    """A concrete size: n = 20, p = 0.05, k = 10: the plug-in misses 0.065 of 0.401 (16%)."""
    n, p, k = 20, 0.05, 10
    c = np.arange(n + 1)
    pmf = stats.binom.pmf(c, n, p)
    plug_in = float(np.sum(pmf * (1 - (1 - c / n) ** k)))
    truth = 1 - (1 - p) ** k
    assert truth - plug_in == pytest.approx(0.0648, abs=1e-4)
    assert float(np.sum(pmf * pass_at_k(n, c, k))) == pytest.approx(truth, rel=1e-12)


@given(n=st.integers(2, 200), c=st.integers(0, 200), k=st.integers(1, 199))
def test_pass_at_k_is_monotone_in_c_and_k(n: int, c: int, k: int) -> None:
    c, k = min(c, n - 1), min(k, n - 1)
    assert pass_at_k(n, c + 1, k) >= pass_at_k(n, c, k)
    assert pass_at_k(n, c, k + 1) >= pass_at_k(n, c, k)
    assert 0.0 <= pass_at_k(n, c, k) <= 1.0


@pytest.mark.parametrize(
    ("args", "exc", "words"),
    [
        ((10, 3, 11), ValueError, "k must be <= num_samples"),
        ((10, 11, 2), ValueError, "num_correct must be <= num_samples"),
        (([10, 5], [3, 6], 1), ValueError, "num_correct must be <= num_samples"),
        ((10, 3, 0), ValueError, "k must be >= 1"),
        ((-1, 0, 1), ValueError, "num_samples must be non-negative"),
        ((10, -2, 1), ValueError, "num_correct must be non-negative"),
        ((10, 3, -1), ValueError, "k must be non-negative"),
        ((10, 2.5, 1), ValueError, "num_correct must be integer"),
        ((10.5, 2, 1), ValueError, "num_samples must be integer"),
        ((10, float("nan"), 1), ValueError, "num_correct must be finite"),
        ((10, 3, float("inf")), ValueError, "k must be finite"),
        (([10, 10], [1, 2, 3], 1), ValueError, "must broadcast"),
        ((10, np.array([True, False]), 1), TypeError, "num_correct must be integer counts"),
        (("10", 3, 1), TypeError, "num_samples"),
        ((10, [1, "a"], 1), TypeError, "num_correct"),
        ((10, 3, 1 + 2j), TypeError, "k must hold real"),
        ((None, 3, 1), TypeError, "num_samples"),
    ],
)
def test_pass_at_k_bad_input_is_named(args: tuple, exc: type, words: str) -> None:
    with pytest.raises(exc, match=words):
        pass_at_k(*args)


# ----------------------------------------------------------------------------- maj@k


def plurality_credit(votes: tuple[int, ...], correct: int) -> Fraction:
    tally = collections.Counter(votes)
    top = max(tally.values())
    winners = [a for a, v in tally.items() if v == top]
    return Fraction(1, len(winners)) if correct in winners else Fraction(0)


@pytest.mark.parametrize("probs", [[0.5, 0.5], [0.4, 0.3, 0.3], [0.2, 0.5, 0.25, 0.05], [1.0], [0.0, 1.0]])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_majority_vote_probability_equals_enumeration_of_all_vote_sequences(probs: list[float], k: int) -> None:
    """Sum over all m^k ordered sequences of votes, each with its product probability."""
    for correct in range(len(probs)):
        want = sum(
            math.prod(probs[a] for a in seq) * float(plurality_credit(seq, correct))
            for seq in itertools.product(range(len(probs)), repeat=k)
        )
        assert majority_vote_probability(probs, k, correct) == pytest.approx(want, rel=1e-12, abs=1e-15)
    # the credit over all answers sums to 1 (some answer always wins)
    assert sum(majority_vote_probability(probs, k, j) for j in range(len(probs))) == pytest.approx(1.0, rel=1e-12)


def test_majority_vote_closed_forms_and_limits() -> None:
    p = 0.6
    # two answers, k = 3: correct wins with >= 2 of 3 votes
    assert majority_vote_probability([p, 1 - p], 3) == pytest.approx(p**3 + 3 * p**2 * (1 - p), rel=1e-14)
    # k = 2: win with 2 votes, half credit on a 1-1 tie: p^2 + p(1 - p) = p
    assert majority_vote_probability([p, 1 - p], 2) == pytest.approx(p, rel=1e-14)
    assert majority_vote_probability([0.4, 0.3, 0.3], 1) == pytest.approx(0.4)
    # the plurality answer wins more often with more votes; a minority answer loses more often
    up = [majority_vote_probability([0.4, 0.3, 0.3], k) for k in (1, 5, 15, 41, 101, 201)]
    down = [majority_vote_probability([0.3, 0.4, 0.3], k) for k in (1, 5, 15, 41, 101, 201)]
    assert up == sorted(up) and up[-1] > 0.9
    assert down == sorted(down, reverse=True) and down[-1] < 0.05


def test_majority_at_k_equals_brute_force_over_all_k_subsets() -> None:
    for counts in ([3, 2], [1, 4, 2], [2, 0, 3, 1], [5], [0, 3]):
        samples = [j for j, cnt in enumerate(counts) for _ in range(cnt)]
        for k in range(1, len(samples) + 1):
            for correct in range(len(counts)):
                subsets = list(itertools.combinations(samples, k))
                want = sum(plurality_credit(sub, correct) for sub in subsets) / len(subsets)
                got = majority_at_k(counts, k, correct)
                assert got == pytest.approx(float(want), rel=1e-12, abs=1e-15), (counts, k, correct)


@pytest.mark.parametrize(("probs", "n"), [([0.5, 0.3, 0.2], 6), ([0.35, 0.45, 0.2], 7), ([0.7, 0.3], 9)])
def test_majority_at_k_is_unbiased(probs: list[float], n: int) -> None:
    """E over answer counts ~ Multinomial(n, p) of majority_at_k(counts, k) = majority_vote_probability(p, k)."""
    m = len(probs)
    all_counts = [c for c in itertools.product(range(n + 1), repeat=m) if sum(c) == n]
    weights = stats.multinomial.pmf(np.array(all_counts), n, probs)
    assert weights.sum() == pytest.approx(1.0)
    for k in range(1, n + 1):
        expected = sum(w * majority_at_k(list(c), k) for w, c in zip(weights, all_counts, strict=True))
        assert expected == pytest.approx(majority_vote_probability(probs, k), rel=1e-11), k


def test_majority_at_k_simple_values_and_inputs() -> None:
    assert majority_at_k([3, 7], 1) == pytest.approx(0.3)
    assert majority_at_k([0, 5, 5], 2) == 0.0
    assert majority_at_k([3, 0, 5], 2) == pytest.approx(10.5 / 28)  # 3 both-correct + 15 ties at 1/2
    assert majority_at_k(np.array([4, 1]), 5) == 1.0
    assert majority_at_k(torch.tensor([2, 2]), 4, correct=1) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("call", "exc", "words"),
    [
        (lambda: majority_vote_probability([0.5, 0.4], 3), ValueError, "answer_probabilities must be finite, non-neg"),
        (lambda: majority_vote_probability([1.2, -0.2], 3), ValueError, "answer_probabilities must be finite"),
        (lambda: majority_vote_probability([], 3), ValueError, "answer_probabilities must be a non-empty"),
        (lambda: majority_vote_probability([0.5, 0.5], 0), ValueError, "k must be >= 1"),
        (lambda: majority_vote_probability([0.5, 0.5], 2.0), TypeError, "k must be an int"),
        (lambda: majority_vote_probability([0.5, 0.5], 2, correct=2), ValueError, "correct must index"),
        (lambda: majority_vote_probability([0.5, 0.5], 2, correct=True), TypeError, "correct must be an int"),
        (lambda: majority_vote_probability([0.01] * 100, 50), ValueError, "lower k"),
        (lambda: majority_at_k([3, 2], 6), ValueError, "k must be <= the number of samples"),
        (lambda: majority_at_k([3, -2], 1), ValueError, "answer_counts must be non-negative"),
        (lambda: majority_at_k([3, 1.5], 1), ValueError, "answer_counts must be integer"),
        (lambda: majority_at_k([[3, 2]], 1), ValueError, "answer_counts must be a non-empty 1-D"),
        (lambda: majority_at_k([3, 2], 1, correct=-1), ValueError, "correct must index"),
        (lambda: majority_at_k(["a"], 1), TypeError, "answer_counts"),
    ],
)
def test_majority_bad_input_is_named(call, exc: type, words: str) -> None:
    with pytest.raises(exc, match=words):
        call()
    assert MAX_ENUMERATED == 2_000_000


# ----------------------------------------------------------------------------- standard errors


def test_mean_and_standard_error_closed_forms() -> None:
    s = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    est = mean_and_standard_error(s)
    n, p = s.size, s.mean()
    assert isinstance(est, MeanEstimate)
    assert (est.mean, est.n, est.n_clusters) == (p, n, None)
    # 0/1 scores: SE^2 = p(1 - p)/(n - 1); and by the definition with n - 1.
    assert est.standard_error == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)), rel=1e-14)
    assert est.standard_error == pytest.approx(math.sqrt(np.sum((s - p) ** 2) / (n * (n - 1))), rel=1e-14)
    lo, hi = est.interval(0.95)
    assert (lo + hi) / 2 == pytest.approx(p)
    assert (hi - lo) / 2 == pytest.approx(1.959963984540054 * est.standard_error, rel=1e-12)
    # bool, list, tensor inputs agree
    assert mean_and_standard_error(s.astype(bool)) == est
    assert mean_and_standard_error(s.tolist()) == est
    assert mean_and_standard_error(torch.tensor(s)) == est


@given(st.lists(st.floats(-100, 100), min_size=2, max_size=40))
def test_clustered_se_with_singleton_clusters_is_the_plain_se(values: list[float]) -> None:
    s = np.array(values)
    plain = mean_and_standard_error(s).standard_error
    assert clustered_standard_error(s, np.arange(s.size)) == pytest.approx(plain, rel=1e-9, abs=1e-12)
    est = mean_and_standard_error(s, clusters=[f"q{i}" for i in range(s.size)])
    assert est.standard_error == pytest.approx(plain, rel=1e-9, abs=1e-12)
    assert est.n_clusters == s.size


@given(
    g=st.integers(2, 12),
    size=st.integers(1, 6),
    seed=st.integers(0, 2**31),
)
def test_clustered_se_with_equal_clusters_is_the_se_of_cluster_means(g: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    s = rng.normal(size=g * size) + np.repeat(rng.normal(size=g), size)
    labels = np.repeat(np.arange(g), size)
    rng.shuffle(perm := np.arange(s.size))  # item order does not matter
    cluster_means = s.reshape(g, size).mean(axis=1)
    want = stats.sem(cluster_means)
    assert clustered_standard_error(s[perm], labels[perm]) == pytest.approx(want, rel=1e-9)


def test_clustered_se_is_the_sandwich_formula_by_loops() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 7, size=50)
    s = rng.normal(size=50) + labels * 0.3
    m = s.mean()
    g = len(set(labels.tolist()))
    total = 0.0
    for lab in set(labels.tolist()):
        members = [s[i] for i in range(50) if labels[i] == lab]
        # sum_i sum_j e_i e_j over the cluster, diagonal included
        total += sum((a - m) * (b - m) for a in members for b in members)
    assert clustered_standard_error(s, labels) == pytest.approx(math.sqrt(g / (g - 1) * total / 50**2), rel=1e-12)


def test_clustered_se_covers_where_the_naive_se_does_not() -> None:
    """Monte Carlo coverage of +-1.96 SE with 40 passages x 5 questions, intra-cluster correlation 0.5.

    Naive SE under-covers badly (design effect 1 + 4 * 0.5 = 3, so the SE is ~sqrt(3) too
    small: coverage ~ P(|Z| < 1.96/sqrt(3)) = 0.74); clustered covers ~0.95 (G/(G-1) with
    G = 40; the z interval is slightly liberal for 40 clusters). 2000 experiments: MC SE of a
    coverage near 0.95 is 0.005.
    """
    rng = np.random.default_rng(0)
    reps, g, size, rho = 2000, 40, 5, 0.5
    labels = np.repeat(np.arange(g), size)
    shared = rng.normal(size=(reps, g, 1)) * math.sqrt(rho)
    own = rng.normal(size=(reps, g, size)) * math.sqrt(1 - rho)
    scores = (shared + own).reshape(reps, g * size)  # true mean 0
    naive_hits = clustered_hits = 0
    for row in scores:
        for clusters, counter in ((None, "naive"), (labels, "clustered")):
            lo, hi = mean_and_standard_error(row, clusters).interval(0.95)
            hit = lo <= 0.0 <= hi
            if counter == "naive":
                naive_hits += hit
            else:
                clustered_hits += hit
    naive, clustered = naive_hits / reps, clustered_hits / reps
    assert naive == pytest.approx(2 * stats.norm.cdf(1.959964 / math.sqrt(3)) - 1, abs=4 * 0.01)
    assert clustered == pytest.approx(0.95, abs=0.02)
    assert naive < 0.8 < 0.93 < clustered


def test_paired_difference_closed_forms_and_identity() -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(size=30)
    b = 0.7 * a + rng.normal(size=30) * 0.5 + 0.1
    res = paired_difference(a, b)
    assert isinstance(res, PairedDifference)
    assert res.mean_difference == pytest.approx(a.mean() - b.mean(), rel=1e-14)
    assert res.standard_error == pytest.approx(stats.sem(a - b), rel=1e-12)
    assert res.unpaired_standard_error == pytest.approx(math.hypot(stats.sem(a), stats.sem(b)), rel=1e-12)
    assert res.correlation == pytest.approx(stats.pearsonr(a, b).statistic, rel=1e-12)
    # SE_paired^2 = SE_unpaired^2 - 2 rho s_a s_b / n
    sa, sb = a.std(ddof=1), b.std(ddof=1)
    assert res.standard_error**2 == pytest.approx(res.unpaired_standard_error**2 - 2 * res.correlation * sa * sb / 30)
    assert res.n == 30
    lo, hi = res.interval()
    assert lo < res.mean_difference < hi


@given(seed=st.integers(0, 2**31), rho=st.floats(-0.9, 0.9))
def test_paired_se_is_smaller_exactly_when_correlation_is_positive(seed: int, rho: float) -> None:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(2, 25))
    a = z[0]
    b = rho * z[0] + math.sqrt(1 - rho**2) * z[1]
    res = paired_difference(a, b)
    if res.correlation > 1e-9:
        assert res.standard_error < res.unpaired_standard_error
    elif res.correlation < -1e-9:
        assert res.standard_error > res.unpaired_standard_error


def test_paired_difference_constant_side_and_clusters() -> None:
    a = np.ones(6)
    b = np.array([1.0, 0, 1, 0, 1, 1])
    res = paired_difference(a, b)
    assert res.correlation == 0.0
    assert res.standard_error == pytest.approx(res.unpaired_standard_error, rel=1e-14)
    labels = [0, 0, 1, 1, 2, 2]
    res_c = paired_difference(a, b, clusters=labels)
    assert res_c.standard_error == pytest.approx(clustered_standard_error(a - b, labels), rel=1e-14)
    assert res_c.standard_error == pytest.approx(stats.sem((a - b).reshape(3, 2).mean(axis=1)), rel=1e-12)


def test_paired_interval_coverage_by_simulation() -> None:
    """Paired 95% intervals of a correlated difference cover the true 0.1 about 95% of the time."""
    rng = np.random.default_rng(7)
    reps, n, rho, delta = 2000, 200, 0.6, 0.1
    z = rng.normal(size=(reps, 2, n))
    a = z[:, 0] + delta
    b = rho * z[:, 0] + math.sqrt(1 - rho**2) * z[:, 1]
    hits = sum(
        paired_difference(a[r], b[r]).interval()[0] <= delta <= paired_difference(a[r], b[r]).interval()[1]
        for r in range(reps)
    )
    assert hits / reps == pytest.approx(0.95, abs=4 * math.sqrt(0.95 * 0.05 / reps))


@pytest.mark.parametrize(
    ("call", "exc", "words"),
    [
        (lambda: mean_and_standard_error([1.0]), ValueError, "scores must hold at least 2"),
        (lambda: mean_and_standard_error([]), ValueError, "scores must hold at least 2"),
        (lambda: mean_and_standard_error([1.0, float("nan")]), ValueError, "scores must be finite"),
        (lambda: mean_and_standard_error([[1.0, 2.0]]), ValueError, "scores must be 1-D"),
        (lambda: mean_and_standard_error(["a", "b"]), TypeError, "scores must hold real"),
        (lambda: mean_and_standard_error("ab"), TypeError, "scores must be"),
        (lambda: mean_and_standard_error([1.0, 2.0], clusters=[0]), ValueError, "clusters must be 1-D with one label"),
        (lambda: clustered_standard_error([1.0, 2.0, 3.0], [5, 5, 5]), ValueError, "clusters must name at least 2"),
        (lambda: clustered_standard_error([1.0, 2.0], [0.0, float("nan")]), ValueError, "clusters must not hold NaN"),
        (lambda: clustered_standard_error([1.0, 2.0], None), TypeError, "clusters must be"),
        (lambda: paired_difference([1.0, 2.0], [1.0, 2.0, 3.0]), ValueError, "same length"),
        (lambda: paired_difference([1.0, 2.0], [1.0, float("inf")]), ValueError, "scores_b must be finite"),
        (lambda: mean_and_standard_error([1.0, 2.0]).interval(1.0), ValueError, "confidence"),
        (lambda: paired_difference([1.0, 2.0], [1.0, 3.0]).interval(0.0), ValueError, "confidence"),
    ],
)
def test_standard_error_bad_input_is_named(call, exc: type, words: str) -> None:
    with pytest.raises(exc, match=words):
        call()


# ----------------------------------------------------------------------------- McNemar


def test_mcnemar_by_hand_2x2() -> None:
    # 2x2 table: both right 50, only A 15, only B 5, neither 30.
    a = np.array([1] * 50 + [1] * 15 + [0] * 5 + [0] * 30)
    b = np.array([1] * 50 + [0] * 15 + [1] * 5 + [0] * 30)
    exact = mcnemar_test(a, b)
    assert isinstance(exact, McNemarResult)
    assert (exact.only_a, exact.only_b, exact.both, exact.neither) == (15, 5, 50, 30)
    # two-sided exact: 2 * P(X <= 5), X ~ Bin(20, 1/2) (symmetric), by hand with math.comb
    by_hand = 2 * sum(math.comb(20, j) for j in range(6)) / 2**20
    assert exact.p_value == pytest.approx(by_hand, rel=1e-12)
    assert exact.p_value == pytest.approx(stats.binomtest(15, 20, 0.5).pvalue, rel=1e-14)
    assert exact.statistic == 15.0
    chi = mcnemar_test(a, b, method="chi2")
    assert chi.statistic == pytest.approx((abs(15 - 5) - 1) ** 2 / 20)
    assert chi.p_value == pytest.approx(math.erfc(math.sqrt(chi.statistic / 2)), rel=1e-12)  # chi2_1 tail
    raw = mcnemar_test(a, b, method="chi2", continuity_correction=False)
    assert raw.statistic == pytest.approx(100 / 20)
    assert raw.p_value < chi.p_value
    # symmetric in the models
    assert mcnemar_test(b, a).p_value == pytest.approx(exact.p_value, rel=1e-14)


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60))
def test_mcnemar_exact_is_binomtest_on_discordant_pairs(pairs: list[tuple[bool, bool]]) -> None:
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    res = mcnemar_test(a, b)
    n01, n10 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    assert res.only_a + res.only_b + res.both + res.neither == len(pairs)
    if n01 + n10 == 0:
        assert res.p_value == 1.0
        assert mcnemar_test(a, b, method="chi2").p_value == 1.0
    else:
        assert res.p_value == stats.binomtest(n01, n01 + n10, 0.5).pvalue
    # the concordant items do not change the test
    pad = mcnemar_test(np.r_[a, [True] * 7, [False] * 3], np.r_[b, [True] * 7, [False] * 3])
    assert pad.p_value == res.p_value


def test_mcnemar_exact_level_by_simulation() -> None:
    """Under H0 (equal accuracy, correlated models) the exact test rejects at most ~5%."""
    rng = np.random.default_rng(11)
    reps, n = 2000, 80
    hard = rng.random((reps, n)) < 0.4
    a = np.where(hard, rng.random((reps, n)) < 0.3, rng.random((reps, n)) < 0.9)
    b = np.where(hard, rng.random((reps, n)) < 0.3, rng.random((reps, n)) < 0.9)
    rate = np.mean([mcnemar_test(a[r], b[r]).p_value <= 0.05 for r in range(reps)])
    assert rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / reps)  # exact binomial tests are conservative
    assert rate > 0.02


@pytest.mark.parametrize(
    ("call", "exc", "words"),
    [
        (lambda: mcnemar_test([1, 0], [1, 0, 1]), ValueError, "same length"),
        (lambda: mcnemar_test([], []), ValueError, "correct_a must be a non-empty"),
        (lambda: mcnemar_test([1, 2], [1, 0]), ValueError, "correct_a must be binary"),
        (lambda: mcnemar_test([1, 0], [0.5, 0]), ValueError, "correct_b must be binary"),
        (lambda: mcnemar_test([1, 0], [float("nan"), 0]), ValueError, "correct_b must be 0/1"),
        (lambda: mcnemar_test([1, 0], [1, 0], method="z"), ValueError, "method must be one of"),
        (lambda: mcnemar_test([1, 0], [1, 0], method="chi2", continuity_correction=1), TypeError, "continuity"),
        (lambda: mcnemar_test(["x"], [1]), TypeError, "correct_a must hold real"),
    ],
)
def test_mcnemar_bad_input_is_named(call, exc: type, words: str) -> None:
    with pytest.raises(exc, match=words):
        call()


def test_methods_constant() -> None:
    assert MCNEMAR_METHODS == ("exact", "chi2")
