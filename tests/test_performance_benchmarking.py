"""Tests for nemo_rl_theory.performance.benchmarking: speed ratios, their intervals, timing helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch.utils.flop_counter import FlopCounterMode

from nemo_rl_theory.performance.benchmarking import (
    RatioInterval,
    Throughput,
    call_times,
    interleaved_times,
    matmul_flops_per_second,
    measurement,
    paired_speed_ratio,
    throughput,
    unpaired_speed_ratio,
)

TRUE_RATIO = 1.25


def lognormal_pairs(rng: np.random.Generator, n: int, sigma: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Timings of A and B in ms, log-normal with known median ratio TRUE_RATIO."""
    return TRUE_RATIO * rng.lognormal(0.0, sigma, n), rng.lognormal(0.0, sigma, n)


# ----------------------------------------------------------------------------- point estimate


def test_ratio_is_geometric_mean_of_pair_ratios_and_of_gmeans() -> None:
    rng = np.random.default_rng(1)
    a, b = lognormal_pairs(rng, 17)
    paired = paired_speed_ratio(a, b, rng=0)
    unpaired = unpaired_speed_ratio(a, b, rng=0)
    # Independent routes: scipy's geometric mean, and a float64 product of ratios.
    assert paired.ratio == pytest.approx(stats.gmean(a) / stats.gmean(b), rel=1e-12)
    assert paired.ratio == pytest.approx(math.prod(a / b) ** (1 / 17), rel=1e-12)
    assert unpaired.ratio == pytest.approx(paired.ratio, rel=1e-12)
    assert paired.paired and not unpaired.paired
    assert (paired.n_a, paired.n_b, paired.method, paired.confidence) == (17, 17, "BCa", 0.95)


def test_unpaired_accepts_unequal_lengths() -> None:
    rng = np.random.default_rng(2)
    a = rng.lognormal(0.5, 0.1, 12)
    b = rng.lognormal(0.0, 0.1, 20)
    r = unpaired_speed_ratio(a, b, rng=0)
    assert r.ratio == pytest.approx(stats.gmean(a) / stats.gmean(b), rel=1e-12)
    assert (r.n_a, r.n_b) == (12, 20)
    assert r.low < r.ratio < r.high


def test_tensor_and_list_inputs_agree() -> None:
    rng = np.random.default_rng(3)
    a, b = lognormal_pairs(rng, 9)
    r_np = paired_speed_ratio(a, b, rng=5)
    r_list = paired_speed_ratio(list(a), list(b), rng=5)
    r_t = paired_speed_ratio(torch.tensor(a), torch.tensor(b), rng=5)
    r_t32 = paired_speed_ratio(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32), rng=5)
    assert r_np == r_list == r_t
    assert r_t32.ratio == pytest.approx(r_np.ratio, rel=1e-6)


# ----------------------------------------------------------------------------- the interval


def test_paired_interval_coverage_by_simulation() -> None:
    """Nominal 95%: the empirical coverage over 400 experiments is within Monte Carlo error."""
    rng = np.random.default_rng(0)
    reps, n = 400, 30
    hits = sum(
        paired_speed_ratio(*lognormal_pairs(rng, n), n_resamples=1000, rng=k).covers(TRUE_RATIO) for k in range(reps)
    )
    coverage = hits / reps
    se = math.sqrt(0.95 * 0.05 / reps)
    # 4 standard errors, plus 0.02 for the bootstrap's known small-sample undercoverage.
    assert abs(coverage - 0.95) <= 4 * se + 0.02, coverage


def test_unpaired_interval_coverage_by_simulation() -> None:
    rng = np.random.default_rng(1)
    reps, n = 300, 30
    hits = sum(
        unpaired_speed_ratio(*lognormal_pairs(rng, n), n_resamples=1000, rng=k).covers(TRUE_RATIO) for k in range(reps)
    )
    coverage = hits / reps
    assert abs(coverage - 0.95) <= 4 * math.sqrt(0.95 * 0.05 / reps) + 0.02, coverage


