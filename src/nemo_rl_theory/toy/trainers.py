r"""SFT, DPO and GRPO training loops for the toy policy, built on the library's losses unchanged.

Every loop is seeded (one ``torch.Generator`` for prompts and samples) and returns its history as
columns, ``{"loss": [...], ...}``, one entry per optimizer step. Hooks let the advanced pages swap
one piece at a time: the prompt sampler (curricula), the reward (custom rewards), the loss (custom
losses), a batch filter (dynamic sampling), the learning-rate schedule and gradient clipping.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

import torch
from torch import Tensor, nn
from torch.optim.adam import adam as adam_update

from nemo_rl_theory.advantages import grpo_advantages
from nemo_rl_theory.logprobs import entropy_from_logits, token_logprobs
from nemo_rl_theory.losses import ClippedPGConfig, DPOConfig, clipped_pg_loss, dpo_loss, nll_loss
from nemo_rl_theory.masking import masked_mean
from nemo_rl_theory.toy.policy import (
    Rollout,
    ToyPolicy,
    frozen_copy,
    generate,
    join_prompt_response,
    make_policy,
    next_token_logits,
    sequence_logprobs,
)
from nemo_rl_theory.toy.tasks import (
    Problems,
    ProblemSampler,
    RewardFn,
    Task,
    as_sampler,
    correctness_reward,
    format_reward,
)

History = dict[str, list[float]]
#: ``schedule(step) -> multiplier`` of the base learning rate (like ``LambdaLR``'s ``lr_lambda``).
LRSchedule = Callable[[int], float]


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_lr(lr: object) -> None:
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not (0 < lr < math.inf):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")


class _Adam:
    """``torch.optim.Adam(params, lr)`` with the state kept here and the update done by
    ``torch.optim.adam.adam``, the function ``Adam.step`` itself calls: the same numbers, bit for
    bit (tests/test_toy.py). Constructing ``torch.optim.Adam`` imports ``torch._dynamo`` (its
    ``add_param_group`` is wrapped in ``torch._disable_dynamo``), about 0.9 s that a page training
    the toy in a fresh kernel would otherwise pay before its first step.
    """

    def __init__(self, params: list[nn.Parameter], lr: float) -> None:
        self.params = params
        self.param_groups = [{"lr": lr}]
        self.state = {
            id(param): {
                "step": torch.tensor(0.0),
                "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
            }
            for param in params
        }

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        live = [param for param in self.params if param.grad is not None]  # Adam skips the others
        states = [self.state[id(param)] for param in live]
        adam_update(
            live,
            [param.grad for param in live],
            [state["exp_avg"] for state in states],
            [state["exp_avg_sq"] for state in states],
            [],
            [state["step"] for state in states],
            amsgrad=False,
            beta1=0.9,
            beta2=0.999,
            lr=self.param_groups[0]["lr"],
            weight_decay=0.0,
            eps=1e-8,
            maximize=False,
        )


def _optimizer_step(
    policy: nn.Module,
    optimizer: _Adam,
    loss: Tensor,
    *,
    step: int,
    lr: float,
    lr_schedule: LRSchedule | None,
    max_grad_norm: float | None,
) -> dict[str, float]:
    """Backward, a finiteness check, optional global-norm clipping, scheduled learning rate, update.

    A non-finite loss, or a finite loss whose gradient holds NaN/inf (e.g. ``sqrt`` at 0), raises
    ``FloatingPointError`` before the update, so parameters and optimizer state are untouched.
    """
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {float(loss.detach())} at step {step}; lower lr or enable max_grad_norm")
    current_lr = lr * (1.0 if lr_schedule is None else float(lr_schedule(step)))
    for group in optimizer.param_groups:
        group["lr"] = current_lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for p in policy.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else None
    if norm is not None and not torch.isfinite(norm):
        raise FloatingPointError(
            f"gradient norm is {float(norm)} at step {step} although the loss ({float(loss.detach())}) is finite; "
            "the update was not applied"
        )
    if norm is not None and max_grad_norm is not None:
        # torch.nn.utils.clip_grad_norm_'s rule: scale by max_norm / (norm + 1e-6) when that is < 1.
        coefficient = torch.clamp(max_grad_norm / (norm + 1e-6), max=1.0)
        for g in grads:
            g.mul_(coefficient)
    optimizer.step()
    return {"grad_norm": 0.0 if norm is None else float(norm), "lr": current_lr}


def _append(history: History, metrics: dict[str, float]) -> None:
    for key, value in metrics.items():
        history.setdefault(key, []).append(float(value))


# ----------------------------------------------------------------------------- evaluation


def evaluate(
    policy: nn.Module,
    task: Task | Problems,
    *,
    n: int = 256,
    seed: int = 12345,
    greedy: bool = True,
    temperature: float = 1.0,
) -> dict[str, float]:
    """Pass rate, format rate and mean response length on ``n`` fresh instances (or given ones).

    Greedy decoding by default, so the result is a deterministic function of the weights.
    """
    generator = torch.Generator().manual_seed(seed)
    problems = task if isinstance(task, Problems) else task.sample(n, generator)
    rollout = generate(policy, problems, generator=generator, greedy=greedy, temperature=temperature)
    return {
        "pass_rate": float(correctness_reward(problems, rollout).mean()),
        "format_rate": float(format_reward(problems, rollout).mean()),
        "mean_length": float(rollout.response_lengths.float().mean()),
    }


def heldout_nll(policy: nn.Module, task: Task, *, n: int = 256, seed: int = 12345) -> float:
    """Token-level NLL of the reference answers on ``n`` fresh instances (no gradient)."""
    problems = task.sample(n, torch.Generator().manual_seed(seed))
    tokens, mask = join_prompt_response(problems, problems.answers, problems.answer_lengths)
    with torch.no_grad():
        loss, _ = nll_loss(sequence_logprobs(policy, tokens), mask)
    return float(loss)


# ----------------------------------------------------------------------------- SFT


def train_sft(
    policy: nn.Module,
    task: Task | ProblemSampler,
    *,
    steps: int = 150,
    batch_size: int = 64,
    lr: float = 1e-2,
    seed: int = 0,
    max_grad_norm: float | None = 1.0,
    lr_schedule: LRSchedule | None = None,
) -> History:
    """Teacher-forced SFT on the reference answers with :func:`~nemo_rl_theory.losses.nll.nll_loss`.

    Each step draws ``batch_size`` fresh instances, so the loss is an unbiased estimate of the
    population NLL (no overfitting to a fixed set).
    """
    _check_positive_int("steps", steps)
    _check_positive_int("batch_size", batch_size)
    _check_lr(lr)
    sampler = as_sampler(task)
    generator = torch.Generator().manual_seed(seed)
    optimizer = _Adam(list(policy.parameters()), lr=lr)
    history: History = {}
    for step in range(steps):
        problems = sampler(step, batch_size, generator)
        tokens, mask = join_prompt_response(problems, problems.answers, problems.answer_lengths)
        loss, metrics = nll_loss(sequence_logprobs(policy, tokens), mask)
        update = _optimizer_step(
            policy, optimizer, loss, step=step, lr=lr, lr_schedule=lr_schedule, max_grad_norm=max_grad_norm
        )
        _append(history, {"loss": metrics["loss"], **update})
    return history


@lru_cache(maxsize=16)
def _sft_state(kind: str, difficulty: int, steps: int, seed: int) -> dict[str, Tensor]:
    policy = make_policy(seed)
    train_sft(policy, Task(kind, difficulty), steps=steps, seed=seed)
    return {k: v.clone() for k, v in policy.state_dict().items()}


def sft_policy(task: Task, *, steps: int = 100, seed: int = 0) -> ToyPolicy:
    """A fresh policy after ``steps`` of :func:`train_sft` on ``task``: the usual RL starting point.

    The weights are cached per process, so pages and tests that start several runs from the same
    checkpoint pay for the SFT once; every call returns an independent copy.
    """
    _check_positive_int("steps", steps)
    policy = make_policy(seed)
    policy.load_state_dict(_sft_state(task.kind, task.difficulty, steps, seed))
    return policy


# ----------------------------------------------------------------------------- DPO


@dataclass(frozen=True)
class PreferencePairs:
    """Chosen/rejected responses to the same prompts, as teacher-forced sequences.

    ``*_tokens: Tensor[P, T]`` and ``*_mask: Tensor[P, T-1]`` (1 on response tokens); the two sides
    may have different lengths ``T``.
    """

    chosen_tokens: Tensor
    chosen_mask: Tensor
    rejected_tokens: Tensor
    rejected_mask: Tensor

    def __len__(self) -> int:
        return int(self.chosen_tokens.shape[0])

    def select(self, index: Tensor) -> PreferencePairs:
        sides = (self.chosen_tokens, self.chosen_mask, self.rejected_tokens, self.rejected_mask)
        return PreferencePairs(*(t[index] for t in sides))


def build_preference_pairs(
    policy: nn.Module,
    task: Task,
    *,
    n_prompts: int = 256,
    samples_per_prompt: int = 4,
    seed: int = 0,
) -> PreferencePairs:
    """Preference pairs labelled by the task's verifier.

    For each prompt, ``samples_per_prompt`` responses are sampled from ``policy``. The rejected
    response is the first incorrect sample; the chosen one is a correct response: the reference
    answer, which every correct sample equals token for token. Prompts whose samples are all correct give no
    pair (there is nothing to reject), so ``len(pairs) <= n_prompts``.
    """
    _check_positive_int("n_prompts", n_prompts)
    _check_positive_int("samples_per_prompt", samples_per_prompt)
    generator = torch.Generator().manual_seed(seed)
    problems = task.sample(n_prompts, generator)
    grouped = problems.repeat_interleave(samples_per_prompt)
    rollout = generate(policy, grouped, generator=generator)
    correct = correctness_reward(grouped, rollout).view(n_prompts, samples_per_prompt).bool()
    has_wrong = (~correct).any(dim=1)
    first_wrong = (~correct).float().argmax(dim=1)
    base = torch.arange(n_prompts) * samples_per_prompt
    keep = has_wrong.nonzero()[:, 0]

    rejected_rows = (base + first_wrong)[keep]
    rejected = join_prompt_response(
        grouped.select(rejected_rows), rollout.responses[rejected_rows], rollout.response_lengths[rejected_rows]
    )
    # A correct sample equals the reference answer token for token, so the answer is the chosen
    # response whether or not a sample found it.
    kept = problems.select(keep)
    chosen = join_prompt_response(kept, kept.answers, kept.answer_lengths)
    return PreferencePairs(chosen[0], chosen[1], rejected[0], rejected[1])


def _pair_logprobs(policy: nn.Module, pairs: PreferencePairs) -> tuple[Tensor, Tensor]:
    return sequence_logprobs(policy, pairs.chosen_tokens), sequence_logprobs(policy, pairs.rejected_tokens)


def preference_metrics(
    policy: nn.Module, reference: nn.Module, pairs: PreferencePairs, *, config: DPOConfig | None = None
) -> dict[str, float]:
    """:func:`~nemo_rl_theory.losses.dpo.dpo_loss` metrics on all ``pairs`` plus ``reward_margin``."""
    with torch.no_grad():
        chosen, rejected = _pair_logprobs(policy, pairs)
        ref_chosen, ref_rejected = _pair_logprobs(reference, pairs)
        _, metrics = dpo_loss(
            chosen, rejected, ref_chosen, ref_rejected, pairs.chosen_mask, pairs.rejected_mask, config=config
        )
    return {**metrics, "reward_margin": metrics["rewards_chosen_mean"] - metrics["rewards_rejected_mean"]}


def train_dpo(
    policy: nn.Module,
    pairs: PreferencePairs,
    *,
    reference: nn.Module | None = None,
    steps: int = 60,
    batch_size: int = 64,
    lr: float = 1e-3,
    config: DPOConfig | None = None,
    seed: int = 0,
    max_grad_norm: float | None = 1.0,
    lr_schedule: LRSchedule | None = None,
) -> History:
    """Offline DPO over a fixed pair set with :func:`~nemo_rl_theory.losses.dpo.dpo_loss`.

    ``reference`` defaults to a frozen copy of ``policy`` as it is on entry. Each step uses a
    random minibatch of ``batch_size`` pairs. The history has the loss's metrics per step plus
    ``reward_margin`` = mean implicit reward of chosen minus rejected (in nats, before β).
    """
    _check_positive_int("steps", steps)
    _check_positive_int("batch_size", batch_size)
    _check_lr(lr)
    if len(pairs) == 0:
        raise ValueError("pairs is empty: the policy answered every prompt correctly; sample more prompts")
    reference = frozen_copy(policy) if reference is None else reference
    with torch.no_grad():
        ref_chosen, ref_rejected = _pair_logprobs(reference, pairs)
    generator = torch.Generator().manual_seed(seed)
    optimizer = _Adam(list(policy.parameters()), lr=lr)
    history: History = {}
    for step in range(steps):
        index = torch.randperm(len(pairs), generator=generator)[:batch_size]
        batch = pairs.select(index)
        chosen, rejected = _pair_logprobs(policy, batch)
        loss, metrics = dpo_loss(
            chosen,
            rejected,
            ref_chosen[index],
            ref_rejected[index],
            batch.chosen_mask,
            batch.rejected_mask,
            config=config,
        )
        update = _optimizer_step(
            policy, optimizer, loss, step=step, lr=lr, lr_schedule=lr_schedule, max_grad_norm=max_grad_norm
        )
        margin = metrics["rewards_chosen_mean"] - metrics["rewards_rejected_mean"]
        _append(history, {**metrics, "reward_margin": margin, **update})
    return history


# ----------------------------------------------------------------------------- GRPO


@dataclass(frozen=True)
class GRPOBatch:
    """One GRPO rollout batch: ``N = prompts × group_size`` responses, groups contiguous.

    Attributes:
        problems: the instances, each repeated ``group_size`` times.
        rollout: the sampled responses (``rollout.logprobs`` are the generation log-probs).
        prompt_ids: ``Tensor[N]`` group index of each response.
        rewards: ``Tensor[N]`` from the reward function.
        correct: ``Tensor[N]`` the verifier's 0/1 verdict (the pass rate, whatever the reward).
        advantages: ``Tensor[N]`` from :func:`~nemo_rl_theory.advantages.grpo_advantages`.
        reference_logprobs: ``Tensor[N, T-1]`` of the frozen reference, or ``None``.
    """

    problems: Problems
    rollout: Rollout
    prompt_ids: Tensor
    rewards: Tensor
    correct: Tensor
    advantages: Tensor
    reference_logprobs: Tensor | None

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    def select(self, rows: Tensor) -> GRPOBatch:
        """The responses at ``rows`` (keep whole groups to keep the advantages meaningful)."""
        r = self.rollout
        rollout = replace(
            r,
            tokens=r.tokens[rows],
            mask=r.mask[rows],
            logprobs=r.logprobs[rows],
            responses=r.responses[rows],
            response_lengths=r.response_lengths[rows],
            terminated=r.terminated[rows],
        )
        ref = None if self.reference_logprobs is None else self.reference_logprobs[rows]
        return GRPOBatch(
            self.problems.select(rows),
            rollout,
            self.prompt_ids[rows],
            self.rewards[rows],
            self.correct[rows],
            self.advantages[rows],
            ref,
        )


#: ``loss_fn(logprobs: Tensor[N, T-1], batch) -> (loss, metrics)``: the GRPO trainer's plug-in point.
LossFn = Callable[[Tensor, GRPOBatch], "tuple[Tensor, dict[str, float]]"]


def collect_grpo_batch(
    policy: nn.Module,
    problems: Problems,
    *,
    group_size: int,
    generator: torch.Generator,
    reward_fn: RewardFn = correctness_reward,
    reference: nn.Module | None = None,
    use_leave_one_out_baseline: bool = True,
    normalize_rewards: bool = True,
    temperature: float = 1.0,
    max_new_tokens: int | None = None,
) -> GRPOBatch:
    """Sample ``group_size`` responses per prompt, score them and compute group advantages."""
    _check_positive_int("group_size", group_size)
    grouped = problems.repeat_interleave(group_size)
    rollout = generate(policy, grouped, generator=generator, temperature=temperature, max_new_tokens=max_new_tokens)
    rewards = reward_fn(grouped, rollout)
    if rewards.shape != (len(grouped),):
        raise ValueError(f"reward_fn must return Tensor[N] with N = {len(grouped)}, got {list(rewards.shape)}")
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("reward_fn returned NaN or inf rewards")
    prompt_ids = torch.arange(len(problems)).repeat_interleave(group_size)
    advantages = grpo_advantages(
        rewards,
        prompt_ids,
        use_leave_one_out_baseline=use_leave_one_out_baseline,
        normalize_rewards=normalize_rewards,
    )
    reference_logprobs = None
    if reference is not None:
        with torch.no_grad():
            reference_logprobs = sequence_logprobs(reference, rollout.tokens, temperature=temperature)
    return GRPOBatch(
        grouped,
        rollout,
        prompt_ids,
        rewards.float(),
        correctness_reward(grouped, rollout),
        advantages.float(),
        reference_logprobs,
    )


def clipped_pg_objective(config: ClippedPGConfig | None = None) -> LossFn:
    """The default GRPO loss: :func:`~nemo_rl_theory.losses.clipped_pg.clipped_pg_loss` on a :class:`GRPOBatch`.

    ``prev_logprobs`` are the generation log-probs (one update per rollout, so the ratio is 1 up
    to rounding) and each response's advantage is broadcast over its tokens.
    """

    def loss_fn(logprobs: Tensor, batch: GRPOBatch) -> tuple[Tensor, dict[str, float]]:
        return clipped_pg_loss(
            logprobs,
            batch.rollout.logprobs,
            batch.advantages[:, None].expand_as(logprobs),
            batch.rollout.mask,
            config=config,
            reference_logprobs=batch.reference_logprobs,
        )

    return loss_fn


def zero_advantage_fraction(batch: GRPOBatch) -> float:
    """Fraction of groups whose rewards are all equal (they carry no policy-gradient signal)."""
    n_groups = int(batch.prompt_ids.max()) + 1 if len(batch) else 0
    if n_groups == 0:
        return 0.0
    high = torch.full((n_groups,), -math.inf).scatter_reduce(0, batch.prompt_ids, batch.rewards, "amax")
    low = torch.full((n_groups,), math.inf).scatter_reduce(0, batch.prompt_ids, batch.rewards, "amin")
    present = torch.isfinite(high)
    return float(((high == low) & present).sum() / present.sum())


def train_grpo(
    policy: nn.Module,
    task: Task | ProblemSampler,
    *,
    steps: int = 100,
    prompts_per_step: int = 32,
    group_size: int = 8,
    lr: float = 3e-3,
    config: ClippedPGConfig | None = None,
    loss_fn: LossFn | None = None,
    reward_fn: RewardFn = correctness_reward,
    reference: nn.Module | None = None,
    seed: int = 0,
    max_grad_norm: float | None = 1.0,
    lr_schedule: LRSchedule | None = None,
    batch_filter: Callable[[GRPOBatch], GRPOBatch] | None = None,
    use_leave_one_out_baseline: bool = True,
    normalize_rewards: bool = True,
    temperature: float = 1.0,
) -> History:
    """GRPO: group sampling, :func:`~nemo_rl_theory.advantages.grpo_advantages`, one clipped update.

    ``reference`` (for the KL term) defaults to a frozen copy of ``policy`` on entry; it is only
    evaluated when the loss needs it (``config.reference_policy_kl_penalty > 0`` or a custom
    ``loss_fn``). ``loss_fn`` defaults to :func:`clipped_pg_objective` of ``config``.
    ``batch_filter`` may drop responses (e.g. zero-advantage groups); an empty result skips the
    update. History per step: ``loss``, ``reward_mean``, ``pass_rate`` (verifier, sampled),
    ``response_length``, ``zero_advantage_fraction``, ``entropy``, ``kl_penalty``,
    ``clip_fraction``, ``grad_norm``, ``lr``, ``kept_fraction``.
    """
    _check_positive_int("steps", steps)
    _check_positive_int("prompts_per_step", prompts_per_step)
    _check_lr(lr)
    config = ClippedPGConfig() if config is None else config
    objective = clipped_pg_objective(config) if loss_fn is None else loss_fn
    needs_reference = loss_fn is not None or config.reference_policy_kl_penalty > 0
    if needs_reference and reference is None:
        reference = frozen_copy(policy)
    sampler = as_sampler(task)
    generator = torch.Generator().manual_seed(seed)
    optimizer = _Adam(list(policy.parameters()), lr=lr)
    history: History = {}
    for step in range(steps):
        problems = sampler(step, prompts_per_step, generator)
        batch = collect_grpo_batch(
            policy,
            problems,
            group_size=group_size,
            generator=generator,
            reward_fn=reward_fn,
            reference=reference if needs_reference else None,
            use_leave_one_out_baseline=use_leave_one_out_baseline,
            normalize_rewards=normalize_rewards,
            temperature=temperature,
        )
        record = {
            "reward_mean": float(batch.rewards.mean()),
            "pass_rate": float(batch.correct.mean()),
            "response_length": float(batch.rollout.response_lengths.float().mean()),
            "zero_advantage_fraction": zero_advantage_fraction(batch),
        }
        size = len(batch)
        if batch_filter is not None:
            batch = batch_filter(batch)
        record["kept_fraction"] = len(batch) / size
        if len(batch) == 0:
            nothing = {"loss": 0.0, "entropy": math.nan, "kl_penalty": 0.0, "clip_fraction": 0.0}
            _append(history, {**record, **nothing, "grad_norm": 0.0, "lr": history.get("lr", [lr])[-1]})
            continue
        logits = next_token_logits(policy, batch.rollout.tokens, temperature=temperature)
        logprobs = token_logprobs(logits, batch.rollout.tokens[:, 1:])
        loss, metrics = objective(logprobs, batch)
        with torch.no_grad():
            entropy = float(masked_mean(entropy_from_logits(logits.detach()), batch.rollout.mask))
        update = _optimizer_step(
            policy, optimizer, loss, step=step, lr=lr, lr_schedule=lr_schedule, max_grad_norm=max_grad_norm
        )
        record.update(
            loss=float(loss.detach()),
            entropy=entropy,
            kl_penalty=metrics.get("kl_penalty", 0.0),
            clip_fraction=metrics.get("clip_fraction", 0.0),
        )
        _append(history, {**record, **update})
    return history
