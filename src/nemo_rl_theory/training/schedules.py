r"""Learning-rate schedules as closed-form multipliers, their PyTorch/NeMo RL equivalents, and Adam's first steps.

A schedule is a function :math:`m(t)` of the number :math:`t = 0, 1, 2, \dots` of completed
training steps; the learning rate used by update :math:`t` is :math:`\eta_t = \eta\, m(t)` with
:math:`\eta` the base (peak) learning rate. This is the convention of
``torch.optim.lr_scheduler.LambdaLR`` (``lr_lambda``), of the toy trainers' ``lr_schedule`` and
of NeMo RL, whose policy workers call ``scheduler.step()`` once per training step (after all the
optimizer steps of that step's global batch).

Every schedule object has

* ``lr_multiplier(step) -> float`` (also ``schedule(step)``), the closed form;
* ``curve(num_steps) -> Tensor[num_steps]``, the closed form on ``0 .. num_steps - 1`` (float64);
* ``nemo_rl_scheduler(lr)``, the ``policy.scheduler`` entry NeMo RL's YAML takes: a list of
  ``{"name": "torch.optim.lr_scheduler.X", "kwargs": {...}}`` entries closed by
  ``{"milestones": [...]}`` (chained with ``SequentialLR``) or a single ``{"name", "kwargs"}``
  dict (not for :class:`InverseSqrtSchedule`, which no built-in torch scheduler computes);
* ``torch_scheduler(optimizer)``, the same composition built on ``optimizer`` with
  :func:`build_nemo_rl_scheduler`.
"""

from __future__ import annotations

import importlib
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "CONSTANT_FOREVER_ITERS",
    "ConstantWithWarmup",
    "CosineWarmRestarts",
    "InverseSqrtSchedule",
    "WarmupCosineDecay",
    "WarmupLinearDecay",
    "adam_first_update",
    "adam_updates",
    "build_nemo_rl_scheduler",
    "ema_variance_ratio",
]

#: ``total_iters`` of the ``ConstantLR`` entries that hold a value "forever" (as in NeMo RL's configs).
CONSTANT_FOREVER_ITERS = 10_000_000_000

_LR = "torch.optim.lr_scheduler."


# ----------------------------------------------------------------------------- validation


