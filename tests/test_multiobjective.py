"""Multi-objective combinators: each against an independent float64 reference (loops, autograd, brute force)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nemo_rl_theory.training.multiobjective import (
    combine_gradients,
    gradnorm_balanced_weights,
    gradnorm_loss,
    gradnorm_targets,
    gradnorm_update,
    min_norm_two_tasks,
    min_norm_weights,
    pcgrad,
    pcgrad_project,
    per_objective_advantages,
    scalarized_advantages,
    uncertainty_optimal_log_variances,
    uncertainty_weighted_loss,
    weighted_sum_loss,
)
from support import grpo_advantages_reference

F64 = torch.float64
finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False)
positive = st.floats(1e-3, 1e3, allow_nan=False, allow_infinity=False)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=F64)


# ----------------------------------------------------------------------------- references


def pcgrad_loop(g: list[list[float]], orders: list[list[int]]) -> list[list[float]]:
    out = []
    for i, start in enumerate(g):
        row = list(start)
        for j in orders[i]:
            dot = sum(a * b for a, b in zip(row, g[j], strict=True))
            if dot < 0:
                sq = sum(b * b for b in g[j])
                row = [a - dot / sq * b for a, b in zip(row, g[j], strict=True)]
        out.append(row)
    return out


def min_norm_exact(g: torch.Tensor) -> float:
    """Minimum of |lambda^T g|^2 over the simplex by enumerating supports (KKT linear systems)."""
    gram = g @ g.T
    k = gram.shape[0]
    best = math.inf
    for size in range(1, k + 1):
        for support in itertools.combinations(range(k), size):
            idx = list(support)
            system = torch.zeros(size + 1, size + 1, dtype=F64)
            system[:size, :size] = 2 * gram[idx][:, idx]
            system[:size, size] = 1
            system[size, :size] = 1
            rhs = torch.zeros(size + 1, dtype=F64)
            rhs[size] = 1
            solution = torch.linalg.lstsq(system, rhs).solution[:size]
            if (solution < -1e-12).any() or abs(float(solution.sum()) - 1) > 1e-9:
                continue
            lam = torch.zeros(k, dtype=F64)
            lam[idx] = solution.clamp(min=0)
            best = min(best, float(lam @ gram @ lam))
    return best


# ----------------------------------------------------------------------------- fixed weights


@given(st.lists(st.tuples(finite, st.floats(0, 5)), min_size=1, max_size=6))
def test_weighted_sum_matches_direct_sum(pairs):
    losses = torch.tensor([p[0] for p in pairs], dtype=F64)
    weights = [p[1] for p in pairs]
    loss, metrics = weighted_sum_loss(losses, weights)
    assert math.isclose(loss.item(), sum(w * v for v, w in pairs), rel_tol=1e-12, abs_tol=1e-12)
    assert metrics["loss"] == loss.item()
    assert [metrics[f"objective_{k}"] for k in range(len(pairs))] == losses.tolist()


def test_weighted_sum_keeps_autograd_through_a_list_of_scalars():
    theta = randn(3, seed=0).requires_grad_(True)
    parts = [(theta**2).sum(), theta.sin().sum(), (theta[0] * theta[1])]
    loss, _ = weighted_sum_loss(parts, torch.tensor([0.5, 2.0, 1.0], dtype=F64))
    per_part = torch.stack([torch.autograd.grad(p, theta, retain_graph=True)[0] for p in parts])
    (grad,) = torch.autograd.grad(loss, theta)
    torch.testing.assert_close(grad, combine_gradients(per_part, [0.5, 2.0, 1.0]), rtol=1e-12, atol=1e-14)


@given(st.integers(1, 5), st.integers(1, 7), st.integers(0, 10_000))
def test_combine_gradients_is_a_weighted_row_sum(k, p, seed):
    g = randn(k, p, seed=seed)
    w = torch.rand(k, generator=gen(seed + 1), dtype=F64)
    expected = [sum(w[i].item() * g[i, j].item() for i in range(k)) for j in range(p)]
    torch.testing.assert_close(combine_gradients(g, w), torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)


# Groups of at least 3: see the report on grpo_advantages for G = 2 under leave-one-out.
@given(st.integers(3, 5), st.integers(1, 4), st.integers(0, 10_000), st.booleans(), st.booleans())
def test_per_objective_advantages_are_column_wise_grpo(group_size, n_groups, seed, normalize, loo):
    n = group_size * n_groups
    # Multiples of 1/8: ties happen, as with discrete rewards, and stay exact (see the report on
    # spurious standard deviations of non-dyadic ties in grpo_advantages).
    rewards = torch.round(randn(n, 3, seed=seed) * 8) / 8
    ids = torch.arange(n_groups).repeat_interleave(group_size)[torch.randperm(n, generator=gen(seed))]
    out = per_objective_advantages(rewards, ids, normalize_rewards=normalize, use_leave_one_out_baseline=loo)
    for k in range(3):
        expected = grpo_advantages_reference(
            rewards[:, k].tolist(), ids.tolist(), normalize=normalize, leave_one_out=loo
        )
        torch.testing.assert_close(out[:, k], torch.tensor(expected, dtype=F64), rtol=1e-9, atol=1e-9)


@given(st.integers(3, 5), st.integers(1, 4), st.integers(0, 10_000), st.booleans())
def test_weighting_before_and_after_normalisation(group_size, n_groups, seed, loo):
    n = group_size * n_groups
    rewards = randn(n, 2, seed=seed)
    ids = torch.arange(n_groups).repeat_interleave(group_size)
    w = torch.rand(2, generator=gen(seed), dtype=F64) + 0.1
    before = scalarized_advantages(rewards, ids, w, use_leave_one_out_baseline=loo)
    after = scalarized_advantages(rewards, ids, w, weight_before_normalization=False, use_leave_one_out_baseline=loo)
    combined = (rewards @ w).tolist()
    torch.testing.assert_close(
        before,
        torch.tensor(grpo_advantages_reference(combined, ids.tolist(), normalize=True, leave_one_out=loo), dtype=F64),
        rtol=1e-9,
        atol=1e-9,
    )
    columns = [
        grpo_advantages_reference(rewards[:, k].tolist(), ids.tolist(), normalize=True, leave_one_out=loo)
        for k in range(2)
    ]
    expected_after = [w[0].item() * a + w[1].item() * b for a, b in zip(*columns, strict=True)]
    torch.testing.assert_close(after, torch.tensor(expected_after, dtype=F64), rtol=1e-9, atol=1e-9)
    # Without the std division the baseline is linear: both placements agree.
    raw = {
        flag: scalarized_advantages(
            rewards, ids, w, weight_before_normalization=flag, normalize_rewards=False, use_leave_one_out_baseline=loo
        )
        for flag in (True, False)
    }
    torch.testing.assert_close(raw[True], raw[False], rtol=1e-10, atol=1e-12)
    # A common rescaling by c: "before" is the same advantage with eps / c (c x / (c s + eps) = x / (s + eps / c)),
    # "after" scales linearly.
    rescaled = scalarized_advantages(rewards, ids, 4 * w, use_leave_one_out_baseline=loo)
    expected_rescaled = grpo_advantages_reference(
        combined, ids.tolist(), normalize=True, leave_one_out=loo, eps=1e-6 / 4
    )
    torch.testing.assert_close(rescaled, torch.tensor(expected_rescaled, dtype=F64), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(
        scalarized_advantages(rewards, ids, 4 * w, weight_before_normalization=False, use_leave_one_out_baseline=loo),
        4 * after,
        rtol=1e-12,
        atol=1e-12,
    )


def test_before_normalisation_ignores_the_weight_where_the_other_objective_is_constant():
    ids = torch.zeros(4, dtype=torch.long)
    rewards = torch.tensor([[0.0, -3 / 7], [0.0, -5 / 7], [0.0, -5 / 7], [0.0, -1.0]], dtype=F64)
    unit = torch.tensor(
        grpo_advantages_reference(rewards[:, 1].tolist(), [0] * 4, normalize=True, leave_one_out=True), dtype=F64
    )
    for w_len in (1e-3, 0.3, 5.0):
        w = torch.tensor([1.0, w_len], dtype=F64)
        torch.testing.assert_close(scalarized_advantages(rewards, ids, w), unit, rtol=1e-2, atol=1e-12)
        torch.testing.assert_close(
            scalarized_advantages(rewards, ids, w, weight_before_normalization=False), w_len * unit, rtol=1e-12, atol=0
        )


# ----------------------------------------------------------------------------- uncertainty weighting


@given(st.lists(st.tuples(positive, st.floats(-5, 5)), min_size=1, max_size=5), st.sampled_from([0.5, 1.0, 2.0]))
def test_uncertainty_loss_formula_gradient_and_optimum(pairs, c):
    losses = torch.tensor([p[0] for p in pairs], dtype=F64, requires_grad=True)
    s = torch.tensor([p[1] for p in pairs], dtype=F64, requires_grad=True)
    loss, metrics = uncertainty_weighted_loss(losses, s, regularizer_scale=c)
    direct = sum(math.exp(-si) * li + c * si for li, si in pairs)
    assert math.isclose(loss.item(), direct, rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(metrics["weight_0"], math.exp(-pairs[0][1]), rel_tol=1e-12)
    d_losses, d_s = torch.autograd.grad(loss, (losses, s))
    torch.testing.assert_close(d_losses, torch.exp(-s.detach()), rtol=1e-12, atol=0)
    torch.testing.assert_close(d_s, -torch.exp(-s.detach()) * losses.detach() + c, rtol=1e-10, atol=1e-10)

    star = uncertainty_optimal_log_variances(losses.detach(), regularizer_scale=c).requires_grad_(True)
    value, _ = uncertainty_weighted_loss(losses.detach(), star, regularizer_scale=c)
    (grad_star,) = torch.autograd.grad(value, star)
    assert grad_star.abs().max() < 1e-9
    expected_value = sum(c * (1 + math.log(li / c)) for li, _ in pairs)
    assert math.isclose(value.item(), expected_value, rel_tol=1e-10, abs_tol=1e-10)
    for shift in (-0.3, 0.2):  # a strict minimum
        moved, _ = uncertainty_weighted_loss(losses.detach(), star.detach() + shift, regularizer_scale=c)
        assert moved.item() > value.item()


def test_uncertainty_conventions_of_kendall_et_al():
    losses = torch.tensor([0.2, 3.0], dtype=F64)
    s = torch.tensor([0.4, -1.1], dtype=F64)
    sigma = torch.exp(s / 2)
    gaussian = (losses / (2 * sigma**2) + sigma.log()).sum()
    classification = (losses / sigma**2 + sigma.log()).sum()
    assert math.isclose(gaussian.item(), uncertainty_weighted_loss(losses, s)[0].item() / 2, rel_tol=1e-12)
    assert math.isclose(
        classification.item(), uncertainty_weighted_loss(losses, s, regularizer_scale=0.5)[0].item(), rel_tol=1e-12
    )
    # Numerical minimisation of the Gaussian (halved) form lands on the c = 1 closed form.
    s_opt = torch.zeros(2, dtype=F64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [s_opt], max_iter=200, tolerance_grad=1e-14, tolerance_change=1e-16, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        value = (losses / (2 * torch.exp(s_opt)) + s_opt / 2).sum()
        value.backward()
        return value

    optimizer.step(closure)
    torch.testing.assert_close(s_opt.detach(), uncertainty_optimal_log_variances(losses), rtol=0, atol=1e-8)


# ----------------------------------------------------------------------------- GradNorm


def test_gradnorm_gradient_matches_the_papers_autograd_route():
    torch.manual_seed(3)
    trunk = torch.nn.Linear(4, 6).double()
    heads = [torch.nn.Linear(6, 1).double() for _ in range(3)]
    x = torch.randn(20, 4, dtype=F64)
    y = torch.randn(20, 3, dtype=F64) * torch.tensor([1.0, 10.0, 0.1], dtype=F64)
    features = torch.tanh(trunk(x))
    task_losses = [((heads[k](features)[:, 0] - y[:, k]) ** 2).mean() for k in range(3)]
    current = torch.stack(task_losses).detach()
    initial = current * torch.tensor([2.0, 1.2, 1.5], dtype=F64)
    for alpha in (0.0, 0.7, 1.5):
        w = torch.tensor([0.5, 1.2, 1.3], dtype=F64, requires_grad=True)
        weighted_norms = torch.stack(
            [torch.autograd.grad(w[k] * task_losses[k], trunk.weight, create_graph=True)[0].norm() for k in range(3)]
        )
        rates = (current / initial) / (current / initial).mean()
        targets = (weighted_norms.mean() * rates**alpha).detach()
        (expected,) = torch.autograd.grad((weighted_norms - targets).abs().sum(), w)
        norms = torch.stack(
            [torch.autograd.grad(task_losses[k], trunk.weight, retain_graph=True)[0].norm() for k in range(3)]
        )
        got_targets = gradnorm_targets(w, norms, current, initial, alpha=alpha)
        torch.testing.assert_close(got_targets, targets, rtol=1e-12, atol=0)
        (got,) = torch.autograd.grad(gradnorm_loss(w, norms, current, initial, alpha=alpha), w)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
        new = gradnorm_update(w, norms, current, initial, alpha=alpha, lr=0.01)
        by_hand = w.detach() - 0.01 * expected
        torch.testing.assert_close(new, 3 * by_hand / by_hand.sum(), rtol=1e-12, atol=0)
        assert math.isclose(new.sum().item(), 3.0, rel_tol=1e-12)


@given(st.lists(positive, min_size=2, max_size=5), st.integers(0, 10_000), st.sampled_from([0.0, 1.0]))
def test_gradnorm_balanced_weights_are_a_fixed_point_when_reachable(norm_list, seed, alpha):
    k = len(norm_list)
    norms = torch.tensor(norm_list, dtype=F64)
    current = torch.rand(k, generator=gen(seed), dtype=F64) + 0.1
    initial = torch.ones(k, dtype=F64)
    w_star = gradnorm_balanced_weights(norms, current, initial, alpha=alpha)
    assert math.isclose(w_star.sum().item(), k, rel_tol=1e-12)
    assert gradnorm_loss(w_star, norms, current, initial, alpha=alpha).item() < 1e-9 * norms.max().item() * k
    after = gradnorm_update(w_star, norms, current, initial, alpha=alpha, lr=1e-3, min_weight=1e-300)
    torch.testing.assert_close(after, w_star, rtol=1e-12, atol=1e-12)  # every target met: a fixed point


def test_gradnorm_iteration_converges_to_balanced_weights_for_alpha_one():
    norms = torch.tensor([2.0, 0.4, 1.0, 0.7], dtype=F64)
    current = torch.tensor([0.5, 0.9, 0.3, 0.6], dtype=F64)
    initial = torch.ones(4, dtype=F64)
    w = torch.ones(4, dtype=F64)
    for step in range(1500):
        w = gradnorm_update(w, norms, current, initial, alpha=1.0, lr=0.05 / math.sqrt(step + 1))
    target = gradnorm_balanced_weights(norms, current, initial, alpha=1.0)
    assert (w - target).abs().max() < 1e-2
    weighted = w * norms
    rates = current / current.mean()
    torch.testing.assert_close(weighted / weighted.mean(), rates, rtol=2e-2, atol=0)


# ----------------------------------------------------------------------------- PCGrad and MGDA


@given(st.integers(1, 5), st.integers(1, 6), st.integers(0, 10_000))
def test_pcgrad_matches_loop_in_fixed_and_random_order(k, p, seed):
    g = randn(k, p, seed=seed)
    fixed = [[j for j in range(k) if j != i] for i in range(k)]
    torch.testing.assert_close(
        pcgrad_project(g), torch.tensor(pcgrad_loop(g.tolist(), fixed), dtype=F64).view(k, p), rtol=1e-12, atol=1e-12
    )
    replay = gen(seed)
    orders = []
    for i in range(k):
        others = [j for j in range(k) if j != i]
        orders.append([others[q] for q in torch.randperm(len(others), generator=replay).tolist()])
    projected = pcgrad_project(g, generator=gen(seed))
    torch.testing.assert_close(projected, torch.tensor(pcgrad_loop(g.tolist(), orders), dtype=F64).view(k, p),
                               rtol=1e-12, atol=1e-12)  # fmt: skip
    torch.testing.assert_close(pcgrad(g, generator=gen(seed)), projected.sum(0), rtol=0, atol=0)


@given(st.integers(1, 8), st.integers(0, 10_000))
def test_pcgrad_two_tasks_leaves_no_conflict(p, seed):
    g = randn(2, p, seed=seed)
    projected, d = pcgrad_project(g), pcgrad(g)
    if float(g[0] @ g[1]) < 0:
        assert abs(float(projected[0] @ g[1])) < 1e-10 and abs(float(projected[1] @ g[0])) < 1e-10
    else:
        assert torch.equal(projected, g)
    assert (g @ d >= -1e-10).all()


def test_pcgrad_zero_gradient_never_conflicts():
    g = torch.tensor([[1.0, -2.0], [0.0, 0.0], [-1.0, 0.5]], dtype=F64)
    projected = pcgrad_project(g)
    assert torch.isfinite(projected).all()
    assert torch.equal(projected[1], g[1])


@given(st.integers(1, 8), st.integers(0, 10_000))
def test_min_norm_two_tasks_beats_a_grid_search(p, seed):
    g = randn(2, p, seed=seed) * (torch.rand(2, 1, generator=gen(seed), dtype=F64) * 3 + 0.1)
    lam = min_norm_two_tasks(g)
    assert lam.min() >= 0 and math.isclose(lam.sum().item(), 1.0, rel_tol=1e-12)
    grid = torch.linspace(0, 1, 4001, dtype=F64)
    values = ((grid[:, None] * g[0] + (1 - grid[:, None]) * g[1]) ** 2).sum(1)
    assert float(((lam @ g) ** 2).sum()) <= values.min().item() + 1e-12
    d = lam @ g
    assert (g @ d >= d @ d - 1e-10).all()


def test_min_norm_two_tasks_edge_cases():
    same = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=F64)
    torch.testing.assert_close(min_norm_two_tasks(same), torch.tensor([0.5, 0.5], dtype=F64))
    torch.testing.assert_close(min_norm_weights(same), torch.tensor([0.5, 0.5], dtype=F64))
    dominated = torch.tensor([[1.0, 0.0], [3.0, 0.0]], dtype=F64)  # the smaller one is the min-norm point
    torch.testing.assert_close(min_norm_two_tasks(dominated), torch.tensor([1.0, 0.0], dtype=F64))
    assert torch.equal(min_norm_weights(randn(1, 3, seed=0)), torch.ones(1, dtype=F64))


@pytest.mark.parametrize(("k", "p"), [(3, 2), (3, 5), (4, 3), (5, 8)])
@pytest.mark.parametrize("seed", range(4))
def test_min_norm_weights_matches_exact_enumeration(k, p, seed):
    g = randn(k, p, seed=seed)
    lam = min_norm_weights(g)
    assert lam.min() >= 0 and math.isclose(lam.sum().item(), 1.0, rel_tol=1e-12)
    value = float(((lam @ g) ** 2).sum())
    exact = min_norm_exact(g)
    assert value <= exact + 1e-10 * max(1.0, exact), (value, exact)
    d = lam @ g
    assert (g @ d >= d @ d - 1e-8).all()


def test_min_norm_weights_all_zero_gradients_is_uniform():
    torch.testing.assert_close(min_norm_weights(torch.zeros(3, 4, dtype=F64)), torch.full((3,), 1 / 3, dtype=F64))


# ----------------------------------------------------------------------------- failure paths


def test_bad_inputs_raise_with_the_argument_named():
    good = torch.tensor([1.0, 2.0])
    with pytest.raises(TypeError, match="losses"):
        weighted_sum_loss(torch.tensor([1, 2]), [1.0, 1.0])
    with pytest.raises(ValueError, match="losses must not be empty"):
        weighted_sum_loss([], [])
    with pytest.raises(ValueError, match="losses must be finite"):
        weighted_sum_loss(torch.tensor([1.0, math.nan]), [1.0, 1.0])
    with pytest.raises(TypeError, match=r"losses\[1\]"):
        weighted_sum_loss([torch.tensor(1.0), torch.ones(2)], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"weights must have shape \[K\] = \[2\]"):
        weighted_sum_loss(good, [1.0])
    with pytest.raises(ValueError, match="weights must be >= 0"):
        weighted_sum_loss(good, [1.0, -0.1])
    with pytest.raises(ValueError, match="weights must be finite"):
        combine_gradients(torch.ones(2, 3), torch.tensor([1.0, math.inf]))
    with pytest.raises(TypeError, match="weights"):
        combine_gradients(torch.ones(2, 3), "ab")
    with pytest.raises(ValueError, match=r"grads must have shape \[K, P\]"):
        pcgrad(torch.ones(3))
    with pytest.raises(ValueError, match="grads must be finite"):
        pcgrad(torch.tensor([[1.0, math.nan]]))
    with pytest.raises(TypeError, match="generator"):
        pcgrad_project(torch.ones(2, 2), generator=0)
    with pytest.raises(ValueError, match=r"grads must have shape \[2, P\]"):
        min_norm_two_tasks(torch.ones(3, 2))
    with pytest.raises(ValueError, match="max_iter"):
        min_norm_weights(torch.ones(3, 2), max_iter=0)
    with pytest.raises(ValueError, match=r"rewards must have shape \[N, K\]"):
        per_objective_advantages(torch.ones(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="normalize_rewards"):
        per_objective_advantages(torch.ones(4, 2), torch.zeros(4, dtype=torch.long), normalize_rewards=1)
    with pytest.raises(TypeError, match="weight_before_normalization"):
        scalarized_advantages(torch.ones(4, 2), torch.zeros(4, dtype=torch.long), [1, 1], weight_before_normalization=0)


def test_uncertainty_and_gradnorm_bad_inputs():
    with pytest.raises(ValueError, match="losses must be > 0"):
        uncertainty_optimal_log_variances(torch.tensor([0.5, -0.1]))
    with pytest.raises(ValueError, match="regularizer_scale"):
        uncertainty_weighted_loss(torch.ones(2), torch.zeros(2), regularizer_scale=0.0)
    with pytest.raises(ValueError, match=r"log_variances must have shape \[K\] = \[2\]"):
        uncertainty_weighted_loss(torch.ones(2), torch.zeros(3))
    with pytest.raises(ValueError, match="log_variances must be finite"):
        uncertainty_weighted_loss(torch.ones(2), torch.tensor([0.0, math.inf]))
    ones = torch.ones(2)
    with pytest.raises(ValueError, match="weights must be > 0"):
        gradnorm_loss(torch.tensor([1.0, 0.0]), ones, ones, ones)
    with pytest.raises(ValueError, match="initial_losses must be > 0"):
        gradnorm_targets(ones, ones, ones, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="grad_norms must be >= 0"):
        gradnorm_targets(ones, torch.tensor([1.0, -1.0]), ones, ones)
    with pytest.raises(ValueError, match=r"losses must have shape \[K\] = \[2\]"):
        gradnorm_targets(ones, ones, torch.ones(3), ones)
    with pytest.raises(ValueError, match="alpha"):
        gradnorm_update(ones, ones, ones, ones, alpha=-1.0)
    with pytest.raises(ValueError, match="lr"):
        gradnorm_update(ones, ones, ones, ones, lr=0.0)
    with pytest.raises(ValueError, match="grad_norms must be > 0"):
        gradnorm_balanced_weights(torch.tensor([1.0, 0.0]), ones, ones)
