r"""Two-level factorial and one-factor-at-a-time (OFAT) designs for ablation studies.

An ablation switches components of a recipe on and off and asks what each contributes. With
:math:`k` on/off factors coded :math:`x_j \in \{-1, +1\}` ("low"/"high", e.g. off/on), a
response :math:`y` (a final score) has the saturated model

.. math::

    \begin{aligned}
    y &= \beta_\emptyset
      + \sum_{S \ne \emptyset}
        \beta_S \prod_{j \in S} x_j
      + \varepsilon
    \end{aligned}

with one coefficient per subset :math:`S` of the factors: main effects (:math:`|S| = 1`) and
interactions (:math:`|S| \ge 2`). Box, Hunter & Hunter (2005, *Statistics for Experimenters*,
2nd ed., ch. 5) and Montgomery (2017, *Design and Analysis of Experiments*, 9th ed., ch. 6)
define the **effect** of a term as :math:`2\beta_S`: the mean response where
:math:`\prod_{j \in S} x_j = +1` minus the mean where it is :math:`-1`.

* :func:`two_level_design` lists the :math:`2^k` cells of the full factorial in standard
  (Yates) order; :func:`model_matrix` is its :math:`2^k \times 2^k` matrix of term columns.
* :func:`factorial_effects` estimates every effect from the cell means of a full factorial
  (each effect uses **all** runs), with standard errors from the replicate variance, t
  intervals and p-values; ``blocked=True`` treats replicate :math:`s` of every cell as one
  block (the same seed in every cell: common random numbers) and removes the block means.
* :func:`ofat_design` and :func:`ofat_effects` are the one-factor-at-a-time alternative: a
  baseline cell and one cell per factor with that factor flipped. OFAT's estimate of factor
  :math:`j` is its effect **at the baseline** of the others, which differs from the main
  effect by the interactions OFAT cannot estimate.

Designs are ``numpy`` arrays of ``±1`` (``int64``); responses are ``[cells]`` or
``[cells, replicates]`` arrays (lists, NumPy arrays and torch tensors are accepted), rows in
the order of the design's rows. NaN or inf is rejected rather than propagated.
"""

from __future__ import annotations

import itertools
import math
import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from torch import Tensor

from nemo_rl_theory._validation import require_int, require_number, require_real_array

__all__ = [
    "MAX_FACTORS",
    "FactorialEffects",
    "OFATEffects",
    "factorial_effects",
    "model_matrix",
    "ofat_design",
    "ofat_effects",
    "term_names",
    "two_level_design",
]

#: Largest number of factors accepted (a ``2^16 × 2^16`` model matrix is already 32 GiB).
MAX_FACTORS = 12

ArrayLike = Sequence | np.ndarray | Tensor

#: The seven error fields of an estimate without replicates (variance, dof, SE, t, p, low, high).
_NO_ERRORS = (None,) * 7


# ----------------------------------------------------------------------------- input checks


def _k(k: object) -> int:
    require_int("k", k, low=1)
    if k > MAX_FACTORS:  # type: ignore[operator]
        raise ValueError(f"k must be at most MAX_FACTORS={MAX_FACTORS}, got {k}")
    return int(k)  # type: ignore[arg-type]


def _real(name: str, value: object, *, scalar: bool = False) -> np.ndarray:
    return require_real_array(name, value, min_size=0, allow_scalar=scalar)


def _signs(name: str, value: object, *, scalar: bool = False) -> np.ndarray:
    arr = _real(name, value, scalar=scalar)
    if not np.isin(arr, (-1.0, 1.0)).all():
        bad = arr[~np.isin(arr, (-1.0, 1.0))]
        raise ValueError(f"{name} must hold only -1 and +1 (coded low/high levels), got {bad.flat[0]:g}")
    return arr.astype(np.int64)


