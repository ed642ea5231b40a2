"""NeMo RL's other advantage estimators (GDPO, Reinforce++, GAE/VAPO, raw reward, OPD), advantage
clipping, ``masked_var`` and ``std_rewards``: hand-derived values, NeMo RL's own unit-test scenarios
(NeMo RL 7ea279a ``tests/unit/algorithms/test_grpo.py``, ``test_ppo.py``, ``test_advantage_estimator.py``,
``test_utils.py``; expectations re-derived in comments) and float64 references written with plain
Python loops, independently of the library."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nemo_rl_theory import (
    calculate_baseline_and_std_per_prompt,
    clip_advantages,
    gae_advantages,
    gdpo_advantages,
    grpo_advantages,
    masked_var,
    opd_advantages,
    raw_reward_advantages,
    reinforce_plus_plus_advantages,
)

F64 = torch.float64


def t64(x):
    return torch.tensor(x, dtype=F64)


# ----------------------------------------------------------------------------- references


def kl_ref(lp: float, ref: float, kind: str) -> float:
    """Schulman's estimators of KL(pi || ref) with NeMo RL's default clamps (20 in, 10 out)."""
    x = min(max(ref - lp, -20.0), 20.0)
    k = {"k1": -x, "k2": x * x / 2, "k3": math.exp(x) - 1 - x}[kind]
    return min(max(k, -10.0), 10.0)


def gae_ref(rewards, values, mask, gamma, lams, beta=0.0, lps=None, refs=None, kind="k3"):
    """GAE by its forward definition A_t = sum_l (gamma lam)^l delta_{t+l} over the counted positions."""
    out = []
    for i, r in enumerate(rewards):
        pos = [t for t, m in enumerate(mask[i]) if m]
        rho = {t: (-beta * kl_ref(lps[i][t], refs[i][t], kind) if beta else 0.0) for t in pos}
        if pos:
            rho[pos[-1]] += r
        delta = []
        for k, t in enumerate(pos):
            v_next = values[i][pos[k + 1]] if k + 1 < len(pos) else 0.0
            delta.append(rho[t] + gamma * v_next - values[i][t])
        lam = lams[i] if isinstance(lams, list) else lams
        adv = {}
        for k, t in enumerate(pos):
            adv[t] = sum((gamma * lam) ** j * delta[k + j] for j in range(len(pos) - k))
        out.append(adv)
    return out


def whiten_gae_ref(adv_rows, n_rows, width):
    """NeMo RL's GAE whitening over counted tokens (masked mean with 1e-8, unbiased masked var)."""
    vals = [a for row in adv_rows for a in row.values()]
    n = len(vals)
    mean = sum(vals) / (n + 1e-8)
    var = sum((a - mean) ** 2 for a in vals) / (n + 1e-8) * n / (n - 1)
    res = [[0.0] * width for _ in range(n_rows)]
    for i, row in enumerate(adv_rows):
        for t, a in row.items():
            res[i][t] = (a - mean) / math.sqrt(var + 1e-8)
    return res


def group_mean(rewards, groups, i):
    same = [r for r, g in zip(rewards, groups, strict=True) if g == groups[i]]
    return sum(same) / len(same)


# ----------------------------------------------------------------------------- std_rewards


