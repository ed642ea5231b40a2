r"""Exact sequence-level expectations by enumerating every response of a small policy.

Claims about estimators ("unbiased", "biased by ...") are claims about expectations over
whole responses :math:`y = (y_1, \dots, y_T)`. For a vocabulary of :math:`V` tokens and
length :math:`T` there are at most :math:`V^T` responses; for a few thousand of them the
expectation of any function of :math:`y` is a finite sum,

.. math::

    \begin{aligned}
    \mathbb E_{y\sim\pi}[f(y)] &= \sum_{y} \pi(y)\, f(y), \\
    \pi(y) &= \prod_{t=1}^{|y|} \pi(y_t \mid s_t), \\
    s_t &= (y_1, \dots, y_{t-1}),
    \end{aligned}

computed in float64 and differentiable by autograd, so the *true* gradient of a sequence
objective and the *expected* gradient of a per-token surrogate are both exact and can be
compared with an assertion.

The pieces:

- :func:`enumerate_responses` lists every response (length :math:`T`, or ending at an
  end-of-sequence token) with its token mask and, for each position, the id of the state
  (prefix) :math:`s_t` it was chosen in.
- A *tabular* policy is a table of logits, one row per state: :func:`tabular_token_logprobs`
  gives :math:`\log\pi(y_t\mid s_t)` as a ``[N, T]`` tensor aligned like every loss of the
  library, :func:`state_log_distributions` the whole next-token distribution per position and
  :func:`tabular_token_scores` the closed-form score of each token.
- :func:`sequence_logprobs`, :func:`expectation` and :func:`sequence_kl` give
  :math:`\log\pi(y)`, :math:`\mathbb E[f]` and :math:`\mathrm{KL}(\pi\,\|\,q)` over sequences;
  :func:`next_states` and :func:`state_reach_probabilities` walk the prefix tree.
- :func:`expectation_weights` turns "sample one response from :math:`\pi_\text{gen}`" into mask
  weights, so any of the library's ``[B, T]`` losses evaluated on the enumerated batch *is* its
  exact expectation, and its gradient the exact expected gradient.
- :func:`sample_responses` draws token by token from the table, an independent Monte Carlo
  route for tests.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nemo_rl_theory._validation import require_float_tensor, require_ndim

#: Largest number of responses :func:`enumerate_responses` lists (a guard against V**T blow-up).
MAX_RESPONSES = 200_000


@dataclass(frozen=True)
class ResponseSpace:
    """Every response of a small autoregressive policy, as ``[N, T]`` tensors.

    Attributes:
        tokens: ``LongTensor[N, T]``; after an end-of-sequence token the row is padded with
            that token (padding is never counted: see ``mask``).
        mask: ``BoolTensor[N, T]``, True on generated positions (up to and including EOS).
        state_ids: ``LongTensor[N, T]``, id of the prefix :math:`s_t` in which token ``t`` was
            chosen (0 is the empty prefix); ``-1`` on padding.
        num_states: number of distinct non-terminal prefixes (rows of a tabular policy).
        vocab_size: :math:`V`.
        max_length: :math:`T`.
        eos_token_id: the end-of-sequence token, or ``None`` (every response has length T).
        state_depth: ``LongTensor[num_states]``, the length of each prefix.
    """

    tokens: Tensor
    mask: Tensor
    state_ids: Tensor
    num_states: int
    vocab_size: int
    max_length: int
    eos_token_id: int | None
    state_depth: Tensor

    @property
    def num_responses(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def lengths(self) -> Tensor:
        """``LongTensor[N]``: the number of generated tokens of each response."""
        return self.mask.sum(dim=1)


def _require_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def count_responses(vocab_size: int, max_length: int, eos_token_id: int | None = None) -> int:
    r"""Number of responses :func:`enumerate_responses` lists.

    Without EOS it is :math:`V^T`. With EOS a response is :math:`k-1` non-EOS tokens then EOS
    (:math:`k \le T`), or :math:`T` non-EOS tokens (truncated):
    :math:`\sum_{k=1}^{T} (V-1)^{k-1} + (V-1)^T`.
    """
    _require_int("vocab_size", vocab_size, 1)
    _require_int("max_length", max_length, 1)
    if eos_token_id is None:
        return vocab_size**max_length
    _check_eos(eos_token_id, vocab_size)
    other = vocab_size - 1
    return sum(other ** (k - 1) for k in range(1, max_length + 1)) + other**max_length


def _check_eos(eos_token_id: object, vocab_size: int) -> None:
    if isinstance(eos_token_id, bool) or not isinstance(eos_token_id, int) or not 0 <= eos_token_id < vocab_size:
        raise ValueError(f"eos_token_id must be None or an int in [0, vocab_size = {vocab_size}), got {eos_token_id!r}")


def enumerate_responses(vocab_size: int, max_length: int, *, eos_token_id: int | None = None) -> ResponseSpace:
    r"""List every response of length ``max_length`` (or ending at ``eos_token_id``).

    Responses are in lexicographic order of their tokens; the EOS token ends a response and
    is counted in its mask (it is a sampled action like any other). States (prefixes) are
    numbered in order of first appearance, so the empty prefix is state 0.

    Args:
        vocab_size: :math:`V \ge 1`.
        max_length: :math:`T \ge 1`.
        eos_token_id: ``None`` or a token in ``[0, V)``.

    Returns:
        A :class:`ResponseSpace` with :func:`count_responses` rows.

    Raises:
        ValueError: for a bad argument or more than :data:`MAX_RESPONSES` responses.
    """
    n = count_responses(vocab_size, max_length, eos_token_id)
    if n > MAX_RESPONSES:
        raise ValueError(
            f"vocab_size = {vocab_size} and max_length = {max_length} give {n} responses, more than "
            f"MAX_RESPONSES = {MAX_RESPONSES}; an exact enumeration needs a smaller space"
        )
    rows: list[tuple[int, ...]] = []
    for full in itertools.product(range(vocab_size), repeat=max_length):
        if eos_token_id is not None and eos_token_id in full:
            end = full.index(eos_token_id) + 1
            if any(t != eos_token_id for t in full[end:]):
                continue  # the same response, padded differently: keep the EOS-padded copy
        rows.append(full)

    state_index: dict[tuple[int, ...], int] = {}
    tokens = torch.tensor(rows, dtype=torch.long).reshape(len(rows), max_length)
    mask = torch.zeros(len(rows), max_length, dtype=torch.bool)
    state_ids = torch.full((len(rows), max_length), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        for t in range(max_length):
            if t > 0 and eos_token_id is not None and row[t - 1] == eos_token_id:
                break
            mask[i, t] = True
            state_ids[i, t] = state_index.setdefault(row[:t], len(state_index))
    depth = torch.zeros(len(state_index), dtype=torch.long)
    for prefix, sid in state_index.items():
        depth[sid] = len(prefix)
    return ResponseSpace(tokens, mask, state_ids, len(state_index), vocab_size, max_length, eos_token_id, depth)


def _require_space(space: object) -> ResponseSpace:
    if not isinstance(space, ResponseSpace):
        raise TypeError(f"space must be a ResponseSpace (from enumerate_responses), got {type(space).__name__}")
    return space


def _require_table(table: object, space: ResponseSpace, name: str = "table") -> Tensor:
    table = require_float_tensor(name, table)
    expected = (space.num_states, space.vocab_size)
    if tuple(table.shape) != expected:
        raise ValueError(f"{name} must have shape [num_states, vocab_size] = {list(expected)}, got {list(table.shape)}")
    if not torch.isfinite(table).all():
        raise ValueError(f"{name} must be finite logits")
    return table


def random_table(
    space: ResponseSpace, *, scale: float = 1.0, seed: int = 0, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Logits ``Tensor[num_states, V]`` with i.i.d. ``N(0, scale^2)`` entries (a random tabular policy)."""
    space = _require_space(space)
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(space.num_states, space.vocab_size, generator=generator, dtype=dtype)


