"""masked_mean: the reduction every loss uses."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from nemo_rl_theory import masked_mean


def test_hand_computed_mean_with_nemo_epsilon():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [0, 1, 0]], dtype=torch.float64)
    # (1 + 2 + 5) / (3 + 1e-8)
    assert masked_mean(values, mask).item() == 8.0 / (3.0 + 1e-8)


def test_dim_and_global_factor():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.float64)
    per_row = masked_mean(values, mask, dim=-1)
    torch.testing.assert_close(per_row, torch.tensor([3.0 / (2 + 1e-8), 11.0 / (2 + 1e-8)], dtype=torch.float64))
    # A global factor replaces the local count: 14 / 10.
    assert masked_mean(values, mask, global_normalization_factor=10).item() == 14.0 / (10 + 1e-8)


def test_padding_may_hold_inf_and_nan():
    values = torch.tensor([1.0, -float("inf"), float("nan"), 3.0], requires_grad=True)
    mask = torch.tensor([True, False, False, True])
    out = masked_mean(values, mask)
    out.backward()
    assert torch.isfinite(out)
    torch.testing.assert_close(out.detach(), torch.tensor(4.0 / (2 + 1e-8)))
    torch.testing.assert_close(values.grad, torch.tensor([1.0, 0.0, 0.0, 1.0]) / (2 + 1e-8))


def test_all_zero_mask_gives_zero():
    values = torch.randn(3, 4, requires_grad=True)
    out = masked_mean(values, torch.zeros(3, 4))
    out.backward()
    assert out.item() == 0.0
    assert torch.equal(values.grad, torch.zeros(3, 4))


def test_mask_broadcasting_to_values_only():
    values = torch.arange(6.0).reshape(2, 3)
    row_mask = torch.tensor([[1.0], [0.0]])
    torch.testing.assert_close(masked_mean(values, row_mask), torch.tensor((0 + 1 + 2) / 3.0))


@given(
    n_micro=st.integers(1, 4),
    rows=st.integers(1, 5),
    cols=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_micro_batches_with_global_factor_sum_to_full_batch(n_micro, rows, cols, seed):
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(n_micro * rows, cols, generator=gen, dtype=torch.float64)
    mask = (torch.rand(n_micro * rows, cols, generator=gen) < 0.6).double()
    total = mask.sum()
    full = masked_mean(values, mask)
    split = sum(
        masked_mean(v, m, global_normalization_factor=total)
        for v, m in zip(values.chunk(n_micro), mask.chunk(n_micro), strict=False)
    )
    torch.testing.assert_close(split, full)