def test_percentile_interval_matches_normal_theory_at_large_n() -> None:
    """For many pairs the bootstrap interval of mean(d) approaches exp(d_bar +- z s / sqrt(n))."""
    rng = np.random.default_rng(4)
    a, b = lognormal_pairs(rng, 2000, sigma=0.3)
    d = np.log(a) - np.log(b)
    z = stats.norm.ppf(0.975)
    half = z * d.std(ddof=1) / math.sqrt(d.size)
    r = paired_speed_ratio(a, b, method="percentile", n_resamples=4000, rng=0)
    assert math.log(r.low) == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert math.log(r.high) == pytest.approx(d.mean() + half, abs=0.1 * half)


def test_paired_narrower_than_unpaired_under_shared_drift() -> None:
    """A load factor shared by both runs of a pair cancels in the paired ratio only."""
    rng = np.random.default_rng(5)
    n = 40
    load = np.exp(0.4 * np.sin(np.linspace(0, 3 * np.pi, n)) + 0.2 * rng.standard_normal(n))
    a = TRUE_RATIO * load * rng.lognormal(0, 0.05, n)
    b = load * rng.lognormal(0, 0.05, n)
    paired = paired_speed_ratio(a, b, rng=0)
    unpaired = unpaired_speed_ratio(a, b, rng=0)
    assert paired.covers(TRUE_RATIO)
    assert unpaired.log_width > 3 * paired.log_width
    # Width ratio against the standard errors: paired sd(d)/sqrt(n) vs sqrt(var(log a)/n + var(log b)/n).
    d = np.log(a) - np.log(b)
    se_paired = d.std(ddof=1)
    se_unpaired = math.sqrt(np.log(a).var(ddof=1) + np.log(b).var(ddof=1))
    assert unpaired.log_width / paired.log_width == pytest.approx(se_unpaired / se_paired, rel=0.3)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(3, 25),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(1e-6, 1e3),
)
def test_reciprocal_and_unit_invariance(n: int, seed: int, scale: float) -> None:
    """ratio(b, a) = 1 / ratio(a, b) with the reversed interval; the unit of time does not matter."""
    rng = np.random.default_rng(seed)
    a, b = lognormal_pairs(rng, n, sigma=0.3)
    ab = paired_speed_ratio(a, b, method="percentile", n_resamples=200, rng=seed)
    ba = paired_speed_ratio(b, a, method="percentile", n_resamples=200, rng=seed)
    assert ba.ratio == pytest.approx(1 / ab.ratio, rel=1e-9)
    assert ba.low == pytest.approx(1 / ab.high, rel=1e-9)
    assert ba.high == pytest.approx(1 / ab.low, rel=1e-9)
    scaled = paired_speed_ratio(a * scale, b * scale, method="percentile", n_resamples=200, rng=seed)
    assert scaled.ratio == pytest.approx(ab.ratio, rel=1e-9)
    assert scaled.low == pytest.approx(ab.low, rel=1e-6)
    assert scaled.high == pytest.approx(ab.high, rel=1e-6)
    assert ab.low <= ab.ratio <= ab.high


def test_interval_narrows_with_confidence_and_repeats() -> None:
    rng = np.random.default_rng(6)
    a, b = lognormal_pairs(rng, 60)
    wide = paired_speed_ratio(a, b, confidence=0.99, rng=0)
    narrow = paired_speed_ratio(a, b, confidence=0.8, rng=0)
    assert narrow.log_width < wide.log_width
    few = paired_speed_ratio(a[:10], b[:10], rng=0)
    assert paired_speed_ratio(a, b, rng=0).log_width < few.log_width


