r"""Curricula over task difficulty: fixed competence schedules and success-rate-driven sampling.

A curriculum decides, at every optimizer step, from which difficulty levels the prompts are drawn.
The levels are an increasing sequence of task difficulties :math:`d_1 < \dots < d_L` (for the toy
tasks, e.g. ``(1, 2, 3, 4, 5, 6)`` digits).

**Fixed schedules** (Bengio et al. 2009; the competence form of Platanios et al. 2019). A schedule
maps the step :math:`t` to a *competence* :math:`c(t) \in (0, 1]`; the levels :math:`k` with
:math:`k / L \le c(t)` are unlocked, so the hardest unlocked level is
:math:`m(t) = \max(1, \lfloor c(t) L \rfloor)`:

* :func:`linear_competence`: :math:`c(t) = \min\big(1,\ c_0 + (1 - c_0)\,t / T\big)`;
* :func:`root_competence`: :math:`c(t) = \min\big(1,\ (t (1 - c_0^p) / T + c_0^p)^{1/p}\big)`
  (``power`` :math:`p = 2`: the square-root schedule, which unlocks the easy levels fast and
  slows down on the hard ones);
* :func:`staircase_competence`: :math:`K` constant stages,
  :math:`c(t) = \min\big(1,\ c_0 + (1 - c_0) \lfloor K t / T \rfloor / (K - 1)\big)`.

Among the unlocked levels, :func:`level_probabilities` mixes the frontier with uniform replay,
:math:`P(k) = \rho / m + (1 - \rho)\,[k = m]` for :math:`k \le m`, and :func:`curriculum_sampler`
turns all this into the toy trainers' ``ProblemSampler``.

**Adaptive sampling** (Graves et al. 2017; Kimi k1.5's prioritized sampling; DAPO's dynamic
sampling). :class:`SuccessRateTracker` keeps an exponential moving average :math:`\hat p_k` of the
policy's success rate per level, :func:`success_rate_weights` turns it into sampling weights
(proportional to :math:`1 - p`, to :math:`p(1-p)` or to the probability
:func:`informative_group_probability` :math:`= 1 - p^G - (1-p)^G` that a GRPO group of :math:`G`
binary rewards is not constant) with a temperature and a floor, and
:func:`filter_zero_advantage_groups` drops the constant groups, which carry exactly zero advantage.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from nemo_rl_theory._validation import require_bool, require_number, require_tensor
from nemo_rl_theory.advantages import grpo_advantages
from nemo_rl_theory.toy.tasks import MAX_DIFFICULTY, TASK_KINDS, Problems, ProblemSampler, sample_problems
from nemo_rl_theory.toy.trainers import GRPOBatch

#: ``schedule(step) -> competence in (0, 1]``, e.g. ``functools.partial(root_competence, total_steps=200)``.
CompetenceSchedule = Callable[[int], float]

#: The success-rate scores :func:`success_rate_weights` knows.
WEIGHT_SCHEMES: tuple[str, ...] = ("informative", "variance", "failure", "uniform")

# Competences are compared with level boundaries k / L; this slack makes c = k / L computed in
# floating point (e.g. 0.1 * 3 * 10) unlock level k instead of falling just short of it.
_LEVEL_SLACK = 1e-9


# ----------------------------------------------------------------------------- validation helpers


def _require_int(name: str, value: object, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _check_schedule_args(step: object, total_steps: object, initial: object) -> tuple[int, int, float]:
    step = _require_int("step", step, low=0)
    total_steps = _require_int("total_steps", total_steps, low=1)
    require_number("initial", initial, low=0.0, high=1.0, low_inclusive=False)
    return step, total_steps, float(initial)


def _check_levels(levels: object) -> tuple[int, ...]:
    if isinstance(levels, Tensor):
        levels = levels.tolist()
    if not isinstance(levels, Sequence) or isinstance(levels, str) or len(levels) == 0:
        raise ValueError(f"levels must be a non-empty sequence of difficulties, got {levels!r}")
    out = []
    for d in levels:
        if isinstance(d, bool) or not isinstance(d, int):
            raise TypeError(f"levels must hold ints, got {d!r} ({type(d).__name__})")
        out.append(d)
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError(f"levels must be strictly increasing, got {out}")
    if out[0] < 1 or out[-1] > MAX_DIFFICULTY:
        raise ValueError(f"levels must be difficulties in [1, {MAX_DIFFICULTY}], got {out}")
    return tuple(out)


def _check_kind(kind: object) -> str:
    if kind not in TASK_KINDS:
        raise ValueError(f"kind must be one of {TASK_KINDS}, got {kind!r}")
    return str(kind)


def _check_rates(name: str, rates: object) -> Tensor:
    t = require_tensor(name, rates)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of probabilities, got dtype {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got NaN or inf")
    if t.numel() and (bool((t < 0).any()) or bool((t > 1).any())):
        raise ValueError(f"{name} must lie in [0, 1], got values in [{float(t.min()):g}, {float(t.max()):g}]")
    return t


# ----------------------------------------------------------------------------- fixed schedules


def linear_competence(step: int, *, total_steps: int, initial: float = 0.1) -> float:
    r"""Linear ramp :math:`c(t) = \min\big(1,\ c_0 + (1 - c_0)\,t/T\big)`; full competence at :math:`t = T`.

    Args:
        step: the optimizer step :math:`t \ge 0`.
        total_steps: :math:`T`, the step at which every level is unlocked (not necessarily the
            length of the run: with :math:`T` equal to the run length the hardest level is
            reached only at the very end).
        initial: :math:`c_0 \in (0, 1]`, the competence at step 0.
    """
    step, total_steps, c0 = _check_schedule_args(step, total_steps, initial)
    return min(1.0, c0 + (1.0 - c0) * step / total_steps)


def root_competence(step: int, *, total_steps: int, initial: float = 0.1, power: float = 2.0) -> float:
    r"""Root schedule :math:`c(t) = \min\big(1,\ (t\,(1 - c_0^p)/T + c_0^p)^{1/p}\big)` (Platanios et al. 2019).

    :math:`c^p` grows linearly from :math:`c_0^p` to 1, so the level boundary :math:`k/L` is
    crossed at :math:`t_k = T\,((k/L)^p - c_0^p) / (1 - c_0^p)`: the gaps grow with :math:`k`, more
    steps are spent at the hard levels than under the linear ramp (``power = 1``).

    Args:
        step: the optimizer step :math:`t \ge 0`.
        total_steps: :math:`T`, the step at which :math:`c = 1`.
        initial: :math:`c_0 \in (0, 1]`.
        power: :math:`p > 0`; 2 is the square-root schedule.
    """
    step, total_steps, c0 = _check_schedule_args(step, total_steps, initial)
    require_number("power", power, low=0.0, low_inclusive=False)
    p = float(power)
    c0p = c0**p
    return min(1.0, (step * (1.0 - c0p) / total_steps + c0p) ** (1.0 / p))


def staircase_competence(step: int, *, total_steps: int, num_stages: int, initial: float = 0.1) -> float:
    r"""Staircase :math:`c(t) = \min\big(1,\ c_0 + (1 - c_0)\,\lfloor K t / T \rfloor / (K - 1)\big)`.

    :math:`K` stages of :math:`T/K` steps each; the last stage (from :math:`t = T (K-1)/K`) has full
    competence. With :math:`K = L` levels and :math:`c_0 = 1/L`, stage :math:`j` unlocks exactly
    level :math:`j + 1`. ``num_stages = 1`` is full competence from the start.
    """
    step, total_steps, c0 = _check_schedule_args(step, total_steps, initial)
    num_stages = _require_int("num_stages", num_stages, low=1)
    if num_stages == 1:
        return 1.0
    stage = (num_stages * step) // total_steps
    return min(1.0, c0 + (1.0 - c0) * stage / (num_stages - 1))


def max_unlocked_level(competence: float, num_levels: int) -> int:
    r"""The hardest unlocked level :math:`m = \max(1, \lfloor c L \rfloor)` (1-based), for :math:`c \in (0, 1]`.

    Level :math:`k` is unlocked once the competence covers its share of the levels,
    :math:`k / L \le c` (the difficulty CDF of Platanios et al. with equally many prompts per
    level); the easiest level is always available.
    """
    # A schedule that rounds to 1 + 2e-16 at its end is still at full competence.
    require_number("competence", competence, low=0.0, high=1.0 + _LEVEL_SLACK, low_inclusive=False)
    num_levels = _require_int("num_levels", num_levels, low=1)
    return max(1, min(num_levels, math.floor(float(competence) * num_levels + _LEVEL_SLACK)))


def level_probabilities(max_level: int, num_levels: int, *, replay: float = 1.0) -> Tensor:
    r"""``Tensor[L]`` (float64): :math:`P(k) = \rho/m + (1 - \rho)\,[k = m]` for :math:`k \le m`, else 0.

    A mixture of the *frontier* level :math:`m` (weight :math:`1 - \rho`) and uniform *replay* of
    all unlocked levels (weight :math:`\rho`). ``replay = 1`` is uniform over the unlocked levels
    (the baby-steps curriculum); ``replay = 0`` trains on the frontier alone, which forgets the
    easy levels.

    Args:
        max_level: :math:`m \in [1, L]`, e.g. from :func:`max_unlocked_level`.
        num_levels: :math:`L`.
        replay: :math:`\rho \in [0, 1]`.
    """
    num_levels = _require_int("num_levels", num_levels, low=1)
    max_level = _require_int("max_level", max_level, low=1)
    if max_level > num_levels:
        raise ValueError(f"max_level must be <= num_levels = {num_levels}, got {max_level}")
    require_number("replay", replay, low=0.0, high=1.0)
    probs = torch.zeros(num_levels, dtype=torch.float64)
    probs[:max_level] = float(replay) / max_level
    probs[max_level - 1] += 1.0 - float(replay)
    return probs


def _draw_levels(levels: tuple[int, ...], probs: Tensor, n: int, generator: torch.Generator) -> Tensor:
    index = (
        torch.multinomial(probs, n, replacement=True, generator=generator) if n else torch.zeros(0, dtype=torch.long)
    )
    return torch.tensor(levels, dtype=torch.long)[index]


def curriculum_sampler(
    kind: str, levels: Sequence[int], schedule: CompetenceSchedule, *, replay: float = 1.0
) -> ProblemSampler:
    """A ``ProblemSampler`` ``(step, n, generator) -> Problems`` that follows a competence schedule.

    At step :math:`t` it draws each prompt's level from
    ``level_probabilities(max_unlocked_level(schedule(t), L), L, replay=replay)`` with
    ``generator``, then the digits with :func:`~nemo_rl_theory.toy.tasks.sample_problems`.
    Pass it as ``task`` to ``train_sft`` or ``train_grpo``.

    Args:
        kind: ``"copy"``, ``"reverse"`` or ``"add"``.
        levels: the difficulties :math:`d_1 < \\dots < d_L`, easiest first.
        schedule: ``step -> competence in (0, 1]``.
        replay: :math:`\\rho`, see :func:`level_probabilities`.
    """
    kind = _check_kind(kind)
    levels = _check_levels(levels)
    if not callable(schedule):
        raise TypeError(f"schedule must be a callable step -> competence, got {type(schedule).__name__}")
    require_number("replay", replay, low=0.0, high=1.0)
    num_levels = len(levels)

    def sampler(step: int, n: int, generator: torch.Generator) -> Problems:
        m = max_unlocked_level(schedule(step), num_levels)
        probs = level_probabilities(m, num_levels, replay=replay)
        return sample_problems(kind, _draw_levels(levels, probs, n, generator), generator=generator)

    return sampler


def schedule_level_fractions(
    schedule: CompetenceSchedule, num_levels: int, steps: int, *, replay: float = 1.0
) -> Tensor:
    r"""``Tensor[L]`` (float64): the share of a run's prompts at each level, :math:`\frac1S\sum_{t<S} P_t(k)`.

    :math:`P_t` is :func:`level_probabilities` at the competence ``schedule(t)`` and :math:`S` is
    ``steps``, the length of the run. Used to build the *unordered* control of a curriculum: a
    :func:`fixed_mixture_sampler` with these probabilities sees the same levels in the same
    proportions, in random order.
    """
    if not callable(schedule):
        raise TypeError(f"schedule must be a callable step -> competence, got {type(schedule).__name__}")
    num_levels = _require_int("num_levels", num_levels, low=1)
    steps = _require_int("steps", steps, low=1)
    total = torch.zeros(num_levels, dtype=torch.float64)
    for t in range(steps):
        total += level_probabilities(max_unlocked_level(schedule(t), num_levels), num_levels, replay=replay)
    return total / steps


def fixed_mixture_sampler(kind: str, levels: Sequence[int], probs: Tensor | None = None) -> ProblemSampler:
    """A ``ProblemSampler`` that draws every prompt's level from the same ``probs: Tensor[L]`` at every step.

    ``probs=None`` is uniform over ``levels``: the usual no-curriculum baseline.
    """
    kind = _check_kind(kind)
    levels = _check_levels(levels)
    if probs is None:
        weights = torch.full((len(levels),), 1.0 / len(levels), dtype=torch.float64)
    else:
        weights = _check_rates("probs", probs).to(torch.float64)
        if weights.shape != (len(levels),):
            raise ValueError(f"probs must have shape [L] = [{len(levels)}], got {list(weights.shape)}")
        if abs(float(weights.sum()) - 1.0) > 1e-6:
            raise ValueError(f"probs must sum to 1, got {float(weights.sum())}")

    def sampler(step: int, n: int, generator: torch.Generator) -> Problems:
        return sample_problems(kind, _draw_levels(levels, weights, n, generator), generator=generator)

    return sampler


def uniform_sampler(kind: str, levels: Sequence[int]) -> ProblemSampler:
    """The baseline: every prompt's level uniform over ``levels`` at every step (no curriculum)."""
    return fixed_mixture_sampler(kind, levels)


