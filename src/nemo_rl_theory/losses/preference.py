"""Reference-free (SimPO, ORPO) and unpaired (KTO) preference losses, in the style of
:func:`~nemo_rl_theory.losses.dpo.dpo_loss`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from nemo_rl_theory._validation import as_mask, require_number, require_tensor
from nemo_rl_theory.losses._inputs import check_factors, per_token, per_token_2d
from nemo_rl_theory.losses.dpo import _pairs, _sequence_sum, _side
from nemo_rl_theory.masking import _masked_mean


def _average_logprobs(
    chosen_logprobs: Tensor,
    rejected_logprobs: Tensor,
    chosen_mask: Tensor,
    rejected_mask: Tensor,
    pair_mask: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Checked ``(pairs, a+, a-, lp+, mask+)`` of a reference-free pair loss; ``a`` = mean token log-prob."""
    chosen = per_token_2d("chosen_logprobs", chosen_logprobs)
    rejected = per_token_2d("rejected_logprobs", rejected_logprobs)
    pairs = _pairs(chosen, rejected, pair_mask)
    lp_c, _, mask_c = _side("chosen", chosen, None, chosen_mask, pairs)
    lp_r, _, mask_r = _side("rejected", rejected, None, rejected_mask, pairs)
    avg_c = _sequence_sum(lp_c, mask_c, True)
    avg_r = _sequence_sum(lp_r, mask_r, True)
    return pairs, avg_c, avg_r, lp_c, mask_c


def _smoothed_logistic(z: Tensor, label_smoothing: float) -> Tensor:
    clean = -F.logsigmoid(z)
    return clean if label_smoothing == 0 else (1 - label_smoothing) * clean - label_smoothing * F.logsigmoid(-z)


