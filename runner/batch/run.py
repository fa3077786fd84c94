"""The batch loop: admit, start, collect, write, and stop safely.

One loop for both executors. It keeps at most ``slots`` jobs in flight (so the circuit
breaker can hold back the rest instead of everything sitting in a queue), appends each
result to the JSONL file the moment it arrives, and returns one result per job, in
job order, whatever happened to the others.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runner.batch.admission import Capacity, machine_capacity
from runner.batch.breaker import BreakerState, EngineBreaker
from runner.batch.executors import Backend, DaskBackend, LocalPool
from runner.batch.jobs import Job, normalise_jobs
from runner.batch.results import JobResult, Outcome, ResultsFile
from runner.batch.worker import RetryPolicy

__all__ = ["BatchProgress", "BatchReport", "run_batch", "run_many"]

Event = Literal["start", "job_started", "job_done", "breaker", "tick", "end"]
_OUTCOMES: tuple[Outcome, ...] = ("ok", "failed", "error", "infra", "not_run")


@dataclass
class BatchProgress:
    """A snapshot for progress displays (the CLI's live table)."""

    event: Event
    total: int
    executor: str
    workers: int
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_OUTCOMES, 0))
    running: int = 0
    resumed: int = 0
    started_at: float = field(default_factory=time.monotonic)
    breaker: str = BreakerState.CLOSED.value
    message: str = ""
    last: JobResult | None = None

    @property
    def done(self) -> int:
        """Jobs with a result this run (resumed ones not included)."""
        return sum(self.counts.values())

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_at

    @property
    def throughput_per_min(self) -> float:
        return 60.0 * self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        remaining = self.total - self.resumed - self.done
        if remaining <= 0:
            return 0.0
        rate = self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return remaining / rate if rate > 0 else None


@dataclass(frozen=True)
class BatchReport:
    """Every job's result (in job order) and the batch summary (also written as JSON)."""

    results: list[JobResult]
    summary: dict[str, Any]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


def _crashed(fut: Future[JobResult], job: Job, index: int) -> JobResult:
    """A future that raised: the worker process or task died, not the job's verdict."""
    exc = None if fut.cancelled() else fut.exception()
    interrupted = exc is None or isinstance(exc, KeyboardInterrupt | SystemExit | CancelledError)
    reason = "interrupted" if interrupted else f"worker crashed: {type(exc).__name__}: {exc}"
    return JobResult(
        job_id=job.id or "",
        index=index,
        outcome="not_run" if interrupted else "infra",
        target=job.target,
        llm=job.llm,
        mode=job.mode,
        reason=reason,
        infra_errors=[] if interrupted else [reason],
    )


def _not_run(job: Job, index: int, reason: str) -> JobResult:
    return JobResult(
        job_id=job.id or "",
        index=index,
        outcome="not_run",
        target=job.target,
        llm=job.llm,
        mode=job.mode,
        reason=reason,
    )


def _backend(
    scheduler: str | None,
    workers: int | None,
    capacity: Capacity,
    todo: int,
    retry: RetryPolicy,
    warm_pool: bool,
) -> Backend:
    if scheduler:
        return DaskBackend(scheduler, retry)
    return LocalPool(max(1, min(capacity.admit(workers), todo)), retry, warm=warm_pool)


