"""Curriculum schedules, samplers, success-rate weights and the zero-advantage filter.

References are independent of the module: direct formulas in Python floats, brute force over all
2^G reward vectors with a per-sample loop for the GRPO advantages, and scans over steps.
"""

from __future__ import annotations

import functools
import itertools
import math
import statistics
from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nemo_rl_theory import grpo_advantages
from nemo_rl_theory.losses import ClippedPGConfig
from nemo_rl_theory.toy import clipped_pg_objective, collect_grpo_batch, make_policy, sample_problems, train_grpo
from nemo_rl_theory.toy.policy import sequence_logprobs
from nemo_rl_theory.training.curriculum import (
    SuccessRateTracker,
    adaptive_sampler,
    curriculum_sampler,
    ema_success_rates,
    expected_squared_advantage,
    filter_zero_advantage_groups,
    fixed_mixture_sampler,
    informative_group_probability,
    informative_groups,
    level_probabilities,
    linear_competence,
    max_unlocked_level,
    root_competence,
    schedule_level_fractions,
    staircase_competence,
    success_rate_weights,
    uniform_sampler,
)
from support import grpo_advantages_reference

F64 = torch.float64
LEVELS = (1, 2, 3, 4, 5, 6)

# ----------------------------------------------------------------------------- schedules

steps_st = st.integers(min_value=0, max_value=500)
total_st = st.integers(min_value=1, max_value=300)
c0_st = st.floats(min_value=0.01, max_value=1.0)


@given(total=total_st, c0=c0_st)
def test_schedules_start_at_initial_end_at_one_and_never_decrease(total, c0):
    for schedule in (
        functools.partial(linear_competence, total_steps=total, initial=c0),
        functools.partial(root_competence, total_steps=total, initial=c0),
        functools.partial(root_competence, total_steps=total, initial=c0, power=3.0),
        functools.partial(staircase_competence, total_steps=total, initial=c0, num_stages=4),
    ):
        values = [schedule(t) for t in range(total + 3)]
        assert values[0] == pytest.approx(c0, rel=1e-12)
        assert values[total] == pytest.approx(1.0, abs=1e-12)
        assert all(0 < v <= 1 for v in values)
        assert all(b >= a - 1e-15 for a, b in itertools.pairwise(values))


@given(step=steps_st, total=total_st, c0=c0_st)
def test_schedules_match_their_formulas(step, total, c0):
    assert linear_competence(step, total_steps=total, initial=c0) == pytest.approx(
        min(1.0, c0 + (1 - c0) * step / total), rel=1e-12
    )
    assert root_competence(step, total_steps=total, initial=c0) == pytest.approx(
        min(1.0, math.sqrt(step * (1 - c0 * c0) / total + c0 * c0)), rel=1e-12
    )
    # power 1 is the linear ramp
    assert root_competence(step, total_steps=total, initial=c0, power=1.0) == pytest.approx(
        linear_competence(step, total_steps=total, initial=c0), rel=1e-12
    )
    stage = math.floor(5 * step / total)
    assert staircase_competence(step, total_steps=total, initial=c0, num_stages=5) == pytest.approx(
        min(1.0, c0 + (1 - c0) * stage / 4), rel=1e-12
    )


def test_root_schedule_unlock_steps_match_the_closed_form():
    total, c0, num_levels = 120, 0.15, 6
    schedule = functools.partial(root_competence, total_steps=total, initial=c0)
    for k in range(1, num_levels + 1):
        scanned = next(t for t in range(10 * total) if max_unlocked_level(schedule(t), num_levels) >= k)
        # level 1 is always available; level k needs c(t) >= k / L, i.e. t >= T ((k/L)^2 - c0^2) / (1 - c0^2)
        # (the 1e-9 absorbs the rounding of an exact integer, e.g. 120 computed as 120.00000000000001)
        exact = total * ((k / num_levels) ** 2 - c0**2) / (1 - c0**2)
        closed = 0 if k == 1 else max(0, math.ceil(exact - 1e-9))
        assert scanned == closed, (k, scanned, closed)


def test_staircase_with_one_stage_per_level_unlocks_one_level_per_stage():
    total, num_levels = 60, 6
    for t in range(total):
        c = staircase_competence(t, total_steps=total, num_stages=num_levels, initial=1 / num_levels)
        assert max_unlocked_level(c, num_levels) == t // (total // num_levels) + 1


