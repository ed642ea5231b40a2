"""nemo_rl_theory.performance.precision: formats from bit arithmetic, mismatch metrics, estimator moments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nemo_rl_theory import exact
from nemo_rl_theory.losses.clipped_pg import ClippedPGConfig, clipped_pg_loss
from nemo_rl_theory.performance.precision import (
    FORMATS,
    FloatFormat,
    decode_bits,
    estimator_moments,
    float_format,
    mismatch_metrics,
)

DTYPES = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
INT_VIEW = {8: torch.uint8, 16: torch.int16, 32: torch.int32}
METRICS = ("token_mult_prob_error", "gen_kl_error", "policy_kl_error", "js_divergence_error")


def _torch_decode(name: str, patterns: torch.Tensor) -> torch.Tensor:
    """PyTorch's own reading of integer bit patterns (two's complement for the signed views)."""
    bits = FORMATS[name].bits
    p = patterns.to(torch.int64)
    if bits > 8:
        p = torch.where(p >= 2 ** (bits - 1), p - 2**bits, p)
    return p.to(INT_VIEW[bits]).view(DTYPES[name]).double()


# --- formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FORMATS))
def test_constants_match_torch_finfo(name):
    fmt, info = FORMATS[name], torch.finfo(DTYPES[name])
    assert fmt.bits == info.bits
    assert fmt.eps == info.eps
    assert fmt.max == info.max
    assert fmt.smallest_normal == info.smallest_normal == info.tiny
    assert fmt.unit_roundoff == info.eps / 2
    assert float_format(name) is fmt


def test_known_values():
    # Values stated by the format specifications (IEEE 754, OCP FP8), independent of the class.
    assert FORMATS["fp16"].max == 65504.0 and FORMATS["fp16"].smallest_subnormal == 2.0**-24
    assert FORMATS["fp8_e4m3fn"].max == 448.0 and FORMATS["fp8_e4m3fn"].smallest_subnormal == 2.0**-9
    assert FORMATS["fp8_e5m2"].max == 57344.0 and FORMATS["fp8_e5m2"].smallest_subnormal == 2.0**-16
    assert FORMATS["bf16"].bias == FORMATS["fp32"].bias == 127
    assert FloatFormat("e4m3 ieee", 4, 3).max == 240.0
    assert not FORMATS["fp8_e4m3fn"].has_inf and FORMATS["fp8_e5m2"].has_inf


@pytest.mark.parametrize("name", ["fp8_e4m3fn", "fp8_e5m2", "fp16", "bf16"])
def test_every_bit_pattern_decodes_like_torch(name):
    fmt = FORMATS[name]
    patterns = torch.arange(2**fmt.bits)
    ours, theirs = decode_bits(fmt, patterns), _torch_decode(name, patterns)
    assert torch.equal(ours.isnan(), theirs.isnan())
    keep = ~ours.isnan()
    assert torch.equal(ours[keep], theirs[keep])
    positive = ours[keep & (ours > 0)]
    assert positive.min().item() == fmt.smallest_subnormal
    assert positive[positive.isfinite()].max().item() == fmt.max
    assert bool(ours.isinf().any()) == fmt.has_inf
    # epsilon: the gap between 1 and the next pattern
    one = int(torch.nonzero(ours == 1.0)[0])
    assert ours[one + 1].item() - 1.0 == fmt.eps
    # NaN count: fn has 2 (+/- all ones); IEEE has 2 * (2^m - 1)
    expected_nans = 2 if not fmt.ieee_specials else 2 * (2**fmt.mantissa_bits - 1)
    assert int(ours.isnan().sum()) == expected_nans


def test_fp32_random_patterns_decode_like_torch():
    gen = torch.Generator().manual_seed(0)
    patterns = torch.randint(0, 2**32, (50_000,), generator=gen, dtype=torch.int64)
    patterns = torch.cat([patterns, torch.tensor([0, 1, 2**23, 0x7F7FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000])])
    ours, theirs = decode_bits(FORMATS["fp32"], patterns), _torch_decode("fp32", patterns)
    assert torch.equal(ours.isnan(), theirs.isnan())
    keep = ~ours.isnan()
    assert torch.equal(ours[keep], theirs[keep])


@given(
    name=st.sampled_from(list(FORMATS)),
    mantissa=st.floats(1.0, 2.0, exclude_max=True),
    exponent=st.integers(-6, 8),
)
def test_round_to_nearest_relative_error_at_most_unit_roundoff(name, mantissa, exponent):
    fmt = FORMATS[name]
    x = math.ldexp(mantissa, exponent)  # inside every format's normal range
    rounded = torch.tensor(x, dtype=torch.float64).to(DTYPES[name]).double().item()
    assert abs(rounded - x) <= fmt.unit_roundoff * abs(x)


def test_format_validation():
    with pytest.raises(ValueError, match="exponent_bits"):
        FloatFormat("x", 1, 3)
    with pytest.raises(ValueError, match="mantissa_bits"):
        FloatFormat("x", 4, 0)
    with pytest.raises(ValueError, match="mantissa_bits"):
        FloatFormat("x", 4, True)
    with pytest.raises(TypeError, match="ieee_specials"):
        FloatFormat("x", 4, 3, ieee_specials=1)
    with pytest.raises(ValueError, match="one of"):
        float_format("fp64")
    with pytest.raises(TypeError, match="name"):
        float_format(16)
    fmt = FORMATS["fp8_e5m2"]
    with pytest.raises(TypeError, match="fmt"):
        decode_bits("fp8_e5m2", torch.arange(3))
    with pytest.raises(TypeError, match="patterns"):
        decode_bits(fmt, [1, 2])
    with pytest.raises(TypeError, match="integer"):
        decode_bits(fmt, torch.tensor([1.0]))
    with pytest.raises(TypeError, match="integer"):
        decode_bits(fmt, torch.tensor([True]))
    with pytest.raises(ValueError, match=r"\[0, 2\*\*8\)"):
        decode_bits(fmt, torch.tensor([256]))
    with pytest.raises(ValueError, match=r"\[0, 2\*\*8\)"):
        decode_bits(fmt, torch.tensor([-1]))


# --- mismatch metrics ------------------------------------------------------------------------


def _numpy_metrics(p, g, m, kl_type="k3", n=None):
    p, g, m = (np.asarray(t, dtype=np.float64) for t in (p, g, m))

    def kl(a, b):  # calculate_kl(a, b): log_ratio = b - a
        x = b - a
        return {"k1": -x, "k2": 0.5 * x * x, "k3": np.exp(x) - 1.0 - x}[kl_type]

    k3 = lambda a, b: np.exp(b - a) - 1.0 - (b - a)  # noqa: E731
    c = np.log(0.5 * np.exp(p) + 0.5 * np.exp(g))
    per_token = {
        "token_mult_prob_error": np.exp(np.abs(g - p)),
        "gen_kl_error": kl(g, p),
        "policy_kl_error": kl(p, g),
        "js_divergence_error": 0.5 * (k3(c, p) + k3(c, g)),  # NeMo RL: e^(p-c) - (p-c) - 1
    }
    denom = (m.sum() if n is None else n) + 1e-8
    return {k: float(np.where(m != 0, v * m, 0.0).sum() / denom) for k, v in per_token.items()}


@given(
    seed=st.integers(0, 10_000),
    kl_type=st.sampled_from(["k1", "k2", "k3"]),
    with_sample_mask=st.booleans(),
    global_factor=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_mismatch_metrics_equal_clipped_pg_loss_and_numpy(seed, kl_type, with_sample_mask, global_factor, dtype):
    gen = torch.Generator().manual_seed(seed)
    b, t = 4, 6
    prev = torch.log_softmax(torch.randn(b, t, 5, generator=gen, dtype=dtype), -1)[..., 0]
    gen_lp = prev + 0.3 * torch.randn(b, t, generator=gen, dtype=dtype)
    mask = (torch.rand(b, t, generator=gen) > 0.3).to(dtype)
    mask[0, 0] = 1.0
    prev_masked = torch.where(mask != 0, prev, torch.nan)  # padding may hold anything
    sample_mask = (torch.rand(b, generator=gen) > 0.3).to(dtype) if with_sample_mask else None
    if sample_mask is not None:
        sample_mask[0] = 1.0
    full = mask * (1.0 if sample_mask is None else sample_mask[:, None])
    n = float(full.sum()) + 3.0 if global_factor else None
    ours = mismatch_metrics(prev_masked, gen_lp, mask, sample_mask=sample_mask, kl_type=kl_type, global_valid_toks=n)
    cfg = ClippedPGConfig(reference_policy_kl_penalty=0.0, reference_policy_kl_type=kl_type)
    _, metrics = clipped_pg_loss(
        prev_masked,
        prev_masked,
        torch.zeros(b, dtype=dtype),
        mask,
        config=cfg,
        generation_logprobs=gen_lp,
        sample_mask=sample_mask,
        global_valid_toks=n,
    )
    ref = _numpy_metrics(torch.nan_to_num(prev_masked), gen_lp, full, kl_type, n)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    for key in METRICS:
        assert ours[key] == metrics[key], key
        assert ours[key] == pytest.approx(ref[key], rel=tol, abs=tol), key


def test_mismatch_metrics_floor_when_equal():
    lp = torch.log(torch.tensor([[0.2, 0.5, 0.9]], dtype=torch.float64))
    out = mismatch_metrics(lp, lp.clone(), torch.ones(1, 3))
    assert out["token_mult_prob_error"] == pytest.approx(1.0, abs=1e-8)  # 3 / (3 + 1e-8)
    for key in METRICS[1:]:
        assert out[key] == pytest.approx(0.0, abs=1e-15)


def test_expected_gen_kl_error_is_sequence_kl_over_length():
    space = exact.enumerate_responses(3, 2)
    table = exact.random_table(space, seed=0)
    table_gen = table + 0.2 * exact.random_table(space, seed=1)
    lp_train = exact.tabular_token_logprobs(table, space)
    lp_gen = exact.tabular_token_logprobs(table_gen, space)
    seq_train, seq_gen = exact.sequence_logprobs(lp_train, space), exact.sequence_logprobs(lp_gen, space)
    w = exact.expectation_weights(space, seq_gen)
    out = mismatch_metrics(lp_train, lp_gen, w["mask"], global_valid_toks=w["global_valid_toks"])
    assert out["gen_kl_error"] == pytest.approx(exact.sequence_kl(seq_gen, seq_train).item() / 2, rel=1e-7)


def test_mismatch_metrics_bad_inputs():
    lp = torch.zeros(2, 3)
    ones = torch.ones(2, 3)
    with pytest.raises(TypeError, match="train_logprobs"):
        mismatch_metrics(torch.zeros(2, 3, dtype=torch.long), lp, ones)
    with pytest.raises(TypeError, match="generation_logprobs"):
        mismatch_metrics(lp, "x", ones)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        mismatch_metrics(torch.zeros(3), torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="same shape"):
        mismatch_metrics(lp, torch.zeros(2, 4), ones)
    with pytest.raises(ValueError, match="same shape"):
        mismatch_metrics(lp, lp, torch.ones(2, 4))
    with pytest.raises(ValueError, match="kl_type"):
        mismatch_metrics(lp, lp, ones, kl_type="k4")
    with pytest.raises(ValueError, match="generation_logprobs has NaN"):
        mismatch_metrics(lp, torch.full((2, 3), math.nan), ones)
    with pytest.raises(ValueError, match="train_logprobs has NaN"):
        mismatch_metrics(torch.full((2, 3), math.inf), lp, ones)
    with pytest.raises(ValueError, match="global_valid_toks"):
        mismatch_metrics(lp, lp, ones, global_valid_toks=2.0)
    with pytest.raises(ValueError, match="mask"):
        mismatch_metrics(lp, lp, -ones)
    # NaN off the mask is fine
    out = mismatch_metrics(torch.tensor([[0.0, math.nan]]), torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))
    assert all(math.isfinite(v) for v in out.values())


# --- estimator moments -----------------------------------------------------------------------


@given(seed=st.integers(0, 10_000), n=st.integers(1, 8), p=st.integers(1, 4))
def test_estimator_moments_against_direct_sums(seed, n, p):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(n, p, generator=gen, dtype=torch.float64)
    mu = torch.softmax(torch.randn(n, generator=gen, dtype=torch.float64), 0)
    target = torch.randn(p, generator=gen, dtype=torch.float64)
    out = estimator_moments(g, mu.log(), target)
    mean = sum(mu[i] * g[i] for i in range(n))
    mse = sum(mu[i] * float(((g[i] - target) ** 2).sum()) for i in range(n))
    var = sum(mu[i] * float(((g[i] - mean) ** 2).sum()) for i in range(n))
    assert torch.allclose(out["mean"], mean, rtol=1e-12, atol=1e-12)
    assert out["variance"].item() == pytest.approx(float(var), rel=1e-10, abs=1e-12)
    assert out["bias"].item() == pytest.approx(float((mean - target).norm()), rel=1e-10, abs=1e-12)
    assert out["mse"].item() == pytest.approx(float(mse), rel=1e-10, abs=1e-12)  # bias^2 + var


def test_sequence_weight_is_unbiased_and_token_weight_is_not():
    # Exact expected gradients through clipped_pg_loss at T = 2 (V = 3): see the page.
    space = exact.enumerate_responses(3, 2)
    n, t = space.num_responses, space.max_length
    table = exact.random_table(space, seed=0)
    mu_lp = exact.tabular_token_logprobs(table + 0.4 * exact.random_table(space, seed=1), space)
    seq_mu = exact.sequence_logprobs(mu_lp, space)
    reward = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    theta = table.clone().requires_grad_(True)
    objective = exact.expectation(reward, exact.sequence_logprobs(exact.tabular_token_logprobs(theta, space), space))
    (g_star,) = torch.autograd.grad(objective / t, theta)
    rows = torch.arange(n)[:, None]

    def moments(**extra):
        cfg = ClippedPGConfig(reference_policy_kl_penalty=0.0, force_on_policy_ratio=True, **extra)
        per_response = table.expand(n, *table.shape).clone().requires_grad_(True)
        lp = torch.log_softmax(per_response, -1)[rows, space.state_ids, space.tokens]
        scale = {"global_valid_toks": float(n * t)} if cfg.token_level_loss else {"global_valid_seqs": float(n)}
        loss, _ = clipped_pg_loss(lp, None, reward, space.mask, config=cfg, generation_logprobs=mu_lp, **scale)
        (grads,) = torch.autograd.grad(-n * loss, per_response)
        per_sample.append(grads.flatten(1))
        return estimator_moments(grads.flatten(1), seq_mu, g_star.flatten())

    per_sample: list[torch.Tensor] = []

    scale = g_star.norm().item()
    seq_is = {"use_importance_sampling_correction": True, "sequence_level_importance_ratios": True}
    seq = moments(**seq_is, token_level_loss=False)
    tok = moments(use_importance_sampling_correction=True)
    none = moments()
    capped = moments(
        **seq_is,
        token_level_loss=False,
        truncated_importance_sampling_type="tis",
        truncated_importance_sampling_ratio=1.2,
    )
    # closed-form rows, without autograd or the loss: R(y) sum_t w_t (e_{y_t} - pi(.|s_t)) / T
    scores = exact.tabular_token_scores(table, space).flatten(2)
    w_tok = torch.exp(exact.tabular_token_logprobs(table, space) - mu_lp)
    w_seq = w_tok.prod(1, keepdim=True).expand(n, t)
    weights = (w_seq, w_tok, torch.ones(n, t, dtype=torch.float64), w_seq.clamp(max=1.2))
    for got, w in zip(per_sample, weights, strict=True):
        expected = reward[:, None] * (w[..., None] * scores).sum(1) / t
        assert torch.allclose(got, expected, rtol=1e-6, atol=1e-12)
    assert seq["bias"].item() < 1e-6 * scale
    assert tok["bias"].item() > 0.05 * scale and none["bias"].item() > 0.05 * scale
    assert capped["bias"].item() > 0.01 * scale and capped["variance"] < seq["variance"]


def test_estimator_moments_bad_inputs():
    g = torch.zeros(3, 2, dtype=torch.float64)
    lmu = torch.full((3,), -math.log(3.0), dtype=torch.float64)
    tgt = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(TypeError, match="per_sample"):
        estimator_moments(torch.zeros(3, 2, dtype=torch.long), lmu, tgt)
    with pytest.raises(ValueError, match=r"\[N, P\]"):
        estimator_moments(torch.zeros(3), lmu, tgt)
    with pytest.raises(ValueError, match="sampling_logprobs must have shape"):
        estimator_moments(g, lmu[:2], tgt)
    with pytest.raises(ValueError, match="target must have shape"):
        estimator_moments(g, lmu, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="sum to 1"):
        estimator_moments(g, lmu + 1.0, tgt)
    with pytest.raises(ValueError, match="per_sample must be finite"):
        estimator_moments(torch.full((3, 2), math.nan, dtype=torch.float64), lmu, tgt)
    with pytest.raises(ValueError, match="target must be finite"):
        estimator_moments(g, lmu, torch.full((2,), math.inf, dtype=torch.float64))
    with pytest.raises(ValueError, match="sampling_logprobs must be finite"):
        estimator_moments(g, torch.full((3,), math.nan, dtype=torch.float64), tgt)
    # a response with probability 0 (log-prob -inf) is allowed
    out = estimator_moments(g, torch.tensor([0.0, -math.inf, -math.inf], dtype=torch.float64), tgt)
    assert out["variance"].item() == 0.0
