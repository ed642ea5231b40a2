r"""Clipped policy-gradient loss for GRPO / PPO and their variants (NeMo RL's ``ClippedPGLossFn``).

One function covers PPO's clipped surrogate, GRPO, DAPO's asymmetric clip, dual clipping,
REINFORCE/RLOO (``disable_ppo_ratio``), GSPO (sequence-level ratios), CISPO, the KL penalty
to a reference policy (or none, when the KL is moved into the reward), VAPO's positive-example
NLL and the train/inference importance-sampling correction with its truncations (TIS,
ICE-POP, sequence-masked TIS). Config keys and defaults are NeMo RL's.

:func:`clipped_pg_loss` is a short pipeline of exported stages, which a custom variant can
recombine or replace one at a time:

1. :func:`policy_ratios`: :math:`r_t` (token, sequence-level GSPO, forced on-policy, disabled);
2. :func:`clipped_surrogate`: per-token loss and clip-active mask (clip, clip-higher, dual
   clip, CISPO, REINFORCE);
3. :func:`actor_importance_weights`: :math:`\pi_\text{prev}/\pi_\text{gen}` with TIS, ICE-POP
   or sequence-masked TIS;
4. :func:`reference_kl_penalty`: per-token :math:`\beta\,\mathrm{kl}_t` with its clamps and
   score-function weight;
5. :func:`reduce_per_token_loss`: token-level or sequence-level mean with global counts;
6. :func:`positive_example_nll`: VAPO's NLL on positive-reward samples.

Each stage checks its own inputs when called directly; :func:`clipped_pg_loss` checks the
batch once and calls the stages' unchecked cores (the ``_``-prefixed functions).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from nemo_rl_theory._numerics import exp_or_zero, saturating_exp
from nemo_rl_theory._validation import require_bool, require_number, require_same_shape, require_tensor
from nemo_rl_theory.kl import _calculate_kl, check_kl_type
from nemo_rl_theory.losses._inputs import check_factors, per_token, per_token_2d, token_and_sample_masks
from nemo_rl_theory.masking import _masked_mean

TRUNCATED_IS_TYPES: tuple[str, ...] = ("tis", "icepop", "seq-mask-tis")
RatioType = Literal["token", "sequence", "on_policy", "disabled"]
RATIO_TYPES: tuple[str, ...] = ("token", "sequence", "on_policy", "disabled")


# ---------------------------------------------------------------------------------------------
# Argument checks shared by the config and the stages
# ---------------------------------------------------------------------------------------------


def _check_clip(
    ratio_clip_min: float | None,
    ratio_clip_max: float | None,
    ratio_clip_c: float | None,
    use_cispo: bool,
    *,
    optional: bool = False,
) -> None:
    """The clip range [1 - eps_low, 1 + eps_high] must contain 1 and stay positive.

    CISPO clips a stop-gradient weight, where MiniMax-M1 drops the lower bound (eps_low = 1)
    and uses a wide upper one, so its bounds are [0, 1] and [0, inf). ``optional``: ``None``
    (no clipping on that side) is allowed for ``eps_low`` / ``eps_high``.
    """
    if ratio_clip_min is not None or not optional:
        require_number("ratio_clip_min", ratio_clip_min, low=0.0, high=1.0, high_inclusive=use_cispo)
    if ratio_clip_max is not None or not optional:
        high = None if use_cispo else 1.0
        require_number("ratio_clip_max", ratio_clip_max, low=0.0, high=high, high_inclusive=use_cispo)
    if ratio_clip_c is not None:
        require_number("ratio_clip_c", ratio_clip_c, low=1.0, low_inclusive=False)
        if use_cispo:
            raise ValueError("use_cispo=True is incompatible with dual clipping: set ratio_clip_c=None")


def _check_truncation(kind: str | None, ratio: float | None, ratio_min: float | None, sequence_level: bool) -> None:
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
    if ratio is None:
        raise ValueError(f"truncated_importance_sampling_type={kind!r} requires truncated_importance_sampling_ratio")
    require_number("truncated_importance_sampling_ratio", ratio, low=0.0, low_inclusive=False)
    if kind in ("icepop", "seq-mask-tis") and ratio_min is None:
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
    if kind == "seq-mask-tis" and sequence_level:
        raise ValueError(
            "seq-mask-tis keeps token-level weights and is incompatible with sequence_level_importance_ratios=True"
        )


def _check_kl_options(kl_type: object, input_clamp: object, output_clamp: object) -> None:
    check_kl_type("reference_policy_kl_type", kl_type)
    for key, value in (("kl_input_clamp_value", input_clamp), ("kl_output_clamp_value", output_clamp)):
        if value is not None:
            require_number(key, value, low=0.0, low_inclusive=False)


def _per_token_advantages(advantages: object, like: Tensor, counted: Tensor) -> Tensor:
    """``Tensor[B]`` (one advantage per sequence) or ``Tensor[B, T]``, checked, zeroed on padding, detached."""
    adv = require_tensor("advantages", advantages)
    if adv.dim() == 1:
        if adv.shape[0] != like.shape[0]:
            raise ValueError(f"advantages of shape [B] must have B = {like.shape[0]}, got {list(adv.shape)}")
        adv = adv[:, None].expand_as(like)
    return per_token("advantages", adv, like, counted).detach()


def _masks(
    logprobs_name: str, logprobs: object, mask: object, sample_mask: object | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Check a ``[B, T]`` log-prob tensor and its masks; return it, the masks and the counted positions."""
    lp = per_token_2d(logprobs_name, logprobs)
    if logprobs_name != "logprobs":  # token_and_sample_masks names the first tensor "logprobs"
        require_same_shape(logprobs_name, lp, "mask", require_tensor("mask", mask))
    token_mask, samples, full_mask = token_and_sample_masks(mask, sample_mask, lp)
    return lp, token_mask, samples, full_mask, full_mask != 0


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


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
    #: The KL penalty is paid in the reward (Reinforce++, by the advantage estimator), so the
    #: loss has no KL term, whatever ``reference_policy_kl_penalty`` says (NeMo RL 7ea279a,
    #: ``ClippedPGLossFn`` sets its penalty to 0). NeMo RL's trainer also rejects this with a
    #: non-zero penalty under ``force_on_policy_ratio`` (``grpo.py``,
    #: ``_validate_use_kl_in_reward_compat``: the reward's KL would read the zero-filled
    #: ``prev_logprobs``); that is a trainer check about the advantage, not the loss, so it is
    #: not repeated here.
    use_kl_in_reward: bool = False
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
    #: :math:`\mu` of VAPO's positive-example NLL, added as :math:`\mu\,\mathcal L_\text{NLL}` on the
    #: tokens of samples with reward > 0 (0 disables). Here ``rewards`` are then required; NeMo RL
    #: 7ea279a skips the term when its batch has no ``rewards`` key, which PPO's train data has
    #: (``ppo.py``) and GRPO's does not (``grpo.py``), so there the weight is silently inactive.
    positive_example_nll_weight: float = 0.0

    def __post_init__(self) -> None:
        require_number("reference_policy_kl_penalty", self.reference_policy_kl_penalty, low=0.0)
        _check_kl_options(self.reference_policy_kl_type, self.kl_input_clamp_value, self.kl_output_clamp_value)
        require_number("positive_example_nll_weight", self.positive_example_nll_weight, low=0.0)
        for field in fields(self):
            if field.type == "bool":  # annotations are strings (postponed evaluation)
                require_bool(field.name, getattr(self, field.name))
        if self.use_cispo:
            for key, why in (
                ("disable_ppo_ratio", "CISPO needs the ratio pi_theta / pi_prev"),
                ("force_on_policy_ratio", "a forced ratio of 1 removes the weight CISPO clips"),
                ("sequence_level_importance_ratios", "CISPO weights tokens"),
            ):
                if getattr(self, key):
                    raise ValueError(f"use_cispo=True is incompatible with {key}=True: {why}")
            if not self.token_level_loss:
                raise ValueError("use_cispo=True requires token_level_loss=True")
        _check_clip(self.ratio_clip_min, self.ratio_clip_max, self.ratio_clip_c, self.use_cispo)
        if self.sequence_level_importance_ratios and self.token_level_loss:
            raise ValueError(
                "sequence_level_importance_ratios=True (GSPO) needs token_level_loss=False: "
                "a sequence-level ratio is reduced per sequence"
            )
        if self.force_on_policy_ratio and self.disable_ppo_ratio:
            raise ValueError("force_on_policy_ratio and disable_ppo_ratio are mutually exclusive")
        kind = self.truncated_importance_sampling_type
        if kind is not None and not self.use_importance_sampling_correction:
            raise ValueError(
                f"truncated_importance_sampling_type={kind!r} requires use_importance_sampling_correction=True"
            )
        _check_truncation(
            kind,
            self.truncated_importance_sampling_ratio,
            self.truncated_importance_sampling_ratio_min,
            self.sequence_level_importance_ratios,
        )

    @property
    def ratio_type(self) -> RatioType:
        """The :func:`policy_ratios` mode these flags select."""
        if self.force_on_policy_ratio:
            return "on_policy"
        if self.disable_ppo_ratio:
            return "disabled"
        return "sequence" if self.sequence_level_importance_ratios else "token"

    @property
    def kl_penalty_in_loss(self) -> float:
        r"""The :math:`\beta` the loss applies: ``reference_policy_kl_penalty``, or 0 with ``use_kl_in_reward``."""
        return 0.0 if self.use_kl_in_reward else self.reference_policy_kl_penalty


