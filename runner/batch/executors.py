"""Where jobs run: a local process pool, or the workers of a Dask distributed cluster.

Both hand back ``concurrent.futures.Future[JobResult]`` so the batch loop has one
shape. The pool uses the ``spawn`` context: forking a process that holds docker
client sockets and threads (rich, tenacity timers) copies them half-alive. On Dask,
each worker runs jobs against its own host's engine and takes that host's admission
slots, so ``dask worker --nthreads`` can never put more sandboxes on a host than fit.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from runner.batch.jobs import Job
from runner.batch.results import JobResult
from runner.batch.worker import RetryPolicy, init_pool_worker, run_job
from sandbox.engine import engine_available

__all__ = ["Backend", "DaskBackend", "LocalPool"]

_START_TIMEOUT_S = 120.0


class Backend(Protocol):
    """What the batch loop needs from an executor."""

    name: str

    def slots(self) -> int:
        """Jobs to keep in flight (the pool's size, or the cluster's threads)."""
        ...

    def submit(self, job: Job, index: int) -> Future[JobResult]: ...

    def probe(self) -> bool:
        """True when an engine answers where the jobs run (the breaker's probe)."""
        ...

    def close(self, *, cancel: bool) -> None: ...


class LocalPool:
    """A spawn-context process pool of ``workers`` processes on this machine."""

    name = "local"

    def __init__(self, workers: int, retry: RetryPolicy, *, warm: bool = True) -> None:
        self._workers = max(1, workers)
        self._retry = retry
        self._warm = warm
        self._pool = self._new_pool()
        self._checked = False

    def _check_start(self) -> None:
        """Start one worker before the first job, so a pool that cannot start says why.

        Spawned workers import the caller's ``__main__``: a script that calls
        ``run_many`` at top level runs again in every worker and kills it. Without this
        check every job would come back as ``infra`` with a bare ``BrokenProcessPool``.
        """
        try:
            self._pool.submit(os.getpid).result(timeout=_START_TIMEOUT_S)
        except BrokenProcessPool as exc:
            raise RuntimeError(
                "the batch's worker processes died while starting. Workers are spawned and "
                "import your main module: in a script, call run_many() under "
                "`if __name__ == '__main__':`"
            ) from exc
        self._checked = True

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_pool_worker,
            initargs=(os.getpid(), self._warm),
        )

    def slots(self) -> int:
        return self._workers

    def submit(self, job: Job, index: int) -> Future[JobResult]:
        if not self._checked:
            self._check_start()
        try:
            return self._pool.submit(run_job, job, index, self._retry)
        except BrokenProcessPool:
            # A worker died (OOM killer, SIGKILL): its job is reported as infra by the
            # loop; the other jobs get a fresh pool instead of failing with it.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return self._pool.submit(run_job, job, index, self._retry)

    def probe(self) -> bool:
        return engine_available()

    def close(self, *, cancel: bool) -> None:
        self._pool.shutdown(wait=True, cancel_futures=cancel)


class DaskBackend:
    """Jobs as tasks on an existing ``dask.distributed`` scheduler (``tcp://host:port``)."""

    name = "dask"
    _SLOTS_TTL_S = 10.0

    def __init__(self, address: str, retry: RetryPolicy, *, timeout_s: float = 30.0) -> None:
        try:
            import distributed
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise RuntimeError(
                "scheduler= needs dask.distributed: pip install 'dask[distributed]'"
            ) from exc
        self.address = address
        self._retry = retry
        client_cls: Any = distributed.Client  # untyped constructor in some releases
        self._client: Any = client_cls(address, timeout=timeout_s, set_as_default=False)
        self._held: dict[str, Any] = {}
        self._slots = (0, 0.0)

    def slots(self) -> int:
        """Threads across the cluster, re-read every few seconds as workers come and go."""
        count, at = self._slots
        if time.monotonic() - at > self._SLOTS_TTL_S or count == 0:
            count = max(1, sum(self._client.nthreads().values()))
            self._slots = (count, time.monotonic())
        return count

    def submit(self, job: Job, index: int) -> Future[JobResult]:
        bridge: Future[JobResult] = Future()
        key = f"fsm-runner-job-{job.id}-{uuid.uuid4().hex[:8]}"
        # pure=False: the same job twice is two runs, never one cached result.
        task = self._client.submit(run_job, job, index, self._retry, key=key, pure=False)
        self._held[key] = task  # a dropped dask future releases its task on the scheduler

        def settle(done: Any) -> None:
            self._held.pop(key, None)
            try:
                bridge.set_result(done.result())
            except BaseException as exc:  # cancelled, KilledWorker, a worker-side crash
                bridge.set_exception(exc)

        task.add_done_callback(settle)
        return bridge

    def probe(self) -> bool:
        try:
            answers = self._client.run(engine_available, on_error="return")
        except OSError:
            return False
        return any(v is True for v in answers.values())

    def close(self, *, cancel: bool) -> None:
        if cancel and self._held:
            self._client.cancel(list(self._held.values()))
        self._held.clear()
        self._client.close()