# ----------------------------------------------------------------------------- adaptive sampling


def informative_group_probability(success_rate: Tensor, group_size: int) -> Tensor:
    r"""Probability that a group of :math:`G` i.i.d. binary rewards is not constant: :math:`1 - p^G - (1-p)^G`.

    A constant group (all correct, probability :math:`p^G`, or all wrong, :math:`(1-p)^G`) has
    zero GRPO advantage, so this is the chance that a prompt of success rate :math:`p` gives any
    learning signal. It is 0 for :math:`G = 1` and maximal at :math:`p = 1/2`.

    Args:
        success_rate: ``Tensor[...]`` of probabilities :math:`p \in [0, 1]`.
        group_size: :math:`G \ge 1` (NeMo RL ``grpo.num_generations_per_prompt``).

    Returns:
        ``Tensor[...]``, same shape and dtype.
    """
    p = _check_rates("success_rate", success_rate)
    g = _require_int("group_size", group_size, low=1)
    return (1.0 - p.pow(g) - (1.0 - p).pow(g)).clamp_min(0.0)


def expected_squared_advantage(
    success_rate: Tensor,
    group_size: int,
    *,
    use_leave_one_out_baseline: bool = True,
    normalize_rewards: bool = True,
) -> Tensor:
    r"""Exact :math:`\mathbb E[A_i^2]` per response for binary rewards of success rate :math:`p`.

    The number of correct answers in a group is :math:`K \sim \mathrm{Binomial}(G, p)` and, by
    symmetry, a group's advantages depend only on :math:`K`. So

    .. math::

        \begin{aligned}
        \mathbb E[A_i^2] &= \frac{1}{G}\sum_{k=0}^{G} \binom{G}{k} p^k (1-p)^{G-k} \\
        &\qquad \times \sum_{i=1}^{G} A_i(k)^2,
        \end{aligned}

    with :math:`A_i(k)` computed by :func:`~nemo_rl_theory.advantages.grpo_advantages` on a group of
    :math:`k` ones and :math:`G - k` zeros (float64). The policy-gradient estimate of a prompt is
    :math:`\frac1G\sum_i A_i \nabla\log\pi(y_i)`, so this is the signal a prompt contributes; it is
    0 at :math:`p \in \{0, 1\}` for every setting.

    Args:
        success_rate: ``Tensor[...]`` probabilities.
        group_size: :math:`G \ge 2`.
        use_leave_one_out_baseline, normalize_rewards: as in ``grpo_advantages``.

    Returns:
        ``Tensor[...]`` float64.
    """
    p = _check_rates("success_rate", success_rate).to(torch.float64)
    g = _require_int("group_size", group_size, low=2)
    require_bool("use_leave_one_out_baseline", use_leave_one_out_baseline)
    require_bool("normalize_rewards", normalize_rewards)
    ids = torch.zeros(g, dtype=torch.long)
    per_k = torch.empty(g + 1, dtype=torch.float64)
    for k in range(g + 1):
        rewards = torch.cat([torch.ones(k, dtype=torch.float64), torch.zeros(g - k, dtype=torch.float64)])
        a = grpo_advantages(
            rewards, ids, use_leave_one_out_baseline=use_leave_one_out_baseline, normalize_rewards=normalize_rewards
        )
        per_k[k] = a.square().sum()
    ks = torch.arange(g + 1, dtype=torch.float64)
    log_binom = (
        torch.lgamma(torch.tensor(g + 1.0, dtype=torch.float64)) - torch.lgamma(ks + 1) - torch.lgamma(g - ks + 1)
    )
    flat = p.reshape(-1, 1)
    # p^k (1-p)^(G-k) with 0^0 = 1, written without logs so p = 0 and p = 1 are exact.
    pmf = log_binom.exp() * flat.pow(ks) * (1.0 - flat).pow(g - ks)
    return ((pmf * per_k).sum(dim=1) / g).reshape(p.shape)


