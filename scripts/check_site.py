"""Check a built site for what would break it offline.

    .venv/bin/python scripts/check_site.py docs/_build/html

Fails (exit 1, one line per problem) if any page or stylesheet

* loads an asset from another host: ``<script src>``, ``<link href>`` (stylesheets, fonts,
  preloads, icons), ``<img>``/``<source>``/``<iframe>``/``<video>``/``<audio>`` sources, CSS
  ``url(...)`` or ``@import`` with a scheme or ``//`` (plain ``<a href>`` links are fine: they
  are navigation, not assets);
* refers to a local asset file that is not in the build;
* contains a formula KaTeX could not render (``katex-error``);
* shows a MyST role or directive as raw text (``{footbibliography}`` on a line of its own is a
  paragraph, not a directive; a role without backticks is plain text);
* shows a Markdown table as raw text (a ``|---|`` row outside code), as a cell's
  ``display(Markdown(...))`` output does when it is rendered without MyST's table syntax.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ASSET_ATTRIBUTES = {
    "script": ("src",),
    "link": ("href",),
    "img": ("src", "srcset"),
    "source": ("src", "srcset"),
    "iframe": ("src",),
    "video": ("src", "poster"),
    "audio": ("src",),
    "embed": ("src",),
    "object": ("data",),
}
# <link rel=...> values that are navigation, not something the browser fetches for the page.
NAVIGATION_RELS = {"index", "search", "next", "prev", "canonical", "author", "help", "license", "alternate"}
# A Markdown table's delimiter row, e.g. ``|---|:---:|``; in running text it means the table was not
# parsed. Sphinx's smart quotes turn an unparsed ``---`` into an em dash (``--`` into an en dash).
RAW_TABLE_ROW = re.compile(r"\|\s*:?(?:-{3,}|[\u2013\u2014]-?)\s*:?\s*\|")
# A role or directive name in braces that reached the HTML as text: MyST did not parse it.
RAW_MYST = re.compile(
    r"\{(?:footbibliography|bibliography|footcite(?::[pt])?|cite(?::[pt])?|glue(?::\w+)?|doc|ref|eq|numref"
    r"|math|py:\w+|toctree|code-cell|note|warning|admonition|figure)\}"
)
# Text inside these is code (a cell's source may build a table from strings) or a formula's TeX
# source (KaTeX keeps it in MathML's <annotation>: ``\pi_{ref}``), not rendered prose.
CODE_TAGS = {"pre", "code", "script", "style", "textarea", "math", "annotation"}
CSS_URL = re.compile(r"""url\(\s*['"]?([^'")]+)['"]?\s*\)|@import\s+['"]([^'"]+)['"]""")


def is_remote(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.scheme and parts.scheme not in {"data", "file"}) or url.startswith("//")


class _AssetCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.assets: list[str] = []
        self.inline_css: list[str] = []
        self.katex_errors = 0
        self.raw_tables = 0
        self.raw_myst: list[str] = []
        self._in_style = False
        self._code_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if "katex-error" in values.get("class", "").split():
            self.katex_errors += 1
        if tag == "style":
            self._in_style = True
        if tag in CODE_TAGS:
            self._code_depth += 1
        if "style" in values:
            self.inline_css.append(values["style"])
        if tag == "link" and NAVIGATION_RELS & set(values.get("rel", "").lower().split()):
            return
        for attribute in ASSET_ATTRIBUTES.get(tag, ()):
            value = values.get(attribute, "").strip()
            if not value:
                continue
            urls = (
                [item.strip().split()[0] for item in value.split(",") if item.strip()]
                if attribute == "srcset"
                else [value]
            )
            self.assets.extend(urls)

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False
        if tag in CODE_TAGS and self._code_depth:
            self._code_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.inline_css.append(data)
        elif not self._code_depth:
            if RAW_TABLE_ROW.search(data):
                self.raw_tables += 1
            self.raw_myst += RAW_MYST.findall(data)


def _css_urls(text: str) -> list[str]:
    return [match.group(1) or match.group(2) for match in CSS_URL.finditer(text)]


def _check_local(url: str, base: Path, root: Path) -> str | None:
    parts = urlsplit(url)
    path = unquote(parts.path)
    if parts.scheme or not path:  # data: URIs, or a fragment or query only
        return None
    target = (base / path).resolve()
    if not target.is_relative_to(root) or not target.exists():
        return f"missing local asset {url}"
    return None


def _pages(root: Path) -> list[Path]:
    # Themes copy Jinja macro files (``_static/webpack-macros.html``) into _static: not pages.
    return sorted(page for page in root.rglob("*.html") if "_static" not in page.relative_to(root).parts)


def check_site(root: Path) -> list[str]:
    """Return the problems found under the built site ``root`` (empty when it is fine)."""
    root = root.resolve()
    if not (root / "index.html").is_file():
        return [f"{root}: no index.html (not a built site)"]
    problems = []
    for page in _pages(root):
        collector = _AssetCollector()
        collector.feed(page.read_text(encoding="utf-8", errors="replace"))
        urls = collector.assets + [url for css in collector.inline_css for url in _css_urls(css)]
        where = page.relative_to(root)
        for url in urls:
            if is_remote(url):
                problems.append(f"{where}: remote asset {url}")
            elif (problem := _check_local(url, page.parent, root)) is not None:
                problems.append(f"{where}: {problem}")
        if collector.katex_errors:
            problems.append(f"{where}: {collector.katex_errors} formula(s) KaTeX could not render")
        if collector.raw_myst:
            names = ", ".join(sorted(set(collector.raw_myst)))
            problems.append(f"{where}: MyST shown as raw text ({names})")
        if collector.raw_tables:
            problems.append(f"{where}: {collector.raw_tables} Markdown table(s) shown as raw text")
    for sheet in sorted(root.rglob("*.css")):
        where = sheet.relative_to(root)
        for url in _css_urls(sheet.read_text(encoding="utf-8", errors="replace")):
            if is_remote(url):
                problems.append(f"{where}: remote asset {url}")
            elif (problem := _check_local(url, sheet.parent, root)) is not None:
                problems.append(f"{where}: {problem}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[0])
    problems = check_site(root)
    for problem in problems:
        print(problem)
    pages = len(_pages(root.resolve()))
    print(
        f"check_site: {pages} pages, {len(problems)} problem(s)"
        if problems
        else f"check_site: {pages} pages, offline-clean"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
