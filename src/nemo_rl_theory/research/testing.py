r"""Designing and analysing comparisons: multiple-testing corrections, power and sample size.

* :func:`holm` (Holm 1979) adjusts a family of p-values so that rejecting every hypothesis
  with adjusted p-value :math:`\le \alpha` keeps the family-wise error rate (the probability
  of at least one false rejection) at most :math:`\alpha`, under any dependence.
* :func:`benjamini_hochberg` (Benjamini & Hochberg 1995) adjusts them so that the same rule
  keeps the false discovery rate (the expected share of false rejections among rejections)
  at most :math:`q`, for independent (or positively dependent) p-values; it is
  ``scipy.stats.false_discovery_control(method="bh")``.
* :func:`t_test_power` and :func:`sample_size_for_power` give the power of the two-sample
  t test with :math:`n` per group from the noncentral t distribution (Cohen 1988, ch. 2),
  and the smallest :math:`n` that reaches a target power.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats
from torch import Tensor

from nemo_rl_theory._validation import require_number, require_real_array

__all__ = [
    "ALTERNATIVES",
    "benjamini_hochberg",
    "holm",
    "sample_size_for_power",
    "t_test_power",
]

#: ``alternative`` values accepted by the power functions (``scipy.stats.ttest_ind``'s names).
ALTERNATIVES = ("two-sided", "greater", "less")

ArrayLike = Sequence[float] | np.ndarray | Tensor

_REAL = "a real number or an array of them"


def _p_values(value: object) -> np.ndarray:
    arr = require_real_array(
        "p_values",
        value,
        ndim=1,
        what="a 1-D sequence, array or tensor of p-values",
    )
    if ((arr < 0) | (arr > 1)).any():
        raise ValueError(f"p_values must lie in [0, 1], got min {arr.min():g}, max {arr.max():g}")
    return arr


def holm(p_values: ArrayLike) -> np.ndarray:
    r"""Holm's (1979) step-down adjusted p-values: reject where ``holm(p) <= alpha``.

    With the p-values sorted, :math:`p_{(1)} \le \dots \le p_{(m)}`,

    .. math::

        \begin{aligned}
        \tilde p_{(i)} = \min\Big(1,\,
          \max_{j \le i}\,(m - j + 1)
          \,p_{(j)}\Big)
        \end{aligned}

    mapped back to the input order. Rejecting :math:`\tilde p \le \alpha` is Holm's
    procedure (reject :math:`H_{(1)}, H_{(2)}, \dots` while
    :math:`p_{(i)} \le \alpha/(m-i+1)`, stop at the first failure), which controls the
    family-wise error rate at :math:`\alpha` under arbitrary dependence and never rejects
    less than Bonferroni (:math:`\tilde p \le \min(1, m p)`). The running maximum makes the
    adjusted values monotone in :math:`p`; ties in :math:`p` get equal adjusted values.

    Args:
        p_values: ``[m]`` p-values in [0, 1], ``m >= 1``.

    Returns:
        ``[m]`` float64 adjusted p-values, in the input order.

    Raises:
        ValueError: empty, not 1-D, NaN/inf or outside [0, 1]. TypeError: non-numeric.
    """
    p = _p_values(p_values)
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = (m - np.arange(m)) * p[order]
    adjusted_sorted = np.minimum(1.0, np.maximum.accumulate(scaled))
    out = np.empty(m)
    out[order] = adjusted_sorted
    return out


def benjamini_hochberg(p_values: ArrayLike) -> np.ndarray:
    r"""Benjamini–Hochberg (1995) adjusted p-values: reject where ``bh(p) <= q``.

    With the p-values sorted, :math:`p_{(1)} \le \dots \le p_{(m)}`,

    .. math::

        \begin{aligned}
        \tilde p_{(i)} = \min\Big(1,\,
          \min_{j \ge i}\,\frac{m}{j}
          \,p_{(j)}\Big)
        \end{aligned}

    (``scipy.stats.false_discovery_control(p, method="bh")``). Rejecting
    :math:`\tilde p \le q` is the step-up rule: find the largest :math:`i` with
    :math:`p_{(i)} \le i q / m` and reject :math:`H_{(1)}, \dots, H_{(i)}`. For independent
    p-values the false discovery rate is then :math:`q\,m_0/m \le q` (:math:`m_0` true nulls);
    under the complete null it is also the family-wise error rate. Since
    :math:`m/i \le m - i + 1`, BH adjusted values never exceed Holm's.

    Args and Raises as :func:`holm`.
    """
    p = _p_values(p_values)
    return np.asarray(stats.false_discovery_control(p, method="bh"), dtype=np.float64)


# ----------------------------------------------------------------------------- power


def _alternative(alternative: object) -> str:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    return str(alternative)


def _power(d: np.ndarray, n: np.ndarray, alpha: float, alternative: str) -> np.ndarray:
    df = 2.0 * n - 2.0
    ncp = d * np.sqrt(n / 2.0)
    # P(T < -t) is written P(-T > t) with -T ~ t_nu(-lambda): scipy 1.17's nct.cdf returns NaN
    # far in the lower tail (e.g. nu = 2, lambda = 20), where nct.sf of the mirror is a clean 0.
    if alternative == "two-sided":
        t_crit = stats.t.isf(alpha / 2.0, df)
        power = stats.nct.sf(t_crit, df, ncp) + stats.nct.sf(t_crit, df, -ncp)
    else:
        t_crit = stats.t.isf(alpha, df)
        power = stats.nct.sf(t_crit, df, ncp if alternative == "greater" else -ncp)
    power = np.asarray(power, dtype=np.float64)
    if not np.isfinite(power).all():
        raise ValueError("effect_size and n_per_group are outside what scipy.stats.nct evaluates (got NaN power)")
    return np.clip(power, 0.0, 1.0)


def t_test_power(
    effect_size: float | ArrayLike,
    n_per_group: int | ArrayLike,
    alpha: float = 0.05,
    alternative: str = "two-sided",
) -> float | np.ndarray:
    r"""Power of the two-sample t test with ``n_per_group`` per group (Cohen 1988, ch. 2).

    For two normal groups with common standard deviation :math:`\sigma` and standardised
    difference :math:`d = (\mu_a - \mu_b)/\sigma` (Cohen's :math:`d`), the Student statistic
    with :math:`n` per group is noncentral t:

    .. math::

        \begin{aligned}
        T &\sim t_{\nu}(\lambda), \quad
          \nu = 2n - 2, \\
        \lambda &= d\,\sqrt{n/2}, \\
        \text{power} &= P\big(|T| >
          t_{\nu,\,1-\alpha/2}\big)
        \end{aligned}

    (one-sided: :math:`P(T > t_{\nu,1-\alpha})` for ``"greater"``,
    :math:`P(T < -t_{\nu,1-\alpha})` for ``"less"``), from ``scipy.stats.nct``. It is the
    rejection rate of ``scipy.stats.ttest_ind(a, b)``; with equal :math:`n` and equal
    variances Welch's test (``equal_var=False``) has somewhat less power at few seeds (its
    degrees of freedom are estimated, at most :math:`2n-2`; about 3 points less at
    :math:`n = 5`, :math:`d = 1.5`) and the same power as :math:`n` grows. A seeds-as-replicates
    comparison of two RL recipes is this test with :math:`n` seeds per recipe.

    Args:
        effect_size: Cohen's :math:`d` (finite; negative favours ``b``), scalar or array.
        n_per_group: :math:`n \ge 2` per group (integer), broadcastable with ``effect_size``.
        alpha: significance level in (0, 1).
        alternative: ``"two-sided"``, ``"greater"`` (:math:`\mu_a > \mu_b`) or ``"less"``.

    Returns:
        A float if both inputs are scalars, else an array of the broadcast shape.

    Raises:
        ValueError: ``n_per_group < 2`` or non-integer, non-finite ``effect_size``, ``alpha``
            outside (0, 1), unknown ``alternative``, shapes that do not broadcast.
        TypeError: non-numeric input.
    """
    d = require_real_array("effect_size", effect_size, min_size=0, what=_REAL)
    n = require_real_array("n_per_group", n_per_group, min_size=0, what=_REAL)
    if (n != np.round(n)).any() or (n < 2).any():
        raise ValueError(f"n_per_group must be integers >= 2, got {n.min() if (n < 2).any() else 'a non-integer'}")
    require_number("alpha", alpha, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    alt = _alternative(alternative)
    try:
        d, n = np.broadcast_arrays(d, n)
    except ValueError:
        raise ValueError(
            f"effect_size and n_per_group must broadcast together, got shapes {list(d.shape)} and {list(n.shape)}"
        ) from None
    out = _power(d, n, float(alpha), alt)
    return float(out) if out.ndim == 0 else out


def sample_size_for_power(
    effect_size: float,
    power: float = 0.8,
    alpha: float = 0.05,
    alternative: str = "two-sided",
    *,
    max_n: int = 10**8,
) -> int:
    r"""Smallest :math:`n` per group at which :func:`t_test_power` reaches ``power``.

    .. math::

        \begin{aligned}
        n^\star = \min\{n \ge 2 :
          \text{power}(d, n, \alpha) \ge \pi\}
        \end{aligned}

    found by bisection over the integers (power increases with :math:`n` for :math:`d \ne 0`),
    bracketed around the normal approximation
    :math:`n \approx 2\,(z_{1-\alpha/2} + z_{\pi})^2 / d^2`. For :math:`d = 0.5`,
    :math:`\pi = 0.8`, :math:`\alpha = 0.05` two-sided this is 64 (Cohen 1988, table 2.4.1).

    Args:
        effect_size: Cohen's :math:`d`, nonzero; for a one-sided ``alternative`` its sign must
            match (positive for ``"greater"``, negative for ``"less"``).
        power: target power :math:`\pi` in (0, 1).
        alpha: significance level in (0, 1).
        alternative: as :func:`t_test_power`.
        max_n: give up above this many per group.

    Raises:
        ValueError: ``effect_size`` zero, non-finite or of the wrong sign for a one-sided
            test, ``power``/``alpha`` outside (0, 1), target not reached by ``max_n``.
        TypeError: non-numeric input.
    """
    require_number("effect_size", effect_size)
    require_number("power", power, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    require_number("alpha", alpha, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    alt = _alternative(alternative)
    if isinstance(max_n, bool) or not isinstance(max_n, int) or max_n < 2:
        raise ValueError(f"max_n must be an int >= 2, got {max_n!r}")
    d = float(effect_size)
    if d == 0.0:
        raise ValueError("effect_size must be nonzero: with d = 0 the power is alpha at every n")
    if (alt == "greater" and d < 0) or (alt == "less" and d > 0):
        raise ValueError(
            f"effect_size must be {'positive' if alt == 'greater' else 'negative'} for "
            f"alternative={alt!r}, got {d}: the power then never exceeds alpha"
        )

    def reaches(n: int) -> bool:
        return float(_power(np.float64(d), np.float64(n), float(alpha), alt)) >= power

    if reaches(2):
        return 2
    a = float(alpha) / 2.0 if alt == "two-sided" else float(alpha)
    guess = 2.0 * (stats.norm.isf(a) + stats.norm.ppf(power)) ** 2 / d**2
    hi = min(max_n, max(3, math.ceil(guess)))
    lo = 2
    while not reaches(hi):
        if hi >= max_n:
            raise ValueError(f"power {power} is not reached with n_per_group <= max_n={max_n} at effect_size {d}")
        lo, hi = hi, min(max_n, 2 * hi)
    # invariant: not reaches(lo), reaches(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if reaches(mid):
            hi = mid
        else:
            lo = mid
    return hi
