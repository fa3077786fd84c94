"""The public API of fsm-runner, compatible with the predecessor's ``runner_env``.

    import runner_env
    sess = runner_env.setup("/path/to/repo")
    sess.rollout(llm="some-model", mode="smoke", require_samples=True, repair_iters=0)
    res = sess.evaluate(mode="smoke", repair_iters=0)
    print(res.ok, res.metrics)

Every target command runs inside a disposable Docker container.

Only the error types are imported with this module; every other name is imported on
first use (PEP 562 ``__getattr__``), so ``import runner_env`` and ``fsm-runner --help``
do not pay for the contract models, the docker SDK or the batch runner (issue 17).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from runner.errors import (
    AgentError,
    ContractError,
    PolicyViolation,
    RunnerError,
    SandboxError,
    TargetError,
)

if TYPE_CHECKING:
    from runner.api.setup import setup
    from runner.batch import Job, JobResult, run_many
    from runner.session.machine import EnvSession
    from runner.session.results import EvaluationResult, RolloutResult

_LAZY = {
    "setup": "runner.api.setup",
    "EnvSession": "runner.session.machine",
    "EvaluationResult": "runner.session.results",
    "RolloutResult": "runner.session.results",
    "Job": "runner.batch",
    "JobResult": "runner.batch",
    "run_many": "runner.batch",
}
"""Public name -> the module it comes from, imported when the name is first used."""

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'runner_env' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
