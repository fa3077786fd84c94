"""``fsm-runner run``: setup + rollout + evaluate behind a live stage view, then the summary.

A stop signal (Ctrl-C, SIGTERM, SIGHUP) ends the run the same way: the run dir records
it (never "ok"), the sandbox is removed, the exit code is 128 + the signal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from runner.cli import engine, interrupts
from runner.cli.common import Quiet, err, fail, out
from runner.cli.engine import SandboxLayerError
from runner.cli.options import ContractOptions, takes_contract_options
from runner.cli.progress import StageView, print_summary, view_style
from runner.errors import ContractError, RunnerError
from runner.runs.report import load_run, summary_json, write_report
from runner.session.prestart import prestart

if TYPE_CHECKING:
    from runner.session.machine import EnvSession

_ERRORS = (RunnerError, SandboxLayerError)


def _named_value(metavar: str, help: str) -> Any:
    """An option that takes one value shown as ``metavar`` in the help."""
    return typer.Option(metavar=metavar, help=help)


Target = Annotated[
    str, typer.Argument(help="Local path, git URL[@ref], owner/repo, or HF dataset URL.")
]
OpencodeModel = Annotated[
    str | None,
    _named_value(
        "PROVIDER/MODEL",
        "Model of the OpenCode agent: writes a missing contract, repairs a failing one.",
    ),
]
EnvFile = Annotated[
    Path | None, _named_value("PATH", "A .env file (KEY=VALUE) for every stage, masked.")
]
Stage = Annotated[
    str | None,
    _named_value("STAGE", "Run only this stage, after bootstrap (from its snapshot when cached)."),
]


@interrupts.during  # SIGTERM and SIGHUP stop a run like Ctrl-C: cleaned up, never "ok"
@takes_contract_options
def run(
    target: Target,
    llm: Annotated[str, typer.Option(help="Model id, or a local model directory.")] = "none",
    mode: Annotated[Literal["smoke", "full"], typer.Option()] = "smoke",
    repair_iters: Annotated[
        int, typer.Option(min=0, help="Agent repairs per call (needs --opencode-model).")
    ] = 0,
    opencode_model: OpencodeModel = None,
    require_samples: Annotated[bool, typer.Option(help="Check the samples JSONL.")] = False,
    sandbox: Annotated[Literal["docker", "local"], typer.Option()] = "docker",
    image: Annotated[str | None, typer.Option(help="A local image instead of the default.")] = None,
    network: Annotated[
        Literal["none", "llm", "egress"] | None, typer.Option(help="Cap on every stage's network.")
    ] = None,
    env_file: EnvFile = None,
    cache: Annotated[
        Literal["on", "read", "off"],
        typer.Option(help="Bootstrap image cache: reuse and save snapshots, only reuse, or none."),
    ] = "on",
    *,
    contract: ContractOptions,
    stage: Stage = None,
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave the sandbox running; enter it with `shell`.")
    ] = False,
    follow: Annotated[
        bool, typer.Option("--follow", help="Stream every output line of every command.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON result object.")] = False,
    quiet: Quiet = False,
) -> None:
    """setup + rollout + evaluate; exit code 0 only when the evaluation is ok."""
    stop = interrupts.active()
    sess: EnvSession | None = None
    interrupted = False
    agent_options: dict[str, Any] = {"opencode_model": opencode_model} if opencode_model else {}
    timeout = contract.timeout
    overrides = {"AIDER_FSM_MAX_CMD_SECONDS": str(timeout)} if timeout else {}
    try:  # from the first line: a stop signal may land while the runner still loads
        import runner_env

        engine.remove_sandboxes_in_background()  # overlaps the report; joined in main()
        # The container starts while the runner loads (runner/session/prestart.py).
        run_id = prestart(target, backend=sandbox, image=image, llm=llm)
        style = "quiet" if quiet else ("plain" if follow else view_style(err))
        view = StageView(err, style)
        sess = runner_env.setup(
            target,
            run_id=run_id,
            progress=view,
            sandbox=sandbox,
            image=image,
            network=network,
            env_file=env_file,
            cache=cache,
            pipeline_rel=contract.pipeline,
            limits=contract.limits,
            hints="require" if contract.require_hints else "auto",
            keep=keep,
            follow=follow,
            **agent_options,
        )
        if not quiet:
            err.print(sess.hints_decision.describe(), markup=False)
        view.begin(sess)
        try:
            if stage is not None:
                llm_arg = None if llm == "none" else llm
                sess.run_stage(stage, llm_arg, mode=mode, env_overrides=overrides)
            else:
                roll = sess.rollout(
                    llm=llm,
                    mode=mode,
                    require_samples=require_samples,
                    repair_iters=repair_iters,
                    env_overrides=overrides,
                )
                if roll.ok:
                    sess.evaluate(mode=mode, repair_iters=repair_iters, env_overrides=overrides)
        finally:
            view.end()
    except KeyboardInterrupt:
        interrupted = True
        err.print(
            f"interrupted ({stop.name}): stopping the run and removing its sandbox", markup=False
        )
        if sess is not None:  # the run dir says so: it never reads as ok
            with interrupts.shielded(stop):
                sess.run_dir.event("interrupted", signal=stop.name)
    except ValueError as exc:
        _json_error(as_json, str(exc))
        if isinstance(exc, ContractError):
            raise fail(exc) from exc
        err.print(f"fsm-runner: error: {exc}", markup=False)
        raise typer.Exit(2) from exc
    except _ERRORS as exc:
        _json_error(as_json, str(exc))
        raise fail(exc) from exc
    finally:
        if sess is not None:
            with interrupts.shielded(stop):
                sess.close()
    if sess is None:  # interrupted before the session existed: nothing to clean up
        _json_error(as_json, "interrupted")
        raise typer.Exit(stop.exit_code)
    summary = load_run(sess.artifacts_dir)
    report = write_report(sess.artifacts_dir)
    kept = sess.kept_sandbox
    if as_json:
        result = summary_json(summary, report)
        if interrupted:
            result.update(ok=False, status="interrupted", signal=stop.name)
        print(json.dumps({**result, "interrupted": interrupted, "kept_sandbox": kept}))
    else:
        print_summary(summary, out)
        out.print(f"report: {report}", markup=False)
    if kept:
        from runner.cli.debug import say_kept

        say_kept(sess.run_id, kept, sess.repo_root)
    raise typer.Exit(stop.exit_code if interrupted else 0 if summary.ok else 1)


def _json_error(as_json: bool, message: str) -> None:
    if as_json:
        print(json.dumps({"ok": False, "error": message}))
