"""The runner's own writes on the host: through directory descriptors, never a link.

Every path component is opened relative to its parent's descriptor with ``O_NOFOLLOW``
and files are created ``O_EXCL``, so a link planted by sandbox code (in a copy-out, a
run dir, an agent's workspace) is never followed. ``copyout.HostTree`` writes copies
out of a sandbox with these; the run dir and the agent's files use them directly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import IO

_COPY_CHUNK = 1 << 20

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def open_runner_dir(path: Path) -> int:
    """A descriptor on a folder of the runner's own (a run dir, a temp dir): created if
    missing, resolved once (the user's path may hold links of its own), then opened
    ``O_NOFOLLOW``. Everything below it is opened relative to this descriptor."""
    path.mkdir(parents=True, exist_ok=True)
    return os.open(path.resolve(), DIR_FLAGS)


def write_all(fd: int, src: IO[bytes], size: int) -> int:
    """Copy at most ``size`` bytes of ``src`` into ``fd``; a file that grew since it was
    counted is cut at the counted size (the caps were decided on it)."""
    left = size
    while left > 0:
        chunk = src.read(min(left, _COPY_CHUNK))
        if not chunk:
            break
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]
        left -= len(chunk)
    return size - left


def create_file(dir_fd: int, name: str, data: bytes, mode: int = 0o644) -> None:
    """A new file ``name`` in ``dir_fd`` (``FileExistsError`` if the name is taken)."""
    fd = os.open(name, NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)  # exact, whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def open_dirs_beneath(root_fd: int, parts: list[str], *, create: bool = True) -> int:
    """The folder ``parts`` under ``root_fd``, each component opened ``O_NOFOLLOW``
    relative to its parent, and made first if missing when ``create`` (caller closes
    the descriptor).

    Raises:
        OSError: a component is a link or not a folder (``ELOOP``/``ENOTDIR``), or
            missing and not ``create``.
        ValueError: a component is empty, ``.`` or ``..``.
    """
    fd = os.dup(root_fd)
    try:
        for part in parts:
            if part in ("", ".", ".."):
                raise ValueError(f"bad path component {part!r}")
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def replace_file_beneath(root: Path, rel: str, data: bytes, mode: int = 0o644) -> Path:
    """Write ``root/rel`` whole and atomically, never through a link.

    Parents are opened ``O_NOFOLLOW`` from ``root`` (made when missing); the data goes to
    a new ``O_EXCL`` temp file renamed over the name, so a link planted at ``rel`` is
    replaced, never followed, and a reader never sees half a file.

    Raises:
        OSError: a parent is a link or not a folder.
        ValueError: ``rel`` is empty or has ``..``.
    """
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"bad relative path {rel!r}")
    root_fd = open_runner_dir(root)
    try:
        dir_fd = open_dirs_beneath(root_fd, parts[:-1])
    finally:
        os.close(root_fd)
    name = parts[-1]
    tmp = f".{name[:64]}.{os.urandom(4).hex()}.tmp"
    try:
        create_file(dir_fd, tmp, data, mode)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    finally:
        os.close(dir_fd)
    return root.joinpath(*parts)


def replace_tree(parent: Path, fresh: str, name: str) -> None:
    """Put the folder ``fresh`` (a finished copy) in the place of ``name``, both in ``parent``.

    The previous ``name`` is renamed aside and removed (``shutil.rmtree`` never follows
    links); a reader sees the old copy or the new one, never a mix.
    """
    parent_fd = open_runner_dir(parent)
    try:
        old = f".{name}.{os.urandom(4).hex()}.old"
        try:
            os.rename(name, old, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except FileNotFoundError:
            old = ""
        os.rename(fresh, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        if old:
            shutil.rmtree(old, dir_fd=parent_fd)
    finally:
        os.close(parent_fd)


def tree_usage(path: Path) -> tuple[int, int]:
    """(apparent bytes of regular files, entries) under ``path``; links never followed."""
    total = entries = 0
    stack = [str(path)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    entries += 1
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
    return total, entries
