r"""Training-stability tools: global-norm gradient clipping, non-finite guards, spike and entropy monitors.

* :func:`global_grad_norm`, :func:`clip_coefficient`, :func:`clip_grad_norm`: clipping by the
  norm of *all* gradients taken together (Pascanu et al., 2013), with PyTorch's and NeMo RL's
  coefficient :math:`\min(1, c / (\lVert g\rVert + 10^{-6}))` (``policy.max_grad_norm`` is
  :math:`c`). :func:`clip_grad_norm_per_tensor` and :func:`clip_grad_value` are the per-parameter
  variants, which change the direction of the update; :func:`grad_cosine` measures by how much.
* :func:`all_finite` and :func:`guarded_step`: skip an update whose loss or gradient holds NaN or
  inf, leaving parameters *and* optimizer state untouched.
* :class:`RunningMoments` / :func:`running_moments`: exponentially weighted mean and variance
  (Welford's algorithm when ``beta = 1``); :class:`SpikeDetector` / :func:`detect_spikes`: a
  z-score detector on top of them.
* :func:`masked_token_entropy`, :func:`entropy_change_rate` and :class:`EntropyCollapseMonitor`:
  the policy entropy, its first-order change under a logit update (Cui et al., 2025) and a
  monitor that flags its collapse.

All functions are pure (they return new tensors) except :func:`guarded_step`, which is the one
place that touches an optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nemo_rl_theory._validation import as_mask, require_bool, require_float_tensor, require_number
from nemo_rl_theory.logprobs import entropy_from_logits

#: PyTorch's (``clip_grad_norm_``) and NeMo RL's (``clip_grad_by_total_norm_``) epsilon in the clip coefficient.
CLIP_EPS = 1e-6

# ----------------------------------------------------------------------------- gradient norms and clipping


def _grad_list(name: str, grads: object) -> list[Tensor]:
    """The non-``None`` entries of ``grads`` as a list of floating tensors (``ValueError`` if none)."""
    if isinstance(grads, Tensor):
        grads = [grads]
    if not isinstance(grads, Iterable):
        raise TypeError(f"{name} must be a sequence of tensors, got {type(grads).__name__}")
    out: list[Tensor] = []
    for i, g in enumerate(grads):
        if g is None:
            continue
        out.append(require_float_tensor(f"{name}[{i}]", g))
    if not out:
        raise ValueError(
            f"{name} is empty (or all None): nothing to measure; a generator such as model.parameters() "
            "can be consumed only once, so pass a list"
        )
    return out


def _positive_or_inf(name: str, value: object) -> float:
    """A real number in ``(0, inf]`` (``math.inf`` allowed), else ``TypeError``/``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number > 0 or math.inf, got {type(value).__name__}")
    number = float(value)
    if math.isnan(number) or number <= 0:
        raise ValueError(f"{name} must be > 0 or math.inf, got {number}")
    return number


def global_grad_norm(
    grads: Sequence[Tensor | None], norm_type: float = 2.0, *, dtype: torch.dtype | None = None
) -> Tensor:
    r"""The norm of all gradients viewed as one vector.

    .. math::

        \begin{aligned}
        \lVert g \rVert_p &= \Big(\sum_k \lVert g_k \rVert_p^p\Big)^{1/p} \\
        &= \big\lVert (\lVert g_1\rVert_p, \dots, \lVert g_K\rVert_p) \big\rVert_p, \\
        \lVert g \rVert_\infty &= \max_k \max_i |g_{k,i}|
        \end{aligned}

    computed as the norm of the per-tensor norms, as ``torch.nn.utils.get_total_norm`` does.

    Args:
        grads: ``K`` floating tensors of any shapes (``None`` entries, parameters without a
            gradient, are skipped).
        norm_type: :math:`p > 0`, or ``math.inf`` for the max-norm.
        dtype: accumulate in this dtype (default: the gradients' own, as PyTorch). ``torch.float64``
            avoids the overflow of a float32 norm whose gradients are finite but whose squares are not.

    Returns:
        A 0-d tensor. It is NaN if a gradient holds NaN and inf if one holds inf (or the sum of
        powers overflows ``dtype``): detecting that is the point of :func:`guarded_step`.

    Raises:
        ValueError: ``grads`` is empty or all ``None``, or ``norm_type <= 0``.
        TypeError: a gradient is not a floating tensor.
    """
    tensors = _grad_list("grads", grads)
    p = _positive_or_inf("norm_type", norm_type)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
    target = dtype or tensors[0].dtype
    norms = [torch.linalg.vector_norm(g.detach().to(target), p) for g in tensors]
    return torch.linalg.vector_norm(torch.stack(norms), p)


