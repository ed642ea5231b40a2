"""linear_token_logprobs against the naive route ``hidden @ weight.T -> log_softmax -> gather``."""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import nemo_rl_theory
from nemo_rl_theory import linear_token_logprobs, token_logprobs
from nemo_rl_theory import logprobs as logprobs_module

NAN = float("nan")
INF = float("inf")


def naive(hidden, weight, targets, bias=None):
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)


@contextmanager
def block_elements(n: int | None):
    """Cap the elements of one logits block, so that tokens are chunked too."""
    if n is None:
        yield
    else:
        with mock.patch.object(logprobs_module, "LINEAR_BLOCK_ELEMENTS", n):
            yield


def values_and_grads(fn, hidden, weight, targets, upstream, bias=None):
    leaves = [hidden.clone().requires_grad_(), weight.clone().requires_grad_()]
    if bias is not None:
        leaves.append(bias.clone().requires_grad_())
    out = fn(leaves[0], leaves[1], targets, leaves[2] if bias is not None else None)
    grads = torch.autograd.grad((out * upstream).sum(), leaves)
    return out.detach(), grads


def make(batch, length, hidden_size, vocab, *, bias=False, dtype=torch.float64, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    hidden = (scale * torch.randn(batch, length, hidden_size, generator=gen)).to(dtype)
    weight = torch.randn(vocab, hidden_size, generator=gen).to(dtype)
    b = torch.randn(vocab, generator=gen).to(dtype) if bias else None
    targets = torch.randint(0, vocab, (batch, length), generator=gen)
    upstream = torch.randn(batch, length, generator=gen).to(dtype)
    return hidden, weight, targets, upstream, b


@settings(deadline=None)
@given(
    batch=st.integers(1, 3),
    length=st.integers(1, 7),
    hidden_size=st.integers(1, 6),
    vocab=st.integers(1, 40),
    chunk=st.one_of(st.none(), st.integers(1, 45)),
    elements=st.one_of(st.none(), st.integers(1, 60)),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_naive_route_values_and_gradients_float64(
    batch, length, hidden_size, vocab, chunk, elements, bias, seed
):
    # Chunk sizes and block caps that do and do not divide V and B*T, one block or many.
    hidden, weight, targets, upstream, b = make(batch, length, hidden_size, vocab, bias=bias, seed=seed, scale=2.0)

    def ours(h, w, y, bb):
        return linear_token_logprobs(h, w, y, bias=bb, chunk_size=chunk)

    with block_elements(elements):
        out, grads = values_and_grads(ours, hidden, weight, targets, upstream, b)
    ref, ref_grads = values_and_grads(naive, hidden, weight, targets, upstream, b)
    torch.testing.assert_close(out, ref)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_block_shape_follows_chunk_size_and_element_cap():
    assert logprobs_module._linear_block_shape(1024, 128256, None) == (1024, 8192)
    assert logprobs_module._linear_block_shape(4096, 128256, None) == (1024, 8192)
    assert logprobs_module._linear_block_shape(10, 7, 100) == (10, 7)  # clipped to the vocabulary
    with block_elements(12):
        assert logprobs_module._linear_block_shape(10, 40, 5) == (2, 5)
        assert logprobs_module._linear_block_shape(10, 40, 20) == (1, 20)  # at least one token


@pytest.mark.parametrize("bias", [False, True])
def test_gradcheck_float64(bias):
    hidden, weight, targets, _, b = make(2, 3, 4, 7, bias=bias, seed=3)
    leaves = [hidden.requires_grad_(), weight.requires_grad_()] + ([b.requires_grad_()] if bias else [])

    def fn(*args):
        return linear_token_logprobs(args[0], args[1], targets, bias=args[2] if bias else None, chunk_size=3)

    with block_elements(8):  # 2 tokens x 3 vocabulary rows per block: both dims chunked, ragged
        assert torch.autograd.gradcheck(fn, tuple(leaves))


def test_hand_computed_two_token_vocabulary():
    # H = 1, weight rows (0, 1), hidden ln 3: logits (0, ln 3), p = (1/4, 3/4).
    hidden = torch.full((1, 2, 1), math.log(3.0), dtype=torch.float64)
    weight = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    out = linear_token_logprobs(hidden, weight, torch.tensor([[1, 0]]))
    torch.testing.assert_close(out, torch.tensor([[math.log(0.75), math.log(0.25)]], dtype=torch.float64))


def test_float32_agrees_with_float64_reference_as_closely_as_the_naive_route():
    hidden, weight, targets, upstream, b = make(2, 40, 16, 3000, bias=True, dtype=torch.float64, seed=5, scale=0.5)
    ref, ref_grads = values_and_grads(naive, hidden, weight, targets, upstream, b)
    f32 = [t.float() if t is not None else None for t in (hidden, weight, targets, upstream, b)]
    f32[2] = targets

    def ours(h, w, y, bb):
        return linear_token_logprobs(h, w, y, bias=bb, chunk_size=700)

    out, grads = values_and_grads(ours, *f32)
    _, naive_grads = values_and_grads(naive, *f32)
    assert out.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    for got, want, theirs in zip(grads, ref_grads, naive_grads, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
        # No worse than float32 log_softmax + gather, up to a factor of 4.
        err_ours = float((got.double() - want).abs().max())
        err_naive = float((theirs.double() - want).abs().max())
        assert err_ours <= 4 * err_naive + 1e-7


def test_large_logits_stay_finite_and_exact():
    # Logits spread over hundreds: exp overflows float32 unless each block is shifted by a maximum.
    hidden, weight, targets, upstream, _ = make(2, 6, 8, 500, dtype=torch.float64, seed=6, scale=60.0)
    ref, ref_grads = values_and_grads(naive, hidden, weight, targets, upstream)
    assert float((hidden @ weight.T).abs().max()) > 500

    def ours(h, w, y, bb):
        return linear_token_logprobs(h, w, y, chunk_size=64)

    out, grads = values_and_grads(ours, hidden.float(), weight.float(), targets, upstream.float())
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-3)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-3)


def test_matches_token_logprobs_on_built_logits():
    hidden, weight, targets, _, b = make(3, 5, 8, 50, bias=True, seed=7)
    logits = hidden @ weight.T + b
    torch.testing.assert_close(linear_token_logprobs(hidden, weight, targets, bias=b), token_logprobs(logits, targets))


def test_frozen_weight_or_frozen_hidden():
    hidden, weight, targets, upstream, _ = make(2, 4, 5, 30, seed=8)
    _, (ref_h, ref_w) = values_and_grads(naive, hidden, weight, targets, upstream)
    h = hidden.clone().requires_grad_()
    (linear_token_logprobs(h, weight, targets, chunk_size=7) * upstream).sum().backward()
    torch.testing.assert_close(h.grad, ref_h)
    w = weight.clone().requires_grad_()
    (linear_token_logprobs(hidden, w, targets, chunk_size=7) * upstream).sum().backward()
    torch.testing.assert_close(w.grad, ref_w)


def test_other_ranks_strided_views_and_empty_inputs():
    gen = torch.Generator().manual_seed(9)
    weight = torch.randn(11, 4, generator=gen, dtype=torch.float64)
    # 2-D [T, H] and 4-D [A, B, T, H] inputs.
    h2 = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    y2 = torch.randint(0, 11, (5,), generator=gen)
    torch.testing.assert_close(linear_token_logprobs(h2, weight, y2, chunk_size=3), naive(h2, weight, y2))
    h4 = torch.randn(2, 2, 3, 4, generator=gen, dtype=torch.float64)
    y4 = torch.randint(0, 11, (2, 2, 3), generator=gen)
    torch.testing.assert_close(linear_token_logprobs(h4, weight, y4, chunk_size=3), naive(h4, weight, y4))
    # NeMo RL's alignment: out[:, :-1] predicts input_ids[:, 1:] (non-contiguous views).
    out = torch.randn(2, 6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 11, (2, 6), generator=gen)
    ours = linear_token_logprobs(out[:, :-1], weight, ids[:, 1:], chunk_size=4)
    (grad_ours,) = torch.autograd.grad(ours.sum(), out)
    (grad_ref,) = torch.autograd.grad(naive(out[:, :-1], weight, ids[:, 1:]).sum(), out)
    torch.testing.assert_close(ours, naive(out[:, :-1], weight, ids[:, 1:]))
    torch.testing.assert_close(grad_ours, grad_ref)
    # No positions: an empty result whose gradients are zero.
    empty = torch.zeros(2, 0, 4, dtype=torch.float64, requires_grad=True)
    w = weight.clone().requires_grad_()
    res = linear_token_logprobs(empty, w, torch.zeros(2, 0, dtype=torch.long))
    assert res.shape == (2, 0)
    res.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(weight)) and empty.grad.shape == empty.shape


