"""The public API of fsm-runner, compatible with the predecessor's ``runner_env``.

    import runner_env
    sess = runner_env.setup("/path/to/repo")
    sess.rollout(llm="some-model", mode="smoke", require_samples=True, repair_iters=0)
    res = sess.evaluate(mode="smoke", repair_iters=0)
    print(res.ok, res.metrics)

Every target command runs inside a disposable Docker container.
"""

from runner.api.setup import setup
from runner.batch import Job, JobResult, run_many
from runner.errors import (
    AgentError,
    ContractError,
    PolicyViolation,
    RunnerError,
    SandboxError,
    TargetError,
)
from runner.session.machine import EnvSession
from runner.session.results import EvaluationResult, RolloutResult

__all__ = [
    "AgentError",
    "ContractError",
    "EnvSession",
    "EvaluationResult",
    "Job",
    "JobResult",
    "PolicyViolation",
    "RolloutResult",
    "RunnerError",
    "SandboxError",
    "TargetError",
    "run_many",
    "setup",
]
