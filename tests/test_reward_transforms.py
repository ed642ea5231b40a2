"""Reward transforms (scaling, DAPO overlong penalty, stop-properly penalty) and filters (dynamic
sampling, overlong filtering, log-prob-error masking): NeMo RL 7ea279a's own unit-test scenarios
(``tests/unit/algorithms/test_reward_functions.py``, ``test_grpo.py``; expectations re-derived in
comments), hand-derived values and plain-Python references."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nemo_rl_theory import (
    dapo_overlong_penalty,
    dynamic_sampling_mask,
    grpo_advantages,
    overlong_filtering_mask,
    scale_rewards,
    seq_logprob_error_mask,
    seq_mult_prob_error,
    stop_properly_penalty,
)
from nemo_rl_theory.toy.trainers import GRPOBatch
from nemo_rl_theory.training.curriculum import informative_groups

F64 = torch.float64


def t64(x):
    return torch.tensor(x, dtype=F64)


# ----------------------------------------------------------------------------- scale_rewards


def test_scale_rewards_nemo_scenarios():
    # test_reward_scaling_base: [0, 1] -> [0, 0.7]: r -> 0.7 r.
    torch.testing.assert_close(scale_rewards(t64([1.0, 0.5, 0.8]), target_max=0.7), t64([0.7, 0.35, 0.56]))
    # test_reward_scaling_dapo: {0, 1} -> {-1, 1}.
    out = scale_rewards(t64([1.0, 0.0, 0.0, 1.0, 0.0]), target_min=-1.0)
    assert out.tolist() == [1.0, -1.0, -1.0, 1.0, -1.0]
    # test_reward_scaling_clipping: clamp to [-2, 2], then map to [-1, 1]: r -> r / 2 after clamping.
    out = scale_rewards(
        t64([-2.8, -0.25, 1.5, 0.5, 2.0, 2.5]), source_min=-2.0, source_max=2.0, target_min=-1.0, target_max=1.0
    )
    torch.testing.assert_close(out, t64([-1.0, -0.125, 0.75, 0.25, 1.0, 1.0]))
    # Defaults: the identity on [0, 1], a clamp outside.
    assert scale_rewards(t64([0.25, 1.5, -1.0])).tolist() == [0.25, 1.0, 0.0]


@given(
    st.lists(st.floats(-5, 5), min_size=1, max_size=10),
    st.floats(-3, 0),
    st.floats(0.1, 3),
    st.floats(-2, 2),
    st.floats(-2, 2),
)
def test_scale_rewards_is_an_affine_map_of_the_clamped_reward(values, s0, width, t0, t1):
    s1 = s0 + width
    out = scale_rewards(t64(values), source_min=s0, source_max=s1, target_min=t0, target_max=t1)
    for r, y in zip(values, out.tolist(), strict=True):
        c = min(max(r, s0), s1)
        assert y == pytest.approx(t0 + (c - s0) * (t1 - t0) / (s1 - s0), abs=1e-12)
        assert min(t0, t1) - 1e-12 <= y <= max(t0, t1) + 1e-12


def test_scale_rewards_gradient_and_bad_inputs():
    r = t64([0.5, 2.0]).requires_grad_()
    scale_rewards(r, target_min=-1.0).sum().backward()
    assert r.grad.tolist() == [2.0, 0.0]
    with pytest.raises(ValueError, match="source_min must be < source_max"):
        scale_rewards(t64([0.5]), source_min=1.0, source_max=1.0)
    with pytest.raises(ValueError, match="rewards must be finite"):
        scale_rewards(t64([math.nan]))
    with pytest.raises(TypeError, match="rewards must be a floating-point"):
        scale_rewards(torch.tensor([1]))
    with pytest.raises(TypeError, match="target_max must be a real number"):
        scale_rewards(t64([0.5]), target_max=None)
    with pytest.raises(ValueError, match="target_min must be a finite number"):
        scale_rewards(t64([0.5]), target_min=-math.inf)


# ----------------------------------------------------------------------------- DAPO overlong penalty


def test_dapo_overlong_nemo_scenarios():
    kw = {"max_response_length": 25, "overlong_buffer_length": 5}
    # test_reward_shaping_no_penalties: lengths <= 20 = 25 - 5 are untouched.
    r = t64([1.0, 0.5, 0.8])
    assert torch.equal(dapo_overlong_penalty(r, torch.tensor([10, 15, 18]), overlong_buffer_penalty=0.5, **kw), r)
    # test_reward_shaping_with_penalties: exceed (-10, 2, 5, 10) -> penalty (0, -0.2, -0.5, -1.0).
    out = dapo_overlong_penalty(
        t64([1.0, 0.8, 0.6, 0.4]), torch.tensor([10, 22, 25, 30]), overlong_buffer_penalty=0.5, **kw
    )
    torch.testing.assert_close(out, t64([1.0, 0.6, 0.1, -0.6]))
    # test_reward_shaping_preserves_unshaped_reward_overlong: rewards 0 give the bare penalties.
    out = dapo_overlong_penalty(torch.zeros(4), torch.tensor([10, 22, 25, 30]), overlong_buffer_penalty=0.5, **kw)
    torch.testing.assert_close(out, torch.tensor([0.0, -0.2, -0.5, -1.0]))


def test_dapo_overlong_is_not_capped_at_minus_p():
    # Length 30 > max 25 is penalised 2p, not p (DAPO's paper caps at -p; NeMo RL's code does not).
    out = dapo_overlong_penalty(
        t64([0.0]), torch.tensor([30]), max_response_length=25, overlong_buffer_length=5, overlong_buffer_penalty=0.5
    )
    assert out.tolist() == [-1.0]


@given(
    st.lists(st.tuples(st.floats(-1, 1), st.integers(0, 60)), min_size=1, max_size=8),
    st.integers(1, 40),
    st.integers(1, 40),
    st.floats(0, 2),
)
def test_dapo_overlong_matches_loop(rows, l_max, l_buf, p):
    if l_buf > l_max:
        l_buf, l_max = l_max, l_buf
    rewards = [r for r, _ in rows]
    lengths = [n for _, n in rows]
    out = dapo_overlong_penalty(
        t64(rewards),
        torch.tensor(lengths),
        max_response_length=l_max,
        overlong_buffer_length=l_buf,
        overlong_buffer_penalty=p,
    )
    for r, n, y in zip(rewards, lengths, out.tolist(), strict=True):
        exceed = n - (l_max - l_buf)
        assert y == pytest.approx(r + min(-exceed / l_buf * p, 0.0), abs=1e-12)


def test_dapo_overlong_bad_inputs():
    r, n = t64([1.0, 0.0]), torch.tensor([3, 4])
    kw = {"max_response_length": 25, "overlong_buffer_length": 5, "overlong_buffer_penalty": 1.0}
    with pytest.raises(ValueError, match="overlong_buffer_length must be >= 1"):
        dapo_overlong_penalty(r, n, **{**kw, "overlong_buffer_length": 0})
    with pytest.raises(ValueError, match="overlong_buffer_length must be <= max_response_length"):
        dapo_overlong_penalty(r, n, **{**kw, "overlong_buffer_length": 30})
    with pytest.raises(TypeError, match="max_response_length must be an int"):
        dapo_overlong_penalty(r, n, **{**kw, "max_response_length": 25.0})
    with pytest.raises(ValueError, match="overlong_buffer_penalty must be a finite number in"):
        dapo_overlong_penalty(r, n, **{**kw, "overlong_buffer_penalty": -0.1})
    with pytest.raises(ValueError, match="lengths must have the shape of rewards"):
        dapo_overlong_penalty(r, torch.tensor([3]), **kw)
    with pytest.raises(ValueError, match="lengths must be non-negative"):
        dapo_overlong_penalty(r, torch.tensor([3, -1]), **kw)
    with pytest.raises(TypeError, match="lengths must be an integer or float"):
        dapo_overlong_penalty(r, torch.tensor([True, False]), **kw)
    with pytest.raises(ValueError, match="lengths must be finite"):
        dapo_overlong_penalty(r, t64([3.0, math.inf]), **kw)
    with pytest.raises(ValueError, match=r"rewards must have shape \[B\]"):
        dapo_overlong_penalty(t64([[1.0, 0.0]]), n, **kw)
    # Float lengths are fine.
    assert dapo_overlong_penalty(r, t64([21.0, 0.0]), **kw).tolist() == [0.8, 0.0]


# ----------------------------------------------------------------------------- stop properly


def test_stop_properly_nemo_scenarios():
    # test_stop_properly_penalty: truncated rewards scaled by 0.5.
    out = stop_properly_penalty(t64([1.0, 0.8, 0.6, 0.4]), torch.tensor([False, True, False, True]), 0.5)
    torch.testing.assert_close(out, t64([1.0, 0.4, 0.6, 0.2]))
    # test_stop_properly_penalty_boundary_coefs: 0 zeroes, 1 leaves.
    assert stop_properly_penalty(t64([1.0, 0.5]), torch.tensor([True, True]), 0.0).tolist() == [0.0, 0.0]
    assert stop_properly_penalty(t64([1.0, 0.5]), torch.tensor([True, True]), 1.0).tolist() == [1.0, 0.5]
    # test_stop_properly_penalty_error_cases: coef outside [0, 1].
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"coef must be a finite number in \[0, 1\]"):
            stop_properly_penalty(t64([1.0]), torch.tensor([True]), bad)


def test_stop_properly_raises_negative_rewards():
    # After scale_rewards to [-1, 1] (NeMo RL scales first), a truncated wrong answer moves up to 0.
    scaled = scale_rewards(t64([0.0, 0.0]), target_min=-1.0)
    out = stop_properly_penalty(scaled, torch.tensor([False, True]), 0.0)
    assert out.tolist() == [-1.0, 0.0]


def test_stop_properly_bad_inputs():
    with pytest.raises(ValueError, match=r"truncated must have shape \[2\]"):
        stop_properly_penalty(t64([1.0, 0.0]), torch.tensor([True]), 0.5)
    with pytest.raises(TypeError, match="truncated must be a bool"):
        stop_properly_penalty(t64([1.0, 0.0]), t64([1.0, 0.0]), 0.5)
    with pytest.raises(ValueError, match="truncated must hold only 0/1"):
        stop_properly_penalty(t64([1.0, 0.0]), torch.tensor([2, 0]), 0.5)
    assert stop_properly_penalty(t64([1.0, 1.0]), torch.tensor([1, 0]), 0.5).tolist() == [0.5, 1.0]


# ----------------------------------------------------------------------------- dynamic sampling


def test_dynamic_sampling_nemo_scenarios():
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    # test_dapo_dynamic_sampling_filters_nonzero_std: both groups vary -> all kept (NeMo RL passes
    # std without leave-one-out there).
    keep = dynamic_sampling_mask(t64([1.0, 0.0, 1.0, 0.5, 0.5, 0.0]), ids, use_leave_one_out_baseline=False)
    assert keep.all()
    # test_dapo_dynamic_sampling_filters_zero_std: (1, 1, 1) dropped, (0.5, 0.5, 0) kept.
    keep = dynamic_sampling_mask(t64([1.0, 1.0, 1.0, 0.5, 0.5, 0.0]), ids, use_leave_one_out_baseline=False)
    assert keep.tolist() == [False] * 3 + [True] * 3
    # test_dapo_dynamic_sampling_filters_on_raw_metric_after_overlong_shaping: the shaped rewards of
    # group 0 vary with length, the raw ones do not: the raw std decides.
    raw = t64([0.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    shaped = dapo_overlong_penalty(
        raw,
        torch.tensor([10, 22, 30, 10, 20, 10]),
        max_response_length=25,
        overlong_buffer_length=5,
        overlong_buffer_penalty=0.5,
    )
    assert dynamic_sampling_mask(shaped, ids, use_leave_one_out_baseline=False).all()
    keep = dynamic_sampling_mask(shaped, ids, use_leave_one_out_baseline=False, std_rewards=raw)
    assert keep.tolist() == [False] * 3 + [True] * 3


def test_dynamic_sampling_leave_one_out_drops_the_lone_dissenter():
    r = t64([1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3])
    keep = dynamic_sampling_mask(r, ids)
    assert keep.tolist() == [False, True, True, True] + [False, True, True, True] + [True] * 4 + [False, False]
    # NeMo RL recomputes the advantages on the kept rows: the lone correct answer's group-mates
    # now tie, so the group that had all the signal contributes nothing.
    before = grpo_advantages(r, ids)
    after = grpo_advantages(r[keep], ids[keep])
    assert before[0] > 0 and (before[1:4] < 0).all()
    assert after[:3].tolist() == [0.0, 0.0, 0.0]


def grpo_batch(rewards, ids):
    n = len(rewards)
    return GRPOBatch(
        problems=None,
        rollout=None,
        prompt_ids=ids,
        rewards=rewards,
        correct=torch.zeros(n),
        advantages=torch.zeros(n),
        reference_logprobs=None,
    )


@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([0.0, 1.0, 0.7])), min_size=1, max_size=12))
def test_dynamic_sampling_rules_against_reference(rows):
    groups = torch.tensor([g for g, _ in rows])
    rewards = t64([r for _, r in rows])
    # Without leave-one-out: curriculum's group rule (rows of groups whose rewards are not all equal).
    keep = dynamic_sampling_mask(rewards, groups, use_leave_one_out_baseline=False)
    informative = informative_groups(grpo_batch(rewards, groups))
    assert keep.tolist() == informative[groups].tolist()
    # Leave-one-out: keep row i iff at least two others and they are not all equal.
    keep = dynamic_sampling_mask(rewards, groups)
    for i, (g, _) in enumerate(rows):
        others = [r for j, (h, r) in enumerate(rows) if h == g and j != i]
        assert bool(keep[i]) == (len(others) >= 2 and len(set(others)) > 1)


def test_dynamic_sampling_max_samples_and_bad_inputs():
    r = t64([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    ids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    keep = dynamic_sampling_mask(r, ids, use_leave_one_out_baseline=False, max_samples=3)
    assert keep.tolist() == [True, True, True, False, False, False, False, False]  # cuts group 1, as NeMo RL's slice
    with pytest.raises(ValueError, match="max_samples must be >= 1"):
        dynamic_sampling_mask(r, ids, max_samples=0)
    with pytest.raises(TypeError, match="max_samples must be an int"):
        dynamic_sampling_mask(r, ids, max_samples=True)
    with pytest.raises(TypeError, match="use_leave_one_out_baseline must be a bool"):
        dynamic_sampling_mask(r, ids, use_leave_one_out_baseline=None)
    with pytest.raises(ValueError, match="std_rewards must have the shape"):
        dynamic_sampling_mask(r, ids, std_rewards=t64([1.0]))
    with pytest.raises(ValueError, match="same length N"):
        dynamic_sampling_mask(r, ids[:3])


# ----------------------------------------------------------------------------- overlong filtering


def test_overlong_filtering_mask():
    assert overlong_filtering_mask(torch.tensor([True, False, True])).tolist() == [0.0, 1.0, 0.0]
    out = overlong_filtering_mask(torch.tensor([0, 1, 0]), t64([1.0, 1.0, 0.0]))
    assert out.tolist() == [1.0, 0.0, 0.0] and out.dtype == F64
    with pytest.raises(ValueError, match=r"truncated must have shape \[B\]"):
        overlong_filtering_mask(torch.tensor([[True]]))
    with pytest.raises(TypeError, match="truncated must be a bool"):
        overlong_filtering_mask(t64([1.0]))
    with pytest.raises(ValueError, match="truncated must hold only 0/1"):
        overlong_filtering_mask(torch.tensor([3]))
    with pytest.raises(ValueError, match=r"sample_mask must have shape \[B\]"):
        overlong_filtering_mask(torch.tensor([True]), torch.ones(2))
    with pytest.raises(ValueError, match="sample_mask must be non-negative"):
        overlong_filtering_mask(torch.tensor([True]), -torch.ones(1))


# ----------------------------------------------------------------------------- log-prob error


def test_seq_mult_prob_error_nemo_scenarios():
    # test_masking_with_threshold (NeMo RL's [:, 1:] frame: 9 tokens, 4 of them with error e):
    # E = (4 e^e + 5) / 9 = 1.0467, 1.0467, 1.2883, 1.7637; threshold 1.2 masks the last two.
    gen = torch.zeros(4, 9)
    gen[:2, :4] = 0.1
    gen[2, :4] = 0.5
    gen[3, :4] = 1.0
    lp = torch.zeros(4, 9)
    err = seq_mult_prob_error(lp, gen, torch.ones(4, 9))
    expected = torch.tensor([(4 * math.exp(e) + 5) / 9 for e in (0.1, 0.1, 0.5, 1.0)])
    torch.testing.assert_close(err, expected)
    mask = seq_logprob_error_mask(lp, gen, torch.ones(4, 9), seq_logprob_error_threshold=1.2)
    assert mask.tolist() == [1.0, 1.0, 0.0, 0.0]
    # test_respects_existing_sample_mask: all errors large, row 1 already masked -> all 0.
    gen = torch.zeros(4, 7)
    gen[:, :3] = 1.0
    out = seq_logprob_error_mask(
        torch.zeros(4, 7),
        gen,
        torch.ones(4, 7),
        seq_logprob_error_threshold=1.0,
        sample_mask=torch.tensor([1.0, 0, 1, 1]),
    )
    assert out.tolist() == [0.0] * 4


def test_seq_mult_prob_error_token_mask_and_empty_sequences():
    # test_token_mask_is_respected ([:, 1:] frame): error 1 at positions 0..4; seq 0 masks 2..4:
    # seq 0: (2e + 2)/4 = 1.859 (kept at 2.0), seq 1: (5e + 2)/7 = 2.227 (masked).
    gen = torch.zeros(2, 7)
    gen[:, :5] = 1.0
    tm = torch.ones(2, 7)
    tm[0, 2:5] = 0.0
    err = seq_mult_prob_error(torch.zeros(2, 7), gen, tm)
    torch.testing.assert_close(err, torch.tensor([(2 * math.e + 2) / 4, (5 * math.e + 2) / 7]))
    assert seq_logprob_error_mask(torch.zeros(2, 7), gen, tm, seq_logprob_error_threshold=2.0).tolist() == [1.0, 0.0]
    # test_fully_token_masked_sequences_are_excluded_from_metrics: errors log 2, log 4 on one token,
    # the third row has no counted token: E = (2, 4, 0); threshold 3 masks row 1, keeps row 2.
    gen = torch.zeros(3, 2)
    gen[0, 0], gen[1, 0], gen[2, 0] = math.log(2.0), math.log(4.0), math.log(16.0)
    tm = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(seq_mult_prob_error(torch.zeros(3, 2), gen, tm), torch.tensor([2.0, 4.0, 0.0]))
    out = seq_logprob_error_mask(torch.zeros(3, 2), gen, tm, seq_logprob_error_threshold=3.0)
    assert out.tolist() == [1.0, 0.0, 1.0]
    # test_empty_batch_returns_zero_metrics.
    assert seq_mult_prob_error(torch.zeros(0, 8), torch.zeros(0, 8), torch.zeros(0, 8)).shape == (0,)
    # test_threshold_boundary_values: exp(0.4) = 1.49 kept, exp(0.41) = 1.51 masked at 1.5; the boundary is kept.
    gen = t64([[0.4], [0.41], [math.log(1.5)]])
    out = seq_logprob_error_mask(torch.zeros(3, 1, dtype=F64), gen, torch.ones(3, 1), seq_logprob_error_threshold=1.5)
    assert out.tolist() == [1.0, 0.0, 1.0]


@given(
    st.lists(
        st.tuples(st.lists(st.floats(-3, 3), min_size=8, max_size=8), st.lists(st.booleans(), min_size=4, max_size=4)),
        min_size=1,
        max_size=5,
    )
)
def test_seq_mult_prob_error_matches_loop(rows):
    lp = t64([v[:4] for v, _ in rows])
    gen = t64([v[4:] for v, _ in rows])
    mask = t64([[1.0 if b else 0.0 for b in m] for _, m in rows])
    err = seq_mult_prob_error(lp, gen, mask)
    for i, (v, m) in enumerate(rows):
        ratios = [max(math.exp(v[4 + t] - v[t]), math.exp(v[t] - v[4 + t])) for t in range(4) if m[t]]
        expected = sum(ratios) / len(ratios) if ratios else 0.0
        assert float(err[i]) == pytest.approx(expected, rel=1e-12)
        assert not ratios or expected >= 1.0


def test_seq_mult_prob_error_padding_and_bad_inputs():
    lp = t64([[-1.0, -math.inf]]).requires_grad_()
    gen = t64([[-1.0, math.nan]])
    err = seq_mult_prob_error(lp, gen, t64([[1.0, 0.0]]))
    assert err.tolist() == [1.0] and not err.requires_grad
    with pytest.raises(ValueError, match="generation_logprobs has 1 NaN"):
        seq_mult_prob_error(t64([[-1.0, -2.0]]), gen, t64([[1.0, 1.0]]))
    with pytest.raises(ValueError, match="logprobs has 1 NaN"):
        seq_mult_prob_error(lp, t64([[-1.0, -2.0]]), t64([[1.0, 1.0]]))
    with pytest.raises(ValueError, match="same shape"):
        seq_mult_prob_error(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="same shape"):
        seq_mult_prob_error(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"logprobs must have shape \[B, T\]"):
        seq_mult_prob_error(torch.zeros(3), torch.zeros(3), torch.ones(3))
    with pytest.raises(TypeError, match="generation_logprobs must be a floating-point"):
        seq_mult_prob_error(torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2))
    with pytest.raises(TypeError, match="seq_logprob_error_threshold must be a real number"):
        seq_logprob_error_mask(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), seq_logprob_error_threshold=None)
    with pytest.raises(ValueError, match=r"sample_mask must have shape \[B\]"):
        seq_logprob_error_mask(
            torch.zeros(1, 2),
            torch.zeros(1, 2),
            torch.ones(1, 2),
            seq_logprob_error_threshold=1.5,
            sample_mask=torch.ones(2),
        )
