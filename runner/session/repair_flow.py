"""Between two tries: the sandbox dropped, the agent's repair, the repaired contract in.

The session's side of a repair (``repairs.py`` is what the agent is handed): the
``REPAIRING`` transition, a fresh sandbox for the next try, and the contract, its
policy and its official-commands mode swapped for the repaired ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from runner.session.deploy_flow import drop_sandbox
from runner.session.pipeline_stages import policy_for
from runner.session.repairs import repair_within_budget
from runner.session.results import VerificationResult
from runner.session.states import State

if TYPE_CHECKING:
    from runner.session.machine import EnvSession


def repair_for_retry(
    sess: EnvSession,
    verify: VerificationResult,
    reason: str,
    overrides: Mapping[str, str],
    budget: list[int],
) -> bool:
    """Let the agent repair the contract; on success the next attempt starts afresh."""
    model, repairer = sess.options.repair_model, sess.options.repairer
    if budget[0] <= 0:
        return False
    if not model or repairer is None:
        sess.run_dir.event("repair_skipped", reason="no opencode_model given to setup()")
        return False
    sess._transition(State.REPAIRING, stage=verify.failed_stage)
    drop_sandbox(sess)
    contract = repair_within_budget(
        sess.repo.path,
        verify=verify,
        reason=reason,
        model=model,
        repairer=repairer,
        options=sess.options,
        env=overrides,
        budget=budget,
        attempts=sess._repairs,
        run_dir=sess.run_dir,
        say=sess._say,
    )
    if contract is None:
        sess._transition(State.FAILED, stage=verify.failed_stage)
        return False
    sess.pipeline, sess.bootstrap_spec, sess.actions_spec = contract
    sess._policy = policy_for(sess.pipeline, sess.options.unattended)
    sess._repaired = True  # the agent's contract must show an official command ran
    sess.hints_decision = sess._decide_hints()
    sess._transition(State.NEW)
    return True