def state_log_distributions(table: Tensor, space: ResponseSpace) -> Tensor:
    r"""``Tensor[N, T, V]``: :math:`\log\pi(\cdot\mid s_t)` at every position (0 on padding)."""
    space = _require_space(space)
    table = _require_table(table, space)
    log_probs = torch.log_softmax(table, dim=-1)
    gathered = log_probs[space.state_ids.clamp(min=0)]
    return torch.where(space.mask[..., None], gathered, 0.0)


def tabular_token_logprobs(table: Tensor, space: ResponseSpace) -> Tensor:
    r"""``Tensor[N, T]``: :math:`\log\pi(y_t\mid s_t)` of each response's tokens (0 on padding).

    ``table[s]`` holds the logits of the next-token distribution in state ``s``; the result
    carries the table's gradient and is aligned like the library's losses expect.
    """
    distributions = state_log_distributions(table, space)
    return distributions.gather(-1, space.tokens[..., None]).squeeze(-1)


def tabular_token_scores(table: Tensor, space: ResponseSpace) -> Tensor:
    r"""``Tensor[N, T, num_states, V]``: :math:`\nabla_{\text{table}} \log\pi(y_t\mid s_t)` in closed form.

    The score of a softmax row is :math:`e_{y_t} - \pi(\cdot\mid s_t)` in row :math:`s_t` of the
    table and 0 in every other row (and on padding): the per-token terms of the score-function
    estimator, without autograd.
    """
    space = _require_space(space)
    table = _require_table(table, space)
    probs = torch.softmax(table, dim=-1)
    scores = torch.zeros(*space.mask.shape, *table.shape, dtype=table.dtype, device=table.device)
    n, t = space.mask.nonzero(as_tuple=True)
    state, token = space.state_ids[n, t], space.tokens[n, t]
    scores[n, t, state] = torch.nn.functional.one_hot(token, space.vocab_size).to(table.dtype) - probs[state]
    return scores


