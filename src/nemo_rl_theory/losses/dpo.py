"""Direct Preference Optimization with an optional SFT term (NeMo RL's ``DPOLossFn``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nemo_rl_theory._validation import as_mask, require_bool, require_number
from nemo_rl_theory.losses._inputs import check_factors, per_token, per_token_2d
from nemo_rl_theory.masking import _masked_mean


@dataclass(frozen=True)
class DPOConfig:
    """Configuration of :func:`dpo_loss`; names and defaults follow NeMo RL's ``dpo`` keys."""

    #: :math:`\beta`, strength of the implicit KL constraint to the reference (>= 0; 0 gives the constant ln 2).
    reference_policy_kl_penalty: float = 0.05
    #: :math:`w_p`, weight of the preference (Bradley-Terry) term.
    preference_loss_weight: float = 1.0
    #: :math:`w_s`, weight of the NLL term on the chosen responses.
    sft_loss_weight: float = 0.0
    #: Average (instead of sum) the per-token log-ratios in the implicit reward.
    preference_average_log_probs: bool = False
    #: Average (instead of sum) the per-token NLL of a chosen response.
    sft_average_log_probs: bool = False

    def __post_init__(self) -> None:
        require_number("reference_policy_kl_penalty", self.reference_policy_kl_penalty, low=0.0)
        require_number("preference_loss_weight", self.preference_loss_weight, low=0.0)
        require_number("sft_loss_weight", self.sft_loss_weight, low=0.0)
        require_bool("preference_average_log_probs", self.preference_average_log_probs)
        require_bool("sft_average_log_probs", self.sft_average_log_probs)


def _sequence_sum(values: Tensor, mask: Tensor, average: bool) -> Tensor:
    """:math:`\\sum_t m_t x_t`, or divided by :math:`\\max(1, \\sum_t m_t)` when ``average``."""
    total = (values * mask).sum(dim=-1)
    return total / mask.sum(dim=-1).clamp(min=1) if average else total


