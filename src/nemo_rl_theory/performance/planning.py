r"""Planning calculators: bytes and traffic of a parallel training plan, before renting the GPUs.

Everything here is arithmetic over integers and floats, so a plan for a 70B model on 64 GPUs is
computed in microseconds on a laptop. The formulas are the published ones:

* model states under mixed-precision Adam and the ZeRO stages / FSDP full sharding
  (Rajbhandari et al. 2020, "ZeRO"; Zhao et al. 2023, "PyTorch FSDP");
* per-step communication of data parallelism (ring all-reduce), of ZeRO-3 / FSDP (two
  all-gathers and one reduce-scatter), of Megatron tensor parallelism (four all-reduces of the
  activations per layer, forward and backward) and of pipeline parallelism (point-to-point
  activations), and the 1F1B pipeline bubble (Narayanan et al. 2021);
* activation memory per layer (Korthikanti et al. 2022), taken from
  ``nemo_rl_theory.performance.memory.activation_bytes_per_layer``;
* the KV cache of generation, :math:`2 L n_{kv} d_{head}` values per token (Pope et al. 2022);
* the logits of the log-prob step, :math:`b\,s\,V` values per micro-batch.

Bytes are ``int`` where the count is exact (a tensor, a KV cache) and ``float`` where a quantity
is split evenly over ranks (an ideal shard :math:`\Psi/N`). "GB" in the docstrings is
:math:`10^9` bytes and "GiB" :math:`2^{30}`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from nemo_rl_theory._validation import require_int, require_number
from nemo_rl_theory.performance.parallelism import ring_bytes_per_rank

__all__ = [
    "FP32_ADAM",
    "LLAMA3_8B",
    "LLAMA3_70B",
    "MIXED_PRECISION_ADAM",
    "DtypeBytes",
    "ParallelPlan",
    "PlanMemory",
    "StateBytes",
    "TransformerShape",
    "data_parallel_comm_bytes",
    "enumerate_plans",
    "fsdp_comm_bytes",
    "fsdp_shard_numel",
    "generation_memory",
    "kv_cache_bytes",
    "kv_cache_bytes_per_token",
    "logits_bytes",
    "model_state_bytes",
    "model_state_bytes_per_param",
    "pipeline_p2p_bytes",
    "plan_memory",
    "tensor_parallel_comm_bytes",
]


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# model states: ZeRO / FSDP
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DtypeBytes:
    """Bytes per value of each model state (per parameter).

    Attributes:
        params: the parameters the forward uses (bf16: 2).
        grads: the gradients (bf16: 2).
        master: an fp32 master copy of the parameters kept by the optimizer (4; 0 when the
            parameters themselves are fp32).
        moments: bytes of one optimizer moment (fp32: 4).
        num_moments: moments per parameter (Adam: 2, SGD with momentum: 1).
    """

    params: int = 2
    grads: int = 2
    master: int = 4
    moments: int = 4
    num_moments: int = 2

    def __post_init__(self) -> None:
        require_int("DtypeBytes.params", self.params)
        require_int("DtypeBytes.grads", self.grads)
        require_int("DtypeBytes.master", self.master, low=0)
        require_int("DtypeBytes.moments", self.moments, low=0)
        require_int("DtypeBytes.num_moments", self.num_moments, low=0)

    @property
    def optimizer(self) -> int:
        """:math:`K`, the optimizer's bytes per parameter: master copy plus moments."""
        return self.master + self.num_moments * self.moments

    @property
    def total(self) -> int:
        """Unsharded bytes per parameter, :math:`2 + 2 + K = 16` for mixed-precision Adam."""
        return self.params + self.grads + self.optimizer


#: bf16 parameters and gradients, fp32 master weights and Adam moments (ZeRO's :math:`K = 12`).
MIXED_PRECISION_ADAM = DtypeBytes(params=2, grads=2, master=4, moments=4, num_moments=2)
#: fp32 parameters, gradients and Adam moments, no separate master copy (:math:`4 + 4 + 8`).
FP32_ADAM = DtypeBytes(params=4, grads=4, master=0, moments=4, num_moments=2)


