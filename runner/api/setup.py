"""``setup(target)``: resolve the target, load and check its contract, open a session.

Bad input fails here, before any container starts: a broken ``pipeline.yml`` or
``bootstrap.yml`` is a ``ContractError`` naming file and line; a bad option value is a
``ValueError`` naming the allowed ones.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Literal, get_args

from runner.contract import load_actions, load_bootstrap, load_pipeline
from runner.errors import ContractError
from runner.runs.run_dir import RunDir
from runner.session.bootstrap_cache import CacheMode
from runner.session.machine import EnvSession, SessionOptions
from runner.targets.dotenv import load_env_file
from runner.targets.resolve import resolve_target
from runner.trust.hint_check import HINTS_OPTIONS, HintsOption
from sandbox import Limits, NetworkPolicy

Audit = Literal["on", "off", "warn-only"]
Unattended = Literal["strict", "guided"]
Backend = Literal["docker", "local"]
WorkspaceMode = Literal["copy", "bind"]


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of: {', '.join(allowed)}")
    return str(value)


def setup(
    target: str | Path,
    *,
    clones_dir: str | Path | None = None,
    pipeline_rel: str = "pipeline.yml",
    require_metrics: bool = True,
    audit: Audit = "on",
    unattended: Unattended = "strict",
    artifacts_dir: str | Path | None = None,
    sandbox: Backend = "docker",
    image: str | None = None,
    workspace: WorkspaceMode = "copy",
    network: Literal["none", "llm", "egress"] | None = None,
    limits: Limits | None = None,
    offline: bool = False,
    env_file: str | Path | None = None,
    cache: CacheMode = "on",
    seed: int | None = None,
    hints: HintsOption = "auto",
    keep: bool = False,
    follow: bool = False,
    progress: Callable[[str], None] | None = None,
    run_id: str | None = None,
    **opencode: Any,
) -> EnvSession:
    """Open ``target`` (local path, git URL[@ref], ``owner/repo``, or HF dataset) as an environment.

    Args:
        target: where the repository is.
        clones_dir: where remote targets are cloned and reused.
        pipeline_rel: the contract file, relative to the repo root.
        require_metrics: evaluation must write metrics with ``ok: true``.
        audit: ``on`` | ``off`` | ``warn-only`` (kept from the predecessor).
        unattended: ``strict`` refuses commands that wait for a human; ``guided`` allows them.
        artifacts_dir: run dirs go here instead of ``<repo>/.aider_fsm/artifacts``.
        sandbox: ``docker`` (isolated, default) or ``local`` (host processes, trusted repos only).
        image: a local image to run instead of the default one.
        workspace: ``copy`` (host checkout never written by target code) or ``bind``.
        network: the most network any stage may get; never loosened by the contract.
        limits: container limits (memory, cpus, pids, ...); the contract can only tighten them.
        offline: never fetch remote targets; use what ``clones_dir`` holds.
        env_file: a ``.env`` file (KEY=VALUE) whose pairs reach every stage, masked in
            every file written; never read from the target repo implicitly.
        cache: the bootstrap image cache: ``on`` (start from a snapshot of an earlier
            identical bootstrap, save one after a slow bootstrap), ``read`` or ``off``.
        seed: ``AIDER_FSM_SEED`` for every stage (default: derived from the run id);
            replay passes the recorded one.
        hints: official commands (README, CI, tox, Make): ``require`` the evaluation to
            run one, ``report`` which ran, or ``auto`` (require for a contract the
            OpenCode agent wrote or repaired, report otherwise).
        keep: leave the sandbox running when the session ends, labelled kept
            (``fsm-runner shell``; removed by ``fsm-runner gc --kept``).
        follow: ``progress`` gets every line a running command prints, not only its
            latest line once a second (``fsm-runner run --follow``).
        progress: called with one line per step (the CLI shows these).
        run_id: the run id to claim, reserved earlier with ``new_run_id()`` (the CLI and
            batch workers do, to start the run's container before the session exists);
            default a fresh one.
        **opencode: the predecessor's ``opencode_*`` / ``strict_opencode`` / ``*_bash`` options,
            accepted for compatibility and recorded; the agent arrives with scaffold/repair.

    Raises:
        ContractError: the contract is missing or invalid (file, line, field).
        TargetError: the target cannot be resolved or fetched.
        ValueError: an option has a value outside its allowed set.
        TypeError: an unknown keyword.
    """
    audit = _choice("audit", audit, get_args(Audit))  # type: ignore[assignment]
    unattended = _choice("unattended", unattended, get_args(Unattended))  # type: ignore[assignment]
    sandbox = _choice("sandbox", sandbox, get_args(Backend))  # type: ignore[assignment]
    workspace = _choice("workspace", workspace, get_args(WorkspaceMode))  # type: ignore[assignment]
    cache = _choice("cache", cache, get_args(CacheMode))  # type: ignore[assignment]
    hints = _choice("hints", hints, HINTS_OPTIONS)  # type: ignore[assignment]
    if network is not None:
        _choice("network", network, ("none", "llm", "egress"))
    unknown = sorted(k for k in opencode if k not in _AGENT_KEYS)
    if unknown:
        # Every keyword setup() knows, its own and the agent's (docs/api.md promises it).
        known = sorted({*_AGENT_KEYS, *inspect.signature(setup).parameters} - {"opencode"})
        named = [
            f"{k} (did you mean {close[0]}?)" if (close := get_close_matches(k, known, 1)) else k
            for k in unknown
        ]
        raise TypeError(f"setup() got unexpected keyword argument(s): {', '.join(named)}")
    if opencode.get("opencode_url"):
        # A server we did not start edits whatever directory it was started in, outside any
        # sandbox: the scope promise (only the contract comes back) could not hold. Warn
        # rather than fail, so the predecessor's calls keep working.
        warnings.warn(
            "opencode_url is ignored: the agent always runs in its own sandbox "
            "(docs/agent.md, Limits)",
            UserWarning,
            stacklevel=2,
        )

    repo = resolve_target(
        target, clones_dir=Path(clones_dir).expanduser() if clones_dir else None, offline=offline
    )
    pipeline_path = repo.path / pipeline_rel
    base = Path(artifacts_dir).expanduser() if artifacts_dir else None
    model = str(opencode.get("opencode_model") or "")
    run_dir: RunDir | None = None
    scaffolded = not pipeline_path.is_file()
    if scaffolded:
        if not model:
            raise ContractError(
                "no contract: the file does not exist. Write one with `fsm-runner init`, "
                "or pass opencode_model= to let the OpenCode agent scaffold it",
                file=pipeline_path,
            )
        run_dir = RunDir.create(repo.path, base=base, run_id=run_id)
        _scaffold(
            repo.path,
            model=model,
            run_dir=run_dir,
            pipeline_rel=pipeline_rel,
            sandbox=sandbox,
            image=image,
            progress=progress,
            opencode=opencode,
        )
    for contract_file in (
        pipeline_path,
        repo.path / ".aider_fsm" / "bootstrap.yml",
        repo.path / ".aider_fsm" / "actions.yml",
    ):
        _refuse_outside_link(repo.path, contract_file)
    pipeline = load_pipeline(pipeline_path)
    bootstrap = load_bootstrap(repo.path / ".aider_fsm" / "bootstrap.yml")
    actions = load_actions(repo.path / ".aider_fsm" / "actions.yml")
    run_dir = run_dir or RunDir.create(repo.path, base=base, run_id=run_id)
    options = SessionOptions(
        backend=sandbox,
        image=image,
        workspace_mode=workspace,
        limits=limits or Limits(),
        network_cap=NetworkPolicy(network) if network else None,
        require_metrics=require_metrics,
        audit=audit,
        unattended=unattended,
        progress=progress,
        extra_env=load_env_file(Path(env_file).expanduser()) if env_file else {},
        repair_model=str(opencode.get("opencode_repair_model") or model) or None,
        repairer=_agent_repair,
        pipeline_rel=pipeline_rel,
        cache=cache,
        seed=seed,
        hints=hints,
        contract_by_agent=scaffolded,
        keep=keep,
        follow=follow,
    )
    if opencode:
        run_dir.event("agent_options_recorded", keys=sorted(opencode))
    return EnvSession(
        repo=repo,
        pipeline=pipeline,
        pipeline_path=pipeline_path,
        bootstrap=bootstrap,
        actions=actions,
        run_dir=run_dir,
        options=options,
    )


#: The predecessor's agent options (notes/predecessor.md 1.1): all accepted so its calls
#: keep working, a few acted on (docs/api.md); any other name is a typo and refused.
_AGENT_KEYS = frozenset(
    {
        "opencode_model",
        "opencode_repair_model",
        "opencode_url",
        "opencode_timeout_seconds",
        "opencode_repair_timeout_seconds",
        "opencode_retry_attempts",
        "opencode_retry_backoff_seconds",
        "opencode_session_recover_attempts",
        "opencode_session_recover_backoff_seconds",
        "opencode_context_length",
        "opencode_max_prompt_chars",
        "opencode_bash",
        "scaffold_opencode_bash",
        "strict_opencode",
    }
)


def _refuse_outside_link(repo_root: Path, path: Path) -> None:
    """A contract file that is a link leading out of the repo would make us read host files.

    Raises:
        ContractError: ``path`` (or a folder on its way) resolves outside ``repo_root``.
    """
    if not (path.exists() or path.is_symlink()):
        return
    resolved, root = path.resolve(), repo_root.resolve()
    if resolved != root and root not in resolved.parents:
        raise ContractError(
            f"is a link that leads outside the repository ({resolved}); refusing to read it",
            file=path,
        )


def _scaffold(
    repo_root: Path,
    *,
    model: str,
    run_dir: RunDir,
    pipeline_rel: str,
    sandbox: Backend,
    image: str | None,
    progress: Callable[[str], None] | None,
    opencode: dict[str, Any],
) -> None:
    """Have the OpenCode agent write the contract, smoke-run each attempt in a fresh sandbox.

    Raises:
        AgentError: no attempt produced a contract that loads and passes the smoke run.
    """
    from runner.agent import scaffold_contract

    def smoke(root: Path) -> str | None:
        try:
            res = setup(root, sandbox=sandbox, image=image, pipeline_rel=pipeline_rel).evaluate(
                llm="smoke", mode="smoke", repair_iters=0
            )
        except ContractError as exc:
            return str(exc)
        return None if res.ok else f"{res.failed_stage}: {res.reason}"

    attempts = int(os.environ.get("AIDER_OPENCODE_SCAFFOLD_ATTEMPTS", "3") or 3)
    timeout = float(opencode.get("opencode_timeout_seconds") or 1800)
    scaffold_contract(
        repo_root,
        model=model,
        run_dir=run_dir,
        attempts=attempts,
        timeout_s=timeout,
        pipeline_rel=pipeline_rel,
        image=image,
        smoke=smoke,
        progress=progress,
    )


def _agent_repair(repo_root: Path, **kwargs: Any) -> tuple[bool, str]:
    """The OpenCode agent as the session's repairer, imported when a repair is asked for."""
    from runner.agent.repair import repair_for_session

    return repair_for_session(repo_root, **kwargs)
