"""A per-sandbox disk budget (``Limits.disk``), enforced by measuring from the host.

Issue 15 item 4: 4 GB written by a stage reached the host disk. The engine here stores
containers with overlay2 on ext4, where ``--storage-opt size`` is refused (it needs xfs
with project quotas), so the budget cannot be handed to the engine. It is measured:

* what is counted: the container's writable layer (``GraphDriver.Data.UpperDir``), its
  workspace volume, and files its processes still hold open after deleting them (gone
  from every folder, still on the disk). Every entry counts at least one 4 KiB block,
  so a million empty files are not free; a hard-linked file counts once; a sparse file
  counts what it really occupies (``st_blocks``).
* when: a thread polls about once a second while the container runs anything besides
  its init and main command (a walk that took ``t`` waits at least ``5 t``, so the
  watcher uses under a fifth of a core however big the tree), and once more when each
  exec ends, since a fast writer (``fallocate``) can finish between two polls.
* over budget: every process of the container except its init and main command is
  killed, the exec reports ``disk_exceeded``, and the sandbox runs nothing more (later
  execs are refused) until it is closed, which frees the space.

It needs the host's view (root, a local engine, overlay2). When that is missing the
sandbox refuses to open rather than run without the budget (fail closed);
``Limits(disk=None)`` is the caller's explicit way to run without one.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import SandboxError

MIN_DISK_BYTES = 1 << 20
MAX_DISK_BYTES = 1 << 50
"""Budgets outside 1m..1p are refused: smaller cannot hold a workspace, larger is no budget."""
MIN_ENTRY_BYTES = 4096
POLL_S = 1.0
WALK_SHARE = 5
"""A walk that took ``t`` seconds is followed by at least ``WALK_SHARE * t`` of rest."""

_SIZE_RE = re.compile(r"([0-9]+)([bkmgtp]?)")
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(text: str) -> int:
    """Bytes of a size written like a memory limit (``512m``, ``10g``; b/k/m/g/t/p).

    Raises:
        ValueError: not digits with an optional unit, or outside 1m..1p.
    """
    m = _SIZE_RE.fullmatch(str(text).strip().lower())
    if m is None:
        raise ValueError(f"disk budget {text!r}: expected digits and a unit, like 10g or 512m")
    value = int(m.group(1)) * _UNITS[m.group(2)]
    if not MIN_DISK_BYTES <= value <= MAX_DISK_BYTES:
        raise ValueError(f"disk budget {text!r}: must be between 1m and 1p")
    return value


def human(n: int) -> str:
    """``73400320`` -> ``70.0m``: sizes in the units limits are written in."""
    for unit in ("p", "t", "g", "m", "k"):
        scale = _UNITS[unit]
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n}b"


def _walk(root: str, seen: set[tuple[int, int]], stop_above: int) -> int:
    """Allocated bytes under ``root`` (links never followed), stopping once past ``stop_above``."""
    total = 0
    stack = [root]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue  # removed while we walk, or not ours to read
        with it:
            for entry in it:
                try:
                    if not entry.is_file(follow_symlinks=False):
                        # Folders, links, whiteouts: one block each, told apart by the
                        # entry's type without a stat (a big folder's entries count anyway).
                        total += MIN_ENTRY_BYTES
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                total += max(st.st_blocks * 512, MIN_ENTRY_BYTES)
                if total > stop_above:
                    return total
    return total


def _pids(procs_file: Path) -> list[int]:
    try:
        return [int(p) for p in procs_file.read_text().split()]
    except (OSError, ValueError):
        return []


def _deleted_open_files(pids: list[int], devices: set[int], seen: set[tuple[int, int]]) -> int:
    """Bytes of files the processes hold open after unlinking them, on the counted devices."""
    total = 0
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")  # the open file itself
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            deleted = stat.S_ISREG(st.st_mode) and st.st_nlink == 0
            if deleted and st.st_dev in devices and key not in seen:
                seen.add(key)
                total += st.st_blocks * 512
    return total


class DiskWatch:
    """Measures one container against its budget; kills and latches when it is over."""

    def __init__(
        self,
        budget: str,
        roots: list[Path],
        devices: set[int],
        procs_file: Path,
        keep: set[int],
    ) -> None:
        self.budget = budget
        self.budget_bytes = parse_size(budget)
        self._roots = [str(r) for r in roots]
        self._devices = devices
        self._procs_file = procs_file
        self._keep = keep
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.used = 0
        """Bytes at the last measurement (a lower bound once over: the walk stops there)."""
        self.exceeded_at: int | None = None
        """Bytes measured when the budget was found exceeded; None while within it."""
        self._thread = threading.Thread(target=self._loop, name="fsm-disk-watch", daemon=True)

    @property
    def over(self) -> bool:
        return self.exceeded_at is not None

    def measure(self) -> int:
        """Bytes the sandbox holds now (stops counting a little past the budget)."""
        seen: set[tuple[int, int]] = set()
        total = 0
        for root in self._roots:
            total += _walk(root, seen, self.budget_bytes - total)
            if total > self.budget_bytes:
                return total
        others = [p for p in _pids(self._procs_file) if p not in self._keep]
        return total + _deleted_open_files(others, self._devices, seen)

    def check(self) -> bool:
        """Measure now; when over budget, kill the container's processes and latch. True: over."""
        with self._lock:
            if self.exceeded_at is not None:
                return True
            self.used = self.measure()
            if self.used <= self.budget_bytes:
                return False
            self.exceeded_at = self.used
        self.kill_all()
        return True

    def kill_all(self) -> None:
        """SIGKILL every process of the container but its init and main command, until none
        is left (a writer that forks while we sweep is caught by the next round)."""
        for _ in range(50):
            others = [p for p in _pids(self._procs_file) if p not in self._keep]
            if not others:
                return
            for pid in others:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def message(self) -> str:
        """The stage's failure reason: ``disk budget 10g exceeded: 10.3g written``."""
        return f"disk budget {self.budget} exceeded: {human(self.exceeded_at or self.used)} written"

    def _busy(self) -> bool:
        return any(p not in self._keep for p in _pids(self._procs_file))

    def _loop(self) -> None:
        rest = POLL_S
        while not self._stop.wait(rest):
            if not self._busy():
                rest = POLL_S  # only init and the main command: nothing can write
                continue
            started = time.monotonic()
            if self.check():
                return
            rest = max(POLL_S, WALK_SHARE * (time.monotonic() - started))

    def start(self) -> DiskWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=1)  # asleep between polls: it wakes at once

    def describe(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "budget_bytes": self.budget_bytes,
            "enforced": True,
            "how": "measured from the host about every second and after each command: "
            "writable layer + workspace volume + deleted files still open",
            "used_bytes": self.used,
            "exceeded": self.over,
        }


