"""Bad inputs: every failure path of the public API.

Project rule: bad input raises ``ValueError``/``TypeError`` whose message NAMES THE
ARGUMENT and says what was expected (shape, dtype, finiteness, range); never a silent NaN.
The converse is pinned too: padding (mask == 0) may hold ``-inf``/NaN and then neither the
loss nor its gradient is touched by it, and an all-zero mask gives a loss of exactly 0.

Conventions:

* every ``pytest.raises`` matches with :func:`says`: the argument's name as a whole word
  (``logprobs`` does not match inside ``prev_logprobs``) and, where given, a word of the
  expectation, in either order;
* tests are parametrized over *what* is checked (argument, option) and loop over the bad
  values of that argument inside a :func:`case` block, which labels a failure with the
  value that caused it (this keeps the file near 300 tests and well under 3 s);
* a library gap (an input that is NOT rejected, or gives a NaN) is written as the test the
  fixed library should pass and marked ``xfail(strict=True)``, so a fix makes it XPASS and
  fails the run until the mark is removed. The gaps found so far are fixed; their tests are
  grouped at the end (``TestFormerGaps`` and the overflow cases) as regression tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re

import pytest
import torch

from nemo_rl_theory import (
    ClippedPGConfig,
    DPOConfig,
    calculate_baseline_and_std_per_prompt,
    calculate_kl,
    clipped_pg_loss,
    dpo_loss,
    entropy_from_logits,
    grpo_advantages,
    masked_mean,
    nll_loss,
    token_logprobs,
)

NAN = float("nan")
INF = float("inf")
NON_FINITE = (NAN, INF, -INF)

SHAPE = "shape"
FLOAT = "floating"
FINITE = "NaN|inf|finite"
NUMBER = "finite number|real number"


def says(name: str, *expected: str) -> str:
    """Regex: ``name`` as a whole word and (if given) one of ``expected``, anywhere in the message."""
    pattern = rf"(?=.*(?<!\w){re.escape(name)}(?!\w))"
    if expected:
        pattern += rf"(?=.*(?:{'|'.join(expected)}))"
    return pattern


@contextlib.contextmanager
def case(**what: object):
    """Label one iteration of a loop: a failure inside it reports which case it was."""
    try:
        yield
    except BaseException as exc:  # pytest.raises reports a missing error as pytest.fail.Exception
        if hasattr(exc, "add_note"):  # Python >= 3.11
            exc.add_note(f"failing case: {what}")
        raise


def f32(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def poison(x: torch.Tensor, where: torch.Tensor, value: float) -> torch.Tensor:
    """``x`` with ``value`` written wherever ``where`` is true (a fresh tensor)."""
    return x.masked_fill(where, value)


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, rtol=1e-6, atol=1e-7, equal_nan=True), (actual, expected)


def assert_all_finite(**tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        assert t is not None, f"{name} has no gradient"
        assert torch.isfinite(t).all(), f"{name} is not finite: {t}"


def assert_metrics_finite(metrics: dict[str, float]) -> None:
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    assert not bad, f"non-finite metrics: {bad}"


# --------------------------------------------------------------------------------------
# Shared inputs. B = 3 sequences of T = 4 tokens; MASK pads the ends of rows 0 and 1.
# --------------------------------------------------------------------------------------

LOGPROBS = [[-0.5, -1.0, -1.5, -2.0], [-0.7, -0.2, -3.0, -1.1], [-1.2, -0.4, -0.9, -2.5]]
PREV = [[-0.6, -0.9, -1.4, -2.2], [-0.6, -0.3, -2.8, -1.0], [-1.0, -0.5, -1.0, -2.4]]
GEN = [[-0.55, -1.1, -1.5, -2.1], [-0.65, -0.25, -2.9, -1.05], [-1.1, -0.45, -0.95, -2.45]]
REF = [[-0.4, -1.2, -1.6, -1.9], [-0.8, -0.2, -3.1, -1.2], [-1.3, -0.3, -0.8, -2.6]]
ADV_B = [1.0, -0.5, 0.7]
ADV_BT = [[1.0, 0.8, 1.2, 1.0], [-0.5, -0.4, -0.6, -0.5], [0.7, 0.6, 0.9, 0.7]]
MASK = [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
B, T = 3, 4

#: KL penalty on (default 0.01) and IS correction on: every per-token input is read.
FULL_PG = ClippedPGConfig(use_importance_sampling_correction=True)


def pg_kwargs(**overrides) -> dict:
    kwargs = {
        "logprobs": f32(LOGPROBS),
        "prev_logprobs": f32(PREV),
        "advantages": f32(ADV_B),
        "mask": f32(MASK),
        "config": FULL_PG,
        "generation_logprobs": f32(GEN),
        "reference_logprobs": f32(REF),
        "sample_mask": torch.ones(B),
    }
    kwargs.update(overrides)
    return kwargs


def call_pg(**overrides):
    return clipped_pg_loss(**pg_kwargs(**overrides))


# DPO: P = 3 pairs, chosen T = 4 tokens, rejected T' = 5 tokens.
P, T_REJ = 3, 5
REJECTED = [[-1.1, -0.6, -2.0, -0.3, -1.4], [-0.9, -1.9, -0.8, -0.5, -2.2], [-0.4, -1.3, -1.7, -0.6, -0.9]]
REJECTED_REF = [[-1.0, -0.7, -2.1, -0.4, -1.3], [-1.0, -1.8, -0.7, -0.6, -2.0], [-0.5, -1.2, -1.6, -0.7, -1.0]]
REJECTED_MASK = [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def dpo_kwargs(**overrides) -> dict:
    kwargs = {
        "chosen_logprobs": f32(LOGPROBS),
        "rejected_logprobs": f32(REJECTED),
        "chosen_reference_logprobs": f32(REF),
        "rejected_reference_logprobs": f32(REJECTED_REF),
        "chosen_mask": f32(MASK),
        "rejected_mask": f32(REJECTED_MASK),
        "config": DPOConfig(sft_loss_weight=0.5),
        "pair_mask": torch.ones(P),
    }
    kwargs.update(overrides)
    return kwargs


def call_dpo(**overrides):
    return dpo_loss(**dpo_kwargs(**overrides))


def call_nll(**overrides):
    kwargs = {"logprobs": f32(LOGPROBS), "mask": f32(MASK), "sample_mask": torch.ones(B)}
    kwargs.update(overrides)
    return nll_loss(**kwargs)


# GRPO: two prompts with three responses each.
REWARDS = [1.0, 0.0, 0.5, 0.2, 0.9, 0.4]
PROMPT_IDS = [7, 7, 7, 3, 3, 3]
N = len(REWARDS)


def call_grpo(**overrides):
    kwargs = {"rewards": f32(REWARDS), "prompt_ids": torch.tensor(PROMPT_IDS)}
    kwargs.update(overrides)
    return grpo_advantages(**kwargs)


def call_baseline(**overrides):
    kwargs = {"prompt_ids": torch.tensor(PROMPT_IDS), "rewards": f32(REWARDS), "valid_mask": None}
    kwargs.update(overrides)
    return calculate_baseline_and_std_per_prompt(**kwargs)


def call_masked_mean(**overrides):
    kwargs = {"values": f32(LOGPROBS), "mask": f32(MASK)}
    kwargs.update(overrides)
    return masked_mean(**kwargs)


def call_kl(**overrides):
    kwargs = {"logprobs": f32(LOGPROBS), "reference_logprobs": f32(REF)}
    kwargs.update(overrides)
    return calculate_kl(**kwargs)


V = 5


def logits_and_targets():
    logits = torch.linspace(-2.0, 2.0, 2 * 3 * V).reshape(2, 3, V)
    targets = (torch.arange(2 * 3) % V).reshape(2, 3)
    return logits, targets


#: Bad global normalisation factors (any of global_normalization_factor / global_valid_*).
BAD_FACTORS = [
    (NAN, ValueError, "finite"),
    (INF, ValueError, "finite"),
    (-INF, ValueError, "finite"),
    (-1.0, ValueError, "non-negative"),
    (-1, ValueError, "non-negative"),
    (torch.tensor(NAN), ValueError, "finite"),
    (torch.tensor(-2.0), ValueError, "non-negative"),
    (torch.ones(2), ValueError, "scalar"),
    ("8", TypeError, "number"),
    (True, TypeError, "number"),
    ([8.0], TypeError, "number"),
]

FACTOR_SITES = [
    pytest.param("global_normalization_factor", call_masked_mean, id="masked_mean"),
    pytest.param("global_valid_toks", call_nll, id="nll_loss"),
    pytest.param("global_valid_toks", call_pg, id="clipped_pg_loss.toks"),
    pytest.param("global_valid_seqs", call_pg, id="clipped_pg_loss.seqs"),
    pytest.param("global_valid_pairs", call_dpo, id="dpo_loss"),
]


@pytest.mark.parametrize(("arg", "call"), FACTOR_SITES)
def test_non_finite_negative_or_non_scalar_normalization_factor_is_rejected(arg, call):
    for value, error, expected in BAD_FACTORS:
        with case(value=value), pytest.raises(error, match=says(arg, expected)):
            call(**{arg: value})


# ======================================================================================
# masked_mean
# ======================================================================================


class TestMaskedMean:
    def test_wrong_type_is_rejected(self):
        for arg, value, error, expected in [
            ("values", LOGPROBS, TypeError, "Tensor"),
            ("values", torch.ones(B, T, dtype=torch.int64), TypeError, FLOAT),
            ("values", torch.ones(B, T, dtype=torch.bool), TypeError, FLOAT),
            ("mask", MASK, TypeError, "Tensor"),
            ("mask", torch.ones(B, T, dtype=torch.complex64), TypeError, "bool, integer or floating"),
        ]:
            with case(arg=arg, value=value), pytest.raises(error, match=says(arg, expected)):
                call_masked_mean(**{arg: value})

    def test_mask_that_does_not_broadcast_to_values_is_rejected(self):
        for shape in [(B, T + 1), (B + 1, T), (T, B), (B,), (B, T, 1)]:
            with case(mask_shape=shape), pytest.raises(ValueError, match=says("mask", SHAPE)):
                call_masked_mean(mask=torch.ones(shape))

    def test_mask_that_would_enlarge_values_is_rejected(self):
        # [B] against [B, 1] broadcasts to [B, B]: a silent outer product if allowed.
        with pytest.raises(ValueError, match=says("mask", SHAPE)):
            masked_mean(torch.ones(B, 1), torch.ones(B))

    def test_mask_that_broadcasts_to_values_is_accepted(self):
        assert_same(masked_mean(f32(LOGPROBS), torch.ones(B, 1)), f32(LOGPROBS).mean())

    @pytest.mark.parametrize("dim", [None, -1, 0])
    def test_masked_out_non_finite_values_leave_result_and_gradient_finite(self, dim):
        pad = f32(MASK) == 0
        expected = masked_mean(f32(LOGPROBS), f32(MASK), dim=dim)
        for fill in NON_FINITE:
            with case(fill=fill):
                values = poison(f32(LOGPROBS), pad, fill).requires_grad_()
                out = masked_mean(values, f32(MASK), dim=dim)
                assert_same(out.detach(), expected)
                out.sum().backward()
                assert_all_finite(grad=values.grad)
                assert (values.grad[pad] == 0).all()

    @pytest.mark.parametrize("dim", [None, -1])
    @pytest.mark.parametrize("factor", [None, 5.0], ids=["local", "global"])
    def test_all_zero_mask_gives_exact_zero_and_finite_gradient(self, dim, factor):
        values = torch.full((B, T), NAN).requires_grad_()  # nothing is counted, so NaN is padding
        out = masked_mean(values, torch.zeros(B, T), dim=dim, global_normalization_factor=factor)
        assert (out == 0).all()
        out.sum().backward()
        assert_all_finite(grad=values.grad)


# ======================================================================================
# token_logprobs and entropy_from_logits
# ======================================================================================


def with_bad_row(logits: torch.Tensor, bad_row: str) -> torch.Tensor:
    """Poison position [0, 1] of ``logits``: one NaN entry, one +inf entry, or every entry -inf."""
    if bad_row == "nan-entry":
        logits[0, 1, 3] = NAN
    elif bad_row == "+inf-entry":
        logits[0, 1, 3] = INF
    else:
        logits[0, 1, :] = -INF
    return logits


class TestTokenLogprobs:
    def test_wrong_type_is_rejected(self):
        logits, targets = logits_and_targets()
        for arg, value, expected in [
            ("logits", logits.long(), FLOAT),
            ("logits", logits.tolist(), "Tensor"),
            ("targets", targets.float(), "integer"),
            ("targets", targets.bool(), "integer"),
            ("targets", targets.tolist(), "Tensor"),
        ]:
            inputs = {"logits": logits, "targets": targets, arg: value}
            with case(arg=arg, value=value), pytest.raises(TypeError, match=says(arg, expected)):
                token_logprobs(**inputs)

    def test_targets_shape_mismatch_is_rejected(self):
        logits, _ = logits_and_targets()  # [2, 3, V]
        for shape in [(2, 4), (2, 2), (3, 3), (2, 3, 1), (6,)]:
            targets = torch.zeros(shape, dtype=torch.long)
            with case(shape=shape), pytest.raises(ValueError, match=says("targets", SHAPE)):
                token_logprobs(logits, targets)

    def test_1d_logits_are_rejected(self):
        with pytest.raises(ValueError, match=says("logits", SHAPE)):
            token_logprobs(torch.zeros(V), torch.tensor(0))

    def test_empty_vocabulary_is_rejected(self):
        with pytest.raises(ValueError, match=says("logits", "vocab")):
            token_logprobs(torch.zeros(2, 3, 0), torch.zeros(2, 3, dtype=torch.long))

    @pytest.mark.parametrize("bad_id", [-1, V, V + 7], ids=["negative", "equals-V", "above-V"])
    def test_target_outside_vocabulary_is_rejected(self, bad_id):
        logits, targets = logits_and_targets()
        targets[1, 2] = bad_id
        with pytest.raises(ValueError, match=says("targets", re.escape(f"[0, {V})"))):
            token_logprobs(logits, targets)

    def test_integer_target_dtypes_are_accepted(self):
        logits, targets = logits_and_targets()
        expected = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
        for dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            with case(dtype=dtype):
                assert_same(token_logprobs(logits, targets.to(dtype)), expected)

    @pytest.mark.parametrize("bad_row", ["nan-entry", "+inf-entry", "all-neg-inf"])
    def test_non_finite_logits_row_is_rejected(self, bad_row):
        logits, targets = logits_and_targets()
        with pytest.raises(ValueError, match=says("logits", "NaN|inf")):
            token_logprobs(with_bad_row(logits, bad_row), targets)

    def test_partially_neg_inf_row_is_accepted_with_finite_gradient(self):
        # A masked vocabulary (some -inf logits, never the target's) is legitimate.
        logits, targets = logits_and_targets()
        logits[:, :, 4] = -INF
        logits.requires_grad_()
        out = token_logprobs(logits, targets % 4)
        out.sum().backward()
        assert_all_finite(logprobs=out, grad=logits.grad)

    def test_bad_chunk_size_is_rejected(self):
        logits, targets = logits_and_targets()
        for chunk_size in [0, -1, 1.5, 2.0, True, False, "2"]:
            with (
                case(chunk_size=chunk_size),
                pytest.raises((ValueError, TypeError), match=says("chunk_size", "positive int")),
            ):
                token_logprobs(logits, targets, chunk_size=chunk_size)


class TestEntropyFromLogits:
    def test_wrong_type_is_rejected(self):
        for logits, expected in [(torch.ones(2, 3, V, dtype=torch.int64), FLOAT), ([[0.0, 1.0]], "Tensor")]:
            with case(logits=logits), pytest.raises(TypeError, match=says("logits", expected)):
                entropy_from_logits(logits)

    def test_missing_vocabulary_dim_is_rejected(self):
        for shape in [(), (2, 0)]:
            with case(shape=shape), pytest.raises(ValueError, match=says("logits", "vocab")):
                entropy_from_logits(torch.zeros(shape))

    @pytest.mark.parametrize("bad_row", ["nan-entry", "+inf-entry", "all-neg-inf"])
    def test_non_finite_logits_row_is_rejected(self, bad_row):
        logits, _ = logits_and_targets()
        with pytest.raises(ValueError, match=says("logits", "NaN|inf")):
            entropy_from_logits(with_bad_row(logits, bad_row))

    def test_partially_neg_inf_row_is_accepted_with_finite_gradient(self):
        logits, _ = logits_and_targets()
        logits[:, :, 0] = -INF
        logits.requires_grad_()
        h = entropy_from_logits(logits)
        h.sum().backward()
        assert_all_finite(entropy=h, grad=logits.grad)


# ======================================================================================
# calculate_kl
# ======================================================================================


class TestCalculateKL:
    @pytest.mark.parametrize("arg", ["logprobs", "reference_logprobs", "importance_weights"])
    def test_wrong_type_is_rejected(self, arg):
        for value, expected in [(f32(LOGPROBS).long(), FLOAT), (LOGPROBS, "Tensor")]:
            with case(value=value), pytest.raises(TypeError, match=says(arg, expected)):
                call_kl(**{arg: value})

    @pytest.mark.parametrize("arg", ["reference_logprobs", "importance_weights"])
    def test_shape_mismatch_with_logprobs_is_rejected(self, arg):
        for shape in [(B, T + 1), (B + 1, T), (B,), (B, T, 1)]:
            with case(shape=shape), pytest.raises(ValueError, match=says(arg, SHAPE)):
                call_kl(**{arg: torch.zeros(shape)})

    def test_unknown_kl_type_is_rejected(self):
        for kl_type in ["k4", "K3", "kl", "", None, 3]:
            with case(kl_type=kl_type), pytest.raises(ValueError, match=says("kl_type", "k1")):
                call_kl(kl_type=kl_type)

    @pytest.mark.parametrize("arg", ["input_clamp_value", "output_clamp_value"])
    def test_non_positive_or_non_finite_clamp_is_rejected(self, arg):
        for value, error in [(0.0, ValueError), (-1.0, ValueError), (NAN, ValueError), (INF, ValueError)]:
            with case(value=value), pytest.raises(error, match=says(arg, NUMBER)):
                call_kl(**{arg: value})
        for value in ["20", True]:
            with case(value=value), pytest.raises(TypeError, match=says(arg, NUMBER)):
                call_kl(**{arg: value})


# ======================================================================================
# grpo_advantages and calculate_baseline_and_std_per_prompt
# ======================================================================================

GROUP_FUNCTIONS = [pytest.param(call_grpo, id="grpo_advantages"), pytest.param(call_baseline, id="baseline_and_std")]


@pytest.mark.parametrize("call", GROUP_FUNCTIONS)
class TestGroupStatistics:
    def test_wrong_type_is_rejected(self, call):
        for arg, value, expected in [
            ("rewards", REWARDS, "Tensor"),
            ("rewards", torch.tensor([1, 0, 1, 0, 1, 1]), FLOAT),
            ("prompt_ids", PROMPT_IDS, "Tensor"),
            ("valid_mask", [1] * N, "Tensor"),
        ]:
            with case(arg=arg, value=value), pytest.raises(TypeError, match=says(arg, expected)):
                call(**{arg: value})

    def test_rewards_and_prompt_ids_of_different_length_are_rejected(self, call):
        for prompt_ids in [torch.zeros(N - 1), torch.zeros(N + 2), torch.zeros(N + 1, 2)]:
            with (
                case(prompt_ids_shape=prompt_ids.shape),
                pytest.raises(ValueError, match=says("rewards", "same length") + says("prompt_ids")),
            ):
                call(prompt_ids=prompt_ids.long())

    def test_rewards_that_are_not_1d_are_rejected(self, call):
        for shape in [(N, 1), (1, N), ()]:
            with case(shape=shape), pytest.raises(ValueError, match=says("rewards", re.escape("[N]"))):
                call(rewards=torch.zeros(shape))

    def test_3d_prompt_ids_are_rejected(self, call):
        with pytest.raises(ValueError, match=says("prompt_ids", re.escape("[N, L]"))):
            call(prompt_ids=torch.zeros(N, 2, 1, dtype=torch.long))

    def test_non_finite_float_prompt_ids_are_rejected(self, call):
        with pytest.raises(ValueError, match=says("prompt_ids", "finite")):
            call(prompt_ids=f32([0.0, 0.0, 0.0, 1.0, 1.0, NAN]))

    def test_valid_mask_of_wrong_shape_is_rejected(self, call):
        for shape in [(N - 1,), (N + 1,), (N, 1), ()]:
            with case(shape=shape), pytest.raises(ValueError, match=says("valid_mask", SHAPE)):
                call(valid_mask=torch.ones(shape))

    @pytest.mark.parametrize("valid_mask", [None, torch.ones(N)], ids=["no-valid_mask", "valid-row"])
    def test_non_finite_reward_in_valid_row_is_rejected(self, call, valid_mask):
        for bad in NON_FINITE:
            rewards = f32(REWARDS)
            rewards[4] = bad
            with case(bad=bad), pytest.raises(ValueError, match=says("rewards", FINITE)):
                call(rewards=rewards, valid_mask=valid_mask)


def test_non_finite_reward_in_invalid_row_is_accepted():
    valid = f32([1, 1, 1, 1, 0, 1])
    kept = valid != 0
    clean_baseline, clean_std = call_baseline(valid_mask=valid)
    clean_advantages = call_grpo(valid_mask=valid)
    for bad in NON_FINITE:
        with case(bad=bad):
            rewards = f32(REWARDS)
            rewards[4] = bad
            baseline, std = call_baseline(rewards=rewards, valid_mask=valid)
            advantages = call_grpo(rewards=rewards, valid_mask=valid)
            # The statistics of every row (the invalid one too) come from valid rows only ...
            assert_same(baseline, clean_baseline)
            assert_same(std, clean_std)
            # ... so valid rows are untouched; the invalid row's own advantage r - b is
            # non-finite and must be dropped by the loss's sample_mask.
            assert_same(advantages[kept], clean_advantages[kept])
            assert_all_finite(valid_advantages=advantages[kept])


@pytest.mark.parametrize(
    ("call", "flag"),
    [
        (call_grpo, "use_leave_one_out_baseline"),
        (call_grpo, "normalize_rewards"),
        (call_baseline, "leave_one_out_baseline"),
    ],
    ids=["grpo.use_leave_one_out_baseline", "grpo.normalize_rewards", "baseline.leave_one_out_baseline"],
)
def test_non_bool_group_flag_is_rejected(call, flag):
    for value in [1, 0, "yes", None]:
        with case(value=value), pytest.raises(TypeError, match=says(flag, "bool")):
            call(**{flag: value})


# ======================================================================================
# Masks, across every function that takes one
# ======================================================================================

#: (argument name, call taking the mask, a valid 0/1 mask for it)
MASK_SITES = [
    pytest.param("mask", lambda m: call_masked_mean(mask=m), MASK, id="masked_mean.mask"),
    pytest.param("mask", lambda m: call_nll(mask=m)[0], MASK, id="nll_loss.mask"),
    pytest.param("sample_mask", lambda m: call_nll(sample_mask=m)[0], [1, 0, 1], id="nll_loss.sample_mask"),
    pytest.param("mask", lambda m: call_pg(mask=m)[0], MASK, id="clipped_pg_loss.mask"),
    pytest.param("sample_mask", lambda m: call_pg(sample_mask=m)[0], [1, 0, 1], id="clipped_pg_loss.sample_mask"),
    pytest.param("chosen_mask", lambda m: call_dpo(chosen_mask=m)[0], MASK, id="dpo_loss.chosen_mask"),
    pytest.param("rejected_mask", lambda m: call_dpo(rejected_mask=m)[0], REJECTED_MASK, id="dpo_loss.rejected_mask"),
    pytest.param("pair_mask", lambda m: call_dpo(pair_mask=m)[0], [1, 0, 1], id="dpo_loss.pair_mask"),
    pytest.param("valid_mask", lambda m: call_grpo(valid_mask=m), [1, 1, 0, 1, 1, 1], id="grpo.valid_mask"),
    pytest.param(
        "valid_mask", lambda m: torch.stack(call_baseline(valid_mask=m)), [1, 1, 0, 1, 1, 1], id="baseline.valid_mask"
    ),
]


@pytest.mark.parametrize(("arg", "call", "valid"), MASK_SITES)
class TestMasks:
    def test_bool_int_and_float_masks_are_accepted_and_agree(self, arg, call, valid):
        expected = call(f32(valid))
        for dtype in (torch.bool, torch.uint8, torch.int32, torch.int64, torch.float32, torch.float64):
            with case(dtype=dtype):
                assert_same(call(torch.tensor(valid).to(dtype)), expected)

    def test_negative_or_non_finite_mask_entry_is_rejected(self, arg, call, valid):
        for dtype, bad, expected in [
            (torch.float32, -1.0, "non-negative"),
            (torch.float32, -1e-6, "non-negative"),
            (torch.int64, -1, "non-negative"),
            (torch.float32, NAN, "finite"),
            (torch.float32, INF, "finite"),
            (torch.float32, -INF, "finite|non-negative"),
        ]:
            mask = torch.tensor(valid).to(dtype)
            mask.view(-1)[0] = bad
            with case(mask=mask), pytest.raises(ValueError, match=says(arg, expected)):
                call(mask)

    def test_non_tensor_or_complex_mask_is_rejected(self, arg, call, valid):
        for mask, expected in [(valid, "Tensor"), (torch.tensor(valid, dtype=torch.complex64), "bool, integer")]:
            with case(mask=mask), pytest.raises(TypeError, match=says(arg, expected)):
                call(mask)


# ======================================================================================
# ClippedPGConfig
# ======================================================================================

PG_FLAGS = [f.name for f in dataclasses.fields(ClippedPGConfig) if f.default is False or f.default is True]

IS_ON = {"use_importance_sampling_correction": True}
NO_KL = {"reference_policy_kl_penalty": 0.0}
TIS = "truncated_importance_sampling_type"
TIS_MAX = "truncated_importance_sampling_ratio"
TIS_MIN = "truncated_importance_sampling_ratio_min"


class TestClippedPGConfig:
    def test_defaults_are_valid(self):
        ClippedPGConfig()

    def test_bad_reference_policy_kl_penalty_is_rejected(self):
        for value, error in [
            (-0.01, ValueError),
            (-INF, ValueError),
            (NAN, ValueError),
            (INF, ValueError),
            ("0.1", TypeError),
            (True, TypeError),
            (None, TypeError),
        ]:
            with case(value=value), pytest.raises(error, match=says("reference_policy_kl_penalty", NUMBER)):
                ClippedPGConfig(reference_policy_kl_penalty=value)

    def test_unknown_reference_policy_kl_type_is_rejected(self):
        for kl_type in ["k4", "K3", "kl", "", None, 3]:
            with case(kl_type=kl_type), pytest.raises(ValueError, match=says("reference_policy_kl_type", "k1")):
                ClippedPGConfig(reference_policy_kl_type=kl_type)

    @pytest.mark.parametrize("key", ["kl_input_clamp_value", "kl_output_clamp_value"])
    def test_bad_kl_clamp_is_rejected(self, key):
        for value, error in [
            (0.0, ValueError),
            (-1.0, ValueError),
            (NAN, ValueError),
            (INF, ValueError),
            ("20", TypeError),
            (True, TypeError),
        ]:
            with case(value=value), pytest.raises(error, match=says(key, NUMBER)):
                ClippedPGConfig(**{key: value})

    @pytest.mark.parametrize("key", ["ratio_clip_min", "ratio_clip_max"])
    def test_clip_bound_outside_zero_one_is_rejected(self, key):
        for value in [-0.1, 1.0, 1.5, NAN, INF]:
            with case(value=value), pytest.raises(ValueError, match=says(key, re.escape("[0, 1)"))):
                ClippedPGConfig(**{key: value})
        for value in ["0.2", True, None]:
            with case(value=value), pytest.raises(TypeError, match=says(key, "real number")):
                ClippedPGConfig(**{key: value})

    def test_clip_bounds_inside_zero_one_are_accepted(self):
        for low, high in [(0.0, 0.0), (0.999, 0.999), (0.2, 0.28)]:
            ClippedPGConfig(ratio_clip_min=low, ratio_clip_max=high)

    def test_cispo_accepts_min_up_to_one_and_any_non_negative_max(self):
        for low, high in [(1.0, 0.0), (1.0, 5.0), (0.0, 1e3)]:
            with case(low=low, high=high):
                cfg = ClippedPGConfig(use_cispo=True, ratio_clip_min=low, ratio_clip_max=high)
                loss, _ = call_pg(config=cfg)
                assert torch.isfinite(loss)

    def test_cispo_clip_bound_out_of_range_is_rejected(self):
        for key, value, interval in [
            ("ratio_clip_min", 1.01, "[0, 1]"),
            ("ratio_clip_min", -0.1, "[0, 1]"),
            ("ratio_clip_min", NAN, "[0, 1]"),
            ("ratio_clip_max", -0.1, "[0, inf]"),
            ("ratio_clip_max", INF, "[0, inf]"),
            ("ratio_clip_max", NAN, "[0, inf]"),
        ]:
            with case(key=key, value=value), pytest.raises(ValueError, match=says(key, re.escape(interval))):
                ClippedPGConfig(use_cispo=True, **{key: value})

    def test_dual_clip_constant_not_above_one_is_rejected(self):
        for value in [1.0, 0.5, 0.0, -3.0, NAN, INF]:
            with case(value=value), pytest.raises(ValueError, match=says("ratio_clip_c", re.escape("(1, inf]"))):
                ClippedPGConfig(ratio_clip_c=value)
        for value in ["3", True]:
            with case(value=value), pytest.raises(TypeError, match=says("ratio_clip_c", "real number")):
                ClippedPGConfig(ratio_clip_c=value)

    def test_dual_clip_constant_just_above_one_is_accepted(self):
        ClippedPGConfig(ratio_clip_c=1.0001)

    @pytest.mark.parametrize("flag", PG_FLAGS)
    def test_non_bool_flag_is_rejected(self, flag):
        for value in [1, 0, "True", None, torch.tensor(True)]:
            with case(value=value), pytest.raises(TypeError, match=says(flag, "bool")):
                ClippedPGConfig(**{flag: value})

    def test_gspo_with_token_level_loss_is_rejected(self):
        with pytest.raises(ValueError, match=says("sequence_level_importance_ratios", "token_level_loss")):
            ClippedPGConfig(sequence_level_importance_ratios=True, token_level_loss=True)

    def test_gspo_with_sequence_level_loss_is_accepted(self):
        ClippedPGConfig(sequence_level_importance_ratios=True, token_level_loss=False)

    def test_force_on_policy_ratio_with_disable_ppo_ratio_is_rejected(self):
        with pytest.raises(ValueError, match=says("force_on_policy_ratio", "disable_ppo_ratio")):
            ClippedPGConfig(force_on_policy_ratio=True, disable_ppo_ratio=True)

    @pytest.mark.parametrize(
        ("extra", "named"),
        [
            ({"disable_ppo_ratio": True}, "disable_ppo_ratio"),
            ({"force_on_policy_ratio": True}, "force_on_policy_ratio"),
            ({"sequence_level_importance_ratios": True, "token_level_loss": False}, "sequence_level_importance_ratios"),
            ({"ratio_clip_c": 3.0}, "ratio_clip_c"),
            ({"token_level_loss": False}, "token_level_loss"),
        ],
        ids=["disable_ppo_ratio", "force_on_policy_ratio", "gspo", "dual-clip", "sequence-level-loss"],
    )
    def test_cispo_incompatibility_is_rejected(self, extra, named):
        with pytest.raises(ValueError, match=says("use_cispo", named)):
            ClippedPGConfig(use_cispo=True, **extra)

    def test_unknown_truncation_type_is_rejected(self):
        for kind in ["TIS", "clip", "", "seq_mask_tis", 1]:
            with case(kind=kind), pytest.raises(ValueError, match=says(TIS, "tis")):
                ClippedPGConfig(**IS_ON, **{TIS: kind, TIS_MAX: 2.0})

    def test_truncation_ratio_without_type_is_rejected(self):
        for bounds in [{TIS_MAX: 2.0}, {TIS_MIN: 0.5}, {TIS_MAX: 2.0, TIS_MIN: 0.5}]:
            with case(bounds=bounds), pytest.raises(ValueError, match=says(TIS, "None")):
                ClippedPGConfig(**IS_ON, **bounds)

    @pytest.mark.parametrize("kind", ["tis", "icepop", "seq-mask-tis"])
    def test_truncation_type_without_ratio_is_rejected(self, kind):
        with pytest.raises(ValueError, match=says(TIS_MAX, "requires")):
            ClippedPGConfig(**IS_ON, **{TIS: kind, TIS_MIN: 0.5})

    @pytest.mark.parametrize("kind", ["icepop", "seq-mask-tis"])
    def test_two_sided_truncation_without_min_is_rejected(self, kind):
        with pytest.raises(ValueError, match=says(TIS_MIN, "requires")):
            ClippedPGConfig(**IS_ON, **{TIS: kind, TIS_MAX: 2.0})

    @pytest.mark.parametrize("kind", ["tis", "icepop", "seq-mask-tis"])
    def test_truncation_without_importance_sampling_correction_is_rejected(self, kind):
        with pytest.raises(ValueError, match=says("use_importance_sampling_correction", re.escape(repr(kind)))):
            ClippedPGConfig(**{TIS: kind, TIS_MAX: 2.0, TIS_MIN: 0.5})

    @pytest.mark.parametrize("kind", ["tis", "icepop", "seq-mask-tis"])
    def test_truncation_min_above_max_is_rejected(self, kind):
        with pytest.raises(ValueError, match=says(TIS_MIN, "<=")):
            ClippedPGConfig(**IS_ON, **{TIS: kind, TIS_MAX: 1.5, TIS_MIN: 2.0})

    def test_bad_truncation_bound_is_rejected(self):
        for key, value, error in [
            (TIS_MAX, 0.0, ValueError),
            (TIS_MAX, -1.0, ValueError),
            (TIS_MAX, NAN, ValueError),
            (TIS_MAX, INF, ValueError),
            (TIS_MAX, "2", TypeError),
            (TIS_MIN, -0.5, ValueError),
            (TIS_MIN, NAN, ValueError),
            (TIS_MIN, "0.5", TypeError),
        ]:
            bounds = {TIS_MAX: 2.0, TIS_MIN: 0.5, key: value}
            with case(key=key, value=value), pytest.raises(error, match=says(key, NUMBER)):
                ClippedPGConfig(**IS_ON, **{TIS: "icepop"}, **bounds)

    def test_seq_mask_tis_with_gspo_is_rejected(self):
        with pytest.raises(ValueError, match=says("sequence_level_importance_ratios", "seq-mask-tis")):
            ClippedPGConfig(
                **IS_ON,
                **{TIS: "seq-mask-tis", TIS_MAX: 2.0, TIS_MIN: 0.5},
                sequence_level_importance_ratios=True,
                token_level_loss=False,
            )


# ======================================================================================
# clipped_pg_loss
# ======================================================================================

#: Per-token inputs of clipped_pg_loss compared against logprobs (all read under FULL_PG).
PG_TOKEN_INPUTS = ["prev_logprobs", "generation_logprobs", "reference_logprobs"]

#: Configurations exercising every option that reads a per-token input.
PG_CONFIGS = {
    "ppo+kl-k3": ClippedPGConfig(),
    "kl-k1": ClippedPGConfig(reference_policy_kl_type="k1"),
    "kl-k2-no-clamps": ClippedPGConfig(
        reference_policy_kl_type="k2", kl_input_clamp_value=None, kl_output_clamp_value=None
    ),
    "sequence-level-loss": ClippedPGConfig(token_level_loss=False),
    "dual-clip": ClippedPGConfig(ratio_clip_c=3.0),
    "dapo-asymmetric": ClippedPGConfig(ratio_clip_min=0.2, ratio_clip_max=0.28),
    "reinforce": ClippedPGConfig(disable_ppo_ratio=True),
    "force-on-policy": ClippedPGConfig(force_on_policy_ratio=True),
    "cispo": ClippedPGConfig(use_cispo=True, ratio_clip_min=1.0, ratio_clip_max=4.0),
    "gspo": ClippedPGConfig(sequence_level_importance_ratios=True, token_level_loss=False),
    "is-correction": ClippedPGConfig(**IS_ON),
    "on-policy-kl": ClippedPGConfig(use_on_policy_kl_approximation=True),
    "tis": ClippedPGConfig(**IS_ON, **{TIS: "tis", TIS_MAX: 1.05}),
    "tis-two-sided": ClippedPGConfig(**IS_ON, **{TIS: "tis", TIS_MAX: 1.05, TIS_MIN: 0.95}),
    "icepop": ClippedPGConfig(**IS_ON, **{TIS: "icepop", TIS_MAX: 1.05, TIS_MIN: 0.95}),
    "seq-mask-tis": ClippedPGConfig(**IS_ON, **{TIS: "seq-mask-tis", TIS_MAX: 1.2, TIS_MIN: 0.8}),
    "gspo+is+tis": ClippedPGConfig(
        **IS_ON, **{TIS: "tis", TIS_MAX: 1.05}, sequence_level_importance_ratios=True, token_level_loss=False
    ),
    "everything-token-level": ClippedPGConfig(
        **IS_ON,
        **{TIS: "icepop", TIS_MAX: 1.05, TIS_MIN: 0.95},
        use_on_policy_kl_approximation=True,
        ratio_clip_c=3.0,
    ),
}


class TestClippedPGLoss:
    def test_config_that_is_not_a_clipped_pg_config_is_rejected(self):
        for config in [ClippedPGConfig, DPOConfig(), {"ratio_clip_min": 0.2}, "ppo"]:
            with case(config=config), pytest.raises(TypeError, match=says("config", "ClippedPGConfig")):
                call_pg(config=config)

    @pytest.mark.parametrize("arg", ["logprobs", "prev_logprobs", "advantages", *PG_TOKEN_INPUTS[1:]])
    def test_wrong_type_is_rejected(self, arg):
        good = pg_kwargs()[arg]
        for value, expected in [(good.long(), FLOAT), (good.tolist(), "Tensor"), (good.numpy(), "Tensor")]:
            with case(value=value), pytest.raises(TypeError, match=says(arg, expected)):
                call_pg(**{arg: value})

    def test_python_float_advantage_is_rejected(self):
        with pytest.raises(TypeError, match=says("advantages", "Tensor")):
            call_pg(advantages=1.0)

    def test_logprobs_of_wrong_ndim_are_rejected(self):
        for shape in [(B * T,), (B, T, 1), (1, B, T), ()]:
            with case(shape=shape), pytest.raises(ValueError, match=says("logprobs", re.escape("[B, T]"))):
                call_pg(logprobs=torch.zeros(shape))

    @pytest.mark.parametrize("arg", ["mask", *PG_TOKEN_INPUTS])
    def test_token_input_shape_mismatch_with_logprobs_is_rejected(self, arg):
        for shape in [(B, T + 1), (B, T - 1), (B + 1, T), (B - 1, T), (B, T, 1), (B,)]:
            with case(shape=shape), pytest.raises(ValueError, match=says(arg, SHAPE) + says("logprobs")):
                call_pg(**{arg: torch.zeros(shape)})

    def test_advantages_of_wrong_length_or_shape_are_rejected(self):
        for shape in [(B - 1,), (B + 1,), (B, T + 1), (B, T - 1), (B + 1, T), (B, T, 1), (B, 1), ()]:
            with case(shape=shape), pytest.raises(ValueError, match=says("advantages", SHAPE)):
                call_pg(advantages=torch.zeros(shape))

    def test_sample_mask_of_wrong_shape_is_rejected(self):
        for shape in [(B - 1,), (B + 1,), (B, 1), (B, T), ()]:
            with case(shape=shape), pytest.raises(ValueError, match=says("sample_mask", SHAPE)):
                call_pg(sample_mask=torch.ones(shape))

    @pytest.mark.parametrize("arg", ["logprobs", *PG_TOKEN_INPUTS, "advantages"])
    def test_non_finite_token_input_at_counted_position_is_rejected(self, arg):
        for bad in NON_FINITE:
            inputs = pg_kwargs(advantages=f32(ADV_BT))
            inputs[arg] = inputs[arg].clone()
            inputs[arg][1, 1] = bad  # MASK[1][1] == 1
            with case(bad=bad), pytest.raises(ValueError, match=says(arg, FINITE)):
                clipped_pg_loss(**inputs)

    def test_non_finite_per_sequence_advantage_of_counted_sequence_is_rejected(self):
        for bad in NON_FINITE:
            with case(bad=bad), pytest.raises(ValueError, match=says("advantages", FINITE)):
                call_pg(advantages=f32([1.0, bad, 0.7]))

    def test_missing_prev_logprobs_without_force_on_policy_ratio_is_rejected(self):
        with pytest.raises(ValueError, match=says("prev_logprobs", "force_on_policy_ratio")):
            call_pg(prev_logprobs=None)

    def test_missing_prev_logprobs_with_force_on_policy_ratio_is_accepted(self):
        loss, _ = call_pg(prev_logprobs=None, config=ClippedPGConfig(force_on_policy_ratio=True))
        assert torch.isfinite(loss)

    @pytest.mark.parametrize("kl_type", ["k1", "k2", "k3"])
    def test_kl_penalty_without_reference_logprobs_is_rejected(self, kl_type):
        cfg = ClippedPGConfig(reference_policy_kl_penalty=0.1, reference_policy_kl_type=kl_type)
        with pytest.raises(ValueError, match=says("reference_logprobs", "reference_policy_kl_penalty")):
            call_pg(config=cfg, reference_logprobs=None)

    def test_zero_kl_penalty_without_reference_logprobs_is_accepted(self):
        loss, _ = call_pg(config=ClippedPGConfig(reference_policy_kl_penalty=0.0), reference_logprobs=None)
        assert torch.isfinite(loss)

    @pytest.mark.parametrize(
        ("config", "option"),
        [
            (ClippedPGConfig(**IS_ON), "use_importance_sampling_correction"),
            (ClippedPGConfig(use_on_policy_kl_approximation=True), "use_on_policy_kl_approximation"),
            (
                ClippedPGConfig(use_on_policy_kl_approximation=True, reference_policy_kl_penalty=0.0),
                "use_on_policy_kl_approximation",
            ),
            (PG_CONFIGS["icepop"], "use_importance_sampling_correction"),
        ],
        ids=["is-correction", "on-policy-kl", "on-policy-kl-zero-penalty", "icepop"],
    )
    def test_importance_sampling_option_without_generation_logprobs_is_rejected(self, config, option):
        with pytest.raises(ValueError, match=says("generation_logprobs", option)):
            call_pg(config=config, generation_logprobs=None)

    @pytest.mark.parametrize("name", list(PG_CONFIGS))
    def test_non_finite_padding_leaves_loss_and_gradient_finite(self, name):
        # Row 2 is dropped by sample_mask only; rows 0 and 1 end in token-mask padding.
        mask, sample_mask = f32(MASK), f32([1, 1, 0])
        pad = (mask * sample_mask[:, None]) == 0
        for fill in NON_FINITE:
            for advantages, dirty_advantages in [
                (f32(ADV_BT), poison(f32(ADV_BT), pad, NAN)),
                (f32(ADV_B), poison(f32(ADV_B), sample_mask == 0, NAN)),
            ]:
                with case(fill=fill, advantages_shape=advantages.shape):
                    clean = pg_kwargs(
                        config=PG_CONFIGS[name], advantages=advantages, mask=mask, sample_mask=sample_mask
                    )
                    dirty = {
                        **clean,
                        "logprobs": poison(f32(LOGPROBS), pad, fill).requires_grad_(),
                        "prev_logprobs": poison(f32(PREV), pad, NAN),
                        "advantages": dirty_advantages,
                        "generation_logprobs": poison(f32(GEN), pad, -INF),
                        "reference_logprobs": poison(f32(REF), pad, fill),
                    }
                    loss, metrics = clipped_pg_loss(**dirty)
                    clean_loss, clean_metrics = clipped_pg_loss(**clean)
                    assert_same(loss.detach(), clean_loss)
                    assert metrics == pytest.approx(clean_metrics)
                    loss.backward()
                    grad = dirty["logprobs"].grad
                    assert_all_finite(loss=loss, grad=grad)
                    assert (grad[pad] == 0).all()
                    assert_metrics_finite(metrics)

    @pytest.mark.parametrize(
        "name", ["ppo+kl-k3", "sequence-level-loss", "gspo", "everything-token-level", "cispo", "seq-mask-tis"]
    )
    def test_all_zero_mask_gives_exact_zero_and_finite_gradient(self, name):
        for zeroed in [{"mask": torch.zeros(B, T)}, {"sample_mask": torch.zeros(B)}]:
            for factors in [{}, {"global_valid_toks": 7.0, "global_valid_seqs": 5.0}]:
                with case(zeroed=list(zeroed), factors=factors):
                    logprobs = torch.full((B, T), NAN).requires_grad_()  # nothing is counted: all padding
                    loss, metrics = call_pg(
                        config=PG_CONFIGS[name],
                        logprobs=logprobs,
                        prev_logprobs=torch.full((B, T), NAN),
                        advantages=torch.full((B,), NAN),
                        generation_logprobs=torch.full((B, T), -INF),
                        reference_logprobs=torch.full((B, T), NAN),
                        **zeroed,
                        **factors,
                    )
                    assert loss.item() == 0.0
                    loss.backward()
                    assert_all_finite(grad=logprobs.grad)
                    # probs_ratio_min/max are +-inf by design (identities of min/max); never NaN.
                    assert not any(math.isnan(v) for v in metrics.values()), metrics


# ======================================================================================
# DPOConfig and dpo_loss
# ======================================================================================


class TestDPOConfig:
    def test_beta_must_be_a_non_negative_finite_number(self):
        for value, error in [
            (-0.05, ValueError),
            (-INF, ValueError),
            (NAN, ValueError),
            (INF, ValueError),
            ("0.1", TypeError),
            (True, TypeError),
            (None, TypeError),
        ]:
            with (
                case(value=value),
                pytest.raises(error, match=says("reference_policy_kl_penalty", re.escape("[0, inf]") + "|real number")),
            ):
                DPOConfig(reference_policy_kl_penalty=value)

    def test_zero_beta_is_accepted_and_gives_log_2(self):
        # Deliberate (commit 3c3577f, like NeMo RL): beta = 0 is allowed; the preference loss is ln 2.
        loss, _ = call_dpo(config=DPOConfig(reference_policy_kl_penalty=0.0))
        assert_same(loss.detach(), f32(math.log(2.0)))

    @pytest.mark.parametrize("key", ["preference_loss_weight", "sft_loss_weight"])
    def test_negative_or_non_finite_loss_weight_is_rejected(self, key):
        for value, error in [
            (-1.0, ValueError),
            (-1e-9, ValueError),
            (NAN, ValueError),
            (INF, ValueError),
            ("1", TypeError),
            (True, TypeError),
        ]:
            with case(value=value), pytest.raises(error, match=says(key, re.escape("[0, inf]") + "|real number")):
                DPOConfig(**{key: value})

    @pytest.mark.parametrize("key", ["preference_average_log_probs", "sft_average_log_probs"])
    def test_non_bool_flag_is_rejected(self, key):
        for value in [1, 0, "False", None]:
            with case(value=value), pytest.raises(TypeError, match=says(key, "bool")):
                DPOConfig(**{key: value})


DPO_TOKEN_INPUTS = ["chosen_logprobs", "rejected_logprobs", "chosen_reference_logprobs", "rejected_reference_logprobs"]

DPO_CONFIGS = {
    "preference-only": DPOConfig(),
    "with-sft": DPOConfig(sft_loss_weight=0.5),
    "averaged": DPOConfig(sft_loss_weight=1.0, preference_average_log_probs=True, sft_average_log_probs=True),
}


class TestDPOLoss:
    def test_config_that_is_not_a_dpo_config_is_rejected(self):
        for config in [DPOConfig, ClippedPGConfig(), {"reference_policy_kl_penalty": 0.1}]:
            with case(config=config), pytest.raises(TypeError, match=says("config", "DPOConfig")):
                call_dpo(config=config)

    @pytest.mark.parametrize("arg", DPO_TOKEN_INPUTS)
    def test_wrong_type_is_rejected(self, arg):
        good = dpo_kwargs()[arg]
        for value, expected in [(good.long(), FLOAT), (good.tolist(), "Tensor")]:
            with case(value=value), pytest.raises(TypeError, match=says(arg, expected)):
                call_dpo(**{arg: value})

    @pytest.mark.parametrize("arg", ["chosen_logprobs", "rejected_logprobs"])
    def test_policy_logprobs_of_wrong_ndim_are_rejected(self, arg):
        for shape in [(T,), (P, T, 1), ()]:
            with case(shape=shape), pytest.raises(ValueError, match=says(arg, re.escape("[B, T]"))):
                call_dpo(**{arg: torch.zeros(shape)})

    def test_different_number_of_chosen_and_rejected_pairs_is_rejected(self):
        for n in [P - 1, P + 1]:
            rejected = {
                "rejected_logprobs": torch.zeros(n, T_REJ),
                "rejected_reference_logprobs": torch.zeros(n, T_REJ),
                "rejected_mask": torch.ones(n, T_REJ),
            }
            with (
                case(n_rejected=n),
                pytest.raises(ValueError, match=says("rejected_logprobs", "pairs") + says("chosen_logprobs")),
            ):
                call_dpo(**rejected)

    def test_chosen_and_rejected_of_different_lengths_are_accepted(self):
        loss, _ = call_dpo()  # T = 4 chosen tokens, T' = 5 rejected tokens
        assert torch.isfinite(loss)

    @pytest.mark.parametrize(
        ("arg", "shapes"),
        [
            ("chosen_reference_logprobs", [(P, T + 1), (P + 1, T), (P,)]),
            ("chosen_mask", [(P, T + 1), (P, T_REJ), (P - 1, T)]),
            ("rejected_reference_logprobs", [(P, T), (P, T_REJ, 1)]),
            ("rejected_mask", [(P, T), (P,)]),
        ],
    )
    def test_token_input_shape_mismatch_is_rejected(self, arg, shapes):
        for shape in shapes:
            with case(shape=shape), pytest.raises(ValueError, match=says(arg, SHAPE)):
                call_dpo(**{arg: torch.zeros(shape)})

    def test_pair_mask_of_wrong_shape_is_rejected(self):
        for shape in [(P - 1,), (P + 1,), (P, 1), (P, T), ()]:
            with case(shape=shape), pytest.raises(ValueError, match=says("pair_mask", SHAPE)):
                call_dpo(pair_mask=torch.ones(shape))

    @pytest.mark.parametrize("arg", DPO_TOKEN_INPUTS)
    def test_non_finite_token_input_at_counted_position_is_rejected(self, arg):
        for bad in NON_FINITE:
            value = dpo_kwargs()[arg].clone()
            value[1, 0] = bad  # counted on both sides
            with case(bad=bad), pytest.raises(ValueError, match=says(arg, FINITE)):
                call_dpo(**{arg: value})

    @pytest.mark.parametrize("name", list(DPO_CONFIGS))
    def test_non_finite_padding_leaves_loss_and_gradient_finite(self, name):
        pair_mask = f32([1, 1, 0])  # pair 2 is dropped by pair_mask only
        pad_c = (f32(MASK) * pair_mask[:, None]) == 0
        pad_r = (f32(REJECTED_MASK) * pair_mask[:, None]) == 0
        clean = dpo_kwargs(config=DPO_CONFIGS[name], pair_mask=pair_mask)
        clean_loss, clean_metrics = dpo_loss(**clean)
        for fill in NON_FINITE:
            with case(fill=fill):
                dirty = {
                    **clean,
                    "chosen_logprobs": poison(f32(LOGPROBS), pad_c, fill).requires_grad_(),
                    "rejected_logprobs": poison(f32(REJECTED), pad_r, fill).requires_grad_(),
                    "chosen_reference_logprobs": poison(f32(REF), pad_c, NAN),
                    "rejected_reference_logprobs": poison(f32(REJECTED_REF), pad_r, -INF),
                }
                loss, metrics = dpo_loss(**dirty)
                assert_same(loss.detach(), clean_loss)
                assert metrics == pytest.approx(clean_metrics)
                loss.backward()
                chosen_grad, rejected_grad = dirty["chosen_logprobs"].grad, dirty["rejected_logprobs"].grad
                assert_all_finite(loss=loss, chosen_grad=chosen_grad, rejected_grad=rejected_grad)
                assert (chosen_grad[pad_c] == 0).all() and (rejected_grad[pad_r] == 0).all()
                assert_metrics_finite(metrics)

    @pytest.mark.parametrize("name", list(DPO_CONFIGS))
    def test_all_zero_pair_mask_gives_exact_zero_and_finite_gradient(self, name):
        for factor in [None, 4.0]:
            with case(global_valid_pairs=factor):
                chosen = torch.full((P, T), NAN).requires_grad_()
                rejected = torch.full((P, T_REJ), -INF).requires_grad_()
                loss, metrics = call_dpo(
                    config=DPO_CONFIGS[name],
                    chosen_logprobs=chosen,
                    rejected_logprobs=rejected,
                    chosen_reference_logprobs=torch.full((P, T), NAN),
                    rejected_reference_logprobs=torch.full((P, T_REJ), NAN),
                    pair_mask=torch.zeros(P),
                    global_valid_pairs=factor,
                )
                assert loss.item() == 0.0
                loss.backward()
                assert_all_finite(chosen_grad=chosen.grad, rejected_grad=rejected.grad)
                assert_metrics_finite(metrics)


# ======================================================================================
# nll_loss
# ======================================================================================


class TestNLLLoss:
    def test_wrong_logprobs_type_is_rejected(self):
        for value, expected in [
            (torch.ones(B, T, dtype=torch.int64), FLOAT),
            (torch.ones(B, T, dtype=torch.bool), FLOAT),
            (LOGPROBS, "Tensor"),
        ]:
            with case(value=value), pytest.raises(TypeError, match=says("logprobs", expected)):
                call_nll(logprobs=value)

    def test_logprobs_of_wrong_ndim_are_rejected(self):
        for shape in [(T,), (B, T, 1), ()]:
            with case(shape=shape), pytest.raises(ValueError, match=says("logprobs", re.escape("[B, T]"))):
                call_nll(logprobs=torch.zeros(shape))

    def test_mask_shape_mismatch_is_rejected(self):
        for shape in [(B, T + 1), (B + 1, T), (B,), (B, T, 1)]:
            with case(shape=shape), pytest.raises(ValueError, match=says("mask", SHAPE)):
                call_nll(mask=torch.ones(shape))

    def test_sample_mask_of_wrong_shape_is_rejected(self):
        for shape in [(B - 1,), (B + 1,), (B, 1), (B, T), ()]:
            with case(shape=shape), pytest.raises(ValueError, match=says("sample_mask", SHAPE)):
                call_nll(sample_mask=torch.ones(shape))

    def test_non_finite_logprob_at_counted_position_is_rejected(self):
        for bad in NON_FINITE:
            logprobs = f32(LOGPROBS)
            logprobs[2, 3] = bad
            with case(bad=bad), pytest.raises(ValueError, match=says("logprobs", FINITE)):
                call_nll(logprobs=logprobs)

    def test_non_finite_padding_leaves_loss_and_gradient_finite(self):
        mask, sample_mask = f32(MASK), f32([1, 1, 0])
        pad = (mask * sample_mask[:, None]) == 0
        clean_loss, clean_metrics = nll_loss(f32(LOGPROBS), mask, sample_mask=sample_mask)
        for fill in NON_FINITE:
            with case(fill=fill):
                logprobs = poison(f32(LOGPROBS), pad, fill).requires_grad_()
                loss, metrics = nll_loss(logprobs, mask, sample_mask=sample_mask)
                assert_same(loss.detach(), clean_loss)
                assert metrics == pytest.approx(clean_metrics)
                loss.backward()
                assert_all_finite(loss=loss, grad=logprobs.grad)
                assert (logprobs.grad[pad] == 0).all()

    def test_all_zero_mask_gives_exact_zero_and_finite_gradient(self):
        for zeroed in [{"mask": torch.zeros(B, T)}, {"sample_mask": torch.zeros(B)}]:
            for factor in [None, 9.0]:
                with case(zeroed=list(zeroed), global_valid_toks=factor):
                    logprobs = torch.full((B, T), -INF).requires_grad_()
                    loss, metrics = call_nll(logprobs=logprobs, global_valid_toks=factor, **zeroed)
                    assert loss.item() == 0.0
                    loss.backward()
                    assert_all_finite(grad=logprobs.grad)
                    assert_metrics_finite(metrics)


# ======================================================================================
# Gaps found at commit 1e25790 (silent acceptance or NaN there), fixed in the library since.
# Each test failed at 1e25790; they stay as regression tests.
# ======================================================================================


class TestFormerGaps:
    @pytest.mark.parametrize(
        "mask", [f32(MASK), f32(MASK).bool(), torch.ones(B, 1)], ids=["float", "bool", "broadcast"]
    )
    def test_masked_mean_rejects_non_finite_values_at_counted_positions(self, mask):
        # Was: masked_mean returned NaN/inf silently.
        for bad in NON_FINITE:
            values = f32(LOGPROBS)
            values[0, 0] = bad  # counted under every mask above
            with case(bad=bad), pytest.raises(ValueError, match=says("values", FINITE)):
                masked_mean(values, mask)

    def test_masked_mean_rejects_bad_dim(self):
        # Was: torch's IndexError ('Dimension out of range') or a TypeError from torch.sum.
        for dim in [2, -3, 7, "1", 1.0, True]:
            with case(dim=dim), pytest.raises((ValueError, TypeError), match=says("dim", "int")):
                call_masked_mean(dim=dim)

    @pytest.mark.parametrize(
        ("value", "error", "expected"),
        [
            (torch.zeros(B + 1, T + 1), ValueError, SHAPE),
            (torch.full((B, T), NAN), ValueError, FINITE),
            (f32(REF).long(), TypeError, FLOAT),
            ("ref", TypeError, "Tensor"),
        ],
        ids=["wrong-shape", "nan-at-counted", "int", "str"],
    )
    def test_reference_logprobs_is_validated_even_with_zero_kl_penalty(self, value, error, expected):
        # Was: with reference_policy_kl_penalty=0 any reference_logprobs was silently ignored.
        with pytest.raises(error, match=says("reference_logprobs", expected)):
            call_pg(config=ClippedPGConfig(reference_policy_kl_penalty=0.0), reference_logprobs=value)

    @pytest.mark.parametrize(
        ("arg", "partner", "shape"),
        [
            ("chosen_reference_logprobs", "chosen_logprobs", (P, T + 1)),
            ("rejected_reference_logprobs", "rejected_logprobs", (P, T)),
        ],
        ids=["chosen", "rejected"],
    )
    def test_dpo_reference_shape_error_names_the_matching_policy_argument(self, arg, partner, shape):
        # Was: 'logprobs and chosen_reference_logprobs must have the same shape' (no `logprobs` in dpo_loss).
        with pytest.raises(ValueError, match=says(arg, SHAPE) + says(partner)):
            call_dpo(**{arg: torch.zeros(shape)})

    @pytest.mark.parametrize(
        ("logprobs", "prev", "gen", "ref", "config"),
        [
            # PPO, A > 0, log pi - log pi_prev = 100: exp() overflowed to inf; the clipped branch is
            # selected (true gradient 0) but exp's backward gave 0 * inf = NaN.
            pytest.param(
                [[0.0, -1.0]],
                [[-100.0, -1.0]],
                None,
                None,
                ClippedPGConfig(reference_policy_kl_penalty=0.0),
                id="ppo-clipped-branch",
            ),
            # GSPO: the same overflow in the sequence-level ratio.
            pytest.param(
                [[0.0, 0.0]],
                [[-200.0, -200.0]],
                None,
                None,
                ClippedPGConfig(
                    reference_policy_kl_penalty=0.0, sequence_level_importance_ratios=True, token_level_loss=False
                ),
                id="gspo-sequence-ratio",
            ),
            # Default clamps, use_on_policy_kl_approximation, log pi - log pi_gen = 100: the weight
            # exp(curr - gen) = inf was zeroed by nan_to_num, loss finite, gradient NaN.
            pytest.param(
                [[0.0, -1.0]],
                [[0.0, -1.0]],
                [[-100.0, -1.0]],
                [[0.0, -1.0]],
                ClippedPGConfig(use_on_policy_kl_approximation=True),
                id="on-policy-kl-weight",
            ),
            # kl_input_clamp_value=None, log pi_ref - log pi = 100: k3's expm1 overflowed, the output
            # clamp saturated (true gradient 0) but expm1's backward gave 0 * inf = NaN.
            pytest.param(
                [[-100.0, -1.0]],
                [[-100.0, -1.0]],
                None,
                [[0.0, -1.0]],
                ClippedPGConfig(kl_input_clamp_value=None),
                id="kl-without-input-clamp",
            ),
        ],
    )
    def test_extreme_finite_log_ratio_gives_finite_loss_and_gradient(self, logprobs, prev, gen, ref, config):
        logprobs = f32(logprobs).requires_grad_()
        loss, _ = clipped_pg_loss(
            logprobs,
            f32(prev),
            f32([1.0]),  # A > 0
            torch.ones(1, 2),
            config=config,
            generation_logprobs=None if gen is None else f32(gen),
            reference_logprobs=None if ref is None else f32(ref),
        )
        loss.backward()
        assert_all_finite(loss=loss, grad=logprobs.grad)


# ======================================================================================
# A token dropped by importance-weight truncation or overflow contributes exactly 0, even when
# its surrogate -A * ratio overflows float32 (log pi - log pi_prev = 100, A = -3): weight *
# loss would be 0 * inf = NaN, so the library selects instead of multiplying.
# ======================================================================================


class TestDroppedTokensWithOverflow:
    @pytest.mark.parametrize(
        ("config", "prev", "gen"),
        [
            pytest.param(
                ClippedPGConfig(**NO_KL, **IS_ON, **{TIS: "icepop", TIS_MAX: 2.0, TIS_MIN: 0.5}),
                [[-100.0, -1.0]],
                [[-105.0, -1.0]],  # weight e^5 is outside [0.5, 2]: token dropped
                id="icepop-dropped-token",
            ),
            pytest.param(
                ClippedPGConfig(**NO_KL, **IS_ON, **{TIS: "seq-mask-tis", TIS_MAX: 2.0, TIS_MIN: 0.5}),
                [[-100.0, -1.0]],
                [[-105.0, -1.0]],  # geometric-mean weight e^2.5 outside [0.5, 2]: sequence dropped
                id="seq-mask-tis-dropped-sequence",
            ),
            pytest.param(
                ClippedPGConfig(**NO_KL, **IS_ON),
                [[-100.0, -1.0]],
                [[-200.0, -1.0]],  # exp(prev - gen) = e^100 overflows: weight set to 0
                id="is-weight-overflow",
            ),
            pytest.param(
                ClippedPGConfig(**NO_KL, **IS_ON, sequence_level_importance_ratios=True, token_level_loss=False),
                [[-100.0, -100.0]],
                [[-200.0, -200.0]],  # sequence weight e^200 overflows: weight set to 0
                id="gspo-is-weight-overflow",
            ),
        ],
    )
    def test_dropped_token_with_overflowing_surrogate_gives_finite_loss(self, config, prev, gen):
        logprobs = torch.zeros(1, 2).requires_grad_()
        loss, _ = clipped_pg_loss(
            logprobs,
            f32(prev),
            f32([-3.0]),  # A < 0: the unclipped surrogate -A * ratio is the active branch
            torch.ones(1, 2),
            config=config,
            generation_logprobs=f32(gen),
        )
        loss.backward()
        assert_all_finite(loss=loss, grad=logprobs.grad)


@pytest.mark.parametrize(
    ("loss_name", "factor"),
    [
        ("clipped_pg_loss", "global_valid_toks"),
        ("clipped_pg_loss", "global_valid_seqs"),
        ("nll_loss", "global_valid_toks"),
        ("dpo_loss", "global_valid_pairs"),
    ],
)
def test_global_count_below_the_local_count_is_rejected(loss_name, factor):
    # A global count covers every micro-batch, so 1 with 3 local sequences/tokens is a bug upstream.
    lp = -torch.rand(3, 4)
    mask = torch.ones(3, 4)
    calls = {
        "clipped_pg_loss": lambda: clipped_pg_loss(
            lp, lp, torch.ones(3), mask, config=ClippedPGConfig(**NO_KL), **{factor: 1.0}
        ),
        "nll_loss": lambda: nll_loss(lp, mask, **{factor: 1.0}),
        "dpo_loss": lambda: dpo_loss(lp, lp, lp, lp, mask, mask, **{factor: 1.0}),
    }
    with pytest.raises(ValueError, match=says(factor, "smaller")):
        calls[loss_name]()
