"""The agent through the public API: ``setup()`` scaffolds, ``evaluate(repair_iters=N)`` repairs."""

from __future__ import annotations

from pathlib import Path

import pytest

import runner_env
from runner.agent import install_opencode
from tests import contract_repos as cr
from tests.fakes.model_server import ScriptedModelServer
from tests.test_agent_opencode import (
    BUGGY_EVALUATION,
    MODEL,
    bare_repo,
    contract_writes,
    tool,
    turns,
)

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
]


EVAL_SCRIPT = ".aider_fsm/stages/evaluation.sh"
FIX = [
    tool("read", filePath=EVAL_SCRIPT),
    tool("edit", filePath=EVAL_SCRIPT, oldString="rollout.jsn", newString="rollout.json"),
]
"""The scripted repair of BUGGY_EVALUATION's typo."""


@pytest.fixture(scope="module")
def opencode_on_path() -> Path:
    return install_opencode()


def test_setup_scaffolds_a_missing_contract(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    opencode_on_path: Path,
    default_image: str,
) -> None:
    monkeypatch.setenv("FSM_OPENCODE_BIN", str(opencode_on_path))
    repo = bare_repo(tmp_path / "repo")
    with ScriptedModelServer(script=turns(lambda _: contract_writes())) as server:
        monkeypatch.setenv("OPENAI_API_BASE", server.url)
        sess = runner_env.setup(repo, opencode_model=MODEL)
        roll = sess.rollout(llm="m", mode="smoke", require_samples=True, repair_iters=0)
        assert roll.ok, roll.reason
        res = sess.evaluate(mode="smoke", repair_iters=0)
    assert res.ok, res.reason
    assert (repo / "pipeline.yml").is_file()
    assert (sess.artifacts_dir / "scaffold_provenance.json").is_file()


def test_evaluate_repairs_a_buggy_evaluation(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    opencode_on_path: Path,
    default_image: str,
) -> None:
    monkeypatch.setenv("FSM_OPENCODE_BIN", str(opencode_on_path))
    repo = cr.make_repo(tmp_path / "repo", evaluation=BUGGY_EVALUATION)
    with ScriptedModelServer(script=turns(lambda _: FIX)) as server:
        monkeypatch.setenv("OPENAI_API_BASE", server.url)
        without = runner_env.setup(repo, opencode_model=MODEL).evaluate(llm="m", repair_iters=0)
        assert not without.ok and without.failed_stage == "evaluation"
        sess = runner_env.setup(repo, opencode_model=MODEL)
        res = sess.evaluate(llm="m", mode="smoke", repair_iters=1)
    assert res.ok, res.reason
    assert (sess.artifacts_dir / "repair_01" / "repair_provenance.json").is_file()
    assert "rollout.jsn" not in (repo / EVAL_SCRIPT).read_text()


def test_cli_run_repairs_only_with_an_agent_model(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    opencode_on_path: Path,
    default_image: str,
) -> None:
    """``fsm-runner run --repair-iters 1`` repairs when ``--opencode-model`` names the agent."""
    from runner.cli.main import main

    def run(*args: str) -> int:
        with pytest.raises(SystemExit) as exit_info:
            main(["run", str(repo), "--llm", "m", "--json", "-q", *args])
        capsys.readouterr()
        return int(exit_info.value.code or 0)

    monkeypatch.setenv("FSM_OPENCODE_BIN", str(opencode_on_path))
    repo = cr.make_repo(tmp_path / "repo", evaluation=BUGGY_EVALUATION)
    assert run("--repair-iters", "1") == 1  # no agent model: nothing to repair with
    assert "rollout.jsn" in (repo / EVAL_SCRIPT).read_text()
    with ScriptedModelServer(script=turns(lambda _: FIX)) as server:
        monkeypatch.setenv("OPENAI_API_BASE", server.url)
        assert run("--repair-iters", "1", "--opencode-model", MODEL) == 0
    assert "rollout.jsn" not in (repo / EVAL_SCRIPT).read_text()
