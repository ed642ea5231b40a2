"""Tests for nemo_rl_theory.serving.alerting against independent references."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from scipy import stats

from nemo_rl_theory.serving.alerting import (
    SRE_WORKBOOK_RULES,
    BurnRateRule,
    burn_rate,
    detection_time,
    error_budget_consumed,
    histogram_buckets,
    histogram_quantile,
    multiwindow_alerts,
    population_stability_index,
    psi_from_proportions,
    quantile_bucket,
    windowed_error_ratio,
)

INF = math.inf
ALERTS_DIR = Path(__file__).resolve().parents[1] / "docs" / "advanced" / "production-deployment" / "alerts"


# ----------------------------------------------------------------------------- histogram_quantile


def test_quantile_hand_computed_cases():
    ub, cc = [0.1, 0.2, 0.4, INF], [10, 30, 40, 40]
    # rank 20 lies in (0.1, 0.2] at (20 - 10) / 20 of the way.
    assert histogram_quantile(0.5, ub, cc) == pytest.approx(0.15)
    # rank 4 in the lowest bucket, which starts at 0.
    assert histogram_quantile(0.1, ub, cc) == pytest.approx(0.04)
    assert histogram_quantile(1.0, ub, cc) == pytest.approx(0.4)
    assert histogram_quantile(0.0, ub, cc) == 0.0
    # rank in the +Inf bucket -> the highest finite bound.
    assert histogram_quantile(0.99, [0.1, 0.2, INF], [1, 2, 10]) == 0.2
    # lowest bucket with a bound <= 0 -> that bound.
    assert histogram_quantile(0.1, [-1.0, 0.5, INF], [5, 10, 10]) == -1.0
    # a negative lower bucket followed by interpolation between bounds.
    assert histogram_quantile(0.75, [-1.0, 1.0, INF], [5, 10, 10]) == pytest.approx(0.0)
    # unsorted input, duplicated bounds merged, non-monotone counts forced to a running maximum.
    assert histogram_quantile(0.5, [INF, 0.2, 0.1], [40, 30, 10]) == pytest.approx(0.15)
    assert histogram_quantile(0.5, [0.1, 0.1, 0.2, INF], [4, 6, 30, 40]) == pytest.approx(0.15)
    assert histogram_quantile(0.5, [0.1, 0.2, 0.3, INF], [10, 30, 25, 40]) == pytest.approx(0.15)
    # q = 0 with an empty lowest bucket: Prometheus interpolates 0/0 -> nan.
    assert math.isnan(histogram_quantile(0.0, [0.1, 0.2, INF], [0, 3, 4]))
    assert histogram_quantile(0.0, [0.1, 0.2, INF], [1, 3, 4]) == 0.0
    # no observations -> nan, as Prometheus.
    assert math.isnan(histogram_quantile(0.5, [0.1, INF], [0, 0]))
    # a torch tensor works as well as a list.
    assert histogram_quantile(0.5, torch.tensor(ub), torch.tensor(cc)) == pytest.approx(0.15)


def test_quantile_precision_correction():
    # A relative difference of 1e-13 between counts is float noise and is removed, so the
    # rank 0.5 * N falls in the second bucket exactly as if the counts were equal.
    n = 1000.0
    got = histogram_quantile(1.0, [1.0, 2.0, INF], [n, n * (1 + 1e-13), n * (1 + 1e-13)])
    assert got == pytest.approx(1.0)
    # The tolerance is relative to the sum |a| + |b| (util/almost.Equal), not to one count: a
    # difference of 1.5e-12 of the count is 0.75e-12 of the sum, so it is still ignored ...
    got = histogram_quantile(1.0, [1.0, 2.0, INF], [n, n * (1 + 1.5e-12), n * (1 + 1.5e-12)])
    assert got == 1.0
    # ... while 3e-12 of the count is a real difference: the rank lies in the second bucket, at
    # its top.
    got = histogram_quantile(1.0, [1.0, 2.0, INF], [n, n * (1 + 3e-12), n * (1 + 3e-12)])
    assert got == pytest.approx(2.0)
    # One pass, as Prometheus: after a decrease is raised to the last kept count (10), the next
    # count is compared with 10, not with the decreased 5, so 10 + 1e-11 is float noise of 10.
    got = histogram_quantile(1.0, [1.0, 2.0, 3.0, INF], [10.0, 5.0, 10.0 + 1e-11, 10.0 + 1e-11])
    assert got == 1.0
    # Counts of 0 after a positive count are a decrease (no division by 0, no warning).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert histogram_quantile(0.5, [1.0, 2.0, INF], [4.0, 0.0, 4.0]) == pytest.approx(0.5)


@settings(max_examples=150, deadline=None)
@given(
    widths=st.lists(st.floats(0.01, 5.0), min_size=1, max_size=8),
    incs=st.lists(st.integers(1, 50), min_size=9, max_size=9),
    q=st.floats(0.0, 1.0),
)
def test_quantile_matches_piecewise_linear_cdf_inverse(widths, incs, q):
    # Independent route: invert the piecewise-linear CDF through (0, 0), (u_i, c_i) with np.interp.
    ub = np.cumsum(widths)
    k = ub.size
    counts = np.cumsum(incs[:k])
    total = counts[-1] + incs[k]
    rank = q * total
    expected = ub[-1] if rank > counts[-1] else np.interp(rank, np.r_[0.0, counts], np.r_[0.0, ub])
    got = histogram_quantile(q, np.r_[ub, INF], np.r_[counts, total])
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 300),
    q=st.floats(0.001, 1.0),
)
def test_quantile_error_within_the_bucket_holding_the_true_quantile(seed, n, q):
    rng = np.random.default_rng(seed)
    x = rng.lognormal(-2.0, 1.0, size=n)
    ub = np.array([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, INF])
    cc = np.array([(x <= u).sum() for u in ub])
    est = histogram_quantile(q, ub, cc)
    exact = np.quantile(x, q, method="inverted_cdf")
    lo, hi = quantile_bucket(q, ub, cc)
    assert lo < exact <= hi
    if math.isfinite(hi):
        assert lo <= est <= hi
        assert abs(est - exact) <= hi - lo
    else:
        assert est == ub[-2]


def test_quantile_bad_input_named():
    for q in (-0.1, 1.1, math.nan):
        with pytest.raises(ValueError, match="q must"):
            histogram_quantile(q, [1.0, INF], [1, 2])
    with pytest.raises(TypeError, match="q must be"):
        histogram_quantile("0.5", [1.0, INF], [1, 2])
    with pytest.raises(ValueError, match=r"\+Inf"):
        histogram_quantile(0.5, [1.0, 2.0], [1, 2])
    with pytest.raises(ValueError, match="finite bound"):
        histogram_quantile(0.5, [INF], [3])
    with pytest.raises(ValueError, match="same length"):
        histogram_quantile(0.5, [1.0, INF], [1, 2, 3])
    with pytest.raises(ValueError, match="non-negative"):
        histogram_quantile(0.5, [1.0, INF], [-1, 2])
    with pytest.raises(ValueError, match="NaN"):
        histogram_quantile(0.5, [math.nan, INF], [1, 2])
    with pytest.raises(TypeError, match="bucket_upper_bounds"):
        histogram_quantile(0.5, "1,inf", [1, 2])
    with pytest.raises(ValueError, match="1-dimensional"):
        histogram_quantile(0.5, [[1.0, INF]], [[1, 2]])
    with pytest.raises(ValueError, match="no observations"):
        quantile_bucket(0.5, [1.0, INF], [0, 0])


def test_histogram_buckets_from_a_real_exposition():
    registry = CollectorRegistry()
    hist = Histogram("demo_latency_seconds", "demo", ["route"], buckets=(0.01, 0.1, 1.0), registry=registry)
    rng = np.random.default_rng(0)
    a, b = rng.exponential(0.05, 200), rng.exponential(0.5, 100)
    for v in a:
        hist.labels("a").observe(float(v))
    for v in b:
        hist.labels("b").observe(float(v))
    text = generate_latest(registry).decode()
    ub, cc = histogram_buckets(text, "demo_latency_seconds")
    both = np.r_[a, b]
    np.testing.assert_array_equal(ub, [0.01, 0.1, 1.0, INF])
    np.testing.assert_array_equal(cc, [(both <= u).sum() for u in ub])
    ub_a, cc_a = histogram_buckets(text, "demo_latency_seconds", route="a")
    np.testing.assert_array_equal(cc_a, [(a <= u).sum() for u in ub_a])
    with pytest.raises(ValueError, match="histograms found"):
        histogram_buckets(text, "missing_metric")
    with pytest.raises(TypeError, match="exposition"):
        histogram_buckets(b"bytes", "demo_latency_seconds")


# ----------------------------------------------------------------------------- burn rates


def _brute_ratio(e, n, w):
    out = []
    for t in range(len(e)):
        lo = max(0, t - w + 1)
        se, sn = sum(e[lo : t + 1]), sum(n[lo : t + 1])
        out.append(se / sn if sn > 0 else math.nan)
    return np.array(out)


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=40),
    w=st.integers(1, 12),
)
def test_windowed_ratio_matches_brute_force(data, w):
    n = [a + b for a, b in data]
    e = [a for a, _ in data]
    got = windowed_error_ratio(e, n, w)
    np.testing.assert_allclose(got, _brute_ratio(e, n, w), rtol=1e-12, equal_nan=True)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    slo=st.sampled_from([0.99, 0.995, 0.999]),
    thr=st.floats(1.0, 20.0),
)
def test_multiwindow_alerts_match_a_loop(seed, slo, thr):
    rng = np.random.default_rng(seed)
    n = rng.integers(0, 50, size=80)
    e = rng.binomial(n, rng.uniform(0, 0.05))
    rule = BurnRateRule(12, 3, thr, "page")
    got = multiwindow_alerts(e, n, slo, [rule])[0]
    long_r, short_r = _brute_ratio(list(e), list(n), 12), _brute_ratio(list(e), list(n), 3)
    limit = thr * (1 - slo)
    want = [bool(lr > limit and sr > limit) for lr, sr in zip(long_r, short_r, strict=True)]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("burn", [20.0, 50.0, 300.0, 500.0])
def test_detection_time_closed_form_on_a_step_incident(burn):
    slo, warm = 0.999, 400
    n = np.full(warm + 400, 1000.0)
    e = np.zeros_like(n)
    e[warm:] = burn * (1 - slo) * 1000.0
    fired = multiwindow_alerts(e, n, slo, SRE_WORKBOOK_RULES[:1])[0]
    first = int(np.argmax(fired)) - warm + 1  # steps of incident seen when it fires
    t_star = detection_time(burn, 14.4, 60)
    # the window average after k steps is burn * k / 60 > 14.4 first at k = floor(t*) + 1.
    assert first == math.floor(t_star + 1e-9) + 1
    assert not fired[:warm].any()


def test_budget_consumed_reproduces_the_workbook_table():
    period = 30 * 24 * 60
    got = [error_budget_consumed(r.burn_threshold, r.long_window, period) for r in SRE_WORKBOOK_RULES]
    np.testing.assert_allclose(got, [0.02, 0.05, 0.10])
    assert [r.long_window // r.short_window for r in SRE_WORKBOOK_RULES] == [12, 12, 12]


def test_burn_rate_and_bad_inputs():
    assert burn_rate(0.001, 0.999) == pytest.approx(1.0)
    np.testing.assert_allclose(burn_rate([0.0, 0.01], 0.99), [0.0, 1.0])
    assert detection_time(10.0, 14.4, 60) == math.inf
    with pytest.raises(ValueError, match="slo must lie in"):
        burn_rate(0.1, 1.0)
    with pytest.raises(ValueError, match="error_ratio"):
        burn_rate(1.5, 0.99)
    with pytest.raises(ValueError, match="error_ratio"):
        burn_rate([0.1, -0.1], 0.99)
    with pytest.raises(ValueError, match="short_window must be <= long_window"):
        BurnRateRule(5, 60, 14.4)
    with pytest.raises(TypeError, match="long_window must be an int"):
        BurnRateRule(6.0, 5, 14.4)
    with pytest.raises(ValueError, match="burn_threshold"):
        BurnRateRule(60, 5, 0.0)
    with pytest.raises(ValueError, match="errors must be <= requests"):
        windowed_error_ratio([2, 0], [1, 1], 2)
    with pytest.raises(ValueError, match="same length"):
        windowed_error_ratio([0, 0], [1], 2)
    with pytest.raises(ValueError, match="window must be >= 1"):
        windowed_error_ratio([0], [1], 0)
    with pytest.raises(TypeError, match="rules"):
        multiwindow_alerts([0], [1], 0.99, SRE_WORKBOOK_RULES[0])
    with pytest.raises(TypeError, match=r"rules\[0\]"):
        multiwindow_alerts([0], [1], 0.99, [(60, 5, 14.4)])
    with pytest.raises(ValueError, match="slo_period"):
        error_budget_consumed(14.4, 60, 0)


def test_no_requests_means_no_alert():
    fired = multiwindow_alerts([0, 0, 0], [0, 0, 0], 0.999, [BurnRateRule(2, 1, 1.0)])
    assert not fired.any()


# ----------------------------------------------------------------------------- PSI


@settings(max_examples=60, deadline=None)
@given(
    e=st.lists(st.floats(0.01, 1.0), min_size=2, max_size=10),
    seed=st.integers(0, 2**31 - 1),
)
def test_psi_is_symmetrised_kl(e, seed):
    e = np.array(e) / np.sum(e)
    a = np.random.default_rng(seed).dirichlet(np.ones(e.size) * 5) + 1e-3
    a = a / a.sum()
    want = stats.entropy(a, e) + stats.entropy(e, a)
    assert psi_from_proportions(e, a) == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_psi_small_shift_is_chi_square_distance():
    e = np.array([0.1, 0.2, 0.3, 0.4])
    d = np.array([1.0, -2.0, 0.5, 0.5])
    for eps in (1e-2, 1e-3):
        a = e + eps * d / 10
        chi2 = np.sum((a - e) ** 2 / e)
        assert psi_from_proportions(e, a) == pytest.approx(chi2, rel=5 * eps)


def test_psi_of_samples_matches_hand_binning():
    rng = np.random.default_rng(1)
    x, y = rng.normal(0, 1, 5000), rng.normal(0.3, 1, 4000)
    edges = [-1.0, 0.0, 1.0]
    pe = np.array([(x <= -1).mean(), ((x > -1) & (x <= 0)).mean(), ((x > 0) & (x <= 1)).mean(), (x > 1).mean()])
    pa = np.array([(y <= -1).mean(), ((y > -1) & (y <= 0)).mean(), ((y > 0) & (y <= 1)).mean(), (y > 1).mean()])
    want = float(np.sum((pa - pe) * np.log(pa / pe)))
    assert population_stability_index(x, y, edges) == pytest.approx(want, rel=1e-12)
    # quantile bins of the reference: each reference bin holds ~10 %.
    assert population_stability_index(x, x, 10) == pytest.approx(0.0, abs=1e-12)
    assert population_stability_index(x, y, 10) > 0.05


def test_psi_null_mean_is_chi_square_scaled():
    rng = np.random.default_rng(2)
    n = m = 2000
    k = 10
    vals = [population_stability_index(rng.normal(size=n), rng.normal(size=m), k) for _ in range(300)]
    # (B - 1) * (1/n + 1/m) for fixed bins; quantile bins of the reference differ slightly.
    assert np.mean(vals) == pytest.approx((k - 1) * (1 / n + 1 / m), rel=0.15)


def test_psi_bad_inputs():
    with pytest.raises(ValueError, match="sum to 1"):
        psi_from_proportions([0.5, 0.6], [0.5, 0.5])
    with pytest.raises(ValueError, match="positive"):
        psi_from_proportions([1.0, 0.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="same length"):
        psi_from_proportions([1.0], [1.0])
    with pytest.raises(ValueError, match="bins must be >= 2"):
        population_stability_index([1.0, 2.0], [1.0], 1)
    with pytest.raises(ValueError, match="strictly increasing"):
        population_stability_index([1.0, 2.0], [1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="actual must be a non-empty"):
        population_stability_index([1.0, 2.0], [], 2)
    with pytest.raises(ValueError, match="floor"):
        population_stability_index([1.0, 2.0], [1.0], 2, floor=0.0)


# ----------------------------------------------------------------------------- the rule files


def test_rule_files_exist_and_name_the_workbook_windows():
    text = (ALERTS_DIR / "serving-rules.yml").read_text()
    for window in ("5m", "30m", "1h", "6h", "3d"):
        assert f"[{window}]" in text
    # every comparison of a window's ratio with a threshold, against the workbook's table
    pairs = re.findall(r"ratio_rate(\d+)([mhd]) > \(([\d.]+) \* 0\.001\)", text)
    unit = {"m": 1, "h": 60, "d": 1440}
    in_file = sorted((int(n) * unit[u], float(thr)) for n, u, thr in pairs)
    in_table = sorted((w, r.burn_threshold) for r in SRE_WORKBOOK_RULES for w in (r.long_window, r.short_window))
    assert in_file == in_table, (in_file, in_table)
    # each recording rule's name says the window its rate() uses
    record = r"record: job:serving_errors_per_request:ratio_rate(\w+)\n\s+expr: \|\n((?:\s{10}.*\n){3})"
    records = re.findall(record, text)
    assert [name for name, _ in records] == ["5m", "30m", "1h", "6h", "3d"]
    for name, body in records:
        assert re.findall(r"\[(\w+)\]", body) == [name, name], (name, body)
    assert (ALERTS_DIR / "serving-rules.test.yml").is_file()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not on PATH (Debian package prometheus)")
def test_promtool_checks_and_unit_tests_pass():
    check = subprocess.run(
        ["promtool", "check", "rules", "serving-rules.yml"], cwd=ALERTS_DIR, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        ["promtool", "test", "rules", "serving-rules.test.yml"],
        cwd=ALERTS_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert test.returncode == 0, test.stdout + test.stderr


def test_counter_exposition_parses_to_the_requests_sent():
    registry = CollectorRegistry()
    c = Counter("demo_requests", "demo", ["status"], registry=registry)
    for _ in range(7):
        c.labels("200").inc()
    for _ in range(2):
        c.labels("400").inc()
    from prometheus_client.parser import text_string_to_metric_families

    fam = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}["demo_requests"]
    by_status = {s.labels["status"]: s.value for s in fam.samples if s.name == "demo_requests_total"}
    assert by_status == {"200": 7.0, "400": 2.0}


def test_scrape_of_the_real_server():
    import httpx

    from nemo_rl_theory.serving.app import create_app, run_server_in_thread
    from nemo_rl_theory.toy import make_policy

    app = create_app(make_policy(0), model_name="toy-reverse")
    with run_server_in_thread(app, timeout_s=20) as url, httpx.Client(base_url=url, timeout=10.0) as client:
        for i in range(5):
            body = {"prompt": "<bos> 3 1 4 1 |", "max_tokens": 8, "seed": i}
            assert client.post("/v1/completions", json=body).status_code == 200
        assert client.post("/v1/completions", json={"prompt": "<bos> 3 |", "top_p": 2.0}).status_code == 400
        text = client.get("/metrics").text
    bounds, counts = histogram_buckets(text, "toy_e2e_request_latency_seconds")
    assert counts[-1] == 5 and bounds[-1] == INF
    assert 0 < histogram_quantile(0.5, bounds, counts) <= bounds[-2]
