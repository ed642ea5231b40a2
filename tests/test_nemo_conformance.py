"""Conformance tests: pin our numbers to NVIDIA NeMo RL's published test expectations.

Every scenario below comes from NeMo RL's own unit tests (repository ``NVIDIA-NeMo/RL``):

* ``tests/unit/algorithms/test_loss_functions.py`` -- masked_mean, calculate_kl, ClippedPGLossFn
  (PPO / REINFORCE / force-on-policy / CISPO / dual clip / GSPO / IS corrections / KL), DPO, NLL;
* ``tests/unit/algorithms/test_clipped_pg_loss_goldens.py`` with
  ``tests/unit/algorithms/data/clipped_pg_loss_goldens.json`` -- float64 golden losses,
  gradients and metrics of ClippedPGLossFn at a pinned NeMo commit;
* ``tests/unit/algorithms/test_utils.py`` -- calculate_baseline_and_std_per_prompt;
* ``tests/unit/algorithms/test_grpo.py`` and ``test_grpo_sample_mask.py`` -- GRPOAdvantageEstimator.

Where NeMo asserts a number we assert the same number. The test code is our own: the
expectations are re-derived in comments or recomputed here from the defining formula.

Input convention. NeMo's loss functions receive ``data[...]`` tensors of length ``S`` and
slice ``[:, 1:]`` (token mask, advantages, prev/generation/reference log-probs) so that
position ``t`` describes the token predicted from position ``t``; the current log-probs
already come in that frame (``S - 1`` columns). Our API takes everything already aligned,
so NeMo's ``x[:, 1:]`` (its "``*_masked``" tensors in the tests) is what we pass.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nemo_rl_theory import (
    ClippedPGConfig,
    DPOConfig,
    calculate_baseline_and_std_per_prompt,
    calculate_kl,
    clipped_pg_loss,
    dpo_loss,
    entropy_from_logits,
    grpo_advantages,
    masked_mean,
    nll_loss,
    token_logprobs,
)

EPS = 1e-8  # NeMo's masked_mean adds this to every denominator.
F64 = torch.float64


def t32(x):
    return torch.tensor(x, dtype=torch.float32)


def t64(x):
    return torch.tensor(x, dtype=F64)


def pg(logprobs, prev_logprobs, advantages, mask=None, **kwargs):
    """clipped_pg_loss with config fields passed as keyword arguments.

    NeMo's tests almost always set ``reference_policy_kl_penalty=0.0``; the default here is the
    same so a test only spells out what it changes.
    """
    call_keys = {
        "generation_logprobs",
        "reference_logprobs",
        "sample_mask",
        "global_valid_seqs",
        "global_valid_toks",
    }
    call = {k: kwargs.pop(k) for k in list(kwargs) if k in call_keys}
    kwargs.setdefault("reference_policy_kl_penalty", 0.0)
    if mask is None:
        mask = torch.ones_like(logprobs)
    return clipped_pg_loss(logprobs, prev_logprobs, advantages, mask, config=ClippedPGConfig(**kwargs), **call)


# The recurring NeMo scenario (after its [:, 1:] slice): one sequence, three valid tokens.
ADV = [[1.0, -1.0, 2.0]]
PREV = [[-1.0, -1.0, -1.0]]
CURR = [[-1.69315, -1.0, -0.59453]]  # log(0.5)-1, log(1)-1, log(1.5)-1 -> ratios 0.5, 1, 1.5
GEN = [[-0.5, -1.5, -0.8]]
REF = [[-1.0, -1.0, -1.0]]


# =====================================================================================
# masked_mean  (test_loss_functions.py::test_masked_mean_all_zeros + NeMo's definition)
# =====================================================================================


def test_masked_mean_all_zero_mask_is_zero():
    values = t32([1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(masked_mean(values, torch.zeros(4)), t32(0.0))


def test_masked_mean_single_selected_value():
    values = t32([1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(masked_mean(values, t32([1.0, 0.0, 0.0, 0.0])), t32(1.0))


def test_masked_mean_dim_with_all_zero_rows():
    values = t32([[1.0, 2.0], [3.0, 4.0]])
    result = masked_mean(values, torch.zeros(2, 2), dim=1)
    torch.testing.assert_close(result, t32([0.0, 0.0]))


def test_masked_mean_denominator_has_plus_1e8():
    # In float64 the +1e-8 is visible: 3 / 2 = 1.5 but NeMo gives 3 / (2 + 1e-8).
    values = t64([1.0, 2.0, 3.0, 4.0])
    result = masked_mean(values, t64([1.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(result, t64(3.0 / (2.0 + EPS)), rtol=0, atol=1e-15)
    assert abs(result.item() - 1.5) > 1e-9


def test_masked_mean_global_normalization_factor_replaces_count():
    values = t64([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = t64([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # sum of selected = 1 + 2 + 4 = 7, divided by the global factor (10) + 1e-8.
    result = masked_mean(values, mask, global_normalization_factor=10.0)
    torch.testing.assert_close(result, t64(7.0 / (10.0 + EPS)), rtol=0, atol=1e-15)
    result = masked_mean(values, mask, global_normalization_factor=torch.tensor(10.0, dtype=F64))
    torch.testing.assert_close(result, t64(7.0 / (10.0 + EPS)), rtol=0, atol=1e-15)


def test_masked_mean_per_dim_uses_per_row_counts():
    values = t64([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = t64([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    expected = t64([3.0 / (2.0 + EPS), 15.0 / (3.0 + EPS)])
    torch.testing.assert_close(masked_mean(values, mask, dim=-1), expected, rtol=0, atol=1e-14)


def test_masked_mean_ignores_inf_and_nan_in_masked_positions():
    # Padding may carry -inf/NaN (e.g. filtered log-probs); select, don't multiply.
    values = torch.tensor([1.0, float("-inf"), float("nan")], requires_grad=True)
    result = masked_mean(values, t32([1.0, 0.0, 0.0]))
    torch.testing.assert_close(result.detach(), t32(1.0))
    result.backward()
    assert torch.isfinite(values.grad).all()
    torch.testing.assert_close(values.grad, t32([1.0, 0.0, 0.0]))


# =====================================================================================
# calculate_kl  (test_loss_functions.py::test_calculate_kl and the IS-weight tests)
# =====================================================================================

KL_LOGPROBS = [[-1.0, -1.0, -1.0]]
KL_REFERENCE = [[-0.0, -15.0, -30.0]]  # log r = ref - logprobs = [1, -14, -29]


@pytest.mark.parametrize(
    ("kl_type", "expected"),
    [
        ("k1", [[-1.0, 14.0, 29.0]]),  # -log r
        ("k2", [[0.5, 98.0, 420.5]]),  # (log r)^2 / 2
        ("k3", [[0.7183, 13.0, 28.0]]),  # e^{log r} - 1 - log r
    ],
)
def test_calculate_kl_unclamped(kl_type, expected):
    kl = calculate_kl(
        t32(KL_LOGPROBS),
        t32(KL_REFERENCE),
        kl_type=kl_type,
        input_clamp_value=None,
        output_clamp_value=None,
    )
    torch.testing.assert_close(kl, t32(expected), rtol=1e-3, atol=0)


@pytest.mark.parametrize(
    ("kl_type", "expected"),
    [
        # log r clamped to [-20, 20] -> [1, -14, -20]; then the estimate to [-10, 10].
        ("k1", [[-1.0, 10.0, 10.0]]),
        ("k2", [[0.5, 10.0, 10.0]]),
        ("k3", [[0.7183, 10.0, 10.0]]),
    ],
)
def test_calculate_kl_clamped(kl_type, expected):
    kl = calculate_kl(
        t32(KL_LOGPROBS),
        t32(KL_REFERENCE),
        kl_type=kl_type,
        input_clamp_value=20.0,
        output_clamp_value=10.0,
    )
    torch.testing.assert_close(kl, t32(expected), rtol=1e-3, atol=0)


def test_calculate_kl_defaults_are_k3_with_clamps_20_and_10():
    kl = calculate_kl(t32(KL_LOGPROBS), t32(KL_REFERENCE))
    torch.testing.assert_close(kl, t32([[0.7183, 10.0, 10.0]]), rtol=1e-3, atol=0)


def test_calculate_kl_input_clamp_detaches_importance_weight():
    # log r = [3, 1]; with input clamp 2 the first token is clamped to 2:
    # k3 = [e^2 - 3, e - 2] = [4.389056, 0.7182818]. The weight exp(lp - sg(lp)) == 1 carries
    # the score-function gradient only where the clamp is inactive:
    # d/dlp [w * k3] = k3 + dk3/dlp = (e^{lr} - 1 - lr) + (1 - e^{lr}) = -lr = -1 for token 2,
    # and 0 for the clamped token (both the estimate and the weight are constant there).
    logprobs = torch.tensor([[-3.0, -1.0]], requires_grad=True)
    weights = torch.exp(logprobs - logprobs.detach())
    kl = calculate_kl(
        logprobs,
        torch.zeros(1, 2),
        kl_type="k3",
        input_clamp_value=2.0,
        output_clamp_value=None,
        importance_weights=weights,
    )
    torch.testing.assert_close(kl.detach(), t32([[4.389056, 0.7182818]]))
    kl.sum().backward()
    torch.testing.assert_close(logprobs.grad, t32([[0.0, -1.0]]), atol=1e-6, rtol=1e-6)


def test_calculate_kl_output_clamp_applies_after_weighting():
    # w = 100, k3(log r = 1) = 0.718 -> 71.8, clamped to 1; the clamp blocks all gradient.
    logprobs = torch.tensor([[-1.0]], requires_grad=True)
    weights = 100.0 * torch.exp(logprobs - logprobs.detach())
    kl = calculate_kl(
        logprobs,
        torch.zeros(1, 1),
        kl_type="k3",
        input_clamp_value=None,
        output_clamp_value=1.0,
        importance_weights=weights,
    )
    torch.testing.assert_close(kl.detach(), t32([[1.0]]))
    kl.sum().backward()
    torch.testing.assert_close(logprobs.grad, torch.zeros(1, 1), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kl_type", ["k1", "k2", "k3"])
def test_calculate_kl_weighted_gradient_matches_formula(kl_type):
    # No clamp active: d/dlp [w * k(lr)] with w = exp(lp - g) is w * (k(lr) + dk/dlp).
    lp = t64([[-1.2, -0.7, -2.0]]).requires_grad_(True)
    ref = t64([[-0.9, -1.1, -1.0]])
    gen = t64([[-1.5, -0.4, -2.2]])
    kl = calculate_kl(lp, ref, kl_type=kl_type, importance_weights=torch.exp(lp - gen))
    kl.sum().backward()
    lr = (ref - lp).detach()
    k = {"k1": -lr, "k2": lr.square() / 2, "k3": lr.exp() - 1 - lr}[kl_type]
    dk = {"k1": torch.ones_like(lr), "k2": -lr, "k3": 1 - lr.exp()}[kl_type]
    w = torch.exp(lp.detach() - gen)
    torch.testing.assert_close(kl.detach(), w * k)
    torch.testing.assert_close(lp.grad, w * (k + dk))


# =====================================================================================
# calculate_baseline_and_std_per_prompt  (test_utils.py)
# =====================================================================================

TWO_PROMPTS_OF_THREE = torch.tensor([[1, 2, 3]] * 3 + [[4, 5, 6]] * 3)


def test_baseline_basic_leave_one_out():
    # Leave-one-out over [1, 2, 3]: baselines mean(2,3), mean(1,3), mean(1,2) = 2.5, 2, 1.5;
    # std = sample std of the two others: |a - b| / sqrt(2) -> 0.7071, 1.4142, 0.7071.
    rewards = t32([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    baseline, std = calculate_baseline_and_std_per_prompt(TWO_PROMPTS_OF_THREE, rewards, torch.ones(6), True)
    torch.testing.assert_close(baseline, t32([2.5, 2.0, 1.5, 5.5, 5.0, 4.5]), rtol=1e-5, atol=0)
    torch.testing.assert_close(
        std, t32([0.707107, 1.414214, 0.707107, 0.707107, 1.414214, 0.707107]), rtol=1e-5, atol=0
    )


def test_baseline_default_is_leave_one_out():
    rewards = t32([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    baseline, _ = calculate_baseline_and_std_per_prompt(TWO_PROMPTS_OF_THREE, rewards, torch.ones(6))
    torch.testing.assert_close(baseline, t32([2.5, 2.0, 1.5, 5.5, 5.0, 4.5]), rtol=1e-5, atol=0)


def test_baseline_without_leave_one_out_is_group_mean_and_sample_std():
    rewards = t64([1.0, 2.0, 4.0, 10.0, 20.0, 60.0])
    baseline, std = calculate_baseline_and_std_per_prompt(
        TWO_PROMPTS_OF_THREE, rewards, torch.ones(6, dtype=F64), False
    )
    groups = rewards.view(2, 3)
    expected_mean = groups.mean(dim=1).repeat_interleave(3)
    expected_std = groups.std(dim=1, correction=1).repeat_interleave(3)
    torch.testing.assert_close(baseline, expected_mean)
    torch.testing.assert_close(std, expected_std)


def test_baseline_singleton_groups_use_own_reward_and_zero_std():
    # A group with <= 1 valid response: baseline = reward (zero advantage), std = 0.
    rewards = t32([2.5, 4.0])
    prompts = torch.tensor([[1, 2, 3], [4, 5, 6]])
    for loo in (True, False):
        baseline, std = calculate_baseline_and_std_per_prompt(prompts, rewards, torch.ones(2), loo)
        torch.testing.assert_close(baseline, t32([2.5, 4.0]))
        torch.testing.assert_close(std, t32([0.0, 0.0]))


def test_baseline_identical_rewards_have_zero_std():
    rewards = t32([3.0, 3.0, 3.0, 7.0, 7.0, 7.0])
    baseline, std = calculate_baseline_and_std_per_prompt(TWO_PROMPTS_OF_THREE, rewards, torch.ones(6), True)
    torch.testing.assert_close(baseline, rewards, rtol=1e-5, atol=0)
    torch.testing.assert_close(std, torch.zeros(6), rtol=1e-5, atol=1e-6)


def test_baseline_mixed_group_sizes_group_of_two_under_leave_one_out():
    # Prompt 0 has 2 responses: leave-one-out baseline is the other reward, and the std of a
    # single remaining sample is undefined (0 * inf) -> reported as 0, as NeMo's nan_to_num(0).
    rewards = t32([1.0, 2.0, 4.0, 5.0, 6.0])
    prompts = torch.tensor([[1, 2, 3]] * 2 + [[4, 5, 6]] * 3)
    baseline, std = calculate_baseline_and_std_per_prompt(prompts, rewards, torch.ones(5), True)
    torch.testing.assert_close(baseline, t32([2.0, 1.0, 5.5, 5.0, 4.5]), rtol=1e-5, atol=0)
    torch.testing.assert_close(std, t32([0.0, 0.0, 0.707107, 1.414214, 0.707107]), rtol=1e-5, atol=1e-6)


def test_baseline_valid_mask_excludes_samples():
    # Sample 1 (reward 999) is invalid. Prompt 0 under leave-one-out then has n = 2 - 1 = 1:
    # baseline_i = sum of the OTHER valid rewards = [0 + 3, 1 + 3, 1 + 0] = [3, 4, 1];
    # the std needs n / (n - 1) = inf and is therefore 0.
    rewards = t32([1.0, 999.0, 3.0, 4.0, 5.0, 6.0])
    valid = t32([1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    baseline, std = calculate_baseline_and_std_per_prompt(TWO_PROMPTS_OF_THREE, rewards, valid, True)
    torch.testing.assert_close(baseline, t32([3.0, 4.0, 1.0, 5.5, 5.0, 4.5]), rtol=1e-5, atol=0)
    torch.testing.assert_close(std, t32([0.0, 0.0, 0.0, 0.707107, 1.414214, 0.707107]), rtol=1e-5, atol=1e-6)


def test_baseline_group_with_one_valid_response_is_ignored():
    # Only one valid response in prompt 0 -> every member's baseline is its own reward.
    rewards = t32([1.0, 7.0, 3.0, 4.0, 6.0])
    prompts = torch.tensor([0, 0, 0, 1, 1])
    valid = t32([0.0, 1.0, 0.0, 1.0, 1.0])
    baseline, std = calculate_baseline_and_std_per_prompt(prompts, rewards, valid, False)
    torch.testing.assert_close(baseline, t32([1.0, 7.0, 3.0, 5.0, 5.0]))
    torch.testing.assert_close(std, t32([0.0, 0.0, 0.0, math.sqrt(2.0), math.sqrt(2.0)]))


def test_baseline_numerical_precision_extremes():
    rewards = t32([1e-8, 2e-8, 3e-8, 1e8, 2e8, 3e8])
    baseline, std = calculate_baseline_and_std_per_prompt(TWO_PROMPTS_OF_THREE, rewards, torch.ones(6), True)
    torch.testing.assert_close(baseline, t32([2.5e-8, 2e-8, 1.5e-8, 2.5e8, 2e8, 1.5e8]), rtol=1e-5, atol=0)
    assert torch.isfinite(std).all()


def test_baseline_empty_batch():
    rewards = torch.tensor([])
    baseline, std = calculate_baseline_and_std_per_prompt(
        torch.empty(0, 3, dtype=torch.long), rewards, torch.tensor([]), True
    )
    assert baseline.shape == (0,) and std.shape == (0,)


def test_baseline_accepts_1d_prompt_ids_like_token_rows():
    rewards = t32([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    b1, s1 = calculate_baseline_and_std_per_prompt(ids, rewards, torch.ones(6), True)
    b2, s2 = calculate_baseline_and_std_per_prompt(TWO_PROMPTS_OF_THREE, rewards, torch.ones(6), True)
    torch.testing.assert_close(b1, b2)
    torch.testing.assert_close(s1, s2)


# =====================================================================================
# grpo_advantages  (test_grpo.py GRPOAdvantageEstimator tests, test_grpo_sample_mask.py)
# =====================================================================================


def test_grpo_zero_std_group_is_not_normalized():
    # Prompt 0: rewards equal -> std 0 -> advantage stays 0. Prompt 1: [1, 3], mean 2,
    # sample std sqrt(2) -> (+-1) / (sqrt(2) + 1e-6) = +-0.7071.
    adv = grpo_advantages(
        t32([2.0, 2.0, 1.0, 3.0]),
        torch.tensor([[0], [0], [1], [1]]),
        use_leave_one_out_baseline=False,
        normalize_rewards=True,
    )
    s = 1.0 / math.sqrt(2.0)
    torch.testing.assert_close(adv[:2], torch.zeros(2), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(adv[2:], t32([-s, s]), rtol=1e-4, atol=0)


def test_grpo_divides_by_std_plus_1e6():
    rewards = t64([1.0, 3.0])
    adv = grpo_advantages(rewards, torch.tensor([0, 0]), use_leave_one_out_baseline=False, normalize_rewards=True)
    torch.testing.assert_close(adv, t64([-1.0, 1.0]) / (math.sqrt(2.0) + 1e-6), rtol=0, atol=1e-14)


def test_grpo_large_group_has_zero_mean():
    adv = grpo_advantages(
        torch.arange(10, dtype=torch.float32),
        torch.zeros(10, 1, dtype=torch.long),
        use_leave_one_out_baseline=False,
        normalize_rewards=True,
    )
    assert adv.shape == (10,)
    assert abs(adv.mean().item()) < 1e-5


def test_grpo_negative_advantages_are_symmetric():
    adv = grpo_advantages(
        t32([0.0, 2.0, 4.0]),
        torch.zeros(3, 1, dtype=torch.long),
        use_leave_one_out_baseline=False,
        normalize_rewards=True,
    )
    assert adv[0] < 0 < adv[2]
    assert abs(adv[1].item()) < 1e-5
    torch.testing.assert_close(adv[0], -adv[2], rtol=1e-5, atol=0)


def test_grpo_all_identical_rewards_give_zero():
    adv = grpo_advantages(t32([5.0] * 4), torch.zeros(4, 1, dtype=torch.long), use_leave_one_out_baseline=False)
    torch.testing.assert_close(adv, torch.zeros(4))


def test_grpo_small_nonzero_std_is_still_normalized():
    adv = grpo_advantages(t32([1.0, 1.01]), torch.zeros(2, 1, dtype=torch.long), use_leave_one_out_baseline=False)
    s = 1.0 / math.sqrt(2.0)
    torch.testing.assert_close(adv.abs(), t32([s, s]), rtol=1e-3, atol=0)
    assert adv[0] * adv[1] < 0


@pytest.mark.parametrize(
    ("leave_one_out", "normalize", "expected"),
    [
        # Valid rewards are [1, 0, 0] (sample 1 is masked out).
        (False, False, [0.6666667, -0.3333333, -0.3333333]),  # r - 1/3
        (False, True, [1.1546985, -0.5773493, -0.5773493]),  # / (sqrt(1/3) + 1e-6)
        (True, False, [1.0, -0.5, -0.5]),  # baselines 0, 0.5, 0.5
        (True, True, [1.0, -0.7071058, -0.7071058]),  # std 0 for sample 0, 0.7071 otherwise
    ],
)
def test_grpo_valid_mask_excludes_samples_from_group_statistics(leave_one_out, normalize, expected):
    rewards = t32([1.0, 1.0, 0.0, 0.0])
    sample_mask = t32([1.0, 0.0, 1.0, 1.0])
    adv = grpo_advantages(
        rewards,
        torch.tensor([[7], [7], [7], [7]]),
        use_leave_one_out_baseline=leave_one_out,
        normalize_rewards=normalize,
        valid_mask=sample_mask,
    )
    torch.testing.assert_close(adv[sample_mask.bool()], t32(expected), atol=1e-6, rtol=0)


def test_grpo_defaults_are_leave_one_out_and_normalized():
    rewards = t64([1.0, 2.0, 4.0, 0.0])
    ids = torch.tensor([0, 0, 0, 0])
    baseline, std = calculate_baseline_and_std_per_prompt(ids, rewards, torch.ones(4, dtype=F64), True)
    expected = (rewards - baseline) / (std + 1e-6)
    torch.testing.assert_close(grpo_advantages(rewards, ids), expected)


def test_grpo_group_of_two_under_leave_one_out_is_reward_difference():
    # Baseline = the other reward; std undefined -> 0 -> no normalization.
    adv = grpo_advantages(t64([1.0, 3.0]), torch.tensor([0, 0]), use_leave_one_out_baseline=True)
    torch.testing.assert_close(adv, t64([-2.0, 2.0]))


# =====================================================================================
# clipped_pg_loss: hand-computed NeMo scenarios  (test_loss_functions.py)
# =====================================================================================


def test_ppo_clipping():
    # ratios [0.5, 1, 1.5] -> clamped [0.8, 1, 1.2]; per token max(-A r, -A clip(r)):
    # max([-0.5, 1, -3], [-0.8, 1, -2.4]) = [-0.5, 1, -2.4]; mean = -1.9 / 3 = -0.6333.
    loss, metrics = pg(t32(CURR), t32(PREV), t32(ADV))
    torch.testing.assert_close(loss, t32(-1.9 / 3), rtol=1e-3, atol=1e-5)
    assert metrics["loss"] == pytest.approx(-0.6333, rel=1e-3)


def test_ppo_clipping_asymmetric_bounds():
    # DAPO-style clip-higher: clip to [1 - 0.1, 1 + 0.4] = [0.9, 1.4]:
    # token 1: max(-0.5, -0.9) = -0.5; token 2: 1; token 3: max(-3.0, -2.8) = -2.8.
    loss, metrics = pg(t32(CURR), t32(PREV), t32(ADV), ratio_clip_min=0.1, ratio_clip_max=0.4)
    torch.testing.assert_close(loss, t32((-0.5 + 1.0 - 2.8) / 3), rtol=1e-3, atol=1e-5)
    assert metrics["probs_ratio_clamped_min"] == pytest.approx(0.9, rel=1e-5)
    assert metrics["probs_ratio_clamped_max"] == pytest.approx(1.4, rel=1e-5)


def test_reinforce_mode_uses_logprobs_as_ratio():
    # disable_ppo_ratio: the "ratio" is log pi itself, so loss = mean(-A * logprob):
    # [0.5, -1.0, 3.0] -> 2.5 / 3 = 0.8333; clipping is ignored.
    curr = t32([[-0.5, -1.0, -1.5]])
    loss, metrics = pg(
        curr, torch.zeros(1, 3), t32(ADV), disable_ppo_ratio=True, ratio_clip_min=0.0, ratio_clip_max=0.0
    )
    torch.testing.assert_close(loss, t32(2.5 / 3), rtol=1e-3, atol=1e-5)
    # NeMo's probs_ratio metrics then report log-probs (see the golden "reinforce" case).
    assert metrics["probs_ratio_min"] == pytest.approx(-1.5)
    assert metrics["probs_ratio_max"] == pytest.approx(-0.5)


def test_force_on_policy_ratio_is_one_with_gradient():
    # Ratio forced to exp(lp - sg(lp)) == 1: loss = mean(-A) = (-1 + 1 - 2) / 3 = -0.6667.
    curr = t32(CURR).requires_grad_(True)
    loss, metrics = pg(curr, t32(PREV), t32(ADV), force_on_policy_ratio=True)
    torch.testing.assert_close(loss.detach(), t32(-2.0 / 3), rtol=1e-3, atol=1e-3)
    for key in ("probs_ratio", "probs_ratio_clamped"):
        assert metrics[key] == pytest.approx(1.0, rel=1e-7)
    for key in ("probs_ratio_min", "probs_ratio_max", "probs_ratio_clamped_min", "probs_ratio_clamped_max"):
        assert metrics[key] == 1.0
    loss.backward()
    # d/dlp mean(-A * exp(lp - sg(lp))) = -A / 3
    torch.testing.assert_close(curr.grad, -t32(ADV) / 3, rtol=1e-6, atol=1e-7)


def test_force_on_policy_ratio_ignores_prev_logprobs():
    curr = t32([[-1.0, -1.0, -1.0]])
    loss_1, metrics_1 = pg(curr, curr.clone(), t32(ADV), force_on_policy_ratio=True)
    loss_2, metrics_2 = pg(curr, torch.full((1, 3), -10.0), t32(ADV), force_on_policy_ratio=True)
    loss_3, metrics_3 = pg(curr, None, t32(ADV), force_on_policy_ratio=True)
    torch.testing.assert_close(loss_1, loss_2)
    torch.testing.assert_close(loss_1, loss_3)
    assert metrics_1["probs_ratio"] == metrics_2["probs_ratio"] == metrics_3["probs_ratio"]
    assert metrics_1["probs_ratio"] == pytest.approx(1.0, rel=1e-7)


def test_cispo_loss():
    # CISPO: -A * sg(clip(r)) * log pi = -[1, -1, 2] * [0.8, 1, 1.2] * CURR
    curr = t32(CURR)
    ratios_clamped = t32([[0.8, 1.0, 1.2]])
    expected = (-t32(ADV) * ratios_clamped * curr).mean()
    loss, _ = pg(curr, t32(PREV), t32(ADV), use_cispo=True)
    torch.testing.assert_close(loss, expected, rtol=1e-3, atol=1e-3)


def test_cispo_gradient_flows_only_through_logprob():
    curr = t64(CURR).requires_grad_(True)
    loss, _ = pg(curr, t64(PREV), t64(ADV), use_cispo=True)
    loss.backward()
    ratios_clamped = torch.exp(t64(CURR) - t64(PREV)).clamp(0.8, 1.2)
    expected = -t64(ADV) * ratios_clamped / (3.0 + EPS)
    torch.testing.assert_close(curr.grad, expected)


def test_cispo_with_importance_sampling_correction():
    # The token IS weight exp(prev - gen) multiplies the CISPO term.
    curr = t32(CURR)
    cispo = -t32(ADV) * t32([[0.8, 1.0, 1.2]]) * curr
    weights = torch.exp(t32(PREV) - t32(GEN))
    loss, _ = pg(
        curr,
        t32(PREV),
        t32(ADV),
        use_cispo=True,
        use_importance_sampling_correction=True,
        generation_logprobs=t32(GEN),
    )
    torch.testing.assert_close(loss, (weights * cispo).mean(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    "incompatible",
    [
        {"disable_ppo_ratio": True},
        {"force_on_policy_ratio": True},
        {"ratio_clip_c": 3.0},
        {"sequence_level_importance_ratios": True, "token_level_loss": False},
        {"token_level_loss": False},
    ],
)
def test_cispo_rejects_incompatible_options(incompatible):
    with pytest.raises(ValueError):
        ClippedPGConfig(reference_policy_kl_penalty=0.0, use_cispo=True, **incompatible)


def test_dual_clip():
    # prev [-1, -1, -3], curr -> ratios [0.5, 1, 10]; A = [1, -1, -4], c = 3.
    # PPO max: [-0.5, 1, 40]; -A c = [-3, 3, 12]; for A < 0 take min -> [-0.5, 1, 12].
    # mean = 12.5 / 3 = 4.1667
    loss, _ = pg(
        t32([[-1.69315, -1.0, -0.69741]]),
        t32([[-1.0, -1.0, -3.0]]),
        t32([[1.0, -1.0, -4.0]]),
        ratio_clip_c=3.0,
    )
    torch.testing.assert_close(loss, t32(12.5 / 3), rtol=1e-3, atol=1e-4)


def test_dual_clip_requires_c_above_one():
    with pytest.raises(ValueError):
        ClippedPGConfig(reference_policy_kl_penalty=0.0, ratio_clip_c=1.0)


def test_kl_penalty_k3():
    # A = 0, so loss = beta * mean(k3) with log r = ref - curr = [-1, 0, 1]:
    # k3 = [e^-1 + 1 - 1, 0, e - 2] = [0.368, 0, 0.718]; mean 0.362; * 0.1 = 0.0362.
    loss, metrics = pg(
        t32([[0.0, -1.0, -2.0]]),
        torch.zeros(1, 3),
        torch.zeros(1, 3),
        reference_policy_kl_penalty=0.1,
        reference_logprobs=t32(REF),
    )
    lr = t64([[-1.0, 0.0, 1.0]])
    k3_mean = (lr.exp() - 1 - lr).sum().item() / (3 + EPS)
    torch.testing.assert_close(loss, t32(0.1 * k3_mean))
    assert loss.item() == pytest.approx(0.0362, rel=1e-3)
    # NeMo reports kl_penalty without beta.
    assert metrics["kl_penalty"] == pytest.approx(k3_mean, rel=1e-6)


@pytest.mark.parametrize("use_on_policy_kl_approximation", [False, True])
def test_kl_gradient_includes_sampling_score_term(use_on_policy_kl_approximation):
    # NeMo: the KL term is w * k3 with w = exp(lp - sg(lp)) (value 1) or, with the on-policy
    # approximation, w = exp(lp - gen). Its gradient is w * (k3 + dk3/dlp), i.e.
    # beta * w * ((e^lr - 1 - lr) + (1 - e^lr)) / N.
    curr = t32([[-1.2, -0.7]])
    prev = t32([[-1.0, -0.8]])
    gen = t32([[-1.5, -0.4]])
    ref = t32([[-0.9, -1.1]])
    adv = t32([[0.4, -0.2]])
    beta = 0.3

    def grad(kl_penalty):
        lp = curr.clone().requires_grad_(True)
        loss, _ = pg(
            lp,
            prev,
            adv,
            reference_policy_kl_penalty=kl_penalty,
            use_on_policy_kl_approximation=use_on_policy_kl_approximation,
            generation_logprobs=gen,
            reference_logprobs=ref,
        )
        loss.backward()
        return lp.grad

    lr = ref - curr
    kl = torch.exp(lr) - 1 - lr
    dkl = 1 - torch.exp(lr)
    w = torch.exp(curr - gen) if use_on_policy_kl_approximation else torch.ones_like(curr)
    torch.testing.assert_close(grad(beta) - grad(0.0), beta * w * (kl + dkl) / curr.numel())


def test_on_policy_kl_approximation_with_importance_sampling():
    # Actor: exp(prev - gen) = [0.6065, 1.6487, 0.8187] times the PPO term [-0.5, 1, -2.4]
    #   -> [-0.30325, 1.6487, -1.96488], mean -0.2065.
    # KL (beta 0.1 in NeMo's hand calculation; the config it runs has beta 0, so the KL term
    # contributes nothing there -- we run beta 0.1 to exercise the weighting):
    #   w = exp(curr - gen) = [0.3033, 1.6487, 1.2281], k3 = [0.3069, 0, 0.0721]
    #   -> mean(w k3) = 0.060543, * 0.1 = 0.0060543; total -0.2004457.
    kwargs = dict(
        use_on_policy_kl_approximation=True,
        use_importance_sampling_correction=True,
        generation_logprobs=t32(GEN),
        reference_logprobs=t32(REF),
    )
    loss_no_kl, _ = pg(t32(CURR), t32(PREV), t32(ADV), reference_policy_kl_penalty=0.0, **kwargs)
    torch.testing.assert_close(loss_no_kl, t32(-0.2065), atol=1e-4, rtol=1e-3)
    loss, metrics = pg(t32(CURR), t32(PREV), t32(ADV), reference_policy_kl_penalty=0.1, **kwargs)
    torch.testing.assert_close(loss, t32(-0.2004457), atol=1e-4, rtol=1e-3)
    assert metrics["kl_penalty"] == pytest.approx(0.060543, rel=1e-3)


@pytest.mark.parametrize(
    ("sequence_level", "expected"),
    [
        # token: weights min(exp(prev - gen), 0.8) = [0.6065, 0.8, 0.8] times [-0.5, 1, -2.4]
        #   -> [-0.3033, 0.8, -1.92], mean -0.4744
        (False, -0.4744),
        # sequence (GSPO): ratio exp(mean log r) = 0.9086 for all tokens (inside the clip),
        # weight min(exp(sum(prev - gen)), 0.8) = min(0.8187, 0.8) = 0.8
        #   -> 0.8 * [-0.9086, 0.9086, -1.8171] = [-0.7268, 0.7268, -1.4537], mean -0.4846
        (True, -0.4846),
    ],
)
def test_truncated_importance_sampling_tis(sequence_level, expected):
    loss, metrics = pg(
        t32(CURR),
        t32(PREV),
        t32(ADV),
        use_importance_sampling_correction=True,
        truncated_importance_sampling_type="tis",
        truncated_importance_sampling_ratio=0.8,
        sequence_level_importance_ratios=sequence_level,
        token_level_loss=not sequence_level,
        generation_logprobs=t32(GEN),
        reference_logprobs=t32(REF),
    )
    torch.testing.assert_close(loss, t32(expected), atol=1e-4, rtol=1e-3)
    assert "is_oob_ratio" in metrics


def test_icepop_zeroes_out_of_band_tokens():
    # On-policy (curr = prev) so clip_loss = -A. IS weights exp(prev - gen) =
    # exp([-0.5, 2.5, -0.2]) = [0.6065, 12.18, 0.8187]; 12.18 is outside [0.5, 5] -> 0.
    prev = t32([[-1.0, -1.0, -1.0]])
    gen = t32([[-0.5, -3.5, -0.8]])
    loss, metrics = pg(
        prev.clone(),
        prev,
        t32(ADV),
        use_importance_sampling_correction=True,
        truncated_importance_sampling_type="icepop",
        truncated_importance_sampling_ratio=5.0,
        truncated_importance_sampling_ratio_min=0.5,
        generation_logprobs=gen,
    )
    w = torch.exp(prev - gen)
    w = torch.where((w >= 0.5) & (w <= 5.0), w, torch.zeros_like(w))
    torch.testing.assert_close(loss, (w * -t32(ADV)).mean(), atol=1e-4, rtol=1e-3)
    assert metrics["is_oob_ratio"] == pytest.approx(1.0 / 3.0, rel=1e-6)


def test_tis_reports_is_oob_ratio():
    # IS weights exp(prev - gen) = [1, 3, 0.5], upper bound 2, lower bound defaults to 0:
    # only the weight 3 is out of bounds -> 1/3.
    _, metrics = pg(
        torch.zeros(1, 3),
        torch.log(t32([[1.0, 3.0, 0.5]])),
        torch.ones(1, 3),
        use_importance_sampling_correction=True,
        truncated_importance_sampling_type="tis",
        truncated_importance_sampling_ratio=2.0,
        generation_logprobs=torch.zeros(1, 3),
    )
    assert metrics["is_oob_ratio"] == pytest.approx(1.0 / 3.0, rel=1e-6)


@pytest.mark.parametrize(
    ("tis_min", "expected_weights", "expected_oob"),
    [
        (None, [0.1, 1.0, 2.0], 1.0 / 3.0),  # lower bound defaults to 0: only 3 is clipped
        (0.5, [0.5, 1.0, 2.0], 2.0 / 3.0),  # 0.1 and 3 are clipped
    ],
)
def test_tis_min_bound(tis_min, expected_weights, expected_oob):
    # NeMo: tis_min = truncated_importance_sampling_ratio_min or 0.0;
    #   is_oob = (w > max) | (w < tis_min); w = clamp(w, min=tis_min, max=max).
    # force_on_policy: prev = sg(curr), so the IS weights are exp(curr - gen) = [0.1, 1, 3].
    loss, metrics = pg(
        torch.log(t32([[0.1, 1.0, 3.0]])),
        None,
        torch.ones(1, 3),
        use_importance_sampling_correction=True,
        force_on_policy_ratio=True,
        truncated_importance_sampling_type="tis",
        truncated_importance_sampling_ratio=2.0,
        truncated_importance_sampling_ratio_min=tis_min,
        generation_logprobs=torch.zeros(1, 3),
    )
    torch.testing.assert_close(loss, -t32(expected_weights).mean())
    assert metrics["is_oob_ratio"] == pytest.approx(expected_oob, rel=1e-6)


@pytest.mark.parametrize("tis_type", ["tis", "icepop", "seq-mask-tis"])
def test_tis_rejects_min_above_max(tis_type):
    with pytest.raises(ValueError):
        ClippedPGConfig(
            use_importance_sampling_correction=True,
            truncated_importance_sampling_type=tis_type,
            truncated_importance_sampling_ratio=1.0,
            truncated_importance_sampling_ratio_min=2.0,
        )


SEQ_MASK_TIS = dict(
    use_importance_sampling_correction=True,
    truncated_importance_sampling_type="seq-mask-tis",
    truncated_importance_sampling_ratio=1.002,
    truncated_importance_sampling_ratio_min=0.999,
)


def test_seq_mask_tis_keeps_sequence_inside_band():
    # geo-mean IS ratio exp(mean(0.0005)) = 1.0005 is inside [0.999, 1.002] -> kept, with
    # the raw (untruncated) token weights exp(0.0005).
    prev = t32([[-1.0, -1.0, -1.0]])
    gen = torch.full((1, 3), -1.0005)
    loss, metrics = pg(prev.clone(), prev, t32(ADV), generation_logprobs=gen, **SEQ_MASK_TIS)
    torch.testing.assert_close(loss, (torch.exp(prev - gen) * -t32(ADV)).mean(), atol=1e-4, rtol=1e-3)
    assert metrics["is_oob_ratio"] == pytest.approx(0.0, abs=1e-7)


def test_seq_mask_tis_drops_sequence_outside_band():
    # Same inputs, band [0.9, 1.0]: 1.0005 is above -> the whole sequence gets weight 0.
    prev = t32([[-1.0, -1.0, -1.0]])
    cfg = {**SEQ_MASK_TIS, "truncated_importance_sampling_ratio": 1.0, "truncated_importance_sampling_ratio_min": 0.9}
    loss, metrics = pg(prev.clone(), prev, t32(ADV), generation_logprobs=torch.full((1, 3), -1.0005), **cfg)
    torch.testing.assert_close(loss, t32(0.0))
    assert metrics["is_oob_ratio"] == pytest.approx(1.0, rel=1e-7)


def test_neg_inf_generation_logprob_at_a_counted_token_is_rejected():
    # Deliberate divergence. NeMo RL, given gen = [-1.0005, -inf, -1.0005] with seq-mask-tis,
    # maps exp(prev - gen) = inf to weight 0 and the log ratio to 0 (nan_to_num) and returns
    # the finite loss -3 e^0.0005 / 3 = -1.0005001. A sampled token cannot have probability 0
    # under the engine that sampled it, so we treat such a batch as corrupt and name the input.
    prev = t64([[-1.0, -1.0, -1.0]])
    gen = t64([[-1.0005, float("-inf"), -1.0005]])
    with pytest.raises(ValueError, match="generation_logprobs"):
        pg(prev.clone(), prev, t64(ADV), generation_logprobs=gen, **SEQ_MASK_TIS)


def test_approx_entropy_metric():
    # approx_entropy = -mean(exp(curr - gen) * curr)
    curr = t32([[-0.5, -1.0, -1.5]])
    gen = t32([[-0.6, -1.1, -1.6]])
    _, metrics = pg(curr, t32([[-0.4, -0.9, -1.4]]), torch.zeros(1, 3), generation_logprobs=gen)
    expected = -(torch.exp(curr - gen) * curr).mean()
    assert metrics["approx_entropy"] == pytest.approx(expected.item(), rel=1e-3, abs=1e-5)


def test_gspo_sequence_level_ratio():
    # Sequence ratio exp(mean(log r)) = exp((-0.69315 + 0 + 0.40547) / 3) = 0.9086 (inside
    # the clip) -> -A * 0.9086 = [-0.9086, 0.9086, -1.8171], mean -0.6057.
    loss, _ = pg(
        t32(CURR),
        t32(PREV),
        t32(ADV),
        sequence_level_importance_ratios=True,
        token_level_loss=False,
    )
    torch.testing.assert_close(loss, t32(-0.6057), rtol=1e-3, atol=1e-4)


def test_gspo_batch_of_two():
    # Row 2: prev -2 -> sequence ratio exp(mean([0.30685, 1, 1.40547])) = 2.4697, clipped to
    # 1.2: max(-A * 2.4697, -A * 1.2) = [-1.2, 2.4697, -2.4]. Mean of both rows = -0.4912.
    curr = t32(CURR * 2)
    prev = t32([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
    loss, metrics = pg(curr, prev, t32(ADV * 2), sequence_level_importance_ratios=True, token_level_loss=False)
    torch.testing.assert_close(loss, t32(-0.4912), rtol=1e-3, atol=1e-4)
    assert metrics["probs_ratio_max"] == pytest.approx(2.4697, rel=1e-3)
    assert metrics["probs_ratio_clamped_max"] == pytest.approx(1.2, rel=1e-6)


def test_gspo_with_importance_sampling_correction():
    # Sequence IS weight exp(sum(prev - gen)) = exp(-0.5 + 0.5 - 0.2) = 0.8187 times
    # [-0.9086, 0.9086, -1.8171] -> [-0.7439, 0.7439, -1.4877], mean -0.4959.
    loss, _ = pg(
        t32(CURR),
        t32(PREV),
        t32(ADV),
        use_importance_sampling_correction=True,
        sequence_level_importance_ratios=True,
        token_level_loss=False,
        generation_logprobs=t32(GEN),
        reference_logprobs=t32(REF),
    )
    torch.testing.assert_close(loss, t32(-0.4959), atol=1e-4, rtol=1e-3)


def test_sequence_level_ratios_require_sequence_level_loss():
    with pytest.raises(ValueError):
        ClippedPGConfig(sequence_level_importance_ratios=True, token_level_loss=True)


def test_masking_token_and_sample_mask():
    gen = torch.Generator().manual_seed(0)
    curr = torch.randn(2, 3, generator=gen) * 0.3 - 1.0
    prev = torch.randn(2, 3, generator=gen) * 0.1 - 1.0
    ref = torch.randn(2, 3, generator=gen) * 0.1 - 1.0
    adv = torch.randn(2, 3, generator=gen) + 1.0
    kw = dict(reference_policy_kl_penalty=0.1, reference_logprobs=ref)
    mask = torch.ones(2, 3)
    loss_default, _ = pg(curr, prev, adv, mask, **kw)

    # Masking one more token of sample 0 changes the loss.
    mask_tok = mask.clone()
    mask_tok[0, 0] = 0
    loss_tok, _ = pg(curr, prev, adv, mask_tok, **kw)
    assert not torch.isclose(loss_default, loss_tok, atol=1e-4)

    # sample_mask [1, 0] equals running sample 0 alone.
    loss_sample, _ = pg(curr, prev, adv, mask, sample_mask=t32([1.0, 0.0]), **kw)
    loss_b0, _ = pg(curr[:1], prev[:1], adv[:1], mask[:1], **{**kw, "reference_logprobs": ref[:1]})
    torch.testing.assert_close(loss_sample, loss_b0)


def test_zero_mask_gives_zero_loss():
    gen = torch.Generator().manual_seed(1)
    curr = torch.randn(1, 3, generator=gen) - 1.0
    loss, _ = pg(
        curr,
        torch.zeros(1, 3),
        torch.zeros(1, 3),
        torch.zeros(1, 3),
        reference_policy_kl_penalty=0.1,
        reference_logprobs=torch.zeros(1, 3),
    )
    torch.testing.assert_close(loss, t32(0.0))


# =====================================================================================
# clipped_pg_loss: float64 goldens  (test_clipped_pg_loss_goldens.py + goldens JSON)
# =====================================================================================
# NeMo's base inputs are [B=2, S=5]; the loss slices [:, 1:]. Listed here already sliced.
# global_valid_toks = 5 (3 + 2 valid tokens), global_valid_seqs = 2.

GOLDEN_MASK = [[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]]
GOLDEN_ADV = [[1.2, -0.7, 0.4, 2.0], [-1.1, 0.6, 1.5, -0.3]]
GOLDEN_PREV = [[-1.0, -1.1, -0.8, -1.3], [-0.9, -1.0, -1.2, -0.8]]
GOLDEN_GEN = [[-1.2, -1.5, -0.7, -1.1], [-1.4, -0.7, -1.3, -1.0]]
GOLDEN_REF = [[-1.1, -0.7, -1.4, -1.0], [-1.3, -0.8, -1.0, -1.4]]
GOLDEN_CURR = [[-1.6, -0.8, -1.1, -1.4], [-0.7, -1.4, -0.9, -1.2]]

# Metrics shared by every golden case whose prev/gen inputs are the base ones.
_MISMATCH = {
    "token_mult_prob_error": 1.3633956877038524,
    "gen_kl_error": 0.0615208729208074,
    "policy_kl_error": 0.05012223679533659,
    "js_divergence_error": 0.013649421513505665,
}
_COMMON = {"kl_penalty": 0.0, "num_valid_samples": 2.0, "approx_entropy": 1.1051425199516978}
_PPO_RATIOS = {
    "probs_ratio": 0.9062422918970267,
    "probs_ratio_clamped": 0.95999999808,  # 4.8 / (5 + 1e-8): the +1e-8 is visible here
    "probs_ratio_min": 0.5488116360940264,
    "probs_ratio_max": 1.3498588075760032,
    "probs_ratio_clamped_min": 0.8,
    "probs_ratio_clamped_max": 1.2,
}
_BASE_METRICS = {**_PPO_RATIOS, **_MISMATCH, **_COMMON, "sampling_importance_ratio": 1.2015208706408074}
_PPO_GRAD = [
    [-0.13171479239913675, 0.18898023268267997, -0.05926545753600652, 0.0],
    [0.26870860625782017, -0.08043840536339991, 0.0, 0.0],
]
_ON_POLICY_GRAD = [
    [-0.23999999952, 0.13999999972, -0.07999999984, 0.0],
    [0.21999999956000002, -0.11999999976, 0.0, 0.0],
]
_TIS_GRAD = [
    [-0.1608768107267998, 0.24567430248748398, -0.05362560357559994, 0.0],
    [0.3493211881351662, -0.059590236335788666, 0.0, 0.0],
]

GOLDEN_CASES = {
    "ppo_token": dict(
        config={},
        loss=0.18627018364195694,
        grad=_PPO_GRAD,
        metrics=_BASE_METRICS,
    ),
    "force_on_policy": dict(
        config={"force_on_policy_ratio": True},
        loss=-0.07999999984,
        grad=_ON_POLICY_GRAD,
        metrics={
            "probs_ratio": 0.9999999980000001,
            "probs_ratio_clamped": 0.9999999980000001,
            "probs_ratio_min": 1.0,
            "probs_ratio_max": 1.0,
            "probs_ratio_clamped_min": 1.0,
            "probs_ratio_clamped_max": 1.0,
            # prev := sg(curr), so the mismatch metrics compare curr with gen.
            "token_mult_prob_error": 1.8049814999288314,
            "gen_kl_error": 0.19294616177483598,
            "policy_kl_error": 0.1781145417109382,
            "js_divergence_error": 0.04397054964336933,
            "sampling_importance_ratio": 1.1729461598148359,
            **_COMMON,
        },
    ),
    "reinforce": dict(
        config={"disable_ppo_ratio": True},
        loss=0.373999999252,
        grad=_ON_POLICY_GRAD,
        metrics={
            **_BASE_METRICS,
            "probs_ratio": -1.1199999977600001,
            "probs_ratio_clamped": -1.1199999977600001,
            "probs_ratio_min": -1.6,
            "probs_ratio_max": -0.7,
            "probs_ratio_clamped_min": -1.6,
            "probs_ratio_clamped_max": -0.7,
        },
    ),
    "dual_clip": dict(
        config={"ratio_clip_c": 3.0},
        prev=[[-1.0, -3.0, -0.8, -1.3], [-0.9, -1.0, -1.2, -0.8]],
        loss=0.417289950119277,
        grad=[
            [-0.13171479239913675, 0.0, -0.05926545753600652, 0.0],
            [0.26870860625782017, -0.08043840536339991, 0.0, 0.0],
        ],
        metrics={
            **_PPO_RATIOS,
            "probs_ratio": 2.4412732271985886,
            "probs_ratio_max": 9.025013499434122,
            "token_mult_prob_error": 1.9613685610472653,
            "gen_kl_error": 0.18778196516971712,
            "policy_kl_error": 0.43239604089127404,
            "js_divergence_error": 0.061329026534706434,
            "sampling_importance_ratio": 0.947781963649717,
            **_COMMON,
        },
    ),
    "cispo_with_token_is": dict(
        config={"use_cispo": True, "use_importance_sampling_correction": True},
        loss=0.03329652014119518,
        grad=[
            [-0.23450932909773395, 0.2506265487024803, -0.057909594638482234, 0.0],
            [0.435262414594309, -0.07111854904320782, 0.0, 0.0],
        ],
        metrics=_BASE_METRICS,
    ),
    "tis_token": dict(
        config={
            "use_importance_sampling_correction": True,
            "truncated_importance_sampling_type": "tis",
            "truncated_importance_sampling_ratio": 1.3,
            "truncated_importance_sampling_ratio_min": 0.7,
        },
        loss=0.3209028399844618,
        grad=_TIS_GRAD,
        metrics={**_BASE_METRICS, "sampling_importance_ratio": 1.093411677188746, "is_oob_ratio": 0.3999999992},
    ),
    "icepop_token": dict(
        config={
            "use_importance_sampling_correction": True,
            "truncated_importance_sampling_type": "icepop",
            "truncated_importance_sampling_ratio": 1.25,
            "truncated_importance_sampling_ratio_min": 0.75,
        },
        loss=-0.21450241430239975,
        grad=[[-0.1608768107267998, 0.0, -0.05362560357559994, 0.0], [0.0, 0.0, 0.0, 0.0]],
        metrics={**_BASE_METRICS, "sampling_importance_ratio": 0.4252480343887298, "is_oob_ratio": 0.5999999988},
    ),
    "seq_mask_tis": dict(
        config={
            "use_importance_sampling_correction": True,
            "truncated_importance_sampling_type": "seq-mask-tis",
            "truncated_importance_sampling_ratio": 1.15,
            "truncated_importance_sampling_ratio_min": 0.95,
        },
        loss=0.383435358421665,
        grad=[[0.0, 0.0, 0.0, 0.0], [0.4430255947574536, -0.059590236335788666, 0.0, 0.0]],
        # is_oob_ratio is per sequence: 1 of 2 -> 1 / (2 + 1e-8)
        metrics={**_BASE_METRICS, "sampling_importance_ratio": 0.4779078973205534, "is_oob_ratio": 0.4999999975},
    ),
    "gspo_sequence_is": dict(
        config={
            "use_importance_sampling_correction": True,
            "sequence_level_importance_ratios": True,
            "token_level_loss": False,
        },
        loss=-0.06433245613699731,
        grad=[
            [-0.06749293963637779, -0.06749293963637779, -0.06749293963637779, 0.0],
            [0.06907318137816686, 0.06907318137816686, 0.0, 0.0],
        ],
        metrics={
            "probs_ratio": 0.8531734178632858,
            "probs_ratio_clamped": 0.8531734178632858,
            "probs_ratio_min": 0.8187307536238023,  # exp(mean([-0.6, 0.3, -0.3])) = exp(-0.2)
            "probs_ratio_max": 0.9048374184883784,  # exp(mean([0.2, -0.4])) = exp(-0.1)
            "probs_ratio_clamped_min": 0.8187307536238023,
            "probs_ratio_clamped_max": 0.9048374184883784,
            **_MISMATCH,
            **_COMMON,
            "sampling_importance_ratio": 1.4350620072548388,
        },
    ),
}
# Not ported: "kl_on_policy_unfiltered" (needs NeMo's separate curr_logprobs_unfiltered
# input) and the two "vapo_*" cases (positive_example_nll_weight is not in our config).


def _run_golden(case):
    lp = t64(GOLDEN_CURR).requires_grad_(True)
    loss, metrics = clipped_pg_loss(
        lp,
        t64(case.get("prev", GOLDEN_PREV)),
        t64(GOLDEN_ADV),
        t64(GOLDEN_MASK),
        config=ClippedPGConfig(reference_policy_kl_penalty=0.0, **case["config"]),
        generation_logprobs=t64(GOLDEN_GEN),
        reference_logprobs=t64(GOLDEN_REF),
        sample_mask=t64([1.0, 1.0]),
        global_valid_seqs=t64(2.0),
        global_valid_toks=t64(5.0),
    )
    (grad,) = torch.autograd.grad(loss, lp)
    return loss.detach(), grad, metrics


@pytest.mark.parametrize("name", list(GOLDEN_CASES))
def test_golden_loss_and_gradient(name):
    case = GOLDEN_CASES[name]
    loss, grad, _ = _run_golden(case)
    torch.testing.assert_close(loss, t64(case["loss"]), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, t64(case["grad"]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(GOLDEN_CASES))
def test_golden_metrics(name):
    case = GOLDEN_CASES[name]
    _loss, _, metrics = _run_golden(case)
    expected = {"loss": case["loss"], **case["metrics"]}
    missing = set(expected) - set(metrics)
    assert not missing, f"metrics lack NeMo keys {sorted(missing)}"
    assert ("is_oob_ratio" in metrics) == ("truncated_importance_sampling_type" in case["config"])
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_golden_metrics_default_generation_logprobs_to_prev():
    # Without generation_logprobs the mismatch metrics compare prev with itself.
    loss, metrics = clipped_pg_loss(
        t64(GOLDEN_CURR),
        t64(GOLDEN_PREV),
        t64(GOLDEN_ADV),
        t64(GOLDEN_MASK),
        config=ClippedPGConfig(reference_policy_kl_penalty=0.0),
    )
    loss_gen, _ = clipped_pg_loss(
        t64(GOLDEN_CURR),
        t64(GOLDEN_PREV),
        t64(GOLDEN_ADV),
        t64(GOLDEN_MASK),
        config=ClippedPGConfig(reference_policy_kl_penalty=0.0),
        generation_logprobs=t64(GOLDEN_PREV),
    )
    torch.testing.assert_close(loss, t64(0.18627018364195694), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss, loss_gen)
    n = 5.0 / (5.0 + EPS)  # masked mean of ones over the 5 valid tokens
    assert metrics["token_mult_prob_error"] == pytest.approx(n, rel=1e-12)
    assert metrics["sampling_importance_ratio"] == pytest.approx(n, rel=1e-12)
    assert metrics["gen_kl_error"] == pytest.approx(0.0, abs=1e-15)
    assert metrics["policy_kl_error"] == pytest.approx(0.0, abs=1e-15)
    assert metrics["js_divergence_error"] == pytest.approx(0.0, abs=1e-15)
    curr, prev, mask = t64(GOLDEN_CURR), t64(GOLDEN_PREV), t64(GOLDEN_MASK)
    entropy = -((torch.exp(curr - prev) * curr) * mask).sum() / (5.0 + EPS)
    assert metrics["approx_entropy"] == pytest.approx(entropy.item(), rel=1e-12)


# =====================================================================================
# clipped_pg_loss: reductions with global normalisation (NeMo's masked_mean call sites)
# =====================================================================================


def _reduction_inputs():
    g = torch.Generator().manual_seed(3)
    curr = torch.randn(3, 5, generator=g, dtype=F64) * 0.3 - 1.0
    prev = curr.detach() + torch.randn(3, 5, generator=g, dtype=F64) * 0.2
    ref = curr.detach() + torch.randn(3, 5, generator=g, dtype=F64) * 0.3
    adv = torch.randn(3, 5, generator=g, dtype=F64)
    mask = t64([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    sample_mask = t64([1.0, 1.0, 0.0])
    return curr, prev, ref, adv, mask, sample_mask


def _per_token_ppo_and_kl(curr, prev, ref, adv, beta):
    ratio = torch.exp(curr - prev)
    ppo = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2))
    lr = (ref - curr).clamp(-20.0, 20.0)
    kl = (torch.exp(lr) - 1 - lr).clamp(-10.0, 10.0)
    return ppo, beta * kl


def test_token_level_reduction_uses_global_valid_toks():
    curr, prev, ref, adv, mask, sample_mask = _reduction_inputs()
    beta, toks = 0.05, 17.0  # this micro-batch has 7 valid tokens; the global batch 17
    loss, _ = pg(
        curr,
        prev,
        adv,
        mask,
        reference_policy_kl_penalty=beta,
        reference_logprobs=ref,
        sample_mask=sample_mask,
        global_valid_toks=t64(toks),
        global_valid_seqs=t64(4.0),
    )
    ppo, kl = _per_token_ppo_and_kl(curr, prev, ref, adv, beta)
    m = mask * sample_mask[:, None]
    expected = (ppo * m).sum() / (toks + EPS) + (kl * m).sum() / (toks + EPS)
    torch.testing.assert_close(loss, expected)


def test_sequence_level_reduction_uses_global_valid_seqs():
    # token_level_loss=False: mean over each sequence's tokens, then sum over valid sequences
    # divided by global_valid_seqs (+1e-8 at both levels, as NeMo's nested masked_mean).
    curr, prev, ref, adv, mask, sample_mask = _reduction_inputs()
    beta, seqs = 0.05, 4.0
    loss, _ = pg(
        curr,
        prev,
        adv,
        mask,
        reference_policy_kl_penalty=beta,
        reference_logprobs=ref,
        token_level_loss=False,
        sample_mask=sample_mask,
        global_valid_toks=t64(17.0),
        global_valid_seqs=t64(seqs),
    )
    ppo, kl = _per_token_ppo_and_kl(curr, prev, ref, adv, beta)

    def seq_mean(x):
        per_seq = (x * mask).sum(-1) / (mask.sum(-1) + EPS)
        return (per_seq * sample_mask).sum() / (seqs + EPS)

    torch.testing.assert_close(loss, seq_mean(ppo) + seq_mean(kl))


def test_global_counts_default_to_local_counts():
    curr, prev, _ref, adv, mask, sample_mask = _reduction_inputs()
    for level in (True, False):
        kw = dict(token_level_loss=level, sample_mask=sample_mask)
        loss_default, _ = pg(curr, prev, adv, mask, **kw)
        loss_explicit, _ = pg(
            curr,
            prev,
            adv,
            mask,
            **kw,
            global_valid_toks=(mask * sample_mask[:, None]).sum(),
            global_valid_seqs=sample_mask.sum(),
        )
        torch.testing.assert_close(loss_default, loss_explicit)


def test_per_sample_advantages_broadcast_over_tokens():
    curr, prev, _, _, mask, _ = _reduction_inputs()
    adv = t64([0.5, -1.5, 2.0])
    loss_1d, _ = pg(curr, prev, adv, mask)
    loss_2d, _ = pg(curr, prev, adv[:, None].expand(3, 5), mask)
    torch.testing.assert_close(loss_1d, loss_2d)


# =====================================================================================
# clipped_pg_loss: argument requirements
# =====================================================================================


def test_kl_penalty_requires_reference_logprobs():
    with pytest.raises(ValueError):
        pg(t32(CURR), t32(PREV), t32(ADV), reference_policy_kl_penalty=0.01)


def test_importance_sampling_requires_generation_logprobs():
    with pytest.raises(ValueError):
        pg(t32(CURR), t32(PREV), t32(ADV), use_importance_sampling_correction=True)


def test_on_policy_kl_approximation_requires_generation_logprobs():
    with pytest.raises(ValueError):
        pg(
            t32(CURR),
            t32(PREV),
            t32(ADV),
            reference_policy_kl_penalty=0.1,
            use_on_policy_kl_approximation=True,
            reference_logprobs=t32(REF),
        )


def test_prev_logprobs_required_unless_forced_on_policy():
    with pytest.raises(ValueError):
        pg(t32(CURR), None, t32(ADV))


@pytest.mark.parametrize(
    "bad",
    [
        # truncation without IS correction
        {"truncated_importance_sampling_type": "tis", "truncated_importance_sampling_ratio": 2.0},
        # unknown truncation type
        {
            "use_importance_sampling_correction": True,
            "truncated_importance_sampling_type": "bogus",
            "truncated_importance_sampling_ratio": 2.0,
        },
        # missing / non-positive upper bound
        {"use_importance_sampling_correction": True, "truncated_importance_sampling_type": "tis"},
        {
            "use_importance_sampling_correction": True,
            "truncated_importance_sampling_type": "tis",
            "truncated_importance_sampling_ratio": 0.0,
        },
        # icepop and seq-mask-tis need a lower bound
        {
            "use_importance_sampling_correction": True,
            "truncated_importance_sampling_type": "icepop",
            "truncated_importance_sampling_ratio": 2.0,
        },
        {
            "use_importance_sampling_correction": True,
            "truncated_importance_sampling_type": "seq-mask-tis",
            "truncated_importance_sampling_ratio": 2.0,
        },
        # seq-mask-tis is token-level IS with sequence masking
        {
            "use_importance_sampling_correction": True,
            "truncated_importance_sampling_type": "seq-mask-tis",
            "truncated_importance_sampling_ratio": 2.0,
            "truncated_importance_sampling_ratio_min": 0.5,
            "sequence_level_importance_ratios": True,
            "token_level_loss": False,
        },
    ],
)
def test_invalid_truncated_importance_sampling_configs(bad):
    with pytest.raises(ValueError):
        ClippedPGConfig(**bad)


def test_config_defaults_match_nemo():
    cfg = ClippedPGConfig()
    assert cfg.reference_policy_kl_penalty == 0.01
    assert cfg.reference_policy_kl_type == "k3"
    assert (cfg.kl_input_clamp_value, cfg.kl_output_clamp_value) == (20.0, 10.0)
    assert (cfg.ratio_clip_min, cfg.ratio_clip_max, cfg.ratio_clip_c) == (0.2, 0.2, None)
    assert cfg.token_level_loss is True
    for flag in (
        "use_on_policy_kl_approximation",
        "use_importance_sampling_correction",
        "sequence_level_importance_ratios",
        "force_on_policy_ratio",
        "disable_ppo_ratio",
        "use_cispo",
    ):
        assert getattr(cfg, flag) is False, flag
    dpo = DPOConfig()
    assert dpo.reference_policy_kl_penalty == 0.05
    assert (dpo.preference_loss_weight, dpo.sft_loss_weight) == (1.0, 0.0)
    assert dpo.preference_average_log_probs is False and dpo.sft_average_log_probs is False


# =====================================================================================
# token_logprobs / entropy_from_logits / nll_loss  (test_loss_functions.py::test_nll_loss)
# =====================================================================================


def _nll_logits(correct: bool) -> torch.Tensor:
    # NeMo: input_ids [0, 1, 2, 3]; logits row t predicts token t + 1. With 999 on the target
    # the log-prob is ~0; with 999 on another token it is ~-999.
    rows = torch.zeros(4, 8)
    for t in range(3):
        rows[t, t + 1 if correct else t] = 999.0
    return rows.unsqueeze(0)


@pytest.mark.parametrize(("correct", "expected"), [(True, 0.0), (False, 999.0)])
def test_nll_loss_confident_predictions(correct, expected):
    input_ids = torch.arange(4).unsqueeze(0)
    token_mask = t32([[0, 0, 1, 1]])
    logits = _nll_logits(correct)
    lp = token_logprobs(logits[:, :-1], input_ids[:, 1:])
    loss, metrics = nll_loss(lp, token_mask[:, 1:], global_valid_toks=t32(2.0))
    torch.testing.assert_close(loss, t32(expected))
    assert metrics["loss"] == pytest.approx(expected, abs=1e-3)


def test_nll_loss_formula_with_sample_mask():
    g = torch.Generator().manual_seed(5)
    lp = -torch.rand(3, 4, generator=g, dtype=F64) * 3
    mask = t64([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    sample_mask = t64([1.0, 0.0, 1.0])
    loss, _ = nll_loss(lp, mask, sample_mask=sample_mask, global_valid_toks=t64(9.0))
    m = mask * sample_mask[:, None]
    torch.testing.assert_close(loss, -(lp * m).sum() / (9.0 + EPS))
    loss_local, _ = nll_loss(lp, mask, sample_mask=sample_mask)
    torch.testing.assert_close(loss_local, -(lp * m).sum() / (m.sum() + EPS))


def test_token_logprobs_matches_log_softmax_gather_and_chunking():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 5, 11, generator=g, dtype=F64) * 3
    targets = torch.randint(0, 11, (2, 5), generator=g)
    expected = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, targets), expected)
    torch.testing.assert_close(token_logprobs(logits, targets, chunk_size=2), expected)


def test_entropy_of_uniform_logits_is_log_vocab():
    torch.testing.assert_close(entropy_from_logits(torch.zeros(2, 3, 16)), torch.full((2, 3), math.log(16)))


# =====================================================================================
# dpo_loss  (test_loss_functions.py DPO tests; NeMo interleaves chosen/rejected rows)
# =====================================================================================


def _dpo_zero_logit_inputs(vocab_size=16):
    # NeMo's setup_dpo_loss_test_data: input_ids arange(8).reshape(2, 4) (chosen row 0,
    # rejected row 1), token_mask [[0, 0, 1, 1]] * 2, all-zero logits, zero reference.
    input_ids = torch.arange(8).reshape(2, 4)
    logits = torch.zeros(2, 4, vocab_size)
    lp = token_logprobs(logits[:, :-1], input_ids[:, 1:])  # all -log(16)
    mask = t32([[0, 0, 1, 1], [0, 0, 1, 1]])[:, 1:]
    ref = torch.zeros(2, 3)
    return lp, ref, mask


def test_dpo_accepts_zero_beta_like_nemo():
    # NeMo's exact config in test_dpo_loss: beta = 0 -> preference loss log 2 whatever the data.
    lp, ref, mask = _dpo_zero_logit_inputs()
    cfg = DPOConfig(reference_policy_kl_penalty=0.0, preference_loss_weight=1.0, sft_loss_weight=0.0)
    loss, _ = dpo_loss(lp[:1], lp[1:], ref[:1], ref[1:], mask[:1], mask[1:], config=cfg)
    torch.testing.assert_close(loss, -F.logsigmoid(t32(0.0)))


@pytest.mark.parametrize("beta", [0.05, 0.5])
def test_dpo_equal_rewards_give_log2(beta):
    # Chosen and rejected have identical log-probs, so the margin is 0 for any beta.
    lp, ref, mask = _dpo_zero_logit_inputs()
    cfg = DPOConfig(reference_policy_kl_penalty=beta, preference_loss_weight=1.0, sft_loss_weight=0.0)
    loss, metrics = dpo_loss(lp[:1], lp[1:], ref[:1], ref[1:], mask[:1], mask[1:], config=cfg)
    torch.testing.assert_close(loss, -F.logsigmoid(t32(0.0)))
    assert metrics["sft_loss"] == 0.0
    assert metrics["accuracy"] == 0.0  # chosen > rejected is strict
    assert metrics["num_valid_samples"] == pytest.approx(1.0)


def test_dpo_with_sft_term():
    # sft = -(sum of chosen log-probs) = 2 tokens * log(16); total = 0.5 * sft + log(2).
    # (NeMo runs this with beta = 0; the margin is 0 so beta does not matter.)
    lp, ref, mask = _dpo_zero_logit_inputs()
    cfg = DPOConfig(reference_policy_kl_penalty=0.05, preference_loss_weight=1.0, sft_loss_weight=0.5)
    loss, metrics = dpo_loss(lp[:1], lp[1:], ref[:1], ref[1:], mask[:1], mask[1:], config=cfg)
    expected_sft = 2 * math.log(16.0)
    torch.testing.assert_close(loss, t32(0.5 * expected_sft + math.log(2.0)))
    assert metrics["sft_loss"] == pytest.approx(expected_sft, rel=1e-5)
    assert metrics["preference_loss"] == pytest.approx(math.log(2.0), rel=1e-5)


def test_dpo_sft_averaging_with_varying_lengths():
    # NeMo: 4 rows (2 pairs), lengths [3, 5, 4, 6] -> after the shift chosen rows have 2 and 3
    # tokens. Zero logits over 10 tokens: each token costs log(10).
    # summed: mean(2, 3) * log 10 = 2.5 log 10; averaged: log 10.
    lengths = [3, 5, 4, 6]
    token_mask = torch.zeros(4, 6)
    for i, n in enumerate(lengths):
        token_mask[i, :n] = 1.0
    lp = torch.full((4, 5), -math.log(10.0))
    mask = token_mask[:, 1:]
    ref = torch.zeros(4, 5)
    chosen, rejected = slice(0, None, 2), slice(1, None, 2)
    results = {}
    for avg in (False, True):
        cfg = DPOConfig(
            reference_policy_kl_penalty=0.1,
            sft_loss_weight=0.5,
            preference_average_log_probs=avg,
            sft_average_log_probs=avg,
        )
        _, results[avg] = dpo_loss(
            lp[chosen], lp[rejected], ref[chosen], ref[rejected], mask[chosen], mask[rejected], config=cfg
        )
    assert results[False]["sft_loss"] == pytest.approx(2.5 * math.log(10.0), rel=1e-5)
    assert results[True]["sft_loss"] == pytest.approx(math.log(10.0), rel=1e-5)


def test_dpo_sft_matches_nll_loss():
    # With preference weight 0 and summed SFT, DPO's loss is (sum of chosen NLL) / n_pairs;
    # rescaled by n_pairs / N it equals nll_loss with global_valid_toks = N.
    g = torch.Generator().manual_seed(7)
    vocab = 8
    input_ids = torch.randint(0, vocab, (4, 5), generator=g)
    token_mask = t32([[0, 0, 1, 1, 0], [0, 0, 1, 1, 1], [0, 1, 1, 1, 1], [0, 1, 1, 1, 0]])
    logits = torch.randn(4, 5, vocab, generator=g)
    lp = token_logprobs(logits[:, :-1], input_ids[:, 1:])
    mask = token_mask[:, 1:]
    ref = torch.randn(4, 4, generator=g)
    n_tokens = mask[::2].sum()
    nll, _ = nll_loss(lp[::2], mask[::2], global_valid_toks=n_tokens)
    # (NeMo uses beta = 0 here; with preference weight 0 beta is irrelevant.)
    cfg = DPOConfig(reference_policy_kl_penalty=0.05, preference_loss_weight=0.0, sft_loss_weight=1.0)
    loss, _ = dpo_loss(lp[::2], lp[1::2], ref[::2], ref[1::2], mask[::2], mask[1::2], config=cfg)
    torch.testing.assert_close(loss * 2 / n_tokens, nll)


@pytest.mark.parametrize("average", [False, True])
def test_dpo_metrics_match_formula(average):
    # rewards r = sum_t (lp - ref) * mask  (or / max(n_tokens, 1)), reported WITHOUT beta;
    # preference = mean over valid pairs of -log sigmoid(beta (r_c - r_r)); every mean is
    # sum / (global_valid_pairs + 1e-8).
    g = torch.Generator().manual_seed(8)
    n, t, beta = 4, 5, 0.1
    c_lp, r_lp = -torch.rand(n, t, generator=g, dtype=F64) * 2, -torch.rand(n, t, generator=g, dtype=F64) * 2
    c_ref, r_ref = -torch.rand(n, t, generator=g, dtype=F64) * 2, -torch.rand(n, t, generator=g, dtype=F64) * 2
    c_mask = t64([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    r_mask = t64([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pair_mask = t64([1.0, 1.0, 0.0, 1.0])
    pairs = 6.0  # as if other micro-batches held 3 more valid pairs
    cfg = DPOConfig(
        reference_policy_kl_penalty=beta,
        sft_loss_weight=0.3,
        preference_average_log_probs=average,
        sft_average_log_probs=average,
    )
    loss, metrics = dpo_loss(
        c_lp,
        r_lp,
        c_ref,
        r_ref,
        c_mask,
        r_mask,
        config=cfg,
        pair_mask=pair_mask,
        global_valid_pairs=t64(pairs),
    )

    def reward(lp, ref, mask):
        r = ((lp - ref) * mask).sum(-1)
        return r / mask.sum(-1).clamp(min=1) if average else r

    rc, rr = reward(c_lp, c_ref, c_mask), reward(r_lp, r_ref, r_mask)
    denom = pairs + EPS
    pref = (-F.logsigmoid(beta * (rc - rr)) * pair_mask).sum() / denom
    sft_per = -(c_lp * c_mask).sum(-1)
    if average:
        sft_per = sft_per / c_mask.sum(-1).clamp(min=1)
    sft = (sft_per * pair_mask).sum() / denom
    torch.testing.assert_close(loss, pref + 0.3 * sft)
    assert metrics["preference_loss"] == pytest.approx(pref.item(), rel=1e-10)
    assert metrics["sft_loss"] == pytest.approx(sft.item(), rel=1e-10)
    assert metrics["accuracy"] == pytest.approx((((rc > rr).double() * pair_mask).sum() / denom).item(), rel=1e-10)
    assert metrics["rewards_chosen_mean"] == pytest.approx(((rc * pair_mask).sum() / denom).item(), rel=1e-10)
    assert metrics["rewards_rejected_mean"] == pytest.approx(((rr * pair_mask).sum() / denom).item(), rel=1e-10)
    assert metrics["num_valid_samples"] == pytest.approx(3.0)
    assert metrics["loss"] == pytest.approx(loss.item(), rel=1e-12)


def test_dpo_gradient_of_preference_term():
    # d/d(lp_c) of -log sigmoid(beta * delta) = -beta * sigmoid(-beta * delta) per valid token.
    c_lp = t64([[-1.0, -2.0, -0.5]]).requires_grad_(True)
    r_lp = t64([[-1.5, -0.2, -3.0]])
    zeros = torch.zeros(1, 3, dtype=F64)
    c_mask = t64([[1.0, 1.0, 0.0]])
    r_mask = t64([[1.0, 1.0, 1.0]])
    beta = 0.2
    loss, _ = dpo_loss(c_lp, r_lp, zeros, zeros, c_mask, r_mask, config=DPOConfig(reference_policy_kl_penalty=beta))
    loss.backward()
    delta = (-3.0) - (-4.7)
    expected = -beta * torch.sigmoid(t64(-beta * delta)) * c_mask / (1.0 + EPS)
    torch.testing.assert_close(c_lp.grad, expected)