@dataclass(frozen=True)
class StateBytes:
    """Model-state bytes held by one rank (per parameter, or for a whole model)."""

    params: float
    grads: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer


_STAGES = {0: 0, 1: 1, 2: 2, 3: 3, "none": 0, "ddp": 0, "os": 1, "os+g": 2, "fsdp": 3, "full_shard": 3}


def _stage(stage: object) -> int:
    if isinstance(stage, bool) or stage not in _STAGES:
        raise ValueError(f"stage must be one of 0, 1, 2, 3, 'ddp', 'os', 'os+g', 'fsdp', 'full_shard'; got {stage!r}")
    return _STAGES[stage]  # type: ignore[index]


def model_state_bytes_per_param(
    stage: int | str, shard_size: int, dtypes: DtypeBytes = MIXED_PRECISION_ADAM
) -> StateBytes:
    r"""Bytes per parameter that one of ``shard_size`` data-parallel ranks holds, ZeRO stage ``stage``.

    With :math:`b_p, b_g` the parameter and gradient bytes, :math:`K` the optimizer's bytes
    (``dtypes.optimizer``) and :math:`N` = ``shard_size``:

    .. math::

        \begin{aligned}
        \text{0 (DDP)}&: b_p + b_g + K \\
        \text{1 } (P_{os})&: b_p + b_g + K/N \\
        \text{2 } (P_{os+g})&: b_p + (b_g + K)/N \\
        \text{3 } (P_{os+g+p})&: (b_p + b_g + K)/N
        \end{aligned}

    For mixed-precision Adam (:math:`2, 2, K = 12`) this is :math:`16`, :math:`4 + 12/N`,
    :math:`2 + 14/N`, :math:`16/N` (Rajbhandari et al. 2020, Fig. 1). Stage 3 is FSDP's
    ``FULL_SHARD`` / FSDP2's ``fully_shard`` (Zhao et al. 2023), which also holds the unsharded
    parameters of the layer being computed (not counted here). Stages may be given by name:
    ``"ddp"``, ``"os"``, ``"os+g"``, ``"fsdp"`` / ``"full_shard"``.

    Returns:
        :class:`StateBytes` of bytes per parameter (floats).
    """
    s = _stage(stage)
    n = require_int("shard_size", shard_size)
    if not isinstance(dtypes, DtypeBytes):
        raise TypeError(f"dtypes must be a DtypeBytes, got {type(dtypes).__name__}")
    return StateBytes(
        params=dtypes.params / (n if s >= 3 else 1),
        grads=dtypes.grads / (n if s >= 2 else 1),
        optimizer=dtypes.optimizer / (n if s >= 1 else 1),
    )


def model_state_bytes(
    num_params: int, stage: int | str, shard_size: int, dtypes: DtypeBytes = MIXED_PRECISION_ADAM
) -> StateBytes:
    r"""Bytes one rank holds for ``num_params`` parameters: :math:`\Psi` times :func:`model_state_bytes_per_param`.

    The ZeRO paper's example, :math:`\Psi = 7.5\cdot 10^9` on :math:`N = 64`: 120 GB (stage 0),
    31.4 GB (1), 16.6 GB (2), 1.9 GB (3). The split is the ideal even one; a real shard rounds
    each tensor's rows (:func:`fsdp_shard_numel`).
    """
    p = require_int("num_params", num_params, low=0)
    per = model_state_bytes_per_param(stage, shard_size, dtypes)
    return StateBytes(params=p * per.params, grads=p * per.grads, optimizer=p * per.optimizer)