def sequence_logprobs(token_logprobs: Tensor, space: ResponseSpace) -> Tensor:
    r"""``Tensor[N]``: :math:`\log\pi(y) = \sum_t m_t \log\pi(y_t\mid s_t)`."""
    space = _require_space(space)
    token_logprobs = require_float_tensor("token_logprobs", token_logprobs)
    if token_logprobs.shape != space.mask.shape:
        raise ValueError(
            f"token_logprobs must have shape [N, T] = {list(space.mask.shape)}, got {list(token_logprobs.shape)}"
        )
    return torch.where(space.mask, token_logprobs, 0.0).sum(dim=1)


def _require_seq_logprobs(name: str, value: object) -> Tensor:
    t = require_float_tensor(name, value)
    require_ndim(name, t, (1,), "[N]")
    total = torch.logsumexp(t.detach().double(), 0).item()
    if not math.isclose(total, 0.0, abs_tol=1e-6 if t.dtype == torch.float64 else 1e-4):
        raise ValueError(
            f"{name} must be the log-probabilities of every response (summing to 1), got total "
            f"probability {math.exp(total):.6g}; enumerate the whole space"
        )
    return t


def expectation(values: Tensor, seq_logprobs: Tensor) -> Tensor:
    r"""Exact :math:`\mathbb E_{y\sim\pi}[f(y)] = \sum_y e^{\log\pi(y)} f(y)`.

    Differentiable in both arguments: through ``seq_logprobs`` it gives the true gradient
    of the expectation, including how the policy moves probability between responses.

    Args:
        values: ``Tensor[N]`` or ``Tensor[N, ...]`` (one value or vector per response).
        seq_logprobs: ``Tensor[N]`` from :func:`sequence_logprobs` over the whole space.

    Returns:
        ``Tensor[...]``.
    """
    seq_logprobs = _require_seq_logprobs("seq_logprobs", seq_logprobs)
    values = require_float_tensor("values", values)
    if values.shape[:1] != seq_logprobs.shape:
        raise ValueError(
            f"values must have N = {seq_logprobs.shape[0]} rows (one per response), got shape {list(values.shape)}"
        )
    weights = seq_logprobs.exp().reshape(-1, *([1] * (values.dim() - 1)))
    return (weights * values).sum(dim=0)


def sequence_kl(seq_logprobs: Tensor, other_seq_logprobs: Tensor) -> Tensor:
    r"""Exact :math:`\mathrm{KL}(\pi\,\|\,q) = \sum_y \pi(y)\,(\log\pi(y) - \log q(y))` over whole responses."""
    seq_logprobs = _require_seq_logprobs("seq_logprobs", seq_logprobs)
    other = _require_seq_logprobs("other_seq_logprobs", other_seq_logprobs)
    if other.shape != seq_logprobs.shape:
        raise ValueError(
            f"seq_logprobs and other_seq_logprobs must have the same shape, got {list(seq_logprobs.shape)} "
            f"and {list(other.shape)}"
        )
    return expectation(seq_logprobs - other, seq_logprobs)


def next_states(space: ResponseSpace) -> Tensor:
    """``LongTensor[num_states, V]``: the state reached from state ``s`` by token ``a``.

    ``-1`` where ``(s, a)`` ends the response (EOS, or the last position).
    """
    space = _require_space(space)
    child = torch.full((space.num_states, space.vocab_size), -1, dtype=torch.long)
    moves = space.mask[:, 1:]  # positions t whose successor t + 1 is generated
    child[space.state_ids[:, :-1][moves], space.tokens[:, :-1][moves]] = space.state_ids[:, 1:][moves]
    return child


def state_reach_probabilities(seq_logprobs: Tensor, space: ResponseSpace) -> Tensor:
    r"""``Tensor[num_states]``: :math:`P(s) = \sum_{y \ni s} \pi(y)`, the probability that a response passes
    through prefix :math:`s` (1 for the empty prefix). Differentiable in ``seq_logprobs``."""
    space = _require_space(space)
    seq_logprobs = _require_seq_logprobs("seq_logprobs", seq_logprobs)
    if seq_logprobs.shape != (space.num_responses,):
        raise ValueError(f"seq_logprobs must have shape [N] = [{space.num_responses}], got {list(seq_logprobs.shape)}")
    probs = seq_logprobs.exp()[:, None].expand_as(space.mask)[space.mask]
    reach = torch.zeros(space.num_states, dtype=seq_logprobs.dtype, device=seq_logprobs.device)
    return reach.index_add(0, space.state_ids[space.mask], probs)