def test_max_unlocked_level_boundaries():
    for num_levels in (1, 3, 6, 7, 10):
        for k in range(1, num_levels + 1):
            assert max_unlocked_level(k / num_levels, num_levels) == k
            assert max_unlocked_level(0.1 * k * 10 / num_levels, num_levels) == k  # rounding of k / L
            if k > 1:
                assert max_unlocked_level(k / num_levels - 1e-6, num_levels) == k - 1
    assert max_unlocked_level(1e-6, 6) == 1
    assert max_unlocked_level(1.0 + 2e-16, 6) == 6  # a schedule that rounds just above 1 is full competence


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: linear_competence(-1, total_steps=10), ValueError, "step must be >= 0"),
        (lambda: linear_competence(1.5, total_steps=10), TypeError, "step must be an int"),
        (lambda: root_competence(1, total_steps=0), ValueError, "total_steps must be >= 1"),
        (lambda: root_competence(1, total_steps=10, initial=0.0), ValueError, "initial must be a finite number"),
        (lambda: root_competence(1, total_steps=10, initial=1.5), ValueError, "initial"),
        (lambda: root_competence(1, total_steps=10, power=0.0), ValueError, "power"),
        (lambda: staircase_competence(1, total_steps=10, num_stages=0), ValueError, "num_stages"),
        (lambda: max_unlocked_level(0.0, 6), ValueError, "competence"),
        (lambda: max_unlocked_level(float("nan"), 6), ValueError, "competence"),
        (lambda: max_unlocked_level(0.5, 0), ValueError, "num_levels"),
        (lambda: level_probabilities(7, 6), ValueError, "max_level must be <= num_levels"),
        (lambda: level_probabilities(2, 6, replay=1.5), ValueError, "replay"),
        (lambda: level_probabilities(True, 6), TypeError, "max_level must be an int"),
    ],
)
def test_schedule_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ----------------------------------------------------------------------------- level distributions and samplers


@given(m=st.integers(1, 8), extra=st.integers(0, 4), replay=st.floats(0.0, 1.0))
def test_level_probabilities_formula(m, extra, replay):
    num_levels = m + extra
    probs = level_probabilities(m, num_levels, replay=replay)
    expected = [(replay / m + (1 - replay) * (k == m)) if k <= m else 0.0 for k in range(1, num_levels + 1)]
    torch.testing.assert_close(probs, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-15)
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-12)


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's test over the cells with positive probability (gammaincc is the chi2 survival function)."""
    support = probs > 0
    assert counts[~support].sum() == 0, "a level with probability 0 was drawn"
    expected = probs[support] * counts.sum()
    stat = ((counts[support] - expected) ** 2 / expected).sum()
    dof = int(support.sum()) - 1
    if dof == 0:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=F64), stat / 2))


def test_curriculum_sampler_draws_the_scheduled_distribution():
    schedule = functools.partial(linear_competence, total_steps=50, initial=0.2)
    sampler = curriculum_sampler("reverse", LEVELS, schedule, replay=0.4)
    generator = torch.Generator().manual_seed(0)
    for step in (0, 20, 35, 80):
        problems = sampler(step, 3000, generator)
        counts = torch.bincount(problems.difficulty - 1, minlength=6).to(F64)
        probs = level_probabilities(max_unlocked_level(schedule(step), 6), 6, replay=0.4)
        assert chi_square_p_value(counts, probs) > 1e-3, (step, counts, probs)
        assert problems.kind == "reverse"
        assert (problems.prompt_lengths == problems.difficulty + 2).all()


def test_samplers_are_deterministic_given_the_generator():
    sampler = curriculum_sampler("copy", (2, 4, 8), functools.partial(root_competence, total_steps=10))
    a = sampler(5, 64, torch.Generator().manual_seed(3))
    b = sampler(5, 64, torch.Generator().manual_seed(3))
    assert torch.equal(a.prompts, b.prompts) and torch.equal(a.difficulty, b.difficulty)
    assert set(a.difficulty.tolist()) <= {2, 4, 8}


