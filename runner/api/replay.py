"""Replay a run: set its target up again as the manifest recorded it, and compare.

The comparison itself (metrics key by key, sample hashes, flaky stages) is
:mod:`runner.runs.replay`; this module reruns through :func:`runner.api.setup.setup`, so
it sits above the session and the agent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from runner.api.setup import setup
from runner.runs.determinism import SEED_VAR
from runner.runs.manifest import verify_run_dir
from runner.runs.replay import Comparison, ReplayError, compare_runs, load_facts, target_of
from sandbox import Limits


def replay_run(
    run_dir: Path,
    *,
    reruns: int = 1,
    env_overrides: Mapping[str, str] | None = None,
    env_file: Path | None = None,
    image: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Comparison:
    """Run ``run_dir``'s target again ``reruns`` times as it ran, then :func:`compare_runs`.

    The model endpoint and any caller overrides are not in the manifest (they may be
    secret, and the endpoint is host-side): pass them as ``env_overrides`` / ``env_file``
    the way the original run got them. Replay never asks the agent for repairs.

    Raises:
        ReplayError: the run dir has no usable manifest, or records no model call.
        RunnerError, sandbox.SandboxError: as ``setup()`` and the session calls.
    """
    original = load_facts(run_dir)
    m = original.manifest
    s = m.settings
    if not s.calls or s.llm is None:
        raise ReplayError(
            f"{run_dir}: the run never called rollout() or evaluate(): nothing to replay"
        )
    base = next((i.ref for i in m.images if i.role == "base"), None)
    chosen = image or s.image or (base if s.backend == "docker" else None)
    say = progress or (lambda _msg: None)
    replays: list[Path] = []
    for n in range(1, max(1, reruns) + 1):
        say(f"replay {n}/{max(1, reruns)} of {m.run_id}: {target_of(m)}")
        sess = setup(
            target_of(m),
            # A remote target comes from the same clone cache, at the recorded commit.
            clones_dir=Path(m.target.repo).parent if m.target.source != "local" else None,
            artifacts_dir=run_dir.parent,
            sandbox=s.backend,  # type: ignore[arg-type]
            image=chosen,
            workspace=s.workspace_mode,  # type: ignore[arg-type]
            network=s.network_cap,  # type: ignore[arg-type]
            limits=Limits(**s.limits),
            require_metrics=s.require_metrics,
            audit=s.audit,  # type: ignore[arg-type]
            unattended=s.unattended,  # type: ignore[arg-type]
            pipeline_rel=s.pipeline_rel,
            env_file=env_file,
            # The recorded seed reaches every stage, bootstrap too; passed as an option
            # (not an env-file pair), so the bootstrap cache key stays the original's.
            seed=s.seed,
            progress=progress,
        )
        try:
            for call in s.calls:
                if call.call == "rollout":
                    res = sess.rollout(
                        llm=s.llm,
                        mode=call.mode,
                        require_samples=call.require_samples,
                        env_overrides=env_overrides,
                        repair_iters=0,
                    )
                    if not res.ok:
                        break
                else:
                    sess.evaluate(
                        llm=s.llm, mode=call.mode, env_overrides=env_overrides, repair_iters=0
                    )
        finally:
            sess.close()
        replays.append(sess.artifacts_dir)
    cmp = compare_runs(run_dir, replays)
    check = verify_run_dir(run_dir)
    if not check.ok:
        cmp.notes.append(
            f"the original run dir does not match its manifest ({check.problems[0]}, "
            f"{len(check.problems)} problem(s) in all): see fsm-runner verify"
        )
    if s.repairs:
        cmp.notes.append(
            f"the original run repaired its contract {s.repairs} time(s); the replay ran the "
            "contract as it is on disk now, without repairs"
        )
    missing = [k for k in s.env_file_keys if k != SEED_VAR]
    if missing and env_file is None:
        cmp.notes.append(
            f"the original run had an env file with {', '.join(missing)}; pass --env-file"
        )
    return cmp
