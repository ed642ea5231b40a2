"""Fixtures of the browser tests (``nox -s browser``): Debian's Chromium, driven by Playwright,
and the built site served from 127.0.0.1. pyproject.toml keeps this folder out of the default
``pytest`` run (``norecursedirs``); ``nox -s browser`` runs it after ``nox -s docs``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from render_check import (
    CHROMIUM_HINT,
    SITE,
    VIEWPORTS,
    PageChecker,
    PageReport,
    chromium_executable,
    launch_args,
    serve,
)

REPORTS: list[PageReport] = []


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's Chromium (never a downloaded one), headless, other hosts unresolvable."""
    from playwright.sync_api import sync_playwright

    executable = chromium_executable()
    if executable is None:
        pytest.fail(f"no Chromium found: {CHROMIUM_HINT}", pytrace=False)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=launch_args(), timeout=60_000)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="session")
def site_url() -> Iterator[str]:
    """The built site (docs/_build/html), served on 127.0.0.1 for the session. No site: a failure."""
    if not (SITE / "index.html").is_file():
        pytest.fail(f"no built site in {SITE}: run `.venv/bin/nox -s docs` before `nox -s browser`", pytrace=False)
    with serve(SITE) as url:
        yield url


@pytest.fixture(scope="session")
def reports() -> list[PageReport]:
    """Where each page's report goes, for the summary at the end of the session."""
    return REPORTS


@pytest.fixture(scope="session")
def checkers(browser: Any) -> Iterator[dict[str, PageChecker]]:
    """One tab per viewport of ``VIEWPORTS``, reused for every page."""
    tabs = {name: PageChecker(browser, *size) for name, size in VIEWPORTS.items()}
    yield tabs
    for tab in tabs.values():
        tab.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORTS:
        return
    by_width: dict[int, list[PageReport]] = defaultdict(list)
    for report in REPORTS:
        by_width[report.width].append(report)
    write = terminalreporter.write_line
    terminalreporter.section("browser rendering")
    for width, reports in sorted(by_width.items(), reverse=True):
        formulas = sum(report.formulas for report in reports)
        rendered = sum(report.rendered for report in reports)
        cut = sum(len(report.cut_labels) for report in reports)
        scrolled = {r.page: r.scroll_labels for r in reports if r.scroll_labels}
        failing = sum(bool(report.problems) for report in reports)
        write(
            f"{width}px: {len(reports)} pages ({failing} with problems), {formulas} display formulas "
            f"({rendered} rendered), {cut} cut off, {sum(map(len, scrolled.values()))} wider than their column "
            "(they scroll from their left edge)"
        )
        for page, labels in scrolled.items():  # a failure on a desktop; worth splitting on a phone
            write(f"  scrolls at {width}px: {page}: {', '.join(labels)}")