def _check_step(step: object) -> int:
    if isinstance(step, bool) or not isinstance(step, Integral):
        raise TypeError(f"step must be an int (the number of completed training steps), got {type(step).__name__}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return int(step)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_real(name: str, value: object, low: float, high: float, *, open_low: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if (v <= low if open_low else v < low) or v > high:
        bracket = "(" if open_low else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {v}")


def _check_lr(lr: object) -> float:
    if isinstance(lr, bool) or not isinstance(lr, Real) or not (0.0 < float(lr) < math.inf):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    return float(lr)


def _base_lr(optimizer: torch.optim.Optimizer, *, absolute_floor: bool) -> float:
    """The common base lr of ``optimizer``'s groups (``initial_lr`` if a scheduler already set it)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    lrs = {float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups}
    if absolute_floor and len(lrs) > 1:
        raise ValueError(
            f"optimizer has param groups with different learning rates {sorted(lrs)}; eta_min of "
            "CosineAnnealingLR(WarmRestarts) is an absolute lr shared by all groups, so a floor given as a "
            "ratio cannot be expressed: use one lr per optimizer or min_lr_ratio=0"
        )
    return lrs.pop()


# ----------------------------------------------------------------------------- shared pieces


def _warmup(step: int, warmup_steps: int, start_factor: float) -> float:
    r""":math:`s + (1 - s)\, t / W` for :math:`t < W` (``LinearLR(start_factor=s, total_iters=W)``)."""
    return start_factor + (1.0 - start_factor) * step / warmup_steps


def _cosine(fraction: float, floor: float) -> float:
    r""":math:`r + (1 - r)\,\tfrac{1}{2}(1 + \cos \pi f)` for :math:`f \in [0, 1]`."""
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * fraction))


def _absolute(ratio: float, lr: float) -> float:
    """``ratio * lr`` rounded to 15 significant digits, so YAML shows 5e-07 rather than 5.000000000000001e-07."""
    return float(f"{ratio * lr:.15g}")


def _entry(name: str, **kwargs: Any) -> dict[str, Any]:
    return {"name": _LR + name, "kwargs": kwargs}


def _warmup_entry(warmup_steps: int, start_factor: float) -> dict[str, Any]:
    return _entry("LinearLR", start_factor=start_factor, end_factor=1.0, total_iters=warmup_steps)


class _Schedule:
    """Shared behaviour: calling the schedule is :meth:`lr_multiplier`; :meth:`curve` tabulates it."""

    def lr_multiplier(self, step: int) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        return self.lr_multiplier(step)

    def curve(self, num_steps: int) -> Tensor:
        """``Tensor[num_steps]`` float64: :math:`m(0), \\dots, m(\\text{num\\_steps} - 1)`."""
        _check_int("num_steps", num_steps, 0)
        return torch.tensor([self.lr_multiplier(t) for t in range(num_steps)], dtype=torch.float64)

    def nemo_rl_scheduler(self, lr: float) -> list[dict[str, Any]] | dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def torch_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """The schedule as a torch scheduler on ``optimizer``: :meth:`nemo_rl_scheduler` built by NeMo RL's rule."""
        floor = getattr(self, "min_lr_ratio", 0.0) > 0
        return build_nemo_rl_scheduler(optimizer, self.nemo_rl_scheduler(_base_lr(optimizer, absolute_floor=floor)))


# ----------------------------------------------------------------------------- schedules


@dataclass(frozen=True)
class ConstantWithWarmup(_Schedule):
    r"""Linear warmup from :math:`s` to 1 over :math:`W` steps, then constant.

    .. math::

        m(t) = \begin{cases} s + (1 - s)\, t / W & t < W \\ 1 & t \ge W \end{cases}

    The schedule of NeMo RL's example GRPO and DPO configs (``LinearLR`` then
    ``ConstantLR(factor=1)``, milestone :math:`W`). ``warmup_steps=0`` is the constant schedule.
    """

    warmup_steps: int
    warmup_start_factor: float = 0.1

    def __post_init__(self) -> None:
        _check_int("warmup_steps", self.warmup_steps, 0)
        _check_real("warmup_start_factor", self.warmup_start_factor, 0.0, 1.0, open_low=True)

    def lr_multiplier(self, step: int) -> float:
        t = _check_step(step)
        return _warmup(t, self.warmup_steps, self.warmup_start_factor) if t < self.warmup_steps else 1.0

    def nemo_rl_scheduler(self, lr: float) -> list[dict[str, Any]] | dict[str, Any]:
        _check_lr(lr)
        hold = _entry("ConstantLR", factor=1.0, total_iters=CONSTANT_FOREVER_ITERS)
        if self.warmup_steps == 0:
            return hold
        return [_warmup_entry(self.warmup_steps, self.warmup_start_factor), hold, {"milestones": [self.warmup_steps]}]


@dataclass(frozen=True)
class _WarmupThenDecay(_Schedule):
    """Shared fields of the warmup-then-decay schedules: warmup over ``warmup_steps`` from
    ``warmup_start_factor``, decay until ``total_steps`` to ``min_lr_ratio``, then hold."""

    warmup_steps: int
    total_steps: int
    warmup_start_factor: float = 0.1
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        _check_int("warmup_steps", self.warmup_steps, 0)
        _check_int("total_steps", self.total_steps, self.warmup_steps + 1)
        _check_real("warmup_start_factor", self.warmup_start_factor, 0.0, 1.0, open_low=True)
        _check_real("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)


@dataclass(frozen=True)
class WarmupLinearDecay(_WarmupThenDecay):
    r"""Linear warmup over :math:`W` steps, linear decay to :math:`r` at step :math:`T`, then :math:`r`.

    .. math::

        \begin{aligned}
        &m(t) = \begin{cases} s + (1 - s)\, t / W & t < W \\
        1 - (1 - r)\, u(t) & t \in [W, T] \\
        r & t > T \end{cases} \\
        &\text{with } u(t) = \dfrac{t - W}{T - W}
        \end{aligned}
    """

    def lr_multiplier(self, step: int) -> float:
        t = _check_step(step)
        w, big_t, r = self.warmup_steps, self.total_steps, self.min_lr_ratio
        if t < w:
            return _warmup(t, w, self.warmup_start_factor)
        return 1.0 - (1.0 - r) * min(t - w, big_t - w) / (big_t - w)

    def nemo_rl_scheduler(self, lr: float) -> list[dict[str, Any]] | dict[str, Any]:
        _check_lr(lr)
        decay = _entry(
            "LinearLR", start_factor=1.0, end_factor=self.min_lr_ratio, total_iters=self.total_steps - self.warmup_steps
        )
        if self.warmup_steps == 0:
            return decay  # LinearLR holds end_factor after total_iters
        return [_warmup_entry(self.warmup_steps, self.warmup_start_factor), decay, {"milestones": [self.warmup_steps]}]


@dataclass(frozen=True)
class WarmupCosineDecay(_WarmupThenDecay):
    r"""Linear warmup over :math:`W` steps, cosine decay to :math:`r` at step :math:`T`, then :math:`r`.

    .. math::

        \begin{aligned}
        &m(t) = \begin{cases} s + (1 - s)\, t / W & t < W \\
        r + (1 - r)\, h(t) & t \in [W, T] \\
        r & t > T \end{cases} \\
        &\text{with } h(t) = \tfrac{1}{2}\Big(1 + \cos\Big(\pi\, \dfrac{t - W}{T - W}\Big)\Big)
        \end{aligned}

    In torch: ``LinearLR`` then ``CosineAnnealingLR(T_max=T-W, eta_min=r * lr)``, then
    ``ConstantLR(factor=r)`` to hold the floor (``CosineAnnealingLR`` alone climbs back up after
    ``T_max``), with milestones :math:`[W, T]`.
    """

    def lr_multiplier(self, step: int) -> float:
        t = _check_step(step)
        w, big_t = self.warmup_steps, self.total_steps
        if t < w:
            return _warmup(t, w, self.warmup_start_factor)
        return _cosine(min(t - w, big_t - w) / (big_t - w), self.min_lr_ratio)

    def nemo_rl_scheduler(self, lr: float) -> list[dict[str, Any]] | dict[str, Any]:
        lr = _check_lr(lr)
        w, big_t, r = self.warmup_steps, self.total_steps, self.min_lr_ratio
        cosine = _entry("CosineAnnealingLR", T_max=big_t - w, eta_min=_absolute(r, lr))
        hold = _entry("ConstantLR", factor=r, total_iters=CONSTANT_FOREVER_ITERS)
        if w == 0:
            return [cosine, hold, {"milestones": [big_t]}]
        return [_warmup_entry(w, self.warmup_start_factor), cosine, hold, {"milestones": [w, big_t]}]


@dataclass(frozen=True)
class InverseSqrtSchedule(_Schedule):
    r"""The schedule of Vaswani et al. (2017, "Attention Is All You Need"), normalised to a peak of 1.

    Vaswani et al. use :math:`\eta(n) = d^{-1/2} \min(n^{-1/2},\, n\, W^{-3/2})` with
    :math:`n = t + 1`; divided by its peak :math:`d^{-1/2} W^{-1/2}` (reached at :math:`n = W`):

    .. math::

        m(t) = \min\left(\frac{t + 1}{W},\ \sqrt{\frac{W}{t + 1}}\right)

    No built-in torch scheduler computes it: use ``LambdaLR(optimizer, schedule)``.
    """

    warmup_steps: int

    def __post_init__(self) -> None:
        _check_int("warmup_steps", self.warmup_steps, 1)

    def lr_multiplier(self, step: int) -> float:
        n = _check_step(step) + 1
        return min(n / self.warmup_steps, math.sqrt(self.warmup_steps / n))

    def nemo_rl_scheduler(self, lr: float) -> list[dict[str, Any]] | dict[str, Any]:
        raise ValueError(
            "no torch.optim.lr_scheduler class computes the inverse-square-root schedule, and NeMo RL's YAML "
            "names scheduler classes: write an LRScheduler subclass in an importable module and name it there"
        )

    def torch_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """``LambdaLR(optimizer, self)``."""
        _base_lr(optimizer, absolute_floor=False)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, self)


@dataclass(frozen=True)
class CosineWarmRestarts(_Schedule):
    r"""SGDR (Loshchilov and Hutter, 2017): cosine cycles of length :math:`T_i = T_0 T_\text{mult}^i`.

    After an optional linear warmup of :math:`W` steps, with :math:`u = t - W`, cycle :math:`i`
    covers :math:`u \in [\sum_{j<i} T_j, \sum_{j \le i} T_j)` and :math:`T_\text{cur}` counts the steps
    since its start:

    .. math::

        \begin{aligned}
        m(t) &= r + (1 - r) \\
        &\quad \times \tfrac{1}{2}\Big(1 + \cos\Big(\pi\, \frac{T_\text{cur}}{T_i}\Big)\Big)
        \end{aligned}

    The multiplier jumps back to 1 at the start of every cycle (the *restart*).
    """

    first_cycle_steps: int
    cycle_mult: int = 1
    min_lr_ratio: float = 0.0
    warmup_steps: int = 0
    warmup_start_factor: float = 0.1

    def __post_init__(self) -> None:
        _check_int("first_cycle_steps", self.first_cycle_steps, 1)
        _check_int("cycle_mult", self.cycle_mult, 1)
        _check_real("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        _check_int("warmup_steps", self.warmup_steps, 0)
        _check_real("warmup_start_factor", self.warmup_start_factor, 0.0, 1.0, open_low=True)

    def cycle_position(self, step: int) -> tuple[int, int]:
        """``(T_cur, T_i)`` at ``step`` (integer arithmetic; only for ``step >= warmup_steps``)."""
        u = _check_step(step) - self.warmup_steps
        if u < 0:
            raise ValueError(f"step {step} is inside the warmup (warmup_steps={self.warmup_steps})")
        length = self.first_cycle_steps
        while u >= length:
            u -= length
            length *= self.cycle_mult
        return u, length

    def lr_multiplier(self, step: int) -> float:
        t = _check_step(step)
        if t < self.warmup_steps:
            return _warmup(t, self.warmup_steps, self.warmup_start_factor)
        t_cur, t_i = self.cycle_position(t)
        return _cosine(t_cur / t_i, self.min_lr_ratio)

    def nemo_rl_scheduler(self, lr: float) -> list[dict[str, Any]] | dict[str, Any]:
        lr = _check_lr(lr)
        restarts = _entry(
            "CosineAnnealingWarmRestarts",
            T_0=self.first_cycle_steps,
            T_mult=self.cycle_mult,
            eta_min=_absolute(self.min_lr_ratio, lr),
        )
        if self.warmup_steps == 0:
            return restarts
        warmup = _warmup_entry(self.warmup_steps, self.warmup_start_factor)
        return [warmup, restarts, {"milestones": [self.warmup_steps]}]


# ----------------------------------------------------------------------------- NeMo RL's config rule


def _import_scheduler_class(path: object) -> type:
    if not isinstance(path, str) or "." not in path:
        raise ValueError(f"scheduler name must be a dotted class path like '{_LR}LinearLR', got {path!r}")
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"scheduler name {path!r} does not name an importable class") from error
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.lr_scheduler.LRScheduler)):
        raise ValueError(f"scheduler name {path!r} is not a torch.optim.lr_scheduler.LRScheduler subclass")
    return cls


