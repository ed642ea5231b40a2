r"""Reward transforms applied before the advantage: linear scaling, DAPO's overlong penalty, stop-properly.

NeMo RL 7ea279a applies them in ``grpo_train`` (``nemo_rl/algorithms/grpo.py``) in this order:
``scale_rewards`` (``grpo.reward_scaling``) first, then ``apply_reward_shaping``
(``grpo.reward_shaping``, ``nemo_rl/algorithms/reward_functions.py``), which applies *either* the
stop-properly penalty (when ``stop_properly_penalty_coef`` is set; the DAPO parameters are then
ignored with a warning) *or* DAPO's overlong penalty. Shaping keeps the reward before shaping as
``unshaped_total_reward``, which dynamic sampling uses for its standard deviation (see
:func:`~nemo_rl_theory.filters.dynamic_sampling_mask`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nemo_rl_theory._validation import require_float_tensor, require_number, require_tensor


def _finite_rewards(rewards: object) -> Tensor:
    r = require_float_tensor("rewards", rewards)
    if not bool(torch.isfinite(r.detach()).all()):
        raise ValueError("rewards must be finite, got NaN or inf")
    return r


def _require_int(name: str, value: object, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def scale_rewards(
    rewards: Tensor,
    *,
    source_min: float = 0.0,
    source_max: float = 1.0,
    target_min: float = 0.0,
    target_max: float = 1.0,
) -> Tensor:
    r"""Clamp rewards to the source interval, then map it linearly onto the target interval.

    .. math::

        \begin{aligned}
        \tilde r &= \operatorname{clamp}(r,\ s_\text{min},\ s_\text{max}), \\
        r' &= t_\text{min} + \frac{\tilde r - s_\text{min}}
              {s_\text{max} - s_\text{min}}\,(t_\text{max} - t_\text{min})
        \end{aligned}

    NeMo RL's ``scale_rewards`` (``grpo.reward_scaling``, defaults 0, 1, 0, 1: the identity on
    :math:`[0, 1]`) clamps (it warns about out-of-range rewards), and applies the same map to
    every ``reward/<name>`` GDPO component. DAPO's :math:`\{0, 1\} \to \{-1, 1\}` is
    ``target_min=-1``. NeMo RL applies it *before* reward shaping, so a scaled reward of
    :math:`-1` is what a later stop-properly penalty multiplies. Source: NeMo RL 7ea279a,
    ``nemo_rl/algorithms/grpo.py``.

    Args:
        rewards: float tensor of any shape, finite.
        source_min, source_max: :math:`s_\text{min} < s_\text{max}` (NeMo RL divides by their
            difference and does not check it).
        target_min, target_max: any finite numbers (``target_min > target_max`` reverses).

    Returns:
        A tensor of ``rewards``' shape and dtype (differentiable where not clamped).
    """
    r = _finite_rewards(rewards)
    for name, x in (
        ("source_min", source_min),
        ("source_max", source_max),
        ("target_min", target_min),
        ("target_max", target_max),
    ):
        require_number(name, x)
    if not float(source_min) < float(source_max):
        raise ValueError(f"source_min must be < source_max, got [{float(source_min):g}, {float(source_max):g}]")
    s0, s1, t0, t1 = float(source_min), float(source_max), float(target_min), float(target_max)
    clamped = r.clamp(min=s0, max=s1)
    return t0 + (clamped - s0) / (s1 - s0) * (t1 - t0)


def dapo_overlong_penalty(
    rewards: Tensor,
    lengths: Tensor,
    *,
    max_response_length: int,
    overlong_buffer_length: int,
    overlong_buffer_penalty: float,
) -> Tensor:
    r"""DAPO's soft overlong punishment as NeMo RL applies it (``grpo.reward_shaping``).

    With :math:`L_\text{exp} = L_\text{max} - L_\text{buf}` and response length :math:`\ell_i`:

    .. math::

        \begin{aligned}
        r'_i &= r_i + \min\Big(0,\ -\frac{\ell_i - L_\text{exp}}
                {L_\text{buf}}\, p\Big)
        \end{aligned}

    a linear ramp from 0 at :math:`L_\text{exp}` to :math:`-p` at :math:`L_\text{max}`, which
    NeMo RL does **not** cap: a response longer than ``max_response_length`` is penalised
    beyond :math:`-p` (length 30 with :math:`L_\text{max} = 25`, :math:`L_\text{buf} = 5`,
    :math:`p = 0.5` gets :math:`-1`; DAPO's paper caps at :math:`-p` for
    :math:`\ell > L_\text{max}`; NeMo RL's config comment says the same, its code does not).
    NeMo RL takes :math:`\ell_i` as the token count of the *first* assistant message. Source:
    NeMo RL 7ea279a, ``nemo_rl/algorithms/reward_functions.py`` (``apply_reward_shaping``);
    DAPO is arXiv:2503.14476.

    Args:
        rewards: ``Tensor[B]`` float, finite.
        lengths: ``Tensor[B]`` response lengths in tokens (integer or float, :math:`\ge 0`).
        max_response_length: :math:`L_\text{max} \ge 1`.
        overlong_buffer_length: :math:`L_\text{buf} \in [1, L_\text{max}]` (NeMo RL divides by
            it; a buffer longer than :math:`L_\text{max}` would penalise every response).
        overlong_buffer_penalty: :math:`p \ge 0` (NeMo RL asserts it).

    Returns:
        ``Tensor[B]`` in ``rewards``' dtype.
    """
    r = _finite_rewards(rewards)
    if r.dim() != 1:
        raise ValueError(f"rewards must have shape [B], got {list(r.shape)}")
    ell = require_tensor("lengths", lengths)
    if ell.shape != r.shape:
        raise ValueError(f"lengths must have the shape of rewards [{r.shape[0]}], got {list(ell.shape)}")
    if ell.dtype == torch.bool or ell.is_complex():
        raise TypeError(f"lengths must be an integer or float tensor, got dtype {ell.dtype}")
    if ell.is_floating_point() and not bool(torch.isfinite(ell).all()):
        raise ValueError("lengths must be finite")
    if bool((ell < 0).any()):
        raise ValueError("lengths must be non-negative")
    l_max = _require_int("max_response_length", max_response_length, low=1)
    l_buf = _require_int("overlong_buffer_length", overlong_buffer_length, low=1)
    if l_buf > l_max:
        raise ValueError(f"overlong_buffer_length must be <= max_response_length = {l_max}, got {l_buf}")
    require_number("overlong_buffer_penalty", overlong_buffer_penalty, low=0.0)
    expected = l_max - l_buf
    exceed = ell.to(torch.float64) - expected
    penalty = (-exceed / l_buf * float(overlong_buffer_penalty)).clamp(max=0.0)
    return r + penalty.to(r.dtype)


def stop_properly_penalty(rewards: Tensor, truncated: Tensor, coef: float) -> Tensor:
    r"""Scale the rewards of truncated responses (NeMo RL ``stop_properly_penalty_coef``, ProRL v2).

    .. math::

        r'_i = \begin{cases} c\, r_i & \text{truncated} \\ r_i & \text{otherwise} \end{cases}

    :math:`c \in [0, 1]`: 0 zeroes a truncated response's reward, 1 leaves it. It *scales*, so
    it is a penalty only for positive rewards: a negative reward (e.g. after
    :func:`scale_rewards` to :math:`[-1, 1]`, which NeMo RL applies first) moves *up* towards 0,
    and truncating a wrong answer then pays better than finishing it. When set, NeMo RL skips
    DAPO's overlong penalty. Source: NeMo RL 7ea279a, ``nemo_rl/algorithms/reward_functions.py``.

    Args:
        rewards: float tensor, finite.
        truncated: bool (or 0/1 integer) tensor of ``rewards``' shape: the response hit the
            generation limit.
        coef: :math:`c \in [0, 1]` (NeMo RL asserts the range).

    Returns:
        A tensor of ``rewards``' shape and dtype.
    """
    r = _finite_rewards(rewards)
    t = _bool_flags("truncated", truncated, r.shape)
    require_number("coef", coef, low=0.0, high=1.0)
    return torch.where(t, r * float(coef), r)


def _bool_flags(name: str, flags: object, shape: torch.Size) -> Tensor:
    t = require_tensor(name, flags)
    if t.shape != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    if t.dtype == torch.bool:
        return t
    if t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must be a bool (or 0/1 integer) tensor, got dtype {t.dtype}")
    if bool(((t != 0) & (t != 1)).any()):
        raise ValueError(f"{name} must hold only 0/1 (or bool), got other values")
    return t != 0


__all__ = ["dapo_overlong_penalty", "scale_rewards", "stop_properly_penalty"]