def fsdp_shard_numel(shape: Sequence[int], world_size: int, rank: int) -> int:
    r"""Elements of a tensor of ``shape`` that FSDP2's ``fully_shard`` keeps on ``rank``.

    FSDP2 splits dimension 0 as :func:`torch.chunk` does: chunks of :math:`c = \lceil d_0/N
    \rceil` rows, so rank :math:`r` holds :math:`\max(0, \min(c, d_0 - r c))` rows times the
    product of the other dimensions (the last ranks may hold fewer rows, or none). The shards
    sum to the tensor's size.
    """
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or len(shape) == 0:
        raise TypeError(f"shape must be a non-empty sequence of ints, got {shape!r}")
    dims = [require_int(f"shape[{i}]", d, low=0) for i, d in enumerate(shape)]
    n = require_int("world_size", world_size)
    r = require_int("rank", rank, low=0)
    if r >= n:
        raise ValueError(f"rank must be in [0, world_size) = [0, {n}), got {r}")
    chunk = -(-dims[0] // n)
    rows = max(0, min(chunk, dims[0] - r * chunk))
    return rows * math.prod(dims[1:])


# --------------------------------------------------------------------------------------------
# communication per step
# --------------------------------------------------------------------------------------------
def data_parallel_comm_bytes(num_params: int, data_parallel: int, grad_bytes: int = 2) -> float:
    r"""Bytes each data-parallel rank sends per optimizer step: one all-reduce of the gradients.

    .. math::

        V_{DP} = 2\,\frac{N-1}{N}\,\Psi\, b_g

    (ZeRO stages 1 and 2 send the same: a reduce-scatter of the gradients and an all-gather of
    the updated parameters, Rajbhandari et al. 2020 §7.)
    """
    p = require_int("num_params", num_params, low=0)
    n = require_int("data_parallel", data_parallel)
    return ring_bytes_per_rank("all_reduce", p * require_int("grad_bytes", grad_bytes), n)


def fsdp_comm_bytes(num_params: int, data_parallel: int, param_bytes: int = 2, grad_bytes: int = 2) -> float:
    r"""Bytes each rank sends per step under ZeRO-3 / FSDP full sharding.

    The parameters are all-gathered twice (forward, and again in backward after they were freed)
    and the gradients reduce-scattered once:

    .. math::

        \begin{aligned}
        V_{FSDP} &= \tfrac{N-1}{N}\Psi\,(2 b_p + b_g)
        \end{aligned}

    :math:`= 1.5\, V_{DP}` when :math:`b_p = b_g` (Rajbhandari et al. 2020 §7.2.2).
    """
    p = require_int("num_params", num_params, low=0)
    bp = require_int("param_bytes", param_bytes)
    bg = require_int("grad_bytes", grad_bytes)
    n = require_int("data_parallel", data_parallel)
    return 2 * ring_bytes_per_rank("all_gather", p * bp, n) + ring_bytes_per_rank("all_gather", p * bg, n)


def tensor_parallel_comm_bytes(
    num_layers: int, micro_batch: int, seq_len: int, hidden: int, tensor_parallel: int, bytes_per_value: int = 2
) -> float:
    r"""Bytes each tensor-parallel rank sends for one micro-batch's forward and backward.

    Megatron's layer all-reduces its :math:`b \times s \times h` activations twice in the forward
    (after attention, after the MLP) and twice in the backward (Narayanan et al. 2021 §3.2), so
    with :math:`t` ranks and :math:`L` layers on this rank

    .. math::

        \begin{aligned}
        V_{TP} &= 4 L \cdot 2\tfrac{t-1}{t}\, b s h\, b_a
        \end{aligned}

    Sequence parallelism replaces each all-reduce by an all-gather plus a reduce-scatter of the
    same total volume (Korthikanti et al. 2022 §4.2.2), so the count is the same.
    """
    size = (
        require_int("micro_batch", micro_batch)
        * require_int("seq_len", seq_len)
        * require_int("hidden", hidden)
        * require_int("bytes_per_value", bytes_per_value)
    )
    t = require_int("tensor_parallel", tensor_parallel)
    return 4 * require_int("num_layers", num_layers, low=0) * ring_bytes_per_rank("all_reduce", size, t)


def pipeline_p2p_bytes(micro_batch: int, seq_len: int, hidden: int, bytes_per_value: int = 2) -> int:
    r"""Bytes a pipeline stage sends to its neighbour per micro-batch: :math:`2\, b s h\, b_a`.

    The output activations go forward and their gradient comes back, each :math:`b\,s\,h` values
    (Narayanan et al. 2021 §3.2; without the scatter/gather optimisation).
    """
    return (
        2
        * require_int("micro_batch", micro_batch)
        * require_int("seq_len", seq_len)
        * require_int("hidden", hidden)
        * require_int("bytes_per_value", bytes_per_value)
    )


# --------------------------------------------------------------------------------------------
# model shapes
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TransformerShape:
    """A decoder-only transformer with grouped-query attention and a gated (SwiGLU) MLP.

    Attributes:
        num_layers: transformer layers :math:`L`.
        hidden: hidden size :math:`h`.
        num_heads: query heads :math:`a`.
        num_kv_heads: key/value heads :math:`n_{kv}` (grouped-query attention; ``num_heads`` for
            multi-head attention).
        ffn_hidden: the gated MLP's inner size :math:`f`.
        vocab_size: vocabulary :math:`V`.
        tied_embeddings: the output projection shares the input embedding's weight.
        name: a label.
    """

    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    ffn_hidden: int
    vocab_size: int
    tied_embeddings: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        for key in ("num_layers", "hidden", "num_heads", "num_kv_heads", "ffn_hidden", "vocab_size"):
            require_int(key, getattr(self, key))
        if self.hidden % self.num_heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by num_heads ({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.num_heads

    @property
    def params_per_layer(self) -> int:
        r""":math:`2h^2 + 2 h\,n_{kv} d + 3 h f + 2h` (q, o; k, v; gate, up, down; two RMSNorms)."""
        h, kv = self.hidden, self.num_kv_heads * self.head_dim
        return 2 * h * h + 2 * h * kv + 3 * h * self.ffn_hidden + 2 * h

    @property
    def num_params(self) -> int:
        """Number of parameters of the layers, the embedding, the output projection (unless tied) and the final norm."""
        emb = self.vocab_size * self.hidden
        return self.num_layers * self.params_per_layer + emb * (1 if self.tied_embeddings else 2) + self.hidden


#: The shape of Llama-3 8B; 32 layers, 4096 hidden, 32 heads, 8 KV heads.
LLAMA3_8B = TransformerShape(32, 4096, 32, 8, 14336, 128256, name="Llama-3 8B")
#: The shape of Llama-3 70B; 80 layers, 8192 hidden, 64 heads, 8 KV heads.
LLAMA3_70B = TransformerShape(80, 8192, 64, 8, 28672, 128256, name="Llama-3 70B")


# --------------------------------------------------------------------------------------------
# KV cache and logits
# --------------------------------------------------------------------------------------------
def kv_cache_bytes_per_token(
    num_layers: int, num_kv_heads: int, head_dim: int, bytes_per_value: int = 2, tensor_parallel: int = 1
) -> int:
    r"""KV-cache bytes per token on one GPU: :math:`2\,L\,\lceil n_{kv}/t\rceil\, d\, b` (a key and a value per layer).

    Tensor parallelism splits the KV heads over :math:`t` ranks; when :math:`t > n_{kv}` each
    rank keeps (a replica of) one head, hence the ceiling (Pope et al. 2022 §3.3 for the
    per-token cache, :math:`2 L n_{kv} d` values).
    """
    heads = -(-require_int("num_kv_heads", num_kv_heads) // require_int("tensor_parallel", tensor_parallel))
    return (
        2
        * require_int("num_layers", num_layers)
        * heads
        * require_int("head_dim", head_dim)
        * require_int("bytes_per_value", bytes_per_value)
    )


def kv_cache_bytes(shape: TransformerShape, num_tokens: int, bytes_per_value: int = 2, tensor_parallel: int = 1) -> int:
    """KV cache of ``num_tokens`` tokens (summed over sequences) of ``shape`` on one GPU."""
    return require_int("num_tokens", num_tokens, low=0) * kv_cache_bytes_per_token(
        shape.num_layers, shape.num_kv_heads, shape.head_dim, bytes_per_value, tensor_parallel
    )


def logits_bytes(
    micro_batch: int, seq_len: int, vocab_size: int, bytes_per_value: int = 4, tensor_parallel: int = 1
) -> int:
    r"""Bytes of one copy of the logits of a micro-batch on one GPU: :math:`b\,s\,\lceil V/t \rceil\, b_l`.

    The log-prob step holds several copies at its peak; the factors (relative to one fp32 copy)
    of the naive route, of ``token_logprobs`` and of ``linear_token_logprobs`` are measured on
    the memory-optimization pages.
    """
    v = -(-require_int("vocab_size", vocab_size) // require_int("tensor_parallel", tensor_parallel))
    return (
        require_int("micro_batch", micro_batch)
        * require_int("seq_len", seq_len)
        * v
        * require_int("bytes_per_value", bytes_per_value)
    )


# --------------------------------------------------------------------------------------------
# a parallel plan and its memory
# --------------------------------------------------------------------------------------------
_RECOMPUTE = ("none", "selective", "full")


@dataclass(frozen=True)
class ParallelPlan:
    """Sizes of the four parallel dimensions (their product is the GPU count) and the memory knobs.

    Attributes:
        data: data-parallel size :math:`d`.
        tensor: tensor-parallel size :math:`t`.
        pipeline: pipeline-parallel size :math:`p`.
        context: context-parallel size :math:`c`.
        zero_stage: 0-3 (3 = FSDP full shard); the model states are sharded over the
            ``data * context`` ranks, which hold replicas of the same tensor/pipeline shard.
        sequence_parallel: Megatron sequence parallelism (needs ``tensor > 1`` to matter).
        recompute: activation checkpointing, ``"none"``, ``"selective"`` or ``"full"``.
    """

    data: int = 1
    tensor: int = 1
    pipeline: int = 1
    context: int = 1
    zero_stage: int = 3
    sequence_parallel: bool = False
    recompute: str = "none"

    def __post_init__(self) -> None:
        for key in ("data", "tensor", "pipeline", "context"):
            require_int(key, getattr(self, key))
        _stage(self.zero_stage)
        if not isinstance(self.sequence_parallel, bool):
            raise TypeError(f"sequence_parallel must be a bool, got {type(self.sequence_parallel).__name__}")
        if self.recompute not in _RECOMPUTE:
            raise ValueError(f"recompute must be one of {_RECOMPUTE}, got {self.recompute!r}")

    @property
    def num_gpus(self) -> int:
        return self.data * self.tensor * self.pipeline * self.context


@dataclass(frozen=True)
class PlanMemory:
    """Per-GPU bytes of a training plan (the most loaded GPU: pipeline stage 0)."""

    weights: float
    grads: float
    optimizer: float
    activations: float
    logits: float
    gpu_bytes: float
    plan: ParallelPlan = field(default_factory=ParallelPlan)

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations + self.logits

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_bytes


def plan_memory(
    shape: TransformerShape,
    plan: ParallelPlan,
    *,
    seq_len: int,
    micro_batch: int = 1,
    num_microbatches: int = 1,
    gpu_bytes: float = 80e9,
    dtypes: DtypeBytes = MIXED_PRECISION_ADAM,
    activation_bytes_per_value: int = 2,
    logits_copies: float = 4.0,
    logits_bytes_per_value: int = 4,
) -> PlanMemory:
    r"""Per-GPU memory of training ``shape`` with ``plan``.

    With :math:`\Psi` parameters, :math:`t, p, c, d` the tensor, pipeline, context and data sizes:

    .. math::

        \begin{aligned}
        \text{states} &= \tfrac{\Psi}{t\,p}\,\beta(\text{stage}, d\,c) \\
        \text{act} &= \tfrac{L}{p}\,\min(p, m)\,A\big(\tfrac{s}{c}, b\big) \\
        \text{logits} &= k\; b\,\tfrac{s}{c}\,\tfrac{V}{t}\; b_l
        \end{aligned}

    :math:`\beta` is :func:`model_state_bytes_per_param` (sharded over the :math:`d\,c` replicas
    of a tensor/pipeline shard), :math:`A` is Korthikanti et al.'s per-layer activation bytes
    (``nemo_rl_theory.performance.memory.activation_bytes_per_layer`` with the plan's
    ``tensor``, ``sequence_parallel`` and ``recompute``), :math:`\min(p, m)` the micro-batches a
    1F1B schedule keeps in flight on the first stage, :math:`k` = ``logits_copies`` copies of
    the logits at the log-prob step's peak beyond the head's gradients (those are counted in the
    states and activations). The default :math:`k = 4` is the naive ``log_softmax`` + ``gather``
    route on logits the caller holds (logits, log-softmax output, gather gradient, logits
    gradient), an upper bound; :math:`k = 3` when the caller drops its logits before backward,
    as NeMo RL's DTensor training loop does; ``token_logprobs`` has :math:`k = 2` and
    ``linear_token_logprobs`` one block plus :math:`[N, H]` pieces (measured on the
    memory-optimization pages). The states are sharded over the :math:`d\,c` ranks, as FSDP2 is
    in NeMo RL's DTensor path (its mesh ``("dp_shard", "cp")``). The model states are split evenly over :math:`t\,p`
    (embeddings and norms included: an approximation, exact to within the replicated norms).
    The activation formula is the paper's GPT layer (:math:`4h` MLP, multi-head attention); for a
    SwiGLU/GQA layer it is an estimate.
    """
    if not isinstance(shape, TransformerShape):
        raise TypeError(f"shape must be a TransformerShape, got {type(shape).__name__}")
    if not isinstance(plan, ParallelPlan):
        raise TypeError(f"plan must be a ParallelPlan, got {type(plan).__name__}")
    s = require_int("seq_len", seq_len)
    b = require_int("micro_batch", micro_batch)
    m = require_int("num_microbatches", num_microbatches)
    gpu = require_number("gpu_bytes", gpu_bytes, low=0.0, low_inclusive=False)
    k = require_number("logits_copies", logits_copies, low=0.0)
    if s % plan.context:
        raise ValueError(f"seq_len ({s}) must be divisible by the context parallel size ({plan.context})")
    from nemo_rl_theory.performance.memory import activation_bytes_per_layer

    local_params = shape.num_params / (plan.tensor * plan.pipeline)
    per = model_state_bytes_per_param(plan.zero_stage, plan.data * plan.context, dtypes)
    per_layer = activation_bytes_per_layer(
        s // plan.context,
        b,
        shape.hidden,
        shape.num_heads,
        tensor_parallel=plan.tensor,
        sequence_parallel=plan.sequence_parallel,
        recompute=plan.recompute,
        bytes_per_value=require_int("activation_bytes_per_value", activation_bytes_per_value),
    )
    activations = per_layer * (shape.num_layers / plan.pipeline) * min(plan.pipeline, m)
    logits = k * logits_bytes(b, s // plan.context, shape.vocab_size, logits_bytes_per_value, plan.tensor)
    return PlanMemory(
        weights=local_params * per.params,
        grads=local_params * per.grads,
        optimizer=local_params * per.optimizer,
        activations=float(activations),
        logits=float(logits),
        gpu_bytes=gpu,
        plan=plan,
    )


def generation_memory(
    shape: TransformerShape,
    *,
    tensor_parallel: int = 1,
    gpu_bytes: float = 80e9,
    memory_utilization: float = 0.9,
    weight_bytes: int = 2,
    kv_bytes_per_value: int = 2,
) -> tuple[float, int]:
    r"""Weights per GPU and how many tokens of KV cache fit in the rest, for a generation engine.

    vLLM's instance may use ``memory_utilization`` :math:`u` of the GPU's memory :math:`M`
    (vLLM's ``CacheConfig.gpu_memory_utilization``, NeMo RL's
    ``policy.generation.vllm_cfg.gpu_memory_utilization``); after the TP-sharded weights
    :math:`\Psi b_w / t` the rest holds the cache (Kwon et al. 2023):

    .. math::

        \begin{aligned}
        n_{tok} &= \Big\lfloor \frac{u\,M - \Psi b_w/t}{\text{KV bytes/token}} \Big\rfloor
        \end{aligned}

    (the profiled activations and CUDA graphs, a few GB, are ignored, so this is an upper
    bound). Returns ``(weight_bytes_per_gpu,
    max_tokens)``; ``max_tokens`` is 0 when the weights alone do not fit.
    """
    if not isinstance(shape, TransformerShape):
        raise TypeError(f"shape must be a TransformerShape, got {type(shape).__name__}")
    t = require_int("tensor_parallel", tensor_parallel)
    gpu = require_number("gpu_bytes", gpu_bytes, low=0.0, low_inclusive=False)
    u = require_number("memory_utilization", memory_utilization, low=0.0, low_inclusive=False)
    if u > 1:
        raise ValueError(f"memory_utilization must be in (0, 1], got {u}")
    weights = shape.num_params * require_int("weight_bytes", weight_bytes) / t
    per_token = kv_cache_bytes_per_token(shape.num_layers, shape.num_kv_heads, shape.head_dim, kv_bytes_per_value, t)
    free = u * gpu - weights
    return weights, max(0, math.floor(free / per_token))


def enumerate_plans(
    shape: TransformerShape,
    num_gpus: int,
    *,
    seq_len: int,
    micro_batch: int = 1,
    num_microbatches: int = 1,
    gpu_bytes: float = 80e9,
    gpus_per_node: int = 8,
    zero_stage: int | str = 3,
    sequence_parallel: bool = True,
    recompute: str = "none",
    dtypes: DtypeBytes = MIXED_PRECISION_ADAM,
    logits_copies: float = 4.0,
) -> list[PlanMemory]:
    r"""Every valid plan for ``num_gpus`` GPUs with its memory, best first.

    Valid: :math:`d\,t\,p\,c = ` ``num_gpus``; :math:`t` divides the heads and the KV heads and
    is at most ``gpus_per_node`` (tensor parallelism stays inside an NVLink domain); :math:`p`
    divides the layers; :math:`c` divides :math:`s` into :math:`2c` equal chunks (load-balanced
    causal context parallelism). Ranked: plans that fit first; then the smallest model-parallel
    degree :math:`t\,p\,c` (more data parallelism, less traffic per token), then the smallest
    :math:`p` (bubble), then the smallest :math:`c`, then the least memory.
    """
    if not isinstance(shape, TransformerShape):
        raise TypeError(f"shape must be a TransformerShape, got {type(shape).__name__}")
    n = require_int("num_gpus", num_gpus)
    node = require_int("gpus_per_node", gpus_per_node)
    s = require_int("seq_len", seq_len)
    divisors = [k for k in range(1, n + 1) if n % k == 0]
    out: list[PlanMemory] = []
    for t, p, c in itertools.product(divisors, repeat=3):
        if n % (t * p * c):
            continue
        if shape.num_heads % t or shape.num_kv_heads % t or t > node:
            continue
        if shape.num_layers % p or (c > 1 and s % (2 * c)):
            continue
        plan = ParallelPlan(
            data=n // (t * p * c),
            tensor=t,
            pipeline=p,
            context=c,
            zero_stage=_stage(zero_stage),
            sequence_parallel=sequence_parallel and t > 1,
            recompute=recompute,
        )
        out.append(
            plan_memory(
                shape,
                plan,
                seq_len=s,
                micro_batch=micro_batch,
                num_microbatches=num_microbatches,
                gpu_bytes=gpu_bytes,
                dtypes=dtypes,
                logits_copies=logits_copies,
            )
        )
    out.sort(
        key=lambda r: (
            not r.fits,
            r.plan.tensor * r.plan.pipeline * r.plan.context,
            r.plan.pipeline,
            r.plan.context,
            r.total,
        )
    )
    return out
