r"""Which responses train: NeMo RL's dynamic-sampling rule, overlong filtering, log-prob-error masking.

Three filters of NeMo RL 7ea279a (``nemo_rl/algorithms/grpo.py``), each returning a mask:

* :func:`dynamic_sampling_mask` (``grpo.use_dynamic_sampling``, DAPO): NeMo RL keeps the *rows*
  whose standard deviation from
  :func:`~nemo_rl_theory.advantages.calculate_baseline_and_std_per_prompt` is non-zero. Without
  leave-one-out that is the group rule of
  :func:`~nemo_rl_theory.training.curriculum.filter_zero_advantage_groups`; under leave-one-out
  (NeMo RL's default) it is per row, and what it adds is that it also drops a lone dissenter.
* :func:`overlong_filtering_mask` (``grpo.overlong_filtering``): truncated responses leave the loss.
* :func:`seq_mult_prob_error` and :func:`seq_logprob_error_mask`
  (``grpo.seq_logprob_error_threshold``): sequences whose training-engine log-probs disagree
  too much with the generation engine's leave the loss.
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
    require_number,
    require_same_shape,
    require_tensor,
)
from nemo_rl_theory.advantages import calculate_baseline_and_std_per_prompt


def dynamic_sampling_mask(
    rewards: Tensor,
    prompt_ids: Tensor,
    *,
    use_leave_one_out_baseline: bool = True,
    std_rewards: Tensor | None = None,
    max_samples: int | None = None,
) -> Tensor:
    r"""NeMo RL's dynamic-sampling keep rule: the rows whose group standard deviation is non-zero.

    .. math::

        \text{keep}_i = [\sigma_i \ne 0]

    with :math:`\sigma_i` of
    :func:`~nemo_rl_theory.advantages.calculate_baseline_and_std_per_prompt` (taken over
    ``std_rewards`` if given: NeMo RL passes the reward before shaping there). The rule is per
    *row*. Without leave-one-out every row of a group has the same :math:`\sigma`, and this is
    :func:`~nemo_rl_theory.training.curriculum.filter_zero_advantage_groups`' group rule. Under
    leave-one-out (NeMo RL's default) :math:`\sigma_i` is the spread of the *other* rewards, so
    a row is dropped when all the others agree:

    * the lone correct answer of :math:`(1, 0, 0, 0)` (and the lone wrong one of
      :math:`(0, 1, 1, 1)`) is dropped, its group-mates are kept;
    * a group of two is always dropped entirely (one other reward: :math:`\sigma` undefined, 0).

    NeMo RL then recomputes the advantages on the kept rows alone, so the three kept zeros of
    :math:`(1, 0, 0, 0)` form a tied group and get advantage 0: the only group that had
    signal contributes nothing (``grpo_advantages(rewards[keep], prompt_ids[keep])``).

    ``max_samples`` (NeMo RL: ``num_prompts_per_step * num_generations_per_prompt``) keeps
    only the first that many kept rows, as NeMo RL slices its filled buffer (which can cut a
    group). NeMo RL generates further batches until that many rows are kept; this function
    sees one batch and does not. NeMo RL's one-pass :math:`\sigma` can also keep rows whose
    others tie at a non-dyadic value (rounding noise :math:`\ne 0`); the library's is exact.
    Source: NeMo RL 7ea279a, ``nemo_rl/algorithms/grpo.py`` (``dynamic_sampling``, ``grpo_train``).

    Args:
        rewards: ``Tensor[N]`` float (the shaped reward: it gives the baseline).
        prompt_ids: ``Tensor[N]`` or ``Tensor[N, L]``.
        use_leave_one_out_baseline: ``grpo.use_leave_one_out_baseline`` (default True).
        std_rewards: optional ``Tensor[N]`` whose spread decides (``unshaped_total_reward``).
        max_samples: optional positive int cap on the number of kept rows.

    Returns:
        ``Tensor[N]`` bool.
    """
    require_bool("use_leave_one_out_baseline", use_leave_one_out_baseline)
    _, std = calculate_baseline_and_std_per_prompt(
        prompt_ids, rewards, None, use_leave_one_out_baseline, std_rewards=std_rewards
    )
    keep = std != 0
    if max_samples is not None:
        if isinstance(max_samples, bool) or not isinstance(max_samples, int):
            raise TypeError(f"max_samples must be an int, got {type(max_samples).__name__}")
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        keep = keep & (torch.cumsum(keep.long(), 0) <= max_samples)
    return keep


def overlong_filtering_mask(truncated: Tensor, sample_mask: Tensor | None = None) -> Tensor:
    r"""NeMo RL's overlong filtering: a truncated response gets sample mask 0.

    .. math::

        s'_i = s_i\,[\text{not truncated}_i]

    (``grpo.overlong_filtering``, DAPO's overlong filtering; ``loss_multiplier[truncated] = 0``).
    It only removes the response from the loss: in NeMo RL the group baselines, standard
    deviations and dynamic sampling are computed before it, with every response valid, so a
    truncated response still counts in its group-mates' baselines. Source: NeMo RL 7ea279a,
    ``nemo_rl/algorithms/grpo.py``.

    Args:
        truncated: ``Tensor[B]`` bool (or 0/1 integer).
        sample_mask: ``Tensor[B]`` current sample mask (``None``: all ones).

    Returns:
        ``Tensor[B]`` float: the new sample mask (float32, or ``sample_mask``'s float dtype).
    """
    t = require_tensor("truncated", truncated)
    require_ndim("truncated", t, (1,), "[B]")
    if t.dtype != torch.bool:
        if t.is_floating_point() or t.is_complex():
            raise TypeError(f"truncated must be a bool (or 0/1 integer) tensor, got dtype {t.dtype}")
        if bool(((t != 0) & (t != 1)).any()):
            raise ValueError("truncated must hold only 0/1 (or bool)")
        t = t != 0
    if sample_mask is None:
        s = torch.ones(t.shape, dtype=torch.float32, device=t.device)
    else:
        given = require_tensor("sample_mask", sample_mask)
        s = as_mask("sample_mask", given, given if given.is_floating_point() else torch.empty(0))
        if s.shape != t.shape:
            raise ValueError(f"sample_mask must have shape [B] = [{t.shape[0]}], got {list(s.shape)}")
    return torch.where(t, 0.0, s)


def seq_mult_prob_error(logprobs: Tensor, generation_logprobs: Tensor, mask: Tensor) -> Tensor:
    r"""Per-sequence multiplicative probability error between training and generation engines.

    .. math::

        \begin{aligned}
        e_{i,t} &= \big|\log\pi_\text{gen}(y_t)
                  - \log\pi_\text{train}(y_t)\big|, \\
        E_i &= \frac{\sum_t m_{i,t}\, e^{\,m_{i,t} e_{i,t}}}
                {\sum_t m_{i,t}}
        \end{aligned}

    the mean over the counted tokens of the ratio :math:`\max(p, q)/\min(p, q) \ge 1` (not the
    exponential of the mean error), and :math:`E_i = 0` for a sequence with no counted token
    (NeMo RL excludes those from its min/mean/max metrics). It is the per-sequence version of
    the loss's ``token_mult_prob_error`` metric. NeMo RL masks with the token mask times the
    sample mask. Unlike masked importance sampling it uses the *absolute* difference: a
    sequence the trainer likes more than the sampler is dropped too. Source: NeMo RL 7ea279a,
    ``nemo_rl/algorithms/grpo.py`` (``compute_and_apply_seq_logprob_error_masking``; it slices
    ``[:, 1:]``, the inputs here are already aligned).

    Args:
        logprobs: ``Tensor[B, T]`` training-engine log-probs (NeMo RL's ``prev_logprobs``).
        generation_logprobs: ``Tensor[B, T]`` the sampler's log-probs of the same tokens.
        mask: ``Tensor[B, T]``; padding may hold ``-inf``/garbage.

    Returns:
        ``Tensor[B]`` (detached).
    """
    lp = require_float_tensor("logprobs", logprobs)
    require_ndim("logprobs", lp, (2,), "[B, T]")
    gen = require_float_tensor("generation_logprobs", generation_logprobs)
    require_same_shape("logprobs", lp, "generation_logprobs", gen)
    m = as_mask("mask", mask, lp)
    require_same_shape("logprobs", lp, "mask", m)
    return _seq_mult_prob_error(lp, gen, m)


def _seq_mult_prob_error(lp: Tensor, gen: Tensor, m: Tensor) -> Tensor:
    counted = m != 0
    require_finite_where("logprobs", lp, counted)
    require_finite_where("generation_logprobs", gen, counted)
    error = torch.where(counted, (gen.detach() - lp.detach()).abs(), 0.0)
    numerator = torch.where(counted, torch.exp(error * m) * m, 0.0).sum(dim=1)
    count = m.sum(dim=1)
    return torch.where(count > 0, numerator / count.clamp(min=1.0), 0.0)


def seq_logprob_error_mask(
    logprobs: Tensor,
    generation_logprobs: Tensor,
    mask: Tensor,
    *,
    seq_logprob_error_threshold: float,
    sample_mask: Tensor | None = None,
) -> Tensor:
    r"""The sample mask after NeMo RL's sequence-level log-prob-error masking.

    .. math::

        s'_i = s_i\,\big[E_i \le \tau\big]

    with :math:`E_i` of :func:`seq_mult_prob_error` computed with ``mask`` times
    :math:`s_i` and :math:`\tau` = ``grpo.seq_logprob_error_threshold`` (e.g. 1.5; the
    boundary is kept). Since :math:`E_i \ge 1` for a sequence with counted tokens,
    :math:`\tau < 1` drops them all; a sequence with no counted token has :math:`E_i = 0`
    and keeps its :math:`s_i`. NeMo RL applies it before the advantages are computed, and
    PPO's GAE then sees the new mask. Source: NeMo RL 7ea279a, ``nemo_rl/algorithms/grpo.py``.

    Args:
        logprobs: ``Tensor[B, T]`` training-engine log-probs.
        generation_logprobs: ``Tensor[B, T]``.
        mask: ``Tensor[B, T]`` token mask.
        seq_logprob_error_threshold: :math:`\tau`, a finite number.
        sample_mask: ``Tensor[B]`` (``None``: all ones).

    Returns:
        ``Tensor[B]`` float (``logprobs``' dtype): the new sample mask.
    """
    lp = require_float_tensor("logprobs", logprobs)
    require_ndim("logprobs", lp, (2,), "[B, T]")
    gen = require_float_tensor("generation_logprobs", generation_logprobs)
    require_same_shape("logprobs", lp, "generation_logprobs", gen)
    m = as_mask("mask", mask, lp)
    require_same_shape("logprobs", lp, "mask", m)
    require_number("seq_logprob_error_threshold", seq_logprob_error_threshold)
    if sample_mask is None:
        s = torch.ones(lp.shape[0], dtype=lp.dtype, device=lp.device)
    else:
        s = as_mask("sample_mask", sample_mask, lp)
        if s.shape != (lp.shape[0],):
            raise ValueError(f"sample_mask must have shape [B] = [{lp.shape[0]}], got {list(s.shape)}")
    error = _seq_mult_prob_error(lp, gen, m * s[:, None])
    return (error <= float(seq_logprob_error_threshold)).to(lp.dtype) * s


__all__ = [
    "dynamic_sampling_mask",
    "overlong_filtering_mask",
    "seq_logprob_error_mask",
    "seq_mult_prob_error",
]
