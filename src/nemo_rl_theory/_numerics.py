"""Overflow guards for exponentials of log-ratios."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def max_exponent(dtype: torch.dtype) -> float:
    """Largest ``x`` (with a margin of 1) such that ``exp(x)`` is finite in ``dtype``: 87.7 in float32."""
    return math.log(torch.finfo(dtype).max) - 1.0


def saturating_exp(x: Tensor) -> Tensor:
    """``exp(x)`` with ``x`` capped at :func:`max_exponent`, so value and gradient stay finite.

    Beyond the cap (a probability ratio above ~1e38 in float32) the result saturates and its
    gradient is 0; without the cap, ``exp`` overflows to ``inf`` and a zero upstream gradient
    times ``inf`` turns into a NaN gradient even where the loss itself is finite.
    """
    return torch.exp(x.clamp(max=max_exponent(x.dtype)))


def exp_or_zero(x: Tensor) -> Tensor:
    """``exp(x)``, but exactly 0 (value and gradient) where it would overflow.

    This is NeMo RL's ``nan_to_num(exp(x), posinf=0)`` for importance weights, without the NaN
    gradient that ``nan_to_num`` leaves behind at the overflowing entries.
    """
    overflow = x > max_exponent(x.dtype)
    return torch.where(overflow, 0.0, torch.exp(torch.where(overflow, 0.0, x)))