def success_rate_weights(
    success_rate: Tensor,
    *,
    scheme: str = "informative",
    group_size: int = 8,
    temperature: float = 1.0,
    floor: float = 0.05,
) -> Tensor:
    r"""Sampling probabilities over levels from their success rates: a tempered score plus a floor.

    .. math::

        w_k = \frac{\varepsilon}{L} + (1 - \varepsilon)\,\frac{s(p_k)^{1/\tau}}{\sum_j s(p_j)^{1/\tau}}

    with the score :math:`s(p)` one of

    * ``"informative"``: :math:`1 - p^G - (1-p)^G`, the chance that a GRPO group is not constant;
    * ``"variance"``: :math:`p(1-p)`, the reward variance (the signal without std normalisation);
    * ``"failure"``: :math:`1 - p`, Kimi k1.5's prioritized sampling (favours unsolved levels);
    * ``"uniform"``: 1 for every level.

    The temperature :math:`\tau > 0` sharpens (:math:`\tau < 1`) or flattens (:math:`\tau > 1`)
    the scores; the floor :math:`\varepsilon \in [0, 1]` keeps every level at probability at least
    :math:`\varepsilon / L`, so a level whose estimate is stale is still revisited. If every score is
    0 (all levels solved or all failed) the scores fall back to uniform.

    Args:
        success_rate: ``Tensor[L]`` estimated success rates :math:`p_k \in [0, 1]`.
        scheme: one of :data:`WEIGHT_SCHEMES`.
        group_size: :math:`G`, used by ``"informative"``.
        temperature: :math:`\tau`.
        floor: :math:`\varepsilon`.

    Returns:
        ``Tensor[L]`` float64 probabilities summing to 1.
    """
    p = _check_rates("success_rate", success_rate).to(torch.float64)
    if p.dim() != 1 or p.numel() == 0:
        raise ValueError(f"success_rate must have shape [L] with L >= 1, got {list(p.shape)}")
    if scheme not in WEIGHT_SCHEMES:
        raise ValueError(f"scheme must be one of {WEIGHT_SCHEMES}, got {scheme!r}")
    require_number("temperature", temperature, low=0.0, low_inclusive=False)
    require_number("floor", floor, low=0.0, high=1.0)
    _require_int("group_size", group_size, low=1)
    if scheme == "informative":
        score = informative_group_probability(p, group_size)
    elif scheme == "variance":
        score = p * (1.0 - p)
    elif scheme == "failure":
        score = 1.0 - p
    else:
        score = torch.ones_like(p)
    if float(score.max()) <= 0.0:
        score = torch.ones_like(p)
    # s^(1/tau) via the normalised score, so a small tau cannot underflow every entry to 0.
    tempered = (score / score.max()).pow(1.0 / float(temperature))
    return float(floor) / p.numel() + (1.0 - float(floor)) * tempered / tempered.sum()


