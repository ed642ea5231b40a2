"""normalization: per-token weights of the three reductions, length bias, bounded surrogates."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nemo_rl_theory.losses import ClippedPGConfig, clipped_pg_loss
from nemo_rl_theory.training.normalization import (
    SCHEMES,
    clipped_pg_settings,
    clipped_surrogate,
    clipped_surrogate_grad,
    reduce_tokens,
    response_weights,
    surrogate_range,
    token_weights,
)

F64 = torch.float64
EPS = 1e-8
NO_KL = {"reference_policy_kl_penalty": 0.0}


def batch(seed: int, n_rows: int, width: int, *, drop: bool = True):
    """Right-padded mask with lengths in [1, width], a sample mask, log-probs and advantages."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (n_rows,), generator=gen)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).to(F64)
    samples = (torch.rand(n_rows, generator=gen) > 0.25).to(F64) if drop else torch.ones(n_rows, dtype=F64)
    samples[0] = 1.0  # at least one counted response
    logprobs = -(torch.rand(n_rows, width, generator=gen, dtype=F64) * 3 + 0.01)
    advantages = torch.randn(n_rows, generator=gen, dtype=F64)
    return lengths, mask, samples, logprobs, advantages


def weight_loop(lengths: list[int], samples: list[float], scheme: str, max_length: int, width: int) -> torch.Tensor:
    """The weights written out in Python floats, one token at a time."""
    n_seq = sum(samples)
    n_tok = sum(s * n for s, n in zip(samples, lengths, strict=True))
    rows = []
    for n, s in zip(lengths, samples, strict=True):
        row = []
        for t in range(width):
            if t >= n or s == 0:
                row.append(0.0)
            elif scheme == "token":
                row.append(s / (n_tok + EPS))
            elif scheme == "sequence":
                row.append(s / ((n + EPS) * (n_seq + EPS)))
            else:
                row.append(s / (n_seq * max_length + EPS))
        rows.append(row)
    return torch.tensor(rows, dtype=F64)


def library_grad(scheme, mask, samples, logprobs, advantages, max_length, **extra):
    """d loss / d logprob of clipped_pg_loss at ratio 1 under clipped_pg_settings(scheme)."""
    settings = clipped_pg_settings(scheme, mask, sample_mask=samples, max_length=max_length, **extra)
    config = ClippedPGConfig(**NO_KL, token_level_loss=settings["token_level_loss"])
    leaf = logprobs.clone().requires_grad_(True)
    loss, _ = clipped_pg_loss(
        leaf,
        logprobs,
        advantages,
        mask,
        sample_mask=samples,
        config=config,
        global_valid_toks=settings["global_valid_toks"],
        global_valid_seqs=settings["global_valid_seqs"],
    )
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss, grad


# ----------------------------------------------------------------------------- token weights


@given(seed=st.integers(0, 2**16), n_rows=st.integers(1, 7), width=st.integers(1, 9), scheme=st.sampled_from(SCHEMES))
def test_weights_equal_the_gradient_of_clipped_pg_loss_at_ratio_one(seed, n_rows, width, scheme):
    _, mask, samples, logprobs, advantages = batch(seed, n_rows, width)
    max_length = width + 3
    _, grad = library_grad(scheme, mask, samples, logprobs, advantages, max_length)
    weights = token_weights(mask, scheme, sample_mask=samples, max_length=max_length)
    torch.testing.assert_close(grad, -advantages[:, None] * weights, rtol=1e-12, atol=0.0)


@given(seed=st.integers(0, 2**16), n_rows=st.integers(1, 6), width=st.integers(1, 8), scheme=st.sampled_from(SCHEMES))
def test_weights_match_a_python_loop(seed, n_rows, width, scheme):
    lengths, mask, samples, _, _ = batch(seed, n_rows, width)
    max_length = width + 1
    expected = weight_loop(lengths.tolist(), samples.tolist(), scheme, max_length, width)
    torch.testing.assert_close(
        token_weights(mask, scheme, sample_mask=samples, max_length=max_length), expected, rtol=1e-14, atol=0.0
    )