def expectation_weights(
    space: ResponseSpace,
    sampling_logprobs: Tensor,
    *,
    token_level: bool = True,
    tokens_per_sequence: float | None = None,
) -> dict[str, Tensor | float]:
    r"""Mask weights that make a library loss on the enumerated batch equal its exact expectation.

    For a response :math:`y` sampled from :math:`\mu` (``sampling_logprobs``) and a per-token
    surrogate :math:`\ell_t(y)`, the returned keyword arguments give

    .. math::

        \begin{aligned}
        &\text{token level:} \\
        &\qquad \sum_y \mu(y) \frac{1}{T_0}\sum_t m_t\,\ell_t(y), \\
        &\text{sequence level:} \\
        &\qquad \sum_y \mu(y)\, \frac{\sum_t m_t\,\ell_t(y)}{\sum_t m_t},
        \end{aligned}

    the expected loss of a batch of one response normalised by a constant :math:`T_0`
    (``tokens_per_sequence``, default :math:`T`, as Dr. GRPO's constant normaliser) or per
    sequence. Both are linear in the batch, so their gradients are the exact expected
    gradients of the surrogate. (A token mean over a random number of tokens is not linear
    in the responses and has no such form.) The losses keep NeMo RL's :math:`+10^{-8}` in
    every denominator, so the result differs from the expectation by a relative
    :math:`O(10^{-8})` (at the token level exactly the factor :math:`T_0 / (T_0 + 10^{-8})`).

    Args:
        space: the enumerated responses.
        sampling_logprobs: ``Tensor[N]``, :math:`\log\mu(y)` of the distribution the responses
            are sampled from (e.g. :math:`\pi_\text{gen}`); detached.
        token_level: the reduction of the loss (NeMo RL's ``token_level_loss``).
        tokens_per_sequence: :math:`T_0` for the token level (default ``space.max_length``).

    Returns:
        ``dict(mask=..., sample_mask=..., global_valid_toks=..., global_valid_seqs=...)`` to
        pass to :func:`~nemo_rl_theory.losses.clipped_pg.clipped_pg_loss` and the other losses.
    """
    space = _require_space(space)
    probs = _require_seq_logprobs("sampling_logprobs", sampling_logprobs).detach().exp()
    if probs.shape != (space.num_responses,):
        raise ValueError(f"sampling_logprobs must have shape [N] = [{space.num_responses}], got {list(probs.shape)}")
    if not isinstance(token_level, bool):
        raise TypeError(f"token_level must be a bool, got {type(token_level).__name__}")
    if token_level:
        t0 = float(space.max_length if tokens_per_sequence is None else tokens_per_sequence)
        if not math.isfinite(t0) or t0 < float(space.lengths.max()):
            raise ValueError(
                f"tokens_per_sequence must be a constant >= the longest response ({int(space.lengths.max())}), "
                f"got {tokens_per_sequence!r}"
            )
        mask = space.mask.to(probs.dtype) * probs[:, None]
        return {"mask": mask, "sample_mask": None, "global_valid_toks": t0, "global_valid_seqs": None}
    if tokens_per_sequence is not None:
        raise ValueError("tokens_per_sequence applies to token_level=True only")
    return {"mask": space.mask, "sample_mask": probs, "global_valid_toks": None, "global_valid_seqs": 1.0}


def sample_responses(table: Tensor, space: ResponseSpace, num_samples: int, *, seed: int = 0) -> Tensor:
    """Indices ``LongTensor[num_samples]`` into ``space`` of responses sampled token by token.

    Walks the prefix tree with :func:`torch.multinomial` on ``softmax(table[state])``: a
    route independent of the enumeration's probabilities, for Monte Carlo checks.
    """
    space = _require_space(space)
    table = _require_table(table, space)
    _require_int("num_samples", num_samples, 1)
    generator = torch.Generator().manual_seed(seed)
    probs = torch.softmax(table.detach().double(), dim=-1)
    # (state, token) -> the next state, and a full response -> its row.
    next_state: dict[tuple[int, int], int] = {}
    row_of: dict[tuple[int, ...], int] = {}
    for i in range(space.num_responses):
        length = int(space.lengths[i])
        toks = tuple(int(x) for x in space.tokens[i, :length])
        row_of[toks] = i
        for t in range(length - 1):
            next_state[(int(space.state_ids[i, t]), toks[t])] = int(space.state_ids[i, t + 1])
    out = torch.empty(num_samples, dtype=torch.long)
    for k in range(num_samples):
        state, toks = 0, []
        while True:
            token = int(torch.multinomial(probs[state], 1, generator=generator))
            toks.append(token)
            if token == space.eos_token_id or len(toks) == space.max_length:
                break
            state = next_state[(state, token)]
        out[k] = row_of[tuple(toks)]
    return out
