"""The ``fsm-runner`` command: a thin layer over the same API the library exposes.

Exit codes: 0 success; 1 the run failed, or an error the user can fix (contract, engine,
target), shown as one readable block; 2 a bad option or value, shown as one line;
130 interrupted (the sandbox is removed first).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.spinner import Spinner
from rich.table import Table

from runner.errors import ContractError, RunnerError
from runner.report import (
    CommandRow,
    RunSummary,
    command_row,
    fmt_seconds,
    load_run,
    write_report,
)
from sandbox.errors import SandboxError as SandboxLayerError

if TYPE_CHECKING:
    from runner.contract import ActionsSpec, BootstrapSpec, PipelineSpec
    from runner.session import EnvSession

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Run a repository's evaluation contract inside disposable, hardened containers.",
)
images_app = typer.Typer(no_args_is_help=True, help="The sandbox images (built offline).")
app.add_typer(images_app, name="images")
# soft_wrap: a message is one line however narrow the terminal (or 80 columns in a pipe).
err = Console(stderr=True, highlight=False, soft_wrap=True)
# Piped tables get room instead of the 80 columns rich assumes without a terminal.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)

RepoDir = Annotated[
    Path, typer.Argument(help="Repository root.", exists=True, file_okay=False, resolve_path=True)
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
_ERRORS = (RunnerError, SandboxLayerError)
_ORDER = (
    "bootstrap", "actions", "auth", "tests", "deploy_setup", "deploy_health", "rollout",
    "evaluation", "benchmark", "deploy_teardown",
)  # fmt: skip
"""The order a session runs stages in (STAGE_NAMES lists deploy_teardown with deploy)."""


def _fail(exc: BaseException, code: int = 1) -> typer.Exit:
    """One readable block on stderr (a ContractError's first line is file:line: field)."""
    err.print("[bold red]error:[/bold red] ", end="")
    err.print(str(exc).strip() or type(exc).__name__, markup=False)
    return typer.Exit(code)


def _table(*columns: str) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in columns:
        table.add_column(col, no_wrap=True)
    return table


def _plain_line(msg: str) -> None:
    err.print(msg, markup=False)


# -- images, gc ----------------------------------------------------------------------


@images_app.command("build")
def images_build(
    image: Annotated[str | None, typer.Option(help="Check this local image instead.")] = None,
    quiet: Quiet = False,
) -> None:
    """Build (or confirm) the default image; instant when cached."""
    from sandbox.images import ensure_image

    style = "quiet" if quiet else view_style(err)
    try:
        if style == "live":
            with err.status("checking the default image") as status:
                tag = ensure_image(image, progress=lambda m: status.update(m[:100]))
        else:
            tag = ensure_image(image, progress=None if quiet else _plain_line)
    except SandboxLayerError as exc:
        raise _fail(exc) from exc
    out.print(tag, markup=False)


def _fsm_images(label: str | None = None) -> list[Any]:
    from sandbox.engine import LABEL_KIND, engine_errors, get_client

    labels = [f"{LABEL_KIND}=image", *([label] if label else [])]
    with engine_errors("list images"):
        images: list[Any] = get_client().images.list(filters={"label": labels})
    return sorted(images, key=lambda i: str(i.attrs.get("Created", "")), reverse=True)


@images_app.command("list")
def images_list() -> None:
    """Images fsm-runner built (tag, size, created); `*` marks the current default."""
    from sandbox.images import default_image_tag

    try:
        current, images = default_image_tag(), _fsm_images()
    except SandboxLayerError as exc:
        raise _fail(exc) from exc
    table = _table("", "image", "size", "created (UTC)")
    for img in images:
        size, created = img.attrs.get("Size", 0) / 1e6, str(img.attrs.get("Created", ""))
        mark = "*" if current in img.tags else ""
        table.add_row(mark, ", ".join(img.tags) or img.short_id, f"{size:.0f} MB", created[:19])
    out.print(table)


@images_app.command("prune")
def images_prune(
    keep: Annotated[int, typer.Option(min=0, help="Also keep the N newest others.")] = 0,
    dry_run: Annotated[bool, typer.Option(help="Only list what would go.")] = False,
    label: Annotated[
        str | None, typer.Option(metavar="KEY=VALUE", help="Only images with this label too.")
    ] = None,
) -> None:
    """Remove fsm-runner images except the current default (and the rootfs it is built on)."""
    import docker.errors

    from sandbox.engine import engine_errors, get_client
    from sandbox.images import default_image_tag, rootfs_tag

    try:
        current = {default_image_tag(), rootfs_tag()}
        old = [i for i in _fsm_images(label) if not current & set(i.tags)][keep:]
        removed = 0
        for img in old:
            names = img.tags or [img.id]
            if dry_run:
                out.print(f"would remove {', '.join(names)}", markup=False)
                continue
            try:
                with engine_errors(f"remove {names[0]}"):
                    for name in names:  # untag each name; the last one deletes the image
                        get_client().images.remove(name)
                removed += 1
            except SandboxLayerError as exc:
                in_use = isinstance(exc.__cause__, docker.errors.APIError)
                err.print(f"kept {names[0]}: {'in use' if in_use else exc}", markup=False)
    except SandboxLayerError as exc:
        raise _fail(exc) from exc
    if not dry_run:
        out.print(f"removed {removed} image(s); kept the current default {default_image_tag()}")


@app.command()
def gc(
    all_: Annotated[
        bool, typer.Option("--all", help="Also remove live sessions' objects.")
    ] = False,
) -> None:
    """Remove containers and networks left behind by dead runs."""
    from sandbox.reaper import gc as run_gc

    try:
        report = run_gc(include_live=all_)
    except SandboxLayerError as exc:
        raise _fail(exc) from exc
    out.print(
        f"removed {len(report.containers)} container(s), {len(report.networks)} network(s); "
        f"kept {report.kept_live} live"
    )


# -- the contract: schema, validate, init --------------------------------------------


@app.command()
def schema() -> None:
    """Print the JSON Schema of pipeline.yml (generated from the models)."""
    from runner.contract import pipeline_json_schema

    print(json.dumps(pipeline_json_schema(), indent=2))


def _check_contract(path: Path) -> list[str]:
    """Load every contract file; return the stages that would run.

    Raises:
        ContractError: a file is missing or invalid (file:line: field: message).
    """
    from runner.contract import load_actions, load_bootstrap, load_pipeline

    pipeline_path = path / "pipeline.yml"
    if not pipeline_path.is_file():
        raise ContractError("no pipeline.yml here; write one with `fsm-runner init`", file=path)
    pipeline = load_pipeline(pipeline_path)
    boot = load_bootstrap(path / ".aider_fsm" / "bootstrap.yml")
    actions = load_actions(path / ".aider_fsm" / "actions.yml")
    return planned_stages(pipeline, boot, actions)


def planned_stages(
    pipeline: PipelineSpec, boot: BootstrapSpec | None, actions: ActionsSpec | None
) -> list[str]:
    """The stages a contract runs, in run order (a stage without commands is skipped)."""
    firsts = {"bootstrap": bool(boot and boot.cmds), "actions": bool(actions and actions.actions)}
    return [n for n in _ORDER if firsts.get(n, False) or (n not in firsts and pipeline.stage(n))]  # type: ignore[arg-type]


@app.command()
def validate(path: RepoDir = Path(".")) -> None:
    """Check pipeline.yml and .aider_fsm/*.yml without running anything."""
    try:
        stages = _check_contract(path)
    except RunnerError as exc:
        raise _fail(exc) from exc
    out.print(f"{path}: contract OK; stages: {', '.join(stages) or 'none'}", markup=False)


# -- the starter contract written by `init` -------------------------------------------

_PIPELINE = """\
# pipeline.yml: this repository's evaluation contract (version 1), run by fsm-runner.
# Every command runs in a disposable container with the repository root (/workspace)
# as its working directory. Unknown keys are errors. Check it: fsm-runner validate .
version: 1

# tests:                    # the repository's own tests, before deploy (network: none)
#   cmds: [python3 -m pytest -q]
#   timeout_seconds: 600

deploy:
  # Start what the rollout talks to and describe it in .aider_fsm/runtime_env.json.
  setup_cmds: [bash .aider_fsm/stages/deploy_setup.sh]
  health_cmds: [bash .aider_fsm/stages/deploy_health.sh]
  teardown_cmds: [bash .aider_fsm/stages/deploy_teardown.sh]
  teardown_policy: always   # always | on_success | on_failure | never
  timeout_seconds: 120

rollout:
  # Ask the model; write a samples JSONL and .aider_fsm/rollout.json pointing at it.
  run_cmds: [bash .aider_fsm/stages/rollout.sh]
  timeout_seconds: 600
  # network: llm            # none | llm (only the model endpoint) | egress

evaluation:
  # Score this run's samples; write the metrics (`ok` must be exactly true).
  run_cmds: [bash .aider_fsm/stages/evaluation.sh]
  metrics_path: .aider_fsm/metrics.json
  required_keys: [ok, score]
  timeout_seconds: 600

# benchmark:                # an optional extra scored run with its own metrics file
#   run_cmds: [bash .aider_fsm/stages/benchmark.sh]
#   metrics_path: .aider_fsm/benchmark_metrics.json
#   required_keys: [ok, score]

security:
  mode: safe                # safe: no sudo/apt outside bootstrap; system: allowed
  max_cmd_seconds: 900      # caps every command's timeout
  # network: llm            # the most network any stage may get
  # memory: 2g
  # cpus: 1
"""

_BOOTSTRAP = """\
# .aider_fsm/bootstrap.yml: prepare the environment once, before the stages. It gets
# network (egress) so installs work. Keep it idempotent and non-interactive; tests and
# evaluations belong in pipeline.yml.
version: 1
cmds:
  - python3 --version
  # - python3 -m venv .aider_fsm/venv
  # - .aider_fsm/venv/bin/pip install -r requirements.txt
env:
  # Stages call "$AIDER_FSM_PYTHON"; a relative path is made absolute by the runner.
  AIDER_FSM_PYTHON: python3   # e.g. .aider_fsm/venv/bin/python
timeout_seconds: 600
"""

_DEPLOY_SETUP = """\
#!/usr/bin/env bash
# deploy.setup: start your service in the background, then describe it in
# .aider_fsm/runtime_env.json (read by later stages through $AIDER_RUNTIME_ENV_PATH).
# TODO: e.g. nohup "$AIDER_FSM_PYTHON" -m my_server --port 8000 >.aider_fsm/server.log 2>&1 &
#            echo $! >.aider_fsm/server.pid
set -euo pipefail
printf '{"service": {}, "inference": {"model": "%s"}}\\n' "${AIDER_LLM_MODEL:-}" \\
  >.aider_fsm/runtime_env.json
"""

_DEPLOY_HEALTH = """\
#!/usr/bin/env bash
# deploy.health: exit 0 once the service answers.
# TODO: e.g. curl -fsS --retry 20 --retry-connrefused http://127.0.0.1:8000/health
set -euo pipefail
test -s .aider_fsm/runtime_env.json
"""

_DEPLOY_TEARDOWN = """\
#!/usr/bin/env bash
# deploy.teardown: stop what deploy started; must be safe to run twice.
# TODO: e.g. kill "$(cat .aider_fsm/server.pid 2>/dev/null)" 2>/dev/null || true
true
"""

_ROLLOUT = """\
#!/usr/bin/env bash
# rollout: write one {prompt, completion, reward} JSON line per sample, and
# .aider_fsm/rollout.json naming that file. Outputs from earlier runs are removed first.
set -euo pipefail
"${AIDER_FSM_PYTHON:-python3}" - <<'PY'
import json
import os

# TODO: your tasks; AIDER_EVAL_MODE is smoke or full (run fewer tasks for smoke).
PROMPTS = ["What is 2 + 2?", "Name a prime number."]


def complete(prompt: str) -> str:
    # TODO: ask your model; OPENAI_BASE_URL, OPENAI_API_KEY and AIDER_LLM_MODEL are set
    # when the run has a model endpoint.
    return "TODO: call the model"


def reward(prompt: str, completion: str) -> float:
    return 0.0  # TODO: grade the completion


out = ".aider_fsm/samples.jsonl"
with open(out, "w") as fh:
    for prompt in PROMPTS:
        completion = complete(prompt)
        sample = {"prompt": prompt, "completion": completion, "reward": reward(prompt, completion)}
        fh.write(json.dumps(sample) + "\\n")
manifest = {
    "ok": True,
    "mode": os.environ.get("AIDER_EVAL_MODE", "smoke"),
    "counts": {"samples": len(PROMPTS), "errors": 0},
    "paths": {"samples_jsonl": out},
}
with open(".aider_fsm/rollout.json", "w") as fh:
    json.dump(manifest, fh)
PY
"""

_EVALUATION = """\
#!/usr/bin/env bash
# evaluation: score the samples this run wrote. `ok` must be exactly true and `score`
# a finite number, or the run fails.
set -euo pipefail
"${AIDER_FSM_PYTHON:-python3}" - <<'PY'
import json

with open(".aider_fsm/rollout.json") as fh:
    samples = json.load(fh)["paths"]["samples_jsonl"]
with open(samples) as fh:
    rewards = [json.loads(line)["reward"] for line in fh]
metrics = {"ok": True, "score": sum(rewards) / len(rewards), "n": len(rewards)}
with open(".aider_fsm/metrics.json", "w") as fh:
    json.dump(metrics, fh)
print(json.dumps(metrics))
PY
"""

STARTER_FILES: dict[str, str] = {
    "pipeline.yml": _PIPELINE,
    ".aider_fsm/bootstrap.yml": _BOOTSTRAP,
    ".aider_fsm/stages/deploy_setup.sh": _DEPLOY_SETUP,
    ".aider_fsm/stages/deploy_health.sh": _DEPLOY_HEALTH,
    ".aider_fsm/stages/deploy_teardown.sh": _DEPLOY_TEARDOWN,
    ".aider_fsm/stages/rollout.sh": _ROLLOUT,
    ".aider_fsm/stages/evaluation.sh": _EVALUATION,
    ".aider_fsm/.gitignore": "# Run outputs: never commit them.\nartifacts/\nvenv*/\n"
    "runtime_env.json\nrollout.json\nmetrics.json\nsamples.jsonl\nhints_*.json\n",
}
"""Everything ``fsm-runner init`` writes: a contract that validates and runs as is."""


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Repository root (created if missing).")] = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite existing contract files.")] = False,
) -> None:
    """Write a commented starter contract that runs as is; then fill in the TODOs."""
    existing = [rel for rel in STARTER_FILES if (path / rel).exists()]
    if existing and not force:
        err.print(f"error: {path} already has {', '.join(existing)}; --force overwrites them")
        raise typer.Exit(1)
    for rel, text in STARTER_FILES.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    stages = _check_contract(path)  # valid by construction; a failure here is our bug
    out.print(f"wrote {len(STARTER_FILES)} files in {path}; stages: {', '.join(stages)}")
    out.print(f"next: fsm-runner validate {path} && fsm-runner run {path}", markup=False)


