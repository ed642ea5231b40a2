"""Tests for nemo_rl_theory.research.testing: Holm, Benjamini–Hochberg, t-test power and sample size."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from nemo_rl_theory.research.testing import (
    ALTERNATIVES,
    benjamini_hochberg,
    holm,
    sample_size_for_power,
    t_test_power,
)

p_lists = st.lists(st.floats(0, 1), min_size=1, max_size=30)


def holm_rejects_by_procedure(p: np.ndarray, alpha: float) -> np.ndarray:
    """Holm (1979) as written: step down through the sorted p-values, stop at the first failure."""
    m = p.size
    reject = np.zeros(m, dtype=bool)
    for i, idx in enumerate(np.argsort(p, kind="stable")):
        if p[idx] <= alpha / (m - i):
            reject[idx] = True
        else:
            break
    return reject


def bh_rejects_by_procedure(p: np.ndarray, q: float) -> np.ndarray:
    """Benjamini & Hochberg (1995) as written: the largest i with p_(i) <= i q / m, reject up to it."""
    m = p.size
    sorted_p = np.sort(p)
    passing = [i for i in range(1, m + 1) if sorted_p[i - 1] <= i * q / m]
    if not passing:
        return np.zeros(m, dtype=bool)
    return p <= sorted_p[max(passing) - 1]


# ----------------------------------------------------------------------------- hand cases


def test_holm_and_bh_hand_case() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 -> Holm 4*.005=.02, 3*.01=.03, 2*.03=.06, 1*.04=.04 -> max-acc .06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    # BH: 4/1*.005=.02, 4/2*.01=.02, 4/3*.03=.04, 4/4*.04=.04 (running min from the top)
    assert benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02], abs=1e-15)
    # capped at 1
    assert holm([0.5, 0.6, 0.9]).tolist() == [1.0, 1.0, 1.0]
    assert benjamini_hochberg([0.5, 0.6, 0.9]) == pytest.approx([0.9, 0.9, 0.9])
    # one hypothesis: unchanged
    assert holm([0.03]).tolist() == [0.03]
    assert benjamini_hochberg([0.03]).tolist() == [0.03]


def bh_by_formula(p: np.ndarray) -> np.ndarray:
    m = p.size
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    adj = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    out = np.empty(m)
    out[order] = adj
    return out


@given(p_lists)
def test_bh_is_scipy_and_matches_the_formula(values: list[float]) -> None:
    p = np.array(values)
    got = benjamini_hochberg(p)
    assert got == pytest.approx(stats.false_discovery_control(p, method="bh"), abs=1e-15)
    assert got == pytest.approx(bh_by_formula(p), rel=1e-12, abs=1e-15)


# ----------------------------------------------------------------------------- properties


@given(p_lists, st.sampled_from([0.001, 0.01, 0.05, 0.1, 0.2]))
def test_adjusted_rejections_equal_the_procedures(values: list[float], level: float) -> None:
    p = np.array(values)
    np.testing.assert_array_equal(holm(p) <= level, holm_rejects_by_procedure(p, level))
    np.testing.assert_array_equal(benjamini_hochberg(p) <= level, bh_rejects_by_procedure(p, level))


@given(p_lists, st.randoms(use_true_random=False))
def test_adjustments_are_monotone_bounded_and_permutation_equivariant(values: list[float], rnd) -> None:
    p = np.array(values)
    m = p.size
    h, b = holm(p), benjamini_hochberg(p)
    for adj in (h, b):
        assert ((adj >= p - 1e-15) & (adj <= 1.0)).all()
        order = np.argsort(p, kind="stable")
        assert (np.diff(adj[order]) >= -1e-15).all()  # monotone in p
        assert (adj[p == p.min()] == adj[p == p.min()][0]).all()  # ties get equal values
    assert (h <= np.minimum(1.0, m * p) + 1e-15).all()  # never worse than Bonferroni
    assert (b <= h + 1e-15).all()  # BH never more conservative than Holm
    perm = np.array(rnd.sample(range(m), m))
    assert holm(p[perm]) == pytest.approx(h[perm], abs=1e-15)
    assert benjamini_hochberg(p[perm]) == pytest.approx(b[perm], abs=1e-15)


def test_inputs_list_tensor_and_numpy_agree() -> None:
    p = [0.2, 0.001, 0.04, 0.5]
    assert holm(torch.tensor(p, dtype=torch.float64)).tolist() == holm(np.array(p)).tolist() == holm(p).tolist()
    assert benjamini_hochberg(torch.tensor(p, dtype=torch.float64)).tolist() == benjamini_hochberg(p).tolist()


# ----------------------------------------------------------------------------- error rates by simulation


def null_p_values(rng: np.random.Generator, reps: int, m: int, n: int = 8, shift: np.ndarray | None = None):
    """p-values of m two-sample t tests (n per group) per experiment, by scipy.stats.ttest_ind."""
    a = rng.normal(size=(reps, m, n))
    b = rng.normal(size=(reps, m, n))
    if shift is not None:
        a = a + shift[None, :, None]
    return stats.ttest_ind(a, b, axis=-1).pvalue


def test_fwer_of_20_comparisons_uncorrected_versus_holm() -> None:
    """20 true-null t tests: P(any p <= .05) = 1 - .95^20 = 0.64 uncorrected; Holm keeps it <= .05."""
    rng = np.random.default_rng(0)
    reps, m, alpha = 4000, 20, 0.05
    p = null_p_values(rng, reps, m)
    uncorrected = np.mean((p <= alpha).any(axis=1))
    holm_fwer = np.mean([(holm(row) <= alpha).any() for row in p])
    bh_fwer = np.mean([(benjamini_hochberg(row) <= alpha).any() for row in p])
    truth = 1 - 0.95**20
    assert truth == pytest.approx(0.6415, abs=1e-4)
    assert uncorrected == pytest.approx(truth, abs=4 * math.sqrt(truth * (1 - truth) / reps))
    mc_se = math.sqrt(alpha * (1 - alpha) / reps)
    assert holm_fwer <= alpha + 3 * mc_se
    # Under the complete null (independent tests) Holm's FWER is ~ 1 - (1 - a/20)^20 ~ a, and
    # BH's FWER equals its FDR, which is exactly q.
    assert holm_fwer == pytest.approx(1 - (1 - alpha / m) ** m, abs=4 * mc_se)
    assert bh_fwer == pytest.approx(alpha, abs=4 * mc_se)


def test_bh_controls_fdr_at_q_m0_over_m_under_independence() -> None:
    """15 true nulls and 5 real effects: FDR = E[V / max(R, 1)] = q * 15 / 20 for BH; Holm's is lower."""
    rng = np.random.default_rng(1)
    reps, m, m0, q = 4000, 20, 15, 0.1
    shift = np.r_[np.zeros(m0), np.full(m - m0, 1.5)]
    p = null_p_values(rng, reps, m, shift=shift)
    is_null = shift == 0
    fdp_bh, fdp_unc, power_bh, power_holm = [], [], [], []
    for row in p:
        for adj, sink in ((benjamini_hochberg(row), fdp_bh), (row, fdp_unc)):
            rejected = adj <= q
            sink.append((rejected & is_null).sum() / max(rejected.sum(), 1))
        power_bh.append((benjamini_hochberg(row)[~is_null] <= q).mean())
        power_holm.append((holm(row)[~is_null] <= q).mean())
    fdr, se = np.mean(fdp_bh), np.std(fdp_bh) / math.sqrt(reps)
    assert fdr == pytest.approx(q * m0 / m, abs=4 * se)
    assert fdr <= q
    assert np.mean(fdp_unc) > 2 * q  # uncorrected: a third of the discoveries are false
    assert np.mean(power_bh) > np.mean(power_holm)  # the price of FWER control


