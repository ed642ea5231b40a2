"""Execute the pages that need it several at a time, before Sphinx reads them one by one.

myst-nb executes a page while Sphinx reads it, and this site reads serially: a cold
``sphinx-build -j 2`` twice reported success with most pages unwritten. Reading is cheap; the
cost is in the page kernels, each a one-thread process. So on ``env-before-read-docs`` this
extension reads every page that is about to be read the way myst-nb does, looks its code up in
the jupyter-cache, executes the misses ``nb_execution_workers`` at a time with the call myst-nb
itself makes (``single_nb_execution``: same working directory, timeout and error policy) and
stores the executed notebooks in the cache. Sphinx then reads serially and myst-nb finds every
page's outputs there, keyed as it keys them (code cells and kernelspec). The kernels are forked
from a process that has already imported what pages import (``warm_kernels.py``; set
``nb_warm_kernels = False`` for new processes), which halves the execution time of a cold build.

A page that fails here is not stored: myst-nb executes it again while reading it and fails the
build as usual, with the page's name and traceback. With ``nb_execution_workers = 1``, or an
execution mode other than ``"cache"``, this extension does nothing.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from jupyter_cache import get_cache
from jupyter_cache.base import CacheBundleIn, JupyterCacheAbstract
from jupyter_cache.executors.utils import ExecutionResult, single_nb_execution
from myst_nb.core.config import NbParserConfig
from myst_nb.core.nb_to_tokens import nb_node_to_dict
from myst_nb.core.read import create_nb_reader
from nbformat import NotebookNode
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """One notebook to execute in place, with myst-nb's settings for its page."""

    name: str
    notebook: NotebookNode
    cwd: Path | None  # None: a fresh temporary folder (``nb_execution_in_temp``)
    timeout: int | None
    allow_errors: bool
    kernel_manager_class: type | None = None  # None: jupyter_client's, a new Python process


@dataclass
class Outcome:
    job: Job
    result: ExecutionResult | None  # None when the kernel could not run at all
    failure: str | None  # None when every cell ran (or ``allow_errors``)


def _run(job: Job) -> Outcome:
    def execute(cwd: Path) -> ExecutionResult:
        kernel = {} if job.kernel_manager_class is None else {"kernel_manager_class": job.kernel_manager_class}
        return single_nb_execution(
            job.notebook, cwd=str(cwd), timeout=job.timeout, allow_errors=job.allow_errors, meta_override=True, **kernel
        )

    try:
        if job.cwd is None:
            with tempfile.TemporaryDirectory() as tmp:
                result = execute(Path(tmp))
        else:
            result = execute(job.cwd)
    except Exception as error:  # e.g. a kernel that never started: reported, not raised
        return Outcome(job, None, f"{type(error).__name__}: {error}")
    return Outcome(job, result, None if result.err is None else type(result.err).__name__)


def execute_notebooks(jobs: Sequence[Job], workers: int) -> Iterator[Outcome]:
    """Execute ``jobs`` in place, ``workers`` at a time; yield each outcome as it finishes.

    Threads suffice: each notebook runs in its own kernel process, and the threads only relay
    its messages.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1:
        yield from map(_run, jobs)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in as_completed([pool.submit(_run, job) for job in jobs]):
            yield future.result()


# --- Sphinx -------------------------------------------------------------------------------------


def _page_config(nb_config: NbParserConfig, notebook: NotebookNode) -> NbParserConfig:
    """The page's settings: the site's, updated by the page's own ``mystnb`` metadata."""
    overrides = notebook.metadata.get(nb_config.metadata_key)
    if not overrides:
        return nb_config
    overrides = nb_node_to_dict(overrides)
    overrides.pop("output_folder", None)
    try:
        return nb_config.copy(**overrides)
    except Exception:  # myst-nb warns about bad metadata when it reads the page
        return nb_config


def _alias_kernel(nb_config: NbParserConfig, notebook: NotebookNode) -> None:
    """Apply ``nb_kernel_rgx_aliases`` as myst-nb does: the kernel name is part of the cache key."""
    name = notebook.metadata.get("kernelspec", {}).get("name")
    for pattern, alias in nb_config.kernel_rgx_aliases.items():
        if name is not None and re.fullmatch(pattern, name):
            notebook.metadata["kernelspec"]["name"] = alias
            return


