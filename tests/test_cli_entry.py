"""The installed command exits without the interpreter's teardown, but only after its work.

``runner/cli/entry.py`` must keep what a normal exit guarantees: output flushed,
non-daemon threads (background container removals) joined, ``atexit`` hooks run, and
the exit status of ``sys.exit``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


@pytest.mark.parametrize(("code", "status"), [("None", 0), ("3", 3), ("'bye'", 1)])
def test_exit_now_joins_threads_runs_hooks_and_flushes(
    tmp_path: Path, code: str, status: int
) -> None:
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(f"""
        import atexit, pathlib, threading, time
        from runner.cli.entry import exit_now
        out = pathlib.Path({str(tmp_path)!r})
        def late():
            time.sleep(0.3)
            (out / "thread-done").write_text("ok")
        threading.Thread(target=late).start()
        atexit.register(lambda: (out / "hook-ran").write_text("ok"))
        print("result line", end="")  # unflushed: stdout is a pipe
        exit_now({code})
    """)
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == status, proc.stderr
    assert proc.stdout == "result line"
    assert (tmp_path / "thread-done").exists() and (tmp_path / "hook-ran").exists()
    if status == 1:
        assert "bye" in proc.stderr


def test_the_installed_command_keeps_exit_codes() -> None:
    fsm = Path(sys.executable).parent / "fsm-runner"
    assert subprocess.run([str(fsm), "--help"], capture_output=True).returncode == 0
    bad = subprocess.run([str(fsm), "run", "--mode", "fast", "x"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("fsm-runner: error: ")


@pytest.mark.parametrize("pending", [True, False])
def test_a_stop_signal_waits_only_while_a_sandbox_is_being_removed(
    tmp_path: Path, pending: bool
) -> None:
    """After ``run`` returns, its container may still be going in a background thread: a
    SIGTERM then is noted and ignored; with nothing pending it acts as it always did."""
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, time
        from runner.cli.interrupts import cleanup_guard
        with cleanup_guard(lambda: {pending}):
            print("ready", flush=True)
            time.sleep(1.5)
        print("finished", flush=True)
        """)
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.terminate()
    out, err = proc.communicate(timeout=30)
    if pending:
        assert proc.returncode == 0 and "finished" in out
        assert "SIGTERM ignored: still removing the sandbox" in err
    else:
        assert proc.returncode == -15 and "finished" not in out


def _child(tmp_path: Path, code: str) -> subprocess.Popen[str]:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.Popen(
        [sys.executable, str(script)],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_stop_signal_before_the_command_catches_it_still_exits_128_plus_signal(
    tmp_path: Path,
) -> None:
    """A SIGTERM in a command's first lines (its imports) used to reach typer, which turns
    any KeyboardInterrupt into a silent exit 130: the chaos test saw SIGTERMed runs exit 130."""
    proc = _child(
        tmp_path,
        """
        import os, signal, time
        from runner.cli.interrupts import during

        @during
        def command():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            print("not reached", flush=True)

        command()
        """,
    )
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "not reached" not in out
    assert "fsm-runner: interrupted (SIGTERM)" in err


def test_a_stop_signal_waits_for_an_engine_create_in_flight(tmp_path: Path) -> None:
    """A SIGTERM that lands while the engine creates a network is held until the call
    returns, then acts: the caller unwinds with something that exists, so its cleanup
    removes it (before, the engine finished the create after the removal and it leaked)."""
    proc = _child(
        tmp_path,
        """
        import os, signal, time
        from runner.cli.interrupts import Interrupted, during
        from sandbox import atomic

        @during
        def command():
            try:
                with atomic.creating():
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(0.2)
                    print("created", flush=True)
            except Interrupted:
                print("interrupted after the create", flush=True)
                raise

        command()
        """,
    )
    out, err = proc.communicate(timeout=30)
    assert out.splitlines() == ["created", "interrupted after the create"], (out, err)
    assert proc.returncode == 143