def clip_coefficient(total_norm: Tensor | float, max_norm: float, *, eps: float = CLIP_EPS) -> Tensor:
    r"""The global-norm clip factor :math:`\min\big(1, c / (\lVert g\rVert + \epsilon)\big)`.

    Args:
        total_norm: :math:`\lVert g\rVert`, a non-negative number or 0-d tensor (NaN/inf allowed:
            the factor is then NaN or 0, as in PyTorch).
        max_norm: :math:`c > 0` (NeMo RL's ``policy.max_grad_norm``; ``math.inf`` = no clipping).
        eps: :math:`\epsilon \ge 0`, ``1e-6`` in PyTorch and NeMo RL.

    Returns:
        A 0-d tensor in ``[0, 1]`` for a finite norm. Because of :math:`\epsilon` the factor is
        slightly below 1 already at :math:`\lVert g\rVert = c`: it is exactly 1 only for
        :math:`\lVert g\rVert \le c - \epsilon`.
    """
    c = _positive_or_inf("max_norm", max_norm)
    require_number("eps", eps, low=0.0)
    norm = total_norm if isinstance(total_norm, Tensor) else torch.tensor(float(total_norm), dtype=torch.float64)
    if norm.numel() != 1:
        raise ValueError(f"total_norm must be a scalar, got shape {list(norm.shape)}")
    if bool(norm.detach() < 0):
        raise ValueError(f"total_norm must be >= 0, got {float(norm)}")
    return torch.clamp(c / (norm.detach().reshape(()) + eps), max=1.0)


def clip_grad_norm(
    grads: Sequence[Tensor | None],
    max_norm: float,
    *,
    norm_type: float = 2.0,
    eps: float = CLIP_EPS,
    error_if_nonfinite: bool = True,
) -> tuple[list[Tensor | None], Tensor]:
    r"""Clip by global norm: every :math:`g_k \leftarrow g_k \min\big(1, c / (\lVert g\rVert_p + \epsilon)\big)`.

    One factor for all tensors, so the clipped update points the same way as the raw one. Same
    result as ``torch.nn.utils.clip_grad_norm_`` (which works in place on ``.grad``) and as NeMo
    RL's ``clip_grad_by_total_norm_`` (which multiplies only when the factor is below 1).

    Args:
        grads: ``K`` floating tensors (``None`` entries are passed through as ``None``).
        max_norm: :math:`c > 0`.
        norm_type: :math:`p` of :func:`global_grad_norm`.
        eps: :math:`\epsilon` of :func:`clip_coefficient`.
        error_if_nonfinite: raise ``ValueError`` when the norm is NaN or inf (default). With
            ``False`` the PyTorch behaviour is reproduced: every gradient is multiplied by the
            NaN (or 0) factor, which spreads a single NaN entry to *all* parameters.

    Returns:
        ``(clipped, total_norm)``: new tensors (inputs untouched) and the norm *before* clipping.
    """
    require_bool("error_if_nonfinite", error_if_nonfinite)
    grads = list(grads) if not isinstance(grads, Tensor) else [grads]
    total = global_grad_norm(grads, norm_type)
    if error_if_nonfinite and not bool(torch.isfinite(total)):
        raise ValueError(
            f"the total norm of order {norm_type} of grads is {float(total)} (NaN or inf): "
            "skip this update (see guarded_step) instead of clipping it"
        )
    coef = clip_coefficient(total, max_norm, eps=eps)
    return [None if g is None else g * coef.to(g.dtype) for g in grads], total


