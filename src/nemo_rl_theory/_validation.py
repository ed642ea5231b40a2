"""Input checks shared by every public function.

Each check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong
shape or value) with a message that names the argument and says what was expected, so a
bad batch fails loudly at the call instead of surfacing later as a NaN loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
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


#: Tensor float dtypes NumPy has; the others (bfloat16, float8) are widened to float64 first.
_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


class RaggedArrayError(TypeError, ValueError):
    """A nested sequence whose rows differ in length, so it is no array.

    Both a ``TypeError`` (not an array of numbers) and a ``ValueError`` (a shape error, which
    NumPy raises): the modules that now share :func:`require_real_array` raised one or the
    other, and callers catching either keep working (like NumPy's ``AxisError``).
    """


def require_real_array(
    name: str,
    value: object,
    *,
    ndim: int | None = None,
    min_size: int = 1,
    allow_bool: bool = False,
    allow_scalar: bool = True,
    finite: bool = True,
    dtype: type[np.number] | None = np.float64,
    layout: str | None = None,
    what: str = "an array, list or tensor of real numbers",
) -> np.ndarray:
    """Check ``value`` is an array of real numbers and return it as a NumPy array.

    Accepts lists and tuples (nested for more dimensions), NumPy arrays and scalars, Python
    numbers, objects exposing ``__array__`` and torch tensors (detached and copied to the CPU;
    bfloat16/float8 are widened to float64, the dtypes NumPy lacks). The result is a fresh
    ``dtype`` array (float64 by default); ``dtype=None`` keeps the input's integer, floating
    (or, with ``allow_bool``, bool) dtype and may share memory with ``value``.

    Args:
        name: the argument's name, used in every message.
        value: the input to check.
        ndim: the required number of dimensions, or ``None`` for any.
        min_size: the fewest elements accepted (0 accepts an empty array).
        allow_bool: accept bool arrays (cast to ``dtype`` as 0/1) and bool scalars.
        allow_scalar: accept Python and NumPy scalars (as 0-d arrays); 0-d tensors and
            0-d arrays are arrays and always pass this check.
        finite: reject NaN and +-inf.
        dtype: the output dtype, or ``None`` to keep the input's.
        layout: how the shape is described when ``ndim`` fails (``"[runs, tasks]"``);
            the message says ``must be {ndim}-D`` without it.
        what: the expectation stated when ``value`` is not an array at all.

    Raises:
        TypeError: ``value`` is a str, bytes, ``None``, a bool (unless ``allow_bool``), a
            scalar (unless ``allow_scalar``) or another non-array object, or its dtype is
            complex, object, string, datetime or (unless ``allow_bool``) bool; the message
            names ``name`` and the type or dtype found. A ragged sequence raises
            :class:`RaggedArrayError`, both a ``TypeError`` and a ``ValueError``.
        ValueError: wrong number of dimensions, fewer than ``min_size`` elements, or (when
            ``finite``) NaN/inf. The message names ``name``, the expected and the found.
    """
    if isinstance(value, Tensor):
        t = value.detach().cpu().resolve_conj().resolve_neg()
        if t.is_floating_point() and t.dtype not in _NUMPY_FLOATS:
            t = t.to(torch.float64)
        try:
            value = t.numpy()
        except (TypeError, RuntimeError) as err:
            raise TypeError(f"{name} must hold real numbers, got a tensor of dtype {t.dtype} ({err})") from None
    elif (
        isinstance(value, (str, bytes, bytearray))
        or value is None
        or (isinstance(value, (bool, np.bool_)) and not allow_bool)
        or (not allow_scalar and np.isscalar(value))
        or not (
            isinstance(value, (np.ndarray, np.generic, Sequence, int, float, complex))
            or hasattr(value, "__array__")
            or hasattr(value, "__array_interface__")
        )
    ):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise RaggedArrayError(f"{name} must hold real numbers in a rectangular array: {err}") from None
    if arr.dtype.kind not in ("iuf" + ("b" if allow_bool else "")):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        expected = f"have shape {layout}" if layout else f"be {ndim}-D"
        raise ValueError(f"{name} must {expected}, got shape {list(arr.shape)}")
    if arr.size < min_size:
        needed = "one value" if min_size == 1 else f"{min_size} values"
        if arr.size == 0:
            raise ValueError(f"{name} is empty: {name} must hold at least {needed}, got shape {list(arr.shape)}")
        raise ValueError(f"{name} must hold at least {needed}, got {arr.size}")
    if finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return arr if dtype is None else arr.astype(dtype)
