"""Warm pools: sandboxes created and started ahead of time, each handed out once.

Opening a sandbox costs its container's create and start (~180 ms of engine time on
the reference machine) before the first command can run. A ``WarmPool`` does that work
ahead, in a thread, for a spec the caller expects to open next (issue 17):

* ``fsm-runner run`` prepares the one sandbox its session will open while Python
  imports and parses the contract;
* a batch worker prepares the next job's sandbox while the current job runs.

``open_sandbox(spec)`` asks the installed pool first. A prepared sandbox serves a spec
only when ``create_key`` says the spec would have made the very same container
(image, limits, capabilities, mounts, env, labels: one ``_create`` makes both); it then
gets its workspace copied and its network set exactly as a fresh one (``adopt``).
Otherwise it is removed and the spec is opened fresh: a wrong guess costs time, never
isolation.

The pool pre-creates, it does not recycle: a sandbox leaves the pool once, and its
session's ``close()`` removes it as any other. Prepared containers carry the same
creator labels as every sandbox, so ``fsm-runner gc`` removes them when their creator
is dead; an unused one is removed by ``close()``, or at exit with every open sandbox.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

from .base import SandboxSpec
from .docker import DockerSandbox
from .lifecycle import Background, can_prepare, create_key

_installed: WarmPool | None = None


def install(pool: WarmPool | None) -> WarmPool | None:
    """Make ``open_sandbox`` take from ``pool`` (None: stop); returns the previous one."""
    global _installed
    previous, _installed = _installed, pool
    return previous


def installed() -> WarmPool | None:
    return _installed


@dataclasses.dataclass
class _Entry:
    key: tuple[Any, ...]
    spec: SandboxSpec
    job: Background
    claimed: bool = False


class WarmPool:
    """Up to ``size`` prepared sandboxes; optionally refilled with the last spec taken.

    ``relabel=(label, new_value)``: each refill gets ``label`` set to a fresh
    ``new_value()`` (the run id a batch worker hands its next session, so the
    container carries that run's label from birth); ``claim()`` hands the value out.
    """

    def __init__(
        self,
        *,
        size: int = 1,
        refill: bool = False,
        relabel: tuple[str, Callable[[], str]] | None = None,
    ) -> None:
        self.size = max(1, size)
        self.refill = refill
        self.relabel = relabel
        self.hits = 0
        self.misses = 0
        self._entries: list[_Entry] = []
        self._lock = threading.Lock()
        self._closed = False

    def prepare(self, spec: SandboxSpec) -> bool:
        """Start creating a sandbox for ``spec`` in the background; False if none fits."""
        if not can_prepare(spec):
            return False
        with self._lock:
            if self._closed or len(self._entries) >= self.size:
                return False
            # Not a daemon: an exit mid-create waits for it, then the atexit hook removes it.
            job = Background(lambda: DockerSandbox(spec, prepare=True), daemon=False)
            entry = _Entry(create_key(spec), spec, job)
            self._entries.append(entry)
        return True

    def claim(self) -> str | None:
        """The relabel value of the oldest unclaimed entry, now reserved for one session."""
        if self.relabel is None:
            return None
        label = self.relabel[0]
        with self._lock:
            for entry in self._entries:
                if not entry.claimed:
                    entry.claimed = True
                    return entry.spec.labels.get(label)
        return None

    def take(self, spec: SandboxSpec) -> DockerSandbox | None:
        """A prepared sandbox adopted for ``spec``, or None (open it fresh).

        Entries that can no longer serve anyone (claimed by a session that opened
        something else) are removed on the way.
        """
        key = create_key(spec)
        with self._lock:
            found = next((e for e in self._entries if e.key == key), None)
            # Without refills the pool held a guess for one open: this was it. With them,
            # an entry claimed by a session that opened something else serves no one.
            stale = [e for e in self._entries if e is not found and (e.claimed or not self.refill)]
            for entry in [*stale, *([found] if found else [])]:
                self._entries.remove(entry)
        for entry in stale:
            _discard(entry)
        sandbox: DockerSandbox | None = None
        if found is not None:
            try:
                sandbox = found.job.result()
            except Exception:
                sandbox = None  # refused ahead of time: the fresh open will say why
        if sandbox is None:
            self.misses += 1
            self._refill_from(spec)
            return None
        try:
            sandbox.adopt(spec)
        finally:
            # After the adoption, so making the next one does not slow this one's start.
            self._refill_from(spec)
        self.hits += 1
        return sandbox

    def _refill_from(self, spec: SandboxSpec) -> None:
        if not self.refill or self._closed:
            return
        labels = dict(spec.labels)
        if self.relabel is not None:
            label, new_value = self.relabel
            labels[label] = new_value()
        self.prepare(dataclasses.replace(spec, labels=labels))

    def close(self, *, wait: bool = True) -> None:
        """Remove every sandbox still in the pool. Idempotent."""
        with self._lock:
            self._closed = True
            entries, self._entries = self._entries, []
        for entry in entries:
            _discard(entry, wait=wait)


def _discard(entry: _Entry, *, wait: bool = False) -> None:
    try:
        sandbox: DockerSandbox = entry.job.result()
    except Exception:
        return  # never created, or already closed by its own failure
    sandbox.close(wait=wait)


def take_prepared(spec: SandboxSpec) -> DockerSandbox | None:
    """``open_sandbox``'s first step: a prepared sandbox from the installed pool, if any."""
    pool = _installed
    return None if pool is None else pool.take(spec)
