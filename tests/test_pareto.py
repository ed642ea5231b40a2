"""Pareto dominance, non-dominated sorting, hypervolume and scalarisations, against brute force.

The references below never call the module under test: dominance and front peeling are plain
Python loops over the definitions, the hypervolume is inclusion-exclusion over all subsets (and
Monte Carlo), and weighted-sum support is decided by intersecting, for each point, the intervals
of weights under which it beats every other point (an exact linear-programming argument in 2-D).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nemo_rl_theory.training.pareto import (
    chebyshev_scalarization,
    chebyshev_weights,
    dominance_matrix,
    hypervolume,
    is_non_dominated,
    linear_scalarization,
    non_dominated_sort,
    weighted_sum_supported,
)

F64 = torch.float64

# ----------------------------------------------------------------------------- references


def dominates_loop(a: list[float], b: list[float]) -> bool:
    """Minimisation: a is no worse everywhere and strictly better somewhere."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def ranks_by_peeling(points: list[list[float]]) -> list[int]:
    """Front index by the definition: repeatedly remove the non-dominated points of what is left."""
    rank = [-1] * len(points)
    remaining = set(range(len(points)))
    front = 0
    while remaining:
        current = {q for q in remaining if not any(dominates_loop(points[p], points[q]) for p in remaining)}
        for q in current:
            rank[q] = front
        remaining -= current
        front += 1
    return rank


def hv_inclusion_exclusion(points: list[list[float]], reference: list[float]) -> float:
    """Volume of the union of boxes [s, r] as the alternating sum over all non-empty subsets."""
    total = 0.0
    for size in range(1, len(points) + 1):
        for subset in itertools.combinations(points, size):
            corner = [max(column) for column in zip(*subset, strict=True)]
            volume = math.prod(max(r - c, 0.0) for r, c in zip(reference, corner, strict=True))
            total += (-1) ** (size + 1) * volume
    return total


def supported_by_intervals(points: list[list[float]]) -> list[bool]:
    """Is point j a minimiser of t f1 + (1 - t) f2 for some t in (0, 1)? Decided exactly.

    Writing s = t / (1 - t) in (0, inf), point j is no worse than point i iff
    s (f1_j - f1_i) <= f2_i - f2_j. Each i gives an upper bound on s (f1_j > f1_i), a lower bound
    (f1_j < f1_i) or a condition free of s (f1_j = f1_i); j is supported iff the intersection of
    these closed constraints with (0, inf) is not empty.
    """
    out = []
    for j, (x_j, y_j) in enumerate(points):
        low, high, feasible = -math.inf, math.inf, True
        for i, (x_i, y_i) in enumerate(points):
            if i == j:
                continue
            a, b = x_j - x_i, y_i - y_j
            if a > 0:
                high = min(high, b / a)
            elif a < 0:
                low = max(low, b / a)
            elif b < 0:
                feasible = False
        out.append(feasible and ((low > 0 and high >= low) or (low <= 0 < high)))
    return out


# ----------------------------------------------------------------------------- strategies

small_grid = st.integers(min_value=0, max_value=4).map(float)  # many ties and duplicates
real = st.floats(min_value=-10.0, max_value=10.0, allow_nan=False, width=64)
integers = st.integers(min_value=-20, max_value=20).map(float)  # distinct values differ by >= 1


@st.composite
def point_sets(draw, max_points: int = 12, max_objectives: int = 4, values=None):
    m = draw(st.integers(1, max_objectives))
    n = draw(st.integers(0, max_points))
    element = draw(st.sampled_from([small_grid, real])) if values is None else values
    rows = draw(st.lists(st.lists(element, min_size=m, max_size=m), min_size=n, max_size=n))
    directions = draw(st.lists(st.booleans(), min_size=m, max_size=m))
    return rows, directions


def orient(rows: list[list[float]], directions: list[bool]) -> list[list[float]]:
    return [[-v if up else v for v, up in zip(row, directions, strict=True)] for row in rows]


def as_tensor(rows: list[list[float]], m: int) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64).reshape(len(rows), m)


# ----------------------------------------------------------------------------- dominance and sorting


@given(point_sets())
def test_dominance_matrix_matches_the_definition(case):
    rows, directions = case
    m = len(directions)
    matrix = dominance_matrix(as_tensor(rows, m), maximize=directions)
    oriented = orient(rows, directions)
    expected = [[dominates_loop(a, b) for b in oriented] for a in oriented]
    assert matrix.tolist() == expected