def _make_one(optimizer: torch.optim.Optimizer, entry: Mapping[str, Any]) -> torch.optim.lr_scheduler.LRScheduler:
    extra = set(entry) - {"name", "kwargs"}
    if extra:
        raise ValueError(f"scheduler entry {dict(entry)!r} has unknown keys {sorted(extra)}; expected name, kwargs")
    kwargs = entry.get("kwargs", {})
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"kwargs of scheduler {entry['name']!r} must be a mapping, got {type(kwargs).__name__}")
    return _import_scheduler_class(entry["name"])(optimizer, **kwargs)


def build_nemo_rl_scheduler(
    optimizer: torch.optim.Optimizer,
    config: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The scheduler NeMo RL builds from ``policy.scheduler`` (DTensor policy workers).

    * ``None`` (key absent): ``LambdaLR(optimizer, lambda step: 1)``, a constant learning rate;
    * a mapping ``{"name": "torch.optim.lr_scheduler.X", "kwargs": {...}}``: that one scheduler;
    * a list: every entry with a ``name`` is built in order and one entry ``{"milestones": [...]}``
      gives the steps at which ``SequentialLR`` hands over to the next scheduler (one milestone
      fewer than schedulers).

    Stricter than NeMo RL in one respect: milestones must be positive and strictly increasing.
    The caller steps the result once per training step, after the optimizer, as NeMo RL does.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if config is None:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if isinstance(config, Mapping):
        if "name" not in config:
            raise ValueError(f"a single scheduler config needs a 'name', got {dict(config)!r}")
        return _make_one(optimizer, config)
    if isinstance(config, (str, bytes)) or not isinstance(config, Sequence):
        raise TypeError(f"config must be None, a mapping or a list of mappings, got {type(config).__name__}")
    schedulers, milestones = [], None
    for entry in config:
        if not isinstance(entry, Mapping):
            raise TypeError(f"every scheduler entry must be a mapping, got {type(entry).__name__}")
        if "name" in entry:
            schedulers.append(_make_one(optimizer, entry))
        elif set(entry) == {"milestones"}:
            milestones = list(entry["milestones"])
        else:
            raise ValueError(f"unknown scheduler entry {dict(entry)!r}: expected name/kwargs or milestones")
    if not schedulers:
        raise ValueError("config lists no scheduler (no entry has a 'name')")
    if milestones is None:
        milestones = []
    if len(milestones) != len(schedulers) - 1:
        raise ValueError(
            f"config has {len(schedulers)} schedulers and milestones {milestones}; "
            "SequentialLR needs exactly one milestone fewer than schedulers"
        )
    if any(b <= a for a, b in itertools.pairwise(milestones)) or any(m < 1 for m in milestones):
        raise ValueError(f"milestones must be positive and strictly increasing, got {milestones}")
    return torch.optim.lr_scheduler.SequentialLR(optimizer, schedulers, milestones)


# ----------------------------------------------------------------------------- Adam's first steps


def _check_betas(betas: object) -> tuple[float, float]:
    if not (isinstance(betas, Sequence) and len(betas) == 2):
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for i, b in enumerate(betas):
        _check_real(f"betas[{i}]", b, 0.0, 1.0)
        if float(b) >= 1.0:
            raise ValueError(f"betas[{i}] must be < 1, got {b}")
    return float(betas[0]), float(betas[1])


def _check_eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, Real) or not (0.0 <= float(eps) < math.inf):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


