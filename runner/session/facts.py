"""What a session hands on when it ends: its manifest facts, and a sandbox it keeps.

Apart from the state machine (``machine.py``) because neither changes its state.
"""

from __future__ import annotations

import dataclasses

from runner.contract import PipelineSpec
from runner.runs.determinism import SEED_VAR
from runner.runs.manifest_builder import SessionFacts
from runner.runs.run_dir import RunDir
from runner.session.llm import LlmChoice
from runner.session.options import SessionOptions
from runner.targets.resolve import TargetRepo
from sandbox import Sandbox
from sandbox.kept import LABEL_KEPT


def session_facts(
    run_dir: RunDir,
    repo: TargetRepo,
    llm: LlmChoice | None,
    pipeline: PipelineSpec,
    opts: SessionOptions,
) -> SessionFacts:
    """The session as its manifest records it."""
    ev = pipeline.evaluation
    return SessionFacts(
        run_dir=run_dir,
        repo=repo,
        llm=None if llm is None else str(llm.model_dir or llm.model),
        metrics_rel=ev.metrics_path if ev and ev.metrics_path else None,
        settings={
            "backend": opts.backend,
            "image": opts.image,
            "workspace_mode": opts.workspace_mode,
            "network_cap": opts.network_cap.value if opts.network_cap else None,
            "limits": dataclasses.asdict(opts.limits),
            "require_metrics": opts.require_metrics,
            "audit": opts.audit,
            "unattended": opts.unattended,
            "pipeline_rel": opts.pipeline_rel,
            "env_file_keys": sorted(opts.extra_env),
        },
        env_file_seed=opts.extra_env.get(SEED_VAR),
        seed=opts.seed,
    )


def keep_sandbox(sb: Sandbox, run_dir: RunDir) -> str | None:
    """Leave ``sb`` running for a human (issue 16.7); the name to enter it by, or None.

    Only a Docker sandbox can be kept (``release()``: it stays up, labelled kept, cut off
    from every network); a local one has nothing to keep and is closed.
    """
    release = getattr(sb, "release", None)
    if release is None:
        sb.close()
        run_dir.event("sandbox_not_kept", reason="only a Docker sandbox can be kept")
        return None
    name = str(release())
    run_dir.event("sandbox_kept", container=name, label=LABEL_KEPT)
    return name
