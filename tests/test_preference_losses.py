"""DPO variants (loss_type, label_smoothing), SimPO, ORPO, KTO and the Bradley-Terry RM loss.

References are written independently of the library: per-pair losses in Python floats from the
papers' / TRL's formulas, minimisers found numerically, expectations over label flips by
enumeration, gradients by autograd and gradcheck.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nemo_rl_theory import (
    DPO_LOSS_TYPES,
    DPOConfig,
    bradley_terry_loss,
    dpo_loss,
    dpo_pair_losses,
    kto_loss,
    orpo_loss,
    simpo_loss,
)

EPS = 1e-8
SMOOTHED = ("sigmoid", "robust", "exo_pair")


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return math.exp(log_sigmoid(x))


def reference_pair_loss(kind: str, rc: float, rr: float, beta: float, eps: float) -> float:
    """Each variant by its paper/TRL formula, in Python floats."""
    m = rc - rr
    z = beta * m
    if kind == "sigmoid":
        return -(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z)
    if kind == "hinge":
        return max(0.0, 1 - z)
    if kind == "ipo":
        return (m - 1 / (2 * beta)) ** 2
    if kind == "robust":
        return (-(1 - eps) * log_sigmoid(z) + eps * log_sigmoid(-z)) / (1 - 2 * eps)
    if kind == "exo_pair":  # KL(q || p), q = (sigma(z), sigma(-z)), p = (1 - eps, eps); logs kept finite
        return sigmoid(z) * (log_sigmoid(z) - math.log(1 - eps)) + sigmoid(-z) * (log_sigmoid(-z) - math.log(eps))
    if kind == "sppo_hard":
        return (rc - 1 / (2 * beta)) ** 2 + (rr + 1 / (2 * beta)) ** 2
    if kind == "nca_pair":
        return -log_sigmoid(beta * rc) - 0.5 * log_sigmoid(-beta * rc) - 0.5 * log_sigmoid(-beta * rr)
    if kind == "apo_zero":
        return 1 - sigmoid(beta * rc) + sigmoid(beta * rr)
    if kind == "apo_down":
        return sigmoid(beta * rc) + 1 - sigmoid(z)
    raise AssertionError(kind)


def config(kind: str, beta: float = 0.5, eps: float = 0.0, **kw) -> DPOConfig:
    return DPOConfig(reference_policy_kl_penalty=beta, loss_type=kind, label_smoothing=eps, **kw)


def default_eps(kind: str) -> float:
    return 0.1 if kind in SMOOTHED else 0.0


def pair_batch(seed: int, pairs: int = 4, length: int = 5):
    gen = torch.Generator().manual_seed(seed)

    def lp():
        return -3 * torch.rand(pairs, length, generator=gen, dtype=torch.float64) - 0.01

    mask_c = (torch.rand(pairs, length, generator=gen) < 0.7).double()
    mask_r = (torch.rand(pairs, length, generator=gen) < 0.7).double()
    mask_c[:, 0] = mask_r[:, 0] = 1
    return lp(), lp(), lp(), lp(), mask_c, mask_r


def rewards_of(chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r, average):
    n_c = mask_c.sum(-1) if average else 1.0
    n_r = mask_r.sum(-1) if average else 1.0
    return ((chosen - chosen_ref) * mask_c).sum(-1) / n_c, ((rejected - rejected_ref) * mask_r).sum(-1) / n_r


# ----------------------------------------------------------------------------------------------
# DPO variants: values
# ----------------------------------------------------------------------------------------------


def test_loss_types_are_trls_names():
    assert DPO_LOSS_TYPES == (
        "sigmoid", "hinge", "ipo", "robust", "exo_pair", "sppo_hard", "nca_pair", "apo_zero", "apo_down",
    )  # fmt: skip
    cfg = DPOConfig()
    assert cfg.loss_type == "sigmoid" and cfg.label_smoothing == 0.0


@pytest.mark.parametrize("kind", DPO_LOSS_TYPES)
@given(
    rc=st.floats(-20, 20), rr=st.floats(-20, 20), beta=st.sampled_from([0.05, 0.1, 0.5, 2.0]),
    eps=st.sampled_from([0.01, 0.1, 0.3, 0.49]),
)  # fmt: skip
def test_pair_losses_match_formulas(kind, rc, rr, beta, eps):
    eps = eps if kind in SMOOTHED else 0.0
    got = dpo_pair_losses(
        torch.tensor([rc], dtype=torch.float64), torch.tensor([rr], dtype=torch.float64), config=config(kind, beta, eps)
    )
    assert got.item() == pytest.approx(reference_pair_loss(kind, rc, rr, beta, eps), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    ("kind", "rc", "rr", "beta", "eps", "expected"),
    [
        ("hinge", 1.0, 0.0, 0.5, 0.0, 0.5),  # relu(1 - 0.5)
        ("hinge", 3.0, 0.0, 0.5, 0.0, 0.0),  # margin past 1/beta: no loss
        ("ipo", 1.0, 0.0, 0.5, 0.0, 0.0),  # m = 1/(2 beta) exactly
        ("ipo", 0.0, 0.0, 0.5, 0.0, 1.0),  # (0 - 1)^2
        ("sppo_hard", 1.0, -1.0, 0.5, 0.0, 0.0),  # r+ = 1/(2 beta), r- = -1/(2 beta)
        ("sppo_hard", 0.0, 0.0, 0.5, 0.0, 2.0),  # 1 + 1
        ("nca_pair", 0.0, 0.0, 0.5, 0.0, 2 * math.log(2)),  # ln2 + ln2/2 + ln2/2
        ("apo_zero", 0.0, 0.0, 0.5, 0.0, 1.0),  # 1 - 1/2 + 1/2
        ("apo_down", 0.0, 0.0, 0.5, 0.0, 1.0),  # 1/2 + 1 - 1/2
        ("sigmoid", 0.0, 0.0, 0.5, 0.2, math.log(2)),  # cDPO at m = 0: (1 - eps + eps) ln 2
        ("robust", 0.0, 0.0, 0.5, 0.2, math.log(2)),  # (0.8 - 0.2) ln2 / 0.6
        ("exo_pair", 0.0, 0.0, 0.5, 0.2, -math.log(2) - 0.5 * math.log(0.16)),  # ln .5 - ln(eps(1-eps))/2
    ],
)
def test_hand_derived_values(kind, rc, rr, beta, eps, expected):
    got = dpo_pair_losses(torch.tensor([rc]).double(), torch.tensor([rr]).double(), config=config(kind, beta, eps))
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_sigmoid_default_is_unchanged_dpo():
    # The default loss_type reproduces NeMo RL's -log sigmoid(beta * margin), bit for bit.
    chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r = pair_batch(0)
    for average in (False, True):
        cfg = DPOConfig(reference_policy_kl_penalty=0.3, preference_average_log_probs=average)
        loss, _ = dpo_loss(chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r, config=cfg)
        rc, rr = rewards_of(chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r, average)
        expected = sum(-log_sigmoid(0.3 * (a - b)) for a, b in zip(rc.tolist(), rr.tolist(), strict=True)) / (4 + EPS)
        assert loss.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("kind", DPO_LOSS_TYPES)
@pytest.mark.parametrize("average", [False, True])
def test_dpo_loss_applies_the_variant_to_summed_or_averaged_rewards(kind, average):
    chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r = pair_batch(5)
    eps = default_eps(kind)
    cfg = config(kind, 0.2, eps, preference_average_log_probs=average, sft_loss_weight=0.1)
    loss, metrics = dpo_loss(chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r, config=cfg)
    rc, rr = rewards_of(chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r, average)
    pref = sum(reference_pair_loss(kind, a, b, 0.2, eps) for a, b in zip(rc.tolist(), rr.tolist(), strict=True))
    sft = -(chosen * mask_c).sum().item()
    assert metrics["preference_loss"] == pytest.approx(pref / (4 + EPS), rel=1e-10)
    assert loss.item() == pytest.approx((pref + 0.1 * sft) / (4 + EPS), rel=1e-10)
    assert metrics["rewards_chosen_mean"] == pytest.approx(rc.sum().item() / (4 + EPS))


def test_trl_ipo_is_the_averaged_margin():
    # TRL (f2cd577) divides each summed log-ratio by the completion length before IPO's square.
    chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r = pair_batch(6)
    beta = 0.1
    logratio_c = ((chosen - chosen_ref) * mask_c).sum(-1)
    logratio_r = ((rejected - rejected_ref) * mask_r).sum(-1)
    trl = ((logratio_c / mask_c.sum(-1) - logratio_r / mask_r.sum(-1) - 1 / (2 * beta)) ** 2).mean()
    ours, _ = dpo_loss(
        chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r,
        config=config("ipo", beta, preference_average_log_probs=True),
    )  # fmt: skip
    assert ours.item() == pytest.approx(trl.item() * 4 / (4 + EPS), rel=1e-12)
    summed, _ = dpo_loss(chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r, config=config("ipo", beta))
    assert abs(summed.item() - ours.item()) > 1e-3  # the two conventions differ


def test_rewards_equal_bradley_terry_of_beta_scaled_rewards():
    # DPO's sigmoid loss is the Bradley-Terry loss of the implicit rewards beta * r.
    chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r = pair_batch(7)
    loss, _ = dpo_loss(chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r, config=config("sigmoid", 0.3))
    rc, rr = rewards_of(chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r, False)
    bt, _ = bradley_terry_loss(0.3 * rc, 0.3 * rr)
    torch.testing.assert_close(loss, bt)


# ----------------------------------------------------------------------------------------------
# DPO variants: gradients and minimisers
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", DPO_LOSS_TYPES)
def test_gradcheck_every_variant(kind):
    chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r = pair_batch(8, pairs=3, length=4)
    cfg = config(kind, 0.7, default_eps(kind), sft_loss_weight=0.2)

    def f(c, r):
        return dpo_loss(c, r, chosen_ref, rejected_ref, mask_c, mask_r, config=cfg)[0]

    assert torch.autograd.gradcheck(f, (chosen.requires_grad_(), rejected.requires_grad_()))


@given(z=st.floats(-15, 15), eps=st.sampled_from([0.0, 0.05, 0.2, 0.45]))
def test_margin_gradient_weights(z, eps):
    # d l / d z for the margin-only variants, derived by hand:
    #   cDPO: sigma(z) - (1 - eps);  robust: -[(1-eps) sigma(-z) + eps sigma(z)] / (1 - 2 eps);
    #   EXO: sigma(z) sigma(-z) [ln(sigma(z)/(1-eps)) - ln(sigma(-z)/eps)].
    zt = torch.tensor([z], dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, dtype=torch.float64)
    s, sm = sigmoid(z), sigmoid(-z)
    expected = {
        "sigmoid": s - (1 - eps),
        "robust": -((1 - eps) * sm + eps * s) / (1 - 2 * eps),
        "exo_pair": s * sm * (log_sigmoid(z) - math.log1p(-eps) - log_sigmoid(-z) + math.log(eps)) if eps else None,
    }
    for kind, value in expected.items():
        if value is None:
            continue
        (grad,) = torch.autograd.grad(dpo_pair_losses(zt, zero, config=config(kind, 1.0, eps)).sum(), zt)
        assert grad.item() == pytest.approx(value, rel=1e-8, abs=1e-12)


def argmin_by_bisection(kind: str, beta: float, eps: float, lo: float = -50.0, hi: float = 50.0) -> float:
    """Root of d l / d m (autograd) by bisection: no closed form used."""

    def slope(m: float) -> float:
        mt = torch.tensor([m], dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(
            dpo_pair_losses(mt, torch.zeros(1).double(), config=config(kind, beta, eps)).sum(), mt
        )
        return g.item()

    assert slope(lo) < 0 < slope(hi)
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("eps", [0.05, 0.2, 0.4])
def test_cdpo_and_exo_minimiser_is_log_odds_over_beta(beta, eps):
    m_star = math.log((1 - eps) / eps) / beta  # sigma(beta m*) = 1 - eps
    assert argmin_by_bisection("sigmoid", beta, eps, hi=50 / beta) == pytest.approx(m_star, rel=1e-9)
    assert argmin_by_bisection("exo_pair", beta, eps, hi=50 / beta) == pytest.approx(m_star, rel=1e-9)
    # EXO's minimum value is 0 (the KL vanishes); cDPO's is the binary entropy H(eps).
    at = torch.tensor([m_star]).double()
    zero = torch.zeros(1).double()
    assert dpo_pair_losses(at, zero, config=config("exo_pair", beta, eps)).item() == pytest.approx(0, abs=1e-12)
    entropy = -(eps * math.log(eps) + (1 - eps) * math.log(1 - eps))
    assert dpo_pair_losses(at, zero, config=config("sigmoid", beta, eps)).item() == pytest.approx(entropy)


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_ipo_minimiser_is_one_over_two_beta(beta):
    assert argmin_by_bisection("ipo", beta, 0.0, hi=50 / beta) == pytest.approx(1 / (2 * beta), rel=1e-9)


def test_plain_dpo_and_robust_have_no_finite_minimiser():
    # Both keep pushing the margin: the slope stays negative; robust's tends to -eps/(1-2 eps) beta.
    for m in (0.0, 10.0, 100.0, 1000.0):
        mt = torch.tensor([m], dtype=torch.float64, requires_grad=True)
        zero = torch.zeros(1).double()
        for kind, eps in (("sigmoid", 0.0), ("robust", 0.2)):
            (g,) = torch.autograd.grad(dpo_pair_losses(mt, zero, config=config(kind, 0.5, eps)).sum(), mt)
            assert g.item() < 0
    mt = torch.tensor([1000.0], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(dpo_pair_losses(mt, zero, config=config("robust", 0.5, 0.2)).sum(), mt)
    assert g.item() == pytest.approx(-0.5 * 0.2 / 0.6)


# ----------------------------------------------------------------------------------------------
# Robust DPO: unbiased under label flips (exact enumeration over every flip pattern)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_robust_dpo_is_unbiased_under_label_flips(eps):
    chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r = pair_batch(9, pairs=3)
    beta = 0.4
    clean, _ = dpo_loss(chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r, config=config("sigmoid", beta))
    expected_robust = torch.zeros((), dtype=torch.float64)
    expected_cdpo = torch.zeros((), dtype=torch.float64)
    for flips in itertools.product([False, True], repeat=3):
        f = torch.tensor(flips)[:, None]
        # A flipped label swaps the chosen and the rejected response of the pair.
        args = (
            torch.where(f, rejected, chosen), torch.where(f, chosen, rejected),
            torch.where(f, rejected_ref, chosen_ref), torch.where(f, chosen_ref, rejected_ref),
            torch.where(f, mask_r, mask_c), torch.where(f, mask_c, mask_r),
        )  # fmt: skip
        prob = math.prod(eps if flip else 1 - eps for flip in flips)
        expected_robust += prob * dpo_loss(*args, config=config("robust", beta, eps))[0]
        expected_cdpo += prob * dpo_loss(*args, config=config("sigmoid", beta, eps))[0]
    torch.testing.assert_close(expected_robust, clean, rtol=1e-12, atol=1e-14)
    assert abs(expected_cdpo.item() - clean.item()) > 1e-3  # cDPO is not unbiased


@given(m=st.floats(-30, 30), eps=st.floats(0.0, 0.45), beta=st.sampled_from([0.1, 1.0]))
def test_robust_flip_identity_per_pair(m, eps, beta):
    a = torch.tensor([m, -m], dtype=torch.float64)
    losses = dpo_pair_losses(a, torch.zeros(2).double(), config=config("robust", beta, eps))
    assert ((1 - eps) * losses[0] + eps * losses[1]).item() == pytest.approx(
        -log_sigmoid(beta * m), rel=1e-9, abs=1e-12
    )


# ----------------------------------------------------------------------------------------------
# Micro-batches, padding
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", DPO_LOSS_TYPES)
def test_variants_micro_batches_sum_to_full_batch(kind):
    chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r = pair_batch(10, pairs=6)
    pair_mask = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.float64)
    cfg = config(kind, 0.3, default_eps(kind), sft_loss_weight=0.2)
    full, _ = dpo_loss(chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r, config=cfg, pair_mask=pair_mask)
    total = sum(
        dpo_loss(
            chosen[i], rejected[i], chosen_ref[i], rejected_ref[i], mask_c[i], mask_r[i],
            config=cfg, pair_mask=pair_mask[i], global_valid_pairs=pair_mask.sum(),
        )[0]
        for i in torch.arange(6).chunk(3)
    )  # fmt: skip
    torch.testing.assert_close(total, full)


@pytest.mark.parametrize("kind", DPO_LOSS_TYPES)
def test_variants_padding_with_inf_is_inert(kind):
    chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r = pair_batch(11)
    cfg = config(kind, 0.3, default_eps(kind))
    results = []
    for pad in (0.0, -math.inf):
        c, r = chosen.clone(), rejected.clone()
        c[mask_c == 0] = pad
        r[mask_r == 0] = pad
        c.requires_grad_()
        loss, _ = dpo_loss(c, r, chosen_ref, rejected_ref, mask_c, mask_r, config=cfg)
        loss.backward()
        results.append((loss.detach(), c.grad))
    torch.testing.assert_close(results[0], results[1])
    assert torch.isfinite(results[1][1]).all()


# ----------------------------------------------------------------------------------------------
# SimPO
# ----------------------------------------------------------------------------------------------


def mean_logprobs(lp, mask):
    return (lp * mask).sum(-1) / mask.sum(-1).clamp(min=1)


@given(seed=st.integers(0, 2**16), beta=st.sampled_from([0.5, 2.0, 2.5]), gamma=st.sampled_from([0.0, 0.5, 1.4]),
       eps=st.sampled_from([0.0, 0.1]))  # fmt: skip
def test_simpo_matches_paper_formula(seed, beta, gamma, eps):
    chosen, rejected, _, _, mask_c, mask_r = pair_batch(seed)
    loss, metrics = simpo_loss(chosen, rejected, mask_c, mask_r, beta=beta, gamma=gamma, label_smoothing=eps)
    a_c, a_r = mean_logprobs(chosen, mask_c).tolist(), mean_logprobs(rejected, mask_r).tolist()
    per_pair = [
        -(1 - eps) * log_sigmoid(beta * (x - y) - gamma) - eps * log_sigmoid(gamma - beta * (x - y))
        for x, y in zip(a_c, a_r, strict=True)
    ]
    assert loss.item() == pytest.approx(sum(per_pair) / (4 + EPS), rel=1e-10)
    assert metrics["accuracy"] == pytest.approx(sum(x > y for x, y in zip(a_c, a_r, strict=True)) / (4 + EPS))
    assert metrics["logps_chosen_mean"] == pytest.approx(sum(a_c) / (4 + EPS))


def test_simpo_hand_value_and_trl_form():
    # a+ = (-1 - 3)/2 = -2, a- = -3 (one token): z = 2 * 1 - 0.5 = 1.5
    chosen = torch.tensor([[-1.0, -3.0]], dtype=torch.float64)
    rejected = torch.tensor([[-3.0, -math.inf]], dtype=torch.float64)
    loss, _ = simpo_loss(chosen, rejected, torch.ones(1, 2), torch.tensor([[1, 0]]))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.5)) / (1 + EPS), rel=1e-12)
    # TRL's CPOTrainer: logits = (a+ - a-) - gamma / beta, loss = -logsigmoid(beta * logits).
    trl = -log_sigmoid(2.0 * ((-2.0 + 3.0) - 0.5 / 2.0))
    assert loss.item() == pytest.approx(trl / (1 + EPS), rel=1e-12)


def test_simpo_gradcheck_and_micro_batches():
    chosen, rejected, _, _, mask_c, mask_r = pair_batch(12, pairs=6)
    pair_mask = torch.tensor([1, 0, 1, 1, 1, 1])

    def f(c, r):
        return simpo_loss(c, r, mask_c, mask_r, label_smoothing=0.1, pair_mask=pair_mask)[0]

    assert torch.autograd.gradcheck(f, (chosen.clone().requires_grad_(), rejected.clone().requires_grad_()))
    full = f(chosen, rejected)
    parts = sum(
        simpo_loss(chosen[i], rejected[i], mask_c[i], mask_r[i], label_smoothing=0.1, pair_mask=pair_mask[i],
                   global_valid_pairs=5)[0]
        for i in torch.arange(6).chunk(3)
    )  # fmt: skip
    torch.testing.assert_close(parts, full)


# ----------------------------------------------------------------------------------------------
# ORPO
# ----------------------------------------------------------------------------------------------


def orpo_reference(chosen, rejected, mask_c, mask_r, beta):
    a_c, a_r = mean_logprobs(chosen, mask_c).tolist(), mean_logprobs(rejected, mask_r).tolist()
    ratios = []
    for x, y in zip(a_c, a_r, strict=True):
        p, q = math.exp(x), math.exp(y)
        log_odds = math.log(p / (1 - p)) - math.log(q / (1 - q))
        ratios.append(log_sigmoid(log_odds))
    n = len(a_c)
    nll = -(chosen * mask_c).sum().item() / (mask_c.sum().item() + EPS)
    return nll - beta * sum(ratios) / (n + EPS), nll


@given(seed=st.integers(0, 2**16), beta=st.sampled_from([0.0, 0.1, 1.0]))
def test_orpo_matches_odds_ratio_formula(seed, beta):
    chosen, rejected, _, _, mask_c, mask_r = pair_batch(seed)
    loss, metrics = orpo_loss(chosen, rejected, mask_c, mask_r, beta=beta)
    expected, nll = orpo_reference(chosen, rejected, mask_c, mask_r, beta)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    assert metrics["nll_loss"] == pytest.approx(nll, rel=1e-10)


def test_orpo_hand_value():
    # a+ = ln(1/2), a- = ln(1/4): odds 1 and 1/3, log odds ratio ln 3; NLL = ln 2 (one token).
    chosen = torch.tensor([[math.log(0.5)]], dtype=torch.float64)
    rejected = torch.tensor([[math.log(0.25)]], dtype=torch.float64)
    loss, metrics = orpo_loss(chosen, rejected, torch.ones(1, 1), torch.ones(1, 1), beta=0.5)
    expected = math.log(2) / (1 + EPS) - 0.5 * math.log(3 / 4) / (1 + EPS)  # log sigmoid(ln 3) = ln(3/4)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert metrics["log_odds_chosen"] == pytest.approx(math.log(3) / (1 + EPS))
    assert metrics["log_odds_ratio"] == pytest.approx(math.log(0.75) / (1 + EPS))


def test_orpo_gradcheck_micro_batches_and_extreme_probabilities():
    chosen, rejected, _, _, mask_c, mask_r = pair_batch(13, pairs=6)
    pair_mask = torch.tensor([1, 1, 1, 0, 1, 1])

    def f(c, r):
        return orpo_loss(c, r, mask_c, mask_r, beta=0.3, pair_mask=pair_mask)[0]

    assert torch.autograd.gradcheck(f, (chosen.clone().requires_grad_(), rejected.clone().requires_grad_()))
    toks = (mask_c * pair_mask[:, None]).sum()
    parts = sum(
        orpo_loss(chosen[i], rejected[i], mask_c[i], mask_r[i], beta=0.3, pair_mask=pair_mask[i],
                  global_valid_pairs=5, global_valid_toks=toks)[0]
        for i in torch.arange(6).chunk(3)
    )  # fmt: skip
    torch.testing.assert_close(parts, f(chosen, rejected))
    # Mean log-probs near 0 (probability near 1) and very negative stay finite, with finite gradients.
    c = torch.tensor([[-1e-9], [-60.0]], dtype=torch.float64, requires_grad=True)
    r = torch.tensor([[-0.5], [-1e-12]], dtype=torch.float64, requires_grad=True)
    loss, _ = orpo_loss(c, r, torch.ones(2, 1), torch.ones(2, 1))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(c.grad).all() and torch.isfinite(r.grad).all()


def test_orpo_rejects_probability_one_and_empty_responses():
    lp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="chosen response of pair 0 has mean log-prob 0"):
        orpo_loss(torch.zeros(1, 2).double(), lp, torch.ones(1, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match="rejected response of pair 0"):
        orpo_loss(lp, lp, torch.ones(1, 2), torch.zeros(1, 2))
    # ...but a masked-out pair may be anything.
    loss, _ = orpo_loss(
        torch.cat([lp, torch.zeros(1, 2).double()]), torch.cat([lp, lp]), torch.ones(2, 2), torch.ones(2, 2),
        pair_mask=torch.tensor([1, 0]),
    )  # fmt: skip
    assert torch.isfinite(loss)


# ----------------------------------------------------------------------------------------------
# KTO
# ----------------------------------------------------------------------------------------------


def kto_batch(seed: int, n: int = 6):
    gen = torch.Generator().manual_seed(seed)
    lp = -2 * torch.rand(n, 4, generator=gen, dtype=torch.float64)
    ref = -2 * torch.rand(n, 4, generator=gen, dtype=torch.float64)
    mask = (torch.rand(n, 4, generator=gen) < 0.8).double()
    mask[:, 0] = 1
    kl_lp = -2 * torch.rand(n, 3, generator=gen, dtype=torch.float64)
    kl_ref = -2 * torch.rand(n, 3, generator=gen, dtype=torch.float64)
    labels = torch.tensor([True, False, True, True, False, False][:n])
    return lp, ref, mask, labels, kl_lp, kl_ref, torch.ones(n, 3)


def kto_reference(lp, ref, mask, labels, z0, beta, wd, wu):
    rewards = ((lp - ref) * mask).sum(-1).tolist()
    total = 0.0
    for r, good in zip(rewards, labels.tolist(), strict=True):
        total += wd * (1 - sigmoid(beta * (r - z0))) if good else wu * (1 - sigmoid(beta * (z0 - r)))
    return total / (len(rewards) + EPS)


@pytest.mark.parametrize(("beta", "wd", "wu"), [(0.1, 1.0, 1.0), (0.5, 1.33, 0.7)])
def test_kto_matches_paper_formula(beta, wd, wu):
    lp, ref, mask, labels, kl_lp, kl_ref, kl_mask = kto_batch(0)
    kl_lp = kl_lp + 1.0  # make the KL estimate positive so the clamp at 0 is inactive
    z0 = max(0.0, ((kl_lp - kl_ref) * kl_mask).sum(-1).mean().item())
    assert z0 > 0
    loss, metrics = kto_loss(
        lp, ref, mask, labels, kl_logprobs=kl_lp, kl_reference_logprobs=kl_ref, kl_mask=kl_mask,
        beta=beta, desirable_weight=wd, undesirable_weight=wu,
    )  # fmt: skip
    assert loss.item() == pytest.approx(kto_reference(lp, ref, mask, labels, z0, beta, wd, wu), rel=1e-10)
    assert metrics["kl"] == pytest.approx(z0) and metrics["num_desirable"] == 3 and metrics["num_undesirable"] == 3
    same, _ = kto_loss(lp, ref, mask, labels, kl_estimate=z0, beta=beta, desirable_weight=wd, undesirable_weight=wu)
    torch.testing.assert_close(same, loss)


def test_kto_reference_point_is_clamped_and_detached():
    lp, ref, mask, labels, kl_lp, kl_ref, kl_mask = kto_batch(1)
    kl_lp = kl_lp - 5.0  # negative estimate: clamped to 0 (TRL's kl.clamp(min=0))
    loss, metrics = kto_loss(lp, ref, mask, labels, kl_logprobs=kl_lp, kl_reference_logprobs=kl_ref, kl_mask=kl_mask)
    assert metrics["kl"] == 0.0
    assert loss.item() == pytest.approx(kto_reference(lp, ref, mask, labels, 0.0, 0.1, 1.0, 1.0), rel=1e-10)
    # Gradient: d/d lp_bt of w (1 - sigmoid(s beta (r - z0))) with z0 constant (s = +1 desirable, -1 not).
    x = lp.clone().requires_grad_()
    kl_x = (kl_lp + 6.0).requires_grad_()
    loss, metrics = kto_loss(x, ref, mask, labels, kl_logprobs=kl_x, kl_reference_logprobs=kl_ref, kl_mask=kl_mask)
    loss.backward()
    z0 = metrics["kl"]
    assert z0 > 0 and kl_x.grad is None
    rewards = ((lp - ref) * mask).sum(-1)
    sign = labels.double() * 2 - 1
    s = torch.sigmoid(0.1 * sign * (rewards - z0))
    expected = -(0.1 * sign * s * (1 - s))[:, None] * mask / (6 + EPS)
    torch.testing.assert_close(x.grad, expected)


def test_kto_gradcheck_micro_batches_and_sample_mask():
    lp, ref, mask, labels, _, _, _ = kto_batch(2)
    sample_mask = torch.tensor([1, 1, 0, 1, 1, 1])

    def f(x):
        return kto_loss(x, ref, mask, labels, kl_estimate=0.3, beta=0.5, sample_mask=sample_mask)[0]

    assert torch.autograd.gradcheck(f, (lp.clone().requires_grad_(),))
    parts = sum(
        kto_loss(lp[i], ref[i], mask[i], labels[i], kl_estimate=0.3, beta=0.5, sample_mask=sample_mask[i],
                 global_valid_seqs=5)[0]
        for i in torch.arange(6).chunk(3)
    )  # fmt: skip
    torch.testing.assert_close(parts, f(lp))
    # 0/1 integer labels are accepted.
    torch.testing.assert_close(
        kto_loss(lp, ref, mask, labels.long(), kl_estimate=0.3, beta=0.5, sample_mask=sample_mask)[0], f(lp)
    )


# ----------------------------------------------------------------------------------------------
# Bradley-Terry reward-model loss (NeMo RL's PreferenceLossFn)
# ----------------------------------------------------------------------------------------------


def test_bradley_terry_hand_values_and_metrics():
    chosen = torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64)
    rejected = torch.tensor([1.0, 0.0, 3.0], dtype=torch.float64)
    loss, metrics = bradley_terry_loss(chosen, rejected)
    expected = (math.log1p(math.exp(-1)) + math.log(2) + math.log1p(math.exp(2))) / (3 + EPS)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert metrics["accuracy"] == pytest.approx(1 / (3 + EPS))  # the tie counts as wrong
    assert metrics["rewards_chosen_mean"] == pytest.approx(3 / (3 + EPS))
    assert metrics["rewards_rejected_mean"] == pytest.approx(4 / (3 + EPS))
    assert metrics["num_valid_samples"] == 3.0
    assert set(metrics) == {"loss", "accuracy", "rewards_chosen_mean", "rewards_rejected_mean", "num_valid_samples"}


def nemo_preference_loss(rewards, sample_mask, global_valid_seqs):
    """NeMo RL 7ea279a PreferenceLossFn._preference_loss semantics, re-derived: interleaved rows
    (chosen even, rejected odd), per-sample loss times the mask, masked mean over gvs / 2 (+1e-8)."""
    rc, rr = rewards[::2], rewards[1::2]
    mc, mr = sample_mask[::2], sample_mask[1::2]
    denom = global_valid_seqs / 2 + EPS
    per = -torch.nn.functional.logsigmoid(rc - rr) * mc
    return (
        (per * mc).sum() / denom,
        ((rc > rr).double() * mc).sum() / denom,
        (rc * mc).sum() / denom,
        (rr * mr).sum() / denom,
        sample_mask.sum() / 2,
    )


def test_bradley_terry_matches_nemo_interleaved_batch_and_micro_batches():
    gen = torch.Generator().manual_seed(3)
    rewards = torch.randn(12, generator=gen, dtype=torch.float64)
    sample_mask = torch.tensor([1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1], dtype=torch.float64)
    gvs = sample_mask.sum()
    nemo = nemo_preference_loss(rewards, sample_mask, gvs)
    loss, metrics = bradley_terry_loss(
        rewards[::2], rewards[1::2], pair_mask=sample_mask[::2], global_valid_pairs=gvs / 2
    )
    got = (loss.item(), metrics["accuracy"], metrics["rewards_chosen_mean"], metrics["rewards_rejected_mean"],
           metrics["num_valid_samples"])  # fmt: skip
    assert got == pytest.approx([float(x) for x in nemo], rel=1e-12)
    # Micro-batches of two pairs each, with NeMo RL's global count, sum to the full batch.
    parts = [
        bradley_terry_loss(rewards[::2][i], rewards[1::2][i], pair_mask=sample_mask[::2][i], global_valid_pairs=gvs / 2)
        for i in torch.arange(6).chunk(3)
    ]
    assert sum(p[0] for p in parts).item() == pytest.approx(loss.item(), rel=1e-12)
    for key in ("accuracy", "rewards_chosen_mean", "rewards_rejected_mean", "num_valid_samples"):
        assert sum(p[1][key] for p in parts) == pytest.approx(metrics[key], rel=1e-12)


@given(seed=st.integers(0, 2**16), shift=st.floats(-100, 100))
def test_bradley_terry_gradient_and_shift_invariance(seed, shift):
    gen = torch.Generator().manual_seed(seed)
    rc = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    rr = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    loss, _ = bradley_terry_loss(rc, rr)
    loss.backward()
    weight = torch.sigmoid(rr - rc).detach() / (5 + EPS)
    torch.testing.assert_close(rc.grad, -weight)
    torch.testing.assert_close(rr.grad, weight)
    shifted, _ = bradley_terry_loss(rc.detach() + shift, rr.detach() + shift)
    assert shifted.item() == pytest.approx(loss.item(), rel=1e-9, abs=1e-12)


def test_bradley_terry_gradcheck_and_masked_garbage_is_inert():
    rc = torch.tensor([0.5, math.nan, -1.0], dtype=torch.float64, requires_grad=True)
    rr = torch.tensor([0.0, math.inf, 2.0], dtype=torch.float64)
    loss, metrics = bradley_terry_loss(rc, rr, pair_mask=torch.tensor([True, False, True]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(rc.grad).all() and rc.grad[1] == 0
    assert metrics["num_valid_samples"] == 2.0
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: bradley_terry_loss(a, b)[0], (x, y))


# ----------------------------------------------------------------------------------------------
# Bad arguments: every check names the argument
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"loss_type": "dpo"}, ValueError, "loss_type must be one of"),
        ({"loss_type": 3}, TypeError, "loss_type must be a str"),
        ({"label_smoothing": -0.1}, ValueError, "label_smoothing must be a finite number in \\[0, 0.5\\)"),
        ({"label_smoothing": 0.5}, ValueError, "label_smoothing must be a finite number in \\[0, 0.5\\)"),
        ({"label_smoothing": math.nan}, ValueError, "label_smoothing"),
        ({"label_smoothing": "0.1"}, TypeError, "label_smoothing must be a real number"),
        ({"loss_type": "hinge", "label_smoothing": 0.1}, ValueError, "has no effect with loss_type='hinge'"),
        ({"loss_type": "ipo", "label_smoothing": 0.1}, ValueError, "has no effect with loss_type='ipo'"),
        ({"loss_type": "exo_pair"}, ValueError, "exo_pair' needs label_smoothing > 0"),
        ({"loss_type": "ipo", "reference_policy_kl_penalty": 0.0}, ValueError, "needs reference_policy_kl_penalty > 0"),
        ({"loss_type": "sppo_hard", "reference_policy_kl_penalty": 0.0}, ValueError, "needs reference_policy"),
    ],
)
def test_config_rejects_invalid_combinations(kwargs, error, match):
    with pytest.raises(error, match=match):
        DPOConfig(**kwargs)


def test_pair_losses_bad_inputs():
    ok = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(TypeError, match="config must be a DPOConfig"):
        dpo_pair_losses(ok, ok, config={"loss_type": "ipo"})
    with pytest.raises(TypeError, match="chosen_rewards must be a floating-point tensor"):
        dpo_pair_losses(torch.zeros(3, dtype=torch.long), ok)
    with pytest.raises(TypeError, match=r"rejected_rewards must be a torch\.Tensor"):
        dpo_pair_losses(ok, [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="chosen_rewards must have shape \\[P\\]"):
        dpo_pair_losses(ok[None], ok[None])
    with pytest.raises(ValueError, match="chosen_rewards and rejected_rewards must have the same shape"):
        dpo_pair_losses(ok, ok[:2])
    with pytest.raises(ValueError, match="rejected_rewards has 1 NaN/inf"):
        dpo_pair_losses(ok, torch.tensor([0.0, math.nan, 0.0]).double())


def test_simpo_orpo_bad_inputs():
    chosen, rejected, _, _, mask_c, mask_r = pair_batch(14)
    for fn in (simpo_loss, orpo_loss):
        with pytest.raises(ValueError, match="beta must be a finite number"):
            fn(chosen, rejected, mask_c, mask_r, beta=-1.0)
        with pytest.raises(ValueError, match="same number of pairs"):
            fn(chosen, rejected[:3], mask_c, mask_r[:3])
        with pytest.raises(ValueError, match="chosen_logprobs and chosen_mask must have the same shape"):
            fn(chosen, rejected, mask_c[:, :3], mask_r)
        with pytest.raises(ValueError, match="pair_mask must have shape \\[P\\]"):
            fn(chosen, rejected, mask_c, mask_r, pair_mask=torch.ones(3))
        with pytest.raises(ValueError, match="global_valid_pairs = 2 is smaller"):
            fn(chosen, rejected, mask_c, mask_r, global_valid_pairs=2)
        with pytest.raises(ValueError, match="rejected_logprobs has 1 NaN/inf"):
            bad = rejected.clone()
            bad[0, 0] = math.nan
            fn(chosen, bad, mask_c, mask_r)
        with pytest.raises(ValueError, match="chosen_logprobs must have shape \\[B, T\\]"):
            fn(chosen[0], rejected, mask_c, mask_r)
    with pytest.raises(ValueError, match="gamma must be a finite number"):
        simpo_loss(chosen, rejected, mask_c, mask_r, gamma=-0.1)
    with pytest.raises(ValueError, match=r"label_smoothing must be a finite number in \[0, 0\.5\)"):
        simpo_loss(chosen, rejected, mask_c, mask_r, label_smoothing=0.5)
    with pytest.raises(ValueError, match="global_valid_toks = 1 is smaller"):
        orpo_loss(chosen, rejected, mask_c, mask_r, global_valid_toks=1)


def test_kto_bad_inputs():
    lp, ref, mask, labels, kl_lp, kl_ref, kl_mask = kto_batch(4)
    kl = {"kl_logprobs": kl_lp, "kl_reference_logprobs": kl_ref, "kl_mask": kl_mask}
    cases = [
        ({"desirable": labels.double()}, TypeError, "desirable must be a bool tensor"),
        ({"desirable": labels.long() * 2}, TypeError, "desirable must be a bool tensor"),
        ({"desirable": labels[:3]}, ValueError, "desirable must have shape \\[B\\] = \\[6\\]"),
        ({"kl_estimate": 0.1, **kl}, ValueError, "either kl_estimate or"),
        ({"kl_logprobs": kl_lp}, ValueError, "needs the KL reference point"),
        ({}, ValueError, "needs the KL reference point"),
        ({"kl_estimate": torch.ones(2)}, ValueError, "kl_estimate must be a scalar"),
        ({"kl_estimate": math.inf}, ValueError, "kl_estimate must be finite"),
        ({"kl_estimate": True}, TypeError, "kl_estimate must be a number"),
        ({**kl, "kl_mask": kl_mask[:, :2]}, ValueError, "kl_logprobs and kl_mask must have the same shape"),
        (
            {**kl, "kl_logprobs": kl_lp[:0], "kl_reference_logprobs": kl_ref[:0], "kl_mask": kl_mask[:0]},
            ValueError,
            "at least one row",
        ),
        ({"kl_estimate": 0.0, "sample_mask": torch.ones(3)}, ValueError, "sample_mask must have shape \\[B\\]"),
        ({"kl_estimate": 0.0, "global_valid_seqs": 2}, ValueError, "global_valid_seqs = 2 is smaller"),
        ({"kl_estimate": 0.0, "beta": -1.0}, ValueError, "beta must be"),
        ({"kl_estimate": 0.0, "desirable_weight": -1.0}, ValueError, "desirable_weight must be"),
        ({"kl_estimate": 0.0, "undesirable_weight": math.nan}, ValueError, "undesirable_weight must be"),
        ({"kl_estimate": 0.0, "mask": mask[:, :2]}, ValueError, "logprobs and mask must have the same shape"),
        ({"kl_estimate": 0.0, "reference_logprobs": ref[:, :2]}, ValueError, "reference_logprobs must have the same"),
    ]
    for extra, error, match in cases:
        args = {"logprobs": lp, "reference_logprobs": ref, "mask": mask, "desirable": labels, **extra}
        with pytest.raises(error, match=match):
            kto_loss(args.pop("logprobs"), args.pop("reference_logprobs"), args.pop("mask"), args.pop("desirable"),
                     **args)  # fmt: skip


def test_bradley_terry_bad_inputs():
    ok = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="chosen_rewards must have shape \\[P\\]"):
        bradley_terry_loss(ok[:, None], ok[:, None])
    with pytest.raises(ValueError, match="chosen_rewards and rejected_rewards must have the same shape"):
        bradley_terry_loss(ok, ok[:2])
    with pytest.raises(TypeError, match="rejected_rewards must be a floating-point tensor"):
        bradley_terry_loss(ok, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="chosen_rewards has 1 NaN/inf"):
        bradley_terry_loss(torch.tensor([0.0, math.nan, 0.0]), ok.float())
    with pytest.raises(ValueError, match="pair_mask must have shape \\[P\\] = \\[3\\]"):
        bradley_terry_loss(ok, ok, pair_mask=torch.ones(2))
    with pytest.raises(ValueError, match="pair_mask must be non-negative"):
        bradley_terry_loss(ok, ok, pair_mask=torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="global_valid_pairs = 1 is smaller"):
        bradley_terry_loss(ok, ok, global_valid_pairs=1)
    with pytest.raises(TypeError, match="global_valid_pairs must be a number"):
        bradley_terry_loss(ok, ok, global_valid_pairs="3")