@given(point_sets(max_points=14))
def test_non_dominated_sort_matches_peeling_and_the_chain_characterisation(case):
    rows, directions = case
    m = len(directions)
    rank = non_dominated_sort(as_tensor(rows, m), maximize=directions).tolist()
    oriented = orient(rows, directions)
    assert rank == ranks_by_peeling(oriented)
    for q, row_q in enumerate(oriented):
        above = [rank[p] for p, row_p in enumerate(oriented) if dominates_loop(row_p, row_q)]
        assert rank[q] == (1 + max(above) if above else 0)
    front = is_non_dominated(as_tensor(rows, m), maximize=directions)
    assert front.tolist() == [r == 0 for r in rank]


@given(point_sets(max_points=10, values=integers), st.randoms(use_true_random=False))
def test_sort_is_permutation_equivariant_and_invariant_to_monotone_maps(case, rnd):
    rows, directions = case
    m = len(directions)
    x = as_tensor(rows, m)
    rank = non_dominated_sort(x, maximize=directions)
    perm = list(range(len(rows)))
    rnd.shuffle(perm)
    perm_t = torch.tensor(perm, dtype=torch.long)
    assert torch.equal(non_dominated_sort(x[perm_t], maximize=directions), rank[perm_t])
    # A strictly increasing map of each objective preserves every comparison, hence the ranks.
    assert torch.equal(non_dominated_sort(torch.exp(x / 4) + x**3, maximize=directions), rank)
    # Maximising x is minimising -x.
    flipped = torch.where(torch.tensor(directions), -x, x)
    assert torch.equal(non_dominated_sort(flipped, maximize=False), rank)


def test_hand_computed_fronts_and_duplicates():
    points = torch.tensor([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [3.0, 3.0], [2.0, 2.0], [4.0, 4.0]])
    assert non_dominated_sort(points).tolist() == [0, 0, 0, 1, 0, 2]
    assert non_dominated_sort(points, maximize=True).tolist() == [2, 2, 2, 1, 2, 0]
    # Mixed directions: maximise the first objective, minimise the second.
    assert non_dominated_sort(points, maximize=[True, False]).tolist() == [2, 1, 0, 1, 1, 0]
    assert non_dominated_sort(torch.empty(0, 3)).shape == (0,)


# ----------------------------------------------------------------------------- hypervolume


@given(point_sets(max_points=7, max_objectives=4), st.lists(real, min_size=4, max_size=4))
def test_hypervolume_equals_inclusion_exclusion(case, ref_values):
    rows, directions = case
    m = len(directions)
    reference = [ref_values[k] for k in range(m)]
    value = hypervolume(as_tensor(rows, m), torch.tensor(reference, dtype=F64), maximize=directions)
    expected = hv_inclusion_exclusion(orient(rows, directions), orient([reference], directions)[0])
    assert value.dtype == F64
    assert math.isclose(float(value), expected, rel_tol=1e-9, abs_tol=1e-7)


@given(point_sets(max_points=8, max_objectives=3, values=real))
def test_hypervolume_is_monotone_and_ignores_dominated_points(case):
    rows, directions = case
    m = len(directions)
    x = as_tensor(rows, m)
    reference = torch.where(torch.tensor(directions), -11.0, 11.0).to(F64)
    hv = hypervolume(x, reference, maximize=directions)
    extra = torch.zeros(1, m, dtype=F64)
    assert hypervolume(torch.cat([x, extra]), reference, maximize=directions) >= hv - 1e-9
    if len(rows):
        front = is_non_dominated(x, maximize=directions)
        torch.testing.assert_close(hypervolume(x[front], reference, maximize=directions), hv, rtol=1e-12, atol=1e-12)
        # Scaling one objective by c > 0 (and the reference with it) scales the volume by c.
        scale = torch.ones(m, dtype=F64)
        scale[0] = 2.5
        torch.testing.assert_close(
            hypervolume(x * scale, reference * scale, maximize=directions), 2.5 * hv, rtol=1e-9, atol=1e-9
        )