def run_batch(
    jobs: Sequence[Job | Mapping[str, Any]],
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    results: str | Path | None = None,
    resume: bool = False,
    progress: Callable[[BatchProgress], None] | None = None,
    retry: RetryPolicy | None = None,
    breaker_threshold: int = 3,
    max_pause_s: float = 600.0,
    warm_pool: bool = True,
) -> BatchReport:
    """Run ``jobs``; see ``run_many``. Also returns the summary the CLI prints."""
    retry = retry or RetryPolicy()
    resolved = normalise_jobs(jobs)
    store = ResultsFile(Path(results)) if results is not None else None
    previous = store.finished() if store is not None and resume else {}
    moved = store.start(resume=resume) if store is not None else None
    out: list[JobResult | None] = [None] * len(resolved)
    todo: deque[tuple[int, Job]] = deque()
    for index, job in enumerate(resolved):
        prior = previous.get(job.id or "")
        if prior is not None:
            out[index] = dataclasses.replace(prior, index=index)
        else:
            todo.append((index, job))
    capacity = machine_capacity(job.options.limits() for job in resolved)
    backend = _backend(scheduler, workers, capacity, len(todo), retry, warm_pool)
    # On a cluster each host enforces its own admission limit (host slots); this
    # machine's capacity says nothing about the workers' hosts.
    window = (workers or backend.slots()) if scheduler else capacity.admit(workers)
    state = BatchProgress(
        event="start",
        total=len(resolved),
        executor=backend.name,
        workers=window,
        resumed=len(resolved) - len(todo),
    )
    breaker_log: list[dict[str, Any]] = []

    def emit(event: Event, message: str = "", last: JobResult | None = None) -> None:
        state.event, state.message, state.last = event, message, last
        if progress is not None:
            progress(state)

    def on_breaker(new: BreakerState, why: str) -> None:
        state.breaker = new.value
        breaker_log.append({"state": new.value, "why": why, "at_s": round(state.elapsed_s, 3)})
        emit("breaker", f"engine circuit {new.value}: {why}")

    breaker = EngineBreaker(
        backend.probe, threshold=breaker_threshold, max_pause_s=max_pause_s, on_change=on_breaker
    )
    inflight: dict[Future[JobResult], tuple[int, Job]] = {}
    stop_reason = ""
    emit("start", capacity.explain() if not scheduler else f"Dask scheduler {scheduler}")
    try:
        needs_engine = any(job.options.sandbox == "docker" for _, job in todo)
        if needs_engine and not backend.probe():
            breaker.trip("no engine answers before the start")
        while todo or inflight:
            if scheduler and workers is None:
                window = backend.slots()
            while todo and len(inflight) < window and breaker.allows_start():
                index, job = todo.popleft()
                inflight[backend.submit(job, index)] = (index, job)
                breaker.started()
                state.running = len(inflight)
                emit("job_started", f"started {job.id}")
            if breaker.gave_up and not inflight:
                stop_reason = f"engine did not answer for {max_pause_s:.0f} s"
                break
            if not inflight:
                time.sleep(0.25)
                emit("tick")
                continue
            finished, _ = wait(inflight, timeout=1.0, return_when=FIRST_COMPLETED)
            for fut in finished:
                index, job = inflight.pop(fut)
                ok = not fut.cancelled() and fut.exception() is None
                result = fut.result() if ok else _crashed(fut, job, index)
                out[index] = result
                if store is not None and result.outcome != "not_run":
                    store.append(result)
                breaker.record(result.outcome)
                state.counts[result.outcome] += 1
                state.running = len(inflight)
                emit("job_done", f"{result.outcome} {job.id}", result)
            if not finished:
                emit("tick")
    except KeyboardInterrupt:
        stop_reason = "interrupted"
        backend.close(cancel=True)
        raise
    finally:
        if stop_reason != "interrupted":
            backend.close(cancel=bool(todo))
        for index, job in todo:
            out[index] = _not_run(job, index, f"not run: {stop_reason or 'batch stopped'}")
            state.counts["not_run"] += 1
    final = [r for r in out if r is not None]
    summary = _summary(state, final, capacity, workers, scheduler, store, moved)
    summary["breaker"] = breaker_log
    summary["stopped"] = stop_reason or None
    if store is not None:
        summary_path = store.path.with_name(f"{store.path.stem}.summary.json")
        summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        summary["summary_path"] = str(summary_path)
    emit("end", stop_reason)
    return BatchReport(final, summary)


def _summary(
    state: BatchProgress,
    results: list[JobResult],
    capacity: Capacity,
    workers: int | None,
    scheduler: str | None,
    store: ResultsFile | None,
    moved: Path | None,
) -> dict[str, Any]:
    counts: dict[str, int] = dict.fromkeys(_OUTCOMES, 0)
    for r in results:
        counts[r.outcome] += 1
    return {
        "jobs": len(results),
        **counts,
        "resumed": state.resumed,
        "ran": state.done,
        "executor": state.executor,
        "scheduler": scheduler,
        "workers_requested": workers,
        "workers": state.workers,
        "capacity": capacity.to_dict(),
        "elapsed_s": round(state.elapsed_s, 3),
        "throughput_per_min": round(state.throughput_per_min, 3),
        "results_path": str(store.path) if store is not None else None,
        "previous_results_moved_to": str(moved) if moved is not None else None,
    }


def run_many(
    jobs: Sequence[Job | Mapping[str, Any]],
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    results: str | Path | None = None,
    resume: bool = False,
    progress: Callable[[BatchProgress], None] | None = None,
    warm_pool: bool = True,
) -> list[JobResult]:
    """Run many jobs at once; one ``JobResult`` per job, in order, never raising for one job.

    Args:
        jobs: ``Job`` objects or mappings with the same keys (``target`` required).
        workers: sandboxes at once on this machine; None = as many as fit. Never more
            than the admission limit (cores, memory, per-sandbox limits, engine ceiling).
            With ``scheduler``: jobs kept in flight on the cluster (None = its threads).
        scheduler: a Dask distributed address (``tcp://host:port``); None = a local pool.
        results: a JSONL file each result is appended to as its job ends.
        resume: skip jobs that already have a verdict (ok, failed, error) in ``results``.
        progress: called with a ``BatchProgress`` snapshot on every event.
        warm_pool: each local worker creates and starts its next job's sandbox while the
            current job runs, so that job's open only copies its workspace (docs/scale.md).
            Ignored with ``scheduler``.

    Raises:
        ContractError: two jobs share an explicit id.
        pydantic.ValidationError: a mapping is not a valid job.
        OSError: the results file cannot be written; or no Dask scheduler answers.
        RuntimeError: the pool's worker processes cannot start (in a script, call
            ``run_many`` under ``if __name__ == "__main__":``; workers are spawned).
    """
    return run_batch(
        jobs,
        workers=workers,
        scheduler=scheduler,
        results=results,
        resume=resume,
        progress=progress,
        warm_pool=warm_pool,
    ).results
