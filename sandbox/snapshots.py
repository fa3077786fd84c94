"""Snapshot images: a sandbox's state after bootstrap, committed as a local image.

The runner decides *when* a snapshot is valid (a content hash of what decides the
bootstrap, ``runner/session/bootstrap_cache.py``) and which workspace files bootstrap made; this
module stores, finds and prunes them. A snapshot is tagged ``fsm-runner/bootstrap:<key>``.

Last use is a file per key under the cache dir (its mtime), so ``prune`` can remove the
least recently used first: the engine records when an image was made, never when it
was last started from.
"""

from __future__ import annotations

import contextlib
import os
import tarfile
import tempfile
import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import docker.errors

from .archive import spool_chunks
from .base import Sandbox
from .engine import (
    IMAGE_LABEL_CREATED_AT,
    IMAGE_LABEL_KIND,
    LABEL_CREATED_AT,
    LABEL_KIND,
    LABEL_PREFIX,
    blank_session_labels,
    creator_labels,
    engine_errors,
    get_client,
    image_labels,
)
from .errors import SandboxError
from .images import cache_dir, cache_lock

__all__ = [
    "DEFAULT_MAX_SNAPSHOT_BYTES",
    "LABEL_SNAPSHOT_KEY",
    "MAX_SNAPSHOT_ENV",
    "SNAPSHOT_KIND",
    "SNAPSHOT_REPO",
    "PrunedSnapshot",
    "Snapshot",
    "SnapshotTooLarge",
    "commit_snapshot",
    "find_snapshot",
    "image_id",
    "list_snapshots",
    "max_snapshot_bytes",
    "prune_snapshots",
    "snapshot_lock",
]

SNAPSHOT_REPO = "fsm-runner/bootstrap"
SNAPSHOT_KIND = "bootstrap-cache"
LABEL_SNAPSHOT_KEY = f"{LABEL_PREFIX}.bootstrap-key"
LABEL_SNAPSHOT_BASE = f"{LABEL_PREFIX}.base-image"
MAX_SNAPSHOT_ENV = "FSM_RUNNER_MAX_SNAPSHOT_BYTES"
DEFAULT_MAX_SNAPSHOT_BYTES = 4 * 1024**3
"""Bootstrap writes bigger than this are not kept as an image (issue 15 item 4)."""


class SnapshotTooLarge(SandboxError):
    """The bootstrap wrote more than the snapshot cap: no snapshot is saved."""


