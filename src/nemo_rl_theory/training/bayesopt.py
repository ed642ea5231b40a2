r"""Bayesian optimisation from first principles: Gaussian-process regression and expected improvement.

A zero-centred Gaussian process with a constant prior mean :math:`m` and kernel :math:`k` models an
unknown objective :math:`f`; observations are :math:`y_i = f(x_i) + \varepsilon_i` with
:math:`\varepsilon_i \sim \mathcal N(0, \sigma_n^2)`. With :math:`K = k(X, X)`,
:math:`k_* = k(X, x_*)` and the Cholesky factor :math:`L L^\top = K + \sigma_n^2 I`
(Rasmussen & Williams, 2006, Algorithm 2.1):

.. math::

    \begin{aligned}
    \mu(x_*) &= m + k_*^\top (K + \sigma_n^2 I)^{-1} (y - m), \\
    \sigma^2(x_*) &= k(x_*, x_*) - k_*^\top (K + \sigma_n^2 I)^{-1} k_* .
    \end{aligned}

Expected improvement over the best observation :math:`f^*` (Jones et al., 1998), for
*maximisation*, with exploration margin :math:`\xi \ge 0` and :math:`z = (\mu - f^* - \xi)/\sigma`:

.. math::

    \operatorname{EI}(x) = (\mu - f^* - \xi)\,\Phi(z) + \sigma\,\varphi(z) .

Inputs are ``Tensor[N, D]`` (a ``Tensor[N]`` is read as ``N`` points in one dimension). All
functions keep the dtype they are given; use float64 for anything you compare to 1e-10.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from nemo_rl_theory._validation import require_float_tensor, require_number

KernelName = Literal["rbf", "matern52"]
KERNELS: tuple[str, ...] = ("rbf", "matern52")

#: Default length-scale grid of :func:`fit_gp`, for inputs scaled to the unit cube.
DEFAULT_LENGTHSCALES: tuple[float, ...] = tuple(float(v) for v in torch.logspace(-2, 0.5, 26, dtype=torch.float64))
#: Default grid of noise-to-signal variance ratios :math:`\lambda = \sigma_n^2 / s^2` of :func:`fit_gp`.
DEFAULT_NOISE_RATIOS: tuple[float, ...] = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1)


# ----------------------------------------------------------------------------- validation


def _points(name: str, x: object) -> Tensor:
    """``Tensor[N, D]`` (a ``Tensor[N]`` becomes ``Tensor[N, 1]``), floating and finite."""
    t = require_float_tensor(name, x)
    if t.dim() == 1:
        t = t[:, None]
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape [N, D] or [N], got {list(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return t


def _same_dim(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same number of dimensions D, got {a.shape[1]} and {b.shape[1]}"
        )
    if a.dtype != b.dtype:
        raise TypeError(f"{name_a} and {name_b} must have the same dtype, got {a.dtype} and {b.dtype}")


def _targets(name: str, y: object, n: int, like: Tensor) -> Tensor:
    t = require_float_tensor(name, y)
    if t.shape != (n,):
        raise ValueError(f"{name} must have shape [N] = [{n}] (one value per training point), got {list(t.shape)}")
    if t.dtype != like.dtype:
        raise TypeError(f"{name} must have the dtype of the inputs ({like.dtype}), got {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return t


def _check_kernel_name(kernel: object) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


# ----------------------------------------------------------------------------- kernels


def _squared_distances(x1: Tensor, x2: Tensor) -> Tensor:
    """``Tensor[N, M]`` of :math:`\\|x_i - x'_j\\|^2`, summed from differences (no cancellation)."""
    return ((x1[:, None, :] - x2[None, :, :]) ** 2).sum(dim=-1)


def _kernel_inputs(x1: object, x2: object, lengthscale: object, variance: object) -> tuple[Tensor, Tensor]:
    a, b = _points("x1", x1), _points("x2", x2)
    _same_dim("x1", a, "x2", b)
    require_number("lengthscale", lengthscale, low=0.0, low_inclusive=False)
    require_number("variance", variance, low=0.0, low_inclusive=False)
    return a, b


def rbf_kernel(x1: Tensor, x2: Tensor, *, lengthscale: float = 1.0, variance: float = 1.0) -> Tensor:
    r"""Squared-exponential kernel :math:`k(x, x') = s^2 \exp\!\big(-\|x - x'\|^2 / (2\ell^2)\big)`.

    Args:
        x1: ``Tensor[N, D]`` (or ``Tensor[N]``).
        x2: ``Tensor[M, D]`` (or ``Tensor[M]``), same ``D`` and dtype.
        lengthscale: :math:`\ell > 0`, shared by all dimensions.
        variance: signal variance :math:`s^2 > 0` (the prior variance of :math:`f(x)`).

    Returns:
        ``Tensor[N, M]``.
    """
    a, b = _kernel_inputs(x1, x2, lengthscale, variance)
    return variance * torch.exp(-0.5 * _squared_distances(a, b) / lengthscale**2)


def matern52_kernel(x1: Tensor, x2: Tensor, *, lengthscale: float = 1.0, variance: float = 1.0) -> Tensor:
    r"""Matérn kernel with :math:`\nu = 5/2`; with :math:`r = \|x - x'\|`,

    .. math::

        \begin{aligned}
        k(x, x') = s^2 &\Big(1 + \frac{\sqrt5\, r}{\ell} + \frac{5 r^2}{3 \ell^2}\Big) \\
                   &\times \exp\!\Big(-\frac{\sqrt5\, r}{\ell}\Big) .
        \end{aligned}

    Sample paths are twice differentiable (the RBF's are infinitely so), the usual default for
    hyperparameter search (Snoek et al., 2012). The distance is computed as
    :math:`\sqrt{\max(r^2, \text{tiny})}` so that the gradient at :math:`x = x'` is 0, not NaN.

    Shapes and arguments as :func:`rbf_kernel`; returns ``Tensor[N, M]``.
    """
    a, b = _kernel_inputs(x1, x2, lengthscale, variance)
    d2 = _squared_distances(a, b)
    scaled = math.sqrt(5.0) * torch.sqrt(d2.clamp_min(torch.finfo(d2.dtype).tiny)) / lengthscale
    return variance * (1.0 + scaled + scaled**2 / 3.0) * torch.exp(-scaled)


# ----------------------------------------------------------------------------- GP regression


@dataclass(frozen=True)
class GPConfig:
    """Hyperparameters of the Gaussian process.

    Attributes:
        kernel: ``"rbf"`` or ``"matern52"``.
        lengthscale: :math:`\\ell > 0`.
        variance: signal variance :math:`s^2 > 0`.
        noise: observation-noise variance :math:`\\sigma_n^2 \\ge 0` (0 interpolates the data; the
            Cholesky factorisation then needs distinct inputs).
        mean: constant prior mean :math:`m`.
    """

    kernel: KernelName = "matern52"
    lengthscale: float = 0.2
    variance: float = 1.0
    noise: float = 1e-6
    mean: float = 0.0

    def __post_init__(self) -> None:
        _check_kernel_name(self.kernel)
        require_number("lengthscale", self.lengthscale, low=0.0, low_inclusive=False)
        require_number("variance", self.variance, low=0.0, low_inclusive=False)
        require_number("noise", self.noise, low=0.0)
        require_number("mean", self.mean)


def kernel_matrix(x1: Tensor, x2: Tensor, config: GPConfig) -> Tensor:
    """``Tensor[N, M]``: ``config.kernel`` evaluated with ``config``'s length-scale and variance."""
    if not isinstance(config, GPConfig):
        raise TypeError(f"config must be a GPConfig, got {type(config).__name__}")
    kernel = rbf_kernel if config.kernel == "rbf" else matern52_kernel
    return kernel(x1, x2, lengthscale=config.lengthscale, variance=config.variance)


def _cholesky(matrix: Tensor, what: str) -> Tensor:
    factor, info = torch.linalg.cholesky_ex(matrix)
    if bool((info != 0).any()):
        raise ValueError(
            f"{what} is not positive definite in {matrix.dtype} (Cholesky failed); "
            "raise config.noise, remove duplicate inputs or use float64"
        )
    return factor


def _train_factor(x_train: object, y_train: object, config: GPConfig) -> tuple[Tensor, Tensor, Tensor]:
    """(``x: Tensor[N, D]``, ``L: Tensor[N, N]``, ``alpha: Tensor[N]``) with ``alpha = (K + s_n^2 I)^-1 (y - m)``."""
    x = _points("x_train", x_train)
    if x.shape[0] == 0:
        raise ValueError("x_train must contain at least one point, got N = 0")
    y = _targets("y_train", y_train, x.shape[0], x)
    gram = kernel_matrix(x, x, config)
    noisy = gram + config.noise * torch.eye(x.shape[0], dtype=x.dtype)
    factor = _cholesky(noisy, "K + noise * I")
    alpha = torch.cholesky_solve((y - config.mean)[:, None], factor)[:, 0]
    return x, factor, alpha


def gp_posterior(x_train: Tensor, y_train: Tensor, x_test: Tensor, config: GPConfig) -> tuple[Tensor, Tensor]:
    r"""Posterior mean and variance of the latent :math:`f` at ``x_test``, through one Cholesky.

    .. math::

        \begin{aligned}
        \mu &= m + k_*^\top \alpha, \\
        \alpha &= L^{-\top} L^{-1} (y - m), \\
        \sigma^2 &= k(x_*, x_*) - \|L^{-1} k_*\|^2, \\
        L L^\top &= K + \sigma_n^2 I .
        \end{aligned}

    The variance is that of :math:`f(x_*)`; add ``config.noise`` for a new noisy observation.
    Rounding can make :math:`\sigma^2` a few ulps negative where the data pin :math:`f` down; it
    is clamped at 0.

    Args:
        x_train: ``Tensor[N, D]`` observed inputs (``N >= 1``).
        y_train: ``Tensor[N]`` observed values, same dtype.
        x_test: ``Tensor[M, D]`` query inputs.
        config: the :class:`GPConfig`.

    Returns:
        ``(mean: Tensor[M], variance: Tensor[M])``.
    """
    x, factor, alpha = _train_factor(x_train, y_train, config)
    xs = _points("x_test", x_test)
    _same_dim("x_train", x, "x_test", xs)
    cross = kernel_matrix(x, xs, config)  # [N, M]
    mean = config.mean + cross.T @ alpha
    v = torch.linalg.solve_triangular(factor, cross, upper=False)  # [N, M]
    prior = torch.full((xs.shape[0],), float(config.variance), dtype=xs.dtype)  # k(x, x) = s^2 for both kernels
    variance = (prior - (v**2).sum(dim=0)).clamp_min(0.0)
    return mean, variance


def gp_log_marginal_likelihood(x_train: Tensor, y_train: Tensor, config: GPConfig) -> Tensor:
    r"""Log evidence :math:`\log p(y \mid X)` of the data under the GP (a scalar ``Tensor``).

    .. math::

        \begin{aligned}
        \log p(y \mid X) = {}&-\tfrac12 (y - m)^\top \alpha \\
        &- \sum_i \log L_{ii} \\
        &- \tfrac{N}{2} \log 2\pi .
        \end{aligned}

    Differentiable in the inputs and targets (the hyperparameters are plain floats).
    """
    _, factor, alpha = _train_factor(x_train, y_train, config)
    residual = _targets("y_train", y_train, factor.shape[0], factor) - config.mean
    n = factor.shape[0]
    return -0.5 * residual @ alpha - torch.log(torch.diagonal(factor)).sum() - 0.5 * n * math.log(2 * math.pi)


def _grid(name: str, values: object) -> Tensor:
    if isinstance(values, Tensor):
        grid = values.detach().to(torch.float64).reshape(-1)
    elif isinstance(values, Sequence) and not isinstance(values, (str, bytes)):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise TypeError(f"{name} must contain numbers, got {values!r}")
        grid = torch.tensor([float(v) for v in values], dtype=torch.float64)
    else:
        raise TypeError(f"{name} must be a sequence of numbers or a tensor, got {type(values).__name__}")
    if grid.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    if not bool(torch.isfinite(grid).all()) or bool((grid <= 0).any()):
        raise ValueError(f"{name} must be finite and > 0, got {grid.tolist()}")
    return grid


def fit_gp(
    x_train: Tensor,
    y_train: Tensor,
    *,
    kernel: KernelName = "matern52",
    lengthscales: Sequence[float] | Tensor = DEFAULT_LENGTHSCALES,
    noise_ratios: Sequence[float] | Tensor = DEFAULT_NOISE_RATIOS,
) -> GPConfig:
    r"""Type-II maximum likelihood over a grid, with the signal variance profiled out in closed form.

    The prior mean is the sample mean :math:`m = \bar y`. Writing
    :math:`K + \sigma_n^2 I = s^2 (R_\ell + \lambda I)` with :math:`R_\ell` the unit-variance kernel
    matrix and :math:`\lambda = \sigma_n^2 / s^2`, the evidence is maximised over :math:`s^2` at

    .. math::

        \begin{aligned}
        &\hat s^2(\ell, \lambda) \\
        &\ = \frac{1}{N} (y - m)^\top (R_\ell + \lambda I)^{-1} (y - m),
        \end{aligned}

    so only :math:`(\ell, \lambda)` is searched, exhaustively: no optimiser, no local optima,
    the same answer every time. Grid points whose matrix is not positive definite are skipped.

    Args:
        x_train: ``Tensor[N, D]`` (``N >= 2``); the default grids assume inputs in the unit cube.
        y_train: ``Tensor[N]``, not all equal (a constant has no signal to fit).
        kernel: ``"rbf"`` or ``"matern52"``.
        lengthscales: candidate :math:`\ell` (> 0).
        noise_ratios: candidate :math:`\lambda` (> 0).

    Returns:
        The :class:`GPConfig` of highest evidence.
    """
    x = _points("x_train", x_train)
    if x.shape[0] < 2:
        raise ValueError(f"x_train must contain at least two points to fit hyperparameters, got N = {x.shape[0]}")
    y = _targets("y_train", y_train, x.shape[0], x)
    _check_kernel_name(kernel)
    ells, ratios = _grid("lengthscales", lengthscales), _grid("noise_ratios", noise_ratios)
    xd, yd = x.to(torch.float64), y.to(torch.float64)
    mean = float(yd.mean())
    residual = yd - mean
    if float(residual.abs().max()) == 0.0:
        raise ValueError("y_train must not be constant: there is no signal variance to fit")
    n = x.shape[0]
    unit = torch.stack(
        [
            kernel_matrix(xd, xd, GPConfig(kernel=kernel, lengthscale=ell, variance=1.0, noise=0.0))
            for ell in ells.tolist()
        ]
    )  # [L, N, N]
    stacked = unit[:, None] + ratios[None, :, None, None] * torch.eye(n, dtype=torch.float64)  # [L, G, N, N]
    factor, info = torch.linalg.cholesky_ex(stacked)
    rhs = residual[:, None].expand(ells.numel(), ratios.numel(), n, 1)
    quad = (residual * torch.cholesky_solve(rhs, factor)[..., 0]).sum(dim=-1)  # [L, G]
    variance = quad / n
    logdet = 2.0 * torch.log(torch.diagonal(factor, dim1=-2, dim2=-1)).sum(dim=-1) + n * torch.log(variance)
    evidence = -0.5 * n - 0.5 * logdet - 0.5 * n * math.log(2 * math.pi)
    valid = (info == 0) & (variance > 0) & torch.isfinite(evidence)
    if not bool(valid.any()):
        raise ValueError("no (lengthscale, noise_ratio) pair gave a positive-definite matrix; raise noise_ratios")
    flat = int(torch.argmax(torch.where(valid, evidence, -math.inf)))  # first maximum on ties
    i_ell, i_ratio = divmod(flat, ratios.numel())
    ell, ratio, variance = float(ells[i_ell]), float(ratios[i_ratio]), float(variance[i_ell, i_ratio])
    return GPConfig(kernel=kernel, lengthscale=ell, variance=variance, noise=ratio * variance, mean=mean)


# ----------------------------------------------------------------------------- expected improvement


def _ei_inputs(mean: object, std: object, best: object, xi: object) -> tuple[Tensor, Tensor, float]:
    mu = require_float_tensor("mean", mean)
    sigma = require_float_tensor("std", std)
    if mu.shape != sigma.shape:
        raise ValueError(f"mean and std must have the same shape, got {list(mu.shape)} and {list(sigma.shape)}")
    if not bool(torch.isfinite(mu.detach()).all()):
        raise ValueError("mean must be finite, got NaN or inf")
    if not bool(torch.isfinite(sigma.detach()).all()) or bool((sigma.detach() < 0).any()):
        raise ValueError("std must be finite and >= 0 (a standard deviation, not a variance)")
    if isinstance(best, Tensor):
        if best.numel() != 1:
            raise ValueError(f"best must be a scalar, got shape {list(best.shape)}")
        best = float(best.detach())
    require_number("best", best)
    require_number("xi", xi, low=0.0)
    return mu, sigma, float(best) + float(xi)


def _normal_cdf(z: Tensor) -> Tensor:
    r""":math:`\Phi(z) = \tfrac12 \operatorname{erfc}(-z/\sqrt2)`, with full relative accuracy in the lower tail."""
    return 0.5 * torch.special.erfc(-z / math.sqrt(2.0))


def _normal_density(z: Tensor) -> Tensor:
    return torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)


def _unit_improvement(z: Tensor) -> Tensor:
    r""":math:`h(z) = z\,\Phi(z) + \varphi(z)`, the EI of a unit-variance Gaussian, accurate for every :math:`z`.

    For :math:`z < 0` the two terms nearly cancel. Writing :math:`\Phi(z) = \varphi(z)\, m(z)` with
    the Mills ratio :math:`m(z) = \sqrt{\pi/2}\, \operatorname{erfcx}(-z/\sqrt2)` gives
    :math:`h(z) = \varphi(z)\,(1 + z\, m(z))`, which rounds only once before the cancellation
    (relative error :math:`O(z^2\epsilon)`, about 2e-13 at :math:`z = -37` in float64, against
    :math:`O(z^4\epsilon)` for the direct sum). Each branch only sees its own half-line, so no
    overflow leaks into values or gradients.
    """
    negative = z < 0
    zeros = torch.zeros_like(z)
    z_neg, z_pos = torch.where(negative, z, zeros), torch.where(negative, zeros, z)
    mills = math.sqrt(math.pi / 2) * torch.special.erfcx(-z_neg / math.sqrt(2.0))
    lower = _normal_density(z_neg) * (1.0 + z_neg * mills)
    upper = z_pos * _normal_cdf(z_pos) + _normal_density(z_pos)
    return torch.where(negative, lower, upper)


def expected_improvement(mean: Tensor, std: Tensor, best: float | Tensor, *, xi: float = 0.0) -> Tensor:
    r"""Expected improvement :math:`\mathbb E[\max(f - f^* - \xi, 0)]` for :math:`f \sim \mathcal N(\mu, \sigma^2)`.

    .. math::

        \begin{aligned}
        \operatorname{EI} &= (\mu - f^* - \xi)\,\Phi(z) + \sigma\,\varphi(z) \\
                          &= \sigma\,\big(z\,\Phi(z) + \varphi(z)\big), \\
        z &= \frac{\mu - f^* - \xi}{\sigma},
        \end{aligned}

    and :math:`\max(\mu - f^* - \xi, 0)` where :math:`\sigma = 0`. For :math:`z < 0` the two terms
    nearly cancel; the library evaluates :math:`z\Phi(z) + \varphi(z)` through the scaled
    complementary error function (see ``_unit_improvement``), to a relative 1e-12 in float64 down to
    :math:`z \approx -37`; below that the value is subnormal, then 0. Computing :math:`\Phi` with
    ``torch.special.ndtr`` instead is a trap: in torch 2.13 on CPU it loses all relative accuracy
    below :math:`z \approx -7` and returns 0 below about :math:`-8.3`, so the plain formula is
    then wrong by orders of magnitude. The result is clamped at 0 against rounding.
    Differentiable: :math:`\partial\operatorname{EI}/\partial\mu = \Phi(z)` and
    :math:`\partial\operatorname{EI}/\partial\sigma = \varphi(z)` (see :func:`expected_improvement_grad`).

    Args:
        mean: ``Tensor[...]`` posterior means :math:`\mu`.
        std: ``Tensor[...]`` posterior standard deviations :math:`\sigma \ge 0` (same shape).
        best: the incumbent :math:`f^*`, usually the best value observed so far.
        xi: exploration margin :math:`\xi \ge 0`.

    Returns:
        ``Tensor[...]``, the shape of ``mean``, non-negative.
    """
    mu, sigma, threshold = _ei_inputs(mean, std, best, xi)
    improvement = mu - threshold
    positive = sigma > 0
    safe_sigma = torch.where(positive, sigma, torch.ones_like(sigma))
    smooth = safe_sigma * _unit_improvement(improvement / safe_sigma)
    return torch.where(positive, smooth, improvement.clamp_min(0.0)).clamp_min(0.0)


def expected_improvement_grad(
    mean: Tensor, std: Tensor, best: float | Tensor, *, xi: float = 0.0
) -> tuple[Tensor, Tensor]:
    r"""Closed-form partial derivatives of :func:`expected_improvement`: :math:`(\Phi(z), \varphi(z))`.

    Differentiating :math:`\sigma(z\Phi(z) + \varphi(z))` with :math:`\varphi'(z) = -z\varphi(z)`
    leaves :math:`\partial_\mu \operatorname{EI} = \Phi(z)` and
    :math:`\partial_\sigma \operatorname{EI} = \varphi(z)`. Where :math:`\sigma = 0` the derivative
    in :math:`\mu` is the step :math:`\mathbb 1[\mu > f^* + \xi]` and the one in :math:`\sigma` is
    the limit :math:`\varphi(\pm\infty) = 0` (or :math:`\varphi(0)` on the tie).

    Returns:
        ``(d_ei_d_mean, d_ei_d_std)``, each the shape of ``mean``.
    """
    mu, sigma, threshold = _ei_inputs(mean, std, best, xi)
    improvement = mu - threshold
    positive = sigma > 0
    z = improvement / torch.where(positive, sigma, torch.ones_like(sigma))
    density = _normal_density(z)
    d_mean = torch.where(positive, _normal_cdf(z), (improvement > 0).to(mu.dtype))
    tie = torch.where(improvement == 0, 1.0 / math.sqrt(2 * math.pi), 0.0).to(mu.dtype)
    d_std = torch.where(positive, density, tie)
    return d_mean, d_std


# ----------------------------------------------------------------------------- search loops


@dataclass(frozen=True)
class SearchResult:
    """The evaluations of a search, in order.

    Attributes:
        indices: ``Tensor[n]`` long, rows of ``candidates`` that were evaluated.
        x: ``Tensor[n, D]`` the evaluated inputs.
        y: ``Tensor[n]`` the objective values.
    """

    indices: Tensor
    x: Tensor
    y: Tensor

    def best_so_far(self) -> Tensor:
        """``Tensor[n]``: the running maximum of ``y`` (the incumbent after each evaluation)."""
        return torch.cummax(self.y, dim=0).values


Objective = Callable[[Tensor], float]


def _check_search(candidates: object, n_total: int, generator: object) -> Tensor:
    cands = _points("candidates", candidates)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if n_total > cands.shape[0]:
        raise ValueError(f"cannot evaluate {n_total} distinct points among {cands.shape[0]} candidates")
    return cands


def _evaluate(objective: Objective, point: Tensor) -> float:
    value = objective(point)
    if isinstance(value, Tensor):
        value = float(value.detach())
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"objective must return a finite number, got {value!r} at {point.tolist()}")
    return float(value)


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def random_search(
    objective: Objective, candidates: Tensor, *, n_evaluations: int, generator: torch.Generator
) -> SearchResult:
    """Evaluate ``n_evaluations`` distinct candidates drawn uniformly (without replacement).

    Args:
        objective: ``objective(x: Tensor[D]) -> float``, to be maximised.
        candidates: ``Tensor[C, D]`` the search space, discretised.
        n_evaluations: evaluation budget (``<= C``).
        generator: the only source of randomness.
    """
    _positive_int("n_evaluations", n_evaluations)
    cands = _check_search(candidates, n_evaluations, generator)
    order = torch.randperm(cands.shape[0], generator=generator)[:n_evaluations]
    y = torch.tensor([_evaluate(objective, cands[i]) for i in order.tolist()], dtype=cands.dtype)
    return SearchResult(order, cands[order], y)