# ---------------------------------------------------------------------------------------------
# Stage 1: ratios
# ---------------------------------------------------------------------------------------------


def policy_ratios(
    logprobs: Tensor, prev_logprobs: Tensor | None, mask: Tensor, *, ratio_type: RatioType = "token"
) -> Tensor:
    r"""The probability ratio :math:`r_t` that the surrogate clips (NeMo RL's ``ratios``).

    .. math::

        \begin{aligned}
        \text{token: } & r_t = e^{\delta_t} \\
        \text{sequence: } & r_t = \exp\Big(
            \tfrac{1}{|y|}\textstyle\sum_{s} m_s \delta_s\Big) \\
        \text{on\_policy: } & r_t = e^{\ell_t
            - \mathrm{sg}(\ell_t)} = 1 \\
        \text{disabled: } & r_t = \ell_t
        \end{aligned}

    with :math:`\ell_t = \log\pi_\theta(y_t)`, :math:`\delta_t = \ell_t - \log\pi_\text{prev}(y_t)`
    and :math:`|y| = \sum_s m_s + 10^{-8}`. ``"sequence"`` is GSPO's geometric-mean ratio
    (``sequence_level_importance_ratios``), the same for every token of a row;
    ``"on_policy"`` (``force_on_policy_ratio``) has value 1 and the gradient of
    :math:`\log\pi_\theta`; ``"disabled"`` (``disable_ppo_ratio``) puts the log-prob where the
    ratio was, so the surrogate becomes REINFORCE's :math:`-A\log\pi_\theta`. Token and
    sequence ratios saturate at :math:`\exp(\log(\text{float max}) - 1)` instead of overflowing.
    NeMo RL 7ea279a, ``nemo_rl/algorithms/loss/loss_functions.py`` (``ClippedPGLossFn``).

    Args:
        logprobs: ``Tensor[B, T]`` :math:`\log\pi_\theta` (carries the gradient).
        prev_logprobs: ``Tensor[B, T]`` :math:`\log\pi_\text{prev}` (no gradient); required by
            ``"token"`` and ``"sequence"``, ignored by the other two (may be ``None``).
        mask: ``Tensor[B, T]`` token mask; positions with 0 may hold anything (``-inf``,
            NaN) and stay inert.
        ratio_type: ``"token"``, ``"sequence"``, ``"on_policy"`` or ``"disabled"``
            (:attr:`ClippedPGConfig.ratio_type`).

    Returns:
        ``Tensor[B, T]``. Masked positions hold 1 (``"token"``, ``"on_policy"``), 0
        (``"disabled"``) or the row's ratio (``"sequence"``); reduce with the mask.
    """
    if ratio_type not in RATIO_TYPES:
        raise ValueError(f"ratio_type must be one of {RATIO_TYPES}, got {ratio_type!r}")
    lp, token_mask, _, _, counted = _masks("logprobs", logprobs, mask)
    curr = per_token("logprobs", lp, lp, counted)
    if prev_logprobs is None:
        if ratio_type in ("token", "sequence"):
            raise ValueError(f"prev_logprobs is required with ratio_type={ratio_type!r}")
        prev = None
    else:
        prev = per_token("prev_logprobs", prev_logprobs, lp, counted).detach()
    return _policy_ratios(curr, prev, token_mask, ratio_type)