def test_constant_pair_ratios_give_a_point_interval() -> None:
    b = np.array([1.0, 2.0, 3.0, 4.0])
    same = paired_speed_ratio(b, b)  # every log-ratio exactly 0: no bootstrap needed
    assert (same.ratio, same.low, same.high) == (1.0, 1.0, 1.0)
    r = paired_speed_ratio(2 * b, b)  # log-ratios equal up to rounding
    assert (r.ratio, r.low, r.high) == pytest.approx((2.0, 2.0, 2.0))
    assert r.log_width == pytest.approx(0.0, abs=1e-12)
    u = unpaired_speed_ratio(np.full(5, 3.0), np.full(4, 1.5))
    assert (u.ratio, u.low, u.high) == pytest.approx((2.0, 2.0, 2.0))


def test_ratio_interval_covers() -> None:
    r = RatioInterval(1.0, 0.9, 1.1, 0.95, 5, 5, True, "BCa")
    assert r.covers(0.9) and r.covers(1.1) and not r.covers(1.2)
    assert r.log_width == pytest.approx(math.log(1.1 / 0.9))


# ----------------------------------------------------------------------------- summaries, timers


def test_measurement_median_and_iqr_match_numpy() -> None:
    rng = np.random.default_rng(7)
    t = rng.lognormal(-7, 0.3, 23)
    m = measurement(t, label="x")
    assert m.median == pytest.approx(np.median(t), rel=1e-12)
    q25, q75 = np.quantile(t, [0.25, 0.75])
    assert m.iqr == pytest.approx(q75 - q25, rel=1e-12)
    assert m.mean == pytest.approx(t.mean(), rel=1e-12)
    assert len(m.times) == 23
    assert measurement([1e-3]).median == pytest.approx(1e-3)


def test_call_times_keeps_the_first_call_and_counts_calls() -> None:
    calls = []
    t = call_times(lambda: calls.append(1), 4, number=3)
    assert t.shape == (4,) and (t > 0).all()
    assert len(calls) == 12


def test_interleaved_times_alternates_the_order() -> None:
    log: list[str] = []
    ta, tb = interleaved_times(lambda: log.append("a"), lambda: log.append("b"), 4, number=2, warmup=1)
    assert ta.shape == tb.shape == (4,)
    assert "".join(log) == "ab" + "aabb" + "bbaa" + "aabb" + "bbaa"
    log.clear()
    interleaved_times(lambda: log.append("a"), lambda: log.append("b"), 1, warmup=0)
    assert log == ["a", "b"]


def test_interleaved_times_sees_a_real_difference() -> None:
    x = torch.randn(200, 200)
    small = torch.randn(20, 20)
    ta, tb = interleaved_times(lambda: x @ x, lambda: small @ small, 15)
    r = paired_speed_ratio(ta, tb, rng=0)
    # 1000x the FLOPs; only a generous relative claim on a shared machine.
    assert r.ratio > 3 and r.low > 1


def test_throughput_and_mfu() -> None:
    t = np.array([0.2, 0.1, 0.1, 0.1, 5.0])  # one interrupted step
    tp = throughput(t, 640)
    assert isinstance(tp, Throughput)
    assert tp.step_seconds == pytest.approx(0.1)
    assert tp.tokens_per_second == pytest.approx(6400.0)
    assert tp.step_iqr_seconds == pytest.approx(0.1)
    # MFU by hand: FLOPs per second achieved over the peak.
    assert tp.mfu(1.0e6, 1.0e11) == pytest.approx(1.0e6 * 6400.0 / 1.0e11)


def test_matmul_flops_per_second_counts_2n3() -> None:
    size = 64
    x = torch.randn(size, size)
    with FlopCounterMode(display=False) as counter:
        torch.mm(x, x)
    assert counter.get_total_flops() == 2 * size**3
    rate = matmul_flops_per_second(size, min_run_time=0.02)
    assert math.isfinite(rate) and rate > 1e6  # any CPU does a 64^3 matmul above a MFLOP/s


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("a", "b", "err", "match"),
    [
        ([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0], ValueError, "same length"),
        ([1.0, 2.0], [1.0, 2.0], ValueError, "at least 3"),
        ([1.0, 0.0, 3.0], [1.0, 2.0, 3.0], ValueError, "positive"),
        ([1.0, -1.0, 3.0], [1.0, 2.0, 3.0], ValueError, "positive"),
        ([1.0, float("nan"), 3.0], [1.0, 2.0, 3.0], ValueError, "finite"),
        ([1.0, 2.0, 3.0], [1.0, float("inf"), 3.0], ValueError, "finite"),
        ([[1.0, 2.0, 3.0]], [1.0, 2.0, 3.0], ValueError, "1-D"),
        ("abc", [1.0, 2.0, 3.0], TypeError, "times_a"),
        ([1.0, 2.0, 3.0], 5.0, TypeError, "times_b"),
        (["x", "y", "z"], [1.0, 2.0, 3.0], TypeError, "real numbers"),
    ],
)
def test_bad_times(a, b, err, match) -> None:
    with pytest.raises(err, match=match):
        paired_speed_ratio(a, b)


