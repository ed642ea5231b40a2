r"""Run a function on ``world_size`` real ``torch.distributed`` ranks on this machine, bounded.

:func:`run_ranks` starts one process per rank (``fork`` by default), joins them into a process
group on ``tcp://127.0.0.1:<free port>`` (gloo by default, on the loopback interface), calls
``fn(rank, world_size)`` in each and returns the per-rank results in rank order. It never leaves
a process behind: when a rank raises, dies, or any rank has not answered by the deadline, every
child is terminated (then killed) and a :class:`RuntimeError` names the rank and the error.

This is what the distributed pages use to *run* data parallelism, FSDP2 and tensor parallelism
on CPU instead of describing them; NeMo RL does the same with many GPUs, one Ray actor per rank
and NCCL (NeMo RL 7ea279a, ``nemo_rl/distributed/worker_groups.py``).
"""

from __future__ import annotations

import os
import pickle
import queue as queue_module
import socket
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")

#: Backends :func:`run_ranks` accepts (``torch.distributed`` names).
BACKENDS: tuple[str, ...] = ("gloo", "nccl", "mpi", "ucc", "xccl")

_POLL_S = 0.05  # how often the parent looks at the queue and the children
_GRACE_S = 2.0  # after a success: how long a rank may take to exit before it is terminated
_SETTLE_S = 0.5  # after a first failure: how long to wait for the other ranks' reports
# A rank that fails because *another* rank died reports one of these (gloo's wording).
_PEER_ERRORS: tuple[str, ...] = ("by peer", "remote worker", "Connection refused", "Socket closed", "Timed out")


def free_port() -> int:
    """A TCP port on ``127.0.0.1`` that was free when asked (the OS picks it).

    The socket is closed before returning, so another process could take the port in between;
    :func:`run_ranks` reports that as a failed rendezvous rather than hanging.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _loopback_interface() -> str | None:
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):  # pragma: no cover - platforms without if_nameindex
        return None
    for candidate in ("lo", "lo0"):
        if candidate in names:
            return candidate
    return None


def _rank_main(
    fn: Callable[[int, int], Any],
    rank: int,
    world_size: int,
    port: int,
    backend: str,
    timeout_s: float,
    threads_per_rank: int,
    results: Any,
) -> None:
    """Body of one child process: join the group, run ``fn``, report, leave the group."""
    try:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(threads_per_rank)
        loopback = _loopback_interface()
        if loopback is not None:  # gloo binds the loopback interface only
            os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
        dist.init_process_group(
            backend,
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
        )
        try:
            value = fn(rank, world_size)
            payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)  # fail here, not in the feeder
        finally:
            dist.destroy_process_group()
        results.put(("ok", rank, payload))
    except BaseException as exc:  # report every failure; the parent stops the other ranks
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        tail = "".join(traceback.format_tb(exc.__traceback__)[-3:])
        results.put(("error", rank, f"{text}\n{tail}"))


def _check_args(fn: object, world_size: object, timeout_s: object, backend: object, threads_per_rank: object) -> None:
    if not callable(fn):
        raise TypeError(f"fn must be callable as fn(rank, world_size), got {type(fn).__name__}")
    if isinstance(world_size, bool) or not isinstance(world_size, int):
        raise TypeError(f"world_size must be an int, got {type(world_size).__name__}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
        raise TypeError(f"timeout_s must be a number of seconds, got {type(timeout_s).__name__}")
    if not (timeout_s > 0 and timeout_s < float("inf")):
        raise ValueError(f"timeout_s must be a finite number of seconds > 0, got {timeout_s}")
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if isinstance(threads_per_rank, bool) or not isinstance(threads_per_rank, int):
        raise TypeError(f"threads_per_rank must be an int, got {type(threads_per_rank).__name__}")
    if threads_per_rank < 1:
        raise ValueError(f"threads_per_rank must be >= 1, got {threads_per_rank}")


def _failure_message(errors: dict[int, str], stuck: list[int], timeout_s: float) -> str:
    """The root cause first: a rank's own exception, then a rank that exited, then a rank that hung,
    then errors a rank got because a peer died or hung (gloo's connection and timeout errors)."""

    def is_peer(text: str) -> bool:
        return any(marker in text for marker in _PEER_ERRORS)

    entries: list[tuple[int, int, str]] = []
    for r, text in errors.items():
        first = text.splitlines()[0]
        if text.startswith("exited"):
            entries.append((1, r, f"rank {r} {first}"))
        else:
            entries.append((3 if is_peer(first) else 0, r, f"rank {r} raised {first}"))
    for r in stuck:
        entries.append((2, r, f"rank {r} did not finish within timeout_s={timeout_s} s (hung?)"))
    entries.sort()
    message = "; ".join(text for _, _, text in entries)
    root = entries[0][1] if entries else None
    if root in errors and entries[0][0] == 0:
        detail = "\n".join(errors[root].splitlines()[1:])
        if detail.strip():
            message += f"\n{detail}"
    return message


def _stop(procs: list[Any], grace_s: float) -> None:
    """Join each child for up to ``grace_s`` in total, then terminate, then kill what is left."""
    procs = [p for p in procs if p.pid is not None]  # started ones only
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=2.0)
        if p.is_alive():  # pragma: no cover - SIGTERM ignored
            p.kill()
            p.join(timeout=2.0)


