"""The batch runner against the real engine: parallel = serial, SIGKILL + gc + --resume, Dask.

Sized for CI on 2 cores (10, 8 and 4 jobs); benchmarks/batch.py runs the 32-job version.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.batch import JobResult, ResultsFile, run_batch, run_many
from sandbox.engine import LABEL_KIND, get_client
from sandbox.errors import SandboxError
from sandbox.reaper import GcReport, gc
from tests.contract_repos import ROLLOUT, make_repo

pytestmark = [pytest.mark.docker, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
SCORES = {2: 0.5, 4: 0.25, 1: 1.0}


def scored_repo(root: Path, every: int, *, pause: float = 0.0) -> Path:
    """A repo whose reward is 1 on every ``every``-th sample: scores differ per repo."""
    rollout = ROLLOUT.replace("i % 2 == 0", f"i % {every} == 0")
    if pause:
        rollout = f"sleep {pause}\n{rollout}"
    return make_repo(root, rollout=rollout)


def job_list(tmp_path: Path, n: int, *, failing_at: int | None = None) -> list[dict[str, object]]:
    """``n`` jobs, one repo each, cycling through three scores; one broken contract."""
    jobs: list[dict[str, object]] = []
    for i in range(n):
        every = list(SCORES)[i % len(SCORES)]
        root = tmp_path / f"r{i:02d}"
        if i == failing_at:
            target = make_repo(root, deploy_health="echo 'down' >&2; exit 7\n")
        else:
            target = scored_repo(root, every)
        jobs.append({"id": f"job{i:02d}", "target": str(target), "llm": "m"})
        jobs[-1]["require_samples"] = True
    return jobs


def containers_of(run_ids: set[str]) -> list[str]:
    found = get_client().containers.list(
        all=True, filters={"label": LABEL_KIND}, ignore_removed=True
    )
    return [c.name for c in found if c.labels.get("fsm-runner.run-id") in run_ids]


def gc_once_listed() -> GcReport:
    """``gc()``, again if a container vanished while it listed (others share the engine).

    ``reaper.gc`` lists without ``ignore_removed``, so a container removed by someone
    else between the list and its inspect aborts the whole pass.
    """
    for _ in range(3):
        try:
            return gc()
        except SandboxError as exc:
            if "No such container" not in str(exc):
                raise
    return gc()


def run_ids_on_disk(tmp_path: Path) -> set[str]:
    """Every run any job started, finished or not (each claims a run dir first)."""
    return {p.name for p in tmp_path.glob("*/.aider_fsm/artifacts/*") if p.is_dir()}


def expected_verdict(index: int, failing_at: int) -> tuple[str, object]:
    if index == failing_at:
        return "failed", None
    every = list(SCORES)[index % len(SCORES)]
    return "ok", {"ok": True, "score": SCORES[every], "n": 8}


def test_parallel_batch_equals_serial_and_leaves_nothing(
    tmp_path: Path, default_image: str
) -> None:
    jobs = job_list(tmp_path, 10, failing_at=6)
    serial = run_many(jobs, workers=1)
    report = run_batch(jobs, workers=4, results=tmp_path / "results.jsonl")
    parallel = report.results
    assert [r.comparable() for r in parallel] == [r.comparable() for r in serial]
    for index, result in enumerate(parallel):
        assert (result.outcome, result.metrics) == expected_verdict(index, 6), result
        assert result.attempts == 1 and not result.infra_errors
    assert parallel[6].failed_stage == "deploy_health" and "rc=7" in parallel[6].reason
    assert report.summary["ok"] == 9 and report.summary["failed"] == 1
    assert report.summary["infra"] == report.summary["error"] == 0
    assert report.summary["workers"] == 4
    assert len({r.pid for r in parallel}) > 1, "the jobs really ran in several processes"
    on_file = ResultsFile(tmp_path / "results.jsonl").read()
    assert {k: v.comparable() for k, v in on_file.items()} == {
        r.job_id: r.comparable() for r in parallel
    }
    run_ids = {r.run_id for r in serial + parallel if r.run_id}
    assert len(run_ids) == 20 and run_ids == run_ids_on_disk(tmp_path)
    assert containers_of(run_ids) == []


def _children(pid: int) -> set[int]:
    kids: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.add(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    # A zombie counts as alive: gc() sees it with kill(pid, 0) until init reaps it.
    return Path(f"/proc/{pid}").exists()


def _settle(run_ids: set[str], quiet_s: float = 1.0, limit_s: float = 20.0) -> None:
    """Wait until the engine has finished requests the killed workers had in flight.

    A worker killed inside ``containers.create`` never learns the container's id; the
    engine still creates it a moment later. ``gc`` can only remove what exists.
    """
    deadline = time.monotonic() + limit_s
    seen, quiet_since = containers_of(run_ids), time.monotonic()
    while time.monotonic() - quiet_since < quiet_s and time.monotonic() < deadline:
        time.sleep(0.2)
        now = containers_of(run_ids)
        if now != seen:
            seen, quiet_since = now, time.monotonic()


def test_sigkill_mid_batch_then_gc_and_resume(tmp_path: Path, default_image: str) -> None:
    for i in range(8):
        scored_repo(tmp_path / f"r{i}", 2, pause=1.5)
    jobs_file = tmp_path / "jobs.yaml"
    jobs_file.write_text(
        "version: 1\ndefaults: {llm: m, require_samples: true}\njobs:\n"
        + "".join(f"  - {{id: job{i}, target: ./r{i}}}\n" for i in range(8))
    )
    results = tmp_path / "jobs.results.jsonl"
    cmd = [sys.executable, "-m", "runner.cli.batch", str(jobs_file), "--workers", "2"]
    env = {**os.environ, "CI": "true"}
    log = tmp_path / "batch.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=sink)
    try:
        deadline = time.monotonic() + 240
        while len(ResultsFile(results).read()) < 2:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no results after 240 s"
            time.sleep(0.05)
        workers = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    first = ResultsFile(results).read()
    assert 2 <= len(first) < 8, "killed mid-run"
    # The pool workers die with the batch (PR_SET_PDEATHSIG), so gc sees dead creators.
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), "pool workers outlived the batch"
    started = run_ids_on_disk(tmp_path)
    assert len(started) > len(first), "some jobs were in flight at the kill"
    _settle(started)
    report = gc_once_listed()
    left = containers_of(started)
    assert left == [], (left, report)

    done = subprocess.run(
        [*cmd, "--resume", "--json"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["resumed"] == len(first) and summary["ran"] == 8 - len(first)
    assert summary["ok"] == 8
    lines = [json.loads(x) for x in results.read_text().splitlines() if x.strip().endswith("}")]
    per_job: dict[str, list[str]] = {}
    for line in lines:
        per_job.setdefault(line["job_id"], []).append(line["run_id"])
    assert sorted(per_job) == [f"job{i}" for i in range(8)]
    for job_id, result in first.items():
        assert per_job[job_id] == [result.run_id], f"{job_id} was re-run"
    assert all(len(v) == 1 for v in per_job.values())
    assert containers_of(run_ids_on_disk(tmp_path)) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[str]:
    """A scheduler and 2 worker processes (1 thread each) on 127.0.0.1, as in docs/scale.md."""
    pytest.importorskip("distributed")
    address = f"tcp://127.0.0.1:{_free_port()}"
    port = address.rsplit(":", 1)[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "dask"]
    local = ["--host", "127.0.0.1", "--no-dashboard"]
    logs = (tmp_path / "scheduler.log").open("w"), (tmp_path / "workers.log").open("w")
    sched = subprocess.Popen(
        [*base, "scheduler", "--port", port, *local],
        env=env,
        stdout=logs[0],
        stderr=subprocess.STDOUT,
    )
    workers = subprocess.Popen(
        [*base, "worker", address, "--nworkers", "2", "--nthreads", "1", *local],
        env=env,
        stdout=logs[1],
        stderr=subprocess.STDOUT,
    )
    try:
        yield address
    finally:
        for proc in (workers, sched):
            proc.send_signal(signal.SIGTERM)
        for proc in (workers, sched):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for log in logs:
            log.close()


def _wait_for_workers(address: str, n: int) -> None:
    import distributed

    client_cls: Any = distributed.Client
    with client_cls(address, timeout=60, set_as_default=False) as client:
        client.wait_for_workers(n, timeout=120)


def test_dask_cluster_gives_the_same_results_as_the_local_pool(
    tmp_path: Path, default_image: str, dask_cluster: str
) -> None:
    jobs = job_list(tmp_path, 4, failing_at=3)
    local = run_many(jobs, workers=2)
    _wait_for_workers(dask_cluster, 2)
    report = run_batch(jobs, scheduler=dask_cluster, results=tmp_path / "dask.jsonl")
    remote: list[JobResult] = report.results
    assert [r.comparable() for r in remote] == [r.comparable() for r in local]
    assert [r.outcome for r in remote] == ["ok", "ok", "ok", "failed"]
    assert report.summary["executor"] == "dask" and report.summary["workers"] == 2
    local_pids = {r.pid for r in local}
    assert {r.pid for r in remote}.isdisjoint(local_pids | {os.getpid()}), "ran on Dask workers"
    run_ids = {r.run_id for r in local + remote if r.run_id}
    assert len(run_ids) == 8 and containers_of(run_ids) == []


def test_benchmark_quick_run_saves_json(tmp_path: Path, default_image: str) -> None:
    pytest.importorskip("distributed")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks import batch as bench

    argv = ["--jobs", "2", "--rounds", "1", "--json", "--results-dir", str(tmp_path)]
    assert bench.main(argv) == 0
    (path,) = tmp_path.glob("batch-*.json")
    payload = json.loads(path.read_text())
    assert [row["config"] for row in payload["scaling"]] == [
        "pool-1",
        "pool-2",
        "pool-4",
        "pool-8",
        "dask-2",
    ]
    assert all(row["speedup_vs_serial"] > 0 for row in payload["scaling"])
    checks = payload["checks"]
    assert checks["identical_results"] and checks["all_ok"] and checks["containers_left"] == 0
    assert payload["results"][0]["name"] == "dask_vs_pool_2"
