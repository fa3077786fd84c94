"""EnvSession: the state machine that runs a contract's stages in one sandbox.

One sandbox per session: bootstrap runs once, deploy's services keep running between
``rollout()`` and ``evaluate()``, and ``evaluate()`` ends with teardown and closes the
sandbox. Every transition and stage is appended to ``events.jsonl`` in the run dir.

This module is the machine: its state and transitions, the sandbox and passes it runs
stages in, and the public calls. Their flows live beside it and drive it:
``rollout_flow``, ``evaluate_flow`` (and ``run_stage``), ``deploy_flow`` (bootstrap,
deploy, teardown), ``repair_flow`` (between tries) and ``closing``. The phases those use
(``sandbox_open``, ``pipeline_stages``, ``bootstrap_phase``, ``rollout_checks``,
``evaluation_phase``, ``repairs``) take a ``StageContext`` and never see the machine;
``passes`` holds what a pass brings back from the sandbox.
"""

from __future__ import annotations

import itertools
import logging
import os
import weakref
from collections.abc import Mapping
from pathlib import Path

from runner.contract import ActionsSpec, BootstrapSpec, PipelineSpec
from runner.errors import RunnerError
from runner.runs.manifest_builder import SessionFacts
from runner.runs.run_dir import RunDir
from runner.session.bootstrap_cache import CachePlan
from runner.session.closing import close_quietly, close_session
from runner.session.evaluate_flow import (
    evaluate_with_repairs,
    needs_model,
    require_stage,
    run_single_stage,
)
from runner.session.evaluation_phase import decide_hints_mode, found_hints
from runner.session.facts import session_facts
from runner.session.llm import LlmChoice, host_endpoint, parse_llm
from runner.session.options import SessionOptions
from runner.session.passes import Pass, export_target, pull_stage_files, sync_output
from runner.session.pipeline_stages import StageContext, base_url, policy_for, run_pipeline_stage
from runner.session.results import EvaluationResult, RolloutResult
from runner.session.rollout_flow import rollout_with_repairs
from runner.session.sandbox_open import open_session_sandbox, plan_bootstrap_cache
from runner.session.stages import StageResult
from runner.session.states import State, check_transition
from runner.targets.resolve import TargetRepo
from runner.trust.hint_check import HintsDecision
from sandbox import Sandbox

__all__ = ["EnvSession", "SessionOptions"]

log = logging.getLogger("fsm_runner")


