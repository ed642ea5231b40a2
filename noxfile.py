"""Developer sessions. They run in the environment nox itself runs in (``.venv`` after
``scripts/setup.sh``), so torch is never reinstalled: ``.venv/bin/nox -s tests``.
"""

from __future__ import annotations

import sys

import nox

# The interpreter nox runs under (.venv's), whatever ``python`` is first on PATH.
PYTHON = sys.executable

nox.options.sessions = ["tests"]

# The site build: -W turns every warning (a malformed formula, a broken link, a missing
# citation) into an error, --keep-going reports them all, -T prints full tracebacks.
SPHINX_ARGS = ["-c", ".", "-W", "--keep-going", "-T", "-b", "html", "-d", "docs/_build/doctrees", "docs"]
SITE = "docs/_build/html"
nox.options.default_venv_backend = "none"


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (extra args go to pytest, e.g. ``nox -s tests -- -k kl``)."""
    session.run(PYTHON, "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.run(PYTHON, "-m", "ruff", "check", ".")
    session.run(PYTHON, "-m", "ruff", "format", "--check", ".")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmark ``token_logprobs`` against ``log_softmax + gather`` (args go to the script)."""
    session.run(PYTHON, "benchmarks/bench_token_logprobs.py", *session.posargs)


@nox.session(name="bench-linear")
def bench_linear(session: nox.Session) -> None:
    """Benchmark ``linear_token_logprobs`` against building the logits (args go to the script)."""
    session.run(PYTHON, "benchmarks/bench_linear_token_logprobs.py", *session.posargs)


@nox.session(name="bench-toy")
def bench_toy(session: nox.Session) -> None:
    """Time the toy policy's sampler and training loops (args go to the script)."""
    session.run(PYTHON, "benchmarks/bench_toy.py", *session.posargs)


@nox.session(name="bench-serving")
def bench_serving(session: nox.Session) -> None:
    """Latency and throughput of the toy policy's server over the loopback (args go to the script)."""
    session.run(PYTHON, "benchmarks/bench_serving.py", *session.posargs)


@nox.session
def serve(session: nox.Session) -> None:
    """Serve the toy policy on http://127.0.0.1:8000 until Ctrl-C (args go to the server, e.g. ``-- --port 8001``)."""
    session.run(PYTHON, "-m", "nemo_rl_theory.serving", *session.posargs)


@nox.session(name="bench-pages")
def bench_pages(session: nox.Session) -> None:
    """Time every page's execution, section by section, one and two at a time (args go to the script)."""
    session.run(PYTHON, "benchmarks/bench_pages.py", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the site into docs/_build/html (executing pages), then check it works offline.

    Extra args go to sphinx-build, e.g. ``nox -s docs -- -D nb_execution_mode=force`` to
    re-execute every page or ``-E`` to re-read every source.
    """
    session.run(PYTHON, "-m", "sphinx", *SPHINX_ARGS, SITE, *session.posargs)
    session.run(PYTHON, "scripts/check_site.py", SITE)


@nox.session
def browser(session: nox.Session) -> None:
    """Open every page of the built site in Chromium at 1400x900 and 390x844 (after ``nox -s docs``).

    Fails, naming page and equation label, on a cut-off formula, a page wider than the viewport,
    a broken image, a JavaScript error or a request to another host (tests/browser/). Needs
    Debian's ``chromium`` (scripts/setup.sh installs it); a missing site is a failure, not a
    skip. Extra args go to pytest, e.g. ``nox -s browser -- -k dpo``.
    """
    session.run(PYTHON, "-m", "pytest", "tests/browser", "-p", "no:cacheprovider", *session.posargs)


@nox.session(name="docs-live")
def docs_live(session: nox.Session) -> None:
    """Live preview on http://127.0.0.1:8000, rebuilt on every change to docs/ or src/."""
    session.run(
        PYTHON, "-m", "sphinx_autobuild", *SPHINX_ARGS, SITE,
        "--watch", "src", *session.posargs,
    )  # fmt: skip


@nox.session
def notebooks(session: nox.Session) -> None:
    """Write every executable page as a Jupyter notebook into notebooks/ (with jupytext)."""
    session.run(PYTHON, "scripts/export_notebooks.py", *session.posargs)