def test_exported_at_top_level():
    assert "linear_token_logprobs" in nemo_rl_theory.__all__
    assert nemo_rl_theory.linear_token_logprobs is logprobs_module.linear_token_logprobs


def test_double_backward_raises_a_clear_error():
    hidden, weight, targets, _, _ = make(1, 3, 4, 9, seed=10)
    hidden.requires_grad_()
    out = linear_token_logprobs(hidden, weight, targets).sum()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(out, hidden, create_graph=True)
    torch.autograd.grad(out, hidden)  # the graph survives; a plain backward still works


class LargestOutput(TorchDispatchMode):
    """Record the shape of every tensor an aten op returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append((str(func), tuple(t.shape)))
        return out


def test_never_allocates_a_vocabulary_sized_tensor_per_token():
    tokens, hidden_size, vocab, chunk = 96, 8, 20000, 1024
    hidden, weight, targets, upstream, b = make(1, tokens, hidden_size, vocab, bias=True, dtype=torch.float32)
    leaves = [hidden.requires_grad_(), weight.requires_grad_(), b.requires_grad_()]
    with LargestOutput() as ours:
        out = linear_token_logprobs(hidden, weight, targets, bias=b, chunk_size=chunk)
        torch.autograd.grad((out * upstream).sum(), leaves)
    # The largest results are the [V, H] weight gradient (an output) and one [tokens, chunk] block.
    allowed = max(vocab * hidden_size, tokens * chunk)
    largest = max(math.prod(s) for _, s in ours.shapes)
    assert largest <= allowed < tokens * vocab / 4
    assert not any(len(s) >= 2 and s[-1] == vocab for _, s in ours.shapes)
    # The meter sees the naive route's [tokens, V] logits, so it would see ours.
    with LargestOutput() as theirs:
        torch.autograd.grad((naive(hidden, weight, targets, b) * upstream).sum(), leaves)
    assert max(math.prod(s) for _, s in theirs.shapes) == tokens * vocab


# Bad inputs ------------------------------------------------------------------------------


def says(*words: str) -> str:
    return "(?s)" + "".join(f"(?=.*{w})" for w in words)


def good():
    hidden, weight, targets, _, b = make(2, 3, 4, 6, bias=True, dtype=torch.float32, seed=11)
    return {"hidden": hidden, "weight": weight, "targets": targets, "bias": b}


@pytest.mark.parametrize(
    ("name", "value", "error", "words"),
    [
        ("hidden", [[0.0]], TypeError, ("hidden", "Tensor")),
        ("weight", 3.0, TypeError, ("weight", "Tensor")),
        ("targets", [[0]], TypeError, ("targets", "Tensor")),
        ("bias", [0.0], TypeError, ("bias", "Tensor")),
        ("hidden", torch.zeros(2, 3, 4, dtype=torch.long), TypeError, ("hidden", "floating")),
        ("hidden", torch.zeros(2, 3, 4, dtype=torch.bfloat16), TypeError, ("hidden", "float32 or float64")),
        ("weight", torch.zeros(6, 4, dtype=torch.float64), TypeError, ("weight", "dtype")),
        ("bias", torch.zeros(6, dtype=torch.float64), TypeError, ("bias", "dtype")),
        ("targets", torch.zeros(2, 3), TypeError, ("targets", "integer")),
        ("hidden", torch.zeros(4), ValueError, ("hidden", "shape")),
        ("weight", torch.zeros(6), ValueError, ("weight", "shape")),
        ("weight", torch.zeros(6, 5), ValueError, ("weight", "shape", "H = 4")),
        ("weight", torch.zeros(0, 4), ValueError, ("weight", "vocab")),
        ("bias", torch.zeros(5), ValueError, ("bias", "shape")),
        ("targets", torch.zeros(2, 4, dtype=torch.long), ValueError, ("targets", "shape")),
        ("targets", torch.zeros(2, 3, 1, dtype=torch.long), ValueError, ("targets", "shape")),
        ("targets", torch.full((2, 3), -1), ValueError, ("targets", re.escape("[0, 6)"))),
        ("targets", torch.full((2, 3), 6), ValueError, ("targets", re.escape("[0, 6)"))),
    ],
)
def test_bad_argument_is_rejected_by_name(name, value, error, words):
    inputs = good()
    inputs[name] = value
    with pytest.raises(error, match=says(*words)):
        linear_token_logprobs(inputs.pop("hidden"), inputs.pop("weight"), inputs.pop("targets"), **inputs)


@pytest.mark.parametrize("name", ["hidden", "weight", "bias"])
@pytest.mark.parametrize("bad", [NAN, INF, -INF], ids=["nan", "+inf", "-inf"])
def test_non_finite_input_is_rejected_by_name(name, bad):
    inputs = good()
    inputs[name] = inputs[name].clone()
    inputs[name].view(-1)[1] = bad
    with pytest.raises(ValueError, match=says(name, "NaN/inf")):
        linear_token_logprobs(inputs.pop("hidden"), inputs.pop("weight"), inputs.pop("targets"), **inputs)


def test_overflowing_logits_are_rejected():
    inputs = good()
    # Finite inputs whose products exceed float32's range (1e20 * 1e20 > 3.4e38).
    hidden = torch.full_like(inputs["hidden"], 1e20)
    weight = torch.full_like(inputs["weight"], 1e20)
    with pytest.raises(ValueError, match=says("hidden @ weight.T", "overflow")):
        linear_token_logprobs(hidden, weight, inputs["targets"])


@pytest.mark.parametrize("chunk_size", [0, -1, 1.5, 2.0, True, False, "2"])
def test_bad_chunk_size_is_rejected(chunk_size):
    inputs = good()
    with pytest.raises(ValueError, match=says("chunk_size", "positive int")):
        linear_token_logprobs(inputs["hidden"], inputs["weight"], inputs["targets"], chunk_size=chunk_size)


def test_integer_target_dtypes_are_accepted():
    inputs = good()
    expected = naive(inputs["hidden"], inputs["weight"], inputs["targets"], inputs["bias"])
    for dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        ids = inputs["targets"].to(dtype)
        got = linear_token_logprobs(inputs["hidden"], inputs["weight"], ids, bias=inputs["bias"])
        torch.testing.assert_close(got, expected)