def test_std_rewards_nemo_scenario_raw_metric_after_overlong_shaping():
    # NeMo RL test_dapo_dynamic_sampling_filters_on_raw_metric_after_overlong_shaping: shaped
    # rewards (0, -0.2, -1.0 | 1, 0, 1), raw (0, 0, 0 | 1, 0, 1), no leave-one-out.
    shaped = t64([0.0, -0.2, -1.0, 1.0, 0.0, 1.0])
    raw = t64([0.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    baseline, std = calculate_baseline_and_std_per_prompt(ids, shaped, None, False, std_rewards=raw)
    torch.testing.assert_close(baseline, t64([-0.4] * 3 + [2 / 3] * 3))
    assert std[:3].tolist() == [0.0, 0.0, 0.0]
    torch.testing.assert_close(std[3:], t64([statistics.stdev([1, 0, 1])] * 3))
    # The shaped reward alone has spread in group 0.
    assert (calculate_baseline_and_std_per_prompt(ids, shaped, None, False)[1][:3] > 0).all()


def test_std_rewards_none_or_same_tensor_changes_nothing():
    r = t64([0.3, 0.9, 0.1, 0.5, 0.5, 0.2])
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    for loo in (True, False):
        a = calculate_baseline_and_std_per_prompt(ids, r, None, loo)
        b = calculate_baseline_and_std_per_prompt(ids, r, None, loo, std_rewards=r.clone())
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@given(
    st.lists(st.tuples(st.integers(0, 2), st.floats(-3, 3), st.floats(-3, 3), st.booleans()), min_size=1, max_size=9),
    st.booleans(),
)
def test_std_rewards_matches_statistics_stdev(rows, loo):
    groups = [g for g, _, _, _ in rows]
    r = [a for _, a, _, _ in rows]
    s = [b for _, _, b, _ in rows]
    valid = [v for _, _, _, v in rows]
    baseline, std = calculate_baseline_and_std_per_prompt(
        torch.tensor(groups), t64(r), torch.tensor(valid), loo, std_rewards=t64(s)
    )
    base_only, _ = calculate_baseline_and_std_per_prompt(torch.tensor(groups), t64(r), torch.tensor(valid), loo)
    torch.testing.assert_close(baseline, base_only)
    for i in range(len(rows)):
        n_valid = sum(1 for j in range(len(rows)) if groups[j] == groups[i] and valid[j])
        others = [s[j] for j in range(len(rows)) if groups[j] == groups[i] and valid[j] and not (loo and j == i)]
        if n_valid <= 1 or len(others) < 2:
            expected = 0.0
        else:
            expected = statistics.stdev(others)
        if loo and not valid[i] and n_valid > 1:
            continue  # an invalid row's own statistic is over n - 1 of n valid rows (NeMo RL's count)
        assert abs(float(std[i]) - expected) <= 1e-9 * (1 + expected)


def test_std_rewards_bad_inputs():
    r = t64([1.0, 0.0])
    ids = torch.tensor([0, 0])
    with pytest.raises(ValueError, match="std_rewards must have the shape"):
        calculate_baseline_and_std_per_prompt(ids, r, None, std_rewards=t64([1.0, 0.0, 1.0]))
    with pytest.raises(TypeError, match="std_rewards must be a floating-point"):
        calculate_baseline_and_std_per_prompt(ids, r, None, std_rewards=torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="std_rewards has 1 NaN"):
        calculate_baseline_and_std_per_prompt(ids, r, None, std_rewards=t64([math.nan, 0.0]))
    # NaN at a row that takes no part is fine.
    _, std = calculate_baseline_and_std_per_prompt(
        torch.tensor([0, 0, 0]), t64([1.0, 0.0, 1.0]), torch.tensor([1, 1, 0]), std_rewards=t64([1.0, 0.0, math.nan])
    )
    assert torch.isfinite(std).all()


# ----------------------------------------------------------------------------- masked_var


def test_masked_var_hand_values():
    x = t64([[1.0, 2.0, 3.0, 100.0]])
    m = t64([[1.0, 1.0, 1.0, 0.0]])
    mean = 6.0 / (3 + 1e-8)  # masked_mean carries 1e-8 in its denominator, as NeMo RL
    biased = sum((v - mean) ** 2 for v in (1.0, 2.0, 3.0)) / (3 + 1e-8)
    assert float(masked_var(x, m, unbiased=False)) == pytest.approx(biased, rel=1e-15)
    assert float(masked_var(x, m)) == pytest.approx(biased * 3 / 2, rel=1e-15)
    # A given mean is used as is.
    assert float(masked_var(x, m, mean=0.0)) == pytest.approx(14.0 / (3 + 1e-8) * 1.5, rel=1e-15)
    assert float(masked_var(x, m, mean=t64(2.0))) == pytest.approx(2.0 / (3 + 1e-8) * 1.5, rel=1e-15)


@given(st.lists(st.floats(-10, 10), min_size=2, max_size=12))
def test_masked_var_full_mask_is_torch_var(values):
    x = t64(values)
    m = torch.ones_like(x)
    torch.testing.assert_close(masked_var(x, m), x.var(), rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(masked_var(x, m, unbiased=False), x.var(unbiased=False), rtol=1e-7, atol=1e-12)


def test_masked_var_undefined_counts_are_zero_not_nan():
    # NeMo RL: N = 1 gives inf (NaN if the centred value is exactly 0), N = 0 gives -0.
    x = t64([5.0, 7.0])
    assert float(masked_var(x, t64([1.0, 0.0]))) == 0.0
    assert float(masked_var(t64([0.0, 7.0]), t64([1.0, 0.0]))) == 0.0
    assert float(masked_var(x, t64([0.0, 0.0]))) == 0.0
    assert float(masked_var(x, t64([0.0, 0.0]), unbiased=False)) == 0.0


def test_masked_var_padding_is_inert_and_gradcheck():
    x = t64([[1.0, -math.inf, 3.0], [math.nan, 2.0, 0.5]]).requires_grad_()
    m = t64([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    v = masked_var(x, m)
    v.backward()
    assert torch.isfinite(v) and torch.isfinite(x.grad).all()
    assert x.grad[0, 1] == 0 and x.grad[1, 0] == 0
    y = t64([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]]).requires_grad_()
    mu = t64(0.3).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: masked_var(a, m), (y,))
    assert torch.autograd.gradcheck(lambda a, b: masked_var(a, m, mean=b), (y, mu))
    assert torch.autograd.gradcheck(lambda a: masked_var(a, m, unbiased=False), (y,))


def test_masked_var_broadcast_mask_counts_expanded():
    x = t64([[1.0, 2.0], [3.0, 5.0]])
    row = t64([[1.0], [0.0]])
    torch.testing.assert_close(masked_var(x, row), masked_var(x, t64([[1.0, 1.0], [0.0, 0.0]])))


def test_masked_var_bad_inputs():
    x = t64([1.0, 2.0])
    m = t64([1.0, 1.0])
    with pytest.raises(ValueError, match="mean must be a number or a one-element tensor"):
        masked_var(x, m, mean=t64([1.0, 2.0]))
    with pytest.raises(TypeError, match="mean must be a floating-point tensor"):
        masked_var(x, m, mean=torch.tensor(1))
    with pytest.raises(ValueError, match="mean must be finite"):
        masked_var(x, m, mean=t64(math.nan))
    with pytest.raises(ValueError, match="mean must be a finite number"):
        masked_var(x, m, mean=math.inf)
    with pytest.raises(TypeError, match="mean must be a real number"):
        masked_var(x, m, mean="0")
    with pytest.raises(TypeError, match="unbiased must be a bool"):
        masked_var(x, m, unbiased=1)
    with pytest.raises(ValueError, match="must match or broadcast"):
        masked_var(x, t64([1.0, 1.0, 1.0]))
    with pytest.raises(TypeError, match="values must be a floating-point"):
        masked_var(torch.tensor([1, 2]), m)
    with pytest.raises(ValueError, match="values has 1 NaN"):
        masked_var(t64([math.nan, 2.0]), m)


# ----------------------------------------------------------------------------- GDPO


def test_gdpo_nemo_scenario_multiple_rewards():
    # NeMo RL test_gdpo_advantage_estimator_multiple_rewards (no leave-one-out):
    # correctness (1, 1) -> 0; integer (1, -1) -> +-1/(sqrt2 + 1e-6); format (1, 0) -> +-0.5/(sqrt(0.5) + 1e-6);
    # S = +-(a + b); sd over the two rows = sqrt(2) |a + b|, so A = +-1/sqrt(2).
    rewards = {
        "correctness": t64([1.0, 1.0]),
        "integer": t64([1.0, -1.0]),
        "format": t64([1.0, 0.0]),
    }
    adv = gdpo_advantages(rewards, torch.tensor([[0], [0]]), use_leave_one_out_baseline=False)
    torch.testing.assert_close(adv, t64([1 / math.sqrt(2), -1 / math.sqrt(2)]))


def test_gdpo_needs_two_components():
    with pytest.raises(ValueError, match="at least two reward components"):
        gdpo_advantages({"correctness": t64([1.0, 3.0])}, torch.tensor([0, 0]))


def gdpo_ref(components, groups, weights, loo, normalize):
    names = sorted(components)
    n = len(groups)
    total = [0.0] * n
    for name, w in zip(names, weights, strict=True):
        r = components[name]
        for i in range(n):
            members = [j for j in range(n) if groups[j] == groups[i]]
            if len(members) <= 1:
                continue  # baseline = own reward: advantage 0
            others = [r[j] for j in members if not (loo and j == i)]
            a = r[i] - sum(others) / len(others)
            sd = statistics.stdev(others) if len(others) >= 2 and len(set(others)) > 1 else 0.0
            if normalize and sd > 0:
                a /= sd + 1e-6
            total[i] += w * a
    if n <= 1:
        return [0.0] * n
    mean = sum(total) / n
    sd = statistics.stdev(total)
    return [(x - mean) / sd if sd > 0 else x - mean for x in total]


@given(
    st.lists(st.tuples(st.integers(0, 2), st.sampled_from([0.0, 0.5, 1.0]), st.floats(-2, 2)), min_size=1, max_size=8),
    st.lists(st.floats(0.1, 3), min_size=2, max_size=2),
    st.booleans(),
    st.booleans(),
)
def test_gdpo_matches_reference(rows, weights, loo, normalize):
    groups = [g for g, _, _ in rows]
    comps = {"b_format": [b for _, b, _ in rows], "a_correct": [c for _, _, c in rows]}
    adv = gdpo_advantages(
        {k: t64(v) for k, v in comps.items()},
        torch.tensor(groups),
        reward_weights=weights,
        use_leave_one_out_baseline=loo,
        normalize_rewards=normalize,
    )
    expected = gdpo_ref(comps, groups, weights, loo, normalize)
    torch.testing.assert_close(adv, t64(expected), rtol=1e-6, atol=1e-6)


def test_gdpo_weights_nemo_scenario_and_mapping():
    # NeMo RL test_gdpo_advantage_estimator_reward_weights.
    ids = torch.tensor([[0], [0], [0]])
    comps = {"correctness": t64([1.0, 0.0, 1.0]), "format": t64([1.0, 1.0, 0.0])}
    kw = {"use_leave_one_out_baseline": False}
    default = gdpo_advantages(comps, ids, **kw)
    torch.testing.assert_close(default, gdpo_advantages(comps, ids, reward_weights=[2.0, 2.0], **kw))
    assert not torch.allclose(default, gdpo_advantages(comps, ids, reward_weights=[1.0, 0.25], **kw), atol=1e-3)
    with pytest.raises(ValueError, match="reward_weights has 1 entries"):
        gdpo_advantages(comps, ids, reward_weights=[1.0], **kw)
    # Sequence weights follow the alphabetical order of the names; a mapping names them.
    torch.testing.assert_close(
        gdpo_advantages(comps, ids, reward_weights=[1.0, 0.25], **kw),
        gdpo_advantages(comps, ids, reward_weights={"format": 0.25, "correctness": 1.0}, **kw),
    )


def test_gdpo_edge_cases_and_detach():
    # One row: 0 (NeMo RL: std of one row is NaN, and NaN > 0 is False, so 0 too).
    assert gdpo_advantages({"a": t64([1.0]), "b": t64([0.0])}, torch.tensor([0])).tolist() == [0.0]
    # Singletons everywhere: all component advantages 0, combined 0.
    assert gdpo_advantages({"a": t64([1.0, 0.0]), "b": t64([0.0, 2.0])}, torch.tensor([0, 1])).tolist() == [0.0, 0.0]
    a = t64([1.0, 0.0, 0.5]).requires_grad_()
    out = gdpo_advantages({"a": a, "b": t64([0.0, 1.0, 1.0])}, torch.tensor([0, 0, 0]))
    assert not out.requires_grad


def test_gdpo_bad_inputs():
    ids = torch.tensor([0, 0])
    ok = {"a": t64([1.0, 0.0]), "b": t64([0.0, 1.0])}
    with pytest.raises(TypeError, match="component_rewards must be a mapping"):
        gdpo_advantages([t64([1.0, 0.0])], ids)
    with pytest.raises(TypeError, match="keyed by str"):
        gdpo_advantages({1: t64([1.0, 0.0]), 2: t64([0.0, 1.0])}, ids)
    with pytest.raises(ValueError, match="shape and dtype"):
        gdpo_advantages({"a": t64([1.0, 0.0]), "b": t64([0.0, 1.0, 1.0])}, ids)
    with pytest.raises(ValueError, match="shape and dtype"):
        gdpo_advantages({"a": t64([1.0, 0.0]), "b": torch.tensor([0.0, 1.0])}, ids)
    with pytest.raises(TypeError, match=r"component_rewards\['b'\] must be a floating-point"):
        gdpo_advantages({"a": t64([1.0, 0.0]), "b": torch.tensor([0, 1])}, ids)
    with pytest.raises(ValueError, match="must be finite"):
        gdpo_advantages({"a": t64([1.0, math.nan]), "b": t64([0.0, 1.0])}, ids)
    with pytest.raises(ValueError, match="same length N"):
        gdpo_advantages(ok, torch.tensor([0, 0, 0]))
    with pytest.raises(ValueError, match="exactly the component names"):
        gdpo_advantages(ok, ids, reward_weights={"a": 1.0})
    with pytest.raises(ValueError, match=r"reward_weights\[1\] must be a finite"):
        gdpo_advantages(ok, ids, reward_weights=[1.0, math.nan])
    with pytest.raises(TypeError, match="reward_weights must be None"):
        gdpo_advantages(ok, ids, reward_weights="11")
    with pytest.raises(TypeError, match="use_leave_one_out_baseline must be a bool"):
        gdpo_advantages(ok, ids, use_leave_one_out_baseline=1)
    with pytest.raises(TypeError, match="normalize_rewards must be a bool"):
        gdpo_advantages(ok, ids, normalize_rewards=None)


# ----------------------------------------------------------------------------- Reinforce++


def test_reinforce_pp_nemo_scenario_global_normalization():
    # NeMo RL test_reinforce_plus_plus_global_normalization: one group (0, 1, 2, 3), mean 1.5;
    # u = (-1.5, -0.5, 0.5, 1.5), biased var over 20 tokens = 1.25: A = u / sqrt(1.25).
    adv = reinforce_plus_plus_advantages(t64([0.0, 1.0, 2.0, 3.0]), torch.zeros(4, 1), torch.ones(4, 5))
    expected = t64([-1.5, -0.5, 0.5, 1.5]) / math.sqrt(1.25)
    torch.testing.assert_close(adv, expected[:, None].expand(4, 5))
    assert abs(float(adv.mean())) < 1e-12


def rpp_ref(rewards, groups, mask, minus_baseline, beta=0.0, lps=None, refs=None, kind="k3"):
    n, width = len(rewards), len(mask[0])
    u = []
    for i in range(n):
        base = group_mean(rewards, groups, i) if minus_baseline else 0.0
        row = []
        for t in range(width):
            kl = kl_ref(lps[i][t], refs[i][t], kind) if (beta and mask[i][t]) else 0.0
            row.append(rewards[i] - base - beta * kl)
        u.append(row)
    count = sum(sum(r) for r in mask)
    mean = sum(u[i][t] * mask[i][t] for i in range(n) for t in range(width)) / count
    var = sum((u[i][t] - mean) ** 2 * mask[i][t] for i in range(n) for t in range(width)) / count
    return [[(u[i][t] - mean) / math.sqrt(max(var, 1e-8)) for t in range(width)] for i in range(n)]


@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.floats(-2, 2), st.integers(1, 4), st.lists(st.floats(-3, 0), min_size=8)),
        min_size=1,
        max_size=6,
    ),
    st.booleans(),
    st.sampled_from([0.0, 0.05, 0.5]),
    st.sampled_from(["k1", "k2", "k3"]),
)
def test_reinforce_pp_matches_reference(rows, minus_baseline, beta, kind):
    width = 4
    groups = [g for g, _, _, _ in rows]
    rewards = [r for _, r, _, _ in rows]
    mask = [[1.0 if t < n else 0.0 for t in range(width)] for _, _, n, _ in rows]
    lps = [lp[:width] for *_, lp in rows]
    refs = [lp[width : 2 * width] for *_, lp in rows]
    adv = reinforce_plus_plus_advantages(
        t64(rewards),
        torch.tensor(groups),
        t64(mask),
        minus_baseline=minus_baseline,
        logprobs=t64(lps),
        reference_logprobs=t64(refs),
        kl_penalty=beta,
        kl_type=kind,
    )
    expected = rpp_ref(rewards, groups, mask, minus_baseline, beta, lps, refs, kind)
    torch.testing.assert_close(adv, t64(expected), rtol=1e-7, atol=1e-7)