def _policy_ratios(curr: Tensor, prev: Tensor | None, token_mask: Tensor, ratio_type: str) -> Tensor:
    if ratio_type == "on_policy":
        return torch.exp(curr - curr.detach())
    if ratio_type == "disabled":
        return curr
    log_ratios = curr - prev
    # Saturating exp: a ratio that would overflow (log-ratio > ~88 in float32) is capped,
    # keeping the gradient of the inactive branch of max() at 0 instead of 0 * inf = NaN.
    if ratio_type == "sequence":
        return saturating_exp(_masked_mean(log_ratios, token_mask, dim=-1))[:, None].expand_as(curr)
    return saturating_exp(log_ratios)


# ---------------------------------------------------------------------------------------------
# Stage 2: the clipped surrogate
# ---------------------------------------------------------------------------------------------


class Surrogate(NamedTuple):
    """Output of :func:`clipped_surrogate`."""

    #: The per-token surrogate loss :math:`\ell_t`, ``Tensor[B, T]`` (not reduced).
    loss: Tensor
    #: The clamped ratios :math:`\bar r_t`, ``Tensor[B, T]`` (the ratios where nothing is clipped).
    ratios_clamped: Tensor
    #: Where the clipped or dual-clipped branch is active (the gradient is cut), bool ``Tensor[B, T]``.
    clip_active: Tensor


def clipped_surrogate(
    ratios: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    ratio_clip_min: float | None = 0.2,
    ratio_clip_max: float | None = 0.2,
    ratio_clip_c: float | None = None,
    use_cispo: bool = False,
    logprobs: Tensor | None = None,
) -> Surrogate:
    r"""Per-token clipped surrogate loss (PPO / GRPO / DAPO clip-higher / dual clip / CISPO / REINFORCE).

    With :math:`\bar r_t = \operatorname{clip}(r_t,\,1-\varepsilon_\text{low},\,1+\varepsilon_\text{high})`:

    .. math::

        \begin{aligned}
        \ell_t &= \max\big(-A_t r_t,\, -A_t \bar r_t\big) \\
        \text{CISPO: } \ell_t &= -A_t\,\mathrm{sg}(\bar r_t)
            \log\pi_\theta \\
        \text{dual clip: } \ell_t
            &\leftarrow \min(\ell_t,\, -c A_t)
        \end{aligned}

    (the dual clip applies where :math:`A_t < 0`; :math:`\log\pi_\theta = \log\pi_\theta(y_t)`).

    ``ratio_clip_min`` / ``ratio_clip_max`` are :math:`\varepsilon_\text{low}` /
    :math:`\varepsilon_\text{high}` (``None``: that side is not clipped; both ``None`` for
    forced on-policy and REINFORCE ratios, where :math:`\ell_t = -A_t r_t`). Clip-higher (DAPO)
    is :math:`\varepsilon_\text{high} > \varepsilon_\text{low}`. ``clip_active`` marks tokens
    whose clipped term is strictly larger than the unclipped one, or (CISPO) whose weight is
    clamped, or whose dual clip binds. NeMo RL 7ea279a,
    ``nemo_rl/algorithms/loss/loss_functions.py`` (``ClippedPGLossFn``).

    Args:
        ratios: ``Tensor[B, T]`` from :func:`policy_ratios` (carries the gradient).
        advantages: ``Tensor[B]`` or ``Tensor[B, T]`` (no gradient).
        mask: ``Tensor[B, T]`` token mask; masked positions may hold anything and give 0.
        ratio_clip_min: :math:`\varepsilon_\text{low} \in [0, 1)` (CISPO: :math:`[0, 1]`).
        ratio_clip_max: :math:`\varepsilon_\text{high} \in [0, 1)` (CISPO: :math:`[0, \infty)`).
        ratio_clip_c: dual-clip constant :math:`c > 1` (``None`` disables; not with CISPO).
        use_cispo: use CISPO's surrogate; needs ``logprobs``.
        logprobs: ``Tensor[B, T]`` :math:`\log\pi_\theta` for CISPO (carries the gradient).

    Returns:
        :class:`Surrogate` ``(loss, ratios_clamped, clip_active)``, each ``Tensor[B, T]``.
    """
    require_bool("use_cispo", use_cispo)
    _check_clip(ratio_clip_min, ratio_clip_max, ratio_clip_c, use_cispo, optional=True)
    r, _, _, _, counted = _masks("ratios", ratios, mask)
    r = per_token("ratios", r, r, counted, like_name="ratios")
    adv = _per_token_advantages(advantages, r, counted)
    if use_cispo:
        if logprobs is None:
            raise ValueError("use_cispo=True requires logprobs (the surrogate is -A sg(clip(r)) log pi)")
        curr = per_token("logprobs", logprobs, r, counted, like_name="ratios")
    elif logprobs is not None:
        raise ValueError("logprobs is used only with use_cispo=True; pass None otherwise")
    else:
        curr = None
    low = None if ratio_clip_min is None else 1.0 - ratio_clip_min
    high = None if ratio_clip_max is None else 1.0 + ratio_clip_max
    return _clipped_surrogate(r, adv, low, high, ratio_clip_c, curr)


def _clipped_surrogate(
    ratios: Tensor, adv: Tensor, low: float | None, high: float | None, c: float | None, cispo_logprobs: Tensor | None
) -> Surrogate:
    ratios_clamped = ratios if low is None and high is None else ratios.clamp(low, high)
    if cispo_logprobs is not None:
        loss = -adv * ratios_clamped.detach() * cispo_logprobs
        clip_active = ratios_clamped.detach() != ratios.detach()
    else:
        unclipped = -adv * ratios
        clipped = -adv * ratios_clamped
        loss = torch.maximum(unclipped, clipped)
        clip_active = clipped.detach() > unclipped.detach()
    if c is not None:
        dual = -adv * c
        dual_active = (adv < 0) & (dual < loss.detach())
        loss = torch.where(adv < 0, torch.minimum(loss, dual), loss)
        clip_active = clip_active | dual_active
    return Surrogate(loss, ratios_clamped, clip_active)


