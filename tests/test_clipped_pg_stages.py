"""The stages of clipped_pg_loss, VAPO's positive-example NLL, the KL moved into the reward and
the unfiltered log-probs of the KL term.

* the exported stages composed by hand equal ``clipped_pg_loss`` (the value bit for bit, the
  gradient to the last bits) over the config space, and ``clipped_pg_loss`` calls only their
  unchecked cores; the whole loss and its gradients equal a plain-torch reference written with
  explicit stop-gradients, new keys included;
* each stage against an independent Python-float (float64) reference, and its gradient against
  gradcheck or a hand-derived formula;
* the new keys against hand computations and NeMo RL 7ea279a's semantics
  (``nemo_rl/algorithms/loss/loss_functions.py``): ``use_kl_in_reward`` zeroes the loss's
  penalty (``kl_penalty`` metric 0), the positive NLL is ``-sum(log p) / N+`` over the tokens of
  samples with reward > 0 with the micro-batch's own ``N+`` (so it does NOT add up over
  micro-batches, unlike everything else), ``curr_logprobs_unfiltered`` feeds the KL estimator
  and the KL weight and nothing else;
* every bad-argument path of the stages and of the new arguments.

NeMo RL has no unit test of ``positive_example_nll_weight``, ``use_kl_in_reward`` or
``curr_logprobs_unfiltered`` in ``tests/unit/algorithms/test_loss_functions.py`` at 7ea279a;
its metric-normaliser test (``TestMetricNormalizationAdvertisement``: ``positive_nll_loss`` is a
per-micro-batch mean, never rescaled) and ``test_grpo.py``'s ``_validate_use_kl_in_reward_compat``
cases are ported below as statements about this library's loss.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import nemo_rl_theory
from nemo_rl_theory import (
    ClippedPGConfig,
    ImportanceWeights,
    Surrogate,
    actor_importance_weights,
    calculate_kl,
    clipped_pg_loss,
    clipped_surrogate,
    policy_ratios,
    positive_example_nll,
    reduce_per_token_loss,
    reference_kl_penalty,
)
from nemo_rl_theory.losses import clipped_pg as module

EPS = 1e-8  # NeMo RL's masked_mean epsilon
F64 = torch.float64


def says(name: str, *expected: str) -> str:
    """Regex: ``name`` as a whole word and (if given) one of ``expected``, anywhere in the message."""
    pattern = rf"(?=.*(?<!\w){re.escape(name)}(?!\w))"
    if expected:
        pattern += rf"(?=.*(?:{'|'.join(expected)}))"
    return pattern


# ---------------------------------------------------------------------------------------------
# Inputs and configs
# ---------------------------------------------------------------------------------------------


def batch(seed: int, B: int = 4, T: int = 5, spread: float = 0.4):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(B, T, generator=g, dtype=F64) * 3 - 0.05
    d = {
        "lp": lp,
        "prev": lp + spread * torch.randn(B, T, generator=g, dtype=F64),
        "adv": torch.randn(B, T, generator=g, dtype=F64),
        "ref": lp + 0.5 * torch.randn(B, T, generator=g, dtype=F64),
        "unf": lp + 0.3 * torch.rand(B, T, generator=g, dtype=F64),  # unfiltered >= filtered-ish
        "rewards": torch.randint(-1, 2, (B,), generator=g).to(F64),
    }
    d["gen"] = d["prev"] + 0.2 * torch.randn(B, T, generator=g, dtype=F64)
    mask = (torch.rand(B, T, generator=g) < 0.75).to(F64)
    mask[:, 0] = 1.0
    d["mask"] = mask
    return d


configs = st.fixed_dictionaries(
    {
        "beta": st.sampled_from([0.0, 0.05]),
        "kl_type": st.sampled_from(["k1", "k2", "k3"]),
        "clamps": st.sampled_from([(20.0, 10.0), (None, None), (0.3, 0.05)]),
        "clip": st.sampled_from([(0.2, 0.2), (0.2, 0.28), (1.0, 0.5)]),
        "dual": st.sampled_from([None, 3.0]),
        "mode": st.sampled_from(["ppo", "gspo", "cispo", "reinforce", "on_policy"]),
        "on_policy_kl": st.booleans(),
        "is": st.sampled_from([None, "plain", "tis", "icepop", "seq-mask-tis"]),
        "token_level": st.booleans(),
        "kl_in_reward": st.booleans(),
        "nll": st.sampled_from([0.0, 0.1]),
    }
)


def make_config(c: dict) -> ClippedPGConfig:
    mode = c["mode"]
    eps_low, eps_high = c["clip"]
    if mode != "cispo":
        eps_low = min(eps_low, 0.2)
        eps_high = min(eps_high, 0.28)
    truncation = {}
    if c["is"] not in (None, "plain") and not (c["is"] == "seq-mask-tis" and mode == "gspo"):
        truncation = {
            "truncated_importance_sampling_type": c["is"],
            "truncated_importance_sampling_ratio": 1.3,
            "truncated_importance_sampling_ratio_min": 0.8,
        }
    return ClippedPGConfig(
        reference_policy_kl_penalty=c["beta"],
        reference_policy_kl_type=c["kl_type"],
        kl_input_clamp_value=c["clamps"][0],
        kl_output_clamp_value=c["clamps"][1],
        use_kl_in_reward=c["kl_in_reward"],
        ratio_clip_min=eps_low,
        ratio_clip_max=eps_high,
        ratio_clip_c=None if mode == "cispo" else c["dual"],
        use_on_policy_kl_approximation=c["on_policy_kl"],
        use_importance_sampling_correction=c["is"] is not None,
        sequence_level_importance_ratios=mode == "gspo",
        token_level_loss=mode == "cispo" or (c["token_level"] and mode != "gspo"),
        force_on_policy_ratio=mode == "on_policy",
        disable_ppo_ratio=mode == "reinforce",
        use_cispo=mode == "cispo",
        positive_example_nll_weight=c["nll"],
        **truncation,
    )


# ---------------------------------------------------------------------------------------------
# The stages composed by hand equal clipped_pg_loss
# ---------------------------------------------------------------------------------------------


def composed_loss(cfg: ClippedPGConfig, lp, prev, adv, mask, *, gen, ref, sample_mask, rewards, unf, counts):
    """A custom variant built from the public stages only, with the config's choices."""
    clipping = cfg.ratio_type in ("token", "sequence")
    ratios = policy_ratios(lp, prev, mask, ratio_type=cfg.ratio_type)
    surrogate = clipped_surrogate(
        ratios,
        adv,
        mask,
        ratio_clip_min=cfg.ratio_clip_min if clipping else None,
        ratio_clip_max=cfg.ratio_clip_max if clipping else None,
        ratio_clip_c=cfg.ratio_clip_c,
        use_cispo=cfg.use_cispo,
        logprobs=lp if cfg.use_cispo else None,
    )
    prev_eff = lp.detach() if cfg.force_on_policy_ratio else prev
    per_token = surrogate.loss
    if cfg.use_importance_sampling_correction:
        weights = actor_importance_weights(
            prev_eff,
            gen,
            mask,
            sequence_level_importance_ratios=cfg.sequence_level_importance_ratios,
            truncated_importance_sampling_type=cfg.truncated_importance_sampling_type,
            truncated_importance_sampling_ratio=cfg.truncated_importance_sampling_ratio,
            truncated_importance_sampling_ratio_min=cfg.truncated_importance_sampling_ratio_min,
        )
        per_token = weights.weights * per_token
    reduce = {"sample_mask": sample_mask, "token_level_loss": cfg.token_level_loss, **counts}
    loss = reduce_per_token_loss(per_token, mask, **reduce)
    if cfg.kl_penalty_in_loss != 0:
        kl = reference_kl_penalty(
            lp if unf is None else unf,
            ref,
            mask,
            reference_policy_kl_penalty=cfg.reference_policy_kl_penalty,
            reference_policy_kl_type=cfg.reference_policy_kl_type,
            kl_input_clamp_value=cfg.kl_input_clamp_value,
            kl_output_clamp_value=cfg.kl_output_clamp_value,
            use_on_policy_kl_approximation=cfg.use_on_policy_kl_approximation,
            generation_logprobs=gen if cfg.use_on_policy_kl_approximation else None,
        )
        loss = loss + reduce_per_token_loss(kl, mask, **reduce)
    if cfg.positive_example_nll_weight > 0:
        loss = loss + cfg.positive_example_nll_weight * positive_example_nll(lp, rewards, mask, sample_mask=sample_mask)
    return loss