@given(seed=st.integers(0, 2**16), n_rows=st.integers(1, 6), width=st.integers(1, 8))
def test_weight_totals(seed, n_rows, width):
    _, mask, samples, _, _ = batch(seed, n_rows, width)
    n_tok = float((mask * samples[:, None]).sum())
    n_seq = float(samples.sum())
    # Token and sequence level are means: their weights sum to 1 (up to the 1e-8 in the denominators).
    for scheme in ("token", "sequence"):
        assert abs(float(token_weights(mask, scheme, sample_mask=samples).sum()) - 1.0) < 1e-7
    # The constant gives N_tok / (N_seq L_max): below 1 unless every response fills the budget.
    total = float(token_weights(mask, "constant", sample_mask=samples, max_length=width).sum())
    assert abs(total - n_tok / (n_seq * width + EPS)) < 1e-12
    assert total <= 1.0 + 1e-12


def test_sequence_level_ignores_global_valid_toks_so_the_constant_goes_through_the_token_path():
    _, mask, samples, logprobs, advantages = batch(3, 5, 6)
    seq = ClippedPGConfig(**NO_KL, token_level_loss=False)
    plain, _ = clipped_pg_loss(logprobs, logprobs, advantages, mask, sample_mask=samples, config=seq)
    budget = float(samples.sum()) * 6
    ignored, _ = clipped_pg_loss(
        logprobs, logprobs, advantages, mask, sample_mask=samples, config=seq, global_valid_toks=budget
    )
    assert plain.item() == ignored.item()
    settings = clipped_pg_settings("constant", mask, sample_mask=samples, max_length=6)
    assert settings["token_level_loss"] is True and settings["global_valid_toks"] == budget
    assert clipped_pg_settings("token", mask)["token_level_loss"] is True
    assert clipped_pg_settings("sequence", mask)["token_level_loss"] is False


@given(seed=st.integers(0, 2**16), n_pieces=st.integers(1, 4), rows=st.integers(1, 4), scheme=st.sampled_from(SCHEMES))
def test_global_counts_make_micro_batch_weights_the_full_batch_weights(seed, n_pieces, rows, scheme):
    _, mask, samples, _, _ = batch(seed, n_pieces * rows, 7)
    full = token_weights(mask, scheme, sample_mask=samples, max_length=9)
    counts = (
        {"global_valid_toks": (mask * samples[:, None]).sum()}
        if scheme == "token"
        else {"global_valid_seqs": samples.sum()}
    )
    pieces = [
        token_weights(mask[k * rows : (k + 1) * rows], scheme, sample_mask=samples[k * rows : (k + 1) * rows],
                      max_length=9, **counts)
        for k in range(n_pieces)
    ]  # fmt: skip
    torch.testing.assert_close(torch.cat(pieces), full, rtol=1e-14, atol=0.0)


@given(seed=st.integers(0, 2**16), n_rows=st.integers(1, 6), width=st.integers(1, 8), scheme=st.sampled_from(SCHEMES))
def test_reduce_tokens_matches_clipped_pg_loss_off_policy(seed, n_rows, width, scheme):
    _, mask, samples, logprobs, advantages = batch(seed, n_rows, width)
    gen = torch.Generator().manual_seed(seed + 1)
    prev = logprobs + 0.4 * torch.randn(logprobs.shape, generator=gen, dtype=F64)
    settings = clipped_pg_settings(scheme, mask, sample_mask=samples, max_length=width)
    config = ClippedPGConfig(**NO_KL, token_level_loss=settings["token_level_loss"])
    loss, _ = clipped_pg_loss(
        logprobs,
        prev,
        advantages,
        mask,
        sample_mask=samples,
        config=config,
        global_valid_toks=settings["global_valid_toks"],
    )
    ratio = torch.exp(logprobs - prev)
    per_token = clipped_surrogate(ratio, advantages[:, None])
    reduced = reduce_tokens(per_token, mask, scheme, sample_mask=samples, max_length=width)
    assert abs(loss.item() - reduced.item()) < 1e-12


