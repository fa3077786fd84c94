"""The evaluation phase: the evaluation stage, what must hold before its metrics count,
then the benchmark stage.

The checks are hints evidence (when the evaluation env requires hints), the metrics
contract (for evaluation and benchmark) and the audit over what the runner saw run.
Each failure is recorded in the pass's verification, the result's reason and an error
file in the pass dir; the session (deploy and rollout first, then this) decides what a
failure means for its state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner.contract import validate_metrics as _validate_metrics
from runner.errors import ContractError
from runner.session.passes import Pass, pull_stage_files, sync_output
from runner.session.pipeline_stages import StageContext, run_pipeline_stage
from runner.session.results import EvaluationResult
from runner.session.stages import StageResult
from runner.trust.audit import audit_evaluation, scripts_named
from runner.trust.evidence import executed_commands, hints_errors, truthy

DEFAULT_METRICS_PATH = ".aider_fsm/metrics.json"


def evaluate_stages(
    ctx: StageContext,
    p: Pass,
    mode: str,
    overrides: Mapping[str, str],
    result: EvaluationResult,
) -> bool:
    """Evaluation, its checks, then the benchmark; False (recorded) at the first failure."""
    ev = ctx.pipeline.evaluation
    metrics_rel = ev.metrics_path if ev and ev.metrics_path else DEFAULT_METRICS_PATH
    required = list(ev.required_keys) if ev and ev.required_keys else []
    if ctx.options.require_metrics and "ok" not in required:
        required.append("ok")
    if ctx.pipeline.stage("evaluation") is None:
        if ctx.options.require_metrics:
            result.reason = "pipeline.yml has no evaluation commands, so no metrics can be produced"
            p.verify.fail("evaluation")
            return False
        return True
    res = run_pipeline_stage(ctx, "evaluation", p, mode, overrides, clear=(metrics_rel,))
    if res is not None and not res.ok:
        return False
    if not hints_hold(ctx, p, ctx.stage_envs.get("evaluation", {}), result):
        return False
    metrics = collect_metrics(ctx, p, metrics_rel, required, "evaluation", result)
    if metrics is None:
        return False
    if not audit_holds(ctx, p, metrics, metrics_rel, result):
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


def hints_hold(
    ctx: StageContext, p: Pass, env: Mapping[str, str], result: EvaluationResult
) -> bool:
    """When the evaluation env requires hints, check hints_*.json against our evidence."""
    if not truthy(env.get("AIDER_FSM_REQUIRE_HINTS")):
        return True
    used, _ = sync_output(ctx.sandbox, ctx.run_dir, ctx.repo_root, ".aider_fsm/hints_used.json", p)
    ran, _ = sync_output(ctx.sandbox, ctx.run_dir, ctx.repo_root, ".aider_fsm/hints_run.json", p)
    pull_stage_files(ctx.sandbox, ctx.run_dir, p)
    files = p.host_dir / "stage_files"
    absent = p.host_dir / "outputs" / ".aider_fsm"
    errors = hints_errors(
        hints_used_path=used or absent / "hints_used.json",
        hints_run_path=ran or absent / "hints_run.json",
        env=env,
        executed=executed_commands(_commands(p.verify.evaluation), files),
        stage_files=files,
    )
    if not errors:
        return True
    p.verify.metrics_errors.extend(errors)
    p.verify.fail("evaluation")
    result.reason = "; ".join(errors)
    ctx.run_dir.write_text(f"env_api/{p.name}/hints_requirement_error.txt", result.reason)
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
        p.verify.metrics_errors.append(f"{stage}.{exc.message}")
        p.verify.fail("metrics")
        result.reason = str(exc)
        ctx.run_dir.write_text(f"env_api/{p.name}/metrics_contract_error.txt", str(exc))
        return None


def _commands(stage: StageResult | None) -> list[str]:
    """The commands the runner executed in ``stage`` (its own record, not the stage's)."""
    return [r.cmd for r in stage.results] if stage else []