@given(c=configs, seed=st.integers(0, 2**16), drop=st.sampled_from([1.0, 0.0, 0.5]), unfiltered=st.booleans())
def test_stages_composed_by_hand_equal_clipped_pg_loss(c, seed, drop, unfiltered):
    cfg = make_config(c)
    d = batch(seed)
    sample_mask = torch.tensor([1.0, drop, 1.0, 1.0], dtype=F64)
    counts = {}
    if seed % 2:  # a micro-batch of a larger global batch
        counts = {"global_valid_toks": (d["mask"] * sample_mask[:, None]).sum() + 6, "global_valid_seqs": 7.0}
    x = d["lp"].clone().requires_grad_()
    u = d["unf"].clone().requires_grad_() if unfiltered else None
    inputs = {"sample_mask": sample_mask, "rewards": d["rewards"], **counts}
    loss, metrics = clipped_pg_loss(
        x,
        d["prev"],
        d["adv"],
        d["mask"],
        config=cfg,
        generation_logprobs=d["gen"],
        reference_logprobs=d["ref"],
        logprobs_unfiltered=u,
        **inputs,
    )
    leaves = (x,) if u is None else (x, u)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)

    x2 = d["lp"].clone().requires_grad_()
    u2 = d["unf"].clone().requires_grad_() if unfiltered else None
    composed = composed_loss(
        cfg,
        x2,
        d["prev"],
        d["adv"],
        d["mask"],
        gen=d["gen"],
        ref=d["ref"],
        sample_mask=sample_mask,
        rewards=d["rewards"],
        unf=u2,
        counts=counts,
    )
    grads2 = torch.autograd.grad(composed, (x2,) if u2 is None else (x2, u2), allow_unused=True)
    assert torch.equal(loss, composed)
    assert metrics["loss"] == composed.item()
    for g, g2 in zip(grads, grads2, strict=True):
        if g is None or g2 is None:  # unfiltered log-probs unused (no KL term in the loss)
            assert g is None and g2 is None and cfg.kl_penalty_in_loss == 0
        else:  # the same sums, accumulated by autograd in another order: equal to the last bits
            torch.testing.assert_close(g, g2, rtol=1e-13, atol=1e-16)


def reference_loss(cfg: ClippedPGConfig, lp, prev, adv, mask, *, gen, ref, sm, rewards, unf):
    """The whole loss written out in plain torch with explicit stop-gradients (finite inputs only)."""
    m = mask * sm[:, None]

    def reduce(x):
        if cfg.token_level_loss:
            return (x * m).sum() / (m.sum() + EPS)
        return (sm * (x * mask).sum(-1) / (mask.sum(-1) + EPS)).sum() / (sm.sum() + EPS)

    if cfg.force_on_policy_ratio:
        prev = lp.detach()
        r = rc = torch.exp(lp - lp.detach())
    elif cfg.disable_ppo_ratio:
        r = rc = lp
    else:
        if cfg.sequence_level_importance_ratios:
            mean = ((lp - prev) * mask).sum(-1, keepdim=True) / (mask.sum(-1, keepdim=True) + EPS)
            r = torch.exp(mean).expand_as(lp)
        else:
            r = torch.exp(lp - prev)
        rc = r.clamp(1 - cfg.ratio_clip_min, 1 + cfg.ratio_clip_max)
    if cfg.use_cispo:
        per_token = -adv * rc.detach() * lp
    else:
        per_token = torch.maximum(-adv * r, -adv * rc)
    if cfg.ratio_clip_c is not None:
        per_token = torch.where(adv < 0, torch.minimum(per_token, -adv * cfg.ratio_clip_c), per_token)
    if cfg.use_importance_sampling_correction:
        if cfg.sequence_level_importance_ratios:
            w = torch.exp(((prev - gen) * mask).sum(-1, keepdim=True))
        else:
            w = torch.exp(prev - gen)
        kind, hi, lo = (
            cfg.truncated_importance_sampling_type,
            cfg.truncated_importance_sampling_ratio,
            cfg.truncated_importance_sampling_ratio_min,
        )
        if kind == "tis":
            w = w.clamp(lo or 0.0, hi)
        elif kind == "icepop":
            w = w * ((w >= lo) & (w <= hi))
        elif kind == "seq-mask-tis":
            g = torch.exp(((prev - gen) * mask).sum(-1, keepdim=True) / (mask.sum(-1, keepdim=True) + EPS))
            w = w * ((g >= lo) & (g <= hi))
        per_token = w.detach() * per_token
    loss = reduce(per_token)
    if cfg.reference_policy_kl_penalty and not cfg.use_kl_in_reward:
        u = lp if unf is None else unf
        weight = torch.exp(u - gen) if cfg.use_on_policy_kl_approximation else torch.exp(u - u.detach())
        x = ref - u
        if cfg.kl_input_clamp_value is not None:
            xc = x.clamp(-cfg.kl_input_clamp_value, cfg.kl_input_clamp_value)
            weight = torch.where(xc == x, weight, weight.detach())  # a clamped token has no gradient
            x = xc
        k = {"k1": -x, "k2": 0.5 * x**2, "k3": torch.exp(x) - 1 - x}[cfg.reference_policy_kl_type] * weight
        if cfg.kl_output_clamp_value is not None:
            k = k.clamp(-cfg.kl_output_clamp_value, cfg.kl_output_clamp_value)
        loss = loss + reduce(cfg.reference_policy_kl_penalty * k)
    if cfg.positive_example_nll_weight > 0:
        positive = m * (rewards > 0).to(m.dtype)[:, None]
        if positive.sum() > 0:
            loss = loss + cfg.positive_example_nll_weight * (-(lp * positive).sum() / (positive.sum() + EPS))
    return loss


@given(c=configs, seed=st.integers(0, 2**16), drop=st.sampled_from([1.0, 0.0, 0.5]), unfiltered=st.booleans())
def test_loss_and_gradients_match_a_plain_torch_reference(c, seed, drop, unfiltered):
    cfg = make_config(c)
    d = batch(seed)
    sm = torch.tensor([1.0, drop, 1.0, 1.0], dtype=F64)
    leaves = [d["lp"].clone().requires_grad_(), d["unf"].clone().requires_grad_() if unfiltered else None]
    leaves2 = [t.detach().clone().requires_grad_() if t is not None else None for t in leaves]
    loss, _ = clipped_pg_loss(
        leaves[0],
        d["prev"],
        d["adv"],
        d["mask"],
        config=cfg,
        generation_logprobs=d["gen"],
        reference_logprobs=d["ref"],
        sample_mask=sm,
        rewards=d["rewards"],
        logprobs_unfiltered=leaves[1],
    )
    expected = reference_loss(
        cfg,
        leaves2[0],
        d["prev"],
        d["adv"],
        d["mask"],
        gen=d["gen"],
        ref=d["ref"],
        sm=sm,
        rewards=d["rewards"],
        unf=leaves2[1],
    )
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-15)
    used = [t for t in leaves if t is not None]
    used2 = [t for t in leaves2 if t is not None]
    grads = torch.autograd.grad(loss, used, allow_unused=True)
    grads2 = torch.autograd.grad(expected, used2, allow_unused=True)
    for g, g2 in zip(grads, grads2, strict=True):
        if g2 is None:  # the unfiltered log-probs when the loss has no KL term
            assert g is None
        else:
            torch.testing.assert_close(g, g2, rtol=1e-10, atol=1e-14)


def test_clipped_pg_loss_calls_only_the_unchecked_cores(monkeypatch):
    # The batch is validated once: the public (checking) stages are never called by the pipeline.
    def boom(*args, **kwargs):
        raise AssertionError("clipped_pg_loss called a checking stage")

    for name in (
        "policy_ratios",
        "clipped_surrogate",
        "actor_importance_weights",
        "reference_kl_penalty",
        "reduce_per_token_loss",
        "positive_example_nll",
    ):
        monkeypatch.setattr(module, name, boom)
    d = batch(0)
    cfg = ClippedPGConfig(use_importance_sampling_correction=True, positive_example_nll_weight=0.1)
    loss, _ = module.clipped_pg_loss(
        d["lp"],
        d["prev"],
        d["adv"],
        d["mask"],
        config=cfg,
        generation_logprobs=d["gen"],
        reference_logprobs=d["ref"],
        rewards=d["rewards"],
    )
    assert torch.isfinite(loss)


