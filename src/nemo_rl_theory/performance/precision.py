r"""Floating-point formats of mixed-precision training, and the train/inference mismatch they cause.

- :class:`FloatFormat` and :data:`FORMATS`: fp32, bf16, fp16 and the two OCP fp8 formats
  (e4m3 in its "fn" variant: no infinities, largest finite 448; e5m2, IEEE-like), with their
  bias, machine epsilon, largest finite, smallest normal and smallest subnormal derived from
  the bit counts alone; :func:`decode_bits` turns bit patterns into exact values (float64).
- :func:`mismatch_metrics`: NeMo RL's four train/inference mismatch diagnostics
  (``token_mult_prob_error``, ``gen_kl_error``, ``policy_kl_error``, ``js_divergence_error``)
  as a standalone function, numerically the metrics of
  :func:`~nemo_rl_theory.losses.clipped_pg.clipped_pg_loss`.
- :func:`estimator_moments`: bias norm and variance of a gradient estimator from its exact
  per-response values and the sampling distribution (for :mod:`nemo_rl_theory.exact`).

References: Micikevicius et al. 2018 (mixed precision, loss scaling), Kalamkar et al. 2019
(bfloat16), Micikevicius et al. 2022 (FP8 formats); NeMo RL 7ea279a,
``nemo_rl/algorithms/loss/loss_functions.py`` (``ClippedPGLossFn``'s metrics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nemo_rl_theory._validation import require_float_tensor, require_ndim, require_same_shape, require_tensor
from nemo_rl_theory.kl import check_kl_type
from nemo_rl_theory.losses._inputs import check_factors, token_and_sample_masks
from nemo_rl_theory.losses.clipped_pg import _mismatch_metrics
from nemo_rl_theory.masking import _masked_mean

__all__ = [
    "FORMATS",
    "FloatFormat",
    "decode_bits",
    "estimator_moments",
    "float_format",
    "mismatch_metrics",
]


@dataclass(frozen=True)
class FloatFormat:
    r"""A binary floating-point format: 1 sign bit, ``exponent_bits`` and ``mantissa_bits``.

    With :math:`e` exponent bits, :math:`m` mantissa bits and bias :math:`b = 2^{e-1} - 1`, a
    pattern with sign :math:`s`, exponent field :math:`E` and fraction field :math:`F` is

    .. math::

        \begin{aligned}
        E > 0:&\ (-1)^s\,2^{E-b}\,(1 + F/2^m) \\
        E = 0:&\ (-1)^s\,2^{1-b}\,F/2^m
        \end{aligned}

    except the special patterns: IEEE-like formats (``ieee_specials=True``) reserve
    :math:`E = 2^e - 1` for :math:`\pm\infty` (:math:`F = 0`) and NaN; the OCP ``fn``
    ("finite, NaN") variant of e4m3 uses that exponent for numbers and reserves only
    :math:`E = 2^e-1, F = 2^m-1` for NaN, and has no infinity. Hence

    .. math::

        \begin{aligned}
        \varepsilon &= 2^{-m},\quad
            x_\text{normal} = 2^{1-b} \\
        x_\text{sub} &= 2^{1-b-m} \\
        x_\text{max} &= (2 - 2^{-m})\,2^{2^e-2-b}
            \ \text{(IEEE)} \\
        x_\text{max} &= (2 - 2^{1-m})\,2^{2^e-1-b}
            \ \text{(fn)}
        \end{aligned}

    (:math:`\varepsilon` is the gap between 1 and the next number; round-to-nearest has
    relative error at most :math:`u = \varepsilon/2` in the normal range.)
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    ieee_specials: bool = True

    def __post_init__(self) -> None:
        for key, low in (("exponent_bits", 2), ("mantissa_bits", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} must be an int >= {low}, got {value!r}")
        if not isinstance(self.ieee_specials, bool):
            raise TypeError(f"ieee_specials must be a bool, got {type(self.ieee_specials).__name__}")

    @property
    def bits(self) -> int:
        """The width of the format in bits, 1 (sign) + exponent + mantissa."""
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def bias(self) -> int:
        r""":math:`b = 2^{e-1} - 1`."""
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def eps(self) -> float:
        r"""Machine epsilon :math:`2^{-m}`: the gap between 1 and the next representable number."""
        return 2.0**-self.mantissa_bits

    @property
    def unit_roundoff(self) -> float:
        r""":math:`u = 2^{-m-1}`, the largest relative error of round-to-nearest (normal range)."""
        return 2.0 ** -(self.mantissa_bits + 1)

    @property
    def smallest_normal(self) -> float:
        r""":math:`2^{1-b}`."""
        return 2.0 ** (1 - self.bias)

    @property
    def smallest_subnormal(self) -> float:
        r""":math:`2^{1-b-m}`."""
        return 2.0 ** (1 - self.bias - self.mantissa_bits)

    @property
    def max(self) -> float:
        """Largest finite value (see the class docstring)."""
        top = 2**self.exponent_bits - 1
        if self.ieee_specials:
            return (2.0 - 2.0**-self.mantissa_bits) * 2.0 ** (top - 1 - self.bias)
        return (2.0 - 2.0 ** (1 - self.mantissa_bits)) * 2.0 ** (top - self.bias)

    @property
    def has_inf(self) -> bool:
        """Whether the format has infinities (the fn variant has none)."""
        return self.ieee_specials


#: The formats of mixed-precision training, keyed by name.
FORMATS: dict[str, FloatFormat] = {
    f.name: f
    for f in (
        FloatFormat("fp32", 8, 23),
        FloatFormat("bf16", 8, 7),
        FloatFormat("fp16", 5, 10),
        FloatFormat("fp8_e4m3fn", 4, 3, ieee_specials=False),
        FloatFormat("fp8_e5m2", 5, 2),
    )
}


def float_format(name: str) -> FloatFormat:
    """The :class:`FloatFormat` called ``name`` (one of :data:`FORMATS`)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in FORMATS:
        raise ValueError(f"name must be one of {sorted(FORMATS)}, got {name!r}")
    return FORMATS[name]


def decode_bits(fmt: FloatFormat, patterns: Tensor) -> Tensor:
    r"""The exact values (``float64``) of integer bit ``patterns`` in format ``fmt``.

    Implements the class formula of :class:`FloatFormat` field by field (sign, exponent,
    fraction), independently of any dtype's own decoding; every value of these formats is
    exact in float64. NaN patterns give NaN, infinity patterns :math:`\pm\infty`.

    Args:
        fmt: the format.
        patterns: integer ``Tensor`` of any shape, entries in ``[0, 2**fmt.bits)``.

    Returns:
        ``Tensor`` of ``float64``, the shape of ``patterns``.
    """
    if not isinstance(fmt, FloatFormat):
        raise TypeError(f"fmt must be a FloatFormat, got {type(fmt).__name__}")
    p = require_tensor("patterns", patterns)
    if p.is_floating_point() or p.is_complex() or p.dtype == torch.bool:
        raise TypeError(f"patterns must be an integer tensor, got dtype {p.dtype}")
    p = p.to(torch.int64)
    if ((p < 0) | (p >= 2**fmt.bits)).any():
        raise ValueError(f"patterns must lie in [0, 2**{fmt.bits}) for {fmt.name}")
    m, e = fmt.mantissa_bits, fmt.exponent_bits
    frac = (p & (2**m - 1)).to(torch.float64)
    expo = (p >> m) & (2**e - 1)
    sign = torch.where(((p >> (m + e)) & 1) == 1, -1.0, 1.0).to(torch.float64)
    normal = torch.ldexp(1.0 + frac / 2**m, (expo - fmt.bias).to(torch.float64))
    subnormal = torch.ldexp(frac / 2**m, torch.full_like(frac, 1 - fmt.bias))
    value = sign * torch.where(expo == 0, subnormal, normal)
    top = expo == 2**e - 1
    if fmt.ieee_specials:
        value = torch.where(top & (frac == 0), sign * math.inf, value)
        value = torch.where(top & (frac != 0), math.nan, value)
    else:
        value = torch.where(top & (frac == 2**m - 1), math.nan, value)
    return value


def mismatch_metrics(
    train_logprobs: Tensor,
    generation_logprobs: Tensor,
    mask: Tensor,
    *,
    sample_mask: Tensor | None = None,
    kl_type: str = "k3",
    global_valid_toks: Tensor | float | None = None,
) -> dict[str, float]:
    r"""NeMo RL's train/inference mismatch metrics between :math:`\pi_\text{train}` and :math:`\pi_\text{gen}`.

    With :math:`p_t = \log\pi_\text{train}(y_t)` (NeMo RL's ``prev_logprobs``), :math:`g_t =
    \log\pi_\text{gen}(y_t)` (``generation_logprobs``), the token mean
    :math:`\langle x\rangle = \sum_t m_t x_t / (N_\text{tok} + 10^{-8})` and
    :math:`\mathrm{k3}(a, b) = e^{b-a} - 1 - (b - a)` (``kl_type``: k1 :math:`a - b`,
    k2 :math:`(b-a)^2/2`):

    .. math::

        \begin{aligned}
        \text{mult} &= \langle e^{|g_t - p_t|}\rangle \\
        \text{gen-kl} &= \langle \mathrm{k3}(g_t, p_t)\rangle \\
        \text{policy-kl} &= \langle \mathrm{k3}(p_t, g_t)\rangle \\
        \text{js} &= \tfrac12\langle \mathrm{k3}(c_t, p_t)
            + \mathrm{k3}(c_t, g_t)\rangle \\
        c_t &= \log\tfrac12(e^{p_t} + e^{g_t})
        \end{aligned}

    for ``token_mult_prob_error``, ``gen_kl_error``, ``policy_kl_error`` and
    ``js_divergence_error``. Under sampling from :math:`\pi_\text{gen}`, each token's k3 term has
    conditional mean :math:`\mathrm{KL}(\pi_\text{gen}(\cdot|s_t)\,\|\,\pi_\text{train}(\cdot|s_t))`,
    so for responses of a fixed length :math:`T` (``global_valid_toks`` = :math:`T` per response)
    the expected ``gen_kl_error`` is the sequence
    :math:`\mathrm{KL}(\pi_\text{gen}\,\|\,\pi_\text{train}) / T`. NeMo RL 7ea279a,
    ``nemo_rl/algorithms/loss/loss_functions.py`` (``ClippedPGLossFn.__call__``); the values
    equal those :func:`~nemo_rl_theory.losses.clipped_pg.clipped_pg_loss` reports.

    Args:
        train_logprobs: ``Tensor[B, T]`` log-probs of the sampled tokens recomputed by the trainer.
        generation_logprobs: ``Tensor[B, T]`` the sampler's log-probs of the same tokens.
        mask: ``Tensor[B, T]`` token mask.
        sample_mask: ``Tensor[B]`` (default all ones).
        kl_type: ``"k1"``, ``"k2"`` or ``"k3"`` (NeMo RL uses ``reference_policy_kl_type``).
        global_valid_toks: :math:`N_\text{tok}` (default: the local count of counted tokens).

    Returns:
        ``dict`` with the four metrics as floats.
    """
    prev = require_float_tensor("train_logprobs", train_logprobs)
    require_ndim("train_logprobs", prev, (2,), "[B, T]")
    gen = require_float_tensor("generation_logprobs", generation_logprobs)
    require_same_shape("train_logprobs", prev, "generation_logprobs", gen)
    check_kl_type("kl_type", kl_type)
    require_same_shape("train_logprobs", prev, "mask", require_tensor("mask", mask))
    _, _, full_mask = token_and_sample_masks(mask, sample_mask, prev)
    counted = full_mask != 0
    for name, t in (("train_logprobs", prev), ("generation_logprobs", gen)):
        if not torch.isfinite(t[counted]).all():
            raise ValueError(f"{name} has NaN/inf at a counted position")
    check_factors(global_valid_toks=(global_valid_toks, full_mask.sum()))
    n_toks = full_mask.sum() if global_valid_toks is None else global_valid_toks
    prev = torch.where(counted, prev, 0.0).detach()
    gen = torch.where(counted, gen, 0.0).detach()

    # The same computation clipped_pg_loss reports, on the validated, padding-zeroed inputs.
    return _mismatch_metrics(
        prev, gen, kl_type, lambda x: _masked_mean(x, full_mask, global_normalization_factor=n_toks)
    )


def estimator_moments(per_sample: Tensor, sampling_logprobs: Tensor, target: Tensor) -> dict[str, Tensor]:
    r"""Exact mean, bias and variance of an estimator from its value on every response.

    For an estimator :math:`\hat g(y)` (a vector) of a target :math:`g^\star`, with :math:`y`
    drawn from :math:`\mu`:

    .. math::

        \begin{aligned}
        \bar g &= \textstyle\sum_y \mu(y)\,\hat g(y) \\
        \text{bias} &= \lVert \bar g - g^\star \rVert_2 \\
        \text{var} &= \textstyle\sum_y \mu(y)\,
            \lVert \hat g(y) - \bar g\rVert_2^2
        \end{aligned}

    (``var`` is the trace of the covariance: the mean squared error of one sample is
    :math:`\text{bias}^2 + \text{var}`.)

    Args:
        per_sample: ``Tensor[N, P]`` the estimate from each of the :math:`N` responses.
        sampling_logprobs: ``Tensor[N]`` :math:`\log\mu(y)`, summing (in probability) to 1.
        target: ``Tensor[P]`` :math:`g^\star`.

    Returns:
        ``dict(mean=Tensor[P], bias=Tensor[], variance=Tensor[], mse=Tensor[])``.
    """
    g = require_float_tensor("per_sample", per_sample)
    require_ndim("per_sample", g, (2,), "[N, P]")
    lmu = require_float_tensor("sampling_logprobs", sampling_logprobs)
    if lmu.shape != (g.shape[0],):
        raise ValueError(f"sampling_logprobs must have shape [N] = [{g.shape[0]}], got {list(lmu.shape)}")
    tgt = require_float_tensor("target", target)
    if tgt.shape != (g.shape[1],):
        raise ValueError(f"target must have shape [P] = [{g.shape[1]}], got {list(tgt.shape)}")
    for name, t in (("per_sample", g), ("sampling_logprobs", lmu), ("target", tgt)):
        if torch.isnan(t).any() or (name != "sampling_logprobs" and not torch.isfinite(t).all()):
            raise ValueError(f"{name} must be finite (sampling_logprobs may hold -inf)")
    mu = lmu.exp()
    total = float(mu.sum())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"exp(sampling_logprobs) must sum to 1, got {total}")
    mean = (mu[:, None] * g).sum(dim=0)
    bias = (mean - tgt).norm()
    variance = (mu * (g - mean).square().sum(dim=1)).sum()
    return {"mean": mean, "bias": bias, "variance": variance, "mse": bias.square() + variance}
