"""Tests for nemo_rl_theory.research.manifest: hashes against hashlib, round trips, verification
that names exactly the changed fields, git state in a throw-away repository, bad input named."""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import json
import platform
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import scipy
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import nemo_rl_theory.research.manifest as manifest_module
from nemo_rl_theory.research.manifest import (
    DEFAULT_PACKAGES,
    RunManifest,
    build_manifest,
    canonical_json,
    config_sha256,
    data_sha256,
    git_state,
    host_info,
    package_versions,
    read_manifest,
    record_outputs,
    verify_manifest,
    write_manifest,
)

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
json_configs = st.dictionaries(st.text(max_size=6), json_values, max_size=6)

CONFIG = {"algorithm": "grpo", "lr": 1e-5, "group_size": 8, "loss": {"clip": [0.2, 0.28], "kl": 0.0}}
SEEDS = {"torch": 0, "numpy": 0, "python": 0}


def reorder(value: object, rng: np.random.Generator) -> object:
    """The same JSON value with every dict's keys inserted in a random order."""
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {k: reorder(value[k], rng) for k in keys}
    if isinstance(value, list):
        return [reorder(v, rng) for v in value]
    return value


def leaf_paths(value: object, prefix: tuple = ()) -> list[tuple]:
    if isinstance(value, dict) and value:
        return [p for k, v in value.items() for p in leaf_paths(v, (*prefix, k))]
    if isinstance(value, list) and value:
        return [p for i, v in enumerate(value) for p in leaf_paths(v, (*prefix, i))]
    return [prefix]


def replaced(value: object, path: tuple, new: object) -> object:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {k: (replaced(v, rest, new) if k == head else v) for k, v in value.items()}
    return [replaced(v, rest, new) if i == head else v for i, v in enumerate(value)]


def make(tmp_path: Path, **kw) -> tuple[RunManifest, Path]:
    data_file = tmp_path / "train.jsonl"
    if not data_file.exists():
        data_file.write_bytes(b'{"prompt": "2+2", "answer": "4"}\n')
    m = build_manifest(CONFIG, seeds=SEEDS, data={"train": data_file, "weights": np.arange(6.0)}, **kw)
    return m, data_file


# ----------------------------------------------------------------------------- config hash


@given(json_configs, st.integers(0, 2**32 - 1))
def test_config_hash_ignores_key_order(config: dict, seed: int) -> None:
    shuffled = reorder(config, np.random.default_rng(seed))
    assert config_sha256(shuffled) == config_sha256(config)
    assert canonical_json(shuffled) == canonical_json(config)


@given(st.dictionaries(st.text(max_size=6), json_values, min_size=1, max_size=6), st.data())
def test_config_hash_changes_with_any_value(config: dict, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(leaf_paths(config)))
    new = data.draw(json_values)
    changed = replaced(config, path, new)
    # A change means a different JSON text: 0.0 vs -0.0 or 1 vs 1.0 are different values here.
    assume(json.dumps(changed, sort_keys=True) != json.dumps(config, sort_keys=True))
    assert config_sha256(changed) != config_sha256(config)


@given(json_configs, st.text(max_size=6))
def test_config_hash_changes_with_an_added_key(config: dict, key: str) -> None:
    assume(key not in config)
    assert config_sha256({**config, key: None}) != config_sha256(config)