# ---------------------------------------------------------------------------------------------
# Stage 3: actor importance weights pi_prev / pi_gen
# ---------------------------------------------------------------------------------------------


class ImportanceWeights(NamedTuple):
    """Output of :func:`actor_importance_weights`."""

    #: The weights, ``Tensor[B, T]`` (token level) or ``Tensor[B, 1]`` (sequence level, broadcasts).
    weights: Tensor
    #: Where the weight fell outside the truncation bounds (bool), the shape of ``weights`` for
    #: TIS and ICE-POP, ``Tensor[B]`` (one per sequence) for seq-mask-TIS, ``None`` without truncation.
    out_of_bounds: Tensor | None


def actor_importance_weights(
    prev_logprobs: Tensor,
    generation_logprobs: Tensor,
    mask: Tensor,
    *,
    sequence_level_importance_ratios: bool = False,
    truncated_importance_sampling_type: str | None = None,
    truncated_importance_sampling_ratio: float | None = None,
    truncated_importance_sampling_ratio_min: float | None = None,
) -> ImportanceWeights:
    r"""Train/inference importance weights :math:`w = \pi_\text{prev}/\pi_\text{gen}` and their truncations.

    .. math::

        \begin{aligned}
        \text{token: } w_t &= e^{\rho_t} \\
        \text{sequence: } w &= \exp\textstyle\sum_t m_t \rho_t
        \end{aligned}

    with :math:`\rho_t = \log\pi_\text{prev}(y_t) - \log\pi_\text{gen}(y_t)`.

    A weight that would overflow counts 0 (NeMo RL's ``nan_to_num(posinf=0)``). With bounds
    :math:`[a, b]` (``truncated_importance_sampling_ratio_min``, ``..._ratio``):

    .. math::

        \begin{aligned}
        \text{tis: } & w \leftarrow \operatorname{clip}(w, a, b) \\
        \text{icepop: } & w \leftarrow w\,[a \le w \le b] \\
        \text{seq-mask-tis: } & w_t \leftarrow w_t\,[a \le g \le b], \\
        & g = \exp\big(\tfrac{1}{|y|}
            \textstyle\sum_t m_t \rho_t\big)
        \end{aligned}

    (TIS's lower bound :math:`a` defaults to 0).

    ``out_of_bounds`` marks what fell outside :math:`[a, b]`; NeMo RL reports its mean as
    ``is_oob_ratio`` (over tokens for TIS and ICE-POP, over sequences for seq-mask-TIS). NeMo RL
    7ea279a, ``nemo_rl/algorithms/loss/loss_functions.py``. The sequence weight sums over the
    token mask (NeMo RL multiplies by ``token_mask * sample_mask``; the two agree for 0/1 sample
    masks, and a fractional sample weight weighs the sequence instead of rescaling its log-weight).

    Args:
        prev_logprobs: ``Tensor[B, T]`` :math:`\log\pi_\text{prev}` of the trainer.
        generation_logprobs: ``Tensor[B, T]`` :math:`\log\pi_\text{gen}` of the inference engine.
        mask: ``Tensor[B, T]`` token mask; masked positions may hold anything and are ignored.
        sequence_level_importance_ratios: one weight per sequence (GSPO).
        truncated_importance_sampling_type: ``None``, ``"tis"``, ``"icepop"`` or ``"seq-mask-tis"``.
        truncated_importance_sampling_ratio: upper bound :math:`b > 0`.
        truncated_importance_sampling_ratio_min: lower bound :math:`a \le b` (required by
            ``"icepop"`` and ``"seq-mask-tis"``).

    Returns:
        :class:`ImportanceWeights` ``(weights, out_of_bounds)``, no gradient.
    """
    require_bool("sequence_level_importance_ratios", sequence_level_importance_ratios)
    _check_truncation(
        truncated_importance_sampling_type,
        truncated_importance_sampling_ratio,
        truncated_importance_sampling_ratio_min,
        sequence_level_importance_ratios,
    )
    prev, token_mask, _, _, counted = _masks("prev_logprobs", prev_logprobs, mask)
    prev = per_token("prev_logprobs", prev, prev, counted, like_name="prev_logprobs").detach()
    gen = per_token("generation_logprobs", generation_logprobs, prev, counted, like_name="prev_logprobs").detach()
    return _actor_importance_weights(
        prev,
        gen,
        token_mask,
        sequence_level_importance_ratios,
        truncated_importance_sampling_type,
        truncated_importance_sampling_ratio,
        truncated_importance_sampling_ratio_min,
    )


def _actor_importance_weights(
    prev: Tensor,
    gen: Tensor,
    token_mask: Tensor,
    sequence_level: bool,
    kind: str | None,
    ratio: float | None,
    ratio_min: float | None,
) -> ImportanceWeights:
    if sequence_level:
        # Token mask, not token * sample mask: a fractional sample weight (exact.expectation_weights)
        # weighs the sequence, it does not scale its log importance weight.
        weights = exp_or_zero(((prev - gen) * token_mask).sum(dim=-1))[:, None]
    else:
        weights = exp_or_zero(prev - gen)
    if kind == "tis":
        low = ratio_min or 0.0
        out_of_bounds = (weights > ratio) | (weights < low)
        return ImportanceWeights(weights.clamp(min=low, max=ratio), out_of_bounds)
    if kind == "icepop":
        kept = (weights >= ratio_min) & (weights <= ratio)
        return ImportanceWeights(torch.where(kept, weights, 0.0), ~kept)
    if kind == "seq-mask-tis":
        geo_mean = torch.exp(_masked_mean(prev - gen, token_mask, dim=-1))
        kept_seq = (geo_mean >= ratio_min) & (geo_mean <= ratio)
        return ImportanceWeights(weights * kept_seq.to(weights.dtype)[:, None], ~kept_seq)
    return ImportanceWeights(weights, None)


