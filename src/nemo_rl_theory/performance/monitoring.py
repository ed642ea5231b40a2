r"""Training-run health: CUSUM and EWMA control charts, CUSUM run lengths, TensorBoard scalars.

The z-score spike detector and the entropy-collapse monitor are in
:mod:`nemo_rl_theory.training.stability`; this module adds the two classical charts of
statistical process control, which accumulate evidence over steps and so detect a *small
persistent* change (a level shift) that a per-step z-score misses.

* :func:`cusum`: Page's (1954) cumulative sum, one- or two-sided, in units of the in-control
  standard deviation :math:`\sigma`, with reference value :math:`k` and decision threshold :math:`h`.
* :func:`ewma` and :func:`ewma_half_width`: Roberts' (1959) exponentially weighted moving average
  with its exact, time-varying control limits.
* :func:`cusum_arl_siegmund` and :func:`cusum_arl_markov`: the average run length (ARL, the
  expected number of steps to the first alarm) of a CUSUM on normal data, from Siegmund's
  approximation (as given in Montgomery, *Introduction to Statistical Quality Control*, 8th ed.,
  chapter 9) and
  from Brook and Evans' (1972) Markov chain.
* :func:`ewma_arl_markov`: the ARL of a two-sided EWMA chart with asymptotic limits on normal
  data, from Lucas and Saccucci's (1990) Markov chain.
* :func:`write_scalars` / :func:`read_scalars`: write a run's metrics with
  ``torch.utils.tensorboard.SummaryWriter`` (as NeMo RL's ``TensorboardLogger`` does: tag
  ``prefix/name``, one ``add_scalar`` per value) and read them back with TensorBoard's
  ``EventAccumulator``.

The charts are pure functions over a series ``[T]`` or a batch of series ``[..., T]`` (the loop
runs over time only, vectorised over the leading axes, so thousands of simulated series cost one
pass), computed in float64 numpy. They return the statistics, a boolean alarm mask and the index
of the first alarm (``-1``: none). The charts do not restart after an alarm: the mask marks every
step at which the statistic is beyond its limit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.special import ndtr

from nemo_rl_theory._validation import require_number

__all__ = [
    "SIEGMUND_OFFSET",
    "CusumResult",
    "EwmaResult",
    "cusum",
    "cusum_arl_markov",
    "cusum_arl_siegmund",
    "ewma",
    "ewma_arl_markov",
    "ewma_half_width",
    "first_alarm",
    "read_scalars",
    "write_scalars",
]

#: The constant of Siegmund's threshold correction for normal data, :math:`b = h + 1.166`
#: (:math:`1.166 \approx 2 \cdot 0.583`, twice the expected overshoot constant of a normal random walk).
SIEGMUND_OFFSET = 1.166

_SIDES = ("upper", "lower", "both")


# ----------------------------------------------------------------------------- validation


def _series(name: str, x: object) -> np.ndarray:
    """``x`` as a finite float64 array with at least one axis and one step."""
    if isinstance(x, torch.Tensor):
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
        arr = x.detach().cpu().to(torch.float64).numpy()
    elif isinstance(x, (np.ndarray, list, tuple)):
        arr = np.asarray(x)
        if arr.dtype == object or arr.dtype.kind not in "iuf":
            raise TypeError(f"{name} must be an array of real numbers, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    else:
        raise TypeError(f"{name} must be a numpy array, a torch.Tensor or a list of numbers, got {type(x).__name__}")
    if arr.ndim == 0 or arr.shape[-1] == 0:
        raise ValueError(f"{name} must have shape [T] or [..., T] with T >= 1, got shape {list(arr.shape)}")
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0].tolist()
        raise ValueError(
            f"{name} holds NaN or inf (first at index {bad}); a chart cannot score a missing value: "
            "drop the step or treat it as an alarm in its own right (see training.stability.SpikeDetector)"
        )
    return arr


def _side(side: object) -> str:
    if side not in _SIDES:
        raise ValueError(f"side must be one of {_SIDES}, got {side!r}")
    return side  # type: ignore[return-value]


def first_alarm(alarms: np.ndarray) -> np.ndarray | int:
    """Index of the first ``True`` along the last axis, ``-1`` where there is none.

    Returns a Python ``int`` for a 1-d mask, an int64 array of shape ``alarms.shape[:-1]`` otherwise.
    """
    mask = np.asarray(alarms)
    if mask.dtype != np.bool_ or mask.ndim == 0:
        raise TypeError(f"alarms must be a boolean array with a time axis, got dtype {mask.dtype}, ndim {mask.ndim}")
    index = np.where(mask.any(axis=-1), mask.argmax(axis=-1), -1)
    return int(index) if mask.ndim == 1 else index.astype(np.int64)


# ----------------------------------------------------------------------------- CUSUM


@dataclass(frozen=True)
class CusumResult:
    """Output of :func:`cusum`: statistics ``[..., T]`` in units of :math:`\\sigma`, alarms, first alarm."""

    upper: np.ndarray
    lower: np.ndarray
    alarms: np.ndarray
    first_alarm: np.ndarray | int


def cusum(
    x: object,
    *,
    target: float = 0.0,
    sigma: float = 1.0,
    k: float = 0.5,
    h: float = 5.0,
    side: str = "both",
) -> CusumResult:
    r"""Page's cumulative-sum chart on a series, in units of the in-control standard deviation.

    .. math::

        \begin{aligned}
        z_t &= (x_t - \mu_0) / \sigma, \\
        S^+_t &= \max(0,\ S^+_{t-1} + z_t - k), \\
        S^-_t &= \max(0,\ S^-_{t-1} - z_t - k), \\
        S^\pm_0 &= 0, \\
        \text{alarm}_t &= [S^+_t > h] \vee [S^-_t > h]
        \end{aligned}

    (the lower side only with ``side="lower"``, the upper only with ``side="upper"``). This is
    Montgomery's tabular CUSUM with :math:`K = k\sigma`, :math:`H = h\sigma`; :math:`k = 1/2`
    is tuned to a shift of :math:`\delta = 2k = 1` standard deviation.

    Args:
        x: the series, ``[T]`` or a batch ``[..., T]`` (numpy, torch or a list), finite.
        target: :math:`\mu_0`, the in-control mean.
        sigma: :math:`\sigma > 0`, the in-control standard deviation of one step.
        k: reference value :math:`k \ge 0` (slack per step, in :math:`\sigma`).
        h: decision threshold :math:`h > 0` (in :math:`\sigma`).
        side: ``"upper"`` (detect an increase), ``"lower"`` (a decrease) or ``"both"``.

    Returns:
        :class:`CusumResult` with float64 ``upper`` :math:`S^+` and ``lower`` :math:`S^-` (both
        always computed), the boolean ``alarms`` of the chosen side(s) and ``first_alarm``
        (index, ``-1`` if none; an int for a 1-d series).

    Raises:
        TypeError, ValueError: a non-numeric or non-finite ``x``, ``sigma <= 0``, ``k < 0``,
            ``h <= 0`` or an unknown ``side``.
    """
    arr = _series("x", x)
    require_number("target", target)
    s = require_number("sigma", sigma, low=0.0, low_inclusive=False)
    require_number("k", k, low=0.0)
    hh = require_number("h", h, low=0.0, low_inclusive=False)
    chosen = _side(side)
    z = (arr - float(target)) / s
    upper = np.empty_like(z)
    lower = np.empty_like(z)
    up = np.zeros(z.shape[:-1])
    lo = np.zeros(z.shape[:-1])
    for t in range(z.shape[-1]):
        up = np.maximum(0.0, up + z[..., t] - k)
        lo = np.maximum(0.0, lo - z[..., t] - k)
        upper[..., t] = up
        lower[..., t] = lo
    alarms = np.zeros(z.shape, dtype=bool)
    if chosen in ("upper", "both"):
        alarms |= upper > hh
    if chosen in ("lower", "both"):
        alarms |= lower > hh
    return CusumResult(upper, lower, alarms, first_alarm(alarms))


# ----------------------------------------------------------------------------- EWMA


@dataclass(frozen=True)
class EwmaResult:
    """Output of :func:`ewma`: the smoothed series ``[..., T]``, its limits ``[T]``, alarms, first alarm."""

    statistic: np.ndarray
    lower_limit: np.ndarray
    upper_limit: np.ndarray
    alarms: np.ndarray
    first_alarm: np.ndarray | int


def ewma_half_width(
    steps: int, *, lam: float = 0.2, L: float = 3.0, sigma: float = 1.0, exact: bool = True
) -> np.ndarray:
    r"""Half-width of the EWMA control limits at steps :math:`t = 1, \dots, T`, as ``float64[T]``.

    .. math::

        \begin{aligned}
        w_t &= L\sigma\sqrt{\tfrac{\lambda}{2-\lambda}} \\
        &\quad \cdot \sqrt{1 - (1-\lambda)^{2t}}
        \end{aligned}

    :math:`w_t / L` is the exact standard deviation of :math:`z_t` for independent steps of
    variance :math:`\sigma^2` (``exact=False``: the asymptotic width, without the second factor).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    require_number("lam", lam, low=0.0, high=1.0, low_inclusive=False)
    ll = require_number("L", L, low=0.0, low_inclusive=False)
    s = require_number("sigma", sigma, low=0.0, low_inclusive=False)
    if not isinstance(exact, bool):
        raise TypeError(f"exact must be a bool, got {type(exact).__name__}")
    t = np.arange(1, steps + 1, dtype=np.float64)
    growth = -np.expm1(2.0 * t * math.log1p(-lam)) if lam < 1 else np.ones_like(t)
    return ll * s * math.sqrt(lam / (2.0 - lam)) * (np.sqrt(growth) if exact else np.ones_like(t))


