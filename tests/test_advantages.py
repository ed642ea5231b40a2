"""GRPO baselines, standard deviations and advantages, checked by a direct float64 loop."""

from __future__ import annotations

import math
import statistics

import torch
from hypothesis import given
from hypothesis import strategies as st

from nemo_rl_theory import calculate_baseline_and_std_per_prompt, grpo_advantages
from nemo_rl_theory.advantages import ADVANTAGE_STD_EPS, one_pass_baseline_and_std
from support import grpo_advantages_reference


def test_hand_computed_group():
    # Group of three with rewards (1, 0, 1), leave-one-out:
    # sample 0: others (0, 1): baseline 0.5, std sqrt(0.5); A = 0.5 / (sqrt(0.5) + 1e-6)
    # sample 1: others (1, 1): baseline 1, std 0 -> not normalised; A = -1
    rewards = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    ids = torch.tensor([7, 7, 7])
    baseline, std = calculate_baseline_and_std_per_prompt(ids, rewards, None, True)
    torch.testing.assert_close(baseline, torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(std, torch.tensor([math.sqrt(0.5), 0.0, math.sqrt(0.5)], dtype=torch.float64))
    adv = grpo_advantages(rewards, ids)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    torch.testing.assert_close(adv, torch.tensor([a, -1.0, a], dtype=torch.float64))


def test_without_leave_one_out_uses_group_mean_and_bessel_std():
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64)
    ids = torch.zeros(4, dtype=torch.long)
    baseline, std = calculate_baseline_and_std_per_prompt(ids, rewards, None, False)
    torch.testing.assert_close(baseline, torch.full((4,), 3.0, dtype=torch.float64))
    torch.testing.assert_close(std, torch.full((4,), statistics.stdev([1, 2, 3, 6]), dtype=torch.float64))


def test_zero_variance_group_and_singletons_give_zero_advantage():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.5], dtype=torch.float64)
    ids = torch.tensor([0, 0, 0, 1])
    assert grpo_advantages(rewards, ids).tolist() == [0.0, 0.0, 0.0, 0.0]


def test_group_of_two_under_leave_one_out_is_not_normalised():
    # One "other" sample has no sample std; NeMo RL reports 0 and leaves A = r_i - r_j.
    adv = grpo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([3, 3]))
    assert adv.tolist() == [1.0, -1.0]


def test_prompt_token_rows_identify_groups():
    prompts = torch.tensor([[1, 2, 3], [4, 5, 6], [1, 2, 3], [4, 5, 6]])
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    by_rows = grpo_advantages(rewards, prompts, use_leave_one_out_baseline=False)
    by_ids = grpo_advantages(rewards, torch.tensor([0, 1, 0, 1]), use_leave_one_out_baseline=False)
    torch.testing.assert_close(by_rows, by_ids)


def test_invalid_samples_do_not_vote():
    rewards = torch.tensor([1.0, 0.0, 100.0, 1.0], dtype=torch.float64)
    ids = torch.zeros(4, dtype=torch.long)
    valid = torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    with_invalid = grpo_advantages(rewards, ids, valid_mask=valid)
    without = grpo_advantages(rewards[[0, 1, 3]], ids[:3])
    torch.testing.assert_close(with_invalid[[0, 1, 3]], without)


@given(
    group_sizes=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    leave_one_out=st.booleans(),
    normalize=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_direct_definition(group_sizes, leave_one_out, normalize, seed):
    gen = torch.Generator().manual_seed(seed)
    groups = [g for g, size in enumerate(group_sizes) for _ in range(size)]
    # Binary rewards, like verifiable tasks, give many all-equal groups and ties.
    rewards = torch.randint(0, 2, (len(groups),), generator=gen).double() + 0.25 * torch.randint(
        0, 2, (len(groups),), generator=gen
    )
    ours = grpo_advantages(
        rewards, torch.tensor(groups), use_leave_one_out_baseline=leave_one_out, normalize_rewards=normalize
    )
    expected = grpo_advantages_reference(rewards.tolist(), groups, leave_one_out=leave_one_out, normalize=normalize)
    torch.testing.assert_close(ours, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-9)


@given(n=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_advantages_sum_to_zero_without_leave_one_out(n, seed):
    # Mean baseline: sum_i (r_i - mean) = 0 in every group.
    rewards = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    adv = grpo_advantages(rewards, torch.zeros(n, dtype=torch.long), use_leave_one_out_baseline=False)
    assert abs(adv.sum().item()) < 1e-9


# --- exact ties: sigma is exactly 0 where the rewards it is computed over are equal -------------

DTYPES = (torch.float32, torch.float64)


def test_lone_dissenter_of_a_non_dyadic_tie_is_not_blown_up():
    # NeMo RL's one-pass variance gives sigma ~ 1e-8 for the dissenter's peers and
    # advantages of -4.9e5 (float64) / -1543 (float32, seven ties); the rule gives r - b.
    for dtype in DTYPES:
        for rewards, expected_last in (
            ([0.7, 0.7, 0.7, 0.2], -0.5),
            ([0.7] * 7 + [0.2], -0.5),
            ([0.9196, 0.9196, 0.9196, 0.459], 0.459 - 0.9196),
        ):
            r = torch.tensor(rewards, dtype=dtype)
            adv = grpo_advantages(r, torch.zeros(len(rewards), dtype=torch.long))
            assert adv[-1].item() == (r[-1] - r[1]).item()
            assert abs(adv[-1].item() - expected_last) < 1e-6
            assert adv.abs().max().item() < 10


@given(
    tie=st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False),
    dissenter=st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False),
    n_tied=st.integers(1, 12),
    dissenter_slot=st.integers(0, 12),
    leave_one_out=st.booleans(),
    float32=st.booleans(),
)
def test_sigma_is_exactly_zero_over_equal_rewards(tie, dissenter, n_tied, dissenter_slot, leave_one_out, float32):
    dtype = torch.float32 if float32 else torch.float64
    values = [tie] * n_tied
    slot = min(dissenter_slot, n_tied)
    values.insert(slot, dissenter)
    rewards = torch.tensor(values, dtype=dtype)
    ids = torch.zeros(len(values), dtype=torch.long)
    baseline, std = calculate_baseline_and_std_per_prompt(ids, rewards, None, leave_one_out)
    if leave_one_out:
        # The dissenter's peers are all equal: sigma is 0 and its baseline is their value.
        assert std[slot].item() == 0.0
        assert baseline[slot].item() == rewards[slot - 1 if slot else 1].item()
        adv = grpo_advantages(rewards, ids)
        assert adv[slot].item() == (rewards[slot] - baseline[slot]).item()
    if rewards[slot].item() == rewards[slot - 1 if slot else 1].item():  # the whole group is tied
        assert std.abs().max().item() == 0.0
        assert grpo_advantages(rewards, ids, use_leave_one_out_baseline=leave_one_out).abs().max().item() == 0.0


