"""StagePlan and run_stage(): the one place target commands are executed.

Every command goes through the command policy first, then the sandbox; every result
(including refusals) is recorded in the run dir by ``artifacts.py``. A failing command
is a result (``StageResult.ok is False``), never an exception; only broken
infrastructure raises.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from runner.contract import StageSpec
from runner.errors import PolicyViolation
from runner.runs.run_dir import CommandRecord, RunDir, mask_env
from runner.session.stage_env import default_cmd_seconds
from runner.trust.policy import CommandPolicy
from runner.trust.terminal import strip_controls
from sandbox import NetworkPolicy, Sandbox

RC_BLOCKED = 126
"""Exit code recorded for a command the policy refused (the predecessor's value)."""
RC_TIMEOUT = 124
"""Exit code recorded when a stage's total time budget is used up before a command."""

Progress = Callable[[str], None]
#: A running command's last line is reported at most this often (and only when it changed).
LIVE_LINE_INTERVAL_S = 1.0
#: Only the tail of the output is kept for that: the line is cut to 200 characters anyway.
LIVE_LINE_BYTES = 4096

_NETWORK_ORDER = {NetworkPolicy.NONE: 0, NetworkPolicy.LLM: 1, NetworkPolicy.EGRESS: 2}

DEFAULT_STAGE_NETWORK: dict[str, NetworkPolicy] = {
    "bootstrap": NetworkPolicy.EGRESS,
    "auth": NetworkPolicy.EGRESS,
    "tests": NetworkPolicy.NONE,
    "deploy_setup": NetworkPolicy.LLM,
    "deploy_health": NetworkPolicy.LLM,
    "deploy_teardown": NetworkPolicy.NONE,
    "rollout": NetworkPolicy.LLM,
    "evaluation": NetworkPolicy.NONE,
    "benchmark": NetworkPolicy.NONE,
}
"""Least network each stage needs by default (installs need egress; model calls need llm)."""


def cap_network(wanted: NetworkPolicy, *caps: NetworkPolicy | None) -> NetworkPolicy:
    """The tightest of ``wanted`` and every cap: a contract can never loosen the user's cap."""
    result = wanted
    for cap in caps:
        if cap is not None and _NETWORK_ORDER[cap] < _NETWORK_ORDER[result]:
            result = cap
    return result


@dataclass(frozen=True)
class CmdResult:
    """One executed (or refused) command, in the predecessor's shape plus evidence."""

    cmd: str
    rc: int
    stdout: str
    stderr: str
    timed_out: bool = False
    duration_s: float = 0.0
    oom_killed: bool = False
    truncated: bool = False
    blocked_reason: str | None = None
    disk_exceeded: bool = False


@dataclass(frozen=True)
class StageResult:
    """A stage's outcome: ``ok`` and every attempt of every command, in order."""

    name: str
    ok: bool
    results: tuple[CmdResult, ...] = ()
    failed_index: int | None = None
    network: str | None = None

    @property
    def reason(self) -> str:
        """One line saying why the stage failed ("" when ok)."""
        if self.ok or not self.results:
            return ""
        last = self.results[-1]
        if last.blocked_reason:
            return f"{self.name}: command blocked: {last.blocked_reason}"
        if last.oom_killed:
            return f"{self.name}: command killed by the memory limit (OOM): {last.cmd}"
        if last.disk_exceeded:  # the sandbox's last stderr line: "fsm-runner: disk budget ..."
            said = (last.stderr.strip().splitlines() or [""])[-1].removeprefix("fsm-runner: ")
            return f"{self.name}: {said}: {last.cmd}"
        if last.timed_out:
            return f"{self.name}: command timed out: {last.cmd}"
        tail = (last.stderr or last.stdout).strip().splitlines()[-1:] or [""]
        return f"{self.name}: command failed (rc={last.rc}): {last.cmd}: {tail[0][:300]}"


@dataclass(frozen=True)
class StagePlan:
    """Everything needed to run one stage: commands, env, where, limits and network."""

    name: str
    cmds: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    cmd_timeout: float | None = None
    total_budget: float | None = None
    retries: int = 0
    network: NetworkPolicy = NetworkPolicy.NONE


def plan_stage(
    spec: StageSpec,
    *,
    env: Mapping[str, str],
    workspace: str,
    max_cmd_seconds: float | None,
    max_total_seconds: float | None,
    network_caps: tuple[NetworkPolicy | None, ...] = (),
) -> StagePlan:
    """Turn a contract stage into a plan: stage env over base env, timeouts combined, network capped."""
    timeouts = [t for t in (spec.timeout_seconds, max_cmd_seconds) if t]
    wanted = NetworkPolicy(spec.network) if spec.network else DEFAULT_STAGE_NETWORK[spec.name]
    cwd = str(PurePosixPath(workspace) / spec.workdir) if spec.workdir else workspace
    return StagePlan(
        name=spec.name,
        cmds=tuple(spec.cmds),
        env={**env, **dict(spec.env)},
        cwd=cwd,
        cmd_timeout=float(min(timeouts)) if timeouts else None,
        total_budget=float(max_total_seconds) if max_total_seconds else None,
        retries=spec.retries,
        network=cap_network(wanted, *network_caps),
    )


def run_stage(
    sandbox: Sandbox,
    plan: StagePlan,
    *,
    policy: CommandPolicy,
    run_dir: RunDir,
    record_dir: Path,
    progress: Progress | None = None,
    prelude: str = "",
    follow: bool = False,
) -> StageResult:
    """Run the plan's commands in order; the first failing one (after retries) stops the stage.

    ``prelude`` is the runner's own housekeeping (create the artifacts dir, remove stale
    outputs), run in the same exec just before the first command (and its retries): a
    separate exec would cost ~50 ms per stage. It is not part of the recorded command.
    ``follow``: report every line a command prints, not its latest once a second.
    """
    if plan.cmd_timeout is None:  # nothing set one: the runner's default holds
        plan = dataclasses.replace(plan, cmd_timeout=default_cmd_seconds())
    sandbox.set_network(plan.network)
    started = time.monotonic()
    results: list[CmdResult] = []
    failed_index: int | None = None
    run_dir.event(
        "stage_start",
        stage=plan.name,
        network=plan.network.value,
        commands=len(plan.cmds),
        # What every command of the stage ran with (the manifest's per-command record).
        cwd=plan.cwd,
        timeout_s=plan.cmd_timeout,
        total_budget_s=plan.total_budget,
        retries=plan.retries,
        env=mask_env(plan.env),
    )
    for index, cmd in enumerate(plan.cmds):
        ok = False
        for attempt in range(plan.retries + 1):
            if progress:
                progress(f"{plan.name} [{index + 1}/{len(plan.cmds)}] $ {cmd}")
            tail = (
                LiveTail(plan.name, progress, run_dir.redact, every_line=follow)
                if progress
                else None
            )
            result = _run_one(
                sandbox, plan, cmd, policy, started, prelude if index == 0 else "", tail
            )
            if tail is not None:
                tail.flush()
            results.append(result)
            run_dir.record_command(record_dir, plan.name, index, attempt, cmd, _record(result))
            if result.rc == 0 and not result.timed_out and not result.disk_exceeded:
                ok = True
                break
            if result.blocked_reason or result.disk_exceeded:
                break  # a refusal does not change on retry, nor does a full disk budget
        if not ok:
            failed_index = index
            break
    stage_ok = failed_index is None
    run_dir.write_stage_summary(
        record_dir, plan.name, ok=stage_ok, failed_index=failed_index, total_results=len(results)
    )
    stage = StageResult(plan.name, stage_ok, tuple(results), failed_index, plan.network.value)
    run_dir.event(
        "stage_end",
        stage=plan.name,
        ok=stage_ok,
        failed_index=failed_index,
        duration_s=round(time.monotonic() - started, 3),
        reason=stage.reason,
    )
    return stage


class LiveTail:
    """Reports the last line a running command printed, so a long stage shows it is alive.

    At most one progress line per ``interval`` seconds, only when the line changed, as
    ``"<stage> | <line>"``, redacted like every run-dir file (the raw output is never
    written anywhere unmasked).
    """

    def __init__(
        self,
        stage: str,
        progress: Progress,
        redact: Callable[[str], str],
        interval: float = LIVE_LINE_INTERVAL_S,
        *,
        every_line: bool = False,
    ) -> None:
        self._stage, self._progress, self._redact = stage, progress, redact
        self._interval = interval
        self._every_line = every_line
        self._pending = {1: b"", 2: b""}  # per stream: a partial line never joins the other's
        self._last_sent = ""
        self._next_at = 0.0

    def __call__(self, stream: int, data: bytes) -> None:
        if self._every_line:
            self._each_line(stream, data)
            return
        pending = self._pending[stream] = (self._pending.get(stream, b"") + data)[-LIVE_LINE_BYTES:]
        now = time.monotonic()
        if now < self._next_at:
            return
        complete = pending[: pending.rfind(b"\n") + 1]
        # Escapes from the target never reach the user's terminal (issue 15 item 11).
        lines = (
            strip_controls(ln.decode(errors="replace")).strip() for ln in complete.split(b"\n")
        )
        last = next((ln for ln in reversed(list(lines)) if ln), None)
        if last is None:
            return
        line = self._redact(last)[:200]
        if line != self._last_sent:
            self._last_sent, self._next_at = line, now + self._interval
            self._progress(f"{self._stage} | {line}")

    def _each_line(self, stream: int, data: bytes) -> None:
        """``--follow``: every complete line, masked (a line longer than 4 KiB is cut)."""
        pending = self._pending.get(stream, b"") + data
        *lines, rest = pending.split(b"\n")
        self._pending[stream] = rest[-LIVE_LINE_BYTES:]
        for raw in lines:
            self._progress(f"{self._stage} | {self._redact(raw.decode(errors='replace').rstrip())}")

    def flush(self) -> None:
        """The last line of a command that did not end it with a newline (``--follow``)."""
        if self._every_line:
            for stream in (1, 2):
                if self._pending.get(stream):
                    self._each_line(stream, b"\n")


def _run_one(
    sandbox: Sandbox,
    plan: StagePlan,
    cmd: str,
    policy: CommandPolicy,
    started: float,
    prelude: str,
    on_output: Callable[[int, bytes], None] | None = None,
) -> CmdResult:
    try:
        policy.check(cmd, stage=plan.name)
    except PolicyViolation as exc:
        return CmdResult(cmd, RC_BLOCKED, "", str(exc), blocked_reason=f"{exc.rule}: {exc.reason}")
    timeout = plan.cmd_timeout
    if plan.total_budget is not None:
        left = plan.total_budget - (time.monotonic() - started)
        if left <= 0:
            return CmdResult(
                cmd, RC_TIMEOUT, "", f"stage {plan.name}: max_total_seconds used up", timed_out=True
            )
        timeout = left if timeout is None else min(timeout, left)
    # Output is captured capped in memory and written (redacted) by artifacts.py; it is
    # never streamed raw into the run dir, where a secret could land unmasked.
    res = sandbox.exec(
        f"{prelude}\n{cmd}" if prelude else cmd,
        env=plan.env,
        cwd=plan.cwd,
        timeout=timeout,
        on_output=on_output,
    )
    return CmdResult(
        cmd,
        res.exit_code,
        res.stdout,
        res.stderr,
        res.timed_out,
        res.duration_s,
        res.oom_killed,
        res.truncated,
        disk_exceeded=res.disk_exceeded,
    )


def _record(result: CmdResult) -> CommandRecord:
    return CommandRecord(
        exit_code=result.rc,
        stdout=result.stdout,
        stderr=result.stderr,
        timed_out=result.timed_out,
        duration_s=result.duration_s,
        oom_killed=result.oom_killed,
        truncated=result.truncated,
        blocked_reason=result.blocked_reason,
        disk_exceeded=result.disk_exceeded,
    )
