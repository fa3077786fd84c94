"""The bootstrap phase: ``bootstrap.yml`` once per sandbox, then ``actions.yml``.

Bootstrap is not a pipeline stage: its env is expanded against the sandbox's (not the
host's) and reaches every later stage, a bootstrap image cache hit skips its commands,
and a successful run on a miss is saved as a snapshot. The session only records the
outcome and makes the transition.
"""

from __future__ import annotations

import os
import time

from runner.contract import ActionsSpec, BootstrapSpec, absolutize_env_paths, expand_env
from runner.contract.paths import FIXED_OUTPUTS
from runner.session.actions import run_actions
from runner.session.bootstrap_cache import CachePlan, bootstrap_start_shell, save_snapshot
from runner.session.cache_key import NAMESPACE_LABEL, cache_namespace
from runner.session.passes import Pass
from runner.session.pipeline_stages import StageContext, exec_stage, net
from runner.session.sandbox_open import record_bootstrap_cache, record_stage_network
from runner.session.stage_env import base_stage_env, limit_override
from runner.session.stages import DEFAULT_STAGE_NETWORK, StagePlan, StageResult, cap_network
from runner.trust.evidence import helper_env

SANDBOX_BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
}
"""The default image's environment, against which bootstrap.yml's ``$VARS`` expand."""


def run_bootstrap(
    ctx: StageContext,
    *,
    mode: str,
    spec: BootstrapSpec | None,
    actions: ActionsSpec | None,
    cache: CachePlan | None,
) -> tuple[StageResult | None, dict[str, str]]:
    """Run bootstrap (unless the cache holds it) and the actions.

    Returns the last result (None when nothing ran) and bootstrap's expanded env, which
    the session keeps for every later stage when the result is None or ok.
    """
    sb = ctx.sandbox
    run_dir = ctx.run_dir
    bdir = run_dir.subdir("env_api", "bootstrap")
    # ``$PATH``/``$HOME`` in bootstrap.yml mean the sandbox's, not the host's.
    seed = {**SANDBOX_BASE_ENV, "AIDER_FSM_REPO_ROOT": sb.workspace}
    if ctx.options.backend == "local":
        seed = {**os.environ, "AIDER_FSM_REPO_ROOT": sb.workspace}
    applied = absolutize_env_paths(expand_env(spec.env, seed), sb.workspace) if spec else {}
    if spec is not None:
        run_dir.write_text(
            "env_api/bootstrap/bootstrap.yml",
            (ctx.repo_root / ".aider_fsm" / "bootstrap.yml").read_text(errors="replace"),
        )
    run_dir.add_secrets_from_env(applied)
    run_dir.write_json("env_api/bootstrap/bootstrap_env.json", applied)
    if spec is not None and spec.warnings:
        run_dir.write_json("env_api/bootstrap/bootstrap_parse_warnings.json", list(spec.warnings))
    plan = _plan(ctx, spec, applied, mode)
    result: StageResult | None = None
    if plan.cmds and not _restore(ctx, cache):
        record_stage_network(run_dir, "bootstrap", plan.network.value)
        ctx.say(f"bootstrap ({len(plan.cmds)} command(s), network={plan.network.value})")
        saving = cache is not None and cache.mode == "on" and bool(cache.key) and not cache.hit
        started = time.monotonic()
        result = exec_stage(
            ctx,
            plan,
            Pass("bootstrap", bdir, plan.env["AIDER_FSM_ARTIFACTS_DIR"]),
            prelude=bootstrap_start_shell() if saving else "",
        )
        if saving and result.ok and cache is not None:
            _save(ctx, cache, time.monotonic() - started)
    if (result is None or result.ok) and actions and actions.actions:
        ctx.say(f"actions ({len(actions.actions)})")
        record_stage_network(run_dir, "actions", plan.network.value)
        result = run_actions(
            sb,
            actions,
            plan=plan,
            policy=ctx.policy,
            run_dir=run_dir,
            record_dir=run_dir.subdir("env_api", "actions"),
            progress=ctx.say,
        )
    return result, applied


def _plan(
    ctx: StageContext, spec: BootstrapSpec | None, applied: dict[str, str], mode: str
) -> StagePlan:
    """Bootstrap's plan: the tightest command timeout, its own network default, capped."""
    sb = ctx.sandbox
    sec = ctx.pipeline.security
    timeouts = [
        t
        for t in (
            spec.timeout_seconds if spec else None,
            sec.max_cmd_seconds if sec else None,
            limit_override("AIDER_FSM_MAX_CMD_SECONDS"),
        )
        if t
    ]
    env = base_stage_env(
        stage="bootstrap",
        workspace=sb.workspace,
        run_id=ctx.run_id,
        artifacts_dir=f"{sb.workspace}/.aider_fsm/artifacts/{ctx.run_id}/bootstrap",
        mode=mode,
        bootstrap_env=applied,
        llm_env={},
        seed=ctx.options.seed,
    )
    env.update(helper_env(ctx.runner_root, env.get("PYTHONPATH")))
    env.update(ctx.options.extra_env)
    return StagePlan(
        name="bootstrap",
        cmds=tuple(spec.cmds) if spec else (),
        env=env,
        cwd=f"{sb.workspace}/{spec.workdir}" if spec and spec.workdir else sb.workspace,
        cmd_timeout=float(min(timeouts)) if timeouts else None,
        retries=spec.retries if spec else 0,
        network=cap_network(
            DEFAULT_STAGE_NETWORK["bootstrap"],
            net(sec.network if sec else None),
            ctx.options.network_cap,
        ),
    )


def _restore(ctx: StageContext, cache: CachePlan | None) -> bool:
    """On a cache hit the sandbox runs the snapshot: bootstrap's effects are there."""
    if cache is None or not cache.hit:
        return False
    ctx.say(f"bootstrap: cache hit {cache.key[:12]} ({cache.hit_image}), skipped")
    ctx.run_dir.event("bootstrap_skipped", key=cache.key, image=cache.hit_image)
    return True


def _save(ctx: StageContext, cache: CachePlan, seconds: float) -> None:
    record = save_snapshot(
        cache,
        ctx.sandbox,
        bootstrap_seconds=seconds,
        exclude=(".aider_fsm/artifacts", *FIXED_OUTPUTS),
        labels={
            "fsm-runner.bootstrap-repo": str(ctx.repo_root),
            **({NAMESPACE_LABEL: ns} if (ns := cache_namespace()) else {}),
        },
        progress=ctx.say,
    )
    if not record.get("saved"):
        ctx.say(f"bootstrap: not cached ({record.get('reason')})")
    ctx.run_dir.event("bootstrap_cache_saved", key=cache.key, **record)
    record_bootstrap_cache(ctx.run_dir, cache, record)
