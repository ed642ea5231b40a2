r"""Learning dynamics: saturating learning curves, sample efficiency, the gradient noise scale.

* :func:`saturating_curve` and :func:`fit_saturating_curve`: the exponential approach to an
  asymptote, :math:`r(t) = a - (a - r_0)\,e^{-t/\tau}`, fitted by nonlinear least squares
  (``scipy.optimize.curve_fit``) with standard errors and t intervals for :math:`a, r_0, \tau`.
* :func:`steps_to_fraction`: the step at which the fitted curve reaches a fraction of its
  asymptote (a measure of efficiency that does not depend on where the run was stopped).
* :func:`normalized_auc`: the trapezoidal area under a learning curve, as a fraction of the
  area of a curve at the top of the score range for the whole run (efficiency and level in one
  number).
* :func:`gradient_noise_scale` and :func:`noise_scale_from_samples`: the simple noise scale
  :math:`\mathcal B_\text{simple} = \operatorname{tr}\Sigma / |G|^2` of McCandlish, Kaplan,
  Amodei et al. (2018), *An Empirical Model of Large-Batch Training* (arXiv:1812.06162), from
  the squared norms of gradients at two batch sizes (their appendix A.1) or from per-example
  gradients.

Learning curves are arrays ``[..., steps]`` (leading axes, e.g. seeds, are kept). NaN or inf is
rejected rather than propagated.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import optimize, stats
from torch import Tensor

from nemo_rl_theory._validation import require_number, require_real_array

__all__ = [
    "NoiseScale",
    "SaturatingFit",
    "fit_saturating_curve",
    "gradient_noise_scale",
    "noise_scale_from_samples",
    "normalized_auc",
    "saturating_curve",
    "steps_to_fraction",
]

ArrayLike = Sequence[float] | np.ndarray | Tensor


def _as_array(name: str, value: object, *, ndim: int | None = None, min_size: int = 1) -> np.ndarray:
    """Validate a finite real array (``ndim`` fixed if given) and return it as float64.

    ``min_size`` counts values along the last axis (one curve per row), so a 0-d value fails.
    """
    arr = require_real_array(name, value, ndim=ndim, min_size=0)
    if arr.ndim == 0 or arr.shape[-1] < min_size:
        raise ValueError(
            f"{name} must hold at least {min_size} value(s) along its last axis, got shape {list(arr.shape)}"
        )
    return arr


def _steps(name: str, value: object, n: int | None = None, *, min_size: int = 1) -> np.ndarray:
    arr = _as_array(name, value, ndim=1, min_size=min_size)
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} must hold one step per value ({n}), got {arr.shape[0]}")
    if (np.diff(arr) <= 0).any():
        raise ValueError(f"{name} must be strictly increasing")
    return arr


def saturating_curve(steps: ArrayLike | float, asymptote: float, initial: float, tau: float) -> np.ndarray:
    r"""The exponential approach to an asymptote, elementwise over ``steps``:

    .. math::

        \begin{aligned}
        r(t) &= a - (a - r_0)\, e^{-t/\tau},
        \end{aligned}

    with :math:`r(0) = r_0` (``initial``), :math:`r(\infty) = a` (``asymptote``) and time
    constant :math:`\tau > 0` (``tau``, in steps): after :math:`\tau` steps the curve has
    covered :math:`1 - e^{-1} \approx 63\%` of the way from :math:`r_0` to :math:`a`.
    """
    t = _as_array("steps", steps, min_size=0) if np.ndim(steps) else _as_array("steps", [steps])
    a = require_number("asymptote", asymptote)
    r0 = require_number("initial", initial)
    tau_ = require_number("tau", tau, low=0.0, low_inclusive=False)
    out = a - (a - r0) * np.exp(-t / tau_)
    return out if np.ndim(steps) else out.reshape(())


def _model(t: np.ndarray, a: float, r0: float, tau: float) -> np.ndarray:
    return a - (a - r0) * np.exp(-t / tau)


def _jacobian(t: np.ndarray, a: float, r0: float, tau: float) -> np.ndarray:
    """``[n, 3]``: the model's derivatives in (a, r0, tau), analytic (a third fewer evaluations)."""
    e = np.exp(-t / tau)
    return np.stack([1.0 - e, e, -(a - r0) * e * t / tau**2], axis=-1)


