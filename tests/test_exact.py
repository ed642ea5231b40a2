"""The exact enumeration oracle, against hand-derived cases, independent routes and Monte Carlo."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_rl_theory import ClippedPGConfig, calculate_kl, clipped_pg_loss
from nemo_rl_theory import exact as ex

F64 = torch.float64


def policy(space: ex.ResponseSpace, seed: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random tabular policy: (table with grad, token log-probs [N, T], sequence log-probs [N])."""
    table = ex.random_table(space, scale=scale, seed=seed).requires_grad_()
    token_lp = ex.tabular_token_logprobs(table, space)
    return table, token_lp, ex.sequence_logprobs(token_lp, space)


# --- enumeration --------------------------------------------------------------------------------


def test_two_tokens_of_three_listed_in_order() -> None:
    space = ex.enumerate_responses(3, 2)
    assert space.tokens.tolist() == [list(p) for p in itertools.product(range(3), repeat=2)]
    assert space.mask.all()
    # Empty prefix is state 0; the three one-token prefixes are states 1..3.
    assert space.num_states == 4
    assert space.state_ids[:, 0].tolist() == [0] * 9
    assert space.state_ids[:, 1].tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert space.state_depth.tolist() == [0, 1, 1, 1]


def test_eos_ends_a_response_and_is_counted() -> None:
    space = ex.enumerate_responses(3, 3, eos_token_id=0)
    rows = {tuple(t[: int(n)].tolist()) for t, n in zip(space.tokens, space.lengths, strict=True)}
    # Responses: EOS at position 1, 2 or 3, or three non-EOS tokens (truncated).
    expected = {(0,)} | {(a, 0) for a in (1, 2)} | {(a, b, 0) for a in (1, 2) for b in (1, 2)}
    expected |= set(itertools.product((1, 2), repeat=3))
    assert rows == expected
    assert space.num_responses == len(expected) == ex.count_responses(3, 3, 0)
    # Padding after EOS is never counted and has no state.
    assert ((space.state_ids >= 0) == space.mask).all()
    # Non-terminal prefixes: empty, 2 of length 1, 4 of length 2.
    assert space.num_states == 1 + 2 + 4


@given(vocab=st.integers(1, 4), length=st.integers(1, 4), eos=st.booleans(), seed=st.integers(0, 100))
@settings(max_examples=30, deadline=None)
def test_probabilities_sum_to_one(vocab: int, length: int, eos: bool, seed: int) -> None:
    space = ex.enumerate_responses(vocab, length, eos_token_id=0 if eos else None)
    _, _, seq = policy(space, seed, scale=2.0)
    assert math.isclose(seq.exp().sum().item(), 1.0, rel_tol=0, abs_tol=1e-12)
    assert space.num_responses == ex.count_responses(vocab, length, 0 if eos else None)


def test_sequence_probability_is_the_product_of_softmaxes() -> None:
    # Independent route: walk the prefix tree with Python floats.
    space = ex.enumerate_responses(3, 3, eos_token_id=2)
    table, _, seq = policy(space, seed=4)
    probs = torch.softmax(table.detach(), -1).tolist()
    for i in range(space.num_responses):
        p = 1.0
        for t in range(int(space.lengths[i])):
            p *= probs[int(space.state_ids[i, t])][int(space.tokens[i, t])]
        assert math.isclose(seq[i].exp().item(), p, rel_tol=1e-12)


# --- expectations, KL ---------------------------------------------------------------------------


def test_expectation_of_uniform_policy_is_the_average() -> None:
    space = ex.enumerate_responses(2, 3)
    table = torch.zeros(space.num_states, 2, dtype=F64)
    seq = ex.sequence_logprobs(ex.tabular_token_logprobs(table, space), space)
    values = space.tokens.sum(dim=1).to(F64)
    assert ex.expectation(values, seq).item() == pytest.approx(1.5, abs=1e-15)
    vectors = torch.stack([values, values**2], dim=1)
    # E[S^2] for S ~ Binomial(3, 1/2): Var + mean^2 = 3/4 + 9/4 = 3.
    torch.testing.assert_close(ex.expectation(vectors, seq), torch.tensor([1.5, 3.0], dtype=F64))


def test_sequence_kl_is_the_chain_rule_sum_of_state_kls() -> None:
    # KL over sequences = sum over states of P(reach s) * KL(pi(.|s) || q(.|s)): an independent route.
    space = ex.enumerate_responses(3, 3, eos_token_id=0)
    _, _, seq_p = policy(space, seed=1)
    q_table, _, seq_q = policy(space, seed=2)
    p_table = ex.random_table(space, seed=1)
    log_p, log_q = torch.log_softmax(p_table, -1), torch.log_softmax(q_table.detach(), -1)
    state_kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # [num_states]
    # Probability of reaching a state = sum of the probabilities of the responses through it,
    # counted once per state.
    reach = torch.zeros(space.num_states, dtype=F64)
    for s in range(space.num_states):
        through = (space.state_ids == s).any(dim=1)
        reach[s] = seq_p.detach().exp()[through].sum()
    chain_rule = (reach * state_kl).sum()
    torch.testing.assert_close(ex.sequence_kl(seq_p, seq_q.detach()), chain_rule, rtol=1e-12, atol=1e-14)


