"""The loss contract (nemo_rl_theory.customization.contract) applied to every loss of the library.

Each loss must: sum over micro-batches to the full batch when the pieces use the global counts;
likewise over data-parallel ranks (real torch.distributed processes, gloo, world size 2); pass
gradcheck in float64; ignore whatever its padding holds; reject bad arguments by name. Losses
that break a clause on purpose declare it, and the tests show the clause failing without the
declaration. The checker itself is shown to catch deliberately broken losses.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_rl_theory import ClippedPGConfig, DPOConfig, clipped_pg_loss, dpo_loss, nll_loss
from nemo_rl_theory.customization.contract import (
    CLAUSES,
    ContractReport,
    check_loss_contract,
    row_count,
    token_count,
)
from nemo_rl_theory.losses import distillation_loss, value_loss

F64 = torch.float64
B, T, V, K = 4, 5, 7, 3


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _mask(g, rows=B, length=T):
    m = (torch.rand(rows, length, generator=g) > 0.3).to(F64)
    m[:, 0] = 1.0  # every row has a token
    return m


def _logprobs(g, rows=B, length=T):
    return -torch.rand(rows, length, generator=g, dtype=F64) * 2 - 0.05


SAMPLE = torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=F64)  # a dropped row
TOKS = token_count("mask", "sample_mask")


def pg_case(config=None, seed=0, **extra):
    g = _gen(seed)
    batch = dict(
        logprobs=_logprobs(g),
        prev_logprobs=_logprobs(g),
        advantages=torch.randn(B, T, generator=g, dtype=F64),
        mask=_mask(g),
        sample_mask=SAMPLE,
        reference_logprobs=_logprobs(g),
        **extra,
    )
    loss = functools.partial(clipped_pg_loss, config=config) if config is not None else clipped_pg_loss
    padding = {k: "mask" for k in ("logprobs", "prev_logprobs", "reference_logprobs", "advantages")}
    return (
        loss,
        batch,
        dict(
            wrt=("logprobs",),
            counts={"global_valid_toks": TOKS, "global_valid_seqs": row_count("sample_mask")},
            padding=padding,
        ),
    )


def nll_case(seed=1):
    g = _gen(seed)
    batch = dict(logprobs=_logprobs(g), mask=_mask(g), sample_mask=SAMPLE)
    return nll_loss, batch, dict(wrt=("logprobs",), counts={"global_valid_toks": TOKS}, padding={"logprobs": "mask"})


def _pair_tensors(g):
    return dict(
        chosen_logprobs=_logprobs(g),
        rejected_logprobs=_logprobs(g, length=T + 1),
        chosen_mask=_mask(g),
        rejected_mask=_mask(g, length=T + 1),
        pair_mask=SAMPLE,
    )


PAIR_PADDING = {
    "chosen_logprobs": "chosen_mask",
    "rejected_logprobs": "rejected_mask",
}


def dpo_case(seed=2):
    g = _gen(seed)
    batch = _pair_tensors(g)
    batch["chosen_reference_logprobs"] = _logprobs(g)
    batch["rejected_reference_logprobs"] = _logprobs(g, length=T + 1)
    loss = functools.partial(dpo_loss, config=DPOConfig(reference_policy_kl_penalty=0.3, sft_loss_weight=0.5))
    padding = {
        **PAIR_PADDING,
        "chosen_reference_logprobs": "chosen_mask",
        "rejected_reference_logprobs": "rejected_mask",
    }
    return (
        loss,
        batch,
        dict(
            wrt=("chosen_logprobs", "rejected_logprobs"),
            counts={"global_valid_pairs": row_count("pair_mask")},
            padding=padding,
        ),
    )


def value_case(seed=3):
    g = _gen(seed)
    values = torch.randn(B, T, generator=g, dtype=F64)
    batch = dict(
        values=values,
        old_values=values + 0.4 * torch.randn(B, T, generator=g, dtype=F64),
        returns=torch.randn(B, T, generator=g, dtype=F64),
        mask=_mask(g),
        sample_mask=SAMPLE,
    )
    loss = functools.partial(value_loss, cliprange=0.2, scale=0.4)
    padding = {k: "mask" for k in ("values", "old_values", "returns")}
    return loss, batch, dict(wrt=("values",), counts={"global_valid_toks": TOKS}, padding=padding)


def distillation_case(seed=4, **settings):
    g = _gen(seed)
    batch = dict(
        student_logits=torch.randn(B, T, V, generator=g, dtype=F64),
        teacher_topk_logits=torch.randn(B, T, K, generator=g, dtype=F64),
        teacher_topk_indices=torch.stack([torch.randperm(V, generator=g)[:K] for _ in range(B * T)]).view(B, T, K),
        mask=_mask(g),
        sample_mask=SAMPLE,
    )
    loss = functools.partial(distillation_loss, **settings)
    padding = {k: "mask" for k in ("student_logits", "teacher_topk_logits", "teacher_topk_indices")}
    return loss, batch, dict(wrt=("student_logits",), counts={"global_valid_toks": TOKS}, padding=padding)


def bradley_terry_case(seed=5):
    from nemo_rl_theory.losses import bradley_terry_loss

    g = _gen(seed)
    batch = dict(
        chosen_rewards=torch.randn(B, generator=g, dtype=F64),
        rejected_rewards=torch.randn(B, generator=g, dtype=F64),
        pair_mask=SAMPLE,
    )
    return (
        bradley_terry_loss,
        batch,
        dict(
            wrt=("chosen_rewards", "rejected_rewards"),
            counts={"global_valid_pairs": row_count("pair_mask")},
            padding={"chosen_rewards": "pair_mask", "rejected_rewards": "pair_mask"},
        ),
    )


def simpo_case(seed=6):
    from nemo_rl_theory.losses import simpo_loss

    batch = _pair_tensors(_gen(seed))
    return (
        simpo_loss,
        batch,
        dict(
            wrt=("chosen_logprobs", "rejected_logprobs"),
            counts={"global_valid_pairs": row_count("pair_mask")},
            padding=PAIR_PADDING,
        ),
    )


def orpo_case(seed=7):
    from nemo_rl_theory.losses import orpo_loss

    batch = _pair_tensors(_gen(seed))
    return (
        orpo_loss,
        batch,
        dict(
            wrt=("chosen_logprobs", "rejected_logprobs"),
            counts={
                "global_valid_pairs": row_count("pair_mask"),
                # the NLL term counts the chosen tokens of valid pairs
                "global_valid_toks": token_count("chosen_mask", "pair_mask"),
            },
            padding=PAIR_PADDING,
        ),
    )


def kto_case(seed=8):
    from nemo_rl_theory.losses import kto_loss

    g = _gen(seed)
    batch = dict(
        logprobs=_logprobs(g),
        reference_logprobs=_logprobs(g),
        mask=_mask(g),
        desirable=torch.tensor([True, False, True, False]),
        sample_mask=SAMPLE,
        kl_estimate=0.05,  # gathered over the global batch, as TRL all-gathers it
    )
    return (
        kto_loss,
        batch,
        dict(
            wrt=("logprobs",),
            counts={"global_valid_seqs": row_count("sample_mask")},
            padding={"logprobs": "mask", "reference_logprobs": "mask"},
        ),
    )


CASES = {
    "clipped_pg_loss (token level, beta = 0)": lambda: pg_case(ClippedPGConfig(reference_policy_kl_penalty=0.0)),
    "clipped_pg_loss (sequence level, dual clip)": lambda: pg_case(
        ClippedPGConfig(reference_policy_kl_penalty=0.0, token_level_loss=False, ratio_clip_c=3.0)
    ),
    "clipped_pg_loss (KL with on-policy weights)": lambda: pg_case(
        ClippedPGConfig(reference_policy_kl_penalty=0.1, use_on_policy_kl_approximation=True),
        generation_logprobs=_logprobs(_gen(9)),
    ),
    "nll_loss": nll_case,
    "dpo_loss (with SFT term)": dpo_case,
    "value_loss (clipped)": value_case,
    "distillation_loss (mixed)": distillation_case,
    "distillation_loss (reverse, zero_outside_topk)": lambda: distillation_case(
        kl_type="reverse", zero_outside_topk=True
    ),
    "bradley_terry_loss": bradley_terry_case,
    "simpo_loss": simpo_case,
    "orpo_loss": orpo_case,
    "kto_loss": kto_case,
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_loss_obeys_the_contract(case):
    loss_fn, batch, spec = CASES[case]()
    report = check_loss_contract(loss_fn, batch, **spec)
    assert report.passed and list(report.clauses) == list(CLAUSES)
    for clause in report.clauses.values():
        assert clause.passed and clause.declared is None, clause


@pytest.mark.parametrize(
    "case", ["nll_loss", "value_loss (clipped)", "distillation_loss (mixed)", "dpo_loss (with SFT term)"]
)
def test_real_data_parallel_ranks(case):
    """Two gloo processes: local counts all-reduced into global ones, each rank's loss on its
    rows, the gradients of the shared full-batch tensor all-reduced."""
    loss_fn, batch, spec = CASES[case]()
    report = check_loss_contract(
        loss_fn, batch, **spec, clauses=("data_parallel",), distributed=True, world_size=2, timeout_s=30
    )
    clause = report.clauses["data_parallel"]
    assert clause.passed and "gloo" in clause.detail and clause.max_error < 1e-12


def test_real_data_parallel_three_ranks_uneven():
    loss_fn, batch, spec = value_case()
    report = check_loss_contract(loss_fn, batch, **spec, clauses=("data_parallel",), distributed=True, world_size=3)
    assert report.clauses["data_parallel"].passed


# ---------------------------------------------------------------- declared breaks


def test_score_function_kl_breaks_gradcheck_as_declared():
    """With the default KL (weight exp(log pi - sg(log pi)), value 1) the gradient is the
    score-function estimator's, which finite differences of the value cannot see."""
    loss_fn, batch, spec = pg_case(ClippedPGConfig(reference_policy_kl_penalty=0.1))
    with pytest.raises(AssertionError, match=r"clause\(s\) \['gradcheck'\] failed") as info:
        check_loss_contract(loss_fn, batch, **spec)
    assert isinstance(info.value.report, ContractReport)
    report = check_loss_contract(loss_fn, batch, **spec, declared={"gradcheck": "score-function KL gradient"})
    assert report.passed and not report.clauses["gradcheck"].passed
    assert dict((r[0], r[1]) for r in report.rows())["gradcheck"] == "fails as declared"
    assert report.clauses["microbatch"].passed and report.clauses["padding"].passed


