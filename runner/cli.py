"""The ``fsm-runner`` command: a thin layer over the same API the library exposes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from runner.errors import RunnerError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Run a repository's evaluation contract inside disposable, hardened containers.",
)
images_app = typer.Typer(no_args_is_help=True, help="The sandbox images (built offline).")
app.add_typer(images_app, name="images")
err = Console(stderr=True)
out = Console()


def _plain() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes") or not sys.stderr.isatty()


def _progress(msg: str) -> None:
    err.print(f"[dim]·[/dim] {msg}", highlight=False, markup=False) if _plain() else err.print(
        f"[cyan]·[/cyan] {msg}", highlight=False
    )


def _fail(exc: BaseException, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/bold red] {exc}", highlight=False, markup=True)
    return typer.Exit(code)


@images_app.command("build")
def images_build(
    image: Annotated[str | None, typer.Option(help="Check this local image instead.")] = None,
) -> None:
    """Build (or confirm) the default image; instant when cached."""
    from sandbox.errors import SandboxError
    from sandbox.images import ensure_image

    try:
        tag = ensure_image(image, progress=_progress)
    except SandboxError as exc:
        raise _fail(exc) from exc
    out.print(tag)


@images_app.command("list")
def images_list() -> None:
    """Images fsm-runner built (tag, size, created)."""
    from sandbox.engine import LABEL_KIND, get_client

    for img in get_client().images.list(filters={"label": f"{LABEL_KIND}=image"}):
        tags = ", ".join(img.tags) or img.short_id
        out.print(
            f"{tags}\t{img.attrs.get('Size', 0) / 1e6:.0f} MB\t{img.attrs.get('Created', '')[:19]}"
        )


@app.command()
def gc(
    all_: Annotated[
        bool, typer.Option("--all", help="Also remove live sessions' objects.")
    ] = False,
) -> None:
    """Remove containers and networks left behind by dead runs."""
    from sandbox.reaper import gc as run_gc

    report = run_gc(include_live=all_)
    out.print(
        f"removed {len(report.containers)} container(s), {len(report.networks)} network(s); "
        f"kept {report.kept_live} live"
    )


@app.command()
def schema() -> None:
    """Print the JSON Schema of pipeline.yml (generated from the models)."""
    from runner.contract import pipeline_json_schema

    out.print_json(json.dumps(pipeline_json_schema()))


@app.command()
def validate(path: Annotated[Path, typer.Argument(help="Repository root.")] = Path(".")) -> None:
    """Check pipeline.yml and .aider_fsm/*.yml without running anything."""
    from runner.contract import load_actions, load_bootstrap, load_pipeline

    try:
        load_pipeline(path / "pipeline.yml")
        load_bootstrap(path / ".aider_fsm" / "bootstrap.yml")
        load_actions(path / ".aider_fsm" / "actions.yml")
    except RunnerError as exc:
        raise _fail(exc) from exc
    out.print(f"{path}: contract OK")


@app.command()
def run(
    target: Annotated[
        str, typer.Argument(help="Local path, git URL[@ref], owner/repo, or HF dataset URL.")
    ],
    llm: Annotated[str, typer.Option(help="Model id, or a local model directory.")] = "none",
    mode: Annotated[str, typer.Option(help="smoke | full")] = "smoke",
    repair_iters: Annotated[int, typer.Option(min=0)] = 0,
    require_samples: Annotated[bool, typer.Option()] = False,
    sandbox: Annotated[str, typer.Option(help="docker | local")] = "docker",
    image: Annotated[str | None, typer.Option(help="A local image instead of the default.")] = None,
    network: Annotated[str | None, typer.Option(help="Network cap: none | llm | egress.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON result object.")] = False,
) -> None:
    """setup + rollout + evaluate; exit code 0 only when the evaluation is ok."""
    import runner_env

    if mode not in ("smoke", "full"):
        raise _fail(ValueError(f"--mode {mode!r} is not one of: smoke, full"), 2)
    options: dict[str, Any] = {"sandbox": sandbox, "image": image, "network": network}
    try:
        sess = runner_env.setup(target, progress=None if as_json else _progress, **options)
        with sess:
            roll = sess.rollout(
                llm=llm, mode=mode, require_samples=require_samples, repair_iters=repair_iters
            )
            res: Any = sess.evaluate(mode=mode, repair_iters=repair_iters) if roll.ok else roll
    except (RunnerError, ValueError) as exc:
        raise _fail(exc, 2 if isinstance(exc, ValueError) else 1) from exc
    summary = {
        "ok": bool(res.ok),
        "failed_stage": res.failed_stage,
        "reason": res.reason,
        "metrics": getattr(res, "metrics", None),
        "run_id": sess.run_id,
        "artifacts_dir": str(sess.artifacts_dir),
    }
    if as_json:
        print(json.dumps(summary))
    else:
        colour = "green" if res.ok else "red"
        out.print(f"[bold {colour}]ok={res.ok}[/bold {colour}]  metrics={summary['metrics']}")
        if not res.ok:
            out.print(f"failed stage: {res.failed_stage}: {res.reason}", markup=False)
        out.print(f"artifacts: {sess.artifacts_dir}", markup=False)
    raise typer.Exit(0 if res.ok else 1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
