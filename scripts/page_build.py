"""Build a few pages with the site's real ``conf.py``, in a throw-away source folder.

For writing a page without rebuilding the whole site, and for the tests that prove a broken
page fails the build::

    .venv/bin/python scripts/page_build.py docs/advanced/theory/grpo-theory.md
    .venv/bin/python scripts/page_build.py --keep /tmp/grpo docs/advanced/theory/grpo-theory.md
    .venv/bin/python scripts/page_build.py --allow-missing-links docs/advanced/theory/grpo-theory.md

The pages are copied under an index whose toctree lists them, then
built by ``sphinx-build -c <repo> -W --keep-going -T`` with execution forced, so nothing is
read from or written to the site's execution cache (``build(..., execution_mode="cache")``
uses a cache inside the throw-away folder instead). Exit status and output are sphinx-build's.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# Options of the site's build (the nox "docs" session passes the same ones).
SPHINX_OPTIONS = ["-c", str(ROOT), "-W", "--keep-going", "-T", "-b", "html"]

MYST_NOTEBOOK_HEADER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---
"""


def build(
    pages: dict[str, str],
    workdir: Path,
    *,
    allow_missing_links: bool = False,
    execution_mode: str = "force",
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Build ``pages`` (name -> MyST text) into ``workdir/html``; return sphinx-build's result.

    ``allow_missing_links`` silences links to pages outside the set (only for drafting a page
    alone; the site build keeps them fatal). ``execution_mode="cache"`` builds as the site does,
    with ``workdir/cache`` as the execution cache.
    """
    src = workdir / "src"
    src.mkdir(parents=True)
    for name, text in pages.items():
        (src / f"{name}.md").write_text(text)
    toctree = "\n".join(pages)
    (src / "index.md").write_text(f"# Page build\n\n```{{toctree}}\n{toctree}\n```\n")
    command = [
        sys.executable, "-m", "sphinx", *SPHINX_OPTIONS,
        "-d", str(workdir / "doctrees"),
        "-D", f"nb_execution_mode={execution_mode}",
        *(["-D", f"nb_execution_cache_path={workdir / 'cache'}"] if execution_mode == "cache" else []),
        *(["-D", "suppress_warnings=ref.doc,myst.xref_missing,ref.ref"] if allow_missing_links else []),
        str(src), str(workdir / "html"),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pages", nargs="+", type=Path, help="MyST pages (.md) to build")
    parser.add_argument("--allow-missing-links", action="store_true", help="ignore links to pages not built")
    parser.add_argument("--keep", type=Path, help="build here and keep the result (default: a temporary folder)")
    args = parser.parse_args()
    pages = {path.stem: path.read_text() for path in args.pages}
    if args.keep:
        shutil.rmtree(args.keep, ignore_errors=True)
        result = build(pages, args.keep, allow_missing_links=args.allow_missing_links)
    else:
        with tempfile.TemporaryDirectory(prefix="page_build_") as tmp:
            result = build(pages, Path(tmp), allow_missing_links=args.allow_missing_links)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