def _full_factorial(design: object) -> np.ndarray:
    """A ``[2^k, k]`` array of ±1 holding every level combination exactly once (any row order)."""
    d = _signs("design", design)
    if d.ndim != 2 or d.shape[1] < 1:
        raise ValueError(f"design must be 2-D [cells, factors] with at least one factor, got shape {list(d.shape)}")
    k = d.shape[1]
    if k > MAX_FACTORS:
        raise ValueError(f"design has {k} factors; at most MAX_FACTORS={MAX_FACTORS} are supported")
    if d.shape[0] != 2**k:
        raise ValueError(f"design must be a full 2^k factorial: {k} factors need {2**k} rows, got {d.shape[0]}")
    codes = ((d > 0).astype(np.int64) << np.arange(k)).sum(axis=1)
    if np.unique(codes).size != 2**k:
        raise ValueError("design must hold every combination of levels exactly once, got a repeated row")
    return d


def _names(factor_names: object, k: int) -> tuple[str, ...]:
    if factor_names is None:
        if k > len(string.ascii_uppercase):
            raise ValueError(f"give factor_names for k = {k} > 26 factors")
        return tuple(string.ascii_uppercase[:k])
    if isinstance(factor_names, (str, bytes)) or not isinstance(factor_names, Sequence):
        raise TypeError(f"factor_names must be a sequence of strings, got {type(factor_names).__name__}")
    names = tuple(factor_names)
    if len(names) != k or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"factor_names must be {k} non-empty strings, got {names!r}")
    if len(set(names)) != k:
        raise ValueError(f"factor_names must be distinct, got {names!r}")
    return names


def _confidence(confidence: object) -> float:
    return require_number("confidence", confidence, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)


def _responses(value: object, cells: int) -> np.ndarray:
    y = _real("responses", value)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != cells or y.shape[1] < 1:
        raise ValueError(
            f"responses must be [cells] or [cells, replicates] with {cells} cells (one row per design row), "
            f"got shape {list(np.shape(value))}"
        )
    return y


def _replicate_variance(y: np.ndarray, blocked: bool) -> tuple[float, int]:
    """Pooled within-cell variance (``df = c (r - 1)``), or the cell × block residual (``(c-1)(r-1)``)."""
    c, r = y.shape
    if blocked:
        resid = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0, keepdims=True) + y.mean()
        df = (c - 1) * (r - 1)
    else:
        resid = y - y.mean(axis=1, keepdims=True)
        df = c * (r - 1)
    s2 = float((resid**2).sum() / df)
    if not s2 > 0.0:
        raise ValueError(
            "responses have zero replicate variance"
            + (" after removing block means" if blocked else "")
            + ": standard errors are undefined (are the replicates copies of one run?)"
        )
    return s2, df


# ----------------------------------------------------------------------------- designs


def two_level_design(k: int) -> np.ndarray:
    r"""The full :math:`2^k` factorial in standard (Yates) order: ``int64 [2^k, k]`` of ±1.

    Row :math:`i` (0-based) sets factor :math:`j` high exactly when bit :math:`j` of
    :math:`i` is 1,

    .. math::

        \begin{aligned}
        x_{ij} = 2\,\big(\lfloor i / 2^j
          \rfloor \bmod 2\big) - 1,
        \end{aligned}

    so the first factor alternates fastest: for :math:`k = 3` the rows are
    ``(-,-,-), (+,-,-), (-,+,-), (+,+,-), …, (+,+,+)``, Box, Hunter & Hunter's (2005, §5.4)
    standard order.

    Raises:
        TypeError: ``k`` not an int. ValueError: ``k < 1`` or ``k > MAX_FACTORS``.
    """
    k = _k(k)
    i = np.arange(2**k)[:, None]
    return (2 * ((i >> np.arange(k)) & 1) - 1).astype(np.int64)


def term_names(k: int, factor_names: Sequence[str] | None = None) -> tuple[str, ...]:
    """Names of the :math:`2^k - 1` effects: main effects, then two-factor interactions, ….

    Within one order the terms are in lexicographic order of factor indices (for ``k = 3``:
    ``A, B, C, AB, AC, BC, ABC``); names are joined by ``":"`` when a factor name is longer
    than one character (``loo, norm, loo:norm``).
    """
    k = _k(k)
    names = _names(factor_names, k)
    sep = "" if all(len(n) == 1 for n in names) else ":"
    return tuple(sep.join(names[j] for j in s) for s in _subsets(k))


