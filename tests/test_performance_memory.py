"""nemo_rl_theory.performance.memory: the Korthikanti formula, the byte meters, sequence packing."""

from __future__ import annotations

import gc
import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.checkpoint import checkpoint

from nemo_rl_theory.performance.memory import (
    LivePeakMeter,
    SavedTensorMeter,
    activation_bytes_per_layer,
    block_diagonal_causal_mask,
    pack_sequences,
    packed_position_ids,
    segment_ids,
)

# ----------------------------------------------------------------- the formula, as the paper states it


@given(
    s=st.integers(1, 4096),
    b=st.integers(1, 16),
    heads=st.sampled_from([1, 2, 4, 8, 16]),
    head_dim=st.integers(1, 64),
    t=st.sampled_from([1, 2, 4, 8]),
)
def test_table_2_of_korthikanti_et_al(s, b, heads, head_dim, t):
    a, h = heads * max(t, 1), heads * max(t, 1) * head_dim
    sbh = s * b * h

    def f(**kw):
        return activation_bytes_per_layer(s, b, h, a, **kw)

    # Table 2 rows, typed from the paper (2-byte activations, 1-byte masks).
    assert f() == pytest.approx(sbh * (34 + 5 * a * s / h), rel=1e-12)
    assert f(tensor_parallel=t) == pytest.approx(sbh * (10 + 24 / t + 5 * a * s / (h * t)), rel=1e-12)
    tp_sp = f(tensor_parallel=t, sequence_parallel=True)
    assert tp_sp == pytest.approx(sbh * (34 / t + 5 * a * s / (h * t)), rel=1e-12)
    assert f(tensor_parallel=t, recompute="selective") == pytest.approx(sbh * (10 + 24 / t), rel=1e-12)
    assert f(tensor_parallel=t, sequence_parallel=True, recompute="selective") == pytest.approx(sbh * 34 / t, rel=1e-12)
    assert f(recompute="full") == pytest.approx(2 * sbh, rel=1e-12)


def test_section_4_1_breakdown_by_hand():
    # Attention 11sbh + 5as^2b, MLP 19sbh, two LayerNorms 4sbh (section 4.1).
    s, b, h, a = 2048, 1, 4096, 32
    sbh = s * b * h
    assert activation_bytes_per_layer(s, b, h, a) == 11 * sbh + 5 * a * s * s * b + 19 * sbh + 4 * sbh


def test_general_byte_sizes_count_values_and_masks():
    s, b, h, a = 8, 3, 16, 4
    for p, m in [(4, 4), (4, 1), (2, 2), (1, 1)]:
        got = activation_bytes_per_layer(s, b, h, a, bytes_per_value=p, mask_bytes=m)
        assert got == s * b * h * (16 * p + 2 * m) + a * s * s * b * (2 * p + m)
        assert activation_bytes_per_layer(s, b, h, a, bytes_per_value=p, recompute="full") == p * s * b * h


