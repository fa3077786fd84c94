"""How the batch runner scales: 32 trivial jobs on 1, 2, 4, 8 workers, and Dask vs the pool.

Run: ``python -m benchmarks.batch`` (see docs/scale.md); ``--quick`` for a smoke run
(8 jobs, 1 round); ``--json`` to print only the saved result path.

A trivial job is the smallest full session: one container opened with the repo copied
in, one evaluation command writing metrics.json, the output check, teardown. Each job
has its own repo. Every configuration runs the same jobs once per round, the order of
configurations rotating every round (``run_interleaved``); the figure is the median
wall time of the whole batch, including the pool's process start (a user pays it).

* scaling: ``run_batch(jobs, workers=W)`` for W in 1, 2, 4, 8; speed-up = serial
  median / W median. Workers are capped by the admission limit (printed).
* dask: the same jobs on a ``LocalCluster`` (2 worker processes x 1 thread, on
  127.0.0.1, started once, outside the timing) vs the local pool with 2 workers.

Every run must give identical verdicts and leave no container; the benchmark checks
both and records them (it reports, it does not gate: the exit code stays 0).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from runner.batch import JobResult, machine_capacity, run_batch
from sandbox.engine import LABEL_KIND, get_client
from sandbox.images import ensure_image

from .common import (
    Comparison,
    machine_facts,
    print_comparisons,
    progress,
    reporting_parser,
    run_header,
    run_interleaved,
    save_payload,
    stats_of,
)

NAME = "batch"
WORKERS = (1, 2, 4, 8)
DASK_WORKERS = 2
DEFAULT_JOBS, QUICK_JOBS = 32, 8
DEFAULT_ROUNDS, QUICK_ROUNDS = 3, 1
TARGET_DASK_VS_POOL = 1.25
"""Dask may cost a scheduler hop per job; within 25% of the pool is the target."""

PIPELINE = """\
version: 1
evaluation:
  run_cmds:
    - python3 .aider_fsm/stages/evaluation.py
  required_keys: [score, ok]
