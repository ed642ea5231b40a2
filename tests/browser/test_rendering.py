"""Every page of the built site, opened in Chromium at a desktop and a phone width.

A page fails, with one line per problem, on a cut-off display formula (named by its equation
label, or the nearest section or API entry when it has none), a page wider than the viewport, a
broken image, a JavaScript error or a request to another host (render_check.py says exactly
what counts). Needs the built site: run ``nox -s docs`` first; ``nox -s browser`` runs this.
"""

from __future__ import annotations

import pytest
from render_check import SITE, VIEWPORTS, PageChecker, PageReport, site_pages

# No site yet: one placeholder, which fails in the ``site_url`` fixture (never a silent skip).
PAGES = site_pages(SITE) if (SITE / "index.html").is_file() else ["<no built site>"]


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
@pytest.mark.parametrize("page", PAGES)
def test_page_renders(
    page: str, viewport: str, site_url: str, checkers: dict[str, PageChecker], reports: list[PageReport]
) -> None:
    report = checkers[viewport].check(site_url + page, page)
    reports.append(report)
    width, height = VIEWPORTS[viewport]
    if report.problems:
        pytest.fail(f"{page} at {width}x{height}:\n  " + "\n  ".join(report.problems), pytrace=False)
