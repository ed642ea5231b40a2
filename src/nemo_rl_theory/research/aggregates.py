r"""Aggregate scores over runs × tasks, with stratified bootstrap intervals (Agarwal et al. 2021).

Agarwal, Schwarzer, Castro, Courville & Bellemare (2021), *Deep Reinforcement Learning at the
Edge of the Statistical Precipice* (NeurIPS), argue that a handful of runs per task makes a
point estimate (mean or median over tasks) misleading, and recommend instead:

- the **interquartile mean** (IQM) of all runs × tasks scores: robust like the median, but
  using half of the data instead of one order statistic, so its variance is much smaller;
- **stratified bootstrap** confidence intervals: runs are resampled with replacement
  *within each task* (the task is the stratum; the tasks themselves are held fixed);
- the **probability of improvement** :math:`P(X > Y)`, averaged over tasks;
- the **optimality gap** and **performance profiles** (score distributions).

These are what the authors' library ``rliable`` computes (``metrics.aggregate_iqm``,
``metrics.probability_of_improvement``, ``metrics.aggregate_optimality_gap``,
``library.get_interval_estimates`` with ``StratifiedBootstrap``, and
``library.create_performance_profile``); ``rliable`` is **not** a dependency: this module
re-derives them on ``scipy`` and the tests check them against independent computations.

Scores are a ``[runs, tasks]`` array: entry :math:`x_{rt}` is the (normalised) score of run
(seed) :math:`r` on task :math:`t`. Lists, NumPy arrays and torch tensors are accepted;
NaN or inf is rejected rather than propagated.

The bootstrap statistic contract follows ``scipy.stats.bootstrap``: a statistic is called as
``statistic(scores, axis=(-2, -1))`` on an array ``[..., runs, tasks]`` and returns ``[...]``
(one value per resample). :func:`iqm`, :func:`optimality_gap`, ``numpy.mean`` and
``numpy.median`` satisfy it as they are; a statistic without an ``axis`` parameter is applied
to one ``[runs, tasks]`` resample at a time.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from torch import Tensor

from nemo_rl_theory._validation import require_number, require_real_array

__all__ = [
    "BOOTSTRAP_METHODS",
    "BootstrapInterval",
    "iqm",
    "optimality_gap",
    "performance_profile",
    "probability_of_improvement",
    "probability_of_improvement_interval",
    "stratified_bootstrap_interval",
]

#: Interval methods offered (``scipy.stats.bootstrap``'s names). ``rliable`` defaults to the
#: percentile interval; BCa is not offered because its jackknife, applied to one stratum at a
#: time, produces ragged ``[runs, tasks]`` arrays.
BOOTSTRAP_METHODS = ("percentile", "basic")

#: Upper bound on resampled values held at once (resamples × runs × tasks); larger jobs are
#: split into batches (the result depends only on the inputs and the seed).
_MAX_BATCH_VALUES = 4_000_000

ArrayLike = Sequence | np.ndarray | Tensor


def _as_scores(name: str, value: object, *, ndim: int | None = None) -> np.ndarray:
    """Validate a finite, non-empty real array (``ndim`` fixed if given) as float64."""
    return require_real_array(
        name,
        value,
        ndim=ndim,
        layout="[runs, tasks]" if ndim == 2 else None,
        what="an array, list or tensor of real scores",
    )


def _axes(axis: object, ndim: int) -> tuple[int, ...]:
    """Normalise ``axis`` (None, int or tuple of ints) to a sorted tuple of distinct axes."""
    if axis is None:
        return tuple(range(ndim))
    items = axis if isinstance(axis, tuple) else (axis,)
    out = []
    for a in items:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
            raise TypeError(f"axis must be None, an int or a tuple of ints, got {axis!r}")
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for an array with {ndim} dimension(s)")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"axis must not repeat an axis, got {axis!r}")
    return tuple(sorted(out))


def _flatten_axes(arr: np.ndarray, axis: object) -> np.ndarray:
    """Move the reduced axes to the end and merge them into one trailing axis."""
    axes = _axes(axis, arr.ndim)
    moved = np.moveaxis(arr, axes, range(arr.ndim - len(axes), arr.ndim))
    return moved.reshape((*moved.shape[: arr.ndim - len(axes)], -1))


def iqm(scores: ArrayLike, axis: int | tuple[int, ...] | None = None) -> float | np.ndarray:
    r"""Interquartile mean: the mean of the middle half of the scores (Agarwal et al. 2021).

    ``rliable``'s ``aggregate_iqm`` is ``scipy.stats.trim_mean(scores, 0.25, axis=None)``
    on the ``[runs, tasks]`` array: **all** runs of all tasks are pooled, sorted, and the
    lowest and highest quarter dropped; there is no per-task step. With :math:`N` pooled
    scores sorted as :math:`x_{(1)} \le \dots \le x_{(N)}` and
    :math:`g = \lfloor N/4 \rfloor` (scipy's convention: ``int(0.25 * N)`` whole values are
    cut from each end, no fractional weighting),

    .. math::

        \begin{aligned}
        \mathrm{IQM} &= \frac{1}{N - 2g}
          \sum_{i=g+1}^{N-g} x_{(i)}.
        \end{aligned}

    When :math:`N` is not a multiple of 4 slightly more than half the values are kept
    (e.g. :math:`N = 10`: :math:`g = 2`, the middle 6); for :math:`N < 4` nothing is cut
    and the IQM is the mean.

    Args:
        scores: scores of any shape, typically ``[runs, tasks]``.
        axis: the axes pooled: ``None`` (all, the ``rliable`` definition), an int, or a
            tuple such as ``(-2, -1)`` for a batch ``[..., runs, tasks]``.

    Returns:
        A float when every axis is pooled, else an array of the remaining axes' shape.

    Raises:
        ValueError: empty, NaN/inf or a bad axis. TypeError: non-numeric scores.
    """
    arr = _as_scores("scores", scores)
    flat = _flatten_axes(arr, axis)
    out = stats.trim_mean(flat, 0.25, axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def optimality_gap(
    scores: ArrayLike, threshold: float = 1.0, axis: int | tuple[int, ...] | None = None
) -> float | np.ndarray:
    r"""How far the scores fall short of ``threshold`` on average (Agarwal et al. 2021).

    Scores above the threshold earn nothing extra (``rliable``'s
    ``aggregate_optimality_gap``, with :math:`\gamma = 1` for human-normalised scores):

    .. math::

        \begin{aligned}
        \mathrm{OG} &= \gamma - \frac1N
          \sum_{r,t} \min(x_{rt}, \gamma) \\
        &= \frac1N \sum_{r,t}
          \max(\gamma - x_{rt},\, 0).
        \end{aligned}

    Lower is better; 0 means every run reached :math:`\gamma`.

    Args:
        scores: scores of any shape, typically ``[runs, tasks]``.
        threshold: :math:`\gamma`, a finite number.
        axis: the axes averaged (as for :func:`iqm`).

    Returns:
        A float when every axis is averaged, else an array.
    """
    arr = _as_scores("scores", scores)
    require_number("threshold", threshold)
    flat = _flatten_axes(arr, axis)
    out = np.mean(np.maximum(float(threshold) - flat, 0.0), axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def performance_profile(scores: ArrayLike, thresholds: ArrayLike, *, task_means: bool = False) -> np.ndarray:
    r"""Score distribution: the fraction of scores **strictly above** each threshold.

    The run-score distribution of Agarwal et al. (2021) (``rliable``'s
    ``create_performance_profile``), a survival function over all runs × tasks:

    .. math::

        \begin{aligned}
        \hat F(\tau) &= \frac{1}{RT}\sum_{r,t}
          \mathbb 1[x_{rt} > \tau].
        \end{aligned}

    With ``task_means=True`` the per-task means over runs
    :math:`\bar x_t` are thresholded instead (the fraction of *tasks* whose mean exceeds
    :math:`\tau`), which is noisier with few runs.

    Args:
        scores: ``[runs, tasks]``.
        thresholds: ``[K]`` thresholds :math:`\tau` (or a scalar).
        task_means: threshold per-task means instead of single runs.

    Returns:
        ``[K]`` fractions in :math:`[0, 1]`, non-increasing in :math:`\tau`.
    """
    arr = _as_scores("scores", scores, ndim=2)
    if not isinstance(task_means, bool):
        raise TypeError(f"task_means must be a bool, got {type(task_means).__name__}")
    taus = _as_scores("thresholds", thresholds).reshape(-1)
    values = arr.mean(axis=0) if task_means else arr.reshape(-1)
    return (values[None, :] > taus[:, None]).mean(axis=1)


def _poi_batched(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + P(X = Y)/2 per task, averaged over tasks; ``x [..., n, T]``, ``y [..., m, T]``."""
    n, m = x.shape[-2], y.shape[-2]
    lead = np.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    x = np.broadcast_to(x, (*lead, *x.shape[-2:]))
    y = np.broadcast_to(y, (*lead, *y.shape[-2:]))
    pooled = np.concatenate([x, y], axis=-2)
    ranks = stats.rankdata(pooled, axis=-2)  # midranks: a tie counts one half
    u = ranks[..., :n, :].sum(axis=-2) - n * (n + 1) / 2.0
    return (u / (n * m)).mean(axis=-1)