# ----------------------------------------------------------------------------- power


def test_textbook_sample_sizes() -> None:
    """Cohen (1988) table 2.4.1 / G*Power: d = 0.2, 0.5, 0.8 at power 0.8, alpha 0.05 two-sided."""
    assert sample_size_for_power(0.5) == 64
    assert sample_size_for_power(0.8) == 26
    assert sample_size_for_power(0.2) == 394  # Cohen's table prints 393 (normal approximation)
    assert sample_size_for_power(-0.5) == 64
    assert sample_size_for_power(0.5, power=0.9) == 86
    assert sample_size_for_power(0.5, alternative="greater") == 51
    assert sample_size_for_power(-0.5, alternative="less") == 51
    assert sample_size_for_power(5.0) == 3
    assert sample_size_for_power(50.0) == 2


@pytest.mark.parametrize(
    ("d", "power", "alpha", "alternative"),
    [
        (0.5, 0.8, 0.05, "two-sided"),
        (0.3, 0.9, 0.01, "two-sided"),
        (1.2, 0.7, 0.05, "greater"),
        (-0.7, 0.95, 0.1, "less"),
    ],
)
def test_sample_size_is_the_smallest_reaching_n(d: float, power: float, alpha: float, alternative: str) -> None:
    n = sample_size_for_power(d, power, alpha, alternative)
    assert t_test_power(d, n, alpha, alternative) >= power
    assert n == 2 or t_test_power(d, n - 1, alpha, alternative) < power


