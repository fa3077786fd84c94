"""The environment every stage sees inside the sandbox: the predecessor's AIDER_* contract.

Paths are as seen inside the sandbox (``/workspace``...). Secrets (the model API key)
reach only the stages that call the model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from runner.runs.determinism import determinism_env
from runner.runs.limits import positive_int_env

STRICT_DEFAULTS = {
    "CI": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PYTHONUNBUFFERED": "1",
}
"""Unattended defaults the predecessor set for every command."""

MODEL_STAGES = frozenset({"deploy_setup", "deploy_health", "rollout", "evaluation", "benchmark"})
"""Stages that may need the model endpoint and its key."""


def base_stage_env(
    *,
    stage: str,
    workspace: str,
    run_id: str,
    artifacts_dir: str,
    mode: str,
    bootstrap_env: Mapping[str, str],
    llm_env: Mapping[str, str],
    seed: int | None = None,
) -> dict[str, str]:
    """Everything a stage gets before the pipeline's own ``env`` and the caller's overrides."""
    env = {**STRICT_DEFAULTS, **determinism_env(run_id, seed)}
    env.update(
        {
            "AIDER_FSM_STAGE": stage,
            "AIDER_FSM_REPO_ROOT": workspace,
            "AIDER_FSM_RUN_ID": run_id,
            "AIDER_FSM_ARTIFACTS_DIR": artifacts_dir,
            "AIDER_FSM_PYTHON": "python3",
            "AIDER_EVAL_MODE": mode,
            "AIDER_RUNTIME_ENV_PATH": f"{workspace}/.aider_fsm/runtime_env.json",
        }
    )
    env.update(bootstrap_env)
    if stage in MODEL_STAGES:
        env.update(llm_env)
    return env


def limit_override(name: str, *envs: Mapping[str, str]) -> int | None:
    """``AIDER_FSM_MAX_CMD_SECONDS``-style cap: the smallest of the process env and ``envs``.

    The smallest, not the first: a cap set by the caller and one set by the contract
    both hold (issue 15 item 5). Values that are not positive whole numbers are ignored.
    """
    found = [
        int(raw)
        for env in (os.environ, *envs)
        if (raw := env.get(name, "").strip()).isdigit() and int(raw) > 0
    ]
    return min(found, default=None)


DEFAULT_CMD_SECONDS = 3600
"""Per-command timeout when nothing sets one (issue 15 item 5: a command without a
timeout could run forever). ``FSM_RUNNER_DEFAULT_CMD_SECONDS`` changes it; a stage's
``timeout_seconds`` (up to a week) sets its own; caps only lower either."""
DEFAULT_CMD_SECONDS_ENV = "FSM_RUNNER_DEFAULT_CMD_SECONDS"


def default_cmd_seconds() -> float:
    """The runner's per-command timeout for commands that have none.

    Raises:
        ValueError: ``FSM_RUNNER_DEFAULT_CMD_SECONDS`` is set but not a positive whole
            number of seconds (a bad value never means "no timeout").
    """
    return float(positive_int_env(DEFAULT_CMD_SECONDS_ENV, DEFAULT_CMD_SECONDS, ValueError))