def ewma(
    x: object,
    *,
    target: float = 0.0,
    sigma: float = 1.0,
    lam: float = 0.2,
    L: float = 3.0,
    exact: bool = True,
    side: str = "both",
) -> EwmaResult:
    r"""Roberts' exponentially weighted moving-average chart with its time-varying limits.

    .. math::

        \begin{aligned}
        z_t &= \lambda x_t + (1-\lambda) z_{t-1}, \\
        z_0 &= \mu_0, \\
        \text{alarm}_t &= [\,|z_t - \mu_0| > w_t\,]
        \end{aligned}

    with :math:`w_t` of :func:`ewma_half_width` (one-sided with ``side="upper"``:
    :math:`z_t - \mu_0 > w_t`; ``"lower"``: :math:`\mu_0 - z_t > w_t`). Montgomery's usual
    choices are :math:`\lambda \in [0.05, 0.25]` and :math:`L \approx 3`.

    Args:
        x: the series, ``[T]`` or ``[..., T]``, finite.
        target: :math:`\mu_0`, the in-control mean.
        sigma: :math:`\sigma > 0`, the in-control standard deviation of one step.
        lam: :math:`\lambda \in (0, 1]` (1: a Shewhart chart on single values).
        L: width in standard deviations of :math:`z_t`, :math:`L > 0`.
        exact: time-varying limits (default) or the asymptotic ones.
        side: ``"upper"``, ``"lower"`` or ``"both"``.

    Returns:
        :class:`EwmaResult`: ``statistic`` :math:`z` ``[..., T]``, ``lower_limit`` and
        ``upper_limit`` ``[T]`` (:math:`\mu_0 \mp w_t`), ``alarms``, ``first_alarm``.
    """
    arr = _series("x", x)
    require_number("target", target)
    chosen = _side(side)
    half = ewma_half_width(arr.shape[-1], lam=lam, L=L, sigma=sigma, exact=exact)
    z = np.empty_like(arr)
    current = np.full(arr.shape[:-1], float(target))
    for t in range(arr.shape[-1]):
        current = lam * arr[..., t] + (1.0 - lam) * current
        z[..., t] = current
    deviation = z - float(target)
    alarms = np.zeros(arr.shape, dtype=bool)
    if chosen in ("upper", "both"):
        alarms |= deviation > half
    if chosen in ("lower", "both"):
        alarms |= -deviation > half
    return EwmaResult(z, float(target) - half, float(target) + half, alarms, first_alarm(alarms))


