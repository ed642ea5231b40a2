"""Execution time of the site's pages, section by section: one page at a time, and several at a
time as the docs build runs them.

The build executes the pages that are not in its cache ``nb_execution_workers`` at a time
(``docs/_ext/parallel_execution.py``), each in a kernel with one torch thread. This script runs
that executor outside Sphinx and without a cache, one section (a folder of pages) at a time, and
prints every page's time and each section's wall time for each worker count:

    python benchmarks/bench_pages.py                               # every section, 1 and 2 workers
    python benchmarks/bench_pages.py docs/advanced/training --workers 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from myst_nb.core.read import is_myst_markdown_notebook, read_myst_markdown_notebook
from myst_parser.config.main import MdParserConfig

ROOT = Path(__file__).resolve().parent.parent
os.environ["OMP_NUM_THREADS"] = "1"  # as conf.py sets it for the build's kernels
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

import parallel_execution  # noqa: E402  (the build's executor, docs/_ext)

MYST = MdParserConfig(enable_extensions={"amsmath", "colon_fence", "deflist", "dollarmath", "fieldlist"})


def read_page(path: Path):
    """The page as the notebook myst-nb executes (its code cells, kernelspec and metadata)."""
    return read_myst_markdown_notebook(path.read_text(encoding="utf-8"), config=MYST)


def sections(folders: list[Path]) -> dict[Path, list[Path]]:
    """The executable MyST pages directly in each folder; folders without any are left out."""
    found = {}
    for folder in folders:
        pages = [p for p in sorted(folder.glob("*.md")) if is_myst_markdown_notebook(p.read_text(encoding="utf-8"))]
        if pages:
            found[folder] = pages
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path, help="section folders (default: every one under docs/)")
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2], help="worker counts to time")
    parser.add_argument("--timeout", type=int, default=60, help="seconds per cell (the site's nb_execution_timeout)")
    args = parser.parse_args()
    folders = [f.resolve() for f in args.folders] or sorted(
        p for p in (ROOT / "docs").rglob("*") if p.is_dir() and "_build" not in p.parts and "_ext" not in p.parts
    )
    found = sections(folders)
    if not found:
        parser.error("no executable MyST pages in those folders")
    print(f"cores: {os.cpu_count()}; kernels with OMP_NUM_THREADS=1")
    failed = False
    for folder, pages in found.items():
        for workers in args.workers:
            jobs = [
                parallel_execution.Job(p.name, read_page(p), cwd=folder, timeout=args.timeout, allow_errors=False)
                for p in pages
            ]
            print(f"\n{folder.relative_to(ROOT)}/: {len(jobs)} pages, {workers} at a time")
            start = time.perf_counter()
            for outcome in parallel_execution.execute_notebooks(jobs, workers):
                if outcome.failure is not None:
                    failed = True
                    print(f"  FAILED  {outcome.job.name}: {outcome.failure}")
                else:
                    print(f"  {outcome.result.time:6.2f} s  {outcome.job.name}")
            print(f"  {time.perf_counter() - start:6.1f} s  section wall time")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