def _check_gradients(name: str, grad: object) -> Tensor:
    if not isinstance(grad, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(grad).__name__}")
    if not grad.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {grad.dtype}")
    if grad.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    if not bool(torch.isfinite(grad).all()):
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return grad


def adam_first_update(
    grad: Tensor,
    *,
    lr: float,
    eps: float = 1e-8,
    param: Tensor | None = None,
    weight_decay: float = 0.0,
) -> Tensor:
    r"""The parameter change of Adam's (or AdamW's) first step, in closed form.

    At step 1 the bias-corrected moments are :math:`\hat m_1 = g` and :math:`\hat v_1 = g^2`
    whatever :math:`\beta_1, \beta_2`, so

    .. math::

        \Delta\theta_1 = -\eta\, \frac{g}{|g| + \epsilon} \;-\; \eta\, \lambda\, \theta_0 ,

    a step of size :math:`\eta` on every coordinate with :math:`|g| \gg \epsilon`, whatever the
    scale of the gradient. The second term is AdamW's decoupled weight decay :math:`\lambda`
    (``param`` = :math:`\theta_0` is needed only when ``weight_decay > 0``).

    Args:
        grad: ``Tensor[...]`` the first gradient.
        lr: :math:`\eta` of the first step (the scheduled one, :math:`\eta\, m(0)`).
        eps: Adam's :math:`\epsilon`, added to :math:`\sqrt{\hat v}`.
        param: ``Tensor[...]`` :math:`\theta_0`, same shape as ``grad``.
        weight_decay: AdamW's :math:`\lambda` (0: plain Adam).

    Returns:
        ``Tensor[...]`` :math:`\Delta\theta_1`, the dtype of ``grad``.
    """
    grad = _check_gradients("grad", grad)
    lr = _check_lr(lr)
    eps = _check_eps(eps)
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, Real) or not (0.0 <= weight_decay < math.inf):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    step = -lr * grad / (grad.abs() + eps)
    if weight_decay > 0:
        if param is None:
            raise ValueError("param (theta_0) is required when weight_decay > 0")
        param = _check_gradients("param", param)
        if param.shape != grad.shape:
            raise ValueError(f"param and grad must have the same shape, got {list(param.shape)} and {list(grad.shape)}")
        step = step - lr * weight_decay * param
    return step


