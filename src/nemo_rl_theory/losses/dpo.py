"""Direct Preference Optimization with an optional SFT term (NeMo RL's ``DPOLossFn``) and
TRL's margin-based variants of it (``loss_type``, ``label_smoothing``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nemo_rl_theory._validation import (
    as_mask,
    require_bool,
    require_finite_where,
    require_float_tensor,
    require_number,
    require_same_shape,
)
from nemo_rl_theory.losses._inputs import check_factors, per_token, per_token_2d
from nemo_rl_theory.masking import _masked_mean

#: TRL's names (``DPOConfig.loss_type``) of the variants :func:`dpo_pair_losses` implements.
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust", "exo_pair", "sppo_hard", "nca_pair", "apo_zero", "apo_down")
#: The variants that read ``label_smoothing`` (cDPO, robust DPO's flip rate, EXO's epsilon).
SMOOTHED_LOSS_TYPES = ("sigmoid", "robust", "exo_pair")


@dataclass(frozen=True)
class DPOConfig:
    """Configuration of :func:`dpo_loss`; names and defaults follow NeMo RL's ``dpo`` keys.

    ``loss_type`` and ``label_smoothing`` are not NeMo RL keys (NeMo RL 7ea279a has only the
    sigmoid loss); they carry TRL's ``DPOConfig`` names. Invalid combinations raise
    ``ValueError``: ``label_smoothing`` outside :math:`[0, 0.5)`, ``label_smoothing > 0``
    with a type that ignores it, ``"exo_pair"`` without it, ``"ipo"``/``"sppo_hard"``
    with :math:`\\beta = 0` (their target :math:`1/(2\\beta)` is undefined).
    """

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
    #: Per-pair loss of the implicit rewards, one of ``DPO_LOSS_TYPES`` (TRL's names;
    #: formulas in :func:`dpo_pair_losses`). ``"sigmoid"`` is NeMo RL's DPO.
    loss_type: str = "sigmoid"
    #: :math:`\varepsilon`: cDPO's label smoothing for ``"sigmoid"``, the label-flip rate of
    #: ``"robust"``, EXO's :math:`\varepsilon` for ``"exo_pair"``; in :math:`[0, 0.5)`.
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        require_number("reference_policy_kl_penalty", self.reference_policy_kl_penalty, low=0.0)
        require_number("preference_loss_weight", self.preference_loss_weight, low=0.0)
        require_number("sft_loss_weight", self.sft_loss_weight, low=0.0)
        require_bool("preference_average_log_probs", self.preference_average_log_probs)
        require_bool("sft_average_log_probs", self.sft_average_log_probs)
        if not isinstance(self.loss_type, str):
            raise TypeError(f"loss_type must be a str, got {type(self.loss_type).__name__}")
        if self.loss_type not in DPO_LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {list(DPO_LOSS_TYPES)}, got {self.loss_type!r}")
        require_number("label_smoothing", self.label_smoothing, low=0.0, high=0.5, high_inclusive=False)
        if self.label_smoothing > 0 and self.loss_type not in SMOOTHED_LOSS_TYPES:
            raise ValueError(
                f"label_smoothing = {self.label_smoothing} has no effect with loss_type={self.loss_type!r}; "
                f"only {list(SMOOTHED_LOSS_TYPES)} use it (set it to 0.0)"
            )
        if self.loss_type == "exo_pair" and self.label_smoothing == 0:
            raise ValueError("loss_type='exo_pair' needs label_smoothing > 0 (its log(eps) term; EXO suggests 1e-3)")
        if self.loss_type in ("ipo", "sppo_hard") and self.reference_policy_kl_penalty == 0:
            raise ValueError(
                f"loss_type={self.loss_type!r} needs reference_policy_kl_penalty > 0 (its target is 1/(2 beta))"
            )


def _sequence_sum(values: Tensor, mask: Tensor, average: bool) -> Tensor:
    """:math:`\\sum_t m_t x_t`, or divided by :math:`\\max(1, \\sum_t m_t)` when ``average``."""
    total = (values * mask).sum(dim=-1)
    return total / mask.sum(dim=-1).clamp(min=1) if average else total


def _pair_losses(reward_c: Tensor, reward_r: Tensor, cfg: DPOConfig) -> Tensor:
    """Unchecked core of :func:`dpo_pair_losses`."""
    beta, eps, kind = cfg.reference_policy_kl_penalty, cfg.label_smoothing, cfg.loss_type
    z = beta * (reward_c - reward_r)
    if kind == "sigmoid":
        clean = -F.logsigmoid(z)
        return clean if eps == 0 else (1 - eps) * clean - eps * F.logsigmoid(-z)
    if kind == "hinge":
        return torch.relu(1 - z)
    if kind == "ipo":
        return (reward_c - reward_r - 1 / (2 * beta)) ** 2
    if kind == "robust":
        return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    if kind == "exo_pair":
        log_q_win, log_q_lose = F.logsigmoid(z), F.logsigmoid(-z)
        return torch.sigmoid(z) * (log_q_win - math.log1p(-eps)) + torch.sigmoid(-z) * (log_q_lose - math.log(eps))
    if kind == "sppo_hard":
        return (reward_c - 0.5 / beta) ** 2 + (reward_r + 0.5 / beta) ** 2
    if kind == "nca_pair":
        zc, zr = beta * reward_c, beta * reward_r
        return -F.logsigmoid(zc) - 0.5 * F.logsigmoid(-zc) - 0.5 * F.logsigmoid(-zr)
    if kind == "apo_zero":
        return 1 - torch.sigmoid(beta * reward_c) + torch.sigmoid(beta * reward_r)
    # apo_down (DPOConfig admits no other name)
    return torch.sigmoid(beta * reward_c) + 1 - torch.sigmoid(z)


def dpo_pair_losses(chosen_rewards: Tensor, rejected_rewards: Tensor, *, config: DPOConfig | None = None) -> Tensor:
    r"""Per-pair preference loss :math:`\ell_i` of ``config.loss_type``, from the implicit rewards.

    :math:`r^+ = r(y^+)`, :math:`r^- = r(y^-)` are the implicit rewards of :func:`dpo_loss`
    (log-ratios to the reference, summed over response tokens, or averaged with
    ``preference_average_log_probs``; *without* the factor :math:`\beta`),
    :math:`m = r^+ - r^-` the margin, :math:`z = \beta m`, :math:`\varepsilon` =
    ``label_smoothing``. Formulas as in TRL (huggingface/trl f2cd577, 1.10.0.dev0,
    trl/trainer/dpo_trainer.py ``_compute_loss``; cDPO's ``"sigmoid"`` as in TRL v0.28.0
    cc4ab5c ``dpo_loss``: TRL dropped ``label_smoothing`` from ``"sigmoid"`` in v0.29.0):

    .. math::

        \begin{aligned}
        \text{sigmoid: }&-(1-\varepsilon)\ln\sigma(z) \\
        &-\varepsilon\ln\sigma(-z) \\
        \text{hinge: }&\max(0,\ 1 - z) \\
        \text{ipo: }&\big(m - \tfrac{1}{2\beta}\big)^2 \\
        \text{robust: }&\tfrac{-(1-\varepsilon)\ln\sigma(z)}{1 - 2\varepsilon} \\
        &+ \tfrac{\varepsilon\ln\sigma(-z)}{1 - 2\varepsilon} \\
        \text{exo\_pair: }&\sigma(z)\ln\tfrac{\sigma(z)}{1-\varepsilon} \\
        &+ \sigma(-z)\ln\tfrac{\sigma(-z)}{\varepsilon} \\
        \text{sppo\_hard: }&\big(r^+ - \tfrac{1}{2\beta}\big)^2 \\
        &+ \big(r^- + \tfrac{1}{2\beta}\big)^2 \\
        \text{nca\_pair: }&-\ln\sigma(\beta r^+) \\
        &- \tfrac12\ln\sigma(-\beta r^+) \\
        &- \tfrac12\ln\sigma(-\beta r^-) \\
        \text{apo\_zero: }&1 - \sigma(\beta r^+) \\
        &+ \sigma(\beta r^-) \\
        \text{apo\_down: }&\sigma(\beta r^+) \\
        &+ 1 - \sigma(z)
        \end{aligned}

    The first five depend on the margin :math:`m` only. TRL computes every variant from
    *summed* log-ratios except ``"ipo"``, which it length-normalises (TRL main divides each
    summed log-ratio by the response length; v0.28.0 averages the log-probs): TRL's ``"ipo"``
    is this function with ``preference_average_log_probs=True``, the IPO paper's
    sequence-level Eq. (17) the summed form. ``"sigmoid"`` with
    ``preference_average_log_probs=True`` is TRL's ``"sigmoid_norm"``.

    Args:
        chosen_rewards: ``Tensor[P]`` :math:`r(y^+)`.
        rejected_rewards: ``Tensor[P]`` :math:`r(y^-)`.
        config: :class:`DPOConfig` (its ``loss_type``, ``label_smoothing`` and
            ``reference_policy_kl_penalty`` are used).

    Returns:
        ``Tensor[P]`` of per-pair losses (differentiable in both rewards).
    """
    cfg = DPOConfig() if config is None else config
    if not isinstance(cfg, DPOConfig):
        raise TypeError(f"config must be a DPOConfig, got {type(cfg).__name__}")
    chosen = require_float_tensor("chosen_rewards", chosen_rewards)
    rejected = require_float_tensor("rejected_rewards", rejected_rewards)
    if chosen.dim() != 1:
        raise ValueError(f"chosen_rewards must have shape [P], got {list(chosen.shape)}")
    require_same_shape("chosen_rewards", chosen, "rejected_rewards", rejected)
    everywhere = torch.ones_like(chosen, dtype=torch.bool)
    require_finite_where("chosen_rewards", chosen, everywhere)
    require_finite_where("rejected_rewards", rejected, everywhere)
    return _pair_losses(chosen, rejected, cfg)


def _pairs(chosen: Tensor, rejected: Tensor, pair_mask: object | None) -> Tensor:
    """Check the two ``[P, T]`` sides agree on ``P`` and return the ``[P]`` pair mask."""
    if rejected.shape[0] != chosen.shape[0]:
        raise ValueError(
            f"chosen_logprobs and rejected_logprobs must have the same number of pairs P, "
            f"got {chosen.shape[0]} and {rejected.shape[0]}"
        )
    n_pairs = chosen.shape[0]
    if pair_mask is None:
        return torch.ones(n_pairs, dtype=chosen.dtype, device=chosen.device)
    pairs = as_mask("pair_mask", pair_mask, chosen)
    if pairs.shape != (n_pairs,):
        raise ValueError(f"pair_mask must have shape [P] = [{n_pairs}], got {list(pairs.shape)}")
    return pairs


def _side(
    name: str, logprobs: Tensor, reference: object | None, mask: object, pairs: Tensor
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Sanitised ``(logprobs, reference or None, mask)`` of one side; padding and masked pairs zeroed."""
    token_mask = as_mask(f"{name}_mask", mask, logprobs)
    if token_mask.shape != logprobs.shape:
        raise ValueError(
            f"{name}_logprobs and {name}_mask must have the same shape, "
            f"got {list(logprobs.shape)} and {list(token_mask.shape)}"
        )
    counted = (token_mask != 0) & (pairs[:, None] != 0)
    lp = per_token(f"{name}_logprobs", logprobs, logprobs, counted, like_name=f"{name}_logprobs")
    ref = None
    if reference is not None:
        ref = per_token(
            f"{name}_reference_logprobs", reference, logprobs, counted, like_name=f"{name}_logprobs"
        ).detach()
    return lp, ref, torch.where(counted, token_mask, 0.0)


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
        \mathcal L = {}& w_p\,\frac{1}{N_\text{pairs}} \sum_i p_i\,
          \ell\big(r(y^+_i), r(y^-_i)\big) \\
        &+ w_s\,\frac{1}{N_\text{pairs}} \sum_i p_i \\
        &\times \big[-\textstyle\sum_t m^+_{i,t}\log\pi_\theta(y^+_{i,t})\big]
        \end{aligned}

    where :math:`\ell` is the per-pair loss of ``config.loss_type`` (see
    :func:`dpo_pair_losses`); the default ``"sigmoid"`` with ``label_smoothing = 0`` is
    NeMo RL's :math:`\ell = -\log\sigma\big(\beta\,(r(y^+) - r(y^-))\big)`. The SFT sum
    becomes a mean over tokens with ``sft_average_log_probs``;
    :math:`p` is ``pair_mask`` and :math:`N_\text{pairs}` = ``global_valid_pairs`` (default
    :math:`\sum_i p_i`), each denominator with NeMo RL's +1e-8. The gradient of the
    sigmoid preference term scales :math:`\nabla r(y^+) - \nabla r(y^-)` by
    :math:`\beta\,\sigma\big(\beta(r(y^-) - r(y^+))\big)`: pairs the model already ranks
    correctly are down-weighted. At :math:`\pi_\theta = \pi_\text{ref}` the sigmoid preference
    loss is :math:`\ln 2`.

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
    pairs = _pairs(chosen, rejected, pair_mask)
    check_factors(global_valid_pairs=(global_valid_pairs, pairs.sum()))
    denominator = pairs.sum() if global_valid_pairs is None else global_valid_pairs

    lp_c, ref_c, mask_c = _side("chosen", chosen, chosen_reference_logprobs, chosen_mask, pairs)
    lp_r, ref_r, mask_r = _side("rejected", rejected, rejected_reference_logprobs, rejected_mask, pairs)
    assert ref_c is not None and ref_r is not None

    reward_c = _sequence_sum(lp_c - ref_c, mask_c, cfg.preference_average_log_probs)
    reward_r = _sequence_sum(lp_r - ref_r, mask_r, cfg.preference_average_log_probs)
    margin = reward_c - reward_r
    preference_loss = _masked_mean(
        _pair_losses(reward_c, reward_r, cfg), pairs, global_normalization_factor=denominator
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
