"""The bootstrap cache key (issue 15 item 2), on host files only: whose repository it is,
which commit, and what bootstrap could read all change it; declared ``inputs`` narrow
what is read, never whose it is."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from runner.contract import BootstrapSpec, load_bootstrap
from runner.errors import ContractError
from runner.session.bootstrap_cache import cache_key, head_commit

BOOT = b"version: 1\ncmds: [python3 -m prepare]\n"


def _key(repo: Path, spec: BootstrapSpec | None = None) -> tuple[str, dict[str, str]]:
    spec = spec or BootstrapSpec(cmds=("python3 -m prepare",))
    return cache_key(repo, spec, bootstrap_text=BOOT, base_image_id="sha256:x", extra_env={})


def _repo(root: Path) -> Path:
    (root / ".aider_fsm").mkdir(parents=True)
    (root / ".aider_fsm" / "bootstrap.yml").write_bytes(BOOT)
    (root / "prepare.py").write_text("print('ok')\n")
    (root / "requirements.txt").write_text("six\n")
    return root


def _git(repo: Path, *args: str) -> str:
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    out = subprocess.run(["git", "-C", str(repo), *ident, *args], check=True, capture_output=True)
    return out.stdout.decode().strip()


def test_same_files_in_another_checkout_is_another_key(tmp_path: Path) -> None:
    a = _repo(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    (key_a, inputs_a), (key_b, inputs_b) = _key(a), _key(b)
    assert inputs_a["repo:tree"] == inputs_b["repo:tree"]  # byte-identical content
    assert key_a != key_b
    assert inputs_a["repo:path"] == str(a.resolve())


def test_any_file_bootstrap_could_read_is_in_the_key(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo")
    before, _ = _key(repo)
    (repo / "prepare.py").write_text("print('other code')\n")  # named by no command
    assert _key(repo)[0] != before
    # Outputs and run dirs are never copied in, so they cannot change it.
    edited, _ = _key(repo)
    (repo / ".aider_fsm" / "metrics.json").write_text("{}")
    (repo / ".aider_fsm" / "artifacts" / "r1").mkdir(parents=True)
    (repo / ".aider_fsm" / "artifacts" / "r1" / "x.txt").write_text("x")
    assert _key(repo)[0] == edited


def test_declared_inputs_narrow_the_files_but_not_the_identity(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo")
    spec = BootstrapSpec(cmds=("python3 -m prepare",), inputs=("requirements.txt", "src"))
    (repo / "src").mkdir()
    (repo / "src" / "lib.py").write_text("X = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "one")
    key, inputs = _key(repo, spec)
    assert "repo:tree" not in inputs and "file:src/lib.py" in inputs
    (repo / "prepare.py").write_text("print('edited, not an input')\n")
    assert _key(repo, spec)[0] == key
    (repo / "src" / "lib.py").write_text("X = 2\n")
    assert _key(repo, spec)[0] != key
    (repo / "src" / "lib.py").write_text("X = 1\n")
    assert _key(repo, spec)[0] == key
    _git(repo, "commit", "-q", "-am", "two")  # same declared inputs, another commit
    assert _key(repo, spec)[0] != key
    other = tmp_path / "other"
    shutil.copytree(repo, other)
    assert _key(other, spec)[0] != _key(repo, spec)[0]


def test_head_commit_is_read_without_git(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo")
    assert head_commit(repo) == ""
    _git(repo, "init", "-q")
    _git(repo, "commit", "-q", "--allow-empty", "-m", "one")
    sha = _git(repo, "rev-parse", "HEAD")
    assert head_commit(repo) == sha
    _git(repo, "pack-refs", "--all")
    assert head_commit(repo) == sha
    worktree = tmp_path / "wt"
    _git(repo, "worktree", "add", "-q", "-b", "side", str(worktree))
    assert (worktree / ".git").is_file() and head_commit(worktree) == sha


def test_inputs_load_from_bootstrap_yml_and_stay_inside(tmp_path: Path) -> None:
    path = tmp_path / "bootstrap.yml"
    path.write_text("version: 1\ncmds: [make]\ninputs: [Makefile, 'src/**/*.py']\n")
    spec = load_bootstrap(path)
    assert spec is not None and spec.inputs == ("Makefile", "src/**/*.py")
    path.write_text("version: 1\ncmds: [make]\ninputs:\n  - Makefile\n  - ../../etc/passwd\n")
    with pytest.raises(ContractError) as err:
        load_bootstrap(path)
    assert err.value.line == 5 and "inputs" in str(err.value), str(err.value)


def test_a_glob_with_a_partial_double_star_is_a_contract_error() -> None:
    with pytest.raises(ValueError, match="whole path component"):
        BootstrapSpec(cmds=("make",), inputs=("src/a**b",))
