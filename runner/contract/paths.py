"""Where the contract's files and fixed outputs live in a repository (notes/predecessor.md).

The predecessor's file names are public: target repos write these paths, and the runner
reads them back, keeps them out of the sandbox's copy, and clears them before a stage.
"""

from __future__ import annotations

from pathlib import PurePosixPath

AIDER_DIR = ".aider_fsm"
ROLLOUT_JSON = f"{AIDER_DIR}/rollout.json"
"""Where the rollout stage reports its samples file (a fixed path, as the predecessor's)."""
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "deploy_setup": (f"{AIDER_DIR}/runtime_env.json",),
    "rollout": (ROLLOUT_JSON,),
    "evaluation": (f"{AIDER_DIR}/hints_used.json", f"{AIDER_DIR}/hints_run.json"),
}
"""Fixed output files each stage must write afresh (metrics paths come from the pipeline)."""

FIXED_OUTPUTS = tuple(
    f"{AIDER_DIR}/{name}"
    for name in (
        "runtime_env.json",
        "rollout.json",
        "metrics.json",
        "hints_used.json",
        "hints_run.json",
    )
)
"""The predecessor's fixed-path outputs: never copied into a sandbox from the host."""


def to_sandbox_rel(raw: str, workspace: str) -> str | None:
    """A path a stage reported (relative, or absolute under the workspace) as workspace-relative."""
    path = PurePosixPath(raw)
    if path.is_absolute():
        try:
            path = path.relative_to(workspace)
        except ValueError:
            return None
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)
