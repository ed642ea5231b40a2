r"""Token log-probabilities and entropy from logits, without a full-vocabulary log-softmax.

The naive ``log_softmax(logits).gather(targets)`` keeps a ``[B, T, V]`` log-softmax alive
for backward and then builds two more ``[B, T, V]`` tensors (the scattered gradient and
the gradient of the logits): about 3x the logits' memory at peak. With
:math:`\log p(y) = z_y - \operatorname{logsumexp}(z)` only the ``[B, T]`` log-sum-exp
needs saving; backward rebuilds the softmax chunk by chunk straight into the gradient
buffer, so the peak stays near 2x the logits (the logits plus their gradient).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nemo_rl_theory._validation import require_float_tensor, require_tensor

#: Elements of ``[rows, V]`` work held at once when ``chunk_size`` is not given (64 MiB in fp32).
DEFAULT_CHUNK_ELEMENTS = 1 << 24


def _rows_per_chunk(chunk_size: int | None, vocab: int) -> int:
    if chunk_size is None:
        return max(1, DEFAULT_CHUNK_ELEMENTS // max(vocab, 1))
    return chunk_size


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision logits are reduced in float32, as NeMo RL casts logits before its losses.
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _chunks(batch: int, length: int, rows_per_chunk: int):
    """Index tuples ``(b, t0:t1)`` covering a ``[batch, length]`` grid, ``rows_per_chunk`` rows each."""
    for b in range(batch):
        for start in range(0, length, rows_per_chunk):
            yield b, slice(start, start + rows_per_chunk)


class _TokenLogprobs(torch.autograd.Function):
    """``log softmax(logits)[target]`` over ``[B, T, V]``, saving only the ``[B, T]`` log-sum-exp.

    Chunks index ``logits[b, t0:t1]``, so a strided view such as ``out[:, :-1]`` is read in
    place, never copied.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor, rows_per_chunk: int) -> Tensor:
        batch, length, _ = logits.shape
        compute_dtype = _compute_dtype(logits.dtype)
        lse = torch.empty(batch, length, dtype=compute_dtype, device=logits.device)
        target_logits = logits.gather(2, targets[..., None]).squeeze(2).to(compute_dtype)
        for b, rows in _chunks(batch, length, rows_per_chunk):
            lse[b, rows] = torch.logsumexp(logits[b, rows].to(compute_dtype), dim=-1)
        # NaN anywhere in a row, or +inf, makes its log-sum-exp non-finite; all -inf too.
        bad_rows = ~torch.isfinite(lse)
        if bad_rows.any():
            first = tuple(int(i) for i in bad_rows.nonzero()[0])
            raise ValueError(
                f"logits has {int(bad_rows.sum())} position(s) whose row holds NaN/+inf or only -inf "
                f"(first at [b, t] = {list(first)}); log-softmax is undefined there"
            )
        ctx.save_for_backward(logits, targets, lse)
        ctx.rows_per_chunk = rows_per_chunk
        return target_logits - lse

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None]:
        logits, targets, lse = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        batch, length, _ = logits.shape
        compute_dtype = lse.dtype
        grad_logits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        grad_out = grad_out.to(compute_dtype)
        # d/dz_v [z_y - lse(z)] = 1[v = y] - softmax(z)_v, scaled by the incoming gradient.
        for b, rows in _chunks(batch, length, ctx.rows_per_chunk):
            g = grad_out[b, rows, None]
            if compute_dtype == logits.dtype:
                chunk = grad_logits[b, rows]
                torch.sub(logits[b, rows], lse[b, rows, None], out=chunk)
                chunk.exp_().mul_(-g)
                chunk.scatter_add_(1, targets[b, rows, None], g)
            else:
                chunk = (logits[b, rows].to(compute_dtype) - lse[b, rows, None]).exp_().mul_(-g)
                chunk.scatter_add_(1, targets[b, rows, None], g)
                grad_logits[b, rows] = chunk.to(logits.dtype)
        return grad_logits, None, None


