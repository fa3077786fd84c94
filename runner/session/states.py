"""The session's finite state machine: the "FSM" of fsm-runner.

    NEW -> BOOTSTRAPPED -> DEPLOYED -> ROLLED_OUT -> EVALUATED -> CLOSED
    any open state -> FAILED -> REPAIRING -> (retry from BOOTSTRAPPED or NEW)
    any state -> CLOSED

Every transition is appended to ``events.jsonl`` so a reader can replay a run.
"""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    NEW = "NEW"
    BOOTSTRAPPED = "BOOTSTRAPPED"
    DEPLOYED = "DEPLOYED"
    ROLLED_OUT = "ROLLED_OUT"
    EVALUATED = "EVALUATED"
    FAILED = "FAILED"
    REPAIRING = "REPAIRING"
    CLOSED = "CLOSED"


_OPEN = {State.NEW, State.BOOTSTRAPPED, State.DEPLOYED, State.ROLLED_OUT, State.EVALUATED}

ALLOWED: dict[State, frozenset[State]] = {
    State.NEW: frozenset({State.BOOTSTRAPPED, State.FAILED, State.CLOSED}),
    State.BOOTSTRAPPED: frozenset({State.DEPLOYED, State.EVALUATED, State.FAILED, State.CLOSED}),
    State.DEPLOYED: frozenset(
        {State.ROLLED_OUT, State.EVALUATED, State.BOOTSTRAPPED, State.FAILED, State.CLOSED}
    ),
    State.ROLLED_OUT: frozenset(
        {State.EVALUATED, State.BOOTSTRAPPED, State.DEPLOYED, State.FAILED, State.CLOSED}
    ),
    State.EVALUATED: frozenset({State.CLOSED, State.BOOTSTRAPPED, State.FAILED}),
    State.FAILED: frozenset({State.REPAIRING, State.BOOTSTRAPPED, State.NEW, State.CLOSED}),
    State.REPAIRING: frozenset({State.NEW, State.BOOTSTRAPPED, State.FAILED, State.CLOSED}),
    State.CLOSED: frozenset(),
}


class InvalidTransition(RuntimeError):
    """A bug in the session: a transition the state machine does not allow."""


def check_transition(current: State, target: State) -> None:
    """Raise when ``current -> target`` is not an edge of the machine."""
    if target not in ALLOWED[current]:
        raise InvalidTransition(f"session cannot go from {current} to {target}")


def is_open(state: State) -> bool:
    return state in _OPEN