# ---------------------------------------------------------------------------------------------
# Stage 4: KL penalty to the reference policy
# ---------------------------------------------------------------------------------------------


def reference_kl_penalty(
    logprobs: Tensor,
    reference_logprobs: Tensor,
    mask: Tensor,
    *,
    reference_policy_kl_penalty: float = 0.01,
    reference_policy_kl_type: str = "k3",
    kl_input_clamp_value: float | None = 20.0,
    kl_output_clamp_value: float | None = 10.0,
    use_on_policy_kl_approximation: bool = False,
    generation_logprobs: Tensor | None = None,
) -> Tensor:
    r"""Per-token KL penalty :math:`\beta\,\mathrm{kl}_t` to the reference policy, not reduced.

    .. math::

        \begin{aligned}
        &\beta\,\mathrm{kl}_t = \beta\;\text{calculate\_kl}(
            \log\pi_\theta, \\
        &\qquad \log\pi_\text{ref},\ \text{weights} = \rho_t) \\
        &\rho_t = e^{\log\pi_\theta - \mathrm{sg}(\log\pi_\theta)}
            \ \text{ or } \\
        &\rho_t = \pi_\theta / \pi_\text{gen}
            \ \text{(on-policy approx.)}
        \end{aligned}

    ``calculate_kl`` (:func:`~nemo_rl_theory.kl.calculate_kl`) clamps the log-ratio at
    :math:`\pm` ``kl_input_clamp_value``, applies the k1/k2/k3 estimator, multiplies by
    :math:`\rho_t` and clamps at :math:`\pm` ``kl_output_clamp_value``. The default weight has
    value 1 and adds the score of token :math:`t` to the gradient (exact for a one-token
    response; for a sequence it misses how earlier tokens move the prefixes where later KL is
    paid, Tang & Munos 2025); the on-policy approximation reweights samples of
    :math:`\pi_\text{gen}` to :math:`\pi_\theta` (a weight that would overflow counts 0). Under
    top-k / top-p sampling pass the *unfiltered* log-probs here, as NeMo RL does
    (``curr_logprobs_unfiltered``), for the estimator and the weight alike. NeMo RL 7ea279a,
    ``nemo_rl/algorithms/loss/loss_functions.py``.

    Args:
        logprobs: ``Tensor[B, T]`` :math:`\log\pi_\theta` (carries the gradient).
        reference_logprobs: ``Tensor[B, T]`` :math:`\log\pi_\text{ref}` (no gradient).
        mask: ``Tensor[B, T]`` token mask; masked positions may hold anything and give 0.
        reference_policy_kl_penalty: :math:`\beta \ge 0`.
        reference_policy_kl_type: ``"k1"``, ``"k2"`` or ``"k3"``.
        kl_input_clamp_value: clamp of the log-ratio (``None`` disables).
        kl_output_clamp_value: clamp of the weighted estimate (``None`` disables).
        use_on_policy_kl_approximation: weight by :math:`\pi_\theta/\pi_\text{gen}`; needs ``generation_logprobs``.
        generation_logprobs: ``Tensor[B, T]`` :math:`\log\pi_\text{gen}` (only with the on-policy approximation).

    Returns:
        ``Tensor[B, T]``; reduce it with :func:`reduce_per_token_loss`.
    """
    require_number("reference_policy_kl_penalty", reference_policy_kl_penalty, low=0.0)
    _check_kl_options(reference_policy_kl_type, kl_input_clamp_value, kl_output_clamp_value)
    require_bool("use_on_policy_kl_approximation", use_on_policy_kl_approximation)
    lp, _, _, _, counted = _masks("logprobs", logprobs, mask)
    curr = per_token("logprobs", lp, lp, counted)
    ref = per_token("reference_logprobs", reference_logprobs, lp, counted).detach()
    if use_on_policy_kl_approximation:
        if generation_logprobs is None:
            raise ValueError("use_on_policy_kl_approximation=True requires generation_logprobs")
        gen = per_token("generation_logprobs", generation_logprobs, lp, counted).detach()
    elif generation_logprobs is not None:
        raise ValueError("generation_logprobs is used only with use_on_policy_kl_approximation=True; pass None")
    else:
        gen = None
    return _reference_kl_penalty(
        curr,
        ref,
        reference_policy_kl_penalty,
        reference_policy_kl_type,
        kl_input_clamp_value,
        kl_output_clamp_value,
        gen,
    )


def _reference_kl_penalty(
    curr: Tensor,
    ref: Tensor,
    beta: float,
    kl_type: str,
    input_clamp: float | None,
    output_clamp: float | None,
    on_policy_gen: Tensor | None,
) -> Tensor:
    if on_policy_gen is not None:
        weights = exp_or_zero(curr - on_policy_gen)  # an overflowing weight counts 0, as in NeMo RL
    else:
        weights = torch.exp(curr - curr.detach())
    kl = _calculate_kl(
        curr,
        ref,
        kl_type=kl_type,
        input_clamp_value=input_clamp,
        output_clamp_value=output_clamp,
        importance_weights=weights,
    )
    return beta * kl


# ---------------------------------------------------------------------------------------------
# Stage 5: reduction
# ---------------------------------------------------------------------------------------------