def test_reduce_tokens_ignores_padding_garbage_and_carries_the_gradient():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=F64)
    values = torch.tensor([[1.0, 3.0, math.nan], [5.0, -math.inf, math.inf]], dtype=F64, requires_grad=True)
    out = reduce_tokens(values, mask, "sequence")
    out.backward()
    assert abs(out.item() - (2.0 + 5.0) / 2) < 1e-7
    expected = token_weights(mask, "sequence")
    torch.testing.assert_close(values.grad, expected, rtol=1e-15, atol=0.0)


# ----------------------------------------------------------------------------- response weights


@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=8),
    extra=st.integers(0, 5),
    scheme=st.sampled_from(SCHEMES),
)
def test_response_weights_are_the_row_sums_of_token_weights(lengths, extra, scheme):
    lens = torch.tensor(lengths)
    width = max(lengths)
    mask = (torch.arange(width)[None, :] < lens[:, None]).to(F64)
    max_length = width + extra
    closed = response_weights(lens, scheme, max_length=max_length)
    torch.testing.assert_close(closed, token_weights(mask, scheme, max_length=max_length).sum(-1), rtol=1e-13, atol=0)


def test_response_weights_length_dependence():
    lens = torch.tensor([2, 4, 8, 16])
    n_seq = 4
    seq = response_weights(lens, "sequence")
    assert torch.allclose(seq, torch.full((4,), 1 / n_seq, dtype=F64), rtol=1e-7)  # flat in the length
    const = response_weights(lens, "constant", max_length=16)
    torch.testing.assert_close(const / lens, torch.full((4,), 1 / (n_seq * 16 + EPS), dtype=F64), rtol=1e-12, atol=0)
    tok = response_weights(lens, "token")
    assert bool((tok[1:] > tok[:-1]).all())
    # Token level with a global count: the share of one response saturates, |y| / (|y| + N_rest).
    n_rest = 30.0
    for n in (1, 10, 100, 1000):
        share = response_weights(torch.tensor([n]), "token", n_toks=n + n_rest).item()
        assert abs(share - n / (n + n_rest)) < 1e-9


# ----------------------------------------------------------------------------- bounded surrogate


def library_per_token(ratio, advantage, config):
    """Per-token clipped_pg_loss values and d/d log pi, one token per row (float64)."""
    n = ratio.numel()
    leaf = torch.log(ratio).reshape(n, 1).clone().requires_grad_(True)
    adv = torch.as_tensor(advantage, dtype=F64).expand(n).clone()
    loss, _ = clipped_pg_loss(
        leaf, torch.zeros(n, 1, dtype=F64), adv, torch.ones(n, 1, dtype=F64), config=config, global_valid_toks=float(n)
    )
    (grad,) = torch.autograd.grad(loss, leaf)
    scale = n + EPS  # the loss divides the sum by global_valid_toks + 1e-8
    return grad.reshape(-1) * scale, loss.item() * scale


@given(
    log_ratio=st.lists(st.floats(-3.0, 3.0), min_size=1, max_size=20),
    advantage=st.floats(-3.0, 3.0),
    eps_low=st.floats(0.01, 0.9),
    eps_high=st.floats(0.01, 0.9),
    dual=st.one_of(st.none(), st.floats(1.05, 10.0)),
)
def test_clipped_surrogate_and_its_gradient_match_the_library(log_ratio, advantage, eps_low, eps_high, dual):
    ratio = torch.exp(torch.tensor(log_ratio, dtype=F64))
    keys = {"ratio_clip_min": eps_low, "ratio_clip_max": eps_high, "ratio_clip_c": dual}
    config = ClippedPGConfig(**NO_KL, **keys)
    grad, total = library_per_token(ratio, advantage, config)
    values = clipped_surrogate(ratio, advantage, **keys)
    assert abs(total - float(values.sum())) < 1e-9 * (1 + float(values.abs().sum()))
    # Away from the kinks the two derivatives agree; at a kink they may pick different sides.
    kinks = torch.tensor([1 - eps_low, 1 + eps_high] + ([dual] if dual else []), dtype=F64)
    away = ((ratio[:, None] / kinks[None, :]).log().abs() > 1e-9).all(dim=1)
    expected = clipped_surrogate_grad(ratio, advantage, **keys)[away]
    torch.testing.assert_close(grad[away], expected, rtol=1e-12, atol=1e-15)


