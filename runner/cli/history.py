"""Past runs: ``fsm-runner runs`` (a table, newest first) and ``show`` (one run, its report)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from runner.cli.common import RepoDir, out
from runner.cli.progress import bare_table, print_summary
from runner.runs.report import fmt_seconds, load_run, summary_json, write_report


def runs(
    path: RepoDir = Path("."),
    limit: Annotated[int, typer.Option(min=1, help="Newest N runs.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """Past runs of a repository, newest first: status, score, duration."""
    from runner.runs.run_dir import list_runs

    infos = list_runs(path)[:limit]
    summaries = [load_run(info.path) for info in infos]
    if as_json:
        print(json.dumps([summary_json(s) for s in summaries]))
        return
    if not infos:
        out.print(f"no runs under {path / '.aider_fsm' / 'artifacts'}", markup=False)
        return
    table = bare_table(
        "run id", "started (UTC)", "state", "result", "score", "duration", "failed at"
    )
    for info, s in zip(infos, summaries, strict=True):
        result = {True: "[green]ok[/]", False: "[red]failed[/]", None: "-"}[info.ok]
        if info.status in ("interrupted", "incomplete"):  # killed runs are never ok
            result = f"[yellow]{info.status}[/]"
        table.add_row(
            info.run_id,
            info.started_at.strftime("%Y-%m-%d %H:%M:%S"),
            info.status,
            result,
            "-" if s.score is None else f"{s.score:g}",
            fmt_seconds(s.duration_s),
            s.failed_stage or "",
        )
    out.print(table)


def show(
    run_id: Annotated[str, typer.Argument(help="A run id, a unique prefix of one, or 'latest'.")],
    repo: Annotated[
        Path, typer.Option(help="Repository root.", exists=True, file_okay=False, resolve_path=True)
    ] = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """One run: stage table, where it failed, paths to logs; writes its report.md."""
    from runner.runs.run_dir import list_runs

    ids = [info.run_id for info in list_runs(repo)]
    found = ids[:1] if run_id == "latest" else [i for i in ids if i.startswith(run_id)]
    if len(found) != 1:
        what = "matches several runs" if found else "matches no run"
        raise typer.BadParameter(
            f"{run_id!r} {what} under {repo}; list them: fsm-runner runs {repo}"
        )
    run_dir = repo / ".aider_fsm" / "artifacts" / found[0]
    summary = load_run(run_dir)
    report = write_report(run_dir)
    if as_json:
        print(json.dumps(summary_json(summary, report)))
        return
    print_summary(summary, out)
    out.print(f"report: {report}", markup=False)
