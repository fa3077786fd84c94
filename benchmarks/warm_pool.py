"""Batch throughput with and without the warm pool: 32 trivial jobs, jobs/s, same run.

Run: ``python -m benchmarks.warm_pool`` (part of ``make bench``); ``--quick`` for 8 jobs
and 1 round.

The jobs are ``benchmarks.batch``'s trivial ones (one evaluation command per job, each
its own repo). For 1 and 2 local workers, ``run_batch(jobs, workers=W)`` runs with
``warm_pool=True`` (each worker creates and starts its next job's sandbox while the
current job runs: docs/scale.md) and with ``warm_pool=False`` (every job opens its own
container, as before issue 17), alternating round by round. The figure is the median
wall time of the whole batch (pool start included) and jobs/s = jobs / that median.
Every run must end all ok, with no container left.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.batch import _containers, _Recorder, make_jobs
from benchmarks.common import (
    Comparison,
    machine_facts,
    run_interleaved,
    save_comparisons,
    stats_of,
)
from sandbox.images import ensure_image

NAME = "warm_pool"
WORKERS = (1, 2)


def measure(n_jobs: int, rounds: int) -> tuple[list[Comparison], dict[str, Any]]:
    ensure_image()
    with tempfile.TemporaryDirectory(prefix="fsm-bench-warm-") as tmp:
        jobs = make_jobs(Path(tmp), n_jobs)
        sides: dict[str, _Recorder] = {}
        for w in WORKERS:
            sides[f"warm-{w}"] = _Recorder(jobs, workers=w, warm_pool=True)
            sides[f"cold-{w}"] = _Recorder(jobs, workers=w, warm_pool=False)
        timings = run_interleaved(sides, rounds, warmup=1)
    stats = stats_of(timings)
    results = [r for side in sides.values() for run in side.runs for r in run]
    run_ids = {r.run_id for r in results if r.run_id}
    checks = {
        "all_ok": all(r.ok for r in results),
        "failures": sum(not r.ok for r in results),
        "containers_left": _containers(run_ids),
    }
    rates = {name: round(n_jobs / s.median, 3) for name, s in stats.items()}
    comps = [
        Comparison(
            name=f"warm_pool_{w}_workers",
            ours_label=f"run_batch({n_jobs} jobs, workers={w}, warm_pool=True): "
            f"{rates[f'warm-{w}']} jobs/s",
            baseline_label=f"the same with warm_pool=False: {rates[f'cold-{w}']} jobs/s",
            ours=stats[f"warm-{w}"],
            baseline=stats[f"cold-{w}"],
            target=1.0,
            notes=(
                f"throughput x{rates[f'warm-{w}'] / rates[f'cold-{w}']:.2f} "
                "(ratio = batch wall time warm / cold)",
            ),
        )
        for w in WORKERS
    ]
    return comps, {"jobs": n_jobs, "rounds": rounds, "jobs_per_s": rates, "checks": checks}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.warm_pool")
    parser.add_argument("--quick", action="store_true", help="8 jobs, 1 round")
    args = parser.parse_args(argv)
    n_jobs, rounds = (8, 1) if args.quick else (32, 3)
    facts = machine_facts()
    comps, extra = measure(n_jobs, rounds)
    title = f"{n_jobs} trivial jobs (median of {rounds} rounds, interleaved)"
    path = save_comparisons(NAME, title, comps, argv=argv, facts=facts, **extra)
    print(f"checks: {extra['checks']}")
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
