"""Page kernels forked from a warm process, so that no page pays Python's start-up and imports.

Every page's kernel starts a Python process and imports torch, matplotlib, myst-nb and the
library before its first line runs: about 2.4 s of a page's time, and 1.2 s more for the pages
whose first optimizer, checkpoint or profiler imports ``torch._dynamo`` (half of the build's
execution time, all spent on the same imports). A zygote process imports those modules once and
then forks one kernel per page. Each forked kernel is a fresh ipykernel with its own connection
file, working directory and environment, so pages stay isolated from each other; what they share
is modules that were already imported when they started, as if each page's first cell had
imported them.

jupyter_client still launches and manages a process per kernel: the *client* below, which asks
the zygote for a fork, forwards the signals jupyter_client sends (interrupt, terminate) to the
forked kernel and exits when the kernel does. The kernel exits by itself when its client
disappears (even after a SIGKILL), and the zygote stops with the build.

Used by ``parallel_execution``: ``start_zygote`` returns ``None`` when the zygote cannot start,
and pages then run in ordinary kernels.

    python warm_kernels.py --zygote SOCKET MODULE...      # the zygote (started by start_zygote)
    python warm_kernels.py --client SOCKET CONNECTION     # a kernel, as jupyter_client runs it
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

#: What nearly every page imports; a module missing here is imported by the page as usual.
PRELOAD = (
    "numpy",
    "torch",
    "torch._dynamo",
    "matplotlib.pyplot",
    "myst_nb",
    "nemo_rl_theory",
    "ipykernel.kernelapp",
)
#: ipykernel's inline backend, set before matplotlib is imported, as ipykernel_launcher has it.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
POLL_SECONDS = 0.1


# --- the build's side ---------------------------------------------------------------------------


class Zygote:
    """A running zygote process and the kernel-manager class whose kernels it forks."""

    def __init__(self, process: subprocess.Popen, socket_path: Path, tmpdir: tempfile.TemporaryDirectory):
        self.process = process
        self.socket_path = socket_path
        self._tmpdir = tmpdir

    def kernel_manager_class(self) -> type:
        from jupyter_client.manager import AsyncKernelManager  # nbclient's default kind

        command = [sys.executable, str(Path(__file__).resolve()), "--client", str(self.socket_path)]

        class WarmKernelManager(AsyncKernelManager):
            def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
                return [*command, self.connection_file]

        return WarmKernelManager

    def close(self) -> None:
        self.process.stdout.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._tmpdir.cleanup()


def start_zygote(preload: tuple[str, ...] = PRELOAD, timeout: float = 60.0) -> Zygote | None:
    """Start a zygote that has imported ``preload``; ``None`` (and ordinary kernels) if it fails."""
    tmpdir = tempfile.TemporaryDirectory(prefix="warm-kernels-")
    socket_path = Path(tmpdir.name) / "zygote.sock"
    env = {**os.environ, "MPLBACKEND": INLINE_BACKEND}
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--zygote", str(socket_path), *preload],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    zygote = Zygote(process, socket_path, tmpdir)
    ready: list[str] = []
    reader = threading.Thread(target=lambda: ready.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not ready or ready[0].strip() != "ready":
        zygote.close()
        return None
    return zygote


# --- the zygote ---------------------------------------------------------------------------------


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _run_kernel(request: dict[str, Any], stdio: list[int], lifeline: int) -> None:
    """In the forked child: become the page's kernel, with its client's stdio, directory and env."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.setsid()  # its own process group: signals meant for the zygote do not reach it
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    client = int(request["client_pid"])

    def exit_with_client() -> None:
        while os.read(lifeline, 1):  # the client never writes: this returns at its end
            pass
        os._exit(1)

    threading.Thread(target=exit_with_client, daemon=True).start()
    from ipykernel.kernelapp import IPKernelApp

    # parent_handle's default was read from the zygote's environment at import: give it the
    # client, as jupyter_client's JPY_PARENT_PID would (it also keeps the terminal banner off).
    argv = ["-f", request["connection_file"], f"--IPKernelApp.parent_handle={client}"]
    sys.argv = [sys.executable, *argv]
    IPKernelApp.launch_instance(argv=argv)
    os._exit(0)


def zygote_main(socket_path: str, modules: list[str]) -> None:
    import importlib

    # This script's folder is not a page's: ipykernel_launcher also starts without the path's
    # first entry, and the kernel puts its working directory ("") back.
    del sys.path[0]

    for name in modules:
        importlib.import_module(name)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(socket_path)
    server.listen(16)
    server.settimeout(POLL_SECONDS * 2)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    parent = os.getppid()
    while os.getppid() == parent:  # the build that started it is still there
        _reap()
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        with conn:
            _, fds, _, _ = socket.recv_fds(conn, 1, 4)
            request = json.loads(conn.makefile("r").readline())
            pid = os.fork()
            if pid == 0:
                server.close()
                conn.close()
                _run_kernel(request, fds[:3], fds[3])
            for fd in fds:
                os.close(fd)
            conn.sendall(f"{pid}\n".encode())


# --- the client (what jupyter_client sees as the kernel process) --------------------------------


def client_main(socket_path: str, connection_file: str) -> None:
    request = {
        "connection_file": str(Path(connection_file).resolve()),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "client_pid": os.getpid(),
    }
    # The kernel reads the other end of this pipe: end of file when this process is gone, however
    # it ended (even SIGKILL, and before anyone reaps it).
    lifeline_read, _lifeline_write = os.pipe()  # the write end stays open until this process ends
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(socket_path)
        socket.send_fds(conn, [b"F"], [0, 1, 2, lifeline_read])  # stdio: where this process writes
        conn.sendall((json.dumps(request) + "\n").encode())
        kernel = int(conn.makefile("r").readline())
    os.close(lifeline_read)

    def forward(signum: int, _frame: Any) -> None:
        try:
            os.kill(kernel, signum)
        except ProcessLookupError:
            pass
        if signum == signal.SIGTERM:
            sys.exit(0)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(signum, forward)
    while True:  # the zygote reaps the kernel, so it disappears when it exits
        try:
            os.kill(kernel, 0)
        except ProcessLookupError:
            return
        time.sleep(POLL_SECONDS)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--zygote"]:
        zygote_main(sys.argv[2], sys.argv[3:])
    elif sys.argv[1:2] == ["--client"]:
        client_main(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(__doc__)
