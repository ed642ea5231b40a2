r"""Benchmarking methodology: repeated timings, robust summaries, speed ratios with bootstrap intervals.

Timings on a shared machine are noisy, skewed to the right (interference only ever adds time)
and drift with the machine's load. The functions here follow the methodology of
Chen & Revels (2016) and Kalibera & Jones (2013): time many repeats after a warm-up, summarise
them by the median and the interquartile range (``torch.utils.benchmark.Measurement``), and
compare two implementations by a **ratio** with a bootstrap confidence interval
(``scipy.stats.bootstrap``; Efron & Tibshirani 1993), preferably from **paired**, interleaved
runs in which a slow phase of the machine slows both sides alike.

The speed ratio is the geometric mean of the per-pair time ratios,

.. math::

    \begin{aligned}
    d_i &= \log a_i - \log b_i, \\
    \hat r &= \exp\Big(\frac1n\sum_{i=1}^n d_i\Big),
    \end{aligned}

chosen over the ratio of the two medians because (i) a multiplicative load factor shared by
the two runs of a pair cancels in :math:`d_i` exactly, (ii) the mean of :math:`d_i` is a
smooth statistic, for which the bootstrap is reliable at small :math:`n` (the bootstrap of a
median is not: its distribution sits on a few order statistics), and (iii) for log-normal
timings :math:`\hat r` estimates the ratio of the two population medians, since the median of
a log-normal variable is :math:`e^{\mu}`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.benchmark import Measurement
from torch.utils.benchmark.utils.common import TaskSpec

from nemo_rl_theory._validation import require_int, require_number
from nemo_rl_theory.performance.flops import model_flops_utilization

#: Bootstrap interval methods accepted (``scipy.stats.bootstrap``'s names).
BOOTSTRAP_METHODS = ("BCa", "percentile", "basic")


def _times(name: str, value: object, *, minimum: int = 3) -> np.ndarray:
    """Validate a 1-D collection of finite positive durations (seconds) as a float64 array."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().double().numpy()
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise TypeError(f"{name} must be a 1-D sequence, array or tensor of durations, got {type(value).__name__}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must hold real numbers (durations in seconds): {err}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one duration per repeat), got shape {list(arr.shape)}")
    if arr.size < minimum:
        raise ValueError(f"{name} must hold at least {minimum} durations, got {arr.size}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite, got NaN or inf")
    if (arr <= 0).any():
        raise ValueError(f"{name} must be positive durations, got a value <= 0 (min {arr.min():g})")
    return arr


def _rng(rng: object) -> np.random.Generator:
    if rng is None or isinstance(rng, np.random.Generator):
        return np.random.default_rng(rng)
    if isinstance(rng, int) and not isinstance(rng, bool):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {type(rng).__name__}")