def test_hypervolume_hand_computed_cases():
    ref2 = torch.tensor([4.0, 4.0], dtype=F64)
    staircase = torch.tensor([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]], dtype=F64)
    assert float(hypervolume(staircase, ref2)) == 1 * 1 + 1 * 2 + 1 * 3
    # A point on or beyond the reference contributes nothing.
    assert float(hypervolume(torch.tensor([[4.0, 0.0], [5.0, 5.0]], dtype=F64), ref2)) == 0.0
    # 3-D: two unit-cube corners overlapping in a 1 x 1 x 1 cube of the 2 x 2 x 2 box.
    ref3 = torch.tensor([2.0, 2.0, 2.0], dtype=F64)
    a, b = [0.0, 1.0, 1.0], [1.0, 0.0, 1.0]  # boxes 2*1*1 and 1*2*1, intersection 1*1*1
    assert float(hypervolume(torch.tensor([a, b], dtype=F64), ref3)) == 2 + 2 - 1
    assert float(hypervolume(torch.tensor([[0.0, 0.0, 0.0]], dtype=F64), ref3)) == 8.0
    assert float(hypervolume(torch.empty(0, 3, dtype=F64), ref3)) == 0.0
    # Maximisation: (pass rate, -length) style, reference at the worst corner.
    up = torch.tensor([[0.5, 0.5], [1.0, 0.25]], dtype=F64)
    assert float(hypervolume(up, torch.zeros(2, dtype=F64), maximize=True)) == 0.5 * 0.5 + 0.5 * 0.25
    assert hypervolume(up.float(), torch.zeros(2), maximize=True).dtype == torch.float32


def test_hypervolume_matches_monte_carlo():
    gen = torch.Generator().manual_seed(3)
    # Points on the sphere octant ||f|| = 1 (a concave front for minimisation), reference (1.1, 1.1, 1.1).
    raw = torch.rand(12, 3, generator=gen, dtype=F64)
    front = raw / raw.norm(dim=1, keepdim=True)
    reference = torch.full((3,), 1.1, dtype=F64)
    exact = float(hypervolume(front, reference))
    samples = torch.rand(400_000, 3, generator=gen, dtype=F64) * 1.1
    covered = (front[None, :, :] <= samples[:, None, :]).all(dim=-1).any(dim=1).double()
    p = float(covered.mean())
    estimate, stderr = p * 1.1**3, math.sqrt(p * (1 - p) / samples.shape[0]) * 1.1**3
    assert abs(estimate - exact) < 5 * stderr, (estimate, exact, stderr)


# ----------------------------------------------------------------------------- scalarisations


@given(point_sets(max_points=8, max_objectives=3, values=real), st.lists(st.floats(0.0, 5.0), min_size=3, max_size=3))
def test_scalarizations_match_direct_formulas(case, raw_weights):
    rows, directions = case
    m = len(directions)
    weights = torch.tensor(raw_weights[:m], dtype=F64) + 0.1
    x = as_tensor(rows, m)
    oriented = orient(rows, directions)
    lin = linear_scalarization(x, weights, maximize=directions)
    assert lin.tolist() == pytest.approx(
        [sum(w * v for w, v in zip(weights.tolist(), r, strict=True)) for r in oriented]
    )
    if not rows:
        return
    ideal_oriented = [min(column) - 0.5 for column in zip(*oriented, strict=True)]
    ideal = torch.tensor(orient([ideal_oriented], directions)[0], dtype=F64)
    rho = 0.01
    cheb = chebyshev_scalarization(x, weights, ideal, augmentation=rho, maximize=directions)
    expected = [
        max(w * abs(v - z) for w, v, z in zip(weights.tolist(), r, ideal_oriented, strict=True))
        + rho * sum(abs(v - z) for v, z in zip(r, ideal_oriented, strict=True))
        for r in oriented
    ]
    assert cheb.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)


@given(point_sets(max_points=10, max_objectives=4, values=integers))
def test_chebyshev_weights_make_every_pareto_point_the_unique_minimiser(case):
    rows, directions = case
    m = len(directions)
    x = as_tensor(rows, m)
    if not rows:
        return
    keep = is_non_dominated(x, maximize=directions)
    front = torch.unique(x[keep], dim=0)
    signs = torch.where(torch.tensor(directions), -1.0, 1.0).to(F64)
    utopia = (front * signs).min(dim=0).values * signs - signs  # one unit better than the best
    for j in range(front.shape[0]):
        w = chebyshev_weights(front[j], utopia, maximize=directions)
        assert (w > 0).all() and math.isclose(float(w.sum()), 1.0)
        g = chebyshev_scalarization(x, w, utopia, maximize=directions)
        winners = (g == g.min()).nonzero().flatten()
        assert all(torch.equal(x[i], front[j]) for i in winners.tolist()), (j, g)


