"""Writing what a sandbox gives back onto the host: into a fresh folder, and nowhere else.

Issue 15 item 1: a copy-out recreated the sandbox's links on the host, each of them
harmless on its own (``d/s -> ..``, ``top -> d/s``, ``u01 -> top/..``, ... ``root ->
u30``), and the next copy into the same folder followed them and wrote ``/tmp/x`` as
root. Three rules, each enough against that chain:

* **Links are never created on the host.** A copied folder lists them instead, in
  ``.links.json`` at its top (``path``, ``kind`` symlink/hardlink, ``target``).
* **Every host path component is opened relative to its parent's descriptor with
  ``O_NOFOLLOW``**; files are created ``O_EXCL|O_NOFOLLOW``, so nothing is ever
  written through a name that already exists (``host_write.py``).
* **A copy writes only into folders it created itself**: the destination must not
  exist (a second copy of the same pass goes to a fresh folder), and an entry whose
  folder this copy did not create is left behind.

Issue 15 item 4 (disk): a copy has caps on one file, on its total bytes and on its
entries. Bytes are counted by a file's apparent size (what it becomes on the host: a
63 MiB sparse file holding 8 KB is 63 MiB here), so the caps bound the host disk.
What is left behind is never silent: ``<name>.omitted`` stands in for one file over the
per-file cap, and ``.omitted`` at the top of the copy names everything else.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from .errors import UnsafeArchive

# The ``X as X`` names: re-exported for the run dir, the agent and passes, which import
# them from here.
from .host_write import DIR_FLAGS as DIR_FLAGS
from .host_write import NEW_FILE_FLAGS, create_file, open_runner_dir, write_all
from .host_write import open_dirs_beneath as open_dirs_beneath
from .host_write import replace_file_beneath as replace_file_beneath
from .host_write import replace_tree as replace_tree
from .host_write import tree_usage as tree_usage

LINKS_FILE = ".links.json"
"""Top of a copied folder: the links found in the sandbox, listed (never created)."""
OMITTED_FILE = ".omitted"
"""Top of a copied folder: what this copy left behind, and why."""
OMITTED_SUFFIX = ".omitted"
"""``<name>.omitted``: stand-in for one file over the per-file cap."""
RESERVED = frozenset({LINKS_FILE, OMITTED_FILE})
"""Names at the top of a copy that are the runner's; a sandbox entry with one stays behind."""

MAX_DEPTH = 64
"""Folders deeper than this stay behind (a 1500-level tree must not exhaust the stack)."""
MAX_LISTED = 1000
"""Entries named one by one in ``.omitted``; the rest are counted."""
_MAX_LISTED_NAME = 512
_FD_CACHE = 64

LinkKind = Literal["symlink", "hardlink"]


@dataclass(frozen=True)
class CopyLimits:
    """Caps on one copy out of a sandbox (None: no cap)."""

    max_file_bytes: int | None = None
    """A bigger file stays behind; ``<name>.omitted`` says its size."""
    max_total_bytes: int | None = None
    """Apparent bytes this copy may write in all (files, plus the links listing)."""
    max_entries: int | None = None
    """Folders, files, links and notes this copy may create or list."""


def _omitted_note(size: int, cap: int) -> bytes:
    return f"not copied: {size} bytes, over the {cap}-byte limit for one file\n".encode()


