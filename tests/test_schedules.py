"""Learning-rate schedules against torch's schedulers and direct formulas; Adam's first steps against torch.optim."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_rl_theory.training.schedules import (
    ConstantWithWarmup,
    CosineWarmRestarts,
    InverseSqrtSchedule,
    WarmupCosineDecay,
    WarmupLinearDecay,
    adam_first_update,
    adam_updates,
    build_nemo_rl_scheduler,
    ema_variance_ratio,
)

F64 = torch.float64
BASE_LR = 0.3


def torch_lrs(scheduler_factory, steps: int, base_lr: float = BASE_LR, n_groups: int = 1) -> list[list[float]]:
    """Learning rate of every group at each of ``steps`` training steps, stepped like NeMo RL (after the update)."""
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in range(n_groups)]
    optimizer = torch.optim.SGD([{"params": [p]} for p in params], lr=base_lr)
    scheduler = scheduler_factory(optimizer)
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return out


def multipliers_via_torch(schedule, steps: int) -> list[float]:
    return [row[0] / BASE_LR for row in torch_lrs(schedule.torch_scheduler, steps)]


warmups = st.integers(0, 12)
start_factors = st.floats(0.01, 1.0)
floors = st.floats(0.0, 0.9)


# ----------------------------------------------------------------------------- closed forms vs torch


@settings(max_examples=25, deadline=None)
@given(warmups, st.integers(1, 40), start_factors, floors)
def test_warmup_cosine_matches_torch_composition(w, decay, s, r):
    schedule = WarmupCosineDecay(w, w + decay, warmup_start_factor=s, min_lr_ratio=r)
    steps = w + 2 * decay + 5  # runs past total_steps: the ConstantLR entry must hold the floor
    got = multipliers_via_torch(schedule, steps)
    for t in range(steps):
        assert abs(got[t] - schedule(t)) <= 1e-12, (t, got[t], schedule(t))


@settings(max_examples=25, deadline=None)
@given(warmups, st.integers(1, 40), start_factors, floors)
def test_warmup_linear_matches_torch_composition(w, decay, s, r):
    schedule = WarmupLinearDecay(w, w + decay, warmup_start_factor=s, min_lr_ratio=r)
    steps = w + decay + 10
    got = multipliers_via_torch(schedule, steps)
    for t in range(steps):
        assert abs(got[t] - schedule(t)) <= 1e-12, (t, got[t], schedule(t))


@settings(max_examples=20, deadline=None)
@given(warmups, start_factors)
def test_constant_with_warmup_matches_torch_composition(w, s):
    schedule = ConstantWithWarmup(w, warmup_start_factor=s)
    got = multipliers_via_torch(schedule, w + 15)
    for t, value in enumerate(got):
        assert abs(value - schedule(t)) <= 1e-12


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 9), st.integers(1, 3), floors, st.integers(0, 6))
def test_warm_restarts_match_torch(t0, mult, r, w):
    schedule = CosineWarmRestarts(t0, mult, min_lr_ratio=r, warmup_steps=w)
    got = multipliers_via_torch(schedule, 120)
    for t, value in enumerate(got):
        assert abs(value - schedule(t)) <= 1e-12, (t, value, schedule(t))


def test_inverse_sqrt_matches_lambdalr_and_vaswani_formula():
    w, d_model = 40, 512
    schedule = InverseSqrtSchedule(w)
    got = multipliers_via_torch(schedule, 300)
    peak = d_model**-0.5 * w**-0.5
    for t in range(300):
        n = t + 1  # Vaswani et al. count steps from 1
        vaswani = d_model**-0.5 * min(n**-0.5, n * w**-1.5)
        assert abs(got[t] - schedule(t)) <= 1e-15
        assert abs(schedule(t) - vaswani / peak) <= 1e-12
    assert schedule(w - 1) == 1.0 and max(schedule(t) for t in range(300)) == 1.0


# ----------------------------------------------------------------------------- closed forms vs definitions


def direct_piecewise(t, w, big_t, s, r, shape):
    """The page's formulas written out once more, in a different form, for comparison."""
    if t < w:
        return (s * (w - t) + t) / w
    x = min(1.0, (t - w) / (big_t - w))
    decay = 1.0 - x if shape == "linear" else math.cos(math.pi * x / 2) ** 2  # (1 + cos pi x) / 2
    return r + (1.0 - r) * decay


