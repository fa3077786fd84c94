"""Build and write ``manifest.json`` (:mod:`runner.runs.manifest`) when a session closes.

The session makes two calls in ``close()``: :func:`collect_samples` while the sandbox is
still open (so the samples file is in the run dir even without ``require_samples``),
and :func:`write_manifest` last, once every other file of the run dir is final.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from runner.contract.paths import FIXED_OUTPUTS, ROLLOUT_JSON, to_sandbox_rel
from runner.runs.determinism import DETERMINISM_DEFAULTS, SEED_VAR, derive_seed
from runner.runs.manifest import (
    MANIFEST_FILE,
    Call,
    Command,
    Image,
    Manifest,
    Outputs,
    Result,
    Settings,
    Stage,
    Target,
    digest_entry,
    run_dir_files,
    sha256_file,
)
from runner.runs.report import command_row, read_events
from runner.runs.run_dir import RunDir, mask_env, max_copy_bytes
from sandbox import OMITTED_SUFFIX, SandboxSpec
from sandbox.archive import selected_files

if TYPE_CHECKING:
    from runner.targets.resolve import TargetRepo
    from sandbox import Sandbox

log = logging.getLogger("fsm_runner")

DEFAULT_METRICS_REL = ".aider_fsm/metrics.json"


@dataclass(frozen=True)
class SessionFacts:
    """What the session hands over for its manifest: the data, not the session itself."""

    run_dir: RunDir
    repo: TargetRepo
    llm: str | None
    """The model id or local model dir the session used, if any."""
    metrics_rel: str | None
    """The pipeline's ``evaluation.metrics_path``, when it names one."""
    settings: dict[str, Any]
    """The :class:`~runner.runs.manifest.Settings` fields the session knows (the rest come from events)."""
    env_file_seed: str | None = None
    """``AIDER_FSM_SEED`` as the user's env file set it."""
    seed: int | None = None
    """``setup(seed=)``."""


_HASH_FIELDS = frozenset({"sha256", "stdout_sha256", "stderr_sha256", "workspace_sha256"})


def workspace_digest(repo: Path, exclude: tuple[str, ...]) -> tuple[str, int]:
    """sha256 over what a sandbox copies in (path, executable bit, content), and the count."""
    digest, count = hashlib.sha256(), 0
    for rel in selected_files(repo, exclude):
        entry = digest_entry(repo, rel)
        mode = "x" if not (repo / rel).is_symlink() and os.access(repo / rel, os.X_OK) else "-"
        digest.update(f"{rel}\0{mode}\0{entry.sha256}\n".encode())
        count += 1
    return digest.hexdigest(), count


WORKSPACE_EXCLUDE = (*SandboxSpec.exclude, *FIXED_OUTPUTS)
"""What the session leaves out of the workspace copy (runner/session_sandbox.py ``open_session_sandbox``)."""


# -- samples: the one output the run dir may not hold yet -------------------------------


def _pass_dirs(events: list[dict[str, Any]]) -> list[str]:
    """Pass dirs (``env_api/...``) in the order the run first used them."""
    seen: dict[str, None] = {}
    for ev in events:
        if ev.get("kind") == "command" and isinstance(ev.get("dir"), str):
            seen.setdefault(ev["dir"], None)
    return list(seen)


def _latest_output(run_dir: Path, dirs: list[str], rel: str) -> str | None:
    for d in reversed(dirs):
        if (run_dir / d / "outputs" / rel).is_file():
            return f"{d}/outputs/{rel}"
    return None


