r"""NeMo RL's, TRL's and verl's GRPO losses and advantage scalings, each expressed with the library.

The "same" GRPO loss means different things in the three frameworks. They agree on the per-token
surrogate (PPO's clipped ratio times the advantage) and differ in how the per-token terms of a
batch are weighted into one scalar, in how the advantage is scaled, and in their defaults. Every
convention here is a call of the library's losses (:func:`~nemo_rl_theory.losses.clipped_pg.clipped_pg_loss`,
:func:`~nemo_rl_theory.training.normalization.reduce_tokens`,
:func:`~nemo_rl_theory.kl.calculate_kl`, :func:`~nemo_rl_theory.advantages.calculate_baseline_and_std_per_prompt`)
with the right settings, so that the differences are visible as settings.

A reduction is a :class:`Reduction`: the library's token-level or sequence-level mean with its
counts (``global_valid_toks`` / ``global_valid_seqs``, fractional ``sample_mask`` weights) and a
constant ``scale`` for the conventions whose token weights sum to more than 1 (per-sequence sums),
which no mean can express. With :math:`m_{b,t}` the token mask, :math:`\ell_b = \sum_t m_{b,t}`,
:math:`B` the rows of the micro-batch, :math:`k` the gradient-accumulation steps, the weight
:math:`w_{b,t}` of the per-token loss :math:`x_{b,t}` in :math:`\mathcal L = \sum_{b,t} w_{b,t} x_{b,t}` is

=========================================  =================================================
convention                                  :math:`w_{b,t} / m_{b,t}`
=========================================  =================================================
NeMo RL ``token_level_loss=True``           :math:`1 / N_\text{tok}` (``global_valid_toks``)
NeMo RL ``token_level_loss=False``          :math:`1 / (\ell_b N_\text{seq})` (``global_valid_seqs``)
TRL ``dapo``, ``cispo``                     :math:`1 / N_\text{tok}` (``num_items_in_batch``)
TRL ``bnpo``                                :math:`1 / (k\,\sum_{b,t} m_{b,t})` (local count)
TRL ``grpo``, ``sapo``                      :math:`1 / (\ell_b\, k B)`
TRL ``dr_grpo``                             :math:`1 / (k B L_\text{max})` (``max_completion_length``)
TRL ``luspo`` (sequence ratios)             :math:`1 / (k B)` (sequence loss times :math:`\ell_b`)
verl ``token-mean``                         :math:`1 / N_\text{tok}` (``batch_num_tokens``)
verl ``seq-mean-token-mean``                :math:`1 / (\ell_b N_\text{seq})` (``global_batch_size``)
verl ``seq-mean-token-sum``                 :math:`1 / N_\text{seq}`
verl ``seq-mean-token-sum-norm``            :math:`1 / S` (``loss_scale_factor``, default the padded width)
=========================================  =================================================

Sources (read for the formulas, cited per function):

- NeMo RL 7ea279a (2026-08-22): ``nemo_rl/algorithms/loss/loss_functions.py`` (``ClippedPGLossFn``),
  ``nemo_rl/algorithms/utils.py``, ``examples/configs/grpo_math_1B.yaml``;
- TRL 1.10.0.dev0, commit f2cd577 (2026-07-24): ``trl/trainer/grpo_trainer.py``
  (``_compute_loss``, ``_generate_and_score_completions``), ``trl/trainer/grpo_config.py``;
- verl 0.8.0.dev, commit b178a3c (2026-01-29): ``verl/trainer/ppo/core_algos.py`` (``agg_loss``,
  ``compute_policy_loss_vanilla``, ``compute_grpo_outcome_advantage``, ``kl_penalty``),
  ``verl/trainer/config/actor/actor.yaml``.

Each function reproduces one micro-batch's loss as the framework back-propagates it on a single
process (TRL's and verl's data-parallel factors cancel against the gradient all-reduce mean and
are left out).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nemo_rl_theory._numerics import saturating_exp
from nemo_rl_theory._validation import require_bool, require_float_tensor, require_ndim, require_number, require_tensor
from nemo_rl_theory.advantages import calculate_baseline_and_std_per_prompt
from nemo_rl_theory.kl import calculate_kl
from nemo_rl_theory.losses._inputs import per_token, per_token_2d, token_and_sample_masks
from nemo_rl_theory.losses.clipped_pg import ClippedPGConfig, clipped_pg_loss
from nemo_rl_theory.masking import _masked_mean
from nemo_rl_theory.training.normalization import clipped_pg_settings, reduce_tokens

NEMO_RL_VERSION = "NeMo RL 7ea279a (2026-08-22)"
TRL_VERSION = "TRL 1.10.0.dev0, commit f2cd577 (2026-07-24)"
VERL_VERSION = "verl 0.8.0.dev, commit b178a3c (2026-01-29)"

#: The source file each framework's loss and advantage conventions are read from.
SOURCES: dict[str, str] = {
    "NeMo RL": f"{NEMO_RL_VERSION}, nemo_rl/algorithms/loss/loss_functions.py, nemo_rl/algorithms/utils.py",
    "TRL": f"{TRL_VERSION}, trl/trainer/grpo_trainer.py, trl/trainer/grpo_config.py",
    "verl": f"{VERL_VERSION}, verl/trainer/ppo/core_algos.py, verl/trainer/config/actor/actor.yaml",
}

#: TRL ``GRPOConfig.loss_type`` values reproduced here (TRL's default is ``"dapo"``).
TRL_LOSS_TYPES: tuple[str, ...] = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo")
#: TRL ``loss_type`` values of that version that the library does not reproduce.
TRL_NOT_REPRODUCED: tuple[str, ...] = ("vespo",)
#: TRL ``GRPOConfig.scale_rewards`` values (``True`` means ``"group"``, ``False`` ``"none"``).
TRL_SCALE_REWARDS: tuple[str, ...] = ("group", "batch", "none")
#: verl ``actor.loss_agg_mode`` values (verl's default is ``"token-mean"``).
VERL_LOSS_AGG_MODES: tuple[str, ...] = (
    "token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)
#: verl ``actor.kl_loss_type`` values reproduced here, and the library's estimator for each.
VERL_KL_TYPES: dict[str, str] = {"kl": "k1", "k1": "k1", "mse": "k2", "k2": "k2", "low_var_kl": "k3", "k3": "k3"}

#: TRL adds this to the group standard deviation (``advantages / (std_rewards + 1e-4)``).
TRL_STD_EPS = 1e-4
#: verl's ``epsilon`` of ``compute_grpo_outcome_advantage``.
VERL_STD_EPS = 1e-6

#: One row ``(setting, NeMo RL, TRL, verl)`` per default. NeMo RL's are those of
#: ``examples/configs/grpo_math_1B.yaml``, TRL's of ``GRPOConfig``, verl's of ``actor.yaml`` and
#: ``AlgoConfig`` (its GRPO recipes set ``algorithm.adv_estimator=grpo`` and ``use_kl_loss=True``).
DEFAULTS: tuple[tuple[str, str, str, str], ...] = (
    ("loss reduction", "token mean, global count", "dapo: token mean, global count", "token-mean"),
    ("baseline", "leave-one-out mean", "group mean", "group mean"),
    ("std", "leave-one-out, Bessel", "group, Bessel", "group, Bessel"),
    ("std epsilon", "1e-6 (only where std > 0)", "1e-4", "1e-6"),
    ("KL weight beta", "0.01", "0.0", "0.001 (use_kl_loss: false)"),
    ("KL estimator", "k3, clamps 20 / 10", "k3, no clamp", "low_var_kl: k3, clamps 20 / 10"),
    ("KL gradient", "k3 + score term", "k3 only", "k3 only"),
    ("clip epsilon low / high", "0.2 / 0.2", "0.2 / 0.2", "0.2 / 0.2"),
    ("dual clip c", "off", "off (delta)", "3.0, always on"),
)


def _check_choice(name: str, value: object, choices: tuple[str, ...], extra: str = "") -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}{extra}, got {value!r}")
    return value


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _count(name: str, value: object, local: float) -> float:
    """A global count given by the caller (``None``: the local one); at least the local count."""
    if value is None:
        return local
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {list(value.shape)}")
        value = float(value.detach())
    require_number(name, value, low=0.0)
    if float(value) < local * (1 - 1e-9):
        raise ValueError(f"{name} = {float(value):g} is smaller than this micro-batch's own count ({local:g})")
    return float(value)


@dataclass(frozen=True)
class Reduction:
    r"""How a framework turns per-token losses :math:`x_{b,t}` into one scalar, in the library's terms.

    :math:`\mathcal L = \text{scale} \cdot \operatorname{reduce}(x)`, where ``reduce`` is the
    library's token-level mean (``token_level_loss=True``, divided by ``global_valid_toks``) or
    sequence-level mean (per sequence, then weighted by ``sample_mask`` and divided by
    ``global_valid_seqs``). ``kwargs()`` are the keyword arguments of
    :func:`~nemo_rl_theory.losses.clipped_pg.clipped_pg_loss` (with ``token_level_loss`` in its
    config); ``scale`` is 1 except for per-sequence sums (their weights sum to more than 1).
    """

    token_level_loss: bool
    global_valid_toks: float | None = None
    global_valid_seqs: float | None = None
    sample_mask: Tensor | None = None
    scale: float = 1.0

    def kwargs(self) -> dict[str, object]:
        return {
            "sample_mask": self.sample_mask,
            "global_valid_toks": self.global_valid_toks,
            "global_valid_seqs": self.global_valid_seqs,
        }

    def reduce(self, values: Tensor, mask: Tensor) -> Tensor:
        """``scale`` times :func:`~nemo_rl_theory.training.normalization.reduce_tokens` of ``values``."""
        reduced = reduce_tokens(
            values,
            mask,
            "token" if self.token_level_loss else "sequence",
            sample_mask=self.sample_mask,
            global_valid_toks=self.global_valid_toks if self.token_level_loss else None,
            global_valid_seqs=None if self.token_level_loss else self.global_valid_seqs,
        )
        return self.scale * reduced

    def with_sequence_ratios(self, mask: Tensor) -> Reduction:
        r"""The same weights for a loss that is constant over each sequence (GSPO's sequence ratio).

        A token-level sum of a per-sequence value :math:`x_b` is :math:`\sum_b \ell_b x_b / N`: the
        library's sequence-level path with ``sample_mask`` :math:`= \ell_b` and
        ``global_valid_seqs`` :math:`= N` (its GSPO ratios need ``token_level_loss=False``).
        """
        if not self.token_level_loss:
            return self
        lengths = _lengths(mask)
        return Reduction(False, None, self.global_valid_toks, lengths, self.scale)


def _lengths(mask: Tensor) -> Tensor:
    return (mask != 0).to(torch.float64).sum(dim=-1) if mask.dtype == torch.bool else mask.to(torch.float64).sum(-1)


def _mask_and_rows(mask: object) -> tuple[Tensor, int, float]:
    m = require_tensor("mask", mask)
    require_ndim("mask", m, (2,), "[B, T]")
    like = torch.empty(m.shape, dtype=torch.float64)
    token_mask, _, _ = token_and_sample_masks(m, None, like)
    return token_mask, int(m.shape[0]), float(token_mask.sum())


def nemo_rl_reduction(
    mask: Tensor,
    *,
    token_level_loss: bool = True,
    global_valid_toks: Tensor | float | None = None,
    global_valid_seqs: Tensor | float | None = None,
) -> Reduction:
    r"""NeMo RL's two reductions (``loss_fn.token_level_loss``, default True): the library's own.

    Token level :math:`\sum_{b,t} m_{b,t} x_{b,t} / N_\text{tok}`; sequence level
    :math:`\sum_b \big(\sum_t m_{b,t} x_{b,t} / \ell_b\big) / N_\text{seq}`, with NeMo RL's
    :math:`+10^{-8}` in each denominator (``ClippedPGLossFn``, ``loss_functions.py``, 7ea279a).
    """
    _, rows, n_tok = _mask_and_rows(mask)
    require_bool("token_level_loss", token_level_loss)
    if token_level_loss:
        return Reduction(True, global_valid_toks=_count("global_valid_toks", global_valid_toks, n_tok))
    return Reduction(False, global_valid_seqs=_count("global_valid_seqs", global_valid_seqs, float(rows)))


def trl_reduction(
    loss_type: str,
    mask: Tensor,
    *,
    max_completion_length: int = 512,
    num_items_in_batch: Tensor | float | None = None,
    gradient_accumulation_steps: int = 1,
) -> Reduction:
    r"""TRL ``GRPOTrainer``'s reduction of per-token losses for ``loss_type`` (one micro-batch).

    With :math:`B` the micro-batch's rows (``per_device_train_batch_size``, fully masked rows
    included), :math:`k` = ``gradient_accumulation_steps`` and :math:`\ell_b = \sum_t m_{b,t}`:

    .. math::

        \begin{aligned}
        \text{grpo, sapo:}&\ \tfrac{1}{kB}\textstyle\sum_b \tfrac{\sum_t m x}{\max(\ell_b, 1)} \\
        \text{bnpo:}&\ \tfrac{1}{k}\textstyle\sum_{b,t} m x / \sum_{b,t} m \\
        \text{dr\_grpo:}&\ \textstyle\sum_{b,t} m x / (k B L_\text{max}) \\
        \text{dapo, cispo:}&\ \textstyle\sum_{b,t} m x / N_\text{items} \\
        \text{luspo:}&\ \tfrac{1}{kB}\textstyle\sum_b \ell_b x_b
        \end{aligned}

    (``_compute_loss`` in ``trl/trainer/grpo_trainer.py``, TRL f2cd577): ``grpo``/``bnpo``/``dr_grpo``/
    ``luspo`` divide by ``current_gradient_accumulation_steps``; ``dapo``/``cispo`` divide by
    ``num_items_in_batch``, the token count of the whole accumulated batch (default here: this
    micro-batch's). ``luspo``'s :math:`x_b` is a per-sequence (GSPO) loss.

    Returns:
        A :class:`Reduction`: the library's token- or sequence-level mean with these counts
        (``dr_grpo`` through :func:`~nemo_rl_theory.training.normalization.clipped_pg_settings`'s
        constant; ``luspo`` a length-weighted sequence mean times a constant).
    """
    loss_type = _check_choice("loss_type", loss_type, TRL_LOSS_TYPES, _not_reproduced_note())
    token_mask, rows, n_tok = _mask_and_rows(mask)
    k = _positive_int("gradient_accumulation_steps", gradient_accumulation_steps)
    if loss_type in ("grpo", "sapo"):
        return Reduction(False, global_valid_seqs=float(k * rows))
    if loss_type == "bnpo":
        return Reduction(True, global_valid_toks=k * n_tok)
    if loss_type == "dr_grpo":
        _positive_int("max_completion_length", max_completion_length)
        settings = clipped_pg_settings(
            "constant", token_mask, max_length=max_completion_length, global_valid_seqs=k * rows
        )
        return Reduction(True, global_valid_toks=float(settings["global_valid_toks"]))
    if loss_type in ("dapo", "cispo"):
        return Reduction(True, global_valid_toks=_count("num_items_in_batch", num_items_in_batch, n_tok))
    # luspo: sum_b l_b x_b / (k B) = (sequence mean weighted by l_b, over N_tok) * N_tok / (k B)
    return Reduction(False, global_valid_seqs=n_tok, sample_mask=_lengths(token_mask), scale=n_tok / (k * rows))


def verl_reduction(
    loss_agg_mode: str,
    mask: Tensor,
    *,
    batch_num_tokens: Tensor | float | None = None,
    global_batch_size: Tensor | float | None = None,
    loss_scale_factor: float | None = None,
) -> Reduction:
    r"""verl's ``agg_loss`` for ``loss_agg_mode`` (``verl/trainer/ppo/core_algos.py``, verl b178a3c).

    With :math:`N_\text{tok}` = ``batch_num_tokens`` (default: this micro-batch's tokens),
    :math:`N_\text{seq}` = ``global_batch_size`` (default: its sequences with at least one token)
    and :math:`S` = ``loss_scale_factor`` (default: the padded width ``mask.shape[-1]``):

    .. math::

        \begin{aligned}
        &\text{token-mean: } \textstyle\sum_{b,t} m x / N_\text{tok} \\
        &\text{seq-mean-token-mean: } \\
        &\quad \tfrac{1}{N_\text{seq}}\textstyle\sum_b \tfrac{\sum_t m x}{\ell_b + 10^{-8}} \\
        &\text{seq-mean-token-sum: } \tfrac{1}{N_\text{seq}}\textstyle\sum_{b,t} m x \\
        &\text{seq-mean-token-sum-norm: } \tfrac{1}{S}\textstyle\sum_{b,t} m x
        \end{aligned}

    ``seq-mean-token-sum-norm`` is not divided by the number of sequences (verl's actor then
    multiplies every micro-batch loss by ``1 / gradient_accumulation``). The two per-sequence sums
    are returned as the library's token mean times the constant :math:`N_\text{tok}/N_\text{seq}`
    or :math:`N_\text{tok}/S` (up to NeMo RL's :math:`+10^{-8}`, relative).
    """
    loss_agg_mode = _check_choice("loss_agg_mode", loss_agg_mode, VERL_LOSS_AGG_MODES)
    token_mask, _, n_tok = _mask_and_rows(mask)
    lengths = _lengths(token_mask)
    nonempty = (lengths > 0).to(torch.float64)
    if loss_agg_mode == "token-mean":
        return Reduction(True, global_valid_toks=_count("batch_num_tokens", batch_num_tokens, n_tok))
    if loss_agg_mode == "seq-mean-token-mean":
        n_seq = _count("global_batch_size", global_batch_size, float(nonempty.sum()))
        return Reduction(False, global_valid_seqs=n_seq, sample_mask=nonempty)
    if loss_agg_mode == "seq-mean-token-sum":
        n_seq = _count("global_batch_size", global_batch_size, float(nonempty.sum()))
        scale = n_tok / n_seq if n_seq > 0 else 0.0
        return Reduction(True, global_valid_toks=n_tok, scale=scale)
    width = float(token_mask.shape[-1]) if loss_scale_factor is None else loss_scale_factor
    require_number("loss_scale_factor", width, low=0.0, low_inclusive=False)
    return Reduction(True, global_valid_toks=n_tok, scale=n_tok / float(width))


def _not_reproduced_note() -> str:
    return f" ({TRL_NOT_REPRODUCED} exist in TRL but are not reproduced by the library)"


def _sequence_log_ratio(log_ratio: Tensor, token_mask: Tensor) -> Tensor:
    """``[B, 1]``: the mean log-ratio of each sequence (GSPO; TRL divides by ``max(l_b, 1)``)."""
    return _masked_mean(log_ratio, token_mask, dim=-1)[:, None]


def trl_grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    loss_type: str = "dapo",
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    beta: float = 0.0,
    ref_logprobs: Tensor | None = None,
    use_bias_correction_kl: bool = False,
    importance_sampling_level: str = "token",
    max_completion_length: int = 512,
    num_items_in_batch: Tensor | float | None = None,
    gradient_accumulation_steps: int = 1,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
) -> Tensor:
    r"""TRL ``GRPOTrainer``'s loss of one micro-batch, as the library's calls (TRL f2cd577).

    Per token, with :math:`r = \exp(\log\pi_\theta - \log\pi_\text{old})` (or the sequence's
    geometric mean with ``importance_sampling_level="sequence"``),
    :math:`\bar r = \operatorname{clip}(r, 1-\varepsilon, 1+\varepsilon_\text{high})`, :math:`\tau`
    the SAPO temperature of the advantage's sign:

    .. math::

        \begin{aligned}
        x &= -\min\big(\min(r, \delta) A,\ \bar r A\big) \\
        x^\text{cispo} &= -\mathrm{sg}\big(\min(r, \varepsilon_\text{high})\big) A \log\pi_\theta \\
        x^\text{sapo} &= -\tfrac{4}{\tau}\,\sigma\big(\tau (r - 1)\big) A \\
        x &\leftarrow x + \beta\,k_3
        \end{aligned}

    (:math:`\delta` is ``delta``, absent by default; :math:`k_3 = e^{\log\pi_\text{ref} - \log\pi_\theta} - 1
    - (\log\pi_\text{ref} - \log\pi_\theta)`, unclamped, times :math:`r` with
    ``use_bias_correction_kl``), reduced by :func:`trl_reduction`. In library terms: the clipped
    surrogate is :func:`~nemo_rl_theory.losses.clipped_pg.clipped_pg_loss` with
    ``ratio_clip_min = epsilon``, ``ratio_clip_max = epsilon_high`` and ``ratio_clip_c = delta``
    (CISPO: ``use_cispo`` with ``ratio_clip_min = 1``, ``ratio_clip_max = epsilon_high - 1``, since
    TRL caps the ratio at ``epsilon_high`` itself); the KL is :func:`~nemo_rl_theory.kl.calculate_kl`
    without clamps or score-function weight (NeMo RL's default KL adds one), reduced alike.

    Args:
        logprobs: ``Tensor[B, T]`` :math:`\log\pi_\theta` (carries the gradient).
        old_logprobs: ``Tensor[B, T]`` :math:`\log\pi_\text{old}`.
        advantages: ``Tensor[B]`` or ``Tensor[B, T]``.
        mask: ``Tensor[B, T]`` completion mask.
        loss_type: one of :data:`TRL_LOSS_TYPES` (TRL's default ``"dapo"``).
        epsilon, epsilon_high: TRL's clip range (``epsilon_high=None`` means ``epsilon``).
        delta: INTELLECT-2's upper bound on the unclipped ratio (``None``: off); at least
            ``1 + epsilon_high``.
        beta: KL weight (TRL's default 0.0); ``ref_logprobs`` required when non-zero.
        use_bias_correction_kl: multiply the per-token KL by :math:`r` (TRL's option).
        importance_sampling_level: ``"token"`` or ``"sequence"`` (GSPO; required by ``luspo``).
        max_completion_length: :math:`L_\text{max}` of ``dr_grpo`` (TRL's default 512).
        num_items_in_batch: global token count of ``dapo``/``cispo``.
        gradient_accumulation_steps: :math:`k`.
        sapo_temperature_pos, sapo_temperature_neg: SAPO's :math:`\tau` (TRL's defaults 1.0, 1.05).

    Returns:
        The scalar loss that TRL back-propagates for this micro-batch.
    """
    loss_type = _check_choice("loss_type", loss_type, TRL_LOSS_TYPES, _not_reproduced_note())
    level = _check_choice("importance_sampling_level", importance_sampling_level, ("token", "sequence"))
    require_number("epsilon", epsilon, low=0.0, high=1.0)
    eps_high = epsilon if epsilon_high is None else epsilon_high
    require_number("epsilon_high", eps_high, low=0.0)
    require_number("beta", beta, low=0.0)
    require_bool("use_bias_correction_kl", use_bias_correction_kl)
    if delta is not None:
        require_number("delta", delta, low=1.0 + eps_high)
        if loss_type not in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo"):
            raise ValueError(f"delta applies to the clipped losses, not to loss_type={loss_type!r}")
    if loss_type == "luspo" and level != "sequence":
        raise ValueError(
            "loss_type='luspo' is reproduced with importance_sampling_level='sequence' only (TRL averages "
            "the unmasked [B, T] loss, padding included, otherwise)"
        )
    if loss_type == "luspo" and beta != 0:
        raise ValueError("loss_type='luspo' is reproduced with beta=0 only (TRL then averages padding as well)")
    if loss_type == "cispo":
        if level == "sequence":
            raise ValueError("loss_type='cispo' is reproduced with importance_sampling_level='token' only")
        if eps_high < 1.0:
            raise ValueError(
                "loss_type='cispo' caps the ratio at epsilon_high itself (TRL recommends 5.0); "
                f"epsilon_high = {eps_high} < 1 would cap every on-policy ratio below 1"
            )
    logprobs = per_token_2d("logprobs", logprobs)
    token_mask, _, _ = token_and_sample_masks(mask, None, logprobs)
    reduction = trl_reduction(
        loss_type,
        token_mask,
        max_completion_length=max_completion_length,
        num_items_in_batch=num_items_in_batch,
        gradient_accumulation_steps=gradient_accumulation_steps,
    )
    sequence = level == "sequence"
    pg_reduction = reduction.with_sequence_ratios(token_mask) if sequence else reduction

    if loss_type == "sapo":
        require_number("sapo_temperature_pos", sapo_temperature_pos, low=0.0, low_inclusive=False)
        require_number("sapo_temperature_neg", sapo_temperature_neg, low=0.0, low_inclusive=False)
        counted = token_mask != 0
        curr = per_token("logprobs", logprobs, logprobs, counted)
        old = per_token("old_logprobs", old_logprobs, logprobs, counted).detach()
        adv = _advantages_2d(advantages, logprobs, counted)
        log_ratio = _sequence_log_ratio(curr - old, token_mask).expand_as(curr) if sequence else curr - old
        ratio = saturating_exp(log_ratio)
        tau = torch.where(adv > 0, sapo_temperature_pos, sapo_temperature_neg)
        policy = pg_reduction.reduce(-torch.sigmoid(tau * (ratio - 1)) * 4 / tau * adv, token_mask)
    else:
        if loss_type == "cispo":
            config = ClippedPGConfig(
                reference_policy_kl_penalty=0.0, use_cispo=True, ratio_clip_min=1.0, ratio_clip_max=eps_high - 1.0
            )
        else:
            config = ClippedPGConfig(
                reference_policy_kl_penalty=0.0,
                ratio_clip_min=epsilon,
                ratio_clip_max=eps_high,
                ratio_clip_c=delta,
                token_level_loss=pg_reduction.token_level_loss,
                sequence_level_importance_ratios=sequence,
            )
        loss, _ = clipped_pg_loss(
            logprobs, old_logprobs, advantages, token_mask, config=config, **pg_reduction.kwargs()
        )
        policy = pg_reduction.scale * loss

    if beta == 0:
        return policy
    if ref_logprobs is None:
        raise ValueError(f"beta = {beta} != 0 requires ref_logprobs")
    counted = token_mask != 0
    curr = per_token("logprobs", logprobs, logprobs, counted)
    ref = per_token("ref_logprobs", ref_logprobs, logprobs, counted).detach()
    weights = None
    if use_bias_correction_kl:
        old = per_token("old_logprobs", old_logprobs, logprobs, counted).detach()
        log_ratio = _sequence_log_ratio(curr - old, token_mask).expand_as(curr) if sequence else curr - old
        weights = saturating_exp(log_ratio)
    kl = calculate_kl(
        curr, ref, kl_type="k3", input_clamp_value=None, output_clamp_value=None, importance_weights=weights
    )
    return policy + beta * reduction.reduce(kl, token_mask)


def _advantages_2d(advantages: object, like: Tensor, counted: Tensor) -> Tensor:
    adv = require_float_tensor("advantages", advantages)
    if adv.dim() == 1:
        if adv.shape[0] != like.shape[0]:
            raise ValueError(f"advantages of shape [B] must have B = {like.shape[0]}, got {list(adv.shape)}")
        adv = adv[:, None].expand_as(like)
    return per_token("advantages", adv, like, counted).detach()


def verl_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    loss_agg_mode: str = "token-mean",
    clip_ratio: float = 0.2,
    clip_ratio_low: float | None = None,
    clip_ratio_high: float | None = None,
    clip_ratio_c: float = 3.0,
    use_kl_loss: bool = False,
    kl_loss_coef: float = 0.001,
    kl_loss_type: str = "low_var_kl",
    ref_logprobs: Tensor | None = None,
    batch_num_tokens: Tensor | float | None = None,
    global_batch_size: Tensor | float | None = None,
    loss_scale_factor: float | None = None,
) -> Tensor:
    r"""verl's actor loss (``loss_mode="vanilla"``) of one micro-batch, as the library's calls (verl b178a3c).

    Per token (``compute_policy_loss_vanilla``, ``verl/trainer/ppo/core_algos.py``), with
    :math:`\bar r = \operatorname{clip}(r, 1 - \varepsilon_\text{low}, 1 + \varepsilon_\text{high})`:

    .. math::

        \begin{aligned}
        x &= \max(-A r,\ -A \bar r) \\
        x &\leftarrow \min(x,\ -c A) \quad (A < 0) \\
        x &\leftarrow x + \beta\,\mathrm{kl}
        \end{aligned}

    Dual clipping is always on (``clip_ratio_c`` = 3.0 by default; NeMo RL's ``ratio_clip_c`` is
    off by default). ``kl`` is ``kl_penalty(kl_loss_type)`` (``low_var_kl`` = :math:`k_3` with the log-ratio
    clamped to :math:`\pm 20` and the result to :math:`\pm 10`, NeMo RL's clamps; ``kl``/``k1`` and
    ``mse``/``k2`` unclamped), without a score-function weight. Both terms are reduced by
    :func:`verl_reduction`. verl also clamps the policy log-ratio to :math:`\pm 20` before the exp;
    the library saturates it at ~88 instead, which differs only for ratios beyond :math:`e^{20}`.

    Args:
        logprobs, old_logprobs, advantages, mask: as :func:`trl_grpo_loss`.
        loss_agg_mode: one of :data:`VERL_LOSS_AGG_MODES`.
        clip_ratio, clip_ratio_low, clip_ratio_high: verl's clip range (``None`` means ``clip_ratio``).
        clip_ratio_c: the dual-clip constant, > 1.
        use_kl_loss, kl_loss_coef, kl_loss_type: verl's KL-in-loss settings (defaults off, 0.001, ``low_var_kl``).
        ref_logprobs: required with ``use_kl_loss``.
        batch_num_tokens, global_batch_size, loss_scale_factor: ``agg_loss``'s global counts.

    Returns:
        The scalar loss of this micro-batch.
    """
    low = clip_ratio if clip_ratio_low is None else clip_ratio_low
    high = clip_ratio if clip_ratio_high is None else clip_ratio_high
    require_number("clip_ratio_low", low, low=0.0, high=1.0, high_inclusive=False)
    require_number("clip_ratio_high", high, low=0.0, high=1.0, high_inclusive=False)
    require_number("clip_ratio_c", clip_ratio_c, low=1.0, low_inclusive=False)
    require_bool("use_kl_loss", use_kl_loss)
    logprobs = per_token_2d("logprobs", logprobs)
    token_mask, _, _ = token_and_sample_masks(mask, None, logprobs)
    reduction = verl_reduction(
        loss_agg_mode,
        token_mask,
        batch_num_tokens=batch_num_tokens,
        global_batch_size=global_batch_size,
        loss_scale_factor=loss_scale_factor,
    )
    config = ClippedPGConfig(
        reference_policy_kl_penalty=0.0,
        ratio_clip_min=low,
        ratio_clip_max=high,
        ratio_clip_c=clip_ratio_c,
        token_level_loss=reduction.token_level_loss,
    )
    loss, _ = clipped_pg_loss(logprobs, old_logprobs, advantages, token_mask, config=config, **reduction.kwargs())
    policy = reduction.scale * loss
    if not use_kl_loss:
        return policy
    kl_type = _check_choice("kl_loss_type", kl_loss_type, tuple(VERL_KL_TYPES))
    require_number("kl_loss_coef", kl_loss_coef, low=0.0)
    if ref_logprobs is None:
        raise ValueError("use_kl_loss=True requires ref_logprobs")
    counted = token_mask != 0
    curr = per_token("logprobs", logprobs, logprobs, counted)
    ref = per_token("ref_logprobs", ref_logprobs, logprobs, counted).detach()
    clamps = (20.0, 10.0) if VERL_KL_TYPES[kl_type] == "k3" else (None, None)
    kl = calculate_kl(
        curr, ref, kl_type=VERL_KL_TYPES[kl_type], input_clamp_value=clamps[0], output_clamp_value=clamps[1]
    )
    return policy + kl_loss_coef * reduction.reduce(kl, token_mask)


def _rewards_1d(rewards: object) -> Tensor:
    r = require_float_tensor("rewards", rewards)
    require_ndim("rewards", r, (1,), "[N]")
    if not bool(torch.isfinite(r).all()):
        raise ValueError("rewards must be finite")
    return r


def trl_advantages(rewards: Tensor, num_generations: int, *, scale_rewards: str | bool = "group") -> Tensor:
    r"""TRL's GRPO advantages (``_generate_and_score_completions``, ``multi_objective_aggregation``
    ``"sum_then_normalize"``, TRL f2cd577).

    Rows come in consecutive groups of ``num_generations`` responses to one prompt:

    .. math::

        A_i = \frac{r_i - \bar r_g}{\sigma + 10^{-4}}

    with :math:`\bar r_g` the group mean (response :math:`i` included) and :math:`\sigma` the
    Bessel-corrected standard deviation of the group (``"group"``, default), of the whole batch
    (``"batch"``), or no division (``"none"``). The epsilon is added even where :math:`\sigma = 0`.
    In library terms: :func:`~nemo_rl_theory.advantages.calculate_baseline_and_std_per_prompt`
    with ``leave_one_out_baseline=False``, per group or with one id for the batch.

    Returns:
        ``Tensor[N]``.
    """
    r = _rewards_1d(rewards)
    g = _positive_int("num_generations", num_generations)
    if isinstance(scale_rewards, bool):
        scale_rewards = "group" if scale_rewards else "none"
    scale = _check_choice("scale_rewards", scale_rewards, TRL_SCALE_REWARDS)
    if r.numel() % g != 0:
        raise ValueError(f"rewards has {r.numel()} entries, not a multiple of num_generations = {g}")
    prompt_ids = torch.arange(r.numel()) // g
    mean, group_std = calculate_baseline_and_std_per_prompt(prompt_ids, r, None, leave_one_out_baseline=False)
    if scale == "none":
        return r - mean
    if scale == "batch":
        _, std = calculate_baseline_and_std_per_prompt(torch.zeros_like(prompt_ids), r, None, False)
    else:
        std = group_std
    return (r - mean) / (std + TRL_STD_EPS)


def verl_grpo_advantages(
    rewards: Tensor, index: Tensor, *, norm_adv_by_std_in_grpo: bool = True, epsilon: float = VERL_STD_EPS
) -> Tensor:
    r"""verl's GRPO advantages (``compute_grpo_outcome_advantage``, ``core_algos.py``, verl b178a3c).

    .. math::

        A_i = \frac{r_i - \bar r_g}{\sigma_g + \epsilon}
        \quad\text{or}\quad r_i - \bar r_g

    with the group mean :math:`\bar r_g` (response :math:`i` included), ``torch.std`` (Bessel)
    :math:`\sigma_g` and :math:`\epsilon = 10^{-6}`; a group of one response gets
    :math:`\bar r = 0`, :math:`\sigma = 1`, i.e. :math:`A = r / (1 + \epsilon)`. For groups of two or
    more this is :func:`~nemo_rl_theory.advantages.grpo_advantages` with
    ``use_leave_one_out_baseline=False`` (NeMo RL's :math:`10^{-6}` too).

    Args:
        rewards: ``Tensor[N]`` outcome rewards (verl sums its token-level rewards first).
        index: ``Tensor[N]`` prompt ids (verl's ``uid``).
        norm_adv_by_std_in_grpo: divide by the std (verl's default True; False is Dr. GRPO).
        epsilon: added to the std.

    Returns:
        ``Tensor[N]``.
    """
    r = _rewards_1d(rewards)
    idx = require_tensor("index", index)
    require_ndim("index", idx, (1,), "[N]")
    if idx.shape != r.shape:
        raise ValueError(f"index must have shape [N] = [{r.numel()}], got {list(idx.shape)}")
    require_bool("norm_adv_by_std_in_grpo", norm_adv_by_std_in_grpo)
    require_number("epsilon", epsilon, low=0.0)
    if r.numel() == 0:
        return r.clone()
    mean, std = calculate_baseline_and_std_per_prompt(idx, r, None, leave_one_out_baseline=False)
    _, inverse, counts = torch.unique(idx, return_inverse=True, return_counts=True)
    single = counts[inverse] == 1
    mean = torch.where(single, 0.0, mean)
    std = torch.where(single, 1.0, std)
    return (r - mean) / (std + epsilon) if norm_adv_by_std_in_grpo else r - mean


__all__ = [
    "DEFAULTS",
    "SOURCES",
    "TRL_LOSS_TYPES",
    "TRL_NOT_REPRODUCED",
    "TRL_SCALE_REWARDS",
    "TRL_STD_EPS",
    "VERL_KL_TYPES",
    "VERL_LOSS_AGG_MODES",
    "VERL_STD_EPS",
    "Reduction",
    "nemo_rl_reduction",
    "trl_advantages",
    "trl_grpo_loss",
    "trl_reduction",
    "verl_grpo_advantages",
    "verl_policy_loss",
    "verl_reduction",
]
