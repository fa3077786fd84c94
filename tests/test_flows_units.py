"""Issue 16 pieces that need no engine: official-command matching and modes, JUnit and
summary counts, CLI parity options, the unknown-keyword hint, local targets."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import runner_env
from runner.cli.main import main
from runner.cli.starter import starter_for_tests
from runner.contract import load_bootstrap, load_pipeline
from runner.helpers.test_suite import junit_counts, metrics_from
from runner.session.stages import CmdResult, StageResult
from runner.session.test_counts import tests_metrics as counts_of_tests
from runner.targets.resolve import parse_target, resolve_target
from runner.trust.hint_check import command_keys, decide, official_commands_run
from tests.contract_repos import make_repo


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    captured = capsys.readouterr()
    return int(exc.value.code or 0), captured.out, captured.err


@pytest.mark.parametrize(
    ("official", "executed"),
    [
        ("pytest -q tests", '"$AIDER_FSM_PYTHON" -m pytest -q -p no:cacheprovider'),
        ("python -m unittest -v", "coverage run --include='a/*.py' -m unittest"),
        ("uvx --with tox-uv tox -e py314", "tox -e py311"),
        ("cd docs && make test", "make -C docs test"),
        ("npm test", "npm run test"),
        ("pytest", "/ws/.venv/bin/python -m runner.helpers.test_suite -- python -m pytest -q"),
    ],
)
def test_an_official_command_counts_however_it_is_launched(official: str, executed: str) -> None:
    assert official_commands_run([official], [executed]) == [official]


@pytest.mark.parametrize(
    ("official", "executed"),
    [
        ("pytest -q", "echo pytest -q"),  # only printed
        ("pytest -q", ": pytest -q"),
        ("make test", "make lint"),
        ("cd docs && make test", "cd docs"),  # the step around it proves nothing
        ("python -m unittest", "python -m pytest"),
    ],
)
def test_a_mention_or_another_command_does_not_count(official: str, executed: str) -> None:
    assert official_commands_run([official], [executed]) == []


def test_command_keys_read_wrappers() -> None:
    assert command_keys("uv run pytest -x") == [("pytest",)]
    assert command_keys("python setup.py test") == [("python", "setup.py")]
    assert command_keys("{envpython} -m unittest -v {posargs}") == [("unittest",)]


def test_hints_mode_follows_who_wrote_the_contract() -> None:
    found = ["pytest -q"]
    mine = decide("auto", found, agent_wrote=False, contract_asks=False)
    assert mine.mode == "report" and "--require-hints" in mine.why
    assert decide("auto", found, agent_wrote=True, contract_asks=False).mode == "require"
    assert decide("auto", found, agent_wrote=False, contract_asks=True).mode == "require"
    asked = decide("require", found, agent_wrote=False, contract_asks=False)
    assert asked.mode == "require" and "asked" in asked.why
    assert decide("auto", [], agent_wrote=True, contract_asks=False).mode == "none"
    assert decide("require", [], agent_wrote=False, contract_asks=False).mode == "require"


def test_junit_counts_and_metrics(tmp_path: Path) -> None:
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest" tests="10" failures="2" errors="1" skipped="3">'
        "</testsuite></testsuites>"
    )
    counts = junit_counts(xml)
    assert counts == {"tests": 10, "passed": 4, "failed": 2, "errors": 1, "skipped": 3}
    metrics = metrics_from(counts, 1, "junit")
    assert metrics["ok"] is False and metrics["score"] == round(4 / 7, 6)
    (tmp_path / "bad.xml").write_text("<testsuites><testsuite")
    assert junit_counts(tmp_path / "bad.xml") is None
    assert metrics_from(None, 0, "junit")["ok"] is False


def test_a_tests_stage_is_counted_from_its_summary_lines() -> None:
    out = "....F\n=== 1 failed, 4 passed in 0.12s ===\n"
    red = StageResult("tests", False, (CmdResult("pytest", 1, out, ""),), 0)
    assert counts_of_tests(red) == {
        "ok": False,
        "score": 0.8,
        "passed": 4,
        "failed": 1,
        "total": 5,
        "counts_from": "tests stage output",
    }
    silent = StageResult("tests", True, (CmdResult("make check", 0, "fine\n", ""),))
    assert counts_of_tests(silent)["ok"] is True and "score" not in counts_of_tests(silent)


def test_init_tests_writes_a_valid_contract_with_the_projects_test_deps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "proj"
    (repo / "requirements").mkdir(parents=True)
    (repo / "requirements" / "testing.txt").write_text("coverage\n")
    (repo / "pyproject.toml").write_text("[project]\nname = 'proj'\n")
    code, out, _ = cli(capsys, "init", "--tests", "--pip", "hypothesis", str(repo))
    assert code == 0, out
    assert "stages: bootstrap, evaluation" in out
    evaluation = load_pipeline(repo / "pipeline.yml").stage("evaluation")
    assert evaluation is not None and "runner.helpers.test_suite" in evaluation.cmds[0]
    boot = load_bootstrap(repo / ".aider_fsm" / "bootstrap.yml")
    assert boot is not None and any("-r requirements/testing.txt" in c for c in boot.cmds)
    assert any("install -q -e ." in c for c in boot.cmds)
    assert boot.env["TEST_DEPS"] == "hypothesis"
    assert set(starter_for_tests(tmp_path / "empty", [])) == set(
        starter_for_tests(repo, [])
    )  # same files for any project


def test_validate_says_which_hints_mode_applies_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "Makefile").write_text("test:\n\tpython -m pytest -q\n")
    code, out, _ = cli(capsys, "validate", str(repo))
    assert code == 0
    assert "hints: report (you wrote this contract" in out and "make test" in out
    code, out, _ = cli(capsys, "validate", str(repo), "--require-hints", "--memory", "512m")
    assert code == 0
    assert "hints: require (asked for" in out and "memory=512m" in out


def test_validate_takes_the_run_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "pipeline.yml").rename(repo / "other.yml")
    code, out, _ = cli(
        capsys,
        *("validate", str(repo), "--pipeline", "other.yml", "--cpus", "0.5", "--pids", "64"),
        *("--timeout", "9"),
    )
    assert code == 0, out
    assert "cpus=0.5 pids=64" in out and "at most 9s" in out
    code, _, err = cli(capsys, "validate", str(repo), "--pipeline", "other.yml", "--memory", "lots")
    assert code == 2 and "--memory" in err


def test_unknown_keyword_names_the_closest_one(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    with pytest.raises(TypeError, match=r"worksapce \(did you mean workspace\?\)"):
        runner_env.setup(repo, worksapce="bind")
    with pytest.raises(TypeError, match=r"opencode_modle \(did you mean opencode_model\?\)"):
        runner_env.setup(repo, opencode_modle="x")
    with pytest.raises(ValueError, match="hints="):
        runner_env.setup(repo, hints="sometimes")  # type: ignore[arg-type]


def _git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env |= {"GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin:/usr/local/bin"}
    return subprocess.run(
        ["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def test_local_path_at_ref_and_a_dirty_checkout(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "one")
    first = _git(repo, "rev-parse", "HEAD")
    (repo / "README.md").write_text("# second\n")
    _git(repo, "commit", "-qam", "two")
    clean = resolve_target(repo)
    assert clean.commit != first and not clean.dirty
    # Run outputs in the checkout do not make it dirty; an edit does.
    (repo / ".aider_fsm" / "artifacts").mkdir()
    (repo / ".aider_fsm" / "artifacts" / "x.txt").write_text("run dir\n")
    (repo / ".aider_fsm" / "metrics.json").write_text("{}\n")
    assert not resolve_target(repo).dirty
    (repo / "README.md").write_text("# edited, not committed\n")
    assert resolve_target(repo).dirty
    spec = parse_target(f"{repo}@{first}")
    assert spec.source == "git" and spec.ref == first
    at = resolve_target(f"{repo}@{first}", clones_dir=tmp_path / "clones")
    assert at.commit == first and at.path != repo
    assert (at.path / "README.md").read_text() == "# target\n"
    assert (repo / "README.md").read_text() == "# edited, not committed\n"  # untouched


def test_show_json_of_a_recorded_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from runner.runs.run_dir import RunDir

    repo = tmp_path / "repo"
    run = RunDir.create(repo)
    run.event("session_created", repo=str(repo), source="local", commit="abc", dirty=True)
    run.event(
        "evaluation_end",
        ok=False,
        failed_stage="metrics",
        reason="ok_not_true",
        metrics={"ok": False, "score": 0.5, "passed": 1, "failed": 1},
        metrics_accepted=False,
    )
    code, out, _ = cli(capsys, "show", "latest", "--repo", str(repo), "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["ok"] is False and shown["score"] == 0.5 and shown["metrics_accepted"] is False
    assert shown["metrics"]["failed"] == 1 and shown["dirty"] is True
    code, out, _ = cli(capsys, "show", "latest", "--repo", str(repo))
    assert "score 0.5 (not accepted)" in out
    report = (run.path / "report.md").read_text()
    assert "Metrics (not accepted" in report and "uncommitted changes (dirty)" in report
