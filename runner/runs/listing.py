"""Reading run dirs back: which directories are runs, and what their events.jsonl says.

The read side of :mod:`runner.runs.run_dir` (which re-exports it): ``fsm-runner runs``
summarises every run dir, including ones a crashed or older runner left behind, while
the writer only ever touches its own run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

EVENTS_FILE = "events.jsonl"
"""The run's event log, one JSON object a line; :meth:`runner.runs.run_dir.RunDir.event` appends."""
RUN_ID_RE = re.compile(r"^(\d{8}_\d{6})(?:_[0-9a-f]{6})?$")
"""Our ids (``YYYYmmdd_HHMMSS_<6 hex>``) and the predecessor's (no suffix)."""


@dataclass(frozen=True)
class RunInfo:
    """A run dir as ``fsm-runner runs`` lists it."""

    run_id: str
    path: Path
    started_at: datetime
    """From the run id (UTC)."""
    status: str
    """The last transition's target state, else the last event's kind, else "no events"."""
    ok: bool | None
    """``ok`` of the last rollout_end/evaluation_end event; None when there is none."""
    events: int
    """Parseable lines in events.jsonl (partial or corrupt lines are skipped)."""
    last_ts: str | None = None


def _read_events(path: Path) -> tuple[int, dict[str, object] | None, bool | None]:
    """Count parseable lines; return the last one and the last rollout/evaluation ``ok``."""
    try:
        raw = path.read_bytes()
    except OSError:
        return 0, None, None
    count, last, ok = 0, None, None
    for line in raw.decode("utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a partial line from a crash, or a corrupt one
        if not isinstance(rec, dict):
            continue
        count, last = count + 1, rec
        if rec.get("kind") in ("rollout_end", "evaluation_end") and isinstance(rec.get("ok"), bool):
            ok = rec["ok"]
    return count, last, ok


def list_runs(repo_root: Path, base: Path | None = None) -> list[RunInfo]:
    """Run dirs under ``base`` (default ``<repo>/.aider_fsm/artifacts``), newest first."""
    root = base if base is not None else repo_root / ".aider_fsm" / "artifacts"
    if not root.is_dir():
        return []
    found: list[tuple[tuple[str, float], RunInfo]] = []
    for path in root.iterdir():
        match = RUN_ID_RE.fullmatch(path.name)
        if not match or not path.is_dir():
            continue
        started = datetime.strptime(match.group(1), "%Y%m%d_%H%M%S").replace(tzinfo=UTC)
        events = path / EVENTS_FILE
        count, last, ok = _read_events(events)
        if last is None:
            status = "no events"
        elif last.get("kind") == "transition" and last.get("to_state"):
            status = str(last["to_state"])
        else:
            status = str(last.get("kind", "unknown"))
        ts = last.get("ts") if last else None
        info = RunInfo(
            path.name, path, started, status, ok, count, ts if isinstance(ts, str) else None
        )
        mtime = (events if events.exists() else path).stat().st_mtime
        found.append(((match.group(1), mtime), info))
    found.sort(key=lambda item: item[0], reverse=True)
    return [info for _, info in found]