def _pages_to_execute(
    env: BuildEnvironment, docnames: list[str], cache: JupyterCacheAbstract
) -> list[tuple[Job, Path, dict[str, str] | None]]:
    """Jobs for the notebook pages among ``docnames`` whose code is not in ``cache``, each with
    its source path and myst-nb's reader format (both name the page's record in the cache)."""
    site_config: NbParserConfig = env.mystnb_config
    pages = []
    for docname in sorted(docnames):
        path = Path(env.doc2path(docname))
        text = path.read_text(encoding="utf-8")
        reader = create_nb_reader(str(path), env.myst_config, site_config, text)
        if reader is None:  # plain Markdown: nothing to execute
            continue
        notebook = reader.read(text)
        _alias_kernel(site_config, notebook)
        config = _page_config(site_config, notebook)
        posix = PurePosixPath(path.as_posix())
        if config.execution_mode != "cache" or any(posix.match(p) for p in config.execution_excludepatterns):
            continue
        try:
            cache.match_cache_notebook(notebook)
        except KeyError:
            cwd = None if config.execution_in_temp else path.parent.resolve()
            job = Job(docname, notebook, cwd, config.execution_timeout, config.execution_allow_errors)
            pages.append((job, path, reader.read_fmt))
    return pages


def execute_in_parallel(app: Sphinx, env: BuildEnvironment, docnames: list[str]) -> None:
    """``env-before-read-docs`` handler: fill the cache for ``docnames``, several pages at once."""
    workers: int = app.config.nb_execution_workers
    if workers < 1:
        raise ValueError(f"nb_execution_workers must be >= 1, got {workers}")
    if workers == 1 or env.mystnb_config.execution_mode != "cache":
        return
    cache = get_cache(env.mystnb_config.execution_cache_path or ".jupyter_cache")
    pages = _pages_to_execute(env, docnames, cache)
    if len(pages) < 2:
        return  # nothing to overlap: myst-nb runs a single page while reading it
    sources = {job.name: (path, read_fmt) for job, path, read_fmt in pages}
    start = time.perf_counter()
    import warm_kernels  # beside this file, on the path conf.py gives Sphinx its extensions

    zygote = warm_kernels.start_zygote() if app.config.nb_warm_kernels else None
    kind = "forked from a warm process" if zygote is not None else "in new processes"
    logger.info(f"executing {len(pages)} pages, {min(workers, len(pages))} at a time, kernels {kind}")
    jobs = [job for job, _, _ in pages]
    if zygote is not None:
        manager = zygote.kernel_manager_class()
        for job in jobs:
            job.kernel_manager_class = manager
    try:
        _store_outcomes(execute_notebooks(jobs, workers), sources, cache)
    finally:
        if zygote is not None:
            zygote.close()
    logger.info(f"executed {len(pages)} pages in {time.perf_counter() - start:.1f} s")


def _store_outcomes(
    outcomes: Iterator[Outcome], sources: dict[str, tuple[Path, dict[str, str] | None]], cache: JupyterCacheAbstract
) -> None:
    for outcome in outcomes:
        name = outcome.job.name
        if outcome.failure is not None:
            # Not cached: myst-nb executes the page again while reading and reports it.
            logger.info(f"{name}: failed ({outcome.failure}); the page is executed again when read")
            continue
        # Cache writes stay on this thread: the cache is one SQLite database.
        path, read_fmt = sources[name]
        record = (
            cache.add_nb_to_project(str(path), read_data=read_fmt)
            if read_fmt is not None
            else cache.add_nb_to_project(str(path))
        )
        seconds = outcome.result.time
        bundle = CacheBundleIn(outcome.job.notebook, record.uri, data={"execution_seconds": seconds})
        cache.cache_notebook_bundle(bundle, check_validity=False, overwrite=True)
        logger.info(f"{name}: executed in {seconds:.2f} s")


def setup(app: Sphinx) -> dict[str, Any]:
    # rebuild "": the number of workers changes how pages execute, not what they show
    app.add_config_value("nb_execution_workers", min(2, os.cpu_count() or 1), "", int)
    # fork page kernels from a process that has imported what pages import (warm_kernels.py)
    app.add_config_value("nb_warm_kernels", True, "", bool)
    # after myst-nb's own handlers, whatever the extension order
    app.connect("env-before-read-docs", execute_in_parallel, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
