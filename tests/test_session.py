"""The contract engine end to end: runner_env.setup -> rollout -> evaluate, in real containers."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import threading
from pathlib import Path

import pytest

import runner_env
from runner.errors import ContractError
from sandbox.engine import get_client
from tests.contract_repos import make_repo

pytestmark = pytest.mark.docker


def _events(run_dir: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def _host_reference_score(repo: Path, tmp_path: Path) -> dict[str, object]:
    """What the predecessor did: the same stage scripts run directly on the host."""
    work = tmp_path / "host_copy"
    subprocess.run(["cp", "-a", str(repo), str(work)], check=True)
    env = {
        **os.environ,
        "AIDER_FSM_REPO_ROOT": str(work),
        "AIDER_FSM_ARTIFACTS_DIR": str(work / "art"),
    }
    (work / "art").mkdir()
    for script in ("rollout", "evaluation"):
        subprocess.run(["bash", f".aider_fsm/stages/{script}.sh"], cwd=work, env=env, check=True)
    return dict(json.loads((work / ".aider_fsm" / "metrics.json").read_text()))


def test_predecessor_contract_same_result_in_container(tmp_path: Path, default_image: str) -> None:
    repo = make_repo(tmp_path / "repo")
    expected = _host_reference_score(repo, tmp_path)
    sess = runner_env.setup(repo)
    roll = sess.rollout(llm="some-model", mode="smoke", require_samples=True, repair_iters=0)
    assert roll.ok, roll.reason
    assert roll.samples == 8
    res = sess.evaluate(mode="smoke", repair_iters=0)
    assert res.ok, res.reason
    assert res.metrics == expected == {"ok": True, "score": 0.5, "n": 8}
    assert res.metrics_path == repo / ".aider_fsm" / "metrics.json"
    assert json.loads(res.metrics_path.read_text())["score"] == 0.5

    run_dir = sess.artifacts_dir
    sandbox_json = json.loads((run_dir / "sandbox.json").read_text())
    assert sandbox_json["backend"] == "docker" and sandbox_json["container_id"]
    assert sandbox_json["stages"]["bootstrap"]["network"] == "egress"
    assert sandbox_json["stages"]["evaluation"]["network"] == "none"
    kinds = [e["kind"] for e in _events(run_dir)]
    assert "sandbox_opened" in kinds
    states = [e["to_state"] for e in _events(run_dir) if e["kind"] == "transition"]
    assert states == ["BOOTSTRAPPED", "DEPLOYED", "ROLLED_OUT", "EVALUATED", "CLOSED"]
    # Predecessor file layout for per-command records.
    roll_dir = run_dir / "env_api" / "rollout_attempt_01"
    assert (roll_dir / "rollout_cmd01_try01_stdout.txt").exists()
    assert json.loads((roll_dir / "rollout_summary.json").read_text())["ok"] is True
    # The deploy service ran until teardown, which ran at the end of evaluate().
    teardown = list(run_dir.glob("env_api/final_teardown/stage_files/teardown.txt"))
    assert teardown, "teardown did not run in the sandbox"
    # Nothing of ours is left running.
    left = get_client().containers.list(
        all=True, ignore_removed=True, filters={"label": f"fsm-runner.run-id={sess.run_id}"}
    )
    assert left == []
    # The host checkout was written only under .aider_fsm/.
    assert (repo / "README.md").read_text() == "# target\n"
    assert not (repo / "art").exists()


def test_stale_metrics_never_pass(tmp_path: Path, default_image: str) -> None:
    repo = make_repo(tmp_path / "repo", evaluation="echo 'evaluated nothing'\n")
    stale = repo / ".aider_fsm" / "metrics.json"
    stale.write_text(json.dumps({"ok": True, "score": 1.0}))
    sess = runner_env.setup(repo)
    res = sess.evaluate(llm="m", mode="smoke", repair_iters=0)
    assert not res.ok
    assert res.failed_stage == "metrics"
    assert "metrics_file_missing" in res.reason
    assert not stale.exists(), "the stale host copy must be removed, not left to mislead"


def test_nan_reward_fails_with_line_number(tmp_path: Path, default_image: str) -> None:
    rollout = """\
    printf '%s\\n' '{"prompt":"p","completion":"c","reward":1}' '{"prompt":"p","completion":"c","reward":NaN}' > s.jsonl
    echo '{"paths":{"samples_jsonl":"s.jsonl"}}' > .aider_fsm/rollout.json
    """
    repo = make_repo(tmp_path / "repo", rollout=rollout)
    sess = runner_env.setup(repo)
    with sess:
        roll = sess.rollout(llm="m", require_samples=True, repair_iters=0)
    assert not roll.ok
    assert roll.failed_stage == "rollout"
    assert ":2" in roll.reason and "reward" in roll.reason


def test_missing_completion_fails_with_line_number(tmp_path: Path, default_image: str) -> None:
    rollout = """\
    printf '%s\\n' '{"prompt":"p","completion":"c","reward":1}' '{"prompt":"p","completion":"c","reward":0}' '{"prompt":"p","reward":0}' > s.jsonl
    echo '{"paths":{"samples_jsonl":"s.jsonl"}}' > .aider_fsm/rollout.json
    """
    repo = make_repo(tmp_path / "repo", rollout=rollout)
    with runner_env.setup(repo) as sess:
        roll = sess.rollout(llm="m", require_samples=True, repair_iters=0)
    assert not roll.ok and ":3" in roll.reason and "completion" in roll.reason


def test_four_concurrent_sessions_on_one_repo(tmp_path: Path, default_image: str) -> None:
    repo = make_repo(tmp_path / "repo")
    results: list[tuple[bool, Path, object]] = []
    lock = threading.Lock()

    def one() -> None:
        sess = runner_env.setup(repo)
        sess.rollout(llm="m", require_samples=True, repair_iters=0)
        res = sess.evaluate(repair_iters=0)
        with lock:
            results.append((res.ok, sess.artifacts_dir, res.metrics))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert len(results) == 4
    assert all(ok for ok, _, _ in results), results
    assert len({d for _, d, _ in results}) == 4
    assert all(m == {"ok": True, "score": 0.5, "n": 8} for _, _, m in results)


def test_failed_stage_is_a_result_with_reason(tmp_path: Path, default_image: str) -> None:
    repo = make_repo(tmp_path / "repo", deploy_health="echo 'service is down' >&2; exit 7\n")
    with runner_env.setup(repo) as sess:
        roll = sess.rollout(llm="m", repair_iters=0)
    assert not roll.ok
    assert roll.failed_stage == "deploy_health"
    assert "rc=7" in roll.reason and "service is down" in roll.reason
    assert roll.verify.deploy_health is not None and roll.verify.deploy_health.failed_index == 0


def test_policy_refusal_is_recorded_as_blocked(tmp_path: Path, default_image: str) -> None:
    repo = make_repo(tmp_path / "repo", deploy_setup="", evaluation="")
    (repo / "pipeline.yml").write_text(
        "version: 1\nrollout:\n  run_cmds:\n    - docker run --privileged alpine\n"
    )
    with runner_env.setup(repo) as sess:
        roll = sess.rollout(llm="m", repair_iters=0)
    assert not roll.ok and roll.failed_stage == "rollout"
    assert roll.verify.rollout is not None
    assert roll.verify.rollout.results[0].rc == 126
    assert "blocked" in roll.reason


def test_bootstrap_runs_once_and_its_env_reaches_stages(tmp_path: Path, default_image: str) -> None:
    evaluation = """\
    test "$(wc -l < /tmp/bootstrap_count)" = 1
    test "$GREETING" = "hello /workspace"
    echo '{"ok": true, "score": 1}' > .aider_fsm/metrics.json
    """
    repo = make_repo(tmp_path / "repo", evaluation=evaluation)
    sess = runner_env.setup(repo, audit="off")  # the fixed score is not what is tested here
    assert sess.rollout(llm="m", repair_iters=0).ok
    res = sess.evaluate(repair_iters=0)
    assert res.ok, res.reason


def test_broken_pipeline_is_a_contract_error_with_line(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "pipeline.yml").write_text("version: 1\nrollout:\n  run_cmdz:\n    - echo hi\n")
    with pytest.raises(ContractError) as info:
        runner_env.setup(repo)
    text = str(info.value)
    assert "pipeline.yml:3" in text and "run_cmd" in text


def test_bad_yaml_is_a_contract_error(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "pipeline.yml").write_text("version: 1\nrollout: [unclosed\n")
    with pytest.raises(ContractError, match=r"pipeline\.yml:\d+"):
        runner_env.setup(repo)


def test_missing_contract_says_how_to_write_one(tmp_path: Path) -> None:
    repo = tmp_path / "empty"
    repo.mkdir()
    with pytest.raises(ContractError, match="fsm-runner init"):
        runner_env.setup(repo)


def test_opencode_url_is_ignored_out_loud(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    with pytest.warns(UserWarning, match="opencode_url is ignored") as caught:
        sess = runner_env.setup(repo, opencode_url="http://127.0.0.1:4096")
    assert caught[0].filename == __file__  # points at the caller's line
    sess.close()


def test_local_backend_only_by_name(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    sess = runner_env.setup(repo, sandbox="local")
    assert sess.rollout(llm="m", require_samples=True, repair_iters=0).ok
    res = sess.evaluate(repair_iters=0)
    assert res.ok and res.metrics == {"ok": True, "score": 0.5, "n": 8}
    assert json.loads((sess.artifacts_dir / "sandbox.json").read_text())["backend"] == "local"


def test_actions_yml_runs_once_after_bootstrap(tmp_path: Path, default_image: str) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / ".aider_fsm" / "actions.yml").write_text(
        "version: 1\nactions:\n"
        "  - id: make-data\n    kind: run_cmd\n    cmd: echo from-action > data.txt\n"
        "  - id: note\n    kind: write_file\n    path: notes/n.txt\n    content: hello\n"
    )
    evaluation = """\
    test "$(cat data.txt)" = from-action
    test "$(cat notes/n.txt)" = hello
    echo '{"ok": true, "score": 1}' > .aider_fsm/metrics.json
    """
    (repo / ".aider_fsm" / "stages" / "evaluation.sh").write_text(textwrap.dedent(evaluation))
    sess = runner_env.setup(repo, audit="off")  # the fixed score is not what is tested here
    res = sess.evaluate(llm="m", repair_iters=0)
    assert res.ok, res.reason
    summary = json.loads(
        (sess.artifacts_dir / "env_api" / "actions" / "actions_summary.json").read_text()
    )
    assert [a["id"] for a in summary] == ["make-data", "note"] and all(a["ok"] for a in summary)
    assert not (repo / "data.txt").exists(), "actions run in the sandbox, not on the host"


def test_actions_may_not_rewrite_the_contract(tmp_path: Path, default_image: str) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / ".aider_fsm" / "actions.yml").write_text(
        "version: 1\nactions:\n  - kind: write_file\n    path: pipeline.yml\n    content: 'version: 1'\n"
    )
    with runner_env.setup(repo) as sess:
        roll = sess.rollout(llm="m", repair_iters=0)
    assert not roll.ok and roll.failed_stage == "actions"
    assert "protected" in roll.reason


def test_stage_env_carries_aider_variables_as_seen_inside(
    tmp_path: Path, default_image: str
) -> None:
    rollout = """\
    env | grep -E '^(AIDER_|OPENAI_MODEL|PYTHONPATH)' | sort > "$AIDER_FSM_ARTIFACTS_DIR/env.txt"
    printf '%s\\n' '{"prompt":"p","completion":"c","reward":1}' > s.jsonl
    echo '{"paths":{"samples_jsonl":"s.jsonl"}}' > .aider_fsm/rollout.json
    """
    bootstrap = "version: 1\ncmds: ['true']\nenv:\n  AIDER_FSM_PYTHON: python3\n  PYTHONPATH: src\n"
    repo = make_repo(tmp_path / "repo", rollout=rollout, bootstrap=bootstrap)
    with runner_env.setup(repo) as sess:
        roll = sess.rollout(llm="model-x", mode="full", require_samples=True, repair_iters=0)
        assert roll.ok, roll.reason
    env_file = next(sess.artifacts_dir.glob("env_api/rollout_attempt_01/stage_files/env.txt"))
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert env["AIDER_FSM_STAGE"] == "rollout"
    assert env["AIDER_FSM_REPO_ROOT"] == "/workspace"
    assert env["AIDER_FSM_ARTIFACTS_DIR"].startswith(
        f"/workspace/.aider_fsm/artifacts/{sess.run_id}/"
    )
    assert env["AIDER_FSM_RUN_ID"] == sess.run_id
    assert env["AIDER_EVAL_MODE"] == "full"
    assert env["AIDER_LLM_KIND"] == "remote" and env["AIDER_LLM_MODEL"] == "model-x"
    assert env["OPENAI_MODEL"] == "model-x"
    assert env["AIDER_RUNTIME_ENV_PATH"] == "/workspace/.aider_fsm/runtime_env.json"
    assert env["AIDER_FSM_PYTHON"] == "python3"
    # The runner's helpers first, the contract's own path kept after them.
    assert env["PYTHONPATH"] == "/opt/fsm-runner:src"


def test_forgotten_session_is_closed_by_garbage_collection(
    tmp_path: Path, default_image: str
) -> None:
    import gc

    repo = make_repo(tmp_path / "repo")
    sess = runner_env.setup(repo)
    assert sess.rollout(llm="m", repair_iters=0).ok
    run_id = sess.run_id
    label = {"label": f"fsm-runner.run-id={run_id}"}
    assert get_client().containers.list(all=True, ignore_removed=True, filters=label)
    del sess
    gc.collect()
    assert get_client().containers.list(all=True, ignore_removed=True, filters=label) == []


def test_env_file_reaches_stages_and_is_masked(tmp_path: Path, default_image: str) -> None:
    env_file = tmp_path / "job.env"
    env_file.write_text("# for the stages\nexport DATASET_TOKEN='tok-1234567890'\nPLAIN=value\n")
    evaluation = """\
    echo "token is $DATASET_TOKEN"
    test "$PLAIN" = value
    echo "{\\"ok\\": true, \\"score\\": 1, \\"seen\\": \\"$DATASET_TOKEN\\"}" > .aider_fsm/metrics.json
    """
    repo = make_repo(tmp_path / "repo", evaluation=evaluation)
    sess = runner_env.setup(repo, env_file=env_file, audit="off")
    res = sess.evaluate(llm="m", repair_iters=0)
    assert res.ok, res.reason
    # The stage saw the value; what comes back through the run dir is masked.
    assert res.metrics is not None and res.metrics["seen"] == "***"
    for path in sess.artifacts_dir.rglob("*"):
        if path.is_file():
            assert "tok-1234567890" not in path.read_text(errors="replace"), path


def test_audit_flags_a_hard_coded_score_and_warn_only_records_it(
    tmp_path: Path, default_image: str
) -> None:
    evaluation = 'echo \'{"ok": true, "score": 0.875}\' > .aider_fsm/metrics.json\n'
    repo = make_repo(tmp_path / "repo", evaluation=evaluation)
    res = runner_env.setup(repo).evaluate(llm="m", repair_iters=0)
    assert not res.ok and "audit.hard_coded_score" in res.reason
    warn = runner_env.setup(repo, audit="warn-only")
    res = warn.evaluate(llm="m", repair_iters=0)
    assert res.ok
    assert list(warn.artifacts_dir.glob("env_api/*/evaluation_audit_error.txt"))


def test_artifacts_dir_of_a_call_gets_a_copy_of_its_records(
    tmp_path: Path, default_image: str
) -> None:
    """The predecessor's ``artifacts_dir=`` on rollout/evaluate: the records land there too."""
    repo = make_repo(tmp_path / "repo")
    export = tmp_path / "exported"
    with runner_env.setup(repo) as sess:
        with pytest.raises(ValueError, match="inside the run dir"):
            sess.rollout(llm="m", artifacts_dir=sess.artifacts_dir / "env_api", repair_iters=0)
        assert not (sess.artifacts_dir / "env_api" / "rollout_attempt_01").exists()  # refused first
        roll = sess.rollout(llm="m", require_samples=True, artifacts_dir=export, repair_iters=0)
        assert roll.ok, roll.reason
        assert roll.artifacts_dir == export.resolve()
        assert (export / "rollout_attempt_01" / "rollout_stdout.txt").is_file()
        res = sess.evaluate(artifacts_dir=str(export), repair_iters=0)
    assert res.ok, res.reason
    assert res.artifacts_dir == export.resolve()
    assert (export / "evaluation_attempt_01" / "evaluation_summary.json").is_file()
    assert (export / "final_teardown").is_dir()
    # The run dir is still the record; the export is a copy of it.
    recorded = sess.artifacts_dir / "env_api" / "rollout_attempt_01" / "rollout_stdout.txt"
    assert (
        recorded.read_bytes() == (export / "rollout_attempt_01" / "rollout_stdout.txt").read_bytes()
    )


