"""A run dir read back as one structure, and ``report.md`` written from it.

``events.jsonl`` is the source of truth (the session appends every stage and command
to it); ``sandbox.json`` adds the container profile and ``<stage>_summary.json`` files
fill in stages whose events were lost (a crash between a stage's end and its event).
Text that came from the target (reasons, commands, findings) is stripped of terminal
control sequences as it is read (:func:`runner.trust.terminal.strip_controls`), so
neither the terminal nor ``report.md`` shows a target's escapes. This module only reads the run dir; the one file it writes, ``report.md``, goes through
:class:`runner.runs.run_dir.RunDir`, the only writer there. ``fsm-runner show`` and
``fsm-runner runs`` read runs through :func:`load_run` too, so the terminal and the
report always agree; :func:`summary_json` is the same structure for ``--json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from runner.runs.listing import FINAL_STATE, INCOMPLETE, INTERRUPTED, final_ok
from runner.runs.run_dir import EVENTS_FILE, RunDir
from runner.trust.terminal import strip_controls

REPORT_FILE = "report.md"
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
        stem = f"{self.stage}_cmd{self.index + 1:02d}_try{self.attempt + 1:02d}"
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


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """Parseable lines of events.jsonl (a partial last line from a crash is skipped)."""
    try:
        raw = (run_dir / EVENTS_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    events: list[dict[str, Any]] = []
    for line in raw.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            events.append(rec)
    return events


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


# -- report.md ------------------------------------------------------------------------


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.2f}s" if value < 10 else f"{value:.1f}s"
    return f"{int(value // 60)}m{value % 60:02.0f}s"


def _cell(text: object, limit: int = 90) -> str:
    flat = " ".join(str(text).split())
    flat = flat if len(flat) <= limit else flat[: limit - 1] + "…"
    return flat.replace("|", "\\|") or " "


def _result_line(s: RunSummary) -> str:
    if s.interrupted:
        return f"**interrupted** by {s.interrupted} (not ok)"
    if not s.closed and s.started:
        return f"**{INCOMPLETE}**: no final event (the runner was killed, or is still running)"
    if s.ok is None:
        return "did not finish (no rollout or evaluation result was recorded)"
    if s.ok:
        return "**ok**" if s.phase != "rollout" else "**ok** (rollout only: no evaluation recorded)"
    return f"**FAILED** at `{s.failed_stage or '?'}`: {_cell(s.reason, 300)}"


def score_text(s: RunSummary) -> str:
    """The score, marked when the run failed and the number was not accepted."""
    if s.score is None:
        return "-"
    return f"{s.score:g}" + ("" if s.metrics_accepted else " (not accepted)")


def hints_text(hints: dict[str, Any] | None) -> str:
    """One line about the official commands: mode, why, found, which ran."""
    if not hints or not hints.get("mode"):
        return ""
    found = [str(c) for c in hints.get("found") or []]
    line = f"{hints['mode']} ({hints.get('why') or '-'})"
    if found:
        line += f"; found: {', '.join(found[:3])}{', ...' if len(found) > 3 else ''}"
    if "ran" in hints:
        ran = [str(c) for c in hints.get("ran") or []]
        line += f"; ran: {', '.join(ran) if ran else 'none'}"
    return line


def output_tail(cmd: CommandRow, run_dir: Path, lines: int = 10) -> list[tuple[str, list[str]]]:
    """The last ``lines`` lines of a command's stderr and stdout (stderr first), as recorded."""
    out: list[tuple[str, list[str]]] = []
    for kind in ("stderr", "stdout"):
        try:
            with open(cmd.log(run_dir, kind), "rb") as fh:
                fh.seek(max(0, fh.seek(0, 2) - 16384))
                text = fh.read().decode("utf-8", errors="replace")
        except OSError:
            continue
        tail = [ln.rstrip() for ln in text.strip().splitlines()[-lines:]]
        if tail:
            out.append((kind, tail))
    return out