def ema_success_rates(rates: Tensor, counts: Tensor, correct_by_level: Tensor, *, alpha: float) -> Tensor:
    r"""One EMA update, :math:`\hat p_k \leftarrow (1 - \alpha)\,\hat p_k + \alpha\,\bar x_k` for the levels seen.

    Args:
        rates: ``Tensor[L]`` current estimates.
        counts: ``Tensor[L]`` number of responses per level in this batch (0: estimate unchanged).
        correct_by_level: ``Tensor[L]`` number of correct responses per level in this batch.
        alpha: :math:`\alpha \in (0, 1]`, the weight of the new batch mean :math:`\bar x_k`.

    Returns:
        ``Tensor[L]``, the new estimates (a new tensor).
    """
    rates = _check_rates("rates", rates)
    require_number("alpha", alpha, low=0.0, high=1.0, low_inclusive=False)
    for name, t in (("counts", counts), ("correct_by_level", correct_by_level)):
        require_tensor(name, t)
        if t.shape != rates.shape:
            raise ValueError(f"{name} must have the shape of rates {list(rates.shape)}, got {list(t.shape)}")
    if bool((counts < 0).any()) or bool((correct_by_level < 0).any()) or bool((correct_by_level > counts).any()):
        raise ValueError("need 0 <= correct_by_level <= counts for every level")
    seen = counts > 0
    batch_mean = torch.where(seen, correct_by_level.to(rates.dtype) / counts.clamp_min(1).to(rates.dtype), rates)
    return torch.where(seen, (1.0 - alpha) * rates + alpha * batch_mean, rates)


