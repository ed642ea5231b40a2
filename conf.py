"""Sphinx configuration of the nemo-rl-theory site (pages in ``docs/``).

Build with ``.venv/bin/nox -s docs``; it runs
``sphinx-build -c . -W --keep-going -T docs docs/_build/html``. Every page is a MyST text
notebook that myst-nb executes at build time; KaTeX (from ``node_modules``, installed by
``scripts/setup.sh``) renders every formula while building, and a formula KaTeX cannot parse is
a build error that names the page.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pybtex.plugin

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

from execution_cache import library_fingerprint, select_cache  # noqa: E402

import nemo_rl_theory  # noqa: E402

# pybtex finds its styles through importlib.metadata.entry_points() on every lookup, and
# sphinxcontrib-bibtex looks them up again for every footcite: about 1,200 scans of the installed
# packages' metadata, 5 of the 32 s the build spends outside the notebooks. The answers do not change
# while Sphinx runs (sphinxcontrib-bibtex registers its own plugins in setup, before any lookup),
# so the lookup is memoised; a failed lookup raises and is not cached.
pybtex.plugin._load_entry_point = functools.cache(pybtex.plugin._load_entry_point)

project = "nemo-rl-theory"
author = "nemo-rl-theory contributors"
copyright = "2026, nemo-rl-theory contributors"
release = version = nemo_rl_theory.__version__

extensions = [
    "myst_nb",  # loads myst_parser itself
    "sphinx_design",
    "sphinx_copybutton",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinxcontrib.bibtex",
    "sphinxcontrib.katex",
    "strict_katex",  # docs/_ext: KaTeX from node_modules, parse errors fatal, CSS and fonts bundled
    "parallel_execution",  # docs/_ext: pages not in the cache execute several at a time
]

root_doc = "index"
exclude_patterns = ["_build", "_ext", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
nitpicky = True
# Types in signatures that are not documented on this site (no network at build time, so no
# intersphinx inventories to resolve them).
nitpick_ignore_regex = [
    (r"py:.*", r"(torch\.)?Tensor"),
    (r"py:.*", r"torch\..*"),
    (r"py:.*", r"Literal.*"),
    (r"py:.*", r"collections\.abc\..*"),
    (r"py:.*", r"nn\..*"),
    (r"py:.*", r"(numpy|np)\..*"),
    (r"py:.*", r"(os|pathlib|datetime)\..*"),
    # third-party classes in the serving API's signatures (no intersphinx: the build is offline)
    (r"py:.*", r"(fastapi|starlette|pydantic|prometheus_client|httpx)\..*"),
    # type variables of generic functions (run_ranks' T)
    (r"py:class", r"nemo_rl_theory\..*\.T"),
    # private base classes (e.g. the schedules' shared _Schedule) are not part of the API
    (r"py:.*", r"nemo_rl_theory\..*\._\w+"),
]

# --- MyST -------------------------------------------------------------------------------------
myst_enable_extensions = ["amsmath", "colon_fence", "deflist", "dollarmath", "fieldlist"]
myst_heading_anchors = 3
myst_dmath_double_inline = True

# --- Execution (myst-nb) ----------------------------------------------------------------------
# Pages are executed at build time and any exception fails the build with its traceback.
nb_execution_mode = "cache"
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_timeout = 60  # seconds per cell
# The pages' tensors are tiny: a second intra-op thread only adds synchronisation, and on a busy
# 2-core machine spinning threads made cells 5-10x slower. Kernels inherit this environment.
os.environ["OMP_NUM_THREADS"] = "1"
# Pages not in the cache execute this many at a time (docs/_ext/parallel_execution.py), each in
# its own one-thread kernel, before Sphinx reads them serially. ``-D nb_execution_workers=1``
# turns it off.
nb_execution_workers = min(4, os.cpu_count() or 1)
nb_merge_streams = True
nb_execution_excludepatterns: list[str] = []
# No ipywidgets on this site: keep myst-nb from adding require.js and the widget manager from a CDN.
nb_ipywidgets_js: dict[str, dict[str, str]] = {}
nb_render_image_options = {"align": "center"}
# Cells' ``display(Markdown(...))`` output is parsed as MyST, whose tables CommonMark (the default)
# lacks; scripts/check_site.py fails a page that shows a table as raw text.
nb_render_markdown_format = "myst"
# Keyed on the library too (docs/_ext/execution_cache.py): a change in src/ re-executes every page.
nb_execution_cache_path = str(
    select_cache(ROOT / ".jupyter_cache", library_fingerprint(ROOT / "src" / "nemo_rl_theory"))
)

# --- References -------------------------------------------------------------------------------
bibtex_bibfiles = ["docs/references.bib"]  # relative to this folder
bibtex_default_style = "plain"
bibtex_reference_style = "author_year"

# --- API reference ----------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# --- Math -------------------------------------------------------------------------------------
html_math_renderer = "strict_katex"
strict_katex_node_modules = str(ROOT / "node_modules")

# --- HTML -------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "nemo-rl-theory"
# Site CSS (docs/_static/responsive.css): formulas scroll from their own left edge and nothing is
# wider than a phone's screen; `nox -s browser` checks it in Chromium.
html_static_path = ["docs/_static"]
html_css_files = ["responsive.css"]
# An empty default colour mode made the theme's script log a console error on every page.
html_context = {"default_mode": "auto"}
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": True,
    "use_source_button": False,
    "use_repository_button": False,
    "navigation_with_keys": False,
}
html_last_updated_fmt = None
html_copy_source = False
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
