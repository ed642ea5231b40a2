"""What a reader's browser shows: the checks of ``nox -s browser``, shared by its tests.

A page is opened in Chromium (Debian's ``chromium``, driven by Playwright; no browser is ever
downloaded) and fails, with a message naming the page and, for formulas, the equation's label,
on

* a display formula that is cut off: some of it lies left of a box that clips it (at
  ``scrollLeft = 0`` nothing left of a box's left edge can be scrolled to), right of a box that
  clips it without scrolling (``overflow-x`` hidden or clip), or outside the viewport; or an
  equation number that is clipped, outside the viewport or drawn over its formula;
* a page wider than the viewport (``scrollWidth > clientWidth`` of the document);
* a broken image (loaded, ``naturalWidth`` 0);
* a JavaScript error (uncaught exception or ``console.error``);
* a request to any host but 127.0.0.1 / localhost (or a ``file:``, ``data:`` or ``blob:`` URL).
"""

from __future__ import annotations

import http.server
import os
import shutil
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "docs" / "_build" / "html"
# (width, height) of a desktop window and of a phone held upright.
VIEWPORTS = {"desktop": (1400, 900), "phone": (390, 844)}
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
LOCAL_SCHEMES = {"file", "data", "blob", "about", "chrome-error"}
PAGE_TIMEOUT_MS = 15_000
CHROMIUM_HINT = (
    "the browser tests drive Debian's Chromium: run scripts/setup.sh (it runs `apt-get install chromium` as root) "
    "or set NEMO_RL_THEORY_CHROMIUM to a Chromium binary"
)