def test_positive_example_nll_breaks_micro_batching_as_declared():
    """VAPO's positive-example NLL is normalised by each micro-batch's own count of positive
    tokens (NeMo RL 7ea279a, loss_functions.py): summed micro-batches differ from the full batch."""
    cfg = ClippedPGConfig(reference_policy_kl_penalty=0.0, positive_example_nll_weight=0.5)
    loss_fn, batch, spec = pg_case(cfg, rewards=torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=F64))
    with pytest.raises(AssertionError) as info:
        check_loss_contract(loss_fn, batch, **spec)
    assert info.value.report.failures == ["microbatch", "data_parallel"]
    why = "NeMo RL normalises the positive NLL per micro-batch"
    report = check_loss_contract(loss_fn, batch, **spec, declared={"microbatch": why, "data_parallel": why})
    assert report.passed
    assert [r[1] for r in report.rows()][:2] == ["fails as declared", "fails as declared"]


def test_kto_batch_kl_estimate_breaks_micro_batching_when_computed_per_piece():
    """KTO's reference point from mismatched pairs is a batch statistic: computed inside each
    micro-batch (TRL computes it per batch) it differs from the full batch's."""
    from nemo_rl_theory.losses import kto_loss

    g = _gen(10)
    batch = dict(
        logprobs=_logprobs(g),
        reference_logprobs=_logprobs(g) - 0.5,
        mask=_mask(g),
        desirable=torch.tensor([True, False, True, False]),
        kl_logprobs=_logprobs(g),
        kl_reference_logprobs=_logprobs(g) - 1.0,
        kl_mask=_mask(g),
    )
    spec = dict(wrt=("logprobs",), counts={"global_valid_seqs": row_count(None, rows_of="logprobs")})
    with pytest.raises(AssertionError, match="microbatch"):
        check_loss_contract(kto_loss, batch, **spec, clauses=("microbatch",), default_bad_inputs=False)
    report = check_loss_contract(
        kto_loss, batch, **spec, clauses=("microbatch",), declared={"microbatch": "batch KL reference point"}
    )
    assert report.passed and not report.clauses["microbatch"].passed


