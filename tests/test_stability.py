"""Training-stability tools: clipping against PyTorch, the guarded step, running statistics, entropy."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nemo_rl_theory.training.stability import (
    CLIP_EPS,
    EntropyCollapseMonitor,
    RunningMoments,
    SpikeDetector,
    all_finite,
    clip_coefficient,
    clip_grad_norm,
    clip_grad_norm_per_tensor,
    clip_grad_value,
    detect_spikes,
    entropy_change_rate,
    global_grad_norm,
    grad_cosine,
    guarded_step,
    masked_token_entropy,
    running_moments,
)

F64 = torch.float64
shapes = st.lists(st.lists(st.integers(1, 4), min_size=0, max_size=3), min_size=1, max_size=4)


def random_grads(shape_list, seed, scale=1.0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(tuple(s), generator=gen, dtype=dtype) for s in shape_list]


def as_params(grads):
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros_like(g))
        p.grad = g.clone()
        params.append(p)
    return params


def flat64(grads):
    return torch.cat([g.reshape(-1).double() for g in grads])


# ----------------------------------------------------------------------------- norms and clipping


@given(shape_list=shapes, seed=st.integers(0, 2**16), p=st.sampled_from([1.0, 2.0, 3.0, math.inf]))
def test_global_norm_matches_pytorch_and_the_flat_formula(shape_list, seed, p):
    grads = random_grads(shape_list, seed)
    ours = global_grad_norm(grads, p)
    torch.testing.assert_close(ours, torch.nn.utils.get_total_norm(grads, p), rtol=1e-6, atol=0.0)
    flat = flat64(grads)
    direct = flat.abs().max() if p == math.inf else (flat.abs() ** p).sum() ** (1 / p)
    torch.testing.assert_close(ours.double(), direct, rtol=1e-5, atol=1e-7)


@given(
    shape_list=shapes,
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([1e-3, 0.3, 1.0, 30.0]),
    max_norm=st.sampled_from([0.1, 1.0, 5.0, math.inf]),
    p=st.sampled_from([2.0, math.inf]),
)
def test_clip_grad_norm_matches_pytorch_in_place(shape_list, seed, scale, max_norm, p):
    grads = random_grads(shape_list, seed, scale)
    params = as_params(grads)
    torch_norm = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=p)
    clipped, norm = clip_grad_norm(grads, max_norm, norm_type=p)
    torch.testing.assert_close(norm, torch_norm, rtol=1e-6, atol=0.0)
    for ours, param in zip(clipped, params, strict=True):
        torch.testing.assert_close(ours, param.grad, rtol=1e-6, atol=0.0)
    # Independent float64 route: one factor min(1, c / (||g|| + 1e-6)) for every tensor.
    flat = flat64(grads)
    total = flat.abs().max() if p == math.inf else flat.norm()
    factor = min(1.0, max_norm / (total.item() + 1e-6))
    torch.testing.assert_close(flat64(clipped), flat * factor, rtol=1e-5, atol=1e-8)
    if max_norm < math.inf:
        assert global_grad_norm(clipped, p) <= max_norm * (1 + 1e-5)


def test_inputs_are_not_modified_and_none_passes_through():
    grads = [torch.full((3,), 10.0), None, torch.full((2,), -10.0)]
    before = [None if g is None else g.clone() for g in grads]
    clipped, norm = clip_grad_norm(grads, 1.0)
    assert clipped[1] is None
    assert torch.equal(grads[0], before[0]) and torch.equal(grads[2], before[2])
    assert norm.item() == pytest.approx(math.sqrt(500.0))


def test_epsilon_makes_the_factor_below_one_at_the_threshold():
    c = 2.0
    grads = [torch.tensor([c], dtype=F64)]  # ||g|| = c exactly
    coef = clip_coefficient(torch.tensor(c, dtype=F64), c)
    assert coef.item() == c / (c + CLIP_EPS) < 1.0
    params = as_params(grads)
    torch.nn.utils.clip_grad_norm_(params, c)
    clipped, _ = clip_grad_norm(grads, c)
    assert torch.equal(clipped[0], params[0].grad)
    assert clip_coefficient(c - 1e-3, c).item() == 1.0
    assert clip_coefficient(0.0, c).item() == 1.0
    assert clip_coefficient(5.0, c, eps=0.0).item() == c / 5.0


def test_nonfinite_gradients_raise_or_spread_like_pytorch():
    grads = [torch.tensor([1.0, float("nan")]), torch.tensor([3.0, 4.0])]
    assert math.isnan(global_grad_norm(grads).item())
    with pytest.raises(ValueError, match="NaN or inf"):
        clip_grad_norm(grads, 1.0)
    clipped, _ = clip_grad_norm(grads, 1.0, error_if_nonfinite=False)
    params = as_params(grads)
    torch.nn.utils.clip_grad_norm_(params, 1.0, error_if_nonfinite=False)
    # One NaN entry becomes a NaN factor, and every gradient, even the finite tensor, turns NaN.
    assert all(torch.isnan(g).all() for g in clipped)
    assert all(torch.isnan(p.grad).all() for p in params)
    with pytest.raises(RuntimeError, match="non-finite"):
        torch.nn.utils.clip_grad_norm_(as_params(grads), 1.0, error_if_nonfinite=True)


def test_float32_norm_of_finite_gradients_can_overflow():
    grads = [torch.tensor([3e19, 4e19])]  # finite, but the squares exceed float32
    assert global_grad_norm(grads).item() == math.inf
    assert global_grad_norm(grads, dtype=F64).item() == pytest.approx(5e19)


@given(shape_list=shapes, seed=st.integers(0, 2**16))
def test_per_tensor_and_value_clipping_match_their_definitions(shape_list, seed):
    grads = random_grads(shape_list, seed, 3.0)
    per_tensor = clip_grad_norm_per_tensor(grads, 0.5)
    for g, out in zip(grads, per_tensor, strict=True):
        factor = min(1.0, 0.5 / (g.double().norm().item() + 1e-6))
        torch.testing.assert_close(out.double(), g.double() * factor, rtol=1e-6, atol=1e-9)
    params = as_params(grads)
    torch.nn.utils.clip_grad_value_(params, 0.7)
    for out, p in zip(clip_grad_value(grads, 0.7), params, strict=True):
        assert torch.equal(out, p.grad)


def test_global_clipping_keeps_the_direction_per_tensor_clipping_does_not():
    grads = [torch.tensor([10.0, 0.0]), torch.tensor([0.0, 0.1])]
    clipped, _ = clip_grad_norm(grads, 1.0)
    assert grad_cosine(grads, clipped).item() == pytest.approx(1.0, abs=1e-12)
    per_tensor = clip_grad_norm_per_tensor(grads, 1.0)
    # [1, 0] and [0, 0.1] against [10, 0] and [0, 0.1]: cos = (10 + 0.01) / (sqrt(100.01) sqrt(1.01))
    expected = 10.01 / (math.sqrt(100.01) * math.sqrt(1.01))
    assert grad_cosine(grads, per_tensor).item() == pytest.approx(expected, rel=1e-6)


@given(shape_list=shapes, seed=st.integers(0, 2**16))
def test_cosine_matches_torch_on_the_flat_vectors(shape_list, seed):
    a = random_grads(shape_list, seed)
    b = random_grads(shape_list, seed + 1)
    expected = torch.nn.functional.cosine_similarity(flat64(a), flat64(b), dim=0, eps=0.0)
    torch.testing.assert_close(grad_cosine(a, b), expected, rtol=1e-10, atol=1e-12)


def test_bad_clipping_inputs_raise():
    g = [torch.ones(2)]
    with pytest.raises(ValueError, match="grads is empty"):
        global_grad_norm([])
    with pytest.raises(ValueError, match="grads is empty"):
        global_grad_norm([None, None])
    params = [torch.nn.Parameter(torch.ones(2))]
    params[0].grad = torch.ones(2)
    consumed = (p.grad for p in params)
    list(consumed)
    with pytest.raises(ValueError, match="consumed only once"):
        global_grad_norm(consumed)
    with pytest.raises(TypeError, match=r"grads\[0\] must be a floating-point tensor"):
        global_grad_norm([torch.ones(2, dtype=torch.long)])
    with pytest.raises(TypeError, match="grads must be a sequence"):
        global_grad_norm(3.0)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="norm_type must be > 0"):
            global_grad_norm(g, bad)
    with pytest.raises(TypeError, match="norm_type must be a real number"):
        global_grad_norm(g, True)
    with pytest.raises(TypeError, match="dtype must be a floating"):
        global_grad_norm(g, dtype=torch.int64)
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        clip_grad_norm(g, 0.0)
    with pytest.raises(TypeError, match="max_norm must be a real number"):
        clip_grad_norm(g, "1")
    with pytest.raises(ValueError, match="eps must be"):
        clip_coefficient(1.0, 1.0, eps=-1e-6)
    with pytest.raises(ValueError, match="total_norm must be >= 0"):
        clip_coefficient(-1.0, 1.0)
    with pytest.raises(ValueError, match="total_norm must be a scalar"):
        clip_coefficient(torch.ones(2), 1.0)
    with pytest.raises(TypeError, match="error_if_nonfinite must be a bool"):
        clip_grad_norm(g, 1.0, error_if_nonfinite=1)
    with pytest.raises(ValueError, match="clip_value must be"):
        clip_grad_value(g, 0.0)
    with pytest.raises(ValueError, match="same shapes"):
        grad_cosine([torch.ones(2)], [torch.ones(3)])
    with pytest.raises(ValueError, match="non-zero"):
        grad_cosine([torch.zeros(2)], [torch.ones(2)])
    with pytest.raises(ValueError, match="finite"):
        grad_cosine([torch.tensor([float("inf"), 1.0])], [torch.ones(2)])


# ----------------------------------------------------------------------------- the guarded step


def small_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def loss_of(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, generator=gen)
    return (model(x) ** 2).mean()


def snapshot(model, optimizer):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())


def assert_same_state(a, b):
    (params_a, opt_a), (params_b, opt_b) = a, b
    assert params_a.keys() == params_b.keys()
    assert all(torch.equal(params_a[k], params_b[k]) for k in params_a)
    assert opt_a["param_groups"] == opt_b["param_groups"]
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for k in opt_a["state"]:
        for name, value in opt_a["state"][k].items():
            assert torch.equal(value, opt_b["state"][k][name]), (k, name)


def warmed_adam(model):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for seed in range(3):  # non-trivial moments and step count
        guarded_step(loss_of(model, seed), optimizer, list(model.parameters()))
    return optimizer


@pytest.mark.parametrize("fault", ["loss", "gradient"])
def test_a_nonfinite_step_leaves_parameters_and_adam_state_untouched(fault):
    model = small_model()
    optimizer = warmed_adam(model)
    before = snapshot(model, optimizer)
    loss = loss_of(model)
    if fault == "loss":
        loss = loss * float("nan")
    else:  # finite loss, one NaN gradient entry
        model[0].weight.register_hook(lambda g: g.index_fill(1, torch.tensor([0]), float("nan")))
    result = guarded_step(loss, optimizer, list(model.parameters()), max_grad_norm=1.0)
    assert not result.stepped
    assert result.reason == ("non-finite loss" if fault == "loss" else "non-finite gradient")
    assert_same_state(before, snapshot(model, optimizer))
    assert all(p.grad is None for p in model.parameters())


def test_the_skip_agrees_with_gradscaler():
    # GradScaler (scale 1) skips optimizer.step() when a gradient is inf/NaN: an independent skip rule.
    model, twin = small_model(), small_model()
    opt, twin_opt = warmed_adam(model), warmed_adam(twin)
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    for poison in (False, True):
        loss = loss_of(model, 7)
        twin_loss = loss_of(twin, 7)
        if poison:
            loss = loss * float("inf")
            twin_loss = twin_loss * float("inf")
        guarded_step(loss, opt, list(model.parameters()))
        twin_opt.zero_grad()
        scaler.scale(twin_loss).backward()
        scaler.step(twin_opt)
        scaler.update()
        assert_same_state(snapshot(model, opt), snapshot(twin, twin_opt))


def test_a_finite_step_is_clip_then_step():
    model, twin = small_model(), small_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=1e-2)
    result = guarded_step(loss_of(model) * 100, opt, list(model.parameters()), max_grad_norm=0.5)
    (loss_of(twin) * 100).backward()
    norm = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.5)
    twin_opt.step()
    assert result.stepped and result.reason == "ok"
    assert result.grad_norm == pytest.approx(norm.item(), rel=1e-6)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_should_skip_hook_rejects_without_touching_state():
    model = small_model()
    optimizer = warmed_adam(model)
    before = snapshot(model, optimizer)
    seen = []
    result = guarded_step(
        loss_of(model), optimizer, list(model.parameters()), should_skip=lambda n: seen.append(n) or True
    )
    assert result.reason == "rejected" and not result.stepped and seen == [result.grad_norm]
    assert_same_state(before, snapshot(model, optimizer))


def test_guarded_step_bad_inputs():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="loss must be a scalar"):
        guarded_step(torch.ones(2), optimizer, list(model.parameters()))
    with pytest.raises(TypeError, match="optimizer must be"):
        guarded_step(loss_of(model), "sgd", list(model.parameters()))
    with pytest.raises(ValueError, match="parameters is empty"):
        guarded_step(loss_of(model), optimizer, [])
    with pytest.raises(ValueError, match="max_grad_norm must be"):
        guarded_step(loss_of(model), optimizer, list(model.parameters()), max_grad_norm=0.0)
    other = torch.nn.Parameter(torch.ones(1))
    with pytest.raises(ValueError, match="no parameter received a gradient"):
        guarded_step(loss_of(model), optimizer, [other])


def test_all_finite():
    assert all_finite([torch.ones(2), None, torch.zeros(3)])
    assert not all_finite([torch.ones(2), torch.tensor([float("inf")])])
    assert not all_finite(torch.tensor([float("nan")]))


# ----------------------------------------------------------------------------- running statistics, spikes


@given(
    values=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=40),
    beta=st.sampled_from([1.0, 0.99, 0.9, 0.5, 0.1]),
)
def test_running_moments_equal_the_weighted_moments(values, beta):
    x = np.array(values)
    means, variances = running_moments(torch.tensor(x, dtype=F64), beta)
    for t in range(1, len(x) + 1):
        w = beta ** np.arange(t - 1, -1, -1.0)
        mu = np.average(x[:t], weights=w)
        var = np.average((x[:t] - mu) ** 2, weights=w)
        scale = 1.0 + np.abs(x[:t]).max()
        assert abs(means[t - 1].item() - mu) <= 1e-9 * scale
        assert abs(variances[t - 1].item() - var) <= 1e-9 * scale**2


def test_welford_sample_variance_and_long_run_ema_limit():
    rng = np.random.default_rng(0)
    x = rng.normal(1e6, 1.0, size=1000)  # large offset: the naive E[x^2] - E[x]^2 loses digits here
    stats = RunningMoments(1.0)
    for v in x:
        stats.update(v)
    assert stats.mean == pytest.approx(np.mean(x), rel=1e-14)
    assert stats.sample_variance == pytest.approx(np.var(x, ddof=1), rel=1e-9)
    ema = RunningMoments(0.9)
    for v in x[:500]:
        ema.update(v)
    assert 1 / ema.weight == pytest.approx(0.1, rel=1e-12)  # W_t -> 1 / (1 - beta)
    with pytest.raises(ValueError, match="needs beta = 1"):
        _ = ema.sample_variance
    with pytest.raises(ValueError, match="x must be finite"):
        stats.update(float("nan"))


def test_spike_detector_flags_a_planted_spike_and_does_not_absorb_it():
    rng = np.random.default_rng(3)
    stream = rng.normal(0.0, 1.0, size=300)
    stream[200] += 12.0
    stream[210] = np.nan
    flags, z = detect_spikes(torch.tensor(stream), threshold=6.0, beta=0.95, warmup=10)
    assert flags.nonzero().flatten().tolist() == [200, 210]
    assert torch.isnan(z[:10]).all() and z[210].item() == math.inf
    detector = SpikeDetector(threshold=6.0, beta=0.95, warmup=10)
    for v in stream[:200]:
        detector(v)
    before = (detector.moments.mean, detector.moments.m2, detector.moments.count)
    assert detector(stream[200] + 100.0)
    assert (detector.moments.mean, detector.moments.m2, detector.moments.count) == before


def test_spike_detector_bad_inputs():
    with pytest.raises(ValueError, match="warmup must be an int >= 2"):
        SpikeDetector(warmup=1)
    with pytest.raises(ValueError, match="threshold must be"):
        SpikeDetector(threshold=0.0)
    with pytest.raises(ValueError, match="beta must be"):
        SpikeDetector(beta=0.0)
    with pytest.raises(ValueError, match="beta must be"):
        RunningMoments(1.5)
    with pytest.raises(ValueError, match=r"stream must have shape \[T\]"):
        detect_spikes(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="stream must be finite"):
        running_moments(torch.tensor([1.0, float("inf")]))
    with pytest.raises(TypeError, match="stream must be a floating-point tensor"):
        running_moments(torch.arange(3))


# ----------------------------------------------------------------------------- entropy


@given(seed=st.integers(0, 2**16), b=st.integers(1, 3), t=st.integers(1, 4), v=st.integers(2, 7))
def test_masked_token_entropy_matches_categorical(seed, b, t, v):
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(b, t, v, generator=gen, dtype=F64)
    mask = torch.rand(b, t, generator=gen) < 0.6
    per_token = torch.distributions.Categorical(logits=logits).entropy()
    expected = (per_token * mask).sum() / (mask.double().sum() + 1e-8)
    torch.testing.assert_close(masked_token_entropy(logits, mask), expected, rtol=1e-12, atol=1e-12)


@given(seed=st.integers(0, 2**16), v=st.integers(2, 9), rows=st.integers(1, 3))
def test_entropy_change_rate_is_the_derivative(seed, v, rows):
    gen = torch.Generator().manual_seed(seed)
    z = 2 * torch.randn(rows, v, generator=gen, dtype=F64)
    u = torch.randn(rows, v, generator=gen, dtype=F64)
    eta = torch.zeros(rows, 1, dtype=F64, requires_grad=True)
    entropy = torch.distributions.Categorical(logits=z + eta * u).entropy()
    (autograd_rate,) = torch.autograd.grad(entropy.sum(), eta)
    torch.testing.assert_close(entropy_change_rate(z, u), autograd_rate[:, 0], rtol=1e-10, atol=1e-12)


def test_entropy_change_rate_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        entropy_change_rate(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="finite"):
        entropy_change_rate(torch.tensor([0.0, float("nan")]), torch.zeros(2))
    with pytest.raises(ValueError, match=r"logits must have shape \[B, T, V\]"):
        masked_token_entropy(torch.zeros(2, 3), torch.ones(2))
    with pytest.raises(ValueError, match="mask must have shape"):
        masked_token_entropy(torch.zeros(2, 3, 4), torch.ones(3, 2))


def test_entropy_collapse_monitor():
    monitor = EntropyCollapseMonitor(ratio=0.5, warmup=3)
    flags = [monitor.update(h) for h in [0.6, 0.5, float("nan"), 0.4, 0.3, 0.2, 0.26]]
    assert monitor.reference == pytest.approx(0.5)  # the NaN is flagged and left out of the reference
    assert flags == [False, False, True, False, False, True, False]
    with pytest.raises(ValueError, match="entropy must be >= 0"):
        monitor.update(-0.1)
    with pytest.raises(ValueError, match="ratio must be"):
        EntropyCollapseMonitor(ratio=1.0)
    with pytest.raises(ValueError, match="warmup must be a positive int"):
        EntropyCollapseMonitor(warmup=0)