def test_stages_are_exported_at_top_level_and_in_losses():
    for name in (
        "ImportanceWeights",
        "Surrogate",
        "actor_importance_weights",
        "clipped_surrogate",
        "policy_ratios",
        "positive_example_nll",
        "reduce_per_token_loss",
        "reference_kl_penalty",
    ):
        assert name in nemo_rl_theory.__all__ and name in nemo_rl_theory.losses.__all__
        assert getattr(nemo_rl_theory, name) is getattr(module, name)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({}, "token"),
        ({"sequence_level_importance_ratios": True, "token_level_loss": False}, "sequence"),
        ({"force_on_policy_ratio": True}, "on_policy"),
        ({"disable_ppo_ratio": True}, "disabled"),
    ],
)
def test_config_ratio_type(flags, expected):
    assert ClippedPGConfig(**flags).ratio_type == expected


def test_config_kl_penalty_in_loss():
    assert ClippedPGConfig(reference_policy_kl_penalty=0.3).kl_penalty_in_loss == 0.3
    assert ClippedPGConfig(reference_policy_kl_penalty=0.3, use_kl_in_reward=True).kl_penalty_in_loss == 0.0
    assert ClippedPGConfig().use_kl_in_reward is False and ClippedPGConfig().positive_example_nll_weight == 0.0


# ---------------------------------------------------------------------------------------------
# Each stage against a Python-float reference
# ---------------------------------------------------------------------------------------------


def ref_ratios(lp, prev, mask, kind):
    B, T = len(lp), len(lp[0])
    if kind == "on_policy":
        return [[1.0] * T for _ in range(B)]
    if kind == "disabled":
        return [[lp[b][t] if mask[b][t] else 0.0 for t in range(T)] for b in range(B)]
    if kind == "sequence":
        out = []
        for b in range(B):
            s = sum(lp[b][t] - prev[b][t] for t in range(T) if mask[b][t])
            out.append([math.exp(s / (sum(mask[b]) + EPS))] * T)
        return out
    return [[math.exp(lp[b][t] - prev[b][t]) if mask[b][t] else 1.0 for t in range(T)] for b in range(B)]


@given(seed=st.integers(0, 2**16), kind=st.sampled_from(["token", "sequence", "on_policy", "disabled"]))
def test_policy_ratios_match_reference(seed, kind):
    d = batch(seed)
    lp = d["lp"].masked_fill(d["mask"] == 0, -math.inf)  # padding garbage stays inert
    r = policy_ratios(lp, d["prev"], d["mask"], ratio_type=kind)
    expected = ref_ratios(d["lp"].tolist(), d["prev"].tolist(), d["mask"].tolist(), kind)
    torch.testing.assert_close(r, torch.tensor(expected, dtype=F64), rtol=1e-13, atol=1e-15)


def test_policy_ratios_gradients():
    d = batch(1, B=2, T=3)
    mask = d["mask"]
    for kind in ("token", "sequence", "disabled"):  # ordinary functions of the log-probs
        assert torch.autograd.gradcheck(
            lambda x, kind=kind: policy_ratios(x, d["prev"], mask, ratio_type=kind), (d["lp"].clone().requires_grad_(),)
        )
    # on_policy: value 1, gradient of log pi (the REINFORCE score)
    x = d["lp"].clone().requires_grad_()
    r = policy_ratios(x, None, mask, ratio_type="on_policy")
    (g,) = torch.autograd.grad((r * d["adv"]).sum(), x)
    assert torch.equal(r.detach(), torch.ones_like(r))
    torch.testing.assert_close(g, d["adv"] * mask)


def ref_surrogate(r, a, eps_low, eps_high, c, cispo_lp):
    lo = -math.inf if eps_low is None else 1 - eps_low
    hi = math.inf if eps_high is None else 1 + eps_high
    rc = min(hi, max(lo, r))
    if cispo_lp is not None:
        value, active = -a * rc * cispo_lp, rc != r
    else:
        value, active = max(-a * r, -a * rc), -a * rc > -a * r
    if c is not None and a < 0 and -a * c < value:
        value, active = -a * c, True
    return value, rc, active


@given(
    seed=st.integers(0, 2**16),
    clip=st.sampled_from([(0.2, 0.2), (0.2, 0.28), (None, None), (None, 0.3), (0.1, None)]),
    dual=st.sampled_from([None, 1.5, 3.0]),
    cispo=st.booleans(),
    per_sequence_adv=st.booleans(),
)
def test_clipped_surrogate_matches_reference(seed, clip, dual, cispo, per_sequence_adv):
    d = batch(seed, spread=0.6)
    r = torch.exp(d["lp"] - d["prev"])
    adv = d["adv"][:, 0] if per_sequence_adv else d["adv"]
    dual = None if cispo else dual
    out = clipped_surrogate(
        r,
        adv,
        d["mask"],
        ratio_clip_min=clip[0],
        ratio_clip_max=clip[1],
        ratio_clip_c=dual,
        use_cispo=cispo,
        logprobs=d["lp"] if cispo else None,
    )
    assert isinstance(out, Surrogate)
    a_full = adv[:, None].expand_as(r) if per_sequence_adv else adv
    for b in range(r.shape[0]):
        for t in range(r.shape[1]):
            if not d["mask"][b, t]:
                assert out.loss[b, t] == 0.0
                continue
            value, rc, active = ref_surrogate(
                r[b, t].item(), a_full[b, t].item(), *clip, dual, d["lp"][b, t].item() if cispo else None
            )
            assert out.loss[b, t].item() == pytest.approx(value, rel=1e-13, abs=1e-15)
            assert out.ratios_clamped[b, t].item() == pytest.approx(rc, rel=1e-15)
            assert bool(out.clip_active[b, t]) == active


@pytest.mark.parametrize("dual", [None, 3.0])
@pytest.mark.parametrize("clip", [(0.2, 0.2), (0.1, 0.28)])
def test_clipped_surrogate_gradcheck(clip, dual):
    d = batch(2, B=2, T=3, spread=0.5)
    r = torch.exp(d["lp"] - d["prev"]).requires_grad_()

    def f(x):
        return clipped_surrogate(
            x, d["adv"], d["mask"], ratio_clip_min=clip[0], ratio_clip_max=clip[1], ratio_clip_c=dual
        ).loss

    assert torch.autograd.gradcheck(f, (r,))


def test_cispo_gradient_is_the_stopped_clipped_weight_times_the_score():
    d = batch(3, spread=0.6)
    x = d["lp"].clone().requires_grad_()
    r = policy_ratios(x, d["prev"], d["mask"])
    out = clipped_surrogate(r, d["adv"], d["mask"], ratio_clip_min=1.0, ratio_clip_max=0.25, use_cispo=True, logprobs=x)
    (g,) = torch.autograd.grad(out.loss.sum(), x)
    rc = torch.exp(d["lp"] - d["prev"]).clamp(0.0, 1.25)
    torch.testing.assert_close(g, -d["adv"] * rc * d["mask"])


def ref_importance(prev, gen, mask, seq, kind, hi, lo):
    B, T = len(prev), len(prev[0])
    if seq:
        w = [[math.exp(sum(prev[b][t] - gen[b][t] for t in range(T) if mask[b][t]))] for b in range(B)]
    else:
        w = [[math.exp(prev[b][t] - gen[b][t]) if mask[b][t] else 1.0 for t in range(T)] for b in range(B)]
    oob = None
    if kind == "tis":
        lo = lo or 0.0
        oob = [[not lo <= x <= hi for x in row] for row in w]
        w = [[min(max(x, lo), hi) for x in row] for row in w]
    elif kind == "icepop":
        oob = [[not lo <= x <= hi for x in row] for row in w]
        w = [[x if lo <= x <= hi else 0.0 for x in row] for row in w]
    elif kind == "seq-mask-tis":
        oob = []
        for b in range(B):
            n = sum(mask[b])
            g = math.exp(sum(prev[b][t] - gen[b][t] for t in range(T) if mask[b][t]) / (n + EPS))
            oob.append(not lo <= g <= hi)
            if oob[-1]:
                w[b] = [0.0] * T
    return w, oob