@given(
    advantage=st.floats(-4.0, 4.0),
    eps_low=st.floats(0.05, 0.5),
    eps_high=st.floats(0.05, 0.5),
    dual=st.one_of(st.none(), st.floats(1.5, 5.0)),
)
def test_surrogate_range_by_brute_force(advantage, eps_low, eps_high, dual):
    keys = {"ratio_clip_min": eps_low, "ratio_clip_max": eps_high, "ratio_clip_c": dual}
    ratio = torch.exp(torch.linspace(-25, 25, 20001, dtype=F64))
    values = clipped_surrogate(ratio, advantage, **keys)
    low, high = surrogate_range(advantage, **keys)
    assert float(values.min()) >= low - 1e-12 and float(values.max()) <= high + 1e-12
    assert abs(float(values.min()) - low) < 1e-9  # the infimum is attained (or approached) on the grid
    if math.isfinite(high):
        assert abs(float(values.max()) - high) < 1e-9
    else:
        assert float(values.max()) > abs(advantage) * 1e10


def test_gradient_vanishes_on_the_flat_pieces_and_not_for_minus_a_log_pi():
    ratio = torch.tensor([0.5, 0.79, 0.81, 1.0, 1.19, 1.21, 2.9, 3.1], dtype=F64)
    g_pos = clipped_surrogate_grad(ratio, 1.0, ratio_clip_c=3.0)
    g_neg = clipped_surrogate_grad(ratio, -1.0, ratio_clip_c=3.0)
    assert g_pos.tolist()[5:] == [0.0, 0.0, 0.0] and all(g < 0 for g in g_pos.tolist()[:5])
    assert g_neg.tolist()[:2] == [0.0, 0.0] and g_neg.tolist()[-1] == 0.0 and all(g > 0 for g in g_neg.tolist()[2:7])
    # -A log pi (disable_ppo_ratio): d/d log pi = -A everywhere, and the loss has no lower bound for A < 0.
    config = ClippedPGConfig(**NO_KL, disable_ppo_ratio=True)
    logp = torch.tensor([[-1e-3], [-1.0], [-50.0], [-1e6]], dtype=F64, requires_grad=True)
    ones = torch.ones(4, 1, dtype=F64)
    loss, _ = clipped_pg_loss(logp, logp.detach(), torch.full((4,), -1.0, dtype=F64), ones, config=config)
    (grad,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(grad, torch.full((4, 1), 1.0 / (4 + EPS), dtype=F64), rtol=1e-15, atol=0)
    assert loss.item() < -1e5


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: token_weights(torch.ones(2, 3), "tokens"), ValueError, "scheme must be one of"),
        (lambda: token_weights(torch.ones(2, 3), "constant"), ValueError, "requires max_length"),
        (lambda: token_weights(torch.ones(2, 3), "constant", max_length=2), ValueError, "shorter than the longest"),
        (lambda: token_weights(torch.ones(2, 3), "constant", max_length=-1.0), ValueError, "max_length"),
        (lambda: token_weights(torch.ones(2, 3), "token", max_length=math.nan), ValueError, "max_length"),
        (lambda: token_weights(torch.ones(3), "token"), ValueError, r"mask must have shape \[B, T\]"),
        (lambda: token_weights([[1, 1]], "token"), TypeError, "mask must be a torch.Tensor"),
        (lambda: token_weights(-torch.ones(2, 3), "token"), ValueError, "non-negative"),
        (lambda: token_weights(torch.ones(2, 3), "token", sample_mask=torch.ones(3)), ValueError, "sample_mask"),
        (lambda: token_weights(torch.ones(2, 3), "token", global_valid_toks=5), ValueError, "smaller than"),
        (lambda: token_weights(torch.ones(2, 3), "sequence", global_valid_seqs=-1), ValueError, "non-negative"),
        (
            lambda: token_weights(torch.ones(2, 3), "constant", max_length=3, global_valid_toks=6),
            ValueError,
            "do not pass both",
        ),
        (
            lambda: reduce_tokens(torch.tensor([[math.nan, 1.0]]), torch.ones(1, 2), "token"),
            ValueError,
            "NaN/inf",
        ),
        (lambda: reduce_tokens(torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2), "token"), TypeError, "floating"),
        (lambda: reduce_tokens(torch.ones(1, 3), torch.ones(1, 2), "token"), ValueError, "same shape"),
        (lambda: response_weights(torch.tensor([1, -2]), "token"), ValueError, "non-negative"),
        (lambda: response_weights(torch.tensor([[1, 2]]), "token"), ValueError, r"lengths must have shape \[B\]"),
        (lambda: response_weights(torch.tensor([True]), "token"), TypeError, "integer or floating"),
        (lambda: response_weights(torch.tensor([3, 4]), "constant", max_length=3), ValueError, "shorter"),
        (lambda: response_weights(torch.tensor([3, 4]), "token", n_toks=5), ValueError, "smaller than"),
        (lambda: clipped_pg_settings("constant", torch.ones(2, 3)), ValueError, "requires max_length"),
        (lambda: clipped_surrogate(torch.tensor([0.0, 1.0]), 1.0), ValueError, "ratio must be finite and > 0"),
        (lambda: clipped_surrogate(torch.tensor([1, 2]), 1.0), TypeError, "ratio must be a floating"),
        (lambda: clipped_surrogate(torch.ones(2), math.inf), ValueError, "advantage must be finite"),
        (lambda: clipped_surrogate(torch.ones(2), torch.ones(3)), ValueError, "does not broadcast"),
        (lambda: clipped_surrogate(torch.ones(2), 1.0, ratio_clip_min=1.0), ValueError, "ratio_clip_min"),
        (lambda: clipped_surrogate_grad(torch.ones(2), 1.0, ratio_clip_c=1.0), ValueError, "ratio_clip_c"),
        (lambda: surrogate_range(math.nan), ValueError, "advantage"),
    ],
)
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()