def clip_grad_norm_per_tensor(grads: Sequence[Tensor], max_norm: float, *, eps: float = CLIP_EPS) -> list[Tensor]:
    r"""Clip each tensor by its own norm: :math:`g_k \leftarrow g_k \min(1, c / (\lVert g_k\rVert_2 + \epsilon))`.

    A different factor per tensor: the concatenated update is no longer parallel to the gradient.
    """
    tensors = _grad_list("grads", grads)
    return [g * clip_coefficient(torch.linalg.vector_norm(g.detach()), max_norm, eps=eps).to(g.dtype) for g in tensors]


def clip_grad_value(grads: Sequence[Tensor], clip_value: float) -> list[Tensor]:
    r"""Clip every entry: :math:`g_{k,i} \leftarrow \operatorname{clamp}(g_{k,i}, -v, v)` (``clip_grad_value_``)."""
    tensors = _grad_list("grads", grads)
    require_number("clip_value", clip_value, low=0.0, low_inclusive=False)
    return [g.clamp(-clip_value, clip_value) for g in tensors]


def grad_cosine(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    r"""Cosine between two gradients, each a list of tensors concatenated into one vector.

    .. math::

        \cos(a, b) = \frac{\sum_k \langle a_k, b_k\rangle}{\lVert a\rVert_2\,\lVert b\rVert_2}

    Returns a 0-d float64 tensor. Raises ``ValueError`` if the shapes differ or a norm is 0.
    """
    la, lb = _grad_list("a", a), _grad_list("b", b)
    if len(la) != len(lb) or any(x.shape != y.shape for x, y in zip(la, lb, strict=True)):
        raise ValueError(
            f"a and b must be lists of tensors with the same shapes, got {[list(x.shape) for x in la]} "
            f"and {[list(y.shape) for y in lb]}"
        )
    va = torch.cat([x.detach().reshape(-1).double() for x in la])
    vb = torch.cat([y.detach().reshape(-1).double() for y in lb])
    if not (torch.isfinite(va).all() and torch.isfinite(vb).all()):
        raise ValueError("a and b must be finite to have a cosine")
    na, nb = torch.linalg.vector_norm(va), torch.linalg.vector_norm(vb)
    if na == 0 or nb == 0:
        raise ValueError("a and b must be non-zero to have a cosine")
    return (va @ vb) / (na * nb)


# ----------------------------------------------------------------------------- non-finite guards


def all_finite(tensors: Iterable[Tensor | None]) -> bool:
    """``True`` iff every entry of every (non-``None``) tensor is finite."""
    if isinstance(tensors, Tensor):
        tensors = [tensors]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t is not None)


@dataclass(frozen=True)
class GuardedStep:
    """What :func:`guarded_step` did.

    Attributes:
        stepped: whether ``optimizer.step()`` ran.
        grad_norm: the global 2-norm of the gradients *before* clipping (NaN when the loss was
            non-finite and no backward pass ran).
        reason: ``"ok"``, ``"non-finite loss"``, ``"non-finite gradient"`` or ``"rejected"``
            (the ``should_skip`` hook said so).
    """

    stepped: bool
    grad_norm: float
    reason: str


