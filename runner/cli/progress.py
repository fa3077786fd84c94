"""A run on the terminal: its progress while it runs, its result table after.

Progress goes to stderr as a live table only where someone watches (a terminal, not CI),
as plain timestamped lines otherwise so CI logs stay readable, and not at all with
``--quiet``. :class:`StageView` builds it from the session's ``progress`` lines and the
``events.jsonl`` the session appends. :func:`print_summary` prints the result of a run
(also of a past one, for ``fsm-runner show``) from the same :func:`runner.runs.report.load_run`
structure ``report.md`` is written from. Nothing from the target reaches the terminal
with its control sequences (``strip_controls``: issue 15 item 11).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table

from runner.runs.report import (
    CommandRow,
    RunSummary,
    command_row,
    fmt_seconds,
    hints_text,
    run_status,
    score_text,
)
from runner.trust.terminal import strip_controls

if TYPE_CHECKING:
    from runner.contract import ActionsSpec, BootstrapSpec, PipelineSpec
    from runner.session.machine import EnvSession

_ORDER = (
    "bootstrap", "actions", "auth", "tests", "deploy_setup", "deploy_health", "rollout",
    "evaluation", "benchmark", "deploy_teardown",
)  # fmt: skip
"""The order a session runs stages in (STAGE_NAMES lists deploy_teardown with deploy)."""
# The progress lines that open a stage (runner/session_stages.py, bootstrap_phase.py) and a
# command (runner/stages.py).
_STAGE_LINE = re.compile(r"^(?:stage )?(\w+) \((\d+) command\(s\), network=(\w+)\)$")
_CMD_LINE = re.compile(r"^(\w+) \[\d+/\d+\] \$ (.*)$", re.DOTALL)
# A running command's latest output line (runner/stages.py LiveTail).
_OUT_LINE = re.compile(r"^(\w+) \| (.*)$", re.DOTALL)
Style = Literal["live", "plain", "quiet"]


def planned_stages(
    pipeline: PipelineSpec, boot: BootstrapSpec | None, actions: ActionsSpec | None
) -> list[str]:
    """The stages a contract runs, in run order (a stage without commands is skipped)."""
    firsts = {"bootstrap": bool(boot and boot.cmds), "actions": bool(actions and actions.actions)}
    return [n for n in _ORDER if firsts.get(n, False) or (n not in firsts and pipeline.stage(n))]  # type: ignore[arg-type]


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
                text = strip_controls(fh.read().decode(errors="replace"))
                lines = [ln for ln in text.strip().splitlines() if ln.strip()]
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
        msg = strip_controls(msg)  # commands and output lines come from the target
        with self._lock:
            self._poll()
            if m := _STAGE_LINE.match(msg):
                self.rows[m[1]] = _Row("running", m[3], time.monotonic())
                self.note = ""  # the caption is for steps outside stages (image, sandbox)
            elif m := _CMD_LINE.match(msg):
                self.rows.setdefault(m[1], _Row()).line = f"$ {m[2]}"
            elif (m := _OUT_LINE.match(msg)) and m[1] in self.rows:
                self.rows[m[1]].line = m[2]
            else:
                self.note = msg
            if self.style == "plain":
                self._say(msg)

    def _say(self, msg: str) -> None:
        line = strip_controls(msg)  # event reasons quote the target's output
        self.console.print(f"[{time.monotonic() - self._t0:6.1f}s] {line}", markup=False)

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


# -- the result, after the run (and for `fsm-runner show`) ----------------------------


def bare_table(*columns: str) -> Table:
    """A table without borders, for the terminal (one line per row, no wrapping)."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in columns:
        table.add_column(col, no_wrap=True)
    return table


def print_summary(s: RunSummary, console: Console) -> None:
    """Stage table, result line and, on failure, where it failed and its logs."""
    table = bare_table("stage", "result", "time", "network", "commands")
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
    score = "" if s.score is None else f" · score {score_text(s)}"
    samples = "" if s.samples is None else f" · {s.samples} samples"
    verdict = {
        True: "[bold green]ok[/]" + (" (rollout only)" if s.phase == "rollout" else ""),
        False: "[bold red]FAILED[/]",
        None: "[yellow]unfinished[/]",
    }
    head = verdict[s.ok]
    status = run_status(s)  # killed or interrupted runs say so, never "ok" (issue 15)
    if status == "interrupted":
        head = f"[bold yellow]interrupted[/] by {s.interrupted}"
    elif status == "incomplete" and s.started:
        head = "[bold yellow]incomplete[/] (no final event: killed, or still running)"
    console.print(f"{head}{score}{samples} · {fmt_seconds(s.duration_s)} · run {s.run_id}")
    if hints_text(s.hints):
        console.print(f"official commands: {hints_text(s.hints)}", markup=False)
    failed = s.failed_row
    if (s.ok is False and not s.interrupted) or failed is not None:
        where = s.failed_stage or (failed.stage if failed else "?")
        console.print(f"failed at {where}: {s.reason}", markup=False)
    if failed is not None and failed.commands:
        last = failed.commands[-1]
        console.print(f"  command: {last.cmd}  ({last.outcome})", markup=False)
        for kind in ("stderr", "stdout"):
            log = last.log(s.path, kind)
            text = strip_controls(log.read_text(errors="replace")) if log.exists() else ""
            tail = [ln for ln in text.strip().splitlines() if ln.strip()][-5:]
            console.print(f"  {kind}: {log}", markup=False)
            for line in tail:
                console.print(f"    | {line}", markup=False, style="dim")
    for path in s.error_files:
        console.print(f"  contract error: {path}", markup=False)
    console.print(f"run dir: {s.path}", markup=False)
