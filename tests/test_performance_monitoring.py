"""Control charts and run monitoring: CUSUM against a plain loop and Page's max-of-partial-sums form,
EWMA against its explicit weighted sum and closed-form limits, CUSUM run lengths (Markov chain,
Siegmund, textbook table, simulation), TensorBoard write/read round trip, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import norm

from nemo_rl_theory.performance.monitoring import (
    SIEGMUND_OFFSET,
    cusum,
    cusum_arl_markov,
    cusum_arl_siegmund,
    ewma,
    ewma_half_width,
    first_alarm,
    read_scalars,
    write_scalars,
)

finite = st.floats(-50.0, 50.0, allow_nan=False, allow_infinity=False)
series = st.lists(finite, min_size=1, max_size=40)


def cusum_loop(xs, mu0, sigma, k, h, side):
    up = lo = 0.0
    ups, los, alarms = [], [], []
    for x in xs:
        z = (x - mu0) / sigma
        up = max(0.0, up + z - k)
        lo = max(0.0, lo - z - k)
        ups.append(up)
        los.append(lo)
        alarms.append((side != "lower" and up > h) or (side != "upper" and lo > h))
    return ups, los, alarms


# ----------------------------------------------------------------------------- CUSUM


@given(
    series,
    st.floats(-5, 5),
    st.floats(0.1, 5),
    st.floats(0, 2),
    st.floats(0.1, 10),
    st.sampled_from(["upper", "lower", "both"]),
)
def test_cusum_matches_plain_loop(xs, mu0, sigma, k, h, side):
    result = cusum(xs, target=mu0, sigma=sigma, k=k, h=h, side=side)
    ups, los, alarms = cusum_loop(xs, mu0, sigma, k, h, side)
    np.testing.assert_allclose(result.upper, ups, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(result.lower, los, rtol=1e-12, atol=1e-12)
    assert result.alarms.tolist() == alarms
    assert result.first_alarm == (alarms.index(True) if True in alarms else -1)
    assert isinstance(result.first_alarm, int)


@given(series, st.floats(0, 2))
def test_cusum_is_max_of_partial_sums(xs, k):
    """Page's form: S+_t = max(0, max_j sum_{i=j..t} (z_i - k)), an independent closed form."""
    z = np.asarray(xs, dtype=np.float64)
    result = cusum(z, k=k, h=1.0)
    for t in range(len(z)):
        partial = [np.sum(z[j : t + 1] - k) for j in range(t + 1)]
        assert result.upper[t] == pytest.approx(max(0.0, max(partial)), abs=1e-9)
        partial_low = [np.sum(-z[j : t + 1] - k) for j in range(t + 1)]
        assert result.lower[t] == pytest.approx(max(0.0, max(partial_low)), abs=1e-9)


def test_cusum_batch_equals_rows_and_accepts_torch():
    x = np.random.default_rng(0).normal(size=(3, 4, 30))
    batch = cusum(x, target=0.1, sigma=1.3, k=0.4, h=2.0)
    assert batch.upper.shape == x.shape and batch.first_alarm.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            row = cusum(x[i, j], target=0.1, sigma=1.3, k=0.4, h=2.0)
            np.testing.assert_array_equal(row.upper, batch.upper[i, j])
            assert row.first_alarm == batch.first_alarm[i, j]
    from_torch = cusum(torch.tensor(x, dtype=torch.float32), target=0.1, sigma=1.3, k=0.4, h=2.0)
    np.testing.assert_allclose(from_torch.upper, batch.upper, rtol=1e-5, atol=1e-5)


def test_cusum_detects_a_shift_and_side_matters():
    x = np.r_[np.zeros(20), np.full(20, -2.0)]
    assert cusum(x, side="upper").first_alarm == -1
    lower = cusum(x, k=0.5, h=5.0, side="lower")
    assert lower.first_alarm == 23  # 1.5 per step from step 20: 1.5, 3.0, 4.5, 6.0 > 5
    assert cusum(x, k=0.5, h=5.0).first_alarm == 23


# ----------------------------------------------------------------------------- EWMA


@given(series, st.floats(-5, 5), st.floats(0.01, 1.0), st.floats(0.5, 4), st.floats(0.1, 5))
def test_ewma_is_the_explicit_weighted_sum(xs, mu0, lam, L, sigma):
    result = ewma(xs, target=mu0, sigma=sigma, lam=lam, L=L)
    x = np.asarray(xs)
    for t in range(1, len(x) + 1):
        weights = lam * (1 - lam) ** np.arange(t - 1, -1, -1.0)
        expected = (1 - lam) ** t * mu0 + np.sum(weights * x[:t])
        assert result.statistic[t - 1] == pytest.approx(expected, rel=1e-9, abs=1e-9)
        sd = sigma * math.sqrt(sum(lam**2 * (1 - lam) ** (2 * j) for j in range(t)))
        assert result.upper_limit[t - 1] - mu0 == pytest.approx(L * sd, rel=1e-9, abs=1e-12)
        assert mu0 - result.lower_limit[t - 1] == pytest.approx(L * sd, rel=1e-9, abs=1e-12)
    outside = np.abs(result.statistic - mu0) > result.upper_limit - mu0
    np.testing.assert_array_equal(result.alarms, outside)


