"""``fsm-runner replay``, ``verify`` and ``manifest-schema`` (docs/reproducibility.md).

Registered in ``runner/cli.py`` with ``app.add_typer(replay_app)`` (no name: the commands
join the main app). Results are rich tables on a terminal and plain lines under
``CI=true`` or in a pipe, like the rest of the CLI.

Exit codes, as ``diff``'s: ``replay`` 0 identical, 1 different (outcome, a metric, a
sample, or a flaky stage), 2 could not replay; ``verify`` 0 intact, 1 a file differs
from the manifest (each one named), 2 no manifest to check against.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from runner.cli.engine import SandboxLayerError
from runner.cli.progress import bare_table, view_style
from runner.errors import RunnerError

if TYPE_CHECKING:
    from runner.runs.replay import Comparison

__all__ = ["replay_app"]

replay_app = typer.Typer(add_completion=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)

RunArg = Annotated[
    str,
    typer.Argument(
        metavar="RUN_DIR",
        help="A run dir (.aider_fsm/artifacts/<run_id>), or a run id, its prefix or 'latest'"
        " under --repo.",
    ),
]
RepoOpt = Annotated[
    Path, typer.Option(help="Where run ids are looked up.", file_okay=False, resolve_path=True)
]
_MAX_ROWS = 50


def resolve_run_dir(run: str, repo: Path) -> Path:
    """A run dir path as given, else a run id (or unique prefix, or ``latest``) under ``repo``.

    Raises:
        typer.BadParameter: neither a directory nor exactly one run of ``repo``.
    """
    from runner.runs.run_dir import list_runs

    if Path(run).is_dir():
        return Path(run).resolve()
    ids = [info.run_id for info in list_runs(repo)]
    found = ids[:1] if run == "latest" else [i for i in ids if i.startswith(run)]
    if len(found) != 1:
        what = "matches several runs" if found else "is no directory and matches no run"
        raise typer.BadParameter(f"{run!r} {what} under {repo}; list them: fsm-runner runs {repo}")
    return repo / ".aider_fsm" / "artifacts" / found[0]


def _show(value: Any) -> str:
    if value is None:
        return "missing"
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _delta(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def comparison_json(cmp: Comparison) -> dict[str, Any]:
    """The object ``replay --json`` prints."""
    return {
        "identical": cmp.identical,
        "runs": [
            {"run_dir": str(r.path), "run_id": r.manifest.run_id, "outcome": r.outcome}
            for r in cmp.runs
        ],
        "outcome_differs": cmp.outcome_differs,
        "metric_keys": cmp.metric_keys,
        "metrics": [
            {"key": d.key, "values": list(d.values), "delta": d.delta} for d in cmp.metrics
        ],
        "samples_differ": cmp.samples_differ,
        "sample_lines": cmp.sample_lines,
        "flaky": cmp.flaky,
        "notes": cmp.notes,
    }


def _samples_text(cmp: Comparison) -> str:
    counts = [len(r.sample_hashes) if r.sample_hashes is not None else None for r in cmp.runs]
    if all(c is None for c in counts):
        return "no samples file recorded"
    shown = " vs ".join("none" if c is None else str(c) for c in counts)
    if not cmp.samples_differ:
        return f"identical ({shown} lines, sha256 per line)"
    lines = ", ".join(map(str, cmp.sample_lines[:20])) + (
        f" and {len(cmp.sample_lines) - 20} more" if len(cmp.sample_lines) > 20 else ""
    )
    return f"DIFFER ({shown} lines): line(s) {lines or '-'}"


def print_comparison(cmp: Comparison, console: Console, plain: bool) -> None:
    """The verdict, then what differs: outcome, metrics (with delta), samples, flaky stages."""
    labels = ["original"] + [
        f"replay {n}" if len(cmp.runs) > 2 else "replay" for n in range(1, len(cmp.runs))
    ]
    same_metrics = cmp.metric_keys - len(cmp.metrics)
    if plain:
        for label, run in zip(labels, cmp.runs, strict=True):
            console.print(
                f"{label}: {run.manifest.run_id} {run.outcome} ({run.path})", markup=False
            )
        for d in cmp.metrics[:_MAX_ROWS]:
            values = " -> ".join(_show(v) for v in d.values)
            console.print(f"metric {d.key}: {values} (delta {_delta(d.delta)})", markup=False)
        console.print(f"metrics: {same_metrics}/{cmp.metric_keys} keys identical", markup=False)
        console.print(f"samples: {_samples_text(cmp)}", markup=False)
        for stage, seen in cmp.flaky.items():
            marks = ", ".join({True: "ok", False: "FAILED", None: "-"}[s] for s in seen)
            console.print(f"flaky stage {stage}: {marks}", markup=False)
    else:
        runs = bare_table("", "run id", "outcome", "run dir")
        for label, run in zip(labels, cmp.runs, strict=True):
            style = "green" if run.outcome == "ok" else "red"
            runs.add_row(
                label, run.manifest.run_id, f"[{style}]{run.outcome}[/]", escape(str(run.path))
            )
        console.print(runs)
        if cmp.metrics:
            table = bare_table("metric", *labels, "max |Δ|")
            for d in cmp.metrics[:_MAX_ROWS]:
                table.add_row(escape(d.key), *(escape(_show(v)) for v in d.values), _delta(d.delta))
            console.print(table)
        console.print(f"metrics: {same_metrics}/{cmp.metric_keys} keys identical")
        console.print(f"samples: {escape(_samples_text(cmp))}")
        if cmp.flaky:
            table = bare_table("flaky stage", *labels)
            cells = {True: "[green]ok[/]", False: "[red]FAILED[/]", None: "-"}
            for stage, seen in cmp.flaky.items():
                table.add_row(stage, *(cells[s] for s in seen))
            console.print(table)
    if len(cmp.metrics) > _MAX_ROWS:
        console.print(
            f"... and {len(cmp.metrics) - _MAX_ROWS} more differing metrics", markup=False
        )
    for note in cmp.notes:
        console.print(f"note: {note}", markup=False)
    verdict = "IDENTICAL" if cmp.identical else "DIFFERENT"
    what = [
        w
        for w, on in (
            ("outcome", cmp.outcome_differs),
            ("metrics", bool(cmp.metrics)),
            ("samples", cmp.samples_differ),
            ("flaky stages", bool(cmp.flaky)),
        )
        if on
    ]
    console.print(
        f"{verdict}" + (f": {', '.join(what)} differ" if what else ""),
        markup=False,
        style=None if plain else ("bold green" if cmp.identical else "bold red"),
    )


@replay_app.command()
def replay(
    run: RunArg,
    reruns: Annotated[
        int, typer.Option(min=1, help="Replay K times; stages whose pass/fail changes are flaky.")
    ] = 1,
    env_file: Annotated[
        Path | None,
        typer.Option(metavar="PATH", help="The .env file the original run got, if any."),
    ] = None,
    image: Annotated[
        str | None, typer.Option(help="Another local image instead of the recorded one.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Run a recorded run again (same commit, image, settings, seed) and diff the results.

    Exit code 0: identical; 1: something differs; 2: could not replay.
    """
    # Imported here, not at the top: `fsm-runner --help` must not load the session.
    from runner.api.replay import replay_run
    from runner.runs.replay import EXIT_TROUBLE

    run_dir = resolve_run_dir(run, repo)
    style = view_style(out)
    progress = None if quiet else (lambda msg: err.print(msg, markup=False))
    try:
        if style == "live" and not quiet:
            with err.status("replaying") as status:
                cmp = replay_run(
                    run_dir,
                    reruns=reruns,
                    env_file=env_file,
                    image=image,
                    progress=lambda msg: status.update(escape(msg[:100])),
                )
        else:
            cmp = replay_run(
                run_dir, reruns=reruns, env_file=env_file, image=image, progress=progress
            )
    except KeyboardInterrupt:
        err.print("interrupted: the replay's session was closed", markup=False)
        raise typer.Exit(130) from None
    except (RunnerError, SandboxLayerError, ValueError) as exc:
        if as_json:
            print(json.dumps({"identical": False, "error": str(exc)}))
        err.print(f"fsm-runner: replay: {exc}", markup=False)
        raise typer.Exit(EXIT_TROUBLE) from exc
    if as_json:
        print(json.dumps(comparison_json(cmp), default=str))
    else:
        print_comparison(cmp, out, plain=style != "live")
    raise typer.Exit(cmp.exit_code)


