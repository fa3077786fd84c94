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

import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
)

from runner.contract.fields import (
    Command,
    ContractModel,
    EnvMap,
    OptionalText,
    RepoPath,
    Retries,
    Seconds,
    lower_or_default,
    no_bool,
    none_to_empty_tuple,
    size_bytes,
    version_one,
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

NetworkPolicy = Literal["none", "llm", "egress"]
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

Commands = tuple[Command, ...] | None


def _pick(plural: tuple[str, ...] | None, singular: str | None) -> tuple[str, ...]:
    if plural is not None:
        return plural
    return (singular,) if singular else ()


class _StageCommon(ContractModel):
    timeout_seconds: Seconds = None
    """Per-command timeout in seconds (capped by security.max_cmd_seconds); null = runner default, 0 is read as null (legacy)."""
    retries: Retries = 0
    """Extra attempts per failing command (no backoff)."""
    env: EnvMap = Field(default_factory=dict)
    """Extra environment for this stage; values are stringified, null becomes ""."""
    workdir: RepoPath = None
    """Working directory relative to the repository root; must stay inside it."""
    network: NetworkPolicy | None = None
    """Network for this stage: none, llm (model endpoint only) or egress; null = runner default."""


class TestsStage(_StageCommon):
    """The repository's own test command(s)."""

    cmd: Command | None = None
    """Single command (used when `cmds` is absent)."""
    cmds: Commands = None
    """Commands; wins over `cmd` when both are given."""

    @property
    def commands(self) -> tuple[str, ...]:
        """Final command list: ``cmds`` if present, else ``cmd``."""
        return _pick(self.cmds, self.cmd)


class AuthStage(TestsStage):
    """Log-in steps (registries, hubs) run before anything else."""

    steps: Commands = None
    """Legacy alias for `cmds`, used only when `cmd`/`cmds` give no command."""
    interactive: bool = False
    """Run attached to a terminal (only honoured in guided unattended mode)."""

    @property
    def commands(self) -> tuple[str, ...]:
        """``cmds``, else ``cmd``, else ``steps`` (predecessor order)."""
        return _pick(self.cmds, self.cmd) or (self.steps or ())


class KubectlDump(ContractModel):
    """Legacy kubectl diagnostics captured after the run."""

    enabled: bool = False
    """Capture kubectl get/events (and optionally logs) after the run."""
    namespace: OptionalText = None
    """Namespace to dump; null = all."""
    label_selector: OptionalText = None
    """Label selector for `kubectl logs -l`."""
    include_logs: bool = False
    """Also capture pod logs matching `label_selector`."""


class DeployStage(_StageCommon):
    """Start the service (setup), check it (health), stop it (teardown)."""

    setup_cmd: Command | None = None
    """Single setup command (used when `setup_cmds` is absent)."""
    setup_cmds: Commands = None
    """Setup commands; win over `setup_cmd`."""
    health_cmd: Command | None = None
    """Single health-check command."""
    health_cmds: Commands = None
    """Health-check commands; win over `health_cmd`."""
    teardown_cmd: Command | None = None
    """Single teardown command."""
    teardown_cmds: Commands = None
    """Teardown commands; win over `teardown_cmd`."""
    teardown_policy: Annotated[
        Literal["always", "on_success", "on_failure", "never"],
        BeforeValidator(lower_or_default("always")),
    ] = "always"
    """When teardown runs: always, on_success, on_failure or never."""
    kubectl_dump: KubectlDump | None = None
    """Legacy kubectl diagnostics."""

    @property
    def setup_commands(self) -> tuple[str, ...]:
        """Final setup command list."""
        return _pick(self.setup_cmds, self.setup_cmd)

    @property
    def health_commands(self) -> tuple[str, ...]:
        """Final health command list."""
        return _pick(self.health_cmds, self.health_cmd)

    @property
    def teardown_commands(self) -> tuple[str, ...]:
        """Final teardown command list."""
        return _pick(self.teardown_cmds, self.teardown_cmd)


class RunStage(_StageCommon):
    """A stage that runs command(s): rollout."""

    run_cmd: Command | None = None
    """Single command (used when `run_cmds` is absent)."""
    run_cmds: Commands = None
    """Commands; win over `run_cmd`."""

    @property
    def commands(self) -> tuple[str, ...]:
        """Final command list: ``run_cmds`` if present, else ``run_cmd``."""
        return _pick(self.run_cmds, self.run_cmd)


class MetricsStage(RunStage):
    """A stage that must leave a metrics JSON object: evaluation, benchmark."""

    metrics_path: OptionalText = None
    """Metrics JSON path, relative to the repository root (not to workdir)."""
    required_keys: Annotated[
        tuple[Annotated[str, AfterValidator(str.strip)], ...],
        BeforeValidator(none_to_empty_tuple),
        AfterValidator(lambda keys: tuple(k for k in keys if k)),
    ] = ()
    """Keys the metrics object must contain; if `ok` is listed it must be exactly true."""


def _regex(pattern: str) -> str:
    pattern = pattern.strip()
    try:
        re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from exc
    return pattern


Patterns = Annotated[
    tuple[Annotated[str, AfterValidator(_regex)], ...],
    BeforeValidator(none_to_empty_tuple),
    AfterValidator(lambda items: tuple(p for p in items if p)),
]


MIN_MEMORY = "6m"
"""Docker's own minimum for a memory limit."""
MAX_MEMORY = "1024g"
MAX_CPUS = 1024.0
MAX_PIDS = 4_194_304
"""The kernel's ceiling for pid_max."""

Cpus = Annotated[
    PositiveFloat | None, Field(allow_inf_nan=False, le=MAX_CPUS), BeforeValidator(no_bool)
]


def _memory(value: str | None) -> str | None:
    # 0 means "no limit" to Docker: a contract could only loosen with it (issue 15 item 5).
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]+[bkmg]?", value.lower()):
        raise ValueError("memory must look like 512m or 2g (digits + optional b/k/m/g)")
    if not size_bytes(MIN_MEMORY) <= size_bytes(value) <= size_bytes(MAX_MEMORY):
        raise ValueError(f"memory must be between {MIN_MEMORY} and {MAX_MEMORY}")
    return value.lower()


