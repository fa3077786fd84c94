"""Process-tree kill and OOM evidence for one exec inside a container.

Why this exists: a ``docker exec`` whose client gives up keeps running (measured: the
SDK's socket timeout does not bound an exec, and killing the exec's pid orphans its
children). GNU ``timeout`` and process-group kills miss children that call ``setsid``.
So every exec carries a marker variable ``FSM_EXEC_ID=<id>`` in its environment, which
every descendant inherits even across ``setsid``/daemonising, and on timeout we kill
exactly the processes carrying it. Background services started by *other* execs (a
deploy stage's server) are left alone.

Two ways to find and kill them, best first:
  * from the host, through the container's cgroup (cgroup v1 or v2): freeze nothing,
    read ``/proc/<pid>/environ`` of each member, SIGKILL the marked ones; works even
    while a fork bomb has exhausted the container's pids;
  * inside the container, with a small ``sh`` loop (when the engine is remote or we
    are not root): a privileged exec so that CAP_KILL reaches processes that switched uid.

OOM: an OOM kill inside an exec does not set ``State.OOMKilled``; the cgroup's
``oom_kill`` counter does move, so we diff it around each exec.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

MARKER_VAR = "FSM_EXEC_ID"

_IN_CONTAINER_KILLER = r"""
m="FSM_EXEC_ID=$1"; self=$$
i=0
while [ $i -lt 30 ]; do
  found=
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = "$self" ] && continue
    if grep -qzx "$m" "$d/environ" 2>/dev/null; then kill -KILL "$p" 2>/dev/null; found=1; fi
  done
  [ -z "$found" ] && exit 0
  i=$((i+1))
done
exit 1
"""


def in_container_killer(exec_marker: str) -> list[str]:
    """Command (argv) that kills every process carrying ``exec_marker`` from inside."""
    return ["sh", "-c", _IN_CONTAINER_KILLER, "fsm-killer", exec_marker]


def _cgroup_file(container_pid: int, v1_controller: str, v1_file: str, v2_file: str) -> Path | None:
    """A file of the container's cgroup on the host: the v1 controller's, else the v2 one."""
    try:
        lines = Path(f"/proc/{container_pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    entries = [line.split(":", 2) for line in lines if line.count(":") >= 2]
    for _, controllers, path in entries:
        if v1_controller in controllers.split(","):
            candidate = Path("/sys/fs/cgroup") / v1_controller / path.lstrip("/") / v1_file
            if candidate.exists():
                return candidate
    for _, controllers, path in entries:
        if controllers == "":  # cgroup v2 unified hierarchy
            candidate = Path("/sys/fs/cgroup") / path.lstrip("/") / v2_file
            if candidate.exists():
                return candidate
    return None


def host_cgroup_procs(container_pid: int) -> Path | None:
    """The host file listing the container's pids, found via its init's cgroup; None if unreadable."""
    return _cgroup_file(container_pid, "pids", "cgroup.procs", "cgroup.procs")


def host_memory_oom_file(container_pid: int) -> Path | None:
    """The host file whose ``oom_kill`` counter counts OOM kills in the container."""
    return _cgroup_file(container_pid, "memory", "memory.oom_control", "memory.events")


def read_oom_kills(path: Path | None) -> int | None:
    """The ``oom_kill N`` counter from memory.oom_control (v1) or memory.events (v2)."""
    if path is None:
        return None
    try:
        text = path.read_text()
    except OSError:
        return None
    m = re.search(r"^oom_kill\s+(\d+)", text, re.M)
    return int(m.group(1)) if m else None


def parse_oom_kills(text: str) -> int | None:
    m = re.search(r"^oom_kill\s+(\d+)", text, re.M)
    return int(m.group(1)) if m else None


def _has_marker(pid: str, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return marker in fh.read().split(b"\0")
    except OSError:
        return False


def host_kill_marked(procs_file: Path, exec_marker: str, rounds: int = 50) -> int:
    """SIGKILL every container process whose environment holds ``exec_marker``.

    Repeats until a round finds none, so children forked during the sweep are caught.
    Returns the number of signals sent; -1 when the host cannot see the processes.
    """
    marker = f"{MARKER_VAR}={exec_marker}".encode()
    sent = 0
    for _ in range(rounds):
        try:
            pids = procs_file.read_text().split()
        except OSError:
            return -1
        found = False
        for pid in pids:
            if _has_marker(pid, marker):
                found = True
                try:
                    os.kill(int(pid), signal.SIGKILL)
                    sent += 1
                except (ProcessLookupError, PermissionError):
                    pass
        if not found:
            return sent
    return sent


def host_can_inspect(procs_file: Path | None) -> bool:
    """True when we may read other processes' environments (root on the engine's host)."""
    if procs_file is None:
        return False
    try:
        first = procs_file.read_text().split()[:1]
    except OSError:
        return False
    if not first:
        return False
    try:
        with open(f"/proc/{first[0]}/environ", "rb") as fh:
            fh.read(1)
    except OSError:
        return False
    return True