@settings(max_examples=30, deadline=None)
@given(warmups, st.integers(1, 30), start_factors, floors, st.sampled_from(["linear", "cosine"]))
def test_decays_match_direct_formula_and_shape(w, decay, s, r, shape):
    cls = WarmupLinearDecay if shape == "linear" else WarmupCosineDecay
    schedule = cls(w, w + decay, warmup_start_factor=s, min_lr_ratio=r)
    curve = schedule.curve(w + decay + 4)
    for t, value in enumerate(curve.tolist()):
        assert abs(value - direct_piecewise(t, w, w + decay, s, r, shape)) <= 1e-12
    assert curve.dtype == F64
    if w:
        assert curve[0].item() == pytest.approx(s, abs=1e-15)
        assert bool((curve[1 : w + 1] - curve[:w] >= -1e-15).all())  # non-decreasing during warmup
    assert curve[w].item() == 1.0  # peak exactly at t = W
    assert bool((curve[w + 1 :] - curve[w:-1] <= 1e-15).all())  # non-increasing afterwards
    assert curve[w + decay].item() == pytest.approx(r, abs=1e-12)
    assert curve[-1].item() == pytest.approx(r, abs=1e-12)


def test_warm_restart_cycles_by_enumeration():
    schedule = CosineWarmRestarts(3, 2, min_lr_ratio=0.1, warmup_steps=2)
    starts, begin, length = [], 2, 3
    while begin < 60:
        starts.append(begin)
        begin, length = begin + length, length * 2
    assert starts == [2, 5, 11, 23, 47]
    restarts = [t for t in range(2, 60) if schedule(t) == 1.0]
    assert restarts == starts
    assert schedule.cycle_position(10) == (5, 6)
    assert schedule(10) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 6)), abs=1e-15)


def test_nemo_rl_default_grpo_config_is_constant_with_warmup():
    # policy.scheduler of NeMo RL's examples/configs/grpo_math_1B.yaml
    config = [
        {
            "name": "torch.optim.lr_scheduler.LinearLR",
            "kwargs": {"start_factor": 0.1, "end_factor": 1.0, "total_iters": 50},
        },
        {"name": "torch.optim.lr_scheduler.ConstantLR", "kwargs": {"factor": 1.0, "total_iters": 10000000000}},
        {"milestones": [50]},
    ]
    got = torch_lrs(lambda opt: build_nemo_rl_scheduler(opt, config), 80)
    schedule = ConstantWithWarmup(50, warmup_start_factor=0.1)
    assert schedule.nemo_rl_scheduler(BASE_LR) == config
    for t, row in enumerate(got):
        assert abs(row[0] / BASE_LR - schedule(t)) <= 1e-12


def test_missing_scheduler_is_constant_and_single_entry_is_not_chained():
    assert [row[0] for row in torch_lrs(lambda o: build_nemo_rl_scheduler(o, None), 5)] == [BASE_LR] * 5
    single = {"name": "torch.optim.lr_scheduler.LinearLR", "kwargs": {"start_factor": 0.5, "total_iters": 4}}
    scheduler_type = []
    got = torch_lrs(lambda o: scheduler_type.append(build_nemo_rl_scheduler(o, single)) or scheduler_type[0], 6)
    assert type(scheduler_type[0]).__name__ == "LinearLR"
    expected = [0.5, 0.625, 0.75, 0.875, 1.0, 1.0]
    assert all(abs(row[0] / BASE_LR - e) <= 1e-12 for row, e in zip(got, expected, strict=True))


def test_scheduler_multiplies_every_param_group():
    schedule = WarmupLinearDecay(3, 10)
    rows = torch_lrs(schedule.torch_scheduler, 12, n_groups=3)
    # One base lr for all groups here; the multiplier applies to each.
    for t, row in enumerate(rows):
        assert all(abs(x / BASE_LR - schedule(t)) <= 1e-12 for x in row)


def test_toy_trainer_uses_the_multiplier_of_the_step():
    from nemo_rl_theory.toy import Task, make_policy, train_sft

    schedule = WarmupCosineDecay(2, 5, min_lr_ratio=0.2)
    history = train_sft(make_policy(0), Task("copy", 2), steps=7, batch_size=4, lr=0.01, lr_schedule=schedule)
    assert history["lr"] == [0.01 * schedule(t) for t in range(7)]


# ----------------------------------------------------------------------------- Adam


