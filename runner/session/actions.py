"""``.aider_fsm/actions.yml``: the predecessor's one-shot action list, now executed.

The predecessor documented this file but had deleted its executor, so actions were
silently ignored. Here they run once per session, right after bootstrap, inside the
sandbox: ``run_cmd`` (and its aliases ``install_tool``/``start_service``) goes through the
command policy like any stage command; ``write_file`` writes into the sandbox's copy of
the repo, never into the contract itself (``pipeline.yml``, ``.aider_fsm/``) nor ``.git``.
The host's file is left in place (the host checkout is input, not scratch space).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path, PurePosixPath

from runner.contract import ActionsSpec
from runner.runs.run_dir import RunDir
from runner.session.stages import CmdResult, Progress, StagePlan, StageResult, run_stage
from runner.trust.policy import CommandPolicy
from sandbox import Sandbox

PROTECTED = ("pipeline.yml", ".aider_fsm", ".git")


def _protected(path: str) -> bool:
    first = PurePosixPath(path).parts[0] if PurePosixPath(path).parts else ""
    return path == "pipeline.yml" or first in PROTECTED[1:]


def run_actions(
    sandbox: Sandbox,
    actions: ActionsSpec,
    *,
    plan: StagePlan,
    policy: CommandPolicy,
    run_dir: RunDir,
    record_dir: Path,
    progress: Progress | None = None,
) -> StageResult:
    """Run every action in order; the first failure stops the list (a result, not a raise)."""
    results: list[CmdResult] = []
    summary: list[dict[str, object]] = []
    failed: int | None = None
    for index, action in enumerate(actions.actions):
        label = action.id or f"action_{index + 1:02d}"
        if action.run_kind == "write_file":
            res = _write_file(sandbox, action.path or "", action.content or "")
        else:
            one = dataclasses.replace(
                plan,
                name="actions",
                cmds=(action.cmd or "",),
                env={**plan.env, "AIDER_FSM_STAGE": "actions", "AIDER_FSM_ACTION_ID": label},
                # An action's own timeout never loosens the caps in the plan (item 5).
                cmd_timeout=min(
                    (t for t in (action.timeout_seconds, plan.cmd_timeout) if t), default=None
                ),
                retries=action.retries,
            )
            stage = run_stage(
                sandbox,
                one,
                policy=policy,
                run_dir=run_dir,
                record_dir=record_dir / label,
                progress=progress,
            )
            res = stage.results[-1]
        results.append(res)
        ok = res.rc == 0 and not res.timed_out
        summary.append(
            {
                "id": label,
                "kind": action.kind,
                "ok": ok,
                "rc": res.rc,
                "reason": res.blocked_reason or "",
            }
        )
        if not ok:
            failed = index
            break
    run_dir.write_json(record_dir / "actions_summary.json", summary)
    return StageResult("actions", failed is None, tuple(results), failed, plan.network.value)


def _write_file(sandbox: Sandbox, path: str, content: str) -> CmdResult:
    cmd = f"write_file {path}"
    if _protected(path):
        return CmdResult(
            cmd,
            126,
            "",
            "refused: actions may not write the contract or .git",
            blocked_reason=f"protected-path: {path}",
        )
    with tempfile.TemporaryDirectory(prefix="fsm-action-") as tmp:
        src = Path(tmp) / "content"
        src.write_text(content)
        sandbox.push(src, path)
    return CmdResult(cmd, 0, f"wrote {len(content)} chars to {path}", "")
