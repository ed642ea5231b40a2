"""The browser checks can fail: synthetic pages, each with one fault, must be reported naming it.

Cheap (no site build: a few small pages in a temporary folder) and run by ``nox -s browser``
before the site's pages, so the guarantee of test_rendering.py is itself tested. The formula
pages copy the HTML that docs/_ext/strict_katex.py writes, and the layout that cut formulas
off (pydata-sphinx-theme's reversed flex row with ``overflow: hidden``), with and without the
site's docs/_static/responsive.css.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from render_check import ROOT, PageChecker, serve

SITE_CSS = ROOT / "docs" / "_static" / "responsive.css"
# pydata-sphinx-theme's display-math layout, and KaTeX's centring, as the built site has them.
THEME_CSS = """
div.math { display: flex; flex-direction: row-reverse; align-items: center; gap: .5em;
           max-width: 100%; overflow: hidden; }
.katex-display { display: block; text-align: center; margin: 1em 0; }
.katex-display > .katex { display: block; text-align: center; white-space: nowrap; }
.katex-display > .katex > .katex-html { display: block; }
.katex .base { display: inline-block; position: relative; white-space: nowrap; }
body { margin: 0; font: 16px sans-serif; }
"""


def formula(width: int, label: str | None = "eq-test", number: bool = True) -> str:
    """A display formula as strict_katex writes it, ``width`` px wide."""
    attributes = f' id="equation-{label}"' if label else ""
    eqno = '<span class="eqno">(1)<a class="headerlink" href="#">#</a></span>' if number else ""
    return (
        f'<div class="math"{attributes}>{eqno}<span class="katex-display"><span class="katex">'
        f'<span class="katex-html" aria-hidden="true"><span class="base" style="width:{width}px">x</span>'
        "</span></span></span></div>"
    )


def page(body: str, *, site_css: bool = True, head: str = "") -> str:
    link = '<link rel="stylesheet" href="responsive.css">' if site_css else ""
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><style>{THEME_CSS}</style>{link}{head}</head>'
        f'<body><main><article class="bd-article" style="padding: 0 16px">{body}</article></main></body></html>'
    )


PAGES = {
    "good.html": page('<h2 id="sec">Fits</h2>' + formula(200) + formula(3000, "eq-long") + formula(150, None)),
    "cut-theme.html": page('<h2 id="sec">Cut</h2>' + formula(3000, "eq-cut"), site_css=False),
    "cut-unlabelled.html": page('<section id="kl"><p>Text</p>' + formula(3000, None, number=False), site_css=False),
    "cut-right.html": page(
        formula(3000, "eq-right").replace('class="math"', 'class="math" style="flex-direction: row"'), site_css=False
    ),
    "spills.html": page(
        '<div class="math" id="equation-eq-spill" style="display:block; overflow:visible">'
        '<span class="katex-display" style="display:block"><span class="katex" style="display:block">'
        '<span class="katex-html" style="display:block; overflow:visible; max-width:none">'
        '<span class="base" style="width:3000px">x</span></span></span></span></div>',
        site_css=False,
    ),
    "wide.html": page('<div id="wide-table" style="width: 3000px">a wide block</div>'),
    "broken-image.html": page('<img src="missing.png" alt="missing">'),
    "external-script.html": page("", head='<script src="https://example.com/x.js"></script>'),
    "external-image.html": page('<img src="https://example.com/logo.png" alt="remote">'),
    "js-error.html": page('<script>throw new Error("boom in the page")</script>'),
    "console-error.html": page('<script>console.error("something is wrong")</script>'),
}


@pytest.fixture(scope="module")
def synthetic_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("synthetic_site")
    shutil.copy(SITE_CSS, root / "responsive.css")
    for name, html in PAGES.items():
        (root / name).write_text(html, encoding="utf-8")
    with serve(root) as url:
        yield url


@pytest.fixture(scope="module", params=[(1400, 900), (390, 844)], ids=["desktop", "phone"])
def checker(request: pytest.FixtureRequest, browser: object) -> Iterator[PageChecker]:
    tab = PageChecker(browser, *request.param)
    yield tab
    tab.close()


def problems(checker: PageChecker, url: str, name: str) -> list[str]:
    return checker.check(url + name, name).problems


def test_a_good_page_passes(checker: PageChecker, synthetic_site: str) -> None:
    report = checker.check(synthetic_site + "good.html", "good.html")
    assert report.problems == []
    assert report.formulas == report.rendered == 3
    assert "eq-long" in report.scroll_labels  # wider than the column: it scrolls, from its left edge


def test_the_theme_layout_cuts_a_long_formula_on_the_left(checker: PageChecker, synthetic_site: str) -> None:
    found = problems(checker, synthetic_site, "cut-theme.html")
    assert len(found) == 1 and found[0].startswith("formula eq-cut cut off: starts"), found
    assert "left of div#equation-eq-cut.math (overflow-x: hidden)" in found[0]


def test_an_unlabelled_formula_is_named_by_its_section(checker: PageChecker, synthetic_site: str) -> None:
    found = problems(checker, synthetic_site, "cut-unlabelled.html")
    assert len(found) == 1 and found[0].startswith("formula unlabelled formula 1 after #kl cut off"), found


def test_a_box_that_hides_overflow_cuts_on_the_right(checker: PageChecker, synthetic_site: str) -> None:
    found = problems(checker, synthetic_site, "cut-right.html")
    assert len(found) == 1 and found[0].startswith("formula eq-right cut off: ends"), found
    assert "right of div#equation-eq-right.math (overflow-x: hidden)" in found[0]


def test_a_formula_spilling_out_of_its_box_unscrollable_is_cut(checker: PageChecker, synthetic_site: str) -> None:
    found = problems(checker, synthetic_site, "spills.html")
    assert any(p.startswith("formula eq-spill cut off: spills") for p in found), found


def test_a_page_wider_than_the_viewport_fails_naming_the_block(checker: PageChecker, synthetic_site: str) -> None:
    found = problems(checker, synthetic_site, "wide.html")
    assert len(found) == 1 and "page is 3" in found[0] and "div#wide-table" in found[0], found


def test_a_broken_image_fails(checker: PageChecker, synthetic_site: str) -> None:
    found = problems(checker, synthetic_site, "broken-image.html")
    assert "broken image missing.png" in found
    assert any("HTTP 404" in p and "missing.png" in p for p in found), found


@pytest.mark.parametrize("name", ["external-script.html", "external-image.html"])
def test_a_request_to_another_host_fails(checker: PageChecker, synthetic_site: str, name: str) -> None:
    found = problems(checker, synthetic_site, name)
    assert any(p.startswith("request to another host: https://example.com/") for p in found), found


def test_a_javascript_error_fails(checker: PageChecker, synthetic_site: str) -> None:
    found = problems(checker, synthetic_site, "js-error.html")
    assert any(p.startswith("JavaScript error") and "boom in the page" in p for p in found), found


def test_a_console_error_fails(checker: PageChecker, synthetic_site: str) -> None:
    assert problems(checker, synthetic_site, "console-error.html") == ["console error: something is wrong"]


def test_the_server_is_local_and_stops(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    (tmp_path / "index.html").write_text("hi", encoding="utf-8")
    with serve(tmp_path) as url:
        assert url.startswith("http://127.0.0.1:")
        assert urllib.request.urlopen(url + "index.html", timeout=5).read() == b"hi"
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "index.html", timeout=5)
