"""Every page of the built site, opened in Chromium at a desktop and a phone width.

A page fails, with one line per problem, on a cut-off display formula (named by its equation
label, or the nearest section or API entry when it has none), a display formula that needs
scrolling at the desktop width, a page wider than the viewport, a
broken image, a JavaScript error or a request to another host (render_check.py says exactly
what counts). Needs the built site: run ``nox -s docs`` first; ``nox -s browser`` runs this.
"""

from __future__ import annotations

import pytest
from render_check import SITE, VIEWPORTS, PageChecker, PageReport, site_pages

# At this width and above a display formula must fit its column. Every formula also fits the
# 390 px phone today, but with a few pixels to spare, so there scrolling is reported, not failed.
DESKTOP_MIN_WIDTH = 1000

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
    problems = list(report.problems)
    if width >= DESKTOP_MIN_WIDTH:
        # Scrolling keeps a formula readable; on a desktop it means the formula was not split.
        problems += [f"formula {label} needs scrolling: split it with aligned" for label in report.scroll_labels]
    if problems:
        pytest.fail(f"{page} at {width}x{height}:\n  " + "\n  ".join(problems), pytrace=False)
