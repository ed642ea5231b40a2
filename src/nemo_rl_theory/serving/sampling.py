r"""Sampling as vLLM serves it and as NeMo RL's trainer recomputes it: one set of functions for both.

A served token is drawn from the *processed* distribution: the logits divided by the temperature,
then cut by min-p, top-k and top-p (in that order), then renormalised. The log-probability the
server returns and the one the trainer recomputes for the same token are the same function of the
same logits here (:func:`filter_logits` then :func:`~nemo_rl_theory.logprobs.token_logprobs`), so
any difference between them comes from the logits (kernels, precision), never from the sampling
semantics.

Sources, read for the semantics (not copied):

* vLLM ``vllm/v1/sample/sampler.py`` (3e34265): float32 logits; greedy requests take the arg-max
  and, in ``processed_logprobs`` mode, return the log-softmax of the untempered, unfiltered logits;
  otherwise temperature, then the argmax-invariant logits processors (min-p), then top-k / top-p,
  then an exponential race :math:`\arg\max_v p_v / q_v`, :math:`q_v \sim \mathrm{Exp}(1)`;
  temperatures below ``_SAMPLING_EPS = 1e-5`` are greedy.
* vLLM ``vllm/v1/sample/ops/topk_topp_sampler.py`` (01fa3fe), ``apply_top_k_top_p_pytorch``:
  ascending sort; top-k masks values ``<`` the k-th largest (ties kept); top-p masks positions
  whose ascending cumulative probability is ``<= 1 - p`` and always keeps the last (most likely).
  Recent vLLM sends batches of 8 or more rows to a Triton kernel (``topk_topp_triton.py``)
  with its own handling of ties at the boundary; the rule here is the PyTorch path's, which
  NeMo RL's trainer also follows.
* vLLM ``vllm/v1/sample/logits_processor/builtin.py`` (0272a72), ``MinPLogitsProcessor``: masks
  tokens with :math:`p_v < p_{\min} \cdot \max_u p_u` (probabilities of the tempered logits).
* vLLM ``vllm/v1/worker/gpu_input_batch.py``: ``top_k`` outside ``(0, V)`` means no top-k.
* vLLM ``vllm/sampling_params.py`` (00388f6): ``top_k`` 0 or -1 disables, ``< -1`` is an error;
  ``0 < top_p <= 1``; ``0 <= min_p <= 1``; greedy resets top-p/top-k/min-p.
* NeMo RL 7ea279a ``nemo_rl/algorithms/logits_sampling_utils.py`` (``apply_top_k_top_p``, the
  same masks as vLLM for the trainer; no min-p), ``nemo_rl/models/policy/workers/
  dtensor_policy_worker.py`` (``logits.div_(temperature)`` before it),
  ``nemo_rl/distributed/model_utils.py`` (``get_next_token_logprobs_from_logits``: float32 logits,
  filter, log-softmax, gather) and ``nemo_rl/algorithms/utils.py`` (``mask_out_neg_inf_logprobs``,
  called from ``nemo_rl/algorithms/loss/utils.py`` for ``curr_logprobs`` and from the policy
  workers' log-prob paths, e.g. ``nemo_rl/models/automodel/train.py``, for ``prev_logprobs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from nemo_rl_theory._validation import require_float_tensor, require_number, require_tensor
from nemo_rl_theory.logprobs import token_logprobs
from nemo_rl_theory.toy.tasks import EOS, PAD

#: Temperatures below this are greedy, as ``_SAMPLING_EPS`` in vLLM's sampler and SamplingParams.
SAMPLING_EPS = 1e-5

FinishReason = Literal["stop", "length"]

__all__ = [
    "SAMPLING_EPS",
    "FinishReason",
    "SamplingParams",
    "filter_logits",
    "generate_completion",
    "mask_out_neg_inf_logprobs",
    "recompute_logprobs",
    "sample_next",
    "sampling_distribution",
    "sampling_logprobs",
]


@dataclass(frozen=True)
class SamplingParams:
    r"""The sampling knobs vLLM's completions API exposes, validated as vLLM validates them.

    Attributes:
        temperature: :math:`\tau \ge 0`; the logits are divided by it. :math:`\tau <` ``1e-5``
            (``SAMPLING_EPS``) is greedy (arg-max), the threshold of vLLM's sampler. Unlike
            vLLM's ``SamplingParams`` (00388f6), which raises temperatures in ``(0, 0.01)`` to
            0.01 (so through its API only 0 is greedy; the server of
            :mod:`~nemo_rl_theory.serving.app` does the same), any finite :math:`\tau \ge 0` is
            accepted here so the limits can be studied.
        top_p: nucleus mass :math:`p \in (0, 1]`; 1 disables it.
        top_k: keep the tokens whose logit is at least the :math:`k`-th largest (ties at the
            :math:`k`-th value are kept); ``-1`` or ``0`` disables it (vLLM accepts both),
            :math:`k \ge V` keeps everything.
        min_p: keep tokens with :math:`p_v \ge p_{\min}\max_u p_u`, :math:`p_{\min} \in [0, 1]`;
            0 disables it. vLLM only: NeMo RL 7ea279a's trainer applies no min-p.

    Raises:
        TypeError: a field of the wrong type (``top_k`` must be an ``int``, not a ``bool``).
        ValueError: a field outside its range; the message names the field and the range.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0

    def __post_init__(self) -> None:
        temperature = require_number("temperature", self.temperature)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        top_p = require_number("top_p", self.top_p)
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int):
            raise TypeError(f"top_k must be an int, got {type(self.top_k).__name__}")
        if self.top_k < -1:
            raise ValueError(f"top_k must be -1 or 0 (disabled) or >= 1, got {self.top_k}")
        min_p = require_number("min_p", self.min_p)
        if not 0.0 <= min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {min_p}")

    @property
    def greedy(self) -> bool:
        """Whether these parameters take the arg-max (temperature below ``SAMPLING_EPS``)."""
        return self.temperature < SAMPLING_EPS


