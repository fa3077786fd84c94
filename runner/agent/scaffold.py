"""Scaffold: the agent writes a contract for a repository that has none.

Each attempt runs the agent in a fresh sandbox (``attempt.run_attempt``), takes back
only the contract, then checks it: schema, required stages, referenced scripts,
``bash -n``, and an optional smoke run supplied by the caller (the session runs the
stages in a fresh sandbox). The errors go into the next attempt's prompt. Attempts and
wall time are bounded; on failure the contract is put back as it was (a half-written
``pipeline.yml`` would turn the next ``setup()`` into a ContractError instead of a new
scaffold) and ``AgentError`` names the last reason and the artifacts path.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner.agent import prompts
from runner.agent.attempt import WORKSPACE_EXCLUDE, AttemptResult, prepare_attempts, run_attempt
from runner.agent.checks import restore_contract, snapshot_contract, validate_contract
from runner.agent.config import Bounds
from runner.agent.scope import host_manifest
from runner.agent.transcript import ModelUnreachable, SandboxUnavailable
from runner.errors import AgentError, RunnerError
from runner.runs.run_dir import RunDir
from runner.trust.hints import suggest_hints

PROVENANCE = "scaffold_provenance.json"
MAX_ATTEMPTS = 10
SmokeCheck = Callable[[Path], str | None]
"""Runs the new contract (in a fresh sandbox); returns None when it passed, else why not."""
Progress = Callable[[str], None]


def scaffold_contract(
    repo_root: Path,
    *,
    model: str,
    run_dir: RunDir,
    attempts: int = 3,
    timeout_s: float = 1800.0,
    env: Mapping[str, str] | None = None,
    hints: Sequence[str] | None = None,
    pipeline_rel: str = "pipeline.yml",
    bounds: Bounds | None = None,
    image: str | None = None,
    opencode_bin: Path | None = None,
    smoke: SmokeCheck | None = None,
    progress: Progress | None = None,
) -> Path:
    """Have the OpenCode agent write ``pipeline_rel`` and ``.aider_fsm/`` for ``repo_root``.

    Args:
        repo_root: the host checkout; only its contract files are ever written.
        model: ``provider/model``; the model part is what the endpoint is asked for.
        run_dir: where attempts are recorded (``scaffold/attempt_NN/``) and
            ``scaffold_provenance.json`` is written.
        attempts: at most this many agent runs (1..10).
        timeout_s: wall time for all attempts together.
        env: ``OPENAI_API_BASE`` / ``OPENAI_API_KEY`` overrides (else the process env).
        hints: official commands from the repo's README/docs/CI (None: ``runner.trust.hints``
            finds them).
        bounds: per-attempt limits; ``total_s`` is further capped by what is left of
            ``timeout_s``.
        smoke: optional run of the new contract; its error feeds the next attempt.

    Returns:
        The path of the validated pipeline file.

    Raises:
        AgentError: no valid contract within the attempts or time (the message names
            the last reason and the run dir), the model endpoint is unreachable
            (``ModelUnreachable``), or the agent sandbox failed.
        ValueError: ``attempts`` or ``timeout_s`` out of range.
    """
    if not 1 <= attempts <= MAX_ATTEMPTS:
        raise ValueError(f"attempts must be 1..{MAX_ATTEMPTS}, got {attempts}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    repo_root, settings = prepare_attempts(repo_root, model, env=env, bounds=bounds, image=image,
                                           opencode_bin=opencode_bin, pipeline_rel=pipeline_rel)  # fmt: skip
    deadline = time.monotonic() + timeout_s
    original = snapshot_contract(repo_root, pipeline_rel)
    files = sorted(host_manifest(repo_root, WORKSPACE_EXCLUDE))
    readme = _readme(repo_root)
    if hints is None:
        hints = [h.command for h in suggest_hints(repo_root)]
    provenance: dict[str, Any] = {
        "ts": datetime.now(UTC).isoformat(timespec="seconds"),
        "purpose": "scaffold_contract",
        "repo": str(repo_root),
        "model": settings.route.name,
        "pipeline_rel": pipeline_rel,
        "hints": list(hints),
        "attempts": [],
        "ok": False,
    }
    failure: str | None = None
    for n in range(1, attempts + 1):
        left = deadline - time.monotonic()
        if left <= 1:
            failure = f"scaffold ran out of time ({timeout_s:.0f}s) before attempt {n}; {failure}"
            break
        attempt_settings = dataclasses.replace(
            settings,
            bounds=dataclasses.replace(settings.bounds, total_s=min(settings.bounds.total_s, left)),
        )
        prompt = prompts.scaffold_prompt(
            repo_name=repo_root.name,
            files=files,
            readme=readme,
            hints=hints,
            pipeline_rel=pipeline_rel,
            attempt=n,
            attempts=attempts,
            previous_failure=failure,
        )
        _say(progress, f"scaffold attempt {n}/{attempts} (model {settings.route.name})")
        record: dict[str, Any] = {"attempt": n}
        try:
            result = run_attempt(
                repo_root,
                prompt,
                settings=attempt_settings,
                run_dir=run_dir,
                record_rel=f"scaffold/attempt_{n:02d}",
                title=f"{repo_root.name}:scaffold",
            )
        except (ModelUnreachable, SandboxUnavailable) as exc:
            _finish(
                run_dir, provenance, record | {"error": str(exc)}, repo_root, original, pipeline_rel
            )
            raise
        except AgentError as exc:
            failure = f"agent_failed: {exc}"
            provenance["attempts"].append(record | {"ok": False, "reason": failure})
            run_dir.write_json(PROVENANCE, provenance)
            continue
        failure = _check(repo_root, result, pipeline_rel, smoke)
        record.update(result.record(), ok=failure is None, reason=failure)
        provenance["attempts"].append(record)
        run_dir.write_json(PROVENANCE, provenance)
        run_dir.event("agent_attempt", purpose="scaffold", attempt=n, ok=failure is None,
                      reason=failure, changed_files=result.scope.changed_files)  # fmt: skip
        if failure is None:
            provenance["ok"] = True
            run_dir.write_json(PROVENANCE, provenance)
            _say(progress, f"scaffold attempt {n} wrote a valid contract")
            return repo_root / pipeline_rel
        _say(progress, f"scaffold attempt {n} failed: {failure[:200]}")
    reason = failure or "no attempt ran"
    _finish(run_dir, provenance, None, repo_root, original, pipeline_rel)
    raise AgentError(f"scaffold failed after {attempts} attempt(s): {reason} (see {run_dir.path})")


def _check(
    repo_root: Path, result: AttemptResult, pipeline_rel: str, smoke: SmokeCheck | None
) -> str | None:
    errors = validate_contract(
        repo_root, pipeline_rel=pipeline_rel, script_errors=result.script_errors
    )
    if result.error and errors:
        errors.insert(0, f"agent_error: {result.error}")
    if errors:
        return "; ".join(errors)
    if smoke is not None:
        try:
            problem = smoke(repo_root)
        except RunnerError as exc:  # a ContractError or SandboxError from the smoke session
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            return f"smoke_run_failed: {problem}"
    return None


def _finish(
    run_dir: RunDir,
    provenance: dict[str, Any],
    record: dict[str, Any] | None,
    repo_root: Path,
    original: dict[str, tuple[bytes, bool]],
    pipeline_rel: str,
) -> None:
    if record is not None:
        provenance["attempts"].append(record)
    restore_contract(repo_root, original, pipeline_rel)
    provenance["restored_original_contract"] = True
    run_dir.write_json(PROVENANCE, provenance)
    run_dir.event("agent_failed", purpose="scaffold", attempts=len(provenance["attempts"]))


def _readme(repo_root: Path) -> str:
    for name in ("README.md", "README.rst", "README.txt", "README"):
        path = repo_root / name
        if path.is_file() and not path.is_symlink():
            return path.read_bytes()[: prompts.MAX_README_CHARS * 2].decode(
                "utf-8", errors="replace"
            )
    return ""


def _say(progress: Progress | None, msg: str) -> None:
    if progress is not None:
        progress(msg)
