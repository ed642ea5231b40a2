r"""Group-relative advantages (GRPO, with RLOO's leave-one-out baseline).

Each prompt is answered :math:`G` times; a response's advantage is its reward minus a
baseline computed from the *other* responses to the same prompt, optionally divided by
the group's standard deviation. No value network is needed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nemo_rl_theory._validation import (
    as_mask,
    require_bool,
    require_finite_where,
    require_float_tensor,
    require_ndim,
    require_tensor,
)

#: Added to the standard deviation before dividing, as NeMo RL does.
ADVANTAGE_STD_EPS = 1e-6


def _group_index(prompt_ids: Tensor) -> Tensor:
    """Map each row to the index of its distinct prompt (``[N]`` ids or ``[N, L]`` token rows)."""
    if prompt_ids.dim() == 1:
        _, inverse = torch.unique(prompt_ids, return_inverse=True)
    else:
        _, inverse = torch.unique(prompt_ids, dim=0, return_inverse=True)
    return inverse


def _check_group_inputs(
    prompt_ids: object, rewards: object, valid_mask: object | None
) -> tuple[Tensor, Tensor, Tensor]:
    prompt_ids = require_tensor("prompt_ids", prompt_ids)
    rewards = require_float_tensor("rewards", rewards)
    require_ndim("rewards", rewards, (1,), "[N]")
    require_ndim("prompt_ids", prompt_ids, (1, 2), "[N] or [N, L]")
    if prompt_ids.shape[0] != rewards.shape[0]:
        raise ValueError(
            f"rewards and prompt_ids must have the same length N, got {rewards.shape[0]} "
            f"rewards and {prompt_ids.shape[0]} prompt ids"
        )
    if prompt_ids.is_floating_point() and not torch.isfinite(prompt_ids).all():
        raise ValueError("prompt_ids must be finite")
    if valid_mask is None:
        valid = torch.ones_like(rewards)
    else:
        valid = as_mask("valid_mask", valid_mask, rewards)
        if valid.shape != rewards.shape:
            raise ValueError(f"valid_mask must have shape [N] = [{rewards.shape[0]}], got {list(valid.shape)}")
    require_finite_where("rewards", rewards, valid != 0)
    return prompt_ids, rewards, valid


def _check_std_rewards(std_rewards: object, rewards: Tensor, valid: Tensor) -> Tensor:
    std_rewards = require_float_tensor("std_rewards", std_rewards)
    if std_rewards.shape != rewards.shape:
        raise ValueError(
            f"std_rewards must have the shape of rewards [N] = [{rewards.shape[0]}], got {list(std_rewards.shape)}"
        )
    require_finite_where("std_rewards", std_rewards, valid != 0)
    return std_rewards.to(rewards.dtype)


def calculate_baseline_and_std_per_prompt(
    prompt_ids: Tensor,
    rewards: Tensor,
    valid_mask: Tensor | None,
    leave_one_out_baseline: bool = True,
    std_rewards: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Per-response baseline and standard deviation from the responses to the same prompt.

    For response :math:`i` of a group with valid responses :math:`V` (``valid_mask``) let
    :math:`S_i = V \setminus \{i\}` (leave-one-out, RLOO) or :math:`S_i = V`, and
    :math:`n_i = |V| - 1` or :math:`|V|` respectively. Then

    .. math::

        \begin{aligned}
        b_i &= \frac{1}{n_i} \sum_{j \in S_i} r_j, \\
        \sigma_i &= \sqrt{\frac{n_i}{n_i - 1}\Big(\frac{1}{n_i}\sum_{j\in S_i} r_j^2 - b_i^2\Big)}
        \end{aligned}

    (Bessel-corrected sample standard deviation of :math:`\{r_j\}_{j \in S_i}`). As NeMo
    RL: an undefined :math:`\sigma_i` (fewer than two samples in :math:`S_i`, e.g. a group of
    two under leave-one-out) is reported as 0, and a group with at most one valid response
    gets :math:`b_i = r_i` and :math:`\sigma_i = 0`, i.e. zero advantage.

    Unlike NeMo RL, :math:`\sigma_i` is computed in two passes (centred on :math:`b_i`) and is
    exactly 0 whenever the rewards in :math:`S_i` are all equal (then :math:`b_i` is their
    common value). NeMo RL's one-pass :math:`\overline{r^2} - b^2` leaves rounding noise of
    order :math:`10^{-8}` there, e.g. for the lone dissenter of ``(0.7, 0.7, 0.7, 0.2)``, and
    the normalised advantage of that response becomes :math:`\sim 10^{5}`; elsewhere the
    two agree to rounding.

    ``std_rewards`` (NeMo RL 7ea279a, ``nemo_rl/algorithms/utils.py``): :math:`\sigma_i` is
    then the same statistic of *another* reward :math:`s_j` (centred on its own mean
    :math:`\bar s_i = \frac{1}{n_i}\sum_{j \in S_i} s_j` over the same :math:`S_i`), while
    :math:`b_i` stays the mean of ``rewards``. NeMo RL's ``grpo_train`` passes the reward
    before shaping (``unshaped_total_reward``) here when dynamic sampling is on, so groups are
    filtered on the raw task metric while the baseline uses the shaped reward; that
    :math:`\sigma` only decides the filter, the advantages are recomputed afterwards from the
    shaped reward alone.

    Args:
        prompt_ids: ``Tensor[N]`` prompt ids, or ``Tensor[N, L]`` prompt token rows
            (identical rows are the same prompt).
        rewards: ``Tensor[N]`` float rewards.
        valid_mask: ``Tensor[N]``, 1 for responses that take part in the statistics
            (``None``: all).
        leave_one_out_baseline: exclude response :math:`i` from its own baseline.
        std_rewards: optional ``Tensor[N]`` float, the reward whose spread gives
            :math:`\sigma_i` (``None``: ``rewards``).

    Returns:
        ``(baseline, std)``, both ``Tensor[N]`` in the dtype of ``rewards``.
    """
    prompt_ids, rewards, valid = _check_group_inputs(prompt_ids, rewards, valid_mask)
    require_bool("leave_one_out_baseline", leave_one_out_baseline)
    if std_rewards is None:
        return _baseline_and_std(prompt_ids, rewards, valid, leave_one_out_baseline)
    std_rewards = _check_std_rewards(std_rewards, rewards, valid)
    baseline, _ = _baseline_and_std(prompt_ids, rewards, valid, leave_one_out_baseline)
    _, std = _baseline_and_std(prompt_ids, std_rewards, valid, leave_one_out_baseline)
    return baseline, std


