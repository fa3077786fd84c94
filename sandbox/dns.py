"""One ``/etc/resolv.conf`` for every sandbox, whatever networks it has been attached to.

The engine writes a container's resolv.conf per attachment: created with no network, it
gets the host's nameservers; connected to a user bridge (egress, llm) it is rewritten to
the embedded DNS at ``127.0.0.11``, and disconnecting never writes it back. A ``none``
stage after an egress stage (bootstrap on a cold run) then asks ``127.0.0.11``, where
nothing answers once the bridge is gone: ``getent hosts`` waited 20 s (measured), while
the same stage in a sandbox opened from a bootstrap snapshot (never attached) failed at
once. Cold and warm runs saw different DNS (issue 16.4).

So every sandbox gets one read-only file, mounted at creation: the host's nameservers
as the engine gives a default-bridge container (loopback ones dropped, a systemd stub
replaced by its upstream list, Google's as the engine's own fallback). The engine never
rewrites a file the user mounted. Egress lookups reach those servers through the
bridge's NAT; in a ``none`` stage a lookup fails at once (no route), cold or warm.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import tempfile
from pathlib import Path

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
SYSTEMD_RESOLV_CONF = Path("/run/systemd/resolve/resolv.conf")
FALLBACK_NAMESERVERS = ("8.8.8.8", "8.8.4.4")
"""What the engine uses when the host has only loopback nameservers."""


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def resolv_conf_text(host_file: Path = HOST_RESOLV_CONF) -> str:
    """The resolv.conf every sandbox sees: nameservers, search and options of the host's."""
    try:
        lines = host_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    servers = [ln.split()[1] for ln in lines if ln.startswith("nameserver") and len(ln.split()) > 1]
    stub = servers and all(_is_loopback(s) for s in servers)
    if stub and host_file != SYSTEMD_RESOLV_CONF and SYSTEMD_RESOLV_CONF.is_file():
        return resolv_conf_text(SYSTEMD_RESOLV_CONF)  # a stub resolver: what it forwards to
    kept = [s for s in servers if not _is_loopback(s)] or list(FALLBACK_NAMESERVERS)
    out = [f"nameserver {s}" for s in kept]
    out += [ln.strip() for ln in lines if ln.startswith(("search ", "domain ", "options "))]
    return "\n".join(out) + "\n"


def resolv_conf_file(cache: Path) -> Path:
    """The file to mount (written once per content, atomically, readable by the engine)."""
    text = resolv_conf_text()
    folder = cache / "dns"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"resolv-{hashlib.sha256(text.encode()).hexdigest()[:16]}.conf"
    if not path.is_file():
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".resolv-")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    return path
