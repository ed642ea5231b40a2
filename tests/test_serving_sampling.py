"""Sampling semantics (vLLM / NeMo RL) against exact distributions computed by brute force.

The reference below loops over the vocabulary in Python floats (float64) and implements each
filter from its definition (kept sets as Python sets), independently of the library's
sort / cumsum / scatter implementation.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy import stats

from nemo_rl_theory.logprobs import token_logprobs
from nemo_rl_theory.serving.sampling import (
    SAMPLING_EPS,
    SamplingParams,
    filter_logits,
    generate_completion,
    mask_out_neg_inf_logprobs,
    recompute_logprobs,
    sample_next,
    sampling_distribution,
    sampling_logprobs,
)
from nemo_rl_theory.toy import EOS, PAD, Task, make_policy, sft_policy

# ----------------------------------------------------------------------------------------
# Brute-force reference (float64, loops over the vocabulary)
# ----------------------------------------------------------------------------------------


def ref_kept(z: list[float], params: SamplingParams) -> tuple[set[int], list[float]]:
    """Kept set and tempered logits, from the definitions (vLLM's order: min-p, top-k, top-p).

    Greedy: vLLM processes nothing (no division, filters reset), so every token is kept.
    """
    vocab = len(z)
    if params.temperature < SAMPLING_EPS:
        return set(range(vocab)), list(z)
    u = [x / params.temperature for x in z]
    m = max(u)
    e = [math.exp(x - m) if x != -math.inf else 0.0 for x in u]
    total = sum(e)
    p = [x / total for x in e]
    kept = set(range(vocab))
    if params.min_p > 0:
        threshold = params.min_p * max(p)
        kept = {v for v in kept if p[v] >= threshold}
    if 0 < params.top_k < vocab:
        values = sorted((u[v] for v in kept), reverse=True)
        kth = values[params.top_k - 1] if len(values) >= params.top_k else -math.inf
        kept = {v for v in kept if u[v] >= kth}
    if params.top_p < 1:
        # Decreasing u; among ties the larger id first (the library's stable ascending sort).
        order = sorted(kept, key=lambda v: (u[v], v), reverse=True)
        mass_k = sum(e[v] for v in order)
        before = 0.0
        new = set()
        for v in order:
            if before / mass_k < params.top_p:
                new.add(v)
            before += e[v]
        kept = new
    return kept, u


def ref_distribution(z: list[float], params: SamplingParams) -> list[float]:
    if params.temperature < SAMPLING_EPS:  # the arg-max (the first one on ties) with certainty
        best = max(range(len(z)), key=lambda v: (z[v], -v))
        return [1.0 if v == best else 0.0 for v in range(len(z))]
    kept, u = ref_kept(z, params)
    m = max(u[v] for v in kept)
    e = [math.exp(u[v] - m) if v in kept else 0.0 for v in range(len(z))]
    total = sum(e)
    return [x / total for x in e]


def top_p_margin(z: list[float], params: SamplingParams) -> float:
    """Distance of every normalised 'mass before' to p (small = top-p boundary is ambiguous in fp)."""
    if params.top_p >= 1 or params.temperature < SAMPLING_EPS:
        return math.inf
    no_p = SamplingParams(params.temperature, 1.0, params.top_k, params.min_p)
    kept, u = ref_kept(z, no_p)
    order = sorted(kept, key=lambda v: (u[v], v), reverse=True)
    m = max(u[v] for v in kept)
    e = {v: math.exp(u[v] - m) for v in kept}
    total = sum(e.values())
    margin, before = math.inf, 0.0
    for v in order:
        margin = min(margin, abs(before / total - params.top_p))
        before += e[v]
    return margin


def kept_of(logits: torch.Tensor, params: SamplingParams) -> set[int]:
    return {int(v) for v in torch.nonzero(torch.isfinite(filter_logits(logits, params))).flatten()}


PARAM_CASES = [
    SamplingParams(),
    SamplingParams(temperature=0.7),
    SamplingParams(temperature=1.5, top_k=3),
    SamplingParams(top_p=0.8),
    SamplingParams(temperature=0.6, top_p=0.5),
    SamplingParams(min_p=0.2),
    SamplingParams(temperature=1.3, min_p=0.05, top_k=5, top_p=0.9),
    SamplingParams(temperature=0.9, top_k=4, top_p=0.7),
    SamplingParams(top_k=0),
    SamplingParams(top_k=1),
    SamplingParams(top_k=100),
    SamplingParams(temperature=0.0),
]


@pytest.mark.parametrize("params", PARAM_CASES, ids=repr)
def test_distribution_matches_brute_force(params: SamplingParams) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 12, generator=gen, dtype=torch.float64) * 2.0
    for row in logits:
        z = row.tolist()
        assert top_p_margin(z, params) > 1e-9
        kept, _ = ref_kept(z, params)
        assert kept_of(row, params) == kept
        expected = torch.tensor(ref_distribution(z, params), dtype=torch.float64)
        torch.testing.assert_close(sampling_distribution(row, params), expected, rtol=0, atol=1e-12)
        # float32 route (what the server runs): same kept set, probabilities to fp32 accuracy.
        assert kept_of(row.float(), params) == kept
        torch.testing.assert_close(sampling_distribution(row.float(), params).double(), expected, rtol=0, atol=2e-6)


def test_filter_keeps_tempered_logits_on_the_kept_set() -> None:
    z = torch.tensor([0.3, -1.2, 2.0, 0.9, 1.7], dtype=torch.float64)
    out = filter_logits(z, SamplingParams(temperature=0.5, top_k=3))
    assert torch.equal(out[[2, 3, 4]], z[[2, 3, 4]] / 0.5)
    assert torch.isinf(out[[0, 1]]).all() and (out[[0, 1]] < 0).all()
    assert torch.equal(filter_logits(z, SamplingParams(temperature=2.0)), z / 2.0)


def test_top_k_keeps_ties_at_the_kth_value() -> None:
    z = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0, 0.0])
    assert kept_of(z, SamplingParams(top_k=1)) == {1, 2, 4}
    assert kept_of(z, SamplingParams(top_k=2)) == {1, 2, 4}
    assert kept_of(z, SamplingParams(top_k=4)) == {1, 2, 3, 4}
    z = torch.tensor([5.0, 4.0, 4.0, 4.0, 1.0])
    assert kept_of(z, SamplingParams(top_k=2)) == {0, 1, 2, 3}


def test_top_p_always_keeps_the_most_likely_token() -> None:
    z = torch.tensor([0.1, 0.2, 0.0, -0.3])  # probabilities about 0.27, 0.30, 0.25, 0.18
    for p in (1e-9, 0.01, 0.2, 0.29):
        assert kept_of(z, SamplingParams(top_p=p)) == {1}
    # Smallest prefix (in decreasing probability) whose mass reaches p.
    probs = torch.softmax(z.double(), -1)
    p_two = float(probs[1] + probs[0])
    assert kept_of(z, SamplingParams(top_p=float(probs[1]) + 1e-4)) == {0, 1}
    assert kept_of(z, SamplingParams(top_p=p_two + 1e-4)) == {0, 1, 2}


def test_top_p_ties_break_by_larger_id_first() -> None:
    z = torch.zeros(4, dtype=torch.float64)  # uniform: mass before the j-th ranked token is j/4
    assert kept_of(z, SamplingParams(top_p=0.3)) == {3, 2}
    assert kept_of(z, SamplingParams(top_p=0.25)) == {3}


def test_min_p_threshold_is_relative_to_the_top_probability() -> None:
    p = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625], dtype=torch.float64)
    z = p.log()
    assert kept_of(z, SamplingParams(min_p=0.5)) == {0, 1}
    assert kept_of(z, SamplingParams(min_p=0.25)) == {0, 1, 2}
    assert kept_of(z, SamplingParams(min_p=1.0)) == {0}
    # min-p sees the tempered distribution: at tau = 2 the ratios are square roots.
    assert kept_of(z, SamplingParams(min_p=0.5, temperature=2.0)) == {0, 1, 2}


def test_tiny_and_huge_temperatures() -> None:
    z = torch.tensor([0.0, 1.0, 0.9, -2.0], dtype=torch.float64)
    sharp = sampling_distribution(z, SamplingParams(temperature=1e-3))  # not greedy: 1e-3 > 1e-5
    # Not greedy: the runner-up (gap 0.1, so 100 nats at tau = 1e-3) keeps mass e^-100 / (1 + ...).
    assert math.isclose(float(sharp[2]), math.exp(-100.0), rel_tol=1e-12)
    expected = torch.tensor(ref_distribution(z.tolist(), SamplingParams(temperature=1e-3)), dtype=torch.float64)
    torch.testing.assert_close(sharp, expected, rtol=0, atol=1e-15)
    greedy = sampling_distribution(z, SamplingParams(temperature=SAMPLING_EPS / 2))
    assert torch.equal(greedy, torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    flat = sampling_distribution(z.float(), SamplingParams(temperature=1e6))
    assert float((flat - 0.25).abs().max()) < 1e-5
    assert math.isclose(float(flat.double().sum()), 1.0, abs_tol=1e-6)


def test_greedy_is_argmax_and_draws_no_noise() -> None:
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(64, 9, generator=gen)
    logits[0] = torch.tensor([1.0, 4.0, 4.0, 0, 0, 0, 0, 0, 0])  # tie: the first arg-max
    state = gen.get_state()
    tokens, lp = sample_next(logits, SamplingParams(temperature=0.0), gen)
    assert torch.equal(tokens, logits.argmax(-1)) and int(tokens[0]) == 1
    assert torch.equal(gen.get_state(), state)
    # vLLM returns the log-softmax of the untempered, unfiltered logits for greedy requests.
    torch.testing.assert_close(lp, torch.log_softmax(logits, -1).gather(-1, tokens[:, None])[:, 0], rtol=0, atol=1e-6)
    greedy_k = SamplingParams(temperature=0.0, top_k=1, top_p=0.1, min_p=0.9)  # filters ignored
    assert torch.equal(sampling_logprobs(logits, tokens, greedy_k), lp)
    assert torch.isfinite(sampling_logprobs(logits, (tokens + 1) % 9, greedy_k)).all()


def test_half_precision_logits_are_processed_in_float32() -> None:
    z = torch.tensor([0.5, 1.5, -1.0], dtype=torch.bfloat16)
    out = filter_logits(z, SamplingParams(temperature=0.5))
    assert out.dtype == torch.float32
    assert torch.equal(out, z.float() / 0.5)


@pytest.mark.parametrize(
    "params",
    [SamplingParams(temperature=0.8, top_k=4, top_p=0.9), SamplingParams(temperature=1.2, min_p=0.15)],
    ids=repr,
)
def test_sampled_frequencies_fit_the_exact_distribution(params: SamplingParams) -> None:
    z = torch.tensor([1.2, 0.3, -0.5, 2.0, 0.0, 1.0, -1.5])
    n = 6000
    tokens, lp = sample_next(z.expand(n, -1), params, torch.Generator().manual_seed(123))
    expected = ref_distribution(z.double().tolist(), params)
    counts = torch.bincount(tokens, minlength=len(z)).tolist()
    kept = [v for v, q in enumerate(expected) if q > 0]
    assert all(counts[v] == 0 for v in range(len(z)) if v not in kept)
    result = stats.chisquare([counts[v] for v in kept], [n * expected[v] for v in kept])
    assert result.pvalue > 1e-3, (counts, expected)
    # The returned log-probs are those of the processed distribution.
    exact = torch.tensor(expected, dtype=torch.float64)[tokens]
    torch.testing.assert_close(lp.double().exp(), exact, rtol=1e-6, atol=0)


def test_sampling_logprobs_is_the_log_of_the_distribution() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 11, generator=gen, dtype=torch.float64)
    params = SamplingParams(temperature=0.9, top_k=6, top_p=0.85, min_p=0.02)
    tokens = torch.randint(0, 11, (3, 5), generator=gen)
    lp = sampling_logprobs(logits, tokens, params)
    dist = sampling_distribution(logits, params).gather(-1, tokens[..., None])[..., 0]
    assert torch.equal(torch.isneginf(lp), dist == 0)
    finite = torch.isfinite(lp)
    torch.testing.assert_close(lp[finite], dist[finite].log(), rtol=0, atol=1e-12)
    # The trainer's route, written out: the library's token_logprobs on filter_logits' output.
    assert torch.equal(lp, token_logprobs(filter_logits(logits, params), tokens))


# ----------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------

logit_rows = st.lists(st.floats(-8.0, 8.0, allow_nan=False, width=64), min_size=2, max_size=12)


@given(
    z=logit_rows,
    temperature=st.floats(0.05, 5.0),
    top_p=st.floats(0.01, 1.0),
    top_k=st.integers(-1, 14),
    min_p=st.floats(0.0, 1.0),
)
def test_property_distribution_sums_to_one_and_matches_reference(z, temperature, top_p, top_k, min_p) -> None:
    params = SamplingParams(temperature, top_p, top_k, min_p)
    assume(top_p_margin(z, params) > 1e-9)
    probs = sampling_distribution(torch.tensor(z, dtype=torch.float64), params)
    assert (probs >= 0).all()
    assert math.isclose(float(probs.sum()), 1.0, abs_tol=1e-12)
    kept = kept_of(torch.tensor(z, dtype=torch.float64), params)
    assert kept == ref_kept(z, params)[0]
    assert any(z[v] == max(z) for v in kept)  # a most likely token always survives


@given(z=logit_rows, p1=st.floats(0.01, 1.0), p2=st.floats(0.01, 1.0), top_k=st.integers(-1, 14))
def test_property_kept_set_grows_with_top_p(z, p1, p2, top_k) -> None:
    lo, hi = sorted((p1, p2))
    for dtype in (torch.float32, torch.float64):
        t = torch.tensor(z, dtype=dtype)
        assert kept_of(t, SamplingParams(top_p=lo, top_k=top_k)) <= kept_of(t, SamplingParams(top_p=hi, top_k=top_k))


@given(z=logit_rows, k1=st.integers(1, 14), k2=st.integers(1, 14), top_p=st.floats(0.01, 1.0))
def test_property_kept_set_grows_with_top_k(z, k1, k2, top_p) -> None:
    lo, hi = sorted((k1, k2))
    t = torch.tensor(z, dtype=torch.float64)
    small, large = SamplingParams(top_k=lo, top_p=top_p), SamplingParams(top_k=hi, top_p=top_p)
    assume(top_p_margin(z, small) > 1e-9 and top_p_margin(z, large) > 1e-9)
    assert kept_of(t, small) <= kept_of(t, large)
    if top_p == 1.0:
        assert len(kept_of(t, small)) >= min(lo, len(z))


@given(z=logit_rows, m1=st.floats(0.0, 1.0), m2=st.floats(0.0, 1.0))
def test_property_kept_set_shrinks_with_min_p(z, m1, m2) -> None:
    lo, hi = sorted((m1, m2))
    t = torch.tensor(z, dtype=torch.float64)
    assert kept_of(t, SamplingParams(min_p=hi)) <= kept_of(t, SamplingParams(min_p=lo))


# ----------------------------------------------------------------------------------------
# Completions on the toy policy
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy():
    return sft_policy(Task("reverse", 4), steps=20)


@pytest.fixture(scope="module")
def prompts():
    problems = Task("reverse", 4).sample(5, torch.Generator().manual_seed(3))
    rows = [problems.prompts[i, : int(problems.prompt_lengths[i])].tolist() for i in range(5)]
    rows[2] = rows[2][:3]  # ragged prompts: rows start sampling at different steps
    return rows


SERVE_CASES = [
    SamplingParams(),
    SamplingParams(temperature=1.4),
    SamplingParams(temperature=0.8, top_k=3, top_p=0.9),
    SamplingParams(min_p=0.1, top_p=0.95),
    SamplingParams(temperature=0.0),
]


def _padded(rows: list[list[float]]) -> torch.Tensor:
    out = torch.zeros(len(rows), max(len(r) for r in rows))
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def test_generate_completion_is_deterministic_under_the_same_seed(policy, prompts) -> None:
    params = SamplingParams(temperature=1.3)
    first = generate_completion(policy, prompts, params, max_tokens=8, generator=torch.Generator().manual_seed(7))
    second = generate_completion(policy, prompts, params, max_tokens=8, generator=torch.Generator().manual_seed(7))
    assert first == second
    others = [
        generate_completion(policy, prompts, params, max_tokens=8, generator=torch.Generator().manual_seed(s))[0]
        for s in (8, 9)
    ]
    assert any(o != first[0] for o in others)
    # A Tensor[B, P] prompt gives the same result as the equivalent lists.
    same = [p for p in prompts if len(p) == len(prompts[0])]
    as_tensor = generate_completion(
        policy, torch.tensor(same), params, max_tokens=8, generator=torch.Generator().manual_seed(7)
    )
    as_lists = generate_completion(policy, same, params, max_tokens=8, generator=torch.Generator().manual_seed(7))
    assert as_tensor == as_lists
    # A right-padded Tensor[B, P] (as Problems.prompts) drops its trailing PAD.
    padded = torch.full((len(prompts), max(len(p) for p in prompts) + 2), PAD)
    for i, p in enumerate(prompts):
        padded[i, : len(p)] = torch.tensor(p)
    from_padded = generate_completion(policy, padded, params, max_tokens=8, generator=torch.Generator().manual_seed(7))
    assert from_padded == first
    assert torch.equal(
        recompute_logprobs(policy, padded, first[0], params), recompute_logprobs(policy, prompts, first[0], params)
    )


def test_finish_reasons_and_lengths(policy, prompts) -> None:
    tokens, logprobs, finish = generate_completion(
        policy, prompts, SamplingParams(temperature=1.5), max_tokens=6, generator=torch.Generator().manual_seed(0)
    )
    for toks, lps, reason in zip(tokens, logprobs, finish, strict=True):
        assert len(toks) == len(lps) and 1 <= len(toks) <= 6
        if reason == "stop":
            assert toks[-1] == EOS and EOS not in toks[:-1]
        else:
            assert reason == "length" and len(toks) == 6 and EOS not in toks
    tokens, _, finish = generate_completion(
        policy, prompts, SamplingParams(), max_tokens=5, generator=torch.Generator().manual_seed(0), stop_token_ids=()
    )
    assert finish == ["length"] * len(prompts) and all(len(t) == 5 for t in tokens)


def test_greedy_completion_follows_the_argmax(policy, prompts) -> None:
    tokens, logprobs, _ = generate_completion(
        policy, prompts, SamplingParams(temperature=0.0), max_tokens=6, generator=torch.Generator().manual_seed(0)
    )
    for prompt, toks, lps in zip(prompts, tokens, logprobs, strict=True):
        seq = torch.tensor([prompt + toks])
        logits, _ = policy(seq[:, :-1])
        steps = logits[0, len(prompt) - 1 :]
        assert toks == steps.argmax(-1).tolist()
        model_lp = torch.log_softmax(steps, -1).gather(-1, torch.tensor(toks)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(lps), model_lp, rtol=0, atol=1e-5)


@pytest.mark.parametrize("params", SERVE_CASES, ids=repr)
def test_served_logprobs_equal_recomputed(policy, prompts, params) -> None:
    tokens, logprobs, _ = generate_completion(
        policy, prompts, params, max_tokens=8, generator=torch.Generator().manual_seed(11)
    )
    served = _padded(logprobs)
    # Same kernels at the same shapes: bit-for-bit.
    decode = recompute_logprobs(policy, prompts, tokens, params, route="decode", mask_neg_inf=False)
    assert decode.dtype == torch.float32 and torch.equal(decode, served)
    # The trainer's teacher-forced pass: the same kept sets, the logits differ by fp32 rounding only.
    teacher = recompute_logprobs(policy, prompts, tokens, params, mask_neg_inf=False)
    assert torch.isfinite(teacher).all()
    assert float((teacher - served).abs().max()) < 1e-5


def test_each_row_scored_alone_agrees_to_float32_rounding(policy, prompts) -> None:
    # Another batch layout (one row instead of five) may change kernels and summation order:
    # no bitwise promise, but the same kept sets and the same values to float32 rounding.
    params = SamplingParams(temperature=0.8, top_k=3, top_p=0.9)
    tokens, logprobs, _ = generate_completion(
        policy, prompts, params, max_tokens=8, generator=torch.Generator().manual_seed(4)
    )
    for prompt, toks, served in zip(prompts, tokens, logprobs, strict=True):
        for route in ("teacher_forced", "decode"):
            alone = recompute_logprobs(policy, [prompt], [toks], params, route=route, mask_neg_inf=False)[0]
            assert torch.isfinite(alone).all()
            assert float((alone - torch.tensor(served)).abs().max()) < 1e-5


def test_masked_out_of_set_token_gets_no_gradient_and_stays_in_the_mask() -> None:
    # NeMo RL: the -inf log-prob becomes a constant 0 (no gradient, finite); its loss keeps the
    # original token mask, so the position still counts in a token mean.
    z = torch.tensor([[2.0, 0.98, 1.0, -1.0]], requires_grad=True)
    token, token_mask = torch.tensor([1]), torch.ones(1)
    lp = sampling_logprobs(z, token, SamplingParams(top_k=2))
    assert torch.isneginf(lp).all()
    masked, kept = mask_out_neg_inf_logprobs(lp, token_mask)
    loss = -(torch.exp(masked - masked.detach()) * token_mask).sum() / token_mask.sum()
    loss.backward()
    assert masked.item() == 0.0 and kept.item() == 0.0 and loss.item() == -1.0
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_token_outside_the_trainers_kept_set_is_masked_as_nemo_rl_does(policy, prompts) -> None:
    wide = SamplingParams(temperature=1.5)
    tokens, _, _ = generate_completion(policy, prompts, wide, max_tokens=8, generator=torch.Generator().manual_seed(2))
    narrow = SamplingParams(top_k=1)  # the trainer keeps only the arg-max
    raw = recompute_logprobs(policy, prompts, tokens, narrow, mask_neg_inf=False)
    lengths = torch.tensor([len(t) for t in tokens])
    valid = torch.arange(raw.shape[1])[None, :] < lengths[:, None]
    outside = torch.isneginf(raw) & valid
    assert outside.any() and (~outside & valid).any()
    masked = recompute_logprobs(policy, prompts, tokens, narrow)
    assert torch.equal(masked[outside], torch.zeros(int(outside.sum())))
    assert torch.equal(masked[~outside], raw[~outside])
    _, kept = mask_out_neg_inf_logprobs(raw, valid.float())
    assert torch.equal(kept.bool(), valid & ~outside)


def test_mask_out_neg_inf_logprobs() -> None:
    lp = torch.tensor([[-0.5, -math.inf, -1.0], [-math.inf, -2.0, -math.inf]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    out, kept = mask_out_neg_inf_logprobs(lp, mask)
    assert torch.equal(out, torch.tensor([[-0.5, 0.0, 0.0], [0.0, -2.0, 0.0]]))
    assert torch.equal(kept, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    out_b, kept_b = mask_out_neg_inf_logprobs(lp, mask.bool())
    assert torch.equal(out_b, out) and kept_b.dtype == torch.bool and torch.equal(kept_b, kept.bool())


def test_empty_completion_rows_and_untrained_policy() -> None:
    pol = make_policy(1)
    out = recompute_logprobs(pol, [[14, 1, 12], [14, 2]], [[], [3, 13]], SamplingParams())
    assert out.shape == (2, 2) and torch.equal(out[0], torch.zeros(2)) and (out[1] < 0).all()
    assert recompute_logprobs(pol, [[14]], [[]], SamplingParams()).shape == (1, 0)


# ----------------------------------------------------------------------------------------
# Bad inputs: every path names the argument and the allowed range
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"temperature": -0.1}, ValueError, r"temperature must be >= 0"),
        ({"temperature": float("nan")}, ValueError, r"temperature must be a finite number"),
        ({"temperature": float("inf")}, ValueError, r"temperature must be a finite number"),
        ({"temperature": "1"}, TypeError, r"temperature must be a real number"),
        ({"temperature": True}, TypeError, r"temperature must be a real number"),
        ({"top_p": 0.0}, ValueError, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, ValueError, r"top_p must be in \(0, 1\]"),
        ({"top_p": -0.2}, ValueError, r"top_p must be in \(0, 1\]"),
        ({"top_p": float("nan")}, ValueError, r"top_p must be a finite number"),
        ({"top_p": None}, TypeError, r"top_p must be a real number"),
        ({"top_k": -2}, ValueError, r"top_k must be -1 or 0 \(disabled\) or >= 1"),
        ({"top_k": 2.0}, TypeError, r"top_k must be an int"),
        ({"top_k": True}, TypeError, r"top_k must be an int"),
        ({"min_p": -0.01}, ValueError, r"min_p must be in \[0, 1\]"),
        ({"min_p": 1.01}, ValueError, r"min_p must be in \[0, 1\]"),
        ({"min_p": float("inf")}, ValueError, r"min_p must be a finite number"),
        ({"min_p": "0"}, TypeError, r"min_p must be a real number"),
    ],
)
def test_sampling_params_rejects(kwargs, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        SamplingParams(**kwargs)


def test_sampling_params_accepts_the_boundaries() -> None:
    for kwargs in ({"temperature": 0}, {"top_p": 1}, {"top_k": 0}, {"top_k": -1}, {"min_p": 0}, {"min_p": 1}):
        SamplingParams(**kwargs)
    assert SamplingParams(temperature=0).greedy and SamplingParams(temperature=SAMPLING_EPS / 2).greedy
    assert not SamplingParams(temperature=SAMPLING_EPS).greedy


def test_filter_and_logprob_bad_inputs() -> None:
    ok = SamplingParams()
    z = torch.zeros(2, 4)
    nan, inf = torch.tensor([0.0, float("nan")]), torch.tensor([0.0, float("inf")])
    all_neg_inf, long_tokens = torch.full((2, 3), -float("inf")), torch.zeros(3, dtype=torch.long)
    bv = r"logits must have shape \[B, V\]"
    cases = [
        (lambda: filter_logits([0.0, 1.0], ok), TypeError, r"logits must be a torch.Tensor"),
        (lambda: filter_logits(torch.zeros(2, 3, dtype=torch.long), ok), TypeError, r"logits must be a floating"),
        (lambda: filter_logits(torch.zeros(2, 0), ok), ValueError, r"logits must have a non-empty last"),
        (lambda: filter_logits(nan, ok), ValueError, r"logits must not contain NaN"),
        (lambda: filter_logits(inf, ok), ValueError, r"logits must not contain NaN or \+inf"),
        (lambda: filter_logits(all_neg_inf, ok), ValueError, r"logits has a row whose entries are all -inf"),
        (lambda: filter_logits(z, {"temperature": 1.0}), TypeError, r"params must be a SamplingParams"),
        (lambda: sampling_logprobs(z, long_tokens, ok), ValueError, r"tokens must have shape \[2\]"),
        (lambda: sampling_logprobs(z, torch.zeros(2), ok), TypeError, r"tokens must be an integer tensor"),
        (lambda: sampling_logprobs(z, torch.tensor([0, 4]), ok), ValueError, r"tokens must be ids in \[0, 4\)"),
        (lambda: sampling_logprobs(z, [0, 1], ok), TypeError, r"tokens must be a torch.Tensor"),
        (lambda: sample_next(torch.zeros(4), ok, torch.Generator()), ValueError, bv),
        (lambda: sample_next(torch.zeros(1, 2, 4), ok, torch.Generator()), ValueError, bv),
        (lambda: sample_next(z, ok, 0), TypeError, r"generator must be a torch.Generator"),
        (lambda: mask_out_neg_inf_logprobs(z[0], torch.ones(3)), ValueError, r"logprobs and mask must have the same"),
        (lambda: mask_out_neg_inf_logprobs(nan, torch.ones(2)), ValueError, r"logprobs must not contain NaN"),
        (lambda: mask_out_neg_inf_logprobs([0.0], torch.ones(1)), TypeError, r"logprobs must be a torch.Tensor"),
        (lambda: mask_out_neg_inf_logprobs(torch.zeros(1), [1.0]), TypeError, r"mask must be a torch.Tensor"),
    ]
    for call, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            call()


def test_completion_bad_inputs() -> None:
    pol = make_policy(0)
    ok, gen = SamplingParams(), torch.Generator()
    prompt = [[14, 1, 2, 12]]

    def gen_call(**overrides):
        kwargs = {"policy": pol, "prompt_tokens": prompt, "params": ok, "max_tokens": 4, "generator": gen}
        kwargs.update(overrides)
        return lambda: generate_completion(**kwargs)

    def rec_call(**overrides):
        kwargs = {"policy": pol, "prompt_tokens": prompt, "completion_tokens": [[3, 13]], "params": ok}
        kwargs.update(overrides)
        return lambda: recompute_logprobs(**kwargs)

    cases = [
        (gen_call(max_tokens=0), ValueError, r"max_tokens must be >= 1"),
        (gen_call(max_tokens=2.0), TypeError, r"max_tokens must be an int"),
        (gen_call(max_tokens=True), TypeError, r"max_tokens must be an int"),
        (gen_call(prompt_tokens=[[]]), ValueError, r"prompt_tokens rows must be non-empty"),
        (gen_call(prompt_tokens=torch.full((1, 3), PAD)), ValueError, r"prompt_tokens rows must be non-empty"),
        (gen_call(prompt_tokens=[]), ValueError, r"prompt_tokens must hold at least one row"),
        (gen_call(prompt_tokens="1 2 3"), TypeError, r"prompt_tokens must be a Tensor\[B, L\] or a list"),
        (gen_call(prompt_tokens=[[14, 16]]), ValueError, r"prompt_tokens\[0\] has token ids outside \[0, 16\)"),
        (gen_call(prompt_tokens=[[14, -1]]), ValueError, r"prompt_tokens\[0\] has token ids outside"),
        (gen_call(prompt_tokens=[[14, 1.0]]), TypeError, r"prompt_tokens\[0\] must contain only int"),
        (gen_call(prompt_tokens=[14, 1]), TypeError, r"prompt_tokens\[0\] must be a list of int"),
        (gen_call(prompt_tokens=torch.tensor([14, 1])), ValueError, r"prompt_tokens must be Tensor\[B, L\]"),
        (gen_call(prompt_tokens=torch.tensor([[14.0, 1.0]])), TypeError, r"prompt_tokens must hold integer token ids"),
        (gen_call(stop_token_ids=(16,)), ValueError, r"stop_token_ids must be int ids in \[0, 16\)"),
        (gen_call(stop_token_ids="13"), TypeError, r"stop_token_ids must be a sequence"),
        (gen_call(policy="toy"), TypeError, r"policy must be a torch.nn.Module"),
        (gen_call(policy=torch.nn.GRU(2, 2)), TypeError, r"policy must be a toy policy"),
        (gen_call(params=None), TypeError, r"params must be a SamplingParams"),
        (gen_call(generator=7), TypeError, r"generator must be a torch.Generator"),
        (rec_call(completion_tokens=[[3], [4]]), ValueError, r"same number of rows"),
        (rec_call(completion_tokens=[[3, 99]]), ValueError, r"completion_tokens\[0\] has token ids outside"),
        (rec_call(route="prefill"), ValueError, r"route must be 'teacher_forced' or 'decode'"),
        (rec_call(mask_neg_inf=1), TypeError, r"mask_neg_inf must be a bool"),
        (rec_call(prompt_tokens=[[]]), ValueError, r"prompt_tokens rows must be non-empty"),
    ]
    for call, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            call()


def test_policy_mode_is_restored() -> None:
    pol = make_policy(2).train()
    generate_completion(pol, [[14, 1, 12]], SamplingParams(), max_tokens=3, generator=torch.Generator())
    recompute_logprobs(pol, [[14, 1, 12]], [[1, 13]], SamplingParams(), route="decode")
    assert pol.training
