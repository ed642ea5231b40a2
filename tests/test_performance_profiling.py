"""Profiler regions from prof.events() and from the Chrome trace, nesting, shares, event counts, matmul rate."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.profiler import ProfilerActivity, profile, record_function

from nemo_rl_theory.performance.profiling import (
    Region,
    chrome_trace_regions,
    count_events_within,
    is_nested,
    profiler_regions,
    region_shares,
    trace_self_times,
)

LABELS = ("outer", "first", "second")


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    a = torch.randn(32, 32)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("outer"):
            with record_function("first"):
                for _ in range(3):
                    a = torch.mm(a, a).tanh()
            with record_function("second"):
                torch.mm(a, a)
    path = tmp_path_factory.mktemp("trace") / "trace.json"
    prof.export_chrome_trace(str(path))
    return prof, path


def test_regions_present_nested_and_consistent_with_trace(profiled):
    prof, path = profiled
    from_events = profiler_regions(prof.events(), LABELS)
    from_trace = chrome_trace_regions(path, LABELS)
    for label in LABELS:
        assert len(from_events[label]) == len(from_trace[label]) == 1
        assert from_trace[label][0].duration_us == pytest.approx(from_events[label][0].duration_us, abs=1e-2)
    outer = from_trace["outer"][0]
    first, second = from_trace["first"][0], from_trace["second"][0]
    assert is_nested(first, outer) and is_nested(second, outer)
    assert first.end_us <= second.start_us
    shares = region_shares(outer, [first, second])
    assert 0 < sum(shares.values()) <= 1.0 + 1e-9


def test_event_counts_within_regions(profiled):
    prof, _ = profiled
    regions = profiler_regions(prof.events(), LABELS)
    assert count_events_within(prof.events(), "aten::mm", regions["first"][0]) == 3
    assert count_events_within(prof.events(), "aten::mm", regions["second"][0]) == 1
    assert count_events_within(prof.events(), "aten::mm", regions["outer"][0]) == 4
    assert count_events_within(prof.events(), "aten::tanh", regions["second"][0]) == 0


def test_event_counts_from_the_chrome_trace_match_the_profiler(profiled):
    prof, path = profiled
    labels = chrome_trace_regions(path, LABELS)
    ops = chrome_trace_regions(path, ["aten::mm", "aten::tanh"], category=None)
    events = [r for rs in ops.values() for r in rs]
    from_events = profiler_regions(prof.events(), LABELS)
    for label in LABELS:
        for op in ("aten::mm", "aten::tanh"):
            assert count_events_within(events, op, labels[label][0]) == count_events_within(
                prof.events(), op, from_events[label][0]
            )
    assert count_events_within(events, "aten::mm", labels["first"][0]) == 3
    with pytest.raises(TypeError, match="region must be a Region"):
        count_events_within(events, "aten::mm", (0.0, 1.0))


def test_missing_label_maps_to_empty(profiled):
    prof, path = profiled
    assert profiler_regions(prof.events(), ["never"]) == {"never": []}
    assert chrome_trace_regions(path, ["never"]) == {"never": []}
    # aten ops are complete events of another category
    assert chrome_trace_regions(path, ["aten::mm"])["aten::mm"] == []
    assert len(chrome_trace_regions(path, ["aten::mm"], category=None)["aten::mm"]) == 4


@given(
    bounds=st.lists(st.floats(0, 100, allow_nan=False), min_size=2, max_size=8, unique=True).map(sorted),
)
def test_shares_of_a_tiling_sum_to_one(bounds):
    parent = Region("p", bounds[0], bounds[-1])
    children = [Region(f"c{i}", a, b) for i, (a, b) in enumerate(itertools.pairwise(bounds))]
    assert sum(region_shares(parent, children).values()) == pytest.approx(1.0, rel=1e-12)


def test_shares_add_repeated_names_and_reject_outside():
    parent = Region("p", 0.0, 10.0)
    shares = region_shares(parent, [Region("a", 0, 2), Region("a", 5, 6), Region("b", 2, 5)])
    assert shares == pytest.approx({"a": 0.3, "b": 0.3})
    with pytest.raises(ValueError, match="not inside"):
        region_shares(parent, [Region("a", 9.0, 11.0)])
    with pytest.raises(ValueError, match="positive duration"):
        region_shares(Region("p", 1.0, 1.0), [])


def test_is_nested_tolerance():
    outer = Region("o", 10.0, 20.0)
    assert is_nested(Region("i", 10.0, 20.0), outer)
    assert not is_nested(Region("i", 9.5, 20.0), outer)
    assert is_nested(Region("i", 9.5, 20.0), outer, tolerance_us=0.5)


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="names"):
        profiler_regions([], "outer")
    with pytest.raises(TypeError, match="names"):
        profiler_regions([], [1])
    not_trace = tmp_path / "x.json"
    not_trace.write_text(json.dumps({"a": 1}))
    with pytest.raises(ValueError, match="not a Chrome trace"):
        chrome_trace_regions(not_trace, ["a"])
    with pytest.raises(TypeError, match="name"):
        count_events_within([], 3, Region("r", 0, 1))


def test_trace_self_times_match_key_averages(profiled):
    prof, path = profiled
    table = {row.key: row.self_cpu_time_total for row in prof.key_averages()}
    names = [*LABELS, "aten::mm", "aten::tanh"]
    self_times = trace_self_times(path, [*names, "never"])
    for name in names:
        assert self_times[name] == pytest.approx(table[name], abs=0.01)
    assert self_times["never"] == 0.0


def test_trace_self_times_on_a_hand_made_trace(tmp_path):
    events = [
        {"ph": "X", "name": "p", "ts": 0.0, "dur": 10.0, "pid": 1, "tid": 1},
        {"ph": "X", "name": "a", "ts": 1.0, "dur": 3.0, "pid": 1, "tid": 1},
        {"ph": "X", "name": "g", "ts": 1.5, "dur": 1.0, "pid": 1, "tid": 1},  # grandchild of p
        {"ph": "X", "name": "a", "ts": 4.0, "dur": 2.0, "pid": 1, "tid": 1},  # starts where a ends
        {"ph": "X", "name": "x", "ts": 2.0, "dur": 50.0, "pid": 1, "tid": 2},  # another thread
        {"ph": "i", "name": "p", "ts": 3.0, "pid": 1, "tid": 1},  # not a complete event
    ]
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"traceEvents": events}))
    assert trace_self_times(path, ["p", "a", "g", "x"]) == pytest.approx({"p": 5.0, "a": 4.0, "g": 1.0, "x": 50.0})
