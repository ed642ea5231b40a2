r"""Hyperparameter-tuning methodology: the winner's curse, expected best score versus budget, halving.

* :func:`expected_max_of_normals` and :func:`winners_curse_bias`: selecting the best of
  :math:`n` configurations by noisy scores overestimates the winner. With independent noise
  :math:`\varepsilon_i` the winner's error is at most :math:`\max_i \varepsilon_i`, so the bias is
  at most :math:`\mathbb E[\max_i \varepsilon_i]`, which is :math:`\sigma e_n` for Gaussian noise,
  with equality when the :math:`n` true values tie.
* :func:`expected_max_score`, :func:`max_score_std` and :func:`order_statistic_weights`: the
  *expected validation performance* of Dodge et al. (2019, *Show your work: improved reporting of
  experimental results*): the expected best of :math:`n` configurations drawn from the
  :math:`N` that were run, as a function of the budget :math:`n`, exactly, from the empirical
  distribution of the :math:`N` scores (with or without replacement).
* :func:`successive_halving_schedule`: the budget accounting of synchronous successive halving
  (Jamieson & Talwalkar 2016; the inner loop of Hyperband, Li et al. 2018): trials and resource
  per rung, and the total against a full sweep.

Scores are numpy arrays out; lists, numpy arrays and torch tensors are accepted in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import integrate, special
from torch import Tensor

from nemo_rl_theory._validation import require_bool, require_int, require_number, require_real_array

__all__ = [
    "MAX_NORMALS",
    "HalvingSchedule",
    "expected_max_of_normals",
    "expected_max_score",
    "max_score_std",
    "order_statistic_weights",
    "successive_halving_schedule",
    "winners_curse_bias",
]

#: Largest ``n`` accepted by :func:`expected_max_of_normals` (the quadrature is checked up to here).
MAX_NORMALS = 10**7

ArrayLike = Sequence[float] | np.ndarray | Tensor


# ----------------------------------------------------------------------------- the winner's curse


def expected_max_of_normals(n: int) -> float:
    r"""Expected maximum :math:`e_n` of ``n`` independent standard normals, by quadrature.

    .. math::

       \begin{aligned}
       e_n &= \mathbb E\big[\max_{i \le n} Z_i\big] \\
           &= \int_0^\infty \big(1 - \Phi(z)^n\big)\,dz \\
           &\quad - \int_{-\infty}^0 \Phi(z)^n\,dz ,
       \end{aligned}

    the identity :math:`\mathbb E[M] = \int_0^\infty P(M > z)\,dz - \int_{-\infty}^0 P(M \le z)\,dz`
    with :math:`P(M \le z) = \Phi(z)^n`. :math:`\Phi(z)^n` is evaluated as
    ``exp(n * log_ndtr(z))`` so that large ``n`` neither underflows nor loses precision;
    ``1 <= n <= MAX_NORMALS``. :math:`e_1 = 0`, :math:`e_2 = 1/\sqrt\pi`,
    :math:`e_3 = 3/(2\sqrt\pi)`, and :math:`e_n \approx \sqrt{2 \ln n}` for large ``n``.
    """
    require_int("n", n, low=1)
    if n > MAX_NORMALS:
        raise ValueError(f"n must be <= {MAX_NORMALS}, got {n}")
    if n == 1:
        return 0.0
    mode = math.sqrt(2.0 * math.log(n))  # where Phi(z)^n rises from 0 to 1

    def upper(z: float) -> float:
        return -math.expm1(n * special.log_ndtr(z))

    def lower(z: float) -> float:
        return math.exp(n * special.log_ndtr(z))

    opts = {"epsabs": 1e-13, "epsrel": 1e-12, "limit": 200}
    hi = mode + 12.0
    pos = integrate.quad(upper, 0.0, hi, points=[min(mode, hi / 2)], **opts)[0]
    neg = integrate.quad(lower, -12.0, 0.0, **opts)[0]
    return pos - neg


def winners_curse_bias(n_configs: int, noise_std: float = 1.0) -> float:
    r"""Upward bias of the best of ``n_configs`` noisy scores when all true values tie: :math:`\sigma e_n`.

    Scores :math:`y_i = \mu_i + \varepsilon_i` with independent :math:`\varepsilon_i \sim
    \mathcal N(0, \sigma^2)`; the winner :math:`w = \arg\max_i y_i`. Because
    :math:`\varepsilon_w \le \max_i \varepsilon_i` on every draw,

    .. math::

       \begin{aligned}
       \mathbb E[y_w - \mu_w] &= \mathbb E[\varepsilon_w] \\
       &\le \mathbb E[\max_i \varepsilon_i] = \sigma e_n ,
       \end{aligned}

    with equality when all :math:`\mu_i` are equal (then the winner is the largest noise). The
    bias vanishes when the winner is re-scored on fresh noise, independent of the selection.
    ``noise_std`` is :math:`\sigma \ge 0`; :math:`e_n` is :func:`expected_max_of_normals`.
    """
    sigma = require_number("noise_std", noise_std, low=0.0)
    return sigma * expected_max_of_normals(n_configs)


# ----------------------------------------------------------------------------- expected best vs budget


def _scores(name: str, value: object) -> np.ndarray:
    return require_real_array(
        name,
        value,
        ndim=1,
        allow_bool=True,
        layout="[runs] (1-D, one score per run)",
        what="a sequence, array or tensor of scores",
    )


def _budgets(value: object, num_scores: int, replace: bool) -> tuple[np.ndarray, bool]:
    """Budgets as a 1-D int64 array, and whether the caller passed a single int."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    scalar = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if isinstance(value, (bool, float, str, bytes)) or value is None:
        raise TypeError(f"budgets must be an int or a sequence of ints, got {type(value).__name__}")
    arr = np.asarray(value)
    if arr.size == 0:
        raise ValueError("budgets must hold at least one budget")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"budgets must be integers, got dtype {arr.dtype}")
    if arr.ndim > 1:
        raise ValueError(f"budgets must be an int or a 1-D sequence of ints, got shape {list(arr.shape)}")
    arr = arr.reshape(-1).astype(np.int64)
    if (arr < 1).any():
        raise ValueError(f"budgets must be >= 1, got {arr.min()}")
    if not replace and (arr > num_scores).any():
        raise ValueError(
            f"budgets must be <= the number of scores ({num_scores}) when drawing without replacement, got {arr.max()}"
        )
    return arr, scalar


