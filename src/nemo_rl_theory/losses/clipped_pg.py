r"""Clipped policy-gradient loss for GRPO / PPO and their variants (NeMo RL's ``ClippedPGLossFn``).

One function covers PPO's clipped surrogate, GRPO, DAPO's asymmetric clip, dual clipping,
REINFORCE/RLOO (``disable_ppo_ratio``), GSPO (sequence-level ratios), CISPO, the KL penalty
to a reference policy and the train/inference importance-sampling correction with its
truncations (TIS, ICE-POP, sequence-masked TIS). Config keys and defaults are NeMo RL's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from nemo_rl_theory._numerics import exp_or_zero, saturating_exp
from nemo_rl_theory._validation import require_bool, require_number
from nemo_rl_theory.kl import _calculate_kl, check_kl_type
from nemo_rl_theory.losses._inputs import check_factors, per_token, per_token_2d, token_and_sample_masks
from nemo_rl_theory.masking import _masked_mean

TRUNCATED_IS_TYPES: tuple[str, ...] = ("tis", "icepop", "seq-mask-tis")


@dataclass(frozen=True)
class ClippedPGConfig:
    """Configuration of :func:`clipped_pg_loss`; names and defaults follow NeMo RL's ``loss_fn`` keys.

    Invalid values or combinations raise ``ValueError`` (``TypeError`` for a wrong type)
    when the config is built, naming the key.
    """

    #: :math:`\beta`, weight of the KL penalty to the reference policy (0 disables it).
    reference_policy_kl_penalty: float = 0.01
    #: Which KL estimator to use, ``"k1"``, ``"k2"`` or ``"k3"``.
    reference_policy_kl_type: str = "k3"
    #: Clamp of the log-ratio inside the KL estimator (``None`` disables).
    kl_input_clamp_value: float | None = 20.0
    #: Clamp of the weighted per-token KL (``None`` disables).
    kl_output_clamp_value: float | None = 10.0
    #: :math:`\varepsilon_\text{low}`: the ratio is clipped below at :math:`1 - \varepsilon_\text{low}`.
    ratio_clip_min: float = 0.2
    #: :math:`\varepsilon_\text{high}`: the ratio is clipped above at :math:`1 + \varepsilon_\text{high}`.
    ratio_clip_max: float = 0.2
    #: Dual-clip constant :math:`c > 1` bounding the loss for negative advantages (``None`` disables).
    ratio_clip_c: float | None = None
    #: Weight the KL by :math:`\pi_\theta / \pi_\text{gen}` (tokens were sampled by the generator).
    use_on_policy_kl_approximation: bool = False
    #: Multiply the loss by :math:`\pi_\text{prev} / \pi_\text{gen}` (train/inference mismatch).
    use_importance_sampling_correction: bool = False
    #: ``None``, ``"tis"``, ``"icepop"`` or ``"seq-mask-tis"``.
    truncated_importance_sampling_type: str | None = None
    #: Upper bound of the importance weight for truncation.
    truncated_importance_sampling_ratio: float | None = None
    #: Lower bound (required by ICE-POP and sequence-masked TIS; TIS clamps to it, default 0).
    truncated_importance_sampling_ratio_min: float | None = None
    #: One ratio per sequence (GSPO), the geometric mean of its token ratios.
    sequence_level_importance_ratios: bool = False
    #: Average over all valid tokens (True) or per sequence, then over sequences (False).
    token_level_loss: bool = True
    #: Use ratio :math:`= \exp(\log\pi_\theta - \mathrm{sg}(\log\pi_\theta)) = 1` (one update per rollout).
    force_on_policy_ratio: bool = False
    #: The surrogate is :math:`-A \log\pi_\theta` with no ratio or clipping (REINFORCE / RLOO).
    disable_ppo_ratio: bool = False
    #: The CISPO surrogate :math:`-\mathrm{sg}(\operatorname{clip}(r)) A \log\pi_\theta`.
    use_cispo: bool = False

    def __post_init__(self) -> None:
        require_number("reference_policy_kl_penalty", self.reference_policy_kl_penalty, low=0.0)
        check_kl_type("reference_policy_kl_type", self.reference_policy_kl_type)
        for key in ("kl_input_clamp_value", "kl_output_clamp_value"):
            value = getattr(self, key)
            if value is not None:
                require_number(key, value, low=0.0, low_inclusive=False)
        for field in fields(self):
            if field.type == "bool":  # annotations are strings (postponed evaluation)
                require_bool(field.name, getattr(self, field.name))

        # The clip range [1 - eps_low, 1 + eps_high] must contain 1 and stay positive. CISPO
        # clips a stop-gradient weight, where MiniMax-M1 drops the lower bound (eps_low = 1)
        # and uses a wide upper one, so its bounds are [0, 1] and [0, inf).
        if self.use_cispo:
            require_number("ratio_clip_min", self.ratio_clip_min, low=0.0, high=1.0)
            require_number("ratio_clip_max", self.ratio_clip_max, low=0.0)
        else:
            require_number("ratio_clip_min", self.ratio_clip_min, low=0.0, high=1.0, high_inclusive=False)
            require_number("ratio_clip_max", self.ratio_clip_max, low=0.0, high=1.0, high_inclusive=False)
        if self.ratio_clip_c is not None:
            require_number("ratio_clip_c", self.ratio_clip_c, low=1.0, low_inclusive=False)

        if self.sequence_level_importance_ratios and self.token_level_loss:
            raise ValueError(
                "sequence_level_importance_ratios=True (GSPO) needs token_level_loss=False: "
                "a sequence-level ratio is reduced per sequence"
            )
        if self.force_on_policy_ratio and self.disable_ppo_ratio:
            raise ValueError("force_on_policy_ratio and disable_ppo_ratio are mutually exclusive")
        if self.use_cispo:
            for key, why in (
                ("disable_ppo_ratio", "CISPO needs the ratio pi_theta / pi_prev"),
                ("force_on_policy_ratio", "a forced ratio of 1 removes the weight CISPO clips"),
                ("sequence_level_importance_ratios", "CISPO weights tokens"),
            ):
                if getattr(self, key):
                    raise ValueError(f"use_cispo=True is incompatible with {key}=True: {why}")
            if self.ratio_clip_c is not None:
                raise ValueError("use_cispo=True is incompatible with dual clipping: set ratio_clip_c=None")
            if not self.token_level_loss:
                raise ValueError("use_cispo=True requires token_level_loss=True")

        kind = self.truncated_importance_sampling_type
        ratio = self.truncated_importance_sampling_ratio
        ratio_min = self.truncated_importance_sampling_ratio_min
        if kind is None:
            if ratio is not None or ratio_min is not None:
                raise ValueError(
                    "truncated_importance_sampling_ratio(_min) is set but "
                    f"truncated_importance_sampling_type is None; choose one of {TRUNCATED_IS_TYPES}"
                )
            return
        if kind not in TRUNCATED_IS_TYPES:
            raise ValueError(
                f"truncated_importance_sampling_type must be None or one of {TRUNCATED_IS_TYPES}, got {kind!r}"
            )
        if not self.use_importance_sampling_correction:
            raise ValueError(
                f"truncated_importance_sampling_type={kind!r} requires use_importance_sampling_correction=True"
            )
        if ratio is None:
            raise ValueError(
                f"truncated_importance_sampling_type={kind!r} requires truncated_importance_sampling_ratio"
            )
        require_number("truncated_importance_sampling_ratio", ratio, low=0.0, low_inclusive=False)
        if kind in ("icepop", "seq-mask-tis"):
            if ratio_min is None:
                raise ValueError(
                    f"truncated_importance_sampling_type={kind!r} requires truncated_importance_sampling_ratio_min"
                )
        if ratio_min is not None:
            require_number("truncated_importance_sampling_ratio_min", ratio_min, low=0.0)
            if ratio_min > ratio:
                raise ValueError(
                    "truncated_importance_sampling_ratio_min must be <= truncated_importance_sampling_ratio, "
                    f"got {ratio_min} > {ratio}"
                )
        if kind == "seq-mask-tis" and self.sequence_level_importance_ratios:
            raise ValueError(
                "seq-mask-tis keeps token-level weights and is incompatible with sequence_level_importance_ratios=True"
            )


def _reduce(
    values: Tensor,
    token_mask: Tensor,
    sample_mask: Tensor,
    mask: Tensor,
    token_level: bool,
    global_valid_toks: Tensor | float,
    global_valid_seqs: Tensor | float,
) -> Tensor:
    """Token level: mean over all valid tokens. Sequence level: mean per sequence, then over sequences."""
    if token_level:
        return _masked_mean(values, mask, global_normalization_factor=global_valid_toks)
    per_sequence = _masked_mean(values, token_mask, dim=-1)
    return _masked_mean(per_sequence, sample_mask, global_normalization_factor=global_valid_seqs)


def clipped_pg_loss(
    logprobs: Tensor,
    prev_logprobs: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    config: ClippedPGConfig | None = None,
    generation_logprobs: Tensor | None = None,
    reference_logprobs: Tensor | None = None,
    sample_mask: Tensor | None = None,
    global_valid_seqs: Tensor | float | None = None,
    global_valid_toks: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    r"""Clipped policy-gradient loss with KL penalty and importance-sampling correction.

    Per token, with :math:`r_t = \exp(\log\pi_\theta - \log\pi_\text{prev})` and
    :math:`\bar r_t = \operatorname{clip}(r_t, 1-\varepsilon_\text{low}, 1+\varepsilon_\text{high})`:

    .. math::

        \begin{aligned}
        &\ell_t = \max\big(-A_t r_t,\; -A_t \bar r_t\big) \\
        &\text{then, with dual clip and } A_t < 0: \\
        &\quad \ell_t \leftarrow \min(\ell_t, -c A_t)
        \end{aligned}

    (CISPO: :math:`\ell_t = -A_t\,\mathrm{sg}(\bar r_t)\log\pi_\theta`; ``disable_ppo_ratio``:
    :math:`\ell_t = -A_t \log\pi_\theta`; GSPO: :math:`r_t` is replaced by the sequence ratio
    :math:`\exp(\frac1{|y|}\sum_t \log\frac{\pi_\theta}{\pi_\text{prev}})`.) The loss is

    .. math::

        \begin{aligned}
        \mathcal L &= \operatorname{reduce}(w_t\,\ell_t)
            + \beta\,\operatorname{reduce}\big(\mathrm{kl}_t\big), \\
        \mathrm{kl}_t &= \text{calculate\_kl}(\log\pi_\theta, \log\pi_\text{ref}, \\
            &\qquad \text{importance\_weights} = \rho_t)
        \end{aligned}

    where :math:`w_t = \pi_\text{prev}/\pi_\text{gen}` (possibly truncated) if
    ``use_importance_sampling_correction`` else 1, and the KL weight is the score-function
    factor :math:`\rho_t = e^{\log\pi_\theta - \mathrm{sg}(\log\pi_\theta)}` (value 1; its
    gradient adds the score of token :math:`t`, which makes the gradient exact for a one-token
    response, while for a sequence it gives :math:`\sum_t \nabla\,\mathrm{KL}(\pi_\theta(\cdot|s_t)
    \,\|\,\pi_\text{ref}(\cdot|s_t))` with the prefixes :math:`s_t` held fixed, missing how earlier
    tokens move the prefixes where later KL is paid; Tang & Munos 2025) or, with
    ``use_on_policy_kl_approximation``, :math:`\rho_t = \pi_\theta / \pi_\text{gen}`.

    ``reduce`` is token level (``token_level_loss``): :math:`\sum_{b,t} m_{b,t} x_{b,t} / N_\text{tok}`
    with :math:`N_\text{tok}` = ``global_valid_toks``; or sequence level:
    :math:`\sum_b s_b \big(\frac{\sum_t m_{b,t} x_{b,t}}{\sum_t m_{b,t}}\big) / N_\text{seq}` with
    :math:`N_\text{seq}` = ``global_valid_seqs``. Both default to the local counts; pass the
    global ones when the batch is split into micro-batches or ranks, and the summed
    micro-batch losses equal the full-batch loss. Every denominator carries NeMo RL's +1e-8.

    Overflow: a ratio whose log exceeds :math:`\log(\text{float max}) - 1` (87.7 in float32)
    saturates there; importance weights that would overflow count 0 (NeMo RL's
    ``nan_to_num``); a token with weight 0 contributes exactly 0. Loss and gradient stay free
    of NaN for any finite input.

    Args:
        logprobs: ``Tensor[B, T]`` :math:`\log\pi_\theta` of the sampled tokens (carries the gradient).
        prev_logprobs: ``Tensor[B, T]`` :math:`\log\pi_\text{prev}` from the policy that the
            ratio is taken against; ``None`` only with ``force_on_policy_ratio``.
        advantages: ``Tensor[B]`` or ``Tensor[B, T]``.
        mask: ``Tensor[B, T]`` token mask (1 on generated tokens).
        config: :class:`ClippedPGConfig` (default: NeMo RL's defaults).
        generation_logprobs: ``Tensor[B, T]`` :math:`\log\pi_\text{gen}` from the inference
            engine; required for the importance-sampling correction and the on-policy KL
            approximation. When absent the mismatch metrics treat it as ``prev_logprobs``.
        reference_logprobs: ``Tensor[B, T]`` :math:`\log\pi_\text{ref}`; required when the KL penalty is non-zero.
        sample_mask: ``Tensor[B]`` (default all ones).
        global_valid_seqs: number of valid sequences in the global batch.
        global_valid_toks: number of valid tokens in the global batch.

    Returns:
        ``(loss, metrics)``. Metrics (floats, NeMo RL's names; with global factors each is
        this micro-batch's share): ``loss``, ``probs_ratio``, ``probs_ratio_clamped``,
        ``probs_ratio_min/max``, ``probs_ratio_clamped_min/max``, ``clip_fraction`` (share
        of tokens whose clipped branch is active, i.e. whose surrogate gradient is cut),
        ``kl_penalty`` (the reduced KL before :math:`\beta`), ``token_mult_prob_error``,
        ``gen_kl_error``, ``policy_kl_error``, ``js_divergence_error``,
        ``sampling_importance_ratio``, ``approx_entropy``, ``num_valid_samples`` and, with
        truncation, ``is_oob_ratio``.
    """
    cfg = ClippedPGConfig() if config is None else config
    if not isinstance(cfg, ClippedPGConfig):
        raise TypeError(f"config must be a ClippedPGConfig, got {type(cfg).__name__}")
    logprobs = per_token_2d("logprobs", logprobs)
    token_mask, samples, full_mask = token_and_sample_masks(mask, sample_mask, logprobs)
    counted = full_mask != 0
    check_factors(
        global_valid_seqs=(global_valid_seqs, samples.sum()), global_valid_toks=(global_valid_toks, full_mask.sum())
    )
    n_toks = full_mask.sum() if global_valid_toks is None else global_valid_toks
    n_seqs = samples.sum() if global_valid_seqs is None else global_valid_seqs

    # --- inputs: every [B, T] tensor is checked and zeroed on padding before any arithmetic
    curr = per_token("logprobs", logprobs, logprobs, counted)
    if prev_logprobs is None:
        if not cfg.force_on_policy_ratio:
            raise ValueError("prev_logprobs is required unless force_on_policy_ratio=True")
        prev = curr.detach()
    else:
        prev = per_token("prev_logprobs", prev_logprobs, logprobs, counted).detach()
        if cfg.force_on_policy_ratio:
            prev = curr.detach()
    if not isinstance(advantages, Tensor):
        raise TypeError(f"advantages must be a torch.Tensor, got {type(advantages).__name__}")
    if advantages.dim() == 1:
        if advantages.shape[0] != logprobs.shape[0]:
            raise ValueError(f"advantages of shape [B] must have B = {logprobs.shape[0]}, got {list(advantages.shape)}")
        advantages = advantages[:, None].expand_as(logprobs)
    adv = per_token("advantages", advantages, logprobs, counted).detach()

    needs_generation = cfg.use_importance_sampling_correction or cfg.use_on_policy_kl_approximation
    if generation_logprobs is None:
        if needs_generation:
            option = (
                "use_importance_sampling_correction"
                if cfg.use_importance_sampling_correction
                else "use_on_policy_kl_approximation"
            )
            raise ValueError(f"{option}=True requires generation_logprobs")
        gen = prev
    else:
        gen = per_token("generation_logprobs", generation_logprobs, logprobs, counted).detach()

    if reference_logprobs is not None:  # checked whenever given, used only with a KL penalty
        ref = per_token("reference_logprobs", reference_logprobs, logprobs, counted).detach()
    elif cfg.reference_policy_kl_penalty != 0:
        raise ValueError(
            "reference_logprobs is required when reference_policy_kl_penalty != 0 "
            f"(got {cfg.reference_policy_kl_penalty}); pass them or set the penalty to 0"
        )
    else:
        ref = None

    def mean_over_tokens(x: Tensor) -> Tensor:
        return _masked_mean(x, full_mask, global_normalization_factor=n_toks)

    # --- train/inference mismatch diagnostics (no gradient)
    with torch.no_grad():
        token_mult_prob_error = mean_over_tokens(torch.exp((gen - prev).abs()))
        no_clamp = {"kl_type": cfg.reference_policy_kl_type, "input_clamp_value": None, "output_clamp_value": None}
        gen_kl_error = mean_over_tokens(_calculate_kl(gen, prev, **no_clamp))
        policy_kl_error = mean_over_tokens(_calculate_kl(prev, gen, **no_clamp))
        log_mixture = torch.logaddexp(prev, gen) - math.log(2.0)
        js = 0.5 * (torch.expm1(prev - log_mixture) - (prev - log_mixture))
        js = js + 0.5 * (torch.expm1(gen - log_mixture) - (gen - log_mixture))
        js_divergence_error = mean_over_tokens(js)

    # --- KL penalty to the reference policy
    if ref is not None and cfg.reference_policy_kl_penalty != 0:
        if cfg.use_on_policy_kl_approximation:
            kl_weights = exp_or_zero(curr - gen)  # an overflowing weight counts 0, as in NeMo RL
        else:
            kl_weights = torch.exp(curr - curr.detach())
        per_token_kl = cfg.reference_policy_kl_penalty * _calculate_kl(
            curr,
            ref,
            kl_type=cfg.reference_policy_kl_type,
            input_clamp_value=cfg.kl_input_clamp_value,
            output_clamp_value=cfg.kl_output_clamp_value,
            importance_weights=kl_weights,
        )
        kl = _reduce(per_token_kl, token_mask, samples, full_mask, cfg.token_level_loss, n_toks, n_seqs)
    else:
        kl = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)

    # --- ratios and the clipped surrogate
    low, high = 1.0 - cfg.ratio_clip_min, 1.0 + cfg.ratio_clip_max
    if cfg.force_on_policy_ratio:
        ratios = torch.exp(curr - curr.detach())
        ratios_clamped = ratios
    elif cfg.disable_ppo_ratio:
        ratios = curr
        ratios_clamped = curr
    else:
        log_ratios = curr - prev
        # Saturating exp: a ratio that would overflow (log-ratio > ~88 in float32) is capped,
        # keeping the gradient of the inactive branch of max() at 0 instead of 0 * inf = NaN.
        if cfg.sequence_level_importance_ratios:
            seq_log_ratio = _masked_mean(log_ratios, token_mask, dim=-1)
            ratios = saturating_exp(seq_log_ratio)[:, None].expand_as(curr)
        else:
            ratios = saturating_exp(log_ratios)
        ratios_clamped = ratios.clamp(low, high)

    if cfg.use_cispo:
        clip_loss = -adv * ratios_clamped.detach() * curr
        clip_active = ratios_clamped.detach() != ratios.detach()
    else:
        unclipped = -adv * ratios
        clipped = -adv * ratios_clamped
        clip_loss = torch.maximum(unclipped, clipped)
        clip_active = clipped.detach() > unclipped.detach()
    if cfg.ratio_clip_c is not None:
        dual = -adv * cfg.ratio_clip_c
        dual_active = (adv < 0) & (dual < clip_loss.detach())
        clip_loss = torch.where(adv < 0, torch.minimum(clip_loss, dual), clip_loss)
        clip_active = clip_active | dual_active

    # --- importance weights pi_prev / pi_gen (no gradient: prev and gen are data)
    is_metrics: dict[str, float] = {}
    if cfg.sequence_level_importance_ratios:
        # Token mask, not token * sample mask: a fractional sample weight (exact.expectation_weights)
        # weighs the sequence, it does not scale its log importance weight.
        seq_log_w = ((prev - gen) * token_mask).sum(dim=-1)
        actor_weights = exp_or_zero(seq_log_w)[:, None]  # overflow -> 0, as NeMo RL
    else:
        actor_weights = exp_or_zero(prev - gen)
    kind = cfg.truncated_importance_sampling_type
    if kind == "tis":
        # Clamp to [min, max]; the lower bound defaults to 0 (plain upper truncation).
        tis_min = cfg.truncated_importance_sampling_ratio_min or 0.0
        tis_max = cfg.truncated_importance_sampling_ratio
        out_of_bounds = (actor_weights > tis_max) | (actor_weights < tis_min)
        is_metrics["is_oob_ratio"] = float(mean_over_tokens(out_of_bounds.expand_as(curr).to(curr.dtype)))
        actor_weights = actor_weights.clamp(min=tis_min, max=tis_max)
    elif kind == "icepop":
        kept = (actor_weights >= cfg.truncated_importance_sampling_ratio_min) & (
            actor_weights <= cfg.truncated_importance_sampling_ratio
        )
        is_metrics["is_oob_ratio"] = float(mean_over_tokens((~kept).expand_as(curr).to(curr.dtype)))
        actor_weights = torch.where(kept, actor_weights, 0.0)
    elif kind == "seq-mask-tis":
        geo_mean = torch.exp(_masked_mean(prev - gen, token_mask, dim=-1))
        kept_seq = (geo_mean >= cfg.truncated_importance_sampling_ratio_min) & (
            geo_mean <= cfg.truncated_importance_sampling_ratio
        )
        dropped = (~kept_seq).to(curr.dtype)
        is_metrics["is_oob_ratio"] = float(_masked_mean(dropped, samples, global_normalization_factor=n_seqs))
        actor_weights = actor_weights * kept_seq.to(curr.dtype)[:, None]
    weights = actor_weights if cfg.use_importance_sampling_correction else None

    # Select, don't multiply: a dropped token (weight 0) contributes 0 even if its surrogate
    # overflowed to inf, where 0 * inf would be NaN.
    weighted = clip_loss if weights is None else torch.where(weights != 0, weights * clip_loss, 0.0)
    actor_loss = _reduce(weighted, token_mask, samples, full_mask, cfg.token_level_loss, n_toks, n_seqs)
    loss = actor_loss + kl

    # --- metrics
    with torch.no_grad():
        if cfg.sequence_level_importance_ratios:
            sampling_importance_ratio = _masked_mean(actor_weights[:, 0], samples, global_normalization_factor=n_seqs)
        else:
            sampling_importance_ratio = mean_over_tokens(actor_weights)
        approx_entropy = -mean_over_tokens(torch.exp(curr - gen) * curr)
        r = ratios.detach()
        rc = ratios_clamped.detach()
        if counted.any():
            extrema = {
                "probs_ratio_min": float(r[counted].min()),
                "probs_ratio_max": float(r[counted].max()),
                "probs_ratio_clamped_min": float(rc[counted].min()),
                "probs_ratio_clamped_max": float(rc[counted].max()),
            }
        else:  # the identities of min/max, so metrics of empty micro-batches combine correctly
            extrema = {
                "probs_ratio_min": math.inf,
                "probs_ratio_max": -math.inf,
                "probs_ratio_clamped_min": math.inf,
                "probs_ratio_clamped_max": -math.inf,
            }
        beta = cfg.reference_policy_kl_penalty
        metrics = {
            "loss": float(loss.detach()),
            "probs_ratio": float(mean_over_tokens(r)),
            "probs_ratio_clamped": float(mean_over_tokens(rc)),
            **extrema,
            "clip_fraction": float(mean_over_tokens(clip_active.to(curr.dtype))),
            "kl_penalty": float(kl.detach()) / beta if beta != 0 else 0.0,
            "token_mult_prob_error": float(token_mult_prob_error),
            "gen_kl_error": float(gen_kl_error),
            "policy_kl_error": float(policy_kl_error),
            "js_divergence_error": float(js_divergence_error),
            "sampling_importance_ratio": float(sampling_importance_ratio),
            "num_valid_samples": float(samples.sum()),
            "approx_entropy": float(approx_entropy),
            **is_metrics,
        }
    return loss, metrics