def test_summed_token_k3_is_unbiased_for_the_sequence_kl() -> None:
    space = ex.enumerate_responses(3, 3)
    _, token_p, seq_p = policy(space, seed=5)
    _, token_q, seq_q = policy(space, seed=6)
    k3 = calculate_kl(token_p.detach(), token_q.detach(), input_clamp_value=None, output_clamp_value=None)
    summed = torch.where(space.mask, k3, 0.0).sum(dim=1)
    torch.testing.assert_close(
        ex.expectation(summed, seq_p.detach()), ex.sequence_kl(seq_p.detach(), seq_q.detach()), rtol=1e-12, atol=0
    )


def test_expectation_matches_monte_carlo() -> None:
    space = ex.enumerate_responses(3, 4, eos_token_id=0)
    table, _, seq = policy(space, seed=7)
    reward = (space.tokens[:, 0] == 1).to(F64) + 0.5 * space.lengths.to(F64)
    exact_mean = ex.expectation(reward, seq.detach()).item()
    draws = reward[ex.sample_responses(table, space, 4000, seed=3)]
    z = (draws.mean().item() - exact_mean) / (draws.std().item() / math.sqrt(draws.numel()))
    assert abs(z) < 5


# --- gradients ----------------------------------------------------------------------------------


def test_expectation_gradient_is_the_score_function_gradient() -> None:
    # grad E[R] = E[R grad log pi(y)], the latter summed response by response with autograd.
    space = ex.enumerate_responses(3, 2)
    table, _, seq = policy(space, seed=8)
    reward = (space.tokens[:, 1] == 2).to(F64)
    (true,) = torch.autograd.grad(ex.expectation(reward, seq), table, retain_graph=True)
    score = torch.zeros_like(table)
    for i in range(space.num_responses):
        (g,) = torch.autograd.grad(seq[i], table, retain_graph=True)
        score += seq[i].exp().detach() * reward[i] * g
    torch.testing.assert_close(true, score, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("token_level", [True, False])
def test_weighted_library_loss_is_the_exact_expected_loss(token_level: bool) -> None:
    # On-policy REINFORCE through clipped_pg_loss: expected gradient = -grad E[R] / T (token
    # level, constant normaliser T) or the per-sequence-mean version; checked response by response.
    space = ex.enumerate_responses(3, 3, eos_token_id=0)
    table, token_lp, seq = policy(space, seed=9)
    reward = (space.tokens[:, 0] == 1).to(F64)
    cfg = ClippedPGConfig(reference_policy_kl_penalty=0.0, token_level_loss=token_level)
    weights = ex.expectation_weights(space, seq.detach(), token_level=token_level)
    loss, _ = clipped_pg_loss(token_lp, token_lp.detach(), reward, **weights, config=cfg)
    (got,) = torch.autograd.grad(loss, table, retain_graph=True)
    expected = torch.zeros_like(table)
    for i in range(space.num_responses):  # the loss of a batch of one response, weighted by pi(y)
        one, _ = clipped_pg_loss(
            token_lp[i : i + 1],
            token_lp[i : i + 1].detach(),
            reward[i : i + 1],
            space.mask[i : i + 1],
            config=cfg,
            global_valid_toks=float(space.max_length) if token_level else None,
        )
        (g,) = torch.autograd.grad(one, table, retain_graph=True)
        expected += seq[i].exp().detach() * g
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-12)
    if token_level:
        (true,) = torch.autograd.grad(ex.expectation(reward, seq), table)
        torch.testing.assert_close(got * space.max_length, -true, rtol=1e-7, atol=1e-12)


