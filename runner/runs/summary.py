"""A run dir read back as one structure (:func:`load_run`).

``events.jsonl`` is the source of truth (the session appends every stage and command
to it); ``sandbox.json`` adds the container profile and ``<stage>_summary.json`` files
fill in stages whose events were lost (a crash between a stage's end and its event).
Text that came from the target (reasons, commands, findings) is stripped of terminal
control sequences as it is read (:func:`runner.trust.terminal.strip_controls`), so
neither the terminal nor ``report.md`` shows a target's escapes. ``fsm-runner show``,
``fsm-runner runs`` and ``report.md`` (:mod:`runner.runs.report`) all read runs through
:func:`load_run`, so the terminal and the report always agree. This module only reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from runner.runs.layout import command_stem
from runner.runs.listing import FINAL_STATE, INCOMPLETE, INTERRUPTED, final_ok, read_events
from runner.trust.terminal import strip_controls

__all__ = [
    "CommandRow",
    "RunSummary",
    "StageRow",
    "command_row",
    "load_run",
    "read_events",
    "run_status",
]

_END_KINDS = ("rollout_end", "evaluation_end", "stage_run_end")
"""Events that carry a result: a rollout, an evaluation, one stage run alone (run --stage)."""


@dataclass
class CommandRow:
    """One executed (or refused) command, from its ``command`` event."""

    stage: str
    index: int
    attempt: int
    cmd: str
    rc: int | None
    duration_s: float | None
    dir: str
    timed_out: bool = False
    oom_killed: bool = False
    truncated: bool = False
    blocked_reason: str | None = None

    def log(self, run_dir: Path, kind: str) -> Path:
        """``<stage>_cmdCC_tryTT_<kind>.txt`` (kind: cmd, stdout, stderr, result)."""
        suffix = "result.json" if kind == "result" else f"{kind}.txt"
        stem = command_stem(self.stage, self.index, self.attempt)
        return run_dir / self.dir / f"{stem}_{suffix}"

    @property
    def outcome(self) -> str:
        """rc, or why there is none worth reading (blocked, timeout, OOM)."""
        if self.blocked_reason:
            return f"blocked: {self.blocked_reason}"
        if self.oom_killed:
            return "OOM-killed"
        if self.timed_out:
            return "timed out"
        return f"rc={self.rc}"


@dataclass
class StageRow:
    """One run of one stage (a stage may run more than once: retries after repair, teardown)."""

    stage: str
    network: str | None = None
    ok: bool | None = None
    """None while running, or when the run stopped before the stage ended."""
    duration_s: float | None = None
    reason: str = ""
    dir: str | None = None
    commands: list[CommandRow] = field(default_factory=list)

    @property
    def status(self) -> str:
        return {True: "ok", False: "FAILED", None: "did not finish"}[self.ok]


@dataclass
class RunSummary:
    """Everything ``show`` prints and ``report.md`` says about one run."""

    run_id: str
    path: Path
    repo: str | None = None
    source: str | None = None
    commit: str | None = None
    mode: str | None = None
    llm_kind: str | None = None
    started: str | None = None
    ended: str | None = None
    state: str | None = None
    ok: bool | None = None
    failed_stage: str | None = None
    reason: str = ""
    metrics: dict[str, Any] | None = None
    metrics_accepted: bool = False
    """False for a red run's metrics: kept with its numbers, not counted (issue 16.3)."""
    hints: dict[str, Any] | None = None
    """Official commands: mode, why, found, ran (runner/trust/hint_check.py)."""
    dirty: bool = False
    """The local checkout had uncommitted changes: the run is not of ``commit`` alone."""
    samples: int | None = None
    phase: str | None = None
    """``rollout`` or ``evaluation``: which call's end event the result comes from."""
    closed: bool = False
    """The session recorded its final transition (to CLOSED): the run is over."""
    interrupted: str | None = None
    """The signal that stopped the run (``SIGINT``, ``SIGTERM``...), when one did."""
    sandbox: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    stages: list[StageRow] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    error_files: list[Path] = field(default_factory=list)

    @property
    def score(self) -> float | None:
        value = (self.metrics or {}).get("score")
        return float(value) if isinstance(value, int | float) and value is not True else None

    @property
    def duration_s(self) -> float | None:
        if not self.started or not self.ended:
            return None
        return (_ts(self.ended) - _ts(self.started)).total_seconds()

    @property
    def failed_row(self) -> StageRow | None:
        """The stage run that failed (the one named by the result, else the last failure).

        A check after a stage that passed (metrics, official commands, audit) points at
        that stage's last run: its command and output are what to read.
        """
        failed = [s for s in self.stages if s.ok is False]
        named = [s for s in failed if s.stage == self.failed_stage]
        rows = named or failed
        if not rows and self.ok is False:
            checked = ("evaluation", "benchmark") if self.failed_stage == "metrics" else ()
            wanted = {self.failed_stage, *checked}
            rows = [s for s in self.stages if s.stage in wanted and s.commands]
        return rows[-1] if rows else None


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _opt_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _opt_float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def command_row(ev: dict[str, Any]) -> CommandRow:
    """A ``command`` event as a row (the live view reads them as they are appended)."""
    return CommandRow(
        stage=str(ev.get("stage", "?")),
        index=_opt_int(ev.get("index")) or 0,
        attempt=_opt_int(ev.get("attempt")) or 0,
        cmd=strip_controls(str(ev.get("cmd", ""))),
        rc=_opt_int(ev.get("rc")),
        duration_s=_opt_float(ev.get("duration_s")),
        dir=str(ev.get("dir", "")),
        timed_out=ev.get("timed_out") is True,
        oom_killed=ev.get("oom_killed") is True,
        truncated=ev.get("truncated") is True,
        blocked_reason=strip_controls(ev["blocked_reason"])
        if isinstance(ev.get("blocked_reason"), str)
        else None,
    )