def test_bad_unpaired_times() -> None:
    with pytest.raises(ValueError, match="times_b"):
        unpaired_speed_ratio([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        unpaired_speed_ratio([1.0, 2.0, 3.0], [1.0, 2.0, 0.0])


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"confidence": 1.0}, ValueError, "confidence"),
        ({"confidence": 0.0}, ValueError, "confidence"),
        ({"confidence": "0.9"}, TypeError, "confidence"),
        ({"n_resamples": 10}, ValueError, "n_resamples"),
        ({"n_resamples": 1000.0}, TypeError, "n_resamples"),
        ({"method": "bca"}, ValueError, "method"),
        ({"rng": "seed"}, TypeError, "rng"),
        ({"rng": True}, TypeError, "rng"),
    ],
)
def test_bad_options(kwargs, err, match) -> None:
    times = [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(err, match=match):
        paired_speed_ratio(times, times[::-1], **kwargs)
    with pytest.raises(err, match=match):
        unpaired_speed_ratio(times, times[::-1], **kwargs)


def test_bad_timer_arguments() -> None:
    with pytest.raises(TypeError, match="fn"):
        call_times(3, 2)
    with pytest.raises(ValueError, match="repeats"):
        call_times(lambda: None, 0)
    with pytest.raises(ValueError, match="number"):
        call_times(lambda: None, 2, number=0)
    with pytest.raises(TypeError, match="fn_b"):
        interleaved_times(lambda: None, None, 2)
    with pytest.raises(ValueError, match="warmup"):
        interleaved_times(lambda: None, lambda: None, 2, warmup=-1)
    with pytest.raises(ValueError, match="times"):
        measurement([])
    with pytest.raises(ValueError, match="tokens_per_step"):
        throughput([0.1, 0.2], 0)
    with pytest.raises(ValueError, match="size"):
        matmul_flops_per_second(0)
    with pytest.raises(TypeError, match="dtype"):
        matmul_flops_per_second(8, dtype=torch.int64)
    with pytest.raises(ValueError, match="min_run_time"):
        matmul_flops_per_second(8, min_run_time=0.0)


def test_undefined_bootstrap_interval_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-finite interval from scipy raises a ValueError naming the method, never a NaN ratio."""
    import scipy.stats

    class _CI:
        low, high = float("nan"), 1.0

    class _Res:
        confidence_interval = _CI()

    monkeypatch.setattr(scipy.stats, "bootstrap", lambda *args, **kwargs: _Res())
    with pytest.raises(ValueError, match="BCa bootstrap interval is undefined"):
        paired_speed_ratio([1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="percentile"):
        unpaired_speed_ratio([1.0, 2.0, 3.0], [1.0, 1.5, 1.0], method="percentile")


def test_bad_counts_and_step_times() -> None:
    with pytest.raises(TypeError, match="repeats"):  # a bool is not a count
        call_times(lambda: None, True)
    with pytest.raises(TypeError, match="number"):
        interleaved_times(lambda: None, lambda: None, 2, number=1.5)
    with pytest.raises(ValueError, match="step_times"):
        throughput([0.1, -0.2], 10)
    with pytest.raises(TypeError, match="step_times"):
        throughput("fast", 10)
