"""The OpenCode agent, sandboxed: scaffold a missing contract, repair a failing one.

``opencode serve`` runs inside a disposable Docker sandbox (binary and config mounted
read-only, ``llm`` network only); the runner drives it over its HTTP API and takes back
only ``pipeline.yml`` and ``.aider_fsm/**`` (see ``scope.py``). Everything is bounded
(``Bounds``) and recorded in the run dir with the attempt's diff and the list of
discarded changes.

    scaffold_contract(repo, model="fake/m", run_dir=rd)          -> Path of pipeline.yml
    repair_contract(repo, failed_stage=..., reason=..., evidence=..., model=..., run_dir=rd,
                    attempt=1)                                    -> RepairOutcome
"""

from runner.agent.binary import find_opencode, install_opencode, require_opencode
from runner.agent.config import Bounds
from runner.agent.repair import RepairOutcome, repair_contract
from runner.agent.scaffold import scaffold_contract
from runner.agent.transcript import ModelUnreachable, SandboxUnavailable

__all__ = [
    "Bounds",
    "ModelUnreachable",
    "RepairOutcome",
    "SandboxUnavailable",
    "find_opencode",
    "install_opencode",
    "repair_contract",
    "require_opencode",
    "scaffold_contract",
]
