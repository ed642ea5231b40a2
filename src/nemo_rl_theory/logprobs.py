r"""Token log-probabilities and entropy from logits, without a full-vocabulary log-softmax.

The naive ``log_softmax(logits).gather(targets)`` keeps a ``[B, T, V]`` log-softmax alive
for backward and then builds two more ``[B, T, V]`` tensors (the scattered gradient and
the gradient of the logits): about 3x the logits' memory at peak. With
:math:`\log p(y) = z_y - \operatorname{logsumexp}(z)` only the ``[B, T]`` log-sum-exp
needs saving; backward rebuilds the softmax chunk by chunk straight into the gradient
buffer, so the peak stays near 2x the logits (the logits plus their gradient).

:func:`linear_token_logprobs` starts one step earlier, from the last hidden state and the
LM head: it never builds the logits at all, streaming them in ``[tokens, chunk]`` blocks in
forward and rebuilding them in backward, so its extra memory is one block.
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
    """Index tuples ``(b0:b1, t0:t1)`` covering a ``[batch, length]`` grid, at most ``rows_per_chunk`` rows each.

    Whole sequences are grouped when they fit in a chunk (one slice over many short rows instead of
    a Python loop over them); longer sequences are cut along positions.
    """
    if length == 0:
        return
    if rows_per_chunk >= length:
        per_chunk = rows_per_chunk // length
        for start in range(0, batch, per_chunk):
            yield slice(start, start + per_chunk), slice(None)
        return
    for b in range(batch):
        for start in range(0, length, rows_per_chunk):
            yield slice(b, b + 1), slice(start, start + rows_per_chunk)


class _TokenLogprobs(torch.autograd.Function):
    """``log softmax(logits)[target]`` over ``[B, T, V]``, saving only the ``[B, T]`` log-sum-exp.

    Chunks index ``logits[b0:b1, t0:t1]``, so a strided view such as ``out[:, :-1]`` is read in
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
                chunk.scatter_add_(-1, targets[b, rows, None], g)
            else:
                chunk = (logits[b, rows].to(compute_dtype) - lse[b, rows, None]).exp_().mul_(-g)
                chunk.scatter_add_(-1, targets[b, rows, None], g)
                grad_logits[b, rows] = chunk.to(logits.dtype)
        return grad_logits, None, None


def _check_logits_targets(logits: object, targets: object, chunk_size: object) -> tuple[Tensor, Tensor]:
    logits = require_float_tensor("logits", logits)
    targets = require_tensor("targets", targets)
    if logits.dim() < 2:
        raise ValueError(f"logits must have shape [B, T, V] (any leading dims), got {list(logits.shape)}")
    vocab = logits.shape[-1]
    _check_targets(targets, logits.shape[:-1], "logits without the vocab dim", vocab, "logits")
    _check_chunk_size(chunk_size, "rows per chunk")
    return logits, targets


def _check_targets(targets: Tensor, shape: torch.Size, shape_note: str, vocab: int, vocab_owner: str) -> None:
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"targets must be an integer tensor of token ids, got dtype {targets.dtype}")
    if targets.shape != shape:
        raise ValueError(f"targets must have shape {list(shape)} ({shape_note}), got {list(targets.shape)}")
    if vocab == 0:
        raise ValueError(f"{vocab_owner} must have a non-empty vocabulary dimension")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        raise ValueError(
            f"targets must be token ids in [0, {vocab}) (the vocabulary of {vocab_owner}), "
            f"got values in [{int(targets.min())}, {int(targets.max())}]"
        )


def _check_chunk_size(chunk_size: object, meaning: str) -> None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int ({meaning}) or None, got {chunk_size!r}")


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


# ----------------------------------------------------------------------------------------
# Log-probs straight from the last hidden state: the logits are never built.
# ----------------------------------------------------------------------------------------

#: Vocabulary rows per block of :func:`linear_token_logprobs` when ``chunk_size`` is None.
LINEAR_DEFAULT_VOCAB_CHUNK = 8192

#: Elements of one ``[tokens, vocab]`` logits block: tokens per block = this // vocab rows.
LINEAR_BLOCK_ELEMENTS = 1 << 23