def _padded_groups(group: Tensor, n_groups: int, *columns: Tensor) -> tuple[Tensor, ...]:
    """Lay each ``[N]`` column out as ``[n_groups, G_max]`` (row = group, zero padded) and
    return the padded columns followed by each row's slot ``[N]`` in its group."""
    order = torch.argsort(group, stable=True)
    sizes = torch.bincount(group, minlength=n_groups)
    starts = torch.cumsum(sizes, 0) - sizes
    slot = torch.empty_like(group)
    slot[order] = torch.arange(group.numel(), device=group.device) - starts[group[order]]
    width = int(sizes.max())
    padded = []
    for column in columns:
        out = torch.zeros(n_groups, width, dtype=column.dtype, device=column.device)
        out[group, slot] = column
        padded.append(out)
    return (*padded, slot)


class _GroupSums:
    """Per-row sums over the rows of the same group, and the baseline both variances share."""

    def __init__(self, prompt_ids: Tensor, rewards: Tensor, valid: Tensor, leave_one_out: bool) -> None:
        self.group = _group_index(prompt_ids)
        self.n_groups = int(self.group.max()) + 1
        self.leave_one_out = leave_one_out
        self.n_valid = self.over_group(valid)
        # Row i drops its own (valid-weighted) term; the count drops by one either way,
        # which is NeMo RL's convention (an invalid row's baseline is a sum over n - 1).
        self.n = self.n_valid - float(leave_one_out)
        self.baseline = self.over_others(torch.where(valid != 0, rewards * valid, 0.0)) / self.n

    def over_group(self, x: Tensor) -> Tensor:
        zeros = torch.zeros(self.n_groups, dtype=x.dtype, device=x.device)
        return zeros.index_add_(0, self.group, x)[self.group]

    def over_others(self, x: Tensor) -> Tensor:
        return self.over_group(x) - x if self.leave_one_out else self.over_group(x)


def _baseline_and_std(prompt_ids: Tensor, rewards: Tensor, valid: Tensor, leave_one_out: bool) -> tuple[Tensor, Tensor]:
    if rewards.numel() == 0:
        return rewards.clone(), rewards.clone()
    sums = _GroupSums(prompt_ids, rewards, valid, leave_one_out)
    group, n_groups, n_valid, n, baseline = sums.group, sums.n_groups, sums.n_valid, sums.n, sums.baseline

    # Each row's view of its group: the rewards r_j and weights w_j of the rows j in S_i.
    padded_rewards, padded_valid, slot = _padded_groups(group, n_groups, rewards, valid)
    r_j, w_j = padded_rewards[group], padded_valid[group]  # [N, G_max]
    if leave_one_out:
        w_j = w_j.scatter(1, slot[:, None], 0.0)
    member = w_j != 0
    r_j = torch.where(member, r_j, 0.0)

    # Two-pass (centred) variance: NeMo RL's one-pass E[r^2] - b^2 leaves rounding noise
    # (sigma ~ 1e-8 in float64) where the rewards are equal, and dividing by that noise
    # turns a lone dissenter's advantage into ~1e5. The same quantity, exactly:
    # sum_j w_j (r_j - b)^2 + (n - sum_j w_j) b^2 = sum_j w_j r_j^2 - n b^2.
    centred = torch.where(member, w_j * (r_j - baseline[:, None]).square(), 0.0).sum(dim=1)
    centred = centred + (n - w_j.sum(dim=1)) * baseline.square()
    # sigma is undefined with fewer than two samples (n <= 1); NeMo RL reports 0 there.
    defined = n > 1
    variance = torch.where(defined, centred / torch.where(defined, n - 1, 1.0), 0.0)
    std = variance.clamp(min=0.0).sqrt()

    # Equal rewards have no spread: sigma is exactly 0 and the baseline is their value.
    big = torch.finfo(rewards.dtype).max
    highest = torch.where(member, r_j, -big).amax(dim=1)
    lowest = torch.where(member, r_j, big).amin(dim=1)
    tied = member.any(dim=1) & (highest == lowest)
    std = torch.where(tied, 0.0, std)
    baseline = torch.where(tied & (w_j.sum(dim=1) == n), highest, baseline)

    degenerate = n_valid <= 1
    baseline = torch.where(degenerate, rewards, baseline)
    std = torch.where(degenerate, 0.0, std)
    return baseline, std


