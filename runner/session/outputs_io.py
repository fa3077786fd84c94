"""Moving contract outputs between the sandbox and the host, safely and freshly.

Outputs (``.aider_fsm/runtime_env.json``, ``rollout.json``, ``metrics.json``,
``hints_*.json``) are removed inside the sandbox before the stage that writes them, so a
stale file can never pass. Afterwards they are read through the sandbox (links are never
followed, sizes are capped) and written to the host's ``.aider_fsm/`` without following
any link planted there: the host repo is written nowhere else.
"""

from __future__ import annotations

import os
import secrets
import shlex
from pathlib import Path, PurePosixPath

from runner.contract.paths import AIDER_DIR
from runner.errors import ContractError
from sandbox import Sandbox

MAX_JSON_OUTPUT = 16 * 1024 * 1024
"""Largest JSON output we read back (rollout.json, metrics.json, ...)."""


def housekeeping(artifacts_dir: str, stale_outputs: tuple[str, ...]) -> str:
    """Shell run before a stage's first command: its artifacts dir exists, old outputs are gone.

    Removing outputs first is what makes them fresh: a stage that exits 0 without writing
    its output can never pass on a previous run's file.
    """
    parts = [f"mkdir -p -- {shlex.quote(artifacts_dir)}"]
    if stale_outputs:
        parts.append("rm -f -- " + " ".join(shlex.quote(p) for p in stale_outputs))
    return " && ".join(parts)


class OutputTooLarge(ContractError):
    """An output over the read cap: it is not brought back at all (issue 15 item 12: a
    cut copy of metrics.json only ever read as "invalid_json", never as "too large")."""


def read_output(sandbox: Sandbox, rel_path: str, limit: int = MAX_JSON_OUTPUT) -> bytes | None:
    """The output's bytes, or None when it does not exist (or is a link, never followed).

    Raises:
        OutputTooLarge: the file is bigger than ``limit`` bytes.
    """
    try:
        data = sandbox.read_file(rel_path, limit=limit + 1)
    except FileNotFoundError:
        return None
    if len(data) > limit:
        raise OutputTooLarge(
            f"over the {limit}-byte cap: not read (a cut copy could only be invalid JSON)",
            file=rel_path,
        )
    return data


def write_host_output(repo_root: Path, rel_path: str, data: bytes | None) -> Path | None:
    """Mirror an output into the host repo's ``.aider_fsm/`` (or delete a stale copy when None).

    Raises:
        ContractError: the path is not under ``.aider_fsm/`` or ``.aider_fsm`` is a link.
    """
    target = _host_output_path(repo_root, rel_path)
    if target is None:
        return None
    if data is None:
        target.unlink(missing_ok=True)
        return None
    # A fresh temp file (O_EXCL: never through a planted link) renamed over the target:
    # rename replaces a link itself, never what it points at, and two sessions writing
    # the same output race to a whole file instead of failing on each other's unlink.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _host_output_path(repo_root: Path, rel_path: str) -> Path | None:
    parts = PurePosixPath(rel_path).parts
    if len(parts) < 2 or parts[0] != AIDER_DIR or ".." in parts:
        return None  # outputs outside .aider_fsm/ stay in the run dir only
    aider = repo_root / AIDER_DIR
    if aider.is_symlink():
        raise ContractError(
            f"{AIDER_DIR} is a symbolic link; refusing to write outputs through it", file=aider
        )
    current = aider
    for part in parts[1:-1]:
        current = current / part
        if current.is_symlink():
            raise ContractError(
                "output folder is a symbolic link; refusing to write through it", file=current
            )
    current.mkdir(parents=True, exist_ok=True)
    return current / parts[-1]
