r"""Run manifests: what a result needs next to it so that someone can check how it was made.

A manifest records, for one run: the **configuration** and its SHA-256, the **git revision**
and whether the working tree was **dirty**, the **package versions**, the **seeds**, the
SHA-256 of each **data** input, the UTC creation time, coarse **host** facts (platform,
CPU count; never user names, host names or paths) and, once the run has finished, the
SHA-256 of each **output** file (:func:`record_outputs`). Written as JSON next to the
results, it is checked on reload by :func:`verify_manifest`, which lists every field that no
longer matches.

Terms follow the ACM's *Artifact Review and Badging* definitions (version 1.1, 2020):

- **repeatability**: same team, same experimental setup: the manifest pins the setup;
- **reproducibility**: a different team, the *same* setup (the authors' artefacts): the
  manifest lets them confirm they run what was run;
- **replicability**: a different team, a *different* setup (their own implementation or
  data): the manifest says what has to be matched and which differences are allowed.

A matching manifest is necessary, not sufficient, for bitwise-equal results: GPUs, thread
counts and library kernels can still change float reduction order (see the reproducibility
page). Agarwal et al. (2021) and Henderson et al. (2018) show why seeds and the number of
runs must be reported with every result.

The config hash is the SHA-256 of the **canonical JSON** of the configuration:

.. math::

    \begin{aligned}
    h &= \mathrm{SHA256}(\mathrm{utf8}(c)), \\
    c &= \texttt{json.dumps}(\text{config},\\
      &\quad \texttt{sort\_keys=True},\\
      &\quad \texttt{separators=(",", ":")},\\
      &\quad \texttt{ensure\_ascii=False})
    \end{aligned}

so it does not depend on key order or whitespace, and changes with any key or value (``1``,
``1.0`` and ``true`` are different values). Floats are written as Python's shortest
round-trip ``repr``; non-ASCII characters are kept, not ``\uXXXX``-escaped (for ASCII-only
configurations the text equals ``json.dumps`` with its default ``ensure_ascii=True``). Keys
must be strings; tuples are stored as JSON arrays (lists); NaN and infinities are rejected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "DEFAULT_PACKAGES",
    "MANIFEST_VERSION",
    "RunManifest",
    "build_manifest",
    "canonical_json",
    "config_sha256",
    "data_sha256",
    "git_state",
    "host_info",
    "package_versions",
    "read_manifest",
    "record_outputs",
    "verify_manifest",
    "write_manifest",
]

#: Format version written into every manifest file.
MANIFEST_VERSION = 1

#: Packages whose versions every manifest records ("python" is the interpreter).
DEFAULT_PACKAGES = ("python", "numpy", "scipy", "torch", "nemo_rl_theory")

#: A data input: a file path, raw bytes, a NumPy array or a torch tensor.
DataSource = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray | torch.Tensor


# ----------------------------------------------------------------------------- config


def _plain_json(value: object, where: str) -> object:
    """A plain dict/list copy of ``value``; rejects what JSON would change or refuse.

    Non-str keys (JSON would turn ``1`` into ``"1"``), NaN/inf, and types other than mappings,
    lists, tuples, str, int, float, bool and None raise, naming the offending path.
    """
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} must be finite (JSON has no NaN/inf), got {value}")
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} has a key {k!r} of type {type(k).__name__}; JSON keys must be str")
            out[k] = _plain_json(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"{where} is a {type(value).__name__}, which is not JSON-serialisable "
        "(use a dict with str keys, list, str, int, float, bool or None)"
    )


def canonical_json(config: Mapping[str, Any]) -> str:
    """The canonical JSON text of ``config``: sorted keys, no whitespace, UTF-8 characters kept.

    Raises:
        TypeError: ``config`` is not a mapping, has a non-str key or a non-JSON value (named by
            its path, e.g. ``config['opt']['betas'][0]``). ValueError: a NaN or infinite float.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping (dict) with str keys, got {type(config).__name__}")
    plain = _plain_json(config, "config")
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def config_sha256(config: Mapping[str, Any]) -> str:
    """Hex SHA-256 of :func:`canonical_json` encoded as UTF-8."""
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- data