class SuccessRateTracker:
    r"""Per-level success rates of the policy, as exponential moving averages over training batches.

    ``observe(batch)`` updates the estimates from a :class:`~nemo_rl_theory.toy.trainers.GRPOBatch`
    (its ``problems.difficulty`` and verifier verdicts ``correct``) and returns the batch
    unchanged, so it plugs into ``train_grpo(..., batch_filter=...)``, the one hook that sees every
    batch; compose it with :func:`filter_zero_advantage_groups` to also filter.

    Args:
        levels: the difficulties :math:`d_1 < \dots < d_L`.
        alpha: EMA weight of each new batch, :math:`\alpha \in (0, 1]`.
        prior: the initial estimate of every level (0.5: maximally uncertain, so every level
            starts with the highest ``"informative"`` / ``"variance"`` score).
    """

    def __init__(self, levels: Sequence[int], *, alpha: float = 0.3, prior: float = 0.5) -> None:
        self.levels = _check_levels(levels)
        require_number("alpha", alpha, low=0.0, high=1.0, low_inclusive=False)
        require_number("prior", prior, low=0.0, high=1.0)
        self.alpha = float(alpha)
        self.rates = torch.full((len(self.levels),), float(prior), dtype=torch.float64)
        self.seen = torch.zeros(len(self.levels), dtype=torch.long)
        self.history: list[Tensor] = []

    def _level_index(self, difficulty: Tensor) -> Tensor:
        table = torch.tensor(self.levels, dtype=torch.long)
        index = torch.searchsorted(table, difficulty.long()).clamp_max(len(self.levels) - 1)
        if not bool((table[index] == difficulty).all()):
            unknown = sorted(set(difficulty.tolist()) - set(self.levels))
            raise ValueError(f"difficulty holds values outside levels {self.levels}: {unknown}")
        return index

    def update(self, difficulty: Tensor, correct: Tensor) -> Tensor:
        """Update from ``difficulty: Tensor[N]`` (values in ``levels``) and 0/1 ``correct: Tensor[N]``."""
        require_tensor("difficulty", difficulty)
        require_tensor("correct", correct)
        if difficulty.dim() != 1 or correct.shape != difficulty.shape:
            shapes = f"{list(difficulty.shape)} and {list(correct.shape)}"
            raise ValueError(f"difficulty and correct must both have shape [N], got {shapes}")
        c = correct.to(torch.float64)
        if not bool(((c == 0) | (c == 1)).all()):
            raise ValueError("correct must hold 0/1 verdicts")
        index = self._level_index(difficulty)
        counts = torch.zeros(len(self.levels), dtype=torch.float64).index_add_(0, index, torch.ones_like(c))
        hits = torch.zeros(len(self.levels), dtype=torch.float64).index_add_(0, index, c)
        self.rates = ema_success_rates(self.rates, counts, hits, alpha=self.alpha)
        self.seen += counts.long()
        self.history.append(self.rates.clone())
        return self.rates

    def observe(self, batch: GRPOBatch) -> GRPOBatch:
        """``train_grpo`` ``batch_filter`` hook: update from the batch's verdicts, return it unchanged."""
        if not isinstance(batch, GRPOBatch):
            raise TypeError(f"batch must be a GRPOBatch, got {type(batch).__name__}")
        self.update(batch.problems.difficulty, batch.correct)
        return batch