def reduce_per_token_loss(
    values: Tensor,
    mask: Tensor,
    *,
    sample_mask: Tensor | None = None,
    token_level_loss: bool = True,
    global_valid_toks: Tensor | float | None = None,
    global_valid_seqs: Tensor | float | None = None,
) -> Tensor:
    r"""NeMo RL's reduction of a per-token loss: token level, or per sequence then over sequences.

    With :math:`m_{b,t}` = ``mask``, :math:`s_b` = ``sample_mask``:

    .. math::

        \begin{aligned}
        \text{token: } & \frac{\sum_{b,t} s_b m_{b,t}\,x_{b,t}}
            {N_\text{tok} + 10^{-8}} \\
        \text{sequence: } & \frac{\sum_b s_b\,\bar x_b}
            {N_\text{seq} + 10^{-8}}, \\
        & \bar x_b = \frac{\sum_t m_{b,t}\,x_{b,t}}
            {\sum_t m_{b,t} + 10^{-8}}
        \end{aligned}

    :math:`N_\text{tok}` = ``global_valid_toks`` and :math:`N_\text{seq}` = ``global_valid_seqs``,
    by default the local counts :math:`\sum s_b m_{b,t}` and :math:`\sum s_b`. Pass the global
    ones when the batch is split into micro-batches or data-parallel ranks: the summed results
    then equal the full-batch one. NeMo RL 7ea279a, ``nemo_rl/algorithms/loss/loss_functions.py``
    (``LossType.TOKEN_LEVEL`` / ``SEQUENCE_LEVEL``).

    Args:
        values: ``Tensor[B, T]`` per-token loss; masked positions may hold anything.
        mask: ``Tensor[B, T]`` token mask.
        sample_mask: ``Tensor[B]`` (default all ones).
        token_level_loss: token-level (True) or sequence-level (False) mean.
        global_valid_toks: number of valid tokens in the global batch (token level).
        global_valid_seqs: number of valid sequences in the global batch (sequence level).

    Returns:
        A scalar ``Tensor``.
    """
    require_bool("token_level_loss", token_level_loss)
    x, token_mask, samples, full_mask, counted = _masks("values", values, mask, sample_mask)
    x = per_token("values", x, x, counted, like_name="values")
    check_factors(
        global_valid_seqs=(global_valid_seqs, samples.sum()), global_valid_toks=(global_valid_toks, full_mask.sum())
    )
    n_toks = full_mask.sum() if global_valid_toks is None else global_valid_toks
    n_seqs = samples.sum() if global_valid_seqs is None else global_valid_seqs
    return _reduce(x, token_mask, samples, full_mask, token_level_loss, n_toks, n_seqs)


def _reduce(
    values: Tensor,
    token_mask: Tensor,
    sample_mask: Tensor,
    mask: Tensor,
    token_level: bool,
    global_valid_toks: Tensor | float,
    global_valid_seqs: Tensor | float,
) -> Tensor:
    if token_level:
        return _masked_mean(values, mask, global_normalization_factor=global_valid_toks)
    per_sequence = _masked_mean(values, token_mask, dim=-1)
    return _masked_mean(per_sequence, sample_mask, global_normalization_factor=global_valid_seqs)


# ---------------------------------------------------------------------------------------------
# Stage 6: VAPO's positive-example NLL
# ---------------------------------------------------------------------------------------------


def positive_example_nll(
    logprobs: Tensor, rewards: Tensor, mask: Tensor, *, sample_mask: Tensor | None = None
) -> Tensor:
    r"""VAPO's negative log-likelihood on the tokens of positive-reward samples (NeMo RL's ``positive_nll_loss``).

    .. math::

        \begin{aligned}
        \mathcal L_\text{NLL} &= \frac{-\sum_{b,t} c_{b,t}
            \log\pi_\theta(y_{b,t})}{N_+ + 10^{-8}}, \\
        c_{b,t} &= s_b\,m_{b,t}\,[R_b > 0], \\
        N_+ &= \textstyle\sum_{b,t} c_{b,t}
        \end{aligned}

    and 0 when :math:`N_+ = 0`. :math:`N_+` is the count of *this micro-batch*, never a global
    one (NeMo RL 7ea279a, ``nemo_rl/algorithms/loss/loss_functions.py``; its metric normaliser is
    ``NONE``): summed over micro-batches the term is :math:`\sum_k \mathcal L_k`, not the
    full-batch mean, so with :math:`K` balanced micro-batches its weight in the gradient grows
    about :math:`K`-fold. ``clipped_pg_loss`` adds :math:`\mu\,\mathcal L_\text{NLL}` with
    :math:`\mu` = ``positive_example_nll_weight`` (VAPO, Yue et al. 2025, Eq. 10). A sample is
    positive when its reward is strictly greater than 0.

    Args:
        logprobs: ``Tensor[B, T]`` :math:`\log\pi_\theta` (carries the gradient).
        rewards: ``Tensor[B]`` real (bool, integer or floating) rewards; finite where ``sample_mask != 0``.
        mask: ``Tensor[B, T]`` token mask.
        sample_mask: ``Tensor[B]`` (default all ones).

    Returns:
        A scalar ``Tensor``.
    """
    lp, _, samples, full_mask, counted = _masks("logprobs", logprobs, mask, sample_mask)
    curr = per_token("logprobs", lp, lp, counted)
    return _positive_example_nll(curr, _check_rewards(rewards, samples), full_mask)


def _check_rewards(rewards: object, samples: Tensor) -> Tensor:
    r = require_tensor("rewards", rewards)
    if r.is_complex():
        raise TypeError(f"rewards must be a real (bool, integer or floating) tensor, got dtype {r.dtype}")
    if r.shape != samples.shape:
        raise ValueError(f"rewards must have shape [B] = [{samples.shape[0]}], got {list(r.shape)}")
    r = r.detach().to(samples.device)
    if r.is_floating_point() and (~torch.isfinite(r) & (samples != 0)).any():
        raise ValueError("rewards has NaN/inf at a counted sample (sample_mask != 0)")
    return r