def test_sequence_parallel_shards_the_full_recompute_input():
    got = activation_bytes_per_layer(8, 1, 16, 4, tensor_parallel=4, sequence_parallel=True, recompute="full")
    assert got == 2 * 8 * 16 / 4


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(seq_len=0), ValueError, "seq_len"),
        (dict(micro_batch=1.5), TypeError, "micro_batch"),
        (dict(hidden=True), TypeError, "hidden"),
        (dict(hidden=30), ValueError, "divisible by num_heads"),
        (dict(tensor_parallel=3), ValueError, "divisible by tensor_parallel"),
        (dict(sequence_parallel=1), TypeError, "sequence_parallel"),
        (dict(recompute="some"), ValueError, "recompute"),
        (dict(bytes_per_value=0), ValueError, "bytes_per_value"),
        (dict(bytes_per_value=float("nan")), ValueError, "bytes_per_value"),
        (dict(mask_bytes="1"), TypeError, "mask_bytes"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    args = dict(seq_len=8, micro_batch=1, hidden=32, num_heads=4)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        activation_bytes_per_layer(**args)


# ----------------------------------------------------------------- a GPT block laid out as in the paper


def _dropout(x, p):
    # native_dropout saves a bool (1-byte) mask, as the fused GPU kernel F.dropout uses there.
    return torch.native_dropout(x, p, True)[0]


class _Block(nn.Module):
    def __init__(self, h, a, selective=False):
        super().__init__()
        self.a, self.selective = a, selective
        self.ln1, self.ln2 = nn.LayerNorm(h), nn.LayerNorm(h)
        self.qkv, self.proj = nn.Linear(h, 3 * h), nn.Linear(h, h)
        self.fc1, self.fc2 = nn.Linear(h, 4 * h), nn.Linear(4 * h, h)

    def core(self, q, k, v):
        return _dropout(torch.softmax((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5, -1), 0.1) @ v

    def forward(self, x):
        b, s, h = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, self.a, h // self.a).permute(2, 0, 3, 1, 4).contiguous().unbind(0)
        o = checkpoint(self.core, q, k, v, use_reentrant=False) if self.selective else self.core(q, k, v)
        x = x + _dropout(self.proj(o.transpose(1, 2).reshape(b, s, h)), 0.1)
        return x + _dropout(self.fc2(F.gelu(self.fc1(self.ln2(x)))), 0.1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_saved_bytes_of_a_block_equal_the_formula_plus_layernorm_statistics(dtype, recompute):
    s, b, h, a = 12, 3, 16, 4
    p = torch.finfo(dtype).bits // 8
    torch.manual_seed(0)
    block = _Block(h, a, selective=recompute == "selective").to(dtype)
    x = torch.randn(b, s, h, dtype=dtype, requires_grad=True)
    with SavedTensorMeter(exclude=block.parameters()) as meter:
        checkpoint(block, x, use_reentrant=False) if recompute == "full" else block(x)
    formula = activation_bytes_per_layer(s, b, h, a, recompute=recompute, bytes_per_value=p)
    # The paper leaves out LayerNorm's per-token mean and 1/std: 2 LayerNorms x 2 x sb values.
    stats = 0 if recompute == "full" else 4 * s * b * p
    assert meter.bytes == formula + stats


def test_saved_tensor_meter_counts_a_storage_once_and_skips_excluded():
    w = torch.randn(5, 3, requires_grad=True)
    x = torch.randn(4, 5, requires_grad=True)
    with SavedTensorMeter() as m:
        (x * x).sum()  # mul saves x twice (self and other): one storage
    assert m.saved == 2 and m.bytes == 4 * 5 * 4
    with SavedTensorMeter(exclude=[w]) as m:
        x @ w  # mm saves x and w; w is excluded
    assert m.bytes == x.nbytes
    with SavedTensorMeter() as m:
        torch.exp(x)  # exp saves its output: a new [4, 5] float32
        torch.relu(x[:2])  # relu saves its output, a new [2, 5]
    assert m.bytes == 4 * 5 * 4 + 2 * 5 * 4
    assert [n for n, _, _ in m.storages] == [80, 40]


def test_saved_tensor_meter_counts_a_reused_address_again():
    x = torch.randn(256, requires_grad=True)
    with SavedTensorMeter() as m:
        for _ in range(5):
            torch.exp(x)  # graph dropped at once: the next output may reuse the freed buffer
    assert m.bytes == 5 * x.nbytes and len(m.storages) == 5


def test_checkpoint_gradients_are_bitwise_equal():
    torch.manual_seed(0)
    block = _Block(16, 4)
    x = torch.randn(2, 8, 16, requires_grad=True)
    grads = []
    for use_ckpt in (False, True):
        torch.manual_seed(1)
        y = checkpoint(block, x, use_reentrant=False) if use_ckpt else block(x)
        grads.append(torch.autograd.grad(y.square().sum(), [x, *block.parameters()]))
    assert all(torch.equal(g0, g1) for g0, g1 in zip(*grads, strict=True))


# ----------------------------------------------------------------- the live peak meter


def test_live_peak_meter_hand_counted():
    x = torch.randn(100)
    with LivePeakMeter() as m:
        y = x * 2  # 400 bytes
        z = y + 1  # 400 more: 800 live
        del y  # freed: 400 live
        w = z.view(10, 10)  # a view: no new storage
        v = torch.empty(50, dtype=torch.float64)  # 400: 800 live
        u = torch.ones(25)  # 100: 900 live, the peak
        del u
    assert m.peak == 900 and m.current == 800 and m.allocated == 1300
    del z, w, v
    gc.collect()
    assert m.current == 0


def test_live_peak_meter_agrees_with_torch_memtracker():
    mem_tracker = pytest.importorskip("torch.distributed._tools.mem_tracker")
    torch.manual_seed(0)
    lin = nn.Linear(32, 64)
    x = torch.randn(16, 32)

    def step():
        out = F.gelu(lin(x)).square().sum()
        out.backward()
        lin.zero_grad(set_to_none=True)

    with LivePeakMeter() as ours:
        step()
    tracker = mem_tracker.MemTracker()
    tracker.track_external(lin)
    with tracker:
        step()
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    params = sum(p.nbytes for p in lin.parameters())
    assert ours.peak == peak["Total"] - params


def test_live_peak_meter_logits_route():
    # log_softmax + gather keeps [N, V] alive; backward builds two more [N, V]: peak >= 3 logits.
    n, v = 64, 512
    logits = torch.randn(n, v, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    with LivePeakMeter() as m:
        torch.log_softmax(logits, -1).gather(-1, targets[:, None]).sum().backward()
    assert 3 * logits.nbytes <= m.peak <= 3 * logits.nbytes + 4 * n * 8


# ----------------------------------------------------------------- packing


@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=40), extra=st.integers(0, 20))
def test_packing_is_a_partition_within_capacity(lengths, extra):
    cap = max(lengths) + extra
    rows = pack_sequences(lengths, cap)
    assert sorted(itertools.chain(*rows)) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= cap for r in rows)
    # first-fit: no two rows could be merged... at least: at most one row is half-empty or less
    assert sum(1 for r in rows if sum(lengths[i] for i in r) <= cap / 2) <= 1
    # lower bound on the row count
    assert len(rows) >= -(-sum(lengths) // cap)


@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=8))
def test_mask_and_ids_against_brute_force(lengths):
    seg, pos, mask = segment_ids(lengths), packed_position_ids(lengths), block_diagonal_causal_mask(lengths)
    owner = [k for k, n in enumerate(lengths) for _ in range(n)]
    where = [j for n in lengths for j in range(n)]
    assert seg.tolist() == owner and pos.tolist() == where
    n = len(owner)
    brute = [[owner[i] == owner[j] and j <= i for j in range(n)] for i in range(n)]
    assert mask.tolist() == brute


