"""The public flow in any order: rollout / evaluate / close with random stage outcomes.

A stateful property test (hypothesis) drives one session per example through the
predecessor's calls in random orders, with deploy, rollout and evaluation stages that
pass, fail (exit 3), time out, or (evaluation) write metrics and fail, chosen per call
through ``env_overrides``. It asserts what issue 16.1 asked for: every call on an open
session returns a result (a stage failure is a result, never ``InvalidTransition``), the
only exceptions are the documented ones (a closed session: ``RunnerError``; no model
where the rollout would need one: ``ValueError("missing_llm")``), a red evaluation keeps
its numbers, and no container of the session is left after close.

Lean on purpose: one cheap contract without bootstrap, 1 s stage timeouts, few examples.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import runner_env
from runner.errors import RunnerError
from runner.session.results import EvaluationResult, RolloutResult
from runner.session.states import State
from sandbox.engine import get_client
from tests.contract_repos import make_repo

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PIPELINE = """\
version: 1
deploy:
  setup_cmds: [bash .aider_fsm/stages/step.sh OUTCOME_DEPLOY]
  teardown_cmds: ["true"]
  timeout_seconds: 1
rollout:
  run_cmds: [bash .aider_fsm/stages/step.sh OUTCOME_ROLLOUT]
  timeout_seconds: 1
evaluation:
  run_cmds: [bash .aider_fsm/stages/step.sh OUTCOME_EVALUATION]
  metrics_path: .aider_fsm/metrics.json
  required_keys: [ok, score]
  timeout_seconds: 1
"""

# The outcome of a stage is named by the variable its first argument names.
STEP = """\
outcome="${!1:-ok}"
case "$outcome" in
  fail) echo "$1: failing on purpose" >&2; exit 3 ;;
  timeout) sleep 30 ;;
  red) n=1; printf '{"ok": false, "score": 0.%s5}\\n' "$((n + 1))" > .aider_fsm/metrics.json
       echo "$1: wrote metrics, then failed" >&2; exit 1 ;;
esac
if [ "$1" = OUTCOME_EVALUATION ]; then
  n=0; printf '{"ok": true, "score": %s}\\n' "$((n + 1))" > .aider_fsm/metrics.json
fi
"""
OUTCOMES = st.sampled_from(["ok", "fail", "timeout"])
MODELS = st.sampled_from([None, "m"])


class SessionFlow(RuleBasedStateMachine):
    """A model of what each call must return, checked against one real session."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="fsm-flow-"))
        repo = make_repo(
            self.tmp / "repo",
            pipeline=PIPELINE,
            bootstrap="",
            deploy_setup="",
            deploy_health="",
            deploy_teardown="",
            rollout="",
            evaluation="",
        )
        (repo / ".aider_fsm" / "stages").mkdir(parents=True, exist_ok=True)
        (repo / ".aider_fsm" / "stages" / "step.sh").write_text(STEP)
        self.sess = runner_env.setup(repo, cache="off")
        self.closed = False
        self.deployed = False
        self.rolled_out = False
        self.model_named = False

    def _env(self, **outcomes: str) -> dict[str, str]:
        return {f"OUTCOME_{k.upper()}": v for k, v in outcomes.items()}

    @rule(deploy=OUTCOMES, rollout=OUTCOMES, llm=MODELS)
    def rollout(self, deploy: str, rollout: str, llm: str | None) -> None:
        env = self._env(deploy=deploy, rollout=rollout)
        if self.closed:
            with pytest.raises(RunnerError, match="closed"):
                self.sess.rollout(llm, env_overrides=env, repair_iters=0)
            return
        res = self.sess.rollout(llm, env_overrides=env, repair_iters=0)
        self.model_named = True
        assert isinstance(res, RolloutResult)
        deploy_ok = self.deployed or deploy == "ok"
        assert res.ok == (deploy_ok and rollout == "ok"), res.reason
        if not res.ok:
            assert res.failed_stage == ("rollout" if deploy_ok else "deploy_setup")
            assert res.reason
            assert self.sess.state == State.FAILED
        self.deployed = self.rolled_out = res.ok

    @rule(
        deploy=OUTCOMES,
        rollout=OUTCOMES,
        evaluation=st.sampled_from(["ok", "fail", "timeout", "red"]),
        llm=MODELS,
    )
    def evaluate(self, deploy: str, rollout: str, evaluation: str, llm: str | None) -> None:
        env = self._env(deploy=deploy, rollout=rollout, evaluation=evaluation)
        if self.closed:
            with pytest.raises(RunnerError, match="closed"):
                self.sess.evaluate(llm, env_overrides=env, repair_iters=0)
            return
        if llm is None and not self.model_named and not self.rolled_out:
            with pytest.raises(ValueError, match="missing_llm"):
                self.sess.evaluate(llm, env_overrides=env, repair_iters=0)
            self.closed = True
            return
        res = self.sess.evaluate(llm, env_overrides=env, repair_iters=0)
        self.closed = True
        assert isinstance(res, EvaluationResult)
        deploy_ok = self.rolled_out or self.deployed or deploy == "ok"
        roll_ok = self.rolled_out or (deploy_ok and rollout == "ok")
        assert res.ok == (roll_ok and evaluation == "ok"), res.reason
        assert res.metrics_accepted == res.ok
        if res.ok:
            assert res.metrics == {"ok": True, "score": 1}
            return
        assert res.reason and res.failed_stage
        if not deploy_ok:
            assert res.failed_stage == "deploy_setup"
        elif not roll_ok:
            assert res.failed_stage == "rollout"
        elif evaluation == "red":  # a red run keeps the numbers it wrote (issue 16.3)
            assert res.failed_stage == "evaluation"
            assert res.metrics == {"ok": False, "score": 0.25}
        else:
            assert res.failed_stage == "evaluation"

    @rule()
    def close(self) -> None:
        self.sess.close()
        self.closed = True

    @invariant()
    def closed_is_closed(self) -> None:
        assert (self.sess.state == State.CLOSED) == self.closed

    def teardown(self) -> None:
        try:
            self.sess.close()
            left = get_client().containers.list(
                all=True,
                ignore_removed=True,
                filters={"label": f"fsm-runner.run-id={self.sess.run_id}"},
            )
            assert left == [], f"containers left after close: {[c.name for c in left]}"
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


SessionFlow.TestCase.settings = settings(
    max_examples=15,
    stateful_step_count=4,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestSessionFlow = SessionFlow.TestCase