def max_snapshot_bytes() -> int:
    """``FSM_RUNNER_MAX_SNAPSHOT_BYTES`` (a positive number of bytes), else 4 GiB.

    Raises:
        SandboxError: the variable is set but is not a positive whole number.
    """
    raw = os.environ.get(MAX_SNAPSHOT_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_SNAPSHOT_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise SandboxError(f"{MAX_SNAPSHOT_ENV}={raw!r}: expected a positive number of bytes")
    return value


@dataclass(frozen=True)
class Snapshot:
    """One stored snapshot image."""

    key: str
    tag: str
    image_id: str
    size_bytes: int
    """Bytes this image adds on top of its base image (layers are shared with the base)."""
    last_used: float
    labels: dict[str, str]


@dataclass(frozen=True)
class PrunedSnapshot:
    tag: str
    size_bytes: int
    reason: str


def _tag(key: str) -> str:
    return f"{SNAPSHOT_REPO}:{key}"


def _usage_dir() -> Path:
    path = cache_dir() / "bootstrap-used"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _mark_used(key: str) -> None:
    (_usage_dir() / key).touch()


def image_id(tag: str) -> str:
    """The engine's id of a local image (``sha256:...``)."""
    with engine_errors(f"inspect image {tag}"):
        return str(get_client().images.get(tag).id)


def find_snapshot(key: str) -> str | None:
    """The snapshot tag for ``key`` when it exists (and mark it used), else None."""
    tag = _tag(key)
    try:
        with engine_errors(f"inspect image {tag}"):
            get_client().images.get(tag)
    except SandboxError as exc:
        if isinstance(exc.__cause__, docker.errors.ImageNotFound):
            return None
        raise
    _mark_used(key)
    return tag


@contextmanager
def snapshot_lock(key: str) -> Iterator[None]:
    """Serialise commits of one key across processes: one commits, the others see it."""
    with cache_lock(f"locks/bootstrap-{key}.lock"):
        yield


def commit_snapshot(
    sandbox: Sandbox,
    key: str,
    *,
    base_image_id: str,
    labels: dict[str, str],
    workspace_paths: Collection[str] = (),
) -> str:
    """Commit a Docker sandbox as ``fsm-runner/bootstrap:<key>``; return the image id.

    Two steps, because the workspace is a volume (never part of a commit): the container
    is committed (paused, so no process writes half a file into the image), then the
    ``workspace_paths`` (relative to the workspace) are copied from the sandbox into a
    never-started container of that image, at the workspace path, and that is committed
    as the snapshot. A sandbox opened from it with ``workspace_in_image`` sees those files
    in an image layer: no copy at start.

    The image gets image labels only (``engine.image_labels``): the engine copies the
    container's labels into a commit and cannot drop a key, so its session keys are
    overridden with empty values (issue 15 item 3). Writes bigger than
    ``max_snapshot_bytes()`` (the container's writable layer plus the workspace files) are
    refused before anything is committed.

    Raises:
        SnapshotTooLarge: bootstrap wrote more than the cap; nothing was saved.
    """
    container_id = getattr(sandbox, "container_id", None)
    if not container_id:
        raise SandboxError(f"{type(sandbox).__name__} cannot be snapshotted (Docker only)")
    extra = {LABEL_SNAPSHOT_KEY: key, LABEL_SNAPSHOT_BASE: base_image_id}
    wanted = {**labels, **image_labels(SNAPSHOT_KIND, **extra)}
    cap = max_snapshot_bytes()
    client = get_client()
    with engine_errors("measure the bootstrap's writes"):
        # SizeRw: bytes in the container's writable layer (what a commit would store).
        listed = client.api.containers(all=True, size=True, filters={"id": container_id})
        layer = int((listed[0] if listed else {}).get("SizeRw") or 0)
        container = client.containers.get(container_id)
    _check_cap(layer, 0, cap)
    with tempfile.TemporaryFile(dir=cache_dir()) as delta:
        files = _workspace_delta(container, sandbox.workspace, workspace_paths, delta, cap - layer)
        _check_cap(layer, files, cap)
        delta.seek(0)
        with engine_errors("commit bootstrap snapshot"):
            conf = {"Labels": blank_session_labels(container.labels, wanted)}
            rootfs: Any = container.commit(conf=conf, pause=True)
        try:
            image_id = _bake(client, rootfs, sandbox.workspace, delta, key, wanted)
        except BaseException:
            with contextlib.suppress(docker.errors.DockerException):  # else it dangles
                client.images.remove(rootfs.id)
            raise
    _mark_used(key)
    return image_id


def _check_cap(layer: int, workspace: int, cap: int) -> None:
    if layer + workspace > cap:
        raise SnapshotTooLarge(
            f"snapshot not saved: bootstrap wrote {(layer + workspace) / 1e9:.2f} GB "
            f"(root filesystem {layer / 1e9:.2f} GB, workspace at least {workspace / 1e9:.2f} GB),"
            f" over the {cap / 1e9:.2f} GB cap ({MAX_SNAPSHOT_ENV})"
        )


def _bake(
    client: Any, rootfs: Any, workspace: str, delta: IO[bytes], key: str, wanted: dict[str, str]
) -> str:
    """Copy the workspace files into a never-started container of ``rootfs``; commit it."""
    bake_id = uuid.uuid4().hex[:12]
    with engine_errors("bake the workspace into the snapshot"):
        # Named and labelled like a sandbox's container, so gc can tell it is ours.
        baker = client.containers.create(
            rootfs.id,
            ["true"],
            name=f"fsm-{bake_id}",
            network_disabled=True,
            labels=creator_labels("snapshot-baker", bake_id),
        )
        try:
            baker.put_archive(str(PurePosixPath(workspace).parent), delta)
            image: Any = baker.commit(
                repository=SNAPSHOT_REPO,
                tag=key,
                conf={"Labels": blank_session_labels(baker.labels, wanted)},
            )
        finally:
            baker.remove(force=True)
    return str(image.id)


def _workspace_delta(
    container: Any, workspace: str, paths: Collection[str], out: IO[bytes], limit: int
) -> int:
    """Write a tar of the listed workspace paths (no recursion) to ``out``; return the
    bytes of file data written, stopping once past ``limit``."""
    name = PurePosixPath(workspace).name
    wanted = {f"{name}/{p.strip('/')}" for p in paths if p.strip("/")}
    with engine_errors("read the bootstrap workspace"):
        chunks, _ = container.get_archive(workspace)
        archive = spool_chunks(chunks)
    with (
        archive,
        tarfile.open(fileobj=archive, mode="r|") as src,
        tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as dst,
    ):
        written = 0
        for member in src:
            if member.name.rstrip("/") not in wanted:
                continue
            if member.islnk() and member.linkname.rstrip("/") not in wanted:
                continue  # a hard link to a file left out would point at nothing
            written += member.size if member.isreg() else 0
            if written > limit:
                return written  # over the cap: the caller refuses; no point copying more
            dst.addfile(member, src.extractfile(member) if member.isreg() else None)
    return written


def list_snapshots(label: str | None = None) -> list[Snapshot]:
    """Every snapshot image (tagged ones), most recently used first."""
    client = get_client()
    images: dict[str, Any] = {}
    # Snapshots saved before issue 15 carry the kind under the session key: listed too
    # (by our tag only), so ``images prune`` can remove them.
    for kind_key in (IMAGE_LABEL_KIND, LABEL_KIND):
        filters = [f"{kind_key}={SNAPSHOT_KIND}", *([label] if label else [])]
        with engine_errors("list images"):
            images.update((i.id, i) for i in client.images.list(filters={"label": filters}))
    base_sizes: dict[str, int] = {}
    found = []
    for img in images.values():
        labels = dict(img.labels or {})
        key = labels.get(LABEL_SNAPSHOT_KEY, "")
        base = labels.get(LABEL_SNAPSHOT_BASE, "")
        if base and base not in base_sizes:
            try:
                base_sizes[base] = int(client.images.get(base).attrs.get("Size", 0))
            except docker.errors.DockerException:
                base_sizes[base] = 0
        size = int(img.attrs.get("Size", 0)) - base_sizes.get(base, 0)
        used = _usage_dir() / key
        last_used = used.stat().st_mtime if key and used.exists() else _created(img)
        tag = next((t for t in img.tags if t.startswith(f"{SNAPSHOT_REPO}:")), "")
        if not tag:
            continue  # derived from a snapshot by someone else: it inherits the labels only
        found.append(Snapshot(key, tag, str(img.id), max(size, 0), last_used, labels))
    return sorted(found, key=lambda s: s.last_used, reverse=True)


def _created(img: Any) -> float:
    try:
        labels = img.labels or {}
        return float(labels.get(IMAGE_LABEL_CREATED_AT) or labels.get(LABEL_CREATED_AT) or 0)
    except (TypeError, ValueError):
        return 0.0


def prune_snapshots(
    *,
    keep: int | None = None,
    max_bytes: int | None = None,
    label: str | None = None,
    dry_run: bool = False,
) -> list[PrunedSnapshot]:
    """Remove least recently used snapshots until at most ``keep`` remain and they fit
    in ``max_bytes`` (bytes on top of their base images). Returns what went (or would)."""
    snaps = list_snapshots(label)
    doomed: list[PrunedSnapshot] = []
    kept: list[Snapshot] = []
    for snap in snaps:  # most recently used first
        if keep is not None and len(kept) >= keep:
            doomed.append(PrunedSnapshot(snap.tag, snap.size_bytes, f"beyond --keep {keep}"))
        else:
            kept.append(snap)
    if max_bytes is not None:
        while kept and sum(s.size_bytes for s in kept) > max_bytes:
            snap = kept.pop()  # the least recently used of those left
            doomed.append(PrunedSnapshot(snap.tag, snap.size_bytes, "over --max-gb"))
    if dry_run:
        return doomed
    client = get_client()
    removed = []
    for item in doomed:
        try:
            with engine_errors(f"remove {item.tag}"):
                client.images.remove(item.tag, noprune=False)
        except SandboxError as exc:
            if isinstance(exc.__cause__, docker.errors.APIError):
                # Gone already (another prune), or a running sandbox uses it: kept.
                continue
            raise
        key = item.tag.rsplit(":", 1)[-1]
        (_usage_dir() / key).unlink(missing_ok=True)
        removed.append(item)
    return removed
