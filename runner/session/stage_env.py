"""The environment every stage sees inside the sandbox: the predecessor's AIDER_* contract.

Paths are as seen inside the sandbox (``/workspace``...). Secrets (the model API key)
reach only the stages that call the model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from runner.runs.determinism import determinism_env

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
    """``AIDER_FSM_MAX_CMD_SECONDS``-style override: process env first, then stage envs."""
    for env in (os.environ, *envs):
        raw = env.get(name, "").strip()
        if raw.isdigit() and int(raw) > 0:
            return int(raw)
    return None
