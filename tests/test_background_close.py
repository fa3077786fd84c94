"""Container removal in the background (issue 17): fast for the caller, never a leak.

``remove_in_background()`` makes ``close()`` return before the engine has removed the
container. The removal thread is joined before the process exits; a process killed
before that leaves a labelled container that ``gc`` removes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sandbox.docker import find_sandbox_containers

pytestmark = pytest.mark.docker


def _creator(tmp_path: Path, image: str, after_close: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "creator.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, signal, sys
        from sandbox import SandboxSpec, open_sandbox
        from sandbox.lifecycle import remove_in_background
        remove_in_background()
        sb = open_sandbox(SandboxSpec(image={image!r}))
        print(sb.sandbox_id, flush=True)
        sb.close()  # returns at once: the removal runs in a thread
        {after_close}
    """)
    )
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )


def test_a_normal_exit_waits_for_the_removal(default_image: str, tmp_path: Path) -> None:
    proc = _creator(tmp_path, default_image, "sys.exit(0)")
    assert proc.returncode == 0, proc.stderr
    assert find_sandbox_containers(proc.stdout.strip()) == []


def test_an_uncaught_error_still_waits_for_the_removal(default_image: str, tmp_path: Path) -> None:
    proc = _creator(tmp_path, default_image, "raise RuntimeError('boom')")
    assert proc.returncode == 1 and "boom" in proc.stderr
    assert find_sandbox_containers(proc.stdout.strip()) == []


def test_a_killed_process_leaves_nothing_gc_cannot_remove(
    default_image: str, tmp_path: Path
) -> None:
    from sandbox.reaper import gc

    proc = _creator(tmp_path, default_image, "os.kill(os.getpid(), signal.SIGKILL)")
    assert proc.returncode == -signal.SIGKILL
    sid = proc.stdout.strip()
    left = find_sandbox_containers(sid)
    assert len(left) <= 1  # killed mid-removal, or before it reached the engine
    gc()
    assert find_sandbox_containers(sid) == []


def test_wait_for_removals_joins_in_process(default_image: str) -> None:
    from sandbox import SandboxSpec, open_sandbox
    from sandbox.lifecycle import wait_for_removals

    sb = open_sandbox(SandboxSpec(image=default_image))
    sid = sb.sandbox_id
    sb.close(wait=False)  # type: ignore[call-arg]
    assert wait_for_removals(timeout=60)
    assert find_sandbox_containers(sid) == []


def test_an_in_process_cli_run_leaves_close_synchronous_again(
    default_image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tests and scripts call the CLI in-process: its modes must end with the command."""
    import json

    from runner.cli.main import main
    from sandbox.engine import get_client
    from sandbox.lifecycle import removing_in_background
    from sandbox.pool import installed
    from tests.contract_repos import make_repo

    repo = make_repo(tmp_path / "repo")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(repo), "--llm", "m", "--json", "-q"])
    assert exit_info.value.code == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    label = {"label": f"fsm-runner.run-id={run_id}"}
    assert get_client().containers.list(all=True, filters=label, ignore_removed=True) == []
    assert removing_in_background() is False and installed() is None


def test_a_sandbox_dropped_without_close_is_still_removed_at_exit(
    default_image: str, tmp_path: Path
) -> None:
    """Its owner lost it (a stop signal between a warm pool handing it out and the session
    storing it): no reference is left, yet the process must not exit leaving it running."""
    script = tmp_path / "dropper.py"
    script.write_text(
        textwrap.dedent(f"""
        import gc
        from sandbox import SandboxSpec, open_sandbox
        sb = open_sandbox(SandboxSpec(image={default_image!r}))
        print(sb.sandbox_id, flush=True)
        del sb
        gc.collect()
    """)
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert find_sandbox_containers(proc.stdout.strip()) == []
