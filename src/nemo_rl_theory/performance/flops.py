r"""FLOPs per token of a dense transformer, model FLOPs utilisation, and FLOP counting with torch.

Conventions (Kaplan et al. 2020, Table 1; Hoffmann et al. 2022, Appendix F; Chowdhery et al.
2022, Appendix B): one multiply-add is **2 FLOPs**; a matrix product ``[m, k] @ [k, n]`` costs
``2 m k n``. A weight matrix with :math:`N` entries, applied to one token, costs :math:`2N`
forward and :math:`4N` backward (the gradient of its input and of the weight), so a token costs

.. math::

    \begin{aligned}
    C_\text{fwd} &\approx 2N, \\
    C_\text{train} &\approx 6N
    \end{aligned}

where :math:`N` counts the parameters that multiply an activation (every ``Linear`` weight,
the un-embedding / LM head included). **Excluded**: the input-embedding lookup (a gather: no
multiply, so its :math:`V d` parameters cost nothing), biases, norms, activations, softmax,
residual adds and the optimizer update: they are :math:`O(d)` per token, not :math:`O(d^2)`.
The papers differ on the vocabulary: Kaplan et al.'s non-embedding :math:`N` leaves out the
LM head as well, Hoffmann et al. (App. F) count the embedding (as a one-hot product) and the
final logits; the convention here, the head in :math:`N` and the lookup out, is what
``FlopCounterMode`` counts for a model with an ``nn.Embedding`` and an ``nn.Linear`` head.
The attention scores and their weighted sum are matrix products without parameters; they are
:func:`attention_flops_per_token`.

:func:`count_flops` and :func:`flop_breakdown` run a callable under
:class:`torch.utils.flop_counter.FlopCounterMode` (torch's own counter: it counts ``mm``,
``addmm``, ``bmm``, ``baddbmm``, convolutions and the fused attention kernels it knows, with the
same ``2 m k n`` convention; ``addmm``'s bias add is not counted). In torch 2.13 it looks
operators up by name: ``mm``/``addmm`` and their ``out=`` forms are counted, the in-place
``addmm_``/``baddbmm_`` are not (count 0), and the fused attention kernels are counted as
dense (no causal discount) with the scores recomputed in backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch.utils.flop_counter import FlopCounterMode

from nemo_rl_theory._validation import require_bool

__all__ = [
    "attention_flops_per_token",
    "count_flops",
    "dense_flops_per_token",
    "flop_breakdown",
    "model_flops_utilization",
    "transformer_flops_per_token",
]

#: Training (forward + backward) FLOPs are this multiple of forward FLOPs for matrix products:
#: backward computes two products (input gradient and weight gradient) per forward product.
TRAINING_MULTIPLE = 3


def _require_count(name: str, value: object, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def _require_positive_finite(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {v}")
    return v


def dense_flops_per_token(num_params: int, *, training: bool = False) -> int:
    r"""FLOPs per token of the parameter matrix products: :math:`2N` forward, :math:`6N` training.

    .. math::

        \begin{aligned}
        C_\text{fwd} &= 2N \\
        C_\text{train} &= 2N + 4N = 6N
        \end{aligned}

    Exact (not approximate) for a model whose :math:`N` parameters are all entries of weight
    matrices applied to every token, when every product's input needs a gradient (so backward
    forms both the input and the weight gradient). Excludes attention scores
    (:func:`attention_flops_per_token`), the embedding lookup, biases, norms and the optimizer.

    Args:
        num_params: :math:`N`, the number of weight-matrix entries each token is multiplied by
            (non-embedding parameters plus the LM head; see the module docstring).
        training: ``False`` for forward only, ``True`` for forward + backward.

    Returns:
        FLOPs per token (int).
    """
    n = _require_count("num_params", num_params)
    require_bool("training", training)
    return (2 * TRAINING_MULTIPLE if training else 2) * n


def attention_flops_per_token(
    num_layers: int, seq_len: int, hidden: int, *, training: bool = False, causal: bool = False
) -> float:
    r"""FLOPs per token of the two parameter-free attention products, :math:`QK^\top` and :math:`AV`.

    A query attending to :math:`k` keys with attention width :math:`d` (``hidden`` = heads
    times head size) costs :math:`2kd` for its scores and :math:`2kd` for the weighted sum of
    values, in each of :math:`L` layers:

    .. math::

        \begin{aligned}
        C^\text{attn}_\text{fwd} &= 4 L \bar k d \\
        C^\text{attn}_\text{train} &= 3 C^\text{attn}_\text{fwd}
        \end{aligned}

    with :math:`\bar k = T` (``causal=False``: every query scores all :math:`T` keys, as a dense
    kernel that computes the full :math:`T \times T` scores and then masks them does; this is
    PaLM's :math:`6N + 12LHQT` training count, Chowdhery et al. 2022, App. B) or
    :math:`\bar k = (T+1)/2` (``causal=True``: the average number of unmasked keys,
    :math:`\sum_{t=1}^T t / T`; only what a kernel that skips masked blocks performs), giving
    :math:`2L(T+1)d`, Kaplan et al. 2020's :math:`2 n_\text{layer} n_\text{ctx} d_\text{attn}`
    up to the :math:`+1`. Softmax, scaling and masking (:math:`O(T)` per token) are excluded.
    A fused kernel that recomputes scores in backward (flash attention) performs more than
    :math:`3\times` forward; this counts the model's FLOPs, not the hardware's.

    Args:
        num_layers: :math:`L`.
        seq_len: :math:`T`, the tokens of one sequence (context length).
        hidden: :math:`d`, the attention width (number of heads times head dimension).
        training: forward only (``False``) or forward + backward (``True``).
        causal: count only the unmasked (query, key) pairs.

    Returns:
        FLOPs per token, averaged over the :math:`T` positions of a sequence (float).
    """
    layers = _require_count("num_layers", num_layers)
    t = _require_count("seq_len", seq_len, minimum=1)
    d = _require_count("hidden", hidden)
    require_bool("training", training)
    require_bool("causal", causal)
    keys = (t + 1) / 2 if causal else float(t)
    forward = 4.0 * layers * keys * d
    return TRAINING_MULTIPLE * forward if training else forward


def transformer_flops_per_token(
    num_params: int,
    num_layers: int,
    seq_len: int,
    hidden: int,
    *,
    training: bool = False,
    causal: bool = False,
) -> float:
    r"""Dense plus attention FLOPs per token: :math:`2N + 4L\bar k d` (forward), 3x that (training).

    The sum of :func:`dense_flops_per_token` and :func:`attention_flops_per_token`; with
    ``training=True, causal=False`` it is PaLM's :math:`6N + 12LHQT`.
    """
    return dense_flops_per_token(num_params, training=training) + attention_flops_per_token(
        num_layers, seq_len, hidden, training=training, causal=causal
    )


def model_flops_utilization(flops_per_token: float, tokens_per_second: float, peak_flops_per_second: float) -> float:
    r"""Model FLOPs utilisation: the fraction of peak FLOP/s spent on the model's own FLOPs.

    .. math::

        \mathrm{MFU} = \frac{C_\text{token} \cdot \text{tokens/s}}{\text{peak FLOP/s}}

    (Chowdhery et al. 2022, Appendix B: observed tokens/s over the tokens/s the peak would give,
    with :math:`C_\text{token} = 6N + 12LHQT` for training). Use the *model's* FLOPs: work the
    implementation adds (activation recomputation, padding) does not count; that is hardware
    FLOPs utilisation (HFU).

    Args:
        flops_per_token: FLOPs the model needs per token (e.g. :func:`transformer_flops_per_token`).
        tokens_per_second: measured throughput.
        peak_flops_per_second: the hardware's peak (datasheet, or a measured matmul rate).

    Returns:
        MFU as a fraction (1.0 = the peak), dimensionless.
    """
    c = _require_positive_finite("flops_per_token", flops_per_token, allow_zero=True)
    rate = _require_positive_finite("tokens_per_second", tokens_per_second, allow_zero=True)
    peak = _require_positive_finite("peak_flops_per_second", peak_flops_per_second)
    return c * rate / peak


def _require_callable(fn: object) -> Callable[..., Any]:
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    return fn


def count_flops(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> int:
    """Total FLOPs torch's :class:`~torch.utils.flop_counter.FlopCounterMode` counts while ``fn(*args, **kwargs)`` runs.

    Everything ``fn`` does is counted, so put a ``loss.backward()`` inside it to count training.
    Ops the counter has no formula for (element-wise ops, norms, softmax, and in torch 2.13 the
    CPU kernel of ``scaled_dot_product_attention`` and the in-place ``addmm_`` / ``baddbmm_``)
    count 0, so a product accumulated in place is missed.

    Returns:
        FLOPs (int).
    """
    fn = _require_callable(fn)
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def flop_breakdown(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> dict[str, int]:
    """FLOPs per aten operator (e.g. ``{"mm": ..., "bmm": ...}``) counted while ``fn(*args, **kwargs)`` runs.

    The ``"Global"`` entry of ``FlopCounterMode.get_flop_counts()``, keyed by the operator's
    short name; the values sum to :func:`count_flops`.
    """
    fn = _require_callable(fn)
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    totals: dict[str, int] = {}
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        name = str(getattr(op, "__name__", op)).split(".")[0]
        totals[name] = totals.get(name, 0) + int(flops)
    return totals