def test_power_against_hand_noncentral_t_and_normal_limit() -> None:
    d, n = 0.5, 64
    df, ncp = 126, 0.5 * math.sqrt(32)
    crit = stats.t.ppf(0.975, df)
    by_hand = 1 - stats.nct.cdf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp)
    assert t_test_power(d, n) == pytest.approx(by_hand, rel=1e-10)
    assert t_test_power(d, n) == pytest.approx(0.8015, abs=1e-4)  # G*Power: 0.8015
    # Large n: the normal approximation Phi(d sqrt(n/2) - z_{.975}) (+ the far tail)
    n = 20000
    z = stats.norm.ppf(0.975)
    ncp = 0.03 * math.sqrt(n / 2)
    normal = stats.norm.cdf(ncp - z) + stats.norm.cdf(-ncp - z)
    assert t_test_power(0.03, n) == pytest.approx(normal, abs=2e-4)


def test_power_at_zero_effect_is_alpha() -> None:
    for n in (2, 5, 50):
        assert t_test_power(0.0, n) == pytest.approx(0.05, rel=1e-9)
        assert t_test_power(0.0, n, 0.01, "greater") == pytest.approx(0.01, rel=1e-9)
        assert t_test_power(0.0, n, 0.1, "less") == pytest.approx(0.1, rel=1e-9)


@pytest.mark.parametrize(
    ("d", "n", "alternative"),
    [(0.5, 20, "two-sided"), (1.0, 8, "two-sided"), (0.4, 30, "greater"), (-0.8, 10, "less"), (0.0, 12, "two-sided")],
)
def test_power_equals_monte_carlo_rejection_rate_of_ttest_ind(d: float, n: int, alternative: str) -> None:
    """Rejection rates of scipy's Student and Welch tests on normal data, 20000 experiments each."""
    rng = np.random.default_rng(abs(hash((d, n, alternative))) % 2**32)
    reps = 20000
    a = rng.normal(d, 1.0, size=(reps, n))
    b = rng.normal(0.0, 1.0, size=(reps, n))
    power = t_test_power(d, n, alternative=alternative)
    tol = 4 * math.sqrt(power * (1 - power) / reps)
    student = np.mean(stats.ttest_ind(a, b, axis=1, alternative=alternative).pvalue <= 0.05)
    assert student == pytest.approx(power, abs=tol)
    welch = np.mean(stats.ttest_ind(a, b, axis=1, equal_var=False, alternative=alternative).pvalue <= 0.05)
    # Welch estimates its df (<= 2n - 2): slightly less power at small n, equal in the limit.
    assert welch == pytest.approx(power, abs=tol + 0.01)


@given(d=st.floats(0.05, 3), n=st.integers(2, 500))
def test_power_is_monotone_in_n_effect_and_alpha(d: float, n: int) -> None:
    p = t_test_power(d, n)
    assert 0.05 <= p <= 1.0
    assert t_test_power(d, n + 1) >= p - 1e-12
    assert t_test_power(d * 1.1, n) >= p - 1e-12
    assert t_test_power(d, n, alpha=0.1) >= p - 1e-12
    assert t_test_power(-d, n) == pytest.approx(p, rel=1e-9)  # two-sided is symmetric
    assert t_test_power(d, n, alternative="greater") >= p - 1e-12  # one-sided in the right direction


