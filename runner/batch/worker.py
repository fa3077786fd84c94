"""What runs on a worker (a pool process or a Dask worker thread): one job, start to end.

A job never raises: its stage failures, bad input and broken infrastructure all come
back as a ``JobResult``. Only infrastructure errors are retried (with backoff, a fresh
session each time): a failed stage is the job's verdict and running it again would
only hide flakiness in the target. ``UnsafeArchive`` is a sandbox error too, but it is
the target misbehaving, not the engine, so it is never retried either.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from runner.api.setup import setup
from runner.batch.admission import host_slot, machine_capacity
from runner.batch.jobs import Job
from runner.batch.results import JobResult
from runner.errors import RunnerError
from runner.runs.run_dir import new_run_id
from runner.session.results import EvaluationResult, RolloutResult
from sandbox.errors import SandboxError as SandboxLayerError
from sandbox.errors import UnsafeArchive
from sandbox.lifecycle import remove_in_background
from sandbox.pool import WarmPool, install

__all__ = ["RetryPolicy", "init_pool_worker", "is_infra_error", "run_job"]

_PR_SET_PDEATHSIG = 1
RUN_ID_LABEL = "fsm-runner.run-id"
"""The label a session's sandbox carries its run id in (runner/session/sandbox_open.py)."""
_warm_pool: WarmPool | None = None
_orphaned = False
"""Set in a pool worker told to stop (parent-death SIGTERM, or the pool terminating it)."""
_in_job = False


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for infrastructure errors: ``attempts`` in all, waits from ``initial_s`` doubling up to ``max_s``."""

    attempts: int = 3
    initial_s: float = 2.0
    max_s: float = 30.0


def is_infra_error(exc: BaseException) -> bool:
    """Engine unreachable, image missing, container died: worth another try."""
    return isinstance(exc, SandboxLayerError) and not isinstance(exc, UnsafeArchive)


def _describe(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0] if first else ''}".rstrip(": ")


def _run_once(job: Job) -> dict[str, Any]:
    # The run id of the sandbox the warm pool made for this job (its container carries it).
    run_id = _warm_pool.claim() if _warm_pool is not None else None
    sess = setup(job.target, **job.options.setup_kwargs(), run_id=run_id)
    env = dict(job.env) or None
    with sess:
        roll = sess.rollout(
            llm=job.llm,
            mode=job.mode,
            require_samples=job.require_samples,
            env_overrides=env,
            repair_iters=job.repair_iters,
        )
        res: RolloutResult | EvaluationResult = (
            sess.evaluate(mode=job.mode, env_overrides=env, repair_iters=job.repair_iters)
            if roll.ok
            else roll
        )
    return {
        "outcome": "ok" if res.ok else "failed",
        "failed_stage": res.failed_stage,
        "reason": res.reason,
        "metrics": res.metrics if isinstance(res, EvaluationResult) else None,
        "samples": roll.samples,
        "run_id": sess.run_id,
        "artifacts_dir": str(sess.artifacts_dir),
    }


def run_job(job: Job, index: int, retry: RetryPolicy | None = None) -> JobResult:
    """Run ``job`` in a sandbox on this host, holding a host admission slot per attempt.

    Never raises for the job's own failure; ``KeyboardInterrupt``/``SystemExit`` pass
    through so an interrupted worker stops (its session closes its sandbox on the way).
    """
    global _in_job
    policy = retry or RetryPolicy()
    started = time.time()
    infra: list[str] = []
    attempts = 0
    slots = machine_capacity([job.options.limits()]).limit

    def attempt() -> dict[str, Any]:
        nonlocal attempts
        attempts += 1
        with host_slot(slots):
            return _run_once(job)

    def note(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None:
            infra.append(_describe(exc))

    fields: dict[str, Any]
    _in_job = True
    try:
        retrying = Retrying(
            retry=retry_if_exception(is_infra_error),
            stop=stop_after_attempt(max(1, policy.attempts)),
            # wait_exponential + wait_random: wait_exponential_jitter changed its
            # arguments across the tenacity versions we accept (>=8.2).
            wait=wait_exponential(multiplier=policy.initial_s, max=policy.max_s)
            + wait_random(0, policy.initial_s),
            before_sleep=note,
            reraise=True,
        )
        fields = retrying(attempt)
    except (RunnerError, SandboxLayerError, ValueError, TypeError, OSError) as exc:
        kind = "infra" if is_infra_error(exc) else "error"
        if kind == "infra":
            infra.append(_describe(exc))
        fields = {"outcome": kind, "reason": _describe(exc)}
    except Exception as exc:  # a bug in the runner must still not sink the batch
        fields = {"outcome": "error", "reason": f"unexpected {_describe(exc)}"}
    except SystemExit as exc:
        if _orphaned:
            # The session has closed its sandbox on the way here. Going back to the
            # pool's loop would block for ever: sibling workers hold the call queue open.
            os._exit(exc.code if isinstance(exc.code, int) else 1)
        raise
    finally:
        _in_job = False
    return JobResult(
        job_id=job.id or "",
        index=index,
        target=job.target,
        llm=job.llm,
        mode=job.mode,
        attempts=attempts,
        host=socket.gethostname(),
        pid=os.getpid(),
        started_at=started,
        duration_s=round(time.time() - started, 3),
        infra_errors=infra,
        **fields,
    )


def install_warm_pool(warm: bool) -> None:
    """One warm sandbox per worker process (jobs run one at a time in it), or none."""
    global _warm_pool
    if _warm_pool is not None:
        _warm_pool.close(wait=False)
        _warm_pool = None
    if warm:
        _warm_pool = WarmPool(size=1, refill=True, relabel=(RUN_ID_LABEL, new_run_id))
        atexit.register(_warm_pool.close)
    install(_warm_pool)
    # The finished job's container is removed while the next job starts; the worker
    # joins the removals before it exits (sandbox/lifecycle.py).
    remove_in_background(warm)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _orphaned
    if _orphaned:
        # The parent-death signal comes once per exiting thread of the parent (the
        # child is reparented to each in turn): the first one is unwinding already.
        return
    _orphaned = True
    if not _in_job:
        if _warm_pool is not None:  # idle: only the warm sandbox to remove
            _warm_pool.close()
        os._exit(128 + signum)  # the pool's queue would block an orderly exit
    raise SystemExit(128 + signum)  # unwind so the session closes (removes) its container


def init_pool_worker(parent_pid: int, warm: bool = False) -> None:
    """Pool initializer: die with the batch process, cleanly; optionally keep a warm pool.

    A process-pool worker outlives a SIGKILLed parent and would keep its containers
    "alive" for ``gc()``; with ``PR_SET_PDEATHSIG`` the kernel sends it SIGTERM instead,
    which unwinds the job and closes its sandbox.

    ``warm``: while a job runs, the worker creates and starts the next job's sandbox
    (same image, limits and mounts as this one's, labelled with the run id the next
    job's session will claim), so the next open only copies the workspace, and a
    finished job's container is removed while the next one runs (issue 17).
    """
    install_warm_pool(warm)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
