r"""Reading what :mod:`torch.profiler` recorded: labelled regions, their nesting and shares.

A region is a ``torch.profiler.record_function(label)`` block. The profiler keeps it as an event
named ``label`` (``prof.events()``) and the Chrome trace (``prof.export_chrome_trace(path)``)
writes it as a complete event ``{"ph": "X", "cat": "user_annotation", "name": label, "ts": ...,
"dur": ...}`` with times in microseconds. These helpers collect both as :class:`Region` intervals
so a page can assert the trace's structure (labels present, children inside their parent,
durations adding up) without reading times by eye.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Region",
    "chrome_trace_regions",
    "count_events_within",
    "is_nested",
    "profiler_regions",
    "region_shares",
    "trace_self_times",
]

#: The Chrome-trace category of ``record_function`` regions (torch 2.13).
USER_ANNOTATION = "user_annotation"


@dataclass(frozen=True)
class Region:
    """A labelled time interval ``[start_us, end_us]`` in microseconds."""

    name: str
    start_us: float
    end_us: float

    @property
    def duration_us(self) -> float:
        """``end_us - start_us``."""
        return self.end_us - self.start_us


def _require_names(names: object) -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise TypeError(f"names must be an iterable of region labels (str), got {type(names).__name__}")
    out = tuple(names)
    if not all(isinstance(n, str) for n in out):
        raise TypeError("names must contain only str labels")
    return out


def profiler_regions(events: Iterable[Any], names: Iterable[str]) -> dict[str, list[Region]]:
    """Intervals of the events called ``names`` in a profiler's event list (``prof.events()``).

    Args:
        events: :class:`torch.autograd.profiler_util.FunctionEvent` objects (anything with
            ``name`` and ``time_range.start`` / ``.end`` in microseconds).
        names: the labels to collect.

    Returns:
        ``{label: [Region, ...]}`` in start order; a label that never ran maps to ``[]``.
    """
    wanted = _require_names(names)
    found: dict[str, list[Region]] = {n: [] for n in wanted}
    for event in events:
        if event.name in found:
            found[event.name].append(Region(event.name, float(event.time_range.start), float(event.time_range.end)))
    return {n: sorted(r, key=lambda x: x.start_us) for n, r in found.items()}


def chrome_trace_regions(
    path: str | os.PathLike[str], names: Iterable[str], *, category: str | None = USER_ANNOTATION
) -> dict[str, list[Region]]:
    """Intervals of the complete (``"ph": "X"``) events called ``names`` in a Chrome trace JSON file.

    Args:
        path: the file written by ``prof.export_chrome_trace(path)``.
        names: the labels to collect.
        category: keep only events of this ``"cat"`` (``None``: any category).

    Returns:
        ``{label: [Region, ...]}`` in start order, times in the trace's microseconds.

    Raises:
        ValueError: the file is not a Chrome trace (no ``traceEvents`` list).
    """
    wanted = _require_names(names)
    found: dict[str, list[Region]] = {n: [] for n in wanted}
    for event in _load_trace_events(path):
        if event.get("name") not in found:
            continue
        if category is not None and event.get("cat") != category:
            continue
        start = float(event["ts"])
        found[event["name"]].append(Region(event["name"], start, start + float(event["dur"])))
    return {n: sorted(r, key=lambda x: x.start_us) for n, r in found.items()}


def _load_trace_events(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        trace = json.load(f)
    events = trace.get("traceEvents") if isinstance(trace, dict) else trace
    if not isinstance(events, list):
        raise ValueError(f"{os.fspath(path)!r} is not a Chrome trace: expected a 'traceEvents' list")
    return [e for e in events if isinstance(e, dict) and e.get("ph") == "X" and "ts" in e and "dur" in e]


def trace_self_times(
    path: str | os.PathLike[str], names: Iterable[str], *, tolerance_us: float = 1e-3
) -> dict[str, float]:
    r"""Self time of the events called ``names`` in a Chrome trace, from the intervals alone.

    .. math::

        \begin{aligned}
        \operatorname{self}(r) &= \operatorname{dur}(r) \\
        &\quad - \sum_{c \in \operatorname{ch}(r)} \operatorname{dur}(c)
        \end{aligned}

    where the children :math:`\operatorname{ch}(r)` of ``r`` are the complete events of the same
    process and thread that lie inside ``r`` and inside no other event inside ``r`` (found by one
    sweep with a stack over the events sorted by start). Summed over the occurrences of each name: the quantity the
    profiler's ``key_averages()`` table calls *Self CPU*, recomputed from the exported file.

    Returns:
        ``{name: microseconds}`` (0.0 for a name that never ran).
    """
    wanted = _require_names(names)
    events = _load_trace_events(path)
    by_thread: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for event in events:
        by_thread.setdefault((event.get("pid"), event.get("tid")), []).append(event)
    totals = {n: 0.0 for n in wanted}
    for thread_events in by_thread.values():
        thread_events.sort(key=lambda e: (float(e["ts"]), -float(e["dur"])))
        children = [0.0] * len(thread_events)
        stack: list[int] = []  # indices of the open events, innermost last
        for i, event in enumerate(thread_events):
            start, dur = float(event["ts"]), float(event["dur"])
            while stack:
                top = thread_events[stack[-1]]
                top_end = float(top["ts"]) + float(top["dur"])
                starts_after = start >= top_end - tolerance_us and dur > 0
                if starts_after or start + dur > top_end + tolerance_us:
                    stack.pop()  # ``event`` is not inside ``top``: close ``top``
                else:
                    break
            if stack:
                children[stack[-1]] += dur
            stack.append(i)
        for i, event in enumerate(thread_events):
            if event.get("name") in totals:
                totals[event["name"]] += float(event["dur"]) - children[i]
    return totals


def is_nested(inner: Region, outer: Region, *, tolerance_us: float = 0.0) -> bool:
    """``True`` when ``inner`` lies inside ``outer`` (up to ``tolerance_us`` at each end)."""
    return inner.start_us >= outer.start_us - tolerance_us and inner.end_us <= outer.end_us + tolerance_us


def region_shares(parent: Region, children: Sequence[Region]) -> dict[str, float]:
    r"""Each child's share of its parent's duration, :math:`s_i = \text{dur}_i / \text{dur}_\text{parent}`.

    Children with the same name are added. The shares sum to 1 exactly when the children tile
    the parent (no gaps, no overlap); the remainder is time spent between the labelled regions.

    Raises:
        ValueError: a child is not inside the parent, or the parent has zero duration.
    """
    if parent.duration_us <= 0:
        raise ValueError(f"parent region {parent.name!r} must have a positive duration, got {parent.duration_us}")
    shares: dict[str, float] = {}
    for child in children:
        if not is_nested(child, parent):
            raise ValueError(f"region {child.name!r} is not inside its parent {parent.name!r}")
        shares[child.name] = shares.get(child.name, 0.0) + child.duration_us / parent.duration_us
    return shares


def count_events_within(events: Iterable[Any], name: str, region: Region) -> int:
    """How many events called ``name`` start and end inside ``region``.

    ``events`` are profiler events (``prof.events()``: ``name`` and ``time_range`` in
    microseconds) or :class:`Region` objects, e.g. the values of :func:`chrome_trace_regions`
    with ``category=None``. Reading the trace file is much cheaper than ``prof.events()`` for a
    long recording: torch writes the file from C++, whereas ``prof.events()`` builds one Python
    object per event.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if not isinstance(region, Region):
        raise TypeError(f"region must be a Region, got {type(region).__name__}")

    def interval(e: Any) -> Region:
        if isinstance(e, Region):
            return e
        return Region(e.name, float(e.time_range.start), float(e.time_range.end))

    return sum(1 for e in events if e.name == name and is_nested(interval(e), region))
