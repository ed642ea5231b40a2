"""customization.conventions: NeMo RL's, TRL's and verl's GRPO losses and advantage scalings.

Every convention is checked against a plain-torch transcription of that framework's formula
(TRL f2cd577 ``trl/trainer/grpo_trainer.py``; verl b178a3c ``verl/trainer/ppo/core_algos.py``),
written here from the source, not from the library; then the equivalences and the differences
between the frameworks are asserted, and every bad argument.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_rl_theory import ClippedPGConfig, clipped_pg_loss, grpo_advantages
from nemo_rl_theory.customization.conventions import (
    DEFAULTS,
    SOURCES,
    TRL_LOSS_TYPES,
    VERL_LOSS_AGG_MODES,
    Reduction,
    nemo_rl_reduction,
    trl_advantages,
    trl_grpo_loss,
    trl_reduction,
    verl_grpo_advantages,
    verl_policy_loss,
    verl_reduction,
)
from nemo_rl_theory.training.normalization import clipped_pg_settings

F64 = torch.float64
CLOSE = {"rtol": 1e-7, "atol": 1e-12}  # the library keeps NeMo RL's +1e-8 in every denominator


def make_batch(seed: int, rows: int = 6, width: int = 7, spread: float = 0.15):
    """Right-padded batch with lengths in [1, width] (one row fully masked), finite padding."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (rows,), generator=gen)
    lengths[-1] = 0 if rows > 2 else lengths[-1]
    mask = (torch.arange(width)[None, :] < lengths[:, None]).to(F64)
    logprobs = -(torch.rand(rows, width, generator=gen, dtype=F64) * 2 + 0.05)
    old = logprobs + spread * torch.randn(rows, width, generator=gen, dtype=F64)
    ref = logprobs + 0.3 * torch.randn(rows, width, generator=gen, dtype=F64)
    adv = torch.randn(rows, generator=gen, dtype=F64)
    return logprobs, old, ref, adv, mask


# ----------------------------------------------------------------------------- independent formulas