def guarded_step(
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    parameters: Sequence[torch.nn.Parameter],
    *,
    max_grad_norm: float | None = None,
    eps: float = CLIP_EPS,
    should_skip: Callable[[float], bool] | None = None,
) -> GuardedStep:
    r"""Backward, check, clip, update, or skip the update without touching any state.

    .. math::

        \begin{aligned}
        &\theta_{t+1}, s_{t+1} \\
        &\ = \begin{cases}
        \operatorname{step}\big(\theta_t, s_t, \operatorname{clip}_c(g_t)\big) \\
        \quad \text{if } L_t \text{ and } \lVert g_t\rVert \text{ are finite} \\
        \quad \text{(and } \texttt{should\_skip} \text{ is false),}\\
        \theta_t, s_t \quad \text{otherwise,}
        \end{cases}
        \end{aligned}

    with :math:`s` the optimizer state (Adam's moments and step count). A non-finite loss is
    caught before ``backward`` (no NaN gradient is ever written); a non-finite gradient norm
    after it. In both cases the gradients are cleared, so nothing leaks into the next step.

    Args:
        loss: the 0-d loss of this step (its graph reaches ``parameters``).
        optimizer: any ``torch.optim.Optimizer`` over ``parameters``.
        parameters: the parameters whose gradients are checked and clipped, as a list.
        max_grad_norm: :math:`c` of :func:`clip_grad_norm` (``None``: no clipping).
        eps: the clip epsilon.
        should_skip: optional hook ``(pre-clip grad norm) -> bool``, e.g. a
            :class:`SpikeDetector`; ``True`` skips this update.

    Returns:
        A :class:`GuardedStep`.
    """
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise TypeError(f"loss must be a scalar tensor, got {type(loss).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    params = list(parameters)
    if not params:
        raise ValueError("parameters is empty; pass a list (a generator can be consumed only once)")
    if max_grad_norm is not None:
        require_number("max_grad_norm", max_grad_norm, low=0.0, low_inclusive=False)
    optimizer.zero_grad(set_to_none=True)
    if not bool(torch.isfinite(loss.detach())):
        return GuardedStep(False, math.nan, "non-finite loss")
    loss.backward()
    grads = [p.grad for p in params]
    if all(g is None for g in grads):
        raise ValueError("no parameter received a gradient: is the loss connected to parameters?")
    norm = float(global_grad_norm(grads))
    if not math.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return GuardedStep(False, norm, "non-finite gradient")
    if should_skip is not None and should_skip(norm):
        optimizer.zero_grad(set_to_none=True)
        return GuardedStep(False, norm, "rejected")
    if max_grad_norm is not None:
        coef = clip_coefficient(torch.tensor(norm, dtype=torch.float64), max_grad_norm, eps=eps)
        with torch.no_grad():
            for g in grads:
                if g is not None:
                    g.mul_(coef.to(g.dtype))
    optimizer.step()
    return GuardedStep(True, norm, "ok")


# ----------------------------------------------------------------------------- running statistics and spikes


def _check_beta(beta: object) -> float:
    require_number("beta", beta, low=0.0, high=1.0, low_inclusive=False)
    return float(beta)


@dataclass
class RunningMoments:
    r"""Exponentially weighted mean and variance of a stream, updated one value at a time.

    With forgetting factor :math:`\beta \in (0, 1]` (West's weighted update, which is Welford's
    algorithm at :math:`\beta = 1`):

    .. math::

        \begin{aligned}
        W_t &= \beta W_{t-1} + 1, \\
        \mu_t &= \mu_{t-1} + \frac{x_t - \mu_{t-1}}{W_t}, \\
        S_t &= \beta S_{t-1} + (x_t - \mu_{t-1})(x_t - \mu_t), \\
        \sigma_t^2 &= \frac{S_t}{W_t}
        \end{aligned}

    which equal the weighted mean and (population) variance with weights
    :math:`w_i = \beta^{t-i}`, :math:`i = 1..t`. For large :math:`t`, :math:`1/W_t \to 1 - \beta`:
    the usual EMA, but without its bias towards the initial value.
    """

    beta: float = 1.0
    count: int = 0
    weight: float = 0.0
    mean: float = 0.0
    m2: float = 0.0

    def __post_init__(self) -> None:
        self.beta = _check_beta(self.beta)

    def update(self, x: float) -> None:
        """Absorb one finite value (``ValueError`` for NaN/inf, which would poison every later statistic)."""
        value = float(x)
        if not math.isfinite(value):
            raise ValueError(f"x must be finite, got {value}; do not absorb NaN/inf into running statistics")
        self.count += 1
        self.weight = self.beta * self.weight + 1.0
        delta = value - self.mean
        self.mean += delta / self.weight
        self.m2 = self.beta * self.m2 + delta * (value - self.mean)

    @property
    def variance(self) -> float:
        """:math:`\\sigma_t^2 = S_t / W_t` (0 before the first value)."""
        return self.m2 / self.weight if self.weight > 0 else 0.0

    @property
    def sample_variance(self) -> float:
        """Bessel-corrected variance :math:`S_t / (t - 1)`, defined only for ``beta = 1`` and ``t >= 2``."""
        if self.beta != 1.0:
            raise ValueError("sample_variance is the unbiased estimate of Welford's algorithm and needs beta = 1")
        return self.m2 / (self.count - 1) if self.count >= 2 else 0.0


def _stream(name: str, stream: object) -> Tensor:
    t = require_float_tensor(name, stream)
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"{name} must have shape [T] with T >= 1, got {list(t.shape)}")
    return t


