"""``SessionOptions``: how a session runs, set once by ``setup()``.

Its own module so that the session's phase modules (sandbox, bootstrap, stages, checks)
can take the options without importing the session; ``runner.session.machine`` re-exports it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TypedDict, Unpack

from runner.runs.run_dir import RunDir
from runner.session.bootstrap_cache import CacheMode
from runner.trust.hint_check import HintsOption
from sandbox import Limits, NetworkPolicy

Progress = Callable[[str], None]


class RepairRequest(TypedDict):
    """What the session tells the repairer about one failure (the repairer's keywords)."""

    failed_stage: str
    reason: str
    evidence: Mapping[str, str]
    model: str
    run_dir: RunDir
    attempt: int
    env: Mapping[str, str]
    pipeline_rel: str
    image: str | None


class ContractRepairer(Protocol):
    """Edits the contract (``pipeline.yml``, ``.aider_fsm/``) after a stage failed.

    The OpenCode agent implements it (``runner.agent.repair.repair_for_session``);
    ``setup()`` hands it in, so the session never imports the agent. One call is one
    attempt; it returns (the contract changed and still loads, why not), never raises
    for the agent's own failures.
    """

    def __call__(self, repo_root: Path, **request: Unpack[RepairRequest]) -> tuple[bool, str]: ...


@dataclass(frozen=True)
class SessionOptions:
    """How a session runs; set once by ``setup()`` and never mutated."""

    backend: Literal["docker", "local"] = "docker"
    image: str | None = None
    workspace_mode: Literal["copy", "bind"] = "copy"
    limits: Limits = field(default_factory=Limits)
    network_cap: NetworkPolicy | None = None
    require_metrics: bool = True
    audit: Literal["on", "off", "warn-only"] = "on"
    unattended: Literal["strict", "guided"] = "strict"
    progress: Progress | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    """KEY=VALUE pairs for every stage (``setup(env_file=...)``), masked like secrets."""
    repair_model: str | None = None
    """OpenCode model that repairs a failing contract (``opencode_repair_model`` or ``opencode_model``)."""
    repairer: ContractRepairer | None = None
    """Who repairs with ``repair_model`` (the agent, wired by ``setup()``); None: no repairs."""
    pipeline_rel: str = "pipeline.yml"
    cache: CacheMode = "on"
    """Bootstrap image cache: ``on`` reads and writes, ``read``, or ``off`` (bootstrap_cache.py)."""
    seed: int | None = None
    """``AIDER_FSM_SEED`` for every stage; None derives it from the run id (``fsm-runner replay`` pins it)."""
    hints: HintsOption = "auto"
    """Official commands: ``require`` one to run, ``report`` only, or ``auto`` (require for a
    contract the agent wrote or repaired): ``runner/trust/hint_check.py``."""
    contract_by_agent: bool = False
    """``setup()`` had the OpenCode agent scaffold this contract."""
    keep: bool = False
    """Leave the sandbox running after the session (``fsm-runner run --keep``), labelled kept."""
    follow: bool = False
    """Report every output line of a running command, not the latest one per second."""