@given(
    seed=st.integers(0, 2**16),
    seq=st.booleans(),
    kind=st.sampled_from([None, "tis", "icepop", "seq-mask-tis"]),
    lo=st.sampled_from([None, 0.8]),
)
def test_actor_importance_weights_match_reference(seed, seq, kind, lo):
    if kind == "seq-mask-tis":
        seq = False
    if kind in ("icepop", "seq-mask-tis") and lo is None:
        lo = 0.9
    hi = 1.2 if kind else None
    lo = lo if kind else None
    d = batch(seed)
    gen = d["prev"] + 0.3 * torch.randn(d["prev"].shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    gen = gen.masked_fill(d["mask"] == 0, math.nan)
    out = actor_importance_weights(
        d["prev"],
        gen,
        d["mask"],
        sequence_level_importance_ratios=seq,
        truncated_importance_sampling_type=kind,
        truncated_importance_sampling_ratio=hi,
        truncated_importance_sampling_ratio_min=lo,
    )
    assert isinstance(out, ImportanceWeights) and not out.weights.requires_grad
    w, oob = ref_importance(d["prev"].tolist(), gen.tolist(), d["mask"].tolist(), seq, kind, hi, lo)
    expected = torch.tensor(w, dtype=F64)
    assert out.weights.shape == expected.shape
    counted = d["mask"] != 0 if not seq else torch.ones_like(expected, dtype=torch.bool)
    torch.testing.assert_close(out.weights[counted], expected[counted], rtol=1e-13, atol=0)
    if oob is None:
        assert out.out_of_bounds is None
    else:
        got = out.out_of_bounds
        want = torch.tensor(oob)
        assert got.shape == want.shape
        if got.dim() == 2 and not seq:
            assert torch.equal(got[counted], want[counted])
        else:
            assert torch.equal(got, want)


def test_importance_weight_that_would_overflow_counts_zero():
    prev = torch.tensor([[0.0, 0.0]])
    gen = torch.tensor([[-200.0, -0.5]])
    out = actor_importance_weights(prev, gen, torch.ones(1, 2))
    assert out.weights[0, 0] == 0.0 and out.weights[0, 1] == pytest.approx(math.exp(0.5))


def ref_kl(lp, ref, kind, cin, cout, beta, weight):
    x = ref - lp
    if cin is not None:
        x = max(-cin, min(cin, x))
    k = {"k1": -x, "k2": 0.5 * x * x, "k3": math.exp(x) - 1 - x}[kind] * weight
    if cout is not None:
        k = max(-cout, min(cout, k))
    return beta * k


@given(
    seed=st.integers(0, 2**16),
    kind=st.sampled_from(["k1", "k2", "k3"]),
    clamps=st.sampled_from([(20.0, 10.0), (None, None), (0.3, 0.05)]),
    on_policy=st.booleans(),
    beta=st.sampled_from([0.0, 0.01, 0.5]),
)
def test_reference_kl_penalty_matches_reference(seed, kind, clamps, on_policy, beta):
    d = batch(seed)
    out = reference_kl_penalty(
        d["lp"],
        d["ref"],
        d["mask"],
        reference_policy_kl_penalty=beta,
        reference_policy_kl_type=kind,
        kl_input_clamp_value=clamps[0],
        kl_output_clamp_value=clamps[1],
        use_on_policy_kl_approximation=on_policy,
        generation_logprobs=d["gen"] if on_policy else None,
    )
    for (b, t), lp in zip(d["mask"].nonzero().tolist(), d["lp"][d["mask"] != 0].tolist(), strict=True):
        w = math.exp(lp - d["gen"][b, t].item()) if on_policy else 1.0
        expected = ref_kl(lp, d["ref"][b, t].item(), kind, *clamps, beta, w)
        assert out[b, t].item() == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # It is calculate_kl times beta, with the documented weight.
    weights = torch.exp(d["lp"] - d["gen"]) if on_policy else torch.ones_like(d["lp"])
    direct = beta * calculate_kl(
        d["lp"],
        d["ref"],
        kl_type=kind,
        input_clamp_value=clamps[0],
        output_clamp_value=clamps[1],
        importance_weights=weights,
    )
    torch.testing.assert_close(out * d["mask"], direct * d["mask"])


def test_reference_kl_penalty_gradients():
    d = batch(4, B=2, T=3)
    # On-policy approximation: an ordinary function of the log-probs.
    f = lambda x: reference_kl_penalty(  # noqa: E731
        x,
        d["ref"],
        d["mask"],
        reference_policy_kl_penalty=0.5,
        kl_input_clamp_value=None,
        kl_output_clamp_value=None,
        use_on_policy_kl_approximation=True,
        generation_logprobs=d["gen"],
    )
    assert torch.autograd.gradcheck(f, (d["lp"].clone().requires_grad_(),))
    # Score-function weight, k3, clamps inactive: d/dlp [k3 + score term] = (1 - e^x) + k3 = -x = lp - ref.
    x = d["lp"].clone().requires_grad_()
    kl = reference_kl_penalty(x, d["ref"], d["mask"], reference_policy_kl_penalty=0.5)
    (g,) = torch.autograd.grad(kl.sum(), x)
    torch.testing.assert_close(g, 0.5 * (d["lp"] - d["ref"]) * d["mask"])


def ref_reduce(x, mask, sm, token_level, n_tok, n_seq):
    B, T = len(x), len(x[0])
    if token_level:
        n = sum(mask[b][t] * sm[b] for b in range(B) for t in range(T)) if n_tok is None else n_tok
        return sum(x[b][t] * mask[b][t] * sm[b] for b in range(B) for t in range(T) if mask[b][t] and sm[b]) / (n + EPS)
    n = sum(sm) if n_seq is None else n_seq
    per_seq = [sum(x[b][t] * mask[b][t] for t in range(T) if mask[b][t]) / (sum(mask[b]) + EPS) for b in range(B)]
    return sum(sm[b] * per_seq[b] for b in range(B) if sm[b]) / (n + EPS)


@given(seed=st.integers(0, 2**16), token_level=st.booleans(), drop=st.sampled_from([1.0, 0.0, 0.5]), glob=st.booleans())
def test_reduce_per_token_loss_matches_reference(seed, token_level, drop, glob):
    d = batch(seed)
    sm = torch.tensor([1.0, drop, 1.0, 1.0], dtype=F64)
    values = d["adv"].masked_fill(d["mask"] == 0, math.nan)
    n_tok = float((d["mask"] * sm[:, None]).sum()) + 3 if glob else None
    n_seq = float(sm.sum()) + 1 if glob else None
    out = reduce_per_token_loss(
        values,
        d["mask"],
        sample_mask=sm,
        token_level_loss=token_level,
        global_valid_toks=n_tok,
        global_valid_seqs=n_seq,
    )
    expected = ref_reduce(d["adv"].tolist(), d["mask"].tolist(), sm.tolist(), token_level, n_tok, n_seq)
    assert out.item() == pytest.approx(expected, rel=1e-13, abs=1e-15)


def test_reduce_per_token_loss_gradcheck():
    d = batch(5, B=3, T=4)
    sm = torch.tensor([1.0, 0.0, 1.0], dtype=F64)
    for token_level in (True, False):
        f = lambda v, tl=token_level: reduce_per_token_loss(v, d["mask"], sample_mask=sm, token_level_loss=tl)  # noqa: E731
        assert torch.autograd.gradcheck(f, (d["adv"].clone().requires_grad_(),))


# ---------------------------------------------------------------------------------------------
# VAPO's positive-example NLL
# ---------------------------------------------------------------------------------------------


def test_positive_example_nll_hand_computed():
    # Rows: reward 1 (positive), 0 (not positive: strictly > 0), 0.5 (positive, 1 token masked),
    # -1 (negative), 2 (positive but sample-masked).
    lp = torch.tensor(
        [[-0.5, -1.0], [-2.0, -3.0], [-0.25, -9.0], [-4.0, -4.0], [-7.0, -7.0]], dtype=F64, requires_grad=True
    )
    mask = torch.tensor([[1, 1], [1, 1], [1, 0], [1, 1], [1, 1]], dtype=F64)
    rewards = torch.tensor([1.0, 0.0, 0.5, -1.0, 2.0], dtype=F64)
    sm = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0], dtype=F64)
    nll = positive_example_nll(lp, rewards, mask, sample_mask=sm)
    assert nll.item() == pytest.approx((0.5 + 1.0 + 0.25) / (3 + EPS), rel=1e-15)
    (g,) = torch.autograd.grad(nll, lp)
    expected = torch.zeros(5, 2, dtype=F64)
    expected[0, :] = expected[2, 0] = -1 / (3 + EPS)
    torch.testing.assert_close(g, expected, rtol=1e-15, atol=0)
    # Integer and bool rewards are accepted; nothing positive gives exactly 0.
    assert positive_example_nll(lp, torch.tensor([1, 0, 1, 0, 0]), mask).item() == pytest.approx(1.75 / (3 + EPS))
    assert positive_example_nll(lp, torch.tensor([True, False, True, False, False]), mask).item() == pytest.approx(
        1.75 / (3 + EPS)
    )
    zero = positive_example_nll(lp, torch.tensor([0.0, -1.0, 0.0, -0.5, 0.0], dtype=F64), mask)
    assert zero.item() == 0.0 and zero.dtype == F64


