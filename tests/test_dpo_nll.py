"""dpo_loss and nll_loss: hand-derived values, the DPO gradient weight, micro-batch sums."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nemo_rl_theory import DPOConfig, dpo_loss, nll_loss

EPS = 1e-8


def pair_batch(seed: int, pairs: int = 4, length: int = 5):
    gen = torch.Generator().manual_seed(seed)

    def lp():
        return -3 * torch.rand(pairs, length, generator=gen, dtype=torch.float64)

    mask_c = (torch.rand(pairs, length, generator=gen) < 0.7).double()
    mask_r = (torch.rand(pairs, length, generator=gen) < 0.7).double()
    mask_c[:, 0] = mask_r[:, 0] = 1
    return lp(), lp(), lp(), lp(), mask_c, mask_r


def test_hand_computed_dpo_value():
    # One pair, two tokens each. r+ = (-1 + 2) + (-1 + 1.5) = 1.5, r- = (-2 + 1) = -1 (one token).
    chosen = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    chosen_ref = torch.tensor([[-2.0, -1.5]], dtype=torch.float64)
    rejected = torch.tensor([[-2.0, -9.0]], dtype=torch.float64)
    rejected_ref = torch.tensor([[-1.0, -9.0]], dtype=torch.float64)
    cfg = DPOConfig(reference_policy_kl_penalty=0.5)
    loss, metrics = dpo_loss(
        chosen, rejected, chosen_ref, rejected_ref, torch.ones(1, 2), torch.tensor([[1.0, 0.0]]), config=cfg
    )
    margin = 1.5 - (-1.0)
    expected = math.log1p(math.exp(-0.5 * margin)) / (1 + EPS)  # -log sigmoid(beta * margin)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert metrics["accuracy"] == pytest.approx(1.0)
    assert metrics["rewards_chosen_mean"] == pytest.approx(1.5) and metrics["rewards_rejected_mean"] == pytest.approx(
        -1
    )


@given(seed=st.integers(0, 2**16), beta=st.sampled_from([0.05, 0.1, 1.0]), average=st.booleans())
def test_gradient_is_beta_sigmoid_weighted_score_difference(seed, beta, average):
    # d L / d logpi(y+_t) = -beta * sigmoid(-beta * margin) * m_t / n  (n = tokens if averaged, else 1), / P
    chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r = pair_batch(seed)
    c = chosen.clone().requires_grad_()
    r = rejected.clone().requires_grad_()
    cfg = DPOConfig(reference_policy_kl_penalty=beta, preference_average_log_probs=average)
    loss, _ = dpo_loss(c, r, chosen_ref, rejected_ref, mask_c, mask_r, config=cfg)
    loss.backward()
    n_c = mask_c.sum(-1, keepdim=True) if average else 1.0
    n_r = mask_r.sum(-1, keepdim=True) if average else 1.0
    reward_c = ((chosen - chosen_ref) * mask_c).sum(-1, keepdim=True) / n_c
    reward_r = ((rejected - rejected_ref) * mask_r).sum(-1, keepdim=True) / n_r
    weight = beta * torch.sigmoid(beta * (reward_r - reward_c)) / (chosen.shape[0] + EPS)
    torch.testing.assert_close(c.grad, -weight * mask_c / n_c)
    torch.testing.assert_close(r.grad, weight * mask_r / n_r)


def test_identical_policy_and_reference_gives_ln2():
    chosen, rejected, _, _, mask_c, mask_r = pair_batch(1)
    loss, metrics = dpo_loss(chosen, rejected, chosen, rejected, mask_c, mask_r)
    assert loss.item() == pytest.approx(math.log(2.0) * 4 / (4 + EPS))
    assert metrics["accuracy"] == 0.0  # ties are not counted as correct


def test_sft_term_summed_and_averaged():
    chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r = pair_batch(2)
    for average in (False, True):
        cfg = DPOConfig(preference_loss_weight=0.0, sft_loss_weight=1.0, sft_average_log_probs=average)
        loss, metrics = dpo_loss(chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r, config=cfg)
        per_pair = -(chosen * mask_c).sum(-1) / (mask_c.sum(-1) if average else 1.0)
        assert loss.item() == pytest.approx(per_pair.sum().item() / (4 + EPS))
        assert metrics["sft_loss"] == pytest.approx(loss.item())


def test_pairs_split_across_micro_batches_sum_to_full_batch():
    chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r = pair_batch(3, pairs=6)
    pair_mask = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.float64)
    cfg = DPOConfig(sft_loss_weight=0.2)
    full, _ = dpo_loss(chosen, rejected, chosen_ref, rejected_ref, mask_c, mask_r, config=cfg, pair_mask=pair_mask)
    total = sum(
        dpo_loss(
            chosen[i], rejected[i], chosen_ref[i], rejected_ref[i], mask_c[i], mask_r[i],
            config=cfg, pair_mask=pair_mask[i], global_valid_pairs=pair_mask.sum(),
        )[0]
        for i in torch.arange(6).chunk(3)
    )  # fmt: skip
    torch.testing.assert_close(total, full)


def test_nll_hand_value_and_gradient():
    lp = torch.tensor([[-1.0, -2.0, -float("inf")], [-0.5, -0.5, -0.5]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss, metrics = nll_loss(lp, mask)
    loss.backward()
    assert loss.item() == pytest.approx(3.5 / (3 + EPS))
    torch.testing.assert_close(lp.grad, -mask.double() / (3 + EPS))
    assert metrics["num_unmasked_tokens"] == 3.0 and metrics["num_valid_samples"] == 2.0


def test_nll_sample_mask_and_global_count():
    lp = -torch.rand(4, 3, dtype=torch.float64)
    mask = torch.ones(4, 3)
    sample_mask = torch.tensor([1.0, 0.0, 1.0, 1.0])
    loss, _ = nll_loss(lp, mask, sample_mask=sample_mask, global_valid_toks=18)
    assert loss.item() == pytest.approx(-(lp * sample_mask[:, None]).sum().item() / (18 + EPS))