def _check_bootstrap_args(confidence: object, n_resamples: object, method: object) -> None:
    require_number("confidence", confidence, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    require_int("n_resamples", n_resamples, low=100)
    if method not in BOOTSTRAP_METHODS:
        raise ValueError(f"method must be one of {BOOTSTRAP_METHODS}, got {method!r}")


@dataclass(frozen=True)
class RatioInterval:
    """A time ratio :math:`\\hat r = a / b` (> 1: ``a`` is slower) with its bootstrap interval.

    Attributes:
        ratio: the point estimate :math:`\\hat r` (dimensionless).
        low: the interval's lower end (``low <= ratio`` need not hold for ``BCa``).
        high: the interval's upper end.
        confidence: the nominal coverage, e.g. 0.95.
        n_a: the number of timings of ``a``.
        n_b: the number of timings of ``b`` (equal to ``n_a`` when ``paired``).
        paired: whether pairs were resampled together.
        method: the bootstrap method.
    """

    ratio: float
    low: float
    high: float
    confidence: float
    n_a: int
    n_b: int
    paired: bool
    method: str

    def covers(self, value: float) -> bool:
        """Whether ``low <= value <= high``."""
        return self.low <= value <= self.high

    @property
    def log_width(self) -> float:
        """:math:`\\log(\\text{high}/\\text{low})`: the interval's width on the log scale."""
        return math.log(self.high / self.low)


def _interval(samples: tuple[np.ndarray, ...], statistic, *, paired: bool, confidence, n_resamples, method, rng):
    point = float(statistic(*samples, axis=-1))
    if all(np.ptp(s) == 0 for s in samples):
        # Every resample gives the same value: the bootstrap distribution is a point.
        return point, point, point
    from scipy import stats  # here, not at import: scipy.stats costs ~1 s that timing-only users skip

    res = stats.bootstrap(
        samples,
        statistic,
        n_resamples=n_resamples,
        vectorized=True,
        paired=paired,
        confidence_level=confidence,
        method=method,
        rng=rng,
    )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(
            f"the {method} bootstrap interval is undefined for these timings (got [{low}, {high}]); "
            "use more repeats or method='percentile'"
        )
    return point, low, high


def paired_speed_ratio(
    times_a: Sequence[float] | np.ndarray | Tensor,
    times_b: Sequence[float] | np.ndarray | Tensor,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    method: str = "BCa",
    rng: int | np.random.Generator | None = None,
) -> RatioInterval:
    r"""Time ratio of ``a`` to ``b`` from **paired** runs (``a_i`` and ``b_i`` timed back to back).

    .. math::

        \begin{aligned}
        d_i &= \log a_i - \log b_i, \\
        \hat r &= \exp(\bar d)
          = \Big(\prod_i a_i / b_i\Big)^{1/n}
        \end{aligned}

    The interval is ``scipy.stats.bootstrap`` of :math:`\bar d` over the pairs (resampled as
    units), mapped through :math:`\exp`; the percentile and BCa intervals commute with that
    monotone map, so this is the interval of :math:`\hat r` itself. A load factor
    :math:`L_i` common to both runs of pair :math:`i` (:math:`a_i = L_i \alpha_i`,
    :math:`b_i = L_i \beta_i`) cancels in :math:`d_i`.

    Args:
        times_a: ``[n]`` durations of ``a`` in seconds (any positive unit, the same for
            both), ``n >= 3``.
        times_b: ``[n]`` durations of ``b``; ``times_b[i]`` was measured together with
            ``times_a[i]``.
        confidence: nominal coverage in (0, 1).
        n_resamples: bootstrap resamples (>= 100).
        method: ``"BCa"`` (default), ``"percentile"`` or ``"basic"``.
        rng: seed or ``numpy.random.Generator`` for the resampling.

    Returns:
        :class:`RatioInterval` with ``paired=True``. If every :math:`d_i` is equal the interval
        is the point :math:`[\hat r, \hat r]`.

    Raises:
        ValueError: lengths differ, fewer than 3 pairs, a non-positive or non-finite time, or a
            bad option. TypeError: a non-numeric input.
    """
    a = _times("times_a", times_a)
    b = _times("times_b", times_b)
    if a.shape != b.shape:
        raise ValueError(f"times_a and times_b must pair up (same length), got {a.size} and {b.size}")
    _check_bootstrap_args(confidence, n_resamples, method)
    d = np.log(a) - np.log(b)
    point, low, high = _interval(
        (d,),
        np.mean,
        paired=True,
        confidence=confidence,
        n_resamples=n_resamples,
        method=method,
        rng=_rng(rng),
    )
    return RatioInterval(
        math.exp(point), math.exp(low), math.exp(high), float(confidence), a.size, b.size, True, method
    )


def _mean_log_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def unpaired_speed_ratio(
    times_a: Sequence[float] | np.ndarray | Tensor,
    times_b: Sequence[float] | np.ndarray | Tensor,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    method: str = "BCa",
    rng: int | np.random.Generator | None = None,
) -> RatioInterval:
    r"""Time ratio of ``a`` to ``b`` from two **independent** samples of timings.

    .. math::

        \begin{aligned}
        \hat r &= \exp\Big(\overline{\log a}
          - \overline{\log b}\Big) \\
        &= \operatorname{gmean}(a) / \operatorname{gmean}(b)
        \end{aligned}

    (with equal lengths this is the same number as :func:`paired_speed_ratio`). The interval
    is ``scipy.stats.bootstrap`` resampling ``a`` and ``b`` independently, so the spread of a
    load factor shared by pairs is *not* cancelled: use it only when the runs were not
    interleaved.

    Args and Raises as :func:`paired_speed_ratio`, except that the lengths may differ.

    Returns:
        :class:`RatioInterval` with ``paired=False``.
    """
    a = _times("times_a", times_a)
    b = _times("times_b", times_b)
    _check_bootstrap_args(confidence, n_resamples, method)
    point, low, high = _interval(
        (np.log(a), np.log(b)),
        _mean_log_difference,
        paired=False,
        confidence=confidence,
        n_resamples=n_resamples,
        method=method,
        rng=_rng(rng),
    )
    return RatioInterval(
        math.exp(point), math.exp(low), math.exp(high), float(confidence), a.size, b.size, False, method
    )


def measurement(times: Sequence[float] | np.ndarray | Tensor, *, label: str = "", stmt: str = "") -> Measurement:
    """Wrap per-call durations (seconds) as a ``torch.utils.benchmark.Measurement``.

    Its ``median``, ``iqr``, ``mean`` and ``meets_confidence`` are torch's, so timings taken
    by hand (e.g. by :func:`interleaved_times`) are summarised exactly as ``Timer`` results are.

    Args:
        times: ``[n]`` positive durations, ``n >= 1``, one per call.
        label: the name shown when the measurement is printed or compared.
        stmt: the statement shown (defaults to ``label``).
    """
    t = _times("times", times, minimum=1)
    return Measurement(
        number_per_run=1, raw_times=[float(x) for x in t], task_spec=TaskSpec(stmt=stmt or label, setup="", label=label)
    )


def call_times(fn: Callable[[], object], repeats: int, *, number: int = 1) -> np.ndarray:
    """``[repeats]`` seconds per call of ``fn``, **the first repeat included** (no warm-up).

    Repeat ``k`` times ``number`` back-to-back calls with ``time.perf_counter`` and divides
    by ``number``. Keeping the first repeat shows the warm-up cost (lazy initialisation,
    first-touch allocation); drop ``times[0]`` (or more) before summarising steady state.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    require_int("repeats", repeats)
    require_int("number", number)
    out = np.empty(repeats)
    for k in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        out[k] = (time.perf_counter() - start) / number
    return out


def interleaved_times(
    fn_a: Callable[[], object],
    fn_b: Callable[[], object],
    repeats: int,
    *,
    number: int = 1,
    warmup: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Paired timings of two callables: ``repeats`` pairs, the order alternating A-B, B-A, ...

    Each side is called ``warmup`` times first (not timed). Pair ``k`` times ``number`` calls
    of each side within the same moment of the machine, so a load change hits both; the
    alternating order cancels a systematic first-of-the-pair effect. Feed the result to
    :func:`paired_speed_ratio`.

    Returns:
        ``(times_a, times_b)``, each ``[repeats]`` seconds per call.
    """
    for name, fn in (("fn_a", fn_a), ("fn_b", fn_b)):
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    require_int("repeats", repeats)
    require_int("number", number)
    require_int("warmup", warmup, low=0)
    for _ in range(warmup):
        fn_a()
        fn_b()
    out = {0: np.empty(repeats), 1: np.empty(repeats)}
    fns = (fn_a, fn_b)
    for k in range(repeats):
        for side in (0, 1) if k % 2 == 0 else (1, 0):
            start = time.perf_counter()
            for _ in range(number):
                fns[side]()
            out[side][k] = (time.perf_counter() - start) / number
    return out[0], out[1]


@dataclass(frozen=True)
class Throughput:
    """Step time and tokens per second of a repeated training (or generation) step.

    Attributes:
        step_seconds: median step time (s).
        step_iqr_seconds: interquartile range of the step time (s).
        tokens_per_step: tokens processed per step.
        tokens_per_second: ``tokens_per_step / step_seconds``.
    """

    step_seconds: float
    step_iqr_seconds: float
    tokens_per_step: float
    tokens_per_second: float

    def mfu(self, flops_per_token: float, peak_flops_per_second: float) -> float:
        """Model FLOPs utilisation at this throughput, ``flops_per_token * tokens_per_second / peak``.

        Delegates to ``nemo_rl_theory.performance.flops.model_flops_utilization``.
        """
        return model_flops_utilization(flops_per_token, self.tokens_per_second, peak_flops_per_second)


def throughput(step_times: Sequence[float] | np.ndarray | Tensor, tokens_per_step: float) -> Throughput:
    r"""Median step time and the token throughput it implies.

    .. math::

        \begin{aligned}
        \tilde t &= \operatorname{median}(t_1..t_n), \\
        \text{tokens/s} &= N_{\text{tok}} / \tilde t
        \end{aligned}

    The median (torch's ``Measurement.median``) is used rather than the total
    :math:`n N_{\text{tok}} / \sum t_k` (which is :math:`N_{\text{tok}}/\bar t`), so a few
    interrupted steps do not move the figure; report both when the run's wall clock matters.

    Args:
        step_times: ``[n]`` seconds per step, ``n >= 1`` (warm-up steps already dropped).
        tokens_per_step: tokens per step (> 0), e.g. the non-padding tokens of the batch.

    Raises:
        ValueError: ``step_times`` empty, not 1-D, non-finite or not positive;
            ``tokens_per_step`` not > 0. TypeError: non-numeric input.
    """
    m = measurement(_times("step_times", step_times, minimum=1), label="step")
    require_number("tokens_per_step", tokens_per_step, low=0.0, low_inclusive=False)
    return Throughput(float(m.median), float(m.iqr), float(tokens_per_step), float(tokens_per_step) / m.median)


def matmul_flops_per_second(
    size: int = 256, *, dtype: torch.dtype = torch.float32, min_run_time: float = 0.2, seed: int = 0
) -> float:
    r"""Achieved FLOP/s of a square ``[size, size] @ [size, size]`` matmul on this CPU, now.

    :math:`2\,\text{size}^3` FLOPs (a multiply and an add per term) divided by the median time
    of ``torch.utils.benchmark.Timer.blocked_autorange``, with torch's current thread count.
    A measured dense-matmul rate stands in for the "peak" of an MFU on a CPU, whose nominal
    peak is rarely reached and, on a shared machine, not available.
    """
    from torch.utils.benchmark import Timer

    require_int("size", size)
    require_number("min_run_time", min_run_time, low=0.0, low_inclusive=False)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(size, size, generator=gen, dtype=dtype)
    y = torch.randn(size, size, generator=gen, dtype=dtype)
    timer = Timer("torch.mm(x, y)", globals={"torch": torch, "x": x, "y": y}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return 2.0 * size**3 / m.median
