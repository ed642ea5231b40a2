"""calculate_kl: the k1/k2/k3 estimators, clamps and importance weights."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nemo_rl_theory import calculate_kl

finite_logprobs = st.floats(-30.0, 0.0, allow_nan=False)


@given(lp=finite_logprobs, ref=finite_logprobs)
def test_hand_formulas_in_float64(lp, ref):
    logprobs = torch.tensor([lp], dtype=torch.float64)
    reference = torch.tensor([ref], dtype=torch.float64)
    x = max(-20.0, min(20.0, ref - lp))  # input clamp at 20
    expected = {"k1": -x, "k2": 0.5 * x * x, "k3": math.exp(x) - 1.0 - x}
    for kind, value in expected.items():
        out = calculate_kl(logprobs, reference, kl_type=kind, output_clamp_value=None)
        assert out.item() == pytest.approx(value, rel=1e-12, abs=1e-12)


@given(lp=finite_logprobs, ref=finite_logprobs)
def test_k3_is_non_negative(lp, ref):
    out = calculate_kl(torch.tensor([lp]), torch.tensor([ref]), kl_type="k3")
    assert out.item() >= 0.0


def test_estimators_are_unbiased_or_not_as_theory_says():
    # Exact expectations over a categorical pi: E[k1] = E[k3] = KL(pi || ref); k2 is biased.
    pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    ref = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    kl_exact = (pi * (pi / ref).log()).sum()
    expectation = {
        kind: (pi * calculate_kl(pi.log(), ref.log(), kl_type=kind, output_clamp_value=None)).sum()
        for kind in ("k1", "k2", "k3")
    }
    torch.testing.assert_close(expectation["k1"], kl_exact)
    torch.testing.assert_close(expectation["k3"], kl_exact)
    assert abs(expectation["k2"] - kl_exact) > 1e-3


def test_input_and_output_clamps():
    logprobs = torch.tensor([0.0, 0.0], dtype=torch.float64)
    reference = torch.tensor([-50.0, 5.0], dtype=torch.float64)
    out = calculate_kl(logprobs, reference, kl_type="k3", input_clamp_value=20.0, output_clamp_value=None)
    # log-ratio -50 is clamped to -20: e^-20 - 1 + 20.
    torch.testing.assert_close(out[0], torch.tensor(math.exp(-20.0) + 19.0, dtype=torch.float64))
    clamped = calculate_kl(logprobs, reference, kl_type="k3", output_clamp_value=10.0)
    assert clamped[0].item() == 10.0 and clamped[1].item() == 10.0  # e^5 - 6 = 142.4 -> 10
    k1 = calculate_kl(logprobs, reference, kl_type="k1", output_clamp_value=10.0)
    assert k1.tolist() == [10.0, -5.0]  # k1 is clamped on both sides


def test_weights_multiply_before_output_clamp():
    logprobs = torch.tensor([0.0], dtype=torch.float64)
    reference = torch.tensor([-1.0], dtype=torch.float64)
    k3 = math.exp(-1.0) - 1.0 + 1.0
    weights = torch.tensor([100.0], dtype=torch.float64)
    unclamped = calculate_kl(logprobs, reference, importance_weights=weights, output_clamp_value=None)
    assert unclamped.item() == pytest.approx(100.0 * k3)
    assert calculate_kl(logprobs, reference, importance_weights=weights).item() == 10.0


def test_score_function_weight_gradient():
    # rho = exp(lp - sg(lp)) has value 1 and gradient rho * d lp: d/d lp [rho * k3] = k3 + dk3/dlp.
    lp = torch.tensor([-1.0, -2.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-1.5, -1.0], dtype=torch.float64)
    rho = torch.exp(lp - lp.detach())
    calculate_kl(lp, ref, importance_weights=rho, output_clamp_value=None).sum().backward()
    x = (ref - lp).detach()
    k3 = torch.exp(x) - 1 - x
    dk3 = -(torch.exp(x) - 1)  # d/d lp of e^(ref - lp) - 1 - (ref - lp)
    torch.testing.assert_close(lp.grad, k3 + dk3)


def test_weight_is_detached_where_input_clamp_is_active():
    lp = torch.tensor([0.0, 0.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-30.0, -1.0], dtype=torch.float64)  # first token clamped at -20
    rho = torch.exp(lp - lp.detach())
    calculate_kl(lp, ref, importance_weights=rho, output_clamp_value=None).sum().backward()
    assert lp.grad[0].item() == 0.0  # no gradient through the estimator nor the weight
    assert lp.grad[1].item() != 0.0


def test_gradcheck_all_types():
    lp = torch.tensor([-1.0, -0.5, -3.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-0.7, -2.0, -1.0], dtype=torch.float64)
    for kind in ("k1", "k2", "k3"):
        assert torch.autograd.gradcheck(lambda x, k=kind: calculate_kl(x, ref, kl_type=k), (lp,))
