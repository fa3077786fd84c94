"""Where run dirs live and what their files are called.

The writer (:mod:`runner.runs.run_dir`) and the readers (:mod:`runner.runs.listing`,
:mod:`runner.runs.summary`) take names from here, so a file is found where it was put.

Run ids carry a random suffix: the predecessor's one-second ids let two sessions on
one repo share a directory (notes/predecessor.md 14.3).
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from pathlib import Path

from runner.errors import ContractError

EVENTS_FILE = "events.jsonl"
"""The run's event log, one JSON object a line; :meth:`runner.runs.run_dir.RunDir.event` appends."""
RUN_ID_RE = re.compile(r"^(\d{8}_\d{6})(?:_[0-9a-f]{6})?$")
"""Our ids (``YYYYmmdd_HHMMSS_<6 hex>``) and the predecessor's (no suffix)."""
# runner.contract.paths.AIDER_DIR, spelled out: importing runner.contract loads pydantic,
# which the CLI must not pay for before a command runs (issue 17).
_AIDER_DIR = ".aider_fsm"


def new_run_id(now: datetime | None = None) -> str:
    """``YYYYmmdd_HHMMSS_<6 hex>`` in UTC: sortable by time, unique by its suffix."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d_%H%M%S")
    return f"{stamp}_{secrets.token_hex(3)}"


def runs_root(repo_root: Path, base: Path | None = None) -> Path:
    """The folder holding a repo's run dirs: ``base``, else ``<repo>/.aider_fsm/artifacts``."""
    return base if base is not None else repo_root / _AIDER_DIR / "artifacts"


def refuse_planted_links(repo_root: Path) -> None:
    """Refuse a ``.aider_fsm`` or ``.aider_fsm/artifacts`` that is a symbolic link.

    The repo is untrusted input: a planted link must not move the run dir (and
    everything we write) somewhere else.

    Raises:
        ContractError: one of them is a link.
    """
    for part in (repo_root / _AIDER_DIR, runs_root(repo_root)):
        if part.is_symlink():
            raise ContractError(
                "is a symbolic link; refusing to write the run dir through it", file=part
            )


def command_stem(stage: str, index: int, attempt: int) -> str:
    """``<stage>_cmdCC_tryTT``: the name every file of one command attempt starts with."""
    return f"{stage}_cmd{index + 1:02d}_try{attempt + 1:02d}"