def test_reinforce_pp_kl_hand_value_and_padding():
    # One response, two counted tokens, k1 with beta = 0.5: log r = ref - lp = (-1, 0) -> k1 = (1, 0);
    # u = (r - b) - 0.5 k1 = (0 - 0.5, 0) (group of one: b = r): mean -0.25, var 0.0625 -> A = (-1, 1).
    # Padding holds -inf log-probs: it keeps (u - mean) * rstd without the KL term.
    lp = t64([[-1.0, -2.0, -math.inf]])
    ref = t64([[-2.0, -2.0, -math.inf]])
    adv = reinforce_plus_plus_advantages(
        t64([0.7]),
        torch.tensor([0]),
        t64([[1.0, 1.0, 0.0]]),
        logprobs=lp,
        reference_logprobs=ref,
        kl_penalty=0.5,
        kl_type="k1",
    )
    torch.testing.assert_close(adv, t64([[-1.0, 1.0, 1.0]]))


def test_reinforce_pp_all_masked_and_detach():
    r = t64([1.0, 0.0]).requires_grad_()
    out = reinforce_plus_plus_advantages(r, torch.tensor([0, 0]), torch.zeros(2, 3))
    assert out.tolist() == [[0.0] * 3] * 2  # NeMo RL: NaN (0 / 0)
    out = reinforce_plus_plus_advantages(r, torch.tensor([0, 0]), torch.ones(2, 3))
    assert not out.requires_grad