def _subsets(k: int) -> list[tuple[int, ...]]:
    return [s for order in range(1, k + 1) for s in itertools.combinations(range(k), order)]


def model_matrix(design: ArrayLike) -> np.ndarray:
    r"""The term columns of a full factorial: ``float64 [2^k, 2^k]``, intercept first.

    Column 0 is all ones; column :math:`m \ge 1` is :math:`\prod_{j \in S_m} x_j` for the
    :math:`m`-th term of :func:`term_names`. The columns are orthogonal,
    :math:`X^\top X = 2^k I`, which is why every effect of a full factorial is estimated
    independently of the others, with the same variance.

    Raises:
        ValueError: ``design`` is not a full two-level factorial of ±1 (wrong row count, a
            repeated row, a level other than ±1). TypeError: non-numeric.
    """
    d = _full_factorial(design)
    cols = [np.ones(d.shape[0])] + [d[:, list(s)].prod(axis=1).astype(np.float64) for s in _subsets(d.shape[1])]
    return np.column_stack(cols)


def ofat_design(k: int, baseline: int | ArrayLike = -1) -> np.ndarray:
    r"""One-factor-at-a-time: ``int64 [k + 1, k]``, the baseline then each factor flipped.

    Row 0 is the baseline :math:`b \in \{-1, +1\}^k`; row :math:`j + 1` is :math:`b` with
    factor :math:`j` flipped to :math:`-b_j`. ``baseline=-1`` (all off) is "add one component
    to the plain recipe"; ``baseline=+1`` (all on) is the usual leave-one-out ablation of a
    full recipe.

    Raises:
        TypeError: ``k`` or ``baseline`` of the wrong type, as :func:`two_level_design`.
        ValueError: ``k`` out of range; ``baseline`` not ±1 or not of length ``k``.
    """
    k = _k(k)
    b = _signs("baseline", baseline, scalar=True)
    if b.ndim == 0:
        b = np.full(k, int(b))
    if b.shape != (k,):
        raise ValueError(f"baseline must be -1, +1 or a length-{k} vector of ±1, got shape {list(b.shape)}")
    rows = np.tile(b, (k + 1, 1))
    rows[np.arange(1, k + 1), np.arange(k)] *= -1
    return rows.astype(np.int64)


# ----------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class FactorialEffects:
    """Effects of a full two-level factorial, with intervals when there are replicates.

    Attributes:
        terms: ``2^k - 1`` names (:func:`term_names` order).
        effects: ``[2^k - 1]`` effects :math:`2\\hat\\beta_S` (mean at ``+`` minus mean at ``-``).
        grand_mean: mean of all responses (:math:`\\hat\\beta_\\emptyset`).
        replicates: responses per cell :math:`r`.
        blocked: whether replicate index was treated as a block (common seeds).
        residual_variance: :math:`s^2` (``None`` without replicates).
        dof: its degrees of freedom (``None`` without replicates).
        standard_error: common standard error of every effect (``None`` without replicates).
        t, p_values, low, high: ``[2^k - 1]`` t statistics, two-sided p-values and the
            ``confidence`` t interval (``None`` without replicates).
        confidence: level of ``low``/``high``.
    """

    terms: tuple[str, ...]
    effects: np.ndarray
    grand_mean: float
    replicates: int
    blocked: bool
    residual_variance: float | None
    dof: int | None
    standard_error: float | None
    t: np.ndarray | None
    p_values: np.ndarray | None
    low: np.ndarray | None
    high: np.ndarray | None
    confidence: float

    @property
    def coefficients(self) -> np.ndarray:
        r"""Regression coefficients :math:`\hat\beta_S = \text{effect}_S / 2` (±1 coding)."""
        return self.effects / 2.0

    def effect(self, term: str) -> float:
        """The effect of one named term."""
        if term not in self.terms:
            raise KeyError(f"unknown term {term!r}; terms are {self.terms}")
        return float(self.effects[self.terms.index(term)])


