r"""Evaluating a model on an eval set: pass@k, standard errors of eval scores, McNemar's test.

* :func:`pass_at_k` is the unbiased estimator of pass@k of Chen et al. (2021, *Evaluating
  large language models trained on code*, the Codex paper): draw :math:`n \ge k` samples per
  problem, count the :math:`c` correct ones, and estimate the probability that at least one
  of :math:`k` fresh samples is correct without the downward bias of the plug-in
  :math:`1-(1-c/n)^k`.
* :func:`majority_vote_probability` and :func:`majority_at_k` are maj@k (self-consistency,
  Wang et al. 2023): the probability that the most frequent answer of :math:`k` samples is
  the correct one, exactly, and its unbiased estimator from :math:`n \ge k` samples.
* :func:`mean_and_standard_error`, :func:`clustered_standard_error` and
  :func:`paired_difference` follow Miller (2024, *Adding error bars to evals: a statistical
  approach to language model evaluations*): an eval score is a sample mean, so report its
  standard error; questions that share a passage (or a template, or a document) are not
  independent, so cluster; two models scored on the same questions are compared on the
  per-question differences, whose variance is smaller when their scores are correlated.
* :func:`mcnemar_test` is McNemar's (1947) test of equal accuracy on paired binary outcomes,
  exact (a binomial test on the discordant pairs) or by the chi-square approximation.

Scores are numpy arrays out; lists, numpy arrays and torch tensors are accepted in.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from torch import Tensor

from nemo_rl_theory._validation import require_number, require_real_array

__all__ = [
    "MAX_ENUMERATED",
    "MCNEMAR_METHODS",
    "McNemarResult",
    "MeanEstimate",
    "PairedDifference",
    "clustered_standard_error",
    "majority_at_k",
    "majority_vote_probability",
    "mcnemar_test",
    "mean_and_standard_error",
    "paired_difference",
    "pass_at_k",
]

#: Methods accepted by :func:`mcnemar_test`.
MCNEMAR_METHODS = ("exact", "chi2")

ArrayLike = Sequence[float] | np.ndarray | Tensor


# ----------------------------------------------------------------------------- input checks


def _to_numpy(name: str, value: object) -> np.ndarray:
    """A real (bool, integer or floating) array of any shape and size, its dtype kept."""
    return require_real_array(
        name,
        value,
        min_size=0,
        allow_bool=True,
        finite=False,
        dtype=None,
        what="a number, sequence, array or tensor",
    )


def _counts(name: str, value: object) -> np.ndarray:
    """Non-negative integer counts (ints, or floats with integral values) as an int64 array."""
    arr = _to_numpy(name, value)
    if arr.dtype == np.bool_:
        raise TypeError(f"{name} must be integer counts, got dtype bool (sum a correctness mask first)")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} must be finite integer counts, got NaN or inf")
        if (arr != np.round(arr)).any():
            raise ValueError(f"{name} must be integer counts, got a non-integer value")
        if np.abs(arr).max(initial=0) > 2**53:
            raise ValueError(f"{name} must be integer counts below 2**53 when given as floats")
    arr = arr.astype(np.int64)
    if (arr < 0).any():
        raise ValueError(f"{name} must be non-negative counts, got a negative value (min {arr.min()})")
    return arr


def _one_count(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _scores(name: str, value: object, *, minimum: int = 2) -> np.ndarray:
    """A 1-D float64 array of finite per-item scores (bool accepted as 0/1)."""
    return require_real_array(
        name, value, ndim=1, min_size=minimum, allow_bool=True, what="a number, sequence, array or tensor"
    )


def _labels(name: str, value: object, size: int, like: str) -> np.ndarray:
    """Cluster labels (any hashable scalars numpy can sort) as integer codes ``0..G-1``."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{name} must be a 1-D sequence of cluster labels, got {type(value).__name__}")
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.size != size:
        raise ValueError(
            f"{name} must be 1-D with one label per score ({like} has {size}), got shape {list(arr.shape)}"
        )
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(f"{name} must not hold NaN or inf labels")
    try:
        _, codes = np.unique(arr, return_inverse=True)
    except TypeError as err:
        raise TypeError(f"{name} must hold sortable labels of one kind: {err}") from None
    return codes.reshape(-1)