def run_ranks(
    fn: Callable[[int, int], T],
    world_size: int = 2,
    *,
    timeout_s: float = 60.0,
    backend: str = "gloo",
    start_method: str = "fork",
    threads_per_rank: int = 1,
) -> list[T]:
    """Run ``fn(rank, world_size)`` on ``world_size`` ranks of a fresh process group.

    Each rank is a child process that sets ``torch.set_num_threads(threads_per_rank)``, calls
    ``torch.distributed.init_process_group(backend, init_method="tcp://127.0.0.1:<port>",
    rank=rank, world_size=world_size, timeout=timeout_s)``, runs ``fn`` (which may use any
    collective of the default group), destroys the group and sends its result back.

    Args:
        fn: the per-rank body. With ``start_method="fork"`` any callable works (closures,
            lambdas); with ``"spawn"``/``"forkserver"`` it must be picklable (module level).
            The ranks are daemonic processes, so ``fn`` cannot start ``multiprocessing``
            children of its own (e.g. ``DataLoader`` workers).
        world_size: number of ranks (processes).
        timeout_s: bound on the whole run: the process group's timeout and the parent's deadline
            for every result.
        backend: ``torch.distributed`` backend; ``"gloo"`` works on CPU.
        start_method: ``multiprocessing`` start method. ``"spawn"`` and ``"forkserver"`` also
            start multiprocessing's resource tracker (and fork server), shared helpers that live
            until the interpreter exits; ``"fork"`` starts only the ranks.
        threads_per_rank: intra-op threads of each rank.

    Returns:
        The ``world_size`` results, ``results[r]`` from rank ``r``. They travel by pickle: return
        numbers, numpy arrays or CPU tensors (not ``DTensor``\\ s: call ``.full_tensor()`` or
        ``.to_local()`` first).

    Raises:
        RuntimeError: a rank raised (the message names the rank and its exception), exited
            without a result, or did not answer within ``timeout_s``; every child has been
            stopped before this is raised.
        TypeError, ValueError: bad arguments, naming the argument.
    """
    import multiprocessing as mp

    _check_args(fn, world_size, timeout_s, backend, threads_per_rank)
    try:
        ctx = mp.get_context(start_method)
    except ValueError as exc:
        raise ValueError(f"start_method must be one of {mp.get_all_start_methods()}, got {start_method!r}") from exc
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(
            target=_rank_main,
            args=(fn, rank, world_size, port, backend, float(timeout_s), threads_per_rank, results),
            name=f"run_ranks-rank{rank}",
            daemon=True,
        )
        for rank in range(world_size)
    ]
    got: dict[int, bytes] = {}
    errors: dict[int, str] = {}
    stuck: list[int] = []
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + float(timeout_s)
        settle: float | None = None  # after a first failure: collect the others' for a moment
        while len(got) + len(errors) < world_size:
            now = time.monotonic()
            if settle is not None and now > settle:
                break
            try:
                status, rank, payload = results.get(timeout=_POLL_S)
            except queue_module.Empty:
                for r, p in enumerate(procs):
                    if r not in got and r not in errors and not p.is_alive() and p.exitcode is not None:
                        if settle is None:  # it may have reported just before exiting: look once more
                            settle = time.monotonic() + _SETTLE_S
                        elif now > settle - _SETTLE_S / 2:
                            errors[r] = f"exited with code {p.exitcode} without a result"
                if settle is None and now > deadline:
                    break
                continue
            if status == "ok":
                got[rank] = payload
            else:
                errors[rank] = payload
                if settle is None:
                    settle = time.monotonic() + _SETTLE_S
        for r, p in enumerate(procs):  # ranks that neither answered nor failed
            if r not in got and r not in errors:
                if p.is_alive():
                    stuck.append(r)
                else:
                    errors[r] = f"exited with code {p.exitcode} without a result"
    finally:
        _stop(procs, _GRACE_S if len(got) == world_size else 0.0)
        results.close()
        results.join_thread()
    if errors or stuck:
        why = _failure_message(errors, stuck, timeout_s)
        raise RuntimeError(f"run_ranks({world_size} ranks, {backend}): {why}")
    return [pickle.loads(got[r]) for r in range(world_size)]
