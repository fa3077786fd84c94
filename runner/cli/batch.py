"""``fsm-runner batch jobs.yaml``: the batch API behind a live table and a summary JSON.

Registered in ``runner/cli.py`` with ``app.add_typer(batch_app)`` (no name: the one
command joins the main app). The table is drawn only on a terminal; under ``CI=true``
or a pipe each finished job is one plain line, so logs stay readable.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from runner.errors import RunnerError

if TYPE_CHECKING:
    from rich.table import Table

    from runner.batch.run import BatchProgress

__all__ = ["batch_app"]

batch_app = typer.Typer(add_completion=False)
err = Console(stderr=True)


def _plain() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes") or not sys.stderr.isatty()


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _table(p: BatchProgress) -> Table:
    from rich.table import Table

    c = p.counts
    table = Table(title=f"fsm-runner batch ({p.executor}, {p.workers} at once)")
    for name in ("done", "running", "ok", "failed", "error", "infra", "jobs/min", "ETA", "engine"):
        table.add_column(name, justify="right")
    failed = c["failed"] + c["error"] + c["infra"]
    table.add_row(
        f"{p.done + p.resumed}/{p.total}",
        str(p.running),
        f"[green]{c['ok']}[/green]",
        f"[red]{c['failed']}[/red]" if c["failed"] else "0",
        f"[red]{c['error']}[/red]" if c["error"] else "0",
        f"[yellow]{c['infra']}[/yellow]" if c["infra"] else "0",
        f"{p.throughput_per_min:.1f}",
        _eta(p.eta_s),
        p.breaker if p.breaker == "closed" else f"[bold yellow]{p.breaker}[/bold yellow]",
    )
    notes = [f"resumed {p.resumed}"] if p.resumed else []
    if failed and p.last is not None and not p.last.ok:
        notes.append(f"last failure: {p.last.job_id} {p.last.failed_stage or p.last.outcome}")
    if p.message and p.event == "breaker":
        notes.append(p.message)
    table.caption = escape("; ".join(notes)) or None
    return table


def _line(p: BatchProgress) -> None:
    if p.event == "job_done" and p.last is not None:
        r = p.last
        detail = f" {r.reason[:200]}" if not r.ok else f" metrics={r.metrics}"
        err.print(
            f"[{p.done + p.resumed}/{p.total}] {r.outcome} {r.job_id} {r.target} "
            f"({r.duration_s:.1f}s){detail}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    elif p.event in ("start", "breaker") and p.message:
        err.print(p.message, markup=False, highlight=False, soft_wrap=True)


@batch_app.command("batch")
def batch(
    jobs_file: Annotated[Path, typer.Argument(help="The jobs YAML file (see docs/scale.md).")],
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Sandboxes at once (capped by what fits this machine)."),
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Dask scheduler address, tcp://HOST:PORT.")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Skip jobs that already have a verdict in the results file."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run every job of a jobs file; results are appended to JSONL as each job ends."""
    # Imported here, not at the top: `fsm-runner --help` must not load the batch runner.
    from rich.live import Live

    from runner.batch.jobs import load_jobs
    from runner.batch.run import run_batch

    try:
        spec, jobs, results_path = load_jobs(jobs_file)
    except RunnerError as exc:
        err.print(
            f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(2) from exc
    plain = _plain()
    live = None if plain else Live(console=err, refresh_per_second=4, transient=False)

    def show(p: BatchProgress) -> None:
        if live is None:
            _line(p)
        else:
            live.update(_table(p))

    try:
        if live is not None:
            live.start()
        report = run_batch(
            jobs,
            workers=workers or spec.workers,
            scheduler=scheduler,
            results=results_path,
            resume=resume,
            progress=show,
        )
    except KeyboardInterrupt:
        err.print("interrupted: finished jobs are in the results file; run again with --resume")
        raise typer.Exit(130) from None
    except (RunnerError, OSError, ValueError, RuntimeError) as exc:
        err.print(
            f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(2) from exc
    finally:
        if live is not None:
            live.stop()
    summary = report.summary
    if as_json:
        print(json.dumps(summary))
    else:
        for r in report.results:
            if not r.ok:
                err.print(
                    f"{r.outcome}: {r.job_id} {r.target}: {r.reason[:300]}",
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
        err.print(
            f"{summary['ok']}/{summary['jobs']} ok, {summary['failed']} failed, "
            f"{summary['error']} error, {summary['infra']} infra, {summary['not_run']} not run "
            f"({summary['resumed']} resumed) in {summary['elapsed_s']:.1f}s; "
            f"results: {summary['results_path']}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    raise typer.Exit(0 if report.ok else 1)


if __name__ == "__main__":
    batch_app()