@given(a=st.floats(-10, 10), b=st.floats(-10, 10), float32=st.booleans())
def test_group_of_two_under_leave_one_out_has_zero_sigma(a, b, float32):
    # One "other" sample: sigma is undefined, reported as 0 (NeMo RL's nan_to_num maps the
    # inf of n / (n - 1) to 1.8e308 instead, which scales the advantage to ~0).
    dtype = torch.float32 if float32 else torch.float64
    rewards = torch.tensor([a, b], dtype=dtype)
    _, std = calculate_baseline_and_std_per_prompt(torch.zeros(2, dtype=torch.long), rewards, None, True)
    assert std.tolist() == [0.0, 0.0]
    adv = grpo_advantages(rewards, torch.zeros(2, dtype=torch.long))
    assert adv.tolist() == [(rewards[0] - rewards[1]).item(), (rewards[1] - rewards[0]).item()]


@given(seed=st.integers(0, 2**16), n=st.integers(3, 9), leave_one_out=st.booleans())
def test_near_ties_keep_their_true_spread(seed, n, leave_one_out):
    # Rewards 0.7 + k * 1e-9: the true sigma is ~1e-9; the one-pass formula's cancellation
    # error in float64 is ~1e-8, the two-pass one agrees with math.fsum to 1e-6 relative.
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.randint(0, 4, (n,), generator=gen).double()
    if offsets.unique().numel() < 2:
        offsets[0] = offsets[1] + 1
    rewards = 0.7 + offsets * 1e-9
    _, std = calculate_baseline_and_std_per_prompt(torch.zeros(n, dtype=torch.long), rewards, None, leave_one_out)
    for i in range(n):
        others = [float(offsets[j]) for j in range(n) if not (leave_one_out and j == i)]
        true = statistics.stdev(others) * 1e-9 if len(set(others)) > 1 else 0.0
        assert math.isclose(std[i].item(), true, rel_tol=1e-5, abs_tol=1e-20)


# --- NeMo RL's one-pass computation, kept for comparison -----------------------------------------


@given(
    group_sizes=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    leave_one_out=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_one_pass_agrees_with_the_library_away_from_ties(group_sizes, leave_one_out, seed):
    groups = torch.tensor([g for g, size in enumerate(group_sizes) for _ in range(size)])
    rewards = torch.rand(len(groups), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ours = calculate_baseline_and_std_per_prompt(groups, rewards, None, leave_one_out)
    nemo = one_pass_baseline_and_std(groups, rewards, None, leave_one_out)
    torch.testing.assert_close(nemo[0], ours[0], rtol=1e-12, atol=1e-15)  # the library snaps ties exactly
    defined = ours[1] > 0  # n_i = 1 is where the two conventions differ (see below)
    torch.testing.assert_close(nemo[1][defined], ours[1][defined], rtol=1e-9, atol=1e-12)


def test_one_pass_reproduces_the_failures_the_library_fixes():
    ids = torch.zeros(4, dtype=torch.long)
    rewards = torch.tensor([0.7, 0.7, 0.7, 0.2], dtype=torch.float64)
    baseline, std = one_pass_baseline_and_std(ids, rewards)
    assert 0 < std[3].item() < 1e-7  # rounding noise where the peers tie
    advantage = (rewards[3] - baseline[3]) / (std[3] + ADVANTAGE_STD_EPS)
    assert advantage.item() < -1e5  # the README's -4.9e5; the library gives -0.5
    # One other sample: 0 * inf = NaN -> 0 when r^2 - b^2 is exactly 0, but where rounding
    # leaves a residue nan_to_num(inf) gives the largest float (the library: 0 for both).
    pair = torch.tensor([0.3, 0.1], dtype=torch.float64)
    _, std_two = one_pass_baseline_and_std(torch.zeros(2, dtype=torch.long), pair)
    assert std_two.tolist() == [torch.finfo(torch.float64).max, 0.0]
    assert calculate_baseline_and_std_per_prompt(torch.zeros(2, dtype=torch.long), pair, None)[1].tolist() == [0, 0]
