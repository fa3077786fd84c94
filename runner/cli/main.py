"""The ``fsm-runner`` command: a thin layer over the same API the library exposes.

Exit codes: 0 success; 1 the run failed, or an error the user can fix (contract, engine,
target), shown as one readable block; 2 a bad option or value, shown as one line;
128 + the signal when stopped by one (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP; the sandbox is
removed first).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import typer
from rich.markup import escape

from runner.cli import engine, interrupts
from runner.cli.batch import batch_app
from runner.cli.common import Quiet, err, out
from runner.cli.common import fail as _fail
from runner.cli.debug import shell
from runner.cli.engine import SandboxLayerError
from runner.cli.images import images_app
from runner.cli.options import Cpus, Memory, Pids, Pipeline, RequireHints, Timeout
from runner.cli.progress import StageView, bare_table, planned_stages, print_summary, view_style
from runner.cli.replay import replay_app
from runner.cli.starter import STARTER_FILES
from runner.errors import ContractError, RunnerError
from runner.runs.report import fmt_seconds, load_run, summary_json, write_report
from runner.session.prestart import prestart

if TYPE_CHECKING:
    from runner.session.machine import EnvSession

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help: typer's rich help imports rich.markdown (markdown-it, pygments), about
    # half of `fsm-runner --help`'s time; issue 17 wants the CLI up in <= 150 ms.
    rich_markup_mode=None,
    help="Run a repository's evaluation contract inside disposable, hardened containers.",
)
app.add_typer(images_app, name="images")
app.add_typer(batch_app)
app.add_typer(replay_app)
app.command()(shell)

RepoDir = Annotated[
    Path, typer.Argument(help="Repository root.", exists=True, file_okay=False, resolve_path=True)
]
_ERRORS = (RunnerError, SandboxLayerError)


# -- gc ----------------------------------------------------------------------------


@app.command()
def gc(
    all_: Annotated[
        bool, typer.Option("--all", help="Also remove live sessions' objects.")
    ] = False,
    kept: Annotated[
        bool, typer.Option("--kept", help="Also remove sandboxes left running by run --keep.")
    ] = False,
    pid: Annotated[
        list[int] | None,
        typer.Option(metavar="PID", help="Only objects created by this process (repeatable)."),
    ] = None,
) -> None:
    """Remove the containers, networks, volumes and firewall rules of dead runs."""
    try:
        report = engine.gc(include_live=all_, include_kept=kept, creator_pids=pid or None)
    except SandboxLayerError as exc:
        raise _fail(exc) from exc
    out.print(engine.gc_summary(report), markup=False)
    if report.kept_on_purpose:
        out.print("gc --kept removes the sandboxes kept by run --keep", markup=False)
    for line in report.failed:
        err.print(f"could not remove {line}", markup=False)
    if report.failed:
        raise typer.Exit(1)


# -- the contract: schema, validate, init --------------------------------------------


@app.command()
def schema() -> None:
    """Print the JSON Schema of pipeline.yml (generated from the models)."""
    from runner.contract import pipeline_json_schema

    print(json.dumps(pipeline_json_schema(), indent=2))


def _check_contract(path: Path, pipeline_rel: str = "pipeline.yml") -> list[str]:
    """Load every contract file; return the stages that would run.

    Raises:
        ContractError: a file is missing or invalid (file:line: field: message).
    """
    from runner.contract import load_actions, load_bootstrap, load_pipeline

    pipeline_path = path / pipeline_rel
    if not pipeline_path.is_file():
        raise ContractError(f"no {pipeline_rel} here; write one with `fsm-runner init`", file=path)
    pipeline = load_pipeline(pipeline_path)
    boot = load_bootstrap(path / ".aider_fsm" / "bootstrap.yml")
    actions = load_actions(path / ".aider_fsm" / "actions.yml")
    return planned_stages(pipeline, boot, actions)


@app.command()
def validate(
    path: RepoDir = Path("."),
    pipeline: Pipeline = "pipeline.yml",
    require_hints: RequireHints = False,
    memory: Memory = None,
    cpus: Cpus = None,
    pids: Pids = None,
    timeout: Timeout = None,
) -> None:
    """Check pipeline.yml and .aider_fsm/*.yml without running anything."""
    from runner.cli.options import contract_facts

    try:
        stages = _check_contract(path, pipeline)
        facts = contract_facts(
            path, pipeline, require_hints=require_hints, memory=memory, cpus=cpus, pids=pids
        )
    except RunnerError as exc:
        raise _fail(exc) from exc
    out.print(f"{path}: contract OK; stages: {', '.join(stages) or 'none'}", markup=False)
    out.print(facts.hints.describe(), markup=False)
    cap = f"; every command at most {timeout}s" if timeout else ""
    out.print(f"limits: {facts.limits}{cap}", markup=False)


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Repository root (created if missing).")] = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite existing contract files.")] = False,
    tests: Annotated[
        bool,
        typer.Option(
            "--tests",
            help="A contract whose evaluation is the project's own test suite (pytest, JUnit counts).",
        ),
    ] = False,
    pip: Annotated[
        list[str] | None,
        typer.Option(
            "--pip", metavar="PACKAGE", help="With --tests: a package the tests need (repeatable)."
        ),
    ] = None,
) -> None:
    """Write a commented starter contract that runs as is; then fill in the TODOs."""
    from runner.cli.starter import starter_for_tests

    files = starter_for_tests(path, pip or []) if tests else STARTER_FILES
    existing = [rel for rel in files if (path / rel).exists()]
    if existing and not force:
        err.print(f"error: {path} already has {', '.join(existing)}; --force overwrites them")
        raise typer.Exit(1)
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    stages = _check_contract(path)  # valid by construction; a failure here is our bug
    out.print(f"wrote {len(files)} files in {path}; stages: {', '.join(stages)}")
    out.print(f"next: fsm-runner validate {path} && fsm-runner run {path}", markup=False)


# -- run -----------------------------------------------------------------------------


@app.command()
@interrupts.during  # SIGTERM and SIGHUP stop a run like Ctrl-C: cleaned up, never "ok"
def run(
    target: Annotated[
        str, typer.Argument(help="Local path, git URL[@ref], owner/repo, or HF dataset URL.")
    ],
    llm: Annotated[str, typer.Option(help="Model id, or a local model directory.")] = "none",
    mode: Annotated[Literal["smoke", "full"], typer.Option()] = "smoke",
    repair_iters: Annotated[
        int, typer.Option(min=0, help="Agent repairs per call (needs --opencode-model).")
    ] = 0,
    opencode_model: Annotated[
        str | None,
        typer.Option(
            metavar="PROVIDER/MODEL",
            help="Model of the OpenCode agent: writes a missing contract, repairs a failing one.",
        ),
    ] = None,
    require_samples: Annotated[bool, typer.Option(help="Check the samples JSONL.")] = False,
    sandbox: Annotated[Literal["docker", "local"], typer.Option()] = "docker",
    image: Annotated[str | None, typer.Option(help="A local image instead of the default.")] = None,
    network: Annotated[
        Literal["none", "llm", "egress"] | None, typer.Option(help="Cap on every stage's network.")
    ] = None,
    env_file: Annotated[
        Path | None,
        typer.Option(metavar="PATH", help="A .env file (KEY=VALUE) for every stage, masked."),
    ] = None,
    cache: Annotated[
        Literal["on", "read", "off"],
        typer.Option(help="Bootstrap image cache: reuse and save snapshots, only reuse, or none."),
    ] = "on",
    pipeline: Pipeline = "pipeline.yml",
    require_hints: RequireHints = False,
    memory: Memory = None,
    cpus: Cpus = None,
    pids: Pids = None,
    timeout: Timeout = None,
    stage: Annotated[
        str | None,
        typer.Option(
            metavar="STAGE",
            help="Run only this stage, after bootstrap (from its snapshot when cached).",
        ),
    ] = None,
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
    import runner_env
    from runner.cli.options import limits_of

    stop = interrupts.active()
    engine.remove_sandboxes_in_background()  # overlaps the report; joined in main()
    # The container starts while the runner loads (runner/session/prestart.py).
    run_id = prestart(target, backend=sandbox, image=image, llm=llm)

    style = "quiet" if quiet else ("plain" if follow else view_style(err))
    view = StageView(err, style)
    sess: EnvSession | None = None
    interrupted = False
    agent_options: dict[str, Any] = {"opencode_model": opencode_model} if opencode_model else {}
    overrides = {"AIDER_FSM_MAX_CMD_SECONDS": str(timeout)} if timeout else {}
    try:
        sess = runner_env.setup(
            target,
            run_id=run_id,
            progress=view,
            sandbox=sandbox,
            image=image,
            network=network,
            env_file=env_file,
            cache=cache,
            pipeline_rel=pipeline,
            limits=limits_of(memory, cpus, pids),
            hints="require" if require_hints else "auto",
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
            raise _fail(exc) from exc
        err.print(f"fsm-runner: error: {exc}", markup=False)
        raise typer.Exit(2) from exc
    except _ERRORS as exc:
        _json_error(as_json, str(exc))
        raise _fail(exc) from exc
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


# -- past runs -----------------------------------------------------------------------


@app.command()
def runs(
    path: RepoDir = Path("."),
    limit: Annotated[int, typer.Option(min=1, help="Newest N runs.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """Past runs of a repository, newest first: status, score, duration."""
    from runner.runs.run_dir import list_runs

    infos = list_runs(path)[:limit]
    summaries = [load_run(info.path) for info in infos]
    if as_json:
        print(json.dumps([summary_json(s) for s in summaries]))
        return
    if not infos:
        out.print(f"no runs under {path / '.aider_fsm' / 'artifacts'}", markup=False)
        return
    table = bare_table(
        "run id", "started (UTC)", "state", "result", "score", "duration", "failed at"
    )
    for info, s in zip(infos, summaries, strict=True):
        result = {True: "[green]ok[/]", False: "[red]failed[/]", None: "-"}[info.ok]
        if info.status in ("interrupted", "incomplete"):  # killed runs are never ok
            result = f"[yellow]{info.status}[/]"
        table.add_row(
            info.run_id,
            info.started_at.strftime("%Y-%m-%d %H:%M:%S"),
            info.status,
            result,
            "-" if s.score is None else f"{s.score:g}",
            fmt_seconds(s.duration_s),
            s.failed_stage or "",
        )
    out.print(table)


@app.command()
def show(
    run_id: Annotated[str, typer.Argument(help="A run id, a unique prefix of one, or 'latest'.")],
    repo: Annotated[
        Path, typer.Option(help="Repository root.", exists=True, file_okay=False, resolve_path=True)
    ] = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """One run: stage table, where it failed, paths to logs; writes its report.md."""
    from runner.runs.run_dir import list_runs

    ids = [info.run_id for info in list_runs(repo)]
    found = ids[:1] if run_id == "latest" else [i for i in ids if i.startswith(run_id)]
    if len(found) != 1:
        what = "matches several runs" if found else "matches no run"
        raise typer.BadParameter(
            f"{run_id!r} {what} under {repo}; list them: fsm-runner runs {repo}"
        )
    run_dir = repo / ".aider_fsm" / "artifacts" / found[0]
    summary = load_run(run_dir)
    report = write_report(run_dir)
    if as_json:
        print(json.dumps(summary_json(summary, report)))
        return
    print_summary(summary, out)
    out.print(f"report: {report}", markup=False)


# -- doctor --------------------------------------------------------------------------


def _opencode_check() -> tuple[str, str, str, str]:
    """OpenCode is optional: only scaffolding and repairing a contract need it."""
    from runner.agent.binary import ENV_BIN, find_opencode

    found = find_opencode()
    if found is not None:
        return "ok", "OpenCode", str(found), ""
    explicit = os.environ.get(ENV_BIN, "").strip()
    why = f"{ENV_BIN}={explicit} is not an opencode executable" if explicit else "not found"
    fix = f"bash images/install-opencode.sh   # or put opencode on PATH, or set {ENV_BIN}"
    return "warn", "OpenCode", f"{why} (needed only to scaffold or repair contracts)", fix


def _firewall_check() -> tuple[str, str, str, str]:
    """Networked stages (bootstrap, llm) need host firewall rules, or they are refused."""
    fw = engine.firewall_status()
    if fw.enforced:
        return "ok", "host firewall", "llm/egress stages cannot reach this host's services", ""
    if fw.allowed_without:
        detail = f"{fw.reason}: llm/egress stages run WITHOUT it ({engine.ALLOW_HOST_ENV}=1)"
        return "warn", "host firewall", detail, "run as root with iptables installed"
    detail = f"{fw.reason}: llm/egress stages are refused"
    fix = f"run as root with iptables, or accept the risk: {engine.ALLOW_HOST_ENV}=1"
    return "fail", "host firewall", detail, fix


@app.command()
def doctor() -> None:
    """Check what runs need: engine, image, disk, host firewall, OpenCode (with the fixes)."""
    checks: list[tuple[str, str, str, str]] = []  # (mark, what, detail, fix)
    root = engine.cache_dir()
    try:
        info = engine.engine_info()
        checks.append(
            ("ok", "Docker engine", f"reachable (server {info.get('ServerVersion')})", "")
        )
        root = str(info.get("DockerRootDir") or root)
        tag = engine.default_image_tag()
        built = engine.image_exists(tag)
        checks.append(
            ("ok", "default image", f"{tag} built", "")
            if built
            else ("fail", "default image", f"{tag} not built", "fsm-runner images build")
        )
    except SandboxLayerError as exc:
        detail = str(getattr(exc, "detail", exc)).splitlines()[0]
        checks.append(("fail", "Docker engine", detail, engine.ENGINE_FIX_COMMAND))
    where = root if os.path.isdir(root) else engine.cache_dir()
    free = shutil.disk_usage(where).free / 1e9
    mark = "fail" if free < 2 else "warn" if free < 10 else "ok"
    fix = "fsm-runner gc && fsm-runner images prune" if mark != "ok" else ""
    checks.append((mark, "disk space", f"{free:.1f} GB free in {where}", fix))
    checks.append(_firewall_check())
    checks.append(_opencode_check())
    glyph = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[bold red]✗[/]"}
    for mark, what, detail, fix in checks:
        out.print(f"{glyph[mark]} {what:<14} {escape(detail)}")
        if fix:
            out.print(f"    fix: {fix}", markup=False)
    raise typer.Exit(1 if any(c[0] == "fail" for c in checks) else 0)


# -- entry point ---------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the app; a usage error becomes one line on stderr and exit code 2."""
    with interrupts.cleanup_guard(engine.cleanup_pending):
        _main(argv)


def _main(argv: Sequence[str] | None) -> NoReturn:
    try:
        code = app(args=argv, prog_name="fsm-runner", standalone_mode=False)
    except typer.TyperException as exc:
        exit_code = int(getattr(exc, "exit_code", 1))
        if type(exc).__name__ == "NoArgsIsHelpError":  # its message is the (plain) help
            print(exc.format_message())
        else:
            ctx = getattr(exc, "ctx", None)
            message = exc.format_message().replace("Value error, ", "")
            where = (
                f" (see: {ctx.command_path} --help)" if ctx and "fsm-runner" not in message else ""
            )
            err.print(f"fsm-runner: error: {message}{where}", markup=False)
        sys.exit(exit_code)
    except typer.Abort:
        err.print("fsm-runner: aborted", markup=False)
        sys.exit(1)
    finally:
        engine.finish_sandboxes()  # the one place background removals are joined
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
