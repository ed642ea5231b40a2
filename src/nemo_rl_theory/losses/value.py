r"""PPO's value (critic) loss: clipped mean squared error (NeMo RL's ``MseValueLossFn``).

NeMo RL 7ea279a, ``nemo_rl/algorithms/loss/loss_functions.py`` (``MseValueLossConfig``,
``MseValueLossFn``); the metrics are combined over micro-batches in ``nemo_rl/algorithms/ppo.py``
(``_compute_critic_metrics``: means summed, ``values_min``/``values_max`` by min/max, and the
explained variance from the four sufficient statistics).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nemo_rl_theory._validation import as_mask, require_number, require_same_shape
from nemo_rl_theory.losses._inputs import check_factors, per_token, per_token_2d, token_and_sample_masks
from nemo_rl_theory.masking import _masked_mean


def _values_2d(values: object) -> Tensor:
    """Accept a value head's ``[B, T, 1]`` output as NeMo RL does (it squeezes the last dim)."""
    if isinstance(values, Tensor) and values.dim() == 3 and values.shape[-1] == 1:
        values = values.squeeze(-1)
    return per_token_2d("values", values)


def value_loss(
    values: Tensor,
    old_values: Tensor | None,
    returns: Tensor,
    mask: Tensor,
    *,
    scale: float = 1.0,
    cliprange: float | None = None,
    sample_mask: Tensor | None = None,
    global_valid_toks: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    r"""Clipped MSE value loss of PPO's critic, token-level, with NeMo RL's factor 1/2.

    With :math:`V` = ``values`` (the critic now), :math:`V^\text{old}` = ``old_values`` (the
    critic that produced the rollout's values), :math:`R` = ``returns`` and
    :math:`\varepsilon` = ``cliprange``:

    .. math::

        \begin{aligned}
        \bar V_t &= \operatorname{clip}(V_t,\,
            V^\text{old}_t - \varepsilon,\\
        &\qquad\qquad V^\text{old}_t + \varepsilon) \\
        \ell_t &= \max\big((V_t - R_t)^2,\\
        &\qquad\quad (\bar V_t - R_t)^2\big) \\
        \mathcal L &= \frac{c}{2}\,
            \frac{\sum_{b,t} m_{b,t} s_b\,\ell_{b,t}}
            {N_\text{tok} + 10^{-8}}
        \end{aligned}

    where :math:`c` = ``scale``, :math:`m` the token ``mask``, :math:`s` the ``sample_mask``
    and :math:`N_\text{tok}` = ``global_valid_toks`` (default: the local count
    :math:`\sum m_{b,t} s_b`). Without clipping (``cliprange`` ``None`` or ``0``, as NeMo RL's
    ``if cliprange and cliprange > 0``) :math:`\ell_t = (V_t - R_t)^2`. The max takes the
    *larger* (pessimistic) error. With :math:`e_t` the clip edge on the side :math:`V_t` moved
    past (:math:`V^\text{old}_t \pm \varepsilon`), the clipped error is the larger one exactly
    when :math:`V_t` lies strictly between :math:`e_t` and its mirror image :math:`2R_t - e_t`
    about the return: the move went toward :math:`R_t` (and possibly a little past it). There
    the gradient is 0, so a critic that overshot :math:`R_t` by less than :math:`R_t - e_t` is
    not pulled back in this update. Outside that interval (a move away from :math:`R_t`, or
    past its mirror point) the full gradient applies. The gradient is
    :math:`\partial\mathcal L/\partial V_t = c\,m_t s_t (V_t - R_t)/N_\text{tok}` where the
    unclipped branch is active and 0 where the clipped one is.

    ``old_values`` and ``returns`` are data: they receive no gradient.

    Alignment: every tensor is ``[B, T]`` over the same positions (NeMo RL applies the value
    loss to the value head's output and the token mask without a shift).

    Args:
        values: ``Tensor[B, T]`` (or the head's ``[B, T, 1]``) predicted values :math:`V_t`.
        old_values: ``Tensor[B, T]`` values of the rollout critic; required when clipping,
            may be ``None`` otherwise.
        returns: ``Tensor[B, T]`` regression targets :math:`R_t` (e.g. from GAE).
        mask: ``Tensor[B, T]`` token mask.
        scale: :math:`c \ge 0` (NeMo RL's ``value_loss_fn.scale``; its PPO example uses 0.4).
        cliprange: :math:`\varepsilon \ge 0` or ``None`` (NeMo RL's default; its PPO example
            uses 0.2).
        sample_mask: ``Tensor[B]`` (default all ones).
        global_valid_toks: valid tokens in the global batch (micro-batching / data parallel).

    Returns:
        ``(loss, metrics)``; metrics (NeMo RL's names; with a global count each mean is this
        micro-batch's share, so summing over micro-batches gives the global mean):
        ``loss``; ``vf_clipfrac`` (share of tokens whose clipped error is strictly larger, 0.0
        without clipping); ``returns_mean``, ``values_mean``, ``returns_sq_mean``
        (:math:`\overline{R^2}`), ``residual_sq_mean`` (:math:`\overline{(R - V)^2}`), from which
        NeMo RL's ``ppo.py`` computes the explained variance
        :math:`1 - \frac{\overline{(R-V)^2} - (\bar R - \bar V)^2}{\max(\overline{R^2} - \bar R^2,\,10^{-8})}`;
        ``values_min``, ``values_max`` over the counted tokens; ``num_valid_samples`` (the
        number of rows ``B``, as NeMo RL reports it).

    Difference from NeMo RL: on a micro-batch with no counted token NeMo RL reports
    ``values_min = values_max = 0.0``, which its min/max over micro-batches then takes for a
    real value; here they are ``+inf`` / ``-inf`` (the identities of min and max), as
    :func:`~nemo_rl_theory.losses.clipped_pg.clipped_pg_loss` does for its ratio extrema.
    """
    values = _values_2d(values)
    require_number("scale", scale, low=0.0)
    if cliprange is not None:
        require_number("cliprange", cliprange, low=0.0)
    clipping = cliprange is not None and cliprange > 0
    require_same_shape("values", values, "mask", as_mask("mask", mask, values))
    _, _, full_mask = token_and_sample_masks(mask, sample_mask, values)
    counted = full_mask != 0
    check_factors(global_valid_toks=(global_valid_toks, full_mask.sum()))
    n_toks = full_mask.sum() if global_valid_toks is None else global_valid_toks

    v = per_token("values", values, values, counted, like_name="values")
    ret = per_token("returns", returns, values, counted, like_name="values").detach()
    if old_values is None:
        if clipping:
            raise ValueError(f"old_values is required when clipping (cliprange = {cliprange} > 0)")
        old = None
    else:
        old = per_token("old_values", old_values, values, counted, like_name="values").detach()

    unclipped = (v - ret) ** 2
    if clipping:
        assert old is not None
        v_clipped = torch.clamp(v, old - cliprange, old + cliprange)
        clipped = (v_clipped - ret) ** 2
        per_token_loss = torch.maximum(unclipped, clipped)
    else:
        per_token_loss = unclipped
    loss = 0.5 * scale * _masked_mean(per_token_loss, full_mask, global_normalization_factor=n_toks)

    with torch.no_grad():

        def mean(x: Tensor) -> float:
            return float(_masked_mean(x, full_mask, global_normalization_factor=n_toks))

        vd = v.detach()
        clipfrac = mean((clipped > unclipped).to(v.dtype)) if clipping else 0.0
        if counted.any():
            values_min, values_max = float(vd[counted].min()), float(vd[counted].max())
        else:
            values_min, values_max = math.inf, -math.inf
        metrics = {
            "loss": float(loss.detach()),
            "vf_clipfrac": clipfrac,
            "returns_mean": mean(ret),
            "values_mean": mean(vd),
            "values_min": values_min,
            "values_max": values_max,
            "returns_sq_mean": mean(ret**2),
            "residual_sq_mean": mean((ret - vd) ** 2),
            "num_valid_samples": float(values.shape[0]),
        }
    return loss, metrics