def _linear_block_shape(tokens: int, vocab: int, chunk_size: int | None) -> tuple[int, int]:
    """``(token_rows, vocab_rows)`` of one logits block, each at least 1."""
    vocab_rows = max(1, min(vocab, LINEAR_DEFAULT_VOCAB_CHUNK if chunk_size is None else chunk_size))
    token_rows = max(1, min(tokens, LINEAR_BLOCK_ELEMENTS // vocab_rows))
    return token_rows, vocab_rows


def _logits_block(h: Tensor, weight: Tensor, bias: Tensor | None, v0: int, v1: int, buffer: Tensor) -> Tensor:
    """``h @ weight[v0:v1].T (+ bias[v0:v1])`` written into the front of ``buffer``."""
    out = buffer[: h.shape[0] * (v1 - v0)].view(h.shape[0], v1 - v0)
    if bias is None:
        return torch.mm(h, weight[v0:v1].T, out=out)
    return torch.addmm(bias[v0:v1], h, weight[v0:v1].T, out=out)


class _LinearTokenLogprobs(torch.autograd.Function):
    """``log softmax(hidden @ weight.T + bias)[target]`` for ``hidden[N, H]``, saving ``lse[N]``.

    Forward streams a log-sum-exp over vocabulary blocks; backward rebuilds each block,
    turns it in place into ``-g * softmax`` and feeds it to two matmuls. The one-hot part
    of the gradient (``+g`` at the target) is added once, outside the blocks.
    """

    @staticmethod
    def forward(
        ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, token_rows: int, vocab_rows: int
    ) -> Tensor:
        tokens, vocab = hidden.shape[0], weight.shape[0]
        lse = torch.empty(tokens, dtype=hidden.dtype, device=hidden.device)
        target_logits = torch.empty_like(lse)
        buffer = hidden.new_empty(min(tokens, token_rows) * min(vocab, vocab_rows))
        for t0 in range(0, tokens, token_rows):
            t1 = min(t0 + token_rows, tokens)
            h = hidden[t0:t1]
            # Running maximum m and sum s of exp(z - m) over the blocks seen so far.
            run_max = torch.full((t1 - t0,), -float("inf"), dtype=hidden.dtype, device=hidden.device)
            run_sum = torch.zeros_like(run_max)
            for v0 in range(0, vocab, vocab_rows):
                block = _logits_block(h, weight, bias, v0, min(v0 + vocab_rows, vocab), buffer)
                new_max = torch.maximum(run_max, block.amax(dim=1))
                run_sum.mul_(torch.exp(run_max - new_max))
                run_sum.add_(block.sub_(new_max[:, None]).exp_().sum(dim=1))
                run_max = new_max
            lse[t0:t1] = run_max + run_sum.log()
            rows_w = weight[targets[t0:t1]]
            target_logits[t0:t1] = (h * rows_w).sum(dim=1)
            if bias is not None:
                target_logits[t0:t1] += bias[targets[t0:t1]]
        bad = ~torch.isfinite(lse)
        if bad.any():
            first = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"hidden @ weight.T overflows: the log-sum-exp of {int(bad.sum())} token(s) is not finite "
                f"(first at flat token {first}); scale hidden or weight down"
            )
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.block = (token_rows, vocab_rows)
        return target_logits - lse

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():  # backward(create_graph=True): the blocks are not differentiable
            raise RuntimeError(
                "linear_token_logprobs does not support double backward (create_graph=True); "
                "build the logits and use token_logprobs for higher-order gradients"
            )
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        token_rows, vocab_rows = ctx.block
        tokens, vocab = hidden.shape[0], weight.shape[0]
        g = grad_out.to(hidden.dtype).contiguous()
        # One-hot part, d log p(y) / d z_v = 1[v = y] - p_v: +g at the target rows.
        grad_hidden = g[:, None] * weight[targets] if need_hidden else None
        grad_weight = None
        if need_weight:
            grad_weight = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
            if tokens == 0:
                grad_weight.zero_()
        grad_bias = torch.zeros(vocab, dtype=hidden.dtype, device=hidden.device) if need_bias else None
        buffer = hidden.new_empty(min(tokens, token_rows) * min(vocab, vocab_rows))
        for t0 in range(0, tokens, token_rows):
            t1 = min(t0 + token_rows, tokens)
            h, neg_g, lse_rows = hidden[t0:t1], -g[t0:t1, None], lse[t0:t1, None]
            for v0 in range(0, vocab, vocab_rows):
                v1 = min(v0 + vocab_rows, vocab)
                # Softmax part, in place: block <- -g * exp(z - lse).
                block = _logits_block(h, weight, bias, v0, v1, buffer).sub_(lse_rows).exp_().mul_(neg_g)
                if grad_hidden is not None:
                    grad_hidden[t0:t1].addmm_(block, weight[v0:v1])
                if grad_weight is not None:
                    if t0 == 0:
                        torch.mm(block.T, h, out=grad_weight[v0:v1])
                    else:
                        grad_weight[v0:v1].addmm_(block.T, h)
                if grad_bias is not None:
                    grad_bias[v0:v1] += block.sum(dim=0)
        if grad_weight is not None:
            grad_weight.index_add_(0, targets, g[:, None] * hidden)
        if grad_bias is not None:
            grad_bias.index_add_(0, targets, g)
        return grad_hidden, grad_weight, grad_bias, None, None, None


def _require_finite(name: str, t: Tensor) -> None:
    """Reject NaN/inf without a tensor-sized mask (``aminmax`` propagates NaN)."""
    if t.numel() == 0:
        return
    low, high = torch.aminmax(t.detach())
    if not (torch.isfinite(low) and torch.isfinite(high)):
        bad = ~torch.isfinite(t.detach())
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} has {int(bad.sum())} NaN/inf value(s), first at index {first}; fix the input")