def test_ewma_limits_closed_form_and_asymptote():
    lam, L = 0.2, 3.0
    t = np.arange(1, 101)
    exact = ewma_half_width(100, lam=lam, L=L, sigma=2.0)
    np.testing.assert_allclose(exact, L * 2.0 * np.sqrt(lam / (2 - lam) * (1 - (1 - lam) ** (2 * t))), rtol=1e-12)
    assert exact[0] == pytest.approx(L * 2.0 * lam)  # first step: the sd of lam * x_1
    asym = ewma_half_width(100, lam=lam, L=L, sigma=2.0, exact=False)
    np.testing.assert_allclose(asym, L * 2.0 * math.sqrt(lam / (2 - lam)), rtol=1e-12)
    assert np.all(np.diff(exact) >= 0) and np.all(np.diff(exact[:20]) > 0)
    assert exact[-1] == pytest.approx(asym[-1], rel=1e-9)
    # lam = 1: a Shewhart chart on single values
    x = np.array([0.0, 2.9, -3.1, 3.2])
    shewhart = ewma(x, lam=1.0, L=3.0)
    np.testing.assert_array_equal(shewhart.statistic, x)
    assert shewhart.alarms.tolist() == [False, False, True, True]
    assert ewma(x, lam=1.0, L=3.0, side="upper").alarms.tolist() == [False, False, False, True]
    assert ewma(x, lam=1.0, L=3.0, side="lower").alarms.tolist() == [False, False, True, False]


def test_ewma_per_step_exceedance_is_two_tailed_normal():
    rng = np.random.default_rng(1)
    result = ewma(rng.standard_normal((40000, 12)), lam=0.25, L=2.0)
    p = 2 * norm.sf(2.0)
    se = math.sqrt(p * (1 - p) / 40000)
    assert np.abs(result.alarms.mean(axis=0) - p).max() < 4.5 * se


# ----------------------------------------------------------------------------- run lengths


@pytest.mark.parametrize(
    ("h", "table"),
    [(4.0, [168, 74.2, 26.6, 13.3, 8.38, 4.75, 3.34, 2.19]), (5.0, [465, 139, 38.0, 17.0, 10.4, 5.75, 4.01, 2.57])],
)
def test_markov_arl_matches_montgomery_table(h, table):
    """Montgomery, Introduction to SQC, ch. 9: two-sided tabular CUSUM ARLs, k = 1/2, h = 4 and 5."""
    shifts = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]
    for shift, expected in zip(shifts, table, strict=True):
        assert cusum_arl_markov(k=0.5, h=h, shift=shift, side="both") == pytest.approx(expected, rel=0.01)


@given(st.floats(0.25, 1.0), st.floats(2.0, 8.0), st.floats(0.0, 3.0))
def test_markov_and_siegmund_agree_and_markov_converges(k, h, shift):
    """Siegmund is an approximation for moderate |shift - k|; far below k the ARL is astronomical."""
    fine = cusum_arl_markov(k=k, h=h, shift=shift, states=300)
    coarse = cusum_arl_markov(k=k, h=h, shift=shift, states=150)
    assert abs(fine - coarse) <= 0.01 * fine
    siegmund = cusum_arl_siegmund(k=k, h=h, shift=shift)
    assert siegmund == pytest.approx(fine, rel=0.25)
    assert fine >= 1.0


def test_siegmund_special_cases():
    assert cusum_arl_siegmund(k=0.5, h=4.0, shift=0.5) == pytest.approx((4.0 + SIEGMUND_OFFSET) ** 2)
    up, lo = cusum_arl_siegmund(shift=0.7, side="upper"), cusum_arl_siegmund(shift=0.7, side="lower")
    assert cusum_arl_siegmund(shift=0.7, side="both") == pytest.approx(1 / (1 / up + 1 / lo))
    assert cusum_arl_siegmund(shift=-0.7, side="lower") == pytest.approx(up)  # mirror image
    assert cusum_arl_markov(shift=-0.7, side="lower") == pytest.approx(cusum_arl_markov(shift=0.7, side="upper"))


@pytest.mark.parametrize(("shift", "side", "horizon"), [(0.0, "upper", 1500), (0.75, "both", 200), (1.5, "lower", 50)])
def test_simulated_run_length_matches_markov(shift, side, horizon):
    h = 3.0
    rng = np.random.default_rng(2)
    mean = -shift if side == "lower" else shift
    sim = cusum(mean + rng.standard_normal((3000, horizon)), k=0.5, h=h, side=side)
    assert (sim.first_alarm >= 0).all()
    run_length = sim.first_alarm + 1
    theory = cusum_arl_markov(k=0.5, h=h, shift=mean, side=side)
    assert abs(run_length.mean() - theory) < 4 * run_length.std(ddof=1) / math.sqrt(len(run_length))


