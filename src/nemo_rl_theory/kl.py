r"""Per-token KL estimators k1, k2, k3 (Schulman, "Approximating KL divergence", 2020).

Tokens are sampled from the current policy :math:`\pi_\theta`; with the log-ratio
:math:`\log r = \log\pi_\text{ref}(y_t) - \log\pi_\theta(y_t)` the three estimators of
:math:`\mathrm{KL}(\pi_\theta\,\|\,\pi_\text{ref})` are

.. math::

    \begin{aligned}
    k_1 &= -\log r, \qquad k_2 = \tfrac12 (\log r)^2, \\
    k_3 &= e^{\log r} - 1 - \log r .
    \end{aligned}

:math:`k_1` and :math:`k_3` are unbiased, :math:`k_3 \ge 0` always (since
:math:`e^x \ge 1 + x`), :math:`k_2` is biased but low-variance.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from nemo_rl_theory._numerics import max_exponent
from nemo_rl_theory._validation import (
    require_float_tensor,
    require_number,
    require_same_shape,
)

KLType = Literal["k1", "k2", "k3"]
KL_TYPES: tuple[str, ...] = ("k1", "k2", "k3")


def check_kl_type(name: str, kl_type: object) -> None:
    if kl_type not in KL_TYPES:
        raise ValueError(f"{name} must be one of {KL_TYPES}, got {kl_type!r}")


def calculate_kl(
    logprobs: Tensor,
    reference_logprobs: Tensor,
    *,
    kl_type: KLType = "k3",
    input_clamp_value: float | None = 20.0,
    output_clamp_value: float | None = 10.0,
    importance_weights: Tensor | None = None,
) -> Tensor:
    r"""Per-token estimate of :math:`\mathrm{KL}(\pi_\theta\,\|\,\pi_\text{ref})`, as NeMo RL computes it.

    .. math::

        \begin{aligned}
        \ell_t &= \operatorname{clamp}\!\big(\log\pi_\text{ref}(y_t) - \log\pi_\theta(y_t), \\
        &\qquad\qquad \pm c_\text{in}\big), \\
        \mathrm{kl}_t &= \operatorname{clamp}\!\big(w_t \, k(\ell_t), \pm c_\text{out}\big)
        \end{aligned}

    with :math:`k` one of :math:`k_1 = -\ell`, :math:`k_2 = \ell^2/2`,
    :math:`k_3 = e^{\ell} - 1 - \ell`, and :math:`w_t` the optional importance weight
    (1 if not given). The order is fixed: input clamp, estimator, weighting, output clamp.

    Where the input clamp is active the estimator's gradient is zero, and the weight is
    *detached* there too, so a clamped token contributes no gradient at all (neither
    through the estimator nor through a score-function weight such as
    :math:`e^{\log\pi_\theta - \mathrm{sg}(\log\pi_\theta)}`).

    Args:
        logprobs: ``Tensor[B, T]`` log-probs of the sampled tokens under the policy.
        reference_logprobs: ``Tensor[B, T]`` log-probs of the same tokens under the reference.
        kl_type: ``"k1"``, ``"k2"`` or ``"k3"`` (default, NeMo RL's ``reference_policy_kl_type``).
        input_clamp_value: clamp for the log-ratio (``kl_input_clamp_value``, default 20); ``None`` disables.
        output_clamp_value: clamp for the weighted estimate (``kl_output_clamp_value``, default 10); ``None`` disables.
        importance_weights: optional ``Tensor[B, T]`` multiplied in before the output clamp.

    Returns:
        ``Tensor[B, T]``: the per-token estimate (not reduced; reduce with :func:`~nemo_rl_theory.masking.masked_mean`).
    """
    logprobs = require_float_tensor("logprobs", logprobs)
    reference_logprobs = require_float_tensor("reference_logprobs", reference_logprobs)
    require_same_shape("logprobs", logprobs, "reference_logprobs", reference_logprobs)
    check_kl_type("kl_type", kl_type)
    for name, clamp in (("input_clamp_value", input_clamp_value), ("output_clamp_value", output_clamp_value)):
        if clamp is not None:
            require_number(name, clamp, low=0.0, low_inclusive=False)
    if importance_weights is not None:
        importance_weights = require_float_tensor("importance_weights", importance_weights)
        require_same_shape("logprobs", logprobs, "importance_weights", importance_weights)
    return _calculate_kl(
        logprobs,
        reference_logprobs,
        kl_type=kl_type,
        input_clamp_value=input_clamp_value,
        output_clamp_value=output_clamp_value,
        importance_weights=importance_weights,
    )


def _calculate_kl(
    logprobs: Tensor,
    reference_logprobs: Tensor,
    *,
    kl_type: str,
    input_clamp_value: float | None,
    output_clamp_value: float | None,
    importance_weights: Tensor | None = None,
) -> Tensor:
    """Unchecked core of :func:`calculate_kl`."""
    log_ratio = reference_logprobs - logprobs
    if input_clamp_value is not None:
        clamped = log_ratio.clamp(min=-input_clamp_value, max=input_clamp_value)
        if importance_weights is not None:
            # A clamped token must not leak gradient through its weight either.
            importance_weights = torch.where(clamped == log_ratio, importance_weights, importance_weights.detach())
        log_ratio = clamped

    if kl_type == "k1":
        kl = -log_ratio
    elif kl_type == "k2":
        kl = 0.5 * log_ratio.square()
    else:  # k3; validated by the caller
        # Without an input clamp, e^x can overflow; saturate it so the gradient stays finite.
        kl = torch.expm1(log_ratio.clamp(max=max_exponent(log_ratio.dtype))) - log_ratio

    if importance_weights is not None:
        kl = importance_weights * kl
    if output_clamp_value is not None:
        kl = kl.clamp(min=-output_clamp_value, max=output_clamp_value)
    return kl
