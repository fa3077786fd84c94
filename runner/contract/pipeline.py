"""``pipeline.yml`` v1: typed, validated, located.

The schema is the predecessor's (notes/predecessor.md section 2) with three deliberate
differences, each one turning a silent surprise into an error at load time:

- unknown keys are rejected (the predecessor ignored them, so ``evalution:`` simply
  never ran); the error names the key, the allowed ones and the closest match;
- ``security.allowlist``/``denylist`` entries must be valid regexes (the predecessor
  quietly fell back to a literal match);
- ``workdir`` must be relative and stay inside the repository (the predecessor found
  out only when the stage ran).

Smaller tightenings: ``version`` must be 1 or absent (``0``/``false`` were read as 1),
an empty singular command next to a plural list is an error (it used to be unread),
booleans are not numbers, and env values cannot be lists or mappings.

New optional fields: a per-stage ``network`` policy and container limits under
``security``. Everything else keeps the predecessor's leniency: singular or plural
command keys (the plural wins when both are present, even if it is an empty list),
env values stringified (null -> "", true -> "True"), a timeout of ``0`` meaning "not
set", regexes stripped, lowercase-insensitive ``mode``/``teardown_policy``, and the
legacy ``artifacts``/``tooling`` sections (``tooling.ensure_kind_cluster: true``
included) accepted with no effect: the predecessor never acted on them, so contracts
that set them never depended on them, and rejecting them would break working repos.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator

from runner.contract.fields import ContractModel, OptionalText, version_one
from runner.contract.security import SecuritySpec
from runner.contract.stage_sections import (
    AuthStage,
    DeployStage,
    KubectlDump,
    MetricsStage,
    NetworkPolicy,
    RunStage,
    StageCommon,
    TestsStage,
)
from runner.contract.yamlsrc import load_yaml, validate_model
from runner.errors import ContractError

__all__ = [
    "STAGE_NAMES",
    "AuthStage",
    "DeployStage",
    "KubectlDump",
    "MetricsStage",
    "NetworkPolicy",
    "PipelineSpec",
    "RunStage",
    "SecuritySpec",
    "StageName",
    "StageSpec",
    "TestsStage",
    "load_pipeline",
    "pipeline_json_schema",
]

StageName = Literal[
    "tests",
    "auth",
    "deploy_setup",
    "deploy_health",
    "deploy_teardown",
    "rollout",
    "evaluation",
    "benchmark",
]
STAGE_NAMES: tuple[StageName, ...] = typing.get_args(StageName)


class ArtifactsSpec(ContractModel):
    """Legacy artifacts settings."""

    out_dir: OptionalText = None
    """Accepted for compatibility; fsm-runner always writes to .aider_fsm/artifacts/<run_id>/."""


class ToolingSpec(ContractModel):
    """Legacy host tooling switches; the predecessor parsed and ignored them."""

    ensure_tools: bool = False
    """Accepted for compatibility; no effect (install tools in bootstrap.yml)."""
    ensure_kind_cluster: bool = False
    """Accepted for compatibility; no effect (the predecessor never acted on it either)."""
    kind_cluster_name: Annotated[str, BeforeValidator(lambda v: v or "kind")] = "kind"
    """Accepted for compatibility; no effect."""
    kind_config: OptionalText = None
    """Accepted for compatibility; no effect."""


class PipelineSpec(ContractModel):
    """A target repository's ``pipeline.yml`` (version 1)."""

    version: Annotated[Literal[1], BeforeValidator(version_one("pipeline"))] = 1
    """Schema version; missing or null means 1."""
    tests: TestsStage | None = None
    """The repository's tests."""
    auth: AuthStage | None = None
    """Log-in steps."""
    deploy: DeployStage | None = None
    """Service setup, health check and teardown."""
    rollout: RunStage | None = None
    """Produces .aider_fsm/rollout.json and the samples JSONL."""
    evaluation: MetricsStage | None = None
    """Produces the metrics JSON."""
    benchmark: MetricsStage | None = None
    """Optional extra scored run with its own metrics JSON."""
    security: SecuritySpec = Field(default_factory=SecuritySpec)
    """Command policy and container limits; null means all defaults."""
    artifacts: ArtifactsSpec | None = None
    """Legacy; accepted, no effect."""
    tooling: ToolingSpec | None = None
    """Legacy; accepted, no effect."""

    @field_validator(
        "tests", "auth", "deploy", "rollout", "evaluation", "benchmark", "security",
        "artifacts", "tooling", mode="before",
    )  # fmt: skip
    @classmethod
    def _section_is_mapping(cls, value: object, info: ValidationInfo) -> object:
        if value is None and info.field_name == "security":
            return {}
        if value is not None and not isinstance(value, dict):
            raise ValueError("section must be a mapping (or null)")
        return value

    def stage(self, name: StageName) -> StageSpec | None:
        """The uniform view the stage executor runs, or None when it has no commands.

        deploy_setup / deploy_health / deploy_teardown share the ``deploy`` section's
        timeout, retries, env, workdir and network.

        Raises:
            ValueError: ``name`` is not one of STAGE_NAMES.
        """
        if name not in STAGE_NAMES:
            raise ValueError(f"unknown stage {name!r}; known: {', '.join(STAGE_NAMES)}")
        section: StageCommon | None
        cmds: tuple[str, ...] = ()
        if name.startswith("deploy_"):
            section = self.deploy
            if section is not None:
                cmds = getattr(section, f"{name.removeprefix('deploy_')}_commands")
        else:
            section = getattr(self, name)
            if isinstance(section, TestsStage | RunStage):  # AuthStage, MetricsStage included
                cmds = section.commands
        if section is None or not cmds:
            return None
        return StageSpec(
            name=name,
            cmds=cmds,
            timeout_seconds=section.timeout_seconds,
            retries=section.retries,
            env=types.MappingProxyType(dict(section.env)),
            workdir=section.workdir,
            network=section.network,
            interactive=isinstance(section, AuthStage) and section.interactive,
        )


@dataclass(frozen=True)
class StageSpec:
    """One runnable stage, flattened from its section. Read-only."""

    name: StageName
    cmds: tuple[str, ...]
    timeout_seconds: int | None
    """Stage timeout per command; the runner still applies security.max_cmd_seconds."""
    retries: int
    env: Mapping[str, str]
    workdir: str | None
    """Relative to the repository root (normalised, never escapes it); None = root."""
    network: NetworkPolicy | None
    """None = the runner's default for this stage."""
    interactive: bool = False


def load_pipeline(path: Path) -> PipelineSpec:
    """Load and validate ``pipeline.yml``.

    Raises:
        ContractError: missing/empty/non-mapping file, YAML syntax error, or any schema
            violation, located as ``file:line: field: message``.
    """
    doc = load_yaml(path)
    if doc.data is None:
        raise ContractError("pipeline file is empty", file=path)
    if not isinstance(doc.data, dict):
        raise doc.error(
            "top level must be a mapping of sections", (), found=type(doc.data).__name__
        )
    return validate_model(PipelineSpec, doc.data, doc)


def pipeline_json_schema() -> dict[str, Any]:
    """JSON Schema for ``pipeline.yml``, generated from the models (``fsm-runner schema``)."""
    schema = PipelineSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "pipeline.yml (version 1)"
    return schema