def adam_updates(
    grads: Tensor,
    lrs: Tensor | float,
    *,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> Tensor:
    r"""Adam's parameter changes for a sequence of gradients (no weight decay), as a pure function.

    .. math::

        \begin{aligned}
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \\
        \Delta\theta_t &= -\eta_t\, \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}
        \end{aligned}

    with :math:`m_0 = v_0 = 0`. Because Adam's update does not depend on the parameters, the
    changes follow from the gradients alone.

    Args:
        grads: ``Tensor[S, ...]`` the gradients of steps :math:`1 \dots S`.
        lrs: ``Tensor[S]`` the learning rate of each step, or one float for all.
        betas: :math:`(\beta_1, \beta_2)`.
        eps: :math:`\epsilon`.

    Returns:
        ``Tensor[S, ...]`` :math:`\Delta\theta_1, \dots, \Delta\theta_S`.
    """
    grads = _check_gradients("grads", grads)
    if grads.dim() < 1:
        raise ValueError(f"grads must have shape [S, ...], got a scalar of shape {list(grads.shape)}")
    beta1, beta2 = _check_betas(betas)
    eps = _check_eps(eps)
    steps = grads.shape[0]
    if isinstance(lrs, Tensor):
        if lrs.shape != (steps,):
            raise ValueError(f"lrs must be a float or Tensor[S] with S = {steps}, got shape {list(lrs.shape)}")
        if not bool(torch.isfinite(lrs).all()) or bool((lrs < 0).any()):
            raise ValueError("lrs must be finite and >= 0")
        lr_seq = lrs.to(grads.dtype)
    else:
        lr_seq = torch.full((steps,), _check_lr(lrs), dtype=grads.dtype)
    m = torch.zeros_like(grads[0])
    v = torch.zeros_like(grads[0])
    out = torch.empty_like(grads)
    for i in range(steps):
        t = i + 1
        m = beta1 * m + (1 - beta1) * grads[i]
        v = beta2 * v + (1 - beta2) * grads[i] ** 2
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        out[i] = -lr_seq[i] * m_hat / (v_hat.sqrt() + eps)
    return out


def ema_variance_ratio(beta: float, step: int) -> float:
    r"""Variance of a bias-corrected EMA of ``step`` i.i.d. samples, relative to one sample's variance.

    For :math:`\hat x_t = \frac{1 - \beta}{1 - \beta^t} \sum_{i=1}^{t} \beta^{t-i} x_i` with i.i.d.
    :math:`x_i` of variance :math:`\sigma^2`:

    .. math::

        \frac{\operatorname{Var}(\hat x_t)}{\sigma^2} = \rho(\beta, t)
        = \frac{(1 - \beta)(1 + \beta^t)}{(1 + \beta)(1 - \beta^t)},

    which is 1 at :math:`t = 1` (one sample) and tends to :math:`(1 - \beta)/(1 + \beta)`.
    Applied to Adam: :math:`\hat m_t` of zero-mean gradient noise has variance
    :math:`\sigma^2 \rho(\beta_1, t)`, and :math:`\hat v_t` of Gaussian noise has variance
    :math:`2 \sigma^4 \rho(\beta_2, t)`.
    """
    _check_real("beta", beta, 0.0, 1.0)
    if float(beta) >= 1.0:
        raise ValueError(f"beta must be < 1, got {beta}")
    _check_int("step", step, 1)
    b = float(beta)
    return (1 - b) * (1 + b**step) / ((1 + b) * (1 - b**step))
