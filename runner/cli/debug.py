"""The debugging loop (issue 16.7): ``run --keep`` leaves the sandbox up, ``shell`` enters it.

A kept sandbox is a container labelled ``fsm-runner.kept`` at creation, cut off from every
network when its run ends, with the workspace and any services as the run left them.
``fsm-runner shell RUN_ID`` opens bash in it (``docker exec -it``); without a terminal,
or with ``-- CMD``, it runs that command and exits with its code. ``fsm-runner gc``
leaves kept sandboxes alone; ``fsm-runner gc --kept`` removes them.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from runner.cli import engine
from runner.cli.common import err, fail


def say_kept(run_id: str, container: str, repo: Path) -> None:
    """How to enter a kept sandbox, and how to remove it."""
    err.print(f"sandbox kept: {container} (run {run_id})", markup=False)
    err.print(f"  enter it:   fsm-runner shell {run_id}", markup=False)
    err.print(f"  one command: fsm-runner shell {run_id} -- ls -la", markup=False)
    err.print(f"  or:         docker exec -it {container} bash", markup=False)
    err.print("  remove it:  fsm-runner gc --kept", markup=False)


def shell(
    run_id: Annotated[str, typer.Argument(help="The run id (or a unique prefix) of a kept run.")],
    command: Annotated[
        list[str] | None, typer.Argument(help="A command to run instead of a shell (after --).")
    ] = None,
) -> None:
    """Open a shell in the sandbox a `run --keep` left running (or run one command in it)."""
    try:
        found = engine.kept_sandboxes(run_id)
    except engine.SandboxLayerError as exc:
        raise fail(exc) from exc
    if len(found) != 1:
        what = "matches several kept sandboxes" if found else "has no kept sandbox"
        raise typer.BadParameter(f"{run_id!r} {what}; keep one with: fsm-runner run TARGET --keep")
    kept = found[0]
    if kept.status != "running":
        err.print(f"error: {kept.name} is {kept.status}; remove it with: fsm-runner gc --kept")
        raise typer.Exit(1)
    argv = list(command or [])
    docker_cli = shutil.which("docker")
    if not argv and sys.stdin.isatty() and docker_cli:
        os.execv(docker_cli, ["docker", "exec", "-it", "-w", kept.workspace, kept.name, "bash"])
    if not argv:
        err.print(
            "error: no terminal here (or no docker CLI): give a command, "
            f"e.g. fsm-runner shell {run_id} -- ls -la",
            markup=False,
        )
        raise typer.Exit(2)
    try:
        code = engine.exec_in_kept(kept.name, argv, kept.workspace)
    except engine.SandboxLayerError as exc:
        raise fail(exc) from exc
    raise typer.Exit(code)
