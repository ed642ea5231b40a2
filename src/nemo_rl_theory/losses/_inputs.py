"""Validation and sanitising of the per-token tensors every loss receives."""

from __future__ import annotations

import torch
from torch import Tensor

from nemo_rl_theory._validation import (
    as_mask,
    require_finite_where,
    require_float_tensor,
    require_ndim,
    require_normalization_factor,
    require_same_shape,
)


def token_and_sample_masks(mask: object, sample_mask: object | None, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(token_mask[B, T], sample_mask[B], mask = token_mask * sample_mask[:, None])``."""
    token_mask = as_mask("mask", mask, like)
    require_same_shape("logprobs", like, "mask", token_mask)
    if sample_mask is None:
        samples = torch.ones(like.shape[0], dtype=like.dtype, device=like.device)
    else:
        samples = as_mask("sample_mask", sample_mask, like)
        if samples.shape != (like.shape[0],):
            raise ValueError(f"sample_mask must have shape [B] = [{like.shape[0]}], got {list(samples.shape)}")
    return token_mask, samples, token_mask * samples[:, None]


def per_token(name: str, value: object, like: Tensor, counted: Tensor, *, like_name: str = "logprobs") -> Tensor:
    """Check a ``[B, T]`` float input and zero it outside ``counted``.

    Padding may hold ``-inf`` or garbage; replacing it by 0 *before* any arithmetic keeps
    every intermediate (exp of a log-ratio, its gradient) finite. Counted positions must be
    finite.
    """
    t = require_float_tensor(name, value)
    require_same_shape(like_name, like, name, t)
    require_finite_where(name, t, counted)
    return torch.where(counted, t, 0.0)


def per_token_2d(name: str, value: object) -> Tensor:
    t = require_float_tensor(name, value)
    require_ndim(name, t, (2,), "[B, T]")
    return t


def check_factors(**factors: tuple[object, Tensor]) -> None:
    """Check each global count ``name=(value, local_count)``.

    A global count covers this micro-batch and the others, so it cannot be smaller than the
    local one; a smaller value (e.g. 0 with counted tokens) would silently inflate the loss.
    """
    for name, (value, local) in factors.items():
        require_normalization_factor(name, value)
        if value is None:
            continue
        local_count = float(local)
        if float(value) < local_count * (1 - 1e-6):
            raise ValueError(
                f"{name} = {float(value):g} is smaller than this micro-batch's own count "
                f"({local_count:g}); it must count the whole global batch"
            )
