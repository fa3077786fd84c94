"""The scope rule: only the contract comes back from the agent's sandbox.

After the agent ran, the workspace inside the sandbox is compared with the host repo
(file manifests: kind, size, sha256). Changes to ``pipeline.yml`` (``pipeline_rel``)
and ``.aider_fsm/**`` are pulled with the sandbox's safe pull and written into the host
repo without following any link; every other change is discarded with the sandbox and
listed, with the attempt's diff, for provenance. Never taken back even inside the
scope: ``.aider_fsm/artifacts/`` (the runner's), the stage outputs (``metrics.json``,
``rollout.json``, ...: an agent writing them would be faking results), links and
special files, and oversized files.

What the listing is worth: it is computed inside the sandbox, where the agent was
root, so a hostile agent can falsify it. What it cannot falsify is what is taken back:
that is decided here, on the host, from the pulled files.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import secrets
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from runner.agent import _manifest
from runner.contract.paths import FIXED_OUTPUTS
from runner.errors import AgentError
from sandbox import Sandbox, SandboxError, UnsafeArchive
from sandbox.copyout import replace_file_beneath
from sandbox.hostfs import read_beneath

AIDER_DIR = ".aider_fsm"
ARTIFACTS = f"{AIDER_DIR}/artifacts"
MAX_FILE_BYTES = 1024 * 1024
"""Largest single contract file taken back."""
MAX_SCOPE_BYTES = 16 * 1024 * 1024
"""Largest total of contract changes taken back in one attempt."""
MAX_PULL_ENTRIES = 10_000
"""Entries one pull of the contract out of the agent's sandbox may bring to the host."""
MAX_DIFF_FILE_BYTES = 256 * 1024
MAX_DIFF_CHARS = 1_000_000
OUTSIDE_PRUNE = ("/proc", "/sys", "/dev")
# What OpenCode itself writes outside its HOME while running (its scratch dir, and the
# native module its Bun runtime extracts as /tmp/.<hex>-<hex>.so); not the agent's doing.
_RUNTIME_NOISE = re.compile(r"^/tmp/(?:opencode/.*|\.[0-9a-f]+-[0-9a-f]+\.so)$")

Manifest = dict[str, list[Any]]
Status = Literal["created", "modified", "deleted"]


@dataclass(frozen=True)
class FileChange:
    """One path that differs between the host repo and the agent's workspace."""

    path: str
    status: Status
    before: dict[str, Any] | None
    after: dict[str, Any] | None


@dataclass
class ScopeReport:
    """What came back, what was discarded, and why."""

    taken: list[FileChange] = field(default_factory=list)
    discarded: list[FileChange] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)
    """In-scope changes not taken back: ``{path, reason}``."""
    outside_workspace: list[str] = field(default_factory=list)
    """Files changed elsewhere in the sandbox (gone with it)."""
    diff: str = ""

    @property
    def changed_files(self) -> list[str]:
        return [c.path for c in self.taken]

    @property
    def discarded_paths(self) -> list[str]:
        return [c.path for c in self.discarded] + [r["path"] for r in self.refused]

    def to_json(self) -> dict[str, Any]:
        return {
            "taken": [asdict(c) for c in self.taken],
            "discarded": [asdict(c) for c in self.discarded],
            "refused": self.refused,
            "outside_workspace": self.outside_workspace,
            "summary": {
                "taken": len(self.taken),
                "discarded": len(self.discarded) + len(self.refused),
                "outside_workspace": len(self.outside_workspace),
            },
        }


def in_scope(rel: str, pipeline_rel: str = "pipeline.yml") -> bool:
    """True for the contract's own files: ``pipeline_rel`` and ``.aider_fsm/**`` (minus outputs)."""
    if rel == pipeline_rel:
        return True
    if not rel.startswith(AIDER_DIR + "/"):
        return False
    return not (rel == ARTIFACTS or rel.startswith(ARTIFACTS + "/") or rel in FIXED_OUTPUTS)


def host_manifest(repo_root: Path, exclude: tuple[str, ...]) -> Manifest:
    return _manifest.tree(str(repo_root), list(exclude))


