"""Masked reductions: the one place where padding and normalisation are decided."""

from __future__ import annotations

import torch
from torch import Tensor

from nemo_rl_theory._validation import (
    as_mask,
    require_bool,
    require_finite_where,
    require_float_tensor,
    require_normalization_factor,
    require_number,
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
    values, mask_t = _check_values_and_mask(values, mask)
    if dim is not None:
        if isinstance(dim, bool) or not isinstance(dim, int) or not -values.dim() <= dim < max(values.dim(), 1):
            raise ValueError(f"dim must be None or an int in [{-values.dim()}, {values.dim()}), got {dim!r}")
    require_normalization_factor("global_normalization_factor", global_normalization_factor)
    return _masked_mean(values, mask_t, dim, global_normalization_factor)


def _check_values_and_mask(values: object, mask: object) -> tuple[Tensor, Tensor]:
    """Validate ``values`` and a ``mask`` of its shape (or one that broadcasts to it)."""
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
    require_finite_where("values", values, (mask_t != 0).expand_as(values))
    return values, mask_t


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


def masked_var(
    values: Tensor,
    mask: Tensor,
    mean: Tensor | float | None = None,
    unbiased: bool = True,
) -> Tensor:
    r"""Variance of ``values`` over the positions selected by ``mask`` (NeMo RL's ``masked_var``).

    .. math::

        \begin{aligned}
        N &= \textstyle\sum_i m_i, \\
        \mu &= \operatorname{masked\_mean}(x, m), \\
        v &= \frac{\sum_i m_i (x_i - \mu)^2}{N + 10^{-8}}, \\
        \operatorname{var} &= \tfrac{N}{N - 1}\, v
        \end{aligned}

    with ``unbiased=True``, :math:`v` itself with ``unbiased=False``; :math:`\mu` is ``mean``
    when given.

    As NeMo RL 7ea279a (``nemo_rl/algorithms/utils.py``): both means carry
    :func:`masked_mean`'s :math:`10^{-8}` in the denominator, so :math:`\mu` and :math:`v` are
    not exactly the mean and mean square (relative error :math:`10^{-8}/N`), and a given
    ``mean`` is used as is (GAE whitening passes the masked mean it already has). NeMo RL uses
    it to whiten GAE advantages.

    Unlike NeMo RL, an unbiased variance over :math:`N \le 1` counted positions (undefined) is
    0: NeMo RL's :math:`N/(N-1)` gives ``inf`` for :math:`N = 1` (``NaN`` when the centred
    value is exactly 0), and :math:`-0` for :math:`N = 0`. The biased variance is NeMo RL's
    everywhere. :math:`N` counts the mask expanded to ``values``' shape (NeMo RL sums the mask
    as given; the same for a mask of ``values``' shape).

    Args:
        values: ``Tensor[...]``, floating point; masked-out positions may hold ``-inf``/NaN.
        mask: same shape as ``values`` or broadcastable to it (bool, 0/1 or non-negative weights).
        mean: the centre :math:`\mu`, a finite number or one-element tensor (``None``: the
            masked mean).
        unbiased: apply Bessel's correction :math:`N/(N-1)` (default True, as NeMo RL).

    Returns:
        A scalar tensor in the dtype of ``values``, differentiable in ``values`` (and ``mean``).
    """
    values, mask_t = _check_values_and_mask(values, mask)
    require_bool("unbiased", unbiased)
    if mean is None:
        centre: Tensor | float = _masked_mean(values, mask_t)
    elif isinstance(mean, Tensor):
        if mean.numel() != 1:
            raise ValueError(f"mean must be a number or a one-element tensor, got shape {list(mean.shape)}")
        if not mean.is_floating_point():
            raise TypeError(f"mean must be a floating-point tensor, got dtype {mean.dtype}")
        if not bool(torch.isfinite(mean.detach()).all()):
            raise ValueError("mean must be finite")
        centre = mean.reshape(())
    else:
        require_number("mean", mean)
        centre = float(mean)
    return _masked_var(values, mask_t, centre, unbiased)


def _masked_var(values: Tensor, mask: Tensor, mean: Tensor | float, unbiased: bool = True) -> Tensor:
    """Unchecked core of :func:`masked_var`."""
    centred = torch.where(mask != 0, values - mean, 0.0)
    variance = _masked_mean(centred.square(), mask)
    if not unbiased:
        return variance
    count = mask.expand_as(values).sum()
    defined = count > 1
    return torch.where(defined, variance * (count / torch.where(defined, count - 1, 1.0)), 0.0)