def _check_pair(scores_x: object, scores_y: object) -> tuple[np.ndarray, np.ndarray]:
    x = _as_scores("scores_x", scores_x, ndim=2)
    y = _as_scores("scores_y", scores_y, ndim=2)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"scores_x and scores_y must cover the same tasks (same number of columns), "
            f"got {x.shape[1]} and {y.shape[1]}"
        )
    return x, y


def probability_of_improvement(scores_x: ArrayLike, scores_y: ArrayLike) -> float:
    r"""Probability that a run of X beats a run of Y on a task, averaged over tasks.

    Agarwal et al. (2021), ``rliable``'s ``metrics.probability_of_improvement``: for each task
    :math:`t` the Mann–Whitney statistic over all :math:`n m` pairs of runs, a tie counting one
    half, divided by :math:`n m`; then the mean over the :math:`T` tasks:

    .. math::

        \begin{aligned}
        S(a, b) &= \mathbb 1[a > b]
          + \tfrac12\,\mathbb 1[a = b], \\
        P_t &= \frac{1}{nm}\sum_{i=1}^{n}
          \sum_{j=1}^{m} S(x_{it}, y_{jt}), \\
        P(X > Y) &= \frac1T \sum_{t=1}^T P_t.
        \end{aligned}

    :math:`P_t = U_t / (nm)` with :math:`U_t` the Mann–Whitney U of X, computed from the
    midranks :math:`\rho` of the pooled sample as
    :math:`U_t = \sum_i \rho(x_{it}) - n(n+1)/2`. Note :math:`P(X>Y) + P(Y>X) = 1`.

    Args:
        scores_x: ``[n, tasks]`` scores of algorithm X.
        scores_y: ``[m, tasks]`` scores of algorithm Y (``m`` may differ from ``n``).

    Returns:
        A probability in :math:`[0, 1]`; 0.5 means no difference in this sense.

    Raises:
        ValueError: not 2-D, different numbers of tasks, empty or NaN/inf.
    """
    x, y = _check_pair(scores_x, scores_y)
    return float(_poi_batched(x, y))