# ----------------------------------------------------------------------------- CUSUM run lengths


def _one_sided_siegmund(delta: float, k: float, h: float) -> float:
    d = delta - k
    b = h + SIEGMUND_OFFSET
    if abs(d) < 1e-12:
        return b * b
    return (math.exp(-2.0 * d * b) + 2.0 * d * b - 1.0) / (2.0 * d * d)


def cusum_arl_siegmund(*, k: float = 0.5, h: float = 5.0, shift: float = 0.0, side: str = "upper") -> float:
    r"""Siegmund's approximation of the ARL of :func:`cusum` on normal steps shifted by :math:`\delta\sigma`.

    .. math::

        \begin{aligned}
        \Delta &= \delta - k, \quad b = h + 1.166, \\
        \text{ARL}^+ &= \frac{e^{-2\Delta b} + 2\Delta b - 1}{2\Delta^2}
        \end{aligned}

    (:math:`b^2` at :math:`\Delta = 0`); the lower side uses :math:`\Delta = -\delta - k`, and
    both sides combine as :math:`1/\text{ARL} = 1/\text{ARL}^+ + 1/\text{ARL}^-` (Siegmund 1985,
    in the form of Montgomery, 8th ed., chapter 9). ``shift`` is :math:`\delta`, in units of
    :math:`\sigma`.
    """
    require_number("k", k, low=0.0)
    hh = require_number("h", h, low=0.0, low_inclusive=False)
    require_number("shift", shift)
    chosen = _side(side)
    up = _one_sided_siegmund(float(shift), float(k), hh)
    lo = _one_sided_siegmund(-float(shift), float(k), hh)
    if chosen == "upper":
        return up
    if chosen == "lower":
        return lo
    return 1.0 / (1.0 / up + 1.0 / lo)