def render_markdown(s: RunSummary) -> str:
    """The report as Markdown: result, stages, failure, metrics, sandbox, findings."""
    score = score_text(s)
    commit = f", commit {s.commit}" if s.commit else ""
    commit += " + uncommitted changes (dirty)" if s.dirty else ""
    target = f"`{s.repo}` ({s.source or '?'}{commit})"
    lines = [
        f"# fsm-runner run {s.run_id}",
        "",
        f"- Result: {_result_line(s)}",
        f"- Score: {score}",
        f"- Target: {target}",
        f"- Mode: {s.mode or '-'} · model: {s.llm_kind or '-'}"
        + (f" · samples: {s.samples}" if s.samples is not None else ""),
        f"- Started: {s.started or '-'} · duration: {fmt_seconds(s.duration_s)}"
        f" · final state: {s.state or '-'}",
        *([f"- Official commands: {_cell(hints_text(s.hints), 400)}"] if s.hints else []),
        "",
        "## Stages",
        "",
        "| # | stage | result | duration | network | commands | pass |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(s.stages, 1):
        lines.append(
            f"| {i} | {row.stage} | {row.status} | {fmt_seconds(row.duration_s)} | "
            f"{row.network or '-'} | {len(row.commands)} | {_cell(row.dir or '-')} |"
        )
    if not s.stages:
        lines.append("| - | no stage ran | | | | | |")
    lines += _failure_section(s)
    if s.metrics is not None:
        title = "## Metrics" if s.metrics_accepted else "## Metrics (not accepted: the run failed)"
        lines += ["", title, "", "```json", json.dumps(s.metrics, indent=2), "```"]
    lines += _sandbox_section(s.sandbox, s.policy)
    lines += ["", "## Audit findings", ""]
    lines += [f"- {_cell(f, 400)}" for f in s.findings] or ["- none recorded"]
    lines += [
        "",
        "## Files",
        "",
        "- `events.jsonl`: every state transition, stage and command, in order",
        "- `sandbox.json`: image, limits and the network each stage got",
        "- `env_api/<pass>/<stage>_cmdCC_tryTT_{cmd,stdout,stderr}.txt` and `_result.json`:"
        " each command (secrets masked)",
        "",
    ]
    return "\n".join(lines)


def _failure_section(s: RunSummary) -> list[str]:
    row = s.failed_row
    if s.ok is not False and row is None:
        return []
    out = ["", "## Failure", "", f"- Stage: `{s.failed_stage or (row.stage if row else '?')}`"]
    if s.reason:
        out.append(f"- Reason: {_cell(s.reason, 600)}")
    if row is not None and row.commands:
        last = row.commands[-1]
        out += [
            f"- Command: `{_cell(last.cmd, 200)}` ({last.outcome})",
            f"- Logs: `{last.log(s.path, 'stdout').relative_to(s.path)}`,"
            f" `{last.log(s.path, 'stderr').relative_to(s.path)}`",
        ]
        for kind, tail in output_tail(last, s.path):
            out += ["", f"Last lines of its {kind}:", "", "```text", *tail, "```"]
    out += [f"- Contract error: `{p.relative_to(s.path)}`" for p in s.error_files]
    return out


def _sandbox_section(sb: dict[str, Any], policy: dict[str, Any]) -> list[str]:
    rules = (
        f"- Command policy: {policy.get('mode', '-')} (unattended: {policy.get('unattended', '-')})"
    )
    if not sb:
        return ["", "## Sandbox", "", "- no sandbox was opened", rules]
    limits = _mapping(sb.get("limits"))
    return [
        "",
        "## Sandbox",
        "",
        f"- Backend: {sb.get('backend', '-')} · image: `{sb.get('image', '-')}`"
        f" · workspace: {sb.get('workspace_mode', '-')}",
        "- Limits: " + (", ".join(f"{k}={v}" for k, v in limits.items()) or "-"),
        "- Capabilities: " + (", ".join(map(str, sb.get("capabilities") or [])) or "none"),
        "- Security options: " + (", ".join(map(str, sb.get("security_opt") or [])) or "-"),
        rules,
    ]


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def write_report(run_dir: Path) -> Path:
    """Write ``report.md`` into ``run_dir`` from what the run recorded; return its path."""
    # Target text (reasons, commands, findings) cannot carry terminal escapes into it.
    text = strip_controls(render_markdown(load_run(run_dir)))
    return RunDir(run_dir.name, run_dir).write_text(REPORT_FILE, text)


# -- JSON for `run --json` and `runs --json` -------------------------------------------


def run_status(s: RunSummary) -> str:
    """ok, failed, interrupted, or incomplete (no final event): one word for tables and JSON."""
    if s.interrupted:
        return INTERRUPTED
    if not s.closed:
        return INCOMPLETE
    return {True: "ok", False: "failed", None: "no result"}[s.ok]


def summary_json(s: RunSummary, report: Path | None = None) -> dict[str, Any]:
    """The object ``fsm-runner run --json`` and ``runs --json`` print for one run."""
    return {
        "ok": bool(s.ok),
        "status": run_status(s),
        "failed_stage": s.failed_stage,
        "reason": s.reason,
        "score": s.score,
        "metrics": s.metrics,
        "metrics_accepted": s.metrics_accepted,
        "hints": s.hints,
        "commit": s.commit,
        "dirty": s.dirty,
        "samples": s.samples,
        "run_id": s.run_id,
        "artifacts_dir": str(s.path),
        "report": str(report) if report else None,
        "duration_s": s.duration_s,
        "stages": [
            {"stage": r.stage, "ok": r.ok, "duration_s": r.duration_s, "network": r.network}
            for r in s.stages
        ],
    }
