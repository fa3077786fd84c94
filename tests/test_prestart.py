"""``fsm-runner run`` starts its container while the runner loads (runner/session/prestart.py).

The guess must be the sandbox the session really opens (so a drift in
``sandbox_open.py`` shows here as ``prepared: false``), and a wrong guess must be
removed, never used.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from runner.session.prestart import prestart
from sandbox.engine import get_client
from tests.contract_repos import PIPELINE, make_repo

FSM = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "fsm-runner"


def _run(repo: Path) -> dict[str, object]:
    proc = subprocess.run(
        [str(FSM), "run", "--json", "--llm", "m", str(repo)],
        capture_output=True,
        text=True,
        env={**os.environ, "CI": "true"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def _sandbox_json(result: dict[str, object]) -> dict[str, object]:
    data: dict[str, object] = json.loads(
        (Path(str(result["artifacts_dir"])) / "sandbox.json").read_text()
    )
    return data


def _left(run_id: object) -> list[str]:
    found = get_client().containers.list(
        all=True, filters={"label": f"fsm-runner.run-id={run_id}"}, ignore_removed=True
    )
    return [c.name for c in found]


def test_no_head_start_without_a_local_docker_target(tmp_path: Path) -> None:
    from sandbox.pool import installed

    before = installed()
    repo = make_repo(tmp_path / "repo")
    for target, backend, llm in [
        ("https://example.invalid/repo.git", "docker", None),
        (str(repo), "local", None),
        (str(repo), "docker", str(tmp_path)),  # a local model dir: one more mount
        (str(tmp_path), "docker", None),  # no pipeline.yml: setup fails first
    ]:
        run_id = prestart(target, backend=backend, image=None, llm=llm)
        assert run_id and installed() is before


@pytest.mark.docker
def test_the_run_adopts_the_container_it_started_early(tmp_path: Path, default_image: str) -> None:
    repo = make_repo(tmp_path / "repo")
    result = _run(repo)
    info = _sandbox_json(result)
    assert info["prepared"] is True, info
    assert _left(result["run_id"]) == []  # removed before the process exited


@pytest.mark.docker
def test_a_contract_that_lowers_limits_opens_its_own_and_the_guess_goes(
    tmp_path: Path, default_image: str
) -> None:
    repo = make_repo(tmp_path / "repo", pipeline=PIPELINE + "  pids: 200\n")
    result = _run(repo)
    info = _sandbox_json(result)
    assert info["prepared"] is False, info
    assert info["limits"]["pids"] == 200  # type: ignore[index]
    assert _left(result["run_id"]) == []  # the unused guess was removed too
