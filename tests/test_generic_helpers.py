"""The stage helpers run as a contract runs them: subprocesses, stage env, repo in tmp_path.

``python -S`` (no site-packages) proves the helpers need only the standard library, as
in the sandbox image; the GSM8K test runs without ``-S`` because it reads parquet.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from runner.contract.outputs import validate_hints_run, validate_hints_used, validate_rollout
from runner.helpers.generic_rollout import final_answer, reference_answer, reward
from runner.session.stage_env import base_stage_env
from runner.trust.hint_scores import parse_test_counts, score_from_json, score_from_text
from runner.trust.hints import check_hints_evidence, hint_env, read_hints_exec
from tests.fakes.model_server import ScriptedModelServer

RUNNER_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
RUN_ID = "20260101T000000Z_test"


def stage_env(repo: Path, stage: str, llm: Mapping[str, str] | None = None) -> dict[str, str]:
    """What the session gives a stage, plus the helper mount variables and hint env."""
    artifacts = repo / ".aider_fsm" / "artifacts" / RUN_ID / f"{stage}_attempt_01"
    env = base_stage_env(
        stage=stage,
        workspace=str(repo),
        run_id=RUN_ID,
        artifacts_dir=str(artifacts),
        mode="smoke",
        bootstrap_env={},
        llm_env=dict(llm or {}),
    )
    env.update(hint_env(repo) if stage == "evaluation" else {})
    env.update(
        PATH=f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
        HOME=str(repo.parent),
        PYTHONPATH=str(RUNNER_ROOT),
        AIDER_FSM_RUNNER_ROOT=str(RUNNER_ROOT),
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def run_helper(
    name: str, repo: Path, env: Mapping[str, str], *, as_script: bool = False, site: bool = False
) -> subprocess.CompletedProcess[str]:
    flags = [] if site else ["-S"]
    target = [str(RUNNER_ROOT / "runner" / f"{name}.py")] if as_script else ["-m", f"runner.{name}"]
    return subprocess.run(
        [sys.executable, *flags, *target],
        cwd=repo,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def read(repo: Path, name: str) -> Any:
    return json.loads((repo / ".aider_fsm" / name).read_text())


def make_repo(tmp_path: Path, readme: str, tests: str) -> Path:
    repo = tmp_path / "target"
    (repo / "tests").mkdir(parents=True)
    (repo / "README.md").write_text(textwrap.dedent(readme))
    (repo / "tests" / "test_core.py").write_text(textwrap.dedent(tests))
    return repo


PYTEST_README = """\
    # demo

    Run the test suite:

    ```bash
    pytest -q -p no:cacheprovider tests
    ```
    """


@pytest.mark.parametrize("as_script", [False, True], ids=["module", "script_path"])
def test_evaluation_runs_the_readme_pytest_hint(tmp_path: Path, as_script: bool) -> None:
    repo = make_repo(
        tmp_path,
        PYTEST_README,
        """\
        def test_one():
            assert 1 + 1 == 2

        def test_two():
            assert "a".upper() == "A"
        """,
    )
    env = stage_env(repo, "evaluation")
    assert env["AIDER_FSM_REQUIRE_HINTS"] == "1"
    proc = run_helper("generic_evaluation", repo, env, as_script=as_script)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    metrics = read(repo, "metrics.json")
    assert metrics["ok"] is True
    assert metrics["score"] == 1.0
    assert metrics["score_source"] == "test_counts"
    expected_anchors = json.loads(env["AIDER_FSM_HINT_ANCHORS_JSON"])
    used = validate_hints_used(repo / ".aider_fsm" / "hints_used.json", expected_anchors)
    assert used["commands"] == ["pytest -q -p no:cacheprovider tests"]
    assert used["used_anchors"] == ["pytest"]
    run = validate_hints_run(repo / ".aider_fsm" / "hints_run.json")
    assert run["executed_attempts"] == 1
    assert "2 passed" in run["attempts"][0]["stdout_tail"]

    log = Path(env["AIDER_FSM_ARTIFACTS_DIR"]) / "hints_exec.jsonl"
    helper_log = read_hints_exec(log)
    assert helper_log == ["pytest -q -p no:cacheprovider tests"]
    stage_cmd = "python3 -m runner.helpers.generic_evaluation"
    assert check_hints_evidence(used, [stage_cmd], helper_log=helper_log) == []
    # The same claim without the runner's record of the helper is not evidence.
    assert check_hints_evidence(used, ["bash evaluation.sh"], helper_log=helper_log) != []


def test_failing_tests_give_a_measured_score(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path,
        PYTEST_README,
        """\
        import pytest

        @pytest.mark.parametrize("n", [1, 2, 3, 4])
        def test_n(n):
            assert n != 4
        """,
    )
    proc = run_helper("generic_evaluation", repo, stage_env(repo, "evaluation"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = read(repo, "metrics.json")
    assert (metrics["ok"], metrics["score"]) == (True, 0.75)


def test_required_hints_that_cannot_run_fail_with_exit_2(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path,
        """\
        ```bash
        no-such-eval-tool --split test
        python -m no_such_pkg.evaluate --limit 3
        ```
        """,
        "def test_x():\n    pass\n",
    )
    env = stage_env(repo, "evaluation")
    proc = run_helper("generic_evaluation", repo, env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    run = read(repo, "hints_run.json")
    assert run["reason"] == "all_hints_unrunnable"
    assert {a["skip_reason"] for a in run["attempts"]} == {
        "command_not_found: no-such-eval-tool",
        "module_not_found: no_such_pkg.evaluate",
    }
    assert read(repo, "metrics.json")["ok"] is False
    assert read(repo, "hints_used.json")["ok"] is False
    assert not (Path(env["AIDER_FSM_ARTIFACTS_DIR"]) / "hints_exec.jsonl").exists()


def test_a_metrics_file_written_by_the_command_is_the_score(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path,
        """\
        ```bash
        python3 eval.py --out results
        ```
        """,
        "",
    )
    (repo / "eval.py").write_text(
        "import json, os, sys\n"
        "os.makedirs('results', exist_ok=True)\n"
        "json.dump({'config': {'n': 8}, 'results': {'accuracy': 62.5}}, "
        "open('results/metrics.json', 'w'))\n"
        "print('score: 0.1 (not this one: the file wins)')\n"
    )
    proc = run_helper("generic_evaluation", repo, stage_env(repo, "evaluation"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = read(repo, "metrics.json")
    assert (metrics["score"], metrics["score_source"]) == (0.625, "metrics_file")


def test_no_hints_falls_back_to_rollout_rewards(tmp_path: Path) -> None:
    repo = tmp_path / "target"
    (repo / ".aider_fsm").mkdir(parents=True)
    lines = [
        {"prompt": f"q{i}", "completion": "a", "reward": r} for i, r in enumerate([1, 0, 1, 1])
    ]
    (repo / ".aider_fsm" / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (repo / ".aider_fsm" / "rollout.json").write_text(
        json.dumps({"ok": True, "paths": {"samples_jsonl": ".aider_fsm/samples.jsonl"}})
    )
    env = stage_env(repo, "evaluation")
    assert "AIDER_FSM_REQUIRE_HINTS" not in env
    proc = run_helper("generic_evaluation", repo, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = read(repo, "metrics.json")
    assert (metrics["ok"], metrics["score"], metrics["source"]) == (True, 0.75, "rollout_samples")


# --- rollout --------------------------------------------------------------------------

GSM8K = [
    (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
        "clips in May. How many clips did Natalia sell altogether in April and May?",
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 "
        "clips altogether in April and May.\n#### 72",
        "She sold 48 in April and 24 in May, 72 in total.\nFINAL: 72",
    ),
    (
        "Janet\u2019s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
        "muffins for her friends every day with four. She sells the remainder at the farmers' "
        "market daily for $2 per fresh duck egg. How much in dollars does she make every day at "
        "the farmers' market?",
        "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = "
        "$<<9*2=18>>18 every day at the farmer\u2019s market.\n#### 18",
        "16 - 3 - 4 = 9 eggs, 9 * 2 = 18.\nFINAL: $18",
    ),
    (
        "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in "
        "total does it take?",
        "It takes 2/2=<<2/2=1>>1 bolt of white fiber\nSo the total amount of fabric is "
        "2+1=<<2+1=3>>3 bolts of fabric\n#### 3",
        "2 blue and 2 white.\nFINAL: 4",  # wrong on purpose
    ),
    (
        "Josh decides to try flipping a house. He buys a house for $80,000 and then puts in "
        "$50,000 in repairs. This increased the value of the house by 150%. How much profit "
        "did he make?",
        "The cost of the house and repairs came out to 80,000+50,000=$<<80000+50000=130000>>"
        "130,000\nHe increased the value of the house by 80,000*1.5=<<80000*1.5=120000>>120,000"
        "\nSo the new value of the house is 120,000+80,000=$<<120000+80000=200000>>200,000\nSo "
        "he made a profit of 200,000-130,000=$<<200000-130000=70000>>70,000\n#### 70000",
        "Value 200,000 minus cost 130,000.\nFINAL: 70,000",
    ),
]


def scripted_answer(body: dict[str, Any]) -> str:
    prompt = body["messages"][-1]["content"]
    return next(reply for question, _, reply in GSM8K if question in prompt)


def test_gsm8k_snapshot_rewards_exact_final_answers(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    repo = hf_snapshot(tmp_path)
    table = pa.table({"question": [q for q, _, _ in GSM8K], "answer": [a for _, a, _ in GSM8K]})
    pq.write_table(table, repo / "main" / "test-00000-of-00001.parquet")

    with ScriptedModelServer(script=scripted_answer, model="scripted") as server:
        llm = {"OPENAI_API_BASE": server.url, "OPENAI_MODEL": "scripted", "OPENAI_API_KEY": "sk-t"}
        proc = run_helper("generic_rollout", repo, stage_env(repo, "rollout", llm), site=True)
        requests = server.requests
        headers = [r.headers for r in server.log if r.method == "POST"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(requests) == 4
    assert all(r["temperature"] == 0 and r["model"] == "scripted" for r in requests)
    assert all(h.get("Authorization") == "Bearer sk-t" for h in headers)

    rollout = read(repo, "rollout.json")
    assert rollout["kind"] == "hf_qa"
    assert rollout["counts"] == {"samples": 4, "errors": 0, "correct": 3}
    report = validate_rollout(repo, repo / ".aider_fsm" / "rollout.json", min_samples=4)
    assert report.reward_mean == 0.75
    samples = [json.loads(x) for x in Path(report.path).read_text().splitlines()]
    assert [s["reward"] for s in samples] == [1.0, 1.0, 0.0, 1.0]
    assert all(q in s["prompt"] for s, (q, _, _) in zip(samples, GSM8K, strict=True))

    # Evaluation without hints scores the rollout: the pass rate is the scripted share.
    proc = run_helper("generic_evaluation", repo, stage_env(repo, "evaluation"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert read(repo, "metrics.json")["score"] == 0.75


def hf_snapshot(tmp_path: Path) -> Path:
    repo = tmp_path / "hf_openai_gsm8k"
    (repo / "main").mkdir(parents=True)
    (repo / "data").mkdir()
    (repo / "data" / "hf_manifest.json").write_text(
        json.dumps({"source": "huggingface_dataset", "dataset_id": "openai/gsm8k"})
    )
    return repo


def test_a_jsonl_test_split_needs_only_the_standard_library(tmp_path: Path) -> None:
    repo = hf_snapshot(tmp_path)
    rows = [{"question": q, "answer": a} for q, a, _ in GSM8K]
    (repo / "main" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with ScriptedModelServer(script=scripted_answer) as server:
        llm = {"OPENAI_API_BASE": server.url, "OPENAI_MODEL": "m"}
        proc = run_helper("generic_rollout", repo, stage_env(repo, "rollout", llm))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rollout = read(repo, "rollout.json")
    assert (rollout["kind"], rollout["counts"]["correct"]) == ("hf_qa", 3)


def test_a_parquet_split_without_pyarrow_fails_loudly(tmp_path: Path) -> None:
    repo = hf_snapshot(tmp_path)
    (repo / "main" / "test-00000-of-00001.parquet").write_bytes(b"PAR1 not read PAR1")
    (repo / "README.md").write_text(
        "# GSM8K\n\nA long enough dataset card paragraph to ask about.\n"
    )
    with ScriptedModelServer(script="unused") as server:
        llm = {"OPENAI_API_BASE": server.url, "OPENAI_MODEL": "m"}
        proc = run_helper("generic_rollout", repo, stage_env(repo, "rollout", llm))  # -S
        assert server.requests == []
    assert proc.returncode == 1
    rollout = read(repo, "rollout.json")
    assert (rollout["ok"], rollout["kind"]) == (False, "hf_qa")
    assert rollout["errors"][0].startswith("pyarrow_missing: main/test-00000-of-00001.parquet")


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("FINAL: 72", "reasoning\n#### 72", 1.0),
        ("FINAL: 72.0", "#### 72", 1.0),
        ("final answer: $1,234", "#### 1234", 1.0),
        ("FINAL\uff1a-5", "#### -5", 1.0),
        ("FINAL: 1/2", "#### 0.5", 1.0),
        ("The answer is 18.", "#### 18", 1.0),
        ("\\boxed{42}", "#### 42", 1.0),
        ("FINAL: 7", "#### 72", 0.0),
        ("FINAL: 720", "#### 72", 0.0),
        ("no number at all", "#### 72", 0.0),
        ("FINAL: Paris", "#### paris", 1.0),
    ],
)
def test_reward(completion: str, answer: str, expected: float) -> None:
    assert reward(completion, answer) == expected


def test_answer_extraction_regexes_are_single_escaped() -> None:
    # The predecessor's r"\\d" matched a backslash and a "d": every reward was 0.
    assert reference_answer("x\n#### 72") == "72"
    assert final_answer("work\nFINAL: 72") == "72"
    assert final_answer("12 apples and 30 pears") == "30"
    assert not re.search(r"\\\\[dsw]", (RUNNER_ROOT / "runner" / "generic_rollout.py").read_text())


def test_readme_fallback_is_labelled(tmp_path: Path) -> None:
    repo = tmp_path / "target"
    repo.mkdir()
    (repo / "README.md").write_text(
        "# Tool\n\nA tool that does useful things for people who need them.\n\n"
        "## Install\n\nInstall it with pip and then run the command line interface.\n\n"
        "## Usage\n\nCall the tool with a file name and it prints a short summary.\n"
    )
    with ScriptedModelServer(script="It explains how to install and use the tool.") as server:
        llm = {"OPENAI_API_BASE": server.url, "OPENAI_MODEL": "m"}
        proc = run_helper("generic_rollout", repo, stage_env(repo, "rollout", llm), as_script=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rollout = read(repo, "rollout.json")
    assert rollout["kind"] == "readme_fallback"
    assert "not a training or evaluation signal" in rollout["note"]
    report = validate_rollout(repo, repo / ".aider_fsm" / "rollout.json", min_samples=3)
    assert (report.samples, report.reward_max) == (3, 0.0)


def test_rollout_without_an_endpoint_fails_clearly(tmp_path: Path) -> None:
    repo = tmp_path / "target"
    repo.mkdir()
    (repo / "README.md").write_text("# T\n\nSomething long enough to become one README section.\n")
    proc = run_helper("generic_rollout", repo, stage_env(repo, "rollout"))
    assert proc.returncode == 1
    rollout = read(repo, "rollout.json")
    assert rollout["ok"] is False
    assert rollout["errors"] == ["no model endpoint: set OPENAI_API_BASE and OPENAI_MODEL"]


# --- inside the real sandbox ----------------------------------------------------------


@pytest.mark.docker
def test_evaluation_helper_in_the_default_image(tmp_path: Path, default_image: str) -> None:
    """The integration: runner/ mounted read-only, the image's python3, stdlib only."""
    from sandbox import SandboxSpec, open_sandbox

    repo = make_repo(
        tmp_path,
        """\
        ```console
        $ python3 -m unittest discover -s tests -v
        ```
        """,
        """\
        import unittest

        class Core(unittest.TestCase):
            def test_ok(self):
                self.assertEqual(1 + 1, 2)

            def test_bad(self):
                self.assertEqual(1 + 1, 3)
        """,
    )
    env = base_stage_env(
        stage="evaluation",
        workspace="/workspace",
        run_id=RUN_ID,
        artifacts_dir=f"/workspace/.aider_fsm/artifacts/{RUN_ID}/evaluation_attempt_01",
        mode="smoke",
        bootstrap_env={},
        llm_env={},
    )
    env.update(
        hint_env(repo), PYTHONPATH="/opt/fsm-runner", AIDER_FSM_RUNNER_ROOT="/opt/fsm-runner"
    )
    spec = SandboxSpec(
        workspace_src=repo,
        image=default_image,
        readonly_mounts={str(RUNNER_ROOT / "runner"): "/opt/fsm-runner/runner"},
    )
    with open_sandbox(spec) as sb:
        for command in (
            "python3 -m runner.helpers.generic_evaluation",
            'python3 "$AIDER_FSM_RUNNER_ROOT/runner/generic_evaluation.py"',
        ):
            res = sb.exec(command, env=env, timeout=120)
            assert res.exit_code == 0, res.stdout + res.stderr
            metrics = json.loads(sb.read_file(".aider_fsm/metrics.json"))
            assert (metrics["ok"], metrics["score"]) == (True, 0.5)
            used = json.loads(sb.read_file(".aider_fsm/hints_used.json"))
            assert used["commands"] == ["python3 -m unittest discover -s tests -v"]
        log = sb.read_file(f".aider_fsm/artifacts/{RUN_ID}/evaluation_attempt_01/hints_exec.jsonl")
        assert log.count(b'"phase": "start"') == 2


