"""Reading a sandbox's workspace volume directly from the host, without following links.

When the workspace is a volume on this host (root, local engine), outputs and artifacts
can be read from its mountpoint in microseconds instead of a ~50 ms archive call. The
folder is written by code we do not trust, so every path is opened one component at a
time relative to the previous directory's descriptor with ``O_NOFOLLOW``: a symlink
anywhere on the path (or swapped in concurrently) fails the open instead of leading
outside. Only regular files are read; FIFOs are never opened for blocking reads.
"""

from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path

from .archive import check_member_kind
from .copyout import CopyLimits, HostTree, copy_single
from .errors import UnsafeArchive
from .host_write import DIR_FLAGS, open_dirs_beneath

_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _parts(rel: str) -> list[str]:
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FileNotFoundError(rel)
    return parts


def _open_dir(root: Path, parts: list[str]) -> int:
    root_fd = os.open(root, DIR_FLAGS)
    try:
        return open_dirs_beneath(root_fd, parts, create=False)
    finally:
        os.close(root_fd)


def open_beneath(root: Path, rel: str) -> int:
    """A read-only descriptor on the regular file ``rel`` under ``root`` (caller closes it).

    Raises:
        FileNotFoundError: missing, not a regular file, or a link on the way.
    """
    parts = _parts(rel)
    if not parts:
        raise FileNotFoundError(rel)
    try:
        dir_fd = _open_dir(root, parts[:-1])
    except OSError as exc:
        raise FileNotFoundError(rel) from exc
    try:
        fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise FileNotFoundError(rel) from exc
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileNotFoundError(rel)
    return fd


def read_beneath(root: Path, rel: str, limit: int) -> bytes:
    """Up to ``limit`` bytes of the regular file ``rel`` under ``root``.

    Raises:
        FileNotFoundError: missing, not a regular file, or a link on the way.
    """
    fd = open_beneath(root, rel)
    try:
        chunks: list[bytes] = []
        left = limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


MAX_DEPTH = 64
MAX_ENTRIES = 100_000
"""Bounds on a pulled tree: a hostile folder 1,500 levels deep or with millions of entries
is refused instead of exhausting the stack, descriptors or disk."""


Entry = tuple[str, str, str, int]


def copy_beneath(root: Path, rel: str, dest: Path, limits: CopyLimits) -> list[str]:
    """Copy the folder (or file) ``rel`` under ``root`` out to the host; return names written.

    A folder goes into the new folder ``dest`` (``copyout.HostTree``: links listed in
    ``.links.json``, never created; caps; nothing left when refused); a single file
    into the folder ``dest``. Same checks as a safe pull, all made on a listing taken
    first, before anything is written: absolute or escaping links, devices, fifos and
    sockets are refused. Each file is then reopened from ``root`` one component at a
    time without following links, so an entry swapped for a link after the listing
    fails the copy instead of leading outside.

    Raises:
        FileNotFoundError: ``rel`` does not exist (or a link is on its path).
        FileExistsError: ``dest`` exists (a folder copy never writes into an earlier one).
        UnsafeArchive: an unsafe entry, or one that changed while being copied.
    """
    parts = _parts(rel)
    try:
        parent_fd = _open_dir(root, parts[:-1]) if parts else os.open(root, DIR_FLAGS)
    except OSError as exc:
        raise FileNotFoundError(rel) from exc
    entries: list[Entry] = []  # (path under rel, kind, link target, size)
    try:
        name = parts[-1] if parts else "."
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except OSError as exc:
            raise FileNotFoundError(rel) from exc
        if not stat.S_ISDIR(st.st_mode):
            _collect_entry(parent_fd, name, name, st, entries)
            _path, kind, _target, size = entries[0]
            if kind != "file":
                raise UnsafeArchive(rel, "a link: links are never copied to the host")
            return [_copy_one(root, rel, dest, size, limits)]
        _collect(os.open(name, DIR_FLAGS, dir_fd=parent_fd), "", entries)
    finally:
        os.close(parent_fd)
    tree = HostTree(dest, limits)
    try:
        for path, kind, target, size in entries:
            if kind == "dir":
                tree.add_dir(path)
            elif kind == "link":
                tree.add_link(path, target, "symlink")
            elif tree.add_file(path, size, None):
                try:
                    fd = open_beneath(root, posixpath.join(*parts, path))
                except FileNotFoundError as exc:
                    raise UnsafeArchive(path, "changed while being copied") from exc
                with os.fdopen(fd, "rb") as src:
                    tree.add_file(path, size, src)
        return tree.finish()
    except BaseException:
        tree.abort()
        raise


def _copy_one(root: Path, rel: str, dest: Path, size: int, limits: CopyLimits) -> str:
    try:
        fd = open_beneath(root, rel)
    except FileNotFoundError as exc:
        raise UnsafeArchive(rel, "changed while being copied") from exc
    with os.fdopen(fd, "rb") as src:
        return copy_single(dest, posixpath.basename(rel), size, src, limits)


def _collect(dir_fd: int, prefix: str, entries: list[Entry], depth: int = 0) -> None:
    try:
        if depth > MAX_DEPTH:
            raise UnsafeArchive(prefix, f"deeper than {MAX_DEPTH} levels")
        for name in sorted(os.listdir(dir_fd)):
            if len(entries) >= MAX_ENTRIES:
                raise UnsafeArchive(prefix or ".", f"more than {MAX_ENTRIES} entries")
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            path = posixpath.join(prefix, name) if prefix else name
            if stat.S_ISDIR(st.st_mode):
                entries.append((path, "dir", "", 0))
                _collect(os.open(name, DIR_FLAGS, dir_fd=dir_fd), path, entries, depth + 1)
            else:
                _collect_entry(dir_fd, name, path, st, entries)
    finally:
        os.close(dir_fd)


def _collect_entry(
    dir_fd: int, name: str, path: str, st: os.stat_result, entries: list[Entry]
) -> None:
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(name, dir_fd=dir_fd)
        check_member_kind(path, "link", target)
        entries.append((path, "link", target, 0))
    elif stat.S_ISREG(st.st_mode):
        entries.append((path, "file", "", st.st_size))
    else:
        raise UnsafeArchive(path, "device, fifo or socket")
