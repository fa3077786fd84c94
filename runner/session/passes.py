"""A pass through some stages, and what it brings back from the sandbox.

Every rollout, evaluation or teardown attempt is a pass: the runner records its commands
under ``env_api/<pass>/`` in the run dir, and its stages write their artifacts to a dir
of their own inside the sandbox. The session and its checks (bootstrap, rollout,
evaluation) all read outputs and stage files back the same way, so that lives here.
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from runner.contract.outputs import omitted_note
from runner.contract.paths import to_sandbox_rel
from runner.runs.run_dir import RunDir, max_copy_bytes, max_pass_bytes, max_pass_entries
from runner.session.outputs_io import OutputTooLarge, read_output, write_host_output
from runner.session.results import VerificationResult
from runner.session.stages import StageResult
from sandbox import OMITTED_SUFFIX, Sandbox
from sandbox.copyout import replace_tree, tree_usage
from sandbox.errors import SandboxError as SandboxLayerError

STAGE_FILES = "stage_files"
"""Where a pass's stage files land in its record dir (the latest whole copy)."""


@dataclass
class Pass:
    """One pass through some stages: its host record dir and in-sandbox artifacts dir."""

    name: str
    host_dir: Path
    sandbox_dir: str
    verify: VerificationResult = field(default_factory=VerificationResult)
    copied: dict[str, tuple[int, int]] = field(default_factory=dict)
    """What each copy of this pass brought back, by name: (bytes, entries). The caps
    ``FSM_RUNNER_MAX_PASS_BYTES``/``_ENTRIES`` hold for all of them together."""

    def copy_caps(self, copy: str) -> dict[str, int]:
        """``Sandbox.pull`` caps for the copy ``copy``: what the pass's others left over.

        A copy that replaces an earlier one of the same name (stage files pulled again)
        gets that one's share back, since the earlier copy is removed.
        """
        others = [v for k, v in self.copied.items() if k != copy]
        return {
            "max_file_bytes": max_copy_bytes(),
            "max_total_bytes": max(0, max_pass_bytes() - sum(b for b, _ in others)),
            "max_entries": max(0, max_pass_entries() - sum(e for _, e in others)),
        }

    def record_copy(self, copy: str, where: Path) -> None:
        """Count what the copy ``copy`` left at ``where`` against the pass's caps."""
        self.copied[copy] = tree_usage(where)


def sync_output(
    sb: Sandbox, run_dir: RunDir, repo_root: Path, rel: str, p: Pass
) -> tuple[Path | None, Path | None]:
    """Read an output from the sandbox into the pass's mirror and the host's .aider_fsm/."""
    mirror = p.host_dir / "outputs" / rel
    try:
        data = read_output(sb, rel)
    except OutputTooLarge as exc:  # the validators report the note, not a cut copy
        run_dir.write_text(omitted_note(mirror).relative_to(run_dir.path), exc.message)
        return mirror, write_host_output(repo_root, rel, None)
    if data is not None:
        run_dir.write_bytes(mirror.relative_to(run_dir.path), data)
    host = write_host_output(repo_root, rel, None if data is None else run_dir.redact_bytes(data))
    return (mirror if data is not None else None), host


def pull_stage_files(sb: Sandbox | None, run_dir: RunDir, p: Pass) -> None:
    """Bring the stage's own artifacts dir back (safe pull), scrubbed of secrets.

    Each pull goes into a fresh folder and then takes the place of the previous one
    (issue 15: a copy never writes into a folder an earlier copy filled), so
    ``stage_files/`` is always one whole copy: the latest.
    """
    if sb is None:
        return
    rel = to_sandbox_rel(p.sandbox_dir, sb.workspace)
    if rel is None:
        return
    fresh = p.host_dir / f".stage_files.{secrets.token_hex(4)}.new"
    caps = p.copy_caps(STAGE_FILES)
    try:
        written = sb.pull(rel, fresh, **caps)
    except BaseException as exc:
        shutil.rmtree(fresh, ignore_errors=True)  # the pull removes its own; a single file's folder
        if isinstance(exc, FileNotFoundError):
            return
        if isinstance(exc, SandboxLayerError):
            run_dir.event("stage_files_refused", pass_=p.name, reason=str(exc))
            return
        raise
    run_dir.scrub_tree(fresh)
    replace_tree(p.host_dir, fresh.name, STAGE_FILES)
    p.record_copy(STAGE_FILES, p.host_dir / STAGE_FILES)
    omitted = [name for name in written if name.endswith(OMITTED_SUFFIX)]
    if omitted:
        run_dir.event("stage_files_omitted", pass_=p.name, files=omitted, **caps)


def export_target(run_dir: RunDir, dest: str | Path) -> Path:
    """Where :func:`export_env_api` will copy to, checked before the call does any work.

    Raises:
        ValueError: ``dest`` is inside the run dir (a copy into itself).
    """
    target = Path(dest).expanduser().resolve()
    if target.is_relative_to(run_dir.path.resolve()):
        raise ValueError(f"artifacts_dir {target} is inside the run dir {run_dir.path}")
    return target


def export_env_api(run_dir: RunDir, dest: str | Path) -> Path:
    """Copy the run dir's ``env_api/`` into ``dest``: the predecessor's ``artifacts_dir=``.

    The predecessor wrote a call's records straight into that folder; the run dir stays
    the one place the runner writes (and redacts), so the caller gets a copy, refreshed
    after each call. Links are copied as links (the run dir holds none of its own).
    """
    target = export_target(run_dir, dest)
    source = run_dir.path / "env_api"
    if source.is_dir():
        shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
    else:
        target.mkdir(parents=True, exist_ok=True)
    run_dir.event("artifacts_exported", dest=str(target))
    return target


def failure_reason(verify: VerificationResult) -> str:
    """Why a pass failed: the failed stage's reason, else the metrics errors, else its name."""
    stage = getattr(verify, verify.failed_stage or "", None)
    if isinstance(stage, StageResult):
        return stage.reason
    return "; ".join(verify.metrics_errors) or (verify.failed_stage or "")