def test_fixed_mixture_and_uniform_samplers():
    probs = torch.tensor([0.5, 0.0, 0.2, 0.3], dtype=F64)
    problems = fixed_mixture_sampler("add", (1, 2, 3, 4), probs)(0, 4000, torch.Generator().manual_seed(1))
    counts = torch.bincount(problems.difficulty - 1, minlength=4).to(F64)
    assert chi_square_p_value(counts, probs) > 1e-3
    uniform = uniform_sampler("reverse", LEVELS)(0, 3000, torch.Generator().manual_seed(2))
    counts = torch.bincount(uniform.difficulty - 1, minlength=6).to(F64)
    assert chi_square_p_value(counts, torch.full((6,), 1 / 6, dtype=F64)) > 1e-3


def test_chi_square_helper_detects_a_wrong_distribution():
    problems = uniform_sampler("reverse", LEVELS)(0, 3000, torch.Generator().manual_seed(2))
    counts = torch.bincount(problems.difficulty - 1, minlength=6).to(F64)
    wrong = torch.tensor([0.3, 0.2, 0.2, 0.1, 0.1, 0.1], dtype=F64)
    assert chi_square_p_value(counts, wrong) < 1e-6


@pytest.mark.parametrize("replay", [0.0, 0.3, 1.0])
def test_schedule_level_fractions_is_the_average_over_steps(replay):
    schedule = functools.partial(staircase_competence, total_steps=72, num_stages=6, initial=1 / 6)
    steps = 100
    fractions = schedule_level_fractions(schedule, 6, steps, replay=replay)
    # stage j (max level j + 1) lasts 12 steps, the last one from step 60 to the end of the run
    durations = [12] * 5 + [steps - 60]
    expected = [0.0] * 6
    for j, d in enumerate(durations):
        m = j + 1
        for k in range(1, m + 1):
            expected[k - 1] += d / steps * (replay / m + (1 - replay) * (k == m))
    torch.testing.assert_close(fractions, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: curriculum_sampler("sort", LEVELS, lambda t: 1.0), ValueError, "kind must be one of"),
        (lambda: curriculum_sampler("copy", (1, 3, 2), lambda t: 1.0), ValueError, "strictly increasing"),
        (lambda: curriculum_sampler("copy", (), lambda t: 1.0), ValueError, "non-empty"),
        (lambda: curriculum_sampler("copy", (0, 1), lambda t: 1.0), ValueError, r"difficulties in \[1, 32\]"),
        (lambda: curriculum_sampler("copy", (1.0, 2.0), lambda t: 1.0), TypeError, "levels must hold ints"),
        (lambda: curriculum_sampler("copy", LEVELS, 0.5), TypeError, "schedule must be a callable"),
        (lambda: curriculum_sampler("copy", LEVELS, lambda t: 1.0, replay=-0.1), ValueError, "replay"),
        (lambda: fixed_mixture_sampler("copy", (1, 2), torch.tensor([0.5, 0.6])), ValueError, "sum to 1"),
        (lambda: fixed_mixture_sampler("copy", (1, 2), torch.tensor([1.0])), ValueError, r"shape \[L\] = \[2\]"),
        (lambda: fixed_mixture_sampler("copy", (1, 2), torch.tensor([1, 0])), TypeError, "floating-point"),
        (lambda: fixed_mixture_sampler("copy", (1, 2), torch.tensor([1.5, -0.5])), ValueError, r"in \[0, 1\]"),
        (lambda: schedule_level_fractions(lambda t: 1.0, 6, 0), ValueError, "steps must be >= 1"),
    ],
)
def test_sampler_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_a_schedule_returning_an_invalid_competence_fails_at_the_step():
    sampler = curriculum_sampler("copy", LEVELS, lambda t: 1.5)
    with pytest.raises(ValueError, match="competence"):
        sampler(0, 4, torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- GRPO signal vs success rate


@given(p=st.floats(0.0, 1.0), g=st.integers(1, 9))
def test_informative_probability_by_enumeration(p, g):
    brute = sum(p ** sum(o) * (1 - p) ** (g - sum(o)) for o in itertools.product((0, 1), repeat=g) if 0 < sum(o) < g)
    got = float(informative_group_probability(torch.tensor(p, dtype=F64), g))
    assert got == pytest.approx(brute, abs=1e-12)
    assert got == pytest.approx(float(informative_group_probability(torch.tensor(1 - p, dtype=F64), g)), abs=1e-12)


@pytest.mark.parametrize("g", [2, 3, 4, 6])
@pytest.mark.parametrize(("loo", "normalize"), [(True, True), (True, False), (False, True), (False, False)])
def test_expected_squared_advantage_by_enumeration(g, loo, normalize):
    ps = torch.tensor([0.0, 0.1, 0.37, 0.5, 0.9, 1.0], dtype=F64)
    got = expected_squared_advantage(ps, g, use_leave_one_out_baseline=loo, normalize_rewards=normalize)
    for p, value in zip(ps.tolist(), got.tolist(), strict=True):
        brute = 0.0
        for outcome in itertools.product((0.0, 1.0), repeat=g):
            k = int(sum(outcome))
            weight = p**k * (1 - p) ** (g - k)
            brute += weight * statistics.fmean(
                a * a for a in grpo_advantages_reference(list(outcome), [0] * g, leave_one_out=loo, normalize=normalize)
            )
        assert value == pytest.approx(brute, rel=1e-9, abs=1e-15), (p, value, brute)


def test_expected_squared_advantage_keeps_the_shape_and_vanishes_at_the_ends():
    ps = torch.tensor([[0.0, 0.25], [0.75, 1.0]], dtype=torch.float32)
    out = expected_squared_advantage(ps, 8)
    assert out.shape == (2, 2) and out.dtype == F64
    assert out[0, 0] == 0 and out[1, 1] == 0
    assert out[0, 1] > 0 and out[1, 0] > 0


@given(p=st.floats(0.0, 1.0), g=st.integers(2, 16))
def test_expected_squared_advantage_closed_forms(p, g):
    pt = torch.tensor([p], dtype=F64)
    var = p * (1 - p)
    mean_raw = expected_squared_advantage(pt, g, use_leave_one_out_baseline=False, normalize_rewards=False)
    loo_raw = expected_squared_advantage(pt, g, use_leave_one_out_baseline=True, normalize_rewards=False)
    assert float(mean_raw) == pytest.approx(var * (g - 1) / g, rel=1e-9, abs=1e-15)
    assert float(loo_raw) == pytest.approx(var * g / (g - 1), rel=1e-9, abs=1e-15)
    # Normalised group mean: every informative group has sum_i A_i^2 = (G - 1) (sigma / (sigma + eps))^2.
    mean_norm = expected_squared_advantage(pt, g, use_leave_one_out_baseline=False, normalize_rewards=True)
    informative = float(informative_group_probability(pt, g))
    assert float(mean_norm) == pytest.approx((g - 1) / g * informative, rel=1e-5, abs=1e-12)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: informative_group_probability(torch.tensor([0.5, 1.2]), 4), ValueError, r"in \[0, 1\]"),
        (lambda: informative_group_probability(torch.tensor([float("nan")]), 4), ValueError, "finite"),
        (lambda: informative_group_probability(torch.tensor([1]), 4), TypeError, "floating-point"),
        (lambda: informative_group_probability([0.5], 4), TypeError, "torch.Tensor"),
        (lambda: informative_group_probability(torch.tensor([0.5]), 0), ValueError, "group_size must be >= 1"),
        (lambda: expected_squared_advantage(torch.tensor([0.5]), 1), ValueError, "group_size must be >= 2"),
        (
            lambda: expected_squared_advantage(torch.tensor([0.5]), 4, normalize_rewards=1),
            TypeError,
            "normalize_rewards must be a bool",
        ),
    ],
)
def test_signal_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ----------------------------------------------------------------------------- weights and the tracker

