"""run_ranks / free_port (nemo_rl_theory.performance.distributed): real gloo ranks on loopback.

Results come back in rank order and equal what the collectives must give (closed forms); every
failure path (a rank that raises, exits, hangs inside or outside a collective, returns something
unpicklable) raises a RuntimeError naming the culprit rank within the bound, and no child process
survives any of them (checked by reading this process's children from /proc).
"""

from __future__ import annotations

import operator
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist

from nemo_rl_theory.performance.distributed import BACKENDS, free_port, run_ranks


def _is_multiprocessing_helper(pid: int) -> bool:
    """multiprocessing's resource tracker, started once by the first spawn-context queue and
    living until the interpreter exits (it is not a rank)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"resource_tracker" in f.read()
    except OSError:
        return False


def _children() -> list[int]:
    """Live (non-zombie) child processes of this process, read from /proc."""
    me = os.getpid()
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, ppid = fields[0], int(fields[1])
        if ppid == me and state != "Z" and not _is_multiprocessing_helper(int(entry)):
            kids.append(int(entry))
    return kids


@pytest.fixture(autouse=True)
def no_process_left_behind():
    before = set(_children())
    yield
    left = set(_children()) - before
    assert not left, f"child processes left behind: {sorted(left)}"
    assert not dist.is_initialized()  # the parent never joins a group


def test_free_port_is_bindable_on_loopback():
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_collectives_give_their_closed_forms_in_rank_order(world_size):
    def body(rank, ws):
        assert dist.get_rank() == rank and dist.get_world_size() == ws
        assert torch.get_num_threads() == 1
        x = torch.tensor([float(rank + 1)], dtype=torch.float64)
        dist.all_reduce(x)  # sum of 1..N
        parts = [torch.zeros(1, dtype=torch.int64) for _ in range(ws)]
        dist.all_gather(parts, torch.tensor([rank * 10]))
        return rank, float(x), torch.cat(parts)

    out = run_ranks(body, world_size, timeout_s=30)
    assert [r for r, _, _ in out] == list(range(world_size))
    for _, total, gathered in out:
        assert total == world_size * (world_size + 1) / 2
        assert gathered.tolist() == [10 * r for r in range(world_size)]


def test_threads_per_rank_is_set_in_each_rank():
    assert run_ranks(lambda r, w: torch.get_num_threads(), 2, threads_per_rank=2, timeout_s=30) == [2, 2]


def test_gloo_binds_loopback_and_the_group_is_destroyed_after_fn():
    def body(rank, ws):
        return os.environ.get("GLOO_SOCKET_IFNAME"), dist.get_backend()

    out = run_ranks(body, 2, timeout_s=30)
    assert out == [("lo", "gloo")] * 2


def test_spawn_start_method_with_a_picklable_fn():
    assert run_ranks(operator.add, 2, start_method="spawn", timeout_s=60) == [2, 3]


def test_a_rank_that_raises_is_named_and_the_others_are_stopped():
    def body(rank, ws):
        if rank == 1:
            raise ValueError("boom from rank one")
        dist.barrier()  # rank 0 waits for rank 1, which never comes
        return rank

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"rank 1 raised ValueError: boom from rank one") as info:
        run_ranks(body, 2, timeout_s=20)
    assert time.monotonic() - t0 < 10  # failure is reported at once, not at the timeout
    assert str(info.value).index("rank 1") < str(info.value).find("rank 0") or "rank 0" not in str(info.value)


def test_a_rank_that_hangs_outside_a_collective_is_named_at_the_timeout():
    def body(rank, ws):
        if rank == 1:
            time.sleep(600)
        return rank

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"rank 1 did not finish within timeout_s=1.5 s"):
        run_ranks(body, 2, timeout_s=1.5)
    assert time.monotonic() - t0 < 8


def test_a_rank_that_hangs_while_the_other_waits_in_a_collective():
    def body(rank, ws):
        if rank == 1:
            time.sleep(600)
        dist.all_reduce(torch.ones(3))
        return rank

    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        run_ranks(body, 2, timeout_s=1.5)
    assert time.monotonic() - t0 < 8
    assert str(info.value).split(": ", 1)[1].startswith("rank 1 did not finish")  # root cause first


def test_a_rank_that_exits_without_a_result():
    def body(rank, ws):
        if rank == 0:
            os._exit(3)
        dist.barrier()
        return rank

    with pytest.raises(RuntimeError, match=r"rank 0 exited with code 3 without a result"):
        run_ranks(body, 2, timeout_s=20)


def test_an_unpicklable_result_is_an_error_of_that_rank():
    def body(rank, ws):
        return (lambda: None) if rank == 1 else rank

    with pytest.raises(RuntimeError, match=r"rank 1 raised .*(pickle|Pickl)"):
        run_ranks(body, 2, timeout_s=20)


def test_a_failed_rendezvous_is_bounded():
    # A port already listened on by someone else: rank 0 cannot host the store there.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        import nemo_rl_theory.performance.distributed as mod

        original = mod.free_port
        mod.free_port = lambda: port
        try:
            t0 = time.monotonic()
            with pytest.raises(RuntimeError, match=r"rank \d"):
                run_ranks(lambda r, w: r, 2, timeout_s=2)
            assert time.monotonic() - t0 < 10
        finally:
            mod.free_port = original


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(fn=3), TypeError, "fn must be callable"),
        (dict(world_size=0), ValueError, "world_size must be >= 1"),
        (dict(world_size=2.0), TypeError, "world_size must be an int"),
        (dict(world_size=True), TypeError, "world_size must be an int"),
        (dict(timeout_s=0), ValueError, "timeout_s must be a finite number"),
        (dict(timeout_s=float("inf")), ValueError, "timeout_s must be a finite number"),
        (dict(timeout_s=float("nan")), ValueError, "timeout_s must be a finite number"),
        (dict(timeout_s="5"), TypeError, "timeout_s must be a number"),
        (dict(backend="tcp"), ValueError, "backend must be one of"),
        (dict(start_method="thread"), ValueError, "start_method must be one of"),
        (dict(threads_per_rank=0), ValueError, "threads_per_rank must be >= 1"),
        (dict(threads_per_rank=1.5), TypeError, "threads_per_rank must be an int"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    args = dict(fn=lambda r, w: r, world_size=2)
    args.update(kwargs)
    fn = args.pop("fn")
    with pytest.raises(error, match=match):
        run_ranks(fn, **args)


def test_backends_are_torch_names():
    assert "gloo" in BACKENDS and dist.is_gloo_available()