def _positive_example_nll(curr: Tensor, rewards: Tensor, full_mask: Tensor) -> Tensor:
    positive = full_mask * (rewards > 0).to(full_mask.dtype)[:, None]
    n_positive = positive.sum()
    if n_positive > 0:
        return _masked_mean(-curr, positive, global_normalization_factor=n_positive)
    return torch.zeros((), dtype=curr.dtype, device=curr.device)


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------


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
    rewards: Tensor | None = None,
    logprobs_unfiltered: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    r"""Clipped policy-gradient loss with KL penalty, importance-sampling correction and positive NLL.

    With :math:`r_t` from :func:`policy_ratios`, :math:`\ell_t` from :func:`clipped_surrogate`,
    :math:`w_t` from :func:`actor_importance_weights` (if ``use_importance_sampling_correction``,
    else 1), :math:`\beta\,\mathrm{kl}_t` from :func:`reference_kl_penalty` and ``reduce`` =
    :func:`reduce_per_token_loss`:

    .. math::

        \begin{aligned}
        \mathcal L &= \operatorname{reduce}(w_t\,\ell_t)
            + \operatorname{reduce}(\beta\,\mathrm{kl}_t) \\
        &\quad + \mu\,\mathcal L_\text{NLL}
        \end{aligned}

    Per token, with :math:`\bar r_t = \operatorname{clip}(r_t, 1-\varepsilon_\text{low}, 1+\varepsilon_\text{high})`,
    :math:`\ell_t = \max(-A_t r_t, -A_t \bar r_t)`, then :math:`\min(\ell_t, -cA_t)` for
    :math:`A_t < 0` with dual clip (CISPO: :math:`\ell_t = -A_t\,\mathrm{sg}(\bar r_t)\log\pi_\theta`;
    ``disable_ppo_ratio``: :math:`\ell_t = -A_t \log\pi_\theta`; GSPO: :math:`r_t` is the
    sequence's geometric-mean ratio). The KL term is absent when :math:`\beta = 0` or
    ``use_kl_in_reward``. Its weight is the score-function factor
    :math:`e^{\log\pi_\theta - \mathrm{sg}(\log\pi_\theta)}` or, with
    ``use_on_policy_kl_approximation``, :math:`\pi_\theta/\pi_\text{gen}`; both it and the
    estimator read ``logprobs_unfiltered`` when given (NeMo RL's ``curr_logprobs_unfiltered``
    under top-k / top-p), everything else reads ``logprobs``. :math:`\mu\,\mathcal L_\text{NLL}`
    is VAPO's :func:`positive_example_nll` with :math:`\mu` = ``positive_example_nll_weight``,
    normalised by this micro-batch's own count of positive-sample tokens.

    ``reduce`` is token level (``token_level_loss``) with :math:`N_\text{tok}` =
    ``global_valid_toks``, or sequence level with :math:`N_\text{seq}` = ``global_valid_seqs``;
    both default to the local counts. Pass the global ones when the batch is split into
    micro-batches or ranks: the summed micro-batch losses then equal the full-batch loss, except
    for the positive NLL (see :func:`positive_example_nll`). Every denominator carries NeMo RL's
    +1e-8. NeMo RL 7ea279a, ``nemo_rl/algorithms/loss/loss_functions.py`` (``ClippedPGLossFn``).

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
        reference_logprobs: ``Tensor[B, T]`` :math:`\log\pi_\text{ref}`; required when the
            loss has a KL term (:attr:`ClippedPGConfig.kl_penalty_in_loss` != 0).
        sample_mask: ``Tensor[B]`` (default all ones).
        global_valid_seqs: number of valid sequences in the global batch.
        global_valid_toks: number of valid tokens in the global batch.
        rewards: ``Tensor[B]`` sample rewards; required when ``positive_example_nll_weight > 0``.
        logprobs_unfiltered: ``Tensor[B, T]`` :math:`\log\pi_\theta` without top-k / top-p
            filtering (carries the gradient), read by the KL term only (default ``logprobs``).

    Returns:
        ``(loss, metrics)``. Metrics (floats, NeMo RL's names; with global factors each is
        this micro-batch's share): ``loss``, ``probs_ratio``, ``probs_ratio_clamped``,
        ``probs_ratio_min/max``, ``probs_ratio_clamped_min/max``, ``clip_fraction`` (share
        of tokens whose clipped branch is active, i.e. whose surrogate gradient is cut),
        ``kl_penalty`` (the reduced KL before :math:`\beta`; 0 without a KL term),
        ``token_mult_prob_error``, ``gen_kl_error``, ``policy_kl_error``,
        ``js_divergence_error``, ``sampling_importance_ratio``, ``approx_entropy``,
        ``num_valid_samples``, ``positive_nll_loss`` (:math:`\mathcal L_\text{NLL}` before
        :math:`\mu`, a micro-batch mean; 0 when unused) and, with truncation, ``is_oob_ratio``.
    """
    cfg = ClippedPGConfig() if config is None else config
    if not isinstance(cfg, ClippedPGConfig):
        raise TypeError(f"config must be a ClippedPGConfig, got {type(cfg).__name__}")
    logprobs, token_mask, samples, full_mask, counted = _masks("logprobs", logprobs, mask, sample_mask)
    check_factors(
        global_valid_seqs=(global_valid_seqs, samples.sum()), global_valid_toks=(global_valid_toks, full_mask.sum())
    )
    n_toks = full_mask.sum() if global_valid_toks is None else global_valid_toks
    n_seqs = samples.sum() if global_valid_seqs is None else global_valid_seqs
    beta = cfg.kl_penalty_in_loss

    # --- inputs: every [B, T] tensor is checked and zeroed on padding before any arithmetic
    curr = per_token("logprobs", logprobs, logprobs, counted)
    if prev_logprobs is None and not cfg.force_on_policy_ratio:
        raise ValueError("prev_logprobs is required unless force_on_policy_ratio=True")
    if prev_logprobs is not None:
        prev = per_token("prev_logprobs", prev_logprobs, logprobs, counted).detach()
    if cfg.force_on_policy_ratio:
        prev = curr.detach()
    adv = _per_token_advantages(advantages, logprobs, counted)
    if generation_logprobs is not None:
        gen = per_token("generation_logprobs", generation_logprobs, logprobs, counted).detach()
    elif cfg.use_importance_sampling_correction or cfg.use_on_policy_kl_approximation:
        option = (
            "use_importance_sampling_correction"
            if cfg.use_importance_sampling_correction
            else "use_on_policy_kl_approximation"
        )
        raise ValueError(f"{option}=True requires generation_logprobs")
    else:
        gen = prev
    # Optional inputs are checked whenever given, even where the config does not use them.
    if reference_logprobs is not None:
        ref = per_token("reference_logprobs", reference_logprobs, logprobs, counted).detach()
    elif beta != 0:
        raise ValueError(
            "reference_logprobs is required when reference_policy_kl_penalty != 0 "
            f"(got {cfg.reference_policy_kl_penalty}); pass them, set the penalty to 0 or use_kl_in_reward=True"
        )
    kl_lp = (
        curr
        if logprobs_unfiltered is None
        else per_token("logprobs_unfiltered", logprobs_unfiltered, logprobs, counted)
    )
    if rewards is not None:
        rewards = _check_rewards(rewards, samples)
    elif cfg.positive_example_nll_weight > 0:
        raise ValueError(
            f"positive_example_nll_weight = {cfg.positive_example_nll_weight} > 0 requires rewards (Tensor[B])"
        )

    def mean_over_tokens(x: Tensor) -> Tensor:
        return _masked_mean(x, full_mask, global_normalization_factor=n_toks)

    def reduce(x: Tensor) -> Tensor:
        return _reduce(x, token_mask, samples, full_mask, cfg.token_level_loss, n_toks, n_seqs)

    # --- the stages
    if beta != 0:
        on_policy_gen = gen if cfg.use_on_policy_kl_approximation else None
        kl = reduce(
            _reference_kl_penalty(
                kl_lp,
                ref,
                beta,
                cfg.reference_policy_kl_type,
                cfg.kl_input_clamp_value,
                cfg.kl_output_clamp_value,
                on_policy_gen,
            )
        )
    else:
        kl = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    ratios = _policy_ratios(curr, prev, token_mask, cfg.ratio_type)
    clipping = cfg.ratio_type in ("token", "sequence")
    surrogate = _clipped_surrogate(
        ratios,
        adv,
        1.0 - cfg.ratio_clip_min if clipping else None,
        1.0 + cfg.ratio_clip_max if clipping else None,
        cfg.ratio_clip_c,
        curr if cfg.use_cispo else None,
    )
    is_weights = _actor_importance_weights(
        prev,
        gen,
        token_mask,
        cfg.sequence_level_importance_ratios,
        cfg.truncated_importance_sampling_type,
        cfg.truncated_importance_sampling_ratio,
        cfg.truncated_importance_sampling_ratio_min,
    )
    if cfg.use_importance_sampling_correction:
        # Select, don't multiply: a dropped token (weight 0) contributes 0 even if its surrogate
        # overflowed to inf, where 0 * inf would be NaN.
        w = is_weights.weights
        weighted = torch.where(w != 0, w * surrogate.loss, 0.0)
    else:
        weighted = surrogate.loss
    loss = reduce(weighted) + kl
    if cfg.positive_example_nll_weight > 0:
        nll = _positive_example_nll(curr, rewards, full_mask)
        loss = loss + cfg.positive_example_nll_weight * nll
    else:
        nll = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)

    # --- metrics (no gradient)
    with torch.no_grad():
        is_metrics: dict[str, float] = {}
        oob = is_weights.out_of_bounds
        if oob is not None and oob.dim() == 1:  # seq-mask-tis: share of sequences
            is_metrics["is_oob_ratio"] = float(
                _masked_mean(oob.to(curr.dtype), samples, global_normalization_factor=n_seqs)
            )
        elif oob is not None:
            is_metrics["is_oob_ratio"] = float(mean_over_tokens(oob.expand_as(curr).to(curr.dtype)))
        if cfg.sequence_level_importance_ratios:
            sampling_importance_ratio = _masked_mean(
                is_weights.weights[:, 0], samples, global_normalization_factor=n_seqs
            )
        else:
            sampling_importance_ratio = mean_over_tokens(is_weights.weights)
        metrics = {
            "loss": float(loss.detach()),
            **_ratio_metrics(ratios.detach(), surrogate.ratios_clamped.detach(), counted, mean_over_tokens),
            "clip_fraction": float(mean_over_tokens(surrogate.clip_active.to(curr.dtype))),
            "kl_penalty": float(kl.detach()) / beta if beta != 0 else 0.0,
            **_mismatch_metrics(prev, gen, cfg.reference_policy_kl_type, mean_over_tokens),
            "sampling_importance_ratio": float(sampling_importance_ratio),
            "num_valid_samples": float(samples.sum()),
            "approx_entropy": float(-mean_over_tokens(torch.exp(curr - gen) * curr)),
            **is_metrics,
            "positive_nll_loss": float(nll.detach()),
        }
    return loss, metrics