@dataclass(frozen=True)
class BootstrapInterval:
    """A point estimate with its stratified bootstrap confidence interval.

    Attributes:
        estimate: the statistic on the observed scores.
        low: the interval's lower end.
        high: the interval's upper end.
        confidence: the nominal coverage, e.g. 0.95.
        standard_error: the standard deviation of the bootstrap distribution.
        n_resamples: bootstrap resamples drawn.
        method: ``"percentile"`` or ``"basic"``.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    standard_error: float
    n_resamples: int
    method: str

    def covers(self, value: float) -> bool:
        """Whether ``low <= value <= high``."""
        return self.low <= value <= self.high


def _check_options(confidence: object, n_resamples: object, method: object, rng: object) -> np.random.Generator:
    require_number("confidence", confidence, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 100:
        raise ValueError(f"n_resamples must be an int >= 100, got {n_resamples!r}")
    if method not in BOOTSTRAP_METHODS:
        raise ValueError(f"method must be one of {BOOTSTRAP_METHODS}, got {method!r}")
    if rng is None or isinstance(rng, np.random.Generator):
        return np.random.default_rng(rng)
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {type(rng).__name__}")


def _run_bootstrap(
    columns: list[np.ndarray],
    stat: Callable[..., np.ndarray],
    *,
    values_per_resample: int,
    confidence: float,
    n_resamples: int,
    method: str,
    rng: np.random.Generator,
) -> BootstrapInterval:
    """``scipy.stats.bootstrap`` with one sample per stratum: each is resampled independently."""
    estimate = float(stat(*columns, axis=-1))
    if not math.isfinite(estimate):
        raise ValueError(f"statistic returned {estimate} on the observed scores; it must be finite")
    batch = max(1, _MAX_BATCH_VALUES // values_per_resample)
    with warnings.catch_warnings():
        # NaN resamples are reported below as a ValueError instead of scipy's warning.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap(
            columns,
            stat,
            n_resamples=int(n_resamples),
            batch=batch,
            vectorized=True,
            paired=False,
            confidence_level=float(confidence),
            method=method,
            rng=rng,
        )
    dist = np.asarray(res.bootstrap_distribution)
    if not np.isfinite(dist).all():
        raise ValueError("statistic returned NaN or inf on a bootstrap resample; it must be finite on every resample")
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return BootstrapInterval(
        estimate=estimate,
        low=low,
        high=high,
        confidence=float(confidence),
        standard_error=float(res.standard_error),
        n_resamples=int(n_resamples),
        method=method,
    )


def _batched_statistic(statistic: Callable[..., object]) -> Callable[[np.ndarray], np.ndarray]:
    """Call ``statistic`` on ``[..., runs, tasks]`` with ``axis=(-2, -1)``, or one resample at a time."""
    try:
        takes_axis = "axis" in inspect.signature(statistic).parameters
    except (TypeError, ValueError):  # some builtins / ufuncs have no signature
        takes_axis = False
    if takes_axis:
        return lambda scores: np.asarray(statistic(scores, axis=(-2, -1)), dtype=np.float64)

    def one_at_a_time(scores: np.ndarray) -> np.ndarray:
        flat = scores.reshape(-1, *scores.shape[-2:])
        out = np.array([float(statistic(s)) for s in flat], dtype=np.float64)
        return out.reshape(scores.shape[:-2])

    return one_at_a_time


def stratified_bootstrap_interval(
    scores: ArrayLike,
    statistic: Callable[..., object] = iqm,
    *,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    method: str = "percentile",
    rng: int | np.random.Generator | None = None,
) -> BootstrapInterval:
    r"""Stratified bootstrap interval of an aggregate over runs × tasks (Agarwal et al. 2021).

    Each resample draws, **independently for every task** :math:`t`, :math:`R` runs with
    replacement from that task's :math:`R` observed runs; the tasks themselves are kept
    (``rliable``'s ``StratifiedBootstrap`` with ``task_bootstrap=False``). For resample
    :math:`b`, with indices :math:`i^{(b)}_{rt}` uniform on :math:`\{1..R\}`,

    .. math::

        \begin{aligned}
        x^{(b)}_{rt} &= x_{i^{(b)}_{rt},\,t}, \\
        \hat\theta^{(b)} &= \theta(x^{(b)}),
        \end{aligned}

    and the percentile interval (``rliable``'s default, also the default here) is the
    :math:`\alpha/2` and :math:`1-\alpha/2` quantiles (linear interpolation) of
    :math:`\hat\theta^{(1..B)}`, :math:`\alpha = 1 - \text{confidence}`. ``"basic"``
    reflects them about :math:`\hat\theta`: :math:`[2\hat\theta - q_{1-\alpha/2},\,
    2\hat\theta - q_{\alpha/2}]`. The interval speaks about these tasks only; it says nothing
    about a different choice of tasks.

    It is ``scipy.stats.bootstrap`` with each task's column as a separate, independently
    resampled sample. ``rliable`` defaults to 50 000 resamples; the default here is scipy's
    9 999.

    Args:
        scores: ``[runs, tasks]`` with ``runs >= 2``.
        statistic: called as ``statistic(x, axis=(-2, -1))`` on ``x [..., runs, tasks]``,
            returning ``[...]`` (:func:`iqm`, ``numpy.mean``, ``numpy.median``,
            :func:`optimality_gap`); one without an ``axis`` parameter is called on one
            ``[runs, tasks]`` array at a time and must return a number.
        confidence: nominal coverage in (0, 1).
        n_resamples: bootstrap resamples :math:`B` (>= 100).
        method: ``"percentile"`` (default) or ``"basic"``.
        rng: seed or ``numpy.random.Generator``.

    Returns:
        :class:`BootstrapInterval`.

    Raises:
        ValueError: fewer than 2 runs, NaN/inf scores, a statistic that is not finite, or a
            bad option. TypeError: non-numeric scores or a non-callable statistic.
    """
    arr = _as_scores("scores", scores, ndim=2)
    if arr.shape[0] < 2:
        raise ValueError(f"scores must hold at least 2 runs per task to resample, got {arr.shape[0]}")
    if not callable(statistic):
        raise TypeError(f"statistic must be callable, got {type(statistic).__name__}")
    gen = _check_options(confidence, n_resamples, method, rng)
    batched = _batched_statistic(statistic)

    def stat(*cols: np.ndarray, axis: int = -1) -> np.ndarray:
        return batched(np.stack(cols, axis=-1))  # [..., runs] per task -> [..., runs, tasks]

    columns = [np.ascontiguousarray(arr[:, t]) for t in range(arr.shape[1])]
    return _run_bootstrap(
        columns,
        stat,
        values_per_resample=arr.size,
        confidence=confidence,
        n_resamples=n_resamples,
        method=method,
        rng=gen,
    )


def probability_of_improvement_interval(
    scores_x: ArrayLike,
    scores_y: ArrayLike,
    *,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    method: str = "percentile",
    rng: int | np.random.Generator | None = None,
) -> BootstrapInterval:
    r"""Stratified bootstrap interval of :func:`probability_of_improvement`.

    As ``rliable``'s ``StratifiedIndependentBootstrap`` (Agarwal et al. 2021): the runs of X
    and the runs of Y are resampled independently of each other and, within each, independently
    per task; :math:`P(X>Y)` is recomputed on every resample, and the percentile (default) or
    basic interval taken as in :func:`stratified_bootstrap_interval`.

    Args:
        scores_x: ``[n, tasks]``, ``n >= 2``.
        scores_y: ``[m, tasks]``, ``m >= 2``.
        confidence: nominal coverage in (0, 1).
        n_resamples: bootstrap resamples (>= 100).
        method: ``"percentile"`` or ``"basic"``.
        rng: seed or ``numpy.random.Generator``.

    Returns:
        :class:`BootstrapInterval` whose ``estimate`` is :func:`probability_of_improvement`.
    """
    x, y = _check_pair(scores_x, scores_y)
    for name, a in (("scores_x", x), ("scores_y", y)):
        if a.shape[0] < 2:
            raise ValueError(f"{name} must hold at least 2 runs per task to resample, got {a.shape[0]}")
    gen = _check_options(confidence, n_resamples, method, rng)
    n_tasks = x.shape[1]

    def stat(*cols: np.ndarray, axis: int = -1) -> np.ndarray:
        return _poi_batched(np.stack(cols[:n_tasks], axis=-1), np.stack(cols[n_tasks:], axis=-1))

    columns = [np.ascontiguousarray(x[:, t]) for t in range(n_tasks)]
    columns += [np.ascontiguousarray(y[:, t]) for t in range(n_tasks)]
    return _run_bootstrap(
        columns,
        stat,
        values_per_resample=(x.shape[0] + y.shape[0]) * n_tasks,
        confidence=confidence,
        n_resamples=n_resamples,
        method=method,
        rng=gen,
    )
