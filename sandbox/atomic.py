"""Engine calls that create something finish before a stop signal acts on them.

A stop signal turned into an exception (the CLI's SIGINT/SIGTERM/SIGHUP handling) that
lands while the engine is creating a container or a network abandons the HTTP request,
not the creation: under load the engine finished making an llm network after the
unwinding caller had already tried to remove it by name, and the network stayed until
``fsm-runner gc`` (the chaos test caught it). Inside :func:`creating` the signal handler
is told to hold the signal (:func:`hold_stop_signal`); it is raised again as soon as the
call returned, so the caller unwinds knowing something that exists.

Only the main thread is concerned: Python runs signal handlers there, and creates made
in other threads (a warm pool's) are never interrupted by them.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_depth = 0
_held: list[int] = []


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def creating() -> Iterator[None]:
    """Around one engine call that creates a resource: a stop signal waits for its end."""
    global _depth
    if not _main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _held:
            signum = _held[0]
            _held.clear()
            signal.raise_signal(signum)  # the handler acts now, the resource has a name


def hold_stop_signal(signum: int) -> bool:
    """For a signal handler: True when a create is in flight and ``signum`` was held."""
    if _depth and _main_thread():
        _held.append(signum)
        return True
    return False
