"""How much a run dir keeps: text caps, and the copy caps the environment may set.

A text over its cap is cut with a visible marker (never silently); a copy over its
cap stays in the sandbox and a note says so, so one target cannot fill the host disk.
"""

from __future__ import annotations

import os

from runner.errors import RunnerError

MAX_TEXT_CHARS = 2_000_000
"""Cap of every text file, as in the predecessor; the excess is cut out of the middle."""
MAX_EVENT_FIELD_CHARS = 4_000
"""Cap of one string field in events.jsonl: full texts belong in files, not in the log."""

#: The largest single file copied from a sandbox into the run dir (stage files, samples).
DEFAULT_MAX_COPY_BYTES = 64 * 1024 * 1024
MAX_COPY_ENV = "FSM_RUNNER_MAX_COPY_BYTES"
#: All copies of one pass together (stage files, samples): bytes and entries.
DEFAULT_MAX_PASS_BYTES = 256 * 1024 * 1024
MAX_PASS_BYTES_ENV = "FSM_RUNNER_MAX_PASS_BYTES"
DEFAULT_MAX_PASS_ENTRIES = 10_000
MAX_PASS_ENTRIES_ENV = "FSM_RUNNER_MAX_PASS_ENTRIES"


def cap_text(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """Keep the head and the tail (where tracebacks are) and say how much was cut."""
    if len(text) <= limit:
        return text
    head = limit // 2
    cut = len(text) - limit
    return f"{text[:head]}\n[truncated {cut} chars]\n{text[len(text) - (limit - head) :]}"


def positive_int_env(name: str, default: int, error: type[Exception] = RunnerError) -> int:
    """A positive whole number from the environment, or ``default`` when unset.

    A bad value is an error, never a silent default (it may be a bound the user meant).

    Raises:
        error: set, but not a positive whole number of ASCII digits.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) <= 0:
        raise error(f"{name}={raw!r}: expected a positive whole number")
    return int(raw)


def max_copy_bytes() -> int:
    """The per-file cap on copies into the run dir: ``FSM_RUNNER_MAX_COPY_BYTES`` or 64 MiB.

    A bigger file stays in the sandbox and ``<name>.omitted`` says so, so one sparse
    file from a stage cannot fill the host disk (a samples file that big is validated
    by streaming it from the sandbox instead).

    Raises:
        RunnerError: the variable is set but is not a positive whole number of bytes.
    """
    return positive_int_env(MAX_COPY_ENV, DEFAULT_MAX_COPY_BYTES)


def max_pass_bytes() -> int:
    """Bytes (apparent sizes) all copies of one pass may bring back: 256 MiB by default.

    Raises:
        RunnerError: ``FSM_RUNNER_MAX_PASS_BYTES`` is set but not a positive whole number.
    """
    return positive_int_env(MAX_PASS_BYTES_ENV, DEFAULT_MAX_PASS_BYTES)


def max_pass_entries() -> int:
    """Files, folders and links all copies of one pass may bring back: 10000 by default.

    Raises:
        RunnerError: ``FSM_RUNNER_MAX_PASS_ENTRIES`` is set but not a positive whole number.
    """
    return positive_int_env(MAX_PASS_ENTRIES_ENV, DEFAULT_MAX_PASS_ENTRIES)