def _check_params(params: object) -> SamplingParams:
    if not isinstance(params, SamplingParams):
        raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
    return params


def _check_logits(logits: object) -> Tensor:
    logits = require_float_tensor("logits", logits)
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty last (vocabulary) dim, got {list(logits.shape)}")
    if torch.isnan(logits).any() or (logits == float("inf")).any():
        raise ValueError("logits must not contain NaN or +inf")
    if logits.numel() and bool((logits == -float("inf")).all(dim=-1).any()):
        raise ValueError("logits has a row whose entries are all -inf; no token can be sampled there")
    return logits


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # vLLM samples in float32 (Sampler.forward casts the logits); float64 is kept for references.
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _filter(z: Tensor, params: SamplingParams) -> Tensor:
    """:func:`filter_logits` without the input checks (``z`` already in the compute dtype)."""
    neg_inf = torch.tensor(-float("inf"), dtype=z.dtype, device=z.device)
    vocab = z.shape[-1]
    if params.greedy:
        # vLLM: no temperature division and (SamplingParams resets them) no min-p / top-k / top-p.
        return z
    z = z / params.temperature
    if params.min_p > 0.0:
        probs = torch.softmax(z, dim=-1)
        z = torch.where(probs < params.min_p * probs.amax(dim=-1, keepdim=True), neg_inf, z)
    use_top_k = 0 < params.top_k < vocab
    use_top_p = params.top_p < 1.0
    if not (use_top_k or use_top_p):
        return z
    # Ascending stable sort: among equal logits the larger token id comes later (counts as
    # more likely for top-p). vLLM's GPU sort is unstable, so its order among ties is unspecified.
    z_sorted, order = torch.sort(z, dim=-1, stable=True)
    if use_top_k:
        kth = z_sorted[..., vocab - params.top_k : vocab - params.top_k + 1]
        z_sorted = torch.where(z_sorted < kth, neg_inf, z_sorted)
    if use_top_p:
        cumulative = torch.softmax(z_sorted, dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1.0 - params.top_p
        drop[..., -1] = False  # the most likely token is always kept
        z_sorted = torch.where(drop, neg_inf, z_sorted)
    return torch.empty_like(z).scatter(-1, order, z_sorted)


def filter_logits(logits: Tensor, params: SamplingParams) -> Tensor:
    r"""Processed logits: tempered, with :math:`-\infty` outside the kept set (vLLM's order).

    For :math:`\tau \ge` ``SAMPLING_EPS``, with :math:`z` the logits of one position:

    .. math::

        \begin{aligned}
        u_v &= z_v / \tau \\
        \pi_v &= \mathrm{softmax}(u)_v \\
        M &= \{v : \pi_v \ge p_{\min} \max_w \pi_w\} \\
        K &= \{v \in M : u_v \ge u_{(k)}\} \\
        P &= \{v \in K : m_v < p\} \\
        \tilde z_v &= u_v \text{ if } v \in P \\
        \tilde z_v &= -\infty \text{ otherwise}
        \end{aligned}

    where :math:`u_{(k)}` is the :math:`k`-th largest of :math:`\{u_v : v \in M\}` (ties at it are
    kept) and :math:`m_v` is the mass, renormalised over :math:`K`, of the tokens ranked strictly
    before :math:`v` in decreasing :math:`u` (ties: larger id first). So :math:`P` is the
    smallest prefix of :math:`K` whose mass reaches :math:`p`, and it always holds the most likely
    token. Disabled filters keep everything. Greedy (:math:`\tau <` ``1e-5``): :math:`z`
    unchanged, as vLLM's greedy path leaves it (no division, and ``SamplingParams`` resets
    top-p, top-k and min-p); the token is then the arg-max, see :func:`sampling_distribution`.

    Args:
        logits: ``Tensor[..., V]``, float; half precision is processed in float32 (as vLLM).
        params: :class:`SamplingParams`.

    Returns:
        ``Tensor[..., V]`` in float32 (float64 for float64 input); never all :math:`-\infty`.

    Raises:
        TypeError: ``logits`` not a float tensor, ``params`` not a :class:`SamplingParams`.
        ValueError: empty vocabulary, NaN or :math:`+\infty` logits, or a row all :math:`-\infty`.
    """
    params = _check_params(params)
    logits = _check_logits(logits)
    return _filter(logits.to(_compute_dtype(logits.dtype)), params)


def sampling_distribution(logits: Tensor, params: SamplingParams) -> Tensor:
    r"""``Tensor[..., V]``: the distribution a token is drawn from, :math:`\mathrm{softmax}(\tilde z)`.

    Zero outside the kept set. Greedy: one-hot on the first arg-max of the logits (then it is
    not :math:`\mathrm{softmax}(\tilde z)`, whose log is what :func:`sampling_logprobs` returns).
    """
    filtered = filter_logits(logits, params)
    if params.greedy:
        best = filtered.argmax(dim=-1, keepdim=True)
        return torch.zeros_like(filtered).scatter(-1, best, 1.0)
    return torch.softmax(filtered, dim=-1)


def _as_targets(tokens: object, leading: torch.Size, vocab: int) -> Tensor:
    tokens = require_tensor("tokens", tokens)
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.is_complex():
        raise TypeError(f"tokens must be an integer tensor of token ids, got dtype {tokens.dtype}")
    if tokens.shape != leading:
        raise ValueError(
            f"tokens must have shape {list(leading)} (logits without the vocab dim), got {list(tokens.shape)}"
        )
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise ValueError(
            f"tokens must be ids in [0, {vocab}), got values in [{int(tokens.min())}, {int(tokens.max())}]"
        )
    return tokens.long()


def _gather_logprobs(filtered: Tensor, tokens: Tensor) -> Tensor:
    # The trainer's route: the library's token_logprobs (z_y - logsumexp z) on the filtered logits.
    if filtered.dim() == 1:
        return token_logprobs(filtered[None], tokens[None])[0]
    return token_logprobs(filtered, tokens)


def sampling_logprobs(logits: Tensor, tokens: Tensor, params: SamplingParams) -> Tensor:
    r"""Log-probability of each token under the processed distribution.

    .. math::

        \log \tilde p(y) = \tilde z_y - \log \sum_v e^{\tilde z_v}

    with :math:`\tilde z` = :func:`filter_logits`; :math:`-\infty` for a token outside the kept
    set. This is what the server returns (vLLM ``logprobs_mode="processed_logprobs"``, which
    NeMo RL 7ea279a sets in ``examples/configs/grpo_math_1B.yaml``) and what the trainer
    recomputes. Greedy: :math:`\tilde z = z`, so the log-prob is the plain
    :math:`\log\mathrm{softmax}(z)_y` (never :math:`-\infty`), as vLLM returns for greedy
    requests; it is not the log of the one-hot :func:`sampling_distribution`.

    Args:
        logits: ``Tensor[..., V]``.
        tokens: ``Tensor[...]`` integer ids in ``[0, V)``.
        params: :class:`SamplingParams`.

    Returns:
        ``Tensor[...]`` float32 (float64 for float64 logits).
    """
    filtered = filter_logits(logits, params)
    targets = _as_targets(tokens, filtered.shape[:-1], filtered.shape[-1])
    return _gather_logprobs(filtered, targets)


def _check_generator(generator: object) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return generator


def _sample_filtered(filtered: Tensor, params: SamplingParams, generator: torch.Generator) -> Tensor:
    if params.greedy:
        return filtered.argmax(dim=-1)
    probs = torch.softmax(filtered, dim=-1)
    # Exponential race (vLLM's random_sample): argmax_v p_v / q_v with q_v ~ Exp(1) picks v with
    # probability p_v. The clamp only guards a q of exactly 0.
    q = torch.empty_like(probs).exponential_(generator=generator).clamp_min_(torch.finfo(probs.dtype).tiny)
    return (probs / q).argmax(dim=-1)


def sample_next(logits: Tensor, params: SamplingParams, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    r"""Draw one token per row from the processed distribution; return it and its log-prob.

    :math:`y = \arg\max_v \tilde p_v / q_v` with :math:`q_v \sim \mathrm{Exp}(1)` drawn from
    ``generator`` (vLLM's exponential race; :math:`P(y = v) = \tilde p_v`), or the arg-max when
    greedy. The log-prob is :func:`sampling_logprobs` of the drawn token.

    Args:
        logits: ``Tensor[B, V]`` float.
        params: :class:`SamplingParams`.
        generator: a CPU ``torch.Generator``; the same state gives the same tokens.

    Returns:
        ``(tokens: Tensor[B] long, logprobs: Tensor[B] float32)``.
    """
    params = _check_params(params)
    logits = _check_logits(logits)
    generator = _check_generator(generator)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape [B, V], got {list(logits.shape)}")
    filtered = _filter(logits.to(_compute_dtype(logits.dtype)), params)
    tokens = _sample_filtered(filtered, params, generator)
    return tokens, _gather_logprobs(filtered, tokens)


# ----------------------------------------------------------------------------------------
# Completions on the toy policy
# ----------------------------------------------------------------------------------------


def _rows(name: str, tokens: object, *, allow_empty_rows: bool, strip_pad: bool = False) -> list[list[int]]:
    """``Tensor[B, L]`` or ``list[list[int]]`` -> list of int lists (validated, not yet vocab-checked).

    ``strip_pad`` drops trailing ``PAD`` from the rows of a *tensor* (right-padded prompts).
    """
    if isinstance(tokens, Tensor):
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.is_complex():
            raise TypeError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
        if tokens.dim() != 2:
            raise ValueError(f"{name} must be Tensor[B, L] or a list of token-id lists, got shape {list(tokens.shape)}")
        rows = tokens.tolist()
        if strip_pad:
            for row in rows:
                while row and row[-1] == PAD:
                    row.pop()
    elif isinstance(tokens, Sequence) and not isinstance(tokens, (str, bytes)):
        rows = []
        for i, row in enumerate(tokens):
            if not isinstance(row, Sequence) or isinstance(row, (str, bytes)):
                raise TypeError(f"{name}[{i}] must be a list of int token ids, got {type(row).__name__}")
            if any(isinstance(t, bool) or not isinstance(t, int) for t in row):
                raise TypeError(f"{name}[{i}] must contain only int token ids")
            rows.append(list(row))
    else:
        raise TypeError(f"{name} must be a Tensor[B, L] or a list of token-id lists, got {type(tokens).__name__}")
    if not rows:
        raise ValueError(f"{name} must hold at least one row")
    if not allow_empty_rows and any(len(r) == 0 for r in rows):
        raise ValueError(f"{name} rows must be non-empty (a prompt needs at least one token, e.g. BOS)")
    return rows


def _check_vocab(name: str, rows: list[list[int]], vocab: int) -> None:
    for i, row in enumerate(rows):
        bad = [t for t in row if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"{name}[{i}] has token ids outside [0, {vocab}): {bad[:5]}")


def _vocab_size(policy: nn.Module) -> int:
    head = getattr(policy, "head", None)
    if isinstance(head, nn.Linear):
        return head.out_features
    raise TypeError("policy must be a toy policy (nemo_rl_theory.toy.ToyPolicy or alike, with a Linear `head`)")


def _check_policy(policy: object) -> nn.Module:
    if not isinstance(policy, nn.Module):
        raise TypeError(f"policy must be a torch.nn.Module (a toy policy), got {type(policy).__name__}")
    return policy


@torch.no_grad()
def generate_completion(
    policy: nn.Module,
    prompt_tokens: Tensor | Sequence[Sequence[int]],
    params: SamplingParams,
    *,
    max_tokens: int,
    generator: torch.Generator,
    stop_token_ids: Sequence[int] = (EOS,),
) -> tuple[list[list[int]], list[list[float]], list[FinishReason]]:
    """Complete each prompt token by token with the GRU state, as a decode loop serves it.

    Every row is fed its prompt one token per step (rows with shorter prompts start sampling
    earlier); from the step after its last prompt token a row samples with :func:`sample_next`
    until it emits a token of ``stop_token_ids`` (kept in the completion, finish reason
    ``"stop"``) or has ``max_tokens`` tokens (``"length"``). One batched policy call per step;
    every step draws noise for the whole batch, so the same prompts, parameters and generator
    state give the same completions.

    Args:
        policy: a toy policy, ``policy(tokens[B, 1], state) -> (logits[B, 1, V], state)``.
        prompt_tokens: ``Tensor[B, P]`` (trailing ``PAD`` dropped, so ``Problems.prompts`` works)
            or a list of ``B`` non-empty token-id lists (taken as they are).
        params: :class:`SamplingParams`.
        max_tokens: completion budget per row, ``>= 1``.
        generator: CPU ``torch.Generator``.
        stop_token_ids: ids that end a completion (default: the toy's ``EOS``); may be empty.

    Returns:
        ``(tokens, logprobs, finish_reasons)``: per row the completion ids, their processed
        log-probs (:func:`sampling_logprobs` of the decode logits, float32 values) and
        ``"stop"`` or ``"length"``.
    """
    policy = _check_policy(policy)
    params = _check_params(params)
    generator = _check_generator(generator)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise TypeError(f"max_tokens must be an int, got {type(max_tokens).__name__}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    prompts = _rows("prompt_tokens", prompt_tokens, allow_empty_rows=False, strip_pad=True)
    vocab = _vocab_size(policy)
    _check_vocab("prompt_tokens", prompts, vocab)
    if isinstance(stop_token_ids, (str, bytes)) or not isinstance(stop_token_ids, Sequence):
        raise TypeError("stop_token_ids must be a sequence of int token ids")
    if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab for t in stop_token_ids):
        raise ValueError(f"stop_token_ids must be int ids in [0, {vocab}), got {list(stop_token_ids)}")
    stops = set(stop_token_ids)

    batch = len(prompts)
    lengths = [len(p) for p in prompts]
    completions: list[list[int]] = [[] for _ in range(batch)]
    logprobs: list[list[float]] = [[] for _ in range(batch)]
    finish: list[FinishReason | None] = [None] * batch
    was_training = policy.training
    policy.eval()
    try:
        state = None
        step = 0
        while any(f is None for f in finish):
            column = []
            for i in range(batch):
                if step < lengths[i]:
                    column.append(prompts[i][step])
                elif completions[i]:
                    column.append(completions[i][-1])
                else:  # unreachable: a row samples as soon as its prompt is fed
                    column.append(PAD)
            logits, state = policy(torch.tensor(column, dtype=torch.long)[:, None], state)
            tokens, token_lp = sample_next(logits[:, 0], params, generator)
            for i in range(batch):
                if finish[i] is not None or step < lengths[i] - 1:
                    continue
                token = int(tokens[i])
                completions[i].append(token)
                logprobs[i].append(float(token_lp[i]))
                if token in stops:
                    finish[i] = "stop"
                elif len(completions[i]) >= max_tokens:
                    finish[i] = "length"
            step += 1
    finally:
        policy.train(was_training)
    return completions, logprobs, [f for f in finish if f is not None]


def mask_out_neg_inf_logprobs(logprobs: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    r"""NeMo RL's handling of tokens outside the trainer's kept set: their log-prob becomes 0.

    A token sampled by the server is always inside the server's kept set (finite log-prob), but
    the trainer's logits differ slightly, so its top-k / top-p set can exclude it:
    :math:`\log \tilde p(y) = -\infty`. NeMo RL 7ea279a ``nemo_rl/algorithms/utils.py``
    (``mask_out_neg_inf_logprobs``; called when top-k or top-p is on, from
    ``nemo_rl/algorithms/loss/utils.py`` for ``curr_logprobs`` and from the policy workers for
    ``prev_logprobs``) warns with the count and sets those positions, and every position with
    ``mask == 0``, to 0:

    .. math::

        \begin{aligned}
        m'_t &= m_t \,\mathbb 1[\ell_t > -\infty] \\
        \ell'_t &= \ell_t \text{ if } m'_t \ne 0 \text{ else } 0
        \end{aligned}

    NeMo RL returns only :math:`\ell'` and its loss keeps the original token mask, so such a
    token stays in the loss with a constant log-prob: no gradient flows through it, but it
    counts in the token mean and enters ratios, importance weights and mismatch metrics with
    :math:`\ell' = 0`. The updated mask :math:`m'` is returned here as well so callers can
    count those positions or exclude them (which NeMo RL does not).

    Args:
        logprobs: ``Tensor[...]`` float.
        mask: ``Tensor[...]`` same shape, 0/1 (bool, int or float).

    Returns:
        ``(masked_logprobs, kept_mask)`` with the dtypes of ``logprobs`` and ``mask``.
    """
    logprobs = require_float_tensor("logprobs", logprobs)
    mask = require_tensor("mask", mask)
    if mask.shape != logprobs.shape:
        raise ValueError(
            f"logprobs and mask must have the same shape, got {list(logprobs.shape)} and {list(mask.shape)}"
        )
    if torch.isnan(logprobs).any() or (logprobs == float("inf")).any():
        raise ValueError("logprobs must not contain NaN or +inf (log-probs are <= 0 or -inf)")
    finite = ~torch.isinf(logprobs)
    kept = mask.bool() & finite
    kept_mask = mask * finite.to(mask.dtype) if mask.dtype != torch.bool else kept
    return torch.where(kept, logprobs, torch.zeros((), dtype=logprobs.dtype)), kept_mask


@torch.no_grad()
def recompute_logprobs(
    policy: nn.Module,
    prompt_tokens: Tensor | Sequence[Sequence[int]],
    completion_tokens: Tensor | Sequence[Sequence[int]],
    params: SamplingParams,
    *,
    route: Literal["teacher_forced", "decode"] = "teacher_forced",
    mask_neg_inf: bool = True,
) -> Tensor:
    r"""The trainer's log-probs of given completions under the same sampling parameters.

    ``route="teacher_forced"`` (the trainer's route): one policy call on the whole right-padded
    ``prompt + completion`` batch, then :func:`filter_logits` and the library's
    :func:`~nemo_rl_theory.logprobs.token_logprobs` at the completion positions, as NeMo RL 7ea279a
    ``get_next_token_logprobs_from_logits`` does (float32 logits, ``apply_top_k_top_p``,
    log-softmax, gather). ``route="decode"`` feeds the same batch one token per step with the GRU
    state, exactly as :func:`generate_completion` does, so the logits are computed by the same
    kernels at the same shapes: for the same prompts, completions and parameters (same batch
    layout) it returns the served log-probs bit for bit. The teacher-forced route computes the
    same sums of products at other shapes (e.g. the output layer on all positions in one matrix
    product), which a BLAS may compute with another kernel in another summation order; so
    nothing makes it bitwise equal, only equal to float32 rounding (below ``1e-5`` on the toy).
    A different batch layout (a row scored alone) moves the last bits on either route.

    NeMo RL 7ea279a's ``TrainingSamplingParams`` has no ``min_p``: its trainer recomputes without
    min-p, so pass ``dataclasses.replace(params, min_p=0.0)`` to reproduce that trainer when the
    server used min-p.

    With ``mask_neg_inf`` (default), positions whose recomputed log-prob is :math:`-\infty` (the
    token fell outside the trainer's kept set) are set to 0 as NeMo RL does
    (:func:`mask_out_neg_inf_logprobs`; NeMo RL does so when top-k or top-p is on, the only
    filters it has, so the two agree whenever ``min_p`` is 0).

    Args:
        policy: a toy policy.
        prompt_tokens: ``Tensor[B, P]`` (trailing ``PAD`` dropped) or ``B`` non-empty token-id lists.
        completion_tokens: ``Tensor[B, C]`` or ``B`` token-id lists (may differ in length).
        params: :class:`SamplingParams` the completions were sampled with.
        route: ``"teacher_forced"`` or ``"decode"``.
        mask_neg_inf: apply NeMo RL's :math:`-\infty` masking.

    Returns:
        ``Tensor[B, C_max]`` float32, right-padded with 0 after each completion.
    """
    policy = _check_policy(policy)
    params = _check_params(params)
    if route not in ("teacher_forced", "decode"):
        raise ValueError(f"route must be 'teacher_forced' or 'decode', got {route!r}")
    if not isinstance(mask_neg_inf, bool):
        raise TypeError(f"mask_neg_inf must be a bool, got {type(mask_neg_inf).__name__}")
    prompts = _rows("prompt_tokens", prompt_tokens, allow_empty_rows=False, strip_pad=True)
    completions = _rows("completion_tokens", completion_tokens, allow_empty_rows=True)
    if len(prompts) != len(completions):
        raise ValueError(
            "prompt_tokens and completion_tokens must have the same number of rows, "
            f"got {len(prompts)} and {len(completions)}"
        )
    vocab = _vocab_size(policy)
    _check_vocab("prompt_tokens", prompts, vocab)
    _check_vocab("completion_tokens", completions, vocab)

    batch = len(prompts)
    sequences = [p + c for p, c in zip(prompts, completions, strict=True)]
    width = max(len(s) for s in sequences)
    tokens = torch.full((batch, width), PAD, dtype=torch.long)
    for i, s in enumerate(sequences):
        tokens[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    c_max = max(len(c) for c in completions)
    out = torch.zeros(batch, c_max, dtype=torch.float32)
    if c_max == 0:
        return out

    was_training = policy.training
    policy.eval()
    try:
        if route == "teacher_forced":
            logits, _ = policy(tokens[:, :-1])
        else:
            state, steps = None, []
            for t in range(width - 1):
                step_logits, state = policy(tokens[:, t : t + 1], state)
                steps.append(step_logits)
            logits = torch.cat(steps, dim=1)
    finally:
        policy.train(was_training)

    per_position = sampling_logprobs(logits, tokens[:, 1:], params)  # [B, width - 1]
    mask = torch.zeros(batch, c_max, dtype=torch.float32)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        # logits[:, t] predicts tokens[:, t + 1]: completion token j sits at len(p) + j.
        out[i, : len(c)] = per_position[i, len(p) - 1 : len(p) - 1 + len(c)].float()
        mask[i, : len(c)] = 1.0
    if mask_neg_inf:
        out, _ = mask_out_neg_inf_logprobs(out, mask)
    return out