def linear_token_logprobs(
    hidden: Tensor, weight: Tensor, targets: Tensor, *, bias: Tensor | None = None, chunk_size: int | None = None
) -> Tensor:
    r"""Log-probability of each target under ``hidden @ weight.T (+ bias)``, never building the logits.

    With :math:`z_{t,v} = h_t \cdot w_v + b_v` (the LM head applied to the last hidden state),

    .. math::

        \begin{aligned}
        \log p(y_t) &= z_{t,y_t} - \ell_t, \\
        \ell_t &= \log\sum_{v} e^{z_{t,v}}, \\
        \frac{\partial \log p(y_t)}{\partial z_{t,v}}
        &= \mathbb 1[v = y_t] - e^{z_{t,v} - \ell_t}.
        \end{aligned}

    Same values and gradients (for ``hidden``, ``weight``, ``bias``) as
    ``log_softmax(hidden @ weight.T + bias, -1).gather(-1, targets[..., None])[..., 0]``.
    Forward walks ``[tokens, chunk_size]`` blocks of logits, keeping a running maximum and
    sum per token (a streaming log-sum-exp), and saves only :math:`\ell` (``[B, T]``).
    Backward rebuilds each block, turns it in place into :math:`-g\,p` (``g`` the incoming
    gradient), and accumulates ``grad_hidden += block @ weight[chunk]`` and
    ``grad_weight[chunk] += block.T @ hidden``; the one-hot term is added once.

    Cost: with :math:`N = B T` tokens, four matmuls of :math:`2NVH` FLOPs each (forward,
    the recomputed forward, two backward products), against the naive route's three, so
    about 4/3 of its time at best; extra memory is one ``[token_rows, chunk_size]`` block
    plus ``O(N H)``, not the naive route's several ``[N, V]`` tensors.

    Args:
        hidden: ``Tensor[B, T, H]`` (any leading dims), float32 or float64.
        weight: ``Tensor[V, H]`` (the LM head / tied embedding), same dtype.
        targets: ``Tensor[B, T]`` integer ids in ``[0, V)``; ``hidden[:, t]`` predicts
            ``targets[:, t]`` (pass ``hidden[:, :-1]`` and ``input_ids[:, 1:]``).
        bias: optional ``Tensor[V]``, same dtype.
        chunk_size: vocabulary rows per block (default 8192, where CPU BLAS runs at full
            speed); each block takes ``max(1, 2**23 // chunk_size)`` tokens (all of them
            when fewer), so a default block holds at most 8M elements (32 MiB in float32).

    Returns:
        ``Tensor[B, T]`` log-probs in the input dtype. Double backward is not supported:
        a backward with ``create_graph=True`` raises ``RuntimeError``.

    Raises:
        TypeError: a non-tensor, a non-float or mismatched dtype, or non-integer ``targets``.
        ValueError: shape mismatch, ids outside ``[0, V)``, NaN/inf in ``hidden``,
            ``weight`` or ``bias``, logits that overflow, or a bad ``chunk_size``.
    """
    hidden = require_float_tensor("hidden", hidden)
    weight = require_float_tensor("weight", weight)
    targets = require_tensor("targets", targets)
    if hidden.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"hidden must be float32 or float64 (cast half precision first), got dtype {hidden.dtype}")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight must have hidden's dtype {hidden.dtype}, got {weight.dtype}")
    if hidden.dim() < 2:
        raise ValueError(f"hidden must have shape [B, T, H] (any leading dims), got {list(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight must have shape [V, H] with H = {hidden.shape[-1]} (hidden's last dim), got {list(weight.shape)}"
        )
    vocab = weight.shape[0]
    if vocab == 0:
        raise ValueError("weight must have a non-empty vocabulary dimension (V = weight.shape[0] > 0)")
    if bias is not None:
        bias = require_float_tensor("bias", bias)
        if bias.dtype != hidden.dtype:
            raise TypeError(f"bias must have hidden's dtype {hidden.dtype}, got {bias.dtype}")
        if bias.shape != (vocab,):
            raise ValueError(f"bias must have shape [V] = [{vocab}] (weight's rows), got {list(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias), ("targets", targets)):
        if t is not None and t.device != hidden.device:
            raise ValueError(f"{name} must be on hidden's device {hidden.device}, got {t.device}")
    _check_targets(targets, hidden.shape[:-1], "hidden without the hidden dim", vocab, "weight")
    _check_chunk_size(chunk_size, "vocabulary rows per block")
    _require_finite("hidden", hidden)
    _require_finite("weight", weight)
    if bias is not None:
        _require_finite("bias", bias)
    flat_hidden = hidden.reshape(-1, hidden.shape[-1]).contiguous()
    token_rows, vocab_rows = _linear_block_shape(flat_hidden.shape[0], vocab, chunk_size)
    out = _LinearTokenLogprobs.apply(flat_hidden, weight, bias, targets.reshape(-1).long(), token_rows, vocab_rows)
    return out.reshape(hidden.shape[:-1])