@given(seed=st.integers(0, 2**16), drop=st.sampled_from([1.0, 0.0, 0.5]))
def test_positive_example_nll_matches_reference_and_gradcheck(seed, drop):
    d = batch(seed)
    sm = torch.tensor([1.0, drop, 1.0, 1.0], dtype=F64)
    out = positive_example_nll(d["lp"].masked_fill(d["mask"] == 0, -math.inf), d["rewards"], d["mask"], sample_mask=sm)
    num = den = 0.0
    for b in range(4):
        if d["rewards"][b] > 0:
            for t in range(5):
                weight = d["mask"][b, t].item() * sm[b].item()
                if weight:
                    num -= weight * d["lp"][b, t].item()
                    den += weight
    assert out.item() == pytest.approx(num / (den + EPS) if den > 0 else 0.0, rel=1e-13, abs=0)
    f = lambda x: positive_example_nll(x, d["rewards"], d["mask"], sample_mask=sm)  # noqa: E731
    x = d["lp"].clone().requires_grad_()
    assert torch.autograd.gradcheck(f, (x,))


def nll_config(**overrides) -> ClippedPGConfig:
    return ClippedPGConfig(reference_policy_kl_penalty=0.0, **overrides)


@pytest.mark.parametrize("token_level", [True, False])
def test_positive_nll_is_added_with_its_weight_and_reported_unweighted(token_level):
    d = batch(7)
    call = {"prev_logprobs": d["prev"], "advantages": d["adv"], "mask": d["mask"], "rewards": d["rewards"]}
    x = d["lp"].clone().requires_grad_()
    base, base_m = clipped_pg_loss(x, config=nll_config(token_level_loss=token_level), **call)
    (g_base,) = torch.autograd.grad(base, x)
    mu = 0.25
    loss, m = clipped_pg_loss(
        x, config=nll_config(token_level_loss=token_level, positive_example_nll_weight=mu), **call
    )
    (g,) = torch.autograd.grad(loss, x)
    nll = positive_example_nll(d["lp"], d["rewards"], d["mask"])
    # Token-level NLL even when the policy-gradient loss is sequence-level (NeMo RL 7ea279a).
    assert m["positive_nll_loss"] == nll.item() > 0
    assert base_m["positive_nll_loss"] == 0.0  # reported, 0 when unused (rewards given or not)
    assert loss.item() == pytest.approx(base.item() + mu * nll.item(), rel=1e-14)
    positive = (d["rewards"] > 0).to(F64)[:, None] * d["mask"]
    torch.testing.assert_close(g - g_base, -mu * positive / (positive.sum() + EPS))
    # every other metric is untouched
    assert {k: v for k, v in m.items() if k not in ("loss", "positive_nll_loss")} == {
        k: v for k, v in base_m.items() if k not in ("loss", "positive_nll_loss")
    }


def test_positive_nll_metric_key_order_and_names():
    d = batch(8)
    _, m = clipped_pg_loss(d["lp"], d["prev"], d["adv"], d["mask"], reference_logprobs=d["ref"])
    assert list(m)[-1] == "positive_nll_loss" and m["positive_nll_loss"] == 0.0
    assert set(m) == {
        "loss",
        "probs_ratio",
        "probs_ratio_clamped",
        "probs_ratio_min",
        "probs_ratio_max",
        "probs_ratio_clamped_min",
        "probs_ratio_clamped_max",
        "clip_fraction",
        "kl_penalty",
        "token_mult_prob_error",
        "gen_kl_error",
        "policy_kl_error",
        "js_divergence_error",
        "sampling_importance_ratio",
        "num_valid_samples",
        "approx_entropy",
        "positive_nll_loss",
    }


def test_positive_nll_is_zero_when_no_sample_is_positive():
    d = batch(9)
    cfg = nll_config(positive_example_nll_weight=0.5)
    base, _ = clipped_pg_loss(d["lp"], d["prev"], d["adv"], d["mask"], config=nll_config())
    loss, m = clipped_pg_loss(
        d["lp"], d["prev"], d["adv"], d["mask"], config=cfg, rewards=torch.tensor([0.0, -1.0, 0.0, -0.1], dtype=F64)
    )
    assert m["positive_nll_loss"] == 0.0 and loss.item() == base.item()


def test_positive_nll_does_not_add_up_over_micro_batches():
    # NeMo RL 7ea279a normalises the NLL by the micro-batch's OWN positive-token count (metric
    # normaliser NONE). Policy-gradient and KL terms add up to the full batch with global counts;
    # the NLL gives sum_k S_k / N_k instead of (sum_k S_k) / (sum_k N_k).
    d = batch(10, B=4, T=3)
    d["mask"] = torch.ones(4, 3, dtype=F64)
    d["mask"][2, 1:] = 0  # row 2 has one token
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=F64)
    mu = 0.5
    cfg = ClippedPGConfig(positive_example_nll_weight=mu, reference_policy_kl_penalty=0.05)
    common = {"config": cfg, "rewards": rewards, "reference_logprobs": d["ref"]}
    x = d["lp"].clone().requires_grad_()
    full, m_full = clipped_pg_loss(x, d["prev"], d["adv"], d["mask"], **common)
    counts = {"global_valid_toks": d["mask"].sum(), "global_valid_seqs": 4.0}
    parts, nlls = [], []
    for idx in (torch.tensor([0, 1]), torch.tensor([2, 3])):
        part, m = clipped_pg_loss(
            x[idx],
            d["prev"][idx],
            d["adv"][idx],
            d["mask"][idx],
            config=cfg,
            rewards=rewards[idx],
            reference_logprobs=d["ref"][idx],
            **counts,
        )
        # the metric is this micro-batch's own mean, whatever the global counts
        assert m["positive_nll_loss"] == pytest.approx(
            positive_example_nll(d["lp"][idx], rewards[idx], d["mask"][idx]).item(), rel=1e-15
        )
        parts.append(part)
        nlls.append(m["positive_nll_loss"])
    lp = d["lp"]
    s0, n0 = -(lp[0].sum()).item(), 3  # rows 0 (positive) and 1 (not)
    s1, n1 = -(lp[2, 0] + lp[3].sum()).item(), 4  # rows 2 and 3, both positive
    assert nlls == pytest.approx([s0 / (n0 + EPS), s1 / (n1 + EPS)], rel=1e-14)
    assert m_full["positive_nll_loss"] == pytest.approx((s0 + s1) / (n0 + n1 + EPS), rel=1e-14)
    total = parts[0] + parts[1]
    # Without the NLL the split is exact; the NLL parts sum to S0/N0 + S1/N1, not the full mean.
    without_full = full.item() - mu * m_full["positive_nll_loss"]
    assert total.item() - mu * sum(nlls) == pytest.approx(without_full, rel=1e-12)
    assert total.item() == pytest.approx(without_full + mu * (s0 / (n0 + EPS) + s1 / (n1 + EPS)), rel=1e-12)
    assert abs(total.item() - full.item()) > 0.1 * mu * m_full["positive_nll_loss"]


def test_positive_nll_with_one_micro_batch_holding_all_positives_is_exact():
    d = batch(11, B=4, T=3)
    rewards = torch.tensor([1.0, 2.0, 0.0, -1.0], dtype=F64)
    cfg = nll_config(positive_example_nll_weight=0.3)
    full, _ = clipped_pg_loss(d["lp"], d["prev"], d["adv"], d["mask"], config=cfg, rewards=rewards)
    counts = {"global_valid_toks": d["mask"].sum(), "global_valid_seqs": 4.0}
    total = sum(
        clipped_pg_loss(d["lp"][i], d["prev"][i], d["adv"][i], d["mask"][i], config=cfg, rewards=rewards[i], **counts)[
            0
        ]
        for i in (slice(0, 2), slice(2, 4))
    )
    torch.testing.assert_close(total, full)


