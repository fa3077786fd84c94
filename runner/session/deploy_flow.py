"""The deploy in the session's sandbox: brought up once, torn down by policy, dropped.

bootstrap (once per sandbox) -> auth -> tests -> deploy.setup -> deploy.health bring it
up; ``deploy.teardown`` takes it down as the contract's ``teardown_policy`` says. These
are steps of :class:`~runner.session.machine.EnvSession` (they make its transitions),
kept apart from the machine so that it holds the states and the public calls only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from runner.errors import RunnerError
from runner.session.bootstrap_phase import run_bootstrap
from runner.session.passes import Pass
from runner.session.stages import StageResult
from runner.session.states import State

if TYPE_CHECKING:
    from runner.session.machine import EnvSession

DEPLOY_STAGES = ("auth", "tests", "deploy_setup", "deploy_health")


def bootstrap_once(sess: EnvSession, mode: str) -> StageResult | None:
    """Run bootstrap.yml once per sandbox; its expanded env reaches every later stage."""
    if sess._bootstrap_env is not None:
        return None
    result, applied = run_bootstrap(
        sess._context(),
        mode=mode,
        spec=sess.bootstrap_spec,
        actions=sess.actions_spec,
        cache=sess._cache,
    )
    if result is None or result.ok:
        sess._bootstrap_env = applied
        sess._transition(State.BOOTSTRAPPED)
    return result


def deploy(sess: EnvSession, p: Pass, mode: str, overrides: Mapping[str, str]) -> bool:
    """bootstrap -> auth -> tests -> deploy.setup -> deploy.health; False at the first failure."""
    boot = bootstrap_once(sess, mode)
    if boot is not None:
        setattr(p.verify, boot.name, boot)  # bootstrap, or actions when those ran last
        if not boot.ok:
            p.verify.fail(boot.name)
            return False
    for name in DEPLOY_STAGES:
        res = sess._run(name, p, mode, overrides)
        if name == "tests" and res is not None:
            sess._tests_stage = res  # scores a contract without an evaluation stage
        if res is not None and not res.ok:
            return False
    sess._deployed = True
    sess._transition(State.DEPLOYED)
    sess._sync_output(".aider_fsm/runtime_env.json", p)
    return True


def teardown(sess: EnvSession, p: Pass, *, success: bool) -> None:
    """Run ``deploy.teardown`` when the policy asks for it; the deploy is gone either way."""
    if sess.options.keep:
        return  # a kept sandbox is left as the run left it, services and all
    deploy_spec = sess.pipeline.deploy
    policy = deploy_spec.teardown_policy if deploy_spec else "always"
    wanted = (
        policy == "always"
        or (policy == "on_success" and success)
        or (policy == "on_failure" and not success)
    )
    if wanted and sess._sandbox is not None:
        with contextlib.suppress(RunnerError):
            sess._run("deploy_teardown", p, "smoke", {})
            sess._pull_stage_files(p)
    sess._deployed = False


def final_teardown(sess: EnvSession, *, success: bool) -> None:
    """The teardown at the end of a session, in a pass of its own."""
    if sess._deployed:
        teardown(sess, sess._new_pass("final_teardown"), success=success)


def drop_sandbox(sess: EnvSession) -> None:
    """Tear down and remove the sandbox; the next attempt gets a fresh copy of the repo."""
    if sess._deployed:
        teardown(sess, sess._new_pass("teardown"), success=False)
    if sess._sandbox is not None:
        sess._sandbox.close()
        sess._sandbox = None
    sess._bootstrap_env = None
    sess._rolled_out = False