# -- progress: live table, plain lines, or nothing ----------------------------------

_STAGE_LINE = re.compile(r"^(?:stage )?(\w+) \((\d+) command\(s\), network=(\w+)\)$")
_CMD_LINE = re.compile(r"^(\w+) \[\d+/\d+\] \$ (.*)$", re.DOTALL)
Style = Literal["live", "plain", "quiet"]


def view_style(console: Console) -> Style:
    """A live view only where someone watches: a terminal, and not CI."""
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    return "live" if console.is_terminal and not ci else "plain"


@dataclass
class _Row:
    state: str = "waiting"
    network: str = ""
    started: float | None = None
    duration: float | None = None
    line: str = ""
    spinner: Spinner = field(default_factory=lambda: Spinner("dots", text="running"))


def _last_output(cmd: CommandRow, run_dir: Path) -> str:
    """The last non-blank line a finished command printed (stderr first when it failed)."""
    kinds = ("stdout", "stderr") if cmd.rc == 0 else ("stderr", "stdout")
    for kind in kinds:
        try:
            with open(cmd.log(run_dir, kind), "rb") as fh:
                fh.seek(max(0, fh.seek(0, os.SEEK_END) - 2048))
                lines = fh.read().decode(errors="replace").strip().splitlines()
        except OSError:
            continue
        if lines:
            return lines[-1].strip()[:200]
    return ""


