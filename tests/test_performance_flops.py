"""FLOPs per token (2N / 6N, attention), MFU and the FlopCounterMode helpers, against torch's counter."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from nemo_rl_theory.performance.flops import (
    attention_flops_per_token,
    count_flops,
    dense_flops_per_token,
    flop_breakdown,
    model_flops_utilization,
    transformer_flops_per_token,
)

small = st.integers(1, 6)


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(dims):
        layers += [nn.Linear(a, b, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)


@given(dims=st.lists(st.integers(1, 9), min_size=2, max_size=4), tokens=st.integers(1, 7))
def test_dense_matches_counter_forward_and_training(dims, tokens):
    torch.manual_seed(0)
    model = _mlp(dims)
    n = sum(p.numel() for p in model.parameters())
    x = torch.randn(tokens, dims[0], requires_grad=True)  # the input needs a gradient: full backward
    assert count_flops(model, x) == tokens * dense_flops_per_token(n)

    def train() -> None:
        model(x).sum().backward()

    assert count_flops(train) == tokens * dense_flops_per_token(n, training=True)


def test_training_is_three_forward_and_first_input_gradient_is_skipped_without_grad():
    model = _mlp([5, 7, 3])
    n = 5 * 7 + 7 * 3
    x = torch.randn(4, 5)  # no grad on the input: backward skips the first layer's input gradient

    def train() -> None:
        model(x).sum().backward()

    assert count_flops(train) == 4 * (dense_flops_per_token(n, training=True) - 2 * 5 * 7)
    assert dense_flops_per_token(n, training=True) == 3 * dense_flops_per_token(n)


def _attention(q, k, v, *, causal_block: int | None):
    """Explicit attention; ``causal_block`` computes only key blocks at or before each query block."""
    if causal_block is None:
        scores = q @ k.transpose(-1, -2)
        return scores.softmax(-1) @ v
    t = q.shape[-2]
    outs = []
    for start in range(0, t, causal_block):
        stop = min(start + causal_block, t)
        scores = q[..., start:stop, :] @ k[..., :stop, :].transpose(-1, -2)
        mask = torch.ones(stop - start, stop, dtype=torch.bool).triu(start + 1)
        outs.append(scores.masked_fill(mask, -math.inf).softmax(-1) @ v[..., :stop, :])
    return torch.cat(outs, dim=-2)


@given(layers=st.integers(0, 3), t=st.integers(1, 12), heads=st.integers(1, 3), head_dim=st.integers(1, 4))
def test_attention_matches_counter_dense_and_causal(layers, t, heads, head_dim):
    d = heads * head_dim
    q, k, v = (torch.randn(1, heads, t, head_dim, requires_grad=True) for _ in range(3))
    for causal, block in ((False, None), (True, 1)):
        forward = layers * count_flops(_attention, q, k, v, causal_block=block)
        assert forward == pytest.approx(t * attention_flops_per_token(layers, t, d, causal=causal), rel=0, abs=0)

        def train(block=block) -> None:
            _attention(q, k, v, causal_block=block).sum().backward()

        training = layers * count_flops(train)
        assert training == t * attention_flops_per_token(layers, t, d, training=True, causal=causal)


def test_causal_is_kaplan_term_plus_one_and_half_of_dense():
    L, T, d = 24, 2048, 1024
    causal = attention_flops_per_token(L, T, d, causal=True)
    assert causal == 2 * L * (T + 1) * d
    assert causal / attention_flops_per_token(L, T, d) == pytest.approx((T + 1) / (2 * T))
    # PaLM's 6N + 12 L H Q T training count (non-causal)
    assert transformer_flops_per_token(10, L, T, d, training=True) == 6 * 10 + 12 * L * d * T


def test_transformer_counted_exactly():
    torch.manual_seed(0)
    vocab, t, d, heads, ff = 11, 6, 8, 2, 12
    emb, qkv, out = nn.Embedding(vocab, d), nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
    up, down, head = nn.Linear(d, ff, bias=False), nn.Linear(ff, d, bias=False), nn.Linear(d, vocab, bias=False)
    tokens = torch.randint(0, vocab, (3, t))

    def forward():
        x = emb(tokens)
        q, k, v = qkv(x).view(3, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        x = x + out((q @ k.transpose(-1, -2)).softmax(-1).matmul(v).transpose(1, 2).reshape(3, t, d))
        x = x + down(F.gelu(up(x)))
        return head(x)

    n = sum(m.weight.numel() for m in (qkv, out, up, down, head))
    assert count_flops(forward) == 3 * t * transformer_flops_per_token(n, 1, t, d)

    def train():
        F.cross_entropy(forward().flatten(0, 1), tokens.flatten()).backward()

    assert count_flops(train) == 3 * t * transformer_flops_per_token(n, 1, t, d, training=True)


def test_breakdown_sums_to_total():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2, bias=False))
    x = torch.randn(5, 4)
    parts = flop_breakdown(model, x)
    assert set(parts) == {"addmm", "mm"}
    assert parts == {"addmm": 2 * 5 * 4 * 6, "mm": 2 * 5 * 6 * 2}  # the bias add is not counted
    assert sum(parts.values()) == count_flops(model, x)


def test_counter_counts_nothing_for_elementwise_work():
    x = torch.randn(100)
    assert count_flops(lambda: (x.exp() + x).softmax(0)) == 0
    assert flop_breakdown(lambda: x.sin()) == {}


@given(
    c=st.floats(0, 1e12, allow_nan=False),
    rate=st.floats(0, 1e7, allow_nan=False),
    peak=st.floats(1e-3, 1e18, allow_nan=False),
)
def test_mfu_is_achieved_over_peak(c, rate, peak):
    assert model_flops_utilization(c, rate, peak) == pytest.approx(c * rate / peak, rel=1e-12, abs=1e-300)


def test_mfu_palm_example():
    # A 1 FLOP/token model at peak/1 tokens per second runs at 100%; half the rate, 50%.
    assert model_flops_utilization(6e9, 100.0, 6e11) == pytest.approx(1.0)
    assert model_flops_utilization(6e9, 50, 6e11) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: dense_flops_per_token(-1), ValueError, "num_params"),
        (lambda: dense_flops_per_token(1.5), TypeError, "num_params"),
        (lambda: dense_flops_per_token(True), TypeError, "num_params"),
        (lambda: dense_flops_per_token(3, training=1), TypeError, "training"),
        (lambda: attention_flops_per_token(-1, 4, 4), ValueError, "num_layers"),
        (lambda: attention_flops_per_token(1, 0, 4), ValueError, "seq_len"),
        (lambda: attention_flops_per_token(1, 4, -2), ValueError, "hidden"),
        (lambda: attention_flops_per_token(1, 4, 4.0), TypeError, "hidden"),
        (lambda: attention_flops_per_token(1, 4, 4, causal="yes"), TypeError, "causal"),
        (lambda: model_flops_utilization(-1.0, 1.0, 1.0), ValueError, "flops_per_token"),
        (lambda: model_flops_utilization(1.0, math.nan, 1.0), ValueError, "tokens_per_second"),
        (lambda: model_flops_utilization(1.0, 1.0, 0.0), ValueError, "peak_flops_per_second"),
        (lambda: model_flops_utilization(1.0, 1.0, math.inf), ValueError, "peak_flops_per_second"),
        (lambda: model_flops_utilization("1", 1.0, 1.0), TypeError, "flops_per_token"),
        (lambda: count_flops(3), TypeError, "fn"),
        (lambda: flop_breakdown("f"), TypeError, "fn"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


@given(n=small, layers=small, t=small, d=small)
def test_training_is_three_times_forward(n, layers, t, d):
    for causal in (False, True):
        fwd = transformer_flops_per_token(n, layers, t, d, causal=causal)
        assert transformer_flops_per_token(n, layers, t, d, training=True, causal=causal) == 3 * fwd


def test_counter_misses_in_place_products_but_counts_out_forms():
    """Pins the torch behaviour the docstring and the profiling page state (torch 2.13)."""
    x, w, acc = torch.randn(8, 16), torch.randn(16, 4), torch.zeros(8, 4)
    expected = 2 * 8 * 16 * 4
    assert count_flops(torch.mm, x, w) == expected
    assert count_flops(lambda: torch.mm(x, w, out=acc)) == expected
    assert count_flops(lambda: torch.addmm(acc, x, w, out=torch.empty(8, 4))) == expected
    assert count_flops(lambda: acc.addmm_(x, w)) == 0
    assert count_flops(lambda: acc[None].clone().baddbmm_(x[None], w[None])) == 0
