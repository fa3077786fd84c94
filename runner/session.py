"""EnvSession: the state machine that runs a contract's stages in one sandbox.

One sandbox per session: bootstrap runs once, deploy's services keep running between
``rollout()`` and ``evaluate()``, and ``evaluate()`` ends with teardown and closes the
sandbox. Every transition and stage is appended to ``events.jsonl`` in the run dir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runner.actions import run_actions
from runner.artifacts import RunDir
from runner.audit import audit_evaluation, scripts_named
from runner.bootstrap_cache import (
    CacheMode,
    CachePlan,
    mark_bootstrap_start,
    plan_cache,
    save_snapshot,
)
from runner.contract import (
    ActionsSpec,
    BootstrapSpec,
    PipelineSpec,
    absolutize_env_paths,
    expand_env,
    load_actions,
    load_bootstrap,
    load_pipeline,
)
from runner.contract import validate_metrics as _validate_metrics
from runner.contract import validate_rollout as _validate_rollout
from runner.errors import ContractError, RunnerError
from runner.errors import SandboxError as RunnerSandboxError
from runner.evidence import (
    RUNNER_ROOT_IN_SANDBOX,
    executed_commands,
    helper_env,
    hints_errors,
    runner_package_dir,
    trace_env,
    truthy,
)
from runner.hints import hint_env
from runner.llm import (
    LlmChoice,
    host_endpoint,
    llm_stage_env,
    normalise_base_url,
    parse_llm,
    sandbox_endpoint,
)
from runner.manifest_builder import collect_samples, write_manifest
from runner.outputs_io import (
    FIXED_OUTPUTS,
    STAGE_OUTPUTS,
    housekeeping,
    read_output,
    to_sandbox_rel,
    write_host_output,
)
from runner.policy import CommandPolicy, PolicyConfig
from runner.repairs import try_repair
from runner.report import write_report
from runner.results import EvaluationResult, RolloutResult, VerificationResult
from runner.stage_env import MODEL_STAGES, base_stage_env, limit_override
from runner.stages import (
    DEFAULT_STAGE_NETWORK,
    StagePlan,
    StageResult,
    cap_network,
    plan_stage,
    run_stage,
)
from runner.states import State, check_transition
from runner.targets import TargetRepo
from sandbox import Limits, NetworkPolicy, Sandbox, SandboxSpec, open_sandbox
from sandbox.errors import SandboxError as SandboxLayerError

log = logging.getLogger("fsm_runner")

Progress = Callable[[str], None]
DEFAULT_METRICS_PATH = ".aider_fsm/metrics.json"
_ENDPOINT_VARS = frozenset({"OPENAI_API_BASE", "OPENAI_BASE_URL"})
_MODEL_VARS = _ENDPOINT_VARS | {"OPENAI_API_KEY"}
MODEL_DIR_IN_SANDBOX = "/model"
SANDBOX_BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
}
"""The default image's environment, against which bootstrap.yml's ``$VARS`` expand."""


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
    pipeline_rel: str = "pipeline.yml"
    cache: CacheMode = "on"
    seed: int | None = None
    """``AIDER_FSM_SEED`` for every stage; None derives it from the run id (``fsm-runner replay`` pins it)."""
    """Bootstrap image cache: ``on`` reads and writes, ``read``, or ``off`` (bootstrap_cache.py)."""


@dataclass
class _Pass:
    """One pass through some stages: its host record dir and in-sandbox artifacts dir."""

    name: str
    host_dir: Path
    sandbox_dir: str
    verify: VerificationResult = field(default_factory=VerificationResult)


class EnvSession:
    """A target repo opened as an environment: ``rollout()``, then ``evaluate()``."""

    def __init__(
        self,
        *,
        repo: TargetRepo,
        pipeline: PipelineSpec,
        pipeline_path: Path,
        bootstrap: BootstrapSpec | None,
        actions: ActionsSpec | None = None,
        run_dir: RunDir,
        options: SessionOptions,
    ) -> None:
        self.repo = repo
        self.pipeline = pipeline
        self.pipeline_path = pipeline_path
        self.bootstrap_spec = bootstrap
        self.actions_spec = actions
        self.run_dir = run_dir
        self.run_id = run_dir.run_id
        self.options = options
        self.state = State.NEW
        self.llm: LlmChoice | None = None
        self._sandbox: Sandbox | None = None
        self._bootstrap_env: dict[str, str] | None = None
        self._cache: CachePlan | None = None
        self._deployed = False
        self._rolled_out = False
        self._attempts: dict[str, int] = {}
        self._stage_envs: dict[str, Mapping[str, str]] = {}
        self._runner_root = (
            RUNNER_ROOT_IN_SANDBOX
            if options.backend == "docker"
            else str(runner_package_dir().parent)
        )
        try:  # official commands from README/docs/CI; a broken file there is not fatal
            self._hints = hint_env(repo.path, python_version="3.11")
        except (OSError, ValueError) as exc:
            self._hints = {}
            log.warning("hint extraction failed: %s", exc)
        self._remote_llm = False
        self._policy = _policy_for(pipeline, options.unattended)
        self._repairs = 0
        self._finalizer = weakref.finalize(self, _close_quietly, self.__dict__)
        # Host secrets never reach stages (they get only what the runner passes), but any
        # value that does leak into output is still masked in every file we write.
        self.run_dir.add_secrets_from_env(os.environ)
        for value in options.extra_env.values():
            self.run_dir.add_secret(value)
        self.run_dir.write_json("policy.json", self._policy.describe())
        self.run_dir.event(
            "session_created",
            repo=str(repo.path),
            source=repo.source,
            commit=repo.commit,
            state=self.state.value,
        )

    # -- lifecycle -----------------------------------------------------------------

    @property
    def repo_root(self) -> Path:
        return self.repo.path

    @property
    def artifacts_dir(self) -> Path:
        return self.run_dir.path

    def __enter__(self) -> EnvSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Tear down a running deploy (per policy) and remove the sandbox. Idempotent."""
        if self.state == State.CLOSED:
            return
        try:
            if self._deployed and self._sandbox is not None:
                self._teardown(self._new_pass("final_teardown"), success=True)
        finally:
            collect_samples(self.run_dir, self._sandbox)  # for the manifest, while it is open
            if self._sandbox is not None:
                self._sandbox.close()
                self._sandbox = None
            self._transition(State.CLOSED)
            write_manifest(self)  # last: it hashes every file of the run dir

    def _transition(self, target: State, **why: object) -> None:
        if target == self.state:
            return
        check_transition(self.state, target)
        self.run_dir.event("transition", from_state=self.state.value, to_state=target.value, **why)
        self.state = target

    def _say(self, msg: str) -> None:
        log.info(msg)
        if self.options.progress:
            self.options.progress(msg)

    # -- sandbox ---------------------------------------------------------------------

    def _open_sandbox(self, endpoint: tuple[str, int] | None) -> Sandbox:
        if self._sandbox is not None:
            return self._sandbox
        sec = self.pipeline.security
        base = self.options.limits
        limits = dataclasses.replace(
            base,
            memory=(sec.memory if sec and sec.memory else base.memory),
            cpus=(min(sec.cpus, base.cpus) if sec and sec.cpus else base.cpus),
            pids=(min(sec.pids, base.pids) if sec and sec.pids else base.pids),
        )
        try:
            self._cache = plan_cache(
                self.options.cache,
                repo_root=self.repo.path,
                spec=self.bootstrap_spec,
                backend=self.options.backend,
                workspace_mode=self.options.workspace_mode,
                image=self.options.image,
                extra_env=self.options.extra_env,
                progress=self._say,
            )
        except SandboxLayerError as exc:
            raise RunnerSandboxError(str(exc)) from exc
        spec = SandboxSpec(
            workspace_src=self.repo.path,
            workspace_mode=self.options.workspace_mode,
            image=self._cache.hit_image or self.options.image,
            workspace_in_image=self._cache.hit,
            backend=self.options.backend,
            llm_endpoint=endpoint,
            limits=limits,
            # A local model directory is visible to stages read-only, at a fixed path.
            readonly_mounts={
                # The runner's stage helpers (generic_evaluation, ...), read-only.
                str(runner_package_dir()): f"{RUNNER_ROOT_IN_SANDBOX}/runner",
                **(
                    {str(self.llm.model_dir): MODEL_DIR_IN_SANDBOX}
                    if self.llm is not None and self.llm.model_dir is not None
                    else {}
                ),
            },
            labels={"fsm-runner.run-id": self.run_id},
            # Outputs of earlier runs never enter the sandbox: only this run's can pass.
            exclude=(*SandboxSpec.exclude, *FIXED_OUTPUTS),
        )
        self._say(f"opening {self.options.backend} sandbox for {self.repo.path}")
        try:
            self._sandbox = open_sandbox(spec, progress=self._say)
        except SandboxLayerError as exc:
            raise RunnerSandboxError(str(exc)) from exc
        cache = self._cache.describe()
        self.run_dir.write_json(
            "sandbox.json", {**self._sandbox.describe(), "bootstrap_cache": cache, "stages": {}}
        )
        self.run_dir.event("sandbox_opened", **self._sandbox.describe())
        self.run_dir.event("bootstrap_cache", **cache, inputs=self._cache.inputs)
        return self._sandbox

    def _record_stage_network(self, stage: str, network: str) -> None:
        path = self.run_dir.path / "sandbox.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data.setdefault("stages", {})[stage] = {"network": network}
        self.run_dir.write_json("sandbox.json", data)

    # -- passes and stages -------------------------------------------------------------

    def _new_pass(self, kind: str) -> _Pass:
        n = self._attempts.get(kind, 0) + 1
        self._attempts[kind] = n
        name = f"{kind}_attempt_{n:02d}" if not kind.startswith("final") else kind
        host_dir = self.run_dir.subdir("env_api", name)
        ws = self._sandbox.workspace if self._sandbox else "/workspace"
        return _Pass(name, host_dir, f"{ws}/.aider_fsm/artifacts/{self.run_id}/{name}")

    def _llm_env(self, sb: Sandbox, overrides: Mapping[str, str]) -> dict[str, str]:
        if self.llm is None:
            return {}
        raw_base = _base_url(overrides)
        base_in_sandbox: str | None = None
        if raw_base:
            base_in_sandbox = normalise_base_url(raw_base)
            if sb.llm_address is not None:
                host, port = sb.llm_address
                rewritten, _ = sandbox_endpoint(raw_base, gateway_host=host)
                base_in_sandbox = _with_port(rewritten, port)
        api_key = overrides.get("OPENAI_API_KEY") or os.environ.get("OPENAI_API_KEY")
        if api_key:
            self.run_dir.add_secret(api_key)
        model_dir = MODEL_DIR_IN_SANDBOX if self.llm.kind == "local_hf" else None
        env = llm_stage_env(
            self.llm,
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

    def _run(
        self,
        name: str,
        p: _Pass,
        mode: str,
        overrides: Mapping[str, str],
        clear: tuple[str, ...] = (),
    ) -> StageResult | None:
        spec = self.pipeline.stage(name)  # type: ignore[arg-type]
        if spec is None:
            return None
        sb = self._require_sandbox()
        llm_env = self._llm_env(sb, overrides) if name in MODEL_STAGES else {}
        env = base_stage_env(
            stage=name,
            workspace=sb.workspace,
            run_id=self.run_id,
            artifacts_dir=p.sandbox_dir,
            mode=mode,
            bootstrap_env=self._bootstrap_env or {},
            llm_env=llm_env,
            seed=self.options.seed,
        )
        env.update(helper_env(self._runner_root))
        env.update(self.options.extra_env)
        if name == "evaluation":
            env.update(self._hints)
            env.update(trace_env(self._runner_root))
        sec = self.pipeline.security
        max_cmd = limit_override("AIDER_FSM_MAX_CMD_SECONDS", overrides, spec.env) or (
            sec.max_cmd_seconds if sec else None
        )
        max_total = limit_override("AIDER_FSM_MAX_TOTAL_SECONDS", overrides, spec.env) or (
            sec.max_total_seconds if sec else None
        )
        plan = plan_stage(
            spec,
            env=env,
            workspace=sb.workspace,
            max_cmd_seconds=max_cmd,
            max_total_seconds=max_total,
            network_caps=(_net(sec.network if sec else None), self.options.network_cap),
        )
        # The caller's endpoint is host-side; the llm env already holds its sandbox-side form.
        # The model key and endpoint reach only the stages that call the model.
        passed = {
            k: v
            for k, v in overrides.items()
            if not (k in _ENDPOINT_VARS and llm_env)
            and (k not in _MODEL_VARS or name in MODEL_STAGES)
        }
        plan = dataclasses.replace(plan, env={**plan.env, **passed, "AIDER_FSM_STAGE": name})
        if sb.llm_address is None and plan.network == NetworkPolicy.LLM:
            # No host endpoint to relay: a remote API needs egress (capped as usual);
            # with no model endpoint at all there is nothing to reach.
            wanted = NetworkPolicy.EGRESS if self._remote_llm else NetworkPolicy.NONE
            capped = cap_network(
                wanted, _net(sec.network if sec else None), self.options.network_cap
            )
            plan = dataclasses.replace(plan, network=capped)
        if plan.network == NetworkPolicy.NONE and "OPENAI_API_KEY" in plan.env:
            # A stage that cannot reach the model has no use for its key.
            plan = dataclasses.replace(
                plan, env={k: v for k, v in plan.env.items() if k != "OPENAI_API_KEY"}
            )
        self._stage_envs[name] = plan.env
        self._record_stage_network(name, plan.network.value)
        self._say(f"stage {name} ({len(plan.cmds)} command(s), network={plan.network.value})")
        result = self._exec_stage(sb, plan, p, (*STAGE_OUTPUTS.get(name, ()), *clear))
        setattr(p.verify, name, result)
        if not result.ok:
            p.verify.fail(name)
        return result

    def _exec_stage(
        self, sb: Sandbox, plan: StagePlan, p: _Pass, clear: tuple[str, ...] = ()
    ) -> StageResult:
        prelude = housekeeping(p.sandbox_dir, clear)
        try:
            return run_stage(
                sb,
                plan,
                policy=self._policy,
                run_dir=self.run_dir,
                record_dir=p.host_dir,
                progress=self._say,
                prelude=prelude,
            )
        except SandboxLayerError as exc:
            raise RunnerSandboxError(f"stage {plan.name}: {exc}") from exc

    def _require_sandbox(self) -> Sandbox:
        if self._sandbox is None:
            raise RunnerError("sandbox is not open")
        return self._sandbox

    def _bootstrap(self, mode: str) -> StageResult | None:
        """Run bootstrap.yml once per session; its expanded env reaches every later stage."""
        if self._bootstrap_env is not None:
            return None
        sb = self._require_sandbox()
        spec = self.bootstrap_spec
        bdir = self.run_dir.subdir("env_api", "bootstrap")
        # ``$PATH``/``$HOME`` in bootstrap.yml mean the sandbox's, not the host's.
        seed = {**SANDBOX_BASE_ENV, "AIDER_FSM_REPO_ROOT": sb.workspace}
        if self.options.backend == "local":
            seed = {**os.environ, "AIDER_FSM_REPO_ROOT": sb.workspace}
        applied = absolutize_env_paths(expand_env(spec.env, seed), sb.workspace) if spec else {}
        if spec is not None:
            self.run_dir.write_text(
                "env_api/bootstrap/bootstrap.yml",
                (self.repo.path / ".aider_fsm" / "bootstrap.yml").read_text(errors="replace"),
            )
        self.run_dir.add_secrets_from_env(applied)
        self.run_dir.write_json("env_api/bootstrap/bootstrap_env.json", applied)
        if spec is not None and spec.warnings:
            self.run_dir.write_json(
                "env_api/bootstrap/bootstrap_parse_warnings.json", list(spec.warnings)
            )
        sec = self.pipeline.security
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
            run_id=self.run_id,
            artifacts_dir=f"{sb.workspace}/.aider_fsm/artifacts/{self.run_id}/bootstrap",
            mode=mode,
            bootstrap_env=applied,
            llm_env={},
            seed=self.options.seed,
        )
        env.update(helper_env(self._runner_root))
        env.update(self.options.extra_env)
        plan = StagePlan(
            name="bootstrap",
            cmds=tuple(spec.cmds) if spec else (),
            env=env,
            cwd=f"{sb.workspace}/{spec.workdir}" if spec and spec.workdir else sb.workspace,
            cmd_timeout=float(min(timeouts)) if timeouts else None,
            retries=spec.retries if spec else 0,
            network=cap_network(
                DEFAULT_STAGE_NETWORK["bootstrap"],
                _net(sec.network if sec else None),
                self.options.network_cap,
            ),
        )
        result: StageResult | None = None
        if plan.cmds and not self._restore_bootstrap(sb):
            self._record_stage_network("bootstrap", plan.network.value)
            self._say(f"bootstrap ({len(plan.cmds)} command(s), network={plan.network.value})")
            cache = self._cache
            saving = cache is not None and cache.mode == "on" and bool(cache.key) and not cache.hit
            if saving:
                mark_bootstrap_start(sb)
            started = time.monotonic()
            result = self._exec_stage(
                sb, plan, _Pass("bootstrap", bdir, plan.env["AIDER_FSM_ARTIFACTS_DIR"])
            )
            if saving and result.ok and cache is not None:
                self._save_bootstrap(sb, cache, time.monotonic() - started)
        if (result is None or result.ok) and self.actions_spec and self.actions_spec.actions:
            self._say(f"actions ({len(self.actions_spec.actions)})")
            self._record_stage_network("actions", plan.network.value)
            result = run_actions(
                sb,
                self.actions_spec,
                plan=plan,
                policy=self._policy,
                run_dir=self.run_dir,
                record_dir=self.run_dir.subdir("env_api", "actions"),
                progress=self._say,
            )
        if result is None or result.ok:
            self._bootstrap_env = applied
            self._transition(State.BOOTSTRAPPED)
        return result

    def _restore_bootstrap(self, sb: Sandbox) -> bool:
        """On a cache hit the sandbox runs the snapshot: bootstrap's effects are there."""
        cache = self._cache
        if cache is None or not cache.hit:
            return False
        self._say(f"bootstrap: cache hit {cache.key[:12]} ({cache.hit_image}), skipped")
        self.run_dir.event("bootstrap_skipped", key=cache.key, image=cache.hit_image)
        return True

    def _save_bootstrap(self, sb: Sandbox, cache: CachePlan, seconds: float) -> None:
        self._say(f"bootstrap: saving snapshot {cache.key[:12]}")
        record = save_snapshot(
            cache,
            sb,
            bootstrap_seconds=seconds,
            exclude=(".aider_fsm/artifacts", *FIXED_OUTPUTS),
            labels={"fsm-runner.bootstrap-repo": str(self.repo.path)},
        )
        self.run_dir.event("bootstrap_cache_saved", key=cache.key, **record)
        path = self.run_dir.path / "sandbox.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data["bootstrap_cache"] = {**cache.describe(), **record}
        self.run_dir.write_json("sandbox.json", data)

    def _teardown(self, p: _Pass, *, success: bool) -> None:
        deploy = self.pipeline.deploy
        policy = deploy.teardown_policy if deploy else "always"
        wanted = (
            policy == "always"
            or (policy == "on_success" and success)
            or (policy == "on_failure" and not success)
        )
        if wanted and self._sandbox is not None:
            with contextlib.suppress(RunnerError):
                self._run("deploy_teardown", p, "smoke", {})
                self._pull_stage_files(p)
        self._deployed = False

    # -- the deploy / rollout / evaluation flow -----------------------------------------

    def _start(self, llm: str | Path | None, overrides: Mapping[str, str]) -> None:
        if self.state == State.CLOSED:
            raise RunnerError("session is closed; call runner_env.setup() again")
        if llm is not None:
            self.llm = parse_llm(llm)
        endpoint = self._endpoint(overrides)
        self._open_sandbox(endpoint)

    def _endpoint(self, overrides: Mapping[str, str]) -> tuple[str, int] | None:
        """The host endpoint the ``llm`` relay forwards to (a model server on loopback)."""
        raw = _base_url(overrides)
        if not raw or self.llm is None:
            return None
        endpoint = host_endpoint(raw)
        # A remote API (not on this host) cannot be relayed without breaking TLS: stages
        # that need the model then get ordinary egress, recorded per stage in sandbox.json.
        self._remote_llm = endpoint is None
        return endpoint

    def _deploy(self, p: _Pass, mode: str, overrides: Mapping[str, str]) -> bool:
        """bootstrap -> auth -> tests -> deploy.setup -> deploy.health; False at the first failure."""
        boot = self._bootstrap(mode)
        if boot is not None:
            setattr(p.verify, boot.name, boot)  # bootstrap, or actions when those ran last
            if not boot.ok:
                p.verify.fail(boot.name)
                return False
        for name in ("auth", "tests", "deploy_setup", "deploy_health"):
            res = self._run(name, p, mode, overrides)
            if res is not None and not res.ok:
                return False
        self._deployed = True
        self._transition(State.DEPLOYED)
        self._sync_output(".aider_fsm/runtime_env.json", p)
        return True

    def _sync_output(self, rel: str, p: _Pass) -> tuple[Path | None, Path | None]:
        """Read an output from the sandbox into the pass's mirror and the host's .aider_fsm/."""
        sb = self._require_sandbox()
        data = read_output(sb, rel)
        mirror = p.host_dir / "outputs" / rel
        if data is not None:
            self.run_dir.write_bytes(mirror.relative_to(self.run_dir.path), data)
        host = write_host_output(
            self.repo.path, rel, None if data is None else self.run_dir.redact_bytes(data)
        )
        return (mirror if data is not None else None), host

    def rollout(
        self,
        llm: str | Path,
        *,
        mode: str = "smoke",
        require_samples: bool = False,
        env_overrides: Mapping[str, str] | None = None,
        artifacts_dir: Path | None = None,
        repair_iters: int = 3,
    ) -> RolloutResult:
        """Deploy (bootstrap, setup, health), then run the rollout stage and check its samples.

        On failure, up to ``repair_iters`` agent repairs of the contract, each followed by a
        fresh sandbox and a rerun.
        """
        overrides = {str(k): str(v) for k, v in (env_overrides or {}).items()}
        self.run_dir.add_secrets_from_env(overrides)
        self._start(llm, overrides)
        budget = [max(0, repair_iters)]
        while True:
            result = self._rollout_once(mode, require_samples, overrides, repair_iters)
            if result.ok or not self._repair(result.verify, result.reason, overrides, budget):
                return result
            self._start(None, overrides)

    def _rollout_once(
        self, mode: str, require_samples: bool, overrides: Mapping[str, str], repair_iters: int
    ) -> RolloutResult:
        p = self._new_pass("rollout")
        self.run_dir.event(
            "rollout_start",
            mode=mode,
            require_samples=require_samples,
            llm_kind=self.llm.kind if self.llm else None,
            repair_iters=repair_iters,
        )
        result = RolloutResult(
            ok=False, artifacts_dir=self.run_dir.path / "env_api", verify=p.verify
        )
        if not self._deployed and not self._deploy(p, mode, overrides):
            return self._fail_rollout(result, p)
        res = self._run("rollout", p, mode, overrides)
        mirror, host = self._sync_output(".aider_fsm/rollout.json", p)
        result.rollout_path = host or mirror
        if res is not None and not res.ok:
            return self._fail_rollout(result, p)
        if require_samples:
            try:
                report = self._check_samples(p, mirror)
            except ContractError as exc:
                p.verify.fail("rollout")
                result.reason = str(exc)
                self.run_dir.write_text(f"env_api/{p.name}/rollout_contract_error.txt", str(exc))
                return self._fail_rollout(result, p, keep_reason=True)
            result.samples = report.samples
        self._pull_stage_files(p)
        self._rolled_out = True
        self._transition(State.ROLLED_OUT)
        result.ok = True
        self.run_dir.event("rollout_end", ok=True, samples=result.samples)
        return result

    def _repair(
        self,
        verify: VerificationResult,
        reason: str,
        overrides: Mapping[str, str],
        budget: list[int],
    ) -> bool:
        """Let the agent repair the contract; on success the next attempt starts afresh."""
        model = self.options.repair_model
        if budget[0] <= 0:
            return False
        if not model:
            self.run_dir.event("repair_skipped", reason="no opencode_model given to setup()")
            return False
        self._transition(State.REPAIRING, stage=verify.failed_stage)
        self._drop_sandbox()
        while budget[0] > 0:
            budget[0] -= 1
            self._repairs += 1
            self._say(f"repair {self._repairs}: asking the agent to fix {verify.failed_stage}")
            ok, why = try_repair(
                self.repo.path,
                verify=verify,
                reason=reason,
                model=model,
                run_dir=self.run_dir,
                attempt=self._repairs,
                env=overrides,
                pipeline_rel=self.options.pipeline_rel,
                image=self.options.image,
            )
            self.run_dir.event("repair_end", attempt=self._repairs, ok=ok, reason=why)
            if ok and self._reload_contract():
                self._transition(State.NEW)
                return True
        self._transition(State.FAILED, stage=verify.failed_stage)
        return False

    def _reload_contract(self) -> bool:
        """Load the repaired contract; a contract that does not load is a failed repair."""
        try:
            pipeline = load_pipeline(self.repo.path / self.options.pipeline_rel)
            bootstrap = load_bootstrap(self.repo.path / ".aider_fsm" / "bootstrap.yml")
            actions = load_actions(self.repo.path / ".aider_fsm" / "actions.yml")
        except ContractError as exc:
            self.run_dir.event("repair_rejected", reason=str(exc))
            return False
        self.pipeline, self.bootstrap_spec, self.actions_spec = pipeline, bootstrap, actions
        self._policy = _policy_for(pipeline, self.options.unattended)
        return True

    def _drop_sandbox(self) -> None:
        """Tear down and remove the sandbox; the next attempt gets a fresh copy of the repo."""
        if self._deployed:
            self._teardown(self._new_pass("teardown"), success=False)
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None
        self._bootstrap_env = None
        self._rolled_out = False

    def _check_samples(self, p: _Pass, rollout_mirror: Path | None) -> Any:
        if rollout_mirror is None:
            raise ContractError(
                "missing_rollout_json: the rollout stage did not write .aider_fsm/rollout.json",
                file=".aider_fsm/rollout.json",
            )
        sb = self._require_sandbox()
        outputs = p.host_dir / "outputs"
        try:
            manifest = json.loads(rollout_mirror.read_text())
            raw = (
                manifest.get("paths", {}).get("samples_jsonl")
                if isinstance(manifest, dict)
                else None
            )
        except (ValueError, AttributeError):
            raw = None
        rel = (
            to_sandbox_rel(str(raw), sb.workspace) if isinstance(raw, str) and raw.strip() else None
        )
        if rel is not None:
            dest = outputs / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                sb.pull(rel, dest.parent)
            except FileNotFoundError:
                pass  # validate_rollout reports samples_jsonl_not_found
            except SandboxLayerError as exc:  # a link or a fifo: never followed
                raise ContractError(
                    f"samples file refused: {exc}",
                    file=".aider_fsm/rollout.json",
                    field="paths.samples_jsonl",
                    found=raw,
                ) from exc
        try:
            return _validate_rollout(outputs, rollout_mirror, workspace=sb.workspace)
        finally:
            self.run_dir.scrub_tree(outputs)  # a secret echoed into a sample stays masked

    def _fail_rollout(
        self, result: RolloutResult, p: _Pass, *, keep_reason: bool = False
    ) -> RolloutResult:
        result.ok = False
        result.failed_stage = p.verify.failed_stage
        if not keep_reason:
            stage = getattr(p.verify, p.verify.failed_stage or "", None)
            result.reason = (
                stage.reason if isinstance(stage, StageResult) else (p.verify.failed_stage or "")
            )
        self._pull_stage_files(p)
        if self._deployed:
            self._teardown(p, success=False)
        self.run_dir.event(
            "rollout_end", ok=False, failed_stage=result.failed_stage, reason=result.reason
        )
        self._transition(State.FAILED, stage=result.failed_stage)
        return result

    def evaluate(
        self,
        llm: str | Path | None = None,
        *,
        mode: str = "smoke",
        env_overrides: Mapping[str, str] | None = None,
        artifacts_dir: Path | None = None,
        repair_iters: int = 3,
    ) -> EvaluationResult:
        """Run evaluation (after deploy + rollout when this session has not rolled out), check
        metrics, run the benchmark stage if any, then tear down and close the sandbox."""
        overrides = {str(k): str(v) for k, v in (env_overrides or {}).items()}
        self.run_dir.add_secrets_from_env(overrides)
        if llm is None and self.llm is None:
            self.close()
            raise ValueError("missing_llm: pass llm= to evaluate() or call rollout() first")
        self._start(llm, overrides)
        budget = [max(0, repair_iters)]
        p: _Pass | None = None
        result = EvaluationResult(ok=False, artifacts_dir=self.run_dir.path / "env_api")
        try:
            while True:
                p = self._new_pass("evaluation")
                result = self._evaluate_once(p, mode, overrides)
                if result.ok or not self._repair(p.verify, result.reason, overrides, budget):
                    break
                self._start(None, overrides)
        finally:
            if p is not None:
                self._pull_stage_files(p)
            if self._deployed:
                self._teardown(self._new_pass("final_teardown"), success=result.ok)
            self.close()
            with contextlib.suppress(OSError, ValueError):  # a report is a convenience
                write_report(self.run_dir.path)
        return result

    def _evaluate_once(self, p: _Pass, mode: str, overrides: Mapping[str, str]) -> EvaluationResult:
        result = EvaluationResult(
            ok=False, artifacts_dir=self.run_dir.path / "env_api", verify=p.verify
        )
        self.run_dir.event("evaluation_start", mode=mode, fast_path=self._rolled_out)
        ok = self._evaluate_pass(p, mode, overrides, result)
        result.ok = ok
        if ok:
            self._transition(State.EVALUATED)
        else:
            result.failed_stage = p.verify.failed_stage
            if not result.reason:
                stage = getattr(p.verify, p.verify.failed_stage or "", None)
                result.reason = (
                    stage.reason
                    if isinstance(stage, StageResult)
                    else "; ".join(p.verify.metrics_errors) or (p.verify.failed_stage or "")
                )
            self._transition(State.FAILED, stage=result.failed_stage)
        self.run_dir.event(
            "evaluation_end",
            ok=result.ok,
            failed_stage=result.failed_stage,
            reason=result.reason,
            metrics=result.metrics,
        )
        return result

    def _evaluate_pass(
        self, p: _Pass, mode: str, overrides: Mapping[str, str], result: EvaluationResult
    ) -> bool:
        if not self._rolled_out:
            if not self._deployed and not self._deploy(p, mode, overrides):
                return False
            roll = self._run("rollout", p, mode, overrides)
            self._sync_output(".aider_fsm/rollout.json", p)
            if roll is not None and not roll.ok:
                return False
            if roll is not None:
                self._transition(State.ROLLED_OUT)
        ev = self.pipeline.evaluation
        metrics_rel = ev.metrics_path if ev and ev.metrics_path else DEFAULT_METRICS_PATH
        required = list(ev.required_keys) if ev and ev.required_keys else []
        if self.options.require_metrics and "ok" not in required:
            required.append("ok")
        if self.pipeline.stage("evaluation") is None:
            if self.options.require_metrics:
                result.reason = (
                    "pipeline.yml has no evaluation commands, so no metrics can be produced"
                )
                p.verify.fail("evaluation")
                return False
            return True
        res = self._run("evaluation", p, mode, overrides, clear=(metrics_rel,))
        if res is not None and not res.ok:
            return False
        if not self._hints_hold(p, result):
            return False
        metrics = self._collect_metrics(p, metrics_rel, required, "evaluation", result)
        if metrics is None:
            return False
        if not self._audit_holds(p, metrics, metrics_rel, result):
            return False
        result.metrics = metrics
        p.verify.metrics = metrics
        bench = self.pipeline.benchmark
        if bench is not None and bench.commands:
            bench_rel = bench.metrics_path
            bres = self._run(
                "benchmark", p, mode, overrides, clear=(bench_rel,) if bench_rel else ()
            )
            if bres is not None and not bres.ok:
                return False
            if (
                bench_rel
                and self._collect_metrics(
                    p, bench_rel, list(bench.required_keys or []), "benchmark", result
                )
                is None
            ):
                return False
        return True

    def _audit_holds(
        self, p: _Pass, metrics: Mapping[str, Any], metrics_rel: str, result: EvaluationResult
    ) -> bool:
        """The evaluation audit (runner/audit.py) over what the runner saw run."""
        if self.options.audit == "off" or not self.options.require_metrics:
            return True
        self._pull_stage_files(p)
        stage = p.verify.evaluation
        findings = audit_evaluation(
            metrics,
            metrics_rel=metrics_rel,
            executed=executed_commands(stage, p.host_dir / "stage_files"),
            scripts=scripts_named([r.cmd for r in stage.results] if stage else [], self.repo.path),
        )
        if not findings:
            return True
        text = "; ".join(findings)
        self.run_dir.write_text(f"env_api/{p.name}/evaluation_audit_error.txt", text)
        self.run_dir.event("audit", findings=findings, mode=self.options.audit)
        if self.options.audit == "warn-only":
            return True
        p.verify.metrics_errors.extend(findings)
        p.verify.fail("evaluation")
        result.reason = text
        return False

    def _hints_hold(self, p: _Pass, result: EvaluationResult) -> bool:
        """When the evaluation env requires hints, check hints_*.json against our evidence."""
        env = self._stage_envs.get("evaluation", {})
        if not truthy(env.get("AIDER_FSM_REQUIRE_HINTS")):
            return True
        used, _ = self._sync_output(".aider_fsm/hints_used.json", p)
        ran, _ = self._sync_output(".aider_fsm/hints_run.json", p)
        self._pull_stage_files(p)
        files = p.host_dir / "stage_files"
        absent = p.host_dir / "outputs" / ".aider_fsm"
        errors = hints_errors(
            hints_used_path=used or absent / "hints_used.json",
            hints_run_path=ran or absent / "hints_run.json",
            env=env,
            executed=executed_commands(p.verify.evaluation, files),
            stage_files=files,
        )
        if not errors:
            return True
        p.verify.metrics_errors.extend(errors)
        p.verify.fail("evaluation")
        result.reason = "; ".join(errors)
        self.run_dir.write_text(f"env_api/{p.name}/hints_requirement_error.txt", result.reason)
        return False

    def _collect_metrics(
        self, p: _Pass, rel: str, required: list[str], stage: str, result: EvaluationResult
    ) -> dict[str, Any] | None:
        mirror, host = self._sync_output(rel, p)
        if stage == "evaluation":
            result.metrics_path = host or mirror
            p.verify.metrics_path = result.metrics_path
        try:
            if mirror is None:
                raise ContractError(
                    f"metrics_file_missing: {rel} was not written by this run's {stage} stage",
                    file=rel,
                )
            return _validate_metrics(mirror, required)
        except ContractError as exc:
            p.verify.metrics_errors.append(f"{stage}.{exc.message}")
            p.verify.fail("metrics")
            result.reason = str(exc)
            self.run_dir.write_text(f"env_api/{p.name}/metrics_contract_error.txt", str(exc))
            return None

    def _pull_stage_files(self, p: _Pass) -> None:
        """Bring the stage's own artifacts dir back (safe pull), scrubbed of secrets."""
        if self._sandbox is None:
            return
        rel = to_sandbox_rel(p.sandbox_dir, self._sandbox.workspace)
        if rel is None:
            return
        dest = p.host_dir / "stage_files"
        try:
            self._sandbox.pull(rel, dest)
        except FileNotFoundError:
            return
        except SandboxLayerError as exc:
            self.run_dir.event("stage_files_refused", pass_=p.name, reason=str(exc))
            return
        self.run_dir.scrub_tree(dest)


def _policy_for(pipeline: PipelineSpec, unattended: Literal["strict", "guided"]) -> CommandPolicy:
    security = pipeline.security
    return CommandPolicy(
        PolicyConfig(
            mode=security.mode if security else "safe",
            allowlist=tuple(security.allowlist) if security else (),
            denylist=tuple(security.denylist) if security else (),
            unattended=unattended,
        )
    )


def _base_url(overrides: Mapping[str, str]) -> str | None:
    """The model endpoint: caller overrides first, then the process environment."""
    for env in (overrides, os.environ):
        for name in ("OPENAI_API_BASE", "OPENAI_BASE_URL"):
            if env.get(name):
                return env[name]
    return None


def _net(value: str | None) -> NetworkPolicy | None:
    return NetworkPolicy(value) if value else None


def _with_port(url: str, port: int) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    return urlunsplit((parts.scheme, f"{host}:{port}", parts.path, parts.query, parts.fragment))


def _close_quietly(state: dict[str, Any]) -> None:
    """Finalizer: a forgotten session still removes its sandbox (GC or interpreter exit)."""
    sb = state.get("_sandbox")
    if sb is not None:
        with contextlib.suppress(Exception):
            sb.close()
