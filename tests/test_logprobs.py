"""token_logprobs and entropy_from_logits against the naive full-vocabulary route."""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from nemo_rl_theory import entropy_from_logits, token_logprobs


def naive_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)


@given(
    batch=st.integers(1, 5),
    length=st.integers(1, 7),
    vocab=st.integers(1, 40),
    # chunk < length cuts sequences; chunk >= length groups whole sequences (some chunks partial)
    chunk=st.one_of(st.none(), st.integers(1, 16)),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_matches_log_softmax_gather_values_and_gradients(batch, length, vocab, chunk, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(batch, length, vocab, generator=gen)).to(dtype)
    targets = torch.randint(0, vocab, (batch, length), generator=gen)
    upstream = torch.randn(batch, length, generator=gen).to(dtype)

    ours_in = logits.clone().requires_grad_()
    ours = token_logprobs(ours_in, targets, chunk_size=chunk)
    (ours * upstream).sum().backward()

    ref_in = logits.clone().requires_grad_()
    ref = naive_logprobs(ref_in, targets)
    (ref * upstream).sum().backward()

    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(ours_in.grad, ref_in.grad)


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 5, (2, 3), generator=gen)
    assert torch.autograd.gradcheck(lambda z: token_logprobs(z, targets, chunk_size=2), (logits,))


def test_hand_computed_two_token_vocab():
    # logits (0, ln 3): p = (1/4, 3/4), so log p(1) = ln(3/4) and log p(0) = ln(1/4).
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]], dtype=torch.float64)
    out = token_logprobs(logits, torch.tensor([[1, 0]]))
    torch.testing.assert_close(out, torch.tensor([[math.log(0.75), math.log(0.25)]], dtype=torch.float64))


def test_strided_slice_of_model_output_is_supported():
    # NeMo RL aligns with out[:, :-1] and input_ids[:, 1:]: a non-contiguous view.
    gen = torch.Generator().manual_seed(1)
    out = torch.randn(2, 6, 11, generator=gen, requires_grad=True)
    input_ids = torch.randint(0, 11, (2, 6), generator=gen)
    ours = token_logprobs(out[:, :-1], input_ids[:, 1:], chunk_size=2)
    ours.sum().backward()
    grad_ours = out.grad.clone()
    out.grad = None
    naive_logprobs(out[:, :-1], input_ids[:, 1:]).sum().backward()
    torch.testing.assert_close(ours, naive_logprobs(out[:, :-1], input_ids[:, 1:]))
    torch.testing.assert_close(grad_ours, out.grad)


def test_masked_vocabulary_entries_and_other_ranks():
    logits = torch.tensor([[0.0, -float("inf"), 1.0]], requires_grad=True)  # [T=1, V=3], 2-D input
    out = token_logprobs(logits, torch.tensor([2]))
    out.sum().backward()
    torch.testing.assert_close(out, torch.log_softmax(logits.detach(), -1)[:, 2])
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 1] == 0
    four_d = torch.randn(2, 2, 3, 5)
    ids = torch.randint(0, 5, (2, 2, 3))
    torch.testing.assert_close(token_logprobs(four_d, ids), naive_logprobs(four_d, ids))


def test_half_precision_logits_are_reduced_in_float32():
    logits = torch.randn(2, 3, 17, dtype=torch.float64)
    targets = torch.randint(0, 17, (2, 3))
    bf16 = logits.to(torch.bfloat16).requires_grad_()
    out = token_logprobs(bf16, targets)
    out.sum().backward()
    assert out.dtype == torch.float32 and bf16.grad.dtype == torch.bfloat16
    torch.testing.assert_close(out, naive_logprobs(bf16.detach().float(), targets))


def test_entropy_matches_direct_sum_and_limits():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 4, 9, generator=gen, dtype=torch.float64)
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(entropy_from_logits(logits), -(p * p.log()).sum(-1))
    # Uniform over V has entropy ln V; a masked vocabulary entry changes V, not finiteness.
    torch.testing.assert_close(entropy_from_logits(torch.zeros(1, 8)), torch.tensor([math.log(8.0)]))
    masked = torch.tensor([[0.0, 0.0, -float("inf")]], requires_grad=True)
    h = entropy_from_logits(masked)
    h.sum().backward()
    torch.testing.assert_close(h.detach(), torch.tensor([math.log(2.0)]))
    assert torch.isfinite(masked.grad).all()


def test_entropy_gradcheck():
    logits = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(entropy_from_logits, (logits,))


def test_grouped_sequences_in_a_strided_view_and_in_half_precision():
    # chunk_size 7 over length 3 groups two whole sequences per chunk, five rows -> 3 chunks, the
    # last one partial; the view skips the last position, so no chunk is contiguous.
    gen = torch.Generator().manual_seed(2)
    out = torch.randn(5, 4, 9, generator=gen)
    input_ids = torch.randint(0, 9, (5, 4), generator=gen)
    for dtype in (torch.float32, torch.bfloat16):
        ours_in = out.to(dtype).clone().requires_grad_()
        ref_in = out.to(dtype).clone().requires_grad_()
        ours = token_logprobs(ours_in[:, :-1], input_ids[:, 1:], chunk_size=7)
        ref = naive_logprobs(ref_in[:, :-1].float(), input_ids[:, 1:])
        ours.sum().backward()
        ref.sum().backward()
        torch.testing.assert_close(ours, ref)
        torch.testing.assert_close(ours_in.grad, ref_in.grad)
