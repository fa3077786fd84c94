"""Target resolution: parsing of every form, git clones from local ``file://`` remotes,
and HF datasets from a hub cache built in ``tmp_path``. Nothing here touches the network."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.errors import TargetError
from runner.targets import resolve as targets
from runner.targets.resolve import MANIFEST_NAME, TargetSpec, parse_target, resolve_target


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user or system git config, no real caches; the default clones dir is in tmp."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    for name in ("HF_HUB_OFFLINE", "AIDER_FSM_GIT_CLONE_TIMEOUT_SECONDS", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)


def git(cwd: Path, *args: str) -> str:
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
    done = subprocess.run(
        ["git", *ident, *args], cwd=cwd, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def commit_file(repo: Path, name: str, text: str) -> str:
    (repo / name).write_text(text)
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", f"{name}={text}")
    return git(repo, "rev-parse", "HEAD")


@dataclass
class Remote:
    url: str
    work: Path  # a clone that pushes to the remote
    first: str  # tagged v1.0
    main: str  # tip of main
    feature: str  # tip of feature/x
    dangling: str  # in the remote's objects, on no branch


def make_remote(root: Path) -> Remote:
    bare = root / "proj.git"
    root.mkdir(parents=True)
    git(root, "init", "-q", "--bare", "-b", "main", str(bare))
    work = root / "work"
    git(root, "clone", "-q", str(bare), str(work))
    git(work, "checkout", "-q", "-b", "main")
    first = commit_file(work, "a.txt", "one")
    git(work, "tag", "v1.0")
    main = commit_file(work, "a.txt", "two")
    git(work, "checkout", "-q", "-b", "feature/x")
    feature = commit_file(work, "a.txt", "feature")
    git(work, "checkout", "-q", "-b", "tmp")
    dangling = commit_file(work, "a.txt", "dangling")
    git(work, "push", "-q", "origin", "main", "feature/x", "tmp", "v1.0")
    git(work, "push", "-q", "origin", "--delete", "tmp")
    git(work, "checkout", "-q", "main")
    return Remote(f"file://{bare}", work, first, main, feature, dangling)


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return make_remote(tmp_path / "remote")


@pytest.fixture
def clones(tmp_path: Path) -> Path:
    return tmp_path / "clones"


def entries(clones: Path) -> list[str]:
    return sorted(p.name for p in clones.iterdir() if p.name != ".locks")


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://github.com/o/r", TargetSpec("git", "https://github.com/o/r")),
        (
            "https://github.com/o/r.git@v1.2",
            TargetSpec("git", "https://github.com/o/r.git", "v1.2"),
        ),
        (
            "http://host:8080/g/o/r@feature/x",
            TargetSpec("git", "http://host:8080/g/o/r", "feature/x"),
        ),
        (
            "https://u:tok@host/o/r.git@main",
            TargetSpec("git", "https://u:tok@host/o/r.git", "main"),
        ),
        (
            "ssh://git@host:2222/o/r.git@abc1234",
            TargetSpec("git", "ssh://git@host:2222/o/r.git", "abc1234"),
        ),
        ("file:///srv/r.git@v1", TargetSpec("git", "file:///srv/r.git", "v1")),
        ("git@github.com:o/r.git", TargetSpec("git", "git@github.com:o/r.git")),
        ("git@github.com:o/r.git@v1.2", TargetSpec("git", "git@github.com:o/r.git", "v1.2")),
        ("owner/repo", TargetSpec("git", "https://github.com/owner/repo.git")),
        ("owner/repo@main", TargetSpec("git", "https://github.com/owner/repo.git", "main")),
        ("owner/digit.git", TargetSpec("git", "https://github.com/owner/digit.git")),
        ("https://huggingface.co/datasets/o/n", TargetSpec("hf_dataset", "o/n")),
        ("https://huggingface.co/datasets/o/n/tree/v2/data", TargetSpec("hf_dataset", "o/n", "v2")),
        (
            "https://www.huggingface.co/datasets/o/n/tree/refs%2Fconvert%2Fparquet",
            TargetSpec("hf_dataset", "o/n", "refs/convert/parquet"),
        ),
        ("hf://datasets/o/n", TargetSpec("hf_dataset", "o/n")),
        ("hf://datasets/o/n@dev", TargetSpec("hf_dataset", "o/n", "dev")),
        ("https://huggingface.co/o/model", TargetSpec("git", "https://huggingface.co/o/model")),
    ],
)
def test_parse_forms(text: str, expected: TargetSpec) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ftp://host/o/r",
        "https://host/o/r@-x",
        "https://host/o/r@a..b",
        "https://github.com/",
        "https://huggingface.co/datasets/only-owner",
        "hf://models/o/n",
        "hf://datasets/o/n/extra",
        "not a target",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(TargetError):
        parse_target(text)


def test_existing_local_dir_wins_over_shorthand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert parse_target("a/b") == TargetSpec("local", "a/b")
    assert parse_target("a/c") == TargetSpec("git", "https://github.com/a/c.git")
    repo = resolve_target("a/b")
    assert (repo.source, repo.path) == ("local", (tmp_path / "a" / "b").resolve())


# ---------------------------------------------------------------- local


def test_local_path_and_tilde(tmp_path: Path) -> None:
    project = Path(os.environ["HOME"]) / "proj"
    project.mkdir()
    repo = resolve_target("~/proj")
    assert repo == targets.TargetRepo(path=project.resolve(), source="local")
    assert resolve_target(project).path == project.resolve()


def test_local_records_own_head_only(remote: Remote) -> None:
    assert resolve_target(remote.work).commit == remote.main
    (remote.work / "sub").mkdir()
    assert resolve_target(remote.work / "sub").commit is None  # not the parent repo's HEAD


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_local_bad_path_named(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x"
    if kind == "file":
        path.write_text("")
    with pytest.raises(TargetError, match=str(path)):
        resolve_target(str(path))


# ---------------------------------------------------------------- git


@pytest.mark.parametrize(
    ("ref", "attr", "content"),
    [
        (None, "main", "two"),
        ("v1.0", "first", "one"),
        ("main", "main", "two"),
        ("feature/x", "feature", "feature"),
        ("FULL", "first", "one"),
        ("SHORT", "first", "one"),
        ("DANGLING", "dangling", "dangling"),
    ],
)
def test_git_refs(remote: Remote, clones: Path, ref: str | None, attr: str, content: str) -> None:
    sha = getattr(remote, attr)
    ref = {"FULL": sha, "SHORT": sha[:10], "DANGLING": sha}.get(ref or "", ref)
    target = remote.url if ref is None else f"{remote.url}@{ref}"
    repo = resolve_target(target, clones_dir=clones)
    assert (repo.source, repo.url, repo.ref, repo.commit) == ("git", remote.url, ref, sha)
    assert (repo.path / "a.txt").read_text() == content
    assert git(repo.path, "rev-parse", "HEAD") == sha
    assert repo.path.parent == clones.resolve()


def test_git_reuses_clone_and_follows_branch(remote: Remote, clones: Path) -> None:
    first = resolve_target(remote.url, clones_dir=clones)
    marker = first.path / ".git" / "fsm-test-marker"
    marker.write_text("x")
    inode = (first.path / ".git").stat().st_ino
    newer = commit_file(remote.work, "a.txt", "three")
    git(remote.work, "push", "-q", "origin", "main")

    tagged = resolve_target(f"{remote.url}@v1.0", clones_dir=clones)
    latest = resolve_target(remote.url, clones_dir=clones)

    assert tagged.path == latest.path == first.path
    assert marker.exists() and (first.path / ".git").stat().st_ino == inode
    assert entries(clones) == [first.path.name]
    assert (tagged.commit, latest.commit) == (remote.first, newer)
    assert (latest.path / "a.txt").read_text() == "three"


def test_git_offline_reuses_without_fetch(remote: Remote, clones: Path) -> None:
    resolve_target(remote.url, clones_dir=clones)
    commit_file(remote.work, "a.txt", "three")
    git(remote.work, "push", "-q", "origin", "main")
    # The remote moved on, but offline means: use the clone as it is.
    assert resolve_target(remote.url, clones_dir=clones, offline=True).commit == remote.main


def test_git_offline_without_clone_fails(clones: Path) -> None:
    with pytest.raises(TargetError, match="offline"):
        resolve_target("git@example.invalid:o/r.git", clones_dir=clones, offline=True)


def test_same_repo_name_different_urls_get_different_dirs(tmp_path: Path, clones: Path) -> None:
    a, b = make_remote(tmp_path / "a"), make_remote(tmp_path / "b")
    repo_a = resolve_target(a.url, clones_dir=clones)
    repo_b = resolve_target(b.url, clones_dir=clones)
    assert repo_a.path != repo_b.path
    assert "proj" in repo_a.path.name and "proj" in repo_b.path.name
    assert (repo_a.commit, repo_b.commit) == (a.main, b.main)


def test_git_refuses_clone_of_other_origin(remote: Remote, clones: Path) -> None:
    repo = resolve_target(remote.url, clones_dir=clones)
    git(repo.path, "remote", "set-url", "origin", "https://example.invalid/other.git")
    with pytest.raises(
        TargetError, match=re.escape("is a clone of https://example.invalid/other.git")
    ):
        resolve_target(remote.url, clones_dir=clones)


def test_git_concurrent_resolves(remote: Remote, clones: Path) -> None:
    results: list[targets.TargetRepo] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(resolve_target(f"{remote.url}@v1.0", clones_dir=clones))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert {(r.path, r.commit) for r in results} == {(results[0].path, remote.first)}
    assert len(results) == 4
    assert entries(clones) == [results[0].path.name]


def test_git_unknown_ref(remote: Remote, clones: Path) -> None:
    with pytest.raises(TargetError, match="nope"):
        resolve_target(f"{remote.url}@nope", clones_dir=clones)


def test_git_missing_remote_leaves_nothing(tmp_path: Path, clones: Path) -> None:
    with pytest.raises(TargetError, match="git clone failed"):
        resolve_target(f"file://{tmp_path}/absent.git", clones_dir=clones)
    assert entries(clones) == []


def test_git_clone_timeout(remote: Remote, clones: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIDER_FSM_GIT_CLONE_TIMEOUT_SECONDS", "0.001")
    with pytest.raises(TargetError, match="timed out"):
        resolve_target(remote.url, clones_dir=clones)
    assert entries(clones) == []


def test_git_bad_timeout_setting(
    remote: Remote, clones: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIDER_FSM_GIT_CLONE_TIMEOUT_SECONDS", "soon")
    with pytest.raises(TargetError, match="AIDER_FSM_GIT_CLONE_TIMEOUT_SECONDS"):
        resolve_target(remote.url, clones_dir=clones)


def test_redact_masks_passwords_in_messages() -> None:
    message = "fatal: unable to access 'https://u:s3cret@host/o/r.git/': refused"
    assert (
        targets._redact(message) == "fatal: unable to access 'https://u:***@host/o/r.git/': refused"
    )
    assert targets._redact("git@github.com:o/r.git") == "git@github.com:o/r.git"


def test_git_errors_hide_password(clones: Path) -> None:
    with pytest.raises(TargetError) as info:
        resolve_target("https://user:s3cret@127.0.0.1:9/o/r.git", clones_dir=clones)
    assert "s3cret" not in str(info.value)


# ---------------------------------------------------------------- Hugging Face

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A hub cache as huggingface_hub lays it out: refs, snapshots linking into blobs."""
    cache = tmp_path / "hub"
    repo = cache / "datasets--owner--qa"
    blobs = repo / "blobs"
    blobs.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    snapshot = repo / "snapshots" / SHA
    for rel, text in {"README.md": "# qa\n", "data/test.jsonl": '{"q": 1}\n'}.items():
        blob = blobs / f"blob{len(rel)}"
        blob.write_text(text)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize(
    "target",
    [
        "https://huggingface.co/datasets/owner/qa",
        f"https://huggingface.co/datasets/owner/qa/tree/{SHA}",
        "hf://datasets/owner/qa@main",
    ],
)
def test_hf_from_local_cache(hub_cache: Path, clones: Path, target: str) -> None:
    repo = resolve_target(target, clones_dir=clones, offline=True)
    assert (repo.source, repo.dataset_id, repo.commit, repo.url) == (
        "hf_dataset",
        "owner/qa",
        SHA,
        target,
    )
    data = repo.path / "data" / "test.jsonl"
    assert data.read_text() == '{"q": 1}\n' and not data.is_symlink()
    manifest = json.loads((repo.path / MANIFEST_NAME).read_text())
    assert manifest["dataset_id"] == "owner/qa" and manifest["commit"] == SHA
    assert manifest["files"] == [
        {"path": "README.md", "bytes": 5},
        {"path": "data/test.jsonl", "bytes": 9},
    ]
    assert repo.path.name.startswith("hf_owner_qa-")


def test_hf_offline_from_env_and_reuse(
    hub_cache: Path, clones: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    first = resolve_target("hf://datasets/owner/qa", clones_dir=clones)
    (first.path / "scaffolded.txt").write_text("kept")
    again = resolve_target("hf://datasets/owner/qa", clones_dir=clones)
    assert again.path == first.path
    assert (again.path / "scaffolded.txt").read_text() == "kept"
    assert entries(clones) == [first.path.name]


def test_hf_missing_dataset_is_target_error(hub_cache: Path, clones: Path) -> None:
    with pytest.raises(TargetError, match="dataset owner/absent download failed") as info:
        resolve_target("hf://datasets/owner/absent", clones_dir=clones, offline=True)
    assert "\n" not in str(info.value)


def test_hf_size_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    targets._check_size("o/n", 512 * 2**20)
    with pytest.raises(TargetError, match="AIDER_FSM_HF_MAX_TOTAL_BYTES"):
        targets._check_size("o/n", 512 * 2**20 + 1)
    monkeypatch.setenv("AIDER_FSM_HF_MAX_TOTAL_BYTES", "100")
    targets._check_size("o/n", 100)
    with pytest.raises(TargetError, match="is 101 bytes"):
        targets._check_size("o/n", 101)