def trl_formula(
    logp,
    old,
    adv,
    mask,
    loss_type,
    *,
    eps=0.2,
    eps_high=None,
    delta=None,
    beta=0.0,
    ref=None,
    bias_kl=False,
    level="token",
    max_len=512,
    n_items=None,
    k=1,
    tau_pos=1.0,
    tau_neg=1.05,
):
    """TRL's _compute_loss, line by line (f2cd577), on one process."""
    eps_high = eps if eps_high is None else eps_high
    a = adv[:, None] if adv.dim() == 1 else adv
    log_ratio = logp - old
    if level == "token":
        log_w = log_ratio
    else:
        log_w = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0))[:, None]
    coef_1 = torch.exp(log_w)
    if beta != 0:
        per_token_kl = torch.exp(ref - logp) - (ref - logp) - 1
        if bias_kl:
            per_token_kl = per_token_kl * coef_1
    if loss_type == "cispo":
        clamped = torch.clamp(coef_1, max=eps_high).detach()
        loss_t = -clamped * a * logp
    elif loss_type == "sapo":
        tau = torch.where(a > 0, tau_pos, tau_neg)
        loss_t = -torch.sigmoid(tau * (coef_1 - 1)) * 4 / tau * a
    else:
        coef_2 = torch.clamp(coef_1, 1 - eps, 1 + eps_high)
        if delta is not None:
            coef_1 = torch.clamp(coef_1, max=delta)
        loss_t = -torch.min(coef_1 * a, coef_2 * a)
    if beta != 0:
        loss_t = loss_t + beta * per_token_kl
    if loss_type in ("grpo", "sapo"):
        return ((loss_t * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / k
    if loss_type == "bnpo":
        return (loss_t * mask).sum() / mask.sum().clamp(min=1.0) / k
    if loss_type == "dr_grpo":
        return (loss_t * mask).sum() / (loss_t.size(0) * max_len) / k
    if loss_type in ("dapo", "cispo"):
        n = mask.sum() if n_items is None else torch.as_tensor(n_items, dtype=F64)
        return (loss_t * mask).sum() / n.clamp(min=1.0)
    assert loss_type == "luspo"
    return (loss_t * mask.sum(1, keepdim=True)).mean() / k


def verl_agg(mat, mask, mode, *, n_tok=None, n_seq=None, scale_factor=None):
    """verl's agg_loss (b178a3c), dp_size = 1."""
    if mode == "token-mean":
        n = mask.sum() if n_tok is None else n_tok
        return (mat * mask).sum() / n
    if mode == "seq-mean-token-sum":
        seq = (mat * mask).sum(-1)
        seq_mask = (mask.sum(-1) > 0).to(mat.dtype)
        n = seq_mask.sum() if n_seq is None else n_seq
        return (seq * seq_mask).sum() / n
    if mode == "seq-mean-token-mean":
        count = mask.sum(-1)
        seq = (mat * mask).sum(-1) / (count + 1e-8)
        seq_mask = (count > 0).to(mat.dtype)
        n = seq_mask.sum() if n_seq is None else n_seq
        return (seq * seq_mask).sum() / n
    assert mode == "seq-mean-token-sum-norm"
    s = mask.shape[-1] if scale_factor is None else scale_factor
    return (mat * mask).sum(-1).sum() / s


def verl_formula(
    logp,
    old,
    adv,
    mask,
    mode,
    *,
    clip=0.2,
    low=None,
    high=None,
    c=3.0,
    use_kl=False,
    coef=0.001,
    kl_type="low_var_kl",
    ref=None,
    n_tok=None,
    n_seq=None,
    scale_factor=None,
):
    """verl's compute_policy_loss_vanilla + kl_penalty_forward (b178a3c), written out."""
    low = clip if low is None else low
    high = clip if high is None else high
    a = adv[:, None] if adv.dim() == 1 else adv
    ratio = torch.exp(torch.clamp(logp - old, -20.0, 20.0))
    pg1 = -a * ratio
    pg2 = -a * torch.clamp(ratio, 1 - low, 1 + high)
    clip1 = torch.maximum(pg1, pg2)
    clip2 = torch.min(-a * c, clip1)
    pg = torch.where(a < 0, clip2, clip1)
    agg = {"n_tok": n_tok, "n_seq": n_seq, "scale_factor": scale_factor}
    loss = verl_agg(pg, mask, mode, **agg)
    if use_kl:
        if kl_type in ("kl", "k1"):
            kld = logp - ref
        elif kl_type in ("mse", "k2"):
            kld = 0.5 * (logp - ref).square()
        else:
            x = torch.clamp(ref - logp, -20, 20)
            kld = torch.clamp(torch.exp(x) - x - 1, -10, 10)
        loss = loss + coef * verl_agg(kld, mask, mode, **agg)
    return loss


def at(func, *args, **kwargs):
    """The loss ``x -> func(x, *args, **kwargs)`` as a function of the log-probs ``x``."""
    return lambda x: func(x, *args, **kwargs)


def value_and_grad(fn, logp):
    x = logp.clone().requires_grad_(True)
    out = fn(x)
    (grad,) = torch.autograd.grad(out, x)
    return out.detach(), grad


def assert_same(fn_a, fn_b, logp, **close):
    va, ga = value_and_grad(fn_a, logp)
    vb, gb = value_and_grad(fn_b, logp)
    torch.testing.assert_close(va, vb, **(close or CLOSE))
    torch.testing.assert_close(ga, gb, **(close or CLOSE))


def trl_kwargs(loss_type):
    if loss_type == "cispo":
        return {"epsilon_high": 5.0}
    if loss_type == "luspo":
        return {"importance_sampling_level": "sequence"}
    return {}


def formula_kwargs(loss_type):
    if loss_type == "cispo":
        return {"eps_high": 5.0}
    if loss_type == "luspo":
        return {"level": "sequence"}
    return {}


# ----------------------------------------------------------------------------- each convention vs its formula


@pytest.mark.parametrize("loss_type", TRL_LOSS_TYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_trl_loss_types_match_formula(loss_type, seed):
    logp, old, _, adv, mask = make_batch(seed, spread=0.4)  # some ratios leave the clip range
    width = mask.shape[1]
    lib = at(
        trl_grpo_loss, old, adv, mask, loss_type=loss_type, max_completion_length=width + 3, **trl_kwargs(loss_type)
    )
    ref = at(trl_formula, old, adv, mask, loss_type, max_len=width + 3, **formula_kwargs(loss_type))
    assert_same(lib, ref, logp)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo"])
@pytest.mark.parametrize("bias_kl", [False, True])
def test_trl_kl_term_matches_formula(loss_type, bias_kl):
    logp, old, ref_lp, adv, mask = make_batch(2, spread=0.3)
    kw = {"beta": 0.04, "ref_logprobs": ref_lp, "use_bias_correction_kl": bias_kl, "max_completion_length": 7}
    lib = at(trl_grpo_loss, old, adv, mask, loss_type=loss_type, **kw, **trl_kwargs(loss_type))
    ref = at(
        trl_formula,
        old,
        adv,
        mask,
        loss_type,
        beta=0.04,
        ref=ref_lp,
        bias_kl=bias_kl,
        max_len=7,
        **formula_kwargs(loss_type),
    )
    assert_same(lib, ref, logp)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "sapo"])
def test_trl_sequence_level_ratios_match_formula(loss_type):
    logp, old, ref_lp, adv, mask = make_batch(3, spread=0.5)
    kw = {"importance_sampling_level": "sequence", "max_completion_length": 9, "beta": 0.1, "ref_logprobs": ref_lp}
    lib = at(trl_grpo_loss, old, adv, mask, loss_type=loss_type, **kw)
    ref = at(trl_formula, old, adv, mask, loss_type, level="sequence", max_len=9, beta=0.1, ref=ref_lp)
    assert_same(lib, ref, logp)


def test_trl_delta_and_asymmetric_clip_match_formula():
    logp, old, _, adv, mask = make_batch(4, spread=1.5)  # ratios far beyond delta
    for loss_type in ("grpo", "dapo", "dr_grpo", "bnpo"):
        kw = {"epsilon": 0.2, "epsilon_high": 0.28, "delta": 1.6, "max_completion_length": 7}
        lib = at(trl_grpo_loss, old, adv, mask, loss_type=loss_type, **kw)
        ref = at(trl_formula, old, adv, mask, loss_type, eps=0.2, eps_high=0.28, delta=1.6, max_len=7)
        assert_same(lib, ref, logp)


def test_trl_gradient_accumulation_and_global_count_match_formula():
    logp, old, _, adv, mask = make_batch(5)
    for loss_type in ("grpo", "bnpo", "dr_grpo", "sapo"):
        lib = at(
            trl_grpo_loss, old, adv, mask, loss_type=loss_type, gradient_accumulation_steps=3, max_completion_length=8
        )
        ref = at(trl_formula, old, adv, mask, loss_type, k=3, max_len=8)
        assert_same(lib, ref, logp)
    lib = at(trl_grpo_loss, old, adv, mask, loss_type="dapo", num_items_in_batch=57.0)
    ref = at(trl_formula, old, adv, mask, "dapo", n_items=57.0)
    assert_same(lib, ref, logp)


@pytest.mark.parametrize("mode", VERL_LOSS_AGG_MODES)
@pytest.mark.parametrize("seed", [0, 1])
def test_verl_agg_modes_match_formula(mode, seed):
    logp, old, _, adv, mask = make_batch(seed, spread=0.6)
    adv[0] = -1.0
    old[0, 0] = logp[0, 0] - 1.5  # ratio e^1.5 > 3 with A < 0: the dual clip is active
    lib = at(verl_policy_loss, old, adv, mask, loss_agg_mode=mode)
    ref = at(verl_formula, old, adv, mask, mode)
    assert_same(lib, ref, logp)


@pytest.mark.parametrize("mode", VERL_LOSS_AGG_MODES)
@pytest.mark.parametrize("kl_type", ["low_var_kl", "k1", "mse"])
def test_verl_kl_and_global_counts_match_formula(mode, kl_type):
    logp, old, ref_lp, adv, mask = make_batch(6, spread=0.3)
    ref_lp[1, 0] = logp[1, 0] + 25.0  # beyond the +-20 input clamp of low_var_kl
    counts = {"batch_num_tokens": 60.0, "global_batch_size": 9.0, "loss_scale_factor": 11.0}
    kw = {
        "use_kl_loss": True,
        "kl_loss_coef": 0.05,
        "kl_loss_type": kl_type,
        "ref_logprobs": ref_lp,
        "clip_ratio_low": 0.2,
        "clip_ratio_high": 0.28,
        "clip_ratio_c": 2.5,
    }
    lib = at(verl_policy_loss, old, adv, mask, loss_agg_mode=mode, **kw, **counts)
    ref = at(
        verl_formula,
        old,
        adv,
        mask,
        mode,
        use_kl=True,
        coef=0.05,
        kl_type=kl_type,
        ref=ref_lp,
        low=0.2,
        high=0.28,
        c=2.5,
        n_tok=60.0,
        n_seq=9.0,
        scale_factor=11.0,
    )
    assert_same(lib, ref, logp)


@settings(max_examples=25)
@given(
    seed=st.integers(0, 10_000),
    rows=st.integers(1, 5),
    width=st.integers(1, 6),
    loss_type=st.sampled_from(["grpo", "bnpo", "dr_grpo", "dapo", "sapo"]),
    mode=st.sampled_from(VERL_LOSS_AGG_MODES),
)
def test_property_random_batches(seed, rows, width, loss_type, mode):
    logp, old, _, adv, mask = make_batch(seed, rows=rows, width=width, spread=0.5)
    lib = trl_grpo_loss(logp, old, adv, mask, loss_type=loss_type, max_completion_length=width)
    torch.testing.assert_close(lib, trl_formula(logp, old, adv, mask, loss_type, max_len=width), **CLOSE)
    lib = verl_policy_loss(logp, old, adv, mask, loss_agg_mode=mode)
    torch.testing.assert_close(lib, verl_formula(logp, old, adv, mask, mode), **CLOSE)


def test_padding_may_hold_minus_inf():
    logp, old, ref_lp, adv, mask = make_batch(7)
    pad = mask == 0
    bad = [t.masked_fill(pad, -torch.inf) for t in (logp, old, ref_lp)]
    for loss_type in TRL_LOSS_TYPES:
        kw = trl_kwargs(loss_type) | ({"beta": 0.1, "ref_logprobs": bad[2]} if loss_type != "luspo" else {})
        x = bad[0].clone().requires_grad_(True)
        loss = trl_grpo_loss(x, bad[1], adv, mask, loss_type=loss_type, max_completion_length=7, **kw)
        (grad,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(loss) and torch.isfinite(grad).all() and (grad[pad] == 0).all()
    for mode in VERL_LOSS_AGG_MODES:
        x = bad[0].clone().requires_grad_(True)
        loss = verl_policy_loss(x, bad[1], adv, mask, loss_agg_mode=mode, use_kl_loss=True, ref_logprobs=bad[2])
        (grad,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(loss) and torch.isfinite(grad).all() and (grad[pad] == 0).all()


def test_gradcheck_through_conventions():
    logp, old, ref_lp, adv, mask = make_batch(8, rows=3, width=3)
    for loss_type in ("dapo", "grpo", "sapo", "luspo"):  # not cispo: its weight is a stop-gradient by design
        kl = {} if loss_type == "luspo" else {"beta": 0.1, "ref_logprobs": ref_lp}
        fn = at(trl_grpo_loss, old, adv, mask, loss_type=loss_type, **kl, **trl_kwargs(loss_type))
        assert torch.autograd.gradcheck(fn, (logp.clone().requires_grad_(True),))
    fn = at(verl_policy_loss, old, adv, mask, loss_agg_mode="seq-mean-token-sum", use_kl_loss=True, ref_logprobs=ref_lp)
    assert torch.autograd.gradcheck(fn, (logp.clone().requires_grad_(True),))


# ----------------------------------------------------------------------------- equivalences


def nemo(logp, old, adv, mask, *, token_level_loss=True, **kwargs):
    config = ClippedPGConfig(
        reference_policy_kl_penalty=0.0,
        token_level_loss=token_level_loss,
        **{k: v for k, v in kwargs.items() if k.startswith(("ratio", "use_", "sequence"))},
    )
    counts = {k: v for k, v in kwargs.items() if k.startswith("global")}
    return clipped_pg_loss(logp, old, adv, mask, config=config, **counts)[0]


def test_token_level_equivalence_nemo_trl_dapo_verl_token_mean():
    logp, old, _, adv, mask = make_batch(9, spread=0.3)
    n = float(mask.sum()) + 13  # a global count covering other micro-batches
    a = at(nemo, old, adv, mask, global_valid_toks=n)
    assert_same(a, lambda x: trl_grpo_loss(x, old, adv, mask, loss_type="dapo", num_items_in_batch=n), logp)
    assert_same(a, lambda x: verl_policy_loss(x, old, adv, mask, batch_num_tokens=n), logp)  # ratios < 3
    # one micro-batch: bnpo is dapo
    assert_same(a, lambda x: trl_grpo_loss(x, old, adv, mask, loss_type="bnpo") * float(mask.sum()) / n, logp)


def test_sequence_level_equivalence_nemo_trl_grpo_verl_seq_mean_token_mean():
    logp, old, _, adv, mask = make_batch(10, spread=0.3)
    mask[-1, 0] = 1.0  # no empty row: TRL's mean counts every row, verl's only non-empty ones
    a = at(nemo, old, adv, mask, token_level_loss=False)
    assert_same(a, lambda x: trl_grpo_loss(x, old, adv, mask, loss_type="grpo"), logp)
    assert_same(a, lambda x: verl_policy_loss(x, old, adv, mask, loss_agg_mode="seq-mean-token-mean"), logp)


def test_dr_grpo_and_verl_sums():
    logp, old, _, adv, mask = make_batch(11, spread=0.3)
    mask[-1, :2] = 1.0
    rows, width = mask.shape
    settings_ = clipped_pg_settings("constant", mask, max_length=width)
    dr = at(nemo, old, adv, mask, global_valid_toks=settings_["global_valid_toks"])
    assert_same(dr, lambda x: trl_grpo_loss(x, old, adv, mask, loss_type="dr_grpo", max_completion_length=width), logp)
    # verl seq-mean-token-sum-norm (S = width) is B times Dr. GRPO; seq-mean-token-sum is L times it
    norm = at(verl_policy_loss, old, adv, mask, loss_agg_mode="seq-mean-token-sum-norm")
    assert_same(norm, lambda x: rows * dr(x), logp)
    seq_sum = at(verl_policy_loss, old, adv, mask, loss_agg_mode="seq-mean-token-sum")
    assert_same(seq_sum, lambda x: width * dr(x), logp)


def test_cispo_delta_and_gspo_equivalences():
    logp, old, _, adv, mask = make_batch(12, spread=1.2)
    cispo = at(trl_grpo_loss, old, adv, mask, loss_type="cispo", epsilon_high=2.0)
    assert_same(cispo, lambda x: nemo(x, old, adv, mask, use_cispo=True, ratio_clip_min=1.0, ratio_clip_max=1.0), logp)
    delta = at(trl_grpo_loss, old, adv, mask, loss_type="dapo", delta=2.5)
    assert_same(delta, lambda x: nemo(x, old, adv, mask, ratio_clip_c=2.5), logp)
    verl = at(verl_policy_loss, old, adv, mask, clip_ratio_c=2.5)
    assert_same(delta, verl, logp)
    gspo = at(trl_grpo_loss, old, adv, mask, loss_type="grpo", importance_sampling_level="sequence")
    nemo_gspo = at(nemo, old, adv, mask, token_level_loss=False, sequence_level_importance_ratios=True)
    assert_same(gspo, nemo_gspo, logp)


def test_micro_batches_sum_to_the_full_batch_where_the_framework_says_so():
    logp, old, _, adv, mask = make_batch(13, rows=6, spread=0.3)
    mask[-1, :3] = 1.0
    halves = [slice(0, 3), slice(3, 6)]
    n = float(mask.sum())

    def split(fn):
        return sum(fn(logp[s], old[s], adv[s], mask[s]) for s in halves)

    full_dapo = trl_grpo_loss(logp, old, adv, mask, loss_type="dapo")
    dapo = split(lambda *b: trl_grpo_loss(*b, loss_type="dapo", num_items_in_batch=n))
    torch.testing.assert_close(dapo, full_dapo, **CLOSE)
    grpo = split(lambda *b: trl_grpo_loss(*b, loss_type="grpo", gradient_accumulation_steps=2))
    torch.testing.assert_close(grpo, trl_grpo_loss(logp, old, adv, mask, loss_type="grpo"), **CLOSE)
    bnpo = split(lambda *b: trl_grpo_loss(*b, loss_type="bnpo", gradient_accumulation_steps=2))
    counts = [float(mask[s].sum()) for s in halves]
    assert counts[0] != counts[1]
    assert abs(float(bnpo - full_dapo)) > 1e-4  # bnpo: mean of local token means, not the global mean
    expected = sum(trl_formula(logp[s], old[s], adv[s], mask[s], "bnpo") for s in halves) / 2
    torch.testing.assert_close(bnpo, expected, **CLOSE)
    verl = split(lambda *b: verl_policy_loss(*b, batch_num_tokens=n))
    torch.testing.assert_close(verl, full_dapo, **CLOSE)


# ----------------------------------------------------------------------------- differences


def test_reductions_differ_when_lengths_differ():
    logp, old, _, adv, mask = make_batch(14, spread=0.3)
    values = {
        "token": trl_grpo_loss(logp, old, adv, mask, loss_type="dapo"),
        "sequence": trl_grpo_loss(logp, old, adv, mask, loss_type="grpo"),
        "constant": trl_grpo_loss(logp, old, adv, mask, loss_type="dr_grpo", max_completion_length=7),
    }
    for a in values:
        for b in values:
            if a < b:
                assert abs(float(values[a] - values[b])) > 1e-3, (a, b)


def test_verl_dual_clip_default_differs_from_nemo_default():
    logp, old, _, adv, mask = make_batch(15, spread=0.1)
    adv[0] = -1.0
    old[0, 0] = logp[0, 0] - 2.0  # ratio e^2 > 3 with a negative advantage
    verl = verl_policy_loss(logp, old, adv, mask)
    nemo_default = nemo(logp, old, adv, mask)
    gap = float(nemo_default - verl)
    expected = (torch.exp(torch.tensor(2.0, dtype=F64)) - 3.0) / mask.sum()  # |A| (r - c) / N_tok
    assert gap == pytest.approx(float(expected), rel=1e-7)


def nemo_with_kl(x, old, adv, mask, config, ref, **kwargs):
    return clipped_pg_loss(x, old, adv, mask, config=config, reference_logprobs=ref, **kwargs)[0]


def test_kl_values_agree_and_gradients_differ():
    logp, old, ref_lp, adv, mask = make_batch(16, spread=0.0)
    old = logp.clone()  # on-policy step
    zero = torch.zeros_like(adv)  # KL term alone
    n = float(mask.sum())
    beta = 0.1
    nemo_kl = at(nemo_with_kl, old, zero, mask, ClippedPGConfig(reference_policy_kl_penalty=beta), ref_lp)
    trl_kl = at(trl_grpo_loss, old, zero, mask, beta=beta, ref_logprobs=ref_lp, num_items_in_batch=n)
    trl_bias = at(trl_grpo_loss, old, zero, mask, beta=beta, ref_logprobs=ref_lp, use_bias_correction_kl=True)
    verl_kl = at(verl_policy_loss, old, zero, mask, use_kl_loss=True, kl_loss_coef=beta, ref_logprobs=ref_lp)
    v_nemo, g_nemo = value_and_grad(nemo_kl, logp)
    v_trl, g_trl = value_and_grad(trl_kl, logp)
    v_verl, g_verl = value_and_grad(verl_kl, logp)
    torch.testing.assert_close(v_nemo, v_trl, **CLOSE)
    torch.testing.assert_close(v_nemo, v_verl, **CLOSE)
    torch.testing.assert_close(g_trl, g_verl, **CLOSE)  # k3 alone
    assert (g_nemo - g_trl).abs().max() > 1e-3  # NeMo RL adds the score term kl * grad log pi
    x = ref_lp - logp
    k3 = torch.expm1(x) - x
    torch.testing.assert_close(g_nemo - g_trl, beta * k3 * mask / (n + 1e-8), **CLOSE)
    assert_same(nemo_kl, trl_bias, logp)  # on policy, TRL's bias correction is NeMo RL's default


def test_nemo_on_policy_kl_approximation_is_trl_bias_correction_off_policy():
    logp, old, ref_lp, adv, mask = make_batch(17, spread=0.3)
    zero = torch.zeros_like(adv)
    cfg = ClippedPGConfig(
        reference_policy_kl_penalty=0.1,
        use_on_policy_kl_approximation=True,
        kl_input_clamp_value=None,
        kl_output_clamp_value=None,
    )
    nemo_kl = at(nemo_with_kl, old, zero, mask, cfg, ref_lp, generation_logprobs=old)
    trl_bias = at(trl_grpo_loss, old, zero, mask, beta=0.1, ref_logprobs=ref_lp, use_bias_correction_kl=True)
    assert_same(nemo_kl, trl_bias, logp)


# ----------------------------------------------------------------------------- advantages


def rewards_batch(seed, groups=5, size=4):
    gen = torch.Generator().manual_seed(seed)
    r = torch.randint(0, 3, (groups * size,), generator=gen).to(F64) / 2 + 0.1 * torch.rand(
        groups * size, generator=gen, dtype=F64
    )
    r[:size] = 0.7  # a tied group
    return r, torch.arange(groups * size) // size


def test_trl_advantages_match_formula():
    r, _ = rewards_batch(0)
    g = r.view(-1, 4)
    mean = g.mean(1, keepdim=True)
    group_std = g.std(1, keepdim=True)  # torch.std: Bessel, as TRL's nanstd
    expected = ((g - mean) / (group_std + 1e-4)).flatten()
    torch.testing.assert_close(trl_advantages(r, 4), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(trl_advantages(r, 4, scale_rewards=True), expected, rtol=1e-10, atol=1e-10)
    batch = ((g - mean) / (r.std() + 1e-4)).flatten()
    torch.testing.assert_close(trl_advantages(r, 4, scale_rewards="batch"), batch, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(trl_advantages(r, 4, scale_rewards=False), (g - mean).flatten(), rtol=1e-10, atol=1e-12)


def test_verl_advantages_match_formula():
    r, ids = rewards_batch(1)
    ids = ids.clone()
    ids[-1] = 99  # a group of one
    expected = torch.empty_like(r)
    for i in range(len(r)):
        same = r[ids == ids[i]]
        mean, std = (
            (same.mean(), same.std()) if len(same) > 1 else (torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64))
        )
        expected[i] = (r[i] - mean) / (std + 1e-6)
    torch.testing.assert_close(verl_grpo_advantages(r, ids), expected, rtol=1e-10, atol=1e-10)
    plain = verl_grpo_advantages(r, ids, norm_adv_by_std_in_grpo=False)
    assert float(plain[-1]) == float(r[-1])


def test_advantage_equivalences_and_differences():
    r, ids = rewards_batch(2)
    nemo_mean = grpo_advantages(r, ids, use_leave_one_out_baseline=False)
    torch.testing.assert_close(verl_grpo_advantages(r, ids), nemo_mean, rtol=1e-12, atol=1e-12)
    _, std = torch.ones(1), r.view(-1, 4).std(1).repeat_interleave(4)
    torch.testing.assert_close(trl_advantages(r, 4), nemo_mean * (std + 1e-6) / (std + 1e-4), rtol=1e-10, atol=1e-12)
    assert (trl_advantages(r, 4) - nemo_mean).abs().max() > 1e-5  # the epsilons differ
    rloo = r - (r.view(-1, 4).sum(1).repeat_interleave(4) - r) / 3  # verl's "rloo" estimator
    torch.testing.assert_close(grpo_advantages(r, ids, normalize_rewards=False), rloo, rtol=1e-12, atol=1e-12)
    assert (grpo_advantages(r, ids) - nemo_mean).abs().max() > 1e-2  # NeMo RL's default (leave-one-out) differs


# ----------------------------------------------------------------------------- reductions, tables, bad input


def test_reduction_objects():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=F64)
    assert nemo_rl_reduction(mask).global_valid_toks == 3.0
    assert nemo_rl_reduction(mask, token_level_loss=False).global_valid_seqs == 2.0
    assert trl_reduction("dr_grpo", mask, max_completion_length=4).global_valid_toks == 8.0
    assert trl_reduction("bnpo", mask, gradient_accumulation_steps=2).global_valid_toks == 6.0
    assert verl_reduction("seq-mean-token-sum", mask).scale == pytest.approx(1.5)
    r = Reduction(True, global_valid_toks=3.0)
    torch.testing.assert_close(r.reduce(torch.ones(2, 3, dtype=F64), mask), torch.tensor(1.0, dtype=F64), **CLOSE)
    assert set(SOURCES) == {"NeMo RL", "TRL", "verl"} and all("commit" in s or "7ea279a" in s for s in SOURCES.values())
    assert all(len(row) == 4 for row in DEFAULTS)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda b: trl_grpo_loss(*b, loss_type="ppo"), r"loss_type must be one of .*'ppo'"),
        (lambda b: trl_grpo_loss(*b, loss_type="vespo"), r"vespo"),
        (lambda b: trl_grpo_loss(*b, importance_sampling_level="seq"), r"importance_sampling_level"),
        (lambda b: trl_grpo_loss(*b, loss_type="luspo"), r"luspo.*sequence"),
        (lambda b: trl_grpo_loss(*b, loss_type="cispo"), r"epsilon_high"),
        (
            lambda b: trl_grpo_loss(*b, loss_type="cispo", epsilon_high=5.0, importance_sampling_level="sequence"),
            r"cispo",
        ),
        (lambda b: trl_grpo_loss(*b, delta=1.1), r"delta"),
        (lambda b: trl_grpo_loss(*b, loss_type="sapo", delta=2.0), r"delta"),
        (lambda b: trl_grpo_loss(*b, beta=0.1), r"ref_logprobs"),
        (lambda b: trl_grpo_loss(*b, beta=-0.1), r"beta"),
        (lambda b: trl_grpo_loss(*b, num_items_in_batch=3.0), r"num_items_in_batch"),
        (lambda b: trl_grpo_loss(*b, gradient_accumulation_steps=0), r"gradient_accumulation_steps"),
        (lambda b: trl_grpo_loss(*b, loss_type="dr_grpo", max_completion_length=2), r"max_length"),
        (lambda b: trl_grpo_loss(*b, loss_type="sapo", sapo_temperature_pos=0.0), r"sapo_temperature_pos"),
        (lambda b: verl_policy_loss(*b, loss_agg_mode="token_mean"), r"loss_agg_mode must be one of .*'token_mean'"),
        (lambda b: verl_policy_loss(*b, clip_ratio_c=1.0), r"clip_ratio_c"),
        (lambda b: verl_policy_loss(*b, use_kl_loss=True), r"ref_logprobs"),
        (lambda b: verl_policy_loss(*b, use_kl_loss=True, ref_logprobs=b[0], kl_loss_type="full"), r"kl_loss_type"),
        (
            lambda b: verl_policy_loss(*b, loss_agg_mode="seq-mean-token-mean", global_batch_size=1),
            r"global_batch_size",
        ),
        (
            lambda b: verl_policy_loss(*b, loss_agg_mode="seq-mean-token-sum-norm", loss_scale_factor=0.0),
            r"loss_scale_factor",
        ),
        (lambda b: verl_policy_loss(*b, batch_num_tokens=torch.ones(2)), r"batch_num_tokens must be a scalar"),
    ],
)
def test_bad_loss_arguments(call, match):
    logp, old, _, adv, mask = make_batch(18)
    with pytest.raises(ValueError, match=match):
        call((logp, old, adv, mask))