# --- failure paths ------------------------------------------------------------------------------


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="vocab_size must be an int >= 1"):
        ex.enumerate_responses(0, 2)
    with pytest.raises(ValueError, match="max_length must be an int >= 1"):
        ex.enumerate_responses(2, True)
    with pytest.raises(ValueError, match=r"eos_token_id must be None or an int in \[0, vocab_size = 3\)"):
        ex.enumerate_responses(3, 2, eos_token_id=3)
    with pytest.raises(ValueError, match="more than MAX_RESPONSES"):
        ex.enumerate_responses(50, 5)
    space = ex.enumerate_responses(2, 2)
    with pytest.raises(ValueError, match=r"table must have shape \[num_states, vocab_size\] = \[3, 2\]"):
        ex.tabular_token_logprobs(torch.zeros(2, 2), space)
    with pytest.raises(ValueError, match="table must be finite"):
        ex.tabular_token_logprobs(torch.full((3, 2), math.nan), space)
    with pytest.raises(TypeError, match="space must be a ResponseSpace"):
        ex.state_log_distributions(torch.zeros(3, 2), "space")
    with pytest.raises(ValueError, match=r"token_logprobs must have shape \[N, T\] = \[4, 2\]"):
        ex.sequence_logprobs(torch.zeros(4, 3), space)
    partial = torch.log(torch.tensor([0.5, 0.25], dtype=F64))
    with pytest.raises(ValueError, match="seq_logprobs must be the log-probabilities of every response"):
        ex.expectation(torch.ones(2, dtype=F64), partial)
    uniform = torch.full((4,), math.log(0.25), dtype=F64)
    with pytest.raises(ValueError, match="values must have N = 4 rows"):
        ex.expectation(torch.ones(3, dtype=F64), uniform)
    with pytest.raises(ValueError, match="tokens_per_sequence must be a constant >= the longest response"):
        ex.expectation_weights(space, uniform, tokens_per_sequence=1)
    with pytest.raises(ValueError, match="tokens_per_sequence applies to token_level=True only"):
        ex.expectation_weights(space, uniform, token_level=False, tokens_per_sequence=2)
    with pytest.raises(ValueError, match="num_samples must be an int >= 1"):
        ex.sample_responses(torch.zeros(3, 2), space, 0)


def test_sequence_level_weights_with_gspo_importance_correction() -> None:
    # Fractional sample weights must weigh each sequence, not scale its log importance weight.
    space = ex.enumerate_responses(3, 3, eos_token_id=0)
    table, token_lp, _ = policy(space, seed=10)
    _, gen_lp, gen_seq = policy(space, seed=11)
    reward = (space.tokens[:, 1] == 2).to(F64) - 0.3
    cfg = ClippedPGConfig(
        reference_policy_kl_penalty=0.0,
        token_level_loss=False,
        sequence_level_importance_ratios=True,
        use_importance_sampling_correction=True,
    )
    prev = token_lp.detach() + 0.05 * torch.randn(token_lp.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    common = {"config": cfg, "generation_logprobs": gen_lp.detach()}
    weights = ex.expectation_weights(space, gen_seq.detach(), token_level=False)
    loss, _ = clipped_pg_loss(token_lp, prev, reward, **weights, **common)
    (got,) = torch.autograd.grad(loss, table, retain_graph=True)
    expected = torch.zeros_like(table)
    for i in range(space.num_responses):
        rows = slice(i, i + 1)
        one, _ = clipped_pg_loss(
            token_lp[rows],
            prev[rows],
            reward[rows],
            space.mask[rows],
            config=cfg,
            generation_logprobs=gen_lp[rows].detach(),
        )
        (g,) = torch.autograd.grad(one, table, retain_graph=True)
        expected += gen_seq[i].exp().detach() * g
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-12)


def test_next_states_and_reach_probabilities_follow_the_prefix_tree() -> None:
    # P(child) = P(s) * pi(a | s) for every move, P(empty prefix) = 1: the forward recursion.
    space = ex.enumerate_responses(3, 3, eos_token_id=1)
    table, _, seq = policy(space, seed=12)
    child = ex.next_states(space)
    reach = ex.state_reach_probabilities(seq.detach(), space)
    probs = torch.softmax(table.detach(), -1)
    assert reach[0].item() == pytest.approx(1.0, abs=1e-15)
    moves = (child >= 0).nonzero().tolist()
    assert len(moves) == space.num_states - 1  # every state but the root has one parent move
    for s, a in moves:
        assert reach[child[s, a]].item() == pytest.approx(reach[s].item() * probs[s, a].item(), rel=1e-12)
    # Ending moves: EOS everywhere, and every token at the last position.
    assert (child[:, 1] == -1).all()
    assert (child[space.state_depth == space.max_length - 1] == -1).all()
    with pytest.raises(ValueError, match=r"seq_logprobs must have shape \[N\] = \[4\]"):
        ex.state_reach_probabilities(seq.detach(), ex.enumerate_responses(2, 2))


def test_closed_form_token_scores_match_autograd() -> None:
    space = ex.enumerate_responses(3, 3, eos_token_id=0)
    table, token_lp, _ = policy(space, seed=13)
    scores = ex.tabular_token_scores(table.detach(), space)
    for i in range(space.num_responses):
        for t in range(space.max_length):
            if space.mask[i, t]:
                (g,) = torch.autograd.grad(token_lp[i, t], table, retain_graph=True)
                torch.testing.assert_close(scores[i, t], g, rtol=1e-12, atol=1e-15)
            else:
                assert scores[i, t].abs().max().item() == 0.0