def test_augmentation_breaks_ties_towards_the_dominating_point():
    points = torch.tensor([[1.0, 1.0], [1.0, 0.5]], dtype=F64)  # the second dominates the first
    w, z = torch.tensor([0.5, 0.5], dtype=F64), torch.zeros(2, dtype=F64)
    plain = chebyshev_scalarization(points, w, z)
    assert plain[0] == plain[1] == 0.5  # a tie: the plain minimiser may be weakly optimal only
    augmented = chebyshev_scalarization(points, w, z, augmentation=1e-3)
    assert augmented[1] < augmented[0]


def wavy_front(n: int = 41) -> torch.Tensor:
    x = torch.linspace(0, 1, n, dtype=F64)
    return torch.stack([x, 1 - x + 0.07 * torch.sin(4 * math.pi * x)], dim=1)


@given(
    st.lists(
        st.tuples(st.integers(0, 8).map(float), st.integers(0, 8).map(float)),
        min_size=1,
        max_size=12,
    )
)
def test_weighted_sum_support_matches_the_exact_interval_test(rows):
    points = [list(r) for r in rows]
    x = torch.tensor(points, dtype=F64)
    assert weighted_sum_supported(x).tolist() == supported_by_intervals(points)
    flipped = weighted_sum_supported(-x, maximize=True)
    assert flipped.tolist() == supported_by_intervals(points)


def test_weight_sweep_selects_exactly_the_supported_points_on_a_wavy_front():
    front = wavy_front()
    supported = weighted_sum_supported(front)
    assert 2 < int(supported.sum()) < front.shape[0]  # the front has convex and non-convex parts
    t = torch.linspace(1e-4, 1 - 1e-4, 20_001, dtype=F64)
    chosen = set(torch.argmin(front @ torch.stack([t, 1 - t]), dim=0).tolist())
    assert chosen <= set(supported.nonzero().flatten().tolist())
    # Every Pareto point of the front is reachable with Chebyshev weights, supported or not.
    utopia = front.min(dim=0).values - 0.1
    for j in range(front.shape[0]):
        g = chebyshev_scalarization(front, chebyshev_weights(front[j], utopia), utopia)
        assert int(torch.argmin(g)) == j


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_with_the_argument_named():
    good = torch.rand(4, 2)
    with pytest.raises(TypeError, match=r"objectives must be a torch\.Tensor"):
        non_dominated_sort([[1.0, 2.0]])
    with pytest.raises(TypeError, match="objectives must be a floating-point tensor"):
        non_dominated_sort(torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"objectives must have shape \[N, M\]"):
        is_non_dominated(torch.rand(5))
    with pytest.raises(ValueError, match="at least one objective"):
        dominance_matrix(torch.rand(3, 0))
    with pytest.raises(ValueError, match="objectives must be finite"):
        non_dominated_sort(torch.tensor([[0.0, math.nan]]))
    with pytest.raises(ValueError, match="front must be finite"):
        hypervolume(torch.tensor([[0.0, math.inf]]), torch.ones(2))
    with pytest.raises(ValueError, match=r"reference must have shape \[M\] = \[2\]"):
        hypervolume(good, torch.ones(3))
    with pytest.raises(ValueError, match="reference must be finite"):
        hypervolume(good, torch.tensor([1.0, math.nan]))
    with pytest.raises(ValueError, match="one flag per objective"):
        non_dominated_sort(good, maximize=[True, False, True])
    with pytest.raises(TypeError, match="maximize must be a bool"):
        non_dominated_sort(good, maximize=1)
    with pytest.raises(TypeError, match="maximize must be a bool or a sequence of bools"):
        non_dominated_sort(good, maximize=[1, 0])
    with pytest.raises(ValueError, match="weights must be non-negative and not all zero"):
        linear_scalarization(good, torch.tensor([0.0, 0.0]))
    with pytest.raises(ValueError, match="weights must be non-negative"):
        chebyshev_scalarization(good, torch.tensor([-1.0, 2.0]), torch.zeros(2))
    with pytest.raises(ValueError, match="ideal must be at least as good as every point"):
        chebyshev_scalarization(good, torch.tensor([0.5, 0.5]), torch.ones(2))
    with pytest.raises(ValueError, match="augmentation must be a finite number"):
        chebyshev_scalarization(good, torch.tensor([0.5, 0.5]), torch.zeros(2), augmentation=-0.1)
    with pytest.raises(ValueError, match="ideal must be strictly better than point"):
        chebyshev_weights(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"point must have shape \[M\]"):
        chebyshev_weights(torch.ones(2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="M = 2 objectives"):
        weighted_sum_supported(torch.rand(4, 3))