def _ratio_metrics(
    r: Tensor, rc: Tensor, counted: Tensor, mean_over_tokens: Callable[[Tensor], Tensor]
) -> dict[str, float]:
    """``probs_ratio(_clamped)`` means and extrema over counted tokens."""
    metrics = {"probs_ratio": float(mean_over_tokens(r)), "probs_ratio_clamped": float(mean_over_tokens(rc))}
    if counted.any():
        return {
            **metrics,
            "probs_ratio_min": float(r[counted].min()),
            "probs_ratio_max": float(r[counted].max()),
            "probs_ratio_clamped_min": float(rc[counted].min()),
            "probs_ratio_clamped_max": float(rc[counted].max()),
        }
    # The identities of min/max, so metrics of empty micro-batches combine correctly.
    return {
        **metrics,
        "probs_ratio_min": math.inf,
        "probs_ratio_max": -math.inf,
        "probs_ratio_clamped_min": math.inf,
        "probs_ratio_clamped_max": -math.inf,
    }


def _mismatch_metrics(
    prev: Tensor, gen: Tensor, kl_type: str, mean_over_tokens: Callable[[Tensor], Tensor]
) -> dict[str, float]:
    r"""Train/inference mismatch diagnostics between :math:`\pi_\text{prev}` and :math:`\pi_\text{gen}`."""
    no_clamp = {"kl_type": kl_type, "input_clamp_value": None, "output_clamp_value": None}
    log_mixture = torch.logaddexp(prev, gen) - math.log(2.0)
    js = 0.5 * (torch.expm1(prev - log_mixture) - (prev - log_mixture))
    js = js + 0.5 * (torch.expm1(gen - log_mixture) - (gen - log_mixture))
    return {
        "token_mult_prob_error": float(mean_over_tokens(torch.exp((gen - prev).abs()))),
        "gen_kl_error": float(mean_over_tokens(_calculate_kl(gen, prev, **no_clamp))),
        "policy_kl_error": float(mean_over_tokens(_calculate_kl(prev, gen, **no_clamp))),
        "js_divergence_error": float(mean_over_tokens(js)),
    }
