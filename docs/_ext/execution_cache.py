"""Execution cache keyed on the library as well as on each page's code.

myst-nb's jupyter-cache keys a page's outputs on its code cells only: after a change in
``src/nemo_rl_theory`` it would serve outputs computed by the old library. ``conf.py`` therefore
uses ``<cache root>/<fingerprint of the library>`` as ``nb_execution_cache_path``: a library
change selects an empty cache, so every page executes again, and because the path is a Sphinx
configuration value that rebuilds the environment, Sphinx re-reads every page as well.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def library_fingerprint(package_dir: Path) -> str:
    """Hash of the names and bytes of every ``.py`` file under ``package_dir``."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(path.relative_to(package_dir).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def select_cache(cache_root: Path, fingerprint: str) -> Path:
    """The cache folder for ``fingerprint``; deletes the folders of other fingerprints.

    Outputs of an older library can never be served again, so keeping them only costs disk.
    """
    selected = cache_root / fingerprint
    if cache_root.is_dir():
        for folder in cache_root.iterdir():
            if folder.is_dir() and folder != selected:
                shutil.rmtree(folder, ignore_errors=True)
    return selected