# ----------------------------------------------------------------------------- TensorBoard


def test_tensorboard_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    metrics = {
        "reward": rng.normal(size=25).tolist(),
        "grad_norm": np.exp(rng.normal(size=25)),
        "step_count": list(range(25)),
    }
    tags = write_scalars(tmp_path, metrics, prefix="train", first_step=1)
    assert tags == ["train/grad_norm", "train/reward", "train/step_count"]
    back = read_scalars(tmp_path)
    assert sorted(back) == tags
    for name, values in metrics.items():
        steps, read = back[f"train/{name}"]
        assert steps.tolist() == list(range(1, 26))
        np.testing.assert_array_equal(read, np.asarray(values, dtype=np.float32).astype(np.float64))
    other = tmp_path / "no_prefix"
    assert write_scalars(other, {"x": [1.5]}, prefix="", first_step=0) == ["x"]
    steps, values = read_scalars(other)["x"]
    assert steps.tolist() == [0] and values.tolist() == [1.5]


def test_read_scalars_keeps_more_than_default_sampling(tmp_path):
    write_scalars(tmp_path, {"x": np.arange(10_050, dtype=np.float64)})
    steps, values = read_scalars(tmp_path)["train/x"]
    assert len(steps) == 10_050 and values[-1] == 10_049.0


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"x": [1.0, math.nan]}, ValueError, "NaN or inf"),
        ({"x": [1.0, math.inf]}, ValueError, "NaN or inf"),
        ({"x": []}, ValueError, "T >= 1"),
        ({"x": 3.0}, TypeError, "numpy array"),
        ({"x": np.float64(3.0)}, TypeError, "numpy array"),
        ({"x": np.zeros((2, 0))}, ValueError, "T >= 1"),
        ({"x": ["a", "b"]}, TypeError, "real numbers"),
        ({"x": torch.tensor([True, False])}, TypeError, "real numbers"),
        ({"x": [1.0], "sigma": 0.0}, ValueError, "sigma"),
        ({"x": [1.0], "sigma": -1.0}, ValueError, "sigma"),
        ({"x": [1.0], "k": -0.1}, ValueError, "k must"),
        ({"x": [1.0], "h": 0.0}, ValueError, "h must"),
        ({"x": [1.0], "side": "up"}, ValueError, "side"),
        ({"x": [1.0], "target": math.nan}, ValueError, "target"),
        ({"x": [1.0], "k": True}, TypeError, "k must"),
    ],
)
def test_cusum_bad_inputs(kwargs, error, match):
    with pytest.raises(error, match=match):
        cusum(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"x": [1.0], "lam": 0.0}, ValueError, "lam"),
        ({"x": [1.0], "lam": 1.5}, ValueError, "lam"),
        ({"x": [1.0], "L": 0.0}, ValueError, "L must"),
        ({"x": [1.0], "sigma": 0.0}, ValueError, "sigma"),
        ({"x": [1.0], "side": "both sides"}, ValueError, "side"),
        ({"x": [1.0], "exact": 1}, TypeError, "exact"),
        ({"x": [math.nan]}, ValueError, "NaN"),
    ],
)
def test_ewma_bad_inputs(kwargs, error, match):
    with pytest.raises(error, match=match):
        ewma(**kwargs)


def test_other_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="steps"):
        ewma_half_width(0)
    with pytest.raises(ValueError, match="steps"):
        ewma_half_width(True)
    with pytest.raises(ValueError, match="states"):
        cusum_arl_markov(states=1)
    with pytest.raises(ValueError, match="h must"):
        cusum_arl_markov(h=0.0)
    with pytest.raises(ValueError, match="side"):
        cusum_arl_siegmund(side="two")
    with pytest.raises(ValueError, match="shift"):
        cusum_arl_siegmund(shift=math.inf)
    with pytest.raises(TypeError, match="boolean"):
        first_alarm(np.zeros(3))
    assert first_alarm(np.array([False, True, True])) == 1
    assert first_alarm(np.array([[False, False], [False, True]])).tolist() == [-1, 1]
    with pytest.raises(ValueError, match="non-empty mapping"):
        write_scalars(tmp_path, {})
    with pytest.raises(ValueError, match="1-d sequence"):
        write_scalars(tmp_path, {"x": [[1.0, 2.0]]})
    with pytest.raises(ValueError, match="1-d sequence"):
        write_scalars(tmp_path, {"x": ["a"]})
    with pytest.raises(ValueError, match="names"):
        write_scalars(tmp_path, {"": [1.0]})
    with pytest.raises(ValueError, match="first_step"):
        write_scalars(tmp_path, {"x": [1.0]}, first_step=-1)
    with pytest.raises(TypeError, match="prefix"):
        write_scalars(tmp_path, {"x": [1.0]}, prefix=None)
    with pytest.raises(ValueError, match="not a directory"):
        read_scalars(tmp_path / "missing")