def test_bad_advantage_arguments():
    r, ids = rewards_batch(3)
    with pytest.raises(ValueError, match="scale_rewards must be one of"):
        trl_advantages(r, 4, scale_rewards="prompt")
    with pytest.raises(ValueError, match="multiple of num_generations"):
        trl_advantages(r, 3)
    with pytest.raises(ValueError, match="num_generations"):
        trl_advantages(r, 0)
    with pytest.raises(ValueError, match="index must have shape"):
        verl_grpo_advantages(r, ids[:-1])
    with pytest.raises(ValueError, match="rewards must be finite"):
        verl_grpo_advantages(torch.full((4,), float("nan"), dtype=F64), ids[:4])
    with pytest.raises(TypeError, match="rewards must be a floating-point tensor"):
        trl_advantages(torch.ones(4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="mask must have shape"):
        trl_reduction("dapo", torch.ones(3))


def test_bad_reduction_arguments():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=F64)
    with pytest.raises(ValueError, match="global_valid_toks"):
        nemo_rl_reduction(mask, global_valid_toks=1.0)
    with pytest.raises(TypeError, match="token_level_loss must be a bool"):
        nemo_rl_reduction(mask, token_level_loss=1)
    with pytest.raises(ValueError, match="max_completion_length"):
        trl_reduction("dr_grpo", mask, max_completion_length=0)
    with pytest.raises(ValueError, match="loss_agg_mode must be one of"):
        verl_reduction("seq-sum", mask)
    with pytest.raises(ValueError, match="global_batch_size"):
        verl_reduction("seq-mean-token-sum", mask, global_batch_size=torch.tensor(1.0))


def test_sequence_ratio_reduction_is_the_token_sum_of_a_per_sequence_value():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=F64)
    per_seq = torch.tensor([0.3, -1.2, 0.7], dtype=F64)
    values = per_seq[:, None].expand(3, 3)
    for loss_type in ("dapo", "bnpo", "dr_grpo"):
        red = trl_reduction(loss_type, mask, max_completion_length=4, num_items_in_batch=9.0)
        expected = (values * mask).sum() * red.scale / red.global_valid_toks
        torch.testing.assert_close(red.with_sequence_ratios(mask).reduce(values, mask), expected, **CLOSE)
        torch.testing.assert_close(red.reduce(values, mask), expected, **CLOSE)