def _binary(name: str, value: object) -> np.ndarray:
    arr = _to_numpy(name, value)
    if arr.ndim != 1 or arr.size < 1:
        raise ValueError(f"{name} must be a non-empty 1-D array of outcomes, got shape {list(arr.shape)}")
    if arr.dtype != np.bool_:
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise ValueError(f"{name} must be 0/1 outcomes, got NaN or inf")
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must be binary (bool or 0/1 outcomes), got a value other than 0 and 1")
    return arr.astype(bool)


def _confidence_z(confidence: object) -> float:
    require_number("confidence", confidence, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    return float(stats.norm.ppf(0.5 + float(confidence) / 2.0))


# ----------------------------------------------------------------------------- pass@k


def _one_minus_pass(n: int, c: int, k: int) -> float:
    """:math:`\\log(C(n-c,k)/C(n,k))` as a sum of ``min(c, k)`` ``log1p`` terms (``-inf`` if 0)."""
    if c == 0:
        return 0.0
    if n - c < k:
        return -math.inf
    if c <= k:
        # prod_{i=n-c+1}^{n} (1 - k/i)
        i = np.arange(n - c + 1, n + 1, dtype=np.float64)
        return float(np.sum(np.log1p(-k / i)))
    # prod_{j=0}^{k-1} (1 - c/(n-j))
    j = np.arange(k, dtype=np.float64)
    return float(np.sum(np.log1p(-c / (n - j))))


def pass_at_k(
    num_samples: int | ArrayLike,
    num_correct: int | ArrayLike,
    k: int | ArrayLike,
) -> float | np.ndarray:
    r"""Unbiased estimator of pass@k from :math:`c` correct out of :math:`n` samples (Chen et al. 2021).

    .. math::

        \begin{aligned}
        \widehat{\text{pass@}k}
          &= 1 - \binom{n-c}{k}
               \Big/ \binom{n}{k} \\
          &= 1 - \prod_{i=n-c+1}^{n}
               \Big(1 - \frac{k}{i}\Big) \\
          &= 1 - \prod_{j=0}^{k-1}
               \Big(1 - \frac{c}{n-j}\Big)
        \end{aligned}

    It is the probability that a uniformly random :math:`k`-subset of the :math:`n` samples
    holds a correct one, so, with :math:`C \sim \mathrm{Binomial}(n, p)`, its expectation is
    exactly :math:`1-(1-p)^k`; the plug-in :math:`1-(1-c/n)^k` is biased low (Jensen: the map
    :math:`x \mapsto (1-x)^k` is convex). The product with :math:`\min(c, k)` factors is
    evaluated as :math:`-\operatorname{expm1}(\sum \operatorname{log1p}(\cdot))`, which keeps
    full relative precision for any :math:`n` (no binomial coefficient is formed; the
    log-gamma route loses about :math:`n\varepsilon` to cancellation). It is ``1.0`` when
    :math:`n - c < k` (every :math:`k`-subset holds a correct sample) and ``0.0`` when
    :math:`c = 0`. Average it over problems for the eval's pass@k.

    Args:
        num_samples: :math:`n`, samples drawn per problem; integers, any shape.
        num_correct: :math:`c \le n`, correct samples per problem; broadcastable with
            ``num_samples``.
        k: :math:`1 \le k \le n`; broadcastable with the others.

    Returns:
        A float if all inputs are scalars, else a float64 array of the broadcast shape.

    Raises:
        TypeError: non-numeric or boolean input. ValueError: negative, non-integer or
            non-finite counts, :math:`k < 1`, :math:`k > n`, :math:`c > n`, or shapes that
            do not broadcast.
    """
    n = _counts("num_samples", num_samples)
    c = _counts("num_correct", num_correct)
    kk = _counts("k", k)
    try:
        n, c, kk = np.broadcast_arrays(n, c, kk)
    except ValueError:
        raise ValueError(
            f"num_samples, num_correct and k must broadcast together, got shapes "
            f"{list(np.shape(n))}, {list(np.shape(c))} and {list(np.shape(kk))}"
        ) from None
    if (kk < 1).any():
        raise ValueError(f"k must be >= 1, got {kk.min()}")
    if (c > n).any():
        idx = tuple(int(i) for i in np.argwhere(c > n)[0])
        raise ValueError(f"num_correct must be <= num_samples, got c={c[idx]} > n={n[idx]} at index {idx}")
    if (kk > n).any():
        idx = tuple(int(i) for i in np.argwhere(kk > n)[0])
        raise ValueError(
            f"k must be <= num_samples (draw at least k samples), got k={kk[idx]} > n={n[idx]} at index {idx}"
        )
    out = np.empty(n.shape, dtype=np.float64)
    cache: dict[tuple[int, int, int], float] = {}
    for idx in np.ndindex(n.shape):
        key = (int(n[idx]), int(c[idx]), int(kk[idx]))
        if key not in cache:
            cache[key] = -math.expm1(_one_minus_pass(*key))
        out[idx] = cache[key]
    return float(out) if out.ndim == 0 else out


# ----------------------------------------------------------------------------- maj@k

#: Most count vectors :func:`majority_at_k` and :func:`majority_vote_probability` enumerate.
MAX_ENUMERATED = 2_000_000


def _compositions(k: int, m: int) -> np.ndarray:
    """All ``[N, m]`` non-negative integer vectors summing to ``k`` (stars and bars)."""
    size = math.comb(k + m - 1, m - 1)
    if size > MAX_ENUMERATED:
        raise ValueError(
            f"k={k} votes over {m} answers give {size} count vectors to enumerate (more than "
            f"{MAX_ENUMERATED}); lower k or merge rare answers"
        )
    if m == 1:
        return np.array([[k]], dtype=np.int64)
    bars = np.array(list(itertools.combinations(range(k + m - 1), m - 1)), dtype=np.int64).reshape(-1, m - 1)
    edges = np.concatenate([np.full((bars.shape[0], 1), -1), bars, np.full((bars.shape[0], 1), k + m - 1)], axis=1)
    return np.diff(edges, axis=1) - 1


def _plurality_credit(votes: np.ndarray, correct: int) -> np.ndarray:
    """1 if ``correct`` has the most votes, ``1/t`` if it ties with ``t - 1`` others, else 0."""
    top = votes == votes.max(axis=1, keepdims=True)
    return top[:, correct] / top.sum(axis=1)


def _correct_index(correct: object, m: int, like: str) -> int:
    if isinstance(correct, bool) or not isinstance(correct, (int, np.integer)):
        raise TypeError(f"correct must be an int index into {like}, got {type(correct).__name__}")
    if not 0 <= int(correct) < m:
        raise ValueError(f"correct must index one of the {m} answers of {like}, got {correct}")
    return int(correct)


def majority_vote_probability(answer_probabilities: ArrayLike, k: int, correct: int = 0) -> float:
    r"""Population maj@k: the probability that the plurality answer of :math:`k` samples is correct.

    Each sample is answer :math:`j` with probability :math:`p_j` (one entry per distinct final
    answer, summing to 1); the :math:`k` votes :math:`X \sim \mathrm{Multinomial}(k, p)`;
    ties for the most votes are broken uniformly at random (self-consistency / cons@k,
    Wang et al. 2023):

    .. math::

        \begin{aligned}
        \text{maj@}k &= \sum_{x:\,\sum_j x_j = k}
           P(X = x) \\
          &\quad\times\,\frac{[x_c = \max x]}
           {\#\{j : x_j = \max x\}}
        \end{aligned}

    by exact enumeration of the :math:`\binom{k+m-1}{m-1}` count vectors
    (``scipy.stats.multinomial.pmf``). As :math:`k \to \infty` it tends to 1 if the correct
    answer is the unique mode of :math:`p` and to 0 if another answer is more likely.

    Args:
        answer_probabilities: ``[m]`` probabilities of the distinct answers, non-negative,
            summing to 1 (within 1e-9).
        k: number of votes, ``k >= 1``.
        correct: index of the correct answer.

    Raises:
        ValueError: probabilities not a 1-D non-empty distribution, ``k < 1``, ``correct`` out
            of range, too many count vectors. TypeError: non-numeric input.
    """
    p = _to_numpy("answer_probabilities", answer_probabilities).astype(np.float64)
    if p.ndim != 1 or p.size < 1:
        raise ValueError(f"answer_probabilities must be a non-empty 1-D array, got shape {list(p.shape)}")
    if not np.isfinite(p).all() or (p < 0).any() or abs(p.sum() - 1.0) > 1e-9:
        raise ValueError(f"answer_probabilities must be finite, non-negative and sum to 1, got sum {p.sum():g}")
    kk = _one_count("k", k, minimum=1)
    c = _correct_index(correct, p.size, "answer_probabilities")
    votes = _compositions(kk, p.size)
    pmf = stats.multinomial.pmf(votes, kk, p / p.sum())
    return float(np.clip(np.sum(pmf * _plurality_credit(votes, c)), 0.0, 1.0))


def majority_at_k(answer_counts: ArrayLike, k: int, correct: int = 0) -> float:
    r"""Unbiased estimator of maj@k from :math:`n \ge k` samples of one problem.

    ``answer_counts[j]`` of the :math:`n` samples gave answer :math:`j`. The estimate is the
    plurality-correct probability of a uniformly random :math:`k`-subset of the samples (the
    maj@k analogue of :func:`pass_at_k`), i.e. with :math:`Y` multivariate hypergeometric:

    .. math::

        \begin{aligned}
        \widehat{\text{maj@}k} &= \sum_{y}
          \frac{\prod_j \binom{n_j}{y_j}}
               {\binom{n}{k}}\, w(y), \\
        w(y) &= \frac{[y_c = \max y]}
          {\#\{j : y_j = \max y\}}
        \end{aligned}

    (``scipy.stats.multivariate_hypergeom.pmf``; ties broken uniformly at random). A random
    :math:`k`-subset of :math:`n` i.i.d. samples is :math:`k` i.i.d. samples, so its
    expectation over the :math:`n` samples is exactly :func:`majority_vote_probability`;
    at :math:`k = 1` it is :math:`n_c / n`. Average it over problems for the eval's maj@k.

    Args:
        answer_counts: ``[m]`` non-negative integer counts of each distinct answer,
            :math:`n = \sum_j n_j \ge k`.
        k: number of votes, ``1 <= k <= n``.
        correct: index of the correct answer (its count may be 0).

    Raises:
        ValueError: negative or non-integer counts, ``k`` outside ``[1, n]``, ``correct`` out
            of range, too many count vectors. TypeError: non-numeric input.
    """
    counts = _counts("answer_counts", answer_counts)
    if counts.ndim != 1 or counts.size < 1:
        raise ValueError(f"answer_counts must be a non-empty 1-D array, got shape {list(counts.shape)}")
    n = int(counts.sum())
    kk = _one_count("k", k, minimum=1)
    if kk > n:
        raise ValueError(f"k must be <= the number of samples sum(answer_counts)={n}, got {kk}")
    c = _correct_index(correct, counts.size, "answer_counts")
    if counts[c] == 0:
        return 0.0
    keep = counts > 0
    keep[c] = True
    sub = counts[keep]
    c_sub = int(np.sum(keep[:c]))
    votes = _compositions(kk, sub.size)
    votes = votes[(votes <= sub).all(axis=1)]
    pmf = stats.multivariate_hypergeom.pmf(votes, m=sub, n=kk)
    return float(np.clip(np.sum(pmf * _plurality_credit(votes, c_sub)), 0.0, 1.0))


# ----------------------------------------------------------------------------- standard errors


@dataclass(frozen=True)
class MeanEstimate:
    """An eval score (a mean over items) with its standard error.

    Attributes:
        mean: :math:`\\bar s`, the mean score.
        standard_error: its standard error (plain, or cluster-robust when ``n_clusters`` is set).
        n: the number of items.
        n_clusters: the number of clusters, or ``None`` for the plain (independent items) SE.
    """

    mean: float
    standard_error: float
    n: int
    n_clusters: int | None = None

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """The CLT interval :math:`\\bar s \\pm z_{(1+\\gamma)/2}\\,\\mathrm{SE}` (Miller 2024, eq. 2)."""
        z = _confidence_z(confidence)
        return self.mean - z * self.standard_error, self.mean + z * self.standard_error


def clustered_standard_error(scores: ArrayLike, clusters: ArrayLike) -> float:
    r"""Cluster-robust (sandwich) standard error of the mean score.

    With items :math:`i` in clusters :math:`g = 1..G` (e.g. questions that share a reading
    passage; Miller 2024, sec. 2.2) and residuals :math:`e_i = s_i - \bar s`,

    .. math::

        \begin{aligned}
        \widehat{\mathrm{Var}}(\bar s)
          &= \frac{G}{G-1}\,\frac{1}{n^2}
             \sum_{g=1}^{G}\Big(\sum_{i \in g}
             e_i\Big)^2
        \end{aligned}

    (the Liang–Zeger sandwich for an intercept-only model with the usual :math:`G/(G-1)`
    small-sample factor, "CR1"). Correlation inside a cluster enters through the cross
    products :math:`e_i e_j`; with singleton clusters (:math:`G = n`) it is exactly the
    plain :math:`s_{n-1}^2/n`. With :math:`G` equal-sized clusters it is exactly the squared
    standard error of the :math:`G` cluster means. Miller's eq. 4 adds the cross products to
    the plain variance instead; it differs from this by :math:`O(1/G)` relative terms.

    Args:
        scores: ``[n]`` per-item scores (bool or 0/1 for accuracy), finite.
        clusters: ``[n]`` cluster label of each item (ints or strings); at least 2 clusters.

    Raises:
        ValueError: fewer than 2 scores, fewer than 2 clusters, NaN/inf, mismatched lengths.
        TypeError: non-numeric scores.
    """
    s = _scores("scores", scores)
    codes = _labels("clusters", clusters, s.size, "scores")
    n_clusters = int(codes.max()) + 1
    if n_clusters < 2:
        raise ValueError("clusters must name at least 2 distinct clusters, got 1")
    sums = np.bincount(codes, weights=s - s.mean(), minlength=n_clusters)
    var = n_clusters / (n_clusters - 1) * float(np.sum(sums**2)) / s.size**2
    return math.sqrt(var)


def mean_and_standard_error(scores: ArrayLike, clusters: ArrayLike | None = None) -> MeanEstimate:
    r"""The mean score and its standard error (Miller 2024, eq. 1), optionally clustered.

    .. math::

        \begin{aligned}
        \bar s &= \frac1n \sum_{i=1}^n s_i, \\
        \mathrm{SE} &= \sqrt{\frac{1}{n(n-1)}
           \sum_{i=1}^n (s_i - \bar s)^2}
        \end{aligned}

    (``scipy.stats.sem``). For 0/1 scores this is :math:`\sqrt{\bar s(1-\bar s)/(n-1)}`.
    With ``clusters`` the SE is :func:`clustered_standard_error`.

    Args:
        scores: ``[n]`` per-item scores, ``n >= 2``, finite.
        clusters: optional ``[n]`` cluster labels.

    Returns:
        :class:`MeanEstimate`; ``.interval(0.95)`` gives the normal interval.
    """
    s = _scores("scores", scores)
    if clusters is None:
        return MeanEstimate(float(s.mean()), float(stats.sem(s)), s.size)
    se = clustered_standard_error(s, clusters)
    return MeanEstimate(float(s.mean()), se, s.size, int(np.unique(np.asarray(clusters)).size))


@dataclass(frozen=True)
class PairedDifference:
    """Difference of two models' mean scores on the same items, with paired and unpaired SEs.

    Attributes:
        mean_difference: :math:`\\bar a - \\bar b`.
        standard_error: the paired SE, from the per-item differences (clustered if asked).
        unpaired_standard_error: :math:`\\sqrt{\\mathrm{SE}_a^2 + \\mathrm{SE}_b^2}`, what
            treating the two samples as independent would give.
        correlation: Pearson correlation of the per-item scores (0 if either is constant).
        n: the number of items.
    """

    mean_difference: float
    standard_error: float
    unpaired_standard_error: float
    correlation: float
    n: int

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """The normal interval :math:`\\bar d \\pm z_{(1+\\gamma)/2}\\,\\mathrm{SE}_{\\text{paired}}`."""
        z = _confidence_z(confidence)
        return self.mean_difference - z * self.standard_error, self.mean_difference + z * self.standard_error


def paired_difference(scores_a: ArrayLike, scores_b: ArrayLike, clusters: ArrayLike | None = None) -> PairedDifference:
    r"""Paired comparison of two models on the same eval items (Miller 2024, sec. 4.2).

    With :math:`d_i = a_i - b_i`,

    .. math::

        \begin{aligned}
        \mathrm{SE}^2_{\text{paired}}
          &= \frac{s^2_{d}}{n} \\
          &= \frac{s_a^2 + s_b^2
             - 2\,\mathrm{cov}(a, b)}{n} \\
          &= \mathrm{SE}^2_{\text{unpaired}}
             - \frac{2 \rho\, s_a s_b}{n}
        \end{aligned}

    (sample variances and covariance with :math:`n-1`), so pairing shrinks the standard error
    exactly when the per-item scores are positively correlated, as two models' scores on the
    same questions usually are (some questions are hard for both). With ``clusters`` the SE is
    the cluster-robust SE of the :math:`d_i` (:func:`clustered_standard_error`).

    Args:
        scores_a: ``[n]`` per-item scores of model A, ``n >= 2``.
        scores_b: ``[n]`` scores of model B on the same items, in the same order.
        clusters: optional ``[n]`` cluster labels.

    Raises:
        ValueError: lengths differ, fewer than 2 items, NaN/inf. TypeError: non-numeric.
    """
    a = _scores("scores_a", scores_a)
    b = _scores("scores_b", scores_b)
    if a.shape != b.shape:
        raise ValueError(f"scores_a and scores_b must score the same items (same length), got {a.size} and {b.size}")
    d = a - b
    se = float(stats.sem(d)) if clusters is None else clustered_standard_error(d, clusters)
    va, vb = float(np.var(a, ddof=1)), float(np.var(b, ddof=1))
    cov = float(np.cov(a, b, ddof=1)[0, 1])
    rho = 0.0 if va == 0.0 or vb == 0.0 else max(-1.0, min(1.0, cov / math.sqrt(va * vb)))
    unpaired = math.sqrt((va + vb) / a.size)
    return PairedDifference(float(d.mean()), se, unpaired, rho, a.size)


# ----------------------------------------------------------------------------- McNemar


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test of equal accuracy of two models on the same items.

    Attributes:
        statistic: for ``"exact"`` the count ``only_a`` (the binomial test's statistic); for
            ``"chi2"`` the chi-square statistic.
        p_value: two-sided p-value.
        only_a: items A gets right and B wrong (discordant).
        only_b: items B gets right and A wrong (discordant).
        both: items both get right.
        neither: items both get wrong.
        method: ``"exact"`` or ``"chi2"``.
    """

    statistic: float
    p_value: float
    only_a: int
    only_b: int
    both: int
    neither: int
    method: str


def mcnemar_test(
    correct_a: ArrayLike,
    correct_b: ArrayLike,
    *,
    method: str = "exact",
    continuity_correction: bool = True,
) -> McNemarResult:
    r"""McNemar's (1947) test that two models have the same accuracy, from paired 0/1 outcomes.

    Only the discordant items carry information: with :math:`b` = right only for A and
    :math:`c` = right only for B, under :math:`H_0` each discordant item is A's with
    probability 1/2, so

    .. math::

        \begin{aligned}
        b \mid b + c &\sim
          \mathrm{Bin}(b + c, \tfrac12)
          \ (\text{exact}), \\
        \chi^2 &= \frac{(|b - c| - \delta)^2}
          {b + c}
          \;\dot\sim\; \chi^2_1
        \end{aligned}

    where :math:`\delta = 1` with the continuity correction (Edwards 1948) and 0 without.
    The exact p-value is ``scipy.stats.binomtest(b, b + c, 0.5).pvalue`` (two-sided). With no
    discordant items the p-value is 1.

    Args:
        correct_a: ``[n]`` outcomes of model A (bool or 0/1), ``n >= 1``.
        correct_b: ``[n]`` outcomes of model B on the same items.
        method: ``"exact"`` (default; right for few discordant pairs) or ``"chi2"``.
        continuity_correction: for ``"chi2"`` only.

    Raises:
        ValueError: lengths differ, empty, non-binary values, unknown method.
        TypeError: non-numeric input or a non-bool ``continuity_correction``.
    """
    a = _binary("correct_a", correct_a)
    bb = _binary("correct_b", correct_b)
    if a.shape != bb.shape:
        raise ValueError(f"correct_a and correct_b must score the same items (same length), got {a.size} and {bb.size}")
    if method not in MCNEMAR_METHODS:
        raise ValueError(f"method must be one of {MCNEMAR_METHODS}, got {method!r}")
    if not isinstance(continuity_correction, bool):
        raise TypeError(f"continuity_correction must be a bool, got {type(continuity_correction).__name__}")
    only_a = int(np.sum(a & ~bb))
    only_b = int(np.sum(~a & bb))
    both = int(np.sum(a & bb))
    neither = int(np.sum(~a & ~bb))
    m = only_a + only_b
    if method == "exact":
        p = 1.0 if m == 0 else float(stats.binomtest(only_a, m, 0.5).pvalue)
        return McNemarResult(float(only_a), p, only_a, only_b, both, neither, method)
    if m == 0:
        return McNemarResult(0.0, 1.0, only_a, only_b, both, neither, method)
    delta = 1.0 if continuity_correction else 0.0
    stat = max(abs(only_a - only_b) - delta, 0.0) ** 2 / m
    return McNemarResult(stat, float(stats.chi2.sf(stat, 1)), only_a, only_b, both, neither, method)
