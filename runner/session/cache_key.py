"""The bootstrap cache's key: everything that decides what bootstrap produces, hashed.

Whose bootstrap it was counts too (issue 15 item 2: two repositories with the same
``bootstrap.yml`` shared a key, so one repo's bootstrap planted a ``.pth`` hook that
forged the other's score). The key hashes:

- the repository's identity: its absolute path and its HEAD commit (read from ``.git``
  without running git, which would run the repo's own hooks on the host);
- what bootstrap can read: every file the sandbox copy gets (``.git`` included), or,
  when ``bootstrap.yml`` declares ``inputs``, only those files and folders;
- the base image id, ``bootstrap.yml``, every repo file a bootstrap command names, the
  files that commonly pin dependencies (``requirements*.txt``, ``pyproject.toml``, lock
  files, at the repo root and in bootstrap's ``workdir``), the env-file pairs, the cache
  namespace, and ``CACHE_VERSION`` (bumped whenever the runner's bootstrap or the key
  changes).

Apart from the hit/miss/save flow (``bootstrap_cache.py``) because it only reads host
files: no engine, no sandbox.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from runner.contract import BootstrapSpec
from runner.contract.paths import FIXED_OUTPUTS
from sandbox import SandboxSpec
from sandbox.archive import selected_files

CACHE_VERSION = "2"
PIN_PATTERNS = (
    "requirements*.txt",
    "constraints*.txt",
    "pyproject.toml",
    "setup.py",
    "setup.cfg",
    "Pipfile",
    "Pipfile.lock",
    "poetry.lock",
    "uv.lock",
    "pdm.lock",
    "environment.yml",
    "package.json",
    "package-lock.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    "Cargo.lock",
    "go.sum",
    "Gemfile.lock",
)
"""Files that commonly pin what bootstrap installs (root and bootstrap's workdir)."""
_MAX_HASHED_BYTES = 64 * 1024 * 1024
COPY_EXCLUDE = (*SandboxSpec.exclude, *FIXED_OUTPUTS)
"""What the session leaves out of the workspace copy (``sandbox_open.py``): the rest is
what bootstrap can read, so the rest is hashed."""
_SHA_RE = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        remaining = _MAX_HASHED_BYTES
        while remaining > 0 and (chunk := fh.read(min(1 << 20, remaining))):
            digest.update(chunk)
            remaining -= len(chunk)
    # Beyond the cap, size and mtime stand in: a multi-GB data file is not re-read per run.
    if remaining <= 0:
        st = path.stat()
        digest.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except (OSError, ValueError):
        return False
    return True


def _named_files(root: Path, workdir: Path, cmds: Sequence[str]) -> set[Path]:
    """Repo files a command names (``-r reqs/dev.txt``, ``--requirement=x``, ``bash s.sh``)."""
    named: set[Path] = set()
    for cmd in cmds:
        try:
            words = shlex.split(cmd, comments=True)
        except ValueError:
            words = cmd.split()
        for word in words:
            for candidate in (word, word.partition("=")[2]):
                if not candidate or candidate.startswith("-") or "\0" in candidate:
                    continue
                for base in (workdir, root):
                    path = base / candidate
                    if path.is_file() and _inside(root, path):
                        named.add(path.resolve())
    return named


def _entry_digest(path: Path) -> str:
    """A file's content hash, or a link's target (never followed)."""
    if path.is_symlink():
        return hashlib.sha256(f"symlink:{os.readlink(path)}".encode()).hexdigest()
    return _sha256_file(path)


def tree_digest(root: Path, exclude: Sequence[str] = COPY_EXCLUDE) -> tuple[str, int]:
    """sha256 over every file the sandbox copy gets (path, executable bit, content)."""
    digest, count = hashlib.sha256(), 0
    for rel in selected_files(root, exclude):
        path = root / rel
        mode = "x" if not path.is_symlink() and os.access(path, os.X_OK) else "-"
        digest.update(f"{rel}\0{mode}\0{_entry_digest(path)}\n".encode())
        count += 1
    return digest.hexdigest(), count


def _declared_files(root: Path, patterns: Sequence[str]) -> set[Path]:
    """Files the contract's ``inputs`` name: paths or globs; a folder stands for its files."""
    found: set[Path] = set()
    for pattern in patterns:
        for match in root.glob(pattern):
            if match.is_dir() and not match.is_symlink():
                found.update(p for p in match.rglob("*") if p.is_file() or p.is_symlink())
            elif match.is_file() or match.is_symlink():
                found.add(match)
    return {p for p in found if _inside(root, p.parent)}


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def head_commit(root: Path) -> str:
    """HEAD's commit from the repo's own ``.git`` files ("" without one).

    Read, not asked of git: git on the host would honour the target's own config
    (``core.fsmonitor`` runs a command). Falls back to HEAD's text when a ref cannot be
    resolved, so a detached or odd checkout still keys on something.
    """
    git = root / ".git"
    if git.is_file():  # a worktree or submodule: "gitdir: <path>"
        git = (root / _read(git).removeprefix("gitdir:").strip()).resolve()
    head = _read(git / "HEAD")
    if not head.startswith("ref:"):
        return head
    ref = head.removeprefix("ref:").strip()
    common = git / _read(git / "commondir") if _read(git / "commondir") else git
    for base in (git, common):
        if _SHA_RE.fullmatch(sha := _read(base / ref)):
            return sha
    for line in _read(common / "packed-refs").splitlines():
        sha, _, name = line.partition(" ")
        if name.strip() == ref and _SHA_RE.fullmatch(sha):
            return sha
    return head


def cache_key(
    repo_root: Path,
    spec: BootstrapSpec,
    *,
    bootstrap_text: bytes,
    base_image_id: str,
    extra_env: Mapping[str, str],
) -> tuple[str, dict[str, str]]:
    """The snapshot key and the inputs it was made of (name -> hash, or the path/commit)."""
    root = repo_root.resolve()
    workdir = root / spec.workdir if spec.workdir else root
    files = set(_named_files(root, workdir, spec.cmds))
    for base in {root, workdir.resolve()}:
        for pattern in PIN_PATTERNS:
            files.update(p.resolve() for p in base.glob(pattern) if p.is_file())
    inputs = {
        "runner:cache_version": CACHE_VERSION,
        "image:base": base_image_id,
        # Whose bootstrap it is: another checkout never starts from this one's snapshot.
        "repo:path": str(root),
        "repo:commit": head_commit(root),
        ".aider_fsm/bootstrap.yml": hashlib.sha256(bootstrap_text).hexdigest(),
        "env_file": hashlib.sha256(
            "\0".join(f"{k}={v}" for k, v in sorted(extra_env.items())).encode()
        ).hexdigest(),
    }
    if spec.inputs is None:
        # Bootstrap may read any file it was given: all of them decide what it produced.
        tree, count = tree_digest(root)
        inputs["repo:tree"] = f"{tree} ({count} files)"
    else:
        declared = _declared_files(root, spec.inputs)
        inputs["repo:declared_inputs"] = hashlib.sha256("\0".join(spec.inputs).encode()).hexdigest()
        for path in sorted(declared):
            inputs[f"file:{path.relative_to(root).as_posix()}"] = _entry_digest(path)
    for path in sorted(files):
        if _inside(root, path):
            inputs[f"file:{path.relative_to(root).as_posix()}"] = _sha256_file(path)
    if namespace := cache_namespace():  # keys of one namespace never meet another's
        inputs["runner:namespace"] = namespace
    blob = "\n".join(f"{name}\0{value}" for name, value in sorted(inputs.items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:24], inputs


NAMESPACE_VAR = "FSM_RUNNER_CACHE_NAMESPACE"
"""Set: snapshot keys (and labels) are of this namespace only; the test suite sets one per
session, so what other processes on the engine cached never answers it (issue 16.5)."""
NAMESPACE_LABEL = "fsm-runner.cache-namespace"


def cache_namespace() -> str:
    return os.environ.get(NAMESPACE_VAR, "").strip()
