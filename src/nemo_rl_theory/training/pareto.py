r"""Pareto dominance, non-dominated sorting, the hypervolume indicator and scalarisations.

Every function takes objective vectors as rows of a ``Tensor[N, M]`` (``N`` points, ``M``
objectives) and a direction per objective: ``maximize=False`` (the default, the convention of
the multi-objective optimisation literature) means *smaller is better* in every objective,
``maximize=True`` means larger is better in every objective, and a sequence or ``Tensor[M]`` of
bools mixes directions (e.g. ``[True, False]`` for (pass rate, response length)). Internally each
maximised objective is negated, so all the formulas below are written for minimisation.

* :func:`dominance_matrix`, :func:`is_non_dominated`, :func:`non_dominated_sort`: Pareto
  dominance, the Pareto front, and NSGA-II's front ranks (Deb et al., 2002).
* :func:`hypervolume`: the volume dominated by a set of points and bounded by a reference point
  (Zitzler and Thiele, 1999), exact: a sweep for ``M = 2`` and slicing for ``M > 2``.
* :func:`linear_scalarization`, :func:`chebyshev_scalarization`, :func:`chebyshev_weights`,
  :func:`weighted_sum_supported`: the two standard ways of turning ``M`` objectives into one, and
  which Pareto-optimal points each can select.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nemo_rl_theory._validation import require_float_tensor, require_number

Directions = bool | Sequence[bool] | Tensor


# ----------------------------------------------------------------------------- validation


def _check_objectives(name: str, values: object, *, allow_empty: bool = True) -> Tensor:
    t = require_float_tensor(name, values)
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape [N, M] (N points, M objectives), got {list(t.shape)}")
    if t.shape[1] == 0:
        raise ValueError(f"{name} must have at least one objective (M >= 1), got shape {list(t.shape)}")
    if not allow_empty and t.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one point, got shape {list(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return t


def _check_vector(name: str, values: object, m: int) -> Tensor:
    t = require_float_tensor(name, values)
    if t.shape != (m,):
        raise ValueError(f"{name} must have shape [M] = [{m}], got {list(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return t


def _signs(maximize: object, m: int, like: Tensor) -> Tensor:
    """``Tensor[M]`` of -1 (maximised objective) and +1 (minimised) in ``like``'s dtype."""
    if isinstance(maximize, bool):
        flags = torch.full((m,), maximize)
    elif isinstance(maximize, Tensor):
        if maximize.dtype != torch.bool:
            raise TypeError(f"maximize must be a bool tensor, got dtype {maximize.dtype}")
        flags = maximize
    elif isinstance(maximize, Sequence) and not isinstance(maximize, str):
        if not all(isinstance(f, bool) for f in maximize):
            raise TypeError(f"maximize must be a bool or a sequence of bools, got {maximize!r}")
        flags = torch.tensor(list(maximize), dtype=torch.bool)
    else:
        raise TypeError(f"maximize must be a bool or a sequence of M bools, got {type(maximize).__name__}")
    if flags.shape != (m,):
        raise ValueError(f"maximize must be a bool or hold one flag per objective (M = {m}), got {flags.numel()}")
    return torch.where(flags, -1.0, 1.0).to(like.dtype)


def _oriented(name: str, objectives: object, maximize: object, *, allow_empty: bool = True) -> tuple[Tensor, Tensor]:
    """The objectives turned into minimisation (maximised columns negated) and the signs used."""
    values = _check_objectives(name, objectives, allow_empty=allow_empty)
    signs = _signs(maximize, values.shape[1], values)
    return values * signs, signs


# ----------------------------------------------------------------------------- dominance


def _dominance(f: Tensor) -> Tensor:
    less_equal = (f[:, None, :] <= f[None, :, :]).all(dim=-1)
    less = (f[:, None, :] < f[None, :, :]).any(dim=-1)
    return less_equal & less


def dominance_matrix(objectives: Tensor, *, maximize: Directions = False) -> Tensor:
    r"""``D[i, j]`` is True iff point ``i`` Pareto-dominates point ``j``.

    For minimisation, :math:`f^{(i)} \prec f^{(j)}` iff
    :math:`f^{(i)}_k \le f^{(j)}_k` for every objective :math:`k` and
    :math:`f^{(i)}_k < f^{(j)}_k` for at least one. Dominance is irreflexive (a point never
    dominates itself or an identical copy), antisymmetric and transitive.

    Args:
        objectives: ``Tensor[N, M]`` floating, finite.
        maximize: ``bool`` for all objectives, or one flag per objective.

    Returns:
        ``Tensor[N, N]`` bool.
    """
    f, _ = _oriented("objectives", objectives, maximize)
    return _dominance(f)


