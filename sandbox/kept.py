"""Sandboxes a run left running on purpose (``fsm-runner run --keep``), for a human to enter.

A kept container carries ``fsm-runner.kept`` from its creation (labels cannot change on a
running container): ``reaper.gc()`` leaves it alone until asked (``gc(include_kept=True)``,
``fsm-runner gc --kept``). ``fsm-runner shell RUN_ID`` finds it here by its run id.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from .engine import engine_errors, get_client

LABEL_KEPT = "fsm-runner.kept"
LABEL_RUN_ID = "fsm-runner.run-id"


@dataclass(frozen=True)
class KeptSandbox:
    name: str
    run_id: str
    status: str
    workspace: str


def find_kept(run_id: str = "") -> list[KeptSandbox]:
    """Kept sandboxes, of one run (a run id or a prefix of one) or all of them."""
    with engine_errors("list kept sandboxes"):
        found: list[Any] = get_client().containers.list(
            all=True, filters={"label": f"{LABEL_KEPT}=1"}, ignore_removed=True
        )
    out = []
    for ct in found:
        rid = ct.labels.get(LABEL_RUN_ID, "")
        if rid.startswith(run_id):
            workdir = (ct.attrs.get("Config") or {}).get("WorkingDir") or "/"
            out.append(KeptSandbox(ct.name, rid, ct.status, workdir))
    return out


def exec_in(name: str, argv: list[str], workdir: str) -> int:
    """Run ``argv`` in a kept sandbox without a terminal, its output passed through; its exit code."""
    client = get_client()
    with engine_errors(f"exec in {name}"):
        exec_id = client.api.exec_create(name, argv, workdir=workdir)["Id"]
        for out, err in client.api.exec_start(exec_id, stream=True, demux=True):
            if out:
                sys.stdout.buffer.write(out)
                sys.stdout.buffer.flush()
            if err:
                sys.stderr.buffer.write(err)
                sys.stderr.buffer.flush()
        return int(client.api.exec_inspect(exec_id).get("ExitCode") or 0)
