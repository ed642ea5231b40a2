"""Helpers shared by the tests that exercise the repository's scripts and Sphinx extensions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def load_module(relative_path: str) -> ModuleType:
    """Import a module that is not on the path (``scripts/``, ``docs/_ext/``) by its file."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module
