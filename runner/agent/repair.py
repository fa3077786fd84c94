"""Repair: the agent edits a failing contract, within the contract, in a sandbox.

One call is one repair attempt (the session counts them against ``repair_iters``). The
agent sees the failed stage, the reason, the evidence the session collected (command,
stdout/stderr tails, validation and audit errors) and the current contract files. What
comes back is only the contract (scope rule), and it must still validate: a repair
that edits nothing, or leaves a contract that does not load, is a failed attempt and
the contract is put back as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Unpack

from runner.agent import prompts
from runner.agent.attempt import prepare_attempts, run_attempt
from runner.agent.checks import (
    contract_texts,
    restore_contract,
    snapshot_contract,
    validate_contract,
)
from runner.agent.config import Bounds
from runner.agent.transcript import ModelUnreachable
from runner.errors import AgentError
from runner.runs.run_dir import RunDir
from runner.session.options import RepairRequest

PROVENANCE = "repair_provenance.json"


@dataclass(frozen=True)
class RepairOutcome:
    """What one repair attempt did to the host contract.

    Attributes:
        ok: the agent changed the contract and the result validates (it may still fail
            when the stages run again: that is for the session's retry to find out).
        changed_files: contract files created or modified on the host (repo-relative).
        deleted_files: contract files the agent removed (removed on the host too).
        discarded_paths: changes the scope rule threw away (also in provenance).
        reason: why the attempt failed ("" when ok).
        errors: validation errors of the edited contract (it was restored then).
        record_dir: the attempt's folder in the run dir (``repair_NN``).
    """

    ok: bool
    changed_files: list[str] = field(default_factory=list)
    deleted_files: list[str] = field(default_factory=list)
    discarded_paths: list[str] = field(default_factory=list)
    reason: str = ""
    errors: list[str] = field(default_factory=list)
    record_dir: Path | None = None


def repair_contract(
    repo_root: Path,
    *,
    failed_stage: str,
    reason: str,
    evidence: Mapping[str, str],
    model: str,
    run_dir: RunDir,
    attempt: int,
    env: Mapping[str, str] | None = None,
    pipeline_rel: str = "pipeline.yml",
    bounds: Bounds | None = None,
    image: str | None = None,
    opencode_bin: Path | None = None,
) -> RepairOutcome:
    """Ask the agent to fix the contract after ``failed_stage`` failed.

    Args:
        repo_root: the host checkout whose contract is edited (nothing else is written).
        failed_stage: e.g. ``evaluation``, ``deploy_setup``, ``metrics``.
        reason: the failure reason the session reports.
        evidence: named texts for the prompt, e.g. ``{"command": ..., "stderr_tail": ...,
            "validation_errors": ...}``; each is clipped.
        model: ``provider/model`` (``opencode_repair_model`` or ``opencode_model``).
        attempt: 1-based; names the record dir ``repair_NN``.
        env: ``OPENAI_API_BASE`` / ``OPENAI_API_KEY`` overrides (else the process env).

    Raises:
        AgentError: infrastructure failure (``ModelUnreachable`` when the endpoint is
            down; sandbox or server failure; the attempt's time ran out). The contract
            is unchanged then.
    """
    repo_root, settings = prepare_attempts(repo_root, model, env=env, bounds=bounds, image=image,
                                           opencode_bin=opencode_bin, pipeline_rel=pipeline_rel)  # fmt: skip
    record_rel = f"repair_{attempt:02d}"
    before = snapshot_contract(repo_root, pipeline_rel)
    prompt = prompts.repair_prompt(
        repo_name=repo_root.name,
        failed_stage=failed_stage,
        reason=reason,
        evidence=evidence,
        contract_files=contract_texts(repo_root, pipeline_rel),
        pipeline_rel=pipeline_rel,
        attempt=attempt,
    )
    provenance: dict[str, object] = {
        "purpose": "repair_contract",
        "repo": str(repo_root),
        "model": settings.route.name,
        "attempt": attempt,
        "failed_stage": failed_stage,
        "reason": reason,
    }
    try:
        result = run_attempt(
            repo_root,
            prompt,
            settings=settings,
            run_dir=run_dir,
            record_rel=record_rel,
            title=f"{repo_root.name}:repair",
        )
    except Exception as exc:
        provenance.update(ok=False, error=str(exc))
        run_dir.write_json(f"{record_rel}/{PROVENANCE}", provenance)
        restore_contract(repo_root, before, pipeline_rel)
        raise
    taken = result.scope.taken
    outcome_fields = {
        "changed_files": [c.path for c in taken if c.status != "deleted"],
        "deleted_files": [c.path for c in taken if c.status == "deleted"],
        "discarded_paths": result.scope.discarded_paths,
        "record_dir": run_dir.path / record_rel,
    }
    errors: list[str] = []
    if not taken:
        failure = "repair_no_changes: the agent did not change the contract"
        if result.error:
            failure += f" (agent error: {result.error})"
    else:
        errors = validate_contract(
            repo_root, pipeline_rel=pipeline_rel, script_errors=result.script_errors
        )
        failure = "repair_invalid_contract: " + "; ".join(errors) if errors else ""
    if failure and taken:
        restore_contract(repo_root, before, pipeline_rel)
    provenance.update(result.record(), ok=not failure, failure=failure, validation_errors=errors)
    provenance["restored_original_contract"] = bool(failure and taken)
    run_dir.write_json(f"{record_rel}/{PROVENANCE}", provenance)
    run_dir.event("agent_attempt", purpose="repair", attempt=attempt, ok=not failure,
                  reason=failure, changed_files=result.scope.changed_files)  # fmt: skip
    return RepairOutcome(ok=not failure, reason=failure, errors=errors, **outcome_fields)  # type: ignore[arg-type]


def repair_for_session(repo_root: Path, **request: Unpack[RepairRequest]) -> tuple[bool, str]:
    """:func:`repair_contract` as the session's ``ContractRepairer``: agent failures are outcomes."""
    try:
        out = repair_contract(repo_root, **request)
    except ModelUnreachable as exc:
        return False, f"model unreachable: {exc}"
    except AgentError as exc:
        return False, f"agent failed: {exc}"
    return out.ok, out.reason