def chromium_executable() -> str | None:
    """The Chromium to drive: $NEMO_RL_THEORY_CHROMIUM, else ``chromium`` on PATH, else /usr/bin/chromium."""
    candidates = [os.environ.get("NEMO_RL_THEORY_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def launch_args() -> list[str]:
    # Every host but the local server fails to resolve at once, so a stray request to another
    # host is recorded (see ``is_local``) without waiting on the network.
    return ["--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1, EXCLUDE localhost", "--disable-gpu"]


def site_pages(root: Path = SITE) -> list[str]:
    """Every HTML page of a built site, relative to it (theme macro files in _static are not pages)."""
    return sorted(
        page.relative_to(root).as_posix()
        for page in root.rglob("*.html")
        if "_static" not in page.relative_to(root).parts
    )


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 at a free port for the duration of the block; yields its base URL."""
    server = _Server(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in LOCAL_SCHEMES:
        return True
    return parts.scheme in {"http", "https", "ws", "wss"} and parts.hostname in LOCAL_HOSTS


def _is_favicon(url: str) -> bool:
    return urlsplit(url).path == "/favicon.ico"


# Runs in the page. Returns each display formula (label, problem, whether it scrolls), the
# page's width and what sticks out, and the broken images. A formula's extent is the union of
# its KaTeX boxes (``.base`` lines and ``.tag``); walking up from it, every box whose overflow-x
# is not ``visible`` clips it, and only ``auto`` / ``scroll`` boxes can scroll to what they clip,
# on their right side only (scrollLeft starts at 0).
MEASURE_JS = r"""
async () => {
  const TOL = 1;  // px: subpixel rounding
  // Closed dropdowns and toggles hold formulas too: open them so they are measured.
  for (const d of document.querySelectorAll('details:not([open])')) d.open = true;
  for (const t of document.querySelectorAll('.toggle-hidden')) t.classList.remove('toggle-hidden');
  // Lazy images would never load off screen: load them all, each bounded in time.
  const images = [...document.images];
  for (const img of images) img.loading = 'eager';
  await Promise.all(images.map((img) => img.complete ? null : new Promise((done) => {
    img.addEventListener('load', done, {once: true});
    img.addEventListener('error', done, {once: true});
    setTimeout(done, 5000);
  })));
  await Promise.race([document.fonts.ready, new Promise((done) => setTimeout(done, 5000))]);
  await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));

  const vw = document.documentElement.clientWidth;
  const px = (v) => Math.round(v);
  const describe = (el) => {
    let text = el.tagName.toLowerCase();
    if (el.id) text += '#' + el.id;
    const cls = [...el.classList].slice(0, 2).join('.');
    return cls ? `${text}.${cls}` : text;
  };
  // The last section, heading, API entry or labelled formula that starts at or before `el`.
  const anchored = [...document.querySelectorAll('main :is(section, h1, h2, h3, h4, h5, h6, dt, div.math)[id]')];
  const nearestId = (el) => {
    let last = null;
    for (const a of anchored) {
      if (a === el || a.contains(el) || (a.compareDocumentPosition(el) & Node.DOCUMENT_POSITION_FOLLOWING)) last = a;
      else break;
    }
    return last ? last.id : null;
  };
  const clipBoxes = (el) => {
    const boxes = [];
    for (let a = el.parentElement; a && a !== document.documentElement && a !== document.body; a = a.parentElement) {
      const ox = getComputedStyle(a).overflowX;
      if (ox === 'visible') continue;
      const r = a.getBoundingClientRect();
      const left = r.left + a.clientLeft;
      boxes.push({el: a, ox, left, right: left + a.clientWidth, scrolls: ox === 'auto' || ox === 'scroll'});
    }
    return boxes;
  };
  // Why [left, right] (the extent of `el`) is out of reach, or null. Once the boxes that scroll
  // inside `holder` have taken their share, what is left must lie inside `holder`: past it, the
  // formula would spill over the page where no scroll bar reaches it.
  const reach = (el, left, right, mayScroll, holder) => {
    let scrolled = false;
    const spills = () => {
      const h = holder.getBoundingClientRect();
      const where = `its ${describe(holder)}, with no scroll bar`;
      if (left < h.left - TOL) return `starts ${px(h.left - left)}px left of ${where}`;
      if (right > h.right + TOL) return `spills ${px(right - h.right)}px out of ${where}`;
      return null;
    };
    for (const box of clipBoxes(el)) {
      if (holder && !holder.contains(box.el)) {
        const problem = spills();
        if (problem) return {problem};
        holder = null;
      }
      const where = `${describe(box.el)} (overflow-x: ${box.ox}), out of reach`;
      if (left < box.left - TOL) return {problem: `starts ${px(box.left - left)}px left of ${where}`};
      if (right > box.right + TOL) {
        if (!(mayScroll && box.scrolls)) return {problem: `ends ${px(right - box.right)}px right of ${where}`};
        right = box.right;  // the rest is reached by scrolling this box
        scrolled = true;
      }
    }
    const problem = holder ? spills() : null;
    if (problem) return {problem};
    if (left < -TOL) return {problem: `starts ${px(-left)}px left of the viewport`};
    if (right > vw + TOL) return {problem: `ends ${px(right - vw)}px right of the viewport (${vw}px)`};
    return {problem: null, scrolled, right};
  };

  const displays = [...document.querySelectorAll('.katex-display')];
  const near = displays.map(nearestId);
  const formulas = displays.map((display, i) => {
    const math = display.closest('div.math');
    let label = math && math.id ? math.id.replace(/^equation-/, '') : null;
    if (!label) {
      const nth = near.slice(0, i + 1).filter((id) => id === near[i]).length;
      label = `unlabelled formula ${nth} after #${near[i] || 'top'}`;
    }
    const parts = [...display.querySelectorAll('.katex-html > .base, .katex-html > .tag')];
    const rects = parts.map((p) => p.getBoundingClientRect()).filter((r) => r.width > 0 || r.height > 0);
    if (!rects.length) return {label, rendered: false, problem: null, scrolls: false};
    const left = Math.min(...rects.map((r) => r.left));
    const right = Math.max(...rects.map((r) => r.right));
    const top = Math.min(...rects.map((r) => r.top));
    const bottom = Math.max(...rects.map((r) => r.bottom));
    const shown = reach(parts[0], left, right, true, math || display);
    let problem = shown.problem;
    const eqno = math ? math.querySelector(':scope > .eqno') : null;
    if (!problem && eqno) {
      const r = eqno.getBoundingClientRect();
      const where = r.width > 0 ? reach(eqno, r.left, r.right, false, math).problem : null;
      if (r.width === 0) problem = 'its equation number is not shown';
      else if (where) problem = 'its equation number ' + where;
      else if (r.left < shown.right - TOL && r.right > left + TOL && r.top < bottom && r.bottom > top)
        problem = `its equation number covers ${px(shown.right - r.left)}px of it`;
    }
    return {label, rendered: true, problem, scrolls: !problem && shown.scrolled};
  });

  const doc = document.documentElement;
  const wide = [];
  if (doc.scrollWidth > vw) {
    for (const el of document.body.querySelectorAll('*')) {
      const r = el.getBoundingClientRect();
      if (r.width === 0 || r.right <= vw + TOL) continue;
      if (el.parentElement.getBoundingClientRect().right > vw + TOL) continue;  // the outermost box that sticks out
      if (clipBoxes(el).some((box) => box.right <= vw + TOL)) continue;  // clipped or scrolled inside the page
      if (getComputedStyle(el).position === 'fixed') continue;
      wide.push(`${describe(el)} near #${nearestId(el) || 'top'} (right edge ${px(r.right)}px)`);
      if (wide.length >= 5) break;
    }
  }
  const broken = images.filter((img) => img.complete && img.naturalWidth === 0).map((img) => img.getAttribute('src'));
  return {formulas, viewport: vw, scrollWidth: doc.scrollWidth, wide, broken};
}
"""


@dataclass
class PageReport:
    """What one page showed at one viewport width."""

    page: str
    width: int
    formulas: int = 0
    rendered: int = 0
    problems: list[str] = field(default_factory=list)
    cut_labels: list[str] = field(default_factory=list)
    # Formulas wider than their box, shown by scrolling it (fine, but worth a look on desktop).
    scroll_labels: list[str] = field(default_factory=list)


class PageChecker:
    """One browser tab at a fixed viewport that opens pages and reports what is wrong with them."""

    def __init__(self, browser: Any, width: int, height: int) -> None:
        self.width = width
        self.context = browser.new_context(viewport={"width": width, "height": height}, service_workers="block")
        self.context.set_default_timeout(PAGE_TIMEOUT_MS)
        self.tab = self.context.new_page()
        self._events: list[str] = []
        self.tab.on("pageerror", lambda error: self._events.append(f"JavaScript error: {error}"))
        self.tab.on("console", self._on_console)
        self.tab.on("request", self._on_request)
        self.tab.on("response", self._on_response)

    def _on_console(self, message: Any) -> None:
        # Chromium asks every new site for /favicon.ico by itself; the site has none.
        if message.type == "error" and not _is_favicon(message.location.get("url", "")):
            self._events.append(f"console error: {message.text}")

    def _on_request(self, request: Any) -> None:
        if not is_local(request.url):
            self._events.append(f"request to another host: {request.url}")

    def _on_response(self, response: Any) -> None:
        if response.status >= 400 and not _is_favicon(response.url):
            self._events.append(f"HTTP {response.status} for {response.url}")

    def check(self, url: str, page: str) -> PageReport:
        self._events = []
        report = PageReport(page=page, width=self.width)
        self.tab.goto(url, wait_until="load", timeout=PAGE_TIMEOUT_MS)
        result = self.tab.evaluate(MEASURE_JS)
        report.formulas = len(result["formulas"])
        report.rendered = sum(formula["rendered"] for formula in result["formulas"])
        for formula in result["formulas"]:
            if formula["scrolls"]:
                report.scroll_labels.append(formula["label"])
            if formula["problem"]:
                report.cut_labels.append(formula["label"])
                report.problems.append(f"formula {formula['label']} cut off: {formula['problem']}")
        if result["scrollWidth"] > result["viewport"]:
            report.problems.append(
                f"page is {result['scrollWidth']}px wide in a {result['viewport']}px viewport; sticking out: "
                + ("; ".join(result["wide"]) or "(nothing found)")
            )
        report.problems.extend(f"broken image {src}" for src in result["broken"])
        report.problems.extend(self._events)
        return report

    def close(self) -> None:
        self.context.close()
