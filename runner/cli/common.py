"""What every ``fsm-runner`` command shares: the two consoles and the error block."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["Quiet", "RepoDir", "err", "fail", "out", "plain_line"]

# soft_wrap: a message is one line however narrow the terminal (or 80 columns in a pipe).
err = Console(stderr=True, highlight=False, soft_wrap=True)
# Piped tables get room instead of the 80 columns rich assumes without a terminal.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
RepoDir = Annotated[
    Path, typer.Argument(help="Repository root.", exists=True, file_okay=False, resolve_path=True)
]


def fail(exc: BaseException, code: int = 1) -> typer.Exit:
    """One readable block on stderr (a ContractError's first line is file:line: field)."""
    err.print("[bold red]error:[/bold red] ", end="")
    err.print(str(exc).strip() or type(exc).__name__, markup=False)
    return typer.Exit(code)


def plain_line(msg: str) -> None:
    err.print(msg, markup=False)
