"""Input checks shared by every public function.

Each check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong
shape or value) with a message that names the argument and says what was expected, so a
bad batch fails loudly at the call instead of surfacing later as a NaN loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def require_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def require_float_tensor(name: str, value: object) -> Tensor:
    t = require_tensor(name, value)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def require_ndim(name: str, t: Tensor, ndims: Sequence[int], layout: str) -> None:
    if t.dim() not in ndims:
        raise ValueError(f"{name} must have shape {layout}, got {_shape(t)}")


def require_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {_shape(a)} and {_shape(b)}")


def as_mask(name: str, mask: object, like: Tensor) -> Tensor:
    """Return ``mask`` as a tensor of ``like``'s floating dtype (bool, int or float accepted).

    Mask entries are weights: 0 drops a position, 1 counts it. Negative or non-finite
    weights are rejected because they would silently flip or poison the reduction.
    """
    m = require_tensor(name, mask)
    if m.dtype == torch.bool:
        return m.to(like.dtype)
    if m.is_complex():
        raise TypeError(f"{name} must be bool, integer or floating, got dtype {m.dtype}")
    if m.is_floating_point():
        if not torch.isfinite(m).all():
            raise ValueError(f"{name} must be finite, got NaN or inf")
    if (m < 0).any():
        raise ValueError(f"{name} must be non-negative (0 = ignore, 1 = count), got a negative entry")
    return m.to(like.dtype)


def require_finite_where(name: str, t: Tensor, counted: Tensor) -> None:
    """Reject NaN/inf at positions that enter the loss (``counted`` is a bool tensor)."""
    bad = ~torch.isfinite(t.detach()) & counted
    if bad.any():
        n_bad = int(bad.sum())
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name} has {n_bad} NaN/inf value(s) at counted (mask != 0) positions, "
            f"first at index {first}; mask such positions out or fix the input"
        )


def require_normalization_factor(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {_shape(value)}")
        number = float(value.detach())
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise TypeError(f"{name} must be a number or a scalar tensor, got {type(value).__name__}")
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite non-negative count, got {number}")


def require_number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Check a config coefficient is a finite real number inside ``[low, high]``; return it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    interval = (
        ("[" if low_inclusive else "(")
        + ("-inf" if low is None else f"{low:g}")
        + ", "
        + ("inf" if high is None else f"{high:g}")
        + ("]" if high_inclusive else ")")
    )
    too_low = low is not None and (v < low or (v == low and not low_inclusive))
    too_high = high is not None and (v > high or (v == high and not high_inclusive))
    if not math.isfinite(v) or too_low or too_high:
        raise ValueError(f"{name} must be a finite number in {interval}, got {v}")
    return v


def require_int(name: str, value: object, *, low: int = 1) -> int:
    """Check a count or size is an ``int`` (not a ``bool``) of at least ``low``; return it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value}")
    return value


def require_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
