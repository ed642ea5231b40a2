"""Developer sessions. They run in the environment nox itself runs in (``.venv`` after
``scripts/setup.sh``), so torch is never reinstalled: ``.venv/bin/nox -s tests``.
"""

from __future__ import annotations

import sys

import nox

# The interpreter nox runs under (.venv's), whatever ``python`` is first on PATH.
PYTHON = sys.executable

nox.options.sessions = ["tests"]
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
