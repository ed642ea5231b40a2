r"""Synthetic verifiable tasks over a 16-token vocabulary, and the rewards that check them.

Three task kinds, each with an integer difficulty :math:`n`:

* ``"copy"``: prompt ``BOS d_1 .. d_n SEP``, answer ``d_1 .. d_n EOS``;
* ``"reverse"``: same prompt, answer ``d_n .. d_1 EOS``;
* ``"add"``: prompt ``BOS a PLUS b EQUALS`` with two :math:`n`-digit numbers written least
  significant digit first, answer the :math:`n+1` digits of :math:`a+b` (least significant first,
  the last one is the carry, possibly 0) then ``EOS``.

Digits are tokens 0-9. Prompts and answers are right-padded with ``PAD`` into ``Tensor[B, P]`` and
``Tensor[B, L]``; answers include their ``EOS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:
    from nemo_rl_theory.toy.policy import Rollout

PLUS, EQUALS, SEP, EOS, BOS, PAD = 10, 11, 12, 13, 14, 15
VOCAB_SIZE = 16
TOKEN_NAMES = [str(d) for d in range(10)] + ["+", "=", "|", "<eos>", "<bos>", "<pad>"]

TaskKind = Literal["copy", "reverse", "add"]
TASK_KINDS: tuple[str, ...] = ("copy", "reverse", "add")
MAX_DIFFICULTY = 32


@dataclass(frozen=True)
class Problems:
    """A batch of task instances.

    Attributes:
        kind: the task kind, shared by the batch.
        prompts: ``Tensor[B, P]`` long, starting with ``BOS``, right-padded with ``PAD``.
        prompt_lengths: ``Tensor[B]`` number of prompt tokens (including ``BOS``).
        answers: ``Tensor[B, L]`` the correct responses including ``EOS``, right-padded with ``PAD``.
        answer_lengths: ``Tensor[B]`` number of answer tokens (including ``EOS``).
        difficulty: ``Tensor[B]`` the difficulty :math:`n` of each instance.
    """

    kind: str
    prompts: Tensor
    prompt_lengths: Tensor
    answers: Tensor
    answer_lengths: Tensor
    difficulty: Tensor

    def __len__(self) -> int:
        return int(self.prompts.shape[0])

    def repeat_interleave(self, repeats: int) -> Problems:
        """Each instance ``repeats`` times in a row (a GRPO group of ``repeats`` responses)."""
        return Problems(
            self.kind,
            *(t.repeat_interleave(repeats, dim=0) for t in (self.prompts, self.prompt_lengths)),
            *(t.repeat_interleave(repeats, dim=0) for t in (self.answers, self.answer_lengths, self.difficulty)),
        )

    def select(self, index: Tensor) -> Problems:
        """The instances at ``index`` (a ``Tensor[K]`` of positions or a ``Tensor[B]`` bool mask)."""
        return Problems(
            self.kind,
            self.prompts[index],
            self.prompt_lengths[index],
            self.answers[index],
            self.answer_lengths[index],
            self.difficulty[index],
        )


def _pad_rows(rows: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    out = torch.full((len(rows), int(lengths.max()) if len(rows) else 0), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out, lengths


def _check_difficulty(difficulty: Tensor) -> None:
    if difficulty.numel() and (int(difficulty.min()) < 1 or int(difficulty.max()) > MAX_DIFFICULTY):
        raise ValueError(
            f"difficulty must be in [1, {MAX_DIFFICULTY}], got values in "
            f"[{int(difficulty.min())}, {int(difficulty.max())}]"
        )


def sample_problems(
    kind: str,
    difficulty: int | Sequence[int] | Tensor,
    n: int | None = None,
    *,
    generator: torch.Generator,
) -> Problems:
    """Sample task instances with uniformly random digits.

    Args:
        kind: ``"copy"``, ``"reverse"`` or ``"add"``.
        difficulty: one difficulty for all ``n`` instances, or a ``Tensor[B]`` / sequence with
            one difficulty per instance (then ``n`` must be omitted or equal ``B``).
        n: number of instances when ``difficulty`` is a single int.
        generator: the source of randomness (sampling is deterministic given its state).
    """
    if kind not in TASK_KINDS:
        raise ValueError(f"kind must be one of {TASK_KINDS}, got {kind!r}")
    if isinstance(difficulty, int) and not isinstance(difficulty, bool):
        if n is None or n < 0:
            raise ValueError(f"n must be a non-negative int when difficulty is an int, got {n!r}")
        levels = torch.full((n,), difficulty, dtype=torch.long)
    else:
        levels = torch.as_tensor(difficulty)
        if levels.ndim != 1 or levels.dtype.is_floating_point or levels.dtype == torch.bool:
            raise ValueError(f"difficulty must be an int or a 1-d integer tensor, got {difficulty!r}")
        if n is not None and n != levels.numel():
            raise ValueError(f"n = {n} does not match the {levels.numel()} difficulties given")
        levels = levels.long()
    _check_difficulty(levels)

    prompts: list[list[int]] = []
    answers: list[list[int]] = []
    for level in levels.tolist():
        if kind == "add":
            a, b = torch.randint(0, 10, (2, level), generator=generator).tolist()
            digits, carry = [], 0
            for x, y in zip(a, b, strict=True):
                carry, digit = divmod(x + y + carry, 10)
                digits.append(digit)
            prompts.append([BOS, *a, PLUS, *b, EQUALS])
            answers.append([*digits, carry, EOS])
        else:
            d = torch.randint(0, 10, (level,), generator=generator).tolist()
            prompts.append([BOS, *d, SEP])
            answers.append([*(d if kind == "copy" else d[::-1]), EOS])
    prompt_tensor, prompt_lengths = _pad_rows(prompts)
    answer_tensor, answer_lengths = _pad_rows(answers)
    return Problems(kind, prompt_tensor, prompt_lengths, answer_tensor, answer_lengths, levels)


@dataclass(frozen=True)
class Task:
    """A task kind at a fixed difficulty; ``task.sample(n, generator)`` draws instances."""

    kind: str = "reverse"
    difficulty: int = 4

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"kind must be one of {TASK_KINDS}, got {self.kind!r}")
        _check_difficulty(torch.tensor([self.difficulty]))

    def sample(self, n: int, generator: torch.Generator) -> Problems:
        return sample_problems(self.kind, self.difficulty, n, generator=generator)

    def max_answer_length(self) -> int:
        """Tokens in an answer including ``EOS``."""
        return self.difficulty + (2 if self.kind == "add" else 1)


#: ``sampler(step, n, generator) -> Problems``: where the trainers get prompts from (curricula).
ProblemSampler = Callable[[int, int, torch.Generator], Problems]

#: ``reward(problems, rollout) -> Tensor[B]``: one scalar reward per response.
RewardFn = Callable[[Problems, "Rollout"], Tensor]


def as_sampler(task: Task | ProblemSampler) -> ProblemSampler:
    """A :class:`Task` as a :data:`ProblemSampler` that ignores the step; samplers pass through."""
    if isinstance(task, Task):
        return lambda step, n, generator: task.sample(n, generator)
    if callable(task):
        return task
    raise TypeError(f"task must be a Task or a callable (step, n, generator) -> Problems, got {type(task).__name__}")


def _check_pairing(problems: Problems, rollout: Rollout) -> None:
    if len(problems) != rollout.responses.shape[0]:
        raise ValueError(
            f"problems and rollout must have the same batch size, got {len(problems)} and {rollout.responses.shape[0]}"
        )


def correctness_reward(problems: Problems, rollout: Rollout) -> Tensor:
    """1.0 where the response equals the answer token for token (``EOS`` included), else 0.0."""
    _check_pairing(problems, rollout)
    responses, answers = rollout.responses, problems.answers
    width = max(responses.shape[1], answers.shape[1])
    responses = torch.nn.functional.pad(responses, (0, width - responses.shape[1]), value=PAD)
    answers = torch.nn.functional.pad(answers, (0, width - answers.shape[1]), value=PAD)
    return (responses == answers).all(dim=1).float()


def format_reward(problems: Problems, rollout: Rollout) -> Tensor:
    """1.0 where the response is digits then ``EOS`` (well formed, whatever the digits), else 0.0."""
    _check_pairing(problems, rollout)
    steps = torch.arange(rollout.responses.shape[1])
    body = steps[None, :] < (rollout.response_lengths - 1)[:, None]
    digits_only = torch.where(body, rollout.responses < 10, True).all(dim=1)
    return (rollout.terminated & digits_only & (rollout.response_lengths > 1)).float()


def length_reward(problems: Problems, rollout: Rollout) -> Tensor:
    r"""Brevity: :math:`-|y| / L_{\max}` with :math:`|y|` the response length (``EOS`` included).

    It competes with correctness, which needs the full answer length.
    """
    _check_pairing(problems, rollout)
    return -rollout.response_lengths.float() / rollout.max_new_tokens


def weighted_reward(weights: dict[str, float], rewards: dict[str, RewardFn] | None = None) -> RewardFn:
    r"""The reward :math:`\sum_k w_k R_k(x, y)`; ``rewards`` defaults to the three built-in ones.

    ``weights`` maps a name in ``rewards`` (``"correctness"``, ``"format"``, ``"length"``) to its
    weight; every weight must be a finite number.
    """
    table = REWARDS if rewards is None else rewards
    for name, w in weights.items():
        if name not in table:
            raise ValueError(f"weights names unknown reward {name!r}; known: {sorted(table)}")
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not torch.isfinite(torch.tensor(float(w))):
            raise ValueError(f"weights[{name!r}] must be a finite number, got {w!r}")

    def reward(problems: Problems, rollout: Rollout) -> Tensor:
        total = torch.zeros(len(problems))
        for name, w in weights.items():
            total = total + w * table[name](problems, rollout)
        return total

    return reward


REWARDS: dict[str, RewardFn] = {
    "correctness": correctness_reward,
    "format": format_reward,
    "length": length_reward,
}


def render(tokens: Tensor | Sequence[int]) -> str:
    """Human-readable text of a token row, stopping at the first ``PAD``."""
    out = []
    for t in torch.as_tensor(tokens).tolist():
        if t == PAD:
            break
        out.append(TOKEN_NAMES[t] if t >= 10 else str(t))
    return " ".join(out)