def is_non_dominated(objectives: Tensor, *, maximize: Directions = False) -> Tensor:
    r"""``Tensor[N]`` bool: the points no other point dominates (the Pareto front of the set).

    Duplicated points do not dominate each other, so every copy of a non-dominated point is kept.
    """
    f, _ = _oriented("objectives", objectives, maximize)
    return ~_dominance(f).any(dim=0)


def non_dominated_sort(objectives: Tensor, *, maximize: Directions = False) -> Tensor:
    r"""NSGA-II's fast non-dominated sort: the front index of every point, 0 for the Pareto front.

    Fronts are peeled off in turn: :math:`F_0` is the set of non-dominated points and
    :math:`F_r` the non-dominated points of what remains after removing
    :math:`F_0, \dots, F_{r-1}`. Deb et al. (2002) do this in :math:`O(MN^2)` by keeping, for each
    point :math:`q`, its domination count :math:`n_q` (how many points dominate it) and, for each
    point :math:`p`, the set :math:`S_p` of points it dominates: after a front is assigned, every
    :math:`q \in S_p` of a front member :math:`p` has :math:`n_q` decreased by one, and the points
    whose count reaches 0 form the next front. Here :math:`S_p` is row :math:`p` of
    :func:`dominance_matrix` and the decrements of a whole front are one column sum.

    Equivalently, the rank of a point is the length of the longest chain of points dominating
    each other that ends at it: :math:`\operatorname{rank}(q) = 0` if nothing dominates
    :math:`q`, else :math:`1 + \max_{p \prec q} \operatorname{rank}(p)`.

    Args:
        objectives: ``Tensor[N, M]`` floating, finite (``N = 0`` gives an empty result).
        maximize: ``bool`` for all objectives, or one flag per objective.

    Returns:
        ``Tensor[N]`` long, the front index of each point.
    """
    f, _ = _oriented("objectives", objectives, maximize)
    dominates = _dominance(f)
    count = dominates.sum(dim=0)  # n_q: how many points dominate q
    rank = torch.full((f.shape[0],), -1, dtype=torch.long)
    current = count == 0
    front = 0
    while bool(current.any()):
        rank[current] = front
        count = count - dominates[current].sum(dim=0)
        current = (count == 0) & (rank < 0)
        front += 1
    return rank


# ----------------------------------------------------------------------------- hypervolume


def _hv_sweep_2d(points: Tensor, reference: Tensor) -> Tensor:
    """Exact 2-D hypervolume of points strictly inside the reference box (minimisation)."""
    order = torch.argsort(points[:, 1], stable=True)
    order = order[torch.argsort(points[order, 0], stable=True)]  # by f1, ties by f2
    x, y = points[order, 0], points[order, 1]
    staircase = torch.cummin(y, dim=0).values  # best f2 seen so far: the height of the step
    widths = torch.diff(x, append=reference[:1])
    return (widths * (reference[1] - staircase)).sum()


def _hv_recursive(points: Tensor, reference: Tensor) -> Tensor:
    """Exact hypervolume by slicing along the last objective (points strictly inside the box)."""
    n, m = points.shape
    if n == 0:
        return reference.new_zeros(())
    if m == 1:
        return reference[0] - points[:, 0].min()
    points = points[~_dominance(points).any(dim=0)]
    if m == 2:
        return _hv_sweep_2d(points, reference)
    points = points[torch.argsort(points[:, -1], stable=True)]
    heights = torch.diff(points[:, -1], append=reference[-1:])
    total = reference.new_zeros(())
    for i in range(points.shape[0]):
        if heights[i] > 0:
            # Slab [z_i, z_{i+1}): the cross-section is dominated by the first i + 1 points.
            total = total + heights[i] * _hv_recursive(points[: i + 1, :-1], reference[:-1])
    return total


