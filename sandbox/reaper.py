"""Garbage collection of what dead sandboxes left behind, and nothing else.

Every container, network and workspace volume a sandbox creates carries session labels
(``engine.creator_labels``): its sandbox id, its creator's pid, the pid's start time (a
reused pid is not mistaken for a live creator) and host name. The engine is shared, and
an image hands its labels to every container started from it, so a label alone proves
nothing (issue 15 item 3). An object is ours only when:

* containers: named ``fsm-<id>`` (a name we chose at create) *and* the ``sandbox-id``
  label is not one the container's image supplies (set at create, not inherited);
* networks: named ``fsm-<what>-<id>`` with that ``sandbox-id`` (networks inherit nothing);
* volumes: labelled ``kind=volume`` with a ``sandbox-id`` (the engine's own anonymous
  volumes carry no labels; ours get them at create);
* host firewall rules: commented ``fsm-runner:<id>`` (``sandbox/firewall.py``).

A sandbox left running on purpose (``fsm-runner run --keep``, label ``fsm-runner.kept``)
is left alone with its volume and rules until ``include_kept`` (``gc --kept``) or
``include_live`` asks for it; then it goes whoever created it.

``gc()`` removes those whose creator on this host is gone. Objects of live creators and
of other hosts are left alone; so are shared ones (the egress network, images). An engine
error on one object (409 "removal already in progress": another gc or a closing sandbox
got there first) is recorded and the sweep goes on (item 13).
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import docker.errors

from . import firewall
from .engine import (
    LABEL_CREATOR_HOST,
    LABEL_CREATOR_PID,
    LABEL_CREATOR_START,
    LABEL_KIND,
    LABEL_SANDBOX,
    engine_errors,
    get_client,
    process_start_ticks,
)
from .kept import LABEL_KEPT


@dataclass
class GcReport:
    """What ``gc()`` removed (names), what it kept, and what it could not remove."""

    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    """``<chain> fsm-runner:<sandbox id>`` per firewall rule removed."""
    kept_live: int = 0
    kept_on_purpose: int = 0
    """Sandboxes left running by ``run --keep`` and left alone (``include_kept`` removes them)."""
    in_progress: list[str] = field(default_factory=list)
    """``<what> <name>`` being removed by someone else (the engine's 409 "removal ...
    already in progress": another gc, or a sandbox closing)."""
    failed: list[str] = field(default_factory=list)
    """``<what> <name>: <engine's reason>`` per object that could not be removed."""


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


def owned_container_sid(name: str, labels: dict[str, str], image_labels: dict[str, str]) -> str:
    """The sandbox id when a container is one a sandbox created, else ""."""
    sid = labels.get(LABEL_SANDBOX, "")
    if not sid or name.lstrip("/") != f"fsm-{sid}":
        return ""
    if image_labels.get(LABEL_SANDBOX) == sid:
        return ""  # inherited from its image (a snapshot committed from our container)
    return sid


def owned_network_sid(name: str, labels: dict[str, str]) -> str:
    sid = labels.get(LABEL_SANDBOX, "")
    ours = sid and labels.get(LABEL_KIND) == "network" and name.startswith("fsm-")
    return sid if ours and name.endswith(f"-{sid}") else ""


class _Sweep:
    def __init__(
        self, include_live: bool, include_kept: bool, creator_pids: Collection[int] | None
    ) -> None:
        self.include_live = include_live
        self.include_kept = include_kept or include_live
        self.pids = None if creator_pids is None else {str(p) for p in creator_pids}
        self.report = GcReport()
        self.keep_sids: set[str] = set()
        self.swept_sids: set[str] = set()

    def doomed(self, sid: str, labels: dict[str, str]) -> bool:
        """Decide for one object; remembers which sandboxes must keep their rules."""
        if sid in self.keep_sids:
            return False  # its container stays (kept on purpose, or still in use)
        if self.pids is not None and labels.get(LABEL_CREATOR_PID) not in self.pids:
            self.keep_sids.add(sid)
            return False
        if labels.get(LABEL_KEPT) == "1":  # "" when inherited from a snapshot image
            if not self.include_kept:
                self.report.kept_on_purpose += 1
                self.keep_sids.add(sid)
                return False
        elif not self.include_live and creator_alive(labels):
            self.report.kept_live += 1
            self.keep_sids.add(sid)
            return False
        self.swept_sids.add(sid)
        return True

    def remove(self, what: str, name: str, sid: str, fn: Callable[[], object]) -> bool:
        try:
            fn()
        except docker.errors.NotFound:
            return False  # gone since the listing: someone else removed it
        except docker.errors.APIError as exc:
            reason = str(exc.explanation or exc)
            if exc.status_code == 409 and "already in progress" in reason:
                self.report.in_progress.append(f"{what} {name}")
            else:
                self.report.failed.append(f"{what} {name}: {reason}")
            self.keep_sids.add(sid)  # still there: its firewall rules stay with it
            return False
        return True


def gc(
    *,
    include_live: bool = False,
    include_kept: bool = False,
    creator_pids: Collection[int] | None = None,
) -> GcReport:
    """Remove what dead sandboxes left: containers, networks, volumes, firewall rules.

    Args:
        include_live: also remove objects of live creators (``fsm-runner gc --all``),
            kept sandboxes included.
        include_kept: also remove sandboxes kept on purpose (``fsm-runner gc --kept``).
        creator_pids: only objects created by these processes (``gc --pid``).
    """
    client = get_client()
    sweep = _Sweep(include_live, include_kept, creator_pids)
    # Rules first: a sandbox inserts its rules after creating its container and network,
    # so every rule listed here belongs to objects the listings below can still see.
    rules = firewall.tagged_rules()
    _containers(client, sweep)
    _networks(client, sweep)
    _volumes(client, sweep)
    doomed = [
        r
        for r in rules
        if r.sandbox_id not in sweep.keep_sids
        and (sweep.pids is None or r.sandbox_id in sweep.swept_sids)
    ]
    errors = firewall.delete_rules([(r.chain, r.spec) for r in doomed])
    sweep.report.failed += [f"firewall rule {e}" for e in errors]
    if not errors:
        sweep.report.rules += [f"{r.chain} fsm-runner:{r.sandbox_id}" for r in doomed]
    return sweep.report


def _containers(client: Any, sweep: _Sweep) -> None:
    with engine_errors("list containers"):
        containers: list[Any] = client.containers.list(
            # ignore_removed: another gc (or a closing sandbox) may remove one mid-listing.
            all=True,
            filters={"label": LABEL_SANDBOX},
            ignore_removed=True,
        )
    image_labels: dict[str, dict[str, str]] = {}
    for ct in containers:
        image_id = str(ct.attrs.get("Image", ""))
        if image_id not in image_labels:
            image_labels[image_id] = _image_labels(client, image_id)
        sid = owned_container_sid(ct.name, ct.labels, image_labels[image_id])
        if not sid or not sweep.doomed(sid, ct.labels):
            continue
        if sweep.remove(
            "container", ct.name, sid, functools.partial(ct.remove, force=True, v=True)
        ):
            sweep.report.containers.append(ct.name)


def _image_labels(client: Any, image_id: str) -> dict[str, str]:
    try:
        return dict(client.images.get(image_id).labels or {})
    except docker.errors.DockerException:
        return {}  # image gone: then the container's labels cannot be inherited from it


def _networks(client: Any, sweep: _Sweep) -> None:
    with engine_errors("list networks"):
        networks: list[Any] = client.networks.list(filters={"label": LABEL_SANDBOX})
    for net in networks:
        sid = owned_network_sid(net.name, net.attrs.get("Labels") or {})
        if not sid:
            continue
        try:
            net.reload()
        except docker.errors.NotFound:
            continue  # removed since the listing
        if net.attrs.get("Containers"):
            sweep.keep_sids.add(sid)  # still in use: its container's turn comes first
            continue
        if not sweep.doomed(sid, net.attrs.get("Labels") or {}):
            continue
        if sweep.remove("network", net.name, sid, net.remove):
            sweep.report.networks.append(net.name)


def _volumes(client: Any, sweep: _Sweep) -> None:
    with engine_errors("list volumes"):
        volumes: list[Any] = client.volumes.list(filters={"label": LABEL_SANDBOX})
    for vol in volumes:
        labels = vol.attrs.get("Labels") or {}
        sid = labels.get(LABEL_SANDBOX, "")
        if not sid or labels.get(LABEL_KIND) != "volume" or not sweep.doomed(sid, labels):
            continue
        if sweep.remove("volume", vol.name, sid, vol.remove):
            sweep.report.volumes.append(vol.name)