def running_moments(stream: Tensor, beta: float = 1.0) -> tuple[Tensor, Tensor]:
    r"""``(mean, variance)``, each ``Tensor[T]`` float64: :class:`RunningMoments` after every value of ``stream``.

    ``stream`` is a finite ``Tensor[T]``; entry ``t`` of the outputs uses values ``0..t``.
    """
    x = _stream("stream", stream)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("stream must be finite (NaN/inf would poison every later statistic)")
    stats = RunningMoments(beta)
    means, variances = [], []
    for value in x.tolist():
        stats.update(value)
        means.append(stats.mean)
        variances.append(stats.variance)
    return torch.tensor(means, dtype=torch.float64), torch.tensor(variances, dtype=torch.float64)


@dataclass
class SpikeDetector:
    r"""Flag values far above the running statistics of the values seen so far.

    .. math::

        \begin{aligned}
        z_t &= \frac{x_t - \mu_{t-1}}{\max(\sigma_{t-1}, \sigma_\text{min})}, \\
        \text{spike}_t &= \big[t > \text{warmup}\big] \wedge \big[z_t > k\big]
        \end{aligned}

    with :math:`\mu, \sigma` from :class:`RunningMoments` (forgetting factor ``beta``).
    A spike, and any NaN/inf value (always flagged, ``z = inf``), is *not* absorbed into the
    statistics, so one outlier neither inflates :math:`\sigma` nor hides the next one. Feed
    :math:`\log \lVert g\rVert` rather than :math:`\lVert g\rVert` for a multiplicative signal.

    Call the detector (``detector(x) -> bool``) to use it as :func:`guarded_step`'s ``should_skip``.
    """

    threshold: float = 6.0
    beta: float = 0.9
    warmup: int = 5
    min_std: float = 1e-8
    moments: RunningMoments = field(init=False)
    z_scores: list[float] = field(init=False, default_factory=list)
    flags: list[bool] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        require_number("threshold", self.threshold, low=0.0, low_inclusive=False)
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 2:
            raise ValueError(f"warmup must be an int >= 2 (a variance needs two values), got {self.warmup!r}")
        require_number("min_std", self.min_std, low=0.0, low_inclusive=False)
        self.moments = RunningMoments(_check_beta(self.beta))

    def __call__(self, x: float) -> bool:
        return self.update(x)

    def update(self, x: float) -> bool:
        """Score ``x``, record ``z`` and the verdict, absorb ``x`` unless flagged; return the verdict."""
        value = float(x)
        if not math.isfinite(value):
            self.z_scores.append(math.inf)
            self.flags.append(True)
            return True
        if self.moments.count < self.warmup:
            z, spike = math.nan, False
        else:
            z = (value - self.moments.mean) / max(math.sqrt(self.moments.variance), self.min_std)
            spike = z > self.threshold
        self.z_scores.append(z)
        self.flags.append(spike)
        if not spike:
            self.moments.update(value)
        return spike


def detect_spikes(
    stream: Tensor, *, threshold: float = 6.0, beta: float = 0.9, warmup: int = 5, min_std: float = 1e-8
) -> tuple[Tensor, Tensor]:
    """``(flags: Tensor[T] bool, z: Tensor[T] float64)`` of a :class:`SpikeDetector` run over ``stream: Tensor[T]``.

    ``z`` is NaN during the warm-up and inf at non-finite values.
    """
    x = _stream("stream", stream)
    detector = SpikeDetector(threshold=threshold, beta=beta, warmup=warmup, min_std=min_std)
    for value in x.tolist():
        detector.update(value)
    return torch.tensor(detector.flags), torch.tensor(detector.z_scores, dtype=torch.float64)


# ----------------------------------------------------------------------------- entropy