PARAMETERS = ("asymptote", "initial", "tau")


@functools.lru_cache(maxsize=64)
def _t_quantile(q: float, dof: int) -> float:
    """``scipy.stats.t.ppf(q, dof)``, cached: a coverage simulation asks for the same one often."""
    return float(stats.t.ppf(q, dof))


@dataclass(frozen=True)
class SaturatingFit:
    r"""Least-squares fit of :func:`saturating_curve`, with standard errors.

    Attributes:
        asymptote, initial, tau: the fitted :math:`\hat a, \hat r_0, \hat\tau`.
        covariance: ``[3, 3]`` estimated covariance of (a, r0, tau) (``curve_fit``'s ``pcov``:
            :math:`\hat\sigma^2 (J^\top J)^{-1}` with the residual variance
            :math:`\hat\sigma^2 = \mathrm{RSS}/(n-3)` unless ``absolute_sigma``).
        residual_std: :math:`\sqrt{\mathrm{RSS}/(n-3)}`.
        dof: residual degrees of freedom :math:`n - 3`.
    """

    asymptote: float
    initial: float
    tau: float
    covariance: np.ndarray
    residual_std: float
    dof: int

    @property
    def standard_errors(self) -> dict[str, float]:
        """Square roots of the covariance's diagonal, by parameter name."""
        return {k: float(math.sqrt(max(v, 0.0))) for k, v in zip(PARAMETERS, np.diag(self.covariance), strict=True)}

    def interval(self, parameter: str, confidence: float = 0.95) -> tuple[float, float]:
        r"""Wald interval :math:`\hat\theta \pm t_{n-3,\,(1+c)/2}\,\mathrm{SE}(\hat\theta)`."""
        if parameter not in PARAMETERS:
            raise ValueError(f"parameter must be one of {PARAMETERS}, got {parameter!r}")
        c = require_number("confidence", confidence, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        half = _t_quantile(0.5 + c / 2, self.dof) * self.standard_errors[parameter]
        value = float(getattr(self, parameter))
        return value - half, value + half

    def predict(self, steps: ArrayLike | float) -> np.ndarray:
        """The fitted curve at ``steps``."""
        return saturating_curve(steps, self.asymptote, self.initial, self.tau)


def fit_saturating_curve(
    steps: ArrayLike,
    values: ArrayLike,
    *,
    p0: tuple[float, float, float] | None = None,
    sigma: ArrayLike | None = None,
    absolute_sigma: bool = False,
    max_tau: float | None = None,
) -> SaturatingFit:
    r"""Fit :math:`r(t) = a - (a - r_0)e^{-t/\tau}` to one learning curve by least squares.

    ``scipy.optimize.curve_fit`` (trust-region reflective, since :math:`\tau` is bounded to
    :math:`(0, \tau_{\max}]`, with the analytic Jacobian) minimises
    :math:`\sum_i ((y_i - r(t_i)) / \sigma_i)^2`. The standard errors are the usual asymptotic
    ones, square roots of the diagonal of :math:`\hat\sigma^2 (J^\top J)^{-1}`; they
    assume independent, equal-variance noise about the curve, which consecutive points of a
    training run (one policy, moving slowly) need not have: check coverage by simulation, as
    the tests and the performance-analysis page do.

    Args:
        steps: ``[n]`` strictly increasing steps, ``n >= 4``.
        values: ``[n]`` the curve (e.g. a pass rate per step).
        p0: starting (a, r0, tau); by default (mean of the last quarter, the first value,
            a quarter of the span).
        sigma: optional ``[n]`` positive noise scales (weights :math:`1/\sigma_i^2`).
        absolute_sigma: treat ``sigma`` as exact standard deviations (``curve_fit``'s flag).
        max_tau: upper bound on :math:`\tau` (default 100 times the span of ``steps``): when
            the curve is still linear the data cannot tell :math:`a` from :math:`\tau`.

    Returns:
        :class:`SaturatingFit`.

    Raises:
        ValueError: fewer than 4 points, unsorted steps, NaN/inf, non-positive sigma, or a fit
            that does not converge. TypeError: non-numeric input.
    """
    t = _steps("steps", steps, min_size=4)
    y = _as_array("values", values, ndim=1)
    if y.shape[0] != t.shape[0]:
        raise ValueError(f"values must hold one value per step ({t.shape[0]}), got {y.shape[0]}")
    s = None
    if sigma is not None:
        s = _as_array("sigma", sigma, ndim=1)
        if s.shape[0] != t.shape[0]:
            raise ValueError(f"sigma must hold one value per step ({t.shape[0]}), got {s.shape[0]}")
        if (s <= 0).any():
            raise ValueError("sigma must be positive")
    if not isinstance(absolute_sigma, bool):
        raise TypeError(f"absolute_sigma must be a bool, got {type(absolute_sigma).__name__}")
    span = float(t[-1] - t[0])
    upper = 100.0 * span if max_tau is None else require_number("max_tau", max_tau, low=0.0, low_inclusive=False)
    if p0 is None:
        tail = y[-max(1, y.shape[0] // 4) :]
        p0 = (float(tail.mean()), float(y[0]), min(span / 4.0, upper / 2.0))
    elif len(p0) != 3:
        raise ValueError(f"p0 must be (asymptote, initial, tau), got {p0!r}")
    else:
        p0 = tuple(require_number(f"p0[{i}]", v) for i, v in enumerate(p0))  # type: ignore[assignment]
        if not 0.0 < p0[2] <= upper:
            raise ValueError(f"p0's tau must lie in (0, max_tau = {upper:g}], got {p0[2]}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            popt, pcov = optimize.curve_fit(
                _model,
                t,
                y,
                p0=p0,
                sigma=s,
                absolute_sigma=absolute_sigma,
                bounds=([-np.inf, -np.inf, 1e-9 * max(span, 1.0)], [np.inf, np.inf, upper]),
                method="trf",
                jac=_jacobian,
            )
    except RuntimeError as err:  # curve_fit's "optimal parameters not found"
        raise ValueError(f"the saturating curve did not converge: {err}") from None
    dof = t.shape[0] - 3
    resid = (y - _model(t, *popt)) / (1.0 if s is None else s)
    rss = float(resid @ resid)
    if not np.isfinite(pcov).all():
        raise ValueError(
            "the fit's covariance is not finite: the parameters are not identified by these points "
            "(e.g. a flat curve, or tau at its bound)"
        )
    return SaturatingFit(
        asymptote=float(popt[0]),
        initial=float(popt[1]),
        tau=float(popt[2]),
        covariance=np.asarray(pcov, dtype=np.float64),
        residual_std=math.sqrt(rss / dof) if dof > 0 else math.nan,
        dof=dof,
    )


def steps_to_fraction(asymptote: float, initial: float, tau: float, fraction: float) -> float:
    r"""The step at which :func:`saturating_curve` first reaches ``fraction`` of its asymptote.

    Solving :math:`r(t) = f\,a` for :math:`r_0 < f a < a` (a rising curve, :math:`a > 0`):

    .. math::

        \begin{aligned}
        t_f &= \tau \ln \frac{a - r_0}{(1 - f)\, a}.
        \end{aligned}

    It is 0 when the curve starts at or above :math:`f a`. The fraction is of the curve's own
    asymptote, so two runs with different asymptotes are compared on how fast each gets near
    *its* plateau; compare the asymptotes separately.

    Raises:
        ValueError: ``fraction`` outside (0, 1), ``asymptote <= 0``, ``tau <= 0`` or an
            ``initial`` above the asymptote (a falling curve never reaches ``fraction``).
    """
    a = require_number("asymptote", asymptote, low=0.0, low_inclusive=False)
    r0 = require_number("initial", initial)
    tau_ = require_number("tau", tau, low=0.0, low_inclusive=False)
    f = require_number("fraction", fraction, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    if r0 > a:
        raise ValueError(f"initial ({r0}) must not exceed asymptote ({a}): the curve falls")
    if r0 >= f * a:
        return 0.0
    return tau_ * math.log((a - r0) / ((1.0 - f) * a))


def normalized_auc(steps: ArrayLike, values: ArrayLike, *, low: float = 0.0, high: float = 1.0) -> float | np.ndarray:
    r"""Area under a learning curve over ``[low, high]``, as a fraction of the largest possible.

    With the trapezoidal rule over the points :math:`(t_i, y_i)`, :math:`i = 1..n`:

    .. math::

        \begin{aligned}
        \mathrm{nAUC} &= \frac{\sum_{i<n} (t_{i+1} - t_i)
          \frac{y_i + y_{i+1} - 2\ell}{2}}
          {(t_n - t_1)(h - \ell)},
        \end{aligned}

    :math:`\ell` = ``low``, :math:`h` = ``high``: 1 for a curve at ``high`` from the first
    step, 0 for one at ``low`` throughout. It rewards reaching a level early *and* the level
    itself; two runs compared this way must share ``steps``.

    Args:
        steps: ``[n]`` strictly increasing, ``n >= 2``.
        values: ``[..., n]`` curves (leading axes, e.g. seeds, are kept).
        low, high: the score range, ``low < high``.

    Returns:
        A float for one curve, else an array of the leading shape.
    """
    y = _as_array("values", values, min_size=2)
    t = _steps("steps", steps, y.shape[-1], min_size=2)
    lo = require_number("low", low)
    hi = require_number("high", high)
    if not hi > lo:
        raise ValueError(f"high must be > low, got low = {lo}, high = {hi}")
    area = np.trapezoid(y - lo, t, axis=-1)
    out = area / ((t[-1] - t[0]) * (hi - lo))
    return float(out) if np.ndim(out) == 0 else out


@dataclass(frozen=True)
class NoiseScale:
    r"""Estimates of :math:`|G|^2`, :math:`\operatorname{tr}\Sigma` and their ratio.

    Attributes:
        grad_sq_norm: unbiased estimate of :math:`|G|^2`, the squared norm of the true gradient.
        trace_cov: unbiased estimate of :math:`\operatorname{tr}\Sigma`, the per-example
            gradient covariance's trace.
        b_simple: ``trace_cov / grad_sq_norm`` (a ratio of unbiased estimates, itself biased;
            ``inf`` or negative when the :math:`|G|^2` estimate is not positive: the noise
            swamps the signal at these batch sizes).
    """

    grad_sq_norm: float
    trace_cov: float
    b_simple: float


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return math.inf if den == 0 else num / den


def gradient_noise_scale(
    small_batch_sq_norm: ArrayLike | float,
    big_batch_sq_norm: ArrayLike | float,
    b_small: float,
    b_big: float,
) -> NoiseScale:
    r"""The simple noise scale from gradient norms at two batch sizes (McCandlish et al. 2018, A.1).

    A batch mean of :math:`B` i.i.d. per-example gradients with mean :math:`G` and covariance
    :math:`\Sigma` has :math:`\mathbb E|G_B|^2 = |G|^2 + \operatorname{tr}\Sigma / B`. Two
    batch sizes :math:`b < B` give two equations and the unbiased estimators

    .. math::

        \begin{aligned}
        |\mathcal G|^2 &= \frac{B|G_B|^2 - b|G_b|^2}{B - b}, \\
        \mathcal S &= \frac{|G_b|^2 - |G_B|^2}{1/b - 1/B}, \\
        \mathcal B_\text{simple} &= \mathcal S / |\mathcal G|^2.
        \end{aligned}

    Arrays of measurements are averaged first (``|G_b|^2`` and ``|G_B|^2`` separately), and the
    ratio is taken of the averaged :math:`\mathcal S` and :math:`|\mathcal G|^2`, as the paper
    recommends: a mean of noisy ratios is badly biased.

    Args:
        small_batch_sq_norm: :math:`|G_b|^2`, a number or a 1-D array of measurements.
        big_batch_sq_norm: :math:`|G_B|^2`, likewise.
        b_small, b_big: the batch sizes, ``0 < b_small < b_big``.

    Returns:
        :class:`NoiseScale`.
    """
    small = _squared_norms("small_batch_sq_norm", small_batch_sq_norm)
    big = _squared_norms("big_batch_sq_norm", big_batch_sq_norm)
    b = require_number("b_small", b_small, low=0.0, low_inclusive=False)
    big_b = require_number("b_big", b_big, low=0.0, low_inclusive=False)
    if not big_b > b:
        raise ValueError(f"b_big must be > b_small, got b_small = {b}, b_big = {big_b}")
    gb, gB = float(small.mean()), float(big.mean())
    g2 = (big_b * gB - b * gb) / (big_b - b)
    trace = (gb - gB) / (1.0 / b - 1.0 / big_b)
    return NoiseScale(grad_sq_norm=g2, trace_cov=trace, b_simple=_ratio(trace, g2))


def _squared_norms(name: str, value: object) -> np.ndarray:
    """A number or a non-empty 1-D array of finite, non-negative squared norms, as 1-D float64."""
    arr = require_real_array(name, value, min_size=0, what="a number, or an array or tensor of squared norms")
    if arr.ndim > 1:
        raise ValueError(f"{name} must be a number or 1-D, got shape {list(arr.shape)}")
    arr = np.atleast_1d(arr)
    if arr.size < 1:
        raise ValueError(f"{name} must hold at least 1 value, got shape {list(arr.shape)}")
    if (arr < 0).any():
        raise ValueError(f"{name} must be non-negative (a squared norm)")
    return arr


def noise_scale_from_samples(per_example_grads: Tensor) -> NoiseScale:
    r"""The simple noise scale from :math:`N` i.i.d. per-example gradients ``Tensor[N, P]``.

    With the sample mean :math:`\bar g` and the unbiased per-coordinate variances,

    .. math::

        \begin{aligned}
        \widehat{\operatorname{tr}\Sigma} &= \tfrac{1}{N-1}
          \textstyle\sum_i |g_i - \bar g|^2, \\
        \widehat{|G|^2} &= |\bar g|^2
          - \widehat{\operatorname{tr}\Sigma} / N,
        \end{aligned}

    both unbiased (:math:`\mathbb E|\bar g|^2 = |G|^2 + \operatorname{tr}\Sigma/N`). It is
    :func:`gradient_noise_scale` with :math:`b = 1` and :math:`B = N` on the same samples.
    Computed in float64.

    Raises:
        TypeError: not a floating tensor. ValueError: not 2-D, fewer than 2 rows, NaN/inf.
    """
    if not isinstance(per_example_grads, Tensor):
        raise TypeError(f"per_example_grads must be a torch.Tensor, got {type(per_example_grads).__name__}")
    if not per_example_grads.is_floating_point():
        raise TypeError(f"per_example_grads must be a floating-point tensor, got dtype {per_example_grads.dtype}")
    if per_example_grads.dim() != 2 or per_example_grads.shape[0] < 2:
        raise ValueError(f"per_example_grads must be [N, P] with N >= 2, got {list(per_example_grads.shape)}")
    g = per_example_grads.detach().double()
    if not bool(torch.isfinite(g).all()):
        raise ValueError("per_example_grads must be finite, got NaN or inf")
    n = g.shape[0]
    mean = g.mean(dim=0)
    trace = float(((g - mean) ** 2).sum() / (n - 1))
    g2 = float(mean @ mean) - trace / n
    return NoiseScale(grad_sq_norm=g2, trace_cov=trace, b_simple=_ratio(trace, g2))
