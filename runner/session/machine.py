"""EnvSession: the state machine that runs a contract's stages in one sandbox.

One sandbox per session: bootstrap runs once, deploy's services keep running between
``rollout()`` and ``evaluate()``, and ``evaluate()`` ends with teardown and closes the
sandbox. Every transition and stage is appended to ``events.jsonl`` in the run dir.

This module is the machine and the public flow; the phases live beside it:
``session_sandbox`` (opening the sandbox, ``sandbox.json``), ``session_stages`` (planning
and running a stage), ``bootstrap_phase``, ``rollout_checks``, ``evaluation_phase`` and
``repairs``; ``passes`` holds what a pass brings back from the sandbox.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.contract import ActionsSpec, BootstrapSpec, PipelineSpec
from runner.contract.paths import ROLLOUT_JSON
from runner.errors import RunnerError
from runner.runs.manifest_builder import SessionFacts, collect_samples, write_manifest
from runner.runs.report import write_report
from runner.runs.run_dir import RunDir
from runner.session.bootstrap_cache import CachePlan
from runner.session.bootstrap_phase import run_bootstrap
from runner.session.evaluation_phase import evaluate_stages
from runner.session.facts import keep_sandbox, session_facts
from runner.session.llm import LlmChoice, host_endpoint, parse_llm
from runner.session.options import SessionOptions
from runner.session.passes import (
    Pass,
    export_env_api,
    export_target,
    failure_reason,
    pull_stage_files,
    sync_output,
)
from runner.session.pipeline_stages import StageContext, base_url, policy_for, run_pipeline_stage
from runner.session.repairs import repair_within_budget
from runner.session.results import EvaluationResult, RolloutResult, VerificationResult
from runner.session.rollout_checks import samples_hold
from runner.session.sandbox_open import open_session_sandbox, plan_bootstrap_cache
from runner.session.stages import StageResult
from runner.session.states import State, check_transition
from runner.session.test_counts import tests_metrics
from runner.targets.resolve import TargetRepo
from runner.trust.evidence import truthy
from runner.trust.hint_check import HintsDecision, decide
from runner.trust.hints import hint_env
from sandbox import Sandbox

__all__ = ["EnvSession", "SessionOptions"]

_PIPELINE_STAGES = (
    "auth", "tests", "deploy_setup", "deploy_health", "rollout", "evaluation", "benchmark",
    "deploy_teardown",
)  # fmt: skip

log = logging.getLogger("fsm_runner")


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
        self._model_chosen = False
        self.kept_sandbox: str | None = None
        """The container left running for ``fsm-runner shell`` (``setup(keep=True)``)."""
        self._attempts: dict[str, int] = {}
        self._stage_envs: dict[str, Mapping[str, str]] = {}
        self._tests_stage: StageResult | None = None
        self._repaired = False
        try:  # official commands from README/docs/CI; a broken file there is not fatal
            self._hints = hint_env(repo.path, python_version="3.11")
        except (OSError, ValueError) as exc:
            self._hints = {}
            log.warning("hint extraction failed: %s", exc)
        self._remote_llm = False
        self._policy = policy_for(pipeline, options.unattended)
        self._repairs = itertools.count(1)
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
            dirty=repo.dirty,
            state=self.state.value,
        )
        self.hints_decision = self._decide_hints()  # after session_created: events open with it

    def _decide_hints(self) -> HintsDecision:
        """Require or report official commands (issue 16.2); the evaluation env says which."""
        found = json.loads(self._hints.get("AIDER_FSM_HINTS_JSON") or "[]")
        ev = self.pipeline.stage("evaluation")
        decision = decide(
            self.options.hints,
            found,
            agent_wrote=self.options.contract_by_agent or self._repaired,
            contract_asks=truthy((ev.env if ev else {}).get("AIDER_FSM_REQUIRE_HINTS"))
            or truthy(self.options.extra_env.get("AIDER_FSM_REQUIRE_HINTS")),
        )
        if self._hints:
            self._hints["AIDER_FSM_REQUIRE_HINTS"] = "1" if decision.mode == "require" else "0"
        self.run_dir.event("hints_mode", mode=decision.mode, why=decision.why, found=found)
        return decision

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
        if self.state == State.CLOSED:
            return
        # Each step runs even when the one before raised (issue 15 item 14): a failed
        # teardown still removes the sandbox, a failed removal still records the close.
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(lambda: write_manifest(self._facts()))  # last: hashes the run dir
            cleanup.callback(self._transition, State.CLOSED)
            cleanup.callback(self._remove_sandbox)
            cleanup.callback(collect_samples, self.run_dir, self._sandbox)  # while it is open
            if self._deployed and self._sandbox is not None:
                self._teardown(self._new_pass("final_teardown"), success=True)

    def _remove_sandbox(self) -> None:
        if self._sandbox is not None:
            if self.options.keep:
                self.kept_sandbox = keep_sandbox(self._sandbox, self.run_dir)
            else:
                self._sandbox.close()
            self._sandbox = None

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

    # -- the deploy / rollout / evaluation flow -----------------------------------------

    def _start(self, llm: str | Path | None, overrides: Mapping[str, str]) -> None:
        if self.state == State.CLOSED:
            raise RunnerError("session is closed; call runner_env.setup() again")
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

    def _bootstrap(self, mode: str) -> StageResult | None:
        """Run bootstrap.yml once per session; its expanded env reaches every later stage."""
        if self._bootstrap_env is not None:
            return None
        result, applied = run_bootstrap(
            self._context(),
            mode=mode,
            spec=self.bootstrap_spec,
            actions=self.actions_spec,
            cache=self._cache,
        )
        if result is None or result.ok:
            self._bootstrap_env = applied
            self._transition(State.BOOTSTRAPPED)
        return result

    def _deploy(self, p: Pass, mode: str, overrides: Mapping[str, str]) -> bool:
        """bootstrap -> auth -> tests -> deploy.setup -> deploy.health; False at the first failure."""
        boot = self._bootstrap(mode)
        if boot is not None:
            setattr(p.verify, boot.name, boot)  # bootstrap, or actions when those ran last
            if not boot.ok:
                p.verify.fail(boot.name)
                return False
        for name in ("auth", "tests", "deploy_setup", "deploy_health"):
            res = self._run(name, p, mode, overrides)
            if name == "tests" and res is not None:
                self._tests_stage = res  # scores a contract without an evaluation stage
            if res is not None and not res.ok:
                return False
        self._deployed = True
        self._transition(State.DEPLOYED)
        self._sync_output(".aider_fsm/runtime_env.json", p)
        return True

    def _teardown(self, p: Pass, *, success: bool) -> None:
        if self.options.keep:
            return  # a kept sandbox is left as the run left it, services and all
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
        if artifacts_dir is not None:
            export_target(self.run_dir, artifacts_dir)
        overrides = {str(k): str(v) for k, v in (env_overrides or {}).items()}
        self.run_dir.add_secrets_from_env(overrides)
        self._model_chosen = True  # rollout(None) says "no model", as clearly as a name
        self._start(llm, overrides)
        budget = [max(0, repair_iters)]
        while True:
            result = self._rollout_once(mode, require_samples, overrides, repair_iters)
            if result.ok or not self._repair(result.verify, result.reason, overrides, budget):
                if artifacts_dir is not None:
                    result.artifacts_dir = export_env_api(self.run_dir, artifacts_dir)
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
        mirror, host = self._sync_output(ROLLOUT_JSON, p)
        result.rollout_path = host or mirror
        if res is not None and not res.ok:
            return self._fail_rollout(result, p)
        if require_samples and not samples_hold(
            self._require_sandbox(), self.run_dir, p, mirror, result
        ):
            return self._fail_rollout(result, p, keep_reason=True)
        self._pull_stage_files(p)
        self._rolled_out = True
        self._transition(State.ROLLED_OUT)
        result.ok = True
        self.run_dir.event("rollout_end", ok=True, samples=result.samples)
        return result

    def _fail_rollout(
        self, result: RolloutResult, p: Pass, *, keep_reason: bool = False
    ) -> RolloutResult:
        result.ok = False
        result.failed_stage = p.verify.failed_stage
        if not keep_reason:
            result.reason = failure_reason(p.verify)
        self._pull_stage_files(p)
        if self._deployed:
            self._teardown(p, success=False)
        counts: dict[str, Any] = {}
        scored_by_tests = self.pipeline.stage("evaluation") is None
        if result.failed_stage == "tests" and self._tests_stage is not None and scored_by_tests:
            counts = {"metrics": tests_metrics(self._tests_stage), "metrics_accepted": False}
        self.run_dir.event(
            "rollout_end",
            ok=False,
            failed_stage=result.failed_stage,
            reason=result.reason,
            **counts,
        )
        self._transition(State.FAILED, stage=result.failed_stage)
        return result

    def _repair(
        self,
        verify: VerificationResult,
        reason: str,
        overrides: Mapping[str, str],
        budget: list[int],
    ) -> bool:
        """Let the agent repair the contract; on success the next attempt starts afresh."""
        model, repairer = self.options.repair_model, self.options.repairer
        if budget[0] <= 0:
            return False
        if not model or repairer is None:
            self.run_dir.event("repair_skipped", reason="no opencode_model given to setup()")
            return False
        self._transition(State.REPAIRING, stage=verify.failed_stage)
        self._drop_sandbox()
        contract = repair_within_budget(
            self.repo.path,
            verify=verify,
            reason=reason,
            model=model,
            repairer=repairer,
            options=self.options,
            env=overrides,
            budget=budget,
            attempts=self._repairs,
            run_dir=self.run_dir,
            say=self._say,
        )
        if contract is None:
            self._transition(State.FAILED, stage=verify.failed_stage)
            return False
        self.pipeline, self.bootstrap_spec, self.actions_spec = contract
        self._policy = policy_for(self.pipeline, self.options.unattended)
        self._repaired = True  # the agent's contract must show an official command ran
        self.hints_decision = self._decide_hints()
        self._transition(State.NEW)
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
        if artifacts_dir is not None:
            export_target(self.run_dir, artifacts_dir)
        overrides = {str(k): str(v) for k, v in (env_overrides or {}).items()}
        self.run_dir.add_secrets_from_env(overrides)
        if llm is not None:
            self._model_chosen = True
        elif self._needs_model():
            self.close()
            raise ValueError(
                "missing_llm: this contract has a rollout stage and no model was named: "
                "pass llm= to evaluate(), or call rollout() first (rollout(None) runs without one)"
            )
        self._start(llm, overrides)
        budget = [max(0, repair_iters)]
        p: Pass | None = None
        result = EvaluationResult(ok=False, artifacts_dir=self.run_dir.path / "env_api")
        # Cleanup runs in order and each step even when an earlier one raised (issue 15
        # item 14: a copy-out that raised used to skip teardown and close, leaving the
        # container running and the run dir without its final events).
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(self._write_report_quietly)
            cleanup.callback(self.close)
            cleanup.callback(lambda: self._final_teardown(result.ok))

            def final_pull() -> None:  # the last pass, whichever it is by then
                if p is not None:
                    self._pull_stage_files(p)

            cleanup.callback(final_pull)
            while True:
                p = self._new_pass("evaluation")
                result = self._evaluate_once(p, mode, overrides)
                if result.ok or not self._repair(p.verify, result.reason, overrides, budget):
                    break
                self._start(None, overrides)
        if artifacts_dir is not None:
            result.artifacts_dir = export_env_api(self.run_dir, artifacts_dir)
        return result

    def _final_teardown(self, ok: bool) -> None:
        if self._deployed:
            self._teardown(self._new_pass("final_teardown"), success=ok)

    def _write_report_quietly(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # a report is a convenience
            write_report(self.run_dir.path)

    def _needs_model(self) -> bool:
        """A model is needed only by a stage that calls one: the rollout this call would run.

        The predecessor raised ``missing_llm`` for every evaluate() without a model; a
        tests-only or evaluation-only contract has no stage that could use one (issue 16.6).
        """
        return (
            self.llm is None
            and not self._model_chosen
            and not self._rolled_out
            and self.pipeline.stage("rollout") is not None
        )

    def _evaluate_once(self, p: Pass, mode: str, overrides: Mapping[str, str]) -> EvaluationResult:
        result = EvaluationResult(
            ok=False, artifacts_dir=self.run_dir.path / "env_api", verify=p.verify
        )
        self.run_dir.event("evaluation_start", mode=mode, fast_path=self._rolled_out)
        ok = self._evaluate_pass(p, mode, overrides, result)
        result.ok = result.metrics_accepted = ok
        if ok:
            self._transition(State.EVALUATED)
        else:
            result.failed_stage = p.verify.failed_stage
            if not result.reason:
                result.reason = failure_reason(p.verify)
            self._transition(State.FAILED, stage=result.failed_stage)
        self.run_dir.event(
            "evaluation_end",
            ok=result.ok,
            failed_stage=result.failed_stage,
            reason=result.reason,
            metrics=result.metrics,
            metrics_accepted=result.metrics_accepted,
            hints=result.hints,
        )
        return result

    def _evaluate_pass(
        self, p: Pass, mode: str, overrides: Mapping[str, str], result: EvaluationResult
    ) -> bool:
        """Deploy and roll out unless this session already did, then the evaluation phase."""
        if not self._rolled_out:
            if not self._deployed and not self._deploy(p, mode, overrides):
                return False
            roll = self._run("rollout", p, mode, overrides)
            self._sync_output(ROLLOUT_JSON, p)
            if roll is not None and not roll.ok:
                return False
            if roll is not None:
                self._transition(State.ROLLED_OUT)
        return evaluate_stages(self._context(), p, mode, overrides, result, tests=self._tests_stage)

    # -- one stage alone (fsm-runner run --stage) ----------------------------------------

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
        if self.pipeline.stage(name) is None:  # type: ignore[arg-type]
            present = [n for n in _PIPELINE_STAGES if self.pipeline.stage(n) is not None]  # type: ignore[arg-type]
            raise ValueError(
                f"stage {name!r} is not in this contract; it has: {', '.join(present)}"
            )
        overrides = {str(k): str(v) for k, v in (env_overrides or {}).items()}
        self.run_dir.add_secrets_from_env(overrides)
        self._model_chosen = True
        self._start(llm, overrides)
        p = self._new_pass(name)
        result = EvaluationResult(
            ok=False, artifacts_dir=self.run_dir.path / "env_api", verify=p.verify
        )
        self.run_dir.event("stage_run_start", stage=name, mode=mode)
        try:
            boot = self._bootstrap(mode)
            if boot is not None and not boot.ok:
                setattr(p.verify, boot.name, boot)
                p.verify.fail(boot.name)
            elif name == "evaluation":
                result.ok = evaluate_stages(self._context(), p, mode, overrides, result)
            else:
                res = self._run(name, p, mode, overrides)
                result.ok = res is not None and res.ok
            result.metrics_accepted = result.ok and result.metrics is not None
            if not result.ok:
                result.failed_stage = p.verify.failed_stage or name
                result.reason = result.reason or failure_reason(p.verify)
            self.run_dir.event(
                "stage_run_end",
                stage=name,
                ok=result.ok,
                failed_stage=result.failed_stage,
                reason=result.reason,
                metrics=result.metrics,
                metrics_accepted=result.metrics_accepted,
                hints=result.hints,
            )
        finally:
            self._pull_stage_files(p)
            self.close()
            with contextlib.suppress(OSError, ValueError):
                write_report(self.run_dir.path)
        return result


def _close_quietly(state: dict[str, Any]) -> None:
    """Finalizer: a forgotten session still removes its sandbox (GC or interpreter exit)."""
    sb = state.get("_sandbox")
    if sb is not None:
        with contextlib.suppress(Exception):
            sb.close()