"""
EVALUATION = """\
import json
answers = open("answers.txt").read().split()
score = sum(a == "yes" for a in answers) / len(answers)
json.dump({"ok": True, "score": score}, open(".aider_fsm/metrics.json", "w"))
"""


def make_jobs(root: Path, n: int) -> list[dict[str, Any]]:
    """``n`` trivial jobs, one repo each (jobs may share a repo; here they need not)."""
    jobs: list[dict[str, Any]] = []
    for i in range(n):
        repo = root / f"repo{i:02d}"
        (repo / ".aider_fsm" / "stages").mkdir(parents=True)
        (repo / "pipeline.yml").write_text(PIPELINE)
        (repo / ".aider_fsm" / "stages" / "evaluation.py").write_text(EVALUATION)
        (repo / "answers.txt").write_text("yes no yes yes\n")
        (repo / "README.md").write_text(f"# trivial target {i}\n")
        jobs.append({"id": f"job{i:02d}", "target": str(repo), "llm": "none"})
    return jobs


def _containers(run_ids: set[str]) -> int:
    found = get_client().containers.list(
        all=True, filters={"label": LABEL_KIND}, ignore_removed=True
    )
    return sum(1 for c in found if c.labels.get("fsm-runner.run-id") in run_ids)


class _Recorder:
    """Runs one configuration and keeps what every run returned, for the checks."""

    def __init__(self, jobs: list[dict[str, Any]], **options: Any) -> None:
        self.jobs = jobs
        self.options = options
        self.runs: list[list[JobResult]] = []
        self.workers = 0

    def __call__(self) -> None:
        report = run_batch(self.jobs, **self.options)
        self.workers = int(report.summary["workers"])
        self.runs.append(report.results)


def _start_cluster() -> tuple[Any, str]:
    import distributed

    cluster_cls: Any = distributed.LocalCluster  # untyped constructor in some releases
    cluster: Any = cluster_cls(
        n_workers=DASK_WORKERS,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    return cluster, str(cluster.scheduler_address)


def run_all(n_jobs: int, rounds: int, *, say: Callable[[str], None]) -> dict[str, Any]:
    """Measure every configuration; return the JSON payload (plus ``_comparison``)."""
    started = datetime.now(UTC)
    tag = ensure_image()
    facts = machine_facts()
    capacity = machine_capacity()
    cluster, address = _start_cluster()
    try:
        with tempfile.TemporaryDirectory(prefix="fsm-bench-batch-") as tmp:
            jobs = make_jobs(Path(tmp), n_jobs)
            sides: dict[str, _Recorder] = {f"pool-{w}": _Recorder(jobs, workers=w) for w in WORKERS}
            sides[f"dask-{DASK_WORKERS}"] = _Recorder(jobs, scheduler=address)
            say(f"{n_jobs} jobs x {len(sides)} configurations x {rounds} round(s), 1 warm-up")
            timings = run_interleaved(sides, rounds, warmup=1)
            checks = _check(sides)
    finally:
        cluster.close()
    stats = stats_of(timings)
    serial = stats["pool-1"].median
    scaling = [
        {
            "config": name,
            "workers": sides[name].workers,
            **stats[name].to_dict(),
            "jobs_per_min": round(60 * n_jobs / stats[name].median, 2),
            "speedup_vs_serial": round(serial / stats[name].median, 3),
        }
        for name in sides
    ]
    dask_vs_pool = Comparison(
        name=f"dask_vs_pool_{DASK_WORKERS}",
        ours_label=f"run_batch(scheduler=LocalCluster({DASK_WORKERS} procs x 1 thread))",
        baseline_label=f"run_batch(workers={DASK_WORKERS}) (spawn process pool)",
        ours=stats[f"dask-{DASK_WORKERS}"],
        baseline=stats[f"pool-{DASK_WORKERS}"],
        target=TARGET_DASK_VS_POOL,
        notes=("cluster start is outside the timing; the pool's process start is inside",),
    )
    return {
        **run_header(NAME, started),
        "jobs": n_jobs,
        "rounds": rounds,
        "warmup_rounds": 1,
        "image": tag,
        "capacity": capacity.to_dict(),
        "machine": facts,
        "scaling": scaling,
        "results": [dask_vs_pool.to_dict()],
        "checks": checks,
        "_comparison": dask_vs_pool,
    }


def _check(sides: dict[str, _Recorder]) -> dict[str, Any]:
    """Same verdicts everywhere (all ok) and no container left by any run."""
    verdicts = {
        json.dumps([r.comparable() for r in run], sort_keys=True)
        for side in sides.values()
        for run in side.runs
    }
    all_ok = all(r.ok for side in sides.values() for run in side.runs for r in run)
    run_ids = {r.run_id for s in sides.values() for run in s.runs for r in run if r.run_id}
    return {
        "identical_results": len(verdicts) == 1,
        "all_ok": all_ok,
        "failures": sum(not r.ok for s in sides.values() for run in s.runs for r in run),
        "containers_left": _containers(run_ids),
        "runs_checked": sum(len(s.runs) for s in sides.values()),
    }


def _print(payload: dict[str, Any], out: Console) -> None:
    machine = payload["machine"]
    table = Table(
        title=f"batch of {payload['jobs']} trivial jobs (median of {payload['rounds']} rounds) - "
        f"{machine['nproc']} CPU, admission limit {payload['capacity']['limit']}",
        caption="wall s: median (p10-p90)",
    )
    for col in ("config", "workers", "wall s", "jobs/min", "speed-up vs serial"):
        table.add_column(col, justify="right")
    for row in payload["scaling"]:
        table.add_row(
            row["config"],
            str(row["workers"]),
            f"{row['median_ms'] / 1000:.1f} ({row['p10_ms'] / 1000:.1f}-{row['p90_ms'] / 1000:.1f})",
            f"{row['jobs_per_min']:.1f}",
            f"{row['speedup_vs_serial']:.2f}x",
        )
    out.print(table)
    checks = payload["checks"]
    good = checks["identical_results"] and checks["all_ok"] and not checks["containers_left"]
    colour = "green" if good else "red"
    out.print(
        f"[{colour}]identical results: {checks['identical_results']}, failures: "
        f"{checks['failures']}, containers left: {checks['containers_left']} "
        f"({checks['runs_checked']} batch runs)[/{colour}]"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = reporting_parser(
        NAME,
        "Batch runner scaling (1/2/4/8 workers) and Dask vs the local pool.",
        quick="smoke run: 8 jobs, 1 round",
    )
    parser.add_argument("--jobs", type=int, default=None, help=f"default {DEFAULT_JOBS}")
    parser.add_argument("-n", "--rounds", type=int, default=None, help="timed rounds")
    args = parser.parse_args(argv)
    n_jobs = args.jobs or (QUICK_JOBS if args.quick else DEFAULT_JOBS)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS)
    payload = run_all(n_jobs, rounds, say=progress(args))
    path = save_payload(NAME, payload, args)
    if path is None:
        return 0
    out = Console()
    _print(payload, out)
    print_comparisons(
        "Dask LocalCluster vs local pool (same jobs, same workers)", [payload["_comparison"]], out
    )
    out.print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