def test_a_running_command_reports_its_latest_line_masked(
    tmp_path: Path, default_image: str
) -> None:
    """Long stages show they are alive: the last printed line reaches ``progress``."""
    key = "sk-live-" + os.urandom(8).hex()
    rollout = (
        'for i in 1 2 3; do echo "step-$i"; sleep 1.3; done\n'
        'echo "key is $FSM_TEST_API_KEY"; sleep 1.3\n'
        + textwrap.dedent(
            """\
            python3 - <<'PY'
            import json
            row = {"prompt": "p", "completion": "c", "reward": 1}
            open("samples.jsonl", "w").write(json.dumps(row) + "\\n")
            json.dump({"paths": {"samples_jsonl": "samples.jsonl"}},
                      open(".aider_fsm/rollout.json", "w"))
            PY
            """
        )
    )
    repo = make_repo(tmp_path / "repo", rollout=rollout)
    lines: list[str] = []
    with runner_env.setup(repo, progress=lines.append) as sess:
        roll = sess.rollout(llm="m", env_overrides={"FSM_TEST_API_KEY": key}, repair_iters=0)
    assert roll.ok, roll.reason
    live = [line for line in lines if line.startswith("rollout | ")]
    assert live[:3] == ["rollout | step-1", "rollout | step-2", "rollout | step-3"], lines
    assert "rollout | key is ***" in live, live
    assert not any(key in line for line in lines)


def test_misspelt_agent_option_is_refused_with_the_closest_name(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    with pytest.raises(TypeError, match=r"opencode_modle \(did you mean opencode_model\?\)"):
        runner_env.setup(repo, opencode_modle="openai/gpt-4o")
    runner_env.setup(repo, opencode_retry_attempts=3).close()  # the predecessor's, accepted