def test_declared_clause_that_holds_is_reported():
    loss_fn, batch, spec = nll_case()
    report = check_loss_contract(loss_fn, batch, **spec, declared={"padding": "not really"})
    assert dict((r[0], r[1]) for r in report.rows())["padding"] == "holds despite declaration"


# ---------------------------------------------------------------- broken losses are caught


def nll_local_count(logprobs, mask, sample_mask=None, global_valid_toks=None):
    """Broken: ignores the global count and divides by the micro-batch's own token count."""
    loss, _ = nll_loss(logprobs, mask, sample_mask=sample_mask)
    return loss


def nll_multiplies_padding(logprobs, mask, sample_mask=None, global_valid_toks=None):
    """Broken: multiplies by the mask instead of selecting, so -inf * 0 = NaN leaks in."""
    m = mask * sample_mask[:, None]
    n = m.sum() if global_valid_toks is None else global_valid_toks
    return -(logprobs * m).sum() / n


def nll_unchecked(logprobs, mask, sample_mask=None, global_valid_toks=None):
    """Broken: right numbers, no input checks (a wrong shape broadcasts silently)."""
    m = torch.as_tensor(mask) * torch.as_tensor(sample_mask)[:, None]
    n = m.sum() if global_valid_toks is None else global_valid_toks
    return -torch.where(m != 0, torch.as_tensor(logprobs), 0.0).sum() / n


