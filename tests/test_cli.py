"""``fsm-runner``: every command, its exit codes, the progress view and report.md.

Fast tests call ``runner.cli.main.main`` in-process on run dirs written through ``RunDir``;
the ``docker`` ones run the installed ``fsm-runner`` as a user would, on contracts built
in tmp_path, against the real engine.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from rich.console import Console

from runner.cli.main import main
from runner.cli.progress import StageView
from runner.cli.starter import STARTER_FILES
from runner.contract import (
    load_actions,
    load_bootstrap,
    load_pipeline,
    validate_metrics,
    validate_rollout,
)
from runner.runs.report import load_run, write_report
from runner.runs.run_dir import CommandRecord, RunDir
from tests.contract_repos import make_repo

ROOT = Path(__file__).resolve().parent.parent
FSM = ROOT / ".venv" / "bin" / "fsm-runner"
BROKEN = "version: 1\nevalution:\n  run_cmd: echo hi\n"


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the command in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def fsm(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the installed command as a CI job would (CI=true: plain progress lines)."""
    full_env = {**os.environ, "CI": "true", **(env or {})}
    return subprocess.run(
        [str(FSM), *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )


# -- usage errors: one line, exit 2 ----------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["run"],
        ["run", "x", "--bogus"],
        ["run", "x", "--mode", "fast"],
        ["run", "x", "--network", "wide"],
        ["run", "x", "--repair-iters", "-1"],
        ["validate", "/nonexistent/repo"],
        ["runs", "/nonexistent/repo"],
        ["show"],
        ["images", "prune", "--keep", "many"],
        ["frobnicate"],
    ],
)
def test_bad_usage_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    code, out, err = cli(capsys, *args)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fsm-runner: error: "), err


def test_no_arguments_print_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys)
    assert code == 2
    assert "run" in out and "doctor" in out and "init" in out


# -- schema, validate, init ------------------------------------------------------------


