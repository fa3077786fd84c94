"""How the session plans and runs one pipeline stage in its sandbox.

A stage's environment is layered (runner defaults, bootstrap env, the model's variables
for model stages, helpers, the env file, hints for evaluation, the contract's env, the
caller's overrides), its limits and network capped by the contract and the caller, and
the model key withheld from stages that cannot use it; ``runner/stages.py`` executes
the plan. The state machine only says which stage runs, and when.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from runner.contract import PipelineSpec, StageSpec
from runner.contract.paths import STAGE_OUTPUTS
from runner.errors import SandboxError as RunnerSandboxError
from runner.runs.run_dir import RunDir
from runner.session.llm import LlmChoice, llm_stage_env, normalise_base_url, sandbox_endpoint
from runner.session.options import Progress, SessionOptions
from runner.session.outputs_io import housekeeping
from runner.session.passes import Pass
from runner.session.sandbox_open import MODEL_DIR_IN_SANDBOX, record_stage_network
from runner.session.stage_env import MODEL_STAGES, base_stage_env, limit_override
from runner.session.stages import StagePlan, StageResult, cap_network, plan_stage, run_stage
from runner.trust.evidence import RUNNER_ROOT_IN_SANDBOX, helper_env, runner_package_dir, trace_env
from runner.trust.hint_check import HintsDecision
from runner.trust.policy import CommandPolicy, PolicyConfig
from sandbox import NetworkPolicy, Sandbox
from sandbox.errors import SandboxError as SandboxLayerError

_ENDPOINT_VARS = frozenset({"OPENAI_API_BASE", "OPENAI_BASE_URL"})
_MODEL_VARS = _ENDPOINT_VARS | {"OPENAI_API_KEY"}


@dataclass(frozen=True)
class StageContext:
    """The session state a stage is planned and run with.

    The session builds one per stage (or per phase): a repair swaps the contract and its
    policy, every attempt gets a new sandbox, and bootstrap's env exists only after it.
    """

    sandbox: Sandbox
    pipeline: PipelineSpec
    policy: CommandPolicy
    options: SessionOptions
    repo_root: Path
    run_dir: RunDir
    say: Progress
    llm: LlmChoice | None
    remote_llm: bool
    """The model endpoint is not on this host: model stages get egress, not the relay."""
    hints: Mapping[str, str]
    """Official commands (runner/hints.py), for the evaluation stage."""
    bootstrap_env: Mapping[str, str]
    """Empty until bootstrap has run."""
    stage_envs: dict[str, Mapping[str, str]]
    """The session's record of each stage's final env, updated in place."""
    hints_decision: HintsDecision = field(default_factory=lambda: HintsDecision("none", "-"))
    """Official commands: required or reported, and why (``runner/trust/hint_check.py``)."""

    @property
    def run_id(self) -> str:
        return self.run_dir.run_id

    @property
    def runner_root(self) -> str:
        """Where stages find the runner's helpers: mounted in Docker, the package locally."""
        if self.options.backend == "docker":
            return RUNNER_ROOT_IN_SANDBOX
        return str(runner_package_dir().parent)


def policy_for(pipeline: PipelineSpec, unattended: Literal["strict", "guided"]) -> CommandPolicy:
    """The command policy a contract's stages run under (its ``security`` section)."""
    security = pipeline.security
    return CommandPolicy(
        PolicyConfig(
            mode=security.mode if security else "safe",
            allowlist=tuple(security.allowlist) if security else (),
            denylist=tuple(security.denylist) if security else (),
            unattended=unattended,
        )
    )


def base_url(overrides: Mapping[str, str]) -> str | None:
    """The model endpoint: caller overrides first, then the process environment."""
    for env in (overrides, os.environ):
        for name in ("OPENAI_API_BASE", "OPENAI_BASE_URL"):
            if env.get(name):
                return env[name]
    return None


def _tightest(*caps: int | None) -> int | None:
    return min((c for c in caps if c), default=None)


def net(value: str | None) -> NetworkPolicy | None:
    return NetworkPolicy(value) if value else None


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    return urlunsplit((parts.scheme, f"{host}:{port}", parts.path, parts.query, parts.fragment))


def llm_env(
    llm: LlmChoice | None, sb: Sandbox, overrides: Mapping[str, str], run_dir: RunDir
) -> dict[str, str]:
    """The model variables as seen inside the sandbox (endpoint through the relay if any)."""
    if llm is None:
        return {}
    raw_base = base_url(overrides)
    base_in_sandbox: str | None = None
    if raw_base:
        base_in_sandbox = normalise_base_url(raw_base)
        if sb.llm_address is not None:
            host, port = sb.llm_address
            rewritten, _ = sandbox_endpoint(raw_base, gateway_host=host)
            base_in_sandbox = _with_port(rewritten, port)
    api_key = overrides.get("OPENAI_API_KEY") or os.environ.get("OPENAI_API_KEY")
    if api_key:
        run_dir.add_secret(api_key)
    model_dir = MODEL_DIR_IN_SANDBOX if llm.kind == "local_hf" else None
    env = llm_stage_env(
        llm,
        base_url_in_sandbox=base_in_sandbox,
        api_key=api_key,
        model_dir_in_sandbox=model_dir,
    )
    if sb.llm_address is not None:
        # Model calls go to the relay directly, never through a proxy set for egress.
        gateway = sb.llm_address[0]
        for name in ("NO_PROXY", "no_proxy"):
            current = overrides.get(name) or os.environ.get(name, "")
            env[name] = ",".join(x for x in (current, gateway) if x)
    return env