def _t_summary(
    effects: np.ndarray, se: float, df: int, confidence: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    t = effects / se
    p = 2.0 * stats.t.sf(np.abs(t), df)
    half = stats.t.isf((1.0 - confidence) / 2.0, df) * se
    return t, p, effects - half, effects + half


def factorial_effects(
    design: ArrayLike,
    responses: ArrayLike,
    *,
    blocked: bool = False,
    confidence: float = 0.95,
    factor_names: Sequence[str] | None = None,
) -> FactorialEffects:
    r"""Effects of a full :math:`2^k` factorial with replicate-based intervals (Box, Hunter & Hunter 2005, ch. 5).

    With :math:`c = 2^k` cells, :math:`r` replicates, :math:`N = c r` runs, cell means
    :math:`\bar y_i` and the term's column :math:`x_{iS} = \prod_{j \in S} x_{ij}`,

    .. math::

        \begin{aligned}
        \hat E_S &= \frac{2}{c}
          \sum_{i=1}^{c} x_{iS}\,\bar y_i, \\
        \mathrm{SE} &= 2 s / \sqrt{N}
        \end{aligned}

    (every effect is a mean of :math:`N/2` runs minus a mean of the other :math:`N/2`, so
    :math:`\mathrm{Var}\,\hat E_S = 4\sigma^2/N`). Unblocked, :math:`s^2` is the pooled
    within-cell variance on :math:`c(r-1)` degrees of freedom; ``blocked=True`` (replicate
    :math:`s` of every cell shares a block, e.g. a training seed) uses the cell × block
    residual :math:`y_{is} - \bar y_{i\cdot} - \bar y_{\cdot s} + \bar y` on
    :math:`(c-1)(r-1)` degrees of freedom; the effects themselves are unchanged, since every
    contrast is balanced within a block. Intervals are :math:`\hat E_S \pm
    t_{\nu,(1+\gamma)/2}\,\mathrm{SE}`, p-values two-sided. This is ordinary least squares of
    all :math:`N` runs on :func:`model_matrix` (plus block indicators when blocked), with
    effects :math:`2\hat\beta`. The single standard error assumes one run variance in
    every cell; when cells differ in spread (e.g. a regulariser that keeps runs close to
    their start), it averages over them, so look at the residuals by cell.

    Args:
        design: ``[2^k, k]`` ±1, a full factorial in any row order (e.g. :func:`two_level_design`).
        responses: ``[2^k]`` (one run per cell: effects only) or ``[2^k, r]``; row :math:`i`
            holds the runs of design row :math:`i`, column :math:`s` replicate (seed) :math:`s`.
        blocked: treat columns as blocks (common random numbers); needs :math:`r \ge 2`.
        confidence: interval level in (0, 1).
        factor_names: names of the ``k`` factors (default ``A, B, …``).

    Returns:
        :class:`FactorialEffects`; without replicates (:math:`r = 1`) the error fields are ``None``.

    Raises:
        ValueError: not a full factorial; ``responses`` of the wrong shape, NaN or inf; zero
            replicate variance; ``blocked`` with one replicate; ``confidence`` outside (0, 1).
        TypeError: non-numeric input, ``blocked`` not a bool.
    """
    d = _full_factorial(design)
    c, k = d.shape
    names = term_names(k, factor_names)
    y = _responses(responses, c)
    if not isinstance(blocked, bool):
        raise TypeError(f"blocked must be a bool, got {type(blocked).__name__}")
    conf = _confidence(confidence)
    r = y.shape[1]
    x = model_matrix(d)
    effects = 2.0 * (x[:, 1:].T @ y.mean(axis=1)) / c
    if r == 1:
        if blocked:
            raise ValueError("blocked=True needs at least 2 replicates per cell (one block per replicate)")
        return FactorialEffects(names, effects, float(y.mean()), 1, False, *_NO_ERRORS, conf)
    s2, df = _replicate_variance(y, blocked)
    se = 2.0 * math.sqrt(s2 / (c * r))
    t, p, low, high = _t_summary(effects, se, df, conf)
    return FactorialEffects(names, effects, float(y.mean()), r, blocked, s2, df, se, t, p, low, high, conf)


@dataclass(frozen=True)
class OFATEffects:
    """One-factor-at-a-time estimates: each factor's effect at the baseline of the others.

    Attributes:
        factors: the ``k`` factor names.
        baseline: ``[k]`` ±1 levels of the baseline cell.
        effects: ``[k]`` :math:`\\pm(\\bar y_{j} - \\bar y_0)`, signed as high minus low.
        replicates, blocked, residual_variance, dof, standard_error, t, p_values, low, high,
        confidence: as :class:`FactorialEffects` (``None`` without replicates).
    """

    factors: tuple[str, ...]
    baseline: np.ndarray
    effects: np.ndarray
    replicates: int
    blocked: bool
    residual_variance: float | None
    dof: int | None
    standard_error: float | None
    t: np.ndarray | None
    p_values: np.ndarray | None
    low: np.ndarray | None
    high: np.ndarray | None
    confidence: float


def ofat_effects(
    responses: ArrayLike,
    baseline: int | ArrayLike = -1,
    *,
    blocked: bool = False,
    confidence: float = 0.95,
    factor_names: Sequence[str] | None = None,
) -> OFATEffects:
    r"""Effects from a one-factor-at-a-time design (rows as :func:`ofat_design`).

    Factor :math:`j`'s estimate compares its flipped cell with the baseline, signed as high
    minus low:

    .. math::

        \begin{aligned}
        \hat E^{\mathrm{OFAT}}_j &= -b_j\,
          (\bar y_{j} - \bar y_0), \\
        \mathrm{SE} &= s\,\sqrt{2 / r}
        \end{aligned}

    with :math:`s^2` pooled over the :math:`k + 1` cells (:math:`(k+1)(r-1)` degrees of
    freedom), or the cell × block residual (:math:`k(r-1)`) when ``blocked``. Under the
    model of this module the estimate's expectation is the effect of :math:`j` at the
    baseline, :math:`2\sum_{S \ni j} \beta_S \prod_{i \in S \setminus j} b_i`, not the main
    effect :math:`2\beta_j` unless the interactions with :math:`j` vanish.

    Args:
        responses: ``[k + 1]`` or ``[k + 1, r]``, rows as :func:`ofat_design` (baseline first).
        baseline: the baseline levels used to build the design (-1, +1 or a ±1 vector).
        blocked, confidence, factor_names: as :func:`factorial_effects`.

    Raises:
        TypeError: as :func:`factorial_effects`.
        ValueError: as :func:`factorial_effects`; fewer than 2 rows.
    """
    y = _real("responses", responses)
    if y.ndim not in (1, 2) or y.shape[0] < 2:
        raise ValueError(
            f"responses must be [k + 1] or [k + 1, replicates] with k >= 1 (baseline first), got shape {list(y.shape)}"
        )
    k = y.shape[0] - 1
    design = ofat_design(k, baseline)
    b = design[0]
    names = _names(factor_names, k)
    y = _responses(y, k + 1)
    if not isinstance(blocked, bool):
        raise TypeError(f"blocked must be a bool, got {type(blocked).__name__}")
    conf = _confidence(confidence)
    r = y.shape[1]
    means = y.mean(axis=1)
    effects = -b * (means[1:] - means[0])
    if r == 1:
        if blocked:
            raise ValueError("blocked=True needs at least 2 replicates per cell (one block per replicate)")
        return OFATEffects(names, b, effects, 1, False, *_NO_ERRORS, conf)
    s2, df = _replicate_variance(y, blocked)
    se = math.sqrt(2.0 * s2 / r)
    t, p, low, high = _t_summary(effects, se, df, conf)
    return OFATEffects(names, b, effects, r, blocked, s2, df, se, t, p, low, high, conf)