TOKEN_METRICS = (
    "probs_ratio",
    "probs_ratio_clamped",
    "clip_fraction",
    "token_mult_prob_error",
    "gen_kl_error",
    "policy_kl_error",
    "js_divergence_error",
    "approx_entropy",
)


def metric_normaliser(cfg: ClippedPGConfig, key: str) -> str:
    """NeMo RL 7ea279a's ``ClippedPGLossFn.metric_normalizations`` (plus this library's clip_fraction)."""
    if key in ("loss", "kl_penalty"):
        return "tokens" if cfg.token_level_loss else "sequences"
    if key == "sampling_importance_ratio":
        return "sequences" if cfg.sequence_level_importance_ratios else "tokens"
    if key == "is_oob_ratio":
        return "sequences" if cfg.truncated_importance_sampling_type == "seq-mask-tis" else "tokens"
    return "tokens" if key in TOKEN_METRICS else "none"


@given(c=configs, seed=st.integers(0, 2**16), n_micro=st.integers(2, 3))
def test_metrics_of_micro_batches_combine_as_nemo_rl_declares(c, seed, n_micro):
    # Port of NeMo RL's TestMetricNormalizationAdvertisement / test_split_rescale_matches_sync_
    # normalization (sync side): with the global counts, every TOKENS / SEQUENCES metric of the
    # micro-batches sums to the full batch's; extrema combine by min / max, num_valid_samples by
    # sum; positive_nll_loss (NONE: "already a per-microbatch mean") does not combine, and neither
    # does the loss when it holds the NLL.
    cfg = make_config(c)
    d = batch(seed, B=6)
    sm = torch.tensor([1, 1, 0, 1, 1, 1], dtype=F64)
    keys = ("prev", "adv", "mask", "gen", "ref", "rewards", "unf")
    _, full = clipped_pg_loss(
        d["lp"],
        d["prev"],
        d["adv"],
        d["mask"],
        config=cfg,
        generation_logprobs=d["gen"],
        reference_logprobs=d["ref"],
        rewards=d["rewards"],
        logprobs_unfiltered=d["unf"],
        sample_mask=sm,
    )
    counts = {"global_valid_toks": (d["mask"] * sm[:, None]).sum(), "global_valid_seqs": sm.sum()}
    parts = []
    for idx in torch.arange(6).chunk(n_micro):
        p = {k: d[k][idx] for k in keys}
        parts.append(
            clipped_pg_loss(
                d["lp"][idx],
                p["prev"],
                p["adv"],
                p["mask"],
                config=cfg,
                generation_logprobs=p["gen"],
                reference_logprobs=p["ref"],
                rewards=p["rewards"],
                logprobs_unfiltered=p["unf"],
                sample_mask=sm[idx],
                **counts,
            )[1]
        )
    nll_weight = cfg.positive_example_nll_weight
    for key, value in full.items():
        got = [m[key] for m in parts]
        kind = metric_normaliser(cfg, key)
        if key == "loss":
            got = [m["loss"] - nll_weight * m["positive_nll_loss"] for m in parts]
            value -= nll_weight * full["positive_nll_loss"]
        if kind != "none":
            assert sum(got) == pytest.approx(value, rel=1e-10, abs=1e-12), key
        elif key.endswith("_min"):
            assert min(got) == value, key
        elif key.endswith("_max"):
            assert max(got) == value, key
        elif key == "num_valid_samples":
            assert sum(got) == value
        else:
            assert key == "positive_nll_loss"


# ---------------------------------------------------------------------------------------------
# The KL moved into the reward
# ---------------------------------------------------------------------------------------------


@given(c=configs, seed=st.integers(0, 2**16))
def test_kl_in_reward_removes_the_kl_term(c, seed):
    c = {**c, "kl_in_reward": True, "beta": 0.05}
    cfg = make_config(c)
    d = batch(seed)
    call = {"generation_logprobs": d["gen"], "rewards": d["rewards"], "config": cfg}
    x = d["lp"].clone().requires_grad_()
    loss, m = clipped_pg_loss(x, d["prev"], d["adv"], d["mask"], reference_logprobs=d["ref"], **call)
    (g,) = torch.autograd.grad(loss, x)
    # = the same config with beta = 0 ...
    no_kl = replace(cfg, reference_policy_kl_penalty=0.0, use_kl_in_reward=False)
    loss0, m0 = clipped_pg_loss(x, d["prev"], d["adv"], d["mask"], **{**call, "config": no_kl})
    (g0,) = torch.autograd.grad(loss0, x)
    assert torch.equal(loss, loss0) and torch.equal(g, g0) and m == m0
    assert m["kl_penalty"] == 0.0
    # ... whatever the reference log-probs, which are then not required
    loss2, _ = clipped_pg_loss(x, d["prev"], d["adv"], d["mask"], reference_logprobs=d["ref"] - 3.0, **call)
    (g2,) = torch.autograd.grad(loss2, x)
    loss3, _ = clipped_pg_loss(x, d["prev"], d["adv"], d["mask"], **call)
    assert torch.equal(g, g2) and torch.equal(loss, loss3)


def test_kl_in_reward_with_force_on_policy_ratio_is_accepted_by_the_loss():
    # NeMo RL's grpo.py (_validate_use_kl_in_reward_compat, ported from test_grpo.py) rejects
    # use_kl_in_reward with a non-zero penalty under force_on_policy_ratio unless
    # grpo.seq_logprob_error_threshold is set, because the advantage estimator would then read a
    # zero placeholder for prev_logprobs. The loss itself never reads them in that mode (prev :=
    # sg(logprobs)), so the library's loss config accepts both, and with a zero penalty NeMo RL does too.
    for beta in (0.01, 0.0):
        cfg = ClippedPGConfig(force_on_policy_ratio=True, use_kl_in_reward=True, reference_policy_kl_penalty=beta)
        d = batch(12)
        loss, m = clipped_pg_loss(d["lp"], None, d["adv"], d["mask"], config=cfg)
        assert m["kl_penalty"] == 0.0
        assert loss.item() == pytest.approx(-(d["adv"] * d["mask"]).sum().item() / (d["mask"].sum().item() + EPS))


# ---------------------------------------------------------------------------------------------
# Unfiltered log-probs: the KL term only
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("on_policy_kl", [False, True])
@pytest.mark.parametrize("token_level", [True, False])
def test_unfiltered_logprobs_feed_the_kl_estimator_and_its_weight_only(on_policy_kl, token_level):
    d = batch(13)
    beta = 0.2
    cfg = ClippedPGConfig(
        reference_policy_kl_penalty=beta,
        use_on_policy_kl_approximation=on_policy_kl,
        use_importance_sampling_correction=True,
        token_level_loss=token_level,
        positive_example_nll_weight=0.1,
    )
    call = {"generation_logprobs": d["gen"], "reference_logprobs": d["ref"], "rewards": d["rewards"], "config": cfg}
    x = d["lp"].clone().requires_grad_()
    u = d["unf"].clone().requires_grad_()
    loss, m = clipped_pg_loss(x, d["prev"], d["adv"], d["mask"], logprobs_unfiltered=u, **call)
    gx, gu = torch.autograd.grad(loss, (x, u))

    # The filtered log-probs carry exactly the gradient of the loss without its KL term ...
    x0 = d["lp"].clone().requires_grad_()
    no_kl, m0 = clipped_pg_loss(
        x0, d["prev"], d["adv"], d["mask"], **{**call, "config": replace(cfg, use_kl_in_reward=True)}
    )
    (g0,) = torch.autograd.grad(no_kl, x0)
    assert torch.equal(gx, g0)
    # ... the unfiltered ones exactly that of the KL term, written out by hand (k3, clamps inactive).
    uu = d["unf"].clone().requires_grad_()
    w = torch.exp(uu - d["gen"]) if on_policy_kl else torch.exp(uu - uu.detach())
    lr = d["ref"] - uu
    kl_tok = beta * w * (torch.exp(lr) - 1 - lr)
    if token_level:
        kl = (kl_tok * d["mask"]).sum() / (d["mask"].sum() + EPS)
    else:
        kl = ((kl_tok * d["mask"]).sum(-1) / (d["mask"].sum(-1) + EPS)).sum() / (4 + EPS)
    (gk,) = torch.autograd.grad(kl, uu)
    torch.testing.assert_close(gu, gk, rtol=1e-13, atol=1e-16)
    assert loss.item() == pytest.approx(no_kl.item() + kl.item(), rel=1e-13)
    assert m["kl_penalty"] == pytest.approx(kl.item() / beta, rel=1e-13)
    # Ratios, clipping, entropy, mismatch and NLL metrics read the filtered log-probs.
    for key in m0:
        if key not in ("loss", "kl_penalty"):
            assert m[key] == m0[key], key


