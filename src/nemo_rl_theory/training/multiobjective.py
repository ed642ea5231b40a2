r"""Several objectives in one training run: scalarisation, adaptive weights and gradient surgery.

:math:`K` objectives are given either as a stack of scalar losses ``Tensor[K]`` (or a sequence of
``K`` scalar tensors), as per-response rewards ``Tensor[N, K]`` (GRPO), or as flattened
per-objective gradients ``Tensor[K, P]`` (one row per objective, :math:`P` parameters).

* fixed weights: :func:`weighted_sum_loss`, :func:`combine_gradients`, and for GRPO
  :func:`per_objective_advantages` / :func:`scalarized_advantages` (weight the rewards *before*
  the group normalisation, or the normalised per-objective advantages *after* it);
* uncertainty weighting (Kendall et al., 2018): :func:`uncertainty_weighted_loss` and its optimum
  :func:`uncertainty_optimal_log_variances`;
* GradNorm (Chen et al., 2018): :func:`gradnorm_targets`, :func:`gradnorm_loss`,
  :func:`gradnorm_update` and the balanced weights :func:`gradnorm_balanced_weights`;
* gradient surgery: PCGrad (Yu et al., 2020) :func:`pcgrad_project` / :func:`pcgrad`, and the
  min-norm (MGDA) weights of Sener & Koltun (2018), :func:`min_norm_weights`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nemo_rl_theory._validation import _shape, require_bool, require_number
from nemo_rl_theory.advantages import grpo_advantages

__all__ = [
    "combine_gradients",
    "gradnorm_balanced_weights",
    "gradnorm_loss",
    "gradnorm_targets",
    "gradnorm_update",
    "min_norm_two_tasks",
    "min_norm_weights",
    "pcgrad",
    "pcgrad_project",
    "per_objective_advantages",
    "scalarized_advantages",
    "uncertainty_optimal_log_variances",
    "uncertainty_weighted_loss",
    "weighted_sum_loss",
]


# ----------------------------------------------------------------------------- validation


def _require_finite(name: str, t: Tensor) -> None:
    if not bool(torch.isfinite(t.detach()).all()):
        raise ValueError(f"{name} must be finite, got NaN or inf")


def _float_tensor(name: str, value: object, ndim: int, layout: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have shape {layout}, got {_shape(value)}")
    if value.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {_shape(value)}")
    _require_finite(name, value)
    return value


def _objective_stack(name: str, value: object) -> Tensor:
    """``Tensor[K]`` from a ``Tensor[K]`` or a sequence of ``K`` scalar tensors (gradients kept)."""
    if isinstance(value, Tensor):
        return _float_tensor(name, value, 1, "[K]")
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if len(value) == 0:
            raise ValueError(f"{name} must not be empty")
        for k, item in enumerate(value):
            if not isinstance(item, Tensor) or item.numel() != 1 or not item.is_floating_point():
                raise TypeError(f"{name}[{k}] must be a floating-point scalar tensor, got {item!r}")
        dtypes = {item.dtype for item in value}
        if len(dtypes) != 1:
            raise TypeError(f"{name} must share one dtype, got {sorted(str(d) for d in dtypes)}")
        return _float_tensor(name, torch.stack([item.reshape(()) for item in value]), 1, "[K]")
    raise TypeError(f"{name} must be a Tensor[K] or a sequence of K scalar tensors, got {type(value).__name__}")


def _weights(name: str, value: object, k: int, like: Tensor, *, positive: bool = False) -> Tensor:
    """``Tensor[K]`` of non-negative (or positive) finite weights in ``like``'s dtype."""
    if isinstance(value, Tensor):
        w = value
        if not (w.is_floating_point() or w.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must be a real tensor, got dtype {w.dtype}")
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise TypeError(f"{name} must be a sequence of numbers, got {value!r}")
        w = torch.tensor([float(v) for v in value], dtype=torch.float64)
    else:
        raise TypeError(f"{name} must be a Tensor[K] or a sequence of K numbers, got {type(value).__name__}")
    if w.shape != (k,):
        raise ValueError(f"{name} must have shape [K] = [{k}], got {_shape(w)}")
    _require_finite(name, w.float())
    if positive and bool((w <= 0).any()):
        raise ValueError(f"{name} must be > 0, got {w.tolist()}")
    if bool((w < 0).any()):
        raise ValueError(f"{name} must be >= 0 (a negative weight turns a loss into a reward), got {w.tolist()}")
    return w.to(dtype=like.dtype, device=like.device)


def _gradient_stack(name: str, value: object) -> Tensor:
    return _float_tensor(name, value, 2, "[K, P]")


# ----------------------------------------------------------------------------- fixed weights


def weighted_sum_loss(losses: Tensor | Sequence[Tensor], weights: Tensor | Sequence[float]) -> tuple[Tensor, dict]:
    r"""The scalarised loss :math:`\mathcal L(\theta) = \sum_k w_k \mathcal L_k(\theta)`.

    Its gradient is :math:`\sum_k w_k \nabla\mathcal L_k`: with fixed weights, every
    multi-objective method below reduces to this.

    Args:
        losses: ``Tensor[K]`` or a sequence of ``K`` scalar tensors (autograd is kept).
        weights: ``Tensor[K]`` or ``K`` numbers, finite and :math:`\ge 0`.

    Returns:
        ``(loss, metrics)``; ``metrics`` has ``"loss"`` and ``"objective_k"`` (the unweighted
        :math:`\mathcal L_k`) for each ``k``.
    """
    stack = _objective_stack("losses", losses)
    w = _weights("weights", weights, stack.shape[0], stack)
    loss = (w * stack).sum()
    metrics = {"loss": float(loss.detach())}
    metrics.update({f"objective_{k}": float(v) for k, v in enumerate(stack.detach().tolist())})
    return loss, metrics


def combine_gradients(grads: Tensor, weights: Tensor | Sequence[float]) -> Tensor:
    r"""``Tensor[P]``: :math:`\sum_k w_k g_k` for per-objective gradients ``grads: Tensor[K, P]``."""
    g = _gradient_stack("grads", grads)
    w = _weights("weights", weights, g.shape[0], g)
    return w @ g


def _check_rewards(rewards: object) -> Tensor:
    return _float_tensor("rewards", rewards, 2, "[N, K]")


def per_objective_advantages(
    rewards: Tensor,
    prompt_ids: Tensor,
    *,
    use_leave_one_out_baseline: bool = True,
    normalize_rewards: bool = True,
) -> Tensor:
    r"""``Tensor[N, K]``: GRPO advantages of each objective separately.

    Column :math:`k` is :func:`~nemo_rl_theory.advantages.grpo_advantages` of the rewards
    :math:`r_{\cdot,k}`, so each objective is centred (and, with ``normalize_rewards``, scaled
    to unit spread) within its group on its own.

    Args:
        rewards: ``Tensor[N, K]``, one row per response, one column per objective.
        prompt_ids: ``Tensor[N]`` (or ``Tensor[N, L]`` prompt rows); equal ids form a group.
        use_leave_one_out_baseline, normalize_rewards: as in ``grpo_advantages`` (NeMo RL's
            ``grpo.use_leave_one_out_baseline`` and ``grpo.normalize_rewards``).
    """
    r = _check_rewards(rewards)
    require_bool("use_leave_one_out_baseline", use_leave_one_out_baseline)
    require_bool("normalize_rewards", normalize_rewards)
    columns = [
        grpo_advantages(
            r[:, k],
            prompt_ids,
            use_leave_one_out_baseline=use_leave_one_out_baseline,
            normalize_rewards=normalize_rewards,
        )
        for k in range(r.shape[1])
    ]
    return torch.stack(columns, dim=1)


def scalarized_advantages(
    rewards: Tensor,
    prompt_ids: Tensor,
    weights: Tensor | Sequence[float],
    *,
    weight_before_normalization: bool = True,
    use_leave_one_out_baseline: bool = True,
    normalize_rewards: bool = True,
) -> Tensor:
    r"""``Tensor[N]``: one GRPO advantage per response from ``K`` weighted objectives.

    .. math::

        \begin{aligned}
        A_i^{\text{before}} &= \operatorname{GRPO}\Big(\sum_k w_k r_{\cdot,k}\Big)_i, \\
        A_i^{\text{after}} &= \sum_k w_k\, \operatorname{GRPO}\big(r_{\cdot,k}\big)_i
        \end{aligned}

    ``weight_before_normalization=True`` is what a weighted reward function (the toy's
    ``weighted_reward``) gives; ``False`` weights :func:`per_objective_advantages`. The two agree
    when ``normalize_rewards=False`` (the baseline is linear in the rewards) and differ when the
    group standard deviation divides: *before* divides by the spread of the sum, which only sees
    the weight ratios and is dominated by whichever objective varies in the group; *after*
    divides each objective by its own spread, so :math:`w_k` is the share of objective :math:`k`.

    Args:
        rewards: ``Tensor[N, K]``; prompt_ids: ``Tensor[N]`` or ``Tensor[N, L]``.
        weights: ``Tensor[K]`` or ``K`` numbers, finite and :math:`\ge 0`.
    """
    r = _check_rewards(rewards)
    w = _weights("weights", weights, r.shape[1], r)
    require_bool("weight_before_normalization", weight_before_normalization)
    options = dict(use_leave_one_out_baseline=use_leave_one_out_baseline, normalize_rewards=normalize_rewards)
    if weight_before_normalization:
        return grpo_advantages(r @ w, prompt_ids, **options)
    return per_objective_advantages(r, prompt_ids, **options) @ w


# ----------------------------------------------------------------------------- uncertainty weighting


def uncertainty_weighted_loss(
    losses: Tensor | Sequence[Tensor],
    log_variances: Tensor,
    *,
    regularizer_scale: float = 1.0,
) -> tuple[Tensor, dict]:
    r"""Homoscedastic-uncertainty weighting: :math:`\sum_k e^{-s_k}\mathcal L_k + c\, s_k`.

    :math:`s_k = \log\sigma_k^2` are learned alongside the model (``log_variances``, usually
    initialised to 0). With :math:`c` = ``regularizer_scale`` the optimum over :math:`s_k` is
    :math:`s_k^* = \log(\mathcal L_k / c)` (see :func:`uncertainty_optimal_log_variances`), where
    the loss equals :math:`\sum_k c\,(1 + \log(\mathcal L_k/c))`. :math:`c = 1` is the common
    implementation; Kendall et al.'s Gaussian likelihood
    :math:`\frac{1}{2\sigma^2}\mathcal L + \log\sigma` is half of it (same optimum) and their
    classification form :math:`\frac{1}{\sigma^2}\mathcal L + \log\sigma` is :math:`c = 1/2`.

    Args:
        losses: ``Tensor[K]`` or ``K`` scalar tensors.
        log_variances: ``Tensor[K]`` floating, :math:`s_k` (a learnable parameter).
        regularizer_scale: :math:`c > 0`.

    Returns:
        ``(loss, metrics)``; ``metrics`` has ``"loss"``, and ``"weight_k"`` (:math:`e^{-s_k}`)
        and ``"objective_k"`` for each ``k``.
    """
    stack = _objective_stack("losses", losses)
    s = _float_tensor("log_variances", log_variances, 1, "[K]")
    if s.shape != stack.shape:
        raise ValueError(f"log_variances must have shape [K] = [{stack.shape[0]}], got {_shape(s)}")
    require_number("regularizer_scale", regularizer_scale, low=0.0, low_inclusive=False)
    loss = (torch.exp(-s) * stack + regularizer_scale * s).sum()
    metrics = {"loss": float(loss.detach())}
    for k, (weight, value) in enumerate(zip(torch.exp(-s.detach()).tolist(), stack.detach().tolist(), strict=True)):
        metrics[f"weight_{k}"] = weight
        metrics[f"objective_{k}"] = value
    return loss, metrics


def uncertainty_optimal_log_variances(losses: Tensor, *, regularizer_scale: float = 1.0) -> Tensor:
    r"""``Tensor[K]``: :math:`s_k^* = \log(\mathcal L_k / c)`, the minimiser of :func:`uncertainty_weighted_loss`.

    It exists only for positive losses (for :math:`\mathcal L_k \le 0` the loss is unbounded
    below in :math:`s_k`), so ``losses`` must be :math:`> 0`. The optimal weight is
    :math:`e^{-s_k^*} = c/\mathcal L_k`: each objective is divided by its own current value.
    """
    stack = _float_tensor("losses", losses, 1, "[K]")
    require_number("regularizer_scale", regularizer_scale, low=0.0, low_inclusive=False)
    if bool((stack <= 0).any()):
        raise ValueError(f"losses must be > 0 for the optimum to exist, got {stack.detach().tolist()}")
    return torch.log(stack / regularizer_scale)


# ----------------------------------------------------------------------------- GradNorm


def _gradnorm_inputs(
    weights: object, grad_norms: object, losses: object, initial_losses: object, alpha: object
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = _float_tensor("weights", weights, 1, "[K]")
    k = w.shape[0]
    tensors = {}
    for name, value in (("grad_norms", grad_norms), ("losses", losses), ("initial_losses", initial_losses)):
        t = _float_tensor(name, value, 1, "[K]")
        if t.shape != (k,):
            raise ValueError(f"{name} must have shape [K] = [{k}], got {_shape(t)}")
        tensors[name] = t.detach().to(w.dtype)
    if bool((w.detach() <= 0).any()):
        raise ValueError(f"weights must be > 0, got {w.detach().tolist()}")
    if bool((tensors["grad_norms"] < 0).any()):
        raise ValueError(f"grad_norms must be >= 0, got {tensors['grad_norms'].tolist()}")
    for name in ("losses", "initial_losses"):
        if bool((tensors[name] <= 0).any()):
            raise ValueError(f"{name} must be > 0 (training rates are loss ratios), got {tensors[name].tolist()}")
    require_number("alpha", alpha, low=0.0)
    return w, tensors["grad_norms"], tensors["losses"], tensors["initial_losses"]


def gradnorm_targets(
    weights: Tensor, grad_norms: Tensor, losses: Tensor, initial_losses: Tensor, *, alpha: float = 1.5
) -> Tensor:
    r"""``Tensor[K]``: GradNorm's target gradient norms :math:`\bar G\, r_k^{\alpha}` (no gradient).

    With :math:`G_k = w_k \lVert\nabla_W \mathcal L_k\rVert` the weighted gradient norm on the
    shared weights :math:`W` (``grad_norms`` are the *unweighted* norms),
    :math:`\bar G = \frac1K\sum_k G_k`, the inverse training rate
    :math:`\tilde{\mathcal L}_k = \mathcal L_k(t)/\mathcal L_k(0)` and the relative inverse
    training rate :math:`r_k = \tilde{\mathcal L}_k / \frac1K\sum_j\tilde{\mathcal L}_j`.
    An objective that trains more slowly (larger :math:`r_k`) is given a larger target norm;
    ``alpha`` (:math:`\alpha \ge 0`) sets how strongly. The targets are constants: GradNorm
    does not differentiate through them.
    """
    w, norms, current, initial = _gradnorm_inputs(weights, grad_norms, losses, initial_losses, alpha)
    ratio = current / initial
    relative = ratio / ratio.mean()
    return ((w.detach() * norms).mean() * relative**alpha).detach()


def gradnorm_loss(
    weights: Tensor, grad_norms: Tensor, losses: Tensor, initial_losses: Tensor, *, alpha: float = 1.5
) -> Tensor:
    r"""GradNorm's balancing loss :math:`\sum_k \big|w_k \lVert\nabla_W\mathcal L_k\rVert - \bar G r_k^\alpha\big|`.

    Differentiable in ``weights: Tensor[K]`` (the targets of :func:`gradnorm_targets` are held
    constant), with :math:`\partial/\partial w_k = \operatorname{sign}(G_k - \bar G r_k^\alpha)
    \lVert\nabla_W\mathcal L_k\rVert`. ``grad_norms``, ``losses`` and ``initial_losses`` are
    ``Tensor[K]`` treated as data.
    """
    targets = gradnorm_targets(weights, grad_norms, losses, initial_losses, alpha=alpha)
    norms = grad_norms.detach().to(weights.dtype)
    return (weights * norms - targets).abs().sum()


def gradnorm_update(
    weights: Tensor,
    grad_norms: Tensor,
    losses: Tensor,
    initial_losses: Tensor,
    *,
    alpha: float = 1.5,
    lr: float = 0.025,
    min_weight: float = 1e-4,
) -> Tensor:
    r"""One GradNorm step on the weights: a gradient step on :func:`gradnorm_loss`, then renormalise.

    .. math::

        \begin{aligned}
        w_k &\leftarrow w_k - \eta\,\operatorname{sign}(G_k - \bar G r_k^\alpha) \\
        &\qquad \times \lVert\nabla_W\mathcal L_k\rVert, \\
        w &\leftarrow K\, \frac{\max(w, w_{\min})}{\sum_j \max(w_j, w_{\min})}
        \end{aligned}

    The renormalisation keeps :math:`\sum_k w_k = K` (it decouples the balancing from the
    global learning rate); the floor ``min_weight`` keeps the weights positive when a step
    overshoots. A gap :math:`|G_k - \bar G r_k^\alpha|` at rounding level (8 ulps of the largest
    target) counts as met, sign 0. Returns the new ``Tensor[K]`` (no gradient). When :math:`\frac1K\sum_k
    r_k^\alpha = 1` (always for :math:`\alpha \in \{0, 1\}`, since :math:`\frac1K\sum_k r_k = 1`)
    the balancing loss reaches 0 at :func:`gradnorm_balanced_weights`, which is then a fixed
    point of this update.
    """
    require_number("lr", lr, low=0.0, low_inclusive=False)
    require_number("min_weight", min_weight, low=0.0, low_inclusive=False)
    w, norms, _, _ = _gradnorm_inputs(weights, grad_norms, losses, initial_losses, alpha)
    targets = gradnorm_targets(w, norms, losses, initial_losses, alpha=alpha)
    w = w.detach()
    gap = w * norms - targets
    # A gap at rounding level is a met target: without the dead zone, sign(rounding error) would
    # kick a balanced weight vector by lr * n_k at every step.
    met = gap.abs() <= 8 * torch.finfo(w.dtype).eps * targets.abs().max()
    step = w - lr * torch.where(met, 0.0, torch.sign(gap)) * norms
    step = step.clamp(min=min_weight)
    return step * (w.shape[0] / step.sum())


def gradnorm_balanced_weights(
    grad_norms: Tensor, losses: Tensor, initial_losses: Tensor, *, alpha: float = 1.5
) -> Tensor:
    r"""``Tensor[K]``: the weights :math:`w_k^* = K\,\dfrac{r_k^\alpha / n_k}{\sum_j r_j^\alpha / n_j}` (sum :math:`K`).

    With :math:`n_k` = ``grad_norms`` held fixed they make the weighted norms proportional to
    the target shape, :math:`G_k \propto r_k^\alpha`; the balancing loss is 0 there exactly
    when :math:`\frac1K\sum_k r_k^\alpha = 1`. Every gradient norm must be :math:`> 0`.
    """
    ones = torch.ones_like(_float_tensor("grad_norms", grad_norms, 1, "[K]"))
    _, norms, current, initial = _gradnorm_inputs(ones, grad_norms, losses, initial_losses, alpha)
    if bool((norms <= 0).any()):
        raise ValueError(f"grad_norms must be > 0 for balanced weights to exist, got {norms.tolist()}")
    ratio = current / initial
    shape = (ratio / ratio.mean()) ** alpha / norms
    return shape * (norms.shape[0] / shape.sum())


# ----------------------------------------------------------------------------- gradient surgery


def pcgrad_project(grads: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    r"""``Tensor[K, P]``: PCGrad's projected gradients (gradient surgery, Yu et al. 2020).

    For each objective :math:`i`, start from :math:`g_i^{\text{PC}} = g_i` and visit the other
    objectives :math:`j` in turn; whenever :math:`g_i^{\text{PC}}\cdot g_j < 0` (they conflict),
    remove the component along :math:`g_j`:

    .. math::

        g_i^{\text{PC}} \leftarrow g_i^{\text{PC}} - \frac{g_i^{\text{PC}}\cdot g_j}{\lVert g_j\rVert^2}\, g_j

    Projections use the *original* :math:`g_j`. The visiting order is ``0, 1, ..., K-1``
    (skipping :math:`i`), or a random permutation per objective when ``generator`` is given, as
    in the paper; with two objectives there is no order to choose. A zero :math:`g_j` never
    conflicts. Sum the rows (:func:`pcgrad`) for the update direction.

    Args:
        grads: ``Tensor[K, P]`` flattened per-objective gradients (of the losses to minimise).
        generator: optional source of the random visiting orders.
    """
    g = _gradient_stack("grads", grads)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    k = g.shape[0]
    squared = (g * g).sum(dim=1)
    rows = []
    for i in range(k):
        others = [j for j in range(k) if j != i]
        if generator is not None:
            others = [others[p] for p in torch.randperm(len(others), generator=generator).tolist()]
        row = g[i]
        for j in others:
            dot = row @ g[j]
            if bool(dot < 0):
                row = row - (dot / squared[j]) * g[j]
        rows.append(row)
    return torch.stack(rows)


def pcgrad(grads: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    r"""``Tensor[P]``: the PCGrad update direction :math:`\sum_i g_i^{\text{PC}}` (see :func:`pcgrad_project`)."""
    return pcgrad_project(grads, generator=generator).sum(dim=0)


def min_norm_two_tasks(grads: Tensor) -> Tensor:
    r"""``Tensor[2]``: two-task MGDA weights :math:`(\gamma^*, 1-\gamma^*)`.

    They minimise :math:`\lVert\gamma g_1 + (1-\gamma) g_2\rVert^2` over :math:`\gamma \in [0, 1]`:

    .. math::

        \gamma^* = \operatorname{clip}\Big(\frac{(g_2 - g_1)\cdot g_2}{\lVert g_1 - g_2\rVert^2},\ 0,\ 1\Big)

    (Sener & Koltun's two-task MGDA step). Equal gradients give :math:`\gamma^* = 1/2`.
    ``grads`` is ``Tensor[2, P]``.
    """
    g = _gradient_stack("grads", grads)
    if g.shape[0] != 2:
        raise ValueError(f"grads must have shape [2, P], got {_shape(g)}")
    gram = g @ g.T
    return _two_point_weights(gram[0, 0], gram[0, 1], gram[1, 1])


def _two_point_weights(aa: Tensor, ab: Tensor, bb: Tensor) -> Tensor:
    """Weights (gamma, 1 - gamma) of the min-norm point of the segment [a, b], from the Gram entries."""
    denominator = aa - 2 * ab + bb
    if bool(denominator <= 0):
        gamma = torch.full_like(aa, 0.5)
    else:
        gamma = ((bb - ab) / denominator).clamp(0.0, 1.0)
    return torch.stack([gamma, 1 - gamma])


def min_norm_weights(grads: Tensor, *, max_iter: int = 2000, tol: float = 1e-12) -> Tensor:
    r"""``Tensor[K]``: simplex weights :math:`\lambda` of the min-norm point of the convex hull of the :math:`g_k`.

    .. math::

        \lambda^* = \arg\min_{\lambda \ge 0,\ \sum_k \lambda_k = 1} \Big\lVert \sum_k \lambda_k g_k \Big\rVert^2

    MGDA (Sener & Koltun, 2018): :math:`d = \sum_k\lambda_k^* g_k` satisfies
    :math:`d\cdot g_k \ge \lVert d\rVert^2` for every :math:`k`, so :math:`-d` decreases every
    objective unless :math:`d = 0` (a Pareto-stationary point). Two objectives use the closed
    form of :func:`min_norm_two_tasks`. More use Frank-Wolfe on the Gram matrix
    :math:`M = GG^\top` with away steps and exact line search (plain Frank-Wolfe, as in the
    paper, converges only as :math:`O(1/t)`; away steps converge linearly on the simplex). It
    stops when the duality gap :math:`\lambda^\top M\lambda - \min_k (M\lambda)_k` falls below
    ``tol`` times :math:`\max_k M_{kk}`, or after ``max_iter`` steps.
    """
    g = _gradient_stack("grads", grads)
    if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    require_number("tol", tol, low=0.0)
    k = g.shape[0]
    gram = g @ g.T
    if k == 1:
        return torch.ones(1, dtype=g.dtype, device=g.device)
    if k == 2:
        return _two_point_weights(gram[0, 0], gram[0, 1], gram[1, 1])
    scale = float(gram.diagonal().max())
    lam = torch.full((k,), 1.0 / k, dtype=g.dtype, device=g.device)
    if scale == 0.0:
        return lam
    for _ in range(max_iter):
        m_lam = gram @ lam
        current = lam @ m_lam
        toward = int(torch.argmin(m_lam))
        gap = float(current - m_lam[toward])
        if gap <= tol * scale:
            break
        active = lam > 0
        away = int(torch.where(active, m_lam, -torch.inf).argmax())
        away_gap = float(m_lam[away] - current)
        if gap >= away_gap or lam[away] >= 1:
            direction = -lam.clone()
            direction[toward] += 1
            max_step = 1.0
        else:
            direction = lam.clone()
            direction[away] -= 1
            max_step = float(lam[away] / (1 - lam[away]))
        curvature = float(direction @ gram @ direction)
        slope = float(m_lam @ direction)  # half the directional derivative of lam^T M lam
        step = max_step if curvature <= 0 else min(max(-slope / curvature, 0.0), max_step)
        lam = (lam + step * direction).clamp(min=0.0)
        lam = lam / lam.sum()
    return lam
