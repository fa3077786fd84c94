"""The bootstrap image cache: skip ``bootstrap.yml`` when nothing that decides it changed.

After a successful bootstrap, the sandbox is committed as ``fsm-runner/bootstrap:<key>``
(``sandbox/snapshots.py``). The key hashes everything that decides what bootstrap
produces, and whose bootstrap it was (issue 15 item 2: two repositories with the same
``bootstrap.yml`` shared a key, so one repo's bootstrap planted a ``.pth`` hook that
forged the other's score):

- the repository's identity: its absolute path and its HEAD commit (read from ``.git``
  without running git, which would run the repo's own hooks on the host);
- what bootstrap can read: every file the sandbox copy gets (``.git`` included), or,
  when ``bootstrap.yml`` declares ``inputs``, only those files and folders;
- the base image id, ``bootstrap.yml``, every repo file a bootstrap command names, the
  files that commonly pin dependencies (``requirements*.txt``, ``pyproject.toml``, lock
  files, at the repo root and in bootstrap's ``workdir``), the env-file pairs, and
  ``CACHE_VERSION`` (bumped whenever the runner's bootstrap or the key changes).

A later session with the same key starts from that image and skips bootstrap.

What bootstrap wrote into the workspace (a venv, downloaded data) is not in a plain
commit (the workspace is a volume), so the files whose change time is after bootstrap
started are baked into the snapshot at the workspace path; a hit opens the sandbox with
``workspace_in_image`` and copies the fresh repo on top: no file of the snapshot is
copied at start. Files bootstrap *deleted* are not replayed.

Modes (``setup(cache=...)``, ``fsm-runner run --cache``): ``on`` reads and writes,
``read`` only starts from existing snapshots, ``off`` neither. A bootstrap shorter than
``FSM_RUNNER_BOOTSTRAP_CACHE_MIN_SECONDS`` (default 2 s) is not committed: the commit
would cost more than it saves.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runner.contract import BootstrapSpec
from runner.contract.paths import FIXED_OUTPUTS
from sandbox import Sandbox, SandboxError, SandboxSpec
from sandbox.archive import selected_files
from sandbox.images import ensure_image
from sandbox.snapshots import commit_snapshot, find_snapshot, image_id, snapshot_lock

__all__ = [
    "CACHE_VERSION",
    "CacheMode",
    "CachePlan",
    "bootstrap_start_shell",
    "cache_key",
    "changed_paths",
    "commit_min_seconds",
    "head_commit",
    "plan_cache",
    "save_snapshot",
    "tree_digest",
]

CacheMode = Literal["off", "read", "on"]
CACHE_VERSION = "2"
_MARKER_DIR = "/var/cache/fsm-runner"
_MARKER = f"{_MARKER_DIR}/bootstrap-started"
_MAX_LISTING_BYTES = 64 * 1024 * 1024
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


@dataclass
class CachePlan:
    """This session's cache decision, recorded in ``sandbox.json`` and ``events.jsonl``."""

    mode: CacheMode
    key: str = ""
    base_image: str = ""
    base_image_id: str = ""
    hit_image: str | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    """name -> sha256 of every hashed input, so a miss can be explained."""
    reason: str = ""
    saved_image_id: str | None = None

    @property
    def hit(self) -> bool:
        return self.hit_image is not None

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "key": self.key,
            "hit": self.hit,
            "image": self.hit_image,
            "base_image": self.base_image,
            "base_image_id": self.base_image_id,
            "saved_image_id": self.saved_image_id,
            "reason": self.reason,
        }


def commit_min_seconds() -> float:
    raw = os.environ.get("FSM_RUNNER_BOOTSTRAP_CACHE_MIN_SECONDS", "")
    try:
        return max(0.0, float(raw)) if raw else 2.0
    except ValueError:
        return 2.0


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


def bootstrap_start_shell() -> str:
    """Shell that stamps the time bootstrap starts; files changed after it form the delta.

    It runs in the exec of bootstrap's first command, before it (an exec of its own cost
    ~50 ms, issue 17). A retry keeps the first stamp, so the delta still holds what the
    failed try changed. The short sleep puts bootstrap's first write strictly after the
    stamp even with a coarse (jiffy) file-time clock. If it cannot stamp, the command
    still runs and ``changed_paths`` fails: the snapshot is then not saved, with why.
    """
    return (
        f"[ -e {_MARKER} ] || "
        f"{{ mkdir -p {shlex.quote(_MARKER_DIR)} && touch {_MARKER} && sleep 0.02; }}"
    )


