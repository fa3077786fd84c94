"""``EnvSession.evaluate()`` and ``run_stage()``: the calls that end with the session closed.

``evaluate()`` deploys and rolls out first when this session has not, then runs the
evaluation phase (``evaluation_phase.py``), with repairs between tries; ``run_stage()``
runs one stage after bootstrap. Either way the deploy is torn down, the sandbox closed
and ``report.md`` written, even when a step before raised.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from runner.contract import PipelineSpec
from runner.contract.paths import ROLLOUT_JSON
from runner.runs.report import write_report
from runner.runs.run_dir import RunDir
from runner.session.deploy_flow import bootstrap_once, deploy, final_teardown
from runner.session.evaluation_phase import evaluate_stages
from runner.session.passes import Pass, export_env_api, failure_reason
from runner.session.repair_flow import repair_for_retry
from runner.session.results import EvaluationResult
from runner.session.states import State

if TYPE_CHECKING:
    from runner.session.machine import EnvSession


_PIPELINE_STAGES = (
    "auth", "tests", "deploy_setup", "deploy_health", "rollout", "evaluation", "benchmark",
    "deploy_teardown",
)  # fmt: skip


def require_stage(pipeline: PipelineSpec, name: str) -> None:
    """Raises:
    ValueError: the contract has no stage ``name`` (the message lists the ones it has).
    """
    if pipeline.stage(name) is None:  # type: ignore[arg-type]
        present = [n for n in _PIPELINE_STAGES if pipeline.stage(n) is not None]  # type: ignore[arg-type]
        raise ValueError(f"stage {name!r} is not in this contract; it has: {', '.join(present)}")


def needs_model(sess: EnvSession) -> bool:
    """A model is needed only by a stage that calls one: the rollout this call would run.

    The predecessor raised ``missing_llm`` for every evaluate() without a model; a
    tests-only or evaluation-only contract has no stage that could use one (issue 16.6).
    """
    return (
        sess.llm is None
        and not sess._model_chosen
        and not sess._rolled_out
        and sess.pipeline.stage("rollout") is not None
    )


def evaluate_with_repairs(
    sess: EnvSession,
    mode: str,
    overrides: Mapping[str, str],
    artifacts_dir: str | Path | None,
    repair_iters: int,
) -> EvaluationResult:
    """Tries until one succeeds or no repair is left, then teardown, close and report."""
    budget = [max(0, repair_iters)]
    p: Pass | None = None
    result = EvaluationResult(ok=False, artifacts_dir=sess.run_dir.path / "env_api")
    # Cleanup runs in order and each step even when an earlier one raised (issue 15
    # item 14: a copy-out that raised used to skip teardown and close, leaving the
    # container running and the run dir without its final events).
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(write_report_quietly, sess.run_dir)
        cleanup.callback(sess.close)
        cleanup.callback(lambda: final_teardown(sess, success=result.ok))

        def final_pull() -> None:  # the last pass, whichever it is by then
            if p is not None:
                sess._pull_stage_files(p)

        cleanup.callback(final_pull)
        while True:
            p = sess._new_pass("evaluation")
            result = evaluate_once(sess, p, mode, overrides)
            if result.ok or not repair_for_retry(sess, p.verify, result.reason, overrides, budget):
                break
            sess._start(None, overrides)
    if artifacts_dir is not None:
        result.artifacts_dir = export_env_api(sess.run_dir, artifacts_dir)
    return result


def evaluate_once(
    sess: EnvSession, p: Pass, mode: str, overrides: Mapping[str, str]
) -> EvaluationResult:
    """One try, recorded between ``evaluation_start`` and ``evaluation_end``."""
    result = EvaluationResult(
        ok=False, artifacts_dir=sess.run_dir.path / "env_api", verify=p.verify
    )
    sess.run_dir.event("evaluation_start", mode=mode, fast_path=sess._rolled_out)
    ok = _evaluate_pass(sess, p, mode, overrides, result)
    result.ok = result.metrics_accepted = ok
    if ok:
        sess._transition(State.EVALUATED)
    else:
        result.failed_stage = p.verify.failed_stage
        if not result.reason:
            result.reason = failure_reason(p.verify)
        sess._transition(State.FAILED, stage=result.failed_stage)
    sess.run_dir.event("evaluation_end", **result.outcome())
    return result


def _evaluate_pass(
    sess: EnvSession, p: Pass, mode: str, overrides: Mapping[str, str], result: EvaluationResult
) -> bool:
    """Deploy and roll out unless this session already did, then the evaluation phase."""
    if not sess._rolled_out:
        if not sess._deployed and not deploy(sess, p, mode, overrides):
            return False
        roll = sess._run("rollout", p, mode, overrides)
        sess._sync_output(ROLLOUT_JSON, p)
        if roll is not None and not roll.ok:
            return False
        if roll is not None:
            sess._transition(State.ROLLED_OUT)
    return evaluate_stages(sess._context(), p, mode, overrides, result, tests=sess._tests_stage)


def run_single_stage(
    sess: EnvSession, name: str, mode: str, overrides: Mapping[str, str]
) -> EvaluationResult:
    """Bootstrap, then only the stage ``name`` (with evaluation's checks), then close."""
    p = sess._new_pass(name)
    result = EvaluationResult(
        ok=False, artifacts_dir=sess.run_dir.path / "env_api", verify=p.verify
    )
    sess.run_dir.event("stage_run_start", stage=name, mode=mode)
    try:
        boot = bootstrap_once(sess, mode)
        if boot is not None and not boot.ok:
            setattr(p.verify, boot.name, boot)
            p.verify.fail(boot.name)
        elif name == "evaluation":
            result.ok = evaluate_stages(sess._context(), p, mode, overrides, result)
        else:
            res = sess._run(name, p, mode, overrides)
            result.ok = res is not None and res.ok
        result.metrics_accepted = result.ok and result.metrics is not None
        if not result.ok:
            result.failed_stage = p.verify.failed_stage or name
            result.reason = result.reason or failure_reason(p.verify)
        sess.run_dir.event("stage_run_end", stage=name, **result.outcome())
    finally:
        sess._pull_stage_files(p)
        sess.close()
        write_report_quietly(sess.run_dir)
    return result


def write_report_quietly(run_dir: RunDir) -> None:
    """``report.md``, unless it cannot be written: a report is a convenience."""
    with contextlib.suppress(OSError, ValueError):
        write_report(run_dir.path)
