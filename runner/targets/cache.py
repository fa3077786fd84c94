"""The remote-target cache shared by git clones and HF snapshots.

Entries are never deleted or shared: each name hashes the target's full identity, and
one ``flock`` per entry serialises concurrent resolves (the predecessor shared dirs
between URLs and deleted snapshots in place).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from runner.errors import TargetError

__all__ = ["DEFAULT_CLONES_DIR", "entry_name", "env_number", "locked"]

DEFAULT_CLONES_DIR = Path("~/.cache/fsm-runner/clones")


def entry_name(prefix: str, readable: str, identity: str) -> str:
    """Readable slug plus a hash of the full identity, so two targets never share a dir."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", readable).strip("._-")[:60] or "repo"
    return f"{prefix}{slug}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


@contextmanager
def locked(lock_path: Path, timeout_s: float) -> Iterator[None]:
    """Exclusive ``flock`` on ``lock_path``; each open() is its own lock, so threads exclude too."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TargetError(f"timed out waiting for lock {lock_path}") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def env_number(name: str, default: float) -> float:
    """A positive number from the environment (a fetch's bound); unset or <= 0 means default."""
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise TargetError(f"{name} must be a number, got {raw!r}") from None
    return value if value > 0 else default
