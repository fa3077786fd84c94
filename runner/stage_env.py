"""The environment every stage sees inside the sandbox: the predecessor's AIDER_* contract.

Paths are as seen inside the sandbox (``/workspace``...). Secrets (the model API key)
reach only the stages that call the model.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

STRICT_DEFAULTS = {
    "CI": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PYTHONUNBUFFERED": "1",
}
"""Unattended defaults the predecessor set for every command."""

SEED_VAR = "AIDER_FSM_SEED"
DETERMINISM_DEFAULTS = {
    "PYTHONHASHSEED": "0",
    "TZ": "UTC",
    "LC_ALL": "C.UTF-8",
    # 1980-01-01: the earliest time a zip (and so a wheel) can hold.
    "SOURCE_DATE_EPOCH": "315532800",
}
"""Exported to every stage so two runs of the same contract can agree (docs/reproducibility.md).

A contract's own ``env`` (and the caller's overrides) still win over these."""


def derive_seed(run_id: str) -> int:
    """The run's ``AIDER_FSM_SEED``: a stable function of the run id, in [0, 2**31)."""
    return int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:4], "big") % 2**31


def determinism_env(run_id: str, seed: int | None = None) -> dict[str, str]:
    """:data:`DETERMINISM_DEFAULTS` plus the run's seed (``setup(seed=...)`` pins it)."""
    return {**DETERMINISM_DEFAULTS, SEED_VAR: str(derive_seed(run_id) if seed is None else seed)}


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
