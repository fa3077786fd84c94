"""The OpenCode agent for real: the pinned binary in a Docker sandbox, driven by a scripted
OpenAI-compatible model server on 127.0.0.1 that answers with tool calls.

The binary is installed once per test session with ``images/install-opencode.sh``
(npm, ~185 MB, ~15 s the first time; a no-op afterwards).
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import runner_env
from runner.agent import (
    Bounds,
    ModelUnreachable,
    install_opencode,
    repair_contract,
    scaffold_contract,
)
from runner.errors import AgentError
from runner.runs.run_dir import RunDir
from sandbox.engine import get_client
from tests import contract_repos as cr
from tests.fakes.model_server import Fail, ScriptedModelServer, ScriptEntry

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MODEL = "fake/scripted"
FAST = Bounds(total_s=120, request_s=20, model_request_s=30, model_down_s=5, startup_s=60)
_ids = itertools.count(1)


def tool(name: str, **args: Any) -> dict[str, Any]:
    """An assistant message calling one OpenCode tool (write, edit, read, bash...)."""
    call = {"id": f"call_{next(_ids)}", "type": "function"}
    call["function"] = {"name": name, "arguments": json.dumps(args)}  # type: ignore[assignment]
    return {"content": None, "tool_calls": [call]}


def _user_text(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def turns(plan: Callable[[str], Sequence[ScriptEntry]]) -> Callable[[dict[str, Any]], ScriptEntry]:
    """A stateless script: ``plan(user prompt)`` lists the replies; the reply index is the
    number of assistant messages since the prompt (notes/opencode.md section 2)."""

    def script(body: dict[str, Any]) -> ScriptEntry:
        messages = body.get("messages") or []
        if not body.get("tools"):
            return "title"
        last_user = max(i for i, m in enumerate(messages) if m.get("role") == "user")
        n = sum(1 for m in messages[last_user:] if m.get("role") == "assistant")
        entries = plan(_user_text(messages))
        return entries[n] if n < len(entries) else "Done."

    return script


def contract_writes(**overrides: str) -> list[ScriptEntry]:
    """``write`` calls for a complete, working contract (tests/contract_repos.py)."""
    files = {
        "pipeline.yml": cr.PIPELINE,
        ".aider_fsm/stages/deploy_setup.sh": cr.DEPLOY_SETUP,
        ".aider_fsm/stages/deploy_health.sh": cr.DEPLOY_HEALTH,
        ".aider_fsm/stages/deploy_teardown.sh": cr.DEPLOY_TEARDOWN,
        ".aider_fsm/stages/rollout.sh": cr.ROLLOUT,
        ".aider_fsm/stages/evaluation.sh": cr.EVALUATION,
    } | overrides
    return [tool("write", filePath=k, content=textwrap.dedent(v)) for k, v in files.items()]


def bare_repo(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "README.md").write_text("# demo\n\nRun `python3 src/main.py`.\n")
    (root / "src" / "main.py").write_text("print('hello')\n")
    return root


def leftovers(run_id: str) -> list[str]:
    client = get_client()
    containers = client.containers.list(
        all=True, ignore_removed=True, filters={"label": f"fsm-runner.run-id={run_id}"}
    )
    return [c.name for c in containers]


def no_new_opencode(before: set[int], settle_s: float = 5.0) -> bool:
    """True once no agent process is left beyond ``before`` (the engine reaps a removed
    container's processes asynchronously, so give it a moment)."""
    deadline = time.monotonic() + settle_s
    while opencode_pids() - before:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def opencode_pids() -> set[int]:
    """Host-visible processes running the agent binary (container processes included)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"/fsm-agent/bin/opencode" in cmd:
                found.add(int(entry.name))
    return found


@pytest.fixture(scope="session")
def opencode_bin() -> Path:
    return install_opencode()


@pytest.fixture
def run_dir(tmp_path: Path) -> RunDir:
    return RunDir.create(tmp_path, base=tmp_path / "runs")


def test_scaffold_writes_contract_and_scope_discards_the_rest(
    tmp_path: Path, run_dir: RunDir, opencode_bin: Path, default_image: str
) -> None:
    marker = f"/tmp/agent_was_here_{uuid.uuid4().hex[:8]}"
    evil = [
        tool("write", filePath="src/evil.py", content="import os  # evil\n"),
        tool("write", filePath="../outside.txt", content="escaped\n"),
        tool("bash", command=f"touch {marker}", description="touch outside"),
        # Slips past OpenCode's path check: only the sandbox stops this one.
        tool("bash", command=f"python3 -c \"open('{marker}', 'w')\"", description="write"),
        tool("write", filePath=".aider_fsm/metrics.json", content='{"ok": true, "score": 1}'),
    ]
    repo = bare_repo(tmp_path / "repo")
    before_pids = opencode_pids()
    with ScriptedModelServer(script=turns(lambda _: [*contract_writes(), *evil])) as server:
        started = time.monotonic()
        path = scaffold_contract(
            repo,
            model=MODEL,
            run_dir=run_dir,
            attempts=1,
            env={
                "OPENAI_API_BASE": server.url,
                "OPENAI_API_KEY": "sk-scripted-0123456789abcdefghij",
            },
            bounds=FAST,
            opencode_bin=opencode_bin,
        )
        elapsed = time.monotonic() - started
    assert path == repo / "pipeline.yml"
    assert elapsed < 60, elapsed
    # Only the contract came back; nothing else reached the host.
    assert (repo / "src" / "main.py").read_text() == "print('hello')\n"
    assert not (repo / "src" / "evil.py").exists()
    assert not (tmp_path / "outside.txt").exists()
    assert not Path(marker).exists()
    assert not (repo / ".aider_fsm" / "metrics.json").exists()
    assert sorted(p.name for p in (repo / ".aider_fsm" / "stages").iterdir()) == [
        "deploy_health.sh", "deploy_setup.sh", "deploy_teardown.sh", "evaluation.sh", "rollout.sh",
    ]  # fmt: skip
    prov = json.loads((run_dir.path / "scaffold_provenance.json").read_text())
    assert prov["ok"] is True
    (attempt,) = prov["attempts"]
    assert set(attempt["discarded_paths"]) == {"src/evil.py", ".aider_fsm/metrics.json"}
    assert marker in attempt["scope"]["outside_workspace"]
    assert "pipeline.yml" in attempt["changed_files"]
    statuses = {(c["tool"], c["status"]) for c in attempt["tool_calls"]}
    assert ("write", "error") in statuses  # ../outside.txt refused by OpenCode
    record = run_dir.path / "scaffold" / "attempt_01"
    diff = (record / "diff.patch").read_text()
    assert "+++ b/src/evil.py" in diff and "+++ b/pipeline.yml" in diff
    assert "sk-scripted" not in (record / "opencode.json").read_text()
    for name in ("prompt.txt", "opencode_server.log", "transcript.json", "scope.json"):
        assert (record / name).is_file(), name
    assert not any("sk-scripted-0123" in p.read_text() for p in run_dir.path.rglob("*.json"))
    assert leftovers(run_dir.run_id) == []
    assert no_new_opencode(before_pids)
    # The model saw our tools, never the blocking `question` one, and the sandbox address.
    first = server.requests[0]
    assert "question" not in {t["function"]["name"] for t in first["tools"]}
    # And the contract the agent wrote runs.
    res = runner_env.setup(repo).evaluate(llm="m", mode="smoke", repair_iters=0)
    assert res.ok, res.reason
    assert res.metrics == {"ok": True, "score": 0.5, "n": 8}


def test_scaffold_feeds_validation_errors_to_the_next_attempt(
    tmp_path: Path, run_dir: RunDir, opencode_bin: Path, default_image: str
) -> None:
    def plan(prompt: str) -> list[ScriptEntry]:
        if "attempt 2 of 2" in prompt and "evalution" in prompt:
            return contract_writes()
        return [tool("write", filePath="pipeline.yml", content="version: 1\nevalution: {}\n")]

    smoked: list[bool] = []

    def smoke(root: Path) -> str | None:
        """What setup() does with a new contract: run it in a fresh sandbox."""
        res = runner_env.setup(root).evaluate(llm="m", mode="smoke", repair_iters=0)
        smoked.append(res.ok)
        return None if res.ok else f"{res.failed_stage}: {res.reason}"

    repo = bare_repo(tmp_path / "repo")
    with ScriptedModelServer(script=turns(plan)) as server:
        scaffold_contract(
            repo,
            model=MODEL,
            run_dir=run_dir,
            attempts=2,
            env={"OPENAI_API_BASE": server.url},
            bounds=FAST,
            opencode_bin=opencode_bin,
            smoke=smoke,
        )
    prov = json.loads((run_dir.path / "scaffold_provenance.json").read_text())
    assert [a["ok"] for a in prov["attempts"]] == [False, True]
    assert "pipeline_invalid" in prov["attempts"][0]["reason"]
    assert smoked == [True], "the smoke run happens only for a contract that validates"
    assert (repo / ".aider_fsm" / "stages" / "rollout.sh").is_file()


def test_scaffold_failure_restores_the_repo(
    tmp_path: Path, run_dir: RunDir, opencode_bin: Path, default_image: str
) -> None:
    repo = bare_repo(tmp_path / "repo")
    writes = [tool("write", filePath="pipeline.yml", content="version: 1\n")]
    with (
        ScriptedModelServer(script=turns(lambda _: writes)) as server,
        pytest.raises(AgentError, match="incomplete_contract") as info,
    ):
        scaffold_contract(
            repo,
            model=MODEL,
            run_dir=run_dir,
            attempts=1,
            env={"OPENAI_API_BASE": server.url},
            bounds=FAST,
            opencode_bin=opencode_bin,
        )
    assert str(run_dir.path) in str(info.value)
    assert not (repo / "pipeline.yml").exists(), "a half contract must not stay behind"


BUGGY_EVALUATION = cr.EVALUATION.replace(
    'open(".aider_fsm/rollout.json")', 'open(".aider_fsm/rollout.jsn")'
)


def test_repair_fixes_a_buggy_evaluation_script(
    tmp_path: Path, run_dir: RunDir, opencode_bin: Path, default_image: str
) -> None:
    repo = cr.make_repo(tmp_path / "repo", evaluation=BUGGY_EVALUATION)
    failed = runner_env.setup(repo).evaluate(llm="m", mode="smoke", repair_iters=0)
    assert not failed.ok and failed.failed_stage == "evaluation"
    stderr = "".join(p.read_text() for p in failed.artifacts_dir.rglob("evaluation_stderr.txt"))
    assert "rollout.jsn" in stderr
    script = ".aider_fsm/stages/evaluation.sh"
    fix = [
        tool("read", filePath=script),
        tool("edit", filePath=script, oldString="rollout.jsn", newString="rollout.json"),
        tool("write", filePath="src/also_fixed_app.py", content="x = 1\n"),
    ]
    with ScriptedModelServer(script=turns(lambda _: fix)) as server:
        outcome = repair_contract(
            repo,
            failed_stage="evaluation",
            reason=failed.reason or "",
            evidence={"stderr_tail": stderr[-4000:]},
            model=MODEL,
            run_dir=run_dir,
            attempt=1,
            env={"OPENAI_API_BASE": server.url},
            bounds=FAST,
            opencode_bin=opencode_bin,
        )
    assert outcome.ok, outcome.reason
    assert outcome.changed_files == [script]
    assert outcome.discarded_paths == ["src/also_fixed_app.py"]
    assert not (repo / "src").exists()
    assert "rollout.jsn" in _user_text(server.requests[0]["messages"])  # evidence reached it
    prov = json.loads((run_dir.path / "repair_01" / "repair_provenance.json").read_text())
    assert prov["ok"] is True and prov["failed_stage"] == "evaluation"
    assert "-" in (run_dir.path / "repair_01" / "diff.patch").read_text()
    res = runner_env.setup(repo).evaluate(llm="m", mode="smoke", repair_iters=0)
    assert res.ok, res.reason


def test_repair_that_edits_nothing_fails(
    tmp_path: Path, run_dir: RunDir, opencode_bin: Path, default_image: str
) -> None:
    repo = cr.make_repo(tmp_path / "repo", evaluation=BUGGY_EVALUATION)
    before = (repo / ".aider_fsm" / "stages" / "evaluation.sh").read_text()
    with ScriptedModelServer(script=turns(lambda _: ["I looked; all fine."])) as server:
        outcome = repair_contract(
            repo,
            failed_stage="evaluation",
            reason="rc=1",
            evidence={},
            model=MODEL,
            run_dir=run_dir,
            attempt=2,
            env={"OPENAI_API_BASE": server.url},
            bounds=FAST,
            opencode_bin=opencode_bin,
        )
    assert not outcome.ok and outcome.reason.startswith("repair_no_changes")
    assert outcome.changed_files == []
    assert (repo / ".aider_fsm" / "stages" / "evaluation.sh").read_text() == before
    assert (run_dir.path / "repair_02" / "repair_provenance.json").is_file()


def test_model_server_not_listening_fails_fast(
    tmp_path: Path, run_dir: RunDir, opencode_bin: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ModelUnreachable, match="not reachable"):
        scaffold_contract(
            bare_repo(tmp_path / "repo"),
            model=MODEL,
            run_dir=run_dir,
            env={"OPENAI_API_BASE": f"http://127.0.0.1:{port}/v1"},
            bounds=FAST,
            opencode_bin=opencode_bin,
        )
    assert time.monotonic() - started < 10
    assert leftovers(run_dir.run_id) == []


def test_model_server_going_down_is_bounded_and_cleaned_up(
    tmp_path: Path, run_dir: RunDir, opencode_bin: Path, default_image: str
) -> None:
    holder: dict[str, ScriptedModelServer] = {}

    def die(_body: dict[str, Any]) -> ScriptEntry:
        threading.Thread(target=holder["server"].stop, daemon=True).start()
        return Fail(503, "going down")

    server = holder["server"] = ScriptedModelServer(script=die).start()
    repo = bare_repo(tmp_path / "repo")
    before_pids = opencode_pids()
    started = time.monotonic()
    try:
        with pytest.raises(ModelUnreachable, match="kept retrying"):
            scaffold_contract(
                repo,
                model=MODEL,
                run_dir=run_dir,
                attempts=3,
                env={"OPENAI_API_BASE": server.url},
                bounds=FAST,
                opencode_bin=opencode_bin,
            )
    finally:
        server.stop()
    elapsed = time.monotonic() - started
    # start-up (~5 s) + model_down_s (5 s) + stop and cleanup; never OpenCode's ~70 s.
    assert elapsed < 40, elapsed
    assert leftovers(run_dir.run_id) == []
    assert no_new_opencode(before_pids)
    assert sorted(os.listdir(repo)) == ["README.md", "src"]
    prov = json.loads((run_dir.path / "scaffold_provenance.json").read_text())
    assert len(prov["attempts"]) == 1 and "kept retrying" in prov["attempts"][0]["error"]
    assert (run_dir.path / "scaffold" / "attempt_01" / "opencode_server.log").is_file()
