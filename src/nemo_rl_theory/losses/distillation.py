r"""Top-k knowledge distillation: KL between teacher and student on the teacher's top-k tokens.

NeMo RL 7ea279a: ``nemo_rl/algorithms/loss/loss_functions.py`` (``DistillationLossConfig``,
``DistillationLossFn``) and the preparation of its inputs in
``nemo_rl/distributed/model_utils.py`` (``get_distillation_topk_logprobs_from_logits``, called by
``nemo_rl/algorithms/loss/utils.py``). The teacher's ``topk_logits`` / ``topk_indices`` come from
``teacher_policy.get_topk_logits`` in ``nemo_rl/algorithms/distillation.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nemo_rl_theory._validation import (
    as_mask,
    require_bool,
    require_finite_where,
    require_float_tensor,
    require_number,
    require_tensor,
)
from nemo_rl_theory.losses._inputs import check_factors, token_and_sample_masks
from nemo_rl_theory.masking import _masked_mean

#: The KL directions NeMo RL's ``DistillationLossFn`` accepts.
DISTILLATION_KL_TYPES: tuple[str, ...] = ("forward", "reverse", "mixed")
#: NeMo RL's ``log_infinitesimal``: the teacher log-prob given to tokens outside its top-k
#: when ``zero_outside_topk`` is on.
LOG_INFINITESIMAL: float = -100.0

_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # NeMo RL casts the student logits to float32; float64 stays float64 here (for gradcheck).
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def distillation_loss(
    student_logits: Tensor,
    teacher_topk_logits: Tensor,
    teacher_topk_indices: Tensor,
    mask: Tensor,
    *,
    kl_type: str = "mixed",
    mixed_kl_weight: float = 0.5,
    zero_outside_topk: bool = False,
    sample_mask: Tensor | None = None,
    global_valid_toks: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    r"""Top-k distillation loss: forward, reverse or mixed KL on the teacher's top-k tokens.

    At every position the teacher supplies its ``k`` largest logits and their token ids
    :math:`K`. The teacher's distribution is renormalised over :math:`K`:
    :math:`q_j = \operatorname{softmax}_{j \in K}(u_j)`. The student's log-probs on :math:`K`
    are either renormalised over :math:`K` too (default) or, with ``zero_outside_topk``, its
    full-vocabulary log-probs (so :math:`\sum_{j\in K} p_j \le 1`):

    .. math::

        \begin{aligned}
        \log p_j &= z_j - \operatorname{lse}_{i \in K}(z_i)
            \ \ \text{(default)} \\
        \log p_j &= z_j - \operatorname{lse}_{v \le V}(z_v)
            \ \ \text{(zero\_outside)}
        \end{aligned}

    Per token, summed over :math:`j \in K`:

    .. math::

        \begin{aligned}
        \mathrm{F} &= \textstyle\sum_j q_j(\log q_j - \log p_j) \\
        \mathrm{R} &= \textstyle\sum_j p_j(\log p_j - \log q_j) \\
        \mathrm{M} &= w\,\mathrm{F} + (1 - w)\,\mathrm{R}
        \end{aligned}

    for ``kl_type`` ``"forward"``, ``"reverse"``, ``"mixed"`` (:math:`w` = ``mixed_kl_weight``
    weighs the *forward* KL). With ``zero_outside_topk`` and a reverse part, the student's mass
    outside :math:`K` is charged against a teacher log-prob of :math:`-100` (NeMo RL's
    ``log_infinitesimal``), i.e. :math:`\mathrm{R}` gains

    .. math::

        \begin{aligned}
        C &= \textstyle\sum_{v \notin K} p_v (\log p_v + 100) \\
        &= H_\text{rest} + 100\, P_\text{rest}
        \end{aligned}

    (NeMo RL's ``H_rest`` is :math:`\sum_{v\notin K} p_v\log p_v`, the *negative* entropy of the
    rest, and :math:`P_\text{rest} = 1 - \sum_{j\in K} p_j`), multiplied by :math:`1 - w` for
    ``"mixed"``. The forward KL needs no correction (the teacher has no mass outside
    :math:`K`). The loss is token-level,

    .. math::

        \mathcal L = \frac{\sum_{b,t} m_{b,t} s_b\,\mathrm{KL}_{b,t}}{N_\text{tok} + 10^{-8}},

    with :math:`N_\text{tok}` = ``global_valid_toks`` (default: the local count).

    Edge cases, as NeMo RL: indices may repeat within a position (each entry is then a
    separate outcome; ``torch.topk`` never repeats) and ``k`` may exceed ``V``. With
    ``zero_outside_topk`` and repeated indices :math:`P_\text{rest}` can be negative.

    Memory: without ``zero_outside_topk`` only the ``[B, T, k]`` student logits at the
    teacher's indices are gathered; no ``[B, T, V]`` softmax is built. With it, the
    counted rows ``[N, V]`` are log-softmaxed once (for the log-sum-exp, and for the entropy
    when a reverse part needs it). Padding positions (mask 0) are dropped before any
    arithmetic: their logits may hold ``-inf`` or garbage and their indices anything.

    Alignment: position ``t`` of every tensor describes the token predicted there. From a
    model output ``out[B, S, V]`` and NeMo RL's ``token_mask[B, S]`` pass ``out[:, :-1]``,
    the teacher's ``[:, :-1]`` and ``token_mask[:, 1:]`` (NeMo RL's slices).

    Args:
        student_logits: ``Tensor[B, T, V]`` (carries the gradient); half precision is
            computed in float32 as NeMo RL does, float64 stays float64.
        teacher_topk_logits: ``Tensor[B, T, k]`` the teacher's top-k logits (data, no gradient).
        teacher_topk_indices: ``Tensor[B, T, k]`` integer token ids in ``[0, V)``.
        mask: ``Tensor[B, T]`` token mask.
        kl_type: ``"forward"``, ``"reverse"`` or ``"mixed"`` (NeMo RL's default).
        mixed_kl_weight: :math:`w \in [0, 1]`, weight of the forward KL in ``"mixed"``.
        zero_outside_topk: use the student's full-vocabulary probabilities (see above).
        sample_mask: ``Tensor[B]`` (default all ones); NeMo RL multiplies it into the token mask.
        global_valid_toks: valid tokens in the global batch (micro-batching / data parallel).

    Returns:
        ``(loss, metrics)``; metrics: ``loss``, ``num_valid_samples`` (the number of rows ``B``,
        as NeMo RL reports it) and, added here, ``forward_kl`` and ``reverse_kl``: the
        reductions of F and R (without the correction :math:`C`).
    """
    logits = require_float_tensor("student_logits", student_logits)
    if logits.dim() != 3 or logits.shape[-1] == 0:
        raise ValueError(f"student_logits must have shape [B, T, V] with V >= 1, got {list(logits.shape)}")
    teacher = require_float_tensor("teacher_topk_logits", teacher_topk_logits)
    indices = require_tensor("teacher_topk_indices", teacher_topk_indices)
    if indices.dtype not in _INDEX_DTYPES:
        raise TypeError(f"teacher_topk_indices must be an integer tensor of token ids, got dtype {indices.dtype}")
    batch, length, vocab = logits.shape
    if indices.dim() != 3 or indices.shape[:2] != (batch, length):
        raise ValueError(
            f"teacher_topk_indices must have shape [B, T, k] with [B, T] = [{batch}, {length}] "
            f"(those of student_logits), got {list(indices.shape)}"
        )
    if indices.shape[-1] <= 0:
        raise ValueError("teacher_topk_indices: topk must be positive, got k = 0 (an empty top-k)")
    if teacher.shape != indices.shape:
        raise ValueError(
            f"teacher_topk_logits must have the shape of teacher_topk_indices {list(indices.shape)}, "
            f"got {list(teacher.shape)}"
        )
    if not isinstance(kl_type, str) or kl_type not in DISTILLATION_KL_TYPES:
        raise ValueError(f"kl_type must be one of {DISTILLATION_KL_TYPES}, got {kl_type!r}")
    require_number("mixed_kl_weight", mixed_kl_weight, low=0.0, high=1.0)
    require_bool("zero_outside_topk", zero_outside_topk)
    mask_t = as_mask("mask", mask, logits)
    if mask_t.shape != (batch, length):
        raise ValueError(f"mask must have shape [B, T] = [{batch}, {length}], got {list(mask_t.shape)}")
    _, _, full_mask = token_and_sample_masks(mask_t, sample_mask, logits[..., 0])
    check_factors(global_valid_toks=(global_valid_toks, full_mask.sum()))
    n_toks = full_mask.sum() if global_valid_toks is None else global_valid_toks
    counted = full_mask != 0

    idx = indices[counted].long()  # [N, k]
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= vocab):
        raise ValueError(
            f"teacher_topk_indices must be token ids in [0, {vocab}) (the vocabulary of student_logits) "
            f"at counted positions, got values in [{int(idx.min())}, {int(idx.max())}]"
        )
    require_finite_where("teacher_topk_logits", teacher, counted[..., None].expand_as(teacher))
    dtype = _compute_dtype(logits.dtype)
    log_q = torch.log_softmax(teacher[counted].detach().to(dtype), dim=-1)  # [N, k]

    need_rest = zero_outside_topk and kl_type != "forward"
    if zero_outside_topk:
        rows = logits[counted].to(dtype)  # [N, V]: only the counted rows
        require_finite_where("student_logits", rows, torch.ones_like(rows, dtype=torch.bool))
        log_p_rows = torch.log_softmax(rows, dim=-1)
        log_p = log_p_rows.gather(-1, idx)
        # sum_v p_v log p_v over the whole vocabulary (NeMo RL's H_all)
        neg_entropy = (log_p_rows.exp() * log_p_rows).sum(-1) if need_rest else None
    else:
        safe = torch.where(counted[..., None], indices, 0).long()
        z = logits.gather(-1, safe)[counted].to(dtype)  # [N, k]
        require_finite_where("student_logits", z, torch.ones_like(z, dtype=torch.bool))
        log_p = torch.log_softmax(z, dim=-1)
        neg_entropy = None

    p, q = log_p.exp(), log_q.exp()
    forward = (q * (log_q - log_p)).sum(-1)
    reverse = (p * (log_p - log_q)).sum(-1)
    if kl_type == "forward":
        kl = forward
    elif kl_type == "reverse":
        kl = reverse
    else:
        kl = mixed_kl_weight * forward + (1.0 - mixed_kl_weight) * reverse
    if need_rest:
        assert neg_entropy is not None
        rest = neg_entropy - (p * log_p).sum(-1) - LOG_INFINITESIMAL * (1.0 - p.sum(-1))
        kl = kl + (rest if kl_type == "reverse" else (1.0 - mixed_kl_weight) * rest)

    per_token_kl = torch.zeros(batch, length, dtype=dtype, device=logits.device).masked_scatter(counted, kl)
    weights = full_mask.to(dtype)
    loss = _masked_mean(per_token_kl, weights, global_normalization_factor=n_toks)

    with torch.no_grad():

        def reduce(x: Tensor) -> float:
            per = torch.zeros(batch, length, dtype=dtype, device=logits.device).masked_scatter(counted, x)
            return float(_masked_mean(per, weights, global_normalization_factor=n_toks))

        metrics = {
            "loss": float(loss.detach()),
            "num_valid_samples": float(batch),
            "forward_kl": reduce(forward.detach()),
            "reverse_kl": reduce(reverse.detach()),
        }
    return loss, metrics
