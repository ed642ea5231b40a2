"""Reward combinators, partial credit and potential-based shaping, checked by direct loops in float64."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nemo_rl_theory import calculate_baseline_and_std_per_prompt, grpo_advantages
from nemo_rl_theory.toy import (
    EOS,
    PAD,
    Problems,
    Rollout,
    Task,
    correctness_reward,
    format_reward,
    generate,
    join_prompt_response,
    length_reward,
    make_policy,
    sample_problems,
    weighted_reward,
)
from nemo_rl_theory.training.rewards import (
    answer_position_matches,
    clip_rewards,
    clipped,
    discounted_returns,
    expected_correctness,
    gate_rewards,
    gated,
    partial_credit,
    partial_credit_reward,
    potential_shaping,
    prefix_credit_reward,
    prefix_match_length,
    progress_potential,
    response_mask,
    snap_rewards,
    snapped,
    standardize_rewards,
    weighted_sum,
    weighted_sum_rewards,
)

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_rollout(problems: Problems, responses: list[list[int]], terminated: list[bool], budget: int) -> Rollout:
    """A rollout with the given response token lists (no sampling)."""
    lengths = torch.tensor([len(r) for r in responses])
    padded = torch.full((len(responses), max(int(lengths.max()), 1)), PAD)
    for i, r in enumerate(responses):
        padded[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    tokens, mask = join_prompt_response(problems, padded, lengths)
    return Rollout(tokens, mask, torch.zeros_like(mask), padded, lengths, torch.tensor(terminated), budget)


def sampled_batch(seed: int = 0, n: int = 64, kind: str = "reverse", level: int = 3) -> tuple[Problems, Rollout]:
    problems = sample_problems(kind, level, n, generator=gen(seed))
    return problems, generate(make_policy(seed), problems, generator=gen(seed + 1))


# ----------------------------------------------------------------------------- combining tensors

floats = st.floats(-10, 10, allow_nan=False, width=64)


@given(
    values=st.lists(st.lists(floats, min_size=5, max_size=5), min_size=1, max_size=4),
    weights=st.lists(floats, min_size=4, max_size=4),
)
def test_weighted_sum_matches_a_loop(values: list[list[float]], weights: list[float]) -> None:
    names = [f"r{k}" for k in range(len(values))]
    components = {name: torch.tensor(v, dtype=F64) for name, v in zip(names, values, strict=True)}
    w = {name: weights[k] for k, name in enumerate(names)}
    got = weighted_sum_rewards(components, w)
    expected = [math.fsum(w[name] * values[k][i] for k, name in enumerate(names)) for i in range(5)]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)


@given(values=st.lists(floats, min_size=1, max_size=8), data=st.data(), otherwise=floats)
def test_gate_matches_a_loop(values: list[float], data: st.DataObject, otherwise: float) -> None:
    gate = data.draw(st.lists(st.booleans(), min_size=len(values), max_size=len(values)))
    r = torch.tensor(values, dtype=F64)
    expected = [v if g else otherwise for v, g in zip(values, gate, strict=True)]
    assert gate_rewards(r, torch.tensor(gate), otherwise=otherwise).tolist() == expected
    # 0/1 numbers are accepted as a gate too
    assert gate_rewards(r, torch.tensor(gate).float(), otherwise=otherwise).tolist() == expected


@given(values=st.lists(floats, min_size=1, max_size=8), low=floats, width=st.floats(0.01, 5))
def test_clip_matches_a_loop(values: list[float], low: float, width: float) -> None:
    high = low + width
    r = torch.tensor(values, dtype=F64)
    assert clip_rewards(r, low, high).tolist() == [min(max(v, low), high) for v in values]
    assert clip_rewards(r, low=low).tolist() == [max(v, low) for v in values]
    assert clip_rewards(r, high=high).tolist() == [min(v, high) for v in values]


@given(values=st.lists(floats, min_size=2, max_size=12, unique=True))
def test_standardize_matches_statistics(values: list[float]) -> None:
    got = standardize_rewards(torch.tensor(values, dtype=F64))
    mean, std = statistics.fmean(values), statistics.stdev(values)
    expected = [(v - mean) / (std + 1e-6) for v in values]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=F64), rtol=1e-9, atol=1e-9)


def test_combinator_input_errors() -> None:
    r = torch.tensor([0.0, 1.0])
    with pytest.raises(ValueError, match="missing \\['b'\\]"):
        weighted_sum_rewards({"a": r, "b": r}, {"a": 1.0})
    with pytest.raises(ValueError, match="unknown \\['c'\\]"):
        weighted_sum_rewards({"a": r}, {"a": 1.0, "c": 2.0})
    with pytest.raises(ValueError, match="non-empty"):
        weighted_sum_rewards({}, {})
    with pytest.raises(ValueError, match="components\\['b'\\] must have shape \\[B\\] = \\[2\\]"):
        weighted_sum_rewards({"a": r, "b": torch.zeros(3)}, {"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match="finite"):
        weighted_sum_rewards({"a": torch.tensor([math.nan, 0.0])}, {"a": 1.0})
    with pytest.raises(ValueError, match="weights\\['a'\\] must be a finite number"):
        weighted_sum_rewards({"a": r}, {"a": math.inf})
    with pytest.raises(TypeError, match="weights\\['a'\\] must be a real number"):
        weighted_sum_rewards({"a": r}, {"a": True})
    with pytest.raises(TypeError, match="floating-point"):
        weighted_sum_rewards({"a": torch.tensor([0, 1])}, {"a": 1.0})
    with pytest.raises(ValueError, match="gate must contain only 0 and 1"):
        gate_rewards(r, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="gate must have shape \\[B\\] = \\[2\\]"):
        gate_rewards(r, torch.tensor([True]))
    with pytest.raises(TypeError, match=r"gate must be a torch\.Tensor"):
        gate_rewards(r, [True, False])
    with pytest.raises(ValueError, match="rewards must have shape \\[B\\]"):
        gate_rewards(torch.zeros(2, 2), torch.tensor([True, False]))
    with pytest.raises(ValueError, match="at least one of low and high"):
        clip_rewards(r)
    with pytest.raises(ValueError, match="low must be < high"):
        clip_rewards(r, 1.0, 1.0)
    with pytest.raises(ValueError, match="low must be a finite number"):
        clip_rewards(r, -math.inf, 1.0)
    with pytest.raises(ValueError, match="rewards must not be empty"):
        clip_rewards(torch.zeros(0), 0.0, 1.0)
    with pytest.raises(ValueError, match="at least 2 values"):
        standardize_rewards(torch.zeros(1))
    with pytest.raises(ValueError, match="eps must be > 0"):
        standardize_rewards(r, eps=0.0)


# ----------------------------------------------------------------------------- GRPO invariance


@given(
    quarters=st.lists(st.integers(-8, 8), min_size=12, max_size=12),
    log2_scales=st.lists(st.integers(-2, 3), min_size=3, max_size=3),
    shift_quarters=st.lists(st.integers(-12, 12), min_size=3, max_size=3),
    loo=st.booleans(),
)
def test_group_affine_maps_only_rescale_epsilon(
    quarters: list[int], log2_scales: list[int], shift_quarters: list[int], loo: bool
) -> None:
    """A(a r + c) = (r - b) / (sigma + eps / a) where sigma > 0, but a (r - b) where sigma = 0.

    The second case is leave-one-out's lone dissenter (all *other* rewards equal): not scale
    invariant. Dyadic values keep every group sum exact, so "all equal" really gives sigma = 0.
    """
    r = torch.tensor(quarters, dtype=F64) / 4
    ids = torch.arange(3).repeat_interleave(4)
    a = (2.0 ** torch.tensor(log2_scales, dtype=F64))[ids]
    c = (torch.tensor(shift_quarters, dtype=F64) / 4)[ids]
    got = grpo_advantages(a * r + c, ids, use_leave_one_out_baseline=loo)
    b, s = calculate_baseline_and_std_per_prompt(ids, r, None, leave_one_out_baseline=loo)
    expected = torch.where(s > 0, (r - b) / (s + 1e-6 / a), a * (r - b))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    unnormalised = grpo_advantages(a * r + c, ids, use_leave_one_out_baseline=loo, normalize_rewards=False)
    torch.testing.assert_close(unnormalised, a * (r - b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@given(value=st.floats(-3.9, 3.9), dissent=st.floats(-3.9, 3.9), size=st.integers(3, 16), loo=st.booleans())
def test_snapped_rewards_keep_equal_rewards_exactly_equal(
    dtype: torch.dtype, value: float, dissent: float, size: int, loo: bool
) -> None:
    """A lone dissenter among equal snapped rewards gets exactly r_i - b_i (sigma = 0), never ~1e6."""
    raw = torch.tensor([dissent] + [value] * (size - 1), dtype=dtype)
    r = snap_rewards(raw)
    assert (r - raw).abs().max() <= 2.0**-9 * (1 + 1e-6)
    assert torch.equal(r * 256, torch.round(r * 256))  # on the grid
    ids = torch.zeros(size, dtype=torch.long)
    _, std = calculate_baseline_and_std_per_prompt(ids, r, None, leave_one_out_baseline=loo)
    adv = grpo_advantages(r, ids, use_leave_one_out_baseline=loo)
    if r[0] == r[1]:
        assert torch.equal(std, torch.zeros_like(std)) and torch.equal(adv, torch.zeros_like(adv))
    elif loo:
        assert std[0] == 0 and adv[0].item() == r[0].item() - r[1].item()  # exact, not divided by ~eps


def test_snap_fixes_a_known_rounding_blowup() -> None:
    ids = torch.zeros(8, dtype=torch.long)
    for dtype, bonus in ((F64, 0.2), (torch.float32, 0.3)):
        r = torch.tensor([1.0] + [0.0] * 7, dtype=dtype) + bonus  # verifier + constant bonus
        # Before the two-pass sigma the unsnapped residue (~1e-8) was divided into ~1e5; now
        # the peers' tie gives sigma = 0 and the advantage is r - b to rounding.
        assert abs(grpo_advantages(r, ids)[0].item() - 1.0) < 1e-6
        assert grpo_advantages(snap_rewards(r), ids)[0].item() == 1.0
    problems, rollout = sampled_batch(n=8)
    fn = snapped(weighted_sum({"c": (1.0, correctness_reward), "f": (0.2, format_reward)}), bits=4)
    expected = correctness_reward(problems, rollout) + 0.1875 * format_reward(problems, rollout)
    assert torch.equal(fn(problems, rollout), expected)


def test_snap_input_errors() -> None:
    with pytest.raises(ValueError, match=r"\|r\| <= 4 for bits = 8"):
        snap_rewards(torch.tensor([5.0]))
    with pytest.raises(ValueError, match=r"bits must be an int in \[0, 10\]"):
        snap_rewards(torch.tensor([0.5]), bits=11)
    with pytest.raises(ValueError, match=r"bits must be an int in \[0, 10\]"):
        snapped(correctness_reward, bits=-1)
    with pytest.raises(ValueError, match="rewards must be finite"):
        snap_rewards(torch.tensor([math.nan]))


# ----------------------------------------------------------------------------- partial credit

tokens = st.integers(0, 13)


@given(data=st.data(), batch=st.integers(1, 6), r_width=st.integers(1, 7), a_width=st.integers(1, 7))
def test_partial_credit_and_prefix_match_loops(data: st.DataObject, batch: int, r_width: int, a_width: int) -> None:
    responses = torch.tensor(data.draw(st.lists(st.lists(tokens, min_size=r_width, max_size=r_width), min_size=batch,
                                                max_size=batch)))  # fmt: skip
    answers = torch.tensor(data.draw(st.lists(st.lists(tokens, min_size=a_width, max_size=a_width), min_size=batch,
                                              max_size=batch)))  # fmt: skip
    n_resp = torch.tensor(data.draw(st.lists(st.integers(0, r_width), min_size=batch, max_size=batch)))
    n_ans = torch.tensor(data.draw(st.lists(st.integers(1, a_width), min_size=batch, max_size=batch)))
    matches = answer_position_matches(responses, n_resp, answers, n_ans)
    credit = partial_credit(responses, n_resp, answers, n_ans)
    prefix = prefix_match_length(responses, n_resp, answers, n_ans)
    for i in range(batch):
        y = responses[i, : int(n_resp[i])].tolist()
        a = answers[i, : int(n_ans[i])].tolist()
        row = [j < len(y) and y[j] == a[j] for j in range(len(a))]
        assert matches[i, : len(a)].tolist() == row and not matches[i, len(a) :].any()
        assert credit[i].item() == pytest.approx(sum(row) / len(a), abs=1e-7)
        k = 0
        while k < len(a) and row[k]:
            k += 1
        assert prefix[i].item() == k


@pytest.mark.parametrize("kind", ["copy", "reverse", "add"])
def test_partial_credit_is_one_exactly_when_correct(kind: str) -> None:
    problems, rollout = sampled_batch(seed=3, n=200, kind=kind, level=2)
    # half the batch answers correctly, so both outcomes are exercised
    half = torch.arange(len(problems)) % 2 == 0
    responses = [
        problems.answers[i, : int(problems.answer_lengths[i])].tolist()
        if half[i]
        else rollout.responses[i, : int(rollout.response_lengths[i])].tolist()
        for i in range(len(problems))
    ]
    terminated = [bool(half[i]) or bool(rollout.terminated[i]) for i in range(len(problems))]
    mixed = make_rollout(problems, responses, terminated, rollout.max_new_tokens)
    correct = correctness_reward(problems, mixed)
    credit = partial_credit_reward(problems, mixed)
    assert torch.equal(credit == 1.0, correct == 1.0)
    assert bool((credit >= correct).all()) and bool((credit <= 1).all())
    prefix_credit = prefix_credit_reward(problems, mixed)
    assert bool((prefix_credit <= credit).all()) and torch.equal(prefix_credit == 1.0, correct == 1.0)


def test_partial_credit_by_hand() -> None:
    problems = sample_problems("reverse", 3, 1, generator=gen(0))
    a = problems.answers[0, :4].tolist()  # d3 d2 d1 EOS
    wrong = (a[1] + 1) % 10
    cases = {
        (a[0], wrong, a[2], EOS): (3 / 4, 1),  # one wrong digit
        (a[0], a[1], a[2], 7, EOS): (3 / 4, 3),  # one digit too many: EOS misplaced
        (a[0], EOS): (1 / 4, 1),  # stopped early
        (EOS,): (0.0, 0),
    }
    for response, (credit, prefix) in cases.items():
        rollout = make_rollout(problems, [list(response)], [True], 5)
        assert partial_credit_reward(problems, rollout).item() == pytest.approx(credit)
        assert prefix_credit_reward(problems, rollout).item() == pytest.approx(prefix / 4)


def test_partial_credit_input_errors() -> None:
    r, a = torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)
    n_r, n_a = torch.tensor([3, 1]), torch.tensor([4, 2])
    with pytest.raises(TypeError, match="responses must be an integer tensor"):
        partial_credit(r.float(), n_r, a, n_a)
    with pytest.raises(ValueError, match="answers must have shape \\[B, L\\]"):
        partial_credit(r, n_r, a[0], n_a)
    with pytest.raises(ValueError, match="same batch size"):
        partial_credit(r, n_r, a[:1], n_a)
    with pytest.raises(ValueError, match="response_lengths must lie in \\[0, 3\\]"):
        partial_credit(r, torch.tensor([4, 1]), a, n_a)
    with pytest.raises(ValueError, match="answer_lengths must be >= 1"):
        partial_credit(r, n_r, a, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="response_lengths must have shape \\[B\\] = \\[2\\]"):
        partial_credit(r, n_r[:1], a, n_a)
    with pytest.raises(ValueError, match="must not be empty"):
        partial_credit(r[:0], n_r[:0], a[:0], n_a[:0])
    problems, rollout = sampled_batch(n=4)
    with pytest.raises(ValueError, match="same batch size"):
        partial_credit_reward(problems.select(torch.arange(3)), rollout)


# ----------------------------------------------------------------------------- reward functions


def test_reward_function_combinators_match_direct_computation() -> None:
    problems, rollout = sampled_batch(seed=1, n=128)
    c, f, ln = (fn(problems, rollout) for fn in (correctness_reward, format_reward, length_reward))
    combo = weighted_sum(
        {"correct": (1.0, correctness_reward), "format": (0.5, format_reward), "len": (-0.2, length_reward)}
    )
    torch.testing.assert_close(combo(problems, rollout), c + 0.5 * f - 0.2 * ln)
    toy = weighted_reward({"correctness": 1.0, "format": 0.5, "length": -0.2})
    torch.testing.assert_close(combo(problems, rollout), toy(problems, rollout))
    gate = gated(partial_credit_reward, format_reward, otherwise=-1.0)
    pc = partial_credit_reward(problems, rollout)
    assert gate(problems, rollout).tolist() == [
        p if ok else -1.0 for p, ok in zip(pc.tolist(), f.tolist(), strict=True)
    ]
    assert 0.0 < float(f.mean()) < 1.0, "the batch must contain both well-formed and malformed responses"
    clip = clipped(combo, low=0.0, high=1.0)
    assert clip(problems, rollout).tolist() == [min(max(v, 0.0), 1.0) for v in combo(problems, rollout).tolist()]


def test_reward_function_errors_name_the_component() -> None:
    problems, rollout = sampled_batch(n=4)
    bad_shape = weighted_sum({"ok": (1.0, correctness_reward), "broken": (1.0, lambda p, r: torch.zeros(3))})
    with pytest.raises(ValueError, match="terms\\['broken'\\] must return shape \\[B\\] = \\[4\\]"):
        bad_shape(problems, rollout)
    nan = weighted_sum({"nan": (1.0, lambda p, r: torch.full((4,), math.nan))})
    with pytest.raises(ValueError, match="terms\\['nan'\\] returned NaN"):
        nan(problems, rollout)
    with pytest.raises(TypeError, match="must be a \\(weight, reward_fn\\) pair"):
        weighted_sum({"x": correctness_reward})
    with pytest.raises(TypeError, match="reward_fn must be callable"):
        weighted_sum({"x": (1.0, 3)})
    with pytest.raises(ValueError, match="non-empty"):
        weighted_sum({})
    half = gated(correctness_reward, lambda p, r: torch.full((4,), 0.5))
    with pytest.raises(ValueError, match="gate_fn output must contain only 0 and 1"):
        half(problems, rollout)
    with pytest.raises(TypeError, match="gate_fn must be callable"):
        gated(correctness_reward, None)
    with pytest.raises(ValueError, match="low must be < high"):
        clipped(correctness_reward, 1.0, 0.0)
    with pytest.raises(TypeError, match=r"must return a torch\.Tensor"):
        clipped(lambda p, r: [0.0] * 4, 0.0, 1.0)(problems, rollout)


# ----------------------------------------------------------------------------- shaping


@st.composite
def episodes(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    batch, width = draw(st.integers(1, 5)), draw(st.integers(1, 8))
    lengths = torch.tensor(draw(st.lists(st.integers(0, width), min_size=batch, max_size=batch)))
    values = draw(
        st.lists(st.floats(-5, 5, allow_nan=False), min_size=batch * (width + 1), max_size=batch * (width + 1))
    )
    potentials = torch.tensor(values, dtype=F64).view(batch, width + 1)
    rewards = torch.tensor(values[: batch * width], dtype=F64).view(batch, width).flip(1)
    gamma = draw(st.sampled_from([1.0, 0.99, 0.9, 0.5, 0.1]))
    return potentials, rewards, lengths, gamma


@given(episode=episodes())
def test_shaping_telescopes(episode: tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]) -> None:
    """sum_t gamma^t F_t = gamma^n Phi(s_n) - Phi(s_0), for every row, by a Python loop."""
    potentials, _, lengths, gamma = episode
    shaping = potential_shaping(potentials, response_mask(lengths, potentials.shape[1] - 1), gamma=gamma)
    for i, n in enumerate(lengths.tolist()):
        phi = potentials[i].tolist()
        total = math.fsum(gamma**t * shaping[i, t].item() for t in range(n))
        assert total == pytest.approx(gamma**n * phi[n] - phi[0], abs=1e-9)
        assert (shaping[i, n:] == 0).all()


@given(episode=episodes())
def test_discounted_returns_and_shaped_returns(episode: tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]) -> None:
    """G_t by a double loop, and G'_t = G_t + gamma^(n-t) Phi(s_n) - Phi(s_t) for the shaped rewards."""
    potentials, rewards, lengths, gamma = episode
    mask = response_mask(lengths, rewards.shape[1])
    returns = discounted_returns(rewards, mask, gamma=gamma)
    shaped = discounted_returns(rewards + potential_shaping(potentials, mask, gamma=gamma), mask, gamma=gamma)
    for i, n in enumerate(lengths.tolist()):
        r, phi = rewards[i].tolist(), potentials[i].tolist()
        for t in range(rewards.shape[1]):
            expected = math.fsum(gamma ** (k - t) * r[k] for k in range(t, n)) if t < n else 0.0
            assert returns[i, t].item() == pytest.approx(expected, abs=1e-9)
            shifted = expected + gamma ** (n - t) * phi[n] - phi[t] if t < n else 0.0
            assert shaped[i, t].item() == pytest.approx(shifted, abs=1e-9)


