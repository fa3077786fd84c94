"""Reading run dirs back: which directories are runs, and what their events.jsonl says.

The read side of :mod:`runner.runs.run_dir` (which re-exports it): ``fsm-runner runs``
summarises every run dir, including ones a crashed or older runner left behind, while
the writer only ever touches its own run.

A run is over when its session recorded the transition to ``CLOSED`` (the last thing
``EnvSession.close()`` writes). A run dir without it was killed (SIGKILL, a crash, the
machine going down) or is still running: it is ``incomplete`` and never reads as ok,
whatever its last rollout said (issue 15 item 8). A run stopped by a signal records an
``interrupted`` event and is never ok either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner.runs.layout import EVENTS_FILE, RUN_ID_RE, runs_root

FINAL_STATE = "CLOSED"
"""``to_state`` of the session's last transition: the run dir is complete."""
INTERRUPTED = "interrupted"
"""Event kind the CLI records when a signal stops a run (field ``signal``)."""
INCOMPLETE = "incomplete"


@dataclass(frozen=True)
class RunInfo:
    """A run dir as ``fsm-runner runs`` lists it."""

    run_id: str
    path: Path
    started_at: datetime
    """From the run id (UTC)."""
    status: str
    """"interrupted", "incomplete" (no final event), else the last transition's target
    state, else the last event's kind, else "no events"."""
    ok: bool | None
    """``ok`` of the last rollout_end/evaluation_end event, never True for an interrupted
    or incomplete run; None when there is none (or the run did not finish)."""
    events: int
    """Parseable lines in events.jsonl (partial or corrupt lines are skipped)."""
    last_ts: str | None = None


def final_ok(ok: bool | None, *, closed: bool, interrupted: bool) -> bool | None:
    """What a run's ``ok`` may say: a run that did not reach its final event is not ok."""
    if interrupted:
        return False
    if not closed:
        return False if ok is False else None
    return ok


@dataclass
class _Scan:
    count: int = 0
    last: dict[str, Any] | None = None
    ok: bool | None = None
    closed: bool = False
    interrupted: bool = False


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """Parseable lines of events.jsonl (a partial last line from a crash is skipped)."""
    try:
        raw = (run_dir / EVENTS_FILE).read_bytes()
    except OSError:
        return []
    events: list[dict[str, Any]] = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a partial line from a crash, or a corrupt one
        if isinstance(rec, dict):
            events.append(rec)
    return events


def _scan_events(run_dir: Path) -> _Scan:
    """Count parseable lines; the last one, the last rollout/evaluation ``ok``, the end."""
    scan = _Scan()
    for rec in read_events(run_dir):
        scan.count, scan.last = scan.count + 1, rec
        kind = rec.get("kind")
        if kind in ("rollout_end", "evaluation_end") and isinstance(rec.get("ok"), bool):
            scan.ok = rec["ok"]
        elif kind == "transition" and rec.get("to_state") == FINAL_STATE:
            scan.closed = True
        elif kind == INTERRUPTED:
            scan.interrupted = True
    return scan


def list_runs(repo_root: Path, base: Path | None = None) -> list[RunInfo]:
    """Run dirs under ``base`` (default ``<repo>/.aider_fsm/artifacts``), newest first."""
    root = runs_root(repo_root, base)
    if not root.is_dir():
        return []
    found: list[tuple[tuple[str, float], RunInfo]] = []
    for path in root.iterdir():
        match = RUN_ID_RE.fullmatch(path.name)
        if not match or not path.is_dir():
            continue
        started = datetime.strptime(match.group(1), "%Y%m%d_%H%M%S").replace(tzinfo=UTC)
        events = path / EVENTS_FILE
        scan = _scan_events(path)
        last = scan.last
        if last is None:
            status = "no events"
        elif scan.interrupted:
            status = INTERRUPTED
        elif not scan.closed:
            status = INCOMPLETE
        elif last.get("kind") == "transition" and last.get("to_state"):
            status = str(last["to_state"])
        else:
            status = str(last.get("kind", "unknown"))
        ts = last.get("ts") if last else None
        ok = final_ok(scan.ok, closed=scan.closed, interrupted=scan.interrupted)
        info = RunInfo(
            path.name, path, started, status, ok, scan.count, ts if isinstance(ts, str) else None
        )
        mtime = (events if events.exists() else path).stat().st_mtime
        found.append(((match.group(1), mtime), info))
    found.sort(key=lambda item: item[0], reverse=True)
    return [info for _, info in found]