def plan_pipeline_stage(
    ctx: StageContext,
    name: str,
    spec: StageSpec,
    p: Pass,
    *,
    mode: str,
    overrides: Mapping[str, str],
) -> StagePlan:
    """The plan for one pipeline stage of this session (env, limits, network)."""
    sb = ctx.sandbox
    stage_llm_env = llm_env(ctx.llm, sb, overrides, ctx.run_dir) if name in MODEL_STAGES else {}
    env = base_stage_env(
        stage=name,
        workspace=sb.workspace,
        run_id=ctx.run_id,
        artifacts_dir=p.sandbox_dir,
        mode=mode,
        bootstrap_env=ctx.bootstrap_env,
        llm_env=stage_llm_env,
        seed=ctx.options.seed,
    )
    env.update(helper_env(ctx.runner_root, env.get("PYTHONPATH")))
    env.update(ctx.options.extra_env)
    if name == "evaluation":
        env.update(ctx.hints)
        env.update(trace_env(ctx.runner_root))
    sec = ctx.pipeline.security
    # Every cap holds at once: the caller's (process env, overrides) and the contract's.
    max_cmd = _tightest(
        limit_override("AIDER_FSM_MAX_CMD_SECONDS", overrides, spec.env),
        sec.max_cmd_seconds if sec else None,
    )
    max_total = _tightest(
        limit_override("AIDER_FSM_MAX_TOTAL_SECONDS", overrides, spec.env),
        sec.max_total_seconds if sec else None,
    )
    plan = plan_stage(
        spec,
        env=env,
        workspace=sb.workspace,
        max_cmd_seconds=max_cmd,
        max_total_seconds=max_total,
        network_caps=(net(sec.network if sec else None), ctx.options.network_cap),
    )
    # The caller's endpoint is host-side; the llm env already holds its sandbox-side form.
    # The model key and endpoint reach only the stages that call the model.
    passed = {
        k: v
        for k, v in overrides.items()
        if not (k in _ENDPOINT_VARS and stage_llm_env)
        and (k not in _MODEL_VARS or name in MODEL_STAGES)
    }
    plan = dataclasses.replace(plan, env={**plan.env, **passed, "AIDER_FSM_STAGE": name})
    if sb.llm_address is None and plan.network == NetworkPolicy.LLM:
        # No host endpoint to relay: a remote API needs egress (capped as usual);
        # with no model endpoint at all there is nothing to reach.
        wanted = NetworkPolicy.EGRESS if ctx.remote_llm else NetworkPolicy.NONE
        capped = cap_network(wanted, net(sec.network if sec else None), ctx.options.network_cap)
        plan = dataclasses.replace(plan, network=capped)
    if plan.network == NetworkPolicy.NONE and "OPENAI_API_KEY" in plan.env:
        # A stage that cannot reach the model has no use for its key.
        plan = dataclasses.replace(
            plan, env={k: v for k, v in plan.env.items() if k != "OPENAI_API_KEY"}
        )
    return plan


def run_pipeline_stage(
    ctx: StageContext,
    name: str,
    p: Pass,
    mode: str,
    overrides: Mapping[str, str],
    clear: tuple[str, ...] = (),
) -> StageResult | None:
    """Plan and run one pipeline stage into the pass; None when the contract has no such stage."""
    spec = ctx.pipeline.stage(name)  # type: ignore[arg-type]
    if spec is None:
        return None
    plan = plan_pipeline_stage(ctx, name, spec, p, mode=mode, overrides=overrides)
    ctx.stage_envs[name] = plan.env
    record_stage_network(ctx.run_dir, name, plan.network.value)
    ctx.say(f"stage {name} ({len(plan.cmds)} command(s), network={plan.network.value})")
    result = exec_stage(ctx, plan, p, (*STAGE_OUTPUTS.get(name, ()), *clear))
    setattr(p.verify, name, result)
    if not result.ok:
        p.verify.fail(name)
    return result


def exec_stage(
    ctx: StageContext, plan: StagePlan, p: Pass, clear: tuple[str, ...] = (), prelude: str = ""
) -> StageResult:
    """Run a plan under the policy, housekeeping first; engine errors become runner errors.

    ``prelude``: more runner shell for the first command's exec, before the housekeeping.
    """
    prelude = "\n".join(filter(None, (prelude, housekeeping(p.sandbox_dir, clear))))
    try:
        return run_stage(
            ctx.sandbox,
            plan,
            policy=ctx.policy,
            run_dir=ctx.run_dir,
            record_dir=p.host_dir,
            progress=ctx.say,
            prelude=prelude,
            follow=ctx.options.follow,
        )
    except SandboxLayerError as exc:
        raise RunnerSandboxError(f"stage {plan.name}: {exc}") from exc
