r"""How a per-token loss is reduced to a scalar, and what each reduction does to the gradient.

A policy-gradient loss is a weighted sum of per-token terms, :math:`\mathcal L = \sum_{b,t} w_{b,t}\,x_{b,t}`.
The reduction decides the weights :math:`w_{b,t}`. Three schemes are in use, with a token mask
:math:`m_{b,t}` (``mask``, ``Tensor[B, T]``), a sequence mask :math:`s_b` (``sample_mask``,
``Tensor[B]``), the response length :math:`|y_b| = \sum_t m_{b,t}` and :math:`\epsilon = 10^{-8}`
(NeMo RL's constant in every denominator):

* ``"token"`` (NeMo RL ``token_level_loss=True``; DAPO): every valid token counts the same,
  :math:`w_{b,t} = s_b m_{b,t} / (N_\text{tok} + \epsilon)` with :math:`N_\text{tok} = \sum_{b,t} s_b m_{b,t}`;
* ``"sequence"`` (``token_level_loss=False``; the original GRPO): mean over each response's
  tokens, then over responses, :math:`w_{b,t} = s_b m_{b,t} / \big((|y_b| + \epsilon)(N_\text{seq} + \epsilon)\big)`
  with :math:`N_\text{seq} = \sum_b s_b`;
* ``"constant"`` (Dr. GRPO, Liu et al. 2025): divide by a fixed budget instead of a length,
  :math:`w_{b,t} = s_b m_{b,t} / (N_\text{seq} L_\text{max} + \epsilon)`. In NeMo RL this is the token-level
  path with ``global_valid_toks`` :math:`= N_\text{seq} L_\text{max}` (:func:`clipped_pg_settings`).

The module also gives the per-response totals of these weights as closed forms in the lengths
(the length bias), and the clipped surrogate with its derivative as explicit piecewise
functions of the ratio (bounded versus unbounded losses).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nemo_rl_theory._validation import (
    require_finite_where,
    require_float_tensor,
    require_ndim,
    require_normalization_factor,
    require_number,
    require_same_shape,
    require_tensor,
)
from nemo_rl_theory.losses._inputs import token_and_sample_masks
from nemo_rl_theory.masking import MASKED_MEAN_EPS

#: The reductions this module knows, in the order the pages plot them.
SCHEMES: tuple[str, ...] = ("token", "sequence", "constant")


def _check_scheme(scheme: object) -> str:
    if not isinstance(scheme, str) or scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    return scheme


def _check_max_length(scheme: str, max_length: object, longest: float) -> float | None:
    """``max_length`` is required by ``"constant"``; whenever given it must be > 0 and cover every response."""
    if max_length is None:
        if scheme == "constant":
            raise ValueError("scheme='constant' (Dr. GRPO) requires max_length, the fixed length budget L_max")
        return None
    require_number("max_length", max_length, low=0.0, low_inclusive=False)
    if float(max_length) < longest * (1 - 1e-9):
        raise ValueError(
            f"max_length = {float(max_length):g} is shorter than the longest response ({longest:g} tokens); "
            "the constant normaliser must be the length budget L_max, an upper bound on every length"
        )
    return float(max_length)


def _global_count(name: str, value: object, local: float) -> float:
    """A global count (``global_valid_toks`` / ``global_valid_seqs``) or the local one; never below the local."""
    require_normalization_factor(name, value)
    if value is None:
        return local
    number = float(value.detach()) if isinstance(value, Tensor) else float(value)
    if number < local * (1 - 1e-6):
        raise ValueError(
            f"{name} = {number:g} is smaller than this batch's own count ({local:g}); "
            "it must count the whole global batch"
        )
    return number


def _masks(mask: object, sample_mask: object | None) -> tuple[Tensor, Tensor]:
    """``(token_mask[B, T], sample_mask[B])`` as float64 (exact counts), validated."""
    m = require_tensor("mask", mask)
    require_ndim("mask", m, (2,), "[B, T]")
    like = torch.empty(m.shape, dtype=torch.float64, device=m.device)
    token_mask, samples, _ = token_and_sample_masks(m, sample_mask, like)
    return token_mask, samples


def token_weights(
    mask: Tensor,
    scheme: str,
    *,
    sample_mask: Tensor | None = None,
    max_length: float | None = None,
    global_valid_toks: Tensor | float | None = None,
    global_valid_seqs: Tensor | float | None = None,
) -> Tensor:
    r"""Effective weight :math:`w_{b,t} = \partial\mathcal L / \partial x_{b,t}` of every token under a reduction.

    .. math::

        \begin{aligned}
        w^\text{token}_{b,t} &= \frac{s_b m_{b,t}}{N_\text{tok} + \epsilon}, \\
        w^\text{sequence}_{b,t} &= \frac{s_b m_{b,t}}{(|y_b| + \epsilon)(N_\text{seq} + \epsilon)}, \\
        w^\text{constant}_{b,t} &= \frac{s_b m_{b,t}}{N_\text{seq} L_\text{max} + \epsilon}
        \end{aligned}

    with :math:`|y_b| = \sum_t m_{b,t}` and :math:`N_\text{tok}`, :math:`N_\text{seq}` the global
    counts if given, else the local ones. These are exactly the weights that
    :func:`~nemo_rl_theory.losses.clipped_pg.clipped_pg_loss` applies under
    :func:`clipped_pg_settings`, so at ratio 1 (inside the clip range)
    :math:`\partial\mathcal L / \partial\log\pi_{b,t} = -A_{b,t}\,w_{b,t}`.

    Args:
        mask: ``Tensor[B, T]`` token mask (bool, integer or non-negative float weights).
        scheme: ``"token"``, ``"sequence"`` or ``"constant"``.
        sample_mask: ``Tensor[B]`` sequence mask (default all ones).
        max_length: :math:`L_\text{max}`, the length budget: required by ``"constant"``; when given
            it must be > 0 and at least the longest response (the other schemes ignore it, so one
            call signature serves a sweep over schemes).
        global_valid_toks: :math:`N_\text{tok}` of the global batch, at least the local count; used
            by ``"token"``, validated and ignored by ``"sequence"`` (as in ``clipped_pg_loss``),
            refused by ``"constant"``, which replaces it by :math:`N_\text{seq} L_\text{max}`.
        global_valid_seqs: :math:`N_\text{seq}` of the global batch, at least the local count; used
            by ``"sequence"`` and ``"constant"``, validated and ignored by ``"token"``.

    Returns:
        ``Tensor[B, T]`` float64, zero off the mask. It sums to 1 (up to :math:`\epsilon`) under
        ``"token"`` and ``"sequence"`` with local counts; under ``"constant"`` it sums to
        :math:`N_\text{tok} / (N_\text{seq} L_\text{max}) \le 1`.
    """
    scheme = _check_scheme(scheme)
    token_mask, samples = _masks(mask, sample_mask)
    full = token_mask * samples[:, None]
    lengths = token_mask.sum(dim=-1)
    longest = float(lengths[samples != 0].max()) if bool((samples != 0).any()) else 0.0
    max_len = _check_max_length(scheme, max_length, longest)
    # As in clipped_pg_loss, a count the scheme does not use is validated and ignored, except that
    # a token count next to the constant would be ambiguous (the constant replaces it).
    require_normalization_factor("global_valid_toks", global_valid_toks)
    require_normalization_factor("global_valid_seqs", global_valid_seqs)
    if scheme == "constant" and global_valid_toks is not None:
        raise ValueError("scheme='constant' replaces global_valid_toks by N_seq * max_length; do not pass both")
    eps = MASKED_MEAN_EPS
    if scheme == "token":
        n_tok = _global_count("global_valid_toks", global_valid_toks, float(full.sum()))
        return full / (n_tok + eps)
    n_seq = _global_count("global_valid_seqs", global_valid_seqs, float(samples.sum()))
    if scheme == "sequence":
        return full / ((lengths[:, None] + eps) * (n_seq + eps))
    assert max_len is not None
    return full / (n_seq * max_len + eps)


def reduce_tokens(
    values: Tensor,
    mask: Tensor,
    scheme: str,
    *,
    sample_mask: Tensor | None = None,
    max_length: float | None = None,
    global_valid_toks: Tensor | float | None = None,
    global_valid_seqs: Tensor | float | None = None,
) -> Tensor:
    r"""The reduced loss :math:`\mathcal L = \sum_{b,t} w_{b,t}\,x_{b,t}` with the weights of :func:`token_weights`.

    Args:
        values: ``Tensor[B, T]`` per-token losses :math:`x_{b,t}`, floating point. Positions
            with weight 0 may hold NaN/inf (padding): they are selected away, not multiplied.
        mask, scheme, sample_mask, max_length, global_valid_toks, global_valid_seqs: as in
            :func:`token_weights`.

    Returns:
        A scalar of ``values``' dtype that carries the gradient of ``values``.
    """
    values = require_float_tensor("values", values)
    require_ndim("values", values, (2,), "[B, T]")
    m = require_tensor("mask", mask)
    require_same_shape("values", values, "mask", m)
    weights = token_weights(
        m,
        scheme,
        sample_mask=sample_mask,
        max_length=max_length,
        global_valid_toks=global_valid_toks,
        global_valid_seqs=global_valid_seqs,
    ).to(values.dtype)
    counted = weights != 0
    require_finite_where("values", values, counted)
    return torch.where(counted, values * weights, 0.0).sum()


def _lengths(lengths: object) -> Tensor:
    t = require_tensor("lengths", lengths)
    require_ndim("lengths", t, (1,), "[B]")
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"lengths must be an integer or floating tensor, got dtype {t.dtype}")
    t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ValueError("lengths must be finite and non-negative (tokens per response)")
    return t


def response_weights(
    lengths: Tensor,
    scheme: str,
    *,
    max_length: float | None = None,
    n_seqs: float | None = None,
    n_toks: float | None = None,
) -> Tensor:
    r"""Total weight :math:`W_b = \sum_t w_{b,t}` of each response, in closed form from the lengths.

    .. math::

        \begin{aligned}
        W^\text{token}_b &= \frac{|y_b|}{N_\text{tok} + \epsilon}, \\
        W^\text{sequence}_b &= \frac{|y_b|}{(|y_b| + \epsilon)(N_\text{seq} + \epsilon)} \\
            &\approx \frac{1}{N_\text{seq}}, \\
        W^\text{constant}_b &= \frac{|y_b|}{N_\text{seq} L_\text{max} + \epsilon}
        \end{aligned}

    :math:`W_b` is the loss's sensitivity to a uniform shift of all of response :math:`b`'s
    per-token terms: at ratio 1 it scales the total push :math:`-A_b W_b` on its
    log-probabilities. Only ``"sequence"`` is independent of the length. Under ``"token"`` the
    length enters twice, since :math:`N_\text{tok} = |y_b| + N_\text{rest}` contains it: the share
    :math:`|y_b| / (|y_b| + N_\text{rest})` saturates at 1.

    Args:
        lengths: ``Tensor[B]`` response lengths :math:`|y_b|` (tokens, ``EOS`` included).
        scheme: ``"token"``, ``"sequence"`` or ``"constant"``.
        max_length: :math:`L_\text{max}`, required by ``"constant"``; when given, at least ``lengths.max()``.
        n_seqs: :math:`N_\text{seq}` (default ``B``; at least ``B``).
        n_toks: :math:`N_\text{tok}` used by ``"token"`` (default ``lengths.sum()``; at least that);
            refused by ``"constant"``.

    Returns:
        ``Tensor[B]`` float64.
    """
    scheme = _check_scheme(scheme)
    lens = _lengths(lengths)
    max_len = _check_max_length(scheme, max_length, float(lens.max()) if lens.numel() else 0.0)
    if scheme == "constant" and n_toks is not None:
        raise ValueError("scheme='constant' replaces n_toks by n_seqs * max_length; do not pass both")
    if n_toks is not None:
        _global_count("n_toks", n_toks, float(lens.sum()))
    if n_seqs is not None:
        _global_count("n_seqs", n_seqs, float(lens.numel()))
    eps = MASKED_MEAN_EPS
    if scheme == "token":
        return lens / (_global_count("n_toks", n_toks, float(lens.sum())) + eps)
    n_seq = _global_count("n_seqs", n_seqs, float(lens.numel()))
    if scheme == "sequence":
        return lens / ((lens + eps) * (n_seq + eps))
    assert max_len is not None
    return lens / (n_seq * max_len + eps)


def clipped_pg_settings(
    scheme: str,
    mask: Tensor,
    *,
    sample_mask: Tensor | None = None,
    max_length: float | None = None,
    global_valid_seqs: Tensor | float | None = None,
) -> dict[str, object]:
    r"""How to ask :func:`~nemo_rl_theory.losses.clipped_pg.clipped_pg_loss` for a reduction.

    ``"token"`` and ``"sequence"`` are NeMo RL's ``token_level_loss=True`` / ``False``. Dr. GRPO's
    constant has no switch of its own: it is the token-level path with the token count replaced
    by the budget, ``global_valid_toks`` :math:`= N_\text{seq}\,L_\text{max}`. (With
    ``token_level_loss=False`` the loss ignores ``global_valid_toks`` apart from validating it, so
    the constant cannot be passed through the sequence-level path.)

    Returns:
        ``{"token_level_loss": bool, "global_valid_toks": float | None, "global_valid_seqs": ...}``:
        ``token_level_loss`` goes into :class:`~nemo_rl_theory.losses.clipped_pg.ClippedPGConfig`,
        the two counts are keyword arguments of the loss (``None`` means the local count).
    """
    scheme = _check_scheme(scheme)
    token_mask, samples = _masks(mask, sample_mask)
    lengths = token_mask.sum(dim=-1)
    longest = float(lengths[samples != 0].max()) if bool((samples != 0).any()) else 0.0
    max_len = _check_max_length(scheme, max_length, longest)
    require_normalization_factor("global_valid_seqs", global_valid_seqs)
    if scheme == "token":
        return {"token_level_loss": True, "global_valid_toks": None, "global_valid_seqs": global_valid_seqs}
    if scheme == "sequence":
        return {"token_level_loss": False, "global_valid_toks": None, "global_valid_seqs": global_valid_seqs}
    assert max_len is not None
    n_seq = _global_count("global_valid_seqs", global_valid_seqs, float(samples.sum()))
    return {"token_level_loss": True, "global_valid_toks": n_seq * max_len, "global_valid_seqs": global_valid_seqs}


# ----------------------------------------------------------------------------- bounded vs unbounded


def _clip_args(ratio_clip_min: float, ratio_clip_max: float, ratio_clip_c: float | None) -> None:
    require_number("ratio_clip_min", ratio_clip_min, low=0.0, high=1.0, high_inclusive=False)
    require_number("ratio_clip_max", ratio_clip_max, low=0.0)
    if ratio_clip_c is not None:
        require_number("ratio_clip_c", ratio_clip_c, low=1.0, low_inclusive=False)


def _ratio_and_advantage(ratio: object, advantage: object) -> tuple[Tensor, Tensor]:
    r = require_float_tensor("ratio", ratio)
    if not bool(torch.isfinite(r).all()) or bool((r <= 0).any()):
        raise ValueError("ratio must be finite and > 0 (a probability ratio pi_theta / pi_prev)")
    a = torch.as_tensor(advantage, dtype=r.dtype) if not isinstance(advantage, Tensor) else advantage
    if not a.is_floating_point():
        raise TypeError(f"advantage must be a float or a floating tensor, got dtype {a.dtype}")
    if not bool(torch.isfinite(a).all()):
        raise ValueError("advantage must be finite")
    try:
        torch.broadcast_shapes(r.shape, a.shape)
    except RuntimeError as err:
        raise ValueError(f"advantage of shape {list(a.shape)} does not broadcast to ratio {list(r.shape)}") from err
    return r, a.to(r.dtype)


def clipped_surrogate(
    ratio: Tensor,
    advantage: Tensor | float,
    *,
    ratio_clip_min: float = 0.2,
    ratio_clip_max: float = 0.2,
    ratio_clip_c: float | None = None,
) -> Tensor:
    r"""Per-token clipped surrogate :math:`\ell(r)` written out piecewise (no ``max`` / ``clamp``).

    With :math:`a = 1 - \varepsilon_\text{low}`, :math:`b = 1 + \varepsilon_\text{high}`:

    .. math::

        \begin{aligned}
        &\ell(r) = {} \\
        &\begin{cases}
            -A \min(r, b) & A \ge 0, \\
            |A| \max(r, a) & A < 0, \\
            & \text{no dual clip}, \\
            |A| \min(\max(r, a), c) & A < 0, \\
            & \text{dual clip } c.
        \end{cases}
        \end{aligned}

    For :math:`A \ge 0` it is bounded, :math:`-A b \le \ell \le 0`; for :math:`A < 0` it is
    bounded below by :math:`|A| a` and, only with the dual clip, above by :math:`c|A|`.

    Args:
        ratio: ``Tensor[...]`` :math:`r = \pi_\theta / \pi_\text{prev} > 0`.
        advantage: a float or a tensor broadcastable to ``ratio``.
        ratio_clip_min, ratio_clip_max, ratio_clip_c: :math:`\varepsilon_\text{low}`,
            :math:`\varepsilon_\text{high}`, :math:`c` (NeMo RL's keys).

    Returns:
        ``Tensor`` of the broadcast shape.
    """
    _clip_args(ratio_clip_min, ratio_clip_max, ratio_clip_c)
    r, a = _ratio_and_advantage(ratio, advantage)
    low, high = 1.0 - ratio_clip_min, 1.0 + ratio_clip_max
    positive = -a * torch.where(r < high, r, torch.full_like(r, high))
    negative_inner = torch.where(r > low, r, torch.full_like(r, low))
    if ratio_clip_c is not None:
        negative_inner = torch.where(negative_inner < ratio_clip_c, negative_inner, torch.full_like(r, ratio_clip_c))
    negative = a.abs() * negative_inner
    return torch.where(a >= 0, positive, negative)


def clipped_surrogate_grad(
    ratio: Tensor,
    advantage: Tensor | float,
    *,
    ratio_clip_min: float = 0.2,
    ratio_clip_max: float = 0.2,
    ratio_clip_c: float | None = None,
) -> Tensor:
    r"""Derivative :math:`\partial\ell / \partial\log\pi_\theta = r\,\partial\ell/\partial r` away from the kinks.

    .. math::

        \begin{aligned}
        &\frac{\partial\ell}{\partial\log\pi_\theta} = {} \\
        &\begin{cases}
            -A r & A \ge 0,\ r < 1 + \varepsilon_\text{high}, \\
            -A r & A < 0,\ 1 - \varepsilon_\text{low} < r \\
            & \quad (< c \text{ with dual clip}), \\
            0 & \text{otherwise (the flat,} \\
            & \text{clipped pieces).}
        \end{cases}
        \end{aligned}

    At a kink the loss has two one-sided derivatives; this function returns the one from the
    side that ``ratio`` is on by the strict inequalities above (the flat side at equality).

    Returns:
        ``Tensor`` of the broadcast shape of ``ratio`` and ``advantage``.
    """
    _clip_args(ratio_clip_min, ratio_clip_max, ratio_clip_c)
    r, a = _ratio_and_advantage(ratio, advantage)
    low, high = 1.0 - ratio_clip_min, 1.0 + ratio_clip_max
    upper = math.inf if ratio_clip_c is None else ratio_clip_c
    live = torch.where(a >= 0, r < high, (r > low) & (r < upper))
    return torch.where(live, -a * r, torch.zeros_like(r))


def surrogate_range(
    advantage: float,
    *,
    ratio_clip_min: float = 0.2,
    ratio_clip_max: float = 0.2,
    ratio_clip_c: float | None = None,
) -> tuple[float, float]:
    r"""``(inf, sup)`` of the clipped surrogate :math:`\ell(r)` over :math:`r \in (0, \infty)`.

    :math:`A > 0`: :math:`(-A(1+\varepsilon_\text{high}),\ 0)`; :math:`A < 0`:
    :math:`(|A|(1-\varepsilon_\text{low}),\ \infty)`, or :math:`c|A|` as the supremum with the
    dual clip; :math:`A = 0`: :math:`(0, 0)`. Compare :math:`-A\log\pi`, whose infimum over
    :math:`\pi \in (0, 1]` is :math:`-\infty` for every :math:`A < 0`.
    """
    _clip_args(ratio_clip_min, ratio_clip_max, ratio_clip_c)
    require_number("advantage", advantage)
    a = float(advantage)
    if a > 0:
        return -a * (1.0 + ratio_clip_max), 0.0
    if a == 0:
        return 0.0, 0.0
    upper = math.inf if ratio_clip_c is None else -a * ratio_clip_c
    return -a * (1.0 - ratio_clip_min), upper