rates_st = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8)


@given(rates=rates_st, scheme=st.sampled_from(["informative", "variance", "failure", "uniform"]),
       tau=st.floats(0.1, 10.0), floor=st.floats(0.0, 1.0))  # fmt: skip
def test_weights_are_a_distribution_with_a_floor(rates, scheme, tau, floor):
    p = torch.tensor(rates, dtype=F64)
    w = success_rate_weights(p, scheme=scheme, temperature=tau, floor=floor, group_size=4)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    assert bool((w >= floor / len(rates) - 1e-15).all())


@given(rates=rates_st, g=st.integers(2, 12))
def test_weights_match_the_closed_form(rates, g):
    p = torch.tensor(rates, dtype=F64)
    scores = {
        "informative": [1 - x**g - (1 - x) ** g for x in rates],
        "variance": [x * (1 - x) for x in rates],
        "failure": [1 - x for x in rates],
    }
    for scheme, score in scores.items():
        if max(score) <= 0:
            score = [1.0] * len(rates)  # documented fallback
        for tau, floor in ((1.0, 0.0), (0.5, 0.1), (2.0, 0.3)):
            powered = [(s / max(score)) ** (1 / tau) for s in score]  # s^(1/tau) up to a common factor
            expected = [floor / len(rates) + (1 - floor) * s / sum(powered) for s in powered]
            got = success_rate_weights(p, scheme=scheme, group_size=g, temperature=tau, floor=floor)
            torch.testing.assert_close(got, torch.tensor(expected, dtype=F64), rtol=1e-9, atol=1e-12)