def _one_sided_markov(delta: float, k: float, h: float, states: int) -> float:
    # States i = 0..m-1 stand for S in [c_i - w/2, c_i + w/2), c_i = i w, w = 2h / (2m - 1);
    # state 0 also holds S = 0 (a step that would go below 0 lands there); S >= h is absorbing.
    w = 2.0 * h / (2 * states - 1)
    centres = w * np.arange(states)
    # From S = c_i the next value is max(0, c_i + X - k), X ~ N(delta, 1).
    upper_edges = centres + w / 2.0  # upper edge of state j
    cdf_upper = ndtr(upper_edges[None, :] - centres[:, None] + k - delta)
    cdf_lower = np.concatenate(
        [np.zeros((states, 1)), cdf_upper[:, :-1]], axis=1
    )  # state 0 collects everything below w/2
    transition = torch.from_numpy(cdf_upper - cdf_lower)
    # torch's solver follows torch.set_num_threads; numpy's BLAS may oversubscribe a busy machine.
    eye = torch.eye(states, dtype=torch.float64)
    arl = torch.linalg.solve(eye - transition, torch.ones(states, dtype=torch.float64))
    return float(arl[0])


def cusum_arl_markov(
    *, k: float = 0.5, h: float = 5.0, shift: float = 0.0, side: str = "upper", states: int = 200
) -> float:
    r"""ARL of :func:`cusum` by Brook and Evans' Markov-chain approximation, for normal steps.

    :math:`[0, h)` is cut into :math:`m` cells of width :math:`w = 2h/(2m-1)` centred at
    :math:`c_i = i w`; from cell :math:`i` the chain moves to cell :math:`j` with probability

    .. math::

        \begin{aligned}
        p_{ij} &= \Phi(c_j + \tfrac w2 - c_i + k - \delta) \\
        &\quad - \Phi(c_j - \tfrac w2 - c_i + k - \delta)
        \end{aligned}

    (cell 0 collects everything below :math:`w/2`, the lower :math:`\Phi` term is 0 there) and is
    absorbed above :math:`h`. With :math:`R = (p_{ij})`, the ARL from :math:`S_0 = 0` is the first
    entry of :math:`(I - R)^{-1}\mathbf 1`; the error shrinks as :math:`m` grows. Two sides
    combine as in :func:`cusum_arl_siegmund`.
    """
    require_number("k", k, low=0.0)
    hh = require_number("h", h, low=0.0, low_inclusive=False)
    require_number("shift", shift)
    chosen = _side(side)
    if isinstance(states, bool) or not isinstance(states, int) or states < 2:
        raise ValueError(f"states must be an int >= 2, got {states!r}")
    up = _one_sided_markov(float(shift), float(k), hh, states)
    if chosen == "upper":
        return up
    lo = _one_sided_markov(-float(shift), float(k), hh, states)
    if chosen == "lower":
        return lo
    return 1.0 / (1.0 / up + 1.0 / lo)


