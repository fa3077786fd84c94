"""The evaluation phase: the evaluation stage, what must hold before its metrics count,
then the benchmark stage.

The checks are official commands (``runner/trust/hint_check.py``: required or reported,
decided from the runner's own record), the metrics contract (for evaluation and
benchmark) and the audit over what the runner saw run. Each failure is recorded in the
pass's verification, the result's reason and an error file in the pass dir; the
session (deploy and rollout first, then this) decides what a failure means for its state.

A red evaluation keeps its numbers (issue 16.3): whatever metrics object the stage
wrote is returned, with ``metrics_accepted`` false and the reason. A contract with a
``tests`` stage and no evaluation is scored by its tests (issue 16.6).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.contract import PipelineSpec
from runner.contract import validate_metrics as _validate_metrics
from runner.contract.outputs import read_json_object
from runner.errors import ContractError
from runner.runs.run_dir import RunDir
from runner.session.outputs_io import write_host_output
from runner.session.passes import Pass, pull_stage_files, sync_output
from runner.session.pipeline_stages import StageContext, run_pipeline_stage
from runner.session.results import EvaluationResult
from runner.session.stages import StageResult
from runner.session.test_counts import tests_metrics
from runner.trust.audit import audit_evaluation, scripts_named
from runner.trust.evidence import claimed_hints_errors, executed_commands, truthy
from runner.trust.hint_check import (
    HintsDecision,
    HintsOption,
    HintsVerdict,
    decide,
    official_commands_run,
)
from runner.trust.hints import hint_env, read_hints_exec

DEFAULT_METRICS_PATH = ".aider_fsm/metrics.json"

log = logging.getLogger("fsm_runner")


def found_hints(repo_root: Path) -> dict[str, str]:
    """The official commands of README/docs/CI, as the evaluation's env; a broken file there
    is not fatal (none found)."""
    try:
        return hint_env(repo_root, python_version="3.11")
    except (OSError, ValueError) as exc:
        log.warning("hint extraction failed: %s", exc)
        return {}


def decide_hints_mode(
    hints: dict[str, str],
    pipeline: PipelineSpec,
    *,
    option: HintsOption,
    extra_env: Mapping[str, str],
    agent_wrote: bool,
    run_dir: RunDir,
) -> HintsDecision:
    """Require or report official commands (issue 16.2); the evaluation env says which.

    The decision goes into ``hints`` (``AIDER_FSM_REQUIRE_HINTS``) and ``events.jsonl``.
    """
    found = json.loads(hints.get("AIDER_FSM_HINTS_JSON") or "[]")
    ev = pipeline.stage("evaluation")
    decision = decide(
        option,
        found,
        agent_wrote=agent_wrote,
        contract_asks=truthy((ev.env if ev else {}).get("AIDER_FSM_REQUIRE_HINTS"))
        or truthy(extra_env.get("AIDER_FSM_REQUIRE_HINTS")),
    )
    if hints:
        hints["AIDER_FSM_REQUIRE_HINTS"] = "1" if decision.mode == "require" else "0"
    run_dir.event("hints_mode", mode=decision.mode, why=decision.why, found=found)
    return decision


def evaluate_stages(
    ctx: StageContext,
    p: Pass,
    mode: str,
    overrides: Mapping[str, str],
    result: EvaluationResult,
    *,
    tests: StageResult | None = None,
) -> bool:
    """Evaluation, its checks, then the benchmark; False (recorded) at the first failure.

    ``tests``: this session's tests stage, which scores a contract without an evaluation.
    """
    ev = ctx.pipeline.evaluation
    metrics_rel = ev.metrics_path if ev and ev.metrics_path else DEFAULT_METRICS_PATH
    required = list(ev.required_keys) if ev and ev.required_keys else []
    if ctx.options.require_metrics and "ok" not in required:
        required.append("ok")
    if ctx.pipeline.stage("evaluation") is None:
        if tests is not None:
            return scored_by_tests(ctx, p, tests, result)
        if ctx.options.require_metrics:
            result.reason = (
                "pipeline.yml has no evaluation and no tests commands, so nothing can be scored"
            )
            p.verify.fail("evaluation")
            return False
        return True
    res = run_pipeline_stage(ctx, "evaluation", p, mode, overrides, clear=(metrics_rel,))
    if res is not None and not res.ok:
        keep_unaccepted(ctx, p, metrics_rel, result)
        result.hints = hints_verdict(ctx, p, ctx.stage_envs.get("evaluation", {})).as_dict()
        return False
    if not hints_hold(ctx, p, ctx.stage_envs.get("evaluation", {}), result):
        keep_unaccepted(ctx, p, metrics_rel, result)
        return False
    metrics = collect_metrics(ctx, p, metrics_rel, required, "evaluation", result)
    if metrics is None:
        return False
    if not audit_holds(ctx, p, metrics, metrics_rel, result):
        result.metrics = metrics
        return False
    result.metrics = metrics
    p.verify.metrics = metrics
    bench = ctx.pipeline.benchmark
    if bench is not None and bench.commands:
        bench_rel = bench.metrics_path
        bres = run_pipeline_stage(
            ctx, "benchmark", p, mode, overrides, clear=(bench_rel,) if bench_rel else ()
        )
        if bres is not None and not bres.ok:
            return False
        if (
            bench_rel
            and collect_metrics(
                ctx, p, bench_rel, list(bench.required_keys or []), "benchmark", result
            )
            is None
        ):
            return False
    return True


def audit_holds(
    ctx: StageContext,
    p: Pass,
    metrics: Mapping[str, Any],
    metrics_rel: str,
    result: EvaluationResult,
) -> bool:
    """The evaluation audit (runner/audit.py) over what the runner saw run."""
    audit = ctx.options.audit
    if audit == "off" or not ctx.options.require_metrics:
        return True
    pull_stage_files(ctx.sandbox, ctx.run_dir, p)
    stage = p.verify.evaluation
    findings = audit_evaluation(
        metrics,
        metrics_rel=metrics_rel,
        executed=executed_commands(_commands(stage), p.host_dir / "stage_files"),
        scripts=scripts_named([r.cmd for r in stage.results] if stage else [], ctx.repo_root),
    )
    if not findings:
        return True
    text = "; ".join(findings)
    ctx.run_dir.write_text(f"env_api/{p.name}/evaluation_audit_error.txt", text)
    ctx.run_dir.event("audit", findings=findings, mode=audit)
    if audit == "warn-only":
        return True
    p.verify.metrics_errors.extend(findings)
    p.verify.fail("evaluation")
    result.reason = text
    return False


def hints_verdict(ctx: StageContext, p: Pass, env: Mapping[str, str]) -> HintsVerdict:
    """Which official commands the runner saw run in this evaluation, and what is required."""
    pull_stage_files(ctx.sandbox, ctx.run_dir, p)
    files = p.host_dir / "stage_files"
    executed = executed_commands(_commands(p.verify.evaluation), files)
    decision = ctx.hints_decision
    required = truthy(env.get("AIDER_FSM_REQUIRE_HINTS"))
    mode, why = decision.mode, decision.why
    if required and mode != "require":
        mode, why = "require", "AIDER_FSM_REQUIRE_HINTS is set for the evaluation"
    elif not required and mode == "require" and decision.found:
        mode, why = "report", "AIDER_FSM_REQUIRE_HINTS=0 is set for the evaluation"
    found = list(decision.found)
    helper = _helper_log(files) if _helper_ran(executed) else []
    return HintsVerdict(
        mode=mode, why=why, found=found, ran=official_commands_run(found, [*executed, *helper])
    )


def hints_hold(
    ctx: StageContext, p: Pass, env: Mapping[str, str], result: EvaluationResult
) -> bool:
    """Official commands: a stage's own claims checked, the requirement decided by the runner.

    The runner writes ``hints_used.json`` (host ``.aider_fsm/`` and the pass dir) from its
    record when the stage did not write one; a stage's own file is checked against the
    same record and a claim nothing shows was run fails the evaluation, in every mode.
    """
    verdict = hints_verdict(ctx, p, env)
    used, _ = sync_output(ctx.sandbox, ctx.run_dir, ctx.repo_root, ".aider_fsm/hints_used.json", p)
    sync_output(ctx.sandbox, ctx.run_dir, ctx.repo_root, ".aider_fsm/hints_run.json", p)
    files = p.host_dir / "stage_files"
    if used is not None:
        verdict.errors = claimed_hints_errors(
            used, executed_commands(_commands(p.verify.evaluation), files), stage_files=files
        )
    result.hints = verdict.as_dict()
    ctx.run_dir.write_json(f"env_api/{p.name}/hints_check.json", verdict.as_dict())
    if verdict.found or verdict.mode == "require":
        ctx.run_dir.event("hints", **verdict.as_dict())
        if used is None:
            text = json.dumps(verdict.hints_used(), indent=2) + "\n"
            ctx.run_dir.write_text(f"env_api/{p.name}/hints_used.json", text)
            write_host_output(ctx.repo_root, ".aider_fsm/hints_used.json", text.encode())
    if verdict.ok:
        return True
    result.reason = verdict.failure()
    p.verify.metrics_errors.extend(verdict.errors or [result.reason])
    p.verify.fail("evaluation")
    ctx.run_dir.write_text(f"env_api/{p.name}/hints_requirement_error.txt", result.reason)
    return False


def _helper_ran(executed: list[str]) -> bool:
    return any(re.search(r"generic_evaluation|hints_exec", line) for line in executed)


def _helper_log(files: Path) -> list[str]:
    log = files / "hints_exec.jsonl"
    return read_hints_exec(log) if log.is_file() and not log.is_symlink() else []


def keep_unaccepted(ctx: StageContext, p: Pass, rel: str, result: EvaluationResult) -> None:
    """A red evaluation keeps the metrics its stage wrote, not accepted (issue 16.3)."""
    mirror, host = sync_output(ctx.sandbox, ctx.run_dir, ctx.repo_root, rel, p)
    result.metrics_path = host or mirror
    p.verify.metrics_path = result.metrics_path
    if mirror is None:
        return
    try:
        result.metrics = read_json_object(mirror, missing="missing", not_object="not_object")
    except (ContractError, RecursionError):
        return  # unreadable or not an object: nothing to keep; the reason says why it failed
    p.verify.metrics = result.metrics


def scored_by_tests(
    ctx: StageContext, p: Pass, tests: StageResult, result: EvaluationResult
) -> bool:
    """A contract without an evaluation stage is scored by its tests stage (issue 16.6)."""
    metrics = tests_metrics(tests)
    result.metrics = metrics
    p.verify.metrics = metrics
    ctx.run_dir.write_json(f"env_api/{p.name}/tests_metrics.json", metrics)
    if tests.ok:
        return True
    result.reason = tests.reason
    p.verify.fail("tests")
    return False


def collect_metrics(
    ctx: StageContext,
    p: Pass,
    rel: str,
    required: list[str],
    stage: str,
    result: EvaluationResult,
) -> dict[str, Any] | None:
    """Bring a stage's metrics file back and validate it; None (recorded) when it fails."""
    mirror, host = sync_output(ctx.sandbox, ctx.run_dir, ctx.repo_root, rel, p)
    if stage == "evaluation":
        result.metrics_path = host or mirror
        p.verify.metrics_path = result.metrics_path
    try:
        if mirror is None:
            raise ContractError(
                f"metrics_file_missing: {rel} was not written by this run's {stage} stage",
                file=rel,
            )
        return _validate_metrics(mirror, required)
    except ContractError as exc:
        if stage == "evaluation":  # kept, not accepted: the reason says why (issue 16.3)
            keep_unaccepted(ctx, p, rel, result)
        p.verify.metrics_errors.append(f"{stage}.{exc.message}")
        p.verify.fail("metrics")
        result.reason = str(exc)
        ctx.run_dir.write_text(f"env_api/{p.name}/metrics_contract_error.txt", str(exc))
        return None


def _commands(stage: StageResult | None) -> list[str]:
    """The commands the runner executed in ``stage`` (its own record, not the stage's)."""
    return [r.cmd for r in stage.results] if stage else []