def hypervolume(front: Tensor, reference: Tensor, *, maximize: Directions = False) -> Tensor:
    r"""The hypervolume indicator: the volume of objective space ``front`` dominates, up to ``reference``.

    For minimisation and a reference point :math:`r`,

    .. math::

        \begin{aligned}
        \operatorname{HV}(S; r) = \lambda_M\Big(&\bigcup_{s \in S} [s_1, r_1] \times \dots \\
        &\times [s_M, r_M]\Big),
        \end{aligned}

    with :math:`\lambda_M` the Lebesgue measure. Points that are not strictly better than
    :math:`r` in every objective span an empty box and contribute nothing; dominated points
    contribute nothing either. For ``M = 2`` it is the area under a staircase, computed by one
    sort and one sweep: with the points sorted by :math:`f_1`,
    :math:`\operatorname{HV} = \sum_i (x_{i+1} - x_i)(r_2 - \min_{j \le i} y_j)` with
    :math:`x_{N+1} = r_1`. For ``M > 2`` the space is cut into slabs between consecutive values of
    the last objective, and each slab's cross-section is an :math:`(M-1)`-dimensional
    hypervolume (hypervolume by slicing objectives): exact, :math:`O(N^{M-1})` time, meant for
    the small fronts of a hyperparameter or reward-weight sweep.

    Args:
        front: ``Tensor[N, M]`` floating, finite (``N = 0`` gives 0).
        reference: ``Tensor[M]`` the reference point, worse than the points that should count.
        maximize: ``bool`` for all objectives, or one flag per objective (``reference`` is given
            in the original units and orientation).

    Returns:
        A 0-d tensor in ``front``'s dtype, computed in float64.
    """
    f, signs = _oriented("front", front, maximize)
    ref = _check_vector("reference", reference, f.shape[1]) * signs.to(reference.dtype)
    f64, ref64 = f.double(), ref.double()
    inside = (f64 < ref64).all(dim=1)
    return _hv_recursive(f64[inside], ref64).to(f.dtype)


# ----------------------------------------------------------------------------- scalarisation


def _check_weights(weights: object, m: int, like: Tensor) -> Tensor:
    w = _check_vector("weights", weights, m)
    if bool((w < 0).any()) or not bool((w > 0).any()):
        raise ValueError(f"weights must be non-negative and not all zero, got {w.tolist()}")
    return w.to(like.dtype)


def linear_scalarization(objectives: Tensor, weights: Tensor, *, maximize: Directions = False) -> Tensor:
    r"""The weighted sum :math:`g(f \mid w) = \sum_k w_k f_k`, lower is better, ``Tensor[N]``.

    Maximised objectives enter negated, so the result is always to be *minimised*. Every
    minimiser over a set with :math:`w > 0` is Pareto-optimal, but only points on the convex hull
    of the front can be minimisers (see :func:`weighted_sum_supported`).

    Args:
        objectives: ``Tensor[N, M]`` floating, finite.
        weights: ``Tensor[M]`` non-negative, not all zero.
        maximize: ``bool`` for all objectives, or one flag per objective.
    """
    f, _ = _oriented("objectives", objectives, maximize)
    return f @ _check_weights(weights, f.shape[1], f)


def chebyshev_scalarization(
    objectives: Tensor,
    weights: Tensor,
    ideal: Tensor,
    *,
    augmentation: float = 0.0,
    maximize: Directions = False,
) -> Tensor:
    r"""The (augmented) Chebyshev scalarisation, lower is better, ``Tensor[N]``.

    .. math::

        \begin{aligned}
        g(f \mid w, z) = {}&\max_k w_k\,|f_k - z_k| \\
        &+ \rho \sum_k |f_k - z_k|,
        \end{aligned}

    with :math:`z` an ideal point (at least as good as every point in every objective) and
    :math:`\rho` = ``augmentation`` :math:`\ge 0`. With :math:`\rho = 0` (Tchebycheff, as in
    MOEA/D) every Pareto-optimal point minimises :math:`g` for a suitable :math:`w` (see
    :func:`chebyshev_weights`), but minimisers may be only weakly Pareto-optimal; a small
    :math:`\rho > 0` breaks those ties in favour of the dominating point.

    Args:
        objectives: ``Tensor[N, M]`` floating, finite.
        weights: ``Tensor[M]`` non-negative, not all zero.
        ideal: ``Tensor[M]`` at least as good as every row of ``objectives`` (``ValueError``
            otherwise: beyond the ideal point :math:`g` stops being monotone).
        augmentation: :math:`\rho \ge 0`.
        maximize: ``bool`` for all objectives, or one flag per objective.
    """
    f, signs = _oriented("objectives", objectives, maximize)
    w = _check_weights(weights, f.shape[1], f)
    z = _check_vector("ideal", ideal, f.shape[1]).to(f.dtype) * signs
    require_number("augmentation", augmentation, low=0.0)
    gap = f - z
    if bool((gap < 0).any()):
        raise ValueError("ideal must be at least as good as every point in every objective; a point is better")
    return (w * gap).max(dim=1).values + augmentation * gap.sum(dim=1)


