"""Write every executable page of docs/ as a Jupyter notebook, for running it locally.

    .venv/bin/python scripts/export_notebooks.py            # all pages -> notebooks/
    .venv/bin/python scripts/export_notebooks.py --out DIR  # elsewhere

A page is executable when its front matter has a ``kernelspec`` (a MyST text notebook).
jupytext converts it; the notebook mirrors the page's folders under the output folder. Open it
with Jupyter (``pip install jupyterlab`` into .venv, then ``.venv/bin/jupyter lab notebooks``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def executable_pages(docs: Path = DOCS) -> list[Path]:
    """The MyST text notebooks under ``docs`` (pages whose front matter names a kernel)."""
    pages = []
    for path in sorted(docs.rglob("*.md")):
        if "_build" in path.relative_to(docs).parts:
            continue
        if "kernelspec" in jupytext.read(path, fmt="md:myst").metadata:
            pages.append(path)
    return pages


def export(out: Path, docs: Path = DOCS) -> list[Path]:
    """Convert every executable page under ``docs`` into ``out``; return the notebooks written."""
    written = []
    for page in executable_pages(docs):
        notebook = jupytext.read(page, fmt="md:myst")
        nbformat.validate(notebook)
        target = out / page.relative_to(docs).with_suffix(".ipynb")
        target.parent.mkdir(parents=True, exist_ok=True)
        jupytext.write(notebook, target)
        written.append(target)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "notebooks", help="output folder (default: notebooks/)")
    args = parser.parse_args()
    for notebook in export(args.out):
        print(notebook.relative_to(ROOT) if notebook.is_relative_to(ROOT) else notebook)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