def test_config_hash_is_sha256_of_compact_sorted_json() -> None:
    text = '{"algorithm":"grpo","group_size":8,"loss":{"clip":[0.2,0.28],"kl":0.0},"lr":1e-05}'
    assert canonical_json(CONFIG) == text
    assert config_sha256(CONFIG) == hashlib.sha256(text.encode()).hexdigest()
    # tuples are JSON arrays; 1 and 1.0 and True are three different values
    assert config_sha256({"a": (1, 2)}) == config_sha256({"a": [1, 2]})
    assert len({config_sha256({"a": v}) for v in (1, 1.0, True)}) == 3
    assert canonical_json({"ключ": "значение"}) == '{"ключ":"значение"}'
    # the docstring's formula, written out with the json module: kept UTF-8, not \u escapes
    unicode_config = {"b": [1.5, None, True], "ключ": {"z": "é", "a": 0.1}}
    expected = json.dumps(unicode_config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_json(unicode_config) == expected
    assert config_sha256(unicode_config) == hashlib.sha256(expected.encode("utf-8")).hexdigest()
    assert (
        config_sha256(unicode_config)
        != hashlib.sha256(json.dumps(unicode_config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    )


# ----------------------------------------------------------------------------- data hashes


def test_file_hash_equals_hashlib(tmp_path: Path) -> None:
    f = tmp_path / "blob.bin"
    payload = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)  # spans several read chunks
    f.write_bytes(payload)
    expected = hashlib.sha256(payload).hexdigest()
    assert data_sha256(f) == expected
    assert data_sha256(str(f)) == expected
    assert data_sha256(payload) == expected
    assert data_sha256(bytearray(payload)) == expected


def test_array_hash_covers_dtype_shape_and_bytes() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    header = b"ndarray|<f4|2,3|"
    assert data_sha256(a) == hashlib.sha256(header + a.tobytes()).hexdigest()
    assert data_sha256(torch.from_numpy(a)) == data_sha256(a)
    assert data_sha256(a.T) == data_sha256(np.ascontiguousarray(a.T))
    assert data_sha256(a.reshape(3, 2)) != data_sha256(a)
    assert data_sha256(a.astype(np.float64)) != data_sha256(a)
    b = a.copy()
    b[1, 2] += 1
    assert data_sha256(b) != data_sha256(a)
    bf = torch.ones(3, dtype=torch.bfloat16)
    assert data_sha256(bf) != data_sha256(bf.float())
    assert data_sha256(bf) == data_sha256(bf.clone())


# ----------------------------------------------------------------------------- build, write, read


def test_round_trip_is_equal(tmp_path: Path) -> None:
    m, _ = make(tmp_path, extra_packages=["hypothesis"])
    path = write_manifest(tmp_path / "manifest.json", m)
    back = read_manifest(path)
    assert back == m
    assert json.loads(path.read_text()) == m.to_dict()
    assert verify_manifest(back) == []


def test_recorded_fields(tmp_path: Path) -> None:
    m, data_file = make(tmp_path, extra_packages=["hypothesis", "surely-not-installed-pkg"])
    assert m.config == CONFIG and m.config_sha256 == config_sha256(CONFIG)
    assert m.seeds == SEEDS
    assert m.data_sha256["train"] == hashlib.sha256(data_file.read_bytes()).hexdigest()
    assert m.git_revision is None and m.git_dirty is None  # no repo given
    assert m.packages["python"] == platform.python_version()
    assert m.packages["numpy"] == np.__version__ and m.packages["scipy"] == scipy.__version__
    assert m.packages["torch"] == torch.__version__
    assert m.packages["nemo_rl_theory"] is not None
    assert m.packages["surely-not-installed-pkg"] is None
    assert list(m.packages)[: len(DEFAULT_PACKAGES)] == list(DEFAULT_PACKAGES)
    created = datetime.fromisoformat(m.created_at)
    assert created.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - created) < timedelta(minutes=5)
    assert build_manifest({}, seeds=3).seeds == {"seed": 3}


def test_created_at_is_stored_in_utc() -> None:
    local = datetime(2026, 1, 31, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert build_manifest({}, created_at=local).created_at == "2026-01-31T12:00:00+00:00"


def test_host_info_has_no_user_host_name_or_path() -> None:
    info = host_info()
    assert set(info) == {"platform", "system", "machine", "python_implementation", "cpu_count"}
    text = json.dumps(info)
    assert "/" not in text and "\\" not in text
    for secret in (getpass.getuser(), platform.node()):
        if len(secret) >= 3:
            assert secret not in text


def test_manifest_stores_no_paths(tmp_path: Path) -> None:
    m, _ = make(tmp_path)
    assert str(tmp_path) not in json.dumps(m.to_dict())


# ----------------------------------------------------------------------------- verify


def test_verify_names_exactly_the_changed_fields(tmp_path: Path) -> None:
    m, data_file = make(tmp_path)
    data = {"train": data_file, "weights": np.arange(6.0)}
    assert verify_manifest(m, config=CONFIG, seeds=SEEDS, data=data) == []

    # a seed
    problems = verify_manifest(m, seeds={**SEEDS, "torch": 1})
    assert problems == ["seeds['torch']: expected 0, found 1"]

    # a package version (recorded one differs from the installed one)
    edited = dataclasses.replace(m, packages={**m.packages, "numpy": "0.0.1"})
    assert verify_manifest(edited) == [f"packages['numpy']: expected '0.0.1', found '{np.__version__}'"]
    assert verify_manifest(m, packages={**m.packages, "scipy": "9.9"}) == [
        f"packages['scipy']: expected '{scipy.__version__}', found '9.9'"
    ]

    # the config
    problems = verify_manifest(m, config={**CONFIG, "lr": 2e-5})
    assert len(problems) == 1 and problems[0].startswith("config: expected config_sha256 ")

    # a data file
    data_file.write_bytes(data_file.read_bytes() + b"\n")
    problems = verify_manifest(m, data=data)
    assert len(problems) == 1 and problems[0].startswith("data_sha256['train']: expected ")

    # several at once, each reported once
    problems = verify_manifest(m, config={}, seeds={"torch": 0}, data=data)
    fields = sorted(p.split(":")[0] for p in problems)
    assert fields == ["config", "data_sha256['train']", "seeds['numpy']", "seeds['python']"]
    assert "not supplied" in next(p for p in problems if p.startswith("seeds['numpy']"))


def test_verify_reports_names_not_recorded_and_an_edited_config(tmp_path: Path) -> None:
    m, data_file = make(tmp_path)
    extra = {"train": data_file, "weights": np.arange(6.0), "eval": b"x"}
    assert verify_manifest(m, data=extra) == [f"data_sha256['eval']: not recorded, found '{data_sha256(b'x')}'"]
    tampered = dataclasses.replace(m, config={**m.config, "lr": 1.0})
    problems = verify_manifest(tampered)
    assert len(problems) == 1 and problems[0].startswith("config_sha256: the stored config hashes to")


def test_verify_after_reading_an_edited_file(tmp_path: Path) -> None:
    m, _ = make(tmp_path)
    path = write_manifest(tmp_path / "m.json", m)
    raw = json.loads(path.read_text())
    raw["seeds"]["numpy"] = 7
    path.write_text(json.dumps(raw))
    assert verify_manifest(read_manifest(path), seeds=SEEDS) == ["seeds['numpy']: expected 7, found 0"]


# ----------------------------------------------------------------------------- git

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@needs_git
def test_git_revision_and_dirty_flag(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    assert git_state(repo) == (None, False)  # a repository without commits
    (repo / "a.txt").write_text("one\n")
    assert git_state(repo) == (None, True)  # untracked counts as dirty
    git(repo, "add", "a.txt")
    git(repo, "commit", "-q", "-m", "first")
    revision, dirty = git_state(repo)
    # independent of rev-parse: follow .git/HEAD to the branch's ref file
    ref = (repo / ".git" / "HEAD").read_text().split("ref:")[1].strip()
    assert revision == (repo / ".git" / ref).read_text().strip()
    assert len(revision) == 40 and dirty is False
    (repo / "sub").mkdir()
    assert git_state(repo / "sub") == (revision, False)  # a subdirectory of the work tree

    m = build_manifest({"x": 1}, repo=repo)
    assert (m.git_revision, m.git_dirty) == (revision, False)
    assert verify_manifest(m, repo=repo) == []
    (repo / "a.txt").write_text("two\n")
    assert verify_manifest(m, repo=repo) == ["git_dirty: expected False, found True"]
    git(repo, "commit", "-q", "-am", "second")
    new_revision = git_state(repo)[0]
    assert verify_manifest(m, repo=repo) == [f"git_revision: expected {revision!r}, found {new_revision!r}"]


@needs_git
def test_outside_a_repository_git_state_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert git_state(tmp_path) == (None, None)


def test_missing_or_failing_git_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_module.shutil, "which", lambda name: None)
    assert git_state(tmp_path) == (None, None)
    monkeypatch.setattr(manifest_module.shutil, "which", lambda name: "/nonexistent/git")
    assert git_state(tmp_path) == (None, None)  # OSError from subprocess is swallowed
    assert build_manifest({}, repo=tmp_path).git_revision is None


# ----------------------------------------------------------------------------- package versions


def test_package_versions_defaults_and_extras() -> None:
    v = package_versions(["hypothesis", "numpy"])
    assert list(v) == [*DEFAULT_PACKAGES, "hypothesis"]
    import hypothesis

    assert v["hypothesis"] == hypothesis.__version__


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("config", "error", "match"),
    [
        ({"a": {1, 2}}, TypeError, r"config\['a'\] is a set"),
        ({"a": {"b": [1, object()]}}, TypeError, r"config\['a'\]\['b'\]\[1\] is a object"),
        ({"a": {1: "x"}}, TypeError, r"config\['a'\] has a key 1 of type int"),
        ({"lr": float("nan")}, ValueError, r"config\['lr'\] must be finite"),
        ({"n": np.int64(3)}, TypeError, r"config\['n'\] is a int64"),
        ([1, 2], TypeError, "config must be a mapping"),
    ],
)
def test_non_json_config_is_named(config, error, match) -> None:
    with pytest.raises(error, match=match):
        build_manifest(config)


def test_bad_data_seeds_and_options_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data\['train'\]: file not found"):
        build_manifest({}, data={"train": tmp_path / "missing.jsonl"})
    with pytest.raises(ValueError, match=r"data\['dir'\].*is a directory"):
        build_manifest({}, data={"dir": tmp_path})
    with pytest.raises(TypeError, match=r"data\['xs'\] must be a file path, bytes"):
        build_manifest({}, data={"xs": [1, 2, 3]})
    with pytest.raises(TypeError, match="object-dtype"):
        data_sha256(np.array([None, 1]))
    with pytest.raises(TypeError, match="data must be a mapping"):
        build_manifest({}, data=[b"x"])
    with pytest.raises(TypeError, match=r"seeds\['torch'\] must be an int"):
        build_manifest({}, seeds={"torch": True})
    with pytest.raises(TypeError, match="seeds must be an int or a mapping"):
        build_manifest({}, seeds=[0])
    with pytest.raises(ValueError, match="created_at must be a timezone-aware datetime"):
        build_manifest({}, created_at=datetime(2026, 1, 1))
    with pytest.raises(FileNotFoundError, match="repo must be an existing directory"):
        build_manifest({}, repo=tmp_path / "nope")
    with pytest.raises(TypeError, match="extra must be an iterable of package names"):
        build_manifest({}, extra_packages="torch")
    m = build_manifest({})
    with pytest.raises(TypeError, match="packages must be a bool or a mapping"):
        verify_manifest(m, packages="yes")
    with pytest.raises(TypeError, match="manifest must be a RunManifest"):
        verify_manifest({})
    with pytest.raises(TypeError, match="manifest must be a RunManifest"):
        write_manifest(tmp_path / "m.json", {})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_manifest(tmp_path / "no" / "m.json", m)


def test_bad_manifest_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="manifest file not found"):
        read_manifest(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not a JSON manifest"):
        read_manifest(bad)
    bad.write_text("[]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        read_manifest(bad)
    good = build_manifest({"a": 1}).to_dict()
    for edit, match in [
        (lambda d: d.pop("seeds"), r"missing fields \['seeds'\]"),
        (lambda d: d.update(extra=1), r"unknown fields \['extra'\]"),
        (lambda d: d.update(version=99), "version 99 is not supported"),
        (lambda d: d.update(version=True), "version True is not supported"),  # True == 1 in Python
        (lambda d: d.update(git_dirty="no"), "field git_dirty has type str"),
        (lambda d: d.update(seeds={"torch": 1.5}), r"seeds\['torch'\] must be an int"),
        (lambda d: d.update(packages={"numpy": 2}), "field packages has values of the wrong type"),
    ]:
        d = json.loads(json.dumps(good))
        edit(d)
        bad.write_text(json.dumps(d))
        with pytest.raises(ValueError, match=match):
            read_manifest(bad)


# ----------------------------------------------------------------------------- outputs


def test_outputs_are_recorded_after_the_run_and_verified(tmp_path: Path) -> None:
    m, _ = make(tmp_path)
    assert m.outputs_sha256 == {}
    results = tmp_path / "results.json"
    results.write_text('{"pass_rate": 0.5}\n')
    done = record_outputs(m, {"results": results, "weights": torch.arange(4.0)})
    assert done.outputs_sha256["results"] == hashlib.sha256(results.read_bytes()).hexdigest()
    assert done.outputs_sha256["weights"] == data_sha256(np.arange(4.0, dtype=np.float32))
    assert m.outputs_sha256 == {}  # the original manifest is not modified
    assert dataclasses.replace(done, outputs_sha256={}) == m  # nothing else changed
    back = read_manifest(write_manifest(tmp_path / "m.json", done))
    assert back == done
    outputs = {"results": results, "weights": torch.arange(4.0)}
    assert verify_manifest(back, outputs=outputs) == []
    # built in one go, the same hashes
    assert build_manifest(CONFIG, outputs=outputs).outputs_sha256 == done.outputs_sha256

    results.write_text('{"pass_rate": 0.51}\n')  # an edited results file
    problems = verify_manifest(back, outputs=outputs)
    assert len(problems) == 1 and problems[0].startswith("outputs_sha256['results']: expected ")
    assert problems[0].endswith(f"found {hashlib.sha256(results.read_bytes()).hexdigest()!r}")
    assert verify_manifest(back, outputs={"results": results}) == [
        "outputs_sha256['results']: expected "
        f"{done.outputs_sha256['results']!r}, found {hashlib.sha256(results.read_bytes()).hexdigest()!r}",
        f"outputs_sha256['weights']: recorded {done.outputs_sha256['weights']!r}, not supplied",
    ]
    assert verify_manifest(m, outputs={"log": b"x"}) == [
        f"outputs_sha256['log']: not recorded, found '{data_sha256(b'x')}'"
    ]


def test_record_outputs_never_overwrites_and_names_bad_input(tmp_path: Path) -> None:
    m = record_outputs(build_manifest({}), {"results": b"first"})
    with pytest.raises(ValueError, match=r"outputs \['results'\] are already recorded"):
        record_outputs(m, {"results": b"second", "other": b"x"})
    assert record_outputs(m, {"other": b"x"}).outputs_sha256 == {
        "results": hashlib.sha256(b"first").hexdigest(),
        "other": hashlib.sha256(b"x").hexdigest(),
    }
    with pytest.raises(TypeError, match="manifest must be a RunManifest"):
        record_outputs({}, {"results": b"x"})
    with pytest.raises(TypeError, match="outputs must be a mapping"):
        record_outputs(m, [b"x"])
    with pytest.raises(TypeError, match="outputs keys must be str names"):
        record_outputs(m, {1: b"x"})
    with pytest.raises(FileNotFoundError, match=r"outputs\['log'\]: file not found"):
        record_outputs(m, {"log": tmp_path / "missing.txt"})
    with pytest.raises(TypeError, match=r"outputs\['xs'\] must be a file path, bytes"):
        build_manifest({}, outputs={"xs": [1, 2]})
    with pytest.raises(TypeError, match="outputs must be a mapping"):
        verify_manifest(m, outputs=[b"x"])


def test_a_file_without_outputs_reads_back_with_none_recorded(tmp_path: Path) -> None:
    m = build_manifest({"a": 1}, seeds=0)
    raw = m.to_dict()
    del raw["outputs_sha256"]  # a manifest written before outputs were recorded
    path = tmp_path / "old.json"
    path.write_text(json.dumps(raw))
    back = read_manifest(path)
    assert back == m and back.outputs_sha256 == {}
    raw["outputs_sha256"] = {"results": 3}
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"field outputs_sha256 has values of the wrong type at \['results'\]"):
        read_manifest(path)
    raw["outputs_sha256"] = ["results"]
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="field outputs_sha256 has type list"):
        read_manifest(path)
