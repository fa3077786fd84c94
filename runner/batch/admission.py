"""How many sandboxes fit on one host, and a host-wide guard that never admits more.

Memory is what cannot be shared: a sandbox's memory cap is also its swap cap, so the
sum of caps must fit in the host's memory minus a reserve for the engine and the OS.
CPU is compressible (a ``--cpus`` cap is a CFS quota, not a reservation), so sandboxes
may oversubscribe the cores by ``CPU_OVERCOMMIT``: trivial and I/O-bound jobs mostly wait
on the engine, and beyond that factor stage timeouts start to fire. The engine itself
is the last bound: anchors report failures past ~30 concurrent containers.

The guard is a set of ``flock`` slot files per host, taken by the process that opens
the sandbox. It holds across everything running on the host (two batches, several Dask
worker processes), and the kernel releases a slot when its holder dies, even by SIGKILL.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox import Limits

__all__ = [
    "CPU_OVERCOMMIT",
    "ENGINE_CEILING",
    "Capacity",
    "host_slot",
    "machine_capacity",
    "parse_size",
]

CPU_OVERCOMMIT = 4.0
ENGINE_CEILING = 24
"""Below the ~30 concurrent containers where anchors saw the engine fail."""
_MIN_RESERVE = 1 << 30
_RESERVE_SHARE = 0.10
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Docker-style size (``512m``, ``2g``, ``1.5GiB``) in bytes.

    Raises:
        ValueError: not a size.
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 512m, 2g)")
    return int(float(m[1]) * _UNITS[m[2]])


def _mem_total() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


@dataclass(frozen=True)
class Capacity:
    """The admission limit of one host and the figures it came from."""

    cores: int
    memory_bytes: int
    sandbox_memory_bytes: int
    sandbox_cpus: float
    by_memory: int
    by_cpu: int
    engine_ceiling: int = ENGINE_CEILING

    @property
    def limit(self) -> int:
        """Sandboxes at once on this host; at least 1 so a batch always progresses."""
        return max(1, min(self.by_memory, self.by_cpu, self.engine_ceiling))

    def admit(self, requested: int | None) -> int:
        """Workers actually used: what was asked for, never more than fits."""
        return self.limit if requested is None else max(1, min(requested, self.limit))

    def explain(self) -> str:
        gib = 1 << 30
        return (
            f"{self.limit} sandboxes fit: memory {self.memory_bytes / gib:.1f} GiB "
            f"(minus reserve) / {self.sandbox_memory_bytes / gib:.2f} GiB = {self.by_memory}, "
            f"cpu {self.cores} cores x {CPU_OVERCOMMIT:g} / {self.sandbox_cpus:g} = {self.by_cpu}, "
            f"engine ceiling {self.engine_ceiling}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "cores": self.cores,
            "memory_bytes": self.memory_bytes,
            "sandbox_memory_bytes": self.sandbox_memory_bytes,
            "sandbox_cpus": self.sandbox_cpus,
            "by_memory": self.by_memory,
            "by_cpu": self.by_cpu,
            "engine_ceiling": self.engine_ceiling,
        }


def machine_capacity(
    limits: Iterable[Limits] = (),
    *,
    cores: int | None = None,
    memory_bytes: int | None = None,
) -> Capacity:
    """The admission limit for sandboxes with ``limits`` (the largest one counts).

    Args:
        limits: the per-sandbox limits of the jobs to run; none = the defaults.
        cores: override the host's core count (tests, planning another host).
        memory_bytes: override the host's total memory.
    """
    all_limits = list(limits) or [Limits()]
    mem = max(parse_size(lim.memory) for lim in all_limits)
    cpus = max(lim.cpus for lim in all_limits)
    n_cores = cores or os.cpu_count() or 1
    total = memory_bytes or _mem_total()
    usable = total - max(_MIN_RESERVE, int(total * _RESERVE_SHARE))
    return Capacity(
        cores=n_cores,
        memory_bytes=total,
        sandbox_memory_bytes=mem,
        sandbox_cpus=cpus,
        by_memory=max(0, usable // max(mem, 1)),
        by_cpu=math.floor(n_cores * CPU_OVERCOMMIT / cpus),
    )


def _slots_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"fsm-runner-{os.getuid()}" / "slots"


@contextmanager
def host_slot(limit: int, *, directory: Path | None = None, poll_s: float = 0.2) -> Iterator[int]:
    """Hold one of ``limit`` host-wide slots while the body runs; wait while all are taken.

    Yields:
        The slot number (0-based).
    """
    folder = directory or _slots_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    while True:
        for slot in range(max(1, limit)):
            fd = os.open(folder / f"slot-{slot:03d}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield slot
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        time.sleep(poll_s)