def _samples_rel(run_dir: Path, rollout: str, workspace: str) -> str | None:
    """Where ``rollout.json`` says the samples are, relative to the workspace."""
    try:
        data = json.loads((run_dir / rollout).read_text(encoding="utf-8"))
        raw = data["paths"]["samples_jsonl"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return to_sandbox_rel(raw, workspace) if isinstance(raw, str) and raw.strip() else None


def collect_samples(run_dir: RunDir, sandbox: Sandbox | None) -> None:
    """Copy the last rollout's samples file into its pass's ``outputs/`` before the sandbox goes.

    ``require_samples=True`` already brought it back; otherwise this does (up to
    :func:`~runner.session.outputs_io.max_copy_bytes`), so the manifest can hash it and replay can compare
    samples. Never raises.
    """
    if sandbox is None:
        return
    try:
        dirs = _pass_dirs(read_events(run_dir.path))
        rollout = _latest_output(run_dir.path, dirs, ROLLOUT_JSON)
        rel = _samples_rel(run_dir.path, rollout, sandbox.workspace) if rollout else None
        if rollout is None or rel is None:
            return
        dest = f"{rollout.split('/outputs/', 1)[0]}/outputs/{rel}"
        there = run_dir.path / dest
        if (
            there.exists()
            or there.is_symlink()
            or there.with_name(there.name + OMITTED_SUFFIX).exists()
        ):
            return
        # Bounded: a contract cannot make close() copy gigabytes (links are not followed).
        cap = max_copy_bytes()
        data = sandbox.read_file(rel, limit=cap + 1)
        if len(data) > cap:
            log.info("samples file %s is over %d bytes: not copied", rel, cap)
            return
        run_dir.write_bytes(dest, data)  # redacted, like every file there
    except Exception as exc:
        log.info("samples not copied for the manifest: %s", exc)


# -- the builder ------------------------------------------------------------------------


def _image(role: Literal["base", "bootstrap_cache"], ref: str | None, **extra: Any) -> Image:
    image_id, digest = extra.pop("id", None), None
    if ref and ref != "local":
        try:
            from sandbox.engine import get_client

            attrs = get_client().images.get(ref).attrs
            image_id = attrs.get("Id") or image_id
            digests = attrs.get("RepoDigests") or []
            digest = str(digests[0]) if digests else None
        except Exception as exc:
            log.info("image %s not inspected: %s", ref, exc)
    return Image(role=role, ref=ref, id=image_id, digest=digest, **extra)


def _images(sandbox_json: dict[str, Any], events: list[dict[str, Any]]) -> list[Image]:
    cache = sandbox_json.get("bootstrap_cache")
    if not isinstance(cache, dict):  # tolerate runs recorded before the cache existed
        cache = next((e for e in events if e.get("kind") == "bootstrap_cache"), None) or {}
    hit = cache.get("hit") is True
    base_ref = cache.get("base_image") or (None if hit else sandbox_json.get("image"))
    images = [_image("base", base_ref, id=cache.get("base_image_id") or None)]
    cache_ref = cache.get("image") or cache.get("saved_image") or None
    if cache_ref or cache.get("saved_image_id"):
        images.append(
            _image(
                "bootstrap_cache",
                cache_ref,
                id=cache.get("saved_image_id") or None,
                hit=hit,
                key=cache.get("key") or None,
            )
        )
    return images


def _stages_and_commands(
    run_dir: Path, events: list[dict[str, Any]]
) -> tuple[list[Stage], list[Command]]:
    stages: list[Stage] = []
    commands: list[Command] = []
    open_: dict[str, tuple[Stage, dict[str, str]]] = {}
    for ev in events:
        kind = ev.get("kind")
        if kind == "stage_start":
            raw_env = ev.get("env")
            env = raw_env if isinstance(raw_env, dict) else {}
            stage = Stage(
                stage=str(ev.get("stage")),
                pass_dir=None,
                network=ev.get("network"),
                workdir=ev.get("cwd"),
                timeout_s=ev.get("timeout_s"),
                total_budget_s=ev.get("total_budget_s"),
                retries=ev.get("retries"),
            )
            stages.append(stage)
            open_[stage.stage] = (stage, {str(k): str(v) for k, v in env.items()})
        elif kind == "command":
            row = command_row(ev)
            current, env = open_.get(row.stage, (None, {}))
            if current is not None and current.pass_dir is None:
                current.pass_dir = row.dir
            hashes = [
                sha256_file(p) if p.is_file() else None
                for p in (row.log(run_dir, "stdout"), row.log(run_dir, "stderr"))
            ]
            commands.append(
                Command(
                    stage=row.stage,
                    pass_dir=row.dir,
                    index=row.index,
                    attempt=row.attempt,
                    cmd=row.cmd,
                    argv=["sh", "-c", row.cmd],
                    workdir=current.workdir if current else None,
                    env=mask_env(env),
                    exit_code=row.rc,
                    duration_s=row.duration_s,
                    timed_out=row.timed_out,
                    oom_killed=row.oom_killed,
                    truncated=row.truncated,
                    blocked_reason=row.blocked_reason,
                    stdout_sha256=hashes[0],
                    stderr_sha256=hashes[1],
                )
            )
        elif kind == "stage_end" and str(ev.get("stage")) in open_:
            stage, _ = open_.pop(str(ev.get("stage")))
            stage.ok = ev.get("ok") is True
            duration = ev.get("duration_s")
            stage.duration_s = float(duration) if isinstance(duration, int | float) else None
    return stages, commands


def _calls(events: list[dict[str, Any]]) -> list[Call]:
    calls: list[Call] = []
    for ev in events:
        kind = ev.get("kind")
        mode = str(ev.get("mode") or "smoke")
        if kind == "rollout_start" and not any(c.call == "rollout" for c in calls):
            calls.append(
                Call(call="rollout", mode=mode, require_samples=ev.get("require_samples") is True)
            )
        elif kind == "evaluation_start" and not any(c.call == "evaluate" for c in calls):
            calls.append(Call(call="evaluate", mode=mode))
    return calls


def _result(events: list[dict[str, Any]]) -> Result:
    result = Result(phase=None, ok=None, failed_stage=None, reason="", state=None)
    for ev in events:
        if ev.get("kind") == "transition":
            result.state = ev.get("to_state")
        elif ev.get("kind") in ("rollout_end", "evaluation_end"):
            result.phase = str(ev["kind"]).removesuffix("_end")
            result.ok = ev.get("ok") is True
            result.failed_stage = ev.get("failed_stage")
            result.reason = str(ev.get("reason") or "")
    return result


def _outputs(run_dir: Path, dirs: list[str], metrics_rel: str, workspace: str) -> Outputs:
    out = Outputs()
    if metrics := _latest_output(run_dir, dirs, metrics_rel):
        out.metrics = digest_entry(run_dir, metrics)
    if rollout := _latest_output(run_dir, dirs, ROLLOUT_JSON):
        out.rollout = digest_entry(run_dir, rollout)
        rel = _samples_rel(run_dir, rollout, workspace)
        samples = f"{rollout.split('/outputs/', 1)[0]}/outputs/{rel}" if rel else None
        if samples and (run_dir / samples).is_file() and not (run_dir / samples).is_symlink():
            out.samples = digest_entry(run_dir, samples)
            with open(run_dir / samples, "rb") as fh:
                out.samples_lines = sum(1 for line in fh if line.strip())
    return out


def build_manifest(facts: SessionFacts) -> Manifest:
    """The manifest of the run dir as it is now (call once the session is closed)."""
    run_dir = facts.run_dir
    path = run_dir.path
    events = read_events(path)
    try:
        sandbox_json = json.loads((path / "sandbox.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        sandbox_json = {}
    stages, commands = _stages_and_commands(path, events)
    workspace = str(sandbox_json.get("workspace") or "/workspace")
    first_env = next((c.env for c in commands if c.env), {})
    seed_text = first_env.get(SEED_VAR) or facts.env_file_seed or ""
    seed = (
        int(seed_text)
        if seed_text.strip().isdigit()
        else facts.seed
        if facts.seed is not None
        else derive_seed(run_dir.run_id)
    )
    determinism = {k: first_env.get(k, v) for k, v in DETERMINISM_DEFAULTS.items()}
    repo = facts.repo
    ws_hash, ws_files = workspace_digest(repo.path, WORKSPACE_EXCLUDE)
    try:
        version = importlib.metadata.version("fsm-runner")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return Manifest(
        runner_version=version,
        run_id=run_dir.run_id,
        written_at=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        target=Target(
            source=repo.source,
            repo=str(repo.path),
            url=repo.url,
            ref=repo.ref,
            commit=repo.commit,
            dirty=repo.dirty,
            dataset_id=repo.dataset_id,
            workspace_sha256=ws_hash,
            workspace_files=ws_files,
        ),
        images=_images(sandbox_json, events) if sandbox_json else [],
        sandbox={k: v for k, v in sandbox_json.items() if k not in ("container_id", "sandbox_id")},
        determinism={**determinism, SEED_VAR: str(seed)},
        settings=Settings(
            **facts.settings,
            calls=_calls(events),
            llm=facts.llm,
            seed=seed,
            repairs=sum(1 for e in events if e.get("kind") == "repair_end"),
        ),
        result=_result(events),
        stages=stages,
        commands=commands,
        outputs=_outputs(
            path, _pass_dirs(events), facts.metrics_rel or DEFAULT_METRICS_REL, workspace
        ),
        files=run_dir_files(path),
    )


def _redacted(run_dir: RunDir, obj: Any, key: str = "") -> Any:
    """Free text redacted; digests left alone (a short secret could match inside one)."""
    if isinstance(obj, str):
        return obj if key in _HASH_FIELDS else run_dir.redact(obj)
    if isinstance(obj, dict):
        return {run_dir.redact(k): _redacted(run_dir, v, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redacted(run_dir, v, key) for v in obj]
    return obj


def write_manifest(facts: SessionFacts) -> Path | None:
    """Write ``manifest.json`` into the session's run dir; logs and returns None on failure."""
    try:
        manifest = build_manifest(facts)
        data = _redacted(facts.run_dir, manifest.model_dump(mode="json"))
        return facts.run_dir.write_json(MANIFEST_FILE, data, redact=False)
    except Exception as exc:
        log.warning("manifest.json not written for run %s: %s", facts.run_dir.run_id, exc)
        return None
