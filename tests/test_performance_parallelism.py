"""Ring collective volumes and the pipeline bubble (nemo_rl_theory.performance.parallelism).

The closed forms are checked against the hand ring simulation (which moves real tensors and
counts bytes) and the schedule simulator; the simulation's results are checked against plain
sums and concatenations, and the simulator's timelines against their dependency rules.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nemo_rl_theory.performance.parallelism import (
    COLLECTIVES,
    SCHEDULES,
    pipeline_bubble_fraction,
    ring_bytes_per_rank,
    simulate_pipeline,
    simulate_ring,
)

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.int64]


def _inputs(n, rows, cols, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(-50, 50, (rows, cols), generator=g).to(dtype) for _ in range(n)]


@given(n=st.integers(1, 7), per=st.integers(1, 4), cols=st.integers(1, 3), dtype=st.sampled_from(DTYPES))
def test_ring_results_are_the_sum_and_the_concatenation(n, per, cols, dtype):
    xs = _inputs(n, n * per, cols, dtype)
    total = torch.stack(xs).sum(0)  # small integers: exact in every dtype
    ar = simulate_ring("all_reduce", xs)
    assert all(torch.equal(o, total) for o in ar.outputs)
    rs = simulate_ring("reduce_scatter", xs)
    for r, o in enumerate(rs.outputs):
        assert torch.equal(o, total[r * per : (r + 1) * per])
    ag = simulate_ring("all_gather", xs)
    assert all(torch.equal(o, torch.cat(xs)) for o in ag.outputs)
    assert (ar.steps, rs.steps, ag.steps) == (2 * (n - 1), n - 1, n - 1)


@given(n=st.integers(1, 7), per=st.integers(1, 4), cols=st.integers(1, 3), dtype=st.sampled_from(DTYPES))
def test_ring_bytes_equal_the_closed_forms_when_chunks_are_equal(n, per, cols, dtype):
    xs = _inputs(n, n * per, cols, dtype)
    size = xs[0].numel() * xs[0].element_size()
    for c in ("all_reduce", "reduce_scatter"):
        assert simulate_ring(c, xs).bytes_sent == [ring_bytes_per_rank(c, size, n)] * n
    shards = _inputs(n, per, cols, dtype)
    full = n * shards[0].numel() * shards[0].element_size()
    assert simulate_ring("all_gather", shards).bytes_sent == [ring_bytes_per_rank("all_gather", full, n)] * n


@given(n=st.integers(2, 6), rows_extra=st.integers(1, 5))
def test_uneven_chunks_still_move_the_closed_form_in_total(n, rows_extra):
    rows = n + rows_extra  # tensor_split: chunks differ by one row
    xs = _inputs(n, rows, 2, torch.float64)
    size = xs[0].numel() * 8
    for c in ("all_reduce", "reduce_scatter"):
        res = simulate_ring(c, xs)
        assert sum(res.bytes_sent) == pytest.approx(n * ring_bytes_per_rank(c, size, n))
    rs = simulate_ring("reduce_scatter", xs)
    assert torch.equal(torch.cat(rs.outputs), torch.stack(xs).sum(0))
    ar = simulate_ring("all_reduce", xs)
    assert all(torch.equal(o, torch.stack(xs).sum(0)) for o in ar.outputs)


def test_ring_bytes_closed_forms():
    assert ring_bytes_per_rank("all_reduce", 1000, 4) == 1500.0
    assert ring_bytes_per_rank("reduce_scatter", 1000, 4) == 750.0
    assert ring_bytes_per_rank("all_gather", 1000, 4) == 750.0
    assert ring_bytes_per_rank("all_reduce", 1000, 1) == 0.0
    # all-reduce = reduce-scatter + all-gather; tends to 2S as N grows
    for n in range(1, 50):
        assert ring_bytes_per_rank("all_reduce", 8.0, n) == pytest.approx(
            ring_bytes_per_rank("reduce_scatter", 8.0, n) + ring_bytes_per_rank("all_gather", 8.0, n)
        )
    assert ring_bytes_per_rank("all_reduce", 1.0, 10**6) == pytest.approx(2.0, rel=1e-5)


@given(
    p=st.integers(1, 8), m=st.integers(1, 12), tf=st.sampled_from([0.5, 1.0, 1.5]), tb=st.sampled_from([1.0, 2.0, 3.5])
)
def test_simulated_idle_fraction_is_the_bubble_formula(p, m, tf, tb):
    for schedule in SCHEDULES:
        tl = simulate_pipeline(p, m, schedule, forward_time=tf, backward_time=tb)
        assert tl.makespan == pytest.approx((m + p - 1) * (tf + tb))
        assert tl.idle_fraction == pytest.approx(pipeline_bubble_fraction(p, m), abs=1e-12)
        # bubble over ideal time is Narayanan et al.'s (p - 1) / m
        ideal = m * (tf + tb)
        assert (tl.makespan - ideal) / ideal == pytest.approx((p - 1) / m)


@given(p=st.integers(1, 6), m=st.integers(1, 9))
def test_timelines_respect_dependencies_and_never_overlap(p, m):
    for schedule in SCHEDULES:
        tl = simulate_pipeline(p, m, schedule)
        end = {(s.kind, s.stage, s.micro_batch): s.end for row in tl.slots for s in row}
        start = {(s.kind, s.stage, s.micro_batch): s.start for row in tl.slots for s in row}
        assert len(end) == 2 * p * m
        for (kind, stage, i), t0 in start.items():
            if kind == "F" and stage > 0:
                assert t0 >= end[("F", stage - 1, i)]
            if kind == "B":
                assert t0 >= end[("B", stage + 1, i)] if stage < p - 1 else t0 >= end[("F", stage, i)]
        for row in tl.slots:
            for a, b in itertools.pairwise(row):
                assert b.start >= a.end
        # activations held: GPipe keeps all m; 1F1B at most p - s on stage s
        expected = [m] * p if schedule == "gpipe" else [min(p - s, m) for s in range(p)]
        assert tl.max_in_flight == expected


def test_bubble_formula_values():
    assert pipeline_bubble_fraction(1, 5) == 0.0
    assert pipeline_bubble_fraction(4, 8) == pytest.approx(3 / 11)
    assert pipeline_bubble_fraction(4, 1) == pytest.approx(3 / 4)
    assert math.isclose(pipeline_bubble_fraction(8, 10**6), 7 / (10**6 + 7))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: ring_bytes_per_rank("broadcast", 1, 2), ValueError, "collective must be one of"),
        (lambda: ring_bytes_per_rank("all_reduce", -1, 2), ValueError, "size_bytes must be"),
        (lambda: ring_bytes_per_rank("all_reduce", math.nan, 2), ValueError, "size_bytes must be"),
        (lambda: ring_bytes_per_rank("all_reduce", "1", 2), TypeError, "size_bytes must be a number"),
        (lambda: ring_bytes_per_rank("all_reduce", 1, 0), ValueError, "world_size must be an int >= 1"),
        (lambda: ring_bytes_per_rank("all_reduce", 1, 2.0), TypeError, "world_size must be an int"),
        (lambda: simulate_ring("all_reduce", []), TypeError, "inputs must be a non-empty list"),
        (lambda: simulate_ring("all_reduce", [[1.0]]), TypeError, r"inputs\[0\] must be a torch.Tensor"),
        (lambda: simulate_ring("scan", [torch.ones(2)]), ValueError, "collective must be one of"),
        (lambda: simulate_ring("all_reduce", [torch.ones(2), torch.ones(3)]), ValueError, "inputs must share"),
        (
            lambda: simulate_ring("all_reduce", [torch.ones(2), torch.ones(2, dtype=torch.float64)]),
            ValueError,
            "inputs must share",
        ),
        (lambda: simulate_ring("all_reduce", [torch.tensor(1.0)] * 2), ValueError, "at least one dimension"),
        (lambda: simulate_ring("reduce_scatter", [torch.ones(2)] * 3), ValueError, "at least N=3 rows"),
        (lambda: pipeline_bubble_fraction(0, 4), ValueError, "stages must be an int >= 1"),
        (lambda: pipeline_bubble_fraction(2, 0), ValueError, "micro_batches must be an int >= 1"),
        (lambda: pipeline_bubble_fraction(True, 4), TypeError, "stages must be an int"),
        (lambda: simulate_pipeline(2, 2, "interleaved"), ValueError, "schedule must be one of"),
        (lambda: simulate_pipeline(2, 2, forward_time=0), ValueError, "forward_time must be"),
        (lambda: simulate_pipeline(2, 2, backward_time=math.inf), ValueError, "backward_time must be"),
        (lambda: simulate_pipeline(2, 2, backward_time="2"), TypeError, "backward_time must be a real number"),
        (lambda: simulate_pipeline(2.5, 2), TypeError, "stages must be an int"),
    ],
)
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_collectives_and_schedules_are_listed():
    assert COLLECTIVES == ("all_reduce", "reduce_scatter", "all_gather")
    assert SCHEDULES == ("gpipe", "1f1b")


@pytest.mark.parametrize(("schedule", "torch_name"), [("gpipe", "GPipe"), ("1f1b", "1F1B")])
def test_stage_orders_are_torch_pipelining_orders(schedule, torch_name):
    """The per-stage order of slots equals torch.distributed.pipelining's schedule IR (an independent
    implementation). torch 2.13's 1F1B IR numbers the last stage's forwards from 1 instead of 0
    (its runtime, ``Schedule1F1B._step_microbatches``, starts at 0), so where the IR's last stage
    starts with forward 1 its forward indices are shifted back by one."""
    # A private module: skip, rather than fail, on torch versions that lack or move it.
    get_schedule_ops = pytest.importorskip("torch.distributed.pipelining._schedule_visualizer").get_schedule_ops

    for p in range(1, 6):
        for m in range(p, 9):  # torch's 1F1B needs m >= p
            ops = get_schedule_ops(torch_name, p, m)
            tl = simulate_pipeline(p, m, schedule)
            kinds = {"FORWARD": "F", "FULL_BACKWARD": "B"}  # REDUCE_GRAD and idle steps dropped
            for s, row in enumerate(ops):
                named = [(a.computation_type.name, a.microbatch_index) for a in row if a is not None]
                theirs = [(kinds[k], i) for k, i in named if k in kinds]
                if s == p - 1 and theirs[0] == ("F", 1):
                    theirs = [(k, i - 1 if k == "F" else i) for k, i in theirs]
                assert [(slot.kind, slot.micro_batch) for slot in tl.slots[s]] == theirs, (p, m, s)
