"""``EnvSession.rollout()``: deploy, the rollout stage, its samples, repairs between tries.

A failed try is a result (``rollout_end`` with where and why); with a repair budget the
agent fixes the contract and the next try starts in a fresh sandbox.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.contract.paths import ROLLOUT_JSON
from runner.session.deploy_flow import deploy, teardown
from runner.session.passes import Pass, export_env_api, failure_reason
from runner.session.repair_flow import repair_for_retry
from runner.session.results import RolloutResult
from runner.session.rollout_checks import samples_hold
from runner.session.states import State
from runner.session.test_counts import tests_metrics

if TYPE_CHECKING:
    from runner.session.machine import EnvSession


def rollout_with_repairs(
    sess: EnvSession,
    mode: str,
    require_samples: bool,
    overrides: Mapping[str, str],
    artifacts_dir: str | Path | None,
    repair_iters: int,
) -> RolloutResult:
    """Tries until one succeeds or no repair is left; the last try's result."""
    budget = [max(0, repair_iters)]
    while True:
        result = rollout_once(sess, mode, require_samples, overrides, repair_iters)
        if result.ok or not repair_for_retry(sess, result.verify, result.reason, overrides, budget):
            if artifacts_dir is not None:
                result.artifacts_dir = export_env_api(sess.run_dir, artifacts_dir)
            return result
        sess._start(None, overrides)


def rollout_once(
    sess: EnvSession,
    mode: str,
    require_samples: bool,
    overrides: Mapping[str, str],
    repair_iters: int,
) -> RolloutResult:
    """One try: deploy unless this sandbox is deployed, then rollout and its checks."""
    p = sess._new_pass("rollout")
    sess.run_dir.event(
        "rollout_start",
        mode=mode,
        require_samples=require_samples,
        llm_kind=sess.llm.kind if sess.llm else None,
        repair_iters=repair_iters,
    )
    result = RolloutResult(ok=False, artifacts_dir=sess.run_dir.path / "env_api", verify=p.verify)
    if not sess._deployed and not deploy(sess, p, mode, overrides):
        return fail_rollout(sess, result, p)
    res = sess._run("rollout", p, mode, overrides)
    mirror, host = sess._sync_output(ROLLOUT_JSON, p)
    result.rollout_path = host or mirror
    if res is not None and not res.ok:
        return fail_rollout(sess, result, p)
    if require_samples and not samples_hold(
        sess._require_sandbox(), sess.run_dir, p, mirror, result
    ):
        return fail_rollout(sess, result, p, keep_reason=True)
    sess._pull_stage_files(p)
    sess._rolled_out = True
    sess._transition(State.ROLLED_OUT)
    result.ok = True
    sess.run_dir.event("rollout_end", ok=True, samples=result.samples)
    return result


def fail_rollout(
    sess: EnvSession, result: RolloutResult, p: Pass, *, keep_reason: bool = False
) -> RolloutResult:
    """Record where and why the try failed, tear the deploy down, and enter ``FAILED``."""
    result.ok = False
    result.failed_stage = p.verify.failed_stage
    if not keep_reason:
        result.reason = failure_reason(p.verify)
    sess._pull_stage_files(p)
    if sess._deployed:
        teardown(sess, p, success=False)
    counts: dict[str, Any] = {}
    scored_by_tests = sess.pipeline.stage("evaluation") is None
    if result.failed_stage == "tests" and sess._tests_stage is not None and scored_by_tests:
        counts = {"metrics": tests_metrics(sess._tests_stage), "metrics_accepted": False}
    sess.run_dir.event(
        "rollout_end",
        ok=False,
        failed_stage=result.failed_stage,
        reason=result.reason,
        **counts,
    )
    sess._transition(State.FAILED, stage=result.failed_stage)
    return result