def load_run(run_dir: Path) -> RunSummary:
    """Read a run dir (complete, failed, or cut short) into a :class:`RunSummary`."""
    summary = RunSummary(run_id=run_dir.name, path=run_dir)
    open_rows: dict[str, StageRow] = {}
    for ev in read_events(run_dir):
        kind = ev.get("kind")
        summary.started = summary.started or ev.get("ts")
        summary.ended = ev.get("ts") or summary.ended
        if kind == "session_created":
            summary.repo, summary.source = ev.get("repo"), ev.get("source")
            summary.commit = ev.get("commit")
            summary.dirty = ev.get("dirty") is True
        elif kind == "hints_mode" and summary.hints is None:
            summary.hints = {k: ev.get(k) for k in ("mode", "why", "found")}
        elif kind == "rollout_start":
            summary.mode, summary.llm_kind = ev.get("mode"), ev.get("llm_kind")
        elif kind == "stage_start":
            row = StageRow(stage=str(ev.get("stage")), network=ev.get("network"))
            summary.stages.append(row)
            open_rows[row.stage] = row
        elif kind == "command":
            cmd = command_row(ev)
            row = open_rows.get(cmd.stage) or StageRow(stage=cmd.stage)
            if row.stage not in open_rows:
                summary.stages.append(row)
                open_rows[row.stage] = row
            row.dir = row.dir or cmd.dir
            row.commands.append(cmd)
        elif kind == "stage_end" and str(ev.get("stage")) in open_rows:
            row = open_rows.pop(str(ev.get("stage")))
            row.ok = ev.get("ok") is True
            row.duration_s = _opt_float(ev.get("duration_s"))
            row.reason = strip_controls(str(ev.get("reason") or ""))
        elif kind == "transition":
            summary.state = ev.get("to_state")
            summary.closed = summary.closed or summary.state == FINAL_STATE
        elif kind == INTERRUPTED:
            summary.interrupted = str(ev.get("signal") or "a signal")
        elif kind in _END_KINDS:
            summary.phase = str(kind).removesuffix("_end")
            summary.ok = ev.get("ok") is True
            summary.failed_stage = ev.get("failed_stage")
            summary.reason = strip_controls(str(ev.get("reason") or ""))
            if isinstance(ev.get("metrics"), dict):
                summary.metrics = ev["metrics"]
                # Runs written before issue 16.3 had metrics only when they were accepted.
                accepted = ev.get("metrics_accepted", summary.ok)
                summary.metrics_accepted = accepted is True
            if isinstance(ev.get("hints"), dict):
                summary.hints = ev["hints"]
            summary.samples = _opt_int(ev.get("samples")) or summary.samples
        elif isinstance(kind, str) and ("audit" in kind or kind == "stage_files_refused"):
            detail = {k: v for k, v in ev.items() if k not in ("ts", "kind")}
            summary.findings.append(strip_controls(f"{kind}: {json.dumps(detail, default=str)}"))
    _add_unlogged_stages(summary)
    # Killed or interrupted runs never read as ok, whatever their rollout said (issue 15).
    summary.ok = final_ok(
        summary.ok, closed=summary.closed, interrupted=summary.interrupted is not None
    )
    if summary.interrupted and not summary.reason:
        summary.reason = f"interrupted by {summary.interrupted}"
    summary.sandbox = _read_json(run_dir / "sandbox.json")
    summary.policy = _read_json(run_dir / "policy.json")
    # The session writes contract and audit errors next to the commands, as *_error.txt.
    for path in sorted(run_dir.glob("env_api/*/*_error.txt")):
        if "audit" in path.name:
            summary.findings.append(
                strip_controls(f"{path.relative_to(run_dir)}: {_first_line(path)}")
            )
        else:
            summary.error_files.append(path)
    return summary


def _first_line(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""
    return text.splitlines()[0][:300] if text else ""


def _add_unlogged_stages(summary: RunSummary) -> None:
    """Stage summaries the events do not cover (their end event never made it to disk)."""
    seen = {(s.dir, s.stage) for s in summary.stages}
    for path in sorted(summary.path.glob("env_api/*/*_summary.json")):
        stage = path.name.removesuffix("_summary.json")
        rel = path.parent.relative_to(summary.path).as_posix()
        data = _read_json(path)
        match = [s for s in summary.stages if (s.dir, s.stage) == (rel, stage) and s.ok is None]
        if match:
            match[-1].ok = data.get("ok") is True
        elif (rel, stage) not in seen and isinstance(data.get("ok"), bool):
            summary.stages.append(StageRow(stage=stage, ok=data["ok"], dir=rel))


def run_status(s: RunSummary) -> str:
    """ok, failed, interrupted, or incomplete (no final event): one word for tables and JSON."""
    if s.interrupted:
        return INTERRUPTED
    if not s.closed:
        return INCOMPLETE
    return {True: "ok", False: "failed", None: "no result"}[s.ok]
