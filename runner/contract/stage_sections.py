"""``pipeline.yml``'s stage sections: tests, auth, deploy, rollout, evaluation, benchmark.

Each section keeps the predecessor's leniency on command keys: singular or plural (the
plural wins when both are present, even if it is an empty list). The session runs them
through :meth:`runner.contract.pipeline.PipelineSpec.stage`, one uniform view.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from runner.contract.fields import (
    Command,
    Commands,
    ContractModel,
    EnvMap,
    OptionalText,
    RepoPath,
    Retries,
    Seconds,
    lower_or_default,
    none_to_empty_tuple,
)

__all__ = [
    "AuthStage",
    "DeployStage",
    "KubectlDump",
    "MetricsStage",
    "NetworkPolicy",
    "RunStage",
    "StageCommon",
    "TestsStage",
]

NetworkPolicy = Literal["none", "llm", "egress"]


def _pick(plural: tuple[str, ...] | None, singular: str | None) -> tuple[str, ...]:
    if plural is not None:
        return plural
    return (singular,) if singular else ()


class StageCommon(ContractModel):
    """What every stage section has: timeout, retries, env, workdir, network."""

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


class TestsStage(StageCommon):
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


class DeployStage(StageCommon):
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


class RunStage(StageCommon):
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
