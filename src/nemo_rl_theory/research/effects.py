r"""Effect sizes with exact confidence intervals: Cohen's d, Hedges' g and the noncentral t.

A p-value says how surprising a difference would be if there were none; an effect size says
how large it is. For two recipes scored over seeds, the standardised mean difference
(Cohen's :math:`d`) divides the difference of means by the pooled standard deviation of the
seeds; Hedges (1981) multiplies it by an exact factor :math:`J(\nu)` that removes its
small-sample bias (Hedges' :math:`g`). Its confidence interval is exact for normal scores with
a common variance: the t statistic is noncentral t with noncentrality
:math:`\lambda = \delta\sqrt{\tilde n}`, and inverting ``scipy.stats.nct`` in
:math:`\lambda` gives the interval for :math:`\delta` (Hedges & Olkin 1985, ch. 5;
Steiger & Fouladi 1997; Cumming 2014).

scipy has the t tests and the noncentral t, not these effect sizes: this module adds them.

* :func:`cohens_d`, :func:`hedges_correction`, :func:`hedges_g`: the point estimates
  (two-sample, or paired: :math:`d_z`, the mean difference over the SD of the differences).
* :func:`noncentral_t_interval`: the interval for :math:`\lambda` from an observed t,
  vectorised over arrays (a simulation can compute thousands at once).
* :func:`hedges_g_interval`: :math:`g` with its exact interval, as an :class:`EffectSize`.

Inputs are 1-D sequences, NumPy arrays or torch tensors of finite scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special, stats
from torch import Tensor

from nemo_rl_theory._validation import require_number, require_real_array

__all__ = [
    "EffectSize",
    "cohens_d",
    "hedges_correction",
    "hedges_g",
    "hedges_g_interval",
    "noncentral_t_interval",
]

ArrayLike = Sequence[float] | np.ndarray | Tensor


def _sample(name: str, value: object, *, minimum: int) -> np.ndarray:
    """A 1-D float64 array of at least ``minimum`` finite scores."""
    return require_real_array(
        name,
        value,
        ndim=1,
        min_size=minimum,
        allow_scalar=False,
        layout="[n] (1-D, one score per seed)",
        what="a 1-D sequence, array or tensor of scores",
    )


def _confidence(confidence: object) -> float:
    return require_number("confidence", confidence, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)


def _standardised(x: object, y: object, paired: bool) -> tuple[float, float, float]:
    """``(d, nu, scale)`` with ``t = d * scale`` the t statistic on ``nu`` degrees of freedom."""
    if not isinstance(paired, bool):
        raise TypeError(f"paired must be a bool, got {type(paired).__name__}")
    if paired:
        a = _sample("x", x, minimum=3)
        b = _sample("y", y, minimum=3)
        if a.size != b.size:
            raise ValueError(f"paired x and y must have the same length (one pair per seed), got {a.size} and {b.size}")
        diff = a - b
        sd = float(np.std(diff, ddof=1))
        if not sd > 0.0:
            raise ValueError("x - y has zero variance: the paired standardised difference is undefined")
        return float(diff.mean()) / sd, float(a.size - 1), math.sqrt(a.size)
    a = _sample("x", x, minimum=2)
    b = _sample("y", y, minimum=2)
    n1, n2 = a.size, b.size
    pooled_var = ((n1 - 1) * np.var(a, ddof=1) + (n2 - 1) * np.var(b, ddof=1)) / (n1 + n2 - 2)
    if not pooled_var > 0.0:
        raise ValueError("x and y have zero pooled variance: the standardised difference is undefined")
    d = float(a.mean() - b.mean()) / math.sqrt(pooled_var)
    return d, float(n1 + n2 - 2), math.sqrt(n1 * n2 / (n1 + n2))


def cohens_d(x: ArrayLike, y: ArrayLike, *, paired: bool = False) -> float:
    r"""Cohen's :math:`d`: the difference of means in units of the seeds' standard deviation.

    Two independent samples (:math:`n_x, n_y \ge 2`):

    .. math::

        \begin{aligned}
        d &= (\bar x - \bar y)/s_p, \\
        s_p^2 &= \frac{(n_x-1)s_x^2
          + (n_y-1)s_y^2}{n_x + n_y - 2}
        \end{aligned}

    (:math:`s^2` with divisor :math:`n-1`). Paired (``paired=True``, :math:`n \ge 3` pairs,
    :math:`D_i = x_i - y_i`): :math:`d_z = \bar D / s_D`. The two are different scales:
    for equal variances and correlation :math:`\rho`,
    :math:`\delta_z = \delta/\sqrt{2(1-\rho)}`.

    Raises:
        ValueError: empty, too few scores, not 1-D, NaN/inf, zero (pooled) variance, paired
            lengths that differ. TypeError: non-numeric input (strings, booleans, complex).
    """
    return _standardised(x, y, paired)[0]


def hedges_correction(df: float) -> float:
    r"""Hedges' (1981) exact bias factor :math:`J(\nu)`, with :math:`\mathbb E[J d] = \delta`.

    .. math::

        \begin{aligned}
        J(\nu) &= \frac{\Gamma(\nu/2)}
          {\sqrt{\nu/2}\;
           \Gamma\big((\nu-1)/2\big)} \\
        &\approx 1 - \frac{3}{4\nu - 1}
        \end{aligned}

    evaluated as ``scipy.special.poch((nu - 1) / 2, 1 / 2)`` (the gamma ratio, accurate at
    large :math:`\nu` where a difference of ``gammaln`` loses digits). :math:`\nu = n_x + n_y - 2` (two samples) or
    :math:`n - 1` (paired). It needs :math:`\nu > 1`: at :math:`\nu = 1` the mean of
    :math:`d` is infinite.

    Raises:
        ValueError: ``df`` not a finite number > 1. TypeError: non-numeric.
    """
    nu = require_number("df", df, low=1.0, low_inclusive=False)
    return float(special.poch((nu - 1.0) / 2.0, 0.5)) / math.sqrt(nu / 2.0)


def hedges_g(x: ArrayLike, y: ArrayLike, *, paired: bool = False) -> float:
    r"""Hedges' :math:`g = J(\nu)\,d`: Cohen's :math:`d` without its small-sample bias.

    :math:`\mathbb E[d] = \delta / J(\nu)`: :math:`d` overestimates :math:`|\delta|` by
    :math:`1/J(\nu) - 1 \approx 3/(4\nu - 4)` of itself (for 5 seeds per arm, 11%); :math:`g`
    is unbiased for normal scores with a common variance. ``paired``
    as :func:`cohens_d` (:math:`\nu = n - 1`).

    Raises as :func:`cohens_d`.
    """
    d, nu, _ = _standardised(x, y, paired)
    return hedges_correction(nu) * d


def _cdf(t: np.ndarray, df: np.ndarray, nc: np.ndarray) -> np.ndarray:
    """:math:`P(T \\le t)` for :math:`T \\sim t_\\nu(\\lambda)`, via the mirror ``sf(-t; -lambda)`` where cdf is NaN."""
    with np.errstate(all="ignore"):
        out = stats.nct.cdf(t, df, nc)
        bad = ~np.isfinite(out)
        if bad.any():
            out = np.where(bad, stats.nct.sf(-t, df, -nc), out)
    return np.clip(out, 0.0, 1.0)


def _solve_nc(t: np.ndarray, df: np.ndarray, target: float) -> np.ndarray:
    """The :math:`\\lambda` with ``cdf(t; df, lambda) = target`` (cdf decreases in lambda), by bisection."""
    width = np.sqrt(1.0 + t**2 / (2.0 * df)) * (stats.norm.isf(min(target, 1 - target)) + 1.0)
    lo, hi = t - width, t + width
    for _ in range(200):  # widen until cdf(lo) >= target >= cdf(hi)
        low_bad = _cdf(t, df, lo) < target
        high_bad = _cdf(t, df, hi) > target
        if not (low_bad.any() or high_bad.any()):
            break
        lo = np.where(low_bad, lo - 2.0 * width, lo)
        hi = np.where(high_bad, hi + 2.0 * width, hi)
        width = 2.0 * width
    else:  # pragma: no cover - the cdf is monotone in lambda and tends to 0 and 1
        raise ValueError("could not bracket the noncentrality parameter (t or df out of scipy.stats.nct's range)")
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        above = _cdf(t, df, mid) > target
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
        if np.all(hi - lo <= 1e-12 * np.maximum(1.0, np.abs(mid))):
            break
    return 0.5 * (lo + hi)


def noncentral_t_interval(
    t: float | ArrayLike, df: float | ArrayLike, confidence: float = 0.95
) -> tuple[float | np.ndarray, float | np.ndarray]:
    r"""Exact confidence interval for the noncentrality :math:`\lambda` of an observed t.

    If :math:`T \sim t_\nu(\lambda)` and :math:`t` is observed, the bounds solve

    .. math::

        \begin{aligned}
        F_{\nu,\lambda_L}(t) &= 1 - \alpha/2, \\
        F_{\nu,\lambda_U}(t) &= \alpha/2
        \end{aligned}

    with :math:`F` the noncentral t cdf (``scipy.stats.nct.cdf``) and
    :math:`\alpha = 1 - \text{confidence}`. :math:`F_{\nu,\lambda}(t)` falls as
    :math:`\lambda` grows, so :math:`P(\lambda_L \le \lambda \le \lambda_U)` is exactly the
    confidence (Steiger & Fouladi 1997). Solved by bisection, elementwise, to 1e-12 (relative for
    :math:`|\lambda| > 1`, absolute below).

    Args:
        t: observed t statistic(s), finite.
        df: degrees of freedom :math:`\nu > 0`, broadcastable with ``t``.
        confidence: in (0, 1).

    Returns:
        ``(low, high)``: floats if ``t`` and ``df`` are scalars, else arrays.

    Raises:
        ValueError: non-finite ``t``, ``df <= 0``, ``confidence`` outside (0, 1), shapes that
            do not broadcast. TypeError: non-numeric (strings, booleans, complex).
    """
    conf = _confidence(confidence)
    arrays = []
    for name, value in (("t", t), ("df", df)):
        arrays.append(require_real_array(name, value, min_size=0, what="a real number or an array of them"))
    t_arr, df_arr = arrays
    if (df_arr <= 0).any():
        raise ValueError(f"df must be > 0, got {df_arr.min():g}")
    try:
        t_arr, df_arr = np.broadcast_arrays(t_arr, df_arr)
    except ValueError:
        raise ValueError(
            f"t and df must broadcast together, got shapes {list(t_arr.shape)} and {list(df_arr.shape)}"
        ) from None
    alpha = 1.0 - conf
    low = _solve_nc(t_arr, df_arr, 1.0 - alpha / 2.0)
    high = _solve_nc(t_arr, df_arr, alpha / 2.0)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


@dataclass(frozen=True)
class EffectSize:
    """Hedges' g with its exact interval for the population standardised difference.

    Attributes:
        estimate: Hedges' :math:`g` (bias-corrected).
        low, high: the ``confidence`` interval for :math:`\\delta` (noncentral t inversion).
        confidence: the confidence level.
        cohens_d: the uncorrected :math:`d`.
        t_statistic: :math:`t = d\\sqrt{\\tilde n}` (Student's pooled t, or the paired t).
        df: its degrees of freedom :math:`\\nu`.
        paired: whether the paired :math:`d_z` scale was used.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    cohens_d: float
    t_statistic: float
    df: float
    paired: bool


def hedges_g_interval(x: ArrayLike, y: ArrayLike, confidence: float = 0.95, *, paired: bool = False) -> EffectSize:
    r"""Hedges' :math:`g` and the exact interval for :math:`\delta` (Hedges & Olkin 1985).

    .. math::

        \begin{aligned}
        t &= d\,\sqrt{\tilde n} \sim
          t_\nu\big(\delta\sqrt{\tilde n}\big), \\
        \tilde n &= \tfrac{n_x n_y}{n_x + n_y}
          \;\text{or}\; n\ \text{(paired)}, \\
        [\delta_L, \delta_U] &=
          [\lambda_L, \lambda_U]/\sqrt{\tilde n}
        \end{aligned}

    with :math:`[\lambda_L, \lambda_U]` from :func:`noncentral_t_interval`. Its coverage is
    exact for normal scores with a common variance (for the paired :math:`d_z`: normal
    differences). The interval is for :math:`\delta` itself: it is not shrunk by :math:`J`.

    Raises as :func:`cohens_d`, and ValueError for ``confidence`` outside (0, 1).
    """
    conf = _confidence(confidence)
    d, nu, scale = _standardised(x, y, paired)
    t = d * scale
    lam_low, lam_high = noncentral_t_interval(t, nu, conf)
    return EffectSize(
        estimate=hedges_correction(nu) * d,
        low=float(lam_low) / scale,
        high=float(lam_high) / scale,
        confidence=conf,
        cohens_d=d,
        t_statistic=t,
        df=nu,
        paired=paired,
    )