def _meta(entry: list[Any] | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    kind, size, digest, mode = entry
    return {"kind": kind, "size": size, "sha256": digest, "mode": oct(int(mode))}


def compare(before: Manifest, after: Manifest) -> list[FileChange]:
    changes: list[FileChange] = []
    for rel in sorted(set(before) | set(after)):
        old, new = before.get(rel), after.get(rel)
        if old == new:
            continue
        # A mode-only change counts too: a stage script made executable is an edit.
        status: Status = "created" if old is None else "deleted" if new is None else "modified"
        changes.append(FileChange(rel, status, _meta(old), _meta(new)))
    return changes


def take_back(
    sandbox: Sandbox,
    repo_root: Path,
    *,
    before: Manifest,
    after: Manifest,
    outside: list[str],
    pipeline_rel: str = "pipeline.yml",
) -> ScopeReport:
    """Write the in-scope changes into ``repo_root``; list the rest.

    Raises:
        AgentError: the sandbox failed while pulling.
    """
    report = ScopeReport(outside_workspace=[p for p in outside if not _RUNTIME_NOISE.match(p)])
    wanted: list[FileChange] = []
    for change in compare(before, after):
        if not in_scope(change.path, pipeline_rel):
            report.discarded.append(change)
            continue
        reason = _refusal(change)
        if reason:
            report.refused.append({"path": change.path, "reason": reason})
        else:
            wanted.append(change)
    total = sum(int((c.after or {}).get("size", 0)) for c in wanted)
    if total > MAX_SCOPE_BYTES:
        report.refused += [
            {"path": c.path, "reason": f"contract changes total {total} bytes"} for c in wanted
        ]
        wanted = []
    with tempfile.TemporaryDirectory(prefix="fsm-agent-pull-") as tmp:
        pulled = _pull(sandbox, Path(tmp), wanted, pipeline_rel, report)
        old = {c.path: _host_bytes(repo_root, c) for c in wanted}
        for change in wanted:
            if change.path not in pulled and change.status != "deleted":
                continue
            _apply(repo_root, change, pulled.get(change.path))
            report.taken.append(change)
        report.diff = _diff(repo_root, sandbox, report, old, pulled)
    return report


def _host_bytes(repo_root: Path, change: FileChange) -> bytes | None:
    """The host's version of a changed file, for the diff (None: none, or not diffable)."""
    if change.before is None or change.before["kind"] != "file":
        return None
    if int(change.before["size"]) > MAX_DIFF_FILE_BYTES:
        return None
    path = repo_root / change.path
    if path.is_symlink() or not path.is_file():
        return None
    return path.read_bytes()


def _refusal(change: FileChange) -> str | None:
    after = change.after
    if after is None:
        return None
    if after["kind"] != "file":
        return f"{after['kind']} (only regular files are taken back)"
    if int(after["size"]) > MAX_FILE_BYTES:
        return f"file of {after['size']} bytes (limit {MAX_FILE_BYTES})"
    return None


def _pull(
    sandbox: Sandbox,
    tmp: Path,
    wanted: list[FileChange],
    pipeline_rel: str,
    report: ScopeReport,
) -> dict[str, tuple[bytes, bool]]:
    """Pull the contract out safely; ``{rel: (content, executable)}`` for the wanted files."""
    needed = [c for c in wanted if c.status != "deleted"]
    if not needed:
        return {}
    sources = {AIDER_DIR} if any(c.path.startswith(AIDER_DIR + "/") for c in needed) else set()
    if any(c.path == pipeline_rel for c in needed):
        sources.add(pipeline_rel)
    out: dict[str, tuple[bytes, bool]] = {}
    for src in sorted(sources):
        dest = tmp / secrets.token_hex(4)
        try:
            # Capped like the scope itself: a hostile agent cannot fill the host's /tmp.
            sandbox.pull(
                src,
                dest,
                max_file_bytes=MAX_FILE_BYTES,
                max_total_bytes=MAX_SCOPE_BYTES,
                max_entries=MAX_PULL_ENTRIES,
            )
        except UnsafeArchive as exc:
            report.refused += [
                {"path": c.path, "reason": f"unsafe archive: {exc}"}
                for c in needed
                if c.path == src or c.path.startswith(src + "/")
            ]
            continue
        except FileNotFoundError:
            continue
        except SandboxError as exc:
            raise AgentError(f"pulling {src} from the agent sandbox failed: {exc}") from exc
        for change in needed:
            rel = change.path
            local = PurePosixPath(rel).name if rel == src else None
            if rel.startswith(src + "/"):
                local = rel[len(src) + 1 :]
            if local is None:
                continue
            try:  # every component O_NOFOLLOW: the pull made no links, and none is followed
                data = read_beneath(dest, local, MAX_FILE_BYTES + 1)
            except FileNotFoundError:
                continue
            if hashlib.sha256(data).hexdigest() != (change.after or {}).get("sha256"):
                report.refused.append({"path": rel, "reason": "changed while being pulled"})
                continue
            out[rel] = (data, bool(int(str((change.after or {})["mode"]), 8) & 0o111))
    return out


def _host_path(repo_root: Path, rel: str, *, create: bool) -> Path:
    """``repo_root/rel`` with every parent a real directory inside the repo (no links).

    Raises:
        AgentError: a parent is a link or not a directory.
    """
    parts = PurePosixPath(rel).parts
    if not parts or ".." in parts or PurePosixPath(rel).is_absolute():
        raise AgentError(f"refusing to write {rel!r} into the repo")
    current = repo_root
    for part in parts[:-1]:
        current = current / part
        if current.is_symlink():
            raise AgentError(f"refusing to write {rel}: {current} is a link in the host repo")
        if not current.exists():
            if not create:
                break
            current.mkdir()
        elif not current.is_dir():
            raise AgentError(f"refusing to write {rel}: {current} is not a directory")
    return repo_root.joinpath(*parts)


def _apply(repo_root: Path, change: FileChange, content: tuple[bytes, bool] | None) -> None:
    if content is None:
        remove_file(repo_root, change.path)
    else:
        write_file(repo_root, change.path, *content)


def remove_file(repo_root: Path, rel: str) -> None:
    """Delete ``repo_root/rel`` (a link is removed, never followed).

    Raises:
        AgentError: a parent directory is a link.
    """
    target = _host_path(repo_root, rel, create=False)
    if target.is_symlink() or target.is_file():
        target.unlink()


def write_file(repo_root: Path, rel: str, data: bytes, executable: bool = False) -> None:
    """Write ``repo_root/rel`` atomically, creating real parent directories.

    Raises:
        AgentError: a parent is a link or not a directory, or ``rel`` leaves the repo.
    """
    _host_path(repo_root, rel, create=False)  # a readable refusal for a planted link
    # Parents opened O_NOFOLLOW from the repo, a new temp file renamed over the name: a
    # link planted at the target or on its way is replaced or refused, never followed.
    try:
        replace_file_beneath(repo_root, rel, data, 0o755 if executable else 0o644)
    except (OSError, ValueError) as exc:
        raise AgentError(f"cannot write {rel} into the repo: {exc}") from exc


def _diffable(meta: dict[str, Any] | None) -> bool:
    return meta is not None and meta["kind"] == "file" and int(meta["size"]) <= MAX_DIFF_FILE_BYTES


def _text(data: bytes | None) -> list[str] | None:
    if data is None:
        return None
    if len(data) > MAX_DIFF_FILE_BYTES or b"\0" in data:
        return None
    return data.decode("utf-8", errors="replace").splitlines(keepends=True)


def _diff(
    repo_root: Path,
    sandbox: Sandbox,
    report: ScopeReport,
    old_taken: dict[str, bytes | None],
    pulled: dict[str, tuple[bytes, bool]],
) -> str:
    """A unified diff of every workspace change (taken and discarded), text files only."""
    chunks: list[str] = []
    size = 0
    for change in report.taken + report.discarded:
        rel = change.path
        old = old_taken[rel] if rel in old_taken else _host_bytes(repo_root, change)
        new: bytes | None = None
        if rel in pulled:
            new = pulled[rel][0]
        elif _diffable(change.after):
            try:
                new = sandbox.read_file(rel, limit=MAX_DIFF_FILE_BYTES)
            except (FileNotFoundError, SandboxError):
                new = None
        a = _text(old) if change.before is not None else []
        b = _text(new) if change.after is not None else []
        if (
            a is None
            or b is None
            or (change.before and old is None)
            or (change.after and new is None)
        ):
            piece = f"Binary, large or unreadable file {rel} {change.status}\n"
        else:
            piece = "".join(
                difflib.unified_diff(
                    a,
                    b,
                    fromfile=f"a/{rel}" if change.before else "/dev/null",
                    tofile=f"b/{rel}" if change.after else "/dev/null",
                )
            )
        if piece and not piece.endswith("\n"):
            piece += "\n\\ No newline at end of file\n"
        size += len(piece)
        if size > MAX_DIFF_CHARS:
            chunks.append(f"[diff truncated at {MAX_DIFF_CHARS} chars]\n")
            break
        chunks.append(piece)
    return "".join(chunks)