def test_small_temperature_does_not_underflow():
    w = success_rate_weights(torch.tensor([0.999, 0.9999], dtype=F64), scheme="variance", temperature=1e-3, floor=0.0)
    assert torch.isfinite(w).all() and float(w.sum()) == pytest.approx(1.0)
    assert float(w[0]) > 0.999


@given(x=st.floats(0.0, 1.0), s0=st.floats(0.0, 1.0), alpha=st.floats(0.01, 1.0), k=st.integers(0, 30))
def test_ema_converges_geometrically(x, s0, alpha, k):
    rates = torch.tensor([s0, s0], dtype=F64)
    counts = torch.tensor([10.0, 0.0], dtype=F64)
    for _ in range(k):
        rates = ema_success_rates(rates, counts, counts * x, alpha=alpha)
    assert float(rates[0]) == pytest.approx(x + (1 - alpha) ** k * (s0 - x), abs=1e-12)
    assert float(rates[1]) == s0  # an unseen level keeps its estimate


def test_tracker_updates_from_a_batch_and_passes_it_through():
    tracker = SuccessRateTracker((2, 4, 6), alpha=0.5, prior=0.5)
    difficulty = torch.tensor([2, 2, 2, 2, 6, 6])
    correct = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    rates = tracker.update(difficulty, correct)
    torch.testing.assert_close(rates, torch.tensor([0.5 * 0.5 + 0.5 * 0.75, 0.5, 0.25], dtype=F64))
    assert tracker.seen.tolist() == [4, 0, 2]
    policy = make_policy(0)
    problems = sample_problems("reverse", torch.tensor([2, 4, 6, 4]), generator=torch.Generator().manual_seed(0))
    batch = collect_grpo_batch(policy, problems, group_size=3, generator=torch.Generator().manual_seed(1))
    assert tracker.observe(batch) is batch
    assert len(tracker.history) == 2


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda t: t.update(torch.tensor([3]), torch.tensor([1.0])), ValueError, "outside levels"),
        (lambda t: t.update(torch.tensor([7]), torch.tensor([1.0])), ValueError, "outside levels"),
        (lambda t: t.update(torch.tensor([2]), torch.tensor([0.5])), ValueError, "0/1"),
        (lambda t: t.update(torch.tensor([2, 4]), torch.tensor([1.0])), ValueError, "shape"),
        (lambda t: t.observe("batch"), TypeError, "GRPOBatch"),
        (lambda t: SuccessRateTracker((1, 2), alpha=0.0), ValueError, "alpha"),
        (lambda t: SuccessRateTracker((1, 2), prior=2.0), ValueError, "prior"),
        (lambda t: adaptive_sampler("copy", "tracker"), TypeError, "SuccessRateTracker"),
        (lambda t: adaptive_sampler("copy", t, scheme="hardest"), ValueError, "scheme must be one of"),
        (lambda t: adaptive_sampler("copy", t, temperature=0.0), ValueError, "temperature"),
        (lambda t: success_rate_weights(torch.zeros(2, 2)), ValueError, r"shape \[L\]"),
        (lambda t: success_rate_weights(torch.zeros(2), scheme="variance", group_size=0), ValueError, "group_size"),
        (lambda t: success_rate_weights(torch.zeros(2), floor=1.5), ValueError, "floor"),
        (lambda t: ema_success_rates(torch.zeros(2), torch.ones(3), torch.ones(3), alpha=0.5), ValueError, "shape"),
        (
            lambda t: ema_success_rates(torch.zeros(2), torch.ones(2), 2 * torch.ones(2), alpha=0.5),
            ValueError,
            "correct_by_level <= counts",
        ),
    ],
)
def test_tracker_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call(SuccessRateTracker((2, 4, 6)))