def test_reinforce_pp_bad_inputs():
    r, ids, m = t64([1.0, 0.0]), torch.tensor([0, 0]), torch.ones(2, 3)
    with pytest.raises(ValueError, match="needs logprobs and reference_logprobs"):
        reinforce_plus_plus_advantages(r, ids, m, kl_penalty=0.1)
    with pytest.raises(ValueError, match="needs reference_logprobs"):
        reinforce_plus_plus_advantages(r, ids, m, kl_penalty=0.1, logprobs=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="kl_penalty must be a finite number in"):
        reinforce_plus_plus_advantages(r, ids, m, kl_penalty=-0.1)
    with pytest.raises(ValueError, match="kl_type must be one of"):
        reinforce_plus_plus_advantages(r, ids, m, kl_type="k4")
    with pytest.raises(ValueError, match="logprobs must have the shape of mask"):
        reinforce_plus_plus_advantages(r, ids, m, kl_penalty=0.1, logprobs=torch.zeros(2, 4), reference_logprobs=m)
    with pytest.raises(ValueError, match="logprobs has 1 NaN"):
        lp = torch.zeros(2, 3)
        lp[0, 0] = math.nan
        reinforce_plus_plus_advantages(r, ids, m, kl_penalty=0.1, logprobs=lp, reference_logprobs=m)
    with pytest.raises(ValueError, match="mask must have B = 2 rows"):
        reinforce_plus_plus_advantages(r, ids, torch.ones(3, 3))
    with pytest.raises(ValueError, match=r"mask must have shape \[B, T\]"):
        reinforce_plus_plus_advantages(r, ids, torch.ones(2))
    with pytest.raises(ValueError, match=r"rewards must have shape \[B\]"):
        reinforce_plus_plus_advantages(t64([[1.0, 0.0]]), ids, m)
    with pytest.raises(ValueError, match="rewards must be finite"):
        reinforce_plus_plus_advantages(t64([1.0, math.inf]), ids, m)
    with pytest.raises(TypeError, match="rewards must be a floating-point"):
        reinforce_plus_plus_advantages(torch.tensor([1, 0]), ids, m)
    with pytest.raises(ValueError, match="same length N"):
        reinforce_plus_plus_advantages(r, torch.tensor([0, 0, 1]), m)
    with pytest.raises(TypeError, match="minus_baseline must be a bool"):
        reinforce_plus_plus_advantages(r, ids, m, minus_baseline="yes")
    with pytest.raises(ValueError, match="mask must be non-negative"):
        reinforce_plus_plus_advantages(r, ids, -torch.ones(2, 3))


