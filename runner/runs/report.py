"""``report.md`` and the ``--json`` object, both written from :func:`load_run`'s structure.

Reading the run dir is :mod:`runner.runs.summary` (its names are re-exported here for
callers). The one file this module writes, ``report.md``, goes through
:class:`runner.runs.run_dir.RunDir`, the only writer in a run dir. :func:`summary_json`
is the same structure for ``fsm-runner run --json`` and ``runs --json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runner.runs.listing import INCOMPLETE
from runner.runs.run_dir import RunDir
from runner.runs.summary import (
    CommandRow,
    RunSummary,
    StageRow,
    command_row,
    load_run,
    read_events,
    run_status,
)
from runner.trust.terminal import strip_controls

__all__ = [
    "REPORT_FILE",
    "CommandRow",
    "RunSummary",
    "StageRow",
    "command_row",
    "fmt_seconds",
    "hints_text",
    "load_run",
    "output_tail",
    "read_events",
    "render_markdown",
    "run_status",
    "score_text",
    "summary_json",
    "write_report",
]

REPORT_FILE = "report.md"


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