def dpo_loss(
    chosen_logprobs: Tensor,
    rejected_logprobs: Tensor,
    chosen_reference_logprobs: Tensor,
    rejected_reference_logprobs: Tensor,
    chosen_mask: Tensor,
    rejected_mask: Tensor,
    *,
    config: DPOConfig | None = None,
    pair_mask: Tensor | None = None,
    global_valid_pairs: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    r"""DPO loss (Rafailov et al., 2023) plus an optional SFT term on the chosen responses.

    Implicit reward of a response :math:`y` (sum over its response tokens, or mean with
    ``preference_average_log_probs``):

    .. math::

        \begin{aligned}
        r(y) = \sum_t m_t \big(&\log\pi_\theta(y_t) \\
        &- \log\pi_\text{ref}(y_t)\big)
        \end{aligned}

    .. math::

        \begin{aligned}
        \mathcal L = {}& w_p\,\frac{1}{N_\text{pairs}} \sum_i p_i \\
        &\times \big[-\log\sigma\big(\beta\,(r(y^+_i) - r(y^-_i))\big)\big] \\
        &+ w_s\,\frac{1}{N_\text{pairs}} \sum_i p_i \\
        &\times \big[-\textstyle\sum_t m^+_{i,t}\log\pi_\theta(y^+_{i,t})\big]
        \end{aligned}

    (the SFT sum becomes a mean over tokens with ``sft_average_log_probs``), where
    :math:`p` is ``pair_mask`` and :math:`N_\text{pairs}` = ``global_valid_pairs`` (default
    :math:`\sum_i p_i`), each denominator with NeMo RL's +1e-8. The gradient of the
    preference term scales :math:`\nabla r(y^+) - \nabla r(y^-)` by
    :math:`\beta\,\sigma\big(\beta(r(y^-) - r(y^+))\big)`: pairs the model already ranks
    correctly are down-weighted. At :math:`\pi_\theta = \pi_\text{ref}` the preference loss is :math:`\ln 2`.

    Args:
        chosen_logprobs: ``Tensor[P, T]`` :math:`\log\pi_\theta` of the chosen responses' tokens.
        rejected_logprobs: ``Tensor[P, T']`` same for the rejected responses.
        chosen_reference_logprobs: ``Tensor[P, T]`` :math:`\log\pi_\text{ref}`, chosen.
        rejected_reference_logprobs: ``Tensor[P, T']`` :math:`\log\pi_\text{ref}`, rejected.
        chosen_mask: ``Tensor[P, T]`` response-token mask of the chosen responses.
        rejected_mask: ``Tensor[P, T']`` response-token mask of the rejected responses.
        config: :class:`DPOConfig` (default NeMo RL's).
        pair_mask: ``Tensor[P]`` (default all ones).
        global_valid_pairs: valid pairs in the global batch (NeMo RL's ``global_valid_seqs / 2``).

    Returns:
        ``(loss, metrics)``; metrics: ``loss``, ``sft_loss`` (0 when ``sft_loss_weight`` is 0,
        as in NeMo RL), ``preference_loss``, ``accuracy`` (share of pairs with
        :math:`r(y^+) > r(y^-)`), ``rewards_chosen_mean`` and ``rewards_rejected_mean`` (of
        :math:`r`, *without* the factor :math:`\beta`, as NeMo RL logs them), ``num_valid_samples`` (pairs).
    """
    cfg = DPOConfig() if config is None else config
    if not isinstance(cfg, DPOConfig):
        raise TypeError(f"config must be a DPOConfig, got {type(cfg).__name__}")
    chosen = per_token_2d("chosen_logprobs", chosen_logprobs)
    rejected = per_token_2d("rejected_logprobs", rejected_logprobs)
    if rejected.shape[0] != chosen.shape[0]:
        raise ValueError(
            f"chosen_logprobs and rejected_logprobs must have the same number of pairs P, "
            f"got {chosen.shape[0]} and {rejected.shape[0]}"
        )
    n_pairs = chosen.shape[0]
    if pair_mask is None:
        pairs = torch.ones(n_pairs, dtype=chosen.dtype, device=chosen.device)
    else:
        pairs = as_mask("pair_mask", pair_mask, chosen)
        if pairs.shape != (n_pairs,):
            raise ValueError(f"pair_mask must have shape [P] = [{n_pairs}], got {list(pairs.shape)}")
    check_factors(global_valid_pairs=(global_valid_pairs, pairs.sum()))
    denominator = pairs.sum() if global_valid_pairs is None else global_valid_pairs

    def side(name: str, logprobs: Tensor, reference: object, mask: object) -> tuple[Tensor, Tensor, Tensor]:
        token_mask = as_mask(f"{name}_mask", mask, logprobs)
        if token_mask.shape != logprobs.shape:
            raise ValueError(
                f"{name}_logprobs and {name}_mask must have the same shape, "
                f"got {list(logprobs.shape)} and {list(token_mask.shape)}"
            )
        counted = (token_mask != 0) & (pairs[:, None] != 0)
        lp = per_token(f"{name}_logprobs", logprobs, logprobs, counted, like_name=f"{name}_logprobs")
        ref = per_token(
            f"{name}_reference_logprobs", reference, logprobs, counted, like_name=f"{name}_logprobs"
        ).detach()
        return lp, ref, torch.where(counted, token_mask, 0.0)

    lp_c, ref_c, mask_c = side("chosen", chosen, chosen_reference_logprobs, chosen_mask)
    lp_r, ref_r, mask_r = side("rejected", rejected, rejected_reference_logprobs, rejected_mask)

    reward_c = _sequence_sum(lp_c - ref_c, mask_c, cfg.preference_average_log_probs)
    reward_r = _sequence_sum(lp_r - ref_r, mask_r, cfg.preference_average_log_probs)
    margin = reward_c - reward_r
    preference_loss = _masked_mean(
        -torch.nn.functional.logsigmoid(cfg.reference_policy_kl_penalty * margin),
        pairs,
        global_normalization_factor=denominator,
    )

    if cfg.sft_loss_weight > 0:
        per_pair_nll = -_sequence_sum(lp_c, mask_c, cfg.sft_average_log_probs)
        sft_loss = _masked_mean(per_pair_nll, pairs, global_normalization_factor=denominator)
    else:
        sft_loss = torch.zeros((), dtype=chosen.dtype, device=chosen.device)

    loss = cfg.preference_loss_weight * preference_loss + cfg.sft_loss_weight * sft_loss

    with torch.no_grad():
        accuracy = _masked_mean((margin > 0).to(chosen.dtype), pairs, global_normalization_factor=denominator)
        chosen_mean = _masked_mean(reward_c, pairs, global_normalization_factor=denominator)
        rejected_mean = _masked_mean(reward_r, pairs, global_normalization_factor=denominator)
    return loss, {
        "loss": float(loss.detach()),
        "sft_loss": float(sft_loss.detach()),
        "preference_loss": float(preference_loss.detach()),
        "accuracy": float(accuracy),
        "rewards_chosen_mean": float(chosen_mean),
        "rewards_rejected_mean": float(rejected_mean),
        "num_valid_samples": float(pairs.sum()),
    }