def masked_token_entropy(logits: Tensor, mask: Tensor) -> Tensor:
    r"""Mean next-token entropy over the positions where ``mask`` is 1 (the response tokens).

    .. math::

        \begin{aligned}
        \bar H &= \frac{\sum_{b,t} m_{b,t} H_{b,t}}{\sum_{b,t} m_{b,t} + 10^{-8}}, \\
        H_{b,t} &= -\sum_v p_{b,t,v}\log p_{b,t,v}
        \end{aligned}

    Args:
        logits: ``Tensor[B, T, V]``; rows at masked-out positions may hold anything finite.
        mask: ``Tensor[B, T]`` (bool, 0/1 or weights).

    Returns:
        A 0-d tensor in nats (differentiable; detach ``logits`` for monitoring).
    """
    logits = require_float_tensor("logits", logits)
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape [B, T, V], got {list(logits.shape)}")
    weights = as_mask("mask", mask, logits)
    if weights.shape != logits.shape[:2]:
        raise ValueError(f"mask must have shape {list(logits.shape[:2])} (logits without V), got {list(weights.shape)}")
    entropy = entropy_from_logits(logits)
    return (entropy * weights).sum() / (weights.sum() + 1e-8)


def entropy_change_rate(logits: Tensor, update: Tensor) -> Tensor:
    r"""First-order change of the entropy when the logits move along ``update``.

    For :math:`\pi = \operatorname{softmax}(z)` and :math:`z(\eta) = z + \eta u`,

    .. math::

        \begin{aligned}
        &\frac{d}{d\eta} H\big(\pi_{z + \eta u}\big)\Big|_{\eta = 0} \\
        &\quad = -\operatorname{Cov}_{a \sim \pi}\big(\log \pi(a),\, u(a)\big) \\
        &\quad = -\sum_a \pi(a)\big(\log\pi(a) + H\big)\,u(a)
        \end{aligned}

    Cui et al. (2025): with :math:`u = A` (natural policy gradient) the entropy falls whenever
    likely actions have high advantage; with the softmax policy gradient
    :math:`u(a) = \pi(a)(A(a) - \mathbb E_\pi A)` the covariance is with :math:`\pi A`.

    Args:
        logits: ``Tensor[..., V]``.
        update: ``Tensor[..., V]`` the logit direction :math:`u`, same shape.

    Returns:
        ``Tensor[...]``: the rate per distribution (nats per unit :math:`\eta`).
    """
    logits = require_float_tensor("logits", logits)
    update = require_float_tensor("update", update)
    if logits.shape != update.shape or logits.dim() == 0 or logits.shape[-1] == 0:
        raise ValueError(
            f"logits and update must have the same shape [..., V] with V >= 1, got {list(logits.shape)} "
            f"and {list(update.shape)}"
        )
    if not (bool(torch.isfinite(logits).all()) and bool(torch.isfinite(update).all())):
        raise ValueError("logits and update must be finite")
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    entropy = -(p * logp).sum(-1, keepdim=True)
    return -(p * (logp + entropy) * update).sum(-1)


@dataclass
class EntropyCollapseMonitor:
    r"""Flag a step whose policy entropy fell below a fraction of its early level.

    .. math::

        \text{collapse}_t = \big[t > n\big] \wedge \big[H_t < \rho\, \bar H_{1..n}\big]

    with :math:`\bar H_{1..n}` the mean entropy of the first :math:`n` = ``warmup`` steps and
    :math:`\rho` = ``ratio``. A NaN/inf entropy is flagged too.
    """

    ratio: float = 0.5
    warmup: int = 5
    reference: float = field(init=False, default=math.nan)
    history: list[float] = field(init=False, default_factory=list)
    flags: list[bool] = field(init=False, default_factory=list)
    _early: list[float] = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        require_number("ratio", self.ratio, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 1:
            raise ValueError(f"warmup must be a positive int, got {self.warmup!r}")

    def update(self, entropy: float) -> bool:
        """Record ``entropy`` (nats) and return whether this step is flagged."""
        value = float(entropy)
        if math.isfinite(value) and value < 0:
            raise ValueError(f"entropy must be >= 0, got {value}")
        self.history.append(value)
        if not math.isfinite(value):
            flag = True  # never part of the reference
        elif math.isnan(self.reference):
            self._early.append(value)
            if len(self._early) == self.warmup:
                self.reference = sum(self._early) / self.warmup
            flag = False
        else:
            flag = value < self.ratio * self.reference
        self.flags.append(flag)
        return flag
