"""Open and close helpers of the Docker backend: background work, removals, create keys.

Kept apart from ``docker.py`` (the sandbox and its exec) so each stays one page:

* ``Background``: run a step in a thread while the caller does another (the volume copy
  overlaps the container start);
* background removal (issue 17): ``close()`` may hand the container's removal to a
  thread that the process joins before it exits;
* ``create_key`` / ``can_prepare``: when a container made ahead of time (``pool.py``)
  is the one a spec would have made.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from .base import SandboxSpec

_background = False
_removals: set[threading.Thread] = set()
_removals_lock = threading.Lock()


def remove_in_background(enabled: bool = True) -> None:
    """From now on ``close()`` removes containers in a thread and returns at once.

    For a command that has its result once the last stage ran (``fsm-runner run``): the
    removal (~50-400 ms of engine time) overlaps writing the manifest, the report and
    the result. The threads are not daemons, so the interpreter joins them before the
    process exits (``wait_for_removals`` joins them earlier); a process killed before
    that leaves labelled containers that ``fsm-runner gc`` removes (issue 17).
    """
    global _background
    _background = enabled


def removing_in_background() -> bool:
    return _background


def start_removal(name: str, remove: Any) -> None:
    """Run ``remove()`` in a non-daemon thread, tracked until it ends."""

    def run() -> None:
        try:
            remove()
        finally:
            with _removals_lock:
                _removals.discard(threading.current_thread())

    thread = threading.Thread(target=run, name=name, daemon=False)
    with _removals_lock:
        _removals.add(thread)
    thread.start()


def removals_pending() -> bool:
    """True while a background removal still runs (a stop signal must not cut it short)."""
    with _removals_lock:
        return any(t.is_alive() for t in _removals)


def wait_for_removals(timeout: float | None = None) -> bool:
    """Join the background removals started so far; True when none is left running."""
    with _removals_lock:
        pending = list(_removals)
    deadline = None if timeout is None else time.monotonic() + timeout
    for thread in pending:
        thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    with _removals_lock:
        return not any(t.is_alive() for t in _removals)


class Background:
    """Run ``fn`` in a thread now; ``result()`` joins and re-raises its exception."""

    def __init__(self, fn: Any, *, daemon: bool = True) -> None:
        self._fn = fn
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=daemon)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:  # re-raised in the caller's thread by result()
            self._error = exc

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def can_prepare(spec: SandboxSpec) -> bool:
    """A spec whose container a warm pool can create ahead: a copy into a fillable volume."""
    return (
        spec.backend == "docker"
        and spec.workspace_mode == "copy"
        and not spec.workspace_in_image
        and can_fill_volumes()
    )


def create_key(spec: SandboxSpec) -> tuple[Any, ...]:
    """What ``_create`` makes of ``spec``: two specs with one key get identical containers.

    The rest of a spec (the workspace's source and exclusions, the network, the model
    endpoint) is applied after start, so a prepared sandbox can take it on (``adopt``).
    """
    return (
        spec.backend,
        spec.image,
        spec.workspace,
        spec.workspace_mode,
        spec.workspace_in_image,
        spec.limits,
        tuple(sorted(spec.env.items())),
        tuple(sorted((str(Path(h).resolve()), c) for h, c in spec.readonly_mounts.items())),
        tuple(sorted(spec.labels.items())),
        str(spec.workspace_src.resolve())
        if spec.workspace_src is not None and spec.workspace_mode == "bind"
        else None,
    )


def engine_is_local() -> bool:
    """Bind mounts and volume mountpoints name host paths: only an engine on this host sees ours."""
    host = os.environ.get("DOCKER_HOST", "")
    return not host or host.startswith("unix://")


def can_fill_volumes() -> bool:
    """True when volume mountpoints are on this host and writable by us (root, local engine)."""
    if os.environ.get("FSM_RUNNER_WORKSPACE_COPY") == "archive":  # force the portable path
        return False
    return os.geteuid() == 0 and engine_is_local()
