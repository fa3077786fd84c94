"""An engine circuit breaker: when the engine stops answering, pause and report.

Without it a batch whose engine died keeps handing every remaining job to workers
that each retry with backoff and then fail: hundreds of useless attempts and a results
file full of ``infra``. After ``threshold`` consecutive infrastructure failures (or a
failed probe before the start) the breaker opens: no new job is started, the engine is
probed with growing intervals, and one trial job goes first when it answers again
(half-open). If it stays silent past ``max_pause_s`` the batch stops; the jobs it did
not start are ``not_run`` and ``--resume`` picks them up.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

__all__ = ["BreakerState", "EngineBreaker"]


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class EngineBreaker:
    """Decides whether the batch may start another job; fed with each job's outcome."""

    def __init__(
        self,
        probe: Callable[[], bool],
        *,
        threshold: int = 3,
        max_pause_s: float = 600.0,
        first_probe_s: float = 1.0,
        max_probe_s: float = 30.0,
        on_change: Callable[[BreakerState, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._probe = probe
        self._threshold = max(1, threshold)
        self._max_pause_s = max_pause_s
        self._first_probe_s = first_probe_s
        self._max_probe_s = max_probe_s
        self._on_change = on_change
        self._clock = clock
        self._opened_at = 0.0
        self._next_probe = 0.0
        self._interval = first_probe_s
        self._trial_started = False

    def _set(self, state: BreakerState, why: str) -> None:
        if state != self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change(state, why)

    def trip(self, why: str) -> None:
        """Open now (a failed probe before the start, or too many infra failures)."""
        now = self._clock()
        if self.state != BreakerState.OPEN:
            self._opened_at = now
            self._interval = self._first_probe_s
        self._next_probe = now + self._interval
        self._trial_started = False
        self._set(BreakerState.OPEN, why)

    def record(self, outcome: str) -> None:
        """Feed one finished job's outcome (``infra`` counts; any verdict resets)."""
        if outcome == "infra":
            self.failures += 1
            if self.state == BreakerState.HALF_OPEN or self.failures >= self._threshold:
                self.trip(f"{self.failures} consecutive infrastructure failure(s)")
        elif outcome != "not_run":
            self.failures = 0
            if self.state != BreakerState.CLOSED:
                self._set(BreakerState.CLOSED, "engine answers again")

    def allows_start(self) -> bool:
        """May the batch start one more job now? Probes the engine when it is due."""
        if self.state == BreakerState.OPEN and self._clock() >= self._next_probe:
            if self._probe():
                self._set(BreakerState.HALF_OPEN, "engine answered a probe; one trial job")
            else:
                self._interval = min(self._interval * 2, self._max_probe_s)
                self._next_probe = self._clock() + self._interval
        if self.state == BreakerState.CLOSED:
            return True
        return self.state == BreakerState.HALF_OPEN and not self._trial_started

    def started(self) -> None:
        """The batch started a job (the half-open trial takes the only place)."""
        if self.state == BreakerState.HALF_OPEN:
            self._trial_started = True

    @property
    def gave_up(self) -> bool:
        """Open for longer than ``max_pause_s``: stop the batch instead of waiting on."""
        return (
            self.state == BreakerState.OPEN and self._clock() - self._opened_at >= self._max_pause_s
        )
