r"""Monitoring a served policy: histogram quantiles, SLO burn rates, multi-window alerts, drift.

* :func:`histogram_buckets` reads one histogram out of a Prometheus text exposition (what
  ``GET /metrics`` returns), parsed with ``prometheus_client.parser`` and summed over every
  label except ``le``, as ``sum by (le) (...)`` does in PromQL.
* :func:`histogram_quantile` is PromQL's ``histogram_quantile`` for classic histograms, rule by
  rule as Prometheus implements it (``bucketQuantile`` in ``promql/quantile.go``, Prometheus
  v2.49.0 and later; ``BucketQuantile`` on main, d15adb9): buckets sorted by upper bound, a
  ``+Inf`` bucket required, buckets with the same bound merged, counts made monotone, then
  linear interpolation inside the bucket that holds the rank :math:`qN`; the lowest bucket
  starts at 0 when its bound is positive, and a rank in the ``+Inf`` bucket returns the highest
  finite bound.
* :func:`quantile_bucket` is the bucket that interpolation happens in; the true sample quantile
  lies in it too, so the estimate is off by at most that bucket's width.
* :func:`burn_rate`, :func:`windowed_error_ratio`, :func:`multiwindow_alerts`,
  :func:`error_budget_consumed` and :func:`detection_time` are the multi-window, multi-burn-rate
  alerts of the Google SRE workbook (Beyer et al. 2018, chapter "Alerting on SLOs"), evaluated on
  a series of per-step request and error counts; :data:`SRE_WORKBOOK_RULES` is its table of
  recommended windows and thresholds for a 30-day SLO.
* :func:`population_stability_index` is the PSI of a drifted sample against a reference sample.

Arrays are numpy float64; lists, numpy arrays and torch tensors are accepted in.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from nemo_rl_theory._validation import require_number, require_real_array

__all__ = [
    "SRE_WORKBOOK_RULES",
    "BurnRateRule",
    "burn_rate",
    "detection_time",
    "error_budget_consumed",
    "histogram_buckets",
    "histogram_quantile",
    "multiwindow_alerts",
    "population_stability_index",
    "psi_from_proportions",
    "quantile_bucket",
    "windowed_error_ratio",
]

ArrayLike = Sequence[float] | np.ndarray | Tensor


# ----------------------------------------------------------------------------- input checks


def _array(name: str, value: object, *, ndim: int | None = 1) -> np.ndarray:
    """A float64 array (bool accepted as 0/1; NaN and inf left to the caller)."""
    return require_real_array(
        name,
        value,
        ndim=ndim,
        min_size=0,
        allow_bool=True,
        allow_scalar=False,
        finite=False,
        layout=f"[n] ({ndim}-dimensional)",
        what="a sequence, array or tensor of numbers",
    )


def _probability(name: str, value: object, *, open_low: bool, open_high: bool) -> float:
    require_number(name, value)
    v = float(value)
    low_bad = v <= 0.0 if open_low else v < 0.0
    high_bad = v >= 1.0 if open_high else v > 1.0
    if not math.isfinite(v) or low_bad or high_bad:
        lo = "(0" if open_low else "[0"
        hi = "1)" if open_high else "1]"
        raise ValueError(f"{name} must lie in {lo}, {hi}, got {value!r}")
    return v


def _positive(name: str, value: object) -> float:
    require_number(name, value)
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


# ----------------------------------------------------------------------------- histograms


def histogram_buckets(exposition: str, name: str, **labels: str) -> tuple[np.ndarray, np.ndarray]:
    """Bucket upper bounds and cumulative counts of histogram ``name`` in a text exposition.

    ``exposition`` is the Prometheus text format (``GET /metrics``); ``name`` is the histogram's
    family name without the ``_bucket`` suffix. Samples ``name_bucket`` whose labels contain
    every ``labels`` pair are summed per ``le`` (PromQL's ``sum by (le)``). Returns
    ``(upper_bounds[K], cumulative_counts[K])`` sorted by bound, the last bound ``+inf``.
    Raises ``ValueError`` naming ``name`` when no bucket matches.
    """
    from prometheus_client.parser import text_string_to_metric_families

    if not isinstance(exposition, str):
        raise TypeError(f"exposition must be a str (Prometheus text format), got {type(exposition).__name__}")
    if not isinstance(name, str) or not name:
        raise TypeError("name must be a non-empty str")
    totals: dict[float, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name != f"{name}_bucket":
                continue
            if any(sample.labels.get(k) != v for k, v in labels.items()):
                continue
            le = float(sample.labels["le"])
            totals[le] = totals.get(le, 0.0) + float(sample.value)
    if not totals:
        found = sorted({f.name for f in text_string_to_metric_families(exposition) if f.type == "histogram"})
        raise ValueError(
            f"no buckets of histogram {name!r} with labels {labels} in the exposition; histograms found: {found}"
        )
    bounds = np.array(sorted(totals), dtype=np.float64)
    return bounds, np.array([totals[b] for b in bounds], dtype=np.float64)


_SMALL_DELTA_TOLERANCE = 1e-12  # smallDeltaTolerance in Prometheus's promql/quantile.go
_MIN_NORMAL = 2.0**-1022  # the smallest positive normal float64


def _almost_equal(a: float, b: float, epsilon: float) -> bool:
    """Prometheus's ``util/almost.Equal``: ``|a - b| < epsilon (|a| + |b|)`` (absolute near 0)."""
    if a == b:
        return True
    abs_sum, diff = abs(a) + abs(b), abs(a - b)
    if a == 0 or b == 0 or abs_sum < _MIN_NORMAL:
        return diff < epsilon * _MIN_NORMAL
    return diff / min(abs_sum, sys.float_info.max) < epsilon


def _prepared_buckets(bucket_upper_bounds: ArrayLike, cumulative_counts: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Prometheus's preparation: sort, require +Inf, coalesce, ignore small deltas, force monotone."""
    ub = _array("bucket_upper_bounds", bucket_upper_bounds)
    cc = _array("cumulative_counts", cumulative_counts)
    if ub.shape != cc.shape:
        raise ValueError(
            f"bucket_upper_bounds and cumulative_counts must have the same length, got {ub.size} and {cc.size}"
        )
    if np.isnan(ub).any():
        raise ValueError("bucket_upper_bounds must not contain NaN")
    if not np.isfinite(cc).all() or (cc < 0).any():
        raise ValueError("cumulative_counts must be finite and non-negative")
    order = np.argsort(ub, kind="stable")
    ub, cc = ub[order], cc[order]
    if ub.size == 0 or ub[-1] != math.inf:
        raise ValueError('bucket_upper_bounds must include +Inf (Prometheus returns NaN without an le="+Inf" bucket)')
    # coalesceBuckets: buckets with the same upper bound are merged (their counts add).
    bounds, counts = [ub[0]], [cc[0]]
    for b, c in zip(ub[1:], cc[1:], strict=True):
        if b == bounds[-1]:
            counts[-1] += c
        else:
            bounds.append(b)
            counts.append(c)
    # ensureMonotonicAndIgnoreSmallDeltas(tolerance=1e-12), one pass: a count within a relative
    # 1e-12 of the last kept one (almost.Equal) is float noise and set equal to it; a decrease
    # is raised to the last kept count; only a real increase becomes the new kept count.
    prev = counts[0]
    for i in range(1, len(counts)):
        curr = counts[i]
        if curr == prev:
            continue
        if _almost_equal(prev, curr, _SMALL_DELTA_TOLERANCE) or curr < prev:
            counts[i] = prev
            continue
        prev = curr
    if len(bounds) < 2:
        raise ValueError("bucket_upper_bounds needs at least one finite bound besides +Inf (Prometheus returns NaN)")
    return np.array(bounds), np.array(counts)


def _locate(q: float, bounds: np.ndarray, counts: np.ndarray) -> int:
    # sort.Search over all buckets but the last: the first index whose count reaches the rank.
    rank = q * counts[-1]
    hits = np.nonzero(counts[:-1] >= rank)[0]
    return int(hits[0]) if hits.size else len(bounds) - 1


def histogram_quantile(q: float, bucket_upper_bounds: ArrayLike, cumulative_counts: ArrayLike) -> float:
    r"""The ``q``-quantile of a classic histogram, exactly as PromQL's ``histogram_quantile``.

    With buckets sorted by upper bound :math:`u_0 < \dots < u_{K-1} = +\infty`, cumulative
    counts :math:`c_i = \#\{x \le u_i\}` and :math:`N = c_{K-1}`, the rank is :math:`r = qN` and
    :math:`b` is the first bucket below ``+Inf`` with :math:`c_b \ge r`. Then

    .. math::

        \begin{aligned}
        \hat x_q &= \ell_b + (u_b - \ell_b)\,
          \frac{r - c_{b-1}}{c_b - c_{b-1}},
        \end{aligned}

    with :math:`\ell_b = u_{b-1}` (and :math:`c_{-1} = 0`, :math:`\ell_0 = 0`: the lowest bucket
    starts at 0). Special cases, as ``bucketQuantile`` in Prometheus's ``promql/quantile.go``:
    no bucket below ``+Inf`` reaches the rank (it lies in the ``+Inf`` bucket) → :math:`u_{K-2}`;
    :math:`b = 0` with :math:`u_0 \le 0` → :math:`u_0`; :math:`N = 0` → ``nan`` (no observations,
    so an alert comparing the result is false, as in Prometheus); :math:`q = 0` with an empty
    lowest bucket → ``nan`` (Prometheus's interpolation divides 0 by 0). Equal bounds are merged
    (counts added); then, in one pass (``ensureMonotonicAndIgnoreSmallDeltas``), a count within
    a relative 1e-12 of the last kept count (``util/almost.Equal``: :math:`|a - b| < 10^{-12}
    (|a| + |b|)`) is set equal to it, as float noise, and a decrease is raised to it, as
    Prometheus v2.49.0 and later do (older ones, e.g. Debian's 2.42 ``promtool``, only take the
    running maximum; the two differ only for relative differences below 1e-12).

    Where Prometheus returns a value for nonsense input, this raises: ``q`` outside
    :math:`[0, 1]` or NaN (Prometheus: ``-Inf``, ``+Inf``, ``NaN``), no ``+Inf`` bucket or no
    finite bucket (Prometheus: ``NaN``), mismatched lengths, negative or non-finite counts.
    """
    qv = _probability("q", q, open_low=False, open_high=False)
    bounds, counts = _prepared_buckets(bucket_upper_bounds, cumulative_counts)
    if counts[-1] == 0:
        return math.nan
    b = _locate(qv, bounds, counts)
    if b == len(bounds) - 1:
        return float(bounds[-2])
    if b == 0 and bounds[0] <= 0:
        return float(bounds[0])
    rank = qv * counts[-1]
    start, end, count = 0.0, float(bounds[b]), float(counts[b])
    if b > 0:
        start = float(bounds[b - 1])
        count -= counts[b - 1]
        rank -= counts[b - 1]
    if count == 0:  # only q = 0 with an empty lowest bucket: Prometheus computes 0/0 = NaN
        return math.nan
    return start + (end - start) * (rank / count)


def quantile_bucket(q: float, bucket_upper_bounds: ArrayLike, cumulative_counts: ArrayLike) -> tuple[float, float]:
    r"""The bucket :math:`(\ell_b, u_b]` that :func:`histogram_quantile` interpolates in.

    The sample quantile :math:`x_{(\lceil qN \rceil)}` (order statistic; numpy's
    ``method="inverted_cdf"``) lies in it too: :math:`c_b \ge qN` puts it at or below
    :math:`u_b`, :math:`c_{b-1} < qN` puts it above :math:`u_{b-1}`. So for :math:`0 < q`
    the interpolation error is at most :math:`u_b - \ell_b` (``+inf`` in the ``+Inf`` bucket;
    the lowest bucket's lower end is 0, so the bound assumes non-negative observations such as
    latencies). Raises ``ValueError`` when the histogram has no observations.
    """
    qv = _probability("q", q, open_low=False, open_high=False)
    bounds, counts = _prepared_buckets(bucket_upper_bounds, cumulative_counts)
    if counts[-1] == 0:
        raise ValueError("cumulative_counts are all 0: the histogram has no observations")
    b = _locate(qv, bounds, counts)
    lower = 0.0 if b == 0 else float(bounds[b - 1])
    if b == 0 and bounds[0] <= 0:
        lower = -math.inf
    return lower, float(bounds[b])


# ----------------------------------------------------------------------------- SLO burn rates


@dataclass(frozen=True)
class BurnRateRule:
    """One multi-window burn-rate alert: fire when both windows burn faster than ``burn_threshold``.

    Windows are in steps of the series (minutes for :data:`SRE_WORKBOOK_RULES`).
    """

    long_window: int
    short_window: int
    burn_threshold: float
    severity: str = "page"

    def __post_init__(self) -> None:
        _positive_int("long_window", self.long_window)
        _positive_int("short_window", self.short_window)
        if self.short_window > self.long_window:
            raise ValueError(f"short_window must be <= long_window, got {self.short_window} > {self.long_window}")
        _positive("burn_threshold", self.burn_threshold)
        if not isinstance(self.severity, str):
            raise TypeError(f"severity must be a str, got {type(self.severity).__name__}")


#: The SRE workbook's recommended multi-window, multi-burn-rate alerts for a 30-day SLO, in
#: minutes (chapter "Alerting on SLOs"): page at 14.4x over 1 h and 5 min (2 % of the budget),
#: page at 6x over 6 h and 30 min (5 %), ticket at 1x over 3 days and 6 h (10 %).
SRE_WORKBOOK_RULES: tuple[BurnRateRule, ...] = (
    BurnRateRule(60, 5, 14.4, "page"),
    BurnRateRule(360, 30, 6.0, "page"),
    BurnRateRule(3 * 24 * 60, 360, 1.0, "ticket"),
)


def burn_rate(error_ratio: float | ArrayLike, slo: float) -> float | np.ndarray:
    r"""How fast errors spend the error budget: :math:`\beta = e / (1 - \text{SLO})`.

    :math:`\beta = 1` spends exactly the budget over the SLO period; :math:`\beta` spends it in
    period / :math:`\beta`. ``error_ratio`` (errors / requests, in [0, 1]) may be an array.
    """
    s = _probability("slo", slo, open_low=True, open_high=True)
    if isinstance(error_ratio, (int, float)) and not isinstance(error_ratio, bool):
        e = _probability("error_ratio", error_ratio, open_low=False, open_high=False)
        return e / (1.0 - s)
    arr = _array("error_ratio", error_ratio, ndim=None)
    if np.isnan(arr).any() or (arr < 0).any() or (arr > 1).any():
        raise ValueError("error_ratio must lie in [0, 1] (errors / requests)")
    return arr / (1.0 - s)


def error_budget_consumed(burn_threshold: float, long_window: float, slo_period: float) -> float:
    r"""Fraction of the budget spent before a rule can fire: :math:`\beta_{\text{thr}} W / P`.

    A burn rate :math:`\beta` held for :math:`W` spends :math:`\beta W / P` of the budget of an
    SLO period :math:`P` (same units); 14.4 × 1 h / 30 days = 2 %.
    """
    return (
        _positive("burn_threshold", burn_threshold)
        * _positive("long_window", long_window)
        / _positive("slo_period", slo_period)
    )


def detection_time(burn: float, burn_threshold: float, window: float) -> float:
    r"""Time from the start of a steady incident to a window's ratio crossing the threshold.

    With no errors before and a steady burn rate :math:`\beta` from time 0, the window of length
    :math:`W` averages :math:`\beta t / W` at :math:`t \le W`, which passes
    :math:`\beta_{\text{thr}}` at :math:`t^* = W \beta_{\text{thr}} / \beta` (``inf`` when
    :math:`\beta \le \beta_{\text{thr}}`). A rule fires at the later of its two windows'
    times, the long one's.
    """
    b = _positive("burn", burn)
    thr = _positive("burn_threshold", burn_threshold)
    w = _positive("window", window)
    return w * thr / b if b > thr else math.inf


def windowed_error_ratio(errors: ArrayLike, requests: ArrayLike, window: int) -> np.ndarray:
    r"""Error ratio over the last ``window`` steps at each step: :math:`\sum e / \sum n`.

    ``errors[T]`` and ``requests[T]`` are per-step counts. Step :math:`t` sums steps
    :math:`t - W + 1 \dots t` (fewer at the start): the ratio of increases that the workbook's
    ``rate(errors[W]) / rate(requests[W])`` computes from counters sampled every step, up to
    ``rate()``'s extrapolation to the window's edges. Where no requests fall in the window the
    ratio is ``nan`` (Prometheus: 0/0) and no alert fires.
    """
    e = _array("errors", errors)
    n = _array("requests", requests)
    if e.shape != n.shape:
        raise ValueError(f"errors and requests must have the same length, got {e.size} and {n.size}")
    if not (np.isfinite(e).all() and np.isfinite(n).all()) or (e < 0).any() or (n < 0).any():
        raise ValueError("errors and requests must be finite non-negative counts")
    if (e > n).any():
        raise ValueError(f"errors must be <= requests at every step, first violation at step {int(np.argmax(e > n))}")
    w = _positive_int("window", window)
    ce = np.concatenate([[0.0], np.cumsum(e)])
    cn = np.concatenate([[0.0], np.cumsum(n)])
    idx = np.arange(1, e.size + 1)
    lo = np.maximum(idx - w, 0)
    se, sn = ce[idx] - ce[lo], cn[idx] - cn[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sn > 0, se / np.where(sn > 0, sn, 1.0), np.nan)


def multiwindow_alerts(
    errors: ArrayLike,
    requests: ArrayLike,
    slo: float,
    rules: Sequence[BurnRateRule] = SRE_WORKBOOK_RULES,
) -> np.ndarray:
    r"""Which rule fires at each step: ``bool[len(rules), T]``.

    Rule :math:`(W_\ell, W_s, \beta_{\text{thr}})` fires at step :math:`t` when both windows'
    error ratios exceed :math:`\beta_{\text{thr}}(1 - \text{SLO})` (strictly, as the workbook's
    ``>``): the long window makes it significant, the short window makes it stop soon after the
    incident does.
    """
    s = _probability("slo", slo, open_low=True, open_high=True)
    if isinstance(rules, BurnRateRule) or not isinstance(rules, Sequence) or not rules:
        raise TypeError("rules must be a non-empty sequence of BurnRateRule")
    out = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, BurnRateRule):
            raise TypeError(f"rules[{i}] must be a BurnRateRule, got {type(rule).__name__}")
        limit = rule.burn_threshold * (1.0 - s)
        with np.errstate(invalid="ignore"):
            long_ok = windowed_error_ratio(errors, requests, rule.long_window) > limit
            short_ok = windowed_error_ratio(errors, requests, rule.short_window) > limit
        out.append(long_ok & short_ok)
    return np.stack(out)


# ----------------------------------------------------------------------------- drift


def psi_from_proportions(expected: ArrayLike, actual: ArrayLike) -> float:
    r"""PSI of two binned distributions: :math:`\sum_i (a_i - e_i) \ln(a_i / e_i)`.

    ``expected`` and ``actual`` are the proportions per bin (each sums to 1, all positive). PSI
    is the symmetrised KL divergence :math:`\mathrm{KL}(a\|e) + \mathrm{KL}(e\|a)`; for a small
    shift it is :math:`\sum_i (a_i - e_i)^2 / e_i` (Pearson's :math:`\chi^2` distance) to
    second order.
    """
    e = _array("expected", expected)
    a = _array("actual", actual)
    if e.shape != a.shape or e.size < 2:
        raise ValueError(f"expected and actual must have the same length >= 2, got {e.size} and {a.size}")
    for name, p in (("expected", e), ("actual", a)):
        if not np.isfinite(p).all() or (p <= 0).any():
            raise ValueError(f"{name} proportions must be positive and finite (floor empty bins first)")
        if abs(p.sum() - 1.0) > 1e-6:
            raise ValueError(f"{name} proportions must sum to 1, got {p.sum():.6g}")
    return float(np.sum((a - e) * np.log(a / e)))


def population_stability_index(
    expected: ArrayLike,
    actual: ArrayLike,
    bins: int | ArrayLike = 10,
    *,
    floor: float = 1e-4,
) -> float:
    r"""Population stability index of sample ``actual`` against reference sample ``expected``.

    ``bins`` is an int (that many bins with equal counts of ``expected``: its quantiles, numpy's
    default linear ones, as inner edges, open outer bins; edges repeated by ties are merged, so
    a sample with many ties gets fewer bins) or an increasing sequence of inner edges (bin :math:`i` is
    :math:`(t_{i-1}, t_i]`, outer bins open). Proportions below ``floor`` are raised to it and
    renormalised (an empty bin would make PSI infinite), then
    :math:`\mathrm{PSI} = \sum_i (a_i - e_i) \ln(a_i / e_i)` (:func:`psi_from_proportions`).
    Rule of thumb (Siddiqi 2006, *Credit Risk Scorecards*): < 0.1 stable, 0.1–0.25 moderate
    shift, > 0.25 major shift. With no shift, PSI is about
    :math:`\chi^2_{B-1}\,(1/n + 1/m)` for samples of sizes :math:`n, m`.
    """
    e = _array("expected", expected)
    a = _array("actual", actual)
    for name, x in (("expected", e), ("actual", a)):
        if x.size < 1 or not np.isfinite(x).all():
            raise ValueError(f"{name} must be a non-empty sample of finite numbers")
    fl = _probability("floor", floor, open_low=True, open_high=True)
    if isinstance(bins, (int, np.integer)) and not isinstance(bins, bool):
        k = int(bins)
        if k < 2:
            raise ValueError(f"bins must be >= 2, got {k}")
        edges = np.unique(np.quantile(e, np.arange(1, k) / k))
    else:
        edges = _array("bins", bins)
        if edges.size < 1 or not np.isfinite(edges).all() or (np.diff(edges) <= 0).any():
            raise ValueError("bins must be an int >= 2 or a strictly increasing sequence of finite inner edges")
    nb = edges.size + 1
    pe = np.bincount(np.searchsorted(edges, e, side="left"), minlength=nb) / e.size
    pa = np.bincount(np.searchsorted(edges, a, side="left"), minlength=nb) / a.size
    pe = np.maximum(pe, fl)
    pa = np.maximum(pa, fl)
    return psi_from_proportions(pe / pe.sum(), pa / pa.sum())
