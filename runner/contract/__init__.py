"""The target repository's contract: pipeline.yml, .aider_fsm/*.yml and stage outputs.

Everything here is pure parsing and checking (no Docker, no processes). Every failure
is a ``runner.errors.ContractError`` naming file, line and field where known.
"""

from runner.contract.bootstrap import (
    Action,
    ActionsSpec,
    BootstrapSpec,
    absolutize_env_paths,
    expand_env,
    load_actions,
    load_bootstrap,
)
from runner.contract.outputs import (
    RolloutManifest,
    RuntimeEnv,
    Sample,
    SamplesReport,
    load_runtime_env,
    validate_hints_run,
    validate_hints_used,
    validate_metrics,
    validate_rollout,
    validate_rollout_manifest,
    validate_samples_jsonl,
)
from runner.contract.pipeline import (
    STAGE_NAMES,
    NetworkPolicy,
    PipelineSpec,
    StageName,
    StageSpec,
    load_pipeline,
    pipeline_json_schema,
)

__all__ = [
    "STAGE_NAMES",
    "Action",
    "ActionsSpec",
    "BootstrapSpec",
    "NetworkPolicy",
    "PipelineSpec",
    "RolloutManifest",
    "RuntimeEnv",
    "Sample",
    "SamplesReport",
    "StageName",
    "StageSpec",
    "absolutize_env_paths",
    "expand_env",
    "load_actions",
    "load_bootstrap",
    "load_pipeline",
    "load_runtime_env",
    "pipeline_json_schema",
    "validate_hints_run",
    "validate_hints_used",
    "validate_metrics",
    "validate_rollout",
    "validate_rollout_manifest",
    "validate_samples_jsonl",
]
