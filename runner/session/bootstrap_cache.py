"""The bootstrap image cache: skip ``bootstrap.yml`` when nothing that decides it changed.

After a successful bootstrap, the sandbox is committed as ``fsm-runner/bootstrap:<key>``
(``sandbox/snapshots.py``). The key (``cache_key.py``) hashes everything that decides
what bootstrap produces, and whose bootstrap it was. A later session with the same key
starts from that image and skips bootstrap.

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

import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runner.contract import BootstrapSpec
from runner.session.cache_key import (
    CACHE_VERSION,
    NAMESPACE_LABEL,
    NAMESPACE_VAR,
    cache_key,
    cache_namespace,
    head_commit,
    tree_digest,
)
from sandbox import Sandbox, SandboxError
from sandbox.images import ensure_image
from sandbox.snapshots import commit_snapshot, find_snapshot, image_id, snapshot_lock

__all__ = [
    "CACHE_VERSION",
    "NAMESPACE_LABEL",
    "NAMESPACE_VAR",
    "CacheMode",
    "CachePlan",
    "bootstrap_start_shell",
    "cache_key",
    "cache_namespace",
    "changed_paths",
    "commit_min_seconds",
    "head_commit",
    "plan_cache",
    "save_snapshot",
    "tree_digest",
]

CacheMode = Literal["off", "read", "on"]
_MARKER_DIR = "/var/cache/fsm-runner"
_MARKER = f"{_MARKER_DIR}/bootstrap-started"
_MAX_LISTING_BYTES = 64 * 1024 * 1024


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
