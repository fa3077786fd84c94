"""Repair orchestration: what the session hands the agent when a stage fails.

The agent (``runner/agent``) edits only the contract, in a sandbox of its own; this
module builds the evidence it gets from the runner's own records of the failed stage,
and turns agent infrastructure errors into "no repair" outcomes the session records.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from runner.agent import ModelUnreachable, repair_contract
from runner.artifacts import RunDir
from runner.errors import AgentError
from runner.results import VerificationResult
from runner.stages import StageResult

TAIL_CHARS = 4000


def evidence_of(verify: VerificationResult, reason: str) -> dict[str, str]:
    """The failed stage's last command with output tails, plus contract/metrics errors."""
    evidence = {"reason": reason}
    stage = getattr(verify, verify.failed_stage or "", None)
    if isinstance(stage, StageResult) and stage.results:
        last = stage.results[-1]
        evidence.update(
            command=last.cmd,
            exit_code=str(last.rc),
            stdout_tail=last.stdout[-TAIL_CHARS:],
            stderr_tail=last.stderr[-TAIL_CHARS:],
        )
    if verify.metrics_errors:
        evidence["validation_errors"] = "\n".join(verify.metrics_errors)
    return evidence


def try_repair(
    repo_root: Path,
    *,
    verify: VerificationResult,
    reason: str,
    model: str,
    run_dir: RunDir,
    attempt: int,
    env: Mapping[str, str],
    pipeline_rel: str,
    image: str | None,
) -> tuple[bool, str]:
    """One repair attempt: (contract changed and still loads, why not)."""
    try:
        out = repair_contract(
            repo_root,
            failed_stage=verify.failed_stage or "unknown",
            reason=reason,
            evidence=evidence_of(verify, reason),
            model=model,
            run_dir=run_dir,
            attempt=attempt,
            env=dict(env),
            pipeline_rel=pipeline_rel,
            image=image,
        )
    except ModelUnreachable as exc:
        return False, f"model unreachable: {exc}"
    except AgentError as exc:
        return False, f"agent failed: {exc}"
    return out.ok, out.reason