def one_pass_baseline_and_std(
    prompt_ids: Tensor,
    rewards: Tensor,
    valid_mask: Tensor | None = None,
    leave_one_out_baseline: bool = True,
) -> tuple[Tensor, Tensor]:
    r"""NeMo RL's own computation of :func:`calculate_baseline_and_std_per_prompt`, for comparison.

    .. math::

        \begin{aligned}
        \sigma_i &= \sqrt{\tfrac{n_i}{n_i - 1}\,\big(\overline{r^2} - b_i^2\big)}, \\
        \overline{r^2} &= \tfrac{1}{n_i}\textstyle\sum_{j\in S_i} r_j^2,
        \end{aligned}

    in one pass, with ``nan_to_num`` on the result, as ``nemo_rl/algorithms/utils.py`` (v0.7.0)
    does. Baselines are the library's. It differs from the library only in rounding, except
    where the rewards in :math:`S_i` tie at a non-dyadic value (then :math:`\sigma_i` is noise of
    order :math:`10^{-8}` in float64 instead of 0) and for :math:`n_i = 1` where rounding leaves
    a residue (:math:`\sigma_i = 1.8\times 10^{308}` in float64 instead of 0, e.g. for the 0.3 of
    ``(0.3, 0.1)``). The pages and the conformance
    tests use it to show those differences; train with the library's function.

    Args and returns as :func:`calculate_baseline_and_std_per_prompt`.
    """
    prompt_ids, rewards, valid = _check_group_inputs(prompt_ids, rewards, valid_mask)
    require_bool("leave_one_out_baseline", leave_one_out_baseline)
    if rewards.numel() == 0:
        return rewards.clone(), rewards.clone()
    sums = _GroupSums(prompt_ids, rewards, valid, leave_one_out_baseline)
    mean_square = sums.over_others(torch.where(valid != 0, rewards.square() * valid, 0.0)) / sums.n
    # n / (n - 1) is inf for n = 1; NeMo RL's nan_to_num maps NaN to 0 and inf to the largest float.
    std = ((mean_square - sums.baseline.square()) * (sums.n / (sums.n - 1))).sqrt().nan_to_num(0.0)
    degenerate = sums.n_valid <= 1
    return torch.where(degenerate, rewards, sums.baseline), torch.where(degenerate, 0.0, std)


def grpo_advantages(
    rewards: Tensor,
    prompt_ids: Tensor,
    *,
    use_leave_one_out_baseline: bool = True,
    normalize_rewards: bool = True,
    valid_mask: Tensor | None = None,
) -> Tensor:
    r"""GRPO advantages, one per response (NeMo RL's ``GRPOAdvantageEstimator``).

    .. math::

        A_i = \begin{cases}
            \tfrac{r_i - b_i}{\sigma_i + 10^{-6}} & \text{if normalize\_rewards} \\
            & \text{and } \sigma_i > 0 \\[4pt]
            r_i - b_i & \text{otherwise}
        \end{cases}

    with :math:`b_i, \sigma_i` from :func:`calculate_baseline_and_std_per_prompt`. Groups
    whose rewards are all equal have :math:`\sigma = 0` and are not "sharpened": their
    advantage stays :math:`r_i - b_i = 0` (no learning signal, see dynamic sampling).

    Args:
        rewards: ``Tensor[N]`` float rewards.
        prompt_ids: ``Tensor[N]`` or ``Tensor[N, L]``; identical ids/rows form a group.
        use_leave_one_out_baseline: NeMo RL ``grpo.use_leave_one_out_baseline`` (default True).
        normalize_rewards: NeMo RL ``grpo.normalize_rewards`` (default True).
        valid_mask: ``Tensor[N]``, responses that take part in the group statistics.

    Returns:
        ``Tensor[N]``; broadcast over tokens with ``A[:, None]`` for the ``[B, T]`` losses.
    """
    prompt_ids, rewards, valid = _check_group_inputs(prompt_ids, rewards, valid_mask)
    require_bool("use_leave_one_out_baseline", use_leave_one_out_baseline)
    require_bool("normalize_rewards", normalize_rewards)
    baseline, std = _baseline_and_std(prompt_ids, rewards, valid, use_leave_one_out_baseline)
    advantages = rewards - baseline
    if normalize_rewards:
        advantages = torch.where(std > 0, advantages / (std + ADVANTAGE_STD_EPS), advantages)
    return advantages