def adaptive_sampler(
    kind: str,
    tracker: SuccessRateTracker,
    *,
    scheme: str = "informative",
    group_size: int = 8,
    temperature: float = 1.0,
    floor: float = 0.05,
) -> ProblemSampler:
    """A ``ProblemSampler`` that draws levels from :func:`success_rate_weights` of the tracker's current rates.

    The tracker must be updated with every batch (``train_grpo(..., batch_filter=tracker.observe)``);
    the sampler only reads it. The step argument is unused.
    """
    kind = _check_kind(kind)
    if not isinstance(tracker, SuccessRateTracker):
        raise TypeError(f"tracker must be a SuccessRateTracker, got {type(tracker).__name__}")
    # Validate the weight arguments once, now, rather than at the first training step.
    success_rate_weights(tracker.rates, scheme=scheme, group_size=group_size, temperature=temperature, floor=floor)

    def sampler(step: int, n: int, generator: torch.Generator) -> Problems:
        probs = success_rate_weights(
            tracker.rates, scheme=scheme, group_size=group_size, temperature=temperature, floor=floor
        )
        return sample_problems(kind, _draw_levels(tracker.levels, probs, n, generator), generator=generator)

    return sampler


# ----------------------------------------------------------------------------- dynamic sampling


def informative_groups(batch: GRPOBatch) -> Tensor:
    r"""``Tensor[n_groups]`` bool: whether each group's rewards are not all equal (:math:`\max r > \min r`).

    For rewards whose sums are exact (0/1 verdicts) this is exactly :math:`\sigma > 0` in
    :func:`~nemo_rl_theory.advantages.calculate_baseline_and_std_per_prompt`, i.e. exactly the
    groups with a non-zero advantage. Groups are indexed by ``batch.prompt_ids``.
    """
    if not isinstance(batch, GRPOBatch):
        raise TypeError(f"batch must be a GRPOBatch, got {type(batch).__name__}")
    if len(batch) == 0:
        return torch.zeros(0, dtype=torch.bool)
    n_groups = int(batch.prompt_ids.max()) + 1
    rewards = batch.rewards.to(torch.float64)
    high = torch.full((n_groups,), -math.inf, dtype=torch.float64).scatter_reduce(0, batch.prompt_ids, rewards, "amax")
    low = torch.full((n_groups,), math.inf, dtype=torch.float64).scatter_reduce(0, batch.prompt_ids, rewards, "amin")
    return high > low