def test_unfiltered_logprobs_equal_to_logprobs_change_nothing_and_are_unused_without_kl():
    d = batch(14)
    cfg = ClippedPGConfig(use_on_policy_kl_approximation=True)
    call = {"generation_logprobs": d["gen"], "reference_logprobs": d["ref"], "config": cfg}
    a, ma = clipped_pg_loss(d["lp"], d["prev"], d["adv"], d["mask"], **call)
    b, mb = clipped_pg_loss(d["lp"], d["prev"], d["adv"], d["mask"], logprobs_unfiltered=d["lp"].clone(), **call)
    assert torch.equal(a, b) and ma == mb
    for no_kl in (replace(cfg, reference_policy_kl_penalty=0.0), replace(cfg, use_kl_in_reward=True)):
        c, mc = clipped_pg_loss(d["lp"], d["prev"], d["adv"], d["mask"], **{**call, "config": no_kl})
        e, me = clipped_pg_loss(
            d["lp"], d["prev"], d["adv"], d["mask"], logprobs_unfiltered=d["unf"], **{**call, "config": no_kl}
        )
        assert torch.equal(c, e) and mc == me


def test_padding_of_new_inputs_stays_inert():
    d = batch(15)
    pad = d["mask"] == 0
    cfg = ClippedPGConfig(positive_example_nll_weight=0.2, use_on_policy_kl_approximation=True)
    u = d["unf"].masked_fill(pad, -math.inf).requires_grad_()
    x = d["lp"].masked_fill(pad, math.nan).requires_grad_()
    rewards = d["rewards"].clone()
    loss, m = clipped_pg_loss(
        x,
        d["prev"],
        d["adv"],
        d["mask"],
        config=cfg,
        generation_logprobs=d["gen"],
        reference_logprobs=d["ref"],
        rewards=rewards,
        logprobs_unfiltered=u,
        sample_mask=torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=F64),
    )
    gx, gu = torch.autograd.grad(loss, (x, u))
    assert torch.isfinite(loss) and torch.isfinite(gx).all() and torch.isfinite(gu).all()
    assert (gx[pad] == 0).all() and (gu[pad] == 0).all() and (gx[3] == 0).all()
    assert all(math.isfinite(v) for v in m.values())
    # a NaN reward of a dropped sample is ignored
    rewards[3] = math.nan
    clipped_pg_loss(
        d["lp"],
        d["prev"],
        d["adv"],
        d["mask"],
        config=replace(cfg, use_on_policy_kl_approximation=False),
        reference_logprobs=d["ref"],
        rewards=rewards,
        sample_mask=torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=F64),
    )


# ---------------------------------------------------------------------------------------------
# Bad arguments
# ---------------------------------------------------------------------------------------------

GOOD = batch(99, B=2, T=3)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"use_kl_in_reward": 1}, TypeError, "use_kl_in_reward"),
        ({"use_kl_in_reward": None}, TypeError, "use_kl_in_reward"),
        ({"positive_example_nll_weight": -0.1}, ValueError, "positive_example_nll_weight"),
        ({"positive_example_nll_weight": math.nan}, ValueError, "positive_example_nll_weight"),
        ({"positive_example_nll_weight": math.inf}, ValueError, "positive_example_nll_weight"),
        ({"positive_example_nll_weight": True}, TypeError, "positive_example_nll_weight"),
        ({"positive_example_nll_weight": "0.1"}, TypeError, "positive_example_nll_weight"),
    ],
)
def test_bad_new_config_keys(kwargs, error, name):
    with pytest.raises(error, match=says(name)):
        ClippedPGConfig(**kwargs)


def pg_call(**overrides):
    d = GOOD
    kwargs = {
        "logprobs": d["lp"],
        "prev_logprobs": d["prev"],
        "advantages": d["adv"],
        "mask": d["mask"],
        "config": ClippedPGConfig(positive_example_nll_weight=0.1),
        "reference_logprobs": d["ref"],
        "rewards": d["rewards"],
        "logprobs_unfiltered": d["unf"],
    }
    kwargs.update(overrides)
    return clipped_pg_loss(**kwargs)


counted_nan = GOOD["unf"].clone()
counted_nan[0, 0] = math.nan


@pytest.mark.parametrize(
    ("overrides", "error", "name", "expected"),
    [
        ({"rewards": None}, ValueError, "rewards", "positive_example_nll_weight"),
        ({"rewards": [1.0, 0.0]}, TypeError, "rewards", "Tensor"),
        ({"rewards": torch.ones(3, dtype=F64)}, ValueError, "rewards", "shape"),
        ({"rewards": torch.ones(2, 1, dtype=F64)}, ValueError, "rewards", "shape"),
        ({"rewards": torch.ones(2, dtype=torch.complex64)}, TypeError, "rewards", "real"),
        ({"rewards": torch.tensor([math.nan, 1.0], dtype=F64)}, ValueError, "rewards", "NaN"),
        ({"logprobs_unfiltered": GOOD["unf"][:, :2]}, ValueError, "logprobs_unfiltered", "shape"),
        ({"logprobs_unfiltered": GOOD["unf"].long()}, TypeError, "logprobs_unfiltered", "floating"),
        ({"logprobs_unfiltered": GOOD["unf"].tolist()}, TypeError, "logprobs_unfiltered", "Tensor"),
        ({"logprobs_unfiltered": counted_nan}, ValueError, "logprobs_unfiltered", "NaN"),
        ({"reference_logprobs": None}, ValueError, "reference_logprobs", "use_kl_in_reward"),
    ],
)
def test_bad_new_clipped_pg_loss_arguments(overrides, error, name, expected):
    with pytest.raises(error, match=says(name, expected)):
        pg_call(**overrides)


def test_new_optional_arguments_are_checked_even_when_unused():
    cfg = ClippedPGConfig(use_kl_in_reward=True)  # no KL term, no NLL
    with pytest.raises(ValueError, match=says("rewards", "shape")):
        pg_call(config=cfg, rewards=torch.ones(5))
    with pytest.raises(ValueError, match=says("logprobs_unfiltered", "shape")):
        pg_call(config=cfg, logprobs_unfiltered=torch.ones(1, 1, dtype=F64))
    with pytest.raises(ValueError, match=says("reference_logprobs", "shape")):
        pg_call(config=cfg, reference_logprobs=torch.ones(1, 1, dtype=F64))
    pg_call(config=cfg, reference_logprobs=None, rewards=None)  # neither is required


def stage(fn, **defaults):
    """``fn`` called with good arguments, some replaced: ``stage(f, a=1)(a=2)`` calls ``f(a=2)``."""
    return lambda **overrides: fn(**{**defaults, **overrides})


RATIOS = stage(policy_ratios, logprobs=GOOD["lp"], prev_logprobs=GOOD["prev"], mask=GOOD["mask"])
SURROGATE = stage(clipped_surrogate, ratios=GOOD["lp"].exp(), advantages=GOOD["adv"], mask=GOOD["mask"])
CISPO = stage(SURROGATE, use_cispo=True, logprobs=GOOD["lp"])
WEIGHTS = stage(
    actor_importance_weights, prev_logprobs=GOOD["prev"], generation_logprobs=GOOD["gen"], mask=GOOD["mask"]
)
TIS = stage(WEIGHTS, truncated_importance_sampling_type="tis", truncated_importance_sampling_ratio=2.0)
KL = stage(reference_kl_penalty, logprobs=GOOD["lp"], reference_logprobs=GOOD["ref"], mask=GOOD["mask"])
REDUCE = stage(reduce_per_token_loss, values=GOOD["adv"], mask=GOOD["mask"])
NLL = stage(positive_example_nll, logprobs=GOOD["lp"], rewards=GOOD["rewards"], mask=GOOD["mask"])
TRUNC = "truncated_importance_sampling_ratio"


