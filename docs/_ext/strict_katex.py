"""Build-time KaTeX with fatal parse errors and no CDN.

sphinxcontrib-katex renders formulas at build time (``katex_prerender``) but, by default, turns
a parse error into red text in the page and loads its CSS from a CDN. This extension

* points it at the KaTeX of ``node_modules`` (``npm ci``, run by ``scripts/setup.sh``) for both
  rendering and the CSS and fonts, which are copied into ``_static/katex/``;
* registers the math renderer ``strict_katex``, which renders with ``throwOnError`` and
  ``strict: "error"`` and reports a formula KaTeX rejects as a Sphinx warning located at the
  page and line, so ``sphinx-build -W`` fails naming the page.
"""

from __future__ import annotations

import html
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import sphinxcontrib.katex as katex
from docutils import nodes
from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ConfigError
from sphinx.locale import _
from sphinx.util import logging

logger = logging.getLogger(__name__)

KATEX_OPTIONS = {"throwOnError": True, "strict": "error"}
STATIC_SUBDIR = "katex"


def _katex_dist(config: Config) -> Path:
    dist = Path(config.strict_katex_node_modules) / "katex" / "dist"
    if not (dist / "katex.min.js").is_file():
        raise ConfigError(f"KaTeX not found in {dist}: run `npm ci` in the repository root (scripts/setup.sh does it)")
    return dist


def _configure(app: Sphinx, config: Config) -> None:
    dist = _katex_dist(config)
    config.katex_js_path = str(dist / "katex.min.js")
    config.katex_css_path = f"{STATIC_SUBDIR}/katex.min.css"
    config.katex_prerender = True
    # Sphinx copies a static folder's *contents*: nest KaTeX's files one level down so they
    # land in _static/katex/ and the CSS keeps its relative font URLs. The folder's path must be
    # the same on every build: html_static_path is part of the HTML configuration's hash, and a
    # new path made Sphinx rewrite (and re-render the formulas of) every page on each rebuild.
    wrapper = Path(app.doctreedir).parent / "strict_katex_static"
    target = wrapper / STATIC_SUBDIR
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(dist / "fonts", target / "fonts")
    shutil.copy2(dist / "katex.min.css", target / "katex.min.css")
    config.html_static_path = [*config.html_static_path, str(wrapper)]


# sphinxcontrib-katex gives its node server 5 s to start and fails on a refused connection (the
# socket file exists a moment before the server listens on it); on a loaded 2-core machine both
# happened and killed builds. This start waits up to a minute for the *same* process to accept
# (starting a second one would orphan the first, which keeps the build's stderr open).
STARTUP_TIMEOUT_S = 60.0


def _start_server_process(cls: type, rundir: Path, timeout: float) -> tuple[subprocess.Popen, socket.socket]:
    socket_path = rundir / "katex.sock"
    process = subprocess.Popen(
        cls.build_command(socket=socket_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=rundir
    )
    deadline = time.monotonic() + max(timeout, STARTUP_TIMEOUT_S)
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the KaTeX server exited with status {process.returncode} while starting")
        if socket_path.is_socket():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(max(deadline - time.monotonic(), 0.1))
                sock.connect(str(socket_path))
            except (ConnectionRefusedError, FileNotFoundError):
                sock.close()
            else:
                sock.settimeout(None)
                return process, sock
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise cls.timeout_error(timeout)
        time.sleep(0.01)


katex.KaTeXServer.start_server_process = classmethod(_start_server_process)


def _render(self: Any, node: nodes.Element, display: bool) -> str:
    latex = node.astext()
    try:
        return katex.render_latex(latex, {**KATEX_OPTIONS, "displayMode": display})
    except katex.KaTeXError as err:
        location = node if node.source else (self.builder.current_docname, node.line)
        logger.warning("malformed LaTeX %r: %s", latex, err, location=location, type="katex")
        return f'<span class="katex-error">{html.escape(latex)}</span>'


def visit_math(self: Any, node: nodes.Element) -> None:
    self.body.append(self.starttag(node, "span", "", CLASS="math"))
    self.body.append(_render(self, node, display=False))
    self.body.append("</span>")
    raise nodes.SkipNode


def visit_displaymath(self: Any, node: nodes.Element) -> None:
    self.body.append(self.starttag(node, "div", CLASS="math"))
    if node["number"]:
        number = katex.get_node_equation_number(self, node)
        self.body.append(f'<span class="eqno">({number})')
        self.add_permalink_ref(node, _("Permalink to this equation"))
        self.body.append("</span>")
    self.body.append(_render(self, node, display=True))
    self.body.append("</div>\n")
    raise nodes.SkipNode


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinxcontrib.katex")
    app.add_config_value("strict_katex_node_modules", "node_modules", "env", types=(str,))
    app.add_html_math_renderer(
        "strict_katex", inline_renderers=(visit_math, None), block_renderers=(visit_displaymath, None)
    )
    # Before sphinxcontrib.katex reads the paths in builder-inited.
    app.connect("config-inited", _configure)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