class StageView:
    """Progress of a run, built on the session's ``progress`` lines and its events.jsonl.

    The lines say when a stage or a command starts; the events, read as they are
    appended, say when a stage ends, how long it took and what its command printed.
    """

    def __init__(self, console: Console, style: Style) -> None:
        self.console, self.style = console, style
        self.rows: dict[str, _Row] = {}
        self.note = ""
        self._t0 = time.monotonic()
        self._lock = threading.RLock()
        self._run_dir: Path | None = None
        self._offset = 0
        self._live: Live | None = None
        self._title = ""

    def begin(self, sess: EnvSession) -> None:
        """Attach to the session's run dir; list the stages its contract will run."""
        self._run_dir = sess.artifacts_dir
        actions = getattr(sess, "actions_spec", None)
        for name in planned_stages(sess.pipeline, sess.bootstrap_spec, actions):
            self.rows[name] = _Row()
        self._title = f"fsm-runner · {sess.repo.path} · run {sess.run_id}"
        if self.style == "live":
            self._live = Live(self, console=self.console, refresh_per_second=8, transient=True)
            self._live.start()
        elif self.style == "plain":
            self._say(self._title)

    def end(self) -> None:
        """Stop the live table (the caller prints the result) and apply the last events."""
        if self._live is not None:
            self._live.stop()
            self._live = None
        with self._lock:
            self._poll()

    def __call__(self, msg: str) -> None:
        """The session's ``progress`` callback: one line per step."""
        with self._lock:
            self._poll()
            if m := _STAGE_LINE.match(msg):
                self.rows[m[1]] = _Row("running", m[3], time.monotonic())
                self.note = ""  # the caption is for steps outside stages (image, sandbox)
            elif m := _CMD_LINE.match(msg):
                self.rows.setdefault(m[1], _Row()).line = f"$ {m[2]}"
            else:
                self.note = msg
            if self.style == "plain":
                self._say(msg)

    def _say(self, msg: str) -> None:
        self.console.print(f"[{time.monotonic() - self._t0:6.1f}s] {msg}", markup=False)

    def _poll(self) -> None:
        """Apply the events appended since the last call (whole lines only)."""
        if self._run_dir is None:
            return
        try:
            with open(self._run_dir / "events.jsonl", "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except OSError:
            return
        whole = data[: data.rfind(b"\n") + 1]
        self._offset += len(whole)
        for raw in whole.splitlines():
            try:
                ev = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(ev, dict) or ev.get("kind") not in ("command", "stage_end"):
                continue
            row = self.rows.setdefault(str(ev.get("stage")), _Row())
            if ev["kind"] == "command":
                row.line = _last_output(command_row(ev), self._run_dir) or row.line
                continue
            row.state = "ok" if ev.get("ok") is True else "failed"
            row.duration = ev.get("duration_s") if isinstance(ev.get("duration_s"), float) else None
            if self.style == "plain":
                why = f": {ev.get('reason')}" if ev.get("reason") else ""
                verdict = "ok" if row.state == "ok" else "FAILED"
                self._say(f"{ev.get('stage')} {verdict} in {fmt_seconds(row.duration)}{why}")

    def __rich__(self) -> Table:
        with self._lock:
            self._poll()
            now = time.monotonic()
            table = Table(title=self._title, title_justify="left", box=None, header_style="bold")
            table.add_column("stage")
            table.add_column("state", min_width=10)
            table.add_column("time", justify="right")
            table.add_column("network")
            table.add_column("last line", overflow="ellipsis", no_wrap=True, max_width=70)
            styles = {"ok": "green", "failed": "bold red", "waiting": "dim"}
            for name, row in self.rows.items():
                took = row.duration if row.state != "running" else now - (row.started or now)
                state = row.spinner if row.state == "running" else row.state
                table.add_row(
                    name, state, fmt_seconds(took), row.network, row.line,
                    style=styles.get(row.state, ""),
                )  # fmt: skip
            table.caption = f"{self.note[:100]}  ({fmt_seconds(now - self._t0)})".lstrip()
            table.caption_justify = "left"
            return table


# -- run -----------------------------------------------------------------------------


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Cleanup after Ctrl-C must finish: a second Ctrl-C would leave the container."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@app.command()
def run(
    target: Annotated[
        str, typer.Argument(help="Local path, git URL[@ref], owner/repo, or HF dataset URL.")
    ],
    llm: Annotated[str, typer.Option(help="Model id, or a local model directory.")] = "none",
    mode: Annotated[Literal["smoke", "full"], typer.Option()] = "smoke",
    repair_iters: Annotated[int, typer.Option(min=0, help="Agent repairs per call.")] = 0,
    require_samples: Annotated[bool, typer.Option(help="Check the samples JSONL.")] = False,
    sandbox: Annotated[Literal["docker", "local"], typer.Option()] = "docker",
    image: Annotated[str | None, typer.Option(help="A local image instead of the default.")] = None,
    network: Annotated[
        Literal["none", "llm", "egress"] | None, typer.Option(help="Cap on every stage's network.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON result object.")] = False,
    quiet: Quiet = False,
) -> None:
    """setup + rollout + evaluate; exit code 0 only when the evaluation is ok."""
    import runner_env

    view = StageView(err, "quiet" if quiet else view_style(err))
    sess: EnvSession | None = None
    interrupted = False
    try:
        sess = runner_env.setup(
            target, progress=view, sandbox=sandbox, image=image, network=network
        )
        view.begin(sess)
        try:
            roll = sess.rollout(
                llm=llm, mode=mode, require_samples=require_samples, repair_iters=repair_iters
            )
            if roll.ok:
                sess.evaluate(mode=mode, repair_iters=repair_iters)
        finally:
            view.end()
    except KeyboardInterrupt:
        interrupted = True
        err.print("interrupted: stopping the run and removing its sandbox", markup=False)
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
            with _sigint_ignored():
                sess.close()
    if sess is None:  # interrupted before the session existed: nothing to clean up
        _json_error(as_json, "interrupted")
        raise typer.Exit(130)
    summary = load_run(sess.artifacts_dir)
    report = write_report(sess.artifacts_dir)
    if as_json:
        print(json.dumps({**_summary_json(summary, report), "interrupted": interrupted}))
    else:
        _print_summary(summary, out)
        out.print(f"report: {report}", markup=False)
    raise typer.Exit(130 if interrupted else 0 if summary.ok else 1)


def _json_error(as_json: bool, message: str) -> None:
    if as_json:
        print(json.dumps({"ok": False, "error": message}))


def _summary_json(s: RunSummary, report: Path | None = None) -> dict[str, Any]:
    return {
        "ok": bool(s.ok),
        "failed_stage": s.failed_stage,
        "reason": s.reason,
        "score": s.score,
        "metrics": s.metrics,
        "samples": s.samples,
        "run_id": s.run_id,
        "artifacts_dir": str(s.path),
        "report": str(report) if report else None,
        "duration_s": s.duration_s,
        "stages": [
            {"stage": r.stage, "ok": r.ok, "duration_s": r.duration_s, "network": r.network}
            for r in s.stages
        ],
    }


def _print_summary(s: RunSummary, console: Console) -> None:
    """Stage table, result line and, on failure, where it failed and its logs."""
    table = _table("stage", "result", "time", "network", "commands")
    for row in s.stages:
        style = {True: "green", False: "bold red", None: "yellow"}[row.ok]
        table.add_row(
            row.stage,
            f"[{style}]{row.status}[/{style}]",
            fmt_seconds(row.duration_s),
            row.network or "-",
            str(len(row.commands)),
        )
    console.print(table)
    score = "" if s.score is None else f" · score {s.score:g}"
    samples = "" if s.samples is None else f" · {s.samples} samples"
    verdict = {
        True: "[bold green]ok[/]" + (" (rollout only)" if s.phase == "rollout" else ""),
        False: "[bold red]FAILED[/]",
        None: "[yellow]unfinished[/]",
    }
    console.print(f"{verdict[s.ok]}{score}{samples} · {fmt_seconds(s.duration_s)} · run {s.run_id}")
    failed = s.failed_row
    if s.ok is False or failed is not None:
        where = s.failed_stage or (failed.stage if failed else "?")
        console.print(f"failed at {where}: {s.reason}", markup=False)
    if failed is not None and failed.commands:
        last = failed.commands[-1]
        console.print(f"  command: {last.cmd}  ({last.outcome})", markup=False)
        for kind in ("stderr", "stdout"):
            log = last.log(s.path, kind)
            tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.exists() else []
            console.print(f"  {kind}: {log}", markup=False)
            for line in tail:
                console.print(f"    | {line}", markup=False, style="dim")
    for path in s.error_files:
        console.print(f"  contract error: {path}", markup=False)
    console.print(f"run dir: {s.path}", markup=False)


# -- past runs -----------------------------------------------------------------------


@app.command()
def runs(
    path: RepoDir = Path("."),
    limit: Annotated[int, typer.Option(min=1, help="Newest N runs.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """Past runs of a repository, newest first: status, score, duration."""
    from runner.artifacts import list_runs

    infos = list_runs(path)[:limit]
    summaries = [load_run(info.path) for info in infos]
    if as_json:
        print(json.dumps([_summary_json(s) for s in summaries]))
        return
    if not infos:
        out.print(f"no runs under {path / '.aider_fsm' / 'artifacts'}", markup=False)
        return
    table = _table("run id", "started (UTC)", "state", "result", "score", "duration", "failed at")
    for info, s in zip(infos, summaries, strict=True):
        result = {True: "[green]ok[/]", False: "[red]failed[/]", None: "-"}[info.ok]
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
) -> None:
    """One run: stage table, where it failed, paths to logs; writes its report.md."""
    from runner.artifacts import list_runs

    ids = [info.run_id for info in list_runs(repo)]
    found = ids[:1] if run_id == "latest" else [i for i in ids if i.startswith(run_id)]
    if len(found) != 1:
        what = "matches several runs" if found else "matches no run"
        raise typer.BadParameter(
            f"{run_id!r} {what} under {repo}; list them: fsm-runner runs {repo}"
        )
    run_dir = repo / ".aider_fsm" / "artifacts" / found[0]
    summary = load_run(run_dir)
    _print_summary(summary, out)
    out.print(f"report: {write_report(run_dir)}", markup=False)


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


@app.command()
def doctor() -> None:
    """Check what runs need: engine, default image, disk space, OpenCode (with the fixes)."""
    from sandbox.engine import engine_errors, get_client
    from sandbox.errors import ENGINE_FIX_COMMAND
    from sandbox.images import cache_dir, default_image_tag, image_exists

    checks: list[tuple[str, str, str, str]] = []  # (mark, what, detail, fix)
    root = str(cache_dir())
    try:
        client = get_client()
        with engine_errors("engine info"):
            info: dict[str, Any] = client.info()
        checks.append(
            ("ok", "Docker engine", f"reachable (server {info.get('ServerVersion')})", "")
        )
        root = str(info.get("DockerRootDir") or root)
        tag = default_image_tag()
        built = image_exists(tag)
        checks.append(
            ("ok", "default image", f"{tag} built", "")
            if built
            else ("fail", "default image", f"{tag} not built", "fsm-runner images build")
        )
    except SandboxLayerError as exc:
        detail = str(getattr(exc, "detail", exc)).splitlines()[0]
        checks.append(("fail", "Docker engine", detail, ENGINE_FIX_COMMAND))
    where = root if os.path.isdir(root) else str(cache_dir())
    free = shutil.disk_usage(where).free / 1e9
    mark = "fail" if free < 2 else "warn" if free < 10 else "ok"
    fix = "fsm-runner gc && fsm-runner images prune" if mark != "ok" else ""
    checks.append((mark, "disk space", f"{free:.1f} GB free in {where}", fix))
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
    try:
        code = app(args=argv, prog_name="fsm-runner", standalone_mode=False)
    except typer.TyperException as exc:
        exit_code = int(getattr(exc, "exit_code", 1))
        if type(exc).__name__ != "NoArgsIsHelpError":  # typer printed the help already
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
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