def chebyshev_weights(point: Tensor, ideal: Tensor, *, maximize: Directions = False) -> Tensor:
    r"""Weights :math:`w_k \propto 1/|y_k - z_k|` (summing to 1) under which ``point`` minimises :math:`g`.

    With these weights every term :math:`w_k |y_k - z_k|` is the same constant :math:`c`, so
    :math:`g(y) = c`; any point :math:`y'` that is not dominated by :math:`y`'s equal is worse
    than :math:`y` in some objective :math:`k`, where :math:`w_k|y'_k - z_k| > c`. Hence a
    Pareto-optimal :math:`y` is the unique minimiser of the plain Chebyshev scalarisation over
    any finite set that does not contain a copy of it, whatever the shape of the front.

    Args:
        point: ``Tensor[M]`` the target objective vector.
        ideal: ``Tensor[M]`` strictly better than ``point`` in every objective (a *utopian* point).
        maximize: ``bool`` for all objectives, or one flag per objective.

    Returns:
        ``Tensor[M]`` positive weights summing to 1.
    """
    y = require_float_tensor("point", point)
    if y.dim() != 1 or y.numel() == 0:
        raise ValueError(f"point must have shape [M] with M >= 1, got {list(y.shape)}")
    y = _check_vector("point", y, y.shape[0])
    signs = _signs(maximize, y.shape[0], y)
    z = _check_vector("ideal", ideal, y.shape[0]).to(y.dtype)
    gap = (y - z) * signs
    if not bool((gap > 0).all()):
        raise ValueError("ideal must be strictly better than point in every objective (a utopian point)")
    inverse = 1.0 / gap
    return inverse / inverse.sum()


def _cross(o: Tensor, a: Tensor, b: Tensor) -> float:
    return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))


def weighted_sum_supported(objectives: Tensor, *, maximize: Directions = False) -> Tensor:
    r"""``Tensor[N]`` bool: the points that minimise :math:`w_1 f_1 + w_2 f_2` for some :math:`w > 0` (``M = 2``).

    These are the *supported* Pareto-optimal points: the non-dominated points that lie on the
    lower-left boundary of the convex hull of the set (points on a hull edge between two
    vertices count: they tie with the edge's ends for one weight). Points in a non-convex dent
    of the front are Pareto-optimal but no weighted sum selects them; dominated points are
    never selected since :math:`w > 0`. Computed with Andrew's monotone chain on the
    non-dominated points sorted by :math:`f_1`, keeping collinear points.

    Args:
        objectives: ``Tensor[N, 2]`` floating, finite (two objectives; more need a linear program).
        maximize: ``bool`` for both objectives, or one flag per objective.
    """
    f, _ = _oriented("objectives", objectives, maximize)
    if f.shape[1] != 2:
        raise ValueError(f"objectives must have M = 2 objectives for weighted_sum_supported, got {f.shape[1]}")
    supported = torch.zeros(f.shape[0], dtype=torch.bool)
    if f.shape[0] == 0:
        return supported
    f64 = f.double()
    front = ~_dominance(f64).any(dim=0)
    # Distinct non-dominated points sorted by f1 (then f2 is strictly decreasing).
    distinct = torch.unique(f64[front], dim=0)
    distinct = distinct[torch.argsort(distinct[:, 0], stable=True)]
    hull: list[Tensor] = []
    for p in distinct:
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) < 0:
            hull.pop()  # hull[-1] lies strictly above the segment hull[-2] -> p: not supported
        hull.append(p)
    on_hull = torch.stack(hull)
    return (f64[:, None, :] == on_hull[None, :, :]).all(dim=-1).any(dim=1) & front