def simpo_loss(
    chosen_logprobs: Tensor,
    rejected_logprobs: Tensor,
    chosen_mask: Tensor,
    rejected_mask: Tensor,
    *,
    beta: float = 2.0,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
    pair_mask: Tensor | None = None,
    global_valid_pairs: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    r"""SimPO (Meng et al., 2024): a reference-free margin on *averaged* log-probs.

    With :math:`\bar a(y) = \frac{1}{|y|}\sum_t m_t \log\pi_\theta(y_t)` (mean over the
    response tokens, :math:`|y| = \max(1, \sum_t m_t)`; SimPO always length-normalises) and
    :math:`z_i = \beta\,(\bar a(y^+_i) - \bar a(y^-_i)) - \gamma`:

    .. math::

        \begin{aligned}
        \ell_i = {}&-(1-\varepsilon)\ln\sigma(z_i) \\
        &- \varepsilon\ln\sigma(-z_i) \\
        \mathcal L = {}&\frac{1}{N_\text{pairs} + 10^{-8}}\sum_i p_i\,\ell_i
        \end{aligned}

    (:math:`\varepsilon` = ``label_smoothing``, 0 in the paper). There is no reference model:
    :math:`\beta\bar a` plays the implicit reward and :math:`\gamma` is a target reward margin.
    This is TRL's ``CPOTrainer`` with ``loss_type="simpo"`` and ``cpo_alpha=0``
    (huggingface/trl f2cd577, trl/experimental/cpo/cpo_trainer.py ``cpo_loss``: it subtracts
    ``simpo_gamma / beta`` from the margin before scaling by ``beta``, i.e. the same
    :math:`z`). Defaults :math:`\beta = 2`, :math:`\gamma = 0.5` are the SimPO repository's
    (``gamma_beta_ratio = 0.25``).

    Args:
        chosen_logprobs: ``Tensor[P, T]`` :math:`\log\pi_\theta` of the chosen responses' tokens.
        rejected_logprobs: ``Tensor[P, T']`` same for the rejected responses.
        chosen_mask: ``Tensor[P, T]`` response-token mask, chosen.
        rejected_mask: ``Tensor[P, T']`` response-token mask, rejected.
        beta: :math:`\beta \ge 0`.
        gamma: target margin :math:`\gamma \ge 0`.
        label_smoothing: :math:`\varepsilon \in [0, 0.5)`.
        pair_mask: ``Tensor[P]`` (default all ones).
        global_valid_pairs: valid pairs in the global batch.

    Returns:
        ``(loss, metrics)``; metrics: ``loss``, ``accuracy`` (share of pairs with
        :math:`\bar a(y^+) > \bar a(y^-)`), ``logps_chosen_mean`` and ``logps_rejected_mean``
        (of :math:`\bar a`), ``num_valid_samples`` (pairs); means divided by :math:`N_\text{pairs}`.
    """
    require_number("beta", beta, low=0.0)
    require_number("gamma", gamma, low=0.0)
    require_number("label_smoothing", label_smoothing, low=0.0, high=0.5, high_inclusive=False)
    pairs, avg_c, avg_r, _, _ = _average_logprobs(
        chosen_logprobs, rejected_logprobs, chosen_mask, rejected_mask, pair_mask
    )
    check_factors(global_valid_pairs=(global_valid_pairs, pairs.sum()))
    z = beta * (avg_c - avg_r) - gamma
    loss = _masked_mean(_smoothed_logistic(z, label_smoothing), pairs, global_normalization_factor=global_valid_pairs)
    with torch.no_grad():
        accuracy = _masked_mean((avg_c > avg_r).to(z.dtype), pairs, global_normalization_factor=global_valid_pairs)
        chosen_mean = _masked_mean(avg_c, pairs, global_normalization_factor=global_valid_pairs)
        rejected_mean = _masked_mean(avg_r, pairs, global_normalization_factor=global_valid_pairs)
    return loss, {
        "loss": float(loss.detach()),
        "accuracy": float(accuracy),
        "logps_chosen_mean": float(chosen_mean),
        "logps_rejected_mean": float(rejected_mean),
        "num_valid_samples": float(pairs.sum()),
    }


def _log1mexp(a: Tensor) -> Tensor:
    """:math:`\\ln(1 - e^a)` for :math:`a < 0`, stable at both ends (and with finite gradients)."""
    near_zero = a > -math.log(2.0)
    a_hi = torch.where(near_zero, a, -1.0)
    a_lo = torch.where(near_zero, -1.0, a)
    return torch.where(near_zero, torch.log(-torch.expm1(a_hi)), torch.log1p(-torch.exp(a_lo)))


def orpo_loss(
    chosen_logprobs: Tensor,
    rejected_logprobs: Tensor,
    chosen_mask: Tensor,
    rejected_mask: Tensor,
    *,
    beta: float = 0.1,
    pair_mask: Tensor | None = None,
    global_valid_pairs: Tensor | float | None = None,
    global_valid_toks: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    r"""ORPO (Hong et al., 2024): SFT plus a log-odds-ratio penalty, without a reference model.

    With :math:`\bar a(y)` the *mean* token log-prob of a response (as in TRL, which reads
    :math:`e^{\bar a}` as the "probability" whose odds are taken),
    :math:`\operatorname{odds}(y) = e^{\bar a}/(1 - e^{\bar a})` and

    .. math::

        \begin{aligned}
        \lambda_i = {}&\bar a(y^+_i) - \bar a(y^-_i) \\
        &- \ln(1 - e^{\bar a(y^+_i)}) \\
        &+ \ln(1 - e^{\bar a(y^-_i)}) \\
        \mathcal L = {}&\mathcal L_\text{NLL}
          - \frac{\beta}{N_\text{pairs}}\sum_i p_i \ln\sigma(\lambda_i) \\
        \mathcal L_\text{NLL} = {}&-\frac{1}{N_\text{tok}}
          \sum_{i,t} p_i m^+_{i,t}\log\pi_\theta(y^+_{i,t})
        \end{aligned}

    (:math:`\lambda_i` is the log odds ratio :math:`\ln\frac{\operatorname{odds}(y^+)}{\operatorname{odds}(y^-)}`;
    each denominator with +1e-8). :math:`\beta` is the paper's :math:`\lambda` and TRL's
    ``ORPOConfig.beta`` (default 0.1); the NLL is token-level over the chosen responses
    (TRL's cross-entropy mean), :math:`N_\text{tok}` = ``global_valid_toks`` (default the local
    count of chosen tokens of valid pairs). TRL: huggingface/trl f2cd577,
    trl/experimental/orpo/orpo_trainer.py ``odds_ratio_loss`` and ``concatenated_forward``
    (``average_log_prob=True``), loss ``nll - mean(beta * logsigmoid(log_odds))``.
    The odds need :math:`\bar a < 0`: a valid pair whose response has mean log-prob 0
    (probability 1, or no response tokens) raises ``ValueError``.

    Args:
        chosen_logprobs: ``Tensor[P, T]`` :math:`\log\pi_\theta` of the chosen responses' tokens.
        rejected_logprobs: ``Tensor[P, T']`` same for the rejected responses.
        chosen_mask: ``Tensor[P, T]`` response-token mask, chosen.
        rejected_mask: ``Tensor[P, T']`` response-token mask, rejected.
        beta: weight :math:`\beta \ge 0` of the odds-ratio term.
        pair_mask: ``Tensor[P]`` (default all ones).
        global_valid_pairs: valid pairs in the global batch (odds-ratio term).
        global_valid_toks: chosen response tokens of valid pairs in the global batch (NLL term).

    Returns:
        ``(loss, metrics)``; metrics (TRL's names): ``loss``, ``nll_loss``, ``log_odds_ratio``
        (the mean of :math:`\ln\sigma(\lambda_i)`), ``log_odds_chosen`` (the mean of
        :math:`\lambda_i`), ``accuracy`` (share with :math:`\lambda_i > 0`), ``logps_chosen_mean``,
        ``logps_rejected_mean``, ``num_valid_samples`` (pairs); means divided by :math:`N_\text{pairs}`.
    """
    require_number("beta", beta, low=0.0)
    pairs, avg_c, avg_r, lp_c, mask_c = _average_logprobs(
        chosen_logprobs, rejected_logprobs, chosen_mask, rejected_mask, pair_mask
    )
    check_factors(
        global_valid_pairs=(global_valid_pairs, pairs.sum()),
        global_valid_toks=(global_valid_toks, mask_c.sum()),
    )
    counted = pairs != 0
    for name, avg in (("chosen", avg_c), ("rejected", avg_r)):
        bad = counted & (avg.detach() >= 0)
        if bad.any():
            first = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"orpo_loss: {name} response of pair {first} has mean log-prob {float(avg[first]):g} >= 0 "
                "(probability 1 or no response tokens); its odds are infinite"
            )
    safe_c = torch.where(counted, avg_c, -1.0)
    safe_r = torch.where(counted, avg_r, -1.0)
    log_odds = (safe_c - safe_r) - (_log1mexp(safe_c) - _log1mexp(safe_r))
    ratio = F.logsigmoid(log_odds)
    odds_term = -beta * _masked_mean(ratio, pairs, global_normalization_factor=global_valid_pairs)
    token_weights = mask_c * pairs[:, None]
    nll = -_masked_mean(lp_c, token_weights, global_normalization_factor=global_valid_toks)
    loss = nll + odds_term
    with torch.no_grad():

        def mean(x: Tensor) -> float:
            return float(_masked_mean(x, pairs, global_normalization_factor=global_valid_pairs))

        metrics = {
            "loss": float(loss.detach()),
            "nll_loss": float(nll.detach()),
            "log_odds_ratio": mean(ratio),
            "log_odds_chosen": mean(log_odds),
            "accuracy": mean((log_odds > 0).to(log_odds.dtype)),
            "logps_chosen_mean": mean(avg_c),
            "logps_rejected_mean": mean(avg_r),
            "num_valid_samples": float(pairs.sum()),
        }
    return loss, metrics


def kto_loss(
    logprobs: Tensor,
    reference_logprobs: Tensor,
    mask: Tensor,
    desirable: Tensor,
    *,
    kl_logprobs: Tensor | None = None,
    kl_reference_logprobs: Tensor | None = None,
    kl_mask: Tensor | None = None,
    kl_estimate: Tensor | float | None = None,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    sample_mask: Tensor | None = None,
    global_valid_seqs: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    r"""KTO (Ethayarajh et al., 2024): unpaired responses labelled desirable or undesirable.

    Each response carries its own label; its implicit reward is the *summed* log-ratio
    :math:`r_b = \sum_t m_{b,t}(\log\pi_\theta - \log\pi_\text{ref})(y_{b,t})`, compared with a
    reference point :math:`z_0`, a detached batch estimate of
    :math:`\mathrm{KL}(\pi_\theta\,\|\,\pi_\text{ref})` from *mismatched* pairs (prompt
    :math:`x_j` with the completion of another example, built by the caller; TRL shifts
    completions by one within the batch):

    .. math::

        \begin{aligned}
        z_0 = {}&\max\Big(0,\ \tfrac{1}{K}\textstyle\sum_k r'_k\Big) \\
        \ell_b = {}&w_D\big(1 - \sigma(\beta(r_b - z_0))\big) \\
          &\text{if } y_b \text{ desirable,} \\
        \ell_b = {}&w_U\big(1 - \sigma(\beta(z_0 - r_b))\big) \\
          &\text{if undesirable,} \\
        \mathcal L = {}&\frac{1}{N + 10^{-8}}\sum_b s_b\,\ell_b
        \end{aligned}

    where :math:`r'_k` are the summed log-ratios of the :math:`K` rows of ``kl_logprobs``
    (or :math:`z_0 = \max(0,` ``kl_estimate`` :math:`)` for an estimate already gathered over
    ranks), :math:`s` = ``sample_mask`` and :math:`N` = ``global_valid_seqs`` (default
    :math:`\sum_b s_b`): the mean over desirable *and* undesirable examples together. This is
    TRL's ``KTOTrainer`` with ``loss_type="kto"`` (huggingface/trl f2cd577,
    trl/trainer/kto_trainer.py ``_compute_loss``: summed log-probs, ``kl.clamp(min=0)``,
    detached). No gradient flows through :math:`z_0`.

    Args:
        logprobs: ``Tensor[B, T]`` :math:`\log\pi_\theta` of the response tokens.
        reference_logprobs: ``Tensor[B, T]`` :math:`\log\pi_\text{ref}` of the same tokens.
        mask: ``Tensor[B, T]`` response-token mask.
        desirable: ``Tensor[B]`` bool (or 0/1 integer) labels, TRL's ``label``.
        kl_logprobs: ``Tensor[K, T']`` :math:`\log\pi_\theta` of the mismatched completions.
        kl_reference_logprobs: ``Tensor[K, T']`` :math:`\log\pi_\text{ref}` of them.
        kl_mask: ``Tensor[K, T']`` their response-token mask.
        kl_estimate: the KL estimate instead of the three ``kl_*`` tensors (exactly one of
            the two ways must be given; ``0.0`` gives TRL's ``"apo_zero_unpaired"``-style
            fixed reference point).
        beta: :math:`\beta \ge 0`.
        desirable_weight: :math:`w_D \ge 0`.
        undesirable_weight: :math:`w_U \ge 0`.
        sample_mask: ``Tensor[B]`` (default all ones).
        global_valid_seqs: valid examples in the global batch.

    Returns:
        ``(loss, metrics)``; metrics: ``loss``, ``kl`` (:math:`z_0`), ``rewards_desirable_mean``
        and ``rewards_undesirable_mean`` (local means of :math:`r`, without :math:`\beta`; 0 when
        there are none), ``num_desirable``, ``num_undesirable``, ``num_valid_samples``.
    """
    require_number("beta", beta, low=0.0)
    require_number("desirable_weight", desirable_weight, low=0.0)
    require_number("undesirable_weight", undesirable_weight, low=0.0)
    lp = per_token_2d("logprobs", logprobs)
    n = lp.shape[0]
    labels = require_tensor("desirable", desirable)
    if labels.dtype != torch.bool:
        if labels.is_floating_point() or labels.is_complex() or not bool(((labels == 0) | (labels == 1)).all()):
            raise TypeError(f"desirable must be a bool tensor (or 0/1 integers), got dtype {labels.dtype}")
        labels = labels.bool()
    if labels.shape != (n,):
        raise ValueError(f"desirable must have shape [B] = [{n}] (B = rows of logprobs), got {list(labels.shape)}")
    if sample_mask is None:
        samples = torch.ones(n, dtype=lp.dtype, device=lp.device)
    else:
        samples = as_mask("sample_mask", sample_mask, lp)
        if samples.shape != (n,):
            raise ValueError(
                f"sample_mask must have shape [B] = [{n}] (B = rows of logprobs), got {list(samples.shape)}"
            )
    check_factors(global_valid_seqs=(global_valid_seqs, samples.sum()))
    token_mask = as_mask("mask", mask, lp)
    if token_mask.shape != lp.shape:
        raise ValueError(
            f"logprobs and mask must have the same shape, got {list(lp.shape)} and {list(token_mask.shape)}"
        )
    counted = (token_mask != 0) & (samples[:, None] != 0)
    lp_c = per_token("logprobs", lp, lp, counted)
    ref_c = per_token("reference_logprobs", reference_logprobs, lp, counted).detach()
    mask_c = torch.where(counted, token_mask, 0.0)
    reward = ((lp_c - ref_c) * mask_c).sum(-1)

    kl_given = [x is not None for x in (kl_logprobs, kl_reference_logprobs, kl_mask)]
    if kl_estimate is not None:
        if any(kl_given):
            raise ValueError("give either kl_estimate or kl_logprobs/kl_reference_logprobs/kl_mask, not both")
        if isinstance(kl_estimate, Tensor):
            if kl_estimate.numel() != 1:
                raise ValueError(f"kl_estimate must be a scalar, got shape {list(kl_estimate.shape)}")
            z0_value = float(kl_estimate.detach())
        elif isinstance(kl_estimate, (int, float)) and not isinstance(kl_estimate, bool):
            z0_value = float(kl_estimate)
        else:
            raise TypeError(f"kl_estimate must be a number or a scalar tensor, got {type(kl_estimate).__name__}")
        if not math.isfinite(z0_value):
            raise ValueError(f"kl_estimate must be finite, got {z0_value}")
        z0 = torch.tensor(max(0.0, z0_value), dtype=lp.dtype, device=lp.device)
    else:
        if not all(kl_given):
            raise ValueError(
                "kto_loss needs the KL reference point: kl_logprobs, kl_reference_logprobs and kl_mask "
                "(mismatched prompt/completion pairs), or kl_estimate"
            )
        kl_lp = per_token_2d("kl_logprobs", kl_logprobs)
        kl_tokens = as_mask("kl_mask", kl_mask, kl_lp)
        if kl_tokens.shape != kl_lp.shape:
            raise ValueError(
                f"kl_logprobs and kl_mask must have the same shape, got {list(kl_lp.shape)} and {list(kl_tokens.shape)}"
            )
        if kl_lp.shape[0] == 0:
            raise ValueError("kl_logprobs must have at least one row (K >= 1)")
        kl_counted = kl_tokens != 0
        kl_pol = per_token("kl_logprobs", kl_lp, kl_lp, kl_counted, like_name="kl_logprobs")
        kl_ref = per_token("kl_reference_logprobs", kl_reference_logprobs, kl_lp, kl_counted, like_name="kl_logprobs")
        with torch.no_grad():
            z0 = (((kl_pol - kl_ref) * kl_tokens).sum(-1).mean()).clamp(min=0)

    desirable_loss = desirable_weight * (1 - torch.sigmoid(beta * (reward - z0)))
    undesirable_loss = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - reward)))
    per_sample = torch.where(labels, desirable_loss, undesirable_loss)
    loss = _masked_mean(per_sample, samples, global_normalization_factor=global_valid_seqs)
    with torch.no_grad():
        valid = samples != 0
        d, u = valid & labels, valid & ~labels
        metrics = {
            "loss": float(loss.detach()),
            "kl": float(z0),
            "rewards_desirable_mean": float(reward[d].mean()) if d.any() else 0.0,
            "rewards_undesirable_mean": float(reward[u].mean()) if u.any() else 0.0,
            "num_desirable": float(samples[d].sum()),
            "num_undesirable": float(samples[u].sum()),
            "num_valid_samples": float(samples.sum()),
        }
    return loss, metrics
