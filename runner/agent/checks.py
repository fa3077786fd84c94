"""Checks of a contract the agent wrote, and snapshots to undo a bad one.

All host-side work here is parsing (YAML, pydantic) and file reads: no target code runs
on the host. ``bash -n`` of the stage scripts runs in the agent's sandbox
(``AgentServer.check_scripts``); its errors arrive here as ``script_errors``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from runner.agent.scope import AIDER_DIR, in_scope, remove_file, write_file
from runner.contract import PipelineSpec, load_actions, load_bootstrap, load_pipeline
from runner.errors import AgentError, ContractError

MAX_CONTRACT_FILE = 1024 * 1024
_SCRIPT_RE = re.compile(r"(?:^|[\s;&|(])(\.aider_fsm/[\w./-]+\.(?:sh|py))")

Snapshot = dict[str, tuple[bytes, bool]]


def contract_paths(repo_root: Path, pipeline_rel: str = "pipeline.yml") -> list[str]:
    """The contract's files on the host (regular files only, links never followed)."""
    found: list[str] = []
    pipeline = repo_root / pipeline_rel
    if pipeline.is_file() and not pipeline.is_symlink():
        found.append(pipeline_rel)
    aider = repo_root / AIDER_DIR
    if aider.is_dir() and not aider.is_symlink():
        for path in sorted(aider.rglob("*")):
            rel = path.relative_to(repo_root).as_posix()
            if path.is_file() and not path.is_symlink() and in_scope(rel, pipeline_rel):
                found.append(rel)
    return found


def snapshot_contract(repo_root: Path, pipeline_rel: str = "pipeline.yml") -> Snapshot:
    """The contract's files and exec bits, to restore after a failed scaffold or repair."""
    snap: Snapshot = {}
    for rel in contract_paths(repo_root, pipeline_rel):
        path = repo_root / rel
        if path.stat().st_size <= MAX_CONTRACT_FILE:
            snap[rel] = (path.read_bytes(), bool(path.stat().st_mode & 0o111))
    return snap


def restore_contract(
    repo_root: Path, snapshot: Snapshot, pipeline_rel: str = "pipeline.yml"
) -> None:
    """Put the contract back as it was in ``snapshot`` (files added since are removed).

    Raises:
        AgentError: a path in the repo is a link where a directory is expected.
    """
    for rel in contract_paths(repo_root, pipeline_rel):
        if rel not in snapshot:
            remove_file(repo_root, rel)
    for rel, (data, executable) in snapshot.items():
        path = repo_root / rel
        if path.is_file() and not path.is_symlink() and path.read_bytes() == data:
            continue
        write_file(repo_root, rel, data, executable)


def contract_texts(repo_root: Path, pipeline_rel: str = "pipeline.yml") -> dict[str, str]:
    """The contract's text files (what the repair prompt shows), decoded leniently."""
    out: dict[str, str] = {}
    for rel in contract_paths(repo_root, pipeline_rel):
        data = (repo_root / rel).read_bytes()[:MAX_CONTRACT_FILE]
        if b"\0" not in data:
            out[rel] = data.decode("utf-8", errors="replace")
    return out


def referenced_scripts(spec: PipelineSpec) -> list[str]:
    """Contract scripts the pipeline's commands name (``bash .aider_fsm/stages/x.sh``)."""
    found: set[str] = set()
    for name in ("tests", "auth", "deploy_setup", "deploy_health", "deploy_teardown",
                 "rollout", "evaluation", "benchmark"):  # fmt: skip
        stage = spec.stage(name)
        for cmd in stage.cmds if stage else ():
            found.update(m.group(1) for m in _SCRIPT_RE.finditer(cmd))
    return sorted(found)


def validate_contract(
    repo_root: Path,
    *,
    pipeline_rel: str = "pipeline.yml",
    script_errors: Sequence[str] = (),
    require_stages: Sequence[str] = ("rollout", "evaluation"),
) -> list[str]:
    """Every reason the contract is not usable yet (empty: it is).

    Checks: the pipeline loads (schema), the required stages have commands, evaluation
    names a metrics file, the scripts its commands name exist, ``bootstrap.yml`` and
    ``actions.yml`` load, and the scripts parsed (``script_errors`` from ``bash -n``).
    """
    errors = list(script_errors)
    pipeline = repo_root / pipeline_rel
    if not pipeline.is_file():
        return [f"missing_{pipeline_rel}: the agent did not write {pipeline_rel}", *errors]
    try:
        spec = load_pipeline(pipeline)
    except ContractError as exc:
        return [f"pipeline_invalid: {exc}", *errors]
    for name in require_stages:
        if spec.stage(name) is None:  # type: ignore[arg-type]
            errors.append(f"incomplete_contract: stage {name!r} has no commands")
    evaluation = spec.evaluation
    if "evaluation" in require_stages and evaluation is not None and not evaluation.metrics_path:
        errors.append("incomplete_contract: evaluation.metrics_path is not set")
    for rel in referenced_scripts(spec):
        path = repo_root / rel
        if not path.is_file() or path.is_symlink():
            errors.append(f"missing_script: {pipeline_rel} runs {rel}, which does not exist")
    for loader, rel in ((load_bootstrap, "bootstrap.yml"), (load_actions, "actions.yml")):
        try:
            loader(repo_root / AIDER_DIR / rel)
        except ContractError as exc:
            errors.append(f"{rel}_invalid: {exc}")
    return errors


def require_repo(repo_root: Path) -> Path:
    """Raises:
    AgentError: ``repo_root`` is not a directory.
    """
    root = Path(repo_root).expanduser().resolve()
    if not root.is_dir():
        raise AgentError(f"repository {root} is not a directory")
    return root