class HostTree:
    """One copy's destination folder, created by this copy and written only through it.

    Use :meth:`add_dir`, :meth:`add_file`, :meth:`add_link` in any order where a folder
    comes before its contents (tar and directory-walk order), then :meth:`finish`; on
    an error :meth:`abort` removes the folder again, so a refused copy writes nothing.
    """

    def __init__(self, dest: Path, limits: CopyLimits) -> None:
        """Create ``dest``.

        Raises:
            FileExistsError: ``dest`` exists: a copy never writes into an earlier one.
        """
        self.limits = limits
        parent_fd = open_runner_dir(dest.parent)
        try:
            os.mkdir(dest.name, 0o755, dir_fd=parent_fd)
            self._root = os.open(dest.name, DIR_FLAGS, dir_fd=parent_fd)
        finally:
            os.close(parent_fd)
        self.path = dest.parent.resolve() / dest.name
        self._fds: dict[str, int] = {"": self._root}
        self._made: set[str] = {""}
        """Folders this copy created: the only places it writes into."""
        self.bytes = 0
        self.entries = 0
        self.written: list[str] = []
        self._files: dict[str, int] = {}
        """Files this copy wrote, with their sizes (a hard link to one is copied from it)."""
        self._links: list[dict[str, str]] = []
        self._omitted: list[tuple[str, str]] = []
        self._omitted_more = 0

    # -- descriptors -------------------------------------------------------------------

    def _dir_fd(self, rel_dir: str) -> int:
        """The folder ``rel_dir`` (one this copy made), opened component by component."""
        fd = self._fds.get(rel_dir)
        if fd is not None:
            return fd
        parent, _, name = rel_dir.rpartition("/")
        parent_fd = self._dir_fd(parent)
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        if len(self._fds) >= _FD_CACHE:
            self._close_cached()  # the new descriptor stands on its own
        self._fds[rel_dir] = fd
        return fd

    def _close_cached(self) -> None:
        for rel, fd in list(self._fds.items()):
            if rel:
                os.close(fd)
                del self._fds[rel]

    def _place(self, rel: str) -> tuple[int, str] | None:
        """(folder descriptor, name) for a new entry, or None when it must stay behind."""
        parent, _, name = rel.rpartition("/")
        if parent not in self._made:
            self._omitted_more += 1  # inside a folder left behind: counted, not listed
            return None
        if rel.count("/") >= MAX_DEPTH:
            self.omit(rel, f"deeper than {MAX_DEPTH} levels")
            return None
        if not parent and name in RESERVED:
            self.omit(rel, "the name is reserved for the runner's listing")
            return None
        return self._dir_fd(parent), name

    def _entry_allowed(self, rel: str, cost: int = 0) -> bool:
        cap_e, cap_b = self.limits.max_entries, self.limits.max_total_bytes
        if cap_e is not None and self.entries + 1 > cap_e:
            self.omit(rel, f"over the {cap_e}-entry limit")
            return False
        if cap_b is not None and self.bytes + cost > cap_b:
            self.omit(rel, f"{cost} bytes, over the {cap_b}-byte limit")
            return False
        return True

    # -- entries -----------------------------------------------------------------------

    def omit(self, rel: str, reason: str) -> None:
        """Name ``rel`` in ``.omitted`` (the first :data:`MAX_LISTED`; the rest counted)."""
        if len(self._omitted) < MAX_LISTED:
            # Escaped: a name holding a newline cannot forge a line of the note.
            self._omitted.append((json.dumps(rel[:_MAX_LISTED_NAME])[1:-1], reason))
        else:
            self._omitted_more += 1

    def add_dir(self, rel: str) -> None:
        """Create the folder ``rel`` (its parent must be one this copy created)."""
        if rel in self._made:
            return  # listed twice (tar allows it): already ours
        place = self._place(rel)
        if place is None or not self._entry_allowed(rel + "/"):
            return
        dir_fd, name = place
        try:
            os.mkdir(name, 0o755, dir_fd=dir_fd)
        except FileExistsError:
            self.omit(rel + "/", "a file of that name was copied first")
            return
        self._made.add(rel)
        self.entries += 1
        self.written.append(rel)

    def add_file(self, rel: str, size: int, src: IO[bytes] | None) -> bool:
        """Create the file ``rel`` with ``size`` bytes of ``src``; False when left behind.

        ``src`` None (a caller that opens lazily): only decide, write nothing yet; the
        caller then calls again with the file.
        """
        place = self._place(rel)
        if place is None:
            return False
        dir_fd, name = place
        cap_f = self.limits.max_file_bytes
        if cap_f is not None and size > cap_f:
            note = _omitted_note(size, cap_f)
            if self._entry_allowed(rel + OMITTED_SUFFIX, len(note)):
                try:
                    create_file(dir_fd, name + OMITTED_SUFFIX, note)
                except FileExistsError:
                    self.omit(rel, f"{size} bytes, over the {cap_f}-byte limit for one file")
                    return False
                self.entries += 1
                self.bytes += len(note)
                self.written.append(rel + OMITTED_SUFFIX)
            return False
        if not self._entry_allowed(rel, size):
            return False
        if src is None:
            return True
        try:
            fd = os.open(name, NEW_FILE_FLAGS, 0o644, dir_fd=dir_fd)
        except FileExistsError:
            self.omit(rel, "a file or folder of that name was copied first")
            return False
        try:
            write_all(fd, src, size)
        finally:
            os.close(fd)
        self.entries += 1
        self.bytes += size
        self.written.append(rel)
        self._files[rel] = size
        return True

    def add_hardlink(self, rel: str, target: str) -> None:
        """A hard link to a file this copy wrote becomes a copy of it (counted like one);
        to anything else, an entry of the links listing. No link is made on the host."""
        size = self._files.get(target)
        if size is None:
            self.add_link(rel, target, "hardlink")
            return
        if not self.add_file(rel, size, None):
            return
        parent, _, name = target.rpartition("/")
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dir_fd(parent))
        with os.fdopen(fd, "rb") as src:
            self.add_file(rel, size, src)

    def add_link(self, rel: str, target: str, kind: LinkKind) -> None:
        """List a link in ``.links.json``; nothing is created for it on the host."""
        place = self._place(rel)
        if place is None:
            return
        cost = len(rel.encode()) + len(target.encode()) + 64
        if not self._entry_allowed(rel, cost):
            return
        self._links.append({"path": rel, "kind": kind, "target": target})
        self.entries += 1
        self.bytes += cost

    # -- end ---------------------------------------------------------------------------

    def finish(self) -> list[str]:
        """Write the links listing and the ``.omitted`` note; return every name written."""
        try:
            if self._links:
                data = json.dumps({"links": self._links}, indent=1, ensure_ascii=False)
                create_file(self._root, LINKS_FILE, (data + "\n").encode(errors="replace"))
                self.written.append(LINKS_FILE)
            if self._omitted or self._omitted_more:
                lines = [f"{path}\t{reason}" for path, reason in self._omitted]
                if self._omitted_more:
                    lines.append(f"... and {self._omitted_more} more entries not copied")
                text = "left behind by this copy (path<TAB>why):\n" + "\n".join(lines) + "\n"
                create_file(self._root, OMITTED_FILE, text.encode(errors="replace"))
                self.written.append(OMITTED_FILE)
        finally:
            self._close()
        return self.written

    def abort(self) -> None:
        """Remove everything this copy wrote (its own folder)."""
        self._close()
        shutil.rmtree(self.path, ignore_errors=True)

    def _close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def copy_single(dest_dir: Path, name: str, size: int, src: IO[bytes], limits: CopyLimits) -> str:
    """One file into ``dest_dir`` (a runner folder): created ``O_EXCL|O_NOFOLLOW``, or a
    ``<name>.omitted`` note when it is over a cap. Returns the name written.

    Raises:
        UnsafeArchive: the name is already taken in ``dest_dir`` (never overwritten).
    """
    caps = [c for c in (limits.max_file_bytes, limits.max_total_bytes) if c is not None]
    dir_fd = open_runner_dir(dest_dir)
    try:
        if caps and size > min(caps):
            create_file(dir_fd, name + OMITTED_SUFFIX, _omitted_note(size, min(caps)))
            return name + OMITTED_SUFFIX
        fd = os.open(name, NEW_FILE_FLAGS, 0o644, dir_fd=dir_fd)
        try:
            write_all(fd, src, size)
        finally:
            os.close(fd)
        return name
    except FileExistsError as exc:
        raise UnsafeArchive(name, "a host file of that name is already there") from exc
    finally:
        os.close(dir_fd)