def order_statistic_weights(
    num_scores: int, budgets: int | Sequence[int] | np.ndarray, *, replace: bool = True
) -> np.ndarray:
    r"""Probability that the best of ``n`` draws is the ``i``-th smallest of ``N`` scores: ``[len(budgets), N]``.

    Draw :math:`n` of the :math:`N` run configurations uniformly; the best drawn score is the
    :math:`i`-th order statistic :math:`v_{(i)}` (ranks :math:`1 \dots N`, ties broken by position) with
    probability

    .. math::

       \begin{aligned}
       w_{n,i}^{\text{with}} &= \Big(\frac{i}{N}\Big)^{n}
         - \Big(\frac{i-1}{N}\Big)^{n}, \\
       w_{n,i}^{\text{without}} &= \binom{i-1}{n-1}
         \Big/ \binom{N}{n} ,
       \end{aligned}

    with replacement (Dodge et al. 2019) and without (:math:`n \le N`). Each row sums to 1. The
    binomial ratio is evaluated through ``gammaln`` (exactly 0 for :math:`i < n`).
    """
    n_scores = require_int("num_scores", num_scores, low=1)
    require_bool("replace", replace)
    b, _ = _budgets(budgets, n_scores, replace)
    i = np.arange(1, n_scores + 1, dtype=np.float64)
    n = b[:, None].astype(np.float64)
    if replace:
        return np.power(i / n_scores, n) - np.power((i - 1) / n_scores, n)
    ok = i[None, :] >= n
    log_w = (
        special.gammaln(i)[None, :]
        - special.gammaln(n)
        - special.gammaln(np.maximum(i[None, :] - n + 1, 1.0))
        - (special.gammaln(n_scores + 1.0) - special.gammaln(n + 1) - special.gammaln(n_scores - n + 1))
    )
    return np.where(ok, np.exp(np.where(ok, log_w, 0.0)), 0.0)


def expected_max_score(
    scores: ArrayLike, budgets: int | Sequence[int] | np.ndarray, *, replace: bool = True
) -> float | np.ndarray:
    r"""Expected best score of ``n`` configurations drawn from the ``N`` that were run (Dodge et al. 2019).

    With :math:`v_{(1)} \le \dots \le v_{(N)}` the sorted validation scores and
    :math:`w_{n,i}` from :func:`order_statistic_weights`,

    .. math::

       \mathbb E\big[\max_{j \le n} V_j\big] = \sum_{i=1}^{N} w_{n,i}\, v_{(i)} ,

    where :math:`V_j` are drawn i.i.d. from the empirical distribution (``replace=True``,
    Dodge et al.'s estimator) or as a uniformly random :math:`n`-subset (``replace=False``,
    :math:`n \le N`). Maximises: negate a loss first. ``budgets`` is an int (a float is returned)
    or a sequence of ints (an array of the same length); every budget is :math:`\ge 1`.
    """
    v = np.sort(_scores("scores", scores))
    require_bool("replace", replace)
    _, scalar = _budgets(budgets, v.size, replace)
    weights = order_statistic_weights(v.size, budgets, replace=replace)
    out = weights @ v
    return float(out[0]) if scalar else out