def filter_zero_advantage_groups(batch: GRPOBatch, *, max_groups: int | None = None) -> GRPOBatch:
    r"""DAPO's dynamic-sampling filter: keep only the groups whose rewards are not all equal.

    A group of equal rewards has :math:`r_i - b_i = 0` and :math:`\sigma = 0`, hence advantage
    exactly 0 for every response: it adds nothing to the policy gradient but still counts in the
    token-level denominator :math:`N_\text{tok}`, diluting the rest. Whole groups are kept, in
    their original order, so the kept advantages are unchanged.

    ``max_groups`` keeps at most that many informative groups (the first ones): sample more
    prompts than the update needs and cut back to a fixed number of informative groups, DAPO's
    refilled batch in one draw (``train_grpo(..., prompts_per_step=2 * B,
    batch_filter=partial(filter_zero_advantage_groups, max_groups=B))``).

    Args:
        batch: a :class:`~nemo_rl_theory.toy.trainers.GRPOBatch`.
        max_groups: optional cap, a positive int.

    Returns:
        The sub-batch (possibly empty, which ``train_grpo`` skips).
    """
    keep = informative_groups(batch)
    if max_groups is not None:
        max_groups = _require_int("max_groups", max_groups, low=1)
        keep = keep & (torch.cumsum(keep.long(), 0) <= max_groups)
    if len(batch) == 0:
        return batch
    rows = keep[batch.prompt_ids].nonzero()[:, 0]
    return batch.select(rows)
