"""Helpers shared by the tests: loading the repository's scripts and Sphinx extensions, and
reference implementations written independently of the library."""

from __future__ import annotations

import importlib.util
import statistics
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


def grpo_advantages_reference(
    rewards: list[float],
    groups: list[int],
    *,
    leave_one_out: bool,
    normalize: bool,
    valid: list[bool] | None = None,
    eps: float = 1e-6,
) -> list[float]:
    """GRPO advantages by the definition, one sample at a time in Python floats (NeMo RL's
    conventions): baseline and sample standard deviation over the valid members of the sample's
    group (without the sample itself under leave-one-out); 0 for a group with one valid member;
    no division when the deviation is 0."""
    valid = [True] * len(rewards) if valid is None else valid
    out = []
    for i, (r, g) in enumerate(zip(rewards, groups, strict=True)):
        members = [j for j, h in enumerate(groups) if h == g and valid[j]]
        if len(members) <= 1:
            out.append(0.0)
            continue
        others = [rewards[j] for j in members if not (leave_one_out and j == i)]
        baseline = statistics.fmean(others)
        std = statistics.stdev(others) if len(others) >= 2 else 0.0
        a = r - baseline
        out.append(a / (std + eps) if normalize and std > 0 else a)
    return out