def _array_digest(shape: tuple[int, ...], dtype_label: str, payload: bytes) -> str:
    header = f"ndarray|{dtype_label}|{','.join(str(int(n)) for n in shape)}|".encode()
    return hashlib.sha256(header + payload).hexdigest()


def data_sha256(source: DataSource, *, name: str = "data") -> str:
    r"""Hex SHA-256 of a data input.

    - a path (``str`` or ``os.PathLike``): the file's bytes, read in 1 MiB chunks, so it equals
      ``hashlib.sha256(open(path, "rb").read()).hexdigest()``;
    - ``bytes`` / ``bytearray`` / ``memoryview``: those bytes;
    - a NumPy array or torch tensor: the bytes of
      ``"ndarray|<dtype>|<shape>|"`` followed by the C-order element bytes, so arrays of equal
      bytes but different dtype or shape differ. A tensor hashes like the NumPy array
      ``tensor.numpy()`` (dtypes NumPy lacks, e.g. bfloat16, are labelled ``torch.<dtype>``).

    Raises:
        FileNotFoundError: a path that does not exist (named). ValueError: a directory.
        TypeError: anything else (e.g. a list: convert it to an array first).
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"{name}: file not found: {path}")
        if path.is_dir():
            raise ValueError(f"{name}: {path} is a directory; hash its files one by one")
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
    if isinstance(source, (bytes, bytearray, memoryview)):
        return hashlib.sha256(bytes(source)).hexdigest()
    if isinstance(source, torch.Tensor):
        t = source.detach().cpu().contiguous()
        try:
            arr = t.numpy()
        except TypeError:  # e.g. bfloat16: no NumPy dtype, hash the raw bytes
            raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
            return _array_digest(tuple(t.shape), str(t.dtype), raw)
        return _array_digest(arr.shape, arr.dtype.str, np.ascontiguousarray(arr).tobytes())
    if isinstance(source, np.ndarray):
        if source.dtype.hasobject:
            raise TypeError(f"{name}: an object-dtype array has no stable bytes to hash")
        return _array_digest(source.shape, source.dtype.str, np.ascontiguousarray(source).tobytes())
    raise TypeError(f"{name} must be a file path, bytes, a numpy array or a torch tensor, got {type(source).__name__}")


def _data_hashes(data: Mapping[str, DataSource] | None, *, field: str = "data") -> dict[str, str]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise TypeError(f"{field} must be a mapping from a name to a data source, got {type(data).__name__}")
    out = {}
    for key, source in data.items():
        if not isinstance(key, str):
            raise TypeError(f"{field} keys must be str names, got {key!r}")
        out[key] = data_sha256(source, name=f"{field}[{key!r}]")
    return out


# ----------------------------------------------------------------------------- environment


def git_state(repo: str | os.PathLike) -> tuple[str | None, bool | None]:
    """``(revision, dirty)`` of the git work tree containing ``repo``.

    ``revision`` is ``git rev-parse HEAD`` (None before the first commit); ``dirty`` is whether
    ``git status --porcelain`` prints anything (modified, staged **or untracked** files). Both
    are None when git is not installed, fails, or ``repo`` is not inside a work tree: recording
    never fails because of git.

    Raises:
        FileNotFoundError: ``repo`` is not an existing directory.
    """
    path = Path(repo)
    if not path.is_dir():
        raise FileNotFoundError(f"repo must be an existing directory, got {path}")
    git = shutil.which("git")
    if git is None:
        return None, None
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}

    def run(*args: str) -> subprocess.CompletedProcess[str] | None:
        try:
            return subprocess.run(
                [git, *args], cwd=path, capture_output=True, text=True, timeout=30, env=env, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None

    inside = run("rev-parse", "--is-inside-work-tree")
    if inside is None or inside.returncode != 0 or inside.stdout.strip() != "true":
        return None, None
    head = run("rev-parse", "--verify", "--quiet", "HEAD")
    revision = head.stdout.strip() if head is not None and head.returncode == 0 and head.stdout.strip() else None
    status = run("status", "--porcelain")
    dirty = bool(status.stdout.strip()) if status is not None and status.returncode == 0 else None
    return revision, dirty


def _version_of(name: str) -> str | None:
    if name == "python":
        return platform.python_version()
    for candidate in dict.fromkeys((name, name.replace("_", "-"), name.replace("-", "_"))):
        try:
            return metadata.version(candidate)
        except metadata.PackageNotFoundError:
            continue
    module = sys.modules.get(name)  # imported but not installed as a distribution
    version = getattr(module, "__version__", None)
    return str(version) if version is not None else None


def package_versions(extra: Iterable[str] = ()) -> dict[str, str | None]:
    """Installed versions of :data:`DEFAULT_PACKAGES` and ``extra`` (None: not installed).

    Versions come from the installed distributions' metadata (``importlib.metadata``), falling
    back to an already-imported module's ``__version__``; nothing is imported.
    """
    if isinstance(extra, str):
        raise TypeError("extra must be an iterable of package names, not a single str (wrap it in a list)")
    names = list(DEFAULT_PACKAGES)
    for name in extra:
        if not isinstance(name, str) or not name:
            raise TypeError(f"extra package names must be non-empty str, got {name!r}")
        if name not in names:
            names.append(name)
    return {name: _version_of(name) for name in names}


def host_info() -> dict[str, Any]:
    """Coarse, non-identifying host facts: OS/platform string, machine, Python build, CPU count."""
    return {
        "platform": platform.platform(),
        "system": platform.system(),
        "machine": platform.machine(),
        "python_implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
    }


# ----------------------------------------------------------------------------- the manifest


@dataclass(frozen=True)
class RunManifest:
    """Provenance of one run (see the module docstring). Build it with :func:`build_manifest`.

    Attributes:
        config: the run's configuration as stored in JSON (tuples become lists).
        config_sha256: hex SHA-256 of the canonical JSON of ``config``.
        git_revision: the commit checked out, or None (no repo recorded, outside a repo, no
            commit yet, or git missing).
        git_dirty: whether the work tree had uncommitted or untracked changes, or None.
        packages: package name -> version (None: not installed); ``"python"`` is the interpreter.
        seeds: name -> integer seed (e.g. ``{"torch": 0, "numpy": 0}``).
        data_sha256: data name -> hex SHA-256 (:func:`data_sha256`).
        created_at: UTC time, ISO 8601 (``2026-01-31T12:00:00+00:00``).
        host: :func:`host_info`.
        version: the manifest format version.
        outputs_sha256: output name -> hex SHA-256 of what the run produced (results files,
            metrics), added by :func:`record_outputs` after the run; empty until then. Files
            written before this field existed read back with it empty.
    """

    config: dict[str, Any]
    config_sha256: str
    git_revision: str | None
    git_dirty: bool | None
    packages: dict[str, str | None]
    seeds: dict[str, int]
    data_sha256: dict[str, str]
    created_at: str
    host: dict[str, Any]
    version: int = MANIFEST_VERSION
    outputs_sha256: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of all fields."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _check_seeds(seeds: Mapping[str, int] | int | None) -> dict[str, int]:
    if seeds is None:
        return {}
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        return {"seed": int(seeds)}
    if not isinstance(seeds, Mapping):
        raise TypeError(f"seeds must be an int or a mapping from a name to an int, got {type(seeds).__name__}")
    out = {}
    for key, value in seeds.items():
        if not isinstance(key, str):
            raise TypeError(f"seeds keys must be str names, got {key!r}")
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"seeds[{key!r}] must be an int, got {type(value).__name__}")
        out[key] = int(value)
    return out


def build_manifest(
    config: Mapping[str, Any],
    *,
    seeds: Mapping[str, int] | int | None = None,
    data: Mapping[str, DataSource] | None = None,
    repo: str | os.PathLike | None = None,
    extra_packages: Iterable[str] = (),
    created_at: datetime | None = None,
    outputs: Mapping[str, DataSource] | None = None,
) -> RunManifest:
    """Record a run's provenance now.

    Args:
        config: the run's JSON-serialisable configuration (a dict with str keys).
        seeds: an int (stored as ``{"seed": n}``) or a mapping name -> int.
        data: name -> data source (path, bytes, array, tensor); only the hashes are stored,
            never the paths.
        repo: a directory inside the git work tree to record; None: git is not recorded.
        extra_packages: package names recorded besides :data:`DEFAULT_PACKAGES`.
        created_at: a timezone-aware time (default: now); stored in UTC.
        outputs: name -> output source, hashed like ``data``; usually added after the run with
            :func:`record_outputs` instead, so that git state and time are taken at launch.

    Raises:
        ValueError: a non-JSON config (its path named), bad seeds or data (TypeError for a wrong type).
        FileNotFoundError: a missing data file or ``repo`` directory.
    """
    text = canonical_json(config)
    if created_at is None:
        created_at = datetime.now(timezone.utc)
    elif not isinstance(created_at, datetime) or created_at.tzinfo is None:
        raise ValueError(f"created_at must be a timezone-aware datetime, got {created_at!r}")
    revision, dirty = git_state(repo) if repo is not None else (None, None)
    return RunManifest(
        config=json.loads(text),
        config_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        git_revision=revision,
        git_dirty=dirty,
        packages=package_versions(extra_packages),
        seeds=_check_seeds(seeds),
        data_sha256=_data_hashes(data),
        created_at=created_at.astimezone(timezone.utc).isoformat(),
        host=host_info(),
        outputs_sha256=_data_hashes(outputs, field="outputs"),
    )


def record_outputs(manifest: RunManifest, outputs: Mapping[str, DataSource]) -> RunManifest:
    """A copy of ``manifest`` with the SHA-256 of each of ``outputs`` added to ``outputs_sha256``.

    Call it when the run has finished, on the manifest built at launch; outputs are hashed as by
    :func:`data_sha256` (a path: the file's bytes). Never overwrites: a name that is already
    recorded raises, so a second run cannot silently replace the first one's results.

    Raises:
        TypeError: ``manifest`` is not a :class:`RunManifest`, or ``outputs`` is not a mapping
            from str names to data sources. ValueError: a name already recorded.
        FileNotFoundError: an output file that does not exist.
    """
    if not isinstance(manifest, RunManifest):
        raise TypeError(f"manifest must be a RunManifest, got {type(manifest).__name__}")
    hashes = _data_hashes(outputs, field="outputs")
    again = sorted(set(hashes) & set(manifest.outputs_sha256))
    if again:
        raise ValueError(f"outputs {again} are already recorded in the manifest; use new names")
    return dataclasses.replace(manifest, outputs_sha256={**manifest.outputs_sha256, **hashes})


def write_manifest(path: str | os.PathLike, manifest: RunManifest) -> Path:
    """Write ``manifest`` as indented, key-sorted JSON (atomically: temp file, then rename).

    Keep the file out of the recorded git work tree (or git-ignored): an untracked manifest
    inside it makes the tree dirty at the next check.
    """
    if not isinstance(manifest, RunManifest):
        raise TypeError(f"manifest must be a RunManifest, got {type(manifest).__name__}")
    target = Path(path)
    if not target.parent.is_dir():
        raise FileNotFoundError(f"path: directory {target.parent} does not exist")
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n", "utf-8")
    os.replace(tmp, target)
    return target


_FIELDS = {f.name: f for f in dataclasses.fields(RunManifest)}


def read_manifest(path: str | os.PathLike) -> RunManifest:
    """Read a manifest written by :func:`write_manifest`.

    Raises:
        FileNotFoundError: no such file. ValueError: not JSON, missing or unknown fields, a
            field of the wrong type, or an unsupported format version.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"path: manifest file not found: {source}")
    try:
        raw = json.loads(source.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{source} is not a JSON manifest: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{source} must hold a JSON object, got {type(raw).__name__}")
    raw.setdefault("outputs_sha256", {})  # files written before outputs were recorded
    missing = sorted(set(_FIELDS) - set(raw))
    unknown = sorted(set(raw) - set(_FIELDS))
    if missing or unknown:
        raise ValueError(f"{source}: missing fields {missing}, unknown fields {unknown}")
    if isinstance(raw["version"], bool) or raw["version"] != MANIFEST_VERSION:
        version = raw["version"]
        raise ValueError(f"{source}: manifest version {version!r} is not supported (expected {MANIFEST_VERSION})")
    kinds = {
        "config": dict,
        "config_sha256": str,
        "git_revision": (str, type(None)),
        "git_dirty": (bool, type(None)),
        "packages": dict,
        "seeds": dict,
        "data_sha256": dict,
        "created_at": str,
        "host": dict,
        "outputs_sha256": dict,
    }
    for key, kind in kinds.items():
        if not isinstance(raw[key], kind):
            raise ValueError(f"{source}: field {key} has type {type(raw[key]).__name__}")
    try:
        seeds = _check_seeds(raw["seeds"])
    except TypeError as err:
        raise ValueError(f"{source}: {err}") from None
    for key, kind in (("packages", (str, type(None))), ("data_sha256", str), ("outputs_sha256", str)):
        bad = [k for k, v in raw[key].items() if not isinstance(v, kind)]
        if bad:
            raise ValueError(f"{source}: field {key} has values of the wrong type at {bad}")
    return RunManifest(**{**raw, "seeds": seeds})


def _compare_maps(field: str, recorded: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(recorded) | set(found)):
        if key not in found:
            out.append(f"{field}[{key!r}]: recorded {recorded[key]!r}, not supplied")
        elif key not in recorded:
            out.append(f"{field}[{key!r}]: not recorded, found {found[key]!r}")
        elif recorded[key] != found[key]:
            out.append(f"{field}[{key!r}]: expected {recorded[key]!r}, found {found[key]!r}")
    return out


def verify_manifest(
    manifest: RunManifest,
    *,
    config: Mapping[str, Any] | None = None,
    seeds: Mapping[str, int] | int | None = None,
    data: Mapping[str, DataSource] | None = None,
    repo: str | os.PathLike | None = None,
    packages: bool | Mapping[str, str | None] = True,
    outputs: Mapping[str, DataSource] | None = None,
) -> list[str]:
    """Every way the current state differs from ``manifest``; an empty list when all match.

    Always checked: that ``manifest.config`` still hashes to ``manifest.config_sha256`` (an
    edited file). Each argument that is given is compared with its record:

    - ``config``: its SHA-256 against ``config_sha256``;
    - ``seeds``: each name's seed (names missing on either side are reported);
    - ``data``: each name's hash (names missing on either side are reported);
    - ``repo``: :func:`git_state` of that directory against ``git_revision`` and ``git_dirty``;
    - ``packages``: ``True`` compares the recorded packages with the installed ones; a mapping
      compares with those versions; ``False`` skips;
    - ``outputs``: each name's hash against ``outputs_sha256`` (names missing on either side
      are reported), e.g. a results file that was edited or regenerated differently.

    Each message names the field, what was expected (recorded) and what was found, e.g.
    ``"seeds['torch']: expected 0, found 1"``.
    """
    if not isinstance(manifest, RunManifest):
        raise TypeError(f"manifest must be a RunManifest, got {type(manifest).__name__}")
    problems: list[str] = []
    own = config_sha256(manifest.config)
    if own != manifest.config_sha256:
        problems.append(f"config_sha256: the stored config hashes to {own}, but {manifest.config_sha256} is recorded")
    if config is not None:
        found = config_sha256(config)
        if found != manifest.config_sha256:
            problems.append(f"config: expected config_sha256 {manifest.config_sha256}, found {found}")
    if seeds is not None:
        problems += _compare_maps("seeds", manifest.seeds, _check_seeds(seeds))
    if data is not None:
        problems += _compare_maps("data_sha256", manifest.data_sha256, _data_hashes(data))
    if outputs is not None:
        problems += _compare_maps("outputs_sha256", manifest.outputs_sha256, _data_hashes(outputs, field="outputs"))
    if repo is not None:
        revision, dirty = git_state(repo)
        if revision != manifest.git_revision:
            problems.append(f"git_revision: expected {manifest.git_revision!r}, found {revision!r}")
        if dirty != manifest.git_dirty:
            problems.append(f"git_dirty: expected {manifest.git_dirty!r}, found {dirty!r}")
    if isinstance(packages, bool):
        if packages:
            installed = {name: _version_of(name) for name in manifest.packages}
            problems += _compare_maps("packages", manifest.packages, installed)
    elif isinstance(packages, Mapping):
        problems += _compare_maps("packages", manifest.packages, dict(packages))
    else:
        raise TypeError(f"packages must be a bool or a mapping name -> version, got {type(packages).__name__}")
    return problems
