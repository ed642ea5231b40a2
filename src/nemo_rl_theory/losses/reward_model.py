"""Bradley-Terry reward-model loss (NeMo RL's ``PreferenceLossFn``, used by ``rm.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nemo_rl_theory._validation import as_mask, require_finite_where, require_float_tensor, require_same_shape
from nemo_rl_theory.losses._inputs import check_factors
from nemo_rl_theory.masking import _masked_mean


def bradley_terry_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    *,
    pair_mask: Tensor | None = None,
    global_valid_pairs: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    r"""Bradley-Terry loss of a scalar reward model on preference pairs.

    The reward model scores each response with one number (the squeezed last-layer
    output); the loss is the negative log-likelihood of the preferences under the
    Bradley-Terry model :math:`P(y^+ \succ y^-) = \sigma(r^+ - r^-)` (Bradley & Terry, 1952;
    Ouyang et al., 2022), with no :math:`\beta` (NeMo RL calls it with :math:`\beta = 1`):

    .. math::

        \begin{aligned}
        \mathcal L = {}&\frac{1}{N_\text{pairs} + 10^{-8}} \\
        &\times \sum_i p_i\,\big[-\ln\sigma(r^+_i - r^-_i)\big]
        \end{aligned}

    where :math:`p` is ``pair_mask`` and :math:`N_\text{pairs}` = ``global_valid_pairs``
    (NeMo RL's ``global_valid_seqs / 2``; default :math:`\sum_i p_i`). Its gradient in
    :math:`r^+_i` is :math:`-p_i\,\sigma(r^-_i - r^+_i)/N_\text{pairs}`, and the loss depends only
    on reward *differences*: adding a constant to every reward changes nothing. This is
    NeMo RL 7ea279a, nemo_rl/algorithms/loss/loss_functions.py ``PreferenceLossFn`` (with
    ``nemo_rl/algorithms/rm.py``), which reads chosen and rejected as the even and odd rows
    of one batch; here they are two ``[P]`` tensors. NeMo RL multiplies the per-pair loss
    by the sample mask before its masked mean (a 0/1 mask gives the same numbers); here
    masked-out pairs may hold NaN/inf and stay inert.

    Args:
        chosen_rewards: ``Tensor[P]`` reward-model scores :math:`r^+` of the chosen responses.
        rejected_rewards: ``Tensor[P]`` scores :math:`r^-` of the rejected responses.
        pair_mask: ``Tensor[P]`` (default all ones); NeMo RL's ``sample_mask[::2]``.
        global_valid_pairs: valid pairs in the global batch, for micro-batches / data
            parallel (the results of all micro-batches then sum to the full-batch values).

    Returns:
        ``(loss, metrics)``; metrics as NeMo RL's: ``loss``, ``accuracy`` (share of pairs with
        :math:`r^+ > r^-`, ties wrong), ``rewards_chosen_mean``, ``rewards_rejected_mean``
        (all divided by :math:`N_\text{pairs}`) and ``num_valid_samples`` (:math:`\sum_i p_i`).
    """
    chosen = require_float_tensor("chosen_rewards", chosen_rewards)
    rejected = require_float_tensor("rejected_rewards", rejected_rewards)
    if chosen.dim() != 1:
        raise ValueError(
            f"chosen_rewards must have shape [P] (squeeze the reward head's last dim), got {list(chosen.shape)}"
        )
    require_same_shape("chosen_rewards", chosen, "rejected_rewards", rejected)
    if pair_mask is None:
        pairs = torch.ones_like(chosen)
    else:
        pairs = as_mask("pair_mask", pair_mask, chosen)
        if pairs.shape != chosen.shape:
            raise ValueError(f"pair_mask must have shape [P] = [{chosen.shape[0]}], got {list(pairs.shape)}")
    counted = pairs != 0
    require_finite_where("chosen_rewards", chosen, counted)
    require_finite_where("rejected_rewards", rejected, counted)
    check_factors(global_valid_pairs=(global_valid_pairs, pairs.sum()))
    r_c = torch.where(counted, chosen, 0.0)
    r_r = torch.where(counted, rejected, 0.0)
    loss = _masked_mean(-F.logsigmoid(r_c - r_r), pairs, global_normalization_factor=global_valid_pairs)
    with torch.no_grad():
        accuracy = _masked_mean((r_c > r_r).to(chosen.dtype), pairs, global_normalization_factor=global_valid_pairs)
        chosen_mean = _masked_mean(r_c, pairs, global_normalization_factor=global_valid_pairs)
        rejected_mean = _masked_mean(r_r, pairs, global_normalization_factor=global_valid_pairs)
    return loss, {
        "loss": float(loss.detach()),
        "accuracy": float(accuracy),
        "rewards_chosen_mean": float(chosen_mean),
        "rewards_rejected_mean": float(rejected_mean),
        "num_valid_samples": float(pairs.sum()),
    }
