"""Repair orchestration: what the session hands the agent when a stage fails.

The agent (``runner/agent``) edits only the contract, in a sandbox of its own; this
module builds the evidence it gets from the runner's own records of the failed stage,
turns agent infrastructure errors into "no repair" outcomes the session records, and
loads the repaired contract back.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from runner.contract import (
    ActionsSpec,
    BootstrapSpec,
    PipelineSpec,
    load_actions,
    load_bootstrap,
    load_pipeline,
)
from runner.errors import ContractError
from runner.runs.run_dir import RunDir
from runner.session.options import ContractRepairer, Progress, SessionOptions
from runner.session.results import VerificationResult
from runner.session.stages import StageResult

TAIL_CHARS = 4000
Contract = tuple[PipelineSpec, BootstrapSpec | None, ActionsSpec | None]
"""pipeline.yml, .aider_fsm/bootstrap.yml and .aider_fsm/actions.yml, as loaded."""


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


def repair_within_budget(
    repo_root: Path,
    *,
    verify: VerificationResult,
    reason: str,
    model: str,
    repairer: ContractRepairer,
    options: SessionOptions,
    env: Mapping[str, str],
    budget: list[int],
    attempts: Iterator[int],
    run_dir: RunDir,
    say: Progress,
) -> Contract | None:
    """Repair attempts while ``budget[0]`` lasts: the first repaired contract that loads.

    ``attempts`` numbers the session's repairs across calls (and ``budget`` is the caller's
    for one ``rollout()``/``evaluate()``): each attempt takes one of both.
    """
    while budget[0] > 0:
        budget[0] -= 1
        attempt = next(attempts)
        say(f"repair {attempt}: asking the agent to fix {verify.failed_stage}")
        ok, why = repairer(
            repo_root,
            failed_stage=verify.failed_stage or "unknown",
            reason=reason,
            evidence=evidence_of(verify, reason),
            model=model,
            run_dir=run_dir,
            attempt=attempt,
            env=dict(env),
            pipeline_rel=options.pipeline_rel,
            image=options.image,
        )
        run_dir.event("repair_end", attempt=attempt, ok=ok, reason=why)
        if ok:
            contract = reload_contract(repo_root, options.pipeline_rel, run_dir)
            if contract is not None:
                return contract
    return None


def reload_contract(repo_root: Path, pipeline_rel: str, run_dir: RunDir) -> Contract | None:
    """The repaired contract, or None (``repair_rejected`` recorded) when it does not load."""
    try:
        pipeline = load_pipeline(repo_root / pipeline_rel)
        bootstrap = load_bootstrap(repo_root / ".aider_fsm" / "bootstrap.yml")
        actions = load_actions(repo_root / ".aider_fsm" / "actions.yml")
    except ContractError as exc:
        run_dir.event("repair_rejected", reason=str(exc))
        return None
    return pipeline, bootstrap, actions
