"""The batch runner without Docker: jobs file, ids, results file, admission, breaker, retries.

Jobs here use ``sandbox: local`` (host processes) with contracts that start no service,
so they can run side by side; everything Docker-specific is in test_batch_docker.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runner.batch import (
    Job,
    JobOptions,
    JobResult,
    ResultsFile,
    RetryPolicy,
    machine_capacity,
    run_batch,
)
from runner.batch.admission import host_slot, parse_size
from runner.batch.breaker import BreakerState, EngineBreaker
from runner.batch.jobs import load_jobs, normalise_jobs
from runner.batch.results import Outcome
from runner.batch.worker import run_job
from runner.errors import ContractError
from sandbox import Limits
from sandbox.engine import reset_client
from tests.contract_repos import make_repo

NO_DEPLOY = """\
version: 1
rollout:
  run_cmds:
    - bash .aider_fsm/stages/rollout.sh
evaluation:
  run_cmds:
    - bash .aider_fsm/stages/evaluation.sh
  metrics_path: .aider_fsm/metrics.json
  required_keys: [score, ok]
"""


def local_repo(root: Path, **overrides: str) -> Path:
    """A contract with no deploy and no bootstrap: safe to run many at once on the host."""
    files = {"pipeline": NO_DEPLOY, "bootstrap": "", "deploy_setup": "", "deploy_health": ""}
    return make_repo(root, **{**files, "deploy_teardown": "", **overrides})


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- jobs file ---------------------------------------------------------------------------


def test_jobs_file_defaults_ids_and_relative_targets(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    jobs_file = write(
        tmp_path / "jobs.yaml",
        "version: 1\n"
        "defaults:\n  llm: m1\n  options: {sandbox: local, memory: 1g}\n  env: {A: '1'}\n"
        "jobs:\n"
        "  - target: ./a\n"
        "  - target: ./a\n"
        "  - target: ./a\n    llm: m2\n    env: {B: '2'}\n    options: {cpus: 0.5}\n"
        "  - target: owner/repo@v1\n    id: pinned\n",
    )
    spec, jobs, results = load_jobs(jobs_file)
    assert results == tmp_path / "jobs.results.jsonl"
    assert [j.target for j in jobs[:3]] == [str(tmp_path / "a")] * 3
    assert jobs[3].target == "owner/repo@v1" and jobs[3].id == "pinned"
    assert jobs[0].id and jobs[1].id == f"{jobs[0].id}-2", "identical jobs get distinct ids"
    assert jobs[2].llm == "m2" and jobs[2].env == {"A": "1", "B": "2"}
    assert jobs[2].options.sandbox == "local" and jobs[2].options.memory == "1g"
    assert jobs[2].options.limits() == Limits(memory="1g", cpus=0.5)
    assert spec.workers is None
    # Ids hash the job as written, so moving the file keeps them (resume still works).
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / "a").mkdir()
    write(moved / "jobs.yaml", jobs_file.read_text())
    assert [j.id for j in load_jobs(moved / "jobs.yaml")[1]] == [j.id for j in jobs]


@pytest.mark.parametrize(
    ("body", "where", "words"),
    [
        ("jobs:\n  - target: x\n    modde: full\n", ":3", ["unknown key", "modde", "mode"]),
        ("jobs:\n  - target: x\n    mode: fast\n", ":3", ["mode", "smoke"]),
        ("jobs:\n  - llm: m\n", ":2", ["target", "missing"]),
        ("defaults:\n  options:\n    sandbx: local\njobs:\n  - target: x\n", ":3", ["sandbox"]),
        ("jobs:\n  - {target: x, id: a}\n  - {target: y, id: a}\n", ":3", ["duplicate"]),
        ("jobs: []\n", ":1", ["jobs"]),
        ("jobs:\n  - target: x\n   bad: indent\n", ":3", ["invalid YAML"]),
    ],
)
def test_jobs_file_errors_name_file_and_line(
    tmp_path: Path, body: str, where: str, words: list[str]
) -> None:
    path = write(tmp_path / "jobs.yaml", body)
    with pytest.raises(ContractError) as info:
        load_jobs(path)
    text = str(info.value)
    assert f"jobs.yaml{where}" in text, text
    for word in words:
        assert word in text, text


def test_api_jobs_validate_and_ids_are_stable() -> None:
    a = normalise_jobs([{"target": "/x"}, Job(target="/x", mode="full")])
    b = normalise_jobs([{"target": "/x"}, {"target": "/x", "mode": "full"}])
    assert [j.id for j in a] == [j.id for j in b] and a[0].id != a[1].id
    with pytest.raises(ValueError, match="extra"):
        normalise_jobs([{"target": "/x", "workers": 3}])


# -- results file ------------------------------------------------------------------------


def _result(job_id: str, outcome: Outcome = "ok") -> JobResult:
    return JobResult(job_id=job_id, index=0, outcome=outcome, target="t", llm="m", mode="smoke")


def test_results_file_survives_a_torn_line_and_keeps_old_runs(tmp_path: Path) -> None:
    store = ResultsFile(tmp_path / "r.jsonl")
    assert store.start(resume=True) is None
    store.append(_result("a"))
    store.append(_result("b", "infra"))
    store.append(_result("c", "failed"))
    with store.path.open("a") as fh:
        fh.write('{"job_id": "d", "outco')  # a kill mid-write
    assert set(store.read()) == {"a", "b", "c"}
    assert set(store.finished()) == {"a", "c"}, "infra is re-run on resume"
    store.start(resume=True)
    store.append(_result("d"))
    assert set(store.finished()) == {"a", "c", "d"}
    moved = store.start(resume=False)
    assert moved is not None and moved.exists() and not store.path.exists()
    assert set(ResultsFile(moved).finished()) == {"a", "c", "d"}


# -- admission ---------------------------------------------------------------------------


def test_admission_never_admits_more_than_fits() -> None:
    gib = 1 << 30
    cap = machine_capacity([Limits()], cores=2, memory_bytes=24 * gib)
    assert (cap.by_memory, cap.by_cpu, cap.limit) == (10, 8, 8)
    assert cap.admit(32) == 8 and cap.admit(3) == 3 and cap.admit(None) == 8
    big = machine_capacity(
        [Limits(), Limits(memory="8g", cpus=0.5)], cores=2, memory_bytes=24 * gib
    )
    assert big.by_memory == 2 and big.limit == 2, "the largest sandbox decides"
    tiny = machine_capacity([Limits(memory="64m", cpus=0.1)], cores=64, memory_bytes=512 * gib)
    assert tiny.limit == tiny.engine_ceiling
    assert machine_capacity([Limits(memory="64g")], memory_bytes=8 * gib).limit == 1
    assert parse_size("512m") == 512 << 20 and parse_size("1.5GiB") == 3 << 29
    with pytest.raises(ValueError, match="size"):
        parse_size("lots")


def test_host_slots_are_shared_across_holders(tmp_path: Path) -> None:
    held: list[int] = []
    release = threading.Event()

    def hold() -> None:
        with host_slot(2, directory=tmp_path, poll_s=0.01) as slot:
            held.append(slot)
            release.wait(10)

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    while len(held) < 2:
        time.sleep(0.01)
    third: list[float] = []
    waiter = threading.Thread(
        target=lambda: third.append(_timed_slot(tmp_path)), name="third-holder"
    )
    waiter.start()
    time.sleep(0.3)
    assert not third, "a third holder must wait while both slots are taken"
    release.set()
    waiter.join(10)
    for t in threads:
        t.join(10)
    assert sorted(held) == [0, 1] and third


def _timed_slot(directory: Path) -> float:
    started = time.monotonic()
    with host_slot(2, directory=directory, poll_s=0.01):
        return time.monotonic() - started


# -- breaker -----------------------------------------------------------------------------


def test_breaker_opens_probes_with_backoff_and_half_opens() -> None:
    now = [0.0]
    answers: list[bool] = []
    changes: list[str] = []
    breaker = EngineBreaker(
        lambda: answers.pop(0),
        threshold=3,
        max_pause_s=100,
        first_probe_s=1,
        on_change=lambda s, why: changes.append(s.value),
        clock=lambda: now[0],
    )
    for outcome in ("infra", "failed", "infra", "infra"):
        breaker.record(outcome)
    assert breaker.state == BreakerState.CLOSED, "a verdict resets the count"
    breaker.record("infra")
    assert breaker.state.value == "open" and not breaker.allows_start()
    answers[:] = [False, True]
    now[0] = 1.0
    assert not breaker.allows_start()  # probe 1 fails: next one in 2 s
    now[0] = 2.5
    assert not breaker.allows_start() and answers == [True], "not probed before it is due"
    now[0] = 3.0
    assert breaker.allows_start() and breaker.state.value == "half-open"
    breaker.started()
    assert not breaker.allows_start(), "half-open lets exactly one trial job through"
    breaker.record("ok")
    assert breaker.state.value == "closed" and breaker.allows_start()
    breaker.trip("engine gone")
    now[0] = 200.0
    answers[:] = [False]
    assert not breaker.allows_start() and breaker.gave_up
    assert changes == ["open", "half-open", "closed", "open"]


# -- retries and outcomes ------------------------------------------------------------------


def test_infra_errors_are_retried_and_stage_failures_are_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = local_repo(tmp_path / "failing", rollout="echo broken >&2; exit 3\n")
    fast = RetryPolicy(attempts=3, initial_s=0.01, max_s=0.02)
    res = run_job(Job(id="f", target=str(failing), options=JobOptions(sandbox="local")), 0, fast)
    assert (res.outcome, res.failed_stage, res.attempts) == ("failed", "rollout", 1)
    bad = run_job(Job(id="b", target=str(tmp_path / "missing")), 1, fast)
    assert (bad.outcome, bad.attempts) == ("error", 1) and "TargetError" in bad.reason

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    reset_client()
    try:
        down = run_job(Job(id="d", target=str(failing)), 2, fast)
    finally:
        monkeypatch.undo()
        reset_client()
    assert (down.outcome, down.attempts) == ("infra", 3)
    assert len(down.infra_errors) == 3 and "no engine socket" in down.reason


def test_pool_runs_all_jobs_and_a_failure_does_not_stop_the_others(tmp_path: Path) -> None:
    good = local_repo(tmp_path / "good")
    bad = local_repo(tmp_path / "bad", evaluation="exit 9\n")
    jobs = [
        {"target": str(good if i != 2 else bad), "id": f"j{i}", "options": {"sandbox": "local"}}
        for i in range(5)
    ]
    seen: list[str] = []
    report = run_batch(
        jobs,
        workers=2,
        results=tmp_path / "r.jsonl",
        progress=lambda p: seen.append(p.event),
    )
    outcomes = [(r.job_id, r.outcome) for r in report.results]
    why = {r.job_id: (r.reason, r.infra_errors) for r in report.results if r.outcome != "ok"}
    assert outcomes == [
        ("j0", "ok"),
        ("j1", "ok"),
        ("j2", "failed"),
        ("j3", "ok"),
        ("j4", "ok"),
    ], why
    assert all(r.metrics == {"ok": True, "score": 0.5, "n": 8} for r in report.results if r.ok)
    assert report.summary["ok"] == 4 and report.summary["failed"] == 1
    assert report.summary["workers"] == 2 and seen[0] == "start" and seen[-1] == "end"
    assert json.loads((tmp_path / "r.summary.json").read_text())["jobs"] == 5
    pids = {r.pid for r in report.results}
    assert len(ResultsFile(tmp_path / "r.jsonl").read()) == 5 and len(pids) <= 2
    # Resume: nothing left to do, nothing re-run, same verdicts returned in order.
    again = run_batch(jobs, workers=2, results=tmp_path / "r.jsonl", resume=True)
    assert [r.comparable() for r in again.results] == [r.comparable() for r in report.results]
    assert again.summary["resumed"] == 5 and again.summary["ran"] == 0


def test_engine_down_opens_the_breaker_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = local_repo(tmp_path / "repo")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    reset_client()
    events: list[str] = []
    try:
        report = run_batch(
            [{"target": str(repo), "id": f"j{i}"} for i in range(3)],
            results=tmp_path / "r.jsonl",
            max_pause_s=0.3,
            progress=lambda p: events.append(p.message) if p.event == "breaker" else None,
        )
    finally:
        monkeypatch.undo()
        reset_client()
    assert [r.outcome for r in report.results] == ["not_run"] * 3
    assert "engine did not answer" in report.results[0].reason
    assert events and "open" in events[0]
    assert ResultsFile(tmp_path / "r.jsonl").read() == {}, "not-run jobs leave no record"
    assert report.summary["stopped"].startswith("engine did not answer")


# -- CLI ---------------------------------------------------------------------------------


def test_cli_runs_a_jobs_file_and_prints_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from runner.cli.batch import _table, batch_app

    local_repo(tmp_path / "good")
    local_repo(tmp_path / "bad", evaluation="exit 4\n")
    jobs = write(
        tmp_path / "jobs.yaml",
        "defaults: {options: {sandbox: local}}\nworkers: 2\n"
        "jobs:\n  - {id: a, target: ./good}\n  - {id: b, target: ./bad}\n",
    )
    monkeypatch.setenv("CI", "true")
    frames: list[object] = []
    first = CliRunner().invoke(batch_app, [str(jobs), "--json"])
    assert first.exit_code == 1, first.output
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert (summary["ok"], summary["failed"], summary["workers"]) == (1, 1, 2)
    assert "failed b" in first.stderr and "exit" not in first.stdout
    again = CliRunner().invoke(batch_app, [str(jobs), "--resume"])
    assert again.exit_code == 1 and "(2 resumed)" in again.stderr
    bad = CliRunner().invoke(batch_app, [str(write(tmp_path / "x.yaml", "jobz: []\n"))])
    assert bad.exit_code == 2 and "x.yaml:1: jobs: required key is missing" in bad.stderr
    report = run_batch(
        [{"id": "t", "target": str(tmp_path / "good"), "options": {"sandbox": "local"}}],
        progress=lambda p: frames.append(_table(p)),
    )
    assert report.ok and frames, "the live table renders every snapshot"


def test_an_unguarded_script_gets_a_clear_error_not_infra_results(tmp_path: Path) -> None:
    repo = local_repo(tmp_path / "repo")
    script = write(
        tmp_path / "unguarded.py",
        "from runner.batch import run_many\n"
        f"run_many([{{'target': {str(repo)!r}, 'options': {{'sandbox': 'local'}}}}], workers=1)\n",
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 1
    assert "RuntimeError" in proc.stderr and "if __name__ == '__main__':" in proc.stderr