def max_score_std(
    scores: ArrayLike, budgets: int | Sequence[int] | np.ndarray, *, replace: bool = True
) -> float | np.ndarray:
    r"""Standard deviation of the best of ``n`` draws: the band Dodge et al. (2019) shade around the mean.

    .. math::

       \begin{aligned}
       \operatorname{sd}^2 &= \sum_i w_{n,i}\, v_{(i)}^2 \\
       &\quad - \Big(\sum_i w_{n,i}\, v_{(i)}\Big)^2 ,
       \end{aligned}

    the same weights and arguments as :func:`expected_max_score` (clipped at 0 against rounding).
    """
    v = np.sort(_scores("scores", scores))
    require_bool("replace", replace)
    _, scalar = _budgets(budgets, v.size, replace)
    weights = order_statistic_weights(v.size, budgets, replace=replace)
    centred = v - v.mean()  # variance is shift-invariant; centring avoids cancellation
    mean = weights @ centred
    out = np.sqrt(np.maximum(weights @ centred**2 - mean**2, 0.0))
    return float(out[0]) if scalar else out


# ----------------------------------------------------------------------------- successive halving


@dataclass(frozen=True)
class HalvingSchedule:
    """Budget of synchronous successive halving, rung by rung.

    ``trials[i]`` configurations reach rung ``i`` and are trained to ``resources[i]`` units each;
    ``steps[i]`` is the resource spent in rung ``i``; ``total`` its sum; ``full_sweep`` the cost of
    training all ``trials[0]`` configurations to ``resources[-1]``.
    """

    trials: tuple[int, ...]
    resources: tuple[int, ...]
    steps: tuple[int, ...]
    total: int
    full_sweep: int

    @property
    def fraction(self) -> float:
        """``total / full_sweep``: the share of the full sweep's budget that halving spends."""
        return self.total / self.full_sweep


def successive_halving_schedule(
    n_trials: int,
    min_resource: int,
    reduction_factor: int,
    *,
    max_resource: int | None = None,
    resume: bool = True,
) -> HalvingSchedule:
    r"""Trials and resource per rung of synchronous successive halving (Jamieson & Talwalkar 2016).

    Rung :math:`i = 0, 1, \dots` keeps :math:`n_i` trials and trains each to :math:`r_i` units,

    .. math::

       \begin{aligned}
       n_i &= \lfloor n\, \eta^{-i} \rfloor, \qquad
       r_i = r\, \eta^{i}, \\
       \text{spent}_i &= n_i\,(r_i - r_{i-1}), \quad r_{-1} = 0,
       \end{aligned}

    (the rung sizes of Hyperband's inner loop, Li et al. 2018), stopping after the first rung with
    a single trial, or at the last rung with :math:`r_i \le` ``max_resource``. A promoted trial
    resumes from where it stopped (``resume=True``, as a pruner does); with ``resume=False`` it
    is retrained from scratch and rung :math:`i` costs :math:`n_i r_i`. Integer arguments:
    ``n_trials >= 1``, ``min_resource >= 1``, ``reduction_factor >= 2``,
    ``max_resource >= min_resource``.
    """
    n = require_int("n_trials", n_trials, low=1)
    r = require_int("min_resource", min_resource, low=1)
    eta = require_int("reduction_factor", reduction_factor, low=2)
    require_bool("resume", resume)
    if max_resource is not None:
        require_int("max_resource", max_resource, low=1)
        if max_resource < r:
            raise ValueError(f"max_resource must be >= min_resource ({r}), got {max_resource}")
    trials, resources = [n], [r]
    while trials[-1] > 1:
        nxt_n, nxt_r = n // eta ** len(trials), r * eta ** len(trials)
        if nxt_n < 1 or (max_resource is not None and nxt_r > max_resource):
            break
        trials.append(nxt_n)
        resources.append(nxt_r)
    previous = [0, *resources[:-1]] if resume else [0] * len(resources)
    steps = tuple(k * (res - prev) for k, res, prev in zip(trials, resources, previous, strict=True))
    return HalvingSchedule(
        trials=tuple(trials),
        resources=tuple(resources),
        steps=steps,
        total=sum(steps),
        full_sweep=n * resources[-1],
    )