class EnvSession:
    """A target repo opened as an environment: ``rollout()``, then ``evaluate()``.

    The ``_`` members are the machine's own state and steps; the flow modules beside it
    (``rollout_flow``, ``evaluate_flow``, ``deploy_flow``, ``repair_flow``, ``closing``)
    use them, nothing else does.
    """

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
        self._model_chosen = False
        self.kept_sandbox: str | None = None
        """The container left running for ``fsm-runner shell`` (``setup(keep=True)``)."""
        self._attempts: dict[str, int] = {}
        self._stage_envs: dict[str, Mapping[str, str]] = {}
        self._tests_stage: StageResult | None = None
        self._repaired = False
        self._hints = found_hints(repo.path)
        self._remote_llm = False
        self._policy = policy_for(pipeline, options.unattended)
        self._repairs = itertools.count(1)
        self._finalizer = weakref.finalize(self, close_quietly, self.__dict__)
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
            dirty=repo.dirty,
            state=self.state.value,
        )
        self.hints_decision = self._decide_hints()  # after session_created: events open with it

    def _decide_hints(self) -> HintsDecision:
        return decide_hints_mode(
            self._hints,
            self.pipeline,
            option=self.options.hints,
            extra_env=self.options.extra_env,
            agent_wrote=self.options.contract_by_agent or self._repaired,
            run_dir=self.run_dir,
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
        """Tear down a running deploy (per policy) and remove the sandbox. Idempotent.

        With ``keep`` the sandbox is left running as it is (no teardown), for
        ``fsm-runner shell``; ``kept_sandbox`` then names it.
        """
        close_session(self)

    def _facts(self) -> SessionFacts:
        """This session as its manifest records it."""
        return session_facts(self.run_dir, self.repo, self.llm, self.pipeline, self.options)

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

    # -- sandbox, passes and stages ----------------------------------------------------

    def _open_sandbox(self, endpoint: tuple[str, int] | None) -> Sandbox:
        if self._sandbox is not None:
            return self._sandbox
        self._cache = plan_bootstrap_cache(
            self.options, self.repo.path, self.bootstrap_spec, self._say
        )
        self._sandbox = open_session_sandbox(
            repo_root=self.repo.path,
            pipeline=self.pipeline,
            options=self.options,
            cache=self._cache,
            llm=self.llm,
            endpoint=endpoint,
            run_id=self.run_id,
            run_dir=self.run_dir,
            say=self._say,
        )
        return self._sandbox

    def _require_sandbox(self) -> Sandbox:
        if self._sandbox is None:
            raise RunnerError("sandbox is not open")
        return self._sandbox

    def _context(self) -> StageContext:
        """What the phase modules need of this session, as it is now."""
        return StageContext(
            sandbox=self._require_sandbox(),
            pipeline=self.pipeline,
            policy=self._policy,
            options=self.options,
            repo_root=self.repo.path,
            run_dir=self.run_dir,
            say=self._say,
            llm=self.llm,
            remote_llm=self._remote_llm,
            hints=self._hints,
            bootstrap_env=self._bootstrap_env or {},
            stage_envs=self._stage_envs,
            hints_decision=self.hints_decision,
        )

    def _new_pass(self, kind: str) -> Pass:
        n = self._attempts.get(kind, 0) + 1
        self._attempts[kind] = n
        name = f"{kind}_attempt_{n:02d}" if not kind.startswith("final") else kind
        host_dir = self.run_dir.subdir("env_api", name)
        ws = self._sandbox.workspace if self._sandbox else "/workspace"
        return Pass(name, host_dir, f"{ws}/.aider_fsm/artifacts/{self.run_id}/{name}")

    def _run(
        self, name: str, p: Pass, mode: str, overrides: Mapping[str, str]
    ) -> StageResult | None:
        return run_pipeline_stage(self._context(), name, p, mode, overrides)

    def _sync_output(self, rel: str, p: Pass) -> tuple[Path | None, Path | None]:
        return sync_output(self._require_sandbox(), self.run_dir, self.repo.path, rel, p)

    def _pull_stage_files(self, p: Pass) -> None:
        pull_stage_files(self._sandbox, self.run_dir, p)

    # -- the public calls: rollout(), evaluate(), run_stage() -------------------------------

    def _require_open(self) -> None:
        if self.state == State.CLOSED:
            raise RunnerError("session is closed; call runner_env.setup() again")

    def _start(self, llm: str | Path | None, overrides: Mapping[str, str]) -> None:
        self._require_open()
        if llm is not None:
            self.llm = parse_llm(llm)
        if self.state == State.FAILED:
            # A stage failure is a result, and the next call starts again from what this
            # sandbox still holds (issue 16.1): its bootstrap, not the failed deploy.
            again = State.BOOTSTRAPPED if self._bootstrap_env is not None else State.NEW
            self._transition(again, retry=True)
        endpoint = self._endpoint(overrides)
        self._open_sandbox(endpoint)

    def _endpoint(self, overrides: Mapping[str, str]) -> tuple[str, int] | None:
        """The host endpoint the ``llm`` relay forwards to (a model server on loopback)."""
        raw = base_url(overrides)
        if not raw or self.llm is None:
            return None
        endpoint = host_endpoint(raw)
        # A remote API (not on this host) cannot be relayed without breaking TLS: stages
        # that need the model then get ordinary egress, recorded per stage in sandbox.json.
        self._remote_llm = endpoint is None
        return endpoint

    def _overrides(
        self, env_overrides: Mapping[str, str] | None, artifacts_dir: str | Path | None = None
    ) -> dict[str, str]:
        """The caller's env overrides as strings, their values masked in every file; the
        target exported to ``artifacts_dir`` first when the call names one."""
        if artifacts_dir is not None:
            export_target(self.run_dir, artifacts_dir)
        overrides = {str(k): str(v) for k, v in (env_overrides or {}).items()}
        self.run_dir.add_secrets_from_env(overrides)
        return overrides

    def rollout(
        self,
        llm: str | Path | None,
        *,
        mode: str = "smoke",
        require_samples: bool = False,
        env_overrides: Mapping[str, str] | None = None,
        artifacts_dir: str | Path | None = None,
        repair_iters: int = 3,
    ) -> RolloutResult:
        """Deploy (bootstrap, setup, health), then run the rollout stage and check its samples.

        ``llm=None`` runs without a model (a contract whose stages call none). On failure,
        up to ``repair_iters`` agent repairs of the contract, each followed by a fresh
        sandbox and a rerun.
        """
        overrides = self._overrides(env_overrides, artifacts_dir)
        self._model_chosen = True  # rollout(None) says "no model", as clearly as a name
        self._start(llm, overrides)
        return rollout_with_repairs(
            self, mode, require_samples, overrides, artifacts_dir, repair_iters
        )

    def evaluate(
        self,
        llm: str | Path | None = None,
        *,
        mode: str = "smoke",
        env_overrides: Mapping[str, str] | None = None,
        artifacts_dir: str | Path | None = None,
        repair_iters: int = 3,
    ) -> EvaluationResult:
        """Run evaluation (after deploy + rollout when this session has not rolled out), check
        metrics, run the benchmark stage if any, then tear down and close the sandbox."""
        overrides = self._overrides(env_overrides, artifacts_dir)
        self._require_open()  # a closed session says so, before any missing model
        if llm is not None:
            self._model_chosen = True
        elif needs_model(self):
            self.close()
            raise ValueError(
                "missing_llm: this contract has a rollout stage and no model was named: "
                "pass llm= to evaluate(), or call rollout() first (rollout(None) runs without one)"
            )
        self._start(llm, overrides)
        return evaluate_with_repairs(self, mode, overrides, artifacts_dir, repair_iters)

    def run_stage(
        self,
        name: str,
        llm: str | Path | None = None,
        *,
        mode: str = "smoke",
        env_overrides: Mapping[str, str] | None = None,
    ) -> EvaluationResult:
        """Bootstrap (from its snapshot when cached), then only the stage ``name``, then close.

        The debugging loop of issue 16.7: no deploy and no rollout run first, so their
        outputs are not there; ``evaluation`` gets its checks (metrics, official commands,
        audit). Returns an ``EvaluationResult`` whatever the stage.

        Raises:
            ValueError: the contract has no stage ``name``.
        """
        require_stage(self.pipeline, name)
        overrides = self._overrides(env_overrides)
        self._model_chosen = True
        self._start(llm, overrides)
        return run_single_stage(self, name, mode, overrides)