def bayesian_optimization(
    objective: Objective,
    candidates: Tensor,
    *,
    n_initial: int,
    n_iterations: int,
    generator: torch.Generator,
    kernel: KernelName = "matern52",
    xi: float = 0.0,
    lengthscales: Sequence[float] | Tensor = DEFAULT_LENGTHSCALES,
    noise_ratios: Sequence[float] | Tensor = DEFAULT_NOISE_RATIOS,
) -> SearchResult:
    r"""GP-EI Bayesian optimisation over a finite candidate set (maximisation).

    ``n_initial`` random candidates, then ``n_iterations`` times: fit the GP by :func:`fit_gp`,
    compute :func:`expected_improvement` over :math:`f^* = \max_i y_i` on every unevaluated
    candidate and evaluate the arg-max (the first one on ties). A dense candidate grid replaces
    the inner continuous optimisation of EI, exact up to the grid's resolution in low dimension.

    Args:
        objective: ``objective(x: Tensor[D]) -> float``, to be maximised.
        candidates: ``Tensor[C, D]``; the default hyperparameter grids assume the unit cube.
        n_initial: random evaluations before the first GP fit (>= 2).
        n_iterations: model-guided evaluations (>= 0); ``n_initial + n_iterations <= C``.
        generator: source of the initial design.
        kernel, xi, lengthscales, noise_ratios: as in :func:`fit_gp` and :func:`expected_improvement`.
    """
    _positive_int("n_initial", n_initial, minimum=2)
    _positive_int("n_iterations", n_iterations, minimum=0)
    cands = _check_search(candidates, n_initial + n_iterations, generator)
    chosen = torch.randperm(cands.shape[0], generator=generator)[:n_initial].tolist()
    values = [_evaluate(objective, cands[i]) for i in chosen]
    for _ in range(n_iterations):
        x_seen = cands[chosen]
        y_seen = torch.tensor(values, dtype=cands.dtype)
        if float(y_seen.max() - y_seen.min()) == 0.0:
            # A flat start gives the GP nothing to fit: explore at random until the values differ.
            free = torch.ones(cands.shape[0], dtype=torch.bool)
            free[chosen] = False
            pool = free.nonzero()[:, 0]
            nxt = int(pool[torch.randint(pool.numel(), (1,), generator=generator)])
        else:
            config = fit_gp(x_seen, y_seen, kernel=kernel, lengthscales=lengthscales, noise_ratios=noise_ratios)
            mean, variance = gp_posterior(x_seen, y_seen, cands, config)
            ei = expected_improvement(mean, variance.sqrt(), float(y_seen.max()), xi=xi)
            ei[chosen] = -1.0  # never re-evaluate: the objective is deterministic
            nxt = int(torch.argmax(ei))
        chosen.append(nxt)
        values.append(_evaluate(objective, cands[nxt]))
    index = torch.tensor(chosen, dtype=torch.long)
    return SearchResult(index, cands[index], torch.tensor(values, dtype=cands.dtype))