@pytest.mark.parametrize(
    ("lengths", "capacity", "exc", "match"),
    [
        ([], 4, ValueError, "empty"),
        ([3, 0], 4, ValueError, r"lengths\[1\]"),
        ([3, 2.0], 4, TypeError, r"lengths\[1\]"),
        ("abc", 4, TypeError, "lengths"),
        (torch.tensor([1.0]), 4, TypeError, "integer"),
        ([5], 4, ValueError, "capacity"),
        ([1], 0, ValueError, "capacity"),
    ],
)
def test_packing_bad_arguments(lengths, capacity, exc, match):
    with pytest.raises(exc, match=match):
        pack_sequences(lengths, capacity)


# ----------------------------------------------------------------- one rank's share under TP + SP


class _GatheredLinear(torch.autograd.Function):
    # all_gather over the sequence (other ranks' shards simulated by copies), then the linear;
    # saves the shard, not the gathered input, and gathers again in backward.
    @staticmethod
    def forward(ctx, x, weight, bias, t):
        ctx.save_for_backward(x, weight)
        ctx.t = t
        return F.linear(x.repeat(1, t, 1), weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        gx = (g @ weight).unflatten(1, (ctx.t, -1)).sum(1)
        return gx, g.flatten(0, 1).T @ x.repeat(1, ctx.t, 1).flatten(0, 1), g.sum((0, 1)), None


class _SPBlock(nn.Module):
    # One tensor- and sequence-parallel rank: input [b, s/t, h], a/t heads, 1/t of each weight.
    def __init__(self, h, a, t, selective=False):
        super().__init__()
        self.a, self.t, self.selective = a, t, selective
        self.ln1, self.ln2 = nn.LayerNorm(h), nn.LayerNorm(h)
        self.qkv, self.proj = nn.Linear(h, 3 * h // t), nn.Linear(h // t, h)
        self.fc1, self.fc2 = nn.Linear(h, 4 * h // t), nn.Linear(4 * h // t, h)

    def core(self, q, k, v):
        return _dropout(torch.softmax((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5, -1), 0.1) @ v

    def forward(self, x):
        b, n, h = x.shape
        qkv = _GatheredLinear.apply(self.ln1(x), self.qkv.weight, self.qkv.bias, self.t)
        s = qkv.shape[1]
        q, k, v = qkv.view(b, s, 3, self.a // self.t, h // self.a).permute(2, 0, 3, 1, 4).contiguous().unbind(0)
        o = checkpoint(self.core, q, k, v, use_reentrant=False) if self.selective else self.core(q, k, v)
        x = x + _dropout(self.proj(o.transpose(1, 2).reshape(b, s, h // self.t))[:, :n], 0.1)  # reduce-scatter
        y = self.fc2(F.gelu(_GatheredLinear.apply(self.ln2(x), self.fc1.weight, self.fc1.bias, self.t)))
        return x + _dropout(y[:, :n], 0.1)


def test_gathered_linear_gradcheck():
    xwb = [torch.randn(*shape, dtype=torch.float64, requires_grad=True) for shape in ((2, 3, 4), (5, 4), (5,))]
    assert torch.autograd.gradcheck(lambda x, w, b: _GatheredLinear.apply(x, w, b, 3), xwb)


@pytest.mark.parametrize("t", [2, 4])
@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_sequence_parallel_rank_share_equals_the_formula(t, recompute):
    # Includes this library's reading of full recomputation under SP: the stored input is the shard.
    s, b, h, a = 16, 2, 32, 4
    torch.manual_seed(0)
    block = _SPBlock(h, a, t, selective=recompute == "selective").to(torch.bfloat16)
    x = torch.randn(b, s // t, h, dtype=torch.bfloat16, requires_grad=True)
    with SavedTensorMeter(exclude=block.parameters()) as meter:
        checkpoint(block, x, use_reentrant=False) if recompute == "full" else block(x)
    formula = activation_bytes_per_layer(s, b, h, a, tensor_parallel=t, sequence_parallel=True, recompute=recompute)
    stats = 0 if recompute == "full" else 4 * (s // t) * b * 2
    assert meter.bytes == formula + stats
