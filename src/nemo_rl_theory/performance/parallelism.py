r"""Communication volumes of ring collectives, and the pipeline bubble with a schedule simulator.

Ring collectives (Patarasuk & Yuan 2009; the bandwidth terms of Thakur et al. 2005): ``N`` ranks
in a ring, a buffer of ``S`` bytes cut into ``N`` chunks. Reduce-scatter takes ``N - 1`` steps
in which every rank sends one chunk to its right neighbour and adds the chunk it receives;
all-gather takes ``N - 1`` steps that forward chunks; all-reduce is the two in a row. Bytes *sent
by each rank*:

.. math::

   \begin{aligned}
   V_{\mathrm{RS}} &= V_{\mathrm{AG}}
     = \tfrac{N-1}{N}\,S \\
   V_{\mathrm{AR}} &= 2\,\tfrac{N-1}{N}\,S
   \end{aligned}

where ``S`` is the size of the *full* (unsharded) buffer. :func:`simulate_ring` moves real tensors
around a ring chunk by chunk and counts the bytes, an independent route to the same numbers.

Pipeline parallelism (Huang et al. 2019, GPipe; Narayanan et al. 2021, 1F1B): ``p`` stages,
``m`` micro-batches, equal stage times. Both schedules take ``(m + p - 1)(t_f + t_b)``, of which
every stage is busy ``m (t_f + t_b)``, so the idle ("bubble") fraction is

.. math::

   \begin{aligned}
   \beta &= \frac{p-1}{m+p-1}
   \end{aligned}

(Narayanan et al. write it as bubble time over ideal time, ``(p - 1)/m``).
:func:`simulate_pipeline` schedules the forward and backward slots of each stage under their
data dependencies and measures the makespan and the idle fraction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nemo_rl_theory._validation import require_int, require_number

#: Collectives :func:`ring_bytes_per_rank` and :func:`simulate_ring` know.
COLLECTIVES: tuple[str, ...] = ("all_reduce", "reduce_scatter", "all_gather")
#: Pipeline schedules :func:`simulate_pipeline` knows.
SCHEDULES: tuple[str, ...] = ("gpipe", "1f1b")


def ring_bytes_per_rank(collective: str, size_bytes: float, world_size: int) -> float:
    r"""Bytes each rank sends in a ring ``collective`` over a buffer of ``size_bytes``.

    .. math::

       \begin{aligned}
       V_{\mathrm{RS}} = V_{\mathrm{AG}}
         &= \tfrac{N-1}{N}\,S \\
       V_{\mathrm{AR}} &= 2\,\tfrac{N-1}{N}\,S
       \end{aligned}

    Args:
        collective: ``"all_reduce"``, ``"reduce_scatter"`` or ``"all_gather"``.
        size_bytes: ``S``, bytes of the full buffer: the all-reduced tensor, the input of
            reduce-scatter, the output of all-gather (``N`` times one rank's shard).
        world_size: ``N``, ranks in the ring.

    Returns:
        Bytes sent (= received) by each rank. ``0`` for ``N = 1``.
    """
    if collective not in COLLECTIVES:
        raise ValueError(f"collective must be one of {COLLECTIVES}, got {collective!r}")
    if isinstance(size_bytes, bool) or not isinstance(size_bytes, (int, float)):
        raise TypeError(f"size_bytes must be a number, got {type(size_bytes).__name__}")
    if not (math.isfinite(size_bytes) and size_bytes >= 0):
        raise ValueError(f"size_bytes must be a finite number >= 0, got {size_bytes}")
    n = require_int("world_size", world_size)
    factor = 2.0 if collective == "all_reduce" else 1.0
    return factor * (n - 1) / n * float(size_bytes)


@dataclass(frozen=True)
class RingResult:
    """What :func:`simulate_ring` returns."""

    #: The result on each rank, in rank order, which is the reduced tensor (all-reduce), the
    #: rank's reduced chunk (reduce-scatter) or the concatenated shards (all-gather).
    outputs: list[Tensor]
    #: Bytes each rank sent, summed over the steps.
    bytes_sent: list[int]
    #: Ring steps taken (``N - 1`` per phase).
    steps: int


def _ring_reduce_scatter(chunks: list[list[Tensor]], sent: list[int]) -> int:
    """In place: after ``N - 1`` steps rank ``r`` holds the sum of every rank's chunk ``r``."""
    n = len(chunks)
    for step in range(n - 1):
        # every rank sends at once: rank r passes its partial sum of chunk (r - step - 1) to r + 1
        messages = [(r, (r - step - 1) % n, chunks[r][(r - step - 1) % n].clone()) for r in range(n)]
        for r, c, payload in messages:
            sent[r] += payload.numel() * payload.element_size()
            chunks[(r + 1) % n][c] = chunks[(r + 1) % n][c] + payload
    return n - 1


def _ring_all_gather(chunks: list[list[Tensor | None]], sent: list[int]) -> int:
    """In place: rank ``r`` starts with chunk ``r``; after ``N - 1`` steps every rank has all."""
    n = len(chunks)
    for step in range(n - 1):
        messages = []
        for r in range(n):
            c = (r - step) % n
            payload = chunks[r][c]
            assert payload is not None  # rank r received chunk (r - step) at the previous step
            messages.append((r, c, payload.clone()))
        for r, c, payload in messages:
            sent[r] += payload.numel() * payload.element_size()
            chunks[(r + 1) % n][c] = payload
    return n - 1


def simulate_ring(collective: str, inputs: list[Tensor]) -> RingResult:
    r"""Run a ring ``collective`` by hand on ``N = len(inputs)`` simulated ranks, counting bytes.

    The buffer is cut into ``N`` chunks along dim 0 (``Tensor.tensor_split``; chunks may differ
    by one row). Reduce-scatter: at step ``k`` rank ``r`` sends its partial sum of chunk
    ``(r - k - 1) mod N`` to rank ``r + 1``, which adds it to its own; after ``N - 1`` steps
    rank ``r`` holds chunk ``r`` summed over the ranks. All-gather: rank ``r`` starts with chunk
    ``r`` and at step ``k`` forwards chunk ``(r - k) mod N``. All-reduce: reduce-scatter, then
    all-gather of the reduced chunks.

    Args:
        collective: ``"all_reduce"``, ``"reduce_scatter"`` or ``"all_gather"``.
        inputs: one tensor per rank, all of the same shape and dtype: the full buffer
            (all-reduce, reduce-scatter; at least ``N`` rows) or the rank's shard (all-gather).

    Returns:
        A :class:`RingResult`: the per-rank outputs, bytes sent per rank, number of steps.
    """
    if collective not in COLLECTIVES:
        raise ValueError(f"collective must be one of {COLLECTIVES}, got {collective!r}")
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise TypeError(f"inputs must be a non-empty list of tensors (one per rank), got {type(inputs).__name__}")
    for r, t in enumerate(inputs):
        if not isinstance(t, Tensor):
            raise TypeError(f"inputs[{r}] must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() == 0:
            raise ValueError(f"inputs[{r}] must have at least one dimension, got a scalar")
        if t.shape != inputs[0].shape or t.dtype != inputs[0].dtype:
            raise ValueError(
                f"inputs must share shape and dtype, inputs[{r}] is {list(t.shape)} {t.dtype}, "
                f"inputs[0] is {list(inputs[0].shape)} {inputs[0].dtype}"
            )
    n = len(inputs)
    sent = [0] * n
    if collective == "all_gather":
        gathered: list[list[Tensor | None]] = [
            [inputs[r].clone() if c == r else None for c in range(n)] for r in range(n)
        ]
        steps = _ring_all_gather(gathered, sent)
        outputs = [torch.cat([c for c in row if c is not None]) for row in gathered]
        return RingResult(outputs, sent, steps)
    if inputs[0].shape[0] < n:
        raise ValueError(f"inputs must have at least N={n} rows to cut into N chunks, got {inputs[0].shape[0]}")
    chunks = [list(t.clone().tensor_split(n)) for t in inputs]
    steps = _ring_reduce_scatter(chunks, sent)
    if collective == "reduce_scatter":
        return RingResult([chunks[r][r] for r in range(n)], sent, steps)
    owned: list[list[Tensor | None]] = [[chunks[r][r] if c == r else None for c in range(n)] for r in range(n)]
    steps += _ring_all_gather(owned, sent)
    return RingResult([torch.cat([c for c in row if c is not None]) for row in owned], sent, steps)


def pipeline_bubble_fraction(stages: int, micro_batches: int) -> float:
    r"""Idle fraction of a synchronous pipeline (GPipe or 1F1B) with equal stage times.

    .. math::

       \begin{aligned}
       \beta &= \frac{p-1}{m+p-1}
       \end{aligned}

    Args:
        stages: ``p``, pipeline stages.
        micro_batches: ``m``, micro-batches per step.

    Returns:
        The fraction of stage-time (``p`` stages times the makespan) spent idle, in ``[0, 1)``.
    """
    p = require_int("stages", stages)
    m = require_int("micro_batches", micro_batches)
    return (p - 1) / (m + p - 1)


@dataclass(frozen=True)
class Slot:
    """One forward (``"F"``) or backward (``"B"``) pass of one micro-batch on one stage."""

    stage: int
    kind: str
    micro_batch: int
    start: float
    end: float


@dataclass(frozen=True)
class PipelineTimeline:
    """What :func:`simulate_pipeline` returns."""

    stages: int
    micro_batches: int
    schedule: str
    #: ``slots[s]``: stage ``s``'s slots in the order it runs them.
    slots: list[list[Slot]] = field(repr=False)
    #: Time from the first forward to the last backward.
    makespan: float
    #: ``1 - busy / (p * makespan)``.
    idle_fraction: float
    #: Per stage, the most micro-batches whose forward has run and backward has not
    #: (the activations the stage holds at once).
    max_in_flight: list[int]


def _stage_order(schedule: str, stage: int, stages: int, micro_batches: int) -> list[tuple[str, int]]:
    if schedule == "gpipe":  # all forwards, then all backwards
        return [("F", i) for i in range(micro_batches)] + [("B", i) for i in range(micro_batches)]
    warmup = min(stages - 1 - stage, micro_batches)  # 1F1B: warm-up forwards, steady F/B, cool-down
    order = [("F", i) for i in range(warmup)]
    for i in range(micro_batches - warmup):
        order += [("F", warmup + i), ("B", i)]
    order += [("B", i) for i in range(micro_batches - warmup, micro_batches)]
    return order


def simulate_pipeline(
    stages: int,
    micro_batches: int,
    schedule: str = "1f1b",
    *,
    forward_time: float = 1.0,
    backward_time: float = 2.0,
) -> PipelineTimeline:
    r"""Schedule one training step of a ``stages``-stage pipeline and measure it.

    Stage ``s`` runs its slots in the order of ``schedule``; a slot starts when the stage is
    free and its input is ready: ``F(s, i)`` after ``F(s - 1, i)``, ``B(s, i)`` after
    ``B(s + 1, i)`` (the last stage: after its own ``F(p - 1, i)``). ``"gpipe"``: all forwards,
    then all backwards (Huang et al. 2019). ``"1f1b"``: stage ``s`` runs ``p - 1 - s`` warm-up
    forwards, then alternates one forward and one backward, then drains the backwards
    (PipeDream-Flush, Narayanan et al. 2021).

    Args:
        stages: ``p``.
        micro_batches: ``m``.
        schedule: ``"gpipe"`` or ``"1f1b"``.
        forward_time: ``t_f``, time of one forward slot on any stage.
        backward_time: ``t_b``, time of one backward slot (about ``2 t_f`` for a transformer).

    Returns:
        A :class:`PipelineTimeline` (slots, makespan, idle fraction, in-flight micro-batches).
    """
    p = require_int("stages", stages)
    m = require_int("micro_batches", micro_batches)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    times = {
        "F": require_number("forward_time", forward_time, low=0.0, low_inclusive=False),
        "B": require_number("backward_time", backward_time, low=0.0, low_inclusive=False),
    }
    orders = [_stage_order(schedule, s, p, m) for s in range(p)]
    done: dict[tuple[str, int, int], float] = {}  # (kind, stage, micro-batch) -> end time
    slots: list[list[Slot]] = [[] for _ in range(p)]
    free = [0.0] * p
    nxt = [0] * p
    remaining = 2 * p * m
    while remaining:
        progressed = False
        for s in range(p):
            while nxt[s] < len(orders[s]):
                kind, i = orders[s][nxt[s]]
                if kind == "F":
                    dep = ("F", s - 1, i) if s > 0 else None
                else:
                    dep = ("B", s + 1, i) if s < p - 1 else ("F", s, i)
                if dep is not None and dep not in done:
                    break
                start = max(free[s], done[dep] if dep is not None else 0.0)
                end = start + times[kind]
                done[(kind, s, i)] = end
                slots[s].append(Slot(s, kind, i, start, end))
                free[s] = end
                nxt[s] += 1
                remaining -= 1
                progressed = True
        if not progressed:  # pragma: no cover - the two schedules never deadlock
            raise RuntimeError(f"schedule {schedule!r} deadlocked")
    makespan = max(free)
    busy = p * m * (times["F"] + times["B"])
    in_flight = []
    for s in range(p):
        held = peak = 0
        for slot in slots[s]:
            held += 1 if slot.kind == "F" else -1
            peak = max(peak, held)
        in_flight.append(peak)
    return PipelineTimeline(p, m, schedule, slots, makespan, 1.0 - busy / (p * makespan), in_flight)
