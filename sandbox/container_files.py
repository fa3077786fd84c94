"""Files into and out of a sandbox container, without ever following a link out.

Two paths, one behaviour. When the workspace is a volume we filled from the host, its
mountpoint is read directly (``hostfs``: every component opened ``O_NOFOLLOW`` relative
to its parent), ~50 ms cheaper per call than the engine; anything else goes through the
engine's archive API (links come back as links and are checked before extraction).
Split out of ``docker.py``, which keeps the container's life and its processes.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

import docker.errors

from . import hostfs
from .archive import ChunkStream, extract_single, open_single, pack_path, safe_extract
from .copyout import OMITTED_SUFFIX, CopyLimits, copy_single
from .engine import engine_errors
from .errors import SandboxError, UnsafeArchive


class ContainerFiles:
    """Reads, streams, pushes and pulls absolute paths of one container."""

    def __init__(self, container: Any, workspace: str, volume_path: Path | None) -> None:
        self._container = container
        self._workspace = workspace
        self._volume_path = volume_path
        """Host mountpoint of the workspace volume (None: archive API only)."""

    def _in_volume(self, full: str) -> str | None:
        """``full`` relative to the workspace when it lies in the host-visible volume."""
        if self._volume_path is None:
            return None
        try:
            return str(PurePosixPath(full).relative_to(self._workspace))
        except ValueError:
            return None

    def read_file(self, full: str, limit: int) -> bytes:
        """Up to ``limit`` bytes of a regular file (FileNotFoundError otherwise)."""
        rel = self._in_volume(full)
        if rel is not None and self._volume_path is not None:
            return hostfs.read_beneath(self._volume_path, rel, limit)
        chunks, _ = self._stream_archive(full)
        with open_single(chunks) as fh:  # streamed: a huge file is never spooled whole
            return fh.read(limit)

    @contextlib.contextmanager
    def open_file(self, full: str) -> Iterator[IO[bytes]]:
        """A regular file, read as it streams (FileNotFoundError otherwise)."""
        rel = self._in_volume(full)
        if rel is not None and self._volume_path is not None:
            with os.fdopen(hostfs.open_beneath(self._volume_path, rel), "rb") as fh:
                yield fh
            return
        chunks, _ = self._stream_archive(full)
        with open_single(chunks) as fh:
            yield fh

    def _stream_archive(self, full: str) -> tuple[Iterator[bytes], dict[str, Any]]:
        """The engine's tar of ``full`` as it arrives (links never followed); and its stat.

        Raises:
            FileNotFoundError: ``full`` does not exist in the container.
        """
        try:
            with engine_errors(f"read {full}"):
                chunks, stat = self._container.get_archive(full)
                return chunks, dict(stat)
        except SandboxError as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                raise FileNotFoundError(full) from exc
            raise

    def push(self, host_path: Path, full: str) -> None:
        """Copy a host file or folder to ``full`` (its parent is created)."""
        dest = PurePosixPath(full)
        self._ensure_dir(str(dest.parent))
        archive: IO[bytes]
        with pack_path(host_path, dest.name) as archive, engine_errors(f"push {dest}"):
            self._container.put_archive(str(dest.parent), archive)

    def _ensure_dir(self, path: str) -> None:
        with engine_errors(f"mkdir {path}"):
            res = self._container.exec_run(["mkdir", "-p", path])
        if res.exit_code != 0:
            raise SandboxError(
                f"cannot create {path} in sandbox: {res.output.decode(errors='replace')}"
            )

    def pull(self, full: str, host_path: Path, limits: CopyLimits) -> list[str]:
        """Copy ``full`` out into the host folder ``host_path`` (see ``Sandbox.pull``)."""
        rel = self._in_volume(full)
        if rel is not None and self._volume_path is not None:
            return hostfs.copy_beneath(self._volume_path, rel, host_path, limits)
        chunks, stat = self._stream_archive(full)
        mode = int(stat.get("mode", 0))
        is_dir = bool(mode & _GO_MODE_DIR)
        size = int(stat.get("size", 0))
        if not is_dir and (stat.get("linkTarget") or mode & _GO_MODE_SYMLINK):
            getattr(chunks, "close", lambda: None)()
            raise UnsafeArchive(str(stat.get("name")), "a link: links are never copied to the host")
        caps = [c for c in (limits.max_file_bytes, limits.max_total_bytes) if c is not None]
        if not is_dir and caps and size > min(caps):
            getattr(chunks, "close", lambda: None)()  # decided from the stat: nothing moves
            name = copy_single(host_path, str(stat["name"]), size, io.BytesIO(), limits)
            assert name.endswith(OMITTED_SUFFIX)
            return [name]
        with ChunkStream(chunks) as raw, io.BufferedReader(raw, 1 << 20) as stream:
            if is_dir:
                return safe_extract(stream, host_path, strip_top=True, limits=limits)
            return extract_single(stream, host_path, limits)


_GO_MODE_DIR = 1 << 31
"""Go's ``os.ModeDir`` in the engine's ``X-Docker-Container-Path-Stat`` header."""
_GO_MODE_SYMLINK = 1 << 27