@replay_app.command()
def verify(run: RunArg, repo: RepoOpt = Path(".")) -> None:
    """Check a run dir against its manifest.json without running anything.

    Exit code 0: every listed file is there with its sha256 and nothing was added;
    1: a file is missing, changed or added (each one named); 2: no manifest.json.
    """
    from runner.runs.manifest import MANIFEST_FILE, verify_run_dir

    run_dir = resolve_run_dir(run, repo)
    try:
        report = verify_run_dir(run_dir)
    except OSError as exc:
        err.print(f"fsm-runner: verify: cannot read {run_dir / MANIFEST_FILE}: {exc}", markup=False)
        raise typer.Exit(2) from exc
    for problem in report.problems:
        out.print(str(problem), markup=False)
    if report.ok:
        out.print(
            f"verified: {report.checked} files match {MANIFEST_FILE} "
            f"(manifest sha256 {report.manifest_sha256})",
            markup=False,
        )
    else:
        out.print(
            f"FAILED: {len(report.problems)} problem(s) in {run_dir} "
            f"(manifest sha256 {report.manifest_sha256})",
            markup=False,
        )
    raise typer.Exit(0 if report.ok else 1)


@replay_app.command("manifest-schema")
def manifest_schema() -> None:
    """Print the JSON Schema of manifest.json (generated from the model that writes it)."""
    from runner.runs.manifest import manifest_json_schema

    print(json.dumps(manifest_json_schema(), indent=2))