@settings(max_examples=30, deadline=None)
@given(st.integers(-6, 4), st.integers(0, 2**31 - 1), st.floats(0.0, 0.1))
def test_adam_first_step_is_lr_per_coordinate_whatever_the_scale(exponent, seed, weight_decay):
    generator = torch.Generator().manual_seed(seed)
    theta0 = torch.randn(50, dtype=F64, generator=generator)
    grad = torch.randn(50, dtype=F64, generator=generator) * 10.0**exponent
    lr, eps = 0.05, 1e-8
    param = torch.nn.Parameter(theta0.clone())
    optimizer = torch.optim.AdamW([param], lr=lr, eps=eps, weight_decay=weight_decay, betas=(0.8, 0.95))
    param.grad = grad.clone()
    optimizer.step()
    expected = adam_first_update(grad, lr=lr, eps=eps, param=theta0, weight_decay=weight_decay)
    torch.testing.assert_close(param.detach() - theta0, expected, rtol=1e-12, atol=1e-15)
    plain = adam_first_update(grad, lr=lr, eps=eps)
    # |update| = lr |g| / (|g| + eps): within lr * eps / |g| of lr.
    assert bool(((plain.abs() - lr).abs() <= lr * eps / grad.abs() + 1e-15).all())


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 25), st.integers(0, 2**31 - 1), st.sampled_from([(0.9, 0.999), (0.5, 0.9), (0.0, 0.99)]))
def test_adam_updates_match_torch_adam(steps, seed, betas):
    generator = torch.Generator().manual_seed(seed)
    grads = torch.randn(steps, 7, dtype=F64, generator=generator) * torch.logspace(-3, 2, 7, dtype=F64)
    schedule = WarmupCosineDecay(min(3, steps - 1), steps + 1) if steps > 1 else ConstantWithWarmup(0)
    lr = 0.02
    param = torch.nn.Parameter(torch.zeros(7, dtype=F64))
    optimizer = torch.optim.Adam([param], lr=lr, betas=betas, eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    changes = []
    for i in range(steps):
        before = param.detach().clone()
        param.grad = grads[i].clone()
        optimizer.step()
        scheduler.step()
        changes.append(param.detach() - before)
    lrs = torch.tensor([lr * schedule(t) for t in range(steps)], dtype=F64)
    ours = adam_updates(grads, lrs, betas=betas, eps=1e-8)
    torch.testing.assert_close(ours, torch.stack(changes), rtol=1e-10, atol=1e-16)
    torch.testing.assert_close(ours[0], adam_first_update(grads[0], lr=lr * schedule(0)), rtol=1e-12, atol=1e-16)


@given(st.floats(0.0, 0.999), st.integers(1, 400))
def test_ema_variance_ratio_equals_sum_of_squared_weights(beta, t):
    weights = [(1 - beta) * beta ** (t - i) / (1 - beta**t) for i in range(1, t + 1)]
    assert math.fsum(weights) == pytest.approx(1.0, abs=1e-12)  # bias correction: weights sum to 1
    assert ema_variance_ratio(beta, t) == pytest.approx(math.fsum(w * w for w in weights), rel=1e-9, abs=1e-15)


def test_ema_variance_ratio_limits():
    assert ema_variance_ratio(0.9, 1) == pytest.approx(1.0, rel=1e-15)
    assert ema_variance_ratio(0.9, 2000) == pytest.approx(0.1 / 1.9, rel=1e-12)


def test_ema_variance_ratio_by_monte_carlo():
    generator = torch.Generator().manual_seed(0)
    beta, t, n = 0.8, 6, 200_000
    x = torch.randn(n, t, dtype=F64, generator=generator)
    weights = torch.tensor([(1 - beta) * beta ** (t - i) for i in range(1, t + 1)], dtype=F64) / (1 - beta**t)
    estimate = (x @ weights).var().item()
    # The sample variance of n Gaussians has relative std sqrt(2 / n) ~ 0.003: 5 sigma.
    assert abs(estimate / ema_variance_ratio(beta, t) - 1) <= 5 * math.sqrt(2 / n)


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("factory", "error", "match"),
    [
        (lambda: WarmupCosineDecay(10, 10), ValueError, "total_steps must be >= 11"),
        (lambda: WarmupCosineDecay(-1, 10), ValueError, "warmup_steps must be >= 0"),
        (lambda: WarmupCosineDecay(2.0, 10), TypeError, "warmup_steps must be an int"),
        (lambda: WarmupLinearDecay(2, 10, min_lr_ratio=1.5), ValueError, r"min_lr_ratio must be in \[0.0, 1.0\]"),
        (lambda: WarmupLinearDecay(2, 10, min_lr_ratio=math.nan), ValueError, "min_lr_ratio must be finite"),
        (lambda: ConstantWithWarmup(5, warmup_start_factor=0.0), ValueError, r"warmup_start_factor must be in \(0.0"),
        (lambda: ConstantWithWarmup(True), TypeError, "warmup_steps must be an int"),
        (lambda: InverseSqrtSchedule(0), ValueError, "warmup_steps must be >= 1"),
        (lambda: CosineWarmRestarts(0), ValueError, "first_cycle_steps must be >= 1"),
        (lambda: CosineWarmRestarts(4, cycle_mult=0), ValueError, "cycle_mult must be >= 1"),
    ],
)
def test_bad_schedule_configs(factory, error, match):
    with pytest.raises(error, match=match):
        factory()


