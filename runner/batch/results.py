"""One result per job, and the JSONL file they are appended to as each job ends.

The file is the batch's memory: a killed batch loses only the jobs in flight, and
``--resume`` reads back which jobs already have a verdict. Only the batch process
writes it, one whole line per ``write`` with ``O_APPEND`` and an fsync, so a line is
either all there or (killed mid-write) a torn tail that reading skips.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["FINAL_OUTCOMES", "JobResult", "Outcome", "ResultsFile"]

Outcome = Literal["ok", "failed", "error", "infra", "not_run"]
"""``ok``: evaluation passed. ``failed``: a stage or output check failed (the job's own
verdict). ``error``: bad input (contract, target, option). ``infra``: the engine or
sandbox broke and retries did not help. ``not_run``: the batch stopped before it."""

FINAL_OUTCOMES: frozenset[str] = frozenset({"ok", "failed", "error"})
"""Outcomes that are the job's verdict; ``--resume`` re-runs the others."""


@dataclass(frozen=True)
class JobResult:
    """What one job did; ``comparable()`` is the part that must not depend on scheduling."""

    job_id: str
    index: int
    outcome: Outcome
    target: str
    llm: str
    mode: str
    failed_stage: str | None = None
    reason: str = ""
    metrics: dict[str, Any] | None = None
    samples: int | None = None
    run_id: str | None = None
    artifacts_dir: str | None = None
    attempts: int = 0
    host: str = ""
    pid: int = 0
    started_at: float = 0.0
    duration_s: float = 0.0
    infra_errors: list[str] = field(default_factory=list)
    """One line per infrastructure error that was retried (or that ended the job)."""

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def comparable(self) -> dict[str, Any]:
        """Verdict fields only: a serial run, the pool and Dask must agree on these."""
        return {
            "job_id": self.job_id,
            "outcome": self.outcome,
            "failed_stage": self.failed_stage,
            "metrics": self.metrics,
            "samples": self.samples,
        }

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobResult:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class ResultsFile:
    """Append-only JSONL of ``JobResult``; the last record of a job id wins."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, JobResult]:
        """Every job's latest record; torn or foreign lines are skipped, never fatal."""
        latest: dict[str, JobResult] = {}
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return latest
        for line in text.splitlines():
            try:
                result = JobResult.from_dict(json.loads(line))
            except (ValueError, TypeError):
                continue  # a line torn by a kill mid-write
            latest[result.job_id] = result
        return latest

    def finished(self) -> dict[str, JobResult]:
        """Jobs with a verdict (ok, failed, error): ``--resume`` skips exactly these."""
        return {k: r for k, r in self.read().items() if r.outcome in FINAL_OUTCOMES}

    def start(self, *, resume: bool) -> Path | None:
        """Prepare for a run; without ``resume`` an old file is kept aside, never overwritten.

        Returns:
            Where an old file was moved, or None.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        moved: Path | None = None
        if not resume and self.path.exists() and self.path.stat().st_size:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            moved = self.path.with_name(f"{self.path.stem}.{stamp}{self.path.suffix}")
            self.path.rename(moved)
        self._end_torn_line()
        return moved

    def _end_torn_line(self) -> None:
        """A kill mid-write leaves a line without ``\\n``; end it so the next record parses."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                if fh.tell() == 0:
                    return
                fh.seek(-1, os.SEEK_END)
                torn = fh.read(1) != b"\n"
        except FileNotFoundError:
            return
        if torn:
            self._append(b"\n")

    def append(self, result: JobResult) -> None:
        self._append((result.to_json() + "\n").encode())

    def _append(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