def ewma_arl_markov(*, lam: float = 0.2, L: float = 3.0, shift: float = 0.0, states: int = 201) -> float:
    r"""ARL of the two-sided :func:`ewma` chart with ``exact=False`` (Lucas and Saccucci's Markov chain).

    In units of :math:`\sigma` with :math:`\mu_0 = 0`, the chart alarms when :math:`|z_t| > u`,
    :math:`u = L\sqrt{\lambda/(2-\lambda)}`. :math:`[-u, u]` is cut into :math:`m` (odd) cells
    of width :math:`w = 2u/m` centred at :math:`c_i`; from cell :math:`i`,
    :math:`z' = (1-\lambda)c_i + \lambda X` with :math:`X \sim N(\delta, 1)`, so

    .. math::

        \begin{aligned}
        p_{ij} &= \Phi\big(\tfrac{c_j + w/2 - (1-\lambda)c_i}{\lambda} - \delta\big) \\
        &\quad - \Phi\big(\tfrac{c_j - w/2 - (1-\lambda)c_i}{\lambda} - \delta\big)
        \end{aligned}

    and the ARL from :math:`z_0 = \mu_0` is the centre entry of :math:`(I - R)^{-1}\mathbf 1`,
    :math:`R = (p_{ij})`. With :math:`\lambda = 1` it is exactly :math:`1/P(|X| > L)`. The
    default exact (time-varying) limits alarm more often in the first :math:`\sim 1/\lambda`
    steps, so their ARL is somewhat shorter; one-sided charts are not covered (:func:`ewma` has no
    reflecting barrier, so the chain would need an arbitrary lower truncation).

    Args:
        lam: :math:`\lambda \in (0, 1]`.
        L: limit width :math:`L > 0` in asymptotic standard deviations of :math:`z_t`.
        shift: :math:`\delta`, the mean shift in units of :math:`\sigma`.
        states: :math:`m`, an odd int >= 3 (the error shrinks as :math:`m` grows).

    Raises:
        ValueError: ``lam`` outside :math:`(0, 1]`, ``L`` not positive, a non-finite ``shift``
            or ``states`` not an odd integer of at least 3 (TypeError for a non-number).
    """
    require_number("lam", lam, low=0.0, high=1.0, low_inclusive=False)
    ll = require_number("L", L, low=0.0, low_inclusive=False)
    require_number("shift", shift)
    if isinstance(states, bool) or not isinstance(states, int) or states < 3 or states % 2 == 0:
        raise ValueError(f"states must be an odd int >= 3 (a centre cell for z_0 = mu_0), got {states!r}")
    lam_f, delta = float(lam), float(shift)
    u = ll * math.sqrt(lam_f / (2.0 - lam_f))
    w = 2.0 * u / states
    centres = -u + w * (np.arange(states) + 0.5)
    start = (1.0 - lam_f) * centres[:, None]
    cdf_hi = ndtr((centres[None, :] + w / 2.0 - start) / lam_f - delta)
    cdf_lo = ndtr((centres[None, :] - w / 2.0 - start) / lam_f - delta)
    transition = torch.from_numpy(cdf_hi - cdf_lo)
    eye = torch.eye(states, dtype=torch.float64)
    arl = torch.linalg.solve(eye - transition, torch.ones(states, dtype=torch.float64))
    return float(arl[states // 2])


# ----------------------------------------------------------------------------- TensorBoard


def write_scalars(
    log_dir: str | Path,
    metrics: Mapping[str, Sequence[float]],
    *,
    prefix: str = "train",
    first_step: int = 1,
) -> list[str]:
    """Write ``metrics[name][i]`` as the scalar ``prefix/name`` at step ``first_step + i``.

    One ``SummaryWriter.add_scalar`` per value, as NeMo RL's ``TensorboardLogger.log_metrics``
    (NeMo RL 7ea279a, ``nemo_rl/utils/logger.py``), whose GRPO loop logs ``train/...`` at step
    ``total_steps + 1``. TensorBoard stores a scalar as float32. Returns the tags written, sorted.
    """
    from torch.utils.tensorboard import SummaryWriter

    if not isinstance(metrics, Mapping) or not metrics:
        raise ValueError("metrics must be a non-empty mapping name -> sequence of numbers")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    if isinstance(first_step, bool) or not isinstance(first_step, int) or first_step < 0:
        raise ValueError(f"first_step must be an int >= 0, got {first_step!r}")
    columns = {}
    for name, values in metrics.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"metric names must be non-empty strings, got {name!r}")
        arr = np.asarray(values)
        if arr.ndim != 1 or arr.dtype.kind not in "iuf":
            raise ValueError(f"metrics[{name!r}] must be a 1-d sequence of real numbers, got {values!r}")
        columns[f"{prefix}/{name}" if prefix else name] = arr.astype(np.float64)
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for tag, arr in columns.items():
            for i, value in enumerate(arr):
                writer.add_scalar(tag, float(value), first_step + i)
    finally:
        writer.close()
    return sorted(columns)


def read_scalars(log_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar in the event files of ``log_dir``: ``{tag: (steps int64[n], values float64[n])}``.

    Read with TensorBoard's ``EventAccumulator`` with no sampling (``size_guidance`` 0 keeps all
    events; its default keeps at most 10000 per tag).
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = Path(log_dir)
    if not path.is_dir():
        raise ValueError(f"log_dir {str(path)!r} is not a directory")
    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
    accumulator.Reload()
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for tag in sorted(accumulator.Tags()["scalars"]):
        events = accumulator.Scalars(tag)
        out[tag] = (
            np.array([e.step for e in events], dtype=np.int64),
            np.array([e.value for e in events], dtype=np.float64),
        )
    return out