class _HalfGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return 0.5 * g


def nll_wrong_backward(logprobs, mask, sample_mask=None, global_valid_toks=None):
    """Broken: a custom autograd function whose backward is off by a factor of 2."""
    loss, _ = nll_loss(
        _HalfGradient.apply(logprobs), mask, sample_mask=sample_mask, global_valid_toks=global_valid_toks
    )
    return loss


@pytest.mark.parametrize(
    ("broken", "failures"),
    [
        # ignoring global_valid_toks also means a negative one is accepted silently
        (nll_local_count, ["microbatch", "data_parallel", "bad_input"]),
        (nll_multiplies_padding, ["padding", "bad_input"]),
        (nll_unchecked, ["bad_input"]),
        # the custom function also runs before the loss's own input checks (a list breaks it)
        (nll_wrong_backward, ["gradcheck", "bad_input"]),
    ],
)
def test_checker_catches_broken_losses(broken, failures):
    _, batch, spec = nll_case()
    with pytest.raises(AssertionError, match="loss contract broken") as info:
        check_loss_contract(broken, batch, **spec)
    report = info.value.report
    assert report.failures == failures
    assert broken.__name__ in str(info.value)
    for name in failures:
        assert name in str(info.value)


def test_local_count_is_caught_by_real_ranks_too():
    _, batch, spec = nll_case()
    with pytest.raises(AssertionError, match="data_parallel"):
        check_loss_contract(nll_local_count, batch, **spec, clauses=("data_parallel",), distributed=True)


def test_a_rank_that_raises_fails_the_clause_without_hanging():
    _, batch, spec = nll_case()

    def raises_on_short_rows(logprobs, mask, sample_mask=None, global_valid_toks=None):
        if sample_mask.sum() < 2:  # rank 0 holds rows 0 and 2, and row 2 is dropped
            raise RuntimeError("boom")
        return nll_loss(logprobs, mask, sample_mask=sample_mask, global_valid_toks=global_valid_toks)

    with pytest.raises(AssertionError) as info:
        check_loss_contract(
            raises_on_short_rows, batch, **spec, clauses=("data_parallel",), distributed=True, timeout_s=20
        )
    assert "boom" in info.value.report.clauses["data_parallel"].detail


def test_extra_bad_inputs_and_padding_callable():
    loss_fn, batch, spec = value_case()
    spec["padding"] = {"values": lambda b: (b["mask"] * b["sample_mask"][:, None]) == 0}
    report = check_loss_contract(
        loss_fn, batch, **spec, bad_inputs=[("returns", torch.zeros(B, T + 1, dtype=F64))], default_bad_inputs=False
    )
    assert report.clauses["bad_input"].detail.startswith("1 bad arguments")

    def accepts_any_returns(values, old_values, returns, mask, sample_mask=None, global_valid_toks=None):
        return value_loss(
            values, None, values.detach(), mask, sample_mask=sample_mask, global_valid_toks=global_valid_toks
        )

    with pytest.raises(AssertionError, match="accepted silently: returns"):
        check_loss_contract(
            accepts_any_returns,
            batch,
            **spec,
            clauses=("bad_input",),
            bad_inputs=[("returns", torch.zeros(B, T + 1, dtype=F64))],
            default_bad_inputs=False,
        )


def test_no_padding_given_is_said():
    loss_fn, batch, spec = nll_case()
    spec.pop("padding")
    report = check_loss_contract(loss_fn, batch, **spec, clauses=("padding",))
    assert "nothing checked" in report.clauses["padding"].detail