# ----------------------------------------------------------------------------- raw reward, OPD, clipping


def test_raw_reward_nemo_scenario_broadcasts_everywhere():
    # NeMo RL test_raw_reward_basic_broadcast_and_masking: the reward at every position, padding included.
    m = t64([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    adv = raw_reward_advantages(t64([2.0, -1.0]), m)
    torch.testing.assert_close(adv, t64([[2.0] * 4, [-1.0] * 4]))


def test_raw_reward_normalize_hand_value():
    # Tokens: three 2s and two -1s: mean = (6 - 2)/5 = 0.8, var = (3*1.44 + 2*3.24)/5 = 2.16.
    m = t64([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    adv = raw_reward_advantages(t64([2.0, -1.0]), m, normalize=True)
    s = math.sqrt(2.16)
    torch.testing.assert_close(adv, t64([[1.2 / s] * 4, [-1.8 / s] * 4]))
    # All masked: mean 0, var clamped to 1e-8 -> 1e4 r (NeMo RL's finite, inert value).
    torch.testing.assert_close(raw_reward_advantages(t64([2.0]), t64([[0.0, 0.0]]), normalize=True), t64([[2e4, 2e4]]))
    # Constant rewards: var 0 -> clamp -> 0 advantages.
    assert raw_reward_advantages(t64([1.0, 1.0]), m, normalize=True).abs().max() == 0


def test_raw_reward_bad_inputs():
    with pytest.raises(TypeError, match="normalize must be a bool"):
        raw_reward_advantages(t64([1.0]), torch.ones(1, 2), normalize=1)
    with pytest.raises(ValueError, match="mask must have B = 1 rows"):
        raw_reward_advantages(t64([1.0]), torch.ones(2, 2))
    with pytest.raises(ValueError, match="rewards must be finite"):
        raw_reward_advantages(t64([math.nan]), torch.ones(1, 2))


def test_opd_nemo_scenarios():
    # NeMo RL tests/unit/algorithms/test_advantage_estimator.py.
    adv = opd_advantages(torch.zeros(2, 4), torch.full((2, 4), -1.0), torch.ones(2, 4))
    assert (adv > 0).all()
    lp = torch.randn(2, 4)
    assert opd_advantages(lp, lp, torch.ones(2, 4)).abs().max() == 0
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]])
    adv = opd_advantages(torch.zeros(1, 6), torch.full((1, 6), -1.0), m)
    assert (adv[:, 3:] == 0).all() and (adv[:, :3] > 0).all()
    # The logged gap mean over valid tokens is teacher - student = 1, std 0.
    adv = opd_advantages(torch.zeros(2, 4), torch.full((2, 4), -1.0), torch.ones(2, 4))
    assert float(adv.mean()) == 1.0 and float(adv.std()) == 0.0


def test_opd_padding_detach_and_bad_inputs():
    teacher = t64([[-0.5, -math.inf]])
    student = t64([[-1.5, math.nan]]).requires_grad_()
    adv = opd_advantages(teacher, student, t64([[1.0, 0.0]]))
    assert adv.tolist() == [[1.0, 0.0]] and not adv.requires_grad
    with pytest.raises(ValueError, match="same shape"):
        opd_advantages(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"mask must have shape \[2, 3\]"):
        opd_advantages(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="teacher_logprobs has 1 NaN"):
        opd_advantages(t64([[math.nan]]), t64([[0.0]]), t64([[1.0]]))
    with pytest.raises(ValueError, match=r"logprobs must have shape \[B, T\]"):
        opd_advantages(torch.zeros(3), torch.zeros(3), torch.ones(3))


def test_clip_advantages_semantics():
    # NeMo RL test_clip_grpo_advantages_respects_config_bounds: clamp(min=low) then clamp(max=high).
    a = t64([[-3.0, -0.5, 0.0, 2.5, 10.0]])
    assert clip_advantages(a, -1.0, 2.0).tolist() == [[-1.0, -0.5, 0.0, 2.0, 2.0]]
    assert clip_advantages(a, low=-1.0).tolist() == [[-1.0, -0.5, 0.0, 2.5, 10.0]]
    assert clip_advantages(a, high=0.0).tolist() == [[-3.0, -0.5, 0.0, 0.0, 0.0]]
    same = clip_advantages(a)
    assert torch.equal(same, a) and same is not a
    g = t64([-3.0, 0.5]).requires_grad_()
    clip_advantages(g, -1.0, 1.0).sum().backward()
    assert g.grad.tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="low must be <= high"):
        clip_advantages(a, 1.0, -1.0)
    with pytest.raises(ValueError, match="high must be a finite number"):
        clip_advantages(a, None, math.nan)
    with pytest.raises(TypeError, match="low must be a real number"):
        clip_advantages(a, "1")
    with pytest.raises(TypeError, match="advantages must be a floating-point"):
        clip_advantages(torch.tensor([1, 2]), 0.0)


