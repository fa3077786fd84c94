"""Ctrl-C, SIGTERM and SIGHUP stop ``fsm-runner run`` the same way (issue 15 item 8).

Python turns SIGINT into ``KeyboardInterrupt``, so the run's ``finally`` closes the
session; SIGTERM (``kill``, ``docker stop``, systemd, CI cancels) and SIGHUP (the terminal
went away) killed the process outright and left the container, its networks, its volume
and its firewall rules behind. Here all three raise :class:`Interrupted`. A second signal
while the first one unwinds is noted and ignored: cleanup must finish (SIGKILL still
works, and ``fsm-runner gc`` collects what it leaves).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import ParamSpec, TypeVar

from runner.cli import engine

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
P = ParamSpec("P")
R = TypeVar("R")


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; ``signal_name`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.signal_name = signal.Signals(signum).name


class StopSignals:
    """Installed by :func:`stop_signals`: what arrived, and the exit code it calls for."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.shield = False

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "SIGINT"

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as shells report it (130 for Ctrl-C, 143 SIGTERM)."""
        return 128 + (self.signum or signal.SIGINT)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None or self.shield:  # never abort the cleanup
            sys.stderr.write(
                f"fsm-runner: {signal.Signals(signum).name} ignored: still cleaning up "
                "(kill -9 abandons the sandbox; `fsm-runner gc` removes it later)\n"
            )
            return
        if engine.hold_stop_signal(signum):  # raised again once the engine made it
            return
        self.signum = signum
        raise Interrupted(signum)


@contextmanager
def stop_signals() -> Iterator[StopSignals]:
    """While open, SIGINT/SIGTERM/SIGHUP raise :class:`Interrupted` once, then are ignored."""
    state = StopSignals()
    previous = {sig: signal.signal(sig, state._handle) for sig in SIGNALS}
    try:
        yield state
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def shielded(state: StopSignals) -> Iterator[None]:
    """Cleanup that a stop signal must not cut short: signals are noted, not raised."""
    before, state.shield = state.shield, True
    try:
        yield
    finally:
        state.shield = before


_active: list[StopSignals] = []


def during(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a command: stop signals raise :class:`Interrupted` while it runs;
    :func:`active` gives the command its :class:`StopSignals`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with stop_signals() as state:
            _active.append(state)
            try:
                return fn(*args, **kwargs)
            except Interrupted as exc:
                # Landed where the command does not catch it (its imports, its first
                # lines): typer would turn it into a silent exit 130 whatever the signal.
                sys.stderr.write(f"fsm-runner: interrupted ({exc.signal_name})\n")
                raise SystemExit(128 + exc.signum) from None
            finally:
                _active.pop()

    return wrapper


def active() -> StopSignals:
    """The running command's :class:`StopSignals` (a fresh, unarmed one outside a command)."""
    return _active[-1] if _active else StopSignals()


@contextmanager
def cleanup_guard(pending: Callable[[], bool]) -> Iterator[None]:
    """Around a whole command: a stop signal that lands while ``pending()`` (a sandbox is
    still open or being removed) is noted and ignored; otherwise it acts as before.

    A command's own handlers (:func:`during`) come and go inside this; after ``run``
    returns, its container may still be on its way out in a background thread, and a
    SIGTERM then used to end the process half-way through removing the llm network.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def handle(signum: int, frame: FrameType | None) -> None:
        if engine.hold_stop_signal(signum):  # raised again once the engine made it
            return
        if pending():
            sys.stderr.write(
                f"fsm-runner: {signal.Signals(signum).name} ignored: still removing the "
                "sandbox (kill -9 abandons it; `fsm-runner gc` removes it later)\n"
            )
            return
        before = previous[signal.Signals(signum)]
        if callable(before):
            before(signum, frame)
        elif before != signal.SIG_IGN:  # the default action, as if we had never been here
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for sig in SIGNALS:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