def changed_paths(sb: Sandbox, exclude: Sequence[str]) -> list[str]:
    """Workspace paths (relative) that bootstrap created or changed.

    ``-cnewer`` compares change times, which no command can set back (``touch -d``,
    ``tar -x`` and ``pip`` can all set modification times in the past).
    """
    prunes = " -o ".join(f"-path ./{shlex.quote(p)}" for p in exclude)
    script = (
        f"cd {shlex.quote(sb.workspace)} && "
        f"find . -mindepth 1 \\( {prunes} \\) -prune -o -cnewer {_MARKER} -print0 && "
        f"rm -f {_MARKER}"
    )
    res = sb.exec(script, timeout=600, output_limit=_MAX_LISTING_BYTES)
    if not res.ok or res.truncated:
        raise OSError(f"could not list what bootstrap changed: {res.stderr.strip()[:300]}")
    return [p.removeprefix("./") for p in res.stdout.split("\0") if p.startswith("./")]


def plan_cache(
    mode: CacheMode,
    *,
    repo_root: Path,
    spec: BootstrapSpec | None,
    backend: str,
    workspace_mode: str,
    image: str | None,
    extra_env: Mapping[str, str],
    progress: Callable[[str], None] | None = None,
) -> CachePlan:
    """Decide, before the sandbox opens, whether it starts from a snapshot.

    Raises:
        SandboxError: the engine failed while resolving the base image or the snapshot.
    """
    plan = CachePlan(mode=mode)
    if mode == "off":
        plan.reason = "cache off"
    elif backend != "docker":
        plan.reason = f"the {backend} backend has no images to snapshot"
    elif workspace_mode != "copy":
        plan.reason = "bind-mounted workspace: bootstrap writes the host checkout directly"
    elif spec is None or not spec.cmds:
        plan.reason = "no bootstrap commands"
    if plan.reason:
        return plan
    assert spec is not None
    plan.base_image = ensure_image(image, progress=progress)
    plan.base_image_id = image_id(plan.base_image)
    bootstrap_path = repo_root / ".aider_fsm" / "bootstrap.yml"
    plan.key, plan.inputs = cache_key(
        repo_root,
        spec,
        bootstrap_text=bootstrap_path.read_bytes() if bootstrap_path.is_file() else b"",
        base_image_id=plan.base_image_id,
        extra_env=extra_env,
    )
    plan.hit_image = find_snapshot(plan.key)
    if not plan.hit and mode == "read":
        plan.reason = "miss; cache=read never writes"
    return plan


def save_snapshot(
    plan: CachePlan,
    sb: Sandbox,
    *,
    bootstrap_seconds: float,
    exclude: Sequence[str],
    labels: Mapping[str, str],
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """After a successful bootstrap on a miss: pack the workspace delta and commit.

    Returns what to record (``saved`` or ``skipped`` with a reason). Never raises for a
    cache problem: a failed commit costs the next session time, not this one its run.
    """
    if plan.mode != "on" or plan.hit or not plan.key:
        return {"saved": False, "reason": plan.reason or "nothing to save"}
    floor = commit_min_seconds()
    if bootstrap_seconds < floor:
        plan.reason = f"bootstrap took {bootstrap_seconds:.2f} s < {floor:g} s: not worth a commit"
        return {"saved": False, "reason": plan.reason}
    if progress:  # the commit (and a wait for another session's) takes seconds
        progress(f"bootstrap: saving snapshot {plan.key[:12]}")
    start = time.monotonic()
    try:
        with snapshot_lock(plan.key):
            if find_snapshot(plan.key):
                plan.reason = "another session saved this key first"
                return {"saved": False, "reason": plan.reason}
            paths = changed_paths(sb, exclude)
            plan.saved_image_id = commit_snapshot(
                sb,
                plan.key,
                base_image_id=plan.base_image_id,
                labels=dict(labels),
                workspace_paths=paths,
            )
    except (OSError, SandboxError) as exc:
        plan.reason = f"snapshot failed: {exc}"
        return {"saved": False, "reason": plan.reason}
    return {
        "saved": True,
        "image_id": plan.saved_image_id,
        "workspace_paths": len(paths),
        "commit_s": round(time.monotonic() - start, 3),
    }