# ----------------------------------------------------------------------------- GAE


def test_gae_nemo_scenario_lambda_zero_is_td():
    # NeMo RL test_gae_gamma_lambda_zero: rho = (0, 0, 5), V = (1, 2, 3):
    # delta = (0 + 2 - 1, 0 + 3 - 2, 5 + 0 - 3) = (1, 1, 2).
    adv, ret = gae_advantages(t64([5.0]), t64([[1.0, 2.0, 3.0]]), torch.ones(1, 3), lam=0.0, normalize_advantages=False)
    assert adv.tolist() == [[1.0, 1.0, 2.0]]
    assert ret.tolist() == [[2.0, 3.0, 5.0]]


def test_gae_gamma_lambda_one_is_monte_carlo():
    # gamma = lam = 1: A_t = sum_{s >= t} rho_s - V_t, R_t = sum_{s >= t} rho_s (here the reward 1).
    values = t64([[0.5, 0.5, 0.5, 0.5]])
    adv, ret = gae_advantages(t64([1.0]), values, torch.ones(1, 4), lam=1.0, normalize_advantages=False)
    assert adv.tolist() == [[0.5] * 4]
    torch.testing.assert_close(ret, adv + values)
    assert ret.tolist() == [[1.0] * 4]


def test_gae_kl_in_reward_hand_value_and_nemo_scenario():
    # NeMo RL test_gae_kl_penalty_in_rewards with k1, beta 0.1, gamma = lam = 1, V = 0.
    lp = t64([[-1.0, -2.0, -1.5]])
    kw = {"lam": 1.0, "normalize_advantages": False, "kl_type": "k1"}
    no_kl, _ = gae_advantages(t64([1.0]), torch.zeros(1, 3, dtype=F64), torch.ones(1, 3), **kw)
    same, _ = gae_advantages(
        t64([1.0]),
        torch.zeros(1, 3, dtype=F64),
        torch.ones(1, 3),
        logprobs=lp,
        reference_logprobs=lp,
        kl_penalty=0.1,
        **kw,
    )
    torch.testing.assert_close(same, no_kl)
    # ref - lp = -2 everywhere: k1 = 2, rho = (-0.2, -0.2, -0.2 + 1): A = (0.4, 0.6, 0.8).
    div, _ = gae_advantages(
        t64([1.0]),
        torch.zeros(1, 3, dtype=F64),
        torch.ones(1, 3),
        logprobs=lp,
        reference_logprobs=lp - 2,
        kl_penalty=0.1,
        **kw,
    )
    torch.testing.assert_close(div, t64([[0.4, 0.6, 0.8]]))
    # kl_penalty = 0 is NeMo RL's use_kl_in_reward = False: the log-probs are ignored.
    off, _ = gae_advantages(
        t64([1.0]), torch.zeros(1, 3, dtype=F64), torch.ones(1, 3), logprobs=lp, reference_logprobs=lp - 2, **kw
    )
    torch.testing.assert_close(off, no_kl)