def test_schema_is_the_generated_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "schema")
    schema = json.loads(out)
    assert code == 0
    assert schema["title"] == "pipeline.yml (version 1)"
    assert {"deploy", "rollout", "evaluation", "security"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_validate_ok_lists_stages_in_run_order(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo")
    code, out, _ = cli(capsys, "validate", str(repo))
    assert code == 0
    assert "contract OK" in out
    assert "bootstrap, deploy_setup, deploy_health, rollout, evaluation, deploy_teardown" in out


def test_validate_broken_contract_is_one_block_with_file_and_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", pipeline=BROKEN)
    code, out, err = cli(capsys, "validate", str(repo))
    assert code == 1 and out == ""
    assert err.startswith("error: ") and "Traceback" not in err
    assert f"{repo / 'pipeline.yml'}:2: evalution: unknown key" in err
    assert "did you mean 'evaluation'?" in err


def test_validate_without_contract_says_how_to_write_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = cli(capsys, "validate", str(tmp_path))
    assert code == 1 and "fsm-runner init" in err


def test_init_writes_a_contract_the_loaders_accept(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    repo = tmp_path / "new"
    code, out, _ = cli(capsys, "init", str(repo))
    assert code == 0 and "fsm-runner run" in out
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()) == sorted(
        STARTER_FILES
    )
    pipeline = load_pipeline(repo / "pipeline.yml")
    assert pipeline.evaluation is not None and pipeline.evaluation.required_keys == ("ok", "score")
    assert load_bootstrap(repo / ".aider_fsm" / "bootstrap.yml") is not None
    assert load_actions(repo / ".aider_fsm" / "actions.yml") is None
    for script in (repo / ".aider_fsm" / "stages").glob("*.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True)
    code, _, err = cli(capsys, "init", str(repo))
    assert code == 1 and "--force" in err
    assert cli(capsys, "init", str(repo), "--force")[0] == 0


def test_init_stage_scripts_write_outputs_the_validators_accept(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The starter runs as is: its own scripts, on a scratch copy, pass the output checks."""
    repo = tmp_path / "new"
    assert cli(capsys, "init", str(repo))[0] == 0
    for stage in ("deploy_setup", "deploy_health", "rollout", "evaluation", "deploy_teardown"):
        subprocess.run(["bash", f".aider_fsm/stages/{stage}.sh"], cwd=repo, check=True)
    report = validate_rollout(repo, repo / ".aider_fsm" / "rollout.json")
    assert report.samples == 2
    metrics = validate_metrics(repo / ".aider_fsm" / "metrics.json", ["ok", "score"])
    assert metrics["ok"] is True and metrics["score"] == 0.0


def test_run_with_broken_contract_fails_before_any_container(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", pipeline=BROKEN)
    code, out, err = cli(capsys, "run", str(repo), "--json")
    assert code == 1
    assert "evalution: unknown key" in json.loads(out)["error"]
    assert err.startswith("error: ") and "pipeline.yml:2" in err
    assert not (repo / ".aider_fsm" / "artifacts").exists()


def test_run_with_missing_target_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = cli(capsys, "run", str(tmp_path / "nowhere"))
    assert code == 1 and err.startswith("error: ")


# -- runs, show and report.md on recorded run dirs ----------------------------------------


def recorded_run(repo: Path, *, fail_eval: bool = False, lose_end: bool = False) -> RunDir:
    """A run dir as the session writes it, without running anything."""
    rd = RunDir.create(repo)
    rd.event("session_created", repo=str(repo), source="local", commit=None, state="NEW")
    rd.write_json("sandbox.json", {"backend": "docker", "image": "img:1", "limits": {"memory": "2g"},
                                   "capabilities": ["CHOWN"], "stages": {"rollout": {"network": "llm"}}})  # fmt: skip
    rd.event("rollout_start", mode="smoke", llm_kind="remote", require_samples=True)
    passes = {"rollout": "rollout_attempt_01", "evaluation": "evaluation_attempt_01"}
    for stage, pass_name in passes.items():
        failed = fail_eval and stage == "evaluation"
        pass_dir = rd.subdir("env_api", pass_name)
        rd.event("stage_start", stage=stage, network="llm", commands=1)
        result = CommandRecord(
            3 if failed else 0, "hello\nlast out", "boom" if failed else "", False, 0.5
        )
        rd.record_command(pass_dir, stage, 0, 0, f"bash {stage}.sh", result)
        rd.write_stage_summary(
            pass_dir, stage, ok=not failed, failed_index=0 if failed else None, total_results=1
        )
        if lose_end and stage == "evaluation":
            return rd
        reason = "evaluation: command failed (rc=3): bash evaluation.sh: boom" if failed else ""
        rd.event(
            "stage_end",
            stage=stage,
            ok=not failed,
            failed_index=None,
            duration_s=0.5,
            reason=reason,
        )
        if stage == "rollout":
            rd.event("rollout_end", ok=True, samples=8)
    metrics = None if fail_eval else {"ok": True, "score": 0.5}
    rd.event("evaluation_end", ok=not fail_eval, failed_stage="evaluation" if fail_eval else None,
             reason="evaluation: command failed (rc=3)" if fail_eval else "", metrics=metrics)  # fmt: skip
    rd.event("transition", from_state="ROLLED_OUT", to_state="CLOSED")
    return rd


def test_runs_lists_status_score_and_duration(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    good = recorded_run(tmp_path)
    bad = recorded_run(tmp_path, fail_eval=True)
    code, out, _ = cli(capsys, "runs", str(tmp_path), "--json")
    rows = {r["run_id"]: r for r in json.loads(out)}
    assert code == 0
    assert rows[good.run_id]["ok"] is True and rows[good.run_id]["score"] == 0.5
    assert rows[bad.run_id]["failed_stage"] == "evaluation"
    assert rows[good.run_id]["duration_s"] is not None
    code, out, _ = cli(capsys, "runs", str(tmp_path))
    assert code == 0 and good.run_id in out and bad.run_id in out and "evaluation" in out
    code, out, _ = cli(capsys, "runs", str(tmp_path / ".aider_fsm"))
    assert code == 0 and "no runs" in out


def test_show_points_at_the_failure_and_its_logs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rd = recorded_run(tmp_path, fail_eval=True)
    code, out, _ = cli(capsys, "show", rd.run_id[:17], "--repo", str(tmp_path))
    assert code == 0
    assert "FAILED" in out and "failed at evaluation" in out
    stderr_log = rd.path / "env_api" / "evaluation_attempt_01" / "evaluation_cmd01_try01_stderr.txt"
    assert f"stderr: {stderr_log}" in out and "| boom" in out
    assert (rd.path / "report.md").is_file()
    assert cli(capsys, "show", "latest", "--repo", str(tmp_path))[0] == 0


def test_show_unknown_or_ambiguous_run_is_a_bad_value(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    recorded_run(tmp_path)
    recorded_run(tmp_path)
    for run_id in ("19990101", "20"):
        code, _, err = cli(capsys, "show", run_id, "--repo", str(tmp_path))
        assert code == 2 and len(err.strip().splitlines()) == 1


def test_report_says_stages_limits_network_score(tmp_path: Path) -> None:
    rd = recorded_run(tmp_path)
    before = {p for p in rd.path.rglob("*") if p.is_file()}
    path = write_report(rd.path)
    assert {p for p in rd.path.rglob("*") if p.is_file()} - before == {path}
    text = path.read_text()
    assert path == rd.path / "report.md"
    assert "- Result: **ok**" in text and "- Score: 0.5" in text
    assert "| 1 | rollout | ok | 0.50s | llm | 1 | env_api/rollout_attempt_01 |" in text
    assert "memory=2g" in text and "img:1" in text and "CHOWN" in text
    assert '"score": 0.5' in text and "## Failure" not in text


def test_report_of_a_failed_run_names_stage_command_and_logs(tmp_path: Path) -> None:
    rd = recorded_run(tmp_path, fail_eval=True)
    text = write_report(rd.path).read_text()
    assert "**FAILED** at `evaluation`" in text
    assert "- Command: `bash evaluation.sh` (rc=3)" in text
    assert "env_api/evaluation_attempt_01/evaluation_cmd01_try01_stderr.txt" in text


def test_report_fills_a_lost_stage_end_from_the_stage_summary(tmp_path: Path) -> None:
    rd = recorded_run(tmp_path, lose_end=True)
    summary = load_run(rd.path)
    evaluation = [s for s in summary.stages if s.stage == "evaluation"]
    assert evaluation and evaluation[0].ok is True and evaluation[0].duration_s is None
    # rollout_end said ok, but the run has no final event: incomplete, never ok (issue 15).
    assert summary.ok is None and summary.metrics is None
    text = write_report(rd.path).read_text()
    assert "did not finish" not in text and "**incomplete**: no final event" in text


def test_report_masks_token_shaped_values(tmp_path: Path) -> None:
    rd = recorded_run(tmp_path)
    token = "sk-" + "a1" * 15
    with (rd.path / "events.jsonl").open("a") as fh:  # as if a stage printed it into a reason
        fh.write(json.dumps({"ts": "2026-01-01T00:00:09Z", "kind": "evaluation_end", "ok": False,
                             "failed_stage": "evaluation", "reason": token}) + "\n")  # fmt: skip
    text = write_report(rd.path).read_text()
    assert token not in text and "***" in text


# -- the progress view --------------------------------------------------------------------


def test_progress_view_plain_lines_and_live_table(tmp_path: Path) -> None:
    import runner_env

    repo = make_repo(tmp_path / "repo")
    sess = runner_env.setup(repo)
    try:
        buf = io.StringIO()
        view = StageView(Console(file=buf, width=200), "plain")
        view.begin(sess)
        view("stage rollout (1 command(s), network=llm)")
        view("rollout [1/1] $ bash .aider_fsm/stages/rollout.sh")
        pass_dir = sess.run_dir.subdir("env_api", "rollout_attempt_01")
        sess.run_dir.event("stage_start", stage="rollout", network="llm", commands=1)
        rec = CommandRecord(0, "sampling\n8 samples written\n", "", False, 0.25)
        sess.run_dir.record_command(pass_dir, "rollout", 0, 0, "bash rollout.sh", rec)
        sess.run_dir.event("stage_end", stage="rollout", ok=True, duration_s=0.25, reason="")
        table = view.__rich__()
        view.end()
        lines = buf.getvalue().splitlines()
        assert any(line.endswith("stage rollout (1 command(s), network=llm)") for line in lines)
        assert any(line.endswith("rollout ok in 0.25s") for line in lines)
        live = Console(file=io.StringIO(), width=200, record=True)
        live.print(table)
        screen = live.export_text()
        assert "8 samples written" in screen and "bootstrap" in screen and "waiting" in screen
    finally:
        sess.close()


def test_quiet_view_prints_nothing() -> None:
    buf = io.StringIO()
    view = StageView(Console(file=buf), "quiet")
    view("stage rollout (1 command(s), network=llm)")
    view.end()
    assert buf.getvalue() == ""


# -- doctor --------------------------------------------------------------------------------


def test_doctor_with_engine_stopped_says_how_to_start_it(tmp_path: Path) -> None:
    opencode = tmp_path / "opencode"
    shutil.copy("/bin/true", opencode)  # any ELF executable stands in for the binary
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "FSM_OPENCODE_BIN": str(opencode)}
    proc = fsm("doctor", env=env, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "✗ Docker engine" in proc.stdout and "fix: make engine" in proc.stdout
    assert f"✓ OpenCode       {opencode}" in proc.stdout
    assert "disk space" in proc.stdout


def test_run_with_engine_stopped_says_how_to_start_it(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    proc = fsm("run", str(repo), "--json", env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    assert proc.returncode == 1
    assert "Docker engine unavailable" in json.loads(proc.stdout)["error"]
    assert "error: Docker engine unavailable" in proc.stderr and "fix: make engine" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_doctor_names_a_wrong_opencode_binary(tmp_path: Path) -> None:
    script = tmp_path / "opencode"
    script.write_text("#!/bin/sh\n")
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "FSM_OPENCODE_BIN": str(script)}
    proc = fsm("doctor", env=env, timeout=60)
    assert (
        f"! OpenCode       FSM_OPENCODE_BIN={script} is not an opencode executable" in proc.stdout
    )
    assert "fix: bash images/install-opencode.sh" in proc.stdout


# -- against the real engine -----------------------------------------------------------------


@pytest.mark.docker
def test_run_json_then_runs_and_show(tmp_path: Path, default_image: str) -> None:
    repo = make_repo(tmp_path / "repo")
    proc = fsm("run", str(repo), "--llm", "demo-model", "--require-samples", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is True and result["score"] == 0.5 and result["samples"] == 8
    assert [s["stage"] for s in result["stages"]][-2:] == ["evaluation", "deploy_teardown"]
    assert {s["network"] for s in result["stages"] if s["stage"] == "bootstrap"} == {"egress"}
    assert Path(result["report"]).read_text().startswith(f"# fsm-runner run {result['run_id']}")
    assert "rollout [1/1] $ bash .aider_fsm/stages/rollout.sh" in proc.stderr  # plain progress
    listed = fsm("runs", str(repo), "--json")
    assert json.loads(listed.stdout)[0]["run_id"] == result["run_id"]
    shown = fsm("show", result["run_id"], "--repo", str(repo))
    assert shown.returncode == 0 and "ok · score 0.5 · 8 samples" in shown.stdout


@pytest.mark.docker
def test_run_failing_stage_exits_1_with_where_and_logs(tmp_path: Path, default_image: str) -> None:
    repo = make_repo(tmp_path / "repo", evaluation="echo 'no metrics today' >&2\nexit 3\n")
    proc = fsm("run", str(repo), "--llm", "demo-model")
    assert proc.returncode == 1, proc.stderr
    assert "failed at evaluation" in proc.stdout and "| no metrics today" in proc.stdout
    assert "evaluation FAILED in" in proc.stderr


@pytest.mark.docker
def test_ctrl_c_during_run_leaves_no_container(tmp_path: Path, default_image: str) -> None:
    from sandbox.engine import get_client

    repo = make_repo(tmp_path / "repo", rollout="echo started; sleep 60\n")
    proc = subprocess.Popen(
        [str(FSM), "run", str(repo), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CI": "true"},
    )
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if "rollout [1/1]" in line or not line:
            break
    time.sleep(0.5)  # the command is inside its docker exec now
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(seen)
    result = json.loads(out)
    assert result["interrupted"] is True and result["ok"] is False
    left = get_client().containers.list(
        all=True, ignore_removed=True, filters={"label": f"fsm-runner.run-id={result['run_id']}"}
    )
    assert left == []


@pytest.mark.docker
def test_images_build_list_prune(tmp_path: Path, default_image: str) -> None:
    from sandbox.engine import get_client

    build = fsm("images", "build")
    assert build.returncode == 0 and build.stdout.strip() == default_image
    listed = fsm("images", "list")
    assert f"*  {default_image}" in listed.stdout
    marker = f"fsm-runner.test={uuid.uuid4().hex}"
    # An older base image of ours (our repository, our image label) and someone else's
    # image built FROM the base: it inherits the label, yet is not ours (issue 15 item 3).
    ours = f"fsm-runner/base:test-{uuid.uuid4().hex[:8]}"
    theirs = f"fsm-runner-test/prune:{uuid.uuid4().hex[:8]}"
    for tag, labels in ((ours, {"fsm-runner.image.kind": "base"}), (theirs, {})):
        dockerfile = io.BytesIO(f"FROM {default_image}\n".encode())
        get_client().images.build(
            fileobj=dockerfile, tag=tag, labels={**dict([marker.split("=")]), **labels}, rm=True
        )
    try:
        kept = fsm("images", "prune", "--label", marker, "--keep", "1", "--dry-run")
        assert kept.returncode == 0 and ours not in kept.stdout
        dry = fsm("images", "prune", "--label", marker, "--dry-run")
        assert f"would remove {ours}" in dry.stdout and theirs not in dry.stdout
        pruned = fsm("images", "prune", "--label", marker)
        assert pruned.returncode == 0 and "removed 1 image(s)" in pruned.stdout, pruned.stderr
        assert [i.tags for i in get_client().images.list(filters={"label": marker})] == [[theirs]]
        assert get_client().images.get(default_image) is not None
    finally:
        for tag in (ours, theirs):
            with contextlib.suppress(Exception):
                get_client().images.remove(tag, force=True)


@pytest.mark.docker
def test_doctor_and_gc_with_engine_running(default_image: str) -> None:
    doctor = fsm("doctor", timeout=60)
    assert doctor.returncode == 0, doctor.stdout
    assert (
        "✓ Docker engine" in doctor.stdout and f"✓ default image  {default_image}" in doctor.stdout
    )
    assert "✓ host firewall" in doctor.stdout  # root with iptables here (issue 15 item 6)
    gc = fsm("gc")
    assert gc.returncode == 0 and gc.stdout.startswith("removed "), gc.stdout + gc.stderr
    assert "volume(s)" in gc.stdout and "firewall rule(s)" in gc.stdout


def test_the_command_is_installed() -> None:
    proc = subprocess.run([str(FSM), "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "fsm-runner" in proc.stdout
