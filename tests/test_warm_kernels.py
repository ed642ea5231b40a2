"""Page kernels forked from a warm process (docs/_ext/warm_kernels.py) behave as new kernels do.

What a page can observe must not depend on how its kernel started: its working directory, its
path, its environment, its outputs (text, figures, subprocesses), the cell timeout. A failed
zygote falls back to ordinary kernels, and no process outlives the zygote or its clients.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_cache.executors.utils import single_nb_execution

from support import ROOT, load_module

sys.path.insert(0, str(ROOT / "docs" / "_ext"))
warm_kernels = load_module("docs/_ext/warm_kernels.py")

PROBE = [
    "import os, sys\nprint(os.getcwd(), '' in sys.path, any('_ext' in p for p in sys.path), os.getenv('WARM_PROBE'))",
    "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([0, 1])\nplt.show()",
    "import subprocess\nprint(subprocess.run(['echo', 'child'], capture_output=True, text=True).stdout.strip())",
    "import numpy as np\nprint(np.add(2, 3))",
]


def notebook(cells: list[str]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    return nb


def visible_outputs(nb: nbformat.NotebookNode) -> list[list[tuple[str, str]]]:
    """Per cell: (output type, its text or its MIME types), without execution counts."""
    cells = []
    for cell in nb.cells:
        outs = []
        for out in cell.outputs:
            body = out.get("text") or ",".join(sorted(out.get("data", {})))
            outs.append((out["output_type"], body))
        cells.append(outs)
    return cells


def warm_processes() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"_ext/warm_kernels.py" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.fixture(scope="module")
def zygote():
    started = warm_kernels.start_zygote(("numpy", "matplotlib.pyplot", "ipykernel.kernelapp"))
    assert started is not None, "the zygote did not start"
    yield started
    started.close()
    deadline = time.monotonic() + 5
    while warm_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not warm_processes(), "a zygote, client or kernel outlived the zygote"


def test_a_warm_kernel_shows_what_a_new_kernel_shows(zygote, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WARM_PROBE", "passed through")
    warm, cold = notebook(PROBE), notebook(PROBE)
    manager = zygote.kernel_manager_class()
    assert single_nb_execution(warm, str(tmp_path), 60, False, kernel_manager_class=manager).err is None
    assert single_nb_execution(cold, str(tmp_path), 60, False).err is None
    assert visible_outputs(warm) == visible_outputs(cold)
    assert visible_outputs(warm)[0] == [("stream", f"{tmp_path} True False passed through\n")]
    assert visible_outputs(warm)[1] == [("display_data", "image/png,text/plain")]


def test_a_cell_timeout_still_stops_a_warm_kernel(zygote, tmp_path: Path) -> None:
    nb = notebook(["import time\ntime.sleep(60)"])
    start = time.monotonic()
    result = single_nb_execution(nb, str(tmp_path), 2, False, kernel_manager_class=zygote.kernel_manager_class())
    assert type(result.err).__name__ == "CellTimeoutError"
    assert time.monotonic() - start < 30


def test_a_failing_cell_is_reported(zygote, tmp_path: Path) -> None:
    nb = notebook(["raise ValueError('from the page')"])
    result = single_nb_execution(nb, str(tmp_path), 60, False, kernel_manager_class=zygote.kernel_manager_class())
    assert type(result.err).__name__ == "CellExecutionError"
    assert "from the page" in result.exc_string


def test_a_kernel_exits_when_its_client_is_killed(zygote) -> None:
    import asyncio

    manager = zygote.kernel_manager_class()(kernel_name="python3")

    async def start_then_kill_the_client() -> set[int]:
        await manager.start_kernel(cwd=str(ROOT))
        client = manager.provisioner.process.pid
        deadline = time.monotonic() + 30
        while not (kernels := set(warm_processes()) - {client, zygote.process.pid}) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # the forked kernel keeps the zygote's command line
        os.kill(client, signal.SIGKILL)  # no chance to forward anything to the kernel
        manager.provisioner.process.wait(timeout=10)  # reap it, as jupyter_client would on shutdown
        await manager.cleanup_resources()
        return kernels

    kernels = asyncio.run(start_then_kill_the_client())
    assert kernels, "no forked kernel was seen"
    deadline = time.monotonic() + 10
    while kernels & set(warm_processes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not kernels & set(warm_processes()), "the kernel outlived its client"


def test_a_zygote_that_cannot_start_means_ordinary_kernels() -> None:
    assert warm_kernels.start_zygote(("no_such_module_anywhere",), timeout=30) is None
    assert not [pid for pid in warm_processes() if b"no_such_module" in Path(f"/proc/{pid}/cmdline").read_bytes()]