def test_gae_nemo_scenario_interior_gap_carry_forward():
    # NeMo RL test_gae_carry_forward_interior_gap: a masked position (value 999) is skipped.
    kw = {"gamma": 0.99, "lam": 0.95, "normalize_advantages": False}
    gap, _ = gae_advantages(t64([1.0]), t64([[0.1, 0.2, 999.0, 0.4, 0.5]]), t64([[1.0, 1.0, 0.0, 1.0, 1.0]]), **kw)
    flat, _ = gae_advantages(t64([1.0]), t64([[0.1, 0.2, 0.4, 0.5]]), torch.ones(1, 4), **kw)
    torch.testing.assert_close(gap[0, [0, 1, 3, 4]], flat[0])
    assert gap[0, 2] == 0


def test_gae_nemo_scenario_shapes_masking_and_normalization():
    # NeMo RL test_gae_shape_and_masking and test_gae_normalize_advantages.
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(3, 5)
    mask[1, 3:] = 0
    mask[2, 4:] = 0
    adv, ret = gae_advantages(t64([1.0, 2.0, 3.0]), torch.randn(3, 5, generator=g, dtype=F64), mask)
    assert adv.shape == ret.shape == (3, 5)
    assert adv[1, 3:].abs().sum() == 0 and adv[2, 4:].abs().sum() == 0
    adv, _ = gae_advantages(
        torch.randn(8, generator=g, dtype=F64) * 5, torch.randn(8, 10, generator=g, dtype=F64), torch.ones(8, 10)
    )
    assert abs(float(adv.mean())) < 1e-6 and abs(float(adv.std()) - 1.0) < 1e-6