def test_a_hint_that_hangs_is_killed_with_its_children(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "```bash\npython3 slow_eval.py\n```\n", "")
    (repo / "slow_eval.py").write_text(
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "open('child.pid', 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    env = {**stage_env(repo, "evaluation"), "AIDER_FSM_HINT_TIMEOUT_SECONDS": "2"}
    proc = run_helper("generic_evaluation", repo, env)
    assert proc.returncode == 2
    attempt = read(repo, "hints_run.json")["attempts"][0]
    assert attempt["timed_out"] is True
    assert attempt["seconds"] < 15
    child = int((repo / "child.pid").read_text())
    # Killed with its process group; a zombie awaiting its reaper counts as gone.
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().split(")")[1].split()[0] == "Z"


@pytest.mark.parametrize(
    ("output", "counts"),
    [
        ("===== 3 passed, 1 failed, 2 warnings in 0.12s =====", (3, 4)),
        ("1 failed, 2 passed, 1 error in 3.01s", (2, 4)),
        ("...\n5 passed in 0.01s\n", (5, 5)),
        ("Ran 4 tests in 0.001s\n\nFAILED (failures=1, skipped=1)\n", (2, 3)),
        ("Ran 2 tests in 0.000s\n\nOK\n", (2, 2)),
        ("  12 passing (40ms)\n  3 failing\n", (12, 15)),
        ("Tests:       1 failed, 4 passed, 5 total\n", (4, 5)),
        ("no tests ran in 0.01s", None),
        ("collected 0 items", None),
    ],
)
def test_test_counts(output: str, counts: tuple[int, int] | None) -> None:
    assert parse_test_counts(output) == counts


def test_printed_and_json_scores() -> None:
    assert score_from_text("Base\n{'pass@1': 0.884}\nBase + Extra\n{'pass@1': 0.75}") == 0.75
    assert score_from_text("accuracy = 81.5%") == 0.815
    assert score_from_text("score: 7 of 10") == 0.7
    assert score_from_text("accuracy: 45/50 correct") == 0.9
    assert score_from_text("score: 250") is None
    assert (
        score_from_json({"results": {"hellaswag": {"acc_stderr,none": 0.01, "acc,none": 0.29}}})
        == 0.29
    )
    assert score_from_json({"humaneval": {"pass@1": 45.0}, "score": 0.1}) == 0.45
    assert score_from_json({"score": True}) is None
