"""``require_real_array``: the one real-array check the research and serving modules share.

Every accepted form comes back as a fresh float64 array (or its own dtype with ``dtype=None``);
every failure path raises ``TypeError`` (not an array, wrong dtype) or ``ValueError`` (shape,
size, NaN/inf) naming the argument and saying what was expected and what was found.
"""

from __future__ import annotations

import array
import math
import re

import numpy as np
import pytest
import torch

from nemo_rl_theory._validation import RaggedArrayError, require_real_array

# ----------------------------------------------------------------------------- accepted input


@pytest.mark.parametrize(
    "value",
    [
        [1, 2.5, -3],
        (1, 2.5, -3),
        np.array([1, 2.5, -3], dtype=np.float32),
        torch.tensor([1.0, 2.5, -3.0]),
        torch.tensor([1.0, 2.5, -3.0], dtype=torch.bfloat16),  # no NumPy dtype: widened
        torch.tensor([1.0, 2.5, -3.0], dtype=torch.float16),
        torch.tensor([1.0, 2.5, -3.0], requires_grad=True),
        array.array("d", [1.0, 2.5, -3.0]),
    ],
)
def test_sequences_arrays_and_tensors_come_back_as_float64(value) -> None:
    out = require_real_array("x", value)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (3,)
    np.testing.assert_array_equal(out, [1.0, 2.5, -3.0])


def test_integers_are_real_and_dtype_none_keeps_them() -> None:
    assert require_real_array("x", [1, 2]).dtype == np.float64
    assert require_real_array("x", torch.tensor([1, 2]), dtype=None).dtype == np.int64
    assert require_real_array("x", np.array([1, 2], dtype=np.uint8), dtype=None).dtype == np.uint8
    assert require_real_array("x", np.array([1.0], dtype=np.float32), dtype=None).dtype == np.float32


def test_output_is_a_copy_when_cast() -> None:
    src = np.array([1.0, 2.0])
    out = require_real_array("x", src)
    out[0] = 99.0
    assert src[0] == 1.0
    t = torch.tensor([1.0, 2.0])
    require_real_array("x", t)[0] = 99.0
    assert t[0] == 1.0


def test_nested_lists_and_scalars() -> None:
    assert require_real_array("x", [[1, 2], [3, 4]], ndim=2).shape == (2, 2)
    assert require_real_array("x", 2.5).shape == ()
    assert require_real_array("x", np.float32(2.5)).shape == ()
    assert require_real_array("x", torch.tensor(2.5), allow_scalar=False).shape == ()  # a 0-d tensor is an array
    assert require_real_array("x", np.array(2.5), allow_scalar=False).shape == ()


def test_bool_only_when_allowed() -> None:
    np.testing.assert_array_equal(require_real_array("x", [True, False], allow_bool=True), [1.0, 0.0])
    assert require_real_array("x", torch.tensor([True]), allow_bool=True, dtype=None).dtype == np.bool_
    assert require_real_array("x", True, allow_bool=True).shape == ()


def test_min_size_zero_and_not_finite_when_allowed() -> None:
    assert require_real_array("x", [], min_size=0).shape == (0,)
    out = require_real_array("x", [1.0, math.inf, math.nan], finite=False)
    assert math.isinf(out[1]) and math.isnan(out[2])


# ----------------------------------------------------------------------------- failure paths


class _Opaque:
    pass


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("1.0", "str"),
        (b"1", "bytes"),
        (None, "NoneType"),
        ({1: 2.0}, "dict"),
        ({1.0, 2.0}, "set"),
        (_Opaque(), "_Opaque"),
        ((v for v in [1.0]), "generator"),
        (True, "bool"),
        (np.bool_(False), "bool"),
    ],
)
def test_non_arrays_are_type_errors_naming_the_argument_and_the_type(value, found) -> None:
    with pytest.raises(TypeError, match=rf"^scores must be an array, list or tensor of real numbers, got {found}"):
        require_real_array("scores", value)


def test_what_states_the_expectation() -> None:
    with pytest.raises(TypeError, match=r"^t must be a real number or an array of them, got str$"):
        require_real_array("t", "x", what="a real number or an array of them")


@pytest.mark.parametrize("value", [1.0, 3, np.float64(1.0), 1 + 2j])
def test_scalars_rejected_when_not_allowed(value) -> None:
    with pytest.raises(TypeError, match=f"^x must be .*, got {type(value).__name__}$"):
        require_real_array("x", value, allow_scalar=False)


def test_ragged_sequences_are_both_type_and_value_errors() -> None:
    for error in (TypeError, ValueError, RaggedArrayError):
        with pytest.raises(error, match=r"^x must hold real numbers in a rectangular array"):
            require_real_array("x", [[1.0, 2.0], [3.0]])


@pytest.mark.parametrize(
    ("value", "dtype"),
    [
        ([1 + 2j, 3.0], "complex128"),
        (1 + 2j, "complex128"),
        (torch.tensor([1 + 1j]), "complex64"),
        (np.array([1.0, 2.0], dtype=object), "object"),
        ([1.0, None], "object"),
        (["a", "b"], "<U1"),
        (np.array([b"a"]), "|S1"),
        (np.array(["2020-01-01"], dtype="datetime64[D]"), "datetime64"),
        ([True, False], "bool"),
        (torch.tensor([True]), "bool"),
    ],
)
def test_non_real_dtypes_are_type_errors_naming_the_argument_and_the_dtype(value, dtype) -> None:
    with pytest.raises(TypeError, match=rf"^y must hold real numbers, got dtype {re.escape(dtype)}"):
        require_real_array("y", value)


def test_ndim_mismatch_names_expected_and_found() -> None:
    with pytest.raises(ValueError, match=r"^x must be 1-D, got shape \[1, 2\]$"):
        require_real_array("x", [[1.0, 2.0]], ndim=1)
    with pytest.raises(ValueError, match=r"^x must be 1-D, got shape \[\]$"):
        require_real_array("x", 1.0, ndim=1)
    with pytest.raises(ValueError, match=r"^scores must have shape \[runs, tasks\], got shape \[3\]$"):
        require_real_array("scores", torch.ones(3), ndim=2, layout="[runs, tasks]")


def test_too_few_values_names_expected_and_found() -> None:
    with pytest.raises(ValueError, match=r"^x is empty: x must hold at least one value, got shape \[0\]$"):
        require_real_array("x", [])
    with pytest.raises(ValueError, match=r"^x is empty: x must hold at least 3 values, got shape \[2, 0\]$"):
        require_real_array("x", np.ones((2, 0)), min_size=3)
    with pytest.raises(ValueError, match=r"^x must hold at least 3 values, got 2$"):
        require_real_array("x", torch.ones(2), min_size=3)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_rejected_when_finite(bad) -> None:
    for value in ([1.0, bad], np.array([[1.0], [bad]]), torch.tensor([1.0, bad]), bad):
        with pytest.raises(ValueError, match=r"^x must be finite, got NaN or inf$"):
            require_real_array("x", value)


def test_checks_run_in_order_type_dtype_shape_size_finite() -> None:
    with pytest.raises(TypeError, match="dtype bool"):
        require_real_array("x", [[True]], ndim=1)  # dtype before shape
    with pytest.raises(ValueError, match="1-D"):
        require_real_array("x", [[math.nan]], ndim=1)  # shape before finiteness
    with pytest.raises(ValueError, match="at least 2"):
        require_real_array("x", [math.nan], min_size=2)  # size before finiteness