@given(
    st.lists(
        st.tuples(
            st.floats(-2, 2),
            st.lists(st.floats(-1, 1), min_size=5, max_size=5),
            st.lists(st.booleans(), min_size=5, max_size=5),
            st.lists(st.floats(-4, 0), min_size=10, max_size=10),
        ),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from([1.0, 0.99, 0.5]),
    st.sampled_from([0.0, 0.5, 0.95, 1.0]),
    st.booleans(),
    st.sampled_from([0.0, 0.2]),
)
def test_gae_matches_forward_definition(rows, gamma, lam, normalize, beta):
    rewards = [r for r, _, _, _ in rows]
    values = [v for _, v, _, _ in rows]
    mask = [[1.0 if b else 0.0 for b in m] for _, _, m, _ in rows]
    lps = [lp[:5] for *_, lp in rows]
    refs = [lp[5:] for *_, lp in rows]
    adv, ret = gae_advantages(
        t64(rewards),
        t64(values),
        t64(mask),
        gamma=gamma,
        lam=lam,
        normalize_advantages=normalize,
        logprobs=t64(lps),
        reference_logprobs=t64(refs),
        kl_penalty=beta,
    )
    ref = gae_ref(rewards, values, mask, gamma, lam, beta, lps, refs)
    n_counted = sum(len(row) for row in ref)
    if normalize and n_counted > 1:
        expected = whiten_gae_ref(ref, len(rows), 5)
    elif normalize:
        expected = [[0.0] * 5 for _ in rows]
    else:
        expected = [[row.get(t, 0.0) for t in range(5)] for row in ref]
    torch.testing.assert_close(adv, t64(expected), rtol=1e-7, atol=1e-7)
    for i, row in enumerate(ref):
        for t, a in row.items():
            assert ret[i, t].item() == pytest.approx(a + values[i][t], abs=1e-9)


def test_gae_vapo_decoupled_lambda():
    # NeMo RL test_gae_vapo_decoupled_lambda: returns from lam_value = 1, advantages from lam_policy = 0.5.
    g = torch.Generator().manual_seed(1)
    values = torch.randn(2, 4, generator=g, dtype=F64)
    m = torch.ones(2, 4)
    adv, ret = gae_advantages(t64([1.0, 2.0]), values, m, lam_value=1.0, lam_policy=0.5, normalize_advantages=False)
    assert not torch.allclose(ret, adv + values, atol=1e-5)
    a_half, _ = gae_advantages(t64([1.0, 2.0]), values, m, lam=0.5, normalize_advantages=False)
    _, r_one = gae_advantages(t64([1.0, 2.0]), values, m, lam=1.0, normalize_advantages=False)
    torch.testing.assert_close(adv, a_half)
    torch.testing.assert_close(ret, r_one)
    # lam_value = 1: the value target is the Monte Carlo return (gamma = 1): the reward everywhere.
    torch.testing.assert_close(ret, t64([[1.0] * 4, [2.0] * 4]))


def test_gae_length_adaptive_lambda():
    # NeMo RL test_gae_length_adaptive_lambda: alpha = 0.05 with 3 and 8 tokens -> 1 - 1/max(0.15, 1) = 0.
    mask = torch.zeros(2, 10)
    mask[0, :3] = 1
    mask[1, :8] = 1
    g = torch.Generator().manual_seed(2)
    values = torch.randn(2, 10, generator=g, dtype=F64)
    r = t64([1.0, -1.0])
    kw = {"normalize_advantages": False}
    adv, ret = gae_advantages(r, values, mask, length_adaptive_alpha=0.05, lam_policy=0.9, **kw)
    torch.testing.assert_close(adv, gae_advantages(r, values, mask, lam=0.0, **kw)[0])  # alpha has priority
    torch.testing.assert_close(ret, gae_advantages(r, values, mask, **kw)[1])  # returns keep lam = 0.95
    # alpha = 0.5: lam_pi = 1 - 1/1.5 = 1/3 for 3 tokens, 1 - 1/4 = 0.75 for 8 tokens.
    adv, _ = gae_advantages(r, values, mask, length_adaptive_alpha=0.5, **kw)
    ref = gae_ref([1.0, -1.0], values.tolist(), mask.tolist(), 1.0, [1 / 3, 0.75])
    expected = [[row.get(t, 0.0) for t in range(10)] for row in ref]
    torch.testing.assert_close(adv, t64(expected))


def test_gae_edge_cases():
    # A single counted token: whitened advantage 0 (NeMo RL: 0, or NaN when the raw advantage is 0).
    adv, ret = gae_advantages(t64([1.0]), t64([[0.5, 0.25]]), t64([[0.0, 1.0]]))
    assert adv.tolist() == [[0.0, 0.0]]
    # Returns at padding, as NeMo RL: the advantage carried back from the next counted token
    # (0.75 = 1 - 0.25) plus the padding's own value (0.5); after the last one nothing is carried.
    assert ret.tolist() == [[1.25, 1.0]]
    _, ret = gae_advantages(t64([1.0]), t64([[0.25, 0.5]]), t64([[1.0, 0.0]]))
    assert ret.tolist() == [[1.0, 0.5]]
    # Nothing counted: zero advantages, returns = values.
    adv, ret = gae_advantages(t64([1.0]), t64([[0.3, 0.4]]), torch.zeros(1, 2))
    assert adv.tolist() == [[0.0, 0.0]] and ret.tolist() == [[0.3, 0.4]]
    # Garbage in the padding of values and log-probs stays there.
    clean_v = t64([[0.1, 0.2, 0.0]])
    dirty_v = t64([[0.1, 0.2, math.nan]])
    m = t64([[1.0, 1.0, 0.0]])
    lp = t64([[-1.0, -1.0, -math.inf]])
    kw = {"logprobs": lp, "reference_logprobs": lp - 0.5, "kl_penalty": 0.1}
    a_clean, r_clean = gae_advantages(t64([1.0]), clean_v, m, **kw)
    a_dirty, r_dirty = gae_advantages(t64([1.0]), dirty_v, m, **kw)
    torch.testing.assert_close(a_dirty, a_clean)
    torch.testing.assert_close(r_dirty[:, :2], r_clean[:, :2])
    # Detached.
    v = t64([[0.1, 0.2]]).requires_grad_()
    adv, ret = gae_advantages(t64([1.0]), v, torch.ones(1, 2))
    assert not adv.requires_grad and not ret.requires_grad


def test_gae_bad_inputs():
    r, v, m = t64([1.0]), torch.zeros(1, 3, dtype=F64), torch.ones(1, 3)
    for name, bad in (("gamma", 1.5), ("lam", -0.1), ("lam_value", 2.0), ("lam_policy", -1.0)):
        with pytest.raises(ValueError, match=rf"{name} must be a finite number in \[0, 1\]"):
            gae_advantages(r, v, m, **{name: bad})
    with pytest.raises(ValueError, match="length_adaptive_alpha must be a finite number"):
        gae_advantages(r, v, m, length_adaptive_alpha=-0.05)
    with pytest.raises(ValueError, match="needs logprobs and reference_logprobs"):
        gae_advantages(r, v, m, kl_penalty=0.1)
    with pytest.raises(ValueError, match="kl_type must be one of"):
        gae_advantages(r, v, m, kl_type="kl")
    with pytest.raises(ValueError, match="values must have B = 1 rows"):
        gae_advantages(r, torch.zeros(2, 3), m)
    with pytest.raises(ValueError, match=r"values must have shape \[B, T\]"):
        gae_advantages(r, torch.zeros(3), m)
    with pytest.raises(ValueError, match=r"mask must have shape \[1, 3\]"):
        gae_advantages(r, v, torch.ones(1, 4))
    with pytest.raises(ValueError, match="values has 1 NaN"):
        gae_advantages(r, t64([[0.0, math.nan, 0.0]]), m)
    with pytest.raises(TypeError, match="values must be a floating-point"):
        gae_advantages(r, torch.zeros(1, 3, dtype=torch.long), m)
    with pytest.raises(TypeError, match="normalize_advantages must be a bool"):
        gae_advantages(r, v, m, normalize_advantages=0)


def test_grpo_still_matches_nemo_zero_std_scenario():
    # NeMo RL test_grpo_advantage_estimator_zero_std: (2, 2 | 1, 3) without leave-one-out.
    adv = grpo_advantages(
        t64([2.0, 2.0, 1.0, 3.0]), torch.tensor([[0], [0], [1], [1]]), use_leave_one_out_baseline=False
    )
    s = 1 / (math.sqrt(2) + 1e-6)
    torch.testing.assert_close(adv, t64([0.0, 0.0, -s, s]))
