"""Small subnets for per-sandbox networks, so one engine holds thousands of them.

Left to itself the engine gives every new network a whole /16 (or /20) from its default
address pools: about 30 networks in all, shared with everyone else's containers on the
machine. Past that, creating a network fails with "could not find an available,
non-overlapping IPv4 address pool" — measured here with a few concurrent test runs.
An ``llm`` network holds one container and the relay's gateway, so a /28 is plenty: we
carve them from ``FSM_RUNNER_SUBNET_POOL`` (default ``10.213.0.0/16``, 4096 networks),
never from a range the host already routes, and let the engine refuse one another
network took (then the next is tried).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator

POOL_ENV = "FSM_RUNNER_SUBNET_POOL"
DEFAULT_POOL = "10.213.0.0/16"
PREFIX = 28
TRIES = 64
"""Candidates tried per network before giving up (the engine refuses taken ones)."""


def pool() -> ipaddress.IPv4Network:
    """The range per-sandbox networks come from.

    Raises:
        ValueError: ``FSM_RUNNER_SUBNET_POOL`` is not an IPv4 network of /28 or larger.
    """
    raw = os.environ.get(POOL_ENV, "").strip() or DEFAULT_POOL
    try:
        net = ipaddress.IPv4Network(raw, strict=True)
    except ValueError as exc:
        raise ValueError(f"{POOL_ENV}={raw!r}: not an IPv4 network ({exc})") from None
    if net.prefixlen > PREFIX:
        raise ValueError(f"{POOL_ENV}={raw!r}: smaller than one /{PREFIX}")
    return net


def host_routes() -> list[ipaddress.IPv4Network]:
    """What this host already routes (``/proc/net/route``), minus the default route."""
    routes = []
    try:
        with open("/proc/net/route", encoding="ascii") as fh:
            next(fh, None)
            for line in fh:
                fields = line.split()
                if len(fields) < 8 or fields[1] == "00000000":
                    continue
                dest = socket.inet_ntoa(struct.pack("<L", int(fields[1], 16)))
                mask = socket.inet_ntoa(struct.pack("<L", int(fields[7], 16)))
                routes.append(ipaddress.IPv4Network(f"{dest}/{mask}", strict=False))
    except (OSError, ValueError):
        pass
    return routes


def candidates(seed: str) -> Iterator[tuple[str, str]]:
    """(subnet, gateway) pairs to try for the network named by ``seed``, in order.

    Starts at a place derived from ``seed`` so concurrent sessions rarely collide, and
    skips subnets that overlap a route of the host (its LAN, docker0, other bridges).
    """
    base = pool()
    count = 2 ** (PREFIX - base.prefixlen)
    start = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:4], "big") % count
    routed = host_routes()
    size = 2 ** (32 - PREFIX)
    yielded = 0
    for step in range(count):
        if yielded >= TRIES:
            return
        first = int(base.network_address) + ((start + step) % count) * size
        subnet = ipaddress.IPv4Network((first, PREFIX))
        if any(subnet.overlaps(r) for r in routed):
            continue
        yielded += 1
        yield str(subnet), str(subnet.network_address + 1)
