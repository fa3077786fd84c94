"""Safe tar streams in and out of a sandbox.

Going in, we build the tar ourselves from a host folder (files, dirs and symlinks as
they are; owners reset to root). Coming out, the tar was produced by code we do not
trust and is read as a stream: every member is checked as it comes (no absolute path,
no ``..``, no device or fifo, no link leaving the folder) and written by
``copyout.HostTree``, which never creates a link on the host (a container symlink comes
back as an entry of ``.links.json``) and removes the whole copy when a member is refused.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .copyout import CopyLimits, HostTree, copy_single
from .errors import UnsafeArchive

SPOOL_MEMORY_BYTES = 32 * 1024 * 1024
"""Archives up to this size stay in memory; larger ones spill to a temp file."""


def _excluded(rel: str, exclude: Iterable[str]) -> bool:
    for pattern in exclude:
        if rel == pattern or rel.startswith(pattern.rstrip("/") + "/"):
            return True
        if "/" not in pattern and pattern in rel.split("/"):
            return True
    return False


def _reset_owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def pack_dir(
    src: Path, arcname: str, exclude: Iterable[str] = (), *, keep_special: bool = False
) -> IO[bytes]:
    """Tar ``src`` as ``arcname/...`` into a spooled file, rewound and ready to send.

    Symlinks are stored as links (never followed), so a link in the repo cannot pull
    host files into the sandbox. Fifos and devices are skipped, unless ``keep_special``
    (used when the tar is about to be checked by ``safe_extract``, which refuses them).
    """
    exclude = tuple(exclude)
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115 - caller owns it
    with tarfile.open(fileobj=spool, mode="w", format=tarfile.PAX_FORMAT) as tar:
        top = tar.gettarinfo(str(src), arcname=arcname)
        tar.addfile(_reset_owner(top))
        for root, dirs, files in os.walk(src):
            rel_root = os.path.relpath(root, src)
            rel_root = "" if rel_root == "." else rel_root
            dirs[:] = sorted(
                d for d in dirs if not _excluded(posixpath.join(rel_root, d).lstrip("/"), exclude)
            )
            for name in sorted(dirs) + sorted(files):
                rel = posixpath.join(rel_root, name) if rel_root else name
                if _excluded(rel, exclude):
                    continue
                full = os.path.join(root, name)
                info = tar.gettarinfo(full, arcname=f"{arcname}/{rel}")
                _reset_owner(info)
                if info.isreg():
                    with open(full, "rb") as fh:
                        tar.addfile(info, fh)
                elif info.isdir() or info.issym() or keep_special:
                    tar.addfile(info)
                # sockets, fifos, devices in a repo are skipped: nothing to copy.
    spool.seek(0)
    return spool


def selected_files(src: Path, exclude: Iterable[str] = ()) -> Iterator[str]:
    """Relative paths, in a stable order, of the files and links ``pack_dir`` would copy.

    The workspace a sandbox starts from is exactly these (the run manifest hashes them).
    """
    exclude = tuple(exclude)
    for root, dirs, files in os.walk(src):
        rel_root = os.path.relpath(root, src)
        rel_root = "" if rel_root == "." else rel_root
        dirs[:] = sorted(
            d for d in dirs if not _excluded(posixpath.join(rel_root, d).lstrip("/"), exclude)
        )
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            rel = posixpath.join(rel_root, name) if rel_root else name
            full = os.path.join(root, name)
            if not _excluded(rel, exclude) and (os.path.islink(full) or os.path.isfile(full)):
                yield rel


def pack_path(src: Path, arcname: str, *, keep_special: bool = False) -> IO[bytes]:
    """Tar a single file or a folder under ``arcname``."""
    if src.is_dir() and not src.is_symlink():
        return pack_dir(src, arcname, keep_special=keep_special)
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115 - caller owns it
    with tarfile.open(fileobj=spool, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(str(src), arcname=arcname, recursive=False, filter=_reset_owner)
    spool.seek(0)
    return spool


def spool_chunks(chunks: Iterator[bytes]) -> IO[bytes]:
    """Collect a streamed archive (docker's get_archive) into a rewound spooled file."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115 - caller owns it
    for chunk in chunks:
        spool.write(chunk)
    spool.seek(0)
    return spool


def check_member(member: tarfile.TarInfo) -> None:
    """Refuse a member that could write outside the destination.

    Raises:
        UnsafeArchive: absolute path, ``..`` component, device/fifo, or a link whose
            target leaves the extraction root.
    """
    name = member.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(name, "absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(name, "path contains '..'")
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        raise UnsafeArchive(name, "device or fifo")
    if member.issym() or member.islnk():
        target = member.linkname
        if target.startswith("/"):
            raise UnsafeArchive(name, f"link to absolute path {target!r}")
        base = posixpath.dirname(posixpath.normpath(name)) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if resolved == ".." or resolved.startswith("../"):
            raise UnsafeArchive(name, f"link {target!r} points outside the destination")
    elif not (member.isreg() or member.isdir()):
        raise UnsafeArchive(name, f"unsupported member type {member.type!r}")


def check_member_kind(name: str, kind: str, link_target: str = "") -> None:
    """``check_member`` for an entry described without a TarInfo (host-side copies)."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE if kind == "link" else tarfile.REGTYPE
    info.linkname = link_target
    check_member(info)


MAX_SKIPPED_BYTES = 256 * 1024 * 1024
"""A streamed pull stops reading once this much was left behind (files over a cap are
still read past in a tar stream): the rest of the archive is named as not read."""
NO_CAPS = CopyLimits()


def _strip(name: str, strip_top: bool) -> str | None:
    name = "/".join(p for p in name.split("/") if p not in ("", "."))
    if not strip_top:
        return name
    _head, _, rest = name.partition("/")
    return rest or None


def safe_extract(
    archive: IO[bytes],
    dest: Path,
    *,
    strip_top: bool = False,
    limits: CopyLimits = NO_CAPS,
) -> list[str]:
    """Extract a tar (read as a stream) into the new folder ``dest``; return names written.

    Every member is checked as it comes; links are listed in ``.links.json``, never
    created; caps as in :class:`~sandbox.copyout.CopyLimits`. ``strip_top`` drops the
    first path component (docker returns ``basename/...`` for a folder). When a member
    is unsafe, ``dest`` is removed again: nothing is left of the copy.

    Raises:
        FileExistsError: ``dest`` exists (a copy never writes into an earlier one).
        UnsafeArchive: see ``check_member``.
    """
    tree = HostTree(dest, limits)
    try:
        skipped = 0
        with tarfile.open(fileobj=archive, mode="r|") as tar:
            for member in tar:
                check_member(member)
                rel = _strip(member.name, strip_top)
                if rel is None:
                    continue
                if skipped > MAX_SKIPPED_BYTES:
                    tree.omit(rel, "not read: the copy stopped after leaving this much behind")
                    tree.omit("...", "the rest of the archive was not read")
                    break
                if member.isdir():
                    tree.add_dir(rel)
                elif member.isreg():
                    if tree.add_file(rel, member.size, None):
                        tree.add_file(rel, member.size, tar.extractfile(member))
                    else:
                        skipped += member.size
                elif member.issym():
                    tree.add_link(rel, member.linkname, "symlink")
                else:  # a hard link: check_member allows nothing else
                    tree.add_hardlink(rel, _strip(member.linkname, strip_top) or "")
        return tree.finish()
    except BaseException:
        tree.abort()
        raise


def extract_single(archive: IO[bytes], dest_dir: Path, limits: CopyLimits) -> list[str]:
    """The one regular file of a streamed tar into ``dest_dir``; return the name written.

    Raises:
        UnsafeArchive: the member is a link (never copied to the host), a device or a
            fifo, or its name is taken in ``dest_dir``.
        FileNotFoundError: the archive is empty.
    """
    with tarfile.open(fileobj=archive, mode="r|") as tar:
        for member in tar:
            check_member(member)
            if not member.isreg():
                raise UnsafeArchive(member.name, "a link: links are never copied to the host")
            name = posixpath.basename(member.name.rstrip("/"))
            fh = tar.extractfile(member)
            assert fh is not None
            return [copy_single(dest_dir, name, member.size, fh, limits)]
    raise FileNotFoundError("empty archive")


class ChunkStream(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (docker's get_archive stream).

    Lets ``tarfile`` read the engine's archive as it arrives instead of spooling it
    whole: a reader that stops early (a 256 MB sparse file refused after 32 MB) stops
    the transfer too. Closing it closes the iterator, which drops the HTTP response.
    """

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")  # a view: taking a piece copies nothing

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:  # a writable buffer (bytearray, memoryview)
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        super().close()


@contextlib.contextmanager
def open_single(chunks: Iterator[bytes]) -> Iterator[IO[bytes]]:
    """The single regular file of a streamed archive, as a file read while it arrives.

    Raises:
        FileNotFoundError: the archive holds no regular file (a dir, or a link we refuse
            to follow).
    """
    with ChunkStream(chunks) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        for member in tar:
            if member.isreg():
                fh = tar.extractfile(member)
                assert fh is not None
                yield fh
                return
            break
        raise FileNotFoundError("not a regular file (links are never followed)")


def tar_bytes(entries: dict[str, bytes]) -> bytes:
    """Small helper for tests and pushes of generated files: name -> content."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