def test_power_broadcasts() -> None:
    out = t_test_power(np.array([[0.2], [0.5]]), [10, 64, 100])
    assert out.shape == (2, 3)
    assert out[1, 1] == pytest.approx(t_test_power(0.5, 64), rel=1e-12)
    assert isinstance(t_test_power(0.5, 64), float)
    assert t_test_power(torch.tensor([0.5]), torch.tensor([64])) == pytest.approx([t_test_power(0.5, 64)])


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "exc", "words"),
    [
        (lambda: holm([]), ValueError, "p_values must hold at least one"),
        (lambda: holm([0.1, 1.5]), ValueError, "p_values must lie in"),
        (lambda: holm([-0.1]), ValueError, "p_values must lie in"),
        (lambda: holm([0.1, float("nan")]), ValueError, "p_values must be finite"),
        (lambda: holm([[0.1, 0.2]]), ValueError, "p_values must be 1-D"),
        (lambda: holm(["a"]), TypeError, "p_values must hold real"),
        (lambda: holm("0.1"), TypeError, "p_values must be"),
        (lambda: benjamini_hochberg([]), ValueError, "p_values must hold at least one"),
        (lambda: benjamini_hochberg([2.0]), ValueError, "p_values must lie in"),
        (lambda: benjamini_hochberg(None), TypeError, "p_values must be"),
        (lambda: t_test_power(0.5, 1), ValueError, "n_per_group must be integers >= 2"),
        (lambda: t_test_power(0.5, 10.5), ValueError, "n_per_group must be integers >= 2"),
        (lambda: t_test_power(float("nan"), 10), ValueError, "effect_size must be finite"),
        (lambda: t_test_power("big", 10), TypeError, "effect_size must be a real"),
        (lambda: t_test_power(True, 10), TypeError, "effect_size must be a real"),
        (lambda: t_test_power(0.5, 10, alpha=0.0), ValueError, "alpha must be a finite number in"),
        (lambda: t_test_power(0.5, 10, alpha=1.0), ValueError, "alpha"),
        (lambda: t_test_power(0.5, 10, alternative="both"), ValueError, "alternative must be one of"),
        (lambda: t_test_power([0.5, 0.2], [10, 20, 30]), ValueError, "must broadcast"),
        (lambda: sample_size_for_power(0.0), ValueError, "effect_size must be nonzero"),
        (lambda: sample_size_for_power(float("inf")), ValueError, "effect_size must be a finite"),
        (lambda: sample_size_for_power(0.5, power=1.0), ValueError, "power must be a finite number in"),
        (lambda: sample_size_for_power(0.5, power=0.0), ValueError, "power"),
        (lambda: sample_size_for_power(0.5, alpha=-0.1), ValueError, "alpha"),
        (lambda: sample_size_for_power(0.5, alternative="less"), ValueError, "effect_size must be negative"),
        (lambda: sample_size_for_power(-0.5, alternative="greater"), ValueError, "effect_size must be positive"),
        (lambda: sample_size_for_power(0.5, alternative="x"), ValueError, "alternative must be one of"),
        (lambda: sample_size_for_power(0.001, max_n=1000), ValueError, "max_n=1000"),
        (lambda: sample_size_for_power(0.5, max_n=1), ValueError, "max_n must be an int"),
        (lambda: sample_size_for_power([0.5]), TypeError, "effect_size must be a real"),
    ],
)
def test_bad_input_is_named(call, exc: type, words: str) -> None:
    with pytest.raises(exc, match=words):
        call()


def test_alternatives_constant() -> None:
    assert ALTERNATIVES == ("two-sided", "greater", "less")


def test_power_has_no_nan_far_in_the_tails() -> None:
    """scipy's nct.cdf gives NaN far in the lower tail (df = 2, ncp = 20); the power must not."""
    d = np.geomspace(0.01, 100, 41)[:, None]
    n = np.array([2, 3, 5, 10, 100, 10**4])
    for alternative in ALTERNATIVES:
        for sign in (1.0, -1.0):
            p = t_test_power(sign * d, n, alternative=alternative)
            assert np.isfinite(p).all()
            assert ((p >= 0) & (p <= 1)).all()
    two = t_test_power(d, n)
    assert (np.diff(two, axis=0) >= -1e-12).all()
    assert two[-1].tolist() == pytest.approx([1.0] * 6)
