"""clipped_pg_loss: values against a per-token Python reference, gradients, and the theory's properties."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from nemo_rl_theory import ClippedPGConfig, clipped_pg_loss

EPS = 1e-8  # NeMo RL's masked_mean epsilon


def kl_estimate(lp: float, ref: float, kind: str, in_clamp, out_clamp, weight: float = 1.0) -> float:
    x = ref - lp
    if in_clamp is not None:
        x = max(-in_clamp, min(in_clamp, x))
    k = {"k1": -x, "k2": 0.5 * x * x, "k3": math.exp(x) - 1.0 - x}[kind]
    k *= weight
    if out_clamp is not None:
        k = max(-out_clamp, min(out_clamp, k))
    return k


def reference_loss(cfg: ClippedPGConfig, lp, prev, adv, mask, gen, ref, sample_mask) -> float:
    """Direct per-token loops over the NeMo RL definition, in Python floats (float64)."""
    B, T = len(lp), len(lp[0])
    m = [[mask[b][t] * sample_mask[b] for t in range(T)] for b in range(B)]
    n_tok = sum(map(sum, m))
    n_seq = sum(sample_mask)
    if cfg.force_on_policy_ratio:
        prev = lp

    def reduce(x):
        if cfg.token_level_loss:
            return sum(m[b][t] * x[b][t] for b in range(B) for t in range(T)) / (n_tok + EPS)
        per_seq = [sum(mask[b][t] * x[b][t] for t in range(T)) / (sum(mask[b]) + EPS) for b in range(B)]
        return sum(sample_mask[b] * per_seq[b] for b in range(B)) / (n_seq + EPS)

    # ratios
    if cfg.force_on_policy_ratio:
        ratio = [[1.0] * T for _ in range(B)]
    elif cfg.disable_ppo_ratio:
        ratio = [list(row) for row in lp]
    elif cfg.sequence_level_importance_ratios:
        ratio = []
        for b in range(B):
            mean_log = sum(mask[b][t] * (lp[b][t] - prev[b][t]) for t in range(T)) / (sum(mask[b]) + EPS)
            ratio.append([math.exp(mean_log)] * T)
    else:
        ratio = [[math.exp(lp[b][t] - prev[b][t]) for t in range(T)] for b in range(B)]
    lo, hi = 1 - cfg.ratio_clip_min, 1 + cfg.ratio_clip_max
    no_clip = cfg.force_on_policy_ratio or cfg.disable_ppo_ratio

    def clip(r):
        return r if no_clip else min(hi, max(lo, r))

    per_tok = [[0.0] * T for _ in range(B)]
    for b in range(B):
        for t in range(T):
            a, r = adv[b][t], ratio[b][t]
            if cfg.use_cispo:
                value = -a * clip(r) * lp[b][t]
            else:
                value = max(-a * r, -a * clip(r))
            if cfg.ratio_clip_c is not None and a < 0:
                value = min(value, -a * cfg.ratio_clip_c)
            per_tok[b][t] = value

    # importance weights pi_prev / pi_gen
    if cfg.use_importance_sampling_correction:
        if cfg.sequence_level_importance_ratios:
            w = [[math.exp(sum(m[b][t] * (prev[b][t] - gen[b][t]) for t in range(T)))] * T for b in range(B)]
        else:
            w = [[math.exp(prev[b][t] - gen[b][t]) for t in range(T)] for b in range(B)]
        kind, cap, floor = (
            cfg.truncated_importance_sampling_type,
            cfg.truncated_importance_sampling_ratio,
            cfg.truncated_importance_sampling_ratio_min,
        )
        if kind == "tis":
            w = [[min(max(x, floor or 0.0), cap) for x in row] for row in w]
        elif kind == "icepop":
            w = [[x if floor <= x <= cap else 0.0 for x in row] for row in w]
        elif kind == "seq-mask-tis":
            for b in range(B):
                geo = math.exp(sum(mask[b][t] * (prev[b][t] - gen[b][t]) for t in range(T)) / (sum(mask[b]) + EPS))
                if not floor <= geo <= cap:
                    w[b] = [0.0] * T
        per_tok = [[w[b][t] * per_tok[b][t] for t in range(T)] for b in range(B)]

    loss = reduce(per_tok)
    if cfg.reference_policy_kl_penalty:
        kl = [
            [
                cfg.reference_policy_kl_penalty
                * kl_estimate(
                    lp[b][t],
                    ref[b][t],
                    cfg.reference_policy_kl_type,
                    cfg.kl_input_clamp_value,
                    cfg.kl_output_clamp_value,
                    math.exp(lp[b][t] - gen[b][t]) if cfg.use_on_policy_kl_approximation else 1.0,
                )
                for t in range(T)
            ]
            for b in range(B)
        ]
        loss += reduce(kl)
    return loss


def random_batch(seed: int, B: int = 3, T: int = 5, spread: float = 0.4, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    lp = -torch.rand(B, T, generator=gen, dtype=dtype) * 3 - 0.05
    prev = lp + spread * torch.randn(B, T, generator=gen, dtype=dtype)
    generation = prev + 0.2 * torch.randn(B, T, generator=gen, dtype=dtype)
    ref = lp + 0.5 * torch.randn(B, T, generator=gen, dtype=dtype)
    adv = torch.randn(B, T, generator=gen, dtype=dtype)
    mask = (torch.rand(B, T, generator=gen) < 0.75).to(dtype)
    mask[:, 0] = 1.0  # every sequence has at least one token
    return lp, prev, adv, mask, generation, ref


configs = st.builds(
    dict,
    kl=st.sampled_from([0.0, 0.05]),
    kl_type=st.sampled_from(["k1", "k2", "k3"]),
    clip=st.sampled_from([(0.2, 0.2), (0.2, 0.28), (0.1, 0.5)]),
    dual=st.sampled_from([None, 3.0]),
    mode=st.sampled_from(["ppo", "gspo", "cispo", "reinforce", "on_policy"]),
    on_policy_kl=st.booleans(),
    is_correction=st.sampled_from([None, "plain", "tis", "icepop", "seq-mask-tis"]),
    token_level=st.booleans(),
    tis_min=st.booleans(),
)


def build_config(c: dict) -> ClippedPGConfig:
    mode = c["mode"]
    is_kind = c["is_correction"]
    seed_min = c["tis_min"]
    token_level = c["token_level"] and mode != "gspo"
    if mode == "cispo":
        token_level = True
    truncation = {}
    if is_kind not in (None, "plain"):
        truncation = {
            "truncated_importance_sampling_type": is_kind,
            "truncated_importance_sampling_ratio": 1.3,
            "truncated_importance_sampling_ratio_min": 0.8 if is_kind != "tis" or seed_min else None,
        }
        if is_kind == "seq-mask-tis" and mode == "gspo":
            truncation = {}
    return ClippedPGConfig(
        reference_policy_kl_penalty=c["kl"],
        reference_policy_kl_type=c["kl_type"],
        ratio_clip_min=c["clip"][0],
        ratio_clip_max=c["clip"][1],
        ratio_clip_c=None if mode == "cispo" else c["dual"],
        use_on_policy_kl_approximation=c["on_policy_kl"],
        use_importance_sampling_correction=is_kind is not None,
        sequence_level_importance_ratios=mode == "gspo",
        token_level_loss=token_level,
        force_on_policy_ratio=mode == "on_policy",
        disable_ppo_ratio=mode == "reinforce",
        use_cispo=mode == "cispo",
        **truncation,
    )


@given(c=configs, seed=st.integers(0, 2**16), sample_drop=st.booleans())
def test_matches_per_token_reference_for_every_option(c, seed, sample_drop):
    cfg = build_config(c)
    lp, prev, adv, mask, generation, ref = random_batch(seed)
    sample_mask = torch.tensor([1.0, 0.0 if sample_drop else 1.0, 1.0], dtype=torch.float64)
    loss, metrics = clipped_pg_loss(
        lp,
        prev,
        adv,
        mask,
        config=cfg,
        generation_logprobs=generation,
        reference_logprobs=ref,
        sample_mask=sample_mask,
    )
    expected = reference_loss(
        cfg,
        lp.tolist(),
        prev.tolist(),
        adv.tolist(),
        mask.tolist(),
        generation.tolist(),
        ref.tolist(),
        sample_mask.tolist(),
    )
    assert loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-9, abs=1e-12)


@given(c=configs, seed=st.integers(0, 2**16))
def test_gradient_matches_finite_differences(c, seed):
    # gradcheck in float64 for every configuration whose loss is an ordinary function of the
    # log-probs. CISPO, force_on_policy_ratio and the default KL weight exp(lp - sg(lp)) use
    # stop-gradients on purpose (their gradient is not the derivative of the value); they are
    # pinned by the hand-derived gradient tests below.
    assume(c["mode"] in ("ppo", "gspo", "reinforce"))
    assume(c["kl"] == 0.0 or c["on_policy_kl"])
    cfg = build_config(c)
    lp, prev, adv, mask, generation, ref = random_batch(seed, B=2, T=3)

    def f(x):
        return clipped_pg_loss(x, prev, adv, mask, config=cfg, generation_logprobs=generation, reference_logprobs=ref)[
            0
        ]

    assert torch.autograd.gradcheck(f, (lp.clone().requires_grad_(),), eps=1e-7, atol=1e-6)


def hand_config(**overrides) -> ClippedPGConfig:
    return replace(ClippedPGConfig(reference_policy_kl_penalty=0.0), **overrides)


def test_hand_computed_ppo_case_table():
    # One token per row, eps = 0.2: the four regions of the clipped surrogate.
    ratios = [1.5, 0.5, 0.5, 1.5]
    advantages = [1.0, 1.0, -1.0, -1.0]
    prev = torch.zeros(4, 1, dtype=torch.float64)
    lp = torch.tensor([[math.log(r)] for r in ratios], dtype=torch.float64, requires_grad=True)
    loss, metrics = clipped_pg_loss(
        lp, prev, torch.tensor(advantages, dtype=torch.float64), torch.ones(4, 1), config=hand_config()
    )
    loss.backward()
    # Row 0: A>0, r=1.5 > 1.2 -> clipped: -1.2 (no gradient)
    # Row 1: A>0, r=0.5 < 0.8 -> unclipped: -0.5 (gradient -A r = -0.5)
    # Row 2: A<0, r=0.5 < 0.8 -> clipped: 0.8 (no gradient)
    # Row 3: A<0, r=1.5 > 1.2 -> unclipped: 1.5 (gradient -A r = 1.5)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 0.8 + 1.5) / (4 + EPS))
    torch.testing.assert_close(lp.grad[:, 0], torch.tensor([0.0, -0.5, 0.0, 1.5], dtype=torch.float64) / (4 + EPS))
    assert metrics["clip_fraction"] == pytest.approx(0.5)
    assert metrics["probs_ratio_max"] == pytest.approx(1.5) and metrics["probs_ratio_clamped_max"] == pytest.approx(1.2)


def test_dual_clip_bounds_negative_advantage_loss():
    lp = torch.tensor([[math.log(5.0)]], dtype=torch.float64, requires_grad=True)
    loss, metrics = clipped_pg_loss(
        lp,
        torch.zeros(1, 1, dtype=torch.float64),
        torch.tensor([-2.0], dtype=torch.float64),
        torch.ones(1, 1),
        config=hand_config(ratio_clip_c=3.0),
    )
    loss.backward()
    assert loss.item() == pytest.approx(3.0 * 2.0 / (1 + EPS))  # -c A instead of -r A = 10
    assert lp.grad.item() == 0.0 and metrics["clip_fraction"] == pytest.approx(1.0)


@given(
    log_ratio=st.floats(-3.0, 3.0),
    a=st.floats(-5.0, 5.0).filter(lambda x: abs(x) > 1e-3),
    eps_low=st.sampled_from([0.1, 0.2]),
    eps_high=st.sampled_from([0.2, 0.28]),
)
def test_clipped_region_is_flat_and_elsewhere_the_gradient_is_minus_a_r(log_ratio, a, eps_low, eps_high):
    r = math.exp(log_ratio)
    assume(abs(r - (1 + eps_high)) > 1e-6 and abs(r - (1 - eps_low)) > 1e-6)
    lp = torch.tensor([[log_ratio]], dtype=torch.float64, requires_grad=True)
    loss, _ = clipped_pg_loss(
        lp,
        torch.zeros(1, 1, dtype=torch.float64),
        torch.tensor([a], dtype=torch.float64),
        torch.ones(1, 1),
        config=hand_config(ratio_clip_min=eps_low, ratio_clip_max=eps_high),
    )
    loss.backward()
    clipped = (a > 0 and r > 1 + eps_high) or (a < 0 and r < 1 - eps_low)
    if clipped:  # the loss is the constant -A * bound, whatever the ratio beyond it
        bound = 1 + eps_high if a > 0 else 1 - eps_low
        assert loss.item() == pytest.approx(-a * bound / (1 + EPS), rel=1e-12)
        assert lp.grad.item() == 0.0
    else:  # d/d lp of -A r = -A r
        assert lp.grad.item() == pytest.approx(-a * r / (1 + EPS), rel=1e-12)


@given(c=configs, seed=st.integers(0, 2**16), n_micro=st.integers(1, 4))
def test_micro_batches_with_global_counts_sum_to_the_full_batch(c, seed, n_micro):
    # Loss and gradient of the full batch equal the sums over micro-batches that divide by the
    # *global* counts: what gradient accumulation and data parallelism rely on.
    cfg = build_config(c)
    lp, prev, adv, mask, generation, ref = random_batch(seed, B=6, T=7)
    sample_mask = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.float64)
    inputs = {"generation_logprobs": generation, "reference_logprobs": ref, "sample_mask": sample_mask}
    x = lp.clone().requires_grad_()
    full, _ = clipped_pg_loss(x, prev, adv, mask, config=cfg, **inputs)
    (full_grad,) = torch.autograd.grad(full, x)

    counts = {"global_valid_toks": (mask * sample_mask[:, None]).sum(), "global_valid_seqs": sample_mask.sum()}
    total = torch.zeros((), dtype=torch.float64)
    for idx in torch.arange(6).chunk(n_micro):
        part, _ = clipped_pg_loss(
            x[idx], prev[idx], adv[idx], mask[idx], config=cfg, **{k: v[idx] for k, v in inputs.items()}, **counts
        )
        total = total + part
    (split_grad,) = torch.autograd.grad(total, x)
    torch.testing.assert_close(total, full)
    torch.testing.assert_close(split_grad, full_grad)


def test_kl_gradient_carries_the_score_function_term():
    # Off-policy-approximation default: rho = exp(lp - sg(lp)); d/dlp [beta rho k3] = beta (k3 + dk3/dlp).
    lp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]], dtype=torch.float64)
    beta = 0.1
    cfg = ClippedPGConfig(reference_policy_kl_penalty=beta)
    loss, metrics = clipped_pg_loss(
        lp, lp.detach(), torch.zeros(1), torch.ones(1, 2), config=cfg, reference_logprobs=ref
    )
    loss.backward()
    x = (ref - lp).detach()
    k3 = torch.exp(x) - 1 - x
    torch.testing.assert_close(lp.grad, beta * (k3 - (torch.exp(x) - 1)) / (2 + EPS))
    assert metrics["kl_penalty"] == pytest.approx(k3.sum().item() / (2 + EPS))


def test_on_policy_kl_weight_uses_generation_logprobs():
    lp = torch.tensor([[-1.0]], dtype=torch.float64, requires_grad=True)
    gen = torch.tensor([[-1.4]], dtype=torch.float64)
    ref = torch.tensor([[-2.0]], dtype=torch.float64)
    cfg = ClippedPGConfig(reference_policy_kl_penalty=1.0, use_on_policy_kl_approximation=True)
    loss, _ = clipped_pg_loss(
        lp, lp.detach(), torch.zeros(1), torch.ones(1, 1), config=cfg, generation_logprobs=gen, reference_logprobs=ref
    )
    loss.backward()
    x = -1.0
    k3 = math.exp(x) - 1 - x
    w = math.exp(0.4)
    assert loss.item() == pytest.approx(w * k3 / (1 + EPS))
    # d/dlp [w(lp) k3(lp)] = w k3 + w dk3/dlp, with dk3/dlp = -(e^x - 1)
    assert lp.grad.item() == pytest.approx((w * k3 - w * (math.exp(x) - 1)) / (1 + EPS))


def test_force_on_policy_ratio_is_reinforce_with_unit_ratio():
    lp, _, adv, mask, _, _ = random_batch(3)
    x = lp.clone().requires_grad_()
    cfg = hand_config(force_on_policy_ratio=True)
    loss, metrics = clipped_pg_loss(x, None, adv, mask, config=cfg)
    loss.backward()
    n = mask.sum() + EPS
    assert loss.item() == pytest.approx(-(adv * mask).sum().item() / n.item())
    torch.testing.assert_close(x.grad, -adv * mask / n)
    assert metrics["probs_ratio"] == pytest.approx(mask.sum().item() / n.item())


def test_cispo_gradient_is_clipped_weight_times_score():
    lp = torch.tensor([[math.log(2.0), math.log(0.9)]], dtype=torch.float64, requires_grad=True)
    prev = torch.zeros(1, 2, dtype=torch.float64)
    adv = torch.tensor([1.5], dtype=torch.float64)
    cfg = hand_config(use_cispo=True, ratio_clip_min=1.0, ratio_clip_max=0.5)
    loss, _ = clipped_pg_loss(lp, prev, adv, torch.ones(1, 2), config=cfg)
    loss.backward()
    # Unlike PPO, the clipped token (r = 2 -> 1.5) still gets a gradient, scaled by the clipped weight.
    torch.testing.assert_close(lp.grad, torch.tensor([[-1.5 * 1.5, -1.5 * 0.9]], dtype=torch.float64) / (2 + EPS))


def test_padding_with_neg_inf_stays_finite():
    lp, prev, adv, mask, generation, ref = random_batch(11)
    mask[1, 3:] = 0
    for t in (lp, prev, generation, ref):
        t[1, 3:] = -float("inf")
    cfg = ClippedPGConfig(
        use_importance_sampling_correction=True,
        use_on_policy_kl_approximation=True,
        truncated_importance_sampling_type="tis",
        truncated_importance_sampling_ratio=2.0,
    )
    x = lp.clone().requires_grad_()
    loss, metrics = clipped_pg_loss(
        x, prev, adv, mask, config=cfg, generation_logprobs=generation, reference_logprobs=ref
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert (x.grad[1, 3:] == 0).all()
    assert all(math.isfinite(v) for v in metrics.values())


def test_advantage_shapes_agree():
    lp, prev, _, mask, _, _ = random_batch(2)
    adv = torch.randn(3, dtype=torch.float64)
    cfg = hand_config()
    a, _ = clipped_pg_loss(lp, prev, adv, mask, config=cfg)
    b, _ = clipped_pg_loss(lp, prev, adv[:, None].expand(3, 5), mask, config=cfg)
    torch.testing.assert_close(a, b)


def test_empty_mask_gives_zero_loss_and_neutral_metrics():
    lp, prev, adv, _, _, ref = random_batch(4)
    x = lp.clone().requires_grad_()
    loss, metrics = clipped_pg_loss(x, prev, adv, torch.zeros(3, 5), reference_logprobs=ref)
    loss.backward()
    assert loss.item() == 0.0 and (x.grad == 0).all()
    assert metrics["probs_ratio_min"] == math.inf and metrics["probs_ratio_max"] == -math.inf


def test_float32_agrees_with_float64():
    lp, prev, adv, mask, generation, ref = random_batch(9)
    cfg = ClippedPGConfig(use_importance_sampling_correction=True)
    l64, _ = clipped_pg_loss(lp, prev, adv, mask, config=cfg, generation_logprobs=generation, reference_logprobs=ref)
    l32, _ = clipped_pg_loss(
        lp.float(),
        prev.float(),
        adv.float(),
        mask.float(),
        config=cfg,
        generation_logprobs=generation.float(),
        reference_logprobs=ref.float(),
    )
    assert l32.dtype == torch.float32
    assert l32.item() == pytest.approx(l64.item(), rel=1e-5, abs=1e-6)
