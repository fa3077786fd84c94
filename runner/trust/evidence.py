"""Evidence the runner collects itself, and the checks that use it.

The predecessor trusted ``hints_used.json`` as written by the stage. Here a claim is
checked against what the runner saw run: the commands it executed, the xtrace of the
stage's bash scripts (``stage_trace.sh`` via ``BASH_ENV``), and, only when those show the
runner's own helper was invoked, the helper's log. Traces and logs are written inside
the same container as the target, so they raise the bar; they are not proof.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from runner.contract import validate_hints_run, validate_hints_used
from runner.errors import ContractError
from runner.trust.helper_mount import RUNNER_ROOT_IN_SANDBOX as RUNNER_ROOT_IN_SANDBOX
from runner.trust.helper_mount import runner_package_dir as runner_package_dir
from runner.trust.hints import check_hints_evidence, read_hints_exec

TRACE_LIMIT = 4_000_000
"""Bytes of shell trace read per file."""


def helper_env(root: str, pythonpath: str | None = None) -> dict[str, str]:
    """Env that makes ``python -m runner.helpers.generic_evaluation`` and the documented script paths work.

    ``pythonpath`` (the contract's own, e.g. from bootstrap.yml) is kept after ours.
    """
    path = f"{root}:{pythonpath}" if pythonpath and pythonpath != root else root
    return {"AIDER_FSM_RUNNER_ROOT": root, "PYTHONPATH": path}


def trace_env(root: str) -> dict[str, str]:
    """Env that makes every bash of the stage write an xtrace next to its artifacts."""
    return {"BASH_ENV": f"{root}/runner/helpers/stage_trace.sh"}


def executed_commands(commands: Sequence[str], stage_files: Path) -> list[str]:
    """What the runner saw run in a stage: its commands plus the scripts' traced lines."""
    executed = list(commands)
    if stage_files.is_dir():
        for trace in sorted(stage_files.glob("shell_trace.*.log")):
            if trace.is_symlink() or not trace.is_file():
                continue
            with open(trace, "rb") as fh:
                text = fh.read(TRACE_LIMIT).decode("utf-8", errors="replace")
            executed.extend(
                line.lstrip("+").strip() for line in text.splitlines() if line.startswith("+")
            )
    return executed


def hints_errors(
    *,
    hints_used_path: Path,
    hints_run_path: Path,
    env: Mapping[str, str],
    executed: Sequence[str],
    stage_files: Path,
) -> list[str]:
    """The predecessor's hints_used/hints_run checks, then the evidence check; [] when fine."""
    try:
        anchors = json.loads(env.get("AIDER_FSM_HINT_ANCHORS_JSON") or "[]")
    except ValueError:
        anchors = []
    try:
        used = validate_hints_used(hints_used_path, [str(a) for a in anchors])
    except ContractError as exc:
        return [f"evaluation.hints_requirement_failed: {exc.message}"]
    try:
        validate_hints_run(hints_run_path)
    except ContractError as exc:
        return [f"evaluation.hints_run_requirement_failed: {exc.message}"]
    log = stage_files / "hints_exec.jsonl"
    helper_log = read_hints_exec(log) if log.is_file() and not log.is_symlink() else []
    return check_hints_evidence(used, executed, helper_log=helper_log)


def claimed_hints_errors(
    hints_used_path: Path, executed: Sequence[str], *, stage_files: Path
) -> list[str]:
    """A stage's own ``hints_used.json``, checked against what the runner saw run.

    Only its claims count: the requirement itself is decided by the runner
    (``runner/trust/hint_check.py``), so a file that claims nothing is no error.
    """
    try:
        with open(hints_used_path, "rb") as fh:
            data = json.loads(fh.read(TRACE_LIMIT))
    except (OSError, ValueError, RecursionError):
        return []
    if not isinstance(data, dict):
        return []
    log = stage_files / "hints_exec.jsonl"
    helper_log = read_hints_exec(log) if log.is_file() and not log.is_symlink() else []
    return check_hints_evidence(data, executed, helper_log=helper_log)


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "y", "on")