def test_explicit_micro_batches_and_report_text():
    loss_fn, batch, spec = distillation_case()
    report = check_loss_contract(loss_fn, batch, **spec, microbatches=[[0], [1, 2], [3]], clauses=("microbatch",))
    assert "3 micro-batches (1+2+1 rows)" in report.clauses["microbatch"].detail
    text = str(report)
    assert text.startswith("loss contract of distillation_loss:") and "held" in text
    assert report.name == "distillation_loss"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(clauses=("speed",)), "unknown clause"),
        (dict(declared={"fast": "x"}), "unknown clause"),
        (dict(wrt=("nope",)), "wrt must name tensor arguments"),
        (dict(wrt=()), "wrt must name tensor arguments"),
        (dict(microbatches=0), r"microbatches must be in \[1, 4\]"),
        (dict(microbatches=5), r"microbatches must be in \[1, 4\]"),
        (dict(world_size=5), r"world_size must be in \[1, 4\]"),
        (dict(microbatches=[[0, 1], [1, 2, 3]]), "each row once"),
        (dict(microbatches=[[0, 1], [3]]), "each row once"),
        (dict(microbatches=[[0, 1, 2, 3], []]), "non-empty pieces"),
    ],
)
def test_checker_bad_arguments(kwargs, match):
    loss_fn, batch, spec = nll_case()
    with pytest.raises(ValueError, match=match):
        check_loss_contract(loss_fn, batch, **{**spec, **kwargs})


def test_count_helpers():
    batch = dict(mask=torch.tensor([[1, 1, 0], [1, 0, 0]]), sample_mask=torch.tensor([1.0, 0.0]), x=torch.zeros(2, 3))
    assert float(token_count()(batch)) == 2.0
    assert float(token_count(sample_mask=None)(batch)) == 3.0
    assert float(row_count()(batch)) == 1.0
    assert float(row_count(None, rows_of="x")(batch)) == 2.0
    with pytest.raises(ValueError, match="rows_of"):
        row_count("absent")(batch)
    assert float(token_count()({"mask": batch["mask"], "sample_mask": None})) == 3.0


def test_loss_fn_must_return_a_scalar():
    _, batch, spec = nll_case()
    with pytest.raises(TypeError, match="scalar tensor"):
        check_loss_contract(lambda **kw: torch.zeros(2), batch, **spec, clauses=("microbatch",))


@settings(max_examples=15)
@given(st.integers(0, 10_000), st.integers(2, 6), st.integers(1, 4), st.sampled_from(["nll", "value", "distillation"]))
def test_random_batches_and_splits_keep_the_contract(seed, rows, pieces, which):
    """Random masks (rows may be empty or dropped), random sizes, any number of micro-batches."""
    g = _gen(seed)
    length = int(torch.randint(1, 5, (1,), generator=g))
    mask = (torch.rand(rows, length, generator=g) > 0.4).to(F64)
    sample = (torch.rand(rows, generator=g) > 0.3).to(F64)
    common = dict(mask=mask, sample_mask=sample)
    if which == "nll":
        loss_fn, batch, wrt = nll_loss, dict(logprobs=_logprobs(g, rows, length), **common), ("logprobs",)
    elif which == "value":
        values = torch.randn(rows, length, generator=g, dtype=F64)
        batch = dict(
            values=values, old_values=values.flip(0), returns=torch.randn(rows, length, generator=g, dtype=F64)
        )
        loss_fn, batch, wrt = functools.partial(value_loss, cliprange=0.3), {**batch, **common}, ("values",)
    else:
        idx = torch.stack([torch.randperm(V, generator=g)[:K] for _ in range(rows * length)]).view(rows, length, K)
        batch = dict(
            student_logits=torch.randn(rows, length, V, generator=g, dtype=F64),
            teacher_topk_logits=torch.randn(rows, length, K, generator=g, dtype=F64),
            teacher_topk_indices=idx,
            **common,
        )
        loss_fn, wrt = (
            functools.partial(distillation_loss, kl_type="reverse", zero_outside_topk=True),
            ("student_logits",),
        )
    report = check_loss_contract(
        loss_fn,
        batch,
        wrt=wrt,
        counts={"global_valid_toks": TOKS},
        microbatches=min(pieces, rows),
        world_size=min(pieces, rows),
        clauses=("microbatch", "data_parallel"),
    )
    assert report.passed