def test_bad_steps():
    schedule = WarmupCosineDecay(2, 10)
    with pytest.raises(ValueError, match="step must be >= 0"):
        schedule(-1)
    with pytest.raises(TypeError, match="step must be an int"):
        schedule(1.5)
    with pytest.raises(TypeError, match="step must be an int"):
        schedule(True)
    with pytest.raises(ValueError, match="inside the warmup"):
        CosineWarmRestarts(4, warmup_steps=3).cycle_position(1)
    with pytest.raises(ValueError, match="num_steps must be >= 0"):
        schedule.curve(-3)


def test_bad_nemo_rl_configs():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    linear = {"name": "torch.optim.lr_scheduler.LinearLR", "kwargs": {"total_iters": 3}}
    with pytest.raises(ValueError, match="one milestone fewer than schedulers"):
        build_nemo_rl_scheduler(optimizer, [linear, linear])
    with pytest.raises(ValueError, match="unknown scheduler entry"):
        build_nemo_rl_scheduler(optimizer, [linear, {"milestone": [3]}])
    with pytest.raises(ValueError, match="unknown keys"):
        build_nemo_rl_scheduler(optimizer, [{**linear, "args": 1}])
    with pytest.raises(ValueError, match="does not name an importable class"):
        build_nemo_rl_scheduler(optimizer, {"name": "torch.optim.lr_scheduler.NoSuchLR", "kwargs": {}})
    with pytest.raises(ValueError, match=r"not a torch\.optim\.lr_scheduler\.LRScheduler subclass"):
        build_nemo_rl_scheduler(optimizer, {"name": "torch.optim.SGD", "kwargs": {}})
    with pytest.raises(ValueError, match="dotted class path"):
        build_nemo_rl_scheduler(optimizer, {"name": "LinearLR", "kwargs": {}})
    with pytest.raises(ValueError, match="strictly increasing"):
        build_nemo_rl_scheduler(optimizer, [linear, linear, linear, {"milestones": [5, 5]}])
    with pytest.raises(ValueError, match="no scheduler"):
        build_nemo_rl_scheduler(optimizer, [{"milestones": []}])
    with pytest.raises(TypeError, match="config must be None, a mapping or a list"):
        build_nemo_rl_scheduler(optimizer, "LinearLR")
    with pytest.raises(TypeError, match=r"optimizer must be a torch\.optim\.Optimizer"):
        build_nemo_rl_scheduler("sgd", None)
    with pytest.raises(ValueError, match="needs a 'name'"):
        build_nemo_rl_scheduler(optimizer, {"kwargs": {}})


def test_floor_ratio_needs_one_lr_per_optimizer():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-5}])
    with pytest.raises(ValueError, match="eta_min"):
        WarmupCosineDecay(2, 10, min_lr_ratio=0.1).torch_scheduler(optimizer)
    WarmupCosineDecay(2, 10).torch_scheduler(optimizer)  # a zero floor is the same for every group
    with pytest.raises(ValueError, match="inverse-square-root"):
        InverseSqrtSchedule(4).nemo_rl_scheduler(1e-3)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        WarmupCosineDecay(2, 10).nemo_rl_scheduler(0.0)


def test_bad_adam_inputs():
    g = torch.ones(3)
    with pytest.raises(TypeError, match="grad must be a floating-point tensor"):
        adam_first_update(torch.ones(3, dtype=torch.long), lr=0.1)
    with pytest.raises(ValueError, match="grad must be finite"):
        adam_first_update(torch.tensor([1.0, math.nan]), lr=0.1)
    with pytest.raises(ValueError, match="grad must not be empty"):
        adam_first_update(torch.ones(0), lr=0.1)
    with pytest.raises(ValueError, match=r"param \(theta_0\) is required"):
        adam_first_update(g, lr=0.1, weight_decay=0.1)
    with pytest.raises(ValueError, match="param and grad must have the same shape"):
        adam_first_update(g, lr=0.1, weight_decay=0.1, param=torch.ones(2))
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        adam_first_update(g, lr=-1.0)
    with pytest.raises(ValueError, match="eps must be"):
        adam_first_update(g, lr=0.1, eps=-1e-8)
    with pytest.raises(ValueError, match=r"lrs must be a float or Tensor\[S\] with S = 3"):
        adam_updates(torch.ones(3, 2), torch.ones(2))
    with pytest.raises(ValueError, match="lrs must be finite"):
        adam_updates(torch.ones(2, 2), torch.tensor([0.1, math.inf]))
    with pytest.raises(ValueError, match=r"betas\[1\] must be < 1"):
        adam_updates(torch.ones(2, 2), 0.1, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="betas must be a pair"):
        adam_updates(torch.ones(2, 2), 0.1, betas=(0.9,))
    with pytest.raises(ValueError, match="grads must have shape"):
        adam_updates(torch.tensor(1.0), 0.1)
    with pytest.raises(ValueError, match="beta must be < 1"):
        ema_variance_ratio(1.0, 3)
    with pytest.raises(ValueError, match="step must be >= 1"):
        ema_variance_ratio(0.9, 0)