def _check_logits_targets(logits: object, targets: object, chunk_size: object) -> tuple[Tensor, Tensor]:
    logits = require_float_tensor("logits", logits)
    targets = require_tensor("targets", targets)
    if logits.dim() < 2:
        raise ValueError(f"logits must have shape [B, T, V] (any leading dims), got {list(logits.shape)}")
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"targets must be an integer tensor of token ids, got dtype {targets.dtype}")
    if targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"targets must have shape {list(logits.shape[:-1])} (logits without the vocab dim), "
            f"got {list(targets.shape)}"
        )
    vocab = logits.shape[-1]
    if vocab == 0:
        raise ValueError("logits must have a non-empty vocabulary dimension")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        raise ValueError(
            f"targets must be token ids in [0, {vocab}) (the vocabulary of logits), "
            f"got values in [{int(targets.min())}, {int(targets.max())}]"
        )
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int (rows per chunk) or None, got {chunk_size!r}")
    return logits, targets


def token_logprobs(logits: Tensor, targets: Tensor, *, chunk_size: int | None = None) -> Tensor:
    r"""Log-probability of each target token, :math:`\log p(y_t) = z_{t,y_t} - \log\sum_v e^{z_{t,v}}`.

    Same values as ``log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]`` and the
    same gradient, :math:`\partial/\partial z_{t,v} = \mathbb 1[v = y_t] - \mathrm{softmax}(z_t)_v`,
    but backward saves only the log-sum-exp (``[B, T]``) and recomputes the softmax
    ``chunk_size`` rows at a time into the gradient buffer: peak memory is about twice the
    logits instead of three times.

    Alignment: ``logits[:, t]`` predicts ``targets[:, t]``. For a sequence ``input_ids`` and
    model output ``out[B, S, V]`` pass ``out[:, :-1]`` and ``input_ids[:, 1:]`` (NeMo RL's slice).

    Args:
        logits: ``Tensor[B, T, V]`` (any leading dims), float32/float64; half precision is
            reduced in float32.
        targets: ``Tensor[B, T]`` integer token ids in ``[0, V)``.
        chunk_size: rows (positions) per chunk; default keeps a chunk near 16M elements.

    Returns:
        ``Tensor[B, T]`` log-probs (float32 for half-precision logits).

    Raises:
        ValueError: shape mismatch, ids outside the vocabulary, or a row of logits with
            NaN/+inf (or all ``-inf``).
    """
    logits, targets = _check_logits_targets(logits, targets, chunk_size)
    leading = logits.shape[:-1]
    vocab = logits.shape[-1]
    if logits.dim() == 2:
        grid_logits, grid_targets = logits[None], targets[None]
    elif logits.dim() == 3:
        grid_logits, grid_targets = logits, targets
    else:  # fold extra leading dims into the batch dim (a copy only if strides forbid a view)
        grid_logits = logits.reshape(-1, *logits.shape[-2:])
        grid_targets = targets.reshape(-1, targets.shape[-1])
    if grid_logits.numel() == 0:  # no positions: an empty (but differentiable) result
        return logits.sum(-1).to(_compute_dtype(logits.dtype))
    rows = _rows_per_chunk(chunk_size, vocab)
    out = _TokenLogprobs.apply(grid_logits, grid_targets.long(), rows)
    return out.reshape(leading)


def entropy_from_logits(logits: Tensor) -> Tensor:
    r"""Entropy of the next-token distribution at every position.

    .. math::

        \begin{aligned}
        H_t &= -\sum_v p_{t,v} \log p_{t,v} \\
        &= \log\sum_v e^{z_{t,v}} - \sum_v p_{t,v} z_{t,v}
        \end{aligned}

    Args:
        logits: ``Tensor[B, T, V]`` (any leading dims).

    Returns:
        ``Tensor[B, T]`` in nats, differentiable. Entries with ``-inf`` logits (masked
        vocabulary) contribute 0, as :math:`0 \log 0 = 0`.
    """
    logits = require_float_tensor("logits", logits)
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty last (vocabulary) dim, got {list(logits.shape)}")
    z = logits.to(_compute_dtype(logits.dtype))
    lse = torch.logsumexp(z, dim=-1)
    if not torch.isfinite(lse).all():
        raise ValueError("logits has a row with NaN/+inf or with every entry -inf; entropy is undefined there")
    p = torch.softmax(z, dim=-1)
    # Masked vocabulary entries (-inf) have p = 0 and contribute 0; replacing their logit by 0
    # first keeps both 0 * -inf and its gradient out of the sum.
    finite_z = torch.where(torch.isfinite(z), z, 0.0)
    return lse - (p * finite_z).sum(dim=-1)