def test_progress_potential_by_a_loop() -> None:
    problems, rollout = sampled_batch(seed=2, n=64, kind="copy", level=3)
    args = (rollout.responses, rollout.response_lengths, problems.answers, problems.answer_lengths)
    k = prefix_match_length(*args)
    for terminal_zero in (True, False):
        phi = progress_potential(*args, scale=0.5, terminal_zero=terminal_zero)
        assert phi.shape == (64, rollout.responses.shape[1] + 1) and phi.dtype == F64
        for i in range(64):
            n = int(rollout.response_lengths[i])
            for t in range(phi.shape[1]):
                if t < n:
                    expected = 0.5 * min(t, int(k[i]))
                else:
                    expected = 0.0 if terminal_zero else 0.5 * min(n, int(k[i]))
                assert phi[i, t].item() == expected
    assert int(k.max()) >= 1, "some response must start correctly for the test to mean anything"


def test_shaping_input_errors() -> None:
    phi = torch.zeros(2, 4, dtype=F64)
    good = response_mask(torch.tensor([3, 1]), 3)
    with pytest.raises(ValueError, match=r"mask rows must be ones followed by zeros.*row 1"):
        potential_shaping(phi, torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="mask must contain only 0 and 1"):
        potential_shaping(phi, torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="mask must have shape \\[2, 3\\]"):
        potential_shaping(phi, torch.ones(2, 4))
    with pytest.raises(ValueError, match="gamma must be in \\(0, 1\\]"):
        potential_shaping(phi, good, gamma=0.0)
    with pytest.raises(ValueError, match="gamma must be in \\(0, 1\\]"):
        discounted_returns(phi[:, :3], good, gamma=1.5)
    with pytest.raises(TypeError, match="gamma must be a real number"):
        discounted_returns(phi[:, :3], good, gamma=None)
    with pytest.raises(ValueError, match="potentials must be finite"):
        potential_shaping(torch.full((2, 4), math.inf), good)
    with pytest.raises(ValueError, match="at least 2 columns"):
        potential_shaping(torch.zeros(2, 1), torch.ones(2, 0))
    with pytest.raises(TypeError, match="rewards must be a floating-point tensor"):
        discounted_returns(torch.zeros(2, 3, dtype=torch.long), good)
    with pytest.raises(ValueError, match="width must be an int >= max\\(response_lengths\\) = 3"):
        response_mask(torch.tensor([3, 1]), 2)
    with pytest.raises(ValueError, match="response_lengths must be >= 0"):
        response_mask(torch.tensor([-1]))
    problems, rollout = sampled_batch(n=4)
    args = (rollout.responses, rollout.response_lengths, problems.answers, problems.answer_lengths)
    with pytest.raises(TypeError, match="terminal_zero must be a bool"):
        progress_potential(*args, terminal_zero=1)
    with pytest.raises(ValueError, match="scale must be a finite number"):
        progress_potential(*args, scale=math.nan)


# ----------------------------------------------------------------------------- expected correctness


def test_expected_correctness_is_the_product_of_next_token_probabilities() -> None:
    """pi(answer | prompt) by feeding the GRU one token at a time (the sampler's code path)."""
    policy = make_policy(4).double()
    problems = Task("add", 2).sample(6, gen(4))
    got = expected_correctness(policy, problems, temperature=0.7)
    for i in range(len(problems)):
        prompt = problems.prompts[i, : int(problems.prompt_lengths[i])]
        answer = problems.answers[i, : int(problems.answer_lengths[i])]
        logits, state = policy(prompt[None, :])
        prob = 1.0
        for token in answer.tolist():
            prob *= torch.softmax(logits[0, -1] / 0.7, dim=-1)[token].item()
            logits, state = policy(torch.tensor([[token]]), state)
        assert got[i].item() == pytest.approx(prob, rel=1e-10)


def test_expected_correctness_errors() -> None:
    problems = Task("copy", 2).sample(3, gen(0))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        expected_correctness(make_policy(0), problems, temperature=0.0)
    with pytest.raises(ValueError, match="problems must not be empty"):
        expected_correctness(make_policy(0), problems.select(torch.arange(0)))
