"""The installed ``fsm-runner`` command: ``main()``, then an exit without the teardown.

With the runner, pydantic and the docker SDK loaded, the interpreter's own teardown
(clearing every module, collecting their objects) takes about 50 ms, a tenth of what
isolation still costs a trivial run over the unisolated predecessor (issue 17). This
exit does what that teardown would do for us, then skips it: it flushes the standard
streams, joins every non-daemon thread (background container removals among them),
runs the ``atexit`` hooks (sandboxes still open are removed there), and ends the
process with ``os._exit``. ``main()`` itself stays an ordinary function: tests call it
in-process and get ``SystemExit``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import NoReturn

from runner.cli import engine, interrupts
from runner.cli.main import main


def console_main() -> NoReturn:
    # The guard spans the exit too: atexit hooks may still remove a sandbox left open.
    with interrupts.cleanup_guard(engine.cleanup_pending):
        try:
            main()
        except SystemExit as exc:
            code = exc.code
        exit_now(code)


def exit_now(code: object) -> NoReturn:
    """``sys.exit(code)``'s outcome, without the interpreter's teardown."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): printed, status 1
        print(code, file=sys.stderr)
        status = 1
    _flush()
    me = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not me and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    _flush()
    os._exit(status)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
            stream.flush()
