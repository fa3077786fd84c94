"""Garbage collection of what dead sandboxes left behind.

Every container and network we create carries its creator's pid, the pid's start
time (so a reused pid is not mistaken for a live creator) and host name. ``gc()``
removes the objects whose creator on this host is gone; objects of live creators and
of other hosts are left alone. Shared objects (the egress network, images) are not
leftovers and are never removed here.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

import docker.errors

from .engine import (
    LABEL_CREATOR_HOST,
    LABEL_CREATOR_PID,
    LABEL_CREATOR_START,
    LABEL_KIND,
    engine_errors,
    get_client,
    process_start_ticks,
)


@dataclass
class GcReport:
    """What ``gc()`` removed (names), for the CLI and tests."""

    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    kept_live: int = 0


def creator_alive(labels: dict[str, str]) -> bool:
    """True when the object's creator process still runs (or lives on another host)."""
    if labels.get(LABEL_CREATOR_HOST, socket.gethostname()) != socket.gethostname():
        return True
    try:
        pid = int(labels.get(LABEL_CREATOR_PID, ""))
    except ValueError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if _is_zombie(pid):
        return False  # exited; its parent has not reaped it yet
    start = labels.get(LABEL_CREATOR_START, "")
    return not start or process_start_ticks(pid) == start


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return False
    # Field 3 (state), counted after the parenthesised command name.
    fields = stat.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] in ("Z", "X")


def gc(*, include_live: bool = False) -> GcReport:
    """Remove containers and per-sandbox networks whose creator is dead.

    Args:
        include_live: also remove objects of live creators (``fsm-runner gc --all``).
    """
    client = get_client()
    report = GcReport()
    with engine_errors("list containers"):
        containers: list[Any] = client.containers.list(
            # ignore_removed: another gc (or a closing sandbox) may remove one mid-listing.
            all=True,
            filters={"label": LABEL_KIND},
            ignore_removed=True,
        )
    for ct in containers:
        if not include_live and creator_alive(ct.labels):
            report.kept_live += 1
            continue
        try:
            ct.remove(force=True, v=True)
            report.containers.append(ct.name)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            # 409 "removal ... already in progress": a killed creator's removal (issue 17's
            # background close) is finishing it; not ours to report, nor a failure.
            if exc.status_code != 409:
                raise
    with engine_errors("list networks"):
        networks: list[Any] = client.networks.list(filters={"label": f"{LABEL_KIND}=network"})
    for net in networks:
        try:
            net.reload()
        except docker.errors.NotFound:
            continue  # removed since the listing
        if (net.attrs.get("Containers") or {}) or (
            not include_live and creator_alive(net.attrs.get("Labels") or {})
        ):
            continue
        try:
            net.remove()
            report.networks.append(net.name)
        except docker.errors.APIError:
            pass
    return report