def _main_pids(procs_file: Path, init_pid: int) -> set[int]:
    """The container's init and its main command: the processes a disk kill spares."""
    keep = {init_pid}
    for pid in _pids(procs_file):
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == init_pid:
            keep.add(pid)
    return keep


def install(
    budget: str | None,
    attrs: Mapping[str, Any],
    volume: Path | None,
    procs_file: Path | None,
    init_pid: int,
) -> DiskWatch | None:
    """Start watching a just-started container (None: the caller chose no budget).

    Raises:
        SandboxError: the budget cannot be measured here (not root, a remote engine, a
            storage driver other than overlay2): refused, never run without it.
    """
    if budget is None:
        return None
    upper = ((attrs.get("GraphDriver") or {}).get("Data") or {}).get("UpperDir")
    why = ""
    if not upper:
        driver = (attrs.get("GraphDriver") or {}).get("Name") or "unknown"
        why = f"the storage driver ({driver}) shows no writable layer on this host"
    elif procs_file is None:
        why = "the container's processes are not visible from this host"
    roots = [Path(upper)] if upper else []
    if volume is not None:
        roots.append(volume)
    try:
        devices = {os.stat(f"/proc/{init_pid}/root").st_dev}
        devices.update(os.stat(r).st_dev for r in roots)
        for root in roots:
            os.close(os.open(root, os.O_RDONLY | os.O_DIRECTORY))
    except OSError as exc:
        why = why or f"cannot read the container's storage from this host ({exc.strerror})"
    if why or procs_file is None:
        raise SandboxError(
            f"disk budget {budget} cannot be enforced: {why}. It is measured from the "
            "host, which needs root and a local engine with overlay2; open the sandbox "
            "with Limits(disk=None) to run without a disk budget"
        )
    keep = _main_pids(procs_file, init_pid)
    return DiskWatch(budget, roots, devices, procs_file, keep).start()


def volume_mountpoint(attrs: Mapping[str, Any], destination: str) -> Path | None:
    """Host folder of the volume mounted at ``destination`` (None: no such volume)."""
    for mount in attrs.get("Mounts") or []:
        if mount.get("Destination") == destination and mount.get("Type") == "volume":
            return Path(mount["Source"])
    return None
