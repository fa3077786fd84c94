"""One agent attempt: sandbox up, one prompt, processes stopped, contract taken back, records.

Shared by scaffold and repair; they differ only in the prompt and in what they check
afterwards. Everything an attempt leaves is under ``record_rel`` in the run dir:
``prompt.txt``, ``opencode.json``, ``opencode_server.log``, ``transcript.json``,
``scope.json`` and ``diff.patch`` (all redacted by ``RunDir``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner.agent.binary import require_opencode
from runner.agent.checks import require_repo
from runner.agent.config import Bounds, ModelRoute
from runner.agent.scope import AIDER_DIR, ScopeReport, host_manifest, in_scope, take_back
from runner.agent.server import AgentServer
from runner.agent.transcript import Transcript
from runner.errors import AgentError
from runner.runs.run_dir import RunDir
from sandbox import SandboxSpec

WORKSPACE_EXCLUDE = SandboxSpec().exclude
"""What the sandbox copy leaves out; the manifests leave out the same."""
STAGES_DIR = f"{AIDER_DIR}/stages/"
_BASE_VARS = ("OPENAI_API_BASE", "OPENAI_BASE_URL")


@dataclass(frozen=True)
class AgentSettings:
    """How agent attempts run (one object, passed through unchanged).

    Attributes:
        route: the model and its endpoint.
        bounds: per-request, per-attempt and model-down limits.
        image: sandbox image (None: the default image; it must have ``python3``).
        opencode_bin: the binary to mount (None: ``binary.require_opencode()``).
        pipeline_rel: the contract file, relative to the repo root.
    """

    route: ModelRoute
    bounds: Bounds = field(default_factory=Bounds)
    image: str | None = None
    opencode_bin: Path | None = None
    pipeline_rel: str = "pipeline.yml"

    @classmethod
    def build(
        cls,
        model: str,
        *,
        env: Mapping[str, str] | None = None,
        bounds: Bounds | None = None,
        image: str | None = None,
        opencode_bin: Path | None = None,
        pipeline_rel: str = "pipeline.yml",
    ) -> AgentSettings:
        """Settings from ``opencode_model`` and the endpoint variables.

        ``OPENAI_API_BASE`` (or ``OPENAI_BASE_URL``) and ``OPENAI_API_KEY`` are read from
        ``env`` first (the caller's ``env_overrides``), then from the process environment.

        Raises:
            AgentError: bad model name, no endpoint, or no opencode binary.
        """
        sources = (env or {}, os.environ)
        base = next((s[k] for s in sources for k in _BASE_VARS if s.get(k)), None)
        key = next((s["OPENAI_API_KEY"] for s in sources if s.get("OPENAI_API_KEY")), None)
        return cls(
            route=ModelRoute.parse(model, base_url=base, api_key=key),
            bounds=bounds or Bounds(),
            image=image,
            opencode_bin=opencode_bin or require_opencode(),
            pipeline_rel=pipeline_rel,
        )


def prepare_attempts(
    repo_root: Path,
    model: str,
    *,
    env: Mapping[str, str] | None,
    bounds: Bounds | None,
    image: str | None,
    opencode_bin: Path | None,
    pipeline_rel: str,
) -> tuple[Path, AgentSettings]:
    """The checked repo root and the settings every attempt on it runs with (scaffold, repair).

    Raises:
        AgentError: ``repo_root`` is not a directory (checked first), or what
            :meth:`AgentSettings.build` raises.
    """
    root = require_repo(repo_root)
    return root, AgentSettings.build(
        model,
        env=env,
        bounds=bounds,
        image=image,
        opencode_bin=opencode_bin,
        pipeline_rel=pipeline_rel,
    )


@dataclass
class AttemptResult:
    """What one attempt did. ``error`` is set when the agent's run itself failed."""

    record_rel: str
    scope: ScopeReport = field(default_factory=ScopeReport)
    transcript: Transcript | None = None
    error: str | None = None
    script_errors: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    started_at: str = ""

    def record(self) -> dict[str, Any]:
        """The attempt's entry in a provenance file."""
        calls = self.transcript.tool_calls() if self.transcript else []
        return {
            "record_dir": self.record_rel,
            "started_at": self.started_at,
            "duration_s": round(self.duration_s, 3),
            "error": self.error,
            "changed_files": self.scope.changed_files,
            "discarded_paths": self.scope.discarded_paths,
            "scope": self.scope.to_json(),
            "script_errors": self.script_errors,
            "tool_calls": calls,
            "assistant_text_tail": (self.transcript.text()[-4000:] if self.transcript else ""),
            "diff_file": f"{self.record_rel}/diff.patch",
        }


def run_attempt(
    repo_root: Path,
    prompt: str,
    *,
    settings: AgentSettings,
    run_dir: RunDir,
    record_rel: str,
    title: str,
) -> AttemptResult:
    """Run the agent once on a sandboxed copy of ``repo_root``; take back only the contract.

    A model-side failure inside the loop (an error reply) is recorded in ``error`` and
    the attempt still takes back what was written.

    Raises:
        AgentError: infrastructure failure: the model endpoint is down, the sandbox or
            the server failed, or the attempt ran out of time. The sandbox is gone and
            the server log saved before this propagates.
    """
    started = time.monotonic()
    result = AttemptResult(record_rel, started_at=datetime.now(UTC).isoformat(timespec="seconds"))
    run_dir.write_text(f"{record_rel}/prompt.txt", prompt)
    before = host_manifest(repo_root, WORKSPACE_EXCLUDE)
    server = AgentServer(
        repo_root,
        settings.route,
        run_dir=run_dir,
        log_rel=record_rel,
        bounds=settings.bounds,
        image=settings.image,
        opencode_bin=settings.opencode_bin,
    )
    try:
        with server:
            assert server.sandbox is not None
            result.transcript = server.run_prompt(title, prompt)
            result.error = result.transcript.error
            server.stop_processes()
            after = server.workspace_manifest(WORKSPACE_EXCLUDE)
            result.scope = take_back(
                server.sandbox,
                repo_root,
                before=before,
                after=after,
                outside=server.outside_changes(),
                pipeline_rel=settings.pipeline_rel,
            )
            scripts = sorted(
                rel
                for rel, entry in after.items()
                if rel.startswith(STAGES_DIR)
                and rel.endswith(".sh")
                and entry[0] == "file"
                and in_scope(rel, settings.pipeline_rel)
            )
            result.script_errors = server.check_scripts(scripts)
    except AgentError as exc:
        result.error = str(exc)
        raise
    finally:
        result.duration_s = time.monotonic() - started
        _write_records(run_dir, result)
    return result


def _write_records(run_dir: RunDir, result: AttemptResult) -> None:
    rel = result.record_rel
    if result.transcript is not None:
        run_dir.write_json(
            f"{rel}/transcript.json",
            {
                "session_id": result.transcript.session_id,
                "error": result.transcript.error,
                "duration_s": round(result.transcript.duration_s, 3),
                "messages": result.transcript.messages,
            },
        )
    run_dir.write_json(f"{rel}/scope.json", result.scope.to_json())
    run_dir.write_text(f"{rel}/diff.patch", result.scope.diff)
