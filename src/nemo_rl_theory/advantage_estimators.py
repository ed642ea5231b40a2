r"""NeMo RL's other advantage estimators: GDPO, Reinforce++, GAE (with VAPO's λ), raw reward, OPD.

Each function returns the numbers of the estimator of the same name in NeMo RL 7ea279a,
``nemo_rl/algorithms/advantage_estimator.py`` (``grpo.adv_estimator.name`` / ``ppo.adv_estimator.name``:
``"gdpo"``, ``"reinforce_plus_plus"``, ``"gae"``, ``"raw_reward"``, ``"opd"``), for the same inputs,
plus :func:`clip_advantages` (``grpo.advantage_clip_low`` / ``advantage_clip_high``, ``grpo.py``).
GRPO itself is :func:`~nemo_rl_theory.advantages.grpo_advantages`.

Conventions: ``mask`` is the ``[B, T]`` token mask *times* the sample mask (what NeMo RL passes as
``mask``), aligned with the per-token tensors. Advantages are constants of the update: every
estimator returns a detached tensor. Padding (``mask == 0``) may hold ``-inf`` or garbage in
``logprobs``/``values``; it never reaches a counted position. Where NeMo RL returns NaN (an
all-masked batch, a single counted token) the docstrings say what the library returns instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
from nemo_rl_theory.advantages import ADVANTAGE_STD_EPS, _baseline_and_std, _check_group_inputs
from nemo_rl_theory.kl import KLType, _calculate_kl, check_kl_type
from nemo_rl_theory.masking import _masked_mean, _masked_var

#: Lower clamp of the variance before ``rsqrt`` in Reinforce++ and raw-reward whitening (NeMo RL).
WHITEN_VAR_CLAMP = 1e-8
#: Added to the variance before ``rsqrt`` in GAE whitening (NeMo RL ``_reward_whiten``).
GAE_WHITEN_EPS = 1e-8
#: NeMo RL computes the in-reward KL with ``calculate_kl``'s default clamps (not the loss config's).
KL_INPUT_CLAMP = 20.0
KL_OUTPUT_CLAMP = 10.0


# ----------------------------------------------------------------------------- input checks


def _token_mask(mask: object, like_shape: torch.Size | None, dtype: torch.dtype, rows: int) -> Tensor:
    m = require_tensor("mask", mask)
    require_ndim("mask", m, (2,), "[B, T]")
    if m.shape[0] != rows:
        raise ValueError(f"mask must have B = {rows} rows (one per response), got shape {list(m.shape)}")
    if like_shape is not None and m.shape != like_shape:
        raise ValueError(f"mask must have shape {list(like_shape)}, got {list(m.shape)}")
    return as_mask("mask", m, torch.empty(0, dtype=dtype))


def _per_token(name: str, value: object, mask: Tensor) -> Tensor:
    """A ``[B, T]`` float input, finite where counted, zeroed (sanitised) elsewhere."""
    t = require_float_tensor(name, value)
    if t.shape != mask.shape:
        raise ValueError(f"{name} must have the shape of mask {list(mask.shape)}, got {list(t.shape)}")
    counted = mask != 0
    require_finite_where(name, t, counted)
    return torch.where(counted, t.detach(), 0.0)


def _rewards_1d(rewards: object) -> Tensor:
    r = require_float_tensor("rewards", rewards)
    require_ndim("rewards", r, (1,), "[B]")
    if not bool(torch.isfinite(r).all()):
        raise ValueError("rewards must be finite, got NaN or inf")
    return r.detach()


def _kl_in_reward(
    kl_penalty: object,
    kl_type: object,
    logprobs: object | None,
    reference_logprobs: object | None,
    mask: Tensor,
) -> Tensor | None:
    """``kl_penalty * KL`` per counted token (0 elsewhere), or ``None`` when ``kl_penalty == 0``."""
    require_number("kl_penalty", kl_penalty, low=0.0)
    check_kl_type("kl_type", kl_type)
    given = {"logprobs": logprobs, "reference_logprobs": reference_logprobs}
    checked = {name: _per_token(name, t, mask) for name, t in given.items() if t is not None}
    if float(kl_penalty) == 0.0:
        return None
    missing = [name for name, t in given.items() if t is None]
    if missing:
        raise ValueError(
            f"kl_penalty = {float(kl_penalty):g} > 0 puts the KL into the reward and needs "
            f"{' and '.join(missing)} (Tensor[B, T]); pass them or set kl_penalty = 0"
        )
    kl = _calculate_kl(
        checked["logprobs"],
        checked["reference_logprobs"],
        kl_type=str(kl_type),
        input_clamp_value=KL_INPUT_CLAMP,
        output_clamp_value=KL_OUTPUT_CLAMP,
    )
    return torch.where(mask != 0, float(kl_penalty) * kl, 0.0)


def _normalise_by_rows(advantages: Tensor) -> Tensor:
    """``(a - mean) / std`` over the rows (unbiased std); only centred if std is 0 or undefined."""
    if advantages.numel() <= 1:
        return torch.zeros_like(advantages)
    centred = advantages - advantages.mean()
    std = advantages.std()
    return centred / std if bool(std > 0) else centred


# ----------------------------------------------------------------------------- GDPO


def gdpo_advantages(
    component_rewards: Mapping[str, Tensor],
    prompt_ids: Tensor,
    *,
    reward_weights: Sequence[float] | Mapping[str, float] | None = None,
    use_leave_one_out_baseline: bool = True,
    normalize_rewards: bool = True,
) -> Tensor:
    r"""GDPO advantages (NeMo RL's ``GDPOAdvantageEstimator``): GRPO per reward, weighted, re-normalised.

    For each reward component :math:`k` (sorted by name, as NeMo RL sorts the
    ``reward/<name>`` keys) the GRPO advantage
    :math:`A^{(k)}_i` of :func:`~nemo_rl_theory.advantages.grpo_advantages` is taken
    separately, then

    .. math::

        \begin{aligned}
        S_i &= \textstyle\sum_k w_k\, A^{(k)}_i, \\
        A_i &= \frac{S_i - \bar S}{\operatorname{sd}(S)}
          \ \ (\operatorname{sd}(S) > 0), \\
        A_i &= S_i - \bar S \ \ \text{otherwise}
        \end{aligned}

    with :math:`\bar S` and :math:`\operatorname{sd}(S)` the mean and the Bessel-corrected
    standard deviation over *all* :math:`N` rows of the batch (one per response, not per token,
    no epsilon), and :math:`w_k = 1` by default. Any positive common scale of the weights
    cancels. The per-group :math:`\sigma` is the library's two-pass one (see
    :func:`~nemo_rl_theory.advantages.calculate_baseline_and_std_per_prompt`); ``total_reward``
    plays no part. A batch of one row gets 0 (NeMo RL: also 0, after a NaN standard deviation).
    Source: NeMo RL 7ea279a, ``nemo_rl/algorithms/advantage_estimator.py``; GDPO is
    arXiv:2601.05242.

    Args:
        component_rewards: ``{name: Tensor[N]}`` with at least two components (NeMo RL raises
            otherwise: use GRPO), all float, of one shape and dtype.
        prompt_ids: ``Tensor[N]`` or ``Tensor[N, L]``; identical ids/rows form a group.
        reward_weights: NeMo RL ``grpo.adv_estimator.reward_weights``: one weight per component
            in the *alphabetical order of the names* (a sequence, as NeMo RL), or a mapping
            ``{name: weight}`` with exactly the component names. ``None``: all 1.
        use_leave_one_out_baseline: as ``grpo.adv_estimator.use_leave_one_out_baseline`` (True).
        normalize_rewards: divide each component's advantage by its group :math:`\sigma + 10^{-6}`
            (``grpo.adv_estimator.normalize_rewards``, True).

    Returns:
        ``Tensor[N]`` (broadcast over tokens with ``A[:, None]``), detached.
    """
    if not isinstance(component_rewards, Mapping):
        raise TypeError(
            f"component_rewards must be a mapping name -> Tensor[N], got {type(component_rewards).__name__}"
        )
    names = sorted(component_rewards)
    if any(not isinstance(name, str) for name in names):
        raise TypeError("component_rewards must be keyed by str names")
    if len(names) < 2:
        raise ValueError(
            f"GDPO needs at least two reward components, got {len(names)} ({names}); "
            "use grpo_advantages for a single reward"
        )
    require_bool("use_leave_one_out_baseline", use_leave_one_out_baseline)
    require_bool("normalize_rewards", normalize_rewards)
    weights = _gdpo_weights(reward_weights, names)
    first = require_float_tensor(f"component_rewards[{names[0]!r}]", component_rewards[names[0]])
    parts = []
    for name in names:
        label = f"component_rewards[{name!r}]"
        r = require_float_tensor(label, component_rewards[name])
        if r.shape != first.shape or r.dtype != first.dtype:
            raise ValueError(
                f"{label} must have the shape and dtype of component_rewards[{names[0]!r}] "
                f"({list(first.shape)}, {first.dtype}), got {list(r.shape)}, {r.dtype}"
            )
        if not bool(torch.isfinite(r.detach()).all()):
            raise ValueError(f"{label} must be finite, got NaN or inf")
        ids, r, valid = _check_group_inputs(prompt_ids, r.detach(), None)
        baseline, std = _baseline_and_std(ids, r, valid, use_leave_one_out_baseline)
        adv = r - baseline
        if normalize_rewards:
            adv = torch.where(std > 0, adv / (std + ADVANTAGE_STD_EPS), adv)
        parts.append(adv)
    combined = sum((w * a for w, a in zip(weights, parts, strict=True)), torch.zeros_like(parts[0]))
    return _normalise_by_rows(combined).detach()


def _gdpo_weights(reward_weights: object, names: list[str]) -> list[float]:
    if reward_weights is None:
        return [1.0] * len(names)
    if isinstance(reward_weights, Mapping):
        if sorted(reward_weights) != names:
            raise ValueError(
                f"reward_weights must have exactly the component names {names}, got {sorted(reward_weights)}"
            )
        values = [reward_weights[name] for name in names]
    elif isinstance(reward_weights, Sequence) and not isinstance(reward_weights, str):
        values = list(reward_weights)
        if len(values) != len(names):
            raise ValueError(
                f"reward_weights has {len(values)} entries but there are {len(names)} reward components "
                f"{names}; give one weight per component, in the alphabetical order of the names"
            )
    else:
        raise TypeError(f"reward_weights must be None, a sequence or a mapping, got {type(reward_weights).__name__}")
    for i, w in enumerate(values):
        require_number(f"reward_weights[{i}]", w)
    return [float(w) for w in values]


# ----------------------------------------------------------------------------- Reinforce++


def reinforce_plus_plus_advantages(
    rewards: Tensor,
    prompt_ids: Tensor,
    mask: Tensor,
    *,
    minus_baseline: bool = True,
    logprobs: Tensor | None = None,
    reference_logprobs: Tensor | None = None,
    kl_penalty: float = 0.0,
    kl_type: KLType = "k3",
) -> Tensor:
    r"""Reinforce++ (-baseline) advantages (NeMo RL's ``ReinforcePlusPlusAdvantageEstimator``).

    .. math::

        \begin{aligned}
        u_{i,t} &= r_i - b_i - \beta\, \mathrm{kl}_{i,t}, \\
        \mu &= \frac{\sum m_{i,t}\, u_{i,t}}{\sum m_{i,t}}, \\
        v &= \frac{\sum m_{i,t}\,(u_{i,t} - \mu)^2}{\sum m_{i,t}}, \\
        A_{i,t} &= \frac{u_{i,t} - \mu}{\sqrt{\max(v, 10^{-8})}}
        \end{aligned}

    :math:`b_i` is the mean reward of response :math:`i`'s group *including* itself
    (``minus_baseline``; no leave-one-out, a group of one gets :math:`b_i = r_i`), or 0.
    :math:`\mathrm{kl}_{i,t}` is :func:`~nemo_rl_theory.kl.calculate_kl` of ``logprobs``
    against ``reference_logprobs`` with its default clamps (20 in, 10 out), subtracted at
    *every* token (``loss_fn.use_kl_in_reward``: then :math:`\beta` is
    ``reference_policy_kl_penalty`` and the loss has no KL term); :math:`\beta = 0` drops it.
    The whitening is global over the counted tokens of the batch (a long response weighs more),
    biased (no Bessel), no epsilon in the mean. Source: NeMo RL 7ea279a,
    ``nemo_rl/algorithms/advantage_estimator.py``; Reinforce++ is arXiv:2501.03262.

    At padded positions the value is :math:`(r_i - b_i - \mu)/\sqrt{\max(v, 10^{-8})}`, as
    NeMo RL, but without the KL term (NeMo RL evaluates it on whatever the padding holds).
    An all-masked batch returns zeros (NeMo RL: NaN, from :math:`0/0`).

    Args:
        rewards: ``Tensor[B]`` float.
        prompt_ids: ``Tensor[B]`` or ``Tensor[B, L]`` group ids.
        mask: ``Tensor[B, T]`` token mask times sample mask.
        minus_baseline: ``grpo.adv_estimator.minus_baseline`` (default True).
        logprobs: ``Tensor[B, T]`` policy log-probs (NeMo RL's ``prev_logprobs``); needed if
            ``kl_penalty > 0``.
        reference_logprobs: ``Tensor[B, T]``; needed if ``kl_penalty > 0``.
        kl_penalty: :math:`\beta \ge 0`.
        kl_type: ``"k1"``, ``"k2"`` or ``"k3"`` (``reference_policy_kl_type``, default k3).

    Returns:
        ``Tensor[B, T]``, detached.
    """
    r = _rewards_1d(rewards)
    require_bool("minus_baseline", minus_baseline)
    ids, r, valid = _check_group_inputs(prompt_ids, r, None)
    m = _token_mask(mask, None, r.dtype, r.shape[0])
    kl = _kl_in_reward(kl_penalty, kl_type, logprobs, reference_logprobs, m)
    adv = r - _baseline_and_std(ids, r, valid, False)[0] if minus_baseline else r
    per_token = adv[:, None].expand(m.shape)
    if kl is not None:
        per_token = per_token - kl
    count = m.sum()
    if not bool(count > 0):
        return torch.zeros_like(per_token)
    mean = (per_token * m).sum() / count
    var = ((per_token - mean).square() * m).sum() / count
    return ((per_token - mean) * var.clamp(min=WHITEN_VAR_CLAMP).rsqrt()).detach()


# ----------------------------------------------------------------------------- raw reward


def raw_reward_advantages(rewards: Tensor, mask: Tensor, *, normalize: bool = False) -> Tensor:
    r"""The reward itself as every token's advantage (NeMo RL's ``RawRewardAdvantageEstimator``).

    .. math::

        \begin{aligned}
        A_{i,t} &= r_i \quad \text{(default), or} \\
        A_{i,t} &= \frac{r_i - \mu}{\sqrt{\max(v, 10^{-8})}}, \\
        \mu &= \frac{\sum m_{i,t}\, r_i}{\max(\sum m_{i,t}, 1)}, \\
        v &= \frac{\sum m_{i,t}\,(r_i - \mu)^2}{\max(\sum m_{i,t}, 1)}
        \end{aligned}

    (``ppo.adv_estimator.normalize_advantages``; no baseline, no value model). The value is
    broadcast to *every* position, padding included, as NeMo RL (the loss masks it). NeMo RL
    returns ``(advantages, None)``; this returns the advantages. An all-masked batch gives
    :math:`\mu = 0`, :math:`v = 0`: :math:`A = 10^4 r` everywhere, NeMo RL's (inert) value.
    Source: NeMo RL 7ea279a, ``nemo_rl/algorithms/advantage_estimator.py``.

    Args:
        rewards: ``Tensor[B]`` float, finite.
        mask: ``Tensor[B, T]`` token mask times sample mask.
        normalize: whiten over the counted tokens (default False).

    Returns:
        ``Tensor[B, T]``, detached.
    """
    r = _rewards_1d(rewards)
    require_bool("normalize", normalize)
    m = _token_mask(mask, None, r.dtype, r.shape[0])
    adv = r[:, None].expand(m.shape).clone()
    if normalize:
        count = m.sum().clamp(min=1.0)
        mean = (adv * m).sum() / count
        var = ((adv - mean).square() * m).sum() / count
        adv = (adv - mean) * var.clamp(min=WHITEN_VAR_CLAMP).rsqrt()
    return adv


# ----------------------------------------------------------------------------- OPD


def opd_advantages(teacher_logprobs: Tensor, logprobs: Tensor, mask: Tensor) -> Tensor:
    r"""On-policy distillation advantages (NeMo RL's ``OPDAdvantageEstimator``, MOPD eq. 8).

    .. math::

        \begin{aligned}
        A_{i,t} = m_{i,t}\, \mathrm{sg}\big[
          &\log\pi_\text{teacher}(y_t) \\
          &- \log\pi_\theta(y_t)\big]
        \end{aligned}

    per token: positive where the teacher likes the sampled token more than the student.
    The rewards play no part. NeMo RL pairs it with ``disable_ppo_ratio`` and ICE-POP
    truncated importance sampling in the loss. Padding gives 0 even if it holds ``-inf``
    (NeMo RL: :math:`-\infty \cdot 0 =` NaN there). Source: NeMo RL 7ea279a,
    ``nemo_rl/algorithms/advantage_estimator.py``; MOPD is arXiv:2601.02780.

    Args:
        teacher_logprobs: ``Tensor[B, T]`` teacher log-probs of the sampled tokens.
        logprobs: ``Tensor[B, T]`` student log-probs (NeMo RL's ``prev_logprobs``).
        mask: ``Tensor[B, T]``.

    Returns:
        ``Tensor[B, T]``, detached.
    """
    teacher = require_float_tensor("teacher_logprobs", teacher_logprobs)
    student = require_float_tensor("logprobs", logprobs)
    require_ndim("logprobs", student, (2,), "[B, T]")
    require_same_shape("logprobs", student, "teacher_logprobs", teacher)
    m = _token_mask(mask, student.shape, student.dtype, student.shape[0])
    teacher = _per_token("teacher_logprobs", teacher, m)
    student = _per_token("logprobs", student, m)
    return torch.where(m != 0, (teacher - student) * m, 0.0).detach()


# ----------------------------------------------------------------------------- clipping


def clip_advantages(advantages: Tensor, low: float | None = None, high: float | None = None) -> Tensor:
    r"""Clamp advantages to ``[low, high]`` (NeMo RL ``grpo.advantage_clip_low`` / ``advantage_clip_high``).

    .. math::

        A' = \min\big(\max(A,\ \ell),\ h\big)

    with a missing bound left open (both ``None``, NeMo RL's default: unchanged). NeMo RL
    applies it after the estimator (and after the message-level advantage penalties) in
    ``grpo_train``, to every position. Unlike NeMo RL (``_clip_grpo_advantages``, which would
    set everything to ``high``), ``low > high`` is an error. Source: NeMo RL 7ea279a,
    ``nemo_rl/algorithms/grpo.py``.

    Args:
        advantages: float tensor of any shape.
        low: lower bound or ``None``.
        high: upper bound or ``None``.

    Returns:
        A tensor of the same shape (a new one; autograd passes where not clamped).
    """
    a = require_float_tensor("advantages", advantages)
    for name, bound in (("low", low), ("high", high)):
        if bound is not None:
            require_number(name, bound)
    if low is not None and high is not None and float(low) > float(high):
        raise ValueError(f"low must be <= high, got low = {float(low):g} > high = {float(high):g}")
    if low is not None:
        a = a.clamp(min=float(low))
    if high is not None:
        a = a.clamp(max=float(high))
    return a if (low is not None or high is not None) else a.clone()


# ----------------------------------------------------------------------------- GAE


def gae_advantages(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
    normalize_advantages: bool = True,
    lam_value: float | None = None,
    lam_policy: float | None = None,
    length_adaptive_alpha: float = 0.0,
    logprobs: Tensor | None = None,
    reference_logprobs: Tensor | None = None,
    kl_penalty: float = 0.0,
    kl_type: KLType = "k3",
) -> tuple[Tensor, Tensor]:
    r"""GAE advantages and value targets (NeMo RL's ``GeneralizedAdvantageEstimator``, PPO).

    Token rewards: the KL penalty at every counted token, the sequence reward at the *last*
    counted token :math:`L_i` (if any; for a 0/1 mask this is NeMo RL's position, for fractional
    weights NeMo RL's ``argmax`` would pick the last position of the largest weight):

    .. math::

        \begin{aligned}
        \rho_{i,t} &= m_{i,t}\big(-\beta\,\mathrm{kl}_{i,t}
          + [t = L_i]\, r_i\big).
        \end{aligned}

    Backward over the counted tokens only (a masked position is skipped: "carry-forward"),
    with :math:`t'` the next counted position after :math:`t` and :math:`V_{i,t'} = 0`,
    :math:`\hat A_{i,t'} = 0` past the end:

    .. math::

        \begin{aligned}
        \delta_t &= \rho_t + \gamma V_{t'} - V_t, \\
        \hat A_t &= \delta_t + \gamma\lambda \hat A_{t'}, \\
        R_t &= \hat A^{(\lambda_V)}_t + V_t, \\
        A_t &= \hat A^{(\lambda_\pi)}_t
        \end{aligned}

    VAPO's decoupled λ: the value targets :math:`R` use :math:`\lambda_V` = ``lam_value``
    (default ``lam``; VAPO: 1) and the policy advantages :math:`\lambda_\pi` = ``lam_policy``
    (default ``lam``), or, when ``length_adaptive_alpha`` :math:`\alpha > 0` (it takes
    priority), per response of :math:`\ell_i = \sum_t m_{i,t}` counted tokens

    .. math::

        \begin{aligned}
        \lambda_{\pi,i} &= \operatorname{clamp}(x_i, 0, 1), \\
        x_i &= 1 - \frac{1}{\max(\alpha\ell_i,\,1)}
        \end{aligned}

    (VAPO: :math:`\alpha = 0.05`, so responses under 20 tokens get :math:`\lambda_\pi = 0`),
    computed in float32 as NeMo RL does (then cast to ``values``' dtype).
    With ``normalize_advantages`` (default True) the advantages are whitened over the counted
    tokens with :func:`~nemo_rl_theory.masking.masked_var` (unbiased, with :math:`10^{-8}` in
    the mean's denominator and in :math:`1/\sqrt{v + 10^{-8}}`); advantages are then set to 0 at
    padding, the returns are not (:math:`R_t` there is the carried :math:`\hat A` plus
    :math:`V_t`, as NeMo RL). Source: NeMo RL 7ea279a, ``nemo_rl/algorithms/advantage_estimator.py``;
    GAE is arXiv:1506.02438, VAPO arXiv:2504.05118.

    Edge cases: with a single counted token in the batch the whitened advantage is 0 (NeMo RL:
    0, or NaN when that token's raw advantage is exactly 0); padding that holds NaN/inf in
    ``values`` or log-probs never reaches a counted position (NeMo RL's carry
    :math:`V m + (1 - m) V'` turns it into NaN everywhere).

    Args:
        rewards: ``Tensor[B]`` float sequence rewards.
        values: ``Tensor[B, T]`` critic values :math:`V_{i,t}` (detached inside).
        mask: ``Tensor[B, T]`` token mask times sample mask.
        gamma: :math:`\gamma \in [0, 1]` (``gae_gamma``, default 1).
        lam: :math:`\lambda \in [0, 1]` (``gae_lambda``, default 0.95).
        normalize_advantages: ``normalize_advantages`` (default True).
        lam_value: :math:`\lambda_V \in [0, 1]` or ``None`` (``gae_lambda_value``).
        lam_policy: :math:`\lambda_\pi \in [0, 1]` or ``None`` (``gae_lambda_policy``).
        length_adaptive_alpha: :math:`\alpha \ge 0`; 0 disables (default).
        logprobs: ``Tensor[B, T]`` policy log-probs; needed if ``kl_penalty > 0``.
        reference_logprobs: ``Tensor[B, T]``; needed if ``kl_penalty > 0``.
        kl_penalty: :math:`\beta \ge 0` (``reference_policy_kl_penalty`` under
            ``use_kl_in_reward``; 0: no KL in the reward).
        kl_type: ``"k1"``, ``"k2"`` or ``"k3"``.

    Returns:
        ``(advantages, returns)``, both ``Tensor[B, T]``, detached.
    """
    r = _rewards_1d(rewards)
    v_raw = require_float_tensor("values", values)
    require_ndim("values", v_raw, (2,), "[B, T]")
    if v_raw.shape[0] != r.shape[0]:
        raise ValueError(f"values must have B = {r.shape[0]} rows (one per reward), got shape {list(v_raw.shape)}")
    m = _token_mask(mask, v_raw.shape, v_raw.dtype, r.shape[0])
    v = _per_token("values", v_raw, m)
    for name, x in (("gamma", gamma), ("lam", lam)):
        require_number(name, x, low=0.0, high=1.0)
    for name, x in (("lam_value", lam_value), ("lam_policy", lam_policy)):
        if x is not None:
            require_number(name, x, low=0.0, high=1.0)
    require_number("length_adaptive_alpha", length_adaptive_alpha, low=0.0)
    require_bool("normalize_advantages", normalize_advantages)
    kl = _kl_in_reward(kl_penalty, kl_type, logprobs, reference_logprobs, m)

    token_rewards = _gae_token_rewards(r.to(v.dtype), m, kl)
    lam_v = float(lam if lam_value is None else lam_value)
    lam_pi: float | Tensor
    if float(length_adaptive_alpha) > 0:
        # In float32, as NeMo RL's ``mask.sum(dim=1).float()``: the same lambda bit for bit.
        lengths = m.sum(dim=1).float()
        lam_pi = (1.0 - 1.0 / (float(length_adaptive_alpha) * lengths).clamp(min=1.0)).clamp(0.0, 1.0)
        lam_pi = lam_pi.to(v.dtype)
    else:
        lam_pi = float(lam if lam_policy is None else lam_policy)

    carried_v = _gae_backward(token_rewards, v, m, float(gamma), lam_v)
    carried_pi = (
        carried_v
        if isinstance(lam_pi, float) and lam_pi == lam_v
        else _gae_backward(token_rewards, v, m, float(gamma), lam_pi)
    )
    returns = carried_v + v_raw.detach()
    advantages = carried_pi
    if normalize_advantages:
        count = m.sum()
        if bool(count > 1):
            mean = _masked_mean(advantages, m)
            var = _masked_var(advantages, m, mean)
            advantages = (advantages - mean) * torch.rsqrt(var + GAE_WHITEN_EPS)
        else:
            advantages = torch.zeros_like(advantages)
    advantages = torch.where(m != 0, advantages, 0.0)
    return advantages.detach(), returns.detach()


def _gae_token_rewards(rewards: Tensor, mask: Tensor, kl: Tensor | None) -> Tensor:
    """``-kl`` at counted tokens plus the sequence reward at the last counted token, times the mask."""
    token_rewards = torch.zeros_like(mask) if kl is None else -kl
    counted = mask != 0
    has_response = counted.any(dim=1)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(counted, positions, -1).amax(dim=1).clamp(min=0)
    terminal = torch.zeros_like(token_rewards).scatter(
        1, last[:, None], torch.where(has_response, rewards, 0.0)[:, None]
    )
    return torch.where(counted, (token_rewards + terminal) * mask, 0.0)


def _gae_backward(token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float | Tensor) -> Tensor:
    """Carry-forward GAE recursion; position ``t`` holds the advantage of the next counted token at or after it."""
    batch, length = values.shape
    next_value = values.new_zeros(batch)
    running = values.new_zeros(batch)
    out = torch.empty_like(values)
    for t in range(length - 1, -1, -1):
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        updated = delta + gamma * lam * running
        m = mask[:, t]
        next_value = values[:, t] * m + (1 - m) * next_value
        running = updated * m + (1 - m) * running
        out[:, t] = running
    return out


__all__ = [
    "clip_advantages",
    "gae_advantages",
    "gdpo_advantages",
    "opd_advantages",
    "raw_reward_advantages",
    "reinforce_plus_plus_advantages",
]
