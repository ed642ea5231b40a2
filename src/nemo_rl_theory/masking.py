"""Masked reductions: the one place where padding and normalisation are decided."""

from __future__ import annotations

import torch
from torch import Tensor

from nemo_rl_theory._validation import (
    as_mask,
    require_finite_where,
    require_float_tensor,
    require_normalization_factor,
)

#: Added to every denominator, as NeMo RL does, so an all-zero mask gives 0 instead of 0/0.
MASKED_MEAN_EPS = 1e-8


def masked_mean(
    values: Tensor,
    mask: Tensor,
    dim: int | None = None,
    global_normalization_factor: Tensor | float | None = None,
) -> Tensor:
    r"""Mean of ``values`` over the positions selected by ``mask``.

    .. math::

        \begin{aligned}
        &\operatorname{masked\_mean}(x, m) = \frac{\sum_i m_i x_i}{N + 10^{-8}}, \\
        &N = \sum_i m_i \\
        &\quad \text{(default: the local count)}, \\
        &N = \texttt{global\_normalization\_factor} \\
        &\quad \text{(if given)}
        \end{aligned}

    With a global factor (the number of valid tokens or sequences in the *whole* global
    batch) each micro-batch returns its share of the global mean, so summing the results of
    all micro-batches and data-parallel ranks gives exactly the full-batch mean. This is how
    NeMo RL normalises every loss.

    Args:
        values: ``Tensor[...]``, floating point.
        mask: same shape as ``values`` (bool, 0/1 or non-negative weights). Masked-out
            positions may hold ``-inf``/NaN (padding): they are *selected* away, never
            multiplied, so neither the result nor its gradient is poisoned. NaN/inf at a
            counted position raises ``ValueError``.
        dim: reduce over this dimension only (``None``: over everything).
        global_normalization_factor: denominator to use instead of ``mask.sum(dim)``.

    Returns:
        A scalar (``dim=None``) or ``values`` reduced over ``dim``. An all-zero mask gives 0.
    """
    values = require_float_tensor("values", values)
    mask_t = as_mask("mask", mask, values)
    if mask_t.shape != values.shape:
        try:
            broadcast = torch.broadcast_shapes(mask_t.shape, values.shape)
        except RuntimeError:
            broadcast = None
        # The mask may broadcast *to* values (e.g. [B, 1] against [B, T]) but must not
        # enlarge them: [B] against [B, 1] would silently reduce a [B, B] outer product.
        if broadcast != values.shape:
            raise ValueError(
                f"mask of shape {list(mask_t.shape)} must match or broadcast to values of shape {list(values.shape)}"
            )
    if dim is not None:
        if isinstance(dim, bool) or not isinstance(dim, int) or not -values.dim() <= dim < max(values.dim(), 1):
            raise ValueError(f"dim must be None or an int in [{-values.dim()}, {values.dim()}), got {dim!r}")
    require_finite_where("values", values, (mask_t != 0).expand_as(values))
    require_normalization_factor("global_normalization_factor", global_normalization_factor)
    return _masked_mean(values, mask_t, dim, global_normalization_factor)


def _masked_mean(
    values: Tensor,
    mask: Tensor,
    dim: int | None = None,
    global_normalization_factor: Tensor | float | None = None,
) -> Tensor:
    """Unchecked core of :func:`masked_mean` for callers that validated their inputs."""
    selected = torch.where(mask != 0, values * mask, 0.0)
    if dim is None:
        numerator = selected.sum()
        count = mask.expand_as(selected).sum()
    else:
        numerator = selected.sum(dim=dim)
        count = mask.expand_as(selected).sum(dim=dim)
    denominator = count if global_normalization_factor is None else global_normalization_factor
    return numerator / (denominator + MASKED_MEAN_EPS)