class SecuritySpec(ContractModel):
    """Command policy and container limits."""

    mode: Annotated[Literal["safe", "system"], BeforeValidator(lower_or_default("safe"))] = "safe"
    """safe adds default deny rules (sudo, mkfs, ...); system drops them."""
    allowlist: Patterns = ()
    """Regexes (case-insensitive, re.search); if non-empty a command must match one."""
    denylist: Patterns = ()
    """Regexes (case-insensitive, re.search); a matching command is refused."""
    max_cmd_seconds: Seconds = None
    """Cap on every command's timeout (tightens the runner's, never loosens it)."""
    max_total_seconds: Seconds = None
    """Time budget of one stage, checked before each command."""
    memory: Annotated[
        str | None,
        BeforeValidator(lambda v: str(no_bool(v)) if isinstance(v, int) else v),
        AfterValidator(_memory),
    ] = None
    """Container memory limit (memory+swap), e.g. 2g; only lowers the caller's; null = the caller's."""
    cpus: Cpus = None
    """Container CPU limit; only lowers the caller's; null = the caller's."""
    pids: Annotated[PositiveInt | None, Field(ge=8, le=MAX_PIDS), BeforeValidator(no_bool)] = None
    """Container process-count limit; only lowers the caller's; null = the caller's."""
    network: NetworkPolicy | None = None
    """Most network any stage may get (none < llm < egress); null = runner default."""

    @property
    def allow_patterns(self) -> tuple[re.Pattern[str], ...]:
        """Compiled allowlist (validated at load, so this cannot fail)."""
        return tuple(re.compile(p, re.IGNORECASE) for p in self.allowlist)

    @property
    def deny_patterns(self) -> tuple[re.Pattern[str], ...]:
        """Compiled denylist."""
        return tuple(re.compile(p, re.IGNORECASE) for p in self.denylist)


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
        section: _StageCommon | None
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
