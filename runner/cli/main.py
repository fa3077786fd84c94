"""The ``fsm-runner`` command: a thin layer over the same API the library exposes.

The commands live in modules by topic (``run``, ``history``, ``authoring``, ``upkeep``,
``debug``, ``images``, ``batch``, ``replay``); this module puts them on one app, in the
order ``--help`` lists them, and turns usage errors into one line.

Exit codes: 0 success; 1 the run failed, or an error the user can fix (contract, engine,
target), shown as one readable block; 2 a bad option or value, shown as one line;
128 + the signal when stopped by one (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP; the sandbox is
removed first).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NoReturn

import typer

from runner.cli import engine, interrupts
from runner.cli.authoring import init, schema, validate
from runner.cli.batch import batch_app
from runner.cli.common import err
from runner.cli.debug import shell
from runner.cli.history import runs, show
from runner.cli.images import images_app
from runner.cli.replay import replay_app
from runner.cli.run import run
from runner.cli.upkeep import doctor, gc

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help: typer's rich help imports rich.markdown (markdown-it, pygments), about
    # half of `fsm-runner --help`'s time; issue 17 wants the CLI up in <= 150 ms.
    rich_markup_mode=None,
    help="Run a repository's evaluation contract inside disposable, hardened containers.",
)
app.add_typer(images_app, name="images")
app.add_typer(batch_app)
app.add_typer(replay_app)
for _command in (shell, gc, schema, validate, init, run, runs, show, doctor):
    app.command()(_command)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the app; a usage error becomes one line on stderr and exit code 2."""
    with interrupts.cleanup_guard(engine.cleanup_pending):
        _main(argv)


def _main(argv: Sequence[str] | None) -> NoReturn:
    try:
        code = app(args=argv, prog_name="fsm-runner", standalone_mode=False)
    except typer.TyperException as exc:
        exit_code = int(getattr(exc, "exit_code", 1))
        if type(exc).__name__ == "NoArgsIsHelpError":  # its message is the (plain) help
            print(exc.format_message())
        else:
            ctx = getattr(exc, "ctx", None)
            message = exc.format_message().replace("Value error, ", "")
            where = (
                f" (see: {ctx.command_path} --help)" if ctx and "fsm-runner" not in message else ""
            )
            err.print(f"fsm-runner: error: {message}{where}", markup=False)
        sys.exit(exit_code)
    except typer.Abort:
        err.print("fsm-runner: aborted", markup=False)
        sys.exit(1)
    finally:
        engine.finish_sandboxes()  # the one place background removals are joined
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
