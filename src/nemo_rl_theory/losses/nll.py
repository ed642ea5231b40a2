"""Supervised fine-tuning: token-level negative log-likelihood (NeMo RL's ``NLLLoss``)."""

from __future__ import annotations

from torch import Tensor

from nemo_rl_theory.losses._inputs import check_factors, per_token, per_token_2d, token_and_sample_masks
from nemo_rl_theory.masking import _masked_mean


def nll_loss(
    logprobs: Tensor,
    mask: Tensor,
    *,
    global_valid_toks: Tensor | float | None = None,
    sample_mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    r"""Negative log-likelihood averaged over the valid tokens of the global batch.

    .. math::

        \begin{aligned}
        \mathcal L_\text{SFT} = {}&-\frac{1}{N_\text{tok} + 10^{-8}} \\
        &\times \sum_{b,t} m_{b,t}\, s_b \log\pi_\theta(y_{b,t})
        \end{aligned}

    where :math:`m` is the token ``mask`` (1 on response tokens, 0 on prompt and padding),
    :math:`s` the ``sample_mask`` and :math:`N_\text{tok}` = ``global_valid_toks`` (default:
    the local count :math:`\sum m_{b,t} s_b`). This is token-level normalisation: every
    token weighs the same, so long sequences weigh more than short ones.

    Args:
        logprobs: ``Tensor[B, T]`` log-probs of the target tokens (e.g. from
            :func:`~nemo_rl_theory.logprobs.token_logprobs`).
        mask: ``Tensor[B, T]`` token mask.
        global_valid_toks: valid tokens in the global batch (for micro-batching / data parallel).
        sample_mask: ``Tensor[B]`` (default all ones).

    Returns:
        ``(loss, metrics)``; metrics: ``loss``, ``num_unmasked_tokens``, ``num_valid_samples``.
    """
    logprobs = per_token_2d("logprobs", logprobs)
    _, samples, full_mask = token_and_sample_masks(mask, sample_mask, logprobs)
    check_factors(global_valid_toks=(global_valid_toks, full_mask.sum()))
    clean = per_token("logprobs", logprobs, logprobs, full_mask != 0)
    loss = -_masked_mean(clean, full_mask, global_normalization_factor=global_valid_toks)
    return loss, {
        "loss": float(loss.detach()),
        "num_unmasked_tokens": float(full_mask.sum()),
        "num_valid_samples": float(samples.sum()),
    }
