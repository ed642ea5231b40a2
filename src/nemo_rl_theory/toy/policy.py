r"""A tiny GRU language model, its sampler and the teacher-forced log-probs the losses consume.

Sequences are ``prompt + response`` in one ``Tensor[B, T]``, right-padded with ``PAD``. As in
NeMo RL, per-token quantities are aligned to the *predicted* tokens ``tokens[:, 1:]``, so they are
``Tensor[B, T-1]`` and the token ``mask`` is 1 exactly on response tokens (``EOS`` included).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nemo_rl_theory.logprobs import token_logprobs
from nemo_rl_theory.toy.tasks import EOS, PAD, VOCAB_SIZE, Problems


class ToyPolicy(nn.Module):
    """Embedding -> GRU -> linear head. With the defaults it has 20,368 parameters."""

    def __init__(self, vocab_size: int = VOCAB_SIZE, embedding_dim: int = 32, hidden_dim: int = 64) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = nn.GRU(embedding_dim, hidden_dim, batch_first=True)
        self.head = nn.Linear(hidden_dim, vocab_size)

    def forward(self, tokens: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``tokens: Tensor[B, T]`` -> (next-token ``logits: Tensor[B, T, V]``, GRU state)."""
        hidden, state = self.rnn(self.embedding(tokens), state)
        return self.head(hidden), state


def make_policy(seed: int = 0, **kwargs: int) -> ToyPolicy:
    """A :class:`ToyPolicy` whose initial weights depend only on ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ToyPolicy(**kwargs)


def frozen_copy(policy: nn.Module) -> nn.Module:
    """A copy of ``policy`` with gradients off: the reference policy for KL and DPO."""
    import copy

    reference = copy.deepcopy(policy)
    reference.requires_grad_(False)
    return reference.eval()


def next_token_logits(policy: nn.Module, tokens: Tensor, *, temperature: float = 1.0) -> Tensor:
    """``Tensor[B, T-1, V]``: logits for predicting ``tokens[:, 1:]`` (divided by ``temperature``)."""
    logits, _ = policy(tokens[:, :-1])
    return logits / temperature if temperature != 1.0 else logits


def sequence_logprobs(policy: nn.Module, tokens: Tensor, *, temperature: float = 1.0) -> Tensor:
    r"""``Tensor[B, T-1]``: :math:`\log\pi(\text{tokens}_{t+1} \mid \text{tokens}_{\le t})` for every position."""
    return token_logprobs(next_token_logits(policy, tokens, temperature=temperature), tokens[:, 1:])


@dataclass(frozen=True)
class Rollout:
    """Sampled responses and everything the losses need about them.

    Attributes:
        tokens: ``Tensor[B, T]`` prompt then response, right-padded with ``PAD``.
        mask: ``Tensor[B, T-1]`` float, 1 where ``tokens[:, 1:]`` is a response token.
        logprobs: ``Tensor[B, T-1]`` the sampler's log-probs of the sampled tokens (0 off the
            mask): NeMo RL's ``generation_logprobs``.
        responses: ``Tensor[B, R]`` the response tokens alone, right-padded with ``PAD``.
        response_lengths: ``Tensor[B]`` response tokens, ``EOS`` included.
        terminated: ``Tensor[B]`` bool, whether the response ended with ``EOS`` within the budget.
        max_new_tokens: the response budget :math:`L_{\\max}`.
    """

    tokens: Tensor
    mask: Tensor
    logprobs: Tensor
    responses: Tensor
    response_lengths: Tensor
    terminated: Tensor
    max_new_tokens: int


def join_prompt_response(problems: Problems, responses: Tensor, response_lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Concatenate each prompt with its response: ``(tokens: Tensor[B, T], mask: Tensor[B, T-1])``.

    Used to teacher-force known responses (SFT targets, DPO chosen/rejected answers).
    """
    batch = len(problems)
    if responses.shape[0] != batch or response_lengths.shape != (batch,):
        raise ValueError(
            f"responses must be Tensor[B, R] and response_lengths Tensor[B] with B = {batch}, "
            f"got {list(responses.shape)} and {list(response_lengths.shape)}"
        )
    total = problems.prompt_lengths + response_lengths
    width = int(total.max())
    tokens = torch.full((batch, width), PAD, dtype=torch.long)
    positions = torch.arange(width)
    in_prompt = positions[None, :] < problems.prompt_lengths[:, None]
    in_response = ~in_prompt & (positions[None, :] < total[:, None])
    p = problems.prompts.shape[1]
    tokens[:, :p] = torch.where(in_prompt[:, :p], problems.prompts, PAD)
    offset = (positions[None, :] - problems.prompt_lengths[:, None]).clamp(0, responses.shape[1] - 1)
    tokens = torch.where(in_response, responses.gather(1, offset), tokens)
    return tokens, in_response[:, 1:].float()


@torch.no_grad()
def generate(
    policy: nn.Module,
    problems: Problems,
    *,
    generator: torch.Generator,
    max_new_tokens: int | None = None,
    temperature: float = 1.0,
    greedy: bool = False,
) -> Rollout:
    """Sample one response per prompt, token by token, until ``EOS`` or ``max_new_tokens``.

    ``max_new_tokens`` defaults to the longest answer in ``problems`` plus 2. ``greedy`` takes
    the arg-max token (``logprobs`` are then still those of the temperature-scaled policy).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    budget = int(problems.answer_lengths.max()) + 2 if max_new_tokens is None else max_new_tokens
    if budget < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {budget}")
    batch = len(problems)
    starts = problems.prompt_lengths
    width = int(starts.max()) + budget
    tokens = torch.full((batch, width), PAD, dtype=torch.long)
    tokens[:, : problems.prompts.shape[1]] = problems.prompts
    logprobs = torch.zeros(batch, width - 1)
    mask = torch.zeros(batch, width - 1)
    done = torch.zeros(batch, dtype=torch.bool)
    was_training = policy.training
    policy.eval()
    state = None
    for t in range(width - 1):
        logits, state = policy(tokens[:, t : t + 1], state)
        position = t + 1
        active = (position >= starts) & (position < starts + budget) & ~done
        if not bool(active.any()):
            if bool((position >= starts).all()):
                break
            continue
        step_logprobs = torch.log_softmax(logits[:, 0] / temperature, dim=-1)
        if greedy:
            choice = step_logprobs.argmax(dim=-1)
        else:
            choice = torch.multinomial(step_logprobs.exp(), 1, generator=generator)[:, 0]
        tokens[:, position] = torch.where(active, choice, tokens[:, position])
        logprobs[:, t] = torch.where(active, step_logprobs.gather(1, choice[:, None])[:, 0], 0.0)
        mask[:, t] = active.float()
        done |= active & (choice == EOS)
    policy.train(was_training)

    response_lengths = mask.sum(dim=1).long()
    longest = max(int(response_lengths.max()), 1)
    offsets = starts[:, None] + torch.arange(longest)[None, :]
    responses = torch.where(
        torch.arange(longest)[None, :] < response_lengths[:, None],
        tokens.gather(1, offsets.clamp(max=width - 1)),
        PAD,
    )
    used = int((starts + response_lengths).max())
    return Rollout(
        tokens=tokens[:, :used],
        mask=mask[:, : used - 1],
        logprobs=logprobs[:, : used - 1],
        responses=responses,
        response_lengths=response_lengths,
        terminated=done,
        max_new_tokens=budget,
    )
