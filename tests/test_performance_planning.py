"""Planning calculators: closed forms against hand arithmetic, measurements, properties, bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_rl_theory.performance.memory import activation_bytes_per_layer
from nemo_rl_theory.performance.parallelism import (
    pipeline_bubble_fraction,
    ring_bytes_per_rank,
    simulate_pipeline,
    simulate_ring,
)
from nemo_rl_theory.performance.planning import (
    FP32_ADAM,
    LLAMA3_8B,
    LLAMA3_70B,
    MIXED_PRECISION_ADAM,
    DtypeBytes,
    ParallelPlan,
    TransformerShape,
    data_parallel_comm_bytes,
    enumerate_plans,
    fsdp_comm_bytes,
    fsdp_shard_numel,
    generation_memory,
    kv_cache_bytes,
    kv_cache_bytes_per_token,
    logits_bytes,
    model_state_bytes,
    model_state_bytes_per_param,
    pipeline_p2p_bytes,
    plan_memory,
    tensor_parallel_comm_bytes,
)


# ------------------------------------------------------------------------------ ZeRO
def test_zero_paper_example() -> None:
    # Rajbhandari et al. 2020, Fig. 1: Psi = 7.5B, N = 64, K = 12.
    psi = 7_500_000_000
    gb = [model_state_bytes(psi, s, 64).total / 1e9 for s in range(4)]
    assert gb[0] == pytest.approx(120.0)
    assert round(gb[1], 1) == 31.4
    assert round(gb[2], 1) == 16.6
    assert round(gb[3], 1) == 1.9
    assert gb[1] == pytest.approx((4 * psi + 12 * psi / 64) / 1e9)
    assert gb[2] == pytest.approx((2 * psi + 14 * psi / 64) / 1e9)
    assert gb[3] == pytest.approx(16 * psi / 64 / 1e9)


def test_stage_names_and_fp32() -> None:
    assert model_state_bytes_per_param("fsdp", 8) == model_state_bytes_per_param(3, 8)
    assert model_state_bytes_per_param("os+g", 8) == model_state_bytes_per_param(2, 8)
    assert MIXED_PRECISION_ADAM.optimizer == 12 and MIXED_PRECISION_ADAM.total == 16
    assert FP32_ADAM.optimizer == 8 and FP32_ADAM.total == 16
    per = model_state_bytes_per_param(3, 2, FP32_ADAM)
    assert (per.params, per.grads, per.optimizer) == (2.0, 2.0, 4.0)
    sgd = DtypeBytes(params=4, grads=4, master=0, moments=4, num_moments=1)
    assert model_state_bytes_per_param(0, 4, sgd).total == 12


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 512), st.sampled_from([MIXED_PRECISION_ADAM, FP32_ADAM]))
def test_stages_monotone_and_limits(n: int, dt: DtypeBytes) -> None:
    totals = [model_state_bytes_per_param(s, n, dt).total for s in range(4)]
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(totals))
    assert totals[0] == dt.total
    assert totals[3] == pytest.approx(dt.total / n)
    # more ranks never cost more memory
    for s in range(4):
        assert model_state_bytes_per_param(s, n + 1, dt).total <= model_state_bytes_per_param(s, n, dt).total
    if n == 1:
        assert len(set(totals)) == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=3), st.integers(1, 9))
def test_fsdp_shards_sum_to_tensor_and_match_torch_chunk(shape: list[int], n: int) -> None:
    sizes = [fsdp_shard_numel(shape, n, r) for r in range(n)]
    assert sum(sizes) == math.prod(shape)
    chunks = torch.empty(shape).chunk(n, dim=0) if shape[0] > 0 else ()
    expect = [c.numel() for c in chunks] + [0] * (n - len(chunks))
    assert sizes == expect


# ------------------------------------------------------------------------------ communication
def test_comm_closed_forms() -> None:
    assert ring_bytes_per_rank("all_reduce", 100.0, 4) == 150.0
    assert ring_bytes_per_rank("all_gather", 100.0, 4) == 75.0
    assert ring_bytes_per_rank("all_reduce", 123.0, 1) == 0.0
    psi = 1000
    assert data_parallel_comm_bytes(psi, 8, 2) == pytest.approx(2 * 7 / 8 * 2000)
    assert fsdp_comm_bytes(psi, 8) == pytest.approx(1.5 * data_parallel_comm_bytes(psi, 8))
    assert fsdp_comm_bytes(psi, 8, param_bytes=2, grad_bytes=4) == pytest.approx(7 / 8 * psi * 8)
    # 4 all-reduces per layer of b*s*h*2 bytes, each 2(t-1)/t of it
    assert tensor_parallel_comm_bytes(2, 1, 8, 16, 4) == pytest.approx(2 * 4 * 2 * 3 / 4 * 8 * 16 * 2)
    assert tensor_parallel_comm_bytes(2, 1, 8, 16, 1) == 0.0
    assert pipeline_p2p_bytes(2, 8, 16) == 2 * 2 * 8 * 16 * 2


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(1, 24))
def test_bubble_and_in_flight_against_schedule_simulation(p: int, m: int) -> None:
    timeline = simulate_pipeline(p, m, "1f1b")
    assert pipeline_bubble_fraction(p, m) == pytest.approx(timeline.idle_fraction, rel=1e-12)
    assert pipeline_bubble_fraction(p, m + 1) <= pipeline_bubble_fraction(p, m)
    # plan_memory's activations: the first stage holds min(p, m) micro-batches
    assert timeline.max_in_flight[0] == min(p, m)


def test_ring_volumes_against_simulation() -> None:
    gen = torch.Generator().manual_seed(0)
    for n, size in ((2, 8), (3, 9), (5, 20)):
        vecs = [torch.randn(size, generator=gen) for _ in range(n)]
        ring = simulate_ring("all_reduce", vecs)
        assert ring.bytes_sent == [ring_bytes_per_rank("all_reduce", 4 * size, n)] * n
        shards = [v[: size // n].clone() for v in vecs]
        assert simulate_ring("all_gather", shards).bytes_sent == [ring_bytes_per_rank("all_gather", 4 * size, n)] * n


# ------------------------------------------------------------------------------ shapes, KV, logits
def test_llama_param_counts() -> None:
    # published sizes: 8.03B and 70.6B
    assert LLAMA3_8B.num_params == 8_030_261_248
    assert LLAMA3_70B.num_params == 70_553_706_496
    tiny = TransformerShape(2, 8, 2, 1, 12, 10, tied_embeddings=True)
    layer = torch.nn.ModuleDict(
        {
            "q": torch.nn.Linear(8, 8, bias=False),
            "k": torch.nn.Linear(8, 4, bias=False),
            "v": torch.nn.Linear(8, 4, bias=False),
            "o": torch.nn.Linear(8, 8, bias=False),
            "gate": torch.nn.Linear(8, 12, bias=False),
            "up": torch.nn.Linear(8, 12, bias=False),
            "down": torch.nn.Linear(12, 8, bias=False),
            "n1": torch.nn.RMSNorm(8),
            "n2": torch.nn.RMSNorm(8),
        }
    )
    per_layer = sum(p.numel() for p in layer.parameters())
    assert tiny.params_per_layer == per_layer
    assert tiny.num_params == 2 * per_layer + 10 * 8 + 8


def test_kv_cache_matches_tensors() -> None:
    layers, kv, d, tokens = 3, 2, 4, 7
    cache = [(torch.zeros(1, kv, tokens, d, dtype=torch.bfloat16),) * 2 for _ in range(layers)]
    measured = sum(t.numel() * t.element_size() for pair in cache for t in pair)
    assert measured == tokens * kv_cache_bytes_per_token(layers, kv, d, 2)
    # TP splits heads, replicating when t > n_kv
    assert kv_cache_bytes_per_token(80, 8, 128, 2, 4) == 2 * 80 * 2 * 128 * 2
    assert kv_cache_bytes_per_token(80, 8, 128, 2, 16) == 2 * 80 * 1 * 128 * 2
    assert kv_cache_bytes(LLAMA3_8B, 1) == 131072  # 128 KiB per token
    assert logits_bytes(2, 3, 10) == torch.empty(2, 3, 10).numel() * 4


# ------------------------------------------------------------------------------ plans
def test_plan_memory_hand_arithmetic() -> None:
    plan = ParallelPlan(data=4, tensor=2, pipeline=1, context=1, zero_stage=3, sequence_parallel=True)
    r = plan_memory(LLAMA3_8B, plan, seq_len=4096, micro_batch=1, gpu_bytes=80e9)
    psi = LLAMA3_8B.num_params
    assert r.weights == pytest.approx(psi / 2 * 2 / 4)
    assert r.grads == pytest.approx(psi / 2 * 2 / 4)
    assert r.optimizer == pytest.approx(psi / 2 * 12 / 4)
    sbh = 4096 * 4096
    assert r.activations == pytest.approx(32 * sbh * (34 / 2 + 5 * 32 * 4096 / (4096 * 2)))
    assert r.logits == pytest.approx(4 * 4096 * 128256 / 2 * 4)
    assert r.total == pytest.approx(r.weights + r.grads + r.optimizer + r.activations + r.logits)
    assert r.fits == (r.total <= 80e9)


def test_default_logits_copies_is_the_measured_naive_route() -> None:
    """k = 4 (naive log_softmax + gather on held logits) and 2 (token_logprobs), measured."""
    from nemo_rl_theory.logprobs import token_logprobs
    from nemo_rl_theory.performance.memory import LivePeakMeter

    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 512, (2, 16), generator=gen)
    one = logits_bytes(2, 16, 512)
    routes = {
        "naive": lambda z: torch.log_softmax(z, -1).gather(-1, targets[..., None]).squeeze(-1),
        "token": lambda z: token_logprobs(z, targets),
    }
    k = {}
    for name, fn in routes.items():
        logits = torch.randn(2, 16, 512, generator=gen).requires_grad_()  # held by the caller
        with LivePeakMeter() as live:
            fn(logits).sum().backward()
        k[name] = (live.peak + one) / one
    assert k["naive"] == pytest.approx(4.0, abs=0.01), k
    assert k["token"] == pytest.approx(2.0, abs=0.01), k  # + [N]-sized pieces
    # a caller that drops the logits before backward (NeMo RL's loop): 3 copies, before G exists
    hid = torch.randn(2, 16, 8, generator=gen).requires_grad_()
    w = torch.randn(512, 8, generator=gen).requires_grad_()
    with LivePeakMeter() as live:
        logits = hid @ w.T
        lp = routes["naive"](logits)
        del logits
        lp.sum().backward()
    assert live.peak / one == pytest.approx(3.0, abs=0.01)
    r = plan_memory(LLAMA3_8B, ParallelPlan(), seq_len=256)
    assert r.logits == pytest.approx(k["naive"] * logits_bytes(1, 256, LLAMA3_8B.vocab_size), rel=1e-3)


def test_pipeline_activations_in_flight() -> None:
    base = dict(seq_len=1024, micro_batch=1)
    one = plan_memory(LLAMA3_70B, ParallelPlan(pipeline=4, data=2), num_microbatches=1, **base)
    many = plan_memory(LLAMA3_70B, ParallelPlan(pipeline=4, data=2), num_microbatches=16, **base)
    per_layer = activation_bytes_per_layer(1024, 1, 8192, 64)
    assert one.activations == pytest.approx(per_layer * 20)
    assert many.activations == pytest.approx(per_layer * 80)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([1, 2, 4, 8]), st.sampled_from([1, 2, 4]), st.sampled_from(["none", "selective", "full"]))
def test_plan_monotone(d: int, t: int, recompute: str) -> None:
    kw = dict(seq_len=2048, micro_batch=1)
    r = plan_memory(LLAMA3_8B, ParallelPlan(data=d, tensor=t, recompute=recompute), **kw)
    r2 = plan_memory(LLAMA3_8B, ParallelPlan(data=2 * d, tensor=t, recompute=recompute), **kw)
    assert r2.total <= r.total
    full = plan_memory(LLAMA3_8B, ParallelPlan(data=d, tensor=t, recompute="full"), **kw)
    assert full.activations <= r.activations


def test_enumerate_plans_valid_and_ranked() -> None:
    plans = enumerate_plans(LLAMA3_70B, 64, seq_len=4096, recompute="selective")
    assert plans
    seen = set()
    for r in plans:
        p = r.plan
        assert p.num_gpus == 64
        assert 64 % p.tensor == 0 and LLAMA3_70B.num_kv_heads % p.tensor == 0 and p.tensor <= 8
        assert LLAMA3_70B.num_layers % p.pipeline == 0
        seen.add((p.data, p.tensor, p.pipeline, p.context))
    assert len(seen) == len(plans)
    fits = [r.fits for r in plans]
    assert fits == sorted(fits, reverse=True)
    # brute force: every factorisation that passes the rules is listed
    brute = {
        (64 // (t * p * c), t, p, c)
        for t in (1, 2, 4, 8)
        for p in range(1, 65)
        for c in range(1, 65)
        if 64 % (t * p * c) == 0 and 80 % p == 0 and (c == 1 or 4096 % (2 * c) == 0)
    }
    assert seen == brute
    assert plans[0].fits


def test_generation_memory() -> None:
    w, n = generation_memory(LLAMA3_8B, gpu_bytes=80e9, memory_utilization=0.6)
    assert w == LLAMA3_8B.num_params * 2
    assert n == math.floor((0.6 * 80e9 - w) / 131072)
    assert generation_memory(LLAMA3_70B, tensor_parallel=1)[1] == 0


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("call", "exc", "word"),
    [
        (lambda: model_state_bytes_per_param(4, 8), ValueError, "stage"),
        (lambda: model_state_bytes_per_param(True, 8), ValueError, "stage"),
        (lambda: model_state_bytes_per_param(3, 0), ValueError, "shard_size"),
        (lambda: model_state_bytes_per_param(3, 2.0), TypeError, "shard_size"),
        (lambda: model_state_bytes_per_param(3, 2, "bf16"), TypeError, "dtypes"),
        (lambda: model_state_bytes(-1, 3, 8), ValueError, "num_params"),
        (lambda: DtypeBytes(params=0), ValueError, "params"),
        (lambda: fsdp_shard_numel([4, 2], 2, 2), ValueError, "rank"),
        (lambda: fsdp_shard_numel("ab", 2, 0), TypeError, "shape"),
        (lambda: fsdp_shard_numel([], 2, 0), TypeError, "shape"),
        (lambda: data_parallel_comm_bytes(10, 0), ValueError, "data_parallel"),
        (lambda: fsdp_comm_bytes(10, 0), ValueError, "data_parallel"),
        (lambda: tensor_parallel_comm_bytes(2, 1, 8, 16, 0), ValueError, "tensor_parallel"),
        (lambda: tensor_parallel_comm_bytes(2, 1, 0, 16, 2), ValueError, "seq_len"),
        (lambda: TransformerShape(2, 10, 3, 1, 4, 5), ValueError, "num_heads"),
        (lambda: TransformerShape(2, 8, 4, 3, 4, 5), ValueError, "num_kv_heads"),
        (lambda: ParallelPlan(data=0), ValueError, "data"),
        (lambda: ParallelPlan(recompute="some"), ValueError, "recompute"),
        (lambda: ParallelPlan(sequence_parallel=1), TypeError, "sequence_parallel"),
        (lambda: plan_memory(LLAMA3_8B, ParallelPlan(context=3), seq_len=1024), ValueError, "seq_len"),
        (lambda: plan_memory("8b", ParallelPlan(), seq_len=1024), TypeError, "shape"),
        (lambda: plan_memory(LLAMA3_8B, (1, 1), seq_len=1024), TypeError, "plan"),
        (lambda: plan_memory(LLAMA3_8B, ParallelPlan(), seq_len=1024, gpu_bytes=0), ValueError, "gpu_bytes"),
        (lambda: generation_memory(LLAMA3_8B, memory_utilization=1.5), ValueError, "memory_utilization"),
        (lambda: generation_memory(LLAMA3_8B, memory_utilization=0), ValueError, "memory_utilization"),
        (lambda: generation_memory(LLAMA3_8B, tensor_parallel=0), ValueError, "tensor_parallel"),
        (lambda: plan_memory(LLAMA3_8B, ParallelPlan(), seq_len=8, logits_copies=-1.0), ValueError, "logits_copies"),
        (lambda: plan_memory(LLAMA3_8B, ParallelPlan(), seq_len=8, logits_copies=math.inf), ValueError, "copies"),
        (lambda: logits_bytes(1, 8, 10, tensor_parallel=0), ValueError, "tensor_parallel"),
        (lambda: kv_cache_bytes_per_token(2, 8, 4, tensor_parallel=0), ValueError, "tensor_parallel"),
        (lambda: kv_cache_bytes(LLAMA3_8B, -1), ValueError, "num_tokens"),
        (lambda: enumerate_plans(LLAMA3_8B, 0, seq_len=8), ValueError, "num_gpus"),
    ],
)
def test_bad_input(call, exc, word) -> None:
    with pytest.raises(exc, match=word):
        call()
