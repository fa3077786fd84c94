"""The session's sandbox: what it is opened with, and its record in ``sandbox.json``.

The state machine decides *when* a sandbox opens (once per attempt); this module decides
*what* it is: limits capped by the contract, the bootstrap cache's image on a hit, the
read-only mounts (runner helpers, a local model), the outputs kept out of the copy. It
also keeps ``sandbox.json`` (the sandbox, the bootstrap cache, each stage's network).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.contract import BootstrapSpec, PipelineSpec
from runner.contract.fields import size_bytes
from runner.contract.paths import FIXED_OUTPUTS
from runner.errors import SandboxError as RunnerSandboxError
from runner.runs.run_dir import RunDir
from runner.session.bootstrap_cache import CachePlan, plan_cache
from runner.session.llm import LlmChoice
from runner.session.options import Progress, SessionOptions
from runner.trust.evidence import RUNNER_ROOT_IN_SANDBOX, runner_package_dir
from sandbox import Limits, Sandbox, SandboxSpec, open_sandbox
from sandbox.errors import SandboxError as SandboxLayerError
from sandbox.kept import LABEL_KEPT

MODEL_DIR_IN_SANDBOX = "/model"
"""Where a local model directory is mounted (read-only) inside the sandbox."""

SANDBOX_FILE = "sandbox.json"


def plan_bootstrap_cache(
    options: SessionOptions, repo_root: Path, spec: BootstrapSpec | None, say: Progress
) -> CachePlan:
    """Look the bootstrap image cache up before the sandbox opens (a hit decides its image)."""
    try:
        return plan_cache(
            options.cache,
            repo_root=repo_root,
            spec=spec,
            backend=options.backend,
            workspace_mode=options.workspace_mode,
            image=options.image,
            extra_env=options.extra_env,
            progress=say,
        )
    except SandboxLayerError as exc:
        raise RunnerSandboxError(str(exc)) from exc


def _magnitude(value: object) -> float:
    """A limit as one comparable number: sizes (``512m``) in bytes, counts as they are."""
    return float(size_bytes(value)) if isinstance(value, str) else float(value)  # type: ignore[arg-type]


def sandbox_limits(pipeline: PipelineSpec, base: Limits) -> Limits:
    """The caller's limits, each lowered where the contract's ``security`` asks for less.

    Generic over every :class:`Limits` field that ``security`` also has (memory, cpus,
    pids today; a new one such as ``disk`` needs no change here): the contract may only
    tighten (issue 15 item 5: ``security.memory: 4g`` used to replace the caller's
    512m). A field the caller left unset (None) takes the contract's value.
    """
    sec = pipeline.security
    tighter: dict[str, Any] = {}
    for f in dataclasses.fields(Limits):
        wanted, have = getattr(sec, f.name, None), getattr(base, f.name)
        if wanted is None:
            continue
        if have is None or _magnitude(wanted) < _magnitude(have):
            tighter[f.name] = wanted
    return dataclasses.replace(base, **tighter)


def open_session_sandbox(
    *,
    repo_root: Path,
    pipeline: PipelineSpec,
    options: SessionOptions,
    cache: CachePlan,
    llm: LlmChoice | None,
    endpoint: tuple[str, int] | None,
    run_id: str,
    run_dir: RunDir,
    say: Progress,
) -> Sandbox:
    """Open the sandbox and start ``sandbox.json``; engine errors become runner errors."""
    spec = SandboxSpec(
        workspace_src=repo_root,
        workspace_mode=options.workspace_mode,
        image=cache.hit_image or options.image,
        workspace_in_image=cache.hit,
        backend=options.backend,
        llm_endpoint=endpoint,
        limits=sandbox_limits(pipeline, options.limits),
        # A local model directory is visible to stages read-only, at a fixed path.
        readonly_mounts={
            # The runner's stage helpers (generic_evaluation, ...), read-only.
            str(runner_package_dir()): f"{RUNNER_ROOT_IN_SANDBOX}/runner",
            **(
                {str(llm.model_dir): MODEL_DIR_IN_SANDBOX}
                if llm is not None and llm.model_dir is not None
                else {}
            ),
        },
        # Kept sandboxes (run --keep) are labelled at creation: gc leaves them for gc --kept.
        labels={"fsm-runner.run-id": run_id, **({LABEL_KEPT: "1"} if options.keep else {})},
        # Outputs of earlier runs never enter the sandbox: only this run's can pass.
        exclude=(*SandboxSpec.exclude, *FIXED_OUTPUTS),
    )
    say(f"opening {options.backend} sandbox for {repo_root}")
    try:
        sb = open_sandbox(spec, progress=say)
    except SandboxLayerError as exc:
        raise RunnerSandboxError(str(exc)) from exc
    described = cache.describe()
    run_dir.write_json(SANDBOX_FILE, {**sb.describe(), "bootstrap_cache": described, "stages": {}})
    run_dir.event("sandbox_opened", **sb.describe())
    run_dir.event("bootstrap_cache", **described, inputs=cache.inputs)
    return sb


def record_stage_network(run_dir: RunDir, stage: str, network: str) -> None:
    """Note the network a stage ran with in ``sandbox.json``."""
    path = run_dir.path / SANDBOX_FILE
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("stages", {})[stage] = {"network": network}
    run_dir.write_json(SANDBOX_FILE, data)


def record_bootstrap_cache(run_dir: RunDir, cache: CachePlan, record: Mapping[str, Any]) -> None:
    """Note a saved bootstrap snapshot in ``sandbox.json``."""
    path = run_dir.path / SANDBOX_FILE
    data = json.loads(path.read_text()) if path.exists() else {}
    data["bootstrap_cache"] = {**cache.describe(), **record}
    run_dir.write_json(SANDBOX_FILE, data)
