"""Issue 16 flows through real sessions and the CLI: what a new user hits first.

Lean: small repos from ``make_repo``, stdlib-only test suites (``unittest``), no installs
except where the point is the installing contract (``init --tests``).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

import runner_env
from sandbox.engine import get_client
from tests.contract_repos import make_repo

pytestmark = pytest.mark.docker

FSM = [str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "fsm-runner")]


def fsm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FSM, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CI": "true", **(env or {})},
    )


def _events(run_dir: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


# -- 1: a call after a failed rollout ---------------------------------------------------------


def test_evaluate_after_a_failed_rollout_redeploys_and_returns_a_result(
    tmp_path: Path, default_image: str
) -> None:
    rollout = 'if [ "${BREAK_ROLLOUT:-}" = 1 ]; then echo broken >&2; exit 3; fi\n'
    from tests.contract_repos import ROLLOUT

    repo = make_repo(tmp_path / "repo", rollout=rollout + textwrap.dedent(ROLLOUT))
    sess = runner_env.setup(repo)
    roll = sess.rollout("m", env_overrides={"BREAK_ROLLOUT": "1"}, repair_iters=0)
    assert not roll.ok and roll.failed_stage == "rollout" and "rc=3" in roll.reason
    res = sess.evaluate(repair_iters=0)  # the predecessor's flow: was InvalidTransition
    assert res.ok, res.reason
    assert res.metrics == {"ok": True, "score": 0.5, "n": 8} and res.metrics_accepted
    states = [e["to_state"] for e in _events(sess.artifacts_dir) if e["kind"] == "transition"]
    assert states == [
        "BOOTSTRAPPED", "DEPLOYED", "FAILED", "BOOTSTRAPPED", "DEPLOYED", "ROLLED_OUT",
        "EVALUATED", "CLOSED",
    ]  # fmt: skip


# -- 3: red runs keep their numbers ---------------------------------------------------------

RED_EVALUATION = """\
python3 - <<'PY'
import json
json.dump({"ok": False, "score": 0.75, "passed": 3, "failed": 1}, open(".aider_fsm/metrics.json", "w"))
PY
for i in $(seq 1 30); do echo "test line $i"; done
echo "FAILED tests/test_x.py::test_four - assert 4 == 5" >&2
exit 1
"""


def test_a_red_run_keeps_its_numbers_and_shows_the_failing_output(
    tmp_path: Path, default_image: str
) -> None:
    repo = make_repo(tmp_path / "repo", evaluation=RED_EVALUATION)
    proc = fsm("run", str(repo), "--llm", "m", "--json", "--follow")
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is False and result["failed_stage"] == "evaluation"
    assert result["score"] == 0.75 and result["metrics_accepted"] is False
    assert result["metrics"]["failed"] == 1
    # --follow streams every line, not the latest one per second.
    assert all(f"evaluation | test line {i}" in proc.stderr for i in range(1, 31))
    listed = json.loads(fsm("runs", str(repo), "--json").stdout)[0]
    assert listed["score"] == 0.75 and listed["metrics"]["passed"] == 3
    shown = fsm("show", "latest", "--repo", str(repo))
    assert "score 0.75 (not accepted)" in shown.stdout
    assert "bash .aider_fsm/stages/evaluation.sh  (rc=1)" in shown.stdout
    assert "| FAILED tests/test_x.py::test_four - assert 4 == 5" in shown.stdout
    report = Path(result["report"]).read_text()
    assert "Metrics (not accepted" in report and "test line 30" in report
    assert "FAILED tests/test_x.py::test_four" in report


# -- 2: official commands: reported by default, required when asked -----------------------

UNITTEST_EVALUATION = """\
python3 -m unittest discover -s tests -v
python3 - <<'PY'
import json
json.dump({"ok": True, "score": len("ab") / 2}, open(".aider_fsm/metrics.json", "w"))
PY
"""


def _hinted(root: Path, evaluation: str) -> Path:
    repo = make_repo(root, evaluation=evaluation)
    (repo / "Makefile").write_text("test:\n\tpython3 -m unittest discover -s tests -v\n")
    (repo / "tox.ini").write_text("[testenv]\ncommands = python -m unittest discover -s tests\n")
    (repo / "tests").mkdir()
    (repo / "tests" / "test_ok.py").write_text(
        "import unittest\n\nclass T(unittest.TestCase):\n    def test_ok(self):\n        pass\n"
    )
    return repo


def test_official_commands_are_reported_not_required_for_your_own_contract(
    tmp_path: Path, default_image: str
) -> None:
    repo = _hinted(tmp_path / "repo", UNITTEST_EVALUATION.replace("python3 -m unittest", ": "))
    res = runner_env.setup(repo).evaluate(llm="m", repair_iters=0)
    assert res.ok, res.reason  # was missing_hints_used_json with metrics null
    assert res.hints is not None and res.hints["mode"] == "report" and res.hints["ran"] == []
    assert res.hints["found"], res.hints
    used = json.loads((repo / ".aider_fsm" / "hints_used.json").read_text())
    assert used["ok"] is False and used["written_by"].startswith("fsm-runner")


def test_required_official_command_is_decided_by_the_runners_record(
    tmp_path: Path, default_image: str
) -> None:
    ran = _hinted(tmp_path / "ran", UNITTEST_EVALUATION)
    res = runner_env.setup(ran, hints="require").evaluate(llm="m", repair_iters=0)
    assert res.ok, res.reason
    assert res.hints is not None and res.hints["mode"] == "require" and res.hints["ran"]
    used = json.loads((ran / ".aider_fsm" / "hints_used.json").read_text())
    assert used["ok"] is True and used["commands"] == res.hints["ran"]
    skipped = _hinted(
        tmp_path / "skipped", UNITTEST_EVALUATION.replace("python3 -m unittest", ": ")
    )
    proc = fsm("run", str(skipped), "--llm", "m", "--require-hints", "--json")
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert "hints_requirement_failed: none of the official commands ran" in result["reason"]
    assert result["score"] == 1.0 and result["metrics_accepted"] is False  # kept
    assert "hints: require (asked for" in proc.stderr


# -- 6: no model, tests-only contracts, init --tests ---------------------------------------


def _unittest_repo(root: Path, *, failing: bool = False) -> Path:
    root.mkdir(parents=True)
    (root / "pipeline.yml").write_text(
        "version: 1\ntests:\n  cmds: [python3 -m unittest discover -s tests]\n"
    )
    (root / "tests").mkdir()
    body = "import unittest\n\nclass T(unittest.TestCase):\n"
    body += "".join(f"    def test_{i}(self):\n        pass\n" for i in range(3))
    if failing:
        body += "    def test_bad(self):\n        self.assertEqual(1, 2)\n"
    (root / "tests" / "test_it.py").write_text(body)
    return root


def test_a_tests_only_contract_is_scored_by_its_tests_without_a_model(
    tmp_path: Path, default_image: str
) -> None:
    green = runner_env.setup(_unittest_repo(tmp_path / "green")).evaluate(repair_iters=0)
    assert green.ok, green.reason  # neither missing_llm nor "no evaluation commands"
    assert green.metrics is not None and green.metrics["passed"] == 3 and green.metrics_accepted
    red_repo = _unittest_repo(tmp_path / "red", failing=True)
    proc = fsm("run", str(red_repo), "--json")
    result = json.loads(proc.stdout)
    assert proc.returncode == 1 and result["failed_stage"] == "tests"
    assert result["metrics"]["failed"] == 1 and result["metrics"]["passed"] == 3
    assert result["score"] == 0.75 and result["metrics_accepted"] is False


def test_a_model_is_needed_only_where_the_rollout_needs_one(
    tmp_path: Path, default_image: str
) -> None:
    with pytest.raises(ValueError, match="missing_llm"):
        runner_env.setup(make_repo(tmp_path / "a")).evaluate(repair_iters=0)
    sess = runner_env.setup(make_repo(tmp_path / "b"))
    assert sess.rollout(None, repair_iters=0).ok
    assert sess.evaluate(repair_iters=0).ok  # was missing_llm after rollout(None)


def test_init_tests_runs_the_suite_and_counts_from_junit(
    tmp_path: Path, default_image: str
) -> None:
    repo = tmp_path / "proj"
    (repo / "tests").mkdir(parents=True)
    (repo / "tests" / "test_a.py").write_text(
        "def test_one():\n    assert 1\n\ndef test_two():\n    assert 2\n\n"
        "def test_three():\n    assert 3 == 4\n"
    )
    assert fsm("init", "--tests", str(repo)).returncode == 0
    proc = fsm("run", str(repo), "--json")
    result = json.loads(proc.stdout)
    assert proc.returncode == 1, proc.stderr
    metrics = result["metrics"]
    assert metrics["counts_from"] == "junit" and metrics["tests"] == 3
    assert (metrics["passed"], metrics["failed"]) == (2, 1) and result["metrics_accepted"] is False
    (repo / "tests" / "test_a.py").write_text("def test_one():\n    assert 1\n")
    again = json.loads(fsm("run", str(repo), "--json").stdout)
    assert again["ok"] is True and again["metrics"]["passed"] == 1
    # The bootstrap (venv + pytest) was saved once and reused: no second install.
    assert [s["stage"] for s in again["stages"]] == ["evaluation"]


# -- 7: keep, shell, gc --kept; one stage alone -----------------------------------------------


def test_keep_shell_and_gc_kept(tmp_path: Path, default_image: str) -> None:
    repo = make_repo(tmp_path / "repo")
    proc = fsm("run", str(repo), "--llm", "m", "--keep", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    name, run_id = result["kept_sandbox"], result["run_id"]
    assert name and f"fsm-runner shell {run_id}" in proc.stderr
    client = get_client()
    try:
        ct = client.containers.get(name)
        assert ct.status == "running" and ct.labels.get("fsm-runner.kept") == "1"
        inside = fsm("shell", run_id, "--", "cat", ".aider_fsm/metrics.json")
        assert inside.returncode == 0 and json.loads(inside.stdout)["score"] == 0.5
        assert fsm("shell", run_id, "--", "false").returncode == 1
        gc = fsm("gc")
        assert "kept by run --keep" in gc.stdout
        assert client.containers.get(name).status == "running"  # plain gc leaves it
        assert fsm("gc", "--kept").returncode == 0
        assert client.containers.list(all=True, ignore_removed=True, filters={"name": name}) == []
    finally:
        for leftover in client.containers.list(
            all=True, ignore_removed=True, filters={"name": name}
        ):
            leftover.remove(force=True, v=True)


def test_run_one_stage_on_the_cached_bootstrap(tmp_path: Path, default_image: str) -> None:
    evaluation = 'echo "{\\"ok\\": true, \\"score\\": $(( 2 - 1 ))}" > .aider_fsm/metrics.json\n'
    repo = make_repo(tmp_path / "repo", evaluation=evaluation)
    proc = fsm("run", str(repo), "--stage", "evaluation", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert [s["stage"] for s in result["stages"]] == ["bootstrap", "evaluation"]
    assert result["metrics"] == {"ok": True, "score": 1}
    bad = fsm("run", str(repo), "--stage", "benchmark")
    assert bad.returncode == 2 and "not in this contract" in bad.stderr


# -- 8: CLI options reach the sandbox ---------------------------------------------------------


def test_run_limits_timeout_and_pipeline_options(tmp_path: Path, default_image: str) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "pipeline.yml").rename(repo / "contract.yml")
    args = ("--memory", "700m", "--cpus", "0.5", "--pids", "200", "--timeout", "37")
    proc = fsm("run", str(repo), "--llm", "m", "--pipeline", "contract.yml", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(json.loads(proc.stdout)["artifacts_dir"])
    limits = json.loads((run_dir / "sandbox.json").read_text())["limits"]
    assert (limits["memory"], limits["cpus"], limits["pids"]) == ("700m", 0.5, 200)
    starts = [e for e in _events(run_dir) if e["kind"] == "stage_start"]
    assert {e["timeout_s"] for e in starts if e["stage"] == "rollout"} == {37.0}


# -- 4: DNS in network-none stages, cold and warm ---------------------------------------------

DNS_EVALUATION = """\
cat /etc/resolv.conf > "$AIDER_FSM_ARTIFACTS_DIR/resolv.txt"
cat /etc/hosts > "$AIDER_FSM_ARTIFACTS_DIR/hosts.txt"
if getent hosts example.invalid; then echo "resolved in a none stage" >&2; exit 9; fi
python3 -c 'import json; json.dump({"ok": True, "score": float(len("x"))}, open(".aider_fsm/metrics.json", "w"))'
"""


def test_dns_is_the_same_cold_and_warm_and_fails_fast_without_network(
    tmp_path: Path, default_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FSM_RUNNER_BOOTSTRAP_CACHE_MIN_SECONDS", "0")  # snapshot every bootstrap
    pipeline = "version: 1\nevaluation:\n  run_cmds: [bash .aider_fsm/stages/evaluation.sh]\n"
    # 4 s: a lookup through a stale 127.0.0.11 waits out 2 x 5 s resolver timeouts.
    pipeline += "  timeout_seconds: 4\n"
    # A bootstrap of its own: its snapshot must not answer other tests' (same) bootstrap.
    bootstrap = f"version: 1\ncmds:\n  - echo dns-test-{tmp_path.name}\n"
    repo = make_repo(
        tmp_path / "repo", pipeline=pipeline, evaluation=DNS_EVALUATION, bootstrap=bootstrap
    )
    seen = []
    for _ in ("cold", "warm"):
        sess = runner_env.setup(repo)
        res = sess.evaluate(repair_iters=0)
        assert res.ok, res.reason  # the lookup failed within the stage's 4 s
        files = sess.artifacts_dir / "env_api" / "evaluation_attempt_01" / "stage_files"
        cache = json.loads((sess.artifacts_dir / "sandbox.json").read_text())["bootstrap_cache"]
        seen.append(((files / "resolv.txt").read_text(), (files / "hosts.txt").read_text(), cache))
    (cold_resolv, cold_hosts, cold_cache), (warm_resolv, warm_hosts, warm_cache) = seen
    assert cold_cache["hit"] is False and warm_cache["hit"] is True
    assert cold_resolv == warm_resolv and "127.0.0.11" not in cold_resolv
    assert cold_hosts == warm_hosts