def test_adaptive_sampler_follows_the_tracker():
    tracker = SuccessRateTracker((1, 2, 3), prior=0.5)
    tracker.rates = torch.tensor([1.0, 0.5, 0.0], dtype=F64)
    sampler = adaptive_sampler("reverse", tracker, scheme="informative", floor=0.3)
    problems = sampler(0, 3000, torch.Generator().manual_seed(0))
    counts = torch.bincount(problems.difficulty - 1, minlength=3).to(F64)
    assert chi_square_p_value(counts, torch.tensor([0.1, 0.8, 0.1], dtype=F64)) > 1e-3


# ----------------------------------------------------------------------------- the zero-advantage filter


@pytest.fixture(scope="module")
def batch():
    policy = make_policy(0)
    problems = sample_problems("copy", torch.tensor([1, 1, 2, 2, 3, 3]), generator=torch.Generator().manual_seed(0))
    raw = collect_grpo_batch(policy, problems, group_size=4, generator=torch.Generator().manual_seed(1))
    # Impose a known pattern of rewards: all wrong, mixed, all right, mixed, mixed, all wrong.
    pattern = [[0, 0, 0, 0], [1, 0, 0, 1], [1, 1, 1, 1], [0, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]]
    rewards = torch.tensor(pattern, dtype=torch.float32).flatten()

    return replace(raw, rewards=rewards, correct=rewards.clone(), advantages=grpo_advantages(rewards, raw.prompt_ids))


def test_filter_keeps_exactly_the_non_constant_groups(batch):
    assert informative_groups(batch).tolist() == [False, True, False, True, True, False]
    kept = filter_zero_advantage_groups(batch)
    assert kept.prompt_ids.tolist() == [1] * 4 + [3] * 4 + [4] * 4
    dropped = ~informative_groups(batch)[batch.prompt_ids]
    assert (batch.advantages[dropped] == 0).all()  # exactly zero, binary rewards
    rows = informative_groups(batch)[batch.prompt_ids]
    assert torch.equal(kept.advantages, batch.advantages[rows])
    assert torch.equal(kept.rollout.tokens, batch.rollout.tokens[rows])
    assert torch.equal(filter_zero_advantage_groups(batch, max_groups=2).prompt_ids, torch.tensor([1] * 4 + [3] * 4))
    assert len(filter_zero_advantage_groups(kept)) == len(kept)  # idempotent


def test_filter_of_constant_batch_is_empty(batch):
    constant = replace(batch, rewards=torch.ones_like(batch.rewards))
    assert len(filter_zero_advantage_groups(constant)) == 0
    with pytest.raises(ValueError, match="max_groups must be >= 1"):
        filter_zero_advantage_groups(batch, max_groups=0)
    with pytest.raises(TypeError, match="GRPOBatch"):
        filter_zero_advantage_groups(batch.rewards)


def test_filtering_rescales_the_token_level_gradient_by_the_token_ratio(batch):
    policy = make_policy(0)
    objective = clipped_pg_objective(ClippedPGConfig(reference_policy_kl_penalty=0.0))

    def grad(b):
        policy.zero_grad()
        loss, _ = objective(sequence_logprobs(policy, b.rollout.tokens), b)
        loss.backward()
        return torch.cat([p.grad.flatten() for p in policy.parameters()])

    kept = filter_zero_advantage_groups(batch)
    ratio = float(batch.rollout.mask.sum() / kept.rollout.mask.sum())
    torch.testing.assert_close(grad(kept), ratio * grad(batch), rtol=1e-4, atol=1e-7)


def test_filter_and_tracker_plug_into_train_grpo():
    tracker = SuccessRateTracker((1, 2), alpha=0.5)
    history = train_grpo(
        make_policy(0),
        adaptive_sampler("copy", tracker, group_size=4),
        steps=2,
        prompts_per_step=4,
        group_size=4,
        batch_filter=lambda b: filter_zero_advantage_groups(tracker.observe(b)),
    )
    assert len(tracker.history) == 2
    for zero, kept in zip(history["zero_advantage_fraction"], history["kept_fraction"], strict=True):
        assert kept == pytest.approx(1 - zero)