@given(seed=st.integers(0, 2**16), scheme=st.sampled_from(SCHEMES))
def test_settings_with_global_counts_make_micro_batch_losses_sum_to_the_full_loss(seed, scheme):
    _, mask, samples, logprobs, advantages = batch(seed, 6, 5)
    full_loss, full_grad = library_grad(scheme, mask, samples, logprobs, advantages, 8)
    n_seq = float(samples.sum())
    n_tok = float((mask * samples[:, None]).sum())
    total, grads = 0.0, []
    for rows in (slice(0, 2), slice(2, 6)):
        piece = {"sample_mask": samples[rows], "max_length": 8, "global_valid_seqs": n_seq}
        settings = clipped_pg_settings(scheme, mask[rows], **piece)
        config = ClippedPGConfig(**NO_KL, token_level_loss=settings["token_level_loss"])
        toks = n_tok if scheme == "token" else settings["global_valid_toks"]
        leaf = logprobs[rows].clone().requires_grad_(True)
        part, _ = clipped_pg_loss(
            leaf, logprobs[rows], advantages[rows], mask[rows], sample_mask=samples[rows], config=config,
            global_valid_toks=toks, global_valid_seqs=n_seq,
        )  # fmt: skip
        total += part.item()
        grads.append(torch.autograd.grad(part, leaf)[0])
    assert abs(total - full_loss.item()) < 1e-12
    torch.testing.assert_close(torch.cat(grads), full_grad, rtol=1e-12, atol=1e-15)