@pytest.mark.parametrize(
    ("call", "bad", "error", "name", "expected"),
    [
        (RATIOS, {"ratio_type": "seq"}, ValueError, "ratio_type", "token"),
        (RATIOS, {"prev_logprobs": None}, ValueError, "prev_logprobs", "required"),
        (RATIOS, {"prev_logprobs": GOOD["prev"][:1]}, ValueError, "prev_logprobs", "shape"),
        (RATIOS, {"logprobs": GOOD["lp"][0]}, ValueError, "logprobs", "shape"),
        (RATIOS, {"logprobs": GOOD["lp"].long()}, TypeError, "logprobs", "floating"),
        (RATIOS, {"logprobs": counted_nan}, ValueError, "logprobs", "NaN"),
        (RATIOS, {"mask": GOOD["mask"][:, :2]}, ValueError, "mask", "shape"),
        (RATIOS, {"mask": -GOOD["mask"]}, ValueError, "mask", "negative"),
        (SURROGATE, {"ratios": GOOD["lp"].tolist()}, TypeError, "ratios", "Tensor"),
        (SURROGATE, {"ratios": counted_nan}, ValueError, "ratios", "NaN"),
        (SURROGATE, {"mask": GOOD["mask"][:, :2]}, ValueError, "ratios", "shape"),
        (SURROGATE, {"advantages": GOOD["adv"][:1]}, ValueError, "advantages", "shape"),
        (SURROGATE, {"advantages": GOOD["adv"][0]}, ValueError, "advantages", "B ="),
        (SURROGATE, {"advantages": 1.0}, TypeError, "advantages", "Tensor"),
        (SURROGATE, {"advantages": counted_nan}, ValueError, "advantages", "NaN"),
        (SURROGATE, {"ratio_clip_min": 1.0}, ValueError, "ratio_clip_min", re.escape("[0, 1)")),
        (SURROGATE, {"ratio_clip_min": -0.1}, ValueError, "ratio_clip_min", re.escape("[0, 1)")),
        (SURROGATE, {"ratio_clip_max": 1.0}, ValueError, "ratio_clip_max", re.escape("[0, 1)")),
        (SURROGATE, {"ratio_clip_max": "a"}, TypeError, "ratio_clip_max", "real"),
        (SURROGATE, {"ratio_clip_c": 1.0}, ValueError, "ratio_clip_c", re.escape("(1, inf]")),
        (SURROGATE, {"use_cispo": 1}, TypeError, "use_cispo", "bool"),
        (SURROGATE, {"use_cispo": True}, ValueError, "logprobs", "use_cispo"),
        (SURROGATE, {"logprobs": GOOD["lp"]}, ValueError, "logprobs", "use_cispo"),
        (CISPO, {"ratio_clip_c": 3.0}, ValueError, "ratio_clip_c", "use_cispo"),
        (CISPO, {"ratio_clip_min": 1.5}, ValueError, "ratio_clip_min", re.escape("[0, 1]")),
        (CISPO, {"logprobs": GOOD["lp"][:1]}, ValueError, "logprobs", "shape"),
        (WEIGHTS, {"generation_logprobs": GOOD["gen"][:, :1]}, ValueError, "generation_logprobs", "shape"),
        (WEIGHTS, {"generation_logprobs": counted_nan}, ValueError, "generation_logprobs", "NaN"),
        (WEIGHTS, {"mask": GOOD["mask"][:1]}, ValueError, "prev_logprobs", "shape"),
        (WEIGHTS, {"sequence_level_importance_ratios": 0}, TypeError, "sequence_level_importance_ratios", "bool"),
        (WEIGHTS, {TRUNC: 2.0}, ValueError, "truncated_importance_sampling_type", "None"),
        (WEIGHTS, {"truncated_importance_sampling_type": "tis"}, ValueError, TRUNC, "requires"),
        (TIS, {"truncated_importance_sampling_type": "clip"}, ValueError, "truncated_importance_sampling_type", "tis"),
        (TIS, {TRUNC: 0.0}, ValueError, TRUNC, re.escape("(0, inf]")),
        (TIS, {TRUNC + "_min": 3.0}, ValueError, TRUNC + "_min", "<="),
        (TIS, {TRUNC + "_min": -1.0}, ValueError, TRUNC + "_min", re.escape("[0, inf]")),
        (TIS, {"truncated_importance_sampling_type": "icepop"}, ValueError, TRUNC + "_min", "requires"),
        (
            TIS,
            {
                "truncated_importance_sampling_type": "seq-mask-tis",
                TRUNC + "_min": 0.5,
                "sequence_level_importance_ratios": True,
            },
            ValueError,
            "sequence_level_importance_ratios",
            "seq-mask-tis",
        ),
        (KL, {"reference_policy_kl_penalty": -1.0}, ValueError, "reference_policy_kl_penalty", re.escape("[0, inf]")),
        (KL, {"reference_policy_kl_type": "k4"}, ValueError, "reference_policy_kl_type", "k3"),
        (KL, {"kl_input_clamp_value": 0.0}, ValueError, "kl_input_clamp_value", re.escape("(0, inf]")),
        (KL, {"kl_output_clamp_value": -1.0}, ValueError, "kl_output_clamp_value", re.escape("(0, inf]")),
        (KL, {"reference_logprobs": GOOD["ref"][:1]}, ValueError, "reference_logprobs", "shape"),
        (KL, {"reference_logprobs": counted_nan}, ValueError, "reference_logprobs", "NaN"),
        (KL, {"use_on_policy_kl_approximation": True}, ValueError, "generation_logprobs", "requires"),
        (KL, {"use_on_policy_kl_approximation": "yes"}, TypeError, "use_on_policy_kl_approximation", "bool"),
        (KL, {"generation_logprobs": GOOD["gen"]}, ValueError, "generation_logprobs", "use_on_policy_kl_approximation"),
        (
            KL,
            {"use_on_policy_kl_approximation": True, "generation_logprobs": GOOD["gen"][:1]},
            ValueError,
            "generation_logprobs",
            "shape",
        ),
        (REDUCE, {"global_valid_toks": 1.0}, ValueError, "global_valid_toks", "smaller"),
        (REDUCE, {"token_level_loss": False, "global_valid_seqs": 1.0}, ValueError, "global_valid_seqs", "smaller"),
        (REDUCE, {"global_valid_toks": -1.0}, ValueError, "global_valid_toks", "non-negative"),
        (REDUCE, {"global_valid_toks": "6"}, TypeError, "global_valid_toks", "number"),
        (REDUCE, {"global_valid_seqs": torch.ones(2)}, ValueError, "global_valid_seqs", "scalar"),
        (REDUCE, {"token_level_loss": 1}, TypeError, "token_level_loss", "bool"),
        (REDUCE, {"sample_mask": torch.ones(3)}, ValueError, "sample_mask", "shape"),
        (REDUCE, {"sample_mask": torch.tensor([1.0, -1.0])}, ValueError, "sample_mask", "negative"),
        (REDUCE, {"mask": GOOD["mask"][:, :1]}, ValueError, "values", "shape"),
        (REDUCE, {"values": counted_nan}, ValueError, "values", "NaN"),
        (REDUCE, {"values": GOOD["adv"][0]}, ValueError, "values", "shape"),
        (NLL, {"rewards": GOOD["rewards"][:1]}, ValueError, "rewards", "shape"),
        (NLL, {"rewards": [1.0, 0.0]}, TypeError, "rewards", "Tensor"),
        (NLL, {"rewards": torch.ones(2, dtype=torch.complex64)}, TypeError, "rewards", "real"),
        (NLL, {"rewards": torch.tensor([math.inf, 0.0])}, ValueError, "rewards", "NaN"),
        (NLL, {"logprobs": counted_nan}, ValueError, "logprobs", "NaN"),
        (NLL, {"logprobs": GOOD["lp"].long()}, TypeError, "logprobs", "floating"),
        (NLL, {"sample_mask": torch.ones(2, 1)}, ValueError, "sample_mask", "shape"),
    ],
)
def test_bad_stage_arguments(call, bad, error, name, expected):
    with pytest.raises(error, match=says(name, expected)):
        call(**bad)


def test_stages_accept_what_they_document():
    # [B] advantages, one-sided clips, CISPO's wide bounds, bool / integer / fractional masks,
    # integer bounds; and the good calls of the table above succeed
    CISPO(advantages=GOOD["adv"][:, 0], ratio_clip_min=None, ratio_clip_max=5.0)
    RATIOS(prev_logprobs=None, mask=GOOD["mask"].bool(), ratio_type="disabled")
    REDUCE(mask=GOOD["mask"].long(), sample_mask=torch.tensor([0.5, 1.0], dtype=F64))
    TIS(truncated_importance_sampling_ratio=2)
    for call in (RATIOS, SURROGATE, WEIGHTS, TIS, KL, REDUCE, NLL):
        call()
